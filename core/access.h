/*
 * access.h - who may call what: the API's route table with the roles of each route, and the
 * limiter that slows down guessing of tokens.
 *
 * The route table is the one place where an endpoint declares its roles; the API dispatches
 * from it, the README lists it, and the role-matrix test iterates it, so a new endpoint cannot
 * be left without a rule. A route with roles == 0 is open (only GET /healthz).
 */
#ifndef ACCESS_H
#define ACCESS_H

#include <stddef.h>
#include <stdint.h>

#include "ar.h"

typedef enum route_id {
    ROUTE_HEALTHZ = 0,
    ROUTE_WHOAMI,
    ROUTE_SUBMIT,
    ROUTE_LIST_ACTIONS,
    ROUTE_GET_ACTION,
    ROUTE_CANCEL,
    ROUTE_RESOLVE,
    ROUTE_CONNECTORS,
    ROUTE_PAUSE,
    ROUTE_RESUME,
    ROUTE_LIST_APPROVALS,
    ROUTE_GET_APPROVAL,
    ROUTE_DECIDE_APPROVAL,
    ROUTE_GET_POLICIES,
    ROUTE_RELOAD_POLICIES,
    ROUTE_GET_AUTONOMY,
    ROUTE_SET_AUTONOMY,
    ROUTE_LIST_TOKENS,
    ROUTE_CREATE_TOKEN,
    ROUTE_REVOKE_TOKEN,
    ROUTE_LIST_SECRETS,
    ROUTE_SET_SECRET,
    ROUTE_REMOVE_SECRET,
    ROUTE_ROTATE_VAULT,
    ROUTE_ACTION_AUDIT,
    ROUTE_AUDIT_STREAM,
    ROUTE_AUDIT_VERIFY,
    ROUTE_AUDIT_HEAD,
    ROUTE_METRICS,
    ROUTE_STATS,
    ROUTE_COUNT
} route_id;

typedef struct access_route {
    route_id id;
    const char *method;
    const char *pattern;     /* literal, or with one "{name}" segment */
    unsigned roles;          /* AUTH_ROLE_* bits that may call it; 0: open to anyone */
    int own_only;            /* a caller whose only matching role is submitter sees its own actions */
} access_route;

/* The table (static storage) and its length. */
const access_route *access_routes(size_t *n);

/* Find the route for method + path. AR_OK: *route set, and the {param} segment (if any) copied
 * into param. AR_E_NOTFOUND: no route has this path. AR_E_INVALID: the path exists with other
 * methods, listed in allowed ("GET, POST"). */
int access_match(const char *method, const char *path, const access_route **route,
                 char *param, size_t param_cap, char *allowed, size_t allowed_cap);

/* Failed authentications per client address: at most max_failures in window_ms, after which
 * the address is refused until the window has passed. Thread-safe. Bounded memory: it tracks
 * at most a fixed number of addresses, forgetting the stalest. */
typedef struct access_limiter access_limiter;
access_limiter *access_limiter_new(int max_failures, int64_t window_ms);
void access_limiter_free(access_limiter *l);
/* 0 when addr may try; otherwise the milliseconds until it may try again. */
int64_t access_limiter_wait_ms(access_limiter *l, const char *addr, int64_t now_ms);
/* Count a failure of addr. */
void access_limiter_fail(access_limiter *l, const char *addr, int64_t now_ms);

#endif
