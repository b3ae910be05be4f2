/* api.c - HTTP API, decision workers and waiting requests (see api.h). */
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "action.h"
#include "approvals.h"
#include "auth.h"
#include "autonomy.h"
#include "schema.h"

#define MAX_WAIT_MS 60000
#define MAX_KEY_LEN 256
#define MAX_LIST_LIMIT 500
/* Failed authentications allowed per client address and minute before it must wait. */
#define AUTH_MAX_FAILURES 60
#define AUTH_WINDOW_MS 60000

/* One HTTP request, from its first byte until libmicrohttpd reports it completed. While the
 * connection is suspended, exactly one other thread (a worker or the waiter thread) owns the
 * right to fill `reply` and resume it. */
typedef struct request {
    api_server *api;
    struct MHD_Connection *conn;
    char *body;
    size_t body_len, body_cap;
    int too_large;
    int suspended;
    auth_identity who;           /* the caller, once authenticated */
    int own_only;                /* sees only the actions it submitted */
    /* the answer, set before resuming */
    unsigned reply_status;
    char *reply;                 /* JSON text, malloc'd */
    int retry_after_s;           /* > 0: sent as Retry-After */
    /* submission state (POST /v1/actions) */
    json_t *submission;          /* the parsed, validated body */
    json_t *descriptor_action;   /* the plugin's action entry (borrowed from descriptor) */
    json_t *descriptor;          /* owned reference keeping descriptor_action alive */
    int wait_ms;
    unsigned done_status;        /* 200 or 201: what to answer once the action settles */
    char action_id[ACTION_ID_LEN + 1];
    char target[80];             /* the connector a pause/resume names */
    int64_t wait_until;          /* monotonic ms */
    struct request *next;        /* in the work queue or the waiter list */
} request;

/* A pending approval to expire at `at` (monotonic ms). */
typedef struct expiry {
    char id[ACTION_ID_LEN + 1];
    int64_t at;
    struct expiry *next;
} expiry;

struct api_server {
    const config *cfg;
    journal *journal;
    auth *auth;
    autonomy *autonomy;
    access_limiter *limiter;
    /* the policy set: replaced whole by a reload; workers notice the generation and rebuild
     * their Lua state. Retired sets stay allocated until api_free, so a worker deciding with
     * one never sees it freed. */
    pthread_mutex_t policy_lock;
    policy_set *policy_sets[64];   /* [0..n_sets): every set loaded; the last is current */
    size_t n_sets;
    uint64_t policy_gen;
    int64_t policies_loaded_ms;
    scheduler *sched;
    struct MHD_Daemon *mhd;
    int port;
    char *tls_cert, *tls_key;    /* PEM text while serving HTTPS; the key is wiped at the end */

    /* decision workers */
    pthread_mutex_t work_lock;
    pthread_cond_t work_cond;
    request *work_head, *work_tail;
    int workers_stopping;
    pthread_t *workers;
    int n_workers;

    /* requests waiting for an action to settle */
    pthread_mutex_t wait_lock;
    pthread_cond_t wait_cond;
    request *waiters;
    struct expiry *expiries;     /* pending approvals, by when they expire */
    int waiter_stopping;
    pthread_t waiter_thread;
    int waiter_started;
};

/* ---- replies ---------------------------------------------------------------------------- */

static void set_reply_json(request *rq, unsigned status, json_t *doc /* takes */)
{
    free(rq->reply);
    rq->reply = json_dumps(doc, JSON_COMPACT);
    rq->reply_status = rq->reply ? status : MHD_HTTP_INTERNAL_SERVER_ERROR;
    json_decref(doc);
}

static void set_reply_error(request *rq, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_reply_error(request *rq, unsigned status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    set_reply_json(rq, status, json_pack("{s:s, s:s}", "error", code, "message", msg));
}

static unsigned status_for_error(int rc)
{
    switch (rc) {
    case AR_E_FULL: return MHD_HTTP_SERVICE_UNAVAILABLE;
    case AR_E_NOTFOUND: return MHD_HTTP_NOT_FOUND;
    case AR_E_INVALID: return MHD_HTTP_BAD_REQUEST;
    default: return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

static void set_reply_ar_error(request *rq, int rc, const ar_error *err)
{
    set_reply_error(rq, status_for_error(rc), err->code[0] ? err->code : "internal", "%s",
                    err->message[0] ? err->message : "internal error");
}

static void set_reply_action(request *rq, unsigned status, const json_t *rec)
{
    set_reply_json(rq, status, action_render(rec));
}

static enum MHD_Result queue_reply(request *rq)
{
    const char *text = rq->reply ? rq->reply : "{\"error\":\"internal\",\"message\":\"no reply\"}";
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), (void *)text,
                                                                MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
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
static void resume(request *rq)
{
    rq->suspended = 0;
    MHD_resume_connection(rq->conn);
}

/* ---- waiting for an action to settle ------------------------------------------------------ */

static void waiter_add(api_server *a, request *rq)
{
    pthread_mutex_lock(&a->wait_lock);
    rq->next = a->waiters;
    a->waiters = rq;
    pthread_cond_signal(&a->wait_cond);
    pthread_mutex_unlock(&a->wait_lock);
}

/* Remove and return the waiters for id (all of them when id is NULL) as a list. */
static request *waiters_take(api_server *a, const char *id, int64_t expired_before)
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
            set_reply_action(rq, rq->done_status, rec);
            json_decref(rec);
        } else {
            set_reply_ar_error(rq, rc, &err);
        }
        resume(rq);
    }
}

void api_action_changed(void *arg, const json_t *rec)
{
    api_server *a = arg;
    action_state st = action_record_state(rec);
    ar_log("info", "action %s %s/%s %s", action_record_str(rec, "id"),
           action_record_str(rec, "connector"), action_record_str(rec, "action"),
           action_state_name(st));
    if (!action_state_settled(st))
        return;
    request *list = waiters_take(a, action_record_str(rec, "id"), 0);
    while (list) {
        request *rq = list;
        list = rq->next;
        set_reply_action(rq, rq->done_status, rec);
        resume(rq);
    }
}

/* Watch a pending approval: it expires at expires_ms (wall clock) unless decided before. */
static void expiry_add(api_server *a, const char *id, int64_t expires_ms)
{
    expiry *e = calloc(1, sizeof *e);
    if (!e)
        return;
    snprintf(e->id, sizeof e->id, "%s", id);
    e->at = ar_mono_ms() + (expires_ms - ar_now_ms());
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
        if (approvals_expire(a->journal, e->id, &rec, NULL) == AR_OK) {
            api_action_changed(a, rec);
            json_decref(rec);
        }
        free(e);
    }
}

static void *waiter_main(void *arg)
{
    api_server *a = arg;
    pthread_mutex_lock(&a->wait_lock);
    while (!a->waiter_stopping) {
        int64_t next = INT64_MAX;
        for (request *rq = a->waiters; rq; rq = rq->next)
            if (rq->wait_until < next)
                next = rq->wait_until;
        for (expiry *e = a->expiries; e; e = e->next)
            if (e->at < next)
                next = e->at;
        if (next == INT64_MAX) {
            pthread_cond_wait(&a->wait_cond, &a->wait_lock);
            continue;
        }
        int64_t now = ar_mono_ms();
        if (next > now) {
            /* wait_cond uses CLOCK_MONOTONIC (see api_new). */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t ns = (int64_t)ts.tv_nsec + (next - now) * 1000000;
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&a->wait_cond, &a->wait_lock, &ts);
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
        answer_with_stored_state(a, waiters_take(a, NULL, ar_mono_ms()));
        expire_due(a, due);
        pthread_mutex_lock(&a->wait_lock);
    }
    pthread_mutex_unlock(&a->wait_lock);
    return NULL;
}

