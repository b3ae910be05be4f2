/*
 * scheduler.h - from READY to exactly one terminal state: dispatch, retries, reconciliation.
 *
 * One thread runs an event loop (loop.h) that owns every connector's sandbox pool. Work enters
 * with scheduler_enqueue (any thread) as a record already durable in the journal, or with
 * scheduler_submit as a new record with the batch that stores it (when its connector can start
 * it at once, its first DISPATCHED intent is journaled in that same commit). Every step
 * that crosses into a plugin's process is checkpointed first:
 *   - before a call: the attempt (number, idempotency key, payload digest, deadline) is journaled
 *     with the state DISPATCHED, and only once that is synced is the call sent;
 *   - the intents of several attempts may be journaled while the connector's processes are busy
 *     (a pipeline, so that they share group commits): each is sent, in the order it became
 *     durable, as soon as a process is idle. One that cannot be sent (its deadline passed while
 *     it waited, it was cancelled, the call is unusable) ends without being sent, its history
 *     entry saying "not_sent"; one still waiting at a graceful stop is journaled back as
 *     RETRY_WAIT, due at once and its attempt not counted, so the next start simply runs it.
 *     Attempts already decided are sent even when the connector is paused or its breaker opens
 *     meanwhile (they were dispatched before; at most the pipeline's depth of them).
 *   - after it: the outcome (result or error class, latency, HTTP status) is journaled with the
 *     next state, and only then reported through the notify callback.
 *
 * What follows an outcome (the rules an operator can predict; README "After a failure"):
 *   - success: SUCCEEDED.
 *   - auth, invalid, not_found, conflict, permanent: FAILED at once.
 *   - retryable, rate_limited (the API answered that it did not do it): RETRY_WAIT, then another
 *     attempt with the same key, after a full-jitter backoff (retry settings of the connector)
 *     and never before the API's Retry-After; FAILED when attempts run out, or when the next
 *     attempt could not start before the action's deadline.
 *   - timeout, plugin_crashed (the request may have reached the API: unknown outcome), by the
 *     action's idempotency support:
 *       lookup: ask the plugin's lookup with the key; found → SUCCEEDED with that result; not
 *               found → a new attempt with the same key;
 *       native: a new attempt with the same key (the API deduplicates);
 *       none + read: a new attempt;
 *       none + write/irreversible: UNKNOWN_OUTCOME, never repeated.
 *     When attempts or the deadline run out after an unknown outcome, the action ends
 *     UNKNOWN_OUTCOME (FAILED for reads), since the effect may have happened.
 * A successful result (from an invoke or a lookup) is checked by the validator when one is set
 * (the policies' validate): a rejected read ends FAILED with error class validation_failed; a
 * rejected write or irreversible action already acted, so it ends SUCCEEDED with its result,
 * "validation" {ok: false, reason, rule, policy, policy_error} and "review": true, and is never
 * retried.
 * A daemon that died with an action DISPATCHED applies the same unknown-outcome rules at start
 * (scheduler_recover); READY and RETRY_WAIT actions resume.
 */
#ifndef SCHEDULER_H
#define SCHEDULER_H

#include <jansson.h>

#include "ar.h"
#include "config.h"
#include "journal.h"
#include "metrics.h"
#include "sandbox.h"

typedef struct scheduler scheduler;

/* Called after a state change of an action is durable; rec is borrowed for the call.
 * Runs where the journal runs journal_submit's done callbacks (journal.h): must not block. */
typedef void (*scheduler_notify_fn)(void *arg, const json_t *rec);

/* Create the scheduler and start its thread and one sandbox pool per configured connector;
 * waits up to start_timeout_ms for every pool to leave SANDBOX_STARTING. host_path: the
 * sandbox host binary. secrets_fn/secrets_arg: where every pool gets its connector's secrets
 * (the vault; NULL: none). *out owned by the caller (scheduler_free). */
int scheduler_new(const config *cfg, journal *j, const char *host_path, int start_timeout_ms,
                  sandbox_secrets_fn secrets_fn, void *secrets_arg,
                  scheduler_notify_fn notify, void *notify_arg, scheduler **out, ar_error *err);

/* Replace a connector's processes (one at a time once each is idle, so calls in flight
 * finish): after its secrets changed. Thread-safe. AR_E_NOTFOUND for an unknown name. */
