/* test_journal.c - the durable store: roundtrips, conditional inserts, group commit, callbacks,
 * format and schema refusal, a full map, stale reader slots, async submit and close, backup,
 * hooks, cursors in the writer's transaction, a database added to an older environment, the
 * writer's time in its statistics and its scheduling priority. */
#include "test_main.h"
#include "test_dirs.h"

#include <errno.h>
#include <ftw.h>
#include <linux/capability.h>
#include <lmdb.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "journal.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static journal *open_journal(const char *dir, size_t map_mb)
{
    journal_opts opts = { .dir = dir, .map_size_mb = map_mb };
    journal *j = NULL;
    ar_error err;
    int rc = journal_open(&opts, &j, &err);
    if (rc != AR_OK)
        fail_msg("journal_open(%s): %d %s: %s", dir, rc, err.code, err.message);
    return j;
}

static int put_bytes(journal *j, journal_db db, const char *key, const void *val, size_t vlen,
                     ar_error *err)
{
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, db, key, strlen(key), val, vlen);
    int rc = journal_commit(j, b, err);
    journal_batch_free(b);
    return rc;
}

static int put_str(journal *j, journal_db db, const char *key, const char *val)
{
    ar_error err;
    return put_bytes(j, db, key, val, strlen(val), &err);
}

/* Read key into out (NUL-terminated); returns journal_get's status. */
static int get_str(journal *j, journal_db db, const char *key, char *out, size_t cap)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    int rc = journal_get(r, db, key, strlen(key), &val, &vlen);
    if (rc == AR_OK) {
        assert_true(vlen < cap);
        memcpy(out, val, vlen);
        out[vlen] = '\0';
    }
    journal_read_end(r);
    return rc;
}

static void assert_value(journal *j, journal_db db, const char *key, const char *expected)
{
    char buf[256];
    int rc = get_str(j, db, key, buf, sizeof buf);
    if (rc != AR_OK)
        fail_msg("key %s: status %d, expected value %s", key, rc, expected);
    assert_string_equal(buf, expected);
}

static void assert_absent(journal *j, journal_db db, const char *key)
{
    char buf[256];
    assert_int_equal(get_str(j, db, key, buf, sizeof buf), AR_E_NOTFOUND);
}

/* The outcome of an async batch, filled by on_done on the writer thread. */
struct outcome {
    int status;
    int calls;
    char code[48];
    bool conflict;
    size_t conflict_index;
    char conflict_val[64];
    sem_t *done;
};

static void on_done(void *arg, int status, journal_batch *b, const ar_error *err)
{
    struct outcome *o = arg;
    o->status = status;
    o->calls++;
    snprintf(o->code, sizeof o->code, "%s", err ? err->code : "");
    const void *val;
    size_t vlen;
    if (journal_batch_conflict(b, &o->conflict_index, &val, &vlen) == AR_OK) {
        o->conflict = true;
        snprintf(o->conflict_val, sizeof o->conflict_val, "%.*s", (int)vlen, (const char *)val);
    }
    journal_batch_free(b);
    if (o->done)
        sem_post(o->done);
}

/* A gate holds the writer inside a callback, so that the batches submitted meanwhile are all
 * taken together as the next group. */
struct gate {
    sem_t entered, release;
    struct outcome outcome;
};

static int wait_at_gate(journal_txn *txn, void *arg, ar_error *err)
{
    (void)txn; (void)err;
    struct gate *g = arg;
    sem_post(&g->entered);
    sem_wait(&g->release);
    return AR_OK;
}

static void hold_writer(journal *j, struct gate *g)
{
    memset(g, 0, sizeof *g);
    sem_init(&g->entered, 0, 0);
    sem_init(&g->release, 0, 0);
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, wait_at_gate, g);
    assert_int_equal(journal_submit(j, b, on_done, &g->outcome), AR_OK);
    sem_wait(&g->entered);
}

static void release_writer(struct gate *g)
{
    sem_post(&g->release);
}

static void destroy_gate(struct gate *g)
{
    assert_int_equal(g->outcome.calls, 1);
    assert_int_equal(g->outcome.status, AR_OK);
    sem_destroy(&g->entered);
    sem_destroy(&g->release);
}

static void submit(journal *j, journal_batch *b, struct outcome *o)
{
    assert_int_equal(journal_submit(j, b, on_done, o), AR_OK);
}

/* Write a raw LMDB value, bypassing the journal (which must be closed). */
static void raw_put(const char *dir, const char *db, const char *key, const void *val, size_t vlen)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val k = { strlen(key), (void *)key }, v = { vlen, (void *)val };
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* ---- opening --------------------------------------------------------------------------- */

/* A map that does not fit the address space is named as such (map_size_mb), not reported as a
 * bad key or a generic out-of-memory. In a child with a small RLIMIT_AS; not under ASan, whose
 * shadow memory needs the address space. */
static void a_map_too_large_for_the_address_space_names_map_size(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip();
#else
    char *root = test_tmpdir("journal");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl = {.rlim_cur = 1024ull << 20, .rlim_max = 1024ull << 20};
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(2);
        journal_opts o = {.dir = root, .map_size_mb = 64 * 1024};
        journal *j = NULL;
        ar_error err;
        ar_error_clear(&err);
        int rc = journal_open(&o, &j, &err);
        if (rc == AR_OK) {
            journal_close(j);
            _exit(3);
        }
        _exit(rc == AR_E_INVALID && strcmp(err.code, "journal_open") == 0 && strstr(err.message, "map_size_mb = 65536") ? 0 : 4);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    test_rm_tree(root);
#endif
}

/* ---- roundtrip -------------------------------------------------------------------------- */

static void roundtrip_and_reopen(void **state)
{
    (void)state;
    char *root = test_tmpdir("journal");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data/journal", root); /* missing levels are created */
    journal *j = open_journal(dir, 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "a1", 2, "first", 5);
    journal_batch_put(b, JDB_ACTIONS, "a2", 2, "second", 6);
    journal_batch_put(b, JDB_QUEUE, "a1", 2, "queued", 6);
    journal_batch_put(b, JDB_CACHE, "empty", 5, "", 0);
    journal_batch_put(b, JDB_ACTIONS, "gone", 4, "x", 1);
    journal_batch_del(b, JDB_ACTIONS, "gone", 4);
    journal_batch_del(b, JDB_ACTIONS, "never-there", 11); /* not an error */
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    assert_string_equal(err.code, "");
    assert_int_equal(journal_batch_conflict(b, NULL, NULL, NULL), AR_E_NOTFOUND);
    journal_batch_free(b);

    /* A read snapshot does not see later commits; a new one does. */
    journal_read *old;
    assert_int_equal(journal_read_begin(j, &old, NULL), AR_OK);
    assert_int_equal(put_str(j, JDB_ACTIONS, "a1", "first-updated"), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(old, JDB_ACTIONS, "a1", 2, &val, &vlen), AR_OK);
    assert_int_equal(vlen, 5);
    assert_memory_equal(val, "first", 5);
    journal_read_end(old);
    assert_value(j, JDB_ACTIONS, "a1", "first-updated");

    journal_stats stats;
    journal_get_stats(j, &stats);
    assert_int_equal(stats.commits, 2);
    assert_int_equal(stats.batches, 2);
    assert_int_equal(stats.map_size, (size_t)1024 << 20);
    assert_true(stats.map_used > 0 && stats.map_used < stats.map_size);
    journal_close(j);

    j = open_journal(dir, 0);
    assert_value(j, JDB_ACTIONS, "a1", "first-updated");
    assert_value(j, JDB_ACTIONS, "a2", "second");
    assert_value(j, JDB_QUEUE, "a1", "queued");
    assert_value(j, JDB_CACHE, "empty", "");
    assert_absent(j, JDB_ACTIONS, "gone");
    assert_absent(j, JDB_APPROVALS, "a1");
    /* The schema version record reads like any other record: uint32 LE 1. */
    assert_int_equal(journal_read_begin(j, &old, NULL), AR_OK);
    assert_int_equal(journal_get(old, JDB_META, "schema_version", 14, &val, &vlen), AR_OK);
    assert_int_equal(vlen, 4);
    assert_memory_equal(val, "\x01\x00\x00\x00", 4);
    journal_read_end(old);
    journal_close(j);
    journal_close(NULL);
    test_rm_tree(root);
}

/* ---- conditional inserts ---------------------------------------------------------------- */

static void conflict_rolls_back_its_batch_only(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    assert_int_equal(put_str(j, JDB_IDEMPOTENCY, "taken", "original"), AR_OK);

    /* Synchronous: the conflict's value comes back with the batch. */
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "s1", 2, "v", 1);
    journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "taken", 5, "mine", 4);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_EXISTS);
    assert_string_equal(err.code, "already_exists");
    size_t index;
    const void *val;
    size_t vlen;
    assert_int_equal(journal_batch_conflict(b, &index, &val, &vlen), AR_OK);
    assert_int_equal(index, 1);
    assert_int_equal(vlen, 8);
    assert_memory_equal(val, "original", 8);
    journal_batch_free(b);
    assert_absent(j, JDB_ACTIONS, "s1");

    /* In one group with an unrelated batch: the conflicting batch rolls back whole (also the
     * puts after the conflict), the other commits. */
    struct gate g;
    hold_writer(j, &g);
    struct outcome conflicting = { 0 }, unrelated = { 0 };
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "c1", 2, "one", 3);
    journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "fresh", 5, "new", 3);
    journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "taken", 5, "again", 5);
    journal_batch_put(b, JDB_ACTIONS, "c2", 2, "two", 3);
    submit(j, b, &conflicting);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "u1", 2, "unrelated", 9);
    journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "other", 5, "yes", 3);
    submit(j, b, &unrelated);
    release_writer(&g);
    journal_close(j); /* drains */
    destroy_gate(&g);

    assert_int_equal(conflicting.calls, 1);
    assert_int_equal(conflicting.status, AR_E_EXISTS);
    assert_string_equal(conflicting.code, "already_exists");
    assert_true(conflicting.conflict);
    assert_int_equal(conflicting.conflict_index, 2);
    assert_string_equal(conflicting.conflict_val, "original");
    assert_int_equal(unrelated.calls, 1);
    assert_int_equal(unrelated.status, AR_OK);
    assert_false(unrelated.conflict);

    j = open_journal(dir, 0);
    assert_absent(j, JDB_ACTIONS, "c1");
    assert_absent(j, JDB_ACTIONS, "c2");
    assert_absent(j, JDB_IDEMPOTENCY, "fresh");
    assert_value(j, JDB_IDEMPOTENCY, "taken", "original");
    assert_value(j, JDB_ACTIONS, "u1", "unrelated");
    assert_value(j, JDB_IDEMPOTENCY, "other", "yes");
    journal_close(j);
    test_rm_tree(dir);
}

#define RACERS 8
#define RACE_ROUNDS 20

struct racer {
    journal *j;
    pthread_barrier_t *start;
    int id;
    int status[RACE_ROUNDS];
    char seen[RACE_ROUNDS][32];
};

static void *race_main(void *arg)
{
    struct racer *r = arg;
    pthread_barrier_wait(r->start);
    for (int round = 0; round < RACE_ROUNDS; round++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "race-%d", round);
        snprintf(val, sizeof val, "racer-%d", r->id);
        journal_batch *b = journal_batch_new();
        journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, key, strlen(key), val, strlen(val));
        r->status[round] = journal_commit(r->j, b, NULL);
        const void *found;
        size_t flen;
        if (r->status[round] == AR_E_EXISTS &&
            journal_batch_conflict(b, NULL, &found, &flen) == AR_OK)
            snprintf(r->seen[round], sizeof r->seen[round], "%.*s", (int)flen,
                     (const char *)found);
        else
            snprintf(r->seen[round], sizeof r->seen[round], "%s", val);
        journal_batch_free(b);
    }
    return NULL;
}

static void conditional_insert_race(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, RACERS);
    struct racer racers[RACERS];
    pthread_t threads[RACERS];
    for (int i = 0; i < RACERS; i++) {
        racers[i] = (struct racer){ .j = j, .start = &start, .id = i };
        assert_int_equal(pthread_create(&threads[i], NULL, race_main, &racers[i]), 0);
    }
    for (int i = 0; i < RACERS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);

    for (int round = 0; round < RACE_ROUNDS; round++) {
        char key[32], stored[32];
        snprintf(key, sizeof key, "race-%d", round);
        assert_int_equal(get_str(j, JDB_IDEMPOTENCY, key, stored, sizeof stored), AR_OK);
        int winners = 0;
        for (int i = 0; i < RACERS; i++) {
            if (racers[i].status[round] == AR_OK)
                winners++;
            else
                assert_int_equal(racers[i].status[round], AR_E_EXISTS);
            assert_string_equal(racers[i].seen[round], stored); /* everyone sees the winner */
        }
        assert_int_equal(winners, 1);
    }
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- group commit ----------------------------------------------------------------------- */

#define WRITERS 16
#define WRITES_EACH 200

struct writer_arg {
    journal *j;
    int id;
    int failures;
};

