/* test_daemon.c - the real daemon on loopback: submit, idempotency, errors, policies, listing,
 * misbehaving plugins, restarts, ABI refusal, storage_full, and aioctl's exit codes. */
#include "test_main.h"

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "journal.h"

static harness H;

static int start_default(void **state)
{
    (void)state;
    return harness_start(&H, NULL);
}

/* The daemon must also stop cleanly: exit status 0 after SIGTERM (a sanitizer report at exit
 * makes it non-zero and fails the test). */
static int stop_daemon(void **state)
{
    (void)state;
    int status = H.pid > 0 ? harness_stop(&H) : 0;
    if (status != 0) {
        fprintf(stderr, "daemon exited with status %d after SIGTERM; log:\n", status);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "tail -n 60 '%s' >&2", H.log_path);
        if (system(cmd) != 0)
            fprintf(stderr, "(cannot show the log)\n");
    }
    harness_cleanup(&H);
    return status == 0 ? 0 : -1;
}

static const char *str(const json_t *obj, const char *path1, const char *path2)
{
    const json_t *v = json_object_get(obj, path1);
    if (path2)
        v = json_object_get(v, path2);
    const char *s = json_string_value(v);
    return s ? s : "(none)";
}

/* Fail with the whole reply shown, which is what one needs to see when it breaks. */
#define assert_status(got, want, reply)                                                     \
    do {                                                                                     \
        if ((got) != (want)) {                                                               \
            char *dump = (reply) ? json_dumps((reply), JSON_COMPACT) : NULL;                 \
            fail_msg("HTTP status %ld, expected %d; reply: %s", (long)(got), (want),         \
                     dump ? dump : "(none)");                                                \
        }                                                                                    \
    } while (0)

/* ---- the main path ------------------------------------------------------------------------ */

static void submit_and_wait_returns_the_plugins_result(void **state)
{
    (void)state;
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i, s:{s:s, s:s, s:f, s:s}}",
                             "connector", "echo", "action", "echo", "input", "message", "hello",
                             "wait_ms", 10000, "proposer", "kind", "agent", "model", "test-model",
                             "confidence", 0.9, "prompt_ref", "prompt-1");
    assert_status(st, 201, r);
    assert_string_equal(str(r, "state", NULL), "SUCCEEDED");
    assert_string_equal(str(r, "decision", "verdict"), "allow");
    assert_string_equal(str(r, "decision", "policy"), "default.lua");
    assert_int_equal(json_integer_value(json_object_get(r, "attempts")), 1);
    assert_string_equal(str(r, "result", "message"), "hello");
    assert_string_equal(str(r, "proposer", "model"), "test-model");
    assert_true(json_is_string(json_object_get(r, "finished_at")));
    assert_int_equal(strlen(str(r, "id", NULL)), 26);

    /* GET shows the same stored action. */
    char path[128];
    snprintf(path, sizeof path, "/v1/actions/%s", str(r, "id", NULL));
    json_t *g;
    st = harness_http(&H, "GET", path, NULL, &g);
    assert_status(st, 200, g);
    assert_string_equal(str(g, "state", NULL), "SUCCEEDED");
    assert_string_equal(str(g, "result", "message"), "hello");
    json_decref(g);
    json_decref(r);
}

static void submit_without_wait_is_accepted_then_completes(void **state)
{
    (void)state;
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}}", "connector", "echo", "action", "echo",
                             "input", "message", "later");
    assert_status(st, 201, r);
    assert_true(strcmp(str(r, "state", NULL), "READY") == 0 ||
                strcmp(str(r, "state", NULL), "DISPATCHED") == 0 ||
                strcmp(str(r, "state", NULL), "SUCCEEDED") == 0);
    char path[128];
    snprintf(path, sizeof path, "/v1/actions/%s", str(r, "id", NULL));
    json_t *g = NULL;
    for (int i = 0; i < 200; i++) {
        json_decref(g);
        harness_http(&H, "GET", path, NULL, &g);
        if (strcmp(str(g, "state", NULL), "SUCCEEDED") == 0)
            break;
        usleep(20 * 1000);
    }
    assert_string_equal(str(g, "state", NULL), "SUCCEEDED");
    json_decref(g);
    json_decref(r);
}

static void idempotent_resubmit_returns_the_same_action(void **state)
{
    (void)state;
    json_t *a, *b;
    long st = harness_submit(&H, &a, "{s:s, s:s, s:{s:s}, s:s, s:i}", "connector", "echo",
                             "action", "echo", "input", "message", "once", "idempotency_key", "k-1",
                             "wait_ms", 10000);
    assert_status(st, 201, a);
    st = harness_submit(&H, &b, "{s:s, s:s, s:{s:s}, s:s, s:i}", "connector", "echo",
                        "action", "echo", "input", "message", "once", "idempotency_key", "k-1",
                        "wait_ms", 10000);
    assert_status(st, 200, b);
    assert_string_equal(str(a, "id", NULL), str(b, "id", NULL));
    assert_string_equal(str(b, "state", NULL), "SUCCEEDED");
    assert_int_equal(json_integer_value(json_object_get(b, "attempts")), 1);
    /* Same key on another connector is another action. */
    json_t *c;
    st = harness_submit(&H, &c, "{s:s, s:s, s:{s:s}, s:s}", "connector", "t_ok", "action", "ok",
                        "input", "message", "once", "idempotency_key", "k-1");
    assert_status(st, 201, c);
    assert_string_not_equal(str(a, "id", NULL), str(c, "id", NULL));
    json_decref(a);
    json_decref(b);
    json_decref(c);
}

static void same_key_with_another_payload_is_a_conflict(void **state)
{
    (void)state;
    json_t *a, *b;
    long st = harness_submit(&H, &a, "{s:s, s:s, s:{s:s}, s:s}", "connector", "echo", "action",
                             "echo", "input", "message", "first", "idempotency_key", "k-2");
    assert_status(st, 201, a);
    st = harness_submit(&H, &b, "{s:s, s:s, s:{s:s}, s:s}", "connector", "echo", "action", "echo",
                        "input", "message", "second", "idempotency_key", "k-2");
    assert_status(st, 409, b);
    assert_string_equal(str(b, "error", NULL), "idempotency_conflict");
    assert_non_null(strstr(str(b, "message", NULL), "k-2"));
    json_decref(a);
    json_decref(b);
}

typedef struct {
    int index;
    char id[32];
    long status;
} racer;

static void *race_submit(void *arg)
{
    racer *r = arg;
    json_t *reply;
    r->status = harness_submit(&H, &reply, "{s:s, s:s, s:{s:s}, s:s}", "connector", "echo",
                               "action", "echo", "input", "message", "race", "idempotency_key",
                               "k-race");
    snprintf(r->id, sizeof r->id, "%s", str(reply, "id", NULL));
    json_decref(reply);
    return NULL;
}

static void concurrent_submissions_with_one_key_make_one_action(void **state)
{
    (void)state;
    enum { N = 8 };
    pthread_t t[N];
    racer r[N];
    for (int i = 0; i < N; i++) {
        r[i] = (racer){.index = i};
        pthread_create(&t[i], NULL, race_submit, &r[i]);
    }
    int created = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_true(r[i].status == 201 || r[i].status == 200);
        created += r[i].status == 201;
        assert_string_equal(r[i].id, r[0].id);
    }
    assert_int_equal(created, 1);
}

/* ---- every error code ----------------------------------------------------------------------- */

static void expect_error(const char *method, const char *path, const char *body, int status,
                         const char *code)
{
    json_t *r;
    long st = harness_http(&H, method, path, body, &r);
    assert_status(st, status, r);
    assert_string_equal(str(r, "error", NULL), code);
    assert_true(strlen(str(r, "message", NULL)) > 10);
    json_decref(r);
}

