/* test_sim.c - aiorun-sim, the API simulator, tested as a real process over HTTP: resources,
 * Idempotency-Key replay, effect and request counters, the request log, every fault kind, reset,
 * error statuses and a clean stop. Each case starts its own simulator on a free port. */
#include "test_main.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define ORDER_BODY "{\"product_id\":\"prd_1\",\"quantity\":2,\"customer\":\"ann\"}"

typedef struct sim {
    pid_t pid;
    int port;
    char dir[64];
    char url[64];
} sim;

/* A failed assertion leaves the case early: whatever simulator it started is killed at exit. */
static pid_t started[8];

static void kill_leftovers(void)
{
    for (size_t i = 0; i < sizeof started / sizeof started[0]; i++) {
        if (started[i] > 0) {
            kill(started[i], SIGKILL);
            waitpid(started[i], NULL, 0);
        }
    }
}

static void remember_pid(pid_t pid, bool add)
{
    for (size_t i = 0; i < sizeof started / sizeof started[0]; i++) {
        if (add ? started[i] == 0 : started[i] == pid) {
            started[i] = add ? pid : 0;
            return;
        }
    }
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void path_in(const sim *s, const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", s->dir, name);
}

static void sim_start(sim *s)
{
    static bool registered;
    if (!registered) {
        atexit(kill_leftovers);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        registered = true;
    }
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/aiorun-sim-test.XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    char bin[512], port_file[128], out[128], err[128];
    snprintf(bin, sizeof bin, "%s/bin/aiorun-sim", AIORUN_BUILD_DIR);
    path_in(s, "port", port_file, sizeof port_file);
    path_in(s, "stdout", out, sizeof out);
    path_in(s, "stderr", err, sizeof err);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    char *argv[] = {bin, "--port", "0", "--port-file", port_file, "--quiet", NULL};
    int rc = posix_spawn(&s->pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(rc, 0);
    remember_pid(s->pid, true);
    /* the port file appears (renamed into place, never partial) once the server listens */
    for (int waited = 0; waited < 15000 && s->port == 0; waited += 20) {
        FILE *f = fopen(port_file, "r");
        if (f) {
            if (fscanf(f, "%d", &s->port) != 1)
                s->port = -1;
            fclose(f);
            break;
        }
        assert_int_equal(waitpid(s->pid, NULL, WNOHANG), 0);
        sleep_ms(20);
    }
    assert_true(s->port > 0 && s->port < 65536);
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
}

/* Wait up to 15 s for the process to end; returns its wait status, or -1 when it did not end. */
static int sim_wait(sim *s)
{
    int status = 0;
    for (int waited = 0; waited < 15000; waited += 20) {
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid) {
            remember_pid(s->pid, false);
            s->pid = 0;
            return status;
        }
        sleep_ms(20);
    }
    return -1;
}

static void remove_dir(sim *s)
{
    const char *names[] = {"port", "stdout", "stderr"};
    char p[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        path_in(s, names[i], p, sizeof p);
        unlink(p);
    }
    rmdir(s->dir);
}

/* SIGTERM, wait, clean up; returns the wait status. */
static int sim_stop_with(sim *s, int sig)
{
    int status = -1;
    if (s->pid > 0) {
        kill(s->pid, sig);
        status = sim_wait(s);
    }
    remove_dir(s);
    return status;
}

static void sim_stop(sim *s)
{
    int status = sim_stop_with(s, SIGTERM);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- HTTP ---- */

typedef struct http_result {
    CURLcode rc;
    long status;
    char *body;
    size_t len;
    json_t *json;          /* parsed body or NULL */
    char retry_after[96];
    char allow[64];
    bool replayed;
} http_result;

static size_t on_body(char *data, size_t size, size_t n, void *userp)
{
    http_result *r = userp;
    char *grown = realloc(r->body, r->len + size * n + 1);
    if (!grown)
        return 0;
    r->body = grown;
    memcpy(r->body + r->len, data, size * n);
    r->len += size * n;
    r->body[r->len] = '\0';
    return size * n;
}

/* Copy the value of "Name: value\r\n" when the header line has that name. */
static void header_value(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    if (len <= nlen + 1 || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
        return;
    const char *v = line + nlen + 1;
    while (v < line + len && *v == ' ')
        v++;
    size_t vlen = (size_t)(line + len - v);
    while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n'))
        vlen--;
    snprintf(out, cap, "%.*s", (int)vlen, v);
}

static size_t on_header(char *data, size_t size, size_t n, void *userp)
{
    http_result *r = userp;
    char replayed[16] = "";
    header_value(data, size * n, "Retry-After", r->retry_after, sizeof r->retry_after);
    header_value(data, size * n, "Allow", r->allow, sizeof r->allow);
    header_value(data, size * n, "Idempotent-Replayed", replayed, sizeof replayed);
    if (strcmp(replayed, "true") == 0)
        r->replayed = true;
    return size * n;
}

static void http_free(http_result *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* One request. key: Idempotency-Key or NULL; body: NULL for none; timeout_ms: 0 for 20 s. */
static void http(const sim *s, const char *method, const char *path, const char *key,
                 const char *body, long timeout_ms, http_result *r)
{
    memset(r, 0, sizeof *r);
    char url[512], key_header[256];
    snprintf(url, sizeof url, "%s%s", s->url, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (key) {
        snprintf(key_header, sizeof key_header, "Idempotency-Key: %s", key);
        headers = curl_slist_append(headers, key_header);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms ? timeout_ms : 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    r->rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    if (r->body)
        r->json = json_loads(r->body, 0, NULL);
}

/* A request that must complete with the expected status; returns its JSON body (owned). */
static json_t *expect(const sim *s, const char *method, const char *path, const char *key,
                      const char *body, long status)
{
    http_result r;
    http(s, method, path, key, body, 0, &r);
    if (r.rc != CURLE_OK || r.status != status)
        fprintf(stderr, "%s %s: curl %d, status %ld, body %s\n", method, path, (int)r.rc,
                r.status, r.body ? r.body : "");
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, status);
    assert_non_null(r.json);
    json_t *j = json_incref(r.json);
    http_free(&r);
    return j;
}

static const char *str(const json_t *o, const char *name)
{
    const char *v = json_string_value(json_object_get(o, name));
    return v ? v : "";
}

static json_int_t num(const json_t *o, const char *name)
{
    return json_integer_value(json_object_get(o, name));
}

static void inject(const sim *s, const char *spec)
{
    json_t *j = expect(s, "POST", "/_sim/faults", NULL, spec, 201);
    assert_true(strncmp(str(j, "id"), "flt_", 4) == 0);
    json_decref(j);
}

static json_int_t effects(const sim *s, const char *key)
{
    char path[128];
    snprintf(path, sizeof path, "/_sim/effects?key=%s", key);
    json_t *j = expect(s, "GET", path, NULL, NULL, 200);
    assert_string_equal(str(j, "key"), key);
    json_int_t n = num(j, "effects");
    json_decref(j);
    return n;
}

static json_int_t effects_total(const sim *s)
{
    json_t *j = expect(s, "GET", "/_sim/effects", NULL, NULL, 200);
    json_int_t n = num(j, "total");
    json_decref(j);
    return n;
}

static size_t order_count(const sim *s)
{
    json_t *j = expect(s, "GET", "/orders", NULL, NULL, 200);
    size_t n = json_array_size(json_object_get(j, "orders"));
    json_decref(j);
    return n;
}

/* The request log filtered by a route pattern (URL-escaped here). */
static json_t *request_log(const sim *s, const char *pattern)
{
    char path[512];
    char *escaped = curl_easy_escape(NULL, pattern, 0);
    assert_non_null(escaped);
    snprintf(path, sizeof path, "/_sim/log?route=%s", escaped);
    curl_free(escaped);
    json_t *j = expect(s, "GET", path, NULL, NULL, 200);
    json_t *list = json_incref(json_object_get(j, "requests"));
    json_decref(j);
    assert_true(json_is_array(list));
    return list;
}

static bool is_dropped_connection(CURLcode rc)
{
    return rc == CURLE_GOT_NOTHING || rc == CURLE_RECV_ERROR;
}

/* ---- cases ---- */

static void starts_and_reports_port(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    char out[128], line[128] = "", expected[128];
    path_in(&s, "stdout", out, sizeof out);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    snprintf(expected, sizeof expected, "aiorun-sim listening on http://127.0.0.1:%d\n", s.port);
    assert_string_equal(line, expected);
    json_t *j = expect(&s, "GET", "/_sim/health", NULL, NULL, 200);
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_decref(j);
    sim_stop(&s);
}

static void orders_create_and_get(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    json_t *created = expect(&s, "POST", "/orders", NULL, ORDER_BODY, 201);
    assert_string_equal(str(created, "id"), "ord_1");
    assert_string_equal(str(created, "product_id"), "prd_1");
    assert_int_equal(num(created, "quantity"), 2);
    assert_string_equal(str(created, "customer"), "ann");
    assert_string_equal(str(created, "status"), "open");
    assert_true(json_is_false(json_object_get(created, "refunded")));
    assert_true(strlen(str(created, "created_at")) >= 20);

    json_t *got = expect(&s, "GET", "/orders/ord_1", NULL, NULL, 200);
    assert_true(json_equal(created, got));
    json_t *list = expect(&s, "GET", "/orders", NULL, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(list, "orders")), 1);
    assert_true(json_equal(json_array_get(json_object_get(list, "orders"), 0), created));

    json_t *second = expect(&s, "POST", "/orders", NULL, ORDER_BODY, 201);
    assert_string_equal(str(second, "id"), "ord_2");
    json_t *missing = expect(&s, "GET", "/orders/ord_99", NULL, NULL, 404);
    assert_string_equal(str(missing, "error"), "not_found");

    json_t *refunded = expect(&s, "POST", "/orders/ord_1/refund", "r1", "{\"amount\": 5.5}", 200);
    assert_true(json_is_true(json_object_get(refunded, "refunded")));
    assert_true(json_real_value(json_object_get(refunded, "refunded_amount")) == 5.5);
    json_t *again = expect(&s, "POST", "/orders/ord_1/refund", "r2", "{\"amount\": 5.5}", 409);
    assert_string_equal(str(again, "error"), "already_refunded");
    json_t *no_key = expect(&s, "POST", "/orders/ord_1/refund", NULL, "{\"amount\": 1}", 409);
    assert_int_equal(effects_total(&s), 3);

    json_decref(created), json_decref(got), json_decref(list), json_decref(second);
    json_decref(missing), json_decref(refunded), json_decref(again), json_decref(no_key);
    sim_stop(&s);
}

static void products_and_tickets(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    json_t *products = expect(&s, "GET", "/products", NULL, NULL, 200);
    assert_true(json_array_size(json_object_get(products, "products")) >= 3);
    json_t *p1 = expect(&s, "GET", "/products/prd_1", NULL, NULL, 200);
    assert_string_equal(str(p1, "id"), "prd_1");
    assert_true(json_is_number(json_object_get(p1, "price")));
    json_t *made = expect(&s, "POST", "/products", "p", "{\"name\":\"Lamp\",\"price\":12.5}", 201);
    assert_string_equal(str(made, "id"), "prd_4");
    json_t *patched = expect(&s, "PATCH", "/products/prd_4", NULL, "{\"price\": 10}", 200);
    assert_true(json_number_value(json_object_get(patched, "price")) == 10.0);
    assert_string_equal(str(patched, "name"), "Lamp");

    json_t *ticket = expect(&s, "POST", "/tickets", NULL, "{\"subject\":\"Late\",\"body\":\"Where?\"}", 201);
    assert_string_equal(str(ticket, "id"), "tkt_1");
    assert_int_equal(json_array_size(json_object_get(ticket, "tags")), 0);
    json_t *t1 = expect(&s, "POST", "/tickets/tkt_1/tags", NULL, "{\"tags\":[\"a\",\"b\"]}", 200);
    json_t *t2 = expect(&s, "POST", "/tickets/tkt_1/tags", NULL, "{\"tags\":[\"b\",\"c\"]}", 200);
    json_t *want = json_pack("[s,s,s]", "a", "b", "c");
    assert_true(json_equal(json_object_get(t2, "tags"), want));
    json_t *got = expect(&s, "GET", "/tickets/tkt_1", NULL, NULL, 200);
    assert_true(json_equal(json_object_get(got, "tags"), want));
    assert_int_equal(effects_total(&s), 5);

    json_decref(products), json_decref(p1), json_decref(made), json_decref(patched);
    json_decref(ticket), json_decref(t1), json_decref(t2), json_decref(want), json_decref(got);
    sim_stop(&s);
}

static void idempotent_replay(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    http_result first, second, spaced;
    http(&s, "POST", "/orders", "k1", ORDER_BODY, 0, &first);
    assert_int_equal(first.status, 201);
    assert_false(first.replayed);
    http(&s, "POST", "/orders", "k1", ORDER_BODY, 0, &second);
    assert_int_equal(second.status, 201);
    assert_true(second.replayed);
    assert_string_equal(first.body, second.body);
    /* the same JSON written differently is the same body */
    http(&s, "POST", "/orders", "k1",
         "{ \"customer\": \"ann\", \"quantity\": 2, \"product_id\": \"prd_1\" }", 0, &spaced);
    assert_int_equal(spaced.status, 201);
    assert_true(spaced.replayed);
    assert_string_equal(first.body, spaced.body);
    assert_int_equal(effects(&s, "k1"), 1);
    assert_int_equal(order_count(&s), 1);

    json_t *reuse = expect(&s, "POST", "/orders", "k1",
                           "{\"product_id\":\"prd_1\",\"quantity\":3,\"customer\":\"ann\"}", 422);
    assert_string_equal(str(reuse, "error"), "idempotency_key_reuse");
    assert_int_equal(effects(&s, "k1"), 1);
    /* the same key on another route is another record */
    json_t *other = expect(&s, "POST", "/tickets", "k1", "{\"subject\":\"s\",\"body\":\"b\"}", 201);
    assert_int_equal(effects(&s, "k1"), 2);
    /* GET ignores the key */
    json_t *g = expect(&s, "GET", "/orders/ord_1", "k1", NULL, 200);

    http_free(&first), http_free(&second), http_free(&spaced);
    json_decref(reuse), json_decref(other), json_decref(g);
    sim_stop(&s);
}

static void effects_by_key(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    json_decref(expect(&s, "POST", "/orders", "a", ORDER_BODY, 201));
    json_decref(expect(&s, "POST", "/orders", "a", ORDER_BODY, 201));
    json_decref(expect(&s, "POST", "/orders", "b", ORDER_BODY, 201));
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 201));
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 201));
    json_decref(expect(&s, "POST", "/orders", "c", "{\"quantity\":1}", 422));
    json_t *all = expect(&s, "GET", "/_sim/effects", NULL, NULL, 200);
    assert_int_equal(num(all, "total"), 4);
    json_t *by_key = json_object_get(all, "by_key");
    assert_int_equal(num(by_key, "a"), 1);
    assert_int_equal(num(by_key, "b"), 1);
    assert_int_equal(num(by_key, "-"), 2);
    assert_null(json_object_get(by_key, "c"));
    assert_int_equal(effects(&s, "c"), 0);
    assert_int_equal(effects(&s, "unknown"), 0);
    json_t *req = expect(&s, "GET", "/_sim/requests", NULL, NULL, 200);
    assert_int_equal(num(req, "total"), 6);
    assert_int_equal(num(json_object_get(req, "by_route"), "POST /orders"), 6);
    json_decref(all);
    json_decref(req);
    sim_stop(&s);
}

