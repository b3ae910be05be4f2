/*
 * loadgen.c - aiorun-loadgen: the load generator of tools/bench, and the instant HTTP target it
 * measures the http connector against.
 *
 *   aiorun-loadgen run --url http://127.0.0.1:PORT [options]
 *       Closed-loop clients: each sends a request, waits for the whole answer, records its
 *       latency (CLOCK_MONOTONIC), and sends the next one at once, over one keep-alive
 *       connection. Time is cut into a warm-up window and --runs windows of --duration seconds;
 *       a request counts in the window in which its answer arrived. Per window: requests/s and
 *       the exact p50/p90/p99/max of its latencies (sorted samples, nearest rank). Prints one
 *       JSON object with the median, min and max of each figure over the windows.
 *       --path P (/v1/actions)  --method POST|GET (POST)  --body JSON  --token-file F
 *       --concurrency N (1)     --client raw|curl (raw)   --threads T (1; raw client only)
 *       --fresh                 a new connection for every request (raw client only)
 *       --expect TEXT           an answer counts as ok only with a 2xx status and TEXT in its body
 *       --warmup S (1)  --runs N (5)  --duration S (2)  --label NAME
 *   aiorun-loadgen serve [--port N] [--threads T]
 *       The instant target: answers every request with 200 {"ok":true}, keep-alive, from T
 *       epoll threads (SO_REUSEPORT). Prints "listening on 127.0.0.1:PORT" first on stdout;
 *       runs until SIGTERM or SIGINT.
 *   aiorun-loadgen wait --url URL [--path /healthz] [--timeout S]
 *       Poll (every millisecond) until GET answers 200; print the milliseconds waited. Exit 1
 *       on timeout.
 *   aiorun-loadgen free-port
 *       Print a TCP port free on 127.0.0.1 at this moment.
 *
 * The raw client is a single epoll thread (by default) driving every connection: HTTP/1.1 with
 * Content-Length or chunked answers. The curl client runs one thread with one easy handle per
 * connection (curl keeps the connection alive). tools/bench measures which costs less CPU per
 * request; the raw one leaves more of the two cores to the daemon.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_common.h"

#define GRACE_NS (20LL * 1000000000)   /* how long to wait for answers still due at the end */

typedef struct lg_opts {
    char host[64];
    int port;
    const char *path;
    const char *method;
    const char *body;
    char token[256];
    int concurrency;
    int threads;
    int use_curl;
    int fresh;
    const char *expect;
    double warmup_s, duration_s;
    int runs;
    const char *label;
    /* derived */
    char *request;            /* the raw request text */
    size_t request_len;
    int64_t t0, t_end;        /* start of the warm-up, end of the last run */
} lg_opts;

typedef struct sample {
    int64_t end_ns;
    uint32_t lat_ns_lo;       /* latency, split to keep the sample small and exact */
    uint16_t lat_ns_hi;
    uint8_t ok;
} sample;

typedef struct samples {
    sample *v;
    size_t n, cap;
    char first_error[512];
} samples;

static void record(samples *s, int64_t start, int64_t end, int ok, const char *why, const char *body,
                   size_t body_len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 65536;
        sample *v = realloc(s->v, cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "loadgen: out of memory for samples\n");
            exit(1);
        }
        s->v = v;
        s->cap = cap;
    }
    uint64_t lat = (uint64_t)(end - start);
    s->v[s->n++] = (sample){.end_ns = end, .lat_ns_lo = (uint32_t)lat, .lat_ns_hi = (uint16_t)(lat >> 32), .ok = (uint8_t)ok};
    if (!ok && !s->first_error[0])
        snprintf(s->first_error, sizeof s->first_error, "%s: %.*s", why, (int)(body_len > 300 ? 300 : body_len),
                 body ? body : "");
}

static uint64_t sample_lat(const sample *s)
{
    return (uint64_t)s->lat_ns_lo | ((uint64_t)s->lat_ns_hi << 32);
}

/* ---- URL and sockets ----------------------------------------------------------------------- */

