/*
 * policy_cmd.c - `aioctl policy test` and `aioctl policy eval` (see policy_cmd.h for usage and
 * exit codes).
 *
 *   aioctl policy test [DIR] [--config FILE] [--json]
 *   aioctl policy eval ACTION_JSON [DIR] [--config FILE] [--counter NAME=VALUE]... [--json]
 *
 * Exit codes: 0 all tests passed / decided; 1 a test failed; 2 usage error, unreadable
 * directory or config, invalid policy or test file, no test files, any other error.
 *
 * Both load the policy directory (policy_set_load) exactly as the daemon does, with the limits
 * and defaults of the config when --config is given, and need no daemon, token or network.
 * eval's --counter gives what ctx.counter(NAME) returns (a counter the policies declare);
 * declared counters not given read 0.
 */
#include "policy_cmd.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "aioctl.h"
#include "config.h"
#include "policy.h"

#define DEFAULT_POLICY_DIR "policies"

static const char policy_usage[] =
    "usage: aioctl policy test [DIR] [--config FILE] [--json]\n"
    "       aioctl policy eval ACTION_JSON [DIR] [--config FILE] [--counter NAME=VALUE]...\n"
    "                          [--json]\n"
    "\n"
    "  test  run the policy tests (*_test.lua) in DIR (default ./policies; with --config,\n"
    "        the config's policy_dir, limits and defaults) against the policies there.\n"
    "        Exit 0: all passed, 1: a test failed, 2: an invalid file or usage error.\n"
    "  eval  decide one action now (ACTION_JSON, '-' for stdin) and show every policy's vote.\n"
    "        --counter NAME=VALUE (repeatable): what ctx.counter(\"NAME\") returns, e.g.\n"
    "        --counter refunded_24h=950; NAME must be declared in a policy's counters = {...},\n"
    "        and declared counters not given read 0.\n";

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage(const char *fmt, ...)
{
    va_list ap;
    fputs("aioctl: policy: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'aioctl policy --help'.\n", stderr);
    return AIOCTL_USAGE;
}

static int core_error(const ar_error *err)
{
    fprintf(stderr, "error: %s: %s\n", err->code[0] ? err->code : "failed", err->message);
    return AIOCTL_USAGE;
}

/* The command line of both subcommands: positional arguments, --config, --json, and eval's
 * --counter (counters: an object name -> number, owned; NULL when none is given). */
typedef struct policy_args {
    const char *positional[2];
    int n_positional;
    const char *config;
    int json;
    json_t *counters;
} policy_args;

/* --counter NAME=VALUE into a->counters. */
static int add_counter(policy_args *a, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1])
        return usage("--counter needs NAME=VALUE (a counter the policies declare, and a number), "
                     "got '%s'", spec);
    char *end;
    errno = 0;
    double value = strtod(eq + 1, &end);
    if (*end || errno || !isfinite(value))
        return usage("--counter %.*s: '%s' is not a number", (int)(eq - spec), spec, eq + 1);
    char name[128];
    if ((size_t)(eq - spec) >= sizeof name)
        return usage("--counter: the name '%.*s...' is too long", 40, spec);
    memcpy(name, spec, (size_t)(eq - spec));
    name[eq - spec] = '\0';
    if (!a->counters && !(a->counters = json_object())) {
        fputs("aioctl: out of memory\n", stderr);
        return AIOCTL_USAGE;
    }
    if (json_object_get(a->counters, name))
        return usage("--counter %s is given twice", name);
    /* whole numbers stay integers, as in ACTION_JSON */
    json_t *v = value == floor(value) && fabs(value) < 9007199254740992.0
                    ? json_integer((json_int_t)value) : json_real(value);
    if (json_object_set_new(a->counters, name, v) != 0)
        return usage("--counter: the name '%s' is not valid UTF-8", name);
    return AIOCTL_OK;
}

static int parse_args(int argc, char **argv, int max_positional, int allow_counters,
                      policy_args *a)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int rc;
        if (strcmp(arg, "--json") == 0) {
            a->json = 1;
        } else if (allow_counters && strcmp(arg, "--counter") == 0) {
            if (i + 1 >= argc)
                return usage("--counter needs NAME=VALUE");
            if ((rc = add_counter(a, argv[++i])) != AIOCTL_OK)
                return rc;
        } else if (allow_counters && strncmp(arg, "--counter=", 10) == 0) {
            if ((rc = add_counter(a, arg + 10)) != AIOCTL_OK)
                return rc;
        } else if (strcmp(arg, "--config") == 0) {
            if (i + 1 >= argc)
                return usage("--config needs a value (the daemon's config file)");
            a->config = argv[++i];
        } else if (strncmp(arg, "--config=", 9) == 0) {
            a->config = arg + 9;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            return usage("%s: unknown option '%s'", argv[0], arg);
        } else if (a->n_positional < max_positional) {
            a->positional[a->n_positional++] = arg;
        } else {
            return usage("%s: too many arguments ('%s')", argv[0], arg);
        }
        if (a->config && !a->config[0])
            return usage("--config needs a value (the daemon's config file)");
    }
    return AIOCTL_OK;
}

