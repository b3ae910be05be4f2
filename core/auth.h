/*
 * auth.h - API tokens: creation, lookup, revocation, and the roles they carry.
 *
 * A token is "aior_" followed by 43 base64url characters (32 random bytes, 256 bits). It is
 * shown once, at creation, and never stored: the journal keeps only its keyed BLAKE2b digest
 * (crypto_generichash, 32 bytes, keyed with the server key in <data_dir>/auth.key, mode 0600,
 * created on first use). A keyed hash rather than a password hash: tokens carry 256 bits of
 * entropy, so nothing is gained by a slow hash, and a lookup costs a microsecond instead of a
 * tenth of a second per request. Lookups go to the journal every time (no cache), so a token
 * created or revoked by another process (aioctl working on the data directory) takes effect on
 * the running daemon at its next request.
 *
 * Stored in JDB_TOKENS (digest -> record JSON: name, roles, created_ms, expires_ms or null,
 * revoked_ms or null) and JDB_TOKEN_NAMES (name -> digest). A revoked token's record stays, so
 * its name cannot be reused by mistake; `auth_token_create` refuses a name in use by a live token
 * and replaces a revoked or expired one.
 */
#ifndef AUTH_H
#define AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"
#include "journal.h"

#define AUTH_TOKEN_PREFIX "aior_"
#define AUTH_TOKEN_LEN 48          /* "aior_" + 43 base64url characters */
#define AUTH_NAME_MAX 64

/* Roles are bits so that one token may hold several. */
enum {
    AUTH_ROLE_SUBMITTER = 1 << 0,  /* submit; read its own actions */
    AUTH_ROLE_APPROVER = 1 << 1,   /* decide approvals (and read) */
    AUTH_ROLE_OPERATOR = 1 << 2,   /* everything */
    AUTH_ROLE_READER = 1 << 3      /* read-only */
};

/* "submitter,reader" -> bits. AR_E_INVALID (code "invalid_roles") naming an unknown role, or
 * when the list is empty. */
int auth_roles_parse(const char *csv, unsigned *out, ar_error *err);
/* bits -> "submitter,reader" into buf. */
void auth_roles_format(unsigned roles, char *buf, size_t cap);

typedef struct auth auth;

/* Open the token store on a journal. key_path: the server key file, created 0600 with a fresh
 * random key when missing; refused when readable by group or others, or of the wrong size.
 * *out owned by the caller (auth_free). */
int auth_open(journal *j, const char *key_path, auth **out, ar_error *err);
void auth_free(auth *a);

/* Create a token. name: [A-Za-z0-9_.-]{1,64}; roles: non-zero; expires_ms: 0 for never, else
 * an absolute time (ms since the epoch) in the future. token_out receives the token (shown once;
 * the caller wipes it with sodium_memzero after use). AR_E_EXISTS (code "token_exists") when a
 * live token has that name. */
int auth_token_create(auth *a, const char *name, unsigned roles, int64_t expires_ms,
                      char token_out[AUTH_TOKEN_LEN + 1], ar_error *err);

/* Revoke by name. AR_E_NOTFOUND (code "token_not_found"); revoking twice is AR_OK. */
int auth_token_revoke(auth *a, const char *name, ar_error *err);

/* The same, naming who did it in the audit entry (token_created / token_revoked, in the same
 * transaction; names and roles only). The plain forms record "unknown". */
int auth_token_create_by(auth *a, const char *by, const char *name, unsigned roles, int64_t expires_ms,
                         char token_out[AUTH_TOKEN_LEN + 1], ar_error *err);
int auth_token_revoke_by(auth *a, const char *by, const char *name, ar_error *err);

/* All tokens as a new JSON array of {name, roles: [..], created_at, expires_at, revoked_at,
 * state: "active"|"expired"|"revoked"} (RFC 3339 strings or null). Never tokens or digests. */
int auth_token_list(auth *a, json_t **out, ar_error *err);

/* Who presents this token? On AR_OK fills name and roles. Otherwise AR_E_NOTFOUND with code
 * "unauthenticated" and a reason that never contains the token: "unknown token", "token
 * <name> expired at ...", "token <name> was revoked", "malformed token". The token is hashed
 * whatever its shape, so timing does not reveal how much of it was right. */
typedef struct auth_identity {
    char name[AUTH_NAME_MAX + 1];
    unsigned roles;
} auth_identity;
/* Thread-safe: the daemon calls it from every HTTP thread at once. */
int auth_verify(auth *a, const char *token, size_t token_len, auth_identity *out, ar_error *err);

#endif
