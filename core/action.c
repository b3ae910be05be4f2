/* action.c - action records, ids, digests and their journal keys (see action.h). */
#include "action.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "jsonw.h"

static const char *const state_names[ACTION_STATE_COUNT] = {
    [ACTION_RECEIVED] = "RECEIVED",
    [ACTION_DENIED] = "DENIED",
    [ACTION_SUGGESTED] = "SUGGESTED",
    [ACTION_PENDING_APPROVAL] = "PENDING_APPROVAL",
    [ACTION_APPROVED] = "APPROVED",
    [ACTION_REJECTED] = "REJECTED",
    [ACTION_EXPIRED] = "EXPIRED",
    [ACTION_READY] = "READY",
    [ACTION_DISPATCHED] = "DISPATCHED",
    [ACTION_RETRY_WAIT] = "RETRY_WAIT",
    [ACTION_SUCCEEDED] = "SUCCEEDED",
    [ACTION_FAILED] = "FAILED",
    [ACTION_UNKNOWN_OUTCOME] = "UNKNOWN_OUTCOME",
    [ACTION_CANCELLED] = "CANCELLED",
};

const char *action_state_name(action_state s)
{
    return (s >= 0 && s < ACTION_STATE_COUNT) ? state_names[s] : "UNKNOWN";
}

int action_state_from_name(const char *name)
{
    /* the first letter first: most names differ there (every record's state is read often) */
    for (int i = 0; name && i < ACTION_STATE_COUNT; i++)
        if (state_names[i][0] == name[0] && strcmp(state_names[i], name) == 0)
            return i;
    return -1;
}

int action_state_terminal(action_state s)
{
    switch (s) {
    case ACTION_DENIED:
    case ACTION_SUGGESTED:
    case ACTION_REJECTED:
    case ACTION_EXPIRED:
    case ACTION_SUCCEEDED:
    case ACTION_FAILED:
    case ACTION_UNKNOWN_OUTCOME:
    case ACTION_CANCELLED:
        return 1;
    default:
        return 0;
    }
}

int action_state_settled(action_state s)
{
    return action_state_terminal(s) || s == ACTION_PENDING_APPROVAL;
}

/* ---- ids ----------------------------------------------------------------------------------- */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* Monotonic ULIDs: within one millisecond the random part is incremented, so ids minted by
 * this process sort in minting order (the list cursor relies on it). */
static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t id_last_ms;
static unsigned char id_last_rand[10];

void action_id_time_prefix(int64_t ms, char out[11])
{
    static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if (ms < 0)
        ms = 0;
    if (ms > (INT64_C(1) << 48) - 1)
        ms = (INT64_C(1) << 48) - 1;
    for (int i = 0; i < 10; i++)
        out[i] = crockford[((uint64_t)ms >> (45 - 5 * i)) & 31];
    out[10] = '\0';
}

void action_id_new(char out[ACTION_ID_LEN + 1])
{
    int64_t ms = ar_now_ms();
    unsigned char rnd[10];
    pthread_mutex_lock(&id_lock);
    if (ms <= id_last_ms) {
        ms = id_last_ms;
        for (int i = 9; i >= 0 && ++id_last_rand[i] == 0; i--)
            ;
    } else {
        id_last_ms = ms;
        randombytes_buf(id_last_rand, sizeof id_last_rand);
        id_last_rand[0] &= 0x7f; /* headroom so increments never wrap within a millisecond */
    }
    memcpy(rnd, id_last_rand, sizeof rnd);
    pthread_mutex_unlock(&id_lock);

    unsigned char b[16];
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)((uint64_t)ms >> (8 * (5 - i)));
    memcpy(b + 6, rnd, 10);
    /* 128 bits -> 26 base32 digits, most significant first (the first digit holds 3 bits). */
    for (int i = 0; i < ACTION_ID_LEN; i++) {
        int bit = 128 - 5 * (ACTION_ID_LEN - i); /* may be negative for the first digit */
        unsigned v = 0;
        for (int k = 0; k < 5; k++) {
            int pos = bit + k;
            if (pos < 0)
                continue;
            v |= (unsigned)((b[pos / 8] >> (7 - pos % 8)) & 1) << (4 - k);
        }
        out[i] = crockford[v];
    }
    out[ACTION_ID_LEN] = '\0';
}

