/*
 * bench_journal.c - aiorun-bench-journal: durable records per second and commits per second of
 * the journal (group commit by its writer thread) with N concurrent callers, next to LMDB used
 * directly (every caller its own synced write transaction: no grouping).
 *
 *   aiorun-bench-journal [--mode journal|lmdb|audit] [--callers N] [--records R]
 *                        [--value-bytes B] [--window W] [--dir PARENT] [--warmup S] [--runs N]
 *                        [--duration S] [--label NAME]
 *
 * Each caller loops: a batch of R new records (keys in creation order across all callers, as
 * action ids are; value: B bytes; default 1 record of 1024 bytes, about an action record) in
 * JDB_CACHE, journal_commit, which returns
 * once the transaction holding the batch is synced. Mode lmdb does the same with
 * mdb_txn_begin/mdb_put/mdb_txn_commit from each caller, with the journal's environment flags
 * (MDB_NOTLS, synced). The environment lives in a fresh directory under PARENT (default /tmp)
 * and is removed afterwards. Per run (a window of --duration seconds): records/s, commits/s
 * (the journal's own count of write transactions), batches per commit, the exact p50/p99 of
 * one caller's commit latency. Mode journal also reports, per commit, how many callers had to
 * be woken (a futex wake each) and how many batches ran directly in the shared transaction
 * rather than nested, and where the writer's time per commit went: running the batches in the
 * transaction ("run", LMDB puts) and committing it ("sync": LMDB writing the pages and syncing
 * them); at the end, the bytes of the environment in use per record written (per batch in mode
 * audit), warm-up included.
 *
 * --window W (mode journal) measures a journal whose history is bounded, as retention keeps
 * the daemon's: W records are put first (not timed), then each record put also deletes the
 * one put W records before it, in the same batch. The file then stops growing: new pages come
 * from the ones the deletes freed, and a sync no longer writes the file's size (its inode) as
 * it does at every commit of a journal that grows. records/s counts the records put.
 *
 * Mode audit is mode journal with batches shaped like the scheduler's state changes: each
 * batch puts one record (B bytes, key in creation order, in JDB_ACTIONS) and appends R audit
 * entries about it (audit_batch_append, data as a "completed" entry's); records/s counts the
 * audit entries.
 */
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit.h"
#include "bench_common.h"
#include "journal.h"

typedef struct bench {
    int lmdb, audit;
    int callers, records;
    long window;              /* --window: the history kept, in records (0: all) */
    size_t value_bytes;
    char *value;
    journal *j;
    MDB_env *env;
    MDB_dbi dbi;
    int64_t t0, t_end;
    pthread_barrier_t start;
    atomic_ullong next_key;   /* keys in creation order, as action ids (ULIDs) are */
} bench;

typedef struct caller {
    pthread_t th;
    bench *b;
    int64_t *end_ns;
    uint64_t *lat_ns;
    size_t n, cap;
    int failed;
    char error[600];
} caller;

/* Key number n: a 26-character, zero-padded sequence number. */
static int key_text(unsigned long long n, char key[48])
{
    return snprintf(key, 48, "%026llu", n);
}

/* The next key, so keys arrive in order from all callers together, as action ids do; its
 * number goes to *n when n is not NULL. */
static int next_key(bench *b, char key[48], unsigned long long *n)
{
    unsigned long long k = atomic_fetch_add(&b->next_key, 1);
    if (n)
        *n = k;
    return key_text(k, key);
}

static int commit_lmdb(caller *c)
{
    bench *b = c->b;
    MDB_txn *txn;
    int rc = mdb_txn_begin(b->env, NULL, 0, &txn);
    for (int r = 0; rc == 0 && r < b->records; r++) {
        char key[48];
        int klen = next_key(b, key, NULL);
        MDB_val k = {.mv_size = (size_t)klen, .mv_data = key}, v = {.mv_size = b->value_bytes, .mv_data = b->value};
        rc = mdb_put(txn, b->dbi, &k, &v, 0);
    }
    if (rc == 0)
        return mdb_txn_commit(txn) == 0 ? 0 : -1;
    mdb_txn_abort(txn);
    snprintf(c->error, sizeof c->error, "lmdb: %s", mdb_strerror(rc));
    return -1;
}

