/* ar.c - the shared error struct, clocks and log lines (see ar.h). */
#include "ar.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int ar_error_set(ar_error *err, int status, const char *code, const char *fmt, ...)
{
    if (!err)
        return status;
    snprintf(err->code, sizeof err->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return status;
}

void ar_error_clear(ar_error *err)
{
    if (!err)
        return;
    err->code[0] = '\0';
    err->message[0] = '\0';
}

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ar_now_ms(void) { return clock_ms(CLOCK_REALTIME); }
int64_t ar_mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

/* The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
 * civil_from_days: 400-year eras of 146097 days, years starting on March 1st so that the leap
 * day comes last). Exact for every day an int64_t of milliseconds reaches. */
static void civil_from_days(int64_t days, int64_t *year, int *month, int *day)
{
    days += 719468; /* from 0000-03-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t day_of_era = days - era * 146097;                                    /* [0, 146096] */
    int64_t year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365; /* [0, 399] */
    int64_t day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    int64_t march_month = (5 * day_of_year + 2) / 153;                           /* [0, 11] */
    *day = (int)(day_of_year - (153 * march_month + 2) / 5 + 1);
    *month = (int)(march_month < 10 ? march_month + 3 : march_month - 9);
    *year = year_of_era + era * 400 + (*month <= 2);
}

static char *put_two_digits(char *p, int value)
{
    p[0] = (char)('0' + value / 10);
    p[1] = (char)('0' + value % 10);
    return p + 2;
}

void ar_time_rfc3339(int64_t ms, char buf[AR_TIME_LEN])
{
    /* The text gmtime_r and strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" wrote, without their cost
     * (glibc's gmtime_r takes the process-wide time zone lock, strftime parses its format):
     * the seconds are ms / 1000 rounded toward zero and the milliseconds
     * (ms % 1000 + 1000) % 1000 (so -1 ms is 1970-01-01T00:00:00.999Z), the year is signed and
     * not padded ("1-01-01", "-27-08-11", "10000-01-01"). */
    int64_t secs = ms / 1000;
    int64_t days = secs / 86400, second_of_day = secs % 86400;
    if (second_of_day < 0) {
        second_of_day += 86400;
        days--;
    }
    int64_t year;
    int month, day;
    civil_from_days(days, &year, &month, &day);

    char *p = buf;
    uint64_t y = year < 0 ? 0 - (uint64_t)year : (uint64_t)year;
    if (year < 0)
        *p++ = '-';
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + y % 10);
        y /= 10;
    } while (y);
    while (n)
        *p++ = digits[--n];
    *p++ = '-';
    p = put_two_digits(p, month);
    *p++ = '-';
    p = put_two_digits(p, day);
    *p++ = 'T';
    p = put_two_digits(p, (int)(second_of_day / 3600));
    *p++ = ':';
    p = put_two_digits(p, (int)(second_of_day / 60 % 60));
    *p++ = ':';
    p = put_two_digits(p, (int)(second_of_day % 60));
    int millis = (int)(ms % 1000 + 1000) % 1000;
    p[0] = '.';
    p[1] = (char)('0' + millis / 100);
    p[2] = (char)('0' + millis / 10 % 10);
    p[3] = (char)('0' + millis % 10);
    p[4] = 'Z';
    p[5] = '\0';
}

/* ---- logging ---------------------------------------------------------------------------- */

/* A line never exceeds PIPE_BUF: one write(2) of it is atomic even on a pipe. */
#define LOG_LINE_CAP 4096
/* Room a JSON field other than the message may take, so that the message always has most of
 * the line. */
#define LOG_FIELD_CAP 256
#define LOG_CUT "..."

/* The module's one process-wide setting (ar.h: ar_log_configure). */
static atomic_int log_min_level = AR_LOG_INFO;
static atomic_int log_json = 0;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int ar_log_level_from_name(const char *name)
{
    for (int i = 0; name && i < (int)(sizeof level_names / sizeof level_names[0]); i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void ar_log_configure(int min_level, int json)
{
    if (min_level < AR_LOG_DEBUG)
        min_level = AR_LOG_DEBUG;
    if (min_level > AR_LOG_ERROR)
        min_level = AR_LOG_ERROR;
    atomic_store(&log_min_level, min_level);
    atomic_store(&log_json, json ? 1 : 0);
}

/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 when the bytes there are not one
 * (a stray continuation byte, an overlong form, a surrogate, beyond U+10FFFF, cut short). */
static size_t utf8_len(const unsigned char *s)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* s as a JSON string, quotes included, in at most cap bytes of out (cap >= 8); cut with
 * "..." when it does not fit. Returns the bytes written (no NUL). */
static size_t json_quote(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    out[n++] = '"';
    const size_t room = cap - (sizeof LOG_CUT - 1) - 1; /* what may still come: "..." and '"' */
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        char esc[8];
        const char *piece = esc;
        size_t len, step = 1;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = (char)*p, len = 2;
        } else if (*p == '\n') {
            piece = "\\n", len = 2;
        } else if (*p == '\r') {
            piece = "\\r", len = 2;
        } else if (*p == '\t') {
            piece = "\\t", len = 2;
        } else if (*p < 0x20 || *p == 0x7f) {
            len = (size_t)snprintf(esc, sizeof esc, "\\u%04x", *p);
        } else if ((step = utf8_len(p)) == 0) {
            piece = "\xef\xbf\xbd", len = 3, step = 1; /* U+FFFD for each byte that is not UTF-8 */
        } else {
            piece = (const char *)p, len = step;
        }
        if (n + len > room) {
            memcpy(out + n, LOG_CUT, sizeof LOG_CUT - 1);
            n += sizeof LOG_CUT - 1;
            break;
        }
        memcpy(out + n, piece, len);
        n += len;
        p += step;
    }
    out[n++] = '"';
    return n;
}

