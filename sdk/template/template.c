/*
 * template.c - a small aiorun connector to copy and adapt (see README.md next to it).
 *
 * One read action, "get_item", fetches GET <base_url>/items/<id> through the host's HTTP
 * client and returns the API's JSON body. It shows what every connector does: read its
 * config, use a secret, call an API, map the outcome to an error class, set the result.
 * It needs nothing but <aiorun/plugin.h> and the C library.
 *
 *   config  {"base_url": "https://api.example.com"}   required; http:// or https://
 *   secret  "api_token" (optional): sent as "Authorization: Bearer <token>"
 *   input   {"id": "42"}                               1..256 characters
 *   result  the API's JSON body as it came ({} when the body is empty)
 */
#include <stdlib.h>
#include <string.h>

#include <aiorun/plugin.h>

typedef struct connector {
    const aiorun_host_api *api;   /* the host's services, valid until fini */
    char *base_url;               /* owned, without a trailing '/' */
    char *auth_header;            /* owned, "Bearer <token>"; NULL without the secret */
} connector;

/* ---- minimal JSON reading --------------------------------------------------------------
 * Enough for config and input, which the host has validated against the schemas below
 * before the plugin sees them. Text is (pointer, length) and not NUL-terminated. Use a JSON
 * library instead if you prefer; the SDK does not need one. */

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is an opening quote: the index just past the closing quote, 0 if the text ends. */
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

