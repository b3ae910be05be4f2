/* api.c - HTTP API: server lifecycle, libmicrohttpd glue, replies, routing and waiting requests
 * (see api.h). Submissions and action routes are in api_actions.c, operator routes in api_admin.c. */
#include "api_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approvals.h"
#include "jsonw.h"

/* Failed authentications allowed per client address and minute before it must wait. */
#define AUTH_MAX_FAILURES 60
#define AUTH_WINDOW_MS 60000
/* libmicrohttpd's memory per connection (request line, headers, the read buffer a body passes
 * through on its way to us): it zeroes much of it for every request, so its default of 32 KiB
 * cost ~2 % of the daemon's CPU. 16 KiB still takes 8 KiB of headers, as common servers do. */
#define API_CONNECTION_MEMORY (16 * 1024)

/* A pending approval to expire at `at` (monotonic ms). */
typedef struct expiry {
    char id[ACTION_ID_LEN + 1];
    int64_t at;
    int64_t expires_ms;          /* wall clock, as stored on the approval */
    struct expiry *next;
} expiry;

/* ---- replies ---------------------------------------------------------------------------- */

void api_set_reply_text(request *rq, unsigned status, char *text, const char *type)
{
    free(rq->reply);
    rq->reply = text;
    rq->reply_type = text ? type : NULL;
    rq->reply_status = text ? status : MHD_HTTP_INTERNAL_SERVER_ERROR;
}

void api_set_reply_json(request *rq, unsigned status, json_t *doc /* takes */)
{
    api_set_reply_text(rq, status, jsonw_dumps(doc, JSON_COMPACT), NULL);
    json_decref(doc);
}

void api_set_reply_error(request *rq, unsigned status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    api_set_reply_json(rq, status, json_pack("{s:s, s:s}", "error", code, "message", msg));
}

