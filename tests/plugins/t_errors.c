/*
 * t_errors.c - fixture plugin that fails in every documented way, one action each:
 *   retryable, rate_limited, timeout, auth, invalid, not_found, conflict, permanent
 *       fail with that class and the message "t_errors: simulated <class> failure"
 *   no_message   returns AIORUN_E_PERMANENT without calling set_error
 *   bad_result   passes text that is not JSON to set_result and returns what it answered
 *                (AIORUN_E_INVALID from a correct host)
 *   ok           returns its input, to show the process still serves after all that
 * Every action is a read with native idempotency, so repeating one is always safe.
 * Only <aiorun/plugin.h> and libc.
 */
#include <stdlib.h>

#include <aiorun/plugin.h>

typedef struct fixture {
    const aiorun_host_api *api;
} fixture;

/* The invoke callback is not told which action it serves: one small function per class. */
#define FAIL_WITH(id, cls)                                                                  \
    static aiorun_status do_##id(void *instance, aiorun_call *call, const char *input,      \
                                 size_t len)                                                \
    {                                                                                       \
        fixture *fx = instance;                                                             \
        (void)input;                                                                        \
        (void)len;                                                                          \
        return fx->api->set_error(call, cls, "t_errors: simulated %s failure", #id);        \
    }

FAIL_WITH(retryable, AIORUN_E_RETRYABLE)
FAIL_WITH(rate_limited, AIORUN_E_RATE_LIMITED)
FAIL_WITH(timeout, AIORUN_E_TIMEOUT)
FAIL_WITH(auth, AIORUN_E_AUTH)
FAIL_WITH(invalid, AIORUN_E_INVALID)
FAIL_WITH(not_found, AIORUN_E_NOT_FOUND)
FAIL_WITH(conflict, AIORUN_E_CONFLICT)
FAIL_WITH(permanent, AIORUN_E_PERMANENT)

static aiorun_status do_no_message(void *instance, aiorun_call *call, const char *input,
                                   size_t len)
{
    (void)instance;
    (void)call;
    (void)input;
    (void)len;
    return AIORUN_E_PERMANENT;
}

static aiorun_status do_bad_result(void *instance, aiorun_call *call, const char *input,
                                   size_t len)
{
    fixture *fx = instance;
    static const char not_json[] = "{\"unterminated\": [1, 2";
    (void)input;
    (void)len;
    return fx->api->set_result(call, not_json, sizeof not_json - 1);
}

static aiorun_status do_ok(void *instance, aiorun_call *call, const char *input, size_t len)
{
    fixture *fx = instance;
    return fx->api->set_result(call, input, len);
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = malloc(sizeof *fx);
    (void)config;
    (void)config_len;
    if (fx == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_errors: out of memory");
    fx->api = api;
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

#define ACTION(id, what)                                                                    \
    {.name = #id, .summary = what, .input_schema = "{\"type\":\"object\"}",                 \
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE,                \
     .invoke = do_##id}

static const aiorun_action actions[] = {
    ACTION(retryable, "Fail with class retryable"),
    ACTION(rate_limited, "Fail with class rate_limited"),
    ACTION(timeout, "Fail with class timeout"),
    ACTION(auth, "Fail with class auth"),
    ACTION(invalid, "Fail with class invalid"),
    ACTION(not_found, "Fail with class not_found"),
    ACTION(conflict, "Fail with class conflict"),
    ACTION(permanent, "Fail with class permanent"),
    ACTION(no_message, "Fail without calling set_error"),
    ACTION(bad_result, "Hand set_result text that is not JSON"),
    ACTION(ok, "Return the input unchanged"),
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_errors",
    .version = "1.0.0",
    .description = "Fixture: one action per error class",
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