/* ---- submissions: the decision worker's side ---------------------------------------------- */

static json_t *policy_view(const request *rq)
{
    const json_t *s = rq->submission;
    json_t *view = json_pack("{s:O, s:O, s:O, s:O, s:O}",
                             "connector", json_object_get(s, "connector"),
                             "action", json_object_get(s, "action"),
                             "effect", json_object_get(rq->descriptor_action, "effect"),
                             "input", json_object_get(s, "input"),
                             "priority", json_object_get(s, "priority"));
    json_t *proposer = json_object_get(s, "proposer");
    if (view) {
        json_object_set_new(view, "proposer", proposer ? json_incref(proposer) : json_object());
        json_object_set_new(view, "submitter", json_string(rq->who.name));
        json_object_set_new(view, "autonomy", json_string(autonomy_level(rq->api->autonomy,
            json_string_value(json_object_get(s, "connector")), json_string_value(json_object_get(s, "action")))));
    }
    return view;
}

static json_t *new_record(const request *rq, const policy_decision *d, const policy_set *ps,
                          const unsigned char digest[ACTION_DIGEST_LEN])
{
    const json_t *s = rq->submission;
    char id[ACTION_ID_LEN + 1];
    action_id_new(id);
    char key[MAX_KEY_LEN + 16];
    const char *given = json_string_value(json_object_get(s, "idempotency_key"));
    if (given)
        snprintf(key, sizeof key, "%s", given);
    else
        snprintf(key, sizeof key, "aiorun-%s", id); /* every attempt of this action sends it */
    char hex[ACTION_DIGEST_LEN * 2 + 1];
    sodium_bin2hex(hex, sizeof hex, digest, ACTION_DIGEST_LEN);
    int64_t now = ar_now_ms();
    json_t *proposer = json_object_get(s, "proposer");
    const config_connector *cc = config_find_connector(rq->api->cfg, json_string_value(json_object_get(s, "connector")));
    /* The connector's config may override what the plugin declares (a generic connector cannot
     * know whether a given API honours keys). */
    json_t *mode = cc && cc->idempotency ? json_object_get(cc->idempotency, json_string_value(json_object_get(s, "action"))) : NULL;
    if (!mode)
        mode = json_object_get(rq->descriptor_action, "idempotency");
    json_t *deadline = json_object_get(s, "deadline_ms");
    int64_t deadline_ms = now + (deadline ? (int64_t)json_integer_value(deadline) : (cc ? cc->deadline_ms : 300000));
    json_t *rec = json_pack(
        "{s:s, s:O, s:O, s:O, s:O, s:s, s:s, s:b, s:O, s:O, s:O, s:s, s:i, s:n, s:n, s:I, s:I, s:n}",
        "id", id,
        "connector", json_object_get(s, "connector"),
        "action", json_object_get(s, "action"),
        "effect", json_object_get(rq->descriptor_action, "effect"),
        "idempotency", mode,
        "idempotency_key", key,
        "submitter", rq->who.name,
        "key_given", given != NULL,
        "input", json_object_get(s, "input"),
        "proposer", proposer ? proposer : json_null(),
        "priority", json_object_get(s, "priority"),
        "digest", hex,
        "attempts", 0,
        "result", "error",
        "created_ms", (json_int_t)now,
        "updated_ms", (json_int_t)now,
        "finished_ms");
    if (!rec)
        return NULL;
    json_object_set_new(rec, "deadline_ms", json_integer(deadline_ms));
    /* Graded autonomy adjusts the policies' verdict; a deny always stands. */
    const char *level = autonomy_level(rq->api->autonomy, json_string_value(json_object_get(s, "connector")),
                                       json_string_value(json_object_get(s, "action")));
    policy_verdict v = d->verdict;
    if (strcmp(level, "semi") == 0 && v == POLICY_ALLOW)
        v = POLICY_APPROVE;
    else if (strcmp(level, "suggest") == 0 && (v == POLICY_ALLOW || v == POLICY_APPROVE))
        v = POLICY_SUGGEST;
    json_t *decision = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I}",
        "verdict", policy_verdict_name(v), "policy_verdict", policy_verdict_name(d->verdict),
        "autonomy", level, "reason", d->reason, "rule", d->rule, "policy", d->file,
        "policy_version", policy_set_version(ps), "duration_ns", (json_int_t)d->duration_ns);
    if (d->votes)
        json_object_set(decision, "votes", d->votes);
    json_object_set_new(rec, "decision", decision);
    action_state st = v == POLICY_ALLOW ? ACTION_READY : v == POLICY_APPROVE ? ACTION_PENDING_APPROVAL
                    : v == POLICY_SUGGEST ? ACTION_SUGGESTED : ACTION_DENIED;
    if (st == ACTION_PENDING_APPROVAL) {
        policy_decision asked = *d;
        if (d->verdict != POLICY_APPROVE) { /* autonomy asked, not a policy: any approver */
            asked.n_roles = 0;
            asked.expires_in_s = 0;
            asked.four_eyes = 0;
            snprintf(asked.summary, sizeof asked.summary, "autonomy level semi for %s.%s",
                     json_string_value(json_object_get(s, "connector")), json_string_value(json_object_get(s, "action")));
        }
        approvals_request(rec, &asked, now, rq->api->cfg->approval_expiry_s);
    }
    action_record_set_state(rec, st, now);
    return rec;
}

/* The submission matches an existing action with the same key: same payload → that action
 * (200), another payload → 409. */
static void answer_existing(api_server *a, request *rq, const char *id,
                            const unsigned char *stored_digest, const unsigned char *digest)
{
    if (sodium_memcmp(stored_digest, digest, ACTION_DIGEST_LEN) != 0) {
        set_reply_error(rq, MHD_HTTP_CONFLICT, "idempotency_conflict",
                        "idempotency_key \"%s\" was already used on connector \"%s\" with another "
                        "action or input (existing action %.*s); use a new key for a new action",
                        json_string_value(json_object_get(rq->submission, "idempotency_key")),
                        json_string_value(json_object_get(rq->submission, "connector")),
                        ACTION_ID_LEN, id);
        resume(rq);
        return;
    }
    char idz[ACTION_ID_LEN + 1];
    snprintf(idz, sizeof idz, "%.*s", ACTION_ID_LEN, id);
    rq->done_status = MHD_HTTP_OK;
    snprintf(rq->action_id, sizeof rq->action_id, "%s", idz);
    if (rq->wait_ms > 0) {
        /* Register first, then look: a change landing in between is not missed. */
        rq->wait_until = ar_mono_ms() + rq->wait_ms;
        waiter_add(a, rq);
        json_t *rec;
        if (action_load_by_id(a->journal, idz, &rec, NULL) == AR_OK) {
            if (action_state_settled(action_record_state(rec))) {
                request *list = waiters_take(a, idz, 0);
                while (list) { /* may include others waiting on the same action: fine */
                    request *w = list;
                    list = w->next;
                    set_reply_action(w, w->done_status, rec);
                    resume(w);
                }
            }
            json_decref(rec);
        }
        return;
    }
    json_t *rec;
    ar_error err = {0};
    int rc = action_load_by_id(a->journal, idz, &rec, &err);
    if (rc == AR_OK) {
        set_reply_action(rq, MHD_HTTP_OK, rec);
        json_decref(rec);
    } else {
        set_reply_ar_error(rq, rc, &err);
    }
    resume(rq);
}

