/*
 * vault.h - connector credentials encrypted at rest (libsodium), in the journal's environment.
 *
 * Each secret is stored in JDB_SECRETS under connector '\0' name as a record: its version
 * (starting at 1, +1 on every set), created/updated times, a random 24-byte nonce and the
 * XChaCha20-Poly1305 ciphertext of the value. The key is the connector's subkey, derived from
 * the master key with crypto_kdf_derive_from_key (context "aiorunv1", subkey id: the first 8
 * bytes of BLAKE2b(connector name)). The associated data binds the ciphertext to where it
 * belongs: "aiorun-secret-v1" '\0' connector '\0' name '\0' version (uint32 LE); a ciphertext
 * copied to another connector, name or version fails to decrypt.
 *
 * The master key (32 bytes) comes from a key file (raw 32 bytes, or 64 hex characters and a
 * newline; mode 0600 or stricter and owned by the caller, else refused, saying why) or from a
 * passphrase stretched with Argon2id (crypto_pwhash, MODERATE limits; the salt and limits are
 * stored in the vault's meta record; the unlocking process needs ~300 MiB of address space).
 * The meta record (key "\0meta" in JDB_SECRETS) also holds a verifier: an AEAD encryption of a
 * fixed text under the master key, so a wrong key is recognised at open, before anything is
 * read or changed: AR_E_INVALID, code "vault_wrong_key", and nothing on disk changes. The first
 * open of an empty vault writes the meta record.
 *
 * The master key lives in sodium_malloc'd memory kept PROT_NONE except while a call uses it
 * (under the vault's mutex); decrypted values are handed out in sodium_malloc'd buffers that the
 * caller frees with vault_secrets_free (which wipes them). Nothing here logs a value.
 *
 * Rotation (vault_rotate) re-encrypts every secret under a new master key in one journal
 * transaction, after writing the new key to <key_file>.new (0600, synced). Only after the
 * transaction is durable is <key_file>.new renamed over <key_file>. A crash before the commit
 * leaves the old vault and key as they were (a stale .new is ignored, and replaced by the next
 * rotation); a crash after the commit but before the rename is completed by the next
 * vault_open, which finds that the .new key is the one that verifies.
 *
 * Thread-safe (one mutex). Several processes (the daemon and an offline aioctl) may use one
 * vault: every operation reads inside its own transaction. A vault that another process
 * rotated since it was unlocked notices before it uses its key (the meta record changed): in
 * key-file mode it loads the key file again, in passphrase mode it answers vault_wrong_key;
 * writes check this inside their transaction, so nothing is ever stored under a retired key.
 * While a process rotates, or looks at <key_file>.new, it holds an flock on the key file's
 * directory, so that no vault_open elsewhere removes the .new of a rotation in progress.
 */
#ifndef VAULT_H
#define VAULT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"
#include "journal.h"

#define VAULT_KEY_LEN 32
#define VAULT_MAX_SECRET_LEN 65536
#define VAULT_NAME_MAX 128            /* connector and secret names: 1..127 bytes, no '\0' */

typedef struct vault vault;

typedef struct vault_opts {
    const char *key_file;             /* the master key file; used when passphrase is NULL */
    const char *passphrase;           /* Argon2id mode when not NULL (borrowed; the caller wipes it) */
    size_t passphrase_len;
} vault_opts;

/* Create a key file with a new random master key (64 hex characters and a newline), mode
 * 0600, synced; its directory must exist. An existing file is never overwritten: AR_E_EXISTS,
 * code "vault_key_exists". */
int vault_key_create(const char *key_file, ar_error *err);

/* Unlock the vault of journal j. Errors (AR_E_INVALID unless said): "vault_key_missing"
 * (AR_E_NOTFOUND; the message says to run `aioctl vault init`), "vault_key_mode" (group or
 * others may read it: says the chmod to run), "vault_key_invalid" (not 32 bytes / 64 hex),
 * "vault_wrong_key", "vault_mode_mismatch" (a passphrase for a key-file vault or the other way
 * round), AR_E_NOMEM for the guarded memory. Added: "vault_key_owner" (the key file belongs to
 * another uid than the effective one), "vault_key_io" (AR_E_IO: the key file cannot be read),
 * "vault_format" (AR_E_FORMAT: a meta record of a newer format, or damaged).
 * *out owned by the caller (vault_free). */
