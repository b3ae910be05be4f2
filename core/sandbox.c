/* sandbox.c - the daemon's side of the plugin sandbox: a pool of host processes per connector
 * (see sandbox.h). Everything but sandbox_pool_snapshot runs on the loop thread. */
#include "sandbox.h"

#include <stdarg.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aiorun/plugin.h"
#include "frame.h"
#include "schema.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
/* A process that served this long before dying restarts with the minimum backoff again. */
#define HEALTHY_RESET_MS 60000
/* Deaths before READY in a row, with nothing ever served, after which the pool is DEGRADED. */
#define STARTUP_FAILURES_DEGRADED 5
/* HELLO and READY must come within this time of the spawn (the plugin's init included). */
#define STARTUP_TIMEOUT_MS 30000
/* The deadline INIT gives the plugin's init: shorter than ours, so that its own HTTP calls
 * time out (with a message) before we kill it. */
#define INIT_DEADLINE_MS 25000
/* Time past a call's deadline before the process is killed (the host needs a moment to
 * report the plugin's own timeout). */
#define DEADLINE_GRACE_MS 200
#define DEFAULT_TIMEOUT_MS 30000
/* After the socket closes, a process that has not exited within this time is killed. */
#define REAP_GUARD_MS 1000
#define REAP_POLL_MS 10
/* sandbox_pool_free waits this long in total for processes to exit after SHUTDOWN. */
#define FREE_WAIT_MS 1000
#define READ_CHUNK (64 * 1024)
/* Reads per readiness event, so that one chatty process cannot starve the loop. */
#define READS_PER_EVENT 64
#define LOG_LINE_MAX 4096
#define MAX_PROCESSES 64
/* Secret values shorter than this are not redacted: they would mangle ordinary text and are
 * too short to be credentials worth hiding. */
#define REDACT_MIN_LEN 4
#define REDACTED "[redacted]"
/* A Retry-After from the host is believed up to a week (the host is not trusted). */
#define RETRY_AFTER_MAX_MS (7LL * 24 * 3600 * 1000)

typedef enum proc_phase {
    PROC_DOWN = 0,   /* no process; a restart may be scheduled */
    PROC_HELLO,      /* spawned, waiting for HELLO */
    PROC_INIT,       /* INIT sent, waiting for READY */
    PROC_SERVING,    /* ready; has_call says whether it is busy */
    PROC_EXITING     /* socket closed, waiting to reap the process */
} proc_phase;

typedef enum call_kind {
    CALL_INVOKE = 0,
    CALL_LOOKUP = 1
} call_kind;

typedef struct proc_call {
    sandbox_done_fn done;
    void *arg;
    uint32_t request_id;
    call_kind kind;
    char *action;
    int timeout_ms;
    int64_t start_us;
} proc_call;

typedef struct sandbox_proc {
    sandbox_pool *pool;
    int index;
    proc_phase phase;
    pid_t pid;                  /* 0 when none */
    int pidfd;                  /* -1 when none (or pidfd_open is unavailable) */
    int pidfd_watched;
    int fd;                     /* our end of the socketpair, -1 when closed */
    unsigned gen;               /* bumped whenever the channel closes */
    frame_decoder dec;
    uint8_t *out;               /* pending output: out[out_off, out_len) */
    size_t out_len, out_off;
    int want_out;               /* EPOLLOUT registered */
    int has_call;
    proc_call call;
    uint64_t timer;             /* the startup or call deadline */
    uint64_t restart_timer;
    uint64_t reap_timer;
    int64_t reap_guard_ms;      /* mono time at which a lingering process is killed */
    int reap_killed;
    int64_t backoff_ms;
    int64_t ready_at_ms;        /* mono time of READY in this incarnation, 0 before */
    int startup_failures;       /* deaths before READY in a row */
    char kill_reason[400];      /* why we killed it, "" when it died by itself */
} sandbox_proc;

struct sandbox_pool {
    loop_t *loop;
    char *connector, *plugin_path, *host_path;
    json_t *config;
    json_t *secrets;            /* object name -> string; wiped and freed with the pool */
    int has_redactable;         /* some secret is at least REDACT_MIN_LEN bytes long */
    int timeout_ms;
    size_t max_frame;
    sandbox_event_fn on_event;
    void *event_arg;
    int n;
    sandbox_proc *procs;
    uint32_t next_request_id;
    int rr;                     /* where the next idle-process search starts */
    int ever_served;
    int freeing;
    int quiet;                  /* no events while the pool is being built */
    sandbox_state notified_state;
    char last_death[400];       /* why the last process died, for DEGRADED */

    pthread_mutex_t mu;         /* guards the fields below for sandbox_pool_snapshot */
    sandbox_state state;
    char message[512];
    json_t *descriptor;
    int serving;
    uint64_t restarts;
};

static void proc_spawn(sandbox_proc *p);
static void on_io(loop_t *loop, int fd, uint32_t events, void *arg);

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

const char *sandbox_state_name(sandbox_state s)
{
    switch (s) {
    case SANDBOX_STARTING: return "starting";
    case SANDBOX_READY: return "ready";
    case SANDBOX_DEGRADED: return "degraded";
    case SANDBOX_REFUSED: return "refused";
    }
    return "unknown";
}

/* ---- state ---- */

/* Recompute the pool state from its processes and tell the owner when it changed (or when
 * idle says a process just became free). */
