/* scheduler.c - dispatch READY actions to the sandbox pools, journaling each step (see
 * scheduler.h). Everything below marked "loop thread" runs on the scheduler's event loop;
 * callbacks named *_durable run on the journal writer thread and only hand work back. */
#include "scheduler.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <aiorun/plugin.h>

#include "action.h"
#include "frame.h"
#include "loop.h"

typedef struct conn conn;

typedef struct job {
    scheduler *s;
    conn *c;
    json_t *rec;                /* owned */
    char *input_text;           /* the input as JSON text, made once */
    int dispatch_recorded;      /* DISPATCHED for this attempt is already durable */
    struct job *next;
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
    pthread_mutex_t lock;       /* guards inflight_total for scheduler_free */
    int inflight_total;
};

static void pump(conn *c);

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

/* ---- the outcome ------------------------------------------------------------------------ */

/* Writer thread: the terminal record is durable; tell the API, then let go of the job. */
static void final_durable(void *arg, int status, journal_batch *b, const ar_error *err)
{
    job *jb = arg;
    journal_batch_free(b);
    if (status == AR_OK) {
        if (jb->s->notify)
            jb->s->notify(jb->s->notify_arg, jb->rec);
    } else {
        /* The action stays DISPATCHED on disk; the next start resolves it. */
        fprintf(stderr, "aiorun: cannot journal the outcome of %s: %s\n",
                action_record_str(jb->rec, "id"), err ? err->message : "unknown error");
    }
    job_free(jb);
}

static void record_outcome(job *jb, const sandbox_result *res)
{
    json_t *rec = jb->rec;
    int64_t now = ar_now_ms();
    action_state st = ACTION_SUCCEEDED;
    if (res->ok) {
        json_error_t jerr;
        json_t *result = json_loadb(res->result_json, res->result_len, JSON_DECODE_ANY, &jerr);
        if (result) {
            json_object_set_new(rec, "result", result);
        } else {
            st = ACTION_FAILED;
            json_object_set_new(rec, "error", json_pack("{s:s, s:s}", "class", "plugin_crashed",
                                                        "message", "the plugin's result is not JSON"));
        }
    } else {
        st = ACTION_FAILED;
        const char *cls = frame_class_name(res->error_class);
        json_object_set_new(rec, "error", json_pack("{s:s, s:s}", "class", cls ? cls : "permanent",
                                                    "message", res->error_message ? res->error_message : ""));
    }
    json_object_set_new(rec, "latency_us", json_integer(res->latency_us));
    action_record_set_state(rec, st, now);
}

/* Loop thread: the plugin answered (or crashed, or timed out). */
static void call_done(void *arg, const sandbox_result *res)
{
    job *jb = arg;
    conn *c = jb->c;
    scheduler *s = jb->s;
    if (s->stopping) {
        /* Shutting down: whatever the pool reports now may not be what happened at the API.
         * Leave the action DISPATCHED for recovery. */
        inflight_add(c, -1);
        job_free(jb);
        return;
    }
    record_outcome(jb, res);
    journal_batch *b = journal_batch_new();
    action_batch_store(b, jb->rec);
    inflight_add(c, -1);
    if (journal_submit(s->journal, b, final_durable, jb) != AR_OK) {
        journal_batch_free(b);
        job_free(jb);
    }
    pump(c);
}

/* ---- dispatch ---------------------------------------------------------------------------- */

static void push_front(conn *c, job *jb)
{
    jb->next = c->head;
    c->head = jb;
    if (!c->tail)
        c->tail = jb;
}

static void push_back(conn *c, job *jb)
{
    jb->next = NULL;
    if (c->tail)
        c->tail->next = jb;
    else
        c->head = jb;
    c->tail = jb;
}

/* Loop thread: DISPATCHED is durable; the call may now cross into the plugin's process. */
static void send_job(loop_t *loop, void *arg)
{
    (void)loop;
    job *jb = arg;
    conn *c = jb->c;
    jb->dispatch_recorded = 1;
    if (jb->s->stopping) {
        inflight_add(c, -1);
        job_free(jb);
        return;
    }
    sandbox_call call = {
        .action = action_record_str(jb->rec, "action"),
        .input_json = jb->input_text,
        .input_len = strlen(jb->input_text),
        .idempotency_key = action_record_str(jb->rec, "idempotency_key"),
        .attempt = (int)json_integer_value(json_object_get(jb->rec, "attempts")),
        .timeout_ms = 0,
    };
    int rc = sandbox_pool_invoke(c->pool, &call, call_done, jb);
    if (rc == AR_OK)
        return;
    /* No idle process after all (one died meanwhile): wait at the head of the queue; the
     * attempt is already journaled, so it is sent as it is when a process frees up. */
    inflight_add(c, -1);
    push_front(c, jb);
}

