/* test_auth.c - API tokens: the server key file, token format, verification and its reasons,
 * expiry, revocation, name reuse, listing without secrets, another process's tokens, concurrent
 * creation, nothing secret on disk, roles parsing. */
#include "test_main.h"
#include "test_dirs.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "journal.h"

/* ---- helpers ---------------------------------------------------------------------------- */

typedef struct fixture {
    char *dir;
    char key_path[512];
    journal *j;
    auth *a;
} fixture;

static journal *open_journal(const char *dir)
{
    journal_opts opts = { .dir = dir, .map_size_mb = 16 };
    journal *j = NULL;
    ar_error err;
    int rc = journal_open(&opts, &j, &err);
    if (rc != AR_OK)
        fail_msg("journal_open(%s): %d %s: %s", dir, rc, err.code, err.message);
    return j;
}

static void fx_open(fixture *f)
{
    f->j = open_journal(f->dir);
    ar_error err;
    int rc = auth_open(f->j, f->key_path, &f->a, &err);
    if (rc != AR_OK)
        fail_msg("auth_open: %d %s: %s", rc, err.code, err.message);
}

static void fx_close(fixture *f)
{
    auth_free(f->a);
    f->a = NULL;
    journal_close(f->j);
    f->j = NULL;
}

static void fx_setup(fixture *f)
{
    memset(f, 0, sizeof *f);
    f->dir = test_tmpdir("auth");
    snprintf(f->key_path, sizeof f->key_path, "%s/auth.key", f->dir);
    fx_open(f);
}

static void fx_teardown(fixture *f)
{
    fx_close(f);
    test_rm_tree(f->dir);
}

static void create_ok(auth *a, const char *name, unsigned roles, int64_t expires_ms,
                      char token[AUTH_TOKEN_LEN + 1])
{
    ar_error err;
    int rc = auth_token_create(a, name, roles, expires_ms, token, &err);
    if (rc != AR_OK)
        fail_msg("auth_token_create(%s): %d %s: %s", name, rc, err.code, err.message);
}

/* Verify a NUL-terminated token; returns the status and fills err. */
static int verify(auth *a, const char *token, auth_identity *id, ar_error *err)
{
    return auth_verify(a, token, strlen(token), id, err);
}

