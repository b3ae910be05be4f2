/* test_aioctl_audit.c - `aioctl audit ...` as an operator runs it: the built aioctl binary
 * against a temporary config and data directory whose journal the test fills through audit.h
 * (--config, offline), and against a small stand-in for the daemon that serves the four audit
 * routes from that same journal (online: paging, verify's exit code, the same output). */
#include "test_main.h"
#include "test_dirs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "audit.h"
#include "journal.h"

#define AIOCTL AIORUN_BUILD_DIR "/bin/aioctl"
#define ACTION_A "01AUDITCLITEST000000000001"
#define ACTION_B "01AUDITCLITEST000000000002"
#define DAY_MS (86400LL * 1000)

typedef struct env {
    char dir[64];
    char config[128];
    char jdir[160];
    journal *j;              /* open while the test fills or serves it */
    struct MHD_Daemon *http; /* the stand-in daemon, when started */
    char url[64];
} env;

static void write_text(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            assert_non_null(buf = realloc(buf, cap));
        }
        r = fread(buf + n, 1, cap - n - 1, fp);
        n += r;
    } while (r > 0);
    fclose(fp);
    buf[n] = '\0';
    return buf;
}

static void env_init(env *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->dir, sizeof e->dir, "/tmp/aiorun-aioctl-audit-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->config, sizeof e->config, "%s/aiorun.json", e->dir);
    snprintf(e->jdir, sizeof e->jdir, "%s/data/journal", e->dir);
    write_text(e->config, "{\"data_dir\": \"data\"}", 0644);
    journal_opts jo = {.dir = e->jdir};
    ar_error err;
    if (journal_open(&jo, &e->j, &err) != AR_OK)
        fail_msg("journal_open: %s: %s", err.code, err.message);
}

static void env_fini(env *e)
{
    if (e->http)
        MHD_stop_daemon(e->http);
    journal_close(e->j);
    test_remove_tree(e->dir);
}

/* One entry appended with a chosen time, through a callback. */
struct append_req {
    const char *type, *id;
    json_t *data;
    int64_t time_ms;
};

static int append_cb(journal_txn *txn, void *arg, ar_error *err)
{
    struct append_req *a = arg;
    return audit_txn_append(txn, a->type, a->id, json_incref(a->data), a->time_ms, NULL, err);
}

static void append_at(env *e, const char *type, const char *id, json_t *data, int64_t time_ms)
{
    struct append_req a = {type, id, data, time_ms};
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, append_cb, &a);
    ar_error err;
    if (journal_commit(e->j, b, &err) != AR_OK)
        fail_msg("append: %s: %s", err.code, err.message);
    journal_batch_free(b);
    json_decref(data);
}

/* One action's story (A, seq 1-5), an event about no action, B's (7-8); 1-3 two days old. */
static void fill(env *e)
{
    int64_t now = ar_now_ms(), old = now - 2 * DAY_MS;
    append_at(e, "received", ACTION_A,
              json_pack("{s:s,s:s,s:s,s:s,s:{s:s,s:s}}", "connector", "shop", "action", "refund",
                        "effect", "irreversible", "submitter", "agent-7", "proposer", "kind",
                        "agent", "model", "m1"), old);
    append_at(e, "decided", ACTION_A,
              json_pack("{s:s,s:s,s:s,s:s}", "verdict", "approve", "rule", "big_refund", "reason",
                        "over 100 needs a human", "policy", "refunds.lua"), old + 1);
    append_at(e, "approval_requested", ACTION_A,
              json_pack("{s:[s,s],s:I,s:b}", "roles", "finance", "ops", "expires_ms",
                        (json_int_t)1800000000000LL, "four_eyes", 1), old + 2);
    append_at(e, "approval_decided", ACTION_A,
              json_pack("{s:s,s:s,s:s}", "decision", "approved", "by", "alice", "comment", "ok"),
              now - 1000);
    append_at(e, "completed", ACTION_A,
              json_pack("{s:i,s:s,s:i,s:i}", "attempt", 1, "outcome", "succeeded", "http_status",
                        200, "latency_ms", 87), now - 900);
    append_at(e, "policy_reloaded", NULL, json_pack("{s:s,s:i}", "version", "v9", "files", 3),
              now - 800);
    append_at(e, "received", ACTION_B, json_pack("{s:s}", "connector", "shop"), now - 700);
    append_at(e, "decided", ACTION_B, json_pack("{s:s}", "verdict", "deny"), now - 600);
}

