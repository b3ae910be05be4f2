/* test_flow.c - the token bucket, circuit breaker and priority heap of core/flow.c. Every time is
 * passed explicitly, so nothing here sleeps or depends on the machine's speed. */
#include "test_main.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ar.h"
#include "flow.h"

/* ---- token bucket ---------------------------------------------------------------------------- */

static void bucket_starts_full(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 10, 5, 1000);
    assert_true(flow_bucket_level(&b, 1000) == 5.0);
    assert_int_equal(flow_bucket_wait_ms(&b, 1, 1000), 0);
    assert_int_equal(flow_bucket_wait_ms(&b, 5, 1000), 0);
}

static void bucket_takes_burst_then_refuses(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 10, 5, 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(flow_bucket_take(&b, 0), 1);
    assert_int_equal(flow_bucket_take(&b, 0), 0);
    assert_int_equal(flow_bucket_take(&b, 0), 0);
    assert_true(flow_bucket_level(&b, 0) < 1.0);
}

static void bucket_burst_zero_means_one(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 10, 0, 0);
    assert_int_equal(flow_bucket_take(&b, 0), 1);
    assert_int_equal(flow_bucket_take(&b, 0), 0);
}

static void bucket_refills_at_rate(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 10, 3, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(flow_bucket_take(&b, 0), 1);
    assert_int_equal(flow_bucket_take(&b, 0), 0);
    /* 10 per second: a token every 100 ms, not before. */
    assert_int_equal(flow_bucket_take(&b, 99), 0);
    assert_int_equal(flow_bucket_take(&b, 100), 1);
    assert_int_equal(flow_bucket_take(&b, 100), 0);
    /* 250 ms later: two and a half tokens, so two takes. */
    assert_int_equal(flow_bucket_take(&b, 350), 1);
    assert_int_equal(flow_bucket_take(&b, 350), 1);
    assert_int_equal(flow_bucket_take(&b, 350), 0);
    assert_float_equal(flow_bucket_level(&b, 350), 0.5, 1e-9);
}

static void bucket_capped_at_burst_after_idle(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 10, 4, 0);
    assert_int_equal(flow_bucket_take(&b, 0), 1);
    int64_t later = (int64_t)1000 * 3600 * 24 * 365; /* a year idle */
    assert_true(flow_bucket_level(&b, later) == 4.0);
    int taken = 0;
    while (flow_bucket_take(&b, later))
        taken++;
    assert_int_equal(taken, 4);
}

static void bucket_time_going_back_is_harmless(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 10, 1, 1000);
    assert_int_equal(flow_bucket_take(&b, 1000), 1);
    /* An earlier timestamp must neither refill nor corrupt the bucket. */
    assert_int_equal(flow_bucket_take(&b, 0), 0);
    assert_true(flow_bucket_level(&b, 500) < 1.0);
    assert_int_equal(flow_bucket_take(&b, 1100), 1);
}

static void bucket_wait_ms(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 10, 2, 0);
    assert_int_equal(flow_bucket_wait_ms(&b, 1, 0), 0);
    assert_int_equal(flow_bucket_take(&b, 0), 1);
    assert_int_equal(flow_bucket_take(&b, 0), 1);
    assert_int_equal(flow_bucket_wait_ms(&b, 1, 0), 100);
    assert_int_equal(flow_bucket_wait_ms(&b, 1, 30), 70);
    assert_int_equal(flow_bucket_wait_ms(&b, 2, 30), 170);
    /* need beyond burst is clamped: the bucket can never hold more than burst. */
    assert_int_equal(flow_bucket_wait_ms(&b, 50, 30), 170);
    assert_int_equal(flow_bucket_wait_ms(&b, 1, 100), 0);

    /* A rate that does not divide 1000: 3 per second is a token every 333.3 ms -> ceil 334. */
    flow_bucket c;
    flow_bucket_init(&c, 3, 1, 0);
    assert_int_equal(flow_bucket_take(&c, 0), 1);
    assert_int_equal(flow_bucket_wait_ms(&c, 1, 0), 334);
    assert_int_equal(flow_bucket_take(&c, 333), 0);
    assert_int_equal(flow_bucket_take(&c, 334), 1);
}

