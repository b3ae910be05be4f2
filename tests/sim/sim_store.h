/*
 * sim_store.h - the fake API resources of the simulator: orders, products (seeded), tickets.
 *
 * Routes (ids look like "ord_1", "prd_1", "tkt_1"):
 *   GET  /orders                GET  /orders/{id}      POST /orders      POST /orders/{id}/refund
 *   GET  /products              GET  /products/{id}    POST /products    PATCH /products/{id}
 *   GET  /tickets               GET  /tickets/{id}     POST /tickets     POST /tickets/{id}/tags
 * Errors: 400 {"error":"invalid_json"}, 422 {"error":"invalid","message":...},
 * 404 {"error":"not_found"}, 409 {"error":"already_refunded"}.
 *
 * Not thread-safe: the caller serialises every call (the server holds its mutex).
 */
#ifndef SIM_STORE_H
#define SIM_STORE_H

#include <stddef.h>
#include <jansson.h>

typedef struct sim_store sim_store;

/* A new store with the seeded products. NULL when out of memory. Free with sim_store_free. */
sim_store *sim_store_new(void);
void sim_store_free(sim_store *s);
/* Forget every resource, reseed the products, restart the id counters. */
void sim_store_reset(sim_store *s);

typedef enum { SIM_ROUTE_FOUND, SIM_ROUTE_NOT_FOUND, SIM_ROUTE_BAD_METHOD } sim_route_result;

/* Is (method, path) a resource route? For SIM_ROUTE_BAD_METHOD, allow receives the methods the
 * path accepts ("GET, POST"). Stateless. */
sim_route_result sim_store_route(const char *method, const char *path, char *allow, size_t cap);

/* Perform a request on a found route. body/len: the raw request body (may be NULL/0).
 * *reply receives a new reference the caller owns (never shared with the store); *effect is 1
 * when the request changed state (create, refund, patch, tag), else 0. Returns the HTTP status. */
int sim_store_handle(sim_store *s, const char *method, const char *path, const char *body,
                     size_t len, json_t **reply, int *effect);

#endif
