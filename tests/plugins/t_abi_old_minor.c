/*
 * t_abi_old_minor.c - fixture plugin as built against ABI 1.0, before `lookup` was appended to
 * the descriptor (since 1.1): abi_minor 0 and struct_size = offsetof(aiorun_plugin, lookup).
 * The host must load it, serve "ok", and treat it as having no lookup.
 *
 * A real 1.0 plugin has arbitrary bytes where `lookup` would be. Here those bytes are a
 * tripwire function: a host that reads past struct_size would announce "lookup": true in its
 * HELLO, and calling it fails loudly. Only <aiorun/plugin.h> and libc.
 */
#include <stddef.h>
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

static aiorun_status tripwire_lookup(void *instance, aiorun_call *call, const char *action,
                                     const char *idempotency_key)
{
    fixture *fx = instance;
    (void)action;
    (void)idempotency_key;
    return fx->api->set_error(call, AIORUN_E_PERMANENT,
                              "t_abi_old_minor: host read lookup beyond struct_size");
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = malloc(sizeof *fx);
    (void)config;
    (void)config_len;
    if (fx == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_abi_old_minor: out of memory");
    fx->api = api;
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

static const aiorun_action actions[] = {
    {.name = "ok", .summary = "Return the input unchanged", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_ok},
};

static const aiorun_plugin plugin = {
    .abi_major = 1,
    .abi_minor = 0,
    .struct_size = (uint32_t)offsetof(aiorun_plugin, lookup),
    .action_size = (uint32_t)sizeof(aiorun_action),   /* unchanged since 1.0 */
    .name = "t_abi_old_minor",
    .version = "1.0.0",
    .description = "Fixture: built against ABI 1.0",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = fx_init,
    .fini = fx_fini,
    .lookup = tripwire_lookup,   /* beyond struct_size: must never be read */
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
