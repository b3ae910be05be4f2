/*
 * metrics.h - the daemon's metrics in Prometheus form: counters, gauges and histograms with
 * labels, updated from any thread, rendered as the text exposition format (version 0.0.4) for
 * GET /metrics, and summarised (quantiles from histogram buckets) for aioctl stats.
 *
 * A family is registered once (name, help, type, label names, and for histograms the bucket
 * upper bounds in ascending order); each distinct label-value tuple is a series created on
 * first use. Updates are lock-free on the hot path once a series exists (atomics; a family's
 * mutex only guards creating a series). Names and label names must match Prometheus's rules
 * ([a-zA-Z_:][a-zA-Z0-9_:]*, labels without the colon); counters end in _total, units are base
 * units (seconds, bytes) and appear in the name, as promtool's lint wants. Label values are
 * escaped when rendered (backslash, double quote, newline).
 *
 * Limits: at most 8 labels per family, and at most METRICS_MAX_SERIES series per family (later
 * new label tuples are counted in the family's overflow and dropped, so a hostile label value
 * cannot grow memory without bound).
 *
 * Added by the metrics implementation (backwards compatible):
 *   - a label value is cut to its first METRICS_MAX_LABEL_VALUE bytes (before a UTF-8 sequence
 *     that the cut would split), and invalid UTF-8 is rendered as U+FFFD; NULL reads as "";
 *   - register also refuses (AR_E_INVALID): a missing or empty help text; a counter whose name
 *     does not end in _total, or another type whose name does; label names starting with "__",
 *     given twice, or "le" on a histogram; buckets on a counter or gauge; more than 256 buckets;
 *     a name whose samples would clash with another family's (a histogram h owns h_bucket,
 *     h_sum, h_count); and the name aiorun_metrics_series_dropped_total, which the registry
 *     renders itself, after every family, with one series per family that has dropped label
 *     tuples ({family="name"}), only once some family has;
 *   - a family without labels has its single series from registration on (it renders 0);
 *   - metrics_overflow() reads a family's overflow count.
 * NaN is ignored by metrics_add and metrics_observe (it would stick forever), not by
 * metrics_set. metrics_render and metrics_summary may run concurrently with updates; they see
 * each value atomically, but a histogram's _sum may be an update ahead of or behind its buckets.
 * metrics_free must not run concurrently with anything else on the registry.
 */
#ifndef METRICS_H
#define METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"

#define METRICS_MAX_LABELS 8
#define METRICS_MAX_SERIES 4096
#define METRICS_MAX_LABEL_VALUE 256 /* bytes; longer values are cut (see above) */

typedef struct metrics metrics;
typedef struct metrics_family metrics_family;

typedef enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

/* *out owned by the caller (metrics_free). */
int metrics_new(metrics **out);
void metrics_free(metrics *m);

/* Register a family. buckets/n_buckets: histograms only (ascending, finite; +Inf is implied).
 * A bad name, a duplicate, too many labels or unsorted buckets is AR_E_INVALID. The family is
 * owned by m and lives as long as it. */
int metrics_register(metrics *m, const char *name, const char *help, metrics_type type,
                     const char *const *label_names, size_t n_labels, const double *buckets,
                     size_t n_buckets, metrics_family **out, ar_error *err);

/* Update the series with these label values (n_labels of them, as registered). Thread-safe.
 * A counter only goes up (a negative v is ignored). */
void metrics_add(metrics_family *f, const char *const *label_values, double v);   /* counter, gauge */
/* A gauge; or a counter that mirrors a count kept elsewhere: raised to v, never lowered. */
void metrics_set(metrics_family *f, const char *const *label_values, double v);
void metrics_observe(metrics_family *f, const char *const *label_values, double v); /* histogram */

/* How many new label tuples f has dropped because it was full. Thread-safe. */
uint64_t metrics_overflow(const metrics_family *f);

/* Standard latency buckets in seconds: 100 us .. 60 s, roughly x2.5 apart. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_n_buckets;

/* The exposition text (malloc'd, NUL-terminated; the caller frees it): every family in
 * registration order, "# HELP", "# TYPE", then its series sorted by label values. */
char *metrics_render(metrics *m);

/* A histogram series summarised: count, sum, and the p50/p90/p99 estimated as Prometheus's
 * histogram_quantile does (linear interpolation inside the bucket). *out: a new JSON array of
 * {"labels": {name: value}, "count", "sum", "p50", "p90", "p99"} for every series of family
 * name; AR_E_NOTFOUND for an unknown family. Also for counters and gauges: {"labels", "value"}. */
int metrics_summary(metrics *m, const char *name, json_t **out, ar_error *err);

#endif
