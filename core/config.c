/* config.c - the daemon's JSON configuration file (see config.h).
 *
 * Everything is checked before anything is used: an unknown key, a wrong type or a value out
 * of range is refused with the key path, so a typo never silently falls back to a default. */
#include "config.h"

#include "auth.h"
#include "autonomy.h"
#include "schema.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_LISTEN_HOST "127.0.0.1"
#define DEFAULT_LISTEN_PORT 8470
#define DEFAULT_MAX_BODY_BYTES ((size_t)1 << 20)
#define MAX_CONFIG_FILE_BYTES ((size_t)16 << 20)

static const char *const top_keys[] = {
    "listen", "data_dir", "plugin_dir", "policy_dir", "map_size_mb", "max_body_bytes",
    "decision_workers", "policy", "connectors", "tls", "auth_key_file", "max_inflight",
    "max_queue_depth", "aging_ms", "autonomy", "approvers", "approval_expiry_s", "policy_watch",
    "vault_key_file", "vault_passphrase_file", "runtime_dir", "drift", "log_level", "log_format", "retention",
    "cpu_scheduling", NULL
};
static const char *const tls_keys[] = { "cert", "key", NULL };
static const char *const policy_keys[] = { "memory_kb", "instructions", "timeout_ms",
                                           "default_read", "default_write",
                                           "default_irreversible", NULL };
static const char *const connector_keys[] = { "plugin", "config", "processes", "timeout_ms",
                                              "deadline_ms", "retry", "idempotency", "secrets",
                                              "rate_limit", "concurrency", "pipeline", "breaker",
                                              "allow_ports", "sandbox", "uid", NULL };
static const char *const sandbox_keys[] = { "rlimits", "uid", "landlock", "seccomp", NULL };
static const char *const rate_keys[] = { "per_second", "burst", NULL };
static const char *const breaker_keys[] = { "window", "min_calls", "failure_ratio", "consecutive",
                                            "open_s", "half_open_calls", NULL };
static const char *const retention_keys[] = { "actions_days", "idempotency_days", "audit_bodies_days",
                                              "audit_entries_days", "interval_s", NULL };
static const char *const retry_keys[] = { "max_attempts", "initial_ms", "max_ms", "multiplier", NULL };

/* ---- errors ------------------------------------------------------------------------------ */

static int invalid(ar_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int invalid(ar_error *err, const char *fmt, ...)
{
    char msg[sizeof err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ar_error_set(err, AR_E_INVALID, "invalid_config", "%s", msg);
}

static int nomem(ar_error *err)
{
    return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "config: out of memory");
}

/* s as a quoted string for a message: quotes, backslashes and control characters escaped,
 * cut with "..." past the buffer. */
static const char *quote(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    out[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\')
            snprintf(esc, sizeof esc, "\\%c", *p);
        else if (*p < 0x20)
            snprintf(esc, sizeof esc, "\\u%04x", *p);
        else
            snprintf(esc, sizeof esc, "%c", *p);
        size_t len = strlen(esc);
        if (n + len + 5 > cap) {
            memcpy(out + n, "...", 3);
            n += 3;
            break;
        }
        memcpy(out + n, esc, len);
        n += len;
    }
    out[n++] = '"';
    out[n] = '\0';
    return out;
}


/* Refuse any key of obj not in known; where names the object ("config", "policy"). */
static int check_keys(const json_t *obj, const char *const *known, const char *where,
                      ar_error *err)
{
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        bool found = false;
        for (const char *const *k = known; *k; k++)
            if (strcmp(key, *k) == 0)
                found = true;
        if (found)
            continue;
        char list[400] = "", q[96];
        size_t n = 0;
        for (const char *const *k = known; *k && n < sizeof list; k++)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", k == known ? "" : ", ", *k);
        return invalid(err, "%s: unknown key %s (known keys: %s)", where,
                       quote(q, sizeof q, key), list);
    }
    return AR_OK;
}

/* ---- typed fields ------------------------------------------------------------------------ */

