/*
 * host_main.c - aiorun-host, the sandbox host process a connector plugin runs in.
 *
 *   aiorun-host --connector NAME --plugin /abs/path.so [--max-frame N]
 *
 * Started by the daemon (sandbox.c) with posix_spawn, an empty environment and the daemon's
 * socket as fd 3. It locks itself down, loads the plugin, checks its ABI and descriptor, says
 * HELLO (or REFUSED), waits for INIT (config and this connector's secrets), calls the plugin's
 * init, says READY, then serves INVOKE / LOOKUP frames one at a time until SHUTDOWN or EOF.
 * Exit statuses are listed in host.h.
 */
#include "host.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <curl/curl.h>

#include "ar.h"
#include "frame.h"

/* Address-space cap: room for libcurl's threads, OpenSSL and results of several MiB. */
#define HOST_RLIMIT_AS (512ull * 1024 * 1024)
#define HOST_RLIMIT_NOFILE 64
/* CPU seconds over the whole life of the process: a ceiling against runaway loops only (the
 * per-call deadline is the daemon's wall-clock timer). The soft limit sends SIGXCPU, which
 * names the cause in the daemon's log; the hard one a little later is SIGKILL. */
#define HOST_RLIMIT_CPU_S (4 * 3600)
#define HOST_RLIMIT_CPU_GRACE_S 30
/* Deadline for init and for requests that carry none. */
#define HOST_DEFAULT_DEADLINE_MS 30000
/* Upper bound on the number of actions a descriptor may declare. */
#define HOST_MAX_ACTIONS 256
/* The sizes of the ABI 1.0 structures: anything smaller cannot be read safely. */
#define ABI_1_0_PLUGIN_SIZE offsetof(aiorun_plugin, lookup)
#define ABI_1_0_ACTION_SIZE sizeof(aiorun_action)

typedef struct host_args {
    const char *connector;
    const char *plugin;
    size_t max_frame;
} host_args;

/* The loaded plugin. */
typedef struct host_plugin {
    const aiorun_plugin *desc;
    aiorun_lookup_fn lookup;     /* NULL when absent or the descriptor predates ABI 1.1 */
    void *instance;
    int initialized;
} host_plugin;

static void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("aiorun-host: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    _exit(status);
}

/* Nothing but 0-2 and the socket may stay open: whatever else the parent leaked is closed. */
static void close_inherited_fds(void)
{
    if (close_range(HOST_FD + 1, ~0U, 0) != 0) {
        long max = sysconf(_SC_OPEN_MAX);
        if (max < 0 || max > 65536)
            max = 65536;
        for (int fd = HOST_FD + 1; fd < max; fd++)
            close(fd);
    }
    /* A closed 0-2 would let a later open() land there and be written to by accident. */
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) == -1) {
            int nfd = open("/dev/null", O_RDWR);
            if (nfd >= 0 && nfd != fd) {
                dup2(nfd, fd);
                close(nfd);
            }
        }
    }
}

static void usage(void)
{
    die(HOST_EXIT_USAGE, "usage: aiorun-host --connector NAME --plugin /abs/path.so [--max-frame N]"
        " (fd 3 must be the daemon's socket)");
}

static void parse_args(int argc, char **argv, host_args *a)
{
    a->connector = NULL;
    a->plugin = NULL;
    a->max_frame = FRAME_DEFAULT_MAX_PAYLOAD;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--connector") == 0) {
            a->connector = argv[++i];
        } else if (strcmp(argv[i], "--plugin") == 0) {
            a->plugin = argv[++i];
        } else if (strcmp(argv[i], "--max-frame") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (errno || *end || v < 4096 || v > UINT32_MAX)
                die(HOST_EXIT_USAGE, "--max-frame must be between 4096 and %u", UINT32_MAX);
            a->max_frame = (size_t)v;
        } else {
            usage();
        }
    }
    if (!a->connector || !*a->connector || !a->plugin || a->plugin[0] != '/')
        usage();
    struct stat st;
    if (fstat(HOST_FD, &st) != 0 || !S_ISSOCK(st.st_mode))
        die(HOST_EXIT_USAGE, "fd %d is not a socket", HOST_FD);
}

