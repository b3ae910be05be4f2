/*
 * aiorun/plugin.h - the whole contract between aiorun and a connector plugin (SDK v1).
 *
 * A plugin is a shared object that exports one function, aiorun_plugin_entry(), returning a
 * constant descriptor: its ABI version, name, config schema and a table of actions with their
 * callbacks. aiorun loads it inside a sandbox host process of its own (never inside the daemon),
 * checks the ABI before touching anything else, validates the connector's config against the
 * declared schema, calls init() once, then invoke() once per action attempt.
 *
 * Rules a plugin author can rely on:
 *   - A plugin is never called concurrently within one process: no locks are needed.
 *     Concurrency comes from several processes per connector instance.
 *   - JSON crosses the ABI as UTF-8 text with a length (not necessarily NUL-terminated unless
 *     said so). A plugin needs nothing but this header and the C library.
 *   - Ownership words (as in jansson): *borrowed* = valid until the callback returns, do not
 *     free; *copied* = the host copies what you pass, you keep ownership of your buffer.
 *   - Structures only grow at the end. Each side checks the other's struct_size before reading a
 *     field added in a later ABI minor. "Since 1.N" marks the minor a field appeared in.
 *   - aiorun_status values are never renumbered; AIORUN_OK is 0 forever.
 *
 * Build: cc -shared -fPIC -fvisibility=hidden -I <sdk>/include my_plugin.c -o my_plugin.so
 */
#ifndef AIORUN_PLUGIN_H
#define AIORUN_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#include "aiorun/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define AIORUN_EXPORT __attribute__((visibility("default")))
#define AIORUN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define AIORUN_EXPORT
#define AIORUN_PRINTF(f, a)
#endif

/* Status and error classes, shared with the core. The class decides what aiorun does next
 * (retry, wait, fail). Never renumbered. Since 1.0. */
typedef enum aiorun_status {
    AIORUN_OK = 0,
    AIORUN_E_RETRYABLE = 1,      /* transient failure; safe to try again later */
    AIORUN_E_RATE_LIMITED = 2,   /* the API said slow down (429); retry after a pause */
    AIORUN_E_TIMEOUT = 3,        /* no answer in time; the outcome may be unknown */
    AIORUN_E_AUTH = 4,           /* credentials missing, wrong or expired */
    AIORUN_E_INVALID = 5,        /* the request is wrong; retrying will not help */
    AIORUN_E_NOT_FOUND = 6,      /* the target does not exist */
    AIORUN_E_CONFLICT = 7,       /* the target's state forbids it (e.g. already refunded) */
    AIORUN_E_PERMANENT = 8,      /* any other failure that will not go away by retrying */
    AIORUN_E_PLUGIN_CRASHED = 9  /* host side only: the plugin process died or spoke garbage */
} aiorun_status;

/* What running an action does to the world. Since 1.0. */
typedef enum aiorun_effect {
    AIORUN_EFFECT_READ = 0,        /* no side effect; safe to repeat */
    AIORUN_EFFECT_WRITE = 1,       /* changes state; can be corrected */
    AIORUN_EFFECT_IRREVERSIBLE = 2 /* changes state for good (payments, deletions, emails) */
} aiorun_effect;

/* How the API deduplicates a repeated request. Since 1.0. */
typedef enum aiorun_idempotency {
    AIORUN_IDEMPOTENCY_NONE = 0,   /* no support: a repeat may act twice */
    AIORUN_IDEMPOTENCY_NATIVE = 1, /* the API honours an idempotency key */
    AIORUN_IDEMPOTENCY_LOOKUP = 2  /* the plugin's lookup() can tell whether a key was used */
} aiorun_idempotency;

typedef enum aiorun_log_level {
    AIORUN_LOG_DEBUG = 0,
    AIORUN_LOG_INFO = 1,
    AIORUN_LOG_WARN = 2,
    AIORUN_LOG_ERROR = 3
} aiorun_log_level;

/* Opaque: one call of init, invoke or lookup. Only valid during that callback. */
typedef struct aiorun_call aiorun_call;

/* One header of an HTTP request or response. Borrowed strings. */
typedef struct aiorun_http_header {
    const char *name;
    const char *value;
} aiorun_http_header;