static void bad_requests_get_stable_error_codes(void **state)
{
    (void)state;
    expect_error("POST", "/v1/actions", "{\"connector\": ", 400, "invalid_json");
    expect_error("POST", "/v1/actions", "[1,2]", 400, "invalid_request");
    expect_error("POST", "/v1/actions", "{\"action\":\"echo\"}", 400, "invalid_request");
    expect_error("POST", "/v1/actions", "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":\"x\"},\"colour\":1}",
                 400, "invalid_request");
    expect_error("POST", "/v1/actions", "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":\"x\"},\"wait_ms\":999999}",
                 400, "invalid_request");
    expect_error("POST", "/v1/actions", "{\"connector\":\"nope\",\"action\":\"echo\"}", 404, "unknown_connector");
    expect_error("POST", "/v1/actions", "{\"connector\":\"echo\",\"action\":\"shout\"}", 404, "unknown_action");
    expect_error("POST", "/v1/actions", "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{}}", 422, "schema_violation");
    expect_error("POST", "/v1/actions", "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":7}}", 422, "schema_violation");
    expect_error("GET", "/v1/actions/01ARZ3NDEKTSV4RRFFQ69G5FAV", NULL, 404, "not_found");
    expect_error("GET", "/v1/nothing", NULL, 404, "unknown_route");
    expect_error("DELETE", "/v1/actions", NULL, 405, "method_not_allowed");
    expect_error("GET", "/v1/actions?state=SLEEPING", NULL, 400, "invalid_request");
    expect_error("GET", "/v1/actions?limit=0", NULL, 400, "invalid_request");

    /* The message of a schema violation says which field is wrong. */
    json_t *r;
    harness_http(&H, "POST", "/v1/actions", "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":7}}", &r);
    assert_non_null(strstr(str(r, "message", NULL), "input.message"));
    json_decref(r);

    /* Nothing was stored by any of them. */
    json_t *list;
    long st = harness_http(&H, "GET", "/v1/actions", NULL, &list);
    assert_status(st, 200, list);
    assert_int_equal(json_array_size(json_object_get(list, "actions")), 0);
    json_decref(list);
}

/* Refused submissions: the whole reply (status, code, message) is what the daemon answered
 * before validate_submission read the body in one pass (issue 9). */
static const struct {
    const char *body;
    long status;
    const char *reply;
} refusal_cases[] = {
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"inputs\":{}}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"inputs\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"p\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"p\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"pr\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"pr\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"priorit\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"priorit\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"i\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"i\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"Connector\":\"echo\",\"action\":\"echo\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"Connector\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"idempotency_keys\":\"k\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"idempotency_keys\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"deadline\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"deadline\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"wait\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"wait\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"connector\":7,\"action\":\"echo\",\"colour\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"unknown field \\\"colour\\\" (known: connector, action, input, idempotency_key, proposer, priority, wait_ms, deadline_ms)\"}"},
    {"{\"action\":\"echo\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"connector\\\" is required (a string)\"}"},
    {"{\"connector\":\"echo\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"action\\\" is required (a string)\"}"},
    {"{\"connector\":\"echo\",\"action\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"action\\\" must be a string\"}"},
    {"{\"connector\":1,\"action\":1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"connector\\\" must be a string\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"input\":[]}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"input\\\" must be an object\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"idempotency_key\":5}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"idempotency_key\\\" must be a string\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"proposer\":\"me\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"proposer\\\" must be an object\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"priority\":1.5}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"priority\\\" must be an integer\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"wait_ms\":\"5\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"wait_ms\\\" must be an integer\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"deadline_ms\":true}",
     400, "{\"error\":\"invalid_request\",\"message\":\"field \\\"deadline_ms\\\" must be an integer\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"deadline_ms\":0}",
     400, "{\"error\":\"invalid_request\",\"message\":\"deadline_ms (milliseconds from now) must be from 1 to 604800000\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"deadline_ms\":604800001}",
     400, "{\"error\":\"invalid_request\",\"message\":\"deadline_ms (milliseconds from now) must be from 1 to 604800000\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"idempotency_key\":\"\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"idempotency_key must be 1 to 256 bytes\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"idempotency_key\":\"KKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK\"}",
     400, "{\"error\":\"invalid_request\",\"message\":\"idempotency_key must be 1 to 256 bytes\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"proposer\":{\"kind\":\"agent\",\"mood\":\"x\"}}",
     400, "{\"error\":\"invalid_request\",\"message\":\"proposer: unknown field \\\"mood\\\" (known: kind, model, confidence, prompt_ref, context_refs)\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"proposer\":{\"confidence\":2}}",
     400, "{\"error\":\"invalid_request\",\"message\":\"proposer.confidence must be between 0 and 1\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"wait_ms\":-1}",
     400, "{\"error\":\"invalid_request\",\"message\":\"wait_ms must be between 0 and 60000\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"priority\":1001}",
     400, "{\"error\":\"invalid_request\",\"message\":\"priority must be between -1000 and 1000\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"priority\":-1001,\"wait_ms\":70000}",
     400, "{\"error\":\"invalid_request\",\"message\":\"wait_ms must be between 0 and 60000\"}"},
    {"{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":\"x\"},\"connector\":\"echo\"}",
     400, "{\"error\":\"invalid_json\",\"message\":\"request body is not valid JSON: duplicate object key near '\\\"connector\\\"' at line 1, column 71\"}"},
};

static void refused_submissions_keep_their_messages(void **state)
{
    (void)state;
    int mismatch = 0;
    for (size_t i = 0; i < sizeof refusal_cases / sizeof refusal_cases[0]; i++) {
        json_t *r = NULL;
        long st = harness_http(&H, "POST", "/v1/actions", refusal_cases[i].body, &r);
        char *got = r ? json_dumps(r, JSON_COMPACT) : NULL;
        assert_non_null(got);
        if (st != refusal_cases[i].status || strcmp(got, refusal_cases[i].reply) != 0) {
            fprintf(stderr, "refusal %zu:\n  got      %ld %s\n  expected %ld %s\n", i, st, got,
                    refusal_cases[i].status, refusal_cases[i].reply);
            mismatch = 1;
        }
        free(got);
        json_decref(r);
    }
    assert_int_equal(mismatch, 0);
    json_t *list; /* nothing was stored */
    assert_int_equal(harness_http(&H, "GET", "/v1/actions", NULL, &list), 200);
    assert_int_equal(json_array_size(json_object_get(list, "actions")), 0);
    json_decref(list);
}

static void oversized_body_is_refused(void **state)
{
    (void)state;
    harness_cleanup(&H);
    harness_opts o = {.max_body_bytes = 4096};
    assert_int_equal(harness_start(&H, &o), 0);
    size_t n = 10000;
    char *body = malloc(n + 100);
    int len = snprintf(body, n + 100, "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":\"");
    memset(body + len, 'x', n);
    strcpy(body + len + n, "\"}}");
    expect_error("POST", "/v1/actions", body, 413, "body_too_large");
    free(body);
    /* The daemon keeps serving. */
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                             "input", "message", "small", "wait_ms", 10000);
    assert_status(st, 201, r);
    json_decref(r);
}

/* ---- cpu scheduling ---------------------------------------------------------------------------- */

/* How many of pid's threads run under policy, out of *total. */
static int threads_with_policy(pid_t pid, int policy, int *total)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    *total = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            int p = sched_getscheduler((pid_t)atoi(e->d_name));
            if (p < 0)
                continue; /* the thread ended meanwhile */
            (*total)++;
            n += (p & ~SCHED_RESET_ON_FORK) == policy;
        }
    closedir(d);
    return n;
}

/* The daemon's children (its sandbox processes) under policy, out of *total. */
static int children_with_policy(pid_t parent, int policy, int *total)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    int n = 0;
    *total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 0)
            continue;
        char path[64], line[512];
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        char *ok = fgets(line, sizeof line, f);
        fclose(f);
        const char *after = ok ? strrchr(line, ')') : NULL; /* the name may hold spaces */
        int ppid = 0;
        if (!after || sscanf(after, ") %*c %d", &ppid) != 1 || ppid != (int)parent)
            continue;
        int p = sched_getscheduler(pid);
        if (p < 0)
            continue;
        (*total)++;
        n += (p & ~SCHED_RESET_ON_FORK) == policy;
    }
    closedir(d);
    return n;
}

static void echo_once(void)
{
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                             "input", "message", "scheduling", "wait_ms", 10000);
    assert_status(st, 201, r);
    assert_string_equal(harness_str(r, "state"), "SUCCEEDED");
    json_decref(r);
}

