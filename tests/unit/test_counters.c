/* test_counters.c - guardrail counters: definitions, what counts and when, sums, windows, the
 * backfill at install against a recomputation, reinstall, the decision check, deletion, and the
 * hook's fast path. Every test uses a real journal and real action records, with explicit times
 * (no sleeping). */
#include "test_main.h"
#include "test_dirs.h"

#include <ftw.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "action.h"
#include "counters.h"
#include "journal.h"

#define T0 INT64_C(1700000000000) /* 2023-11-14: every time below is T0 plus or minus */
#define SEC INT64_C(1000)
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
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
    f->dir = test_tmpdir("counters");
    journal_opts opts = { .dir = f->dir };
    ar_error err;
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

/* A ULID-shaped id created at ms: the 10-character time prefix of action_id_new, then 16
 * digits of a sequence number (digits are Crockford base32 too). */
static void make_id(fixture *f, int64_t ms, char out[ACTION_ID_LEN + 1])
{
    static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    for (int i = 0; i < 10; i++)
        out[i] = crockford[((uint64_t)ms >> (45 - 5 * i)) & 31];
    snprintf(out + 10, ACTION_ID_LEN + 1 - 10, "%016u", ++f->seq);
}

/* A new action record (the fields counters read, plus a few more). */
static json_t *new_action(fixture *f, const char *connector, const char *action, const char *input,
                          action_state state, int64_t created_ms)
{
    char id[ACTION_ID_LEN + 1];
    make_id(f, created_ms, id);
    json_error_t jerr;
    json_t *in = json_loads(input, 0, &jerr);
    if (!in)
        fail_msg("bad test input %s: %s", input, jerr.text);
    json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:I, s:i}", "id", id, "connector", connector,
                            "action", action, "state", action_state_name(state), "input", in,
                            "created_ms", (json_int_t)created_ms, "updated_ms", (json_int_t)created_ms,
                            "attempts", 0);
    assert_non_null(rec);
    return rec;
}

static const char *id_of(const json_t *rec)
{
    return action_record_str(rec, "id");
}

static void set_state(json_t *rec, action_state s)
{
    json_object_set_new(rec, "state", json_string(action_state_name(s)));
}

/* Record a human decision as approvals.c does. */
static void decide(json_t *rec, const char *decision, int64_t decided_ms)
{
    json_t *ap = json_object_get(rec, "approval");
    if (!ap) {
        ap = json_object();
        json_object_set_new(rec, "approval", ap);
    }
    json_object_set_new(ap, "decision", json_string(decision));
    json_object_set_new(ap, "by", json_string("ops"));
    json_object_set_new(ap, "decided_ms", json_integer(decided_ms));
}

static void store(fixture *f, const json_t *rec)
{
    journal_batch *b = journal_batch_new();
    assert_int_equal(action_batch_store(b, rec), AR_OK);
    ar_error err;
    int rc = journal_commit(f->j, b, &err);
    if (rc != AR_OK)
        fail_msg("storing %s: %d %s: %s", id_of(rec), rc, err.code, err.message);
    journal_batch_free(b);
}

static void store_state(fixture *f, json_t *rec, action_state s)
{
    set_state(rec, s);
    store(f, rec);
}

static counter_def parse_def(const char *name, const char *decl)
{
    json_t *d = json_loads(decl, 0, NULL);
    assert_non_null(d);
    counter_def def;
    ar_error err;
    int rc = counters_def_parse(name, d, &def, &err);
    json_decref(d);
    if (rc != AR_OK)
        fail_msg("parse %s: %s: %s", decl, err.code, err.message);
    return def;
}

static void install(fixture *f, const counter_def *defs, size_t n, int64_t now_ms)
{
    ar_error err;
    int rc = counters_install(f->c, defs, n, now_ms, &err);
    if (rc != AR_OK)
        fail_msg("install: %d %s: %s", rc, err.code, err.message);
}

static int read_counter(fixture *f, const counter_def *def, int64_t now_ms, double *value,
                        uint64_t *version, ar_error *err)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    int rc = counters_read(r, def, now_ms, value, version, err);
    journal_read_end(r);
    return rc;
}

static double value_at(fixture *f, const counter_def *def, int64_t now_ms)
{
    double v = -1;
    ar_error err;
    int rc = read_counter(f, def, now_ms, &v, NULL, &err);
    if (rc != AR_OK)
        fail_msg("read %s: %d %s: %s", def->name, rc, err.code, err.message);
    return v;
}

static uint64_t version_of(fixture *f, const counter_def *def)
{
    uint64_t version = 0;
    double v;
    assert_int_equal(read_counter(f, def, T0, &v, &version, NULL), AR_OK);
    return version;
}

static double recomputed(fixture *f, const counter_def *def, int64_t now_ms)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    double v = -1;
    ar_error err;
    int rc = counters_recompute(r, def, now_ms, &v, &err);
    journal_read_end(r);
    if (rc != AR_OK)
        fail_msg("recompute %s: %s: %s", def->name, err.code, err.message);
    return v;
}

static void assert_close(double got, double want)
{
    if (fabs(got - want) > 1e-6)
        fail_msg("got %.9g, want %.9g", got, want);
}

/* The raw value of key in JDB_COUNTERS as a string ("" when absent: *found 0). */
static json_t *counters_json(fixture *f, const char *prefix, const char *name, bool *found)
{
    char key[128];
    snprintf(key, sizeof key, "%s%s", prefix, name);
    journal_read *r;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    int rc = journal_get(r, JDB_COUNTERS, key, strlen(key), &val, &vlen);
    json_t *out = NULL;
    *found = rc == AR_OK;
    if (rc == AR_OK)
        out = json_loadb(val, vlen, 0, NULL);
    else
        assert_int_equal(rc, AR_E_NOTFOUND);
    journal_read_end(r);
    return out;
}

static bool counters_has(fixture *f, const char *prefix, const char *name)
{
    bool found;
    json_decref(counters_json(f, prefix, name, &found));
    return found;
}

static size_t counters_db_size(fixture *f)
{
    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    assert_int_equal(journal_cursor_open(r, JDB_COUNTERS, &c), AR_OK);
    size_t n = 0;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, NULL, NULL, NULL, NULL) == AR_OK; op = JOURNAL_NEXT)
        n++;
    journal_cursor_close(c);
    journal_read_end(r);
    return n;
}

/* ---- definitions ------------------------------------------------------------------------ */

