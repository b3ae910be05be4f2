/*
 * bench_history.c - aiorun-bench-history: fill a stopped daemon's journal with history, fast,
 * for the scale scenario of tools/bench.
 *
 *   aiorun-bench-history --config FILE add N [--batch B] [--no-audit]
 *   aiorun-bench-history --config FILE make-ready M
 *   aiorun-bench-history --config FILE count
 *
 * FILE is the daemon's config (its data_dir and map_size_mb are used); the daemon must be
 * stopped (the data-directory lock is not taken here; two writers would still be safe, but the
 * figures would mean nothing).
 *
 * add copies the oldest SUCCEEDED action (made by the real daemon beforehand) N times, each
 * with a new id and its own idempotency key, in the form core/action.c stores it
 * (action_batch_store), together with a copy of that action's audit entries (audit_batch_append:
 * chained, indexed), so each copy costs what a real action costs on disk. B actions go in one
 * journal batch (default 2000). --no-audit writes the action records alone.
 *
 * make-ready turns the M newest terminal actions back into READY ones (no result, no attempts,
 * a deadline an hour away, a queue entry): work in flight for a restart to recover.
 *
 * count prints {"actions", "queued", "audit_entries", "map_used_bytes", "bytes_per_action",
 * "record_bytes_mean"} (map_used_bytes: the pages LMDB has in use, all databases).
 * Every command prints one JSON object on stdout and what it did on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "action.h"
#include "audit.h"
#include "bench_common.h"
#include "config.h"
#include "journal.h"

static journal *open_journal(const char *config_path)
{
    config *cfg = NULL;
    ar_error err = {0};
    char dir[4200];
    journal *j = NULL;
    if (config_load_file(config_path, &cfg, &err) != AR_OK) {
        fprintf(stderr, "bench-history: %s: %s\n", config_path, err.message);
        return NULL;
    }
    journal_opts jo = {.map_size_mb = cfg->map_size_mb};
    if (config_journal_dir(cfg, dir, sizeof dir) != AR_OK) {
        fprintf(stderr, "bench-history: data_dir too long\n");
    } else {
        jo.dir = dir;
        if (journal_open(&jo, &j, &err) != AR_OK)
            fprintf(stderr, "bench-history: journal_open %s: %s\n", dir, err.message);
    }
    config_free(cfg);
    return j;
}

/* The oldest SUCCEEDED action (the real one, made by the daemon before any copy) and its audit
 * entries (new references). */
static int find_template(journal *j, json_t **rec, json_t **audit)
{
    journal_read *r = NULL;
    journal_cursor *c = NULL;
    ar_error err = {0};
    const void *key, *val;
    size_t klen, vlen;
    *rec = NULL;
    if (journal_read_begin(j, &r, &err) != AR_OK || journal_cursor_open(r, JDB_ACTIONS, &c) != AR_OK)
        goto done;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, &key, &klen, &val, &vlen) == AR_OK; op = JOURNAL_NEXT) {
        json_t *x = json_loadb(val, vlen, 0, NULL);
        if (x && action_record_state(x) == ACTION_SUCCEEDED) {
            *rec = x;
            break;
        }
        json_decref(x);
    }
done:
    if (c)
        journal_cursor_close(c);
    if (r)
        journal_read_end(r);
    if (!*rec) {
        fprintf(stderr, "bench-history: no SUCCEEDED action to copy (run one through the daemon first)\n");
        return -1;
    }
    if (audit_read_action(j, action_record_str(*rec, "id"), audit, &err) != AR_OK) {
        fprintf(stderr, "bench-history: audit_read_action: %s\n", err.message);
        return -1;
    }
    return 0;
}

/* Replace the template's own key ("aiorun-<id>") wherever it appears at the top of obj or of
 * the objects in its history array. */
static void rekey(json_t *obj, const char *old_key, const char *new_key)
{
    const char *k = json_string_value(json_object_get(obj, "idempotency_key"));
    if (k && strcmp(k, old_key) == 0)
        json_object_set_new(obj, "idempotency_key", json_string(new_key));
    size_t i;
    json_t *h;
    json_array_foreach(json_object_get(obj, "history"), i, h) {
        const char *hk = json_string_value(json_object_get(h, "key"));
        if (hk && strcmp(hk, old_key) == 0)
            json_object_set_new(h, "key", json_string(new_key));
    }
}

