/* test_approvals.c - the human approval queue and graded autonomy against the real daemon:
 * approve, reject, expire, four-eyes, the roles a policy names, deciding twice, approval by
 * default for writes, and each autonomy level including a change at runtime. */
#include "test_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include "harness.h"

static harness H;

static int start(void **state)
{
    (void)state;
    harness_opts o = {.extra_top = "  \"approvers\": {\"finance\": [\"token:fin\"]},\n"
                                   "  \"autonomy\": {\"t_ok.sleep\": \"semi\", \"t_ok.big\": \"suggest\"}"};
    return harness_start(&H, &o);
}

static int stop(void **state)
{
    (void)state;
    return harness_teardown(&H);
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

/* Submit as a token, waiting for the action to settle; returns the action. */
static json_t *submit_as(const char *token, const char *body)
{
    json_t *r;
    long st = harness_http_as(&H, token, "POST", "/v1/actions", body, &r);
    if (st != 201) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("submit: HTTP %ld %s", st, dump ? dump : "");
    }
    return r;
}

static long decide(const char *token, const char *id, const char *body, json_t **out)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/approvals/%s", id);
    return harness_http_as(&H, token, "POST", path, body, out);
}

static json_t *await(const char *id, const char *state)
{
    char path[96];
    json_t *g = NULL;
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    for (int i = 0; i < 500; i++) {
        json_decref(g);
        harness_http(&H, "GET", path, NULL, &g);
        if (!strcmp(str(g, "state"), state))
            break;
        usleep(20 * 1000);
    }
    return g;
}

/* tests/integration/policies/fixtures.lua: t_ok "fail" asks for approval by role finance,
 * four eyes, 2 s; "write_op" with n < 0 abstains (writes then default to approval). */
static const char *needs_finance = "{\"connector\": \"t_ok\", \"action\": \"write_op\", \"input\": {\"n\": 7}, "
                                   "\"wait_ms\": 10000}";

static void approve_then_it_runs(void **state)
{
    (void)state;
    char alice[64], fin[64], other[64];
    assert_int_equal(harness_token_create(&H, "alice", "submitter", 0, alice), 0);
    assert_int_equal(harness_token_create(&H, "fin", "approver", 0, fin), 0);
    assert_int_equal(harness_token_create(&H, "other", "approver", 0, other), 0);
    json_t *a = submit_as(alice, needs_finance);
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    char id[40];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);

    json_t *list;
    assert_int_equal(harness_http_as(&H, other, "GET", "/v1/approvals?state=pending", NULL, &list), 200);
    json_t *item = json_array_get(json_object_get(list, "approvals"), 0);
    assert_string_equal(str(item, "id"), id);
    assert_string_equal(str(item, "summary"), "write 7 needs finance");
    assert_string_equal(json_string_value(json_array_get(json_object_get(item, "roles"), 0)), "finance");
    json_decref(list);

    json_t *r;
    /* An approver without the role the policy named. */
    assert_int_equal(decide(other, id, "{\"decision\": \"approve\"}", &r), 403);
    assert_string_equal(str(r, "error"), "forbidden");
    json_decref(r);
    /* A submitter cannot decide at all. */
    assert_int_equal(decide(alice, id, "{\"decision\": \"approve\"}", NULL), 403);
    assert_int_equal(decide(fin, id, "{\"decision\": \"maybe\"}", NULL), 400);
    assert_int_equal(decide(fin, id, "{\"decision\": \"approve\", \"comment\": \"checked\"}", &r), 200);
    assert_string_equal(str(r, "decided_by"), "fin");
    assert_string_equal(str(r, "comment"), "checked");
    json_decref(r);
    /* The same decision again changes nothing; another one is refused. */
    assert_int_equal(decide(fin, id, "{\"decision\": \"approve\"}", &r), 200);
    json_decref(r);
    assert_int_equal(decide(fin, id, "{\"decision\": \"reject\"}", &r), 409);
    assert_string_equal(str(r, "error"), "already_decided");
    json_decref(r);
    json_t *done = await(id, "SUCCEEDED");
    assert_string_equal(str(done, "state"), "SUCCEEDED");
    assert_string_equal(str(json_object_get(done, "approval"), "by"), "fin");
    json_decref(done);
}

