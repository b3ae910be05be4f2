/*
 * audit.c - the hash-chained audit trail (see audit.h and docs/AUDIT.md).
 *
 * Stored: JDB_AUDIT, seq (8 bytes big-endian) -> the entry as compact JSON, keys in the order
 * seq, time_ms, type, action, data, digest, chain (and "erased" once compacted); JDB_AUDIT_INDEX,
 * action id + seq -> empty. digest = BLAKE2b-256 of the canonical body (json_dumps with
 * JSON_SORT_KEYS | JSON_COMPACT of {seq, time_ms, type, action, data}); chain =
 * BLAKE2b-256(previous chain || digest), 32 zero bytes before seq 1.
 *
 * The head is read in the writer's transaction on every append, from the last entry itself:
 * its key gives the seq, and the "chain" that ends an entry written here gives the chain (an
 * entry of another form is parsed). Nothing is cached, so the daemon and an offline aioctl
 * append to one chain, and nothing but the entry and its index key is written (the head record
 * earlier versions kept in JDB_META is neither read nor written). Every appended entry
 * verifies: data that would not read back the same is refused (see "appending" below for how
 * that is found without parsing every entry).
 */
#include "audit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "action.h"
#include "jsonw.h"

#define HASH_LEN 32
/* How an entry's data is written (audit.h: the canonical form) */
#define AUDIT_DATA_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)
#define SEQ_KEY_LEN 8
#define INDEX_KEY_LEN (ACTION_ID_LEN + SEQ_KEY_LEN)
#define HEAD_DOMAIN "aiorun-audit-head-v1"
#define SIG_HEX (crypto_sign_BYTES * 2 + 1)
#define PK_HEX (crypto_sign_PUBLICKEYBYTES * 2 + 1)

/* ---- small helpers ------------------------------------------------------------------------ */

static void seq_key(uint64_t seq, unsigned char out[SEQ_KEY_LEN])
{
    for (int i = 0; i < SEQ_KEY_LEN; i++)
        out[i] = (unsigned char)(seq >> (8 * (SEQ_KEY_LEN - 1 - i)));
}

static uint64_t seq_of_key(const unsigned char *p)
{
    uint64_t seq = 0;
    for (int i = 0; i < SEQ_KEY_LEN; i++)
        seq = seq << 8 | p[i];
    return seq;
}

static void index_key(const char *action_id, uint64_t seq, unsigned char out[INDEX_KEY_LEN])
{
    memcpy(out, action_id, ACTION_ID_LEN);
    seq_key(seq, out + ACTION_ID_LEN);
}

/* A lowercase hex digit's value plus one; 0 for any other byte. */
static const unsigned char hex_value1[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/* hexlen bytes of text, exactly 2*len lowercase hex digits, into out[len]. One pass through a
 * table, without a branch per digit (digits and letters come at random: a branch mispredicts
 * half the time), and not constant-time as sodium_hex2bin is, which cost every append more
 * than the rest of reading the head: everything decoded here is public (digests, chains,
 * heads, signatures, public keys). */
static bool from_hexn(const char *hex, size_t hexlen, unsigned char *out, size_t len)
{
    const unsigned char *h = (const unsigned char *)hex;
    int bad = 0;
    if (hexlen != 2 * len)
        return false;
    for (size_t i = 0; i < len; i++) {
        int hi = hex_value1[h[2 * i]] - 1, lo = hex_value1[h[2 * i + 1]] - 1;
        bad |= hi | lo;
        out[i] = (unsigned char)((unsigned)hi << 4 | (unsigned)lo);
    }
    return bad >= 0;
}

/* A string of exactly 2*len lowercase hex digits into out[len]. */
static bool from_hex(const char *hex, unsigned char *out, size_t len)
{
    return hex && from_hexn(hex, strlen(hex), out, len);
}

/* 2*len lowercase hex digits and a NUL into hex (cap >= 2*len + 1, else ""): public values
 * only, like from_hexn (sodium_bin2hex is constant-time, and slower). */
static void to_hex(const unsigned char *bin, size_t len, char *hex, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    if (cap < 2 * len + 1) {
        if (cap)
            hex[0] = '\0';
        return;
    }
    for (size_t i = 0; i < len; i++) {
        hex[2 * i] = digits[bin[i] >> 4];
        hex[2 * i + 1] = digits[bin[i] & 0xf];
    }
    hex[2 * len] = '\0';
}

static void hash2(const unsigned char prev[HASH_LEN], const unsigned char digest[HASH_LEN],
                  unsigned char out[HASH_LEN])
{
    unsigned char both[2 * HASH_LEN];
    memcpy(both, prev, HASH_LEN);
    memcpy(both + HASH_LEN, digest, HASH_LEN);
    crypto_generichash(out, HASH_LEN, both, sizeof both, NULL, 0);
}

static bool valid_action_id(const char *id)
{
    return id && strlen(id) == ACTION_ID_LEN;
}

static int nomem(ar_error *err)
{
    return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in the audit trail");
}

/* A journal status without a message of its own, as an error. */
static int journal_failure(ar_error *err, int status, const char *what)
{
    switch (status) {
    case AR_E_NOMEM:
        return nomem(err);
    case AR_E_FULL:
        return ar_error_set(err, status, "storage_full", "the journal is full while %s", what);
    case AR_E_FORMAT:
        return ar_error_set(err, status, "record_format",
                            "an audit record has an unknown format version while %s", what);
    default:
        return ar_error_set(err, status, "audit_io", "journal error %d while %s", status, what);
    }
}

/* ---- entries ------------------------------------------------------------------------------ */

/* An entry as parsed from its stored JSON; the pointers are borrowed from doc. */
typedef struct entry {
    json_t *doc;
    uint64_t seq;
    json_t *action;   /* string or null */
    json_t *data;
    bool erased;
    unsigned char digest[HASH_LEN];
    unsigned char chain[HASH_LEN];
} entry;

/* The canonical body's digest from its five parts (borrowed). AR_E_INVALID when jansson
 * cannot write it (a string that is not UTF-8, put in with json_string_nocheck). */
static int body_digest(json_t *seq, json_t *time_ms, json_t *type, json_t *action, json_t *data,
                       unsigned char out[HASH_LEN])
{
    json_t *body = json_pack("{s:O,s:O,s:O,s:O,s:O}", "seq", seq, "time_ms", time_ms, "type",
                             type, "action", action, "data", data);
    if (!body)
        return AR_E_NOMEM;
    char *text = jsonw_dumps(body, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(body);
    if (!text)
        return AR_E_INVALID;
    crypto_generichash(out, HASH_LEN, (const unsigned char *)text, strlen(text), NULL, 0);
    free(text);
    return AR_OK;
}

static int entry_body_digest(const entry *e, unsigned char out[HASH_LEN])
{
    return body_digest(json_object_get(e->doc, "seq"), json_object_get(e->doc, "time_ms"),
                       json_object_get(e->doc, "type"), e->action, e->data, out);
}

/* Parse a stored entry. On failure *why says what is wrong (e->doc is then NULL). */
static int entry_parse(const void *val, size_t vlen, entry *e, char *why, size_t cap)
{
    static const char *const known[] = {"seq", "time_ms", "type", "action", "data",
                                        "digest", "chain", "erased"};
    json_error_t jerr;
    memset(e, 0, sizeof *e);
    json_t *doc = json_loadb(val, vlen, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!doc) {
        snprintf(why, cap, "not JSON (%.100s)", jerr.text);
        return AR_E_FORMAT;
    }
    const char *key;
    json_t *v;
    if (!json_is_object(doc)) {
        snprintf(why, cap, "not a JSON object");
        goto fail;
    }
    json_object_foreach(doc, key, v) {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0] && !ok; i++)
            ok = strcmp(key, known[i]) == 0;
        if (!ok) {
            snprintf(why, cap, "unexpected field \"%.64s\"", key);
            goto fail;
        }
    }
    json_t *seq = json_object_get(doc, "seq"), *erased = json_object_get(doc, "erased");
    e->action = json_object_get(doc, "action");
    e->data = json_object_get(doc, "data");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1 ||
        !json_is_integer(json_object_get(doc, "time_ms")) ||
        !json_is_string(json_object_get(doc, "type")) ||
        !(json_is_null(e->action) || json_is_string(e->action)) || !e->data ||
        (erased && !json_is_boolean(erased))) {
        snprintf(why, cap, "missing or ill-typed seq, time_ms, type, action, data or erased");
        goto fail;
    }
    if (json_is_string(e->action) && !valid_action_id(json_string_value(e->action))) {
        snprintf(why, cap, "an action id of %zu characters", json_string_length(e->action));
        goto fail;
    }
    if (!from_hex(json_string_value(json_object_get(doc, "digest")), e->digest, HASH_LEN) ||
        !from_hex(json_string_value(json_object_get(doc, "chain")), e->chain, HASH_LEN)) {
        snprintf(why, cap, "digest or chain is not 64 lowercase hex digits");
        goto fail;
    }
    e->seq = (uint64_t)json_integer_value(seq);
    e->erased = json_is_true(erased);
    e->doc = doc;
    return AR_OK;
