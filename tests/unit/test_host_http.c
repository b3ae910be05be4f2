/* test_host_http.c - the host's HTTP service and the http connector (plugins/http.so), end to
 * end: a real sandbox pool talks to a small libmicrohttpd server run by this test on
 * 127.0.0.1 that answers scripted responses by path and records what it received. The test
 * thread drives the loop (sandbox_fixture.h); the server has its own threads. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <microhttpd.h>

#include "test_main.h"

#include "aiorun/plugin.h"
#include "ar.h"
#include "loop.h"
#include "sandbox.h"
#include "sandbox_fixture.h"

#define HTTP_PLUGIN AIORUN_BUILD_DIR "/plugins/http.so"
/* How long /slow keeps a request before answering: longer than the deadlines used on it. */
#define SLOW_MS 3000

/* ---- the scripted server ------------------------------------------------------------------ */

typedef struct seen {
    char method[16];
    char path[512];
    char authorization[256];
    char api_key[256];
    char idempotency_key[256];
    int has_idempotency_key;
    char content_type[128];
    char trace[64];
    char query_q[128];
    char query_n[32];
    char body[4096];
} seen;

typedef struct server {
    struct MHD_Daemon *daemon;
    int port;
    pthread_mutex_t mu;
    int stopping;
    int requests;
    int resets;          /* requests to /reset */
    seen last;
} server;

static server g_server;

typedef struct upload {
    char body[4096];
    size_t len;
    size_t total;        /* every byte of the body, also past what body keeps */
} upload;