int scheduler_restart_connector(scheduler *s, const char *name);
/* Stop dispatching, give calls in flight a moment to finish, then shut the pools down. A call
 * still running at that point stays DISPATCHED in the journal: the next start resolves it
 * (scheduler_recover), since whether the plugin acted cannot be known here. An attempt
 * journaled DISPATCHED but not sent yet is journaled back as RETRY_WAIT (due at once, the
 * attempt not counted). */
void scheduler_free(scheduler *s);

/* Check a successful result before it is accepted. Runs on the scheduler's thread (it may take
 * as long as a policy call's deadline); rec and result are borrowed. Returns NULL to accept, or
 * a rejection the scheduler takes: a JSON object {"reason", "rule", "policy", "policy_error"}. */
typedef json_t *(*scheduler_validate_fn)(void *arg, const json_t *rec, const json_t *result);
/* What the scheduler measures (families borrowed from the owner's registry; any may be NULL):
 * stage_seconds, a histogram {stage, connector}, gets "queue_wait" (in the ready queue until the
 * attempt is dispatched), "dispatch_journal" (the DISPATCHED intent submitted until durable),
 * "process_wait" (durable until sent to an idle process) and "connector_call" (the plugin call,
 * lookups included); errors, a counter {connector, class}, each failed call by its class;
 * retries, a counter {connector}, each attempt scheduled again. */
typedef struct scheduler_metrics {
    metrics_family *stage_seconds;
    metrics_family *errors;
    metrics_family *retries;
} scheduler_metrics;
/* Set them before scheduler_recover and any enqueue (copied). */
void scheduler_set_metrics(scheduler *s, const scheduler_metrics *m);

/* Set (or with NULL clear) the validator; call before scheduler_recover and any enqueue. */
void scheduler_set_validator(scheduler *s, scheduler_validate_fn fn, void *arg);

/* Thread-safe. Takes ownership of rec (a READY, APPROVED or RETRY_WAIT record already
 * journaled). The public functions below accept a NULL scheduler (one detached at shutdown):
 * AR_E_CLOSED, AR_E_NOTFOUND or 0, and nothing happens (an enqueued record is freed; it is
 * durable and the next start resumes it). rec must be what the journal holds: while many
 * actions are held, a queued one keeps only a compact entry and its record is read again from
 * the journal when its attempt starts. */
int scheduler_enqueue(scheduler *s, json_t *rec);

/* A new action's first commit, made by the scheduler (scheduler_submit): status and b as a
 * journal_done_fn gets them (b still owned by the scheduler: read its conflict, do not free
 * it), rec the record as stored (DISPATCHED when its first attempt went in the same commit,
 * READY otherwise; even a terminal state, when it could not start), borrowed for the call.
 * Runs where the journal runs done callbacks (journal.h), before anything else happens to the
 * action: must not block. */
typedef void (*scheduler_stored_fn)(void *arg, int status, journal_batch *b, const ar_error *err,
                                    const json_t *rec);

/* Thread-safe, cheap: whether the connector looked free to start an action at once when last
 * seen (nothing queued, not paused, room in its pipeline). A hint for scheduler_submit. */
int scheduler_can_start(scheduler *s, const char *connector);

/* Thread-safe. A new READY record (not journaled yet; the scheduler takes a reference of its
 * own) with the rest of its submission in a batch (its audit entries, idempotency key and
 * checks; taken on AR_OK), to which the scheduler adds the record itself (action_batch_store).
 * When the connector can start it at once, the record goes in DISPATCHED with its first
 * attempt: one durable commit instead of two before the call. Otherwise it goes in READY and
 * the action is taken in once it is durable, as with scheduler_enqueue. Either
 * way stored(arg, ...) runs once the batch is durable (the notify callback after it) or
 * refused, in which case nothing of the action was stored and the scheduler forgets it.
 * hold_ms > 0 (its client waits for the outcome anyway): when the connector cannot start it at
 * once only because it is busy (not paused, breaker not open, no Retry-After running), the
 * action may wait that long, not stored, behind what is queued, and still go in DISPATCHED with
 * its first attempt once a place is free; READY when the time is up or the daemon stops. Until
 * then nothing of it is durable and nobody has been answered: a crash loses only what was never
 * acknowledged. AR_E_CLOSED or AR_E_NOMEM: nothing was taken (store the record and journal the
 * batch yourself). */
int scheduler_submit(scheduler *s, json_t *rec, journal_batch *b, scheduler_stored_fn stored,
                     void *arg, int64_t hold_ms);
