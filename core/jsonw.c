/* jsonw.c - JSON text from jansson values (see jsonw.h). */
#include "jsonw.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The flags written here; with any other flag set the value goes to jansson. */
#define HANDLED_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER)
/* Keys sorted on the stack up to this many; more are sorted in a heap array. */
#define SORT_ON_STACK 32
/* Keys sorted by insertion up to this many, by qsort beyond (measured on random keys: insertion
 * 25-30 % faster up to 32 keys, even at 64, slower at 96). */
#define INSERTION_SORT_MAX 32

/* A depth beyond JSONW_MAX_DEPTH: the whole value is handed to jansson. */
#define TOO_DEEP (-2)

int jsonw_reserve(jsonw_buf *b, size_t n)
{
    if (b->cap - b->len > n)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= n) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *data = b->borrowed ? malloc(cap) : realloc(b->data, cap);
    if (!data)
        return -1;
    if (b->borrowed && b->len)
        memcpy(data, b->data, b->len);
    b->data = data;
    b->cap = cap;
    b->borrowed = 0;
    return 0;
}

void jsonw_buf_free(jsonw_buf *b)
{
    if (!b->borrowed)
        free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->borrowed = 0;
}

/* The common case inline: the room is there. */
static inline int room(jsonw_buf *b, size_t n)
{
    return b->cap - b->len > n ? 0 : jsonw_reserve(b, n);
}

static int put(jsonw_buf *b, const char *s, size_t n)
{
    if (room(b, n) != 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static int put_char(jsonw_buf *b, char c)
{
    if (room(b, 1) != 0)
        return -1;
    b->data[b->len++] = c;
    return 0;
}

/* The length of the UTF-8 sequence at s (at most n bytes), 0 when it is not one: jansson's
 * rules (no overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
    unsigned char u = s[0];
    size_t count;
    uint32_t value;
    if (u < 0xC2)
        return 0; /* continuation byte, or the overlong 0xC0/0xC1 (ASCII is handled by the caller) */
    if (u <= 0xDF) {
        count = 2;
        value = u & 0x1F;
    } else if (u <= 0xEF) {
        count = 3;
        value = u & 0x0F;
    } else if (u <= 0xF4) {
        count = 4;
        value = u & 0x07;
    } else {
        return 0;
    }
    if (count > n)
        return 0;
    for (size_t i = 1; i < count; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        value = (value << 6) | (s[i] & 0x3F);
    }
    if (value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF) ||
        (count == 3 && value < 0x800) || (count == 4 && value < 0x10000))
        return 0;
    return count;
}

static const char hex_digits[] = "0123456789ABCDEF";

/* 1 for the bytes a string cannot hold as they are: controls, the quote, the backslash, and
 * the start of a multi-byte sequence (checked before it is copied). */
static const unsigned char special[256] = {
    [0 ... 0x1F] = 1, ['"'] = 1, ['\\'] = 1, [0x80 ... 0xFF] = 1,
};

/* The letter of a two-byte escape ("\n"), 0 for a control written as \u00XX. */
static const char short_escape[0x80] = {
    ['"'] = '"', ['\\'] = '\\', ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
};

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load8(const unsigned char *s)
{
    uint64_t x;
    memcpy(&x, s, sizeof x);
    return x;
}

/* The n bytes at s (1 to 7) as load8 would read them, the bytes behind them plain ('a'), read
 * without going past s + n. */
static inline uint64_t load_short(const unsigned char *s, size_t n)
{
    uint64_t x;
    if (n >= 4) {
        uint32_t low, high; /* they overlap: the bytes both hold are the same */
        memcpy(&low, s, sizeof low);
        memcpy(&high, s + n - 4, sizeof high);
        x = low | (uint64_t)high << (8 * (n - 4));
    } else {
        x = s[0] | (uint64_t)s[n / 2] << (8 * (n / 2)) | (uint64_t)s[n - 1] << (8 * (n - 1));
    }
    return x | (ONES * 'a') << (8 * n);
}

/* Words are scanned on little-endian machines, where a borrow runs from a byte to the one after
 * it in memory (see special_bytes); elsewhere byte by byte. */
#define WORD_SCAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

/* The high bit of a byte of the result is set for each byte of x that is special (a control,
 * the quote, the backslash, a byte >= 0x80). A borrow may also mark bytes after the first
 * special one, never one before it: zero means none, and the lowest mark is exact. */
static inline uint64_t special_bytes(uint64_t x)
{
    return ((x - ONES * 0x20) | ((x ^ (ONES * '"')) - ONES) | ((x ^ (ONES * '\\')) - ONES) | x) &
           HIGHS;
}

