/* test_access.c - who may do what, against the real daemon: the role matrix generated from the
 * daemon's own route table, tokens made offline, revocation, expiry, per-submitter idempotency
 * and visibility, brute-force limiting, TLS, and no token in any log or stored file. */
#include "test_main.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access.h"
#include "ar.h"
#include "auth.h"
#include "harness.h"

static harness H;

static int start_default(void **state)
{
    (void)state;
    return harness_start(&H, NULL);
}

static int stop_daemon(void **state)
{
    (void)state;
    int status = H.pid > 0 ? harness_stop(&H) : 0;
    harness_cleanup(&H);
    return status == 0 ? 0 : -1;
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

static const char *echo_body = "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":\"hi\"}}";

/* ---- the role matrix ------------------------------------------------------------------------ */

typedef struct identity {
    const char *label;
    char token[HARNESS_TOKEN_MAX];
    unsigned roles;          /* 0: not a valid identity */
} identity;

static void fill_path(const access_route *r, char *out, size_t cap)
{
    const char *brace = strchr(r->pattern, '{');
    if (!brace) {
        snprintf(out, cap, "%s", r->pattern);
        return;
    }
    const char *value = strncmp(brace, "{id}", 4) == 0 ? "01ARZ3NDEKTSV4RRFFQ69G5FAV" : "nobody";
    snprintf(out, cap, "%.*s%s%s", (int)(brace - r->pattern), r->pattern, value, strchr(brace, '}') + 1);
}

static const char *body_for(const access_route *r)
{
    if (r->id == ROUTE_SUBMIT)
        return echo_body;
    if (r->id == ROUTE_CREATE_TOKEN)
        return "{\"name\":\"matrix-made\",\"roles\":[\"reader\"]}";
    return NULL;
}

static void every_route_answers_each_identity_as_its_roles_say(void **state)
{
    (void)state;
    identity ids[] = {
        {"no token", "", 0},
        {"bad token", "aior_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 0},
        {"expired", "", 0},
        {"revoked", "", 0},
        {"submitter", "", AUTH_ROLE_SUBMITTER},
        {"approver", "", AUTH_ROLE_APPROVER},
        {"operator", "", AUTH_ROLE_OPERATOR},
        {"reader", "", AUTH_ROLE_READER},
    };
    assert_int_equal(harness_token_create(&H, "m-expired", "operator", ar_now_ms() + 300, ids[2].token), 0);
    assert_int_equal(harness_token_create(&H, "m-revoked", "operator", 0, ids[3].token), 0);
    assert_int_equal(harness_token_revoke(&H, "m-revoked"), 0);
    assert_int_equal(harness_token_create(&H, "m-submitter", "submitter", 0, ids[4].token), 0);
    assert_int_equal(harness_token_create(&H, "m-approver", "approver", 0, ids[5].token), 0);
    assert_int_equal(harness_token_create(&H, "m-operator", "operator", 0, ids[6].token), 0);
    assert_int_equal(harness_token_create(&H, "m-reader", "reader", 0, ids[7].token), 0);
    usleep(400 * 1000); /* m-expired is past its time now */

    size_t n;
    const access_route *routes = access_routes(&n);
    assert_true(n >= ROUTE_COUNT);
    for (size_t i = 0; i < n; i++) {
        const access_route *r = &routes[i];
        char path[128];
        fill_path(r, path, sizeof path);
        if (i > 0 && i % 15 == 0) {
            /* Three failing identities per route: restart before the failed-authentication
             * limiter (60 a minute per address, in memory) answers 429 instead. */
            assert_int_equal(harness_stop(&H), 0);
            assert_int_equal(harness_restart(&H), 0);
        }
        for (size_t k = 0; k < sizeof ids / sizeof ids[0]; k++) {
            json_t *reply = NULL;
            long st = harness_http_as(&H, ids[k].token[0] || k == 1 ? ids[k].token : NULL, r->method,
                                      path, body_for(r), &reply);
            const char *code = str(reply, "error");
            int ok;
            if (r->roles == 0)
                ok = st == 200;
            else if (!ids[k].roles)
                ok = st == 401 && strcmp(code, "unauthenticated") == 0;
            else if (!(ids[k].roles & r->roles))
                ok = st == 403 && strcmp(code, "forbidden") == 0;
            else
                ok = st != 401 && st != 403 && st != 0;
            if (!ok) {
                char *dump = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
                fail_msg("%s %s as %s: HTTP %ld %s", r->method, path, ids[k].label, st, dump ? dump : "");
            }
            json_decref(reply);
        }
    }
}

/* ---- lifecycle of tokens --------------------------------------------------------------------- */

static void token_made_offline_works_at_once_and_revocation_needs_no_restart(void **state)
{
    (void)state;
    char bin[300], out[4096];
    harness_bin(bin, sizeof bin, "aioctl");
    char *create[] = {bin, "--config", H.config_path, "token", "create", "--name", "cli-made",
                      "--roles", "submitter", NULL};
    assert_int_equal(harness_run(&H, create, out, sizeof out), 0);
    char token[HARNESS_TOKEN_MAX];
    snprintf(token, sizeof token, "%.*s", (int)strcspn(out, "\r\n"), out);
    assert_int_equal(strncmp(token, AUTH_TOKEN_PREFIX, strlen(AUTH_TOKEN_PREFIX)), 0);
    assert_int_equal(strlen(token), AUTH_TOKEN_LEN);

    json_t *r;
    long st = harness_http_as(&H, token, "POST", "/v1/actions", echo_body, &r);
    assert_int_equal(st, 201);
    json_decref(r);
    st = harness_http_as(&H, token, "GET", "/v1/whoami", NULL, &r);
    assert_int_equal(st, 200);
    assert_string_equal(str(r, "name"), "cli-made");
    json_decref(r);

    char *revoke[] = {bin, "--config", H.config_path, "token", "revoke", "cli-made", NULL};
    assert_int_equal(harness_run(&H, revoke, out, sizeof out), 0);
    st = harness_http_as(&H, token, "GET", "/v1/whoami", NULL, &r);
    assert_int_equal(st, 401);
    assert_non_null(strstr(str(r, "message"), "revoked"));
    json_decref(r);

    /* The list names tokens and never shows one. */
    char *list[] = {bin, "--config", H.config_path, "--json", "token", "list", NULL};
    assert_int_equal(harness_run(&H, list, out, sizeof out), 0);
    assert_non_null(strstr(out, "cli-made"));
    assert_null(strstr(out, "aior_"));
}

static void tokens_can_be_managed_through_the_api_by_an_operator(void **state)
{
    (void)state;
    json_t *r;
    long st = harness_http(&H, "POST", "/v1/tokens", "{\"name\":\"api-made\",\"roles\":[\"reader\"],\"expires_in_s\":3600}", &r);
    assert_int_equal(st, 201);
    char token[HARNESS_TOKEN_MAX];
    snprintf(token, sizeof token, "%s", str(r, "token"));
    json_decref(r);
    st = harness_http_as(&H, token, "GET", "/v1/actions", NULL, &r);
    assert_int_equal(st, 200);
    json_decref(r);
    st = harness_http_as(&H, token, "POST", "/v1/actions", echo_body, &r);
    assert_int_equal(st, 403);
    json_decref(r);
    st = harness_http(&H, "POST", "/v1/tokens", "{\"name\":\"api-made\",\"roles\":[\"reader\"]}", &r);
    assert_int_equal(st, 409);
    json_decref(r);
    st = harness_http(&H, "POST", "/v1/tokens", "{\"name\":\"x\",\"roles\":[\"king\"]}", &r);
    assert_int_equal(st, 400);
    json_decref(r);
    st = harness_http(&H, "GET", "/v1/tokens", NULL, &r);
    assert_int_equal(st, 200);
    char *dump = json_dumps(r, JSON_COMPACT);
    assert_non_null(strstr(dump, "api-made"));
    assert_null(strstr(dump, "aior_"));
    free(dump);
    json_decref(r);
    st = harness_http(&H, "DELETE", "/v1/tokens/api-made", NULL, &r);
    assert_int_equal(st, 200);
    json_decref(r);
    st = harness_http_as(&H, token, "GET", "/v1/actions", NULL, &r);
    assert_int_equal(st, 401);
    json_decref(r);
}

/* ---- identity on actions ----------------------------------------------------------------------- */

static void submitters_have_their_own_keys_and_see_their_own_actions(void **state)
{
    (void)state;
    char alice[HARNESS_TOKEN_MAX], bob[HARNESS_TOKEN_MAX];
    assert_int_equal(harness_token_create(&H, "alice", "submitter", 0, alice), 0);
    assert_int_equal(harness_token_create(&H, "bob", "submitter", 0, bob), 0);
    const char *body = "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":\"m\"},"
                       "\"idempotency_key\":\"same-key\",\"wait_ms\":10000}";
    json_t *a, *b, *a2;
    assert_int_equal(harness_http_as(&H, alice, "POST", "/v1/actions", body, &a), 201);
    assert_int_equal(harness_http_as(&H, bob, "POST", "/v1/actions", body, &b), 201);
    assert_string_not_equal(str(a, "id"), str(b, "id"));
    assert_string_equal(str(a, "submitter"), "alice");
    assert_string_equal(str(b, "submitter"), "bob");
    assert_int_equal(harness_http_as(&H, alice, "POST", "/v1/actions", body, &a2), 200);
    assert_string_equal(str(a, "id"), str(a2, "id"));
    assert_string_equal(str(a, "state"), "SUCCEEDED");

    /* Each sees only their own; an operator sees both. */
    char path[128];
    json_t *r;
    snprintf(path, sizeof path, "/v1/actions/%s", str(a, "id"));
    assert_int_equal(harness_http_as(&H, bob, "GET", path, NULL, &r), 404);
    json_decref(r);
    assert_int_equal(harness_http_as(&H, alice, "GET", path, NULL, &r), 200);
    json_decref(r);
    assert_int_equal(harness_http_as(&H, bob, "GET", "/v1/actions", NULL, &r), 200);
    json_t *list = json_object_get(r, "actions");
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(str(json_array_get(list, 0), "id"), str(b, "id"));
    json_decref(r);
    assert_int_equal(harness_http(&H, "GET", "/v1/actions", NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r, "actions")), 2);
    json_decref(r);
    json_decref(a);
    json_decref(b);
    json_decref(a2);
}

static void policies_see_the_submitter(void **state)
{
    (void)state;
    /* tests/integration/policies/fixtures.lua denies t_ok actions submitted by "mallory". */
    char mallory[HARNESS_TOKEN_MAX];
    assert_int_equal(harness_token_create(&H, "mallory", "submitter", 0, mallory), 0);
    json_t *r;
    assert_int_equal(harness_http_as(&H, mallory, "POST", "/v1/actions",
                                     "{\"connector\":\"t_ok\",\"action\":\"ok\",\"wait_ms\":5000}", &r), 201);
    assert_string_equal(str(r, "state"), "DENIED");
    assert_string_equal(str(json_object_get(r, "decision"), "rule"), "test_submitter");
    json_decref(r);
}

/* ---- brute force ------------------------------------------------------------------------------- */

static void repeated_bad_tokens_are_slowed_down(void **state)
{
    (void)state;
    long st = 0;
    int refused = 0;
    for (int i = 0; i < 70; i++) {
        char bad[64];
        snprintf(bad, sizeof bad, "aior_guess%038d", i);
        json_t *r;
        st = harness_http_as(&H, bad, "GET", "/v1/actions", NULL, &r);
        if (st == 429) {
            refused++;
            assert_string_equal(str(r, "error"), "too_many_auth_failures");
        } else {
            assert_int_equal(st, 401);
        }
        json_decref(r);
    }
    assert_true(refused >= 10);
    /* The open route still answers. */
    assert_int_equal(harness_http_as(&H, NULL, "GET", "/healthz", NULL, NULL), 200);
}

/* ---- TLS ------------------------------------------------------------------------------------------ */

static void tls_serves_https_and_refuses_plain_http(void **state)
{
    (void)state;
    harness_cleanup(&H);
    harness_opts o = {.tls = 1};
    assert_int_equal(harness_start(&H, &o), 0);
    json_t *r;
    assert_int_equal(harness_http(&H, "GET", "/v1/whoami", NULL, &r), 200);
    assert_string_equal(str(r, "name"), "test-operator");
    json_decref(r);
    assert_int_equal(harness_http(&H, "POST", "/v1/actions", echo_body, &r), 201);
    json_decref(r);
    char plain[96];
    snprintf(plain, sizeof plain, "http://127.0.0.1:%d/healthz", H.port);
    long st = harness_http_as(&H, NULL, "GET", plain, NULL, NULL);
    assert_true(st != 200);
}

/* ---- no token anywhere ------------------------------------------------------------------------------ */

static int file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t nlen = strlen(needle), cap = 1 << 20, len;
    char *buf = malloc(cap + nlen);
    int found = 0;
    size_t keep = 0;
    while (!found && (len = fread(buf + keep, 1, cap, f)) > 0) {
        size_t total = keep + len;
        for (size_t i = 0; i + nlen <= total && !found; i++)
            found = memcmp(buf + i, needle, nlen) == 0;
        keep = total < nlen - 1 ? total : nlen - 1;
        memmove(buf, buf + total - keep, keep);
    }
    free(buf);
    fclose(f);
    return found;
}