static void expect_invalid(const char *name, const char *decl, const char *in_message)
{
    json_t *d = json_loads(decl, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    assert_non_null(d);
    counter_def def;
    ar_error err;
    int rc = counters_def_parse(name, d, &def, &err);
    json_decref(d);
    if (rc != AR_E_INVALID)
        fail_msg("%s %s: status %d, expected AR_E_INVALID", name, decl, rc);
    assert_string_equal(err.code, "counter_invalid");
    if (!strstr(err.message, in_message))
        fail_msg("%s %s: message \"%s\" lacks \"%s\"", name, decl, err.message, in_message);
}

static int64_t window_of(const char *window_json)
{
    char decl[128];
    snprintf(decl, sizeof decl, "{\"connector\": \"shop\", \"window\": %s}", window_json);
    return parse_def("w", decl).window_ms;
}

static void definitions_parse_and_refuse(void **state)
{
    (void)state;
    counter_def d = parse_def("refunded", "{\"connector\": \"shop\", \"action\": \"refund\", "
                                          "\"sum\": \"amount\", \"window\": \"24h\"}");
    assert_string_equal(d.name, "refunded");
    assert_string_equal(d.connector, "shop");
    assert_string_equal(d.action, "refund");
    assert_string_equal(d.sum, "amount");
    assert_int_equal(d.window_ms, DAY);
    assert_int_equal(strlen(d.id), COUNTERS_ID_LEN);
    assert_int_equal(strspn(d.id, "0123456789abcdef"), COUNTERS_ID_LEN);

    counter_def any = parse_def("n", "{\"connector\": \"shop\", \"window\": 60}");
    assert_string_equal(any.action, "*");
    assert_string_equal(any.sum, "");

    assert_int_equal(window_of("\"90s\""), 90 * SEC);
    assert_int_equal(window_of("\"30m\""), 30 * MIN);
    assert_int_equal(window_of("\"24h\""), DAY);
    assert_int_equal(window_of("\"7d\""), 7 * DAY);
    assert_int_equal(window_of("3600"), HOUR);
    assert_int_equal(window_of("\"45\""), 45 * SEC);
    assert_int_equal(window_of("1.5"), 1500);
    assert_int_equal(window_of("\"1.1h\""), 3960 * SEC);
    assert_int_equal(window_of("\"366d\""), 366 * DAY);
    assert_int_equal(window_of("\"1s\""), SEC);

    /* Bad declarations, each with a message that names the counter and the fix. */
    expect_invalid("c1", "{\"window\": \"1h\"}", "needs a connector");
    expect_invalid("c2", "{\"connector\": 3, \"window\": \"1h\"}", "connector must be");
    expect_invalid("c3", "{\"connector\": \"\", \"window\": \"1h\"}", "connector must be");
    expect_invalid("c4", "{\"connector\": \"shop\"}", "needs a window");
    expect_invalid("c5", "{\"connector\": \"shop\", \"window\": \"1h\", \"windw\": 1}", "unknown field \"windw\"");
    expect_invalid("c6", "{\"connector\": \"shop\", \"window\": \"1h\", \"sum\": \"\"}", "sum must be");
    expect_invalid("c7", "{\"connector\": \"shop\", \"window\": \"1h\", \"action\": 1}", "action must be");
    expect_invalid("c8", "[1, 2]", "must be a table");
    expect_invalid("c9", "{\"connector\": \"shop\", \"window\": \"1h\", \"sum\": \"price.\"}", "dotted path");
    expect_invalid("c9", "{\"connector\": \"shop\", \"window\": \"1h\", \"sum\": \".price\"}", "dotted path");
    expect_invalid("c9", "{\"connector\": \"shop\", \"window\": \"1h\", \"sum\": \"a..b\"}", "dotted path");
    static const char *const bad_windows[] = {
        "\"0s\"", "\"0.9s\"", "0.5", "\"367d\"", "\"1d2\"", "\"h\"", "\"-5s\"", "\" 5s\"", "\"5x\"",
        "\"1e3s\"", "\"0x10\"", "\"inf\"", "\"5.\"", "\".5m\"", "true", "null", "-60", "\"\"",
    };
    for (size_t i = 0; i < sizeof bad_windows / sizeof bad_windows[0]; i++) {
        char decl[128];
        snprintf(decl, sizeof decl, "{\"connector\": \"shop\", \"window\": %s}", bad_windows[i]);
        expect_invalid("win", decl, "counter \"win\": window must be");
    }
    expect_invalid("a-b", "{\"connector\": \"shop\", \"window\": \"1h\"}", "counter name \"a-b\"");
    expect_invalid("", "{\"connector\": \"shop\", \"window\": \"1h\"}", "counter name");
    char long_name[80];
    memset(long_name, 'x', 64);
    long_name[64] = '\0';
    expect_invalid(long_name, "{\"connector\": \"shop\", \"window\": \"1h\"}", "counter name");
    long_name[63] = '\0';
    parse_def(long_name, "{\"connector\": \"shop\", \"window\": \"1h\"}");
    expect_invalid("nul", "{\"connector\": \"sh\\u0000op\", \"window\": \"1h\"}", "connector must be");

    /* The id: the same counter under another name or spelling has the same id; a change of
     * connector, action, sum or window makes another. */
    const char *base = "{\"connector\": \"shop\", \"action\": \"refund\", \"sum\": \"amount\", \"window\": \"24h\"}";
    counter_def a = parse_def("first", base), b = parse_def("second", base);
    assert_string_equal(a.id, b.id);
    assert_string_equal(a.id, parse_def("x", "{\"window\": \"1d\", \"sum\": \"amount\", \"action\": "
                                              "\"refund\", \"connector\": \"shop\"}").id);
    assert_string_equal(a.id, parse_def("x", "{\"connector\": \"shop\", \"action\": \"refund\", "
                                              "\"sum\": \"amount\", \"window\": 86400}").id);
    static const char *const others[] = {
        "{\"connector\": \"shop\", \"action\": \"refund\", \"sum\": \"amount\", \"window\": \"23h\"}",
        "{\"connector\": \"shop\", \"action\": \"refund\", \"sum\": \"total\", \"window\": \"24h\"}",
        "{\"connector\": \"shop\", \"action\": \"refund\", \"window\": \"24h\"}",
        "{\"connector\": \"shop\", \"action\": \"charge\", \"sum\": \"amount\", \"window\": \"24h\"}",
        "{\"connector\": \"shop\", \"sum\": \"amount\", \"window\": \"24h\"}",
        "{\"connector\": \"store\", \"action\": \"refund\", \"sum\": \"amount\", \"window\": \"24h\"}",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        assert_string_not_equal(a.id, parse_def("x", others[i]).id);
    /* "*" spelled out is the default. */
    assert_string_equal(parse_def("x", "{\"connector\": \"shop\", \"window\": 60}").id,
                        parse_def("y", "{\"connector\": \"shop\", \"action\": \"*\", \"window\": 60}").id);

    /* As JSON. */
    json_t *js = counters_def_json(&a);
    assert_non_null(js);
    assert_string_equal(json_string_value(json_object_get(js, "name")), "first");
    assert_string_equal(json_string_value(json_object_get(js, "connector")), "shop");
    assert_string_equal(json_string_value(json_object_get(js, "action")), "refund");
    assert_string_equal(json_string_value(json_object_get(js, "sum")), "amount");
    assert_true(json_number_value(json_object_get(js, "window")) == 86400);
    assert_string_equal(json_string_value(json_object_get(js, "id")), a.id);
    json_decref(js);
    js = counters_def_json(&any);
    assert_true(json_is_null(json_object_get(js, "sum")));
    json_decref(js);
}

/* ---- what counts ------------------------------------------------------------------------ */

static void counted_and_not_counted_states(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def n = parse_def("n", "{\"connector\": \"shop\", \"window\": \"1h\"}");
    install(&f, &n, 1, T0);
    assert_close(value_at(&f, &n, T0), 0);
    uint64_t v0 = version_of(&f, &n);
    for (int s = 0; s < ACTION_STATE_COUNT; s++) {
        json_t *rec = new_action(&f, "shop", "refund", "{}", (action_state)s, T0 - 10 * MIN);
        store(&f, rec);
        bool found;
        json_t *entry = counters_json(&f, "a:", id_of(rec), &found);
        bool counts = s == ACTION_APPROVED || s == ACTION_READY || s == ACTION_DISPATCHED ||
                      s == ACTION_RETRY_WAIT || s == ACTION_SUCCEEDED || s == ACTION_UNKNOWN_OUTCOME;
        if (found != counts)
            fail_msg("state %s: entry %s", action_state_name((action_state)s), found ? "present" : "absent");
        if (counts) {
            json_t *el = json_object_get(entry, n.id);
            assert_int_equal(json_array_size(el), 2);
            assert_true(json_number_value(json_array_get(el, 1)) == 1);
        }
        json_decref(entry);
        json_decref(rec);
    }
    assert_close(value_at(&f, &n, T0), 6);
    assert_close(recomputed(&f, &n, T0), 6);
    assert_true(version_of(&f, &n) == v0 + 6);

    /* Other connectors do not count, and get no entry. */
    json_t *other = new_action(&f, "mail", "refund", "{}", ACTION_READY, T0 - MIN);
    store(&f, other);
    assert_false(counters_has(&f, "a:", id_of(other)));
    json_decref(other);
    assert_close(value_at(&f, &n, T0), 6);
    assert_true(version_of(&f, &n) == v0 + 6);
    close_fixture(&f);
}

/* Store through action_txn_store, in an apply callback (the hook runs from journal_txn_put). */
static int txn_store(journal_txn *txn, void *arg, ar_error *err)
{
    (void)err;
    return action_txn_store(txn, arg);
}

static void transitions_keep_or_take_off(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def sum = parse_def("spent", "{\"connector\": \"shop\", \"sum\": \"amount\", \"window\": \"1h\"}");
    install(&f, &sum, 1, T0);
    int64_t t = T0 - 5 * MIN;

    /* RECEIVED -> READY -> DISPATCHED -> RETRY_WAIT -> DISPATCHED -> SUCCEEDED: counted once. */
    json_t *a = new_action(&f, "shop", "refund", "{\"amount\": 30}", ACTION_RECEIVED, t);
    store(&f, a);
    assert_close(value_at(&f, &sum, T0), 0);
    uint64_t v = version_of(&f, &sum);
    store_state(&f, a, ACTION_READY);
    assert_close(value_at(&f, &sum, T0), 30);
    assert_true(version_of(&f, &sum) == v + 1);
    static const action_state path[] = {ACTION_DISPATCHED, ACTION_RETRY_WAIT, ACTION_DISPATCHED, ACTION_SUCCEEDED};
    for (size_t i = 0; i < 4; i++) {
        store_state(&f, a, path[i]);
        assert_close(value_at(&f, &sum, T0), 30);
        assert_true(version_of(&f, &sum) == v + 1); /* nothing changed: no new version */
    }

    /* READY -> FAILED and READY -> CANCELLED take it off again, exactly. */
    json_t *b = new_action(&f, "shop", "refund", "{\"amount\": 12.5}", ACTION_READY, t);
    store(&f, b);
    assert_close(value_at(&f, &sum, T0), 42.5);
    store_state(&f, b, ACTION_DISPATCHED);
    store_state(&f, b, ACTION_FAILED);
    assert_close(value_at(&f, &sum, T0), 30);
    assert_true(version_of(&f, &sum) == v + 3);
    assert_false(counters_has(&f, "a:", id_of(b)));
    store_state(&f, b, ACTION_FAILED); /* again: nothing to take off */
    assert_close(value_at(&f, &sum, T0), 30);
    assert_true(version_of(&f, &sum) == v + 3);

    json_t *c = new_action(&f, "shop", "refund", "{\"amount\": 7}", ACTION_READY, t);
    journal_batch *batch = journal_batch_new();
    journal_batch_apply(batch, txn_store, c);
    assert_int_equal(journal_commit(f.j, batch, NULL), AR_OK);
    journal_batch_free(batch);
    assert_close(value_at(&f, &sum, T0), 37);
    set_state(c, ACTION_CANCELLED);
    batch = journal_batch_new();
    journal_batch_apply(batch, txn_store, c);
    assert_int_equal(journal_commit(f.j, batch, NULL), AR_OK);
    journal_batch_free(batch);
    assert_close(value_at(&f, &sum, T0), 30);

    /* UNKNOWN_OUTCOME may have happened: it stays. A counted action that fails and is made READY
     * again by an operator counts again. */
    store_state(&f, a, ACTION_UNKNOWN_OUTCOME);
    store_state(&f, b, ACTION_READY);
    assert_close(value_at(&f, &sum, T0), 42.5);
    assert_close(recomputed(&f, &sum, T0), 42.5);

    /* A batch that is rolled back changes no counter. */
    json_t *d = new_action(&f, "shop", "refund", "{\"amount\": 1000}", ACTION_READY, t);
    batch = journal_batch_new();
    assert_int_equal(action_batch_store(batch, d), AR_OK);
    journal_batch_put_unless_exists(batch, JDB_ACTIONS, id_of(a), strlen(id_of(a)), "{}", 2);
    assert_int_equal(journal_commit(f.j, batch, NULL), AR_E_EXISTS);
    journal_batch_free(batch);
    assert_close(value_at(&f, &sum, T0), 42.5);
    assert_false(counters_has(&f, "a:", id_of(d)));

    json_decref(a);
    json_decref(b);
    json_decref(c);
    json_decref(d);
    close_fixture(&f);
}

static void approval_counts_from_its_decision(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def sum = parse_def("spent", "{\"connector\": \"shop\", \"sum\": \"amount\", \"window\": \"1h\"}");
    install(&f, &sum, 1, T0);

    /* Created two hours ago, parked for a human: not counted. */
    json_t *a = new_action(&f, "shop", "refund", "{\"amount\": 50}", ACTION_PENDING_APPROVAL, T0 - 2 * HOUR);
    json_object_set_new(a, "approval", json_pack("{s:I}", "requested_ms", (json_int_t)(T0 - 2 * HOUR)));
    store(&f, a);
    assert_close(value_at(&f, &sum, T0), 0);
    /* Approved ten minutes ago: counted at the approval, inside the window although its
     * creation is not. */
    decide(a, "approve", T0 - 10 * MIN);
    store_state(&f, a, ACTION_APPROVED);
    assert_close(value_at(&f, &sum, T0), 50);
    assert_close(recomputed(&f, &sum, T0), 50);
    assert_close(value_at(&f, &sum, T0 + 45 * MIN), 50);
    assert_close(value_at(&f, &sum, T0 + 55 * MIN), 0); /* an hour after the approval */
    store_state(&f, a, ACTION_READY);
    store_state(&f, a, ACTION_SUCCEEDED);
    assert_close(value_at(&f, &sum, T0), 50);

    /* A rejection never counts; neither does an approval that expired. */
    json_t *b = new_action(&f, "shop", "refund", "{\"amount\": 5}", ACTION_PENDING_APPROVAL, T0 - 30 * MIN);
    store(&f, b);
    decide(b, "reject", T0 - 20 * MIN);
    store_state(&f, b, ACTION_REJECTED);
    json_t *c = new_action(&f, "shop", "refund", "{\"amount\": 6}", ACTION_PENDING_APPROVAL, T0 - 30 * MIN);
    store(&f, c);
    decide(c, "expire", T0 - 1 * MIN);
    store_state(&f, c, ACTION_EXPIRED);
    assert_close(value_at(&f, &sum, T0), 50);

    /* Without an approval decision, the creation time is the time. */
    json_t *d = new_action(&f, "shop", "refund", "{\"amount\": 4}", ACTION_READY, T0 - 2 * HOUR);
    store(&f, d);
    assert_close(value_at(&f, &sum, T0), 50);
    assert_close(value_at(&f, &sum, T0 - 90 * MIN), 4);
    assert_close(recomputed(&f, &sum, T0 - 90 * MIN), 4);
    json_decref(a);
    json_decref(b);
    json_decref(c);
    json_decref(d);
    close_fixture(&f);
}

static void sum_paths_and_action_filters(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[4] = {
        parse_def("price", "{\"connector\": \"shop\", \"action\": \"refund\", \"sum\": \"price.value\", \"window\": \"1h\"}"),
        parse_def("amount", "{\"connector\": \"shop\", \"action\": \"*\", \"sum\": \"amount\", \"window\": \"1h\"}"),
        parse_def("charges", "{\"connector\": \"shop\", \"action\": \"charge\", \"window\": \"1h\"}"),
        parse_def("all", "{\"connector\": \"shop\", \"window\": \"1h\"}"),
    };
    install(&f, defs, 4, T0);
    static const struct {
        const char *action, *input;
    } actions[] = {
        {"refund", "{\"price\": {\"value\": 12.5}, \"amount\": 3}"},
        {"refund", "{\"price\": {\"value\": \"12\"}}"},          /* not a number: 0 */
        {"refund", "{\"price\": 7, \"amount\": -1.5}"},          /* no .value: 0 */
        {"refund", "{\"price\": {\"value\": 2, \"x\": 1}}"},
        {"refund", "{\"price\": {\"valu\": 2}, \"amount\": true}"},
        {"charge", "{\"price\": {\"value\": 100}, \"amount\": 10}"}, /* not a refund */
        {"charge", "{\"amount\": [1]}"},
    };
    for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++) {
        json_t *rec = new_action(&f, "shop", actions[i].action, actions[i].input, ACTION_READY, T0 - MIN);
        store(&f, rec);
        json_decref(rec);
    }
    const double want[4] = {14.5, 11.5, 2, 7};
    for (int i = 0; i < 4; i++) {
        assert_close(value_at(&f, &defs[i], T0), want[i]);
        assert_close(recomputed(&f, &defs[i], T0), want[i]);
    }
    close_fixture(&f);
}

/* ---- windows ---------------------------------------------------------------------------- */

static void window_expiry_and_the_ring(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def n = parse_def("n", "{\"connector\": \"shop\", \"window\": \"1h\"}");
    install(&f, &n, 1, T0);
    const int64_t times[] = {T0, T0 + 20 * MIN, T0 + 50 * MIN};
    for (int i = 0; i < 3; i++) {
        json_t *rec = new_action(&f, "shop", "refund", "{}", ACTION_READY, times[i]);
        store(&f, rec);
        json_decref(rec);
    }
    assert_close(value_at(&f, &n, T0 - MIN), 0);           /* before all of them */
    assert_close(value_at(&f, &n, T0 + 10 * MIN), 1);      /* later ones are in the future */
    assert_close(value_at(&f, &n, T0 + 50 * MIN), 3);
    assert_close(value_at(&f, &n, T0 + 70 * MIN), 2);      /* the first dropped out */
    assert_close(value_at(&f, &n, T0 + 100 * MIN), 1);
    assert_close(value_at(&f, &n, T0 + 130 * MIN), 0);
    for (int64_t now = T0; now < T0 + 3 * HOUR; now += 7 * MIN)
        assert_close(value_at(&f, &n, now), recomputed(&f, &n, now));

    /* Much later, the ring's slots are reused; old buckets never come back. */
    json_t *late = new_action(&f, "shop", "refund", "{}", ACTION_READY, T0 + 5 * HOUR);
    store(&f, late);
    assert_close(value_at(&f, &n, T0 + 5 * HOUR), 1);

    /* A bucket whose slot a newer bucket took is gone for good: an action timed there
     * is skipped (its entry holds nothing), and taking it off takes nothing off. The width of
     * a 1h ring is ceil(3600000 / 63) ms, so 64 widths earlier is the same slot. */
    const int64_t width = (HOUR + 62) / 63;
    json_t *old = new_action(&f, "shop", "refund", "{}", ACTION_READY, T0 + 5 * HOUR - 64 * width);
    store(&f, old);
    bool found;
    json_t *entry = counters_json(&f, "a:", id_of(old), &found);
    assert_true(found);
    assert_int_equal(json_object_size(entry), 0);
    json_decref(entry);
    assert_close(value_at(&f, &n, T0 + 5 * HOUR), 1);
    store_state(&f, old, ACTION_FAILED);
    assert_close(value_at(&f, &n, T0 + 5 * HOUR), 1);
    assert_false(counters_has(&f, "a:", id_of(old)));
    json_decref(old);
    json_decref(late);
    close_fixture(&f);
}

/* ---- backfill --------------------------------------------------------------------------- */

static uint64_t rng_state = 88172645463325252ULL;

static unsigned rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

/* Store n actions with random connectors, actions, amounts and times in [T0 - 3h, T0], each
 * through 1 to 4 random states (some via an approval). */
static void random_history(fixture *f, int n)
{
    static const char *const connectors[] = {"shop", "shop", "mail"};
    static const char *const names[] = {"refund", "charge", "tag"};
    for (int i = 0; i < n; i++) {
        char input[64];
        if (rnd(5) == 0)
            snprintf(input, sizeof input, "{}");
        else
            snprintf(input, sizeof input, "{\"amount\": %u.%u}", rnd(100), rnd(2) * 5);
        int64_t created = T0 - 3 * HOUR + (int64_t)rnd(3 * 3600) * SEC;
        json_t *rec = new_action(f, connectors[rnd(3)], names[rnd(3)], input, ACTION_RECEIVED, created);
        int steps = 1 + (int)rnd(4);
        action_state prev = ACTION_RECEIVED;
        for (int s = 0; s < steps; s++) {
            action_state st = (action_state)rnd(ACTION_STATE_COUNT);
            /* As in the daemon, only a parked action gets approved (and only once). */
            if (prev == ACTION_PENDING_APPROVAL && !json_object_get(rec, "approval") && rnd(2))
                st = ACTION_APPROVED;
            if (st == ACTION_APPROVED && prev != ACTION_PENDING_APPROVAL)
                st = ACTION_READY;
            if (st == ACTION_APPROVED) {
                int64_t at = created + (int64_t)rnd(40 * 60) * SEC;
                decide(rec, "approve", at < T0 ? at : T0);
            }
            store_state(f, rec, st);
            prev = st;
        }
        json_decref(rec);
    }
}

static void compare_all(fixture *f, const counter_def *defs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (int64_t now = T0; now <= T0 + 3 * HOUR; now += 17 * MIN) {
            double maintained = value_at(f, &defs[i], now), scanned = recomputed(f, &defs[i], now);
            if (fabs(maintained - scanned) > 1e-6)
                fail_msg("%s at T0+%lldms: maintained %.9g, recomputed %.9g", defs[i].name,
                         (long long)(now - T0), maintained, scanned);
        }
}

static void backfill_equals_maintained(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[5] = {
        parse_def("refunds", "{\"connector\": \"shop\", \"action\": \"refund\", \"sum\": \"amount\", \"window\": \"1h\"}"),
        parse_def("shop_n", "{\"connector\": \"shop\", \"window\": \"2h\"}"),
        parse_def("mail", "{\"connector\": \"mail\", \"sum\": \"amount\", \"window\": \"30m\"}"),
        parse_def("charges", "{\"connector\": \"shop\", \"action\": \"charge\", \"sum\": \"amount\", \"window\": \"90m\"}"),
        parse_def("short", "{\"connector\": \"shop\", \"window\": \"90s\"}"),
    };
    /* The first three are maintained while the history is made; the others are backfilled. */
    install(&f, defs, 3, T0 - 4 * HOUR);
    random_history(&f, 150);
    compare_all(&f, defs, 3);
    double before[3];
    for (int i = 0; i < 3; i++)
        before[i] = value_at(&f, &defs[i], T0);
    assert_true(before[0] > 0 && before[1] > 0 && before[2] > 0);

    install(&f, defs, 5, T0);
    compare_all(&f, defs, 5);
    assert_true(value_at(&f, &defs[3], T0) > 0);
    for (int i = 0; i < 3; i++) /* kept, not rebuilt */
        assert_close(value_at(&f, &defs[i], T0), before[i]);

    /* The hooks keep the backfilled ones up to date from now on. */
    random_history(&f, 60);
    compare_all(&f, defs, 5);

    /* Installing again from a fresh journal view gives the same numbers (a reinstall of the same
     * set changes nothing; dropping everything and installing again rebuilds). */
    uint64_t v = version_of(&f, &defs[3]);
    install(&f, defs, 5, T0);
    assert_true(version_of(&f, &defs[3]) == v);
    install(&f, NULL, 0, T0);
    install(&f, defs, 5, T0);
    compare_all(&f, defs, 5);
    close_fixture(&f);
}

static void backfill_scans_from_window_start_minus_30_days(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def n = parse_def("n", "{\"connector\": \"shop\", \"window\": \"1h\"}");
    /* Created 29 days before the window and approved in it: found. Created 31 days before: the
     * hook counted it, but a backfill does not look that far back. */
    json_t *in = new_action(&f, "shop", "refund", "{}", ACTION_PENDING_APPROVAL, T0 - HOUR - 29 * DAY);
    json_t *out = new_action(&f, "shop", "refund", "{}", ACTION_PENDING_APPROVAL, T0 - HOUR - 31 * DAY);
    store(&f, in);
    store(&f, out);
    install(&f, &n, 1, T0 - 30 * MIN);
    decide(in, "approve", T0 - 20 * MIN);
    decide(out, "approve", T0 - 20 * MIN);
    store_state(&f, in, ACTION_APPROVED);
    store_state(&f, out, ACTION_APPROVED);
    assert_close(value_at(&f, &n, T0), 2);
    assert_close(recomputed(&f, &n, T0), 1);
    install(&f, NULL, 0, T0);
    install(&f, &n, 1, T0);
    assert_close(value_at(&f, &n, T0), 1);
    json_decref(in);
    json_decref(out);
    close_fixture(&f);
}

/* ---- install, check, delete ------------------------------------------------------------- */

struct check_arg {
    const char *id;
    uint64_t version;
};

static int run_check(journal_txn *txn, void *arg, ar_error *err)
{
    const struct check_arg *c = arg;
    return counters_txn_check(txn, c->id, c->version, err);
}

static int check(fixture *f, const counter_def *def, uint64_t version, ar_error *err)
{
    struct check_arg arg = { def->id, version };
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, run_check, &arg);
    journal_batch_put(b, JDB_CACHE, "checked", 7, "yes", 3);
    int rc = journal_commit(f->j, b, err);
    journal_batch_free(b);
    return rc;
}

