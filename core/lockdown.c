/* lockdown.c - the sandbox host's confinement layers (see lockdown.h and ../shared/SANDBOX.md). */
#include "lockdown.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <seccomp.h>

/* ---- Landlock ABI, defined here: the installed <linux/landlock.h> may only know ABI 1-2 ---- */

#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1
#define LL_RULE_NET_PORT 2

#define LL_FS_EXECUTE (1ULL << 0)
#define LL_FS_WRITE_FILE (1ULL << 1)
#define LL_FS_READ_FILE (1ULL << 2)
#define LL_FS_READ_DIR (1ULL << 3)
#define LL_FS_REMOVE_DIR (1ULL << 4)
#define LL_FS_REMOVE_FILE (1ULL << 5)
#define LL_FS_MAKE_CHAR (1ULL << 6)
#define LL_FS_MAKE_DIR (1ULL << 7)
#define LL_FS_MAKE_REG (1ULL << 8)
#define LL_FS_MAKE_SOCK (1ULL << 9)
#define LL_FS_MAKE_FIFO (1ULL << 10)
#define LL_FS_MAKE_BLOCK (1ULL << 11)
#define LL_FS_MAKE_SYM (1ULL << 12)
#define LL_FS_REFER (1ULL << 13)      /* ABI 2 */
#define LL_FS_TRUNCATE (1ULL << 14)   /* ABI 3 */
#define LL_FS_IOCTL_DEV (1ULL << 15)  /* ABI 5 */

#define LL_NET_BIND_TCP (1ULL << 0)   /* ABI 4 */
#define LL_NET_CONNECT_TCP (1ULL << 1)

#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)  /* ABI 6 */
#define LL_SCOPE_SIGNAL (1ULL << 1)

struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;   /* ABI 4 */
    uint64_t scoped;               /* ABI 6 */
};

struct ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

struct ll_net_port_attr {
    uint64_t allowed_access;
    uint64_t port;
};

/* Rights that apply to a file (anything else on a file rule is EINVAL). */
#define LL_FILE_RIGHTS (LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE | \
                        LL_FS_IOCTL_DEV)
#define LL_READ (LL_FS_READ_FILE | LL_FS_READ_DIR)
#define LL_READ_EXEC (LL_READ | LL_FS_EXECUTE)
/* The working directory: files and directories may be made, changed and removed; no devices,
 * sockets or fifos, nothing executed. */
#define LL_WORKDIR (LL_READ | LL_FS_WRITE_FILE | LL_FS_REMOVE_DIR | LL_FS_REMOVE_FILE | \
                    LL_FS_MAKE_DIR | LL_FS_MAKE_REG | LL_FS_MAKE_SYM | LL_FS_REFER |      \
                    LL_FS_TRUNCATE)

/* The loader and libraries: read and map executable (dlopen of NSS modules happens late). */
static const char *const library_dirs[] = {
    "/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache", NULL,
};

/* What libcurl, OpenSSL and the resolver read. */
static const char *const read_only_paths[] = {
    "/etc/ssl", "/usr/share/ca-certificates", "/usr/lib/ssl", "/etc/hosts", "/etc/resolv.conf",
    "/etc/nsswitch.conf", "/etc/host.conf", "/etc/localtime", "/etc/gai.conf",
    "/dev/urandom", "/dev/random", NULL,
};

/* ---- report ---- */

void lockdown_report_init(lockdown_report *r)
{
    memset(r, 0, sizeof *r);
    r->dumpable = 1;
}

json_t *lockdown_report_json(const lockdown_report *r)
{
    json_t *uid, *landlock;
    char text[200];

    switch (r->uid_state) {
    case LOCKDOWN_UID_DROPPED: uid = json_integer(r->uid); break;
    case LOCKDOWN_UID_SHARED: uid = json_string("shared: the daemon is not root"); break;
    case LOCKDOWN_UID_OFF:
    default: uid = json_string("off"); break;
    }
    switch (r->landlock) {
    case LOCKDOWN_LANDLOCK_ON:
        landlock = json_pack("{s:i, s:b, s:b, s:b}", "abi", r->landlock_abi, "fs", r->landlock_fs,
                             "net", r->landlock_net, "scoped", r->landlock_scoped);
        break;
    case LOCKDOWN_LANDLOCK_UNAVAILABLE:
        snprintf(text, sizeof text, "unavailable: %s", r->landlock_why);
        landlock = json_string(text);
        break;
    case LOCKDOWN_LANDLOCK_OFF:
    default:
        landlock = json_string("off");
        break;
    }
    /* "o" steals the references, also when packing fails */
    return json_pack("{s:s, s:o, s:b, s:b, s:o, s:s}", "rlimits", r->rlimits ? "on" : "off",
                     "uid", uid, "no_new_privs", r->no_new_privs, "dumpable", r->dumpable,
                     "landlock", landlock, "seccomp", r->seccomp ? "on" : "off");
}