static int parse_url(const char *url, char *host, size_t cap, int *port)
{
    const char *p = strncmp(url, "http://", 7) == 0 ? url + 7 : NULL;
    if (!p)
        return -1;
    const char *colon = strchr(p, ':');
    if (!colon || (size_t)(colon - p) >= cap)
        return -1;
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    if (strcmp(host, "localhost") == 0)
        snprintf(host, cap, "127.0.0.1");
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static int connect_to(const char *host, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Write all of buf to a non-blocking socket (waiting for room when it is full). */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w > 0) {
            buf += w;
            len -= (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, 1000);
        } else {
            return -1;
        }
    }
    return 0;
}

/* ---- HTTP message framing -------------------------------------------------------------- */

typedef struct http_msg {
    size_t total;             /* bytes of the whole message */
    int status;               /* answers only */
    const char *body;
    size_t body_len;
    int close;                /* "Connection: close" */
} http_msg;

static int header_is(const char *line, size_t len, const char *name, const char **value)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return 0;
    const char *v = line + n + 1;
    while (v < line + len && (*v == ' ' || *v == '\t'))
        v++;
    *value = v;
    return 1;
}

/* The end of a chunked body starting at buf[start], or 0 while it is incomplete. */
static size_t chunked_end(const char *buf, size_t len, size_t start)
{
    size_t i = start;
    for (;;) {
        const char *eol = memmem(buf + i, len - i, "\r\n", 2);
        if (!eol)
            return 0;
        unsigned long size = strtoul(buf + i, NULL, 16);
        i = (size_t)(eol - buf) + 2;
        if (size == 0) {
            const char *end = memmem(buf + i - 2, len - (i - 2), "\r\n\r\n", 4);
            return end ? (size_t)(end - buf) + 4 : 0;
        }
        if (len - i < size + 2)
            return 0;
        i += size + 2;
    }
}

/* 1: buf starts with a complete message (filled into *m); 0: not yet; -1: malformed. is_answer:
 * parse a status line; else a request line (a request without Content-Length has no body). */
static int parse_http(const char *buf, size_t len, int is_answer, http_msg *m)
{
    const char *hend = memmem(buf, len, "\r\n\r\n", 4);
    if (!hend)
        return len > 65536 ? -1 : 0;
    memset(m, 0, sizeof *m);
    size_t head = (size_t)(hend - buf) + 4;
    if (is_answer) {
        if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
            return -1;
        m->status = atoi(buf + 9);
    }
    long content_length = -1;
    int chunked = 0;
    const char *line = memmem(buf, head, "\r\n", 2) + 2;
    while (line < hend) {
        const char *eol = memmem(line, (size_t)(hend + 2 - line), "\r\n", 2);
        size_t l = (size_t)(eol - line);
        const char *v;
        if (header_is(line, l, "Content-Length", &v))
            content_length = strtol(v, NULL, 10);
        else if (header_is(line, l, "Transfer-Encoding", &v) && strncasecmp(v, "chunked", 7) == 0)
            chunked = 1;
        else if (header_is(line, l, "Connection", &v) && strncasecmp(v, "close", 5) == 0)
            m->close = 1;
        line = eol + 2;
    }
    m->body = buf + head;
    if (chunked) {
        size_t end = chunked_end(buf, len, head);
        if (!end)
            return 0;
        m->total = end;
    } else if (content_length >= 0) {
        if (len - head < (size_t)content_length)
            return 0;
        m->total = head + (size_t)content_length;
    } else if (is_answer && m->status != 204 && m->status != 304) {
        return -1;             /* a body until close: not something these servers send */
    } else {
        m->total = head;
    }
    m->body_len = m->total - head;
    return 1;
}

/* ---- the raw client ------------------------------------------------------------------------ */

typedef struct conn {
    int fd;
    char *buf;
    size_t len, cap;
    int64_t sent_ns;
    int waiting;
} conn;

typedef struct worker {
    pthread_t th;
    lg_opts *o;
    pthread_barrier_t *start;
    conn *conns;
    size_t n_conns;
    samples s;
    size_t outstanding;
    int failed;
} worker;

