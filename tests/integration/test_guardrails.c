/* test_guardrails.c - guardrail counters and validate() against the real daemon: a cap that
 * flips allow to approve, what counts (in flight, approved, not failed or rejected), many
 * concurrent decisions at the cap (exactly the cap gets through), counters across restart,
 * kill -9 and a reload that changes a window, and validate on a read vs a write. */
#include "test_main.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static harness H;

/* Connector "shop" is the fixture plugin t_ok under another name: write_op {"n"} is the
 * "spend", fail is an action that fails, ok is a read whose result is its input. */
static const char *const cap_policy =
    "counters = {\n"
    "  spent = {connector = 'shop', action = 'write_op', sum = 'n', window = '1h'},\n"
    "  failing = {connector = 'shop', action = 'fail', window = '1h'},\n"
    "}\n"
    "function decide(action, ctx)\n"
    "  if action.connector ~= 'shop' then return nil end\n"
    "  if action.action == 'write_op' then\n"
    "    local spent = ctx.counter('spent')\n"
    "    if spent + action.input.n > 100 then\n"
    "      return {verdict = 'approve', rule = 'cap', reason = 'over 100 per hour',\n"
    "              summary = string.format('spent %g of 100', spent)}\n"
    "    end\n"
    "  end\n"
    "  return {verdict = 'allow', rule = 'under_cap'}\n"
    "end\n"
    "function validate(action, result, ctx)\n"
    "  if action.connector ~= 'shop' then return nil end\n"
    "  if type(result) == 'table' and result.bad == true then\n"
    "    return {ok = false, rule = 'no_bad', reason = 'the result is marked bad'}\n"
    "  end\n"
    "  if type(result) == 'table' and result.n == 13 then\n"
    "    return {ok = false, rule = 'unlucky', reason = 'thirteen is not accepted'}\n"
    "  end\n"
    "  return true\n"
    "end\n";

