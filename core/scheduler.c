/* scheduler.c - dispatch, retries and reconciliation, each step journaled (see scheduler.h).
 * Functions marked "loop thread" run on the scheduler's event loop; the *_durable callbacks
 * run on the journal writer thread and only hand work back to the loop. */
#include "scheduler.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <aiorun/plugin.h>

#include "action.h"
#include "audit.h"
#include "flow.h"
#include "frame.h"
#include "loop.h"

typedef struct conn conn;

typedef enum job_place {
    JOB_NOWHERE = 0,   /* being handed around (journaling, posting) */
    JOB_QUEUED,        /* in its connector's ready queue */
    JOB_WAITING,       /* RETRY_WAIT, a timer pending */
    JOB_INFLIGHT       /* a call or lookup is running in a sandbox process */
} job_place;

typedef struct job {
    scheduler *s;
    conn *c;
    json_t *rec;                /* owned */
    char *input_text;           /* the input as JSON text, made once */
    job_place place;
    int64_t queued_mono_ms;     /* when it last entered its connector's queue (queue_wait) */
    int dispatch_recorded;      /* DISPATCHED for this attempt is already durable */
    int reconcile;              /* the next step asks the plugin's lookup, not invoke */
    int cancel_requested;
    char cancel_by[80];
    uint64_t timer;
    struct job *all_prev, *all_next; /* every job the scheduler holds (for cancel) */
    /* a pending cancel answered once the CANCELLED record is durable */
    scheduler_cancel_fn cancel_done;
    void *cancel_arg;
} job;

struct conn {
    scheduler *s;
    const config_connector *cc;
    sandbox_pool *pool;
    flow_heap queue;            /* jobs waiting to start, by priority with aging (loop thread) */
    int inflight;               /* journaling DISPATCHED or running in the pool */
    /* flow control (loop thread) */
    flow_bucket bucket;
    flow_breaker breaker;
    int paused;
    char paused_by[80];
    char pause_reason[256];
    int64_t paused_at_ms;
    int64_t rate_limited_until_ms;  /* the API asked the whole connector to wait */
    uint64_t wake_timer;            /* a pump once a block lifts */
    int64_t wake_at_ms;
    json_t *events;                 /* recent flow transitions, journaled with the state */
    /* what GET /v1/connectors shows, rebuilt on the loop thread */
    pthread_mutex_t view_lock;
    json_t *view;
};

struct scheduler {
    journal *journal;
    loop_t *loop;
    pthread_t thread;
    int thread_started;
    conn *conns;
    size_t n_conns;
    scheduler_notify_fn notify;
    void *notify_arg;
    scheduler_validate_fn validate;   /* set before work starts; called on the loop thread */
    scheduler_metrics metrics;        /* set before work starts */
    void *validate_arg;
    int stopping;               /* loop thread only */
    job *all;                   /* loop thread only */
    const config *cfg;
    size_t held;                /* jobs held (queued, waiting, in flight): read by the API */
    pthread_mutex_t lock;       /* guards the two counts below, read by scheduler_free */
    int inflight_total;         /* calls running in sandboxes */
    int journaling;             /* transitions submitted to the journal, not yet continued */
};

static void pump(conn *c);
static void pump_all(scheduler *s);
static void wake_in(conn *c, int64_t delay_ms);
static void publish(conn *c);

/* ---- jobs --------------------------------------------------------------------------------- */

static void held_add(scheduler *s, int delta)
{
    pthread_mutex_lock(&s->lock);
    s->held += delta;
    pthread_mutex_unlock(&s->lock);
}

static void job_forget(job *jb)
{
    scheduler *s = jb->s;
    if (jb->all_prev || jb->all_next || s->all == jb)
        held_add(s, -1);
    if (jb->all_prev)
        jb->all_prev->all_next = jb->all_next;
    else if (s->all == jb)
        s->all = jb->all_next;
    if (jb->all_next)
        jb->all_next->all_prev = jb->all_prev;
    jb->all_prev = jb->all_next = NULL;
}

static void job_free(job *jb)
{
    if (!jb)
        return;
    json_decref(jb->rec);
    free(jb->input_text);
    free(jb);
}

static conn *find_conn(scheduler *s, const char *name)
{
    for (size_t i = 0; i < s->n_conns; i++)
        if (strcmp(s->conns[i].cc->name, name) == 0)
            return &s->conns[i];
    return NULL;
}

static void inflight_add(conn *c, int delta)
{
    c->inflight += delta;
    pthread_mutex_lock(&c->s->lock);
    c->s->inflight_total += delta;
    pthread_mutex_unlock(&c->s->lock);
}

static int64_t rec_int(const json_t *rec, const char *key)
{
    return json_integer_value(json_object_get(rec, key));
}

/* Queue order: higher priority first, older first; every aging_ms of age is worth one priority
 * level, so the key is static and a heap keeps it. */
static int64_t queue_score(const job *jb)
{
    return rec_int(jb->rec, "created_ms") - rec_int(jb->rec, "priority") * (int64_t)jb->s->cfg->aging_ms;
}

/* Count one observation in a stage histogram {stage, connector} (when measured). */
static void observe_stage(conn *c, const char *stage, double seconds)
{
    if (c->s->metrics.stage_seconds)
        metrics_observe(c->s->metrics.stage_seconds, (const char *const[]){stage, c->cc->name}, seconds);
}

static void push_back(conn *c, job *jb)
{
    jb->place = JOB_QUEUED;
    jb->queued_mono_ms = ar_mono_ms();
    if (flow_heap_push(&c->queue, jb, queue_score(jb)) != AR_OK)
        ar_log_as("error", "scheduler", action_record_str(jb->rec, "id"),
                  "out of memory queueing action %s; it resumes at the next start", action_record_str(jb->rec, "id"));
}

/* Ahead of everything: an attempt already journaled that found no free process. */
static void push_front(conn *c, job *jb)
{
    jb->place = JOB_QUEUED;
    if (flow_heap_push(&c->queue, jb, INT64_MIN / 2) != AR_OK)
        ar_log_as("error", "scheduler", action_record_str(jb->rec, "id"), "out of memory queueing action %s",
                  action_record_str(jb->rec, "id"));
}

static void unqueue(conn *c, job *jb)
{
    flow_heap_remove(&c->queue, jb);
}

/* ---- the record's attempt history ------------------------------------------------------------ */

static json_t *last_history(json_t *rec)
{
    json_t *h = json_object_get(rec, "history");
    size_t n = json_array_size(h);
    return n ? json_array_get(h, n - 1) : NULL;
}

static void history_append(json_t *rec, json_t *entry /* takes */)
{
    json_t *h = json_object_get(rec, "history");
    if (!json_is_array(h)) {
        h = json_array();
        json_object_set_new(rec, "history", h);
    }
    json_array_append_new(h, entry);
}

/* What a call cost (res->cost, checked by the sandbox): kept on the newest history entry and
 * added into the record's running total "cost", unit -> amount over all attempts and lookups.
 * Whole amounts stay integers (token counts). */
static void record_cost(json_t *rec, const sandbox_result *res)
{
    json_t *e = last_history(rec);
    if (!res || !json_object_size(res->cost) || !e)
        return;
    json_object_set_new(e, "cost", json_deep_copy(res->cost));
    json_t *total = json_object_get(rec, "cost");
    if (!json_is_object(total)) {
        total = json_object();
        json_object_set_new(rec, "cost", total);
    }
    const char *unit;
    json_t *v;
    json_object_foreach((json_t *)res->cost, unit, v) {
        json_t *old = json_object_get(total, unit);
        double sum = json_number_value(old) + json_number_value(v);
        if (json_is_integer(v) && (!old || json_is_integer(old)) && sum <= 9007199254740992.0)
            json_object_set_new(total, unit, json_integer(json_integer_value(old) + json_integer_value(v)));
        else if (isfinite(sum))
            json_object_set_new(total, unit, json_real(sum));
    }
}