unsigned api_status_for_error(int rc)
{
    switch (rc) {
    case AR_E_FULL: return MHD_HTTP_SERVICE_UNAVAILABLE;
    case AR_E_NOTFOUND: return MHD_HTTP_NOT_FOUND;
    case AR_E_INVALID: return MHD_HTTP_BAD_REQUEST;
    case AR_E_BUSY: return MHD_HTTP_SERVICE_UNAVAILABLE;
    default: return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

void api_set_reply_ar_error(request *rq, int rc, const ar_error *err)
{
    api_set_reply_error(rq, api_status_for_error(rc), err->code[0] ? err->code : "internal", "%s",
                    err->message[0] ? err->message : "internal error");
}

void api_set_reply_action(request *rq, unsigned status, const json_t *rec)
{
    api_set_reply_text(rq, status, action_render_text(rec), NULL); /* type NULL: JSON */
}

enum MHD_Result api_queue_reply(request *rq)
{
    const char *text = rq->reply ? rq->reply : "{\"error\":\"internal\",\"message\":\"no reply\"}";
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), (void *)text,
                                                                MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, rq->reply_type ? rq->reply_type : "application/json");
    if (rq->retry_after_s > 0) {
        char secs[16];
        snprintf(secs, sizeof secs, "%d", rq->retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, secs);
    }
    enum MHD_Result r = MHD_queue_response(rq->conn, rq->reply_status ? rq->reply_status : 500, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Hand a suspended request back to libmicrohttpd with its reply set. After this call the
 * request belongs to the HTTP thread again: do not touch it. */
void api_resume(request *rq)
{
    rq->suspended = 0;
    MHD_resume_connection(rq->conn);
}

/* ---- waiting for an action to settle ------------------------------------------------------ */

void api_waiter_add(api_server *a, request *rq)
{
    pthread_mutex_lock(&a->wait_lock);
    rq->next = a->waiters;
    a->waiters = rq;
    /* The waiter thread needs to look again only when this one is due before it wakes anyway
     * (a wake-up per request otherwise, most of them for nothing: answers usually come first). */
    if (rq->wait_until < a->waiter_wakes_at)
        pthread_cond_signal(&a->wait_cond);
    pthread_mutex_unlock(&a->wait_lock);
}

/* Remove and return the waiters for id (all of them when id is NULL) as a list. */
request *api_waiters_take(api_server *a, const char *id, int64_t expired_before)
{
    request *taken = NULL;
    pthread_mutex_lock(&a->wait_lock);
    for (request **pp = &a->waiters; *pp;) {
        request *rq = *pp;
        int match = id ? strcmp(rq->action_id, id) == 0 : rq->wait_until <= expired_before;
        if (match) {
            *pp = rq->next;
            rq->next = taken;
            taken = rq;
        } else {
            pp = &rq->next;
        }
    }
    pthread_mutex_unlock(&a->wait_lock);
    return taken;
}

/* Answer waiters with the action's current stored state. */
static void answer_with_stored_state(api_server *a, request *list)
{
    while (list) {
        request *rq = list;
        list = rq->next;
        json_t *rec;
        ar_error err = {0};
        int rc = action_load_by_id(a->journal, rq->action_id, &rec, &err);
        if (rc == AR_OK) {
            api_set_reply_action(rq, rq->done_status, rec);
            json_decref(rec);
        } else {
            api_set_reply_ar_error(rq, rc, &err);
        }
        api_resume(rq);
    }
}

void api_action_changed(void *arg, const json_t *rec)
{
    api_server *a = arg;
    action_state st = action_record_state(rec);
    api_metrics_action(a, rec); /* before any answer: a client that asks next sees it counted */
    if (action_state_settled(st)) {
        request *list = api_waiters_take(a, action_record_str(rec, "id"), 0);
        while (list) {
            request *rq = list;
            list = rq->next;
            api_set_reply_action(rq, rq->done_status, rec);
            api_resume(rq);
        }
    }
    /* Where an action settles is news for an operator; the steps between (ready, dispatched,
     * retry wait) are in its audit trail and, at debug level, here: at thousands of actions a
     * second a line per step is most of what a log would hold. Written after the answers: the
     * write(2) is not on the client's way. */
    ar_log_as(action_state_settled(st) ? "info" : "debug", "api", action_record_str(rec, "id"), "action %s %s/%s %s",
              action_record_str(rec, "id"), action_record_str(rec, "connector"), action_record_str(rec, "action"),
              action_state_name(st));
}

/* Watch a pending approval: it expires at expires_ms (wall clock) unless decided before. */
void api_expiry_add(api_server *a, const char *id, int64_t expires_ms)
{
    expiry *e = calloc(1, sizeof *e);
    if (!e)
        return;
    snprintf(e->id, sizeof e->id, "%s", id);
    e->expires_ms = expires_ms;
    e->at = ar_mono_ms() + (expires_ms - ar_now_ms()) + 1; /* never before the wall clock says */
    pthread_mutex_lock(&a->wait_lock);
    e->next = a->expiries;
    a->expiries = e;
    pthread_cond_signal(&a->wait_cond);
    pthread_mutex_unlock(&a->wait_lock);
}

/* Waiter thread, unlocked: expire what is due (a decision may have come first: then nothing). */
static void expire_due(api_server *a, expiry *due)
{
    while (due) {
        expiry *e = due;
        due = e->next;
        json_t *rec = NULL;
        ar_error err = {0};
        int rc = approvals_expire(a->journal, e->id, &rec, &err);
        if (rc == AR_OK) {
            api_action_changed(a, rec);
            json_decref(rec);
        } else if (rc == AR_E_EXISTS && strcmp(err.code, "not_due") == 0) {
            /* The wall clock lags the monotonic one it was converted to: look again later. */
            api_expiry_add(a, e->id, e->expires_ms);
        } else if (rc != AR_E_EXISTS) {
            ar_log_as("error", "api", e->id, "cannot expire the approval of action %s: %s", e->id, err.message);
        }
        free(e);
    }
}

static void *waiter_main(void *arg)
{
    api_server *a = arg;
    pthread_mutex_lock(&a->wait_lock);
    while (!a->waiter_stopping) {
        if (json_array_size(a->drift_pending) > 0) {
            json_t *detections = a->drift_pending;
            a->drift_pending = json_array();
            pthread_mutex_unlock(&a->wait_lock);
            api_drift_record(a, detections);
            pthread_mutex_lock(&a->wait_lock);
            continue;
        }
        int64_t next = INT64_MAX;
        for (request *rq = a->waiters; rq; rq = rq->next)
            if (rq->wait_until < next)
                next = rq->wait_until;
        for (expiry *e = a->expiries; e; e = e->next)
            if (e->at < next)
                next = e->at;
        if (next == INT64_MAX) {
            a->waiter_wakes_at = INT64_MAX;
            pthread_cond_wait(&a->wait_cond, &a->wait_lock);
            a->waiter_wakes_at = INT64_MIN; /* awake: it looks at the list again before sleeping */
            continue;
        }
        int64_t now = ar_mono_ms();
        if (next > now) {
            a->waiter_wakes_at = next;
            /* wait_cond uses CLOCK_MONOTONIC (see api_new). */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t ns = (int64_t)ts.tv_nsec + (next - now) * 1000000;
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&a->wait_cond, &a->wait_lock, &ts);
            a->waiter_wakes_at = INT64_MIN;
            continue;
        }
        expiry *due = NULL;
        for (expiry **pp = &a->expiries; *pp;) {
            if ((*pp)->at <= now) {
                expiry *e = *pp;
                *pp = e->next;
                e->next = due;
                due = e;
            } else {
                pp = &(*pp)->next;
            }
        }
        pthread_mutex_unlock(&a->wait_lock);
        answer_with_stored_state(a, api_waiters_take(a, NULL, ar_mono_ms()));
        expire_due(a, due);
        pthread_mutex_lock(&a->wait_lock);
    }
    pthread_mutex_unlock(&a->wait_lock);
    return NULL;
}

/* ---- routing ------------------------------------------------------------------------------ */

static void client_address(struct MHD_Connection *conn, char *buf, size_t cap)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(buf, cap, "unknown");
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)cap);
}