static void assert_unauthenticated(auth *a, const char *token, size_t len, const char *reason_prefix)
{
    ar_error err;
    auth_identity id;
    assert_int_equal(auth_verify(a, token, len, &id, &err), AR_E_NOTFOUND);
    assert_string_equal(err.code, "unauthenticated");
    if (strncmp(err.message, reason_prefix, strlen(reason_prefix)) != 0)
        fail_msg("reason \"%s\" does not start with \"%s\"", err.message, reason_prefix);
    assert_string_equal(id.name, "");
    assert_int_equal(id.roles, 0);
    /* The reason never echoes what was presented (any 8 consecutive bytes of it). */
    for (size_t i = 0; token && len >= 8 && i + 8 <= len; i++)
        if (memmem(err.message, strlen(err.message), token + i, 8))
            fail_msg("reason \"%s\" contains part of the presented token", err.message);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

/* The stored digest of a token, computed from the key file as auth.c does. */
static void digest_of(const char *key_path, const char *token, unsigned char out[32])
{
    size_t klen;
    unsigned char *key = read_file(key_path, &klen);
    assert_non_null(key);
    assert_int_equal(klen, 32);
    crypto_generichash(out, 32, (const unsigned char *)token, strlen(token), key, 32);
    free(key);
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* ---- the server key --------------------------------------------------------------------- */

static void key_file_created_0600_and_reused(void **state)
{
    (void)state;
    fixture f;
    mode_t old_umask = umask(0); /* the key must be 0600 whatever the umask */
    memset(&f, 0, sizeof f);
    f.dir = test_tmpdir("auth");
    snprintf(f.key_path, sizeof f.key_path, "%s/auth.key", f.dir);
    fx_open(&f);
    umask(old_umask);

    struct stat st;
    assert_int_equal(stat(f.key_path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 32);
    size_t len;
    unsigned char *key1 = read_file(f.key_path, &len);
    assert_non_null(key1);

    char token[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "before-reopen", AUTH_ROLE_READER, 0, token);
    fx_close(&f);
    fx_open(&f);

    unsigned char *key2 = read_file(f.key_path, &len);
    assert_non_null(key2);
    assert_int_equal(len, 32);
    assert_memory_equal(key1, key2, 32);
    auth_identity id;
    ar_error err;
    assert_int_equal(verify(f.a, token, &id, &err), AR_OK);
    assert_string_equal(id.name, "before-reopen");
    assert_int_equal(id.roles, AUTH_ROLE_READER);
    free(key1);
    free(key2);

    /* No temporary file was left beside the key. */
    DIR *d = opendir(f.dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, "auth.key") && strcmp(e->d_name, "auth.key") != 0)
            fail_msg("left behind: %s", e->d_name);
    closedir(d);
    fx_teardown(&f);
}

static void key_file_readable_by_others_refused(void **state)
{
    (void)state;
    char *dir = test_tmpdir("auth");
    char path[512];
    snprintf(path, sizeof path, "%s/auth.key", dir);
    unsigned char key[32] = {1, 2, 3};
    write_file(path, key, sizeof key, 0644);
    journal *j = open_journal(dir);
    auth *a = (auth *)0x1;
    ar_error err;
    assert_int_equal(auth_open(j, path, &a, &err), AR_E_INVALID);
    assert_null(a);
    assert_string_equal(err.code, "auth_key");
    assert_non_null(strstr(err.message, "is readable by others (mode 0644)"));
    assert_non_null(strstr(err.message, "chmod 600"));
    assert_non_null(strstr(err.message, path));

    /* Group-only bits are refused too; 0600 (or 0400) is accepted. */
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(auth_open(j, path, &a, &err), AR_E_INVALID);
    assert_non_null(strstr(err.message, "(mode 0640)"));
    assert_int_equal(chmod(path, 0400), 0);
    assert_int_equal(auth_open(j, path, &a, &err), AR_OK);
    auth_free(a);
    journal_close(j);
    test_rm_tree(dir);
}

static void key_file_wrong_size_refused(void **state)
{
    (void)state;
    char *dir = test_tmpdir("auth");
    char path[512];
    snprintf(path, sizeof path, "%s/auth.key", dir);
    journal *j = open_journal(dir);
    auth *a = NULL;
    ar_error err;

    unsigned char bytes[64] = {0};
    write_file(path, bytes, 16, 0600);
    assert_int_equal(auth_open(j, path, &a, &err), AR_E_INVALID);
    assert_null(a);
    assert_string_equal(err.code, "auth_key");
    assert_non_null(strstr(err.message, "is not an aiorun auth key (16 bytes; expected 32)"));

    write_file(path, bytes, 0, 0600);
    assert_int_equal(auth_open(j, path, &a, &err), AR_E_INVALID);
    assert_non_null(strstr(err.message, "(0 bytes; expected 32)"));

    write_file(path, bytes, 64, 0600);
    assert_int_equal(auth_open(j, path, &a, &err), AR_E_INVALID);
    assert_non_null(strstr(err.message, "(64 bytes; expected 32)"));

    /* The refused file was left alone (never replaced by a fresh key). */
    size_t len;
    unsigned char *content = read_file(path, &len);
    assert_int_equal(len, 64);
    free(content);

    /* A directory where the key should be, and a missing parent directory. */
    char sub[600];
    snprintf(sub, sizeof sub, "%s/keydir", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_not_equal(auth_open(j, sub, &a, &err), AR_OK);
    assert_string_equal(err.code, "auth_key");
    snprintf(sub, sizeof sub, "%s/missing/auth.key", dir);
    assert_int_equal(auth_open(j, sub, &a, &err), AR_E_IO);
    assert_string_equal(err.code, "auth_key");
    journal_close(j);
    test_rm_tree(dir);
}

/* ---- tokens ----------------------------------------------------------------------------- */

static void token_format(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char t1[AUTH_TOKEN_LEN + 1], t2[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "one", AUTH_ROLE_SUBMITTER, 0, t1);
    create_ok(f.a, "two", AUTH_ROLE_SUBMITTER, 0, t2);
    const char *tokens[] = { t1, t2 };
    for (int k = 0; k < 2; k++) {
        const char *t = tokens[k];
        assert_int_equal(strlen(t), AUTH_TOKEN_LEN);
        assert_int_equal(strncmp(t, "aior_", 5), 0);
        for (size_t i = 5; i < AUTH_TOKEN_LEN; i++) {
            char c = t[i];
            bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_';
            if (!ok)
                fail_msg("token character %zu is '%c'", i, c);
        }
        unsigned char raw[64];
        size_t raw_len = 0;
        assert_int_equal(sodium_base642bin(raw, sizeof raw, t + 5, 43, NULL, &raw_len, NULL,
                                           sodium_base64_VARIANT_URLSAFE_NO_PADDING), 0);
        assert_int_equal(raw_len, 32);
    }
    assert_string_not_equal(t1, t2);
    fx_teardown(&f);
}

static void create_validates_input(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char token[AUTH_TOKEN_LEN + 1];
    ar_error err;
    char long_name[AUTH_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    const char *bad_names[] = { "", "a b", "a/b", "é", "a\nb", "a:b", long_name };
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        assert_int_equal(auth_token_create(f.a, bad_names[i], AUTH_ROLE_READER, 0, token, &err),
                         AR_E_INVALID);
        assert_string_equal(err.code, "invalid_token_name");
        assert_string_equal(token, "");
    }
    assert_int_equal(auth_token_create(f.a, NULL, AUTH_ROLE_READER, 0, token, &err), AR_E_INVALID);
    assert_string_equal(err.code, "invalid_token_name");
    long_name[AUTH_NAME_MAX] = '\0'; /* exactly 64: fine */
    create_ok(f.a, long_name, AUTH_ROLE_READER, 0, token);
    create_ok(f.a, "Ci.bot_7-x", AUTH_ROLE_READER, 0, token);

    assert_int_equal(auth_token_create(f.a, "r", 0, 0, token, &err), AR_E_INVALID);
    assert_string_equal(err.code, "invalid_roles");
    assert_int_equal(auth_token_create(f.a, "r", 1u << 7, 0, token, &err), AR_E_INVALID);
    assert_string_equal(err.code, "invalid_roles");
    assert_int_equal(auth_token_create(f.a, "e", AUTH_ROLE_READER, ar_now_ms() - 1000, token, &err),
                     AR_E_INVALID);
    assert_string_equal(err.code, "invalid_expiry");
    assert_int_equal(auth_token_create(f.a, "e", AUTH_ROLE_READER, -5, token, &err), AR_E_INVALID);
    assert_string_equal(err.code, "invalid_expiry");
    assert_string_equal(token, "");

    /* None of the refused creations left a record. */
    json_t *list;
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    assert_int_equal(json_array_size(list), 2);
    json_decref(list);
    fx_teardown(&f);
}

static void verify_returns_name_and_roles(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char ops[AUTH_TOKEN_LEN + 1], sub[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "ops", AUTH_ROLE_OPERATOR, 0, ops);
    create_ok(f.a, "ci.submit", AUTH_ROLE_SUBMITTER | AUTH_ROLE_READER, ar_now_ms() + 3600 * 1000,
              sub);
    auth_identity id;
    ar_error err;
    assert_int_equal(verify(f.a, ops, &id, &err), AR_OK);
    assert_string_equal(id.name, "ops");
    assert_int_equal(id.roles, AUTH_ROLE_OPERATOR);
    assert_int_equal(verify(f.a, sub, &id, &err), AR_OK);
    assert_string_equal(id.name, "ci.submit");
    assert_int_equal(id.roles, AUTH_ROLE_SUBMITTER | AUTH_ROLE_READER);
    /* A token followed by garbage in the buffer: only token_len bytes count. */
    char padded[AUTH_TOKEN_LEN + 8];
    snprintf(padded, sizeof padded, "%sXYZ", ops);
    assert_int_equal(auth_verify(f.a, padded, AUTH_TOKEN_LEN, &id, &err), AR_OK);
    assert_string_equal(id.name, "ops");
    fx_teardown(&f);
}

static void verify_rejects_bad_tokens(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char good[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "good", AUTH_ROLE_READER, 0, good);

    /* Well formed but unknown: a fresh random one, and the real one with one character changed. */
    char other[AUTH_TOKEN_LEN + 1];
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    memcpy(other, "aior_", 5);
    sodium_bin2base64(other + 5, sizeof other - 5, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    assert_unauthenticated(f.a, other, strlen(other), "unknown token");
    char changed[AUTH_TOKEN_LEN + 1];
    memcpy(changed, good, sizeof changed);
    changed[20] = changed[20] == 'A' ? 'B' : 'A';
    assert_unauthenticated(f.a, changed, strlen(changed), "unknown token");

    /* Malformed: wrong prefix, short, long, bad characters, empty, NULL, huge. */
    char wrong_prefix[AUTH_TOKEN_LEN + 1];
    memcpy(wrong_prefix, good, sizeof wrong_prefix);
    wrong_prefix[3] = 'x';
    assert_unauthenticated(f.a, wrong_prefix, AUTH_TOKEN_LEN, "malformed token");
    assert_unauthenticated(f.a, good, AUTH_TOKEN_LEN - 1, "malformed token");
    char longer[AUTH_TOKEN_LEN + 2];
    snprintf(longer, sizeof longer, "%sA", good);
    assert_unauthenticated(f.a, longer, strlen(longer), "malformed token");
    char bad_chars[AUTH_TOKEN_LEN + 1];
    memcpy(bad_chars, good, sizeof bad_chars);
    bad_chars[30] = '+';
    assert_unauthenticated(f.a, bad_chars, AUTH_TOKEN_LEN, "malformed token");
    bad_chars[30] = '\0';
    assert_unauthenticated(f.a, bad_chars, AUTH_TOKEN_LEN, "malformed token");
    assert_unauthenticated(f.a, "", 0, "malformed token");
    assert_unauthenticated(f.a, NULL, 0, "malformed token");
    assert_unauthenticated(f.a, "Bearer", 6, "malformed token");
    size_t huge_len = 100000;
    char *huge = malloc(huge_len + 1);
    assert_non_null(huge);
    for (size_t i = 0; i < huge_len; i += AUTH_TOKEN_LEN)
        memcpy(huge + i, good, huge_len - i < AUTH_TOKEN_LEN ? huge_len - i : AUTH_TOKEN_LEN);
    huge[huge_len] = '\0';
    assert_unauthenticated(f.a, huge, huge_len, "malformed token");
    free(huge);

    /* A NULL identity and a NULL error are allowed. */
    assert_int_equal(auth_verify(f.a, good, AUTH_TOKEN_LEN, NULL, NULL), AR_OK);
    assert_int_equal(auth_verify(f.a, other, AUTH_TOKEN_LEN, NULL, NULL), AR_E_NOTFOUND);
    fx_teardown(&f);
}

struct verify_worker {
    auth *a;
    const char *token;
    const char *unknown;
    int ok, refused;
};

static void *verify_worker_main(void *arg)
{
    struct verify_worker *w = arg;
    for (int i = 0; i < 300; i++) {
        auth_identity id;
        ar_error err;
        if (auth_verify(w->a, w->token, AUTH_TOKEN_LEN, &id, &err) == AR_OK &&
            strcmp(id.name, "shared") == 0)
            w->ok++;
        if (auth_verify(w->a, w->unknown, AUTH_TOKEN_LEN, &id, &err) == AR_E_NOTFOUND &&
            strcmp(err.message, "unknown token") == 0)
            w->refused++;
    }
    return NULL;
}

static void verify_from_many_threads(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char token[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "shared", AUTH_ROLE_READER, 0, token);
    char unknown[AUTH_TOKEN_LEN + 1];
    memcpy(unknown, token, sizeof unknown);
    unknown[10] = unknown[10] == 'z' ? 'y' : 'z';
    enum { N = 6 };
    pthread_t th[N];
    struct verify_worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (struct verify_worker){ .a = f.a, .token = token, .unknown = unknown };
        assert_int_equal(pthread_create(&th[i], NULL, verify_worker_main, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].ok, 300);
        assert_int_equal(w[i].refused, 300);
    }
    fx_teardown(&f);
}

static void expiry(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char token[AUTH_TOKEN_LEN + 1];
    ar_error err;
    assert_int_equal(auth_token_create(f.a, "short", AUTH_ROLE_READER, ar_now_ms() - 1, token, &err),
                     AR_E_INVALID);
    assert_string_equal(err.code, "invalid_expiry");

    int64_t expires = ar_now_ms() + 50;
    create_ok(f.a, "short", AUTH_ROLE_READER, expires, token);
    sleep_ms(100);
    assert_unauthenticated(f.a, token, AUTH_TOKEN_LEN, "token short expired at ");
    auth_identity id;
    assert_int_equal(verify(f.a, token, &id, &err), AR_E_NOTFOUND);
    /* "... expired at 2026-11-26T17:00:00.123Z" */
    const char *at = strstr(err.message, " at ") + 4;
    assert_int_equal(strlen(at), 24);
    assert_int_equal(at[4], '-');
    assert_int_equal(at[10], 'T');
    assert_int_equal(at[19], '.');
    assert_int_equal(at[23], 'Z');
    char ms[16];
    snprintf(ms, sizeof ms, "%03d", (int)(expires % 1000));
    assert_memory_equal(at + 20, ms, 3);

    json_t *list;
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "state")),
                        "expired");
    json_decref(list);

    /* An expired token's name may be reused; the old token stays invalid. */
    char fresh[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "short", AUTH_ROLE_APPROVER, 0, fresh);
    assert_int_equal(verify(f.a, fresh, &id, &err), AR_OK);
    assert_int_equal(id.roles, AUTH_ROLE_APPROVER);
    assert_unauthenticated(f.a, token, AUTH_TOKEN_LEN, "unknown token");
    fx_teardown(&f);
}

