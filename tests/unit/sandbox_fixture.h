/* sandbox_fixture.h - what test_sandbox.c and test_host_http.c share: a sandbox pool on a
 * loop_t that the test thread drives itself. The test calls the pool between runs of
 * loop_run, and a polling timer stops the loop once the awaited condition holds, so every
 * sandbox call happens on "the loop's thread". A condition that never holds fails the test
 * (cmocka) after WAIT_MS, a guard against hanging, never a performance assertion. */
#ifndef AIORUN_SANDBOX_FIXTURE_H
#define AIORUN_SANDBOX_FIXTURE_H

#include <stdint.h>

#include "loop.h"
#include "sandbox.h"

#define HOST_PATH AIORUN_BUILD_DIR "/bin/aiorun-host"

/* Secrets for a pool, as the vault would hand them out: a sandbox_secrets_fn whose arg is a
 * test_secrets. values: an object name -> string (borrowed; it must outlive the pool). Counts
 * the calls; fail makes them fail (with a message naming no value). */
typedef struct test_secrets {
    const json_t *values;
    int calls;
    int fail;
} test_secrets;
int test_secrets_fn(void *arg, const char *connector, vault_secrets *out, ar_error *err);

/* A pool and its loop, owned by the test (start_pool_opts, stop_pool). */
typedef struct harness {
    loop_t *loop;
    sandbox_pool *pool;
    int events; /* how often the pool called its event callback */
} harness;

/* One call's answer, as on_done records it. result and cost are malloc'd (rec_clear frees
 * them). */
typedef struct call_rec {
    int done; /* how often the done callback ran */
    int ok;
    int error_class;
    char *result;
    char message[2048];
    int http_status;
    int64_t retry_after_ms;
    char *cost; /* the result's cost as compact JSON with sorted keys (malloc'd), NULL if none */
} call_rec;

/* A sandbox_done_fn for sandbox_pool_invoke and _lookup; arg is a call_rec. */
void on_done(void *arg, const sandbox_result *res);
/* Free r's result and cost and zero it. */
void rec_clear(call_rec *r);

/* Zero h, then make its loop and a pool with opts (borrowed) that counts its events in
 * h->events. The plugin file must be readable; a refused sandbox_pool_new fails the test.
 * Without lockdown.runtime_dir the pool gets a temporary one of the test's
 * (test_runtime_dir), so that tests leave nothing in /run. */
void start_pool_opts(harness *h, const sandbox_pool_opts *opts);
/* Free the pool, then the loop (and the temporary runtime directory when it is empty). */
void stop_pool(harness *h);
/* The temporary runtime directory (mode 0755, created when missing). */
const char *test_runtime_dir(void);

/* Run the loop until pred(h, arg) holds (checked every 5 ms) or WAIT_MS pass. Returns
 * whether it holds. */
typedef int (*pred_fn)(harness *h, void *arg);
int run_until(harness *h, pred_fn pred, void *arg);
/* Predicates: the pool's state is *(sandbox_state *)arg; the call_rec arg is done. */
int pred_state(harness *h, void *arg);
int pred_done(harness *h, void *arg);

/* The pool's snapshot (the caller decrefs its descriptor). */
sandbox_snapshot snap(harness *h);
/* run_until the pool is in state want, else fail the test with its state and message. */
void wait_state(harness *h, sandbox_state want);

#endif
