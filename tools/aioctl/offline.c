/*
 * offline.c - aioctl's token and backup commands on the data directory (see offline.h).
 */
#include "offline.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aioctl.h"
#include "config.h"
#include "journal.h"
#include "render.h"

struct offline {
    config *cfg;
    journal *j;
    auth *a;
};

/* "error: <code>: <message>" on stderr, like the daemon's error replies. */
static void print_error(const ar_error *err, const char *fallback)
{
    fputs("error: ", stderr);
    render_text(stderr, err->code[0] ? err->code : "error");
    fputs(": ", stderr);
    render_text(stderr, err->message[0] ? err->message : fallback);
    fputc('\n', stderr);
}

static int failed(int status, const ar_error *err, const char *fallback)
{
    print_error(err, fallback);
    return status == AR_E_INVALID ? AIOCTL_USAGE : AIOCTL_REFUSED;
}

static int open_data_dir(const char *config_path, bool must_exist, offline **out)
{
    ar_error err = {0};
    char dir[PATH_MAX];
    int status;
    offline *off = calloc(1, sizeof *off);

    *out = NULL;
    if (!off) {
        fputs("aioctl: out of memory\n", stderr);
        return AIOCTL_REFUSED;
    }
    if ((status = config_load_file(config_path, &off->cfg, &err)) != AR_OK) {
        print_error(&err, "cannot load the config");
        offline_close(off);
        return AIOCTL_USAGE;
    }
    if ((status = config_journal_dir(off->cfg, dir, sizeof dir)) != AR_OK) {
        fprintf(stderr, "aioctl: the data directory in %s is too long a path\n", config_path);
        offline_close(off);
        return AIOCTL_USAGE;
    }
    if (must_exist) {
        /* journal_open would make an empty one: a backup of that helps nobody. */
        char mdb[PATH_MAX + 16];
        snprintf(mdb, sizeof mdb, "%s/data.mdb", dir);
        if (access(mdb, F_OK) != 0) {
            fputs("error: no_journal: ", stderr);
            fprintf(stderr, "there is no journal at %s (%s): is %s the daemon's config?\n", dir,
                    strerror(errno), config_path);
            offline_close(off);
            return AIOCTL_REFUSED;
        }
    }
    journal_opts opts = {.dir = dir, .map_size_mb = off->cfg->map_size_mb};
    if ((status = journal_open(&opts, &off->j, &err)) != AR_OK)
        goto fail;
    if ((status = auth_open(off->j, off->cfg->auth_key_file, &off->a, &err)) != AR_OK)
        goto fail;
    *out = off;
    return AIOCTL_OK;
fail:
    print_error(&err, "cannot open the data directory");
    offline_close(off);
    return AIOCTL_REFUSED;
}

int offline_open(const char *config_path, offline **out)
{
    return open_data_dir(config_path, false, out);
}

int offline_open_existing(const char *config_path, offline **out)
{
    return open_data_dir(config_path, true, out);
}

void offline_close(offline *off)
{
    if (!off)
        return;
    auth_free(off->a);
    journal_close(off->j);
    config_free(off->cfg);
    free(off);
}

int offline_token_create(offline *off, const char *name, unsigned roles, int64_t expires_ms,
                         char token[AUTH_TOKEN_LEN + 1])
{
    ar_error err = {0};
    int status = auth_token_create_by(off->a, "aioctl --config (offline)", name, roles, expires_ms, token, &err);
    if (status != AR_OK) {
        explicit_bzero(token, AUTH_TOKEN_LEN + 1);
        return failed(status, &err, "cannot create the token");
    }
    return AIOCTL_OK;
}

int offline_token_revoke(offline *off, const char *name)
{
    ar_error err = {0};
    int status = auth_token_revoke_by(off->a, "aioctl --config (offline)", name, &err);
    return status == AR_OK ? AIOCTL_OK : failed(status, &err, "cannot revoke the token");
}

int offline_token_list(offline *off, json_t **tokens)
{
    ar_error err = {0};
    *tokens = NULL;
    int status = auth_token_list(off->a, tokens, &err);
    if (status != AR_OK) {
        json_decref(*tokens);
        *tokens = NULL;
        return failed(status, &err, "cannot list the tokens");
    }
    return AIOCTL_OK;
}

/* ---- backup ----------------------------------------------------------------------------- */

#define MAX_KEY_FILE 4096

/* fsync a directory, so that the names made in it survive a power cut too. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* The backup directory: a new one (*created) or an existing empty one. */
static int check_target(const char *dir, bool *created, ar_error *err)
{
    struct stat st;
    *created = false;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT)
            return ar_error_set(err, AR_E_IO, "backup_failed", "cannot look at %s: %s", dir,
                                strerror(errno));
        *created = true; /* journal_backup makes it, 0700, on the way to dir/journal */
        return AR_OK;
    }
    if (!S_ISDIR(st.st_mode))
        return ar_error_set(err, AR_E_INVALID, "backup_target",
                            "%s exists and is not a directory: give a new or empty directory",
                            dir);
    DIR *d = opendir(dir);
    if (!d)
        return ar_error_set(err, AR_E_IO, "backup_failed", "cannot read the directory %s: %s",
                            dir, strerror(errno));
    const struct dirent *e;
    int status = AR_OK;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            status = ar_error_set(err, AR_E_INVALID, "backup_target",
                                  "%s is not empty: give a new or empty directory", dir);
            break;
        }
    closedir(d);
    return status;
}