static bool defs_record_lists(fixture *f, const char *id)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(journal_get(r, JDB_COUNTERS, "defs", 4, &val, &vlen), AR_OK);
    json_t *arr = json_loadb(val, vlen, 0, NULL);
    journal_read_end(r);
    assert_true(json_is_array(arr));
    bool listed = false;
    size_t i;
    json_t *d;
    json_array_foreach(arr, i, d)
        listed |= strcmp(json_string_value(json_object_get(d, "id")), id) == 0;
    json_decref(arr);
    return listed;
}

static void reinstall_and_decision_check(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def a = parse_def("a", "{\"connector\": \"shop\", \"sum\": \"amount\", \"window\": \"1h\"}");
    counter_def b = parse_def("b", "{\"connector\": \"shop\", \"window\": \"1h\"}");
    counter_def both[3] = {a, b, a}; /* a duplicate by id is fine */
    install(&f, both, 3, T0);
    assert_true(defs_record_lists(&f, a.id) && defs_record_lists(&f, b.id));

    json_t *x = new_action(&f, "shop", "refund", "{\"amount\": 10}", ACTION_READY, T0 - MIN);
    store(&f, x);
    assert_close(value_at(&f, &a, T0), 10);
    uint64_t va;
    double value;
    assert_int_equal(read_counter(&f, &a, T0, &value, &va, NULL), AR_OK);
    ar_error err;
    assert_int_equal(check(&f, &a, va, &err), AR_OK);
    assert_int_equal(check(&f, &a, va + 1, &err), AR_E_CONFLICT);
    assert_string_equal(err.code, "counter_changed");

    /* Another counted action changes the version: a decision that read before decides again. */
    json_t *y = new_action(&f, "shop", "refund", "{\"amount\": 5}", ACTION_READY, T0 - MIN);
    store(&f, y);
    assert_int_equal(check(&f, &a, va, &err), AR_E_CONFLICT);
    assert_string_equal(err.code, "counter_changed");
    assert_non_null(strstr(err.message, a.id));
    uint64_t va2 = version_of(&f, &a);
    assert_true(va2 != va);
    assert_int_equal(check(&f, &a, va2, &err), AR_OK);

    /* Removed: unreadable, its state gone, and a check conflicts. */
    install(&f, &b, 1, T0);
    assert_false(defs_record_lists(&f, a.id));
    assert_true(defs_record_lists(&f, b.id));
    assert_false(counters_has(&f, "c:", a.id));
    assert_int_equal(read_counter(&f, &a, T0, &value, NULL, &err), AR_E_NOTFOUND);
    assert_string_equal(err.code, "counter_unavailable");
    assert_int_equal(check(&f, &a, va2, &err), AR_E_CONFLICT);
    assert_string_equal(err.code, "counter_changed");
    assert_close(value_at(&f, &b, T0), 2); /* b untouched */

    /* Changes while a is not maintained are seen when it comes back (backfill). */
    store_state(&f, x, ACTION_FAILED);
    json_t *z = new_action(&f, "shop", "refund", "{\"amount\": 100}", ACTION_READY, T0 - MIN);
    store(&f, z);
    install(&f, both, 3, T0);
    assert_close(value_at(&f, &a, T0), 105);
    assert_close(recomputed(&f, &a, T0), 105);
    uint64_t va3 = version_of(&f, &a);
    assert_true(va3 != va2);
    assert_int_equal(check(&f, &a, va2, &err), AR_E_CONFLICT);
    assert_int_equal(check(&f, &a, va3, &err), AR_OK);
    /* Entries of the re-added counter are exact: taking z off leaves y. */
    store_state(&f, z, ACTION_CANCELLED);
    assert_close(value_at(&f, &a, T0), 5);
    assert_close(value_at(&f, &b, T0), 1);
    json_decref(x);
    json_decref(y);
    json_decref(z);
    close_fixture(&f);
}

