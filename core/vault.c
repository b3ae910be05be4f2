/*
 * vault.c - connector credentials encrypted at rest (see vault.h).
 *
 * Layout in JDB_SECRETS (each value behind the journal's own format byte):
 *
 *   connector '\0' name -> record: version u32 LE | created_ms i64 LE | updated_ms i64 LE |
 *                          nonce[24] | XChaCha20-Poly1305(value) (len + 16 bytes)
 *   "\0meta"            -> meta: format u8 (1) | mode u8 (1 key file, 2 passphrase) |
 *                          salt[16] | opslimit u64 LE | memlimit u64 LE | alg u32 LE |
 *                          nonce[24] | AEAD(VERIFIER_TEXT) under the master key, with the
 *                          bytes before the nonce as associated data
 *   "\0serial"          -> u64 LE, +1 on every set and remove: a rotation that read the
 *                          records at serial s commits only if the serial is still s, so no
 *                          secret written meanwhile is left under the old key.
 *
 * Keys starting with '\0' are the vault's own (a connector name is never empty).
 *
 * Several processes may share one vault. A vault whose meta changed since it was unlocked
 * (another process rotated it) notices before using its key: in key-file mode it loads the
 * key file again, in passphrase mode it refuses (vault_wrong_key). Writes check the meta inside
 * their transaction, so nothing is ever written under a key that is no longer the vault's.
 * The key file's directory is locked (flock) while a process rotates or looks at
 * <key_file>.new, so that a vault_open elsewhere never removes a .new that a running rotation
 * still needs.
 *
 * A rotation first commits the same key's meta with a fresh verifier: from then on the writes
 * of every other vault instance fail their meta check and wait (on the directory lock, in
 * refresh_key) for the rotation to end, so a busy writer cannot starve it. It then reads every
 * record in one snapshot, re-encrypts them outside the writer thread, and commits them with
 * the new meta in one batch, after checking that the meta and the serial are still those of
 * its snapshot (else it reads again, a few times).
 */
#include "vault.h"

#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#define META_KEY "\0meta"
#define META_KEY_LEN 5
#define SERIAL_KEY "\0serial"
#define SERIAL_KEY_LEN 7

#define META_FORMAT 1
#define MODE_KEY_FILE 1
#define MODE_PASSPHRASE 2

#define SALT_LEN crypto_pwhash_SALTBYTES /* 16 */
#define NONCE_LEN crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_LEN crypto_aead_xchacha20poly1305_ietf_ABYTES
#define META_HDR_LEN (1 + 1 + SALT_LEN + 8 + 8 + 4)
#define VERIFIER_TEXT "aiorun vault verifier, format 1" /* 31 bytes + NUL = 32 */
#define VERIFIER_LEN 32
#define META_LEN (META_HDR_LEN + NONCE_LEN + VERIFIER_LEN + TAG_LEN)

#define REC_HDR_LEN 20
#define REC_MIN_LEN (REC_HDR_LEN + NONCE_LEN + TAG_LEN)
#define AD_PREFIX "aiorun-secret-v1"
#define AD_MAX (sizeof AD_PREFIX + VAULT_NAME_MAX + VAULT_NAME_MAX + 4)
#define KDF_CONTEXT "aiorunv1"

/* A meta record may name Argon2id limits up to these (a tampered one must not make us
 * allocate without bound before its verifier fails). */
#define MAX_OPSLIMIT 64ULL
#define MAX_MEMLIMIT (4ULL << 30)

#define ROTATE_ATTEMPTS 5
#define SET_ATTEMPTS 8        /* a call that finds the vault re-keyed loads the key, tries again */

struct vault {
    journal *j;
    pthread_mutex_t mu;
    int mode;
    char *key_file;                /* key-file mode: the path; NULL in passphrase mode */
    unsigned char *master;         /* sodium_malloc'd VAULT_KEY_LEN; PROT_NONE at rest */
    unsigned char *work;           /* sodium_malloc'd VAULT_KEY_LEN: a subkey while one is used */
    unsigned char meta[META_LEN];  /* the meta record the master key opens */
};

/* ---- small helpers ------------------------------------------------------------------------ */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* 1..VAULT_NAME_MAX-1 bytes. */
static bool valid_name(const char *s)
{
    if (!s)
        return false;
    size_t n = strnlen(s, VAULT_NAME_MAX);
    return n > 0 && n < VAULT_NAME_MAX;
}

static int io_error(ar_error *err, const char *code, const char *what, const char *path)
{
    return ar_error_set(err, AR_E_IO, code, "%s %s: %s", what, path, strerror(errno));
}

static int nomem(ar_error *err)
{
    return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory in the vault");
}

/* The guarded key memory: PROT_NONE unless a call (holding v->mu) uses it. */
static void keys_readable(vault *v)
{
    sodium_mprotect_readonly(v->master);
    sodium_mprotect_readwrite(v->work);
}

static void keys_writable(vault *v)
{
    sodium_mprotect_readwrite(v->master);
    sodium_mprotect_readwrite(v->work);
}

static void keys_sealed(vault *v)
{
    sodium_memzero(v->work, VAULT_KEY_LEN);
    sodium_mprotect_noaccess(v->work);
    sodium_mprotect_noaccess(v->master);
}

/* The subkey of connector under master, into out. */
static void derive_subkey(unsigned char out[VAULT_KEY_LEN], const unsigned char *master,
                          const char *connector)
{
    unsigned char h[crypto_generichash_BYTES];
    crypto_generichash(h, sizeof h, (const unsigned char *)connector, strlen(connector), NULL, 0);
    crypto_kdf_derive_from_key(out, VAULT_KEY_LEN, get_u64(h), KDF_CONTEXT, master);
}

/* "aiorun-secret-v1" '\0' connector '\0' name '\0' version (u32 LE); returns its length. */
static size_t build_ad(unsigned char *ad, const char *connector, const char *name,
                       uint32_t version)
{
    size_t n = 0, c = strlen(connector), m = strlen(name);
    memcpy(ad, AD_PREFIX, sizeof AD_PREFIX); /* with its '\0' */
    n += sizeof AD_PREFIX;
    memcpy(ad + n, connector, c + 1);
    n += c + 1;
    memcpy(ad + n, name, m + 1);
    n += m + 1;
    put_u32(ad + n, version);
    return n + 4;
}

/* connector '\0' name into key; returns its length. */
static size_t record_key(char *key, const char *connector, const char *name)
{
    size_t c = strlen(connector), m = strlen(name);
    memcpy(key, connector, c);
    key[c] = '\0';
    memcpy(key + c + 1, name, m);
    return c + 1 + m;
}

/* Encrypt value into rec (REC_MIN_LEN + len bytes) with a fresh nonce. */
static void seal_record(unsigned char *rec, const unsigned char *subkey, const char *connector,
                        const char *name, uint32_t version, int64_t created, int64_t updated,
                        const void *value, size_t len)
{
    unsigned char ad[AD_MAX];
    size_t adlen = build_ad(ad, connector, name, version);
    put_u32(rec, version);
    put_u64(rec + 4, (uint64_t)created);
    put_u64(rec + 12, (uint64_t)updated);
    randombytes_buf(rec + REC_HDR_LEN, NONCE_LEN);
    crypto_aead_xchacha20poly1305_ietf_encrypt(rec + REC_HDR_LEN + NONCE_LEN, NULL, value, len,
                                               ad, adlen, NULL, rec + REC_HDR_LEN, subkey);
}

/* Decrypt rec (reclen bytes) into out (at least reclen - REC_MIN_LEN bytes). 0 or -1. */
static int open_record(unsigned char *out, const unsigned char *rec, size_t reclen,
                       const unsigned char *subkey, const char *connector, const char *name)
{
    unsigned char ad[AD_MAX];
    if (reclen < REC_MIN_LEN || reclen - REC_MIN_LEN > VAULT_MAX_SECRET_LEN)
        return -1;
    size_t adlen = build_ad(ad, connector, name, get_u32(rec));
    return crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, NULL, NULL, rec + REC_HDR_LEN + NONCE_LEN, reclen - REC_HDR_LEN - NONCE_LEN, ad,
        adlen, rec + REC_HDR_LEN, subkey);
}

/* ---- the meta record ---------------------------------------------------------------------- */

typedef struct meta_info {
    int mode;
    unsigned char salt[SALT_LEN];
    uint64_t opslimit, memlimit;
    uint32_t alg;
} meta_info;

