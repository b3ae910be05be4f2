/*
 * host_main.c - aiorun-host, the sandbox host process a connector plugin runs in.
 *
 *   aiorun-host --connector NAME --plugin /abs/path.so [--plugin-name PATH] [--max-frame N]
 *               [--uid N [--gid N] [--nproc N]] [--port P]... [--workdir DIR]
 *               [--no-rlimits] [--no-uid] [--no-landlock] [--no-seccomp]
 *
 * Started by the daemon (sandbox.c) with posix_spawn, an empty environment and the daemon's
 * socket as fd 3. It locks itself down in the order of ../shared/SANDBOX.md (lockdown.h):
 * rlimits, curl and libsodium initialisation, the connector's own uid/gid (--uid, only when
 * started as root) and RLIMIT_NPROC, non-dumpable and no_new_privs, Landlock (the plugin file,
 * the libraries, the CA and resolver files, read-write beneath --workdir, TCP connect to the
 * --port list), chdir into --workdir; only then does it load the plugin (whose constructors
 * run already confined), check its ABI and descriptor, and load the seccomp allowlist. It says
 * HELLO with the descriptor and the "sandbox" report of what is active (or REFUSED), waits for
 * INIT (config and this connector's secrets, kept read-only in guarded memory), calls the
 * plugin's init, says READY, then serves INVOKE / LOOKUP frames one at a time until SHUTDOWN
 * or EOF. --plugin-name is the path named in messages (the daemon's original, when --plugin is
 * its private copy). The --no-* switches turn a layer off, for debugging only. Exit statuses
 * are listed in host.h.
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
#include <sys/stat.h>
#include <unistd.h>
#include <curl/curl.h>
#include <sodium.h>

#include "ar.h"
#include "frame.h"
#include "lockdown.h"
#include "jsonw.h"

/* Ports a host may be given (--port). */
#define HOST_MAX_PORTS 64
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
    const char *plugin_name;     /* for messages */
    size_t max_frame;
    unsigned uid, gid;           /* 0: not given */
    unsigned nproc;              /* RLIMIT_NPROC after the uid switch; 0: the default */
    int ports[HOST_MAX_PORTS];
    size_t n_ports;
    const char *workdir;
    int no_rlimits, no_uid, no_landlock, no_seccomp;
} host_args;

#ifdef AIORUN_SANITIZE
/* LeakSanitizer's check at exit ptraces the process, which the seccomp filter kills; the host
 * has an empty environment, so ASAN_OPTIONS cannot say it. */
const char *__asan_default_options(void) __attribute__((used, visibility("default")));
const char *__asan_default_options(void)
{
    return "detect_leaks=0";
}
#endif

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
    die(HOST_EXIT_USAGE, "usage: aiorun-host --connector NAME --plugin /abs/path.so [--plugin-name "
        "PATH] [--max-frame N] [--uid N [--gid N] [--nproc N]] [--port P]... [--workdir /abs/dir] "
        "[--no-rlimits] [--no-uid] [--no-landlock] [--no-seccomp] (fd 3 must be the daemon's "
        "socket)");
}

/* A decimal number in [min, max], else a usage error naming the option. */
static unsigned long long number_arg(const char *opt, const char *text, unsigned long long min,
                                     unsigned long long max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < min || v > max)
        die(HOST_EXIT_USAGE, "%s must be a number between %llu and %llu", opt, min, max);
    return v;
}

