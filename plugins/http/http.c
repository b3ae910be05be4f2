/*
 * http.c - the generic REST connector: one action, "request", that sends an HTTP request to a
 * configured base URL with the connector's credentials, and an optional lookup through a
 * configured "did the operation with this key happen?" endpoint. Built exactly as a third
 * party builds a plugin: only <aiorun/plugin.h> and the C library (README.md has the user's
 * view: config, secrets, input, result, lookup, idempotency).
 *
 * Everything HTTP goes through api->http, which applies the deadline, adds the idempotency
 * key on writes and classifies transport failures; this file builds the request (URL,
 * headers, auth, body) and turns the answer into a result or an error class.
 *
 * JSON: a small strict reader (below) is enough. Config and input come validated by the host,
 * so they are only read; response bodies come from the network, so they are validated before
 * they are put into a result as JSON (otherwise they become a JSON string).
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <aiorun/plugin.h>

#define DEFAULT_MAX_BODY (1024u * 1024u)
/* Bytes of a response body quoted in an error message. */
#define EXCERPT_MAX 200
/* Nesting a response body may have and still be read as JSON (the host's parser allows
 * more; a deeper body is returned as a string). */
#define JSON_MAX_DEPTH 512

/* ---- small helpers ------------------------------------------------------------------------ */

/* Overwrite memory that held a credential; volatile keeps the compiler from dropping it. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int ieq(const char *a, const char *b)
{
    while (*a && lower((unsigned char)*a) == lower((unsigned char)*b)) {
        a++;
        b++;
    }
    return *a == '\0' && *b == '\0';
}

static int istarts(const char *s, const char *prefix)
{
    while (*prefix && lower((unsigned char)*s) == lower((unsigned char)*prefix)) {
        s++;
        prefix++;
    }
    return *prefix == '\0';
}

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    return d ? memcpy(d, s, n) : NULL;
}

static int is_hex(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* An HTTP header name (RFC 9110 token). */
static int is_token(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c)))
            return 0;
    }
    return 1;
}

/* A header value: no line breaks or other control characters but tab. */
static int is_header_value(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

/* ---- growable buffer ---------------------------------------------------------------------- */

typedef struct buf {
    char *data;
    size_t len, cap;
    int failed;          /* out of memory at some point: the content is incomplete */
} buf;

static void buf_add(buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *nd = realloc(b->data, cap);
        if (!nd) {
            b->failed = 1;
            return;
        }
        b->data = nd;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_adds(buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_addf(buf *b, const char *fmt, ...) AIORUN_PRINTF(2, 3);
static void buf_addf(buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        b->failed = 1;
    else
        buf_add(b, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence at p (n bytes available), 0 when it is not one. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    size_t len;
    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        len = 2;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        len = 3;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    /* overlong forms, UTF-16 surrogates, code points past U+10FFFF */
    if (len == 3 && ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] > 0x9f)))
        return 0;
    if (len == 4 && ((p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] > 0x8f)))
        return 0;
    return len;
}

/* Append bytes as a JSON string: escaped, with invalid UTF-8 and NUL bytes replaced by U+FFFD
 * so that any bytes (a non-JSON body, a header value) make valid JSON. */
static void buf_json_string(buf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t len = utf8_len(p + i, n - i);
        if (len == 0 || c == 0) {
            buf_adds(b, "\\ufffd");
            i++;
        } else if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_add(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            buf_addf(b, "\\u%04x", c);
            i++;
        } else {
            buf_add(b, s + i, len);
            i += len;
        }
    }
    buf_add(b, "\"", 1);
}

/* ---- a strict JSON reader ----------------------------------------------------------------- */

enum { J_NULL, J_FALSE, J_TRUE, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT };

/* One value. Only values at most keep_depth levels deep get a node (deeper ones are checked
 * and skipped), so that a large response body costs no memory beyond its top level. */
typedef struct jnode {
    int type;
    size_t start, end;      /* the value's text: [start, end) */
    size_t kstart, kend;    /* object members: the key's text, quotes included */
    int first, next;        /* first child and next sibling, -1 when none */
} jnode;

typedef struct jdoc {
    const char *s;
    size_t n;
    int keep_depth;
    jnode *nodes;
    int count, cap;
    int nomem;
} jdoc;

static size_t j_ws(const jdoc *d, size_t i)
{
    while (i < d->n && (d->s[i] == ' ' || d->s[i] == '\t' || d->s[i] == '\n' || d->s[i] == '\r'))
        i++;
    return i;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        if (!is_hex((unsigned char)c))
            return 0;
        v = v * 16 + (unsigned)(c <= '9' ? c - '0' : lower((unsigned char)c) - 'a' + 10);
    }
    *out = v;
    return 1;
}

/* d->s[*i] is '"': check the string and move past it. 0 on success. Strings with invalid
 * UTF-8, control characters, bad escapes, unpaired surrogates or \u0000 are refused (as the
 * host's parser refuses them). */