static void *writer_main(void *arg)
{
    struct writer_arg *w = arg;
    for (int i = 0; i < WRITES_EACH; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "w%02d-%04d", w->id, i);
        snprintf(val, sizeof val, "value %d/%d", w->id, i);
        if (put_str(w->j, JDB_ACTIONS, key, val) != AR_OK)
            w->failures++;
    }
    return NULL;
}

static void group_commit_many_threads(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    pthread_t threads[WRITERS];
    struct writer_arg args[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        args[i] = (struct writer_arg){ .j = j, .id = i };
        assert_int_equal(pthread_create(&threads[i], NULL, writer_main, &args[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    journal_stats stats;
    journal_get_stats(j, &stats);
    assert_int_equal(stats.batches, WRITERS * WRITES_EACH);
    assert_true(stats.commits > 0);
    assert_true(stats.commits < stats.batches);
    print_message("group commit: %llu batches in %llu transactions\n",
                  (unsigned long long)stats.batches, (unsigned long long)stats.commits);

    for (int w = 0; w < WRITERS; w++) {
        for (int i = 0; i < WRITES_EACH; i++) {
            char key[32], val[32];
            snprintf(key, sizeof key, "w%02d-%04d", w, i);
            snprintf(val, sizeof val, "value %d/%d", w, i);
            assert_value(j, JDB_ACTIONS, key, val);
        }
    }
    /* And nothing else. */
    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_cursor_open(r, JDB_ACTIONS, &c), AR_OK);
    int count = 0;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, NULL, NULL, NULL, NULL) == AR_OK;
         op = JOURNAL_NEXT)
        count++;
    assert_int_equal(count, WRITERS * WRITES_EACH);
    journal_cursor_close(c);
    journal_read_end(r);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- apply callbacks -------------------------------------------------------------------- */

#define COUNTERS 8
#define INCREMENTS 100

static uint64_t load_be64(const void *p)
{
    const unsigned char *b = p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

static void store_be64(unsigned char *b, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (unsigned char)v;
}

/* Increment the counter, and append an audit entry keyed one past the last. */
static int increment(journal_txn *txn, void *arg, ar_error *err)
{
    (void)arg;
    const void *val;
    size_t vlen;
    uint64_t n = 0;
    int rc = journal_txn_get(txn, JDB_META, "counter", 7, &val, &vlen);
    bool found = rc == AR_OK;
    if (found) {
        if (vlen != 8)
            return ar_error_set(err, AR_E_FORMAT, "bad_counter", "counter of %zu bytes", vlen);
        n = load_be64(val);
    } else if (rc != AR_E_NOTFOUND) {
        return rc;
    }
    unsigned char buf[8];
    store_be64(buf, n + 1);
    if ((rc = journal_txn_put(txn, JDB_META, "counter", 7, buf, 8)) != AR_OK)
        return rc;
    /* The value read before the put is a copy: it still says n. */
    if (found && load_be64(val) != n)
        return ar_error_set(err, AR_E_FAIL, "borrowed_changed", "a borrowed value changed");

    const void *key;
    size_t klen;
    uint64_t seq = 0;
    rc = journal_txn_last(txn, JDB_AUDIT, &key, &klen, &val, &vlen);
    if (rc == AR_OK)
        seq = load_be64(key);
    else if (rc != AR_E_NOTFOUND)
        return rc;
    store_be64(buf, seq + 1);
    return journal_txn_put(txn, JDB_AUDIT, buf, 8, "entry", 5);
}

static void *counter_main(void *arg)
{
    journal *j = arg;
    for (int i = 0; i < INCREMENTS; i++) {
        journal_batch *b = journal_batch_new();
        journal_batch_apply(b, increment, NULL);
        ar_error err;
        int rc = journal_commit(j, b, &err);
        journal_batch_free(b);
        if (rc != AR_OK)
            return (void *)"commit failed";
    }
    return NULL;
}

static void apply_reads_then_writes(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    pthread_t threads[COUNTERS];
    for (int i = 0; i < COUNTERS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, counter_main, j), 0);
    for (int i = 0; i < COUNTERS; i++) {
        void *res;
        pthread_join(threads[i], &res);
        assert_null(res);
    }
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(r, JDB_META, "counter", 7, &val, &vlen), AR_OK);
    assert_int_equal(vlen, 8);
    assert_int_equal(load_be64(val), COUNTERS * INCREMENTS);
    /* The audit sequence is 1..N without gaps. */
    journal_cursor *c;
    assert_int_equal(journal_cursor_open(r, JDB_AUDIT, &c), AR_OK);
    uint64_t expect = 1;
    const void *key;
    size_t klen;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, &key, &klen, &val, &vlen) == AR_OK;
         op = JOURNAL_NEXT, expect++) {
        assert_int_equal(klen, 8);
        assert_int_equal(load_be64(key), expect);
    }
    assert_int_equal(expect - 1, COUNTERS * INCREMENTS);
    journal_cursor_close(c);
    journal_read_end(r);
    journal_close(j);
    test_rm_tree(dir);
}

static int put_then_fail(journal_txn *txn, void *arg, ar_error *err)
{
    int rc = journal_txn_put(txn, JDB_ACTIONS, "b2", 2, "from callback", 13);
    if (rc != AR_OK)
        return rc;
    if (arg) /* fail with a message */
        return ar_error_set(err, AR_E_INVALID, "callback_refused", "the callback said no");
    return AR_E_BUSY; /* fail without one */
}

static void apply_failure_rolls_back_its_batch_only(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    journal_stats before, after;
    journal_get_stats(j, &before);

    struct gate g;
    hold_writer(j, &g);
    sem_t done;
    sem_init(&done, 0, 0);
    struct outcome a = { .done = &done }, failing = { .done = &done }, quiet = { .done = &done },
                   c = { .done = &done };
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "a", 1, "A", 1);
    submit(j, b, &a);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "b1", 2, "B1", 2);
    journal_batch_apply(b, put_then_fail, "with message");
    journal_batch_put(b, JDB_ACTIONS, "b3", 2, "B3", 2);
    submit(j, b, &failing);
    b = journal_batch_new();
    journal_batch_apply(b, put_then_fail, NULL);
    submit(j, b, &quiet);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "c", 1, "C", 1);
    submit(j, b, &c);
    release_writer(&g);
    for (int i = 0; i < 4; i++)
        sem_wait(&done);
    sem_destroy(&done);
    assert_int_equal(a.status, AR_OK);
    assert_int_equal(c.status, AR_OK);
    assert_int_equal(failing.status, AR_E_INVALID);
    assert_string_equal(failing.code, "callback_refused");
    assert_int_equal(quiet.status, AR_E_BUSY);
    assert_string_equal(quiet.code, "journal_apply_failed");
    assert_value(j, JDB_ACTIONS, "a", "A");
    assert_value(j, JDB_ACTIONS, "c", "C");
    assert_absent(j, JDB_ACTIONS, "b1");
    assert_absent(j, JDB_ACTIONS, "b2");
    assert_absent(j, JDB_ACTIONS, "b3");

    /* The gate, then [a, failing, quiet, c] as one transaction. */
    journal_get_stats(j, &after);
    assert_int_equal(after.commits - before.commits, 2);
    assert_int_equal(after.batches - before.batches, 3);
    journal_close(j);
    destroy_gate(&g);
    test_rm_tree(dir);
}

/* ---- formats ---------------------------------------------------------------------------- */

static int read_bad(journal_txn *txn, void *arg, ar_error *err)
{
    (void)arg; (void)err;
    return journal_txn_get(txn, JDB_ACTIONS, "bad99", 5, NULL, NULL);
}

static void record_format_refusal(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    assert_int_equal(put_str(j, JDB_ACTIONS, "good", "fine"), AR_OK);
    journal_close(j);
    raw_put(dir, "actions", "bad99", "\x63payload", 8); /* version byte 99 */
    raw_put(dir, "actions", "bad0", "\x00payload", 8);  /* version byte 0 */
    raw_put(dir, "actions", "empty", "", 0);            /* no version byte */

    j = open_journal(dir, 0);
    assert_value(j, JDB_ACTIONS, "good", "fine");
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(r, JDB_ACTIONS, "bad99", 5, &val, &vlen), AR_E_FORMAT);
    assert_int_equal(journal_get(r, JDB_ACTIONS, "bad0", 4, &val, &vlen), AR_E_FORMAT);
    assert_int_equal(journal_get(r, JDB_ACTIONS, "empty", 5, &val, &vlen), AR_E_FORMAT);
    /* A cursor reports the bad record and moves on past it. Order: bad0 bad99 empty good. */
    journal_cursor *c;
    assert_int_equal(journal_cursor_open(r, JDB_ACTIONS, &c), AR_OK);
    const void *key;
    size_t klen;
    assert_int_equal(journal_cursor_get(c, JOURNAL_FIRST, &key, &klen, &val, &vlen), AR_E_FORMAT);
    assert_int_equal(journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, &val, &vlen), AR_E_FORMAT);
    assert_int_equal(journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, &val, &vlen), AR_E_FORMAT);
    assert_int_equal(journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, &val, &vlen), AR_OK);
    assert_int_equal(klen, 4);
    assert_memory_equal(key, "good", 4);
    journal_cursor_close(c);
    journal_read_end(r);

    /* A conflict on a bad record and a callback reading one report record_format. */
    journal_batch *b = journal_batch_new();
    journal_batch_put_unless_exists(b, JDB_ACTIONS, "bad99", 5, "x", 1);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "record_format");
    journal_batch_free(b);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "side", 4, "effect", 6);
    journal_batch_apply(b, read_bad, NULL);
    assert_int_equal(journal_commit(j, b, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "record_format");
    journal_batch_free(b);
    assert_absent(j, JDB_ACTIONS, "side");
    /* Overwriting a bad record with a good one is allowed. */
    assert_int_equal(put_str(j, JDB_ACTIONS, "bad99", "repaired"), AR_OK);
    assert_value(j, JDB_ACTIONS, "bad99", "repaired");
    journal_close(j);
    test_rm_tree(dir);
}

static void schema_version_refusal(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    journal_close(j);
    /* One schema version newer than ours. */
    unsigned char newer[5] = { JOURNAL_RECORD_VERSION, JOURNAL_SCHEMA_VERSION + 1, 0, 0, 0 };
    raw_put(dir, "meta", "schema_version", newer, sizeof newer);

    journal_opts opts = { .dir = dir };
    ar_error err;
    j = (journal *)&err; /* must be reset to NULL */
    assert_int_equal(journal_open(&opts, &j, &err), AR_E_FORMAT);
    assert_null(j);
    assert_string_equal(err.code, "journal_format");
    char expect[64];
    snprintf(expect, sizeof expect, "schema version %d", JOURNAL_SCHEMA_VERSION + 1);
    assert_non_null(strstr(err.message, expect));
    snprintf(expect, sizeof expect, "version %d", JOURNAL_SCHEMA_VERSION);
    assert_non_null(strstr(err.message, expect));
    assert_non_null(strstr(err.message, dir));

    /* A schema record in a newer record format is refused too. */
    unsigned char newer_record[5] = { 99, 1, 0, 0, 0 };
    raw_put(dir, "meta", "schema_version", newer_record, sizeof newer_record);
    assert_int_equal(journal_open(&opts, &j, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "journal_format");

    /* Our own version opens again. */
    unsigned char ours[5] = { JOURNAL_RECORD_VERSION, JOURNAL_SCHEMA_VERSION, 0, 0, 0 };
    raw_put(dir, "meta", "schema_version", ours, sizeof ours);
    j = open_journal(dir, 0);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- a full map ------------------------------------------------------------------------- */

#define BIG 4000

static void fill_value(char *buf, int i)
{
    memset(buf, 'a' + i % 26, BIG);
}

static void assert_big(journal *j, int i)
{
    char key[32], expect[BIG];
    snprintf(key, sizeof key, "big-%05d", i);
    fill_value(expect, i);
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(r, JDB_CACHE, key, strlen(key), &val, &vlen), AR_OK);
    assert_int_equal(vlen, BIG);
    assert_memory_equal(val, expect, BIG);
    journal_read_end(r);
}

static int put_big(journal *j, int i, ar_error *err)
{
    char key[32], val[BIG];
    snprintf(key, sizeof key, "big-%05d", i);
    fill_value(val, i);
    return put_bytes(j, JDB_CACHE, key, val, BIG, err);
}

static void map_full_is_a_clean_error(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 1);
    ar_error err;
    int stored = 0, rc;
    while ((rc = put_big(j, stored, &err)) == AR_OK) {
        stored++;
        assert_true(stored < 1000); /* 1 MiB cannot hold 4 MB */
    }
    assert_int_equal(rc, AR_E_FULL);
    assert_string_equal(err.code, "storage_full");
    assert_non_null(strstr(err.message, "map_size_mb = 1"));
    assert_true(stored > 10);
    for (int i = 0; i < stored; i++)
        assert_big(j, i);

    /* Freeing room makes writes that fit succeed again. */
    journal_batch *b = journal_batch_new();
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof key, "big-%05d", i);
        journal_batch_del(b, JDB_CACHE, key, strlen(key));
    }
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);
    assert_int_equal(put_str(j, JDB_ACTIONS, "small", "fits"), AR_OK);
    assert_int_equal(put_big(j, 0, &err), AR_OK);

    journal_stats stats;
    journal_get_stats(j, &stats);
    assert_int_equal(stats.map_size, (size_t)1 << 20);
    journal_close(j);

    j = open_journal(dir, 1);
    for (int i = 20; i < stored; i++)
        assert_big(j, i);
    assert_big(j, 0);
    assert_value(j, JDB_ACTIONS, "small", "fits");
    journal_close(j);

    /* Raising the map size is the fix the message names. */
    j = open_journal(dir, 4);
    for (int i = stored; i < stored + 100; i++)
        assert_int_equal(put_big(j, i, &err), AR_OK);
    journal_close(j);
    test_rm_tree(dir);
}