static void fault_status_500(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"status\",\"status\":500}");
    json_t *failed = expect(&s, "POST", "/orders", "s1", ORDER_BODY, 500);
    assert_true(json_is_false(json_object_get(failed, "processed")));
    assert_int_equal(effects(&s, "s1"), 0);
    assert_int_equal(order_count(&s), 0);
    /* the failure was not remembered: the retry with the same key is executed */
    http_result retry;
    http(&s, "POST", "/orders", "s1", ORDER_BODY, 0, &retry);
    assert_int_equal(retry.status, 201);
    assert_false(retry.replayed);
    assert_int_equal(effects(&s, "s1"), 1);
    json_decref(failed);
    http_free(&retry);
    sim_stop(&s);
}

static void fault_status_503_retry_after(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"status\",\"status\":503,\"seconds\":2}");
    http_result r;
    http(&s, "POST", "/orders", "u1", ORDER_BODY, 0, &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.retry_after, "2");
    assert_non_null(r.json);
    assert_string_equal(str(r.json, "error"), "unavailable");
    assert_true(json_is_false(json_object_get(r.json, "processed")));
    assert_int_equal(effects(&s, "u1"), 0);
    http_free(&r);
    sim_stop(&s);
}

static void fault_retry_after_seconds(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"retry_after\",\"seconds\":3}");
    http_result r;
    http(&s, "POST", "/orders", "q1", ORDER_BODY, 0, &r);
    assert_int_equal(r.status, 429);
    assert_string_equal(r.retry_after, "3");
    assert_string_equal(str(r.json, "error"), "rate_limited");
    assert_int_equal(effects(&s, "q1"), 0);
    http_free(&r);
    json_decref(expect(&s, "POST", "/orders", "q1", ORDER_BODY, 201));
    assert_int_equal(effects(&s, "q1"), 1);
    sim_stop(&s);
}

