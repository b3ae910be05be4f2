/* retention.c - bounded history: stubs, deletions, erased audit bodies and the oldest audit
 * entries cut (see retention.h).
 *
 * Each transaction is one journal apply callback that reads where its walk stands from
 * JDB_META, collects up to `batch` keys with a cursor, closes the cursor, then reads and
 * changes each record through the transaction (so no write happens under an open cursor), and
 * writes the walk's new position in the same transaction. A callback may run more than once
 * for one commit, so it keeps nothing from an earlier run: its results are reset at its start
 * and only added to the caller's statistics once the commit is durable. */
#include "retention.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "action.h"
#include "audit.h"
#include "jsonw.h"

#define DAY_MS 86400000.0
#define KEY_BUF 512           /* LMDB's largest key is 511 bytes */
#define IDEM_KEY_MAX 2048
#define CHECKPOINT_CHUNK 64
#define MORE_PAUSE_MS 1000    /* the worker's pause before going on with a run that said more */

#define META_FRONT "retention.front"            /* front walk: the last action id looked at */
#define META_STUB "retention.stub"              /* stub walk: the last action id looked at */
#define META_DEFERRED_AT "retention.deferred_at" /* deferred walk: the last note looked at */
#define META_AUDIT "retention.audit_seq"        /* audit: the last seq looked at (8 bytes BE) */
#define DEFER_PREFIX "retention.deferred:"      /* + action id -> "": look at it again */
#define DEFER_PREFIX_LEN (sizeof DEFER_PREFIX - 1)

enum walk { WALK_DEFERRED, WALK_FRONT, WALK_STUB, WALK_AUDIT, WALK_CUT, WALK_COUNT };
static const char *const walk_names[WALK_COUNT] = {"deferred", "front", "stub", "audit", "audit cut"};

typedef struct collected {
    unsigned char key[KEY_BUF];
    size_t len;
} collected;

/* One transaction's work: what it is given, and what it did (reset on every run). */
typedef struct step {
    enum walk walk;
    size_t max;                         /* records to look at, 1..RETENTION_BATCH_MAX */
    int64_t stub_before, delete_before, erase_before, cut_before, now_ms;
    char stub_prefix[11], delete_prefix[11];
    size_t looked_at, stubbed, deleted, keys_deleted, deferred, audit_erased, audit_deleted;
    int finished;                       /* the walk reached its end for this run */
    size_t n;
    collected keys[RETENTION_BATCH_MAX];
    uint64_t seqs[RETENTION_BATCH_MAX]; /* the audit walk: entries to erase */
} step;

/* ---- small helpers ------------------------------------------------------------------------- */

/* (A failing hook's own message replaces this one: the journal reports the hook's.) */
static int journal_failed(ar_error *err, int rc, const char *what)
{
    return ar_error_set(err, rc, "retention_failed", "retention: %s failed (status %d)", what, rc);
}

/* memcmp order with the shorter key first on a tie: LMDB's default order. */
static int key_cmp(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static void seq_key(uint64_t seq, unsigned char out[8])
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(seq >> (8 * (7 - i)));
}

static uint64_t seq_of(const unsigned char *p)
{
    uint64_t seq = 0;
    for (int i = 0; i < 8; i++)
        seq = seq << 8 | p[i];
    return seq;
}

/* A walk's position from JDB_META into buf: its length, 0 when there is none. */
static size_t get_mark(journal_txn *txn, const char *name, unsigned char buf[KEY_BUF])
{
    const void *val;
    size_t len;
    if (journal_txn_get(txn, JDB_META, name, strlen(name), &val, &len) != AR_OK || len == 0 ||
        len >= KEY_BUF)
        return 0;
    memcpy(buf, val, len);
    return len;
}

/* When an action finished: finished_ms, else updated_ms, else created_ms. A record with none
 * of them is never due (INT64_MAX). */
static int64_t finish_ms(const json_t *rec)
{
    static const char *const fields[] = {"finished_ms", "updated_ms", "created_ms"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const json_t *v = json_object_get(rec, fields[i]);
        if (json_is_integer(v))
            return json_integer_value(v);
    }
    return INT64_MAX;
}

