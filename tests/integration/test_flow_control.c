/* test_flow_control.c - flow control against the real daemon: rate limits hold over a window, a
 * 429 pauses the whole connector, the circuit breaker opens, rejects, half-opens and closes
 * (and only for unhealthy classes, and only its own connector), priorities order dispatch and
 * aging prevents starvation, backpressure refuses without losing anything, and pause/resume
 * keeps the queue across a restart. */
#include "test_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ar.h"
#include "harness.h"

static harness H;
static sim S;

static int stop_all(void **state)
{
    (void)state;
    int status = H.pid > 0 ? harness_stop(&H) : 0;
    harness_cleanup(&H);
    if (S.pid > 0)
        sim_stop(&S);
    return status == 0 ? 0 : -1;
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

/* Submit without waiting; returns the new id into id. */
static void submit(const char *connector, const char *action, const char *input, int priority, char id[40])
{
    char body[512];
    snprintf(body, sizeof body, "{\"connector\": \"%s\", \"action\": \"%s\", \"input\": %s, \"priority\": %d}",
             connector, action, input, priority);
    json_t *r;
    long st = harness_http(&H, "POST", "/v1/actions", body, &r);
    if (st != 201) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("submit %s/%s: HTTP %ld %s", connector, action, st, dump ? dump : "");
    }
    snprintf(id, 40, "%s", str(r, "id"));
    json_decref(r);
}

/* Wait until the action is in a terminal state (30 s at most); returns it. */
static json_t *settled(const char *id)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    json_t *g = NULL;
    for (int i = 0; i < 1500; i++) {
        json_decref(g);
        harness_http(&H, "GET", path, NULL, &g);
        const char *st = str(g, "state");
        if (!strcmp(st, "SUCCEEDED") || !strcmp(st, "FAILED") || !strcmp(st, "UNKNOWN_OUTCOME") ||
            !strcmp(st, "CANCELLED") || !strcmp(st, "DENIED"))
            return g;
        usleep(20 * 1000);
    }
    char *dump = json_dumps(g, JSON_COMPACT);
    fail_msg("action %s did not settle: %s", id, dump);
    return NULL;
}

static int64_t first_start_ms(const json_t *action)
{
    json_t *h = json_array_get(json_object_get(action, "history"), 0);
    return json_integer_value(json_object_get(h, "started_ms"));
}

static json_t *connector_flow(const char *name)
{
    json_t *r, *flow = NULL;
    harness_http(&H, "GET", "/v1/connectors", NULL, &r);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "connectors"), i, c) {
        if (!strcmp(str(c, "name"), name))
            flow = json_incref(json_object_get(c, "flow"));
    }
    json_decref(r);
    return flow;
}

