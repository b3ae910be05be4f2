/*
 * journal.c - the durable store: LMDB with one writer thread and group commit (see journal.h).
 *
 * On disk: one LMDB environment in opts->dir with the named databases listed in db_names.
 * Every value is [1 byte record format version][caller bytes]. The schema version is the value
 * of key "schema_version" in "meta", stored in that same record format: [version byte][uint32
 * little-endian], written when the environment is created.
 *
 * The writer thread takes every batch queued at that moment, runs them all in a single write
 * transaction and commits (and syncs) that transaction once, wakes the journal_commit callers
 * of that group, and hands the journal_submit batches to the completion thread, which runs
 * their done callbacks (in order) while the writer goes on with the next transaction.
 *
 * Inside the shared transaction, a batch that cannot fail on its own account in the ordinary
 * course (only plain puts and deletes, no conditional put, no callback) runs directly in it: a
 * nested transaction per batch costs LMDB a dirty-page list and a merge. A batch that may
 * (conditional puts, callbacks) runs in a nested transaction of its own, so that its failure
 * rolls back that batch only. When a batch run directly fails after all (a hook's error, a map
 * that is full), the shared transaction is abandoned and the group is run again with every
 * batch nested (the contract lets callbacks and hooks run more than once). A group of one
 * batch runs directly whatever it holds: its failure aborts the transaction, which holds
 * nothing else. A failure that may spoil the whole transaction (map full, transaction full,
 * I/O) abandons it, and the batches are run again one transaction each, so the ones that fit
 * still commit and only the failing ones get the error.
 *
 * Puts of keys the caller expects to be the new last key of their database (*_put_last: audit
 * seqs) try MDB_APPEND first: the key then goes to the end without splitting the last page in
 * two, so the pages of such a database fill up instead of keeping about half their room (one
 * record of 1.5 KB per page). A key that is not the last makes MDB_APPEND fail with
 * MDB_KEYEXIST before anything changes (mdb_cursor_put returns before it touches a page, and
 * the transaction is not marked failed), and the put is made again without it. Ordinary puts
 * do not: a record that grows after it was created (an action's) would find its full page
 * and split it, which costs more than the room an append saved.
 *
 * A journal_commit caller sleeps on a futex word in its own batch (wait_state), and only the
 * callers of the group that just committed are woken: the writer wakes one of them, which
 * wakes two more, and so on (a binary tree, see wait_state), so that the wakes, a system call
 * and a context switch each, are not all made by the writer.
 *
 * A database's hook runs right after each write into it, in the same (shared or nested)
 * transaction. What
 * it reads with journal_txn_get is freed after the batch operation that set it off, or with the
 * callback's own scratch when a journal_txn_put/del of a callback did (the callback's borrowed
 * values must outlive the put). Its first failure is kept in the journal_txn and fails the
 * batch when that operation or callback ends, whatever the callback made of the status.
 */
#include "journal.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *const db_names[JDB_COUNT] = {
    [JDB_META] = "meta",
    [JDB_ACTIONS] = "actions",
    [JDB_IDEMPOTENCY] = "idempotency",
    [JDB_QUEUE] = "queue",
    [JDB_CHECKPOINTS] = "checkpoints",
    [JDB_APPROVALS] = "approvals",
    [JDB_MEMORY] = "memory",
    [JDB_AUDIT] = "audit",
    [JDB_CACHE] = "cache",
    [JDB_TOKENS] = "tokens",
    [JDB_TOKEN_NAMES] = "token_names",
    [JDB_CONNECTORS] = "connectors",
    [JDB_COUNTERS] = "counters",
    [JDB_SECRETS] = "secrets",
    [JDB_AUDIT_INDEX] = "audit_index",
};

#define SCHEMA_KEY "schema_version"
#define SCHEMA_RECORD_LEN 5 /* version byte + uint32 LE */
#define DEFAULT_MAP_SIZE_MB 1024
#define DEFAULT_MAX_READERS 256
#define MIB ((size_t)1 << 20)
/* How many nice levels above the thread that opened the journal the writer asks to run (see
 * raise_priority). */
#define WRITER_NICE_BOOST 10

struct journal {
    MDB_env *env;
    MDB_dbi dbi[JDB_COUNT];
    char *dir;
    size_t map_size_mb;
    int max_readers;
    int stale_readers;

    int max_key;              /* LMDB's longest key: a longer one fails its batch */

    pthread_t writer;
    pthread_mutex_t mu;       /* guards everything below, up to the completion queue */
    pthread_cond_t work_cv;   /* the writer waits here for batches or closing */
    journal_batch *head, *tail;
    bool closing;
    uint64_t commits, batches, direct, nested, regrouped, wakeups;
    uint64_t run_ns, commit_ns; /* the writer's time in the transactions it committed */

    /* The writer's own: the journal_commit batches of the group it reports (a wake tree). */
    journal_batch **sync;
    bool *slept;
    size_t sync_cap;

    /* Committed (or refused) batches on their way to the completion thread, in order. */
    pthread_t completer;
    bool completer_started;
    pthread_mutex_t cmu;      /* guards the completion queue */
    pthread_cond_t ccv;       /* the completion thread waits here */
    journal_batch *chead, *ctail;
    bool reporting;           /* (cmu) the completion thread is running done callbacks */
    bool writer_gone;         /* the writer has exited: drain and stop */

    /* Hooks per database (journal_set_hook): set before the first commit, read only by the
     * writer thread, so they need no lock. */
    struct {
        journal_hook_fn fn;
        void *arg;
    } hooks[JDB_COUNT];
};

enum op_kind { OP_PUT, OP_PUT_LAST, OP_PUT_NEW, OP_DEL, OP_APPLY };

struct op {
    enum op_kind kind;
    journal_db db;
    unsigned char *buf;  /* the key, then the stored value (version byte + caller bytes) */
    size_t klen, vlen;   /* vlen counts the version byte; 0 for deletes */
    journal_apply_fn fn;
    void *arg;
    void (*free_arg)(void *); /* journal_batch_apply_owned: the batch owns arg */
};

struct journal_batch {
    struct op *ops;
    size_t n, cap;
    bool nomem;          /* an add failed to allocate: the commit reports AR_E_NOMEM */
    bool bad_db;         /* an add named no database: the commit reports AR_E_INVALID */

    /* Outcome, written by the writer thread. */
    int status;
    ar_error err;
    bool has_conflict;
    size_t conflict_index;
    unsigned char *conflict_val;
    size_t conflict_vlen;

    /* Queueing. */
    journal_batch *next;
    journal_done_fn done; /* NULL: a journal_commit caller waits on wait_state */
    void *done_arg;
    _Atomic uint32_t wait_state; /* journal_commit: WAIT_PENDING, _SLEEPING, _FINISHED */
    journal_batch *wake[2];      /* journal_commit: the callers this one wakes once finished */
    unsigned wake_mask;          /* bit k: wake[k]'s caller was asleep */
};

/* wait_state: the futex word a journal_commit caller sleeps on. The writer sets
 * WAIT_FINISHED (after the outcome fields, release); a caller that said it sleeps
 * (WAIT_SLEEPING) needs a futex wake. Wakes cost the waker a system call and a context switch
 * on the other side, so the writer makes only one per group: the callers of a group form a
 * binary tree (wake[], in queue order), states are set leaves first, the writer wakes the root,
 * and every caller, once it is finished, wakes its two children (those that slept). A caller
 * returns only once its own state is WAIT_FINISHED, which its children's were before it, so no
 * wake is early; every caller of the tree leaves wait_finished (woken by its parent, or
 * finding WAIT_FINISHED by itself) and so passes its wakes on. The caller may free the batch
 * as soon as it sees WAIT_FINISHED, so a wake can reach memory already freed: a futex wake on
 * such an address does nothing, or at worst wakes another futex waiter there spuriously,
 * which every futex waiter (ours, and glibc's) tolerates by checking its condition again. */
