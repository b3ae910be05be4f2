/*
 * t_no_entry.c - fixture plugin that looks valid but does not export aiorun_plugin_entry: its
 * descriptor is reachable only through a differently named function (a typo an author could
 * make). The host must refuse it, naming the missing symbol, without running any of it.
 * Only <aiorun/plugin.h> and libc.
 */
#include <aiorun/plugin.h>

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
    AIORUN_PLUGIN_HEADER,
    .name = "t_no_entry",
    .version = "1.0.0",
    .description = "Fixture: the entry symbol is misnamed",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
};

/* Exported, but under the wrong name. */
AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry_point(uint16_t host_abi_major,
                                                             uint16_t host_abi_minor);
AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry_point(uint16_t host_abi_major,
                                                             uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