fail:
    json_decref(doc);
    memset(e, 0, sizeof *e);
    return AR_E_FORMAT;
}

/* {"seq": n, "unreadable": true}: what readers get for an entry that cannot be parsed. */
static json_t *unreadable(uint64_t seq)
{
    return json_pack("{s:I,s:b}", "seq", (json_int_t)seq, "unreadable", 1);
}

/* ---- the anchor ----------------------------------------------------------------------------
 *
 * After a cut (audit_txn_cut) the trail starts at anchor.seq + 1 and chains from anchor.chain.
 * Stored in JDB_META under AUDIT_ANCHOR_KEY as compact JSON:
 * {"seq":S,"chain":"<64 hex>","time_ms":T,"cut_ms":C} (S, its chain and time; C: the cut's).
 */

typedef struct anchor {
    bool present;
    uint64_t seq;
    unsigned char chain[HASH_LEN];
    int64_t time_ms, cut_ms;
} anchor;

static bool anchor_parse(const void *val, size_t vlen, anchor *a)
{
    json_t *doc = json_loadb(val, vlen, JSON_REJECT_DUPLICATES, NULL);
    json_t *seq = json_object_get(doc, "seq"), *t = json_object_get(doc, "time_ms"),
           *c = json_object_get(doc, "cut_ms");
    bool ok = json_is_object(doc) && json_object_size(doc) == 4 && json_is_integer(seq) &&
              json_integer_value(seq) >= 1 && json_is_integer(t) && json_is_integer(c) &&
              from_hex(json_string_value(json_object_get(doc, "chain")), a->chain, HASH_LEN);
    if (ok) {
        a->present = true;
        a->seq = (uint64_t)json_integer_value(seq);
        a->time_ms = json_integer_value(t);
        a->cut_ms = json_integer_value(c);
    }
    json_decref(doc);
    return ok;
}

static int anchor_unreadable(ar_error *err)
{
    return ar_error_set(err, AR_E_FORMAT, "audit_anchor_unreadable",
                        "the audit anchor (where the trail was cut) cannot be read: run aioctl "
                        "audit verify");
}

/* The anchor as status (get: journal_txn_get's or journal_get's status, val/vlen its value):
 * a->present false without one; AR_E_FORMAT (code "audit_anchor_unreadable") when malformed. */
static int anchor_from(int get, const void *val, size_t vlen, anchor *a, ar_error *err)
{
    memset(a, 0, sizeof *a);
    if (get == AR_E_NOTFOUND)
        return AR_OK;
    if (get == AR_E_FORMAT || (get == AR_OK && !anchor_parse(val, vlen, a)))
        return anchor_unreadable(err);
    if (get != AR_OK)
        return journal_failure(err, get, "reading the audit anchor");
    return AR_OK;
}

static int txn_anchor(journal_txn *txn, anchor *a, ar_error *err)
{
    const void *val = NULL;
    size_t vlen = 0;
    int get = journal_txn_get(txn, JDB_META, AUDIT_ANCHOR_KEY, strlen(AUDIT_ANCHOR_KEY), &val,
                              &vlen);
    return anchor_from(get, val, vlen, a, err);
}

static int read_anchor(journal_read *r, anchor *a, ar_error *err)
{
    const void *val = NULL;
    size_t vlen = 0;
    int get = journal_get(r, JDB_META, AUDIT_ANCHOR_KEY, strlen(AUDIT_ANCHOR_KEY), &val, &vlen);
    return anchor_from(get, val, vlen, a, err);
}

/* ---- appending ----------------------------------------------------------------------------
 *
 * An append costs the writer no JSON work: the entry is prepared as text beforehand (on the
 * caller's thread for audit_batch_append), with only seq, digest and chain left to fill in,
 * and the head (seq and chain) is read from the two ends of the last entry's text rather than
 * parsed out of it.
 *
 * The canonical body, sorted keys, is {"action":A,"data":D,"seq":N,"time_ms":T,"type":Y}: with
 * A, D (sorted keys) and Y written by jansson exactly as it writes them inside the body, it is
 * the text body_pre + N + body_post, digested in parts. The stored entry is
 * {"seq":N,"time_ms":T,"type":Y,"action":A,"data":D,"digest":"..","chain":".."}: the data is
 * stored as the body has it, keys sorted (written once; entries from before this kept the
 * data's own key order, which reads back to the same body). D is text either way: JSON data
 * is written first (data_text) and then takes the path of text given by the caller
 * (audit_batch_append_text, whose canonical form is checked only in builds without NDEBUG).
 *
 * The check that what is stored reads back to the same digest (data that does not survive a
 * JSON round trip) is kept for the only data that can fail it once jansson agreed to write it
 * (jansson refuses text that is not UTF-8 when it writes): a NUL in an object key (written as
 * \u0000, which jansson's parser refuses in a key) and nesting deeper than its parser takes. A
 * scan of the written data finds both; only then is the stored text parsed and digested again.
 */

#define CHECK_DEPTH 1000   /* deeper data gets the full check (jansson parses up to 2048) */

/* An entry as text, but for its seq, digest and chain. The three parts live in buf. */
typedef struct prepared {
    char *buf;
    const char *body_pre, *body_post, *entry_mid;
    size_t body_pre_len, body_post_len, entry_mid_len;
    bool check;               /* the data may not read back the same: check the stored text */
    bool about_action;
    char action_id[ACTION_ID_LEN + 1];
} prepared;

static void prepared_fini(prepared *p)
{
    free(p->buf);
    p->buf = NULL;
}

static int unwritable(ar_error *err, const char *type)
{
    return ar_error_set(err, AR_E_INVALID, "audit_invalid",
                        "the data of a \"%.64s\" audit entry cannot be stored as JSON that reads "
                        "back the same (text that is not UTF-8?)", type);
}

/* Could written JSON text fail to read back the same? (A NUL escaped inside a string, which
 * jansson's parser refuses in an object key, or nesting deeper than CHECK_DEPTH.) */
static bool needs_check(const char *text, size_t len)
{
    /* The common case at memchr speed: no escaped NUL anywhere (a backslash is rare), and too
     * short to nest CHECK_DEPTH deep. */
    bool nul = false;
    const char *end = text + len;
    for (const char *p = text; !nul && p < end && (p = memchr(p, '\\', (size_t)(end - p))); p += 2)
        nul = end - p >= 6 && memcmp(p, "\\u0000", 6) == 0;
    if (!nul && len <= CHECK_DEPTH)
        return false;
    int depth = 0;
    bool in_string = false;
    for (const char *p = text; p < end; p++) {
        if (in_string) {
            if (*p == '\\') {
                if (end - p >= 6 && memcmp(p, "\\u0000", 6) == 0)
                    return true;
                if (p + 1 < end)
                    p++;
            } else if (*p == '"') {
                in_string = false;
            }
        } else if (*p == '"') {
            in_string = true;
        } else if (*p == '{' || *p == '[') {
            if (++depth > CHECK_DEPTH)
                return true;
        } else if (*p == '}' || *p == ']') {
            depth--;
        }
    }
    return false;
}

/* Prepare an entry whose data is the text data (len bytes; NULL: the data could not be
 * written as JSON, which is refused). AR_E_INVALID (code "audit_invalid") for what cannot be
 * an entry, AR_E_NOMEM. */