/* A request for the host's HTTP client. Since 1.0. All pointers borrowed for the call. */
typedef struct aiorun_http_request {
    uint32_t struct_size;          /* sizeof(aiorun_http_request) as the plugin knows it */
    const char *method;            /* "GET", "POST", ... */
    const char *url;
    const aiorun_http_header *headers;
    size_t n_headers;
    const char *body;              /* may be NULL */
    size_t body_len;
    int timeout_ms;                /* 0: the call's remaining deadline */
} aiorun_http_request;

/* The host's answer. Body and headers are borrowed until the current callback returns
 * (they live in the call's arena). Since 1.0. */
typedef struct aiorun_http_response {
    uint32_t struct_size;          /* set by the plugin before the call */
    long status;                   /* HTTP status, 0 when no response was received */
    const char *body;              /* NUL-terminated too, for convenience */
    size_t body_len;
    const aiorun_http_header *headers;
    size_t n_headers;
    int64_t retry_after_ms;        /* parsed Retry-After, -1 when absent */
} aiorun_http_response;

/*
 * Services the host offers a plugin, handed to init() and valid until fini() returns.
 * Append-only: check api->struct_size (AIORUN_HOST_HAS) before using a member added after 1.0.
 */
typedef struct aiorun_host_api {
    uint32_t struct_size;
    uint16_t abi_major;
    uint16_t abi_minor;

    /* Log a line to the daemon's log (rate-limited by the host). Since 1.0. */
    void (*log)(aiorun_call *call, aiorun_log_level level, const char *fmt, ...) AIORUN_PRINTF(3, 4);

    /* Look up a secret of this connector by name. On AIORUN_OK, *value and *len are borrowed until
     * fini(). AIORUN_E_NOT_FOUND when this connector has no such secret. Since 1.0. */
    aiorun_status (*secret)(aiorun_call *call, const char *name, const char **value, size_t *len);

    /* Perform an HTTP request within the call's deadline (req->timeout_ms, when set, can only
     * shorten it). Returns AIORUN_OK when a response was received, whatever its status (map it
     * with http_status_class); otherwise the transport failure's class, with a message set on
     * the call that says whether the request was sent:
     *   AIORUN_E_RETRYABLE - the request was not sent (connection refused, name not resolved,
     *                        could not connect): repeating it is safe;
     *   AIORUN_E_TIMEOUT   - the request may have reached the API (timeout, connection reset
     *                        after sending, truncated or empty reply): the outcome is unknown.
     * On requests other than GET and HEAD the call's idempotency key is sent as
     * "Idempotency-Key" unless the request sets that header itself. Since 1.0. */
    aiorun_status (*http)(aiorun_call *call, const aiorun_http_request *req, aiorun_http_response *resp);

    /* The usual class for an HTTP status: 2xx OK, 408 TIMEOUT, 409 CONFLICT, 429 RATE_LIMITED,
     * 401/403 AUTH, 404/410 NOT_FOUND, other 4xx INVALID, 5xx RETRYABLE. Since 1.0. */
    aiorun_status (*http_status_class)(long status);

    /* Wall clock and the call's deadline, milliseconds since the epoch. Since 1.0. */
    int64_t (*now_ms)(void);
    int64_t (*deadline_ms)(aiorun_call *call);

    /* The idempotency key of this attempt (borrowed, NUL-terminated), "" in init. Since 1.0. */
    const char *(*idempotency_key)(aiorun_call *call);

    /* Fail the call with a class and a message; returns cls so that
     *   return api->set_error(call, AIORUN_E_INVALID, "missing %s", key);
     * is one line. The message must not contain secrets. Since 1.0. */
    aiorun_status (*set_error)(aiorun_call *call, aiorun_status cls, const char *fmt, ...) AIORUN_PRINTF(3, 4);

    /* Set the call's result: a JSON value as text (copied). Returns AIORUN_OK, or
     * AIORUN_E_INVALID when the text is not JSON. Since 1.0. */
    aiorun_status (*set_result)(aiorun_call *call, const char *json, size_t len);

    /* Report what this call cost (money, API credits, model tokens): aiorun keeps it on the
     * attempt and adds it to the action's total. amount: finite and >= 0; unit: 1 to 16
     * characters of [A-Za-z0-9_], case-sensitive ("USD", "EUR", "tokens"; copied). Several
     * calls with the same unit add up; different units are kept apart, at most 8 per call.
     * Call it in invoke or lookup, before returning, also when the call fails (a failed call
     * may still have cost). AIORUN_E_INVALID, changing nothing, for a bad amount or unit, a
     * ninth unit, a sum that would not be finite, or a call outside invoke and lookup (init).
     * Since 1.2: a host older than 1.2 has no such member, so check first with
     * AIORUN_HOST_HAS(api, set_cost). */
    aiorun_status (*set_cost)(aiorun_call *call, double amount, const char *unit);
} aiorun_host_api;