static void deleting_an_action_removes_its_entry(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def sum = parse_def("s", "{\"connector\": \"shop\", \"sum\": \"amount\", \"window\": \"1h\"}");
    install(&f, &sum, 1, T0);
    json_t *a = new_action(&f, "shop", "refund", "{\"amount\": 8}", ACTION_SUCCEEDED, T0 - 2 * MIN);
    store(&f, a);
    bool found;
    json_t *entry = counters_json(&f, "a:", id_of(a), &found);
    assert_true(found);
    json_t *el = json_object_get(entry, sum.id);
    const int64_t width = (HOUR + 62) / 63;
    assert_int_equal(json_integer_value(json_array_get(el, 0)), (T0 - 2 * MIN) / width * width);
    assert_true(json_number_value(json_array_get(el, 1)) == 8);
    json_decref(entry);
    uint64_t v = version_of(&f, &sum);

    /* Compaction deletes the record: the entry goes, what it counted stays. */
    journal_batch *b = journal_batch_new();
    journal_batch_del(b, JDB_ACTIONS, id_of(a), strlen(id_of(a)));
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_false(counters_has(&f, "a:", id_of(a)));
    assert_close(value_at(&f, &sum, T0), 8);
    assert_true(version_of(&f, &sum) == v);
    json_decref(a);
    close_fixture(&f);
}