static time_t precise_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec;
}

static void fault_retry_after_http_date(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"retry_after\",\"seconds\":5,\"http_date\":true}");
    /* The precise clock, as the simulator reads it: time(2) reads the kernel's coarse clock,
     * which may still show the last second when the precise one has passed into the next. */
    time_t before = precise_now_s();
    http_result r;
    http(&s, "POST", "/orders", "q2", ORDER_BODY, 0, &r);
    time_t after = precise_now_s();
    assert_int_equal(r.status, 429);
    assert_true(strlen(r.retry_after) > 20);
    assert_non_null(strstr(r.retry_after, " GMT"));
    time_t date = curl_getdate(r.retry_after, NULL);
    assert_true(date >= before + 5);
    assert_true(date <= after + 6);
    assert_int_equal(effects(&s, "q2"), 0);
    http_free(&r);
    sim_stop(&s);
}

static void fault_delay_apply_false(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"delay\",\"delay_ms\":3000,\"apply\":false}");
    http_result r;
    http(&s, "POST", "/orders", "d1", ORDER_BODY, 300, &r);
    assert_int_equal(r.rc, CURLE_OPERATION_TIMEDOUT);
    http_free(&r);
    /* still sleeping: nothing applied yet, other requests are served, and the same key is busy */
    assert_int_equal(effects(&s, "d1"), 0);
    json_t *busy = expect(&s, "POST", "/orders", "d1", ORDER_BODY, 409);
    assert_string_equal(str(busy, "error"), "idempotency_in_progress");
    json_decref(busy);
    /* after the delay the effect happens even though the client went away */
    for (int waited = 0; waited < 15000 && effects(&s, "d1") == 0; waited += 100)
        sleep_ms(100);
    assert_int_equal(effects(&s, "d1"), 1);
    http(&s, "POST", "/orders", "d1", ORDER_BODY, 0, &r);
    assert_int_equal(r.status, 201);
    assert_true(r.replayed);
    http_free(&r);
    assert_int_equal(order_count(&s), 1);
    sim_stop(&s);
}

