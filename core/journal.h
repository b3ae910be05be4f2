/*
 * journal.h - the durable store: LMDB with one writer thread and group commit.
 *
 * This is the only module that opens the LMDB environment. All writes go through one writer
 * thread: callers build a batch of changes (puts, deletes, conditional inserts, callbacks that
 * read and write inside the transaction), submit it, and are told once the transaction holding
 * it is committed and synced to disk (never before). The writer packs the batches waiting at
 * that moment into one transaction (group commit); a batch whose condition fails (or whose
 * callback or hook fails) is rolled back alone while the others commit. (How: a batch that may
 * fail on its own — conditional puts, callbacks — runs in a nested transaction of its own; one
 * of plain puts and deletes runs directly in the shared transaction, and should it fail after
 * all, the shared transaction is abandoned and the group run again with every batch nested.
 * Hence callbacks and hooks may run more than once for one commit, as said below.)
 *
 * Two threads per journal: the writer, which runs the transactions and, once one is durable,
 * wakes the journal_commit callers of its batches (only those, which pass the wake-up on to
 * one another so that the writer makes one system call per commit); and a completion thread,
 * which runs the journal_submit done callbacks, so that the writer goes straight on to the
 * next transaction. When nothing else waits for the writer and the completion thread is idle,
 * the writer runs a transaction's done callbacks itself (one thread hand-off less at low load).
 * Since every commit waits for the writer, it asks to run 10 nice levels above the thread that
 * called journal_open; that takes CAP_SYS_NICE or an RLIMIT_NICE allowing it, and without
 * either the writer keeps that thread's priority.
 *
 * Reads use read-only transactions (MDB_NOTLS), from any thread.
 *
 * Every value written through journal_batch_put* is stored as one format-version byte followed
 * by the caller's bytes; journal_get/journal_cursor_* strip it and refuse (AR_E_FORMAT) a version
 * newer than JOURNAL_RECORD_VERSION. The environment carries a schema version in the "meta"
 * database (key "schema_version", a record as above holding a uint32 little-endian); opening a
 * newer one is refused with a clear message.
 *
 * Another process (aioctl working offline) may open the same directory through this module;
 * nothing that must be consistent is cached across transactions.
 */
#ifndef JOURNAL_H
#define JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ar.h"

#define JOURNAL_SCHEMA_VERSION 1
#define JOURNAL_RECORD_VERSION 1

/* The named databases. Keys are raw bytes; the order is LMDB's default (memcmp). */
typedef enum journal_db {
    JDB_META = 0,      /* schema version and other environment facts */
    JDB_ACTIONS,       /* action id -> action record */
    JDB_IDEMPOTENCY,   /* scope + key -> action id + payload digest */
    JDB_QUEUE,         /* ready queue: ordering key -> action id */
    JDB_CHECKPOINTS,   /* action id + attempt -> checkpoint (later issues) */
    JDB_APPROVALS,
    JDB_MEMORY,
    JDB_AUDIT,
    JDB_CACHE,
    JDB_TOKENS,        /* token digest -> token record (auth.h) */
    JDB_TOKEN_NAMES,   /* token name -> token digest */
    JDB_CONNECTORS,    /* connector name -> flow state: pause, breaker, recent transitions */
    JDB_COUNTERS,      /* guardrail counters (counters.h) */
    JDB_SECRETS,       /* connector secrets, encrypted (vault.h) */
    JDB_AUDIT_INDEX,   /* action id + audit seq -> empty (audit.h) */
    JDB_COUNT
} journal_db;

typedef struct journal journal;
typedef struct journal_batch journal_batch;
typedef struct journal_txn journal_txn;      /* the writer's transaction, seen by callbacks */
typedef struct journal_read journal_read;    /* a read-only transaction */
typedef struct journal_cursor journal_cursor;

typedef struct journal_opts {
    const char *dir;          /* created (0700) if missing */
    size_t map_size_mb;       /* 0: default 1024 */
    int max_readers;          /* 0: default 256 */
} journal_opts;

/* Open (creating if needed), clear stale reader slots left by a killed process, check or write
 * the schema version, start the writer and completion threads. *out owned by the caller
 * (journal_close). */
int journal_open(const journal_opts *opts, journal **out, ar_error *err);
/* Finish queued batches, run every done callback of the batches submitted before it began,
 * stop both threads, close the environment. Batches submitted once it has begun are refused
 * (AR_E_CLOSED). Not from a done callback, an apply callback or a hook. NULL is a no-op. */
void journal_close(journal *j);

/* ---- batches ---------------------------------------------------------------------------- */

/* A batch is owned by the caller until journal_submit/journal_commit takes it. Every add
 * function copies the bytes it is given. Allocation failures are remembered and reported by
 * the commit (AR_E_NOMEM), so building needs no checks. */
journal_batch *journal_batch_new(void);
void journal_batch_free(journal_batch *b);
void journal_batch_put(journal_batch *b, journal_db db, const void *key, size_t klen,
                       const void *val, size_t vlen);
