/* host_api.c - the services the sandbox host offers a plugin (aiorun_host_api, see plugin.h)
 * and the per-call context behind aiorun_call (see host.h). */
#include "host.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>
#include <sodium.h>

#include "ar.h"
#include "frame.h"

/* Cap on a response body the host buffers for a plugin. */
#define HTTP_MAX_BODY (8u * 1024u * 1024u)
/* Caps on response headers: count and total bytes (names + values). */
#define HTTP_MAX_HEADERS 200
#define HTTP_MAX_HEADER_BYTES (64u * 1024u)
/* A log line is truncated to this many bytes. */
#define LOG_MAX_MESSAGE 2048
/* Log lines a plugin may send per second; the rest are counted and reported as dropped. */
#define LOG_MAX_PER_SECOND 100

/* For log() with call == NULL (from fini, or a plugin that lost its call pointer). */
static host_ctx *g_host;

struct host_arena_block {
    host_arena_block *next;
    void *mem;
};

/* Hand mem (malloc'd) to the call's arena: freed when the call ends. NULL on failure, in which
 * case mem is freed too. */
static void *arena_adopt(aiorun_call *c, void *mem)
{
    if (!mem)
        return NULL;
    host_arena_block *b = malloc(sizeof *b);
    if (!b) {
        free(mem);
        return NULL;
    }
    b->mem = mem;
    b->next = c->arena;
    c->arena = b;
    return mem;
}

static void *arena_alloc(aiorun_call *c, size_t n)
{
    return arena_adopt(c, malloc(n ? n : 1));
}

void host_sanitize_text(char *dst, size_t cap, const char *s)
{
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)(s ? s : "");

    while (*p) {
        size_t n = 0;
        unsigned char c = p[0];
        if (c < 0x80)
            n = 1;
        else if (c >= 0xc2 && c <= 0xdf)
            n = 2;
        else if (c >= 0xe0 && c <= 0xef)
            n = 3;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 4;
        int valid = n > 0;
        for (size_t i = 1; valid && i < n; i++)
            if ((p[i] & 0xc0) != 0x80)
                valid = 0;
        /* overlong 3/4-byte forms, surrogates, code points past U+10FFFF */
        if (valid && n == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f)))
            valid = 0;
        if (valid && n == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f)))
            valid = 0;
        if (!valid)
            n = 1;
        if (o + n + 1 > cap)
            break;
        if (valid)
            memcpy(dst + o, p, n);
        else
            dst[o] = '?';
        o += n;
        p += n;
    }
    dst[o] = '\0';
}

void host_ctx_init(host_ctx *h, int fd, size_t max_frame, const char *connector)
{
    memset(h, 0, sizeof *h);
    h->fd = fd;
    h->max_frame = max_frame;
    h->connector = connector;
    g_host = h;
}

void host_ctx_fini(host_ctx *h)
{
    if (h->curl)
        curl_easy_cleanup(h->curl);
    h->curl = NULL;
    if (h->secrets) {
        /* sodium_free wipes the block (it makes it writable first) */
        sodium_free(h->secrets);
        h->secrets = NULL;
    }
    if (g_host == h)
        g_host = NULL;
}

/* One INIT secret's value: a string, or {"base64": text}. The bytes decoded into out (room
 * for cap bytes) when out is not NULL; the length, or -1 when the value is neither. */
