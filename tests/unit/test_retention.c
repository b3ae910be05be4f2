/* test_retention.c - bounded history: which actions become stubs and when, what a stub keeps,
 * deletion with the idempotency key, the deferred actions, guardrail counters across it, audit
 * bodies erased with the chain still sound, batches and resuming, the journal's size under a
 * steady load, and the daemon's thread. A real journal, real records with explicit times (no
 * sleeping, except the thread test waiting for its first run). */
#include "test_main.h"
#include "test_dirs.h"

#include <ftw.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "action.h"
#include "audit.h"
#include "counters.h"
#include "journal.h"
#include "retention.h"

#define T0 INT64_C(1700000000000) /* 2023-11-14: every time below is T0 plus or minus */
#define SEC INT64_C(1000)
#define HOUR (3600 * SEC)
#define DAY (24 * HOUR)

/* ---- helpers ---------------------------------------------------------------------------- */

typedef struct fixture {
    char *dir;
    journal *j;
    counters *c;
    unsigned seq;
} fixture;

static void open_fixture(fixture *f, bool with_counters)
{
    memset(f, 0, sizeof *f);
    f->dir = test_tmpdir("retention");
    journal_opts opts = {.dir = f->dir, .map_size_mb = 256};
    ar_error err = {0};
    if (journal_open(&opts, &f->j, &err) != AR_OK)
        fail_msg("journal_open: %s: %s", err.code, err.message);
    if (with_counters && counters_new(f->j, &f->c, &err) != AR_OK)
        fail_msg("counters_new: %s: %s", err.code, err.message);
}

static void close_fixture(fixture *f)
{
    journal_close(f->j);
    counters_free(f->c);
    test_remove_tree(f->dir);
    free(f->dir);
}

/* A ULID-shaped id created at ms: action_id_time_prefix, then 16 digits of a sequence number
 * (digits are Crockford base32 too), so ids sort by time, then by making order. */
static void make_id(fixture *f, int64_t ms, char out[ACTION_ID_LEN + 1])
{
    action_id_time_prefix(ms, out);
    snprintf(out + 10, ACTION_ID_LEN + 1 - 10, "%016u", ++f->seq);
}

static const char *id_of(const json_t *rec)
{
    return action_record_str(rec, "id");
}

/* A full record as the daemon writes one: created at created_ms, in state; finished_ms when
 * terminal (finished_ms < 0: not finished); key: the submitter's idempotency key or NULL. */
static json_t *new_action(fixture *f, action_state state, int64_t created_ms, int64_t finished_ms,
                          const char *key)
{
    char id[ACTION_ID_LEN + 1], auto_key[64];
    make_id(f, created_ms, id);
    snprintf(auto_key, sizeof auto_key, "aiorun-%s", id);
    int64_t updated = finished_ms >= 0 ? finished_ms : created_ms;
    json_t *rec = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:{s:i, s:s}, s:{s:s, s:s}, s:s, s:{s:s, s:s},"
        " s:i, s:[{s:s, s:i, s:s}], s:{s:s}, s:{s:f}, s:I, s:I, s:I}",
        "id", id, "connector", "shop", "action", "refund", "effect", "write",
        "state", action_state_name(state), "submitter", "agent",
        "idempotency_key", key ? key : auto_key, "key_given", key != NULL,
        "input", "amount", 5, "note", "a refund for order 1234, customer asked twice",
        "proposer", "kind", "agent", "model", "m-1",
        "digest", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        "decision", "verdict", "allow", "rule", "refunds_small",
        "attempts", 1,
        "history", "kind", "attempt", "attempt", 1, "outcome", "succeeded",
        "result", "refund_id", "re_1",
        "cost", "USD", 1.5,
        "created_ms", (json_int_t)created_ms, "updated_ms", (json_int_t)updated,
        "deadline_ms", (json_int_t)(created_ms + 300 * SEC));
    assert_non_null(rec);
    json_object_set_new(rec, "finished_ms", finished_ms >= 0 ? json_integer(finished_ms) : json_null());
    return rec;
}

static void idem_key(const json_t *rec, char *buf, size_t cap, size_t *len)
{
    *len = action_idem_key(buf, cap, action_record_str(rec, "connector"), action_record_str(rec, "submitter"),
                           action_record_str(rec, "idempotency_key"));
    assert_true(*len > 0);
}

/* Store records (and the idempotency keys the submitters gave) in one transaction. */
static void store_all(fixture *f, json_t *const *recs, size_t n)
{
    journal_batch *b = journal_batch_new();
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(action_batch_store(b, recs[i]), AR_OK);
        if (json_is_true(json_object_get(recs[i], "key_given"))) {
            char k[512];
            size_t klen;
            unsigned char value[ACTION_IDEM_VALUE_LEN] = {0};
            idem_key(recs[i], k, sizeof k, &klen);
            memcpy(value, id_of(recs[i]), ACTION_ID_LEN);
            journal_batch_put(b, JDB_IDEMPOTENCY, k, klen, value, sizeof value);
        }
    }
    ar_error err = {0};
    int rc = journal_commit(f->j, b, &err);
    if (rc != AR_OK)
        fail_msg("store: %d %s: %s", rc, err.code, err.message);
    journal_batch_free(b);
}

static void store1(fixture *f, json_t *rec)
{
    store_all(f, &rec, 1);
}

/* The stored record (new reference) or NULL when there is none. */
static json_t *load(fixture *f, const char *id)
{
    json_t *rec = NULL;
    int rc = action_load_by_id(f->j, id, &rec, NULL);
    if (rc == AR_E_NOTFOUND)
        return NULL;
    assert_int_equal(rc, AR_OK);
    return rec;
}