enum { WAIT_PENDING = 0, WAIT_SLEEPING = 1, WAIT_FINISHED = 2 };

/* Copies handed out by journal_txn_get/last, freed when the callback returns (LMDB's own
 * pointers may change under a later put in the same transaction). */
struct scratch {
    struct scratch *next;
    unsigned char data[];
};

struct journal_txn {
    journal *j;
    MDB_txn *txn;          /* the batch's nested transaction */
    struct scratch *scratch;
    int spoiled;           /* first LMDB error after which this transaction may not commit */
    uint32_t hooks_running; /* bit per db whose hook is on the stack: its writes are refused */
    int hook_status;       /* first hook failure in this batch (AR_OK: none) ... */
    ar_error hook_err;     /* ... and its error */
};

struct journal_read {
    journal *j;
    MDB_txn *txn;
};

/* A read cursor hands out LMDB's pointers (stable for the read snapshot). A cursor in the
 * writer's transaction (txn != NULL) copies key and value into buf instead: a write made between
 * two moves may move or free the pages LMDB's pointers point into. */
struct journal_cursor {
    MDB_cursor *cur;
    journal_txn *txn;
    unsigned char *buf;
    size_t cap;
};

/* ---- errors ----------------------------------------------------------------------------- */

static int lmdb_error(const journal *j, int rc, ar_error *err)
{
    switch (rc) {
    case MDB_MAP_FULL:
        return ar_error_set(err, AR_E_FULL, "storage_full",
                            "the journal is full (map_size_mb = %zu): raise map_size_mb in the config",
                            j->map_size_mb);
    case ENOSPC:
        return ar_error_set(err, AR_E_FULL, "storage_full",
                            "the disk holding the journal %s is full", j->dir);
    case MDB_TXN_FULL:
        return ar_error_set(err, AR_E_FULL, "txn_full",
                            "a journal batch changes more pages than one transaction can hold: "
                            "split it into smaller batches");
    case MDB_KEYEXIST:
        return ar_error_set(err, AR_E_EXISTS, "already_exists", "the key is already present");
    case MDB_NOTFOUND:
        return ar_error_set(err, AR_E_NOTFOUND, "not_found", "no such key in the journal");
    case MDB_BAD_VALSIZE:
    case EINVAL:
        return ar_error_set(err, AR_E_INVALID, "journal_invalid_key",
                            "a journal key is empty or longer than %d bytes",
                            mdb_env_get_maxkeysize(j->env));
    case MDB_READERS_FULL:
        return ar_error_set(err, AR_E_BUSY, "journal_readers_full",
                            "all %d journal reader slots are in use: raise max_readers",
                            j->max_readers);
    case MDB_MAP_RESIZED:
        return ar_error_set(err, AR_E_IO, "journal_resized",
                            "another process grew the journal %s: restart to use the new size",
                            j->dir);
    case ENOMEM:
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in the journal");
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return ar_error_set(err, AR_E_FORMAT, "journal_format",
                            "%s does not hold an LMDB environment this build can read: %s",
                            j->dir, mdb_strerror(rc));
    default:
        return ar_error_set(err, AR_E_IO, "journal_io", "journal %s: %s", j->dir,
                            mdb_strerror(rc));
    }
}

/* Errors that leave the transaction usable: they belong to one operation. Anything else (map
 * or transaction full, I/O, corruption) may have flagged the transaction as failed. */
static bool spoils_txn(int rc)
{
    return rc != 0 && rc != MDB_KEYEXIST && rc != MDB_NOTFOUND && rc != MDB_BAD_VALSIZE &&
           rc != EINVAL;
}

static bool valid_db(journal_db db)
{
    return (int)db >= 0 && db < JDB_COUNT;
}

/* journal_txn.hooks_running has one bit per database. */
_Static_assert(JDB_COUNT <= 32, "hooks_running is a 32-bit mask");

/* Strip and check the record format byte. */
static int decode(const MDB_val *v, const void **val, size_t *vlen)
{
    const unsigned char *p = v->mv_data;
    if (v->mv_size < 1 || p[0] == 0 || p[0] > JOURNAL_RECORD_VERSION)
        return AR_E_FORMAT;
    if (val)
        *val = p + 1;
    if (vlen)
        *vlen = v->mv_size - 1;
    return AR_OK;
}

static int record_format_error(ar_error *err)
{
    return ar_error_set(err, AR_E_FORMAT, "record_format",
                        "a journal record has an unknown format version (this build reads %d): "
                        "it was written by a newer aiorun or is damaged",
                        JOURNAL_RECORD_VERSION);
}

/* ---- open ------------------------------------------------------------------------------- */

/* mkdir -p, each missing level 0700. */
static int make_dir(const char *dir, ar_error *err)
{
    char path[PATH_MAX];
    if (!dir || !*dir || strlen(dir) >= sizeof path)
        return ar_error_set(err, AR_E_INVALID, "invalid_config",
                            "the journal directory is empty or too long");
    strcpy(path, dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return ar_error_set(err, AR_E_IO, "journal_io", "cannot create %s: %s", path,
                                strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return ar_error_set(err, AR_E_IO, "journal_io", "cannot create %s: %s", path,
                            strerror(errno));
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return ar_error_set(err, AR_E_IO, "journal_io", "%s is not a directory", path);
    return AR_OK;
}

/* LMDB refused to open the environment with these settings (EINVAL, or ENOMEM when the map
 * does not fit the address space): say which. */
static int env_refused(const journal *j, int rc, ar_error *err)
{
    return ar_error_set(err, AR_E_INVALID, "journal_open",
                        "cannot open the journal %s with map_size_mb = %zu and %d readers (%s): "
                        "lower map_size_mb if the address space is limited (ulimit -v, valgrind)",
                        j->dir, j->map_size_mb, j->max_readers, mdb_strerror(rc));
}

static int env_setup(journal *j, ar_error *err)
{
    int rc = mdb_env_create(&j->env);
    if (rc)
        return lmdb_error(j, rc, err);
    /* EINVAL or ENOMEM here are about the environment and its map, not a key or a batch (what
     * lmdb_error would say). */
    if ((rc = mdb_env_set_maxdbs(j->env, JDB_COUNT)) ||
        (rc = mdb_env_set_mapsize(j->env, j->map_size_mb * MIB)) ||
        (rc = mdb_env_set_maxreaders(j->env, (unsigned)j->max_readers)))
        return rc == EINVAL || rc == ENOMEM ? env_refused(j, rc, err) : lmdb_error(j, rc, err);
    /* No MDB_NOSYNC / MDB_NOMETASYNC: a commit that returned survives a power cut. MDB_NOTLS:
     * a read transaction may be begun and ended by pooled threads. */
    if ((rc = mdb_env_open(j->env, j->dir, MDB_NOTLS, 0600)))
        return rc == EINVAL || rc == ENOMEM ? env_refused(j, rc, err) : lmdb_error(j, rc, err);
    /* Reader slots of processes that died (kill -9) pin old pages; free them. */
    if ((rc = mdb_reader_check(j->env, &j->stale_readers)))
        return lmdb_error(j, rc, err);
    return AR_OK;
}

static int write_schema(journal *j, MDB_txn *txn, ar_error *err)
{
    unsigned char rec[SCHEMA_RECORD_LEN] = { JOURNAL_RECORD_VERSION };
    uint32_t v = JOURNAL_SCHEMA_VERSION;
    for (int i = 0; i < 4; i++)
        rec[1 + i] = (unsigned char)(v >> (8 * i));
    MDB_val k = { strlen(SCHEMA_KEY), SCHEMA_KEY }, d = { sizeof rec, rec };
    int rc = mdb_put(txn, j->dbi[JDB_META], &k, &d, 0);
    return rc ? lmdb_error(j, rc, err) : AR_OK;
}

static int check_schema(journal *j, MDB_txn *txn, ar_error *err)
{
    MDB_val k = { strlen(SCHEMA_KEY), SCHEMA_KEY }, d;
    int rc = mdb_get(txn, j->dbi[JDB_META], &k, &d);
    if (rc == MDB_NOTFOUND)
        return write_schema(j, txn, err); /* a fresh environment */
    if (rc)
        return lmdb_error(j, rc, err);
    const unsigned char *p = d.mv_data;
    if (d.mv_size >= 1 && p[0] > JOURNAL_RECORD_VERSION)
        return ar_error_set(err, AR_E_FORMAT, "journal_format",
                            "the journal in %s uses record format %u, newer than the %d this "
                            "build reads: upgrade aiorun or use another data directory",
                            j->dir, p[0], JOURNAL_RECORD_VERSION);
    if (d.mv_size != SCHEMA_RECORD_LEN || p[0] == 0)
        return ar_error_set(err, AR_E_FORMAT, "journal_format",
                            "the journal in %s has a damaged schema version record", j->dir);
    uint32_t version = 0;
    for (int i = 0; i < 4; i++)
        version |= (uint32_t)p[1 + i] << (8 * i);
    if (version > JOURNAL_SCHEMA_VERSION)
        return ar_error_set(err, AR_E_FORMAT, "journal_format",
                            "the journal in %s has schema version %u, newer than version %d "
                            "that this build understands: upgrade aiorun or use another data "
                            "directory",
                            j->dir, version, JOURNAL_SCHEMA_VERSION);
    if (version < 1)
        return ar_error_set(err, AR_E_FORMAT, "journal_format",
                            "the journal in %s has an invalid schema version 0", j->dir);
    /* Version 1 is the first schema: there is nothing older to migrate yet. */
    return AR_OK;
}

/* Open (create) the named databases and check the schema, in one write transaction. */
static int open_databases(journal *j, ar_error *err)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(j->env, NULL, 0, &txn);
    if (rc)
        return lmdb_error(j, rc, err);
    int status = AR_OK;
    /* MDB_CREATE: a database added since the environment was made (e.g. "counters") is
     * created here, empty. */
    for (int i = 0; i < JDB_COUNT; i++) {
        if (!db_names[i]) { /* a NULL name would open LMDB's main database: a build bug */
            status = ar_error_set(err, AR_E_FAIL, "journal_internal",
                                  "journal database %d has no name", i);
            goto fail;
        }
        if ((rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &j->dbi[i]))) {
            status = lmdb_error(j, rc, err);
            goto fail;
        }
    }
    if ((status = check_schema(j, txn, err)) != AR_OK)
        goto fail;
    if ((rc = mdb_txn_commit(txn)))
        return lmdb_error(j, rc, err);
    return AR_OK;
fail:
    mdb_txn_abort(txn);
    return status;
}