/* ---- rlimits, uid, prctl ---- */

/* Lower (never raise: the daemon may lack CAP_SYS_RESOURCE) a limit to soft/hard. */
static int lower_rlimit(int resource, const char *name, rlim_t soft, rlim_t hard, ar_error *err)
{
    struct rlimit cur;
    if (getrlimit(resource, &cur) != 0)
        return ar_error_set(err, AR_E_IO, "rlimit_failed", "getrlimit(%s): %s", name, strerror(errno));
    if (cur.rlim_max != RLIM_INFINITY && hard > cur.rlim_max)
        hard = cur.rlim_max;
    if (soft > hard)
        soft = hard;
    struct rlimit want = {.rlim_cur = soft, .rlim_max = hard};
    if (setrlimit(resource, &want) != 0)
        return ar_error_set(err, AR_E_IO, "rlimit_failed", "setrlimit(%s): %s", name, strerror(errno));
    return AR_OK;
}

int lockdown_rlimits(int address_space, lockdown_report *r, ar_error *err)
{
    int rc;
    if (address_space &&
        (rc = lower_rlimit(RLIMIT_AS, "RLIMIT_AS", LOCKDOWN_RLIMIT_AS, LOCKDOWN_RLIMIT_AS, err)) != AR_OK)
        return rc;
    if ((rc = lower_rlimit(RLIMIT_NOFILE, "RLIMIT_NOFILE", LOCKDOWN_RLIMIT_NOFILE,
                           LOCKDOWN_RLIMIT_NOFILE, err)) != AR_OK ||
        (rc = lower_rlimit(RLIMIT_CORE, "RLIMIT_CORE", 0, 0, err)) != AR_OK ||
        (rc = lower_rlimit(RLIMIT_CPU, "RLIMIT_CPU", LOCKDOWN_RLIMIT_CPU_S,
                           LOCKDOWN_RLIMIT_CPU_S + LOCKDOWN_RLIMIT_CPU_GRACE_S, err)) != AR_OK)
        return rc;
    r->rlimits = 1;
    return AR_OK;
}

int lockdown_drop_uid(unsigned uid, unsigned gid, unsigned nproc, lockdown_report *r, ar_error *err)
{
    if (geteuid() != 0) {
        r->uid_state = LOCKDOWN_UID_SHARED;
        return AR_OK;
    }
    if (uid == 0 || gid == 0)
        return ar_error_set(err, AR_E_INVALID, "uid_failed", "the connector's uid and gid must not be 0");
    /* groups first, then gid, then uid: after setresuid we could no longer change the others */
    if (setgroups(0, NULL) != 0)
        return ar_error_set(err, AR_E_IO, "uid_failed", "setgroups(0): %s", strerror(errno));
    if (setresgid(gid, gid, gid) != 0)
        return ar_error_set(err, AR_E_IO, "uid_failed", "setresgid(%u): %s", gid, strerror(errno));
    if (setresuid(uid, uid, uid) != 0)
        return ar_error_set(err, AR_E_IO, "uid_failed", "setresuid(%u): %s", uid, strerror(errno));
    /* a partial switch would be worse than none */
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0 || ru != uid || eu != uid ||
        su != uid || rg != gid || eg != gid || sg != gid)
        return ar_error_set(err, AR_E_IO, "uid_failed", "the switch to uid %u gid %u did not take", uid, gid);
    rlim_t limit = nproc ? nproc : LOCKDOWN_RLIMIT_NPROC;
    int rc = lower_rlimit(RLIMIT_NPROC, "RLIMIT_NPROC", limit, limit, err);
    if (rc != AR_OK)
        return rc;
    r->uid_state = LOCKDOWN_UID_DROPPED;
    r->uid = uid;
    return AR_OK;
}