/* Look the key up in a read snapshot. AR_OK with id/digest copied out, or AR_E_NOTFOUND. */
static int find_key(api_server *a, const char *k, size_t klen, unsigned char out[ACTION_IDEM_VALUE_LEN])
{
    journal_read *r;
    if (journal_read_begin(a->journal, &r, NULL) != AR_OK)
        return AR_E_FAIL;
    const void *val;
    size_t vlen;
    int rc = journal_get(r, JDB_IDEMPOTENCY, k, klen, &val, &vlen);
    if (rc == AR_OK && vlen == ACTION_IDEM_VALUE_LEN)
        memcpy(out, val, ACTION_IDEM_VALUE_LEN);
    else if (rc == AR_OK)
        rc = AR_E_FORMAT;
    journal_read_end(r);
    return rc;
}

static void process_submission(api_server *a, policy_worker *pw, const policy_set *ps, request *rq)
{
    const json_t *s = rq->submission;
    const char *connector = json_string_value(json_object_get(s, "connector"));
    const char *given = json_string_value(json_object_get(s, "idempotency_key"));
    unsigned char digest[ACTION_DIGEST_LEN];
    if (action_payload_digest(json_string_value(json_object_get(s, "action")),
                              json_object_get(s, "input"), digest) != AR_OK) {
        set_reply_error(rq, 500, "internal", "out of memory");
        resume(rq);
        return;
    }
    char idem[MAX_KEY_LEN + 160];
    size_t idem_len = given ? action_idem_key(idem, sizeof idem, connector, rq->who.name, given) : 0;
    unsigned char found[ACTION_IDEM_VALUE_LEN];
    if (idem_len && find_key(a, idem, idem_len, found) == AR_OK) {
        answer_existing(a, rq, (const char *)found, found + ACTION_ID_LEN, digest);
        return;
    }

    json_t *view = policy_view(rq);
    policy_decision d;
    if (!view) {
        set_reply_error(rq, 500, "internal", "out of memory");
        resume(rq);
        return;
    }
    policy_decide(pw, view, &d);
    json_decref(view);
    json_t *rec = new_record(rq, &d, ps, digest);
    json_decref(d.votes);
    if (!rec) {
        set_reply_error(rq, 500, "internal", "out of memory");
        resume(rq);
        return;
    }

    journal_batch *b = journal_batch_new();
    if (idem_len) {
        unsigned char value[ACTION_IDEM_VALUE_LEN];
        memcpy(value, action_record_str(rec, "id"), ACTION_ID_LEN);
        memcpy(value + ACTION_ID_LEN, digest, ACTION_DIGEST_LEN);
        journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, idem, idem_len, value, sizeof value);
    }
    action_batch_store(b, rec);
    ar_error err = {0};
    int rc = journal_commit(a->journal, b, &err);
    if (rc == AR_E_EXISTS) {
        /* Another submission with this key won the race. */
        const void *val;
        size_t vlen;
        if (journal_batch_conflict(b, NULL, &val, &vlen) == AR_OK && vlen == ACTION_IDEM_VALUE_LEN) {
            memcpy(found, val, ACTION_IDEM_VALUE_LEN);
            answer_existing(a, rq, (const char *)found, found + ACTION_ID_LEN, digest);
        } else {
            set_reply_error(rq, 500, "internal", "idempotency record unreadable");
            resume(rq);
        }
        goto out;
    }
    if (rc != AR_OK) {
        set_reply_ar_error(rq, rc, &err);
        resume(rq);
        goto out;
    }
    api_action_changed(a, rec); /* logs it; nobody can be waiting on a brand-new id yet */
    rq->done_status = MHD_HTTP_CREATED;
    if (action_record_state(rec) == ACTION_PENDING_APPROVAL)
        expiry_add(a, action_record_str(rec, "id"),
                   json_integer_value(json_object_get(json_object_get(rec, "approval"), "expires_ms")));
    if (action_record_state(rec) != ACTION_READY) {
        set_reply_action(rq, MHD_HTTP_CREATED, rec);
        resume(rq);
        goto out;
    }
    /* Keep what the reply needs before the scheduler may change and free its copy. */
    json_t *reply_copy = rq->wait_ms > 0 ? NULL : json_deep_copy(rec);
    if (rq->wait_ms > 0) {
        snprintf(rq->action_id, sizeof rq->action_id, "%s", action_record_str(rec, "id"));
        rq->wait_until = ar_mono_ms() + rq->wait_ms;
        waiter_add(a, rq); /* before the scheduler can finish it */
    }
    scheduler_enqueue(a->sched, json_incref(rec));
    if (reply_copy) {
        set_reply_action(rq, MHD_HTTP_CREATED, reply_copy);
        json_decref(reply_copy);
        resume(rq);
    }
out:
    journal_batch_free(b);
    json_decref(rec);
}

/* The current policy set and its generation. */
static const policy_set *current_policies(api_server *a, uint64_t *gen)
{
    pthread_mutex_lock(&a->policy_lock);
    const policy_set *ps = a->policy_sets[a->n_sets - 1];
    *gen = a->policy_gen;
    pthread_mutex_unlock(&a->policy_lock);
    return ps;
}

static void *worker_main(void *arg)
{
    api_server *a = arg;
    policy_worker *pw = NULL;
    const policy_set *ps = NULL;
    uint64_t gen = UINT64_MAX;
    ar_error err = {0};
    for (;;) {
        pthread_mutex_lock(&a->work_lock);
        while (!a->work_head && !a->workers_stopping)
            pthread_cond_wait(&a->work_cond, &a->work_lock);
        request *rq = a->work_head;
        if (rq) {
            a->work_head = rq->next;
            if (!a->work_head)
                a->work_tail = NULL;
        }
        pthread_mutex_unlock(&a->work_lock);
        if (!rq)
            break;
        /* A reload since the last decision: this worker moves to the new set. */
        uint64_t now_gen;
        const policy_set *latest = current_policies(a, &now_gen);
        if (now_gen != gen) {
            policy_worker *fresh = NULL;
            ar_error_clear(&err);
            if (policy_worker_new(latest, &fresh, &err) == AR_OK) {
                policy_worker_free(pw);
                pw = fresh;
                ps = latest;
                gen = now_gen;
            } else {
                ar_log("error", "decision worker cannot load policy set %s: %s", policy_set_version(latest), err.message);
            }
        }
        if (pw) {
            process_submission(a, pw, ps, rq);
        } else {
            set_reply_error(rq, 503, "policy_unavailable", "the decision worker has no policy state: %s", err.message);
            resume(rq);
        }
    }
    policy_worker_free(pw);
    return NULL;
}

int api_reload_policies(api_server *a, const char *why, ar_error *err)
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
    a->policy_sets[a->n_sets++] = next;
    a->policy_gen++;
    a->policies_loaded_ms = ar_now_ms();
    pthread_mutex_unlock(&a->policy_lock);
    ar_log("info", "policies reloaded (%s): %zu file(s), version %s (was %s)", why, policy_set_count(next),
           policy_set_version(next), before);
    return AR_OK;
}