/* journal_batch_put for a key the caller expects to be the new last key of db (a sequence,
 * ids in creation order) and a record that will not grow later: stored with LMDB's
 * MDB_APPEND, which fills pages instead of splitting them in two (about half the pages for
 * records of 1 to 2 KB). A key that turns out not to be the last is put as journal_batch_put
 * does: the result is the same either way, only the pages differ. A record rewritten bigger
 * later splits the full pages it was appended to, unless it was stored with room to grow (as
 * action_batch_store does). */
void journal_batch_put_last(journal_batch *b, journal_db db, const void *key, size_t klen,
                            const void *val, size_t vlen);
/* Insert unless the key exists. If it exists the whole batch is rolled back and the commit
 * returns AR_E_EXISTS with the existing value (version byte stripped) copied out: see
 * journal_batch_conflict. */
void journal_batch_put_unless_exists(journal_batch *b, journal_db db, const void *key,
                                     size_t klen, const void *val, size_t vlen);
/* Deleting a key that is not there is not an error. */
void journal_batch_del(journal_batch *b, journal_db db, const void *key, size_t klen);

/* A callback run by the writer thread inside the batch's (nested) transaction, in order with
 * the batch's other operations. Return AR_OK to go on; any other status rolls the batch back
 * and becomes the commit's status (set err for the message). It must not block or call
 * journal_commit. It may run more than once for one commit (when a shared transaction is
 * abandoned — on a full map, or when another batch of the group that ran directly in it
 * failed — the batches are run again, nested or each in a transaction of its own), so
 * anything it does outside the transaction must be safe to repeat. */
typedef int (*journal_apply_fn)(journal_txn *txn, void *arg, ar_error *err);
void journal_batch_apply(journal_batch *b, journal_apply_fn fn, void *arg);
/* journal_batch_apply, but the batch takes arg: free_arg(arg) runs once, when the batch is
 * freed (journal_batch_free), whatever became of it: committed, failed, refused, or never
 * submitted. fn may run several times before that (see above), never after. When the callback
 * cannot be added (b NULL or out of memory; the commit then reports AR_E_NOMEM), free_arg(arg)
 * runs at once. free_arg NULL: nothing is freed (as journal_batch_apply). */
void journal_batch_apply_owned(journal_batch *b, journal_apply_fn fn, void *arg,
                               void (*free_arg)(void *));

/* After a commit that returned AR_E_EXISTS: the index (0-based, in add order) of the conditional
 * put that failed and the value found. Borrowed from the batch. */
int journal_batch_conflict(const journal_batch *b, size_t *op_index, const void **val, size_t *vlen);

/* Inside an apply callback: read and write within the writer's transaction. Values are
 * versioned as above. journal_txn_get's *val is borrowed until the callback returns (a copy:
 * later puts do not change it). journal_txn_del of a missing key returns AR_OK. */
int journal_txn_get(journal_txn *txn, journal_db db, const void *key, size_t klen,
                    const void **val, size_t *vlen);
int journal_txn_put(journal_txn *txn, journal_db db, const void *key, size_t klen,
                    const void *val, size_t vlen);
int journal_txn_del(journal_txn *txn, journal_db db, const void *key, size_t klen);
/* journal_txn_put for a key expected to be the new last key of db: as journal_batch_put_last
 * (MDB_APPEND when it is the last, an ordinary put when not; the same result either way). */
int journal_txn_put_last(journal_txn *txn, journal_db db, const void *key, size_t klen,
                         const void *val, size_t vlen);
/* The last key of db (for sequences such as the audit chain): AR_E_NOTFOUND when empty.
 * *key and *val are borrowed until the callback returns. */
int journal_txn_last(journal_txn *txn, journal_db db, const void **key, size_t *klen,
                     const void **val, size_t *vlen);

/* Inside an apply callback or a hook: a cursor over db in the writer's transaction, walked
 * with journal_cursor_get (values borrowed until the next move or the callback's end) and
 * closed with journal_cursor_close before the callback returns. */
int journal_txn_cursor_open(journal_txn *txn, journal_db db, journal_cursor **out);

/* A hook on one database, to keep derived data in the same transaction as the data it derives
 * from: fn runs inside the writer's transaction after every put of a key in db (val: the value
 * stored, version byte stripped, borrowed for the call) and after every delete (val NULL,
 * vlen 0, whether or not the key was there), from batch operations (put, a conditional put
 * that inserted, del) and from journal_txn_put/journal_txn_del in callbacks alike. It may read
 * and write other databases through txn (not db: no recursion; such a write is refused with
 * AR_E_INVALID, code "journal_hook_recursion", and fails the batch). A status other than AR_OK
 * rolls the batch back like a failing callback (set err), even when the callback whose
 * journal_txn_put set it off ignores that status. Like callbacks, it may run more than
 * once for one commit. One hook per database; set it before the first commit (it is not
 * synchronised with the writer); fn NULL removes it. AR_E_INVALID for a bad db. */
typedef int (*journal_hook_fn)(journal_txn *txn, void *arg, const void *key, size_t klen,
                               const void *val, size_t vlen, ar_error *err);
int journal_set_hook(journal *j, journal_db db, journal_hook_fn fn, void *arg);