int lockdown_no_privs(lockdown_report *r, ar_error *err)
{
    /* nobody of our uid may ptrace us or read our memory (setresuid from root cleared it
     * already, but not when the uid stays the same) */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return ar_error_set(err, AR_E_IO, "prctl_failed", "prctl(PR_SET_DUMPABLE): %s", strerror(errno));
    r->dumpable = 0;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return ar_error_set(err, AR_E_IO, "prctl_failed", "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(errno));
    r->no_new_privs = 1;
    return AR_OK;
}

/* ---- Landlock ---- */

int lockdown_landlock_abi(char *why, size_t cap)
{
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    if (abi > 0)
        return (int)abi;
    int e = errno;
    if (e == ENOSYS)
        snprintf(why, cap, "the kernel has no Landlock (ENOSYS)");
    else if (e == EOPNOTSUPP)
        snprintf(why, cap, "Landlock is disabled at boot (EOPNOTSUPP; add landlock to lsm=)");
    else
        snprintf(why, cap, "landlock_create_ruleset: %s", strerror(e));
    return 0;
}

/* Allow `access` (masked to what the ruleset handles, and to file rights on a file) beneath
 * path. 0 on success, else the errno (ENOENT when the path does not exist). */
static int add_path_rule(int ruleset, const char *path, uint64_t access, uint64_t handled)
{
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    struct ll_path_beneath_attr pb = {.allowed_access = access & handled, .parent_fd = fd};
    if (!S_ISDIR(st.st_mode))
        pb.allowed_access &= LL_FILE_RIGHTS;
    int rc = 0;
    if (pb.allowed_access &&
        syscall(SYS_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &pb, 0) != 0)
        rc = errno;
    close(fd);
    return rc;
}

/* Rules for a list of optional paths: a missing one is skipped. */
static int add_optional_rules(int ruleset, const char *const *paths, uint64_t access,
                              uint64_t handled, ar_error *err)
{
    for (size_t i = 0; paths && paths[i]; i++) {
        int e = add_path_rule(ruleset, paths[i], access, handled);
        if (e != 0 && e != ENOENT && e != EACCES && e != ENOTDIR)
            return ar_error_set(err, AR_E_IO, "landlock_failed", "Landlock rule for %s: %s",
                                paths[i], strerror(e));
    }
    return AR_OK;
}

int lockdown_landlock(const lockdown_landlock_opts *o, lockdown_report *r, ar_error *err)
{
    char why[128];
    int abi = lockdown_landlock_abi(why, sizeof why);
    if (abi <= 0) {
        r->landlock = LOCKDOWN_LANDLOCK_UNAVAILABLE;
        snprintf(r->landlock_why, sizeof r->landlock_why, "%s", why);
        return AR_OK;
    }
    if (!o || !o->plugin_path)
        return ar_error_set(err, AR_E_INVALID, "landlock_failed", "Landlock needs the plugin path");

    /* Best effort by ABI (the pattern of the kernel's documentation): handle every right this
     * kernel knows, so that whatever is not granted below is denied. */
    struct ll_ruleset_attr attr = {
        .handled_access_fs = LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_READ_DIR |
                             LL_FS_REMOVE_DIR | LL_FS_REMOVE_FILE | LL_FS_MAKE_CHAR |
                             LL_FS_MAKE_DIR | LL_FS_MAKE_REG | LL_FS_MAKE_SOCK | LL_FS_MAKE_FIFO |
                             LL_FS_MAKE_BLOCK | LL_FS_MAKE_SYM,
    };
    size_t attr_size = offsetof(struct ll_ruleset_attr, handled_access_net);
    if (abi >= 2)
        attr.handled_access_fs |= LL_FS_REFER;
    if (abi >= 3)
        attr.handled_access_fs |= LL_FS_TRUNCATE;
    if (abi >= 5)
        attr.handled_access_fs |= LL_FS_IOCTL_DEV;
    if (abi >= 4) {
        attr.handled_access_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP;
        attr_size = offsetof(struct ll_ruleset_attr, scoped);
    }
    if (abi >= 6) {
        attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
        attr_size = sizeof attr;
    }
    uint64_t fs = attr.handled_access_fs;

    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0);
    if (ruleset < 0)
        return ar_error_set(err, AR_E_IO, "landlock_failed", "landlock_create_ruleset (ABI %d): %s",
                            abi, strerror(errno));
    int rc = AR_OK, e;
    if ((e = add_path_rule(ruleset, o->plugin_path, LL_FS_READ_FILE | LL_FS_EXECUTE, fs)) != 0) {
        rc = ar_error_set(err, AR_E_IO, "landlock_failed", "Landlock rule for the plugin %s: %s",
                          o->plugin_path, strerror(e));
        goto done;
    }
    if (o->workdir && (e = add_path_rule(ruleset, o->workdir, LL_WORKDIR, fs)) != 0) {
        rc = ar_error_set(err, AR_E_IO, "landlock_failed",
                          "Landlock rule for the working directory %s: %s", o->workdir, strerror(e));
        goto done;
    }
    if ((rc = add_optional_rules(ruleset, library_dirs, LL_READ_EXEC, fs, err)) != AR_OK ||
        (rc = add_optional_rules(ruleset, read_only_paths, LL_READ, fs, err)) != AR_OK ||
        (rc = add_optional_rules(ruleset, o->extra_read, LL_READ, fs, err)) != AR_OK)
        goto done;
    /* /dev/null: the usual place to throw output away */
    add_path_rule(ruleset, "/dev/null", LL_FS_READ_FILE | LL_FS_WRITE_FILE, fs);
    if (abi >= 4) {
        for (size_t i = 0; i < o->n_ports; i++) {
            struct ll_net_port_attr np = {.allowed_access = LL_NET_CONNECT_TCP,
                                          .port = (uint64_t)o->ports[i]};
            if (o->ports[i] < 0 || o->ports[i] > 65535 ||
                syscall(SYS_landlock_add_rule, ruleset, LL_RULE_NET_PORT, &np, 0) != 0) {
                rc = ar_error_set(err, AR_E_IO, "landlock_failed", "Landlock rule for TCP port %d: %s",
                                  o->ports[i], o->ports[i] < 0 || o->ports[i] > 65535
                                                   ? "not a port" : strerror(errno));
                goto done;
            }
        }
    }
    if (syscall(SYS_landlock_restrict_self, ruleset, 0) != 0) {
        rc = ar_error_set(err, AR_E_IO, "landlock_failed", "landlock_restrict_self: %s%s",
                          strerror(errno), errno == EPERM ? " (no_new_privs is not set)" : "");
        goto done;
    }
    r->landlock = LOCKDOWN_LANDLOCK_ON;
    r->landlock_abi = abi;
    r->landlock_fs = 1;
    r->landlock_net = abi >= 4;
    r->landlock_scoped = abi >= 6;
done:
    close(ruleset);
    return rc;
}