static void fault_delay_apply_true(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"delay\",\"delay_ms\":3000,\"apply\":true}");
    http_result r;
    http(&s, "POST", "/orders", "d2", ORDER_BODY, 300, &r);
    assert_int_equal(r.rc, CURLE_OPERATION_TIMEDOUT);
    http_free(&r);
    /* applied before the sleep: visible while the answer is still held back */
    assert_int_equal(effects(&s, "d2"), 1);
    assert_int_equal(order_count(&s), 1);
    http(&s, "POST", "/orders", "d2", ORDER_BODY, 0, &r);
    assert_int_equal(r.status, 201);
    assert_true(r.replayed);
    http_free(&r);
    /* a short delay a client waits out gives the normal answer */
    inject(&s, "{\"route\":\"GET /products\",\"fault\":\"delay\",\"delay_ms\":200}");
    json_decref(expect(&s, "GET", "/products", NULL, NULL, 200));
    json_t *log = request_log(&s, "GET /products");
    assert_int_equal(json_array_size(log), 1);
    assert_string_equal(str(json_array_get(log, 0), "fault"), "delay");
    json_decref(log);
    sim_stop(&s);
}

static void fault_reset_before(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"reset_before\"}");
    http_result r;
    http(&s, "POST", "/orders", "rb", ORDER_BODY, 0, &r);
    assert_true(is_dropped_connection(r.rc));
    http_free(&r);
    assert_int_equal(effects(&s, "rb"), 0);
    assert_int_equal(order_count(&s), 0);
    json_t *log = request_log(&s, "POST /orders");
    assert_int_equal(json_array_size(log), 1);
    assert_string_equal(str(json_array_get(log, 0), "fault"), "reset_before");
    assert_int_equal(num(json_array_get(log, 0), "status"), 0);
    json_decref(log);
    http(&s, "POST", "/orders", "rb", ORDER_BODY, 0, &r);
    assert_int_equal(r.status, 201);
    assert_false(r.replayed);
    http_free(&r);
    assert_int_equal(effects(&s, "rb"), 1);
    sim_stop(&s);
}

