/*
 * tokenfile.h - where aioctl finds the API token it sends, and how it stores a new one.
 *
 * Sources, first match wins: --token TOKEN, --token-file FILE, $AIORUN_TOKEN, the default file
 * $HOME/.config/aiorun/token (none when HOME is unset). A token file holds the token on its
 * first line; it must be a regular file readable and writable by its owner alone (mode & 077
 * == 0), like an ssh key. A token is never printed, never put in a message, and every buffer
 * that held one is wiped (explicit_bzero) before it is freed.
 *
 * Functions print their own error message on stderr (naming the file, never the token) and
 * return aioctl exit codes (aioctl.h).
 */
#ifndef AIOCTL_TOKENFILE_H
#define AIOCTL_TOKENFILE_H

#include <stdbool.h>
#include <stddef.h>

/* A token file's first line is at most this long (a token is 48 characters). */
#define TOKENFILE_MAX_TOKEN 1024

/* The default token file, "$HOME/.config/aiorun/token": a malloc'd string owned by the
 * caller, or NULL when HOME is unset or empty (or out of memory). */
char *tokenfile_default_path(void);

/* Read the token in path into a malloc'd string (*token, owned by the caller, who wipes it
 * with tokenfile_wipe_free). explicit: the user named this file; when false a missing file is
 * fine (*token = NULL, AIOCTL_OK). Returns AIOCTL_OK, or AIOCTL_USAGE when the file is missing
 * (explicit), unreadable, not a regular file, readable or writable by group or others, or
 * holds no token. */
int tokenfile_read(const char *path, bool explicit, char **token);

/* Storing a token takes two steps, so that a file that cannot be written is found before the
 * token is created (a token is shown once: one that cannot be stored is lost).
 * tokenfile_save_begin creates the missing parent directories of path (mode 0700) and a new
 * temporary file beside it (O_CREAT|O_EXCL, fchmod 0600); tokenfile_save_commit writes the
 * token to it, syncs it and renames it over path, so a reader sees the old file or the new
 * one, never a part; tokenfile_save_abort removes the temporary file. After begin, exactly one
 * of commit or abort must follow; both release the tokenfile_save. They return AIOCTL_OK, or
 * (with the path and the system's reason printed) AIOCTL_USAGE when begin fails (FILE cannot
 * be written: a bad argument) and AIOCTL_REFUSED when commit fails (disk full, ...). */
typedef struct tokenfile_save {
    char *path;  /* owned copies */
    char *dir;
    char *tmp;
    int fd;
} tokenfile_save;
int tokenfile_save_begin(tokenfile_save *s, const char *path);
int tokenfile_save_commit(tokenfile_save *s, const char *token);
void tokenfile_save_abort(tokenfile_save *s);

/* Wipe and free a malloc'd NUL-terminated secret; NULL is a no-op. */
void tokenfile_wipe_free(char *secret);

#endif
