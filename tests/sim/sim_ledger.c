/* sim_ledger.c - idempotency records, counters and request log of the simulator
 * (see sim_ledger.h). */
#include "sim_ledger.h"
#include "sim_route.h"

#include <stdlib.h>
#include <string.h>

/* The log keeps at most this many entries, dropping the oldest half when full, so that a
 * long-running simulator does not grow without bound. */
#define LOG_MAX 20000

typedef struct idem_record {
    struct idem_record *next;
    char *method, *path, *key;
    char *request;
    size_t request_len;
    int done;
    int status;
    int effect;
    char *reply;
} idem_record;

struct sim_ledger {
    idem_record *head, *tail;   /* oldest first */
    json_t *effects_by_key;     /* {"key": n} */
    json_int_t effects_total;
    json_t *requests_by_route;  /* {"METHOD path": n} */
    json_int_t requests_total;
    json_t *log;                /* array of entries, oldest first */
};

static void record_free(idem_record *r)
{
    free(r->method);
    free(r->path);
    free(r->key);
    free(r->request);
    free(r->reply);
    free(r);
}

static void forget_records(sim_ledger *l)
{
    for (idem_record *r = l->head, *next; r; r = next) {
        next = r->next;
        record_free(r);
    }
    l->head = l->tail = NULL;
}

sim_ledger *sim_ledger_new(void)
{
    sim_ledger *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->effects_by_key = json_object();
    l->requests_by_route = json_object();
    l->log = json_array();
    if (!l->effects_by_key || !l->requests_by_route || !l->log) {
        sim_ledger_free(l);
        return NULL;
    }
    return l;
}

void sim_ledger_free(sim_ledger *l)
{
    if (!l)
        return;
    forget_records(l);
    json_decref(l->effects_by_key);
    json_decref(l->requests_by_route);
    json_decref(l->log);
    free(l);
}

void sim_ledger_reset(sim_ledger *l)
{
    forget_records(l);
    json_object_clear(l->effects_by_key);
    json_object_clear(l->requests_by_route);
    json_array_clear(l->log);
    l->effects_total = l->requests_total = 0;
}

static void bump(json_t *counters, const char *name)
{
    json_t *v = json_object_get(counters, name);
    json_object_set_new(counters, name, json_integer(v ? json_integer_value(v) + 1 : 1));
}

json_t *sim_ledger_note_request(sim_ledger *l, const char *method, const char *path,
                                const char *key, const char *fault, int64_t at_ms)
{
    json_t *route = json_sprintf("%s %s", method, path);
    if (!route)
        return NULL;
    bump(l->requests_by_route, json_string_value(route));
    l->requests_total++;
    json_t *entry = json_pack("{s:I, s:s, s:s, s:o, s:s, s:s, s:i, s:b}", "at_ms",
                              (json_int_t)at_ms, "method", method, "path", path, "route", route,
                              "key", key, "fault", fault, "status", 0, "replayed", 0);
    if (!entry)
        return NULL;
    if (json_array_size(l->log) >= LOG_MAX) {
        json_t *kept = json_array();
        for (size_t i = LOG_MAX / 2; kept && i < json_array_size(l->log); i++)
            json_array_append(kept, json_array_get(l->log, i));
        if (kept) {
            json_decref(l->log);
            l->log = kept;
        }
    }
    json_array_append(l->log, entry);
    return entry;
}

void sim_ledger_note_status(json_t *entry, int status, int replayed)
{
    if (!entry)
        return;
    json_object_set_new(entry, "status", json_integer(status));
    json_object_set_new(entry, "replayed", json_boolean(replayed));
}

static idem_record *find_record(const sim_ledger *l, const char *method, const char *path,
                                const char *key, idem_record **prev_out)
{
    idem_record *prev = NULL;
    for (idem_record *r = l->head; r; prev = r, r = r->next) {
        if (strcmp(r->key, key) == 0 && strcmp(r->path, path) == 0 &&
            strcmp(r->method, method) == 0) {
            if (prev_out)
                *prev_out = prev;
            return r;
        }
    }
    return NULL;
}