int vault_open(journal *j, const vault_opts *opts, vault **out, ar_error *err);
void vault_free(vault *v);

/* Open the vault as the config says: passphrase_file set → passphrase mode with the passphrase
 * in that file (owned by us, mode 0600, one trailing newline ignored; if it is refused with
 * vault_wrong_key but <file>.new opens the vault — a passphrase rotation that stopped after its
 * commit — the .new is renamed into place); else key_file. create_key: when the key file is
 * missing and the vault holds no secret (its first start, or a data directory restored without
 * its key while it held none), create a new key first (and forget the old key's verifier); a
 * vault that holds secrets without its key stays an error. Errors as vault_open. */
/* fsync the directory that holds path, so that a file created or renamed there is durable
 * (used for key and passphrase files). Errors are ignored: the caller has nothing better to do. */
void vault_sync_dir_of(const char *path);

int vault_open_files(journal *j, const char *key_file, const char *passphrase_file, int create_key,
                     vault **out, ar_error *err);

/* Store a secret (value: any bytes, 1..VAULT_MAX_SECRET_LEN) for connector; its version
 * becomes the previous + 1 (1 when new), written into *version when not NULL. Bad names or
 * sizes are AR_E_INVALID, code "secret_invalid". Durable when it returns. */
int vault_set(vault *v, const char *connector, const char *name, const void *value, size_t len,
              uint32_t *version, ar_error *err);
/* Remove a secret; AR_E_NOTFOUND ("secret_not_found") when there is none. */
int vault_remove(vault *v, const char *connector, const char *name, ar_error *err);

/* The same, naming who did it in the audit entry written in the same transaction
 * (secret_set {connector, name, version, by} / secret_removed; never a value). The plain forms
 * record "unknown". A rotation is audited as vault_rotated {count}. */
int vault_set_by(vault *v, const char *by, const char *connector, const char *name, const void *value,
                 size_t len, uint32_t *version, ar_error *err);
int vault_remove_by(vault *v, const char *by, const char *connector, const char *name, ar_error *err);

/* Names, versions and times, never values: a new JSON array (owned by the caller) of
 * {"connector", "name", "version", "created_ms", "updated_ms"}, sorted by connector then name;
 * connector NULL: every connector. */
int vault_list(vault *v, const char *connector, json_t **out, ar_error *err);

/* A connector's secrets, decrypted. */
typedef struct vault_secret {
    char name[VAULT_NAME_MAX];
    unsigned char *value;             /* sodium_malloc'd, NUL-terminated after len bytes */
    size_t len;
    uint32_t version;
} vault_secret;
typedef struct vault_secrets {
    vault_secret *items;
    size_t n;
} vault_secrets;

/* Decrypt every secret of connector into *out (n = 0 when it has none). A record that fails
 * to decrypt (tampered, moved, wrong subkey) is AR_E_INVALID, code "secret_corrupt", naming
 * connector and secret, and nothing is returned. Free with vault_secrets_free. */
int vault_get_all(vault *v, const char *connector, vault_secrets *out, ar_error *err);
/* Wipe and free what vault_get_all returned; safe on a zeroed struct. */
void vault_secrets_free(vault_secrets *s);

/* Re-encrypt everything under a new master key, as described above. Key-file mode: a new
 * random key (written to <key_file>.new, then renamed); new_passphrase must be NULL
 * ("vault_mode_mismatch"). Passphrase mode: new_passphrase (a new salt; required, else
 * "vault_key_invalid"). Returns the number of secrets re-encrypted in *count when not NULL.
 * A record that does not decrypt is "secret_corrupt" and nothing changes; secrets that keep
 * changing while it runs (it retries a few times) are AR_E_BUSY, "vault_busy". */
int vault_rotate(vault *v, const char *new_passphrase, size_t new_passphrase_len, size_t *count,
                 ar_error *err);

#endif
