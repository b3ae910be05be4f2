/*
 * policy.h - decisions by sandboxed Lua 5.4 policies.
 *
 * A policy set is every *.lua file of the policy directory but the tests (*_test.lua), read
 * and compiled once (policy_set_load). Each decision worker thread owns one policy_worker: a lua_State holding
 * the compiled chunks. A decision runs every file's decide(action) as if in a fresh _ENV whose
 * library tables are read-only: nothing one call does is seen by the next call or by the next
 * file (a file's top level runs once per worker where that cannot be told apart; see
 * policy_worker_files_run_once), under a memory cap (allocator), an instruction budget (count
 * hook) and a wall-clock deadline. The sandbox opens exactly what DESIGN.md lists: base without
 * load/loadfile/dofile/collectgarbage/print (a rate-limited log() instead), string without dump,
 * table, math, utf8, os.time/clock/date. No io, package, require, debug, coroutine.
 *
 * decide(action, ctx) returns nil (abstain) or {verdict = "allow"|"deny"|"approve"|"suggest",
 * reason = "...", rule = "...", roles = {...}, expires_in = seconds, summary = "...",
 * four_eyes = bool}. The most restrictive verdict wins (see policy_verdict). ctx offers
 * ctx.now() (seconds since the epoch). A policy that errors, overruns or returns garbage is a
 * deny naming the file and the reason. When every policy abstains: the configured default
 * (read: allow; write, irreversible: approve), rule "default".
 *
 * Guardrail counters (counters.h): a file may declare counters = { name = {connector, action,
 * sum, window}, ... }; the set's counters are the union of its files' (one name declared
 * differently by two files, or a malformed declaration, makes the set invalid, code
 * "policy_invalid", naming file and counter). ctx.counter(name) returns the counter's current
 * value (a number) from the worker's counter source; an undeclared name, or a source that
 * fails, raises an error in the policy (so a policy error: deny policy_error naming the
 * counter).
 *
 * Covers: a file may declare covers = { "CONNECTOR.ACTION", "CONNECTOR", ... } (read at load,
 * like counters). Its decide and validate then run only for the actions it names ("CONNECTOR":
 * every action of that connector); for any other action the file is not run and abstains
 * (its vote is as if it returned nil; its validate accepts). A file without covers runs for
 * every action. A malformed covers (not a non-empty list of such strings: names of
 * [a-z0-9_-], at most one dot) makes the set invalid, code "policy_invalid", naming the file,
 * covers and the entry.
 *
 * validate(action, result, ctx) (optional, per file) checks a connector's result before it is
 * accepted. It returns nil or true (accept), or rejects with false, a string (the reason), or
 * {ok = false, reason = "...", rule = "..."} ({ok = true} accepts). Every file's validate runs
 * in file order; the first rejection wins. An error, overrun or another return value is a
 * rejection with policy_error set and the reason.
 *
 * Policy tests (policy_run_tests): a *_test.lua file beside the policies defines (or returns)
 * tests = { {name = "...", action = {...}, expect = {verdict = "...", rule = ...}, now = ...},
 * ... }; each case is decided by the whole set, as the daemon would decide it, and compared
 * with what it expects. policies/README.md documents the format.
 */
#ifndef POLICY_H
#define POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"
#include "counters.h"

typedef struct policy_set policy_set;       /* immutable once loaded; shareable across threads */
typedef struct policy_worker policy_worker; /* one per thread; not thread-safe */

/* Verdicts, from the least to the most restrictive: when policies disagree, the most
 * restrictive wins (deny > suggest > approve > allow; suggest outranks approve because nothing
 * runs). */
typedef enum policy_verdict {
    POLICY_ALLOW = 0,
    POLICY_APPROVE = 1,      /* a human must approve it first */
    POLICY_SUGGEST = 2,      /* record the decision, never execute */
    POLICY_DENY = 3
} policy_verdict;

typedef struct policy_limits {
    size_t memory_bytes;      /* per worker state; 0: default 8 MiB */
    uint64_t instructions;    /* per decide call; 0: default 1,000,000 */
    int timeout_ms;           /* per decide call; 0: default 50 */
    /* The verdict when every policy abstains (defaults: read allow, write and irreversible
     * approve). Not limits, but set with them, in the config's "policy" block. */
    int default_read;         /* policy_verdict + 1; 0: default */
    int default_write;
    int default_irreversible;
} policy_limits;