static void scan_dir(const char *dir, const char *needle, int *hits)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            scan_dir(path, needle, hits);
        else if (S_ISREG(st.st_mode) && file_contains(path, needle)) {
            fprintf(stderr, "token found in %s\n", path);
            (*hits)++;
        }
    }
    closedir(d);
}

static void no_token_reaches_the_log_or_the_data_directory(void **state)
{
    (void)state;
    char made[HARNESS_TOKEN_MAX];
    assert_int_equal(harness_token_create(&H, "scan-me", "submitter", 0, made), 0);
    json_t *r;
    harness_http_as(&H, made, "POST", "/v1/actions", echo_body, &r);
    json_decref(r);
    harness_http(&H, "POST", "/v1/tokens", "{\"name\":\"scan-api\",\"roles\":[\"reader\"]}", &r);
    char via_api[HARNESS_TOKEN_MAX];
    snprintf(via_api, sizeof via_api, "%s", str(r, "token"));
    json_decref(r);
    const char *wrong = "aior_WRONGwrongWRONGwrongWRONGwrongWRONGwrongWRO";
    harness_http_as(&H, wrong, "GET", "/v1/actions", NULL, NULL);
    harness_token_revoke(&H, "scan-me");
    harness_http_as(&H, made, "GET", "/v1/actions", NULL, NULL); /* revoked: logged as such */
    assert_int_equal(harness_stop(&H), 0);

    const char *tokens[] = {H.token, made, via_api, wrong};
    char data_dir[400];
    snprintf(data_dir, sizeof data_dir, "%s/var", H.dir);
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
        int hits = 0;
        assert_int_equal(file_contains(H.log_path, tokens[i]), 0);
        scan_dir(data_dir, tokens[i], &hits);
        assert_int_equal(hits, 0);
    }
    /* The scan can find things: the log does name the failures. */
    assert_true(file_contains(H.log_path, "authentication failed"));
}