static void update_state(sandbox_pool *pool, int idle)
{
    int serving = 0, startup_failures = 0;
    for (int i = 0; i < pool->n; i++) {
        if (pool->procs[i].phase == PROC_SERVING)
            serving++;
        if (pool->procs[i].startup_failures > startup_failures)
            startup_failures = pool->procs[i].startup_failures;
    }
    pthread_mutex_lock(&pool->mu);
    pool->serving = serving;
    if (pool->state != SANDBOX_REFUSED) {
        if (serving > 0) {
            pool->state = SANDBOX_READY;
            pool->message[0] = '\0';
        } else if (pool->ever_served) {
            pool->state = SANDBOX_DEGRADED;
            snprintf(pool->message, sizeof pool->message, "every process is down: %s",
                     pool->last_death);
        } else if (startup_failures >= STARTUP_FAILURES_DEGRADED) {
            pool->state = SANDBOX_DEGRADED;
            snprintf(pool->message, sizeof pool->message,
                     "the plugin process failed to start %d times in a row (last: %s); still "
                     "retrying with backoff", startup_failures, pool->last_death);
        } else {
            pool->state = SANDBOX_STARTING;
            snprintf(pool->message, sizeof pool->message, "%s", pool->last_death);
        }
    }
    sandbox_state state = pool->state;
    pthread_mutex_unlock(&pool->mu);

    int changed = state != pool->notified_state;
    pool->notified_state = state;
    if ((changed || idle) && pool->on_event && !pool->freeing && !pool->quiet)
        pool->on_event(pool->event_arg, pool);
}

/* ---- the channel ---- */

static void channel_close(sandbox_proc *p)
{
    if (p->fd >= 0) {
        loop_del_fd(p->pool->loop, p->fd);
        close(p->fd);
        p->fd = -1;
    }
    p->gen++;
    frame_decoder_fini(&p->dec);
    free(p->out);
    p->out = NULL;
    p->out_len = p->out_off = 0;
    p->want_out = 0;
}

/* Write what is pending without blocking. A hard error shuts the socket down, so that the
 * loop reports it as a hang-up and the death is handled in one place (on_io). */
static void channel_flush(sandbox_proc *p)
{
    while (p->out_off < p->out_len) {
        ssize_t w = send(p->fd, p->out + p->out_off, p->out_len - p->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!p->want_out && loop_mod_fd(p->pool->loop, p->fd, EPOLLIN | EPOLLRDHUP | EPOLLOUT) == AR_OK)
                p->want_out = 1;
            return;
        }
        shutdown(p->fd, SHUT_RDWR);
        p->out_off = p->out_len;
        break;
    }
    free(p->out);
    p->out = NULL;
    p->out_len = p->out_off = 0;
    if (p->want_out) {
        loop_mod_fd(p->pool->loop, p->fd, EPOLLIN | EPOLLRDHUP);
        p->want_out = 0;
    }
}

static int channel_send(sandbox_proc *p, frame_type type, uint32_t id, const json_t *payload,
                        ar_error *err)
{
    uint8_t *buf;
    size_t len;
    int rc = frame_encode(type, id, payload, p->pool->max_frame, &buf, &len, err);
    if (rc != AR_OK)
        return rc;
    if (p->out_off == p->out_len) {
        free(p->out);
        p->out = buf;
        p->out_len = len;
        p->out_off = 0;
    } else {
        uint8_t *nb = realloc(p->out, p->out_len + len);
        if (!nb) {
            free(buf);
            return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory queueing a frame");
        }
        memcpy(nb + p->out_len, buf, len);
        free(buf);
        p->out = nb;
        p->out_len += len;
    }
    channel_flush(p);
    return AR_OK;
}

/* ---- calls ---- */

static void cancel_timer(sandbox_proc *p, uint64_t *id)
{
    if (*id) {
        loop_timer_cancel(p->pool->loop, *id);
        *id = 0;
    }
}

/* Take the running call off the process (0 when there is none). The process's state is
 * settled first and the call reported after, because done() may dispatch the next call. */
static int call_detach(sandbox_proc *p, proc_call *out)
{
    if (!p->has_call)
        return 0;
    *out = p->call;
    p->has_call = 0;
    memset(&p->call, 0, sizeof p->call);
    cancel_timer(p, &p->timer);
    return 1;
}

static void call_report(proc_call *c, const sandbox_result *res_in)
{
    sandbox_result res = *res_in;
    res.latency_us = mono_us() - c->start_us;
    if (c->done)
        c->done(c->arg, &res);
    free(c->action);
    c->action = NULL;
}

static void call_report_error(proc_call *c, int cls, const char *message)
{
    sandbox_result res = {.ok = 0, .error_class = cls, .error_message = message,
                          .retry_after_ms = -1};
    call_report(c, &res);
}

/* What a call was, for messages: "action X" or "lookup for action X". */
static const char *call_kind_prefix(const proc_call *c)
{
    return c->kind == CALL_LOOKUP ? "lookup for action" : "action";
}

/* ---- redaction of secrets in what a plugin sends back ---- */

/* Copy [s, s+len) with every redactable secret value replaced. 0: nothing found (*out NULL);
 * 1: *out is the redacted copy (malloc'd, NUL-terminated, *out_len its length), or NULL when
 * memory ran out (the caller must then withhold the text). */
static int redact_bytes(const sandbox_pool *pool, const char *s, size_t len, char **out,
                        size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!pool->has_redactable || !s)
        return 0;
    char *buf = NULL;
    size_t blen = 0, bcap = 0, i = 0;
    int found = 0;
    for (;;) {
        /* the earliest match at or after i; the longest one when several start there */
        const char *best = NULL;
        size_t best_len = 0;
        const char *name;
        json_t *v;
        json_object_foreach(pool->secrets, name, v) {
            size_t n = json_string_length(v);
            if (n < REDACT_MIN_LEN || n > len - i)
                continue;
            const char *m = memmem(s + i, len - i, json_string_value(v), n);
            if (m && (!best || m < best || (m == best && n > best_len))) {
                best = m;
                best_len = n;
            }
        }
        size_t upto = best ? (size_t)(best - s) : len;
        if (!best && !found)
            return 0;
        found = 1;
        size_t need = blen + (upto - i) + (best ? sizeof REDACTED - 1 : 0) + 1;
        if (need > bcap) {
            size_t cap = bcap ? bcap : 256;
            while (cap < need)
                cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                return 1;
            }
            buf = nb;
            bcap = cap;
        }
        memcpy(buf + blen, s + i, upto - i);
        blen += upto - i;
        if (!best)
            break;
        memcpy(buf + blen, REDACTED, sizeof REDACTED - 1);
        blen += sizeof REDACTED - 1;
        i = upto + best_len;
    }
    buf[blen] = '\0';
    *out = buf;
    *out_len = blen;
    return 1;
}