static bool present(fixture *f, journal_db db, const void *key, size_t klen)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    const void *v;
    size_t vl;
    int rc = journal_get(r, db, key, klen, &v, &vl);
    journal_read_end(r);
    assert_true(rc == AR_OK || rc == AR_E_NOTFOUND);
    return rc == AR_OK;
}

static bool key_present(fixture *f, const json_t *rec)
{
    char k[512];
    size_t klen;
    idem_key(rec, k, sizeof k, &klen);
    return present(f, JDB_IDEMPOTENCY, k, klen);
}

static size_t count_db(fixture *f, journal_db db)
{
    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
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

static retention_opts opts_days(double actions, double idem, double audit)
{
    /* audit entries kept for ever unless a test says otherwise */
    return (retention_opts){.actions_days = actions, .idempotency_days = idem, .audit_bodies_days = audit,
                            .audit_entries_days = 1e9};
}

static retention_stats run(fixture *f, const retention_opts *o, int64_t now_ms)
{
    retention_stats s;
    ar_error err = {0};
    int rc = retention_run(f->j, o, now_ms, &s, &err);
    if (rc != AR_OK)
        fail_msg("retention_run: %d %s: %s", rc, err.code, err.message);
    return s;
}

/* The stored record equals the one written (untouched). */
static void assert_untouched(fixture *f, const json_t *rec)
{
    json_t *got = load(f, id_of(rec));
    assert_non_null(got);
    if (!json_equal(got, (json_t *)rec)) {
        char *a = json_dumps(got, JSON_SORT_KEYS), *b = json_dumps(rec, JSON_SORT_KEYS);
        fail_msg("%s changed:\n got  %s\n want %s", id_of(rec), a, b);
    }
    json_decref(got);
}

/* The stored record is the stub of rec: exactly the kept fields, and "compacted": true. */
static void assert_stub_of(fixture *f, const json_t *rec)
{
    static const char *const kept[] = {"id", "connector", "action", "effect", "state", "submitter",
                                       "idempotency_key", "key_given", "digest", "created_ms",
                                       "updated_ms", "finished_ms", "cost"};
    json_t *want = json_object();
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
        if (json_object_get(rec, kept[i]))
            json_object_set(want, kept[i], json_object_get(rec, kept[i]));
    json_object_set_new(want, "compacted", json_true());
    json_t *got = load(f, id_of(rec));
    assert_non_null(got);
    if (!json_equal(got, want)) {
        char *a = json_dumps(got, JSON_SORT_KEYS), *b = json_dumps(want, JSON_SORT_KEYS);
        fail_msg("%s is not its stub:\n got  %s\n want %s", id_of(rec), a, b);
    }
    json_decref(got);
    json_decref(want);
}

/* ---- which actions, and when -------------------------------------------------------------- */

static void old_terminal_actions_become_stubs_then_go(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    retention_opts o = opts_days(30, 90, 365);
    json_t *r[] = {
        /* 0 */ new_action(&f, ACTION_PENDING_APPROVAL, T0 - 100 * DAY, -1, NULL),  /* never touched */
        /* 1 */ new_action(&f, ACTION_SUCCEEDED, T0 - 100 * DAY, T0 - 95 * DAY, "k-old"), /* deleted */
        /* 2 */ new_action(&f, ACTION_CANCELLED, T0 - 99 * DAY, T0 - 50 * DAY, NULL),  /* stub (front) */
        /* 3 */ new_action(&f, ACTION_SUCCEEDED, T0 - 40 * DAY, T0 - 35 * DAY, "k-a"), /* stub */
        /* 4 */ new_action(&f, ACTION_FAILED, T0 - 40 * DAY, T0 - 10 * DAY, "k-b"),    /* later */
        /* 5 */ new_action(&f, ACTION_READY, T0 - 39 * DAY, -1, NULL),                 /* later */
        /* 6 */ new_action(&f, ACTION_SUCCEEDED, T0 - 5 * DAY, T0 - 5 * DAY, "k-d"),   /* recent */
        /* 7 */ new_action(&f, ACTION_UNKNOWN_OUTCOME, T0 - 31 * DAY, T0 - 31 * DAY, NULL), /* kept for an operator */
    };
    size_t n = sizeof r / sizeof r[0];
    store_all(&f, r, n);
    /* a checkpoint of 3 goes with its body */
    char ck[ACTION_ID_LEN + 2];
    memcpy(ck, id_of(r[3]), ACTION_ID_LEN);
    ck[ACTION_ID_LEN] = 1;
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_CHECKPOINTS, ck, ACTION_ID_LEN + 1, "{}", 2);
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);

    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.stubbed, 2);
    assert_int_equal(s.deleted, 1);
    assert_int_equal(s.keys_deleted, 1);
    assert_int_equal(s.deferred, 3); /* 4 (finished recently), 5 (not terminal), 7 (unresolved) */
    assert_false(s.more);
    assert_untouched(&f, r[0]);
    assert_null(load(&f, id_of(r[1])));
    assert_false(key_present(&f, r[1]));
    assert_stub_of(&f, r[2]);
    assert_stub_of(&f, r[3]);
    assert_true(key_present(&f, r[3])); /* the key outlives the body */
    assert_false(present(&f, JDB_CHECKPOINTS, ck, ACTION_ID_LEN + 1));
    assert_untouched(&f, r[4]);
    assert_untouched(&f, r[5]);
    assert_untouched(&f, r[6]);
    assert_untouched(&f, r[7]); /* an operator resolves it with its whole history */
    /* the queue still holds the actions that are not terminal */
    assert_true(present(&f, JDB_QUEUE, id_of(r[0]), ACTION_ID_LEN));
    assert_true(present(&f, JDB_QUEUE, id_of(r[5]), ACTION_ID_LEN));

    /* Again at once: nothing more is due, and stubs are not rewritten. */
    s = run(&f, &o, T0);
    assert_int_equal(s.stubbed + s.deleted + s.deferred, 0);

    /* 5 finishes a day later; 25 days on, 4 (finished 35 days ago) is due: the deferred set
     * finds it although the stub walk went past it long ago. 5 is not due yet. */
    json_object_set_new(r[5], "state", json_string("SUCCEEDED"));
    json_object_set_new(r[5], "finished_ms", json_integer(T0 + DAY));
    json_object_set_new(r[5], "updated_ms", json_integer(T0 + DAY));
    store1(&f, r[5]);
    s = run(&f, &o, T0 + 25 * DAY);
    assert_int_equal(s.stubbed, 1);
    assert_int_equal(s.deleted, 0);
    assert_stub_of(&f, r[4]);
    assert_untouched(&f, r[5]);
    assert_untouched(&f, r[0]);
    s = run(&f, &o, T0 + 32 * DAY);
    assert_int_equal(s.stubbed, 2); /* 5, and 6 (finished 37 days ago) */
    assert_stub_of(&f, r[5]);
    assert_stub_of(&f, r[6]);

    /* 60 days on, 3 finished 95 days ago: it goes with its key; 2 (50 + 60 days) too. */
    s = run(&f, &o, T0 + 60 * DAY);
    assert_int_equal(s.deleted, 2); /* 2 and 3; 7 waits for an operator */
    assert_int_equal(s.keys_deleted, 1);
    assert_null(load(&f, id_of(r[2])));
    assert_null(load(&f, id_of(r[3])));
    assert_untouched(&f, r[7]);
    assert_false(key_present(&f, r[3]));
    assert_true(key_present(&f, r[4]));
    assert_untouched(&f, r[0]); /* still waiting, whatever its age */

    /* Much later everything settled is gone; the waiting one and the unresolved one stay. */
    s = run(&f, &o, T0 + 400 * DAY);
    assert_int_equal(s.deleted, 3);
    assert_int_equal(count_db(&f, JDB_ACTIONS), 2);
    assert_int_equal(count_db(&f, JDB_IDEMPOTENCY), 0);
    assert_untouched(&f, r[0]);
    for (size_t i = 0; i < n; i++)
        json_decref(r[i]);
    close_fixture(&f);
}