static void threads_and_sandboxes_run_sched_batch_unless_normal(void **state)
{
    (void)state;
    /* The daemon inherits this process's policy: start from the normal one, so that "normal"
     * below is the daemon's own doing and "batch" is the daemon's own switch. */
    struct sched_param none = {0};
    if (sched_setscheduler(0, SCHED_BATCH, &none) != 0) {
        /* A sandbox of the machine's own (a container's seccomp) forbids it: nothing to see. */
        skip();
    }
    assert_int_equal(sched_setscheduler(0, SCHED_OTHER, &none), 0);
    harness_cleanup(&H);
    assert_int_equal(harness_start(&H, NULL), 0);
    echo_once(); /* every thread and the sandboxes are up */
    int n, total;
    n = threads_with_policy(H.pid, SCHED_BATCH, &total);
    assert_int_equal(n, total);
    assert_true(total >= 5);
    n = children_with_policy(H.pid, SCHED_BATCH, &total);
    assert_int_equal(n, total);
    assert_true(total >= 1);

    harness_cleanup(&H);
    harness_opts o = {.extra_top = "\"cpu_scheduling\": \"normal\""};
    assert_int_equal(harness_start(&H, &o), 0);
    echo_once();
    n = threads_with_policy(H.pid, SCHED_OTHER, &total);
    assert_int_equal(n, total);
    assert_true(total >= 5);
    n = children_with_policy(H.pid, SCHED_OTHER, &total);
    assert_int_equal(n, total);
    assert_true(total >= 1);
}

/* ---- policies --------------------------------------------------------------------------------- */

static void policy_deny_is_stored_with_its_reason(void **state)
{
    (void)state;
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                             "input", "message", "this is forbidden", "wait_ms", 10000);
    assert_status(st, 201, r);
    assert_string_equal(str(r, "state", NULL), "DENIED");
    assert_string_equal(str(r, "decision", "verdict"), "deny");
    assert_string_equal(str(r, "decision", "policy"), "default.lua");
    assert_true(strlen(str(r, "decision", "reason")) > 5);
    assert_int_equal(json_integer_value(json_object_get(r, "attempts")), 0);
    assert_true(json_is_null(json_object_get(r, "result")));
    json_decref(r);
}

static void writes_nobody_allowed_wait_for_approval_by_default(void **state)
{
    (void)state;
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:i}, s:i}", "connector", "t_ok", "action", "write_op",
                             "input", "n", -1, "wait_ms", 10000);
    assert_status(st, 201, r);
    assert_string_equal(str(r, "state", NULL), "PENDING_APPROVAL");
    assert_string_equal(str(r, "decision", "rule"), "default");
    assert_string_equal(str(r, "decision", "verdict"), "approve");
    json_decref(r);
    st = harness_submit(&H, &r, "{s:s, s:s, s:{s:i}, s:i}", "connector", "t_ok", "action", "write_op",
                        "input", "n", 5, "wait_ms", 10000);
    assert_status(st, 201, r);
    assert_string_equal(str(r, "state", NULL), "SUCCEEDED");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "result"), "n")), 5);
    json_decref(r);
}

/* ---- the record's text ------------------------------------------------------------------------ */

/* What differs from run to run in a record or a reply (ids, times, durations, the policy set's
 * version) becomes "X", recursively: what is left is each byte the daemon wrote. */
