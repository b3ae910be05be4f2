/* api_metrics.c - what GET /metrics shows, in Prometheus's text format: the families the daemon
 * keeps (registered here, updated where things happen), and the gauges read from the scheduler,
 * the sandboxes and the journal when scraped. Latencies are histograms in seconds. */
#include "api_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    const double *lat = metrics_latency_buckets;
    size_t nlat = metrics_latency_n_buckets;
    struct api_families *f = &a->fam;
    int rc;
    if ((rc = metrics_register(a->metrics, "aiorun_actions_total", "Actions that reached a final state, by connector, "
                               "action and state (an operator's resolution counts again).", METRICS_COUNTER,
                               action_labels, N(action_labels), NULL, 0, &f->actions, err)) ||
        (rc = metrics_register(a->metrics, "aiorun_stage_duration_seconds", "Time per stage of an action: decision, "
                               "approval_wait, queue_wait, connector_call, end_to_end.", METRICS_HISTOGRAM,
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
                               METRICS_GAUGE, none, 0, NULL, 0, &f->journal_map, err)))
        return rc;
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
    metrics_add(a->fam.actions, (const char *const[]){connector, action_record_str(rec, "action"), action_state_name(st)}, 1);
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
    api_set_reply_text(rq, 200, metrics_render(a->metrics), "text/plain; version=0.0.4; charset=utf-8");
}
