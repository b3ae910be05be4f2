/*
 * sandbox.h - the daemon's side of the plugin sandbox: a pool of host processes per connector.
 *
 * Each connector instance runs in `processes` child processes, each started by posix_spawn of
 * the sandbox host binary (bin/aiorun-host) with an empty environment and one end of a
 * socketpair as fd 3 — never by fork of the daemon. The host loads the plugin, checks its ABI
 * and answers HELLO (descriptor) or REFUSED; the pool validates the connector config against
 * the declared config schema, sends INIT, and waits for READY. A plugin is never sent a second
 * call while one is running in the same process.
 *
 * A process that crashes, hangs past the call's deadline (killed with SIGKILL), or writes a
 * malformed frame fails its running call with class plugin_crashed or timeout and is restarted
 * with exponential backoff (100 ms doubling up to 30 s, reset after 60 s of health). A refused
 * plugin (ABI, missing entry, bad descriptor, config schema violation, failing init) marks the
 * pool SANDBOX_REFUSED with the message and is not restarted.
 *
 * Secrets: the pool keeps no copy. It asks secrets_fn (the vault) for the connector's secrets
 * each time it starts a process (restarts included), sends them in INIT, and wipes them at
 * once; they are never logged. Because the host process cannot be trusted to keep them to
 * itself, the pool asks again for every frame that carries plugin text (results, error
 * messages, log lines) and replaces every value of 4 bytes or more — as raw bytes and in its
 * JSON-escaped form — with "[REDACTED]" before anything leaves the pool; then wipes them.
 *
 * Lock-down: the host confines itself before it loads the plugin, in the order of
 * ../shared/SANDBOX.md (rlimits, curl init, the connector's own uid/gid, NPROC, non-dumpable,
 * no_new_privs, Landlock, dlopen, seccomp, INIT). sandbox_lockdown says what to apply; each
 * layer can be switched off for debugging. The host reports what is active in HELLO: the
 * descriptor's "sandbox" member, {"rlimits", "uid", "no_new_privs", "dumpable", "landlock",
 * "seccomp"} (see sdk/README.md), which GET /v1/connectors shows. A Landlock the kernel lacks
 * is reported, not fatal; a seccomp filter that cannot be loaded refuses the plugin. When the
 * daemon runs as root and drops to a connector uid, the plugin file is first copied to a
 * root-owned runtime directory the uid can read (so the plugin's own directory need not be
 * traversable, and the file cannot be swapped after the check).
 *
 * Threading: everything here runs on the loop's thread, including callbacks, except
 * sandbox_pool_snapshot which is safe from any thread.
 */
#ifndef SANDBOX_H
#define SANDBOX_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"
#include "loop.h"
#include "vault.h"

typedef struct sandbox_pool sandbox_pool;

typedef enum sandbox_state {
    SANDBOX_STARTING = 0,  /* no process has answered HELLO + READY yet */
    SANDBOX_READY = 1,     /* at least one process is serving */
    SANDBOX_DEGRADED = 2,  /* every process is down and restarting */
    SANDBOX_REFUSED = 3    /* the plugin cannot be used; see message */
} sandbox_state;

/* The connector's secrets, decrypted for one use (vault_get_all): the pool frees them with
 * vault_secrets_free as soon as it has used them. A failure fails the start of the process (its
 * message, which names no value, becomes the pool's message). */
typedef int (*sandbox_secrets_fn)(void *arg, const char *connector, vault_secrets *out, ar_error *err);

typedef struct sandbox_lockdown {
    int no_rlimits;            /* 1: switch that layer off (debugging only); 0: on */
    int no_uid;
    int no_landlock;
    int no_seccomp;
    unsigned uid, gid;         /* the connector's own ids, used when the daemon is root; 0: none */
    const int *ports;          /* TCP ports the plugin may connect to (copied); n_ports 0: none */
    size_t n_ports;
    const char *runtime_dir;   /* root-owned directory for the plugin copy and the working
                                  directory (created 0755 if missing); NULL: "/run/aiorun" when
                                  root, else no copy. Layout: <runtime_dir>/<daemon pid>/
                                  <connector>.so (0444, only when switching uid) and
                                  .../work/<connector>/ (0700, the host's current directory,
                                  owned by its uid, emptied and removed with the pool); what a
                                  daemon that died left there is removed. Not root: the working
                                  directory goes there too when we may write it, else under
                                  $TMPDIR/aiorun-<uid> (0700) */
} sandbox_lockdown;

typedef struct sandbox_pool_opts {
    const char *connector;     /* instance name (copied) */
    const char *plugin_path;   /* absolute path to the .so (copied) */
    const char *host_path;     /* absolute path to aiorun-host (copied) */
    const json_t *config;      /* the connector's plugin config (copied) */
    int processes;             /* >= 1 */
    int timeout_ms;            /* default call deadline */
    size_t max_frame;          /* 0: FRAME_DEFAULT_MAX_PAYLOAD */
    sandbox_secrets_fn secrets_fn;  /* NULL: the connector has no secrets */
    void *secrets_arg;
    sandbox_lockdown lockdown;
    /* A process that has used this much CPU (seconds) is replaced once idle, well before the
     * host's RLIMIT_CPU ceiling would kill it mid-call. 0: three quarters of that ceiling. */
    int cpu_recycle_s;
} sandbox_pool_opts;