static void normalize(json_t *v, const char *key)
{
    const char *k;
    json_t *m;
    void *tmp;
    if (json_is_object(v)) {
        json_object_foreach_safe(v, tmp, k, m) {
            size_t n = strlen(k);
            int vol = strcmp(k, "id") == 0 || strcmp(k, "policy_version") == 0 ||
                      (n > 3 && (strcmp(k + n - 3, "_ms") == 0 || strcmp(k + n - 3, "_ns") == 0 ||
                                 strcmp(k + n - 3, "_at") == 0));
            if (vol && !json_is_null(m))
                json_object_set_new(v, k, json_string("X"));
            else if (strcmp(k, "idempotency_key") == 0 && strncmp(json_string_value(m), "aiorun-", 7) == 0)
                json_object_set_new(v, k, json_string("aiorun-X"));
            else
                normalize(m, k);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_array_foreach(v, i, m)
            normalize(m, key);
    }
}

static char *normalized_text(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *v = json_loadb(text, len, 0, &jerr); /* keeps the members' order */
    if (!v)
        return NULL;
    normalize(v, NULL);
    char *out = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    return out;
}

/* Submissions that do not run (they wait, or were refused): their stored record and the reply
 * are exactly what the submission made. Expected texts made by the daemon before the record
 * was built without json_pack (issue 9): every stored byte must stay the same. */
static const struct {
    const char *token;      /* "op": the harness's operator, else the name of a submitter */
    const char *body;
    const char *reply;
    const char *stored;
} record_cases[] = {
    {"op",
     "{\"connector\":\"t_ok\",\"action\":\"write_op\",\"input\":{\"n\":-1}}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"write_op\",\"state\":\"PENDING_APPROVAL\",\"effect\":\"write\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"input\":{\"n\":-1},\"proposer\":null,\"priority\":0,\"decision\":{\"verdict\":\"approve\",\"policy_verdict\":\"approve\",\"autonomy\":\"auto\",\"reason\":\"no policy had an opinion; write actions need approval by default\",\"rule\":\"default\",\"policy\":\"\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":null,\"rule\":null,\"reason\":null}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":{\"roles\":[],\"expires_ms\":\"X\",\"summary\":\"\",\"four_eyes\":false,\"rule\":\"default\",\"policy\":\"\",\"requested_ms\":\"X\"},\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":null,\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"write_op\",\"effect\":\"write\",\"idempotency\":\"none\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"key_given\":false,\"input\":{\"n\":-1},\"proposer\":null,\"priority\":0,\"digest\":\"40fcc510953f0ee694bb7eb23ee2f3f7619037fce6da117be0076f6b7157e635\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":null,\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"approve\",\"policy_verdict\":\"approve\",\"autonomy\":\"auto\",\"reason\":\"no policy had an opinion; write actions need approval by default\",\"rule\":\"default\",\"policy\":\"\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":null,\"rule\":null,\"reason\":null}]},\"approval\":{\"roles\":[],\"expires_ms\":\"X\",\"summary\":\"\",\"four_eyes\":false,\"rule\":\"default\",\"policy\":\"\",\"requested_ms\":\"X\"},\"state\":\"PENDING_APPROVAL\"}"},
    {"op",
     "{\"connector\":\"t_ok\",\"action\":\"write_op\",\"input\":{\"n\":7},\"idempotency_key\":\"order-7\",\"proposer\":{\"kind\":\"agent\",\"model\":\"m-1\",\"confidence\":0.5,\"prompt_ref\":\"p/1\",\"context_refs\":[\"doc:1\",\"ticket:2\"]},\"priority\":5,\"deadline_ms\":60000}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"write_op\",\"state\":\"PENDING_APPROVAL\",\"effect\":\"write\",\"idempotency_key\":\"order-7\",\"submitter\":\"test-operator\",\"input\":{\"n\":7},\"proposer\":{\"kind\":\"agent\",\"model\":\"m-1\",\"confidence\":0.5,\"prompt_ref\":\"p/1\",\"context_refs\":[\"doc:1\",\"ticket:2\"]},\"priority\":5,\"decision\":{\"verdict\":\"approve\",\"policy_verdict\":\"approve\",\"autonomy\":\"auto\",\"reason\":\"seven is a lot\",\"rule\":\"test_approve\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"approve\",\"rule\":\"test_approve\",\"reason\":\"seven is a lot\"}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":{\"roles\":[\"finance\"],\"expires_ms\":\"X\",\"summary\":\"write 7 needs finance\",\"four_eyes\":false,\"rule\":\"test_approve\",\"policy\":\"fixtures.lua\",\"requested_ms\":\"X\"},\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":null,\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"write_op\",\"effect\":\"write\",\"idempotency\":\"none\",\"idempotency_key\":\"order-7\",\"submitter\":\"test-operator\",\"key_given\":true,\"input\":{\"n\":7},\"proposer\":{\"kind\":\"agent\",\"model\":\"m-1\",\"confidence\":0.5,\"prompt_ref\":\"p/1\",\"context_refs\":[\"doc:1\",\"ticket:2\"]},\"priority\":5,\"digest\":\"6ad2c417b1321704049f9c73dfaacbe73e7ea1b9a83ce6f860e92fa8d031e0d2\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":null,\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"approve\",\"policy_verdict\":\"approve\",\"autonomy\":\"auto\",\"reason\":\"seven is a lot\",\"rule\":\"test_approve\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"approve\",\"rule\":\"test_approve\",\"reason\":\"seven is a lot\"}]},\"approval\":{\"roles\":[\"finance\"],\"expires_ms\":\"X\",\"summary\":\"write 7 needs finance\",\"four_eyes\":false,\"rule\":\"test_approve\",\"policy\":\"fixtures.lua\",\"requested_ms\":\"X\"},\"state\":\"PENDING_APPROVAL\"}"},
    {"op",
     "{\"connector\":\"t_ok\",\"action\":\"sleep\",\"input\":{\"ms\":1},\"idempotency_key\":\"k-semi\",\"wait_ms\":0}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"sleep\",\"state\":\"PENDING_APPROVAL\",\"effect\":\"read\",\"idempotency_key\":\"k-semi\",\"submitter\":\"test-operator\",\"input\":{\"ms\":1},\"proposer\":null,\"priority\":0,\"decision\":{\"verdict\":\"approve\",\"policy_verdict\":\"allow\",\"autonomy\":\"semi\",\"reason\":\"fixture connector\",\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"allow\",\"rule\":\"test_allow\",\"reason\":\"fixture connector\"}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":{\"roles\":[],\"expires_ms\":\"X\",\"summary\":\"autonomy level semi for t_ok.sleep\",\"four_eyes\":false,\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"requested_ms\":\"X\"},\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":null,\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"sleep\",\"effect\":\"read\",\"idempotency\":\"native\",\"idempotency_key\":\"k-semi\",\"submitter\":\"test-operator\",\"key_given\":true,\"input\":{\"ms\":1},\"proposer\":null,\"priority\":0,\"digest\":\"adbba6cc79679f2f5153dd240e8d3d44c78999bc36ad16ba89337262f87fff7a\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":null,\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"approve\",\"policy_verdict\":\"allow\",\"autonomy\":\"semi\",\"reason\":\"fixture connector\",\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"allow\",\"rule\":\"test_allow\",\"reason\":\"fixture connector\"}]},\"approval\":{\"roles\":[],\"expires_ms\":\"X\",\"summary\":\"autonomy level semi for t_ok.sleep\",\"four_eyes\":false,\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"requested_ms\":\"X\"},\"state\":\"PENDING_APPROVAL\"}"},
    {"op",
     "{\"connector\":\"t_ok\",\"action\":\"ok\",\"input\":{\"b\":[1,2,{\"z\":null,\"a\":true}],\"a\":\"x\"},\"priority\":-3}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"ok\",\"state\":\"SUGGESTED\",\"effect\":\"read\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"input\":{\"b\":[1,2,{\"z\":null,\"a\":true}],\"a\":\"x\"},\"proposer\":null,\"priority\":-3,\"decision\":{\"verdict\":\"suggest\",\"policy_verdict\":\"allow\",\"autonomy\":\"suggest\",\"reason\":\"fixture connector\",\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"allow\",\"rule\":\"test_allow\",\"reason\":\"fixture connector\"}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":null,\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":\"X\",\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"ok\",\"effect\":\"read\",\"idempotency\":\"native\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"key_given\":false,\"input\":{\"b\":[1,2,{\"z\":null,\"a\":true}],\"a\":\"x\"},\"proposer\":null,\"priority\":-3,\"digest\":\"c685fc5c79cd2028b0749fa661779ba03352028030ae3c7cc18fda1ca6454483\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":\"X\",\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"suggest\",\"policy_verdict\":\"allow\",\"autonomy\":\"suggest\",\"reason\":\"fixture connector\",\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"allow\",\"rule\":\"test_allow\",\"reason\":\"fixture connector\"}]},\"state\":\"SUGGESTED\"}"},
    {"op",
     "{\"connector\":\"t_ok\",\"action\":\"ok\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"ok\",\"state\":\"SUGGESTED\",\"effect\":\"read\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"input\":{},\"proposer\":null,\"priority\":0,\"decision\":{\"verdict\":\"suggest\",\"policy_verdict\":\"allow\",\"autonomy\":\"suggest\",\"reason\":\"fixture connector\",\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"allow\",\"rule\":\"test_allow\",\"reason\":\"fixture connector\"}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":null,\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":\"X\",\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"ok\",\"effect\":\"read\",\"idempotency\":\"native\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"key_given\":false,\"input\":{},\"proposer\":null,\"priority\":0,\"digest\":\"ce65631b48f58069aac7febc4d5b0e85381c1cc0115329a1ce940fe0f75f8abe\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":\"X\",\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"suggest\",\"policy_verdict\":\"allow\",\"autonomy\":\"suggest\",\"reason\":\"fixture connector\",\"rule\":\"test_allow\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"allow\",\"rule\":\"test_allow\",\"reason\":\"fixture connector\"}]},\"state\":\"SUGGESTED\"}"},
    {"mallory",
     "{\"connector\":\"t_ok\",\"action\":\"sleep\",\"input\":{\"ms\":2},\"idempotency_key\":\"m-1\",\"proposer\":{}}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"sleep\",\"state\":\"DENIED\",\"effect\":\"read\",\"idempotency_key\":\"m-1\",\"submitter\":\"mallory\",\"input\":{\"ms\":2},\"proposer\":{},\"priority\":0,\"decision\":{\"verdict\":\"deny\",\"policy_verdict\":\"deny\",\"autonomy\":\"semi\",\"reason\":\"mallory may not use fixtures\",\"rule\":\"test_submitter\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"deny\",\"rule\":\"test_submitter\",\"reason\":\"mallory may not use fixtures\"}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":null,\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":\"X\",\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"sleep\",\"effect\":\"read\",\"idempotency\":\"native\",\"idempotency_key\":\"m-1\",\"submitter\":\"mallory\",\"key_given\":true,\"input\":{\"ms\":2},\"proposer\":{},\"priority\":0,\"digest\":\"3ef33493cd2c1ec4bc7c0af32475f921ff8765dbd0a065636b61ad9e31ff40f0\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":\"X\",\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"deny\",\"policy_verdict\":\"deny\",\"autonomy\":\"semi\",\"reason\":\"mallory may not use fixtures\",\"rule\":\"test_submitter\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"deny\",\"rule\":\"test_submitter\",\"reason\":\"mallory may not use fixtures\"}]},\"state\":\"DENIED\"}"},
    {"op",
     "{\"connector\":\"echo\",\"action\":\"echo\",\"input\":{\"message\":\"this is forbidden\"},\"proposer\":{\"kind\":\"human\"},\"deadline_ms\":1}",
     "{\"id\":\"X\",\"connector\":\"echo\",\"action\":\"echo\",\"state\":\"DENIED\",\"effect\":\"read\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"input\":{\"message\":\"this is forbidden\"},\"proposer\":{\"kind\":\"human\"},\"priority\":0,\"decision\":{\"verdict\":\"deny\",\"policy_verdict\":\"deny\",\"autonomy\":\"auto\",\"reason\":\"the message contains the word \\\"forbidden\\\"\",\"rule\":\"echo_forbidden_word\",\"policy\":\"default.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":\"deny\",\"rule\":\"echo_forbidden_word\",\"reason\":\"the message contains the word \\\"forbidden\\\"\"},{\"file\":\"fixtures.lua\",\"verdict\":null,\"rule\":null,\"reason\":null}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":null,\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":\"X\",\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"echo\",\"action\":\"echo\",\"effect\":\"read\",\"idempotency\":\"native\",\"idempotency_key\":\"aiorun-X\",\"submitter\":\"test-operator\",\"key_given\":false,\"input\":{\"message\":\"this is forbidden\"},\"proposer\":{\"kind\":\"human\"},\"priority\":0,\"digest\":\"0c5d298b9783980d8068bd365ccc7922ae9868a734e4a9c0e761c8b2ed8a966c\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":\"X\",\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"deny\",\"policy_verdict\":\"deny\",\"autonomy\":\"auto\",\"reason\":\"the message contains the word \\\"forbidden\\\"\",\"rule\":\"echo_forbidden_word\",\"policy\":\"default.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":\"deny\",\"rule\":\"echo_forbidden_word\",\"reason\":\"the message contains the word \\\"forbidden\\\"\"},{\"file\":\"fixtures.lua\",\"verdict\":null,\"rule\":null,\"reason\":null}]},\"state\":\"DENIED\"}"},
    {"op",
     "{\"connector\":\"t_ok\",\"action\":\"write_op\",\"input\":{\"n\":1,\"deny_me\":true,\"note\":\"\\u00e9 \\\"q\\\" \\\\ \\u0001 \\u2028\"},\"idempotency_key\":\"\\u00fcnicode key\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"write_op\",\"state\":\"DENIED\",\"effect\":\"write\",\"idempotency_key\":\"\xc3\xbcnicode key\",\"submitter\":\"test-operator\",\"input\":{\"n\":1,\"deny_me\":true,\"note\":\"\xc3\xa9 \\\"q\\\" \\\\ \\u0001 \xe2\x80\xa8\"},\"proposer\":null,\"priority\":0,\"decision\":{\"verdict\":\"deny\",\"policy_verdict\":\"deny\",\"autonomy\":\"auto\",\"reason\":\"the test asked for a deny\",\"rule\":\"test_deny\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"deny\",\"rule\":\"test_deny\",\"reason\":\"the test asked for a deny\"}]},\"attempts\":0,\"result\":null,\"error\":null,\"history\":null,\"resolution\":null,\"cancel_requested_by\":null,\"approval\":null,\"validation\":null,\"cost\":null,\"review\":false,\"compacted\":false,\"created_at\":\"X\",\"updated_at\":\"X\",\"finished_at\":\"X\",\"deadline_at\":\"X\"}",
     "{\"id\":\"X\",\"connector\":\"t_ok\",\"action\":\"write_op\",\"effect\":\"write\",\"idempotency\":\"none\",\"idempotency_key\":\"\xc3\xbcnicode key\",\"submitter\":\"test-operator\",\"key_given\":true,\"input\":{\"n\":1,\"deny_me\":true,\"note\":\"\xc3\xa9 \\\"q\\\" \\\\ \\u0001 \xe2\x80\xa8\"},\"proposer\":null,\"priority\":0,\"digest\":\"542d32ee7d7f6462006f6e0fa3434aae7fcd4618ecf5073ee6be9795545bfa41\",\"attempts\":0,\"result\":null,\"error\":null,\"created_ms\":\"X\",\"updated_ms\":\"X\",\"finished_ms\":\"X\",\"deadline_ms\":\"X\",\"decision\":{\"verdict\":\"deny\",\"policy_verdict\":\"deny\",\"autonomy\":\"auto\",\"reason\":\"the test asked for a deny\",\"rule\":\"test_deny\",\"policy\":\"fixtures.lua\",\"policy_version\":\"X\",\"duration_ns\":\"X\",\"votes\":[{\"file\":\"default.lua\",\"verdict\":null,\"rule\":null,\"reason\":null},{\"file\":\"fixtures.lua\",\"verdict\":\"deny\",\"rule\":\"test_deny\",\"reason\":\"the test asked for a deny\"}]},\"state\":\"DENIED\"}"},
};

static void submitted_records_keep_their_text(void **state)
{
    (void)state;
    harness_cleanup(&H);
    harness_opts o = {.extra_top = "  \"approvers\": {\"finance\": [\"token:fin\"]},\n"
                                   "  \"autonomy\": {\"t_ok.sleep\": \"semi\", \"t_ok.ok\": \"suggest\"}"};
    assert_int_equal(harness_start(&H, &o), 0);
    char mallory[HARNESS_TOKEN_MAX];
    assert_int_equal(harness_token_create(&H, "mallory", "submitter", 0, mallory), 0);
    size_t n = sizeof record_cases / sizeof record_cases[0];
    char ids[64][40];
    assert_true(n <= 64);
    int mismatch = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *r = NULL;
        const char *tok = strcmp(record_cases[i].token, "op") == 0 ? H.token : mallory;
        long st = harness_http_as(&H, tok, "POST", "/v1/actions", record_cases[i].body, &r);
        char *raw = r ? json_dumps(r, JSON_COMPACT) : NULL;
        assert_non_null(raw);
        if (st != 201)
            fail_msg("case %zu: HTTP %ld %s", i, st, raw);
        snprintf(ids[i], sizeof ids[i], "%s", harness_str(r, "id"));
        char *got = normalized_text(raw, strlen(raw));
        if (strcmp(got, record_cases[i].reply) != 0) {
            fprintf(stderr, "case %zu reply:\n  got      %s\n  expected %s\n", i, got, record_cases[i].reply);
            mismatch = 1;
        }
        free(got);
        free(raw);
        json_decref(r);
    }
    assert_int_equal(harness_stop(&H), 0);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/var/journal", H.dir);
    journal *j = NULL;
    journal_opts jo = {.dir = dir, .map_size_mb = 64};
    ar_error err = {0};
    assert_int_equal(journal_open(&jo, &j, &err), AR_OK);
    journal_read *rd;
    assert_int_equal(journal_read_begin(j, &rd, &err), AR_OK);
    for (size_t i = 0; i < n; i++) {
        const void *val;
        size_t vlen;
        assert_int_equal(journal_get(rd, JDB_ACTIONS, ids[i], strlen(ids[i]), &val, &vlen), AR_OK);
        char *got = normalized_text(val, vlen); /* the blanks of its room to grow are skipped */
        assert_non_null(got);
        if (strcmp(got, record_cases[i].stored) != 0) {
            fprintf(stderr, "case %zu stored:\n  got      %s\n  expected %s\n", i, got, record_cases[i].stored);
            mismatch = 1;
        }
        free(got);
    }
    journal_read_end(rd);
    journal_close(j);
    assert_int_equal(mismatch, 0);
}

/* ---- listing ---------------------------------------------------------------------------------- */

static void listing_pages_newest_first_with_a_cursor(void **state)
{
    (void)state;
    char ids[5][32];
    for (int i = 0; i < 5; i++) {
        json_t *r;
        char msg[16];
        snprintf(msg, sizeof msg, "m%d", i);
        long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action",
                                 "echo", "input", "message", msg, "wait_ms", 10000);
        assert_status(st, 201, r);
        snprintf(ids[i], sizeof ids[i], "%s", str(r, "id", NULL));
        json_decref(r);
    }
    json_t *p1, *p2, *p3;
    long st = harness_http(&H, "GET", "/v1/actions?limit=2", NULL, &p1);
    assert_status(st, 200, p1);
    json_t *a1 = json_object_get(p1, "actions");
    assert_int_equal(json_array_size(a1), 2);
    assert_string_equal(str(json_array_get(a1, 0), "id", NULL), ids[4]);
    assert_string_equal(str(json_array_get(a1, 1), "id", NULL), ids[3]);
    char path[160];
    snprintf(path, sizeof path, "/v1/actions?limit=2&after=%s", str(p1, "next", NULL));
    st = harness_http(&H, "GET", path, NULL, &p2);
    json_t *a2 = json_object_get(p2, "actions");
    assert_int_equal(json_array_size(a2), 2);
    assert_string_equal(str(json_array_get(a2, 0), "id", NULL), ids[2]);
    assert_string_equal(str(json_array_get(a2, 1), "id", NULL), ids[1]);
    snprintf(path, sizeof path, "/v1/actions?limit=2&after=%s", str(p2, "next", NULL));
    st = harness_http(&H, "GET", path, NULL, &p3);
    json_t *a3 = json_object_get(p3, "actions");
    assert_int_equal(json_array_size(a3), 1);
    assert_string_equal(str(json_array_get(a3, 0), "id", NULL), ids[0]);
    assert_true(json_is_null(json_object_get(p3, "next")));
    json_decref(p1);
    json_decref(p2);
    json_decref(p3);

    /* Filters. */
    json_t *r;
    harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                   "input", "message", "forbidden", "wait_ms", 10000);
    json_decref(r);
    st = harness_http(&H, "GET", "/v1/actions?state=DENIED", NULL, &r);
    assert_int_equal(json_array_size(json_object_get(r, "actions")), 1);
    json_decref(r);
    st = harness_http(&H, "GET", "/v1/actions?connector=t_ok", NULL, &r);
    assert_int_equal(json_array_size(json_object_get(r, "actions")), 0);
    json_decref(r);
}

/* ---- misbehaving plugins --------------------------------------------------------------------- */

static void submit_wait(const char *connector, const char *action, const char *expect_state,
                        const char *expect_class)
{
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{}, s:i}", "connector", connector, "action",
                             action, "input", "wait_ms", 20000);
    assert_status(st, 201, r);
    if (strcmp(str(r, "state", NULL), expect_state) != 0) {
        char *dump = json_dumps(r, JSON_COMPACT);
        fail_msg("%s/%s: expected %s, got %s", connector, action, expect_state, dump);
    }
    if (expect_class)
        assert_string_equal(str(r, "error", "class"), expect_class);
    json_decref(r);
}