/* Redact a NUL-terminated text into buf (cap bytes); returns buf, or s itself when it holds no
 * secret. */
static const char *redact_text(const sandbox_pool *pool, const char *s, char *buf, size_t cap)
{
    char *r;
    size_t n;
    if (!s || !redact_bytes(pool, s, strlen(s), &r, &n))
        return s;
    snprintf(buf, cap, "%s", r ? r : "(text withheld: out of memory while redacting secrets)");
    free(r);
    return buf;
}

/* Redact every string and key of v in place. AR_OK or AR_E_NOMEM. */
static int redact_json(const sandbox_pool *pool, json_t *v)
{
    char *r;
    size_t n;
    if (json_is_string(v)) {
        if (!redact_bytes(pool, json_string_value(v), json_string_length(v), &r, &n))
            return AR_OK;
        int rc = r && json_string_setn_nocheck(v, r, n) == 0 ? AR_OK : AR_E_NOMEM;
        free(r);
        return rc;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (redact_json(pool, e) != AR_OK)
                return AR_E_NOMEM;
        }
        return AR_OK;
    }
    if (!json_is_object(v))
        return AR_OK;
    const char *key;
    json_t *e;
    json_t *renamed = NULL;
    json_object_foreach(v, key, e) {
        if (redact_json(pool, e) != AR_OK)
            goto nomem;
        if (!redact_bytes(pool, key, strlen(key), &r, &n))
            continue;
        if (!r || (!renamed && !(renamed = json_array())) ||
            json_array_append_new(renamed, json_pack("[s, s]", key, r)) != 0) {
            free(r);
            goto nomem;
        }
        free(r);
    }
    size_t i;
    json_array_foreach(renamed, i, e) {
        const char *old = json_string_value(json_array_get(e, 0));
        if (json_object_set(v, json_string_value(json_array_get(e, 1)), json_object_get(v, old)) != 0)
            goto nomem;
        json_object_del(v, old);
    }
    json_decref(renamed);
    return AR_OK;
nomem:
    json_decref(renamed);
    return AR_E_NOMEM;
}

/* ---- death and restart ---- */

static void describe_status(int status, char *out, size_t cap)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char *abbrev = sigabbrev_np(sig);
        snprintf(out, cap, "died of signal %d (SIG%s)", sig, abbrev ? abbrev : "?");
    } else if (WIFEXITED(status)) {
        snprintf(out, cap, "exited with status %d", WEXITSTATUS(status));
    } else {
        snprintf(out, cap, "ended (wait status %d)", status);
    }
}

static void on_restart(loop_t *loop, void *arg)
{
    (void)loop;
    sandbox_proc *p = arg;
    p->restart_timer = 0;
    if (p->pool->freeing || p->pool->state == SANDBOX_REFUSED || p->phase != PROC_DOWN)
        return;
    pthread_mutex_lock(&p->pool->mu);
    p->pool->restarts++;
    pthread_mutex_unlock(&p->pool->mu);
    proc_spawn(p);
    update_state(p->pool, 0);
}

/* The process is gone (or never started): count it, and schedule the next attempt. */
static void proc_down(sandbox_proc *p, const char *reason)
{
    sandbox_pool *pool = p->pool;
    p->phase = PROC_DOWN;
    p->pid = 0;
    if (!p->ready_at_ms)
        p->startup_failures++;
    else if (ar_mono_ms() - p->ready_at_ms >= HEALTHY_RESET_MS)
        p->backoff_ms = BACKOFF_MIN_MS;
    p->ready_at_ms = 0;
    if (pool->freeing || pool->state == SANDBOX_REFUSED) {
        update_state(pool, 0);
        return;
    }
    int64_t delay = p->backoff_ms;
    p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
    snprintf(pool->last_death, sizeof pool->last_death, "%s; restarting in %lld ms", reason,
             (long long)delay);
    p->restart_timer = loop_timer_add(pool->loop, ar_mono_ms() + delay, on_restart, p);
    update_state(pool, 0);
}

static void reap_stop(sandbox_proc *p)
{
    cancel_timer(p, &p->reap_timer);
    if (p->pidfd >= 0) {
        if (p->pidfd_watched)
            loop_del_fd(p->pool->loop, p->pidfd);
        close(p->pidfd);
        p->pidfd = -1;
        p->pidfd_watched = 0;
    }
}

static void proc_reaped(sandbox_proc *p, int status, int known)
{
    char how[128], reason[400];
    sandbox_pool *pool = p->pool;

    reap_stop(p);
    if (known)
        describe_status(status, how, sizeof how);
    else
        snprintf(how, sizeof how, "ended (exit status unavailable)");
    proc_call c;
    int had_call = call_detach(p, &c);
    if (had_call) {
        snprintf(reason, sizeof reason, "plugin process for connector %s %s during %s %s",
                 pool->connector, how, call_kind_prefix(&c), c.action);
    } else if (p->kill_reason[0]) {
        snprintf(reason, sizeof reason, "%s", p->kill_reason);
    } else if (!p->ready_at_ms) {
        snprintf(reason, sizeof reason, "plugin process for connector %s %s before it was ready",
                 pool->connector, how);
    } else {
        snprintf(reason, sizeof reason, "plugin process for connector %s %s", pool->connector, how);
    }
    proc_down(p, reason);
    if (had_call)
        call_report_error(&c, AIORUN_E_PLUGIN_CRASHED, reason);
}

