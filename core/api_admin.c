/* api_admin.c - the API's operator routes: tokens, whoami, connectors (and pausing them),
 * approvals, autonomy and policies (reload and view). */
#include "api_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approvals.h"
#include "audit.h"
#include "autonomy.h"


/* ---- policies ------------------------------------------------------------------------------- */

static int reload_locked(api_server *a, const char *why, ar_error *err);

/* Maintain the counters of both sets: the new one's, and the current one's for the workers
 * still deciding with it (a later reload drops them). */
static int install_counters(api_server *a, const policy_set *current, const policy_set *next, ar_error *err)
{
    if (!a->counters)
        return AR_OK;
    size_t n_cur, n_next;
    const counter_def *cur = policy_set_counters(current, &n_cur);
    const counter_def *nxt = policy_set_counters(next, &n_next);
    counter_def *all = malloc((n_cur + n_next + 1) * sizeof *all);
    if (!all)
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    if (n_cur)
        memcpy(all, cur, n_cur * sizeof *all);
    if (n_next)
        memcpy(all + n_cur, nxt, n_next * sizeof *all);
    int rc = counters_install(a->counters, all, n_cur + n_next, ar_now_ms(), err);
    free(all);
    return rc;
}

int api_reload_policies(api_server *a, const char *why, ar_error *err)
{
    pthread_mutex_lock(&a->reload_lock);
    uint64_t gen_before;
    api_current_policies(a, &gen_before);
    int rc = reload_locked(a, why, err);
    uint64_t gen_after;
    const policy_set *now = api_current_policies(a, &gen_after);
    /* On the record: each reload that changed the set, and each one refused (and why). */
    json_t *data = NULL;
    if (rc != AR_OK)
        data = json_pack("{s:s, s:s, s:s}", "why", why, "error", err->code, "message", err->message);
    else if (gen_after != gen_before)
        data = json_pack("{s:s, s:i, s:s}", "version", policy_set_version(now), "files", (int)policy_set_count(now),
                         "why", why);
    if (data) {
        journal_batch *b = journal_batch_new();
        audit_batch_append(b, rc == AR_OK ? "policy_reloaded" : "policy_reload_refused", NULL, data);
        ar_error aerr = {0};
        if (journal_commit(a->journal, b, &aerr) != AR_OK)
            ar_log("error", "cannot audit the policy reload: %s", aerr.message);
        journal_batch_free(b);
    }
    pthread_mutex_unlock(&a->reload_lock);
    return rc;
}

