/*
 * sim_route.h - route patterns of the API simulator.
 *
 * A route is "METHOD /path" (e.g. "POST /orders/ord_1/refund"). A pattern is either "*" (every
 * route) or "METHOD /path" where METHOD may be "*" (any method) and a path segment written
 * "{name}" or "*" matches exactly one non-empty segment. Pure functions, no state.
 */
#ifndef SIM_ROUTE_H
#define SIM_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

/* Does the path match the pattern path ("/orders/{id}")? When capture is not NULL, the first
 * "{...}" or "*" segment of the path is copied into it (cut to cap - 1 bytes, "" when none). */
bool sim_path_matches(const char *pattern_path, const char *path, char *capture, size_t cap);

/* Does the request (method, path) match the route pattern ("*", "POST /orders", "* /x/{id}")? */
bool sim_route_matches(const char *pattern, const char *method, const char *path);

/* Is this a well-formed pattern ("*" or "METHOD /path")? */
bool sim_route_pattern_valid(const char *pattern);

#endif
