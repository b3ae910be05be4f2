/*
 * t_crash.c - fixture plugin that dies: "crash" writes through a null pointer (SIGSEGV) in the
 * middle of a call; "ok" returns its input, to show a restarted process serves again.
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

/* The pointer is volatile, so the compiler cannot prove it is NULL and turn the store into a
 * trap instruction (SIGILL): the store really happens and faults. (In sanitizer builds the
 * sanitizer may report the fault and exit instead; the process dies either way.) */
static aiorun_status do_crash(void *instance, aiorun_call *call, const char *input, size_t len)
{
    volatile int *volatile target = NULL;
    (void)instance;
    (void)call;
    (void)input;
    (void)len;
    *target = 42;
    return AIORUN_E_PERMANENT;   /* not reached */
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = malloc(sizeof *fx);
    (void)config;
    (void)config_len;
    if (fx == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_crash: out of memory");
    fx->api = api;
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

static const aiorun_action actions[] = {
    {.name = "crash", .summary = "Die with SIGSEGV", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_crash},
    {.name = "ok", .summary = "Return the input unchanged", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_ok},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_crash",
    .version = "1.0.0",
    .description = "Fixture: an action that crashes the process",
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