static void no_definitions_fast_path(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def n = parse_def("n", "{\"connector\": \"shop\", \"window\": \"1h\"}");
    ar_error err;
    double value;
    assert_int_equal(read_counter(&f, &n, T0, &value, NULL, &err), AR_E_NOTFOUND);
    assert_string_equal(err.code, "counter_unavailable");
    /* Nothing installed: counted actions, and records that are not even JSON, leave nothing. */
    json_t *a = new_action(&f, "shop", "refund", "{}", ACTION_READY, T0);
    store(&f, a);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "junk", 4, "not json", 8);
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_int_equal(counters_db_size(&f), 0);

    /* An empty set: only the "defs" record. */
    install(&f, NULL, 0, T0);
    store_state(&f, a, ACTION_SUCCEEDED);
    assert_int_equal(counters_db_size(&f), 1);
    assert_false(defs_record_lists(&f, n.id));

    /* With a definition, a record that is not JSON still stores (it never counts). */
    install(&f, &n, 1, T0);
    assert_close(value_at(&f, &n, T0), 1); /* a, backfilled */
    b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, "junk", 4, "still not json", 14);
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_close(value_at(&f, &n, T0), 1);
    json_decref(a);
    close_fixture(&f);

    /* A journal without counters_new maintains nothing, even with a "defs" record. */
    open_fixture(&f, true);
    install(&f, &n, 1, T0);
    journal_close(f.j);
    counters_free(f.c);
    f.c = NULL;
    journal_opts opts = { .dir = f.dir };
    assert_int_equal(journal_open(&opts, &f.j, NULL), AR_OK);
    a = new_action(&f, "shop", "refund", "{}", ACTION_READY, T0);
    store(&f, a);
    assert_close(value_at(&f, &n, T0), 0);
    assert_false(counters_has(&f, "a:", id_of(a)));
    json_decref(a);
    close_fixture(&f);
}

/* ---- cost counters ---------------------------------------------------------------------- */

/* The record's running total in unit (as the scheduler keeps it), stored by a put at at_ms. */
static void store_cost(fixture *f, json_t *rec, action_state s, const char *unit, double amount, int64_t at_ms)
{
    json_t *cost = json_object_get(rec, "cost");
    if (!cost) {
        cost = json_object();
        json_object_set_new(rec, "cost", cost);
    }
    if (unit)
        json_object_set_new(cost, unit, amount == floor(amount) ? json_integer((json_int_t)amount)
                                                                : json_real(amount));
    json_object_set_new(rec, "updated_ms", json_integer(at_ms));
    store_state(f, rec, s);
}

/* How many keys of JDB_COUNTERS begin with prefix. */
static size_t counters_with_prefix(fixture *f, const char *prefix)
{
    journal_read *r;
    journal_cursor *c;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    assert_int_equal(journal_cursor_open(r, JDB_COUNTERS, &c), AR_OK);
    size_t n = 0, plen = strlen(prefix);
    const void *k;
    size_t kl;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, &k, &kl, NULL, NULL) == AR_OK; op = JOURNAL_NEXT)
        n += kl >= plen && memcmp(k, prefix, plen) == 0;
    journal_cursor_close(c);
    journal_read_end(r);
    return n;
}

/* The "k:" element of rec for def: [bucket_start, counted]; *found 0 when there is none. */
static double cost_counted(fixture *f, const json_t *rec, const counter_def *def, int64_t *start, bool *found)
{
    bool have;
    json_t *entry = counters_json(f, "k:", id_of(rec), &have);
    json_t *el = json_object_get(entry, def->id);
    *found = have && el;
    double counted = json_number_value(json_array_get(el, 1));
    if (start)
        *start = json_integer_value(json_array_get(el, 0));
    json_decref(entry);
    return counted;
}

static void cost_definitions_parse_and_refuse(void **state)
{
    (void)state;
    counter_def d = parse_def("spend_24h", "{\"connector\": \"llm\", \"action\": \"*\", \"cost\": \"USD\", \"window\": \"24h\"}");
    assert_string_equal(d.connector, "llm");
    assert_string_equal(d.action, "*");
    assert_string_equal(d.cost, "USD");
    assert_string_equal(d.sum, "");
    assert_int_equal(d.window_ms, DAY);
    assert_int_equal(strspn(d.id, "0123456789abcdef"), COUNTERS_ID_LEN);
    assert_string_equal(parse_def("x", "{\"connector\": \"llm\", \"cost\": \"tokens_in_16char\", \"window\": 60}").cost,
                        "tokens_in_16char");

    expect_invalid("both", "{\"connector\": \"llm\", \"sum\": \"amount\", \"cost\": \"USD\", \"window\": \"1h\"}",
                   "counter \"both\" has both sum and cost");
    static const char *const bad_units[] = {
        "\"\"", "\"US D\"", "\"US-D\"", "\"US.D\"", "\"tokens_in_17chars\"", "3", "null", "[\"USD\"]",
        "\"U\\u0000SD\"", "\"\\u00e9\"",
    };
    for (size_t i = 0; i < sizeof bad_units / sizeof bad_units[0]; i++) {
        char decl[128];
        snprintf(decl, sizeof decl, "{\"connector\": \"llm\", \"cost\": %s, \"window\": \"1h\"}", bad_units[i]);
        expect_invalid("unit", decl, "counter \"unit\": cost must be a unit");
    }
    expect_invalid("k", "{\"connector\": \"llm\", \"costs\": \"USD\", \"window\": \"1h\"}",
                   "unknown field \"costs\"");

    /* Its id: not that of the sum or count counter with the same connector, action and window
     * (nor of another unit); the same under another name. */
    assert_string_equal(d.id, parse_def("other", "{\"cost\": \"USD\", \"window\": 86400, \"connector\": \"llm\"}").id);
    static const char *const others[] = {
        "{\"connector\": \"llm\", \"window\": \"24h\"}",
        "{\"connector\": \"llm\", \"sum\": \"USD\", \"window\": \"24h\"}",
        "{\"connector\": \"llm\", \"sum\": \"cost\", \"window\": \"24h\"}",
        "{\"connector\": \"llm\", \"cost\": \"tokens\", \"window\": \"24h\"}",
        "{\"connector\": \"llm\", \"cost\": \"usd\", \"window\": \"24h\"}",
        "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"23h\"}",
        "{\"connector\": \"llm\", \"action\": \"chat\", \"cost\": \"USD\", \"window\": \"24h\"}",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        assert_string_not_equal(d.id, parse_def("x", others[i]).id);

    /* Ids of sum and count definitions are what they were before cost counters existed
     * (computed with the code before the change): states stored under them stay theirs. */
    assert_string_equal(parse_def("r", "{\"connector\": \"shop\", \"action\": \"refund\", \"sum\": \"amount\", "
                                       "\"window\": \"24h\"}").id, "224049a33b8db084");
    assert_string_equal(parse_def("n", "{\"connector\": \"shop\", \"window\": \"1h\"}").id, "437bd1ee402ef089");

    /* As JSON: "cost" a string, or null for the others. */
    json_t *js = counters_def_json(&d);
    assert_string_equal(json_string_value(json_object_get(js, "cost")), "USD");
    assert_true(json_is_null(json_object_get(js, "sum")));
    json_decref(js);
    counter_def n = parse_def("n", "{\"connector\": \"shop\", \"sum\": \"amount\", \"window\": \"1h\"}");
    js = counters_def_json(&n);
    assert_true(json_is_null(json_object_get(js, "cost")));
    assert_string_equal(json_string_value(json_object_get(js, "sum")), "amount");
    json_decref(js);

    /* counters_install refuses a definition counters_def_parse would not make. */
    fixture f;
    open_fixture(&f, true);
    counter_def bad = d;
    snprintf(bad.sum, sizeof bad.sum, "amount");
    ar_error err;
    assert_int_equal(counters_install(f.c, &bad, 1, T0, &err), AR_E_INVALID);
    assert_string_equal(err.code, "counter_invalid");
    bad = d;
    snprintf(bad.cost, sizeof bad.cost, "U$D");
    assert_int_equal(counters_install(f.c, &bad, 1, T0, &err), AR_E_INVALID);
    close_fixture(&f);
}

static void cost_rises_add_exactly_the_increments(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[2] = {
        parse_def("usd", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1h\"}"),
        parse_def("tokens", "{\"connector\": \"llm\", \"cost\": \"tokens\", \"window\": \"1h\"}"),
    };
    counter_def *usd = &defs[0], *tokens = &defs[1];
    install(&f, defs, 2, T0 - HOUR);
    uint64_t v0 = version_of(&f, usd);

    /* Received, no call yet: nothing, and no entry. */
    json_t *a = new_action(&f, "llm", "chat", "{}", ACTION_RECEIVED, T0 - 40 * MIN);
    store(&f, a);
    store_state(&f, a, ACTION_READY);
    assert_false(counters_has(&f, "k:", id_of(a)));
    assert_close(value_at(&f, usd, T0), 0);
    assert_true(version_of(&f, usd) == v0);

    /* A first attempt costs 1.5 (and 340 tokens), recorded at T0 - 30 min. */
    json_object_set_new(a, "cost", json_pack("{s:i}", "tokens", 340));
    store_cost(&f, a, ACTION_RETRY_WAIT, "USD", 1.5, T0 - 30 * MIN);
    assert_close(value_at(&f, usd, T0), 1.5);
    assert_close(value_at(&f, tokens, T0), 340);
    assert_true(version_of(&f, usd) == v0 + 1);
    bool found;
    int64_t start;
    const int64_t width = (HOUR + 62) / 63;
    assert_close(cost_counted(&f, a, usd, &start, &found), 1.5);
    assert_true(found);
    assert_int_equal(start, (T0 - 30 * MIN) / width * width);

    /* Stored again without a new cost (dispatched again): nothing changes, not even a version. */
    store_cost(&f, a, ACTION_DISPATCHED, NULL, 0, T0 - 20 * MIN);
    assert_close(value_at(&f, usd, T0), 1.5);
    assert_true(version_of(&f, usd) == v0 + 1);

    /* The second attempt brings the total to 4 at T0 - 10 min: 2.5 more, at that time. */
    store_cost(&f, a, ACTION_SUCCEEDED, "USD", 4, T0 - 10 * MIN);
    assert_close(value_at(&f, usd, T0), 4);
    assert_true(version_of(&f, usd) == v0 + 2);
    assert_close(value_at(&f, tokens, T0), 340); /* tokens did not rise */
    assert_close(cost_counted(&f, a, usd, &start, &found), 4);
    assert_int_equal(start, (T0 - 10 * MIN) / width * width);
    assert_close(value_at(&f, usd, T0 + 35 * MIN), 2.5); /* the first 1.5 left the window */
    assert_close(value_at(&f, usd, T0 + 55 * MIN), 0);
    assert_close(value_at(&f, usd, T0 - 25 * MIN), 1.5); /* a read before the rise */

    /* A total that went down (a rewritten record) takes nothing off; the next rise adds only
     * what passes what was counted. */
    store_cost(&f, a, ACTION_SUCCEEDED, "USD", 3, T0 - 9 * MIN);
    assert_close(value_at(&f, usd, T0), 4);
    assert_true(version_of(&f, usd) == v0 + 2);
    store_cost(&f, a, ACTION_SUCCEEDED, "USD", 5.25, T0 - 8 * MIN);
    assert_close(value_at(&f, usd, T0), 5.25);
    assert_close(cost_counted(&f, a, usd, NULL, &found), 5.25);

    /* Tokens (whole numbers) rise in the same put as dollars. */
    json_object_set_new(json_object_get(a, "cost"), "tokens", json_integer(1000));
    store_cost(&f, a, ACTION_SUCCEEDED, "USD", 6, T0 - 7 * MIN);
    assert_close(value_at(&f, usd, T0), 6);
    assert_close(value_at(&f, tokens, T0), 1000);
    assert_close(cost_counted(&f, a, tokens, NULL, &found), 1000);

    /* The same through action_txn_store inside an apply callback. */
    json_object_set_new(json_object_get(a, "cost"), "USD", json_real(6.5));
    json_object_set_new(a, "updated_ms", json_integer(T0 - 6 * MIN));
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, txn_store, a);
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_close(value_at(&f, usd, T0), 6.5);

    /* What the hook keeps is exact per rise; a recomputation (like a backfill) only sees the
     * total and the last update, so it puts all of it there: never less than the hook. */
    assert_close(recomputed(&f, usd, T0), 6.5);
    assert_close(value_at(&f, usd, T0 + 45 * MIN), 6.5 - 1.5);
    assert_close(recomputed(&f, usd, T0 + 45 * MIN), 6.5);
    json_decref(a);
    close_fixture(&f);
}

