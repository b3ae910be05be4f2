/* test_jsonw.c - jsonw writes what json_dumps writes: random values compared with jansson byte
 * for byte under every flag combination jsonw handles, the corners one by one (every byte in a
 * string, invalid UTF-8, the integer extremes, reals, key order with shared prefixes and NULs,
 * deep nesting, a cycle), flags handed to jansson, and the buffer API. The fast paths each
 * have their own: the word-at-a-time scan (every special byte at every position, chunk edges,
 * stores checked against exact-size heap blocks), the sort on 8-byte key heads (random
 * objects on both sides of the insertion-sort limit, keys alike in their first 8 bytes) and
 * the digit count (every length at its edges). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonw.h"
#include "test_main.h"

static const size_t flag_sets[] = {
    JSON_COMPACT, JSON_COMPACT | JSON_SORT_KEYS, 0, JSON_SORT_KEYS, JSON_COMPACT | JSON_ENCODE_ANY,
    JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY, JSON_COMPACT | JSON_PRESERVE_ORDER,
    JSON_ENCODE_ANY | JSON_SORT_KEYS,
};
#define N_FLAG_SETS (sizeof flag_sets / sizeof flag_sets[0])

/* Both refuse, or both write the same bytes. */
static void assert_same_text(const json_t *v, size_t flags)
{
    char *expected = json_dumps(v, flags);
    char *got = jsonw_dumps(v, flags);
    if (!expected || !got || strcmp(expected, got) != 0) {
        if (expected || got)
            fprintf(stderr, "flags %#zx\n jansson: %s\n jsonw:   %s\n", flags,
                    expected ? expected : "(refused)", got ? got : "(refused)");
        assert_true((expected == NULL) == (got == NULL));
        if (expected)
            assert_string_equal(got, expected);
    }
    free(expected);
    free(got);
}

static void assert_same_every_flag(const json_t *v)
{
    for (size_t f = 0; f < N_FLAG_SETS; f++)
        assert_same_text(v, flag_sets[f]);
}

/* ---- a deterministic generator of values ---------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: deterministic, so a failure repeats with the same seed. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static size_t rnd_below(size_t n) { return (size_t)(rnd() % n); }

/* Bytes that are mostly text, with escapes, UTF-8 of every length and (when allowed) bytes
 * that are not UTF-8. */
static size_t random_bytes(char *out, size_t cap, int allow_invalid)
{
    static const char *pieces[] = {"a", "Z", "hello", " ", "\"", "\\", "/", "\n", "\t", "\r",
                                   "\b", "\f", "\x01", "\x1f", "\x7f", "\xc3\xa9", "\xe2\x82\xac",
                                   "\xf0\x9f\x98\x80", "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", "{}", ":,"};
    static const char *bad[] = {"\xc3", "\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf5\x80\x80\x80",
                                "\xe2\x82", "\xf4\x90\x80\x80", "\xff", "\xe0\x80\x80"};
    size_t len = 0, parts = rnd_below(6);
    for (size_t i = 0; i < parts; i++) {
        const char *p = allow_invalid && rnd_below(20) == 0 ? bad[rnd_below(sizeof bad / sizeof *bad)]
                                                           : pieces[rnd_below(sizeof pieces / sizeof *pieces)];
        size_t n = strlen(p);
        if (len + n > cap)
            break;
        memcpy(out + len, p, n);
        len += n;
    }
    if (rnd_below(30) == 0 && len < cap)
        out[len++] = '\0'; /* an embedded NUL (json_stringn) */
    return len;
}

static json_t *random_value(int depth, int allow_invalid)
{
    size_t kind = depth >= 5 ? rnd_below(6) : rnd_below(9);
    char text[64];
    switch (kind) {
    case 0: return json_null();
    case 1: return json_boolean(rnd_below(2));
    case 2: {
        static const json_int_t edges[] = {0, -1, 1, 9, 10, -10, INT64_MAX, INT64_MIN, 1000000007};
        return json_integer(rnd_below(3) ? (json_int_t)(rnd() >> rnd_below(64)) * (rnd_below(2) ? 1 : -1)
                                         : edges[rnd_below(sizeof edges / sizeof *edges)]);
    }
    case 3: {
        static const double reals[] = {0.0, -0.0, 1.0, 0.1, -2.5, 1e300, 1e-300, 123456789.125, 3.0e21};
        return json_real(reals[rnd_below(sizeof reals / sizeof *reals)]);
    }
    case 4:
    case 5: {
        size_t n = random_bytes(text, sizeof text, allow_invalid);
        return json_stringn_nocheck(text, n);
    }
    case 6:
    case 7: {
        json_t *o = json_object();
        size_t n = rnd_below(12);
        for (size_t i = 0; i < n; i++) {
            size_t kl = random_bytes(text, sizeof text, 0);
            json_object_setn_new_nocheck(o, text, kl, random_value(depth + 1, allow_invalid));
        }
        return o;
    }
    default: {
        json_t *a = json_array();
        size_t n = rnd_below(8);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, random_value(depth + 1, allow_invalid));
        return a;
    }
    }
}

