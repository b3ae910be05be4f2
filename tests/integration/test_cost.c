/* test_cost.c - what a call cost (set_cost, plugin ABI 1.2) against the real daemon: each
 * attempt's cost on its history entry, the record's running total over retries, a success that
 * costs once, units kept apart (whole amounts stay integers), and no cost where none was
 * reported. The total is read from the journal once the daemon has stopped (the API's view of
 * an action shows the history, whose entries carry each attempt's cost). */
#include "test_main.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "action.h"
#include "harness.h"
#include "journal.h"

static harness H;

/* Connector "t_cost" is the fixture plugin t_ok with 3 attempts and a short backoff: its
 * action costly {"amount", "unit", "fail", "extra"} reports a cost, then succeeds or fails
 * with class retryable (see tests/plugins/t_ok.c). The fixture policy allows it. */
static int start(void **state)
{
    (void)state;
    char plugin[300], extra[700];
    harness_test_plugin(plugin, sizeof plugin, "t_ok");
    snprintf(extra, sizeof extra,
             "\"t_cost\": {\"plugin\": \"%s\", \"processes\": 1, \"timeout_ms\": 5000, "
             "\"retry\": {\"max_attempts\": 3, \"initial_ms\": 10, \"max_ms\": 20}}", plugin);
    harness_opts o = {.extra_connectors = extra};
    return harness_start(&H, &o) == 0 ? 0 : -1;
}