static void cost_counts_whatever_the_state(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[2] = {
        parse_def("usd", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1h\"}"),
        parse_def("n", "{\"connector\": \"llm\", \"window\": \"1h\"}"),
    };
    install(&f, defs, 2, T0);

    /* Spent on a call that then failed: the count takes it off, the spend stays. */
    json_t *a = new_action(&f, "llm", "chat", "{}", ACTION_READY, T0 - 20 * MIN);
    store(&f, a);
    store_cost(&f, a, ACTION_RETRY_WAIT, "USD", 2, T0 - 15 * MIN);
    assert_close(value_at(&f, &defs[0], T0), 2);
    assert_close(value_at(&f, &defs[1], T0), 1);
    store_cost(&f, a, ACTION_FAILED, "USD", 3, T0 - 10 * MIN);
    assert_close(value_at(&f, &defs[0], T0), 3);
    assert_close(value_at(&f, &defs[1], T0), 0);
    assert_false(counters_has(&f, "a:", id_of(a)));
    assert_true(counters_has(&f, "k:", id_of(a)));

    /* Cancelled after a lookup that cost something: still spent. */
    json_t *b = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 - 20 * MIN);
    store(&f, b);
    store_cost(&f, b, ACTION_UNKNOWN_OUTCOME, "USD", 0.5, T0 - 9 * MIN);
    store_cost(&f, b, ACTION_CANCELLED, "USD", 0.75, T0 - 8 * MIN);
    assert_close(value_at(&f, &defs[0], T0), 3.75);
    assert_close(value_at(&f, &defs[1], T0), 0);

    /* Whatever the state a record is stored in, what it cost counts. */
    double want = 3.75;
    for (int s = 0; s < ACTION_STATE_COUNT; s++) {
        json_t *rec = new_action(&f, "llm", "embed", "{}", (action_state)s, T0 - 5 * MIN);
        store_cost(&f, rec, (action_state)s, "USD", 0.25, T0 - 5 * MIN);
        want += 0.25;
        assert_close(value_at(&f, &defs[0], T0), want);
        json_decref(rec);
    }
    assert_close(recomputed(&f, &defs[0], T0), want);
    assert_close(recomputed(&f, &defs[1], T0), value_at(&f, &defs[1], T0));
    json_decref(a);
    json_decref(b);
    close_fixture(&f);
}

static void cost_window_expiry(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def usd = parse_def("usd", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1h\"}");
    install(&f, &usd, 1, T0);
    /* Each cost recorded at its put's updated_ms, whatever the action's creation time. */
    const int64_t at[] = {T0, T0 + 20 * MIN, T0 + 50 * MIN};
    const double amount[] = {1, 2, 4};
    for (int i = 0; i < 3; i++) {
        json_t *rec = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 - 3 * HOUR);
        store(&f, rec);
        store_cost(&f, rec, ACTION_SUCCEEDED, "USD", amount[i], at[i]);
        json_decref(rec);
    }
    assert_close(value_at(&f, &usd, T0 - MIN), 0);
    assert_close(value_at(&f, &usd, T0 + 10 * MIN), 1);  /* later ones are in the future */
    assert_close(value_at(&f, &usd, T0 + 50 * MIN), 7);
    assert_close(value_at(&f, &usd, T0 + 70 * MIN), 6);  /* the first dropped out */
    assert_close(value_at(&f, &usd, T0 + 100 * MIN), 4);
    assert_close(value_at(&f, &usd, T0 + 130 * MIN), 0);
    for (int64_t now = T0; now < T0 + 3 * HOUR; now += 7 * MIN)
        assert_close(value_at(&f, &usd, now), recomputed(&f, &usd, now));

    /* A cost recorded in a bucket that has left the ring is not added, but it is noted as
     * counted: the action's next put (later) does not add it again at its own time. */
    json_t *late = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 + 5 * HOUR);
    store_cost(&f, late, ACTION_SUCCEEDED, "USD", 8, T0 + 5 * HOUR);
    const int64_t width = (HOUR + 62) / 63;
    json_t *old = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0);
    store_cost(&f, old, ACTION_RETRY_WAIT, "USD", 16, T0 + 5 * HOUR - 64 * width);
    assert_close(value_at(&f, &usd, T0 + 5 * HOUR), 8);
    bool found;
    assert_close(cost_counted(&f, old, &usd, NULL, &found), 16);
    assert_true(found);
    store_cost(&f, old, ACTION_FAILED, "USD", 16, T0 + 5 * HOUR);
    assert_close(value_at(&f, &usd, T0 + 5 * HOUR), 8);
    store_cost(&f, old, ACTION_FAILED, "USD", 17, T0 + 5 * HOUR);
    assert_close(value_at(&f, &usd, T0 + 5 * HOUR), 9);
    json_decref(old);
    json_decref(late);
    close_fixture(&f);
}