/* An integer in [lo, hi]; *out untouched when the key is absent. */
static int get_int(const json_t *obj, const char *key, const char *path, long long lo,
                   long long hi, long long *out, ar_error *err)
{
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return AR_OK;
    if (!json_is_integer(v))
        return invalid(err, "%s: expected integer %lld..%lld, got %s", path, lo, hi, schema_type_name(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return invalid(err, "%s: expected integer %lld..%lld, got %lld", path, lo, hi, x);
    *out = x;
    return AR_OK;
}

/* A non-empty string; *out untouched (and borrowed from obj) when the key is absent. */
static int get_string(const json_t *obj, const char *key, const char *path, const char **out,
                      ar_error *err)
{
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return AR_OK;
    if (!json_is_string(v))
        return invalid(err, "%s: expected string, got %s", path, schema_type_name(v));
    if (json_string_length(v) == 0)
        return invalid(err, "%s: must not be empty", path);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return invalid(err, "%s: must not contain a NUL character", path);
    *out = json_string_value(v);
    return AR_OK;
}

/* ---- paths ------------------------------------------------------------------------------- */

/* Join rel onto base (unless rel is absolute) and drop empty and "." components. ".." is kept:
 * resolving it by hand would be wrong across symlinks, and directories may not exist yet.
 * Returns a malloc'd string or NULL when out of memory. */
static char *join_path(const char *base, const char *rel)
{
    size_t blen = rel[0] == '/' ? 0 : strlen(base);
    char *joined = malloc(blen + strlen(rel) + 2);
    if (!joined)
        return NULL;
    snprintf(joined, blen + strlen(rel) + 2, "%.*s/%s", (int)blen, base, rel);

    /* Normalize in place: the result is never longer than the input. */
    char *out = joined;
    size_t n = 0;
    const char *p = joined;
    while (*p) {
        while (*p == '/')
            p++;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
            p += len;
            continue;
        }
        out[n++] = '/';
        memmove(out + n, p, len);
        n += len;
        p += len;
    }
    if (n == 0)
        out[n++] = '/';
    out[n] = '\0';
    return joined;
}

/* The current directory, malloc'd; NULL with err set on failure. */
static char *current_dir(ar_error *err)
{
    char *cwd = getcwd(NULL, 0);
    if (!cwd)
        ar_error_set(err, AR_E_IO, "invalid_config", "config: cannot read the current directory: %s",
                     strerror(errno));
    return cwd;
}

/* ---- listen ------------------------------------------------------------------------------ */

static bool is_loopback(const char *host)
{
    if (strcmp(host, "localhost") == 0)
        return true;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return memcmp(&a6, &in6addr_loopback, sizeof a6) == 0;
    return false;
}

static int parse_listen(const char *text, config *cfg, ar_error *err)
{
    char q[160];
    const char *host, *port;
    size_t host_len;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return invalid(err, "listen: expected \"host:port\" with an IPv6 host in brackets "
                           "(\"[::1]:8470\"), got %s", quote(q, sizeof q, text));
        host = text + 1;
        host_len = (size_t)(close - host);
        port = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon || memchr(text, ':', (size_t)(colon - text)))
            return invalid(err, "listen: expected \"host:port\" (an IPv6 host in brackets, "
                           "\"[::1]:8470\"), got %s", quote(q, sizeof q, text));
        host = text;
        host_len = (size_t)(colon - text);
        port = colon + 1;
    }

    size_t digits = strspn(port, "0123456789");
    if (digits == 0 || port[digits] != '\0' || digits > 5 || atoi(port) > 65535)
        return invalid(err, "listen: port must be an integer 0..65535, got %s",
                       quote(q, sizeof q, port));
    if (host_len == 0)
        return invalid(err, "listen: missing host in %s (use 127.0.0.1, [::1] or localhost)",
                       quote(q, sizeof q, text));

    char *h = strndup(host, host_len);
    if (!h)
        return nomem(err);
    /* An IPv6 address must come in brackets and only an IPv6 address may. */
    struct in6_addr a6;
    bool is_v6 = inet_pton(AF_INET6, h, &a6) == 1;
    if (is_v6 != (text[0] == '[')) {
        invalid(err, "listen: %s is not a valid host (an IPv6 address goes in brackets, "
                "\"[::1]:8470\", nothing else does)", quote(q, sizeof q, h));
        free(h);
        return AR_E_INVALID;
    }
    free(cfg->listen_host);
    cfg->listen_host = h;
    cfg->listen_port = atoi(port);
    return AR_OK;
}

/* ---- sections ---------------------------------------------------------------------------- */

/* policy.<key>: the verdict when every policy abstains, stored as policy.h wants it (verdict
 * + 1); *out untouched (0: the built-in default) when the key is absent. */
static int get_default_verdict(const json_t *obj, const char *key, int *out, ar_error *err)
{
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return AR_OK;
    int verdict = json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v)
                      ? policy_verdict_from_name(json_string_value(v))
                      : -1;
    if (verdict < 0) {
        char q[96];
        if (json_is_string(v))
            return invalid(err, "policy.%s: expected \"allow\", \"deny\", \"approve\" or "
                           "\"suggest\", got %s", key, quote(q, sizeof q, json_string_value(v)));
        return invalid(err, "policy.%s: expected \"allow\", \"deny\", \"approve\" or "
                       "\"suggest\", got %s", key, schema_type_name(v));
    }
    *out = verdict + 1;
    return AR_OK;
}

static int parse_policy(const json_t *v, policy_limits *out, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "policy: expected object, got %s", schema_type_name(v));
    int rc = check_keys(v, policy_keys, "policy", err);
    if (rc != AR_OK)
        return rc;
    /* Absent limits stay 0, which policy.h defines as its defaults. */
    long long memory_kb = 0, instructions = 0, timeout_ms = 0;
    if ((rc = get_int(v, "memory_kb", "policy.memory_kb", 64, 1048576, &memory_kb, err)) ||
        (rc = get_int(v, "instructions", "policy.instructions", 1000, 1000000000,
                      &instructions, err)) ||
        (rc = get_int(v, "timeout_ms", "policy.timeout_ms", 1, 10000, &timeout_ms, err)))
        return rc;
    out->memory_bytes = (size_t)memory_kb * 1024;
    out->instructions = (uint64_t)instructions;
    out->timeout_ms = (int)timeout_ms;
    if ((rc = get_default_verdict(v, "default_read", &out->default_read, err)) ||
        (rc = get_default_verdict(v, "default_write", &out->default_write, err)) ||
        (rc = get_default_verdict(v, "default_irreversible", &out->default_irreversible, err)))
        return rc;
    return AR_OK;
}

static const char *const drift_keys[] = { "recent", "baseline", "min_samples", "error_rate_increase",
                                          "confidence_drop", "lower_autonomy", NULL };

/* drift: the windows and thresholds of drift detection (drift.h), and whether a detection
 * lowers the action's autonomy. */
static int parse_drift(const json_t *v, config *cfg, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "drift: expected object, got %s", schema_type_name(v));
    int rc = check_keys(v, drift_keys, "drift", err);
    if (rc != AR_OK)
        return rc;
    long long recent = 0, baseline = 0, min_samples = 0;
    if ((rc = get_int(v, "recent", "drift.recent", 5, 100000, &recent, err)) ||
        (rc = get_int(v, "baseline", "drift.baseline", 5, 1000000, &baseline, err)) ||
        (rc = get_int(v, "min_samples", "drift.min_samples", 1, 100000, &min_samples, err)))
        return rc;
    cfg->drift.recent = (int)recent;
    cfg->drift.baseline = (int)baseline;
    cfg->drift.min_samples = (int)min_samples;
    static const char *const ratios[] = {"error_rate_increase", "confidence_drop"};
    double *outs[] = {&cfg->drift.error_rate_increase, &cfg->drift.confidence_drop};
    for (size_t i = 0; i < 2; i++) {
        const json_t *r = json_object_get(v, ratios[i]);
        if (!r)
            continue;
        if (!json_is_number(r) || json_number_value(r) <= 0 || json_number_value(r) > 1)
            return invalid(err, "drift.%s: expected a number in (0, 1]", ratios[i]);
        *outs[i] = json_number_value(r);
    }
    const json_t *lower = json_object_get(v, "lower_autonomy");
    if (lower && !json_is_boolean(lower))
        return invalid(err, "drift.lower_autonomy: expected true or false, got %s", schema_type_name(lower));
    cfg->drift_lowers_autonomy = json_is_true(lower);
    return AR_OK;
}

