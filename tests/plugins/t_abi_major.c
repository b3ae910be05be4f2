/*
 * t_abi_major.c - fixture plugin built for a future ABI major (AIORUN_ABI_MAJOR + 1), valid in
 * every other respect. The host must refuse it from the descriptor's first field, naming the
 * file and both ABIs, and never call init or an action: both would fail loudly if it did.
 * Only <aiorun/plugin.h> and libc.
 */
#include <aiorun/plugin.h>

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    (void)config;
    (void)config_len;
    (void)instance;
    return api->set_error(call, AIORUN_E_PERMANENT,
                          "t_abi_major: init called although the ABI major differs");
}

static aiorun_status do_ok(void *instance, aiorun_call *call, const char *input, size_t len)
{
    (void)instance;
    (void)call;
    (void)input;
    (void)len;
    return AIORUN_E_PERMANENT;
}

static const aiorun_action actions[] = {
    {.name = "ok", .summary = "Never reached", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_ok},
};

static const aiorun_plugin plugin = {
    .abi_major = AIORUN_ABI_MAJOR + 1,
    .abi_minor = 0,
    .struct_size = (uint32_t)sizeof(aiorun_plugin),
    .action_size = (uint32_t)sizeof(aiorun_action),
    .name = "t_abi_major",
    .version = "1.0.0",
    .description = "Fixture: built for another ABI major",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
    .init = fx_init,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;   /* deliberately not refusing: the host must */
    (void)host_abi_minor;
    return &plugin;
}