/* Collect into st->keys up to st->max keys of db: from `from` (the first key >= it; when
 * `after`, a key equal to it is passed over; flen 0: from the first key), while they begin
 * with prefix (plen 0: any) and sort below `below` (blen 0: no bound). *at_end: the walk met
 * its bound or the end of db. */
static int collect(journal_txn *txn, journal_db db, const void *from, size_t flen, int after,
                   const char *prefix, size_t plen, const void *below, size_t blen, step *st,
                   int *at_end, ar_error *err)
{
    journal_cursor *c;
    int rc = journal_txn_cursor_open(txn, db, &c);
    if (rc != AR_OK)
        return journal_failed(err, rc, "opening a cursor");
    const void *k = from, *v;
    size_t kl = flen, vl;
    st->n = 0;
    *at_end = 0;
    rc = journal_cursor_get(c, JOURNAL_SEEK_GE, &k, &kl, &v, &vl);
    if (rc == AR_OK && after && key_cmp(k, kl, from, flen) == 0)
        rc = journal_cursor_get(c, JOURNAL_NEXT, &k, &kl, &v, &vl);
    while (rc == AR_OK) {
        if ((plen && (kl < plen || memcmp(k, prefix, plen) != 0)) ||
            (blen && key_cmp(k, kl, below, blen) >= 0)) {
            *at_end = 1;
            break;
        }
        if (st->n == st->max)
            break;
        if (kl < KEY_BUF) {
            memcpy(st->keys[st->n].key, k, kl);
            st->keys[st->n].len = kl;
            st->n++;
        }
        rc = journal_cursor_get(c, JOURNAL_NEXT, &k, &kl, &v, &vl);
    }
    journal_cursor_close(c);
    if (rc == AR_E_NOTFOUND) {
        *at_end = 1;
        rc = AR_OK;
    }
    return rc == AR_OK ? AR_OK : journal_failed(err, rc, "walking the journal");
}

/* ---- one action ------------------------------------------------------------------------------ */

/* Delete the checkpoints of action id (keys: id + attempt). */
static int drop_checkpoints(journal_txn *txn, const void *id, size_t idlen, ar_error *err)
{
    for (;;) {
        unsigned char keys[CHECKPOINT_CHUNK][KEY_BUF];
        size_t lens[CHECKPOINT_CHUNK], n = 0;
        journal_cursor *c;
        int rc = journal_txn_cursor_open(txn, JDB_CHECKPOINTS, &c);
        if (rc != AR_OK)
            return journal_failed(err, rc, "opening the checkpoints");
        const void *k = id, *v;
        size_t kl = idlen, vl;
        rc = journal_cursor_get(c, JOURNAL_SEEK_GE, &k, &kl, &v, &vl);
        while (rc == AR_OK && n < CHECKPOINT_CHUNK && kl >= idlen && kl < KEY_BUF &&
               memcmp(k, id, idlen) == 0) {
            memcpy(keys[n], k, kl);
            lens[n++] = kl;
            rc = journal_cursor_get(c, JOURNAL_NEXT, &k, &kl, &v, &vl);
        }
        journal_cursor_close(c);
        if (rc != AR_OK && rc != AR_E_NOTFOUND)
            return journal_failed(err, rc, "reading the checkpoints");
        for (size_t i = 0; i < n; i++)
            if ((rc = journal_txn_del(txn, JDB_CHECKPOINTS, keys[i], lens[i])) != AR_OK)
                return journal_failed(err, rc, "deleting a checkpoint");
        if (n < CHECKPOINT_CHUNK)
            return AR_OK;
    }
}

static int deferred_key(const void *id, size_t idlen, unsigned char out[KEY_BUF + DEFER_PREFIX_LEN])
{
    memcpy(out, DEFER_PREFIX, DEFER_PREFIX_LEN);
    memcpy(out + DEFER_PREFIX_LEN, id, idlen);
    return (int)(DEFER_PREFIX_LEN + idlen);
}

/* Delete an action record with its idempotency key (when it still names this action), its
 * checkpoints, a stray queue entry and its deferred note. */
