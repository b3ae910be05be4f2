/* test_vault.c - the encrypted secret store: round trips, key files (creation, mode, owner,
 * format), a wrong key changes nothing, tampered and moved records, passphrase mode, no
 * plaintext on disk, rotation (and a crash before its commit, after it, and a SIGKILL at a
 * random moment), a vault re-keyed by another process. */
#include "test_main.h"
#include "test_dirs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "journal.h"
#include "vault.h"

/* The record layout (vault.c): version u32 LE | created i64 | updated i64 | nonce | ct. */
#define REC_VERSION_OFF 0
#define REC_CT_OFF (20 + 24)

/* ---- helpers ------------------------------------------------------------------------------ */

typedef struct fixture {
    char dir[64];            /* the data directory */
    char jdir[96];           /* dir/journal */
    char key[96];            /* dir/vault.key */
    char key_new[112];       /* dir/vault.key.new */
    journal *j;
} fixture;

static void fx_open_journal(fixture *f)
{
    journal_opts opts = {.dir = f->jdir, .map_size_mb = 64};
    ar_error err;
    int rc = journal_open(&opts, &f->j, &err);
    if (rc != AR_OK)
        fail_msg("journal_open: %d %s: %s", rc, err.code, err.message);
}

static void fx_init(fixture *f, bool with_key)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/aiorun-vault-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->jdir, sizeof f->jdir, "%s/journal", f->dir);
    snprintf(f->key, sizeof f->key, "%s/vault.key", f->dir);
    snprintf(f->key_new, sizeof f->key_new, "%s.new", f->key);
    if (with_key) {
        ar_error err;
        assert_int_equal(vault_key_create(f->key, &err), AR_OK);
    }
    fx_open_journal(f);
}

static void fx_fini(fixture *f)
{
    journal_close(f->j);
    f->j = NULL;
    test_remove_tree(f->dir);
}

static vault *open_key(fixture *f, const char *key_file)
{
    vault_opts o = {.key_file = key_file};
    vault *v = NULL;
    ar_error err;
    int rc = vault_open(f->j, &o, &v, &err);
    if (rc != AR_OK)
        fail_msg("vault_open(%s): %d %s: %s", key_file, rc, err.code, err.message);
    return v;
}

static int try_open(fixture *f, const char *key_file, ar_error *err)
{
    vault_opts o = {.key_file = key_file};
    vault *v = NULL;
    int rc = vault_open(f->j, &o, &v, err);
    if (rc == AR_OK)
        assert_non_null(v);
    else
        assert_null(v);
    vault_free(v);
    return rc;
}

static void set_ok(vault *v, const char *c, const char *n, const void *val, size_t len,
                   uint32_t expect_version)
{
    ar_error err;
    uint32_t version = 0;
    int rc = vault_set(v, c, n, val, len, &version, &err);
    if (rc != AR_OK)
        fail_msg("vault_set(%s, %s): %d %s: %s", c, n, rc, err.code, err.message);
    assert_int_equal(version, expect_version);
}

static void set_str(vault *v, const char *c, const char *n, const char *val, uint32_t ver)
{
    set_ok(v, c, n, val, strlen(val), ver);
}

static const vault_secret *find_secret(const vault_secrets *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->items[i].name, name) == 0)
            return &s->items[i];
    return NULL;
}

/* connector's secret name holds exactly val (len bytes). */
static void expect_secret(vault *v, const char *c, const char *n, const void *val, size_t len)
{
    vault_secrets s;
    ar_error err;
    int rc = vault_get_all(v, c, &s, &err);
    if (rc != AR_OK)
        fail_msg("vault_get_all(%s): %d %s: %s", c, rc, err.code, err.message);
    const vault_secret *it = find_secret(&s, n);
    assert_non_null(it);
    assert_int_equal(it->len, len);
    assert_memory_equal(it->value, val, len);
    assert_int_equal(it->value[len], '\0');
    vault_secrets_free(&s);
}

static void expect_str(vault *v, const char *c, const char *n, const char *val)
{
    expect_secret(v, c, n, val, strlen(val));
}

static void expect_error(int rc, const ar_error *err, int status, const char *code)
{
    if (rc != status || strcmp(err->code, code) != 0)
        fail_msg("expected %d %s, got %d %s: %s", status, code, rc, err->code, err->message);
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* The whole file into a malloc'd buffer (NUL-terminated); *len its size. */
static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? 2 * cap : 65536 * 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t r = fread(buf + n, 1, cap - n - 1, fp);
        n += r;
        if (r == 0)
            break;
    }
    fclose(fp);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Raw access to the stored record of connector/name. */
static size_t rec_key(char *key, const char *c, const char *n)
{
    size_t a = strlen(c), b = strlen(n);
    memcpy(key, c, a);
    key[a] = '\0';
    memcpy(key + a + 1, n, b);
    return a + 1 + b;
}

static unsigned char *raw_get(journal *j, const char *c, const char *n, size_t *len)
{
    char key[300];
    size_t klen = rec_key(key, c, n);
    journal_read *r;
    const void *val;
    assert_int_equal(journal_read_begin(j, &r, NULL), AR_OK);
    assert_int_equal(journal_get(r, JDB_SECRETS, key, klen, &val, len), AR_OK);
    unsigned char *copy = malloc(*len);
    assert_non_null(copy);
    memcpy(copy, val, *len);
    journal_read_end(r);
    return copy;
}