static int start_with(const char *connectors, const char *top)
{
    harness_opts o = {.extra_connectors = connectors, .extra_top = top};
    return harness_start(&H, &o);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* ---- rate limit ------------------------------------------------------------------------------ */

static void rate_limit_holds_over_any_window(void **state)
{
    (void)state;
    char plugin[300], extra[600];
    harness_test_plugin(plugin, sizeof plugin, "t_ok");
    snprintf(extra, sizeof extra, "\"t_rate\": {\"plugin\": \"%s\", \"processes\": 2, "
             "\"rate_limit\": {\"per_second\": 5, \"burst\": 2}}", plugin);
    assert_int_equal(start_with(extra, NULL), 0);
    enum { N = 16 };
    char ids[N][40];
    for (int i = 0; i < N; i++)
        submit("t_rate", "ok", "{}", 0, ids[i]);
    int64_t starts[N];
    for (int i = 0; i < N; i++) {
        json_t *a = settled(ids[i]);
        assert_string_equal(str(a, "state"), "SUCCEEDED");
        starts[i] = first_start_ms(a);
        json_decref(a);
    }
    qsort(starts, N, sizeof starts[0], cmp_i64);
    /* In any 1 s window: at most burst + rate = 7 calls (plus one for clock rounding). */
    for (int i = 0; i < N; i++) {
        int in_window = 0;
        for (int j = i; j < N && starts[j] < starts[i] + 1000; j++)
            in_window++;
        if (in_window > 8)
            fail_msg("%d calls started within 1 s (rate 5/s, burst 2)", in_window);
    }
    /* And the whole burst took at least (N - burst) / rate seconds. */
    int64_t span = starts[N - 1] - starts[0];
    if (span < (N - 2) * 1000 / 5 - 100)
        fail_msg("16 calls at 5/s with burst 2 finished within %lld ms", (long long)span);
}

/* ---- a 429 pauses the whole connector --------------------------------------------------------------- */

static int start_sim_connector(const char *extra_breaker)
{
    if (sim_start(&S) != 0)
        return -1;
    char extra[1200];
    snprintf(extra, sizeof extra,
             "\"t_api\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\"}, \"idempotency\": "
             "{\"request\": \"native\"}, \"timeout_ms\": 1000, \"retry\": {\"max_attempts\": %s, \"initial_ms\": 20, "
             "\"max_ms\": 50}, \"allow_ports\": [%d]%s%s},\n"
             "    \"t_other\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\"}, \"idempotency\": "
             "{\"request\": \"native\"}, \"timeout_ms\": 1000, \"allow_ports\": [%d]}",
             S.url, extra_breaker ? "1" : "3", S.port, extra_breaker ? ", \"breaker\": " : "",
             extra_breaker ? extra_breaker : "", S.url, S.port);
    return start_with(extra, NULL);
}

static void order(const char *connector, char id[40])
{
    submit(connector, "request", "{\"method\": \"POST\", \"path\": \"/orders\", \"body\": {\"product_id\": \"prd_1\", "
           "\"quantity\": 1, \"customer\": \"c\"}}", 0, id);
}

static void retry_after_pauses_the_whole_connector(void **state)
{
    (void)state;
    assert_int_equal(start_sim_connector(NULL), 0);
    assert_int_equal(sim_http(&S, "POST", "/_sim/faults", "{\"route\": \"POST /orders\", \"fault\": \"retry_after\", "
                              "\"seconds\": 2}", NULL), 201);
    char a[40], b[40];
    order("t_api", a);
    usleep(300 * 1000); /* a has met its 429 */
    order("t_api", b);
    json_t *ra = settled(a), *rb = settled(b);
    assert_string_equal(str(ra, "state"), "SUCCEEDED");
    assert_string_equal(str(rb, "state"), "SUCCEEDED");
    json_decref(ra);
    json_decref(rb);
    json_t *log;
    sim_http(&S, "GET", "/_sim/log?route=POST%20/orders", NULL, &log);
    json_t *reqs = json_object_get(log, "requests");
    assert_int_equal(json_array_size(reqs), 3);
    json_int_t limited = json_integer_value(json_object_get(json_array_get(reqs, 0), "at_ms"));
    for (size_t i = 1; i < json_array_size(reqs); i++) {
        json_int_t at = json_integer_value(json_object_get(json_array_get(reqs, i), "at_ms"));
        if (at - limited < 2000)
            fail_msg("request %zu reached the API %lld ms after its 429 asked the connector to wait 2 s", i,
                     (long long)(at - limited));
    }
    json_decref(log);
}

/* ---- circuit breaker --------------------------------------------------------------------------------- */

static void breaker_opens_rejects_half_opens_and_closes(void **state)
{
    (void)state;
    assert_int_equal(start_sim_connector("{\"consecutive\": 3, \"open_s\": 2, \"half_open_calls\": 1, "
                                         "\"window\": 10, \"min_calls\": 5}"), 0);
    /* 404s are the API answering: they do not open it. */
    assert_int_equal(sim_http(&S, "POST", "/_sim/faults", "{\"route\": \"POST /orders\", \"fault\": \"status\", "
                              "\"status\": 404, \"count\": 5}", NULL), 201);
    for (int i = 0; i < 5; i++) {
        char id[40];
        order("t_api", id);
        json_t *r = settled(id);
        assert_string_equal(str(json_object_get(r, "error"), "class"), "not_found");
        json_decref(r);
    }
    json_t *flow = connector_flow("t_api");
    assert_string_equal(str(json_object_get(flow, "breaker"), "state"), "closed");
    json_decref(flow);

    /* Three 500s in a row open it. */
    assert_int_equal(sim_http(&S, "POST", "/_sim/faults", "{\"route\": \"POST /orders\", \"fault\": \"status\", "
                              "\"status\": 500, \"count\": 3}", NULL), 201);
    for (int i = 0; i < 3; i++) {
        char id[40];
        order("t_api", id);
        json_t *r = settled(id);
        assert_string_equal(str(r, "state"), "FAILED");
        json_decref(r);
    }
    flow = connector_flow("t_api");
    json_t *br = json_object_get(flow, "breaker");
    assert_string_equal(str(br, "state"), "open");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(br, "opened_by"), "retryable")), 3);
    assert_true(json_is_string(json_object_get(br, "next_trial_at")));
    json_decref(flow);

    /* While open nothing reaches the API: the action waits, it does not fail. */
    json_t *counts;
    sim_http(&S, "GET", "/_sim/requests", NULL, &counts);
    json_int_t before = json_integer_value(json_object_get(counts, "total"));
    json_decref(counts);
    char waiting[40], other[40];
    order("t_api", waiting);
    /* The other connector on the same API is not affected. */
    order("t_other", other);
    json_t *ro = settled(other);
    assert_string_equal(str(ro, "state"), "SUCCEEDED");
    json_decref(ro);
    usleep(500 * 1000);
    char path[96];
    snprintf(path, sizeof path, "/v1/actions/%s", waiting);
    json_t *w;
    harness_http(&H, "GET", path, NULL, &w);
    assert_string_equal(str(w, "state"), "READY");
    json_decref(w);
    sim_http(&S, "GET", "/_sim/requests", NULL, &counts);
    assert_int_equal(json_integer_value(json_object_get(counts, "total")), before + 1); /* t_other's only */
    json_decref(counts);

    /* After open_s a trial goes through, succeeds, and closes it. */
    json_t *done = settled(waiting);
    assert_string_equal(str(done, "state"), "SUCCEEDED");
    json_decref(done);
    flow = connector_flow("t_api");
    assert_string_equal(str(json_object_get(flow, "breaker"), "state"), "closed");
    json_decref(flow);
}

