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

/* One log line to stderr: "2026-11-26T17:00:00.123Z aiorun LEVEL message". Thread-safe (one
 * write per line). Never pass secrets. */
void ar_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* RFC 3339 UTC with milliseconds, "2026-11-26T17:00:00.123Z", into buf (at least 32 bytes). */
#define AR_TIME_LEN 32
void ar_time_rfc3339(int64_t ms, char buf[AR_TIME_LEN]);

/* Milliseconds: wall clock since the epoch, and monotonic since an arbitrary start. */
int64_t ar_now_ms(void);
int64_t ar_mono_ms(void);

#endif
