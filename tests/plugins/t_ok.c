/*
 * t_ok.c - fixture plugin that behaves: one action per thing the host must carry correctly.
 *
 *   ok        read   returns its input text as the result
 *   sleep     read   {"ms": n}: sleeps n ms, result {"slept_ms": n}
 *   fail      write  {"class": name, "message": text}: fails with that class and message
 *   big       read   {"bytes": n}: result {"data": "xxx..."} with n x's
 *   write_op  write  idempotency none, {"n": n, "ms": m}: sleeps m ms (optional), result {"n": n}
 *   secret    read   result {"found": true|false}: whether secret "token" exists
 *   costly    write  idempotency native, {"amount": number, "unit": string, "fail": bool,
 *                    "times": n, "amount_text": text, "extra": [{"amount", "unit"}, ...]}:
 *                    calls set_cost(amount, unit) `times` times (default 1; amount_text, when
 *                    given, is parsed with strtod instead of amount: "nan", "inf"), then once
 *                    per element of extra, and returns {"cost_status": [what each set_cost
 *                    returned, in order]}, or, when fail is true, fails with class retryable
 *                    (the cost still counts: a retried action accumulates it). Unit and amount
 *                    are not checked by the schema, so that set_cost's refusals can be seen.
 *
 * lookup (ABI 1.1): a key starting with "done-" happened, result {"found_key": key}; any other
 * key did not (AIORUN_E_NOT_FOUND). A lookup for action costly reports a cost of 0.25 USD
 * (ABI 1.2), whatever the answer.
 *
 * Config: {"label": string, "required_flag": boolean}, nothing else (to test config
 * validation); unused beyond that. Logs one line at init.
 * Only <aiorun/plugin.h> and libc; the JSON scanning is minimal and relies on the host having
 * validated the input against the schemas below.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L   /* nanosleep under -std=c11 */
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <aiorun/plugin.h>

typedef struct fixture {
    const aiorun_host_api *api;
} fixture;

/* ---- minimal JSON reading (input already validated by the host) ----------------------- */

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is an opening quote: index just past the closing quote, 0 if the text ends first. */
static size_t string_end(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return 0;
}