static void cost_action_filters(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[3] = {
        parse_def("any", "{\"connector\": \"llm\", \"action\": \"*\", \"cost\": \"USD\", \"window\": \"1h\"}"),
        parse_def("chat", "{\"connector\": \"llm\", \"action\": \"chat\", \"cost\": \"USD\", \"window\": \"1h\"}"),
        parse_def("shop", "{\"connector\": \"shop\", \"cost\": \"USD\", \"window\": \"1h\"}"),
    };
    install(&f, defs, 3, T0);
    static const struct {
        const char *connector, *action;
        double usd;
    } calls[] = {
        {"llm", "chat", 1}, {"llm", "chat", 2}, {"llm", "embed", 0.5}, {"llm", "moderate", 0.25},
        {"shop", "chat", 10}, {"mail", "chat", 100},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        json_t *rec = new_action(&f, calls[i].connector, calls[i].action, "{}", ACTION_DISPATCHED, T0 - MIN);
        store_cost(&f, rec, ACTION_SUCCEEDED, "USD", calls[i].usd, T0 - MIN);
        /* Only actions a cost counter covers get a cost entry. */
        assert_int_equal(counters_has(&f, "k:", id_of(rec)), strcmp(calls[i].connector, "mail") != 0);
        json_decref(rec);
    }
    /* A cost in another unit only adds to counters of that unit. */
    json_t *eur = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 - MIN);
    json_object_set_new(eur, "cost", json_pack("{s:f, s:s}", "EUR", 9.0, "USD", "3")); /* not a number: 0 */
    store(&f, eur);
    assert_false(counters_has(&f, "k:", id_of(eur)));
    json_decref(eur);
    const double want[3] = {3.75, 3, 10};
    for (int i = 0; i < 3; i++) {
        assert_close(value_at(&f, &defs[i], T0), want[i]);
        assert_close(recomputed(&f, &defs[i], T0), want[i]);
    }
    /* Cost counters leave no "a:" entries (those are for sums and counts). */
    assert_int_equal(counters_with_prefix(&f, "a:"), 0);
    close_fixture(&f);
}

/* n actions with random connectors, actions, states and costs: each is stored 1 to 4 times,
 * its costs rising by random steps (or not at all), within one bucket of every window used
 * below (all widths divide 2 minutes: its puts are the first 4 ms of a 2-minute step), at a
 * random time in [T0 - 3h, T0]. A recomputation puts an action's whole cost at its last update,
 * the hook each rise at its own: they agree when the rises share a bucket. */
static void random_cost_history(fixture *f, int n)
{
    static const char *const connectors[] = {"llm", "llm", "shop"};
    static const char *const names[] = {"chat", "embed"};
    for (int i = 0; i < n; i++) {
        int64_t at = (T0 - 3 * HOUR) / (2 * MIN) * (2 * MIN) + (int64_t)rnd(90) * 2 * MIN;
        json_t *rec = new_action(f, connectors[rnd(3)], names[rnd(2)], "{}", ACTION_RECEIVED,
                                 at - (int64_t)rnd(3600) * SEC);
        store(f, rec);
        double usd = 0;
        int64_t tokens = 0;
        int steps = 1 + (int)rnd(4);
        for (int s = 0; s < steps; s++) {
            if (rnd(3) != 0)
                usd += rnd(20) * 0.125;
            if (rnd(2))
                tokens += rnd(500);
            json_t *cost = json_object();
            if (usd > 0)
                json_object_set_new(cost, "USD", json_real(usd));
            if (tokens > 0)
                json_object_set_new(cost, "tokens", json_integer(tokens));
            json_object_set_new(rec, "cost", cost);
            json_object_set_new(rec, "updated_ms", json_integer(at + s));
            store_state(f, rec, (action_state)rnd(ACTION_STATE_COUNT));
        }
        json_decref(rec);
    }
}

static void cost_backfill_equals_maintained(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[6] = {
        parse_def("usd", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"63m\"}"),
        parse_def("chat_tokens", "{\"connector\": \"llm\", \"action\": \"chat\", \"cost\": \"tokens\", \"window\": \"126m\"}"),
        parse_def("n", "{\"connector\": \"llm\", \"window\": \"63m\"}"),
        parse_def("usd_short", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1890s\"}"),
        parse_def("shop_usd", "{\"connector\": \"shop\", \"cost\": \"USD\", \"window\": \"126m\"}"),
        parse_def("chat_usd", "{\"connector\": \"llm\", \"action\": \"chat\", \"cost\": \"USD\", \"window\": \"63s\"}"),
    };
    /* The first three are maintained while the history is made; the others are backfilled. */
    install(&f, defs, 3, T0 - 4 * HOUR);
    random_cost_history(&f, 150);
    compare_all(&f, defs, 3);
    assert_true(value_at(&f, &defs[0], T0) > 0 && value_at(&f, &defs[1], T0) > 0);
    double before = value_at(&f, &defs[0], T0);

    install(&f, defs, 6, T0);
    compare_all(&f, defs, 6);
    assert_true(value_at(&f, &defs[3], T0) > 0 && value_at(&f, &defs[4], T0) > 0);
    assert_close(value_at(&f, &defs[0], T0), before); /* kept, not rebuilt */

    /* The hook keeps the backfilled ones up to date from now on. */
    random_cost_history(&f, 60);
    compare_all(&f, defs, 6);

    /* Dropping everything and installing again rebuilds the same numbers. */
    double values[6];
    for (int i = 0; i < 6; i++)
        values[i] = value_at(&f, &defs[i], T0 + 10 * MIN);
    install(&f, NULL, 0, T0);
    install(&f, defs, 6, T0);
    compare_all(&f, defs, 6);
    for (int i = 0; i < 6; i++)
        assert_close(value_at(&f, &defs[i], T0 + 10 * MIN), values[i]);
    close_fixture(&f);
}

static void cost_backfill_notes_what_it_counted(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def usd = parse_def("usd", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1h\"}");
    /* Spent before the counter existed: 5 two hours ago (out of the window), 3 ten minutes ago. */
    json_t *old = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 - 2 * HOUR);
    store_cost(&f, old, ACTION_RETRY_WAIT, "USD", 5, T0 - 2 * HOUR);
    json_t *recent = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 - 10 * MIN);
    store_cost(&f, recent, ACTION_FAILED, "USD", 3, T0 - 10 * MIN);
    assert_int_equal(counters_with_prefix(&f, "k:"), 0);
    install(&f, &usd, 1, T0);
    assert_close(value_at(&f, &usd, T0), 3);
    bool found;
    assert_close(cost_counted(&f, old, &usd, NULL, &found), 5); /* noted, though not added */
    assert_true(found);
    assert_close(cost_counted(&f, recent, &usd, NULL, &found), 3);
    /* Later puts add only what rises past the noted totals. */
    store_cost(&f, old, ACTION_SUCCEEDED, "USD", 7, T0 - MIN);
    assert_close(value_at(&f, &usd, T0), 5);
    store_cost(&f, recent, ACTION_FAILED, "USD", 3, T0 - MIN);
    assert_close(value_at(&f, &usd, T0), 5);
    json_decref(old);
    json_decref(recent);
    close_fixture(&f);
}

static void cost_entry_deleted_with_the_record(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[2] = {
        parse_def("usd", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1h\"}"),
        parse_def("n", "{\"connector\": \"llm\", \"window\": \"1h\"}"),
    };
    install(&f, defs, 2, T0);
    json_t *a = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 - 2 * MIN);
    store_cost(&f, a, ACTION_SUCCEEDED, "USD", 8, T0 - 2 * MIN);
    assert_true(counters_has(&f, "k:", id_of(a)));
    assert_true(counters_has(&f, "a:", id_of(a)));
    uint64_t v = version_of(&f, &defs[0]);

    /* Compaction deletes the record: both entries go, what was spent stays counted. */
    journal_batch *b = journal_batch_new();
    journal_batch_del(b, JDB_ACTIONS, id_of(a), strlen(id_of(a)));
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_false(counters_has(&f, "k:", id_of(a)));
    assert_false(counters_has(&f, "a:", id_of(a)));
    assert_close(value_at(&f, &defs[0], T0), 8);
    assert_true(version_of(&f, &defs[0]) == v);

    /* A "k:" entry left from an earlier set of counters goes with its record too. */
    json_t *c = new_action(&f, "llm", "chat", "{}", ACTION_DISPATCHED, T0 - MIN);
    store_cost(&f, c, ACTION_SUCCEEDED, "USD", 1, T0 - MIN);
    install(&f, &defs[1], 1, T0);
    assert_true(counters_has(&f, "k:", id_of(c)));
    b = journal_batch_new();
    journal_batch_del(b, JDB_ACTIONS, id_of(c), strlen(id_of(c)));
    assert_int_equal(journal_commit(f.j, b, NULL), AR_OK);
    journal_batch_free(b);
    assert_false(counters_has(&f, "k:", id_of(c)));
    json_decref(a);
    json_decref(c);
    close_fixture(&f);
}

