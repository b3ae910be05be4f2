/*
 * vault_cmd.h - `aioctl vault ...` and `aioctl secrets ...`: the connectors' credentials in the
 * daemon's vault (core/vault.h).
 *
 * Usage (the lines for `aioctl --help`):
 *
 *   vault init                      (--config FILE only)
 *       Create the config's vault_key_file: a new random master key, mode 0600. An existing
 *       file is never overwritten. Back the key up: without it the secrets cannot be read.
 *   vault rotate
 *       Re-encrypt every secret under a new master key (one transaction: all or nothing), and
 *       print how many. Key-file mode: a new random key replaces the key file (back it up
 *       again). Passphrase mode (--config, vault_passphrase_file set): the new passphrase is
 *       read like a secret's value (below) and written to the passphrase file.
 *   secrets set CONNECTOR NAME
 *       Store a secret for a connector (its version goes up by one). The value is read from
 *       stdin when it is not a terminal (one trailing newline is dropped), else asked for
 *       twice without echo. Never from the command line: other users can see that (ps) and
 *       it stays in shell history.
 *   secrets list [CONNECTOR]
 *       CONNECTOR, NAME, VERSION, CREATED, UPDATED of the secrets; never a value. With
 *       --config: also the secrets the config lists for a connector that the vault lacks.
 *   secrets rm CONNECTOR NAME
 *       Remove a secret.
 *
 * With --config FILE (the daemon's config) the commands work directly on its data directory:
 * they open its journal and unlock the vault with the config's key file (or passphrase file,
 * which must be 0600, like the key file), whether the daemon runs or not. A running daemon
 * reads the vault anew each time it starts a connector's process; it follows a key-file
 * rotation on its own (it loads the new key file), while after a passphrase rotation it must
 * be restarted (the vault answers vault_wrong_key until then). A passphrase rotation writes
 * the new passphrase to <file>.new first and renames it over the file once the vault is
 * re-encrypted; if it stops in between, the next offline command finishes it. Without
 * --config they go to the daemon (operator role): GET /v1/secrets[?connector=C],
 * PUT /v1/secrets/{connector}/{name} {"value"}, DELETE /v1/secrets/{connector}/{name},
 * POST /v1/vault/rotate.
 *
 * Every buffer that held a value or a passphrase is wiped (sodium_memzero); nothing prints one.
 *
 * Exit codes (aioctl.h): 0 done; 2 usage (unknown subcommand, wrong arguments, a value on the
 * command line, an empty or too long value, the two prompts differ, vault init without
 * --config or over an existing key file, a config that cannot be loaded, a bad name); 3 the
 * daemon could not be reached; 4 refused (by the daemon, or by the data directory: a key file
 * with a loose mode or the wrong key, secret_not_found, ...).
 */
#ifndef AIOCTL_VAULT_CMD_H
#define AIOCTL_VAULT_CMD_H

#include "client.h"

/* What aioctl.c hands these commands. */
typedef struct vault_cmd_env {
    const char *config;   /* --config FILE (borrowed): work offline on its data directory; NULL:
                             through the daemon */
    int json;             /* --json: print JSON (online: the daemon's reply as received) */
    /* Online: a new client for the daemon that sends the API token (owned by the caller of
     * connect afterwards: client_free). Returns an aioctl exit code (failures reported). */
    int (*connect)(void *ctx, client **out);
    /* Online: report a failed call (an error document for --json, the 401 hint), release rep,
     * return rc. */
    int (*call_failed)(void *ctx, reply *rep, int rc);
    void *ctx;
} vault_cmd_env;

/* `aioctl secrets SUBCOMMAND ARGS...`: argv holds the positional words after "secrets" (the
 * global options already taken out; borrowed, but a value found among them is wiped in
 * place). Returns the exit code. */
int aioctl_secrets_command(const vault_cmd_env *env, int argc, char **argv);

/* `aioctl vault SUBCOMMAND ARGS...`, likewise. */
int aioctl_vault_command(const vault_cmd_env *env, int argc, char **argv);

#endif