static void aioctl_refuses_a_token_file_others_can_read(void **state)
{
    (void)state;
    char bin[300], out[4096], file[400];
    harness_bin(bin, sizeof bin, "aioctl");
    snprintf(file, sizeof file, "%s/token", H.dir);
    FILE *f = fopen(file, "w");
    fprintf(f, "%s\n", H.token);
    fclose(f);
    chmod(file, 0644);
    char *loose[] = {bin, "--token-file", file, "whoami", NULL};
    assert_int_equal(harness_run(&H, loose, out, sizeof out), 2);
    chmod(file, 0600);
    char *tight[] = {bin, "--token-file", file, "whoami", NULL};
    assert_int_equal(harness_run(&H, tight, out, sizeof out), 0);
    assert_non_null(strstr(out, "test-operator"));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(every_route_answers_each_identity_as_its_roles_say, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(token_made_offline_works_at_once_and_revocation_needs_no_restart, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(tokens_can_be_managed_through_the_api_by_an_operator, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(submitters_have_their_own_keys_and_see_their_own_actions, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(policies_see_the_submitter, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(repeated_bad_tokens_are_slowed_down, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(tls_serves_https_and_refuses_plain_http, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(no_token_reaches_the_log_or_the_data_directory, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(aioctl_refuses_a_token_file_others_can_read, start_default, stop_daemon),
};

AR_TEST_MAIN(tests, NULL, NULL)