static int put_huge(journal_txn *txn, void *arg, ar_error *err)
{
    (void)err;
    return journal_txn_put(txn, JDB_CACHE, "huge-cb", 7, arg, (size_t)2 << 20);
}

static void map_full_fails_only_the_batch_that_does_not_fit(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 1);
    size_t huge_len = (size_t)2 << 20;
    char *huge = calloc(1, huge_len);
    assert_non_null(huge);
    journal_stats before, after;
    journal_get_stats(j, &before);

    /* One group: two small batches around one that cannot fit, and a callback that overfills. */
    struct gate g;
    hold_writer(j, &g);
    sem_t done;
    sem_init(&done, 0, 0);
    struct outcome small1 = { .done = &done }, big = { .done = &done },
                   small2 = { .done = &done }, cb = { .done = &done };
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "s1", 2, "one", 3);
    submit(j, b, &small1);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "with-huge", 9, "x", 1);
    journal_batch_put(b, JDB_CACHE, "huge", 4, huge, huge_len);
    submit(j, b, &big);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "s2", 2, "two", 3);
    submit(j, b, &small2);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "with-cb", 7, "x", 1);
    journal_batch_apply(b, put_huge, huge);
    submit(j, b, &cb);
    release_writer(&g);
    for (int i = 0; i < 4; i++)
        sem_wait(&done);
    sem_destroy(&done);

    assert_int_equal(small1.status, AR_OK);
    assert_int_equal(small2.status, AR_OK);
    assert_int_equal(big.status, AR_E_FULL);
    assert_string_equal(big.code, "storage_full");
    assert_int_equal(cb.status, AR_E_FULL);
    assert_string_equal(cb.code, "storage_full");
    assert_int_equal(small1.calls + small2.calls + big.calls + cb.calls, 4);
    /* The gate's transaction, then the group's was abandoned and its batches run one
     * transaction each: s1 and s2 committed. */
    journal_get_stats(j, &after);
    assert_int_equal(after.commits - before.commits, 3);
    assert_int_equal(after.batches - before.batches, 3);
    assert_int_equal(put_str(j, JDB_ACTIONS, "after", "ok"), AR_OK);
    journal_close(j);
    destroy_gate(&g);

    j = open_journal(dir, 1);
    assert_value(j, JDB_ACTIONS, "s1", "one");
    assert_value(j, JDB_ACTIONS, "s2", "two");
    assert_value(j, JDB_ACTIONS, "after", "ok");
    assert_absent(j, JDB_ACTIONS, "with-huge");
    assert_absent(j, JDB_ACTIONS, "with-cb");
    assert_absent(j, JDB_CACHE, "huge");
    assert_absent(j, JDB_CACHE, "huge-cb");
    journal_close(j);
    free(huge);
    test_rm_tree(dir);
}

/* ---- stale readers ---------------------------------------------------------------------- */

static MDB_env *child_env(const char *dir)
{
    MDB_env *env;
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) || mdb_env_open(env, dir, 0, 0600))
        _exit(2);
    return env;
}

static void stale_reader_slots_are_cleared(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    assert_int_equal(put_str(j, JDB_ACTIONS, "before", "1"), AR_OK);
    journal_close(j);

    /* A keeper process holds the environment open, so its lock table (with the dead reader's
     * slot) survives until the journal opens; otherwise LMDB would reset it on a lone open. */
    int ready[2], stop[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(stop), 0);
    pid_t keeper = fork();
    assert_true(keeper >= 0);
    if (keeper == 0) {
        close(ready[0]);
        close(stop[1]);
        MDB_env *env = child_env(dir);
        char c = 'r';
        if (write(ready[1], &c, 1) != 1)
            _exit(3);
        while (read(stop[0], &c, 1) > 0) {
        }
        mdb_env_close(env);
        _exit(0);
    }
    close(ready[1]);
    close(stop[0]);
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);

    /* A reader that dies with its read transaction open (as after kill -9). */
    pid_t reader = fork();
    assert_true(reader >= 0);
    if (reader == 0) {
        MDB_env *env = child_env(dir);
        MDB_txn *txn;
        if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
            _exit(4);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(reader, &status, 0), reader);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    j = open_journal(dir, 0);
    journal_stats stats;
    journal_get_stats(j, &stats);
    assert_int_equal(stats.stale_readers, 1);
    assert_value(j, JDB_ACTIONS, "before", "1");
    assert_int_equal(put_str(j, JDB_ACTIONS, "after", "2"), AR_OK);
    assert_value(j, JDB_ACTIONS, "after", "2");
    journal_close(j);

    close(stop[1]);
    assert_int_equal(waitpid(keeper, &status, 0), keeper);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(ready[0]);

    j = open_journal(dir, 0);
    journal_get_stats(j, &stats);
    assert_int_equal(stats.stale_readers, 0);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- async submit and close ------------------------------------------------------------- */

#define ASYNC 50

static void async_submit_reports_once(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    assert_int_equal(put_str(j, JDB_IDEMPOTENCY, "dup", "first"), AR_OK);
    sem_t done;
    sem_init(&done, 0, 0);
    struct outcome outcomes[ASYNC];
    memset(outcomes, 0, sizeof outcomes);
    for (int i = 0; i < ASYNC; i++) {
        outcomes[i].done = &done;
        char key[32];
        snprintf(key, sizeof key, "async-%02d", i);
        journal_batch *b = journal_batch_new();
        journal_batch_put(b, JDB_ACTIONS, key, strlen(key), "v", 1);
        if (i % 10 == 3)
            journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "dup", 3, "again", 5);
        submit(j, b, &outcomes[i]);
    }
    for (int i = 0; i < ASYNC; i++)
        sem_wait(&done);
    for (int i = 0; i < ASYNC; i++) {
        char key[32];
        snprintf(key, sizeof key, "async-%02d", i);
        assert_int_equal(outcomes[i].calls, 1);
        if (i % 10 == 3) {
            assert_int_equal(outcomes[i].status, AR_E_EXISTS);
            assert_string_equal(outcomes[i].conflict_val, "first");
            assert_absent(j, JDB_ACTIONS, key);
        } else {
            assert_int_equal(outcomes[i].status, AR_OK);
            assert_value(j, JDB_ACTIONS, key, "v");
        }
    }
    /* Refused arguments leave the batch with the caller and call nothing. */
    assert_int_equal(journal_submit(j, NULL, on_done, &outcomes[0]), AR_E_NOMEM);
    journal_batch *b = journal_batch_new();
    assert_int_equal(journal_submit(j, b, NULL, NULL), AR_E_INVALID);
    journal_batch_free(b);
    journal_close(j);
    for (int i = 0; i < ASYNC; i++)
        assert_int_equal(outcomes[i].calls, 1);
    sem_destroy(&done);
    test_rm_tree(dir);
}

static void *close_main(void *arg)
{
    journal_close(arg);
    return NULL;
}

#define IN_FLIGHT 100

static void close_completes_batches_in_flight(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    struct gate g;
    hold_writer(j, &g);
    struct outcome outcomes[IN_FLIGHT];
    memset(outcomes, 0, sizeof outcomes);
    for (int i = 0; i < IN_FLIGHT; i++) {
        char key[32];
        snprintf(key, sizeof key, "flight-%03d", i);
        journal_batch *b = journal_batch_new();
        journal_batch_put(b, JDB_QUEUE, key, strlen(key), key, strlen(key));
        submit(j, b, &outcomes[i]);
    }
    /* Close while the writer is busy: new batches are refused, queued ones still commit. The
     * journal stays allocated until the writer (held at the gate) has finished. */
    pthread_t closer;
    assert_int_equal(pthread_create(&closer, NULL, close_main, j), 0);
    journal_batch *late = journal_batch_new();
    journal_batch_put(late, JDB_QUEUE, "late", 4, "x", 1);
    struct outcome late_outcome = { 0 };
    int rc;
    while ((rc = journal_submit(j, late, on_done, &late_outcome)) == AR_OK) {
        /* queued before close began: it will complete; try again with a fresh batch */
        late = journal_batch_new();
        journal_batch_put(late, JDB_QUEUE, "late", 4, "x", 1);
        usleep(1000);
    }
    assert_int_equal(rc, AR_E_CLOSED);
    ar_error err;
    assert_int_equal(journal_commit(j, late, &err), AR_E_CLOSED);
    assert_string_equal(err.code, "journal_closed");
    journal_batch_free(late);
    release_writer(&g);
    pthread_join(closer, NULL);
    destroy_gate(&g);
    for (int i = 0; i < IN_FLIGHT; i++) {
        assert_int_equal(outcomes[i].calls, 1);
        assert_int_equal(outcomes[i].status, AR_OK);
    }

    j = open_journal(dir, 0);
    for (int i = 0; i < IN_FLIGHT; i++) {
        char key[32];
        snprintf(key, sizeof key, "flight-%03d", i);
        assert_value(j, JDB_QUEUE, key, key);
    }
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- cursors ---------------------------------------------------------------------------- */

static void expect_at(journal_cursor *c, int op, const char *seek, const char *key_expected)
{
    const void *key = seek, *val;
    size_t klen = seek ? strlen(seek) : 0, vlen;
    int rc = journal_cursor_get(c, op, &key, &klen, &val, &vlen);
    if (!key_expected) {
        assert_int_equal(rc, AR_E_NOTFOUND);
        return;
    }
    assert_int_equal(rc, AR_OK);
    assert_int_equal(klen, strlen(key_expected));
    assert_memory_equal(key, key_expected, klen);
    char val_expected[32];
    snprintf(val_expected, sizeof val_expected, "val-%s", key_expected);
    assert_int_equal(vlen, strlen(val_expected));
    assert_memory_equal(val, val_expected, vlen);
}

static void cursor_walk_and_seek(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    journal_batch *b = journal_batch_new();
    for (int i = 0; i < 10; i++) {
        char key[8], val[16];
        snprintf(key, sizeof key, "k%02d", i * 2);
        snprintf(val, sizeof val, "val-%s", key);
        journal_batch_put(b, JDB_APPROVALS, key, strlen(key), val, strlen(val));
    }
    journal_batch_put(b, JDB_MEMORY, "k00", 3, "other db", 8); /* not seen below */
    journal_batch_put(b, JDB_MEMORY, "zzz", 3, "other db", 8);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);

    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_cursor_open(r, JDB_APPROVALS, &c), AR_OK);
    char key[8];
    expect_at(c, JOURNAL_FIRST, NULL, "k00");
    for (int i = 1; i < 10; i++) {
        snprintf(key, sizeof key, "k%02d", i * 2);
        expect_at(c, JOURNAL_NEXT, NULL, key);
    }
    expect_at(c, JOURNAL_NEXT, NULL, NULL);
    expect_at(c, JOURNAL_LAST, NULL, "k18");
    for (int i = 8; i >= 0; i--) {
        snprintf(key, sizeof key, "k%02d", i * 2);
        expect_at(c, JOURNAL_PREV, NULL, key);
    }
    expect_at(c, JOURNAL_PREV, NULL, NULL);
    expect_at(c, JOURNAL_SEEK_GE, "k06", "k06");   /* exact */
    expect_at(c, JOURNAL_NEXT, NULL, "k08");
    expect_at(c, JOURNAL_SEEK_GE, "k07", "k08");   /* between */
    expect_at(c, JOURNAL_SEEK_GE, "k065", "k08");  /* longer key, same prefix */
    expect_at(c, JOURNAL_PREV, NULL, "k06");
    expect_at(c, JOURNAL_SEEK_GE, "a", "k00");     /* before all */
    expect_at(c, JOURNAL_SEEK_GE, "", "k00");      /* empty key */
    expect_at(c, JOURNAL_SEEK_GE, "k19", NULL);    /* after all */
    assert_int_equal(journal_cursor_get(c, 42, NULL, NULL, NULL, NULL), AR_E_INVALID);
    journal_cursor_close(c);

    /* An empty database. */
    assert_int_equal(journal_cursor_open(r, JDB_CHECKPOINTS, &c), AR_OK);
    expect_at(c, JOURNAL_FIRST, NULL, NULL);
    expect_at(c, JOURNAL_LAST, NULL, NULL);
    journal_cursor_close(c);
    journal_read_end(r);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- bad input -------------------------------------------------------------------------- */