static void write_policy(const char *name, const char *text)
{
    char path[400];
    snprintf(path, sizeof path, "%s/policies/%s", H.dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int start(void **state)
{
    (void)state;
    char plugin[300], shop[600];
    harness_test_plugin(plugin, sizeof plugin, "t_ok");
    snprintf(shop, sizeof shop, "\"shop\": {\"plugin\": \"%s\", \"processes\": 2, \"timeout_ms\": 5000}", plugin);
    harness_opts o = {.extra_connectors = shop, .extra_top = "  \"decision_workers\": 4,\n"
                                                             "  \"approvers\": {\"finance\": [\"token:fin\"]}"};
    if (harness_start(&H, &o) != 0)
        return -1;
    write_policy("cap.lua", cap_policy);
    json_t *r = NULL;
    long st = harness_http(&H, "POST", "/v1/policies/reload", NULL, &r);
    if (st != 200) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fprintf(stderr, "reload: HTTP %ld %s\n", st, dump ? dump : "");
        free(dump);
    }
    json_decref(r);
    return st == 200 ? 0 : -1;
}

static int stop(void **state)
{
    (void)state;
    return harness_teardown(&H);
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

/* Submit and wait up to 10 s for the action to settle; returns the action. */
static json_t *submit(const char *action, const char *input)
{
    char body[512];
    snprintf(body, sizeof body, "{\"connector\": \"shop\", \"action\": \"%s\", \"input\": %s, \"wait_ms\": 10000}",
             action, input);
    json_t *r = NULL;
    long st = harness_http(&H, "POST", "/v1/actions", body, &r);
    if (st != 201 && st != 200) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("submit %s: HTTP %ld %s", body, st, dump ? dump : "");
    }
    return r;
}

/* The value GET /v1/policies shows for a counter. */
static double counter_value(const char *name)
{
    json_t *r = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/policies", NULL, &r), 200);
    size_t i;
    json_t *c;
    double v = -1;
    json_array_foreach(json_object_get(r, "counters"), i, c) {
        if (!strcmp(str(c, "name"), name))
            v = json_number_value(json_object_get(c, "value"));
    }
    json_decref(r);
    return v;
}

static json_t *await(const char *id, const char *state)
{
    char path[96];
    json_t *g = NULL;
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    for (int i = 0; i < 500; i++) {
        json_decref(g);
        g = NULL;
        harness_http(&H, "GET", path, NULL, &g);
        if (!strcmp(str(g, "state"), state))
            break;
        usleep(20 * 1000);
    }
    return g;
}

static void a_cap_flips_allow_to_approve(void **state)
{
    (void)state;
    json_t *a = submit("write_op", "{\"n\": 40}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    json_decref(a);
    a = submit("write_op", "{\"n\": 40}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    assert_string_equal(str(json_object_get(a, "decision"), "rule"), "under_cap");
    json_decref(a);
    assert_true(counter_value("spent") == 80);
    /* 80 + 30 > 100: a human must approve; the summary shows the counter. */
    a = submit("write_op", "{\"n\": 30}");
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    assert_string_equal(str(json_object_get(a, "decision"), "rule"), "cap");
    assert_string_equal(str(json_object_get(a, "approval"), "summary"), "spent 80 of 100");
    json_decref(a);
    /* Waiting for approval does not count; 20 more still fits. */
    assert_true(counter_value("spent") == 80);
    a = submit("write_op", "{\"n\": 20}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    json_decref(a);
    assert_true(counter_value("spent") == 100);
}

static void approved_and_in_flight_count_failed_and_rejected_do_not(void **state)
{
    (void)state;
    char fin[64];
    assert_int_equal(harness_token_create(&H, "fin", "approver", 0, fin), 0);
    /* In flight: a slow write counts while it runs. */
    json_t *r = NULL;
    assert_int_equal(harness_http(&H, "POST", "/v1/actions",
        "{\"connector\": \"shop\", \"action\": \"write_op\", \"input\": {\"n\": 25, \"ms\": 1500}}", &r), 201);
    char slow[40];
    snprintf(slow, sizeof slow, "%s", str(r, "id"));
    json_decref(r);
    json_t *g = await(slow, "DISPATCHED");
    assert_string_equal(str(g, "state"), "DISPATCHED");
    json_decref(g);
    assert_true(counter_value("spent") == 25);
    g = await(slow, "SUCCEEDED");
    assert_string_equal(str(g, "state"), "SUCCEEDED");
    json_decref(g);
    assert_true(counter_value("spent") == 25);

    /* Failed: counted while it was allowed, taken off once it failed. */
    json_t *a = submit("fail", "{\"class\": \"permanent\", \"message\": \"no\"}");
    assert_string_equal(str(a, "state"), "FAILED");
    json_decref(a);
    assert_true(counter_value("failing") == 0);

    /* Over the cap: rejected does not count, approved does. */
    a = submit("write_op", "{\"n\": 90}");
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    char path[96];
    snprintf(path, sizeof path, "/v1/approvals/%s", str(a, "id"));
    json_decref(a);
    assert_int_equal(harness_http_as(&H, fin, "POST", path, "{\"decision\": \"reject\", \"comment\": \"no\"}", NULL), 200);
    assert_true(counter_value("spent") == 25);
    a = submit("write_op", "{\"n\": 90}");
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    char id[40];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    snprintf(path, sizeof path, "/v1/approvals/%s", id);
    json_decref(a);
    assert_int_equal(harness_http_as(&H, fin, "POST", path, "{\"decision\": \"approve\"}", NULL), 200);
    g = await(id, "SUCCEEDED");
    assert_string_equal(str(g, "state"), "SUCCEEDED");
    json_decref(g);
    assert_true(counter_value("spent") == 115);
}

/* ---- concurrent decisions at the cap ---------------------------------------------------------- */

#define RACERS 8
#define PER_RACER 5

typedef struct racer {
    int allowed, parked, other;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    for (int i = 0; i < PER_RACER; i++) {
        json_t *a = NULL;
        long st = harness_http(&H, "POST", "/v1/actions",
                               "{\"connector\": \"shop\", \"action\": \"write_op\", \"input\": {\"n\": 5}}", &a);
        const char *s = str(a, "state");
        if (st == 201 && !strcmp(s, "PENDING_APPROVAL"))
            r->parked++;
        else if (st == 201 && (!strcmp(s, "READY") || !strcmp(s, "DISPATCHED") || !strcmp(s, "SUCCEEDED")))
            r->allowed++;
        else
            r->other++;
        json_decref(a);
    }
    return NULL;
}

static void concurrent_decisions_at_the_cap_let_exactly_the_cap_through(void **state)
{
    (void)state;
    /* 40 submissions of 5 against a cap of 100 from 8 clients on 4 decision workers: exactly
     * 20 may pass; without the re-decision on a changed counter, more slip under. */
    pthread_t t[RACERS];
    racer r[RACERS] = {0};
    for (int i = 0; i < RACERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    int allowed = 0, parked = 0, other = 0;
    for (int i = 0; i < RACERS; i++) {
        pthread_join(t[i], NULL);
        allowed += r[i].allowed;
        parked += r[i].parked;
        other += r[i].other;
    }
    assert_int_equal(other, 0);
    assert_int_equal(allowed, 20);
    assert_int_equal(parked, RACERS * PER_RACER - 20);
    assert_true(counter_value("spent") == 100);
}

/* ---- durability ------------------------------------------------------------------------------- */

static void counters_survive_restart_kill9_and_a_window_change(void **state)
{
    (void)state;
    json_t *a = submit("write_op", "{\"n\": 30}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    json_decref(a);
    a = submit("write_op", "{\"n\": 12}");
    json_decref(a);
    assert_true(counter_value("spent") == 42);
    assert_int_equal(harness_stop(&H), 0);
    assert_int_equal(harness_restart(&H), 0);
    assert_true(counter_value("spent") == 42);

    /* A write killed mid-call (idempotency none) ends UNKNOWN_OUTCOME: it may have happened,
     * so it still counts. */
    json_t *r = NULL;
    assert_int_equal(harness_http(&H, "POST", "/v1/actions",
        "{\"connector\": \"shop\", \"action\": \"write_op\", \"input\": {\"n\": 8, \"ms\": 3000}}", &r), 201);
    char id[40];
    snprintf(id, sizeof id, "%s", str(r, "id"));
    json_decref(r);
    json_t *g = await(id, "DISPATCHED");
    json_decref(g);
    harness_kill9(&H);
    assert_int_equal(harness_restart(&H), 0);
    g = await(id, "UNKNOWN_OUTCOME");
    assert_string_equal(str(g, "state"), "UNKNOWN_OUTCOME");
    json_decref(g);
    assert_true(counter_value("spent") == 50);

    /* A new window is a new counter, filled from the journal when the reload installs it. */
    char *wider = strdup(cap_policy);
    char *w = strstr(wider, "'1h'");
    memcpy(w, "'2h'", 4);
    write_policy("cap.lua", wider);
    free(wider);
    json_t *rr = NULL;
    assert_int_equal(harness_http(&H, "POST", "/v1/policies/reload", NULL, &rr), 200);
    json_decref(rr);
    assert_true(counter_value("spent") == 50);
    a = submit("write_op", "{\"n\": 51}");
    assert_string_equal(str(a, "state"), "PENDING_APPROVAL");
    json_decref(a);
}

/* ---- validate ----------------------------------------------------------------------------------- */

static void validate_fails_a_read_and_flags_a_write(void **state)
{
    (void)state;
    /* A read whose result is rejected fails, and is not retried. */
    json_t *a = submit("ok", "{\"bad\": true}");
    assert_string_equal(str(a, "state"), "FAILED");
    assert_string_equal(str(json_object_get(a, "error"), "class"), "validation_failed");
    assert_string_equal(str(json_object_get(a, "validation"), "rule"), "no_bad");
    assert_string_equal(str(json_object_get(a, "validation"), "policy"), "cap.lua");
    assert_int_equal(json_integer_value(json_object_get(a, "attempts")), 1);
    json_decref(a);
    a = submit("ok", "{\"bad\": false}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    assert_true(json_is_null(json_object_get(a, "validation")));
    assert_false(json_is_true(json_object_get(a, "review")));
    json_decref(a);

    /* A write already acted: SUCCEEDED, flagged for review, never retried. */
    a = submit("write_op", "{\"n\": 13}");
    assert_string_equal(str(a, "state"), "SUCCEEDED");
    assert_true(json_is_true(json_object_get(a, "review")));
    assert_string_equal(str(json_object_get(a, "validation"), "rule"), "unlucky");
    assert_string_equal(str(json_object_get(a, "validation"), "reason"), "thirteen is not accepted");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(a, "result"), "n")), 13);
    assert_int_equal(json_integer_value(json_object_get(a, "attempts")), 1);
    char id[40];
    snprintf(id, sizeof id, "%s", str(a, "id"));
    json_decref(a);
    /* It counts (it happened), and ops find it in the review list. */
    assert_true(counter_value("spent") == 13);
    json_t *list = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/actions?review=true", NULL, &list), 200);
    json_t *actions = json_object_get(list, "actions");
    assert_int_equal(json_array_size(actions), 1);
    assert_string_equal(str(json_array_get(actions, 0), "id"), id);
    json_decref(list);
    assert_int_equal(harness_http(&H, "GET", "/v1/actions?review=maybe", NULL, NULL), 400);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(a_cap_flips_allow_to_approve, start, stop),
    cmocka_unit_test_setup_teardown(approved_and_in_flight_count_failed_and_rejected_do_not, start, stop),
    cmocka_unit_test_setup_teardown(concurrent_decisions_at_the_cap_let_exactly_the_cap_through, start, stop),
    cmocka_unit_test_setup_teardown(counters_survive_restart_kill9_and_a_window_change, start, stop),
    cmocka_unit_test_setup_teardown(validate_fails_a_read_and_flags_a_write, start, stop),
};

AR_TEST_MAIN(tests, NULL, NULL)
