/* test_aioctl_vault.c - `aioctl --config F vault ...` and `secrets ...` as an operator runs
 * them: the built aioctl binary, fed through a pipe (or a terminal, for the prompt), against a
 * temporary config and data directory; what it stored is checked through the vault itself. */
#include "test_main.h"
#include "test_dirs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "journal.h"
#include "vault.h"

#define AIOCTL AIORUN_BUILD_DIR "/bin/aioctl"

typedef struct env {
    char dir[64];
    char config[128];
    char data[128];
    char key[160];
    char pass[160];
} env;

static void write_text(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            assert_non_null(buf = realloc(buf, cap));
        }
        r = fread(buf + n, 1, cap - n - 1, fp);
        n += r;
    } while (r > 0);
    fclose(fp);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* A config with connector shop (secrets api_key, api_secret); passphrase mode when
 * passphrase is not NULL (its file written 0600). */
static void env_init(env *e, const char *passphrase)
{
    memset(e, 0, sizeof *e);
    snprintf(e->dir, sizeof e->dir, "/tmp/aiorun-aioctl-vault-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->config, sizeof e->config, "%s/aiorun.json", e->dir);
    snprintf(e->data, sizeof e->data, "%s/data", e->dir);
    snprintf(e->key, sizeof e->key, "%s/vault.key", e->data);
    snprintf(e->pass, sizeof e->pass, "%s/vault.pass", e->dir);
    char text[512];
    snprintf(text, sizeof text,
             "{\"data_dir\": \"data\", %s\"connectors\": {\"shop\": {\"plugin\": \"echo\", "
             "\"secrets\": [\"api_key\", \"api_secret\"]}}}",
             passphrase ? "\"vault_passphrase_file\": \"vault.pass\", " : "");
    write_text(e->config, text, 0644);
    if (passphrase)
        write_text(e->pass, passphrase, 0600);
}

static void env_fini(env *e)
{
    test_remove_tree(e->dir);
}

typedef struct result {
    int code;            /* exit status; -1 when killed */
    char *out, *err;     /* malloc'd */
} result;

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
}

/* Run aioctl with args (NULL-terminated; "aioctl" is put in front) and in (len bytes) on
 * stdin through a pipe. */