/* Lower (never raise: we lack CAP_SYS_RESOURCE) a limit to soft/hard. */
static void lower_rlimit(int resource, const char *name, rlim_t soft, rlim_t hard)
{
    struct rlimit cur;
    if (getrlimit(resource, &cur) != 0)
        die(HOST_EXIT_INTERNAL, "getrlimit(%s): %s", name, strerror(errno));
    if (cur.rlim_max != RLIM_INFINITY && hard > cur.rlim_max)
        hard = cur.rlim_max;
    if (soft > hard)
        soft = hard;
    struct rlimit want = {.rlim_cur = soft, .rlim_max = hard};
    if (setrlimit(resource, &want) != 0)
        die(HOST_EXIT_INTERNAL, "setrlimit(%s): %s", name, strerror(errno));
}

static void set_rlimits(void)
{
#ifndef AIORUN_SANITIZE
    /* sanitizer shadow memory needs terabytes of address space */
    lower_rlimit(RLIMIT_AS, "RLIMIT_AS", HOST_RLIMIT_AS, HOST_RLIMIT_AS);
#endif
    lower_rlimit(RLIMIT_NOFILE, "RLIMIT_NOFILE", HOST_RLIMIT_NOFILE, HOST_RLIMIT_NOFILE);
    lower_rlimit(RLIMIT_CORE, "RLIMIT_CORE", 0, 0);
    lower_rlimit(RLIMIT_CPU, "RLIMIT_CPU", HOST_RLIMIT_CPU_S,
                 HOST_RLIMIT_CPU_S + HOST_RLIMIT_CPU_GRACE_S);
}

/* Nobody of our uid may ptrace us or read our memory, and nothing we exec gains privileges. */
static void set_nondumpable_no_new_privs(void)
{
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        die(HOST_EXIT_INTERNAL, "prctl(PR_SET_DUMPABLE): %s", strerror(errno));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die(HOST_EXIT_INTERNAL, "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(errno));
}

static void send_frame(host_ctx *h, frame_type type, uint32_t id, json_t *payload)
{
    ar_error err;
    int rc = frame_write_fd(h->fd, type, id, payload, h->max_frame, &err);
    json_decref(payload);
    if (rc == AR_E_CLOSED)
        _exit(HOST_EXIT_OK); /* the daemon is gone: nobody to answer */
    if (rc != AR_OK)
        die(HOST_EXIT_INTERNAL, "sending a frame: %s", err.message);
}

/* Send REFUSED and exit 3. */
static void refuse(host_ctx *h, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
static void refuse(host_ctx *h, const char *code, const char *fmt, ...)
{
    char raw[1024], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    host_sanitize_text(msg, sizeof msg, raw);
    send_frame(h, FRAME_REFUSED, 0, json_pack("{s:s, s:s}", "error", code, "message", msg));
    _exit(HOST_EXIT_REFUSED);
}

/* ---- descriptor checks ---- */

static int valid_action_name(const char *s)
{
    if (!s || !*s || strlen(s) > 128)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || strchr("_.-", *s)))
            return 0;
    return 1;
}

/* Parse a schema text (NULL means {"type":"object"}). NULL with why filled on failure. */
static json_t *parse_schema(const char *text, char *why, size_t cap)
{
    if (!text)
        return json_pack("{s:s}", "type", "object");
    json_error_t jerr;
    json_t *s = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!s) {
        snprintf(why, cap, "not JSON: %s at line %d column %d", jerr.text, jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(s)) {
        json_decref(s);
        snprintf(why, cap, "not a JSON object");
        return NULL;
    }
    return s;
}

static const char *effect_name(int e)
{
    static const char *const names[] = {"read", "write", "irreversible"};
    return e >= 0 && e <= 2 ? names[e] : NULL;
}

static const char *idempotency_name(int i)
{
    static const char *const names[] = {"none", "native", "lookup"};
    return i >= 0 && i <= 2 ? names[i] : NULL;
}

/* Set key to a string from the plugin; 0 on failure (not UTF-8 or out of memory). */
static int set_text(json_t *obj, const char *key, const char *s)
{
    json_t *v = json_string(s ? s : "");
    return v && json_object_set_new(obj, key, v) == 0;
}