static void echo_still_works(void)
{
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                             "input", "message", "still here", "wait_ms", 10000);
    assert_status(st, 201, r);
    assert_string_equal(str(r, "state", NULL), "SUCCEEDED");
    json_decref(r);
}

static void crashing_plugin_fails_its_call_and_is_restarted(void **state)
{
    (void)state;
    submit_wait("t_crash", "crash", "FAILED", "plugin_crashed");
    echo_still_works();
    submit_wait("t_crash", "ok", "SUCCEEDED", NULL); /* after a restart */
    json_t *r;
    harness_http(&H, "GET", "/v1/connectors", NULL, &r);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "connectors"), i, c) {
        if (strcmp(str(c, "name", NULL), "t_crash") == 0)
            assert_true(json_integer_value(json_object_get(c, "restarts")) >= 1);
    }
    json_decref(r);
}

static void hanging_plugin_times_out_and_others_keep_serving(void **state)
{
    (void)state;
    submit_wait("t_hang", "hang", "FAILED", "timeout");
    echo_still_works();
    submit_wait("t_hang", "ok", "SUCCEEDED", NULL);
}

static void garbage_from_a_plugin_is_contained(void **state)
{
    (void)state;
    submit_wait("t_garbage", "garbage", "FAILED", "plugin_crashed");
    echo_still_works();
    submit_wait("t_garbage", "ok", "SUCCEEDED", NULL);
}