static void fault_reset_after(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"reset_after\"}");
    http_result r;
    http(&s, "POST", "/orders", "ra", ORDER_BODY, 0, &r);
    assert_true(is_dropped_connection(r.rc));
    http_free(&r);
    assert_int_equal(effects(&s, "ra"), 1);
    assert_int_equal(order_count(&s), 1);
    /* the retry with the same key gets the remembered answer, no second effect */
    http(&s, "POST", "/orders", "ra", ORDER_BODY, 0, &r);
    assert_int_equal(r.status, 201);
    assert_true(r.replayed);
    assert_string_equal(str(r.json, "id"), "ord_1");
    http_free(&r);
    assert_int_equal(effects(&s, "ra"), 1);
    assert_int_equal(order_count(&s), 1);
    sim_stop(&s);
}

static void fault_truncate(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"truncate\"}");
    http_result r;
    http(&s, "POST", "/orders", "tr", ORDER_BODY, 0, &r);
    assert_int_equal(r.rc, CURLE_PARTIAL_FILE);
    assert_int_equal(r.status, 201);
    assert_null(r.json);
    http_free(&r);
    assert_int_equal(effects(&s, "tr"), 1);
    http(&s, "POST", "/orders", "tr", ORDER_BODY, 0, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_true(r.replayed);
    http_free(&r);
    assert_int_equal(effects(&s, "tr"), 1);
    sim_stop(&s);
}