#define POLICY_MAX_ROLES 8

/* One file's vote, as C data (policy_decision.vote_list). */
typedef struct policy_vote {
    const char *file;        /* basename of the file (valid UTF-8) */
    int abstained;           /* 1: no opinion; verdict, rule and reason are then unset */
    policy_verdict verdict;
    const char *rule;        /* NULL: the policy named none */
    const char *reason;      /* NULL: the policy gave none */
    /* file as a JSON string, borrowed from the set (policy_votes_json shares it); NULL: none,
     * policy_votes_json makes its own from file */
    json_t *file_json;
    /* an abstention's whole vote as JSON ({"file", "verdict": null, "rule": null, "reason":
     * null}), borrowed from the set (policy_votes_json shares it: votes are not changed once
     * made); NULL: policy_votes_json makes its own */
    json_t *abstain_json;
} policy_vote;

typedef struct policy_decision {
    policy_verdict verdict;
    char reason[512];
    char rule[128];
    char file[256];          /* basename of the deciding policy file, "" for the default */
    int policy_error;        /* 1 when the deny comes from a failing policy */
    /* For approve (from the deciding policy; the most restrictive approve when several ask):
     * who may decide, for how long, what the human is shown, and whether the submitter is
     * barred from approving its own action. */
    char roles[POLICY_MAX_ROLES][64];
    int n_roles;             /* 0: any approver */
    int64_t expires_in_s;    /* 0: the daemon's default */
    char summary[512];
    int four_eyes;
    /* Every policy's vote, in file order: [{"file", "verdict" (or null: abstained), "rule",
     * "reason"}]. A new reference owned by the caller (json_decref); NULL on allocation failure,
     * and always NULL on a worker told not to build it (policy_worker_set_votes_json). */
    json_t *votes;
    uint64_t duration_ns;    /* time spent deciding (for latency metrics) */
    /* The same votes as C data, in file order (n_votes of them; none when no policy ran).
     * Borrowed from the worker that decided: valid until its next call or policy_worker_free. */
    const policy_vote *vote_list;
    size_t n_votes;
} policy_decision;

/* "allow" <-> POLICY_ALLOW, ...; -1 / NULL for unknown. */
int policy_verdict_from_name(const char *name);
const char *policy_verdict_name(policy_verdict v);

/* Read and compile every *.lua under dir (sorted by name), except the tests (*_test.lua). A syntax error or a file without a
 * decide function is AR_E_INVALID with code "policy_invalid" naming file and line.
 * *out owned by the caller (policy_set_free). An empty directory is valid (only defaults). */
int policy_set_load(const char *dir, const policy_limits *limits, policy_set **out, ar_error *err);
void policy_set_free(policy_set *set);
/* Number of files and a short version string (BLAKE2b of the sources, hex, 16 chars). */
size_t policy_set_count(const policy_set *set);
const char *policy_set_version(const policy_set *set);

/* The counters the set's files declare, in name order; *n their number. Borrowed from the set.
 * policy_set_find_counter: by name, or NULL. */
const counter_def *policy_set_counters(const policy_set *set, size_t *n);
const counter_def *policy_set_find_counter(const policy_set *set, const char *name);
/* 1 when some file of the set defines validate. */
int policy_set_has_validate(const policy_set *set);

/* Create a worker for the calling thread. The set must outlive the worker. */
int policy_worker_new(const policy_set *set, policy_worker **out, ar_error *err);
void policy_worker_free(policy_worker *w);

/* Where ctx.counter(name) gets its values for the following calls on this worker: fn(arg, def,
 * &value) returns AR_OK or a failure status (the call then raises "counter NAME unavailable:
 * <message>" in the policy; fill err). With fn NULL (the default) every declared counter reads
 * 0. The caller keeps arg alive while it is set. */
typedef int (*policy_counter_fn)(void *arg, const counter_def *def, double *value, ar_error *err);
void policy_worker_set_counters(policy_worker *w, policy_counter_fn fn, void *arg);

/* Decide. action is a JSON object (borrowed): connector, action, effect ("read"|"write"|
 * "irreversible"), input, proposer{kind,model,confidence,prompt_ref}, priority, submitter,
 * autonomy. Always fills *out (the caller decrefs out->votes); returns AR_OK (a policy failure
 * is a deny, not an error of this function). */
