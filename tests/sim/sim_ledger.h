/*
 * sim_ledger.h - what the simulator remembers about requests: Idempotency-Key records, effect
 * counters, request counters and the request log.
 *
 * Idempotency records are kept per (method, path, key). A record is "in progress" from
 * sim_ledger_idem_begin until sim_ledger_idem_finish or _abandon, then holds the full response.
 * Request bodies count as the same when their bytes are equal or both parse to equal JSON.
 *
 * Not thread-safe: the caller serialises every call.
 */
#ifndef SIM_LEDGER_H
#define SIM_LEDGER_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

typedef struct sim_ledger sim_ledger;

sim_ledger *sim_ledger_new(void);
void sim_ledger_free(sim_ledger *l);
/* Forget every record, counter and log entry. */
void sim_ledger_reset(sim_ledger *l);

/* Count one request under "METHOD path" and append it to the log. Returns the log entry (a new
 * reference the caller owns) so the final status can be set later with sim_ledger_note_status;
 * NULL when out of memory. key: "-" when the request had none. */
json_t *sim_ledger_note_request(sim_ledger *l, const char *method, const char *path,
                                const char *key, const char *fault, int64_t at_ms);
/* Record the answered status (0: no answer) and whether it was a replay in a log entry. */
void sim_ledger_note_status(json_t *entry, int status, int replayed);

typedef enum {
    SIM_IDEM_NEW,      /* first use: an in-progress record now exists */
    SIM_IDEM_REPLAY,   /* done before with the same body: *status and *reply hold the response */
    SIM_IDEM_REUSE,    /* done before with another body */
    SIM_IDEM_BUSY,     /* another request with this key is being processed */
    SIM_IDEM_ERROR,    /* out of memory */
} sim_idem_result;

/* Look up (method, path, key). For SIM_IDEM_REPLAY, *reply is a malloc'd copy of the remembered
 * body text the caller frees. */
sim_idem_result sim_ledger_idem_begin(sim_ledger *l, const char *method, const char *path,
                                      const char *key, const char *body, size_t len, int *status,
                                      char **reply);
/* Remove the in-progress record (the request was not executed, or its result is not kept). */
void sim_ledger_idem_abandon(sim_ledger *l, const char *method, const char *path, const char *key);
/* Store the response of the in-progress record. reply: JSON text, copied. */
void sim_ledger_idem_finish(sim_ledger *l, const char *method, const char *path, const char *key,
                            int status, const char *reply, int effect);

/* Count one effect under key ("-" for none). */
void sim_ledger_effect(sim_ledger *l, const char *key);

/* New references the caller owns:
 *   effects_json(NULL)  {"total": N, "by_key": {"k": n, ...}}
 *   effects_json(K)     {"key": K, "effects": n}
 *   requests_json       {"total": N, "by_route": {"POST /orders": n, ...}}
 *   log_json(pattern)   {"requests": [{"at_ms", "method", "path", "route", "key", "fault",
 *                        "status", "replayed"}, ...]} filtered by a route pattern (NULL: all)
 *   by_key_json(K)      {"status": s, "body": {...}} of the first effect made with key K, or
 *                       NULL when none was made */
json_t *sim_ledger_effects_json(const sim_ledger *l, const char *key);
json_t *sim_ledger_requests_json(const sim_ledger *l);
json_t *sim_ledger_log_json(const sim_ledger *l, const char *pattern);
json_t *sim_ledger_by_key_json(const sim_ledger *l, const char *key);

#endif