/* Whatever the state, waiting exactly wait_ms is enough, and a millisecond less is not. */
static void bucket_wait_ms_is_tight(void **state)
{
    (void)state;
    static const double rates[] = {1, 3, 7, 10, 33, 100, 333, 999};
    for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
        flow_bucket b;
        flow_bucket_init(&b, rates[r], 2, 0);
        int64_t now = 0;
        for (int round = 0; round < 200; round++) {
            while (flow_bucket_take(&b, now))
                ;
            int64_t w = flow_bucket_wait_ms(&b, 1, now);
            assert_true(w > 0);
            /* the probe at now + w - 1 refills the copy only, not b */
            flow_bucket early = b;
            if (flow_bucket_take(&early, now + w - 1))
                fail_msg("rate %g round %d: a token at +%lld ms, before wait_ms %lld", rates[r], round,
                         (long long)(w - 1), (long long)w);
            now += w;
            if (!flow_bucket_take(&b, now))
                fail_msg("rate %g round %d: no token after waiting wait_ms %lld", rates[r], round, (long long)w);
            now += round % 7; /* vary the phase */
        }
    }
}

static void bucket_rate_zero_is_unlimited(void **state)
{
    (void)state;
    flow_bucket b;
    flow_bucket_init(&b, 0, 1, 0);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(flow_bucket_take(&b, 0), 1);
    assert_int_equal(flow_bucket_wait_ms(&b, 1, 0), 0);
    assert_int_equal(flow_bucket_wait_ms(&b, 1000, 0), 0);
    assert_true(flow_bucket_level(&b, 0) >= 1.0);
}

/* A taker trying every millisecond for 10 s gets at least rate*10 and at most burst + rate*10.
 * (The lower bound needs burst >= 1 + rate/1000: a smaller bucket overflows between two tries.) */
static void bucket_bounds_over_ten_seconds(void **state)
{
    (void)state;
    static const struct { double rate; int burst; } cases[] = {
        {10, 5}, {10, 1}, {3, 1}, {7, 20}, {0.5, 2}, {250, 20}, {333, 3}, {999, 2}, {1000, 2}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        flow_bucket b;
        flow_bucket_init(&b, cases[i].rate, cases[i].burst, 0);
        long taken = 0;
        for (int64_t t = 0; t < 10000; t++)
            taken += flow_bucket_take(&b, t);
        double lo = cases[i].rate * 10, hi = cases[i].burst + cases[i].rate * 10;
        if (taken < lo || taken > hi)
            fail_msg("rate %g burst %d: %ld takes in 10 s, want %g..%g", cases[i].rate, cases[i].burst, taken,
                     lo, hi);
    }
}

/* ---- circuit breaker ------------------------------------------------------------------------- */

static config_breaker breaker_cfg(int window, int min_calls, double ratio, int consecutive, int open_s,
                                  int half_open_calls)
{
    return (config_breaker){.window = window, .min_calls = min_calls, .failure_ratio = ratio,
                            .consecutive = consecutive, .open_s = open_s, .half_open_calls = half_open_calls};
}

static void breaker_start(flow_breaker *b, config_breaker cfg, int64_t now)
{
    assert_int_equal(flow_breaker_init(b, &cfg, now), AR_OK);
    assert_int_equal(b->state, BREAKER_CLOSED);
}

/* Record one outcome; returns *changed. */
static int rec(flow_breaker *b, int failed, const char *cls, int64_t now)
{
    int changed = -1;
    flow_breaker_record(b, failed, cls, now, &changed);
    assert_true(changed == 0 || changed == 1);
    return changed;
}

static int allow(flow_breaker *b, int64_t now, int *changed)
{
    int ch = -1;
    int ok = flow_breaker_allow(b, now, &ch);
    assert_true(ch == 0 || ch == 1);
    if (changed)
        *changed = ch;
    return ok;
}

static void breaker_closed_below_min_calls(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(20, 10, 0.5, 0, 30, 1), 0);
    for (int i = 0; i < 9; i++) {
        assert_int_equal(allow(&b, i, NULL), 1);
        assert_int_equal(rec(&b, 1, "timeout", i), 0);
    }
    assert_int_equal(b.state, BREAKER_CLOSED);
    assert_int_equal(allow(&b, 9, NULL), 1);
    /* the tenth failure reaches min_calls: 10 of 10 failed */
    assert_int_equal(rec(&b, 1, "timeout", 9), 1);
    assert_int_equal(b.state, BREAKER_OPEN);
    flow_breaker_fini(&b);
}

