/*
 * bench_ipc.c - aiorun-bench-ipc: the round trip of an almost empty invoke through the plugin
 * sandbox, as the daemon's scheduler makes it: sandbox_pool_invoke on a loop_t, the echo plugin
 * in its locked-down host process (aiorun-host, seccomp, Landlock, rlimits; no uid switch),
 * one socketpair frame each way.
 *
 *   aiorun-bench-ipc [--placement same|across|any] [--processes P] [--warmup S] [--runs N]
 *                    [--duration S] [--host PATH] [--plugin PATH]
 *
 * --placement: same pins this program (the loop thread) and the host processes to CPU 0 (what
 * `taskset -c 0` would do: the hosts inherit the mask at spawn); across spawns the hosts pinned
 * to CPU 1 and then moves the loop thread to CPU 0; any pins nothing. P calls are kept in
 * flight (one per process, each re-invoked from its done callback), so P = 1 is a serial round
 * trip and P > 1 a pipeline over several processes. Per run: calls/s and the exact p50/p99 of
 * one call's round trip (CLOCK_MONOTONIC, invoke to done). --host and --plugin default to
 * bin/aiorun-host and plugins/echo.so of the build this program belongs to.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench_common.h"
#include "loop.h"
#include "sandbox.h"

#define MAX_PROCS 16

typedef struct ipc_bench ipc_bench;

typedef struct chain {
    ipc_bench *b;
    int64_t sent_ns;
    int active;      /* a call is in flight */
    int pending;     /* wants to send but found no idle process */
} chain;

struct ipc_bench {
    loop_t *loop;
    sandbox_pool *pool;
    int n_chains;
    chain chains[MAX_PROCS];
    int64_t t_end;
    int64_t *end_ns;
    uint64_t *lat_ns;
    size_t n, cap;
    size_t errors;
    char first_error[256];
    int ready_wanted;
};

static void send_next(chain *c);

static void on_done(void *arg, const sandbox_result *res)
{
    chain *c = arg;
    ipc_bench *b = c->b;
    int64_t e = bench_now_ns();
    c->active = 0;
    if (!res->ok) {
        if (!b->errors++)
            snprintf(b->first_error, sizeof b->first_error, "%s", res->error_message ? res->error_message : "?");
    } else {
        if (b->n == b->cap) {
            b->cap = b->cap ? b->cap * 2 : 65536;
            b->end_ns = realloc(b->end_ns, b->cap * sizeof *b->end_ns);
            b->lat_ns = realloc(b->lat_ns, b->cap * sizeof *b->lat_ns);
        }
        b->end_ns[b->n] = e;
        b->lat_ns[b->n++] = (uint64_t)(e - c->sent_ns);
    }
    send_next(c);
}

static void maybe_stop(ipc_bench *b)
{
    for (int i = 0; i < b->n_chains; i++)
        if (b->chains[i].active || b->chains[i].pending)
            return;
    loop_stop(b->loop);
}

static void send_next(chain *c)
{
    ipc_bench *b = c->b;
    static const char input[] = "{\"message\":\"\"}";
    if (bench_now_ns() >= b->t_end) {
        c->pending = 0;
        maybe_stop(b);
        return;
    }
    sandbox_call call = {.action = "echo", .input_json = input, .input_len = sizeof input - 1,
                         .idempotency_key = "bench", .attempt = 1};
    c->sent_ns = bench_now_ns();
    int rc = sandbox_pool_invoke(b->pool, &call, on_done, c);
    if (rc == AR_OK) {
        c->active = 1;
        c->pending = 0;
    } else if (rc == AR_E_BUSY) {
        c->pending = 1;           /* the pool's event callback tries again */
    } else {
        fprintf(stderr, "bench-ipc: sandbox_pool_invoke failed (%d)\n", rc);
        exit(1);
    }
}

static void on_event(void *arg, sandbox_pool *pool)
{
    ipc_bench *b = arg;
    (void)pool;
    if (!b->loop || b->t_end == 0)
        return;
    for (int i = 0; i < b->n_chains; i++)
        if (b->chains[i].pending)
            send_next(&b->chains[i]);
}

static void poll_ready(loop_t *loop, void *arg)
{
    ipc_bench *b = arg;
    sandbox_snapshot s;
    sandbox_pool_snapshot(b->pool, &s);
    json_decref(s.descriptor);
    if (s.state == SANDBOX_REFUSED) {
        fprintf(stderr, "bench-ipc: the echo plugin was refused: %s\n", s.message);
        exit(1);
    }
    if (s.serving >= b->ready_wanted) {
        loop_stop(loop);
        return;
    }
    loop_timer_add(loop, ar_mono_ms() + 1, poll_ready, b);
}

