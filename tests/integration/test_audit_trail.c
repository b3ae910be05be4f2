/* test_audit_trail.c - the audit trail and the metrics against the real daemon: a scripted
 * scenario (submit, deny, approval, retry, unknown outcome after kill -9, recovery, resolve,
 * reload, autonomy, token, secret, pause) leaves every event type on a chain that verifies; one
 * action's story is in order; an entry altered on disk is found and named by aioctl; /metrics
 * passes promtool and its latency histogram puts injected 50 ms calls in the right buckets. */
#include "test_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <curl/curl.h>

#include "harness.h"
#include "journal.h"

static harness H;

static int start(void **state)
{
    (void)state;
    harness_opts o = {.extra_top = "  \"approvers\": {\"finance\": [\"token:fin\"]}"};
    return harness_start(&H, &o);
}

static int stop(void **state)
{
    (void)state;
    return harness_teardown(&H);
}

/* A string member, "(none)" when absent (harness.h). */
#define str harness_str

static json_t *submit(const char *body, long want)
{
    json_t *r = NULL;
    long st = harness_http(&H, "POST", "/v1/actions", body, &r);
    if (st != want) {
        char *dump = r ? json_dumps(r, JSON_COMPACT) : NULL;
        fail_msg("submit %s: HTTP %ld %s", body, st, dump ? dump : "");
    }
    return r;
}

static json_t *await(const char *id, const char *state)
{
    char path[96];
    json_t *g = NULL;
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    for (int i = 0; i < 600; i++) {
        json_decref(g);
        g = NULL;
        harness_http(&H, "GET", path, NULL, &g);
        if (!strcmp(str(g, "state"), state))
            break;
        usleep(20 * 1000);
    }
    return g;
}

/* Every entry of the trail, through the paged stream. */
static json_t *all_entries(void)
{
    json_t *all = json_array();
    json_int_t after = 0;
    for (;;) {
        char path[96];
        snprintf(path, sizeof path, "/v1/audit?after=%lld&limit=50", (long long)after);
        json_t *r = NULL;
        assert_int_equal(harness_http(&H, "GET", path, NULL, &r), 200);
        json_t *page = json_object_get(r, "entries");
        json_array_extend(all, page);
        json_int_t next = json_integer_value(json_object_get(r, "next"));
        size_t n = json_array_size(page);
        json_decref(r);
        if (n == 0 || next == after)
            break;
        after = next;
    }
    return all;
}

static int has_type(const json_t *entries, const char *type)
{
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e)
        if (!strcmp(str(e, "type"), type))
            return 1;
    return 0;
}