static void a_failed_trial_opens_it_again(void **state)
{
    (void)state;
    assert_int_equal(start_sim_connector("{\"consecutive\": 2, \"open_s\": 1, \"half_open_calls\": 1}"), 0);
    assert_int_equal(sim_http(&S, "POST", "/_sim/faults", "{\"route\": \"POST /orders\", \"fault\": \"status\", "
                              "\"status\": 503, \"count\": 3}", NULL), 201);
    for (int i = 0; i < 3; i++) { /* two open it; the third is the failing trial after 1 s */
        char id[40];
        order("t_api", id);
        json_t *r = settled(id);
        assert_string_equal(str(r, "state"), "FAILED");
        json_decref(r);
    }
    json_t *flow = connector_flow("t_api");
    json_t *br = json_object_get(flow, "breaker");
    assert_string_equal(str(br, "state"), "open");
    assert_non_null(strstr(str(br, "reason"), "trial"));
    json_decref(flow);
}

/* ---- priorities --------------------------------------------------------------------------------------- */

static void higher_priority_runs_first_and_age_wins_eventually(void **state)
{
    (void)state;
    char plugin[300], extra[600];
    harness_test_plugin(plugin, sizeof plugin, "t_ok");
    snprintf(extra, sizeof extra, "\"t_one\": {\"plugin\": \"%s\", \"processes\": 1}", plugin);
    assert_int_equal(start_with(extra, "  \"aging_ms\": 200"), 0);
    char blocker[40], low[3][40], high[3][40], old[40], young[40];
    submit("t_one", "sleep", "{\"ms\": 600}", 0, blocker);
    usleep(100 * 1000);
    for (int i = 0; i < 3; i++) {
        submit("t_one", "ok", "{}", -1, low[i]);
        submit("t_one", "ok", "{}", 1, high[i]);
    }
    int64_t low_first = INT64_MAX, high_last = 0;
    for (int i = 0; i < 3; i++) {
        json_t *l = settled(low[i]), *h = settled(high[i]);
        if (first_start_ms(l) < low_first)
            low_first = first_start_ms(l);
        if (first_start_ms(h) > high_last)
            high_last = first_start_ms(h);
        json_decref(l);
        json_decref(h);
    }
    if (high_last > low_first)
        fail_msg("a priority -1 action started before a priority 1 one");
    json_decref(settled(blocker));

    /* Aging: 200 ms of waiting is one level; priority 0 submitted 1 s before a priority 2 wins. */
    submit("t_one", "sleep", "{\"ms\": 1500}", 0, blocker);
    usleep(100 * 1000);
    submit("t_one", "ok", "{}", 0, old);
    usleep(1000 * 1000);
    submit("t_one", "ok", "{}", 2, young);
    json_t *o = settled(old), *y = settled(young);
    if (first_start_ms(o) > first_start_ms(y))
        fail_msg("an action waiting 1 s longer (5 levels of age) lost to one only 2 levels higher");
    json_decref(o);
    json_decref(y);
    json_decref(settled(blocker));
}