static int reload_locked(api_server *a, const char *why, ar_error *err)
{
    policy_set *next = NULL;
    int rc = policy_set_load(a->cfg->policy_dir, &a->cfg->policy, &next, err);
    if (rc == AR_OK) {
        /* A set that cannot even start a Lua state must not replace one that serves. */
        policy_worker *probe = NULL;
        rc = policy_worker_new(next, &probe, err);
        policy_worker_free(probe);
    }
    if (rc == AR_OK) {
        /* Nor one that fails its own tests (the *_test.lua files beside it). */
        json_t *report = NULL;
        rc = policy_run_tests(next, a->cfg->policy_dir, &report, err);
        json_int_t failed = json_integer_value(json_object_get(report, "failed"));
        if (rc == AR_OK && failed > 0) {
            json_t *first = NULL;
            size_t i;
            json_t *c;
            json_array_foreach(json_object_get(report, "cases"), i, c) {
                if (!json_is_true(json_object_get(c, "ok"))) {
                    first = c;
                    break;
                }
            }
            rc = ar_error_set(err, AR_E_INVALID, "policy_tests_failed", "%lld policy test(s) failed, first: %s: %s: %s",
                              (long long)failed, json_string_value(json_object_get(first, "file")),
                              json_string_value(json_object_get(first, "name")),
                              json_string_value(json_array_get(json_object_get(first, "differences"), 0)));
        }
        json_decref(report);
    }
    if (rc != AR_OK) {
        policy_set_free(next);
        ar_log("error", "policy reload (%s) refused, the previous set keeps serving: %s", why, err->message);
        return rc;
    }
    pthread_mutex_lock(&a->policy_lock);
    const char *before = policy_set_version(a->policy_sets[a->n_sets - 1]);
    if (strcmp(before, policy_set_version(next)) == 0) {
        pthread_mutex_unlock(&a->policy_lock);
        policy_set_free(next);
        return AR_OK; /* nothing changed */
    }
    if (a->n_sets == sizeof a->policy_sets / sizeof a->policy_sets[0]) {
        pthread_mutex_unlock(&a->policy_lock);
        policy_set_free(next);
        return ar_error_set(err, AR_E_BUSY, "too_many_reloads", "the daemon has kept %zu policy sets since it "
                            "started; restart it to reload again", a->n_sets);
    }
    const policy_set *current = a->policy_sets[a->n_sets - 1];
    pthread_mutex_unlock(&a->policy_lock);
    /* Counters first: the new set must never read one that is not maintained yet. Only
     * reloads change the sets, and they are serialised, so current stays current. */
    if ((rc = install_counters(a, current, next, err)) != AR_OK) {
        policy_set_free(next);
        ar_log("error", "policy reload (%s) refused, the previous set keeps serving: %s", why, err->message);
        return rc;
    }
    pthread_mutex_lock(&a->policy_lock);
    a->policy_sets[a->n_sets++] = next;
    a->policy_gen++;
    a->policies_loaded_ms = ar_now_ms();
    pthread_mutex_unlock(&a->policy_lock);
    ar_log("info", "policies reloaded (%s): %zu file(s), version %s (was %s)", why, policy_set_count(next),
           policy_set_version(next), before);
    return AR_OK;
}

void api_note_decision_time(api_server *a, uint64_t ns)
{
    int k = 0;
    while (k < 47 && ((uint64_t)1 << k) <= ns)
        k++;
    pthread_mutex_lock(&a->policy_lock);
    a->decision_hist[k]++;
    a->decisions++;
    a->decision_ns_sum += ns;
    if (ns > a->decision_ns_max)
        a->decision_ns_max = ns;
    pthread_mutex_unlock(&a->policy_lock);
}

/* The upper bound (µs) of the bucket holding quantile q. Caller holds policy_lock. */
static double quantile_us(const api_server *a, double q)
{
    uint64_t want = (uint64_t)(q * (double)a->decisions + 0.5), seen = 0;
    for (int k = 0; k < 48; k++) {
        seen += a->decision_hist[k];
        if (seen >= want && seen > 0)
            return (double)((uint64_t)1 << k) / 1000.0;
    }
    return 0;
}

/* The set's counters with their values now: what ops check against their caps. */
static json_t *counters_view(api_server *a, const policy_set *ps)
{
    size_t n;
    const counter_def *defs = policy_set_counters(ps, &n);
    json_t *arr = json_array();
    journal_read *r = NULL;
    int64_t now = ar_now_ms();
    if (n && a->counters && journal_read_begin(a->journal, &r, NULL) != AR_OK)
        r = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *c = counters_def_json(&defs[i]);
        double value;
        uint64_t version;
        if (c && r && counters_read(r, &defs[i], now, &value, &version, NULL) == AR_OK)
            json_object_set_new(c, "value", json_real(value));
        else if (c)
            json_object_set_new(c, "value", json_null());
        json_array_append_new(arr, c);
    }
    if (r)
        journal_read_end(r);
    return arr;
}

