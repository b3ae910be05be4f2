/* test_sandbox.c - the plugin sandbox with real processes: bin/aiorun-host and the fixture
 * plugins in test-plugins/ (and plugins/echo.so). The test thread drives the loop itself
 * (sandbox_fixture.h): it calls the sandbox between runs of loop_run, and a polling timer
 * stops the loop once the awaited condition holds (so every sandbox call happens on "the
 * loop's thread"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_main.h"

#include "aiorun/plugin.h"
#include "ar.h"
#include "loop.h"
#include "sandbox.h"
#include "jsonw.h"
#include "sandbox_fixture.h"

#define FIXTURE(name) AIORUN_BUILD_DIR "/test-plugins/" name ".so"
#define ECHO_PATH AIORUN_BUILD_DIR "/plugins/echo.so"
#define STR_(x) #x
#define STR(x) STR_(x)
/* "1.2": the ABI this aiorun speaks, as its messages print it */
#define ABI_STRING STR(AIORUN_ABI_MAJOR) "." STR(AIORUN_ABI_MINOR)

/* ---- waiting for processes and calls (the pool's state: sandbox_fixture.h) ---- */

static int pred_serving(harness *h, void *arg)
{
    sandbox_snapshot s = snap(h);
    json_decref(s.descriptor);
    return s.serving >= *(int *)arg;
}

static int pred_both_done(harness *h, void *arg)
{
    (void)h;
    call_rec *r = arg;
    return r[0].done > 0 && r[1].done > 0;
}

static int pred_secrets_called(harness *h, void *arg)
{
    (void)h;
    return ((test_secrets *)arg)->calls >= 2;
}

static void wait_serving(harness *h, int n)
{
    if (!run_until(h, pred_serving, &n)) {
        sandbox_snapshot s = snap(h);
        fail_msg("%d processes serving, expected %d (state %s: %s)", s.serving, n,
                 sandbox_state_name(s.state), s.message);
    }
}

/* ---- set-up ---- */

/* ts (may be NULL: no secrets) must outlive the pool. */
static void start_pool_secrets(harness *h, const char *connector, const char *plugin,
                               int processes, const char *config_json, int timeout_ms,
                               test_secrets *ts)
{
    json_t *config = json_loads(config_json ? config_json : "{}", 0, NULL);
    sandbox_pool_opts opts = {
        .connector = connector,
        .plugin_path = plugin,
        .host_path = HOST_PATH,
        .config = config,
        .processes = processes,
        .timeout_ms = timeout_ms,
        .secrets_fn = ts ? test_secrets_fn : NULL,
        .secrets_arg = ts,
    };
    start_pool_opts(h, &opts);
    json_decref(config);
}

static void start_pool(harness *h, const char *connector, const char *plugin, int processes,
                       const char *config_json, int timeout_ms)
{
    start_pool_secrets(h, connector, plugin, processes, config_json, timeout_ms, NULL);
}

/* Invoke and wait for the result (which must arrive). */
static void call_sync(harness *h, const char *action, const char *input, int timeout_ms, call_rec *r)
{
    sandbox_call c = {.action = action, .input_json = input, .input_len = strlen(input),
                      .idempotency_key = "key-1", .attempt = 1, .timeout_ms = timeout_ms};
    memset(r, 0, sizeof *r);
    assert_int_equal(sandbox_pool_invoke(h->pool, &c, on_done, r), AR_OK);
    if (!run_until(h, pred_done, r))
        fail_msg("no result for action %s", action);
    assert_int_equal(r->done, 1);
}

static void expect_ok(harness *h, const char *action, const char *input, const char *expect_json)
{
    call_rec r;
    call_sync(h, action, input, 0, &r);
    if (!r.ok)
        fail_msg("action %s failed: class %d: %s", action, r.error_class, r.message);
    json_t *got = json_loads(r.result, JSON_DECODE_ANY, NULL);
    json_t *want = json_loads(expect_json, JSON_DECODE_ANY, NULL);
    assert_non_null(got);
    assert_non_null(want);
    if (!json_equal(got, want))
        fail_msg("action %s: got %s, expected %s", action, r.result, expect_json);
    json_decref(got);
    json_decref(want);
    rec_clear(&r);
}

static void expect_refused(const char *plugin, const char *config, char *message, size_t cap)
{
    harness h;
    start_pool(&h, "refusing", plugin, 1, config, 5000);
    wait_state(&h, SANDBOX_REFUSED);
    sandbox_snapshot s = snap(&h);
    snprintf(message, cap, "%s", s.message);
    json_decref(s.descriptor);
    print_message("refusal message: %s\n", message);
    sandbox_call c = {.action = "ok", .input_json = "{}", .input_len = 2};
    call_rec r = {0};
    assert_int_equal(sandbox_pool_invoke(h.pool, &c, on_done, &r), AR_E_CLOSED);
    stop_pool(&h);
    assert_int_equal(r.done, 0);
}

static void assert_contains(const char *s, const char *part)
{
    if (!strstr(s, part))
        fail_msg("\"%s\" does not contain \"%s\"", s, part);
}

/* ---- cases ---- */