static int conn_open(worker *w, conn *c, int ep)
{
    c->fd = connect_to(w->o->host, w->o->port);
    if (c->fd < 0)
        return -1;
    c->len = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_close(conn *c, int ep)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

/* Send the next request on c, or retire c when the time is up. */
static void conn_next(worker *w, conn *c, int ep)
{
    int64_t now = bench_now_ns();
    if (now >= w->o->t_end) {
        c->waiting = 0;
        conn_close(c, ep);
        return;
    }
    for (int tries = 0; tries < 2; tries++) {
        if (c->fd < 0 && conn_open(w, c, ep) != 0) {
            record(&w->s, now, bench_now_ns(), 0, "connect failed", strerror(errno), strlen(strerror(errno)));
            usleep(10000);
            continue;
        }
        c->sent_ns = bench_now_ns();
        if (write_all(c->fd, w->o->request, w->o->request_len) == 0) {
            c->waiting = 1;
            return;
        }
        conn_close(c, ep); /* the server closed an idle keep-alive connection: reconnect */
    }
    c->waiting = 0;
    w->failed = 1;
}

static void conn_readable(worker *w, conn *c, int ep)
{
    int eof = 0;
    for (;;) {
        if (c->cap - c->len < 16384) {
            size_t cap = c->cap ? c->cap * 2 : 32768;
            char *b = realloc(c->buf, cap);
            if (!b) {
                fprintf(stderr, "loadgen: out of memory\n");
                exit(1);
            }
            c->buf = b;
            c->cap = cap;
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (r > 0) {
            c->len += (size_t)r;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        eof = 1; /* closed by the server (perhaps right after a whole answer) */
        break;
    }
    http_msg m;
    int rc = parse_http(c->buf, c->len, 1, &m);
    if (rc == 0 || !c->waiting) {
        if (!eof)
            return;
        int was_waiting = c->waiting;
        conn_close(c, ep);
        if (was_waiting) {
            record(&w->s, c->sent_ns, bench_now_ns(), 0, "connection closed before the answer", NULL, 0);
            conn_next(w, c, ep);
        }
        return;
    }
    if (eof)
        m.close = 1;
    int64_t now = bench_now_ns();
    if (rc < 0) {
        record(&w->s, c->sent_ns, now, 0, "malformed answer", c->buf, c->len);
        conn_close(c, ep);
    } else {
        int ok = m.status >= 200 && m.status < 300 &&
                 (!w->o->expect || memmem(m.body, m.body_len, w->o->expect, strlen(w->o->expect)));
        char why[32];
        snprintf(why, sizeof why, "status %d", m.status);
        record(&w->s, c->sent_ns, now, ok, why, m.body, m.body_len);
        memmove(c->buf, c->buf + m.total, c->len - m.total);
        c->len -= m.total;
        if (m.close || w->o->fresh)
            conn_close(c, ep);
    }
    c->waiting = 0;
    conn_next(w, c, ep);
}

static size_t count_waiting(const worker *w)
{
    size_t n = 0;
    for (size_t i = 0; i < w->n_conns; i++)
        n += w->conns[i].waiting;
    return n;
}

static void *raw_worker(void *arg)
{
    worker *w = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (size_t i = 0; i < w->n_conns; i++) {
        w->conns[i].fd = -1;
        if (conn_open(w, &w->conns[i], ep) != 0) {
            fprintf(stderr, "loadgen: cannot connect to %s:%d: %s\n", w->o->host, w->o->port, strerror(errno));
            w->failed = 1;
        }
    }
    pthread_barrier_wait(w->start);
    if (!w->failed)
        for (size_t i = 0; i < w->n_conns; i++)
            conn_next(w, &w->conns[i], ep);
    struct epoll_event evs[128];
    while (!w->failed) {
        int64_t now = bench_now_ns();
        if (now >= w->o->t_end && count_waiting(w) == 0)
            break;
        if (now >= w->o->t_end + GRACE_NS) {
            fprintf(stderr, "loadgen: %zu answers still missing %lld s after the end; giving up on them\n",
                    count_waiting(w), GRACE_NS / 1000000000);
            break;
        }
        int n = epoll_wait(ep, evs, 128, 100);
        for (int i = 0; i < n; i++)
            conn_readable(w, evs[i].data.ptr, ep);
    }
    for (size_t i = 0; i < w->n_conns; i++)
        conn_close(&w->conns[i], ep);
    close(ep);
    return NULL;
}

/* ---- the curl client ------------------------------------------------------------------------ */

typedef struct curl_buf {
    char *p;
    size_t len, cap;
} curl_buf;

static size_t on_curl_body(char *data, size_t size, size_t nmemb, void *arg)
{
    curl_buf *b = arg;
    size_t n = size * nmemb;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return n;
}

static void *curl_worker(void *arg)
{
    worker *w = arg;
    lg_opts *o = w->o;
    char url[512], auth[320];
    snprintf(url, sizeof url, "http://%s:%d%s", o->host, o->port, o->path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->token);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (o->token[0])
        hdrs = curl_slist_append(hdrs, auth);
    CURL *h = curl_easy_init();
    curl_buf b = {0};
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_curl_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 60000L);
    if (strcmp(o->method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, o->body ? o->body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)(o->body ? strlen(o->body) : 0));
        if (strcmp(o->method, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, o->method);
    }
    pthread_barrier_wait(w->start);
    while (bench_now_ns() < o->t_end) {
        b.len = 0;
        int64_t t = bench_now_ns();
        CURLcode rc = curl_easy_perform(h);
        int64_t e = bench_now_ns();
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        int ok = rc == CURLE_OK && status >= 200 && status < 300 &&
                 (!o->expect || (b.len && memmem(b.p, b.len, o->expect, strlen(o->expect))));
        char why[64];
        snprintf(why, sizeof why, rc == CURLE_OK ? "status %ld" : "curl error %ld", rc == CURLE_OK ? status : (long)rc);
        record(&w->s, t, e, ok, why, b.p, b.len);
        if (rc != CURLE_OK)
            usleep(10000);
    }
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    free(b.p);
    return NULL;
}

/* ---- run: windows and the report ----------------------------------------------------------- */

static int read_token(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (!fgets(out, (int)cap, f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    return 0;
}

static void build_request(lg_opts *o)
{
    size_t body_len = o->body ? strlen(o->body) : 0;
    char auth[320] = "";
    if (o->token[0])
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", o->token);
    size_t cap = 1024 + body_len + strlen(o->path);
    o->request = malloc(cap);
    int n;
    if (strcmp(o->method, "GET") == 0 && !o->body)
        n = snprintf(o->request, cap, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", o->path, o->host, o->port, auth);
    else
        n = snprintf(o->request, cap,
                     "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     o->method, o->path, o->host, o->port, auth, body_len, o->body ? o->body : "");
    o->request_len = (size_t)n;
}

static int cmd_run(int argc, char **argv)
{
    lg_opts o = {.path = "/v1/actions", .method = "POST", .concurrency = 1, .threads = 1, .warmup_s = 1,
                 .duration_s = 2, .runs = 5, .label = "run"};
    const char *url = NULL, *token_file = NULL, *client = "raw";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--fresh") == 0) { o.fresh = 1; continue; }
        if (!v) { fprintf(stderr, "loadgen run: %s needs a value\n", a); return 2; }
        i++;
        if (strcmp(a, "--url") == 0) url = v;
        else if (strcmp(a, "--path") == 0) o.path = v;
        else if (strcmp(a, "--method") == 0) o.method = v;
        else if (strcmp(a, "--body") == 0) o.body = v;
        else if (strcmp(a, "--token-file") == 0) token_file = v;
        else if (strcmp(a, "--concurrency") == 0) o.concurrency = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--threads") == 0) o.threads = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--client") == 0) client = v;
        else if (strcmp(a, "--expect") == 0) o.expect = v;
        else if (strcmp(a, "--warmup") == 0) o.warmup_s = bench_arg_double(a, v);
        else if (strcmp(a, "--duration") == 0) o.duration_s = bench_arg_double(a, v);
        else if (strcmp(a, "--runs") == 0) o.runs = (int)bench_arg_long(a, v);
        else if (strcmp(a, "--label") == 0) o.label = v;
        else { fprintf(stderr, "loadgen run: unknown option %s\n", a); return 2; }
    }
    if (!url || parse_url(url, o.host, sizeof o.host, &o.port) != 0) {
        fprintf(stderr, "loadgen run: --url http://HOST:PORT is required\n");
        return 2;
    }
    if (token_file && read_token(token_file, o.token, sizeof o.token) != 0) {
        fprintf(stderr, "loadgen run: cannot read the token from %s\n", token_file);
        return 2;
    }
    if (strcmp(client, "raw") != 0 && strcmp(client, "curl") != 0) {
        fprintf(stderr, "loadgen run: --client raw or curl\n");
        return 2;
    }
    o.use_curl = strcmp(client, "curl") == 0;
    if (o.concurrency < 1 || o.runs < 1 || o.runs > BENCH_MAX_RUNS || o.duration_s <= 0) {
        fprintf(stderr, "loadgen run: --concurrency, --runs (1..%d) and --duration must be positive\n", BENCH_MAX_RUNS);
        return 2;
    }
    if (o.use_curl)
        o.threads = o.concurrency;
    if (o.threads < 1)
        o.threads = 1;
    if (o.threads > o.concurrency)
        o.threads = o.concurrency;
    build_request(&o);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);

    worker *ws = calloc((size_t)o.threads, sizeof *ws);
    conn *conns = calloc((size_t)o.concurrency, sizeof *conns);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)o.threads + 1);
    for (int t = 0; t < o.threads; t++) {
        ws[t].o = &o;
        ws[t].start = &start;
        /* connections t, t + threads, ...: give each thread its share, contiguously */
        size_t first = (size_t)o.concurrency * (size_t)t / (size_t)o.threads;
        size_t last = (size_t)o.concurrency * (size_t)(t + 1) / (size_t)o.threads;
        ws[t].conns = conns + first;
        ws[t].n_conns = last - first;
    }
    /* the windows are fixed before any thread starts sending */
    int64_t warm_ns = (int64_t)(o.warmup_s * 1e9), run_ns = (int64_t)(o.duration_s * 1e9);
    o.t0 = bench_now_ns() + 20000000; /* room for the threads to connect */
    o.t_end = o.t0 + warm_ns + run_ns * o.runs;
    for (int t = 0; t < o.threads; t++)
        pthread_create(&ws[t].th, NULL, o.use_curl ? curl_worker : raw_worker, &ws[t]);
    int64_t now = bench_now_ns();
    if (now < o.t0)
        usleep((useconds_t)((o.t0 - now) / 1000));
    int64_t cpu0 = bench_cpu_ns();
    pthread_barrier_wait(&start);
    int failed = 0;
    for (int t = 0; t < o.threads; t++) {
        pthread_join(ws[t].th, NULL);
        failed |= ws[t].failed;
    }
    int64_t cpu = bench_cpu_ns() - cpu0;

    /* per window: rate, errors, latency quantiles */
    bench_series rate = {0}, p50 = {0}, p90 = {0}, p99 = {0}, pmax = {0}, errs = {0};
    size_t total_ok = 0, total_err = 0, total_all = 0;
    uint64_t *lat = NULL;
    size_t lat_cap = 0;
    for (int r = 0; r < o.runs; r++) {
        int64_t from = o.t0 + warm_ns + run_ns * r, to = from + run_ns;
        size_t n = 0, e = 0;
        for (int t = 0; t < o.threads; t++)
            for (size_t i = 0; i < ws[t].s.n; i++) {
                const sample *s = &ws[t].s.v[i];
                if (s->end_ns < from || s->end_ns >= to)
                    continue;
                if (!s->ok) {
                    e++;
                    continue;
                }
                if (n == lat_cap) {
                    lat_cap = lat_cap ? lat_cap * 2 : 65536;
                    lat = realloc(lat, lat_cap * sizeof *lat);
                }
                lat[n++] = sample_lat(s);
            }
        bench_sort_u64(lat, n);
        bench_series_add(&rate, (double)n / o.duration_s);
        bench_series_add(&errs, (double)e);
        bench_series_add(&p50, (double)bench_quantile(lat, n, 0.50) / 1e6);
        bench_series_add(&p90, (double)bench_quantile(lat, n, 0.90) / 1e6);
        bench_series_add(&p99, (double)bench_quantile(lat, n, 0.99) / 1e6);
        bench_series_add(&pmax, n ? (double)lat[n - 1] / 1e6 : 0);
        total_ok += n;
        total_err += e;
    }
    const char *first_error = "";
    for (int t = 0; t < o.threads; t++) {
        total_all += ws[t].s.n;
        if (!first_error[0] && ws[t].s.first_error[0])
            first_error = ws[t].s.first_error;
    }
    double cpu_per_req = total_all ? (double)cpu / 1e3 / (double)total_all : 0.0;
    fprintf(stderr, "%-28s c=%-3d %9.0f req/s  p50 %7.3f  p90 %7.3f  p99 %7.3f ms  (rate min %.0f max %.0f; client %.1f us CPU/req)%s%s\n",
            o.label, o.concurrency, bench_series_median(&rate), bench_series_median(&p50), bench_series_median(&p90),
            bench_series_median(&p99), bench_series_min(&rate), bench_series_max(&rate), cpu_per_req,
            total_err ? "  ERRORS: " : "", total_err ? first_error : "");
    json_t *out = json_pack("{s:s, s:s, s:i, s:i, s:b, s:f, s:f, s:i, s:I, s:I, s:f, s:o, s:o, s:o, s:o, s:o, s:o}",
        "label", o.label, "client", o.use_curl ? "curl" : "raw", "concurrency", o.concurrency, "threads", o.threads,
        "fresh_connections", o.fresh, "warmup_s", o.warmup_s, "run_s", o.duration_s, "runs", o.runs,
        "measured_ok", (json_int_t)total_ok, "errors", (json_int_t)total_err,
        "client_cpu_us_per_request", cpu_per_req,
        "rate", bench_series_json(&rate), "p50_ms", bench_series_json(&p50), "p90_ms", bench_series_json(&p90),
        "p99_ms", bench_series_json(&p99), "max_ms", bench_series_json(&pmax), "errors_per_run", bench_series_json(&errs));
    if (total_err)
        json_object_set_new(out, "first_error", json_string(first_error));
    bench_print_json(out);
    for (int t = 0; t < o.threads; t++)
        free(ws[t].s.v);
    for (int i = 0; i < o.concurrency; i++)
        free(conns[i].buf);
    free(lat);
    free(conns);
    free(ws);
    free(o.request);
    pthread_barrier_destroy(&start);
    curl_global_cleanup();
    return failed ? 1 : 0;
}