static int j_string(const jdoc *d, size_t *i)
{
    size_t k = *i + 1;
    while (k < d->n) {
        unsigned char c = (unsigned char)d->s[k];
        if (c == '"') {
            *i = k + 1;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (k + 1 >= d->n)
                return -1;
            char e = d->s[k + 1];
            if (e != '\0' && strchr("\"\\/bfnrt", e)) {
                k += 2;
                continue;
            }
            unsigned cp, lo;
            if (e != 'u' || k + 6 > d->n || !hex4(d->s + k + 2, &cp) || cp == 0)
                return -1;
            k += 6;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (k + 6 > d->n || d->s[k] != '\\' || d->s[k + 1] != 'u' ||
                    !hex4(d->s + k + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                k += 6;
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return -1;
            }
            continue;
        }
        size_t len = utf8_len((const unsigned char *)d->s + k, d->n - k);
        if (len == 0)
            return -1;
        k += len;
    }
    return -1;
}

static int j_digits(const jdoc *d, size_t *i)
{
    size_t start = *i;
    while (*i < d->n && d->s[*i] >= '0' && d->s[*i] <= '9')
        (*i)++;
    return *i > start ? 0 : -1;
}

static int j_number(const jdoc *d, size_t *i)
{
    if (*i < d->n && d->s[*i] == '-')
        (*i)++;
    if (*i < d->n && d->s[*i] == '0')
        (*i)++;
    else if (j_digits(d, i) != 0)
        return -1;
    if (*i < d->n && d->s[*i] == '.') {
        (*i)++;
        if (j_digits(d, i) != 0)
            return -1;
    }
    if (*i < d->n && (d->s[*i] == 'e' || d->s[*i] == 'E')) {
        (*i)++;
        if (*i < d->n && (d->s[*i] == '+' || d->s[*i] == '-'))
            (*i)++;
        if (j_digits(d, i) != 0)
            return -1;
    }
    return 0;
}

static int j_new_node(jdoc *d, int type, size_t start)
{
    if (d->count == d->cap) {
        int cap = d->cap ? d->cap * 2 : 16;
        jnode *nn = realloc(d->nodes, (size_t)cap * sizeof *nn);
        if (!nn) {
            d->nomem = 1;
            return -1;
        }
        d->nodes = nn;
        d->cap = cap;
    }
    jnode *j = &d->nodes[d->count];
    j->type = type;
    j->start = start;
    j->end = start;
    j->kstart = j->kend = 0;
    j->first = j->next = -1;
    return d->count++;
}

/* Parse the value at *i (whitespace skipped). *idx: its node, -1 when deeper than kept.
 * 0 on success, -1 on bad JSON or out of memory (d->nomem). */
static int j_value(jdoc *d, size_t *i, int depth, int *idx)
{
    *idx = -1;
    if (depth > JSON_MAX_DEPTH)
        return -1;
    *i = j_ws(d, *i);
    if (*i >= d->n)
        return -1;
    size_t start = *i;
    char c = d->s[*i];
    int type, rc = 0;
    if (c == '{')
        type = J_OBJECT;
    else if (c == '[')
        type = J_ARRAY;
    else if (c == '"')
        type = J_STRING;
    else if (c == 't')
        type = J_TRUE;
    else if (c == 'f')
        type = J_FALSE;
    else if (c == 'n')
        type = J_NULL;
    else
        type = J_NUMBER;
    int me = -1;
    if (depth <= d->keep_depth && (me = j_new_node(d, type, start)) < 0)
        return -1;

    if (type == J_STRING) {
        rc = j_string(d, i);
    } else if (type == J_NUMBER) {
        rc = j_number(d, i);
    } else if (type == J_TRUE || type == J_FALSE || type == J_NULL) {
        const char *word = type == J_TRUE ? "true" : type == J_FALSE ? "false" : "null";
        size_t wl = strlen(word);
        if (d->n - *i >= wl && memcmp(d->s + *i, word, wl) == 0)
            *i += wl;
        else
            rc = -1;
    } else {
        char close = type == J_OBJECT ? '}' : ']';
        int last = -1;
        (*i)++;
        *i = j_ws(d, *i);
        if (*i < d->n && d->s[*i] == close) {
            (*i)++;
        } else {
            for (;;) {
                size_t kstart = 0, kend = 0;
                if (type == J_OBJECT) {
                    *i = j_ws(d, *i);
                    if (*i >= d->n || d->s[*i] != '"')
                        return -1;
                    kstart = *i;
                    if (j_string(d, i) != 0)
                        return -1;
                    kend = *i;
                    *i = j_ws(d, *i);
                    if (*i >= d->n || d->s[*i] != ':')
                        return -1;
                    (*i)++;
                }
                int child;
                if (j_value(d, i, depth + 1, &child) != 0)
                    return -1;
                if (child >= 0) {
                    d->nodes[child].kstart = kstart;
                    d->nodes[child].kend = kend;
                    if (last >= 0)
                        d->nodes[last].next = child;
                    else
                        d->nodes[me].first = child;
                    last = child;
                }
                *i = j_ws(d, *i);
                if (*i < d->n && d->s[*i] == ',') {
                    (*i)++;
                    continue;
                }
                if (*i < d->n && d->s[*i] == close) {
                    (*i)++;
                    break;
                }
                return -1;
            }
        }
    }
    if (rc != 0)
        return -1;
    if (me >= 0)
        d->nodes[me].end = *i;
    *idx = me;
    return 0;
}

/* Parse text as one JSON value (node 0 is the root). 0 on success, -1 when it is not JSON,
 * -2 when memory ran out. Free with j_free. */
static int j_parse(jdoc *d, const char *s, size_t n, int keep_depth)
{
    memset(d, 0, sizeof *d);
    d->s = s;
    d->n = n;
    d->keep_depth = keep_depth;
    size_t i = 0;
    int root;
    if (j_value(d, &i, 0, &root) != 0)
        return d->nomem ? -2 : -1;
    return j_ws(d, i) == n ? 0 : -1;
}

static void j_free(jdoc *d)
{
    free(d->nodes);
    d->nodes = NULL;
    d->count = d->cap = 0;
}

/* Decode the JSON string whose text (quotes included) is [start, end) into a malloc'd,
 * NUL-terminated string; *len_out its length. NULL when out of memory. The text was checked
 * by j_string, so every escape is well-formed and there is no \u0000. */
static char *j_decode(const jdoc *d, size_t start, size_t end, size_t *len_out)
{
    const char *raw = d->s + start + 1;
    size_t len = end - start - 2, o = 0;
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len;) {
        char c = raw[i++];
        if (c != '\\') {
            out[o++] = c;
            continue;
        }
        c = raw[i++];
        switch (c) {
        case 'b': out[o++] = '\b'; continue;
        case 'f': out[o++] = '\f'; continue;
        case 'n': out[o++] = '\n'; continue;
        case 'r': out[o++] = '\r'; continue;
        case 't': out[o++] = '\t'; continue;
        case 'u': break;
        default: out[o++] = c; continue;
        }
        unsigned cp = 0, lo = 0;
        hex4(raw + i, &cp);
        i += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            hex4(raw + i + 2, &lo);
            i += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xc0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xe0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (cp & 0x3f));
        } else {
            out[o++] = (char)(0xf0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3f));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    out[o] = '\0';
    if (len_out)
        *len_out = o;
    return out;
}