int policy_decide(policy_worker *w, const json_t *action, policy_decision *out);

/* Whether policy_decide on w builds out->votes (build 1, the default) or leaves it NULL
 * (build 0): the votes are then only in out->vote_list, and a caller that needs the JSON builds
 * it with policy_votes_json, e.g. only for what it stores. */
void policy_worker_set_votes_json(policy_worker *w, int build);

/* The votes of d (from d->vote_list) as the JSON array policy_decision.votes describes: a new
 * reference owned by the caller; NULL on allocation failure. d's worker must not have decided
 * again since. */
json_t *policy_votes_json(const policy_decision *d);

/* How many of w's files run once per worker (their top level ran when the worker was made and
 * each call only calls decide or validate) rather than running their whole file on every call.
 * Both decide alike; a file runs on every call when its top level reads the clock or the random
 * generator or logs, when it keeps a table with a metatable of its own or an iterator, when a
 * function assigns an upvalue that outlives a call, or when it set a metatable on a table it
 * did not make during the call. For diagnostics and tests. */
size_t policy_worker_files_run_once(const policy_worker *w);

typedef struct policy_validation {
    int ok;                  /* 1: accepted (also when no file defines validate) */
    char reason[512];
    char rule[128];
    char file[256];          /* the rejecting file */
    int policy_error;        /* 1 when the rejection comes from a failing validate */
    uint64_t duration_ns;
} policy_validation;

/* Validate a connector's result for an action (both borrowed; action as for policy_decide).
 * Always fills *out; returns AR_OK. */
int policy_validate(policy_worker *w, const json_t *action, const json_t *result,
                    policy_validation *out);

/* Decide one action (a JSON object, borrowed) with a worker of its own, at the current time:
 * *out (a new object owned by the caller) is {"verdict", "rule", "reason", "policy" (the
 * deciding file, "" for the default), "roles" (array; [] is any approver), "expires_in"
 * (seconds or null), "summary" (string or null), "four_eyes" (bool), "votes" (as in
 * policy_decision)}. An action that is not an object is AR_E_INVALID, code
 * "policy_action_invalid". */
/* counters (borrowed, may be NULL): an object of counter name -> number that ctx.counter reads
 * (declared counters not in it read 0); a name the set does not declare, or a value that is
 * not a number, is AR_E_INVALID, code "policy_counter_invalid". */
int policy_eval(const policy_set *set, const json_t *action, const json_t *counters,
                json_t **out, ar_error *err);

/* Run the policy tests: every *_test.lua in dir (sorted by name; not hidden files), each in the
 * policies' sandbox under the set's limits. A case is decided by set at its "now" (a UTC time
 * "2026-03-07T22:30:00Z" or seconds since the epoch; default 2026-01-07T12:00:00Z, a Wednesday
 * noon, so results do not depend on when the tests run) and checked against expect: verdict,
 * and rule, policy (file), roles (as a set), four_eyes and summary when given. A case may give
 * counters = {name = value, ...} (what ctx.counter returns; undeclared names are a malformed
 * case). A case with result = {...} tests validate instead: expect = {valid = true|false,
 * rule = ..., reason = ...} (valid required; rule and reason compared when given; reason as a
 * substring). *report (a new
 * object owned by the caller) is {"passed": n, "failed": n, "cases": [{"file", "name", "ok",
 * "expected" (the expect table), "got" (policy_eval's fields), "differences": ["verdict:
 * expected approve, got allow", ...]}]}; a failing case is not an error of this function.
 * A test file that does not compile, fails when run, or has a malformed case (unknown field,
 * missing name, action or expect.verdict, ...) is AR_E_INVALID, code "policy_test_invalid",
 * naming the file and the line or the case (number from 1, and name); *report is then NULL.
 * No test file at all is AR_OK with passed = failed = 0. */
int policy_run_tests(const policy_set *set, const char *dir, json_t **report, ar_error *err);

/* Where log() lines from policies go (default: stderr). Thread-safe to set once at start. */
typedef void (*policy_log_fn)(const char *file, const char *line);
void policy_set_log(policy_log_fn fn);

#endif