static void the_wait_for_approval_does_not_eat_the_deadline(void **state)
{
    (void)state;
    char fin[64];
    assert_int_equal(harness_token_create(&H, "fin", "approver", 0, fin), 0);
    json_t *a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"write_op\", \"input\": {\"n\": 7}, "
                                   "\"deadline_ms\": 1000}");
    char id[40];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    usleep(1500 * 1000); /* longer than the whole deadline */
    json_t *r;
    assert_int_equal(decide(fin, id, "{\"decision\": \"approve\"}", &r), 200);
    json_decref(r);
    json_t *g = await(id, "SUCCEEDED");
    assert_string_equal(str(g, "state"), "SUCCEEDED");
    json_decref(g);
}

static void the_submitter_can_cancel_while_it_waits(void **state)
{
    (void)state;
    char alice[64], fin[64];
    assert_int_equal(harness_token_create(&H, "alice", "submitter", 0, alice), 0);
    assert_int_equal(harness_token_create(&H, "fin", "approver", 0, fin), 0);
    json_t *a = submit_as(alice, needs_finance);
    char id[40], path[96];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    snprintf(path, sizeof path, "/v1/actions/%s/cancel", id);
    json_t *r;
    assert_int_equal(harness_http_as(&H, alice, "POST", path, NULL, &r), 200);
    assert_string_equal(str(r, "state"), "CANCELLED");
    json_decref(r);
    assert_int_equal(decide(fin, id, "{\"decision\": \"approve\"}", &r), 409);
    assert_string_equal(str(r, "error"), "already_decided");
    json_decref(r);
}

static void reject_ends_it(void **state)
{
    (void)state;
    char fin[64];
    assert_int_equal(harness_token_create(&H, "fin", "approver", 0, fin), 0);
    json_t *a = submit_as(H.token, needs_finance);
    char id[40];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    json_t *r;
    assert_int_equal(decide(fin, id, "{\"decision\": \"reject\", \"comment\": \"not this month\"}", &r), 200);
    json_decref(r);
    json_t *g = await(id, "REJECTED");
    assert_string_equal(str(g, "state"), "REJECTED");
    assert_string_equal(str(json_object_get(g, "error"), "message"), "not this month");
    assert_int_equal(json_integer_value(json_object_get(g, "attempts")), 0);
    json_decref(g);
}

static void four_eyes_and_expiry(void **state)
{
    (void)state;
    char fin[64];
    assert_int_equal(harness_token_create(&H, "fin", "submitter,approver", 0, fin), 0);
    /* fixtures.lua: "fail" needs finance, four eyes, expires in 2 s. */
    const char *body = "{\"connector\": \"t_ok\", \"action\": \"fail\", \"input\": {\"class\": \"invalid\", "
                       "\"message\": \"x\"}, \"wait_ms\": 10000}";
    json_t *a = submit_as(fin, body);
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    char id[40];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    json_t *r;
    assert_int_equal(decide(fin, id, "{\"decision\": \"approve\"}", &r), 403);
    assert_string_equal(str(r, "error"), "four_eyes");
    json_decref(r);
    json_t *g = await(id, "EXPIRED");
    assert_string_equal(str(g, "state"), "EXPIRED");
    json_decref(g);
    char other[64];
    assert_int_equal(harness_token_create(&H, "fin2", "approver", 0, other), 0);
    assert_int_equal(decide(H.token, id, "{\"decision\": \"approve\"}", &r), 409);
    assert_string_equal(str(r, "error"), "approval_expired");
    json_decref(r);
}

static void expiry_survives_a_restart(void **state)
{
    (void)state;
    const char *body = "{\"connector\": \"t_ok\", \"action\": \"fail\", \"input\": {\"class\": \"invalid\", "
                       "\"message\": \"x\"}}";
    json_t *a = submit_as(H.token, body);
    char id[40];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    harness_kill9(&H);
    assert_int_equal(harness_restart(&H), 0);
    json_t *g = await(id, "EXPIRED");
    assert_string_equal(str(g, "state"), "EXPIRED");
    json_decref(g);
}

