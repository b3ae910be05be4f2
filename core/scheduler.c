/* scheduler.c - dispatch, retries and reconciliation, each step journaled (see scheduler.h).
 * Functions marked "loop thread" run on the scheduler's event loop; the *_durable callbacks
 * run where the journal runs done callbacks (its completion thread, or its writer at low load)
 * and only hand work back to the loop.
 *
 * An action's way through a connector: the ready queue (a heap by priority with aging, and a
 * second heap of the same jobs by deadline, so that expiring them costs O(log n) and nothing
 * when none is due) → the pipeline: its DISPATCHED intent journaled, then a FIFO of attempts
 * durable and waiting for an idle process (the "send queue"), then the call itself. The
 * pipeline is deeper than the process count when calls are short next to a commit, so that the
 * intents of several attempts share a group commit while the processes are busy. A new action
 * (scheduler_submit) that finds its connector's queue empty and nothing holding it back skips
 * the queue: its intent goes into the batch that stores its submission (accept_submission).
 * One whose client waits for its outcome may instead wait for a place, not stored yet, in the
 * connector's hold (a FIFO behind the ready queue, for a short while): it then still goes in
 * with its first intent, one commit instead of two, also when the connector is busy. */
#include "scheduler.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <aiorun/plugin.h>

#include "action.h"
#include "audit.h"
#include "flow.h"
#include "frame.h"
#include "loop.h"
#include "jsonw.h"

/* Parked jobs (queued or waiting to retry) keep their parsed record while the scheduler holds
 * at most this many actions; beyond, they keep a compact entry and the record is read again
 * from the journal when the attempt starts (a parsed record costs ~10 kB). */
#define SCHED_RECORDS_KEPT 1024

#define NO_POS SIZE_MAX

typedef struct conn conn;

typedef enum job_place {
    JOB_NOWHERE = 0,   /* being handed around (journaling, posting) */
    JOB_QUEUED,        /* in its connector's ready queue */
    JOB_WAITING,       /* RETRY_WAIT, a timer pending */
    JOB_SENDQ,         /* in the pipeline, waiting for an idle process (DISPATCHED durable, or a lookup) */
    JOB_INFLIGHT       /* a call or lookup is running in a sandbox process */
} job_place;

typedef struct job {
    scheduler *s;
    conn *c;                    /* NULL: its connector is not configured (it is left as it is) */
    json_t *rec;                /* owned; NULL while compact (read again when its attempt starts) */
    char *input_text;           /* the input as JSON text, made when the attempt starts */
    /* what the queue needs, also while compact */
    char id[ACTION_ID_LEN + 1];
    int priority;
    int64_t created_ms, deadline_ms, next_attempt_ms;
    uint64_t seq;               /* arrival order: ties in the heaps */
    size_t qpos, dpos;          /* index in the connector's ready heap / deadline heap, NO_POS if not */
    int front;                  /* ahead of everything in the ready queue */
    job_place place;
    int64_t queued_mono_ms;     /* when it last entered its connector's queue (queue_wait) */
    int64_t stage_us;           /* when its DISPATCHED intent was submitted, then when it was durable */
    int dispatch_recorded;      /* DISPATCHED for this attempt is durable and the call not sent */
    int reconcile;              /* the next step asks the plugin's lookup, not invoke */
    int recovered;              /* resumed by scheduler_recover: its next step audits how */
    int retry_wait;             /* compact from recovery: it was RETRY_WAIT (else READY/APPROVED) */
    int piped;                  /* counted in its connector's pipeline and the daemon's inflight */
    int intent;                 /* its DISPATCHED intent is being journaled */
    int64_t trial_since_ms;     /* a half-open breaker's trial, not sent yet: that state's since_ms */
    int cancel_requested;
    char cancel_by[80];
    uint64_t timer;
    struct job *all_prev, *all_next; /* every job the scheduler holds (for cancel) */
    struct job *send_next;           /* the connector's send queue */
    /* a pending cancel answered once the CANCELLED record is durable */
    scheduler_cancel_fn cancel_done;
    void *cancel_arg;
    /* a transition of its record is being journaled (commit to transition_continue) */
    int committing;
    /* a cancel that came meanwhile: answered by the step after that commit. Kept apart from
     * cancel_done, which the journal's thread reads for the commit in flight (loop thread only) */
    scheduler_cancel_fn cancel_after_commit;
    void *cancel_after_commit_arg;
    /* scheduler_submit: the batch its record is not yet stored in (its first commit goes in
     * it), and who hears of that commit */
    journal_batch *joint;
    scheduler_stored_fn stored;
    void *stored_arg;
    int64_t hold_ms;            /* how long it may wait in the hold, not stored (0: not at all) */
    int64_t hold_until_mono_ms; /* in the hold: when it must be stored READY instead */
    struct job *held_next;      /* the connector's hold */
} job;

/* A binary min-heap of jobs that knows where each one is, so removal is O(log n). */
typedef struct job_heap {
    job **items;
    size_t n, cap;
    int by_deadline;            /* 0: queue order (score, then arrival); 1: deadline, then arrival */
} job_heap;

/* A connector's flow state as shown, copied out of the loop's own. */
typedef struct flow_snap {
    int paused;
    char paused_by[80];
    char pause_reason[256];
    int64_t paused_at_ms;
    int64_t rate_limited_until_ms;
    flow_breaker breaker;       /* a copy: its ring is not to be read */
    flow_bucket bucket;
    int calls, dispatching, waiting, depth;
    size_t queued;
} flow_snap;

struct conn {
    scheduler *s;
    const config_connector *cc;
    sandbox_pool *pool;
    job_heap queue;             /* jobs waiting to start, by priority with aging (loop thread) */
    job_heap deadlines;         /* the same jobs that have a deadline, soonest first */
    job *sendq_head, *sendq_tail; /* durable DISPATCHED attempts (and lookups) waiting for a process */
    int sendq_n;
    job *held_head, *held_tail; /* new actions not stored yet, waiting for a place (FIFO) */
    int held_n;
    int64_t held_due_mono_ms;   /* no hold ends before this (a lower bound; 0: none held) */
    int pipeline;               /* jobs from their start to their outcome: journaling DISPATCHED,
                                   in the send queue, or running */
    int journaling;             /* of those, DISPATCHED intents not durable yet */
    int calls;                  /* of those, calls and lookups running in the pool */
    int depth;                  /* how many the pipeline may hold, as last computed */
    int fixed_depth;            /* scheduler_set_pipeline; 0: chosen from the latencies */
    double call_ewma_us;        /* mean call latency, recent calls weighing most; 0: none yet */
    /* flow control (loop thread) */
    flow_bucket bucket;
    flow_breaker breaker;
    int paused;
    char paused_by[80];
    char pause_reason[256];
    int64_t paused_at_ms;
    int64_t rate_limited_until_ms;  /* the API asked the whole connector to wait */
    uint64_t wake_timer;            /* a pump once a block lifts or a deadline comes */
    int64_t wake_at_ms;
    json_t *events;                 /* recent flow transitions, journaled with the state */
    /* what GET /v1/connectors shows: copied on the loop thread at every change (cheap), made
     * into JSON by the thread that asks */
    pthread_mutex_t view_lock;
    flow_snap view;
    _Atomic int startable;          /* scheduler_can_start's hint, set by publish */
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
    scheduler_pending_fn pending_fn;  /* set before scheduler_recover */
    void *pending_arg;
    int stopping;               /* loop thread only */
    job *all;                   /* loop thread only */
    uint64_t seq;               /* loop thread only: arrival order */
    double commit_ewma_us;      /* loop thread only: mean DISPATCHED commit latency; 0: none yet */
    const config *cfg;
    size_t held;                /* jobs held (queued, waiting, in flight): read by the API */
    pthread_mutex_t lock;       /* guards held and the two counts below, read by scheduler_free */
    int inflight_total;         /* jobs in the connectors' pipelines (max_inflight) */
    int journaling;             /* transitions submitted to the journal, not yet continued */
};

static void pump(conn *c);
static void pump_all(scheduler *s);
static void wake_in(conn *c, int64_t delay_ms);
static void publish(conn *c);
static void submit_as_is(job *jb);
static void job_link(job *jb);
static void drain_sendq(conn *c);

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

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

static int64_t rec_int(const json_t *rec, const char *key)
{
    return json_integer_value(json_object_get(rec, key));
}

/* Count one observation in a stage histogram {stage, connector} (when measured). */
static void observe_stage(conn *c, const char *stage, double seconds)
{
    if (c->s->metrics.stage_seconds)
        metrics_observe(c->s->metrics.stage_seconds, (const char *const[]){stage, c->cc->name}, seconds);
}

/* ---- the pipeline's counts ------------------------------------------------------------------ */

static void inflight_total_add(scheduler *s, int delta)
{
    pthread_mutex_lock(&s->lock);
    s->inflight_total += delta;
    pthread_mutex_unlock(&s->lock);
}

/* The job starts its attempt (or lookup): it counts against the connector's pipeline and the
 * daemon's max_inflight until its outcome is handled. */