static json_t *policies_view(api_server *a)
{
    pthread_mutex_lock(&a->policy_lock);
    const policy_set *ps = a->policy_sets[a->n_sets - 1];
    char when[AR_TIME_LEN];
    ar_time_rfc3339(a->policies_loaded_ms, when);
    json_t *v = json_pack("{s:s, s:i, s:s, s:s, s:i}", "version", policy_set_version(ps), "files",
                          (int)policy_set_count(ps), "dir", a->cfg->policy_dir, "loaded_at", when,
                          "reloads", (int)a->n_sets - 1);
    pthread_mutex_unlock(&a->policy_lock);
    return v;
}

static void route_reload_policies(api_server *a, request *rq)
{
    ar_error err = {0};
    char why[120];
    snprintf(why, sizeof why, "requested by %s", rq->who.name);
    int rc = api_reload_policies(a, why, &err);
    if (rc != AR_OK)
        set_reply_error(rq, rc == AR_E_BUSY ? 503 : 422, err.code[0] ? err.code : "policy_invalid", "%s "
                        "(the previous set keeps serving)", err.message);
    else
        set_reply_json(rq, 200, policies_view(a));
}

/* ---- request validation (HTTP thread) ----------------------------------------------------- */

static int check_field_type(request *rq, const json_t *body, const char *field, json_type type,
                            const char *type_name, int required)
{
    json_t *v = json_object_get(body, field);
    if (!v) {
        if (!required)
            return 1;
        set_reply_error(rq, 400, "invalid_request", "field \"%s\" is required (%s)", field, type_name);
        return 0;
    }
    int ok = json_typeof(v) == type || (type == JSON_REAL && json_is_integer(v));
    if (!ok)
        set_reply_error(rq, 400, "invalid_request", "field \"%s\" must be %s", field, type_name);
    return ok;
}

static int validate_proposer(request *rq, const json_t *p)
{
    static const char *const known[] = {"kind", "model", "confidence", "prompt_ref"};
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)p, k, v) {
        size_t i;
        for (i = 0; i < 4 && strcmp(k, known[i]) != 0; i++)
            ;
        if (i == 4) {
            set_reply_error(rq, 400, "invalid_request", "proposer: unknown field \"%s\" (known: kind, model, confidence, prompt_ref)", k);
            return 0;
        }
        if (i == 2 ? !json_is_number(v) : !json_is_string(v)) {
            set_reply_error(rq, 400, "invalid_request", "proposer.%s must be %s", k, i == 2 ? "a number" : "a string");
            return 0;
        }
        if (i == 2 && (json_number_value(v) < 0 || json_number_value(v) > 1)) {
            set_reply_error(rq, 400, "invalid_request", "proposer.confidence must be between 0 and 1");
            return 0;
        }
    }
    return 1;
}

/* Parse and check the body; on success rq->submission holds it with defaults filled in. */
static int validate_submission(request *rq)
{
    static const char *const known[] = {"connector", "action", "input", "idempotency_key",
                                        "proposer", "priority", "wait_ms", "deadline_ms"};
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!body) {
        set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s at line %d, column %d",
                        jerr.text, jerr.line, jerr.column);
        return 0;
    }
    rq->submission = body;
    if (!json_is_object(body)) {
        set_reply_error(rq, 400, "invalid_request", "request body must be a JSON object");
        return 0;
    }
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        size_t i, n = sizeof known / sizeof known[0];
        for (i = 0; i < n && strcmp(k, known[i]) != 0; i++)
            ;
        if (i == n) {
            set_reply_error(rq, 400, "invalid_request", "unknown field \"%s\" (known: connector, action, input, "
                            "idempotency_key, proposer, priority, wait_ms, deadline_ms)", k);
            return 0;
        }
    }
    if (!check_field_type(rq, body, "connector", JSON_STRING, "a string", 1) ||
        !check_field_type(rq, body, "action", JSON_STRING, "a string", 1) ||
        !check_field_type(rq, body, "input", JSON_OBJECT, "an object", 0) ||
        !check_field_type(rq, body, "idempotency_key", JSON_STRING, "a string", 0) ||
        !check_field_type(rq, body, "proposer", JSON_OBJECT, "an object", 0) ||
        !check_field_type(rq, body, "priority", JSON_INTEGER, "an integer", 0) ||
        !check_field_type(rq, body, "wait_ms", JSON_INTEGER, "an integer", 0) ||
        !check_field_type(rq, body, "deadline_ms", JSON_INTEGER, "an integer", 0))
        return 0;
    json_t *deadline = json_object_get(body, "deadline_ms");
    if (deadline && (json_integer_value(deadline) < 1 || json_integer_value(deadline) > 7LL * 86400000)) {
        set_reply_error(rq, 400, "invalid_request", "deadline_ms (milliseconds from now) must be from 1 to %lld",
                        7LL * 86400000);
        return 0;
    }
    const char *key = json_string_value(json_object_get(body, "idempotency_key"));
    if (key && (strlen(key) == 0 || strlen(key) > MAX_KEY_LEN)) {
        set_reply_error(rq, 400, "invalid_request", "idempotency_key must be 1 to %d bytes", MAX_KEY_LEN);
        return 0;
    }
    json_t *proposer = json_object_get(body, "proposer");
    if (proposer && !validate_proposer(rq, proposer))
        return 0;
    json_int_t wait = json_integer_value(json_object_get(body, "wait_ms"));
    if (wait < 0 || wait > MAX_WAIT_MS) {
        set_reply_error(rq, 400, "invalid_request", "wait_ms must be between 0 and %d", MAX_WAIT_MS);
        return 0;
    }
    json_int_t prio = json_integer_value(json_object_get(body, "priority"));
    if (prio < -1000 || prio > 1000) {
        set_reply_error(rq, 400, "invalid_request", "priority must be between -1000 and 1000");
        return 0;
    }
    rq->wait_ms = (int)wait;
    if (!json_object_get(body, "input"))
        json_object_set_new(body, "input", json_object());
    if (!json_object_get(body, "priority"))
        json_object_set_new(body, "priority", json_integer(0));
    json_object_del(body, "wait_ms");
    return 1;
}

static json_t *find_descriptor_action(const json_t *descriptor, const char *name)
{
    size_t i;
    json_t *act;
    json_array_foreach(json_object_get(descriptor, "actions"), i, act) {
        const char *n = json_string_value(json_object_get(act, "name"));
        if (n && strcmp(n, name) == 0)
            return act;
    }
    return NULL;
}

static void list_action_names(const json_t *descriptor, char *buf, size_t cap)
{
    size_t i, used = 0;
    json_t *act;
    buf[0] = '\0';
    json_array_foreach(json_object_get(descriptor, "actions"), i, act) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "",
                         json_string_value(json_object_get(act, "name")));
        if (n < 0 || (size_t)n >= cap - used)
            break;
        used += (size_t)n;
    }
}