int action_payload_digest(const char *action, const json_t *input, unsigned char out[ACTION_DIGEST_LEN])
{
    /* The text of {"action": action, "input": input} with sorted keys, written directly ("action"
     * sorts before "input"): no object to build and free. */
    if (!action || !input)
        return AR_E_NOMEM; /* what json_pack refused */
    char stack[1024];
    jsonw_buf b = {stack, 0, sizeof stack, 1};
    int rc = jsonw_append_raw(&b, "{\"action\":", 10) || jsonw_append_string(&b, action, strlen(action)) ||
             jsonw_append_raw(&b, ",\"input\":", 9) ||
             jsonw_append(&b, input, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) ||
             jsonw_append_raw(&b, "}", 1);
    if (rc == 0)
        crypto_generichash(out, ACTION_DIGEST_LEN, (const unsigned char *)b.data, b.len, NULL, 0);
    jsonw_buf_free(&b);
    return rc == 0 ? AR_OK : AR_E_NOMEM;
}

/* ---- records ------------------------------------------------------------------------------ */

action_state action_record_state(const json_t *rec)
{
    int s = action_state_from_name(json_string_value(json_object_get(rec, "state")));
    return s < 0 ? ACTION_RECEIVED : (action_state)s;
}

const char *action_record_str(const json_t *rec, const char *field)
{
    const char *s = json_string_value(json_object_get(rec, field));
    return s ? s : "";
}

void action_record_set_state(json_t *rec, action_state s, int64_t now_ms)
{
    /* The names are ASCII constants and the keys literals: neither measured nor checked. */
    const char *name = action_state_name(s);
    json_object_setn_new_nocheck(rec, "state", 5, json_stringn_nocheck(name, strlen(name)));
    json_object_setn_new_nocheck(rec, "updated_ms", 10, json_integer(now_ms));
    if (action_state_terminal(s))
        json_object_setn_new_nocheck(rec, "finished_ms", 11, json_integer(now_ms));
}

json_t *action_time_json(const json_t *ms_value)
{
    if (!json_is_integer(ms_value))
        return json_null();
    char buf[AR_TIME_LEN];
    ar_time_rfc3339(json_integer_value(ms_value), buf);
    return json_string(buf);
}

/* What action_render copies from a record as it is, in the API's order; then come review,
 * compacted and the times (RENDERED_TIMES). */
static const char *const rendered_fields[] = {"id", "connector", "action", "state", "effect",
                                              "idempotency_key", "submitter", "input", "proposer",
                                              "priority", "decision", "attempts", "result", "error",
                                              "history", "resolution", "cancel_requested_by",
                                              "approval", "validation", "cost"};
#define N_RENDERED_FIELDS (sizeof rendered_fields / sizeof rendered_fields[0])
static const char *const rendered_times[][2] = {{"created_at", "created_ms"}, {"updated_at", "updated_ms"},
                                                {"finished_at", "finished_ms"}, {"deadline_at", "deadline_ms"}};

/* The record's next_attempt_ms when the API shows it (only while waiting to retry). */
static const json_t *shown_next_attempt(const json_t *rec)
{
    const json_t *next = json_object_get(rec, "next_attempt_ms");
    return next && action_record_state(rec) == ACTION_RETRY_WAIT ? next : NULL;
}

