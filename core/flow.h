/*
 * flow.h - the pieces of flow control, as plain data structures the scheduler drives: a token
 * bucket (rate limits), a circuit breaker, and a priority queue with aging.
 *
 * None of them reads a clock or takes a lock: the caller passes the time (ms) and owns the
 * threading (the scheduler's loop thread). That keeps them deterministic under test.
 */
#ifndef FLOW_H
#define FLOW_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "config.h"

/* ---- token bucket ---------------------------------------------------------------------------- */

typedef struct flow_bucket {
    double rate;          /* tokens per second; 0: unlimited */
    double burst;         /* capacity */
    double tokens;
    int64_t last_ms;
} flow_bucket;

/* A full bucket. rate 0 makes every take succeed. */
void flow_bucket_init(flow_bucket *b, double rate, int burst, int64_t now_ms);
/* Tokens available now (refilled up to burst). */
double flow_bucket_level(flow_bucket *b, int64_t now_ms);
/* Take one token: 1 when taken, 0 when the bucket holds less than one. */
int flow_bucket_take(flow_bucket *b, int64_t now_ms);
/* Milliseconds until the bucket holds `need` tokens (0 when it does now). */
int64_t flow_bucket_wait_ms(flow_bucket *b, double need, int64_t now_ms);

/* ---- circuit breaker -------------------------------------------------------------------------- */

typedef enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN } breaker_state;

#define FLOW_CLASS_SLOTS 4   /* retryable, timeout, plugin_crashed, other */

typedef struct flow_breaker {
    config_breaker cfg;
    breaker_state state;
    unsigned char *ring;     /* the last `window` outcomes: 0 success, 1 + class slot failure */
    int ring_len, ring_pos, failures;
    int consecutive;
    int64_t since_ms;        /* when the current state began */
    int64_t open_until_ms;   /* OPEN: when trials may start */
    int trials_started, trials_ok;
    int opened_by[FLOW_CLASS_SLOTS]; /* failures by class in the window that opened it */
    char reason[256];        /* why it opened */
} flow_breaker;

/* AR_OK or AR_E_NOMEM. */
int flow_breaker_init(flow_breaker *b, const config_breaker *cfg, int64_t now_ms);
void flow_breaker_fini(flow_breaker *b);
/* May a call start now? Moves OPEN to HALF_OPEN once open_s has passed (then *changed = 1)
 * and counts the half-open trials it lets through. */
int flow_breaker_allow(flow_breaker *b, int64_t now_ms, int *changed);
/* A finished call. failed: its class says the API is unhealthy (retryable, timeout,
 * plugin_crashed); cls names the class for the record. *changed = 1 on a transition. */
void flow_breaker_record(flow_breaker *b, int failed, const char *cls, int64_t now_ms, int *changed);
const char *flow_breaker_state_name(breaker_state s);
/* {"state", "since_ms", "reason", "opened_by": {class: n}, "next_trial_ms"} (new reference). */
json_t *flow_breaker_view(const flow_breaker *b);

/* ---- priority queue -------------------------------------------------------------------------- */

/* A binary min-heap of items by score. The scheduler scores an action
 * created_ms - priority * aging_ms: higher priority first, older first among equals, and every
 * aging_ms of waiting is worth one priority level, so low priority work cannot starve. */
typedef struct flow_heap {
    void **items;
    int64_t *scores;
    size_t n, cap;
} flow_heap;

void flow_heap_init(flow_heap *h);
void flow_heap_fini(flow_heap *h);
int flow_heap_push(flow_heap *h, void *item, int64_t score);   /* AR_OK or AR_E_NOMEM */
void *flow_heap_peek(const flow_heap *h, int64_t *score);      /* NULL when empty */
void *flow_heap_pop(flow_heap *h);
int flow_heap_remove(flow_heap *h, void *item);                /* AR_OK or AR_E_NOTFOUND */

#endif