typedef struct result {
    int code;
    char *out, *err;
} result;

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
}

static result run(const env *e, const char *const *args)
{
    char out_path[128], err_path[128];
    snprintf(out_path, sizeof out_path, "%s/stdout", e->dir);
    snprintf(err_path, sizeof err_path, "%s/stderr", e->dir);
    const char *argv[24] = {"aioctl"};
    size_t n = 1;
    for (; args[n - 1]; n++) {
        assert_true(n < 23);
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    /* The environment is made before fork: the child of a threaded process (the journal's
     * writer, the stand-in daemon) only opens, dups and execs. */
    extern char **environ;
    char home[96], url[96];
    const char *envp[256];
    size_t k = 0;
    for (char **v = environ; *v && k < 250; v++)
        if (strncmp(*v, "AIORUN_", 7) != 0 && strncmp(*v, "HOME=", 5) != 0)
            envp[k++] = *v;
    snprintf(home, sizeof home, "HOME=%s", e->dir); /* no token file of the user testing */
    envp[k++] = home;
    if (e->url[0]) {
        snprintf(url, sizeof url, "AIORUN_URL=%s", e->url);
        envp[k++] = url;
    }
    envp[k] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int er = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int in = open("/dev/null", O_RDONLY);
        if (o < 0 || er < 0 || in < 0 || chdir(e->dir) != 0)
            _exit(126);
        dup2(in, 0);
        dup2(o, 1);
        dup2(er, 2);
        execve(AIOCTL, (char **)argv, (char **)envp);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    result r = {.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1};
    r.out = slurp(out_path);
    r.err = slurp(err_path);
    assert_non_null(r.out);
    assert_non_null(r.err);
    if (r.code == 127)
        fail_msg("cannot run %s", AIOCTL);
    return r;
}

#define RUN(e, ...) run((e), (const char *const[]){__VA_ARGS__, NULL})

static void expect_code(const result *r, int code)
{
    if (r->code != code)
        fail_msg("exit %d, expected %d\nstdout: %s\nstderr: %s", r->code, code, r->out, r->err);
}

static void expect_out(const result *r, const char *text)
{
    if (!strstr(r->out, text))
        fail_msg("stdout lacks \"%s\"\nstdout: %s\nstderr: %s", text, r->out, r->err);
}

static void expect_err(const result *r, const char *text)
{
    if (!strstr(r->err, text))
        fail_msg("stderr lacks \"%s\"\nstdout: %s\nstderr: %s", text, r->out, r->err);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ---- tampering, through the journal ------------------------------------------------------- */

static json_t *raw_entry(env *e, uint64_t seq)
{
    unsigned char key[8];
    for (int i = 0; i < 8; i++)
        key[i] = (unsigned char)(seq >> (56 - 8 * i));
    journal_read *r;
    assert_int_equal(journal_read_begin(e->j, &r, NULL), AR_OK);
    const void *val;
    size_t vlen;
    json_t *doc = NULL;
    if (journal_get(r, JDB_AUDIT, key, sizeof key, &val, &vlen) == AR_OK)
        doc = json_loadb(val, vlen, 0, NULL);
    journal_read_end(r);
    return doc;
}

static void raw_put(env *e, uint64_t seq, const json_t *doc)
{
    unsigned char key[8];
    for (int i = 0; i < 8; i++)
        key[i] = (unsigned char)(seq >> (56 - 8 * i));
    char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    journal_batch *b = journal_batch_new();
    journal_batch_put(b, JDB_AUDIT, key, sizeof key, text, strlen(text));
    assert_int_equal(journal_commit(e->j, b, NULL), AR_OK);
    journal_batch_free(b);
    free(text);
}

/* Rewrite entries from..end consistently (new body at from, digests and chains again). */
static void rewrite_from(env *e, uint64_t from)
{
    unsigned char prev[32] = {0}, digest[32], both[64];
    char hex[65];
    if (from > 1) {
        json_t *before = raw_entry(e, from - 1);
        sodium_hex2bin(prev, 32, json_string_value(json_object_get(before, "chain")), 64, NULL,
                       NULL, NULL);
        json_decref(before);
    }
    for (uint64_t seq = from;; seq++) {
        json_t *x = raw_entry(e, seq);
        if (!x)
            break;
        if (seq == from)
            json_object_set_new(json_object_get(x, "data"), "by", json_string("mallory"));
        json_t *body = json_pack("{s:O,s:O,s:O,s:O,s:O}", "seq", json_object_get(x, "seq"),
                                 "time_ms", json_object_get(x, "time_ms"), "type",
                                 json_object_get(x, "type"), "action",
                                 json_object_get(x, "action"), "data",
                                 json_object_get(x, "data"));
        char *text = json_dumps(body, JSON_SORT_KEYS | JSON_COMPACT);
        crypto_generichash(digest, 32, (unsigned char *)text, strlen(text), NULL, 0);
        free(text);
        json_decref(body);
        memcpy(both, prev, 32);
        memcpy(both + 32, digest, 32);
        crypto_generichash(prev, 32, both, 64, NULL, 0);
        sodium_bin2hex(hex, sizeof hex, digest, 32);
        json_object_set_new(x, "digest", json_string(hex));
        sodium_bin2hex(hex, sizeof hex, prev, 32);
        json_object_set_new(x, "chain", json_string(hex));
        raw_put(e, seq, x);
        json_decref(x);
    }
}

/* ---- the stand-in daemon ------------------------------------------------------------------ */

#define STANDIN_PAGE_MAX 3 /* a small page, so that export must follow several */

static enum MHD_Result reply_json(struct MHD_Connection *conn, unsigned status, json_t *doc)
{
    char *body = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(doc);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body,
                                                             MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static uint64_t query_u64(struct MHD_Connection *conn, const char *name)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
    return v ? strtoull(v, NULL, 10) : 0;
}

static enum MHD_Result standin(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls)
{
    env *e = cls;
    (void)version; (void)data; (void)data_size; (void)con_cls;
    json_t *out = NULL;
    if (strcmp(method, "GET") != 0)
        return reply_json(conn, 405, json_pack("{s:s,s:s}", "error", "method", "message", "GET"));
    if (strcmp(url, "/v1/audit") == 0) {
        uint64_t after = query_u64(conn, "after"), next;
        size_t limit = (size_t)query_u64(conn, "limit");
        if (limit == 0 || limit > STANDIN_PAGE_MAX)
            limit = STANDIN_PAGE_MAX;
        assert_int_equal(audit_read_after(e->j, after, limit, &out, &next, NULL), AR_OK);
        bool more = json_array_size(out) == limit;
        return reply_json(conn, 200, json_pack("{s:o,s:o}", "entries", out, "next",
                                               more ? json_integer((json_int_t)next) : json_null()));
    }
    if (strcmp(url, "/v1/audit/head") == 0) {
        assert_int_equal(audit_head_document(e->j, NULL, &out, NULL), AR_OK);
        return reply_json(conn, 200, out);
    }
    if (strcmp(url, "/v1/audit/verify") == 0) {
        const char *head = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "head");
        audit_verify_result res;
        if (audit_verify(e->j, query_u64(conn, "seq"), head, &res, NULL) != AR_OK)
            return reply_json(conn, 400, json_pack("{s:s,s:s}", "error", "invalid_head",
                                                   "message", "bad head"));
        if (!res.ok)
            return reply_json(conn, 200, json_pack("{s:b,s:I,s:s}", "ok", 0, "first_bad_seq",
                                                   (json_int_t)res.first_bad_seq, "reason",
                                                   res.reason));
        /* as core/api_audit.c answers */
        out = json_pack("{s:b,s:I,s:s,s:I}", "ok", 1, "entries", (json_int_t)res.entries, "head",
                        res.head, "first_seq", (json_int_t)res.first_seq);
        if (res.cut_through) {
            json_object_set_new(out, "cut_through", json_integer((json_int_t)res.cut_through));
            json_object_set_new(out, "cut_ms", json_integer((json_int_t)res.cut_ms));
        }
        if (res.head_unchecked) {
            json_object_set_new(out, "head_unchecked", json_true());
            json_object_set_new(out, "head_note", json_string(res.head_note));
        }
        return reply_json(conn, 200, out);
    }
    const char *prefix = "/v1/actions/";
    size_t plen = strlen(prefix), ulen = strlen(url);
    if (strncmp(url, prefix, plen) == 0 && ulen == plen + 26 + 6 &&
        strcmp(url + plen + 26, "/audit") == 0) {
        char id[27];
        memcpy(id, url + plen, 26);
        id[26] = '\0';
        assert_int_equal(audit_read_action(e->j, id, &out, NULL), AR_OK);
        if (json_array_size(out) == 0) {
            json_decref(out);
            return reply_json(conn, 404, json_pack("{s:s,s:s}", "error", "not_found", "message",
                                                   "no such action"));
        }
        return reply_json(conn, 200, json_pack("{s:o}", "entries", out));
    }
    return reply_json(conn, 404, json_pack("{s:s,s:s}", "error", "not_found", "message", url));
}

static void standin_start(env *e)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    e->http = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, standin, e,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_END);
    assert_non_null(e->http);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(e->http, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(di);
    snprintf(e->url, sizeof e->url, "http://127.0.0.1:%u", (unsigned)di->port);
}

