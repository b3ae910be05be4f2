/* flow.c - token bucket, circuit breaker and priority heap (see flow.h). */
#include "flow.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ar.h"

/* ---- token bucket ---------------------------------------------------------------------------- */

void flow_bucket_init(flow_bucket *b, double rate, int burst, int64_t now_ms)
{
    b->rate = rate;
    b->burst = burst > 0 ? burst : 1;
    b->tokens = b->burst;
    b->last_ms = now_ms;
}

static void refill(flow_bucket *b, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * b->rate / 1000.0;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last_ms = now_ms;
    }
}

double flow_bucket_level(flow_bucket *b, int64_t now_ms)
{
    if (b->rate <= 0)
        return b->burst;
    refill(b, now_ms);
    return b->tokens;
}

int flow_bucket_take(flow_bucket *b, int64_t now_ms)
{
    if (b->rate <= 0)
        return 1;
    refill(b, now_ms);
    if (b->tokens < 1.0)
        return 0;
    b->tokens -= 1.0;
    return 1;
}

int64_t flow_bucket_wait_ms(flow_bucket *b, double need, int64_t now_ms)
{
    if (b->rate <= 0)
        return 0;
    refill(b, now_ms);
    if (need > b->burst)
        need = b->burst;
    if (b->tokens >= need)
        return 0;
    return (int64_t)ceil((need - b->tokens) * 1000.0 / b->rate);
}

/* ---- circuit breaker -------------------------------------------------------------------------- */

static const char *const class_slots[FLOW_CLASS_SLOTS] = {"retryable", "timeout", "plugin_crashed", "other"};

static int class_slot(const char *cls)
{
    for (int i = 0; i < FLOW_CLASS_SLOTS - 1; i++)
        if (cls && strcmp(cls, class_slots[i]) == 0)
            return i;
    return FLOW_CLASS_SLOTS - 1;
}

int flow_breaker_init(flow_breaker *b, const config_breaker *cfg, int64_t now_ms)
{
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    b->ring = calloc((size_t)cfg->window, 1);
    if (!b->ring)
        return AR_E_NOMEM;
    b->since_ms = now_ms;
    return AR_OK;
}

void flow_breaker_fini(flow_breaker *b)
{
    free(b->ring);
    b->ring = NULL;
}

static void reset_window(flow_breaker *b)
{
    memset(b->ring, 0, (size_t)b->cfg.window);
    b->ring_len = b->ring_pos = b->failures = b->consecutive = 0;
}

static void enter(flow_breaker *b, breaker_state s, int64_t now_ms)
{
    b->state = s;
    b->since_ms = now_ms;
    b->trials_started = b->trials_ok = 0;
    if (s == BREAKER_OPEN)
        b->open_until_ms = now_ms + (int64_t)b->cfg.open_s * 1000;
    if (s == BREAKER_CLOSED) {
        reset_window(b);
        b->reason[0] = '\0';
        memset(b->opened_by, 0, sizeof b->opened_by);
    }
}

int flow_breaker_allow(flow_breaker *b, int64_t now_ms, int *changed)
{
    *changed = 0;
    if (b->state == BREAKER_OPEN && now_ms >= b->open_until_ms) {
        enter(b, BREAKER_HALF_OPEN, now_ms);
        *changed = 1;
    }
    switch (b->state) {
    case BREAKER_CLOSED:
        return 1;
    case BREAKER_OPEN:
        return 0;
    case BREAKER_HALF_OPEN:
        if (b->trials_started >= b->cfg.half_open_calls)
            return 0;
        b->trials_started++;
        return 1;
    }
    return 0;
}

static void open_now(flow_breaker *b, const char *why, int64_t now_ms)
{
    snprintf(b->reason, sizeof b->reason, "%s", why);
    enter(b, BREAKER_OPEN, now_ms);
}

