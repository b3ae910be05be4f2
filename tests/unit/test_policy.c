/* test_policy.c - the Lua policy sandbox: verdicts, defaults, limits, escapes, leaks, log();
 * guardrail counter declarations and ctx.counter; validate; the policy tests runner,
 * policy_eval and the shipped policies. */
#include "test_main.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "policy.h"

#define FIXTURES AIORUN_SOURCE_DIR "/tests/unit/policies/"

/* ---- helpers ------------------------------------------------------------------------------ */

static policy_set *load_case_limits(const char *name, const policy_limits *limits)
{
    char path[1024];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    policy_set *set = NULL;
    ar_error err;
    ar_error_clear(&err);
    int rc = policy_set_load(path, limits, &set, &err);
    if (rc != AR_OK)
        print_error("policy_set_load(%s): %s: %s\n", name, err.code, err.message);
    assert_int_equal(rc, AR_OK);
    assert_non_null(set);
    return set;
}

static policy_set *load_case(const char *name)
{
    return load_case_limits(name, NULL);
}

static policy_worker *new_worker(const policy_set *set)
{
    policy_worker *w = NULL;
    ar_error err;
    assert_int_equal(policy_worker_new(set, &w, &err), AR_OK);
    assert_non_null(w);
    return w;
}

/* Decide; the caller owns d->votes (json_decref). */
static void decide_votes(policy_worker *w, const char *json, policy_decision *d)
{
    json_error_t jerr;
    json_t *action = json_loads(json, 0, &jerr);
    if (!action)
        print_error("bad test JSON: %s\n", jerr.text);
    assert_non_null(action);
    memset(d, 0x5a, sizeof *d); /* policy_decide must fill every field */
    assert_int_equal(policy_decide(w, action, d), AR_OK);
    json_decref(action);
    assert_non_null(d->votes);
    assert_true(json_is_array(d->votes));
    assert_in_range(d->n_roles, 0, POLICY_MAX_ROLES);
    assert_in_range(d->four_eyes, 0, 1);
    assert_in_range(d->policy_error, 0, 1);
    assert_true(d->expires_in_s >= 0 && d->expires_in_s <= 30 * 24 * 3600);
    assert_true(memchr(d->summary, '\0', sizeof d->summary) != NULL);
    assert_true(d->duration_ns != 0x5a5a5a5a5a5a5a5aull);
}

/* Decide, dropping the votes. */
static void decide_text(policy_worker *w, const char *json, policy_decision *d)
{
    decide_votes(w, json, d);
    json_decref(d->votes);
    d->votes = NULL;
}

/* Decide on an action whose input is {key: value} (value is a JSON string literal). */
static void decide_input(policy_worker *w, const char *key, const char *value,
                         policy_decision *d)
{
    char json[512];
    snprintf(json, sizeof json,
             "{\"connector\":\"test\",\"action\":\"t\",\"effect\":\"read\",\"input\":{\"%s\":%s}}",
             key, value);
    decide_text(w, json, d);
}

static void assert_policy_error(const policy_decision *d, const char *file, const char *needle)
{
    if (d->verdict != POLICY_DENY || !d->policy_error || !strstr(d->reason, needle))
        print_error("decision: verdict %d policy_error %d rule %s file %s reason %s\n",
                    d->verdict, d->policy_error, d->rule, d->file, d->reason);
    assert_int_equal(d->verdict, POLICY_DENY);
    assert_int_equal(d->policy_error, 1);
    assert_string_equal(d->rule, "policy_error");
    assert_string_equal(d->file, file);
    assert_non_null(strstr(d->reason, needle));
}

static void assert_allow(const policy_decision *d, const char *rule, const char *reason)
{
    if (d->verdict != POLICY_ALLOW || strcmp(d->rule, rule) != 0)
        print_error("decision: verdict %d policy_error %d rule %s file %s reason %s\n",
                    d->verdict, d->policy_error, d->rule, d->file, d->reason);
    assert_int_equal(d->verdict, POLICY_ALLOW);
    assert_int_equal(d->policy_error, 0);
    assert_string_equal(d->rule, rule);
    if (reason)
        assert_string_equal(d->reason, reason);
}

static int write_file(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void remove_dir(const char *dir, const char *const *names)
{
    char path[1024];
    for (; *names; names++) {
        snprintf(path, sizeof path, "%s/%s", dir, *names);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- verdicts and defaults ------------------------------------------------------------------ */

static void test_allow_deny_order(void **state)
{
    (void)state;
    policy_set *set = load_case("order");
    assert_int_equal(policy_set_count(set), 4); /* notes.txt is not a policy */
    policy_worker *w = new_worker(set);
    policy_decision d;

    decide_input(w, "none", "true", &d);
    assert_allow(&d, "ten_allow", "allowed by ten");
    assert_string_equal(d.file, "10_allow.lua");

    /* 10 abstains: the first allow is now 15's */
    decide_input(w, "abstain", "true", &d);
    assert_allow(&d, "fifteen_allow", "allowed by fifteen");
    assert_string_equal(d.file, "15_allow.lua");

    /* deny wins over the allows, and the first deny in file order decides */
    decide_input(w, "deny", "true", &d);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_int_equal(d.policy_error, 0);
    assert_string_equal(d.rule, "twenty_deny");
    assert_string_equal(d.reason, "denied by twenty");
    assert_string_equal(d.file, "20_deny.lua");

    /* a deny without reason or rule gets both filled in */
    decide_input(w, "deny30", "true", &d);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_int_equal(d.policy_error, 0);
    assert_string_equal(d.rule, "30_deny");
    assert_string_equal(d.reason, "denied by policy 30_deny.lua");
    assert_string_equal(d.file, "30_deny.lua");

    policy_worker_free(w);
    policy_set_free(set);
}

static void assert_default(const policy_decision *d, policy_verdict verdict, const char *reason)
{
    if (d->verdict != verdict || strcmp(d->reason, reason) != 0)
        print_error("decision: verdict %d rule %s reason %s\n", d->verdict, d->rule, d->reason);
    assert_int_equal(d->verdict, verdict);
    assert_int_equal(d->policy_error, 0);
    assert_string_equal(d->rule, "default");
    assert_string_equal(d->file, "");
    assert_string_equal(d->reason, reason);
    assert_int_equal(d->n_roles, 0);
    assert_int_equal(d->expires_in_s, 0);
    assert_string_equal(d->summary, "");
    assert_int_equal(d->four_eyes, 0);
}

static const char *const effect_actions[] = {
    "{\"connector\":\"c\",\"action\":\"a\",\"effect\":\"read\",\"input\":{}}",
    "{\"connector\":\"c\",\"action\":\"a\",\"effect\":\"write\",\"input\":{}}",
    "{\"connector\":\"c\",\"action\":\"a\",\"effect\":\"irreversible\",\"input\":{}}",
    "{\"connector\":\"c\",\"action\":\"a\",\"input\":{}}",
    "{\"connector\":\"c\",\"action\":\"a\",\"effect\":\"sideways\",\"input\":{}}",
    "{\"connector\":\"c\",\"action\":\"a\",\"effect\":5,\"input\":{}}",
};

static void test_default_read_and_write(void **state)
{
    (void)state;
    policy_set *set = load_case("abstain");
    policy_worker *w = new_worker(set);
    policy_decision d;

    decide_votes(w, effect_actions[0], &d);
    assert_default(&d, POLICY_ALLOW, "no policy had an opinion; read actions are allowed by default");
    /* the abstention is on the record */
    assert_int_equal(json_array_size(d.votes), 1);
    json_t *vote = json_array_get(d.votes, 0);
    assert_string_equal(json_string_value(json_object_get(vote, "file")), "abstain.lua");
    assert_true(json_is_null(json_object_get(vote, "verdict")));
    assert_true(json_is_null(json_object_get(vote, "rule")));
    assert_true(json_is_null(json_object_get(vote, "reason")));
    json_decref(d.votes);

    decide_text(w, effect_actions[1], &d);
    assert_default(&d, POLICY_APPROVE,
                   "no policy had an opinion; write actions need approval by default");
    decide_text(w, effect_actions[2], &d);
    assert_default(&d, POLICY_APPROVE,
                   "no policy had an opinion; irreversible actions need approval by default");
    /* a missing or unknown effect gets the write default, and the reason says so */
    for (size_t i = 3; i < sizeof effect_actions / sizeof *effect_actions; i++) {
        decide_text(w, effect_actions[i], &d);
        assert_default(&d, POLICY_APPROVE,
                       "no policy had an opinion and the action's effect is missing or unknown; "
                       "write actions need approval by default");
    }

    policy_worker_free(w);
    policy_set_free(set);
}

static void test_configured_defaults(void **state)
{
    (void)state;
    policy_limits limits = { .default_read = POLICY_DENY + 1, .default_write = POLICY_ALLOW + 1,
                             .default_irreversible = POLICY_SUGGEST + 1 };
    policy_set *set = load_case_limits("abstain", &limits);
    policy_worker *w = new_worker(set);
    policy_decision d;
    decide_text(w, effect_actions[0], &d);
    assert_default(&d, POLICY_DENY,
                   "no policy had an opinion; read actions are denied by the configured default");
    decide_text(w, effect_actions[1], &d);
    assert_default(&d, POLICY_ALLOW,
                   "no policy had an opinion; write actions are allowed by the configured default");
    decide_text(w, effect_actions[2], &d);
    assert_default(&d, POLICY_SUGGEST,
                   "no policy had an opinion; irreversible actions are only recorded as "
                   "suggestions by the configured default");
    decide_text(w, effect_actions[4], &d); /* unknown effect: the (configured) write default */
    assert_default(&d, POLICY_ALLOW,
                   "no policy had an opinion and the action's effect is missing or unknown; "
                   "write actions are allowed by the configured default");
    policy_worker_free(w);
    policy_set_free(set);

    /* only the write default configured: the others keep the built-in ones */
    limits = (policy_limits){ .default_write = POLICY_APPROVE + 1 };
    set = load_case_limits("abstain", &limits);
    w = new_worker(set);
    decide_text(w, effect_actions[0], &d);
    assert_default(&d, POLICY_ALLOW, "no policy had an opinion; read actions are allowed by default");
    decide_text(w, effect_actions[1], &d);
    assert_default(&d, POLICY_APPROVE,
                   "no policy had an opinion; write actions need approval by the configured default");
    decide_text(w, effect_actions[2], &d);
    assert_default(&d, POLICY_APPROVE,
                   "no policy had an opinion; irreversible actions need approval by default");
    policy_worker_free(w);
    policy_set_free(set);

    /* a default that is no verdict is refused at load */
    const int bad[] = { -1, POLICY_DENY + 2 };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        limits = (policy_limits){ .default_irreversible = bad[i] };
        ar_error err;
        ar_error_clear(&err);
        set = (policy_set *)1;
        assert_int_equal(policy_set_load(FIXTURES "abstain", &limits, &set, &err), AR_E_INVALID);
        assert_null(set);
        assert_non_null(strstr(err.message, "default verdict"));
    }
}

static void test_empty_dir_and_version(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-policy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    policy_set *set = NULL;
    ar_error err;
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    assert_int_equal(policy_set_count(set), 0);
    const char *empty_version = policy_set_version(set);
    assert_int_equal(strlen(empty_version), 16);
    char saved[17];
    snprintf(saved, sizeof saved, "%s", empty_version);

    policy_worker *w = new_worker(set);
    policy_decision d;
    decide_text(w, "{\"effect\":\"read\"}", &d);
    assert_allow(&d, "default", NULL);
    decide_votes(w, "{\"effect\":\"write\"}", &d);
    assert_int_equal(d.verdict, POLICY_APPROVE);
    assert_string_equal(d.rule, "default");
    assert_int_equal(json_array_size(d.votes), 0);
    json_decref(d.votes);
    policy_worker_free(w);
    policy_set_free(set);

    /* hidden files and other extensions are ignored; a real policy changes the version */
    assert_int_equal(write_file(dir, ".#lock.lua", "this is not lua"), 0);
    assert_int_equal(write_file(dir, "readme.md", "# notes"), 0);
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    assert_int_equal(policy_set_count(set), 0);
    assert_string_equal(policy_set_version(set), saved);
    policy_set_free(set);

    assert_int_equal(write_file(dir, "a.lua", "function decide(a) return nil end\n"), 0);
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    assert_int_equal(policy_set_count(set), 1);
    assert_string_not_equal(policy_set_version(set), saved);
    snprintf(saved, sizeof saved, "%s", policy_set_version(set));
    for (int i = 0; i < 16; i++)
        assert_non_null(strchr("0123456789abcdef", saved[i]));
    policy_set_free(set);

    /* same sources, same version; a one-byte edit, another */
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    assert_string_equal(policy_set_version(set), saved);
    policy_set_free(set);
    assert_int_equal(write_file(dir, "a.lua", "function decide(b) return nil end\n"), 0);
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    assert_string_not_equal(policy_set_version(set), saved);
    policy_set_free(set);

    const char *names[] = { ".#lock.lua", "readme.md", "a.lua", NULL };
    remove_dir(dir, names);
}

static void test_default_lua(void **state)
{
    (void)state;
    policy_set *set = NULL;
    ar_error err;
    assert_int_equal(policy_set_load(AIORUN_SOURCE_DIR "/policies", NULL, &set, &err), AR_OK);
    assert_true(policy_set_count(set) >= 1);
    policy_worker *w = new_worker(set);
    policy_decision d;

    decide_text(w, "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\","
                   "\"input\":{\"message\":\"hello\"},\"proposer\":{\"kind\":\"ai\","
                   "\"confidence\":0.9}}", &d);
    assert_allow(&d, "echo_allowed", NULL);
    assert_string_equal(d.file, "default.lua");

    decide_text(w, "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\","
                   "\"input\":{\"message\":\"this is Forbidden\"}}", &d);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_int_equal(d.policy_error, 0);
    assert_string_equal(d.rule, "echo_forbidden_word");
    assert_non_null(strstr(d.reason, "forbidden"));

    char *big = malloc(6000);
    assert_non_null(big);
    int n = snprintf(big, 6000, "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\","
                                "\"input\":{\"message\":\"");
    memset(big + n, 'a', 5000);
    snprintf(big + n + 5000, 6000 - (size_t)n - 5000, "\"}}");
    decide_text(w, big, &d);
    free(big);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_string_equal(d.rule, "echo_too_long");

    decide_text(w, "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\","
                   "\"input\":{\"message\":\"hi\"},\"proposer\":{\"kind\":\"ai\","
                   "\"confidence\":0.1}}", &d);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_string_equal(d.rule, "low_confidence");

    /* actions no shipped policy covers: no opinion, so the defaults apply */
    decide_text(w, "{\"connector\":\"shop\",\"action\":\"list\",\"effect\":\"read\"}", &d);
    assert_allow(&d, "default", NULL);
    decide_text(w, "{\"connector\":\"crm\",\"action\":\"update\",\"effect\":\"write\"}", &d);
    assert_int_equal(d.verdict, POLICY_APPROVE);
    assert_string_equal(d.rule, "default");

    policy_worker_free(w);
    policy_set_free(set);
}

/* ---- load-time errors ------------------------------------------------------------------------ */

static void expect_invalid(const char *name, const char *file, const char *needle)
{
    char path[1024];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    policy_set *set = (policy_set *)1;
    ar_error err;
    ar_error_clear(&err);
    int rc = policy_set_load(path, NULL, &set, &err);
    if (rc != AR_E_INVALID || !strstr(err.message, file) || !strstr(err.message, needle))
        print_error("%s: rc %d code %s message %s\n", name, rc, err.code, err.message);
    assert_int_equal(rc, AR_E_INVALID);
    assert_null(set);
    assert_string_equal(err.code, "policy_invalid");
    assert_non_null(strstr(err.message, file));
    assert_non_null(strstr(err.message, needle));
}

static void test_syntax_error(void **state)
{
    (void)state;
    expect_invalid("syntax_error", "b_bad.lua", "b_bad.lua:3:");
}

static void test_missing_decide(void **state)
{
    (void)state;
    expect_invalid("no_decide", "nodecide.lua", "decide");
}

static void test_load_error(void **state)
{
    (void)state;
    expect_invalid("load_error", "toplevel.lua", "top-level failure");
}

static void test_load_refuses_binary_and_large(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-policy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    ar_error err;
    policy_set *set = NULL;

    /* a precompiled chunk (starts with ESC "Lua") is refused: text only */
    assert_int_equal(write_file(dir, "bin.lua", "\x1bLua\x54"), 0);
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_E_INVALID);
    assert_string_equal(err.code, "policy_invalid");
    assert_non_null(strstr(err.message, "bin.lua"));
    assert_null(set);
    char path[1024];
    snprintf(path, sizeof path, "%s/bin.lua", dir);
    unlink(path);

    /* over 1 MiB */
    size_t size = ((size_t)1 << 20) + 100;
    char *text = malloc(size + 1);
    assert_non_null(text);
    memset(text, ' ', size);
    memcpy(text, "function decide(a) end", 22);
    text[size] = '\0';
    assert_int_equal(write_file(dir, "big.lua", text), 0);
    free(text);
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_E_INVALID);
    assert_non_null(strstr(err.message, "big.lua"));
    assert_non_null(strstr(err.message, "larger"));

    const char *names[] = { "bin.lua", "big.lua", NULL };
    remove_dir(dir, names);

    assert_int_not_equal(policy_set_load("/nonexistent/aiorun-policies", NULL, &set, &err), AR_OK);
    assert_null(set);
    assert_string_equal(err.code, "policy_io");
}

/* ---- limits ---------------------------------------------------------------------------------- */

static const policy_limits bomb_limits = {
    .memory_bytes = (size_t)2 << 20, .instructions = 50000000, .timeout_ms = 20000
};

