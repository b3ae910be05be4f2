/*
 * bench_policy.c - aiorun-bench-policy: decisions per second and nanoseconds per decision of a
 * policy set on one worker (one Lua state, one thread), as a decision worker of the daemon runs
 * them: policy_decide on the action view the API builds (connector, action, effect, input,
 * priority, proposer, submitter, autonomy), its votes freed after each call.
 *
 *   aiorun-bench-policy [--policy-dir DIR] [--action echo|http] [--votes json|c]
 *                       [--warmup S] [--runs N] [--duration S]
 *
 * --policy-dir defaults to the source tree's policies/ (the shipped set). --action echo is a
 * read the default policy decides (rule echo_allowed); http is a write every shipped policy
 * abstains on (so all of them run to the end, then the default verdict applies). --votes json
 * (the default, what the daemon's decision workers do today) has policy_decide build the votes
 * as JSON, freed after each call; --votes c leaves them as C data (policy_worker_set_votes_json),
 * for a caller that builds the JSON only where it needs it. Each run is a
 * window of --duration seconds; per run: decisions/s, ns per decision (the window's time over
 * its decisions, the clock reads included) and the exact p50/p99 of single calls.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "policy.h"

static const char ECHO_ACTION[] =
    "{\"connector\": \"echo\", \"action\": \"echo\", \"effect\": \"read\","
    " \"input\": {\"message\": \"hello from the benchmark\"}, \"priority\": 0,"
    " \"proposer\": {\"kind\": \"ai\", \"model\": \"bench-model\", \"confidence\": 0.9, \"prompt_ref\": \"bench-1\"},"
    " \"submitter\": \"bench\", \"autonomy\": \"auto\"}";
static const char HTTP_ACTION[] =
    "{\"connector\": \"http\", \"action\": \"request\", \"effect\": \"write\","
    " \"input\": {\"method\": \"POST\", \"path\": \"/orders\", \"body\": {\"product_id\": \"prd_1\", \"quantity\": 2}},"
    " \"priority\": 0,"
    " \"proposer\": {\"kind\": \"ai\", \"model\": \"bench-model\", \"confidence\": 0.9, \"prompt_ref\": \"bench-1\"},"
    " \"submitter\": \"bench\", \"autonomy\": \"auto\"}";

int main(int argc, char **argv)
{
    const char *dir = AIORUN_SOURCE_DIR "/policies", *which = "echo", *votes = "json";
    double warmup_s = 0.5, duration_s = 1;
    int runs = 5;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench-policy: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--policy-dir") == 0) dir = v;
        else if (strcmp(a, "--action") == 0) which = v;
        else if (strcmp(a, "--votes") == 0) votes = v;
        else if (strcmp(a, "--warmup") == 0) warmup_s = bench_arg_double(a, v);
        else if (strcmp(a, "--duration") == 0) duration_s = bench_arg_double(a, v);
        else if (strcmp(a, "--runs") == 0) runs = (int)bench_arg_long(a, v);
        else {
            fprintf(stderr, "usage: aiorun-bench-policy [--policy-dir DIR] [--action echo|http] [--votes json|c] [--warmup S] [--runs N] [--duration S]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > BENCH_MAX_RUNS || duration_s <= 0 ||
        (strcmp(which, "echo") != 0 && strcmp(which, "http") != 0) ||
        (strcmp(votes, "json") != 0 && strcmp(votes, "c") != 0)) {
        fprintf(stderr, "bench-policy: --runs 1..%d, --duration > 0, --action echo|http, --votes json|c\n", BENCH_MAX_RUNS);
        return 2;
    }
    json_error_t jerr;
    json_t *action = json_loads(strcmp(which, "echo") == 0 ? ECHO_ACTION : HTTP_ACTION, 0, &jerr);
    policy_set *set = NULL;
    policy_worker *w = NULL;
    ar_error err = {0};
    if (!action || policy_set_load(dir, NULL, &set, &err) != AR_OK || policy_worker_new(set, &w, &err) != AR_OK) {
        fprintf(stderr, "bench-policy: cannot load the policies of %s: %s\n", dir, err.message);
        return 1;
    }
    policy_worker_set_votes_json(w, strcmp(votes, "json") == 0);

    policy_decision d;
    policy_decide(w, action, &d);
    json_decref(d.votes);
    char verdict[16], rule[128];
    snprintf(verdict, sizeof verdict, "%s", policy_verdict_name(d.verdict));
    snprintf(rule, sizeof rule, "%s", d.rule);

    size_t cap = 1 << 20, n;
    uint64_t *lat = malloc(cap * sizeof *lat);
    bench_series per_s = {0}, ns_per = {0}, p50 = {0}, p99 = {0};
    for (int r = -1; r < runs; r++) {            /* run -1: the warm-up */
        int64_t t0 = bench_now_ns(), until = t0 + (int64_t)((r < 0 ? warmup_s : duration_s) * 1e9), t = t0;
        n = 0;
        while (t < until) {
            policy_decide(w, action, &d);
            json_decref(d.votes);
            int64_t e = bench_now_ns();
            if (n == cap) {
                cap *= 2;
                lat = realloc(lat, cap * sizeof *lat);
            }
            lat[n++] = (uint64_t)(e - t);
            t = e;
        }
        if (r < 0)
            continue;
        double secs = (double)(t - t0) / 1e9;
        bench_sort_u64(lat, n);
        bench_series_add(&per_s, (double)n / secs);
        bench_series_add(&ns_per, secs * 1e9 / (double)n);
        bench_series_add(&p50, (double)bench_quantile(lat, n, 0.50));
        bench_series_add(&p99, (double)bench_quantile(lat, n, 0.99));
    }
    fprintf(stderr, "decision %-6s %s/%s, votes %s, %zu of %zu files run once: %8.0f ns/decision (min %.0f max %.0f), %.0f decisions/s, p99 %.0f ns\n",
            which, verdict, rule, votes, policy_worker_files_run_once(w), policy_set_count(set),
            bench_series_median(&ns_per), bench_series_min(&ns_per),
            bench_series_max(&ns_per), bench_series_median(&per_s), bench_series_median(&p99));
    bench_print_json(json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:s, s:s, s:f, s:i, s:o, s:o, s:o, s:o}",
        "action", which, "votes", votes, "policy_dir", dir, "files", (int)policy_set_count(set),
        "files_run_once", (int)policy_worker_files_run_once(w), "policy_version",
        policy_set_version(set), "verdict", verdict, "rule", rule, "run_s", duration_s, "runs", runs,
        "decisions_per_s", bench_series_json(&per_s), "ns_per_decision", bench_series_json(&ns_per),
        "p50_ns", bench_series_json(&p50), "p99_ns", bench_series_json(&p99)));
    free(lat);
    policy_worker_free(w);
    policy_set_free(set);
    json_decref(action);
    return 0;
}