static void revoke_takes_effect_at_once(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char token[AUTH_TOKEN_LEN + 1], keep[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "leaked", AUTH_ROLE_OPERATOR, 0, token);
    create_ok(f.a, "kept", AUTH_ROLE_OPERATOR, 0, keep);
    auth_identity id;
    ar_error err;
    assert_int_equal(verify(f.a, token, &id, &err), AR_OK);
    assert_int_equal(auth_token_revoke(f.a, "leaked", &err), AR_OK);
    assert_unauthenticated(f.a, token, AUTH_TOKEN_LEN, "token leaked was revoked");
    assert_int_equal(verify(f.a, keep, &id, &err), AR_OK); /* the others are untouched */

    /* Twice is fine and keeps the first revocation time. */
    json_t *list;
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    char first[64];
    snprintf(first, sizeof first, "%s",
             json_string_value(json_object_get(json_array_get(list, 1), "revoked_at")));
    json_decref(list);
    sleep_ms(5);
    assert_int_equal(auth_token_revoke(f.a, "leaked", &err), AR_OK);
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 1), "revoked_at")),
                        first);
    json_decref(list);

    assert_int_equal(auth_token_revoke(f.a, "nobody", &err), AR_E_NOTFOUND);
    assert_string_equal(err.code, "token_not_found");
    assert_non_null(strstr(err.message, "nobody"));
    assert_int_equal(auth_token_revoke(f.a, "bad name", &err), AR_E_INVALID);
    assert_string_equal(err.code, "invalid_token_name");
    fx_teardown(&f);
}

