/*
 * aioctl.c - the aiorun command line: submit actions, look at them, check the daemon.
 *
 *   aioctl [--url URL] [--json] [--timeout SECONDS] COMMAND ...
 *
 * Talks to the daemon's HTTP/JSON API (client.c); prints a human view by default (render.c)
 * or, with --json, the daemon's reply exactly as received, for scripts.
 *
 * Exit codes (aioctl.h; also in `aioctl --help`; never renumbered):
 *   0  ok. get and submit --wait: the action SUCCEEDED, or was SUGGESTED (the decision is the
 *      outcome, nothing is executed). submit without --wait: the action was accepted, whatever
 *      its state. list, connectors, health: the daemon answered.
 *   1  the action ended without success: DENIED, FAILED, REJECTED, EXPIRED, UNKNOWN_OUTCOME.
 *   2  usage error: unknown command or flag, bad number, INPUT_JSON not a JSON object.
 *   3  the daemon could not be reached, or did not answer in time.
 *   4  the daemon refused the request (4xx/5xx: "error: <code>: <message>" on stderr), or its
 *      reply could not be read.
 *   5  the action is not finished: --wait ran out, or it waits on a human (PENDING_APPROVAL),
 *      or (get) it is still in progress. The action is printed all the same.
 */
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <aiorun/version.h>

#include "aioctl.h"
#include "client.h"
#include "render.h"

#define DEFAULT_URL "http://127.0.0.1:8470"
#define DEFAULT_TIMEOUT_MS 10000L
#define DEFAULT_WAIT_MS 30000L
#define MAX_WAIT_PER_REQUEST_MS 60000L /* the daemon holds a request at most this long */
#define MAX_WAIT_S (7.0 * 86400.0)
#define MAX_TIMEOUT_S 86400.0
#define POLL_FIRST_MS 200
#define POLL_MAX_MS 2000

static const char usage_text[] =
    "usage: aioctl [--url URL] [--json] [--timeout SECONDS] COMMAND [ARGS...]\n"
    "\n"
    "Submit actions to the aiorun daemon and look at them.\n"
    "\n"
    "commands:\n"
    "  submit CONNECTOR ACTION [INPUT_JSON] [options]\n"
    "      Propose an action. INPUT_JSON is a JSON object (default {}); '-' reads it from stdin.\n"
    "        --key K             idempotency key: the same key and payload give back the same\n"
    "                            action instead of a new one\n"
    "        --wait [SECONDS]    wait until the action is finished or waits on a human\n"
    "                            (default 30; the daemon holds one request up to 60 s, longer\n"
    "                            waits poll)\n"
    "        --priority N        scheduling priority (an integer)\n"
    "        --proposer-kind K   who proposed it (agent, human, system, ...)\n"
    "        --model M           the model that proposed it\n"
    "        --confidence X      the proposer's confidence (a number)\n"
    "        --prompt-ref R      a reference to the prompt behind the proposal\n"
    "  get ID\n"
    "      Show one action.\n"
    "  list [--state S] [--connector C] [--limit N] [--after ID] [--all]\n"
    "      Actions, newest first, one page (--limit N per page; --after ID: the page after\n"
    "      that id); --all follows every page (with --json: joined into one document,\n"
    "      {\"actions\": [...], \"next\": null}).\n"
    "  connectors\n"
    "      The connector instances: plugin, status, processes serving, actions.\n"
    "  health\n"
    "      Check that the daemon answers.\n"
    "\n"
    "options (anywhere on the line):\n"
    "  --url URL           the daemon (default: $AIORUN_URL, else " DEFAULT_URL ")\n"
    "  --json              print the daemon's JSON reply as received, one document, for\n"
    "                      scripts (an error reply's JSON goes to stdout too)\n"
    "  --timeout SECONDS   how long to wait for an answer, beyond any --wait (default 10)\n"
    "  -h, --help          this help\n"
    "  --version           aioctl's version\n"
    "\n"
    "exit codes:\n"
    "  0  ok. get, submit --wait: the action SUCCEEDED, or was SUGGESTED (the decision is\n"
    "     the outcome; nothing is executed). submit without --wait: the action was accepted,\n"
    "     whatever its state. list, connectors, health: the daemon answered.\n"
    "  1  the action ended without success: DENIED, FAILED, REJECTED, EXPIRED or\n"
    "     UNKNOWN_OUTCOME (an operator must find out whether it happened)\n"
    "  2  usage error: unknown command or flag, bad number, INPUT_JSON not a JSON object\n"
    "  3  the daemon could not be reached or did not answer in time (start it: tools/run)\n"
    "  4  the daemon refused the request (4xx/5xx; \"error: <code>: <message>\" on stderr)\n"
    "     or sent a reply that could not be read\n"
    "  5  the action is not finished: --wait ran out, or it waits on a human\n"
    "     (PENDING_APPROVAL), or (get) it is still in progress; it is printed all the same\n";

