/*
 * lockdown.h - the layers with which the sandbox host (aiorun-host) confines itself before it
 * loads a plugin: resource limits, the connector's own uid/gid, non-dumpable and
 * no_new_privs, Landlock (files, TCP ports, signal and abstract-socket scoping) and a seccomp
 * allowlist. Why each layer exists and in which order they go is ../shared/SANDBOX.md;
 * host_main.c calls the steps in that order, and sdk/README.md tells plugin authors what is
 * left for them.
 *
 * Each step acts on the calling process, and records what it applied in a lockdown_report,
 * which lockdown_report_json turns into the "sandbox" object of HELLO. Landlock confines only
 * the calling thread and the threads it creates later: call lockdown_landlock while the
 * process is single-threaded. The seccomp filter is synchronised to every thread (TSYNC).
 *
 * Nothing here can be undone: test it in a forked child. Linux only; the Landlock ABI 3+
 * constants are defined in lockdown.c because the installed kernel headers may predate them.
 */
#ifndef LOCKDOWN_H
#define LOCKDOWN_H

#include <stddef.h>
#include <jansson.h>

#include "ar.h"

/* Address space: room for libcurl's threads, OpenSSL and results of several MiB. */
#define LOCKDOWN_RLIMIT_AS (512ull * 1024 * 1024)
#define LOCKDOWN_RLIMIT_NOFILE 64
/* CPU seconds over the whole life of the process: a ceiling against runaway loops only (the
 * per-call deadline is the daemon's wall-clock timer). The soft limit sends SIGXCPU, the hard
 * one a little later SIGKILL. */
#define LOCKDOWN_RLIMIT_CPU_S (4 * 3600)
#define LOCKDOWN_RLIMIT_CPU_GRACE_S 30
/* Processes and threads of the connector's uid, system-wide (all of its host processes count):
 * the least given to a connector, which the daemon raises with its number of processes. At
 * least 2 per process: curl's resolver is a thread. Only set after a uid drop (a shared uid
 * would count the daemon's threads too). */
#define LOCKDOWN_RLIMIT_NPROC 16

typedef enum lockdown_uid_state {
    LOCKDOWN_UID_OFF = 0,      /* not switched (layer off, or no uid given) */
    LOCKDOWN_UID_SHARED = 1,   /* not root: the plugin runs with the daemon's uid */
    LOCKDOWN_UID_DROPPED = 2   /* switched to the connector's own uid and gid */
} lockdown_uid_state;

typedef enum lockdown_landlock_state {
    LOCKDOWN_LANDLOCK_OFF = 0,         /* switched off */
    LOCKDOWN_LANDLOCK_UNAVAILABLE = 1, /* the kernel has none (see why) */
    LOCKDOWN_LANDLOCK_ON = 2
} lockdown_landlock_state;

typedef struct lockdown_report {
    int rlimits;                 /* 1: the limits above were applied */
    lockdown_uid_state uid_state;
    unsigned uid;                /* with LOCKDOWN_UID_DROPPED */
    int no_new_privs;            /* 1 once set */
    int dumpable;                /* 0 once cleared (starts at 1) */
    lockdown_landlock_state landlock;
    char landlock_why[160];      /* with LOCKDOWN_LANDLOCK_UNAVAILABLE */
    int landlock_abi;            /* with LOCKDOWN_LANDLOCK_ON */
    int landlock_fs, landlock_net, landlock_scoped;   /* which parts the ABI allowed */
    int seccomp;                 /* 1: the allowlist is loaded */
} lockdown_report;

/* Nothing applied yet (dumpable 1). */
void lockdown_report_init(lockdown_report *r);

/* {"rlimits": "on"|"off", "uid": <number>|"off"|"shared: the daemon is not root",
 *  "no_new_privs": bool, "dumpable": bool,
 *  "landlock": {"abi": n, "fs": bool, "net": bool, "scoped": bool} | "off" | "unavailable: why",
 *  "seccomp": "on"|"off"}. A new reference (NULL when out of memory). */
json_t *lockdown_report_json(const lockdown_report *r);

/* Lower (never raise) RLIMIT_NOFILE, CORE (0), CPU and, when address_space, AS to the values
 * above (sanitizer builds pass 0: their shadow memory needs terabytes of address space). */
int lockdown_rlimits(int address_space, lockdown_report *r, ar_error *err);

/* Switch to uid/gid (setgroups(0), setresgid, setresuid) and set RLIMIT_NPROC to nproc (0:
 * LOCKDOWN_RLIMIT_NPROC). Only as root: otherwise nothing changes and the report says
 * "shared". uid and gid must not be 0. */
int lockdown_drop_uid(unsigned uid, unsigned gid, unsigned nproc, lockdown_report *r, ar_error *err);

/* PR_SET_DUMPABLE 0, then PR_SET_NO_NEW_PRIVS 1. */
int lockdown_no_privs(lockdown_report *r, ar_error *err);

/* The kernel's Landlock ABI version (> 0), or 0 with *why saying why there is none. */
int lockdown_landlock_abi(char *why, size_t cap);

typedef struct lockdown_landlock_opts {
    const char *plugin_path;        /* read + execute (required) */
    const char *workdir;            /* read-write beneath it; NULL: none */
    const int *ports;               /* TCP ports connect() may reach (ABI >= 4); n_ports 0: none */
    size_t n_ports;
    const char *const *extra_read;  /* NULL-terminated list of more read-only paths, or NULL */
} lockdown_landlock_opts;

/* Restrict the calling thread (and what it creates later) to: read+execute of the plugin file
 * and the shared library directories; read of the CA and resolver files; read-write beneath
 * workdir; TCP connect to the listed ports only, no TCP bind (ABI >= 4); no signals to and no
 * abstract unix sockets of processes outside the sandbox (ABI >= 6). Needs no_new_privs (or
 * CAP_SYS_ADMIN). A kernel without Landlock is not an error: the report says "unavailable".
 * A failing rule for the plugin or workdir, or a failing restrict, is. */
int lockdown_landlock(const lockdown_landlock_opts *o, lockdown_report *r, ar_error *err);

/* Load the seccomp allowlist (default: kill the process; see sdk/README.md for the list and
 * the argument rules), synchronised to every thread. Needs no_new_privs. tgkill is only
 * allowed towards the calling process. */
int lockdown_seccomp(lockdown_report *r, ar_error *err);

#endif
