/*
 * counters.c - guardrail counters kept by the journal (see counters.h).
 *
 * The hook on JDB_ACTIONS, for a stored record, with E the entry "a:" + action id:
 *   - counted state, no E: add the action to every maintained definition it matches (into the
 *     bucket of its time, unless that bucket has left the ring) and write E with what was added;
 *     E is written whenever a definition matched, even if every bucket had left the ring (then
 *     it is {}), so that E present means "already counted" and later puts leave it alone;
 *   - state not counted, E present: take off each element whose definition is still maintained
 *     and whose bucket the ring still holds, and delete E;
 *   - otherwise nothing. A record that is not a JSON object is never counted.
 * Cost counters are kept apart, with K the entry "k:" + action id ({"<id>": [bucket_start,
 * counted]}): for each maintained cost definition the record matches, whatever its state, the
 * rise of record.cost[unit] over K's counted (if any) is added at the record's updated_ms and K
 * notes the new total (also when that bucket had left the ring: the spend is out of every
 * window, and must not be added again at a later put's time). Sum and count definitions never
 * see K; cost definitions never see E. With no cost definition maintained, K is neither read
 * nor written.
 * For a deleted record it deletes E and K and takes nothing off. With no "defs" record, or an
 * empty one, a put returns before the record is parsed (and it is parsed once for both kinds).
 * So does a put of a record no maintained definition can match (read from its text: its
 * "connector" and "action" members, see may_match) and that has no E: it would add nothing,
 * and with no E it has nothing to take off (an E left by definitions since removed is the one
 * thing such a record may still need: it is found by key, and then the record is parsed).
 * A "defs" record that cannot be read fails the batch (counters_damaged): counting wrongly
 * would let guardrails slip; counters_install repairs it (it does not need to read the old
 * record).
 *
 * Known limits, as counters.h says: the backfill (and counters_recompute) looks at actions
 * created since now - window - 30 days; an action created earlier but approved within the
 * window is counted by the hook, not by a backfill. For cost definitions, the backfill sees an
 * action's total and last update only, and puts the total there (no earlier than the hook).
 */
#include "counters.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "action.h"
#include "jsonw.h"

#define MIN_WINDOW_MS 1000LL
#define MAX_WINDOW_MS (366LL * 24 * 3600 * 1000)

/* ---- definitions ------------------------------------------------------------------------- */

/* A cost unit as connectors report it (sandbox.c checks the same): 1 to 16 of [A-Za-z0-9_]. */
static int valid_unit(const char *unit)
{
    size_t n = strlen(unit);
    if (n == 0 || n > COUNTERS_UNIT_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)unit[i]) && unit[i] != '_')
            return 0;
    return 1;
}

static int valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= COUNTERS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '_')
            return 0;
    return 1;
}

/* "90s", "30m", "24h", "7d" or a plain number of seconds (a string or a JSON number). */
static int parse_window(const json_t *w, int64_t *out_ms)
{
    double seconds;
    if (json_is_number(w)) {
        seconds = json_number_value(w);
    } else if (json_is_string(w)) {
        const char *s = json_string_value(w);
        /* Plain decimal digits only: strtod alone would take " 1", "+1", "0x1f", "1e3", "inf". */
        const char *p = s;
        while (isdigit((unsigned char)*p))
            p++;
        if (p == s)
            return -1;
        if (*p == '.') {
            const char *frac = ++p;
            while (isdigit((unsigned char)*p))
                p++;
            if (p == frac)
                return -1;
        }
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (end != p || errno || !isfinite(v))
            return -1;
        double unit = 1;
        if (*end == 's')
            unit = 1, end++;
        else if (*end == 'm')
            unit = 60, end++;
        else if (*end == 'h')
            unit = 3600, end++;
        else if (*end == 'd')
            unit = 86400, end++;
        if (*end)
            return -1;
        seconds = v * unit;
    } else {
        return -1;
    }
    if (!isfinite(seconds) || seconds * 1000 < MIN_WINDOW_MS || seconds * 1000 > MAX_WINDOW_MS)
        return -1;
    *out_ms = llround(seconds * 1000); /* a fraction times a unit may fall just short of a whole ms */
    return 0;
}

static int copy_field(const json_t *decl, const char *field, char *dst, size_t cap,
                      const char *name, int required, ar_error *err)
{
    const json_t *v = json_object_get(decl, field);
    dst[0] = '\0';
    if (!v) {
        if (required)
            return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                                "counter \"%s\" needs a %s (a string)", name, field);
        return AR_OK;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v)) /* no NUL inside */
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\": %s must be a non-empty string", name, field);
    if (json_string_length(v) >= cap)
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\": %s is longer than %zu characters", name, field, cap - 1);
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return AR_OK;
}

/* The hashed text of a sum or count definition has three NULs; a cost definition's has two
 * more ("\0cost\0" + unit), so it never hashes the text of another kind (the fields hold no
 * NUL). The text of sum and count definitions must never change: their ids are stored. */
static void def_id(counter_def *d)
{
    char text[512];
    int n;
    if (d->cost[0])
        n = snprintf(text, sizeof text, "%s%c%s%c%s%c%lld%ccost%c%s", d->connector, 0, d->action, 0,
                     d->sum, 0, (long long)d->window_ms, 0, 0, d->cost);
    else
        n = snprintf(text, sizeof text, "%s%c%s%c%s%c%lld", d->connector, 0, d->action, 0, d->sum, 0,
                     (long long)d->window_ms);
    unsigned char h[COUNTERS_ID_LEN / 2];
    crypto_generichash(h, sizeof h, (const unsigned char *)text, (size_t)n, NULL, 0);
    sodium_bin2hex(d->id, sizeof d->id, h, sizeof h);
}