/* retention: {actions_days, idempotency_days, audit_bodies_days, audit_entries_days,
 * interval_s}. The days may be fractions (a test compacts after seconds); the stubs must
 * outlive the full records, and the audit entries their bodies. audit_entries_days not given
 * follows a longer audit_bodies_days (a config written before it existed still loads). */
static int parse_retention(const json_t *v, config_retention *out, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "retention: expected object, got %s", schema_type_name(v));
    int rc = check_keys(v, retention_keys, "retention", err);
    if (rc != AR_OK)
        return rc;
    static const char *const days[] = {"actions_days", "idempotency_days", "audit_bodies_days",
                                       "audit_entries_days"};
    double *outs[] = {&out->actions_days, &out->idempotency_days, &out->audit_bodies_days,
                      &out->audit_entries_days};
    for (size_t i = 0; i < sizeof days / sizeof days[0]; i++) {
        const json_t *d = json_object_get(v, days[i]);
        if (!d)
            continue;
        if (!json_is_number(d))
            return invalid(err, "retention.%s: expected a number of days above 0 (at most 36500), got %s",
                           days[i], schema_type_name(d));
        if (!(json_number_value(d) > 0) || json_number_value(d) > 36500)
            return invalid(err, "retention.%s: expected a number of days above 0 (at most 36500), got %g",
                           days[i], json_number_value(d));
        *outs[i] = json_number_value(d);
    }
    long long interval = out->interval_s;
    if ((rc = get_int(v, "interval_s", "retention.interval_s", 10, 7LL * 86400, &interval, err)) != AR_OK)
        return rc;
    out->interval_s = (int)interval;
    if (out->idempotency_days < out->actions_days)
        return invalid(err, "retention: idempotency_days (%g) is below actions_days (%g): the idempotency "
                       "keys must outlive the actions they answer for", out->idempotency_days, out->actions_days);
    if (!json_object_get(v, "audit_entries_days") && out->audit_entries_days < out->audit_bodies_days)
        out->audit_entries_days = out->audit_bodies_days;
    if (out->audit_entries_days < out->audit_bodies_days)
        return invalid(err, "retention: audit_entries_days (%g) is below audit_bodies_days (%g): the audit "
                       "entries must outlive their bodies", out->audit_entries_days, out->audit_bodies_days);
    return AR_OK;
}

static bool valid_connector_name(const char *name)
{
    size_t len = strlen(name);
    return len >= 1 && len <= 64 && strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_-") == len;
}

/* retry: {max_attempts, initial_ms, max_ms, multiplier}; absent keys keep their defaults. */
static int parse_retry(const char *name, const json_t *v, config_retry *out, ar_error *err)
{
    char path[200];
    snprintf(path, sizeof path, "connectors.%s.retry", name);
    if (!json_is_object(v))
        return invalid(err, "%s: expected object, got %s", path, schema_type_name(v));
    int rc = check_keys(v, retry_keys, path, err);
    if (rc != AR_OK)
        return rc;
    long long attempts = out->max_attempts, initial = out->initial_ms, max = out->max_ms;
    snprintf(path, sizeof path, "connectors.%s.retry.max_attempts", name);
    if ((rc = get_int(v, "max_attempts", path, 1, 100, &attempts, err)) != AR_OK)
        return rc;
    snprintf(path, sizeof path, "connectors.%s.retry.initial_ms", name);
    if ((rc = get_int(v, "initial_ms", path, 1, 3600000, &initial, err)) != AR_OK)
        return rc;
    snprintf(path, sizeof path, "connectors.%s.retry.max_ms", name);
    if ((rc = get_int(v, "max_ms", path, 1, 86400000, &max, err)) != AR_OK)
        return rc;
    const json_t *m = json_object_get(v, "multiplier");
    if (m && (!json_is_number(m) || json_number_value(m) < 1.0 || json_number_value(m) > 10.0))
        return invalid(err, "connectors.%s.retry.multiplier: expected a number from 1 to 10", name);
    if (max < initial)
        return invalid(err, "connectors.%s.retry: max_ms (%lld) is below initial_ms (%lld)", name, max, initial);
    out->max_attempts = (int)attempts;
    out->initial_ms = (int)initial;
    out->max_ms = (int)max;
    if (m)
        out->multiplier = json_number_value(m);
    return AR_OK;
}

/* rate_limit: {per_second, burst}: a token bucket. */
static int parse_rate(const char *name, const json_t *v, config_connector *c, ar_error *err)
{
    char path[200];
    snprintf(path, sizeof path, "connectors.%s.rate_limit", name);
    if (!json_is_object(v))
        return invalid(err, "%s: expected object {\"per_second\", \"burst\"}, got %s", path, schema_type_name(v));
    int rc = check_keys(v, rate_keys, path, err);
    if (rc != AR_OK)
        return rc;
    const json_t *ps = json_object_get(v, "per_second");
    if (!json_is_number(ps) || json_number_value(ps) <= 0 || json_number_value(ps) > 1e6)
        return invalid(err, "%s.per_second: required, a number above 0 (at most 1000000)", path);
    long long burst = 0;
    snprintf(path, sizeof path, "connectors.%s.rate_limit.burst", name);
    if ((rc = get_int(v, "burst", path, 1, 1000000, &burst, err)) != AR_OK)
        return rc;
    c->rate_per_second = json_number_value(ps);
    c->rate_burst = burst ? (int)burst : (int)(c->rate_per_second < 1 ? 1 : c->rate_per_second);
    return AR_OK;
}

