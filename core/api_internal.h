/* api_internal.h - PRIVATE to the api module (api.c, api_actions.c, api_admin.c): the server and
 * request structures and the helpers these files share. Nothing outside core/api*.c includes it;
 * the public contract is api.h.
 *
 * Ownership is as in api.h: a request belongs to the HTTP thread, except while it is suspended,
 * when exactly one other thread (a decision worker, the waiter thread or a scheduler callback)
 * may set its reply and call api_resume(). */
#ifndef AIORUN_API_INTERNAL_H
#define AIORUN_API_INTERNAL_H

#include "api.h"

#include <microhttpd.h>
#include <pthread.h>

#include "access.h"
#include "drift.h"
#include "metrics.h"
#include "action.h"
#include "auth.h"

#define MAX_LIST_LIMIT 500

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
    char *reply;                 /* JSON text (or reply_type's), malloc'd */
    const char *reply_type;      /* Content-Type; NULL: application/json */
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
    int decision_round;          /* decisions made for it so far (counters changed meanwhile) */
    struct request *next;        /* in the work queue or the waiter list */
} request;

struct api_server {
    const config *cfg;
    journal *journal;
    auth *auth;
    autonomy *autonomy;
    access_limiter *limiter;
    /* the policy set: replaced whole by a reload; workers notice the generation and rebuild
     * their Lua state. Retired sets stay allocated until api_free, so a worker deciding with
     * one never sees it freed. */
    pthread_mutex_t policy_lock;   /* also guards the decision-time histogram below */
    uint64_t decision_hist[48];    /* decisions by time: bucket k counts [2^(k-1), 2^k) ns */
    uint64_t decisions, decision_ns_sum, decision_ns_max;
    policy_set *policy_sets[64];   /* [0..n_sets): every set loaded; the last is current */
    size_t n_sets;
    uint64_t policy_gen;
    int64_t policies_loaded_ms;
    pthread_mutex_t reload_lock;   /* one reload at a time (SIGHUP, API and the file watch) */
    counters *counters;            /* guardrail counters; NULL: none wired */
    metrics *metrics;              /* what GET /metrics shows (api_metrics.c) */
    drift *drift;                  /* drift detection per connector action (api_metrics.c) */
    int drift_lowers_autonomy;     /* on a detection, lower the action's autonomy one level */
    json_t *drift_pending;         /* detections to record (audit, autonomy) on the waiter thread;
                                      guarded by wait_lock */
    struct api_families {
        metrics_family *actions, *stage_seconds, *policy_seconds, *errors, *retries, *auth_failures;
        metrics_family *queue_depth, *inflight, *breaker, *restarts, *serving, *journal_bytes, *journal_map;
        metrics_family *journal_commits, *journal_batches, *journal_commit_time;
        metrics_family *drift, *cost;
    } fam;
    vault *vault;                  /* connector secrets; NULL: none wired */
    /* validate's Lua state, used only on the scheduler's thread */
    policy_worker *validate_worker;
    const policy_set *validate_set;
    uint64_t validate_gen;
    scheduler *sched;              /* NULL once detached; routes hold sched_lock (read) */
    pthread_rwlock_t sched_lock;
    struct MHD_Daemon *mhd;
    int port;
    char *tls_cert, *tls_key;    /* PEM text while serving HTTPS; the key is wiped at the end */

    /* decision workers */
    pthread_mutex_t work_lock;
    pthread_cond_t work_cond;
    request *work_head, *work_tail;
    int workers_stopping;
    int stores_pending;          /* decided submissions the journal has not answered yet */
    pthread_t *workers;
    int n_workers;

    /* requests waiting for an action to settle */
    pthread_mutex_t wait_lock;
    pthread_cond_t wait_cond;
    request *waiters;
    struct expiry *expiries;     /* pending approvals, by when they expire */
    int waiter_stopping;
    pthread_t waiter_thread;
    int64_t waiter_wakes_at;       /* (wait_lock) when the waiter thread wakes by itself: INT64_MAX
                                      asleep with nothing due, INT64_MIN awake */
    int waiter_started;
};

/* ---- replies (api.c) ------------------------------------------------------------------------ */

/* Set the reply: a JSON document (taken), an error {"error": code, "message": ...}, an ar_error
 * with the status its code maps to, or an action record as rendered for clients. */