static void copy_header(struct MHD_Connection *conn, const char *name, char *out, size_t cap)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
    snprintf(out, cap, "%s", v ? v : "");
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *type,
                               const char *body, const char *const *headers)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body,
                                                             MHD_RESPMEM_MUST_COPY);
    if (type)
        MHD_add_response_header(r, "Content-Type", type);
    for (size_t i = 0; headers && headers[i]; i += 2)
        MHD_add_response_header(r, headers[i], headers[i + 1]);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *data_size, void **con_cls)
{
    server *srv = cls;
    (void)version;
    upload *up = *con_cls;
    if (!up) {
        up = calloc(1, sizeof *up);
        *con_cls = up;
        return MHD_YES;
    }
    if (*data_size > 0) {
        up->total += *data_size;
        size_t n = *data_size;
        if (n > sizeof up->body - 1 - up->len)
            n = sizeof up->body - 1 - up->len;
        memcpy(up->body + up->len, data, n);
        up->len += n;
        *data_size = 0;
        return MHD_YES;
    }

    pthread_mutex_lock(&srv->mu);
    seen *s = &srv->last;
    memset(s, 0, sizeof *s);
    snprintf(s->method, sizeof s->method, "%s", method);
    snprintf(s->path, sizeof s->path, "%s", url);
    copy_header(conn, "Authorization", s->authorization, sizeof s->authorization);
    copy_header(conn, "X-Key", s->api_key, sizeof s->api_key);
    copy_header(conn, "Content-Type", s->content_type, sizeof s->content_type);
    copy_header(conn, "X-Trace", s->trace, sizeof s->trace);
    s->has_idempotency_key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key") != NULL;
    copy_header(conn, "Idempotency-Key", s->idempotency_key, sizeof s->idempotency_key);
    const char *q = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "q");
    const char *n = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "n");
    snprintf(s->query_q, sizeof s->query_q, "%s", q ? q : "");
    snprintf(s->query_n, sizeof s->query_n, "%s", n ? n : "");
    memcpy(s->body, up->body, up->len);
    s->body[up->len] = '\0';
    srv->requests++;
    if (strcmp(url, "/reset") == 0)
        srv->resets++;
    char auth_echo[512];
    snprintf(auth_echo, sizeof auth_echo, "{\"auth\":\"%s\"}", s->authorization);
    pthread_mutex_unlock(&srv->mu);

    if (strcmp(url, "/items") == 0 && strcmp(method, "POST") == 0) {
        static const char *const h[] = {"Location", "/items/7", "ETag", "\"v1\"",
                                        "Idempotent-Replayed", "false", "X-Other", "dropped", NULL};
        return respond(conn, 201, "application/json", "{\"id\":7,\"created\":true}", h);
    }
    if (strcmp(url, "/big") == 0) {
        /* {"data":"xxx..."} with ?bytes= x's */
        const char *bytes = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "bytes");
        size_t n = bytes ? strtoul(bytes, NULL, 10) : 0;
        char *body = malloc(n + 16);
        memcpy(body, "{\"data\":\"", 9);
        memset(body + 9, 'x', n);
        memcpy(body + 9 + n, "\"}", 3);
        struct MHD_Response *r = MHD_create_response_from_buffer(n + 11, body, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(r, "Content-Type", "application/json");
        enum MHD_Result ret = MHD_queue_response(conn, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/upload") == 0) {
        char answer[64];
        snprintf(answer, sizeof answer, "{\"received\":%zu}", up->total);
        return respond(conn, 200, "application/json", answer, NULL);
    }
    if (strcmp(url, "/items/7") == 0)
        return respond(conn, 200, "application/json; charset=utf-8", "{\"id\":7}", NULL);
    if (strcmp(url, "/text") == 0)
        return respond(conn, 200, "text/plain", "hello, world", NULL);
    if (strcmp(url, "/empty") == 0)
        return respond(conn, 204, NULL, "", NULL);
    if (strcmp(url, "/echo-auth") == 0)
        return respond(conn, 200, "application/json", auth_echo, NULL);
    if (strcmp(url, "/fail500") == 0)
        return respond(conn, 500, "text/plain", "database\n on fire", NULL);
    if (strcmp(url, "/unavailable") == 0)
        return respond(conn, 503, "application/json", "{\"processed\":false}", NULL);
    if (strcmp(url, "/busy") == 0) {
        static const char *const h[] = {"Retry-After", "2", NULL};
        return respond(conn, 429, "application/json", "{\"error\":\"slow down\"}", h);
    }
    if (strcmp(url, "/reset") == 0) {
        /* the request was read in full: drop the connection without an answer */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            shutdown(ci->connect_fd, SHUT_RDWR);
        }
        return MHD_NO;
    }
    if (strcmp(url, "/slow") == 0) {
        for (int waited = 0; waited < SLOW_MS; waited += 20) {
            pthread_mutex_lock(&srv->mu);
            int stop = srv->stopping;
            pthread_mutex_unlock(&srv->mu);
            if (stop)
                break;
            sleep_ms(20);
        }
        return respond(conn, 200, "application/json", "{\"late\":true}", NULL);
    }
    if (strncmp(url, "/_sim/by-key/", 13) == 0) {
        if (strcmp(url + 13, "done-1") == 0)
            return respond(conn, 200, "application/json",
                           "{\"status\":201,\"body\":{\"id\":9,\"name\":\"kept\"}}", NULL);
        return respond(conn, 404, "application/json", "{\"error\":\"no such key\"}", NULL);
    }
    return respond(conn, 404, "text/plain", "not here", NULL);
}

static void request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

static int server_start(void **state)
{
    (void)state;
    server *srv = &g_server;
    memset(srv, 0, sizeof *srv);
    pthread_mutex_init(&srv->mu, NULL);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    srv->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION,
                                   0, NULL, NULL, handle, srv,
                                   MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                   MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL,
                                   MHD_OPTION_END);
    if (!srv->daemon)
        return -1;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : 0;
    return srv->port > 0 ? 0 : -1;
}

static int server_stop(void **state)
{
    (void)state;
    pthread_mutex_lock(&g_server.mu);
    g_server.stopping = 1;
    pthread_mutex_unlock(&g_server.mu);
    MHD_stop_daemon(g_server.daemon);
    pthread_mutex_destroy(&g_server.mu);
    return 0;
}

static seen last_seen(void)
{
    pthread_mutex_lock(&g_server.mu);
    seen s = g_server.last;
    pthread_mutex_unlock(&g_server.mu);
    return s;
}

static int count_resets(void)
{
    pthread_mutex_lock(&g_server.mu);
    int n = g_server.resets;
    pthread_mutex_unlock(&g_server.mu);
    return n;
}

/* ---- the pool, driven by this thread (sandbox_fixture.h) --------------------------------- */

/* The secrets of the pool the test runs (one at a time): they must outlive it. */
static json_t *g_secret_values;
static test_secrets g_secrets;