static void breaker_opens_on_ratio(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(20, 10, 0.5, 0, 30, 1), 0);
    /* alternate: S F S F ... ; after 10 calls 5 failures = 0.5 */
    int opened_at = -1;
    for (int i = 0; i < 20 && opened_at < 0; i++)
        if (rec(&b, i % 2, "retryable", 100 + i))
            opened_at = i;
    assert_int_equal(opened_at, 9);
    assert_int_equal(b.state, BREAKER_OPEN);
    assert_int_equal(b.open_until_ms, 109 + 30 * 1000);
    assert_non_null(strstr(b.reason, "5 of the last 10"));
    flow_breaker_fini(&b);

    /* below the ratio it stays closed however long it runs: 1 failure in 3 < 0.5 */
    breaker_start(&b, breaker_cfg(20, 10, 0.5, 0, 30, 1), 0);
    for (int i = 0; i < 300; i++)
        assert_int_equal(rec(&b, i % 3 == 0, "retryable", i), 0);
    assert_int_equal(b.state, BREAKER_CLOSED);
    flow_breaker_fini(&b);
}

static void breaker_successes_do_not_open(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(2, 1, 0.5, 1, 30, 1), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(rec(&b, 0, NULL, i), 0);
    assert_int_equal(b.state, BREAKER_CLOSED);
    flow_breaker_fini(&b);
}

static void breaker_opens_on_consecutive(void **state)
{
    (void)state;
    flow_breaker b;
    /* the ratio alone would need 60 of 100: only the run of failures can open it */
    breaker_start(&b, breaker_cfg(100, 100, 0.6, 3, 30, 1), 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(rec(&b, 0, NULL, i), 0);
    assert_int_equal(rec(&b, 1, "timeout", 20), 0);
    assert_int_equal(rec(&b, 1, "timeout", 21), 0);
    assert_int_equal(b.state, BREAKER_CLOSED);
    assert_int_equal(rec(&b, 1, "timeout", 22), 1);
    assert_int_equal(b.state, BREAKER_OPEN);
    assert_non_null(strstr(b.reason, "3 failures in a row"));
    assert_non_null(strstr(b.reason, "timeout"));
    assert_int_equal(b.since_ms, 22);
    assert_int_equal(b.open_until_ms, 22 + 30000);
    flow_breaker_fini(&b);
}

static void breaker_success_resets_consecutive(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(100, 100, 1.0, 3, 30, 1), 0);
    /* F F S, many times: never three in a row */
    for (int i = 0; i < 99; i++)
        assert_int_equal(rec(&b, i % 3 != 2, "retryable", i), 0);
    assert_int_equal(b.state, BREAKER_CLOSED);
    assert_int_equal(b.consecutive, 0);
    assert_int_equal(rec(&b, 1, "retryable", 99), 0);
    assert_int_equal(rec(&b, 1, "retryable", 100), 0);
    assert_int_equal(rec(&b, 1, "retryable", 101), 1);
    assert_int_equal(b.state, BREAKER_OPEN);
    flow_breaker_fini(&b);
}

static void breaker_window_forgets_old_failures(void **state)
{
    (void)state;
    flow_breaker b;
    /* window 4, open at 3 of 4 */
    breaker_start(&b, breaker_cfg(4, 4, 0.75, 0, 30, 1), 0);
    const int seq[] = {1, 1, 0, 0, 0, 0, 1, 1}; /* the first two failures slide out */
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++)
        assert_int_equal(rec(&b, seq[i], "retryable", (int64_t)i), 0);
    assert_int_equal(b.state, BREAKER_CLOSED);
    json_t *v = flow_breaker_view(&b);
    assert_non_null(v);
    assert_int_equal(json_integer_value(json_object_get(v, "window_calls")), 4);
    assert_int_equal(json_integer_value(json_object_get(v, "window_failures")), 2);
    json_decref(v);
    /* window now S S F F; one more failure makes 3 of 4 */
    assert_int_equal(rec(&b, 1, "retryable", 8), 1);
    assert_int_equal(b.state, BREAKER_OPEN);
    assert_non_null(strstr(b.reason, "3 of the last 4"));
    flow_breaker_fini(&b);
}