/* breaker: when to stop calling an API that is failing, and how to try it again. */
static int parse_breaker(const char *name, const json_t *v, config_breaker *b, ar_error *err)
{
    char path[200];
    snprintf(path, sizeof path, "connectors.%s.breaker", name);
    if (!json_is_object(v))
        return invalid(err, "%s: expected object, got %s", path, schema_type_name(v));
    int rc = check_keys(v, breaker_keys, path, err);
    if (rc != AR_OK)
        return rc;
    long long window = b->window, min_calls = b->min_calls, consecutive = b->consecutive,
              open_s = b->open_s, trials = b->half_open_calls;
    struct { const char *key; long long lo, hi; long long *out; } ints[] = {
        {"window", 2, 10000, &window}, {"min_calls", 1, 10000, &min_calls},
        {"consecutive", 0, 10000, &consecutive}, {"open_s", 1, 86400, &open_s},
        {"half_open_calls", 1, 100, &trials}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        snprintf(path, sizeof path, "connectors.%s.breaker.%s", name, ints[i].key);
        if ((rc = get_int(v, ints[i].key, path, ints[i].lo, ints[i].hi, ints[i].out, err)) != AR_OK)
            return rc;
    }
    const json_t *ratio = json_object_get(v, "failure_ratio");
    if (ratio && (!json_is_number(ratio) || json_number_value(ratio) <= 0 || json_number_value(ratio) > 1))
        return invalid(err, "connectors.%s.breaker.failure_ratio: expected a number in (0, 1]", name);
    if (min_calls > window)
        return invalid(err, "connectors.%s.breaker: min_calls (%lld) exceeds window (%lld)", name, min_calls, window);
    b->window = (int)window;
    b->min_calls = (int)min_calls;
    b->consecutive = (int)consecutive;
    b->open_s = (int)open_s;
    b->half_open_calls = (int)trials;
    if (ratio)
        b->failure_ratio = json_number_value(ratio);
    return AR_OK;
}

/* An object whose every value passes check (a string, or one of a fixed set). */
/* "secrets": ["api_key", ...]: names only. The values live in the vault (aioctl secrets set). */
static int parse_secret_names(const char *name, const json_t *v, config_connector *c, ar_error *err)
{
    if (json_is_object(v))
        return invalid(err, "connectors.%s.secrets: secret values no longer go in the config; list the "
                       "names here ([\"api_key\"]) and store each value with: aioctl secrets set %s NAME",
                       name, name);
    if (!json_is_array(v))
        return invalid(err, "connectors.%s.secrets: expected an array of secret names, got %s", name,
                       schema_type_name(v));
    size_t n = json_array_size(v);
    if (n > 64)
        return invalid(err, "connectors.%s.secrets: at most 64 names", name);
    c->secrets = calloc(n ? n : 1, sizeof *c->secrets);
    if (!c->secrets)
        return nomem(err);
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(v, i));
        if (!s || !*s || strlen(s) > 127)
            return invalid(err, "connectors.%s.secrets[%zu]: expected a name of 1 to 127 characters", name, i);
        for (size_t k = 0; k < c->n_secrets; k++)
            if (strcmp(c->secrets[k], s) == 0)
                return invalid(err, "connectors.%s.secrets: \"%s\" is listed twice", name, s);
        if (!(c->secrets[c->n_secrets] = strdup(s)))
            return nomem(err);
        c->n_secrets++;
    }
    return AR_OK;
}

static int parse_ports(const char *name, const json_t *v, config_connector *c, ar_error *err)
{
    if (!json_is_array(v))
        return invalid(err, "connectors.%s.allow_ports: expected an array of TCP ports, got %s", name,
                       schema_type_name(v));
    size_t n = json_array_size(v);
    if (n > 64)
        return invalid(err, "connectors.%s.allow_ports: at most 64 ports", name);
    int *ports = calloc(n ? n : 1, sizeof *ports);
    if (!ports)
        return nomem(err);
    for (size_t i = 0; i < n; i++) {
        const json_t *p = json_array_get(v, i);
        if (!json_is_integer(p) || json_integer_value(p) < 1 || json_integer_value(p) > 65535) {
            free(ports);
            return invalid(err, "connectors.%s.allow_ports[%zu]: expected a port 1..65535", name, i);
        }
        ports[i] = (int)json_integer_value(p);
    }
    free(c->allow_ports);
    c->allow_ports = ports;
    c->n_allow_ports = n;
    return AR_OK;
}

static int parse_sandbox(const char *name, const json_t *v, config_connector *c, ar_error *err)
{
    char path[160];
    snprintf(path, sizeof path, "connectors.%s.sandbox", name);
    if (!json_is_object(v))
        return invalid(err, "%s: expected object, got %s", path, schema_type_name(v));
    int rc = check_keys(v, sandbox_keys, path, err);
    if (rc != AR_OK)
        return rc;
    int *layers[] = {&c->sandbox_rlimits, &c->sandbox_uid, &c->sandbox_landlock, &c->sandbox_seccomp};
    for (size_t i = 0; i < 4; i++) {
        const json_t *b = json_object_get(v, sandbox_keys[i]);
        if (!b)
            continue;
        if (!json_is_boolean(b))
            return invalid(err, "%s.%s: expected true or false, got %s", path, sandbox_keys[i], schema_type_name(b));
        *layers[i] = json_is_true(b);
    }
    return AR_OK;
}

static int parse_string_map(const char *name, const char *key, const json_t *v,
                            const char *const *allowed, json_t **out, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "connectors.%s.%s: expected object, got %s", name, key, schema_type_name(v));
    const char *k;
    json_t *val;
    json_object_foreach((json_t *)v, k, val) {
        const char *sv = json_string_value(val);
        if (!sv)
            return invalid(err, "connectors.%s.%s.%s: expected string, got %s", name, key, k, schema_type_name(val));
        int ok = !allowed;
        for (size_t i = 0; allowed && allowed[i]; i++)
            ok |= strcmp(allowed[i], sv) == 0;
        if (!ok)
            return invalid(err, "connectors.%s.%s.%s: expected \"native\", \"lookup\" or \"none\", got \"%s\"",
                           name, key, k, sv);
    }
    *out = json_deep_copy(v);
    return *out ? AR_OK : nomem(err);
}