/* 1 when the process was reaped. */
static int proc_try_reap(sandbox_proc *p)
{
    int status = 0;
    pid_t r;
    do
        r = waitpid(p->pid, &status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == p->pid) {
        proc_reaped(p, status, 1);
        return 1;
    }
    if (r < 0) { /* ECHILD: someone else reaped it */
        proc_reaped(p, 0, 0);
        return 1;
    }
    return 0;
}

static void on_reap_timer(loop_t *loop, void *arg)
{
    sandbox_proc *p = arg;
    p->reap_timer = 0;
    if (p->phase != PROC_EXITING || proc_try_reap(p))
        return;
    int64_t now = ar_mono_ms();
    if (now >= p->reap_guard_ms && !p->reap_killed) {
        kill(p->pid, SIGKILL);
        p->reap_killed = 1;
    }
    /* with a pidfd, the guard is the only timer needed until the kill */
    int64_t due = p->pidfd_watched && !p->reap_killed ? p->reap_guard_ms : now + REAP_POLL_MS;
    p->reap_timer = loop_timer_add(loop, due, on_reap_timer, p);
}

static void on_pidfd(loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    sandbox_proc *p = arg;
    if (p->phase == PROC_EXITING)
        proc_try_reap(p);
}

/* Close the channel and wait (on the loop) for the process to exit. The running call, if any,
 * stays attached until the exit status says what happened. */
static void proc_lost(sandbox_proc *p)
{
    channel_close(p);
    cancel_timer(p, &p->timer);
    p->phase = PROC_EXITING;
    p->reap_guard_ms = ar_mono_ms() + REAP_GUARD_MS;
    if (proc_try_reap(p))
        return;
    if (p->pidfd >= 0 && loop_add_fd(p->pool->loop, p->pidfd, EPOLLIN, on_pidfd, p) == AR_OK)
        p->pidfd_watched = 1;
    int64_t due = p->pidfd_watched && !p->reap_killed ? p->reap_guard_ms : ar_mono_ms() + REAP_POLL_MS;
    p->reap_timer = loop_timer_add(p->pool->loop, due, on_reap_timer, p);
    update_state(p->pool, 0);
}

/* Kill the process for something it did (timeout, garbage); the running call fails now with
 * cls/message. */
static void proc_kill(sandbox_proc *p, int cls, const char *message)
{
    if (p->pid > 0 && !p->reap_killed) {
        kill(p->pid, SIGKILL);
        p->reap_killed = 1;
    }
    snprintf(p->kill_reason, sizeof p->kill_reason, "%s", message);
    snprintf(p->pool->last_death, sizeof p->pool->last_death, "%s", message);
    proc_call c;
    int had_call = call_detach(p, &c);
    proc_lost(p);
    if (had_call)
        call_report_error(&c, cls, message);
}

static void on_deadline(loop_t *loop, void *arg)
{
    (void)loop;
    sandbox_proc *p = arg;
    char msg[300];
    p->timer = 0;
    if (p->has_call) {
        snprintf(msg, sizeof msg, "plugin did not answer within %d ms (connector %s, %s %s); "
                 "its process was killed", p->call.timeout_ms, p->pool->connector,
                 call_kind_prefix(&p->call), p->call.action);
        proc_kill(p, AIORUN_E_TIMEOUT, msg);
    } else if (p->phase == PROC_HELLO || p->phase == PROC_INIT) {
        snprintf(msg, sizeof msg, "plugin process for connector %s did not become ready within "
                 "%d ms; it was killed", p->pool->connector, STARTUP_TIMEOUT_MS);
        proc_kill(p, AIORUN_E_TIMEOUT, msg);
    }
}

/* ---- refusal ---- */

static void pool_refuse(sandbox_pool *pool, sandbox_proc *from, const char *message)
{
    pthread_mutex_lock(&pool->mu);
    int first = pool->state != SANDBOX_REFUSED;
    if (first) {
        pool->state = SANDBOX_REFUSED;
        snprintf(pool->message, sizeof pool->message, "%s", message);
    }
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        cancel_timer(p, &p->restart_timer);
        if (p == from) {
            if (p->fd >= 0)
                proc_lost(p); /* it exits by itself (or on EOF) */
        } else if (p->fd >= 0) {
            char msg[600];
            snprintf(msg, sizeof msg, "connector %s was refused: %s", pool->connector, message);
            proc_kill(p, AIORUN_E_PLUGIN_CRASHED, msg);
        }
    }
    update_state(pool, 0);
}

/* ---- frames from a host ---- */

static void malformed(sandbox_proc *p, const char *why)
{
    char msg[600];
    snprintf(msg, sizeof msg, "plugin sent a malformed reply: %s (connector %s)", why,
             p->pool->connector);
    proc_kill(p, AIORUN_E_PLUGIN_CRASHED, msg);
}

/* Print a plugin's log line as one line with control characters escaped. */
static void forward_log(sandbox_pool *pool, const json_t *payload)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    const char *level = "info";
    const char *want = json_string_value(json_object_get(payload, "level"));
    for (size_t i = 0; want && i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(want, levels[i]) == 0)
            level = levels[i];
    char clean[LOG_LINE_MAX];
    const char *msg = redact_text(pool, json_string_value(json_object_get(payload, "message")),
                                  clean, sizeof clean);
    char line[LOG_LINE_MAX];
    size_t o = 0;
    for (const unsigned char *s = (const unsigned char *)(msg ? msg : ""); *s && o + 5 < sizeof line; s++) {
        if (*s == '\n') {
            line[o++] = '\\';
            line[o++] = 'n';
        } else if (*s == '\r') {
            line[o++] = '\\';
            line[o++] = 'r';
        } else if (*s == '\t') {
            line[o++] = '\\';
            line[o++] = 't';
        } else if (*s < 0x20 || *s == 0x7f) {
            o += (size_t)snprintf(line + o, sizeof line - o, "\\x%02x", *s);
        } else {
            line[o++] = (char)*s;
        }
    }
    line[o] = '\0';
    fprintf(stderr, "[%s] %s: %s\n", pool->connector, level, line);
}