static void autonomy_levels_and_a_runtime_change(void **state)
{
    (void)state;
    /* semi: an allow becomes approve. */
    json_t *a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"sleep\", \"input\": {\"ms\": 1}}");
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    assert_string_equal(str(json_object_get(a, "decision"), "autonomy"), "semi");
    assert_string_equal(str(json_object_get(a, "decision"), "policy_verdict"), "allow");
    json_decref(a);
    /* suggest: recorded, never run. */
    a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"big\", \"input\": {\"bytes\": 1}}");
    assert_string_equal(str(a, "state"), "SUGGESTED");
    assert_int_equal(json_integer_value(json_object_get(a, "attempts")), 0);
    json_decref(a);
    /* auto (no pattern): the policy alone. */
    a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"ok\", \"input\": {}, \"wait_ms\": 5000}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    json_decref(a);
    /* deny stands at every level. */
    a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"big\", \"input\": {\"bytes\": 1, \"deny_me\": true}}");
    assert_string_equal(str(a, "state"), "DENIED");
    json_decref(a);

    /* An operator changes a level at runtime; it is journaled and outlives a restart. */
    char reader[64];
    assert_int_equal(harness_token_create(&H, "rd", "reader", 0, reader), 0);
    assert_int_equal(harness_http_as(&H, reader, "PUT", "/v1/autonomy", "{\"pattern\": \"t_ok.*\", \"level\": \"suggest\"}", NULL), 403);
    assert_int_equal(harness_http(&H, "PUT", "/v1/autonomy", "{\"pattern\": \"t_ok.\", \"level\": \"suggest\"}", NULL), 400);
    assert_int_equal(harness_http(&H, "PUT", "/v1/autonomy", "{\"pattern\": \"t_ok.ok\", \"level\": \"loose\"}", NULL), 400);
    json_t *r;
    assert_int_equal(harness_http(&H, "PUT", "/v1/autonomy", "{\"pattern\": \"t_ok.*\", \"level\": \"suggest\"}", &r), 200);
    assert_string_equal(str(json_object_get(json_object_get(r, "runtime"), "t_ok.*"), "level"), "suggest");
    json_decref(r);
    assert_int_equal(harness_stop(&H), 0);
    assert_int_equal(harness_restart(&H), 0);
    a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"ok\", \"input\": {}}");
    assert_string_equal(str(a, "state"), "SUGGESTED");
    json_decref(a);
    /* The more specific config pattern still wins for t_ok.sleep. */
    a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"sleep\", \"input\": {\"ms\": 1}}");
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    json_decref(a);
    /* Removing the runtime setting restores the config. */
    assert_int_equal(harness_http(&H, "PUT", "/v1/autonomy", "{\"pattern\": \"t_ok.*\", \"level\": null}", NULL), 200);
    a = submit_as(H.token, "{\"connector\": \"t_ok\", \"action\": \"ok\", \"input\": {}, \"wait_ms\": 5000}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    json_decref(a);
}

/* ---- hot reload ------------------------------------------------------------------------------------ */

