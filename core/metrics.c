/*
 * metrics.c - counters, gauges and histograms with labels, rendered as Prometheus text 0.0.4
 * (see metrics.h).
 *
 * Layout. A family keeps its series twice: in a fixed table of hash chains (lock-free lookup
 * for updates) and in an array sorted by label values (for rendering and summaries). Both are
 * written only under the family's mutex, when a series is created; a series is never removed
 * or moved before metrics_free, so a reader that found it may keep using it. A new series is
 * fully built, then published by a release store of its chain's head; lookups load heads with
 * acquire, so they see it whole. Each series is one 64-byte-aligned allocation whose mutable
 * words start on their own cache line, so that updates to one series do not slow lookups that
 * walk past it.
 *
 * Values. A counter's or gauge's value and a histogram's sum are doubles kept as the bit
 * pattern of an _Atomic uint64_t and added to with a compare-exchange loop; a histogram's
 * bucket counts are per bucket (not cumulative) _Atomic uint64_t bumped with fetch_add, and
 * made cumulative when read. Measured against a per-series spinlock (test-and-set, on this
 * 2-core machine): the spinlock is cheaper alone (about 11 ns against 16-18 ns per update)
 * but worse when two threads hit the same series (about 60-70 ns against 38-45 ns per update),
 * and a spinlock holder that is preempted stalls every other updater for a time slice, which
 * the compare-exchange cannot do. So: compare-exchange, lock-free, as the header promises.
 * The price: a histogram's _sum is not read atomically with its buckets, so a scrape taken
 * during updates may show a sum that is an observation or two ahead of or behind the counts
 * (the counts themselves are one snapshot, so _count always equals the +Inf bucket).
 *
 * Numbers are formatted as Go's strconv.FormatFloat(v, 'g', -1, 64), as Prometheus's own
 * client does: the shortest digits that read back to the same double, exponent form when the
 * decimal exponent is below -4 or at least 6 ("0.0001", "2.5", "1e-05", "1.5e+06"), and
 * "+Inf", "-Inf", "NaN". Counts (histogram buckets and _count) are written as integers.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_HEADS 256          /* chains per family; at most METRICS_MAX_SERIES / 256 long */
#define MAX_BUCKETS 256         /* finite bucket bounds per histogram */
#define DROPPED_NAME "aiorun_metrics_series_dropped_total"

const double metrics_latency_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                          0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                          1,      2.5,     5,      10,    30,     60};
const size_t metrics_latency_n_buckets =
    sizeof metrics_latency_buckets / sizeof metrics_latency_buckets[0];

typedef struct series {
    /* Read-only once published. */
    struct series *next;                     /* hash chain */
    uint64_t hash;
    const char *values[METRICS_MAX_LABELS];  /* NUL-terminated, in the same allocation */
    uint16_t lens[METRICS_MAX_LABELS];
    /* Updated concurrently, on a cache line of their own. */
    _Alignas(64) _Atomic uint64_t value;     /* counter/gauge value; histogram sum (double bits) */
    _Atomic uint64_t counts[];               /* histogram: per bucket, the last one is +Inf */
} series;

struct metrics_family {
    char *name;
    char *help;
    metrics_type type;
    size_t n_labels;
    char *label_names[METRICS_MAX_LABELS];
    double *bounds;
    size_t n_bounds;
    pthread_mutex_t lock;      /* creating a series: the chains' heads, sorted, n_series */
    series **sorted;           /* by label values, then by length */
    size_t n_series;
    size_t cap_series;
    _Atomic uint64_t overflow; /* new label tuples dropped because the family was full */
    _Atomic(series *) heads[HASH_HEADS];
};

struct metrics {
    pthread_mutex_t lock;      /* the family list; held while rendering and summarising */
    metrics_family **families; /* in registration order */
    size_t n_families;
    size_t cap_families;
};

/* ---- doubles in atomics ------------------------------------------------------------------ */