/* ---- seccomp ---- */

/*
 * Allowed without conditions. Names, resolved for the architecture at hand: one that does not
 * exist there (e.g. "open" on aarch64) is skipped. Everything else kills the process, apart
 * from the argument rules in lockdown_seccomp. What a plugin needs, found with strace on the
 * host running libcurl (IP, hostname and HTTPS, bodies of several MiB), glibc's resolver,
 * OpenSSL and libsodium, then checked by removing entries (../shared/SANDBOX.md, part 1).
 */
static const char *const allowed_syscalls[] = {
    /* files and descriptors (Landlock decides which paths) */
    "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "lseek", "open", "openat",
    "newfstatat", "fstat", "stat", "lstat", "statx", "access", "faccessat", "faccessat2",
    "fcntl", "dup", "dup2", "dup3", "pipe", "pipe2", "getdents64", "readlink", "readlinkat",
    "getcwd", "mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
    "renameat2", "ftruncate", "fsync", "fdatasync",
    /* memory (mremap: glibc realloc of large blocks; mlock: sodium_malloc) */
    "mmap", "mprotect", "munmap", "mremap", "brk", "madvise", "mlock", "munlock", "mlock2",
    /* signals (tgkill has an argument rule below) */
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
    /* process and thread facts */
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
    "getresgid", "getgroups", "uname", "sysinfo", "prlimit64", "getrlimit", "getrusage",
    "sched_getaffinity", "sched_yield",
    /* network: socket has an argument rule below; Landlock decides TCP ports */
    "connect", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    "getsockname", "getpeername", "setsockopt", "getsockopt", "shutdown", "socketpair",
    /* waiting */
    "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "futex", "nanosleep", "clock_nanosleep",
    /* time, randomness */
    "clock_gettime", "clock_getres", "gettimeofday", "time", "getrandom",
    /* threads: clone has an argument rule below */
    "exit", "exit_group", "set_robust_list", "get_robust_list", "rseq", "set_tid_address",
    NULL,
};

static int rule(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned n,
                const struct scmp_arg_cmp *args, ar_error *err)
{
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR)
        return AR_OK; /* not a system call of this architecture */
    int rc = seccomp_rule_add_array(ctx, action, nr, n, args);
    if (rc != 0)
        return ar_error_set(err, AR_E_IO, "seccomp_failed", "seccomp rule for %s: %s", name,
                            strerror(-rc));
    return AR_OK;
}