static int commit_journal(caller *c)
{
    bench *b = c->b;
    journal_batch *batch = journal_batch_new();
    if (b->audit) {
        char key[48], id[27];
        int klen = next_key(b, key, NULL);
        journal_batch_put(batch, JDB_ACTIONS, key, (size_t)klen, b->value, b->value_bytes);
        memcpy(id, key, 26); /* an action id is 26 characters, as the key is */
        id[26] = '\0';
        for (int r = 0; r < b->records; r++)
            audit_batch_append(batch, "completed", id,
                               json_pack("{s:i, s:s, s:i, s:i, s:n, s:s, s:n}", "attempt", 1, "outcome", "ok",
                                         "http_status", 200, "latency_ms", r, "error_class", "state",
                                         "SUCCEEDED", "cost"));
    } else {
        for (int r = 0; r < b->records; r++) {
            char key[48];
            unsigned long long n;
            int klen = next_key(b, key, &n);
            journal_batch_put(batch, JDB_CACHE, key, (size_t)klen, b->value, b->value_bytes);
            if (b->window > 0) { /* the oldest record goes, as retention would take it */
                klen = key_text(n - (unsigned long long)b->window, key);
                journal_batch_del(batch, JDB_CACHE, key, (size_t)klen);
            }
        }
    }
    ar_error err = {0};
    int rc = journal_commit(b->j, batch, &err);
    journal_batch_free(batch);
    if (rc != AR_OK)
        snprintf(c->error, sizeof c->error, "journal_commit: %s", err.message);
    return rc == AR_OK ? 0 : -1;
}

static void *caller_main(void *arg)
{
    caller *c = arg;
    bench *b = c->b;
    pthread_barrier_wait(&b->start);
    while (bench_now_ns() < b->t_end) {
        int64_t t = bench_now_ns();
        if ((b->lmdb ? commit_lmdb(c) : commit_journal(c)) != 0) {
            c->failed = 1;
            break;
        }
        int64_t e = bench_now_ns();
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 16384;
            c->end_ns = realloc(c->end_ns, c->cap * sizeof *c->end_ns);
            c->lat_ns = realloc(c->lat_ns, c->cap * sizeof *c->lat_ns);
        }
        c->end_ns[c->n] = e;
        c->lat_ns[c->n++] = (uint64_t)(e - t);
    }
    return NULL;
}

/* --window: the W records a bounded history holds before the measured puts (not timed). */
static int prefill(bench *b, ar_error *err)
{
    for (long done = 0; done < b->window;) {
        journal_batch *batch = journal_batch_new();
        for (int i = 0; i < 1000 && done < b->window; i++, done++) {
            char key[48];
            int klen = next_key(b, key, NULL);
            journal_batch_put(batch, JDB_CACHE, key, (size_t)klen, b->value, b->value_bytes);
        }
        int rc = journal_commit(b->j, batch, err);
        journal_batch_free(batch);
        if (rc != AR_OK)
            return rc;
    }
    return AR_OK;
}

static void sleep_until(int64_t t)
{
    int64_t now = bench_now_ns();
    if (t > now)
        usleep((useconds_t)((t - now) / 1000));
}

