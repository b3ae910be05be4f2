/* test_metrics.c - the metrics registry: registration rules, the exact exposition text (golden),
 * label and help escaping, number formatting as Prometheus's Go client writes it, counter,
 * gauge and histogram semantics, quantile estimates against known distributions, exact totals
 * under concurrent updates, the per-family series cap, promtool's verdict on a daemon-like
 * registry, and (measured, not asserted) the cost of an update. */
#include "test_main.h"

#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static metrics *new_registry(void)
{
    metrics *m = NULL;
    assert_int_equal(metrics_new(&m), AR_OK);
    assert_non_null(m);
    return m;
}

static metrics_family *reg(metrics *m, const char *name, metrics_type type,
                           const char *const *labels, size_t n_labels, const double *buckets,
                           size_t n_buckets)
{
    metrics_family *f = NULL;
    ar_error err;
    int rc = metrics_register(m, name, "Help text.", type, labels, n_labels, buckets, n_buckets,
                              &f, &err);
    if (rc != AR_OK)
        fail_msg("register %s: %d %s: %s", name, rc, err.code, err.message);
    assert_non_null(f);
    return f;
}

/* Registration that must be refused as invalid. */
static void assert_refused(metrics *m, const char *name, const char *help, metrics_type type,
                           const char *const *labels, size_t n_labels, const double *buckets,
                           size_t n_buckets)
{
    metrics_family *f = (metrics_family *)&f; /* must be reset to NULL */
    ar_error err;
    ar_error_clear(&err);
    int rc = metrics_register(m, name, help, type, labels, n_labels, buckets, n_buckets, &f,
                              &err);
    if (rc != AR_E_INVALID)
        fail_msg("register %s: expected AR_E_INVALID, got %d", name ? name : "(null)", rc);
    assert_null(f);
    assert_string_equal(err.code, "metrics_invalid");
    assert_true(strlen(err.message) > 0);
}

/* The summary of family name (must exist); the caller decrefs it. */
static json_t *summary(metrics *m, const char *name)
{
    json_t *out = NULL;
    ar_error err;
    int rc = metrics_summary(m, name, &out, &err);
    if (rc != AR_OK)
        fail_msg("summary %s: %d %s", name, rc, err.message);
    assert_true(json_is_array(out));
    return out;
}

/* The summary entry of a family whose first label has value v0 (NULL: the only entry). */
static json_t *entry(json_t *arr, const char *label, const char *v0)
{
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
    {
        if (!v0)
            return e;
        const char *v = json_string_value(json_object_get(json_object_get(e, "labels"), label));
        if (v && strcmp(v, v0) == 0)
            return e;
    }
    fail_msg("no series with %s=%s", label ? label : "(none)", v0 ? v0 : "(any)");
    return NULL;
}

static double num(json_t *e, const char *key)
{
    json_t *v = json_object_get(e, key);
    if (!json_is_number(v))
        fail_msg("%s is not a number", key);
    return json_number_value(v);
}

/* The value of the gauge family name's only series, as rendered. */
static char *render_gauge(metrics *m, metrics_family *f, const char *name, double v)
{
    metrics_set(f, NULL, v);
    char *text = metrics_render(m);
    assert_non_null(text);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "\n%s ", name);
    char *p = strstr(text, prefix);
    assert_non_null(p);
    p += strlen(prefix);
    char *out = strndup(p, strcspn(p, "\n"));
    free(text);
    return out;
}