/* Copy the key file src to dst (a new file, mode 0600), synced. Nothing is left at dst on
 * failure; the bytes read are wiped. */
static int copy_key(const char *src, const char *dst, ar_error *err)
{
    unsigned char buf[MAX_KEY_FILE];
    size_t len = 0;
    ssize_t n;
    int in = -1, out = -1, status = AR_OK;
    bool made = false;

    if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0) {
        status = ar_error_set(err, AR_E_IO, "backup_failed", "cannot read the auth key file %s: %s",
                              src, strerror(errno));
        goto done;
    }
    while (len < sizeof buf && ((n = read(in, buf + len, sizeof buf - len)) != 0)) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            status = ar_error_set(err, AR_E_IO, "backup_failed",
                                  "cannot read the auth key file %s: %s", src, strerror(errno));
            goto done;
        }
        len += (size_t)n;
    }
    if (len == 0 || len == sizeof buf) {
        status = ar_error_set(err, AR_E_IO, "backup_failed",
                              "the auth key file %s is %s: it is not an aiorun key", src,
                              len ? "too large" : "empty");
        goto done;
    }
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) {
        status = ar_error_set(err, AR_E_IO, "backup_failed", "cannot create %s: %s", dst,
                              strerror(errno));
        goto done;
    }
    made = true;
    /* The umask may have taken the owner's read or write bit away; the key must stay 0600. */
    if (fchmod(out, 0600) != 0)
        goto io_fail;
    for (size_t off = 0; off < len;) {
        n = write(out, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto io_fail;
        off += (size_t)n;
    }
    if (fsync(out) != 0)
        goto io_fail;
    n = close(out);
    out = -1;
    if (n != 0)
        goto io_fail;
    goto done;
io_fail:
    status = ar_error_set(err, AR_E_IO, "backup_failed", "cannot write %s: %s", dst,
                          strerror(errno));
done:
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (status != AR_OK && made)
        unlink(dst);
    explicit_bzero(buf, sizeof buf);
    return status;
}

int offline_backup(offline *off, const char *dest, offline_backup_info *info)
{
    ar_error err = {0};
    char dir[PATH_MAX], jdir[PATH_MAX + 16], key[PATH_MAX + 16], mdb[PATH_MAX + 32];
    char parent[PATH_MAX];
    bool created = false, journal_made = false, key_made = false;
    int status;
    struct stat st;

    memset(info, 0, sizeof *info);
    if (!*dest || snprintf(dir, sizeof dir, "%s", dest) >= (int)sizeof dir - 16) {
        status = ar_error_set(&err, AR_E_INVALID, "backup_target",
                              "the backup directory is empty or too long a path");
        goto fail;
    }
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--)
        dir[n - 1] = '\0';
    snprintf(jdir, sizeof jdir, "%s/journal", dir);
    snprintf(key, sizeof key, "%s/auth.key", dir);
    snprintf(mdb, sizeof mdb, "%s/data.mdb", jdir);
    snprintf(info->data_dir, sizeof info->data_dir, "%s", off->cfg->data_dir);
    snprintf(info->auth_key_file, sizeof info->auth_key_file, "%s", off->cfg->auth_key_file);
    config_journal_dir(off->cfg, info->journal_dir, sizeof info->journal_dir);

    if ((status = check_target(dir, &created, &err)) != AR_OK)
        goto fail;
    if ((status = journal_backup(off->j, jdir, &err)) != AR_OK)
        goto fail;
    journal_made = true;
    if ((status = copy_key(off->cfg->auth_key_file, key, &err)) != AR_OK)
        goto fail;
    key_made = true;
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash)
        *(slash == parent ? slash + 1 : slash) = '\0';
    else
        strcpy(parent, ".");
    if (sync_dir(dir) != 0 || (created && sync_dir(parent) != 0)) {
        status = ar_error_set(&err, AR_E_IO, "backup_failed", "cannot sync %s: %s", dir,
                              strerror(errno));
        goto fail;
    }
    if (stat(mdb, &st) == 0)
        info->journal_bytes = (uint64_t)st.st_size;
    return AIOCTL_OK;
fail:
    if (key_made)
        unlink(key);
    if (journal_made) {
        unlink(mdb);
        rmdir(jdir);
    }
    if (created)
        rmdir(dir); /* only when empty: never takes away what was not ours */
    return failed(status, &err, "the backup failed");
}