/* Check connector, action and input against the plugin's descriptor. */
static int validate_against_connector(api_server *a, request *rq)
{
    const char *connector = json_string_value(json_object_get(rq->submission, "connector"));
    const char *action = json_string_value(json_object_get(rq->submission, "action"));
    sandbox_snapshot snap;
    if (!a->sched || scheduler_connector(a->sched, connector, &snap) != AR_OK) {
        set_reply_error(rq, 404, "unknown_connector", "no connector named \"%s\" is configured; "
                        "GET /v1/connectors lists them", connector);
        return 0;
    }
    rq->descriptor = snap.descriptor; /* owned reference */
    /* A degraded connector (its processes are restarting) still takes work: the action waits
     * durably in the queue. Only a refused plugin, or one never started, is unavailable. */
    if (snap.state == SANDBOX_REFUSED || !snap.descriptor) {
        set_reply_error(rq, 503, "connector_unavailable", "connector \"%s\" is %s%s%s", connector,
                        sandbox_state_name(snap.state), snap.message[0] ? ": " : "", snap.message);
        return 0;
    }
    rq->descriptor_action = find_descriptor_action(snap.descriptor, action);
    if (!rq->descriptor_action) {
        char names[512];
        list_action_names(snap.descriptor, names, sizeof names);
        set_reply_error(rq, 404, "unknown_action", "connector \"%s\" has no action \"%s\" (it has: %s)",
                        connector, action, names);
        return 0;
    }
    ar_error err = {0};
    if (schema_validate(json_object_get(rq->descriptor_action, "input_schema"),
                        json_object_get(rq->submission, "input"), "input", &err) != AR_OK) {
        set_reply_error(rq, 422, "schema_violation", "%s", err.message);
        return 0;
    }
    return 1;
}

/* ---- routes ------------------------------------------------------------------------------- */

static enum MHD_Result suspend_for_worker(api_server *a, request *rq)
{
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    pthread_mutex_lock(&a->work_lock);
    if (a->workers_stopping) {
        pthread_mutex_unlock(&a->work_lock);
        set_reply_error(rq, 503, "shutting_down", "the daemon is stopping; submit again after it restarts");
        resume(rq);
        return MHD_YES;
    }
    rq->next = NULL;
    if (a->work_tail)
        a->work_tail->next = rq;
    else
        a->work_head = rq;
    a->work_tail = rq;
    pthread_cond_signal(&a->work_cond);
    pthread_mutex_unlock(&a->work_lock);
    return MHD_YES;
}

/* Backpressure: refuse new work, with a time to come back, rather than accept it and let it
 * rot; what was accepted is never dropped. 1: take it; 0: the reply is set. */
static int accept_more(api_server *a, request *rq)
{
    size_t held = a->sched ? scheduler_held(a->sched) : 0;
    if (held >= a->cfg->max_queue_depth) {
        rq->retry_after_s = 1;
        set_reply_error(rq, 429, "queue_full", "%zu actions are waiting to run (max_queue_depth %zu); "
                        "submit again after Retry-After", held, a->cfg->max_queue_depth);
        return 0;
    }
    journal_stats st;
    journal_get_stats(a->journal, &st);
    if (st.map_size && st.map_used * 10 >= st.map_size * 9) {
        rq->retry_after_s = 30;
        set_reply_error(rq, 503, "storage_nearly_full", "the journal is %zu%% full (map_size_mb %zu): raise "
                        "map_size_mb, or back up and compact the data directory", st.map_used * 100 / st.map_size,
                        a->cfg->map_size_mb);
        return 0;
    }
    return 1;
}

static enum MHD_Result route_submit(api_server *a, request *rq)
{
    if (rq->too_large) {
        set_reply_error(rq, 413, "body_too_large", "request body exceeds max_body_bytes (%zu bytes)",
                        a->cfg->max_body_bytes);
        return queue_reply(rq);
    }
    if (!validate_submission(rq) || !validate_against_connector(a, rq) || !accept_more(a, rq))
        return queue_reply(rq);
    return suspend_for_worker(a, rq);
}

static void route_get_action(api_server *a, request *rq, const char *id)
{
    json_t *rec;
    ar_error err = {0};
    if (strlen(id) != ACTION_ID_LEN) {
        set_reply_error(rq, 404, "not_found", "no action with id \"%s\" (ids are %d characters)", id, ACTION_ID_LEN);
        return;
    }
    int rc = action_load_by_id(a->journal, id, &rec, &err);
    if (rc == AR_OK && rq->own_only && strcmp(action_record_str(rec, "submitter"), rq->who.name) != 0) {
        /* Another submitter's action does not exist for this caller. */
        json_decref(rec);
        rc = ar_error_set(&err, AR_E_NOTFOUND, "not_found", "no action with id %s", id);
    }
    if (rc != AR_OK) {
        set_reply_ar_error(rq, rc, &err);
        return;
    }
    set_reply_action(rq, 200, rec);
    json_decref(rec);
}

static void route_list_actions(api_server *a, request *rq)
{
    const char *state = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "state");
    const char *connector = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "connector");
    const char *after = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "after");
    const char *limit_s = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "limit");
    action_filter f = {.state = -1, .connector = connector && *connector ? connector : NULL,
                       .submitter = rq->own_only ? rq->who.name : NULL};
    if (state && *state && (f.state = action_state_from_name(state)) < 0) {
        set_reply_error(rq, 400, "invalid_request", "unknown state \"%s\" (e.g. READY, SUCCEEDED, FAILED, DENIED)", state);
        return;
    }
    long limit = 50;
    if (limit_s && *limit_s) {
        char *end;
        limit = strtol(limit_s, &end, 10);
        if (*end || limit < 1 || limit > MAX_LIST_LIMIT) {
            set_reply_error(rq, 400, "invalid_request", "limit must be an integer from 1 to %d", MAX_LIST_LIMIT);
            return;
        }
    }
    json_t *page;
    char next[ACTION_ID_LEN + 1];
    ar_error err = {0};
    int rc = action_list(a->journal, &f, after, (size_t)limit, &page, next, &err);
    if (rc != AR_OK) {
        set_reply_ar_error(rq, rc, &err);
        return;
    }
    json_t *rendered = json_array();
    size_t i;
    json_t *rec;
    json_array_foreach(page, i, rec)
        json_array_append_new(rendered, action_render(rec));
    json_decref(page);
    set_reply_json(rq, 200, json_pack("{s:o, s:o}", "actions", rendered,
                                      "next", next[0] ? json_string(next) : json_null()));
}

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
    return json_pack("{s:s, s:s, s:O, s:s, s:s, s:s, s:i, s:i, s:I, s:o}",
        "name", cc->name, "plugin", cc->plugin, "version", version ? version : json_null(),
        "abi", abi_s, "status", sandbox_state_name(snap->state), "message", snap->message,
        "processes", snap->processes, "serving", snap->serving, "restarts", (json_int_t)snap->restarts,
        "actions", actions);
}

static void route_connectors(api_server *a, request *rq)
{
    json_t *list = json_array();
    for (size_t i = 0; i < a->cfg->n_connectors; i++) {
        const config_connector *cc = &a->cfg->connectors[i];
        sandbox_snapshot snap;
        if (!a->sched || scheduler_connector(a->sched, cc->name, &snap) != AR_OK)
            continue;
        json_t *view = render_connector(cc, &snap);
        json_t *flow = NULL;
        if (scheduler_connector_flow(a->sched, cc->name, &flow) == AR_OK)
            json_object_set_new(view, "flow", flow);
        json_array_append_new(list, view);
        json_decref(snap.descriptor);
    }
    set_reply_json(rq, 200, json_pack("{s:o}", "connectors", list));
}

