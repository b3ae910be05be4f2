/* test_secrets.c - credentials and lock-down against the real daemon: secrets set through the API
 * reach only their connector (its processes are replaced to pick them up), come back
 * "[REDACTED]" from a plugin that leaks them, never appear in a reply, a log or any file of the
 * data directory; a declared secret that is missing, a wrong key and a key file others may read
 * each stop the start, saying why, and change nothing; rotation keeps every secret usable; and
 * GET /v1/connectors reports the isolation layers of each connector. */
#include "test_main.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static harness H;

#define SECRET "s3cr3t-value-7f1c9a2be4d05813"

static int start(void **state)
{
    (void)state;
    char hostile[300], extra[600];
    harness_test_plugin(hostile, sizeof hostile, "t_hostile");
    snprintf(extra, sizeof extra, "\"t_hostile\": {\"plugin\": \"%s\", \"processes\": 1, \"timeout_ms\": 2000, "
             "\"retry\": {\"max_attempts\": 1}, \"allow_ports\": []}", hostile);
    harness_opts o = {.extra_connectors = extra};
    return harness_start(&H, &o);
}

static int stop(void **state)
{
    (void)state;
    return harness_teardown(&H);
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

static json_t *run(const char *connector, const char *action, const char *input)
{
    char body[512];
    snprintf(body, sizeof body, "{\"connector\": \"%s\", \"action\": \"%s\", \"input\": %s, \"wait_ms\": 10000}",
             connector, action, input);
    json_t *r = NULL;
    long st = harness_http(&H, "POST", "/v1/actions", body, &r);
    if (st != 201) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("submit %s: HTTP %ld %s", body, st, dump ? dump : "");
    }
    return r;
}

/* Whether the t_ok processes see secret "token" (its "secret" action), asked until it says
 * want (the processes are replaced in the background after a change). */
static int secret_seen(const char *connector, int want)
{
    int found = -1;
    for (int i = 0; i < 100 && found != want; i++) {
        json_t *a = run(connector, "secret", "{}");
        found = json_is_true(json_object_get(json_object_get(a, "result"), "found"));
        json_decref(a);
        if (found != want)
            usleep(50 * 1000);
    }
    return found;
}

static int file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = strlen(needle), cap = 1 << 20, len;
    char *buf = malloc(cap + n);
    int hit = 0;
    size_t keep = 0;
    while (!hit && (len = fread(buf + keep, 1, cap, f)) > 0) {
        len += keep;
        hit = memmem(buf, len, needle, n) != NULL;
        keep = len < n - 1 ? len : n - 1;
        memmove(buf, buf + len - keep, keep);
    }
    free(buf);
    fclose(f);
    return hit;
}

/* Every file below dir (recursively) that contains needle: counted. */
static int files_containing(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int hits = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            hits += files_containing(path, needle);
        else if (S_ISREG(st.st_mode) && file_contains(path, needle))
            hits++;
    }
    closedir(d);
    return hits;
}

static void set_secret(const char *connector, const char *name, const char *value, long want)
{
    char path[200], body[200];
    snprintf(path, sizeof path, "/v1/secrets/%s/%s", connector, name);
    snprintf(body, sizeof body, "{\"value\": \"%s\"}", value);
    json_t *r = NULL;
    long st = harness_http(&H, "PUT", path, body, &r);
    if (st != want) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("PUT %s: HTTP %ld %s", path, st, dump ? dump : "");
    }
    json_decref(r);
}

static void secrets_reach_their_connector_only_and_never_come_back(void **state)
{
    (void)state;
    assert_int_equal(secret_seen("t_ok", 0), 0);
    set_secret("t_ok", "token", SECRET, 200);
    /* The running processes are replaced and the new ones hold it. */
    assert_int_equal(secret_seen("t_ok", 1), 1);
    /* Another connector does not. */
    json_t *a = run("t_hostile", "other_secret", "{\"name\": \"token\"}");
    assert_false(json_is_true(json_object_get(json_object_get(a, "result"), "found")));
    json_decref(a);

    /* Listing shows names and versions, never values. */
    set_secret("t_ok", "token", SECRET "-v2", 200);
    json_t *list = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/secrets?connector=t_ok", NULL, &list), 200);
    json_t *first = json_array_get(json_object_get(list, "secrets"), 0);
    assert_string_equal(str(first, "name"), "token");
    assert_int_equal(json_integer_value(json_object_get(first, "version")), 2);
    char *dump = json_dumps(list, JSON_COMPACT);
    assert_null(strstr(dump, SECRET));
    free(dump);
    json_decref(list);

    /* A plugin that logs and returns its own secret: both arrive redacted. */
    set_secret("t_hostile", "token", SECRET, 200);
    json_t *leak = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(leak);
        leak = run("t_hostile", "leak_secret", "{}");
        if (strcmp(str(json_object_get(leak, "result"), "token"), "(none)") != 0 &&
            strcmp(str(json_object_get(leak, "result"), "token"), "") != 0)
            break;
        usleep(50 * 1000);
    }
    assert_string_equal(str(leak, "state"), "SUCCEEDED");
    assert_string_equal(str(json_object_get(leak, "result"), "token"), "[REDACTED]");
    dump = json_dumps(leak, JSON_COMPACT);
    assert_null(strstr(dump, SECRET));
    free(dump);
    json_decref(leak);

    /* Removing it: gone for the plugin too. */
    assert_int_equal(harness_http(&H, "DELETE", "/v1/secrets/t_ok/token", NULL, NULL), 200);
    assert_int_equal(harness_http(&H, "DELETE", "/v1/secrets/t_ok/token", NULL, NULL), 404);
    assert_int_equal(secret_seen("t_ok", 0), 0);
    set_secret("nowhere", "token", "x", 404);

    /* No plaintext byte sequence anywhere: the data directory, and the daemon's log. */
    assert_int_equal(harness_stop(&H), 0);
    char var[400];
    snprintf(var, sizeof var, "%s/var", H.dir);
    assert_int_equal(files_containing(var, SECRET), 0);
    assert_int_equal(file_contains(H.log_path, SECRET), 0);
    assert_int_equal(harness_restart(&H), 0);
}

