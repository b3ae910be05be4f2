/* test_durable.c - durable execution against the API simulator: every injected fault with every
 * idempotency mode ends in the expected state, with the expected attempts and no extra effect;
 * Retry-After is a lower bound; deadlines; plugin crashes after the effect; operator resolution;
 * cancel. */
#include "test_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "action.h"
#include "ar.h"
#include "harness.h"

static harness H;
static sim S;

static int start_all(void **state)
{
    (void)state;
    if (sim_start(&S) != 0)
        return -1;
    char ledger[300], extra[4096], common[300];
    harness_test_plugin(ledger, sizeof ledger, "t_ledger");
    /* Three REST connectors on the simulator, one per idempotency mode, and the ledger plugin
     * with its declared lookup and overridden to none. Short timeouts and backoff keep it fast. */
    /* The simulator's port is the only one the plugins may connect to (Landlock). */
    /* No circuit breaker: these tests fail calls on purpose, and the fault matrix alone fails 6
     * of t_none's last 10 calls, which opened the default breaker for 30 s just before its last
     * row, whose client waits 30 s (wait_ms): a race. Breakers are tested in test_flow_control. */
    snprintf(common, sizeof common, "\"timeout_ms\": 2000, \"retry\": {\"max_attempts\": 4, \"initial_ms\": 50, "
             "\"max_ms\": 200}, \"breaker\": {\"consecutive\": 0, \"window\": 10000, \"min_calls\": 10000}, "
             "\"allow_ports\": [%d]", S.port);
    /* The ledger fixture writes its ledger into the test's directory, outside its sandbox's
     * working directory, which only works with Landlock and the uid switch off. */
    const char *ledger_sandbox = "\"sandbox\": {\"landlock\": false, \"uid\": false}";
    snprintf(extra, sizeof extra,
             "\"t_native\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\"}, "
             "\"idempotency\": {\"request\": \"native\"}, %s},\n"
             "    \"t_lookup\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\", \"lookup\": "
             "{\"path\": \"/_sim/by-key/{key}\"}}, \"idempotency\": {\"request\": \"lookup\"}, %s},\n"
             "    \"t_none\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\"}, %s},\n"
             "    \"t_ledger\": {\"plugin\": \"%s\", \"config\": {\"dir\": \"%s\"}, \"processes\": 1, %s, %s},\n"
             "    \"t_ledger_none\": {\"plugin\": \"%s\", \"config\": {\"dir\": \"%s\"}, \"processes\": 1, "
             "\"idempotency\": {\"apply\": \"none\"}, %s, %s}",
             S.url, common, S.url, common, S.url, common, ledger, S.dir, common, ledger_sandbox, ledger, S.dir, common,
             ledger_sandbox);
    harness_opts o = {.extra_connectors = extra};
    return harness_start(&H, &o);
}

static int stop_all(void **state)
{
    (void)state;
    int status = H.pid > 0 ? harness_stop(&H) : 0;
    harness_cleanup(&H);
    sim_stop(&S);
    return status == 0 ? 0 : -1;
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

static void inject(const char *spec)
{
    json_t *r;
    long st = sim_http(&S, "POST", "/_sim/faults", spec, &r);
    if (st != 201)
        fail_msg("the simulator refused fault %s (HTTP %ld)", spec, st);
    json_decref(r);
}

/* Whether a state is one an action ends in. */
static int terminal(const char *state)
{
    int st = action_state_from_name(state);
    return st >= 0 && action_state_terminal((action_state)st);
}

/* The action r shows once it has ended: r itself if it has, else GET until it has (a machine
 * under load may outlast the submission's wait_ms). Takes r; fails after a generous guard. */
static json_t *settled(json_t *r)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/actions/%s", str(r, "id"));
    for (int i = 0; i < 1200 && !terminal(str(r, "state")); i++) {
        usleep(50 * 1000);
        json_t *g = NULL;
        if (harness_http(&H, "GET", path, NULL, &g) == 200) {
            json_decref(r);
            r = g;
        } else {
            json_decref(g);
        }
    }
    if (!terminal(str(r, "state"))) {
        harness_print_log(&H);
        fail_msg("action %s is still %s 60 s after its wait", str(r, "id"), str(r, "state"));
    }
    return r;
}

