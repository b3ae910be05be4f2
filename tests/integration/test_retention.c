/* test_retention.c - bounded history against the real daemon, with retention in seconds
 * (fractional days): `aioctl --config compact` turns a finished action into a stub that the API
 * shows as it is (and an idempotent resubmission answers 200 with it); later it goes with its
 * idempotency key, so the same key makes a new action; the audit chain verifies throughout; the
 * daemon's own compaction thread logs its run at start and lets the daemon stop cleanly; the
 * oldest audit entries are cut while the daemon appends, and the trail still verifies. */
#include "test_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static harness H;

/* actions 1.7 s, stubs and keys 4.3 s, audit bodies 3.5 s */
#define RETENTION "  \"retention\": {\"actions_days\": 0.00002, \"idempotency_days\": 0.00005, " \
                  "\"audit_bodies_days\": 0.00004, \"interval_s\": 3600}"

static int start(void **state)
{
    (void)state;
    harness_opts o = {.extra_top = RETENTION};
    return harness_start(&H, &o);
}

static int stop(void **state)
{
    (void)state;
    return harness_teardown(&H);
}

#define str harness_str

static json_t *submit_keyed(long want)
{
    json_t *r = NULL;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:s}", "connector", "echo", "action", "echo", "input",
                             "message", "kept for a while", "idempotency_key", "ret-1");
    if (st != want) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("submit: HTTP %ld, wanted %ld: %s", st, want, dump ? dump : "");
    }
    return r;
}

static json_t *await_state(const char *id, const char *state)
{
    char path[96];
    json_t *g = NULL;
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    for (int i = 0; i < 500; i++) {
        json_decref(g);
        g = NULL;
        harness_http(&H, "GET", path, NULL, &g);
        if (!strcmp(str(g, "state"), state))
            return g;
        usleep(20 * 1000);
    }
    fail_msg("action %s never reached %s", id, state);
    return NULL;
}

/* aioctl --config ... compact --json: its report (new reference). */
static json_t *compact(void)
{
    char bin[512], out[4096];
    harness_bin(bin, sizeof bin, "aioctl");
    char *argv[] = {bin, "--config", H.config_path, "compact", "--json", NULL};
    int rc = harness_run(&H, argv, out, sizeof out);
    if (rc != 0)
        fail_msg("aioctl compact: exit %d: %s", rc, out);
    json_t *doc = json_loads(out, 0, NULL);
    if (!doc)
        fail_msg("aioctl compact --json printed no JSON: %s", out);
    return doc;
}

static json_int_t num(const json_t *doc, const char *key)
{
    return json_integer_value(json_object_get(doc, key));
}

static void assert_audit_sound(void)
{
    json_t *v = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/audit/verify", NULL, &v), 200);
    if (!json_is_true(json_object_get(v, "ok")))
        fail_msg("audit chain broken: %s", str(v, "reason"));
    json_decref(v);
}

