/*
 * retention.h - bounded history: compaction of old actions, idempotency keys, audit bodies and
 * the oldest audit entries.
 *
 * What a run does (retention_run), each change in the writer's transactions through the
 * journal, at most `batch` (500) records looked at per transaction so that the writer is never
 * held long:
 *   1. A terminal action whose finish (finished_ms, else updated_ms, else created_ms) is older
 *      than actions_days becomes a stub in place: {id, connector, action, effect, state,
 *      submitter, idempotency_key, key_given, digest, created_ms, updated_ms, finished_ms,
 *      cost (if any), "compacted": true}. Input, result, error, history, proposer, decision and
 *      approval go, and so do its checkpoints (JDB_CHECKPOINTS, keys beginning with its id).
 *      A non-terminal action, and an UNKNOWN_OUTCOME one (an operator must resolve it, with
 *      its history), is never touched; a stub is not rewritten. The state and times
 *      stay, so the guardrail counters (counters.h) see no change.
 *   2. A terminal action (stub or not) whose finish is older than idempotency_days is deleted,
 *      with its idempotency key (JDB_IDEMPOTENCY, when it still names this action); the
 *      counters' hook drops its entries. A resubmission with that key is then a new action.
 *   3. Audit entries whose time is older than audit_bodies_days have their body erased
 *      (audit_txn_erase: digest and chain stay, so audit_verify still passes), oldest first.
 *      audit_cut entries keep theirs.
 *   4. Audit entries whose time is older than audit_entries_days (>= audit_bodies_days) are
 *      deleted, oldest first and only ever a prefix of the chain: the walk starts at the first
 *      entry kept and stops at the first one not due (or not readable), and each transaction
 *      cuts through the last due entry it looked at (audit_txn_cut: the entries and their
 *      index keys go, each checked first; the anchor in JDB_META says where the trail now
 *      starts, and an audit_cut entry in the chain records the same cut, so that audit_verify
 *      still passes from the anchor). One audit_cut entry per transaction that cut. An entry
 *      that does not verify stops the run with audit_txn_cut's error ("audit_cut_refused"):
 *      a cut never takes a damaged entry out of sight.
 *
 * How the walks stay cheap as history grows (ids sort by creation time, action.h), with
 * S = now - actions_days and D = now - idempotency_days:
 *   - the front walk goes over the actions created before D, from the oldest: it deletes what
 *     is due (and stubs what only that is due); what is left there (actions that lived long)
 *     is looked at again on its next pass, so each pass starts over from the oldest;
 *   - the stub walk goes over the actions created in [D, S) once, in id order, never going
 *     back: it stubs what is due, and notes every action it cannot stub yet (not terminal, or
 *     finished recently) in a deferred set;
 *   - the deferred set is looked at again on every run: an action in it is stubbed (or
 *     deleted) once due, and leaves the set.
 * Where each walk is (its last key, and the highest audit seq erased) is kept in JDB_META
 * under "retention.*" keys, in the same transaction as the changes, so a run resumes where
 * the last one stopped, also in another process (aioctl compact); the cut needs no mark (what
 * it cut is gone). Each walk looks at no more than walk_limit records per run; stats.more then
 * says to run again soon. With every step, the journal's size stays flat under a steady load.
 */
#ifndef RETENTION_H
#define RETENTION_H

#include <stddef.h>
#include <stdint.h>

#include "ar.h"
#include "journal.h"

#define RETENTION_BATCH_MAX 500      /* records looked at per journal transaction, at most */
#define RETENTION_WALK_LIMIT 10000   /* records each walk looks at per run, by default */

typedef struct retention_opts {
    double actions_days;        /* > 0: full records of terminal actions are kept this long */
    double idempotency_days;    /* >= actions_days: stubs and their idempotency keys */
    double audit_bodies_days;   /* > 0: audit bodies */
    double audit_entries_days;  /* >= audit_bodies_days: audit entries (the config's default 1095) */
    size_t walk_limit;          /* records each walk looks at per run; 0: RETENTION_WALK_LIMIT */
    size_t batch;               /* records per transaction; 0 or above the max: RETENTION_BATCH_MAX */
    /* Asked between transactions (may be NULL): nonzero ends the run early (stats.more set). */
    int (*should_stop)(void *arg);
    void *stop_arg;
} retention_opts;

typedef struct retention_stats {
    size_t looked_at;           /* records (actions, deferred notes, audit entries) read */
    size_t stubbed;             /* actions made stubs */
    size_t deleted;             /* actions deleted */
    size_t keys_deleted;        /* idempotency keys deleted with them */
    size_t deferred;            /* actions noted to be looked at again (not due yet) */
    size_t audit_erased;        /* audit bodies erased */
    size_t audit_deleted;       /* audit entries deleted (cut) */
    size_t transactions;        /* journal transactions committed */
    int more;                   /* a walk stopped at walk_limit (or should_stop): run again soon */
    int64_t took_ms;            /* wall time of the run */
} retention_stats;

/* One compaction run at now_ms (*stats filled, zeroed first). Days that are not above 0,
 * idempotency_days below actions_days, or audit_entries_days below audit_bodies_days:
 * AR_E_INVALID (code "retention_invalid"). A failing commit returns the journal's status (what
 * earlier transactions did stays done and counted in *stats); a cut refused by audit_txn_cut
 * returns its error. */
int retention_run(journal *j, const retention_opts *opts, int64_t now_ms, retention_stats *stats,
                  ar_error *err);

/* The daemon's compaction thread: runs retention_run (at ar_now_ms) at once, then every
 * interval_s seconds (after 1 s when a run said more), logging one line per run. opts is
 * copied (its should_stop is replaced by the worker's own). *out owned by the caller:
 * retention_worker_stop. */
typedef struct retention_worker retention_worker;
int retention_worker_start(journal *j, const retention_opts *opts, int interval_s,
                           retention_worker **out, ar_error *err);
/* Stop the thread (a run in progress ends after its current transaction), join it, free.
 * Call it before journal_close. NULL is a no-op. */
void retention_worker_stop(retention_worker *w);

#endif