static void breaker_open_refuses_then_half_opens(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(10, 2, 0.5, 0, 5, 2), 0);
    assert_int_equal(rec(&b, 1, "timeout", 1000), 0);
    assert_int_equal(rec(&b, 1, "timeout", 1000), 1);
    assert_int_equal(b.state, BREAKER_OPEN);
    int changed;
    for (int64_t t = 1000; t < 6000; t += 250) {
        assert_int_equal(allow(&b, t, &changed), 0);
        assert_int_equal(changed, 0);
    }
    assert_int_equal(allow(&b, 5999, &changed), 0);
    assert_int_equal(b.state, BREAKER_OPEN);
    /* open_s (5 s) passed: half-open, exactly half_open_calls (2) trials */
    assert_int_equal(allow(&b, 6000, &changed), 1);
    assert_int_equal(changed, 1);
    assert_int_equal(b.state, BREAKER_HALF_OPEN);
    assert_int_equal(b.since_ms, 6000);
    assert_int_equal(allow(&b, 6001, &changed), 1);
    assert_int_equal(changed, 0);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(allow(&b, 6002 + i, &changed), 0);
        assert_int_equal(changed, 0);
    }
    assert_int_equal(b.state, BREAKER_HALF_OPEN);
    flow_breaker_fini(&b);
}

static void breaker_failed_trial_reopens(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(10, 1, 0.5, 0, 10, 1), 0);
    assert_int_equal(rec(&b, 1, "retryable", 0), 1);
    assert_int_equal(b.open_until_ms, 10000);
    int changed;
    assert_int_equal(allow(&b, 12000, &changed), 1);
    assert_int_equal(changed, 1);
    assert_int_equal(b.state, BREAKER_HALF_OPEN);
    assert_int_equal(rec(&b, 1, "plugin_crashed", 12500), 1);
    assert_int_equal(b.state, BREAKER_OPEN);
    assert_int_equal(b.since_ms, 12500);
    assert_int_equal(b.open_until_ms, 12500 + 10000);
    assert_non_null(strstr(b.reason, "trial"));
    assert_non_null(strstr(b.reason, "plugin_crashed"));
    assert_int_equal(allow(&b, 22499, &changed), 0);
    assert_int_equal(changed, 0);
    /* and the next trial round works the same way */
    assert_int_equal(allow(&b, 22500, &changed), 1);
    assert_int_equal(changed, 1);
    assert_int_equal(b.state, BREAKER_HALF_OPEN);
    flow_breaker_fini(&b);
}

static void breaker_good_trials_close(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(10, 4, 0.5, 0, 1, 3), 0);
    for (int i = 0; i < 4; i++)
        rec(&b, 1, "timeout", 0);
    assert_int_equal(b.state, BREAKER_OPEN);
    int changed;
    for (int i = 0; i < 3; i++)
        assert_int_equal(allow(&b, 1000, &changed), 1);
    assert_int_equal(allow(&b, 1000, &changed), 0);
    assert_int_equal(rec(&b, 0, NULL, 1100), 0);
    assert_int_equal(rec(&b, 0, NULL, 1200), 0);
    assert_int_equal(b.state, BREAKER_HALF_OPEN);
    assert_int_equal(rec(&b, 0, NULL, 1300), 1);
    assert_int_equal(b.state, BREAKER_CLOSED);
    assert_int_equal(b.since_ms, 1300);
    assert_string_equal(b.reason, "");
    /* the window starts over: the four old failures are gone, so three new ones do not open it */
    assert_int_equal(b.ring_len, 0);
    assert_int_equal(b.failures, 0);
    assert_int_equal(allow(&b, 1400, &changed), 1);
    assert_int_equal(changed, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rec(&b, 1, "timeout", 1400), 0);
    assert_int_equal(b.state, BREAKER_CLOSED);
    assert_int_equal(rec(&b, 1, "timeout", 1400), 1);
    flow_breaker_fini(&b);
}