static void create_live_name_exists(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char token[AUTH_TOKEN_LEN + 1], second[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "deploy", AUTH_ROLE_SUBMITTER, 0, token);
    ar_error err;
    assert_int_equal(auth_token_create(f.a, "deploy", AUTH_ROLE_OPERATOR, 0, second, &err),
                     AR_E_EXISTS);
    assert_string_equal(err.code, "token_exists");
    assert_non_null(strstr(err.message, "a token named deploy already exists"));
    assert_non_null(strstr(err.message, "aioctl token revoke deploy"));
    assert_string_equal(second, ""); /* no token handed out for a refused create */
    auth_identity id;
    assert_int_equal(verify(f.a, token, &id, &err), AR_OK);
    assert_int_equal(id.roles, AUTH_ROLE_SUBMITTER); /* unchanged */

    /* A live token with a future expiry also holds its name. */
    create_ok(f.a, "temp", AUTH_ROLE_READER, ar_now_ms() + 60000, token);
    assert_int_equal(auth_token_create(f.a, "temp", AUTH_ROLE_READER, 0, second, &err), AR_E_EXISTS);
    assert_string_equal(err.code, "token_exists");
    fx_teardown(&f);
}

static void recreate_after_revoke(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char old[AUTH_TOKEN_LEN + 1], fresh[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "bot", AUTH_ROLE_OPERATOR, 0, old);
    ar_error err;
    assert_int_equal(auth_token_revoke(f.a, "bot", &err), AR_OK);
    create_ok(f.a, "bot", AUTH_ROLE_READER, 0, fresh);
    assert_string_not_equal(old, fresh);
    auth_identity id;
    assert_int_equal(verify(f.a, fresh, &id, &err), AR_OK);
    assert_string_equal(id.name, "bot");
    assert_int_equal(id.roles, AUTH_ROLE_READER);
    assert_int_equal(verify(f.a, old, &id, &err), AR_E_NOTFOUND);
    assert_string_equal(err.code, "unauthenticated");
    assert_string_equal(id.name, "");

    json_t *list;
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    assert_int_equal(json_array_size(list), 1);
    json_t *item = json_array_get(list, 0);
    assert_string_equal(json_string_value(json_object_get(item, "state")), "active");
    assert_true(json_is_null(json_object_get(item, "revoked_at")));
    json_decref(list);

    /* The old record is gone from the journal: one record per name. */
    journal_read *r;
    assert_int_equal(journal_read_begin(f.j, &r, NULL), AR_OK);
    journal_cursor *c;
    assert_int_equal(journal_cursor_open(r, JDB_TOKENS, &c), AR_OK);
    int n = 0;
    const void *k, *v;
    size_t kl, vl;
    for (int rc = journal_cursor_get(c, JOURNAL_FIRST, &k, &kl, &v, &vl); rc == AR_OK;
         rc = journal_cursor_get(c, JOURNAL_NEXT, &k, &kl, &v, &vl))
        n++;
    assert_int_equal(n, 1);
    journal_cursor_close(c);
    journal_read_end(r);
    fx_teardown(&f);
}