/* The decoded string of node idx (a J_STRING), malloc'd; NULL when out of memory. */
static char *j_str(const jdoc *d, int idx)
{
    return j_decode(d, d->nodes[idx].start, d->nodes[idx].end, NULL);
}

/* The decoded key of member idx, malloc'd; NULL when out of memory. */
static char *j_key(const jdoc *d, int idx)
{
    return j_decode(d, d->nodes[idx].kstart, d->nodes[idx].kend, NULL);
}

/* Member `name` of object node obj: its node, -1 when absent (or obj is not an object). The
 * last of duplicate keys wins, as with the host's parser. -2 when out of memory. */
static int j_get(const jdoc *d, int obj, const char *name)
{
    int found = -1;
    if (obj < 0 || d->nodes[obj].type != J_OBJECT)
        return -1;
    for (int m = d->nodes[obj].first; m >= 0; m = d->nodes[m].next) {
        char *k = j_key(d, m);
        if (!k)
            return -2;
        if (strcmp(k, name) == 0)
            found = m;
        free(k);
    }
    return found;
}

/* An integer member (no fraction or exponent, fits a long long). 0 on success. */
static int j_integer(const jdoc *d, int idx, long long *out)
{
    if (idx < 0 || d->nodes[idx].type != J_NUMBER)
        return -1;
    const jnode *j = &d->nodes[idx];
    char tmp[32];
    size_t n = j->end - j->start;
    if (n >= sizeof tmp)
        return -1;
    memcpy(tmp, d->s + j->start, n);
    tmp[n] = '\0';
    if (strpbrk(tmp, ".eE"))
        return -1;
    char *end;
    *out = strtoll(tmp, &end, 10);
    return *end == '\0' ? 0 : -1;
}

/* ---- the connector ------------------------------------------------------------------------ */

enum { AUTH_NONE, AUTH_BEARER, AUTH_BASIC, AUTH_API_KEY };

typedef struct header {
    char *name;
    char *value;
} header;

typedef struct conn {
    const aiorun_host_api *api;     /* valid until fini */
    char *base_url;                 /* no trailing slash */
    header *headers;                /* default headers from config */
    size_t n_headers;
    int auth;
    char *auth_secret;              /* the name of the secret, never its value */
    char *auth_header;              /* the header auth sets ("Authorization", or api_key's) */
    int timeout_ms;                 /* 0: the call's deadline */
    size_t max_body;
    char *lookup_path;              /* NULL: no lookup configured */
} conn;

static void headers_free(header *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        free(h[i].value);
    }
    free(h);
}

static void conn_free(conn *c)
{
    if (!c)
        return;
    free(c->base_url);
    headers_free(c->headers, c->n_headers);
    free(c->auth_secret);
    free(c->auth_header);
    free(c->lookup_path);
    free(c);
}

/* Headers a request may not set: the host and curl own the framing, the connector owns the
 * credentials. */
static int header_reserved(const conn *c, const char *name)
{
    static const char *const framing[] = {"Host", "Content-Length", "Transfer-Encoding",
                                          "Connection", "Upgrade", "TE", "Trailer"};
    for (size_t i = 0; i < sizeof framing / sizeof framing[0]; i++)
        if (ieq(name, framing[i]))
            return 1;
    return c->auth != AUTH_NONE && ieq(name, c->auth_header);
}

/* Read an object of string members (node obj) into a header array. where: for messages
 * ("config.headers", "input.headers"). AIORUN_OK or an error set on the call. */
static aiorun_status read_headers(const conn *c, const aiorun_host_api *api, aiorun_call *call,
                                  const jdoc *d, int obj, const char *where, header **out,
                                  size_t *n_out)
{
    size_t n = 0, i = 0;
    *out = NULL;
    *n_out = 0;
    if (obj < 0)
        return AIORUN_OK;
    for (int m = d->nodes[obj].first; m >= 0; m = d->nodes[m].next)
        n++;
    header *h = calloc(n ? n : 1, sizeof *h);
    if (!h)
        return api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
    for (int m = d->nodes[obj].first; m >= 0; m = d->nodes[m].next) {
        if (d->nodes[m].type != J_STRING) {
            free(h);
            return api->set_error(call, AIORUN_E_INVALID, "%s: header values must be strings", where);
        }
    }
    for (int m = d->nodes[obj].first; m >= 0; m = d->nodes[m].next, i++) {
        size_t vlen = 0;
        h[i].name = j_key(d, m);
        h[i].value = j_decode(d, d->nodes[m].start, d->nodes[m].end, &vlen);
        if (!h[i].name || !h[i].value) {
            headers_free(h, i + 1);
            return api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
        }
        aiorun_status bad = AIORUN_OK;
        if (!is_token(h[i].name))
            bad = api->set_error(call, AIORUN_E_INVALID, "%s: \"%s\" is not a valid header name",
                                 where, h[i].name);
        else if (!is_header_value(h[i].value, vlen))
            bad = api->set_error(call, AIORUN_E_INVALID,
                                 "%s.%s: a header value may not contain line breaks or control "
                                 "characters", where, h[i].name);
        else if (header_reserved(c, h[i].name))
            bad = api->set_error(call, AIORUN_E_INVALID, "%s.%s: this header is set by %s", where,
                                 h[i].name, ieq(h[i].name, c->auth_header) && c->auth != AUTH_NONE
                                                ? "the connector's auth" : "the HTTP client");
        if (bad != AIORUN_OK) {
            headers_free(h, i + 1);
            return bad;
        }
    }
    *out = h;
    *n_out = n;
    return AIORUN_OK;
}

