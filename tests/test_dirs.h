/* test_dirs.h - temporary directories for the unit tests: made fresh under /tmp, removed with
 * everything in them. Header-only (static inline), next to test_main.h: include that first. */
#ifndef AIORUN_TEST_DIRS_H
#define AIORUN_TEST_DIRS_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A new empty directory /tmp/aiorun-<tag>-XXXXXX; the path is malloc'd, owned by the caller
 * (test_rm_tree frees it). Fails the test when it cannot be made. */
static inline char *test_tmpdir(const char *tag)
{
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "/tmp/aiorun-%s-XXXXXX", tag);
    assert_non_null(mkdtemp(tmpl));
    char *dir = strdup(tmpl);
    assert_non_null(dir);
    return dir;
}

static inline int test_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Remove dir and all it holds (not following symbolic links); dir itself is borrowed. */
static inline void test_remove_tree(const char *dir)
{
    nftw(dir, test_rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* test_remove_tree, then free the path test_tmpdir returned. */
static inline void test_rm_tree(char *dir)
{
    test_remove_tree(dir);
    free(dir);
}

#endif
