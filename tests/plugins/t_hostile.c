/*
 * t_hostile.c - fixture plugin that tries, one action at a time, what a hostile or buggy plugin
 * would, and says what happened, so that tests can assert the sandbox stopped it. An action
 * either returns {"errno": n, ...} (the attempt failed with that errno; 0: it succeeded) or
 * never returns because the sandbox killed the process.
 *
 *   read_file     {"path"}: open(path, O_RDONLY)                 -> {"errno", "opened"}
 *   write_file    {"path"}: open(path, O_WRONLY|O_CREAT, 0600) (relative: in the working
 *                 directory)                                     -> {"errno", "opened"}
 *   cwd           getcwd                                         -> {"cwd"}
 *   exec_sh       execve("/bin/sh")                              -> killed (seccomp), or errno
 *   fork_bomb     one fork() (the child exits at once)           -> killed (seccomp), or errno
 *   thread        a thread that returns 42                       -> {"errno", "value"}
 *   alloc         {"mb", "abort_on_null"}: malloc(mb MiB), never touched -> {"allocated",
 *                 "errno"}; with abort_on_null a failed allocation abort()s
 *   spin          an endless loop                                -> killed at the deadline
 *   burn          {"ms"}: uses ms of CPU time, then returns      -> {"burned_ms"}
 *   ptrace_parent PTRACE_ATTACH to getppid()                     -> killed (seccomp), or errno
 *   signal_parent kill(getppid(), SIGTERM)                       -> killed (seccomp), or errno
 *   connect       {"port"}: TCP connect to 127.0.0.1:port        -> {"errno", "landlock_abi"}
 *                 (the kernel's Landlock ABI, read by the constructor: seccomp forbids asking
 *                 later; 0: none)
 *   socket        {"family"}: socket(family, SOCK_STREAM or SOCK_DGRAM) -> {"errno"}
 *   other_secret  {"name"}: api->secret(name)                    -> {"found", "status"}
 *   leak_secret   logs and returns the value of secret "token"   -> {"token", "note"}
 *   write_secret  writes through the pointer secret("token") gave -> killed (read-only memory)
 *   whoami        getuid, getgid, RLIMIT_NPROC                   -> {"uid", "gid", "nproc"}
 *
 * Only <aiorun/plugin.h> and libc; the input scanning is minimal (the host validated it).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* memmem, ptrace's declarations */
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <aiorun/plugin.h>

typedef struct fixture {
    const aiorun_host_api *api;
} fixture;

static long g_landlock_abi;

/* Runs at dlopen, before the seccomp filter: the one moment the ABI can still be asked. */
__attribute__((constructor)) static void read_landlock_abi(void)
{
#ifdef SYS_landlock_create_ruleset
    g_landlock_abi = syscall(SYS_landlock_create_ruleset, NULL, 0, 1U /* VERSION */);
    if (g_landlock_abi < 0)
        g_landlock_abi = 0;
#endif
}

/* ---- minimal input reading ---- */

/* The string member key of a flat JSON object (\" and \\ unescaped), into out. */
static int get_str(const char *in, size_t len, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = memmem(in, len, pat, strlen(pat));
    if (!p)
        return 0;
    p += strlen(pat);
    size_t o = 0;
    const char *end = in + len;
    while (p < end && *p != '"' && o + 1 < cap) {
        if (*p == '\\' && p + 1 < end)
            p++;
        out[o++] = *p++;
    }
    out[o] = '\0';
    return 1;
}

static long get_int(const char *in, size_t len, const char *key, long dflt)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = memmem(in, len, pat, strlen(pat));
    if (!p)
        return dflt;
    return strtol(p + strlen(pat), NULL, 10);
}

static int get_bool(const char *in, size_t len, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":true", key);
    return memmem(in, len, pat, strlen(pat)) != NULL;
}

