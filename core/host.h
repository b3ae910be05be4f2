/*
 * host.h - internals of the sandbox host binary (aiorun-host), shared by host_main.c (startup,
 * lockdown, plugin loading, the serve loop) and host_api.c (the aiorun_host_api table a plugin
 * calls and the per-call context behind aiorun_call).
 *
 * The host is single-threaded from the plugin's point of view: one call at a time, so the call
 * context is one object reused for every call (a stale aiorun_call pointer kept by a plugin
 * still points at valid memory; it is just no longer active).
 */
#ifndef HOST_H
#define HOST_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "aiorun/plugin.h"

/* The socket to the daemon. */
#define HOST_FD 3

/* Exit statuses of aiorun-host. */
enum {
    HOST_EXIT_OK = 0,        /* SHUTDOWN, or the daemon closed the socket */
    HOST_EXIT_USAGE = 2,     /* bad command line or fd 3 is not a socket */
    HOST_EXIT_REFUSED = 3,   /* REFUSED was sent: ABI, entry, descriptor, dlopen, init */
    HOST_EXIT_PROTOCOL = 4,  /* the daemon sent something we do not understand */
    HOST_EXIT_INTERNAL = 5   /* out of memory or a failing system call */
};

/* Memory handed to the plugin during one call, freed together when the call ends. */
typedef struct host_arena_block host_arena_block;

/* The connector's secrets from INIT, kept in one sodium_malloc'd block (guard pages, locked,
 * wiped when freed) that is made read-only before the plugin's init runs: a plugin that writes
 * through the pointer secret() gave it crashes instead of changing it. */
typedef struct host_secret_item {
    const char *name;
    const unsigned char *value;   /* NUL-terminated after len bytes */
    size_t len;
} host_secret_item;
typedef struct host_secrets {
    size_t n;
    size_t size;                  /* of the whole block, for sodium_free */
    host_secret_item items[];
} host_secrets;

typedef struct host_ctx {
    int fd;
    size_t max_frame;
    const char *connector;     /* from argv */
    host_secrets *secrets;     /* from INIT (sodium_malloc'd, read-only); NULL before */
    void *curl;                /* CURL *, created on first http(), reused for keep-alive */
    /* log rate limit: a fixed one-second window */
    int64_t log_window_ms;
    int log_count;
    int log_dropped;
} host_ctx;

/* Costs of one call (set_cost): at most this many units, each of at most this many bytes. */
#define HOST_COST_MAX_UNITS 8
#define HOST_COST_UNIT_MAX 16
typedef struct host_cost {
    char unit[HOST_COST_UNIT_MAX + 1];
    double amount;
} host_cost;

struct aiorun_call {
    host_ctx *host;
    int active;                /* 0 outside init/invoke/lookup */
    int64_t deadline_ms;       /* epoch ms */
    const char *idempotency_key;  /* borrowed from the request frame, "" in init */
    int has_error;
    char error[2048];          /* the message of the last set_error, valid UTF-8 */
    json_t *result;            /* from set_result; owned */
    host_arena_block *arena;
    /* The last HTTP response received during the call (reported in RESULT): its status, 0 when
     * none, and its Retry-After in ms, -1 when it had none. */
    long http_status;
    int64_t retry_after_ms;
    /* What the call cost (set_cost), by unit in the order first reported; reported in RESULT.
     * costs_allowed is 0 in init, whose outcome carries no cost. */
    int costs_allowed;
    size_t n_costs;
    host_cost costs[HOST_COST_MAX_UNITS];
};

/* The services table handed to init (static, constant). */
const aiorun_host_api *host_api_table(void);

/* Set up the context (no allocation) and remember it for log() calls made with call == NULL
 * (e.g. from fini): the one process-wide pointer of the host. */
void host_ctx_init(host_ctx *h, int fd, size_t max_frame, const char *connector);
/* Release the curl handle and wipe and free the secrets. */
void host_ctx_fini(host_ctx *h);

/* Take INIT's "secrets" (NULL or an object of name -> string, or name -> {"base64": text} for
 * a value that is not UTF-8) into h->secrets, read-only, and wipe the values in the JSON.
 * sodium_init must have run. 0, or -1 with why filled (names a secret, never a value). */
int host_secrets_load(host_ctx *h, json_t *secrets, char *why, size_t cap);

/* Start a call: clears the previous outcome and allows costs (init_plugin then forbids them).
 * idempotency_key is borrowed until host_call_end. */
void host_call_begin(aiorun_call *c, host_ctx *h, int64_t deadline_ms, const char *idempotency_key);
/* End a call: frees the arena and the result, marks the call inactive. */
void host_call_end(aiorun_call *c);
/* The call's costs as RESULT carries them, {"USD": 0.012, "tokens": 340} (a whole amount as
 * an integer): a new reference owned by the caller, NULL when there are none (or no memory). */
json_t *host_call_cost(const aiorun_call *c);

/* Copy s into dst (size cap, cap >= 1) replacing each byte of an invalid UTF-8 sequence with
 * '?', so that any plugin text can go into a JSON string; never cuts a character in half.
 * Always NUL-terminates. */
void host_sanitize_text(char *dst, size_t cap, const char *s);

#endif
