/* scheduler.c - dispatch, retries and reconciliation, each step journaled (see scheduler.h).
 * Functions marked "loop thread" run on the scheduler's event loop; the *_durable callbacks
 * run on the journal writer thread and only hand work back to the loop. */
#include "scheduler.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <aiorun/plugin.h>

#include "action.h"
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
    int dispatch_recorded;      /* DISPATCHED for this attempt is already durable */
    int reconcile;              /* the next step asks the plugin's lookup, not invoke */
    int cancel_requested;
    char cancel_by[80];
    uint64_t timer;
    struct job *next;           /* ready queue */
    struct job *all_prev, *all_next; /* every job the scheduler holds (for cancel) */
    /* a pending cancel answered once the CANCELLED record is durable */
    scheduler_cancel_fn cancel_done;
    void *cancel_arg;
} job;

struct conn {
    scheduler *s;
    const config_connector *cc;
    sandbox_pool *pool;
    job *head, *tail;           /* waiting for a free process (loop thread) */
    int inflight;               /* journaling DISPATCHED or running in the pool */
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
    int stopping;               /* loop thread only */
    job *all;                   /* loop thread only */
    pthread_mutex_t lock;       /* guards the two counts below, read by scheduler_free */
    int inflight_total;         /* calls running in sandboxes */
    int journaling;             /* transitions submitted to the journal, not yet continued */
};

static void pump(conn *c);

/* ---- jobs --------------------------------------------------------------------------------- */

