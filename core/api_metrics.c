/* api_metrics.c - what GET /metrics shows, in Prometheus's text format: the families the daemon
 * keeps (registered here, updated where things happen), and the gauges read from the scheduler,
 * the sandboxes and the journal when scraped. Latencies are histograms in seconds. */
#include "api_internal.h"

#include "audit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

int api_metrics_init(api_server *a, ar_error *err)
{
    if (metrics_new(&a->metrics) != AR_OK)
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    static const char *const action_labels[] = {"connector", "action", "state"};
    static const char *const stage_labels[] = {"stage", "connector"};
    static const char *const conn_class[] = {"connector", "class"};
    static const char *const conn[] = {"connector"};
    static const char *const none[] = {NULL};
    static const char *const drift_labels[] = {"connector", "action", "metric"};
    static const char *const cost_labels[] = {"connector", "unit"};
    const double *lat = metrics_latency_buckets;
    size_t nlat = metrics_latency_n_buckets;
    struct api_families *f = &a->fam;
    int rc;
    if ((rc = metrics_register(a->metrics, "aiorun_actions_total", "Actions that reached a final state, by connector, "
                               "action and state (an operator's resolution counts again).", METRICS_COUNTER,
                               action_labels, N(action_labels), NULL, 0, &f->actions, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_stage_duration_seconds", "Time per stage of an action: decision, "
                               "approval_wait, queue_wait, dispatch_journal (its intent made durable), process_wait "
                               "(for an idle process), connector_call, end_to_end.", METRICS_HISTOGRAM,
                               stage_labels, N(stage_labels), lat, nlat, &f->stage_seconds, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_policy_evaluation_seconds", "Time to decide one action with the "
                               "policy set (all files).", METRICS_HISTOGRAM, none, 0, lat, nlat, &f->policy_seconds, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_errors_total", "Failed connector calls by error class.",
                               METRICS_COUNTER, conn_class, N(conn_class), NULL, 0, &f->errors, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_retries_total", "Attempts scheduled again after a failure.",
                               METRICS_COUNTER, conn, N(conn), NULL, 0, &f->retries, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_auth_failures_total", "Requests refused for a missing, unknown, "
                               "expired or revoked token.", METRICS_COUNTER, none, 0, NULL, 0, &f->auth_failures, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_queue_depth", "Actions waiting to be dispatched.", METRICS_GAUGE,
                               conn, N(conn), NULL, 0, &f->queue_depth, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_inflight_calls", "Calls running in a connector's sandboxes.",
                               METRICS_GAUGE, conn, N(conn), NULL, 0, &f->inflight, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                               METRICS_GAUGE, conn, N(conn), NULL, 0, &f->breaker, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_sandbox_restarts", "Sandbox processes restarted since the daemon "
                               "started (crashes, kills and planned replacements).", METRICS_GAUGE, conn, N(conn),
                               NULL, 0, &f->restarts, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_sandbox_processes_serving", "Sandbox processes ready to take a "
                               "call.", METRICS_GAUGE, conn, N(conn), NULL, 0, &f->serving, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_journal_used_bytes", "Bytes of the journal's map in use.",
                               METRICS_GAUGE, none, 0, NULL, 0, &f->journal_bytes, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_journal_map_bytes", "Size of the journal's map (its limit).",
                               METRICS_GAUGE, none, 0, NULL, 0, &f->journal_map, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_journal_commits_total", "Write transactions the journal "
                               "committed (each one synced).", METRICS_COUNTER, none, 0, NULL, 0, &f->journal_commits,
                               err)) ||
        (rc = metrics_register(a->metrics, "aiorun_journal_batches_total", "Batches of changes the journal "
                               "committed; a commit carries every batch waiting when it began.", METRICS_COUNTER, none,
                               0, NULL, 0, &f->journal_batches, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_journal_commit_seconds_total", "Time the journal's writer spent "
                               "committing: writing the pages and syncing them.", METRICS_COUNTER, none, 0, NULL, 0,
                               &f->journal_commit_time, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_cost_total", "What finished actions cost, as their plugins "
                               "reported it (all attempts), by connector and unit.", METRICS_COUNTER, cost_labels,
                               N(cost_labels), NULL, 0, &f->cost, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_drift_detections_total", "Drift detected in a connector "
                               "action's error rate or proposer confidence.", METRICS_COUNTER, drift_labels,
                               N(drift_labels), NULL, 0, &f->drift, err)))
        return rc;
    if (drift_new(&a->cfg->drift, &a->drift) != AR_OK)
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    a->drift_lowers_autonomy = a->cfg->drift_lowers_autonomy;
    a->drift_pending = json_array();
    return AR_OK;
}