/* The longest a new action should be held (scheduler_submit): enough to ride out a busy
 * connector's queue at full load, short next to what its waiting client allows. */
#define SCHEDULER_HOLD_MAX_MS 1000

/* Recovery also reports each action waiting for a human (PENDING_APPROVAL) with its approval's
 * "expires_ms" (0 when absent), so that the caller need not read the queue a second time. Set
 * before scheduler_recover; fn runs on the thread that calls scheduler_recover. NULL: none. */
typedef void (*scheduler_pending_fn)(void *arg, const char *id, int64_t expires_ms);
void scheduler_set_pending_watch(scheduler *s, scheduler_pending_fn fn, void *arg);

/* A connector's pipeline: how many attempts it may have dispatched at once (journaling their
 * DISPATCHED intent, waiting for a process, or running). depth >= 1 fixes it; 0 (the default)
 * lets the scheduler choose: min(processes, concurrency) plus as many as those processes can
 * take during two of the journal's commits (measured: call and commit latency), at most
 * SCHEDULER_PIPELINE_PER_SLOT times min(processes, concurrency). What a pipeline holds counts
 * against the daemon's max_inflight. Thread-safe (applied on the scheduler's thread before
 * anything enqueued later). AR_E_NOTFOUND for an unknown name. */
#define SCHEDULER_PIPELINE_PER_SLOT 8
int scheduler_set_pipeline(scheduler *s, const char *name, int depth);

/* Resolve and resume the journal's non-terminal actions (call once, after scheduler_new). Each
 * record is read once; READY, APPROVED and RETRY_WAIT ones are held as compact entries (id,
 * priority, times) and their records loaded again when their next attempt starts. */
typedef struct scheduler_recovery {
    size_t resumed;           /* READY / RETRY_WAIT, re-queued */
    size_t resent;            /* DISPATCHED, safe to send again (native key, or a read) */
    size_t reconciled;        /* DISPATCHED, asked the plugin's lookup first */
    size_t unknown;           /* DISPATCHED, outcome unknown: UNKNOWN_OUTCOME */
} scheduler_recovery;
int scheduler_recover(scheduler *s, scheduler_recovery *out, ar_error *err);

/* Cancel an action the scheduler holds. Thread-safe; done(arg, status, rec) runs once, on the
 * scheduler or the journal thread: AR_OK with the CANCELLED record (durable), AR_E_BUSY with the
 * record when a call is in flight (it is cancelled when the call returns, unless it succeeded),
 * AR_E_NOTFOUND when the scheduler does not hold it (terminal, or waiting elsewhere). When one of
 * its states is being journaled (RETRY_WAIT, DISPATCHED, an end), done waits for that commit and
 * the step after it: AR_OK once CANCELLED, AR_E_NOTFOUND if it ended otherwise. who: the token
 * name, recorded. */
typedef void (*scheduler_cancel_fn)(void *arg, int status, const json_t *rec);
int scheduler_cancel(scheduler *s, const char *id, const char *who, scheduler_cancel_fn done,
                     void *arg);

/* Pause (pause = 1) or resume a connector: nothing is dispatched while paused; its queue is
 * kept; the pause is journaled (who, why) and outlives a restart. Thread-safe; done(arg,
 * status, view) runs once the change is durable, with the connector's flow view (borrowed). */
typedef void (*scheduler_flow_fn)(void *arg, int status, const json_t *view);
int scheduler_pause(scheduler *s, const char *name, int pause, const char *who, const char *reason,
                    scheduler_flow_fn done, void *arg);

/* Thread-safe: the connector's flow state for GET /v1/connectors (a new reference): paused,
 * rate limiting, breaker, concurrency, "inflight" (calls running in its processes), "queued"
 * (in the ready queue), "dispatching" (attempts being journaled DISPATCHED or waiting for a
 * process), "waiting_for_process" (of those, the ones durable and waiting) and "pipeline" (how
 * many may be dispatched at once now). AR_E_NOTFOUND for an unknown name. */
int scheduler_connector_flow(scheduler *s, const char *name, json_t **out);

/* Thread-safe: actions the scheduler holds (queued, waiting to retry, in flight): what
 * backpressure compares with max_queue_depth. */
size_t scheduler_held(scheduler *s);

/* Thread-safe snapshot of one connector's pool. AR_E_NOTFOUND for an unknown name. */
int scheduler_connector(scheduler *s, const char *name, sandbox_snapshot *out);

#endif
