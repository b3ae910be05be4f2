/* test_scheduler.c - the scheduler on a real journal with real sandbox processes (the t_ok
 * fixture plugin): attempts journaled DISPATCHED ahead of a free process and sent in order once
 * one is (also to a process restarted after a crash); what becomes of such an attempt on cancel,
 * on its deadline, at a graceful stop and after a kill -9; the deadline heap; max_inflight;
 * queue order; recovery reading each stored record once (compact entries, approvals reported).
 *
 * A process is kept busy deterministically by a call that sleeps an hour ("blocker"); the test
 * ends it by killing that host process (SIGKILL), which the pool reports as plugin_crashed and
 * restarts. Every wait is for a condition, with a long guard that fails the test (never a
 * performance assertion). */
#include "test_main.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "action.h"
#include "ar.h"
#include "config.h"
#include "journal.h"
#include "metrics.h"
#include "scheduler.h"

#define HOST_PATH AIORUN_BUILD_DIR "/bin/aiorun-host"
#define T_OK AIORUN_BUILD_DIR "/test-plugins/t_ok.so"
#define GUARD_MS 60000

/* One world: a data directory, its journal, a scheduler, and what the notify callback saw. */
typedef struct world {
    char dir[64];
    config *cfg;
    journal *j;
    scheduler *s;
    metrics *m;
    metrics_family *stages;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    json_t *seen;        /* id -> [state names, in the order they became durable] */
    json_t *last;        /* id -> the record as last reported */
    json_t *dispatch_order; /* ids, in the order of their first DISPATCHED */
    /* notify sends a cancel of cancel_id the moment it is reported in cancel_in (see below) */
    const char *cancel_in;
    char cancel_id[ACTION_ID_LEN + 1];
    void *cancel_answer;
    int cancel_rc;
} world;

static world W;

static void on_cancel(void *arg, int status, const json_t *rec);

static void notify(void *arg, const json_t *rec)
{
    world *w = arg;
    const char *id = action_record_str(rec, "id");
    const char *st = action_state_name(action_record_state(rec));
    pthread_mutex_lock(&w->mu);
    json_t *list = json_object_get(w->seen, id);
    if (!list) {
        list = json_array();
        json_object_set_new(w->seen, id, list);
    }
    if (!strcmp(st, "DISPATCHED")) {
        int first = 1;
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v) first &= strcmp(json_string_value(v), "DISPATCHED") != 0;
        if (first)
            json_array_append_new(w->dispatch_order, json_string(id));
    }
    json_array_append_new(list, json_string(st));
    json_object_set_new(w->last, id, json_deep_copy(rec));
    /* A state is durable and the scheduler's loop has not taken the step after it yet: the
     * moment a client that has just read that state may cancel in. */
    if (w->cancel_in && !strcmp(id, w->cancel_id) && !strcmp(st, w->cancel_in)) {
        w->cancel_in = NULL;
        w->cancel_rc = scheduler_cancel(w->s, id, "alice", on_cancel, w->cancel_answer);
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* ---- the world ------------------------------------------------------------------------------- */

/* connectors: JSON members of "connectors"; top: more top-level members ("" for none). */
static void world_init(const char *connectors, const char *top)
{
    memset(&W, 0, sizeof W);
    pthread_mutex_init(&W.mu, NULL);
    pthread_cond_init(&W.cv, NULL);
    W.seen = json_object();
    W.last = json_object();
    W.dispatch_order = json_array();
    snprintf(W.dir, sizeof W.dir, "/tmp/aiorun-test-sched-XXXXXX");
    assert_non_null(mkdtemp(W.dir));
    assert_int_equal(chmod(W.dir, 0755), 0); /* a connector uid reaches its plugin copy below */
    char path[128];
    snprintf(path, sizeof path, "%s/data", W.dir);
    assert_int_equal(mkdir(path, 0700), 0);
    char text[4096];
    snprintf(text, sizeof text,
             "{\"data_dir\": \"data\", \"runtime_dir\": \"%s/run\", \"plugin_dir\": \"%s/plugins\", %s%s"
             "\"connectors\": {%s}}",
             W.dir, AIORUN_BUILD_DIR, top, *top ? ", " : "", connectors);
    ar_error err = {0};
    if (config_parse(text, W.dir, &W.cfg, &err) != AR_OK)
        fail_msg("config: %s", err.message);
}

static void world_open_journal(void)
{
    char jdir[128];
    snprintf(jdir, sizeof jdir, "%s/data/journal", W.dir);
    journal_opts jo = {.dir = jdir, .map_size_mb = 256};
    ar_error err = {0};
    if (journal_open(&jo, &W.j, &err) != AR_OK)
        fail_msg("journal: %s", err.message);
}

static void world_open_scheduler(void)
{
    ar_error err = {0};
    if (scheduler_new(W.cfg, W.j, HOST_PATH, 20000, NULL, NULL, notify, &W, &W.s, &err) != AR_OK)
        fail_msg("scheduler_new: %s", err.message);
    if (!W.m) {
        assert_int_equal(metrics_new(&W.m), AR_OK);
        const char *labels[] = {"stage", "connector"};
        assert_int_equal(metrics_register(W.m, "stage_seconds", "stages", METRICS_HISTOGRAM, labels, 2,
                                          metrics_latency_buckets, metrics_latency_n_buckets, &W.stages, &err),
                         AR_OK);
    }
    scheduler_metrics sm = {.stage_seconds = W.stages};
    scheduler_set_metrics(W.s, &sm);
    for (size_t i = 0; i < W.cfg->n_connectors; i++) {
        sandbox_snapshot snap;
        assert_int_equal(scheduler_connector(W.s, W.cfg->connectors[i].name, &snap), AR_OK);
        json_decref(snap.descriptor);
        if (snap.state != SANDBOX_READY)
            fail_msg("connector %s: %s %s", W.cfg->connectors[i].name, sandbox_state_name(snap.state), snap.message);
    }
}

static void world_start(const char *connectors, const char *top)
{
    world_init(connectors, top);
    world_open_journal();
    world_open_scheduler();
}

/* The host processes this process started for a connector (their command line names it). */
static int host_pids(const char *connector, pid_t *out, int cap)
{
    int n = 0;
    DIR *d = opendir("/proc");
    assert_non_null(d);
    struct dirent *e;
    char want[96];
    int wlen = snprintf(want, sizeof want, "--connector%c%s%c", 0, connector, 0);
    while ((e = readdir(d)) && n < cap) {
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid <= 0)
            continue;
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *close_paren = strrchr(buf, ')');
        int ppid = 0;
        if (!close_paren || sscanf(close_paren + 2, "%*c %d", &ppid) != 1 || ppid != getpid())
            continue;
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
        if (!(f = fopen(path, "r")))
            continue;
        len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        for (size_t i = 0; i + (size_t)wlen <= len; i++) {
            if (!memcmp(buf + i, want, (size_t)wlen)) {
                out[n++] = pid;
                break;
            }
        }
    }
    closedir(d);
    return n;
}

/* End the connector's running calls by killing its processes (the pool restarts them). */
static void kill_hosts(const char *connector)
{
    pid_t pids[16];
    int n = host_pids(connector, pids, 16);
    assert_true(n > 0);
    for (int i = 0; i < n; i++)
        kill(pids[i], SIGKILL);
}

static int rm_rf(const char *path)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    return system(cmd);
}