static int delete_action(journal_txn *txn, step *st, const void *id, size_t idlen, const json_t *rec,
                         ar_error *err)
{
    int rc;
    if ((rc = journal_txn_del(txn, JDB_ACTIONS, id, idlen)) != AR_OK ||
        (rc = journal_txn_del(txn, JDB_QUEUE, id, idlen)) != AR_OK)
        return journal_failed(err, rc, "deleting an action");
    if ((rc = drop_checkpoints(txn, id, idlen, err)) != AR_OK)
        return rc;
    /* Only a key the submitter gave is in JDB_IDEMPOTENCY (older records lack key_given: look). */
    if (!json_is_false(json_object_get(rec, "key_given"))) {
        char idem[IDEM_KEY_MAX];
        size_t ilen = action_idem_key(idem, sizeof idem, action_record_str(rec, "connector"),
                                      action_record_str(rec, "submitter"),
                                      action_record_str(rec, "idempotency_key"));
        const void *val;
        size_t vlen;
        if (ilen && (rc = journal_txn_get(txn, JDB_IDEMPOTENCY, idem, ilen, &val, &vlen)) == AR_OK) {
            if (vlen == ACTION_IDEM_VALUE_LEN && idlen == ACTION_ID_LEN && memcmp(val, id, idlen) == 0) {
                if ((rc = journal_txn_del(txn, JDB_IDEMPOTENCY, idem, ilen)) != AR_OK)
                    return journal_failed(err, rc, "deleting an idempotency key");
                st->keys_deleted++;
            }
        } else if (ilen && rc != AR_E_NOTFOUND) {
            return journal_failed(err, rc, "reading an idempotency key");
        }
    }
    unsigned char dkey[KEY_BUF + DEFER_PREFIX_LEN];
    if ((rc = journal_txn_del(txn, JDB_META, dkey, (size_t)deferred_key(id, idlen, dkey))) != AR_OK)
        return journal_failed(err, rc, "deleting a deferred note");
    st->deleted++;
    return AR_OK;
}

/* Replace a terminal record by its stub (same key, state and times). */
static int stub_action(journal_txn *txn, step *st, const void *id, size_t idlen, const json_t *rec,
                       ar_error *err)
{
    static const char *const kept[] = {"id", "connector", "action", "effect", "state", "submitter",
                                       "idempotency_key", "key_given", "digest", "created_ms",
                                       "updated_ms", "finished_ms", "cost"};
    json_t *stub = json_object();
    char *text = NULL;
    int rc = AR_E_NOMEM;
    if (!stub)
        goto nomem;
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        json_t *v = json_object_get(rec, kept[i]);
        if (v && json_object_set(stub, kept[i], v) != 0)
            goto nomem;
    }
    if (json_object_set_new(stub, "compacted", json_true()) != 0 || !(text = jsonw_dumps(stub, JSON_COMPACT)))
        goto nomem;
    if ((rc = journal_txn_put(txn, JDB_ACTIONS, id, idlen, text, strlen(text))) != AR_OK) {
        journal_failed(err, rc, "storing a stub");
        goto done;
    }
    if ((rc = drop_checkpoints(txn, id, idlen, err)) != AR_OK)
        goto done;
    st->stubbed++;
    goto done;
nomem:
    rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "retention: out of memory");
done:
    free(text);
    json_decref(stub);
    return rc;
}

/* Do what is due to action id now. *settled: nothing more will be due before its deletion (it
 * is a stub, was deleted, is gone or cannot be read), so it needs no deferred note. */
static int process_action(journal_txn *txn, step *st, const void *id, size_t idlen, int *settled,
                          ar_error *err)
{
    const void *val;
    size_t vlen;
    *settled = 1;
    int rc = journal_txn_get(txn, JDB_ACTIONS, id, idlen, &val, &vlen);
    if (rc == AR_E_NOTFOUND)
        return AR_OK;
    if (rc != AR_OK)
        return journal_failed(err, rc, "reading an action");
    json_t *rec = json_loadb(val, vlen, 0, NULL);
    if (!json_is_object(rec)) { /* never touch what cannot be read */
        json_decref(rec);
        return AR_OK;
    }
    rc = AR_OK;
    action_state state = action_record_state(rec);
    /* An unresolved unknown outcome waits for an operator, who needs its whole history. */
    if (!action_state_terminal(state) || state == ACTION_UNKNOWN_OUTCOME) {
        *settled = 0;
    } else {
        int64_t fin = finish_ms(rec);
        if (fin < st->delete_before)
            rc = delete_action(txn, st, id, idlen, rec, err);
        else if (json_is_true(json_object_get(rec, "compacted")))
            ; /* a stub, not due yet */
        else if (fin < st->stub_before)
            rc = stub_action(txn, st, id, idlen, rec, err);
        else
            *settled = 0;
    }
    json_decref(rec);
    return rc;
}

