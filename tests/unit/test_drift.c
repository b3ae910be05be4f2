/* test_drift.c - drift detection on error rate and on proposer confidence: detected when both
 * windows hold enough samples and the change passes its threshold, once, then from a new
 * baseline; quiet below the thresholds; per connector action. */
#include "test_main.h"

#include <string.h>

#include "drift.h"

static drift *make(void)
{
    drift_opts o = {.recent = 10, .baseline = 20, .min_samples = 10, .error_rate_increase = 0.3,
                    .confidence_drop = 0.2};
    drift *d = NULL;
    assert_int_equal(drift_new(&o, &d), AR_OK);
    return d;
}

/* Feed n outcomes; returns the first detection (or NULL), the others must be NULL. */
static json_t *feed(drift *d, const char *action, int n, int errors_every, double confidence)
{
    json_t *found = NULL;
    for (int i = 0; i < n; i++) {
        int error = errors_every > 0 && i % errors_every == 0;
        json_t *f = drift_observe(d, "shop", action, error, confidence);
        if (f && found)
            fail_msg("a second detection for the same change");
        if (f)
            found = f;
    }
    return found;
}

static void test_error_rate_increase_is_detected_once(void **state)
{
    (void)state;
    drift *d = make();
    assert_null(feed(d, "refund", 30, 0, -1));          /* a clean baseline and recent window */
    json_t *f = feed(d, "refund", 10, 1, -1);           /* then every call fails */
    assert_non_null(f);
    assert_string_equal(json_string_value(json_object_get(f, "metric")), "error_rate");
    assert_string_equal(json_string_value(json_object_get(f, "action")), "refund");
    assert_true(json_number_value(json_object_get(f, "recent")) >= 0.3);
    assert_true(json_number_value(json_object_get(f, "baseline")) < 0.1);
    json_decref(f);
    /* The windows started again: more failures are the new normal, not a new detection. */
    assert_null(feed(d, "refund", 40, 1, -1));
    json_t *view = drift_view(d);
    assert_int_equal(json_array_size(view), 1);
    assert_true(json_is_integer(json_object_get(json_array_get(view, 0), "detected_at_ms")));
    json_decref(view);
    drift_free(d);
}

static void test_small_changes_and_few_samples_stay_quiet(void **state)
{
    (void)state;
    drift *d = make();
    /* one error in five against none: 0.2 < 0.3 */
    assert_null(feed(d, "refund", 30, 0, -1));
    assert_null(feed(d, "refund", 10, 5, -1));
    /* another action with too few samples to judge */
    assert_null(feed(d, "tag", 9, 1, -1));
    drift_free(d);
}

static void test_confidence_drop_is_detected(void **state)
{
    (void)state;
    drift *d = make();
    assert_null(feed(d, "listing", 30, 0, 0.9));
    json_t *f = feed(d, "listing", 10, 0, 0.5);
    assert_non_null(f);
    assert_string_equal(json_string_value(json_object_get(f, "metric")), "confidence");
    assert_true(json_number_value(json_object_get(f, "baseline")) > 0.85);
    json_decref(f);
    drift_free(d);
}

static void test_actions_are_tracked_apart(void **state)
{
    (void)state;
    drift *d = make();
    assert_null(feed(d, "a", 30, 0, -1));
    assert_null(feed(d, "b", 30, 1, -1)); /* b always failed: that is its baseline */
    json_t *f = feed(d, "a", 10, 1, -1);
    assert_non_null(f);
    json_decref(f);
    json_t *view = drift_view(d);
    assert_int_equal(json_array_size(view), 2);
    json_decref(view);
    drift_free(d);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_error_rate_increase_is_detected_once),
    cmocka_unit_test(test_small_changes_and_few_samples_stay_quiet),
    cmocka_unit_test(test_confidence_drop_is_detected),
    cmocka_unit_test(test_actions_are_tracked_apart),
};

AR_TEST_MAIN(tests, NULL, NULL)
