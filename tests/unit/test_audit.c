/* test_audit.c - the hash-chained audit trail on a real journal: appends through batches and
 * callbacks (from several threads and processes at once), a failed batch leaves no entry,
 * reads by action and by seq, export, and verification that names what was tampered with
 * (an altered body, a deleted entry, two entries swapped, a consistent rewrite caught by an
 * exported head, a cut tail, the index); erased bodies; signed head documents. */
#include "test_main.h"
#include "test_dirs.h"

#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "action.h"
#include "audit.h"
#include "journal.h"
#include "jsonw.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static journal *open_journal(const char *dir)
{
    journal_opts opts = { .dir = dir };
    journal *j = NULL;
    ar_error err;
    int rc = journal_open(&opts, &j, &err);
    if (rc != AR_OK)
        fail_msg("journal_open(%s): %d %s: %s", dir, rc, err.code, err.message);
    return j;
}

/* A 26-character action id made from n. */
static void action_id(int n, char out[27])
{
    snprintf(out, 27, "01ACTION%018d", n);
}

static void seq_key(uint64_t seq, unsigned char out[8])
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(seq >> (56 - 8 * i));
}

/* Commit one batch holding audit entries (type, action id or NULL) for count events. */
static void append_batch(journal *j, const char *type, const char *id, int count)
{
    journal_batch *b = journal_batch_new();
    for (int i = 0; i < count; i++)
        audit_batch_append(b, type, id, json_pack("{s:i, s:s}", "n", i, "who", "tester"));
    ar_error err;
    int rc = journal_commit(j, b, &err);
    journal_batch_free(b);
    if (rc != AR_OK)
        fail_msg("commit: %d %s: %s", rc, err.code, err.message);
}

/* An apply callback appending one entry with a chosen time. */
struct txn_append {
    const char *type;
    const char *id;
    int64_t time_ms;
    uint64_t seq;       /* what audit_txn_append said */
};

static int append_in_txn(journal_txn *txn, void *arg, ar_error *err)
{
    struct txn_append *a = arg;
    return audit_txn_append(txn, a->type, a->id, json_pack("{s:s}", "via", "callback"),
                            a->time_ms, &a->seq, err);
}

static uint64_t append_at(journal *j, const char *type, const char *id, int64_t time_ms)
{
    struct txn_append a = { .type = type, .id = id, .time_ms = time_ms };
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, append_in_txn, &a);
    ar_error err;
    int rc = journal_commit(j, b, &err);
    journal_batch_free(b);
    if (rc != AR_OK)
        fail_msg("commit: %d %s: %s", rc, err.code, err.message);
    return a.seq;
}

/* The stored entry seq (a new reference), or NULL. */
static json_t *raw_entry(journal *j, uint64_t seq)
{
    unsigned char key[8];
    seq_key(seq, key);
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    json_t *doc = NULL;
    if (journal_get(r, JDB_AUDIT, key, sizeof key, &val, &vlen) == AR_OK)
        doc = json_loadb(val, vlen, JSON_ALLOW_NUL, NULL);
    journal_read_end(r);
    return doc;
}

/* Store doc as entry seq, bypassing the audit module (tampering). */
static void raw_put(journal *j, uint64_t seq, const json_t *doc)
{
    unsigned char key[8];
    seq_key(seq, key);
    char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_non_null(text);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT, key, sizeof key, text, strlen(text));
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    free(text);
}

static void raw_del(journal *j, journal_db db, const void *key, size_t klen)
{
    journal_batch *b = journal_batch_new();
    journal_batch_del(b, db, key, klen);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
}

static void hex32(const unsigned char in[32], char out[65])
{
    sodium_bin2hex(out, 65, in, 32);
}

/* The documented algorithm, written again here: digest = BLAKE2b-256 of the canonical body
 * (sorted keys, compact) of {seq, time_ms, type, action, data}. */
static void digest_of(const json_t *entry, unsigned char out[32])
{
    json_t *body = json_pack("{s:O,s:O,s:O,s:O,s:O}", "seq", json_object_get(entry, "seq"),
                             "time_ms", json_object_get(entry, "time_ms"), "type",
                             json_object_get(entry, "type"), "action",
                             json_object_get(entry, "action"), "data",
                             json_object_get(entry, "data"));
    assert_non_null(body);
    char *text = json_dumps(body, JSON_SORT_KEYS | JSON_COMPACT);
    crypto_generichash(out, 32, (const unsigned char *)text, strlen(text), NULL, 0);
    free(text);
    json_decref(body);
}

/* chain = BLAKE2b-256(prev chain || digest). */
static void chain_of(const unsigned char prev[32], const unsigned char digest[32],
                     unsigned char out[32])
{
    unsigned char both[64];
    memcpy(both, prev, 32);
    memcpy(both + 32, digest, 32);
    crypto_generichash(out, 32, both, 64, NULL, 0);
}

static void chain_field(const json_t *entry, unsigned char out[32])
{
    assert_int_equal(sodium_hex2bin(out, 32, json_string_value(json_object_get(entry, "chain")),
                                    64, NULL, NULL, NULL), 0);
}

/* Check every entry 1..n with the algorithm above (independently of audit.c). */
static void check_format(journal *j, uint64_t n)
{
    unsigned char prev[32] = {0}, digest[32], chain[32], stored[32];
    char hex[65];
    for (uint64_t seq = 1; seq <= n; seq++) {
        json_t *e = raw_entry(j, seq);
        if (!e)
            fail_msg("no entry %llu", (unsigned long long)seq);
        assert_int_equal(json_integer_value(json_object_get(e, "seq")), (json_int_t)seq);
        digest_of(e, digest);
        hex32(digest, hex);
        assert_string_equal(json_string_value(json_object_get(e, "digest")), hex);
        chain_of(prev, digest, chain);
        chain_field(e, stored);
        assert_memory_equal(chain, stored, 32);
        memcpy(prev, chain, 32);
        json_decref(e);
    }
    assert_null(raw_entry(j, n + 1));
}

/* Rewrite the chain from seq `from` to the end, consistently: the body of from gets
 * data.rewritten = true, and every digest and chain from there on is computed again. */
static void rewrite_from(journal *j, uint64_t from)
{
    unsigned char prev[32] = {0}, digest[32], chain[32];
    char hex[65];
    if (from > 1) {
        json_t *before = raw_entry(j, from - 1);
        chain_field(before, prev);
        json_decref(before);
    }
    for (uint64_t seq = from;; seq++) {
        json_t *e = raw_entry(j, seq);
        if (!e)
            break;
        if (seq == from)
            json_object_set_new(json_object_get(e, "data"), "rewritten", json_true());
        digest_of(e, digest);
        chain_of(prev, digest, chain);
        hex32(digest, hex);
        json_object_set_new(e, "digest", json_string(hex));
        hex32(chain, hex);
        json_object_set_new(e, "chain", json_string(hex));
        raw_put(j, seq, e);
        memcpy(prev, chain, 32);
        json_decref(e);
    }
}

static audit_verify_result verify(journal *j, uint64_t seq, const char *head)
{
    audit_verify_result res;
    ar_error err;
    int rc = audit_verify(j, seq, head, &res, &err);
    if (rc != AR_OK)
        fail_msg("audit_verify: %d %s: %s", rc, err.code, err.message);
    return res;
}

static void expect_ok(journal *j, uint64_t entries)
{
    audit_verify_result res = verify(j, 0, NULL);
    if (!res.ok)
        fail_msg("verify: not ok at %llu: %s", (unsigned long long)res.first_bad_seq, res.reason);
    assert_int_equal(res.entries, entries);
    assert_int_equal(res.first_bad_seq, 0);
}

static void expect_bad(const audit_verify_result *res, uint64_t seq, const char *reason)
{
    if (res->ok)
        fail_msg("verify says ok; expected seq %llu: %s", (unsigned long long)seq, reason);
    if (res->first_bad_seq != seq || !strstr(res->reason, reason))
        fail_msg("verify: seq %llu \"%s\"; expected seq %llu \"%s\"",
                 (unsigned long long)res->first_bad_seq, res->reason, (unsigned long long)seq,
                 reason);
}

/* Ten entries: 1-3 and 7-10 about action 1, 4-6 about action 2 (6 via a callback). */
static journal *ten_entries(const char *dir)
{
    journal *j = open_journal(dir);
    char a1[27], a2[27];
    action_id(1, a1);
    action_id(2, a2);
    append_batch(j, "received", a1, 3);
    append_batch(j, "dispatched", a2, 2);
    append_at(j, "completed", a2, ar_now_ms());
    append_batch(j, "completed", a1, 4);
    return j;
}

/* ---- appending -------------------------------------------------------------------------- */

static void appends_make_one_chain(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    char a1[27];
    action_id(1, a1);

    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_int_equal(seq, 0);
    assert_string_equal(head, "");
    expect_ok(j, 0);

    /* A batch with a state change and two entries; then a callback; then an event about no
     * action. */
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, a1, 26, "{}", 2);
    audit_batch_append(b, "received", a1, json_pack("{s:s}", "connector", "shop"));
    audit_batch_append(b, "decided", a1, NULL); /* NULL data is {} */
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_int_equal(append_at(j, "completed", a1, 1234), 3);
    append_batch(j, "policy_reloaded", NULL, 1);

    check_format(j, 4);
    json_t *e = raw_entry(j, 2);
    assert_string_equal(json_string_value(json_object_get(e, "type")), "decided");
    assert_true(json_is_object(json_object_get(e, "data")));
    assert_int_equal(json_object_size(json_object_get(e, "data")), 0);
    json_decref(e);
    e = raw_entry(j, 3);
    assert_int_equal(json_integer_value(json_object_get(e, "time_ms")), 1234);
    assert_string_equal(json_string_value(json_object_get(e, "action")), a1);
    json_decref(e);
    e = raw_entry(j, 4);
    assert_true(json_is_null(json_object_get(e, "action")));
    json_decref(e);

    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_int_equal(seq, 4);
    audit_verify_result res = verify(j, 0, NULL);
    assert_true(res.ok);
    assert_int_equal(res.entries, 4);
    assert_string_equal(res.head, head);

    /* The chain goes on after a reopen (nothing cached). */
    journal_close(j);
    j = open_journal(dir);
    append_batch(j, "received", a1, 1);
    check_format(j, 5);
    expect_ok(j, 5);

    /* Refused: a bad action id, an empty type; the batch fails whole. */
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "other", 5, "{}", 2);
    audit_batch_append(b, "received", "short-id", NULL);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    journal_batch_free(b);
    b = journal_batch_new();
    audit_batch_append(b, "", NULL, NULL);
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    journal_batch_free(b);
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_get(r, JDB_ACTIONS, "other", 5, NULL, NULL), AR_E_NOTFOUND);
    journal_read_end(r);
    expect_ok(j, 5);
    journal_close(j);
    test_rm_tree(dir);
}

/* An apply callback appending an entry with the given data (a reference of its own). */
struct txn_data {
    json_t *data;
};

static int append_data_in_txn(journal_txn *txn, void *arg, ar_error *err)
{
    struct txn_data *d = arg;
    return audit_txn_append(txn, "completed", NULL, json_incref(d->data), ar_now_ms(), NULL, err);
}

/* {"n": [[[...]]]} with depth arrays. */
static json_t *nested(int depth)
{
    json_t *v = json_array();
    for (int i = 1; i < depth; i++) {
        json_t *outer = json_array();
        json_array_append_new(outer, v);
        v = outer;
    }
    return json_pack("{s:o}", "n", v);
}

/* Data that does not read back the same (invalid UTF-8 slipped in unchecked) is refused, so
 * that nothing unverifiable is ever stored. */