static int parse_meta(const unsigned char *m, size_t len, meta_info *out, ar_error *err)
{
    if (len < 1 || m[0] != META_FORMAT)
        return ar_error_set(err, AR_E_FORMAT, "vault_format",
                            "the vault was written by a newer aiorun (meta format %d; this build "
                            "reads %d)", len ? m[0] : 0, META_FORMAT);
    if (len != META_LEN || (m[1] != MODE_KEY_FILE && m[1] != MODE_PASSPHRASE))
        return ar_error_set(err, AR_E_FORMAT, "vault_format", "the vault's meta record is damaged");
    out->mode = m[1];
    memcpy(out->salt, m + 2, SALT_LEN);
    out->opslimit = get_u64(m + 2 + SALT_LEN);
    out->memlimit = get_u64(m + 10 + SALT_LEN);
    out->alg = get_u32(m + 18 + SALT_LEN);
    return AR_OK;
}

/* A meta record for master: mode, salt and limits (passphrase mode), a fresh verifier. */
static void build_meta(unsigned char m[META_LEN], int mode, const unsigned char *salt,
                       uint64_t opslimit, uint64_t memlimit, uint32_t alg,
                       const unsigned char *master)
{
    memset(m, 0, META_LEN);
    m[0] = META_FORMAT;
    m[1] = (unsigned char)mode;
    if (salt)
        memcpy(m + 2, salt, SALT_LEN);
    put_u64(m + 2 + SALT_LEN, opslimit);
    put_u64(m + 10 + SALT_LEN, memlimit);
    put_u32(m + 18 + SALT_LEN, alg);
    randombytes_buf(m + META_HDR_LEN, NONCE_LEN);
    crypto_aead_xchacha20poly1305_ietf_encrypt(m + META_HDR_LEN + NONCE_LEN, NULL,
                                               (const unsigned char *)VERIFIER_TEXT,
                                               VERIFIER_LEN, m, META_HDR_LEN, NULL,
                                               m + META_HDR_LEN, master);
}

/* Does master open the verifier of meta m? */
static bool key_verifies(const unsigned char *m, const unsigned char *master)
{
    unsigned char text[VERIFIER_LEN];
    int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
        text, NULL, NULL, m + META_HDR_LEN + NONCE_LEN, VERIFIER_LEN + TAG_LEN, m, META_HDR_LEN,
        m + META_HDR_LEN, master);
    bool ok = rc == 0 && memcmp(text, VERIFIER_TEXT, VERIFIER_LEN) == 0;
    sodium_memzero(text, sizeof text);
    return ok;
}

/* The meta record now (copied into m, META_LEN bytes) and the serial; AR_E_NOTFOUND when the
 * vault has no meta yet. */
static int read_meta(journal_read *r, unsigned char m[META_LEN], uint64_t *serial, ar_error *err)
{
    const void *val;
    size_t len;
    int rc = journal_get(r, JDB_SECRETS, META_KEY, META_KEY_LEN, &val, &len);
    if (rc == AR_E_NOTFOUND)
        return AR_E_NOTFOUND;
    if (rc != AR_OK)
        return ar_error_set(err, rc, "vault_io", "cannot read the vault's meta record (%d)", rc);
    meta_info info;
    if ((rc = parse_meta(val, len, &info, err)) != AR_OK)
        return rc;
    memcpy(m, val, META_LEN);
    if (serial) {
        *serial = 0;
        rc = journal_get(r, JDB_SECRETS, SERIAL_KEY, SERIAL_KEY_LEN, &val, &len);
        if (rc == AR_OK && len == 8)
            *serial = get_u64(val);
        else if (rc != AR_E_NOTFOUND)
            return ar_error_set(err, AR_E_FORMAT, "vault_format", "the vault's serial is damaged");
    }
    return AR_OK;
}

/* read_meta in a read transaction of its own. */
static int snapshot_meta(journal *j, unsigned char m[META_LEN], ar_error *err)
{
    journal_read *r;
    int rc = journal_read_begin(j, &r, err);
    if (rc != AR_OK)
        return rc;
    rc = read_meta(r, m, NULL, err);
    journal_read_end(r);
    return rc;
}

/* Inside a write: the meta must still be the one v's key opens. */
static int txn_check_meta(journal_txn *txn, const unsigned char *expected, ar_error *err)
{
    const void *val;
    size_t len;
    int rc = journal_txn_get(txn, JDB_SECRETS, META_KEY, META_KEY_LEN, &val, &len);
    if (rc == AR_OK && len == META_LEN && memcmp(val, expected, META_LEN) == 0)
        return AR_OK;
    if (rc != AR_OK && rc != AR_E_NOTFOUND)
        return rc;
    return ar_error_set(err, AR_E_BUSY, "vault_key_changed",
                        "the vault was re-keyed by another process");
}

/* Inside a write: serial + 1. */
static int txn_bump_serial(journal_txn *txn)
{
    const void *val;
    size_t len;
    uint64_t s = 0;
    int rc = journal_txn_get(txn, JDB_SECRETS, SERIAL_KEY, SERIAL_KEY_LEN, &val, &len);
    if (rc == AR_OK && len == 8)
        s = get_u64(val);
    else if (rc != AR_OK && rc != AR_E_NOTFOUND)
        return rc;
    unsigned char buf[8];
    put_u64(buf, s + 1);
    return journal_txn_put(txn, JDB_SECRETS, SERIAL_KEY, SERIAL_KEY_LEN, buf, sizeof buf);
}

/* ---- key files ---------------------------------------------------------------------------- */

static int read_all(int fd, unsigned char *p, size_t cap, size_t *got)
{
    *got = 0;
    while (*got < cap) {
        ssize_t r = read(fd, p + *got, cap - *got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        *got += (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read a key file into key (VAULT_KEY_LEN): 32 raw bytes, or 64 hex characters and an
 * optional newline; a regular file owned by us that neither group nor others may use. */
static int read_key_file(const char *path, unsigned char *key, ar_error *err)
{
    unsigned char buf[80];
    size_t n = 0;
    int status = AR_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return ar_error_set(err, AR_E_NOTFOUND, "vault_key_missing",
                                "the vault key file %s does not exist: create it with `aioctl "
                                "vault init` (then back it up), or restore it from a backup",
                                path);
        return io_error(err, "vault_key_io", "cannot open the vault key file", path);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        status = io_error(err, "vault_key_io", "cannot stat the vault key file", path);
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        status = ar_error_set(err, AR_E_INVALID, "vault_key_invalid",
                              "the vault key file %s is not a regular file", path);
        goto done;
    }
    if (st.st_uid != geteuid()) {
        status = ar_error_set(err, AR_E_INVALID, "vault_key_owner",
                              "the vault key file %s belongs to uid %u, not to this process's "
                              "uid %u: chown it to the daemon's user (and chmod 600 %s)", path,
                              (unsigned)st.st_uid, (unsigned)geteuid(), path);
        goto done;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        status = ar_error_set(err, AR_E_INVALID, "vault_key_mode",
                              "the vault key file %s may be used by group or others (mode %04o): "
                              "chmod 600 %s", path, (unsigned)(st.st_mode & 07777), path);
        goto done;
    }
    if (read_all(fd, buf, sizeof buf, &n) != 0) {
        status = io_error(err, "vault_key_io", "cannot read the vault key file", path);
        goto done;
    }
    size_t bin_len = 0;
    const char *end = NULL;
    if (n == VAULT_KEY_LEN) {
        memcpy(key, buf, VAULT_KEY_LEN);
    } else if ((n == 2 * VAULT_KEY_LEN || (n == 2 * VAULT_KEY_LEN + 1 && buf[n - 1] == '\n')) &&
               sodium_hex2bin(key, VAULT_KEY_LEN, (const char *)buf, 2 * VAULT_KEY_LEN, NULL,
                              &bin_len, &end) == 0 &&
               bin_len == VAULT_KEY_LEN && end == (const char *)buf + 2 * VAULT_KEY_LEN) {
        /* hex */
    } else {
        sodium_memzero(key, VAULT_KEY_LEN);
        status = ar_error_set(err, AR_E_INVALID, "vault_key_invalid",
                              "%s is not a vault key: expected 64 hex characters and a newline, "
                              "or 32 raw bytes (it holds %zu%s bytes)", path, n,
                              n == sizeof buf ? " or more" : "");
    }
done:
    sodium_memzero(buf, sizeof buf);
    close(fd);
    return status;
}

/* Create path (O_EXCL, 0600 whatever the umask) holding key as 64 hex characters and a
 * newline, synced. AR_E_EXISTS when it exists. */
static int write_key_file(const char *path, const unsigned char *key, ar_error *err)
{
    char hex[2 * VAULT_KEY_LEN + 1];
    int status = AR_OK;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return ar_error_set(err, AR_E_EXISTS, "vault_key_exists",
                                "%s already exists: it is never overwritten", path);
        return io_error(err, "vault_key_io", "cannot create the vault key file", path);
    }
    sodium_bin2hex(hex, sizeof hex, key, VAULT_KEY_LEN);
    hex[2 * VAULT_KEY_LEN] = '\n';
    if (fchmod(fd, 0600) != 0)
        status = io_error(err, "vault_key_io", "cannot chmod the vault key file", path);
    else if (write_all(fd, (const unsigned char *)hex, sizeof hex) != 0)
        status = io_error(err, "vault_key_io", "cannot write the vault key file", path);
    else if (fsync(fd) != 0)
        status = io_error(err, "vault_key_io", "cannot sync the vault key file", path);
    sodium_memzero(hex, sizeof hex);
    close(fd);
    if (status != AR_OK)
        unlink(path);
    return status;
}

/* The directory of path, opened (O_DIRECTORY) into *dfd, for fsync and flock. A missing
 * directory is AR_E_NOTFOUND, "vault_key_missing". */
static int open_parent_dir(const char *path, int *dfd, ar_error *err)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    *dfd = -1;
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) >= sizeof dir)
        return ar_error_set(err, AR_E_INVALID, "vault_key_invalid", "the vault key path is too long");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if ((*dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0)
        return AR_OK;
    if (errno == ENOENT)
        return ar_error_set(err, AR_E_NOTFOUND, "vault_key_missing",
                            "the directory %s of the vault key file %s does not exist", dir, path);
    return io_error(err, "vault_key_io", "cannot open the directory of", path);
}