static void world_close_scheduler(void)
{
    scheduler_free(W.s);
    W.s = NULL;
}

static int world_stop(void **state)
{
    (void)state;
    if (W.s) {
        /* Calls still sleeping would hold the stop for its grace period: end them first. */
        for (size_t i = 0; W.cfg && i < W.cfg->n_connectors; i++) {
            pid_t pids[16];
            int n = host_pids(W.cfg->connectors[i].name, pids, 16);
            for (int k = 0; k < n; k++)
                kill(pids[k], SIGKILL);
        }
        world_close_scheduler();
    }
    journal_close(W.j);
    W.j = NULL;
    config_free(W.cfg);
    W.cfg = NULL;
    metrics_free(W.m);
    W.m = NULL;
    json_decref(W.seen);
    json_decref(W.last);
    json_decref(W.dispatch_order);
    pthread_mutex_destroy(&W.mu);
    pthread_cond_destroy(&W.cv);
    if (W.dir[0])
        rm_rf(W.dir);
    return 0;
}

/* ---- actions ----------------------------------------------------------------------------------- */

/* A READY record as the API stores it. key NULL: the id. deadline_ms 0: none. */
static json_t *make_record(const char *connector, const char *action, const char *input, const char *effect,
                           const char *mode, const char *key, int priority, int64_t created_ms, int64_t deadline_ms)
{
    char id[ACTION_ID_LEN + 1];
    action_id_new(id);
    json_error_t jerr;
    json_t *in = json_loads(input, 0, &jerr);
    assert_non_null(in);
    json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:i, s:s, s:s, s:i, s:I, s:I}", "id", id,
                            "connector", connector, "action", action, "effect", effect, "idempotency", mode,
                            "idempotency_key", key ? key : id, "submitter", "tester", "input", in, "priority",
                            priority, "digest", "00", "state", "READY", "attempts", 0, "created_ms",
                            (json_int_t)(created_ms ? created_ms : ar_now_ms()), "deadline_ms",
                            (json_int_t)deadline_ms);
    assert_non_null(rec);
    return rec;
}

static void store(const json_t *rec)
{
    journal_batch *b = journal_batch_new();
    assert_int_equal(action_batch_store(b, rec), AR_OK);
    ar_error err = {0};
    if (journal_commit(W.j, b, &err) != AR_OK)
        fail_msg("commit: %s", err.message);
    journal_batch_free(b);
}

/* Journal a READY action and hand it to the scheduler; its id into id. */
static void submit_full(const char *connector, const char *action, const char *input, const char *effect,
                        const char *mode, const char *key, int priority, int64_t created_ms, int64_t deadline_ms,
                        char id[ACTION_ID_LEN + 1])
{
    json_t *rec = make_record(connector, action, input, effect, mode, key, priority, created_ms, deadline_ms);
    store(rec);
    snprintf(id, ACTION_ID_LEN + 1, "%s", action_record_str(rec, "id"));
    assert_int_equal(scheduler_enqueue(W.s, rec), AR_OK);
}

/* A write without idempotency support: never repeated once it may have happened. */
static void submit_write(const char *connector, int n, int64_t deadline_ms, char id[ACTION_ID_LEN + 1])
{
    char input[64];
    snprintf(input, sizeof input, "{\"n\": %d}", n);
    submit_full(connector, "write_op", input, "write", "none", NULL, 0, 0, deadline_ms, id);
}

/* A call that keeps the connector's one process busy until the test kills it. */
static void submit_blocker(const char *connector, char id[ACTION_ID_LEN + 1])
{
    submit_full(connector, "sleep", "{\"ms\": 3600000}", "read", "native", NULL, 0, 0, 0, id);
}

static int seen_locked(const char *id, const char *state)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(W.seen, id), i, v) if (!strcmp(json_string_value(v), state)) return 1;
    return 0;
}

/* Wait until the action has been reported in this state (durable). */
static void wait_seen(const char *id, const char *state)
{
    int64_t until = ar_mono_ms() + GUARD_MS;
    pthread_mutex_lock(&W.mu);
    while (!seen_locked(id, state) && ar_mono_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&W.cv, &W.mu, &ts);
    }
    int ok = seen_locked(id, state);
    char *states = json_dumps(json_object_get(W.seen, id), JSON_COMPACT | JSON_ENCODE_ANY);
    pthread_mutex_unlock(&W.mu);
    if (!ok)
        fail_msg("action %s never reported %s (reported: %s)", id, state, states ? states : "none");
    free(states);
}

static int seen(const char *id, const char *state)
{
    pthread_mutex_lock(&W.mu);
    int r = seen_locked(id, state);
    pthread_mutex_unlock(&W.mu);
    return r;
}

/* How often the action was reported in this state. */
static int seen_count(const char *id, const char *state)
{
    int n = 0;
    size_t i;
    json_t *v;
    pthread_mutex_lock(&W.mu);
    json_array_foreach(json_object_get(W.seen, id), i, v) n += !strcmp(json_string_value(v), state);
    pthread_mutex_unlock(&W.mu);
    return n;
}

static json_t *stored(const char *id)
{
    json_t *rec = NULL;
    ar_error err = {0};
    if (action_load_by_id(W.j, id, &rec, &err) != AR_OK)
        fail_msg("load %s: %s", id, err.message);
    return rec;
}

static json_t *flow(const char *connector)
{
    json_t *f = NULL;
    assert_int_equal(scheduler_connector_flow(W.s, connector, &f), AR_OK);
    return f;
}

static int64_t flow_int(const json_t *f, const char *key)
{
    return json_integer_value(json_object_get(f, key));
}

/* Wait until the connector's flow view shows this many calls running, attempts dispatched
 * and waiting for a process, and actions queued. */
static void wait_flow(const char *connector, int inflight, int dispatching, int queued)
{
    int64_t until = ar_mono_ms() + GUARD_MS;
    json_t *f = NULL;
    for (;;) {
        json_decref(f);
        f = flow(connector);
        if (flow_int(f, "inflight") == inflight && flow_int(f, "dispatching") == dispatching &&
            flow_int(f, "queued") == queued)
            break;
        if (ar_mono_ms() > until) {
            char *dump = json_dumps(f, JSON_COMPACT);
            fail_msg("flow of %s never showed inflight %d, dispatching %d, queued %d: %s", connector, inflight,
                     dispatching, queued, dump);
        }
        usleep(5 * 1000);
    }
    json_decref(f);
}

/* Wait until *flag, read under mu, is set; fail after the guard, naming what never came. */
static void wait_set(pthread_mutex_t *mu, const int *flag, const char *what)
{
    int64_t until = ar_mono_ms() + GUARD_MS;
    for (;;) {
        pthread_mutex_lock(mu);
        int set = *flag;
        pthread_mutex_unlock(mu);
        if (set)
            return;
        if (ar_mono_ms() > until)
            fail_msg("%s never came", what);
        usleep(2 * 1000);
    }
}

static void wait_held(size_t n)
{
    int64_t until = ar_mono_ms() + GUARD_MS;
    while (scheduler_held(W.s) != n) {
        if (ar_mono_ms() > until)
            fail_msg("the scheduler holds %zu actions, expected %zu", scheduler_held(W.s), n);
        usleep(5 * 1000);
    }
}

