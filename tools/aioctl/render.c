/*
 * render.c - aioctl's human-readable output (see render.h).
 */
#include "render.h"

#include "aioctl.h"
#include "ar.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Results longer than this are cut in the block view; --json shows them whole. */
#define MAX_INLINE_JSON 2000
/* The block view shows the newest this many history entries; --json shows them all. */
#define MAX_HISTORY_LINES 10
#define LABEL_WIDTH 14

void render_text(FILE *out, const char *s)
{
    if (!s)
        return;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, out);
}

/* before, s (control characters replaced), after; nothing when s is NULL or empty. */
static void put_part(FILE *out, const char *before, const char *s, const char *after)
{
    if (!s || !*s)
        return;
    fputs(before, out);
    render_text(out, s);
    fputs(after, out);
}

/* Columns a string takes on a terminal, roughly: one per UTF-8 code point. */
static size_t text_width(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            n++;
    return n;
}

static const char *str_field(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* A field as text for a table cell: strings as they are, numbers and booleans printed,
 * absent or null as "-". Returns a malloc'd string owned by the caller (NULL if no memory). */
static char *cell_text(const json_t *v)
{
    char *s = NULL;
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_integer(v)) {
        if (asprintf(&s, "%" JSON_INTEGER_FORMAT, json_integer_value(v)) < 0)
            return NULL;
        return s;
    }
    if (json_is_real(v) || json_is_boolean(v) || json_is_array(v) || json_is_object(v))
        return json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_PRESERVE_ORDER);
    return strdup("-");
}

/* Print JSON on one line, cut at MAX_INLINE_JSON bytes on a UTF-8 boundary. */
static void put_json_inline(FILE *out, const json_t *v)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (!s) {
        fputs("(unprintable)", out);
        return;
    }
    size_t len = strlen(s);
    if (len > MAX_INLINE_JSON) {
        size_t cut = MAX_INLINE_JSON;
        while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
            cut--;
        s[cut] = '\0';
        render_text(out, s);
        fprintf(out, " ... (%zu bytes in all; use --json to see it whole)", len);
    } else {
        render_text(out, s);
    }
    free(s);
}

static void label(FILE *out, const char *name)
{
    fprintf(out, "%-*s", LABEL_WIDTH, name);
}

/* "label:  text" for a string field, when present. */
static void string_line(FILE *out, const char *name, const char *text)
{
    if (!text || !*text)
        return;
    label(out, name);
    render_text(out, text);
    fputc('\n', out);
}

/* Seconds since the epoch of an RFC 3339 time ("2026-11-26T17:02:11Z", with optional
 * fractions and a "+01:00" offset). False when it is not one. */
static bool parse_rfc3339(const char *s, time_t *out)
{
    struct tm tm = {0};
    int used = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &used) != 6 || used != 19)
        return false;
    const char *p = s + used;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            ;
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int hh, mm, n = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &n) != 2 || n != 5)
            return false;
        offset = (hh * 60L + mm) * 60L * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return false;
    }
    if (*p)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return false;
    *out = t - offset;
    return true;
}

/* A time as local wall-clock time: "17:02:11" today, "2026-11-25 17:02:11" on another day.
 * False (nothing written) when it cannot be shown. */
static bool put_clock_time(FILE *out, time_t t, time_t now)
{
    struct tm tm, today;
    char buf[32];
    if (!localtime_r(&t, &tm) || !localtime_r(&now, &today))
        return false;
    bool same_day = tm.tm_year == today.tm_year && tm.tm_yday == today.tm_yday;
    strftime(buf, sizeof buf, same_day ? "%H:%M:%S" : "%Y-%m-%d %H:%M:%S", &tm);
    fputs(buf, out);
    return true;
}

/* An RFC 3339 time as local wall-clock time (put_clock_time); the text as given when it
 * cannot be read. */
static void put_clock(FILE *out, const char *rfc3339, time_t now)
{
    time_t t;
    if (!parse_rfc3339(rfc3339, &t) || !put_clock_time(out, t, now))
        render_text(out, rfc3339 ? rfc3339 : "?");
}

/* A JSON number of milliseconds since the epoch as local wall-clock time; "?" when it is not
 * one. */
static void put_clock_ms(FILE *out, const json_t *ms, time_t now)
{
    if (!json_is_integer(ms) || !put_clock_time(out, (time_t)(json_integer_value(ms) / 1000), now))
        fputc('?', out);
}

/* before and the time rfc3339 (put_clock); nothing when it is NULL or empty. */
static void put_clock_part(FILE *out, const char *before, const char *rfc3339, time_t now)
{
    if (!rfc3339 || !*rfc3339)
        return;
    fputs(before, out);
    put_clock(out, rfc3339, now);
}

/* One history entry: "attempt 2 (key k) → timeout: message [HTTP 504, 5012 ms]" or
 * "lookup → happened". An attempt without an outcome is still in flight. */
static void history_line(FILE *out, const json_t *e)
{
    const char *kind = str_field(e, "kind"), *key = str_field(e, "key");
    const char *outcome = str_field(e, "outcome"), *message = str_field(e, "message");
    const json_t *attempt = json_object_get(e, "attempt"), *http = json_object_get(e, "http_status");
    const json_t *latency = json_object_get(e, "latency_ms");

    if (kind && strcmp(kind, "lookup") == 0) {
        fputs("lookup", out);
    } else {
        fputs("attempt", out);
        if (json_is_integer(attempt))
            fprintf(out, " %" JSON_INTEGER_FORMAT, json_integer_value(attempt));
        put_part(out, " (key ", key, ")");
    }
    fputs(" \u2192 ", out);
    render_text(out, outcome ? outcome : "in flight");
    put_part(out, ": ", message, "");
    if (json_is_integer(http) || json_is_integer(latency)) {
        fputs(" [", out);
        if (json_is_integer(http))
            fprintf(out, "HTTP %" JSON_INTEGER_FORMAT "%s", json_integer_value(http),
                    json_is_integer(latency) ? ", " : "");
        if (json_is_integer(latency))
            fprintf(out, "%" JSON_INTEGER_FORMAT " ms", json_integer_value(latency));
        fputc(']', out);
    }
    fputc('\n', out);
}