/* Load the policy set of dir (NULL: the config's, or ./policies). *dir_out: the directory
 * used (borrowed from dir or *cfg_out, which the caller frees with config_free). */
static int load_set(const char *dir, const char *config_path, policy_set **set,
                    config **cfg_out, const char **dir_out)
{
    ar_error err;
    ar_error_clear(&err);
    const policy_limits *limits = NULL;
    *cfg_out = NULL;
    if (dir && config_path)
        return usage("give DIR or --config FILE, not both");
    if (config_path) {
        if (config_load_file(config_path, cfg_out, &err) != AR_OK)
            return core_error(&err);
        dir = (*cfg_out)->policy_dir;
        limits = &(*cfg_out)->policy;
    }
    if (!dir)
        dir = DEFAULT_POLICY_DIR;
    *dir_out = dir;
    if (policy_set_load(dir, limits, set, &err) != AR_OK)
        return core_error(&err);
    return AIOCTL_OK;
}

static int print_json(json_t *j)
{
    if (json_dumpf(j, stdout, JSON_INDENT(2)) != 0) {
        fputs("aioctl: cannot write the output\n", stderr);
        return AIOCTL_USAGE;
    }
    fputc('\n', stdout);
    return AIOCTL_OK;
}

static const char *str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

/* "allow by refunds.lua, rule refund_small: <reason>"; for a test of validate "valid" or
 * "rejected by refunds.lua, rule r: <reason>" */
static void print_got(const json_t *got)
{
    const char *policy = str(got, "policy");
    if (json_is_boolean(json_object_get(got, "valid"))) {
        if (json_is_true(json_object_get(got, "valid")))
            printf("     got valid (no validate rejected the result)\n");
        else
            printf("     got rejected by %s, rule %s: %s\n", policy[0] ? policy : "the runtime",
                   str(got, "rule"), str(got, "reason"));
        return;
    }
    printf("     got %s by %s%s, rule %s: %s\n", str(got, "verdict"),
           policy[0] ? policy : "the default", policy[0] ? "" : " (no policy had an opinion)",
           str(got, "rule"), str(got, "reason"));
}

static int cmd_test(int argc, char **argv, int json_output)
{
    policy_args a = { .json = json_output };
    int rc = parse_args(argc, argv, 1, 0, &a);
    if (rc != AIOCTL_OK)
        return rc;
    policy_set *set = NULL;
    config *cfg = NULL;
    const char *dir = NULL;
    json_t *report = NULL;
    rc = load_set(a.n_positional ? a.positional[0] : NULL, a.config, &set, &cfg, &dir);
    if (rc != AIOCTL_OK)
        goto out;
    ar_error err;
    ar_error_clear(&err);
    if (policy_run_tests(set, dir, &report, &err) != AR_OK) {
        rc = core_error(&err);
        goto out;
    }
    json_int_t passed = json_integer_value(json_object_get(report, "passed"));
    json_int_t failed = json_integer_value(json_object_get(report, "failed"));
    if (passed + failed == 0) {
        fprintf(stderr, "aioctl: policy test: no tests in %s (tests are files named "
                        "*_test.lua; see policies/README.md)\n", dir);
        rc = AIOCTL_USAGE;
        goto out;
    }
    if (a.json) {
        rc = print_json(report);
    } else {
        const json_t *c;
        size_t i;
        json_array_foreach(json_object_get(report, "cases"), i, c) {
            if (json_is_true(json_object_get(c, "ok"))) {
                printf("PASS %s: %s\n", str(c, "file"), str(c, "name"));
                continue;
            }
            printf("FAIL %s: %s: ", str(c, "file"), str(c, "name"));
            const json_t *diff;
            size_t k;
            json_array_foreach(json_object_get(c, "differences"), k, diff)
                printf("%s%s", k ? "; " : "", json_string_value(diff));
            printf("\n");
            print_got(json_object_get(c, "got"));
        }
        printf("%lld passed, %lld failed\n", (long long)passed, (long long)failed);
    }
    if (rc == AIOCTL_OK && failed)
        rc = AIOCTL_NOT_SUCCEEDED;
out:
    json_decref(report);
    policy_set_free(set);
    config_free(cfg);
    return rc;
}

