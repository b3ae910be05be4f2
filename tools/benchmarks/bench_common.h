/*
 * bench_common.h - what the benchmark programs of tools/bench share: a monotonic clock, exact
 * quantiles from recorded samples, and the summary of repeated runs (median, min, max and every
 * run's value) as JSON.
 *
 * Every program prints one JSON object on stdout (its figures) and a human summary on stderr;
 * tools/bench collects the objects into its results file. Figures are reported, never judged
 * here: no program fails because a figure is poor.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define BENCH_MAX_RUNS 64

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t bench_now_ns(void);
/* CPU time (user + system) of the whole process so far, in nanoseconds. */
int64_t bench_cpu_ns(void);

/* Sort samples ascending (in place). */
void bench_sort_u64(uint64_t *v, size_t n);
/* The exact q-quantile (0 < q <= 1) of n sorted samples by the nearest-rank rule: the smallest
 * sample such that at least q * n samples are <= it. 0 when n is 0. */
uint64_t bench_quantile(const uint64_t *sorted, size_t n, double q);

/* One figure over repeated runs. */
typedef struct bench_series {
    double v[BENCH_MAX_RUNS];
    size_t n;
} bench_series;
/* Append a run's value (ignored past BENCH_MAX_RUNS). */
void bench_series_add(bench_series *s, double v);
/* Median (the mean of the two middle values for an even count), min and max; 0 when empty. */
double bench_series_median(const bench_series *s);
double bench_series_min(const bench_series *s);
double bench_series_max(const bench_series *s);
/* {"median": m, "min": a, "max": b, "runs": [...]}: a new reference owned by the caller. */
json_t *bench_series_json(const bench_series *s);

/* Parse a positive number of seconds ("0.5") or a count; exit(2) with a message naming opt
 * when it is not one. */
double bench_arg_double(const char *opt, const char *val);
long bench_arg_long(const char *opt, const char *val);

/* Print obj compactly on stdout with a newline, then release it. */
void bench_print_json(json_t *obj);

#endif