static void render_history(FILE *out, const json_t *history)
{
    size_t n = json_array_size(history), first = 0;
    if (n == 0)
        return;
    label(out, "history:");
    if (n > MAX_HISTORY_LINES) {
        first = n - MAX_HISTORY_LINES;
        fprintf(out, "(%zu earlier entries; --json shows them)\n", first);
        label(out, "");
    }
    for (size_t i = first; i < n; i++) {
        if (i > first)
            label(out, "");
        history_line(out, json_array_get(history, i));
    }
}

/* "succeeded by alice — checked the ledger" */
static void render_resolution(FILE *out, const json_t *resolution)
{
    const char *outcome = str_field(resolution, "outcome"), *by = str_field(resolution, "by");
    const char *reason = str_field(resolution, "reason");
    label(out, "resolution:");
    render_text(out, outcome ? outcome : "?");
    put_part(out, " by ", by, "");
    put_part(out, " \u2014 ", reason, "");
    fputc('\n', out);
}

/* The autonomy level when it is not auto: "semi (the policies said allow)" when it changed the
 * verdict. */
static void render_autonomy_level(FILE *out, const json_t *decision)
{
    const char *level = str_field(decision, "autonomy");
    const char *verdict = str_field(decision, "verdict");
    const char *policy_verdict = str_field(decision, "policy_verdict");
    if (!level || strcmp(level, "auto") == 0)
        return;
    label(out, "autonomy:");
    render_text(out, level);
    if (verdict && policy_verdict && strcmp(verdict, policy_verdict) != 0)
        put_part(out, " (the policies said ", policy_verdict, ")");
    else if (verdict && strcmp(verdict, "deny") == 0)
        fputs(" (a deny always stands)", out);
    fputc('\n', out);
}

/* One line per policy file that voted: "default.lua allow (echo_allowed)"; abstentions are
 * left out (--json has them). */
static void render_votes(FILE *out, const json_t *votes)
{
    size_t i;
    const json_t *v;
    bool first = true;
    json_array_foreach(votes, i, v) {
        const char *verdict = str_field(v, "verdict");
        if (!verdict)
            continue;
        label(out, first ? "votes:" : "");
        first = false;
        render_text(out, str_field(v, "file") ? str_field(v, "file") : "?");
        fputc(' ', out);
        render_text(out, verdict);
        put_part(out, " (", str_field(v, "rule"), ")");
        fputc('\n', out);
    }
}

/* "finance, shop.lead" or "any approver"; "; four eyes" when the submitter may not decide. */
static void put_approvers(FILE *out, const json_t *roles, bool four_eyes)
{
    size_t i;
    const json_t *r;
    if (json_array_size(roles) == 0)
        fputs("any approver", out);
    json_array_foreach(roles, i, r) {
        fputs(i ? ", " : "", out);
        render_text(out, json_is_string(r) ? json_string_value(r) : "?");
    }
    if (four_eyes)
        fputs(" (four eyes: not the submitter)", out);
}

/* An action's approval: "waiting for finance until 17:02:11: Refund 250.00 for order 7", or
 * "approved by alice at 17:03:00 — checked the order" and what was asked, or "expired at
 * ...". */
static void render_approval_lines(FILE *out, const json_t *ap, time_t now)
{
    const char *decision = str_field(ap, "decision"), *summary = str_field(ap, "summary");
    const json_t *roles = json_object_get(ap, "roles");
    bool four_eyes = json_is_true(json_object_get(ap, "four_eyes"));

    label(out, "approval:");
    if (!decision) {
        fputs("waiting for ", out);
        put_approvers(out, roles, four_eyes);
        fputs(" until ", out);
        put_clock_ms(out, json_object_get(ap, "expires_ms"), now);
        put_part(out, ": ", summary, "");
        fputc('\n', out);
        return;
    }
    if (strcmp(decision, "expire") == 0) {
        fputs("expired at ", out);
        put_clock_ms(out, json_object_get(ap, "decided_ms"), now);
        fputs(" (nobody decided)", out);
    } else {
        render_text(out, strcmp(decision, "approve") == 0 ? "approved"
                         : strcmp(decision, "reject") == 0 ? "rejected" : decision);
        put_part(out, " by ", str_field(ap, "by"), "");
        fputs(" at ", out);
        put_clock_ms(out, json_object_get(ap, "decided_ms"), now);
        put_part(out, " \u2014 ", str_field(ap, "comment"), "");
    }
    fputc('\n', out);
    label(out, "");
    fputs("asked ", out);
    put_approvers(out, roles, four_eyes);
    put_part(out, ": ", summary, "");
    fputc('\n', out);
}