/* ---- cases -------------------------------------------------------------------------------- */

static void random_values_match_jansson(void **state)
{
    (void)state;
    rng_state = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 4000; i++) {
        json_t *v = random_value(0, 0);
        assert_same_every_flag(v);
        json_decref(v);
    }
}

static void random_values_with_invalid_utf8_refused_alike(void **state)
{
    (void)state;
    rng_state = 0x2545f4914f6cdd1dull;
    int refused = 0;
    for (int i = 0; i < 4000; i++) {
        json_t *v = random_value(0, 1);
        char *expected = json_dumps(v, JSON_COMPACT);
        refused += expected == NULL;
        free(expected);
        assert_same_every_flag(v);
        json_decref(v);
    }
    assert_true(refused > 0); /* the generator did make strings jansson refuses */
}

static void every_byte_in_a_string(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        char s[3] = {'x', (char)c, 'y'};
        json_t *v = json_pack("{s:o}", "k", json_stringn_nocheck(s, sizeof s));
        assert_same_every_flag(v);
        json_decref(v);
    }
}

static void utf8_edges(void **state)
{
    (void)state;
    static const char *texts[] = {
        "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf", "\xee\x80\x80", "\xf0\x90\x80\x80",
        "\xf4\x8f\xbf\xbf", /* the valid edges */
        "\xc1\xbf", "\xe0\x9f\xbf", "\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x8f\xbf\xbf",
        "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", "\xc2", "\xe0\xa0", "\xc2\x41", /* refused */
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        json_t *v = json_pack("[o]", json_string_nocheck(texts[i]));
        assert_same_every_flag(v);
        json_decref(v);
    }
}

static void integer_extremes_and_reals(void **state)
{
    (void)state;
    json_t *v = json_pack("[I,I,I,I,I,f,f,f,f,f,f]", (json_int_t)INT64_MIN, (json_int_t)INT64_MAX,
                          (json_int_t)0, (json_int_t)-1, (json_int_t)-9223372036854775807LL, 0.5,
                          -0.0, 1e22, 1.7976931348623157e308, 5e-324, 100.0);
    assert_same_every_flag(v);
    json_decref(v);
}

static void scalars_need_encode_any(void **state)
{
    (void)state;
    json_t *scalars[] = {json_null(), json_true(), json_integer(42), json_string("s"), json_real(2.0)};
    for (size_t i = 0; i < sizeof scalars / sizeof *scalars; i++) {
        char *refused = jsonw_dumps(scalars[i], JSON_COMPACT);
        assert_null(refused);
        assert_same_every_flag(scalars[i]);
        json_decref(scalars[i]);
    }
    assert_null(jsonw_dumps(NULL, JSON_COMPACT | JSON_ENCODE_ANY));
}

static void sorted_keys_in_janssons_order(void **state)
{
    (void)state;
    json_t *o = json_object();
    static const char *keys[] = {"b", "a", "ab", "aa", "a\x7f", "A", "", "\xc3\xa9", "abc", "ab0"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        json_object_set_new(o, keys[i], json_integer((json_int_t)i));
    json_object_setn_new(o, "a\0b", 3, json_true()); /* a NUL inside a key */
    json_object_setn_new(o, "a\0", 2, json_false());
    char many[8];
    for (int i = 0; i < 100; i++) { /* more than are sorted on the stack */
        snprintf(many, sizeof many, "k%03d", (i * 37) % 100);
        json_object_set_new(o, many, json_integer(i));
    }
    assert_same_every_flag(o);
    char *text = jsonw_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(text);
    assert_true(strncmp(text, "{\"\":6,\"A\":5,\"a\":1,\"a\\u0000\":false,\"a\\u0000b\":true,", 50) == 0);
    free(text);
    json_decref(o);
}

static void insertion_order_kept(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:i}", "z", 1);
    json_object_set_new(o, "a", json_integer(2));
    json_object_set_new(o, "m", json_integer(3));
    json_object_del(o, "a");
    json_object_set_new(o, "a", json_integer(4));
    char *text = jsonw_dumps(o, JSON_COMPACT);
    assert_string_equal(text, "{\"z\":1,\"m\":3,\"a\":4}");
    free(text);
    assert_same_every_flag(o);
    json_decref(o);
}