/* s[i] starts a value: index just past it, 0 when the text ends first. */
static size_t value_end(const char *s, size_t n, size_t i)
{
    size_t start = i, depth = 0;

    if (i >= n)
        return 0;
    if (s[i] == '"')
        return string_end(s, n, i);
    if (s[i] != '{' && s[i] != '[') {
        while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
               s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            i++;
        return i > start ? i : 0;
    }
    while (i < n) {
        if (s[i] == '"') {
            i = string_end(s, n, i);
            if (i == 0)
                return 0;
            continue;
        }
        if (s[i] == '{' || s[i] == '[')
            depth++;
        else if ((s[i] == '}' || s[i] == ']') && --depth == 0)
            return i + 1;
        i++;
    }
    return 0;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

/* Decode a JSON string body (no quotes) into out (room for len + 1: decoding never grows the
 * text). Returns the decoded length, (size_t)-1 on a malformed escape. NUL-terminates. */
static size_t decode_string(const char *raw, size_t len, char *out)
{
    size_t i = 0, o = 0;

    while (i < len) {
        unsigned cp, lo;
        char c = raw[i++];
        if (c != '\\') {
            out[o++] = c;
            continue;
        }
        if (i >= len)
            return (size_t)-1;
        c = raw[i++];
        switch (c) {
        case '"': case '\\': case '/': out[o++] = c; continue;
        case 'b': out[o++] = '\b'; continue;
        case 'f': out[o++] = '\f'; continue;
        case 'n': out[o++] = '\n'; continue;
        case 'r': out[o++] = '\r'; continue;
        case 't': out[o++] = '\t'; continue;
        case 'u': break;
        default: return (size_t)-1;
        }
        if (i + 4 > len || !hex4(raw + i, &cp))
            return (size_t)-1;
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {       /* a high surrogate needs its low half */
            if (i + 6 > len || raw[i] != '\\' || raw[i + 1] != 'u' || !hex4(raw + i + 2, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return (size_t)-1;
            i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return (size_t)-1;
        }
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[o] = '\0';
    return o;
}

static int key_is(const char *raw, size_t len, const char *name)
{
    char buf[64];
    size_t n;
    if (len >= sizeof buf)
        return 0;
    n = decode_string(raw, len, buf);
    return n != (size_t)-1 && n == strlen(name) && memcmp(buf, name, n) == 0;
}

/* Member `name` of the top-level object: 1 with [*vs, *ve) its value, 0 absent, -1 not an
 * object. The last of duplicate keys wins, as in jansson. */
static int find_member(const char *s, size_t n, const char *name, size_t *vs, size_t *ve)
{
    size_t i = skip_ws(s, n, 0);
    int found = 0;

    if (i >= n || s[i] != '{')
        return -1;
    i = skip_ws(s, n, i + 1);
    if (i < n && s[i] == '}')
        return 0;
    for (;;) {
        size_t kstart = i, kend, a, b;
        if (i >= n || s[i] != '"' || (kend = string_end(s, n, i)) == 0)
            return -1;
        i = skip_ws(s, n, kend);
        if (i >= n || s[i] != ':')
            return -1;
        a = skip_ws(s, n, i + 1);
        b = value_end(s, n, a);
        if (b == 0)
            return -1;
        if (key_is(s + kstart + 1, kend - kstart - 2, name)) {
            *vs = a;
            *ve = b;
            found = 1;
        }
        i = skip_ws(s, n, b);
        if (i < n && s[i] == ',') {
            i = skip_ws(s, n, i + 1);
            continue;
        }
        return (i < n && s[i] == '}') ? found : -1;
    }
}

/* A string member, decoded into *out (malloc'd, NUL-terminated). 0 on success. */
static int get_string(const char *s, size_t n, const char *name, char **out)
{
    size_t a = 0, b = 0;
    if (find_member(s, n, name, &a, &b) != 1 || s[a] != '"')
        return -1;
    *out = malloc(b - a - 1);
    if (*out == NULL)
        return -1;
    if (decode_string(s + a + 1, b - a - 2, *out) == (size_t)-1) {
        free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* An integer member. 0 on success. */
static int get_integer(const char *s, size_t n, const char *name, long long *out)
{
    size_t a = 0, b = 0;
    char buf[32], *end;
    if (find_member(s, n, name, &a, &b) != 1 || b - a >= sizeof buf)
        return -1;
    memcpy(buf, s + a, b - a);
    buf[b - a] = '\0';
    errno = 0;
    *out = strtoll(buf, &end, 10);
    return (errno == 0 && end != buf && *end == '\0') ? 0 : -1;
}

/* A number member (integer or real). 0 on success. */
static int get_number(const char *s, size_t n, const char *name, double *out)
{
    size_t a = 0, b = 0;
    char buf[64], *end;
    if (find_member(s, n, name, &a, &b) != 1 || b - a >= sizeof buf)
        return -1;
    memcpy(buf, s + a, b - a);
    buf[b - a] = '\0';
    *out = strtod(buf, &end);
    return (end != buf && *end == '\0') ? 0 : -1;
}

/* A boolean member: 1 true, 0 false or absent. */
static int get_bool(const char *s, size_t n, const char *name)
{
    size_t a = 0, b = 0;
    return find_member(s, n, name, &a, &b) == 1 && b - a == 4 && memcmp(s + a, "true", 4) == 0;
}

/* ---- actions ------------------------------------------------------------------------- */

static aiorun_status do_ok(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    return fx->api->set_result(call, input, len);
}

static aiorun_status do_sleep(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    long long ms;
    struct timespec left;
    char out[64];

    if (get_integer(input, len, "ms", &ms) != 0 || ms < 0)
        return fx->api->set_error(call, AIORUN_E_INVALID,
                                  "t_ok: input.ms must be an integer >= 0");
    left.tv_sec = (time_t)(ms / 1000);
    left.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
    snprintf(out, sizeof out, "{\"slept_ms\":%lld}", ms);
    return fx->api->set_result(call, out, strlen(out));
}

static const struct {
    const char *name;
    aiorun_status cls;
} class_names[] = {
    {"retryable", AIORUN_E_RETRYABLE}, {"rate_limited", AIORUN_E_RATE_LIMITED},
    {"timeout", AIORUN_E_TIMEOUT},     {"auth", AIORUN_E_AUTH},
    {"invalid", AIORUN_E_INVALID},     {"not_found", AIORUN_E_NOT_FOUND},
    {"conflict", AIORUN_E_CONFLICT},   {"permanent", AIORUN_E_PERMANENT},
};

static aiorun_status do_fail(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    char *cls = NULL, *msg = NULL;
    aiorun_status st = AIORUN_E_INVALID;

    if (get_string(input, len, "class", &cls) != 0 ||
        get_string(input, len, "message", &msg) != 0) {
        st = fx->api->set_error(call, AIORUN_E_INVALID,
                                "t_ok: input needs string class and message");
        goto done;
    }
    for (size_t i = 0; i < sizeof class_names / sizeof class_names[0]; i++) {
        if (strcmp(cls, class_names[i].name) == 0) {
            st = fx->api->set_error(call, class_names[i].cls, "%s", msg);
            goto done;
        }
    }
    st = fx->api->set_error(call, AIORUN_E_INVALID, "t_ok: unknown class \"%s\"", cls);
done:
    free(cls);
    free(msg);
    return st;
}

static aiorun_status do_big(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    static const char head[] = "{\"data\":\"", tail[] = "\"}";
    long long bytes;
    size_t n, total;
    char *out;
    aiorun_status st;

    if (get_integer(input, len, "bytes", &bytes) != 0 || bytes < 0)
        return fx->api->set_error(call, AIORUN_E_INVALID,
                                  "t_ok: input.bytes must be an integer >= 0");
    n = (size_t)bytes;
    total = sizeof head - 1 + n + sizeof tail - 1;
    out = malloc(total);
    if (out == NULL)
        return fx->api->set_error(call, AIORUN_E_PERMANENT, "t_ok: cannot allocate %zu bytes",
                                  total);
    memcpy(out, head, sizeof head - 1);
    memset(out + sizeof head - 1, 'x', n);
    memcpy(out + sizeof head - 1 + n, tail, sizeof tail - 1);
    st = fx->api->set_result(call, out, total);
    free(out);
    return st;
}

static aiorun_status do_write_op(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    long long n;
    char out[64];

    long long ms = 0;
    if (get_integer(input, len, "n", &n) != 0)
        return fx->api->set_error(call, AIORUN_E_INVALID, "t_ok: input.n must be an integer");
    if (get_integer(input, len, "ms", &ms) == 0 && ms > 0) {
        /* Slow writes let crash tests kill the daemon while the call is in flight. */
        struct timespec left = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
        while (nanosleep(&left, &left) != 0 && errno == EINTR)
            ;
    }
    snprintf(out, sizeof out, "{\"n\":%lld}", n);
    return fx->api->set_result(call, out, strlen(out));
}

static aiorun_status do_secret(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    const char *value = NULL;
    size_t value_len = 0;
    aiorun_status st;

    (void)input;
    (void)len;
    st = fx->api->secret(call, "token", &value, &value_len);
    if (st == AIORUN_OK)
        return fx->api->set_result(call, "{\"found\":true}", 14);
    if (st == AIORUN_E_NOT_FOUND)
        return fx->api->set_result(call, "{\"found\":false}", 15);
    return fx->api->set_error(call, st, "t_ok: secret lookup failed");
}

/* set_cost if the host has it (ABI 1.2), else AIORUN_E_PERMANENT: what the result reports. */
static aiorun_status fx_cost(fixture *fx, aiorun_call *call, double amount, const char *unit)
{
    if (!AIORUN_HOST_HAS(fx->api, set_cost))
        return AIORUN_E_PERMANENT;
    return fx->api->set_cost(call, amount, unit);
}

/* Append ",<st>" (or "<st>" first) to the status list out (room: cap). */
static void append_status(char *out, size_t cap, size_t *o, aiorun_status st)
{
    int w = snprintf(out + *o, cap - *o, "%s%d", out[*o - 1] == '[' ? "" : ",", (int)st);
    if (w > 0 && (size_t)w < cap - *o)
        *o += (size_t)w;
}

static aiorun_status do_costly(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    char *unit = NULL, *text = NULL, out[1024];
    double amount = 0;
    long long times = 1;
    size_t o, a = 0, b = 0;
    aiorun_status st;

    if (get_string(input, len, "unit", &unit) != 0 || get_number(input, len, "amount", &amount) != 0) {
        free(unit);
        return fx->api->set_error(call, AIORUN_E_INVALID, "t_ok: input needs amount and unit");
    }
    if (get_string(input, len, "amount_text", &text) == 0)
        amount = strtod(text, NULL);
    free(text);
    get_integer(input, len, "times", &times);
    o = (size_t)snprintf(out, sizeof out, "{\"cost_status\":[");
    for (long long i = 0; i < times; i++)
        append_status(out, sizeof out, &o, fx_cost(fx, call, amount, unit));
    free(unit);
    /* extra: an array of {"amount", "unit"} objects, each one more set_cost */
    if (find_member(input, len, "extra", &a, &b) == 1 && input[a] == '[') {
        size_t i = skip_ws(input, b, a + 1);
        while (i < b && input[i] == '{') {
            size_t e = value_end(input, b, i);
            double x;
            if (e == 0)
                break;
            if (get_number(input + i, e - i, "amount", &x) == 0 &&
                get_string(input + i, e - i, "unit", &unit) == 0) {
                append_status(out, sizeof out, &o, fx_cost(fx, call, x, unit));
                free(unit);
                unit = NULL;
            }
            i = skip_ws(input, b, e);
            if (i < b && input[i] == ',')
                i = skip_ws(input, b, i + 1);
        }
    }
    snprintf(out + o, sizeof out - o, "]}");
    if (get_bool(input, len, "fail"))
        return fx->api->set_error(call, AIORUN_E_RETRYABLE, "t_ok: costly failed as asked");
    st = fx->api->set_result(call, out, strlen(out));
    return st;
}

/* ---- lookup -------------------------------------------------------------------------- */

static aiorun_status fx_lookup(void *instance, aiorun_call *call, const char *action,
                               const char *key)
{
    fixture *fx = instance;
    static const char head[] = "{\"found_key\":\"", tail[] = "\"}";
    size_t n = strlen(key), o;
    char *out;
    aiorun_status st;

    if (strcmp(action, "costly") == 0)
        fx_cost(fx, call, 0.25, "USD");
    if (strncmp(key, "done-", 5) != 0)
        return fx->api->set_error(call, AIORUN_E_NOT_FOUND, "t_ok: no operation with key %s", key);
    /* the key as a JSON string: escape what JSON requires, at most 6 bytes per input byte */
    out = malloc(sizeof head + 6 * n + sizeof tail);
    if (out == NULL)
        return fx->api->set_error(call, AIORUN_E_RETRYABLE, "t_ok: out of memory");
    memcpy(out, head, sizeof head - 1);
    o = sizeof head - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, 7, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    memcpy(out + o, tail, sizeof tail - 1);
    o += sizeof tail - 1;
    st = fx->api->set_result(call, out, o);
    free(out);
    return st;
}

/* ---- descriptor ---------------------------------------------------------------------- */

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = malloc(sizeof *fx);
    (void)config;
    (void)config_len;
    if (fx == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_ok: out of memory");
    fx->api = api;
    api->log(call, AIORUN_LOG_INFO, "t_ok: init");
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

static const aiorun_action actions[] = {
    {.name = "ok", .summary = "Return the input unchanged",
     .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_ok},
    {.name = "sleep", .summary = "Sleep for input.ms milliseconds",
     .input_schema = "{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"integer\","
                     "\"minimum\":0,\"maximum\":3600000}},\"required\":[\"ms\"]}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_sleep},
    {.name = "fail", .summary = "Fail with input.class and input.message",
     .input_schema = "{\"type\":\"object\",\"properties\":{"
                     "\"class\":{\"type\":\"string\",\"enum\":[\"retryable\",\"rate_limited\","
                     "\"timeout\",\"auth\",\"invalid\",\"not_found\",\"conflict\",\"permanent\"]},"
                     "\"message\":{\"type\":\"string\"}},\"required\":[\"class\",\"message\"]}",
     .effect = AIORUN_EFFECT_WRITE, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_fail},
    {.name = "big", .summary = "Return input.bytes x's",
     .input_schema = "{\"type\":\"object\",\"properties\":{\"bytes\":{\"type\":\"integer\","
                     "\"minimum\":0,\"maximum\":67108864}},\"required\":[\"bytes\"]}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_big},
    {.name = "write_op", .summary = "A write without idempotency support",
     .input_schema = "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\"},"
                     "\"ms\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":3600000}},"
                     "\"required\":[\"n\"]}",
     .effect = AIORUN_EFFECT_WRITE, .idempotency = AIORUN_IDEMPOTENCY_NONE, .invoke = do_write_op},
    {.name = "secret", .summary = "Tell whether secret \"token\" is available",
     .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_secret},
    {.name = "costly", .summary = "Report a cost with set_cost, then succeed or fail",
     .input_schema = "{\"type\":\"object\",\"properties\":{\"amount\":{\"type\":\"number\"},"
                     "\"unit\":{\"type\":\"string\"},\"fail\":{\"type\":\"boolean\"},"
                     "\"times\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":100},"
                     "\"amount_text\":{\"type\":\"string\"},"
                     "\"extra\":{\"type\":\"array\",\"maxItems\":20,\"items\":{\"type\":\"object\","
                     "\"properties\":{\"amount\":{\"type\":\"number\"},\"unit\":{\"type\":\"string\"}},"
                     "\"required\":[\"amount\",\"unit\"]}}},"
                     "\"required\":[\"amount\",\"unit\"],\"additionalProperties\":false}",
     .effect = AIORUN_EFFECT_WRITE, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_costly},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_ok",
    .version = "1.0.0",
    .description = "Fixture: well-behaved actions",
    .config_schema = "{\"type\":\"object\",\"properties\":{\"label\":{\"type\":\"string\"},"
                     "\"required_flag\":{\"type\":\"boolean\"}},\"additionalProperties\":false}",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = fx_init,
    .fini = fx_fini,
    .lookup = fx_lookup,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