void render_action(FILE *out, const json_t *action)
{
    time_t now = time(NULL);
    const char *connector = str_field(action, "connector");
    const char *name = str_field(action, "action");
    const char *key = str_field(action, "idempotency_key");
    const json_t *decision = json_object_get(action, "decision");
    const json_t *attempts = json_object_get(action, "attempts");
    const json_t *result = json_object_get(action, "result");
    const json_t *error = json_object_get(action, "error");

    label(out, "id:");
    render_text(out, str_field(action, "id") ? str_field(action, "id") : "?");
    fputc('\n', out);
    label(out, "action:");
    render_text(out, connector ? connector : "?");
    fputc('.', out);
    render_text(out, name ? name : "?");
    fputc('\n', out);
    label(out, "state:");
    render_text(out, str_field(action, "state") ? str_field(action, "state") : "?");
    fputc('\n', out);
    if (key) {
        label(out, "key:");
        render_text(out, key);
        fputc('\n', out);
    }
    if (json_is_object(decision)) {
        const char *verdict = str_field(decision, "verdict");
        const char *rule = str_field(decision, "rule");
        const char *reason = str_field(decision, "reason");
        label(out, "decision:");
        render_text(out, verdict ? verdict : "?");
        put_part(out, " (rule ", rule, ")");
        put_part(out, " \u2014 ", reason, "");
        fputc('\n', out);
        render_autonomy_level(out, decision);
        render_votes(out, json_object_get(decision, "votes"));
    }
    if (json_is_object(json_object_get(action, "approval")))
        render_approval_lines(out, json_object_get(action, "approval"), now);
    if (json_is_integer(attempts) && json_integer_value(attempts) > 0) {
        label(out, "attempts:");
        fprintf(out, "%" JSON_INTEGER_FORMAT "\n", json_integer_value(attempts));
    }
    string_line(out, "deadline:", str_field(action, "deadline_at"));
    string_line(out, "next attempt:", str_field(action, "next_attempt_at"));
    render_history(out, json_object_get(action, "history"));
    const char *cancel_by = str_field(action, "cancel_requested_by");
    if (cancel_by && *cancel_by) {
        label(out, "cancel:");
        fputs("requested by ", out);
        render_text(out, cancel_by);
        fputc('\n', out);
    }
    if (json_is_object(json_object_get(action, "resolution")))
        render_resolution(out, json_object_get(action, "resolution"));
    if (result && !json_is_null(result)) {
        label(out, "result:");
        put_json_inline(out, result);
        fputc('\n', out);
    }
    const json_t *validation = json_object_get(action, "validation");
    if (json_is_object(validation)) {
        /* validate rejected the result: say so before the error (reads) or the result (writes) */
        label(out, "validation:");
        fputs("rejected", out);
        put_part(out, " by ", str_field(validation, "policy"), "");
        put_part(out, " (rule ", str_field(validation, "rule"), ")");
        put_part(out, " \u2014 ", str_field(validation, "reason"), "");
        if (json_is_true(json_object_get(action, "review")))
            fputs("; acted already: flagged for review", out);
        fputc('\n', out);
    }
    if (error && !json_is_null(error)) {
        label(out, "error:");
        if (json_is_object(error)) {
            const char *cls = str_field(error, "class");
            const char *msg = str_field(error, "message");
            render_text(out, cls ? cls : "?");
            put_part(out, ": ", msg, "");
        } else {
            put_json_inline(out, error);
        }
        fputc('\n', out);
    }
}

