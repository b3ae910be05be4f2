/*
 * config.h - the daemon's JSON configuration file.
 *
 * Keys (all optional except where noted; unknown keys and wrong types are refused naming the
 * key): listen ("127.0.0.1:8470"; a non-loopback address needs tls), tls {cert, key} (PEM
 * files; the API then speaks HTTPS only), auth_key_file ("<data_dir>/auth.key"), data_dir ("var"), plugin_dir ("build/plugins"), policy_dir ("policies"),
 * map_size_mb (1024), max_body_bytes (1 MiB), decision_workers (2),
 * policy {memory_kb, instructions, timeout_ms, default_read, default_write,
 * default_irreversible}, connectors (name -> {plugin (required),
 * config (object), processes (2), timeout_ms (10000), deadline_ms (300000), retry
 * {max_attempts 5, initial_ms 200, max_ms 30000, multiplier 2}, idempotency {action: mode},
 * secrets [names the vault must hold], allow_ports ([443]: TCP ports the plugin may connect
 * to), sandbox {rlimits, uid, landlock, seccomp: true; false switches a layer off for
 * debugging}, uid (the connector's own uid when the daemon is root; default 70000 + its index
 * in the file, gid the same), rate_limit {per_second, burst}, concurrency (processes), breaker
 * {window 20, min_calls 10, failure_ratio 0.5, consecutive 5, open_s 30, half_open_calls 1}}),
 * vault_key_file ("<data_dir>/vault.key"), vault_passphrase_file (none: the key file is used;
 * set: the vault is unlocked with the passphrase in this file, mode 0600), runtime_dir
 * ("/run/aiorun": where a root daemon puts plugin copies and the hosts' working directories),
 * max_inflight (256), max_queue_depth (10000), aging_ms (1000), autonomy {pattern: level},
 * approvers {role: [token roles or "token:NAME"]}, approval_expiry_s (86400), policy_watch (true),
 * cpu_scheduling ("batch": the daemon's threads and sandboxes run SCHED_BATCH; or "normal"),
 * log_level ("info": "debug", "info", "warn" or "error", any case; the daemon lets the
 * environment variable AIORUN_LOG_LEVEL override it), log_format ("json": JSON lines, or
 * "text"; see ar.h), retention {actions_days 30, idempotency_days 90, audit_bodies_days 365,
 * audit_entries_days 1095 (or audit_bodies_days when that is longer and audit_entries_days is
 * not given), interval_s 3600} (bounded history, retention.h: the days are numbers above 0,
 * fractions allowed, idempotency_days >= actions_days, audit_entries_days >=
 * audit_bodies_days; interval_s an integer >= 10). Relative paths are
 * resolved against the directory of the config file.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"
#include "drift.h"
#include "policy.h"

typedef struct config_retry {
    int max_attempts;      /* attempts in all, 1..100 (default 5) */
    int initial_ms;        /* first backoff ceiling (default 200) */
    int max_ms;            /* backoff ceiling (default 30000) */
    double multiplier;     /* growth per attempt, 1..10 (default 2) */
} config_retry;

typedef struct config_breaker {
    int window;            /* outcomes remembered, 2..10000 (20) */
    int min_calls;         /* outcomes needed before the ratio counts (10) */
    double failure_ratio;  /* open when failures / window reach it, (0,1] (0.5) */
    int consecutive;       /* open after this many failures in a row; 0: off (5) */
    int open_s;            /* stay open this long, then half-open (30) */
    int half_open_calls;   /* trial calls while half-open; all must succeed to close (1) */
} config_breaker;

/* retention: how long history is kept in full, as a stub, and with audit bodies (retention.h). */
typedef struct config_retention {
    double actions_days;      /* a terminal action becomes a stub this long after it finished (30) */
    double idempotency_days;  /* the stub and its idempotency key go this long after (90) */
    double audit_bodies_days; /* audit entries lose their body ("data") this long after (365) */
    double audit_entries_days;/* audit entries are deleted this long after (1095) */
    int interval_s;           /* the daemon compacts this often (3600) */
} config_retention;