static int prepare_text(const char *type, const char *action_id, const char *data, size_t len,
                        int64_t time_ms, prepared *p, ar_error *err)
{
    char ystack[128], astack[ACTION_ID_LEN + 8];
    jsonw_buf y = {ystack, 0, sizeof ystack, 1}, a = {astack, 0, sizeof astack, 1};
    int status = AR_OK;
    memset(p, 0, sizeof *p);
    if (!type || !*type || (action_id && !valid_action_id(action_id)))
        return ar_error_set(err, AR_E_INVALID, "audit_invalid",
                            "an audit entry needs a type and, when about an action, its "
                            "%d-character id", ACTION_ID_LEN);
    /* Quoted as jansson quotes them inside the body. */
    if (jsonw_append_string(&y, type, strlen(type)) != 0 ||
        (action_id ? jsonw_append_string(&a, action_id, ACTION_ID_LEN)
                   : jsonw_append_raw(&a, "null", 4)) != 0) {
        /* (or out of memory, far less likely than a caller's bad bytes) */
        status = ar_error_set(err, AR_E_INVALID, "audit_invalid",
                              "an audit entry's %s is not UTF-8 text",
                              y.len ? "action id" : "type");
        goto done;
    }
    if (!data) {
        status = unwritable(err, type);
        goto done;
    }
    char t[32];
    size_t tl = (size_t)snprintf(t, sizeof t, "%" PRId64, time_ms);
    /* body_pre: {"action":A,"data":D,"seq":  body_post: ,"time_ms":T,"type":Y}
     * entry_mid: ,"time_ms":T,"type":Y,"action":A,"data":D,"digest":" */
    static const char k_action[] = "{\"action\":", k_data[] = ",\"data\":", k_seq[] = ",\"seq\":",
                      k_time[] = ",\"time_ms\":", k_type[] = ",\"type\":", k_digest[] = ",\"digest\":\"";
#define PUT(s, n) (memcpy(w, (s), (n)), w += (n))
#define PUTK(k) PUT(k, sizeof k - 1)
    size_t cap = (sizeof k_action + a.len + sizeof k_data + len + sizeof k_seq) +
                 (sizeof k_time + tl + sizeof k_type + y.len + 1) +
                 (sizeof k_time + tl + sizeof k_type + y.len + sizeof k_action + a.len +
                  sizeof k_data + len + sizeof k_digest);
    char *w = p->buf = malloc(cap);
    if (!w) {
        status = nomem(err);
        goto done;
    }
    p->body_pre = w;
    PUTK(k_action), PUT(a.data, a.len), PUTK(k_data), PUT(data, len), PUTK(k_seq);
    p->body_pre_len = (size_t)(w - p->body_pre);
    p->body_post = w;
    PUTK(k_time), PUT(t, tl), PUTK(k_type), PUT(y.data, y.len), PUT("}", 1);
    p->body_post_len = (size_t)(w - p->body_post);
    p->entry_mid = w;
    PUTK(k_time), PUT(t, tl), PUTK(k_type), PUT(y.data, y.len);
    PUT(",", 1), PUT(k_action + 1, sizeof k_action - 2), PUT(a.data, a.len);
    PUTK(k_data), PUT(data, len), PUTK(k_digest);
    p->entry_mid_len = (size_t)(w - p->entry_mid);
#undef PUTK
#undef PUT
    p->check = needs_check(data, len);
    if (action_id) {
        p->about_action = true;
        memcpy(p->action_id, action_id, ACTION_ID_LEN);
    }
done:
    jsonw_buf_free(&y);
    jsonw_buf_free(&a);
    return status;
}

/* The head from the last entry as this code writes it: {"seq":N,...,"chain":"<64 hex>"} with N
 * the seq its key names, read from the text's two ends without parsing. The tail is the
 * top-level member: after a comma a quote opens a key (a closing quote is never followed by a
 * letter), and a nested object's end would make the text end in "}}". False for anything
 * else (an erased entry, which ends with "erased":true, or one written otherwise). */
static bool head_from_tail(const void *key, size_t klen, const void *val, size_t vlen,
                           uint64_t *seq, unsigned char chain[HASH_LEN])
{
    static const char field[] = ",\"chain\":\"";
    const size_t flen = sizeof field - 1, tail = flen + 2 * HASH_LEN + 2; /* field hex "} */
    char prefix[32];
    if (klen != SEQ_KEY_LEN)
        return false;
    uint64_t at = seq_of_key(key);
    size_t plen = (size_t)snprintf(prefix, sizeof prefix, "{\"seq\":%" PRIu64 ",", at);
    const char *text = val, *end = text + vlen;
    if (at < 1 || vlen < plen + tail || memcmp(text, prefix, plen) != 0 ||
        memcmp(end - tail, field, flen) != 0 || memcmp(end - 2, "\"}", 2) != 0 ||
        !from_hexn(end - 2 - 2 * HASH_LEN, 2 * HASH_LEN, chain, HASH_LEN))
        return false;
    *seq = at;
    return true;
}

/* The head from the last entry (key, val): its seq and chain, from the tail when the entry
 * has the form this code writes, else parsed (an erased entry, or one written otherwise).
 * AR_E_FORMAT, code "audit_head_unreadable", when it cannot be read: the chain cannot go on
 * from it. */
static int head_of_last(const void *key, size_t klen, const void *val, size_t vlen,
                        uint64_t *seq, unsigned char chain[HASH_LEN], ar_error *err)
{
    char why[160];
    entry e = {0};
    if (head_from_tail(key, klen, val, vlen, seq, chain))
        return AR_OK;
    if (klen != SEQ_KEY_LEN || entry_parse(val, vlen, &e, why, sizeof why) != AR_OK ||
        e.seq != seq_of_key(key)) {
        if (klen == SEQ_KEY_LEN && e.doc)
            snprintf(why, sizeof why, "it is stored under another seq");
        else if (klen != SEQ_KEY_LEN)
            snprintf(why, sizeof why, "a key of %zu bytes", klen);
        json_decref(e.doc);
        return ar_error_set(err, AR_E_FORMAT, "audit_head_unreadable",
                            "the last audit entry cannot be read (%s): the chain cannot go on "
                            "from it (run aioctl audit verify)", why);
    }
    *seq = e.seq;
    memcpy(chain, e.chain, HASH_LEN);
    json_decref(e.doc);
    return AR_OK;
}

/* The head inside the transaction: the last seq and its chain, from the last entry alone
 * (head_of_last); when there is none, the anchor's, else 0 and zeros. The head record of
 * earlier versions is not read. */
static int txn_head(journal_txn *txn, uint64_t *seq, unsigned char chain[HASH_LEN],
                    ar_error *err)
{
    const void *key, *val;
    size_t klen, vlen;
    *seq = 0;
    memset(chain, 0, HASH_LEN);
    int status = journal_txn_last(txn, JDB_AUDIT, &key, &klen, &val, &vlen);
    if (status == AR_E_NOTFOUND) {
        /* Empty: a new trail, or one cut whole (not after audit_txn_cut, whose entry stays):
         * it goes on from the anchor. */
        anchor a;
        if ((status = txn_anchor(txn, &a, err)) == AR_OK && a.present) {
            *seq = a.seq;
            memcpy(chain, a.chain, HASH_LEN);
        }
        return status;
    }
    if (status == AR_E_FORMAT)
        return ar_error_set(err, AR_E_FORMAT, "audit_head_unreadable",
                            "the last audit entry has an unknown record format: the chain "
                            "cannot go on from it (run aioctl audit verify)");
    if (status != AR_OK)
        return journal_failure(err, status, "reading the audit head");
    return head_of_last(key, klen, val, vlen, seq, chain, err);
}

/* Chain a prepared entry onto the head and store it and its index key. */
static int append_prepared(journal_txn *txn, const prepared *p, const char *type,
                           uint64_t *seq_out, ar_error *err)
{
    unsigned char prev[HASH_LEN], digest[HASH_LEN], chain[HASH_LEN];
    char seq_text[24];
    uint64_t seq;
    int status;
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "audit_crypto", "libsodium cannot be initialised");
    if ((status = txn_head(txn, &seq, prev, err)) != AR_OK)
        return status;
    seq++;
    size_t sl = (size_t)snprintf(seq_text, sizeof seq_text, "%" PRIu64, seq);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, HASH_LEN);
    crypto_generichash_update(&st, (const unsigned char *)p->body_pre, p->body_pre_len);
    crypto_generichash_update(&st, (const unsigned char *)seq_text, sl);
    crypto_generichash_update(&st, (const unsigned char *)p->body_post, p->body_post_len);
    crypto_generichash_final(&st, digest, HASH_LEN);
    hash2(prev, digest, chain);

    /* {"seq":N <entry_mid> digest","chain":"chain"} */
    size_t tlen = 7 + sl + p->entry_mid_len + 64 + 11 + 64 + 2;
    char *text = malloc(tlen + 1), *w = text;
    if (!text)
        return nomem(err);
    memcpy(w, "{\"seq\":", 7), w += 7;
    memcpy(w, seq_text, sl), w += sl;
    memcpy(w, p->entry_mid, p->entry_mid_len), w += p->entry_mid_len;
    to_hex(digest, HASH_LEN, w, 2 * HASH_LEN + 1), w += 2 * HASH_LEN;
    memcpy(w, "\",\"chain\":\"", 11), w += 11;
    to_hex(chain, HASH_LEN, w, 2 * HASH_LEN + 1), w += 2 * HASH_LEN;
    memcpy(w, "\"}", 3);

    if (p->check) {
        /* What verify will see: the stored text must give back the same digest. */
        entry e = {0};
        char why[160];
        unsigned char check[HASH_LEN];
        bool same = entry_parse(text, tlen, &e, why, sizeof why) == AR_OK &&
                    entry_body_digest(&e, check) == AR_OK && memcmp(check, digest, HASH_LEN) == 0;
        json_decref(e.doc);
        if (!same) {
            free(text);
            return unwritable(err, type);
        }
    }
    unsigned char key[SEQ_KEY_LEN], ikey[INDEX_KEY_LEN];
    seq_key(seq, key);
    status = journal_txn_put_last(txn, JDB_AUDIT, key, sizeof key, text, tlen);
    free(text);
    if (status != AR_OK)
        return journal_failure(err, status, "appending to the audit trail");
    if (p->about_action) {
        index_key(p->action_id, seq, ikey);
        /* The newest action's keys are the last ones: they append; an older action's go in
         * their place. */
        if ((status = journal_txn_put_last(txn, JDB_AUDIT_INDEX, ikey, sizeof ikey, "", 0)) !=
            AR_OK)
            return journal_failure(err, status, "indexing the audit trail");
    }
    if (seq_out)
        *seq_out = seq;
    return AR_OK;
}