int counters_def_parse(const char *name, const json_t *decl, counter_def *out, ar_error *err)
{
    memset(out, 0, sizeof *out);
    if (!name || !valid_name(name))
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter name \"%s\" must be 1 to %d letters, digits or '_'",
                            name ? name : "", COUNTERS_NAME_MAX - 1);
    snprintf(out->name, sizeof out->name, "%s", name);
    if (!json_is_object(decl))
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\" must be a table {connector = ..., window = ...}", name);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)decl, key, v) {
        if (strcmp(key, "connector") && strcmp(key, "action") && strcmp(key, "sum") &&
            strcmp(key, "cost") && strcmp(key, "window"))
            return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                                "counter \"%s\": unknown field \"%s\" (known: connector, action, sum, "
                                "cost, window)", name, key);
    }
    if (json_object_get(decl, "sum") && json_object_get(decl, "cost"))
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\" has both sum and cost: give sum (a path into the input to "
                            "add up) or cost (a unit of what the calls cost, such as \"USD\"), not both",
                            name);
    int rc;
    if ((rc = copy_field(decl, "connector", out->connector, sizeof out->connector, name, 1, err)) ||
        (rc = copy_field(decl, "action", out->action, sizeof out->action, name, 0, err)) ||
        (rc = copy_field(decl, "sum", out->sum, sizeof out->sum, name, 0, err)))
        return rc;
    const json_t *unit = json_object_get(decl, "cost");
    if (unit && (!json_is_string(unit) || strlen(json_string_value(unit)) != json_string_length(unit) ||
                 !valid_unit(json_string_value(unit))))
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\": cost must be a unit such as \"USD\" or \"tokens\": 1 to %d "
                            "letters, digits or '_'", name, COUNTERS_UNIT_MAX);
    if (unit)
        memcpy(out->cost, json_string_value(unit), json_string_length(unit) + 1);
    if (!out->action[0])
        strcpy(out->action, "*");
    size_t sl = strlen(out->sum);
    if (sl && (out->sum[0] == '.' || out->sum[sl - 1] == '.' || strstr(out->sum, "..")))
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\": sum must be a field of the input, or a dotted path "
                            "such as \"price.value\"", name);
    const json_t *w = json_object_get(decl, "window");
    if (!w)
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\" needs a window (\"24h\", \"30m\", \"7d\" or seconds)", name);
    if (parse_window(w, &out->window_ms) != 0)
        return ar_error_set(err, AR_E_INVALID, "counter_invalid",
                            "counter \"%s\": window must be like \"90s\", \"30m\", \"24h\", \"7d\" or a "
                            "number of seconds, from 1 s to 366 d", name);
    def_id(out);
    return AR_OK;
}

json_t *counters_def_json(const counter_def *def)
{
    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:f, s:s}", "name", def->name, "connector",
                     def->connector, "action", def->action,
                     "sum", def->sum[0] ? json_string(def->sum) : json_null(),
                     "cost", def->cost[0] ? json_string(def->cost) : json_null(),
                     "window", (double)def->window_ms / 1000.0, "id", def->id);
}

/* ---- state records -------------------------------------------------------------------------
 *
 * "c:" + id: version (uint64), width_ms (int64), then COUNTERS_BUCKETS slots of {start_ms
 * (int64), sum (double)}, in host byte order. A slot that never held a bucket starts at
 * INT64_MIN.
 *
 * A new state's version starts at a random 62-bit number and is bumped by one on every change:
 * a definition removed and installed again gets a new state whose versions (practically) never
 * meet those read from the old one, so counters_txn_check does not take one for the other.
 * Adding or taking off 0 is no change and bumps nothing.
 */

#define STATE_LEN (16 + COUNTERS_BUCKETS * 16)
#define EMPTY_SLOT INT64_MIN
#define BACKFILL_SLACK_MS (30LL * 24 * 3600 * 1000)
#define KEY_MAX 511 /* LMDB's default longest key */

typedef struct ring {
    uint64_t version;
    int64_t width;
    struct {
        int64_t start;
        double sum;
    } slot[COUNTERS_BUCKETS];
} ring;