/* A key that now names another action (given again after the first one's deletion raced) is
 * not deleted with the old action. */
static void key_of_another_action_kept(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    json_t *old = new_action(&f, ACTION_SUCCEEDED, T0 - 100 * DAY, T0 - 100 * DAY, "same");
    json_t *fresh = new_action(&f, ACTION_SUCCEEDED, T0 - DAY, T0 - DAY, "same");
    store1(&f, old);
    store1(&f, fresh); /* its key record replaces the old one's */
    retention_opts o = opts_days(30, 90, 365);
    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.deleted, 1);
    assert_int_equal(s.keys_deleted, 0);
    assert_true(key_present(&f, fresh));
    json_decref(old);
    json_decref(fresh);
    close_fixture(&f);
}

static void stub_rendered_for_the_api(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    json_t *rec = new_action(&f, ACTION_SUCCEEDED, T0 - 40 * DAY, T0 - 40 * DAY, "k");
    store1(&f, rec);
    json_t *full = action_render(rec);
    assert_false(json_is_true(json_object_get(full, "compacted")));
    assert_true(json_is_false(json_object_get(full, "compacted")));
    retention_opts o = opts_days(30, 90, 365);
    run(&f, &o, T0);
    json_t *stub = load(&f, id_of(rec));
    json_t *view = action_render(stub);
    assert_true(json_is_true(json_object_get(view, "compacted")));
    assert_string_equal(json_string_value(json_object_get(view, "state")), "SUCCEEDED");
    assert_string_equal(json_string_value(json_object_get(view, "id")), id_of(rec));
    assert_string_equal(json_string_value(json_object_get(view, "idempotency_key")), "k");
    assert_true(json_is_null(json_object_get(view, "input")));
    assert_true(json_is_null(json_object_get(view, "result")));
    assert_true(json_is_null(json_object_get(view, "history")));
    assert_true(json_is_null(json_object_get(view, "decision")));
    assert_true(json_equal(json_object_get(view, "created_at"), json_object_get(full, "created_at")));
    assert_true(json_equal(json_object_get(view, "finished_at"), json_object_get(full, "finished_at")));
    assert_true(json_equal(json_object_get(view, "cost"), json_object_get(full, "cost")));
    json_decref(view);
    json_decref(full);
    json_decref(stub);
    json_decref(rec);
    close_fixture(&f);
}

static void bad_options_refused(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    retention_stats s;
    ar_error err = {0};
    retention_opts o = opts_days(30, 20, 365);
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_INVALID);
    assert_string_equal(err.code, "retention_invalid");
    o = opts_days(0, 20, 365);
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_INVALID);
    o = opts_days(1, 2, 0);
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_INVALID);
    o = opts_days(NAN, 2, 1);
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_INVALID);
    /* audit entries must outlive their bodies, and be kept some time */
    o = opts_days(30, 90, 365);
    o.audit_entries_days = 364;
    ar_error_clear(&err);
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_INVALID);
    assert_string_equal(err.code, "retention_invalid");
    assert_non_null(strstr(err.message, "audit_entries_days at least audit_bodies_days"));
    o.audit_entries_days = 0;
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_INVALID);
    o.audit_entries_days = NAN;
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_INVALID);
    o.audit_entries_days = 365; /* equal is enough */
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_OK);
    close_fixture(&f);
}

