/*
 * vault_cmd.c - `aioctl vault init|rotate` and `aioctl secrets set|list|rm` (see vault_cmd.h
 * for usage and exit codes): offline on the daemon's data directory with --config, else
 * through the daemon's API.
 */
#include "vault_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "aioctl.h"
#include "ar.h"
#include "config.h"
#include "journal.h"
#include "render.h"
#include "vault.h"

#define PASSPHRASE_MAX 4096

/* ---- messages ----------------------------------------------------------------------------- */

/* usage() and print_error() are render.h's render_usage_error() and render_ar_error(). */
#define usage render_usage_error
#define print_error render_ar_error

/* A refusal of the data directory: bad input is a usage error, anything else refused. */
static int failed(int status, const ar_error *err, const char *fallback)
{
    print_error(err, fallback);
    return status == AR_E_INVALID && strcmp(err->code, "secret_invalid") == 0 ? AIOCTL_USAGE
                                                                               : AIOCTL_REFUSED;
}

static int out_of_memory(void)
{
    fputs("aioctl: out of memory\n", stderr);
    return AIOCTL_REFUSED;
}

/* A connector or secret name: 1..VAULT_NAME_MAX-1 bytes without control characters. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= VAULT_NAME_MAX)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

static int check_names(const char *cmd, const char *connector, const char *name)
{
    if (!valid_name(connector))
        return usage("%s: CONNECTOR must be 1 to %d bytes without control characters",
                     cmd, VAULT_NAME_MAX - 1);
    if (name && !valid_name(name))
        return usage("%s: NAME must be 1 to %d bytes without control characters", cmd,
                     VAULT_NAME_MAX - 1);
    return AIOCTL_OK;
}

/* ---- reading a value ---------------------------------------------------------------------- */

/* A value or passphrase held in guarded memory; wiped by secret_free. */
typedef struct secret_buf {
    unsigned char *data;  /* sodium_malloc'd, cap + 1 bytes */
    size_t len, cap;
} secret_buf;

static int secret_alloc(secret_buf *s, size_t cap)
{
    s->len = 0;
    s->cap = cap;
    if (!(s->data = sodium_malloc(cap + 1)))
        return out_of_memory();
    return AIOCTL_OK;
}

static void secret_free(secret_buf *s)
{
    if (s->data)
        sodium_free(s->data); /* wipes */
    s->data = NULL;
    s->len = 0;
}

/* All of stdin (at most s->cap bytes after one trailing newline is dropped). */
static int read_stdin_value(secret_buf *s, const char *what)
{
    size_t room = s->cap + 1; /* one more: the newline that may end it */
    for (;;) {
        if (s->len == room) {
            char extra;
            ssize_t r = read(STDIN_FILENO, &extra, 1);
            if (r == 1) {
                sodium_memzero(&extra, 1);
                return usage("%s on stdin is longer than %zu bytes", what, s->cap);
            }
            if (r < 0 && errno == EINTR)
                continue;
            break;
        }
        ssize_t r = read(STDIN_FILENO, s->data + s->len, room - s->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "aioctl: cannot read %s from stdin: %s\n", what, strerror(errno));
            return AIOCTL_USAGE;
        }
        if (r == 0)
            break;
        s->len += (size_t)r;
    }
    if (s->len > 0 && s->data[s->len - 1] == '\n')
        s->data[--s->len] = '\0';
    if (s->len > s->cap)
        return usage("%s on stdin is longer than %zu bytes", what, s->cap);
    if (s->len == 0)
        return usage("%s on stdin is empty", what);
    s->data[s->len] = '\0';
    return AIOCTL_OK;
}

static volatile sig_atomic_t prompt_signal;

static void on_prompt_signal(int sig)
{
    prompt_signal = sig;
}

/* One line from the terminal on stdin with echo off, into s (without its newline). A signal
 * (Ctrl-C) restores the terminal first and is then delivered as usual. */