static void list_shows_tokens_without_secrets(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    char t_a[AUTH_TOKEN_LEN + 1], t_b[AUTH_TOKEN_LEN + 1], t_c[AUTH_TOKEN_LEN + 1];
    int64_t before = ar_now_ms();
    int64_t expires = before + 3600 * 1000;
    create_ok(f.a, "zeta", AUTH_ROLE_READER, 0, t_c);
    create_ok(f.a, "alpha", AUTH_ROLE_SUBMITTER | AUTH_ROLE_APPROVER, expires, t_a);
    create_ok(f.a, "mid", AUTH_ROLE_OPERATOR, 0, t_b);
    ar_error err;
    assert_int_equal(auth_token_revoke(f.a, "mid", &err), AR_OK);

    json_t *list;
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    assert_true(json_is_array(list));
    assert_int_equal(json_array_size(list), 3);
    const char *names[] = { "alpha", "mid", "zeta" };
    const char *states[] = { "active", "revoked", "active" };
    for (size_t i = 0; i < 3; i++) {
        json_t *item = json_array_get(list, i);
        assert_string_equal(json_string_value(json_object_get(item, "name")), names[i]);
        assert_string_equal(json_string_value(json_object_get(item, "state")), states[i]);
        const char *created = json_string_value(json_object_get(item, "created_at"));
        assert_non_null(created);
        assert_int_equal(strlen(created), 24);
        assert_int_equal(created[23], 'Z');
        assert_int_equal(json_object_size(item), 6);
    }
    json_t *alpha = json_array_get(list, 0), *mid = json_array_get(list, 1),
           *zeta = json_array_get(list, 2);
    json_t *roles = json_object_get(alpha, "roles");
    assert_int_equal(json_array_size(roles), 2);
    assert_string_equal(json_string_value(json_array_get(roles, 0)), "submitter");
    assert_string_equal(json_string_value(json_array_get(roles, 1)), "approver");
    assert_string_equal(json_string_value(json_array_get(json_object_get(mid, "roles"), 0)),
                        "operator");
    assert_string_equal(json_string_value(json_array_get(json_object_get(zeta, "roles"), 0)),
                        "reader");
    /* expires_at is the RFC 3339 form of the expiry we gave. */
    char want[80];
    time_t secs = (time_t)(expires / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(expires % 1000));
    assert_string_equal(json_string_value(json_object_get(alpha, "expires_at")), want);
    assert_true(json_is_null(json_object_get(zeta, "expires_at")));
    assert_true(json_is_null(json_object_get(alpha, "revoked_at")));
    assert_non_null(json_string_value(json_object_get(mid, "revoked_at")));

    /* No token, token body or digest (raw, hex or base64) anywhere in the listing. */
    char *text = json_dumps(list, JSON_COMPACT);
    assert_non_null(text);
    const char *tokens[] = { t_a, t_b, t_c };
    for (size_t i = 0; i < 3; i++) {
        assert_null(strstr(text, tokens[i]));
        assert_null(strstr(text, tokens[i] + 5));
        char head[17];
        snprintf(head, sizeof head, "%s", tokens[i] + 5);
        assert_null(strstr(text, head));
        unsigned char digest[32];
        digest_of(f.key_path, tokens[i], digest);
        char hex[65], b64[64], b64url[64];
        sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
        sodium_bin2base64(b64, sizeof b64, digest, sizeof digest, sodium_base64_VARIANT_ORIGINAL);
        sodium_bin2base64(b64url, sizeof b64url, digest, sizeof digest,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        assert_null(strstr(text, hex));
        assert_null(strstr(text, b64url));
        b64[20] = '\0';
        assert_null(strstr(text, b64));
        assert_null(memmem(text, strlen(text), digest, 8));
    }
    free(text);
    json_decref(list);

    /* An empty store lists as []. */
    fx_close(&f);
    test_rm_tree(f.dir);
    fx_setup(&f);
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    fx_teardown(&f);
}

/* ---- other writers ---------------------------------------------------------------------- */

/* A child process (forked before this process opens the journal, standing in for aioctl
 * working offline) creates a token; the parent's open store accepts it at once. */
static void token_from_other_process_verifies_at_once(void **state)
{
    (void)state;
    fixture f;
    memset(&f, 0, sizeof f);
    f.dir = test_tmpdir("auth");
    snprintf(f.key_path, sizeof f.key_path, "%s/auth.key", f.dir);
    int go[2], back[2];
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(back), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        close(back[0]);
        char c;
        if (read(go[0], &c, 1) != 1)
            _exit(2);
        journal_opts opts = { .dir = f.dir, .map_size_mb = 16 };
        journal *j;
        auth *a;
        char token[AUTH_TOKEN_LEN + 1];
        if (journal_open(&opts, &j, NULL) != AR_OK)
            _exit(3);
        if (auth_open(j, f.key_path, &a, NULL) != AR_OK)
            _exit(4);
        if (auth_token_create(a, "offline", AUTH_ROLE_APPROVER, 0, token, NULL) != AR_OK)
            _exit(5);
        /* and revokes one the parent made */
        if (auth_token_revoke(a, "parent", NULL) != AR_OK)
            _exit(6);
        auth_free(a);
        journal_close(j);
        if (write(back[1], token, AUTH_TOKEN_LEN) != AUTH_TOKEN_LEN)
            _exit(7);
        _exit(0);
    }
    close(go[0]);
    close(back[1]);
    fx_open(&f);
    char mine[AUTH_TOKEN_LEN + 1];
    create_ok(f.a, "parent", AUTH_ROLE_READER, 0, mine);
    auth_identity id;
    ar_error err;
    assert_int_equal(verify(f.a, mine, &id, &err), AR_OK);
    /* The parent has used its store before the child writes: any cache would show now. */
    assert_int_equal(write(go[1], "x", 1), 1);
    char token[AUTH_TOKEN_LEN + 1] = {0};
    assert_int_equal(read(back[0], token, AUTH_TOKEN_LEN), AUTH_TOKEN_LEN);
    int wstatus;
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    assert_true(WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);

    assert_int_equal(verify(f.a, token, &id, &err), AR_OK);
    assert_string_equal(id.name, "offline");
    assert_int_equal(id.roles, AUTH_ROLE_APPROVER);
    assert_unauthenticated(f.a, mine, AUTH_TOKEN_LEN, "token parent was revoked");
    close(go[1]);
    close(back[0]);
    fx_teardown(&f);
}