/* Note an outcome on the newest history entry. */
static void history_outcome(json_t *rec, const char *outcome, const sandbox_result *res, int64_t now)
{
    json_t *e = last_history(rec);
    if (!e)
        return;
    record_cost(rec, res);
    json_object_set_new(e, "outcome", json_string(outcome));
    json_object_set_new(e, "finished_ms", json_integer(now));
    if (res) {
        json_object_set_new(e, "latency_ms", json_integer(res->latency_us / 1000));
        if (res->http_status)
            json_object_set_new(e, "http_status", json_integer(res->http_status));
        if (!res->ok && res->error_message)
            json_object_set_new(e, "message", json_string(res->error_message));
    }
}

static void set_error(json_t *rec, const char *cls, const char *message)
{
    json_object_set_new(rec, "error", json_pack("{s:s, s:s}", "class", cls, "message", message ? message : ""));
}

/* ---- journaling a transition ------------------------------------------------------------------- */

typedef void (*after_fn)(job *jb);

typedef struct transition {
    job *jb;
    int status;
    after_fn after;   /* on the loop thread once durable; NULL: the job is finished */
} transition;

/* Loop thread: forget a job that reached its end (or could not be journaled). */
static void finish(job *jb)
{
    if (jb->cancel_done) {
        jb->cancel_done(jb->cancel_arg, AR_E_NOTFOUND, jb->rec);
        jb->cancel_done = NULL;
    }
    job_forget(jb);
    job_free(jb);
}

static void journaling_add(scheduler *s, int delta)
{
    pthread_mutex_lock(&s->lock);
    s->journaling += delta;
    pthread_mutex_unlock(&s->lock);
}

static void transition_continue(loop_t *loop, void *arg)
{
    (void)loop;
    transition *t = arg;
    job *jb = t->jb;
    scheduler *s = jb->s;
    after_fn after = t->status == AR_OK ? t->after : NULL;
    free(t);
    if (after)
        after(jb);
    else
        finish(jb);
    journaling_add(s, -1); /* after the next step is counted (see invoke_done) */
}

/* Writer thread: the record is durable (or refused). Report it; the loop goes on. */
static void transition_durable(void *arg, int status, journal_batch *b, const ar_error *err)
{
    transition *t = arg;
    job *jb = t->jb;
    journal_batch_free(b);
    t->status = status;
    if (status != AR_OK) {
        /* The journal still holds the previous state, which the next start resolves; this
         * process does not act on a state it could not record. */
        ar_log_as("error", "scheduler", action_record_str(jb->rec, "id"),
                  "cannot journal action %s as %s: %s; it is resumed at the next start",
                  action_record_str(jb->rec, "id"), action_state_name(action_record_state(jb->rec)),
                  err ? err->message : "unknown error");
    } else {
        if (jb->s->notify)
            jb->s->notify(jb->s->notify_arg, jb->rec);
        if (jb->cancel_done && action_record_state(jb->rec) == ACTION_CANCELLED) {
            jb->cancel_done(jb->cancel_arg, AR_OK, jb->rec);
            jb->cancel_done = NULL;
        }
    }
    if (loop_post(jb->s->loop, transition_continue, t) != AR_OK) {
        /* The loop is closed (the scheduler is being freed): the job is released with it. */
        scheduler *s = jb->s;
        free(t);
        journaling_add(s, -1);
    }
}

/* The audit entries of the state the record is being journaled in: what the scheduler did
 * (dispatched), what came back (completed, with the attempt's outcome), and how it ended. */
static void audit_transition(journal_batch *b, const json_t *rec)
{
    const char *id = action_record_str(rec, "id");
    json_t *last = json_array_get(json_object_get(rec, "history"), json_array_size(json_object_get(rec, "history")) - 1);
    json_t *attempt = json_object_get(rec, "attempts");
    const json_t *error = json_object_get(rec, "error");
    action_state st = action_record_state(rec);
    if (st == ACTION_DISPATCHED) {
        audit_batch_append(b, "dispatched", id, json_pack("{s:O, s:s, s:s}", "attempt", attempt,
                           "idempotency_key", action_record_str(rec, "idempotency_key"), "digest",
                           action_record_str(rec, "digest")));
        return;
    }
    if (json_is_object(last) && json_object_get(last, "outcome") && st != ACTION_CANCELLED) {
        json_t *cost = json_object_get(last, "cost"); /* what this call cost, when the plugin said */
        audit_batch_append(b, "completed", id, json_pack("{s:O, s:O, s:O, s:O, s:O, s:s, s:O}", "attempt", attempt,
                           "outcome", json_object_get(last, "outcome"),
                           "http_status", json_object_get(last, "http_status") ? json_object_get(last, "http_status") : json_null(),
                           "latency_ms", json_object_get(last, "latency_ms") ? json_object_get(last, "latency_ms") : json_null(),
                           "error_class", json_object_get(error, "class") ? json_object_get(error, "class") : json_null(),
                           "state", action_state_name(st), "cost", cost ? cost : json_null()));
    }
    if (json_is_object(json_object_get(rec, "validation")) && action_state_terminal(st))
        audit_batch_append(b, "validation_failed", id, json_deep_copy(json_object_get(rec, "validation")));
    if (st == ACTION_UNKNOWN_OUTCOME)
        audit_batch_append(b, "unknown_outcome", id, json_pack("{s:O, s:s}", "attempt", attempt, "reason",
                           json_string_value(json_object_get(error, "message")) ? json_string_value(json_object_get(error, "message")) : ""));
    else if (st == ACTION_CANCELLED)
        audit_batch_append(b, "cancelled", id, json_pack("{s:s}", "by", action_record_str(rec, "cancel_requested_by")));
}

/* Journal jb's record as it is now, then run after(jb) on the loop (NULL: finish the job). */
static void commit(job *jb, after_fn after)
{
    transition *t = calloc(1, sizeof *t);
    journal_batch *b = journal_batch_new();
    jb->place = JOB_NOWHERE;
    /* How it was recovered after a restart: audited with its next step, not stored. */
    json_t *recovered = json_incref(json_object_get(jb->rec, "recovered_how"));
    json_object_del(jb->rec, "recovered_how");
    if (recovered && b)
        audit_batch_append(b, "recovered", action_record_str(jb->rec, "id"), json_pack("{s:O}", "how", recovered));
    json_decref(recovered);
    if (!t || !b || action_batch_store(b, jb->rec) != AR_OK) {
        free(t);
        journal_batch_free(b);
        ar_log_as("error", "scheduler", action_record_str(jb->rec, "id"), "out of memory journaling action %s",
                  action_record_str(jb->rec, "id"));
        finish(jb);
        return;
    }
    audit_transition(b, jb->rec);
    t->jb = jb;
    t->after = after;
    journaling_add(jb->s, +1);
    if (journal_submit(jb->s->journal, b, transition_durable, t) != AR_OK) {
        journaling_add(jb->s, -1);
        journal_batch_free(b);
        free(t);
        finish(jb);
    }
}

/* End the action in a terminal state, durably. */
static void conclude(job *jb, action_state st)
{
    json_object_del(jb->rec, "next_attempt_ms");
    json_object_del(jb->rec, "reconcile");
    action_record_set_state(jb->rec, st, ar_now_ms());
    commit(jb, NULL);
}

/* ---- what follows an outcome ----------------------------------------------------------------- */

typedef enum outcome_kind { OUT_OK, OUT_FAIL, OUT_RETRY, OUT_UNKNOWN } outcome_kind;

static outcome_kind classify(const sandbox_result *res)
{
    if (res->ok)
        return OUT_OK;
    switch (res->error_class) {
    case AIORUN_E_RETRYABLE:
    case AIORUN_E_RATE_LIMITED:
        return OUT_RETRY;
    case AIORUN_E_TIMEOUT:
    case AIORUN_E_PLUGIN_CRASHED:
        return OUT_UNKNOWN;
    default:
        return OUT_FAIL;
    }
}

static const char *mode_of(const json_t *rec)
{
    const char *m = action_record_str(rec, "idempotency");
    return *m ? m : "none";
}

