/* ar.c - the shared error struct and clocks (see ar.h). */
#include "ar.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
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

void ar_time_rfc3339(int64_t ms, char buf[AR_TIME_LEN])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(buf, AR_TIME_LEN, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, AR_TIME_LEN - n, ".%03dZ", (int)(ms % 1000 + 1000) % 1000);
}

void ar_log(const char *level, const char *fmt, ...)
{
    char line[2048], when[AR_TIME_LEN];
    ar_time_rfc3339(ar_now_ms(), when);
    int n = snprintf(line, sizeof line, "%s aiorun %s ", when, level);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write(2) per line so that lines from several threads do not interleave. */
    ssize_t rc = write(STDERR_FILENO, line, len);
    (void)rc;
}