static void unverifiable_data_is_refused(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    journal_batch *b = journal_batch_new();
    audit_batch_append(b, "received", NULL, json_pack("{s:o}", "bad", json_string_nocheck("\xff\xfe")));
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    journal_batch_free(b);
    /* Reals and nested objects with unsorted keys are fine. */
    b = journal_batch_new();
    audit_batch_append(b, "completed", NULL,
                       json_pack("{s:f, s:{s:i, s:i}, s:[s, n, b]}", "cost", 0.1, "z", "b", 2,
                                 "a", 1, "list", "x", 1));
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);
    check_format(j, 1);
    expect_ok(j, 1);

    /* A key with a NUL in it is written (as \u0000) but does not read back: refused, through
     * a batch and through a callback alike. A NUL inside a string value reads back: stored. */
    json_t *bad = json_object();
    assert_int_equal(json_object_setn_new(bad, "k\0ey", 4, json_true()), 0);
    b = journal_batch_new();
    audit_batch_append(b, "completed", NULL, json_incref(bad));
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    journal_batch_free(b);
    struct txn_data td = { .data = bad };
    b = journal_batch_new();
    journal_batch_apply(b, append_data_in_txn, &td);
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    journal_batch_free(b);
    json_decref(bad);
    b = journal_batch_new();
    audit_batch_append(b, "completed", NULL, json_pack("{s:s%}", "nul", "a\0b", (size_t)3));
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);

    /* Nesting: what jansson's parser takes (1500 levels) is stored, deeper (2100) refused. */
    b = journal_batch_new();
    audit_batch_append(b, "completed", NULL, nested(1500));
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);
    b = journal_batch_new();
    audit_batch_append(b, "completed", NULL, nested(2100));
    assert_int_equal(journal_commit(j, b, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    journal_batch_free(b);
    check_format(j, 3);
    expect_ok(j, 3);
    journal_close(j);
    test_rm_tree(dir);
}

struct worker {
    journal *j;
    int index;
    int rounds;
    int failures;
};

static void *append_worker(void *arg)
{
    struct worker *w = arg;
    char id[27];
    action_id(100 + w->index, id);
    for (int i = 0; i < w->rounds; i++) {
        journal_batch *b = journal_batch_new();
        journal_batch_put(b, JDB_ACTIONS, id, 26, "{}", 2);
        struct txn_append a = { .type = "completed", .id = id, .time_ms = ar_now_ms() };
        if (i % 2)
            audit_batch_append(b, "dispatched", id, json_pack("{s:i}", "attempt", i));
        else
            journal_batch_apply(b, append_in_txn, &a);
        if (journal_commit(w->j, b, NULL) != AR_OK)
            w->failures++;
        journal_batch_free(b);
    }
    return NULL;
}

static void concurrent_appends_stay_linear(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    enum { THREADS = 4, ROUNDS = 40 };
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ .j = j, .index = i, .rounds = ROUNDS };
        assert_int_equal(pthread_create(&t[i], NULL, append_worker, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    check_format(j, THREADS * ROUNDS);
    expect_ok(j, THREADS * ROUNDS);
    for (int i = 0; i < THREADS; i++) {
        char id[27];
        action_id(100 + i, id);
        json_t *list;
        assert_int_equal(audit_read_action(j, id, &list, NULL), AR_OK);
        assert_int_equal(json_array_size(list), ROUNDS);
        json_int_t last = 0;
        size_t k;
        json_t *e;
        json_array_foreach(list, k, e) {
            assert_string_equal(json_string_value(json_object_get(e, "action")), id);
            assert_true(json_integer_value(json_object_get(e, "seq")) > last);
            last = json_integer_value(json_object_get(e, "seq"));
        }
        json_decref(list);
    }
    journal_close(j);
    test_rm_tree(dir);
}

/* Two processes (the daemon and an offline aioctl) append to one chain. */
static void two_processes_share_the_chain(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    append_batch(j, "config_loaded", NULL, 1);
    journal_close(j);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        assert_true(kids[k] >= 0);
        if (kids[k] == 0) {
            journal_opts opts = { .dir = dir };
            journal *cj;
            if (journal_open(&opts, &cj, NULL) != AR_OK)
                _exit(2);
            for (int i = 0; i < 30; i++) {
                journal_batch *b = journal_batch_new();
                audit_batch_append(b, "token_created", NULL, json_pack("{s:i, s:i}", "proc", k, "i", i));
                if (journal_commit(cj, b, NULL) != AR_OK)
                    _exit(3);
                journal_batch_free(b);
            }
            journal_close(cj);
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++) {
        int status;
        assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    j = open_journal(dir);
    check_format(j, 61);
    expect_ok(j, 61);
    journal_close(j);
    test_rm_tree(dir);
}

static int fail_after(journal_txn *txn, void *arg, ar_error *err)
{
    (void)txn; (void)arg;
    return ar_error_set(err, AR_E_CONFLICT, "decide_again", "changed meanwhile");
}

static void failed_batch_leaves_no_entry(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    char a1[27], a2[27];
    action_id(1, a1);
    action_id(2, a2);
    append_batch(j, "received", a1, 2);

    /* A conditional put that conflicts, after the entries were appended in the batch. */
    journal_batch *b = journal_batch_new();
    audit_batch_append(b, "received", a2, json_pack("{s:s}", "connector", "shop"));
    journal_batch_put_unless_exists(b, JDB_ACTIONS, "k", 1, "v", 1);
    audit_batch_append(b, "decided", a2, NULL);
    journal_batch *first = journal_batch_new();
    journal_batch_put(first, JDB_ACTIONS, "k", 1, "v", 1);
    assert_int_equal(journal_commit(j, first, NULL), AR_OK);
    journal_batch_free(first);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_EXISTS);
    journal_batch_free(b);

    /* A callback that fails after an append. */
    b = journal_batch_new();
    audit_batch_append(b, "received", a2, NULL);
    journal_batch_apply(b, fail_after, NULL);
    assert_int_equal(journal_commit(j, b, &err), AR_E_CONFLICT);
    journal_batch_free(b);

    /* A batch never committed: its data is freed with it (the leak checker watches). */
    b = journal_batch_new();
    audit_batch_append(b, "received", a2, json_pack("{s:s}", "never", "stored"));
    journal_batch_free(b);

    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_int_equal(seq, 2);
    json_t *list;
    assert_int_equal(audit_read_action(j, a2, &list, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    /* The next one follows on without a gap. */
    append_batch(j, "received", a2, 1);
    check_format(j, 3);
    expect_ok(j, 3);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- reading ---------------------------------------------------------------------------- */

static void read_by_action_and_after(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char a1[27], a2[27], a3[27];
    action_id(1, a1);
    action_id(2, a2);
    action_id(3, a3);
    json_t *list;
    assert_int_equal(audit_read_action(j, a2, &list, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *e = json_array_get(list, i);
        assert_int_equal(json_integer_value(json_object_get(e, "seq")), 4 + (json_int_t)i);
        assert_non_null(json_object_get(e, "digest"));
    }
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 2), "type")),
                        "completed");
    json_decref(list);
    assert_int_equal(audit_read_action(j, a1, &list, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 7);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 3), "seq")), 7);
    json_decref(list);
    assert_int_equal(audit_read_action(j, a3, &list, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    ar_error err;
    assert_int_equal(audit_read_action(j, "nope", &list, &err), AR_E_INVALID);
    assert_null(list);

    uint64_t next;
    assert_int_equal(audit_read_after(j, 3, 4, &list, &next, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 4);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 0), "seq")), 4);
    assert_int_equal(next, 7);
    json_decref(list);
    assert_int_equal(audit_read_after(j, 7, 100, &list, &next, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 3);
    assert_int_equal(next, 10);
    json_decref(list);
    assert_int_equal(audit_read_after(j, 10, 100, &list, &next, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 0);
    assert_int_equal(next, 10);
    json_decref(list);
    assert_int_equal(audit_read_after(j, 0, 0, &list, &next, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 0);
    assert_int_equal(next, 0);
    json_decref(list);
    assert_int_equal(audit_read_after(j, UINT64_MAX, 5, &list, &next, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    journal_close(j);
    test_rm_tree(dir);
}

static char *slurp_fd(int fd)
{
    assert_true(lseek(fd, 0, SEEK_SET) == 0);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf + n, cap - n - 1)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    return buf;
}

static void export_since(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    char a1[27];
    action_id(1, a1);
    for (int i = 0; i < 6; i++)
        append_at(j, "completed", i % 2 ? a1 : NULL, 1000 * (i + 1)); /* 1000 .. 6000 */
    char path[256];
    snprintf(path, sizeof path, "%s/export.jsonl", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    size_t count = 99;
    assert_int_equal(audit_export(j, 4000, fd, &count, NULL), AR_OK);
    assert_int_equal(count, 3);
    char *text = slurp_fd(fd);
    /* Three lines, entries 4, 5, 6, each exactly the stored entry. */
    char *save, *line = strtok_r(text, "\n", &save);
    for (uint64_t seq = 4; seq <= 6; seq++) {
        assert_non_null(line);
        json_t *got = json_loads(line, 0, NULL), *stored = raw_entry(j, seq);
        assert_non_null(got);
        assert_true(json_equal(got, stored));
        json_decref(got);
        json_decref(stored);
        line = strtok_r(NULL, "\n", &save);
    }
    assert_null(line);
    free(text);
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    assert_int_equal(audit_export(j, 0, fd, &count, NULL), AR_OK);
    assert_int_equal(count, 6);
    assert_int_equal(audit_export(j, 7000, fd, &count, NULL), AR_OK);
    assert_int_equal(count, 0);
    close(fd);
    /* A write failure is reported. */
    ar_error err;
    assert_int_equal(audit_export(j, 0, -1, &count, &err), AR_E_IO);
    assert_string_equal(err.code, "audit_export_write");
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- tampering -------------------------------------------------------------------------- */

static void altered_body_is_named(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    expect_ok(j, 10);
    json_t *e = raw_entry(j, 6);
    json_object_set_new(json_object_get(e, "data"), "via", json_string("someone else"));
    raw_put(j, 6, e);
    json_decref(e);
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 6, "body digest mismatch");
    assert_int_equal(res.entries, 5);
    journal_close(j);
    test_rm_tree(dir);

    /* The time is in the body too. */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    e = raw_entry(j, 2);
    json_object_set_new(e, "time_ms", json_integer(42));
    raw_put(j, 2, e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 2, "body digest mismatch");
    /* A digest made to match the new body: the chain no longer does. */
    e = raw_entry(j, 2);
    unsigned char digest[32];
    char hex[65];
    digest_of(e, digest);
    hex32(digest, hex);
    json_object_set_new(e, "digest", json_string(hex));
    raw_put(j, 2, e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 2, "chain mismatch");
    /* Not JSON at all, or a field that is not part of an entry. */
    unsigned char key[8];
    seq_key(9, key);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT, key, 8, "garbage", 7);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    rewrite_from(j, 2); /* repairs 2..8, stops at the garbage */
    res = verify(j, 0, NULL);
    expect_bad(&res, 9, "unreadable entry");
    journal_close(j);
    test_rm_tree(dir);
}

static void deleted_entry_is_a_gap(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    unsigned char key[8];
    seq_key(5, key);
    raw_del(j, JDB_AUDIT, key, 8);
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 5, "sequence gap (expected 5)");
    assert_int_equal(res.entries, 4);
    seq_key(1, key);
    raw_del(j, JDB_AUDIT, key, 8);
    res = verify(j, 0, NULL);
    expect_bad(&res, 1, "sequence gap (expected 1)");
    journal_close(j);
    test_rm_tree(dir);
}

static void swapped_entries_are_named(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    json_t *e4 = raw_entry(j, 4), *e5 = raw_entry(j, 5);
    raw_put(j, 4, e5);
    raw_put(j, 5, e4);
    json_decref(e4);
    json_decref(e5);
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 4, "out of order");
    assert_non_null(strstr(res.reason, "entry 5"));

    /* Swapped with their seqs edited to fit the keys: the digests give it away. */
    e4 = raw_entry(j, 4);
    e5 = raw_entry(j, 5);
    json_object_set_new(e4, "seq", json_integer(4));
    json_object_set_new(e5, "seq", json_integer(5));
    raw_put(j, 4, e4);
    raw_put(j, 5, e5);
    json_decref(e4);
    json_decref(e5);
    res = verify(j, 0, NULL);
    expect_bad(&res, 4, "body digest mismatch");
    journal_close(j);
    test_rm_tree(dir);
}

static void rewritten_chain_needs_an_exported_head(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    uint64_t seq;
    char head8[AUDIT_HASH_HEX], head10[AUDIT_HASH_HEX];
    /* Heads exported at seq 10 and (by verify) at seq 8. */
    assert_int_equal(audit_head(j, &seq, head10, NULL), AR_OK);
    assert_int_equal(seq, 10);
    json_t *e8 = raw_entry(j, 8);
    snprintf(head8, sizeof head8, "%s", json_string_value(json_object_get(e8, "chain")));
    json_decref(e8);
    audit_verify_result res = verify(j, 8, head8);
    assert_true(res.ok);
    res = verify(j, 10, head10);
    assert_true(res.ok);
    assert_string_equal(res.head, head10);

    rewrite_from(j, 5);
    expect_ok(j, 10); /* consistent: alone, verify cannot tell */
    res = verify(j, 8, head8);
    expect_bad(&res, 8, "does not match the exported head");
    res = verify(j, 10, head10);
    expect_bad(&res, 10, "does not match the exported head");
    /* A head from before the rewrite point still matches. */
    json_t *e3 = raw_entry(j, 3);
    res = verify(j, 3, json_string_value(json_object_get(e3, "chain")));
    assert_true(res.ok);
    json_decref(e3);

    /* A cut tail: verify alone is content, the exported head is not. */
    unsigned char key[8];
    seq_key(10, key);
    raw_del(j, JDB_AUDIT, key, 8);
    res = verify(j, 0, NULL);
    expect_bad(&res, 10, "the action index names a missing entry"); /* 10 was about a1 */
    res = verify(j, 10, head10);
    expect_bad(&res, 10, "chain ends at seq 9"); /* the chain's own problem comes first */
    char a1[27];
    action_id(1, a1);
    unsigned char ikey[34];
    memcpy(ikey, a1, 26);
    seq_key(10, ikey + 26);
    raw_del(j, JDB_AUDIT_INDEX, ikey, 34);
    expect_ok(j, 9); /* without an exported head, a cut tail looks whole */

    ar_error err;
    assert_int_equal(audit_verify(j, 3, "not-hex", &res, &err), AR_E_INVALID);
    journal_close(j);
    test_rm_tree(dir);
}

static void index_is_checked(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char a1[27], a2[27];
    action_id(1, a1);
    action_id(2, a2);
    unsigned char ikey[34];

    /* An entry missing from the index. */
    memcpy(ikey, a2, 26);
    seq_key(5, ikey + 26);
    raw_del(j, JDB_AUDIT_INDEX, ikey, 34);
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 5, "not in the action index");
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT_INDEX, ikey, 34, "", 0);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    expect_ok(j, 10);

    /* An index entry for an entry of another action. */
    memcpy(ikey, a1, 26);
    seq_key(4, ikey + 26);
    b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT_INDEX, ikey, 34, "", 0);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    res = verify(j, 0, NULL);
    expect_bad(&res, 4, "the action index lists this entry under action");
    json_t *list;
    raw_del(j, JDB_AUDIT_INDEX, ikey, 34);

    /* An index entry for an entry that does not exist: ignored by reads, named by verify. */
    seq_key(77, ikey + 26);
    b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT_INDEX, ikey, 34, "", 0);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    res = verify(j, 0, NULL);
    expect_bad(&res, 77, "names a missing entry");
    assert_int_equal(audit_read_action(j, a1, &list, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 7);
    json_decref(list);
    journal_close(j);
    test_rm_tree(dir);
}