/* ---- the walks ------------------------------------------------------------------------------- */

static int put_mark(journal_txn *txn, const char *name, const void *key, size_t klen, ar_error *err)
{
    int rc = klen ? journal_txn_put(txn, JDB_META, name, strlen(name), key, klen)
                  : journal_txn_del(txn, JDB_META, name, strlen(name));
    return rc == AR_OK ? AR_OK : journal_failed(err, rc, "saving where compaction stands");
}

/* The deferred notes, from where the last transaction stopped; starts over once through. */
static int walk_deferred(journal_txn *txn, step *st, ar_error *err)
{
    unsigned char mark[KEY_BUF];
    size_t mlen = get_mark(txn, META_DEFERRED_AT, mark);
    int at_end, rc;
    if (mlen)
        rc = collect(txn, JDB_META, mark, mlen, 1, DEFER_PREFIX, DEFER_PREFIX_LEN, NULL, 0, st, &at_end, err);
    else
        rc = collect(txn, JDB_META, DEFER_PREFIX, DEFER_PREFIX_LEN, 0, DEFER_PREFIX, DEFER_PREFIX_LEN, NULL, 0,
                     st, &at_end, err);
    if (rc != AR_OK)
        return rc;
    for (size_t i = 0; i < st->n; i++) {
        const collected *k = &st->keys[i];
        int settled;
        st->looked_at++;
        if ((rc = process_action(txn, st, k->key + DEFER_PREFIX_LEN, k->len - DEFER_PREFIX_LEN, &settled,
                                 err)) != AR_OK)
            return rc;
        if (settled && (rc = journal_txn_del(txn, JDB_META, k->key, k->len)) != AR_OK)
            return journal_failed(err, rc, "deleting a deferred note");
    }
    st->finished = at_end;
    return put_mark(txn, META_DEFERRED_AT, at_end ? NULL : st->keys[st->n - 1].key,
                    at_end ? 0 : st->keys[st->n - 1].len, err);
}

/* The actions created before D, from the oldest; starts over once through. */
static int walk_front(journal_txn *txn, step *st, ar_error *err)
{
    unsigned char mark[KEY_BUF];
    size_t mlen = get_mark(txn, META_FRONT, mark);
    int at_end;
    int rc = collect(txn, JDB_ACTIONS, mark, mlen, mlen > 0, NULL, 0, st->delete_prefix, 10, st, &at_end, err);
    if (rc != AR_OK)
        return rc;
    for (size_t i = 0; i < st->n; i++) {
        int settled;
        st->looked_at++;
        if ((rc = process_action(txn, st, st->keys[i].key, st->keys[i].len, &settled, err)) != AR_OK)
            return rc;
    }
    st->finished = at_end;
    return put_mark(txn, META_FRONT, at_end ? NULL : st->keys[st->n - 1].key,
                    at_end ? 0 : st->keys[st->n - 1].len, err);
}