static result run_in(const env *e, const void *in, size_t len, const char *const *args)
{
    char out_path[128], err_path[128];
    snprintf(out_path, sizeof out_path, "%s/stdout", e->dir);
    snprintf(err_path, sizeof err_path, "%s/stderr", e->dir);
    const char *argv[24] = {"aioctl"};
    size_t n = 1;
    for (; args[n - 1]; n++) {
        assert_true(n < 23);
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int er = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || er < 0 || chdir(e->dir) != 0)
            _exit(126);
        dup2(pipefd[0], 0);
        dup2(o, 1);
        dup2(er, 2);
        close(pipefd[0]);
        close(pipefd[1]);
        unsetenv("AIORUN_URL");
        unsetenv("AIORUN_TOKEN");
        execv(AIOCTL, (char **)argv);
        _exit(127);
    }
    close(pipefd[0]);
    signal(SIGPIPE, SIG_IGN); /* aioctl may refuse before it reads */
    const char *p = in;
    while (len > 0) {
        ssize_t w = write(pipefd[1], p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        len -= (size_t)w;
    }
    close(pipefd[1]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    result r = {.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1};
    r.out = slurp(out_path, NULL);
    r.err = slurp(err_path, NULL);
    assert_non_null(r.out);
    assert_non_null(r.err);
    if (r.code == 127)
        fail_msg("cannot run %s", AIOCTL);
    return r;
}

#define RUN(e, in, ...) run_in((e), (in), strlen(in), (const char *const[]){__VA_ARGS__, NULL})

static void expect_code(const result *r, int code)
{
    if (r->code != code)
        fail_msg("exit %d, expected %d\nstdout: %s\nstderr: %s", r->code, code, r->out, r->err);
}

/* The value stored for shop/name, through the vault (key-file mode). */
static void expect_stored(const env *e, const char *connector, const char *name,
                          const void *value, size_t len)
{
    char jdir[160];
    snprintf(jdir, sizeof jdir, "%s/journal", e->data);
    journal_opts jo = {.dir = jdir, .map_size_mb = 0};
    journal *j;
    vault *v;
    ar_error err;
    assert_int_equal(journal_open(&jo, &j, &err), AR_OK);
    vault_opts vo = {.key_file = e->key};
    if (vault_open(j, &vo, &v, &err) != AR_OK)
        fail_msg("vault_open: %s: %s", err.code, err.message);
    vault_secrets s;
    assert_int_equal(vault_get_all(v, connector, &s, &err), AR_OK);
    bool found = false;
    for (size_t i = 0; i < s.n; i++) {
        if (strcmp(s.items[i].name, name) != 0)
            continue;
        found = true;
        assert_int_equal(s.items[i].len, len);
        assert_memory_equal(s.items[i].value, value, len);
    }
    if (!found)
        fail_msg("no secret %s/%s", connector, name);
    vault_secrets_free(&s);
    vault_free(v);
    journal_close(j);
}

/* ---- cases -------------------------------------------------------------------------------- */

static void test_init(void **state)
{
    (void)state;
    env e;
    env_init(&e, NULL);
    result r = RUN(&e, "", "--config", e.config, "vault", "init");
    expect_code(&r, 0);
    assert_non_null(strstr(r.out, e.key));
    assert_non_null(strstr(r.out, "back it up"));
    result_free(&r);
    struct stat st;
    assert_int_equal(stat(e.key, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 65);
    char *before = slurp(e.key, NULL);

    r = RUN(&e, "", "--config", e.config, "vault", "init");
    expect_code(&r, 2);
    assert_non_null(strstr(r.err, "vault_key_exists"));
    result_free(&r);
    char *after = slurp(e.key, NULL);
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* Only offline: the key file is the daemon's, on its machine. */
    r = RUN(&e, "", "vault", "init");
    expect_code(&r, 2);
    assert_non_null(strstr(r.err, "--config"));
    result_free(&r);
    env_fini(&e);
}

static void test_set_list_rm(void **state)
{
    (void)state;
    env e;
    env_init(&e, NULL);
    result r = RUN(&e, "", "--config", e.config, "vault", "init");
    expect_code(&r, 0);
    result_free(&r);

    /* One trailing newline is dropped, only one. */
    r = RUN(&e, "cli-secret-value-one-0123456789\n", "--config", e.config, "secrets", "set",
            "shop", "api_key");
    expect_code(&r, 0);
    assert_non_null(strstr(r.out, "version 1"));
    assert_null(strstr(r.out, "cli-secret-value"));
    assert_null(strstr(r.err, "cli-secret-value"));
    result_free(&r);
    expect_stored(&e, "shop", "api_key", "cli-secret-value-one-0123456789", 31);
    r = RUN(&e, "cli-secret-value-two\n\n", "secrets", "set", "shop", "api_key", "--config",
            e.config);
    expect_code(&r, 0);
    assert_non_null(strstr(r.out, "version 2"));
    result_free(&r);
    expect_stored(&e, "shop", "api_key", "cli-secret-value-two\n", 21);

    /* Binary, with NULs, and the largest size; one byte more is refused. */
    const char bin[] = {'a', 0, 'b', 0, 0, 'c'};
    r = run_in(&e, bin, sizeof bin,
               (const char *const[]){"--config", e.config, "secrets", "set", "shop", "bin", NULL});
    expect_code(&r, 0);
    result_free(&r);
    expect_stored(&e, "shop", "bin", bin, sizeof bin);
    char *big = malloc(VAULT_MAX_SECRET_LEN + 2);
    memset(big, 'z', VAULT_MAX_SECRET_LEN + 2);
    big[VAULT_MAX_SECRET_LEN] = '\n';
    r = run_in(&e, big, VAULT_MAX_SECRET_LEN + 1,
               (const char *const[]){"--config", e.config, "secrets", "set", "shop", "big", NULL});
    expect_code(&r, 0);
    result_free(&r);
    expect_stored(&e, "shop", "big", big, VAULT_MAX_SECRET_LEN);
    big[VAULT_MAX_SECRET_LEN] = 'z';
    r = run_in(&e, big, VAULT_MAX_SECRET_LEN + 1,
               (const char *const[]){"--config", e.config, "secrets", "set", "shop", "big", NULL});
    expect_code(&r, 2);
    assert_non_null(strstr(r.err, "longer"));
    result_free(&r);
    free(big);
    r = RUN(&e, "\n", "--config", e.config, "secrets", "set", "shop", "empty");
    expect_code(&r, 2);
    result_free(&r);

    /* list: names and versions, never a value; what the config lists but the vault lacks. */
    r = RUN(&e, "", "--config", e.config, "secrets", "list");
    expect_code(&r, 0);
    assert_non_null(strstr(r.out, "CONNECTOR"));
    assert_non_null(strstr(r.out, "api_key"));
    assert_non_null(strstr(r.out, "missing: shop api_secret"));
    assert_null(strstr(r.out, "cli-secret-value"));
    assert_null(strstr(r.out, "zzzz"));
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "--json", "secrets", "list", "shop");
    expect_code(&r, 0);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    assert_non_null(doc);
    json_t *list = json_object_get(doc, "secrets");
    assert_int_equal(json_array_size(list), 3);
    json_t *first = json_array_get(list, 0); /* api_key, bin, big: sorted */
    assert_string_equal(json_string_value(json_object_get(first, "name")), "api_key");
    assert_int_equal(json_integer_value(json_object_get(first, "version")), 2);
    assert_true(json_is_string(json_object_get(first, "created_at")));
    assert_null(json_object_get(first, "value"));
    json_decref(doc);
    result_free(&r);

    /* rm, and again: secret_not_found (exit 4). */
    r = RUN(&e, "", "--config", e.config, "secrets", "rm", "shop", "bin");
    expect_code(&r, 0);
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "secrets", "rm", "shop", "bin");
    expect_code(&r, 4);
    assert_non_null(strstr(r.err, "secret_not_found"));
    result_free(&r);
    env_fini(&e);
}