static void test_ok_roundtrip(void **state)
{
    (void)state;
    harness h;
    start_pool(&h, "ok_conn", FIXTURE("t_ok"), 1, "{\"label\":\"x\"}", 5000);
    wait_state(&h, SANDBOX_READY);
    assert_true(h.events > 0);
    expect_ok(&h, "ok", "{\"a\":1,\"s\":\"caf\xc3\xa9\",\"l\":[true,null]}",
              "{\"a\":1,\"s\":\"caf\xc3\xa9\",\"l\":[true,null]}");
    expect_ok(&h, "write_op", "{\"n\":7}", "{\"n\":7}");
    /* no secrets were given: INIT carried {} */
    expect_ok(&h, "secret", "{}", "{\"found\":false}");
    /* a plugin that made no HTTP request reports none */
    call_rec r;
    call_sync(&h, "ok", "{}", 0, &r);
    assert_true(r.ok);
    assert_int_equal(r.http_status, 0);
    assert_int_equal(r.retry_after_ms, -1);
    rec_clear(&r);
    stop_pool(&h);
}

static void invoke_sync(harness *h, const sandbox_call *c, call_rec *r)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(sandbox_pool_invoke(h->pool, c, on_done, r), AR_OK);
    if (!run_until(h, pred_done, r))
        fail_msg("no result for action %s", c->action);
    assert_int_equal(r->done, 1);
}

/* The scheduler's compact input is written into the INVOKE frame as it is: the plugin must see
 * exactly what the parse-and-write path gave it, for every kind of value. */
