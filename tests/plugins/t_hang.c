/*
 * t_hang.c - fixture plugin that never answers: "hang" spins forever (the host's deadline must
 * kill it); "ok" returns its input, to show a restarted process serves again.
 * Only <aiorun/plugin.h> and libc.
 */
#include <stdlib.h>

#include <aiorun/plugin.h>

typedef struct fixture {
    const aiorun_host_api *api;
} fixture;

static aiorun_status do_ok(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    return fx->api->set_result(call, input, len);
}

/* Every iteration writes a volatile object, so the loop has an effect the compiler must keep;
 * it burns CPU without blocking in any system call. */
static aiorun_status do_hang(void *instance, aiorun_call *call, const char *input, size_t len)
{
    volatile unsigned long spins = 0;
    (void)instance;
    (void)call;
    (void)input;
    (void)len;
    for (;;)
        spins = spins + 1;
    return AIORUN_E_PERMANENT;   /* not reached */
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = malloc(sizeof *fx);
    (void)config;
    (void)config_len;
    if (fx == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_hang: out of memory");
    fx->api = api;
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

static const aiorun_action actions[] = {
    {.name = "hang", .summary = "Never return", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_hang},
    {.name = "ok", .summary = "Return the input unchanged", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_ok},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_hang",
    .version = "1.0.0",
    .description = "Fixture: an action that never returns",
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
