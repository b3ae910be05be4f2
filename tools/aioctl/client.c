/*
 * client.c - aioctl's HTTP/JSON client for the aiorun daemon (see client.h).
 */
#include "client.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <aiorun/version.h>

#include "aioctl.h"
#include "render.h"

/* Far above anything the API sends; a bound so a wrong --url cannot fill memory. */
#define MAX_REPLY_BYTES ((size_t)64 << 20)

struct client {
    CURL *curl;
    char *base_url;
    char *auth_header; /* "Authorization: Bearer <token>", or NULL; wiped when freed */
    long timeout_ms;
    char errbuf[CURL_ERROR_SIZE];
};

typedef struct buffer {
    char *data;
    size_t len;
    size_t cap;
    bool too_big;
    bool no_memory;
} buffer;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    buffer *b = userdata;
    size_t n = size * nmemb;

    if (n > MAX_REPLY_BYTES - b->len) {
        b->too_big = true;
        return 0; /* makes curl stop with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (!data) {
            b->no_memory = true;
            return 0;
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Retry-After: delay-seconds or an HTTP date (RFC 9110). -1 when unreadable. */
static long parse_retry_after(const char *v, size_t len)
{
    char text[128];
    while (len > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == '\r' ||
                       v[len - 1] == '\n'))
        len--;
    if (len == 0 || len >= sizeof text)
        return -1;
    memcpy(text, v, len);
    text[len] = '\0';
    if (text[0] >= '0' && text[0] <= '9') {
        char *end;
        long long n = strtoll(text, &end, 10);
        if (*end)
            return -1;
        return n > 86400 ? 86400 : (long)n; /* a day is "much later" enough */
    }
    time_t when = curl_getdate(text, NULL);
    if (when == (time_t)-1)
        return -1;
    double delta = difftime(when, time(NULL));
    return delta <= 0 ? 0 : delta > 86400 ? 86400 : (long)delta;
}

/* Header lines of the reply: only Retry-After matters to us. */
static size_t on_header(char *line, size_t size, size_t nitems, void *userdata)
{
    reply *rep = userdata;
    size_t n = size * nitems;
    static const char name[] = "Retry-After:";
    if (n > sizeof name - 1 && strncasecmp(line, name, sizeof name - 1) == 0)
        rep->retry_after_s = parse_retry_after(line + sizeof name - 1, n - (sizeof name - 1));
    else if (n > 5 && strncmp(line, "HTTP/", 5) == 0)
        rep->retry_after_s = -1; /* a new response (after an interim one) starts afresh */
    return n;
}

int client_new(const char *base_url, long timeout_ms, const char *token, client **out)
{
    *out = NULL;
    if (strncasecmp(base_url, "http://", 7) != 0 && strncasecmp(base_url, "https://", 8) != 0) {
        fprintf(stderr, "aioctl: --url must start with http:// or https://, got '%s'\n", base_url);
        return AIOCTL_USAGE;
    }
    client *c = calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->base_url = strdup(base_url);
    if (!c->base_url)
        goto fail;
    size_t n = strlen(c->base_url);
    while (n > 0 && c->base_url[n - 1] == '/')
        c->base_url[--n] = '\0';
    c->timeout_ms = timeout_ms;
    if (token && asprintf(&c->auth_header, "Authorization: Bearer %s", token) < 0) {
        c->auth_header = NULL;
        goto fail;
    }
    c->curl = curl_easy_init();
    if (!c->curl)
        goto fail;
    *out = c;
    return AIOCTL_OK;
fail:
    fprintf(stderr, "aioctl: out of memory\n");
    client_free(c);
    return AIOCTL_UNREACHABLE;
}

void client_free(client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    if (c->auth_header) {
        explicit_bzero(c->auth_header, strlen(c->auth_header));
        free(c->auth_header);
    }
    free(c->base_url);
    free(c);
}

const char *client_url(const client *c)
{
    return c->base_url;
}

void reply_fini(reply *rep)
{
    if (rep->body)
        explicit_bzero(rep->body, rep->len);
    free(rep->body);
    json_decref(rep->json);
    memset(rep, 0, sizeof *rep);
}

char *client_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1);
    if (!out)
        return NULL;
    char *p = out;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        if ((*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') ||
            *q == '-' || *q == '_' || *q == '.' || *q == '~') {
            *p++ = (char)*q;
        } else {
            *p++ = '%';
            *p++ = hex[*q >> 4];
            *p++ = hex[*q & 15];
        }
    }
    *p = '\0';
    return out;
}

/* The header list holds the token: wipe each line before curl frees it. */
static void free_headers(struct curl_slist *headers)
{
    for (struct curl_slist *h = headers; h; h = h->next)
        if (h->data)
            explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(headers);
}