/* ---- restarts --------------------------------------------------------------------------------- */

static void restart_keeps_every_action(void **state)
{
    (void)state;
    char ids[3][32];
    const char *msgs[3] = {"a", "b", "forbidden"};
    for (int i = 0; i < 3; i++) {
        json_t *r;
        harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                       "input", "message", msgs[i], "wait_ms", 10000);
        snprintf(ids[i], sizeof ids[i], "%s", str(r, "id", NULL));
        json_decref(r);
    }
    assert_int_equal(harness_stop(&H), 0);
    assert_int_equal(harness_restart(&H), 0);
    harness_kill9(&H); /* and once more the hard way */
    assert_int_equal(harness_restart(&H), 0);
    const char *want[3] = {"SUCCEEDED", "SUCCEEDED", "DENIED"};
    for (int i = 0; i < 3; i++) {
        char path[128];
        json_t *g;
        snprintf(path, sizeof path, "/v1/actions/%s", ids[i]);
        long st = harness_http(&H, "GET", path, NULL, &g);
        assert_status(st, 200, g);
        assert_string_equal(str(g, "state", NULL), want[i]);
        json_decref(g);
    }
    json_t *list;
    harness_http(&H, "GET", "/v1/actions", NULL, &list);
    assert_int_equal(json_array_size(json_object_get(list, "actions")), 3);
    json_decref(list);
}

/* ---- crash: kill -9 with calls in flight --------------------------------------------------- */

static json_t *get_action(const char *id)
{
    char path[128];
    json_t *g = NULL;
    snprintf(path, sizeof path, "/v1/actions/%s", id);
    harness_http(&H, "GET", path, NULL, &g);
    return g;
}

/* Poll until the action is in state want (or 15 s pass); returns its last view. */
static json_t *await_state(const char *id, const char *want)
{
    json_t *g = NULL;
    for (int i = 0; i < 750; i++) {
        json_decref(g);
        g = get_action(id);
        if (strcmp(str(g, "state", NULL), want) == 0)
            break;
        usleep(20 * 1000);
    }
    return g;
}

static void kill9_with_calls_in_flight_resolves_them_on_restart(void **state)
{
    (void)state;
    json_t *r;
    char write_id[32], read_id[32], queued_id[32];
    /* t_ok has two processes: the write and the read occupy both, the third waits READY. */
    harness_submit(&H, &r, "{s:s, s:s, s:{s:i, s:i}}", "connector", "t_ok", "action", "write_op",
                   "input", "n", 1, "ms", 3000);
    snprintf(write_id, sizeof write_id, "%s", str(r, "id", NULL));
    json_decref(r);
    harness_submit(&H, &r, "{s:s, s:s, s:{s:i}}", "connector", "t_ok", "action", "sleep",
                   "input", "ms", 3000);
    snprintf(read_id, sizeof read_id, "%s", str(r, "id", NULL));
    json_decref(r);
    harness_submit(&H, &r, "{s:s, s:s, s:{s:i}}", "connector", "t_ok", "action", "sleep",
                   "input", "ms", 10);
    snprintf(queued_id, sizeof queued_id, "%s", str(r, "id", NULL));
    json_decref(r);

    json_t *g = await_state(write_id, "DISPATCHED");
    assert_string_equal(str(g, "state", NULL), "DISPATCHED");
    json_decref(g);
    g = await_state(read_id, "DISPATCHED");
    assert_string_equal(str(g, "state", NULL), "DISPATCHED");
    json_decref(g);
    g = get_action(queued_id);
    assert_string_equal(str(g, "state", NULL), "READY");
    json_decref(g);

    harness_kill9(&H);
    assert_int_equal(harness_restart(&H), 0);

    /* The write without idempotency support is never repeated: an operator must look. */
    g = await_state(write_id, "UNKNOWN_OUTCOME");
    assert_string_equal(str(g, "state", NULL), "UNKNOWN_OUTCOME");
    assert_int_equal(json_integer_value(json_object_get(g, "attempts")), 1);
    assert_string_equal(str(g, "error", "class"), "unknown_outcome");
    json_decref(g);
    /* The read is sent again, as a second attempt with the same idempotency key. */
    g = await_state(read_id, "SUCCEEDED");
    assert_string_equal(str(g, "state", NULL), "SUCCEEDED");
    assert_int_equal(json_integer_value(json_object_get(g, "attempts")), 2);
    json_decref(g);
    /* The queued one resumes as its first attempt. */
    g = await_state(queued_id, "SUCCEEDED");
    assert_string_equal(str(g, "state", NULL), "SUCCEEDED");
    assert_int_equal(json_integer_value(json_object_get(g, "attempts")), 1);
    json_decref(g);
}

/* ---- a waiting client's action held for a busy connector ------------------------------------- */

typedef struct waiting_submit {
    long status;
    json_t *reply;
} waiting_submit;

static void *submit_waiting(void *arg)
{
    waiting_submit *w = arg;
    w->status = harness_submit(&H, &w->reply, "{s:s, s:s, s:{s:i}, s:i}", "connector", "t_ok", "action",
                               "sleep", "input", "ms", 10, "wait_ms", 30000);
    return NULL;
}

static json_int_t t_ok_queued(void)
{
    json_t *r = NULL, *c;
    json_int_t queued = -1;
    size_t i;
    harness_http(&H, "GET", "/v1/connectors", NULL, &r);
    json_array_foreach(json_object_get(r, "connectors"), i, c)
        if (strcmp(str(c, "name", NULL), "t_ok") == 0)
            queued = json_integer_value(json_object_get(json_object_get(c, "flow"), "queued"));
    json_decref(r);
    return queued;
}

static size_t actions_listed(void)
{
    json_t *r = NULL;
    harness_http(&H, "GET", "/v1/actions?limit=100", NULL, &r);
    size_t n = json_array_size(json_object_get(r, "actions"));
    json_decref(r);
    return n;
}

/* Both t_ok processes busy with a sleep of ms each (no waiting client), then a waiting client's
 * action submitted from its own thread, seen waiting in the connector's queue. */