json_t *api_policies_view(api_server *a)
{
    pthread_mutex_lock(&a->policy_lock);
    const policy_set *ps = a->policy_sets[a->n_sets - 1];
    char when[AR_TIME_LEN];
    ar_time_rfc3339(a->policies_loaded_ms, when);
    /* Decision time: quantiles are the upper bounds of power-of-two buckets. */
    json_t *timing = json_pack("{s:I, s:f, s:f, s:f, s:f, s:f}", "count", (json_int_t)a->decisions,
                               "mean_us", a->decisions ? (double)a->decision_ns_sum / (double)a->decisions / 1000.0 : 0.0,
                               "p50_us_at_most", quantile_us(a, 0.5), "p90_us_at_most", quantile_us(a, 0.9),
                               "p99_us_at_most", quantile_us(a, 0.99), "max_us", (double)a->decision_ns_max / 1000.0);
    json_t *v = json_pack("{s:s, s:i, s:s, s:s, s:i, s:o}", "version", policy_set_version(ps), "files",
                          (int)policy_set_count(ps), "dir", a->cfg->policy_dir, "loaded_at", when,
                          "reloads", (int)a->n_sets - 1, "decision_time", timing);
    pthread_mutex_unlock(&a->policy_lock);
    if (v)
        json_object_set_new(v, "counters", counters_view(a, ps));
    return v;
}

void api_route_reload_policies(api_server *a, request *rq)
{
    ar_error err = {0};
    char why[120];
    snprintf(why, sizeof why, "requested by %s", rq->who.name);
    int rc = api_reload_policies(a, why, &err);
    if (rc != AR_OK)
        api_set_reply_error(rq, rc == AR_E_BUSY ? 503 : 422, err.code[0] ? err.code : "policy_invalid", "%s "
                        "(the previous set keeps serving)", err.message);
    else
        api_set_reply_json(rq, 200, api_policies_view(a));
}

/* ---- connectors ----------------------------------------------------------------------------- */

static json_t *render_connector(const config_connector *cc, const sandbox_snapshot *snap)
{
    const json_t *d = snap->descriptor;
    json_t *actions = json_array();
    size_t i;
    json_t *act;
    json_array_foreach(json_object_get(d, "actions"), i, act) {
        json_array_append_new(actions, json_pack("{s:O, s:O, s:O, s:O}",
            "name", json_object_get(act, "name"), "summary", json_object_get(act, "summary"),
            "effect", json_object_get(act, "effect"), "idempotency", json_object_get(act, "idempotency")));
    }
    json_t *abi = json_object_get(d, "abi");
    char abi_s[32] = "";
    if (abi)
        snprintf(abi_s, sizeof abi_s, "%lld.%lld", (long long)json_integer_value(json_object_get(abi, "major")),
                 (long long)json_integer_value(json_object_get(abi, "minor")));
    json_t *version = json_object_get(d, "version");
    /* Which isolation layers hold (the host's own report at HELLO), and what it may reach. */
    json_t *sandbox = json_object_get(d, "sandbox");
    json_t *ports = json_array();
    for (size_t k = 0; k < cc->n_allow_ports; k++)
        json_array_append_new(ports, json_integer(cc->allow_ports[k]));
    json_t *secrets = json_array();
    for (size_t k = 0; k < cc->n_secrets; k++)
        json_array_append_new(secrets, json_string(cc->secrets[k]));
    return json_pack("{s:s, s:s, s:O, s:s, s:s, s:s, s:i, s:i, s:I, s:o, s:O, s:o, s:o}",
        "name", cc->name, "plugin", cc->plugin, "version", version ? version : json_null(),
        "abi", abi_s, "status", sandbox_state_name(snap->state), "message", snap->message,
        "processes", snap->processes, "serving", snap->serving, "restarts", (json_int_t)snap->restarts,
        "actions", actions, "sandbox", sandbox ? sandbox : json_null(), "allow_ports", ports,
        "secrets", secrets);
}