/* Explain a transport failure on stderr and map it to an exit code. */
static int transport_failure(const client *c, CURLcode res, long extra_ms, const buffer *b)
{
    const char *detail = c->errbuf[0] ? c->errbuf : curl_easy_strerror(res);

    switch (res) {
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        fprintf(stderr, "aioctl: bad --url '%s': %s\n", c->base_url, detail);
        return AIOCTL_USAGE;
    case CURLE_OPERATION_TIMEDOUT:
        fprintf(stderr, "aioctl: the aiorun daemon at %s did not answer within %.1f s "
                "(--timeout %.1f s%s): %s\n", c->base_url,
                (double)(c->timeout_ms + extra_ms) / 1000.0, (double)c->timeout_ms / 1000.0,
                extra_ms > 0 ? " plus the wait" : "", detail);
        return AIOCTL_UNREACHABLE;
    case CURLE_WRITE_ERROR:
        if (b->too_big) {
            fprintf(stderr, "aioctl: the reply from %s is larger than %zu MiB; refusing it\n",
                    c->base_url, MAX_REPLY_BYTES >> 20);
            return AIOCTL_REFUSED;
        }
        if (b->no_memory) {
            fprintf(stderr, "aioctl: out of memory reading the reply\n");
            return AIOCTL_REFUSED;
        }
        break;
    default:
        break;
    }
    fprintf(stderr, "aioctl: cannot reach the aiorun daemon at %s: %s\n"
            "aioctl: start it with tools/run, or point --url (or AIORUN_URL) at a running one\n",
            c->base_url, detail);
    return AIOCTL_UNREACHABLE;
}

/* Explain an error reply ("error: <code>: <message>") on stderr. */
static void print_error_reply(const reply *rep)
{
    const char *code = NULL, *message = NULL;
    if (json_is_object(rep->json)) {
        code = json_string_value(json_object_get(rep->json, "error"));
        message = json_string_value(json_object_get(rep->json, "message"));
    }
    fputs("error: ", stderr);
    if (code)
        render_text(stderr, code);
    else
        fprintf(stderr, "http_%ld", rep->status);
    if (message) {
        fputs(": ", stderr);
        render_text(stderr, message);
    } else if (!code && rep->body && rep->len > 0) {
        /* Not our API's error format (a proxy? another server on the port?): show a little. */
        char snippet[201];
        size_t n = rep->len < 200 ? rep->len : 200;
        memcpy(snippet, rep->body, n);
        snippet[n] = '\0';
        fputs(": ", stderr);
        render_text(stderr, snippet);
    }
    fprintf(stderr, " (HTTP %ld)\n", rep->status);
}

int client_call(client *c, const char *method, const char *path, const json_t *body,
                long extra_ms, reply *rep)
{
    int rc = AIOCTL_REFUSED;
    char *url = NULL, *payload = NULL;
    struct curl_slist *headers = NULL, *h;
    buffer b = {0};
    CURLcode res;

    memset(rep, 0, sizeof *rep);
    rep->retry_after_s = -1;
    if (asprintf(&url, "%s%s", c->base_url, path) < 0) {
        url = NULL;
        goto nomem;
    }
    if (body) {
        payload = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!payload)
            goto nomem;
    }
    static const char *const header_lines[] = {
        "Accept: application/json", "Content-Type: application/json",
        "Expect:" /* no 100-continue round trip for larger bodies */
    };
    for (size_t i = 0; i < sizeof header_lines / sizeof header_lines[0]; i++) {
        if (!body && i > 0)
            break;
        h = curl_slist_append(headers, header_lines[i]);
        if (!h)
            goto nomem;
        headers = h;
    }
    if (c->auth_header) {
        h = curl_slist_append(headers, c->auth_header);
        if (!h)
            goto nomem;
        headers = h;
    }

    CURL *e = c->curl;
    curl_easy_reset(e);
    c->errbuf[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms + extra_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "aioctl/" AIORUN_VERSION_STRING);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, rep);
    /* A proxy from the environment has no business between us and a loopback daemon. */
    curl_easy_setopt(e, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        /* A POST always has a body (maybe empty); PUT and DELETE when given one. */
        if (payload || strcmp(method, "POST") == 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, payload ? payload : "");
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                             (curl_off_t)(payload ? strlen(payload) : 0));
        }
    }

    res = curl_easy_perform(e);
    if (res != CURLE_OK) {
        rc = transport_failure(c, res, extra_ms, &b);
        goto done;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &rep->status);
    rep->body = b.data;
    rep->len = b.len;
    b.data = NULL;
    if (rep->body) {
        json_error_t jerr;
        rep->json = json_loadb(rep->body, rep->len, JSON_DECODE_ANY, &jerr);
    }
    if (rep->status < 200 || rep->status > 299) {
        print_error_reply(rep);
        rc = AIOCTL_REFUSED;
        goto done;
    }
    if (!rep->json) {
        fprintf(stderr, "aioctl: the daemon at %s answered HTTP %ld with a body that is not JSON\n",
                c->base_url, rep->status);
        rc = AIOCTL_REFUSED;
        goto done;
    }
    rc = AIOCTL_OK;
    goto done;

nomem:
    fprintf(stderr, "aioctl: out of memory\n");
    rc = AIOCTL_REFUSED;
done:
    free_headers(headers);
    if (b.data)
        explicit_bzero(b.data, b.len);
    free(b.data);
    if (payload) /* it may carry a secret (aioctl secrets set): leave nothing behind */
        explicit_bzero(payload, strlen(payload));
    free(payload);
    free(url);
    return rc;
}