static int parse_connector(const char *name, const json_t *v, const char *base_dir,
                           const char *plugin_dir, config_connector *c, ar_error *err)
{
    char path[160];
    if (!json_is_object(v))
        return invalid(err, "connectors.%s: expected object, got %s", name, schema_type_name(v));
    snprintf(path, sizeof path, "connectors.%s", name);
    int rc = check_keys(v, connector_keys, path, err);
    if (rc != AR_OK)
        return rc;

    const char *plugin = NULL;
    snprintf(path, sizeof path, "connectors.%s.plugin", name);
    if ((rc = get_string(v, "plugin", path, &plugin, err)) != AR_OK)
        return rc;
    if (!plugin)
        return invalid(err, "%s: required (a plugin name such as \"echo\" or a path to a .so)",
                       path);

    const json_t *conf = json_object_get(v, "config");
    if (conf && !json_is_object(conf))
        return invalid(err, "connectors.%s.config: expected object, got %s", name, schema_type_name(conf));

    long long processes = 2, timeout_ms = 10000;
    snprintf(path, sizeof path, "connectors.%s.processes", name);
    if ((rc = get_int(v, "processes", path, 1, 64, &processes, err)) != AR_OK)
        return rc;
    snprintf(path, sizeof path, "connectors.%s.timeout_ms", name);
    if ((rc = get_int(v, "timeout_ms", path, 1, 3600000, &timeout_ms, err)) != AR_OK)
        return rc;

    long long deadline_ms = 300000;
    snprintf(path, sizeof path, "connectors.%s.deadline_ms", name);
    if ((rc = get_int(v, "deadline_ms", path, 1, 7LL * 86400000, &deadline_ms, err)) != AR_OK)
        return rc;
    c->deadline_ms = deadline_ms;
    c->retry = (config_retry){.max_attempts = 5, .initial_ms = 200, .max_ms = 30000, .multiplier = 2.0};
    const json_t *sub;
    static const char *const modes[] = {"native", "lookup", "none", NULL};
    if ((sub = json_object_get(v, "retry")) && (rc = parse_retry(name, sub, &c->retry, err)) != AR_OK)
        return rc;
    if ((sub = json_object_get(v, "idempotency")) &&
        (rc = parse_string_map(name, "idempotency", sub, modes, &c->idempotency, err)) != AR_OK)
        return rc;
    if ((sub = json_object_get(v, "secrets")) && (rc = parse_secret_names(name, sub, c, err)) != AR_OK)
        return rc;
    if ((sub = json_object_get(v, "allow_ports"))) {
        if ((rc = parse_ports(name, sub, c, err)) != AR_OK)
            return rc;
    } else {
        if (!(c->allow_ports = malloc(sizeof *c->allow_ports)))
            return nomem(err);
        c->allow_ports[0] = 443; /* HTTPS only, unless the connector says otherwise */
        c->n_allow_ports = 1;
    }
    c->sandbox_rlimits = c->sandbox_uid = c->sandbox_landlock = c->sandbox_seccomp = 1;
    if ((sub = json_object_get(v, "sandbox")) && (rc = parse_sandbox(name, sub, c, err)) != AR_OK)
        return rc;
    long long uid = 0;
    snprintf(path, sizeof path, "connectors.%s.uid", name);
    if ((rc = get_int(v, "uid", path, 1, 4000000000LL, &uid, err)) != AR_OK)
        return rc;
    c->uid = (unsigned)uid; /* 0: assigned below from the connector's index */
    if ((sub = json_object_get(v, "rate_limit")) && (rc = parse_rate(name, sub, c, err)) != AR_OK)
        return rc;
    c->breaker = (config_breaker){.window = 20, .min_calls = 10, .failure_ratio = 0.5,
                                  .consecutive = 5, .open_s = 30, .half_open_calls = 1};
    if ((sub = json_object_get(v, "breaker")) && (rc = parse_breaker(name, sub, &c->breaker, err)) != AR_OK)
        return rc;
    long long concurrency = processes;
    snprintf(path, sizeof path, "connectors.%s.concurrency", name);
    if ((rc = get_int(v, "concurrency", path, 1, 4096, &concurrency, err)) != AR_OK)
        return rc;
    c->concurrency = (int)concurrency;
    long long pipeline = 0;
    snprintf(path, sizeof path, "connectors.%s.pipeline", name);
    if (json_object_get(v, "pipeline") && (rc = get_int(v, "pipeline", path, 1, 4096, &pipeline, err)) != AR_OK)
        return rc;
    c->pipeline = (int)pipeline;

    c->name = strdup(name);
    c->plugin = strdup(plugin);
    if (strchr(plugin, '/')) {
        c->plugin_path = join_path(base_dir, plugin);
    } else {
        size_t len = strlen(plugin_dir) + strlen(plugin) + 5;
        c->plugin_path = malloc(len);
        if (c->plugin_path)
            snprintf(c->plugin_path, len, "%s/%s.so", plugin_dir, plugin);
    }
    c->config = conf ? json_deep_copy(conf) : json_object();
    c->processes = (int)processes;
    c->timeout_ms = (int)timeout_ms;
    if (!c->name || !c->plugin || !c->plugin_path || !c->config)
        return nomem(err);
    return AR_OK;
}