static void every_event_of_a_scripted_scenario_is_on_a_chain_that_verifies(void **state)
{
    (void)state;
    char fin[64], path[400];
    assert_int_equal(harness_token_create(&H, "fin", "approver", 0, fin), 0);
    /* allowed and run; denied */
    json_t *a = submit("{\"connector\": \"echo\", \"action\": \"echo\", \"input\": {\"message\": \"hi\"}, \"wait_ms\": 5000, "
                       "\"proposer\": {\"kind\": \"ai\", \"model\": \"m-1\", \"confidence\": 0.9, \"prompt_ref\": \"p-7\", "
                       "\"context_refs\": [\"ticket:42\", \"doc:refund-policy\"]}}", 201);
    char echo_id[40];
    snprintf(echo_id, sizeof echo_id, "%s", str(a, "id"));
    json_decref(a);
    /* Why: the proposer and what it looked at are on the record of its receipt. */
    snprintf(path, sizeof path, "/v1/actions/%s/audit", echo_id);
    json_t *echo_story = NULL;
    assert_int_equal(harness_http(&H, "GET", path, NULL, &echo_story), 200);
    json_t *received = json_object_get(json_array_get(json_object_get(echo_story, "entries"), 0), "data");
    assert_string_equal(str(json_object_get(received, "proposer"), "model"), "m-1");
    assert_string_equal(json_string_value(json_array_get(json_object_get(json_object_get(received, "proposer"),
                                                                         "context_refs"), 1)), "doc:refund-policy");
    json_decref(echo_story);
    assert_int_equal(harness_http(&H, "POST", "/v1/actions", "{\"connector\": \"echo\", \"action\": \"echo\", "
                                  "\"input\": {}, \"proposer\": {\"context_refs\": \"one\"}}", NULL), 400);
    a = submit("{\"connector\": \"t_ok\", \"action\": \"ok\", \"input\": {\"deny_me\": true}}", 201);
    assert_string_equal(str(a, "state"), "DENIED");
    json_decref(a);
    /* a write with no idempotency support in flight at kill -9: recovered as unknown, resolved */
    a = submit("{\"connector\": \"t_ok\", \"action\": \"write_op\", \"input\": {\"n\": 3, \"ms\": 3000}}", 201);
    char unknown[40];
    snprintf(unknown, sizeof unknown, "%s", str(a, "id"));
    json_decref(a);
    json_t *g = await(unknown, "DISPATCHED");
    assert_string_equal(str(g, "state"), "DISPATCHED");
    json_decref(g);
    harness_kill9(&H);
    assert_int_equal(harness_restart(&H), 0);
    g = await(unknown, "UNKNOWN_OUTCOME");
    assert_string_equal(str(g, "state"), "UNKNOWN_OUTCOME");
    json_decref(g);
    snprintf(path, sizeof path, "/v1/actions/%s/resolve", unknown);
    assert_int_equal(harness_http(&H, "POST", path, "{\"outcome\": \"failed\", \"reason\": \"checked: not done\"}", NULL), 200);
    /* an approval, then a call that fails and is retried until it gives up (last: its failures
     * open t_ok's circuit breaker) */
    a = submit("{\"connector\": \"t_ok\", \"action\": \"fail\", \"input\": {\"class\": \"retryable\", \"message\": \"later\"}}", 201);
    char failing[40];
    snprintf(failing, sizeof failing, "%s", str(a, "id"));
    json_decref(a);
    snprintf(path, sizeof path, "/v1/approvals/%s", failing);
    assert_int_equal(harness_http_as(&H, fin, "POST", path, "{\"decision\": \"approve\", \"comment\": \"ok\"}", NULL), 200);
    g = await(failing, "FAILED");
    assert_string_equal(str(g, "state"), "FAILED");
    json_decref(g);
    /* operator changes */
    FILE *f;
    snprintf(path, sizeof path, "%s/policies/zz_extra.lua", H.dir);
    assert_non_null(f = fopen(path, "w"));
    fputs("function decide(action) return nil end\n", f);
    fclose(f);
    assert_int_equal(harness_http(&H, "POST", "/v1/policies/reload", NULL, NULL), 200);
    assert_int_equal(harness_http(&H, "PUT", "/v1/autonomy", "{\"pattern\": \"echo.*\", \"level\": \"semi\"}", NULL), 200);
    assert_int_equal(harness_http(&H, "POST", "/v1/tokens", "{\"name\": \"made\", \"roles\": [\"reader\"]}", NULL), 201);
    assert_int_equal(harness_http(&H, "PUT", "/v1/secrets/t_ok/token", "{\"value\": \"not-in-the-audit-9f3\"}", NULL), 200);
    assert_int_equal(harness_http(&H, "POST", "/v1/connectors/t_ok/pause", "{\"reason\": \"maintenance\"}", NULL), 200);
    assert_int_equal(harness_http(&H, "POST", "/v1/connectors/t_ok/resume", NULL, NULL), 200);

    json_t *entries = all_entries();
    static const char *const types[] = {
        "config_loaded", "received", "decided", "dispatched", "completed", "approval_requested", "approval_decided",
        "unknown_outcome", "recovered", "resolved", "policy_reloaded", "autonomy_changed", "token_created",
        "secret_set", "connector_paused", "connector_resumed", "breaker"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!has_type(entries, types[i]))
            fail_msg("no %s entry in the audit trail", types[i]);
    char *dump = json_dumps(entries, JSON_COMPACT);
    assert_null(strstr(dump, "not-in-the-audit-9f3")); /* a secret's name, never its value */
    free(dump);
    json_decref(entries);

    /* One action's story, in order. */
    snprintf(path, sizeof path, "/v1/actions/%s/audit", failing);
    json_t *story = NULL;
    assert_int_equal(harness_http(&H, "GET", path, NULL, &story), 200);
    json_t *list = json_object_get(story, "entries");
    static const char *const order[] = {"received", "decided", "approval_requested", "approval_decided", "dispatched",
                                        "completed", "dispatched", "completed"};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        assert_string_equal(str(json_array_get(list, i), "type"), order[i]);
    assert_string_equal(str(json_object_get(json_array_get(list, 3), "data"), "by"), "fin");
    json_decref(story);

    json_t *v = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/audit/verify", NULL, &v), 200);
    assert_true(json_is_true(json_object_get(v, "ok")));
    assert_true(json_integer_value(json_object_get(v, "entries")) > 20);
    json_decref(v);
}

