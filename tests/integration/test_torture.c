/* test_torture.c - crash torture: a stream of actions against the API simulator while the daemon
 * is killed with SIGKILL at random moments and restarted each time. Afterwards every accepted
 * action is terminal (UNKNOWN_OUTCOME only where idempotency is "none"), no idempotency key
 * produced two effects, and no accepted action is lost. AIORUN_TORTURE_KILLS sets the number of
 * kills (default 50). */
#include "test_main.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ar.h"
#include "harness.h"

#define MAX_ACTIONS 4000

static harness H;
static sim S;

typedef struct accepted {
    char id[32];
    char key[48];
    int mode;                 /* 0 native, 1 lookup, 2 none */
} accepted;

static const char *const connectors[3] = {"t_native", "t_lookup", "t_none"};

typedef struct client {
    pthread_mutex_t lock;
    int stop;
    accepted actions[MAX_ACTIONS];
    int n;
    int refused;              /* submissions that needed a resend (daemon down) */
} client;

static int stopping(client *c)
{
    pthread_mutex_lock(&c->lock);
    int s = c->stop;
    pthread_mutex_unlock(&c->lock);
    return s;
}

/* Submit one action, re-sending the same request (same key) until the daemon answers: an
 * answer lost to a kill must not lose or duplicate the action. */
static void *submitter(void *arg)
{
    client *c = arg;
    for (int i = 0; i < MAX_ACTIONS && !stopping(c); i++) {
        int mode = i % 3;
        char key[48], body[512];
        snprintf(key, sizeof key, "torture-%d", i);
        snprintf(body, sizeof body,
                 "{\"connector\": \"%s\", \"action\": \"request\", \"idempotency_key\": \"%s\", "
                 "\"input\": {\"method\": \"POST\", \"path\": \"/orders\", \"body\": {\"product_id\": \"prd_1\", "
                 "\"quantity\": 1, \"customer\": \"%s\"}}}", connectors[mode], key, key);
        for (;;) {
            json_t *r = NULL;
            long st = harness_http(&H, "POST", "/v1/actions", body, &r);
            if (st == 201 || st == 200) {
                pthread_mutex_lock(&c->lock);
                accepted *a = &c->actions[c->n++];
                snprintf(a->id, sizeof a->id, "%s", json_string_value(json_object_get(r, "id")));
                snprintf(a->key, sizeof a->key, "%s", key);
                a->mode = mode;
                pthread_mutex_unlock(&c->lock);
                json_decref(r);
                break;
            }
            json_decref(r);
            if (st != 0 && st != 503)
                fail_msg("submission %s refused with HTTP %ld", key, st);
            c->refused++;
            if (stopping(c))
                return NULL;
            usleep(20 * 1000);
        }
        usleep(5 * 1000);
    }
    return NULL;
}

static int kills_wanted(void)
{
    const char *v = getenv("AIORUN_TORTURE_KILLS");
    int n = v ? atoi(v) : 50;
    return n > 0 ? n : 50;
}

/* Audit and state agree after every kill: the action's story starts received + decided, has
 * one dispatched per attempt at most once each, and its last outcome entry says the state the
 * record has (the entry is written in the transaction that writes the state). */
static void audit_matches_state(const char *id, const char *state)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/actions/%s/audit", id);
    json_t *r = NULL;
    if (harness_http(&H, "GET", path, NULL, &r) != 200)
        fail_msg("no audit for %s", id);
    json_t *entries = json_object_get(r, "entries");
    size_t n = json_array_size(entries);
    if (n < 2 || strcmp(json_string_value(json_object_get(json_array_get(entries, 0), "type")), "received") ||
        strcmp(json_string_value(json_object_get(json_array_get(entries, 1), "type")), "decided"))
        fail_msg("audit of %s does not start received, decided", id);
    const char *last_state = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        const char *type = json_string_value(json_object_get(e, "type"));
        json_t *data = json_object_get(e, "data");
        if (!strcmp(type, "completed"))
            last_state = json_string_value(json_object_get(data, "state"));
        else if (!strcmp(type, "unknown_outcome"))
            last_state = "UNKNOWN_OUTCOME";
    }
    if (!last_state || strcmp(last_state, state) != 0) {
        char *dump = json_dumps(entries, JSON_COMPACT);
        fail_msg("action %s is %s but its audit ends with %s: %s", id, state, last_state ? last_state : "nothing", dump);
    }
    json_decref(r);
}

