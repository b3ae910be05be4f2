/* sandbox_fixture.c - a sandbox pool driven from the test thread (see sandbox_fixture.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sodium.h>

#include "test_main.h"

#include "ar.h"
#include "sandbox_fixture.h"

/* Generous: only a guard against hanging forever, never a performance assertion. */
#define WAIT_MS 20000

static void on_event(void *arg, sandbox_pool *pool)
{
    (void)pool;
    ((harness *)arg)->events++;
}

void on_done(void *arg, const sandbox_result *res)
{
    call_rec *r = arg;
    r->done++;
    r->ok = res->ok;
    r->http_status = res->http_status;
    r->retry_after_ms = res->retry_after_ms;
    r->cost = res->cost ? json_dumps(res->cost, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (res->ok) {
        r->result = malloc(res->result_len + 1);
        memcpy(r->result, res->result_json, res->result_len);
        r->result[res->result_len] = '\0';
    } else {
        r->error_class = res->error_class;
        snprintf(r->message, sizeof r->message, "%s", res->error_message);
    }
}

void rec_clear(call_rec *r)
{
    free(r->result);
    free(r->cost);
    memset(r, 0, sizeof *r);
}

int test_secrets_fn(void *arg, const char *connector, vault_secrets *out, ar_error *err)
{
    test_secrets *ts = arg;
    const char *name;
    json_t *v;
    (void)connector;
    memset(out, 0, sizeof *out);
    ts->calls++;
    if (ts->fail)
        return ar_error_set(err, AR_E_INVALID, "secret_corrupt", "test: the vault is unreadable");
    size_t n = json_object_size(ts->values);
    if (sodium_init() < 0 || !(out->items = calloc(n ? n : 1, sizeof *out->items)))
        return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
    json_object_foreach((json_t *)ts->values, name, v) {
        vault_secret *s = &out->items[out->n];
        size_t len = json_string_length(v);
        snprintf(s->name, sizeof s->name, "%s", name);
        /* as the vault does: guarded memory, NUL-terminated */
        if (!(s->value = sodium_malloc(len + 1))) {
            vault_secrets_free(out);
            return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
        }
        memcpy(s->value, json_string_value(v), len);
        s->value[len] = '\0';
        s->len = len;
        s->version = 1;
        out->n++;
    }
    return AR_OK;
}

static char g_runtime_dir[64];

const char *test_runtime_dir(void)
{
    struct stat st;
    if (g_runtime_dir[0] && stat(g_runtime_dir, &st) == 0)
        return g_runtime_dir;
    snprintf(g_runtime_dir, sizeof g_runtime_dir, "/tmp/aiorun-test-rt-XXXXXX");
    assert_non_null(mkdtemp(g_runtime_dir));
    /* a connector uid must be able to reach the plugin copy inside it */
    assert_int_equal(chmod(g_runtime_dir, 0755), 0);
    return g_runtime_dir;
}

void start_pool_opts(harness *h, const sandbox_pool_opts *opts_in)
{
    ar_error err;
    sandbox_pool_opts opts = *opts_in;
    memset(h, 0, sizeof *h);
    if (!opts.lockdown.runtime_dir)
        opts.lockdown.runtime_dir = test_runtime_dir();
    assert_int_equal(access(opts.plugin_path, R_OK), 0);
    assert_int_equal(loop_new(&h->loop), AR_OK);
    if (sandbox_pool_new(h->loop, &opts, on_event, h, &h->pool, &err) != AR_OK)
        fail_msg("sandbox_pool_new: %s", err.message);
}

void stop_pool(harness *h)
{
    sandbox_pool_free(h->pool);
    loop_free(h->loop);
    /* empty again once every pool is freed (each removes what it made) */
    if (g_runtime_dir[0])
        rmdir(g_runtime_dir);
}

typedef struct waiter {
    harness *h;
    pred_fn pred;
    void *arg;
    int64_t until;
    int met;
} waiter;

static void poll_tick(loop_t *loop, void *arg)
{
    waiter *w = arg;
    if (w->pred(w->h, w->arg)) {
        w->met = 1;
        loop_stop(loop);
        return;
    }
    if (ar_mono_ms() >= w->until) {
        loop_stop(loop);
        return;
    }
    assert_true(loop_timer_add(loop, ar_mono_ms() + 5, poll_tick, w) != 0);
}

int run_until(harness *h, pred_fn pred, void *arg)
{
    waiter w = {.h = h, .pred = pred, .arg = arg, .until = ar_mono_ms() + WAIT_MS};
    if (pred(h, arg))
        return 1;
    assert_true(loop_timer_add(h->loop, ar_mono_ms() + 5, poll_tick, &w) != 0);
    loop_run(h->loop);
    return w.met;
}

sandbox_snapshot snap(harness *h)
{
    sandbox_snapshot s;
    sandbox_pool_snapshot(h->pool, &s);
    return s;
}

int pred_state(harness *h, void *arg)
{
    sandbox_snapshot s = snap(h);
    json_decref(s.descriptor);
    return s.state == *(sandbox_state *)arg;
}

int pred_done(harness *h, void *arg)
{
    (void)h;
    return ((call_rec *)arg)->done > 0;
}

void wait_state(harness *h, sandbox_state want)
{
    if (!run_until(h, pred_state, &want)) {
        sandbox_snapshot s = snap(h);
        json_decref(s.descriptor);
        fail_msg("pool state %s, expected %s (message: %s)", sandbox_state_name(s.state),
                 sandbox_state_name(want), s.message);
    }
}