/* ---- URLs --------------------------------------------------------------------------------- */

/* Percent-encode every byte but the unreserved ones (RFC 3986): for query keys and values and
 * for the idempotency key in the lookup path. In a path, encode_dot encodes '.' too, so that a
 * key can never form a "." or ".." segment. */
static void url_encode_strict(buf *b, const char *s, size_t n, int encode_dot)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '~' || (c == '.' && !encode_dot))
            buf_add(b, (const char *)&c, 1);
        else
            buf_addf(b, "%%%02X", c);
    }
}

/* A path segment that is "." or ".." (also spelled with %2e) would let a path climb out of the
 * base URL's own path once the URL is normalized. */
static int is_dot_segment(const char *s, size_t n)
{
    size_t dots = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '.') {
            dots++;
            i++;
        } else if (s[i] == '%' && i + 2 < n && s[i + 1] == '2' &&
                   lower((unsigned char)s[i + 2]) == 'e') {
            dots++;
            i += 3;
        } else {
            return 0;
        }
    }
    return dots == 1 || dots == 2;
}

/* Append path (which starts with '/') to b: characters a path or query may hold are kept (and
 * "%XX" escapes), anything else is percent-encoded. *has_query: the path carried a '?'.
 * -1 when a segment is "." or "..". */
static int url_add_path(buf *b, const char *path, int *has_query)
{
    size_t n = strlen(path);
    int in_query = 0;
    size_t seg = 1;
    for (size_t i = 0; i <= n; i++) {
        if (!in_query && (i == n || path[i] == '/' || path[i] == '?')) {
            if (i > seg && is_dot_segment(path + seg, i - seg))
                return -1;
            seg = i + 1;
        }
        if (i == n)
            break;
        unsigned char c = (unsigned char)path[i];
        if (c == '?' && !in_query) {
            in_query = 1;
            buf_add(b, "?", 1);
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   strchr("-._~!$&'()*+,;=:@/", c) || (in_query && c == '?')) {
            buf_add(b, (const char *)&c, 1);
        } else if (c == '%' && i + 2 < n && is_hex((unsigned char)path[i + 1]) &&
                   is_hex((unsigned char)path[i + 2])) {
            buf_add(b, path + i, 3);
            i += 2;
        } else {
            buf_addf(b, "%%%02X", c);
        }
    }
    *has_query = in_query;
    return 0;
}

/* ---- auth --------------------------------------------------------------------------------- */

static void base64(buf *b, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        char out[4] = {tab[(v >> 18) & 63], tab[(v >> 12) & 63],
                       i + 1 < n ? tab[(v >> 6) & 63] : '=', i + 2 < n ? tab[v & 63] : '='};
        buf_add(b, out, 4);
    }
}

/* The auth header's value (in *value, which the caller wipes and frees). AIORUN_OK, or AUTH
 * when the secret is missing or unusable. */
static aiorun_status auth_value(const conn *c, aiorun_call *call, buf *value)
{
    const char *secret = NULL;
    size_t len = 0;
    if (c->api->secret(call, c->auth_secret, &secret, &len) != AIORUN_OK || !secret)
        return c->api->set_error(call, AIORUN_E_AUTH,
                                 "secret %s is not configured for this connector", c->auth_secret);
    if (len == 0 || !is_header_value(secret, len))
        return c->api->set_error(call, AIORUN_E_AUTH, "secret %s is empty or contains line breaks "
                                 "or control characters, so it cannot go into a header",
                                 c->auth_secret);
    if (c->auth == AUTH_BASIC && !memchr(secret, ':', len))
        return c->api->set_error(call, AIORUN_E_AUTH,
                                 "secret %s must have the form user:password for basic auth",
                                 c->auth_secret);
    if (c->auth == AUTH_BEARER) {
        buf_adds(value, "Bearer ");
        buf_add(value, secret, len);
    } else if (c->auth == AUTH_BASIC) {
        buf_adds(value, "Basic ");
        base64(value, (const unsigned char *)secret, len);
    } else {
        buf_add(value, secret, len);
    }
    if (value->failed)
        return c->api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
    return AIORUN_OK;
}

/* ---- one HTTP exchange -------------------------------------------------------------------- */

typedef struct exchange {
    const char *method;
    const char *path;            /* for messages: as the caller gave it */
    const char *url;
    const header *headers;       /* the request's own, over the configured ones */
    size_t n_headers;
    const char *body;            /* JSON text or NULL */
    size_t body_len;
} exchange;

static int has_header(const header *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (ieq(h[i].name, name))
            return 1;
    return 0;
}

/* Send x through the host. AIORUN_OK with *resp filled (any status), or the transport class
 * with the host's message already set. */