/* s[i] starts a value: the index just past it, 0 if the text ends first. */
static size_t value_end(const char *s, size_t n, size_t i)
{
    size_t start = i, depth = 0;

    if (i >= n)
        return 0;
    if (s[i] == '"')
        return string_end(s, n, i);
    if (s[i] != '{' && s[i] != '[') {    /* number, true, false, null */
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

/* Decode a JSON string body (without its quotes) into out, which has room for len + 1 bytes
 * (decoding never makes text longer). Returns the decoded length, or (size_t)-1 for a bad
 * escape. out is NUL-terminated but may hold NUL bytes ("\u0000"): compare the length. */
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
        if (cp < 0x80) {                          /* UTF-8 encode */
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

/* Member `name` of the top-level object: 1 with [*vs, *ve) its value, 0 absent, -1 when the
 * text is not an object. The last of duplicate keys wins, as in the host's parser. */
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

/* The string member `name`, decoded into a malloc'd C string. 1: found (*out owned by the
 * caller); 0: absent; -1: not a string, holds "\u0000", or out of memory. */
static int get_string(const char *s, size_t n, const char *name, char **out)
{
    size_t a = 0, b = 0, len;
    int found = find_member(s, n, name, &a, &b);

    if (found <= 0)
        return found;
    if (s[a] != '"' || (*out = malloc(b - a - 1)) == NULL)
        return -1;
    len = decode_string(s + a + 1, b - a - 2, *out);
    if (len == (size_t)-1 || strlen(*out) != len) {
        free(*out);
        *out = NULL;
        return -1;
    }
    return 1;
}

/* ---- helpers -------------------------------------------------------------------------- */

/* Overwrite a buffer that held a secret; volatile so the compiler keeps the stores. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n-- > 0)
        *v++ = 0;
}

/* base + path + id percent-encoded, malloc'd. Everything but letters, digits, '-' and '_' is
 * encoded, so an id such as "../admin" or "1?x=2" stays one path segment of /items/. */
static char *item_url(const char *base, const char *path, const char *id)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t bl = strlen(base), pl = strlen(path), o;
    char *url = malloc(bl + pl + 3 * strlen(id) + 1);

    if (url == NULL)
        return NULL;
    memcpy(url, base, bl);
    memcpy(url + bl, path, pl);
    o = bl + pl;
    for (const unsigned char *p = (const unsigned char *)id; *p != '\0'; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_') {
            url[o++] = (char)*p;
        } else {
            url[o++] = '%';
            url[o++] = hex[*p >> 4];
            url[o++] = hex[*p & 0x0F];
        }
    }
    url[o] = '\0';
    return url;
}

/* ---- the action ----------------------------------------------------------------------- */

static aiorun_status get_item(void *instance, aiorun_call *call, const char *input,
                              size_t input_len)
{
    connector *c = instance;
    const aiorun_host_api *api = c->api;
    char *id = NULL, *url = NULL;
    aiorun_http_header headers[2];
    aiorun_http_request req;
    aiorun_http_response resp;
    aiorun_status st;

    if (get_string(input, input_len, "id", &id) != 1) {
        st = api->set_error(call, AIORUN_E_INVALID, "input.id must be a string without NUL");
        goto done;
    }
    url = item_url(c->base_url, "/items/", id);
    if (url == NULL) {
        st = api->set_error(call, AIORUN_E_PERMANENT, "out of memory");
        goto done;
    }

    memset(&req, 0, sizeof req);
    req.struct_size = (uint32_t)sizeof req;
    req.method = "GET";
    req.url = url;
    headers[0] = (aiorun_http_header){.name = "Accept", .value = "application/json"};
    headers[1] = (aiorun_http_header){.name = "Authorization", .value = c->auth_header};
    req.headers = headers;
    req.n_headers = c->auth_header != NULL ? 2 : 1;
    req.timeout_ms = 0;                     /* use what is left of the call's deadline */
    memset(&resp, 0, sizeof resp);
    resp.struct_size = (uint32_t)sizeof resp;

    st = api->http(call, &req, &resp);
    if (st != AIORUN_OK)
        goto done;                          /* no response: the host set class and message */

    /* An answer came: its status decides the class (404 not_found, 429 rate_limited, ...). */
    st = api->http_status_class(resp.status);
    if (st == AIORUN_E_NOT_FOUND) {
        st = api->set_error(call, st, "item %.64s not found (HTTP %ld)", id, resp.status);
        goto done;
    }
    if (st == AIORUN_E_RATE_LIMITED && resp.retry_after_ms >= 0) {
        st = api->set_error(call, st, "rate limited (HTTP %ld, retry after %lld ms)",
                            resp.status, (long long)resp.retry_after_ms);
        goto done;
    }
    if (st != AIORUN_OK) {
        st = api->set_error(call, st, "GET item %.64s: HTTP %ld", id, resp.status);
        goto done;
    }

    /* Success: the body is the result. resp.body is borrowed until this callback returns and
     * set_result copies it, so nothing needs freeing. */
    if (resp.body_len == 0)
        st = api->set_result(call, "{}", 2);
    else
        st = api->set_result(call, resp.body, resp.body_len);
    if (st != AIORUN_OK)
        st = api->set_error(call, AIORUN_E_PERMANENT, "GET item %.64s: HTTP %ld with a body "
                            "that is not JSON", id, resp.status);
done:
    free(url);
    free(id);
    return st;
}

/* ---- init and fini -------------------------------------------------------------------- */

static void connector_free(connector *c)
{
    if (c == NULL)
        return;
    if (c->auth_header != NULL) {
        wipe(c->auth_header, strlen(c->auth_header));
        free(c->auth_header);
    }
    free(c->base_url);
    free(c);
}

static aiorun_status connector_init(const aiorun_host_api *api, aiorun_call *call,
                                    const char *config, size_t config_len, void **instance)
{
    connector *c = calloc(1, sizeof *c);
    const char *token = NULL;
    size_t token_len = 0, n;
    aiorun_status st;

    if (c == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "out of memory");
    c->api = api;

    /* Config: the host validated it against config_schema, but say clearly what is wrong
     * anyway: the message is what an operator sees when the connector is refused. */
    if (get_string(config, config_len, "base_url", &c->base_url) != 1) {
        st = api->set_error(call, AIORUN_E_INVALID, "config.base_url is required (a string)");
        goto fail;
    }
    if (strncmp(c->base_url, "http://", 7) != 0 && strncmp(c->base_url, "https://", 8) != 0) {
        st = api->set_error(call, AIORUN_E_INVALID,
                            "config.base_url must start with http:// or https://");
        goto fail;
    }
    n = strlen(c->base_url);
    while (n > 0 && c->base_url[n - 1] == '/')
        c->base_url[--n] = '\0';

    /* Secret: borrowed until fini. Optional here; a real API usually requires one, and then
     * AIORUN_E_AUTH with a message naming the secret (never its value) is the right answer. */
    st = api->secret(call, "api_token", &token, &token_len);
    if (st == AIORUN_OK) {
        c->auth_header = malloc(sizeof "Bearer " + token_len);
        if (c->auth_header == NULL) {
            st = api->set_error(call, AIORUN_E_PERMANENT, "out of memory");
            goto fail;
        }
        memcpy(c->auth_header, "Bearer ", 7);
        memcpy(c->auth_header + 7, token, token_len);
        c->auth_header[7 + token_len] = '\0';
    } else if (st != AIORUN_E_NOT_FOUND) {
        st = api->set_error(call, st, "cannot read secret api_token");
        goto fail;
    }

    api->log(call, AIORUN_LOG_INFO, "template: serving %s (%s)", c->base_url,
             c->auth_header != NULL ? "with api_token" : "without credentials");
    *instance = c;
    return AIORUN_OK;

fail:
    connector_free(c);
    return st;
}

static void connector_fini(void *instance)
{
    connector_free(instance);
}

/* ---- the descriptor ------------------------------------------------------------------- */

static const aiorun_action actions[] = {
    {
        .name = "get_item",
        .summary = "Fetch one item by id",
        .input_schema = "{\"type\":\"object\","
                        "\"properties\":{\"id\":{\"type\":\"string\",\"minLength\":1,"
                        "\"maxLength\":256,\"description\":\"the item's id\"}},"
                        "\"required\":[\"id\"],\"additionalProperties\":false}",
        .effect = AIORUN_EFFECT_READ,                /* a GET changes nothing */
        .idempotency = AIORUN_IDEMPOTENCY_NATIVE,    /* and repeats harmlessly */
        .cacheable = 0,                              /* items change: always ask the API */
        .invoke = get_item,
    },
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,                            /* ABI version and struct sizes */
    .name = "template",                              /* = the file name without .so */
    .version = "0.1.0",
    .description = "Template connector: fetches items from a JSON API",
    .config_schema = "{\"type\":\"object\","
                     "\"properties\":{\"base_url\":{\"type\":\"string\",\"minLength\":8,"
                     "\"maxLength\":2048,\"description\":\"e.g. https://api.example.com\"}},"
                     "\"required\":[\"base_url\"],\"additionalProperties\":false}",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = connector_init,
    .fini = connector_fini,
};

/* The one exported symbol. The host refuses another ABI major by itself, so there is nothing
 * to check here unless the plugin wants to refuse a host (return NULL). */
AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