/* Establish who calls and whether the route lets them. 1: go on; 0: the reply is set. */
static int authorize(api_server *a, request *rq, const access_route *route, const char *method, const char *url)
{
    if (route->roles == 0)
        return 1;
    char addr[64];
    client_address(rq->conn, addr, sizeof addr);
    int64_t wait = access_limiter_wait_ms(a->limiter, addr, ar_now_ms());
    if (wait > 0) {
        api_set_reply_error(rq, 429, "too_many_auth_failures", "too many failed authentications from %s; "
                        "try again in %lld s", addr, (long long)(wait + 999) / 1000);
        return 0;
    }
    const char *header = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!header || strncasecmp(header, "Bearer ", 7) != 0) {
        api_set_reply_error(rq, 401, "unauthenticated", "%s %s needs a token: send \"Authorization: Bearer "
                        "<token>\" (create one with aioctl token create)", method, url);
        return 0;
    }
    const char *token = header + 7;
    while (*token == ' ')
        token++;
    ar_error err = {0};
    if (auth_verify(a->auth, token, strlen(token), &rq->who, &err) != AR_OK) {
        access_limiter_fail(a->limiter, addr, ar_now_ms());
        metrics_add(a->fam.auth_failures, NULL, 1);
        /* The reason names the token's owner at most, never the token itself. */
        ar_log_as("warn", "api", NULL, "authentication failed from %s for %s %s: %s", addr, method, url, err.message);
        api_set_reply_error(rq, 401, "unauthenticated", "%s", err.message);
        return 0;
    }
    unsigned granted = rq->who.roles & route->roles;
    if (!granted) {
        char need[96], have[96];
        auth_roles_format(route->roles, need, sizeof need);
        auth_roles_format(rq->who.roles, have, sizeof have);
        api_set_reply_error(rq, 403, "forbidden", "token %s has roles %s; %s %s needs one of: %s",
                        rq->who.name, have, method, url, need);
        return 0;
    }
    rq->own_only = route->own_only && granted == AUTH_ROLE_SUBMITTER;
    return 1;
}

static enum MHD_Result dispatch(api_server *a, request *rq, route_id id, const char *param);

