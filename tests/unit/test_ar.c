/* test_ar.c - log lines (ar.h): JSON fields, escaping, invalid UTF-8, level filtering, the
 * text format, and whole lines from many threads. stderr is captured through a pipe. The time
 * text (ar_time_rfc3339) against the gmtime_r + strftime implementation it replaced. */
#include "test_main.h"

#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ar.h"

/* ---- capturing stderr ------------------------------------------------------------------- */

typedef struct capture {
    int saved_fd;          /* the real stderr, restored by capture_end */
    int read_fd;
    pthread_t reader;      /* drains the pipe, so that a writer never blocks on a full one */
    char *data;
    size_t len, cap;
} capture;

static void *drain(void *arg)
{
    capture *c = arg;
    for (;;) {
        if (c->cap - c->len < 4096) {
            c->cap = c->cap ? c->cap * 2 : 65536;
            c->data = realloc(c->data, c->cap);
            if (!c->data)
                abort();
        }
        ssize_t n = read(c->read_fd, c->data + c->len, c->cap - c->len - 1);
        if (n <= 0)
            break;
        c->len += (size_t)n;
    }
    return NULL;
}

static void capture_start(capture *c)
{
    memset(c, 0, sizeof *c);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(stderr);
    c->saved_fd = dup(STDERR_FILENO);
    assert_true(c->saved_fd >= 0);
    assert_int_equal(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
    close(fds[1]); /* fd 2 is now the only write end: restoring it ends the reader */
    c->read_fd = fds[0];
    assert_int_equal(pthread_create(&c->reader, NULL, drain, c), 0);
}

/* Restore stderr; returns what was written, NUL-terminated, owned by the caller. */
static char *capture_end(capture *c)
{
    dup2(c->saved_fd, STDERR_FILENO);
    close(c->saved_fd);
    pthread_join(c->reader, NULL);
    close(c->read_fd);
    if (!c->data)
        c->data = calloc(1, 1);
    else
        c->data[c->len] = '\0';
    return c->data;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static size_t count_lines(const char *out)
{
    size_t n = 0;
    for (const char *p = out; *p; p++)
        n += *p == '\n';
    return n;
}

/* out must be exactly one line ending in '\n' that parses as a JSON object; returned owned. */
static json_t *only_json_line(const char *out)
{
    size_t len = strlen(out);
    assert_true(len > 0);
    assert_int_equal(out[len - 1], '\n');
    assert_int_equal(count_lines(out), 1);
    assert_true(len <= 4096);
    json_error_t jerr;
    json_t *j = json_loadb(out, len - 1, JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        fail_msg("not JSON (%s): %s", jerr.text, out);
    assert_true(json_is_object(j));
    return j;
}

static const char *field(const json_t *j, const char *key)
{
    const char *v = json_string_value(json_object_get(j, key));
    if (!v)
        fail_msg("no string field \"%s\"", key);
    return v;
}

static void assert_matches(const char *s, const char *pattern)
{
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, s, 0, NULL, 0);
    regfree(&re);
    if (rc != 0)
        fail_msg("\"%s\" does not match %s", s, pattern);
}

#define TIME_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

/* Every test leaves the module as a process starts: info and text. */
static int reset_log(void **state)
{
    (void)state;
    ar_log_configure(AR_LOG_INFO, 0);
    return 0;
}

/* ---- JSON lines ------------------------------------------------------------------------- */

static void json_line_has_the_fields(void **state)
{
    (void)state;
    ar_log_configure(AR_LOG_INFO, 1);
    capture c;
    capture_start(&c);
    ar_log_as("warn", "scheduler", "01HZX3", "action %s: attempt %d failed", "01HZX3", 2);
    char *out = capture_end(&c);
    json_t *j = only_json_line(out);
    assert_int_equal(json_object_size(j), 5);
    assert_matches(field(j, "time"), "^" TIME_RE "$");
    assert_string_equal(field(j, "level"), "warn");
    assert_string_equal(field(j, "component"), "scheduler");
    assert_string_equal(field(j, "action"), "01HZX3");
    assert_string_equal(field(j, "msg"), "action 01HZX3: attempt 2 failed");
    /* the documented shape and order */
    assert_matches(out, "^\\{\"time\": \"" TIME_RE "\", \"level\": \"warn\", \"component\": \"scheduler\", "
                        "\"action\": \"01HZX3\", \"msg\": \"action 01HZX3: attempt 2 failed\"\\}\n$");
    json_decref(j);
    free(out);
}

static void action_field_only_when_given(void **state)
{
    (void)state;
    ar_log_configure(AR_LOG_INFO, 1);
    const char *actions[] = {NULL, ""};
    for (size_t i = 0; i < 2; i++) {
        capture c;
        capture_start(&c);
        ar_log_as("error", "api", actions[i], "no action here");
        char *out = capture_end(&c);
        json_t *j = only_json_line(out);
        assert_int_equal(json_object_size(j), 4);
        assert_null(json_object_get(j, "action"));
        assert_string_equal(field(j, "level"), "error");
        assert_string_equal(field(j, "component"), "api");
        assert_string_equal(field(j, "msg"), "no action here");
        json_decref(j);
        free(out);
    }
    /* ar_log as before: component "aiorun", no action; the level spelled canonically */
    capture c;
    capture_start(&c);
    ar_log("INFO", "started %s", "ok");
    char *out = capture_end(&c);
    json_t *j = only_json_line(out);
    assert_int_equal(json_object_size(j), 4);
    assert_string_equal(field(j, "component"), "aiorun");
    assert_string_equal(field(j, "level"), "info");
    assert_string_equal(field(j, "msg"), "started ok");
    json_decref(j);
    free(out);
    /* a NULL component is the daemon's */
    capture_start(&c);
    ar_log_as("info", NULL, NULL, "x");
    out = capture_end(&c);
    j = only_json_line(out);
    assert_string_equal(field(j, "component"), "aiorun");
    json_decref(j);
    free(out);
}

static void quotes_newlines_and_control_characters_escaped(void **state)
{
    (void)state;
    ar_log_configure(AR_LOG_INFO, 1);
    const char *msg = "say \"hi\" \\ back\nsecond line\r\tx\x01\x1b[31m\x7f end";
    capture c;
    capture_start(&c);
    ar_log_as("info", "policy:a\"b.lua", "id\nwith\\newline", "%s", msg);
    char *out = capture_end(&c);
    /* the raw line: no control byte but its final newline */
    for (const unsigned char *p = (const unsigned char *)out; p[1]; p++)
        if (*p < 0x20 || *p == 0x7f)
            fail_msg("raw control byte 0x%02x in %s", *p, out);
    assert_non_null(strstr(out, "say \\\"hi\\\" \\\\ back\\nsecond line\\r\\tx\\u0001\\u001b[31m\\u007f end"));
    json_t *j = only_json_line(out);
    assert_string_equal(field(j, "msg"), msg);
    assert_string_equal(field(j, "component"), "policy:a\"b.lua");
    assert_string_equal(field(j, "action"), "id\nwith\\newline");
    json_decref(j);
    free(out);
}

static void invalid_utf8_replaced(void **state)
{
    (void)state;
    ar_log_configure(AR_LOG_INFO, 1);
    capture c;
    capture_start(&c);
    /* a lone 0xff; c3 before an ASCII byte; e2 82 cut short; a surrogate; beyond U+10FFFF; an
     * overlong '/'; then valid 2-, 3- and 4-byte characters, kept */
    ar_log_as("info", "plugin:\xff", NULL, "%s",
              "a\xff" "b\xc3(c\xe2\x82 d\xed\xa0\x80" "e\xf4\x90\x80\x80" "f\xc0\xaf" "g \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    char *out = capture_end(&c);
    json_t *j = only_json_line(out); /* jansson refuses invalid UTF-8: parsing is the check */
#define R "\xef\xbf\xbd"
    assert_string_equal(field(j, "msg"), "a" R "b" R "(c" R R " d" R R R "e" R R R R "f" R R
                                         "g \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    assert_string_equal(field(j, "component"), "plugin:" R);
#undef R
    json_decref(j);
    free(out);
}

static void long_messages_cut_to_one_valid_line(void **state)
{
    (void)state;
    ar_log_configure(AR_LOG_INFO, 1);
    size_t n = 10000;
    char *big = malloc(n * 2 + 1);
    assert_non_null(big);
    /* plain bytes, bytes that escape to six, and two-byte characters */
    const char fill[] = {'x', '\x01', 0};
    for (int k = 0; k < 3; k++) {
        if (k < 2) {
            memset(big, fill[k], n);
            big[n] = '\0';
        } else {
            for (size_t i = 0; i < n; i++)
                memcpy(big + 2 * i, "\xc3\xa9", 2);
            big[2 * n] = '\0';
        }
        capture c;
        capture_start(&c);
        ar_log_as("info", "scheduler", "01ABC", "%s", big);
        char *out = capture_end(&c);
        json_t *j = only_json_line(out); /* at most 4096 bytes, valid JSON and UTF-8 */
        const char *msg = field(j, "msg");
        size_t len = strlen(msg);
        assert_true(len > 500);
        assert_string_equal(msg + len - 3, "...");
        assert_string_equal(field(j, "action"), "01ABC");
        json_decref(j);
        free(out);
    }
    free(big);
}

/* ---- levels ----------------------------------------------------------------------------- */

static void level_names(void **state)
{
    (void)state;
    assert_int_equal(ar_log_level_from_name("debug"), AR_LOG_DEBUG);
    assert_int_equal(ar_log_level_from_name("info"), AR_LOG_INFO);
    assert_int_equal(ar_log_level_from_name("warn"), AR_LOG_WARN);
    assert_int_equal(ar_log_level_from_name("error"), AR_LOG_ERROR);
    assert_int_equal(ar_log_level_from_name("WARN"), AR_LOG_WARN);
    assert_int_equal(ar_log_level_from_name("Error"), AR_LOG_ERROR);
    assert_int_equal(ar_log_level_from_name("warning"), -1);
    assert_int_equal(ar_log_level_from_name(""), -1);
    assert_int_equal(ar_log_level_from_name("info "), -1);
    assert_int_equal(ar_log_level_from_name(NULL), -1);
}

/* The levels of the lines that got through, one letter each, in order. */
static void logged_levels(int min_level, int json, char *got, size_t cap)
{
    ar_log_configure(min_level, json);
    capture c;
    capture_start(&c);
    ar_log("debug", "d");
    ar_log("info", "i");
    ar_log_as("warn", "api", "x", "w");
    ar_log_as("error", "plugin:shop", NULL, "e");
    ar_log("INFO", "I");
    ar_log("notice", "n"); /* unknown: counts as info */
    char *out = capture_end(&c);
    size_t n = 0;
    for (char *save = NULL, *line = strtok_r(out, "\n", &save); line && n + 1 < cap;
         line = strtok_r(NULL, "\n", &save)) {
        char *end = line + strlen(line) - 1; /* the message is the last letter (json: before "}) */
        got[n++] = json ? end[-2] : *end;
    }
    got[n] = '\0';
    free(out);
}

static void level_filtering(void **state)
{
    (void)state;
    char got[16];
    for (int json = 0; json <= 1; json++) {
        logged_levels(AR_LOG_DEBUG, json, got, sizeof got);
        assert_string_equal(got, "diweIn");
        logged_levels(AR_LOG_INFO, json, got, sizeof got);
        assert_string_equal(got, "iweIn");
        logged_levels(AR_LOG_WARN, json, got, sizeof got);
        assert_string_equal(got, "we");
        logged_levels(AR_LOG_ERROR, json, got, sizeof got);
        assert_string_equal(got, "e");
        /* out of range is clamped */
        logged_levels(99, json, got, sizeof got);
        assert_string_equal(got, "e");
        logged_levels(-4, json, got, sizeof got);
        assert_string_equal(got, "diweIn");
    }
}

/* ---- text ------------------------------------------------------------------------------- */

static void text_format_unchanged(void **state)
{
    (void)state;
    /* what a process gets before any ar_log_configure: text */
    capture c;
    capture_start(&c);
    ar_log("info", "aiorun %s listening on %s", "1.0", "http://127.0.0.1:8470");
    char *out = capture_end(&c);
    assert_matches(out, "^" TIME_RE " aiorun info aiorun 1.0 listening on http://127.0.0.1:8470\n$");
    free(out);

    ar_log_configure(AR_LOG_DEBUG, 0);
    capture_start(&c);
    ar_log("WARN", "vault: completed \"%s\"", "x");              /* the level as spelled */
    ar_log_as("info", "scheduler", "01ABC", "action %s QUEUED", "01ABC"); /* own component: no prefix */
    ar_log_as("debug", "plugin:shop", NULL, "two\nlines\tand\x01");       /* a source: named, escaped */
    ar_log_as("error", "policy:refunds.lua", "01ABC", "denied");
    out = capture_end(&c);
    assert_int_equal(count_lines(out), 4);
    assert_matches(out, "^" TIME_RE " aiorun WARN vault: completed \"x\"\n"
                        TIME_RE " aiorun info action 01ABC QUEUED\n"
                        TIME_RE " aiorun debug plugin:shop: two\\\\nlines\\\\tand\\\\x01\n"
                        TIME_RE " aiorun error policy:refunds.lua: denied\n$");
    free(out);
}

/* ---- threads ---------------------------------------------------------------------------- */

#define THREADS 8
#define LINES_PER_THREAD 400

static void *log_many(void *arg)
{
    int t = (int)(intptr_t)arg;
    char pad[3001];
    for (int i = 0; i < LINES_PER_THREAD; i++) {
        size_t len = (size_t)((i * 37 + t * 101) % 3000);
        memset(pad, 'a' + t, len);
        pad[len] = '\0';
        char id[16];
        snprintf(id, sizeof id, "t%d", t);
        ar_log_as(i % 2 ? "info" : "warn", "scheduler", id, "t%d n%d %s", t, i, pad);
    }
    return NULL;
}

static void many_threads_give_whole_lines(void **state)
{
    (void)state;
    ar_log_configure(AR_LOG_INFO, 1);
    capture c;
    capture_start(&c);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, log_many, (void *)(intptr_t)t), 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    char *out = capture_end(&c);

    int next[THREADS] = {0};
    size_t lines = 0;
    for (char *save = NULL, *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lines++;
        json_error_t jerr;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
        if (!j)
            fail_msg("line %zu is not JSON (%s): %.200s", lines, jerr.text, line);
        int t = -1, i = -1, used = 0;
        const char *msg = field(j, "msg");
        assert_int_equal(sscanf(msg, "t%d n%d %n", &t, &i, &used), 2);
        assert_true(t >= 0 && t < THREADS);
        assert_int_equal(i, next[t]); /* each thread's lines whole and in its order */
        next[t]++;
        size_t len = (size_t)((i * 37 + t * 101) % 3000);
        assert_int_equal(strlen(msg + used), len);
        for (size_t k = 0; k < len; k++)
            assert_int_equal(msg[used + k], 'a' + t);
        char id[16];
        snprintf(id, sizeof id, "t%d", t);
        assert_string_equal(field(j, "action"), id);
        json_decref(j);
    }
    assert_int_equal(lines, THREADS * LINES_PER_THREAD);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(next[t], LINES_PER_THREAD);
    free(out);
}

/* ---- ar_time_rfc3339 ---------------------------------------------------------------------- */

/* The implementation ar_time_rfc3339 replaced, kept as the reference. */
static void reference_time_rfc3339(int64_t ms, char buf[AR_TIME_LEN])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    assert_non_null(gmtime_r(&secs, &tm));
    size_t n = strftime(buf, AR_TIME_LEN, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, AR_TIME_LEN - n, ".%03dZ", (int)(ms % 1000 + 1000) % 1000);
}

static size_t times_checked;

static void assert_time_like_reference(int64_t ms)
{
    char expected[AR_TIME_LEN], got[AR_TIME_LEN];
    memset(got, 'x', sizeof got);
    reference_time_rfc3339(ms, expected);
    ar_time_rfc3339(ms, got);
    if (strcmp(expected, got) != 0)
        fail_msg("ms %lld: expected %s, got %.32s", (long long)ms, expected, got);
    times_checked++;
}

/* ms and a few milliseconds and seconds either side of it, without overflowing. */
static void assert_times_around(int64_t ms)
{
    static const int64_t offsets[] = {-86400000, -1001, -1000, -999, -1, 0, 1, 999, 1000, 1001};
    for (size_t i = 0; i < sizeof offsets / sizeof *offsets; i++) {
        int64_t o = offsets[i];
        if ((o < 0 && ms < INT64_MIN - o) || (o > 0 && ms > INT64_MAX - o))
            continue;
        assert_time_like_reference(ms + o);
    }
}

static uint64_t time_rng = 0x243f6a8885a308d3ull;

static uint64_t time_rnd(void)
{
    time_rng ^= time_rng << 13;
    time_rng ^= time_rng >> 7;
    time_rng ^= time_rng << 17;
    return time_rng;
}

/* The ms of year-month-day 00:00:00 UTC (timegm normalises a Feb 29 that does not exist). */
static int64_t ms_of_date(long year, int month, int day)
{
    struct tm tm = {.tm_year = (int)(year - 1900), .tm_mon = month - 1, .tm_mday = day};
    time_t t = timegm(&tm);
    return (int64_t)t * 1000;
}

static void time_text_like_gmtime_and_strftime(void **state)
{
    (void)state;
    setenv("TZ", "UTC", 1); /* the reference's gmtime_r counts leap seconds in a "right/" zone */
    tzset();
    times_checked = 0;
    /* the epoch, before it (seconds round toward zero: -1 ms is 00:00:00.999), the extremes */
    assert_times_around(0);
    assert_times_around(-1000);
    assert_times_around(INT64_MIN);
    assert_times_around(INT64_MAX);
    for (int64_t ms = -5000; ms <= 5000; ms++)
        assert_time_like_reference(ms);
    for (int64_t ms = INT64_MIN; ms < INT64_MIN + 3000; ms++)
        assert_time_like_reference(ms);
    for (int64_t ms = INT64_MAX; ms > INT64_MAX - 3000; ms--)
        assert_time_like_reference(ms);
    /* Dec 31 / Jan 1 of every year from -1000 to 10100 (unpadded and negative years, 10000) */
    for (long year = -1000; year <= 10100; year++)
        assert_times_around(ms_of_date(year, 1, 1));
    /* leap days: Feb 28, 29 and Mar 1 (century years 1700, 1800, 1900, 2100 have none) */
    for (long year = 1582; year <= 2600; year++) {
        assert_times_around(ms_of_date(year, 2, 28));
        assert_times_around(ms_of_date(year, 2, 29));
        assert_times_around(ms_of_date(year, 3, 1));
    }
    /* every day of 1999-2001 and 2099-2101, each month's edges */
    for (int64_t day = ms_of_date(1999, 1, 1); day < ms_of_date(2002, 1, 1); day += 86400000)
        assert_times_around(day);
    for (int64_t day = ms_of_date(2099, 1, 1); day < ms_of_date(2102, 1, 1); day += 86400000)
        assert_times_around(day);
    /* random instants: 1970-9999, then any int64, then any of either sign and size */
    int64_t year_10000 = ms_of_date(10000, 1, 1);
    for (int i = 0; i < 100000; i++)
        assert_time_like_reference((int64_t)(time_rnd() % (uint64_t)year_10000));
    for (int i = 0; i < 30000; i++)
        assert_time_like_reference((int64_t)time_rnd());
    for (int i = 0; i < 30000; i++) {
        int64_t magnitude = (int64_t)(time_rnd() >> (1 + time_rnd() % 63));
        assert_time_like_reference(time_rnd() & 1 ? magnitude : -magnitude);
    }
    assert_true(times_checked > 250000);
    unsetenv("TZ");
    tzset();
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(json_line_has_the_fields, reset_log),
    cmocka_unit_test_teardown(action_field_only_when_given, reset_log),
    cmocka_unit_test_teardown(quotes_newlines_and_control_characters_escaped, reset_log),
    cmocka_unit_test_teardown(invalid_utf8_replaced, reset_log),
    cmocka_unit_test_teardown(long_messages_cut_to_one_valid_line, reset_log),
    cmocka_unit_test(level_names),
    cmocka_unit_test_teardown(level_filtering, reset_log),
    cmocka_unit_test_teardown(text_format_unchanged, reset_log),
    cmocka_unit_test_teardown(many_threads_give_whole_lines, reset_log),
    cmocka_unit_test(time_text_like_gmtime_and_strftime),
};

AR_TEST_MAIN(tests, NULL, NULL)