/* ---- counters ----------------------------------------------------------------------------- */

static counter_def parse_def(const char *name, const char *decl)
{
    json_t *d = json_loads(decl, 0, NULL);
    assert_non_null(d);
    counter_def def;
    ar_error err = {0};
    int rc = counters_def_parse(name, d, &def, &err);
    json_decref(d);
    if (rc != AR_OK)
        fail_msg("parse %s: %s: %s", decl, err.code, err.message);
    return def;
}

static double value_at(fixture *f, const counter_def *def, int64_t now_ms)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    double v = -1;
    ar_error err = {0};
    int rc = counters_read(r, def, now_ms, &v, NULL, &err);
    journal_read_end(r);
    if (rc != AR_OK)
        fail_msg("read %s: %s: %s", def->name, err.code, err.message);
    return v;
}

static bool entry_present(fixture *f, const char *prefix, const char *id)
{
    char k[64];
    int n = snprintf(k, sizeof k, "%s%s", prefix, id);
    return present(f, JDB_COUNTERS, k, (size_t)n);
}

static void counters_unchanged_by_stubs_entries_gone_with_records(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[] = {
        parse_def("refunds", "{\"connector\": \"shop\", \"action\": \"refund\", \"window\": \"7d\"}"),
        parse_def("refunded", "{\"connector\": \"shop\", \"sum\": \"amount\", \"window\": \"7d\"}"),
        parse_def("spend", "{\"connector\": \"shop\", \"cost\": \"USD\", \"window\": \"7d\"}"),
    };
    ar_error err = {0};
    if (counters_install(f.c, defs, 3, T0 - 4 * DAY, &err) != AR_OK)
        fail_msg("install: %s", err.message);
    /* counted (SUCCEEDED), taken off again (FAILED after it counted), never counted (DENIED) */
    json_t *ok = new_action(&f, ACTION_SUCCEEDED, T0 - 3 * DAY, T0 - 2 * DAY, NULL);
    json_t *failed = new_action(&f, ACTION_READY, T0 - 3 * DAY, -1, NULL);
    json_t *denied = new_action(&f, ACTION_DENIED, T0 - 3 * DAY, T0 - 3 * DAY, NULL);
    json_t *recs[] = {ok, failed, denied};
    store_all(&f, recs, 3);
    json_object_set_new(failed, "state", json_string("FAILED"));
    json_object_set_new(failed, "finished_ms", json_integer(T0 - 2 * DAY));
    json_object_set_new(failed, "updated_ms", json_integer(T0 - 2 * DAY));
    store1(&f, failed);
    double before[3];
    for (int i = 0; i < 3; i++)
        before[i] = value_at(&f, &defs[i], T0);
    assert_true(before[0] == 1);   /* ok */
    assert_true(before[1] == 5);   /* ok's amount */
    assert_true(before[2] == 4.5); /* what all three cost */
    assert_true(entry_present(&f, "a:", id_of(ok)));
    assert_true(entry_present(&f, "k:", id_of(ok)));

    /* Stubs after a day; keys and stubs for five. */
    retention_opts o = opts_days(1, 5, 365);
    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.stubbed, 3);
    for (int i = 0; i < 3; i++)
        assert_true(value_at(&f, &defs[i], T0) == before[i]);
    assert_true(entry_present(&f, "a:", id_of(ok)));
    assert_true(entry_present(&f, "k:", id_of(ok)));
    assert_true(entry_present(&f, "k:", id_of(failed)));

    /* Deleted: their entries go, and nothing is taken off what was counted. */
    s = run(&f, &o, T0 + 4 * DAY);
    assert_int_equal(s.deleted, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_false(entry_present(&f, "a:", id_of(recs[i])));
        assert_false(entry_present(&f, "k:", id_of(recs[i])));
    }
    for (int i = 0; i < 3; i++)
        assert_true(value_at(&f, &defs[i], T0) == before[i]);
    for (size_t i = 0; i < 3; i++)
        json_decref(recs[i]);
    close_fixture(&f);
}

/* ---- audit -------------------------------------------------------------------------------- */

typedef struct audit_times {
    const int64_t *times;
    size_t n;
    const char *action;
} audit_times;

static int append_at(journal_txn *txn, void *arg, ar_error *err)
{
    const audit_times *a = arg;
    for (size_t i = 0; i < a->n; i++) {
        int rc = audit_txn_append(txn, "completed", a->action, json_pack("{s:i, s:s}", "attempt", (int)i,
                                  "outcome", "succeeded"), a->times[i], NULL, err);
        if (rc != AR_OK)
            return rc;
    }
    return AR_OK;
}

static void append_entries(fixture *f, const int64_t *times, size_t n, const char *action)
{
    audit_times a = {times, n, action};
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, append_at, &a);
    ar_error err = {0};
    if (journal_commit(f->j, b, &err) != AR_OK)
        fail_msg("audit append: %s", err.message);
    journal_batch_free(b);
}

static void assert_chain_sound(fixture *f, uint64_t entries)
{
    audit_verify_result v;
    ar_error err = {0};
    assert_int_equal(audit_verify(f->j, 0, NULL, &v, &err), AR_OK);
    if (!v.ok)
        fail_msg("audit chain broken at %llu: %s", (unsigned long long)v.first_bad_seq, v.reason);
    assert_int_equal(v.entries, entries);
}