static void busy_then_waiting_client(int ms, pthread_t *thread, waiting_submit *w)
{
    for (int i = 0; i < 2; i++) {
        json_t *r;
        long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:i}}", "connector", "t_ok", "action", "sleep",
                                 "input", "ms", ms);
        assert_status(st, 201, r);
        json_t *g = await_state(str(r, "id", NULL), "DISPATCHED");
        assert_string_equal(str(g, "state", NULL), "DISPATCHED");
        json_decref(g);
        json_decref(r);
    }
    memset(w, 0, sizeof *w);
    assert_int_equal(pthread_create(thread, NULL, submit_waiting, w), 0);
    int i = 0;
    while (t_ok_queued() != 1 && i++ < 500)
        usleep(20 * 1000);
    assert_int_equal(t_ok_queued(), 1);
}

/* A client waiting for its action while the connector is busy: the action waits for a place,
 * not stored yet (the connector's queue counts it, no listing shows it), then runs as one
 * attempt and the client gets its outcome. A kill -9 meanwhile loses only that request, which
 * was never acknowledged: after the restart it is nowhere and nothing ran twice. */
static void waiting_clients_action_waits_unstored_for_a_busy_connector(void **state)
{
    (void)state;
    pthread_t thread;
    waiting_submit w;
    busy_then_waiting_client(1500, &thread, &w);
    assert_int_equal(actions_listed(), 2);
    pthread_join(thread, NULL);
    assert_status(w.status, 201, w.reply);
    assert_string_equal(str(w.reply, "state", NULL), "SUCCEEDED");
    assert_int_equal(json_integer_value(json_object_get(w.reply, "attempts")), 1);
    json_decref(w.reply);
    assert_int_equal(actions_listed(), 3);

    busy_then_waiting_client(3000, &thread, &w);
    harness_kill9(&H);
    pthread_join(thread, NULL);
    assert_int_not_equal(w.status, 201); /* no answer: the connection went with the daemon */
    json_decref(w.reply);
    assert_int_equal(harness_restart(&H), 0);
    /* the two sleeps (reads) are resumed and settle; the held action never existed */
    json_t *r = NULL;
    for (int i = 0; i < 750; i++) {
        json_decref(r);
        harness_http(&H, "GET", "/v1/actions?state=SUCCEEDED&limit=100", NULL, &r);
        if (json_array_size(json_object_get(r, "actions")) == 5)
            break;
        usleep(20 * 1000);
    }
    assert_int_equal(json_array_size(json_object_get(r, "actions")), 5);
    json_decref(r);
    assert_int_equal(actions_listed(), 5);
    assert_int_equal(t_ok_queued(), 0);
}

static void a_second_daemon_on_the_same_data_is_refused(void **state)
{
    (void)state;
    char bin[300], out[256];
    harness_bin(bin, sizeof bin, "aiorun");
    char *argv[] = {bin, "--config", H.config_path, NULL};
    assert_int_equal(harness_run(&H, argv, out, sizeof out), 1);
    /* The first one serves on. */
    echo_still_works();
}

/* ---- backup under load -------------------------------------------------------------------------- */

static volatile int load_running;

static void *background_load(void *arg)
{
    (void)arg;
    for (int i = 0; load_running && i < 2000; i++) {
        json_t *r;
        harness_submit(&H, &r, "{s:s, s:s, s:{s:s}}", "connector", "echo", "action", "echo", "input",
                       "message", "load");
        json_decref(r);
    }
    return NULL;
}

static void backup_under_load_restores_to_a_daemon_serving_every_action(void **state)
{
    (void)state;
    enum { N = 40 };
    char ids[N][32];
    for (int i = 0; i < N; i++) {
        json_t *r;
        long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                                 "input", "message", "before backup", "wait_ms", 10000);
        assert_status(st, 201, r);
        snprintf(ids[i], sizeof ids[i], "%s", str(r, "id", NULL));
        json_decref(r);
    }
    load_running = 1;
    pthread_t t;
    pthread_create(&t, NULL, background_load, NULL);
    usleep(100 * 1000);
    char bin[300], out[4096], backup[400];
    harness_bin(bin, sizeof bin, "aioctl");
    snprintf(backup, sizeof backup, "%s/backup", H.dir);
    char *argv[] = {bin, "--config", H.config_path, "backup", backup, NULL};
    int rc = harness_run(&H, argv, out, sizeof out);
    load_running = 0;
    pthread_join(t, NULL);
    assert_int_equal(rc, 0);

    /* Restore into a fresh data directory and start a second daemon on it. */
    harness R = H;
    assert_true(snprintf(R.dir, sizeof R.dir, "%s/restored", H.dir) < (int)sizeof R.dir);
    snprintf(R.config_path, sizeof R.config_path, "%s/aiorun.json", R.dir);
    snprintf(R.log_path, sizeof R.log_path, "%s/daemon.log", R.dir);
    char cmd[3000];
    int n = snprintf(cmd, sizeof cmd, "mkdir -p '%s/var' && chmod 700 '%s/var' && cp -r '%s/journal' '%s/var/' && "
             "cp '%s/auth.key' '%s/var/auth.key' && chmod 600 '%s/var/auth.key'",
             R.dir, R.dir, backup, R.dir, backup, R.dir, R.dir);
    assert_true(n < (int)sizeof cmd);
    assert_int_equal(system(cmd), 0);
    json_t *cfg = json_load_file(H.config_path, 0, NULL);
    assert_non_null(cfg);
    R.port = harness_free_port();
    snprintf(R.url, sizeof R.url, "http://127.0.0.1:%d", R.port);
    char listen[32];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", R.port);
    json_object_set_new(cfg, "listen", json_string(listen));
    char policies[400];
    snprintf(policies, sizeof policies, "%s/policies", H.dir);
    json_object_set_new(cfg, "policy_dir", json_string(policies));
    assert_int_equal(json_dump_file(cfg, R.config_path, JSON_INDENT(2)), 0);
    json_decref(cfg);
    R.pid = 0;
    assert_int_equal(harness_restart(&R), 0);
    for (int i = 0; i < N; i++) {
        char path[96];
        json_t *g;
        assert_true(snprintf(path, sizeof path, "/v1/actions/%.32s", ids[i]) < (int)sizeof path);
        long st = harness_http(&R, "GET", path, NULL, &g);
        assert_status(st, 200, g);
        assert_string_equal(str(g, "state", NULL), "SUCCEEDED");
        json_decref(g);
    }
    /* It serves new work too. */
    json_t *r;
    long st = harness_submit(&R, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                             "input", "message", "after restore", "wait_ms", 10000);
    assert_status(st, 201, r);
    assert_string_equal(str(r, "state", NULL), "SUCCEEDED");
    json_decref(r);
    assert_int_equal(harness_stop(&R), 0);
}

/* ---- ABI ----------------------------------------------------------------------------------------- */

static void other_abi_major_is_refused_and_older_minor_loads(void **state)
{
    (void)state;
    harness_cleanup(&H);
    char p_major[300], extra[400];
    harness_test_plugin(p_major, sizeof p_major, "t_abi_major");
    snprintf(extra, sizeof extra, "\"t_major\": {\"plugin\": \"%s\", \"processes\": 1}", p_major);
    harness_opts o = {.extra_connectors = extra};
    assert_int_equal(harness_start(&H, &o), 0);

    json_t *r;
    long st = harness_http(&H, "GET", "/v1/connectors", NULL, &r);
    assert_status(st, 200, r);
    int seen = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "connectors"), i, c) {
        const char *name = str(c, "name", NULL);
        if (strcmp(name, "t_major") == 0) {
            seen++;
            assert_string_equal(str(c, "status", NULL), "refused");
            const char *msg = str(c, "message", NULL);
            assert_non_null(strstr(msg, "t_abi_major.so"));
            assert_non_null(strstr(msg, "2.")); /* its ABI */
            assert_non_null(strstr(msg, "1.")); /* ours */
        } else if (strcmp(name, "t_old") == 0) {
            seen++;
            assert_string_equal(str(c, "status", NULL), "ready");
            assert_string_equal(str(c, "abi", NULL), "1.0");
        } else {
            assert_string_equal(str(c, "status", NULL), "ready");
        }
    }
    assert_int_equal(seen, 2);
    json_decref(r);

    expect_error("POST", "/v1/actions", "{\"connector\":\"t_major\",\"action\":\"ok\"}", 503, "connector_unavailable");
    submit_wait("t_old", "ok", "SUCCEEDED", NULL);
    echo_still_works();
}

/* ---- storage ------------------------------------------------------------------------------------ */