static int is_read(const json_t *rec)
{
    return strcmp(action_record_str(rec, "effect"), "read") == 0;
}

/* Did an earlier attempt perhaps act? Then stopping leaves the outcome unknown. */
static int maybe_happened(const json_t *rec)
{
    return json_is_true(json_object_get(rec, "maybe_happened")) && !is_read(rec);
}

/* Attempts this action may make: the connector's budget, plus what an operator granted when
 * resolving it for a retry. */
static int attempt_limit(const job *jb)
{
    return jb->c->cc->retry.max_attempts + (int)rec_int(jb->rec, "attempt_allowance");
}

/* Full jitter: uniform in [0, min(max_ms, initial_ms * multiplier^(attempt-1))]. */
static int64_t backoff_ms(const config_retry *r, int attempt)
{
    double cap = r->initial_ms;
    for (int i = 1; i < attempt && cap < r->max_ms; i++)
        cap *= r->multiplier;
    if (cap > r->max_ms)
        cap = r->max_ms;
    return (int64_t)randombytes_uniform((uint32_t)cap + 1);
}

/* No further attempt: end in the state that tells the truth. */
static void give_up(job *jb, const char *cls, const char *message)
{
    set_error(jb->rec, cls, message);
    conclude(jb, maybe_happened(jb->rec) ? ACTION_UNKNOWN_OUTCOME : ACTION_FAILED);
}

static void arm_timer(job *jb);

/* Another attempt (or lookup) is wanted after delay_ms: RETRY_WAIT durably, unless a cancel, the
 * attempt budget or the deadline says otherwise. retry_after_ms: what the API asked (-1: none). */
static void retry_later(job *jb, int64_t delay_ms, int64_t retry_after_ms, const char *cls,
                        const char *message)
{
    json_t *rec = jb->rec;
    int attempts = (int)rec_int(rec, "attempts");
    int64_t now = ar_now_ms(), deadline = rec_int(rec, "deadline_ms");
    char msg[768];
    if (jb->cancel_requested) {
        snprintf(msg, sizeof msg, "cancelled by %s; the last attempt ended: %s", jb->cancel_by, message);
        set_error(rec, "cancelled", msg);
        conclude(jb, maybe_happened(rec) ? ACTION_UNKNOWN_OUTCOME : ACTION_CANCELLED);
        return;
    }
    if (!jb->reconcile && attempts >= attempt_limit(jb)) {
        snprintf(msg, sizeof msg, "%s (gave up after %d attempts)", message, attempts);
        give_up(jb, cls, msg);
        return;
    }
    if (retry_after_ms > delay_ms)
        delay_ms = retry_after_ms;
    if (deadline && now + delay_ms >= deadline) {
        if (retry_after_ms >= 0 && now + retry_after_ms >= deadline) {
            snprintf(msg, sizeof msg, "the API asked to wait %lld ms, beyond the action's deadline (%s)",
                     (long long)retry_after_ms, message);
            give_up(jb, "rate_limited", msg);
        } else {
            snprintf(msg, sizeof msg, "the action's deadline leaves no time for another attempt (%s)", message);
            give_up(jb, cls, msg);
        }
        return;
    }
    if (jb->s->metrics.retries)
        metrics_add(jb->s->metrics.retries, (const char *const[]){jb->c->cc->name}, 1);
    set_error(rec, cls, message);
    json_object_set_new(rec, "next_attempt_ms", json_integer(now + delay_ms));
    json_object_set_new(rec, "reconcile", json_boolean(jb->reconcile));
    action_record_set_state(rec, ACTION_RETRY_WAIT, now);
    commit(jb, arm_timer);
}

/* What an unknown outcome leads to, by the action's idempotency support. */
static void after_unknown(job *jb, int64_t retry_after_ms, const char *cls, const char *message)
{
    json_t *rec = jb->rec;
    const char *mode = mode_of(rec);
    json_object_set_new(rec, "maybe_happened", json_true());
    int64_t delay = backoff_ms(&jb->c->cc->retry, (int)rec_int(rec, "attempts"));
    if (strcmp(mode, "lookup") == 0) {
        jb->reconcile = 1;
        retry_later(jb, delay, retry_after_ms, cls, message);
    } else if (strcmp(mode, "native") == 0 || is_read(rec)) {
        retry_later(jb, delay, retry_after_ms, cls, message);
    } else {
        char msg[768];
        snprintf(msg, sizeof msg, "%s; the API may or may not have acted, and this action cannot be "
                 "repeated safely (idempotency: none): an operator must check and resolve it", message);
        set_error(rec, "unknown_outcome", msg);
        conclude(jb, ACTION_UNKNOWN_OUTCOME);
    }
}

/* ---- calls ---------------------------------------------------------------------------------------- */

static const char *class_name(int cls)
{
    const char *n = frame_class_name(cls);
    return n ? n : "permanent";
}

static void flow_event(conn *c, const char *event, const char *detail);

/* What a finished call tells about the API's health and pace. */
static void observe(conn *c, const sandbox_result *res)
{
    observe_stage(c, "connector_call", (double)res->latency_us / 1e6);
    if (!res->ok && c->s->metrics.errors)
        metrics_add(c->s->metrics.errors, (const char *const[]){c->cc->name, class_name(res->error_class)}, 1);
    int64_t now = ar_now_ms();
    int unhealthy = !res->ok && (res->error_class == AIORUN_E_RETRYABLE || res->error_class == AIORUN_E_TIMEOUT ||
                                 res->error_class == AIORUN_E_PLUGIN_CRASHED);
    int changed = 0;
    const char *cls = res->ok ? "ok" : frame_class_name(res->error_class);
    flow_breaker_record(&c->breaker, unhealthy, cls, now, &changed);
    if (changed) {
        char detail[320];
        snprintf(detail, sizeof detail, "%s%s%s", flow_breaker_state_name(c->breaker.state),
                 c->breaker.state == BREAKER_OPEN ? ": " : "", c->breaker.state == BREAKER_OPEN ? c->breaker.reason : "");
        flow_event(c, "breaker", detail);
        ar_log_as(c->breaker.state == BREAKER_OPEN ? "warn" : "info", "scheduler", NULL,
                  "connector %s: circuit breaker %s", c->cc->name, detail);
    }
    /* The API asked to slow down: the whole connector waits, not only this action. */
    if (!res->ok && res->error_class == AIORUN_E_RATE_LIMITED && res->retry_after_ms > 0 &&
        now + res->retry_after_ms > c->rate_limited_until_ms) {
        c->rate_limited_until_ms = now + res->retry_after_ms;
        char detail[64];
        snprintf(detail, sizeof detail, "for %lld ms", (long long)res->retry_after_ms);
        flow_event(c, "rate_limited", detail);
    }
}

/* A successful result: validate it, then end the action. A rejected read fails; a rejected
 * write already acted, so it succeeds flagged for review (never retried). Takes result. */
static void accept_result(job *jb, json_t *result)
{
    json_t *rec = jb->rec;
    json_object_set_new(rec, "result", result);
    json_object_del(rec, "error");
    json_t *rejection = jb->s->validate ? jb->s->validate(jb->s->validate_arg, rec, result) : NULL;
    if (!rejection) {
        conclude(jb, ACTION_SUCCEEDED);
        return;
    }
    json_object_set_new(rejection, "ok", json_false());
    const char *reason = json_string_value(json_object_get(rejection, "reason"));
    char message[640];
    snprintf(message, sizeof message, "the result was rejected by validate: %s", reason ? reason : "");
    json_object_set_new(rec, "validation", rejection);
    if (is_read(rec)) {
        set_error(rec, "validation_failed", message);
        conclude(jb, ACTION_FAILED);
        return;
    }
    json_object_set_new(rec, "review", json_true());
    ar_log_as("warn", "scheduler", action_record_str(rec, "id"),
              "action %s: %s; it acted already, so it ends SUCCEEDED flagged for review", action_record_str(rec, "id"),
              message);
    conclude(jb, ACTION_SUCCEEDED);
}

