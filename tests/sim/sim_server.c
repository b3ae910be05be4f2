/* sim_server.c - the HTTP side of the API simulator (see sim_server.h). */
#include "sim_server.h"
#include "sim_faults.h"
#include "sim_ledger.h"
#include "sim_store.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Larger bodies are refused with 413: the simulator stands in for ordinary JSON APIs. */
#define MAX_BODY (1024 * 1024)
/* A delay sleeps in slices this long so that stopping the server cuts it short. */
#define PAUSE_SLICE_MS 20

struct sim_server {
    struct MHD_Daemon *mhd;
    pthread_mutex_t mu;          /* guards store, ledger, faults, generation */
    sim_store *store;
    sim_ledger *ledger;
    sim_faults *faults;
    unsigned long generation;    /* bumped by /_sim/reset: results of older requests are not kept */
    atomic_bool stopping;
    bool quiet;
    int port;
};

/* One HTTP request while its body arrives. */
typedef struct request {
    char *body;
    size_t len, cap;
    bool too_big;
    int64_t at_ms;
} request;

/* What to answer. */
typedef struct reply {
    int status;
    char *text;             /* JSON, owned */
    char retry_after[64];   /* "" when none */
    char allow[64];         /* "" when none */
    bool replayed;
} reply;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Takes the reference to body. */
static void reply_json(reply *r, int status, json_t *body)
{
    free(r->text);
    r->text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    r->status = status;
    json_decref(body);
    if (!r->text) {
        r->text = strdup("{\"error\":\"internal\",\"message\":\"out of memory\"}");
        r->status = 500;
    }
}

static void reply_error(reply *r, int status, const char *code, const char *message)
{
    reply_json(r, status, message ? json_pack("{s:s, s:s}", "error", code, "message", message)
                                  : json_pack("{s:s}", "error", code));
}