static aiorun_status send_exchange(const conn *c, aiorun_call *call, const exchange *x,
                                   aiorun_http_response *resp)
{
    size_t cap = c->n_headers + x->n_headers + 3;
    aiorun_http_header *hs = calloc(cap, sizeof *hs);
    buf auth = {0};
    aiorun_status st;
    size_t n = 0;
    if (!hs)
        return c->api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
    /* configured defaults, unless the request sets the same header */
    for (size_t i = 0; i < c->n_headers; i++)
        if (!has_header(x->headers, x->n_headers, c->headers[i].name))
            hs[n++] = (aiorun_http_header){c->headers[i].name, c->headers[i].value};
    for (size_t i = 0; i < x->n_headers; i++)
        hs[n++] = (aiorun_http_header){x->headers[i].name, x->headers[i].value};
    if (x->body && !has_header(x->headers, x->n_headers, "Content-Type") &&
        !has_header(c->headers, c->n_headers, "Content-Type"))
        hs[n++] = (aiorun_http_header){"Content-Type", "application/json"};
    if (!has_header(x->headers, x->n_headers, "Accept") &&
        !has_header(c->headers, c->n_headers, "Accept"))
        hs[n++] = (aiorun_http_header){"Accept", "application/json"};
    if (c->auth != AUTH_NONE) {
        if ((st = auth_value(c, call, &auth)) != AIORUN_OK)
            goto done;
        hs[n++] = (aiorun_http_header){c->auth_header, auth.data};
    }

    aiorun_http_request req;
    memset(&req, 0, sizeof req);
    req.struct_size = (uint32_t)sizeof req;
    req.method = x->method;
    req.url = x->url;
    req.headers = hs;
    req.n_headers = n;
    req.body = x->body;
    req.body_len = x->body ? x->body_len : 0;
    req.timeout_ms = c->timeout_ms;
    memset(resp, 0, sizeof *resp);
    resp->struct_size = (uint32_t)sizeof *resp;
    st = c->api->http(call, &req, resp);
done:
    if (auth.data) {
        wipe(auth.data, auth.cap);
        free(auth.data);
    }
    free(hs);
    return st;
}

/* The value of response header name (case-insensitive), NULL when absent; the last wins. */
static const char *resp_header(const aiorun_http_response *r, const char *name)
{
    const char *v = NULL;
    for (size_t i = 0; i < r->n_headers; i++)
        if (ieq(r->headers[i].name, name))
            v = r->headers[i].value;
    return v;
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            return 0;
    return 1;
}

/* Append a response body as a JSON value: null when empty, the JSON itself when it is JSON,
 * else a string. as_string forces the string form. */
static void add_body(buf *b, const char *body, size_t len, int as_string)
{
    jdoc d;
    if (is_blank(body, len)) {
        buf_adds(b, "null");
        return;
    }
    if (!as_string && j_parse(&d, body, len, 0) == 0) {
        buf_add(b, body, len);
        j_free(&d);
        return;
    }
    j_free(&d);
    buf_json_string(b, body, len);
}

/* Fail the call with the class of a non-2xx answer:
 * "<METHOD> <path> answered <status>: <excerpt of the body>". */
static aiorun_status fail_status(const conn *c, aiorun_call *call, const exchange *x,
                                 const aiorun_http_response *r, aiorun_status cls)
{
    char excerpt[EXCERPT_MAX + 4];
    size_t o = 0;
    int space = 0;
    for (size_t i = 0; i < r->body_len && o < EXCERPT_MAX; i++) {
        unsigned char ch = (unsigned char)r->body[i];
        if (ch < 0x20 || ch == 0x7f || ch == ' ') {
            space = o > 0;
            continue;
        }
        if (space && o < EXCERPT_MAX)
            excerpt[o++] = ' ';
        space = 0;
        if (o < EXCERPT_MAX)
            excerpt[o++] = (char)ch;
    }
    if (o == EXCERPT_MAX && r->body_len > EXCERPT_MAX) {
        memcpy(excerpt + o, "...", 3);
        o += 3;
    }
    excerpt[o] = '\0';

    /* An API that says it did not process the request (e.g. 503 {"processed": false}) is
     * worth repeating in the message: nothing happened. */
    const char *note = "";
    jdoc d;
    if (j_parse(&d, r->body, r->body_len, 1) == 0) {
        int p = j_get(&d, 0, "processed");
        if (p >= 0 && d.nodes[p].type == J_FALSE)
            note = " (the API says the request was not processed)";
    }
    j_free(&d);
    return c->api->set_error(call, cls, "%s %s answered %ld%s: %s", x->method, x->path, r->status,
                             note, o ? excerpt : "(empty body)");
}

/* The result of a 2xx answer: {"status", "headers": {selected, lower-cased}, "body"}. */
static aiorun_status set_response_result(const conn *c, aiorun_call *call,
                                         const aiorun_http_response *r)
{
    static const char *const keep[] = {"content-type", "location", "etag", "retry-after",
                                       "idempotent-replayed"};
    for (int as_string = 0; as_string < 2; as_string++) {
        buf b = {0};
        buf_addf(&b, "{\"status\":%ld,\"headers\":{", r->status);
        int first = 1;
        for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
            const char *v = resp_header(r, keep[i]);
            if (!v)
                continue;
            if (!first)
                buf_add(&b, ",", 1);
            first = 0;
            buf_json_string(&b, keep[i], strlen(keep[i]));
            buf_add(&b, ":", 1);
            buf_json_string(&b, v, strlen(v));
        }
        buf_adds(&b, "},\"body\":");
        if (r->body_len > c->max_body) {
            buf_adds(&b, "null");
            buf_addf(&b, ",\"body_omitted_bytes\":%zu", r->body_len);
        } else {
            add_body(&b, r->body, r->body_len, as_string);
        }
        buf_add(&b, "}", 1);
        if (b.failed) {
            free(b.data);
            return c->api->set_error(call, AIORUN_E_PERMANENT,
                                     "http: out of memory building the result of a %ld answer; "
                                     "the request was carried out", r->status);
        }
        /* The host's parser may refuse what ours accepted (e.g. an integer too large for it):
         * then the body goes in as a string. */
        aiorun_status st = c->api->set_result(call, b.data, b.len);
        free(b.data);
        if (st == AIORUN_OK)
            return AIORUN_OK;
    }
    return c->api->set_error(call, AIORUN_E_PERMANENT,
                             "http: the host refused the result of a %ld answer", r->status);
}

