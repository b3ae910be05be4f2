/*
 * t_garbage.c - fixture plugin that corrupts the wire: "garbage" writes bytes that are not a
 * frame straight to fd 3 (the sandbox host's socket to the daemon), then returns a normal
 * result, so the daemon receives garbage followed by a well-formed frame and must stop trusting
 * the process at the garbage. "ok" returns its input.
 * Only <aiorun/plugin.h> and libc (write(2) from <unistd.h>).
 */
#include <stdlib.h>
#include <unistd.h>

#include <aiorun/plugin.h>

#define HOST_SOCKET_FD 3

typedef struct fixture {
    const aiorun_host_api *api;
} fixture;

static aiorun_status do_ok(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    return fx->api->set_result(call, input, len);
}

static aiorun_status do_garbage(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    /* Starts with something that is not the "AR" magic, then pseudo-random bytes (a fixed
     * LCG, so every run sends the same garbage). */
    unsigned char junk[512] = "GARBAGE\xff\x00\x01";
    unsigned state = 12345u;
    ssize_t written;

    (void)input;
    (void)len;
    for (size_t i = 10; i < sizeof junk; i++) {
        state = state * 1103515245u + 12345u;
        junk[i] = (unsigned char)(state >> 16);
    }
    written = write(HOST_SOCKET_FD, junk, sizeof junk);
    if (written < 0)
        return fx->api->set_error(call, AIORUN_E_PERMANENT, "t_garbage: write to fd 3 failed");
    return fx->api->set_result(call, "{\"garbage_written\":true}", 24);
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = malloc(sizeof *fx);
    (void)config;
    (void)config_len;
    if (fx == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_garbage: out of memory");
    fx->api = api;
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

static const aiorun_action actions[] = {
    {.name = "garbage", .summary = "Write garbage on the host's socket",
     .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_garbage},
    {.name = "ok", .summary = "Return the input unchanged", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_ok},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_garbage",
    .version = "1.0.0",
    .description = "Fixture: an action that writes garbage on the wire",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = fx_init,
    .fini = fx_fini,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