static void print_decision(const json_t *d)
{
    const char *policy = str(d, "policy");
    printf("verdict:  %s\n", str(d, "verdict"));
    if (policy[0])
        printf("decided:  %s, rule %s\n", policy, str(d, "rule"));
    else
        printf("decided:  the default, rule %s (no policy had an opinion)\n", str(d, "rule"));
    printf("reason:   %s\n", str(d, "reason"));
    if (strcmp(str(d, "verdict"), "approve") == 0) {
        const json_t *roles = json_object_get(d, "roles");
        printf("approval: ");
        if (json_array_size(roles) == 0) {
            printf("anyone who may approve");
        } else {
            const json_t *r;
            size_t i;
            printf("role ");
            json_array_foreach(roles, i, r)
                printf("%s%s", i ? " or " : "", json_string_value(r));
        }
        if (json_is_true(json_object_get(d, "four_eyes")))
            printf("; four eyes (not the submitter)");
        if (json_is_integer(json_object_get(d, "expires_in")))
            printf("; expires in %lld s",
                   (long long)json_integer_value(json_object_get(d, "expires_in")));
        if (json_is_string(json_object_get(d, "summary")))
            printf("; summary \"%s\"", str(d, "summary"));
        printf("\n");
    }
    const json_t *votes = json_object_get(d, "votes");
    const json_t *v;
    size_t i;
    int width = 0;
    json_array_foreach(votes, i, v) {
        int len = (int)strlen(str(v, "file"));
        width = len > width ? len : width;
    }
    printf("votes:%s\n", json_array_size(votes) ? "" : "    none (no policy files)");
    json_array_foreach(votes, i, v) {
        if (json_is_null(json_object_get(v, "verdict"))) {
            printf("  %-*s  abstain\n", width, str(v, "file"));
            continue;
        }
        printf("  %-*s  %-7s", width, str(v, "file"), str(v, "verdict"));
        if (json_is_string(json_object_get(v, "rule")))
            printf("  %s", str(v, "rule"));
        if (json_is_string(json_object_get(v, "reason")))
            printf("%s %s", json_is_string(json_object_get(v, "rule")) ? ":" : "",
                   str(v, "reason"));
        printf("\n");
    }
}

/* The value each declared counter had for the decision: given with --counter, else 0. A new
 * object; NULL when the set declares none (or no memory). */
static json_t *counters_used(const policy_set *set, const json_t *given)
{
    size_t n;
    const counter_def *defs = policy_set_counters(set, &n);
    json_t *used = n ? json_object() : NULL;
    for (size_t i = 0; used && i < n; i++) {
        json_t *v = json_object_get(given, defs[i].name);
        if (json_object_set_new(used, defs[i].name, v ? json_incref(v) : json_integer(0))) {
            json_decref(used);
            used = NULL;
        }
    }
    return used;
}

/* "counters: refunded_24h = 950 (given), listings_7d = 0" */
static void print_counters(const json_t *used, const json_t *given)
{
    const char *name;
    const json_t *v;
    int first = 1;
    printf("counters:");
    json_object_foreach((json_t *)used, name, v) {
        printf("%s %s = %.15g%s", first ? "" : ",", name, json_number_value(v),
               json_object_get(given, name) ? " (given)" : "");
        first = 0;
    }
    printf("\n");
}

static int cmd_eval(int argc, char **argv, int json_output)
{
    policy_args a = { .json = json_output };
    json_t *action = NULL;
    policy_set *set = NULL;
    config *cfg = NULL;
    const char *dir = NULL;
    json_t *decision = NULL;
    int rc = parse_args(argc, argv, 2, 1, &a);
    if (rc != AIOCTL_OK)
        goto out;
    if (a.n_positional < 1) {
        rc = usage("eval: missing ACTION_JSON (a JSON object; '-' reads it from stdin)");
        goto out;
    }
    json_error_t jerr;
    action = strcmp(a.positional[0], "-") == 0 ? json_loadf(stdin, 0, &jerr)
                                               : json_loads(a.positional[0], 0, &jerr);
    if (!action) {
        rc = usage("eval: ACTION_JSON is not valid JSON: %s (at line %d, column %d)",
                   jerr.text, jerr.line, jerr.column);
        goto out;
    }
    if (!json_is_object(action)) {
        rc = usage("eval: ACTION_JSON must be a JSON object, like "
                   "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"irreversible\","
                   "\"input\":{}}");
        goto out;
    }
    rc = load_set(a.n_positional > 1 ? a.positional[1] : NULL, a.config, &set, &cfg, &dir);
    if (rc != AIOCTL_OK)
        goto out;
    ar_error err;
    ar_error_clear(&err);
    if (policy_eval(set, action, a.counters, &decision, &err) != AR_OK) {
        rc = core_error(&err);
        goto out;
    }
    /* show what ctx.counter returned, when the policies declare counters */
    json_t *used = counters_used(set, a.counters);
    if (a.json) {
        if (used)
            json_object_set(decision, "counters", used);
        rc = print_json(decision);
    } else {
        print_decision(decision);
        if (used)
            print_counters(used, a.counters);
    }
    json_decref(used);
out:
    json_decref(decision);
    json_decref(action);
    json_decref(a.counters);
    policy_set_free(set);
    config_free(cfg);
    return rc;
}

int aioctl_policy_command(int argc, char **argv, int json_output)
{
    if (argc < 1)
        return usage("missing subcommand (test, eval)");
    if (strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0 ||
        strcmp(argv[0], "help") == 0) {
        fputs(policy_usage, stdout);
        return AIOCTL_OK;
    }
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(policy_usage, stdout);
            return AIOCTL_OK;
        }
    if (strcmp(argv[0], "test") == 0)
        return cmd_test(argc, argv, json_output);
    if (strcmp(argv[0], "eval") == 0)
        return cmd_eval(argc, argv, json_output);
    return usage("unknown subcommand '%s' (test, eval)", argv[0]);
}