/* ---- the action "request" ----------------------------------------------------------------- */

static aiorun_status do_request(void *instance, aiorun_call *call, const char *input, size_t len)
{
    conn *c = instance;
    const aiorun_host_api *api = c->api;
    jdoc d;
    buf url = {0};
    header *hs = NULL;
    size_t n_hs = 0;
    char *method = NULL, *path = NULL;
    aiorun_status st;

    if (j_parse(&d, input, len, 2) != 0) {
        j_free(&d);
        return api->set_error(call, AIORUN_E_INVALID, "http: input is not JSON");
    }
    int jm = j_get(&d, 0, "method"), jp = j_get(&d, 0, "path"), jq = j_get(&d, 0, "query");
    int jh = j_get(&d, 0, "headers"), jb = j_get(&d, 0, "body");
    if (jm == -2 || jp == -2 || jq == -2 || jh == -2 || jb == -2) {
        st = api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
        goto done;
    }
    if (jm < 0 || jp < 0 || d.nodes[jm].type != J_STRING || d.nodes[jp].type != J_STRING) {
        st = api->set_error(call, AIORUN_E_INVALID, "http: input needs method and path strings");
        goto done;
    }
    method = j_str(&d, jm);
    path = j_str(&d, jp);
    if (!method || !path) {
        st = api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
        goto done;
    }
    if (path[0] != '/') {
        st = api->set_error(call, AIORUN_E_INVALID, "input.path must start with \"/\" (got \"%.80s\")",
                            path);
        goto done;
    }
    if (jb >= 0 && d.nodes[jb].type != J_NULL && strcmp(method, "HEAD") == 0) {
        st = api->set_error(call, AIORUN_E_INVALID, "input.body: a HEAD request carries no body");
        goto done;
    }

    int has_query = 0;
    buf_adds(&url, c->base_url);
    if (url_add_path(&url, path, &has_query) != 0) {
        st = api->set_error(call, AIORUN_E_INVALID,
                            "input.path may not contain \".\" or \"..\" segments");
        goto done;
    }
    if (jq >= 0 && d.nodes[jq].type == J_OBJECT) {
        for (int m = d.nodes[jq].first; m >= 0; m = d.nodes[m].next) {
            size_t klen, vlen;
            char *k = j_decode(&d, d.nodes[m].kstart, d.nodes[m].kend, &klen);
            if (!k) {
                url.failed = 1;
                break;
            }
            buf_add(&url, has_query ? "&" : "?", 1);
            has_query = 1;
            url_encode_strict(&url, k, klen, 0);
            free(k);
            buf_add(&url, "=", 1);
            const jnode *v = &d.nodes[m];
            if (v->type == J_STRING) {
                char *s = j_decode(&d, v->start, v->end, &vlen);
                if (!s) {
                    url.failed = 1;
                    break;
                }
                url_encode_strict(&url, s, vlen, 0);
                free(s);
            } else if (v->type == J_NUMBER || v->type == J_TRUE || v->type == J_FALSE) {
                url_encode_strict(&url, input + v->start, v->end - v->start, 0);
            } else {
                st = api->set_error(call, AIORUN_E_INVALID,
                                    "input.query: values must be strings, numbers or booleans");
                goto done;
            }
        }
    }
    if (url.failed) {
        st = api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
        goto done;
    }
    if (jh >= 0 && d.nodes[jh].type == J_OBJECT &&
        (st = read_headers(c, api, call, &d, jh, "input.headers", &hs, &n_hs)) != AIORUN_OK)
        goto done;

    exchange x = {.method = method, .path = path, .url = url.data, .headers = hs,
                  .n_headers = n_hs};
    if (jb >= 0 && d.nodes[jb].type != J_NULL) {
        /* the body's JSON text, as the host wrote the input */
        x.body = input + d.nodes[jb].start;
        x.body_len = d.nodes[jb].end - d.nodes[jb].start;
    }
    aiorun_http_response resp;
    if ((st = send_exchange(c, call, &x, &resp)) != AIORUN_OK)
        goto done;
    aiorun_status cls = api->http_status_class(resp.status);
    st = cls == AIORUN_OK ? set_response_result(c, call, &resp) : fail_status(c, call, &x, &resp, cls);

done:
    headers_free(hs, n_hs);
    free(url.data);
    free(method);
    free(path);
    j_free(&d);
    return st;
}

/* ---- lookup ------------------------------------------------------------------------------- */

/* GET the configured lookup path with {key} replaced: 2xx means the operation happened
 * (result {"status", "body"} from the answer), 404 that it did not, anything else that it is
 * not known now. */