/* An aligned table: rows of n_cols malloc'd cells (NULL cells print as "-"); the header too. */
static void print_table(FILE *out, const char *const *header, size_t n_cols, char **cells,
                        size_t n_rows)
{
    size_t width[16] = {0};
    for (size_t c = 0; c < n_cols; c++) {
        width[c] = text_width(header[c]);
        for (size_t r = 0; r < n_rows; r++) {
            const char *s = cells[r * n_cols + c];
            size_t w = text_width(s ? s : "-");
            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t r = 0; r <= n_rows; r++) {
        for (size_t c = 0; c < n_cols; c++) {
            const char *s = r == 0 ? header[c] : cells[(r - 1) * n_cols + c];
            if (!s)
                s = "-";
            render_text(out, s);
            if (c + 1 < n_cols)
                fprintf(out, "%*s", (int)(width[c] - text_width(s) + 2), "");
        }
        fputc('\n', out);
    }
}

static void free_cells(char **cells, size_t n)
{
    if (!cells)
        return;
    for (size_t i = 0; i < n; i++)
        free(cells[i]);
    free(cells);
}

/* Fills a table row's malloc'd cells from one item of the array shown; ctx as given to
 * render_rows. */
typedef void (*row_fn)(char **row, const json_t *item, const void *ctx);

/* A table with a row for each item of the array items (fill makes its cells), or empty when
 * there are none. False when no table was printed (no items, or out of memory: reported). */
static bool render_rows(FILE *out, const char *const *header, size_t n_cols, const json_t *items,
                        const char *empty, row_fn fill, const void *ctx)
{
    size_t rows = json_array_size(items), i;
    const json_t *item;

    if (rows == 0) {
        fputs(empty, out);
        return false;
    }
    char **cells = calloc(rows * n_cols, sizeof *cells);
    if (!cells) {
        fputs("aioctl: out of memory\n", stderr);
        return false;
    }
    json_array_foreach(items, i, item)
        fill(cells + i * n_cols, item, ctx);
    print_table(out, header, n_cols, cells, rows);
    free_cells(cells, rows * n_cols);
    return true;
}

enum { ACTION_COLS = 5, CONNECTOR_COLS = 8, TOKEN_COLS = 5 };

static void action_row(char **row, const json_t *action, const void *ctx)
{
    static const char *const keys[ACTION_COLS] = {"id", "state", "connector", "action",
                                                  "created_at"};
    (void)ctx;
    for (size_t c = 0; c < ACTION_COLS; c++)
        row[c] = cell_text(json_object_get(action, keys[c]));
}

void render_action_table(FILE *out, const json_t *actions)
{
    static const char *const header[ACTION_COLS] = {"ID", "STATE", "CONNECTOR", "ACTION",
                                                    "CREATED"};
    render_rows(out, header, ACTION_COLS, actions, "no actions\n", action_row, NULL);
}

/* "a,b,c" from the names of a connector's actions; malloc'd, owned by the caller. */
static char *action_names(const json_t *actions)
{
    size_t len = 1, i;
    const json_t *a;
    json_array_foreach(actions, i, a) {
        const char *n = str_field(a, "name");
        len += (n ? strlen(n) : 1) + 1;
    }
    char *s = calloc(1, len);
    if (!s)
        return NULL;
    json_array_foreach(actions, i, a) {
        const char *n = str_field(a, "name");
        if (i > 0)
            strcat(s, ",");
        strcat(s, n ? n : "?");
    }
    if (!*s) {
        free(s);
        return strdup("-");
    }
    return s;
}

static bool is_paused(const json_t *flow)
{
    return json_is_true(json_object_get(flow, "paused"));
}

/* "open", "half_open", or NULL when closed (or not reported). */
static const char *breaker_trouble(const json_t *flow)
{
    const char *state = str_field(json_object_get(flow, "breaker"), "state");
    return state && strcmp(state, "closed") != 0 ? state : NULL;
}

/* rate_limited_until, when it is still ahead (a time that cannot be read counts as ahead). */
static const char *rate_limited_until(const json_t *flow, time_t now)
{
    const char *until = str_field(flow, "rate_limited_until");
    time_t t;
    if (!until || !*until)
        return NULL;
    if (parse_rfc3339(until, &t) && t <= now)
        return NULL;
    return until;
}

/* The FLOW cell: "paused", "breaker open", "half-open", "rate-limited" (joined with ", " when
 * several hold), "ok", or "-" when the daemon reports no flow. Malloc'd (NULL: no memory). */
static char *flow_cell(const json_t *flow, time_t now)
{
    if (!json_is_object(flow))
        return strdup("-");
    char *s = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&s, &size);
    if (!f)
        return NULL;
    const char *sep = "", *breaker = breaker_trouble(flow);
    if (is_paused(flow)) {
        fputs("paused", f);
        sep = ", ";
    }
    if (breaker) {
        fputs(sep, f);
        if (strcmp(breaker, "open") == 0)
            fputs("breaker open", f);
        else if (strcmp(breaker, "half_open") == 0)
            fputs("half-open", f);
        else
            fprintf(f, "breaker %s", breaker);
        sep = ", ";
    }
    if (rate_limited_until(flow, now)) {
        fputs(sep, f);
        fputs("rate-limited", f);
        sep = ", ";
    }
    if (!*sep)
        fputs("ok", f);
    if (fclose(f) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* The QUEUE cell: "queued/dispatched/running" ("12/5/2": waiting in the queue; in the
 * connector's pipeline, intent being journaled or waiting for a process; calls running), or
 * "queued/running" from a daemon without a pipeline, or "-". Malloc'd (NULL: no memory). */
static char *queue_cell(const json_t *flow)
{
    const json_t *queued = json_object_get(flow, "queued"), *inflight = json_object_get(flow, "inflight");
    const json_t *dispatching = json_object_get(flow, "dispatching");
    const json_t *waiting = json_object_get(flow, "waiting_for_process");
    char *s = NULL;
    if (!json_is_integer(queued) || !json_is_integer(inflight))
        return strdup("-");
    int rc = json_is_integer(dispatching) && json_is_integer(waiting)
                 ? asprintf(&s, "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                            json_integer_value(queued), json_integer_value(dispatching) + json_integer_value(waiting),
                            json_integer_value(inflight))
                 : asprintf(&s, "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT, json_integer_value(queued),
                            json_integer_value(inflight));
    return rc < 0 ? NULL : s;
}

/* "timeout ×6, retryable ×2" from {"retryable": 2, "timeout": 6, ...}; classes at 0 are left
 * out. False when nothing was printed. */
static bool put_opened_by(FILE *out, const json_t *opened_by)
{
    const char *cls;
    const json_t *n;
    bool any = false;
    json_object_foreach((json_t *)opened_by, cls, n) {
        if (!json_is_integer(n) || json_integer_value(n) <= 0)
            continue;
        fputs(any ? ", " : "", out);
        render_text(out, cls);
        fprintf(out, " \u00d7%" JSON_INTEGER_FORMAT, json_integer_value(n));
        any = true;
    }
    return any;
}

/* "breaker open since 17:02:11 — 6 failures in a row (last: timeout); opened by timeout ×6;
 * next trial at 17:02:41" */
static void put_breaker(FILE *out, const json_t *breaker, const char *state, time_t now)
{
    const char *since = str_field(breaker, "since"), *reason = str_field(breaker, "reason");
    const char *next = str_field(breaker, "next_trial_at");
    const json_t *opened_by = json_object_get(breaker, "opened_by");

    fputs("breaker ", out);
    render_text(out, strcmp(state, "half_open") == 0 ? "half-open" : state);
    put_clock_part(out, " since ", since, now);
    put_part(out, " \u2014 ", reason, "");
    if (json_is_object(opened_by) && json_object_size(opened_by) > 0) {
        /* Printed into a buffer first: no "opened by" without any class behind it. */
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        if (f) {
            bool any = put_opened_by(f, opened_by);
            if (fclose(f) == 0 && any)
                fprintf(out, "; opened by %s", text);
            free(text);
        }
    }
    put_clock_part(out, "; next trial at ", next, now);
}

/* Is a connector's work held back: paused, rate limited, or its breaker not closed? */
static bool flow_held(const json_t *flow, time_t now)
{
    return is_paused(flow) || breaker_trouble(flow) || rate_limited_until(flow, now);
}

/* The line on a connector whose work is held back (flow_held):
 * "shop: paused by op at 17:00:03 — maintenance; breaker open since ...". */
static void flow_line(FILE *out, const json_t *c, time_t now)
{
    const json_t *flow = json_object_get(c, "flow");
    const char *breaker = breaker_trouble(flow), *until = rate_limited_until(flow, now);
    bool paused = is_paused(flow);
    const char *sep = "";

    render_text(out, str_field(c, "name") ? str_field(c, "name") : "?");
    fputs(": ", out);
    if (paused) {
        const char *by = str_field(flow, "paused_by"), *at = str_field(flow, "paused_at");
        const char *reason = str_field(flow, "pause_reason");
        fputs("paused", out);
        put_part(out, " by ", by, "");
        put_clock_part(out, " at ", at, now);
        put_part(out, " \u2014 ", reason, "");
        sep = "; ";
    }
    if (breaker) {
        fputs(sep, out);
        put_breaker(out, json_object_get(flow, "breaker"), breaker, now);
        sep = "; ";
    }
    if (until) {
        fputs(sep, out);
        fputs("rate limited by the API until ", out);
        put_clock(out, until, now);
    }
    fputc('\n', out);
}

/* ctx: the time now (a time_t), for the FLOW cell. */
static void connector_row(char **row, const json_t *c, const void *ctx)
{
    time_t now = *(const time_t *)ctx;
    const json_t *flow = json_object_get(c, "flow");
    row[0] = cell_text(json_object_get(c, "name"));
    row[1] = cell_text(json_object_get(c, "plugin"));
    row[2] = cell_text(json_object_get(c, "version"));
    row[3] = cell_text(json_object_get(c, "status"));
    json_t *serving = json_object_get(c, "serving"), *procs = json_object_get(c, "processes");
    if (json_is_integer(serving) && json_is_integer(procs)) {
        if (asprintf(&row[4], "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                     json_integer_value(serving), json_integer_value(procs)) < 0)
            row[4] = NULL;
    } else {
        row[4] = cell_text(serving);
    }
    row[5] = flow_cell(flow, now);
    row[6] = queue_cell(flow);
    row[7] = action_names(json_object_get(c, "actions"));
}

/* Below the table: why a connector is not ready, and what holds its work back. */
static void connector_notes(FILE *out, const json_t *connectors, time_t now)
{
    bool first = true;
    size_t i;
    const json_t *c;
    json_array_foreach(connectors, i, c) {
        const char *status = str_field(c, "status");
        const char *message = str_field(c, "message");
        if (status && message && *message && strcmp(status, "ready") != 0) {
            if (first)
                fputc('\n', out);
            first = false;
            render_text(out, str_field(c, "name") ? str_field(c, "name") : "?");
            fputs(" (", out);
            render_text(out, status);
            fputs("): ", out);
            render_text(out, message);
            fputc('\n', out);
        }
        if (flow_held(json_object_get(c, "flow"), now)) {
            if (first)
                fputc('\n', out);
            first = false;
            flow_line(out, c, now);
        }
    }
}

/* One line per connector on its isolation: "sandbox t_ok: uid 70001, landlock ABI 7 (fs, net,
 * scoped), seccomp on, ports 443". A layer that is off or missing says so. */
static void sandbox_notes(FILE *out, const json_t *connectors)
{
    size_t i, k;
    const json_t *c, *port;
    json_array_foreach(connectors, i, c) {
        const json_t *sb = json_object_get(c, "sandbox");
        if (!json_is_object(sb))
            continue;
        fputs("sandbox ", out);
        render_text(out, str_field(c, "name") ? str_field(c, "name") : "?");
        fputs(": uid ", out);
        const json_t *uid = json_object_get(sb, "uid");
        if (json_is_integer(uid))
            fprintf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(uid));
        else
            render_text(out, json_is_string(uid) ? json_string_value(uid) : "?");
        const json_t *ll = json_object_get(sb, "landlock");
        fputs(", landlock ", out);
        if (json_is_object(ll)) {
            fprintf(out, "ABI %" JSON_INTEGER_FORMAT " (fs%s%s)", json_integer_value(json_object_get(ll, "abi")),
                    json_is_true(json_object_get(ll, "net")) ? ", net" : "",
                    json_is_true(json_object_get(ll, "scoped")) ? ", scoped" : "");
        } else {
            render_text(out, json_is_string(ll) ? json_string_value(ll) : "?");
        }
        fputs(", seccomp ", out);
        render_text(out, str_field(sb, "seccomp") ? str_field(sb, "seccomp") : "?");
        fputs(", ports ", out);
        if (json_array_size(json_object_get(c, "allow_ports")) == 0)
            fputs("none", out);
        json_array_foreach(json_object_get(c, "allow_ports"), k, port)
            fprintf(out, "%s%" JSON_INTEGER_FORMAT, k ? "," : "", json_integer_value(port));
        fputc('\n', out);
    }
}

void render_connectors(FILE *out, const json_t *connectors)
{
    static const char *const header[CONNECTOR_COLS] = {
        "NAME", "PLUGIN", "VERSION", "STATUS", "SERVING", "FLOW", "QUEUE", "ACTIONS"};
    time_t now = time(NULL);

    if (render_rows(out, header, CONNECTOR_COLS, connectors, "no connectors configured\n",
                    connector_row, &now)) {
        connector_notes(out, connectors, now);
        sandbox_notes(out, connectors);
    }
}

char *render_join(const json_t *strings)
{
    char *s = NULL;
    size_t size = 0, i;
    const json_t *v;
    FILE *f = open_memstream(&s, &size);
    if (!f)
        return NULL;
    json_array_foreach(strings, i, v) {
        if (i > 0)
            fputc(',', f);
        fputs(json_is_string(v) ? json_string_value(v) : "?", f);
    }
    if (fclose(f) != 0) {
        free(s);
        return NULL;
    }
    if (!*s) {
        free(s);
        return strdup("-");
    }
    return s;
}

static void token_row(char **row, const json_t *t, const void *ctx)
{
    const json_t *expires = json_object_get(t, "expires_at");
    (void)ctx;
    row[0] = cell_text(json_object_get(t, "name"));
    row[1] = render_join(json_object_get(t, "roles"));
    row[2] = cell_text(json_object_get(t, "state"));
    row[3] = cell_text(json_object_get(t, "created_at"));
    row[4] = json_is_null(expires) ? strdup("never") : cell_text(expires);
}

void render_token_table(FILE *out, const json_t *tokens)
{
    static const char *const header[TOKEN_COLS] = {"NAME", "ROLES", "STATE", "CREATED",
                                                   "EXPIRES"};
    render_rows(out, header, TOKEN_COLS, tokens, "no tokens\n", token_row, NULL);
}

/* ---- approvals, autonomy, policies ----------------------------------------------------- */

/* A table cell too long for one line is cut to this many characters, and "..." added. */
#define MAX_CELL_CHARS 60

/* An RFC 3339 time as a table cell (put_clock), "-" when absent. Malloc'd (NULL: no memory). */
static char *clock_cell(const char *rfc3339, time_t now)
{
    char *s = NULL;
    size_t size = 0;
    if (!rfc3339 || !*rfc3339)
        return strdup("-");
    FILE *f = open_memstream(&s, &size);
    if (!f)
        return NULL;
    put_clock(f, rfc3339, now);
    if (fclose(f) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* s cut to MAX_CELL_CHARS characters (on a UTF-8 boundary) with "..." after; "-" when NULL
 * or empty. Malloc'd (NULL: no memory). */
static char *short_cell(const char *s)
{
    if (!s || !*s)
        return strdup("-");
    size_t chars = 0, cut = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p & 0xC0) != 0x80 && chars++ == MAX_CELL_CHARS) {
            cut = (size_t)((const char *)p - s);
            break;
        }
    }
    if (!cut)
        return strdup(s);
    char *out = malloc(cut + 4);
    if (out) {
        memcpy(out, s, cut);
        memcpy(out + cut, "...", 4);
    }
    return out;
}

enum { APPROVAL_COLS = 6, AUTONOMY_COLS = 5 };

/* ctx: the time now (a time_t), for the EXPIRES cell. */
static void approval_row(char **row, const json_t *ap, const void *ctx)
{
    time_t now = *(const time_t *)ctx;
    const char *connector = str_field(ap, "connector"), *name = str_field(ap, "action");
    const json_t *roles = json_object_get(ap, "roles");
    row[0] = cell_text(json_object_get(ap, "id"));
    if (asprintf(&row[1], "%s.%s", connector ? connector : "?", name ? name : "?") < 0)
        row[1] = NULL;
    row[2] = cell_text(json_object_get(ap, "submitter"));
    row[3] = json_array_size(roles) ? render_join(roles) : strdup("any");
    row[4] = clock_cell(str_field(ap, "expires_at"), now);
    row[5] = short_cell(str_field(ap, "summary"));
}

void render_approval_table(FILE *out, const json_t *approvals)
{
    static const char *const header[APPROVAL_COLS] = {"ID", "CONNECTOR.ACTION", "SUBMITTER",
                                                      "ROLES", "EXPIRES", "SUMMARY"};
    time_t now = time(NULL);
    render_rows(out, header, APPROVAL_COLS, approvals, "no approvals\n", approval_row, &now);
}

/* "label:  time" (local wall-clock) for an RFC 3339 field, when present. */
static void clock_line(FILE *out, const char *name, const char *rfc3339, time_t now)
{
    if (!rfc3339 || !*rfc3339)
        return;
    label(out, name);
    put_clock(out, rfc3339, now);
    fputc('\n', out);
}

/* "label:  {json}" for a field that is neither absent, null nor an empty object. */
static void json_line(FILE *out, const char *name, const json_t *v)
{
    if (!v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0))
        return;
    label(out, name);
    put_json_inline(out, v);
    fputc('\n', out);
}

/* "approved by alice at 17:03:00 — comment", "rejected by ...", "expired at ...". */
static void put_view_decision(FILE *out, const json_t *ap, time_t now)
{
    const char *decision = str_field(ap, "decision");
    if (strcmp(decision, "expire") == 0) {
        fputs("expired", out);
    } else {
        render_text(out, strcmp(decision, "approve") == 0 ? "approved"
                         : strcmp(decision, "reject") == 0 ? "rejected" : decision);
        put_part(out, " by ", str_field(ap, "decided_by"), "");
    }
    put_clock_part(out, " at ", str_field(ap, "decided_at"), now);
    put_part(out, " \u2014 ", str_field(ap, "comment"), "");
}

void render_approval(FILE *out, const json_t *ap)
{
    time_t now = time(NULL);
    const char *connector = str_field(ap, "connector"), *name = str_field(ap, "action");

    string_line(out, "id:", str_field(ap, "id") ? str_field(ap, "id") : "?");
    label(out, "approval:");
    render_text(out, str_field(ap, "state") ? str_field(ap, "state") : "?");
    put_part(out, " (action ", str_field(ap, "action_state"), ")");
    fputc('\n', out);
    label(out, "action:");
    render_text(out, connector ? connector : "?");
    fputc('.', out);
    render_text(out, name ? name : "?");
    fputc('\n', out);
    json_line(out, "input:", json_object_get(ap, "input"));
    json_line(out, "proposer:", json_object_get(ap, "proposer"));
    string_line(out, "submitter:", str_field(ap, "submitter"));
    label(out, "approvers:");
    put_approvers(out, json_object_get(ap, "roles"), json_is_true(json_object_get(ap, "four_eyes")));
    fputc('\n', out);
    string_line(out, "summary:", str_field(ap, "summary"));
    string_line(out, "rule:", str_field(ap, "rule"));
    clock_line(out, "requested:", str_field(ap, "requested_at"), now);
    clock_line(out, "expires:", str_field(ap, "expires_at"), now);
    if (str_field(ap, "decision")) {
        label(out, "decision:");
        put_view_decision(out, ap, now);
        fputc('\n', out);
    }
}

void render_approval_line(FILE *out, const json_t *ap)
{
    const char *connector = str_field(ap, "connector"), *name = str_field(ap, "action");
    render_text(out, str_field(ap, "id") ? str_field(ap, "id") : "?");
    fputs(": ", out);
    if (str_field(ap, "decision"))
        put_view_decision(out, ap, time(NULL));
    else
        render_text(out, str_field(ap, "state") ? str_field(ap, "state") : "?");
    fputs(" (", out);
    render_text(out, connector ? connector : "?");
    fputc('.', out);
    render_text(out, name ? name : "?");
    put_part(out, ", action ", str_field(ap, "action_state"), "");
    fputs(")\n", out);
}

/* One row of the autonomy table: {pattern, level, from, by, at} (at: ms, or absent). */
static void autonomy_row(char **row, const json_t *r, const void *ctx)
{
    time_t now = *(const time_t *)ctx;
    row[0] = cell_text(json_object_get(r, "pattern"));
    row[1] = cell_text(json_object_get(r, "level"));
    row[2] = cell_text(json_object_get(r, "from"));
    row[3] = cell_text(json_object_get(r, "by"));
    row[4] = NULL;
    const json_t *at = json_object_get(r, "at");
    char *s = NULL;
    size_t size = 0;
    FILE *f = json_is_integer(at) ? open_memstream(&s, &size) : NULL;
    if (f) {
        put_clock_ms(f, at, now);
        if (fclose(f) == 0)
            row[4] = s;
        else
            free(s);
    }
}

/* The rows of the autonomy table: the config's patterns, then the runtime's. A new reference
 * (NULL when out of memory). */
static json_t *autonomy_rows(const json_t *config, const json_t *runtime)
{
    json_t *rows = json_array();
    const char *pattern;
    json_t *v;
    if (!rows)
        return NULL;
    json_object_foreach((json_t *)config, pattern, v) {
        const char *from = json_object_get(runtime, pattern) ? "config (overridden)" : "config";
        if (json_array_append_new(rows, json_pack("{s:s,s:O,s:s}", "pattern", pattern, "level", v,
                                                  "from", from)))
            goto fail;
    }
    json_object_foreach((json_t *)runtime, pattern, v) {
        json_t *row = json_pack("{s:s,s:O?,s:s,s:O?,s:O?}", "pattern", pattern, "level",
                                json_object_get(v, "level"), "from", "runtime", "by",
                                json_object_get(v, "by"), "at", json_object_get(v, "at_ms"));
        if (json_array_append_new(rows, row))
            goto fail;
    }
    return rows;
fail:
    json_decref(rows);
    return NULL;
}

void render_autonomy(FILE *out, const json_t *view)
{
    static const char *const header[AUTONOMY_COLS] = {"PATTERN", "LEVEL", "FROM", "SET BY", "AT"};
    const char *fallback = str_field(view, "default");
    json_t *rows = autonomy_rows(json_object_get(view, "config"), json_object_get(view, "runtime"));
    time_t now = time(NULL);

    if (!rows) {
        fputs("aioctl: out of memory\n", stderr);
        return;
    }
    if (render_rows(out, header, AUTONOMY_COLS, rows, "no autonomy patterns\n", autonomy_row, &now))
        fputs("\nThe most specific pattern wins (connector.action, then connector.*, then *); at "
              "equal fit,\nthe runtime setting wins over the config.\n", out);
    fputs("default (no pattern fits): ", out);
    render_text(out, fallback ? fallback : "auto");
    fputc('\n', out);
    json_decref(rows);
}

void render_policies(FILE *out, const json_t *view)
{
    const json_t *files = json_object_get(view, "files"), *reloads = json_object_get(view, "reloads");
    string_line(out, "version:", str_field(view, "version") ? str_field(view, "version") : "?");
    label(out, "files:");
    if (json_is_integer(files))
        fprintf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(files));
    else
        fputc('?', out);
    put_part(out, " in ", str_field(view, "dir"), "");
    fputc('\n', out);
    clock_line(out, "loaded at:", str_field(view, "loaded_at"), time(NULL));
    if (json_is_integer(reloads)) {
        label(out, "reloads:");
        fprintf(out, "%" JSON_INTEGER_FORMAT " since the daemon started\n",
                json_integer_value(reloads));
    }
    const json_t *timing = json_object_get(view, "decision_time");
    if (json_is_object(timing) && json_integer_value(json_object_get(timing, "count")) > 0) {
        label(out, "decisions:");
        fprintf(out, "%" JSON_INTEGER_FORMAT ", p50 <= %.1f us, p99 <= %.1f us, max %.1f us\n",
                json_integer_value(json_object_get(timing, "count")),
                json_number_value(json_object_get(timing, "p50_us_at_most")),
                json_number_value(json_object_get(timing, "p99_us_at_most")),
                json_number_value(json_object_get(timing, "max_us")));
    }
    /* Guardrail counters: what ops compare with their caps. */
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(view, "counters"), i, c) {
        const json_t *value = json_object_get(c, "value");
        label(out, i == 0 ? "counters:" : "");
        render_text(out, str_field(c, "name") ? str_field(c, "name") : "?");
        fputs(" = ", out);
        if (json_is_number(value))
            fprintf(out, "%g", json_number_value(value));
        else
            fputs("(unavailable)", out);
        fputs("  (", out);
        render_text(out, str_field(c, "sum") ? "sum of " : "count of ");
        if (str_field(c, "sum")) {
            render_text(out, str_field(c, "sum"));
            fputs(" in ", out);
        }
        render_text(out, str_field(c, "connector") ? str_field(c, "connector") : "?");
        fputc('.', out);
        render_text(out, str_field(c, "action") ? str_field(c, "action") : "?");
        fprintf(out, ", last %gs)\n", json_number_value(json_object_get(c, "window")));
    }
}