static int log_has(const char *needle)
{
    FILE *f = fopen(H.log_path, "r");
    if (!f)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static void a_finished_action_becomes_a_stub_then_its_key_is_free_again(void **state)
{
    (void)state;
    /* the daemon's own thread ran once at start */
    for (int i = 0; i < 250 && !log_has("compaction: "); i++)
        usleep(20 * 1000);
    assert_true(log_has("compaction: "));

    json_t *a = submit_keyed(201);
    char id[64];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    json_t *done = await_state(id, "SUCCEEDED");
    assert_false(json_is_true(json_object_get(done, "compacted")));
    assert_false(json_is_null(json_object_get(done, "input")));
    json_decref(done);

    /* 1.7 s after it finished its body may go; its key stays */
    usleep(2200 * 1000);
    json_t *report = compact();
    assert_true(num(report, "stubbed") >= 1);
    assert_int_equal(num(report, "deleted"), 0);
    json_decref(report);
    char path[96];
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    json_t *g = NULL;
    assert_int_equal(harness_http(&H, "GET", path, NULL, &g), 200);
    assert_true(json_is_true(json_object_get(g, "compacted")));
    assert_string_equal(str(g, "state"), "SUCCEEDED");
    assert_string_equal(str(g, "idempotency_key"), "ret-1");
    assert_true(json_is_null(json_object_get(g, "input")));
    assert_true(json_is_null(json_object_get(g, "result")));
    assert_true(json_is_null(json_object_get(g, "history")));
    assert_true(json_is_string(json_object_get(g, "finished_at")));
    json_decref(g);
    /* a late resubmission still deduplicates: the stub, 200 */
    json_t *again = submit_keyed(200);
    assert_string_equal(str(again, "id"), id);
    assert_true(json_is_true(json_object_get(again, "compacted")));
    json_decref(again);
    assert_audit_sound();

    /* 4.3 s after it finished the stub goes with its key: the same key is a new action */
    usleep(2400 * 1000);
    report = compact();
    assert_true(num(report, "deleted") >= 1);
    assert_true(num(report, "keys_deleted") >= 1);
    assert_true(num(report, "audit_erased") >= 1);
    json_decref(report);
    assert_int_equal(harness_http(&H, "GET", path, NULL, NULL), 404);
    json_t *fresh = submit_keyed(201);
    assert_string_not_equal(str(fresh, "id"), id);
    json_decref(fresh);
    assert_audit_sound();

    /* Its story is still on the chain, the old bodies erased. (GET /v1/actions/{id}/audit answers
     * 404 once the action is gone: it checks the caller may see the action first; the offline
     * reader does not.) */
    char bin[512], out[65536];
    harness_bin(bin, sizeof bin, "aioctl");
    char *argv[] = {bin, "--config", H.config_path, "--json", "audit", "show", id, NULL};
    int rc = harness_run(&H, argv, out, sizeof out);
    if (rc != 0)
        fail_msg("aioctl audit show: exit %d: %s", rc, out);
    json_t *story = json_loads(out, 0, NULL);
    json_t *entries = json_is_array(story) ? story : json_object_get(story, "entries");
    if (json_array_size(entries) < 3)
        fail_msg("aioctl audit show %s: %s", id, out);
    assert_true(json_is_true(json_object_get(json_array_get(entries, 0), "erased")));
    assert_string_equal(str(json_array_get(entries, 0), "type"), "received");
    json_decref(story);
}

/* audit bodies and entries 1.7 s: the oldest audit entries are cut */
#define RETENTION_CUT "  \"retention\": {\"actions_days\": 0.00002, \"idempotency_days\": 0.00002, " \
                      "\"audit_bodies_days\": 0.00002, \"audit_entries_days\": 0.00002, \"interval_s\": 3600}"

static int start_cut(void **state)
{
    (void)state;
    harness_opts o = {.extra_top = RETENTION_CUT};
    return harness_start(&H, &o);
}

/* aioctl ARGS... (a NULL-terminated list after the binary): its exit status; stdout in out. */
static int aioctl(char *out, size_t cap, char *const *args)
{
    char bin[512];
    char *argv[16] = {bin};
    size_t n = 1;
    harness_bin(bin, sizeof bin, "aioctl");
    for (; args[n - 1] && n < 15; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    return harness_run(&H, argv, out, cap);
}

/* The oldest audit entries are cut by `aioctl compact` while the daemon runs and appends: the
 * chain verifies from the anchor (through the daemon too), the daemon's appends go on from it,
 * a head kept before the cut cannot be checked (exit 6) and one kept after it can. */
static void old_audit_entries_are_cut_and_the_trail_still_verifies(void **state)
{
    (void)state;
    char head_old[600], head_new[600], out[8192];
    snprintf(head_old, sizeof head_old, "%s/head-old.json", H.dir);
    snprintf(head_new, sizeof head_new, "%s/head-new.json", H.dir);
    json_t *a = submit_keyed(201);
    char id[64];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    json_decref(await_state(id, "SUCCEEDED"));
    int rc = aioctl(out, sizeof out, (char *[]){"--config", H.config_path, "audit", "head", NULL});
    assert_int_equal(rc, 0);
    FILE *f = fopen(head_old, "w");
    assert_non_null(f);
    fputs(out, f);
    fclose(f);
    /* another action's entries after that head, cut with it: the kept head is before the cut */
    json_t *c = NULL;
    long st = harness_submit(&H, &c, "{s:s, s:s, s:{s:s}, s:s}", "connector", "echo", "action", "echo", "input",
                             "message", "cut too", "idempotency_key", "ret-0");
    assert_int_equal(st, 201);
    json_decref(await_state(str(c, "id"), "SUCCEEDED"));
    json_decref(c);

    usleep(2200 * 1000);
    json_t *report = compact();
    if (num(report, "audit_deleted") < 3)
        fail_msg("compact cut %lld audit entries", (long long)num(report, "audit_deleted"));
    json_decref(report);

    /* the daemon appends after the cut made by another process */
    json_t *b = NULL;
    st = harness_submit(&H, &b, "{s:s, s:s, s:{s:s}, s:s}", "connector", "echo", "action", "echo", "input",
                             "message", "after the cut", "idempotency_key", "ret-2");
    assert_int_equal(st, 201);
    json_decref(await_state(str(b, "id"), "SUCCEEDED"));
    json_decref(b);
    json_t *v = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/audit/verify", NULL, &v), 200);
    if (!json_is_true(json_object_get(v, "ok")))
        fail_msg("audit chain broken: %s", str(v, "reason"));
    assert_true(num(v, "cut_through") >= 3);
    assert_int_equal(num(v, "first_seq"), num(v, "cut_through") + 1);
    json_decref(v);

    rc = aioctl(out, sizeof out, (char *[]){"audit", "verify", NULL});
    if (rc != 0 || !strstr(out, "cut by retention on "))
        fail_msg("aioctl audit verify: exit %d: %s", rc, out);
    rc = aioctl(out, sizeof out, (char *[]){"audit", "verify", "--head", head_old, NULL});
    if (rc != 6 || !strstr(out, "kept head NOT checked: the kept head (seq "))
        fail_msg("aioctl audit verify --head (before the cut): exit %d: %s", rc, out);
    rc = aioctl(out, sizeof out, (char *[]){"--config", H.config_path, "audit", "head", NULL});
    assert_int_equal(rc, 0);
    f = fopen(head_new, "w");
    assert_non_null(f);
    fputs(out, f);
    fclose(f);
    rc = aioctl(out, sizeof out, (char *[]){"audit", "verify", "--head", head_new, NULL});
    if (rc != 0 || !strstr(out, "matches the kept head"))
        fail_msg("aioctl audit verify --head (after the cut): exit %d: %s", rc, out);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(a_finished_action_becomes_a_stub_then_its_key_is_free_again, start, stop),
    cmocka_unit_test_setup_teardown(old_audit_entries_are_cut_and_the_trail_still_verifies, start_cut, stop),
};

AR_TEST_MAIN(tests, NULL, NULL)