/* Input bytes escaped per reservation: each becomes at most 6 bytes, so one reservation covers
 * a whole short string and a long one does not reserve six times its length at once. */
#define STRING_CHUNK 4096
/* Beyond 6 bytes per input byte: the opening quote, 8 bytes a word copy may store ahead, the 3
 * bytes a UTF-8 sequence may run past its chunk, the closing quote and what a caller writes
 * after it (a key's colon). */
#define STRING_SLACK 16

/* Append s quoted and escaped, then the character after (when nonzero), with one reservation
 * for a short string. -1 (not UTF-8, or out of memory) leaves b->len somewhere behind where it
 * started; the caller resets it. */
static inline int put_string_then(jsonw_buf *b, const char *str, size_t len, char after)
{
    const unsigned char *s = (const unsigned char *)str, *end = s + len;
    size_t chunk = len < STRING_CHUNK ? len : STRING_CHUNK;
    if (room(b, chunk * 6 + STRING_SLACK) != 0)
        return -1;
    char *d = b->data + b->len;
    *d++ = '"';
    for (;;) {
        const unsigned char *stop = s + chunk;
        while (s < stop) {
            unsigned char c;
            if (WORD_SCAN) {
                /* Eight bytes at a time (the last few padded with plain ones); all eight are
                 * stored, the special one and those after it are overwritten below. */
                size_t rest = (size_t)(stop - s), step = rest < 8 ? rest : 8;
                uint64_t x = rest >= 8 ? load8(s) : load_short(s, rest), marks = special_bytes(x);
                memcpy(d, &x, sizeof x);
                if (!marks) {
                    s += step;
                    d += step;
                    continue;
                }
                size_t plain = (size_t)__builtin_ctzll(marks) >> 3; /* the first in memory */
                s += plain;
                d += plain;
                c = *s;
            } else {
                c = *s;
                if (!special[c]) {
                    *d++ = (char)c;
                    s++;
                    continue;
                }
            }
            if (c < 0x80) {
                d[0] = '\\';
                if (short_escape[c]) {
                    d[1] = short_escape[c];
                    d += 2;
                } else {
                    memcpy(d + 1, "u00", 3);
                    d[4] = hex_digits[c >> 4];
                    d[5] = hex_digits[c & 0xF];
                    d += 6;
                }
                s++;
                continue;
            }
            size_t n = utf8_sequence(s, (size_t)(end - s));
            if (n == 0) {
                b->len = (size_t)(d - b->data);
                return -1;
            }
            d[0] = (char)s[0];
            d[1] = (char)s[1];
            if (n > 2)
                d[2] = (char)s[2];
            if (n > 3)
                d[3] = (char)s[3];
            d += n;
            s += n;
        }
        if (s >= end)
            break;
        /* The next chunk of a long string. */
        b->len = (size_t)(d - b->data);
        chunk = (size_t)(end - s) < STRING_CHUNK ? (size_t)(end - s) : STRING_CHUNK;
        if (room(b, chunk * 6 + STRING_SLACK) != 0)
            return -1;
        d = b->data + b->len;
    }
    *d++ = '"';
    if (after)
        *d++ = after;
    b->len = (size_t)(d - b->data);
    return 0;
}

static int put_string(jsonw_buf *b, const char *str, size_t len)
{
    return put_string_then(b, str, len, 0);
}

/* "00" to "99": two digits per division. */
static const char digit_pairs[201] = "00010203040506070809101112131415161718192021222324"
                                     "25262728293031323334353637383940414243444546474849"
                                     "50515253545556575859606162636465666768697071727374"
                                     "75767778798081828384858687888990919293949596979899";

static const unsigned long long powers_of_ten[20] = {
    1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull, 100000000ull,
    1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull, 10000000000000ull,
    100000000000000ull, 1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
    1000000000000000000ull, 10000000000000000000ull,
};

/* The number of decimal digits of u: log10 estimated from its bit length (1233/4096 is just
 * above log10(2)), then corrected by one comparison. */
static inline size_t decimal_digits(unsigned long long u)
{
    if (u < 10)
        return 1;
    size_t estimate = (size_t)(64 - __builtin_clzll(u)) * 1233 >> 12;
    return estimate + (u >= powers_of_ten[estimate]);
}