/* Lock the key file's directory against other processes' rotations (flock on *dfd, released
 * when it is closed or the process dies). */
static int lock_key_dir(const char *key_file, int *dfd, ar_error *err)
{
    int status = open_parent_dir(key_file, dfd, err);
    if (status != AR_OK)
        return status;
    while (flock(*dfd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            status = io_error(err, "vault_key_io", "cannot lock the directory of", key_file);
            close(*dfd);
            *dfd = -1;
            return status;
        }
    }
    return AR_OK;
}

static void unlock_key_dir(int dfd)
{
    if (dfd >= 0)
        close(dfd); /* releases the flock */
}

static int new_key_path(const char *key_file, char *buf, size_t cap, ar_error *err)
{
    int n = snprintf(buf, cap, "%s.new", key_file);
    if (n < 0 || (size_t)n >= cap)
        return ar_error_set(err, AR_E_INVALID, "vault_key_invalid", "the vault key path is too long");
    return AR_OK;
}

int vault_key_create(const char *key_file, ar_error *err)
{
    char tmp[PATH_MAX];
    unsigned char rnd[8];
    int status;

    if (!key_file || !*key_file)
        return ar_error_set(err, AR_E_INVALID, "vault_key_invalid", "no vault key file given");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "vault_init", "libsodium cannot be initialised");
    randombytes_buf(rnd, sizeof rnd);
    int n = snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%02x%02x%02x%02x%02x%02x%02x%02x", key_file,
                     (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6],
                     rnd[7]);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return ar_error_set(err, AR_E_INVALID, "vault_key_invalid", "the vault key path is too long");
    int dfd;
    if ((status = open_parent_dir(key_file, &dfd, err)) != AR_OK)
        return status == AR_E_NOTFOUND
                   ? ar_error_set(err, AR_E_IO, "vault_key_io",
                                  "cannot create %s: its directory does not exist", key_file)
                   : status;
    if (access(key_file, F_OK) == 0 || errno != ENOENT) {
        close(dfd);
        return ar_error_set(err, AR_E_EXISTS, "vault_key_exists",
                            "%s already exists: it is never overwritten (move it away first if "
                            "you really mean to replace it: every secret it encrypts is lost)",
                            key_file);
    }
    unsigned char *key = sodium_malloc(VAULT_KEY_LEN);
    if (!key) {
        close(dfd);
        return nomem(err);
    }
    crypto_kdf_keygen(key);
    /* Written whole under a private name, then linked into place: nobody ever sees a
     * half-written key file, and link refuses to replace one that appeared meanwhile. */
    status = write_key_file(tmp, key, err);
    sodium_free(key);
    if (status == AR_E_EXISTS)
        status = ar_error_set(err, AR_E_IO, "vault_key_io", "temporary file %s exists", tmp);
    if (status != AR_OK)
        goto done;
    if (link(tmp, key_file) != 0) {
        status = errno == EEXIST
                     ? ar_error_set(err, AR_E_EXISTS, "vault_key_exists",
                                    "%s already exists: it is never overwritten", key_file)
                     : io_error(err, "vault_key_io", "cannot create the vault key file", key_file);
    }
    unlink(tmp);
    if (status == AR_OK && fsync(dfd) != 0)
        status = io_error(err, "vault_key_io", "cannot sync the directory of", key_file);
done:
    close(dfd);
    return status;
}

/* Key-file mode, with the key directory locked: find the key that opens meta m and put it in
 * v->master (writable). The key file's key; else the key of a rotation that committed and
 * crashed before its rename (<key_file>.new), which is then renamed into place; a .new beside a
 * key file that verifies is stale (a rotation that died before its commit) and removed.
 * Nothing on disk changes when no key verifies: vault_wrong_key. */
static int unlock_key_file(vault *v, const unsigned char *m, int dfd, ar_error *err)
{
    char new_path[PATH_MAX];
    int status = new_key_path(v->key_file, new_path, sizeof new_path, err);
    if (status != AR_OK)
        return status;
    if ((status = read_key_file(v->key_file, v->master, err)) != AR_OK)
        return status;
    if (key_verifies(m, v->master)) {
        if (unlink(new_path) == 0) {
            ar_log("INFO", "vault: removed %s, left by a key rotation that did not finish "
                   "(the vault still uses %s)", new_path, v->key_file);
            fsync(dfd);
        }
        return AR_OK;
    }
    ar_error ignored;
    if (read_key_file(new_path, v->master, &ignored) == AR_OK && key_verifies(m, v->master)) {
        if (rename(new_path, v->key_file) != 0)
            return io_error(err, "vault_key_io", "cannot complete the key rotation: rename to",
                            v->key_file);
        fsync(dfd);
        ar_log("WARN", "vault: completed an interrupted key rotation: %s is the new key",
               v->key_file);
        return AR_OK;
    }
    sodium_memzero(v->master, VAULT_KEY_LEN);
    return ar_error_set(err, AR_E_INVALID, "vault_wrong_key",
                        "the key in %s does not open this vault (it was made with another "
                        "key): restore the vault's own key file", v->key_file);
}

/* Passphrase mode: the master key of passphrase under the limits and salt of info, into
 * v->master (writable). */
static int derive_passphrase(vault *v, const char *pass, size_t len, const meta_info *info,
                             ar_error *err)
{
    if (info->alg != crypto_pwhash_ALG_ARGON2ID13 || info->opslimit < crypto_pwhash_OPSLIMIT_MIN ||
        info->opslimit > MAX_OPSLIMIT || info->memlimit < crypto_pwhash_MEMLIMIT_MIN ||
        info->memlimit > MAX_MEMLIMIT)
        return ar_error_set(err, AR_E_FORMAT, "vault_format",
                            "the vault's passphrase parameters are damaged or unsupported");
    if (crypto_pwhash(v->master, VAULT_KEY_LEN, pass, len, info->salt, info->opslimit,
                      (size_t)info->memlimit, (int)info->alg) != 0)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory",
                            "Argon2id needs %llu MiB to unlock the vault and could not get it "
                            "(the process needs about 300 MiB of address space)",
                            (unsigned long long)(info->memlimit >> 20));
    return AR_OK;
}