static long secret_value(json_t *v, unsigned char *out, size_t cap)
{
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (out && n <= cap)
            memcpy(out, json_string_value(v), n);
        return (long)n;
    }
    const char *b64 = json_string_value(json_object_get(v, "base64"));
    if (!json_is_object(v) || !b64 || json_object_size(v) != 1)
        return -1;
    size_t b64_len = strlen(b64), n = 0;
    if (!out)
        return (long)(b64_len / 4 * 3 + 3); /* an upper bound */
    if (sodium_base642bin(out, cap, b64, b64_len, NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return -1;
    return (long)n;
}

int host_secrets_load(host_ctx *h, json_t *secrets, char *why, size_t cap)
{
    const char *name;
    json_t *v;
    size_t n = json_object_size(secrets), bytes = 0;

    json_object_foreach(secrets, name, v) {
        long len = secret_value(v, NULL, 0);
        if (len < 0) {
            snprintf(why, cap, "INIT: secret %s is neither a string nor {\"base64\": text}", name);
            return -1;
        }
        bytes += strlen(name) + 1 + (size_t)len + 1;
    }
    size_t size = sizeof(host_secrets) + n * sizeof(host_secret_item) + bytes;
    /* sodium_malloc puts the block against its guard page: it is only aligned when its size
     * is a multiple of the alignment */
    size = (size + 15) & ~(size_t)15;
    host_secrets *s = sodium_malloc(size);
    if (!s) {
        snprintf(why, cap, "out of guarded memory for %zu secrets", n);
        return -1;
    }
    s->n = 0;
    s->size = size;
    char *p = (char *)&s->items[n];
    char *end = (char *)s + size;
    json_object_foreach(secrets, name, v) {
        size_t name_len = strlen(name);
        memcpy(p, name, name_len + 1);
        host_secret_item *it = &s->items[s->n++];
        it->name = p;
        p += name_len + 1;
        long len = secret_value(v, (unsigned char *)p, (size_t)(end - p) - 1);
        if (len < 0) {
            sodium_free(s);
            snprintf(why, cap, "INIT: secret %s is not valid base64", name);
            return -1;
        }
        p[len] = '\0';
        it->value = (const unsigned char *)p;
        it->len = (size_t)len;
        p += len + 1;
        /* the JSON copy is no longer needed: wipe it in place (jansson keeps each string in
         * its own heap block) */
        json_t *src = json_is_string(v) ? v : json_object_get(v, "base64");
        explicit_bzero((char *)json_string_value(src), json_string_length(src));
    }
    if (sodium_mprotect_readonly(s) != 0) {
        sodium_free(s);
        snprintf(why, cap, "cannot make the secrets read-only");
        return -1;
    }
    if (h->secrets)
        sodium_free(h->secrets);
    h->secrets = s;
    return 0;
}

void host_call_begin(aiorun_call *c, host_ctx *h, int64_t deadline_ms, const char *idempotency_key)
{
    c->host = h;
    c->active = 1;
    c->deadline_ms = deadline_ms;
    c->idempotency_key = idempotency_key ? idempotency_key : "";
    c->has_error = 0;
    c->error[0] = '\0';
    json_decref(c->result);
    c->result = NULL;
    c->arena = NULL;
    c->http_status = 0;
    c->retry_after_ms = -1;
    c->costs_allowed = 1;
    c->n_costs = 0;
}

void host_call_end(aiorun_call *c)
{
    host_arena_block *b = c->arena;
    while (b) {
        host_arena_block *next = b->next;
        free(b->mem);
        free(b);
        b = next;
    }
    c->arena = NULL;
    json_decref(c->result);
    c->result = NULL;
    c->active = 0;
    c->has_error = 0;
    c->error[0] = '\0';
    c->idempotency_key = "";
    c->http_status = 0;
    c->retry_after_ms = -1;
    c->costs_allowed = 0;
    c->n_costs = 0;
}

/* ---- log ---- */

static const char *level_name(aiorun_log_level level)
{
    switch (level) {
    case AIORUN_LOG_DEBUG: return "debug";
    case AIORUN_LOG_WARN: return "warn";
    case AIORUN_LOG_ERROR: return "error";
    case AIORUN_LOG_INFO:
    default: return "info";
    }
}

static void send_log(host_ctx *h, const char *level, const char *text)
{
    char clean[LOG_MAX_MESSAGE + 1];
    host_sanitize_text(clean, sizeof clean, text);
    json_t *p = json_pack("{s:s, s:s}", "level", level, "message", clean);
    if (!p)
        return;
    /* A failed write means the daemon is gone; the serve loop notices it on its next read. */
    frame_write_fd(h->fd, FRAME_LOG, 0, p, h->max_frame, NULL);
    json_decref(p);
}

static void host_log(aiorun_call *call, aiorun_log_level level, const char *fmt, ...)
{
    host_ctx *h = call && call->host ? call->host : g_host;
    if (!h || !fmt)
        return;

    int64_t now = ar_mono_ms();
    if (now - h->log_window_ms >= 1000) {
        int dropped = h->log_dropped;
        h->log_window_ms = now;
        h->log_count = 0;
        h->log_dropped = 0;
        if (dropped > 0) {
            char note[96];
            snprintf(note, sizeof note, "%d log lines dropped (more than %d per second)",
                     dropped, LOG_MAX_PER_SECOND);
            send_log(h, "warn", note);
            h->log_count++;
        }
    }
    if (h->log_count >= LOG_MAX_PER_SECOND) {
        h->log_dropped++;
        return;
    }
    h->log_count++;

    char text[LOG_MAX_MESSAGE + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    send_log(h, level_name(level), text);
}

/* ---- secrets, clock, call info ---- */

static aiorun_status host_secret(aiorun_call *call, const char *name, const char **value, size_t *len)
{
    host_ctx *h = call && call->host ? call->host : g_host;
    const host_secret_item *found = NULL;
    for (size_t i = 0; h && h->secrets && name && i < h->secrets->n; i++) {
        if (strcmp(h->secrets->items[i].name, name) == 0) {
            found = &h->secrets->items[i];
            break;
        }
    }
    if (value)
        *value = found ? (const char *)found->value : NULL;
    if (len)
        *len = found ? found->len : 0;
    return found ? AIORUN_OK : AIORUN_E_NOT_FOUND;
}

static int64_t host_now_ms(void)
{
    return ar_now_ms();
}

static int64_t host_deadline_ms(aiorun_call *call)
{
    return call ? call->deadline_ms : 0;
}

static const char *host_idempotency_key(aiorun_call *call)
{
    return call && call->idempotency_key ? call->idempotency_key : "";
}

static aiorun_status host_set_error(aiorun_call *call, aiorun_status cls, const char *fmt, ...)
{
    if (!call || !call->active)
        return cls;
    char text[sizeof call->error];
    text[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
    }
    host_sanitize_text(call->error, sizeof call->error, text);
    call->has_error = 1;
    return cls;
}

static aiorun_status host_set_result(aiorun_call *call, const char *json, size_t len)
{
    if (!call || !call->active || !json)
        return AIORUN_E_INVALID;
    json_error_t jerr;
    json_t *v = json_loadb(json, len, JSON_DECODE_ANY, &jerr);
    if (!v)
        return AIORUN_E_INVALID;
    json_decref(call->result);
    call->result = v;
    return AIORUN_OK;
}

/* ---- cost ---- */

static int valid_cost_unit(const char *unit)
{
    size_t n = 0;
    for (; unit && unit[n]; n++) {
        char ch = unit[n];
        if (n >= HOST_COST_UNIT_MAX || !((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                                         (ch >= '0' && ch <= '9') || ch == '_'))
            return 0;
    }
    return n > 0;
}

static aiorun_status host_set_cost(aiorun_call *call, double amount, const char *unit)
{
    if (!call || !call->active || !call->costs_allowed || !isfinite(amount) || amount < 0 ||
        !valid_cost_unit(unit))
        return AIORUN_E_INVALID;
    for (size_t i = 0; i < call->n_costs; i++) {
        if (strcmp(call->costs[i].unit, unit) == 0) {
            double sum = call->costs[i].amount + amount;
            if (!isfinite(sum))
                return AIORUN_E_INVALID;
            call->costs[i].amount = sum;
            return AIORUN_OK;
        }
    }
    if (call->n_costs >= HOST_COST_MAX_UNITS)
        return AIORUN_E_INVALID;
    host_cost *c = &call->costs[call->n_costs++];
    snprintf(c->unit, sizeof c->unit, "%s", unit);
    /* -0.0 passes "amount < 0": store it as 0 */
    c->amount = amount + 0.0;
    return AIORUN_OK;
}

json_t *host_call_cost(const aiorun_call *c)
{
    if (!c || c->n_costs == 0)
        return NULL;
    json_t *out = json_object();
    for (size_t i = 0; out && i < c->n_costs; i++) {
        double v = c->costs[i].amount;
        /* whole amounts (tokens) read better as integers; 2^53 keeps the conversion exact */
        json_t *num = v <= 9007199254740992.0 && (double)(json_int_t)v == v
                          ? json_integer((json_int_t)v) : json_real(v);
        if (json_object_set_new(out, c->costs[i].unit, num) != 0) {
            json_decref(out);
            out = NULL;
        }
    }
    return out;
}

/* Documented in plugin.h; statuses it does not list (1xx, 3xx: redirects are not followed,
 * anything else) are PERMANENT, since repeating the same request gets the same answer. */
static aiorun_status host_http_status_class(long status)
{
    if (status >= 200 && status <= 299)
        return AIORUN_OK;
    switch (status) {
    case 408: return AIORUN_E_TIMEOUT;
    case 409: return AIORUN_E_CONFLICT;
    case 429: return AIORUN_E_RATE_LIMITED;
    case 401:
    case 403: return AIORUN_E_AUTH;
    case 404:
    case 410: return AIORUN_E_NOT_FOUND;
    default: break;
    }
    if (status >= 400 && status <= 499)
        return AIORUN_E_INVALID;
    if (status >= 500 && status <= 599)
        return AIORUN_E_RETRYABLE;
    return AIORUN_E_PERMANENT;
}

/* ---- http ---- */

typedef struct http_body {
    char *data;
    size_t len, cap;
    int too_large;
} http_body;

/* Response headers of the last response as "name\0value\0" pairs. */
typedef struct http_headers {
    char *data;
    size_t len, cap;
    size_t count;
    int too_large;
} http_headers;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    http_body *b = arg;
    size_t n = size * nmemb;
    if (n > HTTP_MAX_BODY - b->len) {
        b->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *nd = realloc(b->data, cap);
        if (!nd)
            return 0;
        b->data = nd;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    return n;
}

static int headers_append(http_headers *h, const char *s, size_t n)
{
    if (h->len + n + 1 > h->cap) {
        size_t cap = h->cap ? h->cap : 2048;
        while (cap < h->len + n + 1)
            cap *= 2;
        char *nd = realloc(h->data, cap);
        if (!nd)
            return -1;
        h->data = nd;
        h->cap = cap;
    }
    memcpy(h->data + h->len, s, n);
    h->data[h->len + n] = '\0';
    h->len += n + 1;
    return 0;
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *arg)
{
    http_headers *h = arg;
    size_t n = size * nmemb, total = n;

    while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == '\n'))
        n--;
    /* A status line starts a new response (100 Continue, or an earlier one): keep the last. */
    if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        h->len = 0;
        h->count = 0;
        return total;
    }
    const char *colon = memchr(line, ':', n);
    if (!colon || colon == line)
        return total; /* blank end-of-headers line, or a continuation we do not keep */
    size_t name_len = (size_t)(colon - line);
    const char *val = colon + 1;
    size_t val_len = n - name_len - 1;
    while (val_len > 0 && (*val == ' ' || *val == '\t')) {
        val++;
        val_len--;
    }
    while (val_len > 0 && (val[val_len - 1] == ' ' || val[val_len - 1] == '\t'))
        val_len--;
    if (h->count >= HTTP_MAX_HEADERS || h->len + n + 2 > HTTP_MAX_HEADER_BYTES) {
        h->too_large = 1;
        return 0;
    }
    if (headers_append(h, line, name_len) || headers_append(h, val, val_len))
        return 0;
    h->count++;
    return total;
}