/* ---- cases -------------------------------------------------------------------------------- */

static void test_show(void **state)
{
    (void)state;
    env e;
    env_init(&e);
    fill(&e);
    result r = RUN(&e, "--config", e.config, "audit", "show", ACTION_A);
    expect_code(&r, 0);
    expect_out(&r, "action " ACTION_A ": 5 audit entries");
    expect_out(&r, "received");
    expect_out(&r, "connector=shop");
    expect_out(&r, "submitter=agent-7");
    expect_out(&r, "verdict=approve");
    expect_out(&r, "rule=big_refund");
    expect_out(&r, "reason=\"over 100 needs a human\"");
    expect_out(&r, "roles=finance,ops");
    expect_out(&r, "expires_ms=2027-01-15T08:00:00.000Z");
    expect_out(&r, "by=alice");
    expect_out(&r, "outcome=succeeded");
    expect_out(&r, "http_status=200");
    assert_null(strstr(r.out, "policy_reloaded")); /* another action's, or none */
    assert_null(strstr(r.out, "deny"));
    assert_int_equal(count_lines(r.out), 6);
    result_free(&r);

    /* --json: the entries as stored. */
    r = RUN(&e, "--config", e.config, "--json", "audit", "show", ACTION_B);
    expect_code(&r, 0);
    json_t *doc = json_loads(r.out, 0, NULL);
    assert_non_null(doc);
    json_t *entries = json_object_get(doc, "entries");
    assert_int_equal(json_array_size(entries), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(entries, 0), "seq")), 7);
    assert_non_null(json_object_get(json_array_get(entries, 1), "chain"));
    json_decref(doc);
    result_free(&r);

    /* No entries, a malformed id, no id. */
    r = RUN(&e, "--config", e.config, "audit", "show", "01AUDITCLITEST000000000099");
    expect_code(&r, 4);
    expect_err(&r, "not_found");
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "show", "short");
    expect_code(&r, 2);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "show");
    expect_code(&r, 2);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "frobnicate");
    expect_code(&r, 2);
    result_free(&r);
    env_fini(&e);
}