static aiorun_status result(fixture *fx, aiorun_call *call, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static aiorun_status result(fixture *fx, aiorun_call *call, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return fx->api->set_result(call, buf, strlen(buf));
}

/* ---- actions ---- */

static aiorun_status do_read_file(void *instance, aiorun_call *call, const char *in, size_t len)
{
    char path[1024];
    if (!get_str(in, len, "path", path, sizeof path))
        return ((fixture *)instance)->api->set_error(call, AIORUN_E_INVALID, "no path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    return result(instance, call, "{\"opened\":%s,\"errno\":%d}", fd >= 0 ? "true" : "false", e);
}

static aiorun_status do_write_file(void *instance, aiorun_call *call, const char *in, size_t len)
{
    char path[1024];
    if (!get_str(in, len, "path", path, sizeof path))
        return ((fixture *)instance)->api->set_error(call, AIORUN_E_INVALID, "no path");
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0) {
        if (write(fd, "x", 1) != 1)
            e = errno;
        close(fd);
    }
    return result(instance, call, "{\"opened\":%s,\"errno\":%d}", fd >= 0 ? "true" : "false", e);
}

static aiorun_status do_cwd(void *instance, aiorun_call *call, const char *in, size_t len)
{
    char dir[1024];
    (void)in;
    (void)len;
    if (!getcwd(dir, sizeof dir))
        return result(instance, call, "{\"errno\":%d}", errno);
    return result(instance, call, "{\"cwd\":\"%s\"}", dir);
}

static aiorun_status do_exec_sh(void *instance, aiorun_call *call, const char *in, size_t len)
{
    char *argv[] = {"/bin/sh", "-c", "exit 0", NULL};
    char *envp[] = {NULL};
    (void)in;
    (void)len;
    execve("/bin/sh", argv, envp);
    return result(instance, call, "{\"errno\":%d}", errno);
}

static aiorun_status do_fork_bomb(void *instance, aiorun_call *call, const char *in, size_t len)
{
    (void)in;
    (void)len;
    /* one fork only: if the sandbox let it through, the test fails without a real bomb */
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    if (pid < 0)
        return result(instance, call, "{\"errno\":%d,\"forked\":false}", errno);
    waitpid(pid, NULL, 0);
    return result(instance, call, "{\"errno\":0,\"forked\":true}");
}

static void *thread_main(void *arg)
{
    (void)arg;
    return (void *)42;
}

static aiorun_status do_thread(void *instance, aiorun_call *call, const char *in, size_t len)
{
    pthread_t t;
    void *value = NULL;
    (void)in;
    (void)len;
    int rc = pthread_create(&t, NULL, thread_main, NULL);
    if (rc != 0)
        return result(instance, call, "{\"errno\":%d}", rc);
    pthread_join(t, &value);
    return result(instance, call, "{\"errno\":0,\"value\":%ld}", (long)value);
}

static aiorun_status do_alloc(void *instance, aiorun_call *call, const char *in, size_t len)
{
    long mb = get_int(in, len, "mb", 1);
    int abort_on_null = get_bool(in, len, "abort_on_null");
    errno = 0;
    void *p = malloc((size_t)mb * 1024 * 1024);
    int e = errno;
    if (!p && abort_on_null)
        abort();
    /* never touched: with the limit off, nothing real is used */
    free(p);
    return result(instance, call, "{\"allocated\":%s,\"errno\":%d}", p ? "true" : "false",
                  p ? 0 : e);
}

static aiorun_status do_spin(void *instance, aiorun_call *call, const char *in, size_t len)
{
    volatile unsigned long n = 0;
    (void)instance;
    (void)call;
    (void)in;
    (void)len;
    for (;;)
        n++;
    return AIORUN_E_PERMANENT; /* not reached */
}

static aiorun_status do_burn(void *instance, aiorun_call *call, const char *in, size_t len)
{
    fixture *fx = instance;
    const char *p = memmem(in, len, "\"ms\":", 5);
    long ms = p ? strtol(p + 5, NULL, 10) : 0;
    struct timespec start, now;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start);
    volatile unsigned long n = 0;
    do {
        for (int i = 0; i < 100000; i++)
            n++;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
    char out[64];
    snprintf(out, sizeof out, "{\"burned_ms\":%ld}", ms);
    return fx->api->set_result(call, out, strlen(out));
}

static aiorun_status do_ptrace_parent(void *instance, aiorun_call *call, const char *in, size_t len)
{
    (void)in;
    (void)len;
    pid_t parent = getppid();
    if (ptrace(PTRACE_ATTACH, parent, NULL, NULL) == 0) {
        ptrace(PTRACE_DETACH, parent, NULL, NULL);
        return result(instance, call, "{\"errno\":0}");
    }
    return result(instance, call, "{\"errno\":%d}", errno);
}

static aiorun_status do_signal_parent(void *instance, aiorun_call *call, const char *in, size_t len)
{
    (void)in;
    (void)len;
    if (kill(getppid(), SIGTERM) == 0)
        return result(instance, call, "{\"errno\":0}");
    return result(instance, call, "{\"errno\":%d}", errno);
}

static aiorun_status do_connect(void *instance, aiorun_call *call, const char *in, size_t len)
{
    long port = get_int(in, len, "port", 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return result(instance, call, "{\"errno\":%d,\"step\":\"socket\"}", errno);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    int e = rc == 0 ? 0 : errno;
    close(fd);
    return result(instance, call, "{\"errno\":%d,\"step\":\"connect\",\"landlock_abi\":%ld}", e,
                  g_landlock_abi);
}

static aiorun_status do_socket(void *instance, aiorun_call *call, const char *in, size_t len)
{
    long family = get_int(in, len, "family", AF_INET);
    int fd = socket((int)family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 && errno == EPROTONOSUPPORT)
        fd = socket((int)family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    return result(instance, call, "{\"errno\":%d}", e);
}

static aiorun_status do_other_secret(void *instance, aiorun_call *call, const char *in, size_t len)
{
    fixture *fx = instance;
    char name[128];
    const char *value = NULL;
    size_t vlen = 0;
    if (!get_str(in, len, "name", name, sizeof name))
        return fx->api->set_error(call, AIORUN_E_INVALID, "no name");
    aiorun_status st = fx->api->secret(call, name, &value, &vlen);
    return result(instance, call, "{\"found\":%s,\"status\":%d}", st == AIORUN_OK ? "true" : "false",
                  (int)st);
}

static aiorun_status do_leak_secret(void *instance, aiorun_call *call, const char *in, size_t len)
{
    fixture *fx = instance;
    const char *value = NULL;
    size_t vlen = 0;
    (void)in;
    (void)len;
    if (fx->api->secret(call, "token", &value, &vlen) != AIORUN_OK)
        return fx->api->set_error(call, AIORUN_E_NOT_FOUND, "no secret token");
    fx->api->log(call, AIORUN_LOG_WARN, "leaking the token: %.*s", (int)vlen, value);
    return result(instance, call, "{\"token\":\"%.*s\",\"note\":\"the token is %.*s!\"}", (int)vlen,
                  value, (int)vlen, value);
}

static aiorun_status do_write_secret(void *instance, aiorun_call *call, const char *in, size_t len)
{
    fixture *fx = instance;
    const char *value = NULL;
    size_t vlen = 0;
    (void)in;
    (void)len;
    if (fx->api->secret(call, "token", &value, &vlen) != AIORUN_OK || vlen == 0)
        return fx->api->set_error(call, AIORUN_E_NOT_FOUND, "no secret token");
    *(volatile char *)value = 'X';
    return result(instance, call, "{\"written\":true}");
}

static aiorun_status do_whoami(void *instance, aiorun_call *call, const char *in, size_t len)
{
    (void)in;
    (void)len;
    struct rlimit rl;
    long nproc = getrlimit(RLIMIT_NPROC, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (long)rl.rlim_cur : -1;
    return result(instance, call, "{\"uid\":%u,\"gid\":%u,\"nproc\":%ld}", (unsigned)getuid(),
                  (unsigned)getgid(), nproc);
}

static aiorun_status fx_init(const aiorun_host_api *api, aiorun_call *call, const char *config,
                             size_t config_len, void **instance)
{
    fixture *fx = malloc(sizeof *fx);
    (void)config;
    (void)config_len;
    if (fx == NULL)
        return api->set_error(call, AIORUN_E_PERMANENT, "t_hostile: out of memory");
    fx->api = api;
    *instance = fx;
    return AIORUN_OK;
}

static void fx_fini(void *instance)
{
    free(instance);
}

#define OBJ "{\"type\":\"object\"}"
#define ACTION(n, fn, schema)                                                                   \
    {.name = n, .summary = "hostile: " n, .input_schema = schema, .effect = AIORUN_EFFECT_READ,  \
     .idempotency = AIORUN_IDEMPOTENCY_NATIVE, .invoke = fn}

static const aiorun_action actions[] = {
    ACTION("read_file", do_read_file,
           "{\"type\":\"object\",\"properties\":{\"path\":{\"type\":\"string\"}},\"required\":[\"path\"]}"),
    ACTION("write_file", do_write_file,
           "{\"type\":\"object\",\"properties\":{\"path\":{\"type\":\"string\"}},\"required\":[\"path\"]}"),
    ACTION("cwd", do_cwd, OBJ),
    ACTION("exec_sh", do_exec_sh, OBJ),
    ACTION("fork_bomb", do_fork_bomb, OBJ),
    ACTION("thread", do_thread, OBJ),
    ACTION("alloc", do_alloc,
           "{\"type\":\"object\",\"properties\":{\"mb\":{\"type\":\"integer\"},"
           "\"abort_on_null\":{\"type\":\"boolean\"}},\"required\":[\"mb\"]}"),
    ACTION("spin", do_spin, OBJ),
    ACTION("burn", do_burn,
           "{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"integer\"}},\"required\":[\"ms\"]}"),
    ACTION("ptrace_parent", do_ptrace_parent, OBJ),
    ACTION("signal_parent", do_signal_parent, OBJ),
    ACTION("connect", do_connect,
           "{\"type\":\"object\",\"properties\":{\"port\":{\"type\":\"integer\"}},\"required\":[\"port\"]}"),
    ACTION("socket", do_socket,
           "{\"type\":\"object\",\"properties\":{\"family\":{\"type\":\"integer\"}},\"required\":[\"family\"]}"),
    ACTION("other_secret", do_other_secret,
           "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"}},\"required\":[\"name\"]}"),
    ACTION("leak_secret", do_leak_secret, OBJ),
    ACTION("write_secret", do_write_secret, OBJ),
    ACTION("whoami", do_whoami, OBJ),
};

static const aiorun_plugin plugin = {
    AIORUN_PLUGIN_HEADER,
    .name = "t_hostile",
    .version = "1.0.0",
    .description = "Fixture: tries what a hostile plugin would; the sandbox must stop it",
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