/* ---- cancel and resolve ---------------------------------------------------------------------- */

/* Load an action the caller may see; otherwise set a 404 and return NULL. */
static json_t *load_visible(api_server *a, request *rq, const char *id)
{
    json_t *rec = NULL;
    ar_error err = {0};
    int rc = strlen(id) == ACTION_ID_LEN ? action_load_by_id(a->journal, id, &rec, &err)
                                         : ar_error_set(&err, AR_E_NOTFOUND, "not_found", "no action with id %s", id);
    if (rc == AR_OK && rq->own_only && strcmp(action_record_str(rec, "submitter"), rq->who.name) != 0) {
        json_decref(rec);
        rec = NULL;
        rc = ar_error_set(&err, AR_E_NOTFOUND, "not_found", "no action with id %s", id);
    }
    if (rc != AR_OK)
        set_reply_ar_error(rq, rc, &err);
    return rc == AR_OK ? rec : NULL;
}

/* The scheduler's answer to a cancel (loop or journal thread). */
static void cancel_answered(void *arg, int status, const json_t *rec)
{
    request *rq = arg;
    if (status == AR_OK) {
        set_reply_action(rq, 200, rec);
    } else if (status == AR_E_BUSY) {
        json_t *view = action_render(rec);
        json_object_set_new(view, "cancel", json_string("requested: a call is in flight; the action is "
                                                        "cancelled when it returns, unless it succeeded"));
        set_reply_json(rq, 202, view);
    } else {
        /* Not held by the scheduler: it ended meanwhile, or waits elsewhere. */
        json_t *now = NULL;
        if (action_load_by_id(rq->api->journal, rq->action_id, &now, NULL) == AR_OK &&
            action_state_terminal(action_record_state(now)))
            set_reply_error(rq, 409, "already_terminal", "action %s is already %s", rq->action_id,
                            action_state_name(action_record_state(now)));
        else
            set_reply_error(rq, 409, "not_cancellable", "action %s is %s and cannot be cancelled now",
                            rq->action_id, now ? action_state_name(action_record_state(now)) : "unknown");
        json_decref(now);
    }
    resume(rq);
}

static enum MHD_Result route_cancel(api_server *a, request *rq, const char *id)
{
    json_t *rec = load_visible(a, rq, id);
    if (!rec)
        return queue_reply(rq);
    action_state st = action_record_state(rec);
    json_decref(rec);
    if (action_state_terminal(st)) {
        set_reply_error(rq, 409, "already_terminal", "action %s is already %s", id, action_state_name(st));
        return queue_reply(rq);
    }
    if (st == ACTION_PENDING_APPROVAL) {
        /* Waiting for a human: nothing ran, the scheduler does not hold it. */
        json_t *done = NULL;
        ar_error err = {0};
        int rc = approvals_cancel(a->journal, id, rq->who.name, &done, &err);
        if (rc == AR_OK) {
            api_action_changed(a, done);
            set_reply_action(rq, 200, done);
            json_decref(done);
            return queue_reply(rq);
        }
        if (rc != AR_E_EXISTS) { /* AR_E_EXISTS: decided meanwhile; the scheduler may hold it now */
            set_reply_ar_error(rq, rc, &err);
            return queue_reply(rq);
        }
    }
    snprintf(rq->action_id, sizeof rq->action_id, "%s", id);
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    if (scheduler_cancel(a->sched, id, rq->who.name, cancel_answered, rq) != AR_OK) {
        set_reply_error(rq, 500, "internal", "out of memory");
        resume(rq);
    }
    return MHD_YES;
}

typedef struct resolution {
    const char *id, *outcome, *reason, *who;
    json_t *rec;          /* the record as written (new reference), set by the callback */
} resolution;

/* Writer thread, inside the transaction: only an UNKNOWN_OUTCOME action can be resolved, so
 * two operators resolving at once cannot both win. */
static int apply_resolution(journal_txn *txn, void *arg, ar_error *err)
{
    resolution *r = arg;
    json_decref(r->rec);
    r->rec = NULL;
    json_t *rec;
    if (action_txn_load(txn, r->id, &rec) != AR_OK)
        return ar_error_set(err, AR_E_NOTFOUND, "not_found", "no action with id %s", r->id);
    if (action_record_state(rec) != ACTION_UNKNOWN_OUTCOME) {
        int rc = ar_error_set(err, AR_E_EXISTS, "not_unknown_outcome", "action %s is %s; only UNKNOWN_OUTCOME "
                              "actions are resolved", r->id, action_state_name(action_record_state(rec)));
        json_decref(rec);
        return rc;
    }
    int64_t now = ar_now_ms();
    json_object_set_new(rec, "resolution", json_pack("{s:s, s:s, s:s, s:I}", "by", r->who, "outcome", r->outcome,
                                                     "reason", r->reason, "at_ms", (json_int_t)now));
    action_state st = ACTION_FAILED;
    if (strcmp(r->outcome, "succeeded") == 0) {
        st = ACTION_SUCCEEDED;
        json_object_del(rec, "error");
    } else if (strcmp(r->outcome, "retry") == 0) {
        /* The operator checked that nothing happened: another attempt with the same key. */
        st = ACTION_READY;
        json_object_set_new(rec, "maybe_happened", json_false());
        json_object_del(rec, "finished_ms");
        /* A fresh attempt budget on top of what was spent. */
        json_object_set_new(rec, "attempt_allowance", json_integer(json_integer_value(json_object_get(rec, "attempts"))));
        int64_t deadline = json_integer_value(json_object_get(rec, "deadline_ms"));
        if (deadline && deadline < now + 60000)
            json_object_set_new(rec, "deadline_ms", json_integer(now + 300000));
    }
    action_record_set_state(rec, st, now);
    int rc = action_txn_store(txn, rec);
    if (rc != AR_OK) {
        json_decref(rec);
        return ar_error_set(err, rc, rc == AR_E_FULL ? "storage_full" : "internal", "cannot store the resolution");
    }
    r->rec = rec;
    return AR_OK;
}

static void route_resolve(api_server *a, request *rq, const char *id)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *outcome = json_string_value(json_object_get(body, "outcome"));
    const char *reason = json_string_value(json_object_get(body, "reason"));
    if (!body) {
        set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s", jerr.text);
        return;
    }
    if (!outcome || !reason || !*reason || json_object_size(body) != 2 ||
        (strcmp(outcome, "succeeded") && strcmp(outcome, "failed") && strcmp(outcome, "retry"))) {
        json_decref(body);
        set_reply_error(rq, 400, "invalid_request", "expected {\"outcome\": \"succeeded\"|\"failed\"|\"retry\", "
                        "\"reason\": \"what you checked\"}");
        return;
    }
    if (strlen(id) != ACTION_ID_LEN) {
        json_decref(body);
        set_reply_error(rq, 404, "not_found", "no action with id %s", id);
        return;
    }
    resolution r = {.id = id, .outcome = outcome, .reason = reason, .who = rq->who.name};
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, apply_resolution, &r);
    ar_error err = {0};
    int rc = journal_commit(a->journal, b, &err);
    journal_batch_free(b);
    if (rc != AR_OK) {
        set_reply_error(rq, rc == AR_E_EXISTS ? 409 : status_for_error(rc), err.code[0] ? err.code : "internal",
                        "%s", err.message);
    } else {
        ar_log("info", "action %s resolved as %s by %s", id, outcome, rq->who.name);
        api_action_changed(a, r.rec);
        set_reply_action(rq, 200, r.rec);
        if (action_record_state(r.rec) == ACTION_READY)
            scheduler_enqueue(a->sched, json_deep_copy(r.rec));
    }
    json_decref(r.rec);
    json_decref(body);
}