static void pipe_enter(job *jb)
{
    if (jb->piped)
        return;
    jb->piped = 1;
    jb->c->pipeline++;
    inflight_total_add(jb->s, +1);
}

static void pipe_leave(job *jb)
{
    if (jb->intent) {
        jb->intent = 0;
        jb->c->journaling--;
    }
    if (!jb->piped)
        return;
    jb->piped = 0;
    jb->c->pipeline--;
    inflight_total_add(jb->s, -1);
}

/* A half-open breaker's trial that ends without being sent gives its trial back (while the
 * breaker is still in the half-open state it was taken from). */
static void trial_unused(job *jb)
{
    flow_breaker *b = &jb->c->breaker;
    if (jb->trial_since_ms && b->state == BREAKER_HALF_OPEN && b->since_ms == jb->trial_since_ms &&
        b->trials_started > 0)
        b->trials_started--;
    jb->trial_since_ms = 0;
}

/* ---- job heaps -------------------------------------------------------------------------------- */

/* Queue order: higher priority first, older first; every aging_ms of age is worth one priority
 * level, so the key is static and a heap keeps it. */
static int64_t queue_score(const job *jb)
{
    if (jb->front)
        return INT64_MIN / 2;
    return jb->created_ms - (int64_t)jb->priority * jb->s->cfg->aging_ms;
}

static size_t *heap_pos(const job_heap *h, job *jb)
{
    return h->by_deadline ? &jb->dpos : &jb->qpos;
}

static int heap_before(const job_heap *h, const job *a, const job *b)
{
    int64_t ka = h->by_deadline ? a->deadline_ms : queue_score(a);
    int64_t kb = h->by_deadline ? b->deadline_ms : queue_score(b);
    return ka < kb || (ka == kb && a->seq < b->seq);
}

static void heap_place(job_heap *h, size_t i, job *jb)
{
    h->items[i] = jb;
    *heap_pos(h, jb) = i;
}

