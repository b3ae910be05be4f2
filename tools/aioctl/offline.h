/*
 * offline.h - aioctl's token and backup commands working directly on the daemon's data
 * directory.
 *
 * With `--config FILE`, `aioctl token ...` does not talk to the daemon: it loads the daemon's
 * config, opens its journal and token store through the core modules (config, journal, auth)
 * and works on them as the daemon would. LMDB serves several processes at once and the daemon
 * looks tokens up on every request, so this works whether the daemon runs or not, and a change
 * takes effect at the daemon's next request. It needs read and write access to the data
 * directory and the server key (run it as the daemon's user).
 *
 * Errors are printed on stderr ("error: <code>: <message>", the core module's words) and
 * mapped to aioctl exit codes (aioctl.h): a config that cannot be loaded and bad input
 * (AR_E_INVALID: invalid_roles, invalid_token_name, invalid_expiry) are AIOCTL_USAGE; anything
 * the store refuses (token_exists, token_not_found, storage_full, a key file with a loose
 * mode, ...) is AIOCTL_REFUSED.
 *
 * `aioctl --config FILE backup DIR` copies the journal (journal_backup: LMDB's compacting copy
 * in one read transaction, which never blocks the daemon's writes) and the auth key file.
 */
#ifndef AIOCTL_OFFLINE_H
#define AIOCTL_OFFLINE_H

#include <limits.h>
#include <stdint.h>
#include <jansson.h>

#include "auth.h"

typedef struct offline offline;

/* Load config_path, open its journal and token store. *out owned by the caller
 * (offline_close). Returns an aioctl exit code. */
int offline_open(const char *config_path, offline **out);
/* The same, for reading an existing data directory (backup): refuses, without creating
 * anything, when the config's journal does not exist yet. */
int offline_open_existing(const char *config_path, offline **out);
/* Close the token store and the journal (waiting for queued writes), free the config. NULL is
 * a no-op. */
void offline_close(offline *off);

/* auth_token_create. expires_ms: 0 for never, else absolute ms since the epoch. token receives
 * the new token (the caller wipes it with explicit_bzero). */
int offline_token_create(offline *off, const char *name, unsigned roles, int64_t expires_ms,
                         char token[AUTH_TOKEN_LEN + 1]);
/* auth_token_revoke (revoking a revoked token again is fine). */
int offline_token_revoke(offline *off, const char *name);
/* auth_token_list: *tokens is a new JSON array (the caller decrefs it). */
int offline_token_list(offline *off, json_t **tokens);

/* What a backup wrote and where a restore puts it back. */
typedef struct offline_backup_info {
    char data_dir[PATH_MAX];      /* the daemon's data directory */
    char journal_dir[PATH_MAX];   /* <data_dir>/journal: a restore puts DIR/journal there */
    char auth_key_file[PATH_MAX]; /* the config's auth_key_file: a restore puts DIR/auth.key there */
    uint64_t journal_bytes;       /* the size of the compacted copy */
} offline_backup_info;

/* Back the data directory up into dest (borrowed), which must not exist or be an empty
 * directory (created 0700, missing parents too): dest/journal (journal_backup) and
 * dest/auth.key (a copy of the config's auth_key_file, mode 0600), both synced to disk. On a
 * failure what it made is removed again. A dest that is used is AIOCTL_USAGE
 * ("backup_target"); a failed copy is AIOCTL_REFUSED ("backup_failed"). */
int offline_backup(offline *off, const char *dest, offline_backup_info *info);

#endif