static int same_body(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen == blen && (alen == 0 || memcmp(a, b, alen) == 0))
        return 1;
    json_t *ja = json_loadb(a ? a : "", alen, 0, NULL);
    json_t *jb = json_loadb(b ? b : "", blen, 0, NULL);
    int same = ja && jb && json_equal(ja, jb);
    json_decref(ja);
    json_decref(jb);
    return same;
}

sim_idem_result sim_ledger_idem_begin(sim_ledger *l, const char *method, const char *path,
                                      const char *key, const char *body, size_t len, int *status,
                                      char **reply)
{
    *reply = NULL;
    idem_record *r = find_record(l, method, path, key, NULL);
    if (r) {
        if (!r->done)
            return SIM_IDEM_BUSY;
        if (!same_body(r->request, r->request_len, body, len))
            return SIM_IDEM_REUSE;
        if (!(*reply = strdup(r->reply)))
            return SIM_IDEM_ERROR;
        *status = r->status;
        return SIM_IDEM_REPLAY;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return SIM_IDEM_ERROR;
    r->method = strdup(method);
    r->path = strdup(path);
    r->key = strdup(key);
    r->request = malloc(len ? len : 1);
    if (!r->method || !r->path || !r->key || !r->request) {
        record_free(r);
        return SIM_IDEM_ERROR;
    }
    if (len)
        memcpy(r->request, body, len);
    r->request_len = len;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    return SIM_IDEM_NEW;
}

void sim_ledger_idem_abandon(sim_ledger *l, const char *method, const char *path, const char *key)
{
    idem_record *prev = NULL;
    idem_record *r = find_record(l, method, path, key, &prev);
    if (!r || r->done)
        return;
    if (prev)
        prev->next = r->next;
    else
        l->head = r->next;
    if (l->tail == r)
        l->tail = prev;
    record_free(r);
}

void sim_ledger_idem_finish(sim_ledger *l, const char *method, const char *path, const char *key,
                            int status, const char *reply, int effect)
{
    idem_record *r = find_record(l, method, path, key, NULL);
    char *copy = strdup(reply);
    if (!r || r->done || !copy) {
        free(copy);
        if (r && !r->done)
            sim_ledger_idem_abandon(l, method, path, key);
        return;
    }
    r->reply = copy;
    r->status = status;
    r->effect = effect;
    r->done = 1;
}

void sim_ledger_effect(sim_ledger *l, const char *key)
{
    bump(l->effects_by_key, key);
    l->effects_total++;
}

json_t *sim_ledger_effects_json(const sim_ledger *l, const char *key)
{
    if (key) {
        json_t *v = json_object_get(l->effects_by_key, key);
        return json_pack("{s:s, s:I}", "key", key, "effects",
                         (json_int_t)(v ? json_integer_value(v) : 0));
    }
    return json_pack("{s:I, s:o}", "total", l->effects_total, "by_key",
                     json_deep_copy(l->effects_by_key));
}

json_t *sim_ledger_requests_json(const sim_ledger *l)
{
    return json_pack("{s:I, s:o}", "total", l->requests_total, "by_route",
                     json_deep_copy(l->requests_by_route));
}

json_t *sim_ledger_log_json(const sim_ledger *l, const char *pattern)
{
    json_t *list = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(l->log, i, e) {
        if (!list)
            break;
        if (pattern && !sim_route_matches(pattern, json_string_value(json_object_get(e, "method")),
                                          json_string_value(json_object_get(e, "path"))))
            continue;
        json_array_append_new(list, json_deep_copy(e));
    }
    return json_pack("{s:o}", "requests", list);
}

json_t *sim_ledger_by_key_json(const sim_ledger *l, const char *key)
{
    for (const idem_record *r = l->head; r; r = r->next) {
        if (!r->done || !r->effect || strcmp(r->key, key) != 0)
            continue;
        json_t *body = json_loads(r->reply, 0, NULL);
        return json_pack("{s:i, s:o*}", "status", r->status, "body", body);
    }
    return NULL;
}