int render_usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("aioctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'aioctl --help'.\n", stderr);
    return AIOCTL_USAGE;
}

void render_ar_error(const ar_error *err, const char *fallback)
{
    fputs("error: ", stderr);
    render_text(stderr, err->code[0] ? err->code : "error");
    fputs(": ", stderr);
    render_text(stderr, err->message[0] ? err->message : fallback);
    fputc('\n', stderr);
}

/* "12ms/40ms/0.2s": p50/p90/p99 of a latency summary, "-" when there is none. */
static char *latency_cell(const json_t *q)
{
    if (!json_is_object(q) || json_integer_value(json_object_get(q, "count")) == 0)
        return strdup("-");
    char *s = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&s, &size);
    if (!f)
        return NULL;
    static const char *const names[] = {"p50", "p90", "p99"};
    for (int i = 0; i < 3; i++) {
        const json_t *v = json_object_get(q, names[i]);
        double secs = json_number_value(v);
        if (i)
            fputc('/', f);
        if (!json_is_number(v))
            fputc('-', f);
        else if (secs < 1)
            fprintf(f, "%.1fms", secs * 1000);
        else
            fprintf(f, "%.2fs", secs);
    }
    fclose(f);
    return s;
}

static void stats_row(char **row, const json_t *c, const void *ctx)
{
    (void)ctx;
    char buf[128];
    row[0] = cell_text(json_object_get(c, "connector"));
    snprintf(buf, sizeof buf, "%.0f", json_number_value(json_object_get(c, "finished")));
    row[1] = strdup(buf);
    const json_t *er = json_object_get(c, "error_rate");
    if (json_is_number(er))
        snprintf(buf, sizeof buf, "%.1f%%", json_number_value(er) * 100);
    else
        snprintf(buf, sizeof buf, "-");
    row[2] = strdup(buf);
    const json_t *lat = json_object_get(c, "latency_seconds");
    row[3] = latency_cell(json_object_get(lat, "connector_call"));
    row[4] = latency_cell(json_object_get(lat, "end_to_end"));
    size_t used = 0;
    buf[0] = '\0';
    const char *unit;
    const json_t *v;
    json_object_foreach((json_t *)json_object_get(json_object_get(c, "cost"), "per_action"), unit, v) {
        if (json_is_number(v) && used < sizeof buf) {
            int n = snprintf(buf + used, sizeof buf - used, "%s%.4g %s", used ? ", " : "", json_number_value(v), unit);
            if (n > 0)
                used += (size_t)n;
        }
    }
    row[5] = strdup(buf[0] ? buf : "-");
}