void api_route_connectors(api_server *a, request *rq)
{
    json_t *list = json_array();
    json_t *drifts = a->drift ? drift_view(a->drift) : json_array();
    for (size_t i = 0; i < a->cfg->n_connectors; i++) {
        const config_connector *cc = &a->cfg->connectors[i];
        sandbox_snapshot snap;
        if (!a->sched || scheduler_connector(a->sched, cc->name, &snap) != AR_OK)
            continue;
        json_t *view = render_connector(cc, &snap);
        json_t *flow = NULL;
        if (scheduler_connector_flow(a->sched, cc->name, &flow) == AR_OK)
            json_object_set_new(view, "flow", flow);
        /* Drift: each of its actions' recent and baseline error rate and confidence. */
        json_t *mine = json_array();
        size_t k;
        json_t *d;
        json_array_foreach(drifts, k, d)
            if (!strcmp(json_string_value(json_object_get(d, "connector")), cc->name))
                json_array_append(mine, d);
        json_object_set_new(view, "drift", mine);
        json_array_append_new(list, view);
        json_decref(snap.descriptor);
    }
    json_decref(drifts);
    api_set_reply_json(rq, 200, json_pack("{s:o}", "connectors", list));
}

/* ---- approvals and autonomy ------------------------------------------------------------------- */

void api_route_list_approvals(api_server *a, request *rq)
{
    const char *state = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "state");
    static const struct { const char *name; action_state st; } states[] = {
        {"pending", ACTION_PENDING_APPROVAL}, {"rejected", ACTION_REJECTED}, {"expired", ACTION_EXPIRED}};
    int st = -1;
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
        if (!state || !*state ? i == 0 : strcmp(state, states[i].name) == 0)
            st = (int)states[i].st;
    if (st < 0) {
        api_set_reply_error(rq, 400, "invalid_request", "state must be pending, rejected or expired");
        return;
    }
    json_t *page;
    char next[ACTION_ID_LEN + 1];
    ar_error err = {0};
    action_filter f = {.state = st};
    int rc = action_list(a->journal, &f, MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "after"),
                         MAX_LIST_LIMIT, &page, next, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    api_reply_page(rq, "approvals", page, next, approvals_view);
}

void api_route_get_approval(api_server *a, request *rq, const char *id)
{
    json_t *rec = api_load_visible(a, rq, id);
    if (!rec)
        return;
    if (!json_object_get(rec, "approval")) {
        api_set_reply_error(rq, 404, "not_found", "action %s never waited for an approval", id);
    } else {
        api_set_reply_json(rq, 200, approvals_view(rec));
    }
    json_decref(rec);
}

void api_route_decide_approval(api_server *a, request *rq, const char *id)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *decision = json_string_value(json_object_get(body, "decision"));
    json_t *comment = json_object_get(body, "comment");
    if (!body) {
        api_set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s", jerr.text);
        return;
    }
    size_t expected = 1 + (comment != NULL);
    if (!decision || (strcmp(decision, "approve") && strcmp(decision, "reject")) ||
        (comment && !json_is_string(comment)) || json_object_size(body) != expected) {
        json_decref(body);
        api_set_reply_error(rq, 400, "invalid_request", "expected {\"decision\": \"approve\"|\"reject\", \"comment\": \"...\"}");
        return;
    }
    if (strlen(id) != ACTION_ID_LEN) {
        json_decref(body);
        api_set_reply_error(rq, 404, "not_found", "no action with id %s", id);
        return;
    }
    json_t *rec = NULL;
    int changed = 0;
    ar_error err = {0};
    int rc = approvals_decide(a->journal, a->cfg->approvers, id, decision, json_string_value(comment), &rq->who,
                              &rec, &changed, &err);
    if (rc == AR_OK) {
        if (changed) {
            ar_log("info", "action %s %sd by %s", id, decision, rq->who.name);
            api_action_changed(a, rec);
            if (action_record_state(rec) == ACTION_APPROVED)
                scheduler_enqueue(a->sched, json_deep_copy(rec));
        }
        api_set_reply_json(rq, 200, approvals_view(rec));
    } else {
        if (rec) /* it expired on the way: still reported */
            api_action_changed(a, rec);
        unsigned status = rc == AR_E_NOTFOUND ? 404 : rc == AR_E_EXISTS ? 409
                        : rc == AR_E_INVALID ? 403 : api_status_for_error(rc);
        api_set_reply_error(rq, status, err.code[0] ? err.code : "internal", "%s", err.message);
    }
    json_decref(rec);
    json_decref(body);
}