/* ---- backpressure --------------------------------------------------------------------------------------- */

static void backpressure_refuses_with_retry_after_and_loses_nothing(void **state)
{
    (void)state;
    char plugin[300], extra[600];
    harness_test_plugin(plugin, sizeof plugin, "t_ok");
    snprintf(extra, sizeof extra, "\"t_one\": {\"plugin\": \"%s\", \"processes\": 1}", plugin);
    assert_int_equal(start_with(extra, "  \"max_queue_depth\": 3"), 0);
    char ids[10][40];
    int accepted = 0, refused = 0;
    for (int i = 0; i < 10; i++) {
        json_t *r;
        long st = harness_http(&H, "POST", "/v1/actions", "{\"connector\": \"t_one\", \"action\": \"sleep\", "
                               "\"input\": {\"ms\": 300}}", &r);
        if (st == 201) {
            snprintf(ids[accepted++], 40, "%s", str(r, "id"));
        } else {
            assert_int_equal(st, 429);
            assert_string_equal(str(r, "error"), "queue_full");
            assert_int_equal(H.last_retry_after, 1);
            refused++;
        }
        json_decref(r);
    }
    assert_int_equal(accepted, 3);
    assert_int_equal(refused, 7);
    for (int i = 0; i < accepted; i++) {
        json_t *a = settled(ids[i]);
        assert_string_equal(str(a, "state"), "SUCCEEDED");
        json_decref(a);
    }
    /* Room again once they are done. */
    char id[40];
    submit("t_one", "ok", "{}", 0, id);
    json_decref(settled(id));
}

/* ---- pause and resume ----------------------------------------------------------------------------------- */