/* One failing trial among several reopens at once, even when the others succeed. */
static void breaker_one_bad_trial_of_many_reopens(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(10, 1, 1.0, 0, 1, 3), 0);
    rec(&b, 1, "timeout", 0);
    int changed;
    for (int i = 0; i < 3; i++)
        assert_int_equal(allow(&b, 1000, &changed), 1);
    assert_int_equal(rec(&b, 0, NULL, 1001), 0);
    assert_int_equal(rec(&b, 0, NULL, 1002), 0);
    assert_int_equal(rec(&b, 1, "timeout", 1003), 1);
    assert_int_equal(b.state, BREAKER_OPEN);
    flow_breaker_fini(&b);
}

static void breaker_record_while_open_ignored(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(10, 2, 0.5, 0, 30, 1), 0);
    rec(&b, 1, "timeout", 0);
    assert_int_equal(rec(&b, 1, "timeout", 0), 1);
    flow_breaker snap = b;
    char reason[sizeof b.reason];
    memcpy(reason, b.reason, sizeof reason);
    /* late results of calls that started before it opened: no news */
    for (int i = 0; i < 20; i++) {
        assert_int_equal(rec(&b, i % 2, "retryable", 100 + i), 0);
        assert_int_equal(b.state, BREAKER_OPEN);
    }
    assert_int_equal(b.ring_len, snap.ring_len);
    assert_int_equal(b.failures, snap.failures);
    assert_int_equal(b.consecutive, snap.consecutive);
    assert_int_equal(b.since_ms, snap.since_ms);
    assert_int_equal(b.open_until_ms, snap.open_until_ms);
    assert_memory_equal(b.opened_by, snap.opened_by, sizeof b.opened_by);
    assert_string_equal(b.reason, reason);
    flow_breaker_fini(&b);
}

static json_int_t by_class(json_t *view, const char *cls)
{
    json_t *by = json_object_get(view, "opened_by");
    assert_true(json_is_object(by));
    json_t *n = json_object_get(by, cls);
    return n ? json_integer_value(n) : 0;
}

static void breaker_view(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(10, 8, 0.5, 0, 30, 1), 500);

    json_t *v = flow_breaker_view(&b);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "state")), "closed");
    assert_string_equal(json_string_value(json_object_get(v, "reason")), "");
    assert_int_equal(json_integer_value(json_object_get(v, "since_ms")), 500);
    assert_int_equal(json_object_size(json_object_get(v, "opened_by")), 0);
    json_t *nt = json_object_get(v, "next_trial_ms");
    assert_true(nt == NULL || json_is_null(nt));
    json_decref(v);

    for (int i = 0; i < 4; i++)
        rec(&b, 0, NULL, 1000);
    assert_int_equal(rec(&b, 1, "timeout", 1000), 0);
    assert_int_equal(rec(&b, 1, "retryable", 1000), 0);
    assert_int_equal(rec(&b, 1, "plugin_crashed", 1000), 0);
    assert_int_equal(rec(&b, 1, "auth", 2000), 1); /* 4 of 8 */

    v = flow_breaker_view(&b);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "state")), "open");
    assert_int_equal(json_integer_value(json_object_get(v, "since_ms")), 2000);
    assert_non_null(strstr(json_string_value(json_object_get(v, "reason")), "4 of the last 8"));
    assert_int_equal(by_class(v, "timeout"), 1);
    assert_int_equal(by_class(v, "retryable"), 1);
    assert_int_equal(by_class(v, "plugin_crashed"), 1);
    assert_int_equal(by_class(v, "other"), 1);
    assert_int_equal(json_object_size(json_object_get(v, "opened_by")), 4);
    nt = json_object_get(v, "next_trial_ms");
    assert_true(json_is_integer(nt));
    assert_int_equal(json_integer_value(nt), 2000 + 30000);
    json_decref(v);

    /* half-open: no next trial time; a failed trial replaces opened_by with its own class */
    int changed;
    assert_int_equal(allow(&b, 32000, &changed), 1);
    v = flow_breaker_view(&b);
    assert_string_equal(json_string_value(json_object_get(v, "state")), "half_open");
    nt = json_object_get(v, "next_trial_ms");
    assert_true(nt == NULL || json_is_null(nt));
    json_decref(v);
    assert_int_equal(rec(&b, 1, NULL, 32100), 1);
    v = flow_breaker_view(&b);
    assert_string_equal(json_string_value(json_object_get(v, "state")), "open");
    assert_int_equal(by_class(v, "other"), 1);
    assert_int_equal(json_object_size(json_object_get(v, "opened_by")), 1);
    assert_int_equal(json_integer_value(json_object_get(v, "next_trial_ms")), 32100 + 30000);
    json_decref(v);
    flow_breaker_fini(&b);
}

