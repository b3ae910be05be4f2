/* daemon.c - start-up, the runtime struct, and an orderly stop (see daemon.h). */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <aiorun/version.h>

#include "api.h"
#include "auth.h"
#include "config.h"
#include "audit.h"
#include "counters.h"
#include "journal.h"
#include "policy.h"
#include "retention.h"
#include "scheduler.h"
#include "vault.h"

/* Everything the daemon keeps alive, in start order. */
typedef struct runtime {
    int lock_fd;          /* holds the exclusive lock on <data_dir>/daemon.lock */
    pthread_t watcher;    /* reloads policies when their files change (policy_watch) */
    int watcher_started;
    int watcher_stop_fd;  /* an eventfd that ends the watcher */
    config *cfg;
    journal *journal;
    counters *counters;   /* guardrail counters, maintained by a journal hook */
    vault *vault;         /* connector secrets; the master key in guarded memory */
    auth *auth;
    autonomy *autonomy;
    policy_set *policies;
    api_server *api;
    scheduler *sched;
    retention_worker *retention; /* compacts old history on a thread of its own */
} runtime;

/* The sandbox host sits beside the daemon's own executable (<build>/bin or <prefix>/bin). */
static int find_host_binary(char *out, size_t cap, ar_error *err)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return ar_error_set(err, AR_E_IO, "host_missing", "cannot read /proc/self/exe");
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    if ((size_t)snprintf(out, cap, "%s/aiorun-host", self) >= cap)
        return ar_error_set(err, AR_E_IO, "host_missing", "path of the sandbox host is too long");
    if (access(out, X_OK) != 0)
        return ar_error_set(err, AR_E_IO, "host_missing", "sandbox host %s is missing or not executable; "
                            "rebuild (cmake --build) or reinstall aiorun", out);
    return AR_OK;
}

static int make_dir(const char *path, ar_error *err)
{
    if (mkdir(path, 0700) == 0 || access(path, W_OK) == 0)
        return AR_OK;
    return ar_error_set(err, AR_E_IO, "data_dir", "cannot create or write %s: %m", path);
}

/* One daemon per data directory: two schedulers on one journal could dispatch an action twice.
 * aioctl's offline commands do not take this lock: they only write through the journal. */
static int lock_data_dir(runtime *rt, const char *data_dir, ar_error *err)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/daemon.lock", data_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return ar_error_set(err, AR_E_IO, "data_dir", "cannot open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return ar_error_set(err, AR_E_BUSY, "data_dir_in_use", "another aiorun daemon is running on "
                                "data directory %s; stop it first, or give this one another data_dir", data_dir);
        return ar_error_set(err, AR_E_IO, "data_dir", "cannot lock %s: %s", path, strerror(e));
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || write(fd, pid, (size_t)n) != n)
        ar_log_as("warn", "daemon", NULL, "cannot write the pid into %s", path);
    rt->lock_fd = fd;
    return AR_OK;
}