static int64_t width_for(int64_t window_ms)
{
    return (window_ms + COUNTERS_BUCKETS - 2) / (COUNTERS_BUCKETS - 1); /* ceil(window / 63) */
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int64_t bucket_start(const ring *r, int64_t t)
{
    return floor_div(t, r->width) * r->width;
}

static size_t slot_of(const ring *r, int64_t start)
{
    int64_t i = floor_div(start, r->width) % COUNTERS_BUCKETS;
    return (size_t)(i < 0 ? i + COUNTERS_BUCKETS : i);
}

static void ring_init(ring *r, int64_t window_ms)
{
    uint64_t seed;
    randombytes_buf(&seed, sizeof seed);
    r->version = seed >> 2;
    r->width = width_for(window_ms);
    for (size_t i = 0; i < COUNTERS_BUCKETS; i++) {
        r->slot[i].start = EMPTY_SLOT;
        r->slot[i].sum = 0;
    }
}

static void ring_encode(const ring *r, unsigned char out[STATE_LEN])
{
    memcpy(out, &r->version, 8);
    memcpy(out + 8, &r->width, 8);
    for (size_t i = 0; i < COUNTERS_BUCKETS; i++) {
        memcpy(out + 16 + 16 * i, &r->slot[i].start, 8);
        memcpy(out + 24 + 16 * i, &r->slot[i].sum, 8);
    }
}

static int ring_decode(const void *val, size_t len, ring *r)
{
    const unsigned char *p = val;
    if (len != STATE_LEN)
        return AR_E_FORMAT;
    memcpy(&r->version, p, 8);
    memcpy(&r->width, p + 8, 8);
    if (r->width <= 0)
        return AR_E_FORMAT;
    for (size_t i = 0; i < COUNTERS_BUCKETS; i++) {
        memcpy(&r->slot[i].start, p + 16 + 16 * i, 8);
        memcpy(&r->slot[i].sum, p + 24 + 16 * i, 8);
    }
    return AR_OK;
}

/* Add amount at time t. Returns 1 and the bucket's start when it was added, 0 when its bucket
 * has already left the ring (a newer bucket holds the slot). Adding 0 changes nothing (not even
 * the version: no decision needs to be taken again for it). */
static int ring_add(ring *r, int64_t t, double amount, int64_t *start_out)
{
    int64_t start = bucket_start(r, t);
    size_t i = slot_of(r, start);
    if (r->slot[i].start > start)
        return 0;
    *start_out = start;
    if (amount == 0)
        return 1;
    if (r->slot[i].start < start) {
        r->slot[i].start = start; /* the slot's older bucket is out of every window now */
        r->slot[i].sum = 0;
    }
    r->slot[i].sum += amount;
    r->version++;
    return 1;
}

/* Take off what ring_add added, if the bucket is still in the ring. Returns 1 when it did. */
static int ring_sub(ring *r, int64_t start, double amount)
{
    if (amount == 0 || floor_div(start, r->width) * r->width != start)
        return 0;
    size_t i = slot_of(r, start);
    if (r->slot[i].start != start)
        return 0;
    r->slot[i].sum -= amount;
    r->version++;
    return 1;
}

/* Does bucket [start, start + width) overlap (now - window, now]? Buckets that begin after now
 * (an action timed in the future of this read) are not counted yet. */
static int bucket_in_window(int64_t start, int64_t width, int64_t window_ms, int64_t now_ms)
{
    return start != EMPTY_SLOT && start <= now_ms && start + width > now_ms - window_ms;
}

static double ring_value(const ring *r, int64_t window_ms, int64_t now_ms)
{
    double sum = 0;
    for (size_t i = 0; i < COUNTERS_BUCKETS; i++)
        if (bucket_in_window(r->slot[i].start, r->width, window_ms, now_ms))
            sum += r->slot[i].sum;
    return sum;
}

static size_t make_key(char *buf, const char *prefix, const void *rest, size_t len)
{
    size_t p = strlen(prefix);
    if (p + len > KEY_MAX)
        return 0;
    memcpy(buf, prefix, p);
    memcpy(buf + p, rest, len);
    return p + len;
}

static int txn_load_ring(journal_txn *txn, const char *id, ring *r)
{
    char key[KEY_MAX];
    size_t klen = make_key(key, "c:", id, strlen(id));
    const void *val;
    size_t vlen;
    int rc = journal_txn_get(txn, JDB_COUNTERS, key, klen, &val, &vlen);
    if (rc != AR_OK)
        return rc;
    return ring_decode(val, vlen, r);
}

static int txn_store_ring(journal_txn *txn, const char *id, const ring *r)
{
    char key[KEY_MAX];
    unsigned char buf[STATE_LEN];
    size_t klen = make_key(key, "c:", id, strlen(id));
    ring_encode(r, buf);
    return journal_txn_put(txn, JDB_COUNTERS, key, klen, buf, sizeof buf);
}

/* ---- action records ----------------------------------------------------------------------- */

static int state_counts(action_state s)
{
    switch (s) {
    case ACTION_APPROVED:
    case ACTION_READY:
    case ACTION_DISPATCHED:
    case ACTION_RETRY_WAIT:
    case ACTION_SUCCEEDED:
    case ACTION_UNKNOWN_OUTCOME:
        return 1;
    default:
        return 0;
    }
}

/* A record in a counted state (a record that is not a JSON object never counts). */
static int record_counts(const json_t *rec)
{
    if (!json_is_object(rec))
        return 0;
    int s = action_state_from_name(json_string_value(json_object_get(rec, "state")));
    return s >= 0 && state_counts((action_state)s);
}

/* When the action became allowed: the approval's decision time when a human approved it,
 * else its creation. */
static int64_t count_time(const json_t *rec)
{
    const json_t *ap = json_object_get(rec, "approval");
    const char *decision = json_string_value(json_object_get(ap, "decision"));
    const json_t *decided = json_object_get(ap, "decided_ms");
    if (decision && strcmp(decision, "approve") == 0 && json_is_integer(decided))
        return json_integer_value(decided);
    return json_integer_value(json_object_get(rec, "created_ms"));
}

static int def_matches(const counter_def *d, const json_t *rec)
{
    const char *connector = json_string_value(json_object_get(rec, "connector"));
    const char *action = json_string_value(json_object_get(rec, "action"));
    return connector && strcmp(d->connector, connector) == 0 &&
           (strcmp(d->action, "*") == 0 || (action && strcmp(d->action, action) == 0));
}

/* What the action adds to d: 1 when d counts actions, else the number at d's dotted path into
 * the input (0 when missing or not a number). */
static double amount_of(const counter_def *d, const json_t *rec)
{
    if (!d->sum[0])
        return 1;
    const json_t *v = json_object_get(rec, "input");
    const char *seg = d->sum;
    while (v && *seg) {
        const char *dot = strchr(seg, '.');
        size_t n = dot ? (size_t)(dot - seg) : strlen(seg);
        char name[sizeof d->sum];
        memcpy(name, seg, n);
        name[n] = '\0';
        v = json_is_object(v) ? json_object_get(v, name) : NULL;
        seg += n + (dot ? 1 : 0);
    }
    return json_is_number(v) ? json_number_value(v) : 0;
}

/* The 10-character ULID prefix of ms: action ids begin with their creation time, so keys at or
 * after it are the actions created at or after ms. */

/* ---- the maintained set ------------------------------------------------------------------- */

struct counters {
    journal *j;
    /* The last "defs" record the hook parsed, and what it parsed to. Used only on the writer
     * thread (hooks and apply callbacks run there, one at a time), so it needs no lock; it is
     * keyed by the record's bytes, so a record changed by another process (or rolled back) is
     * parsed again rather than trusted. */
    unsigned char *raw;
    size_t raw_len;
    counter_def *defs;
    size_t n_defs;
    size_t n_cost;             /* how many of defs are cost definitions */
    int cached;
};

static int copy_str(char *dst, size_t cap, const json_t *v, int null_ok)
{
    if (null_ok && (!v || json_is_null(v))) {
        dst[0] = '\0';
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) >= cap)
        return -1;
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

/* Parse a "defs" record (an array of counters_def_json objects plus "window_ms"). */
static int parse_defs(const void *val, size_t len, counter_def **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    json_t *arr = json_loadb(val, len, 0, NULL);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return AR_E_FORMAT;
    }
    size_t n = json_array_size(arr);
    counter_def *defs = calloc(n ? n : 1, sizeof *defs);
    if (!defs) {
        json_decref(arr);
        return AR_E_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(arr, i);
        counter_def *d = &defs[i];
        const json_t *w = json_object_get(o, "window_ms");
        if (copy_str(d->name, sizeof d->name, json_object_get(o, "name"), 1) ||
            copy_str(d->connector, sizeof d->connector, json_object_get(o, "connector"), 0) ||
            copy_str(d->action, sizeof d->action, json_object_get(o, "action"), 0) ||
            copy_str(d->sum, sizeof d->sum, json_object_get(o, "sum"), 1) ||
            copy_str(d->cost, sizeof d->cost, json_object_get(o, "cost"), 1) || /* absent before costs */
            (d->cost[0] && (d->sum[0] || !valid_unit(d->cost))) ||
            copy_str(d->id, sizeof d->id, json_object_get(o, "id"), 0) ||
            strlen(d->id) != COUNTERS_ID_LEN || !json_is_integer(w) ||
            json_integer_value(w) < MIN_WINDOW_MS || json_integer_value(w) > MAX_WINDOW_MS) {
            free(defs);
            json_decref(arr);
            return AR_E_FORMAT;
        }
        d->window_ms = json_integer_value(w);
    }
    json_decref(arr);
    *out = defs;
    *n_out = n;
    return AR_OK;
}

