/* sandbox.c - the daemon's side of the plugin sandbox: a pool of host processes per connector
 * (see sandbox.h). Everything but sandbox_pool_snapshot runs on the loop thread. */
#include "sandbox.h"

#include <stdarg.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sodium.h>

#include "aiorun/plugin.h"
#include "frame.h"
#include "lockdown.h"
#include "schema.h"
#include "jsonw.h"

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
#define REDACTED "[REDACTED]"
/* Where a root daemon keeps plugin copies and working directories when none is configured. */
#define DEFAULT_RUNTIME_DIR "/run/aiorun"
#define MAX_PORTS 64
/* RLIMIT_NPROC of a connector's uid: its processes, a resolver thread or two each, and room */
#define NPROC_BASE 12
#define NPROC_PER_PROCESS 4
/* Nesting of a plugin's working directory that its removal follows. */
#define REMOVE_MAX_DEPTH 128
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
    int out_sensitive;          /* out holds secrets (INIT): wiped before it is freed */
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
    int recycle;                /* replace it once idle (sandbox_pool_recycle, CPU use) */
    char recycle_why[120];      /* "to pick up changed secrets", ... */
    int recycling;              /* being replaced: no new calls; others wait their turn */
    int given_secrets;          /* its INIT carried secrets: what it sends must be redacted */
} sandbox_proc;