/* Wait until n attempts of the connector are durable and waiting for a process. */
static void wait_for_process(const char *connector, int n)
{
    int64_t until = ar_mono_ms() + GUARD_MS;
    for (;;) {
        json_t *f = flow(connector);
        int64_t waiting = flow_int(f, "waiting_for_process");
        json_decref(f);
        if (waiting == n)
            return;
        if (ar_mono_ms() > until)
            fail_msg("%lld attempts of %s wait for a process, expected %d", (long long)waiting, connector, n);
        usleep(5 * 1000);
    }
}

static json_t *last_history_entry(const json_t *rec)
{
    json_t *h = json_object_get(rec, "history");
    return json_array_get(h, json_array_size(h) - 1);
}

static const char *str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "(none)";
}

/* How many history entries of the record are invoke attempts that went out (not "not_sent"). */
static int sent_attempts(const json_t *rec)
{
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(rec, "history"), i, e) {
        if (!strcmp(str(e, "kind"), "invoke") && strcmp(str(e, "outcome"), "not_sent") != 0)
            n++;
    }
    return n;
}

#define ONE_PROCESS(name) \
    "\"" name "\": {\"plugin\": \"" T_OK "\", \"processes\": 1, \"timeout_ms\": 600000, \"retry\": {\"max_attempts\": 1}}"

/* ---- the pipeline ------------------------------------------------------------------------------ */

/* With its one process busy, the connector journals the intents of the next attempts (up to its
 * pipeline) and holds them; once the process is back (here: restarted after a crash) they go
 * out in the order they were dispatched, each exactly once. */
static void durable_attempts_wait_for_a_process_then_go_in_order(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "");
    assert_int_equal(scheduler_set_pipeline(W.s, "t", 4), AR_OK);
    assert_int_equal(scheduler_set_pipeline(W.s, "nope", 4), AR_E_NOTFOUND);
    char blocker[32], ids[4][32];
    submit_blocker("t", blocker);
    wait_flow("t", 1, 0, 0);
    for (int i = 0; i < 4; i++)
        submit_write("t", i, 0, ids[i]);
    /* three fit beside the running call, DISPATCHED and durable; the fourth waits in the queue */
    for (int i = 0; i < 3; i++)
        wait_seen(ids[i], "DISPATCHED");
    wait_flow("t", 1, 3, 1);
    wait_for_process("t", 3);
    json_t *f = flow("t");
    assert_int_equal(flow_int(f, "pipeline"), 4);
    json_decref(f);
    assert_false(seen(ids[3], "DISPATCHED"));
    for (int i = 0; i < 3; i++) {
        json_t *rec = stored(ids[i]);
        assert_string_equal(str(rec, "state"), "DISPATCHED");
        json_decref(rec);
    }

    kill_hosts("t"); /* the blocker ends (plugin_crashed); the restarted process takes the rest */
    wait_seen(blocker, "FAILED");
    for (int i = 0; i < 4; i++) {
        wait_seen(ids[i], "SUCCEEDED");
        json_t *rec = stored(ids[i]);
        assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 1);
        assert_int_equal(sent_attempts(rec), 1);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(rec, "result"), "n")), i);
        assert_int_equal(seen_count(ids[i], "DISPATCHED"), 1);
        json_decref(rec);
    }
    /* dispatched in the order they came */
    pthread_mutex_lock(&W.mu);
    assert_int_equal(json_array_size(W.dispatch_order), 5);
    for (int i = 0; i < 4; i++)
        assert_string_equal(json_string_value(json_array_get(W.dispatch_order, i + 1)), ids[i]);
    pthread_mutex_unlock(&W.mu);
    wait_flow("t", 0, 0, 0);

    /* each stage measured */
    json_t *sum = NULL;
    ar_error err = {0};
    assert_int_equal(metrics_summary(W.m, "stage_seconds", &sum, &err), AR_OK);
    const char *stages[] = {"queue_wait", "dispatch_journal", "process_wait", "connector_call"};
    for (size_t k = 0; k < 4; k++) {
        int64_t count = -1;
        size_t i;
        json_t *series;
        json_array_foreach(sum, i, series) {
            if (!strcmp(str(json_object_get(series, "labels"), "stage"), stages[k]))
                count = json_integer_value(json_object_get(series, "count"));
        }
        if (count < 4)
            fail_msg("stage %s: %lld observations, expected at least 4", stages[k], (long long)count);
    }
    json_decref(sum);
}

typedef struct cancel_answer {
    pthread_mutex_t mu;
    int calls;
    int status;
    char state[32];
} cancel_answer;

static void on_cancel(void *arg, int status, const json_t *rec)
{
    cancel_answer *a = arg;
    pthread_mutex_lock(&a->mu);
    a->calls++;
    a->status = status;
    snprintf(a->state, sizeof a->state, "%s", rec ? action_state_name(action_record_state(rec)) : "");
    pthread_mutex_unlock(&a->mu);
}

static void wait_cancel_answer(cancel_answer *a)
{
    wait_set(&a->mu, &a->calls, "the cancel's answer");
}

/* A cancel of an attempt journaled DISPATCHED but not sent ends it CANCELLED at once: nothing
 * reached the API, and it is never sent afterwards. */
static void cancel_of_an_unsent_attempt_cancels_without_sending(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "");
    assert_int_equal(scheduler_set_pipeline(W.s, "t", 3), AR_OK);
    char blocker[32], victim[32], other[32];
    submit_blocker("t", blocker);
    wait_flow("t", 1, 0, 0);
    submit_write("t", 7, 0, victim);
    wait_seen(victim, "DISPATCHED");
    wait_for_process("t", 1);
    cancel_answer a = {.mu = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(scheduler_cancel(W.s, victim, "alice", on_cancel, &a), AR_OK);
    wait_cancel_answer(&a);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, AR_OK);
    assert_string_equal(a.state, "CANCELLED");
    json_t *rec = stored(victim);
    assert_string_equal(str(rec, "state"), "CANCELLED");
    assert_string_equal(str(rec, "cancel_requested_by"), "alice");
    assert_string_equal(str(last_history_entry(rec), "outcome"), "not_sent");
    assert_int_equal(sent_attempts(rec), 0);
    json_decref(rec);
    /* a second cancel finds nothing */
    cancel_answer b = {.mu = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(scheduler_cancel(W.s, victim, "alice", on_cancel, &b), AR_OK);
    wait_cancel_answer(&b);
    assert_int_equal(b.status, AR_E_NOTFOUND);

    /* the process comes back: the next action runs, the cancelled one stays as it is */
    kill_hosts("t");
    submit_write("t", 8, 0, other);
    wait_seen(other, "SUCCEEDED");
    rec = stored(victim);
    assert_string_equal(str(rec, "state"), "CANCELLED");
    assert_null(json_object_get(rec, "result"));
    json_decref(rec);
    assert_int_equal(seen_count(victim, "SUCCEEDED"), 0);
}

/* Journal a READY action and hand it to the scheduler, with a cancel to be sent the moment it
 * is reported in state `when` (armed before the scheduler sees the action). */
static void submit_cancelled_when(const char *connector, const char *action, const char *input, const char *effect,
                                  const char *mode, const char *when, cancel_answer *a, char id[ACTION_ID_LEN + 1])
{
    json_t *rec = make_record(connector, action, input, effect, mode, NULL, 0, 0, 0);
    snprintf(id, ACTION_ID_LEN + 1, "%s", action_record_str(rec, "id"));
    pthread_mutex_lock(&W.mu);
    snprintf(W.cancel_id, sizeof W.cancel_id, "%s", id);
    W.cancel_answer = a;
    W.cancel_rc = -1;
    W.cancel_in = when;
    pthread_mutex_unlock(&W.mu);
    store(rec);
    assert_int_equal(scheduler_enqueue(W.s, rec), AR_OK);
}