static void kill_at_random_moments_then_nothing_lost_or_repeated(void **state)
{
    (void)state;
    assert_int_equal(sim_start(&S), 0);
    char extra[2048], common[300];
    /* Generous attempts: each kill costs an in-flight action one attempt. */
    snprintf(common, sizeof common, "\"timeout_ms\": 2000, \"retry\": {\"max_attempts\": 20, \"initial_ms\": 20, "
             "\"max_ms\": 200}, \"allow_ports\": [%d]", S.port);
    snprintf(extra, sizeof extra,
             "\"t_native\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\"}, "
             "\"idempotency\": {\"request\": \"native\"}, %s},\n"
             "    \"t_lookup\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\", \"lookup\": "
             "{\"path\": \"/_sim/by-key/{key}\"}}, \"idempotency\": {\"request\": \"lookup\"}, %s},\n"
             "    \"t_none\": {\"plugin\": \"http\", \"config\": {\"base_url\": \"%s\"}, %s}",
             S.url, common, S.url, common, S.url, common);
    harness_opts o = {.extra_connectors = extra};
    assert_int_equal(harness_start(&H, &o), 0);
    /* Every call takes a moment after its effect, so kills land mid-call too. */
    assert_int_equal(sim_http(&S, "POST", "/_sim/faults",
                              "{\"route\": \"POST /orders\", \"fault\": \"delay\", \"delay_ms\": 25, \"apply\": true, \"count\": -1}",
                              NULL), 201);

    static client c;
    memset(&c, 0, sizeof c);
    pthread_mutex_init(&c.lock, NULL);
    pthread_t t;
    pthread_create(&t, NULL, submitter, &c);
    int kills = kills_wanted();
    for (int k = 0; k < kills; k++) {
        usleep(30 * 1000 + randombytes_uniform(300 * 1000));
        harness_kill9(&H);
        if (harness_restart(&H) != 0)
            fail_msg("the daemon did not come back after kill %d", k + 1);
    }
    pthread_mutex_lock(&c.lock);
    c.stop = 1;
    pthread_mutex_unlock(&c.lock);
    pthread_join(t, NULL);
    sim_http(&S, "DELETE", "/_sim/faults", NULL, NULL);

    /* Let everything settle, then check each accepted action. */
    int counts[4] = {0}; /* succeeded, unknown, failed, other */
    long effects_total = 0;
    for (int i = 0; i < c.n; i++) {
        accepted *a = &c.actions[i];
        char path[96];
        snprintf(path, sizeof path, "/v1/actions/%s", a->id);
        json_t *g = NULL;
        const char *st = "";
        for (int w = 0; w < 600; w++) {
            json_decref(g);
            g = NULL;
            long code = harness_http(&H, "GET", path, NULL, &g);
            if (code != 200)
                fail_msg("accepted action %s (%s) is lost: HTTP %ld", a->id, a->key, code);
            st = json_string_value(json_object_get(g, "state"));
            if (!strcmp(st, "SUCCEEDED") || !strcmp(st, "FAILED") || !strcmp(st, "UNKNOWN_OUTCOME"))
                break;
            usleep(50 * 1000);
        }
        long effects = sim_effects(&S, a->key);
        effects_total += effects;
        if (effects > 1)
            fail_msg("key %s (%s) produced %ld effects", a->key, connectors[a->mode], effects);
        if (!strcmp(st, "SUCCEEDED")) {
            counts[0]++;
            if (effects != 1)
                fail_msg("%s SUCCEEDED with %ld effects", a->key, effects);
        } else if (!strcmp(st, "UNKNOWN_OUTCOME")) {
            counts[1]++;
            if (a->mode != 2)
                fail_msg("%s (%s) ended UNKNOWN_OUTCOME, which only idempotency none may", a->key, connectors[a->mode]);
        } else if (!strcmp(st, "FAILED")) {
            counts[2]++;
            if (effects != 0)
                fail_msg("%s FAILED but made %ld effect(s)", a->key, effects);
        } else {
            counts[3]++;
            char *dump = json_dumps(g, JSON_COMPACT);
            fail_msg("%s did not settle: %s", a->key, dump);
        }
        char final[32];
        snprintf(final, sizeof final, "%s", st);
        json_decref(g);
        audit_matches_state(a->id, final);
    }
    /* The chain survived every kill whole. */
    json_t *v = NULL;
    assert_int_equal(harness_http(&H, "GET", "/v1/audit/verify", NULL, &v), 200);
    if (!json_is_true(json_object_get(v, "ok"))) {
        char *dump = json_dumps(v, JSON_COMPACT);
        fail_msg("audit chain broken after the kills: %s", dump);
    }
    json_decref(v);
    printf("torture: %d kills, %d actions accepted (%d resends while down), %ld effects; "
           "%d succeeded, %d unknown_outcome (idempotency none), %d failed\n",
           kills, c.n, c.refused, effects_total, counts[0], counts[1], counts[2]);
    assert_true(c.n > kills);
}

static int cleanup(void **state)
{
    (void)state;
    int status = H.pid > 0 ? harness_stop(&H) : 0;
    harness_cleanup(&H);
    sim_stop(&S);
    return status == 0 ? 0 : -1;
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(kill_at_random_moments_then_nothing_lost_or_repeated, cleanup),
};

AR_TEST_MAIN(tests, NULL, NULL)