static void *writer_main(void *arg);
static void *completer_main(void *arg);
static void stop_completer(journal *j);

int journal_open(const journal_opts *opts, journal **out, ar_error *err)
{
    *out = NULL;
    if (!opts || (opts->map_size_mb && opts->map_size_mb > SIZE_MAX / MIB) ||
        opts->max_readers < 0)
        return ar_error_set(err, AR_E_INVALID, "invalid_config",
                            "journal options: map_size_mb or max_readers out of range");
    int status = make_dir(opts->dir, err);
    if (status != AR_OK)
        return status;
    journal *j = calloc(1, sizeof *j);
    if (!j || !(j->dir = strdup(opts->dir))) {
        free(j);
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory opening the journal");
    }
    j->map_size_mb = opts->map_size_mb ? opts->map_size_mb : DEFAULT_MAP_SIZE_MB;
    j->max_readers = opts->max_readers ? opts->max_readers : DEFAULT_MAX_READERS;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->work_cv, NULL);
    pthread_mutex_init(&j->cmu, NULL);
    pthread_cond_init(&j->ccv, NULL);

    ar_error local;
    if (!err)
        err = &local;
    if ((status = env_setup(j, err)) != AR_OK)
        goto fail;
    if ((status = open_databases(j, err)) != AR_OK)
        goto fail;
    j->max_key = mdb_env_get_maxkeysize(j->env);
    if (pthread_create(&j->completer, NULL, completer_main, j) != 0) {
        status = ar_error_set(err, AR_E_FAIL, "journal_thread",
                              "cannot start the journal completion thread");
        goto fail;
    }
    j->completer_started = true;
    if (pthread_create(&j->writer, NULL, writer_main, j) != 0) {
        status = ar_error_set(err, AR_E_FAIL, "journal_thread",
                              "cannot start the journal writer thread");
        goto fail;
    }
    ar_error_clear(err);
    *out = j;
    return AR_OK;
fail:
    if (j->completer_started)
        stop_completer(j);
    if (j->env)
        mdb_env_close(j->env);
    pthread_cond_destroy(&j->ccv);
    pthread_mutex_destroy(&j->cmu);
    pthread_cond_destroy(&j->work_cv);
    pthread_mutex_destroy(&j->mu);
    free(j->dir);
    free(j);
    return status;
}

void journal_close(journal *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    j->closing = true;
    pthread_cond_signal(&j->work_cv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->writer, NULL); /* the writer drains the queue before it exits */
    stop_completer(j);             /* and the completion thread reports all it was handed */
    mdb_env_close(j->env);
    free(j->sync);
    free(j->slept);
    pthread_cond_destroy(&j->ccv);
    pthread_mutex_destroy(&j->cmu);
    pthread_cond_destroy(&j->work_cv);
    pthread_mutex_destroy(&j->mu);
    free(j->dir);
    free(j);
}

/* ---- batches ---------------------------------------------------------------------------- */

journal_batch *journal_batch_new(void)
{
    return calloc(1, sizeof(journal_batch));
}

static void reset_outcome(journal_batch *b)
{
    b->status = AR_OK;
    ar_error_clear(&b->err);
    free(b->conflict_val);
    b->conflict_val = NULL;
    b->conflict_vlen = 0;
    b->conflict_index = 0;
    b->has_conflict = false;
}

void journal_batch_free(journal_batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->ops[i].buf);
        if (b->ops[i].free_arg)
            b->ops[i].free_arg(b->ops[i].arg);
    }
    free(b->ops);
    free(b->conflict_val);
    free(b);
}

/* Append an op; NULL (and the failure remembered) when out of memory. */
static struct op *add_op(journal_batch *b, enum op_kind kind, journal_db db)
{
    if (!b || b->nomem)
        return NULL;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        struct op *ops = realloc(b->ops, cap * sizeof *ops);
        if (!ops) {
            b->nomem = true;
            return NULL;
        }
        b->ops = ops;
        b->cap = cap;
    }
    if (kind != OP_APPLY && !valid_db(db))
        b->bad_db = true;
    struct op *op = &b->ops[b->n++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->db = db;
    return op;
}

/* Copy the key and (for puts) the versioned value into one buffer. */
static void fill_op(journal_batch *b, struct op *op, const void *key, size_t klen,
                    const void *val, size_t vlen, bool has_value)
{
    size_t stored = has_value ? vlen + 1 : 0;
    /* Sizes that cannot be allocated count as out of memory. The spare byte gives an empty key
     * and value a buffer too. */
    if ((has_value && vlen >= SIZE_MAX - 1) || klen > SIZE_MAX - 1 - stored ||
        !(op->buf = malloc(klen + stored + 1))) {
        b->nomem = true;
        return;
    }
    if (klen)
        memcpy(op->buf, key, klen);
    op->klen = klen;
    if (has_value) {
        op->buf[klen] = JOURNAL_RECORD_VERSION;
        if (vlen)
            memcpy(op->buf + klen + 1, val, vlen);
        op->vlen = stored;
    }
}