static void start_chains(loop_t *loop, void *arg)
{
    ipc_bench *b = arg;
    (void)loop;
    for (int i = 0; i < b->n_chains; i++)
        send_next(&b->chains[i]);
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int main(int argc, char **argv)
{
    const char *placement = "any", *host = NULL, *plugin = NULL;
    char *plugin_found = NULL;
    int processes = 1, runs = 5;
    double warmup_s = 0.5, duration_s = 1;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench-ipc: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--placement") == 0) placement = v;
        else if (strcmp(a, "--processes") == 0) processes = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--warmup") == 0) warmup_s = bench_arg_double(a, v);
        else if (strcmp(a, "--duration") == 0) duration_s = bench_arg_double(a, v);
        else if (strcmp(a, "--runs") == 0) runs = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--host") == 0) host = v;
        else if (strcmp(a, "--plugin") == 0) plugin = v;
        else {
            fprintf(stderr, "usage: aiorun-bench-ipc [--placement same|across|any] [--processes P] [--warmup S] "
                            "[--runs N] [--duration S] [--host PATH] [--plugin PATH]\n");
            return 2;
        }
    }
    int same = strcmp(placement, "same") == 0, across = strcmp(placement, "across") == 0;
    if ((!same && !across && strcmp(placement, "any") != 0) || processes < 1 || processes > MAX_PROCS ||
        runs < 1 || runs > BENCH_MAX_RUNS || duration_s <= 0) {
        fprintf(stderr, "bench-ipc: --placement same|across|any, --processes 1..%d, --runs 1..%d\n", MAX_PROCS,
                BENCH_MAX_RUNS);
        return 2;
    }
    char exe[PATH_MAX], bindir[PATH_MAX], host_buf[PATH_MAX + 32], plugin_buf[PATH_MAX + 32];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = '\0';
    snprintf(bindir, sizeof bindir, "%s", dirname(exe));
    if (!host) {
        snprintf(host_buf, sizeof host_buf, "%s/aiorun-host", bindir);
        host = host_buf;
    }
    if (!plugin) {
        snprintf(plugin_buf, sizeof plugin_buf, "%s/../plugins/echo.so", bindir);
        plugin = plugin_found = realpath(plugin_buf, NULL);
        if (!plugin) {
            fprintf(stderr, "bench-ipc: no echo plugin at %s (build the echo target)\n", plugin_buf);
            return 1;
        }
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (across && ncpu < 2) {
        fprintf(stderr, "bench-ipc: --placement across needs 2 CPUs\n");
        return 1;
    }
    if ((same && pin(0) != 0) || (across && pin(1) != 0)) {
        fprintf(stderr, "bench-ipc: sched_setaffinity: %s\n", strerror(errno));
        return 1;
    }
    char rt[] = "/tmp/aiorun-bench-rt-XXXXXX";
    if (!mkdtemp(rt) || chmod(rt, 0755) != 0) {
        fprintf(stderr, "bench-ipc: cannot make a runtime directory: %s\n", strerror(errno));
        return 1;
    }

    static ipc_bench b;
    b.n_chains = processes;
    b.ready_wanted = processes;
    for (int i = 0; i < processes; i++)
        b.chains[i].b = &b;
    json_t *config = json_object();
    sandbox_pool_opts opts = {.connector = "bench", .plugin_path = plugin, .host_path = host, .config = config,
                              .processes = processes, .timeout_ms = 5000,
                              .lockdown = {.runtime_dir = rt}};
    ar_error err = {0};
    if (loop_new(&b.loop) != AR_OK || sandbox_pool_new(b.loop, &opts, on_event, &b, &b.pool, &err) != AR_OK) {
        fprintf(stderr, "bench-ipc: sandbox_pool_new: %s\n", err.message);
        return 1;
    }
    loop_timer_add(b.loop, ar_mono_ms() + 1, poll_ready, &b);
    loop_run(b.loop);
    if (across && pin(0) != 0) {
        fprintf(stderr, "bench-ipc: sched_setaffinity: %s\n", strerror(errno));
        return 1;
    }

    int64_t warm_ns = (int64_t)(warmup_s * 1e9), run_ns = (int64_t)(duration_s * 1e9);
    int64_t t0 = bench_now_ns();
    b.t_end = t0 + warm_ns + run_ns * runs;
    loop_post(b.loop, start_chains, &b);
    loop_run(b.loop);

    bench_series rate = {0}, p50 = {0}, p99 = {0};
    uint64_t *lat = malloc((b.n ? b.n : 1) * sizeof *lat);
    for (int r = 0; r < runs; r++) {
        int64_t from = t0 + warm_ns + run_ns * r, to = from + run_ns;
        size_t n = 0;
        for (size_t k = 0; k < b.n; k++)
            if (b.end_ns[k] >= from && b.end_ns[k] < to)
                lat[n++] = b.lat_ns[k];
        bench_sort_u64(lat, n);
        bench_series_add(&rate, (double)n / duration_s);
        bench_series_add(&p50, (double)bench_quantile(lat, n, 0.50) / 1e3);
        bench_series_add(&p99, (double)bench_quantile(lat, n, 0.99) / 1e3);
    }
    fprintf(stderr, "ipc %-6s processes=%d: %8.0f calls/s  p50 %6.1f us (min %.1f max %.1f)  p99 %6.1f us%s%s\n",
            placement, processes, bench_series_median(&rate), bench_series_median(&p50), bench_series_min(&p50),
            bench_series_max(&p50), bench_series_median(&p99), b.errors ? "  ERRORS: " : "", b.first_error);
    json_t *out = json_pack("{s:s, s:i, s:i, s:f, s:i, s:I, s:o, s:o, s:o}", "placement", placement,
                            "processes", processes, "cpus", (int)ncpu, "run_s", duration_s, "runs", runs,
                            "errors", (json_int_t)b.errors, "calls_per_s", bench_series_json(&rate),
                            "p50_us", bench_series_json(&p50), "p99_us", bench_series_json(&p99));
    if (b.errors)
        json_object_set_new(out, "first_error", json_string(b.first_error));
    bench_print_json(out);
    sandbox_pool_free(b.pool);
    loop_free(b.loop);
    rmdir(rt);
    json_decref(config);
    free(plugin_found);
    free(lat);
    free(b.end_ns);
    free(b.lat_ns);
    return b.errors ? 1 : 0;
}