/* A cancel that comes while RETRY_WAIT is being journaled (a client read RETRY_WAIT, the loop
 * has not armed the retry's timer yet) ends the action CANCELLED at once and says so: not "a
 * call is in flight" with the action left waiting until its retry is due (an hour here). */
static void cancel_while_retry_wait_is_journaled_ends_it_at_once(void **state)
{
    (void)state;
    world_start("\"t\": {\"plugin\": \"" T_OK "\", \"processes\": 1, \"timeout_ms\": 600000, \"retry\": "
                "{\"max_attempts\": 3, \"initial_ms\": 3600000, \"max_ms\": 3600000}}", "");
    char id[32];
    cancel_answer a = {.mu = PTHREAD_MUTEX_INITIALIZER};
    submit_cancelled_when("t", "fail", "{\"class\": \"retryable\", \"message\": \"later\"}", "write", "native",
                          "RETRY_WAIT", &a, id);
    wait_cancel_answer(&a);
    pthread_mutex_lock(&W.mu);
    assert_int_equal(W.cancel_rc, AR_OK);
    pthread_mutex_unlock(&W.mu);
    if (a.status != AR_OK)
        fail_msg("the cancel was answered %d with the action %s, expected AR_OK and CANCELLED", a.status, a.state);
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.state, "CANCELLED");
    wait_seen(id, "CANCELLED");
    json_t *rec = stored(id);
    assert_string_equal(str(rec, "state"), "CANCELLED");
    assert_string_equal(str(json_object_get(rec, "error"), "class"), "cancelled");
    assert_string_equal(str(rec, "cancel_requested_by"), "alice");
    assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 1);
    assert_int_equal(sent_attempts(rec), 1);
    json_decref(rec);
    assert_int_equal(seen_count(id, "DISPATCHED"), 1);
    /* a second cancel finds nothing */
    cancel_answer b = {.mu = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(scheduler_cancel(W.s, id, "alice", on_cancel, &b), AR_OK);
    wait_cancel_answer(&b);
    assert_int_equal(b.status, AR_E_NOTFOUND);
}

/* A cancel that comes while an attempt's DISPATCHED intent is being journaled waits for it: the
 * attempt is never sent and the answer is the CANCELLED record, not "a call is in flight". */
static void cancel_while_dispatched_is_journaled_is_answered_cancelled(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "");
    char id[32];
    cancel_answer a = {.mu = PTHREAD_MUTEX_INITIALIZER};
    submit_cancelled_when("t", "write_op", "{\"n\": 1}", "write", "none", "DISPATCHED", &a, id);
    wait_cancel_answer(&a);
    pthread_mutex_lock(&W.mu);
    assert_int_equal(W.cancel_rc, AR_OK);
    pthread_mutex_unlock(&W.mu);
    if (a.status != AR_OK)
        fail_msg("the cancel was answered %d with the action %s, expected AR_OK and CANCELLED", a.status, a.state);
    assert_string_equal(a.state, "CANCELLED");
    wait_seen(id, "CANCELLED");
    json_t *rec = stored(id);
    assert_string_equal(str(rec, "state"), "CANCELLED");
    assert_string_equal(str(last_history_entry(rec), "outcome"), "not_sent");
    assert_int_equal(sent_attempts(rec), 0);
    json_decref(rec);
}

/* An attempt that waits for a process past the action's deadline fails (timeout) without being
 * sent; the action it came from is not charged a call. */
static void deadline_passing_while_waiting_for_a_process_fails_unsent(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "");
    assert_int_equal(scheduler_set_pipeline(W.s, "t", 3), AR_OK);
    char blocker[32], late[32];
    submit_blocker("t", blocker);
    wait_flow("t", 1, 0, 0);
    submit_write("t", 1, ar_now_ms() + 300, late);
    wait_seen(late, "DISPATCHED");
    wait_seen(late, "FAILED");
    json_t *rec = stored(late);
    assert_string_equal(str(json_object_get(rec, "error"), "class"), "timeout");
    assert_non_null(strstr(str(json_object_get(rec, "error"), "message"), "waited for a process"));
    assert_string_equal(str(last_history_entry(rec), "outcome"), "not_sent");
    assert_int_equal(sent_attempts(rec), 0);
    json_decref(rec);
    wait_flow("t", 1, 0, 0);
}

/* A graceful stop journals the attempts that never went out back to RETRY_WAIT (attempt not
 * counted), so the next start runs them like any waiting action: a write without idempotency
 * support then succeeds instead of ending UNKNOWN_OUTCOME. The call that was running stays
 * DISPATCHED and is resolved by recovery (a read: sent again). */
static void graceful_stop_puts_unsent_attempts_back_to_waiting(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "");
    assert_int_equal(scheduler_set_pipeline(W.s, "t", 3), AR_OK);
    char blocker[32], ids[2][32];
    submit_blocker("t", blocker);
    wait_flow("t", 1, 0, 0);
    for (int i = 0; i < 2; i++)
        submit_write("t", 10 + i, 0, ids[i]);
    for (int i = 0; i < 2; i++)
        wait_seen(ids[i], "DISPATCHED");
    world_close_scheduler(); /* the blocker is still sleeping: it stays DISPATCHED */
    for (int i = 0; i < 2; i++) {
        json_t *rec = stored(ids[i]);
        assert_string_equal(str(rec, "state"), "RETRY_WAIT");
        assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 0);
        json_t *e = last_history_entry(rec);
        assert_string_equal(str(e, "outcome"), "not_sent");
        assert_int_equal(json_integer_value(json_object_get(e, "attempt")), 1);
        json_decref(rec);
    }
    json_t *rec = stored(blocker);
    assert_string_equal(str(rec, "state"), "DISPATCHED");
    json_decref(rec);

    world_open_scheduler();
    scheduler_recovery rv;
    ar_error err = {0};
    assert_int_equal(scheduler_recover(W.s, &rv, &err), AR_OK);
    assert_int_equal(rv.resumed, 2);
    assert_int_equal(rv.resent, 1);
    assert_int_equal(rv.unknown, 0);
    /* the blocker (a read) would be sent again, but its one attempt is spent */
    wait_seen(blocker, "FAILED");
    rec = stored(blocker);
    assert_non_null(strstr(str(json_object_get(rec, "error"), "message"), "no attempts are left"));
    json_decref(rec);
    for (int i = 0; i < 2; i++) {
        wait_seen(ids[i], "SUCCEEDED");
        rec = stored(ids[i]);
        assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 1);
        assert_int_equal(sent_attempts(rec), 1);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(rec, "result"), "n")), 10 + i);
        json_decref(rec);
    }
}

/* kill -9 with attempts journaled DISPATCHED but not sent: recovery treats them like any
 * DISPATCHED one (it cannot know they were not sent), and never sends one twice: a write
 * without idempotency support ends UNKNOWN_OUTCOME, one with lookup is asked about first (found:
 * SUCCEEDED with the lookup's result and no call; not found: sent once). */