/* ---- serve: the instant target ------------------------------------------------------------- */

static const char ANSWER[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
static const char ANSWER_CLOSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}";

typedef struct server_conn {
    int fd;
    char *buf;
    size_t len, cap;
} server_conn;

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void server_drop(int ep, server_conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c);
}

static void server_readable(int ep, server_conn *c)
{
    for (;;) {
        if (c->cap - c->len < 4096) {
            size_t cap = c->cap ? c->cap * 2 : 16384;
            char *b = realloc(c->buf, cap);
            if (!b) {
                server_drop(ep, c);
                return;
            }
            c->buf = b;
            c->cap = cap;
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (r > 0) {
            c->len += (size_t)r;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        server_drop(ep, c);
        return;
    }
    http_msg m;
    int rc;
    while ((rc = parse_http(c->buf, c->len, 0, &m)) == 1) {
        const char *a = m.close ? ANSWER_CLOSE : ANSWER;
        size_t alen = m.close ? sizeof ANSWER_CLOSE - 1 : sizeof ANSWER - 1;
        if (write_all(c->fd, a, alen) != 0 || m.close) {
            server_drop(ep, c);
            return;
        }
        memmove(c->buf, c->buf + m.total, c->len - m.total);
        c->len -= m.total;
    }
    if (rc < 0)
        server_drop(ep, c);
}

static void *server_thread(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[128];
    for (;;) {
        int n = epoll_wait(ep, evs, 128, -1);
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    server_conn *c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
            } else {
                server_readable(ep, evs[i].data.ptr);
            }
        }
    }
    return NULL;
}