static int parse_connectors(const json_t *v, const char *base_dir, config *cfg, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "connectors: expected object, got %s", schema_type_name(v));
    size_t n = json_object_size(v);
    if (n == 0)
        return AR_OK;
    cfg->connectors = calloc(n, sizeof *cfg->connectors);
    if (!cfg->connectors)
        return nomem(err);

    const char *name;
    const json_t *conn;
    json_object_foreach((json_t *)v, name, conn) {
        char q[96];
        if (!valid_connector_name(name))
            return invalid(err, "connectors: invalid name %s (use 1 to 64 characters of a-z, "
                           "0-9, _ and -)", quote(q, sizeof q, name));
        /* Counted before parsing so config_free also frees a half-filled entry. */
        config_connector *c = &cfg->connectors[cfg->n_connectors++];
        int rc = parse_connector(name, conn, base_dir, cfg->plugin_dir, c, err);
        if (rc != AR_OK)
            return rc;
        if (!c->uid)
            c->uid = 70000u + (unsigned)(cfg->n_connectors - 1);
    }
    /* Each connector's own uid keeps its processes from reading or signalling another's. */
    for (size_t i = 0; i < cfg->n_connectors; i++)
        for (size_t k = i + 1; k < cfg->n_connectors; k++)
            if (cfg->connectors[i].uid == cfg->connectors[k].uid)
                return invalid(err, "connectors.%s.uid: %u is also the uid of connector %s; give each "
                               "connector its own", cfg->connectors[k].name, cfg->connectors[k].uid,
                               cfg->connectors[i].name);
    return AR_OK;
}

/* A directory key: the default when absent, resolved against base_dir. */
static int parse_dir(const json_t *root, const char *key, const char *def, const char *base_dir,
                     char **out, ar_error *err)
{
    const char *value = def;
    int rc = get_string(root, key, key, &value, err);
    if (rc != AR_OK)
        return rc;
    *out = join_path(base_dir, value);
    return *out ? AR_OK : nomem(err);
}

/* tls: {"cert": path, "key": path}, both required, resolved against base_dir. The files are
 * read when the daemon starts listening, so a bad file is reported there. */
static int parse_tls(const json_t *v, const char *base_dir, config *cfg, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "tls: expected object {\"cert\": path, \"key\": path}, got %s", schema_type_name(v));
    int rc = check_keys(v, tls_keys, "tls", err);
    if (rc != AR_OK)
        return rc;
    const char *cert = NULL, *key = NULL;
    if ((rc = get_string(v, "cert", "tls.cert", &cert, err)) ||
        (rc = get_string(v, "key", "tls.key", &key, err)))
        return rc;
    if (!cert || !key)
        return invalid(err, "tls.%s: required (a PEM file path)", cert ? "key" : "cert");
    cfg->tls_cert = join_path(base_dir, cert);
    cfg->tls_key = join_path(base_dir, key);
    return cfg->tls_cert && cfg->tls_key ? AR_OK : nomem(err);
}

/* Tokens must never cross a network in clear: beyond loopback, TLS is required. */
static int check_listen_exposure(config *cfg, ar_error *err)
{
    cfg->listen_loopback = is_loopback(cfg->listen_host);
    if (cfg->listen_loopback || cfg->tls_cert)
        return AR_OK;
    char q[160];
    const char *h = cfg->listen_host;
    bool plain = strspn(h, "0123456789abcdefABCDEF.:-_%"
                           "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ") == strlen(h);
    return invalid(err, "listen: %s is not a loopback address; listening beyond loopback needs "
                   "TLS (\"tls\": {\"cert\": ..., \"key\": ...}) so that tokens never cross a network "
                   "in clear", plain ? h : quote(q, sizeof q, h));
}

/* autonomy: {"connector.action" | "connector.*" | "*": "auto" | "semi" | "suggest"} */
static int parse_autonomy(const json_t *v, config *cfg, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "autonomy: expected object {\"connector.action\": \"auto\"|\"semi\"|\"suggest\"}, got %s",
                       schema_type_name(v));
    const char *pattern;
    json_t *level;
    json_object_foreach((json_t *)v, pattern, level) {
        if (!autonomy_valid_pattern(pattern))
            return invalid(err, "autonomy: pattern \"%s\" must be \"connector.action\", \"connector.*\" or \"*\"", pattern);
        if (!autonomy_valid_level(json_string_value(level)))
            return invalid(err, "autonomy.%s: expected \"auto\", \"semi\" or \"suggest\"", pattern);
    }
    cfg->autonomy = json_deep_copy(v);
    return cfg->autonomy ? AR_OK : nomem(err);
}

/* approvers: {"role": ["approver", "token:alice", ...]} */
static int parse_approvers(const json_t *v, config *cfg, ar_error *err)
{
    if (!json_is_object(v))
        return invalid(err, "approvers: expected object {\"role\": [\"approver\", \"token:NAME\"]}, got %s", schema_type_name(v));
    const char *role;
    json_t *list;
    json_object_foreach((json_t *)v, role, list) {
        if (!json_is_array(list) || json_array_size(list) == 0)
            return invalid(err, "approvers.%s: expected a non-empty array of token roles or \"token:NAME\"", role);
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e) {
            const char *who = json_string_value(e);
            unsigned bit;
            if (!who || (strncmp(who, "token:", 6) != 0 && auth_roles_parse(who, &bit, NULL) != AR_OK) ||
                (strncmp(who, "token:", 6) == 0 && !who[6]))
                return invalid(err, "approvers.%s[%zu]: expected a token role (submitter, approver, operator, "
                               "reader) or \"token:NAME\"", role, i);
        }
    }
    cfg->approvers = json_deep_copy(v);
    return cfg->approvers ? AR_OK : nomem(err);
}

/* cpu_scheduling: "batch" (default) | "normal" (config.h). */
static int parse_cpu_scheduling(const json_t *root, config *cfg, ar_error *err)
{
    const char *policy = NULL;
    int rc = get_string(root, "cpu_scheduling", "cpu_scheduling", &policy, err);
    if (rc != AR_OK)
        return rc;
    if (!policy || strcmp(policy, "batch") == 0) {
        cfg->cpu_batch = 1;
        return AR_OK;
    }
    if (strcmp(policy, "normal") == 0) {
        cfg->cpu_batch = 0;
        return AR_OK;
    }
    char q[80];
    return invalid(err, "cpu_scheduling: expected \"batch\" or \"normal\", got %s", quote(q, sizeof q, policy));
}