/* Is there any secret record (a key not starting with '\0')? */
static int has_records(journal_read *r, bool *any)
{
    journal_cursor *c;
    const void *key = "\x01";
    size_t klen = 1;
    *any = false;
    int rc = journal_cursor_open(r, JDB_SECRETS, &c);
    if (rc != AR_OK)
        return rc;
    rc = journal_cursor_get(c, JOURNAL_SEEK_GE, &key, &klen, NULL, NULL);
    journal_cursor_close(c);
    if (rc == AR_OK || rc == AR_E_FORMAT)
        *any = true;
    return rc == AR_E_NOTFOUND || rc == AR_E_FORMAT ? AR_OK : rc;
}

/* The vault has no meta yet: make one for the key (key file; its directory locked, dfd) or a
 * new salt (passphrase) and insert it unless another process did first (AR_E_EXISTS: the
 * caller starts over). */
static int create_meta(vault *v, const vault_opts *opts, int dfd, ar_error *err)
{
    journal_read *r;
    bool any = false;
    int status = journal_read_begin(v->j, &r, err);
    if (status != AR_OK)
        return status;
    status = has_records(r, &any);
    journal_read_end(r);
    if (status != AR_OK)
        return ar_error_set(err, status, "vault_io", "cannot read the vault (%d)", status);
    if (any)
        return ar_error_set(err, AR_E_FORMAT, "vault_format",
                            "the vault holds secrets but no meta record: it is damaged");

    unsigned char m[META_LEN];
    if (v->mode == MODE_PASSPHRASE) {
        meta_info info = {.mode = MODE_PASSPHRASE,
                          .opslimit = crypto_pwhash_OPSLIMIT_MODERATE,
                          .memlimit = crypto_pwhash_MEMLIMIT_MODERATE,
                          .alg = crypto_pwhash_ALG_ARGON2ID13};
        randombytes_buf(info.salt, SALT_LEN);
        if ((status = derive_passphrase(v, opts->passphrase, opts->passphrase_len, &info, err)))
            return status;
        build_meta(m, MODE_PASSPHRASE, info.salt, info.opslimit, info.memlimit, info.alg,
                   v->master);
    } else {
        if ((status = read_key_file(v->key_file, v->master, err)) != AR_OK)
            return status;
        build_meta(m, MODE_KEY_FILE, NULL, 0, 0, 0, v->master);
    }
    journal_batch *b = journal_batch_new();
    journal_batch_put_unless_exists(b, JDB_SECRETS, META_KEY, META_KEY_LEN, m, META_LEN);
    status = journal_commit(v->j, b, err);
    journal_batch_free(b);
    if (status != AR_OK)
        return status;
    memcpy(v->meta, m, META_LEN);
    char new_path[PATH_MAX];
    /* A .new beside a vault that had no meta cannot belong to a rotation (there was nothing
     * to rotate). */
    if (v->mode == MODE_KEY_FILE && new_key_path(v->key_file, new_path, sizeof new_path, err) ==
                                        AR_OK && unlink(new_path) == 0)
        fsync(dfd);
    return AR_OK;
}

/* Unlock with the vault's meta m (v->master writable; key-file mode: its directory locked,
 * dfd, since before m was read). */
static int unlock_existing(vault *v, const vault_opts *opts, const unsigned char *m, int dfd,
                           ar_error *err)
{
    meta_info info;
    int status = parse_meta(m, META_LEN, &info, err);
    if (status != AR_OK)
        return status;
    if (info.mode != v->mode)
        return ar_error_set(err, AR_E_INVALID, "vault_mode_mismatch",
                            info.mode == MODE_PASSPHRASE
                                ? "this vault is unlocked with a passphrase "
                                  "(vault_passphrase_file in the config), not a key file"
                                : "this vault is unlocked with a key file (vault_key_file in "
                                  "the config), not a passphrase");
    if (v->mode == MODE_PASSPHRASE) {
        if ((status = derive_passphrase(v, opts->passphrase, opts->passphrase_len, &info, err)))
            return status;
        if (!key_verifies(m, v->master)) {
            sodium_memzero(v->master, VAULT_KEY_LEN);
            return ar_error_set(err, AR_E_INVALID, "vault_wrong_key",
                                "the passphrase does not open this vault");
        }
    } else if ((status = unlock_key_file(v, m, dfd, err)) != AR_OK) {
        return status;
    }
    memcpy(v->meta, m, META_LEN);
    return AR_OK;
}

/* Another process re-keyed the vault since v was unlocked (its meta is no longer v->meta):
 * key-file mode loads the key again; passphrase mode cannot. Called with v->mu held and the
 * keys sealed; leaves them sealed. */
static int refresh_key(vault *v, ar_error *err)
{
    unsigned char m[META_LEN];
    int status;
    if (v->mode == MODE_PASSPHRASE)
        return ar_error_set(err, AR_E_INVALID, "vault_wrong_key",
                            "the vault was re-keyed with a new passphrase by another process: "
                            "unlock it again with the new passphrase");
    int dfd;
    if ((status = lock_key_dir(v->key_file, &dfd, err)) != AR_OK)
        return status;
    if ((status = snapshot_meta(v->j, m, err)) == AR_OK) {
        keys_writable(v);
        status = unlock_key_file(v, m, dfd, err);
        keys_sealed(v);
        if (status == AR_OK)
            memcpy(v->meta, m, META_LEN);
    } else if (status == AR_E_NOTFOUND) {
        status = ar_error_set(err, AR_E_FORMAT, "vault_format", "the vault's meta record is gone");
    }
    unlock_key_dir(dfd);
    return status;
}

int vault_open(journal *j, const vault_opts *opts, vault **out, ar_error *err)
{
    *out = NULL;
    if (!j || !opts)
        return ar_error_set(err, AR_E_INVALID, "vault_key_missing", "vault_open needs a journal and options");
    if (!opts->passphrase && (!opts->key_file || !*opts->key_file))
        return ar_error_set(err, AR_E_NOTFOUND, "vault_key_missing",
                            "no vault key file given (vault_key_file): create one with `aioctl "
                            "vault init`");
    if (opts->passphrase && opts->passphrase_len == 0)
        return ar_error_set(err, AR_E_INVALID, "vault_key_invalid", "the vault passphrase is empty");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "vault_init", "libsodium cannot be initialised");

    vault *v = calloc(1, sizeof *v);
    if (!v)
        return nomem(err);
    v->j = j;
    v->mode = opts->passphrase ? MODE_PASSPHRASE : MODE_KEY_FILE;
    pthread_mutex_init(&v->mu, NULL);
    int status;
    if (!(v->master = sodium_malloc(VAULT_KEY_LEN)) || !(v->work = sodium_malloc(VAULT_KEY_LEN))) {
        status = ar_error_set(err, AR_E_NOMEM, "out_of_memory",
                              "cannot allocate guarded memory for the vault key");
        goto fail;
    }
    if (v->mode == MODE_KEY_FILE && !(v->key_file = strdup(opts->key_file))) {
        status = nomem(err);
        goto fail;
    }
    keys_writable(v);
    status = AR_E_EXISTS;
    for (int attempt = 0; attempt < 3 && status == AR_E_EXISTS; attempt++) {
        unsigned char m[META_LEN];
        int dfd = -1;
        /* Key-file mode: lock first, so that no rotation elsewhere moves the meta or the key
         * files between what is read here and what is decided about them. */
        if (v->mode == MODE_KEY_FILE && (status = lock_key_dir(v->key_file, &dfd, err)) != AR_OK)
            break;
        status = snapshot_meta(j, m, err);
        if (status == AR_OK)
            status = unlock_existing(v, opts, m, dfd, err);
        else if (status == AR_E_NOTFOUND)
            status = create_meta(v, opts, dfd, err); /* AR_E_EXISTS: another process made one */
        unlock_key_dir(dfd);
    }
    keys_sealed(v);
    if (status == AR_E_EXISTS)
        status = ar_error_set(err, AR_E_BUSY, "vault_busy", "the vault's meta record keeps changing");
    if (status != AR_OK)
        goto fail;
    ar_error_clear(err);
    *out = v;
    return AR_OK;
fail:
    vault_free(v);
    return status;
}

void vault_free(vault *v)
{
    if (!v)
        return;
    if (v->master)
        sodium_free(v->master); /* sodium_free wipes whatever the protection */
    if (v->work)
        sodium_free(v->work);
    free(v->key_file);
    pthread_mutex_destroy(&v->mu);
    free(v);
}

/* ---- set and remove ----------------------------------------------------------------------- */