static void test_memory_bombs(void **state)
{
    (void)state;
    policy_set *set = load_case_limits("bombs", &bomb_limits);
    policy_worker *w = new_worker(set);
    policy_decision d;
    const char *kinds[] = { "\"table\"", "\"string\"", "\"pcall_memory\"" };
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        decide_input(w, "kind", kinds[i], &d);
        assert_policy_error(&d, "bombs.lua", "memory limit exceeded");
        assert_string_equal(d.reason, "policy bombs.lua failed: memory limit exceeded");
        decide_input(w, "kind", "\"normal\"", &d);
        assert_allow(&d, "normal", "still works");
    }
    /* string.rep far beyond the cap: an error either way, and the state survives */
    decide_input(w, "kind", "\"rep\"", &d);
    assert_policy_error(&d, "bombs.lua", "policy bombs.lua failed: ");
    decide_input(w, "kind", "\"recursion\"", &d);
    assert_policy_error(&d, "bombs.lua", "policy bombs.lua failed: ");
    decide_input(w, "kind", "\"normal\"", &d);
    assert_allow(&d, "normal", "still works");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_instruction_budget(void **state)
{
    (void)state;
    const policy_limits limits = { .instructions = 1000000, .timeout_ms = 60000 };
    policy_set *set = load_case_limits("bombs", &limits);
    policy_worker *w = new_worker(set);
    policy_decision d;
    const char *kinds[] = {
        "\"loop\"", "\"pcall_loop\"", "\"xpcall_loop\"", "\"close\"", "\"redos_find\"",
        "\"redos_match\"", "\"redos_gsub\"", "\"redos_gmatch\"", "\"redos_balance\"",
        "\"redos_backref\"", "\"redos_set\"",
    };
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        decide_input(w, "kind", kinds[i], &d);
        if (!strstr(d.reason, "instruction budget exceeded"))
            print_error("kind %s: %s\n", kinds[i], d.reason);
        assert_policy_error(&d, "bombs.lua", "instruction budget exceeded");
        assert_string_equal(d.reason, "policy bombs.lua failed: instruction budget exceeded");
        decide_input(w, "kind", "\"normal\"", &d);
        assert_allow(&d, "normal", "still works");
    }
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_deadline(void **state)
{
    (void)state;
    const policy_limits limits = { .instructions = UINT64_MAX / 2, .timeout_ms = 20 };
    policy_set *set = load_case_limits("bombs", &limits);
    policy_worker *w = new_worker(set);
    policy_decision d;
    decide_input(w, "kind", "\"loop\"", &d);
    assert_policy_error(&d, "bombs.lua", "deadline exceeded");
    decide_input(w, "kind", "\"pcall_loop\"", &d);
    assert_policy_error(&d, "bombs.lua", "deadline exceeded");
    /* pattern matching runs in C, out of the count hook's sight: it checks the deadline too */
    decide_input(w, "kind", "\"redos_find\"", &d);
    assert_policy_error(&d, "bombs.lua", "deadline exceeded");
    decide_input(w, "kind", "\"redos_gsub\"", &d);
    assert_policy_error(&d, "bombs.lua", "deadline exceeded");
    decide_input(w, "kind", "\"normal\"", &d);
    assert_allow(&d, "normal", "still works");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_worker_memory_too_small(void **state)
{
    (void)state;
    const policy_limits limits = { .memory_bytes = 4096 };
    policy_set *set = NULL;
    ar_error err;
    assert_int_equal(policy_set_load(FIXTURES "order", &limits, &set, &err), AR_E_NOMEM);
    assert_null(set);
    assert_string_equal(err.code, "policy_memory");
}

/* ---- sandbox -------------------------------------------------------------------------------- */

static void test_escape_attempts(void **state)
{
    (void)state;
    policy_set *set = load_case("escapes");
    policy_worker *w = new_worker(set);
    policy_decision d;
    const char *attempts[] = {
        "io", "os_execute", "os_exit", "os_getenv", "os_remove", "require", "package", "debug",
        "load", "loadfile", "dofile", "string_dump", "string_dump_method", "collectgarbage",
        "coroutine", "print", "warn", "randomseed", "rawset_proxy", "setmetatable_proxy",
        "setmetatable_env", "getmetatable_proxy", "string_metatable", "assign_library",
        "assign_math", "assign_os", "table_insert_proxy", "gc_metamethod",
    };
    for (size_t i = 0; i < sizeof attempts / sizeof *attempts; i++) {
        char value[64];
        snprintf(value, sizeof value, "\"%s\"", attempts[i]);
        decide_input(w, "attempt", value, &d);
        if (d.verdict != POLICY_DENY || !d.policy_error)
            print_error("attempt %s was not stopped: %s\n", attempts[i], d.reason);
        assert_policy_error(&d, "escape.lua", "policy escape.lua failed: ");
        decide_input(w, "attempt", "\"check\"", &d);
        if (d.verdict != POLICY_ALLOW)
            print_error("after attempt %s: %s\n", attempts[i], d.reason);
        assert_allow(&d, "clean", "nothing leaked");
    }
    /* writes to the libraries name the problem */
    decide_input(w, "attempt", "\"assign_library\"", &d);
    assert_policy_error(&d, "escape.lua", "attempt to modify read-only table");
    decide_input(w, "attempt", "\"setmetatable_proxy\"", &d);
    assert_policy_error(&d, "escape.lua", "protected metatable");
    decide_input(w, "attempt", "\"gc_metamethod\"", &d);
    assert_policy_error(&d, "escape.lua", "__gc");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_no_leak_between_calls(void **state)
{
    (void)state;
    policy_set *set = load_case("leak");
    policy_worker *w = new_worker(set);
    policy_decision d;
    for (int i = 0; i < 3; i++) {
        decide_input(w, "n", "1", &d);
        assert_allow(&d, "leak", "nil,1,nil,nil,nil,nil,nil");
    }
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_garbage_results(void **state)
{
    (void)state;
    policy_set *set = load_case("garbage");
    policy_worker *w = new_worker(set);
    policy_decision d;
    static const struct {
        const char *kind;
        const char *needle;
    } cases[] = {
        { "number", "invalid decision: expected nil or a table, got a number" },
        { "string", "invalid decision: expected nil or a table, got a string" },
        { "boolean", "invalid decision: expected nil or a table, got a boolean" },
        { "func", "invalid decision: expected nil or a table, got a function" },
        { "empty", "invalid decision: verdict is missing" },
        { "maybe", "invalid decision: verdict must be \"allow\", \"deny\", \"approve\" or "
                   "\"suggest\", got \"maybe\"" },
        { "upper", "got \"ALLOW\"" },
        { "nul", "got a string with a NUL byte" },
        { "verdict_number", "got a number" },
        { "bad_reason", "invalid decision: reason must be a string, got a number" },
        { "bad_rule", "invalid decision: rule must be a string, got a table" },
        { "inherited", "invalid decision: verdict is missing" },
        { "error_string", "policy garbage.lua failed: garbage.lua:" },
        { "error_table", "policy garbage.lua failed: error object is a table value" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char value[64];
        snprintf(value, sizeof value, "\"%s\"", cases[i].kind);
        decide_input(w, "kind", value, &d);
        assert_policy_error(&d, "garbage.lua", cases[i].needle);
    }
    decide_input(w, "kind", "\"error_string\"", &d);
    assert_non_null(strstr(d.reason, "boom"));
    decide_input(w, "kind", "\"number\"", &d);
    assert_string_equal(d.reason, "policy garbage.lua returned an invalid decision: expected nil "
                                  "or a table, got a number");

    /* long strings are truncated to the buffers */
    decide_input(w, "kind", "\"long_reason\"", &d);
    assert_int_equal(d.verdict, POLICY_ALLOW);
    assert_int_equal(strlen(d.reason), sizeof d.reason - 1);
    assert_int_equal(strlen(d.rule), sizeof d.rule - 1);
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_action_conversion(void **state)
{
    (void)state;
    policy_set *set = load_case("action");
    policy_worker *w = new_worker(set);
    policy_decision d;
    decide_text(w,
                "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"write\","
                "\"priority\":5,\"proposer\":{\"kind\":\"ai\",\"model\":\"m\","
                "\"confidence\":0.75},\"input\":{\"nested\":{\"list\":[\"a\",\"b\"]},"
                "\"flag\":true,\"off\":false,\"nothing\":null,"
                "\"deep\":{\"a\":{\"b\":{\"c\":42}}},\"holes\":[1,null,3],"
                "\"text\":\"h\\u00e9llo\"}}",
                &d);
    assert_allow(&d, "action_seen",
                 "shop,refund,write,integer,float,0.75,a,b,2,true,false,nil,42,1,nil,3,6");

    /* deeper than 32 levels: denied before any policy runs */
    char deep[512] = "{\"effect\":\"read\",\"input\":";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    decide_text(w, deep, &d);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_string_equal(d.rule, "action_invalid");
    assert_non_null(strstr(d.reason, "nested deeper than 32"));

    /* not an object at all */
    json_t *arr = json_array();
    assert_int_equal(policy_decide(w, arr, &d), AR_OK);
    json_decref(arr);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_string_equal(d.rule, "action_invalid");
    assert_int_equal(json_array_size(d.votes), 0); /* no policy ran */
    json_decref(d.votes);
    memset(&d, 0x5a, sizeof d);
    assert_int_equal(policy_decide(w, NULL, &d), AR_OK);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_int_equal(d.n_roles, 0);
    assert_string_equal(d.summary, "");
    json_decref(d.votes);

    /* a policy reading a missing field errors: that is a deny, not an allow */
    decide_text(w, "{\"effect\":\"read\",\"input\":{}}", &d);
    assert_policy_error(&d, "action.lua", "policy action.lua failed: ");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_stdlib_available(void **state)
{
    (void)state;
    policy_set *set = load_case("stdlib");
    policy_worker *w = new_worker(set);
    policy_decision d;
    decide_input(w, "n", "1", &d);
    assert_allow(&d, "stdlib",
                 "time,1970-01-01,clock,003.1,a-b-c,2,5,true,false,ABC,3,false,integer,1");
    policy_worker_free(w);
    policy_set_free(set);
}

/* The sandbox's own find/match/gmatch/gsub (they run under the budget) agree with stock Lua on
 * every case of patterns.lua, errors included. */
static void test_patterns_match_stock_lua(void **state)
{
    (void)state;
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    if (luaL_dofile(L, FIXTURES "patterns/patterns.lua") != LUA_OK)
        print_error("%s\n", lua_tostring(L, -1));
    lua_getglobal(L, "run_cases");
    assert_int_equal(lua_pcall(L, 0, 1, 0), LUA_OK);
    size_t len;
    const char *stock = lua_tolstring(L, -1, &len);
    assert_true(len > 1000);

    policy_set *set = load_case("patterns");
    policy_worker *w = new_worker(set);
    json_t *action = json_pack("{s:s, s:{s:o}}", "effect", "read", "input", "expected",
                               json_stringn_nocheck(stock, len));
    assert_non_null(action);
    policy_decision d;
    assert_int_equal(policy_decide(w, action, &d), AR_OK);
    json_decref(action);
    json_decref(d.votes);
    lua_close(L);
    assert_allow(&d, "same", "all cases agree");
    policy_worker_free(w);
    policy_set_free(set);
}

/* ---- log() ---------------------------------------------------------------------------------- */

static int log_count;
static char log_last[1024];
static char log_file[256];
static char log_all[8192];

static void counting_log(const char *file, const char *line)
{
    log_count++;
    snprintf(log_last, sizeof log_last, "%s", line);
    snprintf(log_file, sizeof log_file, "%s", file);
    if (strlen(log_all) + strlen(line) + 2 < sizeof log_all) {
        strcat(log_all, line);
        strcat(log_all, "\n");
    }
}

static void test_log_rate_limited(void **state)
{
    (void)state;
    policy_set *set = load_case("log");
    policy_worker *w = new_worker(set);
    policy_decision d;
    policy_set_log(counting_log);
    log_count = 0;
    log_all[0] = '\0';

    decide_input(w, "count", "3", &d);
    assert_int_equal(log_count, 3);
    assert_string_equal(log_last, "line 3 true nil");
    assert_string_equal(log_file, "log.lua");
    assert_int_equal(d.verdict, POLICY_ALLOW); /* abstained on a read action */

    /* at most 20 lines a second: 3 + 30 gives 20, the rest dropped */
    decide_input(w, "count", "30", &d);
    assert_int_equal(log_count, 20);

    /* the next window says how many were dropped */
    usleep(1100 * 1000);
    decide_input(w, "count", "1", &d);
    assert_int_equal(log_count, 22);
    assert_non_null(strstr(log_all, "... 13 lines dropped\n"));
    assert_string_equal(log_last, "line 1 true nil");

    /* long lines are cut at 512 bytes; a line break cannot forge a second line */
    decide_input(w, "long", "true", &d);
    assert_int_equal(strlen(log_last), 512);
    decide_input(w, "newline", "true", &d);
    assert_string_equal(log_last, "one two");

    policy_set_log(NULL);
    policy_worker_free(w);
    policy_set_free(set);
}

/* ---- threads -------------------------------------------------------------------------------- */

static void *thread_decide(void *arg)
{
    const policy_set *set = arg;
    policy_worker *w = NULL;
    if (policy_worker_new(set, &w, NULL) != AR_OK)
        return (void *)1;
    json_t *allow = json_pack("{s:s, s:{s:b}}", "effect", "write", "input", "none", 1);
    json_t *deny = json_pack("{s:s, s:{s:b}}", "effect", "write", "input", "deny", 1);
    intptr_t bad = 0;
    for (int i = 0; i < 300; i++) {
        policy_decision d;
        policy_decide(w, (i & 1) ? deny : allow, &d);
        json_decref(d.votes);
        if (d.verdict != ((i & 1) ? POLICY_DENY : POLICY_ALLOW))
            bad++;
    }
    json_decref(allow);
    json_decref(deny);
    policy_worker_free(w);
    return (void *)bad;
}

static void test_workers_in_threads(void **state)
{
    (void)state;
    policy_set *set = load_case("order");
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, thread_decide, set), 0);
    for (int i = 0; i < 2; i++) {
        void *bad;
        assert_int_equal(pthread_join(t[i], &bad), 0);
        assert_null(bad);
    }
    policy_set_free(set);
}

/* ---- composition, approve fields, votes ------------------------------------------------------ */

/* Decide with the "compose" set: a.lua, b.lua and c.lua each return action.input.<name>.
 * input is the text of the input object's members. */
static void decide_compose(policy_worker *w, const char *input, policy_decision *d, int keep)
{
    char json[4096];
    snprintf(json, sizeof json, "{\"connector\":\"c\",\"action\":\"a\",\"effect\":\"write\","
                                "\"input\":{%s}}", input);
    if (keep)
        decide_votes(w, json, d);
    else
        decide_text(w, json, d);
}

static void assert_decision(const policy_decision *d, policy_verdict verdict, const char *file,
                            const char *rule, const char *reason)
{
    if (d->verdict != verdict || strcmp(d->file, file) != 0 || strcmp(d->rule, rule) != 0 ||
        strcmp(d->reason, reason) != 0)
        print_error("decision: verdict %d policy_error %d rule %s file %s reason %s\n",
                    d->verdict, d->policy_error, d->rule, d->file, d->reason);
    assert_int_equal(d->verdict, verdict);
    assert_int_equal(d->policy_error, 0);
    assert_string_equal(d->file, file);
    assert_string_equal(d->rule, rule);
    assert_string_equal(d->reason, reason);
}

static void test_verdict_names(void **state)
{
    (void)state;
    const char *names[] = { "allow", "approve", "suggest", "deny" };
    const policy_verdict verdicts[] = { POLICY_ALLOW, POLICY_APPROVE, POLICY_SUGGEST,
                                        POLICY_DENY };
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(policy_verdict_from_name(names[i]), verdicts[i]);
        assert_string_equal(policy_verdict_name(verdicts[i]), names[i]);
    }
    const char *unknown[] = { "ALLOW", "", "allowed", "maybe", "deny " };
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++)
        assert_int_equal(policy_verdict_from_name(unknown[i]), -1);
    assert_int_equal(policy_verdict_from_name(NULL), -1);
    assert_null(policy_verdict_name((policy_verdict)(POLICY_DENY + 1)));
    assert_null(policy_verdict_name((policy_verdict)-1));
}

static void test_most_restrictive_wins(void **state)
{
    (void)state;
    policy_set *set = load_case("compose");
    policy_worker *w = new_worker(set);
    policy_decision d;
    static const char *const names[] = { "allow", "approve", "suggest", "deny" };
    /* every pair, in both file orders */
    for (int x = 0; x < 4; x++) {
        for (int y = 0; y < 4; y++) {
            if (x == y)
                continue;
            char input[512];
            snprintf(input, sizeof input,
                     "\"a\":{\"verdict\":\"%s\",\"rule\":\"ra\",\"reason\":\"why a\"},"
                     "\"b\":{\"verdict\":\"%s\",\"rule\":\"rb\",\"reason\":\"why b\"}",
                     names[x], names[y]);
            decide_compose(w, input, &d, 0);
            if (x > y)
                assert_decision(&d, (policy_verdict)x, "a.lua", "ra", "why a");
            else
                assert_decision(&d, (policy_verdict)y, "b.lua", "rb", "why b");
        }
    }
    /* among the votes for the winning verdict, the first in file order speaks */
    decide_compose(w, "\"a\":{\"verdict\":\"allow\",\"rule\":\"ra\"},"
                      "\"b\":{\"verdict\":\"deny\",\"rule\":\"rb\",\"reason\":\"why b\"},"
                      "\"c\":{\"verdict\":\"deny\",\"rule\":\"rc\",\"reason\":\"why c\"}", &d, 0);
    assert_decision(&d, POLICY_DENY, "b.lua", "rb", "why b");
    decide_compose(w, "\"a\":{\"verdict\":\"suggest\",\"rule\":\"ra\",\"reason\":\"why a\"},"
                      "\"b\":{\"verdict\":\"approve\",\"rule\":\"rb\"},"
                      "\"c\":{\"verdict\":\"suggest\",\"rule\":\"rc\"}", &d, 0);
    assert_decision(&d, POLICY_SUGGEST, "a.lua", "ra", "why a");
    decide_compose(w, "\"b\":{\"verdict\":\"approve\",\"rule\":\"rb\",\"reason\":\"why b\"},"
                      "\"c\":{\"verdict\":\"approve\",\"rule\":\"rc\",\"reason\":\"why c\"}", &d, 0);
    assert_decision(&d, POLICY_APPROVE, "b.lua", "rb", "why b");
    /* without rule and reason: the file's stem and a reason naming the file */
    decide_compose(w, "\"c\":{\"verdict\":\"approve\"}", &d, 0);
    assert_decision(&d, POLICY_APPROVE, "c.lua", "c", "approval required by policy c.lua");
    decide_compose(w, "\"b\":{\"verdict\":\"suggest\"}", &d, 0);
    assert_decision(&d, POLICY_SUGGEST, "b.lua", "b", "suggested only by policy b.lua");
    decide_compose(w, "\"a\":{\"verdict\":\"allow\"},\"b\":{\"verdict\":\"allow\"}", &d, 0);
    assert_decision(&d, POLICY_ALLOW, "a.lua", "a", "allowed by policy a.lua");
    /* one allow among abstentions decides, even for a write */
    decide_compose(w, "\"c\":{\"verdict\":\"allow\",\"rule\":\"rc\",\"reason\":\"fine\"}", &d, 0);
    assert_decision(&d, POLICY_ALLOW, "c.lua", "rc", "fine");

    /* a failing policy is a deny: it beats every other verdict but a deny earlier in order */
    decide_compose(w, "\"a\":{\"verdict\":\"suggest\"},\"b\":{\"verdict\":\"approve\"},"
                      "\"fail\":\"c\"", &d, 0);
    assert_policy_error(&d, "c.lua", "policy c.lua failed: c.lua:");
    decide_compose(w, "\"a\":{\"verdict\":\"deny\",\"rule\":\"ra\",\"reason\":\"no\"},"
                      "\"fail\":\"b\"", &d, 0);
    assert_decision(&d, POLICY_DENY, "a.lua", "ra", "no");
    decide_compose(w, "\"fail\":\"a\",\"b\":{\"verdict\":\"deny\",\"rule\":\"rb\"}", &d, 0);
    assert_policy_error(&d, "a.lua", "broke on purpose");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_approve_fields_merged(void **state)
{
    (void)state;
    policy_set *set = load_case("compose");
    policy_worker *w = new_worker(set);
    policy_decision d;

    decide_compose(w,
                   "\"a\":{\"verdict\":\"approve\",\"rule\":\"ra\",\"reason\":\"why a\","
                   "\"roles\":[\"ops\",\"finance\",\"ops\"],\"expires_in\":3600,"
                   "\"four_eyes\":false},"
                   "\"b\":{\"verdict\":\"approve\",\"roles\":[\"finance\",\"sec.lead:eu-1\"],"
                   "\"expires_in\":600,\"summary\":\"refund 40 EUR\",\"four_eyes\":true},"
                   "\"c\":{\"verdict\":\"approve\",\"summary\":\"not this one\","
                   "\"expires_in\":7200}",
                   &d, 0);
    assert_decision(&d, POLICY_APPROVE, "a.lua", "ra", "why a");
    assert_int_equal(d.n_roles, 3); /* c named none: the union is still only the named ones */
    assert_string_equal(d.roles[0], "ops");
    assert_string_equal(d.roles[1], "finance");
    assert_string_equal(d.roles[2], "sec.lead:eu-1");
    assert_int_equal(d.expires_in_s, 600);
    assert_int_equal(d.four_eyes, 1);
    assert_string_equal(d.summary, "refund 40 EUR");

    /* no roles named anywhere: any approver; no expiry, no summary, no four-eyes */
    decide_compose(w, "\"a\":{\"verdict\":\"approve\",\"roles\":{}},"
                      "\"b\":{\"verdict\":\"approve\",\"four_eyes\":false}", &d, 0);
    assert_int_equal(d.verdict, POLICY_APPROVE);
    assert_int_equal(d.n_roles, 0);
    assert_int_equal(d.expires_in_s, 0);
    assert_int_equal(d.four_eyes, 0);
    assert_string_equal(d.summary, "");

    /* a float with a whole value is a whole number of seconds; the bounds are allowed */
    decide_compose(w, "\"a\":{\"verdict\":\"approve\",\"expires_in\":2592000},"
                      "\"b\":{\"verdict\":\"approve\",\"expires_in\":60.0}", &d, 0);
    assert_int_equal(d.expires_in_s, 60);
    decide_compose(w, "\"a\":{\"verdict\":\"approve\",\"expires_in\":1}", &d, 0);
    assert_int_equal(d.expires_in_s, 1);

    /* past POLICY_MAX_ROLES in the union: the first ones in file order (fewer approvers) */
    decide_compose(w, "\"a\":{\"verdict\":\"approve\",\"roles\":[\"r1\",\"r2\",\"r3\",\"r4\","
                      "\"r5\"]},\"b\":{\"verdict\":\"approve\",\"roles\":[\"r5\",\"r6\",\"r7\","
                      "\"r8\",\"r9\",\"r10\"]}", &d, 0);
    assert_int_equal(d.n_roles, POLICY_MAX_ROLES);
    assert_string_equal(d.roles[0], "r1");
    assert_string_equal(d.roles[7], "r8");

    /* the approve fields only come with an approve decision */
    const char *outranked[] = {
        "\"a\":{\"verdict\":\"approve\",\"roles\":[\"ops\"],\"expires_in\":60,\"summary\":\"s\","
        "\"four_eyes\":true},\"b\":{\"verdict\":\"deny\"}",
        "\"a\":{\"verdict\":\"approve\",\"roles\":[\"ops\"],\"expires_in\":60,\"summary\":\"s\","
        "\"four_eyes\":true},\"c\":{\"verdict\":\"suggest\",\"summary\":\"t\"}",
        "\"a\":{\"verdict\":\"allow\",\"roles\":[\"ops\"],\"expires_in\":60,\"summary\":\"s\","
        "\"four_eyes\":true}",
    };
    for (size_t i = 0; i < sizeof outranked / sizeof *outranked; i++) {
        decide_compose(w, outranked[i], &d, 0);
        assert_int_not_equal(d.verdict, POLICY_APPROVE);
        assert_int_equal(d.n_roles, 0);
        assert_int_equal(d.expires_in_s, 0);
        assert_int_equal(d.four_eyes, 0);
        assert_string_equal(d.summary, "");
    }

    /* a long summary is cut to the buffer */
    char input[2048];
    int n = snprintf(input, sizeof input, "\"a\":{\"verdict\":\"approve\",\"summary\":\"");
    memset(input + n, 's', 1000);
    snprintf(input + n + 1000, sizeof input - (size_t)n - 1000, "\"}");
    decide_compose(w, input, &d, 0);
    assert_int_equal(strlen(d.summary), sizeof d.summary - 1);
    /* cut inside a multi-byte character: the partial character is dropped */
    n = snprintf(input, sizeof input, "\"a\":{\"verdict\":\"approve\",\"summary\":\"s");
    for (int i = 0; i < 300; i++)
        n += snprintf(input + n, sizeof input - (size_t)n, "\\u00e9");
    snprintf(input + n, sizeof input - (size_t)n, "\"}");
    decide_compose(w, input, &d, 0);
    assert_int_equal(strlen(d.summary), sizeof d.summary - 1); /* "s" + 255 "é" */
    decide_compose(w, "\"a\":{\"verdict\":\"approve\",\"summary\":\"\\u00e9\"}", &d, 0);
    assert_string_equal(d.summary, "\xc3\xa9");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_field_validation(void **state)
{
    (void)state;
    policy_set *set = load_case("compose");
    policy_worker *w = new_worker(set);
    policy_decision d;
    static const struct {
        const char *fields; /* added to {"verdict":"approve"} */
        const char *needle;
    } cases[] = {
        { "\"reason\":5", "reason must be a string, got a number" },
        { "\"rule\":true", "rule must be a string, got a boolean" },
        { "\"roles\":\"ops\"", "roles must be an array of strings, got a string" },
        { "\"roles\":true", "roles must be an array of strings, got a boolean" },
        { "\"roles\":[\"ops\",1]", "roles[2] must be a string, got a number" },
        { "\"roles\":[[\"ops\"]]", "roles[1] must be a string, got a table" },
        { "\"roles\":[\"ops\",null,\"dev\"]", "roles must be an array of strings (keys 1, 2, ... only)" },
        { "\"roles\":{\"x\":\"ops\"}", "roles must be an array of strings (keys 1, 2, ... only)" },
        { "\"roles\":[\"\"]", "roles[1] is not a valid role name (1 to 63 of A-Z a-z 0-9 _ . : -)" },
        { "\"roles\":[\"ops team\"]", "roles[1] is not a valid role name" },
        { "\"roles\":[\"ops\",\"a/b\"]", "roles[2] is not a valid role name" },
        { "\"roles\":[\"\\u00e9\"]", "roles[1] is not a valid role name" },
        { "\"roles\":[\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]",
          "roles[1] is not a valid role name" }, /* 64 characters */
        { "\"roles\":[\"r1\",\"r2\",\"r3\",\"r4\",\"r5\",\"r6\",\"r7\",\"r8\",\"r9\"]",
          "roles: at most 8 roles may be named" },
        { "\"expires_in\":0", "expires_in must be a whole number of seconds from 1 to 2592000 "
                              "(30 days), got 0" },
        { "\"expires_in\":-5", "got -5" },
        { "\"expires_in\":2592001", "got 2592001" },
        { "\"expires_in\":1.5", "got 1.5" },
        { "\"expires_in\":\"60\"", "expires_in must be a number of seconds, got a string" },
        { "\"expires_in\":{}", "expires_in must be a number of seconds, got a table" },
        { "\"summary\":5", "summary must be a string, got a number" },
        { "\"summary\":[\"x\"]", "summary must be a string, got a table" },
        { "\"four_eyes\":\"yes\"", "four_eyes must be a boolean, got a string" },
        { "\"four_eyes\":1", "four_eyes must be a boolean, got a number" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char input[512];
        snprintf(input, sizeof input, "\"a\":{\"verdict\":\"approve\",%s}", cases[i].fields);
        decide_compose(w, input, &d, 0);
        if (!strstr(d.reason, cases[i].needle))
            print_error("case %s: %s\n", cases[i].fields, d.reason);
        assert_policy_error(&d, "a.lua", "policy a.lua returned an invalid decision: ");
        assert_non_null(strstr(d.reason, cases[i].needle));
        assert_int_equal(d.n_roles, 0);
        assert_string_equal(d.summary, "");
    }
    /* the fields are checked whatever the verdict */
    decide_compose(w, "\"a\":{\"verdict\":\"allow\",\"roles\":[\"no way\"]}", &d, 0);
    assert_policy_error(&d, "a.lua", "roles[1] is not a valid role name");
    decide_compose(w, "\"b\":{\"verdict\":\"deny\",\"four_eyes\":\"no\"}", &d, 0);
    assert_policy_error(&d, "b.lua", "four_eyes must be a boolean");
    decide_compose(w, "\"c\":{\"verdict\":\"suggest\",\"expires_in\":0}", &d, 0);
    assert_policy_error(&d, "c.lua", "expires_in must be");
    decide_compose(w, "\"a\":{\"verdict\":\"approval\"}", &d, 0);
    assert_policy_error(&d, "a.lua", "got \"approval\"");
    policy_worker_free(w);
    policy_set_free(set);
}

/* The vote of votes[i]: file, verdict (NULL: null), rule, reason (NULL: null; a reason ending
 * in '*' is a prefix). */
static void assert_vote(const json_t *votes, size_t i, const char *file, const char *verdict,
                        const char *rule, const char *reason)
{
    json_t *vote = json_array_get(votes, i);
    assert_non_null(vote);
    assert_int_equal(json_object_size(vote), 4);
    assert_string_equal(json_string_value(json_object_get(vote, "file")), file);
    const char *want[] = { verdict, rule, reason };
    const char *keys[] = { "verdict", "rule", "reason" };
    for (int k = 0; k < 3; k++) {
        json_t *v = json_object_get(vote, keys[k]);
        assert_non_null(v);
        if (!want[k]) {
            assert_true(json_is_null(v));
            continue;
        }
        assert_true(json_is_string(v));
        size_t len = strlen(want[k]);
        if (len && want[k][len - 1] == '*')
            assert_int_equal(strncmp(json_string_value(v), want[k], len - 1), 0);
        else
            assert_string_equal(json_string_value(v), want[k]);
    }
}

static void test_votes_recorded(void **state)
{
    (void)state;
    /* generous time: the memory and budget cases must end on those limits, not the clock */
    const policy_limits limits = { .memory_bytes = (size_t)2 << 20, .timeout_ms = 60000 };
    policy_set *set = load_case_limits("compose", &limits);
    policy_worker *w = new_worker(set);
    policy_decision d;

    decide_compose(w, "\"a\":{\"verdict\":\"allow\",\"rule\":\"ra\",\"reason\":\"why a\"},"
                      "\"c\":{\"verdict\":\"deny\"}", &d, 1);
    assert_int_equal(d.verdict, POLICY_DENY);
    assert_int_equal(json_array_size(d.votes), 3);
    assert_vote(d.votes, 0, "a.lua", "allow", "ra", "why a");
    assert_vote(d.votes, 1, "b.lua", NULL, NULL, NULL);     /* abstained */
    assert_vote(d.votes, 2, "c.lua", "deny", NULL, NULL);   /* as given: no rule, no reason */
    assert_true(d.duration_ns > 0);
    json_decref(d.votes);

    /* every file votes, also after a deny; a failing policy votes deny with policy_error */
    decide_compose(w, "\"a\":{\"verdict\":\"deny\",\"rule\":\"\",\"reason\":\"no\"},"
                      "\"fail\":\"b\",\"c\":\"garbage\"", &d, 1);
    assert_decision(&d, POLICY_DENY, "a.lua", "a", "no");
    assert_int_equal(json_array_size(d.votes), 3);
    assert_vote(d.votes, 0, "a.lua", "deny", "", "no");
    assert_vote(d.votes, 1, "b.lua", "deny", "policy_error",
                "policy b.lua failed: b.lua:8: broke on purpose");
    assert_vote(d.votes, 2, "c.lua", "deny", "policy_error",
                "policy c.lua returned an invalid decision: expected nil or a table, got a string");
    json_decref(d.votes);

    /* approve, suggest: their names on the record */
    decide_compose(w, "\"a\":{\"verdict\":\"approve\",\"rule\":\"ra\"},"
                      "\"b\":{\"verdict\":\"suggest\",\"reason\":\"only an idea\"}", &d, 1);
    assert_vote(d.votes, 0, "a.lua", "approve", "ra", NULL);
    assert_vote(d.votes, 1, "b.lua", "suggest", NULL, "only an idea");
    assert_vote(d.votes, 2, "c.lua", NULL, NULL, NULL);
    json_decref(d.votes);

    /* text from a policy arrives intact (invalid UTF-8 is cleaned: test_invalid_utf8_cleaned) */
    decide_compose(w, "\"a\":{\"verdict\":\"allow\",\"reason\":\"x\\u00e9y\"}", &d, 1);
    char *text = json_dumps(d.votes, 0);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"reason\": \"x\xc3\xa9y\""));
    free(text);
    json_decref(d.votes);

    /* the memory limit is per call: the next file runs normally */
    decide_compose(w, "\"memory\":\"a\",\"b\":{\"verdict\":\"allow\",\"rule\":\"rb\"}", &d, 1);
    assert_policy_error(&d, "a.lua", "policy a.lua failed: memory limit exceeded");
    assert_vote(d.votes, 0, "a.lua", "deny", "policy_error",
                "policy a.lua failed: memory limit exceeded");
    assert_vote(d.votes, 1, "b.lua", "allow", "rb", NULL);
    json_decref(d.votes);

    /* the instruction budget is the decision's: after an overrun, later files cannot run */
    decide_compose(w, "\"loop\":\"b\",\"a\":{\"verdict\":\"allow\"},"
                      "\"c\":{\"verdict\":\"allow\"}", &d, 1);
    assert_policy_error(&d, "b.lua", "policy b.lua failed: instruction budget exceeded");
    assert_vote(d.votes, 0, "a.lua", "allow", NULL, NULL);
    assert_vote(d.votes, 1, "b.lua", "deny", "policy_error",
                "policy b.lua failed: instruction budget exceeded");
    assert_vote(d.votes, 2, "c.lua", "deny", "policy_error",
                "policy c.lua not run: instruction budget exceeded by b.lua");
    json_decref(d.votes);

    /* and the next decision starts afresh */
    decide_compose(w, "\"c\":{\"verdict\":\"allow\",\"rule\":\"rc\",\"reason\":\"ok\"}", &d, 0);
    assert_decision(&d, POLICY_ALLOW, "c.lua", "rc", "ok");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_invalid_utf8_cleaned(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-policy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(write_file(dir, "u.lua",
                                "function decide(action, ctx)\n"
                                "  if action.input.v == 'nul' then\n"
                                "    return { verdict = 'approve', roles = { 'a\\0b' } }\n"
                                "  end\n"
                                "  return { verdict = action.input.v, rule = 'r\\xff',\n"
                                "           reason = 'bad \\xc3 \\xed\\xa0\\x80 ok \\xc3\\xa9 cut \\xe2\\x82',\n"
                                "           summary = '\\xf4\\x90\\x80\\x80' }\n"
                                "end\n"),
                     0);
    ar_error err;
    policy_set *set = NULL;
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    policy_worker *w = new_worker(set);
    policy_decision d;
    decide_votes(w, "{\"effect\":\"write\",\"input\":{\"v\":\"approve\"}}", &d);
    assert_int_equal(d.verdict, POLICY_APPROVE);
    assert_string_equal(d.rule, "r?");
    assert_string_equal(d.reason, "bad ? ??? ok \xc3\xa9 cut ");
    assert_string_equal(d.summary, "????");
    assert_vote(d.votes, 0, "u.lua", "approve", "r?", "bad ? ??? ok \xc3\xa9 cut ");
    json_decref(d.votes);
    /* a role name with a NUL byte in it is no role name */
    decide_text(w, "{\"effect\":\"write\",\"input\":{\"v\":\"nul\"}}", &d);
    assert_policy_error(&d, "u.lua", "roles[1] is not a valid role name");
    policy_worker_free(w);
    policy_set_free(set);
    const char *names[] = { "u.lua", NULL };
    remove_dir(dir, names);
}

/* ---- ctx ------------------------------------------------------------------------------------- */

static void test_ctx_now(void **state)
{
    (void)state;
    policy_set *set = load_case("ctx");
    policy_worker *w = new_worker(set);
    policy_decision d;
    time_t before = time(NULL);
    decide_input(w, "kind", "\"now\"", &d);
    time_t after = time(NULL);
    assert_allow(&d, "now", NULL);
    char type[16];
    long long now = 0;
    char same[8];
    assert_int_equal(sscanf(d.reason, "%15s %lld %7s", type, &now, same), 3);
    assert_string_equal(type, "integer");
    assert_true(now >= (long long)before && now <= (long long)after);
    assert_string_equal(same, "true");
    policy_worker_free(w);
    policy_set_free(set);
}

static void test_ctx_read_only_and_fresh(void **state)
{
    (void)state;
    policy_set *set = load_case("ctx");
    policy_worker *w = new_worker(set);
    policy_decision d;

    /* what a policy sees of ctx: only counter() and now(), through a protected metatable */
    decide_input(w, "kind", "\"look\"", &d);
    assert_allow(&d, "look", "nil,nil,nil,false,counter now,function");

    const char *writes[] = { "\"write\"", "\"write_now\"", "\"insert\"" };
    for (size_t i = 0; i < sizeof writes / sizeof *writes; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"effect\":\"read\",\"input\":{\"kind\":%s}}", writes[i]);
        decide_votes(w, json, &d);
        assert_policy_error(&d, "a_ctx.lua", "ctx is read-only");
        /* the next file in the same decision gets its own, untouched ctx */
        assert_vote(d.votes, 1, "b_seen.lua", "allow", "seen", "nil,nil,counter now");
        json_decref(d.votes);
        /* and so does the next call */
        decide_input(w, "kind", "\"look\"", &d);
        assert_allow(&d, "look", "nil,nil,nil,false,counter now,function");
    }
    decide_input(w, "kind", "\"setmetatable\"", &d);
    assert_policy_error(&d, "a_ctx.lua", "protected metatable");
    /* a write is refused even under pcall */
    decide_input(w, "kind", "\"pcall_write\"", &d);
    assert_allow(&d, "pcall_write", "false nil");
    decide_input(w, "kind", "\"look\"", &d);
    assert_allow(&d, "look", "nil,nil,nil,false,counter now,function");
    policy_worker_free(w);
    policy_set_free(set);
}

/* ---- policy tests (policy_run_tests) and policy_eval ---------------------------------------- */

static json_t *run_tests_ok(const policy_set *set, const char *dir)
{
    json_t *report = NULL;
    ar_error err;
    ar_error_clear(&err);
    int rc = policy_run_tests(set, dir, &report, &err);
    if (rc != AR_OK)
        print_error("policy_run_tests(%s): %s: %s\n", dir, err.code, err.message);
    assert_int_equal(rc, AR_OK);
    assert_non_null(report);
    assert_true(json_is_array(json_object_get(report, "cases")));
    return report;
}

static const json_t *report_case(const json_t *report, const char *file, const char *name)
{
    const json_t *c;
    size_t i;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        if (strcmp(json_string_value(json_object_get(c, "file")), file) == 0 &&
            strcmp(json_string_value(json_object_get(c, "name")), name) == 0)
            return c;
    }
    print_error("no case %s: %s in the report\n", file, name);
    fail();
    return NULL;
}

static const char *got_field(const json_t *c, const char *key)
{
    return json_string_value(json_object_get(json_object_get(c, "got"), key));
}

/* The case's differences are exactly expected (NULL-terminated), in order. */
static void assert_differences(const json_t *c, const char *const *expected)
{
    const json_t *diffs = json_object_get(c, "differences");
    size_t n = 0;
    while (expected[n])
        n++;
    if (json_array_size(diffs) != n) {
        char *text = json_dumps(diffs, 0);
        print_error("differences of %s: %s\n", json_string_value(json_object_get(c, "name")),
                    text);
        free(text);
    }
    assert_int_equal(json_array_size(diffs), n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(json_string_value(json_array_get(diffs, i)), expected[i]);
    assert_int_equal(json_is_true(json_object_get(c, "ok")), n == 0);
}

static void test_runner_pass_and_fail(void **state)
{
    (void)state;
    policy_set *set = load_case("runner");
    assert_int_equal(policy_set_count(set), 1); /* a_test.lua and b_test.lua are not policies */
    json_t *report = run_tests_ok(set, FIXTURES "runner");
    assert_int_equal(json_integer_value(json_object_get(report, "passed")), 7);
    assert_int_equal(json_integer_value(json_object_get(report, "failed")), 3);
    const json_t *cases = json_object_get(report, "cases");
    assert_int_equal(json_array_size(cases), 10);
    /* files in name order, cases in file order */
    assert_string_equal(json_string_value(json_object_get(json_array_get(cases, 0), "name")),
                        "small is allowed");
    assert_string_equal(json_string_value(json_object_get(json_array_get(cases, 2), "file")),
                        "a_test.lua");
    assert_string_equal(json_string_value(json_object_get(json_array_get(cases, 3), "name")),
                        "passes");
    assert_string_equal(json_string_value(json_object_get(json_array_get(cases, 3), "file")),
                        "b_test.lua");

    static const char *const none[] = { NULL };
    assert_differences(report_case(report, "a_test.lua", "small is allowed"), none);
    assert_differences(report_case(report, "a_test.lua", "big asks finance or lead, in any order"),
                       none);
    assert_differences(report_case(report, "a_test.lua", "the default decides for others"), none);
    assert_differences(report_case(report, "b_test.lua", "passes"), none);

    const json_t *c = report_case(report, "b_test.lua", "wrong verdict and rule");
    static const char *const verdict_rule[] = { "verdict: expected approve, got allow",
                                                "rule: expected big, got small", NULL };
    assert_differences(c, verdict_rule);
    assert_string_equal(got_field(c, "verdict"), "allow");
    assert_string_equal(got_field(c, "rule"), "small");
    assert_string_equal(got_field(c, "reason"), "up to 100");
    assert_string_equal(got_field(c, "policy"), "shop.lua");
    const json_t *expected = json_object_get(c, "expected");
    assert_string_equal(json_string_value(json_object_get(expected, "verdict")), "approve");
    assert_string_equal(json_string_value(json_object_get(expected, "rule")), "big");
    assert_int_equal(json_array_size(json_object_get(json_object_get(c, "got"), "votes")), 1);

    c = report_case(report, "b_test.lua", "wrong approval fields");
    static const char *const approval[] = {
        "policy: expected other.lua, got shop.lua",
        "roles: expected finance, got finance, lead",
        "four_eyes: expected false, got true",
        "summary: expected \"Refund 5\", got \"Refund 500\"", NULL };
    assert_differences(c, approval);
    const json_t *roles = json_object_get(json_object_get(c, "got"), "roles");
    assert_int_equal(json_array_size(roles), 2);
    assert_true(json_is_true(json_object_get(json_object_get(c, "got"), "four_eyes")));

    c = report_case(report, "b_test.lua", "the default is not a policy");
    static const char *const by_default[] = {
        "verdict: expected allow, got approve",
        "policy: expected shop.lua, got none (no policy had an opinion)",
        "roles: expected ops, got none (anyone may approve)",
        "summary: expected \"x\", got none", NULL };
    assert_differences(c, by_default);
    assert_string_equal(got_field(c, "rule"), "default");
    assert_string_equal(got_field(c, "policy"), "");

    /* ctx.now(): a fixed Wednesday noon by default, else the case's now */
    assert_string_equal(got_field(report_case(report, "b_test.lua", "default time"), "reason"),
                        "1767787200");
    assert_string_equal(got_field(report_case(report, "b_test.lua", "pinned time"), "reason"),
                        "1772922600");
    assert_string_equal(got_field(report_case(report, "b_test.lua", "pinned seconds"), "reason"),
                        "86400");
    json_decref(report);
    policy_set_free(set);
}

static void test_runner_test_files_not_policies(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ptest-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(write_file(dir, "a.lua", "function decide(a) return nil end\n"), 0);
    policy_set *set = NULL;
    ar_error err;
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    char version[17];
    snprintf(version, sizeof version, "%s", policy_set_version(set));
    policy_set_free(set);

    /* a test file is no policy (it has no decide), and does not change the version; nor does
     * a hidden one; "contest.lua" is a policy */
    assert_int_equal(write_file(dir, "a_test.lua", "tests = { {name = 'n', action = {}, "
                                                   "expect = {verdict = 'approve'}} }\n"), 0);
    assert_int_equal(write_file(dir, ".#b_test.lua", "this is not lua"), 0);
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    assert_int_equal(policy_set_count(set), 1);
    assert_string_equal(policy_set_version(set), version);
    json_t *report = run_tests_ok(set, dir);
    assert_int_equal(json_integer_value(json_object_get(report, "passed")), 1);
    assert_int_equal(json_integer_value(json_object_get(report, "failed")), 0);
    json_decref(report);
    policy_set_free(set);

    assert_int_equal(write_file(dir, "contest.lua", "x = 1\n"), 0);
    set = (policy_set *)1;
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_E_INVALID);
    assert_null(set);
    assert_non_null(strstr(err.message, "contest.lua"));
    assert_int_equal(write_file(dir, "contest.lua", "function decide(a) return nil end\n"), 0);
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    assert_int_equal(policy_set_count(set), 2);
    policy_set_free(set);

    const char *names[] = { "a.lua", "a_test.lua", ".#b_test.lua", "contest.lua", NULL };
    remove_dir(dir, names);
}

static void test_runner_no_tests(void **state)
{
    (void)state;
    policy_set *set = load_case("compose");
    json_t *report = run_tests_ok(set, FIXTURES "compose");
    assert_int_equal(json_integer_value(json_object_get(report, "passed")), 0);
    assert_int_equal(json_integer_value(json_object_get(report, "failed")), 0);
    assert_int_equal(json_array_size(json_object_get(report, "cases")), 0);
    json_decref(report);

    ar_error err;
    report = (json_t *)1;
    assert_int_equal(policy_run_tests(set, "/nonexistent/aiorun", &report, &err), AR_E_NOTFOUND);
    assert_null(report);
    policy_set_free(set);
}

/* Each text is a test file that must be refused naming the file and what is wrong. */
static const struct {
    const char *text;
    const char *needle1, *needle2;
} bad_test_files[] = {
    { "tests = {\n  {name = 'a',\n", "does not compile", "x_test.lua:3:" },
    { "local t = nil\nt.x = 1\n", "failed", "x_test.lua:2:" },
    { "local x = 1\n", "defines no tests", NULL },
    { "return 5\n", "returned a number", NULL },
    { "tests = 'all'\n", "tests must be a table", NULL },
    { "tests = {}\n", "tests is empty", NULL },
    { "tests = { a = {} }\n", "must be a list", NULL },
    { "tests = { [1] = {}, [3] = {} }\n", "must be a list", NULL },
    { "tests = { 'x' }\n", "test 1:", "got a string" },
    { "tests = { {name = 'one', action = {}, expect = {verdict = 'allow'}},\n"
      "          {action = {}, expect = {verdict = 'allow'}} }\n", "test 2:", "name is missing" },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow'}, expected = {}} }\n",
      "test 1 (\"n\")", "unknown field \"expected\"" },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow', rules = 'r'}} }\n",
      "test 1 (\"n\")", "unknown field \"expect.rules\"" },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'aprove'}} }\n",
      "expect.verdict must be", "got \"aprove\"" },
    { "tests = { {name = 'n', action = {}, expect = {rule = 'x'}} }\n", "expect.verdict is missing",
      NULL },
    { "tests = { {name = 'n', expect = {verdict = 'allow'}} }\n", "action must be a table", NULL },
    { "tests = { {name = 'n', action = {}} }\n", "expect must be a table", NULL },
    { "tests = { {name = 'n', action = {f = pairs}, expect = {verdict = 'allow'}} }\n",
      "action.f: a function cannot be part of a test", NULL },
    { "tests = { {name = 'n', action = {input = {1, x = 2}}, expect = {verdict = 'allow'}} }\n",
      "action.input: a table must be a list", NULL },
    { "tests = { {name = 'n', action = {input = {1, nil, 3}}, expect = {verdict = 'allow'}} }\n",
      "action.input: a list with a hole", NULL },
    { "local t = {}\nt.t = t\ntests = { {name = 'n', action = t, expect = {verdict = 'allow'}} }\n",
      "nested deeper than", NULL },
    { "tests = { {name = 'n', action = {x = 0/0}, expect = {verdict = 'allow'}} }\n",
      "action.x: not a finite number", NULL },
    { "tests = { {name = 'n', action = {x = '\\255'}, expect = {verdict = 'allow'}} }\n",
      "action.x: the text is not valid UTF-8", NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow'}, now = 'tomorrow'} }\n",
      "now must be a UTC time", NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow'}, now = '2026-02-30T10:00:00Z'} }\n",
      "now must be a UTC time", NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow'}, now = '2026-03-01T10:00:00'} }\n",
      "now must be a UTC time", NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow', roles = 'finance'}} }\n",
      "expect.roles must be a list", NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow', roles = {1}}} }\n",
      "expect.roles must be a list", NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow', four_eyes = 'yes'}} }\n",
      "four_eyes must be true or false", NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow', rule = 7}} }\n",
      "expect.rule must be text", NULL },
    /* the policies' sandbox and limits */
    { "local f = io.open('/etc/passwd')\n", "x_test.lua:1:", "global 'io'" },
    { "os.execute('true')\n", "x_test.lua:1:", "execute" },
    { "while true do end\n", "instruction budget exceeded", NULL },
};