static inline uint64_t bits_of(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static inline double double_of(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static inline void atomic_add_double(_Atomic uint64_t *a, double v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, bits_of(double_of(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
        /* old now holds the current value: try again with it */
    }
}

/* Raise *a to v; never lower it (a counter mirrored from a count kept elsewhere). */
static inline void atomic_raise_double(_Atomic uint64_t *a, double v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (double_of(old) < v &&
           !atomic_compare_exchange_weak_explicit(a, &old, bits_of(v), memory_order_relaxed,
                                                  memory_order_relaxed)) {
        /* old now holds the current value: compare again */
    }
}

static inline double atomic_get_double(_Atomic uint64_t *a)
{
    return double_of(atomic_load_explicit(a, memory_order_relaxed));
}

/* ---- names ------------------------------------------------------------------------------- */

static bool valid_name(const char *s, bool colon_ok)
{
    if (!s || !*s)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon_ok && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Does a (with type ta) render a sample name that b would also render? Histograms own name,
 * name_bucket, name_sum and name_count. */
static bool names_collide(const char *a, metrics_type ta, const char *b)
{
    if (strcmp(a, b) == 0)
        return true;
    if (ta != METRICS_HISTOGRAM)
        return false;
    size_t n = strlen(a);
    if (strncmp(a, b, n) != 0)
        return false;
    return strcmp(b + n, "_bucket") == 0 || strcmp(b + n, "_sum") == 0 ||
           strcmp(b + n, "_count") == 0;
}

/* ---- text building ----------------------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len;
    size_t cap;
    bool failed;
} buf;

static void buf_putn(buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(buf *b, const char *s) { buf_putn(b, s, strlen(s)); }

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if it is not one (overlong
 * forms, surrogates and code points above U+10FFFF are not). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* Append s (n bytes) as valid UTF-8, invalid bytes replaced by U+FFFD (Prometheus refuses a
 * scrape with invalid UTF-8 in it). With escape, also escape backslash and newline, and with
 * quote the double quote too (label values; HELP text escapes only the first two). */
static void put_text(buf *b, const char *s, size_t n, bool escape, bool quote)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* bytes [run, i) are copied as they are */
    while (i < n) {
        const char *rep = NULL;
        size_t skip = 1;
        if (escape && u[i] == '\\')
            rep = "\\\\";
        else if (escape && u[i] == '\n')
            rep = "\\n";
        else if (quote && u[i] == '"')
            rep = "\\\"";
        else if (u[i] >= 0x80) {
            size_t len = utf8_len(u + i, n - i);
            if (len == 0)
                rep = "\xEF\xBF\xBD";
            else
                skip = len;
        }
        if (rep) {
            buf_putn(b, s + run, i - run);
            buf_puts(b, rep);
            i += skip;
            run = i;
        } else {
            i += skip;
        }
    }
    buf_putn(b, s + run, n - run);
}

/* v as Go's strconv.FormatFloat(v, 'g', -1, 64) writes it (see the file comment). out holds
 * at least 32 bytes. */
static void format_double(double v, char out[32])
{
    if (isnan(v)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == 0) {
        strcpy(out, "0");
        return;
    }
    char e[32]; /* "-1.2345678901234567e+308" is the longest */
    int digits = 17;
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) {
            digits = p;
            break;
        }
    }
    snprintf(e, sizeof e, "%.*e", digits - 1, v);
    const char *x = strchr(e, 'e');
    int exp10 = x ? atoi(x + 1) : 0;
    if (exp10 < -4 || exp10 >= 6) {
        memcpy(out, e, strlen(e) + 1);
    } else {
        /* |v| < 1e6 and at most 20 decimals here: it fits. */
        int decimals = digits - 1 - exp10;
        snprintf(out, 32, "%.*f", decimals > 0 ? decimals : 0, v);
    }
}

static void put_double(buf *b, double v)
{
    char s[32];
    format_double(v, s);
    buf_puts(b, s);
}

static void put_u64(buf *b, uint64_t v)
{
    char s[24];
    snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    buf_puts(b, s);
}

/* ---- series lookup ----------------------------------------------------------------------- */

/* Label value i: NULL reads as "", and a value longer than METRICS_MAX_LABEL_VALUE is cut
 * there (before a UTF-8 sequence that would be split). */
static const char *label_value(const char *const *lv, size_t i, size_t *len)
{
    const char *v = lv[i] ? lv[i] : "";
    size_t n = strnlen(v, METRICS_MAX_LABEL_VALUE + 1);
    if (n > METRICS_MAX_LABEL_VALUE) {
        n = METRICS_MAX_LABEL_VALUE;
        for (int back = 0; back < 3 && n > 0 && ((unsigned char)v[n] & 0xC0) == 0x80; back++)
            n--;
    }
    *len = n;
    return v;
}

static uint64_t hash_values(const metrics_family *f, const char *const *lv,
                            const char **vals, size_t *lens)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < f->n_labels; i++) {
        vals[i] = label_value(lv, i, &lens[i]);
        const unsigned char *p = (const unsigned char *)vals[i];
        for (size_t k = 0; k < lens[i]; k++) {
            h ^= p[k];
            h *= 1099511628211ULL;
        }
        h ^= 0x100 + i; /* a separator no byte equals: ("ab","") differs from ("a","b") */
        h *= 1099511628211ULL;
    }
    return h;
}