/* snprintf for messages that may be cut short on purpose (vsnprintf keeps GCC's truncation
 * warning, meant for paths, off messages). */
static void format_message(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void format_message(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

/* Check the descriptor's schemas and the connector's config. NULL, or the refusal message. */
static int check_hello(sandbox_pool *pool, const json_t *desc, char *why, size_t cap)
{
    ar_error err;
    const json_t *cs = json_object_get(desc, "config_schema");
    const json_t *actions = json_object_get(desc, "actions");
    if (!json_is_object(cs) || !json_is_array(actions)) {
        format_message(why, cap, "plugin %s sent a HELLO without config_schema or actions", pool->plugin_path);
        return AR_E_INVALID;
    }
    if (schema_check(cs, &err) != AR_OK) {
        format_message(why, cap, "plugin %s declares an invalid config_schema: %s", pool->plugin_path,
                 err.message);
        return AR_E_INVALID;
    }
    size_t i;
    json_t *a;
    json_array_foreach(actions, i, a) {
        if (schema_check(json_object_get(a, "input_schema"), &err) != AR_OK) {
            format_message(why, cap, "plugin %s declares an invalid input_schema for action %s: %s",
                     pool->plugin_path, json_string_value(json_object_get(a, "name")), err.message);
            return AR_E_INVALID;
        }
    }
    if (schema_validate(cs, pool->config, "config", &err) != AR_OK) {
        format_message(why, cap, "invalid config for connector %s: %s", pool->connector, err.message);
        return AR_E_INVALID;
    }
    return AR_OK;
}

static void on_hello(sandbox_proc *p, const frame *f)
{
    sandbox_pool *pool = p->pool;
    ar_error err;

    if (!pool->descriptor) {
        char why[512];
        if (check_hello(pool, f->payload, why, sizeof why) != AR_OK) {
            pool_refuse(pool, p, why);
            return;
        }
        pthread_mutex_lock(&pool->mu);
        pool->descriptor = json_incref(f->payload);
        pthread_mutex_unlock(&pool->mu);
    }
    json_t *init = json_pack("{s:s, s:O, s:O, s:I}", "connector", pool->connector, "config",
                             pool->config, "secrets", pool->secrets, "deadline_ms",
                             (json_int_t)(ar_now_ms() + INIT_DEADLINE_MS));
    if (!init || channel_send(p, FRAME_INIT, 0, init, &err) != AR_OK) {
        json_decref(init);
        proc_kill(p, AIORUN_E_PLUGIN_CRASHED, "cannot send INIT to the plugin process");
        return;
    }
    json_decref(init);
    p->phase = PROC_INIT;
}

static void on_result(sandbox_proc *p, const frame *f)
{
    char why[200];
    if (!p->has_call || f->request_id != p->call.request_id) {
        snprintf(why, sizeof why, "RESULT for request %u, %s", f->request_id,
                 p->has_call ? "another request is running" : "no request is running");
        malformed(p, why);
        return;
    }
    json_t *ok = json_object_get(f->payload, "ok");
    if (!json_is_boolean(ok)) {
        malformed(p, "RESULT without a boolean \"ok\"");
        return;
    }
    sandbox_result res = {.retry_after_ms = -1};
    char *text = NULL, *clean_msg = NULL;
    size_t clean_len;
    /* the last HTTP response the plugin saw; values outside sane ranges are ignored */
    json_t *hs = json_object_get(f->payload, "http_status");
    json_t *ra = json_object_get(f->payload, "retry_after_ms");
    if (json_is_integer(hs) && json_integer_value(hs) >= 100 && json_integer_value(hs) <= 999)
        res.http_status = (int)json_integer_value(hs);
    if (json_is_integer(ra) && json_integer_value(ra) >= 0)
        res.retry_after_ms = json_integer_value(ra) > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS
                                                                         : json_integer_value(ra);
    if (json_is_true(ok)) {
        json_t *r = json_object_get(f->payload, "result");
        if (r && redact_json(p->pool, r) != AR_OK) {
            res.error_class = AIORUN_E_PERMANENT;
            res.error_message = "the plugin's result could not be checked for secrets (out of "
                                "memory) and was withheld";
        } else {
            text = json_dumps(r ? r : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
            if (!text) {
                malformed(p, "RESULT whose result cannot be encoded");
                return;
            }
            res.ok = 1;
            res.result_json = text;
            res.result_len = strlen(text);
        }
    } else {
        int cls = frame_class_from_name(json_string_value(json_object_get(f->payload, "class")));
        const char *msg = json_string_value(json_object_get(f->payload, "message"));
        if (cls < 0) {
            malformed(p, "RESULT with an unknown error class");
            return;
        }
        res.error_class = cls;
        res.error_message = msg ? msg : "";
        if (redact_bytes(p->pool, res.error_message, strlen(res.error_message), &clean_msg,
                         &clean_len))
            res.error_message = clean_msg ? clean_msg
                                          : "(message withheld: out of memory while redacting secrets)";
    }
    proc_call c;
    call_detach(p, &c);
    update_state(p->pool, 0);
    call_report(&c, &res);
    free(text);
    free(clean_msg);
    /* the process may have been given the next call by done() already */
    if (p->phase == PROC_SERVING && !p->has_call)
        update_state(p->pool, 1);
}

static void on_frame(sandbox_proc *p, const frame *f)
{
    char why[120];
    if (f->type == FRAME_LOG) {
        forward_log(p->pool, f->payload);
        return;
    }
    if (f->type == FRAME_REFUSED) {
        const char *code = json_string_value(json_object_get(f->payload, "error"));
        char clean[600];
        const char *msg = redact_text(p->pool, json_string_value(json_object_get(f->payload, "message")),
                                      clean, sizeof clean);
        char text[600];
        if (code && strcmp(code, "init_failed") == 0)
            snprintf(text, sizeof text, "plugin %s failed to initialize for connector %s: %s",
                     p->pool->plugin_path, p->pool->connector, msg ? msg : "(no message)");
        else
            snprintf(text, sizeof text, "%s", msg ? msg : code ? code : "plugin refused");
        if (p->phase == PROC_HELLO || p->phase == PROC_INIT) {
            pool_refuse(p->pool, p, text);
            return;
        }
    }
    switch (p->phase) {
    case PROC_HELLO:
        if (f->type == FRAME_HELLO) {
            on_hello(p, f);
            return;
        }
        break;
    case PROC_INIT:
        if (f->type == FRAME_READY) {
            cancel_timer(p, &p->timer);
            p->phase = PROC_SERVING;
            p->ready_at_ms = ar_mono_ms();
            p->startup_failures = 0;
            p->pool->ever_served = 1;
            update_state(p->pool, 1);
            return;
        }
        break;
    case PROC_SERVING:
        if (f->type == FRAME_RESULT) {
            on_result(p, f);
            return;
        }
        break;
    default:
        break;
    }
    snprintf(why, sizeof why, "unexpected frame type %d", (int)f->type);
    malformed(p, why);
}

static void on_io(loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void)loop;
    sandbox_proc *p = arg;
    unsigned gen = p->gen;
    uint8_t buf[READ_CHUNK];

    if (fd != p->fd)
        return; /* a stale wakeup */
    if ((events & EPOLLOUT) && p->out_off < p->out_len)
        channel_flush(p);
    for (int n = 0; n < READS_PER_EVENT; n++) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            proc_lost(p);
            return;
        }
        if (frame_decoder_feed(&p->dec, buf, (size_t)r) != AR_OK) {
            malformed(p, "out of memory buffering its frames");
            return;
        }
        for (;;) {
            frame f;
            ar_error err;
            int rc = frame_decoder_next(&p->dec, &f, &err);
            if (rc == AR_E_NOTFOUND)
                break;
            if (rc != AR_OK) {
                malformed(p, err.message);
                return;
            }
            on_frame(p, &f);
            frame_clear(&f);
            if (p->gen != gen)
                return; /* the channel was closed while handling it */
        }
    }
}

