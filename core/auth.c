/* auth.c - API tokens: the server key, token records in the journal, verification (see auth.h).
 *
 * Thread safety: auth_verify (and every other function) may run on any number of threads at
 * once. The server key lives in guarded memory (sodium_malloc) that is made read-only right
 * after it is loaded and stays read-only until auth_free. Toggling it between no-access and
 * read-only around each hash would race when two threads hash at once (one thread's
 * "no access" pulls the page from under the other), and guarding the toggle with a lock would
 * cost two mprotect calls (and TLB shootdowns) per request; read-only still puts guard pages
 * around the key and keeps it out of core dumps and swap. */
#include "auth.h"

#include "audit.h"
#include "jsonw.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KEY_LEN 32
#define DIGEST_LEN 32
#define RAW_TOKEN_LEN 32
#define PREFIX_LEN (sizeof AUTH_TOKEN_PREFIX - 1)
/* The most of a presented token that is hashed; anything longer is malformed anyway. */
#define VERIFY_MAX_INPUT 256
/* Token records recently verified, parsed (a few clients use a few tokens): slots by digest. */
#define SEEN_SLOTS 16
#define SEEN_RECORD_MAX 512

/* A token record as stored (its bytes) and what verification reads from it. A verification
 * still reads the stored record every time (revocations and tokens made by aioctl count at
 * once); only when its bytes are the ones seen before is the parse skipped. */
typedef struct seen_record {
    unsigned char digest[DIGEST_LEN];
    unsigned char bytes[SEEN_RECORD_MAX];
    size_t len;                 /* 0: empty slot */
    char name[AUTH_NAME_MAX + 1];
    unsigned roles;
    bool revoked;
    bool expires;
    int64_t expires_ms;
} seen_record;

struct auth {
    journal *j;
    unsigned char *key; /* KEY_LEN bytes, sodium_malloc'd, read-only once loaded */
    pthread_mutex_t seen_lock;
    seen_record seen[SEEN_SLOTS];
};

/* ---- roles ------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    unsigned bit;
} role_names[] = {
    { "submitter", AUTH_ROLE_SUBMITTER },
    { "approver", AUTH_ROLE_APPROVER },
    { "operator", AUTH_ROLE_OPERATOR },
    { "reader", AUTH_ROLE_READER },
};
#define ROLE_COUNT (sizeof role_names / sizeof role_names[0])
#define VALID_ROLES "submitter, approver, operator, reader"

static unsigned role_bit(const char *name, size_t len)
{
    for (size_t i = 0; i < ROLE_COUNT; i++)
        if (strlen(role_names[i].name) == len && memcmp(role_names[i].name, name, len) == 0)
            return role_names[i].bit;
    return 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

int auth_roles_parse(const char *csv, unsigned *out, ar_error *err)
{
    unsigned roles = 0;
    const char *p = csv ? csv : "";
    for (;;) {
        while (is_space(*p))
            p++;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && is_space(end[-1]))
            end--;
        size_t len = (size_t)(end - start);
        if (len == 0) {
            if (roles == 0 && !*p)
                return ar_error_set(err, AR_E_INVALID, "invalid_roles",
                                    "no roles given: use one or more of " VALID_ROLES);
            return ar_error_set(err, AR_E_INVALID, "invalid_roles",
                                "empty role in the list \"%.100s\": use one or more of " VALID_ROLES,
                                csv);
        }
        unsigned bit = role_bit(start, len);
        if (!bit)
            return ar_error_set(err, AR_E_INVALID, "invalid_roles",
                                "unknown role \"%.*s\": valid roles are " VALID_ROLES,
                                (int)(len > 64 ? 64 : len), start);
        roles |= bit;
        if (!*p)
            break;
        p++; /* the comma */
    }
    *out = roles;
    return AR_OK;
}

void auth_roles_format(unsigned roles, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return;
    buf[0] = '\0';
    size_t used = 0;
    for (size_t i = 0; i < ROLE_COUNT; i++) {
        if (!(roles & role_names[i].bit))
            continue;
        int n = snprintf(buf + used, cap - used, "%s%s", used ? "," : "", role_names[i].name);
        if (n < 0 || (size_t)n >= cap - used) {
            buf[used] = '\0'; /* never leave half a role name */
            return;
        }
        used += (size_t)n;
    }
}

static json_t *roles_to_json(unsigned roles)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < ROLE_COUNT; i++)
        if (roles & role_names[i].bit)
            json_array_append_new(arr, json_string(role_names[i].name));
    return arr;
}