static size_t head_of(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (size_t)(h & (HASH_HEADS - 1));
}

static bool same_values(const metrics_family *f, const series *s, const char **vals,
                        const size_t *lens)
{
    for (size_t i = 0; i < f->n_labels; i++)
        if (s->lens[i] != lens[i] || memcmp(s->values[i], vals[i], lens[i]) != 0)
            return false;
    return true;
}

static series *find_in_chain(series *s, const metrics_family *f, uint64_t h, const char **vals,
                             const size_t *lens)
{
    for (; s; s = s->next)
        if (s->hash == h && same_values(f, s, vals, lens))
            return s;
    return NULL;
}

/* Order of rendering: label values in label order, bytewise, a prefix first. */
static int compare_values(const metrics_family *f, const series *s, const char **vals,
                          const size_t *lens)
{
    for (size_t i = 0; i < f->n_labels; i++) {
        size_t n = s->lens[i] < lens[i] ? s->lens[i] : lens[i];
        int c = memcmp(s->values[i], vals[i], n);
        if (c != 0)
            return c;
        if (s->lens[i] != lens[i])
            return s->lens[i] < lens[i] ? -1 : 1;
    }
    return 0;
}

/* Build and publish a series; with the family full, count it in the overflow instead. */
static series *create_series(metrics_family *f, uint64_t h, const char **vals,
                             const size_t *lens)
{
    series *s = NULL;
    _Atomic(series *) *head = &f->heads[head_of(h)];
    pthread_mutex_lock(&f->lock);
    /* Another thread may have created it since our lock-free look. */
    s = find_in_chain(atomic_load_explicit(head, memory_order_relaxed), f, h, vals, lens);
    if (s)
        goto done;
    if (f->n_series >= METRICS_MAX_SERIES) {
        atomic_fetch_add_explicit(&f->overflow, 1, memory_order_relaxed);
        goto done;
    }
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 8;
        if (cap > METRICS_MAX_SERIES)
            cap = METRICS_MAX_SERIES;
        series **sorted = realloc(f->sorted, cap * sizeof *sorted);
        if (!sorted)
            goto done;
        f->sorted = sorted;
        f->cap_series = cap;
    }
    size_t n_counts = f->type == METRICS_HISTOGRAM ? f->n_bounds + 1 : 0;
    size_t size = sizeof(series) + n_counts * sizeof(_Atomic uint64_t);
    for (size_t i = 0; i < f->n_labels; i++)
        size += lens[i] + 1;
    size = (size + 63) & ~(size_t)63;
    s = aligned_alloc(64, size);
    if (!s)
        goto done;
    memset(s, 0, size);
    s->hash = h;
    atomic_init(&s->value, bits_of(0.0));
    for (size_t i = 0; i < n_counts; i++)
        atomic_init(&s->counts[i], 0);
    char *text = (char *)(s->counts + n_counts);
    for (size_t i = 0; i < f->n_labels; i++) {
        memcpy(text, vals[i], lens[i]);
        text[lens[i]] = '\0';
        s->values[i] = text;
        s->lens[i] = (uint16_t)lens[i];
        text += lens[i] + 1;
    }
    /* Insert into the sorted array (binary search for the first greater element). */
    size_t lo = 0, hi = f->n_series;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (compare_values(f, f->sorted[mid], vals, lens) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    memmove(f->sorted + lo + 1, f->sorted + lo, (f->n_series - lo) * sizeof *f->sorted);
    f->sorted[lo] = s;
    f->n_series++;
    s->next = atomic_load_explicit(head, memory_order_relaxed);
    atomic_store_explicit(head, s, memory_order_release);
done:
    pthread_mutex_unlock(&f->lock);
    return s;
}