/* ---- approvals and autonomy ------------------------------------------------------------------- */

static void route_list_approvals(api_server *a, request *rq)
{
    const char *state = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "state");
    static const struct { const char *name; action_state st; } states[] = {
        {"pending", ACTION_PENDING_APPROVAL}, {"rejected", ACTION_REJECTED}, {"expired", ACTION_EXPIRED}};
    int st = -1;
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
        if (!state || !*state ? i == 0 : strcmp(state, states[i].name) == 0)
            st = (int)states[i].st;
    if (st < 0) {
        set_reply_error(rq, 400, "invalid_request", "state must be pending, rejected or expired");
        return;
    }
    json_t *page;
    char next[ACTION_ID_LEN + 1];
    ar_error err = {0};
    action_filter f = {.state = st};
    int rc = action_list(a->journal, &f, MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "after"),
                         MAX_LIST_LIMIT, &page, next, &err);
    if (rc != AR_OK) {
        set_reply_ar_error(rq, rc, &err);
        return;
    }
    json_t *out = json_array();
    size_t i;
    json_t *rec;
    json_array_foreach(page, i, rec)
        json_array_append_new(out, approvals_view(rec));
    json_decref(page);
    set_reply_json(rq, 200, json_pack("{s:o, s:o}", "approvals", out, "next", next[0] ? json_string(next) : json_null()));
}

static void route_get_approval(api_server *a, request *rq, const char *id)
{
    json_t *rec = load_visible(a, rq, id);
    if (!rec)
        return;
    if (!json_object_get(rec, "approval")) {
        set_reply_error(rq, 404, "not_found", "action %s never waited for an approval", id);
    } else {
        set_reply_json(rq, 200, approvals_view(rec));
    }
    json_decref(rec);
}

static void route_decide_approval(api_server *a, request *rq, const char *id)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *decision = json_string_value(json_object_get(body, "decision"));
    json_t *comment = json_object_get(body, "comment");
    if (!body) {
        set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s", jerr.text);
        return;
    }
    size_t expected = 1 + (comment != NULL);
    if (!decision || (strcmp(decision, "approve") && strcmp(decision, "reject")) ||
        (comment && !json_is_string(comment)) || json_object_size(body) != expected) {
        json_decref(body);
        set_reply_error(rq, 400, "invalid_request", "expected {\"decision\": \"approve\"|\"reject\", \"comment\": \"...\"}");
        return;
    }
    if (strlen(id) != ACTION_ID_LEN) {
        json_decref(body);
        set_reply_error(rq, 404, "not_found", "no action with id %s", id);
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
        set_reply_json(rq, 200, approvals_view(rec));
    } else {
        if (rec) /* it expired on the way: still reported */
            api_action_changed(a, rec);
        unsigned status = rc == AR_E_NOTFOUND ? 404 : rc == AR_E_EXISTS ? 409
                        : rc == AR_E_INVALID ? 403 : status_for_error(rc);
        set_reply_error(rq, status, err.code[0] ? err.code : "internal", "%s", err.message);
    }
    json_decref(rec);
    json_decref(body);
}

static void route_set_autonomy(api_server *a, request *rq)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *pattern = json_string_value(json_object_get(body, "pattern"));
    json_t *level = json_object_get(body, "level");
    if (!body || !pattern || !level || !(json_is_string(level) || json_is_null(level)) || json_object_size(body) != 2) {
        json_decref(body);
        set_reply_error(rq, 400, "invalid_request", "expected {\"pattern\": \"connector.action\"|\"connector.*\"|\"*\", "
                        "\"level\": \"auto\"|\"semi\"|\"suggest\"|null (null removes the runtime setting)}");
        return;
    }
    ar_error err = {0};
    int rc = autonomy_set(a->autonomy, pattern, json_string_value(level), rq->who.name, &err);
    if (rc != AR_OK) {
        set_reply_error(rq, rc == AR_E_INVALID ? 400 : status_for_error(rc), err.code, "%s", err.message);
    } else {
        ar_log("info", "autonomy %s set to %s by %s", pattern, json_is_null(level) ? "(config)" : json_string_value(level),
               rq->who.name);
        set_reply_json(rq, 200, autonomy_view(a->autonomy));
    }
    json_decref(body);
}

/* At start: watch the approvals still pending, so they expire on time. */
void api_watch_pending(api_server *a)
{
    journal_read *r;
    journal_cursor *cur = NULL;
    if (journal_read_begin(a->journal, &r, NULL) != AR_OK)
        return;
    const void *key, *val;
    size_t klen, vlen;
    int rc = journal_cursor_open(r, JDB_QUEUE, &cur);
    if (rc == AR_OK)
        rc = journal_cursor_get(cur, JOURNAL_FIRST, &key, &klen, &val, &vlen);
    while (rc == AR_OK) {
        char id[ACTION_ID_LEN + 1];
        json_t *rec;
        snprintf(id, sizeof id, "%.*s", (int)klen, (const char *)key);
        if (action_load(r, id, &rec, NULL) == AR_OK) {
            if (action_record_state(rec) == ACTION_PENDING_APPROVAL)
                expiry_add(a, id, json_integer_value(json_object_get(json_object_get(rec, "approval"), "expires_ms")));
            json_decref(rec);
        }
        rc = journal_cursor_get(cur, JOURNAL_NEXT, &key, &klen, &val, &vlen);
    }
    if (cur)
        journal_cursor_close(cur);
    journal_read_end(r);
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
            set_reply_json(rq, 200, out);
        } else {
            set_reply_json(rq, 200, json_pack("{s:s, s:O}", "name", rq->target, "flow", (json_t *)view));
        }
    } else if (status == AR_E_NOTFOUND) {
        set_reply_error(rq, 404, "unknown_connector", "no connector named \"%s\"", rq->target);
    } else {
        set_reply_error(rq, 503, "storage_full", "the pause could not be journaled; nothing changed on disk");
    }
    resume(rq);
}