/*
 * Check the descriptor (whose ABI major already matches) and build the HELLO payload.
 * NULL with why filled when the descriptor is unusable.
 */
static json_t *describe(const aiorun_plugin *d, aiorun_lookup_fn *lookup, char *why, size_t cap)
{
    char sub[300];
    json_t *out = NULL, *actions = NULL, *schema = NULL;

    *lookup = NULL;
    if (d->struct_size < ABI_1_0_PLUGIN_SIZE) {
        snprintf(why, cap, "struct_size %u is smaller than the %zu bytes of an ABI 1.0 descriptor",
                 d->struct_size, (size_t)ABI_1_0_PLUGIN_SIZE);
        return NULL;
    }
    if (d->action_size < ABI_1_0_ACTION_SIZE) {
        snprintf(why, cap, "action_size %u is smaller than the %zu bytes of an ABI 1.0 action",
                 d->action_size, (size_t)ABI_1_0_ACTION_SIZE);
        return NULL;
    }
    if (!d->name || !*d->name || strlen(d->name) > 128) {
        snprintf(why, cap, "the name is missing, empty or longer than 128 bytes");
        return NULL;
    }
    if (!d->actions || d->n_actions < 1 || d->n_actions > HOST_MAX_ACTIONS) {
        snprintf(why, cap, "it declares %zu actions (between 1 and %d are allowed)", d->n_actions,
                 HOST_MAX_ACTIONS);
        return NULL;
    }
    if (d->struct_size >= offsetof(aiorun_plugin, lookup) + sizeof(aiorun_lookup_fn))
        *lookup = d->lookup;

    out = json_object();
    actions = json_array();
    if (!out || !actions)
        goto nomem;
    if (!set_text(out, "name", d->name) || !set_text(out, "version", d->version) ||
        !set_text(out, "description", d->description)) {
        snprintf(why, cap, "name, version or description is not valid UTF-8");
        goto fail;
    }
    if (json_object_set_new(out, "abi", json_pack("{s:i, s:i}", "major", d->abi_major,
                                                   "minor", d->abi_minor)) != 0)
        goto nomem;
    if (!(schema = parse_schema(d->config_schema, sub, sizeof sub))) {
        snprintf(why, cap, "config_schema is %s", sub);
        goto fail;
    }
    json_object_set_new(out, "config_schema", schema);
    schema = NULL;
    json_object_set_new(out, "lookup", json_boolean(*lookup != NULL));

    for (size_t i = 0; i < d->n_actions; i++) {
        const aiorun_action *a =
            (const aiorun_action *)((const char *)d->actions + i * d->action_size);
        if (!valid_action_name(a->name)) {
            snprintf(why, cap, "action #%zu has a missing or invalid name (use [a-z0-9_.-], "
                     "at most 128 bytes)", i);
            goto fail;
        }
        for (size_t j = 0; j < i; j++) {
            const aiorun_action *b =
                (const aiorun_action *)((const char *)d->actions + j * d->action_size);
            if (strcmp(a->name, b->name) == 0) {
                snprintf(why, cap, "action %s is declared twice", a->name);
                goto fail;
            }
        }
        if (!a->invoke) {
            snprintf(why, cap, "action %s has no invoke callback", a->name);
            goto fail;
        }
        const char *effect = effect_name((int)a->effect);
        const char *idem = idempotency_name((int)a->idempotency);
        if (!effect || !idem) {
            snprintf(why, cap, "action %s has an unknown effect (%d) or idempotency (%d)", a->name,
                     (int)a->effect, (int)a->idempotency);
            goto fail;
        }
        if (!(schema = parse_schema(a->input_schema, sub, sizeof sub))) {
            snprintf(why, cap, "the input_schema of action %s is %s", a->name, sub);
            goto fail;
        }
        json_t *ja = json_pack("{s:s, s:o, s:s, s:s, s:b}", "name", a->name, "input_schema", schema,
                               "effect", effect, "idempotency", idem, "cacheable", a->cacheable != 0);
        schema = NULL; /* "o" stole it, also on failure */
        if (!ja)
            goto nomem;
        if (!set_text(ja, "summary", a->summary)) {
            json_decref(ja);
            snprintf(why, cap, "the summary of action %s is not valid UTF-8", a->name);
            goto fail;
        }
        if (json_array_append_new(actions, ja) != 0)
            goto nomem;
    }
    json_object_set_new(out, "actions", actions);
    return out;

nomem:
    snprintf(why, cap, "out of memory while reading it");
fail:
    json_decref(schema);
    json_decref(actions);
    json_decref(out);
    return NULL;
}

