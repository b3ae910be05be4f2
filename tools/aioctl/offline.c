/*
 * offline.c - aioctl's token commands on the data directory (see offline.h).
 */
#include "offline.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int offline_open(const char *config_path, offline **out)
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
    int status = auth_token_create(off->a, name, roles, expires_ms, token, &err);
    if (status != AR_OK) {
        explicit_bzero(token, AUTH_TOKEN_LEN + 1);
        return failed(status, &err, "cannot create the token");
    }
    return AIOCTL_OK;
}

int offline_token_revoke(offline *off, const char *name)
{
    ar_error err = {0};
    int status = auth_token_revoke(off->a, name, &err);
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