static void test_verify_and_kept_heads(void **state)
{
    (void)state;
    env e;
    env_init(&e);
    fill(&e);
    char key[200], pub[210], head_path[200];
    snprintf(key, sizeof key, "%s/head.key", e.dir);
    snprintf(pub, sizeof pub, "%s/head.key.pub", e.dir);
    snprintf(head_path, sizeof head_path, "%s/head.json", e.dir);

    result r = RUN(&e, "--config", e.config, "audit", "verify");
    expect_code(&r, 0);
    expect_out(&r, "audit trail ok: 8 entries, head ");
    result_free(&r);
    r = RUN(&e, "--config", e.config, "--json", "audit", "verify");
    expect_code(&r, 0);
    json_t *doc = json_loads(r.out, 0, NULL);
    assert_true(json_is_true(json_object_get(doc, "ok")));
    assert_int_equal(json_integer_value(json_object_get(doc, "entries")), 8);
    json_decref(doc);
    result_free(&r);

    /* Keep a signed head; verify against it. */
    r = RUN(&e, "audit", "keygen", key);
    expect_code(&r, 0);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "head", "--sign-key", key);
    expect_code(&r, 0);
    write_text(head_path, r.out, 0644);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", head_path, "--public-key", pub);
    expect_code(&r, 0);
    expect_out(&r, "matches the kept head of seq 8");
    expect_out(&r, "signature checked");
    result_free(&r);

    /* A consistent rewrite from seq 4: sound on its own, not against the kept head. */
    rewrite_from(&e, 4);
    r = RUN(&e, "--config", e.config, "audit", "verify");
    expect_code(&r, 0);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", head_path);
    expect_code(&r, 1);
    expect_out(&r, "NOT sound: seq 8: does not match the exported head");
    result_free(&r);
    r = RUN(&e, "--config", e.config, "--json", "audit", "verify", "--head=" , head_path);
    expect_code(&r, 2); /* an empty --head= */
    result_free(&r);
    r = RUN(&e, "--config", e.config, "--json", "audit", "verify", "--head", head_path);
    expect_code(&r, 1);
    doc = json_loads(r.out, 0, NULL);
    assert_false(json_is_true(json_object_get(doc, "ok")));
    assert_int_equal(json_integer_value(json_object_get(doc, "first_bad_seq")), 8);
    json_decref(doc);
    result_free(&r);

    /* An altered body. */
    json_t *x = raw_entry(&e, 2);
    json_object_set_new(json_object_get(x, "data"), "verdict", json_string("allow"));
    raw_put(&e, 2, x);
    json_decref(x);
    r = RUN(&e, "--config", e.config, "audit", "verify");
    expect_code(&r, 1);
    expect_out(&r, "seq 2: body digest mismatch");
    result_free(&r);

    /* A kept head that was edited, or checked with another key, cannot be trusted. */
    char *text = slurp(head_path);
    json_t *head = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(head);
    json_object_set_new(head, "seq", json_integer(3));
    text = json_dumps(head, JSON_COMPACT);
    char edited[200];
    snprintf(edited, sizeof edited, "%s/edited.json", e.dir);
    write_text(edited, text, 0644);
    free(text);
    json_decref(head);
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", edited);
    expect_code(&r, 1);
    expect_err(&r, "audit_head_signature");
    result_free(&r);
    char key2[200], pub2[210];
    snprintf(key2, sizeof key2, "%s/other.key", e.dir);
    snprintf(pub2, sizeof pub2, "%s/other.key.pub", e.dir);
    r = RUN(&e, "audit", "keygen", key2);
    expect_code(&r, 0);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", head_path, "--public-key", pub2);
    expect_code(&r, 1);
    expect_err(&r, "audit_head_signature");
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", "/nonexistent/head.json");
    expect_code(&r, 2);
    result_free(&r);
    env_fini(&e);
}

