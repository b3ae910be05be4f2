/* harness.c - the real daemon under test (see harness.h). */
#include "harness.h"

#include "auth.h"
#include "config.h"
#include "journal.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int harness_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

void harness_test_plugin(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/test-plugins/%s.so", AIORUN_BUILD_DIR, name);
}

void harness_bin(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/bin/%s", AIORUN_BUILD_DIR, name);
}

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    char buf[8192];
    size_t n;
    int ok = in && out;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    return ok ? 0 : -1;
}

/* policies/ = the shipped default.lua + every .lua file of tests/integration/policies */
static int write_policies(const harness *h)
{
    char dir[400], from[1024], to[1024];
    snprintf(dir, sizeof dir, "%s/policies", h->dir);
    if (mkdir(dir, 0700) != 0)
        return -1;
    snprintf(from, sizeof from, "%s/policies/default.lua", AIORUN_SOURCE_DIR);
    snprintf(to, sizeof to, "%s/default.lua", dir);
    if (copy_file(from, to) != 0)
        return -1;
    char src[400];
    snprintf(src, sizeof src, "%s/tests/integration/policies", AIORUN_SOURCE_DIR);
    DIR *d = opendir(src);
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0)
            continue;
        snprintf(from, sizeof from, "%s/%s", src, e->d_name);
        snprintf(to, sizeof to, "%s/%s", dir, e->d_name);
        if (copy_file(from, to) != 0) {
            closedir(d);
            return -1;
        }
    }
    closedir(d);
    return 0;
}

/* A self-signed certificate for 127.0.0.1, made at test time. */
static int make_certificate(harness *h)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout '%s/key.pem' -out '%s/cert.pem' -days 2 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1", h->dir, h->dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "harness: openssl could not make a test certificate\n");
        return -1;
    }
    snprintf(h->cainfo, sizeof h->cainfo, "%s/cert.pem", h->dir);
    return 0;
}

static int write_config(const harness *h, const harness_opts *o)
{
    char p_ok[300], p_crash[300], p_hang[300], p_garbage[300], p_old[300];
    harness_test_plugin(p_ok, sizeof p_ok, "t_ok");
    harness_test_plugin(p_crash, sizeof p_crash, "t_crash");
    harness_test_plugin(p_hang, sizeof p_hang, "t_hang");
    harness_test_plugin(p_garbage, sizeof p_garbage, "t_garbage");
    harness_test_plugin(p_old, sizeof p_old, "t_abi_old_minor");
    FILE *f = fopen(h->config_path, "w");
    if (!f)
        return -1;
    fprintf(f,
            "{\n"
            "  \"listen\": \"127.0.0.1:%d\",\n"
            "  \"data_dir\": \"var\",\n"
            "  \"plugin_dir\": \"%s/plugins\",\n"
            "  \"policy_dir\": \"policies\",\n"
            "  \"map_size_mb\": %d,\n"
            "  \"max_body_bytes\": %d,\n"
            "%s"
            "%s%s"
            "  \"connectors\": {\n"
            "    \"echo\": {\"plugin\": \"echo\", \"processes\": 2, \"timeout_ms\": 5000},\n"
            "    \"t_ok\": {\"plugin\": \"%s\", \"processes\": 2, \"timeout_ms\": 5000},\n"
            "    \"t_crash\": {\"plugin\": \"%s\", \"processes\": 1, \"timeout_ms\": 5000, \"retry\": {\"max_attempts\": 1}},\n"
            "    \"t_hang\": {\"plugin\": \"%s\", \"processes\": 1, \"timeout_ms\": 500, \"retry\": {\"max_attempts\": 1}},\n"
            "    \"t_garbage\": {\"plugin\": \"%s\", \"processes\": 1, \"timeout_ms\": 5000, \"retry\": {\"max_attempts\": 1}},\n"
            "    \"t_old\": {\"plugin\": \"%s\", \"processes\": 1}%s%s\n"
            "  }\n"
            "}\n",
            h->port, AIORUN_BUILD_DIR, o->map_size_mb ? o->map_size_mb : 64,
            o->max_body_bytes ? o->max_body_bytes : 1048576,
            o->tls ? "  \"tls\": {\"cert\": \"cert.pem\", \"key\": \"key.pem\"},\n" : "",
            o->extra_top ? o->extra_top : "", o->extra_top ? ",\n" : "", p_ok, p_crash, p_hang, p_garbage, p_old,
            o->extra_connectors ? ",\n    " : "", o->extra_connectors ? o->extra_connectors : "");
    return fclose(f);
}

static int wait_healthy(harness *h, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 50) {
        if (harness_http(h, "GET", "/healthz", NULL, NULL) == 200)
            return 0;
        int status;
        if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
            h->pid = 0;
            return -1;
        }
        usleep(50 * 1000);
    }
    return -1;
}