static int defs_damaged(ar_error *err)
{
    return ar_error_set(err, AR_E_FORMAT, "counters_damaged",
                        "the journal's counter definitions (\"defs\" in the counters database) "
                        "cannot be read: reload the policies to install them again");
}

/* The maintained definitions, read inside txn (*defs borrowed from the cache), *n_cost of
 * them cost definitions. *present: a "defs" record exists at all. */
static int load_defs(counters *c, journal_txn *txn, const counter_def **defs, size_t *n,
                     size_t *n_cost, int *present, ar_error *err)
{
    const void *val;
    size_t len;
    *defs = NULL;
    *n = 0;
    *n_cost = 0;
    *present = 0;
    int rc = journal_txn_get(txn, JDB_COUNTERS, "defs", 4, &val, &len);
    if (rc == AR_E_NOTFOUND)
        return AR_OK;
    if (rc == AR_E_FORMAT)
        return defs_damaged(err);
    if (rc != AR_OK)
        return ar_error_set(err, rc, "counters_failed",
                            "cannot read the counter definitions (status %d)", rc);
    *present = 1;
    if (!c->cached || c->raw_len != len || (len && memcmp(c->raw, val, len) != 0)) {
        counter_def *parsed;
        size_t n_parsed;
        unsigned char *raw = malloc(len + 1);
        if (!raw)
            return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in counters");
        rc = parse_defs(val, len, &parsed, &n_parsed);
        if (rc != AR_OK) {
            free(raw);
            return rc == AR_E_NOMEM ? ar_error_set(err, rc, "out_of_memory", "out of memory in counters")
                                    : defs_damaged(err);
        }
        if (len)
            memcpy(raw, val, len);
        free(c->raw);
        free(c->defs);
        c->raw = raw;
        c->raw_len = len;
        c->defs = parsed;
        c->n_defs = n_parsed;
        c->n_cost = 0;
        for (size_t i = 0; i < n_parsed; i++)
            c->n_cost += parsed[i].cost[0] != 0;
        c->cached = 1;
    }
    *defs = c->defs;
    *n = c->n_defs;
    *n_cost = c->n_cost;
    return AR_OK;
}

static const counter_def *find_def(const counter_def *defs, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(defs[i].id, id) == 0)
            return &defs[i];
    return NULL;
}

static int journal_failed(ar_error *err, int rc, const char *what)
{
    if (rc == AR_E_FULL)
        return ar_error_set(err, rc, "storage_full", "the journal is full while %s", what);
    if (rc == AR_E_FORMAT)
        return ar_error_set(err, rc, "counters_damaged", "a damaged counter record while %s", what);
    return ar_error_set(err, rc, "counters_failed", "counters: %s failed (status %d)", what, rc);
}

/* ---- the hook ----------------------------------------------------------------------------- */

/* An action record (rec, parsed) was stored: count it if it just entered a counted state, take
 * it off if it just left one. Only sum and count definitions (cost ones are cost_put's). */
static int count_put(journal_txn *txn, const counter_def *defs, size_t n, const char *ekey,
                     size_t eklen, const json_t *rec, ar_error *err)
{
    int counted = record_counts(rec);
    const void *eval;
    size_t elen;
    int rc = journal_txn_get(txn, JDB_COUNTERS, ekey, eklen, &eval, &elen);
    if (rc != AR_OK && rc != AR_E_NOTFOUND)
        return journal_failed(err, rc, "reading an action's counter entry");
    int exists = rc == AR_OK;
    json_t *entry = NULL;
    rc = AR_OK;
    if (counted && !exists) {
        int64_t t = count_time(rec);
        int matched = 0;
        if (!(entry = json_object()))
            goto nomem;
        for (size_t i = 0; i < n && rc == AR_OK; i++) {
            if (defs[i].cost[0] || !def_matches(&defs[i], rec))
                continue;
            matched = 1;
            ring r;
            if ((rc = txn_load_ring(txn, defs[i].id, &r)) == AR_E_NOTFOUND) {
                rc = AR_OK; /* listed but without state: nothing to keep up to date */
                continue;
            }
            if (rc != AR_OK)
                break;
            double amount = amount_of(&defs[i], rec);
            int64_t start;
            uint64_t before = r.version;
            if (!ring_add(&r, t, amount, &start))
                continue; /* its bucket has left the ring: out of every window already */
            if (r.version != before && (rc = txn_store_ring(txn, defs[i].id, &r)) != AR_OK)
                break;
            if (json_object_set_new(entry, defs[i].id, json_pack("[I, f]", (json_int_t)start, amount)))
                goto nomem;
        }
        if (rc == AR_OK && matched) {
            /* Written even when every bucket had left the ring: the entry says "counted",
             * so later puts in counted states leave the counters alone. */
            char *text = jsonw_dumps(entry, JSON_COMPACT);
            if (!text)
                goto nomem;
            rc = journal_txn_put(txn, JDB_COUNTERS, ekey, eklen, text, strlen(text));
            free(text);
        }
        if (rc != AR_OK)
            journal_failed(err, rc, "counting an action");
    } else if (!counted && exists) {
        entry = json_loadb(eval, elen, 0, NULL);
        const char *id;
        json_t *el;
        json_object_foreach(entry, id, el) {
            ring r;
            const counter_def *d = find_def(defs, n, id);
            if (!d || d->cost[0] || !json_is_integer(json_array_get(el, 0)))
                continue;
            if ((rc = txn_load_ring(txn, id, &r)) == AR_E_NOTFOUND) {
                rc = AR_OK;
                continue;
            }
            if (rc != AR_OK)
                break;
            if (ring_sub(&r, json_integer_value(json_array_get(el, 0)),
                         json_number_value(json_array_get(el, 1))) &&
                (rc = txn_store_ring(txn, id, &r)) != AR_OK)
                break;
        }
        if (rc == AR_OK)
            rc = journal_txn_del(txn, JDB_COUNTERS, ekey, eklen);
        if (rc != AR_OK)
            journal_failed(err, rc, "taking an action off its counters");
    }
    json_decref(entry);
    return rc;
nomem:
    json_decref(entry);
    return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in counters");
}