static enum MHD_Result route_pause(api_server *a, request *rq, const char *name, int pause)
{
    if (!config_find_connector(a->cfg, name)) {
        set_reply_error(rq, 404, "unknown_connector", "no connector named \"%s\"; GET /v1/connectors lists them", name);
        return queue_reply(rq);
    }
    const char *reason = "";
    json_t *body = rq->body_len ? json_loadb(rq->body, rq->body_len, 0, NULL) : NULL;
    if (rq->body_len && (!json_is_object(body) || (json_object_get(body, "reason") &&
                                                    !json_is_string(json_object_get(body, "reason"))))) {
        json_decref(body);
        set_reply_error(rq, 400, "invalid_request", "expected no body or {\"reason\": \"why\"}");
        return queue_reply(rq);
    }
    if (body && json_string_value(json_object_get(body, "reason")))
        reason = json_string_value(json_object_get(body, "reason"));
    snprintf(rq->target, sizeof rq->target, "%s", name);
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    if (scheduler_pause(a->sched, name, pause, rq->who.name, reason, pause_answered, rq) != AR_OK) {
        set_reply_error(rq, 500, "internal", "out of memory");
        resume(rq);
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

static void route_whoami(request *rq)
{
    set_reply_json(rq, 200, json_pack("{s:s, s:o}", "name", rq->who.name, "roles", roles_json(rq->who.roles)));
}

static void route_list_tokens(api_server *a, request *rq)
{
    json_t *list;
    ar_error err = {0};
    int rc = auth_token_list(a->auth, &list, &err);
    if (rc != AR_OK) {
        set_reply_ar_error(rq, rc, &err);
        return;
    }
    set_reply_json(rq, 200, json_pack("{s:o}", "tokens", list));
}

/* POST /v1/tokens {"name", "roles": [...], "expires_in_s"}: the token is in this reply only. */
static void route_create_token(api_server *a, request *rq)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *name = json_string_value(json_object_get(body, "name"));
    json_t *roles = json_object_get(body, "roles"), *expires = json_object_get(body, "expires_in_s");
    if (!body) {
        set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s", jerr.text);
        return;
    }
    if (!json_is_object(body) || !name || !json_is_array(roles) || (expires && !json_is_integer(expires)) ||
        json_object_size(body) != 2u + (expires != NULL)) {
        json_decref(body);
        set_reply_error(rq, 400, "invalid_request", "expected {\"name\": string, \"roles\": [string, ...], "
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
        rc = auth_token_create(a->auth, name, bits, expires_ms, token, &err);
    if (rc != AR_OK) {
        json_decref(body);
        set_reply_error(rq, rc == AR_E_EXISTS ? 409 : status_for_error(rc), err.code, "%s", err.message);
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
    set_reply_json(rq, 201, reply);
}

static void route_revoke_token(api_server *a, request *rq, const char *name)
{
    ar_error err = {0};
    int rc = auth_token_revoke(a->auth, name, &err);
    if (rc != AR_OK) {
        set_reply_ar_error(rq, rc, &err);
        return;
    }
    ar_log("info", "token %s revoked by %s", name, rq->who.name);
    set_reply_json(rq, 200, json_pack("{s:s, s:s}", "name", name, "state", "revoked"));
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
        set_reply_error(rq, 429, "too_many_auth_failures", "too many failed authentications from %s; "
                        "try again in %lld s", addr, (long long)(wait + 999) / 1000);
        return 0;
    }
    const char *header = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!header || strncasecmp(header, "Bearer ", 7) != 0) {
        set_reply_error(rq, 401, "unauthenticated", "%s %s needs a token: send \"Authorization: Bearer "
                        "<token>\" (create one with aioctl token create)", method, url);
        return 0;
    }
    const char *token = header + 7;
    while (*token == ' ')
        token++;
    ar_error err = {0};
    if (auth_verify(a->auth, token, strlen(token), &rq->who, &err) != AR_OK) {
        access_limiter_fail(a->limiter, addr, ar_now_ms());
        /* The reason names the token's owner at most, never the token itself. */
        ar_log("warn", "authentication failed from %s for %s %s: %s", addr, method, url, err.message);
        set_reply_error(rq, 401, "unauthenticated", "%s", err.message);
        return 0;
    }
    unsigned granted = rq->who.roles & route->roles;
    if (!granted) {
        char need[96], have[96];
        auth_roles_format(route->roles, need, sizeof need);
        auth_roles_format(rq->who.roles, have, sizeof have);
        set_reply_error(rq, 403, "forbidden", "token %s has roles %s; %s %s needs one of: %s",
                        rq->who.name, have, method, url, need);
        return 0;
    }
    rq->own_only = route->own_only && granted == AUTH_ROLE_SUBMITTER;
    return 1;
}

static enum MHD_Result route(api_server *a, request *rq, const char *method, const char *url)
{
    const access_route *r;
    char param[128], allowed[64];
    int rc = access_match(method, url, &r, param, sizeof param, allowed, sizeof allowed);
    if (rc == AR_E_NOTFOUND) {
        set_reply_error(rq, 404, "unknown_route", "no route %s %s (see the README's API section)", method, url);
        return queue_reply(rq);
    }
    if (rc == AR_E_INVALID) {
        set_reply_error(rq, 405, "method_not_allowed", "%s is not allowed on %s (use %s)", method, url, allowed);
        return queue_reply(rq);
    }
    if (!authorize(a, rq, r, method, url))
        return queue_reply(rq);
    if (rq->too_large) {
        set_reply_error(rq, 413, "body_too_large", "request body exceeds max_body_bytes (%zu bytes)",
                        a->cfg->max_body_bytes);
        return queue_reply(rq);
    }
    switch (r->id) {
    case ROUTE_HEALTHZ: set_reply_json(rq, 200, json_pack("{s:s}", "status", "ok")); break;
    case ROUTE_WHOAMI: route_whoami(rq); break;
    case ROUTE_SUBMIT: return route_submit(a, rq);
    case ROUTE_LIST_ACTIONS: route_list_actions(a, rq); break;
    case ROUTE_GET_ACTION: route_get_action(a, rq, param); break;
    case ROUTE_CANCEL: return route_cancel(a, rq, param);
    case ROUTE_RESOLVE: route_resolve(a, rq, param); break;
    case ROUTE_CONNECTORS: route_connectors(a, rq); break;
    case ROUTE_PAUSE: return route_pause(a, rq, param, 1);
    case ROUTE_RESUME: return route_pause(a, rq, param, 0);
    case ROUTE_LIST_APPROVALS: route_list_approvals(a, rq); break;
    case ROUTE_GET_APPROVAL: route_get_approval(a, rq, param); break;
    case ROUTE_DECIDE_APPROVAL: route_decide_approval(a, rq, param); break;
    case ROUTE_GET_POLICIES: set_reply_json(rq, 200, policies_view(a)); break;
    case ROUTE_RELOAD_POLICIES: route_reload_policies(a, rq); break;
    case ROUTE_GET_AUTONOMY: set_reply_json(rq, 200, autonomy_view(a->autonomy)); break;
    case ROUTE_SET_AUTONOMY: route_set_autonomy(a, rq); break;
    case ROUTE_LIST_TOKENS: route_list_tokens(a, rq); break;
    case ROUTE_CREATE_TOKEN: route_create_token(a, rq); break;
    case ROUTE_REVOKE_TOKEN: route_revoke_token(a, rq, param); break;
    case ROUTE_COUNT: break;
    }
    return queue_reply(rq);
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
            set_reply_error(rq, 413, "body_too_large", "request body exceeds max_body_bytes (%zu bytes)",
                            a->cfg->max_body_bytes);
            return queue_reply(rq);
        }
        return MHD_YES;
    }
    if (rq->reply && !rq->suspended) /* resumed with an answer, or answered early */
        return queue_reply(rq);
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

    if (!(a->limiter = access_limiter_new(AUTH_MAX_FAILURES, AUTH_WINDOW_MS)))
        goto nomem;
    a->workers = calloc((size_t)cfg->decision_workers, sizeof *a->workers);
    if (!a->workers)
        goto nomem;
    for (int i = 0; i < cfg->decision_workers; i++) {
        if (pthread_create(&a->workers[i], NULL, worker_main, a) != 0)
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
    answer_with_stored_state(a, waiters_take(a, NULL, INT64_MAX));
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