static void pause_keeps_the_queue_across_a_restart_and_resume_runs_it(void **state)
{
    (void)state;
    char plugin[300], extra[600];
    harness_test_plugin(plugin, sizeof plugin, "t_ok");
    snprintf(extra, sizeof extra, "\"t_one\": {\"plugin\": \"%s\", \"processes\": 1, \"pipeline\": 5}", plugin);
    assert_int_equal(start_with(extra, NULL), 0);
    json_t *r;
    json_t *configured = connector_flow("t_one"); /* the config's fixed pipeline, not the adaptive one */
    assert_int_equal(json_integer_value(json_object_get(configured, "pipeline")), 5);
    json_decref(configured);
    char reader[HARNESS_TOKEN_MAX];
    assert_int_equal(harness_token_create(&H, "rd", "reader", 0, reader), 0);
    assert_int_equal(harness_http_as(&H, reader, "POST", "/v1/connectors/t_one/pause", NULL, NULL), 403);
    assert_int_equal(harness_http(&H, "POST", "/v1/connectors/nope/pause", NULL, NULL), 404);
    assert_int_equal(harness_http(&H, "POST", "/v1/connectors/t_one/pause", "{\"reason\": \"maintenance\"}", &r), 200);
    json_t *flow = json_object_get(r, "flow");
    assert_true(json_is_true(json_object_get(flow, "paused")));
    assert_string_equal(str(flow, "paused_by"), "test-operator");
    assert_string_equal(str(flow, "pause_reason"), "maintenance");
    json_decref(r);
    char ids[3][40];
    for (int i = 0; i < 3; i++)
        submit("t_one", "ok", "{}", 0, ids[i]);
    usleep(500 * 1000);
    char path[96];
    snprintf(path, sizeof path, "/v1/actions/%s", ids[0]);
    harness_http(&H, "GET", path, NULL, &r);
    assert_string_equal(str(r, "state"), "READY");
    json_decref(r);

    /* The pause outlives the daemon. */
    assert_int_equal(harness_stop(&H), 0);
    assert_int_equal(harness_restart(&H), 0);
    flow = connector_flow("t_one");
    assert_true(json_is_true(json_object_get(flow, "paused")));
    assert_int_equal(json_integer_value(json_object_get(flow, "queued")), 3);
    json_decref(flow);
    harness_http(&H, "GET", path, NULL, &r);
    assert_string_equal(str(r, "state"), "READY");
    json_decref(r);

    /* Resumed through aioctl, as an operator would; its table shows the three held back. */
    char bin[300], out[4096];
    harness_bin(bin, sizeof bin, "aioctl");
    char *list[] = {bin, "connectors", NULL};
    assert_int_equal(harness_run(&H, list, out, sizeof out), 0);
    const char *row = strstr(out, "\nt_one ");
    assert_non_null(row);
    const char *eol = strchr(row + 1, '\n');
    char line[512];
    snprintf(line, sizeof line, "%.*s", eol ? (int)(eol - row - 1) : 400, row + 1);
    if (!strstr(line, " paused ") || !strstr(line, " 3/0/0 "))
        fail_msg("aioctl connectors: expected t_one paused with QUEUE 3/0/0, got: %s", line);
    char *nope[] = {bin, "connectors", "resume", "nope", NULL};
    assert_int_equal(harness_run(&H, nope, out, sizeof out), 4);
    char *resume[] = {bin, "connectors", "resume", "t_one", NULL};
    assert_int_equal(harness_run(&H, resume, out, sizeof out), 0);
    for (int i = 0; i < 3; i++) {
        json_t *a = settled(ids[i]);
        assert_string_equal(str(a, "state"), "SUCCEEDED");
        json_decref(a);
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(rate_limit_holds_over_any_window, stop_all),
    cmocka_unit_test_teardown(retry_after_pauses_the_whole_connector, stop_all),
    cmocka_unit_test_teardown(breaker_opens_rejects_half_opens_and_closes, stop_all),
    cmocka_unit_test_teardown(a_failed_trial_opens_it_again, stop_all),
    cmocka_unit_test_teardown(higher_priority_runs_first_and_age_wins_eventually, stop_all),
    cmocka_unit_test_teardown(backpressure_refuses_with_retry_after_and_loses_nothing, stop_all),
    cmocka_unit_test_teardown(pause_keeps_the_queue_across_a_restart_and_resume_runs_it, stop_all),
};

AR_TEST_MAIN(tests, NULL, NULL)