/* What the action has cost so far in d's unit (its running total; 0 when absent, not a number,
 * or not a finite amount >= 0). */
static double cost_of(const counter_def *d, const json_t *rec)
{
    const json_t *v = json_object_get(json_object_get(rec, "cost"), d->cost);
    double amount = json_is_number(v) ? json_number_value(v) : 0;
    return isfinite(amount) && amount > 0 ? amount : 0;
}

/* When the cost on this put was recorded: the record's updated_ms (created_ms without one). */
static int64_t cost_time(const json_t *rec)
{
    const json_t *u = json_object_get(rec, "updated_ms");
    return json_is_integer(u) ? json_integer_value(u)
                              : json_integer_value(json_object_get(rec, "created_ms"));
}

/* An action record (rec, parsed) was stored: add the rise of its cost, whatever its state, to
 * every cost definition it matches, at its updated_ms, and note the new totals in its cost
 * entry kkey ("k:" + id). Nothing is written when nothing rose. */
static int cost_put(journal_txn *txn, const counter_def *defs, size_t n, const char *kkey,
                    size_t kklen, const json_t *rec, ar_error *err)
{
    if (!json_is_object(rec))
        return AR_OK;
    json_t *entry = NULL;
    int changed = 0, loaded = 0, rc = AR_OK;
    int64_t t = cost_time(rec);
    for (size_t i = 0; i < n; i++) {
        const counter_def *d = &defs[i];
        if (!d->cost[0] || !def_matches(d, rec))
            continue;
        double current = cost_of(d, rec);
        if (current <= 0)
            continue; /* never spent anything: nothing to note (the common case for reads) */
        if (!loaded) {
            const void *kval;
            size_t klen;
            rc = journal_txn_get(txn, JDB_COUNTERS, kkey, kklen, &kval, &klen);
            if (rc == AR_OK)
                entry = json_loadb(kval, klen, 0, NULL);
            else if (rc != AR_E_NOTFOUND)
                return journal_failed(err, rc, "reading an action's cost entry");
            rc = AR_OK;
            if (!json_is_object(entry)) {
                json_decref(entry);
                if (!(entry = json_object()))
                    goto nomem;
            }
            loaded = 1;
        }
        double counted = json_number_value(json_array_get(json_object_get(entry, d->id), 1));
        if (!(current > counted))
            continue; /* costs only grow: nothing new (a total that went down takes nothing off) */
        ring r;
        if ((rc = txn_load_ring(txn, d->id, &r)) == AR_E_NOTFOUND) {
            rc = AR_OK; /* listed but without state: nothing to keep up to date */
            continue;
        }
        if (rc != AR_OK)
            goto fail;
        int64_t start;
        uint64_t before = r.version;
        if (!ring_add(&r, t, current - counted, &start))
            start = bucket_start(&r, t); /* left the ring: out of every window, but spent */
        else if (r.version != before && (rc = txn_store_ring(txn, d->id, &r)) != AR_OK)
            goto fail;
        if (json_object_set_new(entry, d->id, json_pack("[I, f]", (json_int_t)start, current)))
            goto nomem;
        changed = 1;
    }
    if (changed) {
        char *text = jsonw_dumps(entry, JSON_COMPACT);
        if (!text)
            goto nomem;
        rc = journal_txn_put(txn, JDB_COUNTERS, kkey, kklen, text, strlen(text));
        free(text);
        if (rc != AR_OK)
            goto fail;
    }
    json_decref(entry);
    return AR_OK;
fail:
    json_decref(entry);
    return journal_failed(err, rc, "adding an action's cost");
nomem:
    json_decref(entry);
    return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in counters");
}

/* Is s written by jansson as it is (printable ASCII but '"', '\\' and '/')? Such a string
 * can be spelt in JSON text only as it is, or with \u escapes. */
static int plain_text(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s >= 0x7f || *s == '"' || *s == '\\' || *s == '/')
            return 0;
    return 1;
}

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* The string values of member key (quoted) anywhere in JSON text raw, one at a time: *at is
 * where to look from (start at raw), *value and *vlen the next value found (as spelt between
 * its quotes, up to its first quote). 0 when there is no more. */
static int next_member(const char *raw, size_t len, const char **at, const char *key, size_t klen,
                       const char **value, size_t *vlen)
{
    const char *end = raw + len;
    for (const char *p = *at; (p = memmem(p, (size_t)(end - p), key, klen)); p += klen) {
        const char *v = skip_space(p + klen, end);
        if (v == end || *v != ':')
            continue;
        v = skip_space(v + 1, end);
        if (v == end || *v != '"')
            continue;
        v++;
        const char *q = memchr(v, '"', (size_t)(end - v));
        if (!q)
            return 0;
        *at = q;
        *value = v;
        *vlen = (size_t)(q - v);
        return 1;
    }
    return 0;
}

static int has_member(const char *raw, size_t len, const char *key, size_t klen, const char *name)
{
    const char *at = raw, *v;
    size_t vl, n = strlen(name);
    while (next_member(raw, len, &at, key, klen, &v, &vl))
        if (vl == n && memcmp(v, name, n) == 0)
            return 1;
    return 0;
}

/* Does the text hold a \u escape? (memchr for the rare backslash is several times faster
 * than memmem for the pair, and this runs on every record the journal writer stores.) */
static int has_unicode_escape(const char *s, size_t len)
{
    const char *end = s + len;
    for (const char *p = s; p < end && (p = memchr(p, '\\', (size_t)(end - p))); p += 2)
        if (p + 1 < end && p[1] == 'u')
            return 1; /* (an escaped backslash, two bytes, is skipped whole) */
    return 0;
}

/* Can any of defs match the action record whose JSON text is val? A cheap look at the bytes
 * before any parse: a definition matches only a record with a "connector" member whose value
 * is its connector (and an "action" member whose value is its action, unless "*"). For names
 * jansson writes as they are and text without \u escapes, an equal value is spelt exactly as
 * the name (a value with another escape in it is cut at its escaped quote, or holds a
 * backslash, and compares unequal either way). Otherwise it cannot say: 1. False positives
 * are parsed and judged properly. */