/* The series for these label values, created on first use; NULL when it cannot be (the
 * family is full, out of memory, or values are missing). */
static series *get_series(metrics_family *f, const char *const *lv)
{
    if (f->n_labels > 0 && !lv)
        return NULL;
    const char *vals[METRICS_MAX_LABELS];
    size_t lens[METRICS_MAX_LABELS];
    uint64_t h = hash_values(f, lv, vals, lens);
    series *s = find_in_chain(atomic_load_explicit(&f->heads[head_of(h)], memory_order_acquire),
                              f, h, vals, lens);
    return s ? s : create_series(f, h, vals, lens);
}

/* ---- updates ----------------------------------------------------------------------------- */

void metrics_add(metrics_family *f, const char *const *label_values, double v)
{
    if (!f || f->type == METRICS_HISTOGRAM || isnan(v))
        return;
    if (f->type == METRICS_COUNTER && v < 0)
        return;
    series *s = get_series(f, label_values);
    if (s && v != 0)
        atomic_add_double(&s->value, v);
}

void metrics_set(metrics_family *f, const char *const *label_values, double v)
{
    if (!f || f->type == METRICS_HISTOGRAM)
        return;
    series *s = get_series(f, label_values);
    if (!s)
        return;
    if (f->type == METRICS_COUNTER)
        atomic_raise_double(&s->value, v); /* a counter never goes down */
    else
        atomic_store_explicit(&s->value, bits_of(v), memory_order_relaxed);
}

void metrics_observe(metrics_family *f, const char *const *label_values, double v)
{
    if (!f || f->type != METRICS_HISTOGRAM || isnan(v))
        return;
    series *s = get_series(f, label_values);
    if (!s)
        return;
    /* The first bucket whose upper bound is >= v ("le" is inclusive); n_bounds is +Inf. */
    size_t lo = 0, hi = f->n_bounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= f->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&s->counts[lo], 1, memory_order_relaxed);
    atomic_add_double(&s->value, v);
}

uint64_t metrics_overflow(const metrics_family *f)
{
    return f ? atomic_load_explicit(&((metrics_family *)f)->overflow, memory_order_relaxed) : 0;
}

/* ---- registry ---------------------------------------------------------------------------- */

int metrics_new(metrics **out)
{
    if (!out)
        return AR_E_INVALID;
    metrics *m = calloc(1, sizeof *m);
    if (!m)
        return AR_E_NOMEM;
    pthread_mutex_init(&m->lock, NULL);
    *out = m;
    return AR_OK;
}

static void family_free(metrics_family *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_series; i++)
        free(f->sorted[i]);
    free(f->sorted);
    for (size_t i = 0; i < f->n_labels; i++)
        free(f->label_names[i]);
    free(f->bounds);
    free(f->name);
    free(f->help);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_families; i++)
        family_free(m->families[i]);
    free(m->families);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* Everything about a registration that does not need the registry. */
