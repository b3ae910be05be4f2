/*
 * sim_server.h - the HTTP side of the API simulator: libmicrohttpd with a thread per connection
 * on 127.0.0.1, resource routes (sim_store.h) behind Idempotency-Key handling, effect and
 * request counting (sim_ledger.h), injected faults (sim_faults.h), and the /_sim control routes:
 *
 *   GET    /_sim/health                  {"ok": true}
 *   GET    /_sim/effects[?key=K]         effect counters
 *   GET    /_sim/requests                request counters per "METHOD path"
 *   GET    /_sim/log[?route=PATTERN]     every request with its time, key, fault and status
 *   GET    /_sim/by-key/{key}            the remembered response of the effect made with key
 *   POST   /_sim/reset                   reseed resources, clear faults, counters and records
 *   POST   /_sim/faults                  add a fault -> 201 {"id": "flt_1", ...}
 *   GET    /_sim/faults                  list the pending faults
 *   DELETE /_sim/faults[/{id}]           clear all faults, or one
 *
 * /_sim routes are never faulted, counted or logged as requests. All state is in memory and
 * guarded by one mutex; a delayed request sleeps in its own connection thread.
 */
#ifndef SIM_SERVER_H
#define SIM_SERVER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sim_server sim_server;

typedef struct sim_server_opts {
    int port;    /* 0: any free port */
    bool quiet;  /* no request log on stderr */
} sim_server_opts;

/* Start listening on 127.0.0.1. Returns NULL with a message in err on failure. The caller owns
 * the server and stops it with sim_server_stop. */
sim_server *sim_server_start(const sim_server_opts *opts, char *err, size_t cap);
/* The port actually bound. */
int sim_server_port(const sim_server *srv);
/* Stop accepting, cut short any delay in progress, wait for connection threads, free. */
void sim_server_stop(sim_server *srv);

#endif
