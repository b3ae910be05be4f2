/* sim_route.c - route patterns of the API simulator (see sim_route.h). */
#include "sim_route.h"

#include <string.h>

static bool is_wildcard_segment(const char *seg, size_t len)
{
    return (len == 1 && seg[0] == '*') || (len >= 2 && seg[0] == '{' && seg[len - 1] == '}');
}

bool sim_path_matches(const char *pattern_path, const char *path, char *capture, size_t cap)
{
    bool captured = false;
    if (capture && cap)
        capture[0] = '\0';
    const char *p = pattern_path, *s = path;
    for (;;) {
        /* both sides are at the start of a segment or at their end */
        if (*p == '\0' || *s == '\0')
            return *p == '\0' && *s == '\0';
        if (*p != '/' || *s != '/')
            return false;
        p++, s++;
        size_t plen = strcspn(p, "/"), slen = strcspn(s, "/");
        if (is_wildcard_segment(p, plen)) {
            if (slen == 0)
                return false;
            if (capture && cap && !captured) {
                size_t n = slen < cap - 1 ? slen : cap - 1;
                memcpy(capture, s, n);
                capture[n] = '\0';
                captured = true;
            }
        } else if (plen != slen || memcmp(p, s, plen) != 0) {
            return false;
        }
        p += plen, s += slen;
    }
}

bool sim_route_matches(const char *pattern, const char *method, const char *path)
{
    if (strcmp(pattern, "*") == 0)
        return true;
    const char *space = strchr(pattern, ' ');
    if (!space)
        return false;
    size_t mlen = (size_t)(space - pattern);
    bool any_method = mlen == 1 && pattern[0] == '*';
    if (!any_method && (strlen(method) != mlen || strncmp(pattern, method, mlen) != 0))
        return false;
    return sim_path_matches(space + 1, path, NULL, 0);
}

bool sim_route_pattern_valid(const char *pattern)
{
    if (strcmp(pattern, "*") == 0)
        return true;
    const char *space = strchr(pattern, ' ');
    return space && space > pattern && space[1] == '/' && !strchr(space + 1, ' ');
}
