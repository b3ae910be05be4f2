/*
 * t_bad_init.c - fixture plugin whose init always fails with class auth and the message
 * "missing api_key in config", the way a connector reports unusable configuration. The host
 * must refuse the connector with that message and not restart it in a loop.
 * Only <aiorun/plugin.h> and libc.
 */
#include <aiorun/plugin.h>

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    (void)config;
    (void)config_len;
    (void)instance;
    return api->set_error(call, AIORUN_E_AUTH, "missing api_key in config");
}

static aiorun_status do_ok(void *instance, aiorun_call *call, const char *input, size_t len)
{
    (void)instance;
    (void)call;
    (void)input;
    (void)len;
    return AIORUN_E_PERMANENT;   /* never reached: init failed */
}

static const aiorun_action actions[] = {
    {.name = "ok", .summary = "Never reached", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_ok},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_bad_init",
    .version = "1.0.0",
    .description = "Fixture: init fails",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = fx_init,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
