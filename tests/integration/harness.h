/*
 * harness.h - start the real aiorun daemon on a free loopback port with a temporary data
 * directory, talk to it over HTTP, stop or kill it.
 *
 * Paths come from the AIORUN_BUILD_DIR and AIORUN_SOURCE_DIR compile definitions. The harness
 * writes its own config into the temporary directory, with the shipped echo plugin and the
 * fixture plugins of tests/plugins, and a policy directory holding the shipped
 * policies/default.lua plus every .lua file of tests/integration/policies.
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <jansson.h>

#define HARNESS_TOKEN_MAX 64

typedef struct harness {
    char token[HARNESS_TOKEN_MAX]; /* an operator token, created before the daemon starts */
    char dir[256];          /* temporary directory (config, var/, daemon.log, policies/) */
    char config_path[300];
    char log_path[300];
    char url[64];
    char cainfo[300];               /* the test certificate when serving HTTPS, else "" */
    int last_retry_after;           /* Retry-After of the last reply (seconds), -1 if none */
    int port;
    pid_t pid;
} harness;

typedef struct harness_opts {
    const char *extra_connectors;  /* JSON members appended to "connectors", e.g.
                                      "\"bad\": {\"plugin\": \"/x/t_abi_major.so\"}" */
    int map_size_mb;               /* 0: default */
    int max_body_bytes;            /* 0: default */
    int tls;                       /* serve HTTPS with a certificate made now (openssl) */
    const char *extra_top;         /* JSON members added at the top level, e.g. "\"aging_ms\": 100" */
} harness_opts;

/* Create the directory and config, start the daemon, wait for /healthz (10 s). 0 on success;
 * on failure the daemon's log is printed. */
int harness_start(harness *h, const harness_opts *opts);
/* Start again with the same directory and config (after stop or kill). */
int harness_restart(harness *h);
/* SIGTERM and wait; returns the daemon's exit status (or -1). */
int harness_stop(harness *h);
/* SIGKILL and reap. */
void harness_kill9(harness *h);
/* Copy the daemon's log to stderr (for a failing test: the directory goes at cleanup). */
void harness_print_log(const harness *h);
/* Stop if running and remove the directory. */
void harness_cleanup(harness *h);
/* A test's teardown: stop the daemon if it runs (SIGTERM), remove the directory; 0 when the
 * daemon exited cleanly (or was not running), else -1. */
int harness_teardown(harness *h);

/* A string member of obj, "(none)" when absent or not a string (for assertions). */
const char *harness_str(const json_t *obj, const char *key);

/* Create or revoke a token directly on the data directory (as aioctl --config does), while the
 * daemon runs or not. roles: "submitter,reader". expires_ms: 0 never, else absolute. 0 on
 * success; the token lands in out. */
int harness_token_create(harness *h, const char *name, const char *roles, int64_t expires_ms,
                         char out[HARNESS_TOKEN_MAX]);
int harness_token_revoke(harness *h, const char *name);

/* One HTTP request with the given bearer token (NULL: none). path is below the daemon's URL,
 * or a full URL. */
long harness_http_as(harness *h, const char *token, const char *method, const char *path,
                     const char *body, json_t **out);
/* One HTTP request as the harness's operator. body may be NULL. Returns the status (0 when unreachable); *out receives the
 * parsed JSON reply (new reference, NULL when the body is not JSON) when out is not NULL. */
long harness_http(harness *h, const char *method, const char *path, const char *body, json_t **out);
/* POST /v1/actions with a JSON body built from a format (json_pack syntax). */
long harness_submit(harness *h, json_t **out, const char *fmt, ...);

/* A loopback port free at this moment. */
int harness_free_port(void);

/* Path helpers: <build>/test-plugins/<name>.so, <build>/bin/<name>. */
void harness_test_plugin(char *buf, size_t cap, const char *name);
void harness_bin(char *buf, size_t cap, const char *name);

/* Run a command line (argv, NULL-terminated) with AIORUN_URL set to the daemon; returns its
 * and AIORUN_TOKEN set to the operator token; returns its exit status and captures stdout
 * into out (cap bytes, NUL-terminated). */
int harness_run(harness *h, char *const argv[], char *out, size_t cap);

/* ---- the API simulator (tests/sim) --------------------------------------------------------- */

typedef struct sim {
    pid_t pid;
    int port;
    char url[64];
    char dir[256];
} sim;

/* Start <build>/bin/aiorun-sim on a free loopback port (quiet). 0 on success. */
int sim_start(sim *s);
/* SIGTERM and reap; returns its exit status. */
int sim_stop(sim *s);
/* A request to the simulator (its /_sim control routes, say). Returns the HTTP status. */
long sim_http(sim *s, const char *method, const char *path, const char *body, json_t **out);
/* Effects the simulator made with this idempotency key. */
long sim_effects(sim *s, const char *key);

#endif