scheduler_metrics api_scheduler_metrics(api_server *a)
{
    return (scheduler_metrics){.stage_seconds = a->fam.stage_seconds, .errors = a->fam.errors,
                               .retries = a->fam.retries};
}

static double seconds_between(const json_t *rec, const char *from, const char *to)
{
    json_int_t a = json_integer_value(json_object_get(rec, from)), b = json_integer_value(json_object_get(rec, to));
    return a && b >= a ? (double)(b - a) / 1000.0 : -1;
}

void api_metrics_action(api_server *a, const json_t *rec)
{
    if (!a->metrics)
        return;
    const char *connector = action_record_str(rec, "connector");
    action_state st = action_record_state(rec);
    /* A human decided (or nobody did in time): how long it waited. */
    const json_t *ap = json_object_get(rec, "approval");
    if ((st == ACTION_APPROVED || st == ACTION_REJECTED || st == ACTION_EXPIRED) && ap) {
        json_int_t asked = json_integer_value(json_object_get(rec, "created_ms"));
        json_int_t decided = json_integer_value(json_object_get(ap, "decided_ms"));
        if (asked && decided >= asked)
            metrics_observe(a->fam.stage_seconds, (const char *const[]){"approval_wait", connector},
                            (double)(decided - asked) / 1000.0);
    }
    if (!action_state_terminal(st))
        return;
    /* Drift: errors and confidence of the actions that ran (decisions are not errors). */
    if (st == ACTION_SUCCEEDED || st == ACTION_FAILED || st == ACTION_UNKNOWN_OUTCOME) {
        const json_t *conf = json_object_get(json_object_get(rec, "proposer"), "confidence");
        json_t *found = drift_observe(a->drift, connector, action_record_str(rec, "action"), st != ACTION_SUCCEEDED,
                                      json_is_number(conf) ? json_number_value(conf) : -1);
        if (found) {
            metrics_add(a->fam.drift, (const char *const[]){connector, action_record_str(rec, "action"),
                        json_string_value(json_object_get(found, "metric"))}, 1);
            /* Recording it commits to the journal: not on this (possibly the writer's) thread. */
            pthread_mutex_lock(&a->wait_lock);
            json_array_append_new(a->drift_pending, found);
            pthread_cond_signal(&a->wait_cond);
            pthread_mutex_unlock(&a->wait_lock);
        }
    }
    metrics_add(a->fam.actions, (const char *const[]){connector, action_record_str(rec, "action"), action_state_name(st)}, 1);
    const char *unit;
    json_t *amount;
    json_object_foreach(json_object_get(rec, "cost"), unit, amount)
        if (json_is_number(amount))
            metrics_add(a->fam.cost, (const char *const[]){connector, unit}, json_number_value(amount));
    double e2e = seconds_between(rec, "created_ms", "finished_ms");
    if (e2e >= 0)
        metrics_observe(a->fam.stage_seconds, (const char *const[]){"end_to_end", connector}, e2e);
}

/* Gauges are read now, then everything is rendered. */
void api_route_metrics(api_server *a, request *rq)
{
    for (size_t i = 0; i < a->cfg->n_connectors && a->sched; i++) {
        const char *name = a->cfg->connectors[i].name;
        const char *const labels[] = {name};
        json_t *flow = NULL;
        if (scheduler_connector_flow(a->sched, name, &flow) == AR_OK) {
            metrics_set(a->fam.queue_depth, labels, (double)json_integer_value(json_object_get(flow, "queued")));
            metrics_set(a->fam.inflight, labels, (double)json_integer_value(json_object_get(flow, "inflight")));
            const char *bs = json_string_value(json_object_get(json_object_get(flow, "breaker"), "state"));
            metrics_set(a->fam.breaker, labels, bs && !strcmp(bs, "open") ? 2 : bs && !strcmp(bs, "half_open") ? 1 : 0);
            json_decref(flow);
        }
        sandbox_snapshot snap;
        if (scheduler_connector(a->sched, name, &snap) == AR_OK) {
            metrics_set(a->fam.restarts, labels, (double)snap.restarts);
            metrics_set(a->fam.serving, labels, (double)snap.serving);
            json_decref(snap.descriptor);
        }
    }
    journal_stats js;
    journal_get_stats(a->journal, &js);
    metrics_set(a->fam.journal_bytes, NULL, (double)js.map_used);
    metrics_set(a->fam.journal_map, NULL, (double)js.map_size);
    metrics_set(a->fam.journal_commits, NULL, (double)js.commits);
    metrics_set(a->fam.journal_batches, NULL, (double)js.batches);
    metrics_set(a->fam.journal_commit_time, NULL, (double)js.commit_ns / 1e9);
    api_set_reply_text(rq, 200, metrics_render(a->metrics), "text/plain; version=0.0.4; charset=utf-8");
}