/* Retry-After is either delay-seconds or an HTTP date. -1 when absent or unparsable. */
static int64_t parse_retry_after(const char *v)
{
    if (!v || !*v)
        return -1;
    int digits = 1;
    for (const char *p = v; *p; p++)
        if (!isdigit((unsigned char)*p))
            digits = 0;
    if (digits) {
        if (strlen(v) > 9)
            return 7LL * 24 * 3600 * 1000; /* absurd values are capped at a week */
        return strtoll(v, NULL, 10) * 1000;
    }
    time_t t = curl_getdate(v, NULL);
    if (t == (time_t)-1)
        return -1;
    int64_t ms = (int64_t)t * 1000 - ar_now_ms();
    return ms < 0 ? 0 : ms;
}

static int is_token(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return 0;
    return 1;
}

static int has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* The host of url for messages (never the path or query, which may carry tokens). */
static void url_host(const char *url, char *out, size_t cap)
{
    snprintf(out, cap, "(unparsable URL)");
    CURLU *u = curl_url();
    char *host = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        snprintf(out, cap, "%s", host);
    curl_free(host);
    curl_url_cleanup(u);
}

/*
 * Transport failures and their classes. The question is always "may the API have acted?":
 *   - could not resolve or connect, or any failure before the request started (nothing_sent:
 *     curl never reached the transfer, e.g. a connect that timed out or a TLS handshake that
 *     failed): nothing was sent, so AIORUN_E_RETRYABLE is plainly safe;
 *   - a timeout, a connection reset or any send/receive error once the request may have gone
 *     out, a truncated body, an empty reply: AIORUN_E_TIMEOUT, "the outcome is unknown". The
 *     API may have acted; only an idempotency key or a lookup makes a repeat safe, and the
 *     class tells the scheduler exactly that;
 *   - bad URL or unsupported scheme: AIORUN_E_INVALID (the plugin built a wrong request);
 *   - TLS certificate problems: AIORUN_E_PERMANENT (retrying will not fix a certificate).
 */