static aiorun_status do_lookup(void *instance, aiorun_call *call, const char *action,
                               const char *key)
{
    conn *c = instance;
    const aiorun_host_api *api = c->api;
    buf path = {0}, url = {0}, out = {0};
    aiorun_status st;
    jdoc d;
    memset(&d, 0, sizeof d);

    (void)action;
    if (!c->lookup_path)
        return api->set_error(call, AIORUN_E_INVALID, "no lookup configured (set config.lookup.path)");
    for (const char *p = c->lookup_path; *p;) {
        if (strncmp(p, "{key}", 5) == 0) {
            url_encode_strict(&path, key, strlen(key), 1);
            p += 5;
        } else {
            buf_add(&path, p, 1);
            p++;
        }
    }
    int has_query;
    buf_adds(&url, c->base_url);
    if (path.failed || url_add_path(&url, path.data, &has_query) != 0 || url.failed) {
        st = api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
        goto done;
    }
    exchange x = {.method = "GET", .path = path.data, .url = url.data};
    aiorun_http_response resp;
    if ((st = send_exchange(c, call, &x, &resp)) != AIORUN_OK)
        goto done;
    aiorun_status cls = api->http_status_class(resp.status);
    if (resp.status == 404) {
        st = api->set_error(call, AIORUN_E_NOT_FOUND, "GET %s answered 404: no operation with "
                            "idempotency key %s happened", path.data, key);
        goto done;
    }
    if (cls != AIORUN_OK) {
        /* Only a 404 says "it did not happen"; a 410 or anything else leaves it unknown. */
        st = fail_status(c, call, &x, &resp, cls == AIORUN_E_NOT_FOUND ? AIORUN_E_PERMANENT : cls);
        goto done;
    }
    for (int as_string = 0; as_string < 2; as_string++) {
        long long status = resp.status;
        int parsed = !as_string && !is_blank(resp.body, resp.body_len) &&
                     j_parse(&d, resp.body, resp.body_len, 1) == 0;
        int js = parsed ? j_get(&d, 0, "status") : -1;
        int jb = parsed ? j_get(&d, 0, "body") : -1;
        if (js >= 0 && (j_integer(&d, js, &status) != 0 || status < 100 || status > 999))
            status = resp.status;
        out.len = 0;
        out.failed = 0;
        buf_addf(&out, "{\"status\":%lld,\"body\":", status);
        if (jb >= 0)
            buf_add(&out, resp.body + d.nodes[jb].start, d.nodes[jb].end - d.nodes[jb].start);
        else
            add_body(&out, resp.body, resp.body_len, as_string);
        buf_add(&out, "}", 1);
        j_free(&d);
        if (out.failed) {
            st = api->set_error(call, AIORUN_E_RETRYABLE, "http: out of memory");
            goto done;
        }
        if ((st = api->set_result(call, out.data, out.len)) == AIORUN_OK)
            goto done;
    }
    st = api->set_error(call, AIORUN_E_PERMANENT, "http: the host refused the lookup's result");
done:
    j_free(&d);
    free(path.data);
    free(url.data);
    free(out.data);
    return st;
}

/* ---- init --------------------------------------------------------------------------------- */

/* Member name of the config's object obj as a new string, NULL when absent. *nomem set when
 * memory ran out. */
static char *config_str(const jdoc *d, int obj, const char *name, int *nomem)
{
    int m = j_get(d, obj, name);
    if (m == -2)
        *nomem = 1;
    if (m < 0 || d->nodes[m].type != J_STRING)
        return NULL;
    char *s = j_str(d, m);
    if (!s)
        *nomem = 1;
    return s;
}

/* A URL part from the config: printable ASCII without spaces, '#' or '\'. */
static int is_url_text(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || *s == '#' || *s == '\\')
            return 0;
    return 1;
}

