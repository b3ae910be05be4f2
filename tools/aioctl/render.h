/*
 * render.h - aioctl's human-readable output: an action or an approval as a short block, lists
 * of actions and approvals, the connectors, the autonomy levels and the API tokens as aligned
 * tables, the policy set in force.
 *
 * Every string that came from the daemon is printed with control characters replaced, so a
 * hostile reason or result cannot drive the terminal. All arguments are borrowed. Machine
 * output (--json) does not come through here: it is the daemon's JSON as received.
 */
#ifndef AIOCTL_RENDER_H
#define AIOCTL_RENDER_H

#include <stdio.h>
#include <jansson.h>

/* id, action, state, key, decision, and when present the autonomy level that changed it (not
 * "auto"), the votes of the policy files that did not abstain, the approval (waiting for
 * which roles until when, and the summary; or approved / rejected by whom, when, with which
 * comment; or expired), attempts, and when present the deadline, the next attempt
 * (RETRY_WAIT), the attempt history (the newest entries), who asked to cancel it, an operator's
 * resolution, the result or error of one action object. */
void render_action(FILE *out, const json_t *action);

/* A table ID, STATE, CONNECTOR, ACTION, CREATED of an array of action objects. */
void render_action_table(FILE *out, const json_t *actions);

/* A table ID, CONNECTOR.ACTION, SUBMITTER, ROLES ("any" when the policy named none), EXPIRES,
 * SUMMARY (cut to one short line) of an array of approval views (GET /v1/approvals). Times are
 * shown as local wall-clock time. */
void render_approval_table(FILE *out, const json_t *approvals);

/* Everything in one approval view (GET /v1/approvals/{id}) as a block: its state and the
 * action's, the action and its input, proposer, submitter, who may decide (four eyes),
 * summary, rule, when requested, when it expires, and the decision once there is one. */
void render_approval(FILE *out, const json_t *approval);

/* One line on an approval view: "ID: approved by alice at 17:03:00 — comment (echo.echo,
 * action APPROVED)"; the state instead of the decision while it is pending. */
void render_approval_line(FILE *out, const json_t *approval);

/* GET /v1/autonomy's view ({"config": {pattern: level}, "runtime": {pattern: {level, by,
 * at_ms}}, "default"}): a table PATTERN, LEVEL, FROM (config, config (overridden), runtime),
 * SET BY, AT, then how a pattern is chosen and the level of actions no pattern fits. */
void render_autonomy(FILE *out, const json_t *view);

/* GET /v1/policies's view: version, number of files and directory, when loaded, reloads. */
void render_policies(FILE *out, const json_t *view);

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
/* GET /v1/stats's "connectors": one row each: finished actions, error rate, call and end-to-end
 * latency p50/p90/p99, cost per action. */
void render_stats(FILE *out, const json_t *connectors);
/* GET /v1/stats?day=...'s "connectors": actions, finished, failed, cost by unit. */
void render_stats_day(FILE *out, const json_t *connectors);

/* The strings of a JSON array joined with ',' ("submitter,reader"); "-" when empty or not an
 * array. Returns a malloc'd string owned by the caller, or NULL when out of memory. */
char *render_join(const json_t *strings);

/* Write s with control characters (and DEL) replaced by '?'. NULL writes nothing. */
void render_text(FILE *out, const char *s);

/* "aioctl: <message>" and a pointer to --help on stderr; returns AIOCTL_USAGE (exit 2). */
int render_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "error: <code>: <message>" on stderr, like the daemon's error replies (fallback when the
 * error has no message). err is core's ar_error (ar.h). */
struct ar_error;
void render_ar_error(const struct ar_error *err, const char *fallback);

#endif