static enum MHD_Result route(api_server *a, request *rq, const char *method, const char *url)
{
    const access_route *r;
    char param[128], allowed[64];
    int rc = access_match(method, url, &r, param, sizeof param, allowed, sizeof allowed);
    if (rc == AR_E_NOTFOUND) {
        api_set_reply_error(rq, 404, "unknown_route", "no route %s %s (see the README's API section)", method, url);
        return api_queue_reply(rq);
    }
    if (rc == AR_E_INVALID) {
        api_set_reply_error(rq, 405, "method_not_allowed", "%s is not allowed on %s (use %s)", method, url, allowed);
        return api_queue_reply(rq);
    }
    if (!authorize(a, rq, r, method, url))
        return api_queue_reply(rq);
    if (rq->too_large) {
        api_set_reply_error(rq, 413, "body_too_large", "request body exceeds max_body_bytes (%zu bytes)",
                        a->cfg->max_body_bytes);
        return api_queue_reply(rq);
    }
    /* The scheduler stays alive while a route uses it (api_detach_scheduler waits). */
    pthread_rwlock_rdlock(&a->sched_lock);
    enum MHD_Result res = dispatch(a, rq, r->id, param);
    pthread_rwlock_unlock(&a->sched_lock);
    return res;
}

static enum MHD_Result dispatch(api_server *a, request *rq, route_id id, const char *param)
{
    switch (id) {
    case ROUTE_HEALTHZ: api_set_reply_json(rq, 200, json_pack("{s:s}", "status", "ok")); break;
    case ROUTE_WHOAMI: api_route_whoami(rq); break;
    case ROUTE_SUBMIT: return api_route_submit(a, rq);
    case ROUTE_LIST_ACTIONS: api_route_list_actions(a, rq); break;
    case ROUTE_GET_ACTION: api_route_get_action(a, rq, param); break;
    case ROUTE_CANCEL: return api_route_cancel(a, rq, param);
    case ROUTE_RESOLVE: api_route_resolve(a, rq, param); break;
    case ROUTE_CONNECTORS: api_route_connectors(a, rq); break;
    case ROUTE_PAUSE: return api_route_pause(a, rq, param, 1);
    case ROUTE_RESUME: return api_route_pause(a, rq, param, 0);
    case ROUTE_LIST_APPROVALS: api_route_list_approvals(a, rq); break;
    case ROUTE_GET_APPROVAL: api_route_get_approval(a, rq, param); break;
    case ROUTE_DECIDE_APPROVAL: api_route_decide_approval(a, rq, param); break;
    case ROUTE_GET_POLICIES: api_set_reply_json(rq, 200, api_policies_view(a)); break;
    case ROUTE_RELOAD_POLICIES: api_route_reload_policies(a, rq); break;
    case ROUTE_GET_AUTONOMY: api_set_reply_json(rq, 200, autonomy_view(a->autonomy)); break;
    case ROUTE_SET_AUTONOMY: api_route_set_autonomy(a, rq); break;
    case ROUTE_LIST_TOKENS: api_route_list_tokens(a, rq); break;
    case ROUTE_CREATE_TOKEN: api_route_create_token(a, rq); break;
    case ROUTE_REVOKE_TOKEN: api_route_revoke_token(a, rq, param); break;
    case ROUTE_LIST_SECRETS: api_route_list_secrets(a, rq); break;
    case ROUTE_SET_SECRET: api_route_set_secret(a, rq, param); break;
    case ROUTE_REMOVE_SECRET: api_route_remove_secret(a, rq, param); break;
    case ROUTE_ROTATE_VAULT: api_route_rotate_vault(a, rq); break;
    case ROUTE_ACTION_AUDIT: api_route_action_audit(a, rq, param); break;
    case ROUTE_AUDIT_STREAM: api_route_audit_stream(a, rq); break;
    case ROUTE_AUDIT_VERIFY: api_route_audit_verify(a, rq); break;
    case ROUTE_AUDIT_HEAD: api_route_audit_head(a, rq); break;
    case ROUTE_METRICS: api_route_metrics(a, rq); break;
    case ROUTE_STATS: api_route_stats(a, rq); break;
    case ROUTE_COUNT: break;
    }
    return api_queue_reply(rq);
}

/* ---- libmicrohttpd glue ------------------------------------------------------------------- */

