/*
 * t_ledger.c - fixture plugin with a side effect that outlives its process, for crash tests.
 *
 * Config {"dir": "/path"}: the ledger is <dir>/ledger, one line per effect: the idempotency key.
 *   apply   write, idempotency lookup, {"crash": bool}: appends the call's key to the ledger
 *           (fsync'd), then dies with SIGSEGV when input.crash is true — an effect whose answer
 *           never arrives.
 *   lookup  did an apply with this key happen? Reads the ledger.
 * Only <aiorun/plugin.h> and libc.
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <aiorun/plugin.h>

typedef struct fixture {
    const aiorun_host_api *api;
    char path[512];
} fixture;

/* The value of "name": "..." in a flat JSON object (no escapes needed by the tests). */
static int get_plain_string(const char *s, size_t n, const char *name, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", name);
    const char *p = strstr(s, pat);
    if (!p || (size_t)(p - s) >= n)
        return -1;
    p = strchr(p + strlen(pat), '"');
    if (!p)
        return -1;
    const char *end = strchr(p + 1, '"');
    if (!end || (size_t)(end - p - 1) >= cap)
        return -1;
    memcpy(out, p + 1, (size_t)(end - p - 1));
    out[end - p - 1] = '\0';
    return 0;
}

/* Does text[0..n) contain needle? (memmem is not in C11.) */
static int contains(const char *text, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(text + i, needle, k) == 0)
            return 1;
    return 0;
}

static aiorun_status do_apply(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    const char *key = fx->api->idempotency_key(call);
    int fd = open(fx->path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0)
        return fx->api->set_error(call, AIORUN_E_PERMANENT, "t_ledger: cannot open the ledger");
    char line[300];
    int n = snprintf(line, sizeof line, "%s\n", key);
    int ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    close(fd);
    if (!ok)
        return fx->api->set_error(call, AIORUN_E_PERMANENT, "t_ledger: cannot write the ledger");
    if (contains(input, len, "\"crash\":true") || contains(input, len, "\"crash\": true")) {
        volatile int *volatile target = NULL;
        *target = 1; /* the effect is on disk; the answer never comes */
    }
    char out[320];
    n = snprintf(out, sizeof out, "{\"key\":\"%s\"}", key);
    return fx->api->set_result(call, out, (size_t)n);
}

static aiorun_status do_lookup(void *instance, aiorun_call *call, const char *action, const char *key)
{
    fixture *fx = instance;
    (void)action;
    FILE *f = fopen(fx->path, "r");
    char line[300];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        found = strcmp(line, key) == 0;
    }
    if (f)
        fclose(f);
    if (!found)
        return fx->api->set_error(call, AIORUN_E_NOT_FOUND, "t_ledger: no effect with key %s", key);
    char out[320];
    int n = snprintf(out, sizeof out, "{\"key\":\"%s\",\"reconciled\":true}", key);
    return fx->api->set_result(call, out, (size_t)n);
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = calloc(1, sizeof *fx);
    char dir[400];
    if (!fx)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_ledger: out of memory");
    if (get_plain_string(config, config_len, "dir", dir, sizeof dir) != 0) {
        free(fx);
        return api->set_error(call, AIORUN_E_INVALID, "t_ledger: config.dir is required");
    }
    fx->api = api;
    snprintf(fx->path, sizeof fx->path, "%s/ledger", dir);
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

static const aiorun_action actions[] = {
    {.name = "apply", .summary = "Append the idempotency key to the ledger (and maybe crash)",
     .input_schema = "{\"type\":\"object\",\"properties\":{\"crash\":{\"type\":\"boolean\"}}}",
     .effect = AIORUN_EFFECT_WRITE, .idempotency = AIORUN_IDEMPOTENCY_LOOKUP, .invoke = do_apply},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_ledger",
    .version = "1.0.0",
    .description = "Fixture: an effect on disk, a crash after it, and a lookup",
    .config_schema = "{\"type\":\"object\",\"properties\":{\"dir\":{\"type\":\"string\"}},"
                     "\"required\":[\"dir\"],\"additionalProperties\":false}",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = fx_init,
    .fini = fx_fini,
    .lookup = do_lookup,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major, uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