/* log_level: "debug" | "info" | "warn" | "error"; log_format: "json" | "text". */
static int parse_logging(const json_t *root, config *cfg, ar_error *err)
{
    const char *level = "info", *format = "json";
    char q[96];
    int rc;
    if ((rc = get_string(root, "log_level", "log_level", &level, err)) != AR_OK ||
        (rc = get_string(root, "log_format", "log_format", &format, err)) != AR_OK)
        return rc;
    if ((cfg->log_level = ar_log_level_from_name(level)) < 0)
        return invalid(err, "log_level: expected \"debug\", \"info\", \"warn\" or \"error\", got %s",
                       quote(q, sizeof q, level));
    if (strcmp(format, "json") != 0 && strcmp(format, "text") != 0)
        return invalid(err, "log_format: expected \"json\" or \"text\", got %s", quote(q, sizeof q, format));
    cfg->log_json = strcmp(format, "json") == 0;
    return AR_OK;
}

static int parse_root(const json_t *root, const char *base_dir, config *cfg, ar_error *err)
{
    if (!json_is_object(root))
        return invalid(err, "config: the top level must be a JSON object, got %s", schema_type_name(root));
    int rc = check_keys(root, top_keys, "config", err);
    if (rc != AR_OK)
        return rc;

    const char *listen = NULL;
    if ((rc = get_string(root, "listen", "listen", &listen, err)) != AR_OK)
        return rc;
    if (listen) {
        if ((rc = parse_listen(listen, cfg, err)) != AR_OK)
            return rc;
    } else {
        cfg->listen_host = strdup(DEFAULT_LISTEN_HOST);
        cfg->listen_port = DEFAULT_LISTEN_PORT;
        if (!cfg->listen_host)
            return nomem(err);
    }

    if ((rc = parse_dir(root, "data_dir", "var", base_dir, &cfg->data_dir, err)) ||
        (rc = parse_dir(root, "plugin_dir", "build/plugins", base_dir, &cfg->plugin_dir, err)) ||
        (rc = parse_dir(root, "policy_dir", "policies", base_dir, &cfg->policy_dir, err)))
        return rc;

    long long map_size_mb = 1024, max_body = (long long)DEFAULT_MAX_BODY_BYTES, workers = 2;
    if ((rc = get_int(root, "map_size_mb", "map_size_mb", 1, 1048576, &map_size_mb, err)) ||
        (rc = get_int(root, "max_body_bytes", "max_body_bytes", 1024, 64LL << 20, &max_body,
                      err)) ||
        (rc = get_int(root, "decision_workers", "decision_workers", 1, 64, &workers, err)))
        return rc;
    const json_t *v0;
    long long max_inflight = 256, max_queue = 10000, aging = 1000;
    if ((rc = get_int(root, "max_inflight", "max_inflight", 1, 100000, &max_inflight, err)) ||
        (rc = get_int(root, "max_queue_depth", "max_queue_depth", 1, 10000000, &max_queue, err)) ||
        (rc = get_int(root, "aging_ms", "aging_ms", 1, 3600000, &aging, err)))
        return rc;
    long long expiry = 86400;
    if ((rc = get_int(root, "approval_expiry_s", "approval_expiry_s", 1, 30LL * 86400, &expiry, err)))
        return rc;
    cfg->approval_expiry_s = expiry;
    const json_t *watch = json_object_get(root, "policy_watch");
    if (watch && !json_is_boolean(watch))
        return invalid(err, "policy_watch: expected boolean, got %s", schema_type_name(watch));
    cfg->policy_watch = watch ? json_is_true(watch) : 1;
    if ((rc = parse_cpu_scheduling(root, cfg, err)) != AR_OK)
        return rc;
    if ((rc = parse_logging(root, cfg, err)) != AR_OK)
        return rc;
    if ((v0 = json_object_get(root, "autonomy")) && (rc = parse_autonomy(v0, cfg, err)))
        return rc;
    if ((v0 = json_object_get(root, "approvers")) && (rc = parse_approvers(v0, cfg, err)))
        return rc;
    cfg->max_inflight = (int)max_inflight;
    cfg->max_queue_depth = (size_t)max_queue;
    cfg->aging_ms = (int)aging;
    cfg->map_size_mb = (size_t)map_size_mb;
    cfg->max_body_bytes = (size_t)max_body;
    cfg->decision_workers = (int)workers;

    const json_t *v;
    if ((v = json_object_get(root, "tls")) && (rc = parse_tls(v, base_dir, cfg, err)))
        return rc;
    if ((rc = check_listen_exposure(cfg, err)) != AR_OK)
        return rc;
    /* The auth key lives with the data unless the config says otherwise. */
    const char *key_file = NULL;
    if ((rc = get_string(root, "auth_key_file", "auth_key_file", &key_file, err)) != AR_OK)
        return rc;
    cfg->auth_key_file = key_file ? join_path(base_dir, key_file) : join_path(cfg->data_dir, "auth.key");
    if (!cfg->auth_key_file)
        return nomem(err);
    const char *vault_key = NULL, *passphrase_file = NULL, *runtime_dir = NULL;
    if ((rc = get_string(root, "vault_key_file", "vault_key_file", &vault_key, err)) != AR_OK ||
        (rc = get_string(root, "vault_passphrase_file", "vault_passphrase_file", &passphrase_file, err)) != AR_OK ||
        (rc = get_string(root, "runtime_dir", "runtime_dir", &runtime_dir, err)) != AR_OK)
        return rc;
    cfg->vault_key_file = vault_key ? join_path(base_dir, vault_key) : join_path(cfg->data_dir, "vault.key");
    cfg->runtime_dir = join_path(base_dir, runtime_dir ? runtime_dir : "/run/aiorun");
    if (!cfg->vault_key_file || !cfg->runtime_dir)
        return nomem(err);
    if (passphrase_file && !(cfg->vault_passphrase_file = join_path(base_dir, passphrase_file)))
        return nomem(err);
    if ((v = json_object_get(root, "policy")) && (rc = parse_policy(v, &cfg->policy, err)))
        return rc;
    if ((v = json_object_get(root, "drift")) && (rc = parse_drift(v, cfg, err)))
        return rc;
    cfg->retention = (config_retention){.actions_days = 30, .idempotency_days = 90,
                                        .audit_bodies_days = 365, .audit_entries_days = 1095,
                                        .interval_s = 3600};
    if ((v = json_object_get(root, "retention")) && (rc = parse_retention(v, &cfg->retention, err)))
        return rc;
    /* After plugin_dir, which plugin paths are resolved against. */
    if ((v = json_object_get(root, "connectors")) &&
        (rc = parse_connectors(v, base_dir, cfg, err)))
        return rc;
    return AR_OK;
}