static void test_runner_malformed_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ptest-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(write_file(dir, "a.lua", "function decide(a) return nil end\n"), 0);
    policy_set *set = NULL;
    ar_error err;
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    for (size_t i = 0; i < sizeof bad_test_files / sizeof *bad_test_files; i++) {
        assert_int_equal(write_file(dir, "x_test.lua", bad_test_files[i].text), 0);
        json_t *report = (json_t *)1;
        ar_error_clear(&err);
        int rc = policy_run_tests(set, dir, &report, &err);
        const char *n1 = bad_test_files[i].needle1, *n2 = bad_test_files[i].needle2;
        if (rc != AR_E_INVALID || !strstr(err.message, "x_test.lua") ||
            !strstr(err.message, n1) || (n2 && !strstr(err.message, n2)))
            print_error("bad test file %zu: rc %d: %s: %s\n", i, rc, err.code, err.message);
        assert_int_equal(rc, AR_E_INVALID);
        assert_null(report);
        assert_string_equal(err.code, "policy_test_invalid");
        assert_non_null(strstr(err.message, "x_test.lua"));
        assert_non_null(strstr(err.message, n1));
        if (n2)
            assert_non_null(strstr(err.message, n2));
    }

    /* a good file before a bad one: still refused as a whole */
    assert_int_equal(write_file(dir, "w_test.lua", "tests = { {name = 'ok', action = {}, "
                                                   "expect = {verdict = 'approve'}} }\n"), 0);
    assert_int_equal(write_file(dir, "x_test.lua", "tests = {}\n"), 0);
    json_t *report = NULL;
    assert_int_equal(policy_run_tests(set, dir, &report, &err), AR_E_INVALID);
    assert_null(report);
    assert_int_equal(write_file(dir, "x_test.lua", "return { {name = 'ok', action = {}, "
                                                   "expect = {verdict = 'deny'}} }\n"), 0);
    report = run_tests_ok(set, dir);
    assert_int_equal(json_integer_value(json_object_get(report, "passed")), 1);
    assert_int_equal(json_integer_value(json_object_get(report, "failed")), 1);
    json_decref(report);
    policy_set_free(set);
    const char *names[] = { "a.lua", "w_test.lua", "x_test.lua", NULL };
    remove_dir(dir, names);
}