static void add_put(journal_batch *b, enum op_kind kind, journal_db db, const void *key,
                    size_t klen, const void *val, size_t vlen)
{
    struct op *op = add_op(b, kind, db);
    if (op)
        fill_op(b, op, key, klen, val, vlen, true);
}

void journal_batch_put(journal_batch *b, journal_db db, const void *key, size_t klen,
                       const void *val, size_t vlen)
{
    add_put(b, OP_PUT, db, key, klen, val, vlen);
}

void journal_batch_put_last(journal_batch *b, journal_db db, const void *key, size_t klen,
                            const void *val, size_t vlen)
{
    add_put(b, OP_PUT_LAST, db, key, klen, val, vlen);
}

void journal_batch_put_unless_exists(journal_batch *b, journal_db db, const void *key,
                                     size_t klen, const void *val, size_t vlen)
{
    add_put(b, OP_PUT_NEW, db, key, klen, val, vlen);
}

void journal_batch_del(journal_batch *b, journal_db db, const void *key, size_t klen)
{
    struct op *op = add_op(b, OP_DEL, db);
    if (op)
        fill_op(b, op, key, klen, NULL, 0, false);
}

void journal_batch_apply(journal_batch *b, journal_apply_fn fn, void *arg)
{
    struct op *op = add_op(b, OP_APPLY, JDB_META);
    if (op) {
        op->fn = fn;
        op->arg = arg;
    }
}

void journal_batch_apply_owned(journal_batch *b, journal_apply_fn fn, void *arg,
                               void (*free_arg)(void *))
{
    struct op *op = add_op(b, OP_APPLY, JDB_META);
    if (!op) { /* the batch fails with AR_E_NOMEM (or there is none): arg is ours to free */
        if (free_arg)
            free_arg(arg);
        return;
    }
    op->fn = fn;
    op->arg = arg;
    op->free_arg = free_arg;
}

int journal_batch_conflict(const journal_batch *b, size_t *op_index, const void **val,
                           size_t *vlen)
{
    if (!b || !b->has_conflict)
        return AR_E_NOTFOUND;
    if (op_index)
        *op_index = b->conflict_index;
    if (val)
        *val = b->conflict_val;
    if (vlen)
        *vlen = b->conflict_vlen;
    return AR_OK;
}

/* ---- inside the writer's transaction ---------------------------------------------------- */

/* mdb_put, trying MDB_APPEND first (see the top of this file): a key that is not the new last
 * key gets MDB_KEYEXIST from it with nothing changed, and is put again the ordinary way. */
static int put_appending(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, MDB_val *d, unsigned flags)
{
    MDB_val first = *d;
    int rc = mdb_put(txn, dbi, k, &first, flags | MDB_APPEND);
    if (rc != MDB_KEYEXIST) {
        *d = first;
        return rc;
    }
    return mdb_put(txn, dbi, k, d, flags);
}

static void note_lmdb(journal_txn *t, int rc)
{
    if (spoils_txn(rc) && !t->spoiled)
        t->spoiled = rc;
}

static const void *keep(journal_txn *t, const void *p, size_t len)
{
    struct scratch *s = malloc(sizeof *s + len + 1);
    if (!s)
        return NULL;
    if (len)
        memcpy(s->data, p, len);
    s->next = t->scratch;
    t->scratch = s;
    return s->data;
}

static void free_scratch(journal_txn *t)
{
    while (t->scratch) {
        struct scratch *next = t->scratch->next;
        free(t->scratch);
        t->scratch = next;
    }
}

/* ---- hooks ------------------------------------------------------------------------------ */

int journal_set_hook(journal *j, journal_db db, journal_hook_fn fn, void *arg)
{
    if (!j || !valid_db(db))
        return AR_E_INVALID;
    j->hooks[db].fn = fn;
    j->hooks[db].arg = fn ? arg : NULL;
    return AR_OK;
}

/* Keep the first hook failure of the batch: the batch picks it up when the operation or the
 * callback that caused it ends (finish_hooks), so a callback that ignores the status of its
 * journal_txn_put still has its batch rolled back. */
static void note_hook_failure(journal_txn *t, int status, const ar_error *err)
{
    if (t->hook_status != AR_OK)
        return;
    t->hook_status = status;
    if (err && err->code[0])
        t->hook_err = *err;
    else if (status == AR_E_FORMAT)
        record_format_error(&t->hook_err);
    else
        ar_error_set(&t->hook_err, status, "journal_hook_failed",
                     "a journal hook failed with status %d", status);
}

/* Run db's hook, if any, after a put (val) or a delete (val NULL) of key. While it runs, writes
 * into db are refused (see journal_txn_put): a hook keeps derived data elsewhere. Returns the
 * hook's status, or that of a hook it set off in turn when that one failed. */
static int call_hook(journal_txn *t, journal_db db, const void *key, size_t klen,
                     const void *val, size_t vlen)
{
    journal_hook_fn fn = t->j->hooks[db].fn;
    if (!fn)
        return AR_OK;
    ar_error err;
    ar_error_clear(&err);
    t->hooks_running |= 1u << db;
    int status = fn(t, t->j->hooks[db].arg, key, klen, val, vlen, &err);
    t->hooks_running &= ~(1u << db);
    if (status != AR_OK)
        note_hook_failure(t, status, &err);
    return status != AR_OK ? status : t->hook_status;
}

/* A write into a database whose hook is running: refused, and the batch fails with it. */
static int hook_recursion(journal_txn *t, journal_db db)
{
    ar_error err;
    ar_error_set(&err, AR_E_INVALID, "journal_hook_recursion",
                 "a hook on the journal database \"%s\" wrote into that same database",
                 db_names[db]);
    note_hook_failure(t, AR_E_INVALID, &err);
    return AR_E_INVALID;
}

/* After an operation or a callback: the status a spoiled transaction or a failed hook imposes
 * on the batch (with b->err filled), or AR_OK. */
static int finish_hooks(journal_txn *t, journal_batch *b)
{
    if (t->spoiled) /* whatever the hook said, its transaction cannot commit */
        return lmdb_error(t->j, t->spoiled, &b->err);
    if (t->hook_status != AR_OK) {
        b->err = t->hook_err;
        return t->hook_status;
    }
    return AR_OK;
}

int journal_txn_get(journal_txn *txn, journal_db db, const void *key, size_t klen,
                    const void **val, size_t *vlen)
{
    if (!txn || !valid_db(db))
        return AR_E_INVALID;
    MDB_val k = { klen, (void *)key }, d;
    int rc = mdb_get(txn->txn, txn->j->dbi[db], &k, &d);
    if (rc) {
        note_lmdb(txn, rc);
        return lmdb_error(txn->j, rc, NULL);
    }
    const void *p;
    size_t n;
    if (decode(&d, &p, &n) != AR_OK)
        return AR_E_FORMAT;
    const void *copy = keep(txn, p, n);
    if (!copy)
        return AR_E_NOMEM;
    if (val)
        *val = copy;
    if (vlen)
        *vlen = n;
    return AR_OK;
}