/* How many entries have an erased body; *first_kept: the seq of the first that has one. */
static size_t erased_count(fixture *f, uint64_t *first_kept)
{
    json_t *all = NULL;
    uint64_t next;
    assert_int_equal(audit_read_after(f->j, 0, 1000, &all, &next, NULL), AR_OK);
    size_t n = 0, i;
    json_t *e;
    *first_kept = 0;
    json_array_foreach(all, i, e) {
        if (json_is_true(json_object_get(e, "erased"))) {
            assert_true(json_is_null(json_object_get(e, "data")));
            n++;
        } else if (!*first_kept) {
            *first_kept = (uint64_t)json_integer_value(json_object_get(e, "seq"));
        }
    }
    json_decref(all);
    return n;
}

static void audit_bodies_erased_chain_still_verifies(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    char id[ACTION_ID_LEN + 1];
    make_id(&f, T0 - 400 * DAY, id);
    int64_t times[40];
    for (int i = 0; i < 30; i++)
        times[i] = T0 - 400 * DAY + i * DAY; /* 400 to 371 days old */
    for (int i = 30; i < 40; i++)
        times[i] = T0 - 10 * DAY + i;
    append_entries(&f, times, 40, id);
    assert_chain_sound(&f, 40);

    retention_opts o = opts_days(30, 90, 365);
    o.batch = 7; /* several transactions */
    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.audit_erased, 30);
    assert_true(s.transactions >= 5);
    uint64_t first_kept;
    assert_int_equal(erased_count(&f, &first_kept), 30);
    assert_int_equal(first_kept, 31);
    assert_chain_sound(&f, 40);
    /* one action's story still reads, erased bodies and all */
    json_t *story = NULL;
    assert_int_equal(audit_read_action(f.j, id, &story, NULL), AR_OK);
    assert_int_equal(json_array_size(story), 40);
    json_decref(story);

    /* The next run resumes after the last erased entry: it looks at the first one kept only. */
    s = run(&f, &o, T0);
    assert_int_equal(s.audit_erased, 0);
    assert_int_equal(s.looked_at, 0);

    /* More entries later; a year on, all of them. */
    append_entries(&f, times + 30, 5, NULL);
    s = run(&f, &o, T0 + 360 * DAY);
    assert_int_equal(s.audit_erased, 15);
    assert_int_equal(erased_count(&f, &first_kept), 45);
    assert_chain_sound(&f, 45);
    close_fixture(&f);
}

static void seq_key(uint64_t seq, unsigned char out[8])
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(seq >> (56 - 8 * i));
}

/* ---- audit entries cut -------------------------------------------------------------------- */

/* The seqs stored, in order, into seqs (at most cap); their count. */
static size_t audit_seqs(fixture *f, uint64_t *seqs, size_t cap, size_t *cuts)
{
    json_t *all = NULL;
    uint64_t next;
    assert_int_equal(audit_read_after(f->j, 0, 100000, &all, &next, NULL), AR_OK);
    size_t n = 0, i;
    json_t *e;
    *cuts = 0;
    json_array_foreach(all, i, e) {
        if (n < cap)
            seqs[n] = (uint64_t)json_integer_value(json_object_get(e, "seq"));
        n++;
        if (strcmp(json_string_value(json_object_get(e, "type")), "audit_cut") == 0)
            (*cuts)++;
    }
    json_decref(all);
    return n;
}

static audit_verify_result verified(fixture *f)
{
    audit_verify_result v;
    ar_error err = {0};
    assert_int_equal(audit_verify(f->j, 0, NULL, &v, &err), AR_OK);
    if (!v.ok)
        fail_msg("audit chain broken at %llu: %s", (unsigned long long)v.first_bad_seq, v.reason);
    return v;
}

static void audit_entries_cut_oldest_prefix_only(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    char id[ACTION_ID_LEN + 1];
    make_id(&f, T0 - 1200 * DAY, id);
    int64_t times[25];
    for (int i = 0; i < 20; i++)
        times[i] = T0 - 1200 * DAY + i * HOUR; /* 1..20: due */
    times[20] = T0 - DAY;                       /* 21: not due */
    for (int i = 21; i < 25; i++)
        times[i] = T0 - 1200 * DAY;             /* 22..25: due, but after 21 */
    append_entries(&f, times, 25, id);

    retention_opts o = opts_days(30, 90, 365);
    o.audit_entries_days = 1095;
    o.walk_limit = 10;
    o.batch = 7;
    /* At most 10 a run, 7 a transaction: 1..7 and 8..10, each cut recorded. */
    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.audit_deleted, 10);
    assert_true(s.more);
    uint64_t seqs[64];
    size_t cuts, n = audit_seqs(&f, seqs, 64, &cuts);
    assert_int_equal(cuts, 2);
    assert_int_equal(n, 15 + 2);
    assert_int_equal(seqs[0], 11);
    audit_verify_result v = verified(&f);
    assert_int_equal(v.first_seq, 11);
    assert_int_equal(v.cut_through, 10);
    assert_int_equal(v.cut_ms, T0);
    assert_int_equal(v.entries, 17);
    /* the index keys went with them: the action's story starts at 11 */
    json_t *story = NULL;
    assert_int_equal(audit_read_action(f.j, id, &story, NULL), AR_OK);
    assert_int_equal(json_array_size(story), 15);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(story, 0), "seq")), 11);
    json_decref(story);

    /* Resumed: 11..20; then 21 is not due and the walk stops there, though 22..25 are. */
    s = run(&f, &o, T0);
    assert_int_equal(s.audit_deleted, 10);
    s = run(&f, &o, T0);
    assert_int_equal(s.audit_deleted, 0);
    assert_false(s.more);
    n = audit_seqs(&f, seqs, 64, &cuts);
    assert_int_equal(cuts, 4);
    assert_int_equal(n, 5 + 4);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(seqs[i], 21 + i);
    v = verified(&f);
    assert_int_equal(v.first_seq, 21);
    assert_int_equal(v.cut_through, 20);

    /* Years on everything is due, the earlier cuts' entries too: one entry is left, the
     * last cut's. Bodies of cut entries were erased first (audit_bodies_days); an audit_cut
     * entry never loses its body. */
    o.walk_limit = 0;
    o.batch = 0;
    s = run(&f, &o, T0 + 1200 * DAY);
    assert_int_equal(s.audit_deleted, 9);
    n = audit_seqs(&f, seqs, 64, &cuts);
    assert_int_equal(n, 1);
    assert_int_equal(cuts, 1);
    assert_int_equal(seqs[0], 30);
    v = verified(&f);
    assert_int_equal(v.entries, 1);
    assert_int_equal(v.cut_through, 29);
    assert_int_equal(count_db(&f, JDB_AUDIT_INDEX), 0);
    close_fixture(&f);
}