/* dlopen the plugin and check it; refuses (exits) on any problem. Returns the HELLO payload. */
static json_t *load_plugin(host_ctx *h, const char *path, host_plugin *p)
{
    /* RTLD_LOCAL: the plugin's symbols never interpose on ours or another library's. */
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        refuse(h, "dlopen_failed", "cannot load plugin %s: %s (this aiorun speaks plugin ABI %d.%d)",
               path, e ? e : "unknown error", AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);
    }
    aiorun_plugin_entry_fn entry;
    *(void **)&entry = dlsym(dl, AIORUN_PLUGIN_ENTRY_SYMBOL);
    if (!entry)
        refuse(h, "missing_entry",
               "plugin %s does not export " AIORUN_PLUGIN_ENTRY_SYMBOL ", so its plugin ABI is "
               "unknown; this aiorun speaks ABI %d.%d: build it against the aiorun SDK and export "
               "the entry with AIORUN_EXPORT", path, AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);

    const aiorun_plugin *d = entry(AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);
    if (!d)
        refuse(h, "bad_descriptor",
               "plugin %s returned no descriptor from " AIORUN_PLUGIN_ENTRY_SYMBOL "(%d, %d): it may "
               "not support this aiorun's plugin ABI %d.%d", path, AIORUN_ABI_MAJOR,
               AIORUN_ABI_MINOR, AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);
    /* Only the two version fields are read before the major is known to match. */
    if (d->abi_major != AIORUN_ABI_MAJOR)
        refuse(h, "abi_mismatch",
               "plugin %s was built for plugin ABI %u.%u; this aiorun speaks ABI %d.%d (major "
               "versions must match): rebuild it against this SDK", path, d->abi_major,
               d->abi_minor, AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);

    char why[512];
    json_t *hello = describe(d, &p->lookup, why, sizeof why);
    if (!hello)
        refuse(h, "bad_descriptor",
               "plugin %s (built for plugin ABI %u.%u; this aiorun speaks ABI %d.%d) has a bad "
               "descriptor: %s", path, d->abi_major, d->abi_minor, AIORUN_ABI_MAJOR,
               AIORUN_ABI_MINOR, why);
    p->desc = d;
    /* The handle is never closed: the plugin lives as long as the process. */
    return hello;
}

/* ---- calls ---- */

static const aiorun_action *find_action(const aiorun_plugin *d, const char *name)
{
    for (size_t i = 0; name && i < d->n_actions; i++) {
        const aiorun_action *a =
            (const aiorun_action *)((const char *)d->actions + i * d->action_size);
        if (strcmp(a->name, name) == 0)
            return a;
    }
    return NULL;
}

static json_t *error_payload(int cls, const char *message)
{
    return json_pack("{s:b, s:s, s:s}", "ok", 0, "class", frame_class_name(cls), "message", message);
}

/* The RESULT payload for what a plugin callback returned, without the HTTP fields. */
static json_t *outcome_body(aiorun_call *c, int st)
{
    char msg[sizeof c->error + 96];
    if (st == AIORUN_OK)
        return json_pack("{s:b, s:O}", "ok", 1, "result", c->result ? c->result : json_null());
    if (st < AIORUN_E_RETRYABLE || st > AIORUN_E_PERMANENT) {
        /* plugin_crashed is the host's to report, and other numbers mean nothing */
        snprintf(msg, sizeof msg, "plugin returned unknown status %d: %s", st,
                 c->has_error ? c->error : "no message");
        return error_payload(AIORUN_E_PERMANENT, msg);
    }
    if (!c->has_error) {
        snprintf(msg, sizeof msg, "plugin returned %s without a message", frame_class_name(st));
        return error_payload(st, msg);
    }
    return error_payload(st, c->error);
}

/* The RESULT payload, with "http_status" and "retry_after_ms" of the call's last HTTP response
 * when there was one (the daemon's retry decisions use them). */