/* Global options; any command may carry them anywhere on its line. */
typedef struct cli {
    const char *url;
    bool json;
    long timeout_ms;
} cli;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("aioctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'aioctl --help'.\n", stderr);
    return AIOCTL_USAGE;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A positive number of seconds, at most max; as milliseconds (at least 1). */
static bool parse_seconds(const char *s, double max, long *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > max)
        return false;
    *ms = (long)(v * 1000.0 + 0.5);
    if (*ms < 1)
        *ms = 1;
    return true;
}

static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Does s look like the optional SECONDS of --wait (rather than the next argument)? */
static bool looks_like_number(const char *s)
{
    return (s[0] >= '0' && s[0] <= '9') || (s[0] == '.' && s[1] >= '0' && s[1] <= '9');
}

/* Match "--name VALUE" or "--name=VALUE" at argv[*i]. Returns 1 (matched, *value set, *i on
 * the last word used), 0 (not this flag), or -1 (matched but the value is missing). */
static int flag_value(int argc, char **argv, int *i, const char *name, const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        usage_error("%s needs a value", name);
        return -1;
    }
    *value = argv[++*i];
    return 1;
}

/* If argv[*i] is a global option, apply it (and consume its value) and return 1; 0 if it is
 * not one; -1 on a usage error (already reported). --help and --version exit here. */
static int take_global(cli *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *v = NULL;
    int m;

    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
        fputs(usage_text, stdout);
        exit(AIOCTL_OK);
    }
    if (strcmp(a, "--version") == 0) {
        printf("aioctl %s (plugin ABI %d.%d)\n", AIORUN_VERSION_STRING, AIORUN_ABI_MAJOR,
               AIORUN_ABI_MINOR);
        exit(AIOCTL_OK);
    }
    if (strcmp(a, "--json") == 0) {
        o->json = true;
        return 1;
    }
    if ((m = flag_value(argc, argv, i, "--url", &v)) != 0) {
        if (m < 0)
            return -1;
        if (!*v) {
            usage_error("--url needs a value, like " DEFAULT_URL);
            return -1;
        }
        o->url = v;
        return 1;
    }
    if ((m = flag_value(argc, argv, i, "--timeout", &v)) != 0) {
        if (m < 0)
            return -1;
        if (!parse_seconds(v, MAX_TIMEOUT_S, &o->timeout_ms)) {
            usage_error("--timeout: expected a number of seconds > 0 and <= %.0f, got '%s'",
                        MAX_TIMEOUT_S, v);
            return -1;
        }
        return 1;
    }
    return 0;
}

/* A command's flags. */
typedef enum { FLAG_SWITCH, FLAG_VALUE, FLAG_OPTIONAL_NUMBER } flag_kind;
typedef struct flag {
    const char *name;
    flag_kind kind;
    const char **value; /* FLAG_VALUE, FLAG_OPTIONAL_NUMBER: the value (NULL if none given) */
    bool *present;      /* set when the flag is seen (may be NULL for FLAG_VALUE) */
} flag;

/* Parse a command's words: global options, the command's flags, and up to max_pos positional
 * arguments ("--" ends the flags). Returns AIOCTL_OK or AIOCTL_USAGE (reported). */