/* Deterministic pseudo-random numbers (xorshift64*), uniform in [0, 1). */
static double rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (double)((*s * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- registration ----------------------------------------------------------------------- */

static void test_register_rejects_bad_families(void **state)
{
    (void)state;
    metrics *m = new_registry();
    const char *one[] = {"connector"};
    const char *nine[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
    const double sorted[] = {0.1, 0.5, 1};
    const double unsorted[] = {0.1, 1, 0.5};
    const double equal[] = {0.1, 0.1};
    const double inf[] = {0.1, INFINITY};
    const double nan_b[] = {NAN};

    /* names */
    assert_refused(m, NULL, "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "", "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "1abc", "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "a-b", "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "a b", "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "caf\xc3\xa9", "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "x_total", "h", METRICS_GAUGE, NULL, 0, NULL, 0);     /* only counters */
    assert_refused(m, "x_seconds", "h", METRICS_COUNTER, NULL, 0, NULL, 0); /* needs _total */
    assert_refused(m, "aiorun_metrics_series_dropped_total", "h", METRICS_COUNTER, NULL, 0, NULL,
                   0);
    /* help, type */
    assert_refused(m, "x", NULL, METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "x", "", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "x", "h", (metrics_type)42, NULL, 0, NULL, 0);
    /* labels */
    assert_refused(m, "x", "h", METRICS_GAUGE, nine, 9, NULL, 0);
    assert_refused(m, "x", "h", METRICS_GAUGE, NULL, 1, NULL, 0);
    assert_refused(m, "x", "h", METRICS_GAUGE, (const char *[]){"a:b"}, 1, NULL, 0);
    assert_refused(m, "x", "h", METRICS_GAUGE, (const char *[]){"1a"}, 1, NULL, 0);
    assert_refused(m, "x", "h", METRICS_GAUGE, (const char *[]){""}, 1, NULL, 0);
    assert_refused(m, "x", "h", METRICS_GAUGE, (const char *[]){NULL}, 1, NULL, 0);
    assert_refused(m, "x", "h", METRICS_GAUGE, (const char *[]){"__name"}, 1, NULL, 0);
    assert_refused(m, "x", "h", METRICS_GAUGE, (const char *[]){"a", "a"}, 2, NULL, 0);
    assert_refused(m, "x_seconds", "h", METRICS_HISTOGRAM, (const char *[]){"le"}, 1, sorted, 3);
    /* buckets */
    assert_refused(m, "x_seconds", "h", METRICS_HISTOGRAM, NULL, 0, unsorted, 3);
    assert_refused(m, "x_seconds", "h", METRICS_HISTOGRAM, NULL, 0, equal, 2);
    assert_refused(m, "x_seconds", "h", METRICS_HISTOGRAM, NULL, 0, inf, 2);
    assert_refused(m, "x_seconds", "h", METRICS_HISTOGRAM, NULL, 0, nan_b, 1);
    assert_refused(m, "x_seconds", "h", METRICS_HISTOGRAM, NULL, 0, NULL, 3);
    assert_refused(m, "x", "h", METRICS_GAUGE, NULL, 0, sorted, 3);

    /* Nothing refused was registered: the same names are free, and then taken. */
    reg(m, "x_seconds", METRICS_HISTOGRAM, one, 1, sorted, 3);
    reg(m, "ns:x_total", METRICS_COUNTER, one, 1, NULL, 0); /* colons are allowed in names */
    reg(m, "edge_le", METRICS_HISTOGRAM, NULL, 0, NULL, 0);  /* only the +Inf bucket */
    assert_refused(m, "x_seconds", "other", METRICS_HISTOGRAM, one, 1, sorted, 3);
    assert_refused(m, "x_seconds", "other", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "ns:x_total", "other", METRICS_COUNTER, NULL, 0, NULL, 0);
    /* A histogram's samples own _bucket, _sum and _count, in both orders. */
    assert_refused(m, "x_seconds_count", "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "x_seconds_bucket", "h", METRICS_GAUGE, NULL, 0, NULL, 0);
    reg(m, "y_sum", METRICS_GAUGE, NULL, 0, NULL, 0);
    assert_refused(m, "y", "h", METRICS_HISTOGRAM, NULL, 0, sorted, 3);

    /* Summary of an unknown family. */
    json_t *out = (json_t *)&out;
    ar_error err;
    assert_int_equal(metrics_summary(m, "nope", &out, &err), AR_E_NOTFOUND);
    assert_null(out);
    metrics_free(m);
    metrics_free(NULL);
}

/* ---- exposition text -------------------------------------------------------------------- */

static const char golden[] =
    "# HELP aiorun_actions_total Actions by connector and final state.\n"
    "# TYPE aiorun_actions_total counter\n"
    "aiorun_actions_total{connector=\"mail\",state=\"failed\"} 1\n"
    "aiorun_actions_total{connector=\"shop\",state=\"failed\"} 2\n"
    "aiorun_actions_total{connector=\"shop\",state=\"succeeded\"} 3\n"
    "# HELP aiorun_queue_depth Actions waiting for a worker.\n"
    "# TYPE aiorun_queue_depth gauge\n"
    "aiorun_queue_depth 7\n"
    "# HELP aiorun_circuit_open Whether a connector's circuit is open.\n"
    "# TYPE aiorun_circuit_open gauge\n"
    "# HELP aiorun_stage_duration_seconds Time spent per stage.\n"
    "# TYPE aiorun_stage_duration_seconds histogram\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"decide\",le=\"0.0001\"} 1\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"decide\",le=\"0.25\"} 1\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"decide\",le=\"1\"} 1\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"decide\",le=\"2.5\"} 1\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"decide\",le=\"+Inf\"} 1\n"
    "aiorun_stage_duration_seconds_sum{stage=\"decide\"} 0.0001\n"
    "aiorun_stage_duration_seconds_count{stage=\"decide\"} 1\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"invoke\",le=\"0.0001\"} 0\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"invoke\",le=\"0.25\"} 1\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"invoke\",le=\"1\"} 2\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"invoke\",le=\"2.5\"} 3\n"
    "aiorun_stage_duration_seconds_bucket{stage=\"invoke\",le=\"+Inf\"} 4\n"
    "aiorun_stage_duration_seconds_sum{stage=\"invoke\"} 103.25\n"
    "aiorun_stage_duration_seconds_count{stage=\"invoke\"} 4\n"
    "# HELP aiorun_build_info Build information.\n"
    "# TYPE aiorun_build_info gauge\n"
    "aiorun_build_info 0\n";

static void test_render_golden(void **state)
{
    (void)state;
    metrics *m = new_registry();
    char *empty = metrics_render(m);
    assert_non_null(empty);
    assert_string_equal(empty, "");
    free(empty);

    ar_error err;
    metrics_family *actions = NULL, *queue = NULL, *circuit = NULL, *stage = NULL, *info = NULL;
    const char *cs[] = {"connector", "state"};
    assert_int_equal(metrics_register(m, "aiorun_actions_total",
                                      "Actions by connector and final state.", METRICS_COUNTER,
                                      cs, 2, NULL, 0, &actions, &err),
                     AR_OK);
    assert_int_equal(metrics_register(m, "aiorun_queue_depth", "Actions waiting for a worker.",
                                      METRICS_GAUGE, NULL, 0, NULL, 0, &queue, &err),
                     AR_OK);
    assert_int_equal(metrics_register(m, "aiorun_circuit_open",
                                      "Whether a connector's circuit is open.", METRICS_GAUGE,
                                      (const char *[]){"connector"}, 1, NULL, 0, &circuit, &err),
                     AR_OK);
    const double b[] = {0.0001, 0.25, 1, 2.5};
    assert_int_equal(metrics_register(m, "aiorun_stage_duration_seconds", "Time spent per stage.",
                                      METRICS_HISTOGRAM, (const char *[]){"stage"}, 1, b, 4,
                                      &stage, &err),
                     AR_OK);
    assert_int_equal(metrics_register(m, "aiorun_build_info", "Build information.",
                                      METRICS_GAUGE, NULL, 0, NULL, 0, &info, &err),
                     AR_OK);

    /* Created out of order: the output is sorted by label values. */
    metrics_add(actions, (const char *[]){"shop", "succeeded"}, 3);
    metrics_add(actions, (const char *[]){"shop", "failed"}, 2);
    metrics_add(actions, (const char *[]){"mail", "failed"}, 1);
    metrics_set(queue, NULL, 7);
    metrics_observe(stage, (const char *[]){"invoke"}, 0.25); /* on a bound: le is inclusive */
    metrics_observe(stage, (const char *[]){"invoke"}, 0.5);
    metrics_observe(stage, (const char *[]){"invoke"}, 2.5);
    metrics_observe(stage, (const char *[]){"invoke"}, 100);
    metrics_observe(stage, (const char *[]){"decide"}, 0.0001);

    char *text = metrics_render(m);
    assert_non_null(text);
    assert_string_equal(text, golden);
    free(text);
    metrics_free(m);
}

static void test_label_and_help_escaping(void **state)
{
    (void)state;
    metrics *m = new_registry();
    metrics_family *f = NULL;
    ar_error err;
    assert_int_equal(metrics_register(m, "esc_total", "A \\ backslash\nand a \"quote\".",
                                      METRICS_COUNTER, (const char *[]){"v"}, 1, NULL, 0, &f,
                                      &err),
                     AR_OK);
    metrics_add(f, (const char *[]){"a\\b\"c\nd"}, 1);
    metrics_add(f, (const char *[]){"bad\xff utf8 \xc3"}, 1);
    metrics_add(f, (const char *[]){"caf\xc3\xa9 \xe2\x82\xac"}, 1); /* valid: kept as is */
    metrics_add(f, (const char *[]){NULL}, 1);                      /* NULL reads as "" */
    metrics_add(f, (const char *[]){""}, 1);                        /* the same series */
    char *text = metrics_render(m);
    assert_non_null(text);
    const char *want =
        "# HELP esc_total A \\\\ backslash\\nand a \"quote\".\n"
        "# TYPE esc_total counter\n"
        "esc_total{v=\"\"} 2\n"
        "esc_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
        "esc_total{v=\"bad\xef\xbf\xbd utf8 \xef\xbf\xbd\"} 1\n"
        "esc_total{v=\"caf\xc3\xa9 \xe2\x82\xac\"} 1\n";
    assert_string_equal(text, want);
    free(text);

    /* The summary holds the raw (unescaped) values, as valid UTF-8. */
    json_t *s = summary(m, "esc_total");
    assert_int_equal(json_array_size(s), 4);
    json_t *e = entry(s, "v", "a\\b\"c\nd");
    assert_true(num(e, "value") == 1);
    entry(s, "v", "bad\xef\xbf\xbd utf8 \xef\xbf\xbd");
    json_decref(s);

    /* A long value is cut at METRICS_MAX_LABEL_VALUE bytes, not inside a UTF-8 sequence. */
    char longv[METRICS_MAX_LABEL_VALUE + 64];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    longv[METRICS_MAX_LABEL_VALUE - 1] = '\xc3'; /* an e-acute straddling the cut */
    longv[METRICS_MAX_LABEL_VALUE] = '\xa9';
    metrics_add(f, (const char *[]){longv}, 1);
    longv[METRICS_MAX_LABEL_VALUE + 10] = 'y'; /* differs only past the cut: same series */
    metrics_add(f, (const char *[]){longv}, 1);
    s = summary(m, "esc_total");
    assert_int_equal(json_array_size(s), 5);
    char cut[METRICS_MAX_LABEL_VALUE];
    memset(cut, 'x', METRICS_MAX_LABEL_VALUE - 1);
    cut[METRICS_MAX_LABEL_VALUE - 1] = '\0';
    e = entry(s, "v", cut);
    assert_true(num(e, "value") == 2);
    json_decref(s);
    metrics_free(m);
}

static void test_number_formatting(void **state)
{
    (void)state;
    metrics *m = new_registry();
    metrics_family *g = reg(m, "num", METRICS_GAUGE, NULL, 0, NULL, 0);
    static const struct {
        double v;
        const char *want;
    } cases[] = {
        {0, "0"},           {1, "1"},         {-1, "-1"},          {2.5, "2.5"},
        {0.0001, "0.0001"}, {0.00025, "0.00025"}, {1e-05, "1e-05"},  {123456, "123456"},
        {1e6, "1e+06"},     {1234567, "1.234567e+06"}, {0.1 + 0.2, "0.30000000000000004"},
        {-0.5, "-0.5"},     {1e21, "1e+21"},  {5e-324, "5e-324"},  {1.7976931348623157e308,
                                                                    "1.7976931348623157e+308"},
        {INFINITY, "+Inf"}, {-INFINITY, "-Inf"}, {NAN, "NaN"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = render_gauge(m, g, "num", cases[i].v);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: %.17g rendered as %s, want %s", i, cases[i].v, got,
                     cases[i].want);
        free(got);
    }

    /* The standard latency buckets, as "le" values. */
    assert_int_equal(metrics_latency_n_buckets, 18);
    metrics_family *h = reg(m, "lat_seconds", METRICS_HISTOGRAM, NULL, 0,
                            metrics_latency_buckets, metrics_latency_n_buckets);
    (void)h;
    char *text = metrics_render(m);
    assert_non_null(text);
    static const char *les[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
                                "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "0.5",
                                "1",      "2.5",     "5",      "10",    "30",     "60", "+Inf"};
    const char *p = text;
    for (size_t i = 0; i < sizeof les / sizeof les[0]; i++) {
        char line[96];
        snprintf(line, sizeof line, "lat_seconds_bucket{le=\"%s\"} 0\n", les[i]);
        const char *q = strstr(p, line);
        if (!q)
            fail_msg("missing (or out of order): %s", line);
        p = q + strlen(line);
    }
    free(text);
    metrics_free(m);
}

/* ---- semantics -------------------------------------------------------------------------- */

static void test_counter_never_goes_down(void **state)
{
    (void)state;
    metrics *m = new_registry();
    metrics_family *c = reg(m, "c_total", METRICS_COUNTER, (const char *[]){"k"}, 1, NULL, 0);
    const char *k[] = {"a"};
    metrics_add(c, k, 5);
    metrics_add(c, k, -3);
    metrics_add(c, k, NAN);
    metrics_set(c, k, 1);        /* a counter set lower stays where it is */
    metrics_observe(c, k, 1);    /* observe is for histograms */
    metrics_add(c, NULL, 1);     /* values missing: dropped */
    metrics_add(NULL, k, 1);     /* no family: nothing */
    metrics_add(c, k, 0.5);
    metrics_add(c, (const char *[]){"b"}, 0); /* creates the series at 0 */
    json_t *s = summary(m, "c_total");
    assert_int_equal(json_array_size(s), 2);
    assert_true(num(entry(s, "k", "a"), "value") == 5.5);
    assert_true(num(entry(s, "k", "b"), "value") == 0);
    json_decref(s);
    assert_int_equal(metrics_overflow(c), 0);
    metrics_free(m);
}

static void test_counter_set_mirrors_a_count(void **state)
{
    (void)state;
    metrics *m = new_registry();
    metrics_family *c = reg(m, "mirror_total", METRICS_COUNTER, NULL, 0, NULL, 0);
    metrics_set(c, NULL, 7);
    metrics_set(c, NULL, 12.5);
    metrics_set(c, NULL, 3); /* lower: ignored */
    metrics_set(c, NULL, NAN);
    json_t *s = summary(m, "mirror_total");
    assert_int_equal(json_array_size(s), 1);
    assert_true(num(json_array_get(s, 0), "value") == 12.5);
    json_decref(s);
    metrics_free(m);
}

static void test_gauge_set_and_add(void **state)
{
    (void)state;
    metrics *m = new_registry();
    metrics_family *g = reg(m, "g_bytes", METRICS_GAUGE, (const char *[]){"k"}, 1, NULL, 0);
    const char *k[] = {"a"};
    metrics_set(g, k, 10);
    metrics_add(g, k, -3.5);
    json_t *s = summary(m, "g_bytes");
    assert_true(num(entry(s, "k", "a"), "value") == 6.5);
    json_decref(s);
    metrics_set(g, k, 2);
    metrics_add(g, k, NAN); /* ignored */
    metrics_observe(g, k, 100);
    s = summary(m, "g_bytes");
    assert_true(num(entry(s, "k", "a"), "value") == 2);
    json_decref(s);
    metrics_set(g, k, -1);
    s = summary(m, "g_bytes");
    assert_true(num(entry(s, "k", "a"), "value") == -1);
    json_decref(s);
    /* A NaN gauge is rendered as NaN and summarised as null. */
    metrics_set(g, k, NAN);
    s = summary(m, "g_bytes");
    assert_true(json_is_null(json_object_get(entry(s, "k", "a"), "value")));
    json_decref(s);
    char *text = metrics_render(m);
    assert_non_null(strstr(text, "g_bytes{k=\"a\"} NaN\n"));
    free(text);
    metrics_free(m);
}

static void test_histogram_buckets_cumulative(void **state)
{
    (void)state;
    metrics *m = new_registry();
    const double b[] = {1, 2, 4};
    metrics_family *h = reg(m, "h_seconds", METRICS_HISTOGRAM, NULL, 0, b, 3);
    const double obs[] = {0, 0.5, 1, 1.5, 2, 3, 4, 4.5, 100, -1};
    double sum = 0;
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) {
        metrics_observe(h, NULL, obs[i]);
        sum += obs[i];
    }
    metrics_observe(h, NULL, NAN); /* ignored */
    metrics_add(h, NULL, 1);       /* not for histograms */
    metrics_set(h, NULL, 1);
    char *text = metrics_render(m);
    assert_non_null(text);
    /* <=1: 0, 0.5, 1, -1 -> 4; <=2: +1.5, 2 -> 6; <=4: +3, 4 -> 8; +Inf: +4.5, 100 -> 10 */
    char want[512];
    snprintf(want, sizeof want,
             "h_seconds_bucket{le=\"1\"} 4\n"
             "h_seconds_bucket{le=\"2\"} 6\n"
             "h_seconds_bucket{le=\"4\"} 8\n"
             "h_seconds_bucket{le=\"+Inf\"} 10\n"
             "h_seconds_sum %s\n"
             "h_seconds_count 10\n",
             "115.5");
    assert_true(sum == 115.5);
    assert_non_null(strstr(text, want));
    free(text);
    json_t *s = summary(m, "h_seconds");
    json_t *e = entry(s, NULL, NULL);
    assert_true(num(e, "count") == 10);
    assert_true(num(e, "sum") == 115.5);
    assert_true(json_is_object(json_object_get(e, "labels")));
    assert_int_equal(json_object_size(json_object_get(e, "labels")), 0);
    json_decref(s);
    metrics_free(m);
}

/* histogram_quantile's exact arithmetic on hand-computed cases. */
static void test_quantile_prometheus_semantics(void **state)
{
    (void)state;
    metrics *m = new_registry();
    const double b[] = {1, 2, 4};
    metrics_family *h = reg(m, "q_seconds", METRICS_HISTOGRAM, (const char *[]){"k"}, 1, b, 3);
    const char *a[] = {"a"}, *lo[] = {"low"}, *inf[] = {"inf"};
    /* a: cumulative 10, 40, 90, 100. */
    for (int i = 0; i < 10; i++)
        metrics_observe(h, a, 0.5);
    for (int i = 0; i < 30; i++)
        metrics_observe(h, a, 1.5);
    for (int i = 0; i < 50; i++)
        metrics_observe(h, a, 3);
    for (int i = 0; i < 10; i++)
        metrics_observe(h, a, 10);
    /* low: everything in the lowest bucket, whose lower bound is taken as 0. */
    for (int i = 0; i < 4; i++)
        metrics_observe(h, lo, 0.9);
    /* inf: everything above the highest bound. */
    for (int i = 0; i < 3; i++)
        metrics_observe(h, inf, 50);
    metrics_observe(h, (const char *[]){"nan"}, NAN); /* ignored: creates nothing */
    /* A family without labels has its series, empty, from registration on. */
    metrics_family *empty = reg(m, "qe_seconds", METRICS_HISTOGRAM, NULL, 0, b, 3);
    (void)empty;
    metrics_family *h0 = reg(m, "q0_seconds", METRICS_HISTOGRAM, NULL, 0, NULL, 0);
    metrics_observe(h0, NULL, 1);

    json_t *s = summary(m, "q_seconds");
    assert_int_equal(json_array_size(s), 3);
    json_t *e = entry(s, "k", "a");
    assert_true(fabs(num(e, "p50") - 2.4) < 1e-12); /* rank 50: 2 + 2 * (10 / 50) */
    assert_true(fabs(num(e, "p90") - 4.0) < 1e-12); /* rank 90: the top of (2, 4] */
    assert_true(num(e, "p99") == 4.0);              /* rank 99 is in +Inf: highest bound */
    e = entry(s, "k", "low");
    assert_true(fabs(num(e, "p50") - 0.5) < 1e-12); /* 0 + 1 * (2 / 4) */
    assert_true(fabs(num(e, "p90") - 0.9) < 1e-12);
    assert_true(fabs(num(e, "p99") - 0.99) < 1e-12);
    e = entry(s, "k", "inf");
    assert_true(num(e, "p50") == 4.0 && num(e, "p99") == 4.0);
    json_decref(s);
    s = summary(m, "qe_seconds");
    e = entry(s, NULL, NULL);
    assert_true(num(e, "count") == 0 && num(e, "sum") == 0);
    assert_true(json_is_null(json_object_get(e, "p50")));
    assert_true(json_is_null(json_object_get(e, "p99")));
    json_decref(s);
    /* Without a finite bucket there is nothing to interpolate: NaN (null), as in Prometheus. */
    s = summary(m, "q0_seconds");
    assert_true(num(entry(s, NULL, NULL), "count") == 1);
    assert_true(json_is_null(json_object_get(entry(s, NULL, NULL), "p50")));
    json_decref(s);
    metrics_free(m);
}

/* The estimate must fall inside the bucket (of the latency buckets) holding the true value. */
static void assert_within_bucket(double estimate, double truth, const char *what)
{
    double lo = 0, hi = INFINITY;
    for (size_t i = 0; i < metrics_latency_n_buckets; i++) {
        if (truth <= metrics_latency_buckets[i]) {
            hi = metrics_latency_buckets[i];
            break;
        }
        lo = metrics_latency_buckets[i];
    }
    if (isinf(hi)) /* above every bound: Prometheus answers the highest finite bound */
        hi = lo;
    if (!(estimate >= lo && estimate <= hi))
        fail_msg("%s: estimate %.6g outside (%.6g, %.6g], true %.6g", what, estimate, lo, hi,
                 truth);
}

static void check_distribution(metrics *m, metrics_family *h, const char *name, double *samples,
                               size_t n)
{
    for (size_t i = 0; i < n; i++)
        metrics_observe(h, (const char *[]){name}, samples[i]);
    qsort(samples, n, sizeof *samples, cmp_double);
    json_t *s = summary(m, "lat_seconds");
    json_t *e = entry(s, "dist", name);
    assert_true(num(e, "count") == (double)n);
    static const struct {
        const char *key;
        double q;
    } qs[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}};
    for (size_t i = 0; i < 3; i++) {
        double truth = samples[(size_t)ceil(qs[i].q * (double)n) - 1]; /* nearest rank */
        char what[64];
        snprintf(what, sizeof what, "%s %s", name, qs[i].key);
        assert_within_bucket(num(e, qs[i].key), truth, what);
    }
    json_decref(s);
}

static void test_quantile_known_distributions(void **state)
{
    (void)state;
    metrics *m = new_registry();
    metrics_family *h = reg(m, "lat_seconds", METRICS_HISTOGRAM, (const char *[]){"dist"}, 1,
                            metrics_latency_buckets, metrics_latency_n_buckets);
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    double samples[1000];

    /* Uniform in (0.1, 0.5]: two buckets; p50 0.3, p90 0.46, p99 0.496. */
    for (size_t i = 0; i < 1000; i++)
        samples[i] = 0.1 + 0.4 * (1 - rnd(&seed));
    check_distribution(m, h, "uniform", samples, 1000);
    /* Uniform inside one bucket interpolates (nearly) exactly: (0.01, 0.025]. */
    for (size_t i = 0; i < 1000; i++)
        samples[i] = 0.01 + 0.015 * (1 - rnd(&seed));
    check_distribution(m, h, "one_bucket", samples, 1000);
    json_t *s = summary(m, "lat_seconds");
    json_t *e = entry(s, "dist", "one_bucket");
    assert_true(fabs(num(e, "p50") - 0.0175) < 0.015 * 0.05);
    assert_true(fabs(num(e, "p90") - 0.0235) < 0.015 * 0.05);
    json_decref(s);
    /* Skewed, like a connector: 85% fast (1-8 ms, log-uniform), 12% slow (0.2-2 s),
     * 3% timeouts near 30 s. */
    for (size_t i = 0; i < 1000; i++) {
        double u = rnd(&seed), r = rnd(&seed);
        if (u < 0.85)
            samples[i] = 0.001 * pow(8, r);
        else if (u < 0.97)
            samples[i] = 0.2 * pow(10, r);
        else
            samples[i] = 29 + 2 * r;
    }
    check_distribution(m, h, "skewed", samples, 1000);
    /* Beyond the top bound: p99 reports the highest finite bound, 60. */
    for (size_t i = 0; i < 1000; i++)
        samples[i] = i < 950 ? 0.003 : 120;
    check_distribution(m, h, "beyond", samples, 1000);
    s = summary(m, "lat_seconds");
    assert_true(num(entry(s, "dist", "beyond"), "p99") == 60);
    json_decref(s);
    metrics_free(m);
}

/* ---- concurrency ------------------------------------------------------------------------ */

#define THREADS 6
#define OPS 20000

typedef struct worker {
    metrics_family *counter, *hist;
    int id;
    pthread_barrier_t *start;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    char own[16], fresh[16];
    snprintf(own, sizeof own, "t%d", w->id);
    pthread_barrier_wait(w->start);
    for (int i = 0; i < OPS; i++) {
        metrics_add(w->counter, (const char *[]){"shared"}, 1);
        metrics_add(w->counter, (const char *[]){own}, 0.5);
        metrics_observe(w->hist, (const char *[]){"shared"}, (i % 4) * 0.25); /* 0 .. 0.75 */
        /* Every thread races to create the same new series, 100 of them. */
        if (i % 200 == 0) {
            snprintf(fresh, sizeof fresh, "new%d", i / 200);
            metrics_add(w->counter, (const char *[]){fresh}, 1);
        }
    }
    return NULL;
}

static void test_concurrent_updates_exact(void **state)
{
    (void)state;
    metrics *m = new_registry();
    const double b[] = {0.1, 0.5};
    metrics_family *c = reg(m, "conc_total", METRICS_COUNTER, (const char *[]){"k"}, 1, NULL, 0);
    metrics_family *h = reg(m, "conc_seconds", METRICS_HISTOGRAM, (const char *[]){"k"}, 1, b, 2);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    pthread_t t[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){c, h, i, &start};
        assert_int_equal(pthread_create(&t[i], NULL, work, &w[i]), 0);
    }
    /* Render while they work: must not crash or tear. */
    for (int i = 0; i < 20; i++) {
        char *text = metrics_render(m);
        assert_non_null(text);
        free(text);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);

    json_t *s = summary(m, "conc_total");
    assert_int_equal(json_array_size(s), 1 + THREADS + OPS / 200);
    assert_true(num(entry(s, "k", "shared"), "value") == (double)THREADS * OPS);
    for (int i = 0; i < THREADS; i++) {
        char own[16];
        snprintf(own, sizeof own, "t%d", i);
        assert_true(num(entry(s, "k", own), "value") == OPS * 0.5);
    }
    assert_true(num(entry(s, "k", "new0"), "value") == THREADS);
    assert_true(num(entry(s, "k", "new99"), "value") == THREADS);
    json_decref(s);

    s = summary(m, "conc_seconds");
    json_t *e = entry(s, "k", "shared");
    assert_true(num(e, "count") == (double)THREADS * OPS);
    /* Per thread: OPS/4 each of 0, 0.25, 0.5, 0.75 -> 1.5 * OPS/4; all multiples of 1/4. */
    assert_true(num(e, "sum") == THREADS * (OPS / 4) * 1.5);
    json_decref(s);
    char *text = metrics_render(m);
    char want[160];
    snprintf(want, sizeof want,
             "conc_seconds_bucket{k=\"shared\",le=\"0.1\"} %d\n"
             "conc_seconds_bucket{k=\"shared\",le=\"0.5\"} %d\n"
             "conc_seconds_bucket{k=\"shared\",le=\"+Inf\"} %d\n",
             THREADS * OPS / 4, THREADS * OPS * 3 / 4, THREADS * OPS);
    assert_non_null(strstr(text, want));
    free(text);
    assert_int_equal(metrics_overflow(c), 0);
    metrics_free(m);
}

/* ---- the series cap --------------------------------------------------------------------- */

static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static void test_series_cap(void **state)
{
    (void)state;
    metrics *m = new_registry();
    metrics_family *f = reg(m, "cap_total", METRICS_COUNTER, (const char *[]){"id"}, 1, NULL, 0);
    metrics_family *other = reg(m, "other_total", METRICS_COUNTER, NULL, 0, NULL, 0);
    char v[METRICS_MAX_LABEL_VALUE + 1];
    for (int i = 0; i < METRICS_MAX_SERIES + 1000; i++) {
        snprintf(v, sizeof v, "id%06d", i);
        metrics_add(f, (const char *[]){v}, 1);
    }
    assert_int_equal(metrics_overflow(f), 1000);
    assert_int_equal(metrics_overflow(other), 0);
    /* Existing series still update; new ones keep being counted and dropped. */
    metrics_add(f, (const char *[]){"id000000"}, 1);
    assert_int_equal(metrics_overflow(f), 1000);

    /* Memory stays bounded: 20000 more distinct long values allocate nothing lasting.
     * (mallinfo2 reads 0 under AddressSanitizer, where this check is empty.) */
    size_t before = heap_in_use();
    memset(v, 'z', METRICS_MAX_LABEL_VALUE);
    v[METRICS_MAX_LABEL_VALUE] = '\0';
    for (int i = 0; i < 20000; i++) {
        snprintf(v, 12, "%011d", i);
        v[11] = 'z';
        metrics_add(f, (const char *[]){v}, 1);
    }
    size_t after = heap_in_use();
    assert_int_equal(metrics_overflow(f), 21000);
    if (after > before)
        assert_true(after - before < 64 * 1024);

    json_t *s = summary(m, "cap_total");
    assert_int_equal(json_array_size(s), METRICS_MAX_SERIES);
    assert_true(num(entry(s, "id", "id000000"), "value") == 2);
    json_decref(s);
    char *text = metrics_render(m);
    assert_non_null(text);
    const char *tail = "# HELP aiorun_metrics_series_dropped_total ";
    const char *p = strstr(text, tail);
    assert_non_null(p);
    assert_non_null(strstr(p, "# TYPE aiorun_metrics_series_dropped_total counter\n"
                              "aiorun_metrics_series_dropped_total{family=\"cap_total\"} 21000\n"));
    assert_null(strstr(p, "other_total"));
    assert_null(strstr(text, "id004096")); /* the 4097th was dropped */
    assert_non_null(strstr(text, "cap_total{id=\"id004095\"} 1\n"));
    free(text);
    metrics_free(m);
}

/* ---- promtool --------------------------------------------------------------------------- */

static bool on_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path)
        return false;
    char *copy = strdup(path), *save = NULL;
    bool found = false;
    for (char *dir = strtok_r(copy, ":", &save); dir && !found;
         dir = strtok_r(NULL, ":", &save)) {
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", *dir ? dir : ".", prog);
        found = access(full, X_OK) == 0;
    }
    free(copy);
    return found;
}