/* Tamper with one stored entry while the daemon is stopped: aioctl names it. */
static void an_entry_altered_on_disk_is_found_and_named(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        json_t *a = submit("{\"connector\": \"echo\", \"action\": \"echo\", \"input\": {\"message\": \"x\"}, \"wait_ms\": 5000}", 201);
        json_decref(a);
    }
    char bin[300], out[8192];
    harness_bin(bin, sizeof bin, "aioctl");
    char *verify[] = {bin, "--config", H.config_path, "audit", "verify", NULL};
    assert_int_equal(harness_stop(&H), 0);
    assert_int_equal(harness_run(&H, verify, out, sizeof out), 0);

    char dir[400];
    snprintf(dir, sizeof dir, "%s/var/journal", H.dir);
    journal *j = NULL;
    journal_opts o = {.dir = dir, .map_size_mb = 64};
    ar_error err = {0};
    assert_int_equal(journal_open(&o, &j, &err), AR_OK);
    unsigned char key[8] = {0, 0, 0, 0, 0, 0, 0, 4}; /* seq 4, big-endian */
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, &err), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(r, JDB_AUDIT, key, sizeof key, &val, &vlen), AR_OK);
    json_error_t jerr;
    json_t *entry = json_loadb(val, vlen, 0, &jerr);
    journal_read_end(r);
    assert_non_null(entry);
    json_object_set_new(entry, "time_ms", json_integer(json_integer_value(json_object_get(entry, "time_ms")) + 1));
    char *text = json_dumps(entry, JSON_COMPACT);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT, key, sizeof key, text, strlen(text));
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);
    free(text);
    json_decref(entry);
    journal_close(j);

    assert_int_equal(harness_run(&H, verify, out, sizeof out), 1);
    assert_non_null(strstr(out, "4"));
    assert_int_equal(harness_restart(&H), 0);
    json_t *v = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/audit/verify", NULL, &v), 200);
    assert_false(json_is_true(json_object_get(v, "ok")));
    assert_int_equal(json_integer_value(json_object_get(v, "first_bad_seq")), 4);
    json_decref(v);
}

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
    char **cursor = arg;
    size_t len = size * n, room = (size_t)(cursor[1] - cursor[0]);
    if (len > room)
        len = room;
    memcpy(cursor[0], data, len);
    cursor[0] += len;
    return size * n;
}

/* GET path as the operator, the body as text (not JSON). */
static void fetch_text(const char *path, char *out, size_t cap)
{
    char url[256], auth[128];
    snprintf(url, sizeof url, "%s%s", H.url, path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", H.token);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, auth);
    char *cursor[2] = {out, out + cap - 1};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, (void *)cursor);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    assert_int_equal(status, 200);
    *cursor[0] = '\0';
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
}

/* The count of a bucket line: name{...le="X"...} N, for the series with these labels. */
static double bucket(const char *text, const char *labels, const char *le)
{
    char needle[256];
    snprintf(needle, sizeof needle, "aiorun_stage_duration_seconds_bucket{%s,le=\"%s\"} ", labels, le);
    const char *p = strstr(text, needle);
    return p ? atof(p + strlen(needle)) : -1;
}