static int parse_command_args(cli *o, const char *cmd, int argc, char **argv, const flag *flags,
                              size_t n_flags, const char **pos, int max_pos, int *n_pos)
{
    bool only_positional = false;
    *n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && a[0] == '-' && a[1] != '\0') {
            if (strcmp(a, "--") == 0) {
                only_positional = true;
                continue;
            }
            int g = take_global(o, argc, argv, &i);
            if (g < 0)
                return AIOCTL_USAGE;
            if (g > 0)
                continue;
            bool matched = false;
            for (size_t f = 0; f < n_flags && !matched; f++) {
                const flag *fl = &flags[f];
                size_t n = strlen(fl->name);
                if (fl->kind == FLAG_SWITCH) {
                    if (strcmp(a, fl->name) == 0) {
                        *fl->present = true;
                        matched = true;
                    }
                } else if (fl->kind == FLAG_VALUE) {
                    int m = flag_value(argc, argv, &i, fl->name, fl->value);
                    if (m < 0)
                        return AIOCTL_USAGE;
                    if (m > 0) {
                        if (fl->present)
                            *fl->present = true;
                        matched = true;
                    }
                } else if (strncmp(a, fl->name, n) == 0 && (a[n] == '\0' || a[n] == '=')) {
                    *fl->present = true;
                    *fl->value = NULL;
                    if (a[n] == '=')
                        *fl->value = a + n + 1;
                    else if (i + 1 < argc && looks_like_number(argv[i + 1]))
                        *fl->value = argv[++i];
                    matched = true;
                }
            }
            if (!matched)
                return usage_error("%s: unknown option '%s'", cmd, a);
            continue;
        }
        if (*n_pos >= max_pos)
            return usage_error("%s: unexpected argument '%s'", cmd, a);
        pos[(*n_pos)++] = a;
    }
    return AIOCTL_OK;
}

/* --json: the daemon's reply exactly as received. */
static void print_body(const reply *rep)
{
    if (!rep->body)
        return;
    fwrite(rep->body, 1, rep->len, stdout);
    if (rep->len == 0 || rep->body[rep->len - 1] != '\n')
        fputc('\n', stdout);
}

/* A call failed: with --json, an error document from the daemon still goes to stdout. */
static int call_failed(const cli *o, reply *rep, int rc)
{
    if (o->json && rep->json)
        print_body(rep);
    reply_fini(rep);
    return rc;
}

typedef enum { OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_HUMAN, OUTCOME_RUNNING } outcome;

static outcome classify(const char *state)
{
    static const char *const success[] = {"SUCCEEDED", "SUGGESTED"};
    static const char *const failure[] = {"DENIED", "FAILED", "REJECTED", "EXPIRED",
                                          "UNKNOWN_OUTCOME"};
    if (!state)
        return OUTCOME_RUNNING;
    for (size_t i = 0; i < sizeof success / sizeof success[0]; i++)
        if (strcmp(state, success[i]) == 0)
            return OUTCOME_SUCCESS;
    for (size_t i = 0; i < sizeof failure / sizeof failure[0]; i++)
        if (strcmp(state, failure[i]) == 0)
            return OUTCOME_FAILURE;
    if (strcmp(state, "PENDING_APPROVAL") == 0)
        return OUTCOME_HUMAN;
    return OUTCOME_RUNNING;
}

static int outcome_exit(outcome out)
{
    switch (out) {
    case OUTCOME_SUCCESS:
        return AIOCTL_OK;
    case OUTCOME_FAILURE:
        return AIOCTL_NOT_SUCCEEDED;
    default:
        return AIOCTL_PENDING;
    }
}

static const char *action_state(const json_t *action)
{
    return json_string_value(json_object_get(action, "state"));
}

/* Is this reply an action object we can work with? Reports it when not. */
static bool check_action(const client *c, const reply *rep)
{
    if (json_is_object(rep->json) && json_is_string(json_object_get(rep->json, "id")) &&
        action_state(rep->json))
        return true;
    fprintf(stderr, "aioctl: the daemon at %s answered without an action (no id or state)\n",
            client_url(c));
    return false;
}

static int new_client(const cli *o, client **c)
{
    return client_new(o->url, o->timeout_ms, c);
}

static int get_action(client *c, const char *id, reply *rep)
{
    char *escaped = client_escape(id), *path = NULL;
    int rc = AIOCTL_REFUSED;
    if (!escaped || asprintf(&path, "/v1/actions/%s", escaped) < 0) {
        free(escaped);
        memset(rep, 0, sizeof *rep);
        fputs("aioctl: out of memory\n", stderr);
        return rc;
    }
    rc = client_call(c, "GET", path, NULL, 0, rep);
    if (rc == AIOCTL_OK && !check_action(c, rep))
        rc = AIOCTL_REFUSED;
    free(path);
    free(escaped);
    return rc;
}