struct create_worker {
    auth *a;
    pthread_barrier_t *start;
    int status;
    char code[48];
    char token[AUTH_TOKEN_LEN + 1];
};

static void *create_worker_main(void *arg)
{
    struct create_worker *w = arg;
    ar_error err;
    pthread_barrier_wait(w->start);
    w->status = auth_token_create(w->a, "contested", AUTH_ROLE_OPERATOR, 0, w->token, &err);
    snprintf(w->code, sizeof w->code, "%s", w->status == AR_OK ? "" : err.code);
    return NULL;
}

static void concurrent_create_same_name(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    enum { N = 8 };
    pthread_t th[N];
    struct create_worker w[N];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    for (int i = 0; i < N; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].a = f.a;
        w[i].start = &start;
        assert_int_equal(pthread_create(&th[i], NULL, create_worker_main, &w[i]), 0);
    }
    int winners = 0, winner = -1;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (w[i].status == AR_OK) {
            winners++;
            winner = i;
        } else {
            assert_int_equal(w[i].status, AR_E_EXISTS);
            assert_string_equal(w[i].code, "token_exists");
            assert_string_equal(w[i].token, "");
        }
    }
    pthread_barrier_destroy(&start);
    assert_int_equal(winners, 1);
    auth_identity id;
    ar_error err;
    assert_int_equal(verify(f.a, w[winner].token, &id, &err), AR_OK);
    assert_string_equal(id.name, "contested");
    json_t *list;
    assert_int_equal(auth_token_list(f.a, &list, &err), AR_OK);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
    fx_teardown(&f);
}

