/*
 * compact_cmd.c - `aioctl --config FILE compact`: one compaction run (retention.h) on the
 * daemon's data directory, with the config's retention, without a limit on the records looked
 * at, printing what it did.
 *
 * It works through the journal like the daemon's own compaction thread (LMDB serves several
 * processes; every change is a short write transaction), so it is safe whether the daemon runs
 * or not. The guardrail counters' hook is installed first, so deleted actions take their
 * counter entries with them as in the daemon.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "aioctl.h"
#include "config.h"
#include "counters.h"
#include "journal.h"
#include "render.h"
#include "retention.h"

int aioctl_compact_command(const char *config_path, bool json);

static int print_error(const ar_error *err, const char *fallback, int exit_code)
{
    fputs("error: ", stderr);
    render_text(stderr, err->code[0] ? err->code : "error");
    fputs(": ", stderr);
    render_text(stderr, err->message[0] ? err->message : fallback);
    fputc('\n', stderr);
    return exit_code;
}

int aioctl_compact_command(const char *config_path, bool json)
{
    ar_error err = {0};
    config *cfg = NULL;
    journal *j = NULL;
    counters *c = NULL;
    char dir[PATH_MAX], mdb[PATH_MAX + 16];
    int rc;

    if (config_load_file(config_path, &cfg, &err) != AR_OK)
        return print_error(&err, "cannot load the config", AIOCTL_USAGE);
    if (config_journal_dir(cfg, dir, sizeof dir) != AR_OK) {
        fprintf(stderr, "aioctl: the data directory in %s is too long a path\n", config_path);
        config_free(cfg);
        return AIOCTL_USAGE;
    }
    /* journal_open would make an empty one: compacting that helps nobody. */
    snprintf(mdb, sizeof mdb, "%s/data.mdb", dir);
    if (access(mdb, F_OK) != 0) {
        fputs("error: no_journal: ", stderr);
        fprintf(stderr, "there is no journal at %s (%s): is %s the daemon's config?\n", dir, strerror(errno),
                config_path);
        config_free(cfg);
        return AIOCTL_REFUSED;
    }
    journal_opts jo = {.dir = dir, .map_size_mb = cfg->map_size_mb};
    retention_stats s;
    if (journal_open(&jo, &j, &err) != AR_OK || counters_new(j, &c, &err) != AR_OK) {
        rc = print_error(&err, "cannot open the journal", AIOCTL_REFUSED);
        goto done;
    }
    retention_opts ro = {.actions_days = cfg->retention.actions_days,
                         .idempotency_days = cfg->retention.idempotency_days,
                         .audit_bodies_days = cfg->retention.audit_bodies_days,
                         .audit_entries_days = cfg->retention.audit_entries_days,
                         .walk_limit = SIZE_MAX}; /* all that is due, in short transactions */
    if (retention_run(j, &ro, ar_now_ms(), &s, &err) != AR_OK) {
        rc = print_error(&err, "compaction failed", AIOCTL_REFUSED);
        goto done;
    }
    if (json) {
        json_t *doc = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "data_dir", cfg->data_dir,
                                "stubbed", (json_int_t)s.stubbed, "deleted", (json_int_t)s.deleted,
                                "keys_deleted", (json_int_t)s.keys_deleted, "audit_erased",
                                (json_int_t)s.audit_erased, "audit_deleted", (json_int_t)s.audit_deleted,
                                "deferred", (json_int_t)s.deferred, "looked_at",
                                (json_int_t)s.looked_at, "transactions", (json_int_t)s.transactions, "took_ms",
                                (json_int_t)s.took_ms);
        if (!doc || json_dumpf(doc, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0) {
            json_decref(doc);
            fputs("aioctl: out of memory\n", stderr);
            rc = AIOCTL_REFUSED;
            goto done;
        }
        fputc('\n', stdout);
        json_decref(doc);
    } else {
        printf("compacted %s (actions_days %g, idempotency_days %g, audit_bodies_days %g, audit_entries_days %g):\n"
               "  %zu action(s) made stubs, %zu deleted with %zu idempotency key(s), %zu audit bod%s erased,\n"
               "  %zu audit entr%s deleted (cut, with an audit_cut entry recording it),\n"
               "  %zu not due yet noted for later; %zu record(s) looked at in %zu transaction(s), %lld ms\n",
               cfg->data_dir, ro.actions_days, ro.idempotency_days, ro.audit_bodies_days, ro.audit_entries_days,
               s.stubbed, s.deleted, s.keys_deleted, s.audit_erased, s.audit_erased == 1 ? "y" : "ies",
               s.audit_deleted, s.audit_deleted == 1 ? "y" : "ies", s.deferred, s.looked_at, s.transactions,
               (long long)s.took_ms);
    }
    rc = AIOCTL_OK;
done:
    journal_close(j);
    counters_free(c); /* after the journal: its hook runs until the writer stops */
    config_free(cfg);
    return rc;
}