static void retry_dispatch(loop_t *loop, void *arg)
{
    (void)loop;
    job *jb = arg;
    push_front(jb->c, jb);
    pump(jb->c);
}

/* Writer thread. */
static void dispatch_durable(void *arg, int status, journal_batch *b, const ar_error *err)
{
    job *jb = arg;
    journal_batch_free(b);
    if (status == AR_OK) {
        loop_post(jb->s->loop, send_job, jb);
        return;
    }
    /* Not durable, so not sent. The record on disk is still READY; try again shortly. */
    fprintf(stderr, "aiorun: cannot journal dispatch of %s: %s\n",
            action_record_str(jb->rec, "id"), err ? err->message : "unknown error");
    json_object_set_new(jb->rec, "attempts",
                        json_integer(json_integer_value(json_object_get(jb->rec, "attempts")) - 1));
    loop_post(jb->s->loop, retry_dispatch, jb);
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
        c->head = jb->next;
        if (!c->head)
            c->tail = NULL;
        jb->next = NULL;
        inflight_add(c, +1);
        if (jb->dispatch_recorded) {
            send_job(c->s->loop, jb);
            continue;
        }
        json_t *rec = jb->rec;
        json_object_set_new(rec, "attempts",
                            json_integer(json_integer_value(json_object_get(rec, "attempts")) + 1));
        action_record_set_state(rec, ACTION_DISPATCHED, ar_now_ms());
        journal_batch *b = journal_batch_new();
        action_batch_store(b, rec);
        if (journal_submit(c->s->journal, b, dispatch_durable, jb) != AR_OK) {
            journal_batch_free(b);
            inflight_add(c, -1);
            job_free(jb);
        }
    }
}

static void on_pool_event(void *arg, sandbox_pool *pool)
{
    (void)pool;
    pump(arg);
}

/* ---- entry points ------------------------------------------------------------------------ */

static job *job_new(scheduler *s, json_t *rec)
{
    job *jb = calloc(1, sizeof *jb);
    if (!jb)
        return NULL;
    jb->s = s;
    jb->rec = rec;
    json_t *input = json_object_get(rec, "input");
    jb->input_text = json_dumps(input ? input : json_object(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (!jb->input_text) {
        free(jb);
        return NULL;
    }
    return jb;
}

static void accept_job(loop_t *loop, void *arg)
{
    (void)loop;
    job *jb = arg;
    conn *c = find_conn(jb->s, action_record_str(jb->rec, "connector"));
    if (!c || jb->s->stopping) {
        /* Unknown connector (removed from the config): it stays READY on disk. */
        job_free(jb);
        return;
    }
    jb->c = c;
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
    if (rc != AR_OK) {
        job_free(jb);
        return rc;
    }
    return AR_OK;
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
    (void)loop;
    scheduler *s = arg;
    s->stopping = 1;
    for (size_t i = 0; i < s->n_conns; i++) {
        conn *c = &s->conns[i];
        while (c->head) { /* queued, not dispatched: they stay READY on disk */
            job *jb = c->head;
            c->head = jb->next;
            job_free(jb);
        }
        c->tail = NULL;
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
        /* Let calls in flight finish (bounded): their outcomes are then journaled normally. */
        for (int i = 0; i < 300; i++) {
            pthread_mutex_lock(&s->lock);
            int busy = s->inflight_total;
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

/* ---- recovery ------------------------------------------------------------------------------ */

/* A call that may have reached the API can be sent again only when repeating it is harmless. */
static int safe_to_resend(const json_t *rec)
{
    return strcmp(action_record_str(rec, "effect"), "read") == 0 ||
           strcmp(action_record_str(rec, "idempotency"), "native") == 0;
}

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
            if (st == ACTION_DISPATCHED && !safe_to_resend(rec)) {
                json_array_append_new(unknown, rec);
            } else if (st == ACTION_READY || st == ACTION_APPROVED || st == ACTION_DISPATCHED) {
                out->resent += st == ACTION_DISPATCHED;
                out->resumed += st != ACTION_DISPATCHED;
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
            json_object_set_new(rec, "error", json_pack("{s:s, s:s}", "class", "unknown_outcome",
                "message", "the daemon stopped while this call was in flight and the action "
                           "cannot be repeated safely; an operator must check the target system"));
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
