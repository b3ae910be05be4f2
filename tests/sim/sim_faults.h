/*
 * sim_faults.h - the fault injection table of the simulator.
 *
 * A fault is added from its JSON spec (POST /_sim/faults), gets an id ("flt_1"), and is handed
 * to the next "count" requests whose route matches its pattern (see sim_route.h), oldest fault
 * first; count -1 never runs out. Kinds and their fields:
 *   status       "status": 400..599 (default 500), optional "seconds": Retry-After
 *   retry_after  429 with Retry-After: "seconds": n (default 1), "http_date": true for a date
 *   delay        "delay_ms": n, "apply": whether the effect happens before the sleep
 *   reset_before close the connection without executing or answering
 *   reset_after  execute, then close the connection without answering
 *   truncate     execute, then send a body cut short of its Content-Length
 *   crash        execute when "apply" is true, then the whole simulator exits with status 3
 *
 * Not thread-safe: the caller serialises every call.
 */
#ifndef SIM_FAULTS_H
#define SIM_FAULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

typedef enum {
    SIM_FAULT_NONE,
    SIM_FAULT_STATUS,
    SIM_FAULT_RETRY_AFTER,
    SIM_FAULT_DELAY,
    SIM_FAULT_RESET_BEFORE,
    SIM_FAULT_RESET_AFTER,
    SIM_FAULT_TRUNCATE,
    SIM_FAULT_CRASH,
} sim_fault_kind;

/* What one request receives (a copy; nothing to free). */
typedef struct sim_fault {
    sim_fault_kind kind;
    char id[24];
    int status;    /* status: the HTTP status */
    int seconds;   /* status, retry_after: Retry-After seconds; -1 when none */
    bool http_date;/* retry_after: send an HTTP-date instead of seconds */
    int delay_ms;  /* delay */
    bool apply;    /* delay, crash */
} sim_fault;

typedef struct sim_faults sim_faults;

sim_faults *sim_faults_new(void);
void sim_faults_free(sim_faults *f);
/* Drop every fault (ids keep counting up); returns how many were dropped. */
size_t sim_faults_clear(sim_faults *f);
/* Validate and add a fault. On success returns 0 and *created is a new reference (the fault as
 * listed, with its id); on a bad spec returns -1 with a message in err. */
int sim_faults_add(sim_faults *f, const json_t *spec, json_t **created, char *err, size_t cap);
/* Hand the first fault matching the request to it (consuming one of its count). Returns true and
 * fills out when one matched; false with out->kind = SIM_FAULT_NONE otherwise. */
bool sim_faults_take(sim_faults *f, const char *method, const char *path, sim_fault *out);
/* Remove one fault by id; returns true when it existed. */
bool sim_faults_remove(sim_faults *f, const char *id);
/* {"faults": [ {id, route, fault, remaining, ...fields}, ... ]}: a new reference. */
json_t *sim_faults_list(const sim_faults *f);

/* "none", "status", "retry_after", "delay", "reset_before", "reset_after", "truncate", "crash" */
const char *sim_fault_name(sim_fault_kind kind);

#endif
