/* bench_common.c - clock, quantiles and run summaries for the benchmark programs. */
#include "bench_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t bench_cpu_ns(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void bench_sort_u64(uint64_t *v, size_t n)
{
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_u64);
}

uint64_t bench_quantile(const uint64_t *sorted, size_t n, double q)
{
    if (n == 0)
        return 0;
    /* nearest rank: ceil(q * n), computed in integers where possible to avoid 0.99 * 100 =
     * 98.99999 style surprises */
    double r = q * (double)n;
    size_t rank = (size_t)r;
    if ((double)rank < r - 1e-9)
        rank++;
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

void bench_series_add(bench_series *s, double v)
{
    if (s->n < BENCH_MAX_RUNS)
        s->v[s->n++] = v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_series_median(const bench_series *s)
{
    if (s->n == 0)
        return 0;
    double v[BENCH_MAX_RUNS];
    for (size_t i = 0; i < s->n; i++)
        v[i] = s->v[i];
    qsort(v, s->n, sizeof *v, cmp_double);
    return s->n % 2 ? v[s->n / 2] : (v[s->n / 2 - 1] + v[s->n / 2]) / 2;
}

double bench_series_min(const bench_series *s)
{
    double m = s->n ? s->v[0] : 0;
    for (size_t i = 1; i < s->n; i++)
        if (s->v[i] < m)
            m = s->v[i];
    return m;
}

double bench_series_max(const bench_series *s)
{
    double m = s->n ? s->v[0] : 0;
    for (size_t i = 1; i < s->n; i++)
        if (s->v[i] > m)
            m = s->v[i];
    return m;
}

json_t *bench_series_json(const bench_series *s)
{
    json_t *runs = json_array();
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(runs, json_real(s->v[i]));
    return json_pack("{s:f, s:f, s:f, s:o}", "median", bench_series_median(s), "min",
                     bench_series_min(s), "max", bench_series_max(s), "runs", runs);
}

double bench_arg_double(const char *opt, const char *val)
{
    char *end;
    errno = 0;
    double d = val ? strtod(val, &end) : 0;
    if (!val || errno || end == val || *end || d < 0) {
        fprintf(stderr, "%s needs a number >= 0 (got %s)\n", opt, val ? val : "nothing");
        exit(2);
    }
    return d;
}

long bench_arg_long(const char *opt, const char *val)
{
    char *end;
    errno = 0;
    long l = val ? strtol(val, &end, 10) : 0;
    if (!val || errno || end == val || *end || l < 0) {
        fprintf(stderr, "%s needs a whole number >= 0 (got %s)\n", opt, val ? val : "nothing");
        exit(2);
    }
    return l;
}

void bench_print_json(json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    printf("%s\n", text ? text : "null");
    fflush(stdout);
    free(text);
    json_decref(obj);
}