static void raw_put(journal *j, const char *c, const char *n, const void *val, size_t len)
{
    char key[300];
    size_t klen = rec_key(key, c, n);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_SECRETS, key, klen, val, len);
    ar_error err;
    assert_int_equal(journal_commit(j, b, &err), AR_OK);
    journal_batch_free(b);
}

/* ---- round trip --------------------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    ar_error err;

    set_str(v, "shop", "api_key", "shop-key-1", 1);
    set_str(v, "shop", "api_secret", "shop-secret", 1);
    set_str(v, "shop2", "api_key", "shop2-key", 1);
    set_str(v, "crm", "token", "crm-token", 1);
    set_str(v, "shop", "api_key", "shop-key-2", 2);
    set_str(v, "shop", "api_key", "shop-key-3", 3);

    /* Binary values with NULs, and the largest value allowed. */
    const unsigned char bin[] = {0, 1, 0, 255, 0, 'x', 0};
    set_ok(v, "crm", "binary", bin, sizeof bin, 1);
    unsigned char *big = malloc(VAULT_MAX_SECRET_LEN);
    assert_non_null(big);
    randombytes_buf(big, VAULT_MAX_SECRET_LEN);
    set_ok(v, "crm", "big", big, VAULT_MAX_SECRET_LEN, 1);

    vault_secrets s;
    assert_int_equal(vault_get_all(v, "shop", &s, &err), AR_OK);
    assert_int_equal(s.n, 2); /* not shop2's */
    assert_non_null(find_secret(&s, "api_key"));
    assert_int_equal(find_secret(&s, "api_key")->version, 3);
    vault_secrets_free(&s);
    assert_int_equal(s.n, 0);
    assert_null(s.items);
    expect_str(v, "shop", "api_key", "shop-key-3");
    expect_str(v, "shop", "api_secret", "shop-secret");
    expect_str(v, "shop2", "api_key", "shop2-key");
    expect_secret(v, "crm", "binary", bin, sizeof bin);
    expect_secret(v, "crm", "big", big, VAULT_MAX_SECRET_LEN);

    /* A connector without secrets. */
    assert_int_equal(vault_get_all(v, "nobody", &s, &err), AR_OK);
    assert_int_equal(s.n, 0);
    vault_secrets_free(&s);

    /* Refused input. */
    char long_name[VAULT_NAME_MAX + 1];
    memset(long_name, 'a', VAULT_NAME_MAX);
    long_name[VAULT_NAME_MAX] = '\0';
    expect_error(vault_set(v, "crm", "big", big, VAULT_MAX_SECRET_LEN + 1, NULL, &err), &err,
                 AR_E_INVALID, "secret_invalid");
    expect_error(vault_set(v, "crm", "empty", "", 0, NULL, &err), &err, AR_E_INVALID,
                 "secret_invalid");
    expect_error(vault_set(v, "", "x", "v", 1, NULL, &err), &err, AR_E_INVALID, "secret_invalid");
    expect_error(vault_set(v, "crm", long_name, "v", 1, NULL, &err), &err, AR_E_INVALID,
                 "secret_invalid");
    long_name[VAULT_NAME_MAX - 1] = '\0'; /* 127 bytes: allowed */
    set_str(v, "crm", long_name, "long-name-value", 1);
    expect_str(v, "crm", long_name, "long-name-value");

    /* list: names, versions and times, sorted, never values. */
    json_t *list = NULL;
    assert_int_equal(vault_list(v, NULL, &list, &err), AR_OK);
    assert_int_equal(json_array_size(list), 7);
    const char *order[][2] = {{"crm", long_name}, {"crm", "big"}, {"crm", "binary"},
                              {"crm", "token"}, {"shop", "api_key"}, {"shop", "api_secret"},
                              {"shop2", "api_key"}};
    for (size_t i = 0; i < 7; i++) {
        json_t *it = json_array_get(list, i);
        assert_string_equal(json_string_value(json_object_get(it, "connector")), order[i][0]);
        assert_string_equal(json_string_value(json_object_get(it, "name")), order[i][1]);
        assert_int_equal(json_object_size(it), 5);
        assert_true(json_integer_value(json_object_get(it, "created_ms")) > 0);
        assert_true(json_integer_value(json_object_get(it, "updated_ms")) >=
                    json_integer_value(json_object_get(it, "created_ms")));
    }
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 4), "version")), 3);
    char *dump = json_dumps(list, 0);
    assert_non_null(dump);
    assert_null(strstr(dump, "shop-key"));
    assert_null(strstr(dump, "crm-token"));
    assert_null(strstr(dump, "long-name-value"));
    free(dump);
    json_decref(list);
    assert_int_equal(vault_list(v, "shop", &list, &err), AR_OK);
    assert_int_equal(json_array_size(list), 2);
    json_decref(list);

    /* remove */
    assert_int_equal(vault_remove(v, "shop", "api_secret", &err), AR_OK);
    expect_error(vault_remove(v, "shop", "api_secret", &err), &err, AR_E_NOTFOUND,
                 "secret_not_found");
    assert_int_equal(vault_get_all(v, "shop", &s, &err), AR_OK);
    assert_int_equal(s.n, 1);
    vault_secrets_free(&s);
    /* A removed secret starts again at version 1. */
    set_str(v, "shop", "api_secret", "again", 1);

    /* Survives a close and reopen. */
    vault_free(v);
    journal_close(f.j);
    fx_open_journal(&f);
    v = open_key(&f, f.key);
    expect_str(v, "shop", "api_key", "shop-key-3");
    expect_secret(v, "crm", "big", big, VAULT_MAX_SECRET_LEN);
    vault_free(v);
    free(big);
    fx_fini(&f);
}