static int stop(void **state)
{
    (void)state;
    return harness_teardown(&H);
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

static void fail_with(const char *what, const json_t *v)
{
    char *dump = v ? json_dumps(v, JSON_COMPACT) : NULL;
    fail_msg("%s: %s", what, dump ? dump : "(null)");
}

/* Submit costly on t_cost with input and wait until the action ends in state want; returns
 * the action as the API shows it. */
static json_t *run_costly(const char *input, const char *want)
{
    char body[700], path[96];
    snprintf(body, sizeof body, "{\"connector\": \"t_cost\", \"action\": \"costly\", \"input\": %s, "
             "\"wait_ms\": 10000}", input);
    json_t *a = NULL;
    long st = harness_http(&H, "POST", "/v1/actions", body, &a);
    if (st != 201 && st != 200)
        fail_with("submit", a);
    snprintf(path, sizeof path, "/v1/actions/%s", str(a, "id"));
    for (int i = 0; i < 500 && strcmp(str(a, "state"), want) != 0; i++) {
        usleep(20 * 1000);
        json_decref(a);
        a = NULL;
        harness_http(&H, "GET", path, NULL, &a);
    }
    if (strcmp(str(a, "state"), want) != 0)
        fail_with(want, a);
    return a;
}

/* The invoke entries of an action's history; each must carry cost want (JSON text; NULL:
 * none). Returns how many there are. */
static size_t check_attempt_costs(const json_t *a, const char *want)
{
    json_t *w = want ? json_loads(want, 0, NULL) : NULL;
    size_t i, n = 0;
    json_t *e;
    json_array_foreach(json_object_get(a, "history"), i, e) {
        if (strcmp(str(e, "kind"), "invoke") != 0)
            continue;
        n++;
        json_t *cost = json_object_get(e, "cost");
        if (want ? !json_equal(cost, w) : cost != NULL)
            fail_with(want ? want : "no cost expected on this history entry", e);
    }
    json_decref(w);
    return n;
}

/* Stop the daemon and read the stored record of action id from its journal. */
static json_t *stored_record(const char *id)
{
    assert_int_equal(harness_stop(&H), 0);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/var/journal", H.dir);
    journal *j = NULL;
    journal_opts o = {.dir = dir, .map_size_mb = 64};
    ar_error err = {0};
    if (journal_open(&o, &j, &err) != AR_OK)
        fail_msg("journal_open: %s", err.message);
    json_t *rec = NULL;
    if (action_load_by_id(j, id, &rec, &err) != AR_OK)
        fail_msg("action_load_by_id %s: %s", id, err.message);
    journal_close(j);
    return rec;
}

static void a_retried_failure_adds_up_every_attempt(void **state)
{
    (void)state;
    json_t *a = run_costly("{\"amount\": 0.5, \"unit\": \"USD\", \"fail\": true}", "FAILED");
    assert_int_equal(json_integer_value(json_object_get(a, "attempts")), 3);
    assert_int_equal(check_attempt_costs(a, "{\"USD\": 0.5}"), 3);
    assert_string_equal(str(json_object_get(a, "error"), "class"), "retryable");
    /* The API shows the total too, and the stats count it per finished action. */
    if (json_number_value(json_object_get(json_object_get(a, "cost"), "USD")) != 1.5)
        fail_with("total cost in the API reply, expected {\"USD\": 1.5}", a);
    json_t *stats = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/stats", NULL, &stats), 200);
    size_t k;
    json_t *c;
    int seen = 0;
    json_array_foreach(json_object_get(stats, "connectors"), k, c) {
        if (strcmp(str(c, "connector"), "t_cost") != 0)
            continue;
        seen = 1;
        assert_true(json_number_value(json_object_get(json_object_get(json_object_get(c, "cost"), "total"), "USD")) == 1.5);
        assert_true(json_number_value(json_object_get(json_object_get(json_object_get(c, "cost"), "per_action"), "USD")) == 1.5);
    }
    assert_true(seen);
    json_decref(stats);
    /* Per day, from the journal: today's actions of t_cost and what they cost. */
    char day[16], path[64];
    time_t now = time(NULL);
    strftime(day, sizeof day, "%Y-%m-%d", gmtime(&now));
    snprintf(path, sizeof path, "/v1/stats?day=%s", day);
    assert_int_equal(harness_http(&H, "GET", path, NULL, &stats), 200);
    seen = 0;
    json_array_foreach(json_object_get(stats, "connectors"), k, c) {
        if (strcmp(str(c, "connector"), "t_cost") != 0)
            continue;
        seen = 1;
        assert_int_equal(json_integer_value(json_object_get(c, "actions")), 1);
        assert_int_equal(json_integer_value(json_object_get(c, "failed")), 1);
        assert_true(json_number_value(json_object_get(json_object_get(c, "cost"), "USD")) == 1.5);
    }
    assert_true(seen);
    json_decref(stats);
    assert_int_equal(harness_http(&H, "GET", "/v1/stats?day=yesterday", NULL, NULL), 400);
    /* The audit trail has what each call cost. */
    snprintf(path, sizeof path, "/v1/actions/%s/audit", str(a, "id"));
    json_t *story = NULL;
    assert_int_equal(harness_http(&H, "GET", path, NULL, &story), 200);
    int with_cost = 0;
    json_array_foreach(json_object_get(story, "entries"), k, c)
        if (!strcmp(str(c, "type"), "completed") &&
            json_number_value(json_object_get(json_object_get(json_object_get(c, "data"), "cost"), "USD")) == 0.5)
            with_cost++;
    assert_int_equal(with_cost, 3);
    json_decref(story);

    json_t *rec = stored_record(str(a, "id"));
    json_t *cost = json_object_get(rec, "cost");
    if (json_object_size(cost) != 1 || json_number_value(json_object_get(cost, "USD")) != 1.5)
        fail_with("total cost, expected {\"USD\": 1.5}", rec);
    assert_int_equal(check_attempt_costs(rec, "{\"USD\": 0.5}"), 3);
    json_decref(rec);
    json_decref(a);
}

static void a_success_costs_once(void **state)
{
    (void)state;
    json_t *a = run_costly("{\"amount\": 0.5, \"unit\": \"USD\"}", "SUCCEEDED");
    assert_int_equal(check_attempt_costs(a, "{\"USD\": 0.5}"), 1);
    /* the plugin's result: set_cost answered AIORUN_OK */
    assert_int_equal(json_integer_value(json_array_get(json_object_get(json_object_get(a, "result"),
                                                                        "cost_status"), 0)), 0);
    json_t *rec = stored_record(str(a, "id"));
    json_t *cost = json_object_get(rec, "cost");
    if (json_object_size(cost) != 1 || json_number_value(json_object_get(cost, "USD")) != 0.5)
        fail_with("total cost, expected {\"USD\": 0.5}", rec);
    json_decref(rec);
    json_decref(a);
}

static void units_are_kept_apart(void **state)
{
    (void)state;
    json_t *a = run_costly("{\"amount\": 0.012, \"unit\": \"USD\", \"fail\": true, "
                           "\"extra\": [{\"amount\": 340, \"unit\": \"tokens\"}]}", "FAILED");
    assert_int_equal(check_attempt_costs(a, "{\"USD\": 0.012, \"tokens\": 340}"), 3);
    json_t *rec = stored_record(str(a, "id"));
    json_t *cost = json_object_get(rec, "cost");
    json_t *tokens = json_object_get(cost, "tokens");
    if (json_object_size(cost) != 2 || fabs(json_number_value(json_object_get(cost, "USD")) - 0.036) > 1e-12 ||
        !json_is_integer(tokens) || json_integer_value(tokens) != 1020)
        fail_with("total cost, expected {\"USD\": 0.036, \"tokens\": 1020}", rec);
    json_decref(rec);
    json_decref(a);
}

static void no_cost_reported_means_none_recorded(void **state)
{
    (void)state;
    /* costly with times 0 calls set_cost not at all */
    json_t *a = run_costly("{\"amount\": 1, \"unit\": \"USD\", \"times\": 0}", "SUCCEEDED");
    assert_int_equal(check_attempt_costs(a, NULL), 1);
    json_t *rec = stored_record(str(a, "id"));
    if (json_object_get(rec, "cost"))
        fail_with("no total cost expected", rec);
    json_decref(rec);
    json_decref(a);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(a_retried_failure_adds_up_every_attempt, start, stop),
    cmocka_unit_test_setup_teardown(a_success_costs_once, start, stop),
    cmocka_unit_test_setup_teardown(units_are_kept_apart, start, stop),
    cmocka_unit_test_setup_teardown(no_cost_reported_means_none_recorded, start, stop),
};

AR_TEST_MAIN(tests, NULL, NULL)