static int put_integer(jsonw_buf *b, json_int_t value)
{
    if (room(b, 20) != 0) /* "-9223372036854775808" */
        return -1;
    char *d = b->data + b->len;
    /* Unsigned arithmetic: the most negative value has no positive counterpart. */
    unsigned long long u = value < 0 ? 0ull - (unsigned long long)value : (unsigned long long)value;
    if (value < 0)
        *d++ = '-';
    size_t digits = decimal_digits(u);
    char *p = d + digits;
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        p -= 2;
        memcpy(p, digit_pairs + 2 * r, 2);
    }
    if (u >= 10) {
        p -= 2;
        memcpy(p, digit_pairs + 2 * u, 2);
    } else {
        *--p = (char)('0' + u);
    }
    b->len = (size_t)(d + digits - b->data);
    return 0;
}

static int put_real(jsonw_buf *b, const json_t *v)
{
    char text[128];
    size_t n = json_dumpb(v, text, sizeof text, JSON_ENCODE_ANY);
    if (n == 0 || n > sizeof text)
        return -1;
    return put(b, text, n);
}

typedef struct key_ref {
    uint64_t head; /* the first 8 bytes, big-endian, zero-padded: most keys differ in them */
    const char *key;
    size_t len;
    json_t *value;
} key_ref;

static uint64_t key_head(const char *key, size_t len)
{
    const unsigned char *k = (const unsigned char *)key;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (len >= 8)
        return __builtin_bswap64(load8(k));
    if (len == 0)
        return 0;
    /* Without load_short's padding: zeros behind the key. */
    return __builtin_bswap64(load_short(k, len) & ((1ull << (8 * len)) - 1));
#else
    uint64_t head = 0;
    for (size_t i = 0; i < 8; i++)
        head = (head << 8) | (i < len ? k[i] : 0);
    return head;
#endif
}

/* jansson's order for JSON_SORT_KEYS: the common bytes (memcmp), then the shorter first.
 * Different heads decide it: where they first differ is either a common byte or the padding
 * of the shorter key (a zero against a byte of the longer one, whose common part is equal).
 * With equal heads the first min(len, 8) bytes are equal. */
static inline int key_order(const key_ref *x, const key_ref *y)
{
    if (x->head != y->head)
        return x->head < y->head ? -1 : 1;
    size_t common = x->len < y->len ? x->len : y->len;
    if (common > 8) {
        int r = memcmp(x->key + 8, y->key + 8, common - 8);
        if (r)
            return r;
    }
    return x->len < y->len ? -1 : x->len > y->len;
}

static int compare_key_refs(const void *a, const void *b)
{
    return key_order(*(const key_ref *const *)a, *(const key_ref *const *)b);
}