static void test_keygen_and_head(void **state)
{
    (void)state;
    env e;
    env_init(&e);
    fill(&e);
    char key[200], pub[210];
    snprintf(key, sizeof key, "%s/k", e.dir);
    snprintf(pub, sizeof pub, "%s/k.pub", e.dir);
    result r = RUN(&e, "audit", "keygen", key);
    expect_code(&r, 0);
    expect_out(&r, pub);
    result_free(&r);
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 129);
    assert_int_equal(stat(pub, &st), 0);
    assert_int_equal(st.st_size, 65);
    char *before = slurp(key);
    r = RUN(&e, "audit", "keygen", key); /* never overwritten */
    expect_code(&r, 2);
    expect_err(&r, "exists");
    result_free(&r);
    char *after = slurp(key);
    assert_string_equal(before, after);
    free(after);

    /* Unsigned and signed heads. */
    r = RUN(&e, "--config", e.config, "audit", "head");
    expect_code(&r, 0);
    json_t *doc = json_loads(r.out, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(json_object_size(doc), 3);
    assert_int_equal(json_integer_value(json_object_get(doc, "seq")), 8);
    assert_int_equal(strlen(json_string_value(json_object_get(doc, "head"))), 64);
    json_decref(doc);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "head", "--sign-key", key);
    expect_code(&r, 0);
    doc = json_loads(r.out, 0, NULL);
    assert_non_null(doc);
    char *pub_text = slurp(pub);
    unsigned char pk[32], sk[64];
    assert_int_equal(sodium_hex2bin(pk, 32, pub_text, 64, NULL, NULL, NULL), 0);
    assert_int_equal(sodium_hex2bin(sk, 64, before, 128, NULL, NULL, NULL), 0);
    assert_int_equal(audit_head_check(doc, pk, NULL), AR_OK);
    pub_text[64] = '\0';
    assert_string_equal(json_string_value(json_object_get(doc, "public_key")), pub_text);
    json_decref(doc);
    result_free(&r);
    free(pub_text);
    free(before);

    /* A key others may read, a file that is not a key. */
    assert_int_equal(chmod(key, 0644), 0);
    r = RUN(&e, "--config", e.config, "audit", "head", "--sign-key", key);
    expect_code(&r, 2);
    expect_err(&r, "chmod 600");
    assert_string_equal(r.out, "");
    result_free(&r);
    assert_int_equal(chmod(key, 0600), 0);
    r = RUN(&e, "--config", e.config, "audit", "head", "--sign-key", e.config);
    expect_code(&r, 2);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "head", "extra");
    expect_code(&r, 2);
    result_free(&r);
    sodium_memzero(sk, sizeof sk);
    env_fini(&e);
}