static void fault_crash(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"crash\",\"apply\":true}");
    http_result r;
    http(&s, "POST", "/orders", "cr", ORDER_BODY, 0, &r);
    assert_int_not_equal(r.rc, CURLE_OK);
    http_free(&r);
    int status = sim_wait(&s);
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 3);
    remove_dir(&s);
}

static void fault_count_and_wildcard(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    inject(&s, "{\"route\":\"*\",\"fault\":\"status\",\"status\":503,\"count\":2}");
    json_decref(expect(&s, "GET", "/products", NULL, NULL, 503));
    json_t *list = expect(&s, "GET", "/_sim/faults", NULL, NULL, 200);   /* never faulted */
    assert_int_equal(json_array_size(json_object_get(list, "faults")), 1);
    assert_int_equal(num(json_array_get(json_object_get(list, "faults"), 0), "remaining"), 1);
    json_decref(list);
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 503));
    json_decref(expect(&s, "GET", "/products", NULL, NULL, 200));
    list = expect(&s, "GET", "/_sim/faults", NULL, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(list, "faults")), 0);
    json_decref(list);

    /* faults on one route are consumed in order */
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"status\",\"status\":500}");
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"status\",\"status\":502}");
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 500));
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 502));
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 201));

    /* "{id}" matches one segment; -1 lasts until deleted */
    inject(&s, "{\"route\":\"GET /orders/{id}\",\"fault\":\"status\",\"status\":500,\"count\":-1}");
    for (int i = 0; i < 3; i++)
        json_decref(expect(&s, "GET", "/orders/ord_1", NULL, NULL, 500));
    json_decref(expect(&s, "GET", "/orders", NULL, NULL, 200));
    json_t *cleared = expect(&s, "DELETE", "/_sim/faults", NULL, NULL, 200);
    assert_int_equal(num(cleared, "cleared"), 1);
    json_decref(cleared);
    json_decref(expect(&s, "GET", "/orders/ord_1", NULL, NULL, 200));

    /* one fault removed by id */
    json_t *made = expect(&s, "POST", "/_sim/faults", NULL,
                          "{\"route\":\"GET /products\",\"fault\":\"reset_before\",\"count\":-1}", 201);
    char path[64];
    snprintf(path, sizeof path, "/_sim/faults/%s", str(made, "id"));
    json_decref(expect(&s, "DELETE", path, NULL, NULL, 200));
    json_decref(expect(&s, "GET", "/products", NULL, NULL, 200));
    json_decref(made);

    /* a bad fault spec is refused */
    json_decref(expect(&s, "POST", "/_sim/faults", NULL, "{\"route\":\"POST /orders\",\"fault\":\"boom\"}", 422));
    json_decref(expect(&s, "POST", "/_sim/faults", NULL, "{\"route\":\"nope\",\"fault\":\"status\"}", 422));
    json_decref(expect(&s, "POST", "/_sim/faults", NULL, "{\"route\":\"*\",\"fault\":\"status\",\"count\":0}", 422));
    json_decref(expect(&s, "POST", "/_sim/faults", NULL, "{\"route\":\"*\",\"fault\":\"delay\"}", 422));
    json_decref(expect(&s, "POST", "/_sim/faults", NULL, "{bad", 400));
    sim_stop(&s);
}