static int may_match(const counter_def *defs, size_t n, const void *val, size_t vlen)
{
    static const char conn_key[] = "\"connector\"", action_key[] = "\"action\"";
    const char *raw = val, *at = raw, *v;
    size_t vl;
    for (size_t i = 0; i < n; i++)
        if (!plain_text(defs[i].connector) || !plain_text(defs[i].action))
            return 1;
    if (has_unicode_escape(raw, vlen))
        return 1;
    while (next_member(raw, vlen, &at, conn_key, sizeof conn_key - 1, &v, &vl))
        for (size_t i = 0; i < n; i++)
            if (strlen(defs[i].connector) == vl && memcmp(defs[i].connector, v, vl) == 0 &&
                (strcmp(defs[i].action, "*") == 0 ||
                 has_member(raw, vlen, action_key, sizeof action_key - 1, defs[i].action)))
                return 1;
    return 0;
}

/* The journal hook on JDB_ACTIONS. A deleted action record (compaction) takes its entries with
 * it, without taking anything off: what it counted stays counted until its window passes. */
static int counters_hook(journal_txn *txn, void *arg, const void *key, size_t klen,
                         const void *val, size_t vlen, ar_error *err)
{
    counters *c = arg;
    const counter_def *defs;
    size_t n, n_cost;
    int present;
    int rc = load_defs(c, txn, &defs, &n, &n_cost, &present, err);
    if (rc != AR_OK || !present)
        return rc;
    char ekey[KEY_MAX], kkey[KEY_MAX];
    size_t eklen = make_key(ekey, "a:", key, klen);
    size_t kklen = make_key(kkey, "k:", key, klen);
    if (!eklen || !kklen)
        return AR_OK; /* no action id is that long; nothing of it can be counted */
    if (!val) {
        /* Both, whatever is maintained now: an entry may remain from an earlier set. */
        if ((rc = journal_txn_del(txn, JDB_COUNTERS, ekey, eklen)) == AR_OK)
            rc = journal_txn_del(txn, JDB_COUNTERS, kkey, kklen);
        return rc == AR_OK ? AR_OK : journal_failed(err, rc, "deleting an action's counter entries");
    }
    if (n == 0)
        return AR_OK; /* nothing maintained: not even the record is parsed */
    if (!may_match(defs, n, val, vlen)) {
        /* No maintained definition can match the record: it adds nothing, and only an entry
         * left from an earlier set of definitions could need taking off (its definitions are
         * gone, so that only deletes it). No entry, nothing to do: the common case, decided
         * without parsing the record. */
        rc = journal_txn_get(txn, JDB_COUNTERS, ekey, eklen, NULL, NULL);
        if (rc == AR_E_NOTFOUND)
            return AR_OK;
        if (rc != AR_OK && rc != AR_E_FORMAT)
            return journal_failed(err, rc, "reading an action's counter entry");
    }
    json_t *rec = json_loadb(val, vlen, 0, NULL);
    if (n > n_cost)
        rc = count_put(txn, defs, n, ekey, eklen, rec, err);
    if (rc == AR_OK && n_cost > 0)
        rc = cost_put(txn, defs, n, kkey, kklen, rec, err);
    json_decref(rec);
    return rc;
}

int counters_new(journal *j, counters **out, ar_error *err)
{
    *out = NULL;
    if (!j)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument", "counters_new needs a journal");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "crypto_init", "libsodium cannot be initialised");
    counters *c = calloc(1, sizeof *c);
    if (!c)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in counters");
    c->j = j;
    int rc = journal_set_hook(j, JDB_ACTIONS, counters_hook, c);
    if (rc != AR_OK) {
        free(c);
        return ar_error_set(err, rc, "counters_failed", "cannot set the counters' journal hook");
    }
    *out = c;
    return AR_OK;
}

void counters_free(counters *c)
{
    if (!c)
        return;
    free(c->raw);
    free(c->defs);
    free(c);
}

/* ---- install ------------------------------------------------------------------------------ */

typedef struct install_op {
    const counter_def *defs;   /* unique by id */
    size_t n;
    int64_t now_ms;
    const char *defs_text;     /* the "defs" record */
    /* Scratch of one run of the callback (it may run again). */
    ring *rings;               /* per new definition */
    int *fresh;                /* 1: no state yet, backfill it */
} install_op;

/* Value of key in db (as a txn cursor sees it), copied into a new JSON value; NULL when absent.
 * A cursor instead of journal_txn_get: its one buffer is reused, where journal_txn_get would
 * keep a copy per action until the callback ends. */
static int cursor_lookup_json(journal_cursor *cur, const char *key, size_t klen, json_t **out)
{
    const void *k = key, *v;
    size_t kl = klen, vl;
    *out = NULL;
    int rc = journal_cursor_get(cur, JOURNAL_SEEK_GE, &k, &kl, &v, &vl);
    if (rc == AR_E_NOTFOUND || (rc == AR_OK && (kl != klen || memcmp(k, key, klen) != 0)))
        return AR_OK;
    if (rc != AR_OK)
        return rc;
    *out = json_loadb(v, vl, 0, NULL);
    return AR_OK;
}

/* Delete every state of a definition not listed any more. */
static int drop_unlisted(journal_txn *txn, install_op *op)
{
    journal_cursor *cur;
    int rc = journal_txn_cursor_open(txn, JDB_COUNTERS, &cur);
    if (rc != AR_OK)
        return rc;
    char (*gone)[COUNTERS_ID_LEN + 1] = NULL;
    size_t n_gone = 0, cap = 0;
    const void *k = "c:", *v;
    size_t kl = 2, vl;
    for (rc = journal_cursor_get(cur, JOURNAL_SEEK_GE, &k, &kl, &v, &vl);
         rc == AR_OK || rc == AR_E_FORMAT; rc = journal_cursor_get(cur, JOURNAL_NEXT, &k, &kl, &v, &vl)) {
        if (kl < 2 || memcmp(k, "c:", 2) != 0) {
            rc = AR_E_NOTFOUND; /* past the states */
            break;
        }
        char id[COUNTERS_ID_LEN + 1];
        if (kl - 2 > COUNTERS_ID_LEN)
            continue; /* not a key this module writes */
        memcpy(id, (const char *)k + 2, kl - 2);
        id[kl - 2] = '\0';
        if (find_def(op->defs, op->n, id))
            continue;
        if (n_gone == cap) {
            cap = cap ? cap * 2 : 8;
            void *grown = realloc(gone, cap * sizeof *gone);
            if (!grown) {
                rc = AR_E_NOMEM;
                break;
            }
            gone = grown;
        }
        memcpy(gone[n_gone++], id, sizeof id);
    }
    journal_cursor_close(cur);
    if (rc == AR_E_NOTFOUND)
        rc = AR_OK;
    for (size_t i = 0; i < n_gone && rc == AR_OK; i++) {
        char key[KEY_MAX];
        size_t klen = make_key(key, "c:", gone[i], strlen(gone[i]));
        rc = journal_txn_del(txn, JDB_COUNTERS, key, klen);
    }
    free(gone);
    return rc;
}

