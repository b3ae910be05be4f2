/*
 * counters.h - guardrail counters kept by the journal: how much of something (refunds, spend,
 * listings) was approved or is in flight within a rolling window, answered without a scan.
 *
 * A policy file declares the counters it reads:
 *   counters = { refunded = {connector = "shop", action = "refund", sum = "amount", window = "24h"} }
 * connector (required), action (optional; absent or "*": every action of the connector), sum
 * (optional dotted path into the action's input, e.g. "amount" or "price.value"; absent: count
 * the actions; a value that is missing or not a number counts 0), cost (optional, not with sum:
 * a unit the connectors report costs in, 1 to 16 characters [A-Za-z0-9_], e.g. "USD" or
 * "tokens"; see "Cost counters" below), window (required: "90s", "30m", "24h", "7d", or a number
 * of seconds; from 1 s to 366 d).
 *
 * What counts (sum and count counters): an action counts from the moment it may happen:
 * APPROVED, READY, DISPATCHED, RETRY_WAIT, SUCCEEDED, UNKNOWN_OUTCOME (the effect may have
 * happened). DENIED, SUGGESTED, PENDING_APPROVAL, REJECTED, EXPIRED, FAILED and CANCELLED do
 * not: an action that counted and then fails or is cancelled is taken off again. Its time is
 * when it became allowed: the approval's decided_ms when a human approved it, else created_ms.
 *
 * How: a journal hook (journal_set_hook on JDB_ACTIONS) sees every stored action record inside
 * the writer's transaction, so a counter changes in the same transaction as the state change it
 * counts. Each maintained definition has one state record in JDB_COUNTERS: a version (bumped on
 * every change) and a ring of 64 buckets, each window/63 wide (rounded up to a millisecond), so
 * the ring covers the window and the partial bucket at its start; a read sums the buckets that
 * overlap (now - window, now], so it may include up to one bucket (1/63 of the window) more than
 * the exact window: it errs on the side of counting more. Each counted action has a small entry
 * (what it added, to which bucket) so that taking it off is exact; the entry goes when the
 * action's record is deleted (compaction). The set of maintained definitions is itself a record
 * ("defs"), changed only by counters_install, in the same transaction as the backfill of new
 * definitions; so no state change is counted twice or missed across a policy reload.
 *
 * Cost counters (cost = unit): what the connector's actions actually cost, in that unit, as
 * the connectors report it (the record's running total "cost": {"USD": 1.5, ...}, over all its
 * attempts and lookups). It adds whatever the action's state: money spent on a call that then
 * failed, or on an action later cancelled, is still spent. Each rise of an action's total is
 * added at the time it was recorded (the updated_ms of the put that raised it), so a day's
 * budget covers what was spent that day; nothing is ever taken off (costs only grow; a total
 * that went down is ignored until it rises above what was counted). A backfill (and
 * counters_recompute) only sees each action's total and last update, so it puts the whole total
 * at the action's updated_ms: later than the hook would, never earlier (it errs on counting
 * more), and the same when an action's cost was recorded by its last put. An action created
 * before the backfill's scan (window + 30 days) whose cost rises later has its whole total
 * added at that rise.
 *
 * Concurrent decisions: a decision that read counters records (definition id, version) for each
 * read; the batch that stores its action runs counters_txn_check first, which fails with
 * AR_E_CONFLICT when any of them changed since (or stopped being maintained). The caller then
 * decides again on fresh values, so two decisions at a cap cannot both slip under it.
 *
 * Keys in JDB_COUNTERS: "defs" (JSON array of definitions), "c:" + id (state, binary, host byte
 * order), "a:" + action id (JSON {"<id>": [bucket_start_ms, amount], ...}: what the action
 * added to the sum and count counters), "k:" + action id (JSON {"<id>": [bucket_start_ms,
 * counted], ...}: for each cost counter, the bucket of the last rise it added and the total
 * counted so far; written only while a cost counter is maintained, deleted with the record).
 *
 * Offline tools that open the journal without counters_new do not maintain counters; every
 * state change goes through the daemon.
 */
#ifndef COUNTERS_H
#define COUNTERS_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"
#include "journal.h"

#define COUNTERS_ID_LEN 16      /* hex characters of a definition id */
#define COUNTERS_BUCKETS 64
#define COUNTERS_NAME_MAX 64
#define COUNTERS_UNIT_MAX 16    /* characters of a cost unit */

typedef struct counter_def {
    char name[COUNTERS_NAME_MAX];   /* the policies' name for it; not part of the identity */
    char connector[64];
    char action[64];                /* "*": any action of the connector */
    char sum[128];                  /* dotted path into input; "": count actions (or cost) */
    int64_t window_ms;
    char id[COUNTERS_ID_LEN + 1];   /* hex BLAKE2b of (connector, action, sum, window_ms[, cost]) */
    char cost[COUNTERS_UNIT_MAX + 1]; /* a cost unit ("USD"); "": not a cost counter */
} counter_def;

/* Parse one declaration (a JSON object {connector, action?, sum? | cost?, window}) named name
 * into *out (id included). Unknown fields, wrong types, a bad window, unit or name (letters,
 * digits, '_', at most 63), or both sum and cost are AR_E_INVALID, code "counter_invalid", with
 * a message naming the counter and what to fix. */
int counters_def_parse(const char *name, const json_t *decl, counter_def *out, ar_error *err);

/* A definition as JSON {"name", "connector", "action", "sum" (string or null), "cost" (string
 * or null), "window" (seconds), "id"}: a new reference owned by the caller. */
json_t *counters_def_json(const counter_def *def);

typedef struct counters counters;

/* Install the maintenance hook on j's JDB_ACTIONS (call right after journal_open, before
 * anything else writes). *out owned by the caller; free it after journal_close. */
int counters_new(journal *j, counters **out, ar_error *err);
void counters_free(counters *c);

/* Make defs[0..n) the maintained set (duplicates by id are fine; names do not matter here),
 * in one durable transaction: the "defs" record is replaced; the state of definitions no
 * longer listed is deleted; each new definition is backfilled from JDB_ACTIONS (actions
 * created since now_ms - window - 30 days, in a counted state, whose time falls in the window)
 * and its entries written (cost counters: actions of any state whose updated_ms falls in the
 * window, see above). Blocks until durable. Returns AR_OK, or the journal's error. */
int counters_install(counters *c, const counter_def *defs, size_t n, int64_t now_ms,
                     ar_error *err);

/* A counter's value at now_ms in a read snapshot: the sum over its window and the state's
 * version. A definition that is not maintained (not installed) is AR_E_NOTFOUND, code
 * "counter_unavailable". */
int counters_read(journal_read *r, const counter_def *def, int64_t now_ms, double *value,
                  uint64_t *version, ar_error *err);

/* Inside a journal apply callback: AR_OK when the definition is still maintained and its
 * version is still version; AR_E_CONFLICT (code "counter_changed") otherwise. */
int counters_txn_check(journal_txn *txn, const char *def_id, uint64_t version, ar_error *err);

/* For tests and `aioctl` checks: recompute a definition's value at now_ms by scanning
 * JDB_ACTIONS the way the backfill does (into *value), to compare with counters_read. */
int counters_recompute(journal_read *r, const counter_def *def, int64_t now_ms, double *value,
                       ar_error *err);

#endif