static int append_body(request *rq, size_t max, const char *data, size_t n)
{
    if (rq->too_large || rq->body_len + n > max) {
        rq->too_large = 1;
        return 0;
    }
    if (rq->body_len + n + 1 > rq->body_cap) {
        size_t cap = rq->body_cap ? rq->body_cap : 4096;
        while (cap < rq->body_len + n + 1)
            cap *= 2;
        char *b = realloc(rq->body, cap);
        if (!b)
            return -1;
        rq->body = b;
        rq->body_cap = cap;
    }
    memcpy(rq->body + rq->body_len, data, n);
    rq->body_len += n;
    rq->body[rq->body_len] = '\0';
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    api_server *a = cls;
    request *rq = *con_cls;
    if (!rq) {
        rq = calloc(1, sizeof *rq);
        if (!rq)
            return MHD_NO;
        rq->api = a;
        rq->conn = conn;
        *con_cls = rq;
        /* Refuse an announced oversized body before reading a byte of it. */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > a->cfg->max_body_bytes) {
            rq->too_large = 1;
            api_set_reply_error(rq, 413, "body_too_large", "request body exceeds max_body_bytes (%zu bytes)",
                            a->cfg->max_body_bytes);
            return api_queue_reply(rq);
        }
        return MHD_YES;
    }
    if (rq->reply && !rq->suspended) /* resumed with an answer, or answered early */
        return api_queue_reply(rq);
    if (*upload_data_size) {
        if (append_body(rq, a->cfg->max_body_bytes, upload_data, *upload_data_size) < 0)
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    return route(a, rq, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    request *rq = *con_cls;
    if (!rq)
        return;
    if (rq->body) /* it may have carried a secret (PUT /v1/secrets/...) */
        sodium_memzero(rq->body, rq->body_cap);
    free(rq->body);
    free(rq->reply);
    json_decref(rq->submission);
    json_decref(rq->descriptor);
    free(rq);
    *con_cls = NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

int api_new(const config *cfg, journal *j, auth *au, autonomy *aut, policy_set *policies,
            api_server **out, ar_error *err)
{
    api_server *a = calloc(1, sizeof *a);
    if (!a)
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    a->cfg = cfg;
    a->journal = j;
    a->auth = au;
    a->autonomy = aut;
    pthread_mutex_init(&a->policy_lock, NULL);
    pthread_mutex_init(&a->reload_lock, NULL);
    pthread_rwlock_init(&a->sched_lock, NULL);
    a->validate_gen = UINT64_MAX;
    a->policy_sets[0] = policies;
    a->n_sets = 1;
    a->policies_loaded_ms = ar_now_ms();
    pthread_mutex_init(&a->work_lock, NULL);
    pthread_cond_init(&a->work_cond, NULL);
    pthread_mutex_init(&a->wait_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->wait_cond, &ca);
    pthread_condattr_destroy(&ca);

    if (!(a->limiter = access_limiter_new(AUTH_MAX_FAILURES, AUTH_WINDOW_MS)) || api_metrics_init(a, NULL) != AR_OK)
        goto nomem;
    a->workers = calloc((size_t)cfg->decision_workers, sizeof *a->workers);
    if (!a->workers)
        goto nomem;
    for (int i = 0; i < cfg->decision_workers; i++) {
        if (pthread_create(&a->workers[i], NULL, api_worker_main, a) != 0)
            goto nomem;
        a->n_workers++;
    }
    if (pthread_create(&a->waiter_thread, NULL, waiter_main, a) != 0)
        goto nomem;
    a->waiter_started = 1;
    *out = a;
    return AR_OK;
nomem:
    api_free(a);
    return ar_error_set(err, AR_E_NOMEM, "internal", "cannot start the API's threads");
}

void api_set_scheduler(api_server *a, scheduler *s) { a->sched = s; }

void api_detach_scheduler(api_server *a)
{
    pthread_rwlock_wrlock(&a->sched_lock);
    a->sched = NULL;
    pthread_rwlock_unlock(&a->sched_lock);
}
void api_set_counters(api_server *a, counters *c) { a->counters = c; }
void api_set_vault(api_server *a, vault *v) { a->vault = v; }

int api_port(const api_server *a) { return a->port; }

static int resolve_listen(const config *cfg, struct sockaddr_storage *ss, int *ipv6, ar_error *err)
{
    memset(ss, 0, sizeof *ss);
    const char *host = strcmp(cfg->listen_host, "localhost") == 0 ? "127.0.0.1" : cfg->listen_host;
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)cfg->listen_port);
        *ipv6 = 0;
        return AR_OK;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)cfg->listen_port);
        *ipv6 = 1;
        return AR_OK;
    }
    return ar_error_set(err, AR_E_INVALID, "invalid_config", "listen: cannot parse address \"%s\"", host);
}