/* Start a pool of the http plugin. config_fmt may hold one %d: the server's port. */
static void start_http(harness *h, const char *config_fmt, int port, const char *secrets_json)
{
    char config_text[1024];
    snprintf(config_text, sizeof config_text, config_fmt, port);
    json_t *config = json_loads(config_text, 0, NULL);
    json_decref(g_secret_values);
    g_secret_values = json_loads(secrets_json, 0, NULL);
    assert_non_null(config);
    assert_non_null(g_secret_values);
    g_secrets = (test_secrets){.values = g_secret_values};
    /* Landlock (ABI >= 4) lets the plugin connect to these TCP ports only */
    static int ports[1];
    ports[0] = port;
    sandbox_pool_opts opts = {.connector = "rest", .plugin_path = HTTP_PLUGIN,
                              .host_path = HOST_PATH, .config = config, .processes = 1,
                              .timeout_ms = 10000, .secrets_fn = test_secrets_fn,
                              .secrets_arg = &g_secrets,
                              .lockdown = {.ports = ports, .n_ports = 1}};
    start_pool_opts(h, &opts);
    json_decref(config);
}

#define BEARER_CONFIG \
    "{\"base_url\":\"http://127.0.0.1:%d\",\"auth\":{\"type\":\"bearer\",\"secret\":\"token\"}}"
#define TOKEN_SECRETS "{\"token\":\"s3cret\"}"

static void start_default(harness *h)
{
    start_http(h, BEARER_CONFIG, g_server.port, TOKEN_SECRETS);
    wait_state(h, SANDBOX_READY);
}

static void request(harness *h, const char *input, const char *key, int timeout_ms, call_rec *r)
{
    sandbox_call c = {.action = "request", .input_json = input, .input_len = strlen(input),
                      .idempotency_key = key, .attempt = 1, .timeout_ms = timeout_ms};
    memset(r, 0, sizeof *r);
    assert_int_equal(sandbox_pool_invoke(h->pool, &c, on_done, r), AR_OK);
    if (!run_until(h, pred_done, r))
        fail_msg("no result for %s", input);
    assert_int_equal(r->done, 1);
    print_message("%s -> %s%s (class %d, http %d, retry_after %lld)\n", input,
                  r->ok ? "ok " : "error ", r->ok ? r->result : r->message, r->error_class,
                  r->http_status, (long long)r->retry_after_ms);
}

static void lookup(harness *h, const char *key, call_rec *r)
{
    sandbox_call c = {.action = "request", .idempotency_key = key};
    memset(r, 0, sizeof *r);
    assert_int_equal(sandbox_pool_lookup(h->pool, &c, on_done, r), AR_OK);
    if (!run_until(h, pred_done, r))
        fail_msg("no lookup answer for %s", key);
    print_message("lookup %s -> %s%s (class %d)\n", key, r->ok ? "ok " : "error ",
                  r->ok ? r->result : r->message, r->error_class);
}

static void assert_contains(const char *s, const char *part)
{
    if (!strstr(s, part))
        fail_msg("\"%s\" does not contain \"%s\"", s, part);
}

static void assert_json(const char *got, const char *want)
{
    json_t *g = json_loads(got, JSON_DECODE_ANY, NULL);
    json_t *w = json_loads(want, JSON_DECODE_ANY, NULL);
    assert_non_null(g);
    assert_non_null(w);
    if (!json_equal(g, w))
        fail_msg("got %s, expected %s", got, want);
    json_decref(g);
    json_decref(w);
}

/* ---- cases -------------------------------------------------------------------------------- */

static void test_post_sends_auth_key_and_body(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_default(&h);
    request(&h, "{\"method\":\"POST\",\"path\":\"/items\",\"headers\":{\"X-Trace\":\"t-1\"},"
                "\"body\":{\"name\":\"caf\\u00e9\",\"n\":[1,2]}}", "key-post-1", 0, &r);
    if (!r.ok)
        fail_msg("POST failed: %s", r.message);
    assert_json(r.result, "{\"status\":201,\"headers\":{\"content-type\":\"application/json\","
                          "\"location\":\"/items/7\",\"etag\":\"\\\"v1\\\"\","
                          "\"idempotent-replayed\":\"false\"},"
                          "\"body\":{\"id\":7,\"created\":true}}");
    assert_int_equal(r.http_status, 201);
    assert_int_equal(r.retry_after_ms, -1);
    seen s = last_seen();
    assert_string_equal(s.method, "POST");
    assert_string_equal(s.path, "/items");
    assert_string_equal(s.authorization, "Bearer s3cret");
    assert_true(s.has_idempotency_key);
    assert_string_equal(s.idempotency_key, "key-post-1");
    assert_string_equal(s.content_type, "application/json");
    assert_string_equal(s.trace, "t-1");
    assert_json(s.body, "{\"name\":\"caf\\u00e9\",\"n\":[1,2]}");
    rec_clear(&r);
    stop_pool(&h);
}

