/*
 * t_ctor.c - fixture plugin whose constructor (run by dlopen, before any callback) probes what
 * it may do, so that a test can see the lock-down was in place before the plugin's first
 * instruction: it opens PROBE_PATH (compiled in; the test creates the file, mode 0600) and
 * notes the errno, its uid, dumpable and no_new_privs. Action "report" returns them:
 * {"opened": bool, "errno": n, "uid": n, "dumpable": n, "no_new_privs": n}.
 * Only <aiorun/plugin.h> and libc.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* memmem, ptrace's declarations */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <aiorun/plugin.h>

#ifndef PROBE_PATH
/* the test build sets it (tests/plugins/CMakeLists.txt); a standalone build probes nothing */
#define PROBE_PATH "/nonexistent/aiorun-ctor-probe"
#endif

static int g_opened, g_errno = -1, g_dumpable = -1, g_nnp = -1;
static unsigned g_uid;

__attribute__((constructor)) static void probe(void)
{
    int fd = open(PROBE_PATH, O_RDONLY | O_CLOEXEC);
    g_opened = fd >= 0;
    g_errno = fd >= 0 ? 0 : errno;
    if (fd >= 0)
        close(fd);
    g_uid = (unsigned)getuid();
    g_dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    g_nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
}

static aiorun_status do_report(void *instance, aiorun_call *call, const char *in, size_t len)
{
    const aiorun_host_api *api = instance;
    char buf[256];
    (void)in;
    (void)len;
    snprintf(buf, sizeof buf, "{\"opened\":%s,\"errno\":%d,\"uid\":%u,\"dumpable\":%d,\"no_new_privs\":%d}",
             g_opened ? "true" : "false", g_errno, g_uid, g_dumpable, g_nnp);
    return api->set_result(call, buf, strlen(buf));
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    (void)call;
    (void)config;
    (void)config_len;
    *instance = (void *)api;
    return AIORUN_OK;
}

static const aiorun_action actions[] = {
    {.name = "report", .summary = "What the constructor could do", .input_schema = "{\"type\":\"object\"}",
     .effect = AIORUN_EFFECT_READ, .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = do_report},
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_ctor",
    .version = "1.0.0",
    .description = "Fixture: a constructor that probes the sandbox",
    .actions = actions,
    .n_actions = 1,
    .init = fx_init,
};

AIORUN_EXPORT const aiorun_plugin *aiorun_plugin_entry(uint16_t host_abi_major,
                                                       uint16_t host_abi_minor)
{
    (void)host_abi_major;
    (void)host_abi_minor;
    return &plugin;
}