static json_t *nested(int depth)
{
    json_t *v = json_integer(7);
    for (int i = 0; i < depth; i++)
        v = i % 2 ? json_pack("[o]", v) : json_pack("{s:o}", "k", v);
    return v;
}

static void deep_values_written_by_jansson(void **state)
{
    (void)state;
    int depths[] = {JSONW_MAX_DEPTH - 1, JSONW_MAX_DEPTH, JSONW_MAX_DEPTH + 1, 1000};
    for (size_t i = 0; i < sizeof depths / sizeof *depths; i++) {
        json_t *v = nested(depths[i]);
        assert_same_every_flag(v);
        json_decref(v);
    }
}

static void cycle_refused(void **state)
{
    (void)state;
    json_t *o = json_object(), *a = json_array();
    json_object_set(o, "a", a);
    json_array_append(a, o); /* o -> a -> o */
    assert_null(jsonw_dumps(o, JSON_COMPACT));
    assert_null(json_dumps(o, JSON_COMPACT));
    json_array_clear(a); /* break the cycle so both can be freed */
    json_decref(a);
    json_decref(o);
}

static void other_flags_handed_to_jansson(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:s, s:[i, f], s:{}}", "path", "/a/b \xc3\xa9", "n", 1, 0.1, "e");
    size_t flags[] = {JSON_INDENT(2), JSON_ENSURE_ASCII | JSON_COMPACT, JSON_ESCAPE_SLASH,
                      JSON_REAL_PRECISION(3) | JSON_COMPACT, JSON_EMBED | JSON_COMPACT,
                      JSON_INDENT(4) | JSON_SORT_KEYS};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        assert_same_text(v, flags[i]);
    json_decref(v);
}

static void invalid_key_refused(void **state)
{
    (void)state;
    json_t *o = json_object();
    json_object_setn_new_nocheck(o, "ok\xff", 3, json_true());
    assert_null(jsonw_dumps(o, JSON_COMPACT)); /* jansson writes "{\"ok" and goes on */
    assert_null(jsonw_dumps(o, JSON_COMPACT | JSON_SORT_KEYS));
    json_decref(o);
}

static void append_grows_and_keeps_text_on_failure(void **state)
{
    (void)state;
    char small[8];
    jsonw_buf b = {small, 0, sizeof small, 1};
    json_t *ok = json_pack("{s:s}", "message", "a text longer than the eight bytes on the stack");
    json_t *bad = json_pack("[o]", json_string_nocheck("\xff"));
    assert_int_equal(jsonw_append(&b, ok, JSON_COMPACT), 0);
    assert_int_equal(b.borrowed, 0); /* moved to the heap */
    size_t len = b.len;
    assert_int_equal(jsonw_append(&b, bad, JSON_COMPACT), -1);
    assert_int_equal(b.len, len);
    assert_int_equal(jsonw_append(&b, ok, JSON_COMPACT), 0);
    char *one = json_dumps(ok, JSON_COMPACT);
    assert_int_equal(b.len, 2 * strlen(one));
    assert_memory_equal(b.data, one, strlen(one));
    assert_memory_equal(b.data + strlen(one), one, strlen(one));
    free(one);
    assert_int_equal(jsonw_reserve(&b, 100000), 0);
    assert_true(b.cap - b.len > 100000);
    jsonw_buf_free(&b);
    assert_null(b.data);
    json_decref(ok);
    json_decref(bad);
}

static void large_text_beyond_the_stack(void **state)
{
    (void)state;
    json_t *a = json_array();
    for (int i = 0; i < 2000; i++)
        json_array_append_new(a, json_pack("{s:i, s:s}", "i", i, "s", "twenty bytes of text"));
    assert_same_every_flag(a);
    json_decref(a);
}