int lockdown_seccomp(lockdown_report *r, ar_error *err)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx)
        return ar_error_set(err, AR_E_IO, "seccomp_failed", "seccomp_init failed");
    int rc = AR_OK, e;
    /* a foreign architecture's system calls (int 0x80 on x86_64) are not allowed either;
     * TSYNC: threads the plugin's constructors may have started get the filter too */
    if ((e = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) != 0 ||
        (e = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) != 0) {
        rc = ar_error_set(err, AR_E_IO, "seccomp_failed", "seccomp_attr_set: %s", strerror(-e));
        goto done;
    }
    for (size_t i = 0; allowed_syscalls[i]; i++)
        if ((rc = rule(ctx, SCMP_ACT_ALLOW, allowed_syscalls[i], 0, NULL, err)) != AR_OK)
            goto done;

    /* socket: IPv4 and IPv6 only. AF_UNIX fails with EACCES (glibc tries nscd's socket and
     * copes), every other family with EAFNOSUPPORT; no rule leaves a family to the default. */
    struct scmp_arg_cmp a;
    a = SCMP_A0(SCMP_CMP_EQ, AF_INET);
    if ((rc = rule(ctx, SCMP_ACT_ALLOW, "socket", 1, &a, err)) != AR_OK)
        goto done;
    a = SCMP_A0(SCMP_CMP_EQ, AF_INET6);
    if ((rc = rule(ctx, SCMP_ACT_ALLOW, "socket", 1, &a, err)) != AR_OK)
        goto done;
    a = SCMP_A0(SCMP_CMP_EQ, AF_UNIX);
    if ((rc = rule(ctx, SCMP_ACT_ERRNO(EACCES), "socket", 1, &a, err)) != AR_OK)
        goto done;
    for (int family = 0; family < AF_INET6; family++) {
        if (family == AF_UNIX || family == AF_INET)
            continue;
        a = SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)family);
        if ((rc = rule(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), "socket", 1, &a, err)) != AR_OK)
            goto done;
    }
    a = SCMP_A0(SCMP_CMP_GT, AF_INET6);
    if ((rc = rule(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), "socket", 1, &a, err)) != AR_OK)
        goto done;

    /* clone: threads only (CLONE_THREAD, and none of the namespace flags); a fork-style clone
     * kills. clone3 passes its flags in memory the filter cannot read: ENOSYS, and glibc falls
     * back to clone. */
    a = SCMP_A0(SCMP_CMP_MASKED_EQ,
                CLONE_THREAD | CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID |
                    CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP,
                CLONE_THREAD);
    if ((rc = rule(ctx, SCMP_ACT_ALLOW, "clone", 1, &a, err)) != AR_OK ||
        (rc = rule(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL, err)) != AR_OK)
        goto done;

    /* tgkill: abort() and raise() signal their own process; nothing else */
    a = SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)getpid());
    if ((rc = rule(ctx, SCMP_ACT_ALLOW, "tgkill", 1, &a, err)) != AR_OK)
        goto done;

    /* ioctl: nothing needs one; isatty() asks, and "not a terminal" is the right answer */
    if ((rc = rule(ctx, SCMP_ACT_ERRNO(ENOTTY), "ioctl", 0, NULL, err)) != AR_OK)
        goto done;

    /* prctl: only naming threads and asking; PR_SET_DUMPABLE and the rest kill */
    static const int prctl_ok[] = {PR_SET_NAME, PR_GET_NAME, PR_GET_DUMPABLE, PR_GET_NO_NEW_PRIVS,
                                   PR_GET_SECCOMP};
    for (size_t i = 0; i < sizeof prctl_ok / sizeof prctl_ok[0]; i++) {
        a = SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)prctl_ok[i]);
        if ((rc = rule(ctx, SCMP_ACT_ALLOW, "prctl", 1, &a, err)) != AR_OK)
            goto done;
    }

    if ((e = seccomp_load(ctx)) != 0) {
        rc = ar_error_set(err, AR_E_IO, "seccomp_failed", "seccomp_load: %s%s", strerror(-e),
                          e == -EACCES ? " (no_new_privs is not set)" : "");
        goto done;
    }
    r->seccomp = 1;
done:
    seccomp_release(ctx);
    return rc;
}