json_t *action_render(const json_t *rec)
{
    json_t *out = json_object();
    if (!out)
        return NULL;
    for (size_t i = 0; i < N_RENDERED_FIELDS; i++) {
        json_t *v = json_object_get(rec, rendered_fields[i]);
        json_object_set(out, rendered_fields[i], v ? v : json_null());
    }
    json_object_set_new(out, "review", json_boolean(json_is_true(json_object_get(rec, "review"))));
    /* A stub (retention.h): its input, result, history and decision were compacted away. */
    json_object_set_new(out, "compacted", json_boolean(json_is_true(json_object_get(rec, "compacted"))));
    for (size_t i = 0; i < sizeof rendered_times / sizeof rendered_times[0]; i++)
        json_object_set_new(out, rendered_times[i][0], action_time_json(json_object_get(rec, rendered_times[i][1])));
    const json_t *next = shown_next_attempt(rec);
    if (next)
        json_object_set_new(out, "next_attempt_at", action_time_json(next));
    return out;
}

/* ,"name": (or {"name": for the first member) */
static int render_key(jsonw_buf *b, const char *name, int first)
{
    size_t n = strlen(name);
    if (jsonw_reserve(b, n + 4) != 0)
        return -1;
    char *p = b->data + b->len;
    p[0] = first ? '{' : ',';
    p[1] = '"';
    memcpy(p + 2, name, n);
    p[n + 2] = '"';
    p[n + 3] = ':';
    b->len += n + 4;
    return 0;
}

/* A field shown as true or false, whatever the record holds (absent: false). */
static int render_flag(jsonw_buf *b, const char *name, const json_t *rec)
{
    int on = json_is_true(json_object_get(rec, name));
    return render_key(b, name, 0) || jsonw_append_raw(b, on ? "true" : "false", on ? 4 : 5);
}

static int render_time(jsonw_buf *b, const char *name, const json_t *ms)
{
    if (render_key(b, name, 0) != 0)
        return -1;
    if (!json_is_integer(ms))
        return jsonw_append_raw(b, "null", 4);
    char t[AR_TIME_LEN];
    ar_time_rfc3339(json_integer_value(ms), t);
    return jsonw_append_string(b, t, strlen(t));
}