/* One level down: auto -> semi -> suggest (suggest stays). */
static const char *lower_level(const char *level)
{
    return !strcmp(level, "auto") ? "semi" : "suggest";
}

void api_drift_record(api_server *a, json_t *detections)
{
    size_t i;
    json_t *d;
    json_array_foreach(detections, i, d) {
        const char *connector = json_string_value(json_object_get(d, "connector"));
        const char *action = json_string_value(json_object_get(d, "action"));
        const char *before = autonomy_level(a->autonomy, connector, action);
        const char *after = NULL;
        if (a->drift_lowers_autonomy && strcmp(before, "suggest") != 0)
            after = lower_level(before);
        json_object_set_new(d, "autonomy_before", json_string(before));
        json_object_set_new(d, "autonomy_after", after ? json_string(after) : json_null());
        journal_batch *b = journal_batch_new();
        audit_batch_append(b, "drift_detected", NULL, json_incref(d));
        ar_error err = {0};
        if (journal_commit(a->journal, b, &err) != AR_OK)
            ar_log("error", "cannot audit a drift detection: %s", err.message);
        journal_batch_free(b);
        ar_log("warn", "drift in %s.%s: %s %.2f recently against %.2f before%s%s", connector, action,
               json_string_value(json_object_get(d, "metric")), json_number_value(json_object_get(d, "recent")),
               json_number_value(json_object_get(d, "baseline")), after ? "; autonomy lowered to " : "",
               after ? after : "");
        if (after) {
            char pattern[160];
            snprintf(pattern, sizeof pattern, "%s.%s", connector, action);
            if (autonomy_set(a->autonomy, pattern, after, "drift detector", &err) != AR_OK)
                ar_log("error", "cannot lower the autonomy of %s: %s", pattern, err.message);
        }
    }
    json_decref(detections);
}

/* The summary entry of family name whose labels match (label, value) pairs; borrowed from
 * summary. */
static const json_t *find_series(const json_t *summary, const char *k1, const char *v1, const char *k2, const char *v2)
{
    size_t i;
    const json_t *e;
    json_array_foreach(summary, i, e) {
        const json_t *labels = json_object_get(e, "labels");
        if (strcmp(json_string_value(json_object_get(labels, k1)) ?: "", v1) == 0 &&
            (!k2 || strcmp(json_string_value(json_object_get(labels, k2)) ?: "", v2) == 0))
            return e;
    }
    return NULL;
}

static json_t *quantiles(const json_t *e)
{
    if (!e)
        return json_null();
    return json_pack("{s:O, s:O, s:O, s:O}", "count", json_object_get(e, "count"), "p50", json_object_get(e, "p50"),
                     "p90", json_object_get(e, "p90"), "p99", json_object_get(e, "p99"));
}

/* Add an action record's figures into by_connector[connector]. */
static void tally(json_t *by_connector, const json_t *rec)
{
    const char *name = action_record_str(rec, "connector");
    json_t *c = json_object_get(by_connector, name);
    if (!c) {
        c = json_pack("{s:s, s:i, s:i, s:i, s:o}", "connector", name, "actions", 0, "finished", 0, "failed", 0,
                      "cost", json_object());
        json_object_set_new(by_connector, name, c);
    }
    json_object_set_new(c, "actions", json_integer(json_integer_value(json_object_get(c, "actions")) + 1));
    action_state st = action_record_state(rec);
    if (st == ACTION_SUCCEEDED || st == ACTION_FAILED || st == ACTION_UNKNOWN_OUTCOME) {
        json_object_set_new(c, "finished", json_integer(json_integer_value(json_object_get(c, "finished")) + 1));
        if (st != ACTION_SUCCEEDED)
            json_object_set_new(c, "failed", json_integer(json_integer_value(json_object_get(c, "failed")) + 1));
    }
    json_t *cost = json_object_get(c, "cost");
    const char *unit;
    json_t *amount;
    json_object_foreach(json_object_get(rec, "cost"), unit, amount)
        if (json_is_number(amount))
            json_object_set_new(cost, unit, json_real(json_number_value(json_object_get(cost, unit)) +
                                                      json_number_value(amount)));
}

/* GET /v1/stats?day=YYYY-MM-DD: the actions created that day (UTC), from the journal (so it
 * survives restarts): per connector, how many, finished, failed, and what they cost. Reads one
 * day of the history with a cursor from that day's first id. */