static int check_family(const char *name, const char *help, metrics_type type,
                        const char *const *label_names, size_t n_labels, const double *buckets,
                        size_t n_buckets, ar_error *err)
{
    if (!valid_name(name, true))
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "metric name \"%s\" must match [a-zA-Z_:][a-zA-Z0-9_:]*",
                            name ? name : "(null)");
    if (strcmp(name, DROPPED_NAME) == 0)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "metric name %s is reserved for the registry's own use", name);
    if (type != METRICS_COUNTER && type != METRICS_GAUGE && type != METRICS_HISTOGRAM)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid", "metric %s: unknown type %d",
                            name, (int)type);
    if (type == METRICS_COUNTER && !ends_with(name, "_total"))
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "counter %s: a counter's name ends in _total", name);
    if (type != METRICS_COUNTER && ends_with(name, "_total"))
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "metric %s: only counters' names end in _total", name);
    if (!help || !*help)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid", "metric %s: help text missing",
                            name);
    if (n_labels > METRICS_MAX_LABELS)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "metric %s: %zu labels, at most %d", name, n_labels,
                            METRICS_MAX_LABELS);
    if (n_labels > 0 && !label_names)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "metric %s: label names missing", name);
    for (size_t i = 0; i < n_labels; i++) {
        const char *l = label_names[i];
        if (!valid_name(l, false))
            return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                "metric %s: label name \"%s\" must match [a-zA-Z_][a-zA-Z0-9_]*",
                                name, l ? l : "(null)");
        if (strncmp(l, "__", 2) == 0)
            return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                "metric %s: label names starting with __ are reserved", name);
        if (type == METRICS_HISTOGRAM && strcmp(l, "le") == 0)
            return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                "histogram %s: the label name le is the bucket's", name);
        for (size_t k = 0; k < i; k++)
            if (strcmp(label_names[k], l) == 0)
                return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                    "metric %s: label %s given twice", name, l);
    }
    if (type != METRICS_HISTOGRAM) {
        if (n_buckets > 0)
            return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                "metric %s: only histograms have buckets", name);
        return AR_OK;
    }
    if (n_buckets > MAX_BUCKETS)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "histogram %s: %zu buckets, at most %d", name, n_buckets,
                            MAX_BUCKETS);
    if (n_buckets > 0 && !buckets)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                            "histogram %s: bucket bounds missing", name);
    for (size_t i = 0; i < n_buckets; i++) {
        if (!isfinite(buckets[i]))
            return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                "histogram %s: bucket %zu is not finite (+Inf is implied)", name,
                                i);
        if (i > 0 && !(buckets[i] > buckets[i - 1]))
            return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                "histogram %s: buckets must be strictly ascending (bucket %zu)",
                                name, i);
    }
    return AR_OK;
}

int metrics_register(metrics *m, const char *name, const char *help, metrics_type type,
                     const char *const *label_names, size_t n_labels, const double *buckets,
                     size_t n_buckets, metrics_family **out, ar_error *err)
{
    if (out)
        *out = NULL;
    if (!m)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid", "no registry");
    int rc = check_family(name, help, type, label_names, n_labels, buckets, n_buckets, err);
    if (rc != AR_OK)
        return rc;

    metrics_family *f = calloc(1, sizeof *f);
    if (!f)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "metric %s: out of memory", name);
    pthread_mutex_init(&f->lock, NULL);
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help);
    if (!f->name || !f->help)
        goto nomem;
    for (size_t i = 0; i < n_labels; i++) {
        f->label_names[i] = strdup(label_names[i]);
        if (!f->label_names[i])
            goto nomem;
        f->n_labels = i + 1;
    }
    f->n_labels = n_labels;
    if (n_buckets > 0) {
        f->bounds = malloc(n_buckets * sizeof *f->bounds);
        if (!f->bounds)
            goto nomem;
        memcpy(f->bounds, buckets, n_buckets * sizeof *f->bounds);
    }
    f->n_bounds = n_buckets;
    for (size_t i = 0; i < HASH_HEADS; i++)
        atomic_init(&f->heads[i], NULL);
    atomic_init(&f->overflow, 0);
    /* Without labels there is exactly one series: make it now, so it renders (as 0) before
     * its first update, as Prometheus clients do. */
    if (n_labels == 0 && !get_series(f, NULL))
        goto nomem;

    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_families; i++) {
        const metrics_family *g = m->families[i];
        if (names_collide(g->name, g->type, name) || names_collide(name, type, g->name)) {
            pthread_mutex_unlock(&m->lock);
            family_free(f);
            return ar_error_set(err, AR_E_INVALID, "metrics_invalid",
                                "metric %s: clashes with the registered %s", name, g->name);
        }
    }
    if (m->n_families == m->cap_families) {
        size_t cap = m->cap_families ? m->cap_families * 2 : 16;
        metrics_family **families = realloc(m->families, cap * sizeof *families);
        if (!families) {
            pthread_mutex_unlock(&m->lock);
            goto nomem;
        }
        m->families = families;
        m->cap_families = cap;
    }
    m->families[m->n_families++] = f;
    pthread_mutex_unlock(&m->lock);
    if (out)
        *out = f;
    return AR_OK;
nomem:
    family_free(f);
    return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "metric %s: out of memory", name);
}

/* ---- rendering --------------------------------------------------------------------------- */

static const char *type_name(metrics_type t)
{
    return t == METRICS_COUNTER ? "counter" : t == METRICS_GAUGE ? "gauge" : "histogram";
}