static void test_get_sends_no_idempotency_key(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_default(&h);
    request(&h, "{\"method\":\"GET\",\"path\":\"/items/7\",\"query\":{\"q\":\"a b&c\",\"n\":5}}",
            "key-get-1", 0, &r);
    if (!r.ok)
        fail_msg("GET failed: %s", r.message);
    assert_json(r.result, "{\"status\":200,\"headers\":{\"content-type\":"
                          "\"application/json; charset=utf-8\"},\"body\":{\"id\":7}}");
    seen s = last_seen();
    assert_string_equal(s.method, "GET");
    assert_string_equal(s.authorization, "Bearer s3cret");
    assert_false(s.has_idempotency_key);
    assert_string_equal(s.query_q, "a b&c");
    assert_string_equal(s.query_n, "5");
    rec_clear(&r);

    /* a body that is not JSON is a string; an empty one is null */
    request(&h, "{\"method\":\"GET\",\"path\":\"/text\"}", "key-get-2", 0, &r);
    assert_true(r.ok);
    assert_json(r.result, "{\"status\":200,\"headers\":{\"content-type\":\"text/plain\"},"
                          "\"body\":\"hello, world\"}");
    rec_clear(&r);
    request(&h, "{\"method\":\"DELETE\",\"path\":\"/empty\"}", "key-del-1", 0, &r);
    assert_true(r.ok);
    assert_json(r.result, "{\"status\":204,\"headers\":{},\"body\":null}");
    assert_true(last_seen().has_idempotency_key);
    rec_clear(&r);
    stop_pool(&h);
}

static void test_status_classes(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_default(&h);

    request(&h, "{\"method\":\"POST\",\"path\":\"/fail500\",\"body\":{}}", "k500", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_RETRYABLE);
    assert_int_equal(r.http_status, 500);
    assert_int_equal(r.retry_after_ms, -1);
    assert_contains(r.message, "POST /fail500 answered 500: database on fire");
    rec_clear(&r);

    request(&h, "{\"method\":\"POST\",\"path\":\"/busy\"}", "k429", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_RATE_LIMITED);
    assert_int_equal(r.http_status, 429);
    assert_int_equal(r.retry_after_ms, 2000);
    rec_clear(&r);

    request(&h, "{\"method\":\"GET\",\"path\":\"/missing\"}", "k404", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_NOT_FOUND);
    assert_int_equal(r.http_status, 404);
    assert_contains(r.message, "GET /missing answered 404: not here");
    rec_clear(&r);

    request(&h, "{\"method\":\"POST\",\"path\":\"/unavailable\"}", "k503", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_RETRYABLE);
    assert_int_equal(r.http_status, 503);
    assert_contains(r.message, "not processed");
    rec_clear(&r);
    stop_pool(&h);
}

static void test_reset_after_request_is_unknown_outcome(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_default(&h);
    /* a read first leaves a keep-alive connection behind */
    request(&h, "{\"method\":\"GET\",\"path\":\"/items/7\"}", "k-warm", 0, &r);
    assert_true(r.ok);
    rec_clear(&r);
    int before = count_resets();
    request(&h, "{\"method\":\"POST\",\"path\":\"/reset\",\"body\":{\"pay\":1}}", "k-reset", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_TIMEOUT);
    assert_contains(r.message, "the outcome is unknown");
    /* no HTTP response was received during this call */
    assert_int_equal(r.http_status, 0);
    assert_int_equal(r.retry_after_ms, -1);
    /* the write reached the server exactly once: never re-sent behind our back */
    assert_int_equal(count_resets() - before, 1);
    rec_clear(&r);
    stop_pool(&h);
}