/* Submit POST /orders through a connector and wait for the action to settle. */
static json_t *order_through(const char *connector, int deadline_ms)
{
    json_t *doc = json_pack("{s:s, s:s, s:i, s:{s:s, s:s, s:{s:s, s:i, s:s}}}", "connector", connector,
                            "action", "request", "wait_ms", 30000, "input", "method", "POST", "path", "/orders",
                            "body", "product_id", "prd_1", "quantity", 1, "customer", "ann");
    if (deadline_ms)
        json_object_set_new(doc, "deadline_ms", json_integer(deadline_ms));
    char *body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    json_t *r;
    long st = harness_http(&H, "POST", "/v1/actions", body, &r);
    free(body);
    if (st != 201) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("submit to %s: HTTP %ld %s", connector, st, dump ? dump : "");
    }
    return settled(r);
}

typedef struct expectation {
    const char *fault;      /* JSON for /_sim/faults, route POST /orders */
    const char *state[3];   /* native, lookup, none */
    int attempts[3];
    int effects[3];
} expectation;

static void check(const char *fault, const char *connector, json_t *r, const char *state, int attempts, int effects)
{
    long got = sim_effects(&S, str(r, "idempotency_key"));
    int att = (int)json_integer_value(json_object_get(r, "attempts"));
    if (strcmp(str(r, "state"), state) != 0 || att != attempts || got != effects) {
        char *dump = json_dumps(r, JSON_COMPACT | JSON_INDENT(0));
        harness_print_log(&H);
        fail_msg("%s via %s: expected %s, %d attempt(s), %d effect(s); got %s, %d, %ld\n%s", fault, connector,
                 state, attempts, effects, str(r, "state"), att, got, dump);
    }
}

static void every_fault_with_every_idempotency_mode(void **state)
{
    (void)state;
    static const char *const connectors[3] = {"t_native", "t_lookup", "t_none"};
    static const expectation matrix[] = {
        {"{\"route\": \"POST /orders\", \"fault\": \"status\", \"status\": 500}",
         {"SUCCEEDED", "SUCCEEDED", "SUCCEEDED"}, {2, 2, 2}, {1, 1, 1}},
        {"{\"route\": \"POST /orders\", \"fault\": \"status\", \"status\": 503, \"seconds\": 1}",
         {"SUCCEEDED", "SUCCEEDED", "SUCCEEDED"}, {2, 2, 2}, {1, 1, 1}},
        {"{\"route\": \"POST /orders\", \"fault\": \"retry_after\", \"seconds\": 1}",
         {"SUCCEEDED", "SUCCEEDED", "SUCCEEDED"}, {2, 2, 2}, {1, 1, 1}},
        /* The request may have arrived: only a key the API honours, or a lookup, may repeat it. */
        {"{\"route\": \"POST /orders\", \"fault\": \"reset_before\"}",
         {"SUCCEEDED", "SUCCEEDED", "UNKNOWN_OUTCOME"}, {2, 2, 1}, {1, 1, 0}},
        {"{\"route\": \"POST /orders\", \"fault\": \"reset_after\"}",
         {"SUCCEEDED", "SUCCEEDED", "UNKNOWN_OUTCOME"}, {2, 1, 1}, {1, 1, 1}},
        {"{\"route\": \"POST /orders\", \"fault\": \"truncate\"}",
         {"SUCCEEDED", "SUCCEEDED", "UNKNOWN_OUTCOME"}, {2, 1, 1}, {1, 1, 1}},
        /* The answer comes after the call's deadline; the effect happened. */
        {"{\"route\": \"POST /orders\", \"fault\": \"delay\", \"delay_ms\": 2400, \"apply\": true}",
         {NULL, NULL, "UNKNOWN_OUTCOME"}, {0, 0, 1}, {0, 0, 1}},
        /* The API says no: nothing to retry. */
        {"{\"route\": \"POST /orders\", \"fault\": \"status\", \"status\": 404}",
         {"FAILED", "FAILED", "FAILED"}, {1, 1, 1}, {0, 0, 0}},
    };
    for (size_t f = 0; f < sizeof matrix / sizeof matrix[0]; f++) {
        for (int m = 0; m < 3; m++) {
            if (!matrix[f].state[m])
                continue;
            inject(matrix[f].fault);
            json_t *r = order_through(connectors[m], 0);
            check(matrix[f].fault, connectors[m], r, matrix[f].state[m], matrix[f].attempts[m], matrix[f].effects[m]);
            json_decref(r);
            sim_http(&S, "DELETE", "/_sim/faults", NULL, NULL);
        }
    }
}