static int read_hidden_line(const char *prompt, secret_buf *s, bool *too_long)
{
    struct termios saved, quiet;
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP};
    struct sigaction old[sizeof sigs / sizeof sigs[0]];
    struct sigaction sa;
    int rc = AIOCTL_OK;

    s->len = 0;
    *too_long = false;
    if (tcgetattr(STDIN_FILENO, &saved) != 0) {
        fprintf(stderr, "aioctl: cannot set up the terminal: %s\n", strerror(errno));
        return AIOCTL_USAGE;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_prompt_signal; /* no SA_RESTART: read returns EINTR */
    sigemptyset(&sa.sa_mask);
    prompt_signal = 0;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, &old[i]);
    quiet = saved;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
    quiet.c_lflag |= ICANON;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    fputs(prompt, stderr);
    fflush(stderr);
    for (;;) {
        unsigned char c;
        ssize_t r = read(STDIN_FILENO, &c, 1);
        if (r < 0 && errno == EINTR && !prompt_signal)
            continue;
        if (r <= 0) {
            if (!prompt_signal && s->len == 0)
                rc = usage("no value given (end of input at the prompt)");
            break;
        }
        if (c == '\n')
            break;
        if (s->len < s->cap)
            s->data[s->len++] = c;
        else
            *too_long = true;
        sodium_memzero(&c, 1);
    }
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
    fputc('\n', stderr);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &old[i], NULL);
    if (prompt_signal) {
        secret_free(s);
        raise(prompt_signal);
        return AIOCTL_USAGE; /* the signal was ignored or handled */
    }
    s->data[s->len] = '\0';
    return rc;
}

/* The value: stdin when it is not a terminal, else asked twice without echo. */
static int read_value(secret_buf *s, size_t cap, const char *what, const char *prompt)
{
    int rc = secret_alloc(s, cap);
    if (rc != AIOCTL_OK)
        return rc;
    if (!isatty(STDIN_FILENO)) {
        if ((rc = read_stdin_value(s, what)) != AIOCTL_OK)
            secret_free(s);
        return rc;
    }
    secret_buf again = {0};
    bool too_long = false, too_long2 = false;
    char prompt2[128];
    snprintf(prompt2, sizeof prompt2, "%s (again): ", prompt);
    char prompt1[128];
    snprintf(prompt1, sizeof prompt1, "%s: ", prompt);
    if ((rc = read_hidden_line(prompt1, s, &too_long)) != AIOCTL_OK)
        goto done;
    if (s->len == 0) {
        rc = usage("%s is empty", what);
        goto done;
    }
    if (too_long) {
        rc = usage("%s is longer than %zu bytes", what, cap);
        goto done;
    }
    if ((rc = secret_alloc(&again, cap)) != AIOCTL_OK)
        goto done;
    if ((rc = read_hidden_line(prompt2, &again, &too_long2)) != AIOCTL_OK)
        goto done;
    if (again.len != s->len || too_long2 || sodium_memcmp(again.data, s->data, s->len) != 0)
        rc = usage("the two entries differ; nothing was stored");
done:
    secret_free(&again);
    if (rc != AIOCTL_OK)
        secret_free(s);
    return rc;
}

/* ---- offline: the data directory ---------------------------------------------------------- */

typedef struct store {
    config *cfg;
    journal *j;
    vault *v;
    char passphrase_file[PATH_MAX]; /* passphrase mode: the file the passphrase came from */
} store;

static void store_close(store *s)
{
    vault_free(s->v);
    journal_close(s->j);
    config_free(s->cfg);
    memset(s, 0, sizeof *s);
}

static int load_config(const char *path, config **cfg)
{
    ar_error err = {0};
    if (config_load_file(path, cfg, &err) != AR_OK) {
        print_error(&err, "cannot load the config");
        return AIOCTL_USAGE;
    }
    return AIOCTL_OK;
}

/* Load the config, open its journal and unlock its vault. Returns an exit code (reported). */
static int store_open(const char *config_path, store *s)
{
    ar_error err = {0};
    char dir[PATH_MAX];
    int rc, status;

    memset(s, 0, sizeof *s);
    if ((rc = load_config(config_path, &s->cfg)) != AIOCTL_OK)
        return rc;
    if (config_journal_dir(s->cfg, dir, sizeof dir) != AR_OK) {
        fprintf(stderr, "aioctl: the data directory in %s is too long a path\n", config_path);
        store_close(s);
        return AIOCTL_USAGE;
    }
    journal_opts jo = {.dir = dir, .map_size_mb = s->cfg->map_size_mb};
    if ((status = journal_open(&jo, &s->j, &err)) != AR_OK)
        goto fail;
    if (s->cfg->vault_passphrase_file)
        snprintf(s->passphrase_file, sizeof s->passphrase_file, "%s", s->cfg->vault_passphrase_file);
    status = vault_open_files(s->j, s->cfg->vault_key_file, s->cfg->vault_passphrase_file, 0, &s->v, &err);
    if (status == AR_E_NOTFOUND && strcmp(err.code, "vault_key_missing") == 0)
        fprintf(stderr, "aioctl: create it with: aioctl --config %s vault init\n", config_path);
    if (status != AR_OK)
        goto fail;
    return AIOCTL_OK;
fail:
    print_error(&err, "cannot open the vault");
    store_close(s);
    return AIOCTL_REFUSED;
}