/* name+suffix{l1="v1",...[,le="bound"]} then a space. le NULL: no bucket label. */
static void put_sample_name(buf *b, const metrics_family *f, const series *s, const char *suffix,
                            const char *le)
{
    buf_puts(b, f->name);
    buf_puts(b, suffix);
    if (f->n_labels == 0 && !le) {
        buf_putn(b, " ", 1);
        return;
    }
    buf_putn(b, "{", 1);
    for (size_t i = 0; i < f->n_labels; i++) {
        if (i > 0)
            buf_putn(b, ",", 1);
        buf_puts(b, f->label_names[i]);
        buf_putn(b, "=\"", 2);
        put_text(b, s->values[i], s->lens[i], true, true);
        buf_putn(b, "\"", 1);
    }
    if (le) {
        if (f->n_labels > 0)
            buf_putn(b, ",", 1);
        buf_puts(b, "le=\"");
        buf_puts(b, le);
        buf_putn(b, "\"", 1);
    }
    buf_putn(b, "} ", 2);
}

/* Per-bucket counts of s into cum (n_bounds + 1), made cumulative; returns the total. */
static uint64_t snapshot_counts(const metrics_family *f, series *s, uint64_t *cum)
{
    uint64_t total = 0;
    for (size_t i = 0; i <= f->n_bounds; i++) {
        total += atomic_load_explicit(&s->counts[i], memory_order_relaxed);
        cum[i] = total;
    }
    return total;
}

static void render_family(buf *b, metrics_family *f, uint64_t *cum)
{
    buf_puts(b, "# HELP ");
    buf_puts(b, f->name);
    buf_putn(b, " ", 1);
    put_text(b, f->help, strlen(f->help), true, false);
    buf_puts(b, "\n# TYPE ");
    buf_puts(b, f->name);
    buf_putn(b, " ", 1);
    buf_puts(b, type_name(f->type));
    buf_putn(b, "\n", 1);

    pthread_mutex_lock(&f->lock);
    for (size_t k = 0; k < f->n_series; k++) {
        series *s = f->sorted[k];
        if (f->type != METRICS_HISTOGRAM) {
            put_sample_name(b, f, s, "", NULL);
            put_double(b, atomic_get_double(&s->value));
            buf_putn(b, "\n", 1);
            continue;
        }
        uint64_t total = snapshot_counts(f, s, cum);
        char le[32];
        for (size_t i = 0; i <= f->n_bounds; i++) {
            if (i < f->n_bounds)
                format_double(f->bounds[i], le);
            else
                strcpy(le, "+Inf");
            put_sample_name(b, f, s, "_bucket", le);
            put_u64(b, cum[i]);
            buf_putn(b, "\n", 1);
        }
        put_sample_name(b, f, s, "_sum", NULL);
        put_double(b, atomic_get_double(&s->value));
        buf_putn(b, "\n", 1);
        put_sample_name(b, f, s, "_count", NULL);
        put_u64(b, total);
        buf_putn(b, "\n", 1);
    }
    pthread_mutex_unlock(&f->lock);
}