/* ---- nothing secret on disk ------------------------------------------------------------- */

static void data_files_hold_no_token(void **state)
{
    (void)state;
    fixture f;
    fx_setup(&f);
    enum { N = 5 };
    char tokens[N][AUTH_TOKEN_LEN + 1];
    unsigned char raws[N][32];
    for (int i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        create_ok(f.a, name, AUTH_ROLE_READER, i % 2 ? ar_now_ms() + 60000 : 0, tokens[i]);
        size_t raw_len;
        assert_int_equal(sodium_base642bin(raws[i], 32, tokens[i] + 5, 43, NULL, &raw_len, NULL,
                                           sodium_base64_VARIANT_URLSAFE_NO_PADDING), 0);
    }
    ar_error err;
    assert_int_equal(auth_token_revoke(f.a, "t0", &err), AR_OK);
    fx_close(&f); /* everything flushed */

    const char *files[] = { "data.mdb", "lock.mdb", "auth.key" };
    for (size_t k = 0; k < 3; k++) {
        char path[600];
        snprintf(path, sizeof path, "%s/%s", f.dir, files[k]);
        size_t len;
        unsigned char *content = read_file(path, &len);
        if (!content)
            fail_msg("missing %s", path);
        for (int i = 0; i < N; i++) {
            if (memmem(content, len, tokens[i], AUTH_TOKEN_LEN) ||
                memmem(content, len, tokens[i] + 5, 16) || memmem(content, len, raws[i], 16))
                fail_msg("%s holds (part of) token %d", files[k], i);
        }
        free(content);
    }
    /* ... but the records are there (the scan looked at the right place). */
    size_t len;
    char path[600];
    snprintf(path, sizeof path, "%s/data.mdb", f.dir);
    unsigned char *data = read_file(path, &len);
    assert_non_null(data);
    assert_non_null(memmem(data, len, "\"name\":\"t3\"", 11));
    unsigned char digest[32];
    digest_of(f.key_path, tokens[3], digest);
    assert_non_null(memmem(data, len, digest, sizeof digest));
    free(data);
    fx_open(&f);
    fx_teardown(&f);
}