typedef struct set_ctx {
    vault *v;
    const char *connector, *name;
    const void *value;
    size_t len;
    char key[2 * VAULT_NAME_MAX];
    size_t klen;
    unsigned char *rec;           /* REC_MIN_LEN + len */
    int64_t now;
    const char *by;               /* for the audit entry */
    uint32_t version;             /* out */
} set_ctx;

static int set_apply(journal_txn *txn, void *arg, ar_error *err)
{
    set_ctx *c = arg;
    const void *old;
    size_t oldlen;
    int rc = txn_check_meta(txn, c->v->meta, err);
    if (rc != AR_OK)
        return rc;
    uint32_t version = 1;
    int64_t created = c->now;
    rc = journal_txn_get(txn, JDB_SECRETS, c->key, c->klen, &old, &oldlen);
    if (rc == AR_OK) {
        if (oldlen < REC_MIN_LEN)
            return ar_error_set(err, AR_E_INVALID, "secret_corrupt",
                                "the stored secret %s of connector %s is damaged: remove it",
                                c->name, c->connector);
        if (get_u32(old) == UINT32_MAX)
            return ar_error_set(err, AR_E_INVALID, "secret_invalid",
                                "secret %s of connector %s has reached the last version: remove "
                                "it and set it again", c->name, c->connector);
        version = get_u32(old) + 1;
        created = (int64_t)get_u64((const unsigned char *)old + 4);
    } else if (rc != AR_E_NOTFOUND) {
        return rc;
    }
    seal_record(c->rec, c->v->work, c->connector, c->name, version, created, c->now, c->value,
                c->len);
    if ((rc = journal_txn_put(txn, JDB_SECRETS, c->key, c->klen, c->rec, REC_MIN_LEN + c->len)))
        return rc;
    if ((rc = txn_bump_serial(txn)) != AR_OK)
        return rc;
    /* By name and version only: never the value. */
    if ((rc = audit_txn_append(txn, "secret_set", NULL, json_pack("{s:s, s:s, s:I, s:s}", "connector", c->connector,
                               "name", c->name, "version", (json_int_t)version, "by", c->by), c->now, NULL, err)))
        return rc;
    c->version = version;
    return AR_OK;
}

int vault_set(vault *v, const char *connector, const char *name, const void *value, size_t len,
              uint32_t *version, ar_error *err)
{
    return vault_set_by(v, NULL, connector, name, value, len, version, err);
}

int vault_set_by(vault *v, const char *by, const char *connector, const char *name, const void *value,
                 size_t len, uint32_t *version, ar_error *err)
{
    if (!v || !valid_name(connector) || !valid_name(name))
        return ar_error_set(err, AR_E_INVALID, "secret_invalid",
                            "connector and secret names must be 1 to %d bytes", VAULT_NAME_MAX - 1);
    if (!value || len == 0 || len > VAULT_MAX_SECRET_LEN)
        return ar_error_set(err, AR_E_INVALID, "secret_invalid",
                            "a secret value must be 1 to %d bytes (secret %s of connector %s has "
                            "%zu)", VAULT_MAX_SECRET_LEN, name, connector, len);
    ar_error local;
    if (!err)
        err = &local;
    ar_error_clear(err);
    set_ctx c = {.v = v, .connector = connector, .name = name, .value = value, .len = len,
                 .by = by ? by : "unknown"};
    c.klen = record_key(c.key, connector, name);
    if (!(c.rec = malloc(REC_MIN_LEN + len)))
        return nomem(err);
    int status;
    pthread_mutex_lock(&v->mu);
    for (int attempt = 0;; attempt++) {
        c.now = ar_now_ms();
        journal_batch *b = journal_batch_new();
        journal_batch_apply(b, set_apply, &c);
        keys_readable(v);
        derive_subkey(v->work, v->master, connector);
        status = journal_commit(v->j, b, err);
        keys_sealed(v);
        journal_batch_free(b);
        if (status != AR_E_BUSY || strcmp(err->code, "vault_key_changed") != 0 ||
            attempt + 1 >= SET_ATTEMPTS)
            break;
        if ((status = refresh_key(v, err)) != AR_OK)
            break;
    }
    pthread_mutex_unlock(&v->mu);
    free(c.rec); /* ciphertext only */
    if (status == AR_OK && version)
        *version = c.version;
    return status;
}

typedef struct remove_ctx {
    const char *connector, *name;
    const char *by;
    char key[2 * VAULT_NAME_MAX];
    size_t klen;
} remove_ctx;

static int remove_apply(journal_txn *txn, void *arg, ar_error *err)
{
    remove_ctx *c = arg;
    int rc = journal_txn_get(txn, JDB_SECRETS, c->key, c->klen, NULL, NULL);
    if (rc == AR_E_NOTFOUND)
        return ar_error_set(err, AR_E_NOTFOUND, "secret_not_found",
                            "connector %s has no secret %s", c->connector, c->name);
    if (rc != AR_OK && rc != AR_E_FORMAT)
        return rc;
    if ((rc = journal_txn_del(txn, JDB_SECRETS, c->key, c->klen)) != AR_OK)
        return rc;
    if ((rc = audit_txn_append(txn, "secret_removed", NULL, json_pack("{s:s, s:s, s:s}", "connector", c->connector,
                               "name", c->name, "by", c->by), ar_now_ms(), NULL, err)) != AR_OK)
        return rc;
    return txn_bump_serial(txn);
}

int vault_remove(vault *v, const char *connector, const char *name, ar_error *err)
{
    return vault_remove_by(v, NULL, connector, name, err);
}

int vault_remove_by(vault *v, const char *by, const char *connector, const char *name, ar_error *err)
{
    if (!v || !valid_name(connector) || !valid_name(name))
        return ar_error_set(err, AR_E_INVALID, "secret_invalid",
                            "connector and secret names must be 1 to %d bytes", VAULT_NAME_MAX - 1);
    remove_ctx c = {.connector = connector, .name = name, .by = by ? by : "unknown"};
    c.klen = record_key(c.key, connector, name);
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, remove_apply, &c);
    pthread_mutex_lock(&v->mu);
    int status = journal_commit(v->j, b, err);
    pthread_mutex_unlock(&v->mu);
    journal_batch_free(b);
    return status;
}

/* ---- reading ------------------------------------------------------------------------------ */

/* Split a record key into connector and name (NUL-terminated copies); false when it is not
 * one (the vault's own keys, or damaged). */
static bool split_key(const void *key, size_t klen, char connector[VAULT_NAME_MAX],
                      char name[VAULT_NAME_MAX])
{
    const char *k = key;
    const char *sep = klen ? memchr(k, '\0', klen) : NULL;
    if (!sep || sep == k)
        return false;
    size_t c = (size_t)(sep - k), m = klen - c - 1;
    if (c >= VAULT_NAME_MAX || m == 0 || m >= VAULT_NAME_MAX || memchr(sep + 1, '\0', m))
        return false;
    memcpy(connector, k, c);
    connector[c] = '\0';
    memcpy(name, sep + 1, m);
    name[m] = '\0';
    return true;
}

/* Position c at the first record of connector (or the first record at all) and walk on with
 * next_record until it returns AR_E_NOTFOUND. */
typedef struct walk {
    journal_cursor *cur;
    const char *connector;        /* NULL: every connector */
    bool started;
    char c[VAULT_NAME_MAX], n[VAULT_NAME_MAX];
    const unsigned char *rec;
    size_t reclen;
} walk;

static int next_record(walk *w)
{
    for (;;) {
        const void *key, *val;
        size_t klen, vlen;
        int rc;
        if (!w->started) {
            char prefix[VAULT_NAME_MAX + 1];
            size_t plen = 1;
            prefix[0] = '\x01'; /* past the vault's own "\0..." keys */
            if (w->connector)
                plen = (size_t)snprintf(prefix, sizeof prefix, "%s", w->connector) + 1;
            key = prefix;
            klen = plen;
            w->started = true;
            rc = journal_cursor_get(w->cur, JOURNAL_SEEK_GE, &key, &klen, &val, &vlen);
        } else {
            rc = journal_cursor_get(w->cur, JOURNAL_NEXT, &key, &klen, &val, &vlen);
        }
        if (rc != AR_OK)
            return rc;
        if (!split_key(key, klen, w->c, w->n)) {
            if (klen && ((const char *)key)[0] == '\0')
                continue;
            return AR_E_FORMAT;
        }
        if (w->connector && strcmp(w->c, w->connector) != 0)
            return AR_E_NOTFOUND; /* past its records */
        if (vlen < REC_MIN_LEN)
            return AR_E_FORMAT;
        w->rec = val;
        w->reclen = vlen;
        return AR_OK;
    }
}