static void retry_after_is_never_undercut(void **state)
{
    (void)state;
    inject("{\"route\": \"POST /orders\", \"fault\": \"retry_after\", \"seconds\": 2}");
    json_t *r = order_through("t_native", 0);
    check("retry_after 2", "t_native", r, "SUCCEEDED", 2, 1);
    json_decref(r);
    json_t *log;
    sim_http(&S, "GET", "/_sim/log?route=POST%20/orders", NULL, &log);
    json_t *reqs = json_object_get(log, "requests");
    assert_int_equal(json_array_size(reqs), 2);
    json_int_t first = json_integer_value(json_object_get(json_array_get(reqs, 0), "at_ms"));
    json_int_t second = json_integer_value(json_object_get(json_array_get(reqs, 1), "at_ms"));
    if (second - first < 2000)
        fail_msg("the retry came %lld ms after a Retry-After of 2 s", (long long)(second - first));
    json_decref(log);

    /* An HTTP date counts the same way. */
    sim_http(&S, "POST", "/_sim/reset", NULL, NULL);
    inject("{\"route\": \"POST /orders\", \"fault\": \"retry_after\", \"seconds\": 2, \"http_date\": true}");
    r = order_through("t_none", 0);
    check("retry_after date", "t_none", r, "SUCCEEDED", 2, 1);
    json_decref(r);
    sim_http(&S, "GET", "/_sim/log?route=POST%20/orders", NULL, &log);
    reqs = json_object_get(log, "requests");
    first = json_integer_value(json_object_get(json_array_get(reqs, 0), "at_ms"));
    second = json_integer_value(json_object_get(json_array_get(reqs, 1), "at_ms"));
    if (second - first < 1000) /* the date has second resolution */
        fail_msg("the retry came %lld ms after a Retry-After date 2 s ahead", (long long)(second - first));
    json_decref(log);
}

static void retry_after_beyond_the_deadline_fails_rate_limited(void **state)
{
    (void)state;
    inject("{\"route\": \"POST /orders\", \"fault\": \"retry_after\", \"seconds\": 30}");
    json_t *r = order_through("t_native", 3000);
    check("retry_after 30 with a 3 s deadline", "t_native", r, "FAILED", 1, 0);
    assert_string_equal(str(json_object_get(r, "error"), "class"), "rate_limited");
    json_decref(r);
}

static void retries_stop_at_max_attempts(void **state)
{
    (void)state;
    inject("{\"route\": \"POST /orders\", \"fault\": \"status\", \"status\": 502, \"count\": -1}");
    json_t *r = order_through("t_native", 0);
    check("502 forever", "t_native", r, "FAILED", 4, 0);
    assert_string_equal(str(json_object_get(r, "error"), "class"), "retryable");
    assert_int_equal(json_array_size(json_object_get(r, "history")), 4);
    json_decref(r);
}

/* ---- a plugin that dies after its effect ------------------------------------------------------ */

static int ledger_count(const char *key)
{
    char path[300];
    snprintf(path, sizeof path, "%s/ledger", S.dir);
    FILE *f = fopen(path, "r");
    char line[300];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        n += strcmp(line, key) == 0;
    }
    if (f)
        fclose(f);
    return n;
}

