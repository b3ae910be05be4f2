/* test_action.c - action records: ids, digests, states, rendering, listing from the journal. */
#include "test_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "action.h"
#include "journal.h"

static void ids_are_26_crockford_chars_and_sort_in_minting_order(void **state)
{
    (void)state;
    char prev[ACTION_ID_LEN + 1] = "";
    for (int i = 0; i < 5000; i++) {
        char id[ACTION_ID_LEN + 1];
        action_id_new(id);
        assert_int_equal(strlen(id), ACTION_ID_LEN);
        assert_int_equal(strspn(id, "0123456789ABCDEFGHJKMNPQRSTVWXYZ"), ACTION_ID_LEN);
        assert_true(strcmp(prev, id) < 0);
        memcpy(prev, id, sizeof id);
    }
}

static void digest_ignores_key_order_but_not_values(void **state)
{
    (void)state;
    json_t *a = json_loads("{\"x\": 1, \"y\": {\"b\": 2, \"a\": 3}}", 0, NULL);
    json_t *b = json_loads("{\"y\": {\"a\": 3, \"b\": 2}, \"x\": 1}", 0, NULL);
    json_t *c = json_loads("{\"x\": 1, \"y\": {\"b\": 2, \"a\": 4}}", 0, NULL);
    unsigned char da[ACTION_DIGEST_LEN], db[ACTION_DIGEST_LEN], dc[ACTION_DIGEST_LEN], dd[ACTION_DIGEST_LEN];
    assert_int_equal(action_payload_digest("refund", a, da), AR_OK);
    assert_int_equal(action_payload_digest("refund", b, db), AR_OK);
    assert_int_equal(action_payload_digest("refund", c, dc), AR_OK);
    assert_int_equal(action_payload_digest("charge", a, dd), AR_OK);
    assert_memory_equal(da, db, ACTION_DIGEST_LEN);
    assert_memory_not_equal(da, dc, ACTION_DIGEST_LEN);
    assert_memory_not_equal(da, dd, ACTION_DIGEST_LEN);
    json_decref(a);
    json_decref(b);
    json_decref(c);
}

static void states_round_trip_and_classify(void **state)
{
    (void)state;
    for (int s = 0; s < ACTION_STATE_COUNT; s++)
        assert_int_equal(action_state_from_name(action_state_name((action_state)s)), s);
    assert_int_equal(action_state_from_name("SLEEPING"), -1);
    assert_int_equal(action_state_from_name(NULL), -1);
    /* names sharing a first letter (the lookup tries it first), and near misses */
    assert_int_equal(action_state_from_name("RETRY_WAIT"), ACTION_RETRY_WAIT);
    assert_int_equal(action_state_from_name("REJECTED"), ACTION_REJECTED);
    assert_int_equal(action_state_from_name("READY"), ACTION_READY);
    assert_int_equal(action_state_from_name("ready"), -1);
    assert_int_equal(action_state_from_name("READ"), -1);
    assert_int_equal(action_state_from_name("READY "), -1);
    assert_int_equal(action_state_from_name(""), -1);
    assert_true(action_state_terminal(ACTION_SUCCEEDED));
    assert_true(action_state_terminal(ACTION_DENIED));
    assert_true(action_state_terminal(ACTION_UNKNOWN_OUTCOME));
    assert_false(action_state_terminal(ACTION_READY));
    assert_false(action_state_terminal(ACTION_DISPATCHED));
    assert_false(action_state_terminal(ACTION_PENDING_APPROVAL));
    assert_true(action_state_settled(ACTION_PENDING_APPROVAL));
    assert_false(action_state_settled(ACTION_RETRY_WAIT));
}

/* action_record_set_state writes the members json_object_set_new wrote: same text. */
static void set_state_writes_state_and_times(void **state)
{
    (void)state;
    json_t *rec = json_pack("{s:s, s:I, s:n}", "id", "x", "updated_ms", (json_int_t)1, "finished_ms");
    action_record_set_state(rec, ACTION_READY, 5);
    char *text = json_dumps(rec, JSON_COMPACT);
    assert_string_equal(text, "{\"id\":\"x\",\"updated_ms\":5,\"finished_ms\":null,\"state\":\"READY\"}");
    free(text);
    action_record_set_state(rec, ACTION_UNKNOWN_OUTCOME, 7);
    text = json_dumps(rec, JSON_COMPACT);
    assert_string_equal(text, "{\"id\":\"x\",\"updated_ms\":7,\"finished_ms\":7,\"state\":\"UNKNOWN_OUTCOME\"}");
    free(text);
    assert_int_equal(action_record_state(rec), ACTION_UNKNOWN_OUTCOME);
    json_decref(rec);
}

