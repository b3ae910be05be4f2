/* test_lockdown.c - the sandbox's confinement: lockdown.c's layers applied in a forked child
 * and probed there, then real aiorun-host processes running the hostile fixtures
 * (test-plugins/t_hostile.so, t_ctor.so) next to a well-behaved pool (t_ok) on the same loop,
 * which must keep serving whatever the hostile one tries.
 *
 * Parts a kernel lacks are skipped, not failed: the Landlock ABI is read from the kernel (TCP
 * rules need ABI 4, signal scoping ABI 6), and uid switching needs root. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_main.h"

#include "aiorun/plugin.h"
#include "ar.h"
#include "lockdown.h"
#include "loop.h"
#include "sandbox.h"
#include "sandbox_fixture.h"

#define FIXTURE(name) AIORUN_BUILD_DIR "/test-plugins/" name ".so"
#define PROBE_FILE AIORUN_BUILD_DIR "/test-plugins/ctor-probe.txt"
/* Connector uids when the tests run as root: one per test, so parallel tests never share
 * RLIMIT_NPROC's count. */
#define UID_BASE 70400u

static int kernel_abi(void)
{
    char why[160];
    return lockdown_landlock_abi(why, sizeof why);
}

static int is_root(void)
{
    return geteuid() == 0;
}

static void assert_contains(const char *s, const char *part)
{
    if (!s || !strstr(s, part))
        fail_msg("\"%s\" does not contain \"%s\"", s ? s : "(null)", part);
}

/* ---- forked children: apply a layer, probe, report through a pipe ---- */

#define MAX_PROBES 24
typedef struct probes {
    int v[MAX_PROBES];
} probes;

typedef void (*child_fn)(void *arg, probes *out);

/* Run fn in a child; *out gets what it wrote (zeroed when it died first). Returns the wait
 * status. */
static int run_child(child_fn fn, void *arg, probes *out)
{
    int fds[2];
    memset(out, 0, sizeof *out);
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        probes p;
        close(fds[0]);
        memset(&p, 0, sizeof p);
        fn(arg, &p);
        if (write(fds[1], &p, sizeof p) != (ssize_t)sizeof p)
            _exit(98);
        _exit(0);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], out, sizeof *out);
    if (n != (ssize_t)sizeof *out)
        memset(out, 0, sizeof *out);
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static int err_of(int rc)
{
    return rc < 0 ? errno : 0;
}

static int try_open(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

static int try_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int e = err_of(connect(fd, (struct sockaddr *)&a, sizeof a));
    close(fd);
    return e;
}

/* A listening socket on 127.0.0.1; its port in *port. */
static int listen_local(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

typedef struct tmp_tree {
    char dir[64];
    char plugin[128], work[128], secret[128], outside[128], inside[128];
} tmp_tree;

static void make_tree(tmp_tree *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/aiorun-lockdown-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->plugin, sizeof t->plugin, "%s/plugin.so", t->dir);
    snprintf(t->work, sizeof t->work, "%s/work", t->dir);
    snprintf(t->secret, sizeof t->secret, "%s/secret.txt", t->dir);
    snprintf(t->outside, sizeof t->outside, "%s/outside.txt", t->dir);
    snprintf(t->inside, sizeof t->inside, "%s/work/inside.txt", t->dir);
    int fd = open(t->plugin, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    close(fd);
    fd = open(t->secret, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "key", 3), 3);
    close(fd);
    assert_int_equal(mkdir(t->work, 0700), 0);
}

static void remove_tree(tmp_tree *t)
{
    unlink(t->inside);
    unlink(t->outside);
    unlink(t->plugin);
    unlink(t->secret);
    char sub[160];
    snprintf(sub, sizeof sub, "%s/sub", t->work);
    rmdir(sub);
    rmdir(t->work);
    rmdir(t->dir);
}

/* ---- the report ---- */

static void test_report_json(void **state)
{
    (void)state;
    lockdown_report r;
    lockdown_report_init(&r);
    json_t *j = lockdown_report_json(&r);
    char *text = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(text, "{\"dumpable\":true,\"landlock\":\"off\",\"no_new_privs\":false,"
                              "\"rlimits\":\"off\",\"seccomp\":\"off\",\"uid\":\"off\"}");
    free(text);
    json_decref(j);

    r.rlimits = 1;
    r.uid_state = LOCKDOWN_UID_DROPPED;
    r.uid = 70001;
    r.no_new_privs = 1;
    r.dumpable = 0;
    r.landlock = LOCKDOWN_LANDLOCK_ON;
    r.landlock_abi = 4;
    r.landlock_fs = r.landlock_net = 1;
    r.seccomp = 1;
    j = lockdown_report_json(&r);
    text = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(text, "{\"dumpable\":false,\"landlock\":{\"abi\":4,\"fs\":true,\"net\":true,"
                              "\"scoped\":false},\"no_new_privs\":true,\"rlimits\":\"on\","
                              "\"seccomp\":\"on\",\"uid\":70001}");
    free(text);
    json_decref(j);

    r.uid_state = LOCKDOWN_UID_SHARED;
    r.landlock = LOCKDOWN_LANDLOCK_UNAVAILABLE;
    snprintf(r.landlock_why, sizeof r.landlock_why, "the kernel has no Landlock (ENOSYS)");
    j = lockdown_report_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "uid")), "shared: the daemon is not root");
    assert_string_equal(json_string_value(json_object_get(j, "landlock")),
                        "unavailable: the kernel has no Landlock (ENOSYS)");
    json_decref(j);
}

/* ---- rlimits ---- */