static void bad_batches_are_refused_whole(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    ar_error err;

    /* An allocation that cannot succeed is remembered; the rest of the batch is not written. */
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "ok1", 3, "x", 1);
    journal_batch_put(b, JDB_ACTIONS, "k", SIZE_MAX, "x", 2);
    journal_batch_put(b, JDB_ACTIONS, "ok2", 3, "x", 1);
    assert_int_equal(journal_commit(j, b, &err), AR_E_NOMEM);
    assert_string_equal(err.code, "out_of_memory");
    journal_batch_free(b);
    assert_absent(j, JDB_ACTIONS, "ok1");
    assert_absent(j, JDB_ACTIONS, "ok2");
    assert_int_equal(journal_commit(j, NULL, &err), AR_E_NOMEM);
    journal_batch_put(NULL, JDB_ACTIONS, "k", 1, "v", 1); /* a failed batch_new is tolerated */
    journal_batch_free(NULL);

    /* Keys LMDB cannot hold. */
    char long_key[600];
    memset(long_key, 'k', sizeof long_key);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "ok1", 3, "x", 1);
    journal_batch_put(b, JDB_ACTIONS, long_key, sizeof long_key, "x", 1);
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    assert_string_equal(err.code, "journal_invalid_key");
    journal_batch_free(b);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "", 0, "x", 1);
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    journal_batch_free(b);
    b = journal_batch_new();
    journal_batch_put(b, (journal_db)JDB_COUNT, "k", 1, "x", 1);
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    journal_batch_free(b);
    assert_absent(j, JDB_ACTIONS, "ok1");

    /* The journal is still fine. */
    assert_int_equal(put_str(j, JDB_ACTIONS, "ok1", "y"), AR_OK);
    assert_value(j, JDB_ACTIONS, "ok1", "y");
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_get(r, (journal_db)-1, "k", 1, NULL, NULL), AR_E_INVALID);
    journal_read_end(r);
    journal_close(j);

    /* A directory that cannot be created. */
    journal_opts opts = { .dir = "/proc/aiorun-no-such/journal" };
    assert_int_equal(journal_open(&opts, &j, &err), AR_E_IO);
    assert_string_equal(err.code, "journal_io");
    test_rm_tree(dir);
}

/* ---- backup ----------------------------------------------------------------------------- */

#define BACKUP_WRITERS 4
#define BACKUP_PREFILL 1000
#define BACKUP_MIN_EACH 50      /* commits each writer makes before the backup starts */
#define BACKUP_MAX_EACH 100000  /* a bound, so a broken stop flag cannot run forever */

struct backup_writer {
    journal *j;
    int id;
    int committed;              /* commits returned so far (atomic) */
    int stop;                   /* set by the test (atomic) */
    int failures;
};

static void backup_key(char *buf, size_t cap, int writer, int i)
{
    snprintf(buf, cap, "bw%d-%06d", writer, i);
}

static void *backup_writer_main(void *arg)
{
    struct backup_writer *w = arg;
    for (int i = 0; i < BACKUP_MAX_EACH && !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE); i++) {
        char key[32], val[32];
        backup_key(key, sizeof key, w->id, i);
        snprintf(val, sizeof val, "value %d/%d", w->id, i);
        if (put_str(w->j, JDB_ACTIONS, key, val) != AR_OK) {
            __atomic_store_n(&w->failures, 1, __ATOMIC_RELEASE);
            break;
        }
        __atomic_store_n(&w->committed, i + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

static void assert_schema_version(journal *j)
{
    journal_read *r;
    const void *val;
    size_t vlen;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_get(r, JDB_META, "schema_version", 14, &val, &vlen), AR_OK);
    assert_int_equal(vlen, 4);
    const unsigned char *p = val;
    assert_int_equal(p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24, JOURNAL_SCHEMA_VERSION);
    journal_read_end(r);
}

static void assert_mode(const char *path, mode_t mode)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, mode);
}

static void backup_while_writers_commit(void **state)
{
    (void)state;
    char *root = test_tmpdir("journal");
    char src[512], dest[512], file[600];
    snprintf(src, sizeof src, "%s/src", root);
    snprintf(dest, sizeof dest, "%s/backups/one", root); /* the missing parent is made too */
    journal *j = open_journal(src, 0);
    for (int i = 0; i < BACKUP_PREFILL; i++) {
        char key[32];
        snprintf(key, sizeof key, "pre-%06d", i);
        assert_int_equal(put_str(j, JDB_AUDIT, key, "prefilled"), AR_OK);
    }

    pthread_t threads[BACKUP_WRITERS];
    struct backup_writer w[BACKUP_WRITERS];
    for (int i = 0; i < BACKUP_WRITERS; i++) {
        w[i] = (struct backup_writer){ .j = j, .id = i };
        assert_int_equal(pthread_create(&threads[i], NULL, backup_writer_main, &w[i]), 0);
    }
    for (int i = 0; i < BACKUP_WRITERS; i++)
        while (__atomic_load_n(&w[i].committed, __ATOMIC_ACQUIRE) < BACKUP_MIN_EACH &&
               !__atomic_load_n(&w[i].failures, __ATOMIC_ACQUIRE))
            usleep(1000);
    /* Every commit that returned before this point must be in the copy. */
    int before[BACKUP_WRITERS];
    for (int i = 0; i < BACKUP_WRITERS; i++)
        before[i] = __atomic_load_n(&w[i].committed, __ATOMIC_ACQUIRE);
    ar_error err;
    int rc = journal_backup(j, dest, &err);
    if (rc != AR_OK)
        fail_msg("journal_backup: %d %s: %s", rc, err.code, err.message);
    int after[BACKUP_WRITERS];
    for (int i = 0; i < BACKUP_WRITERS; i++)
        after[i] = __atomic_load_n(&w[i].committed, __ATOMIC_ACQUIRE);
    for (int i = 0; i < BACKUP_WRITERS; i++)
        __atomic_store_n(&w[i].stop, 1, __ATOMIC_RELEASE);
    int total = 0;
    for (int i = 0; i < BACKUP_WRITERS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(w[i].failures, 0);
        total += w[i].committed;
    }
    print_message("backup: %d commits before, %d while it ran, %d in all\n",
                  before[0] + before[1] + before[2] + before[3],
                  after[0] + after[1] + after[2] + after[3] - before[0] - before[1] - before[2] -
                      before[3],
                  total);
    /* The source goes on as before. */
    assert_int_equal(put_str(j, JDB_ACTIONS, "after-backup", "x"), AR_OK);
    journal_close(j);

    assert_mode(dest, 0700);
    snprintf(file, sizeof file, "%s/data.mdb", dest);
    assert_mode(file, 0600);

    journal *copy = open_journal(dest, 0);
    assert_schema_version(copy);
    for (int t = 0; t < BACKUP_WRITERS; t++) {
        for (int i = 0; i < before[t]; i++) {
            char key[32], val[32];
            backup_key(key, sizeof key, t, i);
            snprintf(val, sizeof val, "value %d/%d", t, i);
            assert_value(copy, JDB_ACTIONS, key, val);
        }
    }
    assert_value(copy, JDB_AUDIT, "pre-000000", "prefilled");
    char last_pre[32];
    snprintf(last_pre, sizeof last_pre, "pre-%06d", BACKUP_PREFILL - 1);
    assert_value(copy, JDB_AUDIT, last_pre, "prefilled");
    assert_absent(copy, JDB_ACTIONS, "after-backup");
    /* A consistent snapshot: each writer's keys in the copy are a prefix of what it wrote (its
     * commits are sequential), no more than it committed by the time the backup returned. */
    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(copy, &r, NULL), AR_OK);
    assert_int_equal(journal_cursor_open(r, JDB_ACTIONS, &c), AR_OK);
    int count[BACKUP_WRITERS] = {0};
    const void *key, *val;
    size_t klen, vlen;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, &key, &klen, &val, &vlen) == AR_OK;
         op = JOURNAL_NEXT) {
        int t, i;
        char kbuf[32], expect_key[32], expect_val[32];
        assert_true(klen < sizeof kbuf);
        memcpy(kbuf, key, klen);
        kbuf[klen] = '\0';
        assert_int_equal(sscanf(kbuf, "bw%d-%d", &t, &i), 2);
        assert_true(t >= 0 && t < BACKUP_WRITERS);
        backup_key(expect_key, sizeof expect_key, t, count[t]);
        assert_string_equal(kbuf, expect_key); /* no gap in this writer's sequence */
        snprintf(expect_val, sizeof expect_val, "value %d/%d", t, i);
        assert_int_equal(vlen, strlen(expect_val));
        assert_memory_equal(val, expect_val, vlen);
        count[t]++;
    }
    journal_cursor_close(c);
    journal_read_end(r);
    for (int t = 0; t < BACKUP_WRITERS; t++) {
        assert_true(count[t] >= before[t]);
        assert_true(count[t] <= after[t]);
    }
    /* The copy is a working journal. */
    assert_int_equal(put_str(copy, JDB_ACTIONS, "written-to-copy", "y"), AR_OK);
    assert_value(copy, JDB_ACTIONS, "written-to-copy", "y");
    journal_close(copy);
    test_rm_tree(root);
}