/* ---- output ------------------------------------------------------------------------------- */

static int print_json_take(json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    if (!text)
        return out_of_memory();
    puts(text);
    free(text);
    return AIOCTL_OK;
}

static void print_body(const reply *rep)
{
    if (!rep->body)
        return;
    fwrite(rep->body, 1, rep->len, stdout);
    if (rep->len == 0 || rep->body[rep->len - 1] != '\n')
        fputc('\n', stdout);
}

/* Characters of a UTF-8 string as shown by render_text (one column each). */
static size_t text_width(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += (*p & 0xC0) != 0x80;
    return n;
}

/* A time cell: created_at/updated_at as given (the daemon's RFC 3339), or created_ms /
 * updated_ms (offline) made into one. Malloc'd. */
static char *time_cell(const json_t *item, const char *at_key, const char *ms_key)
{
    const char *at = json_string_value(json_object_get(item, at_key));
    json_t *ms = json_object_get(item, ms_key);
    char buf[AR_TIME_LEN];
    if (at)
        return strdup(at);
    if (json_is_integer(ms)) {
        ar_time_rfc3339((int64_t)json_integer_value(ms), buf);
        return strdup(buf);
    }
    return strdup("-");
}

static char *text_cell(const json_t *item, const char *key)
{
    json_t *v = json_object_get(item, key);
    char buf[32];
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return strdup(buf);
    }
    return strdup("-");
}

enum { SECRET_COLS = 5 };

/* A table CONNECTOR, NAME, VERSION, CREATED, UPDATED of secret entries (never values). */
static int render_secret_table(FILE *out, const json_t *secrets)
{
    static const char *const header[SECRET_COLS] = {"CONNECTOR", "NAME", "VERSION", "CREATED",
                                                    "UPDATED"};
    size_t rows = json_array_size(secrets), width[SECRET_COLS], i;
    const json_t *item;
    if (rows == 0) {
        fputs("no secrets\n", out);
        return AIOCTL_OK;
    }
    char **cells = calloc(rows * SECRET_COLS, sizeof *cells);
    if (!cells)
        return out_of_memory();
    json_array_foreach(secrets, i, item) {
        char **row = cells + i * SECRET_COLS;
        row[0] = text_cell(item, "connector");
        row[1] = text_cell(item, "name");
        row[2] = text_cell(item, "version");
        row[3] = time_cell(item, "created_at", "created_ms");
        row[4] = time_cell(item, "updated_at", "updated_ms");
    }
    for (size_t c = 0; c < SECRET_COLS; c++) {
        width[c] = text_width(header[c]);
        for (size_t r = 0; r < rows; r++) {
            const char *s = cells[r * SECRET_COLS + c];
            if (s && text_width(s) > width[c])
                width[c] = text_width(s);
        }
    }
    for (size_t r = 0; r <= rows; r++) {
        for (size_t c = 0; c < SECRET_COLS; c++) {
            const char *s = r == 0 ? header[c] : cells[(r - 1) * SECRET_COLS + c];
            if (!s)
                s = "-";
            render_text(out, s);
            if (c + 1 < SECRET_COLS)
                fprintf(out, "%*s", (int)(width[c] - text_width(s) + 2), "");
        }
        fputc('\n', out);
    }
    for (size_t k = 0; k < rows * SECRET_COLS; k++)
        free(cells[k]);
    free(cells);
    return AIOCTL_OK;
}

/* vault_list's entries as the API shows them: created_at/updated_at in RFC 3339. A new
 * reference (NULL: out of memory). */
