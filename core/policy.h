/*
 * policy.h - decisions by sandboxed Lua 5.4 policies.
 *
 * A policy set is every *.lua file of the policy directory, read and compiled once
 * (policy_set_load). Each decision worker thread owns one policy_worker: a lua_State holding
 * the compiled chunks. A decision runs every file's decide(action) with a fresh _ENV whose
 * library tables are read-only, under a memory cap (allocator), an instruction budget (count
 * hook) and a wall-clock deadline. The sandbox opens exactly what DESIGN.md lists: base without
 * load/loadfile/dofile/collectgarbage/print (a rate-limited log() instead), string without dump,
 * table, math, utf8, os.time/clock/date. No io, package, require, debug, coroutine.
 *
 * decide(action) returns nil (abstain) or {verdict = "allow"|"deny", reason = "...",
 * rule = "..."}. Deny wins over allow. A policy that errors, overruns or returns garbage is a
 * deny naming the file and the reason. When every policy abstains: read actions are allowed,
 * write and irreversible ones denied (rule "default").
 */
#ifndef POLICY_H
#define POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"

typedef struct policy_set policy_set;       /* immutable once loaded; shareable across threads */
typedef struct policy_worker policy_worker; /* one per thread; not thread-safe */

typedef struct policy_limits {
    size_t memory_bytes;      /* per worker state; 0: default 8 MiB */
    uint64_t instructions;    /* per decide call; 0: default 1,000,000 */
    int timeout_ms;           /* per decide call; 0: default 50 */
} policy_limits;

typedef enum policy_verdict {
    POLICY_ALLOW = 0,
    POLICY_DENY = 1
} policy_verdict;

typedef struct policy_decision {
    policy_verdict verdict;
    char reason[512];
    char rule[128];
    char file[256];          /* basename of the deciding policy file, "" for the default */
    int policy_error;        /* 1 when the deny comes from a failing policy */
} policy_decision;

/* Read and compile every *.lua under dir (sorted by name). A syntax error or a file without a
 * decide function is AR_E_INVALID with code "policy_invalid" naming file and line.
 * *out owned by the caller (policy_set_free). An empty directory is valid (only defaults). */
int policy_set_load(const char *dir, const policy_limits *limits, policy_set **out, ar_error *err);
void policy_set_free(policy_set *set);
/* Number of files and a short version string (BLAKE2b of the sources, hex, 16 chars). */
size_t policy_set_count(const policy_set *set);
const char *policy_set_version(const policy_set *set);

/* Create a worker for the calling thread. The set must outlive the worker. */
int policy_worker_new(const policy_set *set, policy_worker **out, ar_error *err);
void policy_worker_free(policy_worker *w);

/* Decide. action is a JSON object (borrowed): connector, action, effect ("read"|"write"|
 * "irreversible"), input, proposer{kind,model,confidence,prompt_ref}, priority. Always fills
 * *out; returns AR_OK (a policy failure is a deny, not an error of this function). */
int policy_decide(policy_worker *w, const json_t *action, policy_decision *out);

/* Where log() lines from policies go (default: stderr). Thread-safe to set once at start. */
typedef void (*policy_log_fn)(const char *file, const char *line);
void policy_set_log(policy_log_fn fn);

#endif