/* Commit synchronously: blocks until the batch is durable (or refused). The caller keeps the
 * batch and frees it afterwards (so a conflict's value can still be read). Returns AR_OK, AR_E_EXISTS, AR_E_FULL (code "storage_full"),
 * AR_E_NOMEM, AR_E_CLOSED, AR_E_BUSY (called from a done callback running on the writer) or a
 * callback's status. */
int journal_commit(journal *j, journal_batch *b, ar_error *err);

/* Commit asynchronously: done(arg, status, batch, err) runs once, on the journal's completion
 * thread (or on the writer when nothing else waits for either, see above), after the
 * transaction holding the batch is synced (or the batch is refused). Done callbacks run one at a time and in order: those of one transaction in the
 * order their batches were queued, transactions in commit order. done owns the batch and must
 * free it (journal_batch_free); err is borrowed from the batch. It may call journal_submit (a
 * batch it submits goes to a later transaction; once journal_close began it is refused with
 * AR_E_CLOSED and stays with done), take locks, and do modest work (render a reply, log a
 * line): while it runs, later done callbacks wait, though the writer and journal_commit
 * callers do not. It must not block for long, nor call journal_commit (it would hold up every
 * later done callback for a whole commit; on the writer it is refused with AR_E_BUSY) or
 * journal_close (it waits for this very thread).
 * Returns AR_OK when queued, AR_E_CLOSED after journal_close began (AR_E_NOMEM for a NULL
 * batch, AR_E_INVALID for a NULL done); when it does not return AR_OK, done is not called and
 * the caller keeps the batch. */
typedef void (*journal_done_fn)(void *arg, int status, journal_batch *b, const ar_error *err);
int journal_submit(journal *j, journal_batch *b, journal_done_fn done, void *arg);

/* ---- reads ------------------------------------------------------------------------------ */

/* A read-only snapshot, usable from any thread, owned by the caller: end it with
 * journal_read_end. Values returned from it are borrowed until then. */
int journal_read_begin(journal *j, journal_read **out, ar_error *err);
void journal_read_end(journal_read *r);
int journal_get(journal_read *r, journal_db db, const void *key, size_t klen,
                const void **val, size_t *vlen);

/* Cursor walk (also over a journal_txn_cursor_open cursor). op: JOURNAL_FIRST, JOURNAL_LAST, JOURNAL_NEXT, JOURNAL_PREV, or
 * JOURNAL_SEEK_GE (first key >= *key). Returns AR_OK, AR_E_NOTFOUND at the end, AR_E_FORMAT. */
enum { JOURNAL_FIRST, JOURNAL_LAST, JOURNAL_NEXT, JOURNAL_PREV, JOURNAL_SEEK_GE };
int journal_cursor_open(journal_read *r, journal_db db, journal_cursor **out);
int journal_cursor_get(journal_cursor *c, int op, const void **key, size_t *klen,
                       const void **val, size_t *vlen);
void journal_cursor_close(journal_cursor *c);

/* Statistics for health and benchmarks: write transactions committed (that carried at least
 * one batch), batches committed, the map size and the bytes of it in use, and how many stale
 * reader slots (of processes that died) journal_open cleared. Added at the end: of the
 * batches committed, how many ran directly in the shared transaction and how many in a nested
 * transaction of their own; how many groups were run again with every batch nested (a batch
 * run directly failed); how many futex wakes the writer made for journal_commit callers (at
 * most one per commit: the callers of a group that slept wake one another). Then, over the
 * write transactions committed, the writer's time (monotonic clock, ns) running them (from
 * their begin to their commit: the batches' operations, callbacks and hooks) and committing
 * them (LMDB writing the pages and syncing them: the durable part). */
typedef struct journal_stats {
    uint64_t commits;
    uint64_t batches;
    size_t map_size;
    size_t map_used;
    int stale_readers;
    uint64_t direct_batches;
    uint64_t nested_batches;
    uint64_t regrouped;
    uint64_t wakeups;
    uint64_t run_ns;
    uint64_t commit_ns;
} journal_stats;
void journal_get_stats(journal *j, journal_stats *out);

/* ---- backup ----------------------------------------------------------------------------- */

/* Write a consistent, compacted copy of the environment to dest_dir/data.mdb (mode 0600,
 * synced to disk): LMDB's compacting copy (MDB_CP_COMPACT), which reads inside one read-only
 * transaction, so it never blocks writers. Safe while other threads of this process, and other
 * processes (the running daemon, when aioctl calls it), keep committing: the copy holds exactly
 * what was committed when its read transaction began. The copy opens with journal_open like any
 * journal directory (it has no lock file; one is made at open).
 *
 * dest_dir (borrowed) must not exist, or be an empty directory; it is created 0700 (missing
 * parents too). Otherwise AR_E_INVALID, code "backup_target", naming it. LMDB or system errors
 * are AR_E_IO, code "backup_failed"; after a failure the partial copy is removed, and dest_dir
 * too when this call created it. Uses one reader slot while it runs. */
int journal_backup(journal *j, const char *dest_dir, ar_error *err);

#endif