static void test_deadline_is_timeout(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_default(&h);
    request(&h, "{\"method\":\"POST\",\"path\":\"/slow\",\"body\":{}}", "k-slow", 500, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_TIMEOUT);
    rec_clear(&r);
    stop_pool(&h);
}

static void test_connection_refused_is_retryable(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    /* a bound socket that does not listen: connections to its port are refused */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof addr;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    start_http(&h, BEARER_CONFIG, ntohs(addr.sin_port), TOKEN_SECRETS);
    wait_state(&h, SANDBOX_READY);
    request(&h, "{\"method\":\"POST\",\"path\":\"/items\",\"body\":{}}", "k-refused", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_RETRYABLE);
    assert_contains(r.message, "the request was not sent");
    assert_int_equal(r.http_status, 0);
    rec_clear(&r);
    stop_pool(&h);
    close(fd);
}

static void test_missing_secret_refuses_pool(void **state)
{
    (void)state;
    harness h;
    start_http(&h, BEARER_CONFIG, g_server.port, "{\"other\":\"x\"}");
    wait_state(&h, SANDBOX_REFUSED);
    sandbox_snapshot s;
    sandbox_pool_snapshot(h.pool, &s);
    json_decref(s.descriptor);
    print_message("refusal: %s\n", s.message);
    assert_contains(s.message, "secret token is not configured for this connector");
    assert_contains(s.message, "auth");
    stop_pool(&h);
}

static void test_other_auth_types(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_http(&h, "{\"base_url\":\"http://127.0.0.1:%d/\",\"auth\":{\"type\":\"api_key\","
                   "\"secret\":\"key\",\"header\":\"X-Key\"},\"headers\":{\"X-Trace\":\"cfg\"}}",
               g_server.port, "{\"key\":\"k-123\"}");
    wait_state(&h, SANDBOX_READY);
    request(&h, "{\"method\":\"GET\",\"path\":\"/items/7\"}", "k1", 0, &r);
    assert_true(r.ok);
    seen s = last_seen();
    assert_string_equal(s.api_key, "k-123");
    assert_string_equal(s.authorization, "");
    assert_string_equal(s.trace, "cfg");
    assert_string_equal(s.path, "/items/7");
    rec_clear(&r);
    /* the request's own header wins over the configured one; auth's header is not the
     * request's to set */
    request(&h, "{\"method\":\"GET\",\"path\":\"/items/7\",\"headers\":{\"x-trace\":\"req\"}}", "k2", 0, &r);
    assert_true(r.ok);
    assert_string_equal(last_seen().trace, "req");
    rec_clear(&r);
    request(&h, "{\"method\":\"GET\",\"path\":\"/items/7\",\"headers\":{\"x-key\":\"mine\"}}", "k3", 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_INVALID);
    rec_clear(&r);
    stop_pool(&h);

    start_http(&h, "{\"base_url\":\"http://127.0.0.1:%d\",\"auth\":{\"type\":\"basic\","
                   "\"secret\":\"login\"}}", g_server.port, "{\"login\":\"user:pw\"}");
    wait_state(&h, SANDBOX_READY);
    request(&h, "{\"method\":\"GET\",\"path\":\"/items/7\"}", "k4", 0, &r);
    assert_true(r.ok);
    assert_string_equal(last_seen().authorization, "Basic dXNlcjpwdw==");
    rec_clear(&r);
    stop_pool(&h);
}

static void test_bad_input_is_invalid(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    static const char *const inputs[] = {
        "{\"method\":\"GET\",\"path\":\"items\"}",
        "{\"method\":\"GET\",\"path\":\"/a/../admin\"}",
        "{\"method\":\"GET\",\"path\":\"/a/%2e%2E/admin\"}",
        "{\"method\":\"GET\",\"path\":\"/a\",\"headers\":{\"Authorization\":\"Bearer other\"}}",
        "{\"method\":\"GET\",\"path\":\"/a\",\"headers\":{\"Host\":\"elsewhere\"}}",
        "{\"method\":\"GET\",\"path\":\"/a\",\"headers\":{\"X-A\":\"line\\r\\nbreak\"}}",
        "{\"method\":\"HEAD\",\"path\":\"/a\",\"body\":{}}",
    };
    start_default(&h);
    pthread_mutex_lock(&g_server.mu);
    int before = g_server.requests;
    pthread_mutex_unlock(&g_server.mu);
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        request(&h, inputs[i], "k-bad", 0, &r);
        assert_false(r.ok);
        assert_int_equal(r.error_class, AIORUN_E_INVALID);
        rec_clear(&r);
    }
    pthread_mutex_lock(&g_server.mu);
    assert_int_equal(g_server.requests, before);
    pthread_mutex_unlock(&g_server.mu);
    stop_pool(&h);
}