static off_t file_size(const char *dir)
{
    char path[600];
    struct stat st;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void backup_is_compacted(void **state)
{
    (void)state;
    char *root = test_tmpdir("journal");
    char src[512], dest[512];
    snprintf(src, sizeof src, "%s/src", root);
    snprintf(dest, sizeof dest, "%s/empty-dest", root);
    assert_int_equal(mkdir(dest, 0755), 0); /* an existing empty directory is fine */
    journal *j = open_journal(src, 0);
    char big[BIG + 1];
    journal_batch *b = journal_batch_new();
    for (int i = 0; i < 2000; i++) {
        char key[32];
        snprintf(key, sizeof key, "gone-%05d", i);
        fill_value(big, i);
        journal_batch_put(b, JDB_CACHE, key, strlen(key), big, BIG);
    }
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    b = journal_batch_new();
    for (int i = 0; i < 2000; i++) {
        char key[32];
        snprintf(key, sizeof key, "gone-%05d", i);
        journal_batch_del(b, JDB_CACHE, key, strlen(key));
    }
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_int_equal(put_str(j, JDB_ACTIONS, "kept", "still here"), AR_OK);

    ar_error err;
    assert_int_equal(journal_backup(j, dest, &err), AR_OK);
    journal_close(j);
    off_t src_size = file_size(src), copy_size = file_size(dest);
    print_message("compaction: %lld bytes -> %lld bytes\n", (long long)src_size,
                  (long long)copy_size);
    assert_true(copy_size * 10 < src_size); /* ~8 MB of freed pages are not copied */

    journal *copy = open_journal(dest, 0);
    assert_value(copy, JDB_ACTIONS, "kept", "still here");
    assert_absent(copy, JDB_CACHE, "gone-00000");
    assert_schema_version(copy);
    journal_close(copy);
    test_rm_tree(root);
}

static void backup_refuses_a_used_target(void **state)
{
    (void)state;
    char *root = test_tmpdir("journal");
    char src[512], full[512], kept[600], file[512], copy_file[600];
    snprintf(src, sizeof src, "%s/src", root);
    snprintf(full, sizeof full, "%s/full", root);
    snprintf(kept, sizeof kept, "%s/keep.txt", full);
    snprintf(file, sizeof file, "%s/a-file", root);
    journal *j = open_journal(src, 0);
    assert_int_equal(put_str(j, JDB_ACTIONS, "k", "v"), AR_OK);

    /* A directory that holds something. */
    assert_int_equal(mkdir(full, 0700), 0);
    FILE *f = fopen(kept, "w");
    assert_non_null(f);
    fputs("mine", f);
    fclose(f);
    ar_error err;
    assert_int_equal(journal_backup(j, full, &err), AR_E_INVALID);
    assert_string_equal(err.code, "backup_target");
    assert_non_null(strstr(err.message, full));
    assert_non_null(strstr(err.message, "not empty"));
    snprintf(copy_file, sizeof copy_file, "%s/data.mdb", full);
    assert_int_equal(access(copy_file, F_OK), -1);
    assert_int_equal(access(kept, F_OK), 0);

    /* A file. */
    f = fopen(file, "w");
    assert_non_null(f);
    fputs("not a directory", f);
    fclose(f);
    assert_int_equal(journal_backup(j, file, &err), AR_E_INVALID);
    assert_string_equal(err.code, "backup_target");
    assert_non_null(strstr(err.message, file));
    assert_non_null(strstr(err.message, "not a directory"));
    char buf[32] = {0};
    f = fopen(file, "r");
    assert_non_null(f);
    assert_non_null(fgets(buf, sizeof buf, f));
    fclose(f);
    assert_string_equal(buf, "not a directory");

    /* A directory that cannot be made is an I/O failure, and leaves nothing behind. */
    assert_int_equal(journal_backup(j, "/proc/aiorun-no-such/backup", &err), AR_E_IO);
    assert_string_equal(err.code, "backup_failed");
    assert_int_equal(journal_backup(j, "", &err), AR_E_INVALID);
    assert_string_equal(err.code, "backup_target");

    /* The journal is unharmed. */
    assert_value(j, JDB_ACTIONS, "k", "v");
    journal_close(j);
    test_rm_tree(root);
}

/* ---- hooks ------------------------------------------------------------------------------ */

/* What a hook saw, in order: "key=value" for puts, "key!" for deletes. Only the writer thread
 * writes it while a commit runs; the test reads it after the commit returned. */
struct hook_log {
    char entries[32][64];
    int n;
    const char *refuse;       /* a key the hook fails on */
    bool write_self;          /* write into the hooked db (refused by the journal) */
    bool ignore_status;       /* return AR_OK even when a write of the hook failed */
    size_t huge_len;          /* > 0: also write this many bytes into JDB_CACHE */
    void *huge;
};

/* A hook on JDB_APPROVALS: logs, mirrors each change into JDB_MEMORY ("m:" + key), and reads
 * that mirror back with journal_txn_get (scratch memory). */
static int mirror_hook(journal_txn *txn, void *arg, const void *key, size_t klen,
                       const void *val, size_t vlen, ar_error *err)
{
    struct hook_log *log = arg;
    if (log->n < 32) {
        if (val)
            snprintf(log->entries[log->n++], 64, "%.*s=%.*s", (int)klen, (const char *)key,
                     (int)vlen, (const char *)val);
        else
            snprintf(log->entries[log->n++], 64, "%.*s!", (int)klen, (const char *)key);
    }
    if (log->refuse && klen == strlen(log->refuse) && memcmp(key, log->refuse, klen) == 0)
        return ar_error_set(err, AR_E_INVALID, "hook_refused", "the hook refuses %s", log->refuse);
    char mkey[64];
    int mlen = snprintf(mkey, sizeof mkey, "m:%.*s", (int)klen, (const char *)key);
    int rc = val ? journal_txn_put(txn, JDB_MEMORY, mkey, (size_t)mlen, val, vlen)
                 : journal_txn_put(txn, JDB_MEMORY, mkey, (size_t)mlen, "deleted", 7);
    if (rc != AR_OK)
        return rc;
    const void *back;
    size_t blen;
    rc = journal_txn_get(txn, JDB_MEMORY, mkey, (size_t)mlen, &back, &blen);
    if (rc != AR_OK)
        return rc;
    if (val && (blen != vlen || memcmp(back, val, vlen) != 0))
        return ar_error_set(err, AR_E_FAIL, "hook_mismatch", "the mirror reads back wrong");
    if (log->write_self) {
        rc = journal_txn_put(txn, JDB_APPROVALS, "self", 4, "x", 1);
        if (rc != AR_OK && !log->ignore_status)
            return rc;
    }
    if (log->huge_len) {
        rc = journal_txn_put(txn, JDB_CACHE, "huge-hook", 9, log->huge, log->huge_len);
        if (rc != AR_OK && !log->ignore_status)
            return rc;
    }
    return AR_OK;
}

/* A callback that holds a value borrowed from journal_txn_get across a journal_txn_put that
 * sets off the hook (which reads, and so adds scratch), then deletes through journal_txn_del. */
static int put_and_del_in_callback(journal_txn *txn, void *arg, ar_error *err)
{
    (void)arg;
    const void *held;
    size_t hlen;
    int rc = journal_txn_get(txn, JDB_APPROVALS, "p1", 2, &held, &hlen);
    if (rc != AR_OK)
        return rc;
    if ((rc = journal_txn_put(txn, JDB_APPROVALS, "t1", 2, "from-txn", 8)) != AR_OK ||
        (rc = journal_txn_del(txn, JDB_APPROVALS, "p2", 2)) != AR_OK)
        return rc;
    if (hlen != 3 || memcmp(held, "one", 3) != 0) /* still valid: the hook freed no scratch */
        return ar_error_set(err, AR_E_FAIL, "borrowed_value_lost", "the borrowed value changed");
    return AR_OK;
}

static void assert_log(const struct hook_log *log, const char *const *expected, int n)
{
    assert_int_equal(log->n, n);
    for (int i = 0; i < n; i++)
        assert_string_equal(log->entries[i], expected[i]);
}

static void hook_sees_every_write(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    struct hook_log log = { .n = 0 };
    assert_int_equal(journal_set_hook(j, JDB_COUNT, mirror_hook, &log), AR_E_INVALID);
    assert_int_equal(journal_set_hook(NULL, JDB_APPROVALS, mirror_hook, &log), AR_E_INVALID);
    assert_int_equal(journal_set_hook(j, JDB_APPROVALS, mirror_hook, &log), AR_OK);

    ar_error err;
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_APPROVALS, "p1", 2, "one", 3);
    journal_batch_put_unless_exists(b, JDB_APPROVALS, "p2", 2, "two", 3);
    journal_batch_put(b, JDB_ACTIONS, "p3", 2, "not hooked", 10);
    journal_batch_put(b, JDB_APPROVALS, "p4", 2, "", 0);
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);
    static const char *const first[] = {"p1=one", "p2=two", "p4="};
    assert_log(&log, first, 3);
    assert_value(j, JDB_MEMORY, "m:p1", "one");
    assert_value(j, JDB_MEMORY, "m:p2", "two");
    assert_value(j, JDB_MEMORY, "m:p4", "");
    assert_absent(j, JDB_MEMORY, "m:p3");

    /* A conditional put that finds its key runs no hook (and its batch is rolled back). */
    log.n = 0;
    b = journal_batch_new();
    journal_batch_put(b, JDB_APPROVALS, "p5", 2, "five", 4);
    journal_batch_put_unless_exists(b, JDB_APPROVALS, "p2", 2, "again", 5);
    assert_int_equal(journal_commit(j, b, &err), AR_E_EXISTS);
    journal_batch_free(b);
    static const char *const second[] = {"p5=five"};
    assert_log(&log, second, 1);
    assert_absent(j, JDB_MEMORY, "m:p5");

    /* Deletes, of a key that is there and of one that is not. */
    log.n = 0;
    b = journal_batch_new();
    journal_batch_del(b, JDB_APPROVALS, "p4", 2);
    journal_batch_del(b, JDB_APPROVALS, "nope", 4);
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);
    static const char *const third[] = {"p4!", "nope!"};
    assert_log(&log, third, 2);
    assert_value(j, JDB_MEMORY, "m:p4", "deleted");
    assert_value(j, JDB_MEMORY, "m:nope", "deleted");

    /* From a callback: journal_txn_put and journal_txn_del. */
    log.n = 0;
    b = journal_batch_new();
    journal_batch_apply(b, put_and_del_in_callback, NULL);
    if (journal_commit(j, b, &err) != AR_OK)
        fail_msg("callback: %s: %s", err.code, err.message);
    journal_batch_free(b);
    static const char *const fourth[] = {"t1=from-txn", "p2!"};
    assert_log(&log, fourth, 2);
    assert_value(j, JDB_MEMORY, "m:t1", "from-txn");
    assert_value(j, JDB_MEMORY, "m:p2", "deleted");
    assert_absent(j, JDB_APPROVALS, "p2");

    /* Removed: no more calls. */
    assert_int_equal(journal_set_hook(j, JDB_APPROVALS, NULL, NULL), AR_OK);
    log.n = 0;
    assert_int_equal(put_str(j, JDB_APPROVALS, "p6", "six"), AR_OK);
    assert_int_equal(log.n, 0);
    assert_absent(j, JDB_MEMORY, "m:p6");
    journal_close(j);
    test_rm_tree(dir);
}

static int txn_put_ignoring_status(journal_txn *txn, void *arg, ar_error *err)
{
    (void)err;
    (void)journal_txn_put(txn, JDB_APPROVALS, arg, strlen(arg), "v", 1);
    return AR_OK;
}

static void hook_failure_rolls_back_its_batch_only(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    struct hook_log log = { .refuse = "bad" };
    assert_int_equal(journal_set_hook(j, JDB_APPROVALS, mirror_hook, &log), AR_OK);
    journal_stats before, after;
    journal_get_stats(j, &before);

    struct gate g;
    hold_writer(j, &g);
    sem_t done;
    sem_init(&done, 0, 0);
    struct outcome a = { .done = &done }, by_op = { .done = &done },
                   by_txn = { .done = &done }, c = { .done = &done };
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_APPROVALS, "a", 1, "A", 1);
    submit(j, b, &a);
    b = journal_batch_new();
    journal_batch_put(b, JDB_APPROVALS, "b1", 2, "B1", 2);
    journal_batch_put(b, JDB_APPROVALS, "bad", 3, "B2", 2);
    journal_batch_put(b, JDB_ACTIONS, "b3", 2, "B3", 2);
    submit(j, b, &by_op);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "t0", 2, "T0", 2);
    journal_batch_apply(b, txn_put_ignoring_status, "bad"); /* says AR_OK: the hook wins */
    submit(j, b, &by_txn);
    b = journal_batch_new();
    journal_batch_put(b, JDB_APPROVALS, "c", 1, "C", 1);
    submit(j, b, &c);
    release_writer(&g);
    for (int i = 0; i < 4; i++)
        sem_wait(&done);
    sem_destroy(&done);

    assert_int_equal(a.status, AR_OK);
    assert_int_equal(c.status, AR_OK);
    assert_int_equal(by_op.status, AR_E_INVALID);
    assert_string_equal(by_op.code, "hook_refused");
    assert_int_equal(by_txn.status, AR_E_INVALID);
    assert_string_equal(by_txn.code, "hook_refused");
    assert_value(j, JDB_APPROVALS, "a", "A");
    assert_value(j, JDB_MEMORY, "m:a", "A");
    assert_value(j, JDB_APPROVALS, "c", "C");
    assert_value(j, JDB_MEMORY, "m:c", "C");
    /* Nothing of the failed batches: neither their own writes nor what their hook wrote. */
    assert_absent(j, JDB_APPROVALS, "b1");
    assert_absent(j, JDB_MEMORY, "m:b1");
    assert_absent(j, JDB_APPROVALS, "bad");
    assert_absent(j, JDB_ACTIONS, "b3");
    assert_absent(j, JDB_ACTIONS, "t0");
    journal_get_stats(j, &after);
    assert_int_equal(after.commits - before.commits, 2); /* the gate, then the group */
    assert_int_equal(after.batches - before.batches, 3);

    /* A hook writing into its own database is refused: no recursion. */
    log.refuse = NULL;
    log.write_self = true;
    ar_error err;
    assert_int_equal(put_bytes(j, JDB_APPROVALS, "s", "S", 1, &err), AR_E_INVALID);
    assert_string_equal(err.code, "journal_hook_recursion");
    assert_absent(j, JDB_APPROVALS, "s");
    assert_absent(j, JDB_APPROVALS, "self");
    log.ignore_status = true; /* the refusal fails the batch even when the hook goes on */
    assert_int_equal(put_bytes(j, JDB_APPROVALS, "s", "S", 1, &err), AR_E_INVALID);
    assert_string_equal(err.code, "journal_hook_recursion");
    assert_absent(j, JDB_APPROVALS, "self");
    log.write_self = false;
    log.ignore_status = false;
    assert_int_equal(put_str(j, JDB_APPROVALS, "s", "S"), AR_OK);
    assert_value(j, JDB_MEMORY, "m:s", "S");
    journal_close(j);
    destroy_gate(&g);
    test_rm_tree(dir);
}

static int quiet_failing_hook(journal_txn *txn, void *arg, const void *key, size_t klen,
                              const void *val, size_t vlen, ar_error *err)
{
    (void)txn; (void)arg; (void)key; (void)klen; (void)val; (void)vlen; (void)err;
    return AR_E_BUSY;
}

static void hook_failure_without_message_and_full_map(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 1);
    ar_error err;
    assert_int_equal(journal_set_hook(j, JDB_QUEUE, quiet_failing_hook, NULL), AR_OK);
    assert_int_equal(put_bytes(j, JDB_QUEUE, "q", "Q", 1, &err), AR_E_BUSY);
    assert_string_equal(err.code, "journal_hook_failed");
    assert_absent(j, JDB_QUEUE, "q");

    /* A hook write that fills the map spoils the transaction: storage_full, whatever the hook
     * returns, and the journal goes on. */
    struct hook_log log = { .ignore_status = true, .huge_len = (size_t)2 << 20 };
    log.huge = calloc(1, log.huge_len);
    assert_non_null(log.huge);
    assert_int_equal(journal_set_hook(j, JDB_APPROVALS, mirror_hook, &log), AR_OK);
    assert_int_equal(put_bytes(j, JDB_APPROVALS, "h", "H", 1, &err), AR_E_FULL);
    assert_string_equal(err.code, "storage_full");
    assert_absent(j, JDB_APPROVALS, "h");
    assert_absent(j, JDB_MEMORY, "m:h");
    log.huge_len = 0;
    assert_int_equal(put_str(j, JDB_APPROVALS, "h", "H"), AR_OK);
    assert_value(j, JDB_MEMORY, "m:h", "H");
    free(log.huge);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- cursors in the writer's transaction ------------------------------------------------ */

struct txn_walk {
    int status;
    char failure[128];
};

#define WALK_CHECK(cond)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            snprintf(w->failure, sizeof w->failure, "line %d: %s", __LINE__, #cond);  \
            goto out;                                                                 \
        }                                                                             \
    } while (0)

static bool at(journal_cursor *c, int op, const char *seek, const char *expected)
{
    const void *key = seek, *val;
    size_t klen = seek ? strlen(seek) : 0, vlen;
    int rc = journal_cursor_get(c, op, &key, &klen, &val, &vlen);
    if (!expected)
        return rc == AR_E_NOTFOUND;
    char want[32];
    snprintf(want, sizeof want, "val-%s", expected);
    return rc == AR_OK && klen == strlen(expected) && memcmp(key, expected, klen) == 0 &&
           vlen == strlen(want) && memcmp(val, want, vlen) == 0;
}