static void parse_args(int argc, char **argv, host_args *a)
{
    memset(a, 0, sizeof *a);
    a->max_frame = FRAME_DEFAULT_MAX_PAYLOAD;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--no-rlimits") == 0) {
            a->no_rlimits = 1;
            continue;
        } else if (strcmp(opt, "--no-uid") == 0) {
            a->no_uid = 1;
            continue;
        } else if (strcmp(opt, "--no-landlock") == 0) {
            a->no_landlock = 1;
            continue;
        } else if (strcmp(opt, "--no-seccomp") == 0) {
            a->no_seccomp = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *val = argv[++i];
        if (strcmp(opt, "--connector") == 0) {
            a->connector = val;
        } else if (strcmp(opt, "--plugin") == 0) {
            a->plugin = val;
        } else if (strcmp(opt, "--plugin-name") == 0) {
            a->plugin_name = val;
        } else if (strcmp(opt, "--max-frame") == 0) {
            a->max_frame = (size_t)number_arg(opt, val, 4096, UINT32_MAX);
        } else if (strcmp(opt, "--uid") == 0) {
            a->uid = (unsigned)number_arg(opt, val, 1, UINT32_MAX - 1);
        } else if (strcmp(opt, "--gid") == 0) {
            a->gid = (unsigned)number_arg(opt, val, 1, UINT32_MAX - 1);
        } else if (strcmp(opt, "--nproc") == 0) {
            a->nproc = (unsigned)number_arg(opt, val, 2, 65536);
        } else if (strcmp(opt, "--port") == 0) {
            if (a->n_ports >= HOST_MAX_PORTS)
                die(HOST_EXIT_USAGE, "at most %d --port options", HOST_MAX_PORTS);
            a->ports[a->n_ports++] = (int)number_arg(opt, val, 1, 65535);
        } else if (strcmp(opt, "--workdir") == 0) {
            a->workdir = val;
        } else {
            usage();
        }
    }
    if (!a->connector || !*a->connector || !a->plugin || a->plugin[0] != '/' ||
        (a->workdir && a->workdir[0] != '/'))
        usage();
    if (!a->plugin_name)
        a->plugin_name = a->plugin;
    if (a->uid && !a->gid)
        a->gid = a->uid;
    struct stat st;
    if (fstat(HOST_FD, &st) != 0 || !S_ISSOCK(st.st_mode))
        die(HOST_EXIT_USAGE, "fd %d is not a socket", HOST_FD);
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

/* dlopen the plugin at path and check it; refuses (exits) on any problem, naming it name.
 * Returns the HELLO payload. */