typedef struct config_connector {
    char *name;            /* instance name: [a-z0-9_-]{1,64} */
    char *plugin;          /* plugin name; loaded from <plugin_dir>/<plugin>.so, or a path */
    char *plugin_path;     /* resolved absolute path of the .so */
    json_t *config;        /* owned; {} when absent */
    int processes;         /* 1..64 */
    int timeout_ms;        /* per call, 1..3600000 */
    int64_t deadline_ms;   /* default deadline of an action, from submission (300000) */
    config_retry retry;
    json_t *idempotency;   /* owned or NULL: action -> "native"|"lookup"|"none", overriding the plugin */
    char **secrets;        /* owned: the secret names the vault must hold for it (may be 0) */
    size_t n_secrets;
    int *allow_ports;      /* owned: TCP ports its plugin may connect to */
    size_t n_allow_ports;
    int sandbox_rlimits;   /* 1 unless "sandbox": {"rlimits": false} (likewise below) */
    int sandbox_uid;
    int sandbox_landlock;
    int sandbox_seccomp;
    unsigned uid;          /* its own uid and gid when the daemon is root */
    double rate_per_second; /* token bucket refill; 0: no rate limit */
    int rate_burst;        /* bucket size (default: per_second, at least 1) */
    int concurrency;       /* calls in flight at once, across its processes (default processes) */
    int pipeline;          /* attempts dispatched at once (journaling, waiting for a process,
                              running); 0 (default): the scheduler adapts it (scheduler.h) */
    config_breaker breaker;
} config_connector;

typedef struct config {
    char *listen_host;     /* an address, or "localhost" */
    int listen_port;       /* 0..65535 (0: any free port, reported by the daemon) */
    int listen_loopback;   /* 1 when listen_host is a loopback address */
    char *tls_cert;        /* absolute PEM paths, or NULL when TLS is off */
    char *tls_key;
    char *auth_key_file;   /* absolute; the server key of the token digests (auth.h) */
    char *vault_key_file;  /* absolute; the vault's master key file (vault.h) */
    char *vault_passphrase_file; /* absolute or NULL: unlock the vault with this passphrase */
    char *runtime_dir;     /* absolute */
    char *data_dir;        /* absolute */
    char *plugin_dir;      /* absolute */
    char *policy_dir;      /* absolute */
    size_t map_size_mb;
    size_t max_body_bytes;
    int decision_workers;  /* 1..64 */
    int max_inflight;      /* calls in flight across all connectors (256) */
    size_t max_queue_depth; /* actions waiting to run before submissions get 429 (10000) */
    int aging_ms;          /* waiting this long counts as one priority level (1000) */
    json_t *autonomy;      /* owned or NULL: "connector.action" pattern -> auto|semi|suggest */
    json_t *approvers;     /* owned or NULL: policy role -> ["approver", "token:alice", ...] */
    int64_t approval_expiry_s; /* a pending approval's lifetime unless the policy says (86400) */
    int policy_watch;      /* reload policies when their files change (inotify); default 1 */
    int cpu_batch;         /* cpu_scheduling "batch" (1, default) or "normal" (0): daemon.c */
    int log_level;         /* the minimum level logged, AR_LOG_* (default AR_LOG_INFO) */
    int log_json;          /* 1: JSON lines (default), 0: text (see ar.h) */
    policy_limits policy;  /* a limit absent from the file stays 0: policy.h's default */
    drift_opts drift;      /* "drift": {recent, baseline, min_samples, error_rate_increase,
                              confidence_drop, lower_autonomy}; absent values stay 0: drift.h's defaults */
    int drift_lowers_autonomy; /* drift.lower_autonomy (false) */
    config_retention retention; /* the defaults when the file has no "retention" */
    config_connector *connectors;
    size_t n_connectors;
} config;

/* Parse and validate. base_dir resolves relative paths (NULL: the current directory).
 * *out owned by the caller (config_free). Errors: AR_E_INVALID, code "invalid_config", with
 * the key path in the message ("connectors.shop.processes: expected integer 1..64"). */
int config_parse(const char *text, const char *base_dir, config **out, ar_error *err);
/* Read a file and parse it with base_dir = the file's directory (a relative path is taken from
 * the current directory). A file that cannot be read is AR_E_IO, code "invalid_config", naming
 * the path and the system's reason; a parse error is config_parse's, prefixed with the path. */
int config_load_file(const char *path, config **out, ar_error *err);
void config_free(config *cfg);
/* Where the journal lives: <data_dir>/journal. Returns AR_OK or AR_E_INVALID when too long. */
int config_journal_dir(const config *cfg, char *buf, size_t cap);
const config_connector *config_find_connector(const config *cfg, const char *name);

#endif