/* ---- spawning ---- */

static void proc_spawn(sandbox_proc *p)
{
    sandbox_pool *pool = p->pool;
    int sv[2] = {-1, -1}, child_fd = -1, err;
    char reason[400], max_frame[32];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, all;
    pid_t pid;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        snprintf(reason, sizeof reason, "cannot create a socketpair: %s", strerror(errno));
        goto fail;
    }
    /* dup2 onto itself would keep CLOEXEC: make sure the child end is not already fd 3 */
    child_fd = sv[1];
    if (child_fd == 3) {
        child_fd = fcntl(sv[1], F_DUPFD_CLOEXEC, 4);
        if (child_fd < 0) {
            snprintf(reason, sizeof reason, "cannot duplicate a descriptor: %s", strerror(errno));
            goto fail;
        }
    }
    snprintf(max_frame, sizeof max_frame, "%zu", pool->max_frame);
    char *argv[] = {pool->host_path, "--connector", pool->connector, "--plugin", pool->plugin_path,
                    "--max-frame", max_frame, NULL};
#ifdef AIORUN_SANITIZE
    /* LeakSanitizer's ptrace at exit does not work in the locked-down host */
    char *envp[] = {"ASAN_OPTIONS=detect_leaks=0", NULL};
#else
    char *envp[] = {NULL};
#endif
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, child_fd, 3);
    posix_spawnattr_init(&attr);
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    /* its own process group: a Ctrl-C meant for the daemon does not kill hosts mid-call */
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                        POSIX_SPAWN_SETPGROUP);
    err = posix_spawn(&pid, pool->host_path, &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (err != 0) {
        snprintf(reason, sizeof reason, "cannot start the sandbox host %s: %s", pool->host_path,
                 strerror(err));
        goto fail;
    }
    close(sv[1]);
    if (child_fd != sv[1])
        close(child_fd);
    sv[1] = child_fd = -1;

    p->pid = pid;
    p->pidfd = pidfd_open(pid, 0); /* -1 on old kernels: reaping falls back to polling */
    p->pidfd_watched = 0;
    p->reap_killed = 0;
    p->kill_reason[0] = '\0';
    p->fd = sv[0];
    p->ready_at_ms = 0;
    p->has_call = 0;
    frame_decoder_init(&p->dec, pool->max_frame);
    fcntl(p->fd, F_SETFL, fcntl(p->fd, F_GETFL) | O_NONBLOCK);
    p->phase = PROC_HELLO;
    if (loop_add_fd(pool->loop, p->fd, EPOLLIN | EPOLLRDHUP, on_io, p) != AR_OK) {
        snprintf(pool->last_death, sizeof pool->last_death, "cannot watch the plugin socket");
        proc_kill(p, AIORUN_E_PLUGIN_CRASHED, "cannot watch the plugin socket");
        return;
    }
    p->timer = loop_timer_add(pool->loop, ar_mono_ms() + STARTUP_TIMEOUT_MS, on_deadline, p);
    return;

fail:
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    if (child_fd >= 0 && child_fd != sv[1])
        close(child_fd);
    p->ready_at_ms = 0;
    proc_down(p, reason);
}

/* ---- public ---- */

