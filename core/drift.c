/*
 * drift.c - drift detection over two sliding windows per connector action (see drift.h).
 */
#include "drift.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sample {
    unsigned char error;
    float confidence;            /* < 0: none */
} sample;

/* A window: a ring of samples with running sums, so every update is O(1). */
typedef struct window {
    sample *ring;
    int cap, len, head;          /* head: the oldest sample */
    int errors;
    double conf_sum;
    int conf_n;
} window;

typedef struct series {
    char connector[64];
    char action[64];
    window recent, baseline;
    int64_t detected_at_ms;      /* 0: never */
    char metric[16];
} series;

struct drift {
    pthread_mutex_t mu;
    drift_opts o;
    series *items;
    size_t n, cap;
};

static int window_init(window *w, int cap)
{
    memset(w, 0, sizeof *w);
    w->cap = cap;
    w->ring = calloc((size_t)cap, sizeof *w->ring);
    return w->ring ? 0 : -1;
}

static void window_clear(window *w)
{
    w->len = w->head = w->errors = w->conf_n = 0;
    w->conf_sum = 0;
}

static void window_count(window *w, sample s, int sign)
{
    w->errors += sign * s.error;
    if (s.confidence >= 0) {
        w->conf_sum += sign * (double)s.confidence;
        w->conf_n += sign;
    }
}

/* Add s; when full, the oldest sample falls out into *evicted (returns 1). */
static int window_push(window *w, sample s, sample *evicted)
{
    int out = 0;
    if (w->len == w->cap) {
        *evicted = w->ring[w->head];
        window_count(w, *evicted, -1);
        w->head = (w->head + 1) % w->cap;
        w->len--;
        out = 1;
    }
    w->ring[(w->head + w->len) % w->cap] = s;
    w->len++;
    window_count(w, s, +1);
    return out;
}

static double error_rate(const window *w)
{
    return w->len ? (double)w->errors / w->len : 0;
}

static double mean_confidence(const window *w)
{
    return w->conf_n ? w->conf_sum / w->conf_n : -1;
}

int drift_new(const drift_opts *opts, drift **out)
{
    drift *d = calloc(1, sizeof *d);
    if (!d)
        return AR_E_NOMEM;
    d->o = opts ? *opts : (drift_opts){0};
    if (d->o.recent <= 0)
        d->o.recent = 50;
    if (d->o.baseline <= 0)
        d->o.baseline = 200;
    if (d->o.min_samples <= 0)
        d->o.min_samples = 20;
    if (d->o.error_rate_increase <= 0)
        d->o.error_rate_increase = 0.2;
    if (d->o.confidence_drop <= 0)
        d->o.confidence_drop = 0.15;
    pthread_mutex_init(&d->mu, NULL);
    *out = d;
    return AR_OK;
}

void drift_free(drift *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->items[i].recent.ring);
        free(d->items[i].baseline.ring);
    }
    free(d->items);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

static series *find_or_add(drift *d, const char *connector, const char *action)
{
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->items[i].connector, connector) && !strcmp(d->items[i].action, action))
            return &d->items[i];
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        series *grown = realloc(d->items, cap * sizeof *grown);
        if (!grown)
            return NULL;
        d->items = grown;
        d->cap = cap;
    }
    series *s = &d->items[d->n];
    memset(s, 0, sizeof *s);
    snprintf(s->connector, sizeof s->connector, "%s", connector);
    snprintf(s->action, sizeof s->action, "%s", action);
    if (window_init(&s->recent, d->o.recent) || window_init(&s->baseline, d->o.baseline)) {
        free(s->recent.ring);
        free(s->baseline.ring);
        return NULL;
    }
    d->n++;
    return s;
}

static json_t *detection(const series *s, const char *metric, double recent, double baseline)
{
    return json_pack("{s:s, s:s, s:s, s:f, s:f, s:i, s:i}", "connector", s->connector, "action", s->action,
                     "metric", metric, "recent", recent, "baseline", baseline, "recent_samples", s->recent.len,
                     "baseline_samples", s->baseline.len);
}

json_t *drift_observe(drift *d, const char *connector, const char *action, int error, double confidence)
{
    if (!d || !connector || !action)
        return NULL;
    pthread_mutex_lock(&d->mu);
    series *s = find_or_add(d, connector, action);
    json_t *found = NULL;
    if (s) {
        sample in = {.error = error ? 1 : 0, .confidence = confidence >= 0 && confidence <= 1 ? (float)confidence : -1};
        sample old;
        if (window_push(&s->recent, in, &old)) {
            sample dropped;
            window_push(&s->baseline, old, &dropped);
        }
        const window *r = &s->recent, *b = &s->baseline;
        if (r->len >= d->o.min_samples && b->len >= d->o.min_samples) {
            double re = error_rate(r), be = error_rate(b);
            double rc = mean_confidence(r), bc = mean_confidence(b);
            if (re - be >= d->o.error_rate_increase)
                found = detection(s, "error_rate", re, be);
            else if (r->conf_n >= d->o.min_samples && b->conf_n >= d->o.min_samples && bc - rc >= d->o.confidence_drop)
                found = detection(s, "confidence", rc, bc);
        }
        if (found) {
            s->detected_at_ms = ar_now_ms();
            snprintf(s->metric, sizeof s->metric, "%s", json_string_value(json_object_get(found, "metric")));
            /* A new baseline from here on: the same change is not reported again. */
            window_clear(&s->recent);
            window_clear(&s->baseline);
        }
    }
    pthread_mutex_unlock(&d->mu);
    return found;
}

static json_t *number_or_null(double v, int have)
{
    return have ? json_real(v) : json_null();
}

json_t *drift_view(drift *d)
{
    json_t *out = json_array();
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->n; i++) {
        const series *s = &d->items[i];
        json_array_append_new(out, json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:i, s:i, s:o, s:o}",
            "connector", s->connector, "action", s->action,
            "recent_error_rate", number_or_null(error_rate(&s->recent), s->recent.len > 0),
            "baseline_error_rate", number_or_null(error_rate(&s->baseline), s->baseline.len > 0),
            "recent_confidence", number_or_null(mean_confidence(&s->recent), s->recent.conf_n > 0),
            "baseline_confidence", number_or_null(mean_confidence(&s->baseline), s->baseline.conf_n > 0),
            "recent_samples", s->recent.len, "baseline_samples", s->baseline.len,
            "detected_at_ms", s->detected_at_ms ? json_integer(s->detected_at_ms) : json_null(),
            "metric", s->detected_at_ms ? json_string(s->metric) : json_null()));
    }
    pthread_mutex_unlock(&d->mu);
    return out;
}