char *metrics_render(metrics *m)
{
    if (!m)
        return NULL;
    buf b = {0};
    uint64_t *cum = malloc((MAX_BUCKETS + 1) * sizeof *cum);
    if (!cum)
        return NULL;
    buf_putn(&b, "", 0); /* an empty registry renders as "" */
    pthread_mutex_lock(&m->lock);
    bool dropped = false;
    for (size_t i = 0; i < m->n_families; i++) {
        render_family(&b, m->families[i], cum);
        dropped = dropped || metrics_overflow(m->families[i]) > 0;
    }
    if (dropped) {
        buf_puts(&b, "# HELP " DROPPED_NAME
                     " New label sets refused because the family had reached its series limit.\n"
                     "# TYPE " DROPPED_NAME " counter\n");
        for (size_t i = 0; i < m->n_families; i++) {
            uint64_t n = metrics_overflow(m->families[i]);
            if (n == 0)
                continue;
            buf_puts(&b, DROPPED_NAME "{family=\"");
            buf_puts(&b, m->families[i]->name); /* a valid metric name needs no escaping */
            buf_puts(&b, "\"} ");
            put_double(&b, (double)n);
            buf_putn(&b, "\n", 1);
        }
    }
    pthread_mutex_unlock(&m->lock);
    free(cum);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- summaries --------------------------------------------------------------------------- */

/* Prometheus's histogram_quantile (promql bucketQuantile) on cumulative counts cum[0..n]
 * whose upper bounds are bounds[0..n-1] and +Inf. NaN without observations or without a
 * finite bucket. */
static double bucket_quantile(double q, const double *bounds, size_t n, const uint64_t *cum)
{
    if (q < 0)
        return -INFINITY;
    if (q > 1)
        return INFINITY;
    if (n < 1 || cum[n] == 0)
        return NAN;
    double rank = q * (double)cum[n];
    size_t b = 0;
    while (b < n && (double)cum[b] < rank)
        b++;
    if (b == n)
        return bounds[n - 1]; /* in the +Inf bucket: the highest finite bound */
    if (b == 0 && bounds[0] <= 0)
        return bounds[0];
    double start = 0, end = bounds[b], count = (double)cum[b];
    if (b > 0) {
        start = bounds[b - 1];
        count -= (double)cum[b - 1];
        rank -= (double)cum[b - 1];
    }
    return start + (end - start) * (rank / count);
}

/* A JSON number for v, null for NaN and infinities (JSON has neither). */
static json_t *json_double(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
    return v ? json_object_set_new(obj, key, v) : -1;
}

static json_t *series_json(const metrics_family *f, series *s, uint64_t *cum)
{
    json_t *o = json_object(), *labels = json_object();
    buf text = {0};
    if (!o || !labels)
        goto fail;
    for (size_t i = 0; i < f->n_labels; i++) {
        text.len = 0;
        buf_putn(&text, "", 0);
        put_text(&text, s->values[i], s->lens[i], false, false);
        if (text.failed || set_new(labels, f->label_names[i], json_stringn(text.p, text.len)))
            goto fail;
    }
    free(text.p);
    text.p = NULL;
    if (json_object_set_new(o, "labels", labels))
        goto fail_labels_owned;
    if (f->type != METRICS_HISTOGRAM) {
        if (set_new(o, "value", json_double(atomic_get_double(&s->value))))
            goto fail_labels_owned;
        return o;
    }
    uint64_t total = snapshot_counts(f, s, cum);
    static const struct {
        const char *key;
        double q;
    } qs[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}};
    if (set_new(o, "count", json_integer((json_int_t)total)) ||
        set_new(o, "sum", json_double(atomic_get_double(&s->value))))
        goto fail_labels_owned;
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++)
        if (set_new(o, qs[i].key, json_double(bucket_quantile(qs[i].q, f->bounds, f->n_bounds,
                                                              cum))))
            goto fail_labels_owned;
    return o;
fail:
    free(text.p);
    json_decref(labels);
fail_labels_owned:
    json_decref(o);
    return NULL;
}

int metrics_summary(metrics *m, const char *name, json_t **out, ar_error *err)
{
    if (out)
        *out = NULL;
    if (!m || !name || !out)
        return ar_error_set(err, AR_E_INVALID, "metrics_invalid", "metrics_summary: bad arguments");
    int rc = AR_OK;
    uint64_t *cum = NULL;
    json_t *arr = NULL;
    pthread_mutex_lock(&m->lock);
    metrics_family *f = NULL;
    for (size_t i = 0; i < m->n_families && !f; i++)
        if (strcmp(m->families[i]->name, name) == 0)
            f = m->families[i];
    if (!f) {
        rc = ar_error_set(err, AR_E_NOTFOUND, "metric_not_found", "no metric family named %s",
                          name);
        goto done;
    }
    cum = malloc((f->n_bounds + 1) * sizeof *cum);
    arr = json_array();
    if (!cum || !arr)
        goto nomem;
    pthread_mutex_lock(&f->lock);
    for (size_t k = 0; k < f->n_series; k++) {
        json_t *o = series_json(f, f->sorted[k], cum);
        if (!o || json_array_append_new(arr, o)) {
            pthread_mutex_unlock(&f->lock);
            goto nomem;
        }
    }
    pthread_mutex_unlock(&f->lock);
    *out = arr;
    arr = NULL;
    goto done;
nomem:
    rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "metric %s: out of memory", name);
done:
    pthread_mutex_unlock(&m->lock);
    json_decref(arr);
    free(cum);
    return rc;
}