static void write_policy(const char *name, const char *text)
{
    char path[400];
    snprintf(path, sizeof path, "%s/policies/%s", H.dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void decision_time_is_exposed(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++) {
        json_t *a = submit_as(H.token, "{\"connector\": \"echo\", \"action\": \"echo\", \"input\": {\"message\": \"t\"}}");
        assert_true(json_integer_value(json_object_get(json_object_get(a, "decision"), "duration_ns")) > 0);
        json_decref(a);
    }
    json_t *r;
    assert_int_equal(harness_http(&H, "GET", "/v1/policies", NULL, &r), 200);
    json_t *t = json_object_get(r, "decision_time");
    assert_int_equal(json_integer_value(json_object_get(t, "count")), 5);
    assert_true(json_real_value(json_object_get(t, "p50_us_at_most")) > 0);
    assert_true(json_real_value(json_object_get(t, "p99_us_at_most")) >= json_real_value(json_object_get(t, "p50_us_at_most")));
    assert_true(json_real_value(json_object_get(t, "max_us")) > 0);
    json_decref(r);
}

static char *policy_version(void)
{
    json_t *r;
    assert_int_equal(harness_http(&H, "GET", "/v1/policies", NULL, &r), 200);
    char *v = strdup(str(r, "version"));
    json_decref(r);
    return v;
}

static void reload_refuses_a_broken_set_and_takes_a_good_one(void **state)
{
    (void)state;
    char *v1 = policy_version();
    write_policy("broken.lua", "function decide(action, ctx)\n  return {verdict = \n");
    json_t *r;
    assert_int_equal(harness_http(&H, "POST", "/v1/policies/reload", NULL, &r), 422);
    assert_string_equal(str(r, "error"), "policy_invalid");
    assert_non_null(strstr(str(r, "message"), "broken.lua:"));
    json_decref(r);
    char *still = policy_version();
    assert_string_equal(still, v1);
    free(still);
    /* The old set keeps deciding. */
    json_t *a = submit_as(H.token, "{\"connector\": \"echo\", \"action\": \"echo\", \"input\": {\"message\": \"hi\"}, \"wait_ms\": 5000}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    json_decref(a);

    /* A set that compiles but fails its own tests is refused too. */
    char path[400];
    snprintf(path, sizeof path, "%s/policies/broken.lua", H.dir);
    unlink(path);
    write_policy("echo_test.lua", "tests = { { name = \"echo is allowed\", action = { connector = \"echo\", "
                 "action = \"echo\", effect = \"read\", input = { message = \"hi\" } }, "
                 "expect = { verdict = \"allow\" } } }\n");
    write_policy("zz_no_echo.lua", "function decide(action, ctx)\n  if action.connector == \"echo\" then\n"
                 "    return {verdict = \"deny\", rule = \"no_echo_today\", reason = \"echo is off\"}\n  end\nend\n");
    assert_int_equal(harness_http(&H, "POST", "/v1/policies/reload", NULL, &r), 422);
    assert_string_equal(str(r, "error"), "policy_tests_failed");
    assert_non_null(strstr(str(r, "message"), "echo is allowed"));
    json_decref(r);
    snprintf(path, sizeof path, "%s/policies/echo_test.lua", H.dir);
    unlink(path);

    /* Without the contradicting test, the new rule is taken; decisions carry the new version. */
    write_policy("zz_no_echo.lua", "function decide(action, ctx)\n  if action.connector == \"echo\" then\n"
                 "    return {verdict = \"deny\", rule = \"no_echo_today\", reason = \"echo is off\"}\n  end\nend\n");
    assert_int_equal(harness_http(&H, "POST", "/v1/policies/reload", NULL, &r), 200);
    char v2[64];
    snprintf(v2, sizeof v2, "%s", str(r, "version"));
    assert_string_not_equal(v2, v1);
    json_decref(r);
    a = submit_as(H.token, "{\"connector\": \"echo\", \"action\": \"echo\", \"input\": {\"message\": \"hi\"}}");
    assert_string_equal(str(a, "state"), "DENIED");
    assert_string_equal(str(json_object_get(a, "decision"), "rule"), "no_echo_today");
    assert_string_equal(str(json_object_get(a, "decision"), "policy_version"), v2);
    json_decref(a);

    /* A file change alone reloads (inotify), and so does SIGHUP. */
    snprintf(path, sizeof path, "%s/policies/zz_no_echo.lua", H.dir);
    unlink(path);
    char *v3 = NULL;
    for (int i = 0; i < 100; i++) {
        free(v3);
        v3 = policy_version();
        if (strcmp(v3, v2) != 0)
            break;
        usleep(50 * 1000);
    }
    assert_string_equal(v3, v1);
    free(v3);
    write_policy("zz_no_echo.lua", "function decide(action, ctx) return nil end\n");
    kill(H.pid, SIGHUP);
    char *v4 = NULL;
    for (int i = 0; i < 100; i++) {
        free(v4);
        v4 = policy_version();
        if (strcmp(v4, v1) != 0)
            break;
        usleep(50 * 1000);
    }
    assert_string_not_equal(v4, v1);
    free(v4);
    free(v1);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(approve_then_it_runs, start, stop),
    cmocka_unit_test_setup_teardown(the_wait_for_approval_does_not_eat_the_deadline, start, stop),
    cmocka_unit_test_setup_teardown(the_submitter_can_cancel_while_it_waits, start, stop),
    cmocka_unit_test_setup_teardown(reject_ends_it, start, stop),
    cmocka_unit_test_setup_teardown(four_eyes_and_expiry, start, stop),
    cmocka_unit_test_setup_teardown(expiry_survives_a_restart, start, stop),
    cmocka_unit_test_setup_teardown(autonomy_levels_and_a_runtime_change, start, stop),
    cmocka_unit_test_setup_teardown(reload_refuses_a_broken_set_and_takes_a_good_one, start, stop),
    cmocka_unit_test_setup_teardown(decision_time_is_exposed, start, stop),
};

AR_TEST_MAIN(tests, NULL, NULL)