/* Read INPUT_JSON (a string, or stdin for "-"); *out is a new reference. */
static int load_input(const char *text, json_t **out)
{
    json_error_t jerr;
    bool from_stdin = text && strcmp(text, "-") == 0;
    const size_t flags = JSON_DECODE_ANY | JSON_REJECT_DUPLICATES;

    *out = NULL;
    json_t *input = !text       ? json_object()
                    : from_stdin ? json_loadf(stdin, flags, &jerr)
                                 : json_loads(text, flags, &jerr);
    if (!input) {
        if (!text)
            return usage_error("out of memory");
        return usage_error("INPUT_JSON%s is not valid JSON: %s (line %d, column %d, byte %d)",
                           from_stdin ? " (from stdin)" : "", jerr.text, jerr.line, jerr.column,
                           jerr.position);
    }
    if (!json_is_object(input)) {
        json_decref(input);
        return usage_error("INPUT_JSON%s must be a JSON object, like '{\"message\":\"hi\"}'",
                           from_stdin ? " (from stdin)" : "");
    }
    *out = input;
    return AIOCTL_OK;
}

static int set_string(json_t *obj, const char *key, const char *value)
{
    return value ? json_object_set_new(obj, key, json_string(value)) : 0;
}

static int cmd_submit(cli *o, int argc, char **argv)
{
    const char *pos[3], *key = NULL, *wait_s = NULL, *priority_s = NULL, *kind = NULL,
               *model = NULL, *confidence_s = NULL, *prompt_ref = NULL;
    bool wait = false;
    const flag flags[] = {
        {"--key", FLAG_VALUE, &key, NULL},
        {"--wait", FLAG_OPTIONAL_NUMBER, &wait_s, &wait},
        {"--priority", FLAG_VALUE, &priority_s, NULL},
        {"--proposer-kind", FLAG_VALUE, &kind, NULL},
        {"--model", FLAG_VALUE, &model, NULL},
        {"--confidence", FLAG_VALUE, &confidence_s, NULL},
        {"--prompt-ref", FLAG_VALUE, &prompt_ref, NULL},
    };
    int n_pos, rc;
    long wait_ms = DEFAULT_WAIT_MS, priority = 0;
    double confidence = 0;
    json_t *input = NULL, *body = NULL, *proposer = NULL;
    client *c = NULL;
    reply rep = {0};

    rc = parse_command_args(o, "submit", argc, argv, flags, sizeof flags / sizeof flags[0], pos,
                            3, &n_pos);
    if (rc)
        return rc;
    if (n_pos < 2)
        return usage_error("submit: expected CONNECTOR ACTION [INPUT_JSON]");
    if (!*pos[0] || !*pos[1])
        return usage_error("submit: CONNECTOR and ACTION must not be empty");
    if (wait_s && !parse_seconds(wait_s, MAX_WAIT_S, &wait_ms))
        return usage_error("--wait: expected a number of seconds > 0 and <= %.0f, got '%s'",
                           MAX_WAIT_S, wait_s);
    if (priority_s && !parse_long(priority_s, INT32_MIN, INT32_MAX, &priority))
        return usage_error("--priority: expected an integer, got '%s'", priority_s);
    if (confidence_s) {
        char *end;
        errno = 0;
        confidence = strtod(confidence_s, &end);
        if (errno || end == confidence_s || *end || !isfinite(confidence))
            return usage_error("--confidence: expected a number, got '%s'", confidence_s);
    }
    if (key && !*key)
        return usage_error("--key must not be empty");
    rc = load_input(n_pos > 2 ? pos[2] : NULL, &input);
    if (rc)
        return rc;

    body = json_object();
    if (!body || json_object_set_new(body, "connector", json_string(pos[0])) ||
        json_object_set_new(body, "action", json_string(pos[1])) ||
        json_object_set(body, "input", input) || set_string(body, "idempotency_key", key))
        goto nomem;
    if (kind || model || confidence_s || prompt_ref) {
        proposer = json_object();
        if (!proposer || set_string(proposer, "kind", kind) || set_string(proposer, "model", model) ||
            set_string(proposer, "prompt_ref", prompt_ref) ||
            (confidence_s && json_object_set_new(proposer, "confidence", json_real(confidence))) ||
            json_object_set(body, "proposer", proposer))
            goto nomem;
    }
    if (priority_s && json_object_set_new(body, "priority", json_integer(priority)))
        goto nomem;
    long first_wait_ms = wait_ms < MAX_WAIT_PER_REQUEST_MS ? wait_ms : MAX_WAIT_PER_REQUEST_MS;
    if (wait && json_object_set_new(body, "wait_ms", json_integer(first_wait_ms)))
        goto nomem;

    if ((rc = new_client(o, &c)) != AIOCTL_OK)
        goto done;
    int64_t deadline = mono_ms() + wait_ms;
    rc = client_call(c, "POST", "/v1/actions", body, wait ? first_wait_ms : 0, &rep);
    if (rc == AIOCTL_OK && !check_action(c, &rep))
        rc = AIOCTL_REFUSED;
    if (rc != AIOCTL_OK) {
        rc = call_failed(o, &rep, rc);
        goto done;
    }
    bool existing = rep.status == 200;

    /* Past the daemon's own wait (or if it answered early): poll until there is an answer. */
    int64_t interval = POLL_FIRST_MS;
    while (wait && classify(action_state(rep.json)) == OUTCOME_RUNNING) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            break;
        sleep_ms(interval < left ? interval : left);
        interval = interval * 3 / 2 < POLL_MAX_MS ? interval * 3 / 2 : POLL_MAX_MS;
        char *id = strdup(json_string_value(json_object_get(rep.json, "id")));
        if (!id)
            goto nomem;
        reply_fini(&rep);
        rc = get_action(c, id, &rep);
        free(id);
        if (rc != AIOCTL_OK) {
            rc = call_failed(o, &rep, rc);
            goto done;
        }
    }

    if (o->json) {
        print_body(&rep);
    } else {
        if (existing)
            fputs("aioctl: this idempotency key was used before with the same request; "
                  "this is the existing action (nothing new was submitted)\n", stderr);
        render_action(stdout, rep.json);
    }
    const char *state = action_state(rep.json);
    const char *id = json_string_value(json_object_get(rep.json, "id"));
    outcome out = classify(state);
    if (!wait) {
        rc = AIOCTL_OK;
    } else {
        rc = outcome_exit(out);
        if (out == OUTCOME_HUMAN)
            fprintf(stderr, "aioctl: %s waits on a human approval (PENDING_APPROVAL); "
                    "follow it with: aioctl get %s\n", id, id);
        else if (out == OUTCOME_RUNNING)
            fprintf(stderr, "aioctl: %s is still %s after %.1f s; follow it with: aioctl get %s\n",
                    id, state, (double)wait_ms / 1000.0, id);
        else if (state && strcmp(state, "UNKNOWN_OUTCOME") == 0)
            fprintf(stderr, "aioctl: %s may or may not have happened; an operator must check "
                    "the system of record\n", id);
    }
    goto done;