void render_stats(FILE *out, const json_t *connectors)
{
    static const char *const header[6] = {"CONNECTOR", "FINISHED", "ERRORS", "CALL p50/p90/p99",
                                          "END-TO-END p50/p90/p99", "COST/ACTION"};
    render_rows(out, header, 6, connectors, "no connectors configured\n", stats_row, NULL);
}

static void stats_day_row(char **row, const json_t *c, const void *ctx)
{
    (void)ctx;
    char buf[160];
    row[0] = cell_text(json_object_get(c, "connector"));
    row[1] = cell_text(json_object_get(c, "actions"));
    row[2] = cell_text(json_object_get(c, "finished"));
    row[3] = cell_text(json_object_get(c, "failed"));
    size_t used = 0;
    buf[0] = '\0';
    const char *unit;
    const json_t *v;
    json_object_foreach((json_t *)json_object_get(c, "cost"), unit, v) {
        if (used < sizeof buf) {
            int n = snprintf(buf + used, sizeof buf - used, "%s%.6g %s", used ? ", " : "", json_number_value(v), unit);
            if (n > 0)
                used += (size_t)n;
        }
    }
    row[4] = strdup(buf[0] ? buf : "-");
}

void render_stats_day(FILE *out, const json_t *connectors)
{
    static const char *const header[5] = {"CONNECTOR", "ACTIONS", "FINISHED", "FAILED", "COST"};
    render_rows(out, header, 5, connectors, "no actions that day\n", stats_day_row, NULL);
}