int main(int argc, char **argv)
{
    bench b = {.callers = 1, .records = 1, .value_bytes = 1024};
    const char *parent = "/tmp", *label = NULL, *mode = "journal";
    double warmup_s = 0.5, duration_s = 1;
    int runs = 5;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench-journal: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--mode") == 0) mode = v;
        else if (strcmp(a, "--callers") == 0) b.callers = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--records") == 0) b.records = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--value-bytes") == 0) b.value_bytes = (size_t)bench_arg_long(a, v);
        else if (strcmp(a, "--dir") == 0) parent = v;
        else if (strcmp(a, "--warmup") == 0) warmup_s = bench_arg_double(a, v);
        else if (strcmp(a, "--duration") == 0) duration_s = bench_arg_double(a, v);
        else if (strcmp(a, "--runs") == 0) runs = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--label") == 0) label = v;
        else if (strcmp(a, "--window") == 0) b.window = bench_arg_long(a, v);
        else {
            fprintf(stderr, "usage: aiorun-bench-journal [--mode journal|lmdb|audit] [--callers N] [--records R] "
                            "[--value-bytes B] [--window W] [--dir PARENT] [--warmup S] [--runs N] [--duration S] "
                            "[--label NAME]\n");
            return 2;
        }
    }
    b.lmdb = strcmp(mode, "lmdb") == 0;
    b.audit = strcmp(mode, "audit") == 0;
    if ((!b.lmdb && !b.audit && strcmp(mode, "journal") != 0) || b.callers < 1 || b.records < 1 || b.value_bytes < 1 ||
        runs < 1 || runs > BENCH_MAX_RUNS || duration_s <= 0 || b.window < 0 ||
        (b.window > 0 && (b.lmdb || b.audit))) {
        fprintf(stderr, "bench-journal: --mode journal|lmdb|audit; --callers, --records, --value-bytes >= 1; --runs 1..%d; "
                        "--window >= 0, in mode journal only\n", BENCH_MAX_RUNS);
        return 2;
    }
    char auto_label[64];
    if (!label) {
        snprintf(auto_label, sizeof auto_label, b.window ? "%s-c%d-r%d-w%ld" : "%s-c%d-r%d", mode, b.callers,
                 b.records, b.window);
        label = auto_label;
    }
    b.value = malloc(b.value_bytes);
    for (size_t i = 0; i < b.value_bytes; i++)
        b.value[i] = (char)('a' + (i * 7 + i / 13) % 26);

    char dir[4096];
    snprintf(dir, sizeof dir, "%s/aiorun-bench-journal-XXXXXX", parent);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "bench-journal: cannot make a directory under %s: %s\n", parent, strerror(errno));
        return 1;
    }
    ar_error err = {0};
    int rc;
    if (b.lmdb) {
        MDB_txn *txn = NULL;
        rc = mdb_env_create(&b.env);
        if (!rc)
            rc = mdb_env_set_mapsize(b.env, (size_t)4096 << 20);
        if (!rc)
            rc = mdb_env_set_maxreaders(b.env, 256);
        if (!rc)
            rc = mdb_env_open(b.env, dir, MDB_NOTLS, 0600);
        if (!rc)
            rc = mdb_txn_begin(b.env, NULL, 0, &txn);
        if (!rc)
            rc = mdb_dbi_open(txn, NULL, 0, &b.dbi);
        if (!rc)
            rc = mdb_txn_commit(txn);
        if (rc) {
            fprintf(stderr, "bench-journal: lmdb: %s\n", mdb_strerror(rc));
            return 1;
        }
    } else {
        journal_opts jo = {.dir = dir, .map_size_mb = 4096};
        if ((rc = journal_open(&jo, &b.j, &err)) != AR_OK) {
            fprintf(stderr, "bench-journal: journal_open: %s\n", err.message);
            return 1;
        }
    }

    if (b.window > 0 && prefill(&b, &err) != AR_OK) {
        fprintf(stderr, "bench-journal: filling the window: %s\n", err.message);
        return 1;
    }
    caller *cs = calloc((size_t)b.callers, sizeof *cs);
    pthread_barrier_init(&b.start, NULL, (unsigned)b.callers + 1);
    int64_t warm_ns = (int64_t)(warmup_s * 1e9), run_ns = (int64_t)(duration_s * 1e9);
    b.t0 = bench_now_ns() + 20000000;
    b.t_end = b.t0 + warm_ns + run_ns * runs;
    for (int i = 0; i < b.callers; i++) {
        cs[i].b = &b;
        pthread_create(&cs[i].th, NULL, caller_main, &cs[i]);
    }
    sleep_until(b.t0);
    pthread_barrier_wait(&b.start);
    /* the journal's commit counter at each window's edges */
    uint64_t commits_at[BENCH_MAX_RUNS + 1] = {0}, batches_at[BENCH_MAX_RUNS + 1] = {0};
    uint64_t wakeups_at[BENCH_MAX_RUNS + 1] = {0}, direct_at[BENCH_MAX_RUNS + 1] = {0};
    uint64_t run_at[BENCH_MAX_RUNS + 1] = {0}, sync_at[BENCH_MAX_RUNS + 1] = {0};
    for (int r = 0; r <= runs; r++) {
        sleep_until(b.t0 + warm_ns + run_ns * r);
        if (!b.lmdb) {
            journal_stats st;
            journal_get_stats(b.j, &st);
            commits_at[r] = st.commits;
            batches_at[r] = st.batches;
            wakeups_at[r] = st.wakeups;
            direct_at[r] = st.direct_batches;
            run_at[r] = st.run_ns;
            sync_at[r] = st.commit_ns;
        }
    }
    int failed = 0;
    const char *error = "";
    for (int i = 0; i < b.callers; i++) {
        pthread_join(cs[i].th, NULL);
        if (cs[i].failed && !failed) {
            failed = 1;
            error = cs[i].error;
        }
    }

    bench_series rec_s = {0}, com_s = {0}, per_commit = {0}, p50 = {0}, p99 = {0}, wakes = {0}, direct = {0};
    bench_series run_us = {0}, sync_us = {0};
    size_t total = 0;
    for (int i = 0; i < b.callers; i++)
        total += cs[i].n;
    uint64_t *lat = malloc((total ? total : 1) * sizeof *lat);
    for (int r = 0; r < runs; r++) {
        int64_t from = b.t0 + warm_ns + run_ns * r, to = from + run_ns;
        size_t n = 0;
        for (int i = 0; i < b.callers; i++)
            for (size_t k = 0; k < cs[i].n; k++)
                if (cs[i].end_ns[k] >= from && cs[i].end_ns[k] < to)
                    lat[n++] = cs[i].lat_ns[k];
        bench_sort_u64(lat, n);
        double commits = b.lmdb ? (double)n : (double)(commits_at[r + 1] - commits_at[r]);
        double batches = b.lmdb ? (double)n : (double)(batches_at[r + 1] - batches_at[r]);
        bench_series_add(&rec_s, (double)n * b.records / duration_s);
        bench_series_add(&com_s, commits / duration_s);
        bench_series_add(&per_commit, commits > 0 ? batches / commits : 0);
        bench_series_add(&wakes, commits > 0 ? (double)(wakeups_at[r + 1] - wakeups_at[r]) / commits : 0);
        bench_series_add(&direct, batches > 0 ? (double)(direct_at[r + 1] - direct_at[r]) / batches : 0);
        bench_series_add(&run_us, commits > 0 ? (double)(run_at[r + 1] - run_at[r]) / commits / 1e3 : 0);
        bench_series_add(&sync_us, commits > 0 ? (double)(sync_at[r + 1] - sync_at[r]) / commits / 1e3 : 0);
        bench_series_add(&p50, (double)bench_quantile(lat, n, 0.50) / 1e3);
        bench_series_add(&p99, (double)bench_quantile(lat, n, 0.99) / 1e3);
    }
    fprintf(stderr, "journal %-22s %9.0f records/s  %7.0f commits/s  %5.1f batches/commit  p50 %7.1f us  p99 %7.1f us",
            label, bench_series_median(&rec_s), bench_series_median(&com_s), bench_series_median(&per_commit),
            bench_series_median(&p50), bench_series_median(&p99));
    double bytes_per_record = 0;
    if (!b.lmdb) {
        journal_stats st;
        journal_get_stats(b.j, &st);
        size_t written = 0;
        for (int i = 0; i < b.callers; i++)
            written += cs[i].n * (size_t)(b.audit ? 1 : b.records);
        if (b.window > 0) /* what the file holds: the window */
            written = (size_t)b.window * (size_t)b.records;
        bytes_per_record = written ? (double)st.map_used / (double)written : 0;
        fprintf(stderr, "  %5.1f wakes/commit  %3.0f%% direct  run %5.1f + sync %5.1f us/commit  %5.0f B/%s",
                bench_series_median(&wakes), 100 * bench_series_median(&direct), bench_series_median(&run_us),
                bench_series_median(&sync_us), bytes_per_record, b.audit ? "batch" : "record");
    }
    fprintf(stderr, "%s%s\n", failed ? "  FAILED: " : "", error);
    json_t *out = json_pack("{s:s, s:s, s:i, s:i, s:I, s:f, s:i, s:o, s:o, s:o, s:o, s:o}",
        "label", label, "mode", mode, "callers", b.callers, "records_per_batch", b.records,
        "value_bytes", (json_int_t)b.value_bytes, "run_s", duration_s, "runs", runs,
        "records_per_s", bench_series_json(&rec_s), "commits_per_s", bench_series_json(&com_s),
        "batches_per_commit", bench_series_json(&per_commit), "p50_us", bench_series_json(&p50),
        "p99_us", bench_series_json(&p99));
    if (!b.lmdb) {
        json_object_set_new(out, "wakeups_per_commit", bench_series_json(&wakes));
        json_object_set_new(out, "direct_share", bench_series_json(&direct));
        json_object_set_new(out, "run_us_per_commit", bench_series_json(&run_us));
        json_object_set_new(out, "sync_us_per_commit", bench_series_json(&sync_us));
        json_object_set_new(out, b.audit ? "bytes_per_batch" : "bytes_per_record", json_real(bytes_per_record));
        json_object_set_new(out, "window", json_integer(b.window));
    }
    if (failed)
        json_object_set_new(out, "error", json_string(error));
    bench_print_json(out);

    if (b.lmdb)
        mdb_env_close(b.env);
    else
        journal_close(b.j);
    char path[4200];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    unlink(path);
    rmdir(dir);
    for (int i = 0; i < b.callers; i++) {
        free(cs[i].end_ns);
        free(cs[i].lat_ns);
    }
    free(cs);
    free(lat);
    free(b.value);
    pthread_barrier_destroy(&b.start);
    return failed ? 1 : 0;
}