static void test_secret_redacted_from_result(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_default(&h);
    /* the server echoes the Authorization header it got: the daemon must not pass it on */
    request(&h, "{\"method\":\"GET\",\"path\":\"/echo-auth\"}", "k-echo", 0, &r);
    assert_true(r.ok);
    assert_json(r.result, "{\"status\":200,\"headers\":{\"content-type\":\"application/json\"},"
                          "\"body\":{\"auth\":\"Bearer [REDACTED]\"}}");
    rec_clear(&r);
    stop_pool(&h);
}

static void test_lookup_through_configured_path(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_http(&h, "{\"base_url\":\"http://127.0.0.1:%d\",\"auth\":{\"type\":\"bearer\","
                   "\"secret\":\"token\"},\"lookup\":{\"path\":\"/_sim/by-key/{key}\"}}",
               g_server.port, TOKEN_SECRETS);
    wait_state(&h, SANDBOX_READY);
    lookup(&h, "done-1", &r);
    if (!r.ok)
        fail_msg("lookup failed: %s", r.message);
    assert_json(r.result, "{\"status\":201,\"body\":{\"id\":9,\"name\":\"kept\"}}");
    assert_int_equal(r.http_status, 200);
    seen s = last_seen();
    assert_string_equal(s.method, "GET");
    assert_string_equal(s.path, "/_sim/by-key/done-1");
    assert_string_equal(s.authorization, "Bearer s3cret");
    assert_false(s.has_idempotency_key);
    rec_clear(&r);

    lookup(&h, "never/sent", &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_NOT_FOUND);
    assert_int_equal(r.http_status, 404);
    /* sent as one encoded segment, which the server decodes */
    assert_string_equal(last_seen().path, "/_sim/by-key/never/sent");
    rec_clear(&r);
    stop_pool(&h);

    /* without config.lookup the plugin answers invalid */
    start_default(&h);
    lookup(&h, "done-1", &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_INVALID);
    assert_contains(r.message, "no lookup configured");
    rec_clear(&r);
    stop_pool(&h);
}

/* Bodies of several MiB both ways through a host under its seccomp filter and Landlock: the
 * system calls of large transfers (realloc's mremap, more reads and polls) are allowed. */
static void test_big_bodies_under_the_filter(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    enum { DOWN = 6 * 1024 * 1024, UP = 3 * 1024 * 1024 };
    start_http(&h, "{\"base_url\":\"http://127.0.0.1:%d\",\"max_body_bytes\":8388608}",
               g_server.port, "{}");
    wait_state(&h, SANDBOX_READY);
    sandbox_snapshot s;
    sandbox_pool_snapshot(h.pool, &s);
    json_t *sb = json_object_get(s.descriptor, "sandbox");
    assert_string_equal(json_string_value(json_object_get(sb, "seccomp")), "on");
    assert_true(json_is_object(json_object_get(sb, "landlock")) ||
                strncmp(json_string_value(json_object_get(sb, "landlock")), "unavailable", 11) == 0);
    json_decref(s.descriptor);

    char input[128];
    snprintf(input, sizeof input, "{\"method\":\"GET\",\"path\":\"/big?bytes=%d\"}", DOWN);
    sandbox_call c = {.action = "request", .input_json = input, .input_len = strlen(input),
                      .idempotency_key = "k-big", .attempt = 1};
    memset(&r, 0, sizeof r);
    assert_int_equal(sandbox_pool_invoke(h.pool, &c, on_done, &r), AR_OK);
    assert_true(run_until(&h, pred_done, &r));
    if (!r.ok)
        fail_msg("GET /big failed: %s", r.message);
    json_t *v = json_loads(r.result, 0, NULL);
    const char *data = json_string_value(json_object_get(json_object_get(v, "body"), "data"));
    assert_non_null(data);
    assert_int_equal(strlen(data), DOWN);
    assert_int_equal(strspn(data, "x"), DOWN);
    json_decref(v);
    rec_clear(&r);

    /* {"method":"POST","path":"/upload","body":{"blob":"yyy..."}} */
    size_t cap = UP + 128;
    char *big = malloc(cap);
    int head = snprintf(big, cap, "{\"method\":\"POST\",\"path\":\"/upload\",\"body\":{\"blob\":\"");
    memset(big + head, 'y', UP);
    snprintf(big + head + UP, cap - head - UP, "\"}}");
    sandbox_call up = {.action = "request", .input_json = big, .input_len = strlen(big),
                       .idempotency_key = "k-up", .attempt = 1};
    memset(&r, 0, sizeof r);
    assert_int_equal(sandbox_pool_invoke(h.pool, &up, on_done, &r), AR_OK);
    assert_true(run_until(&h, pred_done, &r));
    free(big);
    if (!r.ok)
        fail_msg("POST /upload failed: %s", r.message);
    v = json_loads(r.result, 0, NULL);
    json_int_t received = json_integer_value(json_object_get(json_object_get(v, "body"), "received"));
    assert_true(received >= UP);
    json_decref(v);
    rec_clear(&r);
    /* the process survived both */
    sandbox_pool_snapshot(h.pool, &s);
    assert_int_equal(s.restarts, 0);
    json_decref(s.descriptor);
    stop_pool(&h);
}