/* Bodies are erased (step 3) on every entry but the audit_cut ones, which the cut needs. */
static void audit_cut_entries_keep_their_bodies(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    int64_t times[3] = {T0 - 40 * DAY, T0 - 40 * DAY, T0 - 5 * DAY};
    append_entries(&f, times, 3, NULL);
    retention_opts o = opts_days(1, 1, 10);
    o.audit_entries_days = 30;
    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.audit_deleted, 2);
    /* a year on, with entries kept long: bodies older than 10 days go, but the cut's */
    o.audit_entries_days = 1000;
    s = run(&f, &o, T0 + 365 * DAY);
    assert_int_equal(s.audit_erased, 1);
    assert_int_equal(s.audit_deleted, 0);
    json_t *all = NULL;
    uint64_t next;
    assert_int_equal(audit_read_after(f.j, 0, 10, &all, &next, NULL), AR_OK);
    assert_int_equal(json_array_size(all), 2);
    json_t *kept = json_array_get(all, 0), *cut = json_array_get(all, 1);
    assert_true(json_is_true(json_object_get(kept, "erased")));
    assert_string_equal(json_string_value(json_object_get(cut, "type")), "audit_cut");
    assert_false(json_is_true(json_object_get(cut, "erased")));
    json_decref(all);
    audit_verify_result v = verified(&f);
    assert_int_equal(v.cut_through, 2);
    close_fixture(&f);
}

/* A damaged entry in the part due stops the run with the cut's error: nothing is cut past
 * it, and it stays for verify to name. */
static void damaged_entry_is_not_cut(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    int64_t times[6];
    for (int i = 0; i < 6; i++)
        times[i] = T0 - 50 * DAY + i;
    append_entries(&f, times, 6, NULL);
    /* entry 2 altered */
    unsigned char key[8];
    seq_key(2, key);
    journal_read *r;
    assert_int_equal(journal_read_begin(f.j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(r, JDB_AUDIT, key, 8, &val, &vlen), AR_OK);
    json_t *e = json_loadb(val, vlen, 0, NULL);
    journal_read_end(r);
    /* (a chain, not a body: step 3 erases bodies before step 4 cuts) */
    json_object_set_new(e, "chain", json_string("00000000000000000000000000000000"
                                                "00000000000000000000000000000000"));
    char *text = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(e);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT, key, 8, text, strlen(text));
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);
    free(text);

    retention_opts o = opts_days(1, 1, 30);
    o.audit_entries_days = 30;
    retention_stats s;
    ar_error err = {0};
    assert_int_equal(retention_run(f.j, &o, T0, &s, &err), AR_E_FORMAT);
    assert_string_equal(err.code, "audit_cut_refused");
    assert_int_equal(s.audit_deleted, 0);
    audit_verify_result v;
    assert_int_equal(audit_verify(f.j, 0, NULL, &v, &err), AR_OK);
    assert_false(v.ok);
    assert_int_equal(v.first_bad_seq, 2);
    assert_int_equal(count_db(&f, JDB_AUDIT), 6);
    close_fixture(&f);
}

/* ---- batches and resuming ----------------------------------------------------------------- */

static void many_actions_in_batches_and_resumed(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    enum { N = 1234 };
    json_t **recs = calloc(N, sizeof *recs);
    assert_non_null(recs);
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof key, "key-%d", i);
        recs[i] = new_action(&f, ACTION_SUCCEEDED, T0 - 40 * DAY + i, T0 - 40 * DAY + i, i % 2 ? key : NULL);
    }
    store_all(&f, recs, N);

    /* One run does it all, at most 500 records a transaction. */
    retention_opts o = opts_days(30, 90, 365);
    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.stubbed, N);
    assert_true(s.transactions >= 3 + 1 + 1 + 1); /* the stub walk's three, and one per other walk */
    assert_false(s.more);
    for (int i = 0; i < N; i += 97)
        assert_stub_of(&f, recs[i]);

    /* At most 300 a run: four runs delete them, each going on where the last stopped. */
    o.walk_limit = 300;
    size_t deleted = 0, keys = 0, looked = 0;
    int runs = 0;
    do {
        s = run(&f, &o, T0 + 60 * DAY);
        deleted += s.deleted;
        keys += s.keys_deleted;
        looked += s.looked_at;
        runs++;
        assert_true(s.deleted <= 300);
        assert_true(runs <= 10);
    } while (s.more);
    assert_int_equal(deleted, N);
    assert_int_equal(keys, N / 2);
    assert_int_equal(looked, N); /* each one looked at once: no run started over */
    assert_int_equal(runs, 5);   /* 300 * 4, then the last 34 */
    assert_int_equal(count_db(&f, JDB_ACTIONS), 0);
    assert_int_equal(count_db(&f, JDB_IDEMPOTENCY), 0);
    for (int i = 0; i < N; i++)
        json_decref(recs[i]);
    free(recs);
    close_fixture(&f);
}

