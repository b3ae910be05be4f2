/*
 * render.h - aioctl's human-readable output: an action as a short block, a list of actions, the
 * connectors and the API tokens as aligned tables.
 *
 * Every string that came from the daemon is printed with control characters replaced, so a
 * hostile reason or result cannot drive the terminal. All arguments are borrowed. Machine
 * output (--json) does not come through here: it is the daemon's JSON as received.
 */
#ifndef AIOCTL_RENDER_H
#define AIOCTL_RENDER_H

#include <stdio.h>
#include <jansson.h>

/* id, action, state, key, decision, attempts, and when present the deadline, the next attempt
 * (RETRY_WAIT), the attempt history (the newest entries), who asked to cancel it, an operator's
 * resolution, the result or error of one action object. */
void render_action(FILE *out, const json_t *action);

/* A table ID, STATE, CONNECTOR, ACTION, CREATED of an array of action objects. */
void render_action_table(FILE *out, const json_t *actions);

/* A table NAME, PLUGIN, VERSION, STATUS, SERVING (serving/processes), FLOW ("ok", "paused",
 * "breaker open", "half-open", "rate-limited"; "-" when the daemon reports no "flow"), QUEUE
 * (queued/in flight), ACTIONS of an array of connector objects; then the message of each
 * connector that is not ready, and one line on each that is paused, rate limited or whose
 * breaker is not closed (who paused it and why; since when the breaker is open, why, by which
 * error classes, the next trial). Times are shown as local wall-clock time. */
void render_connectors(FILE *out, const json_t *connectors);

/* A table NAME, ROLES, STATE, CREATED, EXPIRES of an array of token objects ({name, roles:
 * [..], state, created_at, expires_at}); there are never tokens or digests in them. */
void render_token_table(FILE *out, const json_t *tokens);

/* The strings of a JSON array joined with ',' ("submitter,reader"); "-" when empty or not an
 * array. Returns a malloc'd string owned by the caller, or NULL when out of memory. */
char *render_join(const json_t *strings);

/* Write s with control characters (and DEL) replaced by '?'. NULL writes nothing. */
void render_text(FILE *out, const char *s);

#endif