static void kill_nine_with_unsent_attempts_is_reconciled_never_repeated(void **state)
{
    (void)state;
    const char *connectors = ONE_PROCESS("t") ", "
        "\"tl\": {\"plugin\": \"" T_OK "\", \"processes\": 1, \"timeout_ms\": 600000, \"retry\": {\"max_attempts\": 2}, "
        "\"idempotency\": {\"write_op\": \"lookup\"}}";
    world_init(connectors, "");
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        /* The daemon that dies: blockers on both connectors, then three writes in the pipelines. */
        close(fds[0]);
        world_open_journal();
        world_open_scheduler();
        scheduler_set_pipeline(W.s, "t", 3);
        scheduler_set_pipeline(W.s, "tl", 3);
        char b1[32], b2[32], none_id[32], found_id[32], missing_id[32];
        submit_blocker("t", b1);
        /* tl's blocker is a write with lookup whose key says it happened: recovery settles it
         * by lookup instead of sending it again */
        submit_full("tl", "write_op", "{\"n\": 0, \"ms\": 3600000}", "write", "lookup", "done-blocker", 0, 0, 0, b2);
        wait_flow("t", 1, 0, 0);
        wait_flow("tl", 1, 0, 0);
        submit_write("t", 1, 0, none_id);
        submit_full("tl", "write_op", "{\"n\": 2}", "write", "lookup", "done-found", 0, 0, 0, found_id);
        submit_full("tl", "write_op", "{\"n\": 3}", "write", "lookup", "missing-key", 0, 0, 0, missing_id);
        wait_seen(none_id, "DISPATCHED");
        wait_seen(found_id, "DISPATCHED");
        wait_seen(missing_id, "DISPATCHED");
        pid_t hosts[8];
        int n = host_pids("t", hosts, 4);
        n += host_pids("tl", hosts + n, 4);
        char msg[512];
        int len = snprintf(msg, sizeof msg, "%s %s %s %s %s %d", b1, b2, none_id, found_id, missing_id, n);
        for (int i = 0; i < n; i++)
            len += snprintf(msg + len, sizeof msg - (size_t)len, " %d", (int)hosts[i]);
        msg[len++] = '\n';
        if (write(fds[1], msg, (size_t)len) != len)
            _exit(2);
        for (;;)
            pause();
    }
    close(fds[1]);
    char msg[512] = {0};
    size_t got = 0;
    while (got < sizeof msg - 1 && !strchr(msg, '\n')) {
        ssize_t r = read(fds[0], msg + got, sizeof msg - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    kill(child, SIGKILL);
    int status;
    waitpid(child, &status, 0);
    char b1[32], b2[32], none_id[32], found_id[32], missing_id[32];
    int n = 0, off = 0;
    if (sscanf(msg, "%31s %31s %31s %31s %31s %d%n", b1, b2, none_id, found_id, missing_id, &n, &off) != 6)
        fail_msg("the child did not get its actions dispatched: \"%s\"", msg);
    for (int i = 0; i < n; i++) { /* its sandbox processes die with it */
        int pid = 0, used = 0;
        if (sscanf(msg + off, "%d%n", &pid, &used) == 1 && pid > 0)
            kill(pid, SIGKILL);
        off += used;
    }

    world_open_journal();
    const char *ids[] = {none_id, found_id, missing_id};
    for (int i = 0; i < 3; i++) {
        json_t *rec = stored(ids[i]);
        assert_string_equal(str(rec, "state"), "DISPATCHED");
        json_decref(rec);
    }
    world_open_scheduler();
    scheduler_recovery rv;
    ar_error err = {0};
    assert_int_equal(scheduler_recover(W.s, &rv, &err), AR_OK);
    assert_int_equal(rv.unknown, 1);
    assert_int_equal(rv.reconciled, 3);
    assert_int_equal(rv.resent, 1); /* t's blocker: a read */

    json_t *rec = stored(none_id);
    assert_string_equal(str(rec, "state"), "UNKNOWN_OUTCOME");
    assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 1);
    json_decref(rec);

    wait_seen(found_id, "SUCCEEDED");
    rec = stored(found_id);
    assert_true(json_is_true(json_object_get(rec, "reconciled")));
    assert_string_equal(str(json_object_get(rec, "result"), "found_key"), "done-found");
    assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 1); /* not sent again */
    json_decref(rec);
    assert_int_equal(seen_count(found_id, "DISPATCHED"), 0);

    wait_seen(b2, "SUCCEEDED");
    rec = stored(b2);
    assert_string_equal(str(json_object_get(rec, "result"), "found_key"), "done-blocker");
    json_decref(rec);
    wait_seen(missing_id, "SUCCEEDED");
    rec = stored(missing_id);
    assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(rec, "result"), "n")), 3);
    json_decref(rec);
    assert_int_equal(seen_count(missing_id, "DISPATCHED"), 1); /* sent once after the restart */
    assert_int_equal(seen_count(none_id, "DISPATCHED"), 0);
}

/* ---- the queue --------------------------------------------------------------------------------- */

/* While the process is busy, queued actions expire at their deadline (soonest first, the
 * others untouched), also when there are more than the scheduler keeps parsed (compact
 * entries read back from the journal); a stop leaves the rest READY. */
static void queued_actions_expire_at_their_deadline_and_only_then(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "\"max_queue_depth\": 100000");
    assert_int_equal(scheduler_set_pipeline(W.s, "t", 1), AR_OK);
    char blocker[32];
    submit_blocker("t", blocker);
    wait_flow("t", 1, 0, 0);
    enum { N = 1500 };
    static char ids[N][32];
    int64_t now = ar_now_ms();
    /* journaled in batches, then handed over */
    json_t *recs[N];
    journal_batch *b = journal_batch_new();
    for (int i = 0; i < N; i++) {
        recs[i] = make_record("t", "write_op", "{\"n\": 1}", "write", "none", NULL, i % 3 - 1, 0,
                              i % 2 ? now + 3600000 : now + 400 + i % 7);
        snprintf(ids[i], sizeof ids[i], "%s", action_record_str(recs[i], "id"));
        action_batch_store(b, recs[i]);
    }
    ar_error err = {0};
    assert_int_equal(journal_commit(W.j, b, &err), AR_OK);
    journal_batch_free(b);
    for (int i = 0; i < N; i++)
        assert_int_equal(scheduler_enqueue(W.s, recs[i]), AR_OK);
    for (int i = 0; i < N; i += 2)
        wait_seen(ids[i], "FAILED");
    wait_flow("t", 1, 0, N / 2);
    wait_held(N / 2 + 1);
    json_t *rec = stored(ids[0]);
    assert_string_equal(str(json_object_get(rec, "error"), "class"), "timeout");
    assert_non_null(strstr(str(json_object_get(rec, "error"), "message"), "busy or down"));
    assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 0);
    json_decref(rec);
    for (int i = 1; i < N; i += 2)
        assert_int_equal(seen_count(ids[i], "FAILED") + seen_count(ids[i], "DISPATCHED"), 0);

    /* a compact one is cancelled: read back, ended, answered */
    cancel_answer a = {.mu = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(scheduler_cancel(W.s, ids[N - 1], "bob", on_cancel, &a), AR_OK);
    wait_cancel_answer(&a);
    assert_int_equal(a.status, AR_OK);
    assert_string_equal(a.state, "CANCELLED");

    world_close_scheduler(); /* a stop with the rest queued leaves them as they are */
    for (int i = 1; i < N - 1; i += 2) {
        rec = stored(ids[i]);
        assert_string_equal(str(rec, "state"), "READY");
        json_decref(rec);
    }
}