/* The data's canonical text into text (a buffer the caller owns): what prepare_text takes,
 * or NULL when the data cannot be written (not UTF-8, out of memory). NULL data is {}. */
static const char *data_text(jsonw_buf *text, const json_t *data)
{
    if (!data)
        return jsonw_append_raw(text, "{}", 2) == 0 ? text->data : NULL;
    return jsonw_append(text, data, AUDIT_DATA_FLAGS) == 0 ? text->data : NULL;
}

int audit_txn_append(journal_txn *txn, const char *type, const char *action_id, json_t *data,
                     int64_t now_ms, uint64_t *seq_out, ar_error *err)
{
    prepared p = {0};
    char stack[4096];
    jsonw_buf text = {stack, 0, sizeof stack, 1};
    int status;
    const char *written = data_text(&text, data);
    if (!txn)
        status = ar_error_set(err, AR_E_INVALID, "audit_invalid",
                              "an audit entry is appended inside a journal transaction");
    else if ((status = prepare_text(type, action_id, written, text.len, now_ms, &p, err)) ==
             AR_OK)
        status = append_prepared(txn, &p, type, seq_out, err);
    prepared_fini(&p);
    jsonw_buf_free(&text);
    json_decref(data);
    return status;
}

/* What audit_batch_append hands its callback: owned by the batch (journal_batch_apply_owned).
 * Prepared when the batch is built; it may be appended more than once (journal.h). */
typedef struct pending {
    prepared p;
    char type[];
} pending;

static void pending_free(void *arg)
{
    pending *p = arg;
    prepared_fini(&p->p);
    free(p);
}

static int pending_apply(journal_txn *txn, void *arg, ar_error *err)
{
    pending *p = arg;
    return append_prepared(txn, &p->p, p->type, NULL, err);
}

/* A batch whose entry could not be prepared fails with the error saved here. */
typedef struct saved_error {
    int status;
    ar_error err;
} saved_error;

static int fail_saved(journal_txn *txn, void *arg, ar_error *err)
{
    (void)txn;
    const saved_error *saved = arg;
    if (err)
        *err = saved->err;
    return saved->status;
}

static int fail_nomem(journal_txn *txn, void *arg, ar_error *err)
{
    (void)txn;
    (void)arg;
    return nomem(err);
}

/* Make the batch fail with status and err when it is committed. */
static void batch_fail(journal_batch *b, int status, const ar_error *err)
{
    saved_error *saved = malloc(sizeof *saved);
    if (!saved) {
        journal_batch_apply(b, fail_nomem, NULL); /* the batch must not commit without it */
        return;
    }
    saved->status = status;
    saved->err = *err;
    journal_batch_apply_owned(b, fail_saved, saved, free);
}

/* Add "append the entry with this data text" (NULL: unwritable data) to the batch. */
static void batch_add(journal_batch *b, const char *type, const char *action_id,
                      const char *data, size_t len)
{
    if (!type)
        type = "";
    size_t tl = strlen(type);
    pending *p = malloc(sizeof *p + tl + 1);
    if (!p) {
        journal_batch_apply(b, fail_nomem, NULL);
        return;
    }
    memcpy(p->type, type, tl + 1);
    ar_error err;
    ar_error_clear(&err);
    int status = prepare_text(type, action_id, data, len, ar_now_ms(), &p->p, &err);
    if (status == AR_OK) {
        journal_batch_apply_owned(b, pending_apply, p, pending_free);
        return;
    }
    prepared_fini(&p->p);
    free(p);
    batch_fail(b, status, &err);
}

void audit_batch_append(journal_batch *b, const char *type, const char *action_id, json_t *data)
{
    char stack[4096];
    jsonw_buf text = {stack, 0, sizeof stack, 1};
    const char *written = data_text(&text, data);
    batch_add(b, type, action_id, written, text.len);
    jsonw_buf_free(&text);
    json_decref(data);
}

#ifndef NDEBUG
/* Is text (len bytes) the canonical form of the JSON it holds? */
static bool canonical(const char *text, size_t len)
{
    char stack[4096];
    jsonw_buf again = {stack, 0, sizeof stack, 1};
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    bool same = v && jsonw_append(&again, v, AUDIT_DATA_FLAGS) == 0 && again.len == len &&
                memcmp(again.data, text, len) == 0;
    jsonw_buf_free(&again);
    json_decref(v);
    return same;
}
#endif

void audit_batch_append_text(journal_batch *b, const char *type, const char *action_id,
                             const char *data, size_t len)
{
#ifndef NDEBUG
    if (data && !canonical(data, len)) {
        ar_error err;
        ar_error_set(&err, AR_E_INVALID, "audit_invalid",
                     "the data of a \"%.64s\" audit entry is not canonical JSON text: %.*s",
                     type ? type : "", (int)(len < 160 ? len : 160), data);
        batch_fail(b, AR_E_INVALID, &err);
        return;
    }
#endif
    batch_add(b, type, action_id, data, len);
}

/* ---- the daemon's entry data, written as text -------------------------------------------
 *
 * Each writer gives the text jsonw_dumps(AUDIT_DATA_FLAGS) gave for the object the daemon built
 * with json_pack: members in sorted key order (written by hand: the keys are constants),
 * strings (json_pack "s") quoted by jsonw, nested values (json_pack "O") written by jsonw with
 * the same flags. json_pack failed on a NULL or non-UTF-8 "s" and on a NULL "O", and
 * audit_batch_append then stored {} (its NULL data): so does a writer. A nested value that
 * cannot be written made the dump fail (the batch failed): the writer fails.
 */

typedef struct data_writer {
    jsonw_buf *out;
    size_t start;         /* out->len before the writer began */
    bool first;
    bool pack_failed;     /* json_pack would have failed: the data is {} */
    bool dump_failed;     /* the dump would have failed (unless json_pack did first) */
} data_writer;

static void dw_begin(data_writer *w, jsonw_buf *out)
{
    *w = (data_writer){ .out = out, .start = out->len, .first = true };
    w->dump_failed = jsonw_append_raw(out, "{", 1) != 0;
}

/* ,"key": (key: plain ASCII, no escapes). Written after a failed dump too (the text is thrown
 * away), so that a later member can still show json_pack failing. */
static bool dw_key(data_writer *w, const char *key)
{
    char text[40];
    size_t kl = strlen(key), n = 0;
    if (w->pack_failed || kl + 4 > sizeof text) {
        w->dump_failed = true;
        return false;
    }
    if (!w->first)
        text[n++] = ',';
    text[n++] = '"';
    memcpy(text + n, key, kl), n += kl;
    text[n++] = '"';
    text[n++] = ':';
    w->first = false;
    if (jsonw_append_raw(w->out, text, n) != 0) {
        w->dump_failed = true;
        return false;
    }
    return true;
}

/* json_pack "s" */
static void dw_string(data_writer *w, const char *key, const char *s)
{
    if (w->pack_failed)
        return;
    if (!s || (dw_key(w, key) && jsonw_append_string(w->out, s, strlen(s)) != 0))
        w->pack_failed = true; /* NULL, not UTF-8 (or out of memory: json_pack failed too) */
}

/* json_pack "O" */
static void dw_value(data_writer *w, const char *key, const json_t *v)
{
    if (w->pack_failed)
        return;
    if (!v)
        w->pack_failed = true;
    else if (dw_key(w, key) && jsonw_append(w->out, v, AUDIT_DATA_FLAGS) != 0)
        w->dump_failed = true;
}

static int dw_end(data_writer *w)
{
    if (!w->pack_failed && !w->dump_failed && jsonw_append_raw(w->out, "}", 1) == 0)
        return 0;
    w->out->len = w->start;
    if (w->pack_failed)
        return jsonw_append_raw(w->out, "{}", 2);
    return -1;
}

/* v, or null when absent (json_pack "O" of "v ? v : json_null()") */
static const json_t *or_null(const json_t *v)
{
    return v ? v : json_null();
}

int audit_data_value(jsonw_buf *out, const json_t *v)
{
    size_t start = out->len;
    if (!v)
        return jsonw_append_raw(out, "{}", 2);
    if (jsonw_append(out, v, AUDIT_DATA_FLAGS) == 0)
        return 0;
    out->len = start;
    return -1;
}

int audit_data_received(jsonw_buf *out, const json_t *rec)
{
    data_writer w;
    dw_begin(&w, out);
    dw_string(&w, "action", action_record_str(rec, "action"));
    dw_string(&w, "connector", action_record_str(rec, "connector"));
    dw_string(&w, "digest", action_record_str(rec, "digest"));
    dw_string(&w, "effect", action_record_str(rec, "effect"));
    dw_string(&w, "idempotency_key", action_record_str(rec, "idempotency_key"));
    dw_value(&w, "proposer", or_null(json_object_get(rec, "proposer")));
    dw_string(&w, "submitter", action_record_str(rec, "submitter"));
    return dw_end(&w);
}