static void child_rlimits(void *arg, probes *out)
{
    int with_as = *(int *)arg;
    lockdown_report r;
    ar_error err;
    struct rlimit rl;
    lockdown_report_init(&r);
    out->v[0] = lockdown_rlimits(with_as, &r, &err);
    out->v[1] = r.rlimits;
    getrlimit(RLIMIT_NOFILE, &rl);
    out->v[2] = (int)rl.rlim_max;
    getrlimit(RLIMIT_CORE, &rl);
    out->v[3] = (int)rl.rlim_max;
    getrlimit(RLIMIT_CPU, &rl);
    out->v[4] = (int)rl.rlim_cur;
    getrlimit(RLIMIT_AS, &rl);
    out->v[5] = rl.rlim_max == RLIM_INFINITY ? -1 : (int)(rl.rlim_max >> 20);
    if (with_as) {
        void *p = malloc(1024u << 20);
        out->v[6] = p == NULL;
        free(p);
    }
}

static void test_rlimits_in_child(void **state)
{
    (void)state;
    probes p;
    int with_as = 1;
#ifdef AIORUN_SANITIZE
    with_as = 0; /* the sanitizer's shadow memory needs the address space */
#endif
    int status = run_child(child_rlimits, &with_as, &p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(p.v[0], AR_OK);
    assert_int_equal(p.v[1], 1);
    assert_int_equal(p.v[2], LOCKDOWN_RLIMIT_NOFILE);
    assert_int_equal(p.v[3], 0);
    assert_int_equal(p.v[4], LOCKDOWN_RLIMIT_CPU_S);
    if (with_as) {
        assert_int_equal(p.v[5], (int)(LOCKDOWN_RLIMIT_AS >> 20));
        assert_int_equal(p.v[6], 1); /* 1 GiB does not fit in 512 MiB */
    }
}

/* ---- uid ---- */

static void child_uid(void *arg, probes *out)
{
    unsigned uid = *(unsigned *)arg;
    lockdown_report r;
    ar_error err;
    struct rlimit rl;
    lockdown_report_init(&r);
    out->v[0] = lockdown_drop_uid(uid, uid + 1, 0, &r, &err);
    out->v[1] = (int)r.uid_state;
    out->v[2] = (int)getuid();
    out->v[3] = (int)getgid();
    out->v[4] = getgroups(0, NULL);
    getrlimit(RLIMIT_NPROC, &rl);
    out->v[5] = (int)rl.rlim_max;
    out->v[6] = try_open("/etc/shadow", O_RDONLY);
    out->v[7] = err_of(setresuid(0, 0, 0));
}

static void test_uid_drop_in_child(void **state)
{
    (void)state;
    probes p;
    unsigned uid = UID_BASE + 1;
    int status = run_child(child_uid, &uid, &p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(p.v[0], AR_OK);
    if (!is_root()) {
        /* nothing changes; the report says the uid is shared with the daemon */
        assert_int_equal(p.v[1], LOCKDOWN_UID_SHARED);
        assert_int_equal(p.v[2], (int)getuid());
        return;
    }
    assert_int_equal(p.v[1], LOCKDOWN_UID_DROPPED);
    assert_int_equal(p.v[2], (int)uid);
    assert_int_equal(p.v[3], (int)uid + 1);
    assert_int_equal(p.v[4], 0);
    assert_int_equal(p.v[5], LOCKDOWN_RLIMIT_NPROC);
    assert_int_equal(p.v[6], EACCES);
    assert_int_equal(p.v[7], EPERM); /* no way back */
}

/* ---- Landlock ---- */

typedef struct landlock_arg {
    tmp_tree *t;
    int allowed_port, other_port;
} landlock_arg;

static void child_landlock(void *arg, probes *out)
{
    landlock_arg *a = arg;
    lockdown_report r;
    ar_error err;
    lockdown_report_init(&r);
    out->v[0] = lockdown_no_privs(&r, &err);
    lockdown_landlock_opts o = {.plugin_path = a->t->plugin, .workdir = a->t->work,
                                .ports = &a->allowed_port, .n_ports = 1};
    out->v[1] = lockdown_landlock(&o, &r, &err);
    out->v[2] = r.landlock_abi;
    out->v[3] = try_open(a->t->plugin, O_RDONLY);
    out->v[4] = try_open(a->t->secret, O_RDONLY);
    out->v[5] = try_open(a->t->inside, O_WRONLY | O_CREAT);
    out->v[6] = try_open(a->t->outside, O_WRONLY | O_CREAT);
    out->v[7] = try_open("/proc/self/status", O_RDONLY);
    out->v[8] = try_open("/etc/hosts", O_RDONLY);
    out->v[9] = try_connect(a->allowed_port);
    out->v[10] = try_connect(a->other_port);
    out->v[11] = err_of(kill(getppid(), 0));
    char sub[160];
    snprintf(sub, sizeof sub, "%s/sub", a->t->work);
    out->v[12] = err_of(mkdir(sub, 0700));
    out->v[13] = try_open("/usr/bin/env", O_RDONLY);
    out->v[14] = r.landlock_net;
    out->v[15] = r.landlock_scoped;
    out->v[16] = err_of(ptrace(PTRACE_ATTACH, getppid(), NULL, NULL));
}

static void test_landlock_in_child(void **state)
{
    (void)state;
    int abi = kernel_abi();
    if (abi <= 0) {
        print_message("the kernel has no Landlock: skipped\n");
        skip();
    }
    tmp_tree t;
    make_tree(&t);
    landlock_arg a = {.t = &t};
    int lfd = listen_local(&a.allowed_port);
    int ofd = listen_local(&a.other_port);
    probes p;
    int status = run_child(child_landlock, &a, &p);
    close(lfd);
    close(ofd);
    remove_tree(&t);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(p.v[0], AR_OK);
    assert_int_equal(p.v[1], AR_OK);
    assert_int_equal(p.v[2], abi);
    assert_int_equal(p.v[3], 0);          /* the plugin: readable */
    assert_int_equal(p.v[4], EACCES);     /* anything else: not, even as root */
    assert_int_equal(p.v[5], 0);          /* the working directory: writable */
    assert_int_equal(p.v[6], EACCES);
    assert_int_equal(p.v[7], EACCES);     /* /proc too */
    assert_int_equal(p.v[8], 0);          /* the resolver's files */
    assert_int_equal(p.v[12], 0);
    assert_int_equal(p.v[13], EACCES);    /* no other programs */
    assert_true(p.v[16] == EPERM || p.v[16] == EACCES); /* no ptrace out of the domain */
    if (abi >= 4) {
        assert_int_equal(p.v[14], 1);
        assert_int_equal(p.v[9], 0);
        assert_int_equal(p.v[10], EACCES);
    } else {
        print_message("Landlock ABI %d < 4: TCP port rules skipped\n", abi);
    }
    if (abi >= 6) {
        assert_int_equal(p.v[15], 1);
        assert_int_equal(p.v[11], EPERM);
    } else {
        print_message("Landlock ABI %d < 6: signal scoping skipped\n", abi);
    }
}

/* ---- seccomp ---- */

enum { SC_PROBE, SC_EXEC, SC_FORK, SC_CLONE, SC_PTRACE, SC_TGKILL_PARENT, SC_UNSHARE, SC_KILL,
       SC_DUMPABLE };

static void *thread_main(void *arg)
{
    (void)arg;
    return (void *)7;
}

static void child_seccomp(void *arg, probes *out)
{
    int mode = *(int *)arg;
    lockdown_report r;
    ar_error err;
    lockdown_report_init(&r);
    out->v[0] = lockdown_no_privs(&r, &err);
    out->v[1] = lockdown_seccomp(&r, &err);
    char *argv[] = {"/bin/true", NULL}, *envp[] = {NULL};
    switch (mode) {
    case SC_EXEC:
        execve("/bin/true", argv, envp);
        _exit(90);
    case SC_FORK:
        if (fork() == 0)
            _exit(0);
        _exit(91);
    case SC_CLONE:
        syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        _exit(92);
    case SC_PTRACE:
        ptrace(PTRACE_ATTACH, getppid(), NULL, NULL);
        _exit(93);
    case SC_TGKILL_PARENT:
        syscall(SYS_tgkill, getppid(), getppid(), 0);
        _exit(94);
    case SC_UNSHARE:
        unshare(CLONE_NEWUSER);
        _exit(95);
    case SC_KILL:
        kill(getppid(), 0);
        _exit(96);
    case SC_DUMPABLE:
        prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
        _exit(97);
    default:
        break;
    }
    int fd;
    out->v[2] = (fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0 ? errno : 0;
    out->v[3] = (fd = socket(AF_NETLINK, SOCK_DGRAM, 0)) < 0 ? errno : 0;
    out->v[4] = (fd = socket(AF_INET6, SOCK_DGRAM, 0)) < 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    out->v[5] = err_of((int)syscall(SYS_clone3, NULL, 0));
    struct winsize ws;
    out->v[6] = err_of(ioctl(0, TIOCGWINSZ, &ws));
    pthread_t t;
    void *value = NULL;
    out->v[7] = pthread_create(&t, NULL, thread_main, NULL);
    if (out->v[7] == 0)
        pthread_join(t, &value);
    out->v[8] = (int)(long)value;
    out->v[9] = r.seccomp;
    /* memory the way libsodium and a large realloc use it */
    char *big = malloc(8u << 20);
    big = realloc(big, 32u << 20);
    out->v[10] = big != NULL;
    free(big);
    out->v[11] = err_of(mlock(&ws, sizeof ws));
    munlock(&ws, sizeof ws);
    out->v[12] = err_of(raise(0)); /* tgkill to ourselves */
}

static void expect_sigsys(int mode, const char *what)
{
    probes p;
    int status = run_child(child_seccomp, &mode, &p);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSYS)
        fail_msg("%s: expected death by SIGSYS, got wait status 0x%x", what, status);
}

static void test_seccomp_in_child(void **state)
{
    (void)state;
    probes p;
    int mode = SC_PROBE;
    int status = run_child(child_seccomp, &mode, &p);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the probing child died: wait status 0x%x", status);
    assert_int_equal(p.v[0], AR_OK);
    assert_int_equal(p.v[1], AR_OK);
    assert_int_equal(p.v[9], 1);
    assert_int_equal(p.v[2], EACCES);        /* AF_UNIX */
    assert_int_equal(p.v[3], EAFNOSUPPORT);  /* AF_NETLINK */
    assert_int_equal(p.v[4], 0);             /* AF_INET6 */
    assert_int_equal(p.v[5], ENOSYS);        /* clone3: glibc falls back to clone */
    assert_int_equal(p.v[6], ENOTTY);
    assert_int_equal(p.v[7], 0);             /* threads work */
    assert_int_equal(p.v[8], 7);
    assert_int_equal(p.v[10], 1);
    assert_int_equal(p.v[11], 0);
    assert_int_equal(p.v[12], 0);

    expect_sigsys(SC_EXEC, "execve");
    expect_sigsys(SC_FORK, "fork");
    expect_sigsys(SC_CLONE, "fork-style clone");
    expect_sigsys(SC_PTRACE, "ptrace");
    expect_sigsys(SC_TGKILL_PARENT, "tgkill to another process");
    expect_sigsys(SC_UNSHARE, "unshare");
    expect_sigsys(SC_KILL, "kill");
    expect_sigsys(SC_DUMPABLE, "prctl(PR_SET_DUMPABLE)");
}

/* ---- pools of real hosts ---- */

/* The lock-down the daemon would give a connector: its own uid (used when we are root). */
static sandbox_lockdown default_lockdown(unsigned uid)
{
    sandbox_lockdown ld = {.uid = uid, .gid = uid};
    return ld;
}

static void start_with(harness *h, const char *connector, const char *plugin, sandbox_lockdown ld,
                       test_secrets *ts, int timeout_ms)
{
    sandbox_pool_opts opts = {.connector = connector, .plugin_path = plugin, .host_path = HOST_PATH,
                              .processes = 1, .timeout_ms = timeout_ms, .lockdown = ld,
                              .secrets_fn = ts ? test_secrets_fn : NULL, .secrets_arg = ts};
    start_pool_opts(h, &opts);
}

/* A second pool on h's loop: the bystander that must keep serving. */
static sandbox_pool *start_bystander(harness *h, unsigned uid)
{
    sandbox_pool *pool = NULL;
    ar_error err;
    sandbox_pool_opts opts = {.connector = "bystander", .plugin_path = FIXTURE("t_ok"),
                              .host_path = HOST_PATH, .processes = 1, .timeout_ms = 5000,
                              .lockdown = default_lockdown(uid)};
    opts.lockdown.runtime_dir = test_runtime_dir();
    if (sandbox_pool_new(h->loop, &opts, NULL, NULL, &pool, &err) != AR_OK)
        fail_msg("bystander: %s", err.message);
    return pool;
}

static int pred_pool_ready(harness *h, void *arg)
{
    (void)h;
    sandbox_snapshot s;
    sandbox_pool_snapshot(arg, &s);
    json_decref(s.descriptor);
    return s.state == SANDBOX_READY && s.serving > 0;
}

static void call_pool(harness *h, sandbox_pool *pool, const char *action, const char *input,
                      int timeout_ms, call_rec *r)
{
    sandbox_call c = {.action = action, .input_json = input, .input_len = strlen(input),
                      .idempotency_key = "k", .attempt = 1, .timeout_ms = timeout_ms};
    memset(r, 0, sizeof *r);
    if (!run_until(h, pred_pool_ready, pool))
        fail_msg("pool not ready for %s", action);
    assert_int_equal(sandbox_pool_invoke(pool, &c, on_done, r), AR_OK);
    if (!run_until(h, pred_done, r))
        fail_msg("no result for %s", action);
    print_message("%s %s -> %s%s (class %d)\n", action, input, r->ok ? "ok " : "error ",
                  r->ok ? r->result : r->message, r->error_class);
}

/* The bystander answers as if nothing happened. */
static void bystander_serves(harness *h, sandbox_pool *bystander)
{
    call_rec r;
    call_pool(h, bystander, "ok", "{\"still\":\"here\"}", 0, &r);
    assert_true(r.ok);
    assert_string_equal(r.result, "{\"still\":\"here\"}");
    rec_clear(&r);
    sandbox_snapshot s;
    sandbox_pool_snapshot(bystander, &s);
    assert_int_equal(s.restarts, 0);
    json_decref(s.descriptor);
}

/* An integer member of a result. */
static long result_int(const call_rec *r, const char *key)
{
    if (!r->ok)
        fail_msg("expected a result, got class %d: %s", r->error_class, r->message);
    json_t *v = json_loads(r->result, 0, NULL);
    json_t *m = json_object_get(v, key);
    if (!json_is_integer(m) && !json_is_boolean(m))
        fail_msg("result %s has no %s", r->result, key);
    long n = json_is_boolean(m) ? json_is_true(m) : (long)json_integer_value(m);
    json_decref(v);
    return n;
}

/* action is stopped by killing its process; the message says by whom. */
static void expect_killed(harness *h, const char *action, const char *input, const char *why)
{
    call_rec r;
    call_pool(h, h->pool, action, input, 5000, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_PLUGIN_CRASHED);
    assert_contains(r.message, why);
    rec_clear(&r);
}

static void test_hello_sandbox_report(void **state)
{
    (void)state;
    harness h;
    int abi = kernel_abi();
    unsigned uid = UID_BASE + 10;
    start_with(&h, "report_conn", FIXTURE("t_ok"), default_lockdown(uid), NULL, 5000);
    wait_state(&h, SANDBOX_READY);
    sandbox_snapshot s = snap(&h);
    json_t *sb = json_object_get(s.descriptor, "sandbox");
    char *text = json_dumps(sb, JSON_SORT_KEYS | JSON_COMPACT);
    print_message("sandbox report: %s\n", text);
    free(text);
    assert_string_equal(json_string_value(json_object_get(sb, "rlimits")), "on");
    assert_string_equal(json_string_value(json_object_get(sb, "seccomp")), "on");
    assert_true(json_is_true(json_object_get(sb, "no_new_privs")));
    assert_true(json_is_false(json_object_get(sb, "dumpable")));
    if (is_root())
        assert_int_equal(json_integer_value(json_object_get(sb, "uid")), uid);
    else
        assert_string_equal(json_string_value(json_object_get(sb, "uid")),
                            "shared: the daemon is not root");
    json_t *ll = json_object_get(sb, "landlock");
    if (abi > 0) {
        assert_int_equal(json_integer_value(json_object_get(ll, "abi")), abi);
        assert_true(json_is_true(json_object_get(ll, "fs")));
        assert_int_equal(json_is_true(json_object_get(ll, "net")), abi >= 4);
        assert_int_equal(json_is_true(json_object_get(ll, "scoped")), abi >= 6);
    } else {
        assert_contains(json_string_value(ll), "unavailable: ");
    }
    json_decref(s.descriptor);
    stop_pool(&h);
}

static void test_layers_off_are_reported(void **state)
{
    (void)state;
    harness h;
    sandbox_lockdown ld = {.no_rlimits = 1, .no_uid = 1, .no_landlock = 1, .no_seccomp = 1,
                           .uid = UID_BASE + 11, .gid = UID_BASE + 11};
    start_with(&h, "off_conn", FIXTURE("t_hostile"), ld, NULL, 5000);
    wait_state(&h, SANDBOX_READY);
    sandbox_snapshot s = snap(&h);
    json_t *sb = json_object_get(s.descriptor, "sandbox");
    assert_string_equal(json_string_value(json_object_get(sb, "rlimits")), "off");
    assert_string_equal(json_string_value(json_object_get(sb, "uid")), "off");
    assert_string_equal(json_string_value(json_object_get(sb, "landlock")), "off");
    assert_string_equal(json_string_value(json_object_get(sb, "seccomp")), "off");
    /* these two are never switched off */
    assert_true(json_is_true(json_object_get(sb, "no_new_privs")));
    assert_true(json_is_false(json_object_get(sb, "dumpable")));
    json_decref(s.descriptor);
    /* and they really are off: a file outside is readable, the uid is ours */
    call_rec r;
    call_pool(&h, h.pool, "read_file", "{\"path\":\"/proc/self/status\"}", 0, &r);
    assert_int_equal(result_int(&r, "errno"), 0);
    rec_clear(&r);
    call_pool(&h, h.pool, "whoami", "{}", 0, &r);
    assert_int_equal(result_int(&r, "uid"), (long)getuid());
    rec_clear(&r);
    stop_pool(&h);
}

static void test_hostile_processes_are_killed(void **state)
{
    (void)state;
    harness h;
    start_with(&h, "hostile", FIXTURE("t_hostile"), default_lockdown(UID_BASE + 20), NULL, 5000);
    sandbox_pool *bystander = start_bystander(&h, UID_BASE + 21);
    wait_state(&h, SANDBOX_READY);
    static const char *const actions[] = {"exec_sh", "fork_bomb", "ptrace_parent", "signal_parent"};
    for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++) {
        expect_killed(&h, actions[i], "{}", "killed by the seccomp filter (syscall not allowed)");
        bystander_serves(&h, bystander);
    }
    /* threads are allowed (clone with CLONE_THREAD) */
    call_rec r;
    call_pool(&h, h.pool, "thread", "{}", 0, &r);
    assert_int_equal(result_int(&r, "errno"), 0);
    assert_int_equal(result_int(&r, "value"), 42);
    rec_clear(&r);
    sandbox_snapshot s = snap(&h);
    assert_int_equal(s.restarts, 4);
    json_decref(s.descriptor);
    sandbox_pool_free(bystander);
    stop_pool(&h);
}

/* Landlock alone (seccomp off) still stops exec, ptrace and signals to the daemon. */
static void test_landlock_alone_stops_exec_and_signals(void **state)
{
    (void)state;
    int abi = kernel_abi();
    if (abi <= 0) {
        print_message("the kernel has no Landlock: skipped\n");
        skip();
    }
    harness h;
    call_rec r;
    sandbox_lockdown ld = default_lockdown(UID_BASE + 25);
    ld.no_seccomp = 1;
    start_with(&h, "ll_only", FIXTURE("t_hostile"), ld, NULL, 5000);
    wait_state(&h, SANDBOX_READY);
    call_pool(&h, h.pool, "exec_sh", "{}", 0, &r);
    assert_int_equal(result_int(&r, "errno"), EACCES);
    rec_clear(&r);
    call_pool(&h, h.pool, "ptrace_parent", "{}", 0, &r);
    long e = result_int(&r, "errno");
    assert_true(e == EPERM || e == EACCES);
    rec_clear(&r);
    if (abi >= 6 || is_root()) {
        /* scoped signals (ABI 6), or another uid */
        call_pool(&h, h.pool, "signal_parent", "{}", 0, &r);
        assert_int_equal(result_int(&r, "errno"), EPERM);
        rec_clear(&r);
    } else {
        print_message("Landlock ABI %d < 6 and not root: signal test skipped\n", abi);
    }
    stop_pool(&h);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static void expect_no_access(harness *h, const char *path)
{
    char input[600];
    call_rec r;
    snprintf(input, sizeof input, "{\"path\":\"%s\"}", path);
    call_pool(h, h->pool, "read_file", input, 0, &r);
    assert_int_equal(result_int(&r, "opened"), 0);
    long e = result_int(&r, "errno");
    if (e != EACCES && e != EPERM)
        fail_msg("read_file %s: errno %ld, expected EACCES or EPERM", path, e);
    rec_clear(&r);
}

static void test_hostile_files(void **state)
{
    (void)state;
    int abi = kernel_abi();
    if (abi <= 0 && !is_root()) {
        print_message("no Landlock and not root: nothing hides the files; skipped\n");
        skip();
    }
    harness h;
    call_rec r;
    char vault_dir[64], key_file[128], victim_file[512], path[512];
    snprintf(vault_dir, sizeof vault_dir, "/tmp/aiorun-vault-XXXXXX");
    assert_non_null(mkdtemp(vault_dir));
    snprintf(key_file, sizeof key_file, "%s/vault.key", vault_dir);
    write_file(key_file, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", 0600);

    start_with(&h, "hostile_fs", FIXTURE("t_hostile"), default_lockdown(UID_BASE + 30), NULL, 5000);
    sandbox_pool *bystander = start_bystander(&h, UID_BASE + 31);
    wait_state(&h, SANDBOX_READY);
    assert_true(run_until(&h, pred_pool_ready, bystander));
    /* the other connector's working directory, with something private in it */
    snprintf(victim_file, sizeof victim_file, "%s/%ld/work/bystander/private.txt",
             test_runtime_dir(), (long)getpid());
    write_file(victim_file, "mine", 0600);

    expect_no_access(&h, key_file);
    expect_no_access(&h, victim_file);
    snprintf(path, sizeof path, "/proc/%ld/mem", (long)getpid());
    expect_no_access(&h, path);
    snprintf(path, sizeof path, "/proc/%ld/environ", (long)getpid());
    expect_no_access(&h, path);
    /* its own working directory is its current directory, and writable */
    call_pool(&h, h.pool, "cwd", "{}", 0, &r);
    assert_true(r.ok);
    snprintf(path, sizeof path, "%s/%ld/work/hostile_fs", test_runtime_dir(), (long)getpid());
    json_t *v = json_loads(r.result, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(v, "cwd")), path);
    json_decref(v);
    rec_clear(&r);
    call_pool(&h, h.pool, "write_file", "{\"path\":\"scratch.txt\"}", 0, &r);
    assert_int_equal(result_int(&r, "errno"), 0);
    rec_clear(&r);
    if (abi > 0) {
        snprintf(path, sizeof path, "{\"path\":\"%s/dropped.txt\"}", vault_dir);
        call_pool(&h, h.pool, "write_file", path, 0, &r);
        assert_int_equal(result_int(&r, "errno"), EACCES);
        rec_clear(&r);
    }
    bystander_serves(&h, bystander);
    sandbox_pool_free(bystander);
    stop_pool(&h);
    unlink(key_file);
    snprintf(path, sizeof path, "%s/dropped.txt", vault_dir);
    assert_int_equal(access(path, F_OK), -1);
    rmdir(vault_dir);
}

static void test_hostile_network(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    char input[64];
    int abi = kernel_abi();
    int allowed, allowed_fd = listen_local(&allowed);
    int other, other_fd = listen_local(&other);
    sandbox_lockdown ld = default_lockdown(UID_BASE + 40);
    ld.ports = &allowed;
    ld.n_ports = 1;
    start_with(&h, "hostile_net", FIXTURE("t_hostile"), ld, NULL, 5000);
    wait_state(&h, SANDBOX_READY);
    snprintf(input, sizeof input, "{\"port\":%d}", allowed);
    call_pool(&h, h.pool, "connect", input, 0, &r);
    assert_int_equal(result_int(&r, "errno"), 0);
    rec_clear(&r);
    snprintf(input, sizeof input, "{\"port\":%d}", other);
    call_pool(&h, h.pool, "connect", input, 0, &r);
    assert_int_equal(result_int(&r, "landlock_abi"), abi > 0 ? abi : 0);
    if (abi >= 4)
        assert_int_equal(result_int(&r, "errno"), EACCES);
    else
        print_message("Landlock ABI %d < 4: the port rule is skipped (errno %ld)\n", abi,
                      result_int(&r, "errno"));
    rec_clear(&r);
    snprintf(input, sizeof input, "{\"family\":%d}", AF_UNIX);
    call_pool(&h, h.pool, "socket", input, 0, &r);
    assert_int_equal(result_int(&r, "errno"), EACCES);
    rec_clear(&r);
    snprintf(input, sizeof input, "{\"family\":%d}", AF_NETLINK);
    call_pool(&h, h.pool, "socket", input, 0, &r);
    assert_int_equal(result_int(&r, "errno"), EAFNOSUPPORT);
    rec_clear(&r);
    snprintf(input, sizeof input, "{\"family\":%d}", AF_PACKET);
    call_pool(&h, h.pool, "socket", input, 0, &r);
    assert_int_equal(result_int(&r, "errno"), EAFNOSUPPORT);
    rec_clear(&r);
    stop_pool(&h);
    close(allowed_fd);
    close(other_fd);
}

static void test_hostile_memory_and_cpu(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    start_with(&h, "hostile_mem", FIXTURE("t_hostile"), default_lockdown(UID_BASE + 50), NULL, 5000);
    sandbox_pool *bystander = start_bystander(&h, UID_BASE + 51);
    wait_state(&h, SANDBOX_READY);
#ifndef AIORUN_SANITIZE
    /* far past RLIMIT_AS: malloc fails ... */
    call_pool(&h, h.pool, "alloc", "{\"mb\":2048}", 0, &r);
    assert_int_equal(result_int(&r, "allocated"), 0);
    assert_int_equal(result_int(&r, "errno"), ENOMEM);
    rec_clear(&r);
    /* ... and a plugin that aborts on it dies with a classified message */
    expect_killed(&h, "alloc", "{\"mb\":2048,\"abort_on_null\":true}", "SIGABRT");
    expect_killed(&h, "alloc", "{\"mb\":2048,\"abort_on_null\":true}",
                  "often out of memory under the address-space limit");
    bystander_serves(&h, bystander);
#else
    print_message("sanitizer build: no address-space limit, allocation tests skipped\n");
#endif
    /* an endless loop: killed at the call's deadline */
    call_pool(&h, h.pool, "spin", "{}", 300, &r);
    assert_false(r.ok);
    assert_int_equal(r.error_class, AIORUN_E_TIMEOUT);
    assert_contains(r.message, "did not answer within 300 ms");
    rec_clear(&r);
    bystander_serves(&h, bystander);
    call_pool(&h, h.pool, "alloc", "{\"mb\":1}", 0, &r);
    assert_int_equal(result_int(&r, "allocated"), 1);
    rec_clear(&r);
    sandbox_pool_free(bystander);
    stop_pool(&h);
}

static int pred_restarted(harness *h, void *arg)
{
    (void)arg;
    sandbox_snapshot s = snap(h);
    json_decref(s.descriptor);
    return s.restarts >= 1 && s.serving == 1;
}

/* RLIMIT_CPU counts a host's whole life: the pool replaces a process that has used most of it
 * while it is idle, before the limit could kill it in the middle of a call. */
static void test_cpu_use_recycles_an_idle_process(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    sandbox_pool_opts opts = {.connector = "burner", .plugin_path = FIXTURE("t_hostile"), .host_path = HOST_PATH,
                              .processes = 1, .timeout_ms = 10000, .lockdown = default_lockdown(UID_BASE + 60),
                              .cpu_recycle_s = 1};
    start_pool_opts(&h, &opts);
    wait_state(&h, SANDBOX_READY);
    call_pool(&h, h.pool, "burn", "{\"ms\":1200}", 0, &r);
    assert_true(r.ok);
    rec_clear(&r);
    assert_true(run_until(&h, pred_restarted, NULL));
    sandbox_snapshot s = snap(&h);
    assert_int_equal(s.state, SANDBOX_READY);
    json_decref(s.descriptor);
    call_pool(&h, h.pool, "burn", "{\"ms\":1}", 0, &r);
    assert_true(r.ok);
    rec_clear(&r);
    stop_pool(&h);
}

static void test_hostile_secrets(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    json_t *values = json_pack("{s:s}", "token", "s3cr3t-t0ken-42");
    test_secrets ts = {.values = values};
    start_with(&h, "hostile_sec", FIXTURE("t_hostile"), default_lockdown(UID_BASE + 60), &ts, 5000);
    sandbox_pool *bystander = start_bystander(&h, UID_BASE + 61);
    wait_state(&h, SANDBOX_READY);
    /* a secret of another connector (or none) is not there */
    call_pool(&h, h.pool, "other_secret", "{\"name\":\"bystander_token\"}", 0, &r);
    assert_int_equal(result_int(&r, "found"), 0);
    assert_int_equal(result_int(&r, "status"), AIORUN_E_NOT_FOUND);
    rec_clear(&r);
    /* its own, sent back in a result and a log line: redacted by the pool */
    int before = ts.calls;
    call_pool(&h, h.pool, "leak_secret", "{}", 0, &r);
    assert_true(r.ok);
    assert_string_equal(r.result, "{\"token\":\"[REDACTED]\",\"note\":\"the token is [REDACTED]!\"}");
    assert_null(strstr(r.result, "s3cr3t"));
    /* asked for the log line and the result, each */
    assert_true(ts.calls - before >= 2);
    rec_clear(&r);
    /* the secret's memory is read-only */
    expect_killed(&h, "write_secret", "{}", "during action write_secret");
    bystander_serves(&h, bystander);
    /* restarted, it has its secret again */
    call_pool(&h, h.pool, "other_secret", "{\"name\":\"token\"}", 0, &r);
    assert_int_equal(result_int(&r, "found"), 1);
    rec_clear(&r);
    sandbox_pool_free(bystander);
    stop_pool(&h);
    json_decref(values);
}

/* The plugin's constructor already ran confined: Landlock (and the uid) were in place before
 * dlopen. The probe file is ours and mode 0600; as root the host keeps root (no_uid), so only
 * Landlock can be what stops it. */
static void test_constructor_runs_confined(void **state)
{
    (void)state;
    int abi = kernel_abi();
    if (abi <= 0) {
        print_message("the kernel has no Landlock: skipped\n");
        skip();
    }
    harness h;
    call_rec r;
    write_file(PROBE_FILE, "probe", 0600);
    sandbox_lockdown ld = {.no_uid = 1};
    start_with(&h, "ctor_conn", FIXTURE("t_ctor"), ld, NULL, 5000);
    wait_state(&h, SANDBOX_READY);
    call_pool(&h, h.pool, "report", "{}", 0, &r);
    assert_int_equal(result_int(&r, "opened"), 0);
    assert_int_equal(result_int(&r, "errno"), EACCES);
    assert_int_equal(result_int(&r, "dumpable"), 0);
    assert_int_equal(result_int(&r, "no_new_privs"), 1);
    rec_clear(&r);
    stop_pool(&h);

    /* the same constructor with Landlock off opens it: the probe works */
    ld.no_landlock = 1;
    start_with(&h, "ctor_conn", FIXTURE("t_ctor"), ld, NULL, 5000);
    wait_state(&h, SANDBOX_READY);
    call_pool(&h, h.pool, "report", "{}", 0, &r);
    assert_int_equal(result_int(&r, "opened"), 1);
    rec_clear(&r);
    stop_pool(&h);

    if (is_root()) {
        /* with its own uid, the constructor already runs as that uid */
        start_with(&h, "ctor_conn", FIXTURE("t_ctor"), default_lockdown(UID_BASE + 70), NULL, 5000);
        wait_state(&h, SANDBOX_READY);
        call_pool(&h, h.pool, "report", "{}", 0, &r);
        assert_int_equal(result_int(&r, "uid"), UID_BASE + 70);
        assert_int_equal(result_int(&r, "opened"), 0);
        rec_clear(&r);
        stop_pool(&h);
    }
    unlink(PROBE_FILE);
}

/* As root: each connector runs as its own uid, from a root-owned copy of its plugin, in a
 * working directory it owns; all of it is gone when the pool is freed. */
static void test_uid_per_connector(void **state)
{
    (void)state;
    if (!is_root()) {
        print_message("not root: the uid switch is skipped\n");
        skip();
    }
    harness h;
    call_rec r;
    struct stat st;
    char copy[512], work[512];
    unsigned uid = UID_BASE + 80;
    start_with(&h, "hostile_uid", FIXTURE("t_hostile"), default_lockdown(uid), NULL, 5000);
    sandbox_pool *bystander = start_bystander(&h, UID_BASE + 81);
    wait_state(&h, SANDBOX_READY);
    call_pool(&h, h.pool, "whoami", "{}", 0, &r);
    assert_int_equal(result_int(&r, "uid"), uid);
    assert_int_equal(result_int(&r, "gid"), uid);
    /* RLIMIT_NPROC: room for its one process and its threads */
    assert_int_equal(result_int(&r, "nproc"), 16);
    rec_clear(&r);
    snprintf(copy, sizeof copy, "%s/%ld/hostile_uid.so", test_runtime_dir(), (long)getpid());
    snprintf(work, sizeof work, "%s/%ld/work/hostile_uid", test_runtime_dir(), (long)getpid());
    assert_int_equal(stat(copy, &st), 0);
    assert_int_equal(st.st_uid, 0);
    assert_int_equal(st.st_mode & 07777, 0444);
    assert_int_equal(stat(work, &st), 0);
    assert_int_equal(st.st_uid, uid);
    assert_int_equal(st.st_mode & 07777, 0700);
    /* it cannot change its own plugin */
    char input[600];
    snprintf(input, sizeof input, "{\"path\":\"%s\"}", copy);
    call_pool(&h, h.pool, "write_file", input, 0, &r);
    assert_int_equal(result_int(&r, "opened"), 0);
    rec_clear(&r);
    /* the bystander is another uid */
    call_pool(&h, bystander, "ok", "{}", 0, &r);
    assert_true(r.ok);
    rec_clear(&r);
    call_pool(&h, h.pool, "write_file", "{\"path\":\"left-behind.txt\"}", 0, &r);
    assert_int_equal(result_int(&r, "errno"), 0);
    rec_clear(&r);
    sandbox_pool_free(bystander);
    stop_pool(&h);
    assert_int_equal(stat(copy, &st), -1);
    assert_int_equal(stat(work, &st), -1);
}

/* Without a uid switch there is no copy; the working directory is still private and goes with
 * the pool. */
static void test_workdir_without_uid(void **state)
{
    (void)state;
    harness h;
    call_rec r;
    struct stat st;
    char copy[512], work[512];
    sandbox_lockdown ld = {.no_uid = 1};
    start_with(&h, "plain_conn", FIXTURE("t_hostile"), ld, NULL, 5000);
    wait_state(&h, SANDBOX_READY);
    snprintf(copy, sizeof copy, "%s/%ld/plain_conn.so", test_runtime_dir(), (long)getpid());
    snprintf(work, sizeof work, "%s/%ld/work/plain_conn", test_runtime_dir(), (long)getpid());
    assert_int_equal(stat(copy, &st), -1);
    assert_int_equal(stat(work, &st), 0);
    assert_int_equal(st.st_uid, geteuid());
    assert_int_equal(st.st_mode & 07777, 0700);
    call_pool(&h, h.pool, "whoami", "{}", 0, &r);
    assert_int_equal(result_int(&r, "uid"), (long)getuid());
    rec_clear(&r);
    stop_pool(&h);
    assert_int_equal(stat(work, &st), -1);
}

/* What a daemon killed before it could clean up left behind (a <pid> directory of a process
 * that is gone) is removed by the next pool; a live process's directory is kept. */
static void test_stale_runtime_dirs_are_swept(void **state)
{
    (void)state;
    harness h;
    char dead[512], live[512], file[600];
    struct stat st;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    snprintf(dead, sizeof dead, "%s/%ld", test_runtime_dir(), (long)pid);
    snprintf(live, sizeof live, "%s/%ld", test_runtime_dir(), (long)getppid());
    assert_int_equal(mkdir(dead, 0755), 0);
    snprintf(file, sizeof file, "%s/work", dead);
    assert_int_equal(mkdir(file, 0755), 0);
    snprintf(file, sizeof file, "%s/work/left.txt", dead);
    write_file(file, "stale", 0600);
    assert_int_equal(mkdir(live, 0755), 0);
    start_with(&h, "sweeper", FIXTURE("t_ok"), (sandbox_lockdown){.no_uid = 1}, NULL, 5000);
    assert_int_equal(stat(dead, &st), -1);
    assert_int_equal(stat(live, &st), 0);
    rmdir(live);
    stop_pool(&h);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_report_json),
    cmocka_unit_test(test_rlimits_in_child),
    cmocka_unit_test(test_uid_drop_in_child),
    cmocka_unit_test(test_landlock_in_child),
    cmocka_unit_test(test_seccomp_in_child),
    cmocka_unit_test(test_hello_sandbox_report),
    cmocka_unit_test(test_layers_off_are_reported),
    cmocka_unit_test(test_hostile_processes_are_killed),
    cmocka_unit_test(test_landlock_alone_stops_exec_and_signals),
    cmocka_unit_test(test_hostile_files),
    cmocka_unit_test(test_hostile_network),
    cmocka_unit_test(test_hostile_memory_and_cpu),
    cmocka_unit_test(test_cpu_use_recycles_an_idle_process),
    cmocka_unit_test(test_hostile_secrets),
    cmocka_unit_test(test_constructor_runs_confined),
    cmocka_unit_test(test_uid_per_connector),
    cmocka_unit_test(test_workdir_without_uid),
    cmocka_unit_test(test_stale_runtime_dirs_are_swept),
};

AR_TEST_MAIN(tests, NULL, NULL)