void harness_print_log(const harness *h)
{
    FILE *f = fopen(h->log_path, "r");
    char line[1024];
    fprintf(stderr, "---- daemon log (%s) ----\n", h->log_path);
    while (f && fgets(line, sizeof line, f))
        fputs(line, stderr);
    if (f)
        fclose(f);
    fprintf(stderr, "---- end of daemon log ----\n");
}

int harness_restart(harness *h)
{
    char bin[300];
    harness_bin(bin, sizeof bin, "aiorun");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, h->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_addopen(&fa, 1, h->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    char *argv[] = {bin, "--config", h->config_path, NULL};
    int rc = posix_spawn(&h->pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "cannot spawn %s: %s\n", bin, strerror(rc));
        return -1;
    }
    if (wait_healthy(h, 15000) != 0) {
        harness_print_log(h);
        return -1;
    }
    return 0;
}

/* Open the data directory's token store the way aioctl --config does. */
typedef struct store {
    config *cfg;
    journal *j;
    auth *au;
} store;

static int store_open(harness *h, store *st)
{
    ar_error err = {0};
    char dir[512];
    memset(st, 0, sizeof *st);
    if (config_load_file(h->config_path, &st->cfg, &err) != AR_OK)
        goto fail;
    mkdir(st->cfg->data_dir, 0700);
    config_journal_dir(st->cfg, dir, sizeof dir);
    journal_opts jo = {.dir = dir, .map_size_mb = st->cfg->map_size_mb};
    if (journal_open(&jo, &st->j, &err) != AR_OK || auth_open(st->j, st->cfg->auth_key_file, &st->au, &err) != AR_OK)
        goto fail;
    return 0;
fail:
    fprintf(stderr, "harness: cannot open the token store: %s\n", err.message);
    auth_free(st->au);
    journal_close(st->j);
    config_free(st->cfg);
    return -1;
}

static void store_close(store *st)
{
    auth_free(st->au);
    journal_close(st->j);
    config_free(st->cfg);
}

int harness_token_create(harness *h, const char *name, const char *roles, int64_t expires_ms,
                         char out[HARNESS_TOKEN_MAX])
{
    store st;
    if (store_open(h, &st) != 0)
        return -1;
    unsigned bits;
    ar_error err = {0};
    char token[AUTH_TOKEN_LEN + 1];
    int rc = auth_roles_parse(roles, &bits, &err);
    if (rc == AR_OK)
        rc = auth_token_create(st.au, name, bits, expires_ms, token, &err);
    if (rc == AR_OK)
        snprintf(out, HARNESS_TOKEN_MAX, "%s", token);
    else
        fprintf(stderr, "harness: token %s: %s\n", name, err.message);
    store_close(&st);
    return rc == AR_OK ? 0 : -1;
}

int harness_token_revoke(harness *h, const char *name)
{
    store st;
    if (store_open(h, &st) != 0)
        return -1;
    int rc = auth_token_revoke(st.au, name, NULL);
    store_close(&st);
    return rc == AR_OK ? 0 : -1;
}

int harness_start(harness *h, const harness_opts *opts)
{
    harness_opts none = {0};
    memset(h, 0, sizeof *h);
    snprintf(h->dir, sizeof h->dir, "/tmp/aiorun-it-XXXXXX");
    if (!mkdtemp(h->dir))
        return -1;
    snprintf(h->config_path, sizeof h->config_path, "%s/aiorun.json", h->dir);
    snprintf(h->log_path, sizeof h->log_path, "%s/daemon.log", h->dir);
    h->port = harness_free_port();
    int tls = opts && opts->tls;
    snprintf(h->url, sizeof h->url, "%s://127.0.0.1:%d", tls ? "https" : "http", h->port);
    if (tls && make_certificate(h) != 0)
        return -1;
    if (h->port <= 0 || write_policies(h) != 0 || write_config(h, opts ? opts : &none) != 0 ||
        harness_token_create(h, "test-operator", "operator", 0, h->token) != 0)
        return -1;
    return harness_restart(h);
}

int harness_stop(harness *h)
{
    if (h->pid <= 0)
        return -1;
    kill(h->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 200; i++) {
        if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
            h->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        }
        usleep(50 * 1000);
    }
    fprintf(stderr, "daemon did not stop within 10 s of SIGTERM\n");
    harness_print_log(h);
    harness_kill9(h);
    return -1;
}

void harness_kill9(harness *h)
{
    if (h->pid <= 0)
        return;
    kill(h->pid, SIGKILL);
    waitpid(h->pid, NULL, 0);
    h->pid = 0;
}

void harness_cleanup(harness *h)
{
    if (h->pid > 0)
        harness_stop(h);
    if (h->dir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", h->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", h->dir);
    }
}

