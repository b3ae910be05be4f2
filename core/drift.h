/*
 * drift.h - drift detection: per connector action, is the recent behaviour unlike the usual?
 *
 * For each connector action the detector keeps the outcomes of its last `recent` finished
 * actions and, before those, a baseline of the `baseline` ones before them (ring buffers in
 * memory; they start empty at each start of the daemon). Two measures:
 *   - error rate: the share of actions that ended FAILED or UNKNOWN_OUTCOME (not denied,
 *     rejected or cancelled ones: those are decisions, not errors);
 *   - proposer confidence: the mean of proposer.confidence of the actions that carried one.
 * Drift is when, with at least min_samples in both windows, the recent error rate exceeds the
 * baseline's by error_rate_increase or more, or the recent mean confidence is below the
 * baseline's by confidence_drop or more. A detection is reported once; then the action's
 * windows start again empty (a new baseline), so it is not reported again for the same change.
 *
 * Thread-safe (one mutex); drift_observe is cheap (O(1)).
 */
#ifndef DRIFT_H
#define DRIFT_H

#include <stddef.h>
#include <jansson.h>

#include "ar.h"

typedef struct drift_opts {
    int recent;                  /* 0: default 50 */
    int baseline;                /* 0: default 200 */
    int min_samples;             /* in each window; 0: default 20 */
    double error_rate_increase;  /* 0: default 0.2 (20 points) */
    double confidence_drop;      /* 0: default 0.15 */
} drift_opts;

typedef struct drift drift;

/* *out owned by the caller (drift_free). */
int drift_new(const drift_opts *opts, drift **out);
void drift_free(drift *d);

/* One finished action. error: it ended FAILED or UNKNOWN_OUTCOME; confidence: the proposer's,
 * or a negative value when it gave none. Returns NULL, or a detection (a new object the caller
 * owns): {"connector", "action", "metric": "error_rate"|"confidence", "recent", "baseline",
 * "recent_samples", "baseline_samples"}. */
json_t *drift_observe(drift *d, const char *connector, const char *action, int error, double confidence);

/* Every tracked connector action with its windows and the last detection (if any): a new array
 * of {"connector", "action", "recent_error_rate", "baseline_error_rate", "recent_confidence",
 * "baseline_confidence", "recent_samples", "baseline_samples", "detected_at_ms"|null, "metric"}. */
json_t *drift_view(drift *d);

#endif