static void full_journal_is_a_clean_storage_full_error(void **state)
{
    (void)state;
    harness_cleanup(&H);
    harness_opts o = {.map_size_mb = 1};
    assert_int_equal(harness_start(&H, &o), 0);
    char *big = malloc(60001);
    memset(big, 'y', 60000);
    big[60000] = '\0';
    char first_id[32] = "";
    long st = 0;
    json_t *r = NULL;
    for (int i = 0; i < 64; i++) {
        json_decref(r);
        st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}}", "connector", "echo", "action", "echo",
                            "input", "message", big);
        if (st != 201)
            break;
        if (!first_id[0])
            snprintf(first_id, sizeof first_id, "%s", str(r, "id", NULL));
    }
    free(big);
    assert_status(st, 503, r);
    /* Refused before it is full (backpressure) or when full: a clean error either way. */
    const char *code = str(r, "error", NULL);
    assert_true(strcmp(code, "storage_full") == 0 || strcmp(code, "storage_nearly_full") == 0);
    json_decref(r);
    /* What was stored before is intact and readable. */
    char path[128];
    snprintf(path, sizeof path, "/v1/actions/%s", first_id);
    st = harness_http(&H, "GET", path, NULL, &r);
    assert_status(st, 200, r);
    json_decref(r);
    st = harness_http(&H, "GET", "/healthz", NULL, NULL);
    assert_int_equal(st, 200);
}

/* ---- aioctl ------------------------------------------------------------------------------------- */

static void aioctl_exit_codes_follow_the_outcome(void **state)
{
    (void)state;
    char bin[300], out[8192];
    harness_bin(bin, sizeof bin, "aioctl");
    char *ok[] = {bin, "submit", "echo", "echo", "{\"message\":\"cli\"}", "--wait", NULL};
    assert_int_equal(harness_run(&H, ok, out, sizeof out), 0);
    assert_non_null(strstr(out, "SUCCEEDED"));
    char *denied[] = {bin, "submit", "echo", "echo", "{\"message\":\"forbidden\"}", "--wait", NULL};
    assert_int_equal(harness_run(&H, denied, out, sizeof out), 1);
    assert_non_null(strstr(out, "DENIED"));
    char *usage[] = {bin, "submit", "echo", "echo", "{not json", NULL};
    assert_int_equal(harness_run(&H, usage, out, sizeof out), 2);
    char *unreachable[] = {bin, "--url", "http://127.0.0.1:1", "connectors", NULL};
    assert_int_equal(harness_run(&H, unreachable, out, sizeof out), 3);
    char *refused[] = {bin, "submit", "nope", "echo", NULL};
    assert_int_equal(harness_run(&H, refused, out, sizeof out), 4);
    char *json_list[] = {bin, "--json", "list", NULL};
    assert_int_equal(harness_run(&H, json_list, out, sizeof out), 0);
    json_t *doc = json_loads(out, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(json_array_size(json_object_get(doc, "actions")), 2);
    json_decref(doc);
}

/* ---- the daemon's log ----------------------------------------------------------------------------- */

/* The daemon's log file, NUL-terminated; owned by the caller. */
static char *read_log(const harness *h)
{
    FILE *f = fopen(h->log_path, "r");
    assert_non_null(f);
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    assert_non_null(m);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, m);
    fclose(f);
    fclose(m);
    return text;
}

/* Submit echo/echo and wait; the action's id into id (27 bytes). */
static void echo_action(char id[27])
{
    json_t *r;
    long st = harness_submit(&H, &r, "{s:s, s:s, s:{s:s}, s:i}", "connector", "echo", "action", "echo",
                             "input", "message", "logged", "wait_ms", 10000);
    assert_status(st, 201, r);
    assert_string_equal(str(r, "state", NULL), "SUCCEEDED");
    snprintf(id, 27, "%s", str(r, "id", NULL));
    json_decref(r);
}

static void log_is_json_lines_naming_the_action(void **state)
{
    (void)state;
    char id[27];
    echo_action(id);
    assert_int_equal(harness_stop(&H), 0);
    char *log = read_log(&H);
    int lines = 0, action_line = 0, listening_line = 0;
    for (char *save = NULL, *line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lines++;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, NULL);
        if (!j)
            fail_msg("a log line is not JSON: %s", line);
        const char *level = str(j, "level", NULL), *component = str(j, "component", NULL);
        const char *msg = str(j, "msg", NULL), *action = json_string_value(json_object_get(j, "action"));
        assert_true(json_is_string(json_object_get(j, "time")));
        assert_true(strcmp(level, "debug") == 0 || strcmp(level, "info") == 0 || strcmp(level, "warn") == 0 ||
                    strcmp(level, "error") == 0);
        if (strcmp(component, "api") == 0 && action && strcmp(action, id) == 0 && strstr(msg, "echo/echo SUCCEEDED"))
            action_line = 1;
        if (strcmp(component, "daemon") == 0 && !action && strstr(msg, "listening on http://127.0.0.1:"))
            listening_line = 1;
        json_decref(j);
    }
    free(log);
    assert_true(lines > 3);
    assert_true(action_line);
    assert_true(listening_line);
}

static int start_text_warn(void **state)
{
    (void)state;
    unsetenv("AIORUN_LOG_LEVEL");
    harness_opts o = {.extra_top = "\"log_format\": \"text\", \"log_level\": \"warn\""};
    return harness_start(&H, &o);
}

static void text_log_and_the_environment_overriding_the_level(void **state)
{
    (void)state;
    char id[27], want[128];
    echo_action(id);
    assert_int_equal(harness_stop(&H), 0);
    char *log = read_log(&H);
    assert_null(strstr(log, " aiorun info ")); /* the config's warn */
    assert_null(strstr(log, "{\"time\""));
    free(log);

    /* AIORUN_LOG_LEVEL wins over the config's log_level */
    setenv("AIORUN_LOG_LEVEL", "info", 1);
    int rc = harness_restart(&H);
    unsetenv("AIORUN_LOG_LEVEL");
    assert_int_equal(rc, 0);
    echo_action(id);
    assert_int_equal(harness_stop(&H), 0);
    log = read_log(&H);
    snprintf(want, sizeof want, "Z aiorun info action %s echo/echo SUCCEEDED\n", id);
    assert_non_null(strstr(log, want));
    assert_non_null(strstr(log, "Z aiorun info aiorun "));
    free(log);

    /* an unknown level there stops the start, naming the allowed ones */
    setenv("AIORUN_LOG_LEVEL", "verbose", 1);
    rc = harness_restart(&H);
    unsetenv("AIORUN_LOG_LEVEL");
    assert_int_not_equal(rc, 0);
    log = read_log(&H);
    assert_non_null(strstr(log, "AIORUN_LOG_LEVEL: expected \"debug\", \"info\", \"warn\" or \"error\" (or unset), "
                                "got \"verbose\""));
    free(log);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(submit_and_wait_returns_the_plugins_result, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(submit_without_wait_is_accepted_then_completes, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(idempotent_resubmit_returns_the_same_action, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(same_key_with_another_payload_is_a_conflict, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(concurrent_submissions_with_one_key_make_one_action, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(bad_requests_get_stable_error_codes, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(refused_submissions_keep_their_messages, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(oversized_body_is_refused, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(threads_and_sandboxes_run_sched_batch_unless_normal, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(policy_deny_is_stored_with_its_reason, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(writes_nobody_allowed_wait_for_approval_by_default, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(submitted_records_keep_their_text, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(listing_pages_newest_first_with_a_cursor, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(crashing_plugin_fails_its_call_and_is_restarted, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(hanging_plugin_times_out_and_others_keep_serving, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(garbage_from_a_plugin_is_contained, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(restart_keeps_every_action, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(kill9_with_calls_in_flight_resolves_them_on_restart, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(waiting_clients_action_waits_unstored_for_a_busy_connector, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(a_second_daemon_on_the_same_data_is_refused, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(backup_under_load_restores_to_a_daemon_serving_every_action, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(other_abi_major_is_refused_and_older_minor_loads, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(full_journal_is_a_clean_storage_full_error, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(aioctl_exit_codes_follow_the_outcome, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(log_is_json_lines_naming_the_action, start_default, stop_daemon),
    cmocka_unit_test_setup_teardown(text_log_and_the_environment_overriding_the_level, start_text_warn, stop_daemon),
};

AR_TEST_MAIN(tests, NULL, NULL)