typedef struct buf {
    char *data;
    size_t len;
} buf;

static size_t header_seen(char *ptr, size_t size, size_t nmemb, void *arg)
{
    harness *h = arg;
    size_t n = size * nmemb;
    if (n > 12 && strncasecmp(ptr, "Retry-After:", 12) == 0)
        h->last_retry_after = atoi(ptr + 12);
    return n;
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *arg)
{
    buf *b = arg;
    size_t n = size * nmemb;
    char *d = realloc(b->data, b->len + n + 1);
    if (!d)
        return 0;
    memcpy(d + b->len, ptr, n);
    b->data = d;
    b->len += n;
    d[b->len] = '\0';
    return n;
}

long harness_http(harness *h, const char *method, const char *path, const char *body, json_t **out)
{
    return harness_http_as(h, h->token, method, path, body, out);
}

long harness_http_as(harness *h, const char *token, const char *method, const char *path,
                     const char *body, json_t **out)
{
    CURL *c = curl_easy_init();
    char url[512];
    buf b = {0};
    long status = 0;
    /* A full URL is taken as it is (to try plain HTTP on a TLS port, say). */
    snprintf(url, sizeof url, "%s%s", strncmp(path, "http", 4) == 0 ? "" : h->url, path);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    char bearer[128];
    if (token) {
        snprintf(bearer, sizeof bearer, "Authorization: Bearer %s", token);
        hdr = curl_slist_append(hdr, bearer);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_seen);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
    h->last_retry_after = -1;
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 70000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (h->cainfo[0])
        curl_easy_setopt(c, CURLOPT_CAINFO, h->cainfo);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (out)
        *out = b.data ? json_loads(b.data, 0, NULL) : NULL;
    free(b.data);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    return status;
}

long harness_submit(harness *h, json_t **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *doc = json_vpack_ex(NULL, 0, fmt, ap);
    va_end(ap);
    if (!doc)
        return -1;
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    long st = harness_http(h, "POST", "/v1/actions", text, out);
    free(text);
    return st;
}

int harness_run(harness *h, char *const argv[], char *out, size_t cap)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    char env_url[128], env_token[128];
    snprintf(env_url, sizeof env_url, "AIORUN_URL=%s", h->url);
    snprintf(env_token, sizeof env_token, "AIORUN_TOKEN=%s", h->token);
    char *envp[] = {env_url, env_token, "PATH=/usr/bin:/bin", "HOME=/nonexistent", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return -1;
    }
    size_t len = 0;
    ssize_t n;
    char chunk[4096];
    while ((n = read(fds[0], chunk, sizeof chunk)) > 0) {
        size_t take = (size_t)n < cap - 1 - len ? (size_t)n : cap - 1 - len;
        memcpy(out + len, chunk, take);
        len += take;
    }
    out[len] = '\0';
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- the API simulator ---------------------------------------------------------------------- */

int sim_start(sim *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/aiorun-sim-XXXXXX");
    if (!mkdtemp(s->dir))
        return -1;
    char bin[300], port_file[300];
    harness_bin(bin, sizeof bin, "aiorun-sim");
    snprintf(port_file, sizeof port_file, "%s/port", s->dir);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    char *argv[] = {bin, "--port", "0", "--port-file", port_file, "--quiet", NULL};
    int rc = posix_spawn(&s->pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return -1;
    for (int i = 0; i < 200 && !s->port; i++) {
        FILE *f = fopen(port_file, "r");
        if (f) {
            if (fscanf(f, "%d", &s->port) != 1)
                s->port = 0;
            fclose(f);
        }
        if (!s->port)
            usleep(25 * 1000);
    }
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
    return s->port ? 0 : -1;
}

int sim_stop(sim *s)
{
    int status = -1;
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, &status, 0);
        s->pid = 0;
    }
    if (s->dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", s->dir);
        s->dir[0] = '\0';
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

long sim_http(sim *s, const char *method, const char *path, const char *body, json_t **out)
{
    harness h = {0};
    snprintf(h.url, sizeof h.url, "%s", s->url);
    return harness_http_as(&h, NULL, method, path, body, out);
}

long sim_effects(sim *s, const char *key)
{
    char path[400];
    json_t *r = NULL;
    snprintf(path, sizeof path, "/_sim/effects?key=%s", key);
    sim_http(s, "GET", path, NULL, &r);
    long n = r ? (long)json_integer_value(json_object_get(r, "effects")) : -1;
    json_decref(r);
    return n;
}

int harness_teardown(harness *h)
{
    int status = h->pid > 0 ? harness_stop(h) : 0;
    harness_cleanup(h);
    return status == 0 ? 0 : -1;
}

const char *harness_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "(none)";
}