static void job_forget(job *jb)
{
    scheduler *s = jb->s;
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

static void push_front(conn *c, job *jb)
{
    jb->place = JOB_QUEUED;
    jb->next = c->head;
    c->head = jb;
    if (!c->tail)
        c->tail = jb;
}

static void push_back(conn *c, job *jb)
{
    jb->place = JOB_QUEUED;
    jb->next = NULL;
    if (c->tail)
        c->tail->next = jb;
    else
        c->head = jb;
    c->tail = jb;
}

static void unqueue(conn *c, job *jb)
{
    for (job **pp = &c->head; *pp; pp = &(*pp)->next) {
        if (*pp != jb)
            continue;
        *pp = jb->next;
        if (c->tail == jb) {
            c->tail = NULL;
            for (job *t = c->head; t; t = t->next)
                c->tail = t;
        }
        jb->next = NULL;
        return;
    }
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

/* Note an outcome on the newest history entry. */
static void history_outcome(json_t *rec, const char *outcome, const sandbox_result *res, int64_t now)
{
    json_t *e = last_history(rec);
    if (!e)
        return;
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
    journaling_add(t->jb->s, -1);
    job *jb = t->jb;
    after_fn after = t->status == AR_OK ? t->after : NULL;
    free(t);
    if (after)
        after(jb);
    else
        finish(jb);
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
        ar_log("error", "cannot journal action %s as %s: %s; it is resumed at the next start",
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
    loop_post(jb->s->loop, transition_continue, t);
}

/* Journal jb's record as it is now, then run after(jb) on the loop (NULL: finish the job). */
static void commit(job *jb, after_fn after)
{
    transition *t = calloc(1, sizeof *t);
    journal_batch *b = journal_batch_new();
    jb->place = JOB_NOWHERE;
    if (!t || !b || action_batch_store(b, jb->rec) != AR_OK) {
        free(t);
        journal_batch_free(b);
        ar_log("error", "out of memory journaling action %s", action_record_str(jb->rec, "id"));
        finish(jb);
        return;
    }
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

/* Loop thread: the plugin answered an invoke (or crashed, or timed out). */
static void invoke_done(void *arg, const sandbox_result *res)
{
    job *jb = arg;
    conn *c = jb->c;
    scheduler *s = jb->s;
    inflight_add(c, -1);
    if (s->stopping) {
        /* Shutting down: what the pool reports now may not be what happened at the API. The
         * action stays DISPATCHED on disk for recovery. */
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
        json_object_set_new(rec, "result", result);
        json_object_del(rec, "error");
        conclude(jb, ACTION_SUCCEEDED);
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
    pump(c);
}

/* Loop thread: the plugin's lookup answered whether the attempt with this key happened. */
static void lookup_done(void *arg, const sandbox_result *res)
{
    job *jb = arg;
    conn *c = jb->c;
    inflight_add(c, -1);
    if (jb->s->stopping) {
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
        json_object_set_new(rec, "result", result ? result : json_null());
        json_object_set_new(rec, "reconciled", json_true());
        json_object_del(rec, "error");
        jb->reconcile = 0;
        conclude(jb, ACTION_SUCCEEDED);
    } else if (res->error_class == AIORUN_E_NOT_FOUND) {
        /* It did not happen: nothing is pending at the API, send it again with the same key. */
        history_append(rec, json_pack("{s:s, s:s, s:I, s:s}", "kind", "lookup", "key",
                                      action_record_str(rec, "idempotency_key"), "finished_ms",
                                      (json_int_t)now, "outcome", "not_happened"));
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
        retry_later(jb, backoff_ms(&c->cc->retry, (int)rec_int(rec, "attempts")), res->retry_after_ms,
                    class_name(res->error_class), res->error_message);
    }
    pump(c);
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
     * attempt is journaled already, so it is sent as it is when a process frees up. */
    inflight_add(c, -1);
    push_front(c, jb);
}

/* Loop thread: start one queued job (a process is free). */
static void start(job *jb)
{
    conn *c = jb->c;
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms(), deadline = rec_int(rec, "deadline_ms");
    if (jb->cancel_requested && !jb->dispatch_recorded) {
        char msg[160];
        snprintf(msg, sizeof msg, "cancelled by %s before it was dispatched", jb->cancel_by);
        set_error(rec, "cancelled", msg);
        conclude(jb, maybe_happened(rec) ? ACTION_UNKNOWN_OUTCOME : ACTION_CANCELLED);
        return;
    }
    if (deadline && now >= deadline && !jb->dispatch_recorded) {
        give_up(jb, "timeout", "the action's deadline passed before it could be dispatched");
        return;
    }
    if (jb->reconcile) {
        sandbox_call call = call_of(jb);
        inflight_add(c, +1);
        jb->place = JOB_INFLIGHT;
        int rc = sandbox_pool_lookup(c->pool, &call, lookup_done, jb);
        if (rc == AR_OK)
            return;
        inflight_add(c, -1);
        if (rc == AR_E_BUSY) {
            push_front(c, jb);
            return;
        }
        /* The plugin has no lookup after all: the outcome cannot be reconciled. */
        jb->reconcile = 0;
        set_error(rec, "unknown_outcome", "the plugin offers no lookup, so whether the last attempt "
                  "happened cannot be known: an operator must check and resolve it");
        conclude(jb, ACTION_UNKNOWN_OUTCOME);
        return;
    }
    if (!jb->dispatch_recorded && (int)rec_int(rec, "attempts") >= attempt_limit(jb)) {
        give_up(jb, "retryable", "no attempts are left");
        return;
    }
    inflight_add(c, +1);
    if (jb->dispatch_recorded) {
        send_invoke(jb);
        return;
    }
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
}

static int pool_ready(conn *c)
{
    sandbox_snapshot snap;
    sandbox_pool_snapshot(c->pool, &snap);
    json_decref(snap.descriptor);
    return snap.state == SANDBOX_READY && c->inflight < snap.serving;
}

/* Loop thread: start as many queued jobs as there are free processes. */
static void pump(conn *c)
{
    while (c->head && !c->s->stopping && pool_ready(c)) {
        job *jb = c->head;
        unqueue(c, jb);
        start(jb);
    }
}

static void on_pool_event(void *arg, sandbox_pool *pool)
{
    (void)pool;
    pump(arg);
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

int scheduler_enqueue(scheduler *s, json_t *rec)
{
    job *jb = job_new(s, rec);
    if (!jb) {
        json_decref(rec);
        return AR_E_NOMEM;
    }
    int rc = loop_post(s->loop, accept_job, jb);
    if (rc != AR_OK)
        job_free(jb);
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
                  scheduler_notify_fn notify, void *notify_arg, scheduler **out, ar_error *err)
{
    scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    s->journal = j;
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
        sandbox_pool_opts opts = {
            .connector = cc->name,
            .plugin_path = cc->plugin_path,
            .host_path = host_path,
            .config = cc->config,
            .secrets = cc->secrets,
            .processes = cc->processes,
            .timeout_ms = cc->timeout_ms,
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
    /* Queued and waiting jobs stay as they are on disk (READY, RETRY_WAIT). */
    for (job *jb = s->all, *next; jb; jb = next) {
        next = jb->all_next;
        if (jb->place == JOB_QUEUED || jb->place == JOB_WAITING) {
            if (jb->place == JOB_QUEUED)
                unqueue(jb->c, jb);
            else
                loop_timer_cancel(loop, jb->timer);
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
    }
    for (size_t i = 0; i < s->n_conns; i++)
        sandbox_pool_free(s->conns[i].pool);
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
                    out->reconciled++;
                    json_array_append_new(resume, rec);
                } else if (strcmp(mode, "native") == 0 || is_read(rec)) {
                    out->resent++;
                    json_array_append_new(resume, rec);
                } else {
                    json_array_append_new(unknown, rec);
                }
            } else if (st == ACTION_READY || st == ACTION_APPROVED || st == ACTION_RETRY_WAIT) {
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