void api_set_reply_json(request *rq, unsigned status, json_t *doc /* takes */);
void api_set_reply_error(request *rq, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
unsigned api_status_for_error(int rc);
void api_set_reply_ar_error(request *rq, int rc, const ar_error *err);
void api_set_reply_action(request *rq, unsigned status, const json_t *rec);
/* A reply that is not JSON (taken; type: a static string). */
void api_set_reply_text(request *rq, unsigned status, char *text, const char *type);
/* Queue the reply set on rq (HTTP thread). */
enum MHD_Result api_queue_reply(request *rq);
/* Hand a suspended request back to libmicrohttpd with its reply set. After this call the
 * request belongs to the HTTP thread again: do not touch it. */
void api_resume(request *rq);

/* ---- waiting for an action to settle (api.c) ------------------------------------------------ */

void api_waiter_add(api_server *a, request *rq);
/* Remove and return the waiters for id (all of them when id is NULL) as a list. */
request *api_waiters_take(api_server *a, const char *id, int64_t expired_before);
/* Watch a pending approval: it expires at expires_ms (wall clock) unless decided before. */
void api_expiry_add(api_server *a, const char *id, int64_t expires_ms);

/* ---- actions (api_actions.c) ---------------------------------------------------------------- */

/* The current policy set and its generation. */
const policy_set *api_current_policies(api_server *a, uint64_t *gen);
/* A decision worker's thread (started by api_new; arg is the api_server). */
void *api_worker_main(void *arg);
enum MHD_Result api_route_submit(api_server *a, request *rq);
void api_route_get_action(api_server *a, request *rq, const char *id);
void api_route_list_actions(api_server *a, request *rq);
enum MHD_Result api_route_cancel(api_server *a, request *rq, const char *id);
void api_route_resolve(api_server *a, request *rq, const char *id);
/* Load an action the caller may see (new reference); otherwise set a 404 and return NULL. */
json_t *api_load_visible(api_server *a, request *rq, const char *id);

/* ---- operator routes (api_admin.c) ---------------------------------------------------------- */

/* The current policy set's summary (new reference). */
json_t *api_policies_view(api_server *a);
/* Reply 200 {key: [render(record)...], "next": id or null} for a page from action_list (taken). */
void api_reply_page(request *rq, const char *key, json_t *page, const char *next, json_t *(*render)(const json_t *));
/* Count one decision's time in the histogram GET /v1/policies reports. */
void api_note_decision_time(api_server *a, uint64_t ns);
void api_route_reload_policies(api_server *a, request *rq);
void api_route_connectors(api_server *a, request *rq);
enum MHD_Result api_route_pause(api_server *a, request *rq, const char *name, int pause);
void api_route_list_approvals(api_server *a, request *rq);
void api_route_get_approval(api_server *a, request *rq, const char *id);
void api_route_decide_approval(api_server *a, request *rq, const char *id);
void api_route_set_autonomy(api_server *a, request *rq);
void api_route_whoami(request *rq);
void api_route_list_tokens(api_server *a, request *rq);
void api_route_create_token(api_server *a, request *rq);
void api_route_revoke_token(api_server *a, request *rq, const char *name);

/* ---- the vault (api_secrets.c) ------------------------------------------------------------ */

void api_route_list_secrets(api_server *a, request *rq);
/* param: "connector/name" */
void api_route_set_secret(api_server *a, request *rq, const char *param);
void api_route_remove_secret(api_server *a, request *rq, const char *param);
void api_route_rotate_vault(api_server *a, request *rq);

/* ---- metrics (api_metrics.c) ----------------------------------------------------------------- */

/* Create the registry and its families (api_new). */
int api_metrics_init(api_server *a, ar_error *err);
/* An action's new state is durable: count what it finished. Any thread; never blocks. */
void api_metrics_action(api_server *a, const json_t *rec);
void api_route_metrics(api_server *a, request *rq);
/* GET /v1/stats: per connector, latency quantiles, outcomes, error rate and cost per action. */
void api_route_stats(api_server *a, request *rq);
/* Waiter thread, unlocked: record the drift detections queued by api_metrics_action. */
void api_drift_record(api_server *a, json_t *detections /* taken */);

/* ---- the audit trail (api_audit.c) ---------------------------------------------------------- */

void api_route_action_audit(api_server *a, request *rq, const char *id);
void api_route_audit_stream(api_server *a, request *rq);
void api_route_audit_verify(api_server *a, request *rq);
void api_route_audit_head(api_server *a, request *rq);

#endif