/* Loop thread: the plugin answered an invoke (or crashed, or timed out). */
static void invoke_done(void *arg, const sandbox_result *res)
{
    job *jb = arg;
    conn *c = jb->c;
    scheduler *s = jb->s;
    /* The in-flight count drops only after the outcome's journaling is counted (at the end),
     * so that scheduler_free never sees a moment with nothing busy while work remains. */
    if (!s->stopping)
        observe(c, res);
    if (s->stopping) {
        /* Shutting down: what the pool reports now may not be what happened at the API. The
         * action stays DISPATCHED on disk for recovery. */
        inflight_add(c, -1);
        finish(jb);
        return;
    }
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms();
    json_object_set_new(rec, "latency_us", json_integer(res->latency_us));
    switch (classify(res)) {
    case OUT_OK: {
        json_error_t jerr;
        json_t *result = json_loadb(res->result_json, res->result_len, JSON_DECODE_ANY, &jerr);
        history_outcome(rec, "ok", res, now);
        if (!result) {
            /* The call happened but its answer is unreadable: not a plain failure. */
            json_object_set_new(rec, "maybe_happened", json_true());
            give_up(jb, "plugin_crashed", "the plugin's result is not JSON");
            break;
        }
        accept_result(jb, result);
        break;
    }
    case OUT_FAIL:
        history_outcome(rec, class_name(res->error_class), res, now);
        give_up(jb, class_name(res->error_class), res->error_message);
        break;
    case OUT_RETRY:
        history_outcome(rec, class_name(res->error_class), res, now);
        retry_later(jb, backoff_ms(&c->cc->retry, (int)rec_int(rec, "attempts")), res->retry_after_ms,
                    class_name(res->error_class), res->error_message);
        break;
    case OUT_UNKNOWN:
        history_outcome(rec, class_name(res->error_class), res, now);
        after_unknown(jb, res->retry_after_ms, class_name(res->error_class), res->error_message);
        break;
    }
    inflight_add(c, -1);
    pump_all(s); /* a call slot freed here may serve another connector under max_inflight */
}

/* Loop thread: the plugin's lookup answered whether the attempt with this key happened. */
static void lookup_done(void *arg, const sandbox_result *res)
{
    job *jb = arg;
    conn *c = jb->c;
    scheduler *s = jb->s;
    if (!s->stopping && !(res->ok == 0 && res->error_class == AIORUN_E_NOT_FOUND))
        observe(c, res);
    if (s->stopping) {
        inflight_add(c, -1);
        finish(jb);
        return;
    }
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms();
    if (res->ok) {
        json_error_t jerr;
        json_t *result = json_loadb(res->result_json, res->result_len, JSON_DECODE_ANY, &jerr);
        history_append(rec, json_pack("{s:s, s:s, s:I, s:s}", "kind", "lookup", "key",
                                      action_record_str(rec, "idempotency_key"), "finished_ms",
                                      (json_int_t)now, "outcome", "happened"));
        record_cost(rec, res);
        json_object_set_new(rec, "reconciled", json_true());
        jb->reconcile = 0;
        accept_result(jb, result ? result : json_null());
    } else if (res->error_class == AIORUN_E_NOT_FOUND) {
        /* It did not happen: nothing is pending at the API, send it again with the same key. */
        history_append(rec, json_pack("{s:s, s:s, s:I, s:s}", "kind", "lookup", "key",
                                      action_record_str(rec, "idempotency_key"), "finished_ms",
                                      (json_int_t)now, "outcome", "not_happened"));
        record_cost(rec, res);
        json_object_set_new(rec, "maybe_happened", json_false());
        jb->reconcile = 0;
        if (jb->cancel_requested) {
            set_error(rec, "cancelled", "cancelled; the plugin's lookup confirmed nothing happened");
            conclude(jb, ACTION_CANCELLED);
        } else if ((int)rec_int(rec, "attempts") >= attempt_limit(jb)) {
            give_up(jb, "retryable", "the plugin's lookup says the last attempt did not happen, and no attempts are left");
        } else {
            push_front(c, jb);
        }
    } else {
        /* The lookup itself failed: try it again later; the outcome stays unknown meanwhile. */
        history_append(rec, json_pack("{s:s, s:I, s:s, s:s}", "kind", "lookup", "finished_ms", (json_int_t)now,
                                      "outcome", class_name(res->error_class), "message",
                                      res->error_message ? res->error_message : ""));
        record_cost(rec, res);
        retry_later(jb, backoff_ms(&c->cc->retry, (int)rec_int(rec, "attempts")), res->retry_after_ms,
                    class_name(res->error_class), res->error_message);
    }
    inflight_add(c, -1);
    pump_all(s);
}

static sandbox_call call_of(job *jb)
{
    int64_t now = ar_now_ms(), deadline = rec_int(jb->rec, "deadline_ms");
    int timeout = jb->c->cc->timeout_ms;
    if (deadline && deadline - now < timeout)
        timeout = deadline - now < 1 ? 1 : (int)(deadline - now);
    return (sandbox_call){
        .action = action_record_str(jb->rec, "action"),
        .input_json = jb->input_text,
        .input_len = strlen(jb->input_text),
        .idempotency_key = action_record_str(jb->rec, "idempotency_key"),
        .attempt = (int)rec_int(jb->rec, "attempts"),
        .timeout_ms = timeout,
    };
}

/* Loop thread: DISPATCHED is durable; the call may now cross into the plugin's process. */
static void send_invoke(job *jb)
{
    conn *c = jb->c;
    jb->dispatch_recorded = 1;
    if (jb->s->stopping) {
        inflight_add(c, -1);
        finish(jb);
        return;
    }
    sandbox_call call = call_of(jb);
    jb->place = JOB_INFLIGHT;
    if (sandbox_pool_invoke(c->pool, &call, invoke_done, jb) == AR_OK)
        return;
    /* No idle process after all (one died meanwhile): wait at the head of the queue. The
     * attempt is journaled already, so it is sent as it is when a process frees up. The pool's
     * "idle" event may have come while the attempt was being journaled, so look again soon
     * rather than wait for one that never comes. */
    inflight_add(c, -1);
    push_front(c, jb);
    wake_in(c, 50);
}

/* Loop thread: start one queued job (a process is free). */
/* Returns 1 when a call (or lookup) is on its way, 0 when the job ended or waits again. */
static int start(job *jb)
{
    conn *c = jb->c;
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms(), deadline = rec_int(rec, "deadline_ms");
    if (jb->cancel_requested && !jb->dispatch_recorded) {
        char msg[160];
        snprintf(msg, sizeof msg, "cancelled by %s before it was dispatched", jb->cancel_by);
        set_error(rec, "cancelled", msg);
        conclude(jb, maybe_happened(rec) ? ACTION_UNKNOWN_OUTCOME : ACTION_CANCELLED);
        return 0;
    }
    if (deadline && now >= deadline && !jb->dispatch_recorded) {
        give_up(jb, "timeout", "the action's deadline passed before it could be dispatched");
        return 0;
    }
    if (jb->reconcile) {
        sandbox_call call = call_of(jb);
        inflight_add(c, +1);
        jb->place = JOB_INFLIGHT;
        int rc = sandbox_pool_lookup(c->pool, &call, lookup_done, jb);
        if (rc == AR_OK)
            return 1;
        inflight_add(c, -1);
        if (rc == AR_E_BUSY) {
            /* As in send_invoke: never rely on an idle event that may have gone by. */
            push_front(c, jb);
            wake_in(c, 50);
            return 0;
        }
        /* The plugin has no lookup after all: the outcome cannot be reconciled. */
        jb->reconcile = 0;
        set_error(rec, "unknown_outcome", "the plugin offers no lookup, so whether the last attempt "
                  "happened cannot be known: an operator must check and resolve it");
        conclude(jb, ACTION_UNKNOWN_OUTCOME);
        return 0;
    }
    if (!jb->dispatch_recorded && (int)rec_int(rec, "attempts") >= attempt_limit(jb)) {
        give_up(jb, "retryable", "no attempts are left");
        return 0;
    }
    inflight_add(c, +1);
    if (jb->dispatch_recorded) {
        send_invoke(jb);
        return 1;
    }
    if (jb->queued_mono_ms)
        observe_stage(c, "queue_wait", (double)(ar_mono_ms() - jb->queued_mono_ms) / 1000.0);
    int attempt = (int)rec_int(rec, "attempts") + 1;
    json_object_set_new(rec, "attempts", json_integer(attempt));
    json_object_del(rec, "next_attempt_ms");
    json_object_del(rec, "reconcile");
    history_append(rec, json_pack("{s:s, s:i, s:s, s:s, s:I, s:I}", "kind", "invoke", "attempt", attempt,
                                  "key", action_record_str(rec, "idempotency_key"),
                                  "digest", action_record_str(rec, "digest"),
                                  "deadline_ms", (json_int_t)deadline, "started_ms", (json_int_t)now));
    action_record_set_state(rec, ACTION_DISPATCHED, now);
    commit(jb, send_invoke);
    return 1;
}