static int walk_in_txn(journal_txn *txn, void *arg, ar_error *err)
{
    (void)err;
    struct txn_walk *w = arg;
    journal_cursor *c = NULL;
    char key[8];
    w->failure[0] = '\0';
    WALK_CHECK(journal_txn_cursor_open(txn, JDB_COUNT, &c) == AR_E_INVALID && !c);
    WALK_CHECK(journal_txn_cursor_open(txn, JDB_APPROVALS, &c) == AR_OK);
    /* k20 was put by this batch, before this callback: the cursor sees it. */
    WALK_CHECK(at(c, JOURNAL_FIRST, NULL, "k00"));
    for (int i = 1; i <= 9; i++) {
        snprintf(key, sizeof key, "k%02d", i * 2);
        WALK_CHECK(at(c, JOURNAL_NEXT, NULL, key));
    }
    /* k19 has an unknown format version: AR_E_FORMAT (with its key), and the walk moves on. */
    const void *key_p, *val_p;
    size_t klen, vlen;
    WALK_CHECK(journal_cursor_get(c, JOURNAL_NEXT, &key_p, &klen, &val_p, &vlen) == AR_E_FORMAT);
    WALK_CHECK(klen == 3 && memcmp(key_p, "k19", 3) == 0);
    WALK_CHECK(at(c, JOURNAL_NEXT, NULL, "k20"));
    WALK_CHECK(at(c, JOURNAL_NEXT, NULL, NULL));
    WALK_CHECK(at(c, JOURNAL_LAST, NULL, "k20"));
    WALK_CHECK(at(c, JOURNAL_SEEK_GE, "k18", "k18"));
    WALK_CHECK(at(c, JOURNAL_PREV, NULL, "k16"));
    WALK_CHECK(at(c, JOURNAL_SEEK_GE, "k07", "k08"));
    WALK_CHECK(at(c, JOURNAL_SEEK_GE, "k10", "k10"));

    /* Values stay as they were until the next move, even across a write. */
    key_p = "k12";
    klen = 3;
    WALK_CHECK(journal_cursor_get(c, JOURNAL_SEEK_GE, &key_p, &klen, &val_p, &vlen) == AR_OK);
    WALK_CHECK(journal_txn_put(txn, JDB_APPROVALS, "k12", 3, "changed!", 8) == AR_OK);
    WALK_CHECK(journal_txn_put(txn, JDB_APPROVALS, "k13", 3, "val-k13", 7) == AR_OK);
    WALK_CHECK(vlen == 7 && memcmp(val_p, "val-k12", 7) == 0 && klen == 3 &&
               memcmp(key_p, "k12", 3) == 0);
    WALK_CHECK(at(c, JOURNAL_NEXT, NULL, "k13")); /* the cursor sees the new key */
    WALK_CHECK(at(c, JOURNAL_NEXT, NULL, "k14"));
    WALK_CHECK(at(c, JOURNAL_SEEK_GE, "k21", NULL));
    journal_cursor_close(c);
    c = NULL;

    WALK_CHECK(journal_txn_cursor_open(txn, JDB_CHECKPOINTS, &c) == AR_OK);
    WALK_CHECK(at(c, JOURNAL_FIRST, NULL, NULL));
    WALK_CHECK(at(c, JOURNAL_LAST, NULL, NULL));
out:
    journal_cursor_close(c);
    w->status = w->failure[0] ? AR_E_FAIL : AR_OK;
    return AR_OK;
}

static void txn_cursor_walks_and_seeks(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    journal_batch *b = journal_batch_new();
    for (int i = 0; i < 10; i++) {
        char key[8], val[16];
        snprintf(key, sizeof key, "k%02d", i * 2);
        snprintf(val, sizeof val, "val-%s", key);
        journal_batch_put(b, JDB_APPROVALS, key, strlen(key), val, strlen(val));
    }
    journal_batch_put(b, JDB_MEMORY, "k01", 3, "other db", 8);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    journal_close(j);
    raw_put(dir, "approvals", "k19", "\x63payload", 8); /* format version 99 */

    j = open_journal(dir, 0);
    struct txn_walk w = { .status = -1 };
    b = journal_batch_new();
    journal_batch_put(b, JDB_APPROVALS, "k20", 3, "val-k20", 7);
    journal_batch_apply(b, walk_in_txn, &w);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    if (w.status != AR_OK)
        fail_msg("walk in the transaction: %s", w.failure);
    assert_value(j, JDB_APPROVALS, "k12", "changed!");
    assert_value(j, JDB_APPROVALS, "k13", "val-k13");
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- callbacks whose argument the batch owns ----------------------------------------------- */

/* What an owned callback argument records: how often the callback ran, and whether (and how
 * often) it was freed, with the count of runs seen at that moment. */
struct owned_arg {
    int runs;
    int frees;
    int runs_at_free;
    int fail_with;       /* AR_OK: write "owned" -> "yes"; else return this */
};

static int owned_apply(journal_txn *txn, void *arg, ar_error *err)
{
    struct owned_arg *a = arg;
    a->runs++;
    if (a->fail_with != AR_OK)
        return ar_error_set(err, a->fail_with, "owned_failed", "the owned callback failed");
    return journal_txn_put(txn, JDB_CACHE, "owned", 5, "yes", 3);
}

/* The free function: the test keeps the struct (on its stack) and counts instead of freeing. */
static void owned_free(void *arg)
{
    struct owned_arg *a = arg;
    a->frees++;
    a->runs_at_free = a->runs;
}

/* A heap argument, really freed: ASan and the leak checker see a double or missing free. */
static void heap_free(void *arg)
{
    free(arg);
}

static int heap_apply(journal_txn *txn, void *arg, ar_error *err)
{
    (void)err;
    return journal_txn_put(txn, JDB_CACHE, "heap", 4, arg, strlen(arg));
}

static void owned_arg_freed_on_success(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    struct owned_arg a = { 0 };
    journal_batch *b = journal_batch_new();
    journal_batch_apply_owned(b, owned_apply, &a, owned_free);
    char *heap = strdup("heap value");
    journal_batch_apply_owned(b, heap_apply, heap, heap_free);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    assert_int_equal(a.runs, 1);
    assert_int_equal(a.frees, 0); /* not before the batch is freed */
    journal_batch_free(b);
    assert_int_equal(a.frees, 1);
    assert_int_equal(a.runs_at_free, 1);
    assert_value(j, JDB_CACHE, "owned", "yes");
    assert_value(j, JDB_CACHE, "heap", "heap value");

    /* Asynchronously: done frees the batch, and with it the argument. */
    struct owned_arg c = { 0 };
    sem_t done;
    sem_init(&done, 0, 0);
    struct outcome o = { .done = &done };
    b = journal_batch_new();
    journal_batch_apply_owned(b, owned_apply, &c, owned_free);
    assert_int_equal(journal_submit(j, b, on_done, &o), AR_OK);
    while (sem_wait(&done) != 0)
        ;
    assert_int_equal(o.status, AR_OK);
    journal_close(j); /* the writer has returned from done: the batch is freed */
    assert_int_equal(c.runs, 1);
    assert_int_equal(c.frees, 1);
    sem_destroy(&done);
    test_rm_tree(dir);
}

static void owned_arg_freed_on_failure(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    assert_int_equal(put_str(j, JDB_CACHE, "taken", "first"), AR_OK);

    /* A conditional put that conflicts, after the callback ran. */
    struct owned_arg a = { 0 };
    journal_batch *b = journal_batch_new();
    journal_batch_apply_owned(b, owned_apply, &a, owned_free);
    journal_batch_put_unless_exists(b, JDB_CACHE, "taken", 5, "second", 6);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_EXISTS);
    assert_int_equal(a.runs, 1);
    assert_int_equal(a.frees, 0);
    journal_batch_free(b);
    assert_int_equal(a.frees, 1);
    assert_absent(j, JDB_CACHE, "owned"); /* rolled back with its batch */

    /* The callback itself fails. */
    struct owned_arg f = { .fail_with = AR_E_CONFLICT };
    char *heap = strdup("never stored");
    b = journal_batch_new();
    journal_batch_apply_owned(b, owned_apply, &f, owned_free);
    journal_batch_apply_owned(b, heap_apply, heap, heap_free); /* never runs */
    assert_int_equal(journal_commit(j, b, &err), AR_E_CONFLICT);
    assert_string_equal(err.code, "owned_failed");
    journal_batch_free(b);
    assert_int_equal(f.runs, 1);
    assert_int_equal(f.frees, 1);
    assert_absent(j, JDB_CACHE, "heap");

    /* Refused whole before anything ran (a bad database in the batch). */
    struct owned_arg r = { 0 };
    b = journal_batch_new();
    journal_batch_apply_owned(b, owned_apply, &r, owned_free);
    journal_batch_put(b, JDB_COUNT, "k", 1, "v", 1);
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    journal_batch_free(b);
    assert_int_equal(r.runs, 0);
    assert_int_equal(r.frees, 1);

    journal_close(j);
    test_rm_tree(dir);
}

static void owned_arg_freed_when_never_committed(void **state)
{
    (void)state;
    struct owned_arg a = { 0 }, c = { 0 };
    journal_batch *b = journal_batch_new();
    journal_batch_apply_owned(b, owned_apply, &a, owned_free);
    journal_batch_apply(b, owned_apply, &c); /* not owned: never freed by the batch */
    journal_batch_apply_owned(b, heap_apply, strdup("never committed"), heap_free);
    journal_batch_apply_owned(b, owned_apply, NULL, NULL); /* nothing to free */
    journal_batch_free(b);
    assert_int_equal(a.runs, 0);
    assert_int_equal(a.frees, 1);
    assert_int_equal(c.frees, 0);

    /* No batch (journal_batch_new failed): freed at once. */
    struct owned_arg n = { 0 };
    journal_batch_apply_owned(NULL, owned_apply, &n, owned_free);
    assert_int_equal(n.frees, 1);
    journal_batch_apply_owned(NULL, heap_apply, strdup("no batch"), heap_free);
}


/* A callback run again when its group's transaction is abandoned (a full map): its argument is
 * freed once, after the last run, with the batch. */
static void owned_arg_freed_once_after_reruns(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 1);
    size_t huge_len = (size_t)2 << 20;
    char *huge = calloc(1, huge_len);
    assert_non_null(huge);
    struct gate g;
    hold_writer(j, &g);
    sem_t done;
    sem_init(&done, 0, 0);
    struct outcome small = { .done = &done }, big = { .done = &done };
    struct owned_arg a = { 0 };
    journal_batch *b = journal_batch_new();
    journal_batch_apply_owned(b, owned_apply, &a, owned_free);
    submit(j, b, &small);
    b = journal_batch_new();
    journal_batch_put(b, JDB_CACHE, "huge", 4, huge, huge_len);
    submit(j, b, &big);
    release_writer(&g);
    for (int i = 0; i < 2; i++)
        sem_wait(&done);
    sem_destroy(&done);
    assert_int_equal(small.status, AR_OK);
    assert_int_equal(big.status, AR_E_FULL);
    assert_int_equal(a.runs, 2);         /* in the group, then alone */
    assert_int_equal(a.frees, 1);
    assert_int_equal(a.runs_at_free, 2); /* never run after it was freed */
    assert_value(j, JDB_CACHE, "owned", "yes");
    journal_close(j);
    destroy_gate(&g);
    free(huge);
    test_rm_tree(dir);
}


/* ---- an environment made before the counters database ------------------------------------ */