static enum MHD_Result send_reply(struct MHD_Connection *conn, const reply *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(r->text), r->text,
                                                                MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (r->retry_after[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, r->retry_after);
    if (r->allow[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (r->replayed)
        MHD_add_response_header(resp, "Idempotent-Replayed", "true");
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* A body that stops halfway through its declared Content-Length. */
typedef struct cut_body {
    char *text;
    size_t limit;
} cut_body;

static ssize_t cut_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    cut_body *cb = cls;
    if (pos >= cb->limit)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = cb->limit - (size_t)pos < max ? cb->limit - (size_t)pos : max;
    memcpy(buf, cb->text + pos, n);
    return (ssize_t)n;
}

static void cut_free(void *cls)
{
    cut_body *cb = cls;
    free(cb->text);
    free(cb);
}

static enum MHD_Result send_truncated(struct MHD_Connection *conn, const reply *r)
{
    size_t len = strlen(r->text);
    cut_body *cb = calloc(1, sizeof *cb);
    if (!cb || !(cb->text = strdup(r->text))) {
        free(cb);
        return MHD_NO;
    }
    cb->limit = len / 2;
    struct MHD_Response *resp = MHD_create_response_from_callback(len, 4096, cut_reader, cb,
                                                                  cut_free);
    if (!resp) {
        cut_free(cb);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* Close without answering: returning MHD_NO makes libmicrohttpd close the connection (the client
 * sees an empty reply, curl error 52); SO_LINGER 0 turns the close into a TCP reset for any bytes
 * still in flight, as when a server or a middlebox dies mid-request. */
static enum MHD_Result drop_connection(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    return MHD_NO;
}

static void pause_ms(sim_server *srv, int ms)
{
    while (ms > 0 && !atomic_load(&srv->stopping)) {
        int slice = ms < PAUSE_SLICE_MS ? ms : PAUSE_SLICE_MS;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
        nanosleep(&ts, NULL);
        ms -= slice;
    }
}

static void log_line(const sim_server *srv, const char *method, const char *path, const char *key,
                     const char *outcome, const char *fault, bool replayed)
{
    if (!srv->quiet)
        fprintf(stderr, "%s %s key=%s -> %s (fault %s)%s\n", method, path, key, outcome, fault,
                replayed ? " replayed" : "");
}

/* The answer of a "status" or "retry_after" fault: the request was not processed. */
static void fault_reply(reply *r, const sim_fault *f)
{
    if (f->kind == SIM_FAULT_RETRY_AFTER) {
        reply_json(r, 429, json_pack("{s:s, s:b}", "error", "rate_limited", "processed", 0));
        if (f->http_date) {
            /* the first whole second at or after now + seconds, so waiting until the date
               never waits less than asked */
            int64_t at = now_ms() + (int64_t)f->seconds * 1000;
            time_t when = (time_t)((at + 999) / 1000);
            struct tm tm;
            gmtime_r(&when, &tm);
            strftime(r->retry_after, sizeof r->retry_after, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        } else {
            snprintf(r->retry_after, sizeof r->retry_after, "%d", f->seconds);
        }
        return;
    }
    const char *code = f->status == 503 ? "unavailable"
                     : f->status == 502 ? "bad_gateway"
                     : f->status == 504 ? "gateway_timeout"
                     : f->status == 429 ? "rate_limited"
                     : f->status >= 500 ? "internal" : "injected";
    reply_json(r, f->status, json_pack("{s:s, s:b}", "error", code, "processed", 0));
    if (f->seconds >= 0)
        snprintf(r->retry_after, sizeof r->retry_after, "%d", f->seconds);
}

/* ---- the fake API ---- */

static enum MHD_Result serve_resource(sim_server *srv, struct MHD_Connection *conn, request *rq,
                                      const char *method, const char *path)
{
    const char *header = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key");
    bool keyed = header && *header && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0;
    const char *key = keyed ? header : "-";
    reply r = {0};
    sim_fault fault;
    bool decided = false, registered = false;
    char allow[64];

    pthread_mutex_lock(&srv->mu);
    unsigned long generation = srv->generation;
    sim_faults_take(srv->faults, method, path, &fault);
    json_t *entry = sim_ledger_note_request(srv->ledger, method, path, key,
                                            sim_fault_name(fault.kind), rq->at_ms);
    sim_route_result route = sim_store_route(method, path, allow, sizeof allow);
    bool before_execution = fault.kind == SIM_FAULT_STATUS || fault.kind == SIM_FAULT_RETRY_AFTER ||
                            fault.kind == SIM_FAULT_RESET_BEFORE ||
                            (fault.kind == SIM_FAULT_CRASH && !fault.apply);
    if (!before_execution && rq->too_big) {
        reply_error(&r, 413, "too_large", "the body is larger than 1 MiB");
        decided = true;
    } else if (!before_execution && route == SIM_ROUTE_FOUND && keyed) {
        int status = 0;
        char *text = NULL;
        switch (sim_ledger_idem_begin(srv->ledger, method, path, key, rq->body, rq->len, &status,
                                      &text)) {
        case SIM_IDEM_NEW:
            registered = true;
            break;
        case SIM_IDEM_REPLAY:
            r.status = status;
            r.text = text;
            r.replayed = true;
            decided = true;
            break;
        case SIM_IDEM_REUSE:
            reply_error(&r, 422, "idempotency_key_reuse",
                        "this Idempotency-Key was used with another request body");
            decided = true;
            break;
        case SIM_IDEM_BUSY:
            reply_error(&r, 409, "idempotency_in_progress",
                        "a request with this Idempotency-Key is being processed");
            decided = true;
            break;
        case SIM_IDEM_ERROR:
            reply_error(&r, 500, "internal", "out of memory");
            decided = true;
            break;
        }
    }
    pthread_mutex_unlock(&srv->mu);

    const char *fault_name = sim_fault_name(fault.kind);
    enum MHD_Result result;
    bool answered = true;
    switch (fault.kind) {
    case SIM_FAULT_STATUS:
    case SIM_FAULT_RETRY_AFTER:
        fault_reply(&r, &fault);
        decided = true;
        break;
    case SIM_FAULT_RESET_BEFORE:
        log_line(srv, method, path, key, "reset", fault_name, false);
        result = drop_connection(conn);
        answered = false;
        goto done;
    case SIM_FAULT_CRASH:
        if (!fault.apply) {
            log_line(srv, method, path, key, "crash", fault_name, false);
            _exit(3);
        }
        break;
    case SIM_FAULT_DELAY:
        if (!fault.apply)
            pause_ms(srv, fault.delay_ms);
        break;
    default:
        break;
    }

    if (!decided) {
        pthread_mutex_lock(&srv->mu);
        if (route == SIM_ROUTE_FOUND) {
            json_t *body = NULL;
            int effect = 0;
            int status = sim_store_handle(srv->store, method, path, rq->body, rq->len, &body,
                                          &effect);
            reply_json(&r, status, body);
            if (effect)
                sim_ledger_effect(srv->ledger, key);
            if (registered && generation == srv->generation) {
                /* like Stripe: a request refused by validation is not remembered, so the
                   client may fix the body and retry with the same key */
                if (r.status == 400 || r.status == 422)
                    sim_ledger_idem_abandon(srv->ledger, method, path, key);
                else
                    sim_ledger_idem_finish(srv->ledger, method, path, key, r.status, r.text,
                                           effect);
            }
        } else if (route == SIM_ROUTE_BAD_METHOD) {
            reply_error(&r, 405, "method_not_allowed", NULL);
            snprintf(r.allow, sizeof r.allow, "%s", allow);
        } else {
            reply_error(&r, 404, "not_found", "no such route");
        }
        pthread_mutex_unlock(&srv->mu);
    }

    if (fault.kind == SIM_FAULT_DELAY && fault.apply)
        pause_ms(srv, fault.delay_ms);

    char outcome[32];
    snprintf(outcome, sizeof outcome, "%d", r.status);
    switch (fault.kind) {
    case SIM_FAULT_CRASH:
        log_line(srv, method, path, key, "crash", fault_name, r.replayed);
        _exit(3);
    case SIM_FAULT_RESET_AFTER:
        log_line(srv, method, path, key, "reset", fault_name, r.replayed);
        result = drop_connection(conn);
        answered = false;
        break;
    case SIM_FAULT_TRUNCATE:
        log_line(srv, method, path, key, "truncated", fault_name, r.replayed);
        result = send_truncated(conn, &r);
        break;
    default:
        log_line(srv, method, path, key, outcome, fault_name, r.replayed);
        result = send_reply(conn, &r);
        break;
    }

done:
    pthread_mutex_lock(&srv->mu);
    sim_ledger_note_status(entry, answered ? r.status : 0, r.replayed);
    json_decref(entry);
    pthread_mutex_unlock(&srv->mu);
    free(r.text);
    return result;
}

/* ---- /_sim control routes ---- */

static void control_faults(sim_server *srv, const char *method, const request *rq, reply *r)
{
    if (strcmp(method, "GET") == 0) {
        reply_json(r, 200, sim_faults_list(srv->faults));
    } else if (strcmp(method, "DELETE") == 0) {
        size_t n = sim_faults_clear(srv->faults);
        reply_json(r, 200, json_pack("{s:I}", "cleared", (json_int_t)n));
    } else {
        json_t *spec = json_loadb(rq->body ? rq->body : "", rq->len, 0, NULL);
        json_t *created = NULL;
        char err[160];
        if (!spec)
            reply_error(r, 400, "invalid_json", NULL);
        else if (sim_faults_add(srv->faults, spec, &created, err, sizeof err) != 0)
            reply_error(r, 422, "invalid", err);
        else
            reply_json(r, 201, created);
        json_decref(spec);
    }
}

/* Runs with the mutex held. */
static void control(sim_server *srv, struct MHD_Connection *conn, const request *rq,
                    const char *method, const char *path, reply *r)
{
    const char *sub = path + strlen("/_sim");
    const char *allow = "GET"; /* the method the matched route takes */
    bool get = strcmp(method, "GET") == 0;
    if (strcmp(sub, "/health") == 0) {
        if (get)
            reply_json(r, 200, json_pack("{s:b}", "ok", 1));
    } else if (strcmp(sub, "/effects") == 0) {
        if (get)
            reply_json(r, 200, sim_ledger_effects_json(srv->ledger,
                MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "key")));
    } else if (strcmp(sub, "/requests") == 0) {
        if (get)
            reply_json(r, 200, sim_ledger_requests_json(srv->ledger));
    } else if (strcmp(sub, "/log") == 0) {
        if (get)
            reply_json(r, 200, sim_ledger_log_json(srv->ledger,
                MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "route")));
    } else if (strncmp(sub, "/by-key/", 8) == 0 && sub[8]) {
        json_t *found = get ? sim_ledger_by_key_json(srv->ledger, sub + 8) : NULL;
        if (found)
            reply_json(r, 200, found);
        else if (get)
            reply_error(r, 404, "not_found", "no effect was made with this key");
    } else if (strcmp(sub, "/reset") == 0) {
        allow = "POST";
        if (strcmp(method, "POST") == 0) {
            sim_store_reset(srv->store);
            sim_ledger_reset(srv->ledger);
            sim_faults_clear(srv->faults);
            srv->generation++;
            reply_json(r, 200, json_pack("{s:b}", "reset", 1));
        }
    } else if (strcmp(sub, "/faults") == 0) {
        allow = "GET, POST, DELETE";
        if (get || strcmp(method, "POST") == 0 || strcmp(method, "DELETE") == 0)
            control_faults(srv, method, rq, r);
    } else if (strncmp(sub, "/faults/", 8) == 0 && sub[8]) {
        allow = "DELETE";
        if (strcmp(method, "DELETE") == 0 && sim_faults_remove(srv->faults, sub + 8))
            reply_json(r, 200, json_pack("{s:s}", "deleted", sub + 8));
        else if (strcmp(method, "DELETE") == 0)
            reply_error(r, 404, "not_found", "no such fault");
    } else {
        reply_error(r, 404, "not_found", "no such route");
    }
    if (!r->text) {
        reply_error(r, 405, "method_not_allowed", NULL);
        snprintf(r->allow, sizeof r->allow, "%s", allow);
    }
}

static enum MHD_Result serve_control(sim_server *srv, struct MHD_Connection *conn, request *rq,
                                     const char *method, const char *path)
{
    reply r = {0};
    pthread_mutex_lock(&srv->mu);
    if (rq->too_big)
        reply_error(&r, 413, "too_large", "the body is larger than 1 MiB");
    else
        control(srv, conn, rq, method, path, &r);
    pthread_mutex_unlock(&srv->mu);
    char outcome[16];
    snprintf(outcome, sizeof outcome, "%d", r.status);
    log_line(srv, method, path, "-", outcome, "none", false);
    enum MHD_Result ok = send_reply(conn, &r);
    free(r.text);
    return ok;
}

/* ---- libmicrohttpd glue ---- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    sim_server *srv = cls;
    request *rq = *con_cls;
    if (!rq) {
        if (!(rq = calloc(1, sizeof *rq)))
            return MHD_NO;
        rq->at_ms = now_ms();
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (rq->too_big || rq->len + n > MAX_BODY) {
            rq->too_big = true;
            return MHD_YES;
        }
        if (rq->len + n > rq->cap) {
            size_t cap = rq->cap ? rq->cap : 1024;
            while (cap < rq->len + n)
                cap *= 2;
            char *grown = realloc(rq->body, cap);
            if (!grown)
                return MHD_NO;
            rq->body = grown;
            rq->cap = cap;
        }
        memcpy(rq->body + rq->len, upload_data, n);
        rq->len += n;
        return MHD_YES;
    }
    if (strcmp(url, "/_sim") == 0 || strncmp(url, "/_sim/", 6) == 0)
        return serve_control(srv, conn, rq, method, url);
    return serve_resource(srv, conn, rq, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    request *rq = *con_cls;
    if (rq) {
        free(rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

sim_server *sim_server_start(const sim_server_opts *opts, char *err, size_t cap)
{
    sim_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&srv->mu, NULL);
    atomic_init(&srv->stopping, false);
    srv->quiet = opts->quiet;
    srv->store = sim_store_new();
    srv->ledger = sim_ledger_new();
    srv->faults = sim_faults_new();
    if (!srv->store || !srv->ledger || !srv->faults) {
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opts->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    srv->mhd = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                    MHD_USE_POLL,
                                (uint16_t)opts->port, NULL, NULL, on_request, srv,
                                MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
                                MHD_OPTION_END);
    if (!srv->mhd) {
        snprintf(err, cap, "cannot listen on 127.0.0.1:%d", opts->port);
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : opts->port;
    return srv;
fail:
    sim_server_stop(srv);
    return NULL;
}

int sim_server_port(const sim_server *srv)
{
    return srv->port;
}

void sim_server_stop(sim_server *srv)
{
    if (!srv)
        return;
    atomic_store(&srv->stopping, true);
    if (srv->mhd)
        MHD_stop_daemon(srv->mhd);
    sim_store_free(srv->store);
    sim_ledger_free(srv->ledger);
    sim_faults_free(srv->faults);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
}