static aiorun_status http_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                               size_t config_len, void **instance)
{
    jdoc d;
    int nomem = 0;
    aiorun_status st = AIORUN_OK;
    char *auth_type = NULL;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return api->set_error(call, AIORUN_E_PERMANENT, "http: out of memory");
    c->api = api;
    c->max_body = DEFAULT_MAX_BODY;
    if (j_parse(&d, config, config_len, 2) != 0) {
        st = api->set_error(call, AIORUN_E_INVALID, "http: config is not JSON");
        goto done;
    }

    c->base_url = config_str(&d, 0, "base_url", &nomem);
    if (!c->base_url && !nomem) {
        st = api->set_error(call, AIORUN_E_INVALID, "config.base_url is required");
        goto done;
    }
    if (c->base_url && ((!istarts(c->base_url, "http://") && !istarts(c->base_url, "https://")) ||
                        !is_url_text(c->base_url) || strchr(c->base_url, '?') ||
                        strlen(c->base_url) <= strlen("https://"))) {
        st = api->set_error(call, AIORUN_E_INVALID, "config.base_url must be an http:// or "
                            "https:// URL without spaces, query or fragment (got \"%.200s\")",
                            c->base_url);
        goto done;
    }
    if (c->base_url) {
        size_t n = strlen(c->base_url);
        while (n > 0 && c->base_url[n - 1] == '/')
            c->base_url[--n] = '\0';
    }

    long long v;
    int m = j_get(&d, 0, "timeout_ms");
    if (m >= 0 && (j_integer(&d, m, &v) != 0 || v < 1 || v > 3600000)) {
        st = api->set_error(call, AIORUN_E_INVALID, "config.timeout_ms must be 1..3600000");
        goto done;
    }
    if (m >= 0)
        c->timeout_ms = (int)v;
    m = j_get(&d, 0, "max_body_bytes");
    if (m >= 0 && (j_integer(&d, m, &v) != 0 || v < 0 || v > 8 * 1024 * 1024)) {
        st = api->set_error(call, AIORUN_E_INVALID, "config.max_body_bytes must be 0..8388608");
        goto done;
    }
    if (m >= 0)
        c->max_body = (size_t)v;

    int ja = j_get(&d, 0, "auth");
    if (ja == -2)
        nomem = 1;
    if (ja >= 0) {
        auth_type = config_str(&d, ja, "type", &nomem);
        c->auth_secret = config_str(&d, ja, "secret", &nomem);
        c->auth_header = config_str(&d, ja, "header", &nomem);
        if (nomem)
            goto done;
        if (!auth_type || !c->auth_secret || !*c->auth_secret) {
            st = api->set_error(call, AIORUN_E_INVALID, "config.auth needs type and secret");
            goto done;
        }
        if (strcmp(auth_type, "bearer") == 0)
            c->auth = AUTH_BEARER;
        else if (strcmp(auth_type, "basic") == 0)
            c->auth = AUTH_BASIC;
        else if (strcmp(auth_type, "api_key") == 0)
            c->auth = AUTH_API_KEY;
        else {
            st = api->set_error(call, AIORUN_E_INVALID,
                                "config.auth.type must be bearer, basic or api_key");
            goto done;
        }
        if (c->auth_header && c->auth != AUTH_API_KEY) {
            st = api->set_error(call, AIORUN_E_INVALID,
                                "config.auth.header is only for auth type api_key");
            goto done;
        }
        if (!c->auth_header)
            c->auth_header = str_dup(c->auth == AUTH_API_KEY ? "X-API-Key" : "Authorization");
        if (!c->auth_header) {
            nomem = 1;
            goto done;
        }
        if (!is_token(c->auth_header) || header_reserved(&(conn){.auth = AUTH_NONE}, c->auth_header)) {
            st = api->set_error(call, AIORUN_E_INVALID,
                                "config.auth.header \"%.100s\" is not a usable header name",
                                c->auth_header);
            goto done;
        }
        /* The secret must exist now: better refused at start than failing every call. */
        buf probe = {0};
        st = auth_value(c, call, &probe);
        if (probe.data) {
            wipe(probe.data, probe.cap);
            free(probe.data);
        }
        if (st != AIORUN_OK)
            goto done;
    }

    int jh = j_get(&d, 0, "headers");
    if (jh == -2)
        nomem = 1;
    if (jh >= 0 && d.nodes[jh].type == J_OBJECT &&
        (st = read_headers(c, api, call, &d, jh, "config.headers", &c->headers, &c->n_headers)) !=
            AIORUN_OK)
        goto done;

    int jl = j_get(&d, 0, "lookup");
    if (jl == -2)
        nomem = 1;
    if (jl >= 0) {
        c->lookup_path = config_str(&d, jl, "path", &nomem);
        if (nomem)
            goto done;
        if (!c->lookup_path || c->lookup_path[0] != '/' || !strstr(c->lookup_path, "{key}") ||
            !is_url_text(c->lookup_path)) {
            st = api->set_error(call, AIORUN_E_INVALID, "config.lookup.path must start with \"/\" "
                                "and contain {key} (e.g. \"/idempotency/{key}\")");
            goto done;
        }
        buf probe = {0};
        int has_query;
        if (url_add_path(&probe, c->lookup_path, &has_query) != 0) {
            free(probe.data);
            st = api->set_error(call, AIORUN_E_INVALID,
                                "config.lookup.path may not contain \".\" or \"..\" segments");
            goto done;
        }
        free(probe.data);
    }

done:
    if (nomem && st == AIORUN_OK)
        st = api->set_error(call, AIORUN_E_PERMANENT, "http: out of memory reading the config");
    j_free(&d);
    free(auth_type);
    if (st != AIORUN_OK) {
        conn_free(c);
        return st;
    }
    *instance = c;
    return AIORUN_OK;
}

static void http_fini(void *instance)
{
    conn_free(instance);
}

/* ---- descriptor --------------------------------------------------------------------------- */

static const aiorun_action actions[] = {
    {.name = "request",
     .summary = "Send an HTTP request to the configured API",
     .input_schema =
         "{\"type\":\"object\",\"properties\":{"
         "\"method\":{\"type\":\"string\",\"enum\":[\"GET\",\"POST\",\"PUT\",\"PATCH\",\"DELETE\",\"HEAD\"]},"
         "\"path\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":4096,"
         "\"description\":\"starts with /, appended to config.base_url\"},"
         "\"query\":{\"type\":\"object\",\"additionalProperties\":{\"type\":[\"string\",\"number\",\"boolean\"]}},"
         "\"headers\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\",\"maxLength\":8192}},"
         "\"body\":{\"description\":\"any JSON, sent as application/json; null or absent: no body\"}},"
         "\"required\":[\"method\",\"path\"],\"additionalProperties\":false}",
     /* A generic connector cannot know what a request does or whether the API honours
      * idempotency keys: it declares the cautious answer, operators override per connector. */
     .effect = AIORUN_EFFECT_WRITE,
     .idempotency = AIORUN_IDEMPOTENCY_NONE,
     .cacheable = 0,
     .invoke = do_request},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "http",
    .version = "1.0.0",
    .description = "Generic REST connector: HTTP requests to one configured API",
    .config_schema =
        "{\"type\":\"object\",\"properties\":{"
        "\"base_url\":{\"type\":\"string\",\"minLength\":8,\"maxLength\":2048},"
        "\"headers\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\",\"maxLength\":8192}},"
        "\"auth\":{\"type\":\"object\",\"properties\":{"
        "\"type\":{\"type\":\"string\",\"enum\":[\"bearer\",\"basic\",\"api_key\"]},"
        "\"secret\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":128},"
        "\"header\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":128}},"
        "\"required\":[\"type\",\"secret\"],\"additionalProperties\":false},"
        "\"timeout_ms\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":3600000},"
        "\"max_body_bytes\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":8388608},"
        "\"lookup\":{\"type\":\"object\",\"properties\":{"
        "\"path\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":2048}},"
        "\"required\":[\"path\"],\"additionalProperties\":false}},"
        "\"required\":[\"base_url\"],\"additionalProperties\":false}",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = http_init,
    .fini = http_fini,
    .lookup = do_lookup,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