static int pool_ready(conn *c)
{
    sandbox_state state;
    int serving;
    sandbox_pool_capacity(c->pool, &state, &serving); /* per dispatch: no descriptor copy */
    int limit = serving < c->cc->concurrency ? serving : c->cc->concurrency;
    return state == SANDBOX_READY && c->inflight < limit;
}

static void flow_event(conn *c, const char *event, const char *detail);

static void wake(loop_t *loop, void *arg)
{
    (void)loop;
    conn *c = arg;
    c->wake_timer = 0;
    pump(c);
}

/* Pump again in delay_ms (keeping the earliest wake already set). */
static void wake_in(conn *c, int64_t delay_ms)
{
    int64_t at = ar_mono_ms() + (delay_ms > 0 ? delay_ms : 0);
    if (c->wake_timer && c->wake_at_ms <= at)
        return;
    if (c->wake_timer)
        loop_timer_cancel(c->s->loop, c->wake_timer);
    c->wake_at_ms = at;
    c->wake_timer = loop_timer_add(c->s->loop, at, wake, c);
}

/* While the connector cannot dispatch, actions keep waiting (they do not fail) until their
 * deadline; then they fail with the reason they waited for. */
static void expire_waiting(conn *c, const char *cls, const char *why)
{
    int64_t now = ar_now_ms();
    for (size_t i = 0; i < c->queue.n;) {
        job *jb = c->queue.items[i];
        int64_t deadline = rec_int(jb->rec, "deadline_ms");
        if (!jb->dispatch_recorded && deadline && now >= deadline) {
            flow_heap_remove(&c->queue, jb);
            char msg[400];
            snprintf(msg, sizeof msg, "the action's deadline passed while %s", why);
            give_up(jb, cls, msg);
            continue;
        }
        i++;
    }
}

/* Why can nothing start now? NULL when something may; else the reason, with *wait_ms set to
 * when to look again (-1: an event will pump). */
static const char *blocked(conn *c, int64_t now, int64_t *wait_ms, const char **cls, int *trial)
{
    int changed = 0;
    *cls = "timeout";
    *trial = 0;
    if (c->paused) {
        *wait_ms = 500;
        return "the connector is paused";
    }
    if (c->rate_limited_until_ms > now) {
        *wait_ms = c->rate_limited_until_ms - now;
        *cls = "rate_limited";
        return "the API asked the connector to wait (Retry-After)";
    }
    if (c->breaker.state == BREAKER_OPEN && now < c->breaker.open_until_ms) {
        *wait_ms = c->breaker.open_until_ms - now;
        *cls = "circuit_open";
        return "the connector's circuit breaker was open";
    }
    if (!pool_ready(c)) {
        *wait_ms = -1;
        return "every process of the connector was busy or down";
    }
    pthread_mutex_lock(&c->s->lock);
    int global = c->s->inflight_total;
    pthread_mutex_unlock(&c->s->lock);
    if (global >= c->s->cfg->max_inflight) {
        *wait_ms = -1;
        return "the daemon's max_inflight was reached";
    }
    /* Low-priority work waits while the bucket runs low, keeping room for the rest. */
    job *top = flow_heap_peek(&c->queue, NULL);
    double reserve = c->bucket.burst / 4 > 1 ? c->bucket.burst / 4 : 1;
    double need = top && rec_int(top->rec, "priority") < 0 && !top->dispatch_recorded ? reserve : 1;
    int64_t w = flow_bucket_wait_ms(&c->bucket, need, now);
    if (w > 0) {
        *wait_ms = w;
        *cls = "rate_limited";
        return "the connector's rate limit held it back";
    }
    if (!flow_breaker_allow(&c->breaker, now, &changed)) {
        if (changed)
            flow_event(c, "breaker", flow_breaker_state_name(c->breaker.state));
        *wait_ms = c->breaker.state == BREAKER_OPEN ? c->breaker.open_until_ms - now : -1;
        *cls = "circuit_open";
        return "the connector's circuit breaker was open";
    }
    if (changed)
        flow_event(c, "breaker", flow_breaker_state_name(c->breaker.state));
    *trial = c->breaker.state == BREAKER_HALF_OPEN;
    return NULL;
}

/* Loop thread: start as many queued jobs as the connector and the daemon allow. */
static void pump(conn *c)
{
    while (c->queue.n && !c->s->stopping) {
        int64_t now = ar_now_ms(), wait_ms;
        int trial;
        const char *cls, *why = blocked(c, now, &wait_ms, &cls, &trial);
        if (why) {
            expire_waiting(c, cls, why);
            /* Look again when the block may lift, and at least every 500 ms to sweep deadlines. */
            if (c->queue.n)
                wake_in(c, wait_ms >= 0 && wait_ms < 500 ? wait_ms : 500);
            break;
        }
        job *jb = flow_heap_pop(&c->queue);
        flow_bucket_take(&c->bucket, now);
        if (!start(jb) && trial)
            c->breaker.trials_started--; /* no call went out: the trial slot is still free */
    }
    publish(c);
}

static void pump_all(scheduler *s)
{
    for (size_t i = 0; i < s->n_conns; i++)
        pump(&s->conns[i]);
}

static void on_pool_event(void *arg, sandbox_pool *pool)
{
    (void)pool;
    pump(arg);
}

/* ---- flow state: journaled, shown ----------------------------------------------------------- */

static json_t *time_or_null(int64_t ms)
{
    if (!ms)
        return json_null();
    char buf[AR_TIME_LEN];
    ar_time_rfc3339(ms, buf);
    return json_string(buf);
}

/* The connector's flow state as stored in JDB_CONNECTORS (new reference). */
static json_t *flow_record(conn *c)
{
    return json_pack("{s:s, s:b, s:s, s:s, s:I, s:o, s:O}", "name", c->cc->name, "paused", c->paused,
                     "paused_by", c->paused_by, "pause_reason", c->pause_reason, "paused_at_ms",
                     (json_int_t)c->paused_at_ms, "breaker", flow_breaker_view(&c->breaker), "events", c->events);
}

static void flow_saved(void *arg, int status, journal_batch *b, const ar_error *err)
{
    char *name = arg;
    if (status != AR_OK)
        ar_log_as("error", "scheduler", NULL, "cannot journal the flow state of connector %s: %s", name,
                  err ? err->message : "?");
    free(name);
    journal_batch_free(b);
}

/* Journal the connector's flow state, with the audit entry of the change when event is set;
 * done(arg, status) once durable (NULL: fire and forget). */
static void save_flow_event(conn *c, const char *event, json_t *event_data, journal_done_fn done, void *arg)
{
    json_t *rec = flow_record(c);
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    journal_batch *b = journal_batch_new();
    if (!text || !b) {
        free(text);
        journal_batch_free(b);
        json_decref(event_data);
        return;
    }
    journal_batch_put(b, JDB_CONNECTORS, c->cc->name, strlen(c->cc->name), text, strlen(text));
    free(text);
    if (event)
        audit_batch_append(b, event, NULL, event_data);
    else
        json_decref(event_data);
    if (!done) {
        done = flow_saved;
        arg = strdup(c->cc->name);
    }
    if (journal_submit(c->s->journal, b, done, arg) != AR_OK)
        journal_batch_free(b);
}