static void test_value_never_from_argv(void **state)
{
    (void)state;
    env e;
    env_init(&e, NULL);
    result r = RUN(&e, "", "--config", e.config, "vault", "init");
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "secrets", "set", "shop", "api_key",
            "argv-value-must-not-be-stored");
    expect_code(&r, 2);
    assert_non_null(strstr(r.err, "never taken from the command line"));
    assert_null(strstr(r.err, "argv-value"));
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "--json", "secrets", "list");
    expect_code(&r, 0);
    assert_string_equal(r.out, "{\"secrets\":[]}\n");
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "secrets", "set", "shop");
    expect_code(&r, 2);
    result_free(&r);
    env_fini(&e);
}

static void test_refusals(void **state)
{
    (void)state;
    env e;
    env_init(&e, NULL);
    /* No key file yet: says how to make one. */
    result r = RUN(&e, "v", "--config", e.config, "secrets", "set", "shop", "api_key");
    expect_code(&r, 4);
    assert_non_null(strstr(r.err, "vault_key_missing"));
    assert_non_null(strstr(r.err, "vault init"));
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "vault", "init");
    result_free(&r);
    /* A key file others may read. */
    assert_int_equal(chmod(e.key, 0644), 0);
    r = RUN(&e, "v", "--config", e.config, "secrets", "set", "shop", "api_key");
    expect_code(&r, 4);
    assert_non_null(strstr(r.err, "vault_key_mode"));
    assert_non_null(strstr(r.err, "chmod 600"));
    result_free(&r);
    assert_int_equal(chmod(e.key, 0600), 0);
    /* Unknown subcommands, extra words. */
    r = RUN(&e, "", "--config", e.config, "secrets", "show", "shop");
    expect_code(&r, 2);
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "vault", "rotate", "now");
    expect_code(&r, 2);
    result_free(&r);
    r = RUN(&e, "", "--config", e.config, "secrets", "rm", "shop");
    expect_code(&r, 2);
    result_free(&r);
    env_fini(&e);
}

static void test_rotate(void **state)
{
    (void)state;
    env e;
    env_init(&e, NULL);
    result r = RUN(&e, "", "--config", e.config, "vault", "init");
    result_free(&r);
    const char *names[] = {"api_key", "api_secret", "extra"};
    for (int i = 0; i < 3; i++) {
        char val[64];
        snprintf(val, sizeof val, "rotate-test-value-%d-abcdefgh", i);
        r = RUN(&e, val, "--config", e.config, "secrets", "set", "shop", names[i]);
        expect_code(&r, 0);
        result_free(&r);
    }
    char *before = slurp(e.key, NULL);
    r = RUN(&e, "", "--config", e.config, "vault", "rotate");
    expect_code(&r, 0);
    assert_non_null(strstr(r.out, "re-encrypted 3 secrets"));
    result_free(&r);
    char *after = slurp(e.key, NULL);
    assert_string_not_equal(before, after);
    free(before);
    free(after);
    for (int i = 0; i < 3; i++) {
        char val[64];
        snprintf(val, sizeof val, "rotate-test-value-%d-abcdefgh", i);
        expect_stored(&e, "shop", names[i], val, strlen(val));
    }
    r = RUN(&e, "", "--config", e.config, "--json", "vault", "rotate");
    expect_code(&r, 0);
    assert_string_equal(r.out, "{\"rotated\":3}\n");
    result_free(&r);
    env_fini(&e);
}