/* Asked to stop between transactions, a run ends early and says there is more. */
static int stop_after_two(void *arg)
{
    int *calls = arg;
    return ++*calls > 2;
}

static void run_stops_when_asked(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    enum { N = 50 };
    json_t *recs[N];
    for (int i = 0; i < N; i++)
        recs[i] = new_action(&f, ACTION_SUCCEEDED, T0 - 40 * DAY + i, T0 - 40 * DAY + i, NULL);
    store_all(&f, recs, N);
    int calls = 0;
    retention_opts o = opts_days(30, 90, 365);
    o.batch = 10;
    o.should_stop = stop_after_two;
    o.stop_arg = &calls;
    retention_stats s = run(&f, &o, T0);
    assert_int_equal(s.transactions, 2); /* the deferred walk's, then the front walk's */
    assert_true(s.more);
    assert_int_equal(s.stubbed, 0);
    o.should_stop = NULL;
    s = run(&f, &o, T0);
    assert_int_equal(s.stubbed, N);
    for (int i = 0; i < N; i++)
        json_decref(recs[i]);
    close_fixture(&f);
}

/* ---- a steady load -------------------------------------------------------------------------- */

static void journal_size_flat_under_steady_load(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def def = parse_def("refunds", "{\"connector\": \"shop\", \"window\": \"2d\"}");
    ar_error err = {0};
    if (counters_install(f.c, &def, 1, T0, &err) != AR_OK)
        fail_msg("install: %s", err.message);
    enum { DAYS = 48, PER_DAY = 300, WARM = 12, LINGER = 5 };
    retention_opts o = opts_days(2, 4, 365);
    json_t *lingering[LINGER] = {0}; /* each day a few wait a day before they finish */
    size_t warm_used = 0, max_records = 0;
    char note[600];
    memset(note, 'x', sizeof note - 1);
    note[sizeof note - 1] = '\0';
    for (int day = 0; day < DAYS; day++) {
        int64_t t = T0 + day * DAY;
        json_t *recs[PER_DAY + LINGER];
        size_t n = 0;
        for (int i = 0; i < LINGER; i++) {
            if (!lingering[i])
                continue;
            json_object_set_new(lingering[i], "state", json_string("SUCCEEDED"));
            json_object_set_new(lingering[i], "finished_ms", json_integer(t));
            json_object_set_new(lingering[i], "updated_ms", json_integer(t));
            recs[n++] = lingering[i];
            lingering[i] = NULL;
        }
        for (int i = 0; i < PER_DAY; i++) {
            char key[32];
            snprintf(key, sizeof key, "d%d-%d", day, i);
            bool linger = i < LINGER;
            json_t *rec = new_action(&f, linger ? ACTION_READY : ACTION_SUCCEEDED, t + i * SEC,
                                     linger ? -1 : t + i * SEC + 500, i % 3 ? key : NULL);
            json_object_set_new(json_object_get(rec, "input"), "note", json_string(note));
            if (linger)
                lingering[i] = json_incref(rec);
            recs[n++] = rec;
        }
        store_all(&f, recs, n);
        for (size_t i = 0; i < n; i++)
            json_decref(recs[i]);
        run(&f, &o, t + DAY - HOUR);
        size_t records = count_db(&f, JDB_ACTIONS);
        if (records > max_records)
            max_records = records;
        journal_stats js;
        journal_get_stats(f.j, &js);
        if (day == WARM)
            warm_used = js.map_used;
        if (day == DAYS - 1) {
            print_message("journal_size_flat: %d actions/day, %d days: %zu records at most; map used %zu bytes "
                          "after %d days, %zu after %d\n", PER_DAY, DAYS, max_records, warm_used, WARM,
                          js.map_used, DAYS);
            /* full records for 2 days, stubs for 2 more (and the day being written) */
            assert_true(max_records <= 6 * PER_DAY);
            /* flat: freed pages are used again. Growing on would be 4 times the warm-up figure. */
            assert_true(js.map_used <= warm_used + warm_used / 5);
        }
    }
    for (int i = 0; i < LINGER; i++)
        json_decref(lingering[i]);
    close_fixture(&f);
}

/* A day of a steady load as the daemon stores it: each action's record and its audit entries
 * (received, decided, dispatched, completed) in one transaction, at the action's own times. */
typedef struct day_load {
    json_t **recs;
    size_t n;
} day_load;

static int append_stories(journal_txn *txn, void *arg, ar_error *err)
{
    static const char *const types[] = {"received", "decided", "dispatched", "completed"};
    const day_load *d = arg;
    for (size_t i = 0; i < d->n; i++) {
        const json_t *rec = d->recs[i];
        int64_t t = (int64_t)json_integer_value(json_object_get(rec, "created_ms"));
        for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
            json_t *data = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i}", "connector", "shop", "action", "refund",
                                     "submitter", "agent", "idempotency_key",
                                     action_record_str(rec, "idempotency_key"), "digest",
                                     action_record_str(rec, "digest"), "rule", "refunds_small", "attempt", 1);
            int rc = audit_txn_append(txn, types[k], id_of(rec), data, t + (int64_t)k * 100, NULL, err);
            if (rc != AR_OK)
                return rc;
        }
    }
    return AR_OK;
}

enum { LOAD_DAYS = 24, LOAD_PER_DAY = 150, LOAD_WARM = 8, LOAD_CHUNK = 50 };