/* Unknown names (from a newer aiorun) grant nothing. */
static unsigned roles_from_json(const json_t *arr)
{
    unsigned roles = 0;
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v) {
        const char *s = json_string_value(v);
        if (s)
            roles |= role_bit(s, strlen(s));
    }
    return roles;
}

/* ---- small helpers ----------------------------------------------------------------------- */

static bool valid_name(const char *name)
{
    if (!name)
        return false;
    size_t len = strlen(name);
    if (len == 0 || len > AUTH_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

static int name_error(ar_error *err)
{
    return ar_error_set(err, AR_E_INVALID, "invalid_token_name",
                        "a token name is 1 to %d characters of A-Z a-z 0-9 _ . -", AUTH_NAME_MAX);
}

static json_t *time_or_null(const json_t *ms_value)
{
    if (!json_is_integer(ms_value))
        return json_null();
    char buf[AR_TIME_LEN];
    ar_time_rfc3339(json_integer_value(ms_value), buf);
    return json_string(buf);
}

static int parse_record(const void *val, size_t len, json_t **out, ar_error *err)
{
    json_t *rec = json_loadb(val, len, 0, NULL);
    if (!json_is_object(rec)) {
        json_decref(rec);
        return ar_error_set(err, AR_E_FORMAT, "record_format",
                            "a stored token record is not a JSON object");
    }
    *out = rec;
    return AR_OK;
}

static bool record_revoked(const json_t *rec)
{
    return json_is_integer(json_object_get(rec, "revoked_ms"));
}

static bool record_expired(const json_t *rec, int64_t now_ms)
{
    const json_t *exp = json_object_get(rec, "expires_ms");
    return json_is_integer(exp) && json_integer_value(exp) <= now_ms;
}

/* The keyed digest of bytes. The key is read-only for the object's life (see the top). */
static void token_digest(const auth *a, const void *bytes, size_t len, unsigned char out[DIGEST_LEN])
{
    crypto_generichash(out, DIGEST_LEN, bytes, len, a->key, KEY_LEN);
}

/* ---- the server key ---------------------------------------------------------------------- */

static int io_error(ar_error *err, const char *what, const char *path)
{
    return ar_error_set(err, AR_E_IO, "auth_key", "%s %s: %s", what, path, strerror(errno));
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

static int read_all(int fd, unsigned char *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void sync_parent_dir(const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

/* Write a fresh key to path. The key is written to a private temporary file (O_CREAT|O_EXCL,
 * 0600, synced) and then linked into place, so another process never sees a half-written key
 * file; when it loses the race to create it (link: EEXIST) it reads the winner's key. Returns
 * AR_OK with the key in key, AR_E_EXISTS when the file appeared meanwhile. */
static int create_key(const char *path, unsigned char *key, ar_error *err)
{
    char tmp[PATH_MAX];
    unsigned char rnd[8];
    randombytes_buf(rnd, sizeof rnd);
    int n = snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%02x%02x%02x%02x%02x%02x%02x%02x", path,
                     (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return ar_error_set(err, AR_E_INVALID, "auth_key", "auth key path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return io_error(err, "cannot create the auth key", tmp);
    int status = AR_OK;
    randombytes_buf(key, KEY_LEN);
    if (fchmod(fd, 0600) != 0) { /* whatever the umask */
        status = io_error(err, "cannot chmod the auth key", tmp);
        goto fail;
    }
    if (write_all(fd, key, KEY_LEN) != 0) {
        status = io_error(err, "cannot write the auth key", tmp);
        goto fail;
    }
    if (fsync(fd) != 0) {
        status = io_error(err, "cannot sync the auth key", tmp);
        goto fail;
    }
    close(fd);
    fd = -1;
    if (link(tmp, path) != 0) {
        status = errno == EEXIST ? AR_E_EXISTS : io_error(err, "cannot create the auth key", path);
        goto fail;
    }
    unlink(tmp);
    sync_parent_dir(path);
    return AR_OK;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    sodium_memzero(key, KEY_LEN);
    return status;
}

/* Read an existing key. AR_E_NOTFOUND when there is no file. */
static int read_key(const char *path, unsigned char *key, ar_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return AR_E_NOTFOUND;
        return io_error(err, "cannot open the auth key", path);
    }
    int status = AR_OK;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        status = io_error(err, "cannot stat the auth key", path);
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        status = ar_error_set(err, AR_E_INVALID, "auth_key", "%s is not a regular file", path);
        goto done;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        status = ar_error_set(err, AR_E_INVALID, "auth_key",
                              "%s is readable by others (mode %04o): chmod 600 %s", path,
                              (unsigned)(st.st_mode & 07777), path);
        goto done;
    }
    if (st.st_size != KEY_LEN) {
        status = ar_error_set(err, AR_E_INVALID, "auth_key",
                              "%s is not an aiorun auth key (%lld bytes; expected %d)", path,
                              (long long)st.st_size, KEY_LEN);
        goto done;
    }
    if (read_all(fd, key, KEY_LEN) != 0) {
        status = errno ? io_error(err, "cannot read the auth key", path)
                       : ar_error_set(err, AR_E_INVALID, "auth_key",
                                      "%s shrank while being read", path);
        sodium_memzero(key, KEY_LEN);
    }
done:
    close(fd);
    return status;
}

static int load_key(const char *path, unsigned char *key, ar_error *err)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        errno = 0;
        int status = read_key(path, key, err);
        if (status != AR_E_NOTFOUND)
            return status;
        status = create_key(path, key, err);
        if (status != AR_E_EXISTS)
            return status;
        /* another process created it first: read theirs */
    }
    return ar_error_set(err, AR_E_IO, "auth_key", "the auth key %s keeps disappearing", path);
}

int auth_open(journal *j, const char *key_path, auth **out, ar_error *err)
{
    *out = NULL;
    if (!j || !key_path || !*key_path)
        return ar_error_set(err, AR_E_INVALID, "auth_key", "auth_open needs a journal and a key path");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "auth_key", "libsodium cannot be initialised");
    auth *a = calloc(1, sizeof *a);
    if (!a)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory opening the token store");
    a->j = j;
    pthread_mutex_init(&a->seen_lock, NULL);
    int status;
    if (!(a->key = sodium_malloc(KEY_LEN))) {
        status = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "cannot allocate guarded memory for the auth key");
        goto fail;
    }
    if ((status = load_key(key_path, a->key, err)) != AR_OK)
        goto fail;
    if (sodium_mprotect_readonly(a->key) != 0) {
        status = ar_error_set(err, AR_E_FAIL, "auth_key", "cannot protect the auth key in memory");
        goto fail;
    }
    ar_error_clear(err);
    *out = a;
    return AR_OK;
fail:
    auth_free(a);
    return status;
}

void auth_free(auth *a)
{
    if (!a)
        return;
    sodium_free(a->key); /* wipes it; NULL is a no-op */
    pthread_mutex_destroy(&a->seen_lock);
    sodium_memzero(a->seen, sizeof a->seen);
    free(a);
}

/* ---- create ------------------------------------------------------------------------------ */

struct create_ctx {
    const char *name;
    const unsigned char *digest;
    const char *record;
    const char *roles;           /* for the audit entry: "submitter,reader" */
    const char *by;
    int64_t now_ms;
};

/* Check the name and insert, inside the writer's transaction: atomic against another process
 * creating the same name. Runs again on a retried transaction, so it only reads its ctx. */
static int create_apply(journal_txn *txn, void *arg, ar_error *err)
{
    const struct create_ctx *c = arg;
    size_t nlen = strlen(c->name);
    const void *old_digest;
    size_t dlen;
    int rc = journal_txn_get(txn, JDB_TOKEN_NAMES, c->name, nlen, &old_digest, &dlen);
    if (rc == AR_OK) {
        const void *val;
        size_t vlen;
        rc = journal_txn_get(txn, JDB_TOKENS, old_digest, dlen, &val, &vlen);
        if (rc == AR_OK) {
            json_t *old = NULL;
            if ((rc = parse_record(val, vlen, &old, err)) != AR_OK)
                return rc;
            bool live = !record_revoked(old) && !record_expired(old, c->now_ms);
            json_decref(old);
            if (live)
                return ar_error_set(err, AR_E_EXISTS, "token_exists",
                                    "a token named %s already exists; revoke it first "
                                    "(aioctl token revoke %s)", c->name, c->name);
        } else if (rc != AR_E_NOTFOUND) {
            return rc;
        }
        /* The name belonged to a revoked or expired token: its record goes, and with it the
         * old token (now "unknown"). */
        if ((rc = journal_txn_del(txn, JDB_TOKENS, old_digest, dlen)) != AR_OK)
            return rc;
    } else if (rc != AR_E_NOTFOUND) {
        return rc;
    }
    rc = journal_txn_put(txn, JDB_TOKENS, c->digest, DIGEST_LEN, c->record, strlen(c->record));
    if (rc == AR_OK)
        rc = journal_txn_put(txn, JDB_TOKEN_NAMES, c->name, nlen, c->digest, DIGEST_LEN);
    if (rc == AR_OK) /* the name and roles only, never the token or its digest */
        rc = audit_txn_append(txn, "token_created", NULL, json_pack("{s:s, s:s, s:s}", "name", c->name, "roles",
                              c->roles, "by", c->by), c->now_ms, NULL, err);
    return rc;
}

int auth_token_create(auth *a, const char *name, unsigned roles, int64_t expires_ms,
                      char token_out[AUTH_TOKEN_LEN + 1], ar_error *err)
{
    return auth_token_create_by(a, NULL, name, roles, expires_ms, token_out, err);
}

int auth_token_create_by(auth *a, const char *by, const char *name, unsigned roles, int64_t expires_ms,
                         char token_out[AUTH_TOKEN_LEN + 1], ar_error *err)
{
    token_out[0] = '\0';
    if (!valid_name(name))
        return name_error(err);
    if (roles == 0 || (roles & ~(unsigned)(AUTH_ROLE_SUBMITTER | AUTH_ROLE_APPROVER |
                                           AUTH_ROLE_OPERATOR | AUTH_ROLE_READER)))
        return ar_error_set(err, AR_E_INVALID, "invalid_roles",
                            "a token needs one or more of the roles " VALID_ROLES);
    int64_t now = ar_now_ms();
    if (expires_ms != 0 && expires_ms <= now)
        return ar_error_set(err, AR_E_INVALID, "invalid_expiry",
                            "the expiry must be in the future (or 0 for never)");

    /* Everything secret is computed here, once, outside the (repeatable) callback. */
    unsigned char raw[RAW_TOKEN_LEN], digest[DIGEST_LEN];
    randombytes_buf(raw, sizeof raw);
    memcpy(token_out, AUTH_TOKEN_PREFIX, PREFIX_LEN);
    sodium_bin2base64(token_out + PREFIX_LEN, AUTH_TOKEN_LEN + 1 - PREFIX_LEN, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    token_digest(a, token_out, AUTH_TOKEN_LEN, digest);

    int status;
    char *text = NULL;
    journal_batch *b = NULL;
    json_t *rec = json_pack("{s:s, s:o, s:I, s:o, s:n}", "name", name, "roles",
                            roles_to_json(roles), "created_ms", (json_int_t)now, "expires_ms",
                            expires_ms ? json_integer(expires_ms) : json_null(), "revoked_ms");
    if (!rec || !(text = jsonw_dumps(rec, JSON_COMPACT)) || !(b = journal_batch_new())) {
        status = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory creating a token");
        goto fail;
    }
    char roles_csv[96] = "";
    const json_t *role;
    size_t ri;
    json_array_foreach(json_object_get(rec, "roles"), ri, role) {
        size_t used = strlen(roles_csv);
        snprintf(roles_csv + used, sizeof roles_csv - used, "%s%s", ri ? "," : "", json_string_value(role));
    }
    struct create_ctx ctx = { .name = name, .digest = digest, .record = text, .roles = roles_csv,
                              .by = by ? by : "unknown", .now_ms = now };
    journal_batch_apply(b, create_apply, &ctx);
    status = journal_commit(a->j, b, err);
    if (status != AR_OK)
        goto fail;
    journal_batch_free(b);
    free(text);
    json_decref(rec);
    sodium_memzero(digest, sizeof digest);
    return AR_OK;
fail:
    journal_batch_free(b);
    free(text);
    json_decref(rec);
    sodium_memzero(digest, sizeof digest);
    sodium_memzero(token_out, AUTH_TOKEN_LEN + 1); /* not stored: never hand it out */
    return status;
}

/* ---- revoke ------------------------------------------------------------------------------ */

struct revoke_ctx {
    const char *name;
    const char *by;
    int64_t now_ms;
};

static int revoke_apply(journal_txn *txn, void *arg, ar_error *err)
{
    const struct revoke_ctx *c = arg;
    const void *digest, *val;
    size_t dlen, vlen;
    int rc = journal_txn_get(txn, JDB_TOKEN_NAMES, c->name, strlen(c->name), &digest, &dlen);
    if (rc == AR_OK)
        rc = journal_txn_get(txn, JDB_TOKENS, digest, dlen, &val, &vlen);
    if (rc == AR_E_NOTFOUND)
        return ar_error_set(err, AR_E_NOTFOUND, "token_not_found", "no token named %s", c->name);
    if (rc != AR_OK)
        return rc;
    json_t *rec = NULL;
    if ((rc = parse_record(val, vlen, &rec, err)) != AR_OK)
        return rc;
    if (!record_revoked(rec)) {
        char *text = NULL;
        if (json_object_set_new(rec, "revoked_ms", json_integer(c->now_ms)) != 0 ||
            !(text = jsonw_dumps(rec, JSON_COMPACT)))
            rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "out of memory revoking a token");
        else
            rc = journal_txn_put(txn, JDB_TOKENS, digest, dlen, text, strlen(text));
        free(text);
        if (rc == AR_OK)
            rc = audit_txn_append(txn, "token_revoked", NULL, json_pack("{s:s, s:s}", "name", c->name, "by", c->by),
                                  c->now_ms, NULL, err);
    }
    json_decref(rec);
    return rc;
}

int auth_token_revoke(auth *a, const char *name, ar_error *err)
{
    return auth_token_revoke_by(a, NULL, name, err);
}

int auth_token_revoke_by(auth *a, const char *by, const char *name, ar_error *err)
{
    if (!valid_name(name))
        return name_error(err);
    journal_batch *b = journal_batch_new();
    struct revoke_ctx ctx = { .name = name, .by = by ? by : "unknown", .now_ms = ar_now_ms() };
    if (b)
        journal_batch_apply(b, revoke_apply, &ctx);
    int status = journal_commit(a->j, b, err); /* a NULL batch is reported as out of memory */
    journal_batch_free(b);
    return status;
}

/* ---- list -------------------------------------------------------------------------------- */

static json_t *render(const char *name, size_t nlen, const json_t *rec, int64_t now_ms)
{
    const char *state = record_revoked(rec) ? "revoked"
                        : record_expired(rec, now_ms) ? "expired" : "active";
    return json_pack("{s:s%, s:o, s:o, s:o, s:o, s:s}", "name", name, nlen, "roles",
                     roles_to_json(roles_from_json(json_object_get(rec, "roles"))), "created_at",
                     time_or_null(json_object_get(rec, "created_ms")), "expires_at",
                     time_or_null(json_object_get(rec, "expires_ms")), "revoked_at",
                     time_or_null(json_object_get(rec, "revoked_ms")), "state", state);
}

int auth_token_list(auth *a, json_t **out, ar_error *err)
{
    *out = NULL;
    journal_read *r;
    journal_cursor *c = NULL;
    int rc = journal_read_begin(a->j, &r, err);
    if (rc != AR_OK)
        return rc;
    json_t *arr = json_array();
    if (!arr) {
        rc = AR_E_NOMEM;
        goto done;
    }
    if ((rc = journal_cursor_open(r, JDB_TOKEN_NAMES, &c)) != AR_OK)
        goto done;
    int64_t now = ar_now_ms();
    const void *key, *digest;
    size_t klen, dlen;
    rc = journal_cursor_get(c, JOURNAL_FIRST, &key, &klen, &digest, &dlen);
    for (; rc == AR_OK; rc = journal_cursor_get(c, JOURNAL_NEXT, &key, &klen, &digest, &dlen)) {
        const void *val;
        size_t vlen;
        rc = journal_get(r, JDB_TOKENS, digest, dlen, &val, &vlen);
        if (rc == AR_E_NOTFOUND)
            continue; /* a name without a record cannot authenticate: nothing to show */
        json_t *rec = NULL;
        if (rc != AR_OK || (rc = parse_record(val, vlen, &rec, err)) != AR_OK)
            break;
        json_t *item = render(key, klen, rec, now);
        json_decref(rec);
        if (!item || json_array_append_new(arr, item) != 0) {
            rc = AR_E_NOMEM;
            break;
        }
    }
    if (rc == AR_E_NOTFOUND)
        rc = AR_OK;
done:
    journal_cursor_close(c);
    journal_read_end(r);
    if (rc != AR_OK) {
        json_decref(arr);
        if (!err || !err->code[0] || rc == AR_E_NOMEM)
            ar_error_set(err, rc, rc == AR_E_NOMEM ? "out_of_memory" : "internal",
                         "listing tokens failed (status %d)", rc);
        return rc;
    }
    *out = arr;
    return AR_OK;
}

/* ---- verify ------------------------------------------------------------------------------ */

/* Shape check without an early exit (the shape is public, but there is no reason to differ). */
static bool well_formed(const char *token, size_t len)
{
    if (len != AUTH_TOKEN_LEN)
        return false;
    unsigned bad = (unsigned)sodium_memcmp(token, AUTH_TOKEN_PREFIX, PREFIX_LEN) & 1u;
    for (size_t i = PREFIX_LEN; i < AUTH_TOKEN_LEN; i++) {
        unsigned char c = (unsigned char)token[i];
        unsigned ok = (unsigned)((c >= 'A' && c <= 'Z') | (c >= 'a' && c <= 'z') |
                                 (c >= '0' && c <= '9') | (c == '-') | (c == '_'));
        bad |= ok ^ 1u;
    }
    return bad == 0;
}

/* The record of digest, parsed into *out: from the slot when its bytes are the same. */
static int record_fields(auth *a, const unsigned char digest[DIGEST_LEN], const void *val,
                         size_t vlen, seen_record *out, ar_error *err)
{
    seen_record *slot = &a->seen[digest[0] % SEEN_SLOTS];
    pthread_mutex_lock(&a->seen_lock);
    bool hit = slot->len == vlen && memcmp(slot->digest, digest, DIGEST_LEN) == 0 &&
               memcmp(slot->bytes, val, vlen) == 0;
    if (hit)
        *out = *slot;
    pthread_mutex_unlock(&a->seen_lock);
    if (hit)
        return AR_OK;
    json_t *rec = NULL;
    int rc = parse_record(val, vlen, &rec, err);
    if (rc != AR_OK)
        return rc;
    const char *name = json_string_value(json_object_get(rec, "name"));
    const json_t *exp = json_object_get(rec, "expires_ms");
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name ? name : "?");
    out->roles = roles_from_json(json_object_get(rec, "roles"));
    out->revoked = record_revoked(rec);
    out->expires = json_is_integer(exp);
    out->expires_ms = json_integer_value(exp);
    json_decref(rec);
    if (vlen > 0 && vlen <= SEEN_RECORD_MAX) {
        memcpy(out->digest, digest, DIGEST_LEN);
        memcpy(out->bytes, val, vlen);
        out->len = vlen;
        pthread_mutex_lock(&a->seen_lock);
        *slot = *out;
        pthread_mutex_unlock(&a->seen_lock);
    }
    return AR_OK;
}