/* A transition of the connector's flow: remembered (the last 50), journaled and audited, shown. */
static void flow_event(conn *c, const char *event, const char *detail)
{
    json_array_append_new(c->events, json_pack("{s:I, s:s, s:s}", "at_ms", (json_int_t)ar_now_ms(), "event", event,
                                                "detail", detail ? detail : ""));
    while (json_array_size(c->events) > 50)
        json_array_remove(c->events, 0);
    save_flow_event(c, event, json_pack("{s:s, s:s}", "connector", c->cc->name, "detail", detail ? detail : ""),
                    NULL, NULL);
    publish(c);
}

/* Rebuild what GET /v1/connectors shows of the connector's flow. */
static void publish(conn *c)
{
    int64_t now = ar_now_ms();
    json_t *breaker = flow_breaker_view(&c->breaker);
    json_object_set_new(breaker, "since", time_or_null(json_integer_value(json_object_get(breaker, "since_ms"))));
    json_object_set_new(breaker, "next_trial_at",
                        time_or_null(json_integer_value(json_object_get(breaker, "next_trial_ms"))));
    json_object_del(breaker, "since_ms");
    json_object_del(breaker, "next_trial_ms");
    json_t *rate = c->cc->rate_per_second > 0
                       ? json_pack("{s:f, s:i, s:f}", "per_second", c->cc->rate_per_second, "burst", c->cc->rate_burst,
                                   "tokens", flow_bucket_level(&c->bucket, now))
                       : json_null();
    json_t *view = json_pack("{s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:i, s:I}", "paused", c->paused,
                             "paused_by", c->paused ? json_string(c->paused_by) : json_null(),
                             "paused_at", c->paused ? time_or_null(c->paused_at_ms) : json_null(),
                             "pause_reason", c->paused && c->pause_reason[0] ? json_string(c->pause_reason) : json_null(),
                             "rate_limited_until", c->rate_limited_until_ms > now ? time_or_null(c->rate_limited_until_ms) : json_null(),
                             "breaker", breaker, "rate_limit", rate, "concurrency", c->cc->concurrency,
                             "inflight", c->inflight, "queued", (json_int_t)c->queue.n);
    pthread_mutex_lock(&c->view_lock);
    json_decref(c->view);
    c->view = view;
    pthread_mutex_unlock(&c->view_lock);
}

/* At start: a pause outlives the daemon. */
static void restore_flow(conn *c)
{
    journal_read *r;
    if (journal_read_begin(c->s->journal, &r, NULL) != AR_OK)
        return;
    const void *val;
    size_t len;
    if (journal_get(r, JDB_CONNECTORS, c->cc->name, strlen(c->cc->name), &val, &len) == AR_OK) {
        json_t *rec = json_loadb(val, len, 0, NULL);
        if (json_is_true(json_object_get(rec, "paused"))) {
            c->paused = 1;
            const char *by = json_string_value(json_object_get(rec, "paused_by"));
            const char *why = json_string_value(json_object_get(rec, "pause_reason"));
            snprintf(c->paused_by, sizeof c->paused_by, "%s", by ? by : "");
            snprintf(c->pause_reason, sizeof c->pause_reason, "%s", why ? why : "");
            c->paused_at_ms = json_integer_value(json_object_get(rec, "paused_at_ms"));
        }
        json_t *events = json_object_get(rec, "events");
        if (json_is_array(events))
            json_array_extend(c->events, events);
        json_decref(rec);
    }
    journal_read_end(r);
}

typedef struct pause_req {
    scheduler *s;
    char name[80];
    int pause;
    char who[80];
    char reason[256];
    scheduler_flow_fn done;
    void *arg;
} pause_req;

static void pause_durable(void *arg, int status, journal_batch *b, const ar_error *err)
{
    pause_req *pr = arg;
    journal_batch_free(b);
    json_t *view = NULL;
    if (status == AR_OK)
        scheduler_connector_flow(pr->s, pr->name, &view);
    else
        ar_log_as("error", "scheduler", NULL, "cannot journal the pause of %s: %s", pr->name, err ? err->message : "?");
    pr->done(pr->arg, status, view);
    json_decref(view);
    free(pr);
}

static void pause_on_loop(loop_t *loop, void *arg)
{
    (void)loop;
    pause_req *pr = arg;
    conn *c = find_conn(pr->s, pr->name);
    if (!c) {
        pr->done(pr->arg, AR_E_NOTFOUND, NULL);
        free(pr);
        return;
    }
    c->paused = pr->pause;
    if (pr->pause) {
        snprintf(c->paused_by, sizeof c->paused_by, "%s", pr->who);
        snprintf(c->pause_reason, sizeof c->pause_reason, "%s", pr->reason);
        c->paused_at_ms = ar_now_ms();
    } else {
        c->paused_by[0] = c->pause_reason[0] = '\0';
        c->paused_at_ms = 0;
    }
    char detail[400];
    snprintf(detail, sizeof detail, "by %s%s%s", pr->who, pr->reason[0] ? ": " : "", pr->reason);
    json_array_append_new(c->events, json_pack("{s:I, s:s, s:s}", "at_ms", (json_int_t)ar_now_ms(), "event",
                                                pr->pause ? "paused" : "resumed", "detail", detail));
    ar_log_as("info", "scheduler", NULL, "connector %s %s %s", c->cc->name, pr->pause ? "paused" : "resumed", detail);
    publish(c);
    save_flow_event(c, pr->pause ? "connector_paused" : "connector_resumed",
                    json_pack("{s:s, s:s, s:s}", "connector", c->cc->name, "by", pr->who, "reason", pr->reason),
                    pause_durable, pr);
    if (!c->paused)
        pump(c);
}

typedef struct restart_req {
    scheduler *s;
    char name[80];
} restart_req;

static void restart_on_loop(loop_t *loop, void *arg)
{
    (void)loop;
    restart_req *rr = arg;
    conn *c = find_conn(rr->s, rr->name);
    if (c && sandbox_pool_recycle(c->pool) == AR_OK)
        ar_log_as("info", "scheduler", NULL, "connector %s: replacing its processes to pick up changed secrets",
                  c->cc->name);
    free(rr);
}

int scheduler_restart_connector(scheduler *s, const char *name)
{
    if (!s)
        return AR_E_CLOSED;
    if (!config_find_connector(s->cfg, name))
        return AR_E_NOTFOUND;
    restart_req *rr = calloc(1, sizeof *rr);
    if (!rr)
        return AR_E_NOMEM;
    rr->s = s;
    snprintf(rr->name, sizeof rr->name, "%s", name);
    if (loop_post(s->loop, restart_on_loop, rr) != AR_OK) {
        free(rr);
        return AR_E_CLOSED;
    }
    return AR_OK;
}

int scheduler_pause(scheduler *s, const char *name, int pause, const char *who, const char *reason,
                    scheduler_flow_fn done, void *arg)
{
    if (!s)
        return AR_E_CLOSED;
    pause_req *pr = calloc(1, sizeof *pr);
    if (!pr)
        return AR_E_NOMEM;
    pr->s = s;
    snprintf(pr->name, sizeof pr->name, "%s", name);
    pr->pause = pause;
    snprintf(pr->who, sizeof pr->who, "%s", who);
    snprintf(pr->reason, sizeof pr->reason, "%s", reason ? reason : "");
    pr->done = done;
    pr->arg = arg;
    int rc = loop_post(s->loop, pause_on_loop, pr);
    if (rc != AR_OK)
        free(pr);
    return rc;
}

int scheduler_connector_flow(scheduler *s, const char *name, json_t **out)
{
    if (!s)
        return AR_E_NOTFOUND;
    conn *c = find_conn(s, name);
    if (!c)
        return AR_E_NOTFOUND;
    pthread_mutex_lock(&c->view_lock);
    *out = c->view ? json_deep_copy(c->view) : json_object();
    pthread_mutex_unlock(&c->view_lock);
    return AR_OK;
}