/* ---- the fast paths: the word scan, the key order, the digits ------------------------------- */

/* text[0..n) as a string value, as the key of an object and through jsonw_append_string: the
 * same bytes as jansson's, or refused where jansson refuses the value. */
static void assert_string_written_alike(const char *text, size_t n)
{
    json_t *value = json_stringn_nocheck(text, n);
    assert_same_text(value, JSON_COMPACT | JSON_ENCODE_ANY);
    char *expected = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);

    json_t *o = json_object();
    json_object_setn_new_nocheck(o, text, n, json_integer(1));
    json_object_setn_new_nocheck(o, "k", 1, json_incref(value));
    if (expected) {
        assert_same_every_flag(o);
    } else { /* jansson writes an invalid key cut short; jsonw refuses it (jsonw.h) */
        char *refused = jsonw_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        assert_null(refused);
    }

    jsonw_buf b = {0};
    assert_int_equal(jsonw_append_raw(&b, "[", 1), 0);
    int rc = jsonw_append_string(&b, text, n);
    if (expected) {
        assert_int_equal(rc, 0);
        assert_int_equal(b.len, 1 + strlen(expected));
        assert_memory_equal(b.data + 1, expected, strlen(expected));
    } else {
        assert_int_equal(rc, -1);
        assert_int_equal(b.len, 1);
    }
    jsonw_buf_free(&b);
    free(expected);
    json_decref(o);
    json_decref(value);
}

/* Each kind of byte that needs work (and a few that do not) at every position of plain text 0
 * to 40 bytes long: inside a word, at its edges, in the short tail the scan pads. */
static void special_bytes_at_every_position(void **state)
{
    (void)state;
    static const char *const specials[] = {
        "\x01", "\x1f", "\"", "\\", "\n", "\b", "\f", "\r", "\t", " ", "\x7f", "/", "!", "#", "]",
        "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", /* UTF-8 of 2, 3, 4 */
        "\xff", "\x80", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xc0\x80", "\xf0\x9f\x98", /* not */
    };
    char text[64];
    for (size_t len = 0; len <= 40; len++) {
        for (size_t pos = 0; pos <= len; pos++) {
            for (size_t k = 0; k < sizeof specials / sizeof *specials; k++) {
                size_t sl = strlen(specials[k]), n = 0;
                for (size_t i = 0; i < len; i++) {
                    if (i == pos) {
                        memcpy(text + n, specials[k], sl);
                        n += sl;
                    }
                    text[n++] = (char)('a' + i % 26);
                }
                if (pos == len) {
                    memcpy(text + n, specials[k], sl);
                    n += sl;
                }
                assert_string_written_alike(text, n);
            }
        }
        /* and a NUL there, which only json_stringn can hold */
        memset(text, 'q', len + 1);
        text[len / 2] = '\0';
        assert_string_written_alike(text, len + 1);
    }
}

/* Every control byte, quotes and backslashes in a row (every byte escaped), and text of every
 * UTF-8 length back to back. */
static void strings_of_escapes_and_multibyte_text(void **state)
{
    (void)state;
    char text[256];
    size_t n = 0;
    for (int c = 0; c < 0x20; c++) {
        text[n++] = (char)c;
        text[n++] = c % 2 ? '"' : '\\';
    }
    for (size_t start = 0; start < 16; start++)
        assert_string_written_alike(text + start, n - start);
    static const char mixed[] = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z\xf4\x8f\xbf\xbf\xc2\x80"
                                "\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80\x80\xed\x9f\xbf";
    for (size_t start = 0; start < 8; start++)
        for (size_t end = sizeof mixed - 1; end + 8 > sizeof mixed - 1 && end > start; end--)
            assert_string_written_alike(mixed + start, end - start); /* cut inside a sequence too */
}

/* Long strings are escaped in chunks: a multi-byte sequence across a chunk's edge, text that
 * grows sixfold (every byte a \u00XX), a byte that is not UTF-8 at the very end. */
