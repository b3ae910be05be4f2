/*
 * scheduler.h - from READY to a terminal state: the dispatch loop over the sandbox pools.
 *
 * One thread runs an event loop (loop.h) that owns every connector's sandbox pool. Work enters
 * with scheduler_enqueue (any thread) as a READY record already durable in the journal. For
 * each action the scheduler journals DISPATCHED (attempt n) and waits until that is synced
 * before the call crosses into the plugin's process; the outcome (SUCCEEDED with the result,
 * or FAILED with the error class) is journaled next, and only then reported through the
 * notify callback. A plugin is handed at most one call per process at a time.
 *
 * Recovery at start (scheduler_recover) walks the queue of non-terminal actions: READY ones
 * are dispatched again; a DISPATCHED one (the daemon died during the call) is re-sent only
 * when that is safe — a read action, or one whose API deduplicates by idempotency key —
 * otherwise it becomes UNKNOWN_OUTCOME for an operator. (Lookup-based reconciliation, retries
 * and backoff come with the durable-execution work.)
 */
#ifndef SCHEDULER_H
#define SCHEDULER_H

#include <jansson.h>

#include "ar.h"
#include "config.h"
#include "journal.h"
#include "sandbox.h"

typedef struct scheduler scheduler;

/* Called after a state change of an action is durable; rec is borrowed for the call.
 * Runs on the journal writer thread: must not block. */
typedef void (*scheduler_notify_fn)(void *arg, const json_t *rec);

/* Create the scheduler and start its thread and one sandbox pool per configured connector;
 * waits up to start_timeout_ms for every pool to leave SANDBOX_STARTING. host_path: the
 * sandbox host binary. *out owned by the caller (scheduler_free). */
int scheduler_new(const config *cfg, journal *j, const char *host_path, int start_timeout_ms,
                  scheduler_notify_fn notify, void *notify_arg, scheduler **out, ar_error *err);
/* Stop dispatching, give calls in flight a moment to finish, then shut the pools down. A call
 * still running at that point stays DISPATCHED in the journal: the next start resolves it
 * (scheduler_recover), since whether the plugin acted cannot be known here. */
void scheduler_free(scheduler *s);

/* Thread-safe. Takes ownership of rec (a READY or APPROVED record already journaled). */
int scheduler_enqueue(scheduler *s, json_t *rec);

/* Resolve and resume the journal's non-terminal actions (call once, after scheduler_new).
 * Counts are reported for the log. */
typedef struct scheduler_recovery {
    size_t resumed;           /* READY, re-queued */
    size_t resent;            /* DISPATCHED, safe to send again */
    size_t unknown;           /* DISPATCHED, outcome unknown: UNKNOWN_OUTCOME */
} scheduler_recovery;
int scheduler_recover(scheduler *s, scheduler_recovery *out, ar_error *err);

/* Thread-safe snapshot of one connector's pool. AR_E_NOTFOUND for an unknown name. */
int scheduler_connector(scheduler *s, const char *name, sandbox_snapshot *out);

#endif