static void test_compact_input_sent_as_is(void **state)
{
    (void)state;
    harness h;
    start_pool(&h, "ok_conn", FIXTURE("t_ok"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    const char *inputs[] = {
        "{}",
        "{\"a\":1,\"s\":\"caf\xc3\xa9 \\\" \\\\ \\n \\u0001 /\",\"l\":[true,null,false]}",
        "{\"z\":-9223372036854775808,\"m\":9223372036854775807,\"r\":0.1,\"e\":1e+300,\"n\":-0.5}",
        "{\"nested\":{\"b\":{\"c\":[[],{}]},\"a\":\"\"},\"\\u00e9t\\u00e9\":\"\xe2\x82\xac\"}",
    };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        json_t *v = json_loads(inputs[i], 0, NULL);
        assert_non_null(v);
        char *compact = jsonw_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        assert_non_null(compact);
        call_rec parsed, raw;
        sandbox_call c = {.action = "ok", .input_json = compact, .input_len = strlen(compact),
                          .idempotency_key = "k\"\\\t\xc3\xa9", .attempt = 3};
        invoke_sync(&h, &c, &parsed);
        c.input_compact = 1;
        invoke_sync(&h, &c, &raw);
        assert_true(parsed.ok);
        assert_true(raw.ok);
        assert_string_equal(raw.result, parsed.result);
        assert_string_equal(raw.result, compact);
        rec_clear(&parsed);
        rec_clear(&raw);
        free(compact);
        json_decref(v);
    }
    /* a key that is not UTF-8 is refused alike either way */
    sandbox_call bad = {.action = "ok", .input_json = "{}", .input_len = 2,
                        .idempotency_key = "\xff", .attempt = 1};
    call_rec r = {0};
    int parsed_rc = sandbox_pool_invoke(h.pool, &bad, on_done, &r);
    bad.input_compact = 1;
    assert_int_equal(sandbox_pool_invoke(h.pool, &bad, on_done, &r), parsed_rc);
    assert_int_not_equal(parsed_rc, AR_OK);
    assert_int_equal(r.done, 0);
    stop_pool(&h);
}

static void test_secrets_delivered(void **state)
{
    (void)state;
    harness h;
    json_t *values = json_pack("{s:s}", "token", "x");
    test_secrets ts = {.values = values};
    start_pool_secrets(&h, "secret_conn", FIXTURE("t_ok"), 1, "{}", 5000, &ts);
    wait_state(&h, SANDBOX_READY);
    /* asked for when the process started (INIT), and again for the log line its init wrote
     * (redaction): the pool keeps no copy */
    assert_int_equal(ts.calls, 2);
    expect_ok(&h, "secret", "{}", "{\"found\":true}");
    stop_pool(&h);
    json_decref(values);
}

/* The vault cannot be read: the process does not start, the pool says why (naming no value),
 * and it serves once the secrets can be read again. */
static void test_secrets_unreadable_fail_the_start(void **state)
{
    (void)state;
    harness h;
    json_t *values = json_pack("{s:s}", "token", "hunter22");
    test_secrets ts = {.values = values, .fail = 1};
    start_pool_secrets(&h, "nosecret_conn", FIXTURE("t_ok"), 1, "{}", 5000, &ts);
    assert_true(run_until(&h, pred_secrets_called, &ts));
    sandbox_snapshot s = snap(&h);
    print_message("message: %s\n", s.message);
    assert_int_not_equal(s.state, SANDBOX_READY);
    assert_contains(s.message, "its secrets cannot be read: test: the vault is unreadable");
    assert_null(strstr(s.message, "hunter22"));
    json_decref(s.descriptor);
    ts.fail = 0;
    wait_state(&h, SANDBOX_READY);
    expect_ok(&h, "secret", "{}", "{\"found\":true}");
    /* a result whose secrets cannot be read for redaction is withheld */
    ts.fail = 1;
    call_rec r;
    call_sync(&h, "ok", "{\"a\":1}", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_PERMANENT);
    assert_contains(r.message, "withheld");
    rec_clear(&r);
    ts.fail = 0;
    stop_pool(&h);
    json_decref(values);
}

static void test_secrets_redacted_in_results(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    json_t *values = json_pack("{s:s, s:s, s:s}", "token", "s3cr3t-t0ken", "pin", "42", "quoted",
                               "pa\"ss\\wd\n1");
    test_secrets ts = {.values = values};
    start_pool_secrets(&h, "redact_conn", FIXTURE("t_ok"), 1, "{}", 5000, &ts);
    wait_state(&h, SANDBOX_READY);
    /* in values (also twice, and inside a longer string), in keys, nested; a value shorter
     * than 4 bytes ("42") is left alone */
    expect_ok(&h, "ok",
              "{\"a\":\"s3cr3t-t0ken\",\"b\":[\"x s3cr3t-t0ken y s3cr3t-t0ken\"],"
              "\"s3cr3t-t0ken\":{\"n\":42,\"s\":\"42\"}}",
              "{\"a\":\"[REDACTED]\",\"b\":[\"x [REDACTED] y [REDACTED]\"],"
              "\"[REDACTED]\":{\"n\":42,\"s\":\"42\"}}");
    call_sync(&h, "fail", "{\"class\":\"auth\",\"message\":\"token s3cr3t-t0ken refused\"}", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_AUTH);
    assert_string_equal(r.message, "token [REDACTED] refused");
    rec_clear(&r);
    /* a value that needs JSON escaping: raw, and escaped inside JSON text the plugin passes on */
    expect_ok(&h, "ok", "{\"raw\":\"<pa\\\"ss\\\\wd\\n1>\",\"text\":\"{\\\"p\\\":\\\"pa\\\\\\\"ss\\\\\\\\wd\\\\n1\\\"}\"}",
              "{\"raw\":\"<[REDACTED]>\",\"text\":\"{\\\"p\\\":\\\"[REDACTED]\\\"}\"}");
    /* asked for again for every frame that carries plugin text */
    assert_true(ts.calls >= 4);
    stop_pool(&h);
    json_decref(values);
}

/* A process given no secrets has none to quote: its results are not checked against the vault
 * (no read per result). Secrets set later reach the connector only through new processes,
 * and what those send is redacted again. */
static void test_no_secrets_no_vault_read_per_result(void **state)
{
    (void)state;
    harness h;
    json_t *none = json_object();
    json_t *values = json_pack("{s:s}", "token", "s3cr3t-t0ken");
    test_secrets ts = {.values = none};
    start_pool_secrets(&h, "plain_conn", FIXTURE("t_ok"), 1, "{}", 5000, &ts);
    wait_state(&h, SANDBOX_READY);
    int at_ready = ts.calls;
    for (int i = 0; i < 3; i++)
        expect_ok(&h, "ok", "{\"a\":\"s3cr3t-t0ken\"}", "{\"a\":\"s3cr3t-t0ken\"}");
    assert_int_equal(ts.calls, at_ready);
    /* the secret is set, and the connector's processes replaced to pick it up */
    ts.values = values;
    assert_int_equal(sandbox_pool_recycle(h.pool), AR_OK);
    ts.calls = 0;
    assert_true(run_until(&h, pred_secrets_called, &ts));
    wait_state(&h, SANDBOX_READY);
    expect_ok(&h, "ok", "{\"a\":\"s3cr3t-t0ken\"}", "{\"a\":\"[REDACTED]\"}");
    stop_pool(&h);
    json_decref(values);
    json_decref(none);
}

static void test_lookup_without_lookup_is_invalid(void **state)
{
    (void)state;
    harness h;
    call_rec r = {0};
    sandbox_call c = {.action = "echo", .idempotency_key = "done-1"};
    start_pool(&h, "nolookup_conn", ECHO_PATH, 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    sandbox_snapshot s = snap(&h);
    assert_true(json_is_false(json_object_get(s.descriptor, "lookup")));
    json_decref(s.descriptor);
    assert_int_equal(sandbox_pool_lookup(h.pool, &c, on_done, &r), AR_E_INVALID);
    /* nothing was sent: the process is idle and serves the next call */
    expect_ok(&h, "echo", "{\"message\":\"after\"}", "{\"message\":\"after\"}");
    assert_int_equal(r.done, 0);
    stop_pool(&h);
}

/* Look up key and wait for the answer. */
static void lookup_sync(harness *h, const char *action, const char *key, call_rec *r)
{
    sandbox_call c = {.action = action, .idempotency_key = key};
    memset(r, 0, sizeof *r);
    assert_int_equal(sandbox_pool_lookup(h->pool, &c, on_done, r), AR_OK);
    if (!run_until(h, pred_done, r))
        fail_msg("no lookup answer for key %s", key);
    assert_int_equal(r->done, 1);
}

static void test_lookup_roundtrip(void **state)
{
    (void)state;
    harness h;
    call_rec r, unused = {0};
    start_pool(&h, "lookup_conn", FIXTURE("t_ok"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);

    lookup_sync(&h, "write_op", "done-42", &r);
    if (!r.ok)
        fail_msg("lookup failed: class %d: %s", r.error_class, r.message);
    assert_string_equal(r.result, "{\"found_key\":\"done-42\"}");
    rec_clear(&r);

    lookup_sync(&h, "write_op", "never-sent", &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_NOT_FOUND);
    assert_contains(r.message, "never-sent");
    rec_clear(&r);

    /* the host refuses a lookup for an action the plugin does not have */
    lookup_sync(&h, "no_such_action", "done-1", &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_INVALID);
    rec_clear(&r);

    /* without a key there is nothing to look up */
    sandbox_call no_key = {.action = "write_op", .idempotency_key = ""};
    assert_int_equal(sandbox_pool_lookup(h.pool, &no_key, on_done, &unused), AR_E_INVALID);
    no_key.idempotency_key = NULL;
    assert_int_equal(sandbox_pool_lookup(h.pool, &no_key, on_done, &unused), AR_E_INVALID);

    /* a lookup occupies its process like an invoke does */
    sandbox_call slow = {.action = "sleep", .input_json = "{\"ms\":200}", .input_len = 10};
    sandbox_call look = {.action = "write_op", .idempotency_key = "done-7"};
    assert_int_equal(sandbox_pool_invoke(h.pool, &slow, on_done, &r), AR_OK);
    assert_int_equal(sandbox_pool_lookup(h.pool, &look, on_done, &unused), AR_E_BUSY);
    assert_true(run_until(&h, pred_done, &r));
    assert_true(r.ok);
    rec_clear(&r);
    assert_int_equal(unused.done, 0);
    expect_ok(&h, "ok", "{}", "{}");
    stop_pool(&h);
}

static void test_echo_roundtrip(void **state)
{
    (void)state;
    harness h;
    start_pool(&h, "echo_conn", ECHO_PATH, 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    expect_ok(&h, "echo", "{\"message\":\"hello\",\"n\":2}", "{\"message\":\"hello\",\"n\":2}");
    stop_pool(&h);
}

static void test_errors_and_unknown_action(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_pool(&h, "err_conn", FIXTURE("t_ok"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    call_sync(&h, "fail", "{\"class\":\"rate_limited\",\"message\":\"slow down\"}", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_RATE_LIMITED);
    assert_string_equal(r.message, "slow down");
    rec_clear(&r);
    call_sync(&h, "no_such_action", "{}", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_INVALID);
    assert_contains(r.message, "no_such_action");
    rec_clear(&r);
    /* the process is still serving after errors */
    expect_ok(&h, "ok", "{}", "{}");
    sandbox_snapshot s = snap(&h);
    assert_int_equal(s.restarts, 0);
    json_decref(s.descriptor);
    stop_pool(&h);
}

static void test_error_classes(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int cls;
    } classes[] = {
        {"retryable", AIORUN_E_RETRYABLE}, {"rate_limited", AIORUN_E_RATE_LIMITED},
        {"timeout", AIORUN_E_TIMEOUT},     {"auth", AIORUN_E_AUTH},
        {"invalid", AIORUN_E_INVALID},     {"not_found", AIORUN_E_NOT_FOUND},
        {"conflict", AIORUN_E_CONFLICT},   {"permanent", AIORUN_E_PERMANENT},
    };
    harness h;
    call_rec r;
    char want[128];
    start_pool(&h, "errors_conn", FIXTURE("t_errors"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
        call_sync(&h, classes[i].name, "{}", 0, &r);
        assert_false(r.ok);
        assert_int_equal(r.error_class, classes[i].cls);
        snprintf(want, sizeof want, "t_errors: simulated %s failure", classes[i].name);
        assert_string_equal(r.message, want);
        rec_clear(&r);
    }
    call_sync(&h, "no_message", "{}", 0, &r);
    assert_int_equal(r.error_class, AIORUN_E_PERMANENT);
    assert_string_equal(r.message, "plugin returned permanent without a message");
    rec_clear(&r);
    /* set_result refused the text that is not JSON */
    call_sync(&h, "bad_result", "{}", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_INVALID);
    rec_clear(&r);
    expect_ok(&h, "ok", "{\"still\":\"serving\"}", "{\"still\":\"serving\"}");
    sandbox_snapshot s = snap(&h);
    assert_int_equal(s.restarts, 0);
    json_decref(s.descriptor);
    stop_pool(&h);
}

/* ---- cost (ABI 1.2 set_cost) ---- */

/* Invoke costly with input; check that it succeeded (or failed retryable when want_fail), that
 * its result lists the statuses set_cost returned (want_status, JSON text) and that the cost
 * that arrived is want_cost (JSON text; NULL: none). */
static void expect_cost(harness *h, const char *input, int want_fail, const char *want_status,
                        const char *want_cost)
{
    call_rec r;
    call_sync(h, "costly", input, 0, &r);
    if (want_fail) {
        assert_false(r.ok);
        assert_int_equal(r.error_class, AIORUN_E_RETRYABLE);
        assert_contains(r.message, "costly failed as asked");
    } else {
        if (!r.ok)
            fail_msg("costly %s failed: class %d: %s", input, r.error_class, r.message);
        char want[256];
        snprintf(want, sizeof want, "{\"cost_status\":%s}", want_status);
        if (strcmp(r.result, want) != 0)
            fail_msg("costly %s: result %s, expected %s", input, r.result, want);
    }
    if (!want_cost && r.cost)
        fail_msg("costly %s: cost %s, expected none", input, r.cost);
    if (want_cost) {
        /* compared as JSON: an integer differs from a real of the same value */
        json_t *got = r.cost ? json_loads(r.cost, 0, NULL) : NULL;
        json_t *want = json_loads(want_cost, 0, NULL);
        assert_non_null(want);
        if (!got || !json_equal(got, want))
            fail_msg("costly %s: cost %s, expected %s", input, r.cost ? r.cost : "(none)", want_cost);
        json_decref(got);
        json_decref(want);
    }
    rec_clear(&r);
}

static void test_cost_reported(void **state)
{
    (void)state;
    harness h;
    start_pool(&h, "cost_conn", FIXTURE("t_ok"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);

    expect_cost(&h, "{\"amount\":0.012,\"unit\":\"USD\"}", 0, "[0]", "{\"USD\":0.012}");
    /* the same unit adds up; another unit is kept apart; whole amounts are integers */
    expect_cost(&h, "{\"amount\":0.5,\"unit\":\"USD\",\"times\":3,"
                    "\"extra\":[{\"amount\":340,\"unit\":\"tokens\"},{\"amount\":0.25,\"unit\":\"EUR\"},"
                    "{\"amount\":60,\"unit\":\"tokens\"}]}",
                0, "[0,0,0,0,0,0]", "{\"EUR\":0.25,\"USD\":1.5,\"tokens\":400}");
    /* units are case-sensitive, 16 characters are allowed, zero is a cost like any other */
    expect_cost(&h, "{\"amount\":1,\"unit\":\"usd\",\"extra\":[{\"amount\":2,\"unit\":\"USD\"},"
                    "{\"amount\":0,\"unit\":\"Abcdefghijklmn_9\"}]}",
                0, "[0,0,0]", "{\"Abcdefghijklmn_9\":0,\"USD\":2,\"usd\":1}");
    /* a failed call still reports what it cost */
    expect_cost(&h, "{\"amount\":0.5,\"unit\":\"USD\",\"fail\":true}", 1, NULL, "{\"USD\":0.5}");
    /* each call starts from nothing: no cost reported, none arrives */
    expect_cost(&h, "{\"amount\":1,\"unit\":\"USD\",\"times\":0}", 0, "[]", NULL);
    call_rec r;
    call_sync(&h, "ok", "{}", 0, &r);
    assert_true(r.ok);
    assert_null(r.cost);
    rec_clear(&r);
    stop_pool(&h);
}

static void test_cost_refusals(void **state)
{
    (void)state;
    harness h;
    start_pool(&h, "cost_conn", FIXTURE("t_ok"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);

    /* AIORUN_E_INVALID (5) and nothing kept, for each kind of bad unit or amount */
    static const char *const bad[] = {
        "{\"amount\":1,\"unit\":\"\"}",
        "{\"amount\":1,\"unit\":\"US D\"}",
        "{\"amount\":1,\"unit\":\"US-D\"}",
        "{\"amount\":1,\"unit\":\"\u00e9ur\"}",
        "{\"amount\":1,\"unit\":\"Abcdefghijklmn_90\"}", /* 17 characters */
        "{\"amount\":-0.01,\"unit\":\"USD\"}",
        "{\"amount\":0,\"amount_text\":\"nan\",\"unit\":\"USD\"}",
        "{\"amount\":0,\"amount_text\":\"inf\",\"unit\":\"USD\"}",
        "{\"amount\":0,\"amount_text\":\"-inf\",\"unit\":\"USD\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_cost(&h, bad[i], 0, "[5]", NULL);
    /* a refusal changes nothing of what was reported before it */
    expect_cost(&h, "{\"amount\":2,\"unit\":\"USD\",\"extra\":[{\"amount\":-1,\"unit\":\"USD\"},"
                    "{\"amount\":1,\"unit\":\"a b\"},{\"amount\":3,\"unit\":\"USD\"}]}",
                0, "[0,5,5,0]", "{\"USD\":5}");
    /* a sum that would overflow is refused; the amount stays as it was */
    expect_cost(&h, "{\"amount\":1e308,\"unit\":\"X\",\"times\":2}", 0, "[0,5]", "{\"X\":1e308}");
    /* at most 8 units: the ninth is refused, adding to one of the eight is not */
    expect_cost(&h, "{\"amount\":1,\"unit\":\"u1\",\"extra\":["
                    "{\"amount\":1,\"unit\":\"u2\"},{\"amount\":1,\"unit\":\"u3\"},{\"amount\":1,\"unit\":\"u4\"},"
                    "{\"amount\":1,\"unit\":\"u5\"},{\"amount\":1,\"unit\":\"u6\"},{\"amount\":1,\"unit\":\"u7\"},"
                    "{\"amount\":1,\"unit\":\"u8\"},{\"amount\":1,\"unit\":\"u9\"},{\"amount\":1,\"unit\":\"u1\"}]}",
                0, "[0,0,0,0,0,0,0,0,5,0]",
                "{\"u1\":2,\"u2\":1,\"u3\":1,\"u4\":1,\"u5\":1,\"u6\":1,\"u7\":1,\"u8\":1}");
    stop_pool(&h);
}

static void test_cost_in_lookup(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_pool(&h, "cost_conn", FIXTURE("t_ok"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    lookup_sync(&h, "costly", "done-1", &r);
    assert_true(r.ok);
    assert_string_equal(r.result, "{\"found_key\":\"done-1\"}");
    assert_non_null(r.cost);
    assert_string_equal(r.cost, "{\"USD\":0.25}");
    rec_clear(&r);
    /* "did not happen" may have cost a query too */
    lookup_sync(&h, "costly", "never-sent", &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_NOT_FOUND);
    assert_non_null(r.cost);
    assert_string_equal(r.cost, "{\"USD\":0.25}");
    rec_clear(&r);
    lookup_sync(&h, "write_op", "done-2", &r);
    assert_true(r.ok);
    assert_null(r.cost);
    rec_clear(&r);
    stop_pool(&h);
}

/* A unit name holding a secret value is dropped by the daemon (the whole cost, logged), and the
 * call itself is unaffected. */
static void test_cost_with_secret_unit_dropped(void **state)
{
    (void)state;
    harness h;
    json_t *values = json_pack("{s:s}", "token", "Tok3nValue");
    test_secrets ts = {.values = values};
    start_pool_secrets(&h, "cost_conn", FIXTURE("t_ok"), 1, "{}", 5000, &ts);
    wait_state(&h, SANDBOX_READY);
    expect_cost(&h, "{\"amount\":1,\"unit\":\"USD\",\"extra\":[{\"amount\":2,\"unit\":\"xTok3nValue\"}]}",
                0, "[0,0]", NULL);
    expect_cost(&h, "{\"amount\":1,\"unit\":\"USD\"}", 0, "[0]", "{\"USD\":1}");
    stop_pool(&h);
    json_decref(values);
}

static void test_descriptor_in_snapshot(void **state)
{
    (void)state;
    harness h;
    start_pool(&h, "desc_conn", FIXTURE("t_ok"), 2, "{}", 5000);
    sandbox_snapshot s = snap(&h);
    assert_int_equal(s.state, SANDBOX_STARTING);
    assert_int_equal(s.processes, 2);
    json_decref(s.descriptor);
    wait_serving(&h, 2);

    s = snap(&h);
    assert_int_equal(s.state, SANDBOX_READY);
    assert_string_equal(s.message, "");
    assert_int_equal(s.serving, 2);
    assert_non_null(s.descriptor);
    json_t *d = s.descriptor;
    assert_string_equal(json_string_value(json_object_get(d, "name")), "t_ok");
    assert_string_equal(json_string_value(json_object_get(d, "version")), "1.0.0");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(d, "abi"), "major")), AIORUN_ABI_MAJOR);
    assert_true(json_is_true(json_object_get(d, "lookup")));
    assert_true(json_is_object(json_object_get(d, "config_schema")));
    json_t *actions = json_object_get(d, "actions");
    assert_int_equal(json_array_size(actions), 7);
    json_t *sleep = json_array_get(actions, 1);
    assert_string_equal(json_string_value(json_object_get(sleep, "name")), "sleep");
    assert_string_equal(json_string_value(json_object_get(sleep, "effect")), "read");
    assert_string_equal(json_string_value(json_object_get(sleep, "idempotency")), "native");
    assert_true(json_is_object(json_object_get(json_object_get(sleep, "input_schema"), "properties")));
    json_t *write_op = json_array_get(actions, 4);
    assert_string_equal(json_string_value(json_object_get(write_op, "effect")), "write");
    assert_string_equal(json_string_value(json_object_get(write_op, "idempotency")), "none");
    json_decref(d);
    stop_pool(&h);
}

static void test_big_result(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    enum { BYTES = 4 * 1024 * 1024 };
    start_pool(&h, "big_conn", FIXTURE("t_ok"), 1, "{}", 20000);
    wait_state(&h, SANDBOX_READY);
    call_sync(&h, "big", "{\"bytes\":4194304}", 0, &r);
    if (!r.ok)
        fail_msg("big failed: %s", r.message);
    json_t *v = json_loads(r.result, 0, NULL);
    const char *data = json_string_value(json_object_get(v, "data"));
    assert_non_null(data);
    assert_int_equal(strlen(data), BYTES);
    assert_int_equal(strspn(data, "x"), BYTES);
    json_decref(v);
    rec_clear(&r);
    expect_ok(&h, "ok", "{\"after\":1}", "{\"after\":1}");
    stop_pool(&h);
}

static void test_crash_restarts(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_pool(&h, "crash_conn", FIXTURE("t_crash"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    call_sync(&h, "crash", "{}", 0, &r);
    print_message("crash message: %s\n", r.message);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_PLUGIN_CRASHED);
    assert_contains(r.message, "plugin process for connector crash_conn");
    assert_contains(r.message, "during action crash");
#ifndef AIORUN_SANITIZE
    /* (under ASan the sanitizer's SEGV handler turns the signal into an exit status) */
    assert_contains(r.message, "died of signal 11 (SIGSEGV)");
#endif
    rec_clear(&r);
    wait_serving(&h, 1);
    expect_ok(&h, "ok", "{\"again\":true}", "{\"again\":true}");
    sandbox_snapshot s = snap(&h);
    assert_int_equal(s.restarts, 1);
    assert_int_equal(s.state, SANDBOX_READY);
    json_decref(s.descriptor);
    stop_pool(&h);
}

static void test_hang_times_out(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_pool(&h, "hang_conn", FIXTURE("t_hang"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    call_sync(&h, "hang", "{}", 300, &r);
    print_message("hang message: %s\n", r.message);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_TIMEOUT);
    assert_contains(r.message, "plugin did not answer within 300 ms");
    rec_clear(&r);
    wait_serving(&h, 1);
    expect_ok(&h, "ok", "{}", "{}");
    sandbox_snapshot s = snap(&h);
    assert_int_equal(s.restarts, 1);
    json_decref(s.descriptor);
    stop_pool(&h);
}

static void test_garbage_is_contained(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_pool(&h, "garbage_conn", FIXTURE("t_garbage"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    call_sync(&h, "garbage", "{}", 0, &r);
    print_message("garbage message: %s\n", r.message);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_PLUGIN_CRASHED);
    assert_contains(r.message, "plugin sent a malformed reply");
    assert_contains(r.message, "bad frame magic");
    rec_clear(&r);
    wait_serving(&h, 1);
    expect_ok(&h, "ok", "{}", "{}");
    stop_pool(&h);
}

static void test_abi_major_refused(void **state)
{
    (void)state;
    char msg[512];
    expect_refused(FIXTURE("t_abi_major"), "{}", msg, sizeof msg);
    assert_contains(msg, FIXTURE("t_abi_major"));
    assert_contains(msg, "plugin ABI 2.0");
    assert_contains(msg, "this aiorun speaks ABI " ABI_STRING);
    assert_contains(msg, "major versions must match");
}

static void test_abi_old_minor_loads(void **state)
{
    (void)state;
    harness h;
    start_pool(&h, "old_conn", FIXTURE("t_abi_old_minor"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    sandbox_snapshot s = snap(&h);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(s.descriptor, "abi"), "minor")), 0);
    /* lookup lies beyond the 1.0 struct_size: the host must not have read it */
    assert_true(json_is_false(json_object_get(s.descriptor, "lookup")));
    json_decref(s.descriptor);
    expect_ok(&h, "ok", "{\"v\":\"1.0\"}", "{\"v\":\"1.0\"}");
    call_rec r;
    call_sync(&h, "ok", "{}", 0, &r);
    assert_true(r.ok);
    assert_null(r.cost); /* a plugin built before 1.2 knows nothing of set_cost */
    rec_clear(&r);
    stop_pool(&h);
}

static void test_missing_entry_refused(void **state)
{
    (void)state;
    char msg[512];
    expect_refused(FIXTURE("t_no_entry"), "{}", msg, sizeof msg);
    assert_contains(msg, FIXTURE("t_no_entry"));
    assert_contains(msg, "does not export aiorun_plugin_entry");
    assert_contains(msg, "ABI " ABI_STRING);
}

static void test_dlopen_failure_refused(void **state)
{
    (void)state;
    char msg[512];
    /* not a shared object at all */
    expect_refused(HOST_PATH, "{}", msg, sizeof msg);
    assert_contains(msg, "cannot load plugin " HOST_PATH);
}

static void test_bad_init_refused(void **state)
{
    (void)state;
    char msg[512];
    expect_refused(FIXTURE("t_bad_init"), "{}", msg, sizeof msg);
    assert_contains(msg, "failed to initialize");
    assert_contains(msg, "auth: missing api_key");
}

static void test_config_schema_violation_refused(void **state)
{
    (void)state;
    char msg[512];
    expect_refused(FIXTURE("t_ok"), "{\"label\":5}", msg, sizeof msg);
    assert_contains(msg, "invalid config for connector refusing");
    assert_contains(msg, "config.label");
    expect_refused(FIXTURE("t_ok"), "{\"unknown_key\":true}", msg, sizeof msg);
    assert_contains(msg, "unknown_key");
}

static void test_two_processes_in_parallel_and_busy(void **state)
{
    (void)state;
    harness h;
    call_rec r[2] = {0}, third = {0};
    sandbox_call c = {.action = "sleep", .input_json = "{\"ms\":300}", .input_len = 10,
                      .idempotency_key = "k", .attempt = 1};
    start_pool(&h, "par_conn", FIXTURE("t_ok"), 2, "{}", 10000);
    wait_serving(&h, 2);

    assert_int_equal(sandbox_pool_invoke(h.pool, &c, on_done, &r[0]), AR_OK);
    /* the loop has not run since: the first call is certainly still in flight */
    assert_int_equal(r[0].done, 0);
    assert_int_equal(sandbox_pool_invoke(h.pool, &c, on_done, &r[1]), AR_OK);
    assert_int_equal(r[0].done, 0);
    /* both processes are busy: a third call must wait */
    assert_int_equal(sandbox_pool_invoke(h.pool, &c, on_done, &third), AR_E_BUSY);

    assert_true(run_until(&h, pred_both_done, r));
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].done, 1);
        if (!r[i].ok)
            fail_msg("sleep %d failed: %s", i, r[i].message);
        assert_string_equal(r[i].result, "{\"slept_ms\":300}");
        rec_clear(&r[i]);
    }
    assert_int_equal(third.done, 0);
    /* idle again: calls are accepted */
    expect_ok(&h, "ok", "{}", "{}");
    stop_pool(&h);
}

/* done() of one call dispatches the next on the process that just became idle. */
typedef struct chain {
    harness *h;
    int remaining;
    int completed;
    int ok;
    call_rec last;
} chain;

static void chain_done(void *arg, const sandbox_result *res)
{
    chain *c = arg;
    c->completed++;
    c->ok += res->ok;
    if (--c->remaining > 0) {
        sandbox_call next = {.action = "ok", .input_json = "{\"chained\":1}", .input_len = 13};
        assert_int_equal(sandbox_pool_invoke(c->h->pool, &next, chain_done, c), AR_OK);
    }
}

static int pred_chain_done(harness *h, void *arg)
{
    (void)h;
    return ((chain *)arg)->remaining == 0;
}

static void test_invoke_from_done_and_bad_calls(void **state)
{
    (void)state;
    harness h;
    chain c = {.h = &h, .remaining = 5};
    sandbox_call first = {.action = "ok", .input_json = "{}", .input_len = 2};
    sandbox_call bad_json = {.action = "ok", .input_json = "{nope", .input_len = 5};
    sandbox_call no_action = {.input_json = "{}", .input_len = 2};
    call_rec unused = {0};
    start_pool(&h, "chain_conn", FIXTURE("t_ok"), 1, "{}", 5000);
    wait_state(&h, SANDBOX_READY);
    assert_int_equal(sandbox_pool_invoke(h.pool, &bad_json, on_done, &unused), AR_E_INVALID);
    assert_int_equal(sandbox_pool_invoke(h.pool, &no_action, on_done, &unused), AR_E_INVALID);
    assert_int_equal(sandbox_pool_invoke(h.pool, &first, chain_done, &c), AR_OK);
    assert_true(run_until(&h, pred_chain_done, &c));
    assert_int_equal(c.completed, 5);
    assert_int_equal(c.ok, 5);
    assert_int_equal(unused.done, 0);
    stop_pool(&h);
}

static void test_free_with_call_in_flight(void **state)
{
    (void)state;
    harness h;
    call_rec r = {0};
    sandbox_call c = {.action = "sleep", .input_json = "{\"ms\":5000}", .input_len = 11};
    start_pool(&h, "free_conn", FIXTURE("t_ok"), 1, "{}", 10000);
    wait_state(&h, SANDBOX_READY);
    assert_int_equal(sandbox_pool_invoke(h.pool, &c, on_done, &r), AR_OK);
    sandbox_pool_free(h.pool);
    h.pool = NULL;
    assert_int_equal(r.done, 1);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_PLUGIN_CRASHED);
    assert_contains(r.message, "shut down while action sleep was running");
    stop_pool(&h);
}

static void test_startup_failures_degrade(void **state)
{
    (void)state;
    harness h;
    /* a "host" that exits at once: every start dies before HELLO */
    sandbox_pool_opts opts = {.connector = "dead_conn", .plugin_path = FIXTURE("t_ok"),
                              .host_path = "/bin/false", .processes = 1, .timeout_ms = 1000};
    start_pool_opts(&h, &opts);
    wait_state(&h, SANDBOX_DEGRADED);
    sandbox_snapshot s = snap(&h);
    print_message("degraded message: %s\n", s.message);
    assert_contains(s.message, "failed to start 5 times in a row");
    assert_contains(s.message, "exited with status 1 before it was ready");
    assert_true(s.restarts >= 4);
    assert_null(s.descriptor);
    stop_pool(&h);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    loop_t *loop;
    sandbox_pool *pool = (sandbox_pool *)1;
    ar_error err;
    sandbox_pool_opts opts = {.connector = "x", .plugin_path = FIXTURE("t_ok"),
                              .host_path = AIORUN_BUILD_DIR "/bin/no-such-host", .processes = 1};
    assert_int_equal(loop_new(&loop), AR_OK);
    assert_int_equal(sandbox_pool_new(loop, &opts, NULL, NULL, &pool, &err), AR_E_INVALID);
    assert_null(pool);
    assert_contains(err.message, "no-such-host");
    opts.host_path = HOST_PATH;
    opts.processes = 0;
    assert_int_equal(sandbox_pool_new(loop, &opts, NULL, NULL, &pool, &err), AR_E_INVALID);
    opts.processes = 1;
    opts.plugin_path = "relative.so";
    assert_int_equal(sandbox_pool_new(loop, &opts, NULL, NULL, &pool, &err), AR_E_INVALID);
    opts.plugin_path = FIXTURE("t_ok");
    /* the connector name becomes a file name in the runtime directory */
    opts.connector = "../escape";
    assert_int_equal(sandbox_pool_new(loop, &opts, NULL, NULL, &pool, &err), AR_E_INVALID);
    assert_contains(err.message, "cannot name a file");
    opts.connector = "x";
    static const int bad_ports[] = {443, 70000};
    opts.lockdown.ports = bad_ports;
    opts.lockdown.n_ports = 2;
    assert_int_equal(sandbox_pool_new(loop, &opts, NULL, NULL, &pool, &err), AR_E_INVALID);
    assert_contains(err.message, "port 70000");
    assert_null(pool);
    loop_free(loop);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_ok_roundtrip),
    cmocka_unit_test(test_compact_input_sent_as_is),
    cmocka_unit_test(test_echo_roundtrip),
    cmocka_unit_test(test_secrets_delivered),
    cmocka_unit_test(test_secrets_unreadable_fail_the_start),
    cmocka_unit_test(test_secrets_redacted_in_results),
    cmocka_unit_test(test_no_secrets_no_vault_read_per_result),
    cmocka_unit_test(test_lookup_without_lookup_is_invalid),
    cmocka_unit_test(test_lookup_roundtrip),
    cmocka_unit_test(test_errors_and_unknown_action),
    cmocka_unit_test(test_error_classes),
    cmocka_unit_test(test_cost_reported),
    cmocka_unit_test(test_cost_refusals),
    cmocka_unit_test(test_cost_in_lookup),
    cmocka_unit_test(test_cost_with_secret_unit_dropped),
    cmocka_unit_test(test_descriptor_in_snapshot),
    cmocka_unit_test(test_big_result),
    cmocka_unit_test(test_crash_restarts),
    cmocka_unit_test(test_hang_times_out),
    cmocka_unit_test(test_garbage_is_contained),
    cmocka_unit_test(test_abi_major_refused),
    cmocka_unit_test(test_abi_old_minor_loads),
    cmocka_unit_test(test_missing_entry_refused),
    cmocka_unit_test(test_dlopen_failure_refused),
    cmocka_unit_test(test_bad_init_refused),
    cmocka_unit_test(test_config_schema_violation_refused),
    cmocka_unit_test(test_two_processes_in_parallel_and_busy),
    cmocka_unit_test(test_invoke_from_done_and_bad_calls),
    cmocka_unit_test(test_free_with_call_in_flight),
    cmocka_unit_test(test_startup_failures_degrade),
    cmocka_unit_test(test_bad_arguments),
};

AR_TEST_MAIN(tests, NULL, NULL)