static int txn_put(journal_txn *txn, journal_db db, const void *key, size_t klen,
                   const void *val, size_t vlen, bool last)
{
    if (!txn || !valid_db(db) || vlen == SIZE_MAX)
        return AR_E_INVALID;
    if (txn->hooks_running & (1u << db))
        return hook_recursion(txn, db);
    MDB_val k = { klen, (void *)key }, d = { vlen + 1, NULL };
    MDB_dbi dbi = txn->j->dbi[db];
    int rc = last ? put_appending(txn->txn, dbi, &k, &d, MDB_RESERVE)
                  : mdb_put(txn->txn, dbi, &k, &d, MDB_RESERVE);
    if (rc) {
        note_lmdb(txn, rc);
        return lmdb_error(txn->j, rc, NULL);
    }
    unsigned char *p = d.mv_data;
    p[0] = JOURNAL_RECORD_VERSION;
    if (vlen)
        memcpy(p + 1, val, vlen);
    /* The hook gets the caller's bytes, not p: a write the hook makes may move LMDB's dirty
     * pages. Its scratch (journal_txn_get) stays until the callback ends, with the callback's. */
    return call_hook(txn, db, key, klen, vlen ? val : (const void *)"", vlen);
}

int journal_txn_put(journal_txn *txn, journal_db db, const void *key, size_t klen,
                    const void *val, size_t vlen)
{
    return txn_put(txn, db, key, klen, val, vlen, false);
}

int journal_txn_put_last(journal_txn *txn, journal_db db, const void *key, size_t klen,
                         const void *val, size_t vlen)
{
    return txn_put(txn, db, key, klen, val, vlen, true);
}

int journal_txn_del(journal_txn *txn, journal_db db, const void *key, size_t klen)
{
    if (!txn || !valid_db(db))
        return AR_E_INVALID;
    if (txn->hooks_running & (1u << db))
        return hook_recursion(txn, db);
    MDB_val k = { klen, (void *)key };
    int rc = mdb_del(txn->txn, txn->j->dbi[db], &k, NULL);
    if (rc && rc != MDB_NOTFOUND) {
        note_lmdb(txn, rc);
        return lmdb_error(txn->j, rc, NULL);
    }
    return call_hook(txn, db, key, klen, NULL, 0);
}

int journal_txn_last(journal_txn *txn, journal_db db, const void **key, size_t *klen,
                     const void **val, size_t *vlen)
{
    if (!txn || !valid_db(db))
        return AR_E_INVALID;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn->txn, txn->j->dbi[db], &cur);
    if (rc) {
        note_lmdb(txn, rc);
        return lmdb_error(txn->j, rc, NULL);
    }
    MDB_val k, d;
    rc = mdb_cursor_get(cur, &k, &d, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc) {
        note_lmdb(txn, rc);
        return lmdb_error(txn->j, rc, NULL);
    }
    const void *p;
    size_t n;
    if (decode(&d, &p, &n) != AR_OK)
        return AR_E_FORMAT;
    const void *kcopy = keep(txn, k.mv_data, k.mv_size), *vcopy = keep(txn, p, n);
    if (!kcopy || !vcopy)
        return AR_E_NOMEM;
    if (key)
        *key = kcopy;
    if (klen)
        *klen = k.mv_size;
    if (val)
        *val = vcopy;
    if (vlen)
        *vlen = n;
    return AR_OK;
}

/* ---- the writer ------------------------------------------------------------------------- */

static int record_conflict(journal_txn *t, journal_batch *b, size_t index, const MDB_val *found)
{
    const void *p;
    size_t n;
    if (decode(found, &p, &n) != AR_OK)
        return record_format_error(&b->err);
    if (!(b->conflict_val = malloc(n + 1)))
        return lmdb_error(t->j, ENOMEM, &b->err);
    if (n)
        memcpy(b->conflict_val, p, n);
    b->conflict_vlen = n;
    b->conflict_index = index;
    b->has_conflict = true;
    return ar_error_set(&b->err, AR_E_EXISTS, "already_exists",
                        "a conditional insert (operation %zu of the batch) found its key present",
                        index);
}

static int run_callback(journal_txn *t, journal_batch *b, const struct op *op)
{
    ar_error_clear(&b->err);
    int status = op->fn(t, op->arg, &b->err);
    free_scratch(t);
    /* A spoiled transaction, then a failed hook (set off by the callback's writes), outrank
     * whatever the callback returned. */
    int imposed = finish_hooks(t, b);
    if (imposed != AR_OK)
        return imposed;
    if (status != AR_OK && !b->err.code[0]) {
        if (status == AR_E_FORMAT)
            return record_format_error(&b->err);
        return ar_error_set(&b->err, status, "journal_apply_failed",
                            "a journal callback failed with status %d", status);
    }
    return status;
}