static aiorun_status classify_curl(CURLcode cc, int nothing_sent, const char *method,
                                   const char *host, long timeout_ms, const char *detail,
                                   char *msg, size_t cap)
{
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
        snprintf(msg, cap, "HTTP %s to %s: %s; the request was not sent", method, host, detail);
        return AIORUN_E_RETRYABLE;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        snprintf(msg, cap, "HTTP %s: invalid URL for host %s: %s", method, host, detail);
        return AIORUN_E_INVALID;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
        snprintf(msg, cap, "HTTP %s to %s: TLS verification failed: %s", method, host, detail);
        return AIORUN_E_PERMANENT;
    default:
        break;
    }
    if (nothing_sent) {
        if (cc == CURLE_OPERATION_TIMEDOUT)
            snprintf(msg, cap, "HTTP %s to %s: no connection within %ld ms; the request was not "
                     "sent", method, host, timeout_ms);
        else
            snprintf(msg, cap, "HTTP %s to %s failed before the request was sent: %s; the request "
                     "was not sent", method, host, detail);
        return AIORUN_E_RETRYABLE;
    }
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
        snprintf(msg, cap, "HTTP %s to %s timed out after %ld ms; the request may have reached the "
                 "API, the outcome is unknown", method, host, timeout_ms);
        break;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        snprintf(msg, cap, "HTTP %s to %s: connection reset after the request was sent; the "
                 "outcome is unknown (%s)", method, host, detail);
        break;
    case CURLE_GOT_NOTHING:
        snprintf(msg, cap, "HTTP %s to %s: the connection closed without a response after the "
                 "request was sent; the outcome is unknown", method, host);
        break;
    case CURLE_PARTIAL_FILE:
        snprintf(msg, cap, "HTTP %s to %s: the response was cut short; the request reached the "
                 "API, the outcome is unknown (%s)", method, host, detail);
        break;
    default:
        snprintf(msg, cap, "HTTP %s to %s failed after the request may have been sent: %s; the "
                 "outcome is unknown", method, host, detail);
        break;
    }
    return AIORUN_E_TIMEOUT;
}