struct sandbox_pool {
    loop_t *loop;
    char *connector, *plugin_path, *host_path;
    json_t *config;
    sandbox_secrets_fn secrets_fn;  /* NULL: no secrets */
    void *secrets_arg;
    char **argv;                /* the host's command line (owned, NULL-terminated) */
    char *run_plugin;           /* what the host loads: our private copy, or plugin_path */
    char *copy_path;            /* the private copy we made, NULL when none */
    char *pid_dir;              /* <runtime_dir>/<our pid>, NULL when not set up */
    char *workdir;              /* <pid_dir>/work/<connector>, NULL when not set up */
    int timeout_ms;
    size_t max_frame;
    int64_t cpu_recycle_s;      /* replace a process that used this much CPU */
    uint64_t cpu_timer;         /* the next look at the processes' CPU use */
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
static void recycle_next(sandbox_pool *pool);
static void on_cpu_check(loop_t *loop, void *arg);
static void on_io(loop_t *loop, int fd, uint32_t events, void *arg);
static void format_message(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

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

/* Drop the pending output, wiping it first when it holds secrets. */
static void out_free(sandbox_proc *p)
{
    if (p->out && p->out_sensitive)
        explicit_bzero(p->out, p->out_len);
    free(p->out);
    p->out = NULL;
    p->out_len = p->out_off = 0;
    p->out_sensitive = 0;
}

static void channel_close(sandbox_proc *p)
{
    if (p->fd >= 0) {
        loop_del_fd(p->pool->loop, p->fd);
        close(p->fd);
        p->fd = -1;
    }
    p->gen++;
    frame_decoder_fini(&p->dec);
    out_free(p);
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
    out_free(p);
    if (p->want_out) {
        loop_mod_fd(p->pool->loop, p->fd, EPOLLIN | EPOLLRDHUP);
        p->want_out = 0;
    }
}

/* Queue a frame and write what the socket takes. sensitive: the frame carries secrets, so
 * every buffer that held it is wiped before it is freed (no realloc, which could leave a copy
 * behind). */
static int channel_queue(sandbox_proc *p, uint8_t *buf, size_t len, int sensitive, ar_error *err)
{
    if (p->out_off == p->out_len) {
        out_free(p);
        p->out = buf;
        p->out_len = len;
        p->out_off = 0;
        p->out_sensitive = sensitive;
    } else if (sensitive || p->out_sensitive) {
        size_t pending = p->out_len - p->out_off;
        uint8_t *nb = malloc(pending + len);
        if (!nb) {
            if (sensitive)
                explicit_bzero(buf, len);
            free(buf);
            return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory queueing a frame");
        }
        memcpy(nb, p->out + p->out_off, pending);
        memcpy(nb + pending, buf, len);
        if (sensitive)
            explicit_bzero(buf, len);
        free(buf);
        out_free(p);
        p->out = nb;
        p->out_len = pending + len;
        p->out_sensitive = 1;
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

static int channel_send_ex(sandbox_proc *p, frame_type type, uint32_t id, const json_t *payload,
                           int sensitive, ar_error *err)
{
    uint8_t *buf;
    size_t len;
    int rc = frame_encode(type, id, payload, p->pool->max_frame, &buf, &len, err);
    if (rc != AR_OK)
        return rc;
    return channel_queue(p, buf, len, sensitive, err);
}

/* Send a frame whose payload text the caller wrote behind FRAME_HEADER_SIZE bytes of room in
 * text (emptied: its heap memory is taken or freed). */
static int channel_send_text(sandbox_proc *p, frame_type type, uint32_t id, jsonw_buf *text,
                             ar_error *err)
{
    int rc = frame_seal((uint8_t *)text->data, text->len, type, id, p->pool->max_frame, err);
    if (rc != AR_OK) {
        jsonw_buf_free(text);
        return rc;
    }
    uint8_t *buf = text->borrowed ? malloc(text->len) : (uint8_t *)text->data;
    size_t len = text->len;
    if (!buf)
        return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory for a frame of %zu bytes", len);
    if (text->borrowed)
        memcpy(buf, text->data, len);
    *text = (jsonw_buf){0};
    return channel_queue(p, buf, len, 0, err);
}

static int channel_send(sandbox_proc *p, frame_type type, uint32_t id, const json_t *payload,
                        ar_error *err)
{
    return channel_send_ex(p, type, id, payload, 0, err);
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

/* The values to look for in one frame: every secret of REDACT_MIN_LEN bytes or more, as raw
 * bytes and, where that differs, in the form JSON escaping gives it (a plugin may pass on JSON
 * text that quotes a secret). Asked from secrets_fn for each frame and wiped after it, so the
 * pool never keeps a value. */
typedef struct redact_pat {
    const char *s;
    size_t len;
    const char *next;           /* the next match at or after the scan position; NULL: none left */
    size_t next_from;           /* where next was searched from; (size_t)-1: not yet searched */
} redact_pat;

typedef struct redactor {
    vault_secrets secrets;
    redact_pat *pats;
    size_t n;
    char **escaped;             /* the JSON-escaped forms (malloc'd, wiped when done) */
    size_t *escaped_len;
    size_t n_escaped;
} redactor;

/* The JSON-escaped form of s (as jansson writes it inside quotes), or NULL when it needs no
 * escaping or memory ran out. */
static char *json_escaped(const unsigned char *s, size_t len, size_t *out_len)
{
    size_t need = 0;
    int differs = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            need += 2, differs = 1;
        else if (c < 0x20)
            need += 6, differs = 1;
        else
            need += 1;
    }
    if (!differs)
        return NULL;
    char *out = malloc(need + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default: break;
        }
        if (esc) {
            memcpy(out + o, esc, 2);
            o += 2;
        } else if (c < 0x20) {
            snprintf(out + o, 7, "\\u%04X", c);
            o += 6;
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

static void redactor_end(redactor *r)
{
    for (size_t i = 0; i < r->n_escaped; i++) {
        explicit_bzero(r->escaped[i], r->escaped_len[i]);
        free(r->escaped[i]);
    }
    free(r->escaped);
    free(r->escaped_len);
    free(r->pats);
    vault_secrets_free(&r->secrets);
    memset(r, 0, sizeof *r);
}

/* Fetch the secrets for one frame. AR_OK, or an error with why filled (a text that cannot be
 * checked must then be withheld). */
static int redactor_begin(const sandbox_pool *pool, redactor *r, char *why, size_t cap)
{
    memset(r, 0, sizeof *r);
    if (!pool->secrets_fn)
        return AR_OK;
    ar_error err;
    ar_error_clear(&err);
    if (pool->secrets_fn(pool->secrets_arg, pool->connector, &r->secrets, &err) != AR_OK) {
        format_message(why, cap, "%s", err.message[0] ? err.message : "the secrets cannot be read");
        redactor_end(r);
        return AR_E_FAIL;
    }
    size_t n = r->secrets.n;
    if (n == 0)
        return AR_OK;
    r->pats = calloc(2 * n, sizeof *r->pats);
    r->escaped = calloc(n, sizeof *r->escaped);
    r->escaped_len = calloc(n, sizeof *r->escaped_len);
    if (!r->pats || !r->escaped || !r->escaped_len)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const vault_secret *v = &r->secrets.items[i];
        if (v->len < REDACT_MIN_LEN)
            continue;
        r->pats[r->n++] = (redact_pat){.s = (const char *)v->value, .len = v->len};
        size_t elen = 0;
        char *e = json_escaped(v->value, v->len, &elen);
        if (e) {
            r->escaped[r->n_escaped] = e;
            r->escaped_len[r->n_escaped++] = elen;
            r->pats[r->n++] = (redact_pat){.s = e, .len = elen};
        }
    }
    return AR_OK;
nomem:
    snprintf(why, cap, "out of memory");
    redactor_end(r);
    return AR_E_NOMEM;
}

/* Copy [s, s+len) with every secret replaced. 0: nothing found (*out NULL); 1: *out is the
 * redacted copy (malloc'd, NUL-terminated, *out_len its length), or NULL when memory ran out
 * (the caller must then withhold the text). Each value's matches are searched for once per
 * text, so a large text with many matches costs one pass per value. */
static int redact_bytes(redactor *rd, const char *s, size_t len, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!rd || rd->n == 0 || !s)
        return 0;
    for (size_t k = 0; k < rd->n; k++)
        rd->pats[k].next_from = (size_t)-1;
    char *buf = NULL;
    size_t blen = 0, bcap = 0, i = 0;
    int found = 0;
    for (;;) {
        /* the earliest match at or after i; the longest one when several start there */
        const char *best = NULL;
        size_t best_len = 0;
        for (size_t k = 0; k < rd->n; k++) {
            redact_pat *pt = &rd->pats[k];
            if (pt->next_from == (size_t)-1 || (pt->next && pt->next < s + i)) {
                pt->next = pt->len <= len - i ? memmem(s + i, len - i, pt->s, pt->len) : NULL;
                pt->next_from = i;
            }
            const char *m = pt->next;
            if (m && (!best || m < best || (m == best && pt->len > best_len))) {
                best = m;
                best_len = pt->len;
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
static const char *redact_text(redactor *rd, const char *s, char *buf, size_t cap)
{
    char *r;
    size_t n;
    if (!s || !redact_bytes(rd, s, strlen(s), &r, &n))
        return s;
    snprintf(buf, cap, "%s", r ? r : "(text withheld: out of memory while redacting secrets)");
    free(r);
    return buf;
}

/* Redact every string and key of v in place. AR_OK or AR_E_NOMEM. */
static int redact_json(redactor *rd, json_t *v)
{
    char *r;
    size_t n;
    if (!rd || rd->n == 0)
        return AR_OK;
    if (json_is_string(v)) {
        if (!redact_bytes(rd, json_string_value(v), json_string_length(v), &r, &n))
            return AR_OK;
        int rc = r && json_string_setn_nocheck(v, r, n) == 0 ? AR_OK : AR_E_NOMEM;
        free(r);
        return rc;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (redact_json(rd, e) != AR_OK)
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
        if (redact_json(rd, e) != AR_OK)
            goto nomem;
        if (!redact_bytes(rd, key, strlen(key), &r, &n))
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

/* The secrets to redact from what process p sends. A process can only quote secrets it was
 * given: one whose INIT carried none (most connectors have none) has nothing to redact, so
 * nothing is read from the vault for it. (Changed secrets reach a process only by replacing it,
 * whose new INIT sets given_secrets again.) */
static int redactor_begin_for(const sandbox_proc *p, redactor *r, char *why, size_t cap)
{
    if (!p->given_secrets) {
        memset(r, 0, sizeof *r);
        return AR_OK;
    }
    return redactor_begin(p->pool, r, why, cap);
}

/* A plugin text with the secrets redacted, into buf (cap bytes), fetching the secrets for it.
 * When they cannot be fetched the text is withheld and a note says why. */
static const char *redact_frame_text(const sandbox_pool *pool, const char *s, char *buf, size_t cap)
{
    redactor rd;
    char why[300];
    if (!s)
        return s;
    if (redactor_begin(pool, &rd, why, sizeof why) != AR_OK) {
        snprintf(buf, cap, "(text withheld: the secrets to redact from it could not be read: %s)", why);
        return buf;
    }
    const char *out = redact_text(&rd, s, buf, cap);
    redactor_end(&rd);
    return out;
}

/* ---- what a call cost ---- */

static int valid_cost_unit(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 16)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return 0;
    return 1;
}

/* The "cost" of a RESULT (borrowed from the frame) when it is well-formed (see sandbox.h),
 * else NULL. An unusable cost is logged naming the connector and dropped: what a call cost
 * never changes its outcome. A unit name holding a secret value is refused like a malformed
 * one, and so is every cost when the secrets could not be read (rd NULL). Units are named in
 * messages by position only, since a refused name may hold anything. */
static const json_t *checked_cost(const sandbox_pool *pool, redactor *rd, const json_t *cost)
{
    char why[160];
    if (!cost || (json_is_object(cost) && json_object_size(cost) == 0))
        return NULL;
    if (!json_is_object(cost) || json_object_size(cost) > SANDBOX_COST_MAX_UNITS) {
        snprintf(why, sizeof why, "it is not an object of at most %d units", SANDBOX_COST_MAX_UNITS);
        goto drop;
    }
    const char *unit;
    json_t *v;
    size_t i = 0;
    json_object_foreach((json_t *)cost, unit, v) {
        i++;
        double amount = json_number_value(v);
        char *clean = NULL;
        size_t clean_len;
        if (!valid_cost_unit(unit)) {
            snprintf(why, sizeof why, "unit #%zu is not 1 to 16 characters of [A-Za-z0-9_]", i);
            goto drop;
        }
        if (!json_is_number(v) || !isfinite(amount) || amount < 0) {
            snprintf(why, sizeof why, "the amount of unit #%zu is not a finite number >= 0", i);
            goto drop;
        }
        if (!rd || redact_bytes(rd, unit, strlen(unit), &clean, &clean_len)) {
            free(clean);
            snprintf(why, sizeof why, "unit #%zu %s", i, rd ? "contains a secret value"
                                                          : "could not be checked for secrets");
            goto drop;
        }
    }
    return cost;
drop:
    ar_log("warn", "connector %s: the cost the plugin reported was ignored: %s", pool->connector, why);
    return NULL;
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

/* What a death by signal means in the sandbox, for the message; NULL when there is nothing to
 * add. (A SIGKILL of ours for a deadline is reported as a timeout before the reap.) */
static const char *death_cause(int status)
{
    if (!WIFSIGNALED(status))
        return NULL;
    switch (WTERMSIG(status)) {
    case SIGSYS: return "killed by the seccomp filter (syscall not allowed)";
    case SIGXCPU: return "the CPU time limit (RLIMIT_CPU) was reached";
    case SIGKILL: return "killed with SIGKILL (the hard CPU time limit, the kernel's out-of-memory "
                         "killer, or an operator)";
    case SIGSEGV: return "it crashed (an invalid memory access; also how running out of memory "
                         "under the address-space limit often ends)";
    case SIGABRT: return "it aborted (often out of memory under the address-space limit, or a "
                         "failed assertion)";
    case SIGBUS:
    case SIGILL:
    case SIGFPE: return "it crashed";
    default: return NULL;
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
    if (p->recycling) /* asked to go: not a failure */
        p->backoff_ms = BACKOFF_MIN_MS / 2;
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
    const char *cause = NULL;
    if (known) {
        describe_status(status, how, sizeof how);
        cause = death_cause(status);
    } else {
        snprintf(how, sizeof how, "ended (exit status unavailable)");
    }
    proc_call c = {0};
    int had_call = call_detach(p, &c);
    if (had_call) {
        format_message(reason, sizeof reason, "plugin process for connector %s %s during %s %s%s%s",
                       pool->connector, how, call_kind_prefix(&c), c.action, cause ? ": " : "",
                       cause ? cause : "");
    } else if (p->kill_reason[0]) {
        snprintf(reason, sizeof reason, "%s", p->kill_reason);
    } else if (!p->ready_at_ms) {
        format_message(reason, sizeof reason, "plugin process for connector %s %s before it was ready%s%s",
                       pool->connector, how, cause ? ": " : "", cause ? cause : "");
    } else {
        format_message(reason, sizeof reason, "plugin process for connector %s %s%s%s", pool->connector,
                       how, cause ? ": " : "", cause ? cause : "");
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
    proc_call c = {0};
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
    char msg[600], clean[400];
    /* a parser's message may quote the bytes it choked on */
    why = redact_frame_text(p->pool, why, clean, sizeof clean);
    format_message(msg, sizeof msg, "plugin sent a malformed reply: %s (connector %s)", why,
                   p->pool->connector);
    proc_kill(p, AIORUN_E_PLUGIN_CRASHED, msg);
}

/* Log a plugin's line, secrets redacted, as component "plugin:<connector>" (ar_log keeps it one
 * line: control characters escaped). */
static void forward_log(sandbox_pool *pool, const json_t *payload)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    const char *level = "info";
    const char *want = json_string_value(json_object_get(payload, "level"));
    for (size_t i = 0; want && i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(want, levels[i]) == 0)
            level = levels[i];
    char clean[LOG_LINE_MAX];
    const char *msg = redact_frame_text(pool, json_string_value(json_object_get(payload, "message")),
                                        clean, sizeof clean);
    char component[80];
    snprintf(component, sizeof component, "plugin:%s", pool->connector);
    ar_log_as(level, component, NULL, "%s", msg ? msg : "");
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

/* Wipe the values of an INIT "secrets" object in place (jansson keeps each string in its own
 * heap block), then drop it. */
static void wipe_secrets_json(json_t *secrets)
{
    const char *name;
    json_t *v;
    json_object_foreach(secrets, name, v) {
        json_t *str = json_is_object(v) ? json_object_get(v, "base64") : v;
        if (json_is_string(str))
            explicit_bzero((char *)json_string_value(str), json_string_length(str));
    }
    json_decref(secrets);
}

/* INIT's "secrets": name -> the value as a string when it is UTF-8, else {"base64": text}.
 * NULL when out of memory. */
static json_t *secrets_json(const vault_secrets *vs)
{
    json_t *out = json_object();
    for (size_t i = 0; out && i < vs->n; i++) {
        const vault_secret *v = &vs->items[i];
        json_t *val = json_stringn((const char *)v->value, v->len);
        if (!val) {
            size_t cap = sodium_base64_encoded_len(v->len, sodium_base64_VARIANT_ORIGINAL);
            char *b64 = malloc(cap);
            if (b64) {
                sodium_bin2base64(b64, cap, v->value, v->len, sodium_base64_VARIANT_ORIGINAL);
                json_t *str = json_string(b64);
                explicit_bzero(b64, cap);
                free(b64);
                if (str) /* "o" steals str, also when packing fails */
                    val = json_pack("{s:o}", "base64", str);
            }
        }
        /* set_new takes val, also when it fails (only out of memory) */
        if (!val || json_object_set_new(out, v->name, val) != 0) {
            wipe_secrets_json(out);
            return NULL;
        }
    }
    return out;
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
    /* the secrets for this process only: asked for now, sent, wiped */
    vault_secrets vs = {0};
    json_t *secrets = NULL, *init = NULL;
    char msg[600];
    if (pool->secrets_fn) {
        ar_error_clear(&err);
        if (pool->secrets_fn(pool->secrets_arg, pool->connector, &vs, &err) != AR_OK) {
            vault_secrets_free(&vs);
            format_message(msg, sizeof msg, "cannot start a plugin process for connector %s: its "
                           "secrets cannot be read: %s", pool->connector,
                           err.message[0] ? err.message : "(no reason given)");
            proc_kill(p, AIORUN_E_PLUGIN_CRASHED, msg);
            return;
        }
    }
    p->given_secrets = vs.n > 0;
    if (!(secrets = secrets_json(&vs)))
        goto nomem;
    init = json_pack("{s:s, s:O, s:O, s:I}", "connector", pool->connector, "config", pool->config,
                     "secrets", secrets, "deadline_ms", (json_int_t)(ar_now_ms() + INIT_DEADLINE_MS));
    if (!init || channel_send_ex(p, FRAME_INIT, 0, init, 1, &err) != AR_OK)
        goto nomem;
    json_decref(init);
    wipe_secrets_json(secrets);
    vault_secrets_free(&vs);
    p->phase = PROC_INIT;
    return;
nomem:
    json_decref(init);
    wipe_secrets_json(secrets);
    vault_secrets_free(&vs);
    proc_kill(p, AIORUN_E_PLUGIN_CRASHED, "cannot send INIT to the plugin process");
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
    redactor rd;
    char rwhy[300], withheld[400];
    int can_redact = redactor_begin_for(p, &rd, rwhy, sizeof rwhy) == AR_OK;
    res.cost = checked_cost(p->pool, can_redact ? &rd : NULL, json_object_get(f->payload, "cost"));
    if (json_is_true(ok)) {
        json_t *r = json_object_get(f->payload, "result");
        if (!can_redact) {
            res.error_class = AIORUN_E_PERMANENT;
            format_message(withheld, sizeof withheld, "the plugin's result was withheld: the secrets "
                           "to redact from it could not be read: %s", rwhy);
            res.error_message = withheld;
        } else if (r && redact_json(&rd, r) != AR_OK) {
            res.error_class = AIORUN_E_PERMANENT;
            res.error_message = "the plugin's result could not be checked for secrets (out of "
                                "memory) and was withheld";
        } else {
            text = jsonw_dumps(r ? r : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
            if (!text) {
                redactor_end(&rd);
                malformed(p, "RESULT whose result cannot be encoded");
                return;
            }
            res.ok = 1;
            res.result_json = text;
            res.result_len = strlen(text);
            res.result = r ? r : json_null();
        }
    } else {
        int cls = frame_class_from_name(json_string_value(json_object_get(f->payload, "class")));
        const char *msg = json_string_value(json_object_get(f->payload, "message"));
        if (cls < 0) {
            redactor_end(&rd);
            malformed(p, "RESULT with an unknown error class");
            return;
        }
        res.error_class = cls;
        res.error_message = msg ? msg : "";
        if (!can_redact) {
            format_message(withheld, sizeof withheld, "(message withheld: the secrets to redact "
                           "from it could not be read: %s)", rwhy);
            res.error_message = withheld;
        } else if (redact_bytes(&rd, res.error_message, strlen(res.error_message), &clean_msg,
                                &clean_len)) {
            res.error_message = clean_msg ? clean_msg
                                          : "(message withheld: out of memory while redacting secrets)";
        }
    }
    redactor_end(&rd);
    proc_call c = {0};
    call_detach(p, &c);
    update_state(p->pool, 0);
    call_report(&c, &res);
    free(text);
    free(clean_msg);
    /* the process may have been given the next call by done() already */
    if (p->phase == PROC_SERVING && !p->has_call)
        update_state(p->pool, 1);
    recycle_next(p->pool);
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
        const char *msg = redact_frame_text(p->pool,
                                            json_string_value(json_object_get(f->payload, "message")),
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
            p->recycling = 0;
            update_state(p->pool, 1);
            recycle_next(p->pool);
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
    char reason[400];
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
    /* an empty environment: the host inherits nothing of ours (in sanitizer builds it turns
     * leak detection off itself, see host_main.c) */
    char *envp[] = {NULL};
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
    err = posix_spawn(&pid, pool->host_path, &fa, &attr, pool->argv, envp);
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

/* ---- the runtime directory: plugin copy and working directory ---- */

/* Make sure path is a directory of ours (created with mode when missing; never a symlink),
 * with at most mode's permissions for group and others writable bits (none). AR_OK, or an
 * error naming the path. */
static int ensure_dir(const char *path, mode_t mode, ar_error *err)
{
    struct stat st;
    if (mkdir(path, mode) == 0) {
        /* whatever the umask took away */
        if (chmod(path, mode) != 0)
            return ar_error_set(err, AR_E_IO, "runtime_dir", "chmod %s: %s", path, strerror(errno));
        return AR_OK;
    }
    if (errno != EEXIST)
        return ar_error_set(err, AR_E_IO, "runtime_dir", "cannot create %s: %s", path, strerror(errno));
    if (lstat(path, &st) != 0)
        return ar_error_set(err, AR_E_IO, "runtime_dir", "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return ar_error_set(err, AR_E_INVALID, "runtime_dir", "%s is not a directory", path);
    if (st.st_uid != geteuid())
        return ar_error_set(err, AR_E_INVALID, "runtime_dir", "%s is owned by uid %u, not by us (uid %u)",
                            path, (unsigned)st.st_uid, (unsigned)geteuid());
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return ar_error_set(err, AR_E_INVALID, "runtime_dir",
                            "%s is writable by group or others (mode %04o): anyone could swap the "
                            "files in it; chmod 755 it", path, (unsigned)(st.st_mode & 07777));
    return AR_OK;
}

/* Remove name (in dirfd) and, for a directory, everything beneath it, without following
 * symlinks. Best effort: what cannot be removed stays. */
static void remove_tree_at(int parent, const char *name, int depth)
{
    if (unlinkat(parent, name, 0) == 0 || errno == ENOENT)
        return;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == EACCES && fchmodat(parent, name, 0700, 0) == 0)
        fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    if (depth < REMOVE_MAX_DEPTH) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            remove_tree_at(dirfd(d), e->d_name, depth + 1);
        }
    }
    closedir(d);
    unlinkat(parent, name, AT_REMOVEDIR);
}

static void remove_tree(const char *path)
{
    remove_tree_at(AT_FDCWD, path, 0);
}

/* Copy the plugin to dst (via a temporary name, then rename): mode 0444, ours. */
static int copy_plugin(const char *src, const char *dst, ar_error *err)
{
    char tmp[4200];
    char buf[65536];
    int in = -1, out = -1, rc = AR_OK;
    struct stat st;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", dst) >= sizeof tmp)
        return ar_error_set(err, AR_E_INVALID, "runtime_dir", "path too long: %s", dst);
    if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0 || fstat(in, &st) != 0) {
        rc = ar_error_set(err, AR_E_INVALID, "plugin_not_found", "cannot read plugin %s: %s", src,
                          strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ar_error_set(err, AR_E_INVALID, "plugin_not_found", "plugin %s is not a regular file", src);
        goto done;
    }
    unlink(tmp);
    if ((out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444)) < 0) {
        rc = ar_error_set(err, AR_E_IO, "runtime_dir", "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = ar_error_set(err, AR_E_IO, "plugin_not_found", "reading plugin %s: %s", src,
                              strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(out, buf + off, (size_t)(r - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = ar_error_set(err, AR_E_IO, "runtime_dir", "writing %s: %s", tmp, strerror(errno));
                goto done;
            }
            off += w;
        }
    }
    if (fchmod(out, 0444) != 0 || close(out) != 0) {
        out = -1;
        rc = ar_error_set(err, AR_E_IO, "runtime_dir", "writing %s: %s", tmp, strerror(errno));
        goto done;
    }
    out = -1;
    if (rename(tmp, dst) != 0)
        rc = ar_error_set(err, AR_E_IO, "runtime_dir", "rename %s: %s", tmp, strerror(errno));
done:
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (rc != AR_OK)
        unlink(tmp);
    return rc;
}

/* The runtime directory to use: as root the configured one (default /run/aiorun), created
 * 0755. Not as root: the configured one if we can use it, else $TMPDIR/aiorun-<uid> (0700). */
static int pick_runtime_dir(const char *configured, int root, char *out, size_t cap, ar_error *err)
{
    const char *want = configured ? configured : DEFAULT_RUNTIME_DIR;
    if (want[0] != '/')
        return ar_error_set(err, AR_E_INVALID, "runtime_dir", "runtime_dir %s is not absolute", want);
    int rc = ensure_dir(want, 0755, err);
    if (rc == AR_OK && (root || access(want, W_OK | X_OK) == 0)) {
        snprintf(out, cap, "%s", want);
        return AR_OK;
    }
    if (root)
        return rc;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || tmp[0] != '/')
        tmp = "/tmp";
    if ((size_t)snprintf(out, cap, "%s/aiorun-%u", tmp, (unsigned)geteuid()) >= cap)
        return ar_error_set(err, AR_E_INVALID, "runtime_dir", "TMPDIR is too long");
    return ensure_dir(out, 0700, err);
}

/* Remove what daemons that are gone left in the runtime directory (a <pid> directory whose
 * process no longer exists: killed before it could clean up). A live process of that pid, of
 * whatever user, keeps its directory. */
static void sweep_stale(const char *rt)
{
    DIR *d = opendir(rt);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        errno = 0;
        long pid = strtol(e->d_name, &end, 10);
        if (errno || *end || end == e->d_name || pid <= 0 || pid == (long)getpid() ||
            e->d_name[0] == '0')
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode) ||
            st.st_uid != geteuid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        remove_tree_at(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

static char *path_join(const char *a, const char *b)
{
    char *out;
    return asprintf(&out, "%s/%s", a, b) < 0 ? NULL : out;
}

/* Set up <runtime>/<pid>/work/<connector> (and the plugin copy when the host will run as
 * another uid). */
static int runtime_setup(sandbox_pool *pool, const sandbox_lockdown *ld, int drop_uid, ar_error *err)
{
    char rt[4096], pid[32];
    char *work_parent = NULL, *copy = NULL;
    int rc = pick_runtime_dir(ld->runtime_dir, geteuid() == 0, rt, sizeof rt, err);
    if (rc != AR_OK)
        return rc;
    sweep_stale(rt);
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    if (!(pool->pid_dir = path_join(rt, pid)) || !(work_parent = path_join(pool->pid_dir, "work")) ||
        !(pool->workdir = path_join(work_parent, pool->connector)))
        goto nomem;
    if (drop_uid) {
        struct stat st;
        if (stat(rt, &st) != 0 || (st.st_mode & 0005) != 0005) {
            rc = ar_error_set(err, AR_E_INVALID, "runtime_dir", "runtime_dir %s must be readable and "
                              "searchable by the connector's uid (mode 0755)", rt);
            goto done;
        }
    }
    if ((rc = ensure_dir(pool->pid_dir, 0755, err)) != AR_OK ||
        (rc = ensure_dir(work_parent, 0755, err)) != AR_OK)
        goto done;
    /* a stale one (a daemon of the same pid before us) goes: the plugin starts empty */
    remove_tree(pool->workdir);
    if (mkdir(pool->workdir, 0700) != 0 || chmod(pool->workdir, 0700) != 0 ||
        (drop_uid && chown(pool->workdir, ld->uid, ld->gid ? ld->gid : ld->uid) != 0)) {
        rc = ar_error_set(err, AR_E_IO, "runtime_dir", "cannot create the working directory %s: %s",
                          pool->workdir, strerror(errno));
        goto done;
    }
    if (drop_uid) {
        if (asprintf(&copy, "%s/%s.so", pool->pid_dir, pool->connector) < 0) {
            copy = NULL;
            goto nomem;
        }
        if ((rc = copy_plugin(pool->plugin_path, copy, err)) != AR_OK)
            goto done;
        pool->copy_path = copy;
        copy = NULL;
    }
    rc = AR_OK;
    goto done;
nomem:
    rc = ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
done:
    free(copy);
    free(work_parent);
    return rc;
}

/* Remove what runtime_setup made: the working directory with whatever the plugin left in it,
 * the copy, and the shared parents once they are empty. */
static void runtime_cleanup(sandbox_pool *pool)
{
    if (pool->workdir)
        remove_tree(pool->workdir);
    if (pool->copy_path)
        unlink(pool->copy_path);
    if (pool->pid_dir) {
        char *work_parent = path_join(pool->pid_dir, "work");
        if (work_parent)
            rmdir(work_parent); /* fails while another pool of ours still uses it: fine */
        free(work_parent);
        rmdir(pool->pid_dir);
    }
    free(pool->workdir);
    free(pool->copy_path);
    free(pool->pid_dir);
    pool->workdir = pool->copy_path = pool->pid_dir = NULL;
}

/* The host's command line (lockdown.h's steps, host_main.c's options). */
static int build_argv(sandbox_pool *pool, const sandbox_lockdown *ld, int root, int drop_uid)
{
    size_t cap = 24 + 2 * ld->n_ports, n = 0;
    char **argv = calloc(cap, sizeof *argv);
    if (!argv)
        return AR_E_NOMEM;
    pool->argv = argv;
#define ARG(expr)                            \
    do {                                     \
        if (!(argv[n++] = (expr)))           \
            return AR_E_NOMEM;               \
    } while (0)
#define ARGF(...)                                        \
    do {                                                 \
        char *a_;                                        \
        if (asprintf(&a_, __VA_ARGS__) < 0)              \
            return AR_E_NOMEM;                           \
        argv[n++] = a_;                                  \
    } while (0)
    ARG(strdup(pool->host_path));
    ARG(strdup("--connector"));
    ARG(strdup(pool->connector));
    ARG(strdup("--plugin"));
    ARG(strdup(pool->run_plugin));
    ARG(strdup("--plugin-name"));
    ARG(strdup(pool->plugin_path));
    ARG(strdup("--max-frame"));
    ARGF("%zu", pool->max_frame);
    if (pool->workdir) {
        ARG(strdup("--workdir"));
        ARG(strdup(pool->workdir));
    }
    if (drop_uid) {
        ARG(strdup("--uid"));
        ARGF("%u", ld->uid);
        ARG(strdup("--gid"));
        ARGF("%u", ld->gid ? ld->gid : ld->uid);
        /* RLIMIT_NPROC counts every process and thread of the uid: all of ours share it */
        ARG(strdup("--nproc"));
        ARGF("%d", NPROC_BASE + NPROC_PER_PROCESS * pool->n);
    }
    for (size_t i = 0; i < ld->n_ports; i++) {
        ARG(strdup("--port"));
        ARGF("%d", ld->ports[i]);
    }
    if (ld->no_rlimits)
        ARG(strdup("--no-rlimits"));
    /* as root without a uid of its own the host stays root: say "off", not "shared" */
    if (ld->no_uid || (root && !drop_uid))
        ARG(strdup("--no-uid"));
    if (ld->no_landlock)
        ARG(strdup("--no-landlock"));
    if (ld->no_seccomp)
        ARG(strdup("--no-seccomp"));
#undef ARG
#undef ARGF
    return AR_OK;
}

static void free_argv(char **argv)
{
    for (size_t i = 0; argv && argv[i]; i++)
        free(argv[i]);
    free(argv);
}

/* A connector name is also a file name in the runtime directory. */
static int valid_connector_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128 || s[0] == '.')
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return 0;
    return 1;
}

/* ---- public ---- */
int sandbox_pool_new(loop_t *loop, const sandbox_pool_opts *opts, sandbox_event_fn on_event,
                     void *event_arg, sandbox_pool **out, ar_error *err)
{
    *out = NULL;
    if (!loop || !opts || !opts->connector || !*opts->connector || !opts->plugin_path ||
        opts->plugin_path[0] != '/' || !opts->host_path || opts->host_path[0] != '/')
        return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                            "sandbox pool needs a connector name and absolute plugin and host paths");
    if (!valid_connector_name(opts->connector))
        return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                            "connector name %s cannot name a file (use [A-Za-z0-9_.-], at most "
                            "128, not starting with a dot)", opts->connector);
    if (opts->processes < 1 || opts->processes > MAX_PROCESSES)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                            "connector %s: processes must be between 1 and %d", opts->connector,
                            MAX_PROCESSES);
    if (opts->config && !json_is_object(opts->config))
        return ar_error_set(err, AR_E_INVALID, "invalid_config",
                            "connector %s: config must be a JSON object", opts->connector);
    const sandbox_lockdown *ld = &opts->lockdown;
    if (ld->n_ports > MAX_PORTS || (ld->n_ports > 0 && !ld->ports))
        return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                            "connector %s: at most %d ports", opts->connector, MAX_PORTS);
    for (size_t i = 0; i < ld->n_ports; i++)
        if (ld->ports[i] < 1 || ld->ports[i] > 65535)
            return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                                "connector %s: port %d is not between 1 and 65535", opts->connector,
                                ld->ports[i]);
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
    pool->secrets_fn = opts->secrets_fn;
    pool->secrets_arg = opts->secrets_arg;
    pool->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    pool->max_frame = opts->max_frame ? opts->max_frame : FRAME_DEFAULT_MAX_PAYLOAD;
    pool->cpu_recycle_s = opts->cpu_recycle_s > 0 ? opts->cpu_recycle_s : LOCKDOWN_RLIMIT_CPU_S / 4 * 3;
    pool->on_event = on_event;
    pool->event_arg = event_arg;
    pool->n = opts->processes;
    pool->procs = calloc((size_t)pool->n, sizeof *pool->procs);
    pool->state = pool->notified_state = SANDBOX_STARTING;
    pthread_mutex_init(&pool->mu, NULL);
    for (int i = 0; pool->procs && i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        p->pool = pool;
        p->index = i;
        p->fd = -1;
        p->pidfd = -1;
        p->backoff_ms = BACKOFF_MIN_MS;
    }
    if (!pool->connector || !pool->plugin_path || !pool->host_path || !pool->config || !pool->procs) {
        sandbox_pool_free(pool);
        return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
    }
    /* As root, the host switches to the connector's uid: it gets a root-owned copy of the
     * plugin it can read (which nobody can swap after this point) and a working directory it
     * owns. Otherwise it shares our uid and loads the plugin where it is. */
    int root = geteuid() == 0;
    int drop_uid = root && !ld->no_uid && ld->uid != 0;
    int rc = runtime_setup(pool, ld, drop_uid, err);
    if (rc == AR_OK) {
        pool->run_plugin = strdup(pool->copy_path ? pool->copy_path : pool->plugin_path);
        rc = pool->run_plugin ? build_argv(pool, ld, root, drop_uid) : AR_E_NOMEM;
        if (rc != AR_OK)
            ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
    }
    if (rc != AR_OK) {
        sandbox_pool_free(pool);
        return rc;
    }
    /* no events during construction: the owner does not have the pool yet */
    pool->quiet = 1;
    for (int i = 0; i < pool->n; i++)
        proc_spawn(&pool->procs[i]);
    pool->quiet = 0;
    on_cpu_check(loop, pool); /* arms the periodic look */
    *out = pool;
    return AR_OK;
}

/* Find an idle process. NULL when none. */
static sandbox_proc *idle_proc(sandbox_pool *pool)
{
    for (int k = 0; k < pool->n; k++) {
        sandbox_proc *c = &pool->procs[(pool->rr + k) % pool->n];
        if (c->phase == PROC_SERVING && !c->has_call && c->fd >= 0 && !c->recycling)
            return c;
    }
    return NULL;
}

/* Replace the next process marked for it, if it is idle and no other is being replaced: it
 * is asked to shut down, and its restart fetches the secrets anew. */
static void recycle_next(sandbox_pool *pool)
{
    if (pool->freeing)
        return;
    for (int i = 0; i < pool->n; i++)
        if (pool->procs[i].recycling)
            return;
    for (int i = 0; i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        if (!p->recycle || p->phase != PROC_SERVING || p->has_call || p->fd < 0)
            continue;
        p->recycle = 0;
        p->recycling = 1;
        format_message(p->kill_reason, sizeof p->kill_reason, "plugin process for connector %s "
                       "replaced %s", pool->connector, p->recycle_why);
        if (channel_send(p, FRAME_SHUTDOWN, 0, NULL, NULL) != AR_OK)
            proc_kill(p, AIORUN_E_PLUGIN_CRASHED, p->kill_reason);
        return;
    }
}

int sandbox_pool_recycle(sandbox_pool *pool)
{
    if (pool->state == SANDBOX_REFUSED)
        return AR_E_CLOSED;
    for (int i = 0; i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        /* A process down or starting fetches the secrets when it (re)starts; one that got
         * them already (INIT sent) is replaced like a serving one. */
        if (p->phase == PROC_SERVING || p->phase == PROC_INIT) {
            p->recycle = 1;
            snprintf(p->recycle_why, sizeof p->recycle_why, "to pick up changed secrets");
        }
    }
    recycle_next(pool);
    return AR_OK;
}

/* CPU seconds (user + system) a process has used, from /proc/<pid>/stat; -1 when unknown. */
static double proc_cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* After the command name (in parentheses, which may hold spaces): field 3 on; utime and
     * stime are fields 14 and 15. */
    const char *p = strrchr(buf, ')');
    unsigned long long utime, stime;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    long ticks = sysconf(_SC_CLK_TCK);
    return ticks > 0 ? (double)(utime + stime) / (double)ticks : -1;
}

/* Planned replacement: RLIMIT_CPU counts a process's whole life, so a long-lived host would
 * one day be killed by it in the middle of a call; replace it, idle, long before. */
static void on_cpu_check(loop_t *loop, void *arg)
{
    sandbox_pool *pool = arg;
    pool->cpu_timer = 0;
    if (pool->freeing)
        return;
    for (int i = 0; i < pool->n; i++) {
        sandbox_proc *p = &pool->procs[i];
        if (p->phase != PROC_SERVING || p->recycle || p->recycling || p->pid <= 0)
            continue;
        double used = proc_cpu_seconds(p->pid);
        if (used >= (double)pool->cpu_recycle_s) {
            p->recycle = 1;
            snprintf(p->recycle_why, sizeof p->recycle_why, "as planned after %.0f s of CPU time (its limit is "
                     "%d s)", used, LOCKDOWN_RLIMIT_CPU_S);
        }
    }
    recycle_next(pool);
    int64_t every = pool->cpu_recycle_s * 1000 / 4;
    pool->cpu_timer = loop_timer_add(loop, ar_mono_ms() + (every < 60000 ? every : 60000), on_cpu_check, pool);
}

/* Send an INVOKE or LOOKUP to the idle process p and arm its deadline. Its payload is either
 * payload (taken) or, when payload is NULL, the text written behind a header's room in text
 * (emptied, as channel_send_text; NULL text: out of memory building the payload). */
static int dispatch(sandbox_proc *p, call_kind kind, frame_type type, json_t *payload,
                    jsonw_buf *text, const char *action_name, int timeout_ms, sandbox_done_fn done,
                    void *arg)
{
    sandbox_pool *pool = p->pool;
    char *action = strdup(action_name);
    if ((!payload && !text) || !action) {
        json_decref(payload);
        if (text)
            jsonw_buf_free(text);
        free(action);
        return AR_E_NOMEM;
    }
    uint64_t timer = loop_timer_add(pool->loop, ar_mono_ms() + timeout_ms + DEADLINE_GRACE_MS,
                                    on_deadline, p);
    if (!timer) {
        json_decref(payload);
        if (!payload)
            jsonw_buf_free(text);
        free(action);
        return AR_E_NOMEM;
    }
    uint32_t id = pool->next_request_id + 1;
    if (id == 0)
        id = 1;
    ar_error err;
    int rc = payload ? channel_send(p, type, id, payload, &err)
                     : channel_send_text(p, type, id, text, &err);
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

/* Append a JSON integer as jansson writes it ("%" JSON_INTEGER_FORMAT). */
static int put_int(jsonw_buf *b, json_int_t v)
{
    char digits[24], *end = digits + sizeof digits, *d = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--d = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--d = '-';
    return jsonw_append_raw(b, d, (size_t)(end - d));
}

#define PUT_LIT(b, s) jsonw_append_raw((b), (s), sizeof(s) - 1)

/* The INVOKE payload written from the caller's compact input text, byte for byte what json_pack
 * and frame_encode make of it, without parsing the input into a tree and writing it again
 * (that was a tenth of the scheduler thread's time). 0, or -1 (not UTF-8, out of memory). */
static int invoke_text(jsonw_buf *b, const sandbox_call *call, int64_t deadline_ms)
{
    const char *key = call->idempotency_key ? call->idempotency_key : "";
    if (PUT_LIT(b, "{\"action\":") || jsonw_append_string(b, call->action, strlen(call->action)) ||
        PUT_LIT(b, ",\"input\":") || jsonw_append_raw(b, call->input_json, call->input_len) ||
        PUT_LIT(b, ",\"idempotency_key\":") || jsonw_append_string(b, key, strlen(key)) ||
        PUT_LIT(b, ",\"deadline_ms\":") || put_int(b, (json_int_t)deadline_ms) ||
        PUT_LIT(b, ",\"attempt\":") || put_int(b, call->attempt) || PUT_LIT(b, "}"))
        return -1;
    return 0;
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

    int timeout_ms = call->timeout_ms > 0 ? call->timeout_ms : pool->timeout_ms;
    if (call->input_json && call->input_compact) {
        char small[4096];
        jsonw_buf text = {small, FRAME_HEADER_SIZE, sizeof small, 1};
        int ok = invoke_text(&text, call, ar_now_ms() + timeout_ms) == 0;
        if (!ok)
            jsonw_buf_free(&text);
        return dispatch(p, CALL_INVOKE, FRAME_INVOKE, NULL, ok ? &text : NULL, call->action,
                        timeout_ms, done, arg);
    }
    json_t *input;
    if (call->input_json) {
        json_error_t jerr;
        input = json_loadb(call->input_json, call->input_len, JSON_DECODE_ANY, &jerr);
        if (!input)
            return AR_E_INVALID;
    } else {
        input = json_object();
    }
    json_t *payload = json_pack("{s:s, s:o, s:s, s:I, s:i}", "action", call->action, "input", input,
                                "idempotency_key", call->idempotency_key ? call->idempotency_key : "",
                                "deadline_ms", (json_int_t)(ar_now_ms() + timeout_ms),
                                "attempt", call->attempt);
    return dispatch(p, CALL_INVOKE, FRAME_INVOKE, payload, NULL, call->action, timeout_ms, done, arg);
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
    return dispatch(p, CALL_LOOKUP, FRAME_LOOKUP, payload, NULL, call->action, timeout_ms, done, arg);
}

void sandbox_pool_capacity(sandbox_pool *pool, sandbox_state *state, int *serving)
{
    pthread_mutex_lock(&pool->mu);
    *state = pool->state;
    *serving = pool->serving;
    pthread_mutex_unlock(&pool->mu);
}

void sandbox_pool_snapshot(sandbox_pool *pool, sandbox_snapshot *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&pool->mu);
    out->state = pool->state;
    snprintf(out->message, sizeof out->message, "%s", pool->message);
    /* Shared, not copied (every submission asks): set once at the first HELLO and never changed
     * after, and jansson's reference counts are atomic, so readers on any thread are safe. */
    out->descriptor = json_incref(pool->descriptor);
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
    if (pool->cpu_timer)
        loop_timer_cancel(pool->loop, pool->cpu_timer);
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
        proc_call c = {0};
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
    runtime_cleanup(pool);
    free_argv(pool->argv);
    free(pool->run_plugin);
    free(pool->procs);
    free(pool->connector);
    free(pool->plugin_path);
    free(pool->host_path);
    pthread_mutex_destroy(&pool->mu);
    free(pool);
}