static int run_op(journal_txn *t, journal_batch *b, size_t index)
{
    const struct op *op = &b->ops[index];
    if (op->kind == OP_APPLY)
        return run_callback(t, b, op);
    MDB_dbi dbi = t->j->dbi[op->db];
    MDB_val k = { op->klen, op->buf }, d = { op->vlen, op->buf + op->klen };
    int rc;
    switch (op->kind) {
    case OP_PUT:
        rc = mdb_put(t->txn, dbi, &k, &d, 0);
        break;
    case OP_PUT_LAST:
        rc = put_appending(t->txn, dbi, &k, &d, 0);
        break;
    case OP_PUT_NEW:
        rc = mdb_put(t->txn, dbi, &k, &d, MDB_NOOVERWRITE);
        if (rc == MDB_KEYEXIST)
            return record_conflict(t, b, index, &d);
        break;
    default: /* OP_DEL: a missing key is already deleted */
        rc = mdb_del(t->txn, dbi, &k, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
        break;
    }
    if (rc) {
        note_lmdb(t, rc);
        return lmdb_error(t->j, rc, &b->err);
    }
    if (!t->j->hooks[op->db].fn)
        return AR_OK;
    if (op->kind == OP_DEL)
        call_hook(t, op->db, op->buf, op->klen, NULL, 0);
    else
        call_hook(t, op->db, op->buf, op->klen, op->buf + op->klen + 1, op->vlen - 1);
    free_scratch(t); /* what the hook read; no callback holds borrowed values here */
    return finish_hooks(t, b);
}

/* A batch that was built without error: AR_OK, or its status (b->err filled). */
static int check_built(journal_batch *b)
{
    if (b->nomem)
        return ar_error_set(&b->err, AR_E_NOMEM, "out_of_memory",
                            "out of memory while building a journal batch");
    if (b->bad_db)
        return ar_error_set(&b->err, AR_E_INVALID, "journal_invalid_db",
                            "a journal batch names an unknown database");
    return AR_OK;
}

/* Run b's operations in txn (whatever it is: the shared transaction or a nested one of its
 * own); its status goes to b->status/err. Returns the LMDB error that spoiled txn, or 0. On
 * failure txn holds part of the batch: the caller aborts it. */
static int run_ops(journal *j, MDB_txn *txn, journal_batch *b)
{
    journal_txn t = { .j = j, .txn = txn };
    int status = AR_OK;
    for (size_t i = 0; i < b->n && status == AR_OK; i++)
        status = run_op(&t, b, i);
    b->status = status;
    if (status == AR_OK)
        ar_error_clear(&b->err);
    return t.spoiled;
}

/* Run one batch in a nested transaction of parent; its outcome goes to b->status/err.
 * Returns the LMDB error that spoiled parent, or 0. */
static int run_batch(journal *j, MDB_txn *parent, journal_batch *b)
{
    reset_outcome(b);
    if ((b->status = check_built(b)) != AR_OK)
        return 0;
    MDB_txn *txn;
    int rc = mdb_txn_begin(j->env, parent, 0, &txn);
    if (rc) {
        b->status = lmdb_error(j, rc, &b->err);
        return rc;
    }
    int spoiled = run_ops(j, txn, b);
    if (b->status != AR_OK) {
        mdb_txn_abort(txn);
        return spoiled;
    }
    if ((rc = mdb_txn_commit(txn))) {
        b->status = lmdb_error(j, rc, &b->err);
        return rc;
    }
    return 0;
}

/* May b run directly in the shared transaction of a group? Only when nothing in it is meant to
 * fail on its own: no conditional put, no callback, and keys LMDB takes (an empty or too long
 * key is the batch's own error, found in a nested transaction). */
static bool runs_direct(const journal *j, const journal_batch *b)
{
    if (b->nomem || b->bad_db)
        return false;
    for (size_t i = 0; i < b->n; i++) {
        const struct op *op = &b->ops[i];
        if (op->kind == OP_PUT_NEW || op->kind == OP_APPLY || op->klen == 0 ||
            op->klen > (size_t)j->max_key)
            return false;
    }
    return true;
}

enum group_result {
    GROUP_DONE,     /* committed, or every batch carries its error */
    GROUP_ALONE,    /* abandoned for a reason no single batch owns: one transaction each */
    GROUP_NESTED,   /* a batch run directly failed: run the group again, every batch nested */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A committed transaction: begun at t0, its batches run by t1, committed (written and synced)
 * at t2. */
static void count_commit(journal *j, size_t ok, size_t direct, size_t nested, uint64_t t0,
                         uint64_t t1, uint64_t t2)
{
    pthread_mutex_lock(&j->mu);
    j->commits++;
    j->batches += ok;
    j->direct += direct;
    j->nested += nested;
    j->run_ns += t1 - t0;
    j->commit_ns += t2 - t1;
    pthread_mutex_unlock(&j->mu);
}

/* Run n batches from first in one write transaction and commit it. nest_all: every batch in a
 * nested transaction of its own (else the batches runs_direct allows, and a group of one, run
 * in the shared transaction itself). */
static enum group_result commit_group(journal *j, journal_batch *first, size_t n, bool nest_all)
{
    MDB_txn *txn;
    journal_batch *b = first;
    uint64_t t0 = now_ns();
    int rc = mdb_txn_begin(j->env, NULL, 0, &txn);
    if (rc) {
        for (size_t i = 0; i < n; i++, b = b->next)
            b->status = lmdb_error(j, rc, &b->err);
        return GROUP_DONE;
    }
    size_t ok = 0, direct = 0;
    for (size_t i = 0; i < n && !rc; i++, b = b->next) {
        if (!nest_all && (n == 1 || runs_direct(j, b))) {
            reset_outcome(b);
            if ((b->status = check_built(b)) == AR_OK)
                rc = run_ops(j, txn, b);
            if (b->status != AR_OK) {
                /* Its writes are in the shared transaction: nothing of it may commit. */
                mdb_txn_abort(txn);
                if (n == 1)
                    return GROUP_DONE; /* alone: it carries its error */
                return rc ? GROUP_ALONE : GROUP_NESTED;
            }
            direct++;
        } else {
            rc = run_batch(j, txn, b);
        }
        ok += b->status == AR_OK;
    }
    if (rc || ok == 0) {
        mdb_txn_abort(txn);
        return rc && n > 1 ? GROUP_ALONE : GROUP_DONE; /* alone, the batch carries the error */
    }
    uint64_t t1 = now_ns();
    if ((rc = mdb_txn_commit(txn))) {
        if (n > 1)
            return GROUP_ALONE;
        first->status = lmdb_error(j, rc, &first->err);
        return GROUP_DONE;
    }
    count_commit(j, ok, direct, ok - direct, t0, t1, now_ns());
    return GROUP_DONE;
}

/* ---- completion ------------------------------------------------------------------------- */

static void futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The caller of journal_commit: sleep until the writer finishes b. */
static void wait_finished(journal_batch *b)
{
    uint32_t s = atomic_load_explicit(&b->wait_state, memory_order_acquire);
    while (s != WAIT_FINISHED) {
        if (s == WAIT_PENDING &&
            !atomic_compare_exchange_weak_explicit(&b->wait_state, &s, WAIT_SLEEPING,
                                                   memory_order_acquire, memory_order_acquire))
            continue; /* s now holds what is there */
        futex_wait(&b->wait_state, WAIT_SLEEPING);
        s = atomic_load_explicit(&b->wait_state, memory_order_acquire);
    }
    for (int k = 0; k < 2; k++) /* pass the wake on down the tree */
        if (b->wake_mask & (1u << k))
            futex_wake(&b->wake[k]->wait_state);
}

/* Tell the journal_commit callers of sync[0..m) (in queue order) their outcome: the writer,
 * once the group is durable, through the wake tree described at wait_state. A batch may be
 * freed by its caller as soon as its state is set: nothing of it is read after (slept[] keeps
 * what its parent needs). Returns the wakes made here (0 or 1). */
static uint64_t finish_sync(journal_batch **sync, bool *slept, size_t m)
{
    for (size_t i = m; i-- > 0;) { /* leaves first */
        journal_batch *b = sync[i];
        size_t c0 = 2 * i + 1, c1 = 2 * i + 2;
        b->wake[0] = c0 < m ? sync[c0] : NULL;
        b->wake[1] = c1 < m ? sync[c1] : NULL;
        b->wake_mask = (c0 < m && slept[c0] ? 1u : 0u) | (c1 < m && slept[c1] ? 2u : 0u);
        uint32_t was =
            atomic_exchange_explicit(&b->wait_state, WAIT_FINISHED, memory_order_acq_rel);
        slept[i] = was == WAIT_SLEEPING;
    }
    if (m == 0 || !slept[0])
        return 0;
    futex_wake(&sync[0]->wait_state);
    return 1;
}

/* Run the done callbacks of a list of finished batches, in order. done may free its batch:
 * read next first. */
static void report(journal_batch *list)
{
    for (journal_batch *b = list, *next; b; b = next) {
        next = b->next;
        b->done(b->done_arg, b->status, b, &b->err);
    }
}

static void *completer_main(void *arg)
{
    journal *j = arg;
    pthread_mutex_lock(&j->cmu);
    for (;;) {
        while (!j->chead && !j->writer_gone)
            pthread_cond_wait(&j->ccv, &j->cmu);
        if (!j->chead)
            break; /* the writer is gone and everything is reported */
        journal_batch *list = j->chead;
        j->chead = j->ctail = NULL;
        j->reporting = true;
        pthread_mutex_unlock(&j->cmu);
        report(list);
        pthread_mutex_lock(&j->cmu);
        j->reporting = false;
    }
    pthread_mutex_unlock(&j->cmu);
    return NULL;
}

/* Once the writer has exited: let the completion thread report what it was handed, and stop. */
static void stop_completer(journal *j)
{
    pthread_mutex_lock(&j->cmu);
    j->writer_gone = true;
    pthread_cond_signal(&j->ccv);
    pthread_mutex_unlock(&j->cmu);
    pthread_join(j->completer, NULL);
}

/* Hand the async batches of a finished group (a list linked by next, ending in tail) to the
 * completion thread. */
static void hand_over(journal *j, journal_batch *list, journal_batch *tail)
{
    pthread_mutex_lock(&j->cmu);
    if (j->ctail)
        j->ctail->next = list;
    else
        j->chead = list;
    j->ctail = tail;
    pthread_cond_signal(&j->ccv);
    pthread_mutex_unlock(&j->cmu);
}

/* Whether the writer may run a finished group's done callback itself (process: only a group
 * with one): when nothing else is queued for it and the completion thread has nothing to
 * report (so that order holds: only the writer hands work over). At low load this saves a
 * thread hand-off, a wake-up on another CPU, per commit; under load the callbacks go to the
 * completion thread as before. */
static bool writer_may_report(journal *j)
{
    pthread_mutex_lock(&j->mu);
    bool idle = !j->head;
    pthread_mutex_unlock(&j->mu);
    if (!idle)
        return false;
    pthread_mutex_lock(&j->cmu);
    bool free_to = !j->chead && !j->reporting;
    pthread_mutex_unlock(&j->cmu);
    return free_to;
}

/* Room for one more in the writer's wake tree arrays; false when out of memory. */
static bool grow_sync(journal *j)
{
    size_t cap = j->sync_cap ? 2 * j->sync_cap : 64;
    journal_batch **sync = realloc(j->sync, cap * sizeof *sync);
    if (!sync)
        return false;
    j->sync = sync;
    bool *slept = realloc(j->slept, cap * sizeof *slept);
    if (!slept)
        return false;
    j->slept = slept;
    j->sync_cap = cap;
    return true;
}

static void process(journal *j, journal_batch *list)
{
    size_t n = 0;
    for (journal_batch *b = list; b; b = b->next)
        n++;
    enum group_result r = commit_group(j, list, n, false);
    if (r == GROUP_NESTED) {
        pthread_mutex_lock(&j->mu);
        j->regrouped++;
        pthread_mutex_unlock(&j->mu);
        r = commit_group(j, list, n, true);
    }
    if (r == GROUP_ALONE)
        for (journal_batch *b = list; b; b = b->next) {
            journal_batch *next = b->next;
            b->next = NULL; /* a group of one */
            commit_group(j, b, 1, false);
            b->next = next;
        }
    /* The journal_commit callers are told here, at once (one wake: see wait_state); the done
     * callbacks go to the completion thread, in order. */
    journal_batch *async = NULL, **async_tail = &async, *next, *last = NULL;
    size_t m = 0;
    uint64_t woken = 0;
    for (journal_batch *b = list; b; b = next) {
        next = b->next; /* before finish_sync: the caller may free b at once */
        if (b->done) {
            *async_tail = b;
            async_tail = &b->next;
            last = b;
            continue;
        }
        if (m == j->sync_cap && !grow_sync(j)) {
            bool slept;
            woken += finish_sync(&b, &slept, 1); /* no room for a tree: alone */
            continue;
        }
        j->sync[m++] = b;
    }
    *async_tail = NULL;
    woken += finish_sync(j->sync, j->slept, m);
    if (woken) {
        pthread_mutex_lock(&j->mu);
        j->wakeups += woken;
        pthread_mutex_unlock(&j->mu);
    }
    if (async && async == last && writer_may_report(j))
        report(async); /* one callback: low load (under load a group carries dozens) */
    else if (async)
        hand_over(j, async, last);
}

/* Every durable write waits for the writer: ask that it run ahead of the threads waiting for
 * it, WRITER_NICE_BOOST nice levels above the thread that opened the journal (whose nice it
 * inherited). On a busy machine the writer would otherwise queue for a CPU behind the callers
 * it has just woken (a group's worth of them, on 2 CPUs), and that wait holds up every caller
 * of the next group. Needs CAP_SYS_NICE or an RLIMIT_NICE that allows it; without, nothing
 * changes. (Linux: the nice value of a thread id is that thread's own.) */
static void raise_priority(void)
{
    id_t self = (id_t)syscall(SYS_gettid);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, self);
    if (nice == -1 && errno)
        return;
    int want = nice - WRITER_NICE_BOOST < -20 ? -20 : nice - WRITER_NICE_BOOST;
    if (want < nice)
        (void)setpriority(PRIO_PROCESS, self, want);
}

static void *writer_main(void *arg)
{
    journal *j = arg;
    raise_priority();
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (!j->head && !j->closing)
            pthread_cond_wait(&j->work_cv, &j->mu);
        if (!j->head)
            break; /* closing and drained */
        journal_batch *list = j->head;
        j->head = j->tail = NULL;
        pthread_mutex_unlock(&j->mu);
        process(j, list);
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* Queue b unless closing; called with j->mu held. */
static int enqueue(journal *j, journal_batch *b)
{
    if (j->closing)
        return AR_E_CLOSED;
    b->next = NULL;
    if (j->tail)
        j->tail->next = b;
    else
        j->head = b;
    j->tail = b;
    pthread_cond_signal(&j->work_cv);
    return AR_OK;
}

int journal_commit(journal *j, journal_batch *b, ar_error *err)
{
    if (!b)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory",
                            "out of memory while building a journal batch");
    if (pthread_equal(pthread_self(), j->writer))
        /* A done callback running on the writer: waiting here would wait for itself. */
        return ar_error_set(err, AR_E_BUSY, "internal",
                            "journal_commit called from a journal_submit done callback");
    b->done = NULL;
    b->wake_mask = 0;
    atomic_store_explicit(&b->wait_state, WAIT_PENDING, memory_order_relaxed);
    pthread_mutex_lock(&j->mu);
    int status = enqueue(j, b);
    pthread_mutex_unlock(&j->mu);
    if (status != AR_OK)
        return ar_error_set(err, status, "journal_closed", "the journal is closing");
    wait_finished(b);
    if (b->status == AR_OK)
        ar_error_clear(err);
    else if (err)
        *err = b->err;
    return b->status;
}

int journal_submit(journal *j, journal_batch *b, journal_done_fn done, void *arg)
{
    if (!b || !done)
        return b ? AR_E_INVALID : AR_E_NOMEM;
    b->done = done;
    b->done_arg = arg;
    pthread_mutex_lock(&j->mu);
    int status = enqueue(j, b);
    pthread_mutex_unlock(&j->mu);
    return status;
}

/* ---- reads ------------------------------------------------------------------------------ */

int journal_read_begin(journal *j, journal_read **out, ar_error *err)
{
    *out = NULL;
    journal_read *r = malloc(sizeof *r);
    if (!r)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in the journal");
    r->j = j;
    int rc = mdb_txn_begin(j->env, NULL, MDB_RDONLY, &r->txn);
    if (rc) {
        free(r);
        return lmdb_error(j, rc, err);
    }
    *out = r;
    return AR_OK;
}

void journal_read_end(journal_read *r)
{
    if (!r)
        return;
    mdb_txn_abort(r->txn);
    free(r);
}

int journal_get(journal_read *r, journal_db db, const void *key, size_t klen,
                const void **val, size_t *vlen)
{
    if (!r || !valid_db(db))
        return AR_E_INVALID;
    MDB_val k = { klen, (void *)key }, d;
    int rc = mdb_get(r->txn, r->j->dbi[db], &k, &d);
    if (rc)
        return lmdb_error(r->j, rc, NULL);
    return decode(&d, val, vlen);
}

int journal_cursor_open(journal_read *r, journal_db db, journal_cursor **out)
{
    *out = NULL;
    if (!r || !valid_db(db))
        return AR_E_INVALID;
    journal_cursor *c = calloc(1, sizeof *c);
    if (!c)
        return AR_E_NOMEM;
    int rc = mdb_cursor_open(r->txn, r->j->dbi[db], &c->cur);
    if (rc) {
        free(c);
        return lmdb_error(r->j, rc, NULL);
    }
    *out = c;
    return AR_OK;
}

int journal_txn_cursor_open(journal_txn *txn, journal_db db, journal_cursor **out)
{
    if (!out)
        return AR_E_INVALID;
    *out = NULL;
    if (!txn || !valid_db(db))
        return AR_E_INVALID;
    journal_cursor *c = calloc(1, sizeof *c);
    if (!c)
        return AR_E_NOMEM;
    int rc = mdb_cursor_open(txn->txn, txn->j->dbi[db], &c->cur);
    if (rc) {
        free(c);
        note_lmdb(txn, rc);
        return lmdb_error(txn->j, rc, NULL);
    }
    c->txn = txn;
    *out = c;
    return AR_OK;
}

/* A txn cursor's copy of the key and (decoded) value, into c->buf: key first, then value. */
static int copy_out(journal_cursor *c, MDB_val *k, const void **val, size_t *vlen, int decoded)
{
    size_t need = k->mv_size + (decoded == AR_OK ? *vlen : 0) + 1;
    if (need > c->cap) {
        unsigned char *buf = realloc(c->buf, need);
        if (!buf)
            return AR_E_NOMEM;
        c->buf = buf;
        c->cap = need;
    }
    if (k->mv_size)
        memcpy(c->buf, k->mv_data, k->mv_size);
    k->mv_data = c->buf;
    if (decoded == AR_OK) {
        if (*vlen)
            memcpy(c->buf + k->mv_size, *val, *vlen);
        *val = c->buf + k->mv_size;
    }
    return AR_OK;
}

int journal_cursor_get(journal_cursor *c, int op, const void **key, size_t *klen,
                       const void **val, size_t *vlen)
{
    MDB_val k = { 0, NULL }, d;
    MDB_cursor_op mop;
    switch (op) {
    case JOURNAL_FIRST: mop = MDB_FIRST; break;
    case JOURNAL_LAST: mop = MDB_LAST; break;
    case JOURNAL_NEXT: mop = MDB_NEXT; break;
    case JOURNAL_PREV: mop = MDB_PREV; break;
    case JOURNAL_SEEK_GE:
        if (!key || !klen)
            return AR_E_INVALID;
        k.mv_data = (void *)*key;
        k.mv_size = *klen;
        mop = k.mv_size ? MDB_SET_RANGE : MDB_FIRST; /* every key is >= the empty key */
        break;
    default:
        return AR_E_INVALID;
    }
    int rc = mdb_cursor_get(c->cur, &k, &d, mop);
    if (rc && c->txn)
        note_lmdb(c->txn, rc);
    if (rc == MDB_NOTFOUND)
        return AR_E_NOTFOUND;
    if (rc == MDB_BAD_VALSIZE || rc == EINVAL)
        return AR_E_INVALID;
    if (rc)
        return rc == ENOMEM ? AR_E_NOMEM : AR_E_IO;
    const void *v = NULL;
    size_t n = 0;
    int decoded = decode(&d, &v, &n);
    if (c->txn && copy_out(c, &k, &v, &n, decoded) != AR_OK)
        return AR_E_NOMEM;
    if (key)
        *key = k.mv_data;
    if (klen)
        *klen = k.mv_size;
    if (decoded == AR_OK) {
        if (val)
            *val = v;
        if (vlen)
            *vlen = n;
    }
    return decoded;
}

void journal_cursor_close(journal_cursor *c)
{
    if (!c)
        return;
    mdb_cursor_close(c->cur);
    free(c->buf);
    free(c);
}

/* ---- statistics ------------------------------------------------------------------------- */

void journal_get_stats(journal *j, journal_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&j->mu);
    out->commits = j->commits;
    out->batches = j->batches;
    out->direct_batches = j->direct;
    out->nested_batches = j->nested;
    out->regrouped = j->regrouped;
    out->wakeups = j->wakeups;
    out->run_ns = j->run_ns;
    out->commit_ns = j->commit_ns;
    pthread_mutex_unlock(&j->mu);
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(j->env, &info) == 0 && mdb_env_stat(j->env, &st) == 0) {
        out->map_size = info.me_mapsize;
        out->map_used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
    }
    out->stale_readers = j->stale_readers;
}