/* Sorts pointers (cheaper to move than the refs). */
static void sort_keys(const key_ref **order, size_t n)
{
    if (n > INSERTION_SORT_MAX) {
        qsort(order, n, sizeof *order, compare_key_refs);
        return;
    }
    /* An object of a record has a few dozen keys: insertion sort beats qsort's merge sort
     * (no calls through a comparator, no temporary array). */
    for (size_t i = 1; i < n; i++) {
        const key_ref *k = order[i];
        size_t j = i;
        while (j > 0 && key_order(k, order[j - 1]) < 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
}

static int put_value(jsonw_buf *b, const json_t *v, size_t flags, int depth);

static inline int put_member(jsonw_buf *b, const char *key, size_t key_len, const json_t *value,
                             size_t flags, int depth, int first)
{
    if (flags & JSON_COMPACT) {
        if (!first && put_char(b, ',') != 0)
            return -1;
        if (put_string_then(b, key, key_len, ':') != 0)
            return -1;
    } else {
        if (!first && put(b, ", ", 2) != 0)
            return -1;
        if (put_string_then(b, key, key_len, ':') != 0 || put_char(b, ' ') != 0)
            return -1;
    }
    return put_value(b, value, flags, depth + 1);
}

static int put_sorted_object(jsonw_buf *b, const json_t *v, size_t flags, int depth)
{
    size_t n = json_object_size(v), i = 0;
    key_ref stack_keys[SORT_ON_STACK];
    const key_ref *stack_order[SORT_ON_STACK];
    key_ref *keys = stack_keys;
    const key_ref **order = stack_order;
    if (n > SORT_ON_STACK) {
        if (n > SIZE_MAX / (sizeof *keys + sizeof *order) ||
            !(keys = malloc(n * (sizeof *keys + sizeof *order))))
            return -1;
        order = (const key_ref **)(keys + n);
    }
    for (void *it = json_object_iter((json_t *)v); it && i < n;
         it = json_object_iter_next((json_t *)v, it), i++) {
        keys[i].key = json_object_iter_key(it);
        keys[i].len = json_object_iter_key_len(it);
        keys[i].head = key_head(keys[i].key, keys[i].len);
        keys[i].value = json_object_iter_value(it);
        order[i] = &keys[i];
    }
    sort_keys(order, i);
    int rc = 0;
    for (size_t k = 0; k < i && rc == 0; k++)
        rc = put_member(b, order[k]->key, order[k]->len, order[k]->value, flags, depth, k == 0);
    if (keys != stack_keys)
        free(keys);
    return rc;
}

static int put_object(jsonw_buf *b, const json_t *v, size_t flags, int depth)
{
    if (put_char(b, '{') != 0)
        return -1;
    int rc = 0;
    if (flags & JSON_SORT_KEYS) {
        rc = put_sorted_object(b, v, flags, depth);
    } else {
        int first = 1;
        for (void *it = json_object_iter((json_t *)v); it && rc == 0;
             it = json_object_iter_next((json_t *)v, it), first = 0)
            rc = put_member(b, json_object_iter_key(it), json_object_iter_key_len(it),
                            json_object_iter_value(it), flags, depth, first);
    }
    return rc != 0 ? rc : put_char(b, '}');
}

static int put_array(jsonw_buf *b, const json_t *v, size_t flags, int depth)
{
    if (put_char(b, '[') != 0)
        return -1;
    size_t n = json_array_size(v);
    for (size_t i = 0; i < n; i++) {
        if (i && put(b, (flags & JSON_COMPACT) ? "," : ", ", (flags & JSON_COMPACT) ? 1 : 2) != 0)
            return -1;
        int rc = put_value(b, json_array_get(v, i), flags, depth + 1);
        if (rc != 0)
            return rc;
    }
    return put_char(b, ']');
}

static int put_value(jsonw_buf *b, const json_t *v, size_t flags, int depth)
{
    if (!v)
        return -1;
    if (depth > JSONW_MAX_DEPTH)
        return TOO_DEEP;
    switch (json_typeof(v)) {
    case JSON_NULL: return put(b, "null", 4);
    case JSON_TRUE: return put(b, "true", 4);
    case JSON_FALSE: return put(b, "false", 5);
    case JSON_INTEGER: return put_integer(b, json_integer_value(v));
    case JSON_REAL: return put_real(b, v);
    case JSON_STRING: return put_string(b, json_string_value(v), json_string_length(v));
    case JSON_ARRAY: return put_array(b, v, flags, depth);
    case JSON_OBJECT: return put_object(b, v, flags, depth);
    }
    return -1;
}

/* jansson's text for what jsonw does not write, appended to b. */
static int append_from_jansson(jsonw_buf *b, const json_t *v, size_t flags)
{
    char *text = json_dumps(v, flags);
    if (!text)
        return -1;
    int rc = put(b, text, strlen(text));
    free(text);
    return rc;
}

int jsonw_append(jsonw_buf *b, const json_t *v, size_t flags)
{
    if (!v)
        return -1;
    if (flags & ~(size_t)HANDLED_FLAGS)
        return append_from_jansson(b, v, flags);
    if (!(flags & JSON_ENCODE_ANY) && !json_is_object(v) && !json_is_array(v))
        return -1;
    size_t start = b->len;
    int rc = put_value(b, v, flags, 0);
    if (rc == 0)
        return 0;
    b->len = start;
    return rc == TOO_DEEP ? append_from_jansson(b, v, flags) : -1;
}

int jsonw_append_raw(jsonw_buf *b, const char *text, size_t n)
{
    return put(b, text, n);
}

int jsonw_append_string(jsonw_buf *b, const char *s, size_t len)
{
    size_t start = b->len;
    if (put_string(b, s, len) == 0)
        return 0;
    b->len = start;
    return -1;
}

char *jsonw_take(jsonw_buf *b)
{
    char *out = NULL;
    if (!b->borrowed && room(b, 1) == 0) {
        out = b->data; /* the heap buffer itself: no copy */
    } else if ((out = malloc(b->len + 1))) {
        memcpy(out, b->data, b->len);
    }
    if (out) {
        out[b->len] = '\0';
        if (out == b->data)
            b->data = NULL;
    }
    jsonw_buf_free(b);
    return out;
}

char *jsonw_dumps(const json_t *v, size_t flags)
{
    /* Most texts fit on the stack: one heap allocation, the result, in the common case. */
    char stack[4096];
    jsonw_buf b = {stack, 0, sizeof stack, 1};
    if (jsonw_append(&b, v, flags) != 0) {
        jsonw_buf_free(&b);
        return NULL;
    }
    return jsonw_take(&b);
}