nomem:
    fputs("aioctl: out of memory\n", stderr);
    rc = AIOCTL_REFUSED;
done:
    reply_fini(&rep);
    client_free(c);
    json_decref(proposer);
    json_decref(body);
    json_decref(input);
    return rc;
}

static int cmd_get(cli *o, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc = parse_command_args(o, "get", argc, argv, NULL, 0, pos, 1, &n_pos);
    client *c = NULL;
    reply rep = {0};

    if (rc)
        return rc;
    if (n_pos != 1 || !*pos[0])
        return usage_error("get: expected ID");
    if ((rc = new_client(o, &c)) != AIOCTL_OK)
        return rc;
    rc = get_action(c, pos[0], &rep);
    if (rc != AIOCTL_OK) {
        rc = call_failed(o, &rep, rc);
    } else {
        if (o->json)
            print_body(&rep);
        else
            render_action(stdout, rep.json);
        rc = outcome_exit(classify(action_state(rep.json)));
        reply_fini(&rep);
    }
    client_free(c);
    return rc;
}

/* "/v1/actions?..." with the given filters; malloc'd, owned by the caller (NULL: no memory). */
static char *list_path(const char *state, const char *connector, const char *limit,
                       const char *after)
{
    const char *names[] = {"state", "connector", "limit", "after"};
    const char *values[] = {state, connector, limit, after};
    char *path = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&path, &size);
    if (!f)
        return NULL;
    fputs("/v1/actions", f);
    char sep = '?';
    for (size_t i = 0; i < 4; i++) {
        if (!values[i])
            continue;
        char *v = client_escape(values[i]);
        if (!v) {
            fclose(f);
            free(path);
            return NULL;
        }
        fprintf(f, "%c%s=%s", sep, names[i], v);
        free(v);
        sep = '&';
    }
    if (fclose(f) != 0) {
        free(path);
        return NULL;
    }
    return path;
}