/* ---- roles ------------------------------------------------------------------------------ */

static void roles_parse_and_format(void **state)
{
    (void)state;
    unsigned all = AUTH_ROLE_SUBMITTER | AUTH_ROLE_APPROVER | AUTH_ROLE_OPERATOR | AUTH_ROLE_READER;
    for (unsigned roles = 1; roles <= all; roles++) {
        char buf[64];
        auth_roles_format(roles, buf, sizeof buf);
        unsigned back = 0;
        ar_error err;
        assert_int_equal(auth_roles_parse(buf, &back, &err), AR_OK);
        assert_int_equal(back, roles);
    }
    char buf[64];
    auth_roles_format(AUTH_ROLE_READER | AUTH_ROLE_SUBMITTER, buf, sizeof buf);
    assert_string_equal(buf, "submitter,reader");
    auth_roles_format(0, buf, sizeof buf);
    assert_string_equal(buf, "");
    auth_roles_format(all, buf, 14); /* too small: whole names only */
    assert_string_equal(buf, "submitter");
    auth_roles_format(all, buf, 1);
    assert_string_equal(buf, "");

    unsigned roles = 0;
    ar_error err;
    assert_int_equal(auth_roles_parse(" submitter , reader ", &roles, &err), AR_OK);
    assert_int_equal(roles, AUTH_ROLE_SUBMITTER | AUTH_ROLE_READER);
    assert_int_equal(auth_roles_parse("operator,operator", &roles, &err), AR_OK);
    assert_int_equal(roles, AUTH_ROLE_OPERATOR);
    assert_int_equal(auth_roles_parse("approver", &roles, &err), AR_OK);
    assert_int_equal(roles, AUTH_ROLE_APPROVER);

    roles = 99;
    assert_int_equal(auth_roles_parse("submitter,admin", &roles, &err), AR_E_INVALID);
    assert_string_equal(err.code, "invalid_roles");
    assert_non_null(strstr(err.message, "admin"));
    assert_non_null(strstr(err.message, "submitter, approver, operator, reader"));
    assert_int_equal(roles, 99); /* untouched on failure */
    const char *bad[] = { "", "   ", "submitter,", ",reader", "submitter,,reader", "Submitter",
                          "reader;operator" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (auth_roles_parse(bad[i], &roles, &err) != AR_E_INVALID)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_string_equal(err.code, "invalid_roles");
    }
    assert_int_equal(auth_roles_parse(NULL, &roles, &err), AR_E_INVALID);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(key_file_created_0600_and_reused),
    cmocka_unit_test(key_file_readable_by_others_refused),
    cmocka_unit_test(key_file_wrong_size_refused),
    cmocka_unit_test(token_format),
    cmocka_unit_test(create_validates_input),
    cmocka_unit_test(verify_returns_name_and_roles),
    cmocka_unit_test(verify_rejects_bad_tokens),
    cmocka_unit_test(verify_from_many_threads),
    cmocka_unit_test(expiry),
    cmocka_unit_test(revoke_takes_effect_at_once),
    cmocka_unit_test(create_live_name_exists),
    cmocka_unit_test(recreate_after_revoke),
    cmocka_unit_test(list_shows_tokens_without_secrets),
    cmocka_unit_test(token_from_other_process_verifies_at_once),
    cmocka_unit_test(concurrent_create_same_name),
    cmocka_unit_test(data_files_hold_no_token),
    cmocka_unit_test(roles_parse_and_format),
};

AR_TEST_MAIN(tests, NULL, NULL)