int audit_data_approval_requested(jsonw_buf *out, const json_t *rec)
{
    const json_t *ap = json_object_get(rec, "approval"), *four_eyes = json_object_get(ap, "four_eyes");
    data_writer w;
    dw_begin(&w, out);
    dw_value(&w, "expires_ms", or_null(json_object_get(ap, "expires_ms")));
    dw_value(&w, "four_eyes", four_eyes ? four_eyes : json_false());
    dw_value(&w, "roles", or_null(json_object_get(ap, "roles")));
    dw_value(&w, "summary", or_null(json_object_get(ap, "summary")));
    return dw_end(&w);
}

int audit_data_dispatched(jsonw_buf *out, const json_t *rec)
{
    data_writer w;
    dw_begin(&w, out);
    dw_value(&w, "attempt", json_object_get(rec, "attempts"));
    dw_string(&w, "digest", action_record_str(rec, "digest"));
    dw_string(&w, "idempotency_key", action_record_str(rec, "idempotency_key"));
    return dw_end(&w);
}

int audit_data_completed(jsonw_buf *out, const json_t *rec)
{
    const json_t *history = json_object_get(rec, "history");
    const json_t *last = json_array_get(history, json_array_size(history) - 1);
    /* the attempt the entry is about (an attempt not sent is not counted in "attempts") */
    const json_t *attempt = json_object_get(last, "attempt");
    data_writer w;
    dw_begin(&w, out);
    dw_value(&w, "attempt", attempt ? attempt : json_object_get(rec, "attempts"));
    /* what this call cost, when the plugin said */
    dw_value(&w, "cost", or_null(json_object_get(last, "cost")));
    dw_value(&w, "error_class", or_null(json_object_get(json_object_get(rec, "error"), "class")));
    dw_value(&w, "http_status", or_null(json_object_get(last, "http_status")));
    dw_value(&w, "latency_ms", or_null(json_object_get(last, "latency_ms")));
    dw_value(&w, "outcome", json_object_get(last, "outcome"));
    dw_string(&w, "state", action_state_name(action_record_state(rec)));
    return dw_end(&w);
}

int audit_data_unknown_outcome(jsonw_buf *out, const json_t *rec)
{
    const char *reason = json_string_value(json_object_get(json_object_get(rec, "error"), "message"));
    data_writer w;
    dw_begin(&w, out);
    dw_value(&w, "attempt", json_object_get(rec, "attempts"));
    dw_string(&w, "reason", reason ? reason : "");
    return dw_end(&w);
}

int audit_data_cancelled(jsonw_buf *out, const json_t *rec)
{
    data_writer w;
    dw_begin(&w, out);
    dw_string(&w, "by", action_record_str(rec, "cancel_requested_by"));
    return dw_end(&w);
}

int audit_data_recovered(jsonw_buf *out, const json_t *how)
{
    data_writer w;
    dw_begin(&w, out);
    dw_value(&w, "how", how);
    return dw_end(&w);
}

void audit_batch_append_data(journal_batch *b, const char *type, const char *action_id,
                             audit_data_writer write, const json_t *arg)
{
    char stack[2048];
    jsonw_buf text = {stack, 0, sizeof stack, 1};
    int rc = write(&text, arg);
    audit_batch_append_text(b, type, action_id, rc == 0 ? text.data : NULL, text.len);
    jsonw_buf_free(&text);
}