static int cmd_list(cli *o, int argc, char **argv)
{
    const char *state = NULL, *connector = NULL, *limit_s = NULL, *after = NULL;
    bool all = false;
    const flag flags[] = {
        {"--state", FLAG_VALUE, &state, NULL},
        {"--connector", FLAG_VALUE, &connector, NULL},
        {"--limit", FLAG_VALUE, &limit_s, NULL},
        {"--after", FLAG_VALUE, &after, NULL},
        {"--all", FLAG_SWITCH, NULL, &all},
    };
    const char *pos[1];
    int n_pos, rc;
    long limit;
    char *state_upper = NULL, *cursor = NULL, *path = NULL;
    json_t *collected = NULL;
    client *c = NULL;
    reply rep = {0};

    rc = parse_command_args(o, "list", argc, argv, flags, sizeof flags / sizeof flags[0], pos, 0,
                            &n_pos);
    if (rc)
        return rc;
    if (limit_s && !parse_long(limit_s, 1, 1000000, &limit))
        return usage_error("--limit: expected a positive integer, got '%s'", limit_s);
    if (state) {
        /* States are upper case; accept "denied" too. */
        if (!(state_upper = strdup(state)))
            goto nomem;
        for (char *p = state_upper; *p; p++)
            if (*p >= 'a' && *p <= 'z')
                *p = (char)(*p - 'a' + 'A');
    }
    if ((rc = new_client(o, &c)) != AIOCTL_OK)
        goto done;
    if (after && !(cursor = strdup(after)))
        goto nomem;
    if (!(collected = json_array()))
        goto nomem;

    for (;;) {
        free(path);
        if (!(path = list_path(state_upper, connector, limit_s, cursor)))
            goto nomem;
        rc = client_call(c, "GET", path, NULL, 0, &rep);
        if (rc != AIOCTL_OK) {
            rc = call_failed(o, &rep, rc);
            goto done;
        }
        json_t *actions = json_object_get(rep.json, "actions");
        json_t *next = json_object_get(rep.json, "next");
        if (!json_is_array(actions)) {
            fprintf(stderr, "aioctl: the daemon at %s answered without an \"actions\" list\n",
                    client_url(c));
            rc = AIOCTL_REFUSED;
            goto done;
        }
        if (!all) {
            if (o->json) {
                print_body(&rep);
            } else {
                render_action_table(stdout, actions);
                if (json_is_string(next)) {
                    fputs("(more: aioctl list --after ", stderr);
                    render_text(stderr, json_string_value(next));
                    fputs(", or --all)\n", stderr);
                }
            }
            rc = AIOCTL_OK;
            goto done;
        }
        if (json_array_extend(collected, actions))
            goto nomem;
        if (!json_is_string(next) || !*json_string_value(next))
            break;
        if (cursor && strcmp(cursor, json_string_value(next)) == 0) {
            fprintf(stderr, "aioctl: the daemon returned the same page cursor twice (%s); "
                    "stopping\n", cursor);
            rc = AIOCTL_REFUSED;
            goto done;
        }
        free(cursor);
        if (!(cursor = strdup(json_string_value(next))))
            goto nomem;
        reply_fini(&rep);
    }

    if (o->json) {
        /* Several pages make one document, shaped like a single page with nothing after it. */
        json_t *doc = json_pack("{s:O,s:n}", "actions", collected, "next");
        char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(doc);
        if (!text)
            goto nomem;
        puts(text);
        free(text);
    } else {
        render_action_table(stdout, collected);
    }
    rc = AIOCTL_OK;
    goto done;

nomem:
    fputs("aioctl: out of memory\n", stderr);
    rc = AIOCTL_REFUSED;
done:
    reply_fini(&rep);
    client_free(c);
    json_decref(collected);
    free(path);
    free(cursor);
    free(state_upper);
    return rc;
}