/* Each unlock costs Argon2id MODERATE (~0.7 s): five in all here. */
static void test_passphrase_mode(void **state)
{
    (void)state;
    env e;
    env_init(&e, "first passphrase for the cli test\n");
    result r = RUN(&e, "", "--config", e.config, "vault", "init");
    expect_code(&r, 2); /* nothing to make in passphrase mode */
    assert_non_null(strstr(r.err, "passphrase"));
    result_free(&r);
    assert_int_equal(chmod(e.pass, 0640), 0);
    r = RUN(&e, "v", "--config", e.config, "secrets", "set", "shop", "api_key");
    expect_code(&r, 4);
    assert_non_null(strstr(r.err, "chmod 600"));
    result_free(&r);
    assert_int_equal(chmod(e.pass, 0600), 0);

    r = RUN(&e, "passphrase-mode-cli-value-123", "--config", e.config, "secrets", "set", "shop",
            "api_key"); /* unlock 1 */
    expect_code(&r, 0);
    result_free(&r);
    r = RUN(&e, "second passphrase after rotation\n", "--config", e.config, "vault",
            "rotate"); /* unlock 2, and the new passphrase's */
    expect_code(&r, 0);
    assert_non_null(strstr(r.out, "re-encrypted 1 secret under the new passphrase"));
    result_free(&r);
    char *pass = slurp(e.pass, NULL);
    assert_string_equal(pass, "second passphrase after rotation\n");
    free(pass);
    struct stat st;
    assert_int_equal(stat(e.pass, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    char new_path[200];
    snprintf(new_path, sizeof new_path, "%s.new", e.pass);
    assert_int_equal(access(new_path, F_OK), -1);
    /* As if the rotation had stopped after its commit, before the rename: the old
     * passphrase in the file, the new one in .new. The next command finishes it. */
    assert_int_equal(rename(e.pass, new_path), 0);
    write_text(e.pass, "first passphrase for the cli test\n", 0600);
    r = RUN(&e, "", "--config", e.config, "secrets", "list"); /* unlocks 4 and 5 */
    expect_code(&r, 0);
    assert_non_null(strstr(r.out, "api_key"));
    assert_non_null(strstr(r.err, "interrupted passphrase rotation"));
    result_free(&r);
    pass = slurp(e.pass, NULL);
    assert_string_equal(pass, "second passphrase after rotation\n");
    free(pass);
    assert_int_equal(access(new_path, F_OK), -1);
    env_fini(&e);
}

/* The terminal prompt: asked twice, never echoed. */
typedef struct pty_run {
    int code;
    char out[8192];
    size_t len;
} pty_run;

static void run_pty(const env *e, const char *first, const char *second, pty_run *pr)
{
    int master;
    memset(pr, 0, sizeof *pr);
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    assert_true(pid >= 0);
    if (pid == 0) {
        if (chdir(e->dir) != 0)
            _exit(126);
        execl(AIOCTL, "aioctl", "--config", e->config, "secrets", "set", "shop", "api_key",
              (char *)NULL);
        _exit(127);
    }
    int sent = 0;
    for (;;) {
        struct pollfd p = {.fd = master, .events = POLLIN};
        int n = poll(&p, 1, 20000);
        assert_true(n > 0); /* never a 20 s silence */
        ssize_t r = read(master, pr->out + pr->len, sizeof pr->out - 1 - pr->len);
        if (r <= 0)
            break; /* EIO: the child closed the terminal */
        pr->len += (size_t)r;
        pr->out[pr->len] = '\0';
        if (sent == 0 && strstr(pr->out, "value: ")) {
            assert_int_equal(write(master, first, strlen(first)), (ssize_t)strlen(first));
            sent = 1;
        } else if (sent == 1 && strstr(pr->out, "value (again): ")) {
            assert_int_equal(write(master, second, strlen(second)), (ssize_t)strlen(second));
            sent = 2;
        }
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    close(master);
    pr->code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_prompt(void **state)
{
    (void)state;
    env e;
    env_init(&e, NULL);
    result r = RUN(&e, "", "--config", e.config, "vault", "init");
    result_free(&r);
    pty_run pr;
    run_pty(&e, "typed-at-the-prompt-value-42\n", "typed-at-the-prompt-value-42\n", &pr);
    if (pr.code != 0)
        fail_msg("exit %d: %s", pr.code, pr.out);
    assert_null(strstr(pr.out, "typed-at-the-prompt")); /* not echoed */
    assert_non_null(strstr(pr.out, "version 1"));
    expect_stored(&e, "shop", "api_key", "typed-at-the-prompt-value-42", 28);

    run_pty(&e, "first-typing-abc\n", "second-typing-xyz\n", &pr);
    assert_int_equal(pr.code, 2);
    assert_non_null(strstr(pr.out, "differ"));
    assert_null(strstr(pr.out, "typing"));
    expect_stored(&e, "shop", "api_key", "typed-at-the-prompt-value-42", 28); /* unchanged */
    env_fini(&e);
}

static int init_sodium(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_init),
    cmocka_unit_test(test_set_list_rm),
    cmocka_unit_test(test_value_never_from_argv),
    cmocka_unit_test(test_refusals),
    cmocka_unit_test(test_rotate),
    cmocka_unit_test(test_passphrase_mode),
    cmocka_unit_test(test_prompt),
};

AR_TEST_MAIN(tests, init_sodium, NULL)