/* Overwrite the secret values in place (jansson keeps each string in its own heap block), then
 * drop the object. */
static void wipe_secrets(json_t *secrets)
{
    const char *name;
    json_t *v;
    json_object_foreach(secrets, name, v) {
        if (json_is_string(v))
            explicit_bzero((char *)json_string_value(v), json_string_length(v));
    }
    json_decref(secrets);
}

int sandbox_pool_new(loop_t *loop, const sandbox_pool_opts *opts, sandbox_event_fn on_event,
                     void *event_arg, sandbox_pool **out, ar_error *err)
{
    *out = NULL;
    if (!loop || !opts || !opts->connector || !*opts->connector || !opts->plugin_path ||
        opts->plugin_path[0] != '/' || !opts->host_path || opts->host_path[0] != '/')
        return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                            "sandbox pool needs a connector name and absolute plugin and host paths");
    if (opts->processes < 1 || opts->processes > MAX_PROCESSES)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                            "connector %s: processes must be between 1 and %d", opts->connector,
                            MAX_PROCESSES);
    if (opts->config && !json_is_object(opts->config))
        return ar_error_set(err, AR_E_INVALID, "invalid_config",
                            "connector %s: config must be a JSON object", opts->connector);
    if (opts->secrets) {
        const char *name;
        json_t *v;
        if (!json_is_object(opts->secrets))
            return ar_error_set(err, AR_E_INVALID, "invalid_secrets",
                                "connector %s: secrets must be a JSON object", opts->connector);
        /* the name only: a value is never put in a message */
        json_object_foreach((json_t *)opts->secrets, name, v) {
            if (!json_is_string(v))
                return ar_error_set(err, AR_E_INVALID, "invalid_secrets",
                                    "connector %s: secret %s is not a string", opts->connector, name);
        }
    }
    if (access(opts->host_path, X_OK) != 0)
        return ar_error_set(err, AR_E_INVALID, "host_not_found",
                            "sandbox host %s is not executable: %s", opts->host_path, strerror(errno));

    sandbox_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
    pool->loop = loop;
    pool->connector = strdup(opts->connector);
    pool->plugin_path = strdup(opts->plugin_path);
    pool->host_path = strdup(opts->host_path);
    pool->config = opts->config ? json_deep_copy(opts->config) : json_object();
    pool->secrets = opts->secrets ? json_deep_copy(opts->secrets) : json_object();
    pool->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    pool->max_frame = opts->max_frame ? opts->max_frame : FRAME_DEFAULT_MAX_PAYLOAD;
    pool->on_event = on_event;
    pool->event_arg = event_arg;
    const char *secret_name;
    json_t *secret_value;
    json_object_foreach(pool->secrets, secret_name, secret_value) {
        if (json_string_length(secret_value) >= REDACT_MIN_LEN)
            pool->has_redactable = 1;
    }
    pool->n = opts->processes;
    pool->procs = calloc((size_t)pool->n, sizeof *pool->procs);
    pool->state = pool->notified_state = SANDBOX_STARTING;
    pthread_mutex_init(&pool->mu, NULL);
    if (!pool->connector || !pool->plugin_path || !pool->host_path || !pool->config ||
        !pool->secrets || !pool->procs) {
        sandbox_pool_free(pool);
        return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
    }
    for (int i = 0; i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        p->pool = pool;
        p->index = i;
        p->fd = -1;
        p->pidfd = -1;
        p->backoff_ms = BACKOFF_MIN_MS;
    }
    /* no events during construction: the owner does not have the pool yet */
    pool->quiet = 1;
    for (int i = 0; i < pool->n; i++)
        proc_spawn(&pool->procs[i]);
    pool->quiet = 0;
    *out = pool;
    return AR_OK;
}

/* Find an idle process. NULL when none. */
static sandbox_proc *idle_proc(sandbox_pool *pool)
{
    for (int k = 0; k < pool->n; k++) {
        sandbox_proc *c = &pool->procs[(pool->rr + k) % pool->n];
        if (c->phase == PROC_SERVING && !c->has_call && c->fd >= 0)
            return c;
    }
    return NULL;
}

/* Send an INVOKE or LOOKUP (payload: taken) to the idle process p and arm its deadline. */
static int dispatch(sandbox_proc *p, call_kind kind, frame_type type, json_t *payload,
                    const char *action_name, int timeout_ms, sandbox_done_fn done, void *arg)
{
    sandbox_pool *pool = p->pool;
    char *action = strdup(action_name);
    if (!payload || !action) {
        json_decref(payload);
        free(action);
        return AR_E_NOMEM;
    }
    uint64_t timer = loop_timer_add(pool->loop, ar_mono_ms() + timeout_ms + DEADLINE_GRACE_MS,
                                    on_deadline, p);
    if (!timer) {
        json_decref(payload);
        free(action);
        return AR_E_NOMEM;
    }
    uint32_t id = pool->next_request_id + 1;
    if (id == 0)
        id = 1;
    ar_error err;
    int rc = channel_send(p, type, id, payload, &err);
    json_decref(payload);
    if (rc != AR_OK) {
        loop_timer_cancel(pool->loop, timer);
        free(action);
        return rc == AR_E_NOMEM ? AR_E_NOMEM : AR_E_INVALID;
    }
    pool->rr = (p->index + 1) % pool->n;
    pool->next_request_id = id;
    p->has_call = 1;
    p->call = (proc_call){.done = done, .arg = arg, .request_id = id, .kind = kind,
                          .action = action, .timeout_ms = timeout_ms, .start_us = mono_us()};
    p->timer = timer;
    return AR_OK;
}