char *action_render_text(const json_t *rec)
{
    char stack[4096];
    jsonw_buf b = {stack, 0, sizeof stack, 1};
    int rc = 0;
    for (size_t i = 0; i < N_RENDERED_FIELDS && rc == 0; i++) {
        const json_t *v = json_object_get(rec, rendered_fields[i]);
        rc = render_key(&b, rendered_fields[i], i == 0) ||
             jsonw_append(&b, v ? v : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    }
    if (rc == 0)
        rc = render_flag(&b, "review", rec) || render_flag(&b, "compacted", rec);
    for (size_t i = 0; i < sizeof rendered_times / sizeof rendered_times[0] && rc == 0; i++)
        rc = render_time(&b, rendered_times[i][0], json_object_get(rec, rendered_times[i][1]));
    const json_t *next = shown_next_attempt(rec);
    if (rc == 0 && next)
        rc = render_time(&b, "next_attempt_at", next);
    if (rc != 0 || jsonw_append_raw(&b, "}", 1) != 0) {
        jsonw_buf_free(&b);
        return NULL;
    }
    return jsonw_take(&b);
}

/* ---- journal ------------------------------------------------------------------------------ */

size_t action_idem_key(char *buf, size_t cap, const char *connector, const char *submitter,
                       const char *key)
{
    size_t cl = strlen(connector), sl = strlen(submitter), kl = strlen(key);
    if (cl + 1 + sl + 1 + kl > cap)
        return 0;
    memcpy(buf, connector, cl);
    buf[cl] = '\0';
    memcpy(buf + cl + 1, submitter, sl);
    buf[cl + 1 + sl] = '\0';
    memcpy(buf + cl + 1 + sl + 1, key, kl);
    return cl + 1 + sl + 1 + kl;
}

/* The record's text, on the stack when it fits: the journal copies it, so the common case
 * allocates nothing here (a heap block of a record's size costs glibc a consolidation of its
 * small free blocks each time). */
#define RECORD_STACK 4096

/* An unfinished record grows at each step (attempts, history, result). It is stored with room
 * to grow, blanks after the JSON (which every reader skips: jansson and the scheduler's raw
 * scan alike), and appended at the end of the actions tree (MDB_APPEND: ids are in creation
 * order), so that leaves are filled and the next versions replace it in place. Without the
 * room an appended leaf splits at the next step; without the append, a leaf that two records
 * nearly fill keeps one of them (BENCHMARKS.md, "Scale"). Never past what LMDB keeps inline
 * in a 4 KiB page: a larger value would take overflow pages of its own. */

static int record_text(const json_t *rec, jsonw_buf *text)
{
    if (jsonw_append(text, rec, JSON_COMPACT) != 0)
        return AR_E_NOMEM;
    size_t want = text->len + ACTION_RECORD_ROOM;
    if (want > ACTION_RECORD_PADDED_MAX)
        want = ACTION_RECORD_PADDED_MAX;
    if (text->len >= want || action_state_terminal(action_record_state(rec)))
        return AR_OK;
    if (jsonw_reserve(text, want - text->len) != 0)
        return AR_E_NOMEM;
    memset(text->data + text->len, ' ', want - text->len);
    text->len = want;
    return AR_OK;
}

int action_batch_store(journal_batch *b, const json_t *rec)
{
    const char *id = action_record_str(rec, "id");
    char stack[RECORD_STACK];
    jsonw_buf text = {stack, 0, sizeof stack, 1};
    if (record_text(rec, &text) != AR_OK) {
        jsonw_buf_free(&text);
        return AR_E_NOMEM;
    }
    journal_batch_put_last(b, JDB_ACTIONS, id, strlen(id), text.data, text.len);
    jsonw_buf_free(&text);
    if (action_state_terminal(action_record_state(rec))) {
        journal_batch_del(b, JDB_QUEUE, id, strlen(id));
    } else {
        const char *connector = action_record_str(rec, "connector");
        journal_batch_put(b, JDB_QUEUE, id, strlen(id), connector, strlen(connector));
    }
    return AR_OK;
}

static int parse_record(const void *val, size_t len, json_t **out, ar_error *err);

int action_txn_store(journal_txn *txn, const json_t *rec)
{
    const char *id = action_record_str(rec, "id");
    char stack[RECORD_STACK];
    jsonw_buf text = {stack, 0, sizeof stack, 1};
    if (record_text(rec, &text) != AR_OK) {
        jsonw_buf_free(&text);
        return AR_E_NOMEM;
    }
    int rc = journal_txn_put_last(txn, JDB_ACTIONS, id, strlen(id), text.data, text.len);
    jsonw_buf_free(&text);
    if (rc != AR_OK)
        return rc;
    if (action_state_terminal(action_record_state(rec)))
        return journal_txn_del(txn, JDB_QUEUE, id, strlen(id));
    const char *connector = action_record_str(rec, "connector");
    return journal_txn_put(txn, JDB_QUEUE, id, strlen(id), connector, strlen(connector));
}

int action_txn_load(journal_txn *txn, const char *id, json_t **out)
{
    const void *val;
    size_t len;
    int rc = journal_txn_get(txn, JDB_ACTIONS, id, strlen(id), &val, &len);
    if (rc != AR_OK)
        return rc;
    return parse_record(val, len, out, NULL);
}

static int parse_record(const void *val, size_t len, json_t **out, ar_error *err)
{
    json_error_t jerr;
    json_t *rec = json_loadb(val, len, 0, &jerr);
    if (!json_is_object(rec)) {
        json_decref(rec);
        return ar_error_set(err, AR_E_FORMAT, "record_format", "stored action record is not a JSON object: %s", jerr.text);
    }
    *out = rec;
    return AR_OK;
}

int action_load(journal_read *r, const char *id, json_t **out, ar_error *err)
{
    const void *val;
    size_t len;
    int rc = journal_get(r, JDB_ACTIONS, id, strlen(id), &val, &len);
    if (rc == AR_E_NOTFOUND)
        return ar_error_set(err, rc, "not_found", "no action with id %s", id);
    if (rc != AR_OK)
        return ar_error_set(err, rc, "record_format", "action %s cannot be read (status %d)", id, rc);
    return parse_record(val, len, out, err);
}

int action_load_by_id(journal *j, const char *id, json_t **out, ar_error *err)
{
    journal_read *r;
    int rc = journal_read_begin(j, &r, err);
    if (rc != AR_OK)
        return rc;
    rc = action_load(r, id, out, err);
    journal_read_end(r);
    return rc;
}

static int record_matches(const json_t *rec, const action_filter *f)
{
    if (f && f->state >= 0 && (int)action_record_state(rec) != f->state)
        return 0;
    if (f && f->connector && strcmp(action_record_str(rec, "connector"), f->connector) != 0)
        return 0;
    if (f && f->submitter && strcmp(action_record_str(rec, "submitter"), f->submitter) != 0)
        return 0;
    if (f && f->review && !json_is_true(json_object_get(rec, "review")))
        return 0;
    return 1;
}

int action_list(journal *j, const action_filter *f, const char *after, size_t limit,
                json_t **page, char next_out[ACTION_ID_LEN + 1], ar_error *err)
{
    enum { MAX_SCAN = 100000 };
    journal_read *r;
    journal_cursor *c = NULL;
    int rc = journal_read_begin(j, &r, err);
    if (rc != AR_OK)
        return rc;
    json_t *arr = json_array();
    next_out[0] = '\0';
    rc = journal_cursor_open(r, JDB_ACTIONS, &c);
    if (rc != AR_OK)
        goto done;

    const void *key, *val;
    size_t klen, vlen;
    if (after && *after) {
        key = after;
        klen = strlen(after);
        rc = journal_cursor_get(c, JOURNAL_SEEK_GE, &key, &klen, &val, &vlen);
        if (rc == AR_OK)
            rc = journal_cursor_get(c, JOURNAL_PREV, &key, &klen, &val, &vlen);
        else if (rc == AR_E_NOTFOUND) /* after is beyond the newest: start from the newest */
            rc = journal_cursor_get(c, JOURNAL_LAST, &key, &klen, &val, &vlen);
    } else {
        rc = journal_cursor_get(c, JOURNAL_LAST, &key, &klen, &val, &vlen);
    }
    for (size_t scanned = 0; rc == AR_OK && scanned < MAX_SCAN; scanned++) {
        json_t *rec = NULL;
        if (parse_record(val, vlen, &rec, err) != AR_OK) {
            rc = AR_E_FORMAT;
            break;
        }
        if (record_matches(rec, f)) {
            if (json_array_size(arr) == limit) {
                json_decref(rec);
                break; /* a next page exists: next_out names its predecessor */
            }
            json_array_append_new(arr, rec);
            snprintf(next_out, ACTION_ID_LEN + 1, "%.*s", (int)klen, (const char *)key);
        } else {
            json_decref(rec);
        }
        rc = journal_cursor_get(c, JOURNAL_PREV, &key, &klen, &val, &vlen);
    }
    if (rc == AR_E_NOTFOUND || rc == AR_OK) {
        if (rc == AR_E_NOTFOUND)
            next_out[0] = '\0'; /* walked to the oldest: no next page */
        rc = AR_OK;
    }
done:
    if (c)
        journal_cursor_close(c);
    journal_read_end(r);
    if (rc != AR_OK) {
        json_decref(arr);
        if (!err || !err->code[0])
            ar_error_set(err, rc, "internal", "listing actions failed (status %d)", rc);
        return rc;
    }
    *page = arr;
    return AR_OK;
}