static json_t *outcome_payload(aiorun_call *c, int st)
{
    json_t *out = outcome_body(c, st);
    if (out && c->http_status > 0) {
        json_object_set_new(out, "http_status", json_integer(c->http_status));
        if (c->retry_after_ms >= 0)
            json_object_set_new(out, "retry_after_ms", json_integer(c->retry_after_ms));
    }
    return out;
}

static int64_t deadline_of(const json_t *payload)
{
    json_t *d = json_object_get(payload, "deadline_ms");
    return json_is_integer(d) ? (int64_t)json_integer_value(d) : ar_now_ms() + HOST_DEFAULT_DEADLINE_MS;
}

/* Send a RESULT; a result too big for a frame becomes an "invalid" error instead. */
static void send_result(host_ctx *h, uint32_t id, json_t *payload)
{
    ar_error err;
    if (!payload)
        payload = error_payload(AIORUN_E_PERMANENT, "host: out of memory building the result");
    int rc = frame_write_fd(h->fd, FRAME_RESULT, id, payload, h->max_frame, &err);
    json_decref(payload);
    if (rc == AR_E_INVALID && strcmp(err.code, "frame_too_large") == 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "result too large: %s", err.message);
        rc = frame_write_fd(h->fd, FRAME_RESULT, id, payload = error_payload(AIORUN_E_INVALID, msg),
                            h->max_frame, &err);
        json_decref(payload);
    }
    if (rc == AR_E_CLOSED)
        _exit(HOST_EXIT_OK);
    if (rc != AR_OK)
        die(HOST_EXIT_INTERNAL, "sending a result: %s", err.message);
}

static void serve_invoke(host_ctx *h, host_plugin *p, aiorun_call *c, const frame *f)
{
    const char *name = json_string_value(json_object_get(f->payload, "action"));
    const aiorun_action *a = find_action(p->desc, name);
    if (!a) {
        char msg[300];
        snprintf(msg, sizeof msg, "plugin %s has no action %s", p->desc->name, name ? name : "(none)");
        send_result(h, f->request_id, error_payload(AIORUN_E_INVALID, msg));
        return;
    }
    json_t *input = json_object_get(f->payload, "input");
    char *text = json_dumps(input ? input : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        send_result(h, f->request_id, NULL);
        return;
    }
    host_call_begin(c, h, deadline_of(f->payload),
                    json_string_value(json_object_get(f->payload, "idempotency_key")));
    int st = a->invoke(p->instance, c, text, strlen(text));
    json_t *out = outcome_payload(c, st);
    host_call_end(c);
    free(text);
    send_result(h, f->request_id, out);
}

static void serve_lookup(host_ctx *h, host_plugin *p, aiorun_call *c, const frame *f)
{
    const char *name = json_string_value(json_object_get(f->payload, "action"));
    const char *key = json_string_value(json_object_get(f->payload, "idempotency_key"));
    if (!p->lookup) {
        send_result(h, f->request_id, error_payload(AIORUN_E_INVALID, "plugin has no lookup"));
        return;
    }
    if (!find_action(p->desc, name) || !key) {
        send_result(h, f->request_id,
                    error_payload(AIORUN_E_INVALID, "lookup needs a known action and an idempotency_key"));
        return;
    }
    host_call_begin(c, h, deadline_of(f->payload), key);
    int st = p->lookup(p->instance, c, name, key);
    json_t *out = outcome_payload(c, st);
    host_call_end(c);
    send_result(h, f->request_id, out);
}

static void finish(host_plugin *p, host_ctx *h, int status)
{
    if (p->initialized && p->desc->fini)
        p->desc->fini(p->instance);
    host_ctx_fini(h);
    curl_global_cleanup();
    exit(status);
}

/* Read the next frame; EOF ends the process cleanly, a protocol error with status 4. */
static void read_frame(host_ctx *h, host_plugin *p, frame_decoder *dec, frame *f)
{
    ar_error err;
    int rc = frame_read_fd(h->fd, dec, f, &err);
    if (rc == AR_E_CLOSED)
        finish(p, h, HOST_EXIT_OK);
    if (rc != AR_OK) {
        fprintf(stderr, "aiorun-host[%s]: %s\n", h->connector, err.message);
        p->initialized = 0; /* do not run plugin code on a broken channel */
        finish(p, h, rc == AR_E_INVALID ? HOST_EXIT_PROTOCOL : HOST_EXIT_INTERNAL);
    }
}