int audit_txn_erase(journal_txn *txn, uint64_t seq, ar_error *err)
{
    unsigned char key[SEQ_KEY_LEN];
    const void *val;
    size_t vlen;
    char why[160], *text = NULL;
    entry e;
    seq_key(seq, key);
    int status = journal_txn_get(txn, JDB_AUDIT, key, sizeof key, &val, &vlen);
    if (status == AR_E_NOTFOUND)
        return ar_error_set(err, status, "not_found", "there is no audit entry %" PRIu64, seq);
    if (status != AR_OK)
        return journal_failure(err, status, "erasing an audit entry");
    if (entry_parse(val, vlen, &e, why, sizeof why) != AR_OK)
        return ar_error_set(err, AR_E_FORMAT, "audit_unreadable",
                            "audit entry %" PRIu64 " cannot be read (%s)", seq, why);
    if (e.erased && json_is_null(e.data)) {
        json_decref(e.doc);
        return AR_OK;
    }
    if (strcmp(json_string_value(json_object_get(e.doc, "type")), "audit_cut") == 0) {
        /* audit_verify reads the newest one to check the anchor against */
        json_decref(e.doc);
        return ar_error_set(err, AR_E_INVALID, "audit_cut_kept",
                            "audit entry %" PRIu64 " records a cut: its body is kept", seq);
    }
    /* A body that no longer matches its digest was altered: erasing it would take the
     * evidence out of sight (verify can only check bodies), so it stays, and so does the
     * entry (audit_txn_cut refuses it too) until someone looks. */
    unsigned char digest[HASH_LEN];
    if ((status = entry_body_digest(&e, digest)) != AR_OK || memcmp(digest, e.digest, HASH_LEN) != 0) {
        json_decref(e.doc);
        if (status == AR_E_NOMEM)
            return nomem(err);
        return ar_error_set(err, AR_E_FORMAT, "audit_erase_refused",
                            "audit entry %" PRIu64 " does not match its digest: its body is kept "
                            "(run aioctl audit verify)", seq);
    }
    if (json_object_set_new(e.doc, "data", json_null()) ||
        json_object_set_new(e.doc, "erased", json_true()) ||
        !(text = jsonw_dumps(e.doc, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
        status = nomem(err);
    } else if ((status = journal_txn_put(txn, JDB_AUDIT, key, sizeof key, text,
                                         strlen(text))) != AR_OK) {
        journal_failure(err, status, "erasing an audit entry");
    }
    free(text);
    json_decref(e.doc);
    return status;
}

/* ---- cutting ------------------------------------------------------------------------------ */

static int cut_refused(ar_error *err, uint64_t seq, const char *why)
{
    return ar_error_set(err, AR_E_FORMAT, "audit_cut_refused",
                        "audit entry %" PRIu64 " does not verify (%s): nothing was cut (run "
                        "aioctl audit verify)", seq, why);
}

/* Entry seq in the transaction, checked as audit_verify checks it against prev (the chain
 * before it): parsed into *e (e->doc then owned by the caller). A cut deletes only entries
 * that verify, so that it cannot take a damaged one out of sight. */
static int cut_check(journal_txn *txn, uint64_t seq, const unsigned char prev[HASH_LEN], entry *e,
                     ar_error *err)
{
    unsigned char key[SEQ_KEY_LEN], digest[HASH_LEN], chain[HASH_LEN];
    const void *val;
    size_t vlen;
    char why[160];
    seq_key(seq, key);
    int status = journal_txn_get(txn, JDB_AUDIT, key, sizeof key, &val, &vlen);
    if (status == AR_E_NOTFOUND)
        return cut_refused(err, seq, "it is missing");
    if (status == AR_E_FORMAT)
        return cut_refused(err, seq, "an unknown record format");
    if (status != AR_OK)
        return journal_failure(err, status, "cutting the audit trail");
    if (entry_parse(val, vlen, e, why, sizeof why) != AR_OK)
        return cut_refused(err, seq, why);
    const char *bad_why = NULL;
    if (e->seq != seq) {
        bad_why = "it is stored under another seq";
    } else if (!(e->erased && json_is_null(e->data))) {
        if ((status = entry_body_digest(e, digest)) != AR_OK) {
            json_decref(e->doc);
            return status == AR_E_NOMEM ? nomem(err) : cut_refused(err, seq, "unwritable body");
        }
        if (memcmp(digest, e->digest, HASH_LEN) != 0)
            bad_why = "body digest mismatch";
    }
    if (!bad_why) {
        hash2(prev, e->digest, chain);
        if (memcmp(chain, e->chain, HASH_LEN) != 0)
            bad_why = "chain mismatch";
    }
    if (bad_why) {
        json_decref(e->doc);
        e->doc = NULL;
        return cut_refused(err, seq, bad_why);
    }
    return AR_OK;
}

int audit_txn_cut(journal_txn *txn, uint64_t through_seq, int64_t now_ms, uint64_t *seq_out,
                  ar_error *err)
{
    anchor a;
    unsigned char prev[HASH_LEN] = {0}, head[HASH_LEN];
    uint64_t last;
    int64_t through_time = 0;
    int status;
    if (!txn)
        return ar_error_set(err, AR_E_INVALID, "audit_invalid",
                            "a cut is made inside a journal transaction");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "audit_crypto", "libsodium cannot be initialised");
    if ((status = txn_anchor(txn, &a, err)) != AR_OK ||
        (status = txn_head(txn, &last, head, err)) != AR_OK)
        return status;
    uint64_t first = a.present ? a.seq + 1 : 1;
    if (a.present)
        memcpy(prev, a.chain, HASH_LEN);
    if (through_seq < first || through_seq > last)
        return ar_error_set(err, AR_E_INVALID, "audit_cut_invalid",
                            "the audit trail holds entries %" PRIu64 "..%" PRIu64 ": it cannot "
                            "be cut through seq %" PRIu64, first, last, through_seq);
    for (uint64_t seq = first; seq <= through_seq; seq++) {
        entry e;
        unsigned char key[SEQ_KEY_LEN], ikey[INDEX_KEY_LEN];
        if ((status = cut_check(txn, seq, prev, &e, err)) != AR_OK)
            return status;
        memcpy(prev, e.chain, HASH_LEN);
        through_time = json_integer_value(json_object_get(e.doc, "time_ms"));
        seq_key(seq, key);
        if ((status = journal_txn_del(txn, JDB_AUDIT, key, sizeof key)) == AR_OK &&
            json_is_string(e.action)) {
            index_key(json_string_value(e.action), seq, ikey);
            status = journal_txn_del(txn, JDB_AUDIT_INDEX, ikey, sizeof ikey);
        }
        json_decref(e.doc);
        if (status != AR_OK)
            return journal_failure(err, status, "cutting the audit trail");
    }
    char hex[AUDIT_HASH_HEX], text[256];
    to_hex(prev, HASH_LEN, hex, sizeof hex);
    int n = snprintf(text, sizeof text,
                     "{\"seq\":%" PRIu64 ",\"chain\":\"%s\",\"time_ms\":%" PRId64
                     ",\"cut_ms\":%" PRId64 "}", through_seq, hex, through_time, now_ms);
    if ((status = journal_txn_put(txn, JDB_META, AUDIT_ANCHOR_KEY, strlen(AUDIT_ANCHOR_KEY), text,
                                  (size_t)n)) != AR_OK)
        return journal_failure(err, status, "writing the audit anchor");
    /* The chain itself attests the cut (audit_verify holds the anchor to it). With nothing
     * left, the append goes on from the anchor just written. */
    return audit_txn_append(txn, "audit_cut", NULL,
                            json_pack("{s:s,s:s,s:I,s:I}", "by", "retention", "chain", hex,
                                      "through_seq", (json_int_t)through_seq, "through_time_ms",
                                      (json_int_t)through_time),
                            now_ms, seq_out, err);
}

/* ---- reading ------------------------------------------------------------------------------ */

static int begin(journal *j, journal_read **r, journal_cursor **c, journal_db db, ar_error *err)
{
    *c = NULL;
    int status = journal_read_begin(j, r, err);
    if (status != AR_OK)
        return status;
    if ((status = journal_cursor_open(*r, db, c)) != AR_OK) {
        journal_read_end(*r);
        *r = NULL;
        return journal_failure(err, status, "opening the audit trail");
    }
    return AR_OK;
}

static void finish(journal_read *r, journal_cursor *c)
{
    journal_cursor_close(c);
    journal_read_end(r);
}

/* The stored entry seq (a new reference): parsed, or the unreadable placeholder. NULL with
 * *status AR_E_NOTFOUND when there is none, or another status on failure. */
static json_t *load_entry(journal_read *r, uint64_t seq, int *status)
{
    unsigned char key[SEQ_KEY_LEN];
    const void *val;
    size_t vlen;
    char why[160];
    entry e;
    seq_key(seq, key);
    *status = journal_get(r, JDB_AUDIT, key, sizeof key, &val, &vlen);
    if (*status == AR_E_FORMAT) {
        *status = AR_OK;
        return unreadable(seq);
    }
    if (*status != AR_OK)
        return NULL;
    if (entry_parse(val, vlen, &e, why, sizeof why) != AR_OK)
        return unreadable(seq);
    return e.doc;
}

int audit_read_action(journal *j, const char *action_id, json_t **out, ar_error *err)
{
    journal_read *r;
    journal_cursor *c;
    *out = NULL;
    if (!valid_action_id(action_id))
        return ar_error_set(err, AR_E_INVALID, "audit_invalid",
                            "an action id has %d characters", ACTION_ID_LEN);
    int status = begin(j, &r, &c, JDB_AUDIT_INDEX, err);
    if (status != AR_OK)
        return status;
    json_t *list = json_array();
    if (!list) {
        status = nomem(err);
        goto done;
    }
    const void *key = action_id;
    size_t klen = ACTION_ID_LEN;
    for (int rc = journal_cursor_get(c, JOURNAL_SEEK_GE, &key, &klen, NULL, NULL);
         rc != AR_E_NOTFOUND; rc = journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, NULL, NULL)) {
        if (rc != AR_OK && rc != AR_E_FORMAT) {
            status = journal_failure(err, rc, "reading the action index");
            goto done;
        }
        if (klen < ACTION_ID_LEN || memcmp(key, action_id, ACTION_ID_LEN) != 0)
            break;
        if (klen != INDEX_KEY_LEN)
            continue; /* not ours to show; verify names it */
        uint64_t seq = seq_of_key((const unsigned char *)key + ACTION_ID_LEN);
        int got;
        json_t *e = load_entry(r, seq, &got);
        if (!e && got == AR_E_NOTFOUND)
            continue; /* an index entry for a missing entry: verify names it */
        if (!e || json_array_append_new(list, e) != 0) {
            status = e || got == AR_OK ? nomem(err)
                                       : journal_failure(err, got, "reading the audit trail");
            goto done;
        }
    }
    *out = list;
    list = NULL;
    ar_error_clear(err);
done:
    json_decref(list);
    finish(r, c);
    return status;
}

int audit_read_after(journal *j, uint64_t after, size_t limit, json_t **out, uint64_t *next,
                     ar_error *err)
{
    journal_read *r;
    journal_cursor *c;
    *out = NULL;
    if (next)
        *next = after;
    int status = begin(j, &r, &c, JDB_AUDIT, err);
    if (status != AR_OK)
        return status;
    json_t *list = json_array();
    if (!list) {
        status = nomem(err);
        goto done;
    }
    unsigned char start[SEQ_KEY_LEN];
    seq_key(after + 1, start);
    const void *key = start, *val;
    size_t klen = sizeof start, vlen;
    for (int rc = after == UINT64_MAX || limit == 0
                      ? AR_E_NOTFOUND
                      : journal_cursor_get(c, JOURNAL_SEEK_GE, &key, &klen, &val, &vlen);
         rc != AR_E_NOTFOUND && json_array_size(list) < limit;
         rc = journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, &val, &vlen)) {
        if (rc != AR_OK && rc != AR_E_FORMAT) {
            status = journal_failure(err, rc, "reading the audit trail");
            goto done;
        }
        if (klen != SEQ_KEY_LEN)
            continue;
        uint64_t seq = seq_of_key(key);
        entry e;
        char why[160];
        json_t *item = rc == AR_OK && entry_parse(val, vlen, &e, why, sizeof why) == AR_OK
                           ? e.doc
                           : unreadable(seq);
        if (!item || json_array_append_new(list, item) != 0) {
            status = nomem(err);
            goto done;
        }
        if (next)
            *next = seq;
    }
    *out = list;
    list = NULL;
    ar_error_clear(err);