/* Read a whole PEM file into a NUL-terminated malloc'd buffer. */
static int read_pem(const char *what, const char *path, char **out, ar_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ar_error_set(err, AR_E_IO, "tls", "tls.%s: cannot open %s: %s", what, path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[4096];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(f);
                return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
            }
            buf = b;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (!buf || !strstr(buf, "-----BEGIN ")) {
        free(buf);
        return ar_error_set(err, AR_E_INVALID, "tls", "tls.%s: %s is not a PEM file", what, path);
    }
    buf[len] = '\0';
    *out = buf;
    return AR_OK;
}

int api_listen(api_server *a, ar_error *err)
{
    struct sockaddr_storage ss;
    int ipv6;
    int rc = resolve_listen(a->cfg, &ss, &ipv6, err);
    if (rc != AR_OK)
        return rc;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     (ipv6 ? MHD_USE_IPv6 : 0);
    struct MHD_OptionItem tls[3] = {{MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}};
    if (a->cfg->tls_cert) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
            return ar_error_set(err, AR_E_INVALID, "tls", "this libmicrohttpd was built without TLS support; "
                                "remove \"tls\" from the config or install a build with GnuTLS");
        if ((rc = read_pem("cert", a->cfg->tls_cert, &a->tls_cert, err)) != AR_OK ||
            (rc = read_pem("key", a->cfg->tls_key, &a->tls_key, err)) != AR_OK)
            return rc;
        flags |= MHD_USE_TLS;
        tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, a->tls_cert};
        tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, a->tls_key};
    }
    a->mhd = MHD_start_daemon(flags, (uint16_t)a->cfg->listen_port, NULL, NULL, on_request, a,
                              MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                              MHD_OPTION_THREAD_POOL_SIZE, (unsigned)2,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)API_CONNECTION_MEMORY,
                              MHD_OPTION_ARRAY, tls,
                              MHD_OPTION_END);
    if (!a->mhd)
        return ar_error_set(err, AR_E_IO, "listen_failed", "cannot listen on %s:%d%s (%s): is another daemon "
                            "running there? change \"listen\" in the config", a->cfg->listen_host,
                            a->cfg->listen_port, a->cfg->tls_cert ? " with TLS (check tls.cert and tls.key)" : "",
                            strerror(errno));
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_BIND_PORT);
    a->port = info ? info->port : a->cfg->listen_port;
    return AR_OK;
}

void api_stop_intake(api_server *a)
{
    /* Each worker finishes the submission it holds and the ones queued before it. */
    pthread_mutex_lock(&a->work_lock);
    a->workers_stopping = 1;
    pthread_cond_broadcast(&a->work_cond);
    pthread_mutex_unlock(&a->work_lock);
    for (int i = 0; i < a->n_workers; i++)
        pthread_join(a->workers[i], NULL);
    a->n_workers = 0;
}

void api_free(api_server *a)
{
    if (!a)
        return;
    api_stop_intake(a);
    free(a->workers);
    /* Then everyone still waiting gets the state their action has now. */
    if (a->waiter_started) {
        pthread_mutex_lock(&a->wait_lock);
        a->waiter_stopping = 1;
        pthread_cond_broadcast(&a->wait_cond);
        pthread_mutex_unlock(&a->wait_lock);
        pthread_join(a->waiter_thread, NULL);
    }
    answer_with_stored_state(a, api_waiters_take(a, NULL, INT64_MAX));
    for (expiry *e = a->expiries, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    if (a->mhd)
        MHD_stop_daemon(a->mhd);
    access_limiter_free(a->limiter);
    for (size_t i = 0; i < a->n_sets; i++)
        policy_set_free(a->policy_sets[i]);
    pthread_mutex_destroy(&a->policy_lock);
    pthread_mutex_destroy(&a->reload_lock);
    pthread_rwlock_destroy(&a->sched_lock);
    metrics_free(a->metrics);
    drift_free(a->drift);
    json_decref(a->drift_pending);
    policy_worker_free(a->validate_worker);
    free(a->tls_cert);
    if (a->tls_key)
        sodium_memzero(a->tls_key, strlen(a->tls_key));
    free(a->tls_key);
    pthread_mutex_destroy(&a->work_lock);
    pthread_cond_destroy(&a->work_cond);
    pthread_mutex_destroy(&a->wait_lock);
    pthread_cond_destroy(&a->wait_cond);
    free(a);
}