static void older_environment_gets_new_databases(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    /* Only "meta" with schema version 1, as an older build left it. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", MDB_CREATE, &dbi), 0);
    unsigned char rec[5] = { JOURNAL_RECORD_VERSION, 1, 0, 0, 0 };
    MDB_val k = { 14, "schema_version" }, v = { sizeof rec, rec };
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    journal *j = open_journal(dir, 0);
    assert_int_equal(put_str(j, JDB_COUNTERS, "defs", "[]"), AR_OK);
    journal_close(j);
    j = open_journal(dir, 0);
    assert_value(j, JDB_COUNTERS, "defs", "[]");
    assert_absent(j, JDB_CONNECTORS, "defs"); /* its own database */
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- completion, direct batches, appends ------------------------------------------------- */

/* What the done callbacks saw: their order, their thread, and a gate one of them waits at. */
struct order_log {
    pthread_mutex_t mu;
    int seen[64];
    int n;
    pthread_t threads[64];
    sem_t all_done;
    int expected;
    int block_at;             /* the done callback of this index waits at hold ... */
    sem_t holding, hold;      /* ... having posted holding */
};

struct ordered {
    struct order_log *log;
    int index;
};

static void ordered_done(void *arg, int status, journal_batch *b, const ar_error *err)
{
    (void)err;
    struct ordered *o = arg;
    struct order_log *log = o->log;
    assert_int_equal(status, AR_OK);
    journal_batch_free(b);
    if (o->index == log->block_at) {
        sem_post(&log->holding);
        sem_wait(&log->hold);
    }
    pthread_mutex_lock(&log->mu);
    log->threads[log->n] = pthread_self();
    log->seen[log->n++] = o->index;
    bool last = log->n == log->expected;
    pthread_mutex_unlock(&log->mu);
    if (last)
        sem_post(&log->all_done);
}

static int note_thread(journal_txn *txn, void *arg, ar_error *err)
{
    (void)txn; (void)err;
    *(pthread_t *)arg = pthread_self();
    return AR_OK;
}

static int post_sem(journal_txn *txn, void *arg, ar_error *err)
{
    (void)txn; (void)err;
    sem_post(arg);
    return AR_OK;
}

/* Done callbacks run on a thread of their own (not the writer), one at a time, in order
 * (within a commit in batch order, commits in order); while one of them is slow the writer
 * goes on committing and journal_commit callers are still told; journal_close runs every one
 * of them before it returns. */
static void done_callbacks_run_in_order_off_the_writer(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    static struct order_log log;
    memset(&log, 0, sizeof log);
    pthread_mutex_init(&log.mu, NULL);
    sem_init(&log.all_done, 0, 0);
    sem_init(&log.holding, 0, 0);
    sem_init(&log.hold, 0, 0);
    log.expected = 40;
    log.block_at = 5;
    struct ordered os[40];
    pthread_t writer_thread;
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, note_thread, &writer_thread);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);

    /* 20 batches in one group (held at the gate), then 20 more in groups as they come. */
    struct gate g;
    hold_writer(j, &g);
    for (int i = 0; i < 40; i++) {
        if (i == 20) {
            release_writer(&g);
            sem_wait(&log.holding); /* done #5 is now stuck */
        }
        os[i] = (struct ordered){ .log = &log, .index = i };
        char key[16];
        snprintf(key, sizeof key, "o%02d", i);
        b = journal_batch_new();
        journal_batch_put(b, JDB_ACTIONS, key, strlen(key), "v", 1);
        assert_int_equal(journal_submit(j, b, ordered_done, &os[i]), AR_OK);
    }
    /* The writer is not held up by the stuck done callback: it runs a callback of a later
     * batch and tells a journal_commit caller. */
    sem_t ran;
    sem_init(&ran, 0, 0);
    b = journal_batch_new();
    journal_batch_apply(b, post_sem, &ran);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    sem_wait(&ran);
    sem_destroy(&ran);
    assert_value(j, JDB_ACTIONS, "o39", "v"); /* committed, its done not run yet */
    pthread_mutex_lock(&log.mu);
    assert_int_equal(log.n, 5);
    pthread_mutex_unlock(&log.mu);
    sem_post(&log.hold);
    sem_wait(&log.all_done);
    for (int i = 0; i < 40; i++) {
        assert_int_equal(log.seen[i], i);
        assert_false(pthread_equal(log.threads[i], writer_thread));
        assert_true(pthread_equal(log.threads[i], log.threads[0]));
    }

    /* journal_close waits for done callbacks still to run, the slow one included. */
    log.n = 0;
    log.expected = 10;
    log.block_at = 3;
    for (int i = 0; i < 10; i++) {
        os[i] = (struct ordered){ .log = &log, .index = i };
        b = journal_batch_new();
        journal_batch_put(b, JDB_QUEUE, "k", 1, "v", 1);
        assert_int_equal(journal_submit(j, b, ordered_done, &os[i]), AR_OK);
    }
    sem_wait(&log.holding);
    pthread_t closer;
    assert_int_equal(pthread_create(&closer, NULL, close_main, j), 0);
    sem_post(&log.hold);
    pthread_join(closer, NULL);
    assert_int_equal(log.n, 10); /* every one ran before journal_close returned */
    for (int i = 0; i < 10; i++)
        assert_int_equal(log.seen[i], i);
    destroy_gate(&g);
    sem_destroy(&log.all_done);
    sem_destroy(&log.holding);
    sem_destroy(&log.hold);
    pthread_mutex_destroy(&log.mu);
    test_rm_tree(dir);
}

static int count_runs(journal_txn *txn, void *arg, ar_error *err)
{
    (void)err;
    (*(int *)arg)++;
    return journal_txn_put(txn, JDB_CACHE, "cb", 2, "ran", 3);
}

/* Batches of plain puts and deletes run in the shared transaction itself; one of them failing
 * (here through a hook) is still rolled back alone: the group is run again with every batch
 * nested. A batch with an empty key, or a callback, or a conditional put runs nested from the
 * start. */
static void plain_batches_run_directly_and_still_fail_alone(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    struct hook_log log = { .refuse = "bad" };
    assert_int_equal(journal_set_hook(j, JDB_APPROVALS, mirror_hook, &log), AR_OK);
    journal_stats s0, s1, s2, s3;
    sem_t done;
    sem_init(&done, 0, 0);

    /* All plain: every batch direct, one transaction. */
    journal_get_stats(j, &s0);
    struct gate g;
    hold_writer(j, &g);
    struct outcome plain[6];
    memset(plain, 0, sizeof plain);
    for (int i = 0; i < 6; i++) {
        plain[i].done = &done;
        char key[16];
        snprintf(key, sizeof key, "p%d", i);
        journal_batch *b = journal_batch_new();
        journal_batch_put(b, JDB_ACTIONS, key, strlen(key), "P", 1);
        journal_batch_put(b, JDB_APPROVALS, key, strlen(key), "A", 1);
        journal_batch_del(b, JDB_QUEUE, key, strlen(key));
        submit(j, b, &plain[i]);
    }
    release_writer(&g);
    for (int i = 0; i < 6; i++)
        sem_wait(&done);
    destroy_gate(&g);
    journal_get_stats(j, &s1);
    for (int i = 0; i < 6; i++)
        assert_int_equal(plain[i].status, AR_OK);
    assert_int_equal(s1.commits - s0.commits, 2);        /* the gate, then the group */
    assert_int_equal(s1.direct_batches - s0.direct_batches, 6 + 1); /* the gate: a group of one */
    assert_int_equal(s1.nested_batches - s0.nested_batches, 0);
    assert_int_equal(s1.regrouped - s0.regrouped, 0);
    assert_value(j, JDB_MEMORY, "m:p3", "A");

    /* Mixed: plain ones direct, the callback and the conditional put nested; one plain batch
     * refused by the hook, one with an empty key. */
    hold_writer(j, &g);
    struct outcome ok1 = { .done = &done }, refused = { .done = &done }, empty = { .done = &done },
                   cb = { .done = &done }, cond = { .done = &done }, ok2 = { .done = &done };
    int runs = 0;
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "m1", 2, "M1", 2);
    submit(j, b, &ok1);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "r1", 2, "R1", 2);
    journal_batch_put(b, JDB_APPROVALS, "bad", 3, "B", 1);
    submit(j, b, &refused);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "e1", 2, "E1", 2);
    journal_batch_put(b, JDB_ACTIONS, "", 0, "E2", 2);
    submit(j, b, &empty);
    b = journal_batch_new();
    journal_batch_apply(b, count_runs, &runs);
    submit(j, b, &cb);
    b = journal_batch_new();
    journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "c1", 2, "C1", 2);
    submit(j, b, &cond);
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "m2", 2, "M2", 2);
    submit(j, b, &ok2);
    release_writer(&g);
    for (int i = 0; i < 6; i++)
        sem_wait(&done);
    destroy_gate(&g);
    journal_get_stats(j, &s2);
    assert_int_equal(ok1.status, AR_OK);
    assert_int_equal(ok2.status, AR_OK);
    assert_int_equal(cb.status, AR_OK);
    assert_int_equal(cond.status, AR_OK);
    assert_int_equal(refused.status, AR_E_INVALID);
    assert_string_equal(refused.code, "hook_refused");
    assert_int_equal(empty.status, AR_E_INVALID);
    assert_string_equal(empty.code, "journal_invalid_key");
    assert_value(j, JDB_ACTIONS, "m1", "M1");
    assert_value(j, JDB_ACTIONS, "m2", "M2");
    assert_value(j, JDB_CACHE, "cb", "ran");
    assert_value(j, JDB_IDEMPOTENCY, "c1", "C1");
    assert_absent(j, JDB_ACTIONS, "r1");
    assert_absent(j, JDB_APPROVALS, "bad");
    assert_absent(j, JDB_ACTIONS, "e1");
    assert_true(runs >= 1); /* once, or again when the group was run again */
    assert_int_equal(s2.commits - s1.commits, 2);
    assert_int_equal(s2.batches - s1.batches, 1 + 4);
    assert_int_equal(s2.regrouped - s1.regrouped, 1); /* "refused" ran directly, then failed */
    assert_int_equal(s2.nested_batches - s1.nested_batches, 4); /* run again: all nested */

    /* Without the refusal the same mix runs plain batches directly, the others nested. */
    hold_writer(j, &g);
    memset(&ok1, 0, sizeof ok1);
    memset(&cb, 0, sizeof cb);
    memset(&cond, 0, sizeof cond);
    ok1.done = cb.done = cond.done = &done;
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "m3", 2, "M3", 2);
    submit(j, b, &ok1);
    b = journal_batch_new();
    journal_batch_apply(b, count_runs, &runs);
    submit(j, b, &cb);
    b = journal_batch_new();
    journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "c1", 2, "again", 5);
    submit(j, b, &cond);
    release_writer(&g);
    for (int i = 0; i < 3; i++)
        sem_wait(&done);
    destroy_gate(&g);
    journal_get_stats(j, &s3);
    assert_int_equal(ok1.status, AR_OK);
    assert_int_equal(cb.status, AR_OK);
    assert_int_equal(cond.status, AR_E_EXISTS);
    assert_string_equal(cond.conflict_val, "C1");
    assert_int_equal(s3.direct_batches - s2.direct_batches, 1 + 1); /* gate, m3 */
    assert_int_equal(s3.nested_batches - s2.nested_batches, 1);     /* cb; cond failed */
    assert_int_equal(s3.regrouped - s2.regrouped, 0);
    sem_destroy(&done);
    journal_close(j);
    test_rm_tree(dir);
}

/* journal_commit callers: every one told its own outcome, and no more wake-ups than callers
 * (only those asleep are woken, each once). */
struct committer {
    journal *j;
    int id;
    int failures, conflicts;
};

static void *committer_main(void *arg)
{
    struct committer *c = arg;
    for (int i = 0; i < 50; i++) {
        char key[32];
        snprintf(key, sizeof key, "c%02d-%03d", c->id, i);
        journal_batch *b = journal_batch_new();
        journal_batch_put(b, JDB_ACTIONS, key, strlen(key), key, strlen(key));
        if (i % 7 == 3) /* taken by everyone: the first one wins */
            journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, "shared", 6, key, strlen(key));
        ar_error err;
        int rc = journal_commit(c->j, b, &err);
        if (rc == AR_E_EXISTS)
            c->conflicts++;
        else if (rc != AR_OK)
            c->failures++;
        journal_batch_free(b);
    }
    return NULL;
}

static void commit_callers_are_each_woken_once(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    enum { CALLERS = 16 };
    pthread_t t[CALLERS];
    struct committer cs[CALLERS];
    journal_stats before, after;
    journal_get_stats(j, &before);
    for (int i = 0; i < CALLERS; i++) {
        cs[i] = (struct committer){ .j = j, .id = i };
        assert_int_equal(pthread_create(&t[i], NULL, committer_main, &cs[i]), 0);
    }
    int conflicts = 0;
    for (int i = 0; i < CALLERS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(cs[i].failures, 0);
        conflicts += cs[i].conflicts;
    }
    journal_get_stats(j, &after);
    int per_caller_conditional = 0;
    for (int i = 0; i < 50; i++)
        per_caller_conditional += i % 7 == 3;
    assert_int_equal(conflicts, CALLERS * per_caller_conditional - 1);
    assert_int_equal(after.batches - before.batches, CALLERS * 50 - conflicts);
    assert_true(after.wakeups - before.wakeups <= (uint64_t)CALLERS * 50);
    for (int i = 0; i < CALLERS; i++)
        for (int k = 0; k < 50; k++) {
            char key[32];
            snprintf(key, sizeof key, "c%02d-%03d", i, k);
            if (k % 7 == 3)
                continue; /* there only if it won the shared key */
            assert_value(j, JDB_ACTIONS, key, key);
        }
    journal_close(j);
    test_rm_tree(dir);
}

static int put_last_in_txn(journal_txn *txn, void *arg, ar_error *err)
{
    (void)err;
    const char *const *kv = arg;
    return journal_txn_put_last(txn, JDB_CHECKPOINTS, kv[0], strlen(kv[0]), kv[1], strlen(kv[1]));
}

/* Puts of keys expected last: the same result as plain puts whatever the key (last, before
 * the last, existing, in an empty database), through batches and callbacks; and pages filled
 * when the keys do come in order. */