static void test_export(void **state)
{
    (void)state;
    env e;
    env_init(&e);
    fill(&e);
    result r = RUN(&e, "--config", e.config, "audit", "export");
    expect_code(&r, 0);
    assert_int_equal(count_lines(r.out), 8);
    expect_err(&r, "exported 8 audit entries");
    /* Each line is the stored entry. */
    char *save, *line = strtok_r(r.out, "\n", &save);
    for (uint64_t seq = 1; line; seq++, line = strtok_r(NULL, "\n", &save)) {
        json_t *got = json_loads(line, 0, NULL), *stored = raw_entry(&e, seq);
        assert_non_null(got);
        assert_true(json_equal(got, stored));
        json_decref(got);
        json_decref(stored);
    }
    result_free(&r);

    r = RUN(&e, "--config", e.config, "audit", "export", "--since", "24h");
    expect_code(&r, 0);
    assert_int_equal(count_lines(r.out), 5); /* 1-3 are two days old */
    assert_true(strncmp(r.out, "{\"seq\":4,", 9) == 0);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "export", "--since=3d");
    expect_code(&r, 0);
    assert_int_equal(count_lines(r.out), 8);
    result_free(&r);

    /* RFC 3339, with an offset, and a date. */
    char when[64];
    int64_t cut = ar_now_ms() - DAY_MS;
    time_t t = (time_t)(cut / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    r = RUN(&e, "--config", e.config, "audit", "export", "--since", when);
    expect_code(&r, 0);
    assert_int_equal(count_lines(r.out), 5);
    result_free(&r);
    t += 3600;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S+01:00", &tm); /* the same instant */
    r = RUN(&e, "--config", e.config, "audit", "export", "--since", when);
    expect_code(&r, 0);
    assert_int_equal(count_lines(r.out), 5);
    result_free(&r);
    r = RUN(&e, "--config", e.config, "audit", "export", "--since", "2999-01-01");
    expect_code(&r, 0);
    assert_string_equal(r.out, "");
    expect_err(&r, "exported 0 audit entries");
    result_free(&r);

    const char *bad[] = {"yesterday", "24x", "2026-13-01", "2026-02-30T10:00:00Z",
                         "2026-11-26T10:00:00", "-5h"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = RUN(&e, "--config", e.config, "audit", "export", "--since", bad[i]);
        if (r.code != 2)
            fail_msg("--since %s: exit %d, expected 2", bad[i], r.code);
        result_free(&r);
    }
    env_fini(&e);
}

/* Offline without a journal: refused, nothing created. */
static void test_no_journal(void **state)
{
    (void)state;
    env e;
    env_init(&e);
    char other[200], text[300], data[200];
    snprintf(other, sizeof other, "%s/other.json", e.dir);
    snprintf(data, sizeof data, "%s/nodata", e.dir);
    snprintf(text, sizeof text, "{\"data_dir\": \"%s\"}", data);
    write_text(other, text, 0644);
    result r = RUN(&e, "--config", other, "audit", "verify");
    expect_code(&r, 4);
    expect_err(&r, "no_journal");
    result_free(&r);
    assert_int_equal(access(data, F_OK), -1);
    env_fini(&e);
}