static json_t *load_plugin(host_ctx *h, const char *path, const char *name, host_plugin *p)
{
    /* RTLD_LOCAL: the plugin's symbols never interpose on ours or another library's. */
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        refuse(h, "dlopen_failed", "cannot load plugin %s: %s (this aiorun speaks plugin ABI %d.%d)",
               name, e ? e : "unknown error", AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);
    }
    aiorun_plugin_entry_fn entry;
    *(void **)&entry = dlsym(dl, AIORUN_PLUGIN_ENTRY_SYMBOL);
    if (!entry)
        refuse(h, "missing_entry",
               "plugin %s does not export " AIORUN_PLUGIN_ENTRY_SYMBOL ", so its plugin ABI is "
               "unknown; this aiorun speaks ABI %d.%d: build it against the aiorun SDK and export "
               "the entry with AIORUN_EXPORT", name, AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);

    const aiorun_plugin *d = entry(AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);
    if (!d)
        refuse(h, "bad_descriptor",
               "plugin %s returned no descriptor from " AIORUN_PLUGIN_ENTRY_SYMBOL "(%d, %d): it may "
               "not support this aiorun's plugin ABI %d.%d", name, AIORUN_ABI_MAJOR,
               AIORUN_ABI_MINOR, AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);
    /* Only the two version fields are read before the major is known to match. */
    if (d->abi_major != AIORUN_ABI_MAJOR)
        refuse(h, "abi_mismatch",
               "plugin %s was built for plugin ABI %u.%u; this aiorun speaks ABI %d.%d (major "
               "versions must match): rebuild it against this SDK", name, d->abi_major,
               d->abi_minor, AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);

    char why[512];
    json_t *hello = describe(d, &p->lookup, why, sizeof why);
    if (!hello)
        refuse(h, "bad_descriptor",
               "plugin %s (built for plugin ABI %u.%u; this aiorun speaks ABI %d.%d) has a bad "
               "descriptor: %s", name, d->abi_major, d->abi_minor, AIORUN_ABI_MAJOR,
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
 * when there was one (the daemon's retry decisions use them), and the call's "cost" when the
 * plugin reported any, whatever the outcome (a failed call may have cost too). */
static json_t *outcome_payload(aiorun_call *c, int st)
{
    json_t *out = outcome_body(c, st);
    if (out && c->http_status > 0) {
        json_object_set_new(out, "http_status", json_integer(c->http_status));
        if (c->retry_after_ms >= 0)
            json_object_set_new(out, "retry_after_ms", json_integer(c->retry_after_ms));
    }
    json_t *cost = host_call_cost(c);
    if (out && cost)
        json_object_set_new(out, "cost", cost);
    else
        json_decref(cost);
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
    if (rc == AR_E_INVALID && strcmp(err.code, "frame_too_large") == 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "result too large: %s", err.message);
        json_t *small = error_payload(AIORUN_E_INVALID, msg);
        /* the call still cost what it cost */
        json_t *cost = json_object_get(payload, "cost");
        if (small && cost)
            json_object_set(small, "cost", cost);
        json_decref(payload);
        payload = small;
        rc = frame_write_fd(h->fd, FRAME_RESULT, id, payload, h->max_frame, &err);
    }
    json_decref(payload);
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
    char *text = jsonw_dumps(input ? input : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
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

/* Read INIT: like read_frame, but through a buffer of ours that is wiped afterwards, and with
 * the decoder's spare room wiped too, so that the secrets' wire form does not linger in freed
 * memory (the parsed copy is wiped by host_secrets_load). */
static void read_init_frame(host_ctx *h, host_plugin *p, frame_decoder *dec, frame *f)
{
    unsigned char chunk[16384];
    ar_error err;
    int rc;
    for (;;) {
        rc = frame_decoder_next(dec, f, &err);
        if (rc != AR_E_NOTFOUND)
            break;
        ssize_t r = read(h->fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r == 0 || errno == ECONNRESET ? AR_E_CLOSED : AR_E_IO;
            snprintf(err.message, sizeof err.message, "reading INIT: %s",
                     r == 0 ? "the daemon closed the connection" : strerror(errno));
            break;
        }
        if (frame_decoder_feed(dec, chunk, (size_t)r) != AR_OK) {
            rc = AR_E_NOMEM;
            snprintf(err.message, sizeof err.message, "out of memory buffering INIT");
            break;
        }
    }
    explicit_bzero(chunk, sizeof chunk);
    if (dec->buf && dec->cap > dec->len)
        explicit_bzero(dec->buf + dec->len, dec->cap - dec->len);
    if (rc == AR_E_CLOSED)
        finish(p, h, HOST_EXIT_OK);
    if (rc != AR_OK) {
        fprintf(stderr, "aiorun-host[%s]: %s\n", h->connector, err.message);
        finish(p, h, rc == AR_E_INVALID ? HOST_EXIT_PROTOCOL : HOST_EXIT_INTERNAL);
    }
}

/* Wait for INIT, keep the secrets, run the plugin's init, answer READY or REFUSED. */
static void init_plugin(host_ctx *h, host_plugin *p, frame_decoder *dec, aiorun_call *c)
{
    frame f;
    char why[300];
    read_init_frame(h, p, dec, &f);
    if (f.type == FRAME_SHUTDOWN)
        finish(p, h, HOST_EXIT_OK);
    json_t *config = json_object_get(f.payload, "config");
    json_t *secrets = json_object_get(f.payload, "secrets");
    if (f.type != FRAME_INIT || !json_is_object(config) || (secrets && !json_is_object(secrets)))
        die(HOST_EXIT_PROTOCOL, "expected INIT with a config object, got frame type %d", f.type);
    if (host_secrets_load(h, secrets, why, sizeof why) != 0)
        die(HOST_EXIT_PROTOCOL, "%s", why);

    char *text = jsonw_dumps(config, JSON_COMPACT);
    if (!text)
        die(HOST_EXIT_INTERNAL, "out of memory");
    int st = AIORUN_OK;
    if (p->desc->init) {
        host_call_begin(c, h, deadline_of(f.payload), "");
        c->costs_allowed = 0; /* READY and REFUSED carry no cost */
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

/* Refuse with a lock-down step's error: the plugin is not run half-confined. */
static void lockdown_or_refuse(host_ctx *h, int rc, const char *step, const ar_error *err)
{
    if (rc == AR_OK)
        return;
    refuse(h, "lockdown_failed", "the sandbox host could not %s: %s; the plugin was not loaded "
           "(a layer can be switched off for debugging in the connector's \"sandbox\" config)",
           step, err->message);
}

/* Apply steps 1-6 of the lock-down (lockdown.h), then chdir into the working directory. */
static void lock_down(host_ctx *h, const host_args *a, lockdown_report *rep)
{
    ar_error err;
    int address_space = 1;
#ifdef AIORUN_SANITIZE
    /* sanitizer shadow memory needs terabytes of address space */
    address_space = 0;
#endif
    lockdown_report_init(rep);
    if (!a->no_rlimits)
        lockdown_or_refuse(h, lockdown_rlimits(address_space, rep, &err), "set its resource limits", &err);
    /* before the uid drop and Landlock: OpenSSL reads its configuration, libsodium its
     * random source */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        die(HOST_EXIT_INTERNAL, "curl_global_init failed");
    if (sodium_init() < 0)
        die(HOST_EXIT_INTERNAL, "sodium_init failed");
    if (!a->no_uid) {
        if (geteuid() != 0)
            rep->uid_state = LOCKDOWN_UID_SHARED;
        else if (a->uid)
            lockdown_or_refuse(h, lockdown_drop_uid(a->uid, a->gid, a->nproc, rep, &err),
                               "switch to the connector's uid", &err);
    }
    lockdown_or_refuse(h, lockdown_no_privs(rep, &err), "set no_new_privs", &err);
    if (!a->no_landlock) {
#ifdef AIORUN_SANITIZE
        /* a sanitizer report symbolizes from the binaries: grant read on the host's own
         * (the plugin and the libraries are readable anyway; /proc/self is not needed) */
        static char exe[4096];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[n > 0 ? n : 0] = '\0';
        const char *extra[] = {exe[0] ? exe : NULL, NULL};
#else
        static const char *const *const extra = NULL;
#endif
        lockdown_landlock_opts o = {.plugin_path = a->plugin, .workdir = a->workdir,
                                    .ports = a->ports, .n_ports = a->n_ports, .extra_read = extra};
        lockdown_or_refuse(h, lockdown_landlock(&o, rep, &err), "apply its Landlock rules", &err);
    }
    if (a->workdir && chdir(a->workdir) != 0) {
        snprintf(err.message, sizeof err.message, "chdir %s: %s", a->workdir, strerror(errno));
        lockdown_or_refuse(h, AR_E_IO, "enter its working directory", &err);
    }
}

int main(int argc, char **argv)
{
    host_args args;
    host_ctx host;
    host_plugin plugin = {0};
    aiorun_call call;
    frame_decoder dec;
    lockdown_report rep;
    ar_error err;

    close_inherited_fds();
    parse_args(argc, argv, &args);
    /* A write to a closed socket must be an error we handle, not a silent death. */
    signal(SIGPIPE, SIG_IGN);
    host_ctx_init(&host, HOST_FD, args.max_frame, args.connector);
    memset(&call, 0, sizeof call);
    frame_decoder_init(&dec, args.max_frame);

    /* Lock down before any plugin code runs, constructors included (SANDBOX.md,
     * "Recommended sandbox design"). */
    lock_down(&host, &args, &rep);
    json_t *hello = load_plugin(&host, args.plugin, args.plugin_name, &plugin);
    if (!args.no_seccomp && lockdown_seccomp(&rep, &err) != AR_OK)
        refuse(&host, "seccomp_failed", "the sandbox host could not load its seccomp filter: %s; "
               "plugin %s is not run without it", err.message, args.plugin_name);
    if (json_object_set_new(hello, "sandbox", lockdown_report_json(&rep)) != 0)
        die(HOST_EXIT_INTERNAL, "out of memory");
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