/* Watch the policy directory; after a burst of changes settles (250 ms), reload. */
static void *watch_policies(void *arg)
{
    runtime *rt = arg;
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (fd < 0 || inotify_add_watch(fd, rt->cfg->policy_dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
                                                              IN_DELETE | IN_CREATE) < 0) {
        ar_log_as("warn", "daemon", NULL, "cannot watch %s for policy changes (%s); reload with SIGHUP or "
                  "POST /v1/policies/reload", rt->cfg->policy_dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = rt->watcher_stop_fd, .events = POLLIN}};
    int pending = 0;
    for (;;) {
        int n = poll(fds, 2, pending ? 250 : -1);
        if (n < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;
        if (n > 0 && fds[0].revents) {
            char buf[4096];
            while (read(fd, buf, sizeof buf) > 0)
                ;
            pending = 1; /* wait for the burst to settle */
            continue;
        }
        if (n == 0 && pending) {
            pending = 0;
            ar_error err = {0};
            api_reload_policies(rt->api, "file change", &err);
        }
    }
    close(fd);
    return NULL;
}

/* The policy set's own tests (*_test.lua beside it) must pass before it decides anything. */
static int policy_tests_pass(const policy_set *set, const char *dir, ar_error *err)
{
    json_t *report = NULL;
    int rc = policy_run_tests(set, dir, &report, err);
    json_int_t failed = json_integer_value(json_object_get(report, "failed"));
    if (rc == AR_OK && failed > 0)
        rc = ar_error_set(err, AR_E_INVALID, "policy_tests_failed", "%lld of the policy tests in %s fail; see "
                          "aioctl policy test %s", (long long)failed, dir, dir);
    if (rc == AR_OK)
        ar_log_as("info", "daemon", NULL, "policy tests: %lld passed",
                  (long long)json_integer_value(json_object_get(report, "passed")));
    json_decref(report);
    return rc;
}

/* A sandbox_secrets_fn: a connector's secrets, decrypted for one use. */
static int connector_secrets(void *arg, const char *connector, vault_secrets *out, ar_error *err)
{
    return vault_get_all(arg, connector, out, err);
}

/* Unlock the vault (creating its key on the very first start) and check that every secret a
 * connector declares is there, so a missing one stops the start, named, instead of failing
 * calls later. */
static int open_vault(runtime *rt, ar_error *err)
{
    const config *cfg = rt->cfg;
    int rc = vault_open_files(rt->journal, cfg->vault_key_file, cfg->vault_passphrase_file, 1, &rt->vault, err);
    if (rc != AR_OK)
        return rc;
    /* It holds a key from now on: no core dumps, no ptrace by other processes of this uid. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        ar_log_as("warn", "daemon", NULL, "cannot mark the daemon non-dumpable: %s", strerror(errno));
    for (size_t i = 0; i < cfg->n_connectors; i++) {
        const config_connector *cc = &cfg->connectors[i];
        if (!cc->n_secrets)
            continue;
        json_t *have = NULL;
        if ((rc = vault_list(rt->vault, cc->name, &have, err)) != AR_OK)
            return rc;
        for (size_t k = 0; k < cc->n_secrets; k++) {
            int found = 0;
            size_t idx;
            json_t *item;
            json_array_foreach(have, idx, item)
                found |= strcmp(json_string_value(json_object_get(item, "name")), cc->secrets[k]) == 0;
            if (!found) {
                json_decref(have);
                return ar_error_set(err, AR_E_INVALID, "secret_missing",
                                    "connector %s needs the secret \"%s\", which the vault does not hold: "
                                    "store it with `aioctl --config FILE secrets set %s %s`", cc->name,
                                    cc->secrets[k], cc->name, cc->secrets[k]);
            }
        }
        json_decref(have);
    }
    return AR_OK;
}

/* On the record: which config and policy set this start runs with (the config by digest: it
 * names no secret, but its text is the operator's). */
static int audit_start(runtime *rt, const char *config_path, ar_error *err)
{
    unsigned char digest[32];
    char hex[65] = "";
    FILE *f = fopen(config_path, "rb");
    if (f) {
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, sizeof digest);
        unsigned char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            crypto_generichash_update(&st, buf, n);
        fclose(f);
        crypto_generichash_final(&st, digest, sizeof digest);
        sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    }
    json_t *connectors = json_array();
    for (size_t i = 0; i < rt->cfg->n_connectors; i++)
        json_array_append_new(connectors, json_string(rt->cfg->connectors[i].name));
    journal_batch *b = journal_batch_new();
    audit_batch_append(b, "config_loaded", NULL, json_pack("{s:s, s:s, s:o, s:s, s:s}", "config", config_path,
                       "digest", hex, "connectors", connectors, "policy_version", policy_set_version(rt->policies),
                       "aiorun", AIORUN_VERSION_STRING));
    int rc = journal_commit(rt->journal, b, err);
    journal_batch_free(b);
    return rc;
}

/* The minimum log level and the format: the config's, except that a set AIORUN_LOG_LEVEL wins
 * over its log_level, to debug a deployed config without editing it. cfg NULL: before the
 * config is read, JSON lines (its default). Call it before any thread starts (ar.h). */
static int configure_logging(const config *cfg, ar_error *err)
{
    int level = cfg ? cfg->log_level : AR_LOG_INFO, json = cfg ? cfg->log_json : 1;
    const char *env = getenv("AIORUN_LOG_LEVEL");
    int from_env = env && env[0] ? ar_log_level_from_name(env) : level;
    ar_log_configure(from_env >= 0 ? from_env : level, json);
    if (from_env < 0)
        return ar_error_set(err, AR_E_INVALID, "invalid_config", "AIORUN_LOG_LEVEL: expected \"debug\", "
                            "\"info\", \"warn\" or \"error\" (or unset), got \"%.32s\"", env);
    return AR_OK;
}

static void runtime_stop(runtime *rt)
{
    retention_worker_stop(rt->retention); /* first: it writes through the journal */
    if (rt->watcher_started) {
        uint64_t one = 1;
        if (write(rt->watcher_stop_fd, &one, sizeof one) != sizeof one)
            ar_log_as("warn", "daemon", NULL, "cannot stop the policy watcher");
        pthread_join(rt->watcher, NULL);
    }
    if (rt->watcher_stop_fd >= 0)
        close(rt->watcher_stop_fd);
    if (rt->api) {
        api_stop_intake(rt->api);
        api_detach_scheduler(rt->api);
    }
    scheduler_free(rt->sched);
    api_free(rt->api);
    policy_set_free(rt->policies); /* only when the API never took it */
    autonomy_free(rt->autonomy);
    auth_free(rt->auth);
    vault_free(rt->vault);
    journal_close(rt->journal);
    counters_free(rt->counters); /* after the journal: its hook runs until the writer stops */
    config_free(rt->cfg);
    if (rt->lock_fd >= 0)
        close(rt->lock_fd); /* releases the lock */
    memset(rt, 0, sizeof *rt);
}

/* cpu_scheduling "batch": an action passes between the daemon's threads and its sandbox
 * processes several times, thousands of times a second. Under SCHED_OTHER each thread woken
 * preempts the one running on its CPU, a context switch the work did not need; a SCHED_BATCH
 * thread woken waits for the running one to sleep or use up its slice instead (sched(7)).
 * Measured: half the context switches per action, 5-10 % less CPU per action (BENCHMARKS.md).
 * Set on this thread before any other starts: threads and spawned processes inherit it.
 * Allowed without privileges; if refused anyway, the daemon goes on with the normal policy. */
static void set_cpu_scheduling(const config *cfg)
{
    if (!cfg->cpu_batch)
        return;
    struct sched_param none = {0};
    if (sched_setscheduler(0, SCHED_BATCH, &none) != 0)
        ar_log_as("warn", "daemon", NULL, "cpu_scheduling \"batch\": SCHED_BATCH refused (%s); running with the "
                  "normal policy", strerror(errno));
}

static int runtime_start(runtime *rt, const char *config_path, ar_error *err)
{
    int rc = config_load_file(config_path, &rt->cfg, err);
    if (rc != AR_OK || (rc = configure_logging(rt->cfg, err)) != AR_OK)
        return rc;
    const config *cfg = rt->cfg;
    set_cpu_scheduling(cfg);
    char host[PATH_MAX + 16], dir[PATH_MAX + 16];
    if ((rc = find_host_binary(host, sizeof host, err)) != AR_OK)
        return rc;
    if ((rc = make_dir(cfg->data_dir, err)) != AR_OK || (rc = lock_data_dir(rt, cfg->data_dir, err)) != AR_OK)
        return rc;
    if (config_journal_dir(cfg, dir, sizeof dir) != AR_OK)
        return ar_error_set(err, AR_E_INVALID, "data_dir", "data_dir %s is too long", cfg->data_dir);
    journal_opts jo = {.dir = dir, .map_size_mb = cfg->map_size_mb};
    if ((rc = journal_open(&jo, &rt->journal, err)) != AR_OK ||
        (rc = counters_new(rt->journal, &rt->counters, err)) != AR_OK ||
        (rc = open_vault(rt, err)) != AR_OK)
        return rc;
    if ((rc = auth_open(rt->journal, cfg->auth_key_file, &rt->auth, err)) != AR_OK ||
        (rc = autonomy_open(cfg->autonomy, rt->journal, &rt->autonomy, err)) != AR_OK)
        return rc;
    if ((rc = policy_set_load(cfg->policy_dir, &cfg->policy, &rt->policies, err)) != AR_OK ||
        (rc = policy_tests_pass(rt->policies, cfg->policy_dir, err)) != AR_OK)
        return rc;
    ar_log_as("info", "daemon", NULL, "policies: %zu file(s) from %s, version %s", policy_set_count(rt->policies),
              cfg->policy_dir, policy_set_version(rt->policies));
    size_t n_counters;
    const counter_def *defs = policy_set_counters(rt->policies, &n_counters);
    if ((rc = counters_install(rt->counters, defs, n_counters, ar_now_ms(), err)) != AR_OK ||
        (rc = audit_start(rt, config_path, err)) != AR_OK)
        return rc;
    rc = api_new(cfg, rt->journal, rt->auth, rt->autonomy, rt->policies, &rt->api, err);
    rt->policies = NULL; /* the API owns it now, and every set a reload brings */
    if (rc != AR_OK)
        return rc;
    if ((rc = scheduler_new(cfg, rt->journal, host, 10000, connector_secrets, rt->vault, api_action_changed, rt->api,
                            &rt->sched, err)) != AR_OK)
        return rc;
    api_set_scheduler(rt->api, rt->sched);
    api_set_counters(rt->api, rt->counters);
    api_set_vault(rt->api, rt->vault);
    scheduler_set_validator(rt->sched, api_validate_result, rt->api);
    scheduler_metrics sm = api_scheduler_metrics(rt->api);
    scheduler_set_metrics(rt->sched, &sm);
    for (size_t i = 0; i < cfg->n_connectors; i++) {
        sandbox_snapshot snap;
        scheduler_connector(rt->sched, cfg->connectors[i].name, &snap);
        ar_log_as(snap.state == SANDBOX_READY ? "info" : "error", "daemon", NULL, "connector %s (%s): %s%s%s",
                  cfg->connectors[i].name, cfg->connectors[i].plugin_path, sandbox_state_name(snap.state),
                  snap.message[0] ? ": " : "", snap.message);
        json_decref(snap.descriptor);
    }
    for (size_t i = 0; i < cfg->n_connectors; i++)
        if (cfg->connectors[i].pipeline)
            scheduler_set_pipeline(rt->sched, cfg->connectors[i].name, cfg->connectors[i].pipeline);
    /* Recovery reads the queue once and names the approvals still pending, to expire on time. */
    scheduler_set_pending_watch(rt->sched, api_watch_approval, rt->api);
    scheduler_recovery rec;
    if ((rc = scheduler_recover(rt->sched, &rec, err)) != AR_OK)
        return rc;
    ar_log_as("info", "daemon", NULL, "recovery: %zu action(s) resumed, %zu re-sent, %zu to reconcile by lookup, "
              "%zu marked UNKNOWN_OUTCOME", rec.resumed, rec.resent, rec.reconciled, rec.unknown);
    retention_opts ro = {.actions_days = cfg->retention.actions_days,
                         .idempotency_days = cfg->retention.idempotency_days,
                         .audit_bodies_days = cfg->retention.audit_bodies_days,
                         .audit_entries_days = cfg->retention.audit_entries_days};
    if ((rc = retention_worker_start(rt->journal, &ro, cfg->retention.interval_s, &rt->retention, err)) != AR_OK)
        return rc;
    if (cfg->policy_watch) {
        rt->watcher_stop_fd = eventfd(0, EFD_CLOEXEC);
        if (rt->watcher_stop_fd >= 0 && pthread_create(&rt->watcher, NULL, watch_policies, rt) == 0)
            rt->watcher_started = 1;
    }
    if ((rc = api_listen(rt->api, err)) != AR_OK)
        return rc;
    ar_log_as("info", "daemon", NULL, "aiorun %s listening on %s://%s%s%s:%d (data in %s)", AIORUN_VERSION_STRING,
              cfg->tls_cert ? "https" : "http",
              strchr(cfg->listen_host, ':') ? "[" : "", cfg->listen_host,
              strchr(cfg->listen_host, ':') ? "]" : "", api_port(rt->api), cfg->data_dir);
    return AR_OK;
}

int daemon_run(const char *config_path)
{
    /* Signals are taken synchronously by this thread; every thread started below inherits
     * the mask. SIGPIPE is ignored: a client that hangs up must not kill the daemon. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);   /* reload the policies */
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Until the config is read; a bad AIORUN_LOG_LEVEL is refused once it is, in its format. */
    configure_logging(NULL, NULL);
    if (sodium_init() < 0) {
        ar_log_as("error", "daemon", NULL, "libsodium cannot initialise");
        return 1;
    }

    runtime rt = {.lock_fd = -1, .watcher_stop_fd = -1};
    ar_error err = {0};
    if (runtime_start(&rt, config_path, &err) != AR_OK) {
        ar_log_as("error", "daemon", NULL, "cannot start: %s (%s)", err.message, err.code[0] ? err.code : "error");
        runtime_stop(&rt);
        return 1;
    }
    int sig = 0;
    for (;;) {
        sigwait(&stop, &sig);
        if (sig != SIGHUP)
            break;
        ar_error rerr = {0};
        api_reload_policies(rt.api, "SIGHUP", &rerr);
    }
    ar_log_as("info", "daemon", NULL, "stopping (signal %d)", sig);
    runtime_stop(&rt);
    ar_log_as("info", "daemon", NULL, "stopped");
    return 0;
}

int daemon_check_config(const char *config_path)
{
    config *cfg = NULL;
    policy_set *ps = NULL;
    ar_error err = {0};
    int rc = config_load_file(config_path, &cfg, &err);
    if (rc == AR_OK)
        rc = policy_set_load(cfg->policy_dir, &cfg->policy, &ps, &err);
    if (rc == AR_OK)
        rc = policy_tests_pass(ps, cfg->policy_dir, &err);
    if (rc != AR_OK) {
        fprintf(stderr, "%s: %s\n", config_path, err.message);
    } else {
        printf("%s: ok (%zu connector(s), %zu policy file(s))\n", config_path, cfg->n_connectors,
               policy_set_count(ps));
    }
    policy_set_free(ps);
    config_free(cfg);
    return rc == AR_OK ? 0 : 1;
}