size_t scheduler_held(scheduler *s)
{
    if (!s)
        return 0;
    pthread_mutex_lock(&s->lock);
    size_t n = s->held;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---- RETRY_WAIT timers ---------------------------------------------------------------------------- */

static void timer_fired(loop_t *loop, void *arg)
{
    (void)loop;
    job *jb = arg;
    jb->timer = 0;
    push_back(jb->c, jb);
    pump(jb->c);
}

/* Loop thread: RETRY_WAIT is durable; wake up at next_attempt_ms. */
static void arm_timer(job *jb)
{
    int64_t wait = rec_int(jb->rec, "next_attempt_ms") - ar_now_ms();
    jb->dispatch_recorded = 0;
    jb->place = JOB_WAITING;
    jb->timer = loop_timer_add(jb->s->loop, ar_mono_ms() + (wait > 0 ? wait : 0), timer_fired, jb);
    if (!jb->timer) /* out of memory for a timer: try at once rather than never */
        timer_fired(jb->s->loop, jb);
}

/* ---- entry points ------------------------------------------------------------------------------- */

static job *job_new(scheduler *s, json_t *rec)
{
    job *jb = calloc(1, sizeof *jb);
    if (!jb)
        return NULL;
    jb->s = s;
    jb->rec = rec;
    json_t *input = json_object_get(rec, "input");
    jb->input_text = json_dumps(input ? input : json_object(), JSON_COMPACT | JSON_ENCODE_ANY);
    jb->reconcile = json_is_true(json_object_get(rec, "reconcile"));
    if (!jb->input_text) {
        free(jb);
        return NULL;
    }
    return jb;
}

/* Loop thread: take a job in, by the state its record is in. */
static void accept_job(loop_t *loop, void *arg)
{
    (void)loop;
    job *jb = arg;
    scheduler *s = jb->s;
    conn *c = find_conn(s, action_record_str(jb->rec, "connector"));
    if (!c || s->stopping) {
        /* Unknown connector (removed from the config): it stays as it is on disk. */
        held_add(s, -1);
        job_free(jb);
        return;
    }
    jb->c = c;
    jb->all_next = s->all;
    if (s->all)
        s->all->all_prev = jb;
    s->all = jb;
    if (action_record_state(jb->rec) == ACTION_RETRY_WAIT) {
        arm_timer(jb);
        return;
    }
    push_back(c, jb);
    pump(c);
}

void scheduler_set_metrics(scheduler *s, const scheduler_metrics *m)
{
    s->metrics = *m;
}

void scheduler_set_validator(scheduler *s, scheduler_validate_fn fn, void *arg)
{
    s->validate = fn;
    s->validate_arg = arg;
}

int scheduler_enqueue(scheduler *s, json_t *rec)
{
    if (!s) {
        json_decref(rec);
        return AR_E_CLOSED;
    }
    job *jb = job_new(s, rec);
    if (!jb) {
        json_decref(rec);
        return AR_E_NOMEM;
    }
    /* Counted at once, so that backpressure sees it before the loop takes it in. */
    held_add(s, +1);
    int rc = loop_post(s->loop, accept_job, jb);
    if (rc != AR_OK) {
        held_add(s, -1);
        job_free(jb);
    }
    return rc;
}

typedef struct cancel_req {
    scheduler *s;
    char id[ACTION_ID_LEN + 1];
    char who[80];
    scheduler_cancel_fn done;
    void *arg;
} cancel_req;

static void cancel_on_loop(loop_t *loop, void *arg)
{
    cancel_req *cr = arg;
    job *jb = cr->s->all;
    while (jb && strcmp(action_record_str(jb->rec, "id"), cr->id) != 0)
        jb = jb->all_next;
    if (!jb || jb->cancel_done) {
        cr->done(cr->arg, AR_E_NOTFOUND, jb ? jb->rec : NULL);
        free(cr);
        return;
    }
    jb->cancel_requested = 1;
    snprintf(jb->cancel_by, sizeof jb->cancel_by, "%s", cr->who);
    json_object_set_new(jb->rec, "cancel_requested_by", json_string(cr->who));
    switch (jb->place) {
    case JOB_QUEUED:
        unqueue(jb->c, jb);
        /* fall through */
    case JOB_WAITING:
        if (jb->place == JOB_WAITING)
            loop_timer_cancel(loop, jb->timer);
        jb->cancel_done = cr->done;
        jb->cancel_arg = cr->arg;
        if (jb->dispatch_recorded) {
            /* Journaled as dispatched but never sent: nothing reached the API. */
            jb->dispatch_recorded = 0;
        }
        start(jb); /* start() sees the cancel and concludes CANCELLED (or UNKNOWN_OUTCOME) */
        break;
    case JOB_INFLIGHT:
    case JOB_NOWHERE:
        /* A call is running (or a state is being journaled): it ends first; the cancel is
         * applied at the next step. */
        cr->done(cr->arg, AR_E_BUSY, jb->rec);
        break;
    }
    free(cr);
}

int scheduler_cancel(scheduler *s, const char *id, const char *who, scheduler_cancel_fn done, void *arg)
{
    if (!s)
        return AR_E_CLOSED;
    cancel_req *cr = calloc(1, sizeof *cr);
    if (!cr)
        return AR_E_NOMEM;
    cr->s = s;
    snprintf(cr->id, sizeof cr->id, "%s", id);
    snprintf(cr->who, sizeof cr->who, "%s", who);
    cr->done = done;
    cr->arg = arg;
    int rc = loop_post(s->loop, cancel_on_loop, cr);
    if (rc != AR_OK)
        free(cr);
    return rc;
}

static void *loop_thread(void *arg)
{
    scheduler *s = arg;
    loop_run(s->loop);
    return NULL;
}

static void wait_for_pools(scheduler *s, int timeout_ms)
{
    int64_t until = ar_mono_ms() + timeout_ms;
    while (ar_mono_ms() < until) {
        int starting = 0;
        for (size_t i = 0; i < s->n_conns; i++) {
            sandbox_snapshot snap;
            sandbox_pool_snapshot(s->conns[i].pool, &snap);
            json_decref(snap.descriptor);
            starting += snap.state == SANDBOX_STARTING;
        }
        if (!starting)
            return;
        usleep(10 * 1000);
    }
}

int scheduler_new(const config *cfg, journal *j, const char *host_path, int start_timeout_ms,
                  sandbox_secrets_fn secrets_fn, void *secrets_arg,
                  scheduler_notify_fn notify, void *notify_arg, scheduler **out, ar_error *err)
{
    scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    s->journal = j;
    s->cfg = cfg;
    s->notify = notify;
    s->notify_arg = notify_arg;
    pthread_mutex_init(&s->lock, NULL);
    int rc = loop_new(&s->loop);
    if (rc != AR_OK) {
        ar_error_set(err, rc, "internal", "cannot create the scheduler's event loop");
        goto fail;
    }
    s->conns = calloc(cfg->n_connectors ? cfg->n_connectors : 1, sizeof *s->conns);
    if (!s->conns) {
        rc = ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
        goto fail;
    }
    /* Pools are created before the loop thread starts: loop functions are then safe here. */
    for (size_t i = 0; i < cfg->n_connectors; i++) {
        const config_connector *cc = &cfg->connectors[i];
        conn *c = &s->conns[s->n_conns];
        c->s = s;
        c->cc = cc;
        flow_heap_init(&c->queue);
        flow_bucket_init(&c->bucket, cc->rate_per_second, cc->rate_burst, ar_now_ms());
        pthread_mutex_init(&c->view_lock, NULL);
        c->events = json_array();
        if (flow_breaker_init(&c->breaker, &cc->breaker, ar_now_ms()) != AR_OK || !c->events) {
            rc = ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
            goto fail;
        }
        restore_flow(c);
        publish(c);
        sandbox_pool_opts opts = {
            .connector = cc->name,
            .plugin_path = cc->plugin_path,
            .host_path = host_path,
            .config = cc->config,
            .processes = cc->processes,
            .timeout_ms = cc->timeout_ms,
            .secrets_fn = secrets_fn,
            .secrets_arg = secrets_arg,
            .lockdown = {.no_rlimits = !cc->sandbox_rlimits, .no_uid = !cc->sandbox_uid,
                         .no_landlock = !cc->sandbox_landlock, .no_seccomp = !cc->sandbox_seccomp,
                         .uid = cc->uid, .gid = cc->uid, .ports = cc->allow_ports,
                         .n_ports = cc->n_allow_ports, .runtime_dir = cfg->runtime_dir},
        };
        rc = sandbox_pool_new(s->loop, &opts, on_pool_event, c, &c->pool, err);
        if (rc != AR_OK)
            goto fail;
        s->n_conns++;
    }
    if (pthread_create(&s->thread, NULL, loop_thread, s) != 0) {
        rc = ar_error_set(err, AR_E_IO, "internal", "cannot start the scheduler thread");
        goto fail;
    }
    s->thread_started = 1;
    wait_for_pools(s, start_timeout_ms);
    *out = s;
    return AR_OK;
fail:
    scheduler_free(s);
    return rc;
}

static void begin_stop(loop_t *loop, void *arg)
{
    scheduler *s = arg;
    s->stopping = 1;
    /* Queued and waiting jobs stay as they are on disk (READY, RETRY_WAIT). The queues and the
     * retry timers are emptied wholesale: one by one would be quadratic in what is held (a stop
     * with 100k queued took minutes). */
    for (size_t i = 0; i < s->n_conns; i++)
        s->conns[i].queue.n = 0;
    loop_timer_cancel_all(loop, timer_fired);
    for (job *jb = s->all, *next; jb; jb = next) {
        next = jb->all_next;
        if (jb->place == JOB_QUEUED || jb->place == JOB_WAITING) {
            jb->place = JOB_NOWHERE;
            finish(jb);
        }
    }
}

static void end_loop(loop_t *loop, void *arg)
{
    (void)arg;
    loop_stop(loop);
}

void scheduler_free(scheduler *s)
{
    if (!s)
        return;
    if (s->thread_started) {
        loop_post(s->loop, begin_stop, s);
        /* Let calls in flight finish and their outcomes be journaled (bounded). */
        for (int i = 0; i < 300; i++) {
            pthread_mutex_lock(&s->lock);
            int busy = s->inflight_total + s->journaling;
            pthread_mutex_unlock(&s->lock);
            if (!busy)
                break;
            usleep(10 * 1000);
        }
        loop_post(s->loop, end_loop, NULL);
        pthread_join(s->thread, NULL);
        /* Hand-offs that came after the loop's last look (an approval decided during the
         * stop, say) run now: they see stopping and let go of their jobs. */
        loop_close(s->loop);
    }
    for (size_t i = 0; s->conns && i <= s->n_conns && i < s->cfg->n_connectors; i++) {
        conn *c = &s->conns[i];
        if (!c->s)
            continue;
        sandbox_pool_free(c->pool);
        flow_heap_fini(&c->queue);
        flow_breaker_fini(&c->breaker);
        json_decref(c->events);
        json_decref(c->view);
        pthread_mutex_destroy(&c->view_lock);
    }
    /* Jobs whose transitions were still being journaled are released here. */
    for (job *jb = s->all, *next; jb; jb = next) {
        next = jb->all_next;
        job_free(jb);
    }
    free(s->conns);
    loop_free(s->loop);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int scheduler_connector(scheduler *s, const char *name, sandbox_snapshot *out)
{
    if (!s)
        return AR_E_NOTFOUND;
    conn *c = find_conn(s, name);
    if (!c)
        return AR_E_NOTFOUND;
    sandbox_pool_snapshot(c->pool, out);
    return AR_OK;
}

/* ---- recovery ------------------------------------------------------------------------------------ */

int scheduler_recover(scheduler *s, scheduler_recovery *out, ar_error *err)
{
    memset(out, 0, sizeof *out);
    journal_read *r;
    int rc = journal_read_begin(s->journal, &r, err);
    if (rc != AR_OK)
        return rc;
    journal_cursor *cur = NULL;
    json_t *resume = json_array(), *unknown = json_array();
    rc = journal_cursor_open(r, JDB_QUEUE, &cur);
    const void *key, *val;
    size_t klen, vlen;
    if (rc == AR_OK)
        rc = journal_cursor_get(cur, JOURNAL_FIRST, &key, &klen, &val, &vlen);
    while (rc == AR_OK) {
        char id[ACTION_ID_LEN + 1];
        snprintf(id, sizeof id, "%.*s", (int)klen, (const char *)key);
        json_t *rec;
        if (action_load(r, id, &rec, err) == AR_OK) {
            action_state st = action_record_state(rec);
            const char *mode = mode_of(rec);
            if (st == ACTION_DISPATCHED) {
                /* The daemon died during the call: the outcome is unknown. */
                json_object_set_new(rec, "maybe_happened", json_true());
                history_outcome(rec, "daemon_stopped", NULL, ar_now_ms());
                if (strcmp(mode, "lookup") == 0) {
                    json_object_set_new(rec, "reconcile", json_true());
                    json_object_set_new(rec, "recovered_how", json_string("in flight when the daemon stopped: "
                                        "asking the plugin's lookup whether it happened"));
                    out->reconciled++;
                    json_array_append_new(resume, rec);
                } else if (strcmp(mode, "native") == 0 || is_read(rec)) {
                    json_object_set_new(rec, "recovered_how", json_string(is_read(rec)
                                        ? "in flight when the daemon stopped: a read, sent again"
                                        : "in flight when the daemon stopped: sent again with the same key "
                                          "(the API deduplicates)"));
                    out->resent++;
                    json_array_append_new(resume, rec);
                } else {
                    json_array_append_new(unknown, rec);
                }
            } else if (st == ACTION_READY || st == ACTION_APPROVED || st == ACTION_RETRY_WAIT) {
                json_object_set_new(rec, "recovered_how", json_string("waiting to run when the daemon stopped: resumed"));
                out->resumed++;
                json_array_append_new(resume, rec);
            } else {
                json_decref(rec);
            }
        }
        rc = journal_cursor_get(cur, JOURNAL_NEXT, &key, &klen, &val, &vlen);
    }
    if (cur)
        journal_cursor_close(cur);
    journal_read_end(r);
    rc = (rc == AR_E_NOTFOUND) ? AR_OK : rc;

    if (rc == AR_OK && json_array_size(unknown) > 0) {
        journal_batch *b = journal_batch_new();
        size_t i;
        json_t *rec;
        json_array_foreach(unknown, i, rec) {
            set_error(rec, "unknown_outcome", "the daemon stopped while this call was in flight and the "
                      "action cannot be repeated safely (idempotency: none): an operator must check the "
                      "target system and resolve it");
            action_record_set_state(rec, ACTION_UNKNOWN_OUTCOME, ar_now_ms());
            action_batch_store(b, rec);
            audit_batch_append(b, "recovered", action_record_str(rec, "id"),
                               json_pack("{s:s}", "how", "in flight when the daemon stopped, idempotency none: "
                                         "UNKNOWN_OUTCOME for an operator"));
            audit_batch_append(b, "unknown_outcome", action_record_str(rec, "id"),
                               json_pack("{s:O, s:s}", "attempt", json_object_get(rec, "attempts"), "reason",
                                         "the daemon stopped while the call was in flight"));
        }
        rc = journal_commit(s->journal, b, err);
        journal_batch_free(b);
        out->unknown = json_array_size(unknown);
    }
    if (rc == AR_OK) {
        size_t i;
        json_t *rec;
        json_array_foreach(resume, i, rec) {
            if (scheduler_enqueue(s, json_incref(rec)) != AR_OK)
                rc = ar_error_set(err, AR_E_NOMEM, "internal", "out of memory during recovery");
        }
    }
    json_decref(resume);
    json_decref(unknown);
    return rc;
}
