/* jsonw.c - JSON text from jansson values (see jsonw.h). */
#include "jsonw.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The flags written here; with any other flag set the value goes to jansson. */
#define HANDLED_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER)
/* Keys sorted on the stack up to this many; more are sorted in a heap array. */
#define SORT_ON_STACK 32

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

/* An escape for the ASCII byte c, or 0 when it is written as it is. */
static size_t escape_of(unsigned char c, char out[6])
{
    const char *two = NULL;
    switch (c) {
    case '"': two = "\\\""; break;
    case '\\': two = "\\\\"; break;
    case '\b': two = "\\b"; break;
    case '\f': two = "\\f"; break;
    case '\n': two = "\\n"; break;
    case '\r': two = "\\r"; break;
    case '\t': two = "\\t"; break;
    default:
        if (c >= 0x20)
            return 0;
        memcpy(out, "\\u00", 4);
        out[4] = hex_digits[c >> 4];
        out[5] = hex_digits[c & 0xF];
        return 6;
    }
    memcpy(out, two, 2);
    return 2;
}

/* 1 for the bytes a string cannot hold as they are: controls, the quote, the backslash, and
 * the start of a multi-byte sequence (checked before it is copied). */
static const unsigned char special[256] = {
    [0 ... 0x1F] = 1, ['"'] = 1, ['\\'] = 1, [0x80 ... 0xFF] = 1,
};

static int put_string(jsonw_buf *b, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str, *end = s + len;
    if (room(b, len + 2) != 0)
        return -1;
    b->data[b->len++] = '"';
    while (s < end) {
        const unsigned char *run = s;
        while (s < end && !special[*s])
            s++;
        if (s > run && put(b, (const char *)run, (size_t)(s - run)) != 0)
            return -1;
        if (s == end)
            break;
        if (*s >= 0x80) {
            size_t n = utf8_sequence(s, (size_t)(end - s));
            if (n == 0 || put(b, (const char *)s, n) != 0)
                return -1;
            s += n;
            continue;
        }
        char esc[6];
        size_t n = escape_of(*s, esc);
        if (put(b, esc, n) != 0)
            return -1;
        s++;
    }
    return put_char(b, '"');
}

static int put_integer(jsonw_buf *b, json_int_t value)
{
    char digits[24];
    size_t i = sizeof digits;
    /* Unsigned arithmetic: the most negative value has no positive counterpart. */
    unsigned long long u = value < 0 ? 0ull - (unsigned long long)value : (unsigned long long)value;
    do {
        digits[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (value < 0)
        digits[--i] = '-';
    return put(b, digits + i, sizeof digits - i);
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
    const char *key;
    size_t len;
    json_t *value;
} key_ref;

/* jansson's order for JSON_SORT_KEYS: the common bytes, then the shorter first. */
static int compare_keys(const void *a, const void *b)
{
    const key_ref *x = a, *y = b;
    int r = memcmp(x->key, y->key, x->len < y->len ? x->len : y->len);
    if (r)
        return r;
    return x->len < y->len ? -1 : x->len > y->len;
}

static int put_value(jsonw_buf *b, const json_t *v, size_t flags, int depth);

static int put_member(jsonw_buf *b, const char *key, size_t key_len, const json_t *value,
                      size_t flags, int depth, int first)
{
    if (!first && put(b, (flags & JSON_COMPACT) ? "," : ", ", (flags & JSON_COMPACT) ? 1 : 2) != 0)
        return -1;
    if (put_string(b, key, key_len) != 0 ||
        put(b, (flags & JSON_COMPACT) ? ":" : ": ", (flags & JSON_COMPACT) ? 1 : 2) != 0)
        return -1;
    return put_value(b, value, flags, depth + 1);
}

static int put_sorted_object(jsonw_buf *b, const json_t *v, size_t flags, int depth)
{
    size_t n = json_object_size(v), i = 0;
    key_ref stack_keys[SORT_ON_STACK];
    key_ref *keys = n <= SORT_ON_STACK ? stack_keys : malloc(n * sizeof *keys);
    if (!keys)
        return -1;
    for (void *it = json_object_iter((json_t *)v); it && i < n;
         it = json_object_iter_next((json_t *)v, it), i++) {
        keys[i].key = json_object_iter_key(it);
        keys[i].len = json_object_iter_key_len(it);
        keys[i].value = json_object_iter_value(it);
    }
    qsort(keys, i, sizeof *keys, compare_keys);
    int rc = 0;
    for (size_t k = 0; k < i && rc == 0; k++)
        rc = put_member(b, keys[k].key, keys[k].len, keys[k].value, flags, depth, k == 0);
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