static void test_eval(void **state)
{
    (void)state;
    policy_set *set = load_case("runner");
    json_t *action = json_loads("{\"connector\":\"shop\",\"action\":\"refund\","
                                "\"input\":{\"amount\":500}}", 0, NULL);
    assert_non_null(action);
    json_t *out = NULL;
    ar_error err;
    assert_int_equal(policy_eval(set, action, NULL, &out, &err), AR_OK);
    json_decref(action);
    assert_string_equal(json_string_value(json_object_get(out, "verdict")), "approve");
    assert_string_equal(json_string_value(json_object_get(out, "rule")), "big");
    assert_string_equal(json_string_value(json_object_get(out, "reason")), "over 100");
    assert_string_equal(json_string_value(json_object_get(out, "policy")), "shop.lua");
    assert_string_equal(json_string_value(json_object_get(out, "summary")), "Refund 500");
    assert_true(json_is_true(json_object_get(out, "four_eyes")));
    assert_true(json_is_null(json_object_get(out, "expires_in")));
    const json_t *roles = json_object_get(out, "roles");
    assert_int_equal(json_array_size(roles), 2);
    assert_string_equal(json_string_value(json_array_get(roles, 0)), "finance");
    assert_string_equal(json_string_value(json_array_get(roles, 1)), "lead");
    const json_t *votes = json_object_get(out, "votes");
    assert_int_equal(json_array_size(votes), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(votes, 0), "file")),
                        "shop.lua");
    assert_string_equal(json_string_value(json_object_get(json_array_get(votes, 0), "verdict")),
                        "approve");
    json_decref(out);

    /* the default, at the real time */
    action = json_loads("{\"connector\":\"crm\",\"effect\":\"read\"}", 0, NULL);
    assert_int_equal(policy_eval(set, action, NULL, &out, &err), AR_OK);
    json_decref(action);
    assert_string_equal(json_string_value(json_object_get(out, "verdict")), "allow");
    assert_string_equal(json_string_value(json_object_get(out, "rule")), "default");
    assert_string_equal(json_string_value(json_object_get(out, "policy")), "");
    assert_true(json_is_null(json_object_get(out, "summary")));
    assert_int_equal(json_array_size(json_object_get(out, "roles")), 0);
    assert_true(json_is_false(json_object_get(out, "four_eyes")));
    assert_true(json_is_null(json_object_get(json_array_get(json_object_get(out, "votes"), 0),
                                             "verdict")));
    json_decref(out);

    action = json_loads("{\"connector\":\"shop\",\"action\":\"when\"}", 0, NULL);
    assert_int_equal(policy_eval(set, action, NULL, &out, &err), AR_OK);
    json_decref(action);
    long long now = atoll(json_string_value(json_object_get(out, "reason")));
    assert_true(now >= (long long)time(NULL) - 60 && now <= (long long)time(NULL));
    json_decref(out);

    action = json_loads("[1]", 0, NULL);
    out = (json_t *)1;
    assert_int_equal(policy_eval(set, action, NULL, &out, &err), AR_E_INVALID);
    assert_string_equal(err.code, "policy_action_invalid");
    assert_null(out);
    json_decref(action);
    policy_set_free(set);
}

/* The shipped policies pass their own tests, every policy has tests, and they leave the echo
 * demo exactly as default.lua alone decides it. */
static void test_shipped_policies(void **state)
{
    (void)state;
    const char *dir = AIORUN_SOURCE_DIR "/policies";
    policy_set *set = NULL;
    ar_error err;
    assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_OK);
    json_t *report = run_tests_ok(set, dir);
    const json_t *c;
    size_t i;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        if (!json_is_true(json_object_get(c, "ok"))) {
            char *text = json_dumps(c, JSON_INDENT(2));
            print_error("shipped policy test failed: %s\n", text);
            free(text);
        }
    }
    assert_int_equal(json_integer_value(json_object_get(report, "failed")), 0);
    assert_true(json_integer_value(json_object_get(report, "passed")) >= 40);

    /* each policy X.lua has its X_test.lua */
    const json_t *votes = NULL;
    json_t *probe = json_loads("{\"connector\":\"none\",\"effect\":\"read\"}", 0, NULL);
    json_t *out = NULL;
    assert_int_equal(policy_eval(set, probe, NULL, &out, &err), AR_OK);
    json_decref(probe);
    votes = json_object_get(out, "votes");
    assert_int_equal(json_array_size(votes), policy_set_count(set));
    json_array_foreach(votes, i, c) {
        const char *file = json_string_value(json_object_get(c, "file"));
        char test_name[300];
        snprintf(test_name, sizeof test_name, "%.*s_test.lua", (int)strlen(file) - 4, file);
        int found = 0;
        const json_t *k;
        size_t j;
        json_array_foreach(json_object_get(report, "cases"), j, k)
            found |= strcmp(json_string_value(json_object_get(k, "file")), test_name) == 0;
        if (!found)
            print_error("policy %s has no tests in %s\n", file, test_name);
        assert_true(found);
        assert_true(json_is_null(json_object_get(c, "verdict"))); /* unknown connector */
    }
    json_decref(out);
    json_decref(report);

    /* echo: the same decisions with every shipped policy as with default.lua alone, at any
     * time of the week */
    char only[] = "/tmp/aiorun-ptest-XXXXXX";
    assert_non_null(mkdtemp(only));
    FILE *from = fopen(AIORUN_SOURCE_DIR "/policies/default.lua", "r");
    assert_non_null(from);
    char text[16384];
    size_t len = fread(text, 1, sizeof text - 1, from);
    fclose(from);
    text[len] = '\0';
    assert_int_equal(write_file(only, "default.lua", text), 0);
    policy_set *alone = NULL;
    assert_int_equal(policy_set_load(only, NULL, &alone, &err), AR_OK);
    policy_worker *w_all = new_worker(set), *w_alone = new_worker(alone);
    static const char *const echo_actions[] = {
        "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\",\"input\":{\"message\":\"hi\"}}",
        "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\",\"input\":{\"message\":\"forbidden\"}}",
        "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\",\"input\":{\"message\":\"hi\","
        "\"customer\":\"C-1001\",\"email\":\"mallory@example.com\"},\"proposer\":{\"confidence\":0.5}}",
        "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"irreversible\",\"input\":{}}",
        "{\"connector\":\"echo\",\"action\":\"refund\",\"effect\":\"write\",\"input\":{\"amount\":9}}",
        "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\",\"proposer\":{\"confidence\":0.1}}",
    };
    for (size_t a = 0; a < sizeof echo_actions / sizeof *echo_actions; a++) {
        policy_decision d_all, d_alone;
        decide_text(w_all, echo_actions[a], &d_all);
        decide_text(w_alone, echo_actions[a], &d_alone);
        if (d_all.verdict != d_alone.verdict || strcmp(d_all.rule, d_alone.rule) != 0)
            print_error("echo action %zu: %s/%s with all, %s/%s alone\n", a,
                        policy_verdict_name(d_all.verdict), d_all.rule,
                        policy_verdict_name(d_alone.verdict), d_alone.rule);
        assert_int_equal(d_all.verdict, d_alone.verdict);
        assert_string_equal(d_all.rule, d_alone.rule);
        assert_string_equal(d_all.reason, d_alone.reason);
        assert_string_equal(d_all.file, d_alone.file);
    }
    policy_worker_free(w_all);
    policy_worker_free(w_alone);
    policy_set_free(alone);
    policy_set_free(set);
    const char *names[] = { "default.lua", NULL };
    remove_dir(only, names);
}

/* ---- guardrail counters: declarations and ctx.counter ------------------------------------- */

/* Write name = text into a new temporary directory's files (pairs, NULL-terminated). */
static void make_policy_dir(char *dir, const char *const *files)
{
    assert_non_null(mkdtemp(dir));
    for (; *files; files += 2)
        assert_int_equal(write_file(dir, files[0], files[1]), 0);
}

