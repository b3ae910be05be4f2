/* ar.c - the shared error struct and clocks (see ar.h). */
#include "ar.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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