/* LOAD_DAYS days of LOAD_PER_DAY actions, compacting at the end of each day with the audit
 * entries kept audit_entries_days; the journal's used bytes after each day into used[]. */
static void steady_load(double audit_entries_days, size_t used[LOAD_DAYS], size_t *audit_kept)
{
    fixture f;
    open_fixture(&f, false);
    retention_opts o = opts_days(1, 2, 2);
    o.audit_entries_days = audit_entries_days;
    for (int day = 0; day < LOAD_DAYS; day++) {
        int64_t t = T0 + day * DAY;
        for (int c = 0; c < LOAD_PER_DAY / LOAD_CHUNK; c++) {
            json_t *recs[LOAD_CHUNK];
            journal_batch *b = journal_batch_new();
            for (int i = 0; i < LOAD_CHUNK; i++) {
                int64_t at = t + (c * LOAD_CHUNK + i) * 60 * SEC;
                char key[32];
                snprintf(key, sizeof key, "d%d-%d-%d", day, c, i);
                recs[i] = new_action(&f, ACTION_SUCCEEDED, at, at + 500, key);
                assert_int_equal(action_batch_store(b, recs[i]), AR_OK);
            }
            day_load d = {recs, LOAD_CHUNK};
            journal_batch_apply(b, append_stories, &d);
            ar_error err = {0};
            if (journal_commit(f.j, b, &err) != AR_OK)
                fail_msg("store: %s: %s", err.code, err.message);
            journal_batch_free(b);
            for (int i = 0; i < LOAD_CHUNK; i++)
                json_decref(recs[i]);
        }
        run(&f, &o, t + DAY - HOUR);
        journal_stats js;
        journal_get_stats(f.j, &js);
        used[day] = js.map_used;
    }
    *audit_kept = count_db(&f, JDB_AUDIT);
    verified(&f);
    close_fixture(&f);
}

/* With the audit cut the journal's size stays flat under a steady load; without it (the
 * control, entries kept for ever) it keeps growing by the erased entries. */
static void journal_size_flat_with_the_audit_cut(void **state)
{
    (void)state;
    size_t cut[LOAD_DAYS], kept[LOAD_DAYS], cut_entries, kept_entries;
    steady_load(3, cut, &cut_entries);
    steady_load(1e9, kept, &kept_entries);
    print_message("journal_size_flat_with_the_audit_cut: %d actions/day (4 audit entries each), map used "
                  "bytes per day, with the cut / without:\n", LOAD_PER_DAY);
    for (int day = 0; day < LOAD_DAYS; day++)
        print_message("  day %2d: %8zu / %8zu\n", day, cut[day], kept[day]);
    print_message("  audit entries at the end: %zu / %zu\n", cut_entries, kept_entries);
    size_t warm = cut[LOAD_WARM], max_after = 0;
    for (int day = LOAD_WARM; day < LOAD_DAYS; day++)
        if (cut[day] > max_after)
            max_after = cut[day];
    /* flat: never more than 15 % above the level at the end of the warm-up */
    assert_true(max_after <= warm + warm * 15 / 100);
    /* at most 3 days and a bit of entries, and the cuts' own */
    assert_true(cut_entries <= 4 * 4 * LOAD_PER_DAY);
    /* the control grows: every erased entry stays */
    assert_int_equal(kept_entries, (size_t)LOAD_DAYS * LOAD_PER_DAY * 4);
    assert_true(kept[LOAD_DAYS - 1] > kept[LOAD_WARM] + kept[LOAD_WARM] / 2);
}

/* ---- the daemon's thread ------------------------------------------------------------------ */

static void worker_runs_at_once_and_stops(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, false);
    int64_t now = ar_now_ms();
    json_t *rec = new_action(&f, ACTION_SUCCEEDED, now - 40 * DAY, now - 40 * DAY, NULL);
    store1(&f, rec);
    retention_opts o = opts_days(30, 90, 365);
    retention_worker *w = NULL;
    ar_error err = {0};
    assert_int_equal(retention_worker_start(f.j, &o, 3600, &w, &err), AR_OK);
    json_t *got = NULL;
    for (int i = 0; i < 500; i++) { /* its first run is at once: wait for it (up to 10 s) */
        got = load(&f, id_of(rec));
        if (json_is_true(json_object_get(got, "compacted")))
            break;
        json_decref(got);
        got = NULL;
        usleep(20000);
    }
    assert_non_null(got);
    json_decref(got);
    retention_worker_stop(w); /* waits an hour unless the stop wakes it */
    retention_worker_stop(NULL);
    json_decref(rec);
    close_fixture(&f);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(old_terminal_actions_become_stubs_then_go),
    cmocka_unit_test(key_of_another_action_kept),
    cmocka_unit_test(stub_rendered_for_the_api),
    cmocka_unit_test(bad_options_refused),
    cmocka_unit_test(counters_unchanged_by_stubs_entries_gone_with_records),
    cmocka_unit_test(audit_bodies_erased_chain_still_verifies),
    cmocka_unit_test(audit_entries_cut_oldest_prefix_only),
    cmocka_unit_test(audit_cut_entries_keep_their_bodies),
    cmocka_unit_test(damaged_entry_is_not_cut),
    cmocka_unit_test(many_actions_in_batches_and_resumed),
    cmocka_unit_test(run_stops_when_asked),
    cmocka_unit_test(journal_size_flat_under_steady_load),
    cmocka_unit_test(journal_size_flat_with_the_audit_cut),
    cmocka_unit_test(worker_runs_at_once_and_stops),
};

AR_TEST_MAIN(tests, NULL, NULL)