/* The value of an unlabelled series: "name N" at the start of a line; -1 when missing. */
static double plain_value(const char *text, const char *name)
{
    char needle[160];
    snprintf(needle, sizeof needle, "\n%s ", name);
    const char *p = strstr(text, needle);
    return p ? atof(p + strlen(needle)) : -1;
}

static void metrics_pass_promtool_and_put_latencies_in_their_buckets(void **state)
{
    (void)state;
    for (int i = 0; i < 10; i++) {
        json_t *a = submit("{\"connector\": \"t_ok\", \"action\": \"sleep\", \"input\": {\"ms\": 50}, \"wait_ms\": 5000}", 201);
        assert_string_equal(str(a, "state"), "SUCCEEDED");
        json_decref(a);
    }
    json_t *a = submit("{\"connector\": \"t_ok\", \"action\": \"ok\", \"input\": {\"deny_me\": true}}", 201);
    json_decref(a);
    char out[65536];
    char file[400], cmd[1200];
    snprintf(file, sizeof file, "%s/metrics.txt", H.dir);
    fetch_text("/metrics", out, sizeof out);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs(out, f);
    fclose(f);
    size_t n;
    assert_non_null(strstr(out, "aiorun_actions_total{connector=\"t_ok\",action=\"sleep\",state=\"SUCCEEDED\"} 10\n"));
    /* Ten calls that sleep 50 ms: none can land in a bucket below 25 ms, all are counted (how
     * far above 50 ms they land depends on the machine's load, so no upper bucket is asserted). */
    const char *labels = "stage=\"connector_call\",connector=\"t_ok\"";
    assert_true(bucket(out, labels, "0.025") == 0);
    assert_true(bucket(out, labels, "+Inf") == 10);
    assert_true(bucket(out, "stage=\"end_to_end\",connector=\"t_ok\"", "+Inf") >= 11);
    assert_non_null(strstr(out, "aiorun_policy_evaluation_seconds_count "));
    assert_non_null(strstr(out, "aiorun_queue_depth{connector=\"t_ok\"} 0"));
    /* Ten actions one after another, each stored at least twice (before and after its call),
     * each time in a commit of its own: the journal's counters count them. */
    double commits = plain_value(out, "aiorun_journal_commits_total");
    assert_true(commits >= 20);
    assert_true(plain_value(out, "aiorun_journal_batches_total") >= commits);
    assert_true(plain_value(out, "aiorun_journal_commit_seconds_total") > 0);
    /* The same figures summarised per connector (and by aioctl stats). */
    json_t *stats = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/stats", NULL, &stats), 200);
    json_t *mine = NULL;
    size_t k;
    json_t *c;
    json_array_foreach(json_object_get(stats, "connectors"), k, c)
        if (!strcmp(str(c, "connector"), "t_ok"))
            mine = c;
    assert_non_null(mine);
    assert_true(json_number_value(json_object_get(mine, "finished")) == 10);
    assert_true(json_number_value(json_object_get(mine, "error_rate")) == 0);
    double p50 = json_number_value(json_object_get(json_object_get(json_object_get(mine, "latency_seconds"),
                                                                   "connector_call"), "p50"));
    assert_true(p50 > 0.025);
    json_decref(stats);
    char bin[300], table[4096];
    harness_bin(bin, sizeof bin, "aioctl");
    char *stats_cmd[] = {bin, "stats", NULL};
    assert_int_equal(harness_run(&H, stats_cmd, table, sizeof table), 0);
    assert_non_null(strstr(table, "CALL p50/p90/p99"));
    assert_non_null(strstr(table, "t_ok"));
    /* Unauthenticated: refused (and counted). */
    assert_int_equal(harness_http_as(&H, NULL, "GET", "/metrics", NULL, NULL), 401);

    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        print_message("promtool not installed: skipping `promtool check metrics`\n");
        return;
    }
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s' > '%s.lint' 2>&1", file, file);
    int rc = system(cmd);
    snprintf(cmd, sizeof cmd, "%s.lint", file);
    f = fopen(cmd, "r");
    n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    if (f)
        fclose(f);
    out[n] = '\0';
    if (rc != 0 || n > 0)
        fail_msg("promtool check metrics: %s", out);
}