static int commit(journal *j, journal_batch *b)
{
    ar_error err = {0};
    int rc = journal_commit(j, b, &err);
    journal_batch_free(b);
    if (rc != AR_OK)
        fprintf(stderr, "bench-history: journal_commit: %s\n", err.message);
    return rc == AR_OK ? 0 : -1;
}

static int cmd_add(journal *j, long n, long batch, int with_audit)
{
    json_t *tmpl, *audit;
    if (find_template(j, &tmpl, &audit) != 0)
        return 1;
    const char *old_key = action_record_str(tmpl, "idempotency_key");
    char old_key_copy[256];
    snprintf(old_key_copy, sizeof old_key_copy, "%s", old_key);
    int64_t t0 = bench_now_ns();
    journal_batch *b = NULL;
    long in_batch = 0;
    for (long i = 0; i < n; i++) {
        if (!b)
            b = journal_batch_new();
        char id[ACTION_ID_LEN + 1], key[64];
        action_id_new(id);
        snprintf(key, sizeof key, "aiorun-%s", id);
        json_t *rec = json_deep_copy(tmpl);
        json_object_set_new(rec, "id", json_string(id));
        rekey(rec, old_key_copy, key);
        action_batch_store(b, rec);
        json_decref(rec);
        if (with_audit) {
            size_t k;
            json_t *e;
            json_array_foreach(audit, k, e) {
                json_t *data = json_deep_copy(json_object_get(e, "data"));
                if (json_is_object(data))
                    rekey(data, old_key_copy, key);
                audit_batch_append(b, json_string_value(json_object_get(e, "type")), id, data);
            }
        }
        if (++in_batch == batch || i + 1 == n) {
            if (commit(j, b) != 0)
                return 1;
            b = NULL;
            in_batch = 0;
        }
        if ((i + 1) % 100000 == 0)
            fprintf(stderr, "bench-history: %ld actions written (%.1f s)\n", i + 1, (double)(bench_now_ns() - t0) / 1e9);
    }
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    fprintf(stderr, "bench-history: added %ld actions (%zu audit entries each) in %.1f s, %.0f actions/s\n", n,
            with_audit ? json_array_size(audit) : 0, secs, secs > 0 ? (double)n / secs : 0);
    bench_print_json(json_pack("{s:I, s:i, s:f, s:f}", "added", (json_int_t)n, "audit_entries_each",
                               with_audit ? (int)json_array_size(audit) : 0, "seconds", secs,
                               "actions_per_s", secs > 0 ? (double)n / secs : 0.0));
    json_decref(tmpl);
    json_decref(audit);
    return 0;
}

static int cmd_make_ready(journal *j, long m)
{
    journal_read *r = NULL;
    journal_cursor *c = NULL;
    ar_error err = {0};
    const void *key, *val;
    size_t klen, vlen;
    if (journal_read_begin(j, &r, &err) != AR_OK || journal_cursor_open(r, JDB_ACTIONS, &c) != AR_OK) {
        fprintf(stderr, "bench-history: cannot read the journal: %s\n", err.message);
        return 1;
    }
    int64_t t0 = bench_now_ns(), now = ar_now_ms();
    long done = 0;
    journal_batch *b = journal_batch_new();
    for (int op = JOURNAL_LAST; done < m && journal_cursor_get(c, op, &key, &klen, &val, &vlen) == AR_OK;
         op = JOURNAL_PREV) {
        json_t *rec = json_loadb(val, vlen, 0, NULL);
        if (!rec || !action_state_terminal(action_record_state(rec))) {
            json_decref(rec);
            continue;
        }
        json_object_del(rec, "finished_ms");
        json_object_del(rec, "next_attempt_ms");
        json_object_set_new(rec, "result", json_null());
        json_object_set_new(rec, "error", json_null());
        json_object_set_new(rec, "history", json_array());
        json_object_set_new(rec, "attempts", json_integer(0));
        json_object_set_new(rec, "deadline_ms", json_integer(now + 3600 * 1000));
        action_record_set_state(rec, ACTION_READY, now);
        json_object_del(rec, "finished_ms");
        action_batch_store(b, rec);
        json_decref(rec);
        if (++done % 2000 == 0) {
            if (commit(j, b) != 0)
                return 1;
            b = journal_batch_new();
        }
    }
    journal_cursor_close(c);
    journal_read_end(r);
    if (commit(j, b) != 0)
        return 1;
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    fprintf(stderr, "bench-history: %ld actions made READY in %.1f s\n", done, secs);
    bench_print_json(json_pack("{s:I, s:f}", "made_ready", (json_int_t)done, "seconds", secs));
    return 0;
}