/* Merge added (an object of elements) into the entry at key. */
static int merge_entry(journal_txn *txn, journal_cursor *ecur, const char *key, size_t klen,
                       json_t *added)
{
    if (!klen)
        return AR_OK; /* no action id is that long */
    json_t *entry = NULL;
    int rc = cursor_lookup_json(ecur, key, klen, &entry);
    if (rc != AR_OK)
        return rc;
    if (!json_is_object(entry)) {
        json_decref(entry);
        entry = json_object();
    }
    char *text = NULL;
    if (!entry || json_object_update(entry, added) != 0 || !(text = jsonw_dumps(entry, JSON_COMPACT)))
        rc = AR_E_NOMEM;
    else
        rc = journal_txn_put(txn, JDB_COUNTERS, key, klen, text, strlen(text));
    free(text);
    json_decref(entry);
    return rc;
}

/* Fill the new definitions' rings from the actions created since the earliest window start
 * (minus the slack for approvals), and merge their elements into the actions' entries: "a:"
 * for sum and count definitions (actions in a counted state), "k:" for cost definitions
 * (actions of any state that cost something: the whole total at their updated_ms, noted as
 * counted even when out of the window, so that a later put adds only what it raises). */
static int backfill(journal_txn *txn, install_op *op, size_t n_fresh)
{
    if (n_fresh == 0)
        return AR_OK;
    int64_t longest = 0;
    for (size_t i = 0; i < op->n; i++)
        if (op->fresh[i] && op->defs[i].window_ms > longest)
            longest = op->defs[i].window_ms;
    char from[11];
    action_id_time_prefix(op->now_ms - longest - BACKFILL_SLACK_MS, from);

    journal_cursor *acur = NULL, *ecur = NULL;
    int rc;
    if ((rc = journal_txn_cursor_open(txn, JDB_ACTIONS, &acur)) != AR_OK ||
        (rc = journal_txn_cursor_open(txn, JDB_COUNTERS, &ecur)) != AR_OK)
        goto done;
    const void *k = from, *v;
    size_t kl = 10, vl;
    for (rc = journal_cursor_get(acur, JOURNAL_SEEK_GE, &k, &kl, &v, &vl);
         rc == AR_OK || rc == AR_E_FORMAT; rc = journal_cursor_get(acur, JOURNAL_NEXT, &k, &kl, &v, &vl)) {
        if (rc == AR_E_FORMAT)
            continue; /* a record this build cannot read is not counted */
        json_t *rec = json_loadb(v, vl, 0, NULL);
        if (!json_is_object(rec)) {
            json_decref(rec);
            continue;
        }
        int counts = record_counts(rec);
        int64_t t = count_time(rec), t_cost = cost_time(rec);
        json_t *added = NULL, *costs = NULL;
        int nomem = 0;
        for (size_t i = 0; i < op->n && !nomem; i++) {
            const counter_def *d = &op->defs[i];
            if (!op->fresh[i] || !def_matches(d, rec))
                continue;
            ring *r = &op->rings[i];
            int64_t start;
            if (d->cost[0]) {
                double amount = cost_of(d, rec);
                if (amount <= 0)
                    continue;
                /* Only what some read at now_ms or later can still see is added; the rest is
                 * still noted as counted. */
                if (bucket_start(r, t_cost) + r->width <= op->now_ms - d->window_ms ||
                    !ring_add(r, t_cost, amount, &start))
                    start = bucket_start(r, t_cost);
                if ((!costs && !(costs = json_object())) ||
                    json_object_set_new(costs, d->id, json_pack("[I, f]", (json_int_t)start, amount)))
                    nomem = 1;
                continue;
            }
            if (!counts)
                continue;
            double amount = amount_of(d, rec);
            /* Only what some read at now_ms or later can still see. */
            if (bucket_start(r, t) + r->width <= op->now_ms - d->window_ms ||
                !ring_add(r, t, amount, &start))
                continue;
            if ((!added && !(added = json_object())) ||
                json_object_set_new(added, d->id, json_pack("[I, f]", (json_int_t)start, amount)))
                nomem = 1;
        }
        json_decref(rec);
        /* Both keys before the first put: k is the cursor's, borrowed until it moves. */
        char ekey[KEY_MAX], kkey[KEY_MAX];
        size_t eklen = make_key(ekey, "a:", k, kl), kklen = make_key(kkey, "k:", k, kl);
        rc = nomem ? AR_E_NOMEM : AR_OK;
        if (rc == AR_OK && added)
            rc = merge_entry(txn, ecur, ekey, eklen, added);
        if (rc == AR_OK && costs)
            rc = merge_entry(txn, ecur, kkey, kklen, costs);
        json_decref(added);
        json_decref(costs);
        if (rc != AR_OK)
            goto done;
    }
    if (rc == AR_E_NOTFOUND)
        rc = AR_OK;
    for (size_t i = 0; i < op->n && rc == AR_OK; i++)
        if (op->fresh[i])
            rc = txn_store_ring(txn, op->defs[i].id, &op->rings[i]);
done:
    journal_cursor_close(ecur);
    journal_cursor_close(acur);
    return rc;
}

static int apply_install(journal_txn *txn, void *arg, ar_error *err)
{
    install_op *op = arg;
    int rc = drop_unlisted(txn, op);
    if (rc != AR_OK)
        return journal_failed(err, rc, "dropping retired counters");
    rc = journal_txn_put(txn, JDB_COUNTERS, "defs", 4, op->defs_text, strlen(op->defs_text));
    if (rc != AR_OK)
        return journal_failed(err, rc, "storing the counter definitions");
    size_t n_fresh = 0;
    for (size_t i = 0; i < op->n; i++) {
        ring r;
        rc = txn_load_ring(txn, op->defs[i].id, &r);
        if (rc == AR_OK && r.width == width_for(op->defs[i].window_ms)) {
            op->fresh[i] = 0;
            continue;
        }
        if (rc != AR_OK && rc != AR_E_NOTFOUND && rc != AR_E_FORMAT)
            return journal_failed(err, rc, "reading a counter");
        /* Missing or damaged: (re)built from the journal. */
        op->fresh[i] = 1;
        ring_init(&op->rings[i], op->defs[i].window_ms);
        n_fresh++;
    }
    rc = backfill(txn, op, n_fresh);
    if (rc != AR_OK)
        return journal_failed(err, rc, "filling new counters from the journal");
    return AR_OK;
}