typedef struct sandbox_call {
    const char *action;
    const char *input_json;    /* JSON text (borrowed for the duration of sandbox_pool_invoke) */
    size_t input_len;
    const char *idempotency_key;
    int attempt;
    int timeout_ms;            /* 0: the pool's default */
    int input_compact;         /* 1: input_json is jsonw's JSON_COMPACT text of one value (as the
                                * scheduler keeps it): sent as it is, not parsed and written again */
} sandbox_call;

/* Units of cost one call may report. */
#define SANDBOX_COST_MAX_UNITS 8

typedef struct sandbox_result {
    int ok;                    /* 1: result_json is set; 0: error_class/message are set */
    const char *result_json;   /* borrowed during the callback */
    size_t result_len;
    const json_t *result;      /* the same result as a value, borrowed during the callback (a
                                  reader keeping it takes a reference instead of parsing the
                                  text); NULL when only the text is known */
    int error_class;           /* an aiorun_status value */
    const char *error_message; /* borrowed during the callback */
    int64_t latency_us;
    int http_status;           /* status of the last HTTP response the plugin received during
                                  the call, 0 if none (also 0 for crashes and kills) */
    int64_t retry_after_ms;    /* that response's Retry-After in ms, -1 if none */
    const json_t *cost;        /* what the call cost, as the plugin reported it (set_cost), ok
                                  or not: an object of 1 to SANDBOX_COST_MAX_UNITS units named
                                  [A-Za-z0-9_]{1,16}, each a finite number >= 0; borrowed
                                  during the callback; NULL when none (a malformed cost is
                                  logged and dropped, never fatal) */
} sandbox_result;

typedef void (*sandbox_done_fn)(void *arg, const sandbox_result *res);
/* Called when the pool's state changes or a process becomes idle (a good moment to dispatch
 * queued work). */
typedef void (*sandbox_event_fn)(void *arg, sandbox_pool *pool);

/* Create a pool and start its processes. *out owned by the caller (sandbox_pool_free, which
 * sends SHUTDOWN, waits briefly and kills what remains). */
int sandbox_pool_new(loop_t *loop, const sandbox_pool_opts *opts, sandbox_event_fn on_event,
                     void *event_arg, sandbox_pool **out, ar_error *err);
void sandbox_pool_free(sandbox_pool *pool);

/* Send one call to an idle process. AR_OK: done() will be called exactly once (also when the
 * pool is freed meanwhile: with class plugin_crashed), never from within this function.
 * AR_E_BUSY: no idle process (wait for the event callback). AR_E_CLOSED: the pool is refused.
 * AR_E_INVALID: the call itself is unusable (no action, input that is not JSON, or too large
 * for a frame). AR_E_NOMEM. The callbacks (done, on_event) may invoke again, but must not
 * free the pool. */
int sandbox_pool_invoke(sandbox_pool *pool, const sandbox_call *call, sandbox_done_fn done,
                        void *arg);

/* Ask the plugin's lookup() whether the attempt with call->idempotency_key of call->action
 * happened (input_json and attempt are ignored). Same rules as sandbox_pool_invoke (AR_E_BUSY
 * when no process is idle; deadline, crash and garbage handled alike). The result: ok=1 with
 * result_json when the operation happened (its result); ok=0 with error_class
 * AIORUN_E_NOT_FOUND when it did not; any other class when it is not known now.
 * AR_E_INVALID also when the key is missing or empty, or when the plugin declares no lookup
 * (descriptor "lookup": false): nothing is sent then. */
int sandbox_pool_lookup(sandbox_pool *pool, const sandbox_call *call, sandbox_done_fn done,
                        void *arg);

/* Replace every process of the pool, one at a time, each once it is idle (calls in flight
 * finish; no new call goes to a process being replaced): each restart fetches the secrets
 * anew. Loop thread. AR_E_CLOSED when the pool is refused. */
int sandbox_pool_recycle(sandbox_pool *pool);

/* Thread-safe snapshot for the API: state, message ("" when none), the descriptor from HELLO
 * (a new reference, NULL before the first HELLO: shared with the pool and read-only; copy it
 * to change it), processes configured/serving, restarts. */
typedef struct sandbox_snapshot {
    sandbox_state state;
    char message[512];
    json_t *descriptor;        /* a reference owned by the caller (json_decref); read-only */
    int processes;
    int serving;
    uint64_t restarts;
} sandbox_snapshot;
void sandbox_pool_snapshot(sandbox_pool *pool, sandbox_snapshot *out);
/* The two figures dispatch needs, without copying anything (thread-safe, cheap): the pool's
 * state and how many processes serve. */
void sandbox_pool_capacity(sandbox_pool *pool, sandbox_state *state, int *serving);

const char *sandbox_state_name(sandbox_state s);

#endif