static json_t *ledger_apply(const char *connector)
{
    json_t *r;
    char body[256];
    snprintf(body, sizeof body, "{\"connector\": \"%s\", \"action\": \"apply\", \"input\": {\"crash\": true}, "
             "\"wait_ms\": 30000}", connector);
    long st = harness_http(&H, "POST", "/v1/actions", body, &r);
    assert_int_equal(st, 201);
    return r;
}

static void plugin_crash_after_the_effect_is_reconciled_or_left_to_an_operator(void **state)
{
    (void)state;
    json_t *r = ledger_apply("t_ledger");
    assert_string_equal(str(r, "state"), "SUCCEEDED");
    assert_int_equal(json_integer_value(json_object_get(r, "attempts")), 1);
    assert_true(json_is_true(json_object_get(json_object_get(r, "result"), "reconciled")));
    assert_int_equal(ledger_count(str(r, "idempotency_key")), 1);
    json_decref(r);

    r = ledger_apply("t_ledger_none");
    assert_string_equal(str(r, "state"), "UNKNOWN_OUTCOME");
    assert_int_equal(json_integer_value(json_object_get(r, "attempts")), 1);
    assert_string_equal(str(json_object_get(r, "error"), "class"), "unknown_outcome");
    assert_int_equal(ledger_count(str(r, "idempotency_key")), 1);
    char id[40], path[128];
    snprintf(id, sizeof id, "%s", str(r, "id"));
    json_decref(r);

    /* The operator finds it and resolves it, once. */
    json_t *list;
    assert_int_equal(harness_http(&H, "GET", "/v1/actions?state=UNKNOWN_OUTCOME", NULL, &list), 200);
    assert_int_equal(json_array_size(json_object_get(list, "actions")), 1);
    json_decref(list);
    snprintf(path, sizeof path, "/v1/actions/%s/resolve", id);
    char submitter[HARNESS_TOKEN_MAX];
    assert_int_equal(harness_token_create(&H, "sub", "submitter", 0, submitter), 0);
    assert_int_equal(harness_http_as(&H, submitter, "POST", path, "{\"outcome\": \"succeeded\", \"reason\": \"x\"}", NULL), 403);
    assert_int_equal(harness_http(&H, "POST", path, "{\"outcome\": \"maybe\", \"reason\": \"x\"}", NULL), 400);
    assert_int_equal(harness_http(&H, "POST", path, "{\"outcome\": \"succeeded\", \"reason\": \"the ledger has it\"}", &r), 200);
    assert_string_equal(str(r, "state"), "SUCCEEDED");
    json_t *res = json_object_get(r, "resolution");
    assert_string_equal(str(res, "by"), "test-operator");
    assert_string_equal(str(res, "reason"), "the ledger has it");
    json_decref(r);
    assert_int_equal(harness_http(&H, "POST", path, "{\"outcome\": \"failed\", \"reason\": \"again\"}", &r), 409);
    assert_string_equal(str(r, "error"), "not_unknown_outcome");
    json_decref(r);
}

static void resolve_retry_sends_it_again_with_the_same_key(void **state)
{
    (void)state;
    inject("{\"route\": \"POST /orders\", \"fault\": \"reset_before\"}");
    json_t *r = order_through("t_none", 0);
    check("reset_before", "t_none", r, "UNKNOWN_OUTCOME", 1, 0);
    char path[128], key[300];
    snprintf(path, sizeof path, "/v1/actions/%s/resolve", str(r, "id"));
    snprintf(key, sizeof key, "%s", str(r, "idempotency_key"));
    json_decref(r);
    assert_int_equal(harness_http(&H, "POST", path, "{\"outcome\": \"retry\", \"reason\": \"no order in the shop\"}", &r), 200);
    json_decref(r);
    json_t *g = NULL;
    for (int i = 0; i < 200; i++) {
        json_decref(g);
        g = NULL;
        json_t *list;
        harness_http(&H, "GET", "/v1/actions?connector=t_none&state=SUCCEEDED", NULL, &list);
        if (json_array_size(json_object_get(list, "actions")) == 1)
            g = json_incref(json_array_get(json_object_get(list, "actions"), 0));
        json_decref(list);
        if (g)
            break;
        usleep(25 * 1000);
    }
    assert_non_null(g);
    assert_int_equal(json_integer_value(json_object_get(g, "attempts")), 2);
    assert_string_equal(str(g, "idempotency_key"), key);
    assert_int_equal(sim_effects(&S, key), 1);
    json_decref(g);
}