static void render_gives_timestamps_and_drops_internals(void **state)
{
    (void)state;
    json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:n, s:s}", "id", "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                            "connector", "echo", "action", "echo", "digest", "abcd",
                            "created_ms", (json_int_t)1764176400123, "updated_ms", (json_int_t)1764176400123,
                            "finished_ms", "state", "READY");
    action_record_set_state(rec, ACTION_SUCCEEDED, 1764176401000);
    json_t *out = action_render(rec);
    assert_string_equal(json_string_value(json_object_get(out, "created_at")), "2025-11-26T17:00:00.123Z");
    assert_string_equal(json_string_value(json_object_get(out, "finished_at")), "2025-11-26T17:00:01.000Z");
    assert_string_equal(json_string_value(json_object_get(out, "state")), "SUCCEEDED");
    assert_null(json_object_get(out, "digest"));
    assert_null(json_object_get(out, "created_ms"));
    assert_true(json_is_null(json_object_get(out, "result")));
    json_decref(out);
    json_decref(rec);
}

/* action_render_text writes what action_render's value dumps to, for records of every shape:
 * fields absent, a retry wait (next_attempt_at shown) or not, flags set, odd text. */
static void render_text_is_the_rendered_value(void **state)
{
    (void)state;
    const char *records[] = {
        "{}",
        "{\"id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAV\",\"state\":\"SUCCEEDED\",\"created_ms\":1764176400123,"
        "\"result\":{\"message\":\"caf\u00e9 \\\"quoted\\\"\\n\"},\"digest\":\"ab\",\"review\":true}",
        "{\"state\":\"RETRY_WAIT\",\"next_attempt_ms\":1764176409000,\"deadline_ms\":1764176500000,"
        "\"history\":[{\"kind\":\"invoke\",\"attempt\":1}],\"compacted\":true,\"priority\":-3}",
        "{\"state\":\"READY\",\"next_attempt_ms\":1764176409000,\"finished_ms\":null,\"cost\":{\"usd\":0.25}}",
        "{\"state\":\"RETRY_WAIT\",\"created_ms\":\"not a number\",\"review\":1,\"input\":[1,2,{}]}",
    };
    for (size_t i = 0; i < sizeof records / sizeof records[0]; i++) {
        json_t *rec = json_loads(records[i], 0, NULL);
        assert_non_null(rec);
        json_t *rendered = action_render(rec);
        char *expected = json_dumps(rendered, JSON_COMPACT);
        char *got = action_render_text(rec);
        assert_non_null(got);
        assert_string_equal(got, expected);
        free(expected);
        free(got);
        json_decref(rendered);
        json_decref(rec);
    }
    json_t *bad = json_pack("{s:o}", "error", json_string_nocheck("\xff"));
    assert_null(action_render_text(bad)); /* not UTF-8: refused, as the value's dump is */
    json_decref(bad);
}

static void idem_key_scopes_by_connector_and_submitter(void **state)
{
    (void)state;
    char a[64], b[64], c[64];
    size_t la = action_idem_key(a, sizeof a, "shop", "alice", "k1");
    size_t lb = action_idem_key(b, sizeof b, "sho", "palice", "k1");
    size_t lc = action_idem_key(c, sizeof c, "shop", "bob", "k1");
    assert_int_equal(la, 13);
    assert_int_equal(lb, 13);
    assert_memory_not_equal(a, b, la); /* the NUL separators keep them apart */
    assert_true(lc != la || memcmp(a, c, la) != 0);
    assert_int_equal(action_idem_key(a, 8, "shop", "alice", "k1"), 0);
}

/* ---- listing against a real journal ------------------------------------------------------- */

typedef struct {
    char dir[64];
    journal *j;
    char ids[12][ACTION_ID_LEN + 1];
} fixture;