/* Wait for INIT, run the plugin's init, answer READY or REFUSED. */
static void init_plugin(host_ctx *h, host_plugin *p, frame_decoder *dec, aiorun_call *c)
{
    frame f;
    read_frame(h, p, dec, &f);
    if (f.type == FRAME_SHUTDOWN)
        finish(p, h, HOST_EXIT_OK);
    json_t *config = json_object_get(f.payload, "config");
    json_t *secrets = json_object_get(f.payload, "secrets");
    if (f.type != FRAME_INIT || !json_is_object(config) || (secrets && !json_is_object(secrets)))
        die(HOST_EXIT_PROTOCOL, "expected INIT with a config object, got frame type %d", f.type);
    const char *name;
    json_t *v;
    json_object_foreach(secrets, name, v) {
        if (!json_is_string(v))
            die(HOST_EXIT_PROTOCOL, "INIT: secret %s is not a string", name);
    }
    h->secrets = secrets ? json_incref(secrets) : json_object();

    char *text = json_dumps(config, JSON_COMPACT);
    if (!text)
        die(HOST_EXIT_INTERNAL, "out of memory");
    int st = AIORUN_OK;
    if (p->desc->init) {
        host_call_begin(c, h, deadline_of(f.payload), "");
        st = p->desc->init(host_api_table(), c, text, strlen(text), &p->instance);
        if (st != AIORUN_OK) {
            json_t *out = outcome_payload(c, st);
            host_call_end(c);
            free(text);
            frame_clear(&f);
            refuse(h, "init_failed", "%s: %s",
                   json_string_value(json_object_get(out, "class")),
                   json_string_value(json_object_get(out, "message")));
        }
        host_call_end(c);
    }
    free(text);
    frame_clear(&f);
    p->initialized = 1;
    send_frame(h, FRAME_READY, 0, json_object());
}

int main(int argc, char **argv)
{
    host_args args;
    host_ctx host;
    host_plugin plugin = {0};
    aiorun_call call;
    frame_decoder dec;

    close_inherited_fds();
    parse_args(argc, argv, &args);
    /* A write to a closed socket must be an error we handle, not a silent death. */
    signal(SIGPIPE, SIG_IGN);
    host_ctx_init(&host, HOST_FD, args.max_frame, args.connector);
    memset(&call, 0, sizeof call);
    frame_decoder_init(&dec, args.max_frame);

    /* Lock down before any plugin code runs (SANDBOX.md, "Recommended sandbox design"). */
    set_rlimits();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        die(HOST_EXIT_INTERNAL, "curl_global_init failed");
    /* issue 7: drop to the connector's own uid/gid here (setgroups, setresgid, setresuid),
     * then set RLIMIT_NPROC to 8-16. */
    set_nondumpable_no_new_privs();
    /* issue 7: apply the Landlock ruleset here. */

    json_t *hello = load_plugin(&host, args.plugin, &plugin);
    /* issue 7: load the seccomp allowlist here (after dlopen, before the plugin's init). */
    send_frame(&host, FRAME_HELLO, 0, hello);

    init_plugin(&host, &plugin, &dec, &call);

    for (;;) {
        frame f;
        read_frame(&host, &plugin, &dec, &f);
        switch (f.type) {
        case FRAME_INVOKE:
            serve_invoke(&host, &plugin, &call, &f);
            break;
        case FRAME_LOOKUP:
            serve_lookup(&host, &plugin, &call, &f);
            break;
        case FRAME_SHUTDOWN:
            frame_clear(&f);
            frame_decoder_fini(&dec);
            finish(&plugin, &host, HOST_EXIT_OK);
            break;
        default:
            fprintf(stderr, "aiorun-host[%s]: unexpected frame type %d\n", host.connector, f.type);
            frame_clear(&f);
            plugin.initialized = 0;
            finish(&plugin, &host, HOST_EXIT_PROTOCOL);
        }
        frame_clear(&f);
    }
}
