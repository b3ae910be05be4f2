/* sim_faults.c - the fault injection table of the simulator (see sim_faults.h). */
#include "sim_faults.h"
#include "sim_route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *next;
    char *route;
    int remaining;   /* -1: forever */
    sim_fault fault;
} entry;

struct sim_faults {
    entry *head, *tail;  /* in insertion order: the order faults are consumed in */
    int next_id;
};

static const char *const kind_names[] = {
    [SIM_FAULT_NONE] = "none",
    [SIM_FAULT_STATUS] = "status",
    [SIM_FAULT_RETRY_AFTER] = "retry_after",
    [SIM_FAULT_DELAY] = "delay",
    [SIM_FAULT_RESET_BEFORE] = "reset_before",
    [SIM_FAULT_RESET_AFTER] = "reset_after",
    [SIM_FAULT_TRUNCATE] = "truncate",
    [SIM_FAULT_CRASH] = "crash",
};
#define KIND_COUNT (sizeof kind_names / sizeof kind_names[0])

const char *sim_fault_name(sim_fault_kind kind)
{
    return (size_t)kind < KIND_COUNT ? kind_names[kind] : "unknown";
}

sim_faults *sim_faults_new(void)
{
    sim_faults *f = calloc(1, sizeof *f);
    if (f)
        f->next_id = 1;
    return f;
}

static void entry_free(entry *e)
{
    free(e->route);
    free(e);
}

size_t sim_faults_clear(sim_faults *f)
{
    size_t n = 0;
    for (entry *e = f->head, *next; e; e = next, n++) {
        next = e->next;
        entry_free(e);
    }
    f->head = f->tail = NULL;
    return n;
}

void sim_faults_free(sim_faults *f)
{
    if (!f)
        return;
    sim_faults_clear(f);
    free(f);
}

/* An optional integer member within [lo, hi]; 0 and *out = dflt when absent, -1 when bad. */
static int int_member(const json_t *spec, const char *name, int lo, int hi, int dflt, int *out)
{
    json_t *v = json_object_get(spec, name);
    *out = dflt;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

static int bool_member(const json_t *spec, const char *name, bool *out)
{
    json_t *v = json_object_get(spec, name);
    *out = false;
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return -1;
    *out = json_is_true(v);
    return 0;
}

static json_t *entry_json(const entry *e)
{
    const sim_fault *x = &e->fault;
    json_t *o = json_pack("{s:s, s:s, s:s, s:i}", "id", x->id, "route", e->route, "fault",
                          sim_fault_name(x->kind), "remaining", e->remaining);
    if (!o)
        return NULL;
    switch (x->kind) {
    case SIM_FAULT_STATUS:
        json_object_set_new(o, "status", json_integer(x->status));
        if (x->seconds >= 0)
            json_object_set_new(o, "seconds", json_integer(x->seconds));
        break;
    case SIM_FAULT_RETRY_AFTER:
        json_object_set_new(o, "seconds", json_integer(x->seconds));
        json_object_set_new(o, "http_date", json_boolean(x->http_date));
        break;
    case SIM_FAULT_DELAY:
        json_object_set_new(o, "delay_ms", json_integer(x->delay_ms));
        json_object_set_new(o, "apply", json_boolean(x->apply));
        break;
    case SIM_FAULT_CRASH:
        json_object_set_new(o, "apply", json_boolean(x->apply));
        break;
    default:
        break;
    }
    return o;
}

#define BAD(...) do { snprintf(err, cap, __VA_ARGS__); goto fail; } while (0)

int sim_faults_add(sim_faults *f, const json_t *spec, json_t **created, char *err, size_t cap)
{
    entry *e = NULL;
    *created = NULL;
    if (!json_is_object(spec))
        BAD("the body must be a JSON object");
    const char *route = json_string_value(json_object_get(spec, "route"));
    const char *kind_name = json_string_value(json_object_get(spec, "fault"));
    if (!route || !sim_route_pattern_valid(route))
        BAD("route: \"*\" or \"METHOD /path\" is required");
    if (!kind_name)
        BAD("fault: a string is required");
    sim_fault x = {.kind = SIM_FAULT_NONE, .seconds = -1};
    for (size_t k = 1; k < KIND_COUNT; k++) {
        if (strcmp(kind_names[k], kind_name) == 0)
            x.kind = (sim_fault_kind)k;
    }
    if (x.kind == SIM_FAULT_NONE)
        BAD("fault: unknown kind \"%s\"", kind_name);
    int count;
    if (int_member(spec, "count", -1, 1000000, 1, &count) != 0 || count == 0)
        BAD("count: a positive integer or -1 (forever)");
    switch (x.kind) {
    case SIM_FAULT_STATUS:
        if (int_member(spec, "status", 400, 599, 500, &x.status) != 0)
            BAD("status: an integer from 400 to 599");
        if (int_member(spec, "seconds", 0, 86400, -1, &x.seconds) != 0)
            BAD("seconds: an integer from 0 to 86400");
        break;
    case SIM_FAULT_RETRY_AFTER:
        x.status = 429;
        if (int_member(spec, "seconds", 0, 86400, 1, &x.seconds) != 0)
            BAD("seconds: an integer from 0 to 86400");
        if (bool_member(spec, "http_date", &x.http_date) != 0)
            BAD("http_date: a boolean");
        break;
    case SIM_FAULT_DELAY:
        if (!json_object_get(spec, "delay_ms") ||
            int_member(spec, "delay_ms", 0, 600000, 0, &x.delay_ms) != 0)
            BAD("delay_ms: an integer from 0 to 600000 is required");
        if (bool_member(spec, "apply", &x.apply) != 0)
            BAD("apply: a boolean");
        break;
    case SIM_FAULT_CRASH:
        if (bool_member(spec, "apply", &x.apply) != 0)
            BAD("apply: a boolean");
        break;
    default:
        break;
    }
    e = calloc(1, sizeof *e);
    if (!e || !(e->route = strdup(route)))
        BAD("out of memory");
    snprintf(x.id, sizeof x.id, "flt_%d", f->next_id++);
    e->fault = x;
    e->remaining = count;
    if (!(*created = entry_json(e)))
        BAD("out of memory");
    if (f->tail)
        f->tail->next = e;
    else
        f->head = e;
    f->tail = e;
    return 0;
fail:
    if (e)
        entry_free(e);
    return -1;
}

static void unlink_entry(sim_faults *f, entry *prev, entry *e)
{
    if (prev)
        prev->next = e->next;
    else
        f->head = e->next;
    if (f->tail == e)
        f->tail = prev;
    entry_free(e);
}

bool sim_faults_take(sim_faults *f, const char *method, const char *path, sim_fault *out)
{
    memset(out, 0, sizeof *out);
    out->kind = SIM_FAULT_NONE;
    out->seconds = -1;
    for (entry *e = f->head, *prev = NULL; e; prev = e, e = e->next) {
        if (!sim_route_matches(e->route, method, path))
            continue;
        *out = e->fault;
        if (e->remaining > 0 && --e->remaining == 0)
            unlink_entry(f, prev, e);
        return true;
    }
    return false;
}

bool sim_faults_remove(sim_faults *f, const char *id)
{
    for (entry *e = f->head, *prev = NULL; e; prev = e, e = e->next) {
        if (strcmp(e->fault.id, id) == 0) {
            unlink_entry(f, prev, e);
            return true;
        }
    }
    return false;
}

json_t *sim_faults_list(const sim_faults *f)
{
    json_t *list = json_array();
    for (const entry *e = f->head; e && list; e = e->next)
        json_array_append_new(list, entry_json(e));
    return json_pack("{s:o}", "faults", list);
}