/* Through the daemon (the stand-in): the same answers as offline; export follows pages. */
static void test_online(void **state)
{
    (void)state;
    env e;
    env_init(&e);
    fill(&e);
    result off = RUN(&e, "--config", e.config, "audit", "export", "--since", "3d");
    expect_code(&off, 0);
    standin_start(&e);

    result r = RUN(&e, "audit", "export", "--since", "3d");
    expect_code(&r, 0);
    assert_string_equal(r.out, off.out); /* three pages of three, the same lines */
    result_free(&r);
    result_free(&off);
    r = RUN(&e, "audit", "export", "--since", "24h");
    expect_code(&r, 0);
    assert_int_equal(count_lines(r.out), 5);
    result_free(&r);

    r = RUN(&e, "audit", "show", ACTION_A);
    expect_code(&r, 0);
    expect_out(&r, "5 audit entries");
    expect_out(&r, "by=alice");
    result_free(&r);
    r = RUN(&e, "audit", "show", "01AUDITCLITEST000000000099");
    expect_code(&r, 4);
    result_free(&r);

    char key[200], head_path[200];
    snprintf(key, sizeof key, "%s/k", e.dir);
    snprintf(head_path, sizeof head_path, "%s/head.json", e.dir);
    r = RUN(&e, "audit", "keygen", key);
    result_free(&r);
    r = RUN(&e, "audit", "head", "--sign-key", key);
    expect_code(&r, 0);
    json_t *doc = json_loads(r.out, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(doc, "seq")), 8);
    assert_int_equal(audit_head_check(doc, NULL, NULL), AR_OK);
    assert_non_null(json_object_get(doc, "signature"));
    json_decref(doc);
    write_text(head_path, r.out, 0644);
    result_free(&r);

    r = RUN(&e, "audit", "verify", "--head", head_path);
    expect_code(&r, 0);
    expect_out(&r, "audit trail ok: 8 entries");
    expect_out(&r, "matches the kept head of seq 8");
    result_free(&r);
    rewrite_from(&e, 5);
    r = RUN(&e, "audit", "verify");
    expect_code(&r, 0);
    result_free(&r);
    r = RUN(&e, "audit", "verify", "--head", head_path);
    expect_code(&r, 1);
    expect_out(&r, "seq 8: does not match the exported head");
    result_free(&r);
    r = RUN(&e, "--json", "audit", "verify", "--head", head_path);
    expect_code(&r, 1);
    expect_out(&r, "\"first_bad_seq\":8");
    result_free(&r);

    /* The daemon gone: exit 3. */
    MHD_stop_daemon(e.http);
    e.http = NULL;
    r = RUN(&e, "audit", "verify");
    expect_code(&r, 3);
    result_free(&r);
    env_fini(&e);
}