/* The actions created in [D, S), once each, in id order; what is not due yet is noted. */
static int walk_stub(journal_txn *txn, step *st, ar_error *err)
{
    unsigned char mark[KEY_BUF];
    size_t mlen = get_mark(txn, META_STUB, mark);
    int at_end, rc;
    if (mlen && key_cmp(mark, mlen, st->delete_prefix, 10) >= 0)
        rc = collect(txn, JDB_ACTIONS, mark, mlen, 1, NULL, 0, st->stub_prefix, 10, st, &at_end, err);
    else /* everything before D is the front walk's */
        rc = collect(txn, JDB_ACTIONS, st->delete_prefix, 10, 0, NULL, 0, st->stub_prefix, 10, st, &at_end, err);
    if (rc != AR_OK)
        return rc;
    for (size_t i = 0; i < st->n; i++) {
        const collected *k = &st->keys[i];
        int settled;
        st->looked_at++;
        if ((rc = process_action(txn, st, k->key, k->len, &settled, err)) != AR_OK)
            return rc;
        if (!settled && DEFER_PREFIX_LEN + k->len < KEY_BUF) {
            unsigned char dkey[KEY_BUF + DEFER_PREFIX_LEN];
            if ((rc = journal_txn_put(txn, JDB_META, dkey, (size_t)deferred_key(k->key, k->len, dkey), "", 0)) !=
                AR_OK)
                return journal_failed(err, rc, "noting an action to look at again");
            st->deferred++;
        }
    }
    st->finished = at_end;
    /* Never back: the mark stays on the last action looked at, even at the end. */
    return st->n ? put_mark(txn, META_STUB, st->keys[st->n - 1].key, st->keys[st->n - 1].len, err) : AR_OK;
}

/* Audit entries from the last one looked at, oldest first, until one is not old enough. */
static int walk_audit(journal_txn *txn, step *st, ar_error *err)
{
    unsigned char mark[KEY_BUF], from[8];
    size_t mlen = get_mark(txn, META_AUDIT, mark);
    uint64_t last = mlen == 8 ? seq_of(mark) : 0;
    seq_key(last + 1, from);
    journal_cursor *c;
    int rc = journal_txn_cursor_open(txn, JDB_AUDIT, &c);
    if (rc != AR_OK)
        return journal_failed(err, rc, "opening the audit trail");
    const void *k = from, *v;
    size_t kl = sizeof from, vl, to_erase = 0, walked = 0;
    int at_end = 0;
    rc = journal_cursor_get(c, JOURNAL_SEEK_GE, &k, &kl, &v, &vl);
    while (rc == AR_OK && walked < st->max) {
        if (kl != 8) { /* not an entry key: the trail ends here for this walk */
            at_end = 1;
            break;
        }
        json_t *e = json_loadb(v, vl, 0, NULL);
        const json_t *t = json_object_get(e, "time_ms");
        if (json_is_integer(t) && json_integer_value(t) >= st->erase_before) {
            json_decref(e);
            at_end = 1;
            break;
        }
        /* An unreadable entry is passed over: erasing it would fail, and verify names it. An
         * audit_cut entry keeps its body (verify holds the anchor to it). */
        const json_t *data = json_object_get(e, "data");
        const char *type = json_string_value(json_object_get(e, "type"));
        if (json_is_integer(t) && data && !json_is_null(data) && !(type && strcmp(type, "audit_cut") == 0))
            st->seqs[to_erase++] = seq_of(k);
        json_decref(e);
        last = seq_of(k);
        walked++;
        rc = journal_cursor_get(c, JOURNAL_NEXT, &k, &kl, &v, &vl);
    }
    journal_cursor_close(c);
    if (rc == AR_E_NOTFOUND) {
        at_end = 1;
        rc = AR_OK;
    }
    if (rc != AR_OK)
        return journal_failed(err, rc, "walking the audit trail");
    st->looked_at += walked;
    for (size_t i = 0; i < to_erase; i++) {
        ar_error e = {0};
        rc = audit_txn_erase(txn, st->seqs[i], &e);
        if (rc == AR_E_FORMAT || rc == AR_E_NOTFOUND)
            continue; /* it changed nothing; audit_verify names a damaged entry */
        if (rc != AR_OK) {
            if (err)
                *err = e;
            return rc;
        }
        st->audit_erased++;
    }
    st->finished = at_end;
    if (!walked)
        return AR_OK;
    seq_key(last, mark);
    return put_mark(txn, META_AUDIT, mark, 8, err);
}

/* The oldest audit entries, while older than cut_before: deleted through the last of them
 * (audit_txn_cut), always from the first one kept, so only ever a prefix of the chain. The
 * walk needs no mark: what it cut is gone, and it stops at the first entry not due. */