static void remove_all(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char path[1024];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static policy_set *load_dir_limits(const char *dir, const policy_limits *limits)
{
    policy_set *set = NULL;
    ar_error err;
    ar_error_clear(&err);
    int rc = policy_set_load(dir, limits, &set, &err);
    if (rc != AR_OK)
        print_error("policy_set_load(%s): %s: %s\n", dir, err.code, err.message);
    assert_int_equal(rc, AR_OK);
    assert_non_null(set);
    return set;
}

static policy_set *load_dir(const char *dir)
{
    return load_dir_limits(dir, NULL);
}

#define REFUNDED_DECL "{connector = 'shop', action = 'refund', sum = 'amount', window = '24h'}"

static void test_counter_declarations(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    const char *files[] = {
        "a.lua", "counters = { refunded = " REFUNDED_DECL ",\n"
                 "             listings = {connector = 'shop', window = 3600} }\n"
                 "function decide(action) return nil end\n",
        /* the same declaration of refunded again is fine; tickets is b's own */
        "b.lua", "counters = { tickets = {connector = 'tickets', action = '*', window = '7d'},\n"
                 "             refunded = " REFUNDED_DECL " }\n"
                 "function decide(action) return nil end\n",
        "c.lua", "counters = {}\nfunction decide(action) return nil end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    size_t n = 99;
    const counter_def *defs = policy_set_counters(set, &n);
    assert_int_equal(n, 3);
    assert_non_null(defs);
    /* in name order */
    assert_string_equal(defs[0].name, "listings");
    assert_string_equal(defs[1].name, "refunded");
    assert_string_equal(defs[2].name, "tickets");
    assert_string_equal(defs[0].connector, "shop");
    assert_string_equal(defs[0].action, "*");
    assert_string_equal(defs[0].sum, "");
    assert_int_equal(defs[0].window_ms, 3600000);
    assert_string_equal(defs[1].action, "refund");
    assert_string_equal(defs[1].sum, "amount");
    assert_int_equal(defs[1].window_ms, 86400000);
    assert_int_equal(defs[2].window_ms, 7 * 86400000LL);

    /* the same definition (id) counters_def_parse makes of the same declaration */
    json_t *decl = json_pack("{s:s, s:s, s:s, s:s}", "connector", "shop", "action", "refund",
                             "sum", "amount", "window", "24h");
    counter_def direct;
    ar_error err;
    assert_int_equal(counters_def_parse("refunded", decl, &direct, &err), AR_OK);
    json_decref(decl);
    assert_string_equal(defs[1].id, direct.id);
    assert_int_equal(strlen(defs[1].id), COUNTERS_ID_LEN);

    assert_ptr_equal(policy_set_find_counter(set, "refunded"), &defs[1]);
    assert_ptr_equal(policy_set_find_counter(set, "listings"), &defs[0]);
    assert_ptr_equal(policy_set_find_counter(set, "tickets"), &defs[2]);
    assert_null(policy_set_find_counter(set, "nope"));
    assert_null(policy_set_find_counter(set, ""));
    assert_null(policy_set_find_counter(set, NULL));
    assert_null(policy_set_find_counter(NULL, "refunded"));
    n = 99;
    assert_null(policy_set_counters(NULL, &n));
    assert_int_equal(n, 0);
    policy_set_free(set);
    remove_all(dir);

    /* a set without declarations */
    set = load_case("order");
    n = 99;
    assert_null(policy_set_counters(set, &n));
    assert_int_equal(n, 0);
    assert_null(policy_set_find_counter(set, "refunded"));
    policy_set_free(set);
}

/* Each text, as the only policy file x.lua, is refused naming x.lua and what is wrong. */
static const struct {
    const char *text;
    const char *needle1, *needle2;
} bad_declarations[] = {
    { "counters = 5\n", "counters must be a table", "got a number" },
    { "counters = { {connector = 'shop', window = '1h'} }\n", "not a list", NULL },
    { "counters = { x = {connector = 'shop'} }\n", "counter \"x\" needs a window", NULL },
    { "counters = { x = {window = '1h'} }\n", "counter \"x\" needs a connector", NULL },
    { "counters = { x = {connector = 'shop', window = '1h', colour = 'red'} }\n",
      "counter \"x\"", "unknown field \"colour\"" },
    { "counters = { ['bad name'] = {connector = 'shop', window = '1h'} }\n", "bad name",
      "letters, digits" },
    { "counters = { x = {connector = 'shop', window = '1y'} }\n", "counter \"x\"",
      "window must be" },
    { "counters = { x = {connector = 'shop', window = '1h', sum = 5} }\n", "counter \"x\"",
      "sum must be a non-empty string" },
    { "counters = { x = 'shop' }\n", "counter \"x\" must be a table", NULL },
    { "counters = { x = {connector = 'shop', window = '1h', f = pairs} }\n", "counters.x.f",
      "a function cannot be part of a counter declaration" },
    { "validate = 5\n", "validate must be a function", "got a number" },
    { "validate = {}\n", "validate must be a function", "got a table" },
};

static void expect_dir_invalid(const char *dir, const char *n1, const char *n2, const char *n3)
{
    policy_set *set = (policy_set *)1;
    ar_error err;
    ar_error_clear(&err);
    int rc = policy_set_load(dir, NULL, &set, &err);
    if (rc != AR_E_INVALID || !strstr(err.message, n1) || (n2 && !strstr(err.message, n2)) ||
        (n3 && !strstr(err.message, n3)))
        print_error("rc %d: %s: %s\n", rc, err.code, err.message);
    assert_int_equal(rc, AR_E_INVALID);
    assert_null(set);
    assert_string_equal(err.code, "policy_invalid");
    assert_non_null(strstr(err.message, n1));
    if (n2)
        assert_non_null(strstr(err.message, n2));
    if (n3)
        assert_non_null(strstr(err.message, n3));
}

static void test_counter_declarations_invalid(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    assert_non_null(mkdtemp(dir));
    for (size_t i = 0; i < sizeof bad_declarations / sizeof *bad_declarations; i++) {
        char text[512];
        snprintf(text, sizeof text, "%sfunction decide(a) return nil end\n",
                 bad_declarations[i].text);
        assert_int_equal(write_file(dir, "x.lua", text), 0);
        expect_dir_invalid(dir, "policy x.lua", bad_declarations[i].needle1,
                           bad_declarations[i].needle2);
    }

    /* one name, two different declarations: refused naming both files and the counter */
    assert_int_equal(write_file(dir, "x.lua", "counters = { refunded = " REFUNDED_DECL " }\n"
                                              "function decide(a) return nil end\n"), 0);
    assert_int_equal(write_file(dir, "y.lua", "counters = { refunded = {connector = 'shop', "
                                              "action = 'refund', sum = 'amount', "
                                              "window = '12h'} }\n"
                                              "function decide(a) return nil end\n"), 0);
    expect_dir_invalid(dir, "policy y.lua", "counter \"refunded\"", "x.lua");
    /* the same declaration in both: fine */
    assert_int_equal(write_file(dir, "y.lua", "counters = { refunded = " REFUNDED_DECL " }\n"
                                              "function decide(a) return nil end\n"), 0);
    policy_set *set = load_dir(dir);
    size_t n;
    policy_set_counters(set, &n);
    assert_int_equal(n, 1);
    policy_set_free(set);
    /* two names for one definition: both kept */
    assert_int_equal(write_file(dir, "y.lua", "counters = { refunds = " REFUNDED_DECL " }\n"
                                              "function decide(a) return nil end\n"), 0);
    set = load_dir(dir);
    const counter_def *defs = policy_set_counters(set, &n);
    assert_int_equal(n, 2);
    assert_string_equal(defs[0].id, defs[1].id);
    policy_set_free(set);
    remove_all(dir);
}

/* A counter source for the tests: fixed values, or a failure. */
typedef struct fake_source {
    double refunded, listings;
    int fail;
    int calls;
    char last[COUNTERS_NAME_MAX];
} fake_source;

static int fake_counter(void *arg, const counter_def *def, double *value, ar_error *err)
{
    fake_source *s = arg;
    s->calls++;
    snprintf(s->last, sizeof s->last, "%s", def->name);
    if (s->fail)
        return ar_error_set(err, AR_E_NOTFOUND, "counter_unavailable", "not maintained yet");
    if (strcmp(def->name, "refunded") == 0) {
        assert_string_equal(def->connector, "shop"); /* the declared definition */
        assert_string_equal(def->sum, "amount");
        *value = s->refunded;
    } else {
        *value = s->listings;
    }
    return AR_OK;
}

/* a.lua declares, b.lua reads (the set's counters are the union) */
static const char *const counter_files[] = {
    "a.lua", "counters = { refunded = " REFUNDED_DECL ",\n"
             "             listings = {connector = 'shop', action = 'create_listing', window = '7d'} }\n"
             "function decide(action) return nil end\n",
    "b.lua", "function decide(action, ctx)\n"
             "  local v = ctx.counter(action.input.name)\n"
             "  return { verdict = 'allow', rule = 'read', reason = math.type(v) .. ' ' .. tostring(v) }\n"
             "end\n",
    NULL };

static void decide_counter(policy_worker *w, const char *name_json, policy_decision *d)
{
    decide_input(w, "name", name_json, d);
}

static void test_counter_in_ctx(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    make_policy_dir(dir, counter_files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    policy_decision d;

    /* no source: every declared counter reads 0 */
    decide_counter(w, "\"refunded\"", &d);
    assert_allow(&d, "read", "integer 0");

    fake_source src = { .refunded = 950, .listings = 12.5 };
    policy_worker_set_counters(w, fake_counter, &src);
    decide_counter(w, "\"refunded\"", &d);
    assert_allow(&d, "read", "integer 950");
    assert_string_equal(src.last, "refunded");
    decide_counter(w, "\"listings\"", &d);
    assert_allow(&d, "read", "float 12.5");
    assert_int_equal(src.calls, 2);

    /* the source fails: the policy fails, so deny policy_error naming the counter */
    src.fail = 1;
    decide_counter(w, "\"refunded\"", &d);
    assert_policy_error(&d, "b.lua", "counter refunded unavailable: not maintained yet");
    assert_non_null(strstr(d.reason, "policy b.lua failed: b.lua:2:"));
    src.fail = 0;

    /* an undeclared name, or not a name at all */
    decide_counter(w, "\"refunds\"", &d);
    assert_policy_error(&d, "b.lua", "counter \"refunds\" is not declared (declare it in "
                                     "counters = {...} of a policy file)");
    decide_counter(w, "\"\"", &d);
    assert_policy_error(&d, "b.lua", "is not declared");
    decide_counter(w, "5", &d);
    assert_policy_error(&d, "b.lua", "ctx.counter(name): name must be a string, got a number");
    decide_text(w, "{\"input\":{}}", &d);
    assert_policy_error(&d, "b.lua", "name must be a string, got a nil");
    assert_int_equal(src.calls, 3); /* none of these asked the source */

    /* back to no source */
    policy_worker_set_counters(w, NULL, &src);
    decide_counter(w, "\"refunded\"", &d);
    assert_allow(&d, "read", "integer 0");
    assert_int_equal(src.calls, 3);
    policy_worker_set_counters(NULL, fake_counter, &src); /* harmless */
    policy_worker_free(w);

    policy_set_free(set);

    /* without a.lua nothing is declared: every name is undeclared, the source is not asked */
    char path[1024];
    snprintf(path, sizeof path, "%s/a.lua", dir);
    assert_int_equal(unlink(path), 0);
    set = load_dir(dir);
    w = new_worker(set);
    policy_worker_set_counters(w, fake_counter, &src);
    decide_counter(w, "\"refunded\"", &d);
    assert_policy_error(&d, "b.lua", "counter \"refunded\" is not declared");
    assert_int_equal(src.calls, 3);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* The cap policy: refunds are allowed until the last 24 h's refunds plus this one pass 1000,
 * then they need approval; validate checks the connector refunded what was asked. */
static const char *const cap_files[] = {
    "cap.lua",
    "counters = { refunded = " REFUNDED_DECL " }\n"
    "local CAP = 1000\n"
    "function decide(action, ctx)\n"
    "  if action.action ~= 'refund' then return nil end\n"
    "  local total = ctx.counter('refunded') + action.input.amount\n"
    "  if total > CAP then\n"
    "    return { verdict = 'approve', rule = 'refund_cap', roles = {'finance'},\n"
    "             reason = string.format('%g refunded in 24 h with this one', total) }\n"
    "  end\n"
    "  return { verdict = 'allow', rule = 'refund_under_cap' }\n"
    "end\n"
    "function validate(action, result, ctx)\n"
    "  if action.action ~= 'refund' then return nil end\n"
    "  if type(result) ~= 'table' then return false end\n"
    "  if result.refunded ~= action.input.amount then\n"
    "    return { ok = false, rule = 'amount_mismatch',\n"
    "             reason = 'refunded ' .. tostring(result.refunded) .. ', asked ' .. action.input.amount }\n"
    "  end\n"
    "  if ctx.counter('refunded') > 5000 then return 'far over the cap' end\n"
    "  return true\n"
    "end\n",
    NULL };

static void test_counter_cap_flips_to_approve(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    make_policy_dir(dir, cap_files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    fake_source src = { .refunded = 0 };
    policy_worker_set_counters(w, fake_counter, &src);
    const char *action = "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"irreversible\","
                         "\"input\":{\"amount\":100}}";
    policy_decision d;
    /* amount 100: allowed while refunded + 100 <= 1000, approve from just past it */
    for (int refunded = 0; refunded <= 1200; refunded += 50) {
        src.refunded = refunded;
        decide_votes(w, action, &d);
        json_decref(d.votes);
        if (refunded + 100 <= 1000) {
            assert_allow(&d, "refund_under_cap", NULL);
        } else {
            assert_int_equal(d.verdict, POLICY_APPROVE);
            assert_string_equal(d.rule, "refund_cap");
            assert_int_equal(d.n_roles, 1);
            assert_string_equal(d.roles[0], "finance");
            char want[64];
            snprintf(want, sizeof want, "%d refunded in 24 h with this one", refunded + 100);
            assert_string_equal(d.reason, want);
        }
    }
    /* right at the cap, and one past it */
    src.refunded = 900;
    decide_text(w, action, &d);
    assert_int_equal(d.verdict, POLICY_ALLOW);
    src.refunded = 900.5;
    decide_text(w, action, &d);
    assert_int_equal(d.verdict, POLICY_APPROVE);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* Nothing a call writes (to counters, or any global) reaches the next call; the set's
 * declarations stay as loaded. */
static void test_counter_table_not_shared(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    const char *files[] = {
        "a.lua",
        "counters = { refunded = " REFUNDED_DECL " }\n"
        "function decide(action, ctx)\n"
        "  local seen = table.concat({ type(counters), tostring(counters.extra),\n"
        "    tostring(counters.refunded and counters.refunded.window), tostring(leaked),\n"
        "    tostring(ctx.counter('refunded')) }, ',')\n"
        "  counters.extra = { connector = 'x', window = '1h' }\n"
        "  counters.refunded = nil\n"
        "  leaked = 1\n"
        "  counters = 'gone'\n"
        "  return { verdict = 'allow', rule = 'seen', reason = seen }\n"
        "end\n"
        "function validate(action, result, ctx)\n"
        "  local seen = type(counters) .. ',' .. tostring(leaked) .. ',' .. tostring(vleaked)\n"
        "  counters = nil\n"
        "  vleaked = 1\n"
        "  return { ok = false, reason = seen }\n"
        "end\n",
        "b.lua",
        "function decide(action, ctx)\n"
        "  return { verdict = 'allow', rule = 'b', reason = tostring(counters) .. ',' .. tostring(leaked) }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    fake_source src = { .refunded = 7 };
    policy_worker_set_counters(w, fake_counter, &src);
    json_t *action = json_loads("{\"connector\":\"shop\",\"action\":\"refund\"}", 0, NULL);
    json_t *result = json_loads("{}", 0, NULL);
    for (int i = 0; i < 3; i++) {
        policy_decision d;
        decide_votes(w, "{\"connector\":\"shop\",\"action\":\"refund\"}", &d);
        assert_allow(&d, "seen", "table,nil,24h,nil,7");
        /* b.lua, in the same decision, has its own globals */
        assert_vote(d.votes, 1, "b.lua", "allow", "b", "nil,nil");
        json_decref(d.votes);
        policy_validation v;
        assert_int_equal(policy_validate(w, action, result, &v), AR_OK);
        assert_int_equal(v.ok, 0);
        assert_string_equal(v.reason, "table,nil,nil");
    }
    size_t n;
    const counter_def *defs = policy_set_counters(set, &n);
    assert_int_equal(n, 1);
    assert_string_equal(defs[0].name, "refunded");
    assert_null(policy_set_find_counter(set, "extra"));
    json_decref(action);
    json_decref(result);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* ---- validate ------------------------------------------------------------------------------- */

static const char validate_policy[] =
    "function decide(action) return nil end\n"
    "local kinds = {\n"
    "  ['nil'] = function() return nil end,\n"
    "  ['true'] = function() return true end,\n"
    "  ['false'] = function() return false end,\n"
    "  string = function() return 'the total does not match' end,\n"
    "  empty_string = function() return '' end,\n"
    "  reject = function() return { ok = false, reason = 'too big', rule = 'result_cap' } end,\n"
    "  reject_bare = function() return { ok = false } end,\n"
    "  ok_table = function() return { ok = true, reason = 'fine' } end,\n"
    "  number = function() return 5 end,\n"
    "  func = function() return pairs end,\n"
    "  no_ok = function() return { reason = 'x' } end,\n"
    "  ok_string = function() return { ok = 'no' } end,\n"
    "  bad_reason = function() return { ok = false, reason = 5 } end,\n"
    "  bad_rule = function() return { ok = false, rule = {} } end,\n"
    "  error = function() error('boom') end,\n"
    "  loop = function() while true do end end,\n"
    "  pcall_loop = function() pcall(function() while true do end end) return true end,\n"
    "  memory = function() local t = {} for i = 1, 1e8 do t[i] = i end end,\n"
    "  now = function(r, ctx) return tostring(ctx.now()) end,\n"
    "  counter = function(r, ctx) return tostring(ctx.counter(r.name)) end,\n"
    "}\n"
    "function validate(action, result, ctx)\n"
    "  if type(result) ~= 'table' then return 'a ' .. type(result) .. ': ' .. tostring(result) end\n"
    "  if result[1] then return 'a list of ' .. #result end\n"
    "  if result.kind == 'echo' then\n"
    "    return table.concat({ action.connector, result.items[2], tostring(result.n),\n"
    "                          tostring(result.gone), math.type(result.n) }, ',')\n"
    "  end\n"
    "  return kinds[result.kind](result, ctx)\n"
    "end\n";

static void validate_json(policy_worker *w, const char *action_json, const char *result_json,
                          policy_validation *v)
{
    json_t *action = json_loads(action_json, JSON_DECODE_ANY, NULL);
    json_t *result = result_json ? json_loads(result_json, JSON_DECODE_ANY, NULL) : NULL;
    assert_non_null(action);
    if (result_json)
        assert_non_null(result);
    memset(v, 0x5a, sizeof *v); /* policy_validate must fill every field */
    assert_int_equal(policy_validate(w, action, result, v), AR_OK);
    assert_in_range(v->ok, 0, 1);
    assert_in_range(v->policy_error, 0, 1);
    assert_true(memchr(v->reason, '\0', sizeof v->reason) != NULL);
    assert_true(memchr(v->rule, '\0', sizeof v->rule) != NULL);
    assert_true(memchr(v->file, '\0', sizeof v->file) != NULL);
    assert_true(v->duration_ns != 0x5a5a5a5a5a5a5a5aull);
    json_decref(action);
    json_decref(result);
}

static void validate_kind(policy_worker *w, const char *kind, policy_validation *v)
{
    char result[128];
    snprintf(result, sizeof result, "{\"kind\":\"%s\"}", kind);
    validate_json(w, "{\"connector\":\"shop\",\"action\":\"refund\"}", result, v);
}

static void assert_valid(const policy_validation *v)
{
    if (!v->ok)
        print_error("rejected: policy_error %d rule %s file %s reason %s\n", v->policy_error,
                    v->rule, v->file, v->reason);
    assert_int_equal(v->ok, 1);
    assert_int_equal(v->policy_error, 0);
    assert_string_equal(v->file, "");
    assert_string_equal(v->rule, "");
    assert_string_equal(v->reason, "");
}

static void assert_rejected(const policy_validation *v, int policy_error, const char *file,
                            const char *rule, const char *reason)
{
    if (v->ok || v->policy_error != policy_error || strcmp(v->rule, rule) != 0 ||
        !strstr(v->reason, reason))
        print_error("validation: ok %d policy_error %d rule %s file %s reason %s\n", v->ok,
                    v->policy_error, v->rule, v->file, v->reason);
    assert_int_equal(v->ok, 0);
    assert_int_equal(v->policy_error, policy_error);
    assert_string_equal(v->file, file);
    assert_string_equal(v->rule, rule);
    assert_non_null(strstr(v->reason, reason));
}

static void test_validate_forms(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pvalid-XXXXXX";
    const char *files[] = { "v.lua", validate_policy, NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    assert_int_equal(policy_set_has_validate(set), 1);
    policy_worker *w = new_worker(set);
    policy_validation v;

    static const char *const accepted[] = { "nil", "true", "ok_table" };
    for (size_t i = 0; i < sizeof accepted / sizeof *accepted; i++) {
        validate_kind(w, accepted[i], &v);
        assert_valid(&v);
    }
    validate_kind(w, "false", &v);
    assert_rejected(&v, 0, "v.lua", "v", "rejected by validate");
    assert_string_equal(v.reason, "rejected by validate");
    validate_kind(w, "string", &v);
    assert_rejected(&v, 0, "v.lua", "v", "the total does not match");
    assert_string_equal(v.reason, "the total does not match");
    validate_kind(w, "empty_string", &v);
    assert_rejected(&v, 0, "v.lua", "v", "rejected by validate");
    validate_kind(w, "reject", &v);
    assert_rejected(&v, 0, "v.lua", "result_cap", "too big");
    assert_string_equal(v.reason, "too big");
    validate_kind(w, "reject_bare", &v);
    assert_rejected(&v, 0, "v.lua", "v", "rejected by validate");

    /* garbage and errors: a rejection with policy_error, saying what went wrong */
    static const struct {
        const char *kind, *reason;
    } broken[] = {
        { "number", "policy v.lua validate returned an invalid result: expected nil, true, false, "
                    "a string or {ok = ..., reason = ..., rule = ...}, got a number" },
        { "func", "invalid result: expected nil, true, false, a string or" },
        { "no_ok", "policy v.lua validate returned an invalid result: ok is missing" },
        { "ok_string", "invalid result: ok must be true or false, got a string" },
        { "bad_reason", "invalid result: reason must be a string, got a number" },
        { "bad_rule", "invalid result: rule must be a string, got a table" },
        { "error", "policy v.lua validate failed: v.lua:" },
        { "nope", "policy v.lua validate failed: v.lua:" }, /* calling nil */
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++) {
        validate_kind(w, broken[i].kind, &v);
        assert_rejected(&v, 1, "v.lua", "policy_error", broken[i].reason);
    }
    validate_kind(w, "number", &v);
    assert_string_equal(v.reason, broken[0].reason);
    validate_kind(w, "error", &v);
    assert_non_null(strstr(v.reason, "boom"));

    /* result is any JSON value, converted as the action is */
    validate_json(w, "{\"connector\":\"shop\"}",
                  "{\"kind\":\"echo\",\"items\":[\"a\",\"b\"],\"n\":3,\"gone\":null}", &v);
    assert_rejected(&v, 0, "v.lua", "v", "shop,b,3,nil,integer");
    validate_json(w, "{}", "\"plain\"", &v);
    assert_rejected(&v, 0, "v.lua", "v", "a string: plain");
    validate_json(w, "{}", "[1,2]", &v);
    assert_rejected(&v, 0, "v.lua", "v", "a list of 2");
    validate_json(w, "{}", "2.5", &v);
    assert_rejected(&v, 0, "v.lua", "v", "a number: 2.5");
    validate_json(w, "{}", "null", &v);
    assert_rejected(&v, 0, "v.lua", "v", "a nil: nil");
    validate_json(w, "{}", NULL, &v);
    assert_rejected(&v, 0, "v.lua", "v", "a nil: nil");

    /* ctx: now() and counter() as in decide */
    time_t before = time(NULL);
    validate_kind(w, "now", &v);
    long long now = atoll(v.reason);
    assert_true(now >= (long long)before && now <= (long long)time(NULL));
    validate_kind(w, "counter", &v); /* result.name is nil */
    assert_rejected(&v, 1, "v.lua", "policy_error", "name must be a string");

    /* the action must be an object; neither may be nested too deep */
    validate_json(w, "[1]", "{\"kind\":\"true\"}", &v);
    assert_rejected(&v, 1, "", "action_invalid", "the action is not a JSON object");
    char deep[256] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    validate_json(w, "{}", deep, &v);
    assert_rejected(&v, 1, "", "result_invalid", "nested deeper than 32 levels");
    memset(&v, 0x5a, sizeof v);
    assert_int_equal(policy_validate(NULL, NULL, NULL, &v), AR_OK);
    assert_int_equal(v.ok, 0);
    assert_int_equal(v.policy_error, 1);

    validate_kind(w, "true", &v);
    assert_valid(&v);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

static void test_validate_limits(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pvalid-XXXXXX";
    const char *files[] = { "v.lua", validate_policy, NULL };
    make_policy_dir(dir, files);
    policy_validation v;

    /* the instruction budget, which pcall cannot catch */
    const policy_limits budget = { .instructions = 1000000, .timeout_ms = 60000 };
    policy_set *set = load_dir_limits(dir, &budget);
    policy_worker *w = new_worker(set);
    static const char *const loops[] = { "loop", "pcall_loop" };
    for (size_t i = 0; i < 2; i++) {
        validate_kind(w, loops[i], &v);
        assert_rejected(&v, 1, "v.lua", "policy_error", "instruction budget exceeded");
        assert_string_equal(v.reason, "policy v.lua validate failed: instruction budget exceeded");
        validate_kind(w, "true", &v);
        assert_valid(&v);
    }
    policy_worker_free(w);
    policy_set_free(set);

    /* the deadline */
    const policy_limits deadline = { .instructions = UINT64_MAX / 2, .timeout_ms = 20 };
    set = load_dir_limits(dir, &deadline);
    w = new_worker(set);
    validate_kind(w, "loop", &v);
    assert_rejected(&v, 1, "v.lua", "policy_error", "deadline exceeded");
    validate_kind(w, "true", &v);
    assert_valid(&v);
    policy_worker_free(w);
    policy_set_free(set);

    /* the memory cap */
    set = load_dir_limits(dir, &bomb_limits);
    w = new_worker(set);
    validate_kind(w, "memory", &v);
    assert_rejected(&v, 1, "v.lua", "policy_error", "memory limit exceeded");
    validate_kind(w, "true", &v);
    assert_valid(&v);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

static void test_validate_files_in_order(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pvalid-XXXXXX";
    const char *files[] = {
        "a.lua", "function decide(a) return nil end\n"
                 "function validate(action, result) if result.a then return 'a says no' end end\n",
        "b.lua", "function decide(a) return nil end\n", /* no validate: not run */
        "c.lua", "function decide(a) return nil end\n"
                 "function validate(action, result)\n"
                 "  if result.c then return { ok = false, rule = 'c_rule', reason = 'c says no' } end\n"
                 "  if result.loop then while true do end end\n"
                 "  return true\n"
                 "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    assert_int_equal(policy_set_has_validate(set), 1);
    policy_worker *w = new_worker(set);
    policy_validation v;
    validate_json(w, "{}", "{}", &v);
    assert_valid(&v);
    validate_json(w, "{}", "{\"c\":true}", &v);
    assert_rejected(&v, 0, "c.lua", "c_rule", "c says no");
    /* the first rejection in file order wins */
    validate_json(w, "{}", "{\"a\":true,\"c\":true}", &v);
    assert_rejected(&v, 0, "a.lua", "a", "a says no");
    /* and ends the validation: c's loop never runs */
    validate_json(w, "{}", "{\"a\":true,\"loop\":true}", &v);
    assert_rejected(&v, 0, "a.lua", "a", "a says no");
    validate_json(w, "{}", "{\"loop\":true}", &v);
    assert_rejected(&v, 1, "c.lua", "policy_error", "instruction budget exceeded");
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

static void test_validate_not_defined(void **state)
{
    (void)state;
    policy_set *set = load_case("order");
    assert_int_equal(policy_set_has_validate(set), 0);
    assert_int_equal(policy_set_has_validate(NULL), 0);
    policy_worker *w = new_worker(set);
    policy_validation v;
    /* nothing to check: accepted, whatever the result */
    validate_json(w, "{\"connector\":\"shop\"}", "{\"anything\":[1,2,3]}", &v);
    assert_valid(&v);
    validate_json(w, "{}", NULL, &v);
    assert_valid(&v);
    policy_worker_free(w);
    policy_set_free(set);

    /* an empty set neither */
    char dir[] = "/tmp/aiorun-pvalid-XXXXXX";
    assert_non_null(mkdtemp(dir));
    set = load_dir(dir);
    assert_int_equal(policy_set_has_validate(set), 0);
    w = new_worker(set);
    validate_json(w, "{}", "{}", &v);
    assert_valid(&v);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* ---- policy tests with counters and results, eval with counters ------------------------------ */

static const char cap_test_file[] =
    "local function refund(amount) return { connector = 'shop', action = 'refund',\n"
    "  effect = 'irreversible', input = { amount = amount } } end\n"
    "tests = {\n"
    "  { name = 'under the cap', action = refund(40), counters = { refunded = 950 },\n"
    "    expect = { verdict = 'allow', rule = 'refund_under_cap' } },\n"
    "  { name = 'over the cap', action = refund(60), counters = { refunded = 950 },\n"
    "    expect = { verdict = 'approve', rule = 'refund_cap', roles = {'finance'} } },\n"
    "  { name = 'no counters read 0', action = refund(60),\n"
    "    expect = { verdict = 'allow' } },\n"
    "  { name = 'wrong: counter ignored', action = refund(60), counters = { refunded = 950.5 },\n"
    "    expect = { verdict = 'allow' } },\n"
    "  { name = 'result matches', action = refund(40), result = { refunded = 40 },\n"
    "    expect = { valid = true } },\n"
    "  { name = 'result differs', action = refund(40), result = { refunded = 41 },\n"
    "    expect = { valid = false, rule = 'amount_mismatch', reason = 'refunded 41',\n"
    "               policy = 'cap.lua' } },\n"
    "  { name = 'result with counters', action = refund(40), result = { refunded = 40 },\n"
    "    counters = { refunded = 6000 },\n"
    "    expect = { valid = false, reason = 'over the cap' } },\n"
    "  { name = 'wrong: expected valid', action = refund(40), result = 'done',\n"
    "    expect = { valid = true } },\n"
    "  { name = 'wrong: rule, reason, policy', action = refund(40), result = { refunded = 1 },\n"
    "    expect = { valid = false, rule = 'other', reason = 'refunded 2', policy = 'x.lua' } },\n"
    "  { name = 'wrong: expected a rejection', action = refund(40), result = { refunded = 40 },\n"
    "    expect = { valid = false } },\n"
    "}\n";

static void test_runner_counters_and_results(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    make_policy_dir(dir, cap_files);
    assert_int_equal(write_file(dir, "cap_test.lua", cap_test_file), 0);
    policy_set *set = load_dir(dir);
    json_t *report = run_tests_ok(set, dir);
    assert_int_equal(json_integer_value(json_object_get(report, "passed")), 6);
    assert_int_equal(json_integer_value(json_object_get(report, "failed")), 4);
    static const char *const none[] = { NULL };
    static const char *const passing[] = { "under the cap", "over the cap", "no counters read 0",
                                           "result matches", "result differs",
                                           "result with counters" };
    for (size_t i = 0; i < sizeof passing / sizeof *passing; i++)
        assert_differences(report_case(report, "cap_test.lua", passing[i]), none);

    const json_t *c = report_case(report, "cap_test.lua", "wrong: counter ignored");
    static const char *const verdict[] = { "verdict: expected allow, got approve", NULL };
    assert_differences(c, verdict);
    assert_string_equal(got_field(c, "reason"), "1010.5 refunded in 24 h with this one");

    /* a result case's got: valid, rule, reason, policy and nothing else */
    c = report_case(report, "cap_test.lua", "result differs");
    const json_t *got = json_object_get(c, "got");
    assert_int_equal(json_object_size(got), 4);
    assert_true(json_is_false(json_object_get(got, "valid")));
    assert_string_equal(got_field(c, "rule"), "amount_mismatch");
    assert_string_equal(got_field(c, "reason"), "refunded 41, asked 40");
    assert_string_equal(got_field(c, "policy"), "cap.lua");
    assert_true(json_is_false(json_object_get(json_object_get(c, "expected"), "valid")));

    c = report_case(report, "cap_test.lua", "result matches");
    got = json_object_get(c, "got");
    assert_int_equal(json_object_size(got), 4);
    assert_true(json_is_true(json_object_get(got, "valid")));
    assert_string_equal(got_field(c, "policy"), "");

    c = report_case(report, "cap_test.lua", "wrong: expected valid");
    static const char *const valid[] = { "valid: expected true, got false", NULL };
    assert_differences(c, valid);
    assert_string_equal(got_field(c, "reason"), "rejected by validate");
    assert_string_equal(got_field(c, "rule"), "cap");

    c = report_case(report, "cap_test.lua", "wrong: rule, reason, policy");
    static const char *const fields[] = {
        "rule: expected other, got amount_mismatch",
        "policy: expected x.lua, got cap.lua",
        "reason: expected it to contain \"refunded 2\", got \"refunded 1, asked 40\"", NULL };
    assert_differences(c, fields);

    c = report_case(report, "cap_test.lua", "wrong: expected a rejection");
    static const char *const rejection[] = { "valid: expected false, got true", NULL };
    assert_differences(c, rejection);
    json_decref(report);
    policy_set_free(set);
    remove_all(dir);
}

/* Malformed cases about counters and results: refused naming the file and the case. */
static const struct {
    const char *text;
    const char *needle1, *needle2;
} bad_counter_cases[] = {
    { "tests = { {name = 'n', action = {}, counters = {nope = 1}, expect = {verdict = 'allow'}} }\n",
      "counters: counter \"nope\" is not declared", NULL },
    { "tests = { {name = 'n', action = {}, counters = {refunded = '5'}, expect = {verdict = 'allow'}} }\n",
      "counters: counter \"refunded\" must be a number", NULL },
    { "tests = { {name = 'n', action = {}, counters = {refunded = true}, expect = {verdict = 'allow'}} }\n",
      "counter \"refunded\" must be a number", NULL },
    { "tests = { {name = 'n', action = {}, counters = {1, 2}, expect = {verdict = 'allow'}} }\n",
      "counters must be a table of counter name = number", NULL },
    { "tests = { {name = 'n', action = {}, counters = 5, expect = {verdict = 'allow'}} }\n",
      "counters must be a table", NULL },
    { "tests = { {name = 'n', action = {}, result = {}, expect = {verdict = 'allow'}} }\n",
      "unknown field \"expect.verdict\"", "valid, rule, reason and policy" },
    { "tests = { {name = 'n', action = {}, result = {}, expect = {}} }\n",
      "expect.valid is missing", NULL },
    { "tests = { {name = 'n', action = {}, result = {}, expect = {valid = 'yes'}} }\n",
      "expect.valid must be true or false", NULL },
    { "tests = { {name = 'n', action = {}, result = {}, expect = {valid = false, reason = 5}} }\n",
      "expect.reason must be text", NULL },
    { "tests = { {name = 'n', action = {}, result = {}} }\n", "expect must be a table {valid",
      NULL },
    { "tests = { {name = 'n', action = {}, expect = {verdict = 'allow', valid = true}} }\n",
      "unknown field \"expect.valid\"", NULL },
    { "tests = { {name = 'n', action = {}, results = {}, expect = {verdict = 'allow'}} }\n",
      "unknown field \"results\"", "counters and result" },
    { "tests = { {name = 'n', result = {}, expect = {valid = true}} }\n",
      "action must be a table", NULL },
};

static void test_runner_malformed_counter_cases(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    make_policy_dir(dir, cap_files);
    policy_set *set = load_dir(dir);
    ar_error err;
    for (size_t i = 0; i < sizeof bad_counter_cases / sizeof *bad_counter_cases; i++) {
        assert_int_equal(write_file(dir, "x_test.lua", bad_counter_cases[i].text), 0);
        json_t *report = (json_t *)1;
        ar_error_clear(&err);
        int rc = policy_run_tests(set, dir, &report, &err);
        const char *n1 = bad_counter_cases[i].needle1, *n2 = bad_counter_cases[i].needle2;
        if (rc != AR_E_INVALID || !strstr(err.message, "x_test.lua: test 1 (\"n\")") ||
            !strstr(err.message, n1) || (n2 && !strstr(err.message, n2)))
            print_error("bad case %zu: rc %d: %s: %s\n", i, rc, err.code, err.message);
        assert_int_equal(rc, AR_E_INVALID);
        assert_null(report);
        assert_string_equal(err.code, "policy_test_invalid");
        assert_non_null(strstr(err.message, "x_test.lua: test 1 (\"n\")"));
        assert_non_null(strstr(err.message, n1));
        if (n2)
            assert_non_null(strstr(err.message, n2));
    }
    policy_set_free(set);
    remove_all(dir);
}

static void test_eval_counters(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcount-XXXXXX";
    make_policy_dir(dir, cap_files);
    policy_set *set = load_dir(dir);
    json_t *action = json_loads("{\"connector\":\"shop\",\"action\":\"refund\","
                                "\"effect\":\"irreversible\",\"input\":{\"amount\":60}}", 0, NULL);
    json_t *out = NULL;
    ar_error err;
    /* no values: the counter reads 0 */
    assert_int_equal(policy_eval(set, action, NULL, &out, &err), AR_OK);
    assert_string_equal(json_string_value(json_object_get(out, "verdict")), "allow");
    json_decref(out);
    json_t *counters = json_loads("{\"refunded\":950}", 0, NULL);
    assert_int_equal(policy_eval(set, action, counters, &out, &err), AR_OK);
    assert_string_equal(json_string_value(json_object_get(out, "verdict")), "approve");
    assert_string_equal(json_string_value(json_object_get(out, "rule")), "refund_cap");
    assert_string_equal(json_string_value(json_object_get(out, "reason")),
                        "1010 refunded in 24 h with this one");
    json_decref(out);
    json_decref(counters);
    counters = json_loads("{\"refunded\":940.0}", 0, NULL);
    assert_int_equal(policy_eval(set, action, counters, &out, &err), AR_OK);
    assert_string_equal(json_string_value(json_object_get(out, "verdict")), "allow");
    json_decref(out);
    json_decref(counters);
    counters = json_object();
    assert_int_equal(policy_eval(set, action, counters, &out, &err), AR_OK);
    assert_string_equal(json_string_value(json_object_get(out, "verdict")), "allow");
    json_decref(out);
    json_decref(counters);

    static const struct {
        const char *json, *needle;
    } bad[] = {
        { "{\"nope\":1}", "counter \"nope\" is not declared" },
        { "{\"refunded\":\"950\"}", "counter \"refunded\" must be a number" },
        { "{\"refunded\":null}", "counter \"refunded\" must be a number" },
        { "[1]", "counters must be a table of counter name = number" },
        { "5", "counters must be" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        counters = json_loads(bad[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(counters);
        out = (json_t *)1;
        ar_error_clear(&err);
        assert_int_equal(policy_eval(set, action, counters, &out, &err), AR_E_INVALID);
        assert_null(out);
        assert_string_equal(err.code, "policy_counter_invalid");
        if (!strstr(err.message, bad[i].needle))
            print_error("eval counters %s: %s\n", bad[i].json, err.message);
        assert_non_null(strstr(err.message, bad[i].needle));
        json_decref(counters);
    }
    json_decref(action);
    policy_set_free(set);
    remove_all(dir);
}

/* ---- files run once per worker: nothing leaks between calls or files ------------------------ */

/* Decide on action_json and expect an allow with rule and reason from file (vote i). */
static void assert_file_vote(policy_worker *w, const char *action_json, size_t i,
                             const char *file, const char *rule, const char *reason)
{
    policy_decision d;
    decide_votes(w, action_json, &d);
    assert_vote(d.votes, i, file, "allow", rule, reason);
    json_decref(d.votes);
}

static void test_run_once_no_leak_between_decisions(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        /* writes everything it can reach: globals, its own tables (also through _G and
         * table functions), the action, and reports what it saw before writing */
        "a.lua",
        "local cache = {}\n"
        "LIST = { 'x', 'y' }\n"
        "CONFIG = { limit = 5, nested = { deep = 1 } }\n"
        "function decide(action, ctx)\n"
        "  local i = action.input\n"
        "  local seen = table.concat({ tostring(g), tostring(cache.hit), tostring(#LIST),\n"
        "    tostring(CONFIG.limit), tostring(CONFIG.nested.deep), tostring(rawget(_G, 'g')),\n"
        "    tostring(i.amount), tostring(#i.list), tostring(i.extra), tostring(action.connector),\n"
        "    tostring(next(cache)) }, ',')\n"
        "  g = 1\n"
        "  cache.hit = true\n"
        "  table.insert(LIST, 'z')\n"
        "  CONFIG.limit = 1000\n"
        "  CONFIG.nested.deep = 2\n"
        "  _G.CONFIG = nil\n"
        "  i.amount = 0\n"
        "  i.extra = 'added'\n"
        "  table.insert(i.list, 99)\n"
        "  action.connector = 'forged'\n"
        "  action.input = nil\n"
        "  -- its own writes are visible to itself for the rest of the call\n"
        "  local own = tostring(action.input) .. ',' .. tostring(i.amount) .. ',' .. #i.list ..\n"
        "              ',' .. tostring(CONFIG) .. ',' .. tostring(#LIST)\n"
        "  return { verdict = 'allow', rule = own, reason = seen }\n"
        "end\n",
        /* the next file in the same decision sees the action as it came */
        "b.lua",
        "function decide(action)\n"
        "  local i = action.input\n"
        "  local keys = {}\n"
        "  for k in pairs(i) do keys[#keys + 1] = k end\n"
        "  table.sort(keys)\n"
        "  return { verdict = 'allow', rule = 'b', reason = table.concat({ action.connector,\n"
        "    tostring(i.amount), tostring(#i.list), tostring(i.extra), table.concat(keys, ' '),\n"
        "    tostring(g), tostring(LIST) }, ',') }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 2); /* the fast path is what is tested */
    const char *action = "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"write\","
                         "\"input\":{\"amount\":40,\"list\":[1,2,3]}}";
    for (int i = 0; i < 3; i++) {
        assert_file_vote(w, action, 0, "a.lua", "nil,0,4,nil,3",
                         "nil,nil,2,5,1,nil,40,3,nil,shop,nil");
        assert_file_vote(w, action, 1, "b.lua", "b", "shop,40,3,nil,amount list,nil,nil");
    }
    /* a.lua added and removed keys of its kept tables: from its first call on it runs in full
     * (a table's layout, and so the order of pairs, could otherwise remember the call) */
    assert_int_equal(policy_worker_files_run_once(w), 1);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* Writes that only change values of kept tables, globals and the action keep a file on the
 * fast path, and are gone by the next call and the next file. */
static void test_run_once_overwrites_stay_fast(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        "a.lua",
        "local T = { x = 1, list = { 1, 2, 3 } }\n"
        "COUNT = 0\n"
        "function decide(action)\n"
        "  local before = table.concat({ T.x, T.list[2], COUNT, action.input.amount,\n"
        "                                action.connector }, ',')\n"
        "  T.x = T.x + 10\n"
        "  T.list[2] = 99\n"
        "  COUNT = COUNT + 1\n"
        "  _G.COUNT = COUNT + 1\n"
        "  action.input.amount = 0\n"
        "  action.connector = 'forged'\n"
        "  local after = table.concat({ T.x, T.list[2], COUNT, action.input.amount,\n"
        "                               action.connector }, ',')\n"
        "  return { verdict = 'allow', rule = after, reason = before }\n"
        "end\n",
        "b.lua",
        "function decide(action)\n"
        "  return { verdict = 'allow', rule = 'b', reason = action.connector .. ',' ..\n"
        "    action.input.amount .. ',' .. tostring(COUNT) }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    const char *action = "{\"connector\":\"shop\",\"effect\":\"write\",\"input\":{\"amount\":40}}";
    for (int i = 0; i < 3; i++) {
        assert_file_vote(w, action, 0, "a.lua", "11,99,2,0,forged", "1,2,0,40,shop");
        assert_file_vote(w, action, 1, "b.lua", "b", "shop,40,nil");
        assert_int_equal(policy_worker_files_run_once(w), 2);
    }
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* Each file here must not run once (its state would carry over), and must still decide as if
 * it ran in full on every call. */
static void test_run_once_only_when_safe(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        /* an upvalue that outlives the call, assigned by decide */
        "a_counter.lua",
        "local n = 0\n"
        "function decide() n = n + 1 return { verdict = 'allow', rule = 'n', reason = tostring(n) } end\n",
        /* the same through a helper, and through a closure made at the top level */
        "b_helper.lua",
        "local function make() local c = 0 return function() c = c + 1 return c end end\n"
        "local next_id = make()\n"
        "local last\n"
        "local function remember(x) last = x end\n"
        "function decide()\n"
        "  local before = tostring(last)\n"
        "  remember('set')\n"
        "  return { verdict = 'allow', rule = 'h', reason = next_id() .. ',' .. before }\n"
        "end\n",
        /* the top level reads the clock, draws a random number, or logs: every call must */
        "c_clock.lua",
        "local t = os.time()\n"
        "function decide() return { verdict = 'allow', rule = 'c', reason = math.type(t) } end\n",
        "d_random.lua",
        "local r = math.random(1, 1000000)\n"
        "function decide() return { verdict = 'allow', rule = 'r', reason = math.type(r) } end\n",
        "e_log.lua",
        "log('loaded')\n"
        "function decide() return nil end\n",
        /* a kept table with a metatable of its own, and a kept iterator */
        "f_meta.lua",
        "local T = setmetatable({}, { __index = function(t, k) return k .. '!' end })\n"
        "function decide() T.x = 1 return { verdict = 'allow', rule = 'm', reason = tostring(T.y) .. rawget(T, 'x') } end\n",
        "g_iter.lua",
        "local it = ('a b c'):gmatch('%a')\n"
        "function decide() return { verdict = 'allow', rule = 'i', reason = tostring(it()) } end\n",
        /* fit: a closure that assigns only a local of the running call */
        "h_fit.lua",
        "local function count(list) local n = 0 local function inc() n = n + 1 end\n"
        "  for _ in ipairs(list) do inc() end return n end\n"
        "function decide(action)\n"
        "  return { verdict = 'allow', rule = 'fit', reason = tostring(count(action.input.list)) }\n"
        "end\n",
        /* fit: os.time with a table and os.date with a time are not the clock */
        "i_fit.lua",
        "local t = os.time({ year = 2026, month = 1, day = 7, hour = 12 })\n"
        "local d = os.date('!%Y', 0)\n"
        "function decide() return { verdict = 'allow', rule = 'fit2', reason = d } end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 2); /* h_fit.lua and i_fit.lua */
    const char *action = "{\"connector\":\"x\",\"effect\":\"read\",\"input\":{\"list\":[1,2,3]}}";
    for (int i = 0; i < 3; i++) {
        policy_decision d;
        decide_votes(w, action, &d);
        assert_vote(d.votes, 0, "a_counter.lua", "allow", "n", "1");
        assert_vote(d.votes, 1, "b_helper.lua", "allow", "h", "1,nil");
        assert_vote(d.votes, 2, "c_clock.lua", "allow", "c", "integer");
        assert_vote(d.votes, 3, "d_random.lua", "allow", "r", "integer");
        assert_vote(d.votes, 4, "e_log.lua", NULL, NULL, NULL);
        assert_vote(d.votes, 5, "f_meta.lua", "allow", "m", "y!1");
        assert_vote(d.votes, 6, "g_iter.lua", "allow", "i", "a");
        assert_vote(d.votes, 7, "h_fit.lua", "allow", "fit", "3");
        assert_vote(d.votes, 8, "i_fit.lua", "allow", "fit2", "1970");
        json_decref(d.votes);
    }
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* A table kept from the top level, or the shared action, reads like a plain table. */
static void test_run_once_tables_read_as_plain(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        "a.lua",
        "local L = { 10, 20, 30 }\n"
        "local M = { a = 1, b = 2 }\n"
        "local ROLES = { 'finance' }\n"
        "local ALLOW = { verdict = 'approve', rule = 'const', reason = 'kept', roles = ROLES }\n"
        "local function count(t) local n = 0 for _ in pairs(t) do n = n + 1 end return n end\n"
        "function decide(action)\n"
        "  if action.input.kind == 'const' then return ALLOW end\n"
        "  local parts = {}\n"
        "  for _, v in ipairs(L) do parts[#parts + 1] = v end\n"
        "  local i = action.input\n"
        "  local r = table.concat({ #L, rawlen(L), rawget(M, 'a'), tostring(next(M) ~= nil),\n"
        "    tostring(getmetatable(M)), tostring(getmetatable(i)), count(M), table.concat(L, '-'),\n"
        "    table.concat(parts, '+'), select('#', table.unpack(L)), #i.list, rawlen(i.list),\n"
        "    count(i), tostring(rawget(i, 'kind')), tostring(next({})), type(next(i)),\n"
        "    tostring(rawequal(L, L)) }, ',')\n"
        "  -- writes through the table functions, then the reads again\n"
        "  table.insert(L, 40)\n"
        "  table.remove(L, 1)\n"
        "  table.sort(L, function(x, y) return x > y end)\n"
        "  M.c = 3\n"
        "  M.a = nil\n"
        "  r = r .. ';' .. table.concat(L, '-') .. ',' .. count(M) .. ',' .. tostring(rawget(M, 'a'))\n"
        "  return { verdict = 'allow', rule = 'plain', reason = r }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 1);
    for (int i = 0; i < 3; i++) {
        policy_decision d;
        decide_text(w, "{\"connector\":\"x\",\"effect\":\"read\",\"input\":"
                       "{\"kind\":\"read\",\"list\":[\"p\",\"q\"]}}", &d);
        assert_allow(&d, "plain", "3,3,1,true,nil,nil,2,10-20-30,10+20+30,3,2,2,2,read,nil,"
                                  "string,true;40-30-20,2,nil");
        /* a kept table returned as the decision, with a kept roles list */
        decide_text(w, "{\"connector\":\"x\",\"effect\":\"read\",\"input\":{\"kind\":\"const\"}}",
                    &d);
        assert_int_equal(d.verdict, POLICY_APPROVE);
        assert_string_equal(d.rule, "const");
        assert_string_equal(d.reason, "kept");
        assert_int_equal(d.n_roles, 1);
        assert_string_equal(d.roles[0], "finance");
    }
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* setmetatable on a table the call did not make: the file is run again the slow way, where it
 * works as it always did; the next file and the next call are not affected. */
static void test_run_once_setmetatable_demotes(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        "a.lua",
        "local T = {}\n"
        "function decide(action)\n"
        "  local before = tostring(getmetatable(T)) .. ',' .. tostring(T.x)\n"
        "  local ok = pcall(setmetatable, T, { __index = function() return 5 end })\n"
        "  setmetatable(action.input, { __index = function(t, k) return 'dflt' end })\n"
        "  return { verdict = 'allow', rule = 'meta', reason = before .. ';' .. tostring(ok) ..\n"
        "    ',' .. T.x .. ',' .. action.input.missing }\n"
        "end\n",
        "b.lua",
        "function decide(action)\n"
        "  return { verdict = 'allow', rule = 'b', reason = tostring(getmetatable(action.input)) ..\n"
        "    ',' .. tostring(action.input.missing) }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 2);
    const char *action = "{\"connector\":\"x\",\"effect\":\"read\",\"input\":{\"n\":1}}";
    for (int i = 0; i < 3; i++) {
        assert_file_vote(w, action, 0, "a.lua", "meta", "nil,nil;true,5,dflt");
        assert_file_vote(w, action, 1, "b.lua", "b", "nil,nil");
    }
    assert_int_equal(policy_worker_files_run_once(w), 1); /* a.lua now runs in full */
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* Many writes to kept tables in one call, or a write in a call that then fails: all undone. */
static void test_run_once_many_writes_undone(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        "a.lua",
        "local T = { 'first' }\n"
        "local S = { x = 1 }\n"
        "function decide(action)\n"
        "  local before = #T .. ',' .. tostring(T[2]) .. ',' .. tostring(S.x)\n"
        "  for i = 1, 20000 do T[i] = i end\n"
        "  S.x = nil\n"
        "  if action.input.fail then error('after writing') end\n"
        "  return { verdict = 'allow', rule = 'w', reason = before .. ';' .. #T }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    /* generous time: 20,000 logged writes under a sanitizer on a busy machine are not quick */
    const policy_limits limits = { .timeout_ms = 60000 };
    policy_set *set = load_dir_limits(dir, &limits);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 1);
    for (int i = 0; i < 3; i++) {
        policy_decision d;
        decide_text(w, "{\"connector\":\"x\",\"effect\":\"read\",\"input\":{}}", &d);
        assert_allow(&d, "w", "1,nil,1;20000");
        decide_text(w, "{\"connector\":\"x\",\"effect\":\"read\",\"input\":{\"fail\":true}}", &d);
        assert_policy_error(&d, "a.lua", "after writing");
    }
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* A kept table used as a metatable (the usual class idiom) works as it does on a plain table,
 * getmetatable gives the same table back, and its metamethods cannot be used to leak. */
static void test_run_once_kept_table_as_metatable(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        "a.lua",
        "local Account = { extra = 'orig' }\n"
        "Account.__index = Account\n"
        "Account.__tostring = function(a) return 'account ' .. a.id end\n"
        "function Account.new(id) return setmetatable({ id = id, n = 0 }, Account) end\n"
        "function Account:bump() self.n = self.n + 1 return self.n end\n"
        "local Unused = setmetatable({}, { __mode = 'k' }) -- reached by no function: not kept\n"
        "function decide(action)\n"
        "  local a = Account.new(action.input.id)\n"
        "  a:bump()\n"
        "  local seen = tostring(Account.extra) .. ',' .. tostring(rawget(Account, 'extra'))\n"
        "  Account.extra = 'leak'\n"
        "  Account.bump = function() return 100 end\n"
        "  return { verdict = 'allow', rule = 'class', reason = table.concat({ tostring(a),\n"
        "    a:bump(), tostring(getmetatable(a) == Account), seen, tostring(a.extra) }, ',') }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    for (int i = 0; i < 3; i++) {
        policy_decision d;
        decide_text(w, "{\"connector\":\"x\",\"effect\":\"read\",\"input\":{\"id\":\"A-1\"}}", &d);
        assert_allow(&d, "class", "account A-1,100,true,orig,orig,leak");
    }
    assert_int_equal(policy_worker_files_run_once(w), 1); /* only values changed: still fast */
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);

    char dir2[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files2[] = {
        "a.lua",
        "local Class = {}\n"
        "Class.__index = Class\n"
        "function Class.hello() return 'hi' end\n"
        "function decide(action)\n"
        "  local o = setmetatable({}, Class)\n"
        "  local mt = getmetatable(o)\n"
        "  mt.sneaky = 1 -- through what getmetatable gave: the same logged write as Class.sneaky\n"
        "  local gc = pcall(setmetatable, {}, setmetatable({}, { __index = { __gc = true } }))\n"
        "  Class.__gc = function() end\n"
        "  local ok, err = pcall(setmetatable, {}, Class)\n"
        "  return { verdict = 'allow', rule = 'c2', reason = table.concat({ o.hello(),\n"
        "    tostring(mt == Class), tostring(Class.sneaky), tostring(ok), tostring(gc),\n"
        "    tostring(err):match('__gc') or tostring(err) }, ',') }\n"
        "end\n",
        "b.lua",
        "function decide(action) return { verdict = 'allow', rule = 'b', reason = 'b' } end\n",
        NULL };
    make_policy_dir(dir2, files2);
    set = load_dir(dir2);
    w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 2);
    for (int i = 0; i < 3; i++) {
        policy_decision d;
        decide_text(w, "{\"connector\":\"x\",\"effect\":\"read\",\"input\":{}}", &d);
        assert_allow(&d, "c2", "hi,true,1,false,true,__gc");
    }
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir2);
}

/* The action view is kept from one decision to the next and refreshed: every decision sees
 * exactly its own action (keys gone, added, reordered, values and types changed, nulls). */
static void test_action_view_follows_each_action(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-ponce-XXXXXX";
    const char *files[] = {
        "a.lua",
        "local function show(v)\n"
        "  if type(v) ~= 'table' then return (math.type(v) or type(v)) .. ':' .. tostring(v) end\n"
        "  local keys = {}\n"
        "  for k in pairs(v) do keys[#keys + 1] = k end\n"
        "  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)\n"
        "  local out = {}\n"
        "  for _, k in ipairs(keys) do out[#out + 1] = tostring(k) .. '=' .. show(v[k]) end\n"
        "  return '{' .. table.concat(out, ' ') .. '}'\n"
        "end\n"
        "function decide(action)\n"
        "  return { verdict = 'allow', rule = 'show', reason = show(action) }\n"
        "end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 1);
    static const struct {
        const char *action, *seen;
    } cases[] = {
        { "{\"effect\":\"read\",\"input\":{\"a\":1,\"b\":\"x\"},\"p\":{\"q\":true}}",
          "{effect=string:read input={a=integer:1 b=string:x} p={q=boolean:true}}" },
        { "{\"effect\":\"read\",\"input\":{\"a\":1,\"b\":\"x\"},\"p\":{\"q\":true}}",
          "{effect=string:read input={a=integer:1 b=string:x} p={q=boolean:true}}" },
        /* same keys, other values and types */
        { "{\"effect\":\"read\",\"input\":{\"a\":1.5,\"b\":[1,null,3]},\"p\":{\"q\":false}}",
          "{effect=string:read input={a=float:1.5 b={1=integer:1 3=integer:3}} p={q=boolean:false}}" },
        /* a key gone, one null, one new, reordered */
        { "{\"effect\":\"read\",\"p\":null,\"input\":{\"c\":\"new\",\"a\":2}}",
          "{effect=string:read input={a=integer:2 c=string:new}}" },
        { "{\"effect\":\"read\",\"input\":{\"a\":2}}",
          "{effect=string:read input={a=integer:2}}" },
        { "{\"effect\":\"read\",\"input\":\"text\"}",
          "{effect=string:read input=string:text}" },
        { "{\"effect\":\"read\",\"input\":{\"a\":{\"b\":{\"c\":1}}}}",
          "{effect=string:read input={a={b={c=integer:1}}}}" },
        { "{\"effect\":\"read\",\"input\":{\"a\":{\"b\":{\"d\":1}}}}",
          "{effect=string:read input={a={b={d=integer:1}}}}" },
        { "{\"effect\":\"read\",\"input\":{\"a\":{\"b\":{}}}}",
          "{effect=string:read input={a={b={}}}}" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        policy_decision d;
        decide_text(w, cases[i].action, &d);
        assert_allow(&d, "show", cases[i].seen);
    }
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* Votes as C data, and the JSON built only when asked for. */
static void test_votes_as_c_data(void **state)
{
    (void)state;
    policy_set *set = load_case("compose");
    policy_worker *w = new_worker(set);
    const char *json = "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"write\","
                       "\"input\":{\"amount\":500}}";
    policy_decision d;
    decide_votes(w, json, &d);
    json_t *with_json = d.votes;
    assert_int_equal(d.n_votes, policy_set_count(set));
    assert_non_null(d.vote_list);
    json_t *rebuilt = policy_votes_json(&d);
    assert_true(json_equal(rebuilt, with_json));
    json_decref(rebuilt);
    for (size_t i = 0; i < d.n_votes; i++) {
        const json_t *v = json_array_get(with_json, i);
        assert_string_equal(d.vote_list[i].file, json_string_value(json_object_get(v, "file")));
        assert_int_equal(d.vote_list[i].abstained, json_is_null(json_object_get(v, "verdict")));
    }

    policy_worker_set_votes_json(w, 0);
    json_t *action = json_loads(json, 0, NULL);
    assert_int_equal(policy_decide(w, action, &d), AR_OK);
    json_decref(action);
    assert_null(d.votes);
    rebuilt = policy_votes_json(&d);
    assert_true(json_equal(rebuilt, with_json));
    json_decref(rebuilt);
    json_decref(with_json);
    policy_worker_free(w);
    policy_set_free(set);
}

/* The shipped policies run once per worker (the fast path the daemon relies on). */
static void test_shipped_policies_run_once(void **state)
{
    (void)state;
    policy_set *set = NULL;
    ar_error err;
    assert_int_equal(policy_set_load(AIORUN_SOURCE_DIR "/policies", NULL, &set, &err), AR_OK);
    policy_worker *w = new_worker(set);
    assert_true(policy_set_count(set) > 0);
    assert_int_equal(policy_worker_files_run_once(w), policy_set_count(set));
    policy_worker_free(w);
    policy_set_free(set);
}

/* ---- covers: which actions a file is run for ----------------------------------------------- */

/* a_refund.lua fails whenever it runs, b_llm.lua reads a counter (the source counts the calls)
 * and approves, c_all.lua (no covers) allows everything. prefix goes before each file's text
 * (a top level that reads the clock keeps a file from running once). */
static void make_covers_dir(char *dir, const char *prefix)
{
    char a[512], b[512], c[512];
    snprintf(a, sizeof a, "%scovers = { 'shop.refund' }\n"
             "function decide(a) error('a_refund ran for ' .. tostring(a.connector) .. '.' .. "
             "tostring(a.action)) end\n", prefix);
    snprintf(b, sizeof b, "%scovers = { 'llm' }\n"
             "counters = { spent = {connector = 'llm', window = '24h'} }\n"
             "function decide(a, ctx) ctx.counter('spent') "
             "return { verdict = 'approve', rule = 'b_llm' } end\n", prefix);
    snprintf(c, sizeof c, "%sfunction decide(a) return { verdict = 'allow', rule = 'c_all' } end\n",
             prefix);
    const char *files[] = { "a_refund.lua", a, "b_llm.lua", b, "c_all.lua", c, NULL };
    make_policy_dir(dir, files);
}

/* The votes of d as "verdict,verdict,verdict" ("-" for an abstention). */
static void vote_verdicts(const policy_decision *d, char *buf, size_t size)
{
    buf[0] = '\0';
    for (size_t i = 0; i < d->n_votes; i++) {
        const policy_vote *vote = &d->vote_list[i];
        const char *v = vote->abstained ? "-" : policy_verdict_name(vote->verdict);
        size_t len = strlen(buf);
        snprintf(buf + len, size - len, "%s%s", i ? "," : "", v);
    }
}

static void check_covers_decisions(const char *prefix, size_t run_once)
{
    char dir[] = "/tmp/aiorun-pcovers-XXXXXX";
    make_covers_dir(dir, prefix);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), run_once);
    fake_source src = { 0 };
    policy_worker_set_counters(w, fake_counter, &src);
    static const struct {
        const char *action;
        const char *verdicts;   /* a_refund, b_llm, c_all */
    } cases[] = {
        /* not covered: neither a_refund (it would fail) nor b_llm (it would count) runs */
        { "{\"connector\":\"shop\",\"action\":\"other\",\"effect\":\"read\"}", "-,-,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refunds\"}", "-,-,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refun\"}", "-,-,allow" },
        { "{\"connector\":\"sho\",\"action\":\"refund\"}", "-,-,allow" },
        { "{\"connector\":\"shop.refund\"}", "-,-,allow" },
        { "{\"connector\":\"llmx\",\"action\":\"complete\"}", "-,-,allow" },
        { "{\"connector\":\"ll\",\"action\":\"complete\"}", "-,-,allow" },
        { "{\"action\":\"refund\"}", "-,-,allow" },
        { "{\"connector\":5,\"action\":\"refund\"}", "-,-,allow" },
        { "{\"connector\":\"shop\",\"action\":[\"refund\"]}", "-,-,allow" },
        { "{}", "-,-,allow" },
    };
    policy_decision d;
    char got[64];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        decide_text(w, cases[i].action, &d);
        vote_verdicts(&d, got, sizeof got);
        if (strcmp(got, cases[i].verdicts) != 0 || d.verdict != POLICY_ALLOW)
            print_error("%s: votes %s, %s %s\n", cases[i].action, got, d.rule, d.reason);
        assert_string_equal(got, cases[i].verdicts);
        assert_allow(&d, "c_all", NULL);
    }
    assert_int_equal(src.calls, 0);

    /* covered: CONNECTOR.ACTION runs the file */
    decide_text(w, "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"write\"}", &d);
    assert_policy_error(&d, "a_refund.lua", "a_refund ran for shop.refund");
    vote_verdicts(&d, got, sizeof got);
    assert_string_equal(got, "deny,-,allow");
    /* CONNECTOR alone: every action of it, even one without an action name */
    const char *llm[] = { "{\"connector\":\"llm\",\"action\":\"complete\"}",
                          "{\"connector\":\"llm\",\"action\":\"embed\"}",
                          "{\"connector\":\"llm\"}" };
    for (size_t i = 0; i < sizeof llm / sizeof *llm; i++) {
        decide_text(w, llm[i], &d);
        assert_int_equal(d.verdict, POLICY_APPROVE);
        assert_string_equal(d.rule, "b_llm");
        assert_string_equal(d.file, "b_llm.lua");
        vote_verdicts(&d, got, sizeof got);
        assert_string_equal(got, "-,approve,allow");
        assert_int_equal(src.calls, (int)i + 1);
    }
    /* skipped files still vote, in file order, as abstentions: the same JSON as nil */
    policy_worker_set_votes_json(w, 1);
    decide_votes(w, "{\"connector\":\"echo\",\"action\":\"echo\"}", &d);
    json_t *want = json_loads("[{\"file\":\"a_refund.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},"
                              "{\"file\":\"b_llm.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},"
                              "{\"file\":\"c_all.lua\",\"verdict\":\"allow\",\"rule\":\"c_all\",\"reason\":null}]",
                              0, NULL);
    assert_non_null(want);
    if (!json_equal(want, d.votes)) {
        char *text = json_dumps(d.votes, 0);
        print_error("votes: %s\n", text);
        free(text);
    }
    assert_true(json_equal(want, d.votes));
    json_decref(want);
    json_decref(d.votes);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

static void test_covers_only_covered_actions_run(void **state)
{
    (void)state;
    check_covers_decisions("", 3);                         /* files that run once */
    check_covers_decisions("local loaded = os.time()\n", 0); /* files whose chunk runs per call */
}

/* A file that skips by covers decides exactly as one that returns nil for the same actions:
 * the same verdict, rule, reason, deciding file and votes. */
static void test_covers_same_as_returning_nil(void **state)
{
    (void)state;
    char with[] = "/tmp/aiorun-pcovers-XXXXXX", without[] = "/tmp/aiorun-pcovers-XXXXXX";
    const char *body = "function decide(a)\n"
                       "  if a.effect == 'write' then\n"
                       "    return { verdict = 'deny', rule = 'x_write', reason = 'no writes' }\n"
                       "  end\n"
                       "  return { verdict = 'approve', rule = 'x_read', roles = { 'ops' } }\n"
                       "end\n";
    char covered[512], checked[512];
    snprintf(covered, sizeof covered, "covers = { 'shop.refund', 'tickets' }\n%s", body);
    snprintf(checked, sizeof checked,
             "local real = (function() %s return decide end)()\n"
             "function decide(a)\n"
             "  if not ((a.connector == 'shop' and a.action == 'refund') or a.connector == 'tickets') "
             "then return nil end\n"
             "  return real(a)\n"
             "end\n", body);
    const char *other = "function decide(a) if a.action == 'refund' then "
                        "return { verdict = 'allow', rule = 'y_refund' } end end\n";
    const char *files_with[] = { "x.lua", covered, "y.lua", other, NULL };
    const char *files_without[] = { "x.lua", checked, "y.lua", other, NULL };
    make_policy_dir(with, files_with);
    make_policy_dir(without, files_without);
    policy_set *a = load_dir(with), *b = load_dir(without);
    static const char *const actions[] = {
        "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"read\"}",
        "{\"connector\":\"shop\",\"action\":\"refund\",\"effect\":\"write\"}",
        "{\"connector\":\"shop\",\"action\":\"charge\",\"effect\":\"write\"}",
        "{\"connector\":\"tickets\",\"action\":\"refund\",\"effect\":\"read\"}",
        "{\"connector\":\"echo\",\"action\":\"refund\",\"effect\":\"irreversible\"}",
        "{\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\"}",
        "{\"effect\":\"write\"}",
    };
    ar_error err;
    for (size_t i = 0; i < sizeof actions / sizeof *actions; i++) {
        json_t *action = json_loads(actions[i], 0, NULL);
        json_t *out_a = NULL, *out_b = NULL;
        assert_int_equal(policy_eval(a, action, NULL, &out_a, &err), AR_OK);
        assert_int_equal(policy_eval(b, action, NULL, &out_b, &err), AR_OK);
        if (!json_equal(out_a, out_b)) {
            char *ta = json_dumps(out_a, JSON_SORT_KEYS), *tb = json_dumps(out_b, JSON_SORT_KEYS);
            print_error("%s:\n  covers: %s\n  nil:    %s\n", actions[i], ta, tb);
            free(ta);
            free(tb);
        }
        assert_true(json_equal(out_a, out_b));
        json_decref(out_a);
        json_decref(out_b);
        json_decref(action);
    }
    policy_set_free(a);
    policy_set_free(b);
    remove_all(with);
    remove_all(without);
}

/* Once a file has used up the decision's budget, the files after it that would run vote deny
 * "not run"; a file the action is not for abstains, as always. */
static void test_covers_after_budget_overrun(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcovers-XXXXXX";
    const char *files[] = {
        "a.lua", "function decide(a) while true do end end\n",
        "b.lua", "covers = { 'x' }\nfunction decide(a) return nil end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    policy_decision d;
    decide_text(w, "{\"connector\":\"y\"}", &d);
    assert_policy_error(&d, "a.lua", "instruction budget exceeded");
    assert_int_equal(d.n_votes, 2);
    assert_int_equal(d.vote_list[1].abstained, 1);
    decide_text(w, "{\"connector\":\"x\"}", &d);
    assert_policy_error(&d, "a.lua", "instruction budget exceeded");
    assert_int_equal(d.vote_list[1].abstained, 0);
    assert_int_equal(d.vote_list[1].verdict, POLICY_DENY);
    assert_non_null(strstr(d.vote_list[1].reason, "policy b.lua not run"));
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* validate follows covers too: an uncovered file's validate does not run (it accepts). */
static void test_covers_validate(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcovers-XXXXXX";
    const char *files[] = {
        "a.lua", "covers = { 'shop.refund' }\nfunction decide(a) return nil end\n"
                 "function validate(action, result) return 'a says no' end\n",
        "b.lua", "covers = { 'llm' }\nfunction decide(a) return nil end\n"
                 "function validate(action, result) error('b validate ran') end\n",
        "c.lua", "function decide(a) return nil end\n"
                 "function validate(action, result) if result.c then return 'c says no' end end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    policy_validation v;
    validate_json(w, "{\"connector\":\"shop\",\"action\":\"refund\"}", "{}", &v);
    assert_rejected(&v, 0, "a.lua", "a", "a says no");
    validate_json(w, "{\"connector\":\"shop\",\"action\":\"charge\"}", "{}", &v);
    assert_valid(&v);
    validate_json(w, "{\"connector\":\"llm\",\"action\":\"complete\"}", "{}", &v);
    assert_rejected(&v, 1, "b.lua", "policy_error", "b validate ran");
    validate_json(w, "{\"connector\":\"echo\",\"action\":\"echo\"}", "{}", &v);
    assert_valid(&v);
    /* a file without covers validates every action */
    validate_json(w, "{\"connector\":\"echo\",\"action\":\"echo\"}", "{\"c\":true}", &v);
    assert_rejected(&v, 0, "c.lua", "c", "c says no");
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* Each covers, in x.lua beside a good file, makes the whole set fail to load, naming x.lua,
 * covers, the entry and what to write. */
static const struct {
    const char *text;
    const char *needle1, *needle2;
} bad_covers[] = {
    { "covers = 'shop.refund'\n", "covers must be a list of strings, got a string", NULL },
    { "covers = true\n", "covers must be a list of strings, got a boolean", NULL },
    { "covers = {}\n", "covers is empty", "remove covers" },
    { "covers = { 5 }\n", "covers[1] must be a string, got a number", NULL },
    { "covers = { 'shop.refund', true }\n", "covers[2] must be a string, got a boolean", NULL },
    { "covers = { 'shop.refund', { 'llm' } }\n", "covers[2] must be a string, got a table", NULL },
    { "covers = { 'a.b.c' }\n", "covers[1] \"a.b.c\"", "at most one dot" },
    { "covers = { 'llm', 'shop.refund.' }\n", "covers[2] \"shop.refund.\"", "at most one dot" },
    { "covers = { '.x' }\n", "covers[1] \".x\"", "connector before the dot is empty" },
    { "covers = { 'x.' }\n", "covers[1] \"x.\"", "action after the dot is empty" },
    { "covers = { '' }\n", "covers[1] \"\"", "it is empty" },
    { "covers = { '.' }\n", "covers[1] \".\"", "connector before the dot is empty" },
    { "covers = { 'Shop.refund' }\n", "covers[1] \"Shop.refund\"", "lower-case" },
    { "covers = { 'shop. refund' }\n", "covers[1] \"shop. refund\"", "action name is lower-case" },
    { "covers = { 'shop refund' }\n", "covers[1] \"shop refund\"", "connector name is lower-case" },
    { "covers = { 'shop\\0.refund' }\n", "covers[1] \"shop?.refund\"", "lower-case" },
    { "covers = { 'shop\\n' }\n", "covers[1] \"shop?\"", "lower-case" },
    { "covers = { shop = 'refund' }\n", "covers must be a list of strings", "named key" },
    { "covers = { 'llm', [3] = 'shop' }\n", "covers must be a list of strings", NULL },
    { "covers = { string.rep('c', 65) }\n", "longer than 64", NULL },
    { "covers = { 'c.' .. string.rep('a', 129) }\n", "longer than 128", NULL },
};

static void test_covers_invalid(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcovers-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(write_file(dir, "a.lua", "covers = { 'shop' }\n"
                                              "function decide(a) return nil end\n"), 0);
    for (size_t i = 0; i < sizeof bad_covers / sizeof *bad_covers; i++) {
        char text[512];
        snprintf(text, sizeof text, "%sfunction decide(a) return nil end\n", bad_covers[i].text);
        assert_int_equal(write_file(dir, "x.lua", text), 0);
        expect_dir_invalid(dir, "policy x.lua is invalid: ", bad_covers[i].needle1,
                           bad_covers[i].needle2);
        /* and says what to write instead */
        policy_set *set = NULL;
        ar_error err;
        ar_error_clear(&err);
        assert_int_equal(policy_set_load(dir, NULL, &set, &err), AR_E_INVALID);
        assert_non_null(strstr(err.message, "covers"));
        if (!strstr(err.message, "\"CONNECTOR.ACTION\""))
            print_error("%s\n", err.message);
        assert_non_null(strstr(err.message, "\"CONNECTOR.ACTION\""));
    }
    /* the longest names and one entry per kind are fine */
    char text[600];
    snprintf(text, sizeof text, "covers = { string.rep('c', 64) .. '.' .. string.rep('a', 128), "
             "'shop_1-x.refund_2-y', 'llm', 'llm' }\nfunction decide(a) return nil end\n");
    assert_int_equal(write_file(dir, "x.lua", text), 0);
    policy_set *set = load_dir(dir);
    policy_set_free(set);
    remove_all(dir);
}

/* ---- fast paths: the same outcomes as the plain ways --------------------------------------- */

/* The worker keeps the last action's covers marks while the connector and action names stay
 * the same: every decision still runs exactly the files its own names cover. */
static void test_covers_marks_follow_each_action(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pcovers-XXXXXX";
    const char *files[] = {
        "x.lua", "covers = { string.rep('c', 64) .. '.' .. string.rep('a', 128), 'shop.refund', "
                 "'llm' }\nfunction decide(a) return { verdict = 'deny', rule = 'x' } end\n"
                 "function validate(a, r) return 'x rejects' end\n",
        "y.lua", "function decide(a) return { verdict = 'allow', rule = 'y' } end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    char c64[65], c65[66], a128[129], a129[130];
    memset(c65, 'c', 65);
    memset(a129, 'a', 129);
    c65[65] = a129[129] = '\0';
    memcpy(c64, c65, 64);
    memcpy(a128, a129, 128);
    c64[64] = a128[128] = '\0';
    char longest[512], long_conn[512], long_act[512];
    snprintf(longest, sizeof longest, "{\"connector\":\"%s\",\"action\":\"%s\"}", c64, a128);
    snprintf(long_conn, sizeof long_conn, "{\"connector\":\"%s\",\"action\":\"%s\"}", c65, a128);
    snprintf(long_act, sizeof long_act, "{\"connector\":\"%s\",\"action\":\"%s\"}", c64, a129);
    const struct {
        const char *action;
        const char *verdicts;   /* x, y */
    } cases[] = {
        { "{\"connector\":\"shop\",\"action\":\"refund\"}", "deny,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refund\",\"input\":{\"n\":1}}", "deny,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refunds\"}", "-,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refund\"}", "deny,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refunc\"}", "-,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refund\"}", "deny,allow" },
        { "{\"connector\":\"shoq\",\"action\":\"refund\"}", "-,allow" },
        { "{\"connector\":\"shop\"}", "-,allow" },
        { "{\"connector\":\"shop\",\"action\":\"\"}", "-,allow" },
        { "{\"connector\":\"llm\"}", "deny,allow" },
        { "{\"connector\":\"llm\",\"action\":\"complete\"}", "deny,allow" },
        { "{\"connector\":\"\",\"action\":\"\"}", "-,allow" },
        { "{}", "-,allow" },
        { "{\"connector\":5}", "-,allow" },
        { "{\"connector\":null,\"action\":null}", "-,allow" },
        { "{\"connector\":\"llm\"}", "deny,allow" },
        { "{\"connector\":\"llm\",\"action\":5}", "deny,allow" },
        { longest, "deny,allow" },
        { longest, "deny,allow" },
        { long_conn, "-,allow" },
        { longest, "deny,allow" },
        { long_act, "-,allow" },
        { longest, "deny,allow" },
        { "{\"connector\":\"sh\\u0000op\",\"action\":\"refund\"}", "-,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refund\\u0000\"}", "-,allow" },
        { "{\"connector\":\"shop\",\"action\":\"refund\"}", "deny,allow" },
        { "{\"connector\":\"shopr\",\"action\":\"efund\"}", "-,allow" },
        { "{\"action\":\"refund\",\"connector\":\"shop\"}", "deny,allow" },
    };
    policy_decision d;
    char got[64];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *action = json_loads(cases[i].action, JSON_ALLOW_NUL, NULL);
        assert_non_null(action);
        assert_int_equal(policy_decide(w, action, &d), AR_OK);
        json_decref(action);
        json_decref(d.votes);
        vote_verdicts(&d, got, sizeof got);
        if (strcmp(got, cases[i].verdicts) != 0)
            print_error("case %zu %s: votes %s\n", i, cases[i].action, got);
        assert_string_equal(got, cases[i].verdicts);
        if (cases[i].verdicts[0] == '-') {
            assert_allow(&d, "y", NULL);
        } else {
            assert_int_equal(d.verdict, POLICY_DENY);
            assert_string_equal(d.rule, "x");
        }
    }
    /* validate marks the files too: the same runs of names, and then others in between */
    for (size_t n = 0; n < 2 * (sizeof cases / sizeof *cases); n++) {
        size_t count = sizeof cases / sizeof *cases;
        size_t j = n < count ? n : (n * 7 + 3) % count;
        json_t *result = json_object();
        json_t *action = json_loads(cases[j].action, JSON_ALLOW_NUL, NULL);
        assert_non_null(action);
        policy_validation v;
        assert_int_equal(policy_validate(w, action, result, &v), AR_OK);
        assert_int_equal(v.ok, cases[j].verdicts[0] == '-');
        if (!v.ok)
            assert_string_equal(v.reason, "x rejects");
        json_decref(action);
        json_decref(result);
        if (n % 5 == 0) { /* and a decision in between */
            decide_text(w, cases[0].action, &d);
            assert_int_equal(d.verdict, POLICY_DENY);
        }
    }
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* An action nested too deeply is denied before any file runs, whichever way the first file to
 * run runs (once per worker: its batch makes the action's view; its chunk on every call; no
 * file at all), and the next action is decided as usual. */
static void test_deep_action_denied_before_any_file(void **state)
{
    (void)state;
    char body[1024] = "\"effect\":\"read\",\"input\":{\"v\":";
    for (int i = 0; i < 40; i++)
        strcat(body, "{\"a\":");
    strcat(body, "1");
    for (int i = 0; i < 40; i++)
        strcat(body, "}");
    strcat(body, "}}");
    char deep[1100], deep_other[1100];
    snprintf(deep, sizeof deep, "{\"connector\":\"llm\",%s", body);
    snprintf(deep_other, sizeof deep_other, "{\"connector\":\"other\",%s", body);
    const char *prefixes[] = { "", "local started = os.time()\n" }; /* run once, or not */
    for (size_t p = 0; p < 2; p++) {
        char dir[] = "/tmp/aiorun-pdeep-XXXXXX";
        char b[512];
        snprintf(b, sizeof b, "%scovers = { 'llm' }\n"
                 "counters = { spent = {connector = 'llm', window = '24h'} }\n"
                 "function decide(a, ctx) ctx.counter('spent')\n"
                 "  return { verdict = 'allow', rule = 'b', reason = tostring(a.input.v) } end\n",
                 prefixes[p]);
        const char *files[] = {
            "a_skip.lua", "covers = { 'shop' }\nfunction decide(a) error('a ran') end\n",
            "b_count.lua", b,
            NULL };
        make_policy_dir(dir, files);
        policy_set *set = load_dir(dir);
        policy_worker *w = new_worker(set);
        assert_int_equal(policy_worker_files_run_once(w), p == 0 ? 2 : 1);
        fake_source src = { 0 };
        policy_worker_set_counters(w, fake_counter, &src);
        policy_decision d;
        const char *shallow = "{\"connector\":\"llm\",\"effect\":\"read\",\"input\":{\"v\":7}}";
        const char *order[] = { deep, shallow, deep, deep_other, shallow, deep };
        int calls = 0;
        for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
            decide_votes(w, order[i], &d);
            if (order[i] == shallow) {
                calls++;
                assert_allow(&d, "b", "7");
                assert_int_equal(d.n_votes, 2);
            } else {
                assert_int_equal(d.verdict, POLICY_DENY);
                assert_string_equal(d.rule, "action_invalid");
                assert_string_equal(d.reason, "the action is nested deeper than 32 levels");
                assert_int_equal(d.policy_error, 0);
                assert_int_equal(d.n_votes, 0);
                assert_int_equal(json_array_size(d.votes), 0); /* no file voted */
            }
            assert_int_equal(src.calls, calls);
            json_decref(d.votes);
        }
        policy_worker_free(w);
        policy_set_free(set);
        remove_all(dir);
    }
}

/* What string.lower and string.upper give (the sandbox returns a string the conversion would not
 * change as it is), and their errors, computed by stock Lua and by a policy: the same text. */
static const char case_snippet[] =
    "local function show(ok, v)\n"
    "  if not ok then return 'error:' .. tostring(v) end\n"
    "  return type(v) .. ':' .. v\n"
    "end\n"
    "local cases = { '', 'abc', 'ABC', 'MiXeD 123 !?', 'a\\0B\\0c', '\\0', 'Z',\n"
    "  '\\195\\169\\195\\137 caf\\195\\169 CAF\\195\\137 \\255\\128', string.rep('q', 3000),\n"
    "  string.rep('q', 2999) .. 'Q', 'Q' .. string.rep('q', 2999), 12, 1.5, -0.0, 2^63 }\n"
    "local out = {}\n"
    "for i, s in ipairs(cases) do\n"
    "  local l, u = string.lower(s), string.upper(s)\n"
    "  out[#out + 1] = show(pcall(string.lower, s)) .. '|' .. show(pcall(string.upper, s))\n"
    "    .. '|' .. tostring(l == s) .. tostring(u == s) .. tostring(rawequal(l, s))\n"
    "    .. tostring(#l) .. tostring(#u) .. tostring(l:upper() == u) .. tostring(u:lower() == l)\n"
    "end\n"
    "out[#out + 1] = show(pcall(string.lower))\n"
    "out[#out + 1] = show(pcall(string.upper, {}))\n"
    "out[#out + 1] = show(pcall(string.lower, nil))\n"
    "out[#out + 1] = show(pcall(string.lower, 'aB', 'extra'))\n"
    "out[#out + 1] = show(pcall(function() return ('AbC'):lower() .. ('AbC'):upper() end))\n"
    "out[#out + 1] = select('#', string.lower('abc', 1, 2)) .. select('#', ('ABC'):upper())\n"
    "local t = {}\n"
    "t[('key'):lower()] = 1\n"
    "out[#out + 1] = tostring(t.key) .. tostring(t[('KEY'):lower()])\n"
    "return table.concat(out, '\\n')\n";

static void test_lower_upper_match_stock_lua(void **state)
{
    (void)state;
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    if (luaL_loadstring(L, case_snippet) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK)
        print_error("%s\n", lua_tostring(L, -1));
    assert_int_equal(lua_type(L, -1), LUA_TSTRING);
    size_t len;
    const char *stock = lua_tolstring(L, -1, &len);
    assert_true(len > 100);
    static const char no_value[] =
        "error:bad argument #1 to 'string.lower' (string expected, got no value)";
    assert_non_null(memmem(stock, len, no_value, sizeof no_value - 1)); /* stock has NULs */

    char dir[] = "/tmp/aiorun-pcase-XXXXXX";
    char text[4096];
    snprintf(text, sizeof text,
             "local function run()\n%s\nend\n"
             "function decide(a)\n"
             "  local got, want = run(), a.input.expected\n"
             "  if got == want then return { verdict = 'allow', rule = 'same' } end\n"
             "  local i = 1\n"
             "  while got:sub(i, i) == want:sub(i, i) do i = i + 1 end\n"
             "  return { verdict = 'deny', rule = 'differs',\n"
             "           reason = 'byte ' .. i .. ': ' .. got:sub(i, i + 80) }\n"
             "end\n", case_snippet);
    const char *files[] = { "case.lua", text, NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    assert_int_equal(policy_worker_files_run_once(w), 1);
    json_t *action = json_pack("{s:s, s:{s:o}}", "effect", "read", "input", "expected",
                               json_stringn_nocheck(stock, len));
    assert_non_null(action);
    policy_decision d;
    for (int i = 0; i < 2; i++) { /* twice: the second call on the kept state */
        assert_int_equal(policy_decide(w, action, &d), AR_OK);
        json_decref(d.votes);
        assert_allow(&d, "same", NULL);
    }
    json_decref(action);
    lua_close(L);
    policy_worker_free(w);
    policy_set_free(set);
    remove_all(dir);
}

/* policy_votes_json as it was written before votes shared their files' names: the reference
 * the shared-name version must match byte for byte. */
static json_t *reference_vote_string(const char *s)
{
    return s ? json_stringn_nocheck(s, strlen(s)) : json_null();
}

static json_t *reference_votes_json(const policy_decision *d)
{
    json_t *votes = json_array();
    for (size_t i = 0; votes && d && i < d->n_votes; i++) {
        const policy_vote *v = &d->vote_list[i];
        json_t *vote = json_object();
        int abstained = v->abstained;
        assert_non_null(vote);
        assert_int_equal(json_object_set_new_nocheck(vote, "file", reference_vote_string(v->file)), 0);
        assert_int_equal(json_object_set_new_nocheck(vote, "verdict", abstained ? json_null()
                         : reference_vote_string(policy_verdict_name(v->verdict))), 0);
        assert_int_equal(json_object_set_new_nocheck(vote, "rule",
                         reference_vote_string(abstained ? NULL : v->rule)), 0);
        assert_int_equal(json_object_set_new_nocheck(vote, "reason",
                         reference_vote_string(abstained ? NULL : v->reason)), 0);
        assert_int_equal(json_array_append_new(votes, vote), 0);
    }
    return votes;
}

/* json_dumps(a, flags) and json_dumps(b, flags) are the same text, for a few flags. */
static void assert_same_dumps(const json_t *a, const json_t *b)
{
    const size_t flags[] = { 0, JSON_COMPACT, JSON_INDENT(2) | JSON_ENSURE_ASCII,
                             JSON_SORT_KEYS | JSON_COMPACT };
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++) {
        char *x = json_dumps(a, flags[i]), *y = json_dumps(b, flags[i]);
        assert_non_null(x);
        assert_non_null(y);
        if (strcmp(x, y) != 0)
            print_error("votes differ:\n%s\n%s\n", x, y);
        assert_string_equal(x, y);
        free(x);
        free(y);
    }
}

static void test_votes_json_unchanged(void **state)
{
    (void)state;
    char dir[] = "/tmp/aiorun-pvotes-XXXXXX";
    const char *files[] = {
        "a.lua", "function decide(a) return a.input.a end\n",
        "b\xff.lua", "function decide(a) if a.input.fail then error('b fails') end "
                     "return a.input.b end\n",
        "c.lua", "function decide(a) return a.input.c end\n",
        NULL };
    make_policy_dir(dir, files);
    policy_set *set = load_dir(dir);
    policy_worker *w = new_worker(set);
    static const char *const inputs[] = {
        "{}",
        "{\"a\":{\"verdict\":\"allow\",\"rule\":\"ra\",\"reason\":\"why a\"},"
        "\"c\":{\"verdict\":\"deny\"}}",
        "{\"a\":{\"verdict\":\"approve\",\"rule\":\"\",\"reason\":\"x\\u00e9y \\\"q\\\"\"},"
        "\"b\":{\"verdict\":\"suggest\",\"reason\":\"only\\nan idea\"},\"fail\":false}",
        "{\"fail\":true,\"c\":{\"verdict\":\"allow\",\"rule\":\"rc\"}}",
        "{\"c\":\"garbage\"}",
    };
    json_t *kept[sizeof inputs / sizeof *inputs], *want[sizeof inputs / sizeof *inputs];
    for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
        char json[1024];
        snprintf(json, sizeof json, "{\"connector\":\"c\",\"action\":\"a\",\"effect\":\"write\","
                 "\"input\":%s}", inputs[i]);
        policy_decision d;
        decide_votes(w, json, &d);
        assert_int_equal(d.n_votes, 3);
        want[i] = reference_votes_json(&d);
        kept[i] = policy_votes_json(&d);
        assert_non_null(kept[i]);
        assert_same_dumps(d.votes, want[i]);
        assert_same_dumps(kept[i], want[i]);
        assert_true(json_equal(kept[i], want[i]));
        /* votes made by hand, without the set's shared names, give the same JSON */
        policy_vote copy[3];
        memcpy(copy, d.vote_list, sizeof copy);
        for (int k = 0; k < 3; k++) {
            copy[k].file_json = NULL;
            copy[k].abstain_json = NULL;
        }
        policy_decision by_hand = d;
        by_hand.vote_list = copy;
        json_t *again = policy_votes_json(&by_hand);
        assert_same_dumps(again, want[i]);
        json_decref(again);
        json_decref(d.votes);
    }
    /* an abstention is one object per file, shared by every decision's votes */
    policy_decision d2;
    decide_votes(w, "{\"connector\":\"c\",\"action\":\"a\",\"effect\":\"write\",\"input\":{}}", &d2);
    json_t *votes2 = policy_votes_json(&d2);
    for (size_t k = 0; k < 3; k++)
        assert_ptr_equal(json_array_get(votes2, k), json_array_get(kept[0], k));
    json_decref(votes2);
    json_decref(d2.votes);
    char *text = json_dumps(kept[0], JSON_COMPACT);
    assert_string_equal(text, "[{\"file\":\"a.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},"
                              "{\"file\":\"b?.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},"
                              "{\"file\":\"c.lua\",\"verdict\":null,\"rule\":null,\"reason\":null}]");
    free(text);
    /* the votes outlive the worker and the set that made them */
    policy_worker_free(w);
    policy_set_free(set);
    for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
        assert_same_dumps(kept[i], want[i]);
        json_decref(kept[i]);
        json_decref(want[i]);
    }
    const char *names[] = { "a.lua", "b\xff.lua", "c.lua", NULL };
    for (size_t i = 0; names[i]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_allow_deny_order),
    cmocka_unit_test(test_default_read_and_write),
    cmocka_unit_test(test_configured_defaults),
    cmocka_unit_test(test_empty_dir_and_version),
    cmocka_unit_test(test_default_lua),
    cmocka_unit_test(test_syntax_error),
    cmocka_unit_test(test_missing_decide),
    cmocka_unit_test(test_load_error),
    cmocka_unit_test(test_load_refuses_binary_and_large),
    cmocka_unit_test(test_memory_bombs),
    cmocka_unit_test(test_instruction_budget),
    cmocka_unit_test(test_deadline),
    cmocka_unit_test(test_worker_memory_too_small),
    cmocka_unit_test(test_escape_attempts),
    cmocka_unit_test(test_no_leak_between_calls),
    cmocka_unit_test(test_garbage_results),
    cmocka_unit_test(test_action_conversion),
    cmocka_unit_test(test_stdlib_available),
    cmocka_unit_test(test_patterns_match_stock_lua),
    cmocka_unit_test(test_log_rate_limited),
    cmocka_unit_test(test_workers_in_threads),
    cmocka_unit_test(test_verdict_names),
    cmocka_unit_test(test_most_restrictive_wins),
    cmocka_unit_test(test_approve_fields_merged),
    cmocka_unit_test(test_field_validation),
    cmocka_unit_test(test_votes_recorded),
    cmocka_unit_test(test_invalid_utf8_cleaned),
    cmocka_unit_test(test_ctx_now),
    cmocka_unit_test(test_ctx_read_only_and_fresh),
    cmocka_unit_test(test_runner_pass_and_fail),
    cmocka_unit_test(test_runner_test_files_not_policies),
    cmocka_unit_test(test_runner_no_tests),
    cmocka_unit_test(test_runner_malformed_files),
    cmocka_unit_test(test_eval),
    cmocka_unit_test(test_shipped_policies),
    cmocka_unit_test(test_counter_declarations),
    cmocka_unit_test(test_counter_declarations_invalid),
    cmocka_unit_test(test_counter_in_ctx),
    cmocka_unit_test(test_counter_cap_flips_to_approve),
    cmocka_unit_test(test_counter_table_not_shared),
    cmocka_unit_test(test_validate_forms),
    cmocka_unit_test(test_validate_limits),
    cmocka_unit_test(test_validate_files_in_order),
    cmocka_unit_test(test_validate_not_defined),
    cmocka_unit_test(test_runner_counters_and_results),
    cmocka_unit_test(test_runner_malformed_counter_cases),
    cmocka_unit_test(test_eval_counters),
    cmocka_unit_test(test_run_once_no_leak_between_decisions),
    cmocka_unit_test(test_run_once_overwrites_stay_fast),
    cmocka_unit_test(test_run_once_only_when_safe),
    cmocka_unit_test(test_run_once_tables_read_as_plain),
    cmocka_unit_test(test_run_once_setmetatable_demotes),
    cmocka_unit_test(test_run_once_kept_table_as_metatable),
    cmocka_unit_test(test_run_once_many_writes_undone),
    cmocka_unit_test(test_action_view_follows_each_action),
    cmocka_unit_test(test_votes_as_c_data),
    cmocka_unit_test(test_shipped_policies_run_once),
    cmocka_unit_test(test_covers_only_covered_actions_run),
    cmocka_unit_test(test_covers_same_as_returning_nil),
    cmocka_unit_test(test_covers_after_budget_overrun),
    cmocka_unit_test(test_covers_validate),
    cmocka_unit_test(test_covers_invalid),
    cmocka_unit_test(test_covers_marks_follow_each_action),
    cmocka_unit_test(test_deep_action_denied_before_any_file),
    cmocka_unit_test(test_lower_upper_match_stock_lua),
    cmocka_unit_test(test_votes_json_unchanged),
};

AR_TEST_MAIN(tests, NULL, NULL)