static int init_sodium(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

/* ---- after retention cut the oldest entries ----------------------------------------------- */

struct cut_req {
    uint64_t through;
    int64_t now_ms;
};

static int cut_cb(journal_txn *txn, void *arg, ar_error *err)
{
    const struct cut_req *c = arg;
    return audit_txn_cut(txn, c->through, c->now_ms, NULL, err);
}

static void keep_head(env *e, const char *path)
{
    result r = RUN(e, "--config", e->config, "audit", "head");
    expect_code(&r, 0);
    write_text(path, r.out, 0644);
    result_free(&r);
}

static void test_verify_after_a_cut(void **state)
{
    (void)state;
    env e;
    env_init(&e);
    fill(&e);
    char old_head[200], new_head[200];
    snprintf(old_head, sizeof old_head, "%s/old.json", e.dir);
    snprintf(new_head, sizeof new_head, "%s/new.json", e.dir);
    keep_head(&e, old_head); /* seq 8 */
    append_at(&e, "received", ACTION_B, json_pack("{s:s}", "connector", "shop"), ar_now_ms());
    append_at(&e, "completed", ACTION_B, json_pack("{s:s}", "outcome", "ok"), ar_now_ms());
    keep_head(&e, new_head); /* seq 10 */

    struct cut_req c = {9, ar_now_ms()};
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, cut_cb, &c);
    ar_error err;
    if (journal_commit(e.j, b, &err) != AR_OK)
        fail_msg("cut: %s: %s", err.code, err.message);
    journal_batch_free(b);
    char when[AR_TIME_LEN], want[256];
    ar_time_rfc3339(c.now_ms, when);

    result r = RUN(&e, "--config", e.config, "audit", "verify");
    expect_code(&r, 0);
    snprintf(want, sizeof want, "audit trail ok: 2 entries verified from seq 10 (1..9 cut by retention on %s), "
             "head ", when);
    expect_out(&r, want);
    result_free(&r);

    /* A head kept before the cut: the trail kept is sound, the head cannot be checked (6). */
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", old_head);
    expect_code(&r, 6);
    expect_out(&r, "audit trail ok: 2 entries verified from seq 10");
    snprintf(want, sizeof want, "kept head NOT checked: the kept head (seq 8) is older than the trail kept: "
             "entries up to 9 were cut by retention at %s", when);
    expect_out(&r, want);
    assert_null(strstr(r.out, "matches the kept head"));
    assert_null(strstr(r.out, "NOT sound"));
    result_free(&r);
    r = RUN(&e, "--config", e.config, "--json", "audit", "verify", "--head", old_head);
    expect_code(&r, 6);
    json_t *doc = json_loads(r.out, 0, NULL);
    assert_true(json_is_true(json_object_get(doc, "ok")));
    assert_true(json_is_true(json_object_get(doc, "head_unchecked")));
    assert_int_equal(json_integer_value(json_object_get(doc, "first_seq")), 10);
    assert_int_equal(json_integer_value(json_object_get(doc, "cut_through")), 9);
    assert_int_equal(json_integer_value(json_object_get(doc, "cut_ms")), c.now_ms);
    json_decref(doc);
    result_free(&r);

    /* A head kept after it checks. */
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", new_head);
    expect_code(&r, 0);
    expect_out(&r, "matches the kept head of seq 10");
    result_free(&r);

    /* The same through the daemon. */
    standin_start(&e);
    r = RUN(&e, "audit", "verify", "--head", old_head);
    expect_code(&r, 6);
    expect_out(&r, want);
    result_free(&r);
    r = RUN(&e, "--json", "audit", "verify", "--head", old_head);
    expect_code(&r, 6);
    expect_out(&r, "\"head_unchecked\":true");
    result_free(&r);
    r = RUN(&e, "audit", "verify", "--head", new_head);
    expect_code(&r, 0);
    expect_out(&r, "audit trail ok: 2 entries verified from seq 10 (1..9 cut by retention on ");
    expect_out(&r, "matches the kept head of seq 10");
    result_free(&r);

    /* Entries deleted behind the cut's back, the anchor moved by hand: not sound (1). */
    json_t *x = raw_entry(&e, 10);
    char text[256];
    snprintf(text, sizeof text, "{\"seq\":10,\"chain\":\"%s\",\"time_ms\":1,\"cut_ms\":2}",
             json_string_value(json_object_get(x, "chain")));
    json_decref(x);
    unsigned char key[8] = {0, 0, 0, 0, 0, 0, 0, 10}, ikey[34];
    memcpy(ikey, ACTION_B, 26);
    memcpy(ikey + 26, key, 8);
    b = journal_batch_new();
    journal_batch_del(b, JDB_AUDIT, key, sizeof key);
    journal_batch_del(b, JDB_AUDIT_INDEX, ikey, sizeof ikey);
    journal_batch_put(b, JDB_META, AUDIT_ANCHOR_KEY, strlen(AUDIT_ANCHOR_KEY), text, strlen(text));
    assert_int_equal(journal_commit(e.j, b, NULL), AR_OK);
    journal_batch_free(b);
    r = RUN(&e, "--config", e.config, "audit", "verify", "--head", old_head);
    expect_code(&r, 1);
    expect_out(&r, "NOT sound: seq 11: the anchor is not attested by an audit_cut entry");
    result_free(&r);
    env_fini(&e);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_show),
    cmocka_unit_test(test_verify_and_kept_heads),
    cmocka_unit_test(test_keygen_and_head),
    cmocka_unit_test(test_export),
    cmocka_unit_test(test_no_journal),
    cmocka_unit_test(test_online),
    cmocka_unit_test(test_verify_after_a_cut),
};

AR_TEST_MAIN(tests, init_sodium, NULL)
