/* access.c - the route table with roles, and the failed-authentication limiter (see access.h). */
#include "access.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"

#define READERS (AUTH_ROLE_READER | AUTH_ROLE_APPROVER | AUTH_ROLE_SUBMITTER | AUTH_ROLE_OPERATOR)

static const access_route routes[] = {
    {ROUTE_HEALTHZ, "GET", "/healthz", 0, 0},
    {ROUTE_WHOAMI, "GET", "/v1/whoami", READERS, 0},
    {ROUTE_SUBMIT, "POST", "/v1/actions", AUTH_ROLE_SUBMITTER | AUTH_ROLE_OPERATOR, 0},
    {ROUTE_LIST_ACTIONS, "GET", "/v1/actions", READERS, 1},
    {ROUTE_GET_ACTION, "GET", "/v1/actions/{id}", READERS, 1},
    {ROUTE_CANCEL, "POST", "/v1/actions/{id}/cancel", AUTH_ROLE_SUBMITTER | AUTH_ROLE_OPERATOR, 1},
    {ROUTE_RESOLVE, "POST", "/v1/actions/{id}/resolve", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_CONNECTORS, "GET", "/v1/connectors", READERS, 0},
    {ROUTE_PAUSE, "POST", "/v1/connectors/{name}/pause", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_RESUME, "POST", "/v1/connectors/{name}/resume", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_LIST_APPROVALS, "GET", "/v1/approvals", AUTH_ROLE_APPROVER | AUTH_ROLE_OPERATOR | AUTH_ROLE_READER, 0},
    {ROUTE_GET_APPROVAL, "GET", "/v1/approvals/{id}", AUTH_ROLE_APPROVER | AUTH_ROLE_OPERATOR | AUTH_ROLE_READER, 0},
    {ROUTE_DECIDE_APPROVAL, "POST", "/v1/approvals/{id}", AUTH_ROLE_APPROVER | AUTH_ROLE_OPERATOR, 0},
    {ROUTE_GET_POLICIES, "GET", "/v1/policies", READERS, 0},
    {ROUTE_RELOAD_POLICIES, "POST", "/v1/policies/reload", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_GET_AUTONOMY, "GET", "/v1/autonomy", READERS, 0},
    {ROUTE_SET_AUTONOMY, "PUT", "/v1/autonomy", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_LIST_TOKENS, "GET", "/v1/tokens", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_CREATE_TOKEN, "POST", "/v1/tokens", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_REVOKE_TOKEN, "DELETE", "/v1/tokens/{name}", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_LIST_SECRETS, "GET", "/v1/secrets", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_SET_SECRET, "PUT", "/v1/secrets/{connector}/{name}", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_REMOVE_SECRET, "DELETE", "/v1/secrets/{connector}/{name}", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_ROTATE_VAULT, "POST", "/v1/vault/rotate", AUTH_ROLE_OPERATOR, 0},
    {ROUTE_ACTION_AUDIT, "GET", "/v1/actions/{id}/audit", READERS, 1},
    {ROUTE_AUDIT_STREAM, "GET", "/v1/audit", AUTH_ROLE_READER | AUTH_ROLE_APPROVER | AUTH_ROLE_OPERATOR, 0},
    {ROUTE_AUDIT_VERIFY, "GET", "/v1/audit/verify", AUTH_ROLE_READER | AUTH_ROLE_APPROVER | AUTH_ROLE_OPERATOR, 0},
    {ROUTE_AUDIT_HEAD, "GET", "/v1/audit/head", AUTH_ROLE_READER | AUTH_ROLE_APPROVER | AUTH_ROLE_OPERATOR, 0},
    {ROUTE_METRICS, "GET", "/metrics", READERS, 0},
    {ROUTE_STATS, "GET", "/v1/stats", READERS, 0},
};

const access_route *access_routes(size_t *n)
{
    *n = sizeof routes / sizeof routes[0];
    return routes;
}