void api_route_set_autonomy(api_server *a, request *rq)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *pattern = json_string_value(json_object_get(body, "pattern"));
    json_t *level = json_object_get(body, "level");
    if (!body || !pattern || !level || !(json_is_string(level) || json_is_null(level)) || json_object_size(body) != 2) {
        json_decref(body);
        api_set_reply_error(rq, 400, "invalid_request", "expected {\"pattern\": \"connector.action\"|\"connector.*\"|\"*\", "
                        "\"level\": \"auto\"|\"semi\"|\"suggest\"|null (null removes the runtime setting)}");
        return;
    }
    ar_error err = {0};
    int rc = autonomy_set(a->autonomy, pattern, json_string_value(level), rq->who.name, &err);
    if (rc != AR_OK) {
        api_set_reply_error(rq, rc == AR_E_INVALID ? 400 : api_status_for_error(rc), err.code, "%s", err.message);
    } else {
        ar_log("info", "autonomy %s set to %s by %s", pattern, json_is_null(level) ? "(config)" : json_string_value(level),
               rq->who.name);
        api_set_reply_json(rq, 200, autonomy_view(a->autonomy));
    }
    json_decref(body);
}

void api_watch_approval(void *arg, const char *id, int64_t expires_ms)
{
    api_expiry_add(arg, id, expires_ms);
}

/* ---- operator controls on connectors --------------------------------------------------------- */

static void pause_answered(void *arg, int status, const json_t *view)
{
    request *rq = arg;
    if (status == AR_OK) {
        sandbox_snapshot snap;
        const config_connector *cc = config_find_connector(rq->api->cfg, rq->target);
        if (cc && scheduler_connector(rq->api->sched, cc->name, &snap) == AR_OK) {
            json_t *out = render_connector(cc, &snap);
            json_object_set(out, "flow", (json_t *)view);
            json_decref(snap.descriptor);
            api_set_reply_json(rq, 200, out);
        } else {
            api_set_reply_json(rq, 200, json_pack("{s:s, s:O}", "name", rq->target, "flow", (json_t *)view));
        }
    } else if (status == AR_E_NOTFOUND) {
        api_set_reply_error(rq, 404, "unknown_connector", "no connector named \"%s\"", rq->target);
    } else {
        api_set_reply_error(rq, 503, "storage_full", "the pause could not be journaled; nothing changed on disk");
    }
    api_resume(rq);
}

enum MHD_Result api_route_pause(api_server *a, request *rq, const char *name, int pause)
{
    if (!config_find_connector(a->cfg, name)) {
        api_set_reply_error(rq, 404, "unknown_connector", "no connector named \"%s\"; GET /v1/connectors lists them", name);
        return api_queue_reply(rq);
    }
    const char *reason = "";
    json_t *body = rq->body_len ? json_loadb(rq->body, rq->body_len, 0, NULL) : NULL;
    if (rq->body_len && (!json_is_object(body) || (json_object_get(body, "reason") &&
                                                    !json_is_string(json_object_get(body, "reason"))))) {
        json_decref(body);
        api_set_reply_error(rq, 400, "invalid_request", "expected no body or {\"reason\": \"why\"}");
        return api_queue_reply(rq);
    }
    if (body && json_string_value(json_object_get(body, "reason")))
        reason = json_string_value(json_object_get(body, "reason"));
    snprintf(rq->target, sizeof rq->target, "%s", name);
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    int rc = scheduler_pause(a->sched, name, pause, rq->who.name, reason, pause_answered, rq);
    if (rc != AR_OK) {
        if (rc == AR_E_CLOSED)
            api_set_reply_error(rq, 503, "shutting_down", "the daemon is stopping; try again once it is back");
        else
            api_set_reply_error(rq, 500, "internal", "out of memory");
        api_resume(rq);
    }
    json_decref(body);
    return MHD_YES;
}