/* A name other than "localhost" that /etc/hosts maps to 127.0.0.1 (curl resolves "localhost"
 * itself), or "" when there is none. */
static void loopback_alias(char *out, size_t cap)
{
    char line[512];
    out[0] = '\0';
    FILE *f = fopen("/etc/hosts", "r");
    if (!f)
        return;
    while (!out[0] && fgets(line, sizeof line, f)) {
        char *save = NULL, *addr = strtok_r(line, " \t\n", &save);
        if (!addr || strcmp(addr, "127.0.0.1") != 0)
            continue;
        for (char *name = strtok_r(NULL, " \t\n", &save); name && name[0] != '#';
             name = strtok_r(NULL, " \t\n", &save)) {
            if (strcmp(name, "localhost") != 0 && strlen(name) < cap) {
                snprintf(out, cap, "%s", name);
                break;
            }
        }
    }
    fclose(f);
}

/* The resolver (getaddrinfo in curl's resolver thread, NSS modules loaded late, /etc/hosts)
 * works inside the sandbox. */
static void test_hostname_resolved_in_sandbox(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    char alias[128], config[256];
    loopback_alias(alias, sizeof alias);
    if (!alias[0]) {
        print_message("/etc/hosts names nothing but localhost for 127.0.0.1: skipped\n");
        skip();
    }
    snprintf(config, sizeof config, "{\"base_url\":\"http://%s:%%d\"}", alias);
    start_http(&h, config, g_server.port, "{}");
    wait_state(&h, SANDBOX_READY);
    request(&h, "{\"method\":\"GET\",\"path\":\"/items/7\"}", "k-name", 0, &r);
    if (!r.ok)
        fail_msg("GET via %s failed: %s", alias, r.message);
    assert_json(r.result, "{\"status\":200,\"headers\":{\"content-type\":"
                          "\"application/json; charset=utf-8\"},\"body\":{\"id\":7}}");
    rec_clear(&r);
    stop_pool(&h);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_post_sends_auth_key_and_body),
    cmocka_unit_test(test_get_sends_no_idempotency_key),
    cmocka_unit_test(test_status_classes),
    cmocka_unit_test(test_reset_after_request_is_unknown_outcome),
    cmocka_unit_test(test_deadline_is_timeout),
    cmocka_unit_test(test_connection_refused_is_retryable),
    cmocka_unit_test(test_missing_secret_refuses_pool),
    cmocka_unit_test(test_other_auth_types),
    cmocka_unit_test(test_bad_input_is_invalid),
    cmocka_unit_test(test_secret_redacted_from_result),
    cmocka_unit_test(test_lookup_through_configured_path),
    cmocka_unit_test(test_big_bodies_under_the_filter),
    cmocka_unit_test(test_hostname_resolved_in_sandbox),
};

AR_TEST_MAIN(tests, server_start, server_stop)