/* Whether a failed transfer never got as far as sending the request: curl records the
 * pre-transfer time (connection and TLS ready, request about to go) and the bytes of request
 * it issued. Both zero means the API cannot have seen anything. */
static int request_not_sent(CURL *curl)
{
    curl_off_t pretransfer = 0;
    long request_size = 0;
    if (curl_easy_getinfo(curl, CURLINFO_PRETRANSFER_TIME_T, &pretransfer) != CURLE_OK ||
        curl_easy_getinfo(curl, CURLINFO_REQUEST_SIZE, &request_size) != CURLE_OK)
        return 0;
    return pretransfer == 0 && request_size == 0;
}

static aiorun_status host_http(aiorun_call *call, const aiorun_http_request *req,
                               aiorun_http_response *resp)
{
    if (!call || !call->active)
        return AIORUN_E_INVALID;
    if (!req || !resp || req->struct_size < sizeof(aiorun_http_request) ||
        resp->struct_size < sizeof(aiorun_http_response))
        return host_set_error(call, AIORUN_E_INVALID,
                              "http: request or response missing or of an unknown struct_size");
    resp->status = 0;
    resp->body = "";
    resp->body_len = 0;
    resp->headers = NULL;
    resp->n_headers = 0;
    resp->retry_after_ms = -1;

    const char *method = req->method ? req->method : "GET";
    if (!is_token(method))
        return host_set_error(call, AIORUN_E_INVALID, "http: invalid method");
    if (!req->url || has_crlf(req->url))
        return host_set_error(call, AIORUN_E_INVALID, "http: missing or invalid url");
    if (req->n_headers > 0 && !req->headers)
        return host_set_error(call, AIORUN_E_INVALID, "http: n_headers without headers");
    if (req->body_len > 0 && !req->body)
        return host_set_error(call, AIORUN_E_INVALID, "http: body_len without body");

    int64_t remaining = call->deadline_ms - ar_now_ms();
    if (remaining <= 0)
        return host_set_error(call, AIORUN_E_TIMEOUT,
                              "http: the call's deadline passed before the request was sent");
    long timeout_ms = (long)remaining;
    if (req->timeout_ms > 0 && req->timeout_ms < timeout_ms)
        timeout_ms = req->timeout_ms;

    host_ctx *h = call->host;
    if (!h->curl && !(h->curl = curl_easy_init()))
        return host_set_error(call, AIORUN_E_RETRYABLE, "http: cannot create a curl handle");
    CURL *curl = h->curl;
    /* reset keeps the connection cache: keep-alive survives across calls */
    curl_easy_reset(curl);

    struct curl_slist *hdrs = NULL, *tmp;
    http_body body = {0};
    http_headers rh = {0};
    aiorun_status st = AIORUN_OK;
    char *line = NULL;
    int has_key = 0, has_expect = 0;
    char errbuf[CURL_ERROR_SIZE] = "";
    char host[256];

    for (size_t i = 0; i < req->n_headers; i++) {
        const aiorun_http_header *hd = &req->headers[i];
        if (!is_token(hd->name) || !hd->value || has_crlf(hd->value)) {
            st = host_set_error(call, AIORUN_E_INVALID, "http: invalid header #%zu", i);
            goto done;
        }
        has_key |= strcasecmp(hd->name, "Idempotency-Key") == 0;
        has_expect |= strcasecmp(hd->name, "Expect") == 0;
        /* "Name;" is curl's way to send a header with an empty value */
        if (asprintf(&line, *hd->value ? "%s: %s" : "%s;", hd->name, hd->value) < 0)
            goto nomem;
        if (!(tmp = curl_slist_append(hdrs, line)))
            goto nomem;
        hdrs = tmp;
        free(line);
        line = NULL;
    }
    /* A GET or HEAD changes nothing, so it carries no key: an API that honours keys may even
     * answer a later read with a stored earlier one. */
    int is_read = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (!has_key && !is_read && call->idempotency_key && *call->idempotency_key &&
        !has_crlf(call->idempotency_key)) {
        if (asprintf(&line, "Idempotency-Key: %s", call->idempotency_key) < 0)
            goto nomem;
        if (!(tmp = curl_slist_append(hdrs, line)))
            goto nomem;
        hdrs = tmp;
        free(line);
        line = NULL;
    }
    /* no 1 s wait for "100 Continue" on larger bodies */
    if (!has_expect) {
        if (!(tmp = curl_slist_append(hdrs, "Expect:")))
            goto nomem;
        hdrs = tmp;
    }

    curl_easy_setopt(curl, CURLOPT_URL, req->url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "aiorun/" AIORUN_VERSION_STRING);
    curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &rh);
    /* A write never goes out on a reused keep-alive connection: when such a connection yields
     * nothing, curl silently re-sends the request on a new one, and the API may then act
     * twice. On a fresh connection a failure comes back to us, classified, instead. */
    if (!is_read)
        curl_easy_setopt(curl, CURLOPT_FRESH_CONNECT, 1L);
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (req->body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
               strcmp(method, "PATCH") == 0) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    }

    CURLcode cc = curl_easy_perform(curl);
    url_host(req->url, host, sizeof host);
    if (body.too_large) {
        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        st = host_set_error(call, AIORUN_E_INVALID,
                            "http: the response from %s (status %ld) is too large (more than %u "
                            "bytes)", host, status, HTTP_MAX_BODY);
        goto done;
    }
    if (rh.too_large) {
        st = host_set_error(call, AIORUN_E_INVALID,
                            "http: response headers from %s too large (more than %d headers or "
                            "%u bytes)", host, HTTP_MAX_HEADERS, HTTP_MAX_HEADER_BYTES);
        goto done;
    }
    if (cc != CURLE_OK) {
        char msg[600];
        st = classify_curl(cc, request_not_sent(curl), method, host, timeout_ms,
                           errbuf[0] ? errbuf : curl_easy_strerror(cc), msg, sizeof msg);
        host_set_error(call, st, "%s", msg);
        goto done;
    }

    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (!body.data && !(body.data = malloc(1)))
        goto nomem;
    body.data[body.len] = '\0';
    char *body_mem = arena_adopt(call, body.data);
    body.data = NULL;
    if (!body_mem)
        goto nomem;

    aiorun_http_header *out_h = NULL;
    if (rh.count > 0) {
        char *hmem = arena_adopt(call, rh.data);
        rh.data = NULL;
        out_h = hmem ? arena_alloc(call, rh.count * sizeof *out_h) : NULL;
        if (!out_h)
            goto nomem;
        const char *p = hmem;
        for (size_t i = 0; i < rh.count; i++) {
            out_h[i].name = p;
            p += strlen(p) + 1;
            out_h[i].value = p;
            p += strlen(p) + 1;
            if (strcasecmp(out_h[i].name, "Retry-After") == 0)
                resp->retry_after_ms = parse_retry_after(out_h[i].value);
        }
    }
    call->http_status = status;
    call->retry_after_ms = resp->retry_after_ms;
    resp->status = status;
    resp->body = body_mem;
    resp->body_len = body.len;
    resp->headers = out_h;
    resp->n_headers = rh.count;
    st = AIORUN_OK;
    goto done;

nomem:
    st = host_set_error(call, AIORUN_E_RETRYABLE, "http: out of memory in the host");
done:
    /* the handle keeps pointers to these until the next reset */
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(hdrs);
    free(line);
    free(body.data);
    free(rh.data);
    return st;
}

static const aiorun_host_api host_api = {
    .struct_size = (uint32_t)sizeof(aiorun_host_api),
    .abi_major = AIORUN_ABI_MAJOR,
    .abi_minor = AIORUN_ABI_MINOR,
    .log = host_log,
    .secret = host_secret,
    .http = host_http,
    .http_status_class = host_http_status_class,
    .now_ms = host_now_ms,
    .deadline_ms = host_deadline_ms,
    .idempotency_key = host_idempotency_key,
    .set_error = host_set_error,
    .set_result = host_set_result,
    .set_cost = host_set_cost,
};

const aiorun_host_api *host_api_table(void)
{
    return &host_api;
}