static int walk_cut(journal_txn *txn, step *st, ar_error *err)
{
    journal_cursor *c;
    int rc = journal_txn_cursor_open(txn, JDB_AUDIT, &c);
    if (rc != AR_OK)
        return journal_failed(err, rc, "opening the audit trail");
    const void *k, *v;
    size_t kl, vl, walked = 0;
    uint64_t through = 0;
    int at_end = 0;
    rc = journal_cursor_get(c, JOURNAL_FIRST, &k, &kl, &v, &vl);
    while (rc == AR_OK && walked < st->max) {
        json_t *e = kl == 8 ? json_loadb(v, vl, 0, NULL) : NULL;
        const json_t *t = json_object_get(e, "time_ms");
        /* Not due, or not readable: the cut stops before it (audit_txn_cut would refuse an
         * entry that does not verify; verify names it). */
        bool due = json_is_integer(t) && json_integer_value(t) < st->cut_before;
        json_decref(e);
        if (!due) {
            at_end = 1;
            break;
        }
        through = seq_of(k);
        walked++;
        rc = journal_cursor_get(c, JOURNAL_NEXT, &k, &kl, &v, &vl);
    }
    journal_cursor_close(c);
    if (rc == AR_E_NOTFOUND) {
        at_end = 1;
        rc = AR_OK;
    }
    if (rc != AR_OK)
        return journal_failed(err, rc, "walking the audit trail");
    st->looked_at += walked;
    st->finished = at_end;
    if (!walked)
        return AR_OK;
    if ((rc = audit_txn_cut(txn, through, st->now_ms, NULL, err)) != AR_OK)
        return rc;
    st->audit_deleted += walked;
    return AR_OK;
}

static int step_apply(journal_txn *txn, void *arg, ar_error *err)
{
    step *st = arg;
    st->looked_at = st->stubbed = st->deleted = st->keys_deleted = st->deferred = st->audit_erased = 0;
    st->audit_deleted = 0;
    st->finished = 0;
    st->n = 0;
    switch (st->walk) {
    case WALK_DEFERRED: return walk_deferred(txn, st, err);
    case WALK_FRONT: return walk_front(txn, st, err);
    case WALK_STUB: return walk_stub(txn, st, err);
    case WALK_AUDIT: return walk_audit(txn, st, err);
    default: return walk_cut(txn, st, err);
    }
}

/* ---- a run ----------------------------------------------------------------------------------- */

static int64_t days_before(int64_t now_ms, double days)
{
    return now_ms - (int64_t)(days * DAY_MS);
}

int retention_run(journal *j, const retention_opts *opts, int64_t now_ms, retention_stats *stats,
                  ar_error *err)
{
    memset(stats, 0, sizeof *stats);
    int64_t started = ar_mono_ms();
    if (!j || !opts || !(opts->actions_days > 0) || !(opts->audit_bodies_days > 0) ||
        !(opts->idempotency_days >= opts->actions_days) || !(opts->audit_entries_days > 0) ||
        !(opts->audit_entries_days >= opts->audit_bodies_days))
        return ar_error_set(err, AR_E_INVALID, "retention_invalid", "retention: the days must be above 0, "
                            "idempotency_days at least actions_days and audit_entries_days at least "
                            "audit_bodies_days");
    step *st = calloc(1, sizeof *st);
    if (!st)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "retention: out of memory");
    size_t limit = opts->walk_limit ? opts->walk_limit : RETENTION_WALK_LIMIT;
    size_t batch = opts->batch && opts->batch <= RETENTION_BATCH_MAX ? opts->batch : RETENTION_BATCH_MAX;
    st->stub_before = days_before(now_ms, opts->actions_days);
    st->delete_before = days_before(now_ms, opts->idempotency_days);
    st->erase_before = days_before(now_ms, opts->audit_bodies_days);
    st->cut_before = days_before(now_ms, opts->audit_entries_days);
    st->now_ms = now_ms;
    action_id_time_prefix(st->stub_before, st->stub_prefix);
    action_id_time_prefix(st->delete_before, st->delete_prefix);

    int rc = AR_OK;
    for (int w = 0; w < WALK_COUNT && rc == AR_OK; w++) {
        size_t budget = limit;
        int finished = 0;
        while (budget > 0 && !finished) {
            if (opts->should_stop && opts->should_stop(opts->stop_arg))
                break;
            st->walk = (enum walk)w;
            st->max = budget < batch ? budget : batch;
            journal_batch *b = journal_batch_new();
            journal_batch_apply(b, step_apply, st);
            rc = journal_commit(j, b, err);
            journal_batch_free(b);
            if (rc != AR_OK) {
                if (err && !err->code[0])
                    ar_error_set(err, rc, "retention_failed", "retention: the %s walk's commit failed (status %d)",
                                 walk_names[w], rc);
                break;
            }
            stats->transactions++;
            stats->looked_at += st->looked_at;
            stats->stubbed += st->stubbed;
            stats->deleted += st->deleted;
            stats->keys_deleted += st->keys_deleted;
            stats->deferred += st->deferred;
            stats->audit_erased += st->audit_erased;
            stats->audit_deleted += st->audit_deleted;
            finished = st->finished;
            size_t used = st->looked_at ? st->looked_at : 1; /* always progress toward the limit */
            budget = used < budget ? budget - used : 0;
        }
        if (!finished)
            stats->more = 1;
    }
    free(st);
    stats->took_ms = ar_mono_ms() - started;
    return rc;
}