static void put_last_appends_or_puts(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    const char *order[] = {"k05", "k07", "k06", "k07", "k01", "k09"};
    const char *vals[] = {"a", "b", "c", "d", "e", "f"};
    for (int i = 0; i < 6; i++) {
        journal_batch *b = journal_batch_new();
        journal_batch_put_last(b, JDB_AUDIT, order[i], 3, vals[i], 1);
        journal_batch_put_last(b, JDB_AUDIT, order[i], 3, vals[i], 1); /* the same key twice */
        const char *kv[2] = {order[i], vals[i]};
        journal_batch_apply(b, put_last_in_txn, (void *)kv);
        assert_int_equal(journal_commit(j, b, NULL), AR_OK);
        journal_batch_free(b);
    }
    assert_value(j, JDB_AUDIT, "k05", "a");
    assert_value(j, JDB_AUDIT, "k07", "d");
    assert_value(j, JDB_AUDIT, "k06", "c");
    assert_value(j, JDB_AUDIT, "k01", "e");
    assert_value(j, JDB_AUDIT, "k09", "f");
    assert_value(j, JDB_CHECKPOINTS, "k07", "d");
    assert_value(j, JDB_CHECKPOINTS, "k01", "e");
    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_cursor_open(r, JDB_AUDIT, &c), AR_OK);
    const char *want[] = {"k01", "k05", "k06", "k07", "k09"};
    int n = 0;
    const void *k;
    size_t kl;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, &k, &kl, NULL, NULL) == AR_OK;
         op = JOURNAL_NEXT, n++) {
        assert_true(n < 5);
        assert_int_equal(kl, 3);
        assert_memory_equal(k, want[n], 3);
    }
    assert_int_equal(n, 5);
    journal_cursor_close(c);
    journal_read_end(r);

    /* 600 records of 1.5 KB in key order: two fit a 4 KB page. Appended, the pages fill (about
     * 2 KB a record); put the ordinary way, each split leaves one record behind (4 KB). */
    static char big[1500];
    memset(big, 'x', sizeof big);
    journal_stats s0, s1, s2;
    journal_get_stats(j, &s0);
    for (int i = 0; i < 600; i += 50) {
        journal_batch *b = journal_batch_new();
        for (int k2 = i; k2 < i + 50; k2++) {
            char key[32];
            snprintf(key, sizeof key, "%026d", k2);
            journal_batch_put_last(b, JDB_ACTIONS, key, 26, big, sizeof big);
        }
        assert_int_equal(journal_commit(j, b, NULL), AR_OK);
        journal_batch_free(b);
    }
    journal_get_stats(j, &s1);
    for (int i = 0; i < 600; i += 50) {
        journal_batch *b = journal_batch_new();
        for (int k2 = i; k2 < i + 50; k2++) {
            char key[32];
            snprintf(key, sizeof key, "%026d", k2);
            journal_batch_put(b, JDB_CACHE, key, 26, big, sizeof big);
        }
        assert_int_equal(journal_commit(j, b, NULL), AR_OK);
        journal_batch_free(b);
    }
    journal_get_stats(j, &s2);
    size_t appended = s1.map_used - s0.map_used, plain = s2.map_used - s1.map_used;
    print_message("600 records of 1.5 KB: %zu bytes appended, %zu put\n", appended, plain);
    assert_true(appended < 600 * 2600);
    assert_true(plain > 600 * 3200);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- done callbacks on the writer -------------------------------------------------------- */

struct inline_probe {
    journal *j;
    int commit_status;
    char commit_code[48];
    sem_t done;
};

static void commit_from_done(void *arg, int status, journal_batch *b, const ar_error *err)
{
    (void)status;
    (void)err;
    struct inline_probe *p = arg;
    journal_batch_free(b);
    journal_batch *inner = journal_batch_new();
    journal_batch_put(inner, JDB_CACHE, "inner", 5, "x", 1);
    ar_error e = {0};
    p->commit_status = journal_commit(p->j, inner, &e);
    snprintf(p->commit_code, sizeof p->commit_code, "%s", e.code);
    journal_batch_free(inner);
    sem_post(&p->done);
}

/* A lone batch at rest: the writer runs its done callback itself (no hand-off), where
 * journal_commit is refused at once (it would wait for the writer it runs on) instead of
 * hanging. */
static void a_lone_done_callback_runs_on_the_writer_and_cannot_commit_there(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    struct inline_probe p = {.j = j};
    sem_init(&p.done, 0, 0);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_CACHE, "outer", 5, "y", 1);
    assert_int_equal(journal_submit(j, b, commit_from_done, &p), AR_OK);
    sem_wait(&p.done);
    assert_int_equal(p.commit_status, AR_E_BUSY);
    assert_string_equal(p.commit_code, "internal");
    assert_value(j, JDB_CACHE, "outer", "y");
    assert_absent(j, JDB_CACHE, "inner");
    assert_int_equal(put_str(j, JDB_CACHE, "after", "z"), AR_OK); /* the journal goes on */
    sem_destroy(&p.done);
    journal_close(j);
    test_rm_tree(dir);
}

struct done_order {
    pthread_mutex_t mu;
    int seen[400];
    int n;
    sem_t all;
    int total;
};

struct done_order_arg {
    struct done_order *log;
    int index;
};

static void note_order(void *arg, int status, journal_batch *b, const ar_error *err)
{
    (void)err;
    struct done_order_arg *a = arg;
    journal_batch_free(b);
    assert_int_equal(status, AR_OK);
    pthread_mutex_lock(&a->log->mu);
    a->log->seen[a->log->n++] = a->index;
    int last = a->log->n == a->log->total;
    pthread_mutex_unlock(&a->log->mu);
    if (a->index % 7 == 0)
        usleep(200); /* a slow callback now and then: later groups pile up behind it */
    if (last)
        sem_post(&a->log->all);
}

/* Done callbacks keep their order when some groups are reported by the writer and others by
 * the completion thread (submissions in bursts and one at a time). */
static void done_callbacks_keep_order_between_writer_and_completer(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    static struct done_order log;
    static struct done_order_arg args[400];
    memset(&log, 0, sizeof log);
    pthread_mutex_init(&log.mu, NULL);
    sem_init(&log.all, 0, 0);
    log.total = 400;
    for (int i = 0; i < 400; i++) {
        args[i] = (struct done_order_arg){&log, i};
        journal_batch *b = journal_batch_new();
        char key[16];
        snprintf(key, sizeof key, "o%03d", i);
        journal_batch_put(b, JDB_CACHE, key, strlen(key), "v", 1);
        assert_int_equal(journal_submit(j, b, note_order, &args[i]), AR_OK);
        if (i % 50 < 5)
            usleep(3000); /* now and then one alone, at rest */
    }
    sem_wait(&log.all);
    for (int i = 0; i < 400; i++)
        assert_int_equal(log.seen[i], i);
    sem_destroy(&log.all);
    pthread_mutex_destroy(&log.mu);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- the writer's time and priority ------------------------------------------------------ */

/* The writer's time is counted for the transactions it commits, not for one it abandons. */
static void stats_count_the_writers_time(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    journal *j = open_journal(dir, 0);
    journal_stats s0, s1, s2;
    journal_get_stats(j, &s0);
    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof key, "t%d", i);
        assert_int_equal(put_str(j, JDB_ACTIONS, key, "v"), AR_OK);
    }
    journal_get_stats(j, &s1);
    assert_int_equal(s1.commits - s0.commits, 3);
    assert_true(s1.run_ns > s0.run_ns);       /* each began, ran a put, then committed */
    assert_true(s1.commit_ns > s0.commit_ns); /* and was written and synced */

    /* Alone and failing: the transaction is abandoned, nothing is counted. */
    journal_batch *b = journal_batch_new();
    journal_batch_put_unless_exists(b, JDB_ACTIONS, "t1", 2, "w", 1);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_EXISTS);
    journal_batch_free(b);
    journal_get_stats(j, &s2);
    assert_int_equal(s2.commits, s1.commits);
    assert_int_equal(s2.run_ns, s1.run_ns);
    assert_int_equal(s2.commit_ns, s1.commit_ns);
    journal_close(j);
    test_rm_tree(dir);
}

static int thread_nice(int *out)
{
    errno = 0;
    *out = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
    return errno ? -1 : 0;
}

static int note_writer_nice(journal_txn *txn, void *arg, ar_error *err)
{
    (void)txn; (void)err;
    return thread_nice(arg) == 0 ? AR_OK : AR_E_FAIL;
}

struct nice_probe {
    int want;
    bool ok;
};

static void *probe_nice(void *arg)
{
    struct nice_probe *p = arg;
    p->ok = setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), p->want) == 0;
    return NULL;
}

/* What a journal opened from this thread does with its writer's priority: *got, the writer's
 * nice value, and *expected: 10 levels above this thread's when a thread started from here
 * may raise itself that far (capped at -20), this thread's otherwise. -1 on a setup failure. */
struct nice_check {
    const char *dir;
    bool drop_cap;  /* first drop CAP_SYS_NICE from this thread (and so from the writer) */
    int got, expected;
    int failed;
};

static void *check_writer_nice(void *arg)
{
    struct nice_check *c = arg;
    c->failed = -1;
    if (c->drop_cap) { /* capabilities are per thread: the others keep theirs */
        struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct d[2];
        if (syscall(SYS_capget, &h, d) != 0)
            return NULL;
        d[CAP_SYS_NICE / 32].effective &= ~(1u << (CAP_SYS_NICE % 32));
        if (syscall(SYS_capset, &h, d) != 0)
            return NULL;
    }
    int base;
    if (thread_nice(&base) != 0)
        return NULL;
    struct nice_probe probe = { .want = base - 10 < -20 ? -20 : base - 10 };
    pthread_t t;
    if (pthread_create(&t, NULL, probe_nice, &probe) != 0)
        return NULL;
    pthread_join(t, NULL);
    c->expected = probe.ok ? probe.want : base;

    journal_opts opts = { .dir = c->dir };
    journal *j = NULL;
    if (journal_open(&opts, &j, NULL) != AR_OK)
        return NULL;
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, note_writer_nice, &c->got);
    int rc = journal_commit(j, b, NULL);
    journal_batch_free(b);
    journal_close(j);
    c->failed = rc == AR_OK ? 0 : -1;
    return NULL;
}

/* The writer asks to run 10 nice levels above the thread that opened the journal, and runs
 * at that thread's priority when it may not (here: CAP_SYS_NICE dropped, unless RLIMIT_NICE
 * allows it anyway: the probe says which). */
static void writer_runs_at_a_higher_priority_when_it_may(void **state)
{
    (void)state;
    char *dir = test_tmpdir("journal");
    for (int drop = 0; drop < 2; drop++) {
        struct nice_check c = { .dir = dir, .drop_cap = drop };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, check_writer_nice, &c), 0);
        pthread_join(t, NULL);
        assert_int_equal(c.failed, 0);
        print_message("writer nice %d (expected %d)%s\n", c.got, c.expected,
                      drop ? " without CAP_SYS_NICE" : "");
        assert_int_equal(c.got, c.expected);
    }
    test_rm_tree(dir);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(a_map_too_large_for_the_address_space_names_map_size),
    cmocka_unit_test(roundtrip_and_reopen),
    cmocka_unit_test(conflict_rolls_back_its_batch_only),
    cmocka_unit_test(conditional_insert_race),
    cmocka_unit_test(group_commit_many_threads),
    cmocka_unit_test(apply_reads_then_writes),
    cmocka_unit_test(apply_failure_rolls_back_its_batch_only),
    cmocka_unit_test(record_format_refusal),
    cmocka_unit_test(schema_version_refusal),
    cmocka_unit_test(map_full_is_a_clean_error),
    cmocka_unit_test(map_full_fails_only_the_batch_that_does_not_fit),
    cmocka_unit_test(stale_reader_slots_are_cleared),
    cmocka_unit_test(async_submit_reports_once),
    cmocka_unit_test(close_completes_batches_in_flight),
    cmocka_unit_test(cursor_walk_and_seek),
    cmocka_unit_test(bad_batches_are_refused_whole),
    cmocka_unit_test(backup_while_writers_commit),
    cmocka_unit_test(backup_is_compacted),
    cmocka_unit_test(backup_refuses_a_used_target),
    cmocka_unit_test(hook_sees_every_write),
    cmocka_unit_test(hook_failure_rolls_back_its_batch_only),
    cmocka_unit_test(hook_failure_without_message_and_full_map),
    cmocka_unit_test(txn_cursor_walks_and_seeks),
    cmocka_unit_test(older_environment_gets_new_databases),
    cmocka_unit_test(owned_arg_freed_on_success),
    cmocka_unit_test(owned_arg_freed_on_failure),
    cmocka_unit_test(owned_arg_freed_when_never_committed),
    cmocka_unit_test(owned_arg_freed_once_after_reruns),
    cmocka_unit_test(done_callbacks_run_in_order_off_the_writer),
    cmocka_unit_test(plain_batches_run_directly_and_still_fail_alone),
    cmocka_unit_test(commit_callers_are_each_woken_once),
    cmocka_unit_test(put_last_appends_or_puts),
    cmocka_unit_test(a_lone_done_callback_runs_on_the_writer_and_cannot_commit_there),
    cmocka_unit_test(done_callbacks_keep_order_between_writer_and_completer),
    cmocka_unit_test(stats_count_the_writers_time),
    cmocka_unit_test(writer_runs_at_a_higher_priority_when_it_may),
};

AR_TEST_MAIN(tests, NULL, NULL)