/* ---- drift ---------------------------------------------------------------------------------- */

static sim S;

static int start_drift(void **state)
{
    (void)state;
    if (sim_start(&S) != 0)
        return -1;
    char extra[600];
    snprintf(extra, sizeof extra, "\"t_api\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\"}, "
             "\"retry\": {\"max_attempts\": 1}, \"allow_ports\": [%d]}", S.url, S.port);
    harness_opts o = {.extra_connectors = extra,
                      .extra_top = "  \"drift\": {\"recent\": 10, \"baseline\": 20, \"min_samples\": 10, "
                                   "\"error_rate_increase\": 0.5, \"lower_autonomy\": true}"};
    return harness_start(&H, &o);
}

static int stop_drift(void **state)
{
    int rc = stop(state);
    sim_stop(&S);
    return rc;
}

static const char *run_get(const char *path)
{
    static char state_buf[32];
    char body[300];
    snprintf(body, sizeof body, "{\"connector\": \"t_api\", \"action\": \"request\", \"input\": "
             "{\"method\": \"GET\", \"path\": \"%s\"}, \"wait_ms\": 5000}", path);
    json_t *a = submit(body, 201);
    snprintf(state_buf, sizeof state_buf, "%s", str(a, "state"));
    json_decref(a);
    return state_buf;
}

static void a_drift_in_errors_lowers_autonomy_until_an_operator_restores_it(void **state)
{
    (void)state;
    for (int i = 0; i < 20; i++)
        assert_string_equal(run_get("/products"), "SUCCEEDED");
    /* The API starts failing every call: once half the recent window failed (0.5 above the
     * baseline's 0), the action drops from auto to semi: the next calls wait for a human. */
    int failed = 0;
    const char *st = "";
    for (int i = 0; i < 100 && strcmp(st, "PENDING_APPROVAL") != 0; i++) {
        st = run_get("/nowhere");
        if (!strcmp(st, "FAILED"))
            failed++;
        else if (strcmp(st, "PENDING_APPROVAL") != 0)
            fail_msg("unexpected state %s", st);
        if (failed >= 5)
            usleep(20 * 1000); /* the detection is recorded on the waiter thread */
    }
    assert_string_equal(st, "PENDING_APPROVAL");
    assert_true(failed >= 5 && failed <= 8);
    json_t *aut = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/autonomy", NULL, &aut), 200);
    char *dump = json_dumps(aut, JSON_COMPACT);
    assert_non_null(strstr(dump, "t_api.request"));
    assert_non_null(strstr(dump, "drift detector"));
    free(dump);
    json_decref(aut);
    json_t *entries = all_entries();
    assert_true(has_type(entries, "drift_detected"));
    json_decref(entries);
    json_t *conns = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/connectors", NULL, &conns), 200);
    dump = json_dumps(conns, JSON_COMPACT);
    assert_non_null(strstr(dump, "\"metric\":\"error_rate\""));
    free(dump);
    json_decref(conns);
    char text[65536];
    fetch_text("/metrics", text, sizeof text);
    assert_non_null(strstr(text, "aiorun_drift_detections_total{connector=\"t_api\",action=\"request\",metric=\"error_rate\"} 1"));
    /* The operator restores it. */
    assert_int_equal(harness_http(&H, "PUT", "/v1/autonomy", "{\"pattern\": \"t_api.request\", \"level\": null}", NULL), 200);
    assert_string_equal(run_get("/products"), "SUCCEEDED");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(every_event_of_a_scripted_scenario_is_on_a_chain_that_verifies, start, stop),
    cmocka_unit_test_setup_teardown(an_entry_altered_on_disk_is_found_and_named, start, stop),
    cmocka_unit_test_setup_teardown(metrics_pass_promtool_and_put_latencies_in_their_buckets, start, stop),
    cmocka_unit_test_setup_teardown(a_drift_in_errors_lowers_autonomy_until_an_operator_restores_it, start_drift, stop_drift),
};

AR_TEST_MAIN(tests, NULL, NULL)