/* ---- backup ----------------------------------------------------------------------------- */

static int backup_io_error(ar_error *err, const char *what, const char *path, int errnum)
{
    return ar_error_set(err, AR_E_IO, "backup_failed", "backup: cannot %s %s: %s", what, path,
                        strerror(errnum));
}

/* Is the existing dir empty? AR_OK (empty), AR_E_INVALID (has entries) or AR_E_IO. */
static int check_empty_dir(const char *dir, ar_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return backup_io_error(err, "read the directory", dir, errno);
    const struct dirent *e;
    int status = AR_OK;
    errno = 0;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            status = ar_error_set(err, AR_E_INVALID, "backup_target",
                                  "the backup directory %s is not empty: a backup goes into a "
                                  "new or empty directory", dir);
            break;
        }
    }
    if (status == AR_OK && errno)
        status = backup_io_error(err, "read the directory", dir, errno);
    closedir(d);
    return status;
}

/* Make dir (0700, missing parents too) or accept it when it is an empty directory. *created
 * tells whether this call made it (so a failure can take it away again). */
static int make_backup_dir(const char *dir, bool *created, ar_error *err)
{
    *created = false;
    int rc = mkdir(dir, 0700);
    if (rc != 0 && errno == ENOENT) {
        char parent[PATH_MAX];
        ar_error local;
        snprintf(parent, sizeof parent, "%s", dir);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            if (make_dir(parent, &local) != AR_OK)
                return ar_error_set(err, AR_E_IO, "backup_failed", "backup: %s", local.message);
        }
        rc = mkdir(dir, 0700);
    }
    if (rc == 0) {
        *created = true;
        return AR_OK;
    }
    if (errno != EEXIST)
        return backup_io_error(err, "create", dir, errno);
    struct stat st;
    if (stat(dir, &st) != 0)
        return backup_io_error(err, "look at", dir, errno);
    if (!S_ISDIR(st.st_mode))
        return ar_error_set(err, AR_E_INVALID, "backup_target",
                            "the backup target %s exists and is not a directory", dir);
    return check_empty_dir(dir, err);
}