int sandbox_pool_invoke(sandbox_pool *pool, const sandbox_call *call, sandbox_done_fn done,
                        void *arg)
{
    if (!pool || pool->freeing || pool->state == SANDBOX_REFUSED)
        return AR_E_CLOSED;
    if (!call || !call->action)
        return AR_E_INVALID;
    sandbox_proc *p = idle_proc(pool);
    if (!p)
        return AR_E_BUSY;

    json_t *input;
    if (call->input_json) {
        json_error_t jerr;
        input = json_loadb(call->input_json, call->input_len, JSON_DECODE_ANY, &jerr);
        if (!input)
            return AR_E_INVALID;
    } else {
        input = json_object();
    }
    int timeout_ms = call->timeout_ms > 0 ? call->timeout_ms : pool->timeout_ms;
    json_t *payload = json_pack("{s:s, s:o, s:s, s:I, s:i}", "action", call->action, "input", input,
                                "idempotency_key", call->idempotency_key ? call->idempotency_key : "",
                                "deadline_ms", (json_int_t)(ar_now_ms() + timeout_ms),
                                "attempt", call->attempt);
    return dispatch(p, CALL_INVOKE, FRAME_INVOKE, payload, call->action, timeout_ms, done, arg);
}

int sandbox_pool_lookup(sandbox_pool *pool, const sandbox_call *call, sandbox_done_fn done,
                        void *arg)
{
    if (!pool || pool->freeing || pool->state == SANDBOX_REFUSED)
        return AR_E_CLOSED;
    if (!call || !call->action || !call->idempotency_key || !*call->idempotency_key)
        return AR_E_INVALID;
    /* The descriptor is read on this thread only after HELLO set it; the mutex guards it
     * against the snapshot's readers, not against us. */
    if (pool->descriptor && !json_is_true(json_object_get(pool->descriptor, "lookup")))
        return AR_E_INVALID;
    sandbox_proc *p = idle_proc(pool);
    if (!p)
        return AR_E_BUSY;
    int timeout_ms = call->timeout_ms > 0 ? call->timeout_ms : pool->timeout_ms;
    json_t *payload = json_pack("{s:s, s:s, s:I}", "action", call->action,
                                "idempotency_key", call->idempotency_key,
                                "deadline_ms", (json_int_t)(ar_now_ms() + timeout_ms));
    return dispatch(p, CALL_LOOKUP, FRAME_LOOKUP, payload, call->action, timeout_ms, done, arg);
}

void sandbox_pool_snapshot(sandbox_pool *pool, sandbox_snapshot *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&pool->mu);
    out->state = pool->state;
    snprintf(out->message, sizeof out->message, "%s", pool->message);
    /* a copy: the caller may keep or change it without touching ours */
    out->descriptor = pool->descriptor ? json_deep_copy(pool->descriptor) : NULL;
    out->processes = pool->n;
    out->serving = pool->serving;
    out->restarts = pool->restarts;
    pthread_mutex_unlock(&pool->mu);
}

/* Write SHUTDOWN as far as the socket takes it within the time left. */
static void send_shutdown(sandbox_proc *p, int64_t until_ms)
{
    if (channel_send(p, FRAME_SHUTDOWN, 0, NULL, NULL) != AR_OK)
        return;
    while (p->out_off < p->out_len && p->fd >= 0) {
        int64_t left = until_ms - ar_mono_ms();
        if (left <= 0)
            return;
        struct pollfd pfd = {.fd = p->fd, .events = POLLOUT};
        if (poll(&pfd, 1, (int)left) <= 0 || (pfd.revents & (POLLERR | POLLHUP)))
            return;
        channel_flush(p);
    }
}

void sandbox_pool_free(sandbox_pool *pool)
{
    if (!pool)
        return;
    pool->freeing = 1;
    int64_t until = ar_mono_ms() + FREE_WAIT_MS;
    for (int i = 0; pool->procs && i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        cancel_timer(p, &p->restart_timer);
        cancel_timer(p, &p->timer);
        cancel_timer(p, &p->reap_timer);
        if (p->fd >= 0)
            send_shutdown(p, until);
    }
    /* Wait for the exits (polling is fine: this happens once, at shutdown). */
    int status[MAX_PROCESSES] = {0}, known[MAX_PROCESSES] = {0};
    for (;;) {
        int alive = 0;
        for (int i = 0; pool->procs && i < pool->n; i++) {
            sandbox_proc *p = &pool->procs[i];
            if (p->pid <= 0)
                continue;
            pid_t r = waitpid(p->pid, &status[i], WNOHANG);
            if (r == p->pid || (r < 0 && errno != EINTR)) {
                known[i] = r == p->pid;
                p->pid = 0;
            } else {
                alive++;
            }
        }
        if (!alive || ar_mono_ms() >= until)
            break;
        struct timespec ts = {0, REAP_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; pool->procs && i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        if (p->pid <= 0)
            continue;
        kill(p->pid, SIGKILL);
        pid_t r;
        do
            r = waitpid(p->pid, &status[i], 0);
        while (r < 0 && errno == EINTR);
        known[i] = r == p->pid;
        p->pid = 0;
    }
    for (int i = 0; pool->procs && i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        channel_close(p);
        reap_stop(p);
        p->phase = PROC_DOWN;
        proc_call c;
        if (call_detach(p, &c)) {
            char how[128], msg[512];
            if (known[i])
                describe_status(status[i], how, sizeof how);
            else
                snprintf(how, sizeof how, "ended");
            snprintf(msg, sizeof msg, "connector %s was shut down while %s %s was running "
                     "(its process %s); the outcome is unknown", pool->connector,
                     call_kind_prefix(&c), c.action, how);
            call_report_error(&c, AIORUN_E_PLUGIN_CRASHED, msg);
        }
    }
    json_decref(pool->descriptor);
    json_decref(pool->config);
    wipe_secrets(pool->secrets);
    free(pool->procs);
    free(pool->connector);
    free(pool->plugin_path);
    free(pool->host_path);
    pthread_mutex_destroy(&pool->mu);
    free(pool);
}