/* An unreadable last entry stops appends (the chain cannot go on) with a clear error. */
static void unreadable_head_refuses_appends(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    unsigned char key[8];
    seq_key(11, key);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT, key, 8, "{\"seq\": 11}", 11);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    b = journal_batch_new();
    audit_batch_append(b, "received", NULL, NULL);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_head_unreadable");
    journal_batch_free(b);
    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq, head, &err), AR_E_FORMAT);
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 11, "unreadable entry");
    /* Readers show it as unreadable rather than failing. */
    json_t *list;
    uint64_t next;
    assert_int_equal(audit_read_after(j, 10, 5, &list, &next, NULL), AR_OK);
    assert_int_equal(json_array_size(list), 1);
    assert_true(json_is_true(json_object_get(json_array_get(list, 0), "unreadable")));
    json_decref(list);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- erasing ---------------------------------------------------------------------------- */

struct erase_req {
    uint64_t seq;
};

static int erase_in_txn(journal_txn *txn, void *arg, ar_error *err)
{
    return audit_txn_erase(txn, ((struct erase_req *)arg)->seq, err);
}

static int erase(journal *j, uint64_t seq, ar_error *err)
{
    struct erase_req req = { seq };
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, erase_in_txn, &req);
    int rc = journal_commit(j, b, err);
    journal_batch_free(b);
    return rc;
}

static void erased_body_still_verifies(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_int_equal(erase(j, 3, NULL), AR_OK);
    assert_int_equal(erase(j, 3, NULL), AR_OK); /* again: nothing to do */
    assert_int_equal(erase(j, 6, NULL), AR_OK);
    ar_error err;
    assert_int_equal(erase(j, 99, &err), AR_E_NOTFOUND);
    json_t *e = raw_entry(j, 3);
    assert_true(json_is_null(json_object_get(e, "data")));
    assert_true(json_is_true(json_object_get(e, "erased")));
    json_decref(e);
    expect_ok(j, 10);
    audit_verify_result res = verify(j, 10, head);
    assert_true(res.ok);
    append_batch(j, "received", NULL, 1); /* the chain goes on after an erased entry */
    expect_ok(j, 11);

    /* An "erased" entry that still has data gets its data checked. */
    e = raw_entry(j, 4);
    json_object_set_new(e, "erased", json_true());
    json_object_set_new(json_object_get(e, "data"), "n", json_integer(7));
    raw_put(j, 4, e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 4, "body digest mismatch");
    /* An erased entry's digest cannot be checked, but its chain can. */
    e = raw_entry(j, 3);
    json_object_set_new(e, "digest", json_string("0000000000000000000000000000000000000000000000000000000000000000"));
    raw_put(j, 3, e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 3, "chain mismatch");
    journal_close(j);
    test_rm_tree(dir);

    /* An altered body is not erased: the evidence stays for verify. */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    e = raw_entry(j, 5);
    json_object_set_new(json_object_get(e, "data"), "via", json_string("someone else"));
    raw_put(j, 5, e);
    json_decref(e);
    assert_int_equal(erase(j, 5, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_erase_refused");
    e = raw_entry(j, 5);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "data"), "via")), "someone else");
    assert_null(json_object_get(e, "erased"));
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 5, "body digest mismatch");
    assert_int_equal(erase(j, 4, NULL), AR_OK); /* the others still can be */
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- head documents --------------------------------------------------------------------- */