/* ---- identity and tokens ------------------------------------------------------------------ */

static json_t *roles_json(unsigned roles)
{
    char csv[96];
    auth_roles_format(roles, csv, sizeof csv);
    json_t *arr = json_array();
    for (char *save = NULL, *tok = strtok_r(csv, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        json_array_append_new(arr, json_string(tok));
    return arr;
}

void api_route_whoami(request *rq)
{
    api_set_reply_json(rq, 200, json_pack("{s:s, s:o}", "name", rq->who.name, "roles", roles_json(rq->who.roles)));
}

void api_route_list_tokens(api_server *a, request *rq)
{
    json_t *list;
    ar_error err = {0};
    int rc = auth_token_list(a->auth, &list, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    api_set_reply_json(rq, 200, json_pack("{s:o}", "tokens", list));
}

/* POST /v1/tokens {"name", "roles": [...], "expires_in_s"}: the token is in this reply only. */
void api_route_create_token(api_server *a, request *rq)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *name = json_string_value(json_object_get(body, "name"));
    json_t *roles = json_object_get(body, "roles"), *expires = json_object_get(body, "expires_in_s");
    if (!body) {
        api_set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s", jerr.text);
        return;
    }
    if (!json_is_object(body) || !name || !json_is_array(roles) || (expires && !json_is_integer(expires)) ||
        json_object_size(body) != 2u + (expires != NULL)) {
        json_decref(body);
        api_set_reply_error(rq, 400, "invalid_request", "expected {\"name\": string, \"roles\": [string, ...], "
                        "\"expires_in_s\": integer (optional)}");
        return;
    }
    char csv[256] = "";
    size_t i, used = 0;
    json_t *r;
    json_array_foreach(roles, i, r) {
        int n = snprintf(csv + used, sizeof csv - used, "%s%s", i ? "," : "",
                         json_is_string(r) ? json_string_value(r) : "(not a string)");
        if (n > 0 && (size_t)n < sizeof csv - used)
            used += (size_t)n;
    }
    unsigned bits;
    ar_error err = {0};
    int rc = auth_roles_parse(csv, &bits, &err);
    int64_t expires_ms = 0;
    if (rc == AR_OK && expires) {
        json_int_t secs = json_integer_value(expires);
        if (secs <= 0 || secs > 10LL * 365 * 24 * 3600)
            rc = ar_error_set(&err, AR_E_INVALID, "invalid_expiry", "expires_in_s must be from 1 to %lld seconds",
                              10LL * 365 * 24 * 3600);
        expires_ms = ar_now_ms() + (int64_t)secs * 1000;
    }
    char token[AUTH_TOKEN_LEN + 1];
    if (rc == AR_OK)
        rc = auth_token_create_by(a->auth, rq->who.name, name, bits, expires_ms, token, &err);
    if (rc != AR_OK) {
        json_decref(body);
        api_set_reply_error(rq, rc == AR_E_EXISTS ? 409 : api_status_for_error(rc), err.code, "%s", err.message);
        return;
    }
    ar_log("info", "token %s created by %s", name, rq->who.name);
    char until[AR_TIME_LEN];
    if (expires_ms)
        ar_time_rfc3339(expires_ms, until);
    json_t *reply = json_pack("{s:s, s:O, s:s, s:o}", "name", name, "roles", roles, "token", token,
                              "expires_at", expires_ms ? json_string(until) : json_null());
    sodium_memzero(token, sizeof token);
    json_decref(body);
    api_set_reply_json(rq, 201, reply);
}

void api_route_revoke_token(api_server *a, request *rq, const char *name)
{
    ar_error err = {0};
    int rc = auth_token_revoke_by(a->auth, rq->who.name, name, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    ar_log("info", "token %s revoked by %s", name, rq->who.name);
    api_set_reply_json(rq, 200, json_pack("{s:s, s:s}", "name", name, "state", "revoked"));
}