static void stats_for_day(api_server *a, request *rq, const char *day)
{
    struct tm tm = {0};
    const char *end = strptime(day, "%Y-%m-%d", &tm);
    if (!end || *end) {
        api_set_reply_error(rq, 400, "invalid_request", "day must be YYYY-MM-DD (UTC), got \"%s\"", day);
        return;
    }
    int64_t from_ms = (int64_t)timegm(&tm) * 1000, to_ms = from_ms + 86400000;
    char from[11], to[11];
    action_id_time_prefix(from_ms, from);
    action_id_time_prefix(to_ms, to);
    journal_read *r = NULL;
    journal_cursor *cur = NULL;
    ar_error err = {0};
    json_t *by = json_object();
    int rc = journal_read_begin(a->journal, &r, &err);
    if (rc == AR_OK)
        rc = journal_cursor_open(r, JDB_ACTIONS, &cur);
    const void *key = from, *val;
    size_t klen = 10, vlen;
    if (rc == AR_OK)
        rc = journal_cursor_get(cur, JOURNAL_SEEK_GE, &key, &klen, &val, &vlen);
    while (rc == AR_OK && klen >= 10 && memcmp(key, to, 10) < 0) {
        json_t *rec = json_loadb(val, vlen, 0, NULL);
        if (rec)
            tally(by, rec);
        json_decref(rec);
        rc = journal_cursor_get(cur, JOURNAL_NEXT, &key, &klen, &val, &vlen);
    }
    if (cur)
        journal_cursor_close(cur);
    if (r)
        journal_read_end(r);
    if (rc != AR_OK && rc != AR_E_NOTFOUND) {
        json_decref(by);
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    json_t *list = json_array();
    const char *name;
    json_t *c;
    json_object_foreach(by, name, c)
        json_array_append(list, c);
    json_decref(by);
    api_set_reply_json(rq, 200, json_pack("{s:s, s:o}", "day", day, "connectors", list));
}

void api_route_stats(api_server *a, request *rq)
{
    const char *day = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "day");
    if (day && *day) {
        stats_for_day(a, rq, day);
        return;
    }
    json_t *stages = NULL, *actions = NULL, *costs = NULL;
    metrics_summary(a->metrics, "aiorun_stage_duration_seconds", &stages, NULL);
    metrics_summary(a->metrics, "aiorun_actions_total", &actions, NULL);
    metrics_summary(a->metrics, "aiorun_cost_total", &costs, NULL);
    json_t *out = json_array();
    for (size_t i = 0; i < a->cfg->n_connectors; i++) {
        const char *name = a->cfg->connectors[i].name;
        json_t *by_state = json_object();
        double finished = 0, failed = 0;
        size_t k;
        json_t *e;
        json_array_foreach(actions, k, e) {
            const json_t *labels = json_object_get(e, "labels");
            if (strcmp(json_string_value(json_object_get(labels, "connector")) ?: "", name) != 0)
                continue;
            const char *state = json_string_value(json_object_get(labels, "state"));
            double v = json_number_value(json_object_get(e, "value"));
            json_object_set_new(by_state, state, json_real(json_number_value(json_object_get(by_state, state)) + v));
            if (!strcmp(state, "SUCCEEDED") || !strcmp(state, "FAILED") || !strcmp(state, "UNKNOWN_OUTCOME")) {
                finished += v;
                if (strcmp(state, "SUCCEEDED") != 0)
                    failed += v;
            }
        }
        json_t *cost = json_object(), *per_action = json_object();
        json_array_foreach(costs, k, e) {
            const json_t *labels = json_object_get(e, "labels");
            if (strcmp(json_string_value(json_object_get(labels, "connector")) ?: "", name) != 0)
                continue;
            const char *unit = json_string_value(json_object_get(labels, "unit"));
            double total = json_number_value(json_object_get(e, "value"));
            json_object_set_new(cost, unit, json_real(total));
            json_object_set_new(per_action, unit, finished > 0 ? json_real(total / finished) : json_null());
        }
        json_array_append_new(out, json_pack("{s:s, s:o, s:f, s:o, s:o, s:{s:o, s:o, s:o, s:o}}", "connector", name,
            "actions", by_state, "finished", finished,
            "error_rate", finished > 0 ? json_real(failed / finished) : json_null(),
            "cost", json_pack("{s:o, s:o}", "total", cost, "per_action", per_action),
            "latency_seconds",
            "connector_call", quantiles(find_series(stages, "stage", "connector_call", "connector", name)),
            "end_to_end", quantiles(find_series(stages, "stage", "end_to_end", "connector", name)),
            "queue_wait", quantiles(find_series(stages, "stage", "queue_wait", "connector", name)),
            "decision", quantiles(find_series(stages, "stage", "decision", "connector", name))));
    }
    json_decref(stages);
    json_decref(actions);
    json_decref(costs);
    api_set_reply_json(rq, 200, json_pack("{s:o}", "connectors", out));
}
