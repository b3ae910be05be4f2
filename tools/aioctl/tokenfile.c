/*
 * tokenfile.c - reading and storing aioctl's API token (see tokenfile.h).
 */
#include "tokenfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aioctl.h"

char *tokenfile_default_path(void)
{
    const char *home = getenv("HOME");
    char *path = NULL;
    if (!home || !*home)
        return NULL;
    if (asprintf(&path, "%s/.config/aiorun/token", home) < 0)
        return NULL;
    return path;
}

void tokenfile_wipe_free(char *secret)
{
    if (!secret)
        return;
    explicit_bzero(secret, strlen(secret));
    free(secret);
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

int tokenfile_read(const char *path, bool explicit, char **token)
{
    char buf[TOKENFILE_MAX_TOKEN + 2];
    size_t len = 0;
    int rc = AIOCTL_USAGE;
    struct stat st;

    *token = NULL;
    /* O_NONBLOCK: a FIFO put in the token file's place must not hang us before the check. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (!explicit && (errno == ENOENT || errno == ENOTDIR))
            return AIOCTL_OK;
        fprintf(stderr, "aioctl: cannot open the token file %s: %s\n", path, strerror(errno));
        return AIOCTL_USAGE;
    }
    if (fstat(fd, &st) != 0) {
        fprintf(stderr, "aioctl: cannot read the token file %s: %s\n", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "aioctl: the token file %s is not a regular file\n", path);
        goto done;
    }
    if (st.st_mode & 077) {
        fprintf(stderr, "aioctl: token file %s has mode %04o; it must be readable by you alone: "
                "chmod 600 %s\n", path, (unsigned)(st.st_mode & 07777), path);
        goto done;
    }
    /* Only the first line matters; read until a newline or a little past the longest token. */
    while (len < sizeof buf - 1) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "aioctl: cannot read the token file %s: %s\n", path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        if (memchr(buf + len, '\n', (size_t)n)) {
            len += (size_t)n;
            break;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
    else if (len > TOKENFILE_MAX_TOKEN) {
        fprintf(stderr, "aioctl: the first line of the token file %s is longer than %d bytes; "
                "it is not a token\n", path, TOKENFILE_MAX_TOKEN);
        goto done;
    }
    len = strlen(buf);
    while (len > 0 && is_space(buf[len - 1]))
        buf[--len] = '\0';
    if (len == 0) {
        fprintf(stderr, "aioctl: the token file %s holds no token on its first line\n", path);
        goto done;
    }
    if (!(*token = strdup(buf))) {
        fputs("aioctl: out of memory\n", stderr);
        goto done;
    }
    rc = AIOCTL_OK;
done:
    explicit_bzero(buf, sizeof buf);
    close(fd);
    return rc;
}

/* mkdir -p dir's missing parts with mode 0700 (existing ones are left as they are). */
static int make_dirs(const char *dir)
{
    char *p = strdup(dir);
    int rc = -1;
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            goto done;
        *s = saved;
        if (!saved)
            break;
    }
    struct stat st;
    if (stat(p, &st) != 0)
        goto done;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        goto done;
    }
    rc = 0;
done:
    free(p);
    return rc;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void save_release(tokenfile_save *s)
{
    if (s->fd >= 0)
        close(s->fd);
    if (s->tmp)
        unlink(s->tmp);
    free(s->tmp);
    free(s->dir);
    free(s->path);
    memset(s, 0, sizeof *s);
    s->fd = -1;
}

int tokenfile_save_begin(tokenfile_save *s, const char *path)
{
    /* dirname and basename may modify their argument (or return static storage): copies. */
    char *dir_copy = strdup(path), *base_copy = strdup(path);
    const char *what = "cannot store the token in";

    memset(s, 0, sizeof *s);
    s->fd = -1;
    if (!dir_copy || !base_copy || !(s->path = strdup(path)) || !(s->dir = strdup(dirname(dir_copy)))) {
        errno = ENOMEM;
        goto fail;
    }
    const char *base = basename(base_copy);
    if (!*path || path[strlen(path) - 1] == '/' || !*base || strcmp(base, ".") == 0 ||
        strcmp(base, "..") == 0) {
        errno = EISDIR;
        goto fail;
    }
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto fail;
    }
    if (make_dirs(s->dir) != 0) {
        what = "cannot create the directory for";
        goto fail;
    }
    char *tmp = NULL;
    if (asprintf(&tmp, "%s/.%s.XXXXXX", s->dir, base) < 0) {
        errno = ENOMEM;
        goto fail;
    }
    /* mkostemp opens with O_CREAT|O_EXCL and mode 0600; fchmod makes sure of it. */
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        free(tmp);
        goto fail;
    }
    s->tmp = tmp;
    s->fd = fd;
    if (fchmod(fd, 0600) != 0)
        goto fail;
    free(dir_copy);
    free(base_copy);
    return AIOCTL_OK;
fail:
    fprintf(stderr, "aioctl: %s %s: %s\n", what, path, strerror(errno));
    free(dir_copy);
    free(base_copy);
    save_release(s);
    return AIOCTL_USAGE;
}

int tokenfile_save_commit(tokenfile_save *s, const char *token)
{
    if (write_all(s->fd, token, strlen(token)) != 0 || write_all(s->fd, "\n", 1) != 0 ||
        fsync(s->fd) != 0)
        goto fail;
    int fd = s->fd;
    s->fd = -1;
    if (close(fd) != 0)
        goto fail;
    if (rename(s->tmp, s->path) != 0)
        goto fail;
    free(s->tmp);
    s->tmp = NULL;
    /* Make the rename itself durable. */
    int dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    save_release(s);
    return AIOCTL_OK;
fail:
    fprintf(stderr, "aioctl: cannot store the token in %s: %s\n", s->path, strerror(errno));
    save_release(s);
    return AIOCTL_REFUSED;
}

void tokenfile_save_abort(tokenfile_save *s)
{
    save_release(s);
}