/* Append s to line (at *n, cap bytes in all), control characters escaped; cut with "...". */
static void text_append(char *line, size_t *n, size_t cap, const char *s)
{
    const size_t room = cap - (sizeof LOG_CUT - 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        size_t len;
        if (*p == '\n')
            len = (size_t)snprintf(esc, sizeof esc, "\\n");
        else if (*p == '\r')
            len = (size_t)snprintf(esc, sizeof esc, "\\r");
        else if (*p == '\t')
            len = (size_t)snprintf(esc, sizeof esc, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            len = (size_t)snprintf(esc, sizeof esc, "\\x%02x", *p);
        else
            esc[0] = (char)*p, len = 1;
        if (*n + len > room) {
            memcpy(line + *n, LOG_CUT, sizeof LOG_CUT - 1);
            *n += sizeof LOG_CUT - 1;
            return;
        }
        memcpy(line + *n, esc, len);
        *n += len;
    }
}

/* Append s as it is (a fixed, short field), cut at the cap. */
static void raw_append(char *line, size_t *n, size_t cap, const char *s)
{
    size_t len = strlen(s);
    if (len > cap - *n)
        len = cap - *n;
    memcpy(line + *n, s, len);
    *n += len;
}

/* Write all of line; one write(2) unless interrupted or cut short. */
static void write_line(const char *line, size_t len)
{
    while (len > 0) {
        ssize_t rc = write(STDERR_FILENO, line, len);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return; /* nowhere to log that stderr is gone */
        line += rc;
        len -= (size_t)rc;
    }
}

static void vlog(const char *level, const char *component, const char *action_id, const char *fmt,
                 va_list ap) __attribute__((format(printf, 4, 0)));

static void vlog(const char *level, const char *component, const char *action_id, const char *fmt,
                 va_list ap)
{
    int rank = ar_log_level_from_name(level);
    if (rank < 0)
        rank = AR_LOG_INFO;
    if (rank < atomic_load(&log_min_level))
        return;
    if (!level)
        level = "info";
    if (!component || !component[0])
        component = "aiorun";

    char msg[LOG_LINE_CAP];
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    if (m < 0)
        snprintf(msg, sizeof msg, "(cannot format the message \"%.64s\")", fmt);
    else if ((size_t)m >= sizeof msg)
        memcpy(msg + sizeof msg - sizeof LOG_CUT, LOG_CUT, sizeof LOG_CUT); /* with its NUL */

    char when[AR_TIME_LEN], line[LOG_LINE_CAP];
    ar_time_rfc3339(ar_now_ms(), when);
    size_t n = 0;
    const size_t body = sizeof line - 1; /* room for the '\n' */
    if (atomic_load(&log_json)) {
        const size_t tail = 1; /* '}' */
        raw_append(line, &n, body, "{\"time\": \"");
        raw_append(line, &n, body, when);
        raw_append(line, &n, body, "\", \"level\": \"");
        raw_append(line, &n, body, level_names[rank]);
        raw_append(line, &n, body, "\", \"component\": ");
        n += json_quote(line + n, LOG_FIELD_CAP, component);
        if (action_id && action_id[0]) {
            raw_append(line, &n, body, ", \"action\": ");
            n += json_quote(line + n, LOG_FIELD_CAP, action_id);
        }
        raw_append(line, &n, body, ", \"msg\": ");
        n += json_quote(line + n, body - tail - n, msg);
        line[n++] = '}';
    } else {
        raw_append(line, &n, body, when);
        raw_append(line, &n, body, " aiorun ");
        text_append(line, &n, n + LOG_FIELD_CAP, level);
        raw_append(line, &n, body, " ");
        if (strchr(component, ':')) { /* a source outside the daemon's code: say whose line it is */
            text_append(line, &n, n + LOG_FIELD_CAP, component);
            raw_append(line, &n, body, ": ");
        }
        text_append(line, &n, body, msg);
    }
    line[n++] = '\n';
    write_line(line, n);
}

void ar_log(const char *level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, "aiorun", NULL, fmt, ap);
    va_end(ap);
}

void ar_log_as(const char *level, const char *component, const char *action_id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, component, action_id, fmt, ap);
    va_end(ap);
}