/* Higher priority first, older first, and age counts (aging_ms of waiting is one level); the
 * order holds for jobs read back at start too. */
static void the_queue_orders_by_priority_and_age(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "\"aging_ms\": 1000");
    assert_int_equal(scheduler_set_pipeline(W.s, "t", 1), AR_OK);
    char blocker[32];
    submit_blocker("t", blocker);
    wait_flow("t", 1, 0, 0);
    int64_t t = ar_now_ms();

    struct {
        int priority;
        int64_t created;
    } spec[] = {{0, t}, {-1, t - 500}, {5, t}, {0, t - 20000}, {1, t - 1}, {1, t - 2}};
    /* scores, created - priority * aging_ms: t, t+500, t-5000, t-20000, t-1001, t-1002 */
    const int expected[] = {3, 2, 5, 4, 0, 1};
    char ids[6][32];
    for (int i = 0; i < 6; i++)
        submit_full("t", "write_op", "{\"n\": 1}", "write", "none", NULL, spec[i].priority, spec[i].created, 0, ids[i]);
    wait_flow("t", 1, 0, 6);
    kill_hosts("t");
    for (int i = 0; i < 6; i++)
        wait_seen(ids[i], "SUCCEEDED");
    pthread_mutex_lock(&W.mu);
    assert_int_equal(json_array_size(W.dispatch_order), 7);
    for (int i = 0; i < 6; i++)
        if (strcmp(json_string_value(json_array_get(W.dispatch_order, i + 1)), ids[expected[i]]) != 0)
            fail_msg("dispatch %d was not the action with priority %d created at t%+lld", i,
                     spec[expected[i]].priority, (long long)(spec[expected[i]].created - t));
    pthread_mutex_unlock(&W.mu);
}

/* max_inflight bounds what is dispatched across the daemon, pipelines included. */
static void max_inflight_counts_the_pipeline(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("t"), "\"max_inflight\": 2");
    assert_int_equal(scheduler_set_pipeline(W.s, "t", 4), AR_OK);
    char blocker[32], ids[3][32];
    submit_blocker("t", blocker);
    wait_flow("t", 1, 0, 0);
    for (int i = 0; i < 3; i++)
        submit_write("t", i, 0, ids[i]);
    wait_flow("t", 1, 1, 2);
    usleep(300 * 1000); /* nothing more is dispatched meanwhile */
    json_t *f = flow("t");
    assert_int_equal(flow_int(f, "dispatching"), 1);
    assert_int_equal(flow_int(f, "queued"), 2);
    json_decref(f);
    kill_hosts("t");
    for (int i = 0; i < 3; i++)
        wait_seen(ids[i], "SUCCEEDED");
}

/* ---- recovery ------------------------------------------------------------------------------------ */

typedef struct pending_seen {
    char id[32];
    int64_t expires_ms;
    int calls;
} pending_seen;

static void on_pending(void *arg, const char *id, int64_t expires_ms)
{
    pending_seen *p = arg;
    snprintf(p->id, sizeof p->id, "%s", id);
    p->expires_ms = expires_ms;
    p->calls++;
}

/* Put raw text as an action's record (and its queue entry). */
static void store_raw(const char *id, const char *connector, const char *text)
{
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, id, strlen(id), text, strlen(text));
    journal_batch_put(b, JDB_QUEUE, id, strlen(id), connector, strlen(connector));
    ar_error err = {0};
    assert_int_equal(journal_commit(W.j, b, &err), AR_OK);
    journal_batch_free(b);
}

/* At start every queued record is read once: waiting ones resume from compact entries (also a
 * record with awkward text, and one only a full parse understands), an approval still pending is
 * reported with its expiry, and everything resumed runs. */
static void recovery_reads_each_record_once_and_resumes_it(void **state)
{
    (void)state;
    world_init("\"t\": {\"plugin\": \"" T_OK "\", \"processes\": 1, \"retry\": {\"max_attempts\": 3}}", "");
    world_open_journal();
    int64_t now = ar_now_ms();
    char ids[6][32];
    /* 0: READY, plain */
    json_t *rec = make_record("t", "write_op", "{\"n\": 0}", "write", "none", NULL, 2, 0, now + 600000);
    store(rec);
    snprintf(ids[0], 32, "%s", action_record_str(rec, "id"));
    json_decref(rec);
    /* 1: RETRY_WAIT, due */
    rec = make_record("t", "write_op", "{\"n\": 1}", "write", "none", NULL, 0, 0, 0);
    json_object_set_new(rec, "state", json_string("RETRY_WAIT"));
    json_object_set_new(rec, "next_attempt_ms", json_integer(now - 5));
    json_object_set_new(rec, "attempts", json_integer(1));
    store(rec);
    snprintf(ids[1], 32, "%s", action_record_str(rec, "id"));
    json_decref(rec);
    /* 2: strings with escaped quotes, brackets and braces, nested arrays, before the state */
    action_id_new(ids[2]);
    char text[2048];
    snprintf(text, sizeof text,
             "{\"id\": \"%s\", \"connector\": \"t\", \"action\": \"write_op\", \"effect\": \"write\", "
             "\"idempotency\": \"none\", \"idempotency_key\": \"k\\\"}{[\", \"input\": {\"n\": 2, "
             "\"note\": \"a \\\\\\\" b } ] [ {\", \"deep\": [[{\"x\": [1, {\"y\": \"}\"}]}]]},\n  \"priority\" : -1 ,"
             " \"created_ms\": %lld, \"deadline_ms\": 0, \"history\": [], \"state\": \"APPROVED\", \"attempts\": 0}",
             ids[2], (long long)now);
    store_raw(ids[2], "t", text);
    /* 3: a key written with an escape: only the full parse reads it */
    action_id_new(ids[3]);
    snprintf(text, sizeof text,
             "{\"id\": \"%s\", \"connector\": \"t\", \"action\": \"write_op\", \"effect\": \"write\", "
             "\"idempotency\": \"none\", \"idempotency_key\": \"k3\", \"input\": {\"n\": 3}, \"priority\": 0, "
             "\"created_ms\": %lld, \"deadline_ms\": 0, \"st\\u0061te\": \"READY\", \"attempts\": 0}",
             ids[3], (long long)now);
    store_raw(ids[3], "t", text);
    /* 4: waiting for a human */
    rec = make_record("t", "write_op", "{\"n\": 4}", "write", "none", NULL, 0, 0, 0);
    json_object_set_new(rec, "state", json_string("PENDING_APPROVAL"));
    json_object_set_new(rec, "approval", json_pack("{s:[s], s:I, s:s}", "roles", "ops", "expires_ms",
                                                   (json_int_t)(now + 12345), "summary", "x"));
    store(rec);
    snprintf(ids[4], 32, "%s", action_record_str(rec, "id"));
    json_decref(rec);
    /* 5: an unknown connector: left as it is */
    rec = make_record("gone", "write_op", "{\"n\": 5}", "write", "none", NULL, 0, 0, 0);
    store(rec);
    snprintf(ids[5], 32, "%s", action_record_str(rec, "id"));
    json_decref(rec);

    world_open_scheduler();
    pending_seen p = {0};
    scheduler_set_pending_watch(W.s, on_pending, &p);
    scheduler_recovery rv;
    ar_error err = {0};
    assert_int_equal(scheduler_recover(W.s, &rv, &err), AR_OK);
    assert_int_equal(rv.resumed, 5); /* 0, 1, 2, 3 and the unknown connector's */
    assert_int_equal(rv.resent + rv.reconciled + rv.unknown, 0);
    assert_int_equal(p.calls, 1);
    assert_string_equal(p.id, ids[4]);
    assert_int_equal(p.expires_ms, now + 12345);
    for (int i = 0; i < 4; i++) {
        wait_seen(ids[i], "SUCCEEDED");
        rec = stored(ids[i]);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(rec, "result"), "n")), i);
        assert_int_equal(sent_attempts(rec), 1);
        json_decref(rec);
    }
    rec = stored(ids[1]);
    assert_int_equal(json_integer_value(json_object_get(rec, "attempts")), 2);
    json_decref(rec);
    rec = stored(ids[4]);
    assert_string_equal(str(rec, "state"), "PENDING_APPROVAL");
    json_decref(rec);
    rec = stored(ids[5]);
    assert_string_equal(str(rec, "state"), "READY");
    json_decref(rec);
    wait_held(0);
}