/* Whether the host's services table has member (one appended in a later minor than 1.0):
 *   if (AIORUN_HOST_HAS(api, set_cost)) api->set_cost(call, 0.012, "USD");
 * Since 1.2 (the test itself works on any host). */
#define AIORUN_HOST_HAS(api, member) \
    ((api)->struct_size >= offsetof(aiorun_host_api, member) + sizeof((api)->member))

/* Run one attempt of an action. input/input_len: the action's input as JSON text, validated
 * against input_schema, borrowed. Return AIORUN_OK after set_result(), or an error class
 * (set_error() says why). Since 1.0. */
typedef aiorun_status (*aiorun_invoke_fn)(void *instance, aiorun_call *call,
                                          const char *input, size_t input_len);

/* Reconcile after a crash: did an earlier attempt with this idempotency key happen?
 * AIORUN_OK with set_result() when it did; AIORUN_E_NOT_FOUND when it did not; another class
 * when the answer is not known now. Since 1.1. */
typedef aiorun_status (*aiorun_lookup_fn)(void *instance, aiorun_call *call,
                                          const char *action, const char *idempotency_key);

/* One action a connector offers. Array elements are sizeof(aiorun_action) as the plugin
 * knows it: the descriptor's action_size. Since 1.0. */
typedef struct aiorun_action {
    const char *name;              /* [a-z0-9_.-], unique within the plugin */
    const char *summary;           /* one line for humans */
    const char *input_schema;      /* JSON Schema (subset, see sdk/README.md) as text */
    aiorun_effect effect;
    aiorun_idempotency idempotency;
    int cacheable;                 /* results may be reused for identical read inputs */
    aiorun_invoke_fn invoke;
} aiorun_action;

/* Create the plugin instance. config/config_len: the connector's config as JSON text, already
 * validated against config_schema, borrowed. Store what you need in *instance. On failure
 * return an error class with set_error(). Since 1.0. */
typedef aiorun_status (*aiorun_init_fn)(const aiorun_host_api *api, aiorun_call *call,
                                        const char *config, size_t config_len, void **instance);
typedef void (*aiorun_fini_fn)(void *instance);

/* The descriptor a plugin returns. Constant for the life of the process. */
typedef struct aiorun_plugin {
    uint16_t abi_major;            /* AIORUN_ABI_MAJOR the plugin was built with */
    uint16_t abi_minor;            /* AIORUN_ABI_MINOR the plugin was built with */
    uint32_t struct_size;          /* sizeof(aiorun_plugin) as the plugin knows it */
    const char *name;
    const char *version;
    const char *description;
    const char *config_schema;     /* JSON Schema as text; NULL means {"type":"object"} */
    const aiorun_action *actions;
    size_t n_actions;
    uint32_t action_size;          /* sizeof(aiorun_action) as the plugin knows it */
    aiorun_init_fn init;           /* may be NULL */
    aiorun_fini_fn fini;           /* may be NULL */
    /* Since 1.1 */
    aiorun_lookup_fn lookup;       /* may be NULL */
} aiorun_plugin;

/* Fill the version fields of a descriptor the way this header knows them. */
#define AIORUN_PLUGIN_HEADER \
    .abi_major = AIORUN_ABI_MAJOR, .abi_minor = AIORUN_ABI_MINOR, \
    .struct_size = (uint32_t)sizeof(aiorun_plugin), .action_size = (uint32_t)sizeof(aiorun_action)

/* The one symbol a plugin exports. host_abi_major/minor: the host's ABI, so a plugin may adapt
 * or refuse (return NULL). The descriptor is owned by the plugin and must stay valid. */
#define AIORUN_PLUGIN_ENTRY_SYMBOL "aiorun_plugin_entry"
typedef const aiorun_plugin *(*aiorun_plugin_entry_fn)(uint16_t host_abi_major, uint16_t host_abi_minor);
AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major, uint16_t host_abi_minor);

#ifdef __cplusplus
}
#endif
#endif