static void no_cost_definitions_no_cost_entries(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[2] = {
        parse_def("n", "{\"connector\": \"llm\", \"window\": \"1h\"}"),
        parse_def("s", "{\"connector\": \"llm\", \"sum\": \"tokens\", \"window\": \"1h\"}"),
    };
    install(&f, defs, 2, T0);
    for (int i = 0; i < 5; i++) {
        json_t *rec = new_action(&f, "llm", "chat", "{\"tokens\": 10}", ACTION_READY, T0 - MIN);
        store(&f, rec);
        store_cost(&f, rec, i % 2 ? ACTION_SUCCEEDED : ACTION_FAILED, "USD", 1 + i, T0 - MIN);
        json_decref(rec);
    }
    /* Sums and counts as before; no cost entry written or needed. */
    assert_close(value_at(&f, &defs[0], T0), 2);
    assert_close(value_at(&f, &defs[1], T0), 20);
    assert_int_equal(counters_with_prefix(&f, "k:"), 0);
    assert_int_equal(counters_with_prefix(&f, "a:"), 2);

    /* With a cost counter, an action that never cost anything gets no cost entry either. */
    counter_def usd = parse_def("usd", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1h\"}");
    install(&f, &usd, 1, T0);
    assert_close(value_at(&f, &usd, T0), 15); /* backfilled: 1 + 2 + 3 + 4 + 5 */
    assert_int_equal(counters_with_prefix(&f, "k:"), 5);
    json_t *free_call = new_action(&f, "llm", "chat", "{}", ACTION_SUCCEEDED, T0 - MIN);
    store(&f, free_call);
    store_cost(&f, free_call, ACTION_SUCCEEDED, "USD", 0, T0 - MIN);
    assert_false(counters_has(&f, "k:", id_of(free_call)));
    assert_int_equal(counters_with_prefix(&f, "k:"), 5);
    json_decref(free_call);
    close_fixture(&f);
}

/* ---- the hook's pre-filter -------------------------------------------------------------- */

/* Put a record as raw JSON text (to spell it as another writer might). */
static void store_raw(fixture *f, const char *id, const char *text)
{
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_ACTIONS, id, strlen(id), text, strlen(text));
    ar_error err;
    int rc = journal_commit(f->j, b, &err);
    if (rc != AR_OK)
        fail_msg("storing %s: %d %s: %s", id, rc, err.code, err.message);
    journal_batch_free(b);
}

/* Records of a connector no counter covers leave every counter and entry as they were, in
 * every state and even when their input names the covered connector and action; records of
 * a covered one still count, however their JSON spells the names. */
static void uncovered_connector_leaves_counters_alone(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def defs[3] = {
        parse_def("refunded", "{\"connector\": \"shop\", \"action\": \"refund\", \"sum\": \"amount\", \"window\": \"1h\"}"),
        parse_def("listings", "{\"connector\": \"shop\", \"window\": \"1h\"}"),
        parse_def("spend", "{\"connector\": \"llm\", \"cost\": \"USD\", \"window\": \"1h\"}"),
    };
    install(&f, defs, 3, T0);
    uint64_t versions[3];
    for (int i = 0; i < 3; i++)
        versions[i] = version_of(&f, &defs[i]);
    size_t before = counters_db_size(&f);

    /* echo, through every state, with an input that mentions shop, refund and llm. */
    json_t *e = new_action(&f, "echo", "echo", "{\"message\": \"shop\", \"refund\": \"llm\", \"amount\": 7}",
                           ACTION_RECEIVED, T0 - MIN);
    store(&f, e);
    store_state(&f, e, ACTION_READY);
    store_cost(&f, e, ACTION_DISPATCHED, "USD", 3, T0 - MIN);
    store_state(&f, e, ACTION_SUCCEEDED);
    json_t *e2 = new_action(&f, "echo", "refund", "{\"amount\": 9}", ACTION_READY, T0 - MIN);
    store(&f, e2);
    store_state(&f, e2, ACTION_FAILED);
    for (int i = 0; i < 3; i++) {
        assert_close(value_at(&f, &defs[i], T0), 0);
        assert_true(version_of(&f, &defs[i]) == versions[i]);
    }
    assert_int_equal(counters_db_size(&f), before);
    assert_false(counters_has(&f, "a:", id_of(e)));
    assert_false(counters_has(&f, "k:", id_of(e)));

    /* A covered record still counts, and is taken off when it fails. */
    json_t *s = new_action(&f, "shop", "refund", "{\"amount\": 12.5}", ACTION_READY, T0 - MIN);
    store(&f, s);
    assert_close(value_at(&f, &defs[0], T0), 12.5);
    assert_close(value_at(&f, &defs[1], T0), 1);
    assert_true(counters_has(&f, "a:", id_of(s)));
    store_state(&f, s, ACTION_FAILED);
    assert_close(value_at(&f, &defs[0], T0), 0);
    assert_close(value_at(&f, &defs[1], T0), 0);
    assert_false(counters_has(&f, "a:", id_of(s)));

    /* The names spelt with \u escapes (as a writer other than jansson may) still count. */
    char id[ACTION_ID_LEN + 1], text[512];
    make_id(&f, T0 - MIN, id);
    snprintf(text, sizeof text,
             "{\"id\": \"%s\", \"connector\": \"sh\\u006fp\", \"action\": \"r\\u0065fund\", \"state\": \"READY\", "
             "\"input\": {\"amount\": 4}, \"created_ms\": %lld, \"updated_ms\": %lld}",
             id, (long long)(T0 - MIN), (long long)(T0 - MIN));
    store_raw(&f, id, text);
    assert_close(value_at(&f, &defs[0], T0), 4);
    assert_close(value_at(&f, &defs[1], T0), 1);
    /* And with white space around the colons, a nested "connector" member before the real one. */
    make_id(&f, T0 - MIN, id);
    snprintf(text, sizeof text,
             "{\"id\" : \"%s\", \"input\" : {\"connector\" : \"echo\", \"amount\" : 6}, \"connector\"\n:\t\"shop\", "
             "\"action\" :\"refund\", \"state\" : \"APPROVED\", \"created_ms\" : %lld, \"updated_ms\" : %lld}",
             id, (long long)(T0 - MIN), (long long)(T0 - MIN));
    store_raw(&f, id, text);
    assert_close(value_at(&f, &defs[0], T0), 10);
    assert_close(value_at(&f, &defs[1], T0), 2);
    /* And a covered cost: the llm connector's spend. */
    json_t *l = new_action(&f, "llm", "complete", "{}", ACTION_DISPATCHED, T0 - MIN);
    store_cost(&f, l, ACTION_SUCCEEDED, "USD", 2.25, T0 - MIN);
    assert_close(value_at(&f, &defs[2], T0), 2.25);
    assert_close(value_at(&f, &defs[2], T0), recomputed(&f, &defs[2], T0));
    assert_close(value_at(&f, &defs[0], T0), recomputed(&f, &defs[0], T0));
    json_decref(e);
    json_decref(e2);
    json_decref(s);
    json_decref(l);
    close_fixture(&f);
}

/* An entry left by a definition that is no longer maintained still goes when its record leaves
 * the counted states, although no maintained definition covers the record any more: otherwise
 * it would stand for "already counted" once such a definition is installed again. */
static void entry_of_an_uncovered_record_still_goes(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, true);
    counter_def echoes = parse_def("echoes", "{\"connector\": \"echo\", \"window\": \"1h\"}");
    counter_def shop = parse_def("shop", "{\"connector\": \"shop\", \"window\": \"1h\"}");
    install(&f, &echoes, 1, T0);
    json_t *e = new_action(&f, "echo", "echo", "{}", ACTION_READY, T0 - MIN);
    store(&f, e);
    assert_close(value_at(&f, &echoes, T0), 1);
    assert_true(counters_has(&f, "a:", id_of(e)));

    install(&f, &shop, 1, T0); /* echo is covered no more; the entry stays for now */
    assert_true(counters_has(&f, "a:", id_of(e)));
    store_state(&f, e, ACTION_RETRY_WAIT); /* still counted: the entry stays */
    assert_true(counters_has(&f, "a:", id_of(e)));
    store_state(&f, e, ACTION_FAILED);
    assert_false(counters_has(&f, "a:", id_of(e)));

    /* Covered again: the record counts when it is counted again. */
    install(&f, &echoes, 1, T0);
    assert_close(value_at(&f, &echoes, T0), 0);
    store_state(&f, e, ACTION_READY);
    assert_close(value_at(&f, &echoes, T0), 1);
    assert_close(value_at(&f, &echoes, T0), recomputed(&f, &echoes, T0));
    json_decref(e);
    close_fixture(&f);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(definitions_parse_and_refuse),
    cmocka_unit_test(counted_and_not_counted_states),
    cmocka_unit_test(transitions_keep_or_take_off),
    cmocka_unit_test(approval_counts_from_its_decision),
    cmocka_unit_test(sum_paths_and_action_filters),
    cmocka_unit_test(window_expiry_and_the_ring),
    cmocka_unit_test(backfill_equals_maintained),
    cmocka_unit_test(backfill_scans_from_window_start_minus_30_days),
    cmocka_unit_test(reinstall_and_decision_check),
    cmocka_unit_test(deleting_an_action_removes_its_entry),
    cmocka_unit_test(no_definitions_fast_path),
    cmocka_unit_test(cost_definitions_parse_and_refuse),
    cmocka_unit_test(cost_rises_add_exactly_the_increments),
    cmocka_unit_test(cost_counts_whatever_the_state),
    cmocka_unit_test(cost_window_expiry),
    cmocka_unit_test(cost_action_filters),
    cmocka_unit_test(cost_backfill_equals_maintained),
    cmocka_unit_test(cost_backfill_notes_what_it_counted),
    cmocka_unit_test(cost_entry_deleted_with_the_record),
    cmocka_unit_test(no_cost_definitions_no_cost_entries),
    cmocka_unit_test(uncovered_connector_leaves_counters_alone),
    cmocka_unit_test(entry_of_an_uncovered_record_still_goes),
};

AR_TEST_MAIN(tests, NULL, NULL)