/* ---- a new action's first commit (scheduler_submit) ------------------------------------------- */

typedef struct stored_answer {
    int called;
    int status;
    char state[32];
    int attempts;
} stored_answer;

static void on_stored(void *arg, int status, journal_batch *b, const ar_error *err, const json_t *rec)
{
    (void)b;
    (void)err;
    stored_answer *a = arg;
    pthread_mutex_lock(&W.mu);
    a->status = status;
    snprintf(a->state, sizeof a->state, "%s", action_state_name(action_record_state(rec)));
    a->attempts = (int)json_integer_value(json_object_get(rec, "attempts"));
    a->called = 1;
    pthread_cond_broadcast(&W.cv);
    pthread_mutex_unlock(&W.mu);
}

static void wait_stored(stored_answer *a)
{
    wait_set(&W.mu, &a->called, "the report of the submission's commit");
}

static void wait_can_start(const char *connector)
{
    int64_t until = ar_mono_ms() + GUARD_MS;
    while (!scheduler_can_start(W.s, connector)) {
        if (ar_mono_ms() > until)
            fail_msg("connector %s never looked free to start an action", connector);
        usleep(2 * 1000);
    }
}

/* The rest of a submission as the API hands it over, without the record (the scheduler adds
 * it): here one key of its own, a marker in the cache (the API's are its audit entries and
 * idempotency key). */
static journal_batch *submission_batch(const char *marker, int marker_unless_exists)
{
    journal_batch *b = journal_batch_new();
    if (marker_unless_exists)
        journal_batch_put_unless_exists(b, JDB_CACHE, marker, strlen(marker), "1", 1);
    else
        journal_batch_put(b, JDB_CACHE, marker, strlen(marker), "1", 1);
    return b;
}

/* A new write action handed to scheduler_submit (with hold_ms) with a batch holding one marker
 * of the caller's; its id into id. The report of its first commit lands in ans, later. */
static void submit_new_async(int n, const char *marker, int marker_unless_exists, int64_t hold_ms,
                             char id[ACTION_ID_LEN + 1], stored_answer *ans)
{
    char input[32];
    snprintf(input, sizeof input, "{\"n\": %d}", n);
    json_t *rec = make_record("a", "write_op", input, "write", "none", NULL, 0, 0, 0);
    snprintf(id, ACTION_ID_LEN + 1, "%s", action_record_str(rec, "id"));
    memset(ans, 0, sizeof *ans);
    assert_int_equal(scheduler_submit(W.s, rec, submission_batch(marker, marker_unless_exists), on_stored, ans,
                                      hold_ms),
                     AR_OK);
    json_decref(rec); /* the scheduler took a reference of its own */
}

/* The same, not held, and waiting for the report. */
static void submit_new(int n, const char *marker, int marker_unless_exists, char id[ACTION_ID_LEN + 1],
                       stored_answer *ans)
{
    submit_new_async(n, marker, marker_unless_exists, 0, id, ans);
    wait_stored(ans);
}

static int stored_called(stored_answer *ans)
{
    pthread_mutex_lock(&W.mu);
    int called = ans->called;
    pthread_mutex_unlock(&W.mu);
    return called;
}

static int cache_has(const char *key)
{
    journal_read *r;
    ar_error err = {0};
    assert_int_equal(journal_read_begin(W.j, &r, &err), AR_OK);
    const void *v;
    size_t n;
    int found = journal_get(r, JDB_CACHE, key, strlen(key), &v, &n) == AR_OK;
    journal_read_end(r);
    return found;
}

static void paused_done(void *arg, int status, const json_t *view)
{
    (void)view;
    int *done = arg;
    pthread_mutex_lock(&W.mu);
    *done = status == AR_OK ? 1 : -1;
    pthread_cond_broadcast(&W.cv);
    pthread_mutex_unlock(&W.mu);
}

static void pause_connector(const char *name, int pause)
{
    int done = 0;
    assert_int_equal(scheduler_pause(W.s, name, pause, "tester", "test", paused_done, &done), AR_OK);
    wait_set(&W.mu, &done, "the pause made durable");
    assert_int_equal(done, 1);
}

/* The report of a submission's first commit: durable, the action in state with attempts, and
 * the caller's part of the batch (its marker) durable with it. */
static void expect_stored_as(const stored_answer *ans, const char *state, int attempts, const char *marker)
{
    assert_int_equal(ans->status, AR_OK);
    assert_string_equal(ans->state, state);
    assert_int_equal(ans->attempts, attempts);
    assert_true(cache_has(marker));
}

/* The report of a first commit that carried the submission with its first DISPATCHED intent;
 * then the action runs once and is never seen READY. */
static void expect_joint_then_once(const stored_answer *ans, const char *marker, const char *id)
{
    expect_stored_as(ans, "DISPATCHED", 1, marker);
    wait_seen(id, "SUCCEEDED");
    assert_false(seen(id, "READY"));
    assert_int_equal(seen_count(id, "DISPATCHED"), 1);
    json_t *done = stored(id);
    assert_string_equal(str(done, "state"), "SUCCEEDED");
    assert_int_equal(sent_attempts(done), 1);
    json_decref(done);
    wait_held(0);
}

/* A connector free to start it: the action is stored together with its first DISPATCHED intent
 * (one commit, the caller told of it in that state), never reported READY, and runs once. */
static void submission_to_a_free_connector_is_stored_dispatched(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("a"), "");
    char first[ACTION_ID_LEN + 1];
    submit_write("a", 1, 0, first); /* the usual way first: the connector is then seen free */
    wait_seen(first, "SUCCEEDED");
    /* the attempt's history entry: these keys first, in this order, with these values */
    json_t *rec = stored(first);
    json_t *e = json_array_get(json_object_get(rec, "history"), 0);
    const char *keys[] = {"kind", "attempt", "key", "digest", "deadline_ms", "started_ms"};
    void *it = json_object_iter(e);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++, it = json_object_iter_next(e, it)) {
        assert_non_null(it);
        assert_string_equal(json_object_iter_key(it), keys[i]);
    }
    assert_string_equal(str(e, "kind"), "invoke");
    assert_true(json_is_integer(json_object_get(e, "attempt")));
    assert_int_equal(json_integer_value(json_object_get(e, "attempt")), 1);
    assert_string_equal(str(e, "key"), str(rec, "idempotency_key"));
    assert_string_equal(str(e, "digest"), str(rec, "digest"));
    assert_true(json_is_integer(json_object_get(e, "deadline_ms")));
    assert_true(json_is_integer(json_object_get(e, "started_ms")));
    assert_true(json_integer_value(json_object_get(e, "started_ms")) > 0);
    json_decref(rec);
    wait_can_start("a");
    char id[ACTION_ID_LEN + 1];
    stored_answer ans;
    submit_new(2, "joint-marker", 0, id, &ans);
    expect_joint_then_once(&ans, "joint-marker", id);
}