static void test_promtool_check_metrics(void **state)
{
    (void)state;
    if (!on_path("promtool")) {
        print_message("promtool not on PATH (Debian package prometheus): skipped\n");
        skip();
    }
    metrics *m = new_registry();
    metrics_family *actions = reg(m, "aiorun_actions_total", METRICS_COUNTER,
                                  (const char *[]){"connector", "action", "state"}, 3, NULL, 0);
    metrics_family *stage = reg(m, "aiorun_stage_duration_seconds", METRICS_HISTOGRAM,
                                (const char *[]){"stage", "connector"}, 2,
                                metrics_latency_buckets, metrics_latency_n_buckets);
    metrics_family *queue = reg(m, "aiorun_queue_depth", METRICS_GAUGE, NULL, 0, NULL, 0);
    metrics_family *errors = reg(m, "aiorun_errors_total", METRICS_COUNTER,
                                 (const char *[]){"connector", "class"}, 2, NULL, 0);
    metrics_family *circuit = reg(m, "aiorun_circuit_state", METRICS_GAUGE,
                                  (const char *[]){"connector"}, 1, NULL, 0);
    metrics_family *cost = reg(m, "aiorun_action_cost_dollars_total", METRICS_COUNTER,
                               (const char *[]){"connector"}, 1, NULL, 0);
    reg(m, "aiorun_approvals_pending", METRICS_GAUGE, (const char *[]){"policy"}, 1, NULL, 0);
    metrics_family *small = reg(m, "aiorun_tiny_bytes", METRICS_GAUGE, (const char *[]){"k"}, 1,
                                NULL, 0);
    metrics_family *capped = reg(m, "aiorun_capped_total", METRICS_COUNTER,
                                 (const char *[]){"id"}, 1, NULL, 0);

    uint64_t seed = 42;
    const char *connectors[] = {"shopify", "stripe", "zendesk \"eu\"\\\n"};
    const char *stages[] = {"decide", "dispatch", "invoke", "journal"};
    const char *states[] = {"succeeded", "failed", "denied", "unknown_outcome"};
    for (int i = 0; i < 500; i++) {
        const char *c = connectors[i % 3];
        metrics_add(actions, (const char *[]){c, i % 2 ? "refund" : "create_listing",
                                              states[i % 4]}, 1);
        metrics_observe(stage, (const char *[]){stages[i % 4], c}, 0.0005 + rnd(&seed) * 3);
        metrics_add(errors, (const char *[]){c, i % 5 ? "transient" : "permanent"}, 1);
        metrics_add(cost, (const char *[]){c}, 0.0015);
    }
    metrics_set(queue, NULL, 12);
    metrics_set(circuit, (const char *[]){"stripe"}, 1);
    metrics_set(small, (const char *[]){"bad \xff"}, 1e-7);
    metrics_set(small, (const char *[]){"big"}, 1.5e12);
    for (int i = 0; i < METRICS_MAX_SERIES + 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        metrics_add(capped, (const char *[]){id}, 1);
    }
    char *text = metrics_render(m);
    assert_non_null(text);
    metrics_free(m);

    char dir[] = "/tmp/test_metrics_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], cmd[640];
    snprintf(path, sizeof path, "%s/metrics.txt", dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
    free(text);

    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    unlink(path);
    rmdir(dir);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || n != 0)
        fail_msg("promtool check metrics: status %d, output:\n%s", status, out);

    /* And it does find problems (the check can fail): a counter without _total. */
    char bad[] = "/tmp/test_metrics_XXXXXX";
    assert_non_null(mkdtemp(bad));
    snprintf(path, sizeof path, "%s/bad.txt", bad);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("# HELP x An x.\n# TYPE x counter\nx 1\n", fp);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s >/dev/null 2>&1", path);
    status = system(cmd);
    unlink(path);
    rmdir(bad);
    assert_true(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) != 0);
}