/* ---- cancel ---------------------------------------------------------------------------------------- */

static void cancel_stops_an_action_waiting_to_retry(void **state)
{
    (void)state;
    inject("{\"route\": \"POST /orders\", \"fault\": \"retry_after\", \"seconds\": 30}");
    json_t *r;
    long st = harness_http(&H, "POST", "/v1/actions", "{\"connector\": \"t_native\", \"action\": \"request\", "
                           "\"input\": {\"method\": \"POST\", \"path\": \"/orders\", \"body\": {\"product_id\": \"p\", "
                           "\"quantity\": 1, \"customer\": \"c\"}}}", &r);
    assert_int_equal(st, 201);
    char id[40], path[128];
    snprintf(id, sizeof id, "%s", str(r, "id"));
    json_decref(r);
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    /* Cancel once it is seen waiting: the 429 asked for 30 s, so it waits long after this. */
    int waiting = 0;
    char last[32] = "(none)";
    for (int i = 0; i < 2400 && !waiting; i++) {
        harness_http(&H, "GET", path, NULL, &r);
        snprintf(last, sizeof last, "%s", str(r, "state"));
        waiting = strcmp(last, "RETRY_WAIT") == 0;
        if (waiting)
            assert_true(json_is_string(json_object_get(r, "next_attempt_at")));
        json_decref(r);
        if (!waiting)
            usleep(25 * 1000);
    }
    if (!waiting) {
        harness_print_log(&H);
        fail_msg("action %s never showed RETRY_WAIT (last: %s)", id, last);
    }
    /* Seen RETRY_WAIT, the action is not in flight: the cancel ends it at once (200), also when
     * it comes while the daemon is still taking the step after journaling RETRY_WAIT. */
    snprintf(path, sizeof path, "/v1/actions/%s/cancel", id);
    st = harness_http(&H, "POST", path, NULL, &r);
    if (st != 200) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        harness_print_log(&H);
        fail_msg("cancel of an action seen in RETRY_WAIT: HTTP %ld %s", st, dump ? dump : "");
    }
    assert_string_equal(str(r, "state"), "CANCELLED");
    assert_string_equal(str(json_object_get(r, "error"), "class"), "cancelled");
    assert_int_equal(sim_effects(&S, str(r, "idempotency_key")), 0);
    json_decref(r);
    assert_int_equal(harness_http(&H, "POST", path, NULL, &r), 409);
    assert_string_equal(str(r, "error"), "already_terminal");
    json_decref(r);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(every_fault_with_every_idempotency_mode, start_all, stop_all),
    cmocka_unit_test_setup_teardown(retry_after_is_never_undercut, start_all, stop_all),
    cmocka_unit_test_setup_teardown(retry_after_beyond_the_deadline_fails_rate_limited, start_all, stop_all),
    cmocka_unit_test_setup_teardown(retries_stop_at_max_attempts, start_all, stop_all),
    cmocka_unit_test_setup_teardown(plugin_crash_after_the_effect_is_reconciled_or_left_to_an_operator, start_all, stop_all),
    cmocka_unit_test_setup_teardown(resolve_retry_sends_it_again_with_the_same_key, start_all, stop_all),
    cmocka_unit_test_setup_teardown(cancel_stops_an_action_waiting_to_retry, start_all, stop_all),
};

AR_TEST_MAIN(tests, NULL, NULL)