/* A connector that cannot start it now (paused): the batch is stored as it is (READY), the
 * caller told so, and the action runs once the connector may go on. */
static void submission_to_a_paused_connector_is_stored_ready(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("a"), "");
    pause_connector("a", 1);
    char id[ACTION_ID_LEN + 1];
    stored_answer ans;
    submit_new(3, "ready-marker", 0, id, &ans);
    expect_stored_as(&ans, "READY", 0, "ready-marker");
    wait_seen(id, "READY");
    wait_held(1);
    pause_connector("a", 0);
    wait_seen(id, "SUCCEEDED");
    json_t *done = stored(id);
    assert_int_equal(sent_attempts(done), 1);
    json_decref(done);
    wait_held(0);
}

/* A batch the journal refuses (here a key that exists already, as when another submission
 * with the same idempotency key won): nothing of the action is stored or run, the caller is
 * told, and the scheduler forgets it, whether it was to start at once or not. */
static void submission_whose_batch_is_refused_leaves_nothing(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("a"), "");
    char first[ACTION_ID_LEN + 1];
    submit_write("a", 1, 0, first);
    wait_seen(first, "SUCCEEDED");
    journal_batch *taken = journal_batch_new();
    journal_batch_put(taken, JDB_CACHE, "taken", 5, "x", 1);
    ar_error err = {0};
    assert_int_equal(journal_commit(W.j, taken, &err), AR_OK);
    journal_batch_free(taken);
    for (int paused = 0; paused <= 1; paused++) {
        if (paused)
            pause_connector("a", 1);
        else
            wait_can_start("a");
        char id[ACTION_ID_LEN + 1];
        stored_answer ans;
        submit_new(4, "taken", 1, id, &ans);
        assert_int_equal(ans.status, AR_E_EXISTS);
        wait_held(0);
        json_t *none = NULL;
        assert_int_equal(action_load_by_id(W.j, id, &none, &err), AR_E_NOTFOUND);
        assert_false(seen(id, "DISPATCHED"));
        assert_false(seen(id, "READY"));
        if (!paused)
            wait_flow("a", 0, 0, 0); /* its place in the pipeline given back */
    }
}

/* A connector busy with a call (pipeline 1): a new action whose client waits may wait for the
 * place, not stored (nothing of it durable, its caller not told; the flow view counts it as
 * queued), and then goes in DISPATCHED with its first attempt, one commit, never READY. */
static void held_submission_goes_in_with_its_first_attempt(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("a"), "");
    assert_int_equal(scheduler_set_pipeline(W.s, "a", 1), AR_OK);
    char blocker[ACTION_ID_LEN + 1], id[ACTION_ID_LEN + 1];
    submit_blocker("a", blocker);
    wait_flow("a", 1, 0, 0);
    stored_answer ans;
    submit_new_async(5, "held-marker", 0, GUARD_MS, id, &ans);
    wait_flow("a", 1, 0, 1);
    assert_false(stored_called(&ans));
    assert_false(cache_has("held-marker"));
    json_t *none = NULL;
    ar_error err = {0};
    assert_int_equal(action_load_by_id(W.j, id, &none, &err), AR_E_NOTFOUND);
    assert_false(scheduler_can_start(W.s, "a"));
    kill_hosts("a"); /* the blocker's call ends; the place is free once a process is back */
    wait_stored(&ans);
    expect_joint_then_once(&ans, "held-marker", id);
}

/* A held action whose time is up, or that is held when the scheduler stops, is stored READY
 * (its caller told so) and runs like any queued one. */
static void held_submission_is_stored_ready_when_its_time_is_up_or_at_stop(void **state)
{
    (void)state;
    world_start(ONE_PROCESS("a"), "");
    assert_int_equal(scheduler_set_pipeline(W.s, "a", 1), AR_OK);
    char blocker[ACTION_ID_LEN + 1], late[ACTION_ID_LEN + 1], stopped[ACTION_ID_LEN + 1];
    submit_blocker("a", blocker);
    wait_flow("a", 1, 0, 0);
    stored_answer ans, at_stop;
    submit_new_async(6, "late-marker", 0, 150, late, &ans);
    wait_stored(&ans);
    expect_stored_as(&ans, "READY", 0, "late-marker");
    wait_seen(late, "READY");
    wait_flow("a", 1, 0, 1); /* queued as any other */
    submit_new_async(7, "stop-marker", 0, GUARD_MS, stopped, &at_stop);
    wait_flow("a", 1, 0, 2);
    world_close_scheduler();
    assert_true(stored_called(&at_stop));
    expect_stored_as(&at_stop, "READY", 0, "stop-marker");
    json_t *rec = stored(stopped);
    assert_string_equal(str(rec, "state"), "READY");
    json_decref(rec);
    world_open_scheduler();
    scheduler_recovery rv;
    ar_error err = {0};
    assert_int_equal(scheduler_recover(W.s, &rv, &err), AR_OK);
    wait_seen(late, "SUCCEEDED");
    wait_seen(stopped, "SUCCEEDED");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(durable_attempts_wait_for_a_process_then_go_in_order, world_stop),
    cmocka_unit_test_teardown(cancel_of_an_unsent_attempt_cancels_without_sending, world_stop),
    cmocka_unit_test_teardown(cancel_while_retry_wait_is_journaled_ends_it_at_once, world_stop),
    cmocka_unit_test_teardown(cancel_while_dispatched_is_journaled_is_answered_cancelled, world_stop),
    cmocka_unit_test_teardown(deadline_passing_while_waiting_for_a_process_fails_unsent, world_stop),
    cmocka_unit_test_teardown(graceful_stop_puts_unsent_attempts_back_to_waiting, world_stop),
    cmocka_unit_test_teardown(kill_nine_with_unsent_attempts_is_reconciled_never_repeated, world_stop),
    cmocka_unit_test_teardown(queued_actions_expire_at_their_deadline_and_only_then, world_stop),
    cmocka_unit_test_teardown(the_queue_orders_by_priority_and_age, world_stop),
    cmocka_unit_test_teardown(max_inflight_counts_the_pipeline, world_stop),
    cmocka_unit_test_teardown(recovery_reads_each_record_once_and_resumes_it, world_stop),
    cmocka_unit_test_teardown(submission_to_a_free_connector_is_stored_dispatched, world_stop),
    cmocka_unit_test_teardown(submission_to_a_paused_connector_is_stored_ready, world_stop),
    cmocka_unit_test_teardown(submission_whose_batch_is_refused_leaves_nothing, world_stop),
    cmocka_unit_test_teardown(held_submission_goes_in_with_its_first_attempt, world_stop),
    cmocka_unit_test_teardown(held_submission_is_stored_ready_when_its_time_is_up_or_at_stop, world_stop),
};

AR_TEST_MAIN(tests, NULL, NULL)