/* Entries of db; *bytes (may be NULL): the sum of their value sizes. */
static size_t count_db(journal_read *r, journal_db db, size_t *bytes)
{
    journal_cursor *c;
    const void *key, *val;
    size_t klen, vlen, n = 0, sum = 0;
    if (journal_cursor_open(r, db, &c) != AR_OK)
        return 0;
    for (int op = JOURNAL_FIRST; journal_cursor_get(c, op, &key, &klen, &val, &vlen) == AR_OK; op = JOURNAL_NEXT) {
        n++;
        sum += vlen;
    }
    if (bytes)
        *bytes = sum;
    journal_cursor_close(c);
    return n;
}

static int cmd_count(journal *j)
{
    journal_read *r = NULL;
    ar_error err = {0};
    if (journal_read_begin(j, &r, &err) != AR_OK) {
        fprintf(stderr, "bench-history: cannot read the journal: %s\n", err.message);
        return 1;
    }
    size_t record_bytes = 0, actions = count_db(r, JDB_ACTIONS, &record_bytes), queued = count_db(r, JDB_QUEUE, NULL);
    journal_read_end(r);
    uint64_t seq = 0;
    char head[AUDIT_HASH_HEX];
    audit_head(j, &seq, head, &err);
    journal_stats st;
    journal_get_stats(j, &st);
    double per = actions ? (double)st.map_used / (double)actions : 0;
    double rec = actions ? (double)record_bytes / (double)actions : 0;
    fprintf(stderr, "bench-history: %zu actions (%zu not terminal), %llu audit entries, %zu bytes used, "
            "%.0f bytes/action (records of %.0f bytes on average)\n",
            actions, queued, (unsigned long long)seq, st.map_used, per, rec);
    bench_print_json(json_pack("{s:I, s:I, s:I, s:I, s:f, s:f}", "actions", (json_int_t)actions, "queued",
                               (json_int_t)queued, "audit_entries", (json_int_t)seq, "map_used_bytes",
                               (json_int_t)st.map_used, "bytes_per_action", per, "record_bytes_mean", rec));
    return 0;
}

int main(int argc, char **argv)
{
    const char *config_path = NULL, *cmd = NULL;
    long n = 0, batch = 2000;
    int with_audit = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config_path = argv[++i];
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = bench_arg_long("--batch", argv[++i]);
        else if (strcmp(argv[i], "--no-audit") == 0)
            with_audit = 0;
        else if (!cmd && (strcmp(argv[i], "add") == 0 || strcmp(argv[i], "make-ready") == 0) && i + 1 < argc) {
            cmd = argv[i];
            n = bench_arg_long(argv[i], argv[i + 1]);
            i++;
        } else if (!cmd && strcmp(argv[i], "count") == 0)
            cmd = argv[i];
        else
            cmd = "?";
    }
    if (!config_path || !cmd || strcmp(cmd, "?") == 0 || batch < 1) {
        fprintf(stderr, "usage: aiorun-bench-history --config FILE (add N [--batch B] [--no-audit] | make-ready M | count)\n");
        return 2;
    }
    journal *j = open_journal(config_path);
    if (!j)
        return 1;
    int rc = strcmp(cmd, "add") == 0 ? cmd_add(j, n, batch, with_audit)
           : strcmp(cmd, "make-ready") == 0 ? cmd_make_ready(j, n) : cmd_count(j);
    journal_close(j);
    return rc;
}