int vault_list(vault *v, const char *connector, json_t **out, ar_error *err)
{
    *out = NULL;
    if (!v || (connector && !valid_name(connector)))
        return ar_error_set(err, AR_E_INVALID, "secret_invalid",
                            "a connector name must be 1 to %d bytes", VAULT_NAME_MAX - 1);
    journal_read *r;
    int status = journal_read_begin(v->j, &r, err);
    if (status != AR_OK)
        return status;
    json_t *list = json_array();
    walk w = {.connector = connector};
    if (!list || (status = journal_cursor_open(r, JDB_SECRETS, &w.cur)) != AR_OK) {
        status = list ? status : AR_E_NOMEM;
        goto fail;
    }
    while ((status = next_record(&w)) == AR_OK) {
        json_t *item = json_pack("{s:s,s:s,s:I,s:I,s:I}", "connector", w.c, "name", w.n,
                                 "version", (json_int_t)get_u32(w.rec), "created_ms",
                                 (json_int_t)(int64_t)get_u64(w.rec + 4), "updated_ms",
                                 (json_int_t)(int64_t)get_u64(w.rec + 12));
        if (!item || json_array_append_new(list, item) != 0) {
            status = AR_E_NOMEM;
            goto fail;
        }
    }
    if (status != AR_E_NOTFOUND)
        goto fail;
    journal_cursor_close(w.cur);
    journal_read_end(r);
    *out = list;
    return AR_OK;
fail:
    journal_cursor_close(w.cur);
    journal_read_end(r);
    json_decref(list);
    if (status == AR_E_NOMEM)
        return nomem(err);
    if (status == AR_E_FORMAT)
        return ar_error_set(err, AR_E_FORMAT, "vault_format",
                            "a record in the vault is damaged or of a newer format");
    return ar_error_set(err, status, "vault_io", "cannot read the vault (%d)", status);
}

void vault_secrets_free(vault_secrets *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        if (s->items[i].value)
            sodium_free(s->items[i].value); /* wipes */
    free(s->items);
    s->items = NULL;
    s->n = 0;
}

/* One pass of vault_get_all with v->mu held: AR_E_BUSY ("vault_key_changed") when the meta is
 * no longer v's. */
static int get_all_once(vault *v, const char *connector, vault_secrets *out, ar_error *err)
{
    journal_read *r;
    unsigned char m[META_LEN];
    size_t cap = 0;
    walk w = {.connector = connector};
    int status = journal_read_begin(v->j, &r, err);
    if (status != AR_OK)
        return status;
    status = read_meta(r, m, NULL, err);
    if (status == AR_E_NOTFOUND)
        status = ar_error_set(err, AR_E_FORMAT, "vault_format", "the vault's meta record is gone");
    if (status != AR_OK)
        goto done;
    if (memcmp(m, v->meta, META_LEN) != 0) {
        status = ar_error_set(err, AR_E_BUSY, "vault_key_changed",
                              "the vault was re-keyed by another process");
        goto done;
    }
    if ((status = journal_cursor_open(r, JDB_SECRETS, &w.cur)) != AR_OK)
        goto done;
    /* The keys are unsealed only for a connector that has secrets: unsealing is four
     * mprotect(2)s, each a TLB flush on every CPU the daemon runs on, and this runs for every
     * result a plugin sends (to redact it). */
    status = next_record(&w);
    bool unsealed = status == AR_OK;
    if (unsealed) {
        keys_readable(v);
        derive_subkey(v->work, v->master, connector);
    }
    for (; status == AR_OK; status = next_record(&w)) {
        if (out->n == cap) {
            size_t ncap = cap ? 2 * cap : 8;
            vault_secret *items = realloc(out->items, ncap * sizeof *items);
            if (!items) {
                status = nomem(err);
                break;
            }
            out->items = items;
            cap = ncap;
        }
        vault_secret *s = &out->items[out->n];
        size_t len = w.reclen - REC_MIN_LEN;
        memset(s, 0, sizeof *s);
        if (!(s->value = sodium_malloc(len + 1))) {
            status = nomem(err);
            break;
        }
        out->n++;
        snprintf(s->name, sizeof s->name, "%s", w.n);
        s->len = len;
        s->version = get_u32(w.rec);
        if (open_record(s->value, w.rec, w.reclen, v->work, w.c, w.n) != 0) {
            status = ar_error_set(err, AR_E_INVALID, "secret_corrupt",
                                  "secret %s of connector %s does not decrypt: it was altered or "
                                  "moved (set it again)", w.n, w.c);
            break;
        }
        s->value[len] = '\0';
    }
    if (unsealed)
        keys_sealed(v);
    if (status == AR_E_NOTFOUND)
        status = AR_OK;
    else if (status == AR_E_FORMAT)
        status = ar_error_set(err, AR_E_INVALID, "secret_corrupt",
                              "a stored secret of connector %s is damaged (after %s)",
                              connector, out->n ? out->items[out->n - 1].name : "none");
    else if (status != AR_OK && !err->code[0])
        status = ar_error_set(err, status, "vault_io", "cannot read the vault (%d)", status);
done:
    journal_cursor_close(w.cur);
    journal_read_end(r);
    return status;
}

int vault_get_all(vault *v, const char *connector, vault_secrets *out, ar_error *err)
{
    ar_error local;
    if (!err)
        err = &local;
    ar_error_clear(err);
    memset(out, 0, sizeof *out);
    if (!v || !valid_name(connector))
        return ar_error_set(err, AR_E_INVALID, "secret_invalid",
                            "a connector name must be 1 to %d bytes", VAULT_NAME_MAX - 1);
    pthread_mutex_lock(&v->mu);
    int status = get_all_once(v, connector, out, err);
    for (int attempt = 1; attempt < SET_ATTEMPTS && status == AR_E_BUSY &&
                          strcmp(err->code, "vault_key_changed") == 0; attempt++) {
        vault_secrets_free(out);
        ar_error_clear(err);
        if ((status = refresh_key(v, err)) == AR_OK)
            status = get_all_once(v, connector, out, err);
    }
    pthread_mutex_unlock(&v->mu);
    if (status != AR_OK)
        vault_secrets_free(out);
    else
        ar_error_clear(err);
    return status;
}

/* ---- rotation ----------------------------------------------------------------------------- */

/* Rotation, step 1: the same key's meta with a fresh verifier, so that every other vault
 * instance's writes fail their meta check from now on and wait (refresh_key, on the key
 * directory's lock, which the rotation holds) until the rotation is over, instead of racing
 * it. */
typedef struct reseal_arg {
    const unsigned char *old_meta, *new_meta;
} reseal_arg;

static int reseal_apply(journal_txn *txn, void *arg, ar_error *err)
{
    reseal_arg *a = arg;
    int rc = txn_check_meta(txn, a->old_meta, err);
    if (rc != AR_OK)
        return rc;
    return journal_txn_put(txn, JDB_SECRETS, META_KEY, META_KEY_LEN, a->new_meta, META_LEN);
}

static int reseal_meta(vault *v, ar_error *err)
{
    unsigned char m[META_LEN];
    meta_info info;
    int status = parse_meta(v->meta, META_LEN, &info, err);
    if (status != AR_OK)
        return status;
    keys_readable(v);
    build_meta(m, info.mode, info.mode == MODE_PASSPHRASE ? info.salt : NULL, info.opslimit,
               info.memlimit, info.alg, v->master);
    keys_sealed(v);
    reseal_arg a = {.old_meta = v->meta, .new_meta = m};
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, reseal_apply, &a);
    status = journal_commit(v->j, b, err);
    journal_batch_free(b);
    if (status == AR_OK)
        memcpy(v->meta, m, META_LEN);
    return status;
}

typedef struct rotate_check {
    const unsigned char *old_meta, *new_meta;
    uint64_t serial;
} rotate_check;

/* First in the rotation's batch: nothing changed since the records were read (same meta,
 * same serial), then the new meta. The re-encrypted records follow as puts. */