static int cmd_serve(int argc, char **argv)
{
    int port = 0, threads = 1;
    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = (int)bench_arg_long(argv[i], argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = (int)bench_arg_long(argv[i], argv[i + 1]);
        else {
            fprintf(stderr, "loadgen serve: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (argc % 2) {
        fprintf(stderr, "loadgen serve: %s needs a value\n", argv[argc - 1]);
        return 2;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);
    int first = listen_on(port);
    if (first < 0) {
        fprintf(stderr, "loadgen serve: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(first, (struct sockaddr *)&sa, &len);
    port = ntohs(sa.sin_port);
    for (int t = 0; t < (threads < 1 ? 1 : threads); t++) {
        int fd = t == 0 ? first : listen_on(port);
        pthread_t th;
        if (fd < 0 || pthread_create(&th, NULL, server_thread, (void *)(intptr_t)fd) != 0) {
            fprintf(stderr, "loadgen serve: cannot start thread %d\n", t);
            return 1;
        }
        pthread_detach(th);
    }
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
    int sig;
    sigwait(&stop, &sig);
    return 0;
}

/* ---- wait, free-port ------------------------------------------------------------------------ */

static int probe(const char *host, int port, const char *path)
{
    int fd = connect_to(host, port);
    if (fd < 0)
        return 0;
    char req[512], buf[4096];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", path, host, port);
    int ok = 0;
    if (write_all(fd, req, (size_t)n) == 0) {
        size_t len = 0;
        int64_t until = bench_now_ns() + 2000000000LL;
        while (len < sizeof buf - 1 && bench_now_ns() < until) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            if (poll(&pfd, 1, 100) <= 0)
                continue;
            ssize_t r = recv(fd, buf + len, sizeof buf - 1 - len, 0);
            if (r <= 0)
                break;
            len += (size_t)r;
            http_msg m;
            if (parse_http(buf, len, 1, &m) != 0) {
                ok = len >= 12 && strncmp(buf + 9, "200", 3) == 0;
                break;
            }
        }
    }
    close(fd);
    return ok;
}

static int cmd_wait(int argc, char **argv)
{
    const char *url = NULL, *path = "/healthz";
    double timeout_s = 60;
    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--path") == 0)
            path = argv[i + 1];
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_s = bench_arg_double(argv[i], argv[i + 1]);
        else {
            fprintf(stderr, "loadgen wait: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    char host[64];
    int port;
    if (!url || parse_url(url, host, sizeof host, &port) != 0) {
        fprintf(stderr, "loadgen wait: --url http://HOST:PORT is required\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int64_t t0 = bench_now_ns(), until = t0 + (int64_t)(timeout_s * 1e9);
    while (bench_now_ns() < until) {
        if (probe(host, port, path)) {
            printf("%.1f\n", (double)(bench_now_ns() - t0) / 1e6);
            return 0;
        }
        usleep(1000);
    }
    fprintf(stderr, "loadgen wait: %s%s did not answer 200 within %.0f s\n", url, path, timeout_s);
    return 1;
}

static int cmd_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        fprintf(stderr, "loadgen free-port: %s\n", strerror(errno));
        return 1;
    }
    close(fd);
    printf("%d\n", ntohs(sa.sin_port));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "wait") == 0)
        return cmd_wait(argc - 2, argv + 2);
    if (argc == 2 && strcmp(argv[1], "free-port") == 0)
        return cmd_free_port();
    fprintf(stderr, "usage: aiorun-loadgen run|serve|wait|free-port [options] (see the top of tools/benchmarks/loadgen.c)\n");
    return 2;
}