done:
    json_decref(list);
    finish(r, c);
    return status;
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int audit_export(journal *j, int64_t since_ms, int fd, size_t *count, ar_error *err)
{
    journal_read *r;
    journal_cursor *c;
    size_t n = 0;
    if (count)
        *count = 0;
    int status = begin(j, &r, &c, JDB_AUDIT, err);
    if (status != AR_OK)
        return status;
    const void *key, *val;
    size_t klen, vlen;
    for (int rc = journal_cursor_get(c, JOURNAL_FIRST, &key, &klen, &val, &vlen);
         rc != AR_E_NOTFOUND; rc = journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, &val, &vlen)) {
        if (rc != AR_OK && rc != AR_E_FORMAT) {
            status = journal_failure(err, rc, "exporting the audit trail");
            goto done;
        }
        if (klen != SEQ_KEY_LEN)
            continue;
        entry e = {0};
        char why[160], *text = NULL;
        const char *line = val;
        size_t len = vlen;
        if (rc == AR_OK && entry_parse(val, vlen, &e, why, sizeof why) == AR_OK) {
            bool wanted = json_integer_value(json_object_get(e.doc, "time_ms")) >= since_ms;
            /* The stored bytes as they are (an outside verifier hashes what we hashed), unless
             * they would not make one line. */
            if (wanted && (memchr(val, '\n', vlen) || memchr(val, '\r', vlen)) &&
                !(text = jsonw_dumps(e.doc, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
                json_decref(e.doc);
                status = nomem(err);
                goto done;
            }
            json_decref(e.doc);
            if (!wanted)
                continue;
        } else {
            json_t *u = unreadable(seq_of_key(key));
            text = u ? jsonw_dumps(u, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            json_decref(u);
            if (!text) {
                status = nomem(err);
                goto done;
            }
        }
        if (text) {
            line = text;
            len = strlen(text);
        }
        int w = write_all(fd, line, len);
        if (w == 0)
            w = write_all(fd, "\n", 1);
        free(text);
        if (w != 0) {
            status = ar_error_set(err, AR_E_IO, "audit_export_write",
                                  "cannot write the audit export: %s", strerror(errno));
            goto done;
        }
        n++;
    }
    if (count)
        *count = n;
    ar_error_clear(err);
done:
    finish(r, c);
    return status;
}

int audit_head(journal *j, uint64_t *seq, char chain_hex[AUDIT_HASH_HEX], ar_error *err)
{
    journal_read *r;
    journal_cursor *c;
    unsigned char chain[HASH_LEN];
    *seq = 0;
    chain_hex[0] = '\0';
    int status = begin(j, &r, &c, JDB_AUDIT, err);
    if (status != AR_OK)
        return status;
    const void *key, *val;
    size_t klen, vlen;
    int rc = journal_cursor_get(c, JOURNAL_LAST, &key, &klen, &val, &vlen);
    anchor a;
    if (rc == AR_E_NOTFOUND) {
        /* empty: the anchor's head when the trail was cut whole (txn_head) */
        if ((status = read_anchor(r, &a, err)) == AR_OK && a.present) {
            *seq = a.seq;
            to_hex(a.chain, HASH_LEN, chain_hex, AUDIT_HASH_HEX);
        }
        if (status == AR_OK)
            ar_error_clear(err);
    } else if (rc != AR_OK && rc != AR_E_FORMAT) {
        status = journal_failure(err, rc, "reading the audit head");
    } else if (rc != AR_OK) {
        status = ar_error_set(err, AR_E_FORMAT, "audit_head_unreadable",
                              "the last audit entry cannot be read (run aioctl audit verify)");
    } else if ((status = head_of_last(key, klen, val, vlen, seq, chain, err)) == AR_OK) {
        /* the head an append would go on from (txn_head) */
        to_hex(chain, HASH_LEN, chain_hex, AUDIT_HASH_HEX);
        ar_error_clear(err);
    }
    finish(r, c);
    return status;
}

/* ---- verifying ---------------------------------------------------------------------------- */

static void bad(audit_verify_result *out, uint64_t seq, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void bad(audit_verify_result *out, uint64_t seq, const char *fmt, ...)
{
    va_list ap;
    out->ok = 0;
    out->first_bad_seq = seq;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof out->reason, fmt, ap);
    va_end(ap);
}

/* The newest audit_cut entry met on the walk (seq 0: none), to hold the anchor to. */
typedef struct cut_seen {
    uint64_t seq;
    bool readable;          /* its data has through_seq, chain and through_time_ms */
    uint64_t through_seq;
    unsigned char chain[HASH_LEN];
    int64_t through_time_ms, time_ms;
} cut_seen;

static void note_cut(const entry *e, cut_seen *cut)
{
    json_t *through = json_object_get(e->data, "through_seq"),
           *t = json_object_get(e->data, "through_time_ms");
    memset(cut, 0, sizeof *cut);
    cut->seq = e->seq;
    cut->time_ms = json_integer_value(json_object_get(e->doc, "time_ms"));
    cut->readable = !e->erased && json_is_integer(through) && json_integer_value(through) >= 1 &&
                    json_is_integer(t) &&
                    from_hex(json_string_value(json_object_get(e->data, "chain")), cut->chain,
                             HASH_LEN);
    if (cut->readable) {
        cut->through_seq = (uint64_t)json_integer_value(through);
        cut->through_time_ms = json_integer_value(t);
    }
}

/* One entry against what came before it. Returns AR_OK (out says whether it is sound) or a
 * failure status of the journal. */
static int verify_entry(journal_read *r, uint64_t seq, const void *val, size_t vlen,
                        unsigned char prev[HASH_LEN], uint64_t expected_seq,
                        const unsigned char *expected, cut_seen *cut, audit_verify_result *out)
{
    entry e;
    char why[160];
    unsigned char digest[HASH_LEN], chain[HASH_LEN];
    int status = AR_OK;
    if (entry_parse(val, vlen, &e, why, sizeof why) != AR_OK) {
        bad(out, seq, "unreadable entry: %s", why);
        return AR_OK;
    }
    if (e.seq != seq) {
        bad(out, seq, "out of order: the entry stored as seq %" PRIu64 " is entry %" PRIu64,
            seq, e.seq);
        goto done;
    }
    if (!(e.erased && json_is_null(e.data))) {
        if (entry_body_digest(&e, digest) != AR_OK) {
            status = AR_E_NOMEM;
            goto done;
        }
        if (memcmp(digest, e.digest, HASH_LEN) != 0) {
            bad(out, seq, "body digest mismatch");
            goto done;
        }
    }
    hash2(prev, e.digest, chain);
    if (memcmp(chain, e.chain, HASH_LEN) != 0) {
        bad(out, seq, "chain mismatch");
        goto done;
    }
    if (json_is_string(e.action)) {
        unsigned char ikey[INDEX_KEY_LEN];
        index_key(json_string_value(e.action), seq, ikey);
        int rc = journal_get(r, JDB_AUDIT_INDEX, ikey, sizeof ikey, NULL, NULL);
        if (rc == AR_E_NOTFOUND) {
            bad(out, seq, "not in the action index");
            goto done;
        }
        if (rc != AR_OK && rc != AR_E_FORMAT) {
            status = rc;
            goto done;
        }
    }
    if (expected && seq == expected_seq && memcmp(chain, expected, HASH_LEN) != 0) {
        bad(out, seq, "does not match the exported head");
        goto done;
    }
    if (strcmp(json_string_value(json_object_get(e.doc, "type")), "audit_cut") == 0)
        note_cut(&e, cut);
    memcpy(prev, chain, HASH_LEN);
    out->entries++;
    to_hex(chain, HASH_LEN, out->head, sizeof out->head);
done:
    json_decref(e.doc);
    return status;
}

/* Every index key names an entry of that action (none below first: the cut took those). */
static int verify_index(journal_read *r, uint64_t first, audit_verify_result *out)
{
    journal_cursor *c;
    int status = journal_cursor_open(r, JDB_AUDIT_INDEX, &c);
    if (status != AR_OK)
        return status;
    const void *key;
    size_t klen;
    for (int rc = journal_cursor_get(c, JOURNAL_FIRST, &key, &klen, NULL, NULL);
         rc != AR_E_NOTFOUND && out->ok;
         rc = journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, NULL, NULL)) {
        if (rc != AR_OK && rc != AR_E_FORMAT) {
            status = rc;
            break;
        }
        const unsigned char *k = key;
        uint64_t seq = klen >= SEQ_KEY_LEN ? seq_of_key(k + klen - SEQ_KEY_LEN) : 0;
        if (klen != INDEX_KEY_LEN) {
            bad(out, seq, "the action index has a malformed key (%zu bytes)", klen);
            break;
        }
        unsigned char skey[SEQ_KEY_LEN];
        const void *val;
        size_t vlen;
        char why[160];
        entry e;
        if (seq < first) {
            bad(out, seq, "the action index names an entry cut by retention (action %.*s)",
                ACTION_ID_LEN, (const char *)k);
            break;
        }
        seq_key(seq, skey);
        rc = journal_get(r, JDB_AUDIT, skey, sizeof skey, &val, &vlen);
        if (rc == AR_E_NOTFOUND) {
            bad(out, seq, "the action index names a missing entry (action %.*s)", ACTION_ID_LEN,
                (const char *)k);
            break;
        }
        if (rc != AR_OK || entry_parse(val, vlen, &e, why, sizeof why) != AR_OK) {
            bad(out, seq, "unreadable entry");
            break;
        }
        const char *action = json_string_value(e.action);
        if (!action || memcmp(action, k, ACTION_ID_LEN) != 0)
            bad(out, seq, "the action index lists this entry under action %.*s, which it is "
                "not about", ACTION_ID_LEN, (const char *)k);
        json_decref(e.doc);
    }
    journal_cursor_close(c);
    return status;
}

/* Once the kept chain is sound: the anchor must be the one the newest audit_cut entry
 * records (else entries were deleted and the anchor made up), and an exported head at or
 * before it is checked against it (at it) or cannot be (before it). */
static void verify_anchor(const anchor *a, const cut_seen *cut, uint64_t expected_seq,
                          const unsigned char *expected, audit_verify_result *out)
{
    if (!cut->seq) {
        bad(out, a->seq + 1, "the anchor is not attested by an audit_cut entry: entries up to "
            "seq %" PRIu64 " were deleted without one", a->seq);
        return;
    }
    if (!cut->readable || cut->through_seq != a->seq ||
        memcmp(cut->chain, a->chain, HASH_LEN) != 0 || cut->through_time_ms != a->time_ms ||
        cut->time_ms != a->cut_ms) {
        bad(out, cut->seq, "the anchor is not attested by an audit_cut entry: the newest one "
            "records %s (the anchor: through seq %" PRIu64 ")",
            cut->readable ? "another cut" : "no readable cut", a->seq);
        return;
    }
    if (expected_seq == 0 || expected_seq > a->seq)
        return;
    if (expected_seq == a->seq) {
        if (memcmp(expected, a->chain, HASH_LEN) != 0)
            bad(out, a->seq, "does not match the exported head (the chain at the cut, seq "
                "%" PRIu64 ")", a->seq);
        return;
    }
    char when[AR_TIME_LEN];
    ar_time_rfc3339(a->cut_ms, when);
    out->head_unchecked = 1;
    snprintf(out->head_note, sizeof out->head_note,
             "the kept head (seq %" PRIu64 ") is older than the trail kept: entries up to "
             "%" PRIu64 " were cut by retention at %s", expected_seq, a->seq, when);
}

int audit_verify(journal *j, uint64_t expected_seq, const char *expected_head,
                 audit_verify_result *out, ar_error *err)
{
    unsigned char expected[HASH_LEN], prev[HASH_LEN] = {0};
    journal_read *r;
    journal_cursor *c;
    memset(out, 0, sizeof *out);
    out->ok = 1;
    if (expected_seq > 0 && !from_hex(expected_head, expected, HASH_LEN))
        return ar_error_set(err, AR_E_INVALID, "audit_head_invalid",
                            "an exported head is 64 lowercase hex digits");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "audit_crypto", "libsodium cannot be initialised");
    int status = begin(j, &r, &c, JDB_AUDIT, err);
    if (status != AR_OK)
        return status;
    anchor a;
    cut_seen cut = {0};
    if ((status = read_anchor(r, &a, err)) != AR_OK) {
        if (status != AR_E_FORMAT)
            goto done;
        bad(out, 1, "the audit anchor (where the trail was cut) cannot be read");
        out->head[0] = '\0';
        status = AR_OK;
        ar_error_clear(err);
        goto done;
    }
    /* After a cut the trail starts after the anchor and chains from it. */
    uint64_t want = a.present ? a.seq + 1 : 1;
    if (a.present) {
        memcpy(prev, a.chain, HASH_LEN);
        out->cut_through = a.seq;
        out->cut_ms = a.cut_ms;
    }
    out->first_seq = want;
    const void *key, *val;
    size_t klen, vlen;
    for (int rc = journal_cursor_get(c, JOURNAL_FIRST, &key, &klen, &val, &vlen);
         rc != AR_E_NOTFOUND && out->ok;
         rc = journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, &val, &vlen)) {
        if (rc != AR_OK && rc != AR_E_FORMAT) {
            status = journal_failure(err, rc, "verifying the audit trail");
            goto done;
        }
        if (klen != SEQ_KEY_LEN) {
            bad(out, want, "unreadable entry: a key of %zu bytes", klen);
            break;
        }
        uint64_t seq = seq_of_key(key);
        if (seq > want) {
            bad(out, want, "sequence gap (expected %" PRIu64 ")", want);
            break;
        }
        if (seq < want && a.present) {
            bad(out, seq, "an entry kept below the cut (entries up to seq %" PRIu64 " were "
                "cut)", a.seq);
            break;
        }
        if (seq < want) { /* only seq 0 can come before 1 */
            bad(out, seq, "unreadable entry: seq %" PRIu64, seq);
            break;
        }
        if (rc == AR_E_FORMAT) {
            bad(out, seq, "unreadable entry: unknown record format");
            break;
        }
        if ((status = verify_entry(r, seq, val, vlen, prev, expected_seq,
                                   expected_seq ? expected : NULL, &cut, out)) != AR_OK) {
            journal_failure(err, status, "verifying the audit trail");
            goto done;
        }
        want++;
    }
    if (out->ok && expected_seq >= want)
        bad(out, want, "does not match the exported head: the chain ends at seq %" PRIu64
            ", before the exported seq %" PRIu64, want - 1, expected_seq);
    if (out->ok && a.present)
        verify_anchor(&a, &cut, expected_seq, expected, out);
    if (out->ok && (status = verify_index(r, out->first_seq, out)) != AR_OK) {
        journal_failure(err, status, "verifying the audit index");
        goto done;
    }
    if (!out->ok)
        out->head[0] = '\0';
    ar_error_clear(err);
