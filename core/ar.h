/*
 * ar.h - status codes and the error struct shared by every core module.
 *
 * Functions return AR_OK (0) or a negative AR_E_* status; when they take an ar_error*, they
 * fill it with a stable machine-readable code (e.g. "storage_full") and a message that says
 * what to fix. The caller owns the ar_error (usually on its stack); NULL is allowed.
 */
#ifndef AR_H
#define AR_H

#include <stddef.h>
#include <stdint.h>

enum {
    AR_OK = 0,
    AR_E_FAIL = -1,        /* generic failure; see the ar_error */
    AR_E_NOMEM = -2,
    AR_E_EXISTS = -3,      /* a conditional insert found the key present */
    AR_E_NOTFOUND = -4,
    AR_E_FULL = -5,        /* storage_full: the LMDB map is full */
    AR_E_FORMAT = -6,      /* a record or environment of an unknown (newer) format */
    AR_E_INVALID = -7,     /* bad input (config, JSON, schema, frame) */
    AR_E_BUSY = -8,        /* no capacity right now; try again when told */
    AR_E_IO = -9,          /* a system call failed; see errno text in the message */
    AR_E_CLOSED = -10,     /* the object is shutting down */
    AR_E_CONFLICT = -11    /* what a decision read has changed since: decide again */
};

typedef struct ar_error {
    char code[48];         /* stable snake_case code, "" when none */
    char message[512];     /* human text; never contains secrets */
} ar_error;

/* Set both fields (printf-style message). Safe with err == NULL. Returns status, so that
 * `return ar_error_set(err, AR_E_INVALID, "invalid_config", "...")` is one line. */
int ar_error_set(ar_error *err, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Clear an error to empty strings. Safe with NULL. */
void ar_error_clear(ar_error *err);

/* ---- logging ------------------------------------------------------------------------------
 *
 * One line per call on stderr, written with a single write(2) and at most 4096 bytes (PIPE_BUF)
 * so that lines from several threads never interleave, not even on a pipe; a longer message is
 * cut and ends in "...". Never pass secrets, tokens or request bodies.
 *
 * JSON lines (the daemon's default):
 *   {"time": "2026-11-26T17:00:00.123Z", "level": "info", "component": "scheduler",
 *    "action": "<id>", "msg": "..."}
 * "action" is there only when the line is about one action. Every field is valid JSON: quotes,
 * backslashes and control characters are escaped, invalid UTF-8 becomes U+FFFD.
 * Text lines (for people): "2026-11-26T17:00:00.123Z aiorun LEVEL message", LEVEL as the caller
 * spelled it. A component of the form "kind:name" (plugin:shop, policy:refunds.lua), i.e. a
 * source outside the daemon's own code, is shown before the message ("plugin:shop: ..."); the
 * daemon's own components are not, so its lines read exactly as before. Control characters are
 * escaped (\n, \r, \t, \xNN) so that a message cannot forge a second line.
 *
 * Levels: "debug" < "info" < "warn" < "error" (names case-insensitive; an unknown name counts
 * as "info"). Lines below the minimum level are dropped. */
enum { AR_LOG_DEBUG = 0, AR_LOG_INFO = 1, AR_LOG_WARN = 2, AR_LOG_ERROR = 3 };

/* One line from component "aiorun", about no action in particular. */
void ar_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line from component (e.g. "scheduler", "plugin:shop"; NULL: "aiorun"), about the action
 * action_id (NULL or "": none, and the JSON line has no "action" field). */
void ar_log_as(const char *level, const char *component, const char *action_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The one process-wide setting this module keeps: the minimum level (AR_LOG_*; clamped) and
 * the format (json != 0: JSON lines, 0: text). Set it once at start, before other threads run
 * (the daemon does, from its config and AIORUN_LOG_LEVEL); it is stored atomically, so a later
 * call is not a data race, but lines written meanwhile may use either setting. Until it is
 * called: level info and text, so tools that never call it (aioctl) keep their text output. */
void ar_log_configure(int min_level, int json);

/* AR_LOG_* for "debug", "info", "warn" or "error" (any case); -1 for anything else or NULL. */
int ar_log_level_from_name(const char *name);

/* RFC 3339 UTC with milliseconds, "2026-11-26T17:00:00.123Z", into buf (at least 32 bytes). */
#define AR_TIME_LEN 32
void ar_time_rfc3339(int64_t ms, char buf[AR_TIME_LEN]);

/* Milliseconds: wall clock since the epoch, and monotonic since an arbitrary start. */
int64_t ar_now_ms(void);
int64_t ar_mono_ms(void);

#endif