static int cmd_connectors(cli *o, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc = parse_command_args(o, "connectors", argc, argv, NULL, 0, pos, 0, &n_pos);
    client *c = NULL;
    reply rep = {0};

    if (rc)
        return rc;
    if ((rc = new_client(o, &c)) != AIOCTL_OK)
        return rc;
    rc = client_call(c, "GET", "/v1/connectors", NULL, 0, &rep);
    if (rc != AIOCTL_OK) {
        rc = call_failed(o, &rep, rc);
        goto done;
    }
    json_t *connectors = json_object_get(rep.json, "connectors");
    if (!json_is_array(connectors)) {
        fprintf(stderr, "aioctl: the daemon at %s answered without a \"connectors\" list\n",
                client_url(c));
        rc = AIOCTL_REFUSED;
        goto done;
    }
    if (o->json)
        print_body(&rep);
    else
        render_connectors(stdout, connectors);
done:
    reply_fini(&rep);
    client_free(c);
    return rc;
}

static int cmd_health(cli *o, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc = parse_command_args(o, "health", argc, argv, NULL, 0, pos, 0, &n_pos);
    client *c = NULL;
    reply rep = {0};

    if (rc)
        return rc;
    if ((rc = new_client(o, &c)) != AIOCTL_OK)
        return rc;
    rc = client_call(c, "GET", "/healthz", NULL, 0, &rep);
    if (rc != AIOCTL_OK) {
        rc = call_failed(o, &rep, rc);
        goto done;
    }
    const char *status = json_string_value(json_object_get(rep.json, "status"));
    if (o->json)
        print_body(&rep);
    if (!status || strcmp(status, "ok") != 0) {
        fprintf(stderr, "aioctl: the daemon at %s is not healthy: status '", client_url(c));
        render_text(stderr, status ? status : "(none)");
        fputs("'\n", stderr);
        rc = AIOCTL_REFUSED;
        goto done;
    }
    if (!o->json)
        printf("ok: aiorun answers at %s\n", client_url(c));
done:
    reply_fini(&rep);
    client_free(c);
    return rc;
}

typedef struct command {
    const char *name;
    int (*run)(cli *o, int argc, char **argv);
} command;

static const command commands[] = {
    {"submit", cmd_submit},         {"get", cmd_get},       {"list", cmd_list},
    {"connectors", cmd_connectors}, {"health", cmd_health},
};

int main(int argc, char **argv)
{
    const char *env_url = getenv("AIORUN_URL");
    cli o = {.url = env_url && *env_url ? env_url : DEFAULT_URL, .json = false,
             .timeout_ms = DEFAULT_TIMEOUT_MS};
    int i;

    for (i = 1; i < argc; i++) {
        int g = take_global(&o, argc, argv, &i);
        if (g < 0)
            return AIOCTL_USAGE;
        if (g > 0)
            continue;
        if (argv[i][0] == '-')
            return usage_error("unknown option '%s'", argv[i]);
        break;
    }
    if (i >= argc)
        return usage_error("missing COMMAND (submit, get, list, connectors, health)");
    if (strcmp(argv[i], "help") == 0) {
        fputs(usage_text, stdout);
        return AIOCTL_OK;
    }
    const command *cmd = NULL;
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
        if (strcmp(argv[i], commands[k].name) == 0)
            cmd = &commands[k];
    if (!cmd)
        return usage_error("unknown command '%s' (submit, get, list, connectors, health)",
                           argv[i]);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fputs("aioctl: cannot initialise libcurl\n", stderr);
        return AIOCTL_UNREACHABLE;
    }
    int rc = cmd->run(&o, argc - i - 1, argv + i + 1);
    curl_global_cleanup();
    if (fflush(stdout) != 0 && rc == AIOCTL_OK) {
        perror("aioctl: writing the output");
        rc = AIOCTL_REFUSED;
    }
    return rc;
}