static void long_strings_across_chunks(void **state)
{
    (void)state;
    enum { LONG = 20000 };
    char *text = malloc(LONG);
    assert_non_null(text);
    for (size_t at = 4088; at <= 4100; at++) {
        for (int kind = 0; kind < 3; kind++) {
            memset(text, 'x', LONG);
            static const char *const seq[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
            memcpy(text + at, seq[kind], strlen(seq[kind]));
            memcpy(text + 2 * at, seq[kind], strlen(seq[kind]));
            assert_string_written_alike(text, 3 * at);
        }
    }
    for (size_t i = 0; i < LONG; i++)
        text[i] = (char)(i % 0x20);
    assert_string_written_alike(text, LONG);
    text[LONG - 1] = (char)0xe2;
    assert_string_written_alike(text, LONG); /* refused: cut short at the end */
    memset(text, '"', LONG);
    assert_string_written_alike(text, LONG);
    free(text);
}

/* The writer stores whole words ahead of the text and relies on what it reserved: with the
 * text written into heap blocks of every size around what it needs (a borrowed buffer, not
 * grown while the reservation fits), ASan reports any store beyond the block. */
static void writes_stay_within_the_buffer(void **state)
{
    (void)state;
    static const char *const texts[] = {"", "a", "ab\"", "abcdefg", "abcdefgh", "abcdefghi",
                                        "\x01\x02\x03\x04\x05\x06\x07\x08\x09",
                                        "\xf0\x9f\x98\x80\xc3\xa9", "fifteen bytes!!", "x\\"};
    for (size_t t = 0; t < sizeof texts / sizeof *texts; t++) {
        size_t n = strlen(texts[t]);
        json_t *value = json_stringn(texts[t], n);
        json_t *array = json_pack("[O]", value);
        char *expected = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
        char *expected_array = json_dumps(array, JSON_COMPACT);
        size_t want = strlen(expected);
        for (size_t cap = 1; cap <= 6 * n + 40; cap++) {
            char *block = malloc(cap);
            assert_non_null(block);
            jsonw_buf b = {block, 0, cap, 1};
            assert_int_equal(jsonw_append_string(&b, texts[t], n), 0);
            assert_int_equal(b.len, want);
            assert_memory_equal(b.data, expected, want);
            jsonw_buf_free(&b);
            jsonw_buf c = {block, 0, cap, 1};
            assert_int_equal(jsonw_append(&c, array, JSON_COMPACT), 0);
            assert_int_equal(c.len, strlen(expected_array));
            assert_memory_equal(c.data, expected_array, c.len);
            jsonw_buf_free(&c);
            free(block);
        }
        free(expected);
        free(expected_array);
        json_decref(array);
        json_decref(value);
    }
}

/* A key from pieces that make prefixes of each other, keys whose first 8 bytes are equal, NULs,
 * UTF-8 and empty keys. */
static size_t random_key(char *out)
{
    static const char *const bases[] = {
        "", "a", "ab", "abcdefg", "abcdefgh", "abcdefghi", "abcdefg\x7f", "A", "zz", "\xc3\xa9",
        "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xc2\x80\xc2\x80\xc2\x80\xc2\x80", "idempotency",
        "idempotency_key", "deadline_ms", "k"};
    static const char *const tails[] = {"", "a", "b", "0", "\x01", "\xc3\xa9", "\xe2\x82\xac", "\x7f", "_ms"};
    const char *base = bases[rnd_below(sizeof bases / sizeof *bases)];
    size_t n = strlen(base), parts = rnd_below(4);
    memcpy(out, base, n);
    for (size_t i = 0; i < parts; i++) {
        if (rnd_below(8) == 0) {
            out[n++] = '\0';
            continue;
        }
        const char *t = tails[rnd_below(sizeof tails / sizeof *tails)];
        memcpy(out + n, t, strlen(t));
        n += strlen(t);
    }
    return n;
}

static void random_objects_sorted_like_jansson(void **state)
{
    (void)state;
    rng_state = 0x853c49e6748fea9bull;
    char key[64];
    for (int round = 0; round < 400; round++) {
        json_t *o = json_object();
        size_t n = rnd_below(round % 4 == 0 ? 120 : 40); /* around the insertion-sort limit */
        for (size_t i = 0; i < n; i++) {
            size_t kl = random_key(key);
            json_t *v = rnd_below(4) ? json_integer((json_int_t)i) : random_value(4, 0);
            json_object_setn_new_nocheck(o, key, kl, v);
        }
        assert_same_every_flag(o);
        json_t *nested = json_pack("{s:o,s:[o]}", "z", json_deep_copy(o), "a", json_incref(o));
        assert_same_every_flag(nested);
        json_decref(nested);
        json_decref(o);
    }
}

/* Keys equal in their first 8 bytes: the rest, then the length, decides. */
static void keys_alike_in_their_first_eight_bytes(void **state)
{
    (void)state;
    static const struct { const char *k; size_t n; } keys[] = {
        {"abcdefgh", 8}, {"abcdefg", 7}, {"abcdefg\0", 8}, {"abcdefgh\0", 9}, {"abcdefghi", 9},
        {"abcdefgh\xc3\xa9", 10}, {"abcdefgha", 9}, {"abcdefghab", 10}, {"abcdefgh\x01", 9},
        {"abcdefghabcdefghx", 17}, {"abcdefghabcdefgh", 16}, {"abcdefg\x7f", 8}, {"", 0},
        {"\0", 1}, {"\0\0", 2}, {"abcdefgh\0\0", 10},
    };
    size_t count = sizeof keys / sizeof *keys;
    for (size_t rotate = 0; rotate < count; rotate++) { /* every insertion order's first key */
        json_t *o = json_object();
        for (size_t i = 0; i < count; i++) {
            size_t j = (i + rotate) % count;
            json_object_setn_new_nocheck(o, keys[j].k, keys[j].n, json_integer((json_int_t)j));
        }
        assert_same_every_flag(o);
        json_decref(o);
    }
}

/* Integers of every number of digits, at the edges of each (9, 10, 99, 100, ...), both signs,
 * as array items and as JSON_ENCODE_ANY scalars. */
static void integers_of_every_length(void **state)
{
    (void)state;
    json_t *a = json_array();
    unsigned long long p = 1;
    for (int digits = 1; digits <= 19; digits++, p *= 10) {
        const unsigned long long near[] = {p - 1, p, p + 1, p * 5, p * 9 + (p - 1)};
        for (size_t i = 0; i < sizeof near / sizeof *near; i++) {
            if (near[i] > INT64_MAX)
                continue; /* the largest with 19 digits */
            for (int sign = 1; sign >= -1; sign -= 2) {
                json_t *v = json_integer((json_int_t)near[i] * sign);
                assert_same_text(v, JSON_COMPACT | JSON_ENCODE_ANY);
                json_array_append_new(a, v);
            }
        }
    }
    const json_int_t edges[] = {INT64_MIN, INT64_MIN + 1, INT64_MAX, INT64_MAX - 1, 0, -1, 1};
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++) {
        json_t *v = json_integer(edges[i]);
        assert_same_text(v, JSON_COMPACT | JSON_ENCODE_ANY);
        json_array_append_new(a, v);
    }
    rng_state = 0x6a09e667f3bcc909ull;
    for (int i = 0; i < 2000; i++)
        json_array_append_new(a, json_integer((json_int_t)(rnd() >> rnd_below(64))));
    assert_same_every_flag(a);
    json_decref(a);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(random_values_match_jansson),
    cmocka_unit_test(random_values_with_invalid_utf8_refused_alike),
    cmocka_unit_test(every_byte_in_a_string),
    cmocka_unit_test(utf8_edges),
    cmocka_unit_test(integer_extremes_and_reals),
    cmocka_unit_test(scalars_need_encode_any),
    cmocka_unit_test(sorted_keys_in_janssons_order),
    cmocka_unit_test(insertion_order_kept),
    cmocka_unit_test(deep_values_written_by_jansson),
    cmocka_unit_test(cycle_refused),
    cmocka_unit_test(other_flags_handed_to_jansson),
    cmocka_unit_test(invalid_key_refused),
    cmocka_unit_test(append_grows_and_keeps_text_on_failure),
    cmocka_unit_test(large_text_beyond_the_stack),
    cmocka_unit_test(special_bytes_at_every_position),
    cmocka_unit_test(strings_of_escapes_and_multibyte_text),
    cmocka_unit_test(long_strings_across_chunks),
    cmocka_unit_test(writes_stay_within_the_buffer),
    cmocka_unit_test(random_objects_sorted_like_jansson),
    cmocka_unit_test(keys_alike_in_their_first_eight_bytes),
    cmocka_unit_test(integers_of_every_length),
};

AR_TEST_MAIN(tests, NULL, NULL)
