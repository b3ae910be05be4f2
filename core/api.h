/*
 * api.h - the HTTP/JSON API under /v1 (libmicrohttpd), and the decision workers behind it.
 *
 * HTTP threads (libmicrohttpd's internal epoll thread pool) parse and validate requests and
 * never block: a submission is suspended and handed to a decision worker thread (each owns a
 * policy_worker, so a Lua state); the worker decides, journals received + decided (+ ready) in
 * one group-committed batch, hands READY work to the scheduler and resumes the connection. A
 * request with wait_ms stays suspended until the action settles (terminal, or waiting on a
 * human) — api_action_changed wakes it — or until wait_ms passes.
 *
 * Routes and the roles each needs are in access.c's table. Every request but GET /healthz
 * carries "Authorization: Bearer <token>" (auth.h): none or a bad one is 401 unauthenticated,
 * a token without the route's role 403 forbidden. Every error is
 * {"error": "<stable_code>", "message": "<what to fix>"}.
 */
#ifndef API_H
#define API_H

#include <jansson.h>

#include "ar.h"
#include "config.h"
#include "auth.h"
#include "autonomy.h"
#include "counters.h"
#include "vault.h"
#include "journal.h"
#include "policy.h"
#include "scheduler.h"

typedef struct api_server api_server;

/* Create the server and its decision workers; nothing listens yet. It takes ownership of
 * policies (the initial set); cfg, j, au and aut are
 * borrowed and must outlive the server. *out owned by the caller (api_free). */
int api_new(const config *cfg, journal *j, auth *au, autonomy *aut, policy_set *policies,
            api_server **out, ar_error *err);
/* Load the policy directory again and, when it compiles, starts and passes its own tests
 * (*_test.lua; code "policy_tests_failed" otherwise), make it the set every
 * decision worker uses from its next decision on; otherwise keep the current set and say why
 * (AR_E_INVALID, code "policy_invalid", with file, line and message). Thread-safe. why: for the
 * log ("SIGHUP", "requested by NAME", "file change"). */
int api_reload_policies(api_server *a, const char *why, ar_error *err);
/* At start: expire pending approvals on time (they were parked before a restart). */
/* Watch an approval found pending at start (a scheduler_pending_fn; arg is the api_server):
 * it expires at expires_ms (wall clock) unless decided before. */
void api_watch_approval(void *arg, const char *id, int64_t expires_ms);
/* Wire the scheduler in (before api_listen). */
void api_set_scheduler(api_server *a, scheduler *s);
/* Before the scheduler is freed: wait for the routes using it, then let later ones find none
 * (they answer 503 where they need it). */
void api_detach_scheduler(api_server *a);
/* Wire the guardrail counters in (before api_listen; borrowed, must outlive the server):
 * decisions read them through ctx.counter, and a reload installs the new set's definitions
 * together with the current set's, so that a worker still deciding with the old set reads
 * maintained counters. Without it a policy that reads a counter is a policy error. */
void api_set_counters(api_server *a, counters *c);
/* The metric families the scheduler updates (GET /metrics shows them): pass them to
 * scheduler_set_metrics. */
scheduler_metrics api_scheduler_metrics(api_server *a);
/* Wire the vault in (before api_listen; borrowed): the operator's secret routes use it. */
void api_set_vault(api_server *a, vault *v);
/* A scheduler_validate_fn (arg: the api_server): runs the current policy set's validate on a
 * successful result. Call it from the scheduler's thread only (it keeps one Lua state for it). */
json_t *api_validate_result(void *arg, const json_t *rec, const json_t *result);
/* Bind cfg->listen and start serving. */
int api_listen(api_server *a, ar_error *err);
/* The bound port (useful with port 0). */
int api_port(const api_server *a);
/* A scheduler_notify_fn: an action's new state is durable (arg is the api_server). */
void api_action_changed(void *arg, const json_t *rec);
/* Stop taking submissions: later ones get 503 shutting_down; the workers finish what they
 * hold and exit. Call before stopping the scheduler (whose notifications still reach waiting
 * clients), then api_free. */
void api_stop_intake(api_server *a);
/* Answer every waiting client with the state its action has now, stop the server. */
void api_free(api_server *a);

#endif