static void heap_up(job_heap *h, size_t i)
{
    job *jb = h->items[i];
    while (i > 0 && heap_before(h, jb, h->items[(i - 1) / 2])) {
        heap_place(h, i, h->items[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_place(h, i, jb);
}

static void heap_down(job_heap *h, size_t i)
{
    job *jb = h->items[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        job *best = jb;
        if (l < h->n && heap_before(h, h->items[l], best))
            best = h->items[m = l];
        if (r < h->n && heap_before(h, h->items[r], best))
            best = h->items[m = r];
        if (m == i)
            break;
        heap_place(h, i, best);
        i = m;
    }
    heap_place(h, i, jb);
}

static int heap_push(job_heap *h, job *jb)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        job **items = realloc(h->items, cap * sizeof *items);
        if (!items)
            return AR_E_NOMEM;
        h->items = items;
        h->cap = cap;
    }
    h->items[h->n] = jb;
    heap_up(h, h->n++);
    return AR_OK;
}

static void heap_remove(job_heap *h, job *jb)
{
    size_t i = *heap_pos(h, jb);
    *heap_pos(h, jb) = NO_POS;
    if (i >= h->n || h->items[i] != jb)
        return;
    if (i == --h->n)
        return;
    heap_place(h, i, h->items[h->n]);
    heap_down(h, i);
    heap_up(h, i);
}

static job *heap_top(const job_heap *h)
{
    return h->n ? h->items[0] : NULL;
}

/* Let go of every job at once (stop): their positions are forgotten with them. */
static void heap_clear(job_heap *h)
{
    for (size_t i = 0; i < h->n; i++)
        *heap_pos(h, h->items[i]) = NO_POS;
    h->n = 0;
}

static void heap_fini(job_heap *h)
{
    free(h->items);
    memset(h, 0, sizeof *h);
}

/* ---- the ready queue -------------------------------------------------------------------------- */

static void enqueue_job(conn *c, job *jb)
{
    jb->place = JOB_QUEUED;
    jb->seq = ++c->s->seq;
    if (heap_push(&c->queue, jb) != AR_OK) {
        jb->qpos = NO_POS;
        ar_log_as("error", "scheduler", jb->id, "out of memory queueing action %s; it resumes at the next start",
                  jb->id);
        return;
    }
    if (jb->deadline_ms && heap_push(&c->deadlines, jb) != AR_OK)
        jb->dpos = NO_POS; /* it still fails at its deadline, when it is started */
}

static void push_back(conn *c, job *jb)
{
    jb->front = 0;
    jb->queued_mono_ms = ar_mono_ms();
    enqueue_job(c, jb);
}

/* Ahead of everything: a new attempt wanted at once (a lookup found it did not happen). */
static void push_front(conn *c, job *jb)
{
    jb->front = 1;
    enqueue_job(c, jb);
}

static void unqueue(conn *c, job *jb)
{
    heap_remove(&c->queue, jb);
    heap_remove(&c->deadlines, jb);
}

static job *queue_pop(conn *c)
{
    job *jb = heap_top(&c->queue);
    if (jb)
        unqueue(c, jb);
    return jb;
}

/* ---- the send queue ----------------------------------------------------------------------------- */

static void sendq_push(conn *c, job *jb)
{
    jb->place = JOB_SENDQ;
    jb->send_next = NULL;
    if (c->sendq_tail)
        c->sendq_tail->send_next = jb;
    else
        c->sendq_head = jb;
    c->sendq_tail = jb;
    c->sendq_n++;
}

static void sendq_remove(conn *c, job *jb)
{
    job *prev = NULL;
    for (job *it = c->sendq_head; it; prev = it, it = it->send_next) {
        if (it != jb)
            continue;
        if (prev)
            prev->send_next = jb->send_next;
        else
            c->sendq_head = jb->send_next;
        if (c->sendq_tail == jb)
            c->sendq_tail = prev;
        c->sendq_n--;
        break;
    }
    jb->send_next = NULL;
    jb->place = JOB_NOWHERE;
}

/* ---- compact jobs ------------------------------------------------------------------------------- */

/* Take what the queue needs from the record. */
static void job_note(job *jb)
{
    snprintf(jb->id, sizeof jb->id, "%s", action_record_str(jb->rec, "id"));
    jb->priority = (int)rec_int(jb->rec, "priority");
    jb->created_ms = rec_int(jb->rec, "created_ms");
    jb->deadline_ms = rec_int(jb->rec, "deadline_ms");
    jb->next_attempt_ms = rec_int(jb->rec, "next_attempt_ms");
}

/* A parked job lets go of its record while the scheduler holds many (the journal has it: only
 * called when the record is exactly what is stored, i.e. just after it was journaled or taken
 * in, and nothing held only in memory is pending). */
static void maybe_compact(job *jb)
{
    if (!jb->rec || jb->cancel_requested || jb->cancel_done || scheduler_held(jb->s) <= SCHED_RECORDS_KEPT)
        return;
    /* Only a record as stored and waiting to run: one found DISPATCHED at start carries what
     * recovery decided about it, in memory only. */
    action_state st = action_record_state(jb->rec);
    if ((st != ACTION_READY && st != ACTION_APPROVED && st != ACTION_RETRY_WAIT) ||
        json_object_get(jb->rec, "recovered_how"))
        return;
    job_note(jb);
    json_decref(jb->rec);
    jb->rec = NULL;
    free(jb->input_text);
    jb->input_text = NULL;
}

/* Loop thread: the record (read again when the job was compact) and the input text, for the
 * job's next step. Not AR_OK: the job cannot go on (its record is gone or no longer waiting:
 * it is left as the journal has it). */
static int job_load(job *jb)
{
    if (!jb->rec) {
        json_t *rec;
        ar_error err = {0};
        int rc = action_load_by_id(jb->s->journal, jb->id, &rec, &err);
        if (rc != AR_OK) {
            ar_log_as("error", "scheduler", jb->id, "cannot read action %s back from the journal: %s", jb->id,
                      err.message);
            return rc;
        }
        action_state st = action_record_state(rec);
        if (st != ACTION_READY && st != ACTION_APPROVED && st != ACTION_RETRY_WAIT) {
            ar_log_as("warn", "scheduler", jb->id, "action %s is %s in the journal, no longer waiting to run: left as it is",
                      jb->id, action_state_name(st));
            json_decref(rec);
            return AR_E_EXISTS;
        }
        if (jb->recovered)
            json_object_set_new(rec, "recovered_how", json_string("waiting to run when the daemon stopped: resumed"));
        jb->rec = rec;
    }
    if (!jb->input_text) {
        json_t *input = json_object_get(jb->rec, "input");
        jb->input_text = input ? jsonw_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
        if (!jb->input_text)
            return AR_E_NOMEM;
    }
    return AR_OK;
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
    scheduler_stored_fn stored; /* the action's first commit (scheduler_submit): told first */
    void *stored_arg;
} transition;

/* Tell scheduler_submit's caller how the batch holding the action's first commit ended. */
static void tell_stored(scheduler_stored_fn stored, void *arg, int status, journal_batch *b,
                        const ar_error *err, const json_t *rec)
{
    ar_error none = {0};
    if (status != AR_OK && !err) {
        if (status == AR_E_CLOSED)
            ar_error_set(&none, status, "shutting_down", "the daemon is stopping; send it again once it is back");
        else
            ar_error_set(&none, status, "internal", "out of memory storing the action");
        err = &none;
    }
    stored(arg, status, b, err, rec);
}

/* A job still holding its first batch that is forgotten without a commit (cannot happen on the
 * paths start takes; kept so that the submission is answered whatever changes there). */
static void drop_joint(job *jb)
{
    if (!jb->joint)
        return;
    journal_batch *b = jb->joint;
    jb->joint = NULL;
    ar_log_as("error", "scheduler", jb->id, "action %s ended before its first commit", jb->id);
    tell_stored(jb->stored, jb->stored_arg, AR_E_NOMEM, b, NULL, jb->rec);
    journal_batch_free(b);
}

/* Loop thread: forget a job that reached its end (or could not be journaled). */
static void finish(job *jb)
{
    drop_joint(jb);
    if (jb->cancel_done) {
        jb->cancel_done(jb->cancel_arg, AR_E_NOTFOUND, jb->rec);
        jb->cancel_done = NULL;
    }
    if (jb->c) {
        trial_unused(jb);
        pipe_leave(jb);
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
    conn *c = jb->c;
    int refused = t->status != AR_OK;
    after_fn after = refused ? NULL : t->after;
    free(t);
    jb->committing = 0;
    if (jb->cancel_after_commit) {
        /* Its next step applies the cancel (or the job ends) and answers it from here on. */
        jb->cancel_done = jb->cancel_after_commit;
        jb->cancel_arg = jb->cancel_after_commit_arg;
        jb->cancel_after_commit = NULL;
        jb->cancel_after_commit_arg = NULL;
    }
    if (after)
        after(jb);
    else
        finish(jb);
    if (refused && c && !s->stopping)
        pump(c); /* a place it held in the pipeline is free again (and the view shows it) */
    journaling_add(s, -1); /* after the next step is counted (see invoke_done) */
}

/* Writer thread: the record is durable (or refused). Report it; the loop goes on. */
static void transition_durable(void *arg, int status, journal_batch *b, const ar_error *err)
{
    transition *t = arg;
    job *jb = t->jb;
    if (t->stored)
        tell_stored(t->stored, t->stored_arg, status, b, err, jb->rec);
    journal_batch_free(b);
    t->status = status;
    if (status != AR_OK && t->stored) {
        /* Its first commit: nothing of the action was stored; the caller answers (a key that
         * won a race, counters read stale: decided again under another id). */
    } else if (status != AR_OK) {
        /* The journal still holds the previous state, which the next start resolves; this
         * process does not act on a state it could not record. */
        ar_log_as("error", "scheduler", jb->id,
                  "cannot journal action %s as %s: %s; it is resumed at the next start",
                  jb->id, action_state_name(action_record_state(jb->rec)),
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
 * (dispatched), what came back (completed, with the attempt's outcome), and how it ended. The
 * data is written as text straight from the record (audit.h). */
static void audit_transition(journal_batch *b, const json_t *rec)
{
    const char *id = action_record_str(rec, "id");
    const json_t *history = json_object_get(rec, "history");
    const json_t *last = json_array_get(history, json_array_size(history) - 1);
    action_state st = action_record_state(rec);
    if (st == ACTION_DISPATCHED) {
        audit_batch_append_data(b, "dispatched", id, audit_data_dispatched, rec);
        return;
    }
    if (json_is_object(last) && json_object_get(last, "outcome") && st != ACTION_CANCELLED)
        audit_batch_append_data(b, "completed", id, audit_data_completed, rec);
    if (json_is_object(json_object_get(rec, "validation")) && action_state_terminal(st))
        audit_batch_append_data(b, "validation_failed", id, audit_data_value,
                                json_object_get(rec, "validation"));
    if (st == ACTION_UNKNOWN_OUTCOME)
        audit_batch_append_data(b, "unknown_outcome", id, audit_data_unknown_outcome, rec);
    else if (st == ACTION_CANCELLED)
        audit_batch_append_data(b, "cancelled", id, audit_data_cancelled, rec);
}

/* Journal jb's record as it is now, then run after(jb) on the loop (NULL: finish the job). */
static void commit(job *jb, after_fn after)
{
    transition *t = calloc(1, sizeof *t);
    /* The action's first commit carries the batch that stores its submission. */
    scheduler_stored_fn stored = jb->joint ? jb->stored : NULL;
    journal_batch *b = jb->joint ? jb->joint : journal_batch_new();
    jb->joint = NULL;
    jb->place = JOB_NOWHERE;
    /* How it was recovered after a restart: audited with its next step, not stored. */
    json_t *recovered = json_incref(json_object_get(jb->rec, "recovered_how"));
    json_object_del(jb->rec, "recovered_how");
    jb->recovered = 0;
    if (recovered && b)
        audit_batch_append_data(b, "recovered", action_record_str(jb->rec, "id"), audit_data_recovered,
                                recovered);
    json_decref(recovered);
    if (!t || !b || action_batch_store(b, jb->rec) != AR_OK) {
        free(t);
        if (stored && b)
            tell_stored(stored, jb->stored_arg, AR_E_NOMEM, b, NULL, jb->rec);
        journal_batch_free(b);
        ar_log_as("error", "scheduler", action_record_str(jb->rec, "id"), "out of memory journaling action %s",
                  action_record_str(jb->rec, "id"));
        finish(jb);
        return;
    }
    audit_transition(b, jb->rec);
    t->jb = jb;
    t->after = after;
    t->stored = stored;
    t->stored_arg = jb->stored_arg;
    journaling_add(jb->s, +1);
    jb->committing = 1;
    if (journal_submit(jb->s->journal, b, transition_durable, t) != AR_OK) {
        jb->committing = 0;
        journaling_add(jb->s, -1);
        if (stored)
            tell_stored(stored, jb->stored_arg, AR_E_CLOSED, b, NULL, jb->rec);
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
        json_object_set_new(rec, "cancel_requested_by", json_string(jb->cancel_by));
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
    double lat = res->latency_us > 1 ? (double)res->latency_us : 1.0;
    c->call_ewma_us = c->call_ewma_us > 0 ? c->call_ewma_us + (lat - c->call_ewma_us) / 8 : lat;
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

/* Loop thread: the plugin answered an invoke (or crashed, or timed out). */
/* The call's result as a value of our own: the pool's parsed value when it has one (a
 * reference, not a copy: the frame it came in is done with it), else the text parsed. */
static json_t *result_of(const sandbox_result *res)
{
    if (res->result)
        return json_incref((json_t *)res->result);
    json_error_t jerr;
    return json_loadb(res->result_json, res->result_len, JSON_DECODE_ANY, &jerr);
}

static void invoke_done(void *arg, const sandbox_result *res)
{
    job *jb = arg;
    conn *c = jb->c;
    scheduler *s = jb->s;
    c->calls--;
    jb->place = JOB_NOWHERE;
    if (s->stopping) {
        /* Shutting down: what the pool reports now may not be what happened at the API. The
         * action stays DISPATCHED on disk for recovery. */
        finish(jb);
        return;
    }
    /* The process is free: the next durable attempt goes out before this outcome is handled. */
    drain_sendq(c);
    observe(c, res);
    if (jb->cancel_requested)
        json_object_set_new(jb->rec, "cancel_requested_by", json_string(jb->cancel_by));
    /* The job leaves the pipeline before its outcome is journaled: the journaling count covers
     * the gap, so that scheduler_free never sees a moment with nothing busy while work remains. */
    journaling_add(s, +1);
    pipe_leave(jb);
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms();
    json_object_set_new(rec, "latency_us", json_integer(res->latency_us));
    switch (classify(res)) {
    case OUT_OK: {
        json_t *result = result_of(res);
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
    journaling_add(s, -1);
    pump_all(s); /* a pipeline place freed here may serve another connector under max_inflight */
}

/* Loop thread: the plugin's lookup answered whether the attempt with this key happened. */
static void lookup_done(void *arg, const sandbox_result *res)
{
    job *jb = arg;
    conn *c = jb->c;
    scheduler *s = jb->s;
    c->calls--;
    jb->place = JOB_NOWHERE;
    if (s->stopping) {
        finish(jb);
        return;
    }
    drain_sendq(c);
    if (!(res->ok == 0 && res->error_class == AIORUN_E_NOT_FOUND))
        observe(c, res);
    if (jb->cancel_requested)
        json_object_set_new(jb->rec, "cancel_requested_by", json_string(jb->cancel_by));
    journaling_add(s, +1); /* as in invoke_done */
    pipe_leave(jb);
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms();
    if (res->ok) {
        json_t *result = result_of(res);
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
            json_object_set_new(rec, "cancel_requested_by", json_string(jb->cancel_by));
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
    journaling_add(s, -1);
    pump_all(s);
}

static sandbox_call call_of(job *jb)
{
    int64_t now = ar_now_ms(), deadline = jb->deadline_ms;
    int timeout = jb->c->cc->timeout_ms;
    if (deadline && deadline - now < timeout)
        timeout = deadline - now < 1 ? 1 : (int)(deadline - now);
    return (sandbox_call){
        .action = action_record_str(jb->rec, "action"),
        .input_json = jb->input_text,
        .input_len = strlen(jb->input_text),
        .input_compact = 1,
        .idempotency_key = action_record_str(jb->rec, "idempotency_key"),
        .attempt = (int)rec_int(jb->rec, "attempts"),
        .timeout_ms = timeout,
    };
}

/* ---- the pipeline ----------------------------------------------------------------------------------- */

/* How many jobs the connector's pipeline may hold when `slots` calls can run at once: the slots,
 * plus what they can take during two of the journal's commits (measured: a DISPATCHED intent
 * submitted while a commit is running waits for the next one). Deeper only helps when calls are
 * short next to a commit; otherwise it would only decide attempts early (priorities would then
 * order less of the work), so slow calls get no extra depth. At most
 * SCHEDULER_PIPELINE_PER_SLOT per slot. */
static int pipeline_depth(conn *c, int slots)
{
    if (c->fixed_depth > 0)
        return c->fixed_depth;
    int extra = 0;
    if (c->call_ewma_us > 0 && c->s->commit_ewma_us > 0) {
        double want = 2.0 * slots * c->s->commit_ewma_us / c->call_ewma_us;
        double cap = (double)slots * (SCHEDULER_PIPELINE_PER_SLOT - 1);
        extra = (int)(want < cap ? want : cap);
    }
    return slots + extra;
}

/* May another job enter the connector's pipeline now? (Its processes serve, and it is not full.) */
static int pipeline_room(conn *c)
{
    sandbox_state state;
    int serving;
    sandbox_pool_capacity(c->pool, &state, &serving); /* per dispatch: no descriptor copy */
    int slots = serving < c->cc->concurrency ? serving : c->cc->concurrency;
    if (state != SANDBOX_READY || slots < 1) {
        c->depth = 0;
        return 0;
    }
    c->depth = pipeline_depth(c, slots);
    return c->pipeline < c->depth;
}

/* End a job whose cancel came before anything of its current step was sent. */
static void cancel_now(job *jb, const char *before)
{
    json_t *rec = jb->rec;
    char msg[160];
    snprintf(msg, sizeof msg, "cancelled by %s before it was %s", jb->cancel_by, before);
    json_object_set_new(rec, "cancel_requested_by", json_string(jb->cancel_by));
    set_error(rec, "cancelled", msg);
    conclude(jb, maybe_happened(rec) ? ACTION_UNKNOWN_OUTCOME : ACTION_CANCELLED);
}

typedef enum unsent_why { UNSENT_CANCELLED, UNSENT_DEADLINE, UNSENT_INVALID } unsent_why;

/* Loop thread: a job that was waiting for a process (already out of the send queue) ends
 * without being sent: nothing of this step reached the API. An attempt journaled DISPATCHED
 * gets "not_sent" on its history entry. */
static void end_unsent(job *jb, unsent_why why)
{
    scheduler *s = jb->s;
    json_t *rec = jb->rec;
    int lookup = !jb->dispatch_recorded && jb->reconcile;
    journaling_add(s, +1); /* as in invoke_done: covers leaving the pipeline until the end is journaled */
    trial_unused(jb);
    pipe_leave(jb);
    if (jb->dispatch_recorded) {
        history_outcome(rec, "not_sent", NULL, ar_now_ms());
        jb->dispatch_recorded = 0;
    }
    switch (why) {
    case UNSENT_CANCELLED:
        cancel_now(jb, "sent");
        break;
    case UNSENT_DEADLINE:
        give_up(jb, "timeout", lookup ? "the action's deadline passed while its lookup waited for a process"
                                      : "the action's deadline passed while it waited for a process");
        break;
    case UNSENT_INVALID:
        if (lookup) {
            /* The plugin has no lookup after all: the outcome cannot be reconciled. */
            jb->reconcile = 0;
            set_error(rec, "unknown_outcome", "the plugin offers no lookup, so whether the last attempt "
                      "happened cannot be known: an operator must check and resolve it");
            conclude(jb, ACTION_UNKNOWN_OUTCOME);
        } else {
            give_up(jb, "invalid", "the call cannot be sent to the plugin's process (its input is not usable "
                    "JSON or does not fit in a frame)");
        }
        break;
    }
    journaling_add(s, -1);
}

/* Loop thread: send the head of the connector's send queue to an idle process, or end it when
 * it can no longer be sent. 0 when it has to wait (no idle process, or the connector's
 * concurrency is reached): it stays at the head. */
static int send_head(conn *c)
{
    job *jb = c->sendq_head;
    if (jb->cancel_requested || (jb->deadline_ms && ar_now_ms() >= jb->deadline_ms)) {
        sendq_remove(c, jb);
        end_unsent(jb, jb->cancel_requested ? UNSENT_CANCELLED : UNSENT_DEADLINE);
        return 1;
    }
    if (c->calls >= c->cc->concurrency)
        return 0;
    int lookup = jb->reconcile;
    sandbox_call call = call_of(jb);
    int rc = lookup ? sandbox_pool_lookup(c->pool, &call, lookup_done, jb)
                    : sandbox_pool_invoke(c->pool, &call, invoke_done, jb);
    if (rc == AR_OK) {
        sendq_remove(c, jb);
        jb->place = JOB_INFLIGHT;
        jb->dispatch_recorded = 0;
        jb->trial_since_ms = 0; /* its outcome decides the trial */
        c->calls++;
        if (!lookup)
            observe_stage(c, "process_wait", (double)(mono_us() - jb->stage_us) / 1e6);
        return 1;
    }
    if (rc != AR_E_INVALID)
        return 0; /* no idle process (or the pool was refused, or no memory): wait */
    sendq_remove(c, jb);
    end_unsent(jb, UNSENT_INVALID);
    return 1;
}

/* Loop thread: send what waits for a process, in order, while processes are idle. */
static void drain_sendq(conn *c)
{
    while (c->sendq_head && !c->s->stopping && send_head(c))
        ;
}

/* Loop thread: end what in the send queue was cancelled or ran out of time (not only at its
 * head). Returns the soonest deadline still waiting there (0: none). */
static int64_t sweep_sendq(conn *c)
{
    int64_t now = ar_now_ms(), soonest = 0;
    for (job *jb = c->sendq_head, *next; jb; jb = next) {
        next = jb->send_next;
        if (jb->cancel_requested || (jb->deadline_ms && now >= jb->deadline_ms)) {
            sendq_remove(c, jb);
            end_unsent(jb, jb->cancel_requested ? UNSENT_CANCELLED : UNSENT_DEADLINE);
        } else if (jb->deadline_ms && (!soonest || jb->deadline_ms < soonest)) {
            soonest = jb->deadline_ms;
        }
    }
    return soonest;
}

/* Loop thread, stopping: an attempt journaled DISPATCHED and never sent goes back to
 * RETRY_WAIT, due at once and not counted (its history entry says "not_sent"), so that the
 * next start runs it like any waiting action instead of treating it as possibly performed.
 * The job ends once that is durable. */
static void roll_back_unsent(job *jb)
{
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms(), attempts = rec_int(rec, "attempts");
    history_outcome(rec, "not_sent", NULL, now);
    json_object_set_new(rec, "attempts", json_integer(attempts > 0 ? attempts - 1 : 0));
    json_object_set_new(rec, "next_attempt_ms", json_integer(now));
    json_object_set_new(rec, "reconcile", json_false());
    action_record_set_state(rec, ACTION_RETRY_WAIT, now);
    jb->dispatch_recorded = 0;
    commit(jb, NULL);
}

/* Loop thread (after the DISPATCHED commit): the attempt is durable; the call may now cross into
 * the plugin's process, as soon as one is idle. */
static void dispatch_durable(job *jb)
{
    conn *c = jb->c;
    scheduler *s = jb->s;
    int64_t now_us = mono_us();
    double took_us = (double)(now_us - jb->stage_us);
    observe_stage(c, "dispatch_journal", took_us / 1e6);
    if (took_us < 1)
        took_us = 1;
    s->commit_ewma_us = s->commit_ewma_us > 0 ? s->commit_ewma_us + (took_us - s->commit_ewma_us) / 8 : took_us;
    jb->stage_us = now_us;
    jb->dispatch_recorded = 1;
    if (jb->intent) {
        jb->intent = 0;
        c->journaling--;
    }
    if (s->stopping) {
        pipe_leave(jb);
        roll_back_unsent(jb);
        return;
    }
    if (jb->cancel_requested) {
        end_unsent(jb, UNSENT_CANCELLED);
        return;
    }
    sendq_push(c, jb);
    pump(c);
}

/* Loop thread: the next step of a job just taken off the ready queue: a lookup (straight to the
 * send queue: it changes nothing at the API), or a new attempt, whose DISPATCHED intent is
 * journaled first. trial: it takes a half-open breaker's trial (given back if it ends unsent).
 * Returns 1 when it entered the pipeline, 0 when it ended (the trial then unused). */
/* The history entry of an attempt going out: the tree json_pack("{s:s, s:i, s:s, s:s, s:I, s:I}")
 * made, keys in the same order, built without reading a format string per attempt (a few per
 * cent of the loop thread). NULL when out of memory or a string is not UTF-8, as json_pack. */
static json_t *invoke_entry(int attempt, const char *key, const char *digest, int64_t deadline_ms,
                            int64_t started_ms)
{
    json_t *e = json_object();
    if (!e)
        return NULL;
    if (json_object_set_new_nocheck(e, "kind", json_string_nocheck("invoke")) ||
        json_object_set_new_nocheck(e, "attempt", json_integer(attempt)) ||
        json_object_set_new_nocheck(e, "key", json_string(key)) ||
        json_object_set_new_nocheck(e, "digest", json_string(digest)) ||
        json_object_set_new_nocheck(e, "deadline_ms", json_integer((json_int_t)deadline_ms)) ||
        json_object_set_new_nocheck(e, "started_ms", json_integer((json_int_t)started_ms))) {
        json_decref(e);
        return NULL;
    }
    return e;
}

static int start(job *jb, int trial)
{
    conn *c = jb->c;
    if (job_load(jb) != AR_OK) {
        finish(jb);
        return 0;
    }
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms(), deadline = jb->deadline_ms;
    if (jb->cancel_requested) {
        cancel_now(jb, "dispatched");
        return 0;
    }
    if (deadline && now >= deadline) {
        give_up(jb, "timeout", "the action's deadline passed before it could be dispatched");
        return 0;
    }
    if (trial)
        jb->trial_since_ms = c->breaker.since_ms;
    if (jb->reconcile) {
        pipe_enter(jb);
        sendq_push(c, jb);
        drain_sendq(c);
        return 1;
    }
    if ((int)rec_int(rec, "attempts") >= attempt_limit(jb)) {
        jb->trial_since_ms = 0;
        give_up(jb, "retryable", "no attempts are left");
        return 0;
    }
    if (jb->queued_mono_ms)
        observe_stage(c, "queue_wait", (double)(ar_mono_ms() - jb->queued_mono_ms) / 1000.0);
    pipe_enter(jb);
    jb->intent = 1;
    c->journaling++;
    int attempt = (int)rec_int(rec, "attempts") + 1;
    json_object_set_new(rec, "attempts", json_integer(attempt));
    json_object_del(rec, "next_attempt_ms");
    json_object_del(rec, "reconcile");
    history_append(rec, invoke_entry(attempt, action_record_str(rec, "idempotency_key"),
                                     action_record_str(rec, "digest"), deadline, now));
    action_record_set_state(rec, ACTION_DISPATCHED, now);
    jb->stage_us = mono_us();
    commit(jb, dispatch_durable);
    return 1;
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

/* Expiries handled in one go; more wait for the next turn of the loop, so that a mass expiry
 * does not hold the loop for long. */
#define EXPIRE_BATCH 256

/* While the connector cannot dispatch, actions keep waiting (they do not fail) until their
 * deadline; then they fail with the reason they waited for. Soonest deadline first: O(log n) per
 * action that expires, O(1) when none is due. Returns 1 when more are due than were handled. */
static int expire_due(conn *c, const char *cls, const char *why)
{
    int64_t now = ar_now_ms();
    job *jb;
    for (int handled = 0; (jb = heap_top(&c->deadlines)) && jb->deadline_ms <= now; handled++) {
        if (handled == EXPIRE_BATCH)
            return 1;
        unqueue(c, jb);
        jb->place = JOB_NOWHERE;
        if (job_load(jb) != AR_OK) {
            finish(jb);
            continue;
        }
        char msg[400];
        snprintf(msg, sizeof msg, "the action's deadline passed while %s", why);
        give_up(jb, cls, msg);
    }
    return 0;
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
    if (!pipeline_room(c)) {
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
    job *top = heap_top(&c->queue);
    double reserve = c->bucket.burst / 4 > 1 ? c->bucket.burst / 4 : 1;
    double need = top && top->priority < 0 && !top->front ? reserve : 1;
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

/* Loop thread: start a job that blocked() let through (it took a rate-limit token and, with
 * trial, a half-open breaker's trial). */
static void start_now(conn *c, job *jb, int64_t now, int trial)
{
    flow_bucket_take(&c->bucket, now);
    if (!start(jb, trial) && trial)
        c->breaker.trials_started--; /* no call went out: the trial slot is still free */
}

/* ---- the hold: new actions waiting for a place, not stored yet ---------------------------------- */

/* Loop thread: park a new action whose client waits for its outcome, so that it can still go
 * in with its first intent once a place is free (scheduler_submit). Its time there counts as
 * queue wait. */
static void hold_push(conn *c, job *jb)
{
    int64_t now = ar_mono_ms();
    jb->hold_until_mono_ms = now + jb->hold_ms;
    jb->queued_mono_ms = now;
    jb->held_next = NULL;
    if (c->held_tail)
        c->held_tail->held_next = jb;
    else
        c->held_head = jb;
    c->held_tail = jb;
    c->held_n++;
    if (!c->held_due_mono_ms || jb->hold_until_mono_ms < c->held_due_mono_ms)
        c->held_due_mono_ms = jb->hold_until_mono_ms;
    wake_in(c, jb->hold_ms);
}

static job *hold_pop(conn *c)
{
    job *jb = c->held_head;
    if (!jb)
        return NULL;
    c->held_head = jb->held_next;
    if (!c->held_head) {
        c->held_tail = NULL;
        c->held_due_mono_ms = 0;
    }
    jb->held_next = NULL;
    c->held_n--;
    return jb;
}

/* Loop thread: every held action whose time is up is stored READY (and queued as any other
 * once durable; its client goes on waiting). Looks only once the earliest end may be due. */
static void hold_expire(conn *c)
{
    int64_t now = ar_mono_ms(), due = 0;
    if (!c->held_head || now < c->held_due_mono_ms)
        return;
    job **link = &c->held_head, *prev = NULL;
    while (*link) {
        job *jb = *link;
        if (jb->hold_until_mono_ms <= now) {
            *link = jb->held_next;
            if (c->held_tail == jb)
                c->held_tail = prev;
            c->held_n--;
            jb->held_next = NULL;
            submit_as_is(jb);
            continue;
        }
        if (!due || jb->hold_until_mono_ms < due)
            due = jb->hold_until_mono_ms;
        prev = jb;
        link = &jb->held_next;
    }
    c->held_due_mono_ms = due;
    if (due)
        wake_in(c, due - now);
}

/* May a new action wait in the hold rather than be stored READY? Only for what passes soon:
 * not while the connector is paused, its breaker open or the API asked it to wait. */
static int may_hold(const conn *c, const job *jb, int64_t now)
{
    return jb->hold_ms > 0 && !c->paused && c->breaker.state != BREAKER_OPEN &&
           c->rate_limited_until_ms <= now;
}

/* Loop thread: send what the pipeline holds to idle processes, then start as many queued jobs
 * as the connector and the daemon allow, then (once none is queued) held ones, in order. */
static void pump(conn *c)
{
    hold_expire(c);
    if (c->sendq_head && !c->s->stopping) {
        int64_t soonest = sweep_sendq(c);
        drain_sendq(c);
        if (c->sendq_head) {
            /* Look again for deadlines of what still waits, and in case an idle event went by. */
            int64_t delay = soonest ? soonest - ar_now_ms() : 500;
            wake_in(c, delay < 500 ? delay : 500);
        }
    }
    while (c->queue.n && !c->s->stopping) {
        int64_t now = ar_now_ms(), wait_ms;
        int trial;
        const char *cls, *why = blocked(c, now, &wait_ms, &cls, &trial);
        if (why) {
            int more = expire_due(c, cls, why);
            /* Look again when the block may lift or the next deadline comes, at least every
             * 500 ms. */
            int64_t delay = more ? 0 : wait_ms >= 0 && wait_ms < 500 ? wait_ms : 500;
            job *next = heap_top(&c->deadlines);
            if (next && next->deadline_ms - now < delay)
                delay = next->deadline_ms - now;
            if (c->queue.n)
                wake_in(c, delay);
            break;
        }
        job *jb = queue_pop(c);
        jb->place = JOB_NOWHERE;
        start_now(c, jb, now, trial);
    }
    while (c->held_head && !c->queue.n && !c->s->stopping) {
        int64_t now = ar_now_ms(), wait_ms;
        int trial;
        const char *cls;
        if (blocked(c, now, &wait_ms, &cls, &trial)) {
            if (wait_ms >= 0)
                wake_in(c, wait_ms);
            break;
        }
        job *jb = hold_pop(c);
        job_link(jb);
        start_now(c, jb, now, trial);
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
    char *text = rec ? jsonw_dumps(rec, JSON_COMPACT) : NULL;
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

/* Copy what GET /v1/connectors shows of the connector's flow (on every change: it must stay
 * cheap; the JSON is made when asked, scheduler_connector_flow). */
static void publish(conn *c)
{
    pthread_mutex_lock(&c->view_lock);
    flow_snap *v = &c->view;
    v->paused = c->paused;
    if (c->paused) {
        memcpy(v->paused_by, c->paused_by, sizeof v->paused_by);
        memcpy(v->pause_reason, c->pause_reason, sizeof v->pause_reason);
    }
    v->paused_at_ms = c->paused_at_ms;
    v->rate_limited_until_ms = c->rate_limited_until_ms;
    v->breaker = c->breaker;
    v->breaker.ring = NULL;
    v->bucket = c->bucket;
    v->calls = c->calls;
    v->dispatching = c->pipeline - c->calls;
    v->waiting = c->sendq_n;
    v->depth = c->depth;
    v->queued = c->queue.n + (size_t)c->held_n;
    pthread_mutex_unlock(&c->view_lock);
    atomic_store_explicit(&c->startable,
                          !c->paused && c->queue.n == 0 && !c->held_head && c->pipeline < c->depth &&
                              c->breaker.state != BREAKER_OPEN && c->rate_limited_until_ms <= ar_now_ms(),
                          memory_order_relaxed);
}

static json_t *flow_view(const config_connector *cc, flow_snap *v)
{
    int64_t now = ar_now_ms();
    json_t *breaker = flow_breaker_view(&v->breaker);
    json_object_set_new(breaker, "since", time_or_null(json_integer_value(json_object_get(breaker, "since_ms"))));
    json_object_set_new(breaker, "next_trial_at",
                        time_or_null(json_integer_value(json_object_get(breaker, "next_trial_ms"))));
    json_object_del(breaker, "since_ms");
    json_object_del(breaker, "next_trial_ms");
    json_t *rate = cc->rate_per_second > 0
                       ? json_pack("{s:f, s:i, s:f}", "per_second", cc->rate_per_second, "burst", cc->rate_burst,
                                   "tokens", flow_bucket_level(&v->bucket, now))
                       : json_null();
    return json_pack("{s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:i, s:I, s:i, s:i, s:i}", "paused", v->paused,
                     "paused_by", v->paused ? json_string(v->paused_by) : json_null(),
                     "paused_at", v->paused ? time_or_null(v->paused_at_ms) : json_null(),
                     "pause_reason", v->paused && v->pause_reason[0] ? json_string(v->pause_reason) : json_null(),
                     "rate_limited_until", v->rate_limited_until_ms > now ? time_or_null(v->rate_limited_until_ms) : json_null(),
                     "breaker", breaker, "rate_limit", rate, "concurrency", cc->concurrency,
                     "inflight", v->calls, "queued", (json_int_t)v->queued,
                     "dispatching", v->dispatching, "waiting_for_process", v->waiting, "pipeline", v->depth);
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
    flow_snap v;
    pthread_mutex_lock(&c->view_lock);
    v = c->view;
    pthread_mutex_unlock(&c->view_lock);
    *out = flow_view(c->cc, &v);
    return *out ? AR_OK : AR_E_NOMEM;
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

void scheduler_set_pending_watch(scheduler *s, scheduler_pending_fn fn, void *arg)
{
    s->pending_fn = fn;
    s->pending_arg = arg;
}

typedef struct pipeline_req {
    conn *c;
    int depth;
} pipeline_req;

static void pipeline_on_loop(loop_t *loop, void *arg)
{
    (void)loop;
    pipeline_req *pr = arg;
    pr->c->fixed_depth = pr->depth;
    pipeline_room(pr->c); /* the depth shown by GET /v1/connectors, before any work comes */
    publish(pr->c);
    pump(pr->c);
    free(pr);
}

int scheduler_set_pipeline(scheduler *s, const char *name, int depth)
{
    if (!s)
        return AR_E_CLOSED;
    conn *c = find_conn(s, name);
    if (!c)
        return AR_E_NOTFOUND;
    if (depth < 0)
        return AR_E_INVALID;
    pipeline_req *pr = calloc(1, sizeof *pr);
    if (!pr)
        return AR_E_NOMEM;
    pr->c = c;
    pr->depth = depth;
    int rc = loop_post(s->loop, pipeline_on_loop, pr);
    if (rc != AR_OK)
        free(pr);
    return rc;
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

/* Loop thread: RETRY_WAIT is durable (or was found at start); wake up at next_attempt_ms. */
static void arm_timer(job *jb)
{
    if (jb->cancel_requested) {
        /* Cancelled while RETRY_WAIT was being journaled: it ends now, not when the timer would
         * fire (a Retry-After may be hours away). */
        jb->place = JOB_NOWHERE;
        if (job_load(jb) != AR_OK) {
            finish(jb);
            return;
        }
        cancel_now(jb, "dispatched");
        return;
    }
    if (jb->rec)
        jb->next_attempt_ms = rec_int(jb->rec, "next_attempt_ms");
    int64_t wait = jb->next_attempt_ms - ar_now_ms();
    jb->dispatch_recorded = 0;
    jb->place = JOB_WAITING;
    maybe_compact(jb);
    jb->timer = loop_timer_add(jb->s->loop, ar_mono_ms() + (wait > 0 ? wait : 0), timer_fired, jb);
    if (!jb->timer) /* out of memory for a timer: try at once rather than never */
        timer_fired(jb->s->loop, jb);
}

/* ---- entry points ------------------------------------------------------------------------------- */

static job *job_alloc(scheduler *s)
{
    job *jb = calloc(1, sizeof *jb);
    if (!jb)
        return NULL;
    jb->s = s;
    jb->qpos = jb->dpos = NO_POS;
    return jb;
}

/* A job for a record (taken). */
static job *job_new(scheduler *s, json_t *rec)
{
    job *jb = job_alloc(s);
    if (!jb)
        return NULL;
    jb->rec = rec;
    job_note(jb);
    jb->c = find_conn(s, action_record_str(rec, "connector"));
    jb->reconcile = json_is_true(json_object_get(rec, "reconcile"));
    return jb;
}

/* Loop thread: the job counts among those the scheduler holds (cancel finds it there). */
static void job_link(job *jb)
{
    scheduler *s = jb->s;
    jb->all_next = s->all;
    if (s->all)
        s->all->all_prev = jb;
    s->all = jb;
}

/* Loop thread: take a job in, by the state its record is in (no pump). */
static void accept_one(job *jb)
{
    scheduler *s = jb->s;
    conn *c = jb->c;
    if (!c || s->stopping) {
        /* Unknown connector (removed from the config): it stays as it is on disk. */
        held_add(s, -1);
        job_free(jb);
        return;
    }
    job_link(jb);
    int waiting = jb->rec ? action_record_state(jb->rec) == ACTION_RETRY_WAIT : jb->retry_wait;
    if (waiting) {
        arm_timer(jb);
        return;
    }
    maybe_compact(jb);
    push_back(c, jb);
}

static void accept_job(loop_t *loop, void *arg)
{
    (void)loop;
    job *jb = arg;
    conn *c = jb->c;
    accept_one(jb);
    if (c)
        pump(c);
}

/* Many jobs at once (recovery): one hand-off, one pump per connector. */
typedef struct job_batch {
    scheduler *s;
    job **jobs;
    size_t n;
} job_batch;

static void accept_batch(loop_t *loop, void *arg)
{
    (void)loop;
    job_batch *b = arg;
    for (size_t i = 0; i < b->n; i++)
        accept_one(b->jobs[i]);
    pump_all(b->s);
    free(b->jobs);
    free(b);
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

int scheduler_can_start(scheduler *s, const char *connector)
{
    conn *c = s && connector ? find_conn(s, connector) : NULL;
    return c && atomic_load_explicit(&c->startable, memory_order_relaxed);
}

/* Completion thread: a submission's batch, journaled with its action READY, is durable or
 * refused. Durable: the job is taken in like an enqueued one. */
static void submitted_as_is(void *arg, int status, journal_batch *b, const ar_error *err)
{
    job *jb = arg;
    scheduler *s = jb->s;
    tell_stored(jb->stored, jb->stored_arg, status, b, err, jb->rec);
    journal_batch_free(b);
    if (status == AR_OK && s->notify)
        s->notify(s->notify_arg, jb->rec);
    if (status != AR_OK || loop_post(s->loop, accept_job, jb) != AR_OK) {
        held_add(s, -1);
        job_free(jb);
    }
}

static void submit_as_is(job *jb)
{
    journal_batch *b = jb->joint;
    jb->joint = NULL;
    int rc = action_batch_store(b, jb->rec);
    if (rc != AR_OK || journal_submit(jb->s->journal, b, submitted_as_is, jb) != AR_OK) {
        tell_stored(jb->stored, jb->stored_arg, rc != AR_OK ? rc : AR_E_CLOSED, b, NULL, jb->rec);
        journal_batch_free(b);
        held_add(jb->s, -1);
        job_free(jb);
    }
}

/* Loop thread: a new action (scheduler_submit). Started at once when nothing is ahead of it
 * and nothing holds its connector back (the checks pump makes), its record stored DISPATCHED
 * in the submission's batch (commit); otherwise stored READY in it (submit_as_is). */
static void accept_submission(loop_t *loop, void *arg)
{
    (void)loop;
    job *jb = arg;
    scheduler *s = jb->s;
    conn *c = jb->c;
    int64_t now = ar_now_ms(), wait_ms;
    int trial = 0;
    const char *cls;
    if (!c || s->stopping || c->queue.n || c->held_head || c->sendq_head ||
        blocked(c, now, &wait_ms, &cls, &trial)) {
        if (c && !s->stopping && may_hold(c, jb, now)) {
            hold_push(c, jb);
            pump(c); /* what blocked it may be gone already (an attempt waiting to be sent) */
            return;
        }
        submit_as_is(jb);
        if (c)
            publish(c);
        return;
    }
    job_link(jb);
    start_now(c, jb, now, trial);
    publish(c);
}

int scheduler_submit(scheduler *s, json_t *rec, journal_batch *b, scheduler_stored_fn stored,
                     void *arg, int64_t hold_ms)
{
    if (!s)
        return AR_E_CLOSED;
    job *jb = job_new(s, json_incref(rec));
    if (!jb) {
        json_decref(rec);
        return AR_E_NOMEM;
    }
    jb->joint = b;
    jb->stored = stored;
    jb->stored_arg = arg;
    jb->hold_ms = hold_ms > 0 ? hold_ms : 0;
    held_add(s, +1); /* counted at once, as scheduler_enqueue */
    int rc = loop_post(s->loop, accept_submission, jb);
    if (rc != AR_OK) {
        held_add(s, -1);
        jb->joint = NULL; /* the caller keeps it */
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
    while (jb && strcmp(jb->id, cr->id) != 0)
        jb = jb->all_next;
    if (!jb || jb->cancel_done || jb->cancel_after_commit) {
        cr->done(cr->arg, AR_E_NOTFOUND, jb ? jb->rec : NULL);
        free(cr);
        return;
    }
    jb->cancel_requested = 1;
    snprintf(jb->cancel_by, sizeof jb->cancel_by, "%s", cr->who);
    /* Shown on the record from its next step on (while a state is being journaled, the record
     * is being read by the journal's thread: not touched here). */
    if (jb->place == JOB_INFLIGHT)
        json_object_set_new(jb->rec, "cancel_requested_by", json_string(cr->who));
    switch (jb->place) {
    case JOB_QUEUED:
    case JOB_WAITING:
        if (jb->place == JOB_QUEUED)
            unqueue(jb->c, jb);
        else
            loop_timer_cancel(loop, jb->timer);
        jb->place = JOB_NOWHERE;
        jb->cancel_done = cr->done;
        jb->cancel_arg = cr->arg;
        if (job_load(jb) != AR_OK) {
            finish(jb); /* answers AR_E_NOTFOUND: the scheduler no longer holds it */
            break;
        }
        cancel_now(jb, "dispatched");
        break;
    case JOB_SENDQ: {
        /* Journaled as dispatched (or about to ask the lookup) but never sent: nothing of this
         * step reached the API. */
        conn *c = jb->c;
        sendq_remove(c, jb);
        jb->cancel_done = cr->done;
        jb->cancel_arg = cr->arg;
        end_unsent(jb, UNSENT_CANCELLED);
        pump(c); /* a place in the pipeline is free */
        break;
    }
    case JOB_NOWHERE:
        if (jb->committing) {
            /* A state is being journaled (RETRY_WAIT, DISPATCHED, an end): the step after it
             * applies the cancel (a waiting action ends, an attempt is not sent) and answers. A
             * client that already read the new state must not hear "in flight". */
            jb->cancel_after_commit = cr->done;
            jb->cancel_after_commit_arg = cr->arg;
            break;
        }
        /* Being handed around: as for a call in flight, the cancel is applied at its next step. */
        cr->done(cr->arg, AR_E_BUSY, jb->rec);
        break;
    case JOB_INFLIGHT:
        /* A call is running: it ends first; the cancel is applied at its outcome. */
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
        c->deadlines.by_deadline = 1;
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
    for (size_t i = 0; i < s->n_conns; i++) {
        conn *c = &s->conns[i];
        heap_clear(&c->queue);
        heap_clear(&c->deadlines);
        /* Held actions are stored READY, as any submission that comes during the stop. */
        for (job *jb; (jb = hold_pop(c));)
            submit_as_is(jb);
        /* Attempts journaled but never sent go back to waiting, durably; a lookup not sent
         * changed nothing on disk. */
        while (c->sendq_head) {
            job *jb = c->sendq_head;
            sendq_remove(c, jb);
            if (jb->dispatch_recorded) {
                journaling_add(s, +1);
                pipe_leave(jb);
                roll_back_unsent(jb);
                journaling_add(s, -1);
            } else {
                finish(jb);
            }
        }
    }
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
        heap_fini(&c->queue);
        heap_fini(&c->deadlines);
        flow_breaker_fini(&c->breaker);
        json_decref(c->events);
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

/* ---- reading a stored record's top-level members without parsing it ---------------------------- */

/* Recovery reads every record of the queue once: a READY one needs only a few members (state,
 * connector, priority and times), so those are picked out of the stored text directly, skipping
 * the rest (input, history, decision) without building it. A record this cannot read is parsed
 * in full instead. */

typedef struct rec_peek {
    char state[32];
    char connector[80];
    int64_t priority, created_ms, deadline_ms, next_attempt_ms;
    int reconcile;
    const char *approval;       /* the "approval" member's text, or NULL */
    size_t approval_len;
} rec_peek;

/* Characters that matter while skipping a nested value: quotes and brackets. */
static const unsigned char json_special[256] = {['"'] = 1, ['{'] = 1, ['['] = 1, ['}'] = 1, [']'] = 1};

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at an opening quote: just past the closing one (NULL: unterminated). */
static const char *skip_string(const char *p, const char *end)
{
    const char *start = ++p;
    for (;;) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q)
            return NULL;
        size_t backslashes = 0;
        while (q - backslashes > start && q[-1 - (ptrdiff_t)backslashes] == '\\')
            backslashes++;
        if (backslashes % 2 == 0)
            return q + 1;
        p = q + 1;
    }
}

/* p at a value: just past it (NULL: malformed). */
static const char *skip_value(const char *p, const char *end)
{
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            while (p < end && !json_special[(unsigned char)*p])
                p++;
            if (p >= end)
                return NULL;
            if (*p == '"') {
                if (!(p = skip_string(p, end)))
                    return NULL;
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if (--depth == 0)
                return p + 1;
            p++;
        }
        return NULL;
    }
    const char *start = p;
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
        p++;
    return p > start ? p : NULL;
}

typedef void (*member_fn)(void *arg, const char *key, size_t klen, const char *val, size_t vlen);

/* Call fn for each member of the JSON object in text (values as raw text). 0, or -1 when the
 * text is not an object this reader understands. */
static int each_member(const char *text, size_t len, member_fn fn, void *arg)
{
    const char *p = text, *end = text + len;
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return -1;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return 0;
    for (;;) {
        if (p >= end || *p != '"')
            return -1;
        const char *key = p + 1;
        if (!(p = skip_string(p, end)))
            return -1;
        size_t klen = (size_t)(p - 1 - key);
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return -1;
        const char *val = skip_ws(p + 1, end);
        if (!(p = skip_value(val, end)))
            return -1;
        fn(arg, key, klen, val, (size_t)(p - val));
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        return p < end && *p == '}' ? 0 : -1;
    }
}

#define KEY_IS(lit) (klen == sizeof(lit) - 1 && memcmp(key, lit, klen) == 0)

/* An integer member as json_integer_value reads it: 0 unless it is a plain integer. */
static int64_t raw_int(const char *val, size_t vlen)
{
    size_t i = val[0] == '-';
    if (i == vlen || vlen - i > 18)
        return 0;
    int64_t v = 0;
    for (; i < vlen; i++) {
        if (val[i] < '0' || val[i] > '9')
            return 0;
        v = v * 10 + (val[i] - '0');
    }
    return val[0] == '-' ? -v : v;
}

/* A string member without escapes into buf ("" when it is anything else or too long). */
static void raw_string(const char *val, size_t vlen, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (vlen < 2 || val[0] != '"' || vlen - 2 >= cap || memchr(val, '\\', vlen))
        return;
    memcpy(buf, val + 1, vlen - 2);
    buf[vlen - 2] = '\0';
}

static void peek_member(void *arg, const char *key, size_t klen, const char *val, size_t vlen)
{
    rec_peek *pk = arg;
    if (KEY_IS("state"))
        raw_string(val, vlen, pk->state, sizeof pk->state);
    else if (KEY_IS("connector"))
        raw_string(val, vlen, pk->connector, sizeof pk->connector);
    else if (KEY_IS("priority"))
        pk->priority = raw_int(val, vlen);
    else if (KEY_IS("created_ms"))
        pk->created_ms = raw_int(val, vlen);
    else if (KEY_IS("deadline_ms"))
        pk->deadline_ms = raw_int(val, vlen);
    else if (KEY_IS("next_attempt_ms"))
        pk->next_attempt_ms = raw_int(val, vlen);
    else if (KEY_IS("reconcile"))
        pk->reconcile = vlen == 4 && memcmp(val, "true", 4) == 0;
    else if (KEY_IS("approval") && val[0] == '{') {
        pk->approval = val;
        pk->approval_len = vlen;
    }
}

static void peek_expiry(void *arg, const char *key, size_t klen, const char *val, size_t vlen)
{
    if (KEY_IS("expires_ms"))
        *(int64_t *)arg = raw_int(val, vlen);
}

/* 0 when the members were read and a state was among them (a key written with escapes, say,
 * is not recognised here: the full parse then reads the record). */
static int peek_record(const char *text, size_t len, rec_peek *pk)
{
    memset(pk, 0, sizeof *pk);
    return each_member(text, len, peek_member, pk) == 0 && pk->state[0] ? 0 : -1;
}

/* The same members from a parsed record. */
static void peek_json(const json_t *rec, rec_peek *pk)
{
    memset(pk, 0, sizeof *pk);
    snprintf(pk->state, sizeof pk->state, "%s", action_record_str(rec, "state"));
    snprintf(pk->connector, sizeof pk->connector, "%s", action_record_str(rec, "connector"));
    pk->priority = rec_int(rec, "priority");
    pk->created_ms = rec_int(rec, "created_ms");
    pk->deadline_ms = rec_int(rec, "deadline_ms");
    pk->next_attempt_ms = rec_int(rec, "next_attempt_ms");
    pk->reconcile = json_is_true(json_object_get(rec, "reconcile"));
}

/* ---- recovery ------------------------------------------------------------------------------------ */

typedef struct job_list {
    job **jobs;
    size_t n, cap;
} job_list;

static int job_list_add(job_list *l, job *jb)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        job **jobs = realloc(l->jobs, cap * sizeof *jobs);
        if (!jobs)
            return AR_E_NOMEM;
        l->jobs = jobs;
        l->cap = cap;
    }
    l->jobs[l->n++] = jb;
    return AR_OK;
}

/* A compact job for an action found waiting to run (READY, APPROVED, RETRY_WAIT). */
static job *job_recovered(scheduler *s, const char *id, const rec_peek *pk, int retry_wait)
{
    job *jb = job_alloc(s);
    if (!jb)
        return NULL;
    snprintf(jb->id, sizeof jb->id, "%s", id);
    jb->c = find_conn(s, pk->connector);
    jb->priority = (int)pk->priority;
    jb->created_ms = pk->created_ms;
    jb->deadline_ms = pk->deadline_ms;
    jb->next_attempt_ms = pk->next_attempt_ms;
    jb->reconcile = retry_wait && pk->reconcile;
    jb->retry_wait = retry_wait;
    jb->recovered = 1;
    return jb;
}

/* A record that was DISPATCHED when the daemon died (rec taken): to resume (resend or
 * reconcile), or to end as UNKNOWN_OUTCOME (appended to unknown). */
static int recover_dispatched(scheduler *s, json_t *rec, job_list *resume, json_t *unknown,
                              scheduler_recovery *out)
{
    const char *mode = mode_of(rec);
    /* The daemon died during the call (or before sending it: it cannot know): the outcome is
     * unknown. */
    json_object_set_new(rec, "maybe_happened", json_true());
    history_outcome(rec, "daemon_stopped", NULL, ar_now_ms());
    if (strcmp(mode, "lookup") == 0) {
        json_object_set_new(rec, "reconcile", json_true());
        json_object_set_new(rec, "recovered_how", json_string("in flight when the daemon stopped: "
                            "asking the plugin's lookup whether it happened"));
        out->reconciled++;
    } else if (strcmp(mode, "native") == 0 || is_read(rec)) {
        json_object_set_new(rec, "recovered_how", json_string(is_read(rec)
                            ? "in flight when the daemon stopped: a read, sent again"
                            : "in flight when the daemon stopped: sent again with the same key "
                              "(the API deduplicates)"));
        out->resent++;
    } else {
        json_array_append_new(unknown, rec);
        return AR_OK;
    }
    job *jb = job_new(s, rec);
    if (!jb) {
        json_decref(rec);
        return AR_E_NOMEM;
    }
    if (job_list_add(resume, jb) != AR_OK) {
        job_free(jb);
        return AR_E_NOMEM;
    }
    return AR_OK;
}

/* One record of the queue, read once. */
static int recover_one(scheduler *s, const char *id, const char *text, size_t len, job_list *resume,
                       json_t *unknown, scheduler_recovery *out)
{
    rec_peek pk;
    json_t *rec = NULL;
    if (peek_record(text, len, &pk) != 0) {
        rec = json_loadb(text, len, 0, NULL);
        if (!json_is_object(rec)) {
            json_decref(rec);
            return AR_OK; /* unreadable: left as it is (as before) */
        }
        peek_json(rec, &pk);
    }
    int st = action_state_from_name(pk.state);
    if (st == ACTION_READY || st == ACTION_APPROVED || st == ACTION_RETRY_WAIT) {
        json_decref(rec);
        out->resumed++;
        job *jb = job_recovered(s, id, &pk, st == ACTION_RETRY_WAIT);
        if (!jb || !jb->c) { /* no such connector any more: it stays as it is on disk */
            free(jb);
            return jb ? AR_OK : AR_E_NOMEM;
        }
        if (job_list_add(resume, jb) != AR_OK) {
            free(jb);
            return AR_E_NOMEM;
        }
        return AR_OK;
    }
    if (st == ACTION_DISPATCHED) {
        if (!rec)
            rec = json_loadb(text, len, 0, NULL);
        if (!json_is_object(rec)) {
            json_decref(rec);
            return AR_OK;
        }
        return recover_dispatched(s, rec, resume, unknown, out);
    }
    if (st == ACTION_PENDING_APPROVAL && s->pending_fn) {
        int64_t expires = 0;
        if (rec)
            expires = json_integer_value(json_object_get(json_object_get(rec, "approval"), "expires_ms"));
        else if (pk.approval)
            each_member(pk.approval, pk.approval_len, peek_expiry, &expires);
        s->pending_fn(s->pending_arg, id, expires);
    }
    json_decref(rec);
    return AR_OK;
}

int scheduler_recover(scheduler *s, scheduler_recovery *out, ar_error *err)
{
    memset(out, 0, sizeof *out);
    journal_read *r;
    int rc = journal_read_begin(s->journal, &r, err);
    if (rc != AR_OK)
        return rc;
    journal_cursor *cur = NULL;
    job_list resume = {0};
    json_t *unknown = json_array();
    rc = unknown ? journal_cursor_open(r, JDB_QUEUE, &cur) : AR_E_NOMEM;
    const void *key, *val;
    size_t klen, vlen;
    if (rc == AR_OK)
        rc = journal_cursor_get(cur, JOURNAL_FIRST, &key, &klen, &val, &vlen);
    while (rc == AR_OK) {
        char id[ACTION_ID_LEN + 1];
        snprintf(id, sizeof id, "%.*s", (int)klen, (const char *)key);
        const void *text;
        size_t len;
        if (journal_get(r, JDB_ACTIONS, id, strlen(id), &text, &len) == AR_OK &&
            recover_one(s, id, text, len, &resume, unknown, out) != AR_OK) {
            rc = AR_E_NOMEM;
            break;
        }
        rc = journal_cursor_get(cur, JOURNAL_NEXT, &key, &klen, &val, &vlen);
    }
    if (cur)
        journal_cursor_close(cur);
    journal_read_end(r);
    if (rc == AR_E_NOMEM)
        ar_error_set(err, rc, "internal", "out of memory during recovery");
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
    json_decref(unknown);
    /* Everything to resume goes to the loop in one hand-off. */
    job_batch *batch = rc == AR_OK && resume.n ? calloc(1, sizeof *batch) : NULL;
    if (batch) {
        batch->s = s;
        batch->jobs = resume.jobs;
        batch->n = resume.n;
        held_add(s, (int)resume.n);
        if (loop_post(s->loop, accept_batch, batch) == AR_OK)
            return AR_OK;
        held_add(s, -(int)resume.n);
        free(batch);
        rc = ar_error_set(err, AR_E_CLOSED, "internal", "the scheduler is stopping");
    } else if (rc == AR_OK && resume.n) {
        rc = ar_error_set(err, AR_E_NOMEM, "internal", "out of memory during recovery");
    }
    for (size_t i = 0; i < resume.n; i++)
        job_free(resume.jobs[i]);
    free(resume.jobs);
    return rc;
}