static int rotate_apply(journal_txn *txn, void *arg, ar_error *err)
{
    rotate_check *c = arg;
    const void *val;
    size_t len;
    uint64_t serial = 0;
    int rc = txn_check_meta(txn, c->old_meta, err);
    if (rc != AR_OK)
        return rc;
    rc = journal_txn_get(txn, JDB_SECRETS, SERIAL_KEY, SERIAL_KEY_LEN, &val, &len);
    if (rc == AR_OK && len == 8)
        serial = get_u64(val);
    else if (rc != AR_E_NOTFOUND)
        return rc == AR_OK ? AR_E_FORMAT : rc;
    if (serial != c->serial)
        return ar_error_set(err, AR_E_BUSY, "vault_changed",
                            "a secret changed while the vault was being rotated");
    if ((rc = journal_txn_put(txn, JDB_SECRETS, META_KEY, META_KEY_LEN, c->new_meta, META_LEN)))
        return rc;
    return txn_bump_serial(txn);
}

/* Read every record at one snapshot, re-encrypt it under new_master into batch b (after the
 * check), count them. v's keys readable, new_master readable, plain a scratch buffer. */
static int rotate_build(vault *v, const unsigned char *new_master, unsigned char *plain,
                        unsigned char *new_sub, journal_batch *b, rotate_check *check,
                        size_t *count, ar_error *err)
{
    journal_read *r;
    unsigned char m[META_LEN];
    unsigned char *rec = NULL;
    char current[VAULT_NAME_MAX] = "";
    walk w = {0};
    int status = journal_read_begin(v->j, &r, err);
    if (status != AR_OK)
        return status;
    *count = 0;
    status = read_meta(r, m, &check->serial, err);
    if (status == AR_E_NOTFOUND)
        status = ar_error_set(err, AR_E_FORMAT, "vault_format", "the vault's meta record is gone");
    if (status != AR_OK)
        goto done;
    if (memcmp(m, v->meta, META_LEN) != 0) {
        status = ar_error_set(err, AR_E_BUSY, "vault_key_changed",
                              "the vault was re-keyed by another process");
        goto done;
    }
    journal_batch_apply(b, rotate_apply, check);
    if (!(rec = malloc(REC_MIN_LEN + VAULT_MAX_SECRET_LEN))) {
        status = nomem(err);
        goto done;
    }
    if ((status = journal_cursor_open(r, JDB_SECRETS, &w.cur)) != AR_OK)
        goto done;
    while ((status = next_record(&w)) == AR_OK) {
        if (strcmp(current, w.c) != 0) {
            snprintf(current, sizeof current, "%s", w.c);
            derive_subkey(v->work, v->master, w.c);
            derive_subkey(new_sub, new_master, w.c);
        }
        size_t len = w.reclen - REC_MIN_LEN;
        if (open_record(plain, w.rec, w.reclen, v->work, w.c, w.n) != 0) {
            status = ar_error_set(err, AR_E_INVALID, "secret_corrupt",
                                  "secret %s of connector %s does not decrypt (altered or "
                                  "moved): remove or set it, then rotate again; nothing was "
                                  "changed", w.n, w.c);
            break;
        }
        seal_record(rec, new_sub, w.c, w.n, get_u32(w.rec), (int64_t)get_u64(w.rec + 4),
                    (int64_t)get_u64(w.rec + 12), plain, len);
        sodium_memzero(plain, len);
        char key[2 * VAULT_NAME_MAX];
        journal_batch_put(b, JDB_SECRETS, key, record_key(key, w.c, w.n), rec, REC_MIN_LEN + len);
        (*count)++;
    }
    if (status == AR_E_NOTFOUND)
        status = AR_OK;
    else if (status == AR_E_FORMAT)
        status = ar_error_set(err, AR_E_INVALID, "secret_corrupt",
                              "a stored secret is damaged (after %s of connector %s): nothing "
                              "was changed", w.n, w.c);
    else if (status != AR_OK && !err->code[0])
        status = ar_error_set(err, status, "vault_io", "cannot read the vault (%d)", status);
done:
    free(rec);
    journal_cursor_close(w.cur);
    journal_read_end(r);
    return status;
}

/* The rotation proper, with v->mu held (and the key directory locked in key-file mode):
 * new_master (readable; the caller frees it) is the new key and new_meta its meta. */
static int rotate_commit(vault *v, unsigned char *new_master, const unsigned char *new_meta,
                         size_t *count, ar_error *err)
{
    unsigned char *plain = sodium_malloc(VAULT_MAX_SECRET_LEN + VAULT_KEY_LEN);
    if (!plain)
        return nomem(err);
    unsigned char *new_sub = plain + VAULT_MAX_SECRET_LEN;
    rotate_check check = {.old_meta = v->meta, .new_meta = new_meta};
    int status = reseal_meta(v, err);
    if (status == AR_OK)
        status = AR_E_BUSY;
    for (int attempt = 0; attempt < ROTATE_ATTEMPTS && status == AR_E_BUSY; attempt++) {
        journal_batch *b = journal_batch_new();
        ar_error_clear(err);
        keys_readable(v);
        status = rotate_build(v, new_master, plain, new_sub, b, &check, count, err);
        keys_sealed(v);
        if (status == AR_OK)
            audit_batch_append(b, "vault_rotated", NULL, json_pack("{s:I}", "count", (json_int_t)*count));
        if (status == AR_OK)
            status = journal_commit(v->j, b, err);
        journal_batch_free(b);
        if (status == AR_E_BUSY && strcmp(err->code, "vault_key_changed") == 0)
            break; /* not ours to retry: the caller's key is stale */
    }
    sodium_free(plain);
    if (status == AR_E_BUSY && strcmp(err->code, "vault_changed") == 0)
        status = ar_error_set(err, AR_E_BUSY, "vault_busy",
                              "secrets kept changing while the vault was being rotated: try again");
    return status;
}

int vault_rotate(vault *v, const char *new_passphrase, size_t new_passphrase_len, size_t *count,
                 ar_error *err)
{
    size_t n = 0;
    int dfd = -1, status;
    char new_path[PATH_MAX] = "";
    unsigned char new_meta[META_LEN];
    bool wrote_new = false;

    ar_error local;
    if (!err)
        err = &local;
    ar_error_clear(err);
    if (!v)
        return ar_error_set(err, AR_E_INVALID, "secret_invalid", "no vault");
    if (v->mode == MODE_PASSPHRASE && (!new_passphrase || new_passphrase_len == 0))
        return ar_error_set(err, AR_E_INVALID, "vault_key_invalid",
                            "rotating a passphrase vault needs a new, non-empty passphrase");
    if (v->mode == MODE_KEY_FILE && new_passphrase)
        return ar_error_set(err, AR_E_INVALID, "vault_mode_mismatch",
                            "this vault uses a key file: its rotation makes a new random key, "
                            "not a passphrase");
    unsigned char *new_master = sodium_malloc(VAULT_KEY_LEN);
    if (!new_master)
        return nomem(err);
    if (v->mode == MODE_PASSPHRASE) {
        /* Argon2id takes most of a second: before the vault is locked for it. */
        meta_info info = {.mode = MODE_PASSPHRASE,
                          .opslimit = crypto_pwhash_OPSLIMIT_MODERATE,
                          .memlimit = crypto_pwhash_MEMLIMIT_MODERATE,
                          .alg = crypto_pwhash_ALG_ARGON2ID13};
        randombytes_buf(info.salt, SALT_LEN);
        if (crypto_pwhash(new_master, VAULT_KEY_LEN, new_passphrase, new_passphrase_len,
                          info.salt, info.opslimit, (size_t)info.memlimit, (int)info.alg) != 0) {
            sodium_free(new_master);
            return ar_error_set(err, AR_E_NOMEM, "out_of_memory",
                                "Argon2id could not get the memory it needs (about 300 MiB)");
        }
        build_meta(new_meta, MODE_PASSPHRASE, info.salt, info.opslimit, info.memlimit, info.alg,
                   new_master);
    }
    pthread_mutex_lock(&v->mu);
    if (v->mode == MODE_KEY_FILE) {
        if ((status = new_key_path(v->key_file, new_path, sizeof new_path, err)) != AR_OK)
            goto done;
        if ((status = lock_key_dir(v->key_file, &dfd, err)) != AR_OK)
            goto done;
    }
    /* Be sure v's key is the vault's before anything is re-encrypted with it. */
    unsigned char m[META_LEN];
    if ((status = snapshot_meta(v->j, m, err)) != AR_OK)
        goto done;
    if (memcmp(m, v->meta, META_LEN) != 0) {
        if (dfd >= 0) { /* refresh_key locks the directory itself */
            unlock_key_dir(dfd);
            dfd = -1;
        }
        if ((status = refresh_key(v, err)) != AR_OK)
            goto done;
        if (v->mode == MODE_KEY_FILE &&
            (status = lock_key_dir(v->key_file, &dfd, err)) != AR_OK)
            goto done;
    }
    if (v->mode == MODE_KEY_FILE) {
        crypto_kdf_keygen(new_master);
        build_meta(new_meta, MODE_KEY_FILE, NULL, 0, 0, 0, new_master);
        /* A stale .new (a rotation that died before its commit) is replaced. */
        if (unlink(new_path) != 0 && errno != ENOENT) {
            status = io_error(err, "vault_key_io", "cannot remove the stale", new_path);
            goto done;
        }
        if ((status = write_key_file(new_path, new_master, err)) != AR_OK)
            goto done;
        wrote_new = true;
        if (fsync(dfd) != 0) {
            status = io_error(err, "vault_key_io", "cannot sync the directory of", new_path);
            goto done;
        }
    }
    sodium_mprotect_readonly(new_master);
    status = rotate_commit(v, new_master, new_meta, &n, err);
    if (status != AR_OK)
        goto done;
    /* Durable: the records and the meta are the new key's. */
    wrote_new = false;
    keys_writable(v);
    memcpy(v->master, new_master, VAULT_KEY_LEN);
    keys_sealed(v);
    memcpy(v->meta, new_meta, META_LEN);
    if (v->mode == MODE_KEY_FILE) {
        if (rename(new_path, v->key_file) != 0) {
            status = ar_error_set(err, AR_E_IO, "vault_key_io",
                                  "the vault was re-encrypted under the key in %s but it could "
                                  "not be renamed to %s (%s): rename it by hand (the next "
                                  "vault open also does)", new_path, v->key_file, strerror(errno));
            goto done;
        }
        if (fsync(dfd) != 0)
            status = io_error(err, "vault_key_io", "cannot sync the directory of", v->key_file);
    }
done:
    if (wrote_new && unlink(new_path) == 0)
        fsync(dfd);
    unlock_key_dir(dfd);
    pthread_mutex_unlock(&v->mu);
    sodium_free(new_master);
    if (status == AR_OK) {
        ar_error_clear(err);
        if (count)
            *count = n;
    }
    return status;
}

