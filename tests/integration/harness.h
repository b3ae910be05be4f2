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
#include <sys/types.h>
#include <jansson.h>

typedef struct harness {
    char dir[256];          /* temporary directory (config, var/, daemon.log, policies/) */
    char config_path[300];
    char log_path[300];
    char url[64];
    int port;
    pid_t pid;
} harness;

typedef struct harness_opts {
    const char *extra_connectors;  /* JSON members appended to "connectors", e.g.
                                      "\"bad\": {\"plugin\": \"/x/t_abi_major.so\"}" */
    int map_size_mb;               /* 0: default */
    int max_body_bytes;            /* 0: default */
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
/* Stop if running and remove the directory. */
void harness_cleanup(harness *h);

/* One HTTP request. body may be NULL. Returns the status (0 when unreachable); *out receives the
 * parsed JSON reply (new reference, NULL when the body is not JSON) when out is not NULL. */
long harness_http(harness *h, const char *method, const char *path, const char *body, json_t **out);
/* POST /v1/actions with a JSON body built from a format (json_pack syntax). */
long harness_submit(harness *h, json_t **out, const char *fmt, ...);

/* Path helpers: <build>/test-plugins/<name>.so, <build>/bin/<name>. */
void harness_test_plugin(char *buf, size_t cap, const char *name);
void harness_bin(char *buf, size_t cap, const char *name);

/* Run a command line (argv, NULL-terminated) with AIORUN_URL set to the daemon; returns its
 * exit status and captures stdout into out (cap bytes, NUL-terminated). */
int harness_run(harness *h, char *const argv[], char *out, size_t cap);

#endif