static void by_key_lookup(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    json_t *created = expect(&s, "POST", "/orders", "bk", ORDER_BODY, 201);
    json_t *found = expect(&s, "GET", "/_sim/by-key/bk", NULL, NULL, 200);
    assert_int_equal(num(found, "status"), 201);
    assert_true(json_equal(json_object_get(found, "body"), created));
    json_t *missing = expect(&s, "GET", "/_sim/by-key/never", NULL, NULL, 404);

    /* a request refused by validation made no effect and is not remembered */
    json_decref(expect(&s, "POST", "/orders", "fix", "{\"product_id\":\"prd_1\"}", 422));
    json_decref(expect(&s, "GET", "/_sim/by-key/fix", NULL, NULL, 404));
    json_decref(expect(&s, "POST", "/orders", "fix", ORDER_BODY, 201));
    json_t *fixed = expect(&s, "GET", "/_sim/by-key/fix", NULL, NULL, 200);
    assert_string_equal(str(json_object_get(fixed, "body"), "id"), "ord_2");

    json_decref(expect(&s, "POST", "/orders/ord_1/refund", "rf", "{\"amount\":2}", 200));
    json_t *refund = expect(&s, "GET", "/_sim/by-key/rf", NULL, NULL, 200);
    assert_int_equal(num(refund, "status"), 200);
    assert_true(json_is_true(json_object_get(json_object_get(refund, "body"), "refunded")));

    json_decref(created), json_decref(found), json_decref(missing), json_decref(fixed);
    json_decref(refund);
    sim_stop(&s);
}

static void log_timestamps(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    int64_t before = now_ms();
    json_decref(expect(&s, "POST", "/orders", "l1", ORDER_BODY, 201));
    int64_t after = now_ms();
    inject(&s, "{\"route\":\"POST /orders\",\"fault\":\"retry_after\",\"seconds\":1}");
    json_decref(expect(&s, "POST", "/orders", "l2", ORDER_BODY, 429));
    json_decref(expect(&s, "POST", "/orders", "l2", ORDER_BODY, 201));
    json_decref(expect(&s, "GET", "/products", NULL, NULL, 200));
    json_decref(expect(&s, "POST", "/orders/ord_1/refund", NULL, "{\"amount\":1}", 200));

    json_t *log = request_log(&s, "POST /orders");
    assert_int_equal(json_array_size(log), 3);
    json_t *e0 = json_array_get(log, 0), *e1 = json_array_get(log, 1), *e2 = json_array_get(log, 2);
    assert_true(num(e0, "at_ms") >= before && num(e0, "at_ms") <= after);
    assert_string_equal(str(e0, "key"), "l1");
    assert_string_equal(str(e0, "fault"), "none");
    assert_int_equal(num(e0, "status"), 201);
    assert_string_equal(str(e1, "fault"), "retry_after");
    assert_int_equal(num(e1, "status"), 429);
    assert_true(num(e1, "at_ms") >= num(e0, "at_ms"));
    assert_true(num(e2, "at_ms") >= num(e1, "at_ms"));
    assert_string_equal(str(e2, "key"), "l2");
    json_decref(log);

    log = request_log(&s, "POST /orders/{id}/refund");
    assert_int_equal(json_array_size(log), 1);
    assert_string_equal(str(json_array_get(log, 0), "key"), "-");
    json_decref(log);
    log = request_log(&s, "*");
    assert_int_equal(json_array_size(log), 5);
    json_decref(log);

    json_t *req = expect(&s, "GET", "/_sim/requests", NULL, NULL, 200);
    assert_int_equal(num(req, "total"), 5);
    assert_int_equal(num(json_object_get(req, "by_route"), "POST /orders"), 3);
    assert_int_equal(num(json_object_get(req, "by_route"), "GET /products"), 1);
    json_decref(req);
    sim_stop(&s);
}