/* ---- the daemon's thread --------------------------------------------------------------------- */

struct retention_worker {
    journal *j;
    retention_opts opts;
    int64_t interval_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
};

static int worker_stopping(void *arg)
{
    retention_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    int stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    return stop;
}

static void *worker_main(void *arg)
{
    retention_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        pthread_mutex_unlock(&w->mu);
        retention_stats s;
        ar_error err = {0};
        int rc = retention_run(w->j, &w->opts, ar_now_ms(), &s, &err);
        if (rc != AR_OK)
            ar_log_as("warn", "retention", NULL, "compaction failed after %zu stubbed, %zu deleted: %s (%s)",
                      s.stubbed, s.deleted, err.message, err.code[0] ? err.code : "error");
        else
            ar_log_as("info", "retention", NULL, "compaction: %zu action(s) made stubs, %zu deleted with %zu "
                      "idempotency key(s), %zu audit bod%s erased, %zu audit entr%s deleted, %zu noted for "
                      "later; %zu record(s) looked at in %zu transaction(s), %" PRId64 " ms%s", s.stubbed,
                      s.deleted, s.keys_deleted, s.audit_erased, s.audit_erased == 1 ? "y" : "ies",
                      s.audit_deleted, s.audit_deleted == 1 ? "y" : "ies", s.deferred, s.looked_at,
                      s.transactions, s.took_ms, s.more ? "; more to do" : "");
        int64_t pause = rc == AR_OK && s.more ? MORE_PAUSE_MS : w->interval_ms;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += (time_t)(pause / 1000);
        until.tv_nsec += (long)(pause % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&w->mu);
        while (!w->stop && pthread_cond_timedwait(&w->cv, &w->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int retention_worker_start(journal *j, const retention_opts *opts, int interval_s,
                           retention_worker **out, ar_error *err)
{
    *out = NULL;
    if (!j || !opts || interval_s < 1)
        return ar_error_set(err, AR_E_INVALID, "retention_invalid", "retention: no journal, options or interval");
    retention_worker *w = calloc(1, sizeof *w);
    if (!w)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "retention: out of memory");
    w->j = j;
    w->opts = *opts;
    w->opts.should_stop = worker_stopping;
    w->opts.stop_arg = w;
    w->interval_ms = (int64_t)interval_s * 1000;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int e = pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (e) {
        free(w);
        return ar_error_set(err, AR_E_IO, "retention_failed", "retention: cannot make a condition variable");
    }
    pthread_mutex_init(&w->mu, NULL);
    if ((e = pthread_create(&w->thread, NULL, worker_main, w)) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return ar_error_set(err, AR_E_IO, "retention_failed", "retention: cannot start its thread: %s", strerror(e));
    }
    *out = w;
    return AR_OK;
}

void retention_worker_stop(retention_worker *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