void flow_breaker_record(flow_breaker *b, int failed, const char *cls, int64_t now_ms, int *changed)
{
    *changed = 0;
    if (b->state == BREAKER_OPEN)
        return; /* a call that started before it opened: no news */
    if (b->state == BREAKER_HALF_OPEN) {
        if (failed) {
            memset(b->opened_by, 0, sizeof b->opened_by);
            b->opened_by[class_slot(cls)]++;
            char why[160];
            snprintf(why, sizeof why, "a trial call failed (%s)", cls ? cls : "failure");
            open_now(b, why, now_ms);
            *changed = 1;
        } else if (++b->trials_ok >= b->cfg.half_open_calls) {
            enter(b, BREAKER_CLOSED, now_ms);
            *changed = 1;
        }
        return;
    }
    /* CLOSED: slide the window. A failure is stored as 1 + its class slot, so the outcome that
     * slides out takes its class count with it and opened_by always describes the window. */
    if (b->ring_len == b->cfg.window) {
        unsigned char out = b->ring[b->ring_pos];
        if (out) {
            b->failures--;
            b->opened_by[out - 1]--;
        }
    } else {
        b->ring_len++;
    }
    int slot = class_slot(cls);
    b->ring[b->ring_pos] = failed ? (unsigned char)(1 + slot) : 0;
    b->ring_pos = (b->ring_pos + 1) % b->cfg.window;
    b->failures += failed ? 1 : 0;
    b->consecutive = failed ? b->consecutive + 1 : 0;
    if (failed)
        b->opened_by[slot]++;
    char why[200];
    if (failed && b->cfg.consecutive > 0 && b->consecutive >= b->cfg.consecutive) {
        snprintf(why, sizeof why, "%d failures in a row (last: %s)", b->consecutive, cls ? cls : "failure");
        open_now(b, why, now_ms);
        *changed = 1;
    } else if (failed && b->ring_len >= b->cfg.min_calls &&
               (double)b->failures / b->ring_len >= b->cfg.failure_ratio) {
        snprintf(why, sizeof why, "%d of the last %d calls failed (threshold %.0f%%)", b->failures, b->ring_len,
                 b->cfg.failure_ratio * 100);
        open_now(b, why, now_ms);
        *changed = 1;
    }
}

const char *flow_breaker_state_name(breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED: return "closed";
    case BREAKER_OPEN: return "open";
    case BREAKER_HALF_OPEN: return "half_open";
    }
    return "unknown";
}

json_t *flow_breaker_view(const flow_breaker *b)
{
    json_t *by = json_object();
    for (int i = 0; i < FLOW_CLASS_SLOTS; i++)
        if (b->state != BREAKER_CLOSED && b->opened_by[i])
            json_object_set_new(by, class_slots[i], json_integer(b->opened_by[i]));
    return json_pack("{s:s, s:I, s:s, s:o, s:o, s:i, s:i}", "state", flow_breaker_state_name(b->state),
                     "since_ms", (json_int_t)b->since_ms, "reason", b->reason, "opened_by", by,
                     "next_trial_ms", b->state == BREAKER_OPEN ? json_integer(b->open_until_ms) : json_null(),
                     "window_calls", b->ring_len, "window_failures", b->failures);
}

/* ---- priority heap ---------------------------------------------------------------------------- */

void flow_heap_init(flow_heap *h)
{
    memset(h, 0, sizeof *h);
}

void flow_heap_fini(flow_heap *h)
{
    free(h->items);
    free(h->scores);
    memset(h, 0, sizeof *h);
}

static void swap(flow_heap *h, size_t a, size_t b)
{
    void *it = h->items[a];
    int64_t sc = h->scores[a];
    h->items[a] = h->items[b];
    h->scores[a] = h->scores[b];
    h->items[b] = it;
    h->scores[b] = sc;
}

static void sift_up(flow_heap *h, size_t i)
{
    while (i > 0 && h->scores[i] < h->scores[(i - 1) / 2]) {
        swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void sift_down(flow_heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->scores[l] < h->scores[m])
            m = l;
        if (r < h->n && h->scores[r] < h->scores[m])
            m = r;
        if (m == i)
            return;
        swap(h, i, m);
        i = m;
    }
}

int flow_heap_push(flow_heap *h, void *item, int64_t score)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        void **items = realloc(h->items, cap * sizeof *items);
        if (!items)
            return AR_E_NOMEM;
        h->items = items;
        int64_t *scores = realloc(h->scores, cap * sizeof *scores);
        if (!scores)
            return AR_E_NOMEM;
        h->scores = scores;
        h->cap = cap;
    }
    h->items[h->n] = item;
    h->scores[h->n] = score;
    sift_up(h, h->n++);
    return AR_OK;
}

void *flow_heap_peek(const flow_heap *h, int64_t *score)
{
    if (!h->n)
        return NULL;
    if (score)
        *score = h->scores[0];
    return h->items[0];
}

static void remove_at(flow_heap *h, size_t i)
{
    h->n--;
    if (i == h->n)
        return;
    h->items[i] = h->items[h->n];
    h->scores[i] = h->scores[h->n];
    sift_down(h, i);
    sift_up(h, i);
}

void *flow_heap_pop(flow_heap *h)
{
    if (!h->n)
        return NULL;
    void *top = h->items[0];
    remove_at(h, 0);
    return top;
}

int flow_heap_remove(flow_heap *h, void *item)
{
    for (size_t i = 0; i < h->n; i++) {
        if (h->items[i] == item) {
            remove_at(h, i);
            return AR_OK;
        }
    }
    return AR_E_NOTFOUND;
}