int auth_verify(auth *a, const char *token, size_t token_len, auth_identity *out, ar_error *err)
{
    if (out)
        memset(out, 0, sizeof *out);
    /* Hash whatever was presented (at most VERIFY_MAX_INPUT bytes), well formed or not. */
    unsigned char digest[DIGEST_LEN];
    if (!token)
        token_len = 0;
    token_digest(a, token ? token : "", token_len > VERIFY_MAX_INPUT ? VERIFY_MAX_INPUT : token_len,
                 digest);
    if (!well_formed(token, token_len)) {
        sodium_memzero(digest, sizeof digest);
        return ar_error_set(err, AR_E_NOTFOUND, "unauthenticated", "malformed token");
    }

    /* A fresh snapshot every time: revocations and tokens made by aioctl count at once. */
    journal_read *r;
    int rc = journal_read_begin(a->j, &r, err);
    if (rc != AR_OK) {
        sodium_memzero(digest, sizeof digest);
        return rc;
    }
    const void *val;
    size_t vlen;
    seen_record rec;
    rc = journal_get(r, JDB_TOKENS, digest, sizeof digest, &val, &vlen);
    if (rc == AR_OK)
        rc = record_fields(a, digest, val, vlen, &rec, err);
    sodium_memzero(digest, sizeof digest);
    journal_read_end(r);
    if (rc == AR_E_NOTFOUND)
        return ar_error_set(err, AR_E_NOTFOUND, "unauthenticated", "unknown token");
    if (rc != AR_OK) {
        if (rc != AR_E_FORMAT)
            ar_error_set(err, rc, "internal", "token lookup failed (status %d)", rc);
        return rc;
    }

    if (rec.revoked) {
        rc = ar_error_set(err, AR_E_NOTFOUND, "unauthenticated", "token %s was revoked", rec.name);
    } else if (rec.expires && rec.expires_ms <= ar_now_ms()) {
        char when[64];
        ar_time_rfc3339(rec.expires_ms, when);
        rc = ar_error_set(err, AR_E_NOTFOUND, "unauthenticated", "token %s expired at %s", rec.name, when);
    } else {
        if (out) {
            snprintf(out->name, sizeof out->name, "%s", rec.name);
            out->roles = rec.roles;
        }
        ar_error_clear(err);
        rc = AR_OK;
    }
    return rc;
}
