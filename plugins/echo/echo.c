/*
 * echo.c - the echo connector: returns its input unchanged, optionally with a configured
 * prefix in front of "message". The smallest useful plugin, built exactly as a third party
 * builds one (only <aiorun/plugin.h> and the C library).
 *
 * Action "echo": input {"message": string, ...}; result: the input object as it came, except
 * that "message" starts with config.prefix when one is set. Without a prefix the input text
 * is returned byte for byte.
 *
 * No JSON library: the input is JSON already validated by the host, so the plugin only needs
 * to find where the "message" string starts and splice the prefix in. The prefix is spliced
 * as it appears in the config text (still JSON-escaped), so escapes and UTF-8 never need to
 * be decoded: two valid JSON string bodies joined are a valid JSON string body.
 */
#include <stdlib.h>
#include <string.h>

#include <aiorun/plugin.h>

typedef struct echo {
    const aiorun_host_api *api;   /* valid until fini */
    char *prefix;                 /* raw JSON string body (escapes kept), owned; NULL: none */
    size_t prefix_len;
} echo;

/* ---- a tiny scanner for JSON text that is known to be valid ---------------------------- */

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is an opening quote: the index just past the closing quote, 0 if the text ends first. */
static size_t string_end(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;                  /* the escaped character cannot close the string */
        else if (s[i] == '"')
            return i + 1;
    }
    return 0;
}

/* s[i] starts a value: the index just past it, 0 when the text ends first. */
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

/* Does the raw body of a JSON string (without quotes) decode to the ASCII name? Keys are
 * usually written plainly, but "\u006dessage" is the same key as "message". */
static int key_is(const char *raw, size_t len, const char *name)
{
    size_t i = 0;

    while (i < len) {
        unsigned c = (unsigned char)raw[i++];
        if (c == '\\') {
            if (i >= len)
                return 0;
            c = (unsigned char)raw[i++];
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                if (i + 4 > len || !hex4(raw + i, &c))
                    return 0;
                i += 4;
                break;
            default:
                return 0;
            }
        }
        if (*name == '\0' || c != (unsigned char)*name)
            return 0;          /* also catches non-ASCII code points: names are ASCII */
        name++;
    }
    return *name == '\0';
}

/* Find the member `name` of the top-level object in s[0..n). 1: found, [*vstart, *vend) is
 * its value (the last one, as jansson keeps the last of duplicate keys); 0: absent;
 * -1: the text is not an object. */
static int find_member(const char *s, size_t n, const char *name, size_t *vstart, size_t *vend)
{
    size_t i = skip_ws(s, n, 0);
    int found = 0;

    if (i >= n || s[i] != '{')
        return -1;
    i = skip_ws(s, n, i + 1);
    if (i < n && s[i] == '}')
        return 0;
    for (;;) {
        size_t kstart = i, kend, vs, ve;
        if (i >= n || s[i] != '"' || (kend = string_end(s, n, i)) == 0)
            return -1;
        i = skip_ws(s, n, kend);
        if (i >= n || s[i] != ':')
            return -1;
        vs = skip_ws(s, n, i + 1);
        ve = value_end(s, n, vs);
        if (ve == 0)
            return -1;
        if (key_is(s + kstart + 1, kend - kstart - 2, name)) {
            *vstart = vs;
            *vend = ve;
            found = 1;
        }
        i = skip_ws(s, n, ve);
        if (i < n && s[i] == ',') {
            i = skip_ws(s, n, i + 1);
            continue;
        }
        if (i < n && s[i] == '}')
            return found;
        return -1;
    }
}

/* ---- the plugin ----------------------------------------------------------------------- */

static aiorun_status echo_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                               size_t config_len, void **instance)
{
    echo *e = calloc(1, sizeof *e);
    size_t vs = 0, ve = 0;
    int found = 0;
    aiorun_status st;

    if (e == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "echo: out of memory");
    e->api = api;
    if (config != NULL && config_len > 0)
        found = find_member(config, config_len, "prefix", &vs, &ve);
    if (found < 0) {
        st = api->set_error(call, AIORUN_E_INVALID, "echo: config is not a JSON object");
        goto fail;
    }
    if (found) {
        if (config[vs] != '"') {
            st = api->set_error(call, AIORUN_E_INVALID, "echo: config.prefix must be a string");
            goto fail;
        }
        e->prefix_len = ve - vs - 2;
        if (e->prefix_len > 0) {
            e->prefix = malloc(e->prefix_len);
            if (e->prefix == NULL) {
                st = api->set_error(call, AIORUN_E_PERMANENT, "echo: out of memory");
                goto fail;
            }
            memcpy(e->prefix, config + vs + 1, e->prefix_len);
        }
    }
    *instance = e;
    return AIORUN_OK;

fail:
    free(e);
    return st;
}

static void echo_fini(void *instance)
{
    echo *e = instance;
    if (e == NULL)
        return;
    free(e->prefix);
    free(e);
}

static aiorun_status echo_invoke(void *instance, aiorun_call *call, const char *input,
                                 size_t input_len)
{
    echo *e = instance;
    size_t vs = 0, ve = 0, at;
    char *out;
    aiorun_status st;
    int found;

    if (e->prefix_len == 0)
        return e->api->set_result(call, input, input_len);

    found = find_member(input, input_len, "message", &vs, &ve);
    if (found <= 0 || input[vs] != '"')
        return e->api->set_error(call, AIORUN_E_INVALID, "echo: input.message must be a string");

    /* input up to and including the opening quote of message, the prefix, then the rest */
    at = vs + 1;
    out = malloc(input_len + e->prefix_len);
    if (out == NULL)
        return e->api->set_error(call, AIORUN_E_PERMANENT, "echo: out of memory");
    memcpy(out, input, at);
    memcpy(out + at, e->prefix, e->prefix_len);
    memcpy(out + at + e->prefix_len, input + at, input_len - at);
    st = e->api->set_result(call, out, input_len + e->prefix_len);
    free(out);
    return st;
}

static const aiorun_action echo_actions[] = {
    {
        .name = "echo",
        .summary = "Return the input unchanged",
        .input_schema = "{\"type\":\"object\","
                        "\"properties\":{\"message\":{\"type\":\"string\",\"maxLength\":65536}},"
                        "\"required\":[\"message\"]}",
        .effect = AIORUN_EFFECT_READ,
        .idempotency = AIORUN_IDEMPOTENCY_NATIVE,   /* a read repeats harmlessly */
        .cacheable = 1,
        .invoke = echo_invoke,
    },
};

static const aiorun_plugin echo_plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "echo",
    .version = "1.0.0",
    .description = "Returns its input, optionally with a prefix on the message",
    .config_schema = "{\"type\":\"object\","
                     "\"properties\":{\"prefix\":{\"type\":\"string\"}},"
                     "\"additionalProperties\":false}",
    .actions = echo_actions,
    .n_actions = sizeof echo_actions / sizeof echo_actions[0],
    .init = echo_init,
    .fini = echo_fini,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;   /* the host refuses a different major itself */
    (void)host_abi_minor;
    return &echo_plugin;
}