int counters_install(counters *c, const counter_def *defs, size_t n, int64_t now_ms,
                     ar_error *err)
{
    if (!c || (n && !defs))
        return ar_error_set(err, AR_E_INVALID, "invalid_argument", "counters_install: no counters or definitions");
    int rc = AR_E_NOMEM;
    counter_def *uniq = calloc(n ? n : 1, sizeof *uniq);
    ring *rings = calloc(n ? n : 1, sizeof *rings);
    int *fresh = calloc(n ? n : 1, sizeof *fresh);
    json_t *arr = json_array();
    char *text = NULL;
    journal_batch *b = NULL;
    size_t m = 0;
    if (!uniq || !rings || !fresh || !arr)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        if (strlen(defs[i].id) != COUNTERS_ID_LEN || !defs[i].connector[0] || !defs[i].action[0] ||
            defs[i].window_ms < MIN_WINDOW_MS || defs[i].window_ms > MAX_WINDOW_MS ||
            (defs[i].cost[0] && (defs[i].sum[0] || !valid_unit(defs[i].cost)))) {
            rc = ar_error_set(err, AR_E_INVALID, "counter_invalid",
                              "counter \"%s\" was not made by counters_def_parse", defs[i].name);
            goto fail;
        }
        if (find_def(uniq, m, defs[i].id))
            continue;
        uniq[m] = defs[i];
        json_t *o = counters_def_json(&defs[i]);
        if (!o || json_object_set_new(o, "window_ms", json_integer(defs[i].window_ms)) ||
            json_array_append_new(arr, o))
            goto nomem;
        m++;
    }
    if (!(text = jsonw_dumps(arr, JSON_COMPACT)) || !(b = journal_batch_new()))
        goto nomem;
    install_op op = {.defs = uniq, .n = m, .now_ms = now_ms, .defs_text = text, .rings = rings, .fresh = fresh};
    journal_batch_apply(b, apply_install, &op);
    rc = journal_commit(c->j, b, err);
    goto done;
nomem:
    rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory installing counters");
fail:
done:
    journal_batch_free(b);
    free(text);
    json_decref(arr);
    free(fresh);
    free(rings);
    free(uniq);
    return rc;
}

/* ---- reads -------------------------------------------------------------------------------- */

int counters_read(journal_read *r, const counter_def *def, int64_t now_ms, double *value,
                  uint64_t *version, ar_error *err)
{
    char key[KEY_MAX];
    size_t klen = make_key(key, "c:", def->id, strlen(def->id));
    const void *val;
    size_t vlen;
    int rc = journal_get(r, JDB_COUNTERS, key, klen, &val, &vlen);
    if (rc == AR_E_NOTFOUND)
        return ar_error_set(err, AR_E_NOTFOUND, "counter_unavailable",
                            "counter \"%s\" is not maintained (its policy is not installed yet)", def->name);
    ring ring_;
    if (rc == AR_OK)
        rc = ring_decode(val, vlen, &ring_);
    if (rc != AR_OK)
        return journal_failed(err, rc, "reading a counter");
    if (value)
        *value = ring_value(&ring_, def->window_ms, now_ms);
    if (version)
        *version = ring_.version;
    return AR_OK;
}

int counters_txn_check(journal_txn *txn, const char *def_id, uint64_t version, ar_error *err)
{
    if (!def_id || !*def_id)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument", "counters_txn_check: no definition id");
    ring r;
    int rc = txn_load_ring(txn, def_id, &r);
    /* A state exists exactly for the definitions in "defs": install changes both together. */
    if (rc == AR_E_NOTFOUND)
        return ar_error_set(err, AR_E_CONFLICT, "counter_changed",
                            "counter %s is no longer maintained (policies were reloaded): decide again", def_id);
    if (rc != AR_OK)
        return journal_failed(err, rc, "checking a counter");
    if (r.version != version)
        return ar_error_set(err, AR_E_CONFLICT, "counter_changed",
                            "counter %s changed since it was read: decide again", def_id);
    return AR_OK;
}

int counters_recompute(journal_read *r, const counter_def *def, int64_t now_ms, double *value,
                       ar_error *err)
{
    journal_cursor *cur;
    int rc = journal_cursor_open(r, JDB_ACTIONS, &cur);
    if (rc != AR_OK)
        return journal_failed(err, rc, "scanning actions");
    int64_t width = width_for(def->window_ms);
    char from[11];
    action_id_time_prefix(now_ms - def->window_ms - BACKFILL_SLACK_MS, from);
    const void *k = from, *v;
    size_t kl = 10, vl;
    double sum = 0;
    for (rc = journal_cursor_get(cur, JOURNAL_SEEK_GE, &k, &kl, &v, &vl);
         rc == AR_OK || rc == AR_E_FORMAT; rc = journal_cursor_get(cur, JOURNAL_NEXT, &k, &kl, &v, &vl)) {
        if (rc == AR_E_FORMAT)
            continue;
        json_t *rec = json_loadb(v, vl, 0, NULL);
        if (def->cost[0] && json_is_object(rec) && def_matches(def, rec)) {
            /* Any state; the whole total at the last update, as the backfill does. */
            int64_t start = floor_div(cost_time(rec), width) * width;
            if (bucket_in_window(start, width, def->window_ms, now_ms))
                sum += cost_of(def, rec);
        } else if (!def->cost[0] && record_counts(rec) && def_matches(def, rec)) {
            int64_t start = floor_div(count_time(rec), width) * width;
            if (bucket_in_window(start, width, def->window_ms, now_ms))
                sum += amount_of(def, rec);
        }
        json_decref(rec);
    }
    journal_cursor_close(cur);
    if (rc != AR_E_NOTFOUND)
        return journal_failed(err, rc, "scanning actions");
    *value = sum;
    return AR_OK;
}