/* Parse len bytes of JSON text; base_dir must be absolute. */
static int parse_buffer(const char *text, size_t len, const char *base_dir, config **out,
                        ar_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return invalid(err, "config: invalid JSON at line %d, column %d: %s", jerr.line,
                       jerr.column, jerr.text);
    config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        json_decref(root);
        return nomem(err);
    }
    int rc = parse_root(root, base_dir, cfg, err);
    json_decref(root);
    if (rc != AR_OK) {
        config_free(cfg);
        return rc;
    }
    *out = cfg;
    return AR_OK;
}

/* path made absolute (against the current directory when NULL or relative) into *out,
 * malloc'd and normalized. */
static int absolute_path(const char *path, char **out, ar_error *err)
{
    char *cwd = NULL;
    if (!path || path[0] != '/') {
        if (!(cwd = current_dir(err)))
            return AR_E_IO;
    }
    *out = join_path(cwd ? cwd : "/", path ? path : ".");
    free(cwd);
    return *out ? AR_OK : nomem(err);
}

int config_parse(const char *text, const char *base_dir, config **out, ar_error *err)
{
    *out = NULL;
    if (!text)
        return invalid(err, "config: no text");
    char *base = NULL;
    int rc = absolute_path(base_dir, &base, err);
    if (rc != AR_OK)
        return rc;
    rc = parse_buffer(text, strlen(text), base, out, err);
    free(base);
    return rc;
}

/* Read a whole regular file into a malloc'd, NUL-terminated buffer. */
static int read_file(const char *path, char **data, size_t *len, ar_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ar_error_set(err, AR_E_IO, "invalid_config", "config: cannot open %s: %s", path,
                            strerror(errno));
    char *buf = NULL;
    int rc;
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        rc = ar_error_set(err, AR_E_IO, "invalid_config", "config: cannot stat %s: %s", path,
                          strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ar_error_set(err, AR_E_IO, "invalid_config", "config: %s is not a regular file",
                          path);
        goto fail;
    }
    if ((size_t)st.st_size > MAX_CONFIG_FILE_BYTES) {
        rc = invalid(err, "config: %s is larger than %zu bytes", path, MAX_CONFIG_FILE_BYTES);
        goto fail;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (!buf) {
        rc = nomem(err);
        goto fail;
    }
    if (fread(buf, 1, size, f) != size || ferror(f)) {
        rc = ar_error_set(err, AR_E_IO, "invalid_config", "config: cannot read %s: %s", path,
                          ferror(f) ? strerror(errno) : "the file shrank while being read");
        goto fail;
    }
    buf[size] = '\0';
    fclose(f);
    *data = buf;
    *len = size;
    return AR_OK;
fail:
    free(buf);
    fclose(f);
    return rc;
}

int config_load_file(const char *path, config **out, ar_error *err)
{
    *out = NULL;
    char *data = NULL, *abs_path = NULL, *base = NULL;
    size_t len = 0;
    int rc = read_file(path, &data, &len, err);
    if (rc != AR_OK)
        return rc;

    /* The path made absolute: a relative one is taken from the current directory. */
    if ((rc = absolute_path(path, &abs_path, err)) != AR_OK)
        goto fail;
    /* The file's directory: abs_path is normalized, so the last '/' ends it. */
    char *slash = strrchr(abs_path, '/');
    base = slash == abs_path ? strdup("/") : strndup(abs_path, (size_t)(slash - abs_path));
    if (!base) {
        rc = nomem(err);
        goto fail;
    }

    rc = parse_buffer(data, len, base, out, err);
    if (rc != AR_OK && err) {
        /* Say which file: the message names the key, the caller may not know the path. */
        ar_error inner = *err;
        ar_error_set(err, rc, inner.code, "%s: %s", path, inner.message);
    }
fail:
    free(data);
    free(abs_path);
    free(base);
    return rc;
}

void config_free(config *cfg)
{
    if (!cfg)
        return;
    free(cfg->listen_host);
    free(cfg->data_dir);
    free(cfg->plugin_dir);
    free(cfg->policy_dir);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->auth_key_file);
    free(cfg->vault_key_file);
    free(cfg->vault_passphrase_file);
    free(cfg->runtime_dir);
    json_decref(cfg->autonomy);
    json_decref(cfg->approvers);
    for (size_t i = 0; i < cfg->n_connectors; i++) {
        config_connector *c = &cfg->connectors[i];
        free(c->name);
        free(c->plugin);
        free(c->plugin_path);
        json_decref(c->config);
        json_decref(c->idempotency);
        for (size_t k = 0; k < c->n_secrets; k++)
            free(c->secrets[k]);
        free(c->secrets);
        free(c->allow_ports);
    }
    free(cfg->connectors);
    free(cfg);
}

const config_connector *config_find_connector(const config *cfg, const char *name)
{
    if (!cfg || !name)
        return NULL;
    for (size_t i = 0; i < cfg->n_connectors; i++)
        if (strcmp(cfg->connectors[i].name, name) == 0)
            return &cfg->connectors[i];
    return NULL;
}

int config_journal_dir(const config *cfg, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s/journal", cfg->data_dir);
    return n > 0 && (size_t)n < cap ? AR_OK : AR_E_INVALID;
}