/* ---- opening from the config's files ------------------------------------------------------ */

#define PASSPHRASE_MAX 4096

/* A passphrase held in guarded memory; wiped by secret_free. */
typedef struct secret_buf {
    unsigned char *data;  /* sodium_malloc'd, cap + 1 bytes */
    size_t len, cap;
} secret_buf;

static int secret_alloc(secret_buf *s, size_t cap)
{
    s->len = 0;
    s->cap = cap;
    return (s->data = sodium_malloc(cap + 1)) ? AR_OK : AR_E_NOMEM;
}

static void secret_free(secret_buf *s)
{
    if (s->data)
        sodium_free(s->data); /* wipes */
    s->data = NULL;
    s->len = 0;
}

/* A passphrase file: owned by us, no group or other bits, its content without one trailing
 * newline. AR_E_NOTFOUND when missing. */
static int read_passphrase_file(const char *path, secret_buf *s, ar_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
                   ? ar_error_set(err, AR_E_NOTFOUND, "vault_key_missing",
                                  "the vault passphrase file %s does not exist", path)
                   : ar_error_set(err, AR_E_IO, "vault_key_io", "cannot open %s: %s", path,
                                  strerror(errno));
    struct stat st;
    int status = AR_OK;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        status = ar_error_set(err, AR_E_INVALID, "vault_key_invalid",
                              "the vault passphrase file %s is not a regular file", path);
    } else if (st.st_uid != geteuid()) {
        status = ar_error_set(err, AR_E_INVALID, "vault_key_owner",
                              "the vault passphrase file %s belongs to uid %u, not to uid %u",
                              path, (unsigned)st.st_uid, (unsigned)geteuid());
    } else if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        status = ar_error_set(err, AR_E_INVALID, "vault_key_mode",
                              "the vault passphrase file %s may be used by group or others "
                              "(mode %04o): chmod 600 %s", path, (unsigned)(st.st_mode & 07777),
                              path);
    } else if (st.st_size > PASSPHRASE_MAX + 1) {
        status = ar_error_set(err, AR_E_INVALID, "vault_key_invalid",
                              "the vault passphrase in %s is longer than %d bytes", path,
                              PASSPHRASE_MAX);
    } else if (secret_alloc(s, PASSPHRASE_MAX) != AR_OK) {
        status = nomem(err);
    } else {
        for (;;) {
            ssize_t r = read(fd, s->data + s->len, s->cap + 1 - s->len);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                status = ar_error_set(err, AR_E_IO, "vault_key_io", "cannot read %s: %s", path,
                                      strerror(errno));
                break;
            }
            if (r == 0)
                break;
            s->len += (size_t)r;
            if (s->len > s->cap)
                break;
        }
        if (status == AR_OK && s->len > 0 && s->data[s->len - 1] == '\n')
            s->len--;
        if (status == AR_OK && (s->len == 0 || s->len > s->cap))
            status = ar_error_set(err, AR_E_INVALID, "vault_key_invalid",
                                  "the vault passphrase in %s is %s", path,
                                  s->len ? "too long" : "empty");
        if (status != AR_OK)
            secret_free(s);
    }
    close(fd);
    return status;
}

void vault_sync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Passphrase mode: unlock with the config's passphrase file; if that is refused with
 * vault_wrong_key and <file>.new opens the vault (an `aioctl vault rotate` that stopped after
 * its commit), finish that rotation by renaming .new into place. */
static int open_with_passphrase(journal *j, const char *path, vault **out, ar_error *err)
{
    secret_buf pass = {0};
    int status = read_passphrase_file(path, &pass, err);
    if (status != AR_OK)
        return status;
    vault_opts o = {.passphrase = (const char *)pass.data, .passphrase_len = pass.len};
    status = vault_open(j, &o, out, err);
    secret_free(&pass);
    if (status != AR_E_INVALID || strcmp(err->code, "vault_wrong_key") != 0)
        return status;
    char new_path[PATH_MAX + 8];
    ar_error new_err = {0};
    snprintf(new_path, sizeof new_path, "%s.new", path);
    if (read_passphrase_file(new_path, &pass, &new_err) != AR_OK)
        return status;
    o.passphrase = (const char *)pass.data;
    o.passphrase_len = pass.len;
    int st2 = vault_open(j, &o, out, &new_err);
    secret_free(&pass);
    if (st2 != AR_OK)
        return status;
    if (rename(new_path, path) != 0) {
        ar_log("warn", "the vault opens with the passphrase in %s (a rotation that did not "
               "finish) but it cannot be renamed to %s: %s", new_path, path, strerror(errno));
    } else {
        vault_sync_dir_of(path);
        ar_log("info", "finished an interrupted passphrase rotation: %s now holds the vault's "
               "passphrase", path);
    }
    ar_error_clear(err);
    return AR_OK;
}

int vault_open_files(journal *j, const char *key_file, const char *passphrase_file, int create_key,
                     vault **out, ar_error *err)
{
    *out = NULL;
    if (passphrase_file)
        return open_with_passphrase(j, passphrase_file, out, err);
    vault_opts o = {.key_file = key_file};
    int status = vault_open(j, &o, out, err);
    if (status != AR_E_NOTFOUND || strcmp(err->code, "vault_key_missing") != 0 || !create_key)
        return status;
    /* No key, and nothing encrypted (the first start, or a data directory restored from a
     * backup without its key while it held no secret): a new key loses nothing. A vault that
     * holds secrets keeps needing its own key: a new one would only lock them away. */
    journal_read *r;
    bool any = true;
    if (journal_read_begin(j, &r, NULL) == AR_OK) {
        if (has_records(r, &any) != AR_OK)
            any = true;
        journal_read_end(r);
    }
    if (any)
        return status;
    journal_batch *b = journal_batch_new();
    journal_batch_del(b, JDB_SECRETS, META_KEY, META_KEY_LEN); /* the old key's verifier */
    status = journal_commit(j, b, err);
    journal_batch_free(b);
    if (status != AR_OK)
        return status;
    if ((status = vault_key_create(key_file, err)) != AR_OK && status != AR_E_EXISTS)
        return status;
    ar_log("info", "created the vault key %s (mode 0600): back it up, the secrets cannot be "
           "read without it", key_file);
    return vault_open(j, &o, out, err);
}