done:
    finish(r, c);
    return status;
}

/* ---- heads -------------------------------------------------------------------------------- */

/* The signed message; false when doc's fields are malformed. */
static bool head_message(const json_t *doc, char *msg, size_t cap)
{
    json_t *seq = json_object_get(doc, "seq"), *time_ms = json_object_get(doc, "time_ms");
    const char *head = json_string_value(json_object_get(doc, "head"));
    unsigned char raw[HASH_LEN];
    if (!json_is_integer(seq) || json_integer_value(seq) < 0 || !json_is_integer(time_ms) ||
        !head)
        return false;
    if (json_integer_value(seq) == 0 ? *head != '\0' : !from_hex(head, raw, HASH_LEN))
        return false;
    int n = snprintf(msg, cap, HEAD_DOMAIN "\n%" JSON_INTEGER_FORMAT "\n%s\n%" JSON_INTEGER_FORMAT,
                     json_integer_value(seq), head, json_integer_value(time_ms));
    return n > 0 && (size_t)n < cap;
}

int audit_head_sign(json_t *doc, const unsigned char *secret_key, ar_error *err)
{
    char msg[192], sig_hex[SIG_HEX], pk_hex[PK_HEX];
    unsigned char sig[crypto_sign_BYTES], pk[crypto_sign_PUBLICKEYBYTES];
    if (!head_message(doc, msg, sizeof msg) || !secret_key)
        return ar_error_set(err, AR_E_INVALID, "audit_head_invalid",
                            "a head document has a seq, a head (64 hex digits) and a time_ms");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "audit_crypto", "libsodium cannot be initialised");
    crypto_sign_detached(sig, NULL, (const unsigned char *)msg, strlen(msg), secret_key);
    crypto_sign_ed25519_sk_to_pk(pk, secret_key);
    to_hex(sig, sizeof sig, sig_hex, sizeof sig_hex);
    to_hex(pk, sizeof pk, pk_hex, sizeof pk_hex);
    if (json_object_set_new(doc, "public_key", json_string(pk_hex)) ||
        json_object_set_new(doc, "signature", json_string(sig_hex)))
        return nomem(err);
    return AR_OK;
}

int audit_head_document(journal *j, const unsigned char *secret_key, json_t **out, ar_error *err)
{
    uint64_t seq;
    char head[AUDIT_HASH_HEX];
    *out = NULL;
    int status = audit_head(j, &seq, head, err);
    if (status != AR_OK)
        return status;
    json_t *doc = json_pack("{s:I,s:s,s:I}", "seq", (json_int_t)seq, "head", head, "time_ms",
                            (json_int_t)ar_now_ms());
    if (!doc)
        return nomem(err);
    if (secret_key && (status = audit_head_sign(doc, secret_key, err)) != AR_OK) {
        json_decref(doc);
        return status;
    }
    *out = doc;
    return AR_OK;
}

static int signature_error(ar_error *err, const char *why)
{
    return ar_error_set(err, AR_E_INVALID, "audit_head_signature", "the head document %s", why);
}

int audit_head_check(const json_t *doc, const unsigned char *public_key, ar_error *err)
{
    char msg[192];
    unsigned char sig[crypto_sign_BYTES], carried[crypto_sign_PUBLICKEYBYTES];
    if (!json_is_object(doc) || !head_message(doc, msg, sizeof msg))
        return signature_error(err, "is malformed: it needs seq, head (64 hex digits) and "
                                    "time_ms");
    json_t *sig_j = json_object_get(doc, "signature"), *pk_j = json_object_get(doc, "public_key");
    if (!sig_j) {
        if (public_key)
            return signature_error(err, "is not signed");
        return AR_OK;
    }
    if (!from_hex(json_string_value(sig_j), sig, sizeof sig))
        return signature_error(err, "has a malformed signature");
    if (pk_j && !from_hex(json_string_value(pk_j), carried, sizeof carried))
        return signature_error(err, "has a malformed public_key");
    if (!public_key && !pk_j)
        return signature_error(err, "carries no public_key to check its signature with");
    if (public_key && pk_j && sodium_memcmp(carried, public_key, sizeof carried) != 0)
        return signature_error(err, "was signed with another key than the one given");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "audit_crypto", "libsodium cannot be initialised");
    if (crypto_sign_verify_detached(sig, (const unsigned char *)msg, strlen(msg),
                                    public_key ? public_key : carried) != 0)
        return signature_error(err, "does not match its signature: it was changed, or signed "
                                    "with another key");
    ar_error_clear(err);
    return AR_OK;
}