/* ---- key files ---------------------------------------------------------------------------- */

static void test_key_create(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    ar_error err;
    struct stat st;
    size_t len;
    assert_int_equal(stat(f.key, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    unsigned char *before = read_file(f.key, &len);
    assert_int_equal(len, 65);
    assert_int_equal(before[64], '\n');
    for (int i = 0; i < 64; i++)
        assert_non_null(strchr("0123456789abcdef", before[i]));

    /* Never overwritten. */
    expect_error(vault_key_create(f.key, &err), &err, AR_E_EXISTS, "vault_key_exists");
    size_t len2;
    unsigned char *after = read_file(f.key, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(before, after, len);
    free(after);
    free(before);

    /* The directory must exist; no temporary files are left behind. */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no/such/dir/vault.key", f.dir);
    assert_int_not_equal(vault_key_create(missing, &err), AR_OK);
    char other[128];
    snprintf(other, sizeof other, "%s/second.key", f.dir);
    umask(0); /* the mode is 0600 whatever the umask */
    assert_int_equal(vault_key_create(other, &err), AR_OK);
    umask(022);
    assert_int_equal(stat(other, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    before = read_file(f.key, &len);
    after = read_file(other, &len2);
    assert_memory_not_equal(before, after, 64);
    free(before);
    free(after);
    int files = 0;
    DIR *d = opendir(f.dir);
    assert_non_null(d);
    for (struct dirent *de; (de = readdir(d));)
        files += strstr(de->d_name, "tmp") != NULL;
    closedir(d);
    assert_int_equal(files, 0);
    fx_fini(&f);
}

static void test_key_missing(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, false);
    ar_error err;
    expect_error(try_open(&f, f.key, &err), &err, AR_E_NOTFOUND, "vault_key_missing");
    assert_non_null(strstr(err.message, "aioctl vault init"));
    fx_fini(&f);
}

static void test_key_mode_refused(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    set_str(v, "shop", "k", "value", 1);
    vault_free(v);
    ar_error err;
    const mode_t bad[] = {0640, 0644, 0604, 0660};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(chmod(f.key, bad[i]), 0);
        expect_error(try_open(&f, f.key, &err), &err, AR_E_INVALID, "vault_key_mode");
        char want[160];
        snprintf(want, sizeof want, "chmod 600 %s", f.key);
        assert_non_null(strstr(err.message, want));
    }
    assert_int_equal(chmod(f.key, 0400), 0); /* stricter is fine */
    assert_int_equal(try_open(&f, f.key, &err), AR_OK);
    fx_fini(&f);
}

static void test_key_owner_refused(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip(); /* only root can give the file to someone else */
    fixture f;
    fx_init(&f, true);
    ar_error err;
    assert_int_equal(chown(f.key, 65534, 65534), 0);
    expect_error(try_open(&f, f.key, &err), &err, AR_E_INVALID, "vault_key_owner");
    assert_int_equal(chown(f.key, 0, 0), 0);
    assert_int_equal(try_open(&f, f.key, &err), AR_OK);
    fx_fini(&f);
}

static void test_key_bad_format(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    ar_error err;
    size_t len;
    unsigned char *hex = read_file(f.key, &len);
    unsigned char raw[32];
    assert_int_equal(sodium_hex2bin(raw, sizeof raw, (char *)hex, 64, NULL, NULL, NULL), 0);
    vault *v = open_key(&f, f.key);
    set_str(v, "shop", "k", "format-test-value", 1);
    vault_free(v);

    /* The same key in its other accepted forms opens the vault. */
    write_file(f.key, raw, 32, 0600);
    v = open_key(&f, f.key);
    expect_str(v, "shop", "k", "format-test-value");
    vault_free(v);
    write_file(f.key, hex, 64, 0600); /* no newline */
    v = open_key(&f, f.key);
    vault_free(v);

    struct {
        const char *what;
        const void *data;
        size_t len;
    } bad[] = {
        {"empty", "", 0},
        {"31 raw bytes", raw, 31},
        {"33 bytes", hex, 33},
        {"63 hex", hex, 63},
        {"64 hex and two newlines", NULL, 66},
        {"64 non-hex", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n", 65},
        {"64 hex and a space", NULL, 65},
    };
    unsigned char two_nl[66], space[65];
    memcpy(two_nl, hex, 64);
    two_nl[64] = two_nl[65] = '\n';
    memcpy(space, hex, 64);
    space[64] = ' ';
    bad[4].data = two_nl;
    bad[6].data = space;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(f.key, bad[i].data, bad[i].len, 0600);
        int rc = try_open(&f, f.key, &err);
        if (rc != AR_E_INVALID || strcmp(err.code, "vault_key_invalid") != 0)
            fail_msg("%s: got %d %s", bad[i].what, rc, err.code);
    }
    free(hex);
    fx_fini(&f);
}

/* ---- a wrong key changes nothing ---------------------------------------------------------- */

/* Every regular file under a directory, sorted (nftw has no context argument). */
static char **walk_paths;
static size_t walk_n;

static int walk_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)ftw;
    if (flag == FTW_F) {
        walk_paths = realloc(walk_paths, (walk_n + 1) * sizeof *walk_paths);
        assert_non_null(walk_paths);
        assert_non_null(walk_paths[walk_n++] = strdup(path));
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t list_files(const char *dir, char ***out)
{
    walk_paths = NULL;
    walk_n = 0;
    assert_int_equal(nftw(dir, walk_entry, 8, FTW_PHYS), 0);
    qsort(walk_paths, walk_n, sizeof *walk_paths, cmp_str);
    *out = walk_paths;
    return walk_n;
}

static void free_files(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
}

/* BLAKE2b of every file under dir except LMDB's lock file (reader slots change with every
 * open), keyed by path, into out. */
static char *hash_tree(const char *dir)
{
    char **paths;
    size_t n = list_files(dir, &paths);
    char *out = NULL;
    size_t outlen = 0;
    FILE *acc = open_memstream(&out, &outlen);
    assert_non_null(acc);
    for (size_t i = 0; i < n; i++) {
        const char *base = strrchr(paths[i], '/');
        if (strcmp(base ? base + 1 : paths[i], "lock.mdb") == 0)
            continue;
        size_t len;
        unsigned char *data = read_file(paths[i], &len);
        assert_non_null(data);
        unsigned char h[32];
        char hx[65];
        crypto_generichash(h, sizeof h, data, len, NULL, 0);
        sodium_bin2hex(hx, sizeof hx, h, sizeof h);
        fprintf(acc, "%s %s\n", paths[i] + strlen(dir), hx);
        free(data);
    }
    fclose(acc);
    free_files(paths, n);
    return out;
}

static void test_wrong_key_changes_nothing(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    set_str(v, "shop", "k1", "wrong-key-test-value-one", 1);
    set_str(v, "crm", "k2", "wrong-key-test-value-two", 1);
    vault_free(v);

    char other[128];
    snprintf(other, sizeof other, "%s/other.key", f.dir);
    ar_error err;
    assert_int_equal(vault_key_create(other, &err), AR_OK);
    /* A .new that does not open the vault either must stay where it is. */
    assert_int_equal(vault_key_create(f.key_new, &err), AR_OK);
    journal_close(f.j);
    f.j = NULL;
    char *before = hash_tree(f.dir);
    assert_non_null(strstr(before, "/journal/data.mdb "));
    assert_non_null(strstr(before, "/vault.key "));

    fx_open_journal(&f);
    /* Wrong key at key_file, and a non-verifying .new beside it. */
    char saved[128];
    snprintf(saved, sizeof saved, "%s/saved.key", f.dir);
    assert_int_equal(rename(f.key, saved), 0);
    assert_int_equal(link(other, f.key), 0);
    expect_error(try_open(&f, f.key, &err), &err, AR_E_INVALID, "vault_wrong_key");
    expect_error(try_open(&f, other, &err), &err, AR_E_INVALID, "vault_wrong_key");
    assert_int_equal(access(f.key_new, F_OK), 0);
    journal_close(f.j);
    f.j = NULL;
    assert_int_equal(unlink(f.key), 0);
    assert_int_equal(rename(saved, f.key), 0);
    char *after = hash_tree(f.dir);
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* The right key still opens it (and removes the stale .new). */
    fx_open_journal(&f);
    v = open_key(&f, f.key);
    expect_str(v, "crm", "k2", "wrong-key-test-value-two");
    vault_free(v);
    assert_int_equal(access(f.key_new, F_OK), -1);
    fx_fini(&f);
}

/* ---- tampering ---------------------------------------------------------------------------- */

static void expect_corrupt(vault *v, const char *connector, const char *name)
{
    vault_secrets s;
    ar_error err;
    expect_error(vault_get_all(v, connector, &s, &err), &err, AR_E_INVALID, "secret_corrupt");
    assert_int_equal(s.n, 0);
    assert_null(s.items);
    assert_non_null(strstr(err.message, connector));
    assert_non_null(strstr(err.message, name));
}

static void test_tampered_ciphertext(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    set_str(v, "shop", "api_key", "tamper-test-value-abcdef", 1);
    set_str(v, "shop", "other", "untouched-value", 1);
    size_t len;
    unsigned char *rec = raw_get(f.j, "shop", "api_key", &len);
    assert_int_equal(len, REC_CT_OFF + strlen("tamper-test-value-abcdef") + 16);
    unsigned char *orig = malloc(len);
    memcpy(orig, rec, len);

    /* One flipped bit anywhere in nonce, ciphertext or tag; or the record cut short. */
    size_t spots[] = {20, REC_CT_OFF, REC_CT_OFF + 5, len - 1};
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        memcpy(rec, orig, len);
        rec[spots[i]] ^= 0x01;
        raw_put(f.j, "shop", "api_key", rec, len);
        expect_corrupt(v, "shop", "api_key");
    }
    raw_put(f.j, "shop", "api_key", orig, len - 1);
    expect_corrupt(v, "shop", "api_key");
    raw_put(f.j, "shop", "api_key", orig, 10);
    vault_secrets s;
    ar_error err;
    expect_error(vault_get_all(v, "shop", &s, &err), &err, AR_E_INVALID, "secret_corrupt");

    /* Put back, it reads again. */
    raw_put(f.j, "shop", "api_key", orig, len);
    expect_str(v, "shop", "api_key", "tamper-test-value-abcdef");
    free(orig);
    free(rec);
    vault_free(v);
    fx_fini(&f);
}

static void test_moved_record(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    set_str(v, "shop", "api_key", "moved-record-value-xyz123", 1);
    set_str(v, "shop", "api_key", "moved-record-value-xyz123", 2);
    size_t len;
    unsigned char *rec = raw_get(f.j, "shop", "api_key", &len);
    ar_error err;

    /* To another connector (another subkey and AD). */
    raw_put(f.j, "crm", "api_key", rec, len);
    expect_corrupt(v, "crm", "api_key");
    assert_int_equal(vault_remove(v, "crm", "api_key", &err), AR_OK);
    /* A connector whose records would share its subkey cannot exist, but the AD alone must
     * refuse a record under another name. */
    raw_put(f.j, "shop", "api_key2", rec, len);
    expect_corrupt(v, "shop", "api_key2");
    assert_int_equal(vault_remove(v, "shop", "api_key2", &err), AR_OK);
    /* Another version (an old record replayed under a new version number, or the reverse). */
    unsigned char *changed = malloc(len);
    memcpy(changed, rec, len);
    changed[REC_VERSION_OFF] = 1;
    raw_put(f.j, "shop", "api_key", changed, len);
    expect_corrupt(v, "shop", "api_key");
    raw_put(f.j, "shop", "api_key", rec, len);
    expect_str(v, "shop", "api_key", "moved-record-value-xyz123");
    free(changed);
    free(rec);
    vault_free(v);
    fx_fini(&f);
}

/* ---- passphrase mode (each unlock costs Argon2id MODERATE: ~0.7 s) -------------------------- */

static void test_passphrase(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    static const char pass1[] = "correct horse battery staple";
    static const char pass2[] = "a new passphrase after rotation";
    vault_opts o1 = {.passphrase = pass1, .passphrase_len = strlen(pass1)};
    vault_opts o2 = {.passphrase = pass2, .passphrase_len = strlen(pass2)};
    vault *v = NULL;
    ar_error err;

    assert_int_equal(vault_open(f.j, &o1, &v, &err), AR_OK); /* unlock 1: makes the meta */
    set_str(v, "shop", "api_key", "passphrase-mode-secret-01", 1);
    set_str(v, "crm", "token", "passphrase-mode-secret-02", 1);

    /* A key file does not open a passphrase vault (refused before any Argon2id). */
    expect_error(try_open(&f, f.key, &err), &err, AR_E_INVALID, "vault_mode_mismatch");
    /* A key-file rotation of a passphrase vault, or none at all, is refused. */
    expect_error(vault_rotate(v, NULL, 0, NULL, &err), &err, AR_E_INVALID, "vault_key_invalid");
    size_t count = 0;
    assert_int_equal(vault_rotate(v, pass2, strlen(pass2), &count, &err), AR_OK); /* 2 */
    assert_int_equal(count, 2);
    expect_str(v, "crm", "token", "passphrase-mode-secret-02");
    vault_free(v);

    v = NULL;
    expect_error(vault_open(f.j, &o1, &v, &err), &err, AR_E_INVALID, "vault_wrong_key"); /* 3 */
    assert_null(v);
    assert_int_equal(vault_open(f.j, &o2, &v, &err), AR_OK); /* 4 */
    expect_str(v, "shop", "api_key", "passphrase-mode-secret-01");
    expect_str(v, "crm", "token", "passphrase-mode-secret-02");
    vault_free(v);
    fx_fini(&f);
}

static void test_key_file_vault_refuses_passphrase(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    ar_error err;
    expect_error(vault_rotate(v, "pw", 2, NULL, &err), &err, AR_E_INVALID, "vault_mode_mismatch");
    vault_free(v);
    vault_opts o = {.passphrase = "pw", .passphrase_len = 2};
    v = NULL;
    expect_error(vault_open(f.j, &o, &v, &err), &err, AR_E_INVALID, "vault_mode_mismatch");
    assert_null(v);
    fx_fini(&f);
}

/* ---- no plaintext on disk ----------------------------------------------------------------- */

static bool file_contains(const char *path, const void *needle, size_t n)
{
    size_t len;
    unsigned char *data = read_file(path, &len);
    if (!data)
        fail_msg("cannot read %s", path);
    bool found = memmem(data, len, needle, n) != NULL;
    free(data);
    return found;
}

/* Does any file under dir hold needle? */
static bool tree_contains(const char *dir, const void *needle, size_t n)
{
    char **paths;
    size_t files = list_files(dir, &paths);
    bool found = false;
    assert_true(files >= 3); /* data.mdb, lock.mdb, the key */
    for (size_t i = 0; i < files; i++)
        found = found || file_contains(paths[i], needle, n);
    free_files(paths, files);
    return found;
}

static void test_no_plaintext_on_disk(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    const char *values[] = {
        "PLAINTEXT-CANARY-shop-api-key-0123456789",
        "PLAINTEXT-CANARY-shop-second-9876543210",
        "PLAINTEXT-CANARY-crm-token-abcdefghijkl",
        "PLAINTEXT-CANARY-updated-value-zyxwvuts",
    };
    set_str(v, "shop-canary-connector", "api_key", values[0], 1);
    set_str(v, "shop-canary-connector", "second", values[1], 1);
    set_str(v, "crm", "token", values[2], 1);
    set_str(v, "crm", "token", values[3], 2);
    /* A binary value too. */
    unsigned char bin[40];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 7 + 3);
    set_ok(v, "crm", "bin", bin, sizeof bin, 1);
    size_t count;
    ar_error err;
    assert_int_equal(vault_rotate(v, NULL, 0, &count, &err), AR_OK);
    assert_int_equal(count, 4);
    vault_free(v);
    journal_close(f.j);
    f.j = NULL;

    /* The scan can find what is there: connector names are stored in the clear. */
    assert_true(tree_contains(f.dir, "shop-canary-connector", strlen("shop-canary-connector")));
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        if (tree_contains(f.dir, values[i], strlen(values[i])))
            fail_msg("value %zu is stored in the clear", i);
    assert_false(tree_contains(f.dir, bin, sizeof bin));
    fx_fini(&f);
}

/* ---- rotation ----------------------------------------------------------------------------- */

static void fill(vault *v, int n)
{
    const char *conns[] = {"shop", "crm", "mail"};
    for (int i = 0; i < n; i++) {
        char name[32], val[64];
        snprintf(name, sizeof name, "secret-%05d", i);
        snprintf(val, sizeof val, "value-of-secret-%05d-%s", i, conns[i % 3]);
        set_str(v, conns[i % 3], name, val, 1);
    }
}

/* Every secret fill(n) wrote is there, with its value. */
static void check_fill(vault *v, int n)
{
    const char *conns[] = {"shop", "crm", "mail"};
    size_t seen = 0;
    for (int c = 0; c < 3; c++) {
        vault_secrets s;
        ar_error err;
        int rc = vault_get_all(v, conns[c], &s, &err);
        if (rc != AR_OK)
            fail_msg("vault_get_all(%s): %d %s: %s", conns[c], rc, err.code, err.message);
        for (size_t k = 0; k < s.n; k++) {
            int i = atoi(s.items[k].name + strlen("secret-"));
            char val[64];
            snprintf(val, sizeof val, "value-of-secret-%05d-%s", i, conns[i % 3]);
            assert_int_equal(i % 3, c);
            assert_int_equal(s.items[k].len, strlen(val));
            assert_memory_equal(s.items[k].value, val, s.items[k].len);
        }
        seen += s.n;
        vault_secrets_free(&s);
    }
    assert_int_equal(seen, (size_t)n);
}

static void test_rotate(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    fill(v, 30);
    set_str(v, "shop", "secret-00000", "value-of-secret-00000-shop", 2);
    size_t old_len, new_len, count = 0;
    unsigned char *old_key = read_file(f.key, &old_len);
    ar_error err;
    assert_int_equal(vault_rotate(v, NULL, 0, &count, &err), AR_OK);
    assert_int_equal(count, 30);
    check_fill(v, 30);
    /* Versions stay. */
    vault_secrets s;
    assert_int_equal(vault_get_all(v, "shop", &s, &err), AR_OK);
    assert_int_equal(find_secret(&s, "secret-00000")->version, 2);
    assert_int_equal(find_secret(&s, "secret-00003")->version, 1);
    vault_secrets_free(&s);
    /* A new key at key_file (0600), no .new left. */
    unsigned char *new_key = read_file(f.key, &new_len);
    assert_int_equal(new_len, 65);
    assert_memory_not_equal(old_key, new_key, 64);
    struct stat st;
    assert_int_equal(stat(f.key, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(access(f.key_new, F_OK), -1);
    /* Writes after the rotation use the new key; a second rotation works too. */
    set_str(v, "shop", "after", "written-after-rotation", 1);
    assert_int_equal(vault_rotate(v, NULL, 0, &count, &err), AR_OK);
    assert_int_equal(count, 31);
    vault_free(v);

    /* The new key opens it; the old one no longer does. */
    v = open_key(&f, f.key);
    expect_str(v, "shop", "after", "written-after-rotation");
    assert_int_equal(vault_remove(v, "shop", "after", &err), AR_OK);
    check_fill(v, 30);
    vault_free(v);
    char old_path[128];
    snprintf(old_path, sizeof old_path, "%s/old.key", f.dir);
    write_file(old_path, old_key, old_len, 0600);
    expect_error(try_open(&f, old_path, &err), &err, AR_E_INVALID, "vault_wrong_key");
    /* An empty vault rotates too. */
    fx_fini(&f);
    fx_init(&f, true);
    v = open_key(&f, f.key);
    assert_int_equal(vault_rotate(v, NULL, 0, &count, &err), AR_OK);
    assert_int_equal(count, 0);
    vault_free(v);
    v = open_key(&f, f.key);
    vault_free(v);
    free(old_key);
    free(new_key);
    fx_fini(&f);
}

/* A crash before the commit: the new key was written to .new, the records are untouched. */
static void test_rotate_crash_before_commit(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    fill(v, 12);
    vault_free(v);
    ar_error err;
    assert_int_equal(vault_key_create(f.key_new, &err), AR_OK);
    size_t len;
    unsigned char *before = read_file(f.key, &len);

    v = open_key(&f, f.key);
    assert_int_equal(access(f.key_new, F_OK), -1); /* the stale .new is gone */
    check_fill(v, 12);
    size_t len2;
    unsigned char *after = read_file(f.key, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(before, after, len); /* the key file is still the old one */
    /* And a rotation after that works. */
    assert_int_equal(vault_key_create(f.key_new, &err), AR_OK); /* stale again: replaced */
    size_t count;
    assert_int_equal(vault_rotate(v, NULL, 0, &count, &err), AR_OK);
    assert_int_equal(count, 12);
    vault_free(v);
    v = open_key(&f, f.key);
    check_fill(v, 12);
    vault_free(v);
    free(before);
    free(after);
    fx_fini(&f);
}

/* A crash after the commit, before the rename: key_file still holds the old key, .new the new
 * one that the records are encrypted with. */
static void test_rotate_crash_after_commit(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    fill(v, 12);
    size_t old_len, new_len, count;
    unsigned char *old_key = read_file(f.key, &old_len);
    ar_error err;
    assert_int_equal(vault_rotate(v, NULL, 0, &count, &err), AR_OK);
    vault_free(v);
    unsigned char *new_key = read_file(f.key, &new_len);
    /* Put the files back as they were between the commit and the rename. */
    assert_int_equal(rename(f.key, f.key_new), 0);
    write_file(f.key, old_key, old_len, 0600);

    v = open_key(&f, f.key); /* completes the rotation */
    check_fill(v, 12);
    vault_free(v);
    assert_int_equal(access(f.key_new, F_OK), -1);
    size_t len;
    unsigned char *now = read_file(f.key, &len);
    assert_int_equal(len, new_len);
    assert_memory_equal(now, new_key, len);
    struct stat st;
    assert_int_equal(stat(f.key, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    free(now);
    free(old_key);
    free(new_key);
    fx_fini(&f);
}

/* SIGKILL a process in the middle of rotating 2000 secrets, at random moments: the vault then
 * opens with every value intact, all under the old key or all under the new one. */
static void test_rotate_killed(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *v = open_key(&f, f.key);
    const int n = 2000;
    fill(v, n);
    vault_free(v);
    journal_close(f.j);
    f.j = NULL;

    /* Round 0 lets the child finish, to learn how long a rotation takes in a fresh process;
     * the later rounds kill it at a random moment within that time. */
    int64_t took_us = 0;
    int old_seen = 0, new_seen = 0;
    for (int round = 0; round < 7; round++) {
        size_t old_len;
        unsigned char *old_key = read_file(f.key, &old_len);
        int ready[2];
        assert_int_equal(pipe(ready), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            journal *j;
            vault *cv;
            journal_opts opts = {.dir = f.jdir, .map_size_mb = 64};
            vault_opts vo = {.key_file = f.key};
            if (journal_open(&opts, &j, NULL) != AR_OK || vault_open(j, &vo, &cv, NULL) != AR_OK)
                _exit(3);
            (void)!write(ready[1], "r", 1);
            _exit(vault_rotate(cv, NULL, 0, NULL, NULL) == AR_OK ? 0 : 4);
        }
        close(ready[1]);
        char c;
        assert_int_equal(read(ready[0], &c, 1), 1);
        close(ready[0]);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (round > 0) {
            usleep((useconds_t)randombytes_uniform((uint32_t)(took_us * 12 / 10) + 1));
            kill(pid, SIGKILL);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (round == 0)
            took_us = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
        if (WIFEXITED(status))
            assert_int_equal(WEXITSTATUS(status), 0); /* it finished before the kill */

        fx_open_journal(&f);
        v = open_key(&f, f.key);
        check_fill(v, n);
        vault_free(v);
        journal_close(f.j);
        f.j = NULL;
        assert_int_equal(access(f.key_new, F_OK), -1);
        size_t len;
        unsigned char *now = read_file(f.key, &len);
        if (len == old_len && memcmp(now, old_key, len) == 0)
            old_seen++;
        else
            new_seen++;
        free(now);
        free(old_key);
    }
    print_message("rotation took %lld us; then killed 6 times: %d of 7 left the old key, %d the new one\n", (long long)took_us, old_seen,
                  new_seen);
    fx_fini(&f);
}

/* Another vault on the same journal (another process, as aioctl beside the daemon) rotates:
 * this one notices and loads the new key before it reads or writes anything. */
static void test_rekeyed_elsewhere(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *daemon = open_key(&f, f.key);
    vault *tool = open_key(&f, f.key);
    set_str(daemon, "shop", "api_key", "rekeyed-elsewhere-value-1", 1);
    size_t count;
    ar_error err;
    assert_int_equal(vault_rotate(tool, NULL, 0, &count, &err), AR_OK);
    assert_int_equal(count, 1);
    /* A write by the vault that still holds the old key lands under the new one. */
    set_str(daemon, "shop", "second", "rekeyed-elsewhere-value-2", 1);
    expect_str(tool, "shop", "second", "rekeyed-elsewhere-value-2");
    assert_int_equal(vault_rotate(tool, NULL, 0, &count, &err), AR_OK);
    expect_str(daemon, "shop", "api_key", "rekeyed-elsewhere-value-1");
    /* And the stale one can rotate as well. */
    assert_int_equal(vault_rotate(daemon, NULL, 0, &count, &err), AR_OK);
    assert_int_equal(count, 2);
    expect_str(tool, "shop", "api_key", "rekeyed-elsewhere-value-1");
    vault_free(daemon);
    vault_free(tool);
    vault *v = open_key(&f, f.key);
    expect_str(v, "shop", "second", "rekeyed-elsewhere-value-2");
    vault_free(v);
    fx_fini(&f);
}

/* One vault rotates again and again while another instance on the same journal (as another
 * process would) and two threads of the first keep writing: every write lands under the key
 * in force, and everything reads back. */
typedef struct writer_arg {
    vault *v;
    const char *connector;
    int n;
} writer_arg;

static void *writer_main(void *p)
{
    writer_arg *a = p;
    for (int i = 0; i < a->n; i++) {
        char name[32], val[64];
        snprintf(name, sizeof name, "w-%04d", i);
        snprintf(val, sizeof val, "concurrent-%s-%04d", a->connector, i);
        ar_error err;
        if (vault_set(a->v, a->connector, name, val, strlen(val), NULL, &err) != AR_OK) {
            fprintf(stderr, "vault_set: %s: %s\n", err.code, err.message);
            return (void *)1;
        }
    }
    return NULL;
}

static void *rotator_main(void *p)
{
    vault *v = p;
    for (int i = 0; i < 8; i++) {
        ar_error err;
        if (vault_rotate(v, NULL, 0, NULL, &err) != AR_OK) {
            fprintf(stderr, "vault_rotate: %s: %s\n", err.code, err.message);
            return (void *)1;
        }
    }
    return NULL;
}

typedef struct opener_arg {
    journal *j;
    const char *key_file;
    volatile int *stop;
    int opened;
} opener_arg;

/* Opens (and reads through) a vault again and again while rotations run. */
static void *opener_main(void *p)
{
    opener_arg *a = p;
    while (!*a->stop) {
        vault_opts o = {.key_file = a->key_file};
        vault *v;
        vault_secrets s;
        ar_error err;
        if (vault_open(a->j, &o, &v, &err) != AR_OK) {
            fprintf(stderr, "vault_open: %s: %s\n", err.code, err.message);
            return (void *)1;
        }
        int rc = vault_get_all(v, "crm", &s, &err);
        vault_secrets_free(&s);
        vault_free(v);
        if (rc != AR_OK) {
            fprintf(stderr, "vault_get_all: %s: %s\n", err.code, err.message);
            return (void *)1;
        }
        a->opened++;
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f, true);
    vault *a = open_key(&f, f.key);
    vault *b = open_key(&f, f.key);
    fill(a, 60);
    writer_arg wa[3] = {{b, "crm", 150}, {a, "mail", 150}, {b, "shop", 150}};
    volatile int stop = 0;
    opener_arg oa = {.j = f.j, .key_file = f.key, .stop = &stop};
    pthread_t tw[3], tr, to;
    assert_int_equal(pthread_create(&to, NULL, opener_main, &oa), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&tw[i], NULL, writer_main, &wa[i]), 0);
    assert_int_equal(pthread_create(&tr, NULL, rotator_main, a), 0);
    void *ret;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(tw[i], &ret), 0);
        assert_null(ret);
    }
    assert_int_equal(pthread_join(tr, &ret), 0);
    assert_null(ret);
    stop = 1;
    assert_int_equal(pthread_join(to, &ret), 0);
    assert_null(ret);
    assert_true(oa.opened > 0);
    vault_free(a);
    vault_free(b);

    vault *v = open_key(&f, f.key);
    for (int c = 0; c < 3; c++) {
        vault_secrets s;
        ar_error err;
        assert_int_equal(vault_get_all(v, wa[c].connector, &s, &err), AR_OK);
        assert_int_equal(s.n, 20 + 150);
        vault_secrets_free(&s);
        expect_str(v, wa[c].connector, "w-0149", c == 0   ? "concurrent-crm-0149"
                                                  : c == 1 ? "concurrent-mail-0149"
                                                           : "concurrent-shop-0149");
    }
    vault_free(v);
    fx_fini(&f);
}

static int init_sodium(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_round_trip),
    cmocka_unit_test(test_key_create),
    cmocka_unit_test(test_key_missing),
    cmocka_unit_test(test_key_mode_refused),
    cmocka_unit_test(test_key_owner_refused),
    cmocka_unit_test(test_key_bad_format),
    cmocka_unit_test(test_wrong_key_changes_nothing),
    cmocka_unit_test(test_tampered_ciphertext),
    cmocka_unit_test(test_moved_record),
    cmocka_unit_test(test_passphrase),
    cmocka_unit_test(test_key_file_vault_refuses_passphrase),
    cmocka_unit_test(test_no_plaintext_on_disk),
    cmocka_unit_test(test_rotate),
    cmocka_unit_test(test_rotate_crash_before_commit),
    cmocka_unit_test(test_rotate_crash_after_commit),
    cmocka_unit_test(test_rotate_killed),
    cmocka_unit_test(test_rekeyed_elsewhere),
    cmocka_unit_test(test_concurrent),
};

AR_TEST_MAIN(tests, init_sodium, NULL)