static void head_document_signed_and_checked(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    unsigned char pk2[crypto_sign_PUBLICKEYBYTES], sk2[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(pk, sk);
    crypto_sign_keypair(pk2, sk2);
    ar_error err;

    json_t *plain;
    assert_int_equal(audit_head_document(j, NULL, &plain, NULL), AR_OK);
    assert_int_equal(json_object_size(plain), 3);
    assert_int_equal(json_integer_value(json_object_get(plain, "seq")), 10);
    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_string_equal(json_string_value(json_object_get(plain, "head")), head);
    assert_true(json_integer_value(json_object_get(plain, "time_ms")) > 0);
    assert_int_equal(audit_head_check(plain, NULL, NULL), AR_OK); /* nothing to check */
    assert_int_equal(audit_head_check(plain, pk, &err), AR_E_INVALID); /* a signature expected */
    assert_string_equal(err.code, "audit_head_signature");

    json_t *doc;
    assert_int_equal(audit_head_document(j, sk, &doc, NULL), AR_OK);
    char pk_hex[65];
    sodium_bin2hex(pk_hex, sizeof pk_hex, pk, sizeof pk);
    assert_string_equal(json_string_value(json_object_get(doc, "public_key")), pk_hex);
    assert_int_equal(strlen(json_string_value(json_object_get(doc, "signature"))), 128);
    assert_int_equal(audit_head_check(doc, pk, NULL), AR_OK);
    assert_int_equal(audit_head_check(doc, NULL, NULL), AR_OK);

    /* The signature is over the documented message: check it by hand. */
    char msg[256];
    snprintf(msg, sizeof msg, "aiorun-audit-head-v1\n%lld\n%s\n%lld",
             (long long)json_integer_value(json_object_get(doc, "seq")), head,
             (long long)json_integer_value(json_object_get(doc, "time_ms")));
    unsigned char sig[crypto_sign_BYTES];
    assert_int_equal(sodium_hex2bin(sig, sizeof sig,
                                    json_string_value(json_object_get(doc, "signature")), 128,
                                    NULL, NULL, NULL), 0);
    assert_int_equal(crypto_sign_verify_detached(sig, (const unsigned char *)msg, strlen(msg), pk), 0);

    /* Any changed field fails. */
    const char *fields[] = {"seq", "head", "time_ms"};
    for (size_t f = 0; f < 3; f++) {
        json_t *bad_doc = json_deep_copy(doc);
        if (f == 1) {
            char other[65];
            snprintf(other, sizeof other, "%s", head);
            other[0] = other[0] == 'a' ? 'b' : 'a';
            json_object_set_new(bad_doc, "head", json_string(other));
        } else {
            json_object_set_new(bad_doc, fields[f],
                                json_integer(json_integer_value(json_object_get(doc, fields[f])) + 1));
        }
        if (audit_head_check(bad_doc, pk, &err) != AR_E_INVALID)
            fail_msg("a changed %s passed the check", fields[f]);
        assert_string_equal(err.code, "audit_head_signature");
        assert_int_equal(audit_head_check(bad_doc, NULL, NULL), AR_E_INVALID);
        json_decref(bad_doc);
    }
    /* The wrong public key fails, given or carried. */
    assert_int_equal(audit_head_check(doc, pk2, &err), AR_E_INVALID);
    json_t *swapped = json_deep_copy(doc);
    char pk2_hex[65];
    sodium_bin2hex(pk2_hex, sizeof pk2_hex, pk2, sizeof pk2);
    json_object_set_new(swapped, "public_key", json_string(pk2_hex));
    assert_int_equal(audit_head_check(swapped, NULL, &err), AR_E_INVALID);
    assert_int_equal(audit_head_check(swapped, pk2, &err), AR_E_INVALID);
    json_decref(swapped);
    /* Signed again by another key: valid for that key only. */
    json_t *resigned = json_deep_copy(plain);
    assert_int_equal(audit_head_sign(resigned, sk2, NULL), AR_OK);
    assert_int_equal(audit_head_check(resigned, pk2, NULL), AR_OK);
    assert_int_equal(audit_head_check(resigned, pk, &err), AR_E_INVALID);
    json_decref(resigned);
    /* Malformed documents. */
    json_t *odd = json_pack("{s:s,s:s,s:i}", "seq", "ten", "head", head, "time_ms", 1);
    assert_int_equal(audit_head_check(odd, NULL, &err), AR_E_INVALID);
    assert_int_equal(audit_head_sign(odd, sk, &err), AR_E_INVALID);
    json_decref(odd);

    /* An empty trail has a head too: seq 0, "". */
    char *dir2 = test_tmpdir("audit");
    journal *empty = open_journal(dir2);
    json_t *zero;
    assert_int_equal(audit_head_document(empty, sk, &zero, NULL), AR_OK);
    assert_int_equal(json_integer_value(json_object_get(zero, "seq")), 0);
    assert_string_equal(json_string_value(json_object_get(zero, "head")), "");
    assert_int_equal(audit_head_check(zero, pk, NULL), AR_OK);
    json_decref(zero);
    journal_close(empty);
    test_rm_tree(dir2);

    json_decref(plain);
    json_decref(doc);
    journal_close(j);
    test_rm_tree(dir);
}

static int init_sodium(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

/* ---- data given as text ------------------------------------------------------------------ */

/* Commit one entry with data as text; the commit's status (err filled). */
static int commit_text(journal *j, const char *type, const char *id, const char *text,
                       ar_error *err)
{
    journal_batch *b = journal_batch_new();
    audit_batch_append_text(b, type, id, text, text ? strlen(text) : 0);
    int rc = journal_commit(j, b, err);
    journal_batch_free(b);
    return rc;
}

/* The stored data of entry seq as canonical text (a new string). */
static char *stored_data(journal *j, uint64_t seq)
{
    json_t *e = raw_entry(j, seq);
    assert_non_null(e);
    char *text = json_dumps(json_object_get(e, "data"),
                            JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    json_decref(e);
    assert_non_null(text);
    return text;
}

/* Entries whose data is given as canonical text are the entries audit_batch_append makes of
 * the same data, verify, and chain with the others (in one batch and across batches). */
static void text_entries_verify(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    char a1[27];
    action_id(1, a1);
    static const char *const texts[] = {
        "{}",
        "{\"a\":1,\"b\":[true,false,null],\"c\":{\"x\":\"y\"}}",
        "{\"b\":\"\\\"quoted\\\\ \\n\\t\\u0001 caf\xc3\xa9 \xf0\x9f\x98\x80 /\"}",
        "{\"a\":\"nul \\u0000 inside\"}",
        "{\"cost\":0.10000000000000001,\"n\":-42}",
        "[1,2,3]",
        "\"a string\"",
        "{\"a\":1,\"ab\":2,\"b\":{\"z\":2,\"\xc3\xa9\":1}}", /* bytes order: 'z' < 0xc3 */
    };
    size_t n = sizeof texts / sizeof texts[0];
    ar_error err;
    for (size_t i = 0; i < n; i++) {
        if (commit_text(j, "completed", i % 2 ? a1 : NULL, texts[i], &err) != AR_OK)
            fail_msg("text %zu: %s: %s", i, err.code, err.message);
        /* The same data through audit_batch_append. */
        json_t *v = json_loads(texts[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(v);
        journal_batch *b = journal_batch_new();
        audit_batch_append(b, "completed", i % 2 ? a1 : NULL, v);
        assert_int_equal(journal_commit(j, b, NULL), AR_OK);
        journal_batch_free(b);
        char *by_text = stored_data(j, 2 * i + 1), *by_json = stored_data(j, 2 * i + 2);
        assert_string_equal(by_text, by_json);
        free(by_text);
        free(by_json);
    }
    /* Several in one batch, mixed with JSON data. */
    journal_batch *b = journal_batch_new();
    for (size_t i = 0; i < n; i++) {
        audit_batch_append_text(b, "dispatched", a1, texts[i], strlen(texts[i]));
        audit_batch_append(b, "dispatched", NULL, json_pack("{s:i}", "i", (int)i));
    }
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    /* The text is copied: the caller's buffer may change once the call returns. */
    char buf[] = "{\"k\":\"v\"}";
    b = journal_batch_new();
    audit_batch_append_text(b, "dispatched", NULL, buf, strlen(buf));
    buf[6] = 'w';
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    check_format(j, 4 * n + 1);
    expect_ok(j, 4 * n + 1);
    char *last = stored_data(j, 4 * n + 1);
    assert_string_equal(last, "{\"k\":\"v\"}");
    free(last);

    /* NULL data (a writer that failed), a key with a NUL (does not read back) and nesting
     * deeper than jansson reads are refused in every build; nothing is stored. */
    assert_int_equal(commit_text(j, "completed", NULL, NULL, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    assert_int_equal(commit_text(j, "completed", NULL, "{\"k\\u0000ey\":true}", &err),
                     AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    size_t deep = 2100;
    char *text = malloc(2 * deep + 1);
    memset(text, '[', deep);
    memset(text + deep, ']', deep);
    text[2 * deep] = '\0';
    assert_int_equal(commit_text(j, "completed", NULL, text, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_invalid");
    free(text);
    /* A bad type or action id, as with JSON data. */
    assert_int_equal(commit_text(j, "", NULL, "{}", &err), AR_E_INVALID);
    assert_int_equal(commit_text(j, "completed", "short", "{}", &err), AR_E_INVALID);
    check_format(j, 4 * n + 1);
    expect_ok(j, 4 * n + 1);
    journal_close(j);
    test_rm_tree(dir);
}

/* Builds without NDEBUG check that text is canonical: anything else fails the batch with
 * "audit_invalid", and nothing of the batch is stored. (Skipped in NDEBUG builds, which trust
 * the caller.) */
static void non_canonical_text_fails_in_debug_builds(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip();
#else
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    static const char *const bad[] = {
        "{\"b\":1,\"a\":2}",                 /* keys not sorted */
        "{\"a\":{\"z\":1,\"y\":2}}",         /* nested keys not sorted */
        "{\"a\": 1}",                        /* not compact */
        " {}",
        "{\"a\":0.1}",                       /* a real jansson writes with 17 digits */
        "{\"a\":1e2}",                       /* jansson writes 100.0 */
        "{\"b\":{\"\xc3\xa9\":1,\"z\":2}}",  /* 0xc3 sorts after 'z' */
        "{\"a\":1,\"a\":2}",                 /* a duplicate key */
        "{\"a\":\"\\u00e9\"}",               /* an escape jansson does not write */
        "{\"a\":\"\\/\"}",
        "{\"a\":\"\xff\"}",                  /* not UTF-8 */
        "{\"a\":1",                          /* not JSON */
        "{}{}",
        "",
    };
    ar_error err;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        journal_batch *b = journal_batch_new();
        journal_batch_put(b, JDB_ACTIONS, "k", 1, "v", 1);
        audit_batch_append_text(b, "completed", NULL, bad[i], strlen(bad[i]));
        int rc = journal_commit(j, b, &err);
        journal_batch_free(b);
        if (rc != AR_E_INVALID || strcmp(err.code, "audit_invalid") != 0)
            fail_msg("\"%s\" was not refused (%d)", bad[i], rc);
    }
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_get(r, JDB_ACTIONS, "k", 1, NULL, NULL), AR_E_NOTFOUND);
    journal_read_end(r);
    expect_ok(j, 0);
    /* The canonical forms of the same are taken. */
    assert_int_equal(commit_text(j, "completed", NULL, "{\"a\":2,\"b\":1}", NULL), AR_OK);
    assert_int_equal(commit_text(j, "completed", NULL, "{\"a\":0.10000000000000001}", NULL), AR_OK);
    assert_int_equal(commit_text(j, "completed", NULL, "{\"a\":\"\xc3\xa9/\"}", NULL), AR_OK);
    expect_ok(j, 3);
    journal_close(j);
    test_rm_tree(dir);
#endif
}

/* ---- the daemon's entry data: the text writers against the json_pack code they replace --- */

/* The data as the daemon built it before (api_actions.c audit_submission, scheduler.c
 * audit_transition and commit), kept here as the reference: a new tree, or NULL where
 * json_pack failed. */
static json_t *old_received(const json_t *rec)
{
    json_t *proposer = json_object_get(rec, "proposer");
    return json_pack("{s:s, s:s, s:s, s:s, s:O, s:s, s:s}",
        "connector", action_record_str(rec, "connector"), "action", action_record_str(rec, "action"),
        "effect", action_record_str(rec, "effect"), "submitter", action_record_str(rec, "submitter"),
        "proposer", proposer ? proposer : json_null(), "digest", action_record_str(rec, "digest"),
        "idempotency_key", action_record_str(rec, "idempotency_key"));
}

static json_t *old_decided(const json_t *rec)
{
    return json_incref(json_object_get(rec, "decision"));
}

static json_t *old_approval_requested(const json_t *rec)
{
    json_t *ap = json_object_get(rec, "approval");
    return json_pack("{s:O, s:O, s:O, s:O}",
        "roles", json_object_get(ap, "roles") ? json_object_get(ap, "roles") : json_null(),
        "expires_ms", json_object_get(ap, "expires_ms") ? json_object_get(ap, "expires_ms") : json_null(),
        "summary", json_object_get(ap, "summary") ? json_object_get(ap, "summary") : json_null(),
        "four_eyes", json_object_get(ap, "four_eyes") ? json_object_get(ap, "four_eyes") : json_false());
}

static json_t *old_dispatched(const json_t *rec)
{
    return json_pack("{s:O, s:s, s:s}", "attempt", json_object_get(rec, "attempts"),
                     "idempotency_key", action_record_str(rec, "idempotency_key"), "digest",
                     action_record_str(rec, "digest"));
}

static json_t *old_completed(const json_t *rec)
{
    json_t *last = json_array_get(json_object_get(rec, "history"), json_array_size(json_object_get(rec, "history")) - 1);
    json_t *attempt = json_object_get(rec, "attempts");
    const json_t *error = json_object_get(rec, "error");
    json_t *cost = json_object_get(last, "cost");
    json_t *entry_attempt = json_object_get(last, "attempt");
    return json_pack("{s:O, s:O, s:O, s:O, s:O, s:s, s:O}", "attempt",
                     entry_attempt ? entry_attempt : attempt,
                     "outcome", json_object_get(last, "outcome"),
                     "http_status", json_object_get(last, "http_status") ? json_object_get(last, "http_status") : json_null(),
                     "latency_ms", json_object_get(last, "latency_ms") ? json_object_get(last, "latency_ms") : json_null(),
                     "error_class", json_object_get(error, "class") ? json_object_get(error, "class") : json_null(),
                     "state", action_state_name(action_record_state(rec)), "cost", cost ? cost : json_null());
}

static json_t *old_validation_failed(const json_t *rec)
{
    return json_deep_copy(json_object_get(rec, "validation"));
}

static json_t *old_unknown_outcome(const json_t *rec)
{
    const json_t *error = json_object_get(rec, "error");
    return json_pack("{s:O, s:s}", "attempt", json_object_get(rec, "attempts"), "reason",
                     json_string_value(json_object_get(error, "message")) ? json_string_value(json_object_get(error, "message")) : "");
}

static json_t *old_cancelled(const json_t *rec)
{
    return json_pack("{s:s}", "by", action_record_str(rec, "cancel_requested_by"));
}

static json_t *old_recovered(const json_t *rec)
{
    return json_pack("{s:O}", "how", json_object_get(rec, "recovered_how"));
}

/* The new writers, called as the daemon calls them. */
static int new_decided(jsonw_buf *out, const json_t *rec)
{
    return audit_data_value(out, json_object_get(rec, "decision"));
}

static int new_validation_failed(jsonw_buf *out, const json_t *rec)
{
    return audit_data_value(out, json_object_get(rec, "validation"));
}

static int new_recovered(jsonw_buf *out, const json_t *rec)
{
    return audit_data_recovered(out, json_object_get(rec, "recovered_how"));
}

static const struct data_kind {
    const char *type;
    json_t *(*old)(const json_t *rec);
    audit_data_writer writer;
} data_kinds[] = {
    {"received", old_received, audit_data_received},
    {"decided", old_decided, new_decided},
    {"approval_requested", old_approval_requested, audit_data_approval_requested},
    {"dispatched", old_dispatched, audit_data_dispatched},
    {"completed", old_completed, audit_data_completed},
    {"validation_failed", old_validation_failed, new_validation_failed},
    {"unknown_outcome", old_unknown_outcome, audit_data_unknown_outcome},
    {"cancelled", old_cancelled, audit_data_cancelled},
    {"recovered", old_recovered, new_recovered},
};
#define DATA_KINDS (sizeof data_kinds / sizeof data_kinds[0])

/* What audit_batch_append stored for the old data (taken): its canonical text ("{}" for NULL:
 * json_pack failed), or NULL when it could not be written (the batch failed). */
static char *old_text(json_t *data)
{
    if (!data)
        return strdup("{}");
    char *text = jsonw_dumps(data, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    char *by_jansson = json_dumps(data, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (text && by_jansson)
        assert_string_equal(text, by_jansson); /* jsonw's promise, for these values too */
    free(by_jansson);
    json_decref(data);
    return text;
}

/* A string that is not UTF-8 (as json_string_nocheck lets in). */
static json_t *not_utf8(void)
{
    return json_string_nocheck("bad \xff\xfe bytes");
}

#define ODD "q\"uo\\te\n\t\x01\x1f caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 / \x7f"

/* Record number i of the variants the writers are checked on; NULL past the last. */
static json_t *record_variant(int i)
{
    json_t *rec = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i,"
        " s:{s:s, s:s, s:f, s:s},"
        " s:{s:s, s:s, s:s, s:s, s:s, s:i, s:[{s:s, s:s}, {s:s, s:n}], s:f},"
        " s:{s:[s, s], s:I, s:s, s:b},"
        " s:[{s:i, s:s}, {s:i, s:s, s:i, s:i, s:{s:f, s:s}}],"
        " s:{s:s, s:s}, s:s, s:{s:s, s:s, s:s}, s:s}",
        "id", "01ACTION000000000000000001", "connector", "shop", "action", "refund",
        "effect", "write", "submitter", "agent-7", "digest", "ab12", "idempotency_key", "idem-1",
        "state", "SUCCEEDED", "attempts", 2,
        "proposer", "kind", "llm", "model", "m-1", "confidence", 0.93, "prompt_ref", "p/1",
        "decision", "verdict", "allow", "policy_verdict", "allow", "rule", "small", "reason",
        "under limit", "policy", "a.lua", "policy_version", 3, "votes", "file", "a.lua",
        "verdict", "allow", "file", "b.lua", "verdict", "decision_ms", 0.25,
        "approval", "roles", "finance", "ops", "expires_ms", (json_int_t)1795724304838,
        "summary", "refund 120", "four_eyes", 1,
        "history", "attempt", 1, "outcome", "failed", "attempt", 2, "outcome", "succeeded",
        "http_status", 200, "latency_ms", 87, "cost", "usd", 0.1, "currency", "USD",
        "error", "class", "timeout", "message", "the call timed out",
        "cancel_requested_by", "alice",
        "validation", "rule", "max", "reason", "too big", "policy", "v.lua",
        "recovered_how", "in flight when the daemon stopped: resent");
    assert_non_null(rec);
    json_t *last = json_array_get(json_object_get(rec, "history"), 1);
    switch (i) {
    case 0: /* as built above */
        break;
    case 1: /* everything optional absent */
        for (const char *const *k = (const char *const[]){"proposer", "approval", "error",
             "validation", "decision", "connector", "action", "effect", "submitter", "digest",
             "idempotency_key", "cancel_requested_by", "recovered_how", NULL}; *k; k++)
            json_object_del(rec, *k);
        json_array_clear(json_object_get(rec, "history"));
        break;
    case 2: /* present as null */
        json_object_set_new(rec, "proposer", json_null());
        json_object_set_new(rec, "decision", json_null());
        json_object_set_new(rec, "recovered_how", json_null());
        json_object_set_new(json_object_get(rec, "approval"), "four_eyes", json_null());
        json_object_set_new(json_object_get(rec, "approval"), "roles", json_null());
        json_object_set_new(last, "cost", json_null());
        json_object_set_new(json_object_get(rec, "error"), "class", json_null());
        json_object_set_new(json_object_get(rec, "error"), "message", json_null());
        break;
    case 3: /* strings needing escapes, non-ASCII, keys out of order and of every length */
        for (const char *const *k = (const char *const[]){"connector", "action", "effect",
             "submitter", "digest", "idempotency_key", "cancel_requested_by", NULL}; *k; k++)
            json_object_set_new(rec, *k, json_string(ODD));
        json_object_set_new(rec, "proposer", json_pack("{s:s, s:s, s:i, s:i, s:i, s:{s:i, s:i}}",
                            "zz", ODD, "\xc3\xa9", ODD, "a", 1, "ab", 2, "a\xc3\xa9", 3, "k",
                            "y", 1, "x", 2));
        json_object_set_new(json_object_get(rec, "approval"), "summary", json_string(ODD));
        json_object_set_new(json_object_get(rec, "error"), "class", json_string(ODD));
        json_object_set_new(json_object_get(rec, "error"), "message", json_string(ODD));
        json_object_set_new(last, "outcome", json_string(ODD));
        json_object_set_new(rec, "recovered_how", json_string(ODD));
        json_object_set_new(json_object_get(rec, "validation"), "reason", json_string(ODD));
        break;
    case 4: /* no cost, no http_status, no latency; the call's attempt from "attempts"; an
             * error without a class or message */
        json_object_del(last, "cost");
        json_object_del(last, "http_status");
        json_object_del(last, "latency_ms");
        json_object_del(last, "attempt");
        json_object_set_new(rec, "error", json_object());
        json_object_set_new(rec, "state", json_string("UNKNOWN_OUTCOME"));
        break;
    case 5: /* no attempt anywhere (json_pack failed: {}), no outcome */
        json_object_del(rec, "attempts");
        json_object_del(last, "attempt");
        json_object_del(last, "outcome");
        break;
    case 6: /* odd types: numbers where strings go, strings where numbers go, a string how */
        json_object_set_new(rec, "connector", json_integer(5));
        json_object_set_new(rec, "submitter", json_true());
        json_object_set_new(rec, "proposer", json_string("just a name"));
        json_object_set_new(rec, "attempts", json_string("two"));
        json_object_set_new(rec, "decision", json_pack("[i, s]", 1, "x"));
        json_object_set_new(json_object_get(rec, "approval"), "expires_ms", json_integer(-1));
        json_object_del(json_object_get(rec, "approval"), "four_eyes");
        json_object_set_new(json_object_get(rec, "error"), "message", json_integer(3));
        json_object_set_new(last, "attempt", json_integer(INT64_MAX));
        json_object_set_new(last, "latency_ms", json_real(12.5));
        json_object_set_new(rec, "recovered_how", json_pack("{s:s, s:i}", "z", "b", "a", 1));
        json_object_set_new(rec, "state", json_string("no such state"));
        break;
    case 7: /* a string field that is not UTF-8: json_pack failed, {} */
        json_object_set_new(rec, "submitter", not_utf8());
        json_object_set_new(rec, "digest", not_utf8());
        json_object_set_new(rec, "cancel_requested_by", not_utf8());
        json_object_set_new(json_object_get(rec, "error"), "message", not_utf8());
        break;
    case 8: /* a nested value that is not UTF-8: the dump failed (the batch fails) */
        json_object_set_new(rec, "proposer", json_pack("{s:o}", "model", not_utf8()));
        json_object_set_new(json_object_get(rec, "approval"), "roles", json_pack("[o]", not_utf8()));
        json_object_set_new(last, "cost", json_pack("{s:o}", "usd", not_utf8()));
        json_object_set_new(rec, "attempts", not_utf8());
        json_object_set_new(rec, "decision", json_pack("{s:o}", "rule", not_utf8()));
        json_object_set_new(rec, "recovered_how", not_utf8());
        break;
    case 9: /* both: json_pack failed before anything was dumped, {} */
        json_object_set_new(rec, "proposer", json_pack("{s:o}", "model", not_utf8()));
        json_object_set_new(rec, "idempotency_key", not_utf8());
        json_object_set_new(rec, "attempts", not_utf8());
        json_object_del(last, "attempt");
        json_object_del(last, "outcome");
        break;
    case 10: /* a NUL inside strings (a field is read up to it; nested, it is escaped) and
              * nesting deeper than jsonw writes itself */
        json_object_set_new(rec, "submitter", json_stringn("a\0b", 3));
        json_object_set_new(rec, "proposer", json_pack("{s:s%}", "n", "x\0y", (size_t)3));
        {
            json_t *deep = json_array();
            for (int d = 0; d < JSONW_MAX_DEPTH + 20; d++) {
                json_t *outer = json_object();
                json_object_set_new(outer, d % 2 ? "b" : "a", deep);
                json_object_set_new(outer, "c", json_integer(d));
                deep = outer;
            }
            json_object_set_new(rec, "decision", deep);
        }
        break;
    default:
        if (i - 11 < ACTION_STATE_COUNT) { /* every state's name */
            json_object_set_new(rec, "state", json_string(action_state_name(i - 11)));
            break;
        }
        json_decref(rec);
        return NULL;
    }
    return rec;
}

/* Each writer gives byte for byte what the json_pack code stored, over every variant, and
 * appends to what the buffer holds (which a failure leaves as it was). */
static void data_writers_match_json_pack(void **state)
{
    (void)state;
    int checked = 0, empty = 0, failed = 0;
    json_t *rec;
    for (int i = 0; (rec = record_variant(i)); i++) {
        for (size_t k = 0; k < DATA_KINDS; k++) {
            char *want = old_text(data_kinds[k].old(rec));
            char stack[8]; /* small: the writers must grow it */
            jsonw_buf out = {stack, 0, sizeof stack, 1};
            assert_int_equal(jsonw_append_raw(&out, "<<", 2), 0);
            int rc = data_kinds[k].writer(&out, rec);
            if (!want) {
                if (rc != -1 || out.len != 2)
                    fail_msg("variant %d, %s: the old data could not be written; the writer "
                             "gave %d and \"%.*s\"", i, data_kinds[k].type, rc, (int)out.len,
                             out.data);
                failed++;
            } else if (rc != 0 || out.len != 2 + strlen(want) ||
                       memcmp(out.data + 2, want, strlen(want)) != 0) {
                fail_msg("variant %d, %s:\n old: %s\n new: %.*s (%d)", i, data_kinds[k].type,
                         want, (int)(out.len - 2), out.data + 2, rc);
            } else {
                empty += strcmp(want, "{}") == 0;
            }
            assert_memory_equal(out.data, "<<", 2);
            jsonw_buf_free(&out);
            free(want);
            checked++;
        }
        json_decref(rec);
    }
    /* The variants reach every case: matches, json_pack failures ({}) and dump failures. */
    assert_true(checked > 20 * (int)DATA_KINDS);
    assert_true(empty >= 10);
    assert_true(failed >= 6);
}

/* Entries appended with the writers (audit_batch_append_data, as the daemon does) verify, and
 * their data is what audit_batch_append stored from the json_pack trees; a writer that fails
 * fails the batch with "audit_invalid". */
static void written_entries_verify(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    uint64_t seq = 0;
    json_t *rec;
    ar_error err;
    for (int i = 0; (rec = record_variant(i)); i++) {
        const char *id = action_record_str(rec, "id");
        for (size_t k = 0; k < DATA_KINDS; k++) {
            json_t *old = data_kinds[k].old(rec);
            char *want = old_text(json_incref(old));
            journal_batch *b = journal_batch_new(), *ob = journal_batch_new();
            audit_batch_append_data(b, data_kinds[k].type, id, data_kinds[k].writer, rec);
            audit_batch_append(ob, data_kinds[k].type, id, old);
            int rc = journal_commit(j, b, &err);
            if (!want) {
                assert_int_equal(rc, AR_E_INVALID);
                assert_string_equal(err.code, "audit_invalid");
                assert_int_equal(journal_commit(j, ob, &err), AR_E_INVALID);
            } else {
                if (rc != AR_OK)
                    fail_msg("variant %d, %s: %s", i, data_kinds[k].type, err.message);
                assert_int_equal(journal_commit(j, ob, NULL), AR_OK);
                char *by_writer = stored_data(j, ++seq), *by_json = stored_data(j, ++seq);
                assert_string_equal(by_writer, by_json);
                free(by_writer);
                free(by_json);
            }
            journal_batch_free(b);
            journal_batch_free(ob);
            free(want);
        }
        json_decref(rec);
    }
    assert_true(seq > 40);
    check_format(j, seq);
    expect_ok(j, seq);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- the head: from the last entry --------------------------------------------------- */

/* The head record earlier versions kept (JDB_META, AUDIT_HEAD_KEY): its bytes into out (40
 * when there is one); *len 0 when there is none. */
static void head_record(journal *j, unsigned char out[64], size_t *len)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    int rc = journal_get(r, JDB_META, AUDIT_HEAD_KEY, strlen(AUDIT_HEAD_KEY), &val, &vlen);
    *len = 0;
    if (rc == AR_OK) {
        assert_true(vlen <= 64);
        memcpy(out, val, vlen);
        *len = vlen;
    } else {
        assert_int_equal(rc, AR_E_NOTFOUND);
    }
    journal_read_end(r);
}

/* Plant a head record as earlier versions wrote it: seq (8 bytes BE) and a chain. */
static void put_head_record(journal *j, uint64_t seq, const unsigned char chain[32])
{
    unsigned char rec[40];
    seq_key(seq, rec);
    memcpy(rec + 8, chain, 32);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_META, AUDIT_HEAD_KEY, strlen(AUDIT_HEAD_KEY), rec, sizeof rec);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
}

/* audit_head is the last entry's seq and chain. */
static void expect_head(journal *j, uint64_t want_seq)
{
    uint64_t seq;
    char head[AUDIT_HASH_HEX], chain[AUDIT_HASH_HEX];
    unsigned char raw[32];
    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_int_equal(seq, want_seq);
    json_t *e = raw_entry(j, want_seq);
    assert_non_null(e);
    chain_field(e, raw);
    hex32(raw, chain);
    assert_string_equal(head, chain);
    json_decref(e);
}

/* Does the stored entry seq's text end with its "chain" member (the form read without a
 * parse)? */
static bool ends_with_chain(journal *j, uint64_t seq)
{
    unsigned char key[8];
    seq_key(seq, key);
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(r, JDB_AUDIT, key, sizeof key, &val, &vlen), AR_OK);
    bool yes = vlen > 76 && memcmp((const char *)val + vlen - 76, ",\"chain\":\"", 10) == 0;
    journal_read_end(r);
    return yes;
}

/* Store entry last+1, chained onto entry last, as another writer might: data as given, the
 * fields in the order given (a NULL-terminated list of the seven). */
static void forge_next(journal *j, uint64_t last, json_t *data, const char *const *order)
{
    json_t *prev_e = raw_entry(j, last), *body = json_object(), *e = json_object();
    assert_non_null(prev_e);
    unsigned char prev[32], digest[32], chain[32];
    char dhex[65], chex[65];
    json_object_set_new(body, "seq", json_integer((json_int_t)last + 1));
    json_object_set_new(body, "time_ms", json_integer(5));
    json_object_set_new(body, "type", json_string("forged"));
    json_object_set_new(body, "action", json_null());
    json_object_set(body, "data", data);
    digest_of(body, digest);
    chain_field(prev_e, prev);
    chain_of(prev, digest, chain);
    hex32(digest, dhex);
    hex32(chain, chex);
    json_object_set_new(body, "digest", json_string(dhex));
    json_object_set_new(body, "chain", json_string(chex));
    for (const char *const *k = order; *k; k++)
        json_object_set(e, *k, json_object_get(body, *k));
    raw_put(j, last + 1, e);
    json_decref(e);
    json_decref(body);
    json_decref(prev_e);
    json_decref(data);
}

/* Appends (batches, callbacks, many in one transaction, many transactions, threads) chain
 * from the last entry and write no head record; audit_head is the last entry's. (Was
 * head_record_follows_appends, which checked the record followed every append.) */
static void appends_chain_from_the_last_entry(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = open_journal(dir);
    unsigned char rec[64];
    size_t rlen;
    append_batch(j, "received", NULL, 3);
    expect_head(j, 3);
    assert_true(ends_with_chain(j, 3));
    char a1[27];
    action_id(1, a1);
    append_at(j, "completed", a1, 42);
    expect_head(j, 4);

    /* Many entries in one transaction: a batch of 60, batch appends and callbacks mixed. */
    journal_batch *b = journal_batch_new();
    struct txn_append cb[20];
    for (int i = 0; i < 60; i++) {
        if (i % 3 == 2) {
            cb[i / 3] = (struct txn_append){ .type = "completed", .id = a1, .time_ms = i };
            journal_batch_apply(b, append_in_txn, &cb[i / 3]);
        } else {
            audit_batch_append(b, "dispatched", i % 2 ? a1 : NULL, json_pack("{s:i}", "i", i));
        }
    }
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    for (int i = 0; i < 20; i++)
        assert_int_equal(cb[i].seq, 4 + 3 * (uint64_t)i + 3);
    check_format(j, 64);
    expect_ok(j, 64);
    expect_head(j, 64);

    /* A failed batch: no entry, the head as it was. */
    b = journal_batch_new();
    audit_batch_append(b, "received", a1, NULL);
    journal_batch_apply(b, fail_after, NULL);
    assert_int_equal(journal_commit(j, b, NULL), AR_E_CONFLICT);
    journal_batch_free(b);
    expect_head(j, 64);

    /* Many transactions, from several threads at once (group commits). */
    enum { THREADS = 4, ROUNDS = 10 };
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ .j = j, .index = i, .rounds = ROUNDS };
        assert_int_equal(pthread_create(&t[i], NULL, append_worker, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    for (int i = 0; i < 5; i++)
        append_batch(j, "received", NULL, 2);
    uint64_t n = 64 + THREADS * ROUNDS + 10;
    expect_head(j, n);
    check_format(j, n);
    expect_ok(j, n);
    head_record(j, rec, &rlen);
    assert_int_equal(rlen, 0); /* never written */
    journal_close(j);
    test_rm_tree(dir);
}

/* A journal holding the head record of an earlier version, stale or wrong in every way, goes
 * on from its last entry and leaves the record as it was. (Was
 * chain_goes_on_without_the_head_record, where the record was deleted and had to come back.) */
static void an_old_head_record_is_ignored(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    unsigned char chain10[32], wrong[32], rec[64];
    size_t rlen;
    json_t *e10 = raw_entry(j, 10);
    chain_field(e10, chain10);
    json_decref(e10);
    memset(wrong, 0xab, sizeof wrong);

    /* Right when written (an earlier version's last append), stale after the next. */
    put_head_record(j, 10, chain10);
    append_batch(j, "received", NULL, 2);
    check_format(j, 12);
    expect_ok(j, 12);
    expect_head(j, 12);
    head_record(j, rec, &rlen);
    assert_int_equal(rlen, 40);
    unsigned char key10[8];
    seq_key(10, key10);
    assert_memory_equal(rec, key10, 8); /* left as it was */
    assert_memory_equal(rec + 8, chain10, 32);

    /* Naming the last seq with another chain (which an earlier version would have refused
     * too), and naming a seq beyond the end. */
    put_head_record(j, 12, wrong);
    append_at(j, "completed", NULL, 7);
    check_format(j, 13);
    expect_ok(j, 13);
    put_head_record(j, 99, wrong);
    append_batch(j, "received", NULL, 1);
    check_format(j, 14);
    expect_ok(j, 14);
    expect_head(j, 14);

    /* And after a reopen (nothing cached), with a record of the wrong size. */
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_META, AUDIT_HEAD_KEY, strlen(AUDIT_HEAD_KEY), "junk", 4);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    journal_close(j);
    j = open_journal(dir);
    append_batch(j, "received", NULL, 1);
    check_format(j, 15);
    expect_ok(j, 15);

    /* The chain rewritten from 12 on under the record. */
    rewrite_from(j, 12);
    append_batch(j, "received", NULL, 1);
    check_format(j, 16);
    expect_ok(j, 16);
    expect_head(j, 16);
    head_record(j, rec, &rlen);
    assert_int_equal(rlen, 4);
    journal_close(j);
    test_rm_tree(dir);
}

/* A last entry written otherwise (fields in another order, "chain" not last, a nested
 * "chain" in its data) is parsed, and the chain goes on from its own "chain"; one written in
 * our order by another writer is read from its tail. One whose text ends like ours but is
 * stored under another seq, or whose tail is not the real "chain" member, stops appends. */
static void last_entry_written_otherwise(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    static const char *const ours[] = {"seq", "time_ms", "type", "action", "data", "digest",
                                       "chain", NULL};
    static const char *const chain_first[] = {"chain", "seq", "digest", "time_ms", "type",
                                              "action", "data", NULL};
    forge_next(j, 10, json_pack("{s:i}", "n", 1), ours);
    assert_true(ends_with_chain(j, 11));
    expect_head(j, 11);
    append_batch(j, "received", NULL, 1);
    check_format(j, 12);
    expect_ok(j, 12);

    /* "chain" first, and the data ends with a "chain" of its own (a decoy: all zeros). */
    forge_next(j, 12, json_pack("{s:i, s:s}", "n", 2, "chain",
                                "0000000000000000000000000000000000000000000000000000000000000000"),
               chain_first);
    assert_false(ends_with_chain(j, 13));
    expect_head(j, 13);
    append_batch(j, "received", NULL, 1);
    check_format(j, 14);
    expect_ok(j, 14);
    /* The data last, as an object ending with that decoy. */
    static const char *const data_last[] = {"seq", "time_ms", "type", "action", "digest",
                                            "chain", "data", NULL};
    forge_next(j, 14, json_pack("{s:s}", "chain",
                                "0000000000000000000000000000000000000000000000000000000000000000"),
               data_last);
    expect_head(j, 15);
    append_at(j, "completed", NULL, 9);
    check_format(j, 16);
    expect_ok(j, 16);

    /* Entry 16's text stored again as 17: it ends as ours does, but its seq is not its key. */
    json_t *e16 = raw_entry(j, 16);
    raw_put(j, 17, e16);
    json_decref(e16);
    journal_batch *b = journal_batch_new();
    audit_batch_append(b, "received", NULL, NULL);
    ar_error err;
    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(journal_commit(j, b, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_head_unreadable");
    assert_int_equal(audit_head(j, &seq, head, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_head_unreadable");

    /* A tail that is a key ending in "chain" (x"chain), not the member: not taken. */
    char text[256];
    json_t *e15 = raw_entry(j, 15);
    int n = snprintf(text, sizeof text, "{\"seq\":17,\"time_ms\":1,\"x\\\"chain\":\"%s\"}",
                     json_string_value(json_object_get(e15, "chain")));
    json_decref(e15);
    unsigned char key[8];
    seq_key(17, key);
    journal_batch *put = journal_batch_new();
    journal_batch_put(put, JDB_AUDIT, key, 8, text, (size_t)n);
    assert_int_equal(journal_commit(j, put, NULL), AR_OK);
    journal_batch_free(put);
    assert_int_equal(journal_commit(j, b, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_head_unreadable");

    /* Our form, but the chain in uppercase hex: not taken from the tail, and not parsed. */
    e16 = raw_entry(j, 16);
    json_object_set_new(e16, "seq", json_integer(17));
    char upper[65];
    snprintf(upper, sizeof upper, "%s", json_string_value(json_object_get(e16, "chain")));
    for (char *c = upper; *c; c++)
        if (*c >= 'a' && *c <= 'f')
            *c = (char)(*c - 'a' + 'A');
    json_object_set_new(e16, "chain", json_string(upper));
    raw_put(j, 17, e16);
    json_decref(e16);
    assert_int_equal(journal_commit(j, b, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_head_unreadable");
    journal_batch_free(b);
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 17, "unreadable entry");
    journal_close(j);
    test_rm_tree(dir);
}

/* Erasing bodies (retention), the last entry's included, keeps the head, and the chain goes
 * on from an erased last entry (which ends with "erased":true: parsed). (Was
 * erase_leaves_the_head_record, which checked the record stayed as it was.) */
static void chain_goes_on_after_an_erased_last_entry(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    uint64_t seq_before, seq_after;
    char before[AUDIT_HASH_HEX], after[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq_before, before, NULL), AR_OK);
    assert_int_equal(erase(j, 4, NULL), AR_OK);
    assert_int_equal(erase(j, 10, NULL), AR_OK);
    assert_int_equal(audit_head(j, &seq_after, after, NULL), AR_OK);
    assert_int_equal(seq_after, seq_before);
    assert_string_equal(after, before);
    json_t *e = raw_entry(j, 10);
    assert_true(json_is_true(json_object_get(e, "erased")));
    json_decref(e);
    assert_false(ends_with_chain(j, 10));
    append_batch(j, "received", NULL, 1);
    expect_ok(j, 11);
    expect_head(j, 11);
    json_t *e11 = raw_entry(j, 11);
    unsigned char prev[32], digest[32], chain[32], stored[32];
    assert_int_equal(sodium_hex2bin(prev, 32, before, 64, NULL, NULL, NULL), 0);
    digest_of(e11, digest);
    chain_of(prev, digest, chain);
    chain_field(e11, stored);
    assert_memory_equal(chain, stored, 32);
    json_decref(e11);
    /* Several appends after erasing the new last one again, over several transactions. */
    assert_int_equal(erase(j, 11, NULL), AR_OK);
    append_batch(j, "received", NULL, 3);
    assert_int_equal(erase(j, 14, NULL), AR_OK);
    append_at(j, "completed", NULL, 3);
    expect_ok(j, 15);
    expect_head(j, 15);
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- cutting (bounded history) ------------------------------------------------------------ */

#define CUT_MS INT64_C(1800000000000)

struct cut_req {
    uint64_t through;
    uint64_t seq;       /* the audit_cut entry's */
};

static int cut_in_txn(journal_txn *txn, void *arg, ar_error *err)
{
    struct cut_req *c = arg;
    return audit_txn_cut(txn, c->through, CUT_MS, &c->seq, err);
}

/* Cut through seq `through`: the commit's status; *cut_seq the audit_cut entry's seq. */
static int cut(journal *j, uint64_t through, uint64_t *cut_seq, ar_error *err)
{
    struct cut_req req = { through, 0 };
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, cut_in_txn, &req);
    int rc = journal_commit(j, b, err);
    journal_batch_free(b);
    if (cut_seq)
        *cut_seq = req.seq;
    return rc;
}

/* The anchor as stored (a new reference), or NULL. */
static json_t *anchor_doc(journal *j)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    json_t *doc = NULL;
    if (journal_get(r, JDB_META, AUDIT_ANCHOR_KEY, strlen(AUDIT_ANCHOR_KEY), &val, &vlen) == AR_OK)
        doc = json_loadb(val, vlen, 0, NULL);
    journal_read_end(r);
    return doc;
}

static void put_anchor(journal *j, const char *text)
{
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_META, AUDIT_ANCHOR_KEY, strlen(AUDIT_ANCHOR_KEY), text, strlen(text));
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
}

/* The stored chain of entry seq (hex). */
static void chain_hex_of(journal *j, uint64_t seq, char out[AUDIT_HASH_HEX])
{
    json_t *e = raw_entry(j, seq);
    if (!e)
        fail_msg("no entry %llu", (unsigned long long)seq);
    snprintf(out, AUDIT_HASH_HEX, "%s", json_string_value(json_object_get(e, "chain")));
    json_decref(e);
}

static size_t count_keys(journal *j, journal_db db)
{
    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_cursor_open(r, db, &c), AR_OK);
    size_t n = 0;
    const void *k, *v;
    size_t kl, vl;
    for (int rc = journal_cursor_get(c, JOURNAL_FIRST, &k, &kl, &v, &vl); rc == AR_OK;
         rc = journal_cursor_get(c, JOURNAL_NEXT, &k, &kl, &v, &vl))
        n++;
    journal_cursor_close(c);
    journal_read_end(r);
    return n;
}

static bool index_key_present(journal *j, const char *id, uint64_t seq)
{
    unsigned char key[34];
    memcpy(key, id, 26);
    seq_key(seq, key + 26);
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    int rc = journal_get(r, JDB_AUDIT_INDEX, key, sizeof key, NULL, NULL);
    journal_read_end(r);
    return rc == AR_OK;
}

/* Entries first..last are stored and chain from the chain given (hex), by the documented
 * algorithm (independently of audit.c). */
static void check_format_from(journal *j, const char *from_hex, uint64_t first, uint64_t last)
{
    unsigned char prev[32], digest[32], chain[32], stored[32];
    assert_int_equal(sodium_hex2bin(prev, 32, from_hex, 64, NULL, NULL, NULL), 0);
    for (uint64_t seq = first; seq <= last; seq++) {
        json_t *e = raw_entry(j, seq);
        if (!e)
            fail_msg("no entry %llu", (unsigned long long)seq);
        digest_of(e, digest);
        chain_of(prev, digest, chain);
        chain_field(e, stored);
        assert_memory_equal(chain, stored, 32);
        memcpy(prev, chain, 32);
        json_decref(e);
    }
    assert_null(raw_entry(j, last + 1));
}

static void cut_prefix_verifies_from_the_anchor(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char a1[27], a2[27], chain5[AUDIT_HASH_HEX], chain10[AUDIT_HASH_HEX];
    action_id(1, a1);
    action_id(2, a2);
    chain_hex_of(j, 5, chain5);
    chain_hex_of(j, 10, chain10);
    json_t *e5 = raw_entry(j, 5);
    json_int_t time5 = json_integer_value(json_object_get(e5, "time_ms"));
    json_decref(e5);

    /* 1..5 go (1-3 about a1, 4-5 about a2), with their index keys; 11 records the cut. */
    uint64_t cut_seq = 0;
    ar_error err;
    if (cut(j, 5, &cut_seq, &err) != AR_OK)
        fail_msg("cut: %s: %s", err.code, err.message);
    assert_int_equal(cut_seq, 11);
    for (uint64_t seq = 1; seq <= 5; seq++)
        assert_null(raw_entry(j, seq));
    assert_false(index_key_present(j, a1, 1));
    assert_false(index_key_present(j, a2, 4));
    assert_false(index_key_present(j, a2, 5));
    assert_true(index_key_present(j, a2, 6));
    json_t *story = NULL;
    assert_int_equal(audit_read_action(j, a2, &story, NULL), AR_OK);
    assert_int_equal(json_array_size(story), 1);
    json_decref(story);

    json_t *anchor = anchor_doc(j);
    assert_non_null(anchor);
    assert_int_equal(json_integer_value(json_object_get(anchor, "seq")), 5);
    assert_string_equal(json_string_value(json_object_get(anchor, "chain")), chain5);
    assert_int_equal(json_integer_value(json_object_get(anchor, "time_ms")), time5);
    assert_int_equal(json_integer_value(json_object_get(anchor, "cut_ms")), CUT_MS);
    json_decref(anchor);
    json_t *c = raw_entry(j, 11);
    assert_string_equal(json_string_value(json_object_get(c, "type")), "audit_cut");
    assert_true(json_is_null(json_object_get(c, "action")));
    assert_int_equal(json_integer_value(json_object_get(c, "time_ms")), CUT_MS);
    json_t *data = json_object_get(c, "data");
    assert_int_equal(json_integer_value(json_object_get(data, "through_seq")), 5);
    assert_string_equal(json_string_value(json_object_get(data, "chain")), chain5);
    assert_int_equal(json_integer_value(json_object_get(data, "through_time_ms")), time5);
    assert_string_equal(json_string_value(json_object_get(data, "by")), "retention");
    json_decref(c);
    check_format_from(j, chain5, 6, 11);
    chain_hex_of(j, 10, chain5); /* entries kept are untouched */
    assert_string_equal(chain5, chain10);

    audit_verify_result res = verify(j, 0, NULL);
    if (!res.ok)
        fail_msg("not ok at %llu: %s", (unsigned long long)res.first_bad_seq, res.reason);
    assert_int_equal(res.entries, 6);
    assert_int_equal(res.first_seq, 6);
    assert_int_equal(res.cut_through, 5);
    assert_int_equal(res.cut_ms, CUT_MS);
    assert_false(res.head_unchecked);
    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_int_equal(seq, 11);
    assert_string_equal(head, res.head);

    /* Appends go on; a second cut (through the first cut's own entry) too. */
    append_batch(j, "received", a1, 2);
    expect_head(j, 13);
    char chain11[AUDIT_HASH_HEX];
    chain_hex_of(j, 11, chain11);
    assert_int_equal(cut(j, 11, &cut_seq, NULL), AR_OK);
    assert_int_equal(cut_seq, 14);
    check_format_from(j, chain11, 12, 14);
    res = verify(j, 0, NULL);
    assert_true(res.ok);
    assert_int_equal(res.entries, 3);
    assert_int_equal(res.first_seq, 12);
    assert_int_equal(res.cut_through, 11);

    /* Refused: nothing left to cut there, or beyond the last entry; nothing changes. */
    assert_int_equal(cut(j, 11, NULL, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_cut_invalid");
    assert_int_equal(cut(j, 15, NULL, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_cut_invalid");
    /* The newest audit_cut entry keeps its body. */
    assert_int_equal(erase(j, 14, &err), AR_E_INVALID);
    assert_string_equal(err.code, "audit_cut_kept");
    expect_ok(j, 3);

    /* The cut survives a reopen (nothing cached). */
    journal_close(j);
    j = open_journal(dir);
    append_batch(j, "received", NULL, 1);
    expect_ok(j, 4);
    journal_close(j);
    test_rm_tree(dir);
}

/* Entries deleted and an anchor written by hand (no audit_cut entry), or an anchor moved on
 * after a real cut, or taken away: each is named. */
static void forged_anchor_is_named(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char a1[27], a2[27], chain[AUDIT_HASH_HEX], text[256];
    action_id(1, a1);
    action_id(2, a2);
    chain_hex_of(j, 4, chain);
    for (uint64_t seq = 1; seq <= 4; seq++) {
        unsigned char key[8], ikey[34];
        seq_key(seq, key);
        raw_del(j, JDB_AUDIT, key, sizeof key);
        memcpy(ikey, seq <= 3 ? a1 : a2, 26);
        seq_key(seq, ikey + 26);
        raw_del(j, JDB_AUDIT_INDEX, ikey, sizeof ikey);
    }
    /* Without an anchor that is a gap. */
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 1, "sequence gap (expected 1)");
    snprintf(text, sizeof text, "{\"seq\":4,\"chain\":\"%s\",\"time_ms\":1,\"cut_ms\":2}", chain);
    put_anchor(j, text);
    res = verify(j, 0, NULL);
    expect_bad(&res, 5, "the anchor is not attested by an audit_cut entry");
    assert_false(res.head_unchecked);
    /* The head is still the last entry; an append does not make the anchor good. */
    append_batch(j, "received", NULL, 1);
    res = verify(j, 0, NULL);
    expect_bad(&res, 5, "the anchor is not attested by an audit_cut entry");
    journal_close(j);
    test_rm_tree(dir);

    /* A real cut through 3, then 4 and 5 deleted and the anchor moved to 5 by hand. */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    assert_int_equal(cut(j, 3, NULL, NULL), AR_OK);
    expect_ok(j, 8);
    json_t *real = anchor_doc(j);
    chain_hex_of(j, 5, chain);
    for (uint64_t seq = 4; seq <= 5; seq++) {
        unsigned char key[8], ikey[34];
        seq_key(seq, key);
        raw_del(j, JDB_AUDIT, key, sizeof key);
        memcpy(ikey, a2, 26);
        seq_key(seq, ikey + 26);
        raw_del(j, JDB_AUDIT_INDEX, ikey, sizeof ikey);
    }
    snprintf(text, sizeof text, "{\"seq\":5,\"chain\":\"%s\",\"time_ms\":%lld,\"cut_ms\":%lld}", chain,
             (long long)json_integer_value(json_object_get(real, "time_ms")), (long long)CUT_MS);
    put_anchor(j, text);
    res = verify(j, 0, NULL);
    expect_bad(&res, 11, "the anchor is not attested by an audit_cut entry");
    /* The anchor's time made up: caught too. */
    char *again = json_dumps(real, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(real);
    journal_close(j);
    test_rm_tree(dir);

    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    assert_int_equal(cut(j, 3, NULL, NULL), AR_OK);
    real = anchor_doc(j);
    json_object_set_new(real, "cut_ms", json_integer(CUT_MS - 1));
    free(again);
    again = json_dumps(real, JSON_COMPACT | JSON_PRESERVE_ORDER);
    put_anchor(j, again);
    res = verify(j, 0, NULL);
    expect_bad(&res, 11, "the anchor is not attested by an audit_cut entry");
    /* An anchor that cannot be read; one taken away. */
    put_anchor(j, "{\"seq\":3}");
    res = verify(j, 0, NULL);
    expect_bad(&res, 1, "the audit anchor (where the trail was cut) cannot be read");
    raw_del(j, JDB_META, AUDIT_ANCHOR_KEY, strlen(AUDIT_ANCHOR_KEY));
    res = verify(j, 0, NULL);
    expect_bad(&res, 1, "sequence gap (expected 1)");
    free(again);
    json_decref(real);
    journal_close(j);
    test_rm_tree(dir);
}

/* After a cut, tampering with what is kept is named as before; an entry that does not verify
 * is never cut out of sight; an index key left below the cut is named. */
static void tampering_after_a_cut_is_named(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char a1[27];
    action_id(1, a1);
    assert_int_equal(cut(j, 5, NULL, NULL), AR_OK);
    json_t *e = raw_entry(j, 7);
    json_object_set_new(json_object_get(e, "data"), "n", json_integer(99));
    raw_put(j, 7, e);
    json_decref(e);
    audit_verify_result res = verify(j, 0, NULL);
    expect_bad(&res, 7, "body digest mismatch");
    journal_close(j);
    test_rm_tree(dir);

    /* The cut's own entry altered (another through_seq). */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    assert_int_equal(cut(j, 5, NULL, NULL), AR_OK);
    e = raw_entry(j, 11);
    json_object_set_new(json_object_get(e, "data"), "through_seq", json_integer(4));
    raw_put(j, 11, e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 11, "body digest mismatch");
    journal_close(j);
    test_rm_tree(dir);

    /* The first entry kept altered: it no longer chains from the anchor. */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    assert_int_equal(cut(j, 5, NULL, NULL), AR_OK);
    e = raw_entry(j, 6);
    json_object_set_new(e, "chain", json_string("00000000000000000000000000000000"
                                                 "00000000000000000000000000000000"));
    raw_put(j, 6, e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 6, "chain mismatch");
    journal_close(j);
    test_rm_tree(dir);

    /* Entry 4 altered before any cut: a cut through it is refused, nothing goes. */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    e = raw_entry(j, 4);
    json_object_set_new(json_object_get(e, "data"), "n", json_integer(99));
    raw_put(j, 4, e);
    json_decref(e);
    ar_error err;
    assert_int_equal(cut(j, 6, NULL, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_cut_refused");
    assert_non_null(strstr(err.message, "audit entry 4 does not verify (body digest mismatch)"));
    assert_null(anchor_doc(j));
    e = raw_entry(j, 1);
    assert_non_null(e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 4, "body digest mismatch");
    /* up to it is fine */
    assert_int_equal(cut(j, 3, NULL, NULL), AR_OK);
    res = verify(j, 0, NULL);
    expect_bad(&res, 4, "body digest mismatch");
    journal_close(j);
    test_rm_tree(dir);

    /* An index key put back below the cut. */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    assert_int_equal(cut(j, 5, NULL, NULL), AR_OK);
    expect_ok(j, 6);
    unsigned char ikey[34];
    memcpy(ikey, a1, 26);
    seq_key(2, ikey + 26);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT_INDEX, ikey, sizeof ikey, "", 0);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
    res = verify(j, 0, NULL);
    expect_bad(&res, 2, "the action index names an entry cut by retention");
    journal_close(j);
    test_rm_tree(dir);

    /* An old entry put back below the cut. */
    dir = test_tmpdir("audit");
    j = ten_entries(dir);
    e = raw_entry(j, 2);
    assert_int_equal(cut(j, 5, NULL, NULL), AR_OK);
    raw_put(j, 2, e);
    json_decref(e);
    res = verify(j, 0, NULL);
    expect_bad(&res, 2, "an entry kept below the cut");
    journal_close(j);
    test_rm_tree(dir);
}

/* Kept heads: before the cut they cannot be checked (and the trail is not called tampered);
 * at the cut they check against the anchor; after it as before. */
static void kept_heads_across_a_cut(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char h3[AUDIT_HASH_HEX], h5[AUDIT_HASH_HEX], h8[AUDIT_HASH_HEX], other[AUDIT_HASH_HEX];
    chain_hex_of(j, 3, h3);
    chain_hex_of(j, 5, h5);
    chain_hex_of(j, 8, h8);
    chain_hex_of(j, 9, other);
    assert_int_equal(cut(j, 5, NULL, NULL), AR_OK);

    audit_verify_result res = verify(j, 3, h3);
    assert_true(res.ok);
    assert_true(res.head_unchecked);
    assert_int_equal(res.first_bad_seq, 0);
    assert_int_equal(res.entries, 6);
    char when[AR_TIME_LEN], want[256];
    ar_time_rfc3339(CUT_MS, when);
    snprintf(want, sizeof want, "the kept head (seq 3) is older than the trail kept: entries up to 5 "
             "were cut by retention at %s", when);
    assert_string_equal(res.head_note, want);
    /* a wrong head that old cannot be told from a right one: unchecked, not tampered */
    res = verify(j, 3, other);
    assert_true(res.ok);
    assert_true(res.head_unchecked);

    res = verify(j, 5, h5); /* at the cut: the anchor's chain, attested */
    assert_true(res.ok);
    assert_false(res.head_unchecked);
    res = verify(j, 5, other);
    expect_bad(&res, 5, "does not match the exported head");
    res = verify(j, 8, h8);
    assert_true(res.ok);
    assert_false(res.head_unchecked);
    res = verify(j, 8, other);
    expect_bad(&res, 8, "does not match the exported head");

    /* A consistent rewrite from 7 on is caught by the head kept at 8. */
    rewrite_from(j, 7);
    res = verify(j, 0, NULL);
    assert_true(res.ok);
    res = verify(j, 8, h8);
    expect_bad(&res, 8, "does not match the exported head");
    journal_close(j);
    test_rm_tree(dir);
}

/* Everything cut but the cut's own entry; then that one too (the append goes on from the
 * anchor); an empty trail with an anchor has the anchor's head. */
static void cut_of_everything_but_the_cut_entry(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char chain10[AUDIT_HASH_HEX], chain11[AUDIT_HASH_HEX];
    chain_hex_of(j, 10, chain10);
    uint64_t cut_seq;
    assert_int_equal(cut(j, 10, &cut_seq, NULL), AR_OK);
    assert_int_equal(cut_seq, 11);
    check_format_from(j, chain10, 11, 11);
    audit_verify_result res = verify(j, 0, NULL);
    assert_true(res.ok);
    assert_int_equal(res.entries, 1);
    assert_int_equal(res.first_seq, 11);
    chain_hex_of(j, 11, chain11);
    assert_int_equal(cut(j, 11, &cut_seq, NULL), AR_OK);
    assert_int_equal(cut_seq, 12);
    check_format_from(j, chain11, 12, 12);
    expect_ok(j, 1);
    expect_head(j, 12);
    assert_int_equal(count_keys(j, JDB_AUDIT_INDEX), 0);

    /* The last entry taken away by hand: the head is the anchor's; verify names it. */
    unsigned char key[8];
    seq_key(12, key);
    raw_del(j, JDB_AUDIT, key, sizeof key);
    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    assert_int_equal(audit_head(j, &seq, head, NULL), AR_OK);
    assert_int_equal(seq, 11);
    assert_string_equal(head, chain11);
    res = verify(j, 0, NULL);
    expect_bad(&res, 12, "the anchor is not attested by an audit_cut entry");
    assert_int_equal(append_at(j, "received", NULL, 5), 12);
    check_format_from(j, chain11, 12, 12);
    journal_close(j);
    test_rm_tree(dir);
}

/* A trail never cut: no anchor, verify's new fields at their neutral values. */
static void never_cut_trail_as_before(void **state)
{
    (void)state;
    char *dir = test_tmpdir("audit");
    journal *j = ten_entries(dir);
    char h3[AUDIT_HASH_HEX];
    chain_hex_of(j, 3, h3);
    audit_verify_result res = verify(j, 3, h3);
    assert_true(res.ok);
    assert_int_equal(res.entries, 10);
    assert_int_equal(res.first_seq, 1);
    assert_int_equal(res.cut_through, 0);
    assert_int_equal(res.cut_ms, 0);
    assert_false(res.head_unchecked);
    assert_string_equal(res.head_note, "");
    assert_null(anchor_doc(j));
    check_format(j, 10);
    journal_close(j);
    test_rm_tree(dir);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(appends_make_one_chain),
    cmocka_unit_test(unverifiable_data_is_refused),
    cmocka_unit_test(concurrent_appends_stay_linear),
    cmocka_unit_test(two_processes_share_the_chain),
    cmocka_unit_test(failed_batch_leaves_no_entry),
    cmocka_unit_test(read_by_action_and_after),
    cmocka_unit_test(export_since),
    cmocka_unit_test(altered_body_is_named),
    cmocka_unit_test(deleted_entry_is_a_gap),
    cmocka_unit_test(swapped_entries_are_named),
    cmocka_unit_test(rewritten_chain_needs_an_exported_head),
    cmocka_unit_test(index_is_checked),
    cmocka_unit_test(unreadable_head_refuses_appends),
    cmocka_unit_test(erased_body_still_verifies),
    cmocka_unit_test(head_document_signed_and_checked),
    cmocka_unit_test(text_entries_verify),
    cmocka_unit_test(non_canonical_text_fails_in_debug_builds),
    cmocka_unit_test(data_writers_match_json_pack),
    cmocka_unit_test(written_entries_verify),
    cmocka_unit_test(appends_chain_from_the_last_entry),
    cmocka_unit_test(an_old_head_record_is_ignored),
    cmocka_unit_test(last_entry_written_otherwise),
    cmocka_unit_test(chain_goes_on_after_an_erased_last_entry),
    cmocka_unit_test(cut_prefix_verifies_from_the_anchor),
    cmocka_unit_test(forged_anchor_is_named),
    cmocka_unit_test(tampering_after_a_cut_is_named),
    cmocka_unit_test(kept_heads_across_a_cut),
    cmocka_unit_test(cut_of_everything_but_the_cut_entry),
    cmocka_unit_test(never_cut_trail_as_before),
};

AR_TEST_MAIN(tests, init_sodium, NULL)