static void the_connectors_view_reports_each_layer(void **state)
{
    (void)state;
    json_t *r = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/connectors", NULL, &r), 200);
    size_t i;
    json_t *c;
    int seen = 0;
    json_array_foreach(json_object_get(r, "connectors"), i, c) {
        if (strcmp(str(c, "name"), "t_hostile") != 0)
            continue;
        seen = 1;
        json_t *sb = json_object_get(c, "sandbox");
        assert_true(json_is_object(sb));
        assert_string_equal(str(sb, "seccomp"), "on");
        assert_string_equal(str(sb, "rlimits"), "on");
        assert_true(json_is_true(json_object_get(sb, "no_new_privs")));
        assert_true(json_is_false(json_object_get(sb, "dumpable")));
        json_t *ll = json_object_get(sb, "landlock");
        assert_true(json_is_object(ll) || json_is_string(ll)); /* "unavailable: ..." on old kernels */
        if (getuid() == 0)
            assert_true(json_is_integer(json_object_get(sb, "uid")));
        assert_int_equal(json_array_size(json_object_get(c, "allow_ports")), 0);
    }
    assert_true(seen);
    json_decref(r);
    /* The hostile plugin cannot run a shell; the daemon and the others go on. */
    json_t *a = run("t_hostile", "exec_sh", "{}");
    assert_string_equal(str(a, "state"), "FAILED");
    assert_non_null(strstr(str(json_object_get(a, "error"), "message"), "seccomp"));
    json_decref(a);
    a = run("t_ok", "ok", "{\"still\": \"serving\"}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    json_decref(a);
}

/* Replace every occurrence of from with to in the config file. */
static void edit_config(const char *from, const char *to)
{
    FILE *f = fopen(H.config_path, "r");
    assert_non_null(f);
    char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char out[16384];
    char *hit = strstr(text, from);
    assert_non_null(hit);
    snprintf(out, sizeof out, "%.*s%s%s", (int)(hit - text), text, to, hit + strlen(from));
    f = fopen(H.config_path, "w");
    fputs(out, f);
    fclose(f);
}

static void start_refused_with(const char *needle)
{
    assert_int_not_equal(harness_restart(&H), 0);
    assert_true(file_contains(H.log_path, needle));
}

static void a_missing_secret_a_wrong_key_or_an_open_key_file_stop_the_start(void **state)
{
    (void)state;
    set_secret("t_ok", "token", SECRET, 200);
    assert_int_equal(harness_stop(&H), 0);

    /* A secret the config declares but the vault lacks: named, with the command to fix it. */
    edit_config("\"t_old\": {", "\"t_old\": {\"secrets\": [\"api_key\"], ");
    start_refused_with("connector t_old needs the secret \\\"api_key\\\""); /* JSON-escaped in the log */
    edit_config("\"t_old\": {\"secrets\": [\"api_key\"], ", "\"t_old\": {");

    char key[400], saved[400];
    snprintf(key, sizeof key, "%s/var/vault.key", H.dir);
    snprintf(saved, sizeof saved, "%s/vault.key.saved", H.dir);
    assert_int_equal(rename(key, saved), 0);
    /* A key file others may read. */
    int fd = open(key, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "0000000000000000000000000000000000000000000000000000000000000000\n", 65), 65);
    fchmod(fd, 0644);
    close(fd);
    start_refused_with("chmod 600");
    /* The wrong key (0600). */
    chmod(key, 0600);
    start_refused_with("vault_wrong_key");
    /* No key at all while the vault holds secrets: refused, not replaced. */
    unlink(key);
    start_refused_with("vault_key_missing");
    /* The right key: everything is still there. */
    assert_int_equal(rename(saved, key), 0);
    assert_int_equal(harness_restart(&H), 0);
    assert_int_equal(secret_seen("t_ok", 1), 1);
}

static void rotation_keeps_every_secret_usable(void **state)
{
    (void)state;
    set_secret("t_ok", "token", SECRET, 200);
    set_secret("t_hostile", "token", SECRET, 200);
    char key[400], before[200] = "", after[200] = "";
    snprintf(key, sizeof key, "%s/var/vault.key", H.dir);
    FILE *f = fopen(key, "r");
    assert_non_null(fgets(before, sizeof before, f));
    fclose(f);
    json_t *r = NULL;
    assert_int_equal(harness_http(&H, "POST", "/v1/vault/rotate", NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "rotated")), 2);
    json_decref(r);
    f = fopen(key, "r");
    assert_non_null(fgets(after, sizeof after, f));
    fclose(f);
    assert_string_not_equal(before, after);
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(harness_stop(&H), 0);
    assert_int_equal(harness_restart(&H), 0);
    assert_int_equal(secret_seen("t_ok", 1), 1);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(secrets_reach_their_connector_only_and_never_come_back, start, stop),
    cmocka_unit_test_setup_teardown(the_connectors_view_reports_each_layer, start, stop),
    cmocka_unit_test_setup_teardown(a_missing_secret_a_wrong_key_or_an_open_key_file_stop_the_start, start, stop),
    cmocka_unit_test_setup_teardown(rotation_keeps_every_secret_usable, start, stop),
};

AR_TEST_MAIN(tests, NULL, NULL)