static json_t *api_view(const json_t *list)
{
    json_t *out = json_array();
    size_t i;
    const json_t *item;
    json_array_foreach(list, i, item) {
        char created[AR_TIME_LEN], updated[AR_TIME_LEN];
        ar_time_rfc3339(json_integer_value(json_object_get(item, "created_ms")), created);
        ar_time_rfc3339(json_integer_value(json_object_get(item, "updated_ms")), updated);
        if (!out || json_array_append_new(out, json_pack(
                        "{s:O,s:O,s:O,s:s,s:s}", "connector", json_object_get(item, "connector"),
                        "name", json_object_get(item, "name"), "version",
                        json_object_get(item, "version"), "created_at", created, "updated_at",
                        updated)) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* Is there an entry connector/name in list? */
static bool listed(const json_t *list, const char *connector, const char *name)
{
    size_t i;
    const json_t *item;
    json_array_foreach(list, i, item) {
        const char *c = json_string_value(json_object_get(item, "connector"));
        const char *n = json_string_value(json_object_get(item, "name"));
        if (c && n && strcmp(c, connector) == 0 && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

/* After the table: the secrets the config lists for a connector that the vault lacks. */
static void print_missing(const config *cfg, const char *only, const json_t *list,
                          const char *config_path)
{
    for (size_t i = 0; i < cfg->n_connectors; i++) {
        const config_connector *c = &cfg->connectors[i];
        if (only && strcmp(only, c->name) != 0)
            continue;
        for (size_t k = 0; k < c->n_secrets; k++) {
            if (listed(list, c->name, c->secrets[k]))
                continue;
            printf("missing: %s %s (the config lists it; set it with: aioctl --config %s "
                   "secrets set %s %s)\n", c->name, c->secrets[k], config_path, c->name,
                   c->secrets[k]);
        }
    }
}

/* ---- the commands, offline ---------------------------------------------------------------- */

static void note_unknown(const config *cfg, const char *connector, const char *name)
{
    const config_connector *c = config_find_connector(cfg, connector);
    if (!c) {
        fprintf(stderr, "aioctl: note: the config has no connector '");
        render_text(stderr, connector);
        fputs("' (yet)\n", stderr);
        return;
    }
    for (size_t k = 0; k < c->n_secrets; k++)
        if (strcmp(c->secrets[k], name) == 0)
            return;
    fprintf(stderr, "aioctl: note: connector %s does not list a secret '", connector);
    render_text(stderr, name);
    fputs("' in its \"secrets\"\n", stderr);
}

static int set_offline(const vault_cmd_env *env, const char *connector, const char *name)
{
    store s;
    secret_buf value = {0};
    ar_error err = {0};
    uint32_t version = 0;
    int rc = store_open(env->config, &s);
    if (rc != AIOCTL_OK)
        return rc;
    note_unknown(s.cfg, connector, name);
    if ((rc = read_value(&value, VAULT_MAX_SECRET_LEN, "the value", "value")) != AIOCTL_OK)
        goto done;
    int status = vault_set_by(s.v, "aioctl --config (offline)", connector, name, value.data, value.len, &version, &err);
    secret_free(&value);
    if (status != AR_OK) {
        rc = failed(status, &err, "cannot store the secret");
        goto done;
    }
    if (env->json)
        rc = print_json_take(json_pack("{s:s,s:s,s:I}", "connector", connector, "name", name,
                                       "version", (json_int_t)version));
    else
        printf("secret %s %s stored (version %u)\n", connector, name, (unsigned)version);
done:
    store_close(&s);
    return rc;
}

static int list_offline(const vault_cmd_env *env, const char *connector)
{
    store s;
    json_t *list = NULL;
    ar_error err = {0};
    int rc = store_open(env->config, &s);
    if (rc != AIOCTL_OK)
        return rc;
    int status = vault_list(s.v, connector, &list, &err);
    if (status != AR_OK) {
        rc = failed(status, &err, "cannot list the secrets");
    } else if (env->json) {
        json_t *view = api_view(list);
        rc = view ? print_json_take(json_pack("{s:o}", "secrets", view)) : out_of_memory();
    } else if ((rc = render_secret_table(stdout, list)) == AIOCTL_OK) {
        print_missing(s.cfg, connector, list, env->config);
    }
    json_decref(list);
    store_close(&s);
    return rc;
}

static int rm_offline(const vault_cmd_env *env, const char *connector, const char *name)
{
    store s;
    ar_error err = {0};
    int rc = store_open(env->config, &s);
    if (rc != AIOCTL_OK)
        return rc;
    int status = vault_remove_by(s.v, "aioctl --config (offline)", connector, name, &err);
    if (status != AR_OK)
        rc = failed(status, &err, "cannot remove the secret");
    else if (env->json)
        rc = print_json_take(json_pack("{s:s,s:s,s:b}", "connector", connector, "name", name,
                                       "removed", 1));
    else
        printf("secret %s %s removed\n", connector, name);
    store_close(&s);
    return rc;
}

/* Create path (0600, synced) holding data and a newline; an old one is replaced. */
static int write_private_file(const char *path, const unsigned char *data, size_t len)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    bool ok = fd >= 0 && fchmod(fd, 0600) == 0;
    for (size_t off = 0; ok && off < len;) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        off += ok ? (size_t)w : 0;
    }
    ok = ok && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    if (!ok) {
        fprintf(stderr, "aioctl: cannot write %s: %s\n", path, strerror(saved));
        unlink(path);
    }
    return ok ? AIOCTL_OK : AIOCTL_REFUSED;
}

/* Passphrase mode: the new passphrase goes to <file>.new before the vault is re-encrypted
 * and is renamed over <file> once that is durable (store_open finishes a rotation that
 * stopped in between). */
static int rotate_passphrase(store *s, size_t *count, ar_error *err, int *rc)
{
    secret_buf pass = {0};
    char new_path[PATH_MAX + 8];
    *rc = read_value(&pass, PASSPHRASE_MAX, "the new passphrase", "new vault passphrase");
    if (*rc != AIOCTL_OK)
        return AR_E_INVALID;
    snprintf(new_path, sizeof new_path, "%s.new", s->passphrase_file);
    if ((*rc = write_private_file(new_path, pass.data, pass.len)) != AIOCTL_OK) {
        secret_free(&pass);
        return AR_E_IO;
    }
    vault_sync_dir_of(new_path);
    int status = vault_rotate(s->v, (const char *)pass.data, pass.len, count, err);
    secret_free(&pass);
    if (status != AR_OK) {
        unlink(new_path);
        return status;
    }
    if (rename(new_path, s->passphrase_file) != 0) {
        fprintf(stderr, "aioctl: the vault now opens with the passphrase in %s, but it cannot be "
                "renamed to %s (%s): rename it by hand\n", new_path, s->passphrase_file,
                strerror(errno));
        *rc = AIOCTL_REFUSED;
        return AR_OK;
    }
    vault_sync_dir_of(s->passphrase_file);
    return AR_OK;
}

static int rotate_offline(const vault_cmd_env *env)
{
    store s;
    ar_error err = {0};
    size_t count = 0;
    int rc = store_open(env->config, &s), status;
    if (rc != AIOCTL_OK)
        return rc;
    bool passphrase = s.passphrase_file[0] != '\0';
    if (passphrase) {
        status = rotate_passphrase(&s, &count, &err, &rc);
        if (status != AR_OK && rc != AIOCTL_OK)
            goto done; /* reported */
    } else {
        status = vault_rotate(s.v, NULL, 0, &count, &err);
    }
    if (status != AR_OK) {
        rc = failed(status, &err, "cannot rotate the vault");
        goto done;
    }
    if (env->json) {
        int jrc = print_json_take(json_pack("{s:I}", "rotated", (json_int_t)count));
        rc = rc != AIOCTL_OK ? rc : jrc;
    } else if (passphrase) {
        printf("re-encrypted %zu secret%s under the new passphrase, now in %s\n", count,
               count == 1 ? "" : "s", s.passphrase_file);
    } else {
        printf("re-encrypted %zu secret%s under a new master key, now in %s\n"
               "back it up again now: the old key no longer opens the vault\n", count,
               count == 1 ? "" : "s", s.cfg->vault_key_file);
    }
done:
    store_close(&s);
    return rc;
}

static int init_offline(const vault_cmd_env *env)
{
    config *cfg = NULL;
    ar_error err = {0};
    int rc = load_config(env->config, &cfg);
    if (rc != AIOCTL_OK)
        return rc;
    if (cfg->vault_passphrase_file) {
        rc = usage("vault init: %s unlocks the vault with a passphrase (vault_passphrase_file "
                   "%s): there is no key file to make. Put the passphrase in that file (chmod "
                   "600); the vault is set up at its first use", env->config,
                   cfg->vault_passphrase_file);
        goto done;
    }
    /* The default key file lives in the data directory, which may not exist yet. */
    size_t dlen = strlen(cfg->data_dir);
    if (strncmp(cfg->vault_key_file, cfg->data_dir, dlen) == 0 &&
        cfg->vault_key_file[dlen] == '/' && !strchr(cfg->vault_key_file + dlen + 1, '/') &&
        mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "aioctl: cannot create the data directory %s: %s\n", cfg->data_dir,
                strerror(errno));
        rc = AIOCTL_REFUSED;
        goto done;
    }
    int status = vault_key_create(cfg->vault_key_file, &err);
    if (status != AR_OK) {
        print_error(&err, "cannot create the vault key");
        rc = status == AR_E_EXISTS ? AIOCTL_USAGE : AIOCTL_REFUSED;
        goto done;
    }
    if (env->json)
        rc = print_json_take(json_pack("{s:s}", "key_file", cfg->vault_key_file));
    else
        printf("vault key written to %s (mode 0600)\n"
               "back it up now, somewhere other than this machine: without it the secrets in "
               "the vault (and in any backup of the data directory) cannot be decrypted\n",
               cfg->vault_key_file);
done:
    config_free(cfg);
    return rc;
}

/* ---- the commands, through the daemon ----------------------------------------------------- */

static int call(const vault_cmd_env *env, client **c, reply *rep, const char *method,
                const char *path, const json_t *body)
{
    int rc = env->connect(env->ctx, c);
    if (rc != AIOCTL_OK)
        return rc;
    rc = client_call(*c, method, path, body, 0, rep);
    return rc == AIOCTL_OK ? AIOCTL_OK : env->call_failed(env->ctx, rep, rc);
}

/* "/v1/secrets/" connector "/" name, percent-encoded. Malloc'd; NULL when out of memory. */
static char *secret_path(const char *connector, const char *name)
{
    char *c = client_escape(connector), *n = client_escape(name), *path = NULL;
    if (!c || !n || asprintf(&path, "/v1/secrets/%s/%s", c, n) < 0)
        path = NULL;
    free(c);
    free(n);
    return path;
}

static int answered_without(const char *what)
{
    fprintf(stderr, "aioctl: the daemon answered without %s\n", what);
    return AIOCTL_REFUSED;
}

static int set_online(const vault_cmd_env *env, const char *connector, const char *name)
{
    secret_buf value = {0};
    client *c = NULL;
    reply rep = {0};
    json_t *body = NULL, *str = NULL;
    char *path = secret_path(connector, name);
    int rc;

    if (!path)
        return out_of_memory();
    if ((rc = read_value(&value, VAULT_MAX_SECRET_LEN, "the value", "value")) != AIOCTL_OK)
        goto done;
    /* The API takes the value as a JSON string: text (UTF-8) only. */
    if (!(str = json_stringn((const char *)value.data, value.len))) {
        rc = usage("secrets set: the daemon's API takes text values (UTF-8); store a binary "
                   "value with --config FILE");
        goto done;
    }
    secret_free(&value);
    if (!(body = json_object()) || json_object_set(body, "value", str) != 0) {
        rc = out_of_memory();
        goto done;
    }
    if ((rc = call(env, &c, &rep, "PUT", path, body)) != AIOCTL_OK)
        goto done;
    json_t *version = json_object_get(rep.json, "version");
    if (env->json)
        print_body(&rep);
    else if (json_is_integer(version))
        printf("secret %s %s stored (version %" JSON_INTEGER_FORMAT ")\n", connector, name,
               json_integer_value(version));
    else
        printf("secret %s %s stored\n", connector, name);
done:
    if (str) /* jansson keeps its own copy: wipe it before it is freed */
        sodium_memzero((char *)json_string_value(str), json_string_length(str));
    json_decref(str);
    json_decref(body);
    secret_free(&value);
    reply_fini(&rep);
    client_free(c);
    free(path);
    return rc;
}

static int list_online(const vault_cmd_env *env, const char *connector)
{
    client *c = NULL;
    reply rep = {0};
    char *path = NULL, *esc = connector ? client_escape(connector) : NULL;
    int rc;

    if ((connector && !esc) ||
        asprintf(&path, "/v1/secrets%s%s", esc ? "?connector=" : "", esc ? esc : "") < 0) {
        free(esc);
        return out_of_memory();
    }
    free(esc);
    if ((rc = call(env, &c, &rep, "GET", path, NULL)) == AIOCTL_OK) {
        json_t *list = json_object_get(rep.json, "secrets");
        if (env->json)
            print_body(&rep);
        else if (!json_is_array(list))
            rc = answered_without("a \"secrets\" list");
        else
            rc = render_secret_table(stdout, list);
    }
    reply_fini(&rep);
    client_free(c);
    free(path);
    return rc;
}

static int rm_online(const vault_cmd_env *env, const char *connector, const char *name)
{
    client *c = NULL;
    reply rep = {0};
    char *path = secret_path(connector, name);
    int rc;
    if (!path)
        return out_of_memory();
    if ((rc = call(env, &c, &rep, "DELETE", path, NULL)) == AIOCTL_OK) {
        if (env->json)
            print_body(&rep);
        else
            printf("secret %s %s removed\n", connector, name);
    }
    reply_fini(&rep);
    client_free(c);
    free(path);
    return rc;
}

static int rotate_online(const vault_cmd_env *env)
{
    client *c = NULL;
    reply rep = {0};
    int rc = call(env, &c, &rep, "POST", "/v1/vault/rotate", NULL);
    if (rc == AIOCTL_OK) {
        json_t *n = json_object_get(rep.json, "rotated");
        if (env->json)
            print_body(&rep);
        else if (!json_is_integer(n))
            rc = answered_without("a \"rotated\" count");
        else
            printf("re-encrypted %" JSON_INTEGER_FORMAT " secret%s under a new master key\n",
                   json_integer_value(n), json_integer_value(n) == 1 ? "" : "s");
    }
    reply_fini(&rep);
    client_free(c);
    return rc;
}

/* ---- dispatch ----------------------------------------------------------------------------- */

int aioctl_secrets_command(const vault_cmd_env *env, int argc, char **argv)
{
    if (sodium_init() < 0) {
        fputs("aioctl: libsodium cannot be initialised\n", stderr);
        return AIOCTL_REFUSED;
    }
    if (argc < 1)
        return usage("secrets: expected set, list or rm");
    const char *sub = argv[0];
    int rc;
    if (strcmp(sub, "set") == 0) {
        if (argc > 3) {
            /* Shorten the time others can read it in /proc/PID/cmdline. */
            for (int i = 3; i < argc; i++)
                sodium_memzero(argv[i], strlen(argv[i]));
            return usage("secrets set: a value is never taken from the command line (other "
                         "users can see it with ps, and it stays in your shell history): give "
                         "it on stdin, e.g. aioctl secrets set CONNECTOR NAME < FILE, or type "
                         "it at the prompt");
        }
        if (argc < 3)
            return usage("secrets set: expected CONNECTOR NAME (the value comes from stdin or "
                         "a prompt)");
        if ((rc = check_names("secrets set", argv[1], argv[2])) != AIOCTL_OK)
            return rc;
        return env->config ? set_offline(env, argv[1], argv[2]) : set_online(env, argv[1], argv[2]);
    }
    if (strcmp(sub, "list") == 0) {
        if (argc > 2)
            return usage("secrets list: expected at most a CONNECTOR, got '%s' too", argv[2]);
        const char *connector = argc == 2 ? argv[1] : NULL;
        if (connector && (rc = check_names("secrets list", connector, NULL)) != AIOCTL_OK)
            return rc;
        return env->config ? list_offline(env, connector) : list_online(env, connector);
    }
    if (strcmp(sub, "rm") == 0) {
        if (argc != 3)
            return usage("secrets rm: expected CONNECTOR NAME");
        if ((rc = check_names("secrets rm", argv[1], argv[2])) != AIOCTL_OK)
            return rc;
        return env->config ? rm_offline(env, argv[1], argv[2]) : rm_online(env, argv[1], argv[2]);
    }
    return usage("secrets: unknown subcommand '%s' (set, list or rm)", sub);
}

int aioctl_vault_command(const vault_cmd_env *env, int argc, char **argv)
{
    if (sodium_init() < 0) {
        fputs("aioctl: libsodium cannot be initialised\n", stderr);
        return AIOCTL_REFUSED;
    }
    if (argc < 1)
        return usage("vault: expected init or rotate");
    const char *sub = argv[0];
    if (argc > 1)
        return usage("vault %s: unexpected argument '%s'", sub, argv[1]);
    if (strcmp(sub, "init") == 0) {
        if (!env->config)
            return usage("vault init works only with --config FILE (the daemon's config): it "
                         "writes the key file named there (vault_key_file) on this machine");
        return init_offline(env);
    }
    if (strcmp(sub, "rotate") == 0)
        return env->config ? rotate_offline(env) : rotate_online(env);
    return usage("vault: unknown subcommand '%s' (init or rotate)", sub);
}