/* Does path fit pattern? Each "{x}" segment matches one non-empty path segment; the segments
 * matched are copied to param, joined with '/' ("shop/api_key" for
 * "/v1/secrets/{connector}/{name}"). */
static int path_matches(const char *pattern, const char *path, char *param, size_t cap)
{
    size_t used = 0;
    param[0] = '\0';
    while (*pattern) {
        if (*pattern != '{') {
            if (*pattern++ != *path++)
                return 0;
            continue;
        }
        pattern = strchr(pattern, '}') + 1;
        size_t len = strcspn(path, "/");
        if (len == 0 || used + len + 1 >= cap)
            return 0;
        if (used)
            param[used++] = '/';
        memcpy(param + used, path, len);
        used += len;
        param[used] = '\0';
        path += len;
    }
    return *path == '\0';
}

int access_match(const char *method, const char *path, const access_route **route,
                 char *param, size_t param_cap, char *allowed, size_t allowed_cap)
{
    size_t used = 0;
    int path_known = 0;
    allowed[0] = '\0';
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!path_matches(routes[i].pattern, path, param, param_cap))
            continue;
        if (strcmp(routes[i].method, method) == 0) {
            *route = &routes[i];
            return AR_OK;
        }
        path_known = 1;
        int n = snprintf(allowed + used, allowed_cap - used, "%s%s", used ? ", " : "", routes[i].method);
        if (n > 0 && (size_t)n < allowed_cap - used)
            used += (size_t)n;
    }
    return path_known ? AR_E_INVALID : AR_E_NOTFOUND;
}

/* ---- limiter --------------------------------------------------------------------------------- */

#define LIMITER_SLOTS 1024

typedef struct slot {
    char addr[64];
    int64_t window_start;
    int failures;
} slot;

struct access_limiter {
    pthread_mutex_t lock;
    int max_failures;
    int64_t window_ms;
    slot slots[LIMITER_SLOTS];
};

access_limiter *access_limiter_new(int max_failures, int64_t window_ms)
{
    access_limiter *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    pthread_mutex_init(&l->lock, NULL);
    l->max_failures = max_failures;
    l->window_ms = window_ms;
    return l;
}

void access_limiter_free(access_limiter *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* The slot of addr, or NULL. Caller holds the lock. */
static slot *find_slot(access_limiter *l, const char *addr)
{
    for (size_t i = 0; i < LIMITER_SLOTS; i++)
        if (l->slots[i].failures && strcmp(l->slots[i].addr, addr) == 0)
            return &l->slots[i];
    return NULL;
}

int64_t access_limiter_wait_ms(access_limiter *l, const char *addr, int64_t now_ms)
{
    int64_t wait = 0;
    pthread_mutex_lock(&l->lock);
    slot *s = find_slot(l, addr);
    if (s && now_ms - s->window_start < l->window_ms && s->failures >= l->max_failures)
        wait = s->window_start + l->window_ms - now_ms;
    pthread_mutex_unlock(&l->lock);
    return wait;
}

void access_limiter_fail(access_limiter *l, const char *addr, int64_t now_ms)
{
    pthread_mutex_lock(&l->lock);
    slot *s = find_slot(l, addr);
    if (!s) {
        /* A free slot, else the one whose window started longest ago. */
        s = &l->slots[0];
        for (size_t i = 0; i < LIMITER_SLOTS; i++) {
            if (!l->slots[i].failures) {
                s = &l->slots[i];
                break;
            }
            if (l->slots[i].window_start < s->window_start)
                s = &l->slots[i];
        }
        snprintf(s->addr, sizeof s->addr, "%s", addr);
        s->failures = 0;
        s->window_start = now_ms;
    }
    if (now_ms - s->window_start >= l->window_ms) {
        s->window_start = now_ms;
        s->failures = 0;
    }
    s->failures++;
    pthread_mutex_unlock(&l->lock);
}