/* opened_by counts the failures in the window that opened the breaker, not every failure since
 * the window was last clean. */
static void breaker_opened_by_counts_only_the_window(void **state)
{
    (void)state;
    flow_breaker b;
    breaker_start(&b, breaker_cfg(4, 4, 0.75, 0, 30, 1), 0);
    /* T S S R | R R : the timeout slides out before the third retryable opens it */
    assert_int_equal(rec(&b, 1, "timeout", 0), 0);
    assert_int_equal(rec(&b, 0, NULL, 1), 0);
    assert_int_equal(rec(&b, 0, NULL, 2), 0);
    assert_int_equal(rec(&b, 1, "retryable", 3), 0);
    assert_int_equal(rec(&b, 1, "retryable", 4), 0);
    assert_int_equal(rec(&b, 1, "retryable", 5), 1);
    json_t *v = flow_breaker_view(&b);
    assert_int_equal(json_integer_value(json_object_get(v, "window_failures")), 3);
    assert_int_equal(by_class(v, "retryable"), 3);
    assert_int_equal(by_class(v, "timeout"), 0);
    json_decref(v);
    flow_breaker_fini(&b);

    /* a long closed run with a failure always in the window, then an opening: the counts add up
     * to the window's failures */
    breaker_start(&b, breaker_cfg(10, 10, 0.5, 0, 30, 1), 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(rec(&b, i % 5 == 0, i % 2 ? "timeout" : "retryable", i), 0);
    int changed = 0;
    for (int i = 0; i < 10 && !changed; i++)
        changed = rec(&b, 1, "plugin_crashed", 1000 + i);
    assert_int_equal(b.state, BREAKER_OPEN);
    v = flow_breaker_view(&b);
    json_int_t sum = by_class(v, "retryable") + by_class(v, "timeout") + by_class(v, "plugin_crashed") +
                     by_class(v, "other");
    assert_int_equal(sum, json_integer_value(json_object_get(v, "window_failures")));
    assert_true(sum >= 5 && sum <= 10);
    json_decref(v);
    flow_breaker_fini(&b);
}

static void breaker_state_names(void **state)
{
    (void)state;
    assert_string_equal(flow_breaker_state_name(BREAKER_CLOSED), "closed");
    assert_string_equal(flow_breaker_state_name(BREAKER_OPEN), "open");
    assert_string_equal(flow_breaker_state_name(BREAKER_HALF_OPEN), "half_open");
}

/* ---- priority heap --------------------------------------------------------------------------- */

typedef struct item {
    int64_t score;
    int id;
} item;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* A fixed-seed generator, so a failure reproduces. */
static uint64_t next_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static void heap_empty(void **state)
{
    (void)state;
    flow_heap h;
    flow_heap_init(&h);
    int64_t score = 42;
    assert_null(flow_heap_peek(&h, &score));
    assert_int_equal(score, 42);
    assert_null(flow_heap_peek(&h, NULL));
    assert_null(flow_heap_pop(&h));
    int x;
    assert_int_equal(flow_heap_remove(&h, &x), AR_E_NOTFOUND);
    flow_heap_fini(&h);
    flow_heap_fini(&h); /* twice is harmless */
}

static void heap_pops_in_score_order(void **state)
{
    (void)state;
    enum { N = 5000 };
    item *items = calloc(N, sizeof *items);
    int64_t *sorted = calloc(N, sizeof *sorted);
    assert_non_null(items);
    assert_non_null(sorted);
    uint64_t seed = 12345;
    flow_heap h;
    flow_heap_init(&h);
    for (int i = 0; i < N; i++) {
        items[i].id = i;
        items[i].score = (int64_t)next_rand(&seed) - (1LL << 30); /* negatives too */
        if (i % 10 == 0)
            items[i].score = (int64_t)(next_rand(&seed) % 50); /* some duplicates */
        sorted[i] = items[i].score;
        assert_int_equal(flow_heap_push(&h, &items[i], items[i].score), AR_OK);
    }
    assert_int_equal(h.n, N);
    qsort(sorted, N, sizeof *sorted, cmp_i64);
    unsigned char *seen = calloc(N, 1);
    assert_non_null(seen);
    for (int i = 0; i < N; i++) {
        int64_t peeked = 0;
        item *top = flow_heap_peek(&h, &peeked);
        assert_non_null(top);
        assert_int_equal(peeked, sorted[i]);
        item *it = flow_heap_pop(&h);
        assert_ptr_equal(it, top);
        assert_int_equal(it->score, sorted[i]);
        assert_int_equal(seen[it->id], 0);
        seen[it->id] = 1;
    }
    assert_null(flow_heap_pop(&h));
    assert_int_equal(h.n, 0);
    flow_heap_fini(&h);
    free(seen);
    free(sorted);
    free(items);
}

static void heap_ties(void **state)
{
    (void)state;
    enum { N = 200 };
    item items[N];
    flow_heap h;
    flow_heap_init(&h);
    for (int i = 0; i < N; i++) {
        items[i] = (item){.score = i % 2 ? 7 : 3, .id = i};
        assert_int_equal(flow_heap_push(&h, &items[i], items[i].score), AR_OK);
    }
    int seen[N] = {0};
    for (int i = 0; i < N; i++) {
        item *it = flow_heap_pop(&h);
        assert_non_null(it);
        /* all the 3s, then all the 7s, each item exactly once */
        assert_int_equal(it->score, i < N / 2 ? 3 : 7);
        assert_int_equal(seen[it->id]++, 0);
    }
    assert_null(flow_heap_pop(&h));
    flow_heap_fini(&h);
}

static void heap_remove_keeps_order(void **state)
{
    (void)state;
    enum { N = 300 };
    item items[N];
    int64_t kept_scores[N];
    uint64_t seed = 99;
    for (int round = 0; round < 50; round++) {
        flow_heap h;
        flow_heap_init(&h);
        for (int i = 0; i < N; i++) {
            items[i] = (item){.score = (int64_t)(next_rand(&seed) % 1000), .id = i};
            assert_int_equal(flow_heap_push(&h, &items[i], items[i].score), AR_OK);
        }
        unsigned char removed[N] = {0};
        /* the root, the last slot and a middle slot, then a random third from anywhere */
        item *picks[3] = {h.items[0], h.items[h.n - 1], h.items[h.n / 2]};
        for (int k = 0; k < 3; k++) {
            if (removed[picks[k]->id])
                continue;
            assert_int_equal(flow_heap_remove(&h, picks[k]), AR_OK);
            removed[picks[k]->id] = 1;
        }
        for (int i = 0; i < N; i++) {
            if (removed[i] || next_rand(&seed) % 3)
                continue;
            assert_int_equal(flow_heap_remove(&h, &items[i]), AR_OK);
            removed[i] = 1;
        }
        size_t kept = 0;
        for (int i = 0; i < N; i++)
            if (!removed[i])
                kept_scores[kept++] = items[i].score;
        assert_int_equal(h.n, kept);
        qsort(kept_scores, kept, sizeof kept_scores[0], cmp_i64);
        for (size_t i = 0; i < kept; i++) {
            item *it = flow_heap_pop(&h);
            assert_non_null(it);
            assert_int_equal(removed[it->id], 0);
            removed[it->id] = 2; /* popped: must not come out again */
            assert_int_equal(it->score, kept_scores[i]);
        }
        assert_null(flow_heap_pop(&h));
        /* the heap still works after removals: push again, pop in order */
        assert_int_equal(flow_heap_push(&h, &items[1], 5), AR_OK);
        assert_int_equal(flow_heap_push(&h, &items[0], 4), AR_OK);
        assert_ptr_equal(flow_heap_pop(&h), &items[0]);
        assert_ptr_equal(flow_heap_pop(&h), &items[1]);
        flow_heap_fini(&h);
    }
}

static void heap_remove_missing(void **state)
{
    (void)state;
    item a = {1, 0}, b = {2, 1}, c = {3, 2};
    flow_heap h;
    flow_heap_init(&h);
    assert_int_equal(flow_heap_push(&h, &a, a.score), AR_OK);
    assert_int_equal(flow_heap_push(&h, &b, b.score), AR_OK);
    assert_int_equal(flow_heap_remove(&h, &c), AR_E_NOTFOUND);
    assert_int_equal(h.n, 2);
    assert_int_equal(flow_heap_remove(&h, &a), AR_OK);
    assert_int_equal(flow_heap_remove(&h, &a), AR_E_NOTFOUND);
    assert_ptr_equal(flow_heap_pop(&h), &b);
    assert_null(flow_heap_pop(&h));
    flow_heap_fini(&h);
}

/* score = created_ms - priority * aging_ms with aging 1000: 5 levels of priority are worth 5 s of
 * waiting. */
static int64_t aged_score(int64_t created_ms, int priority)
{
    return created_ms - (int64_t)priority * 1000;
}

static void heap_aging(void **state)
{
    (void)state;
    item old_low = {aged_score(0, 0), 0};     /* priority 0, created at 0 */
    item late_high = {aged_score(6000, 5), 1}; /* priority 5, created at 6 s */
    item early_high = {aged_score(4000, 5), 2}; /* priority 5, created at 4 s */
    flow_heap h;
    flow_heap_init(&h);
    /* pushed in the order least likely to come out right by accident */
    assert_int_equal(flow_heap_push(&h, &late_high, late_high.score), AR_OK);
    assert_int_equal(flow_heap_push(&h, &old_low, old_low.score), AR_OK);
    assert_int_equal(flow_heap_push(&h, &early_high, early_high.score), AR_OK);
    assert_ptr_equal(flow_heap_pop(&h), &early_high);
    assert_ptr_equal(flow_heap_pop(&h), &old_low);
    assert_ptr_equal(flow_heap_pop(&h), &late_high);
    assert_null(flow_heap_pop(&h));

    /* among equal priorities, older first */
    item first = {aged_score(100, 3), 3}, second = {aged_score(200, 3), 4};
    assert_int_equal(flow_heap_push(&h, &second, second.score), AR_OK);
    assert_int_equal(flow_heap_push(&h, &first, first.score), AR_OK);
    assert_ptr_equal(flow_heap_pop(&h), &first);
    assert_ptr_equal(flow_heap_pop(&h), &second);
    flow_heap_fini(&h);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(bucket_starts_full),
    cmocka_unit_test(bucket_takes_burst_then_refuses),
    cmocka_unit_test(bucket_burst_zero_means_one),
    cmocka_unit_test(bucket_refills_at_rate),
    cmocka_unit_test(bucket_capped_at_burst_after_idle),
    cmocka_unit_test(bucket_time_going_back_is_harmless),
    cmocka_unit_test(bucket_wait_ms),
    cmocka_unit_test(bucket_wait_ms_is_tight),
    cmocka_unit_test(bucket_rate_zero_is_unlimited),
    cmocka_unit_test(bucket_bounds_over_ten_seconds),
    cmocka_unit_test(breaker_closed_below_min_calls),
    cmocka_unit_test(breaker_opens_on_ratio),
    cmocka_unit_test(breaker_successes_do_not_open),
    cmocka_unit_test(breaker_opens_on_consecutive),
    cmocka_unit_test(breaker_success_resets_consecutive),
    cmocka_unit_test(breaker_window_forgets_old_failures),
    cmocka_unit_test(breaker_open_refuses_then_half_opens),
    cmocka_unit_test(breaker_failed_trial_reopens),
    cmocka_unit_test(breaker_good_trials_close),
    cmocka_unit_test(breaker_one_bad_trial_of_many_reopens),
    cmocka_unit_test(breaker_record_while_open_ignored),
    cmocka_unit_test(breaker_view),
    cmocka_unit_test(breaker_opened_by_counts_only_the_window),
    cmocka_unit_test(breaker_state_names),
    cmocka_unit_test(heap_empty),
    cmocka_unit_test(heap_pops_in_score_order),
    cmocka_unit_test(heap_ties),
    cmocka_unit_test(heap_remove_keeps_order),
    cmocka_unit_test(heap_remove_missing),
    cmocka_unit_test(heap_aging),
};

AR_TEST_MAIN(tests, NULL, NULL)
