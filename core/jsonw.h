/* jsonw.h - JSON text from jansson values, the bytes json_dumps writes, several times faster.
 *
 * The daemon turns an action record into text several times per action (the journal, the audit
 * trail, the API reply, the frame to the sandbox). json_dumps spent a third of the daemon's CPU
 * doing it: besides writing, it keeps a hash table of the containers it is inside (the key of
 * each is its address printed with snprintf) to refuse cycles, calls back once per fragment,
 * doubles a buffer and copies the result once more (BENCHMARKS.md, "What each change bought").
 * jsonw writes into one buffer and copies once.
 *
 * For the flags it handles the text is byte for byte jansson's: JSON_COMPACT, JSON_SORT_KEYS
 * (jansson's order: bytes, then length), JSON_ENCODE_ANY and JSON_PRESERVE_ORDER (objects keep
 * their insertion order either way, as in jansson >= 2.8). Any other flag (indentation,
 * JSON_ENSURE_ASCII, JSON_ESCAPE_SLASH, JSON_REAL_PRECISION, JSON_EMBED) is handed to jansson
 * unchanged, as is a value nested deeper than JSONW_MAX_DEPTH (where a cycle would be: jansson
 * refuses it). Like jansson, jsonw refuses a string or key that is not UTF-8 and a top-level
 * scalar without JSON_ENCODE_ANY; it also refuses an object key that is not UTF-8 (which jansson
 * writes cut short, as invalid JSON). Reals are written by jansson (rare in our records).
 */
#ifndef AIORUN_JSONW_H
#define AIORUN_JSONW_H

#include <jansson.h>
#include <stddef.h>

#define JSONW_MAX_DEPTH 256

/* A growing text buffer the caller owns: zero-initialise it, free it with jsonw_buf_free.
 * A caller may start it on memory of its own (data, cap, borrowed = 1): growing then moves the
 * text to the heap and clears borrowed. */
typedef struct jsonw_buf {
    char *data;
    size_t len;
    size_t cap;
    int borrowed;
} jsonw_buf;

/* The text of v, NUL-terminated, in memory the caller frees with free(); NULL when jansson's
 * json_dumps would return NULL (see above) or memory ran out. */
char *jsonw_dumps(const json_t *v, size_t flags);

/* Append the text of v to b (not NUL-terminated; b->len grows by its length). 0, or -1 with
 * b->len unchanged when the value cannot be written or memory ran out. */
int jsonw_append(jsonw_buf *b, const json_t *v, size_t flags);

/* Append n bytes as they are (the caller's own JSON punctuation or text). 0 or -1. */
int jsonw_append_raw(jsonw_buf *b, const char *text, size_t n);

/* Append a string value, quoted and escaped. 0, or -1 (not UTF-8, or out of memory) with
 * b->len unchanged. */
int jsonw_append_string(jsonw_buf *b, const char *s, size_t len);

/* The text in b as a NUL-terminated string the caller frees with free(); b is emptied (its
 * heap memory freed or handed over). NULL when out of memory. */
char *jsonw_take(jsonw_buf *b);

/* Make room for n more bytes behind b->len. 0 or -1 (out of memory). */
int jsonw_reserve(jsonw_buf *b, size_t n);

/* Free what b holds on the heap and empty it. */
void jsonw_buf_free(jsonw_buf *b);

#endif