/* fsync a directory, so that the names in it survive a power cut too. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int journal_backup(journal *j, const char *dest_dir, ar_error *err)
{
    char dir[PATH_MAX], file[PATH_MAX], parent[PATH_MAX];
    bool created = false, file_made = false;
    int fd = -1, status, rc;

    if (!j || !dest_dir || !*dest_dir)
        return ar_error_set(err, AR_E_INVALID, "backup_target", "no backup directory given");
    if (snprintf(dir, sizeof dir, "%s", dest_dir) >= (int)sizeof dir ||
        snprintf(file, sizeof file, "%s/data.mdb", dest_dir) >= (int)sizeof file)
        return ar_error_set(err, AR_E_INVALID, "backup_target",
                            "the backup directory %.200s... is too long a path", dest_dir);
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--)
        dir[n - 1] = '\0'; /* "x/" is x: its parent is the one to sync */
    dest_dir = dir;
    if ((status = make_backup_dir(dest_dir, &created, err)) != AR_OK)
        return status;
    /* Our own file rather than mdb_env_copy2's: that one is created 0666 & ~umask and never
     * synced. O_EXCL: the directory was empty a moment ago, so anything there now is not ours. */
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        status = backup_io_error(err, "create", file, errno);
        goto fail;
    }
    file_made = true;
    /* The compacting copy walks the trees in one read transaction: writers go on meanwhile. */
    if ((rc = mdb_env_copyfd2(j->env, fd, MDB_CP_COMPACT)) != 0) {
        status = ar_error_set(err, AR_E_IO, "backup_failed", "backup of the journal %s to %s: %s",
                              j->dir, dest_dir, mdb_strerror(rc));
        goto fail;
    }
    if (fsync(fd) != 0) {
        status = backup_io_error(err, "sync", file, errno);
        goto fail;
    }
    rc = close(fd);
    fd = -1;
    if (rc != 0) {
        status = backup_io_error(err, "close", file, errno);
        goto fail;
    }
    if (sync_dir(dest_dir) != 0) {
        status = backup_io_error(err, "sync the directory", dest_dir, errno);
        goto fail;
    }
    if (created) {
        snprintf(parent, sizeof parent, "%s", dest_dir);
        char *slash = strrchr(parent, '/');
        if (slash)
            *(slash == parent ? slash + 1 : slash) = '\0';
        else
            strcpy(parent, ".");
        if (sync_dir(parent) != 0) {
            status = backup_io_error(err, "sync the directory", parent, errno);
            goto fail;
        }
    }
    ar_error_clear(err);
    return AR_OK;
fail:
    if (fd >= 0)
        close(fd);
    if (file_made)
        unlink(file);
    if (created)
        rmdir(dest_dir);
    return status;
}