/* ---- cost (measured, printed, not asserted) --------------------------------------------- */

#define BENCH_OPS 400000

typedef struct bench {
    metrics_family *f;
    bool observe;
    pthread_barrier_t *start;
} bench;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *bench_run(void *arg)
{
    bench *b = arg;
    const char *lv[] = {"stripe", "invoke"};
    if (b->start)
        pthread_barrier_wait(b->start);
    for (int i = 0; i < BENCH_OPS; i++) {
        if (b->observe)
            metrics_observe(b->f, lv, 0.001 * (i & 1023));
        else
            metrics_add(b->f, lv, 1);
    }
    return NULL;
}

/* ns per call: one thread, then two threads on the same series (wall time / total calls). */
static void measure(metrics_family *f, bool observe, double *one, double *two)
{
    bench b = {f, observe, NULL};
    double t0 = now_s();
    bench_run(&b);
    *one = (now_s() - t0) * 1e9 / BENCH_OPS;

    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    bench b2 = {f, observe, &start};
    pthread_t t[2];
    t0 = now_s();
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, bench_run, &b2), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    *two = (now_s() - t0) * 1e9 / (2.0 * BENCH_OPS);
    pthread_barrier_destroy(&start);
}

static void test_update_cost(void **state)
{
    (void)state;
    metrics *m = new_registry();
    const char *ln[] = {"connector", "stage"};
    metrics_family *c = reg(m, "bench_total", METRICS_COUNTER, ln, 2, NULL, 0);
    metrics_family *h = reg(m, "bench_seconds", METRICS_HISTOGRAM, ln, 2,
                            metrics_latency_buckets, metrics_latency_n_buckets);
    /* Some neighbours, so the lookup is not trivially the only entry. */
    for (int i = 0; i < 300; i++) {
        char v[16];
        snprintf(v, sizeof v, "c%d", i);
        metrics_add(c, (const char *[]){v, "invoke"}, 1);
        metrics_observe(h, (const char *[]){v, "invoke"}, 0.01);
    }
    double add1, add2, obs1, obs2;
    measure(c, false, &add1, &add2);
    measure(h, true, &obs1, &obs2);
    print_message("metrics_add:     %.1f ns/call alone, %.1f ns/call with 2 threads on one "
                  "series\n",
                  add1, add2);
    print_message("metrics_observe: %.1f ns/call alone, %.1f ns/call with 2 threads on one "
                  "series\n",
                  obs1, obs2);
    /* The totals are exact (the only assertion here). */
    json_t *s = summary(m, "bench_total");
    assert_true(num(entry(s, "connector", "stripe"), "value") == 3.0 * BENCH_OPS);
    json_decref(s);
    s = summary(m, "bench_seconds");
    assert_true(num(entry(s, "connector", "stripe"), "count") == 3.0 * BENCH_OPS);
    json_decref(s);
    metrics_free(m);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_register_rejects_bad_families),
    cmocka_unit_test(test_render_golden),
    cmocka_unit_test(test_label_and_help_escaping),
    cmocka_unit_test(test_number_formatting),
    cmocka_unit_test(test_counter_never_goes_down),
    cmocka_unit_test(test_counter_set_mirrors_a_count),
    cmocka_unit_test(test_gauge_set_and_add),
    cmocka_unit_test(test_histogram_buckets_cumulative),
    cmocka_unit_test(test_quantile_prometheus_semantics),
    cmocka_unit_test(test_quantile_known_distributions),
    cmocka_unit_test(test_concurrent_updates_exact),
    cmocka_unit_test(test_series_cap),
    cmocka_unit_test(test_promtool_check_metrics),
    cmocka_unit_test(test_update_cost),
};

AR_TEST_MAIN(tests, NULL, NULL)