static void reset_clears_everything(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    json_decref(expect(&s, "POST", "/orders", "k", ORDER_BODY, 201));
    json_decref(expect(&s, "PATCH", "/products/prd_2", NULL, "{\"price\": 1}", 200));
    json_decref(expect(&s, "POST", "/tickets", NULL, "{\"subject\":\"s\",\"body\":\"b\"}", 201));
    inject(&s, "{\"route\":\"*\",\"fault\":\"status\",\"count\":-1}");
    json_decref(expect(&s, "POST", "/_sim/reset", NULL, NULL, 200));

    assert_int_equal(order_count(&s), 0);
    json_t *p2 = expect(&s, "GET", "/products/prd_2", NULL, NULL, 200);
    assert_true(json_number_value(json_object_get(p2, "price")) == 24.5);
    json_decref(p2);
    json_decref(expect(&s, "GET", "/tickets/tkt_1", NULL, NULL, 404));
    json_t *faults = expect(&s, "GET", "/_sim/faults", NULL, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(faults, "faults")), 0);
    json_decref(faults);
    json_t *req = expect(&s, "GET", "/_sim/requests", NULL, NULL, 200);
    assert_int_equal(num(req, "total"), 3);   /* the three reads just above */
    json_decref(req);
    assert_int_equal(effects_total(&s), 0);
    json_decref(expect(&s, "GET", "/_sim/by-key/k", NULL, NULL, 404));
    /* the old key is forgotten: another body is accepted, ids start again */
    json_t *o = expect(&s, "POST", "/orders", "k",
                       "{\"product_id\":\"prd_3\",\"quantity\":1,\"customer\":\"bo\"}", 201);
    assert_string_equal(str(o, "id"), "ord_1");
    json_decref(o);
    sim_stop(&s);
}

static void error_statuses(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    json_t *j = expect(&s, "GET", "/nope", NULL, NULL, 404);
    json_decref(j);
    json_decref(expect(&s, "GET", "/_sim/nope", NULL, NULL, 404));
    http_result r;
    http(&s, "DELETE", "/orders", NULL, NULL, 0, &r);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.allow, "GET, POST");
    http_free(&r);
    json_decref(expect(&s, "PUT", "/products/prd_1", NULL, "{}", 405));
    json_decref(expect(&s, "GET", "/_sim/reset", NULL, NULL, 405));

    j = expect(&s, "POST", "/orders", NULL, "{\"product_id\": ", 400);
    assert_string_equal(str(j, "error"), "invalid_json");
    json_decref(j);
    j = expect(&s, "POST", "/orders", NULL, "{\"product_id\":\"prd_1\",\"quantity\":2}", 422);
    assert_string_equal(str(j, "error"), "invalid");
    assert_non_null(strstr(str(j, "message"), "customer"));
    json_decref(j);
    j = expect(&s, "POST", "/orders", NULL, "{\"product_id\":\"prd_1\",\"quantity\":0,\"customer\":\"a\"}", 422);
    assert_non_null(strstr(str(j, "message"), "quantity"));
    json_decref(j);
    json_decref(expect(&s, "POST", "/orders", NULL, "[1,2]", 422));
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 201));
    json_decref(expect(&s, "POST", "/orders/ord_1/refund", NULL, "{\"amount\": -1}", 422));
    json_decref(expect(&s, "POST", "/orders/ord_9/refund", NULL, "{\"amount\": 1}", 404));
    json_decref(expect(&s, "POST", "/tickets", NULL, "{\"subject\":\"only\"}", 422));
    json_decref(expect(&s, "POST", "/tickets/tkt_1/tags", NULL, "{\"tags\":[\"a\"]}", 404));
    json_decref(expect(&s, "PATCH", "/products/prd_1", NULL, "{\"price\":\"free\"}", 422));
    assert_int_equal(effects_total(&s), 1);
    sim_stop(&s);
}

static void sigterm_exits_zero(void **state)
{
    (void)state;
    sim s;
    sim_start(&s);
    json_decref(expect(&s, "POST", "/orders", NULL, ORDER_BODY, 201));
    int status = sim_stop_with(&s, SIGTERM);
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    sim_start(&s);
    status = sim_stop_with(&s, SIGINT);
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(starts_and_reports_port),
    cmocka_unit_test(orders_create_and_get),
    cmocka_unit_test(products_and_tickets),
    cmocka_unit_test(idempotent_replay),
    cmocka_unit_test(effects_by_key),
    cmocka_unit_test(fault_status_500),
    cmocka_unit_test(fault_status_503_retry_after),
    cmocka_unit_test(fault_retry_after_seconds),
    cmocka_unit_test(fault_retry_after_http_date),
    cmocka_unit_test(fault_delay_apply_false),
    cmocka_unit_test(fault_delay_apply_true),
    cmocka_unit_test(fault_reset_before),
    cmocka_unit_test(fault_reset_after),
    cmocka_unit_test(fault_truncate),
    cmocka_unit_test(fault_crash),
    cmocka_unit_test(fault_count_and_wildcard),
    cmocka_unit_test(by_key_lookup),
    cmocka_unit_test(log_timestamps),
    cmocka_unit_test(reset_clears_everything),
    cmocka_unit_test(error_statuses),
    cmocka_unit_test(sigterm_exits_zero),
};

AR_TEST_MAIN(tests, NULL, NULL)