static int open_journal(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/aiorun-action-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    journal_opts o = {.dir = f->dir, .map_size_mb = 16};
    if (journal_open(&o, &f->j, NULL) != AR_OK)
        return -1;
    /* 12 actions: even ones on "echo" and SUCCEEDED, odd ones on "shop" and READY. */
    for (int i = 0; i < 12; i++) {
        action_id_new(f->ids[i]);
        json_t *rec = json_pack("{s:s, s:s, s:s, s:i}", "id", f->ids[i], "connector", i % 2 ? "shop" : "echo",
                                "action", "x", "n", i);
        action_record_set_state(rec, i % 2 ? ACTION_READY : ACTION_SUCCEEDED, 1000 + i);
        journal_batch *b = journal_batch_new();
        action_batch_store(b, rec);
        int rc = journal_commit(f->j, b, NULL);
        journal_batch_free(b);
        json_decref(rec);
        if (rc != AR_OK)
            return -1;
    }
    *state = f;
    return 0;
}

static int close_journal(void **state)
{
    fixture *f = *state;
    journal_close(f->j);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void list_pages_newest_first_until_the_end(void **state)
{
    fixture *f = *state;
    char next[ACTION_ID_LEN + 1], after[ACTION_ID_LEN + 1] = "";
    int seen = 11;
    for (int page = 0; page < 3; page++) {
        json_t *items;
        assert_int_equal(action_list(f->j, NULL, after, 5, &items, next, NULL), AR_OK);
        size_t i;
        json_t *rec;
        json_array_foreach(items, i, rec)
            assert_string_equal(action_record_str(rec, "id"), f->ids[seen--]);
        assert_int_equal(json_array_size(items), page < 2 ? 5 : 2);
        json_decref(items);
        memcpy(after, next, sizeof after);
    }
    assert_int_equal(seen, -1);
    assert_string_equal(next, "");
}

static void list_filters_by_state_and_connector(void **state)
{
    fixture *f = *state;
    char next[ACTION_ID_LEN + 1];
    json_t *items;
    action_filter only_ready = {.state = ACTION_READY};
    assert_int_equal(action_list(f->j, &only_ready, NULL, 100, &items, next, NULL), AR_OK);
    assert_int_equal(json_array_size(items), 6);
    assert_string_equal(action_record_str(json_array_get(items, 0), "id"), f->ids[11]);
    json_decref(items);
    action_filter echo = {.state = -1, .connector = "echo"};
    assert_int_equal(action_list(f->j, &echo, NULL, 2, &items, next, NULL), AR_OK);
    assert_int_equal(json_array_size(items), 2);
    assert_string_equal(next, f->ids[8]);
    json_decref(items);
    action_filter none = {.state = ACTION_DENIED};
    assert_int_equal(action_list(f->j, &none, NULL, 10, &items, next, NULL), AR_OK);
    assert_int_equal(json_array_size(items), 0);
    assert_string_equal(next, "");
    json_decref(items);
}

static void queue_holds_exactly_the_unfinished_actions(void **state)
{
    fixture *f = *state;
    journal_read *r;
    assert_int_equal(journal_read_begin(f->j, &r, NULL), AR_OK);
    for (int i = 0; i < 12; i++) {
        const void *v;
        size_t vl;
        int rc = journal_get(r, JDB_QUEUE, f->ids[i], ACTION_ID_LEN, &v, &vl);
        assert_int_equal(rc, i % 2 ? AR_OK : AR_E_NOTFOUND);
    }
    json_t *rec;
    assert_int_equal(action_load(r, f->ids[3], &rec, NULL), AR_OK);
    assert_int_equal(json_integer_value(json_object_get(rec, "n")), 3);
    json_decref(rec);
    ar_error err;
    assert_int_equal(action_load(r, "01ARZ3NDEKTSV4RRFFQ69G5FAV", &rec, &err), AR_E_NOTFOUND);
    assert_string_equal(err.code, "not_found");
    journal_read_end(r);
}

/* A stored record's bytes: version byte stripped, not NUL-terminated. */
static size_t stored_len(journal *j, const char *id, char *out, size_t cap)
{
    journal_read *r;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    const void *v;
    size_t vl;
    assert_int_equal(journal_get(r, JDB_ACTIONS, id, strlen(id), &v, &vl), AR_OK);
    assert_true(vl <= cap);
    memcpy(out, v, vl);
    journal_read_end(r);
    return vl;
}

static void store_one(journal *j, const json_t *rec)
{
    journal_batch *b = journal_batch_new();
    assert_int_equal(action_batch_store(b, rec), AR_OK);
    assert_int_equal(journal_commit(j, b, NULL), AR_OK);
    journal_batch_free(b);
}

/* An unfinished record is stored with room to grow (blanks after its JSON, up to the cap) and
 * reads back the same; a finished one, and one at the cap already, without; the next version
 * of a record replaces it whatever its size. */
static void unfinished_records_are_stored_with_room_to_grow(void **state)
{
    fixture *f = *state;
    char buf[8192];
    json_t *rec = json_pack("{s:s, s:s, s:s, s:i}", "id", "01ARZ3NDEKTSV4RRFFQ69G5FAA", "connector", "echo",
                            "state", "READY", "attempts", 0);
    char *text = json_dumps(rec, JSON_COMPACT);
    store_one(f->j, rec);
    size_t n = stored_len(f->j, "01ARZ3NDEKTSV4RRFFQ69G5FAA", buf, sizeof buf);
    assert_int_equal(n, strlen(text) + ACTION_RECORD_ROOM);
    assert_memory_equal(buf, text, strlen(text));
    for (size_t i = strlen(text); i < n; i++)
        assert_int_equal(buf[i], ' ');
    json_t *back = NULL;
    assert_int_equal(action_load_by_id(f->j, "01ARZ3NDEKTSV4RRFFQ69G5FAA", &back, NULL), AR_OK);
    assert_true(json_equal(back, rec));
    json_decref(back);
    free(text);

    /* Finished: no room; bigger than before: replaces it. */
    action_record_set_state(rec, ACTION_SUCCEEDED, 1764176401000);
    json_object_set_new(rec, "result", json_pack("{s:s}", "message", "a result longer than before"));
    text = json_dumps(rec, JSON_COMPACT);
    store_one(f->j, rec);
    n = stored_len(f->j, "01ARZ3NDEKTSV4RRFFQ69G5FAA", buf, sizeof buf);
    assert_int_equal(n, strlen(text));
    assert_memory_equal(buf, text, n);
    free(text);
    json_decref(rec);

    /* Near the cap: padded only up to it; beyond it: not at all. */
    char big[2400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    size_t sizes[] = {1800, 2300};
    for (size_t k = 0; k < 2; k++) {
        big[sizes[k]] = '\0';
        json_t *r2 = json_pack("{s:s, s:s, s:s}", "id", k ? "01ARZ3NDEKTSV4RRFFQ69G5FAC" : "01ARZ3NDEKTSV4RRFFQ69G5FAB",
                               "state", "DISPATCHED", "input", big);
        char *t2 = json_dumps(r2, JSON_COMPACT);
        store_one(f->j, r2);
        n = stored_len(f->j, k ? "01ARZ3NDEKTSV4RRFFQ69G5FAC" : "01ARZ3NDEKTSV4RRFFQ69G5FAB", buf, sizeof buf);
        assert_int_equal(n, k ? strlen(t2) : (size_t)ACTION_RECORD_PADDED_MAX);
        json_t *b2 = NULL;
        assert_int_equal(action_load_by_id(f->j, k ? "01ARZ3NDEKTSV4RRFFQ69G5FAC" : "01ARZ3NDEKTSV4RRFFQ69G5FAB", &b2, NULL), AR_OK);
        assert_true(json_equal(b2, r2));
        json_decref(b2);
        free(t2);
        json_decref(r2);
        big[sizes[k]] = 'x';
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(ids_are_26_crockford_chars_and_sort_in_minting_order),
    cmocka_unit_test(digest_ignores_key_order_but_not_values),
    cmocka_unit_test(states_round_trip_and_classify),
    cmocka_unit_test(set_state_writes_state_and_times),
    cmocka_unit_test(render_gives_timestamps_and_drops_internals),
    cmocka_unit_test(render_text_is_the_rendered_value),
    cmocka_unit_test(idem_key_scopes_by_connector_and_submitter),
    cmocka_unit_test_setup_teardown(list_pages_newest_first_until_the_end, open_journal, close_journal),
    cmocka_unit_test_setup_teardown(list_filters_by_state_and_connector, open_journal, close_journal),
    cmocka_unit_test_setup_teardown(queue_holds_exactly_the_unfinished_actions, open_journal, close_journal),
    cmocka_unit_test_setup_teardown(unfinished_records_are_stored_with_room_to_grow, open_journal, close_journal),
};

AR_TEST_MAIN(tests, NULL, NULL)
