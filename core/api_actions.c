/* api_actions.c - the API's action routes: submissions (validation, decision workers,
 * idempotency), reading and listing actions, cancel, resolve and backpressure. */
#include "api_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "approvals.h"
#include "audit.h"
#include "autonomy.h"
#include "schema.h"

#define MAX_WAIT_MS 60000
#define MAX_KEY_LEN 256


/* ---- submissions: the decision worker's side ---------------------------------------------- */

/* The submission's fields a decision and its record use, looked up once (each lookup hashes
 * the key and compares it). */
typedef struct submission_fields {
    json_t *connector, *action, *input, *priority, *proposer, *deadline;
    const char *connector_s, *action_s, *given; /* given: the client's idempotency_key or NULL */
    const char *level;                           /* autonomy_level's static string */
} submission_fields;

static void submission_fields_get(const request *rq, submission_fields *f)
{
    const json_t *s = rq->submission;
    f->connector = json_object_get(s, "connector");
    f->action = json_object_get(s, "action");
    f->input = json_object_get(s, "input");
    f->priority = json_object_get(s, "priority");
    f->proposer = json_object_get(s, "proposer");
    f->deadline = json_object_get(s, "deadline_ms");
    f->connector_s = json_string_value(f->connector);
    f->action_s = json_string_value(f->action);
    f->given = json_string_value(json_object_get(s, "idempotency_key"));
    f->level = NULL; /* per decision round (an operator may change it meanwhile) */
}

/* Set key (a literal) of obj to v (a new reference, or NULL: fails): what json_pack did, without
 * parsing a format, measuring the key or checking text known to be UTF-8 (ids, hex, names). */
#define SET_LITERAL(obj, key, v) json_object_setn_new_nocheck(obj, key, sizeof key - 1, v)

static json_t *literal_string(const char *s, size_t len)
{
    return json_stringn_nocheck(s, len);
}

/* The keys in json_pack's order: the record's text is written in insertion order. */
static json_t *policy_view(const request *rq, const submission_fields *f)
{
    json_t *view = json_object();
    if (!view)
        return NULL;
    int bad = SET_LITERAL(view, "connector", json_incref(f->connector));
    bad |= SET_LITERAL(view, "action", json_incref(f->action));
    bad |= SET_LITERAL(view, "effect", json_incref(json_object_get(rq->descriptor_action, "effect")));
    bad |= SET_LITERAL(view, "input", json_incref(f->input));
    bad |= SET_LITERAL(view, "priority", json_incref(f->priority));
    if (bad) {
        json_decref(view);
        return NULL;
    }
    json_object_set_new(view, "proposer", f->proposer ? json_incref(f->proposer) : json_object());
    json_object_set_new(view, "submitter", json_string(rq->who.name));
    json_object_set_new(view, "autonomy", literal_string(f->level, strlen(f->level)));
    return view;
}

static json_t *decision_json(const policy_decision *d, const policy_set *ps, policy_verdict v,
                             const char *level)
{
    json_t *decision = json_object();
    if (!decision)
        return NULL;
    const char *vn = policy_verdict_name(v), *pvn = policy_verdict_name(d->verdict);
    int bad = SET_LITERAL(decision, "verdict", literal_string(vn, strlen(vn)));
    bad |= SET_LITERAL(decision, "policy_verdict", literal_string(pvn, strlen(pvn)));
    bad |= SET_LITERAL(decision, "autonomy", literal_string(level, strlen(level)));
    bad |= SET_LITERAL(decision, "reason", json_string(d->reason));
    bad |= SET_LITERAL(decision, "rule", json_string(d->rule));
    bad |= SET_LITERAL(decision, "policy", json_string(d->file));
    bad |= SET_LITERAL(decision, "policy_version", json_string(policy_set_version(ps)));
    bad |= SET_LITERAL(decision, "duration_ns", json_integer((json_int_t)d->duration_ns));
    if (bad) {
        json_decref(decision);
        return NULL;
    }
    return decision;
}

static json_t *new_record(const request *rq, const submission_fields *f, const policy_decision *d,
                          const policy_set *ps, const unsigned char digest[ACTION_DIGEST_LEN])
{
    char id[ACTION_ID_LEN + 1];
    action_id_new(id);
    char key[MAX_KEY_LEN + 16];
    size_t key_len;
    if (f->given) { /* at most MAX_KEY_LEN bytes (validate_submission) */
        key_len = strlen(f->given);
        memcpy(key, f->given, key_len);
    } else { /* every attempt of this action sends it */
        memcpy(key, "aiorun-", 7);
        memcpy(key + 7, id, ACTION_ID_LEN);
        key_len = 7 + ACTION_ID_LEN;
    }
    char hex[ACTION_DIGEST_LEN * 2 + 1];
    sodium_bin2hex(hex, sizeof hex, digest, ACTION_DIGEST_LEN);
    int64_t now = ar_now_ms();
    const config_connector *cc = config_find_connector(rq->api->cfg, f->connector_s);
    /* The connector's config may override what the plugin declares (a generic connector cannot
     * know whether a given API honours keys). */
    json_t *mode = cc && cc->idempotency ? json_object_get(cc->idempotency, f->action_s) : NULL;
    if (!mode)
        mode = json_object_get(rq->descriptor_action, "idempotency");
    int64_t deadline_ms = now + (f->deadline ? (int64_t)json_integer_value(f->deadline) : (cc ? cc->deadline_ms : 300000));
    json_t *rec = json_object();
    if (!rec)
        return NULL;
    int bad = SET_LITERAL(rec, "id", literal_string(id, ACTION_ID_LEN));
    bad |= SET_LITERAL(rec, "connector", json_incref(f->connector));
    bad |= SET_LITERAL(rec, "action", json_incref(f->action));
    bad |= SET_LITERAL(rec, "effect", json_incref(json_object_get(rq->descriptor_action, "effect")));
    bad |= SET_LITERAL(rec, "idempotency", json_incref(mode));
    bad |= SET_LITERAL(rec, "idempotency_key", literal_string(key, key_len));
    bad |= SET_LITERAL(rec, "submitter", json_string(rq->who.name));
    bad |= SET_LITERAL(rec, "key_given", json_boolean(f->given != NULL));
    bad |= SET_LITERAL(rec, "input", json_incref(f->input));
    bad |= SET_LITERAL(rec, "proposer", f->proposer ? json_incref(f->proposer) : json_null());
    bad |= SET_LITERAL(rec, "priority", json_incref(f->priority));
    bad |= SET_LITERAL(rec, "digest", literal_string(hex, ACTION_DIGEST_LEN * 2));
    bad |= SET_LITERAL(rec, "attempts", json_integer(0));
    bad |= SET_LITERAL(rec, "result", json_null());
    bad |= SET_LITERAL(rec, "error", json_null());
    bad |= SET_LITERAL(rec, "created_ms", json_integer((json_int_t)now));
    bad |= SET_LITERAL(rec, "updated_ms", json_integer((json_int_t)now));
    bad |= SET_LITERAL(rec, "finished_ms", json_null());
    if (bad) {
        json_decref(rec);
        return NULL;
    }
    json_object_set_new(rec, "deadline_ms", json_integer(deadline_ms));
    /* Graded autonomy adjusts the policies' verdict; a deny always stands. The level is one of
     * autonomy_level's static strings: its first letter tells which. */
    const char *level = f->level;
    policy_verdict v = d->verdict;
    if (level[0] == 's' && level[1] == 'e' && v == POLICY_ALLOW) /* "semi" */
        v = POLICY_APPROVE;
    else if (level[0] == 's' && level[1] == 'u' && (v == POLICY_ALLOW || v == POLICY_APPROVE)) /* "suggest" */
        v = POLICY_SUGGEST;
    json_t *decision = decision_json(d, ps, v, level);
    json_t *votes = decision ? policy_votes_json(d) : NULL; /* built here, from the C votes: not a decision's cost */
    if (votes)
        json_object_set_new(decision, "votes", votes);
    json_object_set_new(rec, "decision", decision);
    action_state st = v == POLICY_ALLOW ? ACTION_READY : v == POLICY_APPROVE ? ACTION_PENDING_APPROVAL
                    : v == POLICY_SUGGEST ? ACTION_SUGGESTED : ACTION_DENIED;
    if (st == ACTION_PENDING_APPROVAL) {
        policy_decision asked = *d;
        if (d->verdict != POLICY_APPROVE) { /* autonomy asked, not a policy: any approver */
            asked.n_roles = 0;
            asked.expires_in_s = 0;
            asked.four_eyes = 0;
            snprintf(asked.summary, sizeof asked.summary, "autonomy level semi for %s.%s",
                     f->connector_s, f->action_s);
        }
        approvals_request(rec, &asked, now, rq->api->cfg->approval_expiry_s);
    }
    action_record_set_state(rec, st, now);
    return rec;
}

/* out = the first ACTION_ID_LEN bytes of id (fewer at a NUL), NUL-terminated: what
 * snprintf("%.*s") made, without parsing a format. */
static void copy_action_id(char out[ACTION_ID_LEN + 1], const char *id)
{
    size_t n = strnlen(id, ACTION_ID_LEN);
    memcpy(out, id, n);
    out[n] = '\0';
}

/* The submission matches an existing action with the same key: same payload → that action
 * (200), another payload → 409. */
static void answer_existing(api_server *a, request *rq, const char *id,
                            const unsigned char *stored_digest, const unsigned char *digest)
{
    if (sodium_memcmp(stored_digest, digest, ACTION_DIGEST_LEN) != 0) {
        api_set_reply_error(rq, MHD_HTTP_CONFLICT, "idempotency_conflict",
                        "idempotency_key \"%s\" was already used on connector \"%s\" with another "
                        "action or input (existing action %.*s); use a new key for a new action",
                        json_string_value(json_object_get(rq->submission, "idempotency_key")),
                        json_string_value(json_object_get(rq->submission, "connector")),
                        ACTION_ID_LEN, id);
        api_resume(rq);
        return;
    }
    char idz[ACTION_ID_LEN + 1];
    copy_action_id(idz, id);
    rq->done_status = MHD_HTTP_OK;
    memcpy(rq->action_id, idz, sizeof idz);
    if (rq->wait_ms > 0) {
        /* Register first, then look: a change landing in between is not missed. */
        api_waiter_add(a, rq);
        json_t *rec;
        if (action_load_by_id(a->journal, idz, &rec, NULL) == AR_OK) {
            if (action_state_settled(action_record_state(rec))) {
                request *list = api_waiters_take(a, idz, 0);
                while (list) { /* may include others waiting on the same action: fine */
                    request *w = list;
                    list = w->next;
                    api_set_reply_action(w, w->done_status, rec);
                    api_resume(w);
                }
            }
            json_decref(rec);
        }
        return;
    }
    json_t *rec;
    ar_error err = {0};
    int rc = action_load_by_id(a->journal, idz, &rec, &err);
    if (rc == AR_OK) {
        api_set_reply_action(rq, MHD_HTTP_OK, rec);
        json_decref(rec);
    } else {
        api_set_reply_ar_error(rq, rc, &err);
    }
    api_resume(rq);
}

/* Look the key up in a read snapshot. AR_OK with id/digest copied out, or AR_E_NOTFOUND. */
static int find_key(api_server *a, const char *k, size_t klen, unsigned char out[ACTION_IDEM_VALUE_LEN])
{
    journal_read *r;
    if (journal_read_begin(a->journal, &r, NULL) != AR_OK)
        return AR_E_FAIL;
    const void *val;
    size_t vlen;
    int rc = journal_get(r, JDB_IDEMPOTENCY, k, klen, &val, &vlen);
    if (rc == AR_OK && vlen == ACTION_IDEM_VALUE_LEN)
        memcpy(out, val, ACTION_IDEM_VALUE_LEN);
    else if (rc == AR_OK)
        rc = AR_E_FORMAT;
    journal_read_end(r);
    return rc;
}

/* ---- guardrail counters read by a decision ---------------------------------------------- */

#define MAX_COUNTER_READS 16
#define MAX_DECISION_ROUNDS 32

/* What one decision read: every counter once (its version), from one snapshot. */
typedef struct counter_reads {
    api_server *a;
    journal_read *snap;        /* begun at the first read, ended after the decision */
    int64_t now_ms;
    size_t n;
    struct { char id[COUNTERS_ID_LEN + 1]; uint64_t version; } read[MAX_COUNTER_READS];
    int stale;                 /* a counter of this set is no longer maintained: decide again */
} counter_reads;

static int read_counter(void *arg, const counter_def *def, double *value, ar_error *err)
{
    counter_reads *cr = arg;
    if (!cr->a->counters)
        return ar_error_set(err, AR_E_NOTFOUND, "counter_unavailable", "this daemon keeps no counters");
    if (!cr->snap && journal_read_begin(cr->a->journal, &cr->snap, err) != AR_OK)
        return AR_E_FAIL;
    uint64_t version;
    int rc = counters_read(cr->snap, def, cr->now_ms, value, &version, err);
    if (rc == AR_E_NOTFOUND)
        cr->stale = 1; /* a reload retired it: the newer set maintains what it reads */
    if (rc != AR_OK)
        return rc;
    for (size_t i = 0; i < cr->n; i++)
        if (strcmp(cr->read[i].id, def->id) == 0)
            return AR_OK;
    if (cr->n == MAX_COUNTER_READS)
        return ar_error_set(err, AR_E_INVALID, "counter_unavailable",
                            "a decision may read at most %d different counters", MAX_COUNTER_READS);
    snprintf(cr->read[cr->n].id, sizeof cr->read[cr->n].id, "%s", def->id);
    cr->read[cr->n++].version = version;
    return AR_OK;
}

static void counter_reads_reset(counter_reads *cr, api_server *a)
{
    if (cr->snap)
        journal_read_end(cr->snap);
    memset(cr, 0, sizeof *cr);
    cr->a = a;
    cr->now_ms = ar_now_ms();
}

/* In the batch that stores the decided action: the counters it read are unchanged. */
static int check_counter_reads(journal_txn *txn, void *arg, ar_error *err)
{
    const counter_reads *cr = arg;
    for (size_t i = 0; i < cr->n; i++) {
        int rc = counters_txn_check(txn, cr->read[i].id, cr->read[i].version, err);
        if (rc != AR_OK)
            return rc;
    }
    return AR_OK;
}

/* ---- the decision worker ------------------------------------------------------------------ */

/* A worker's Lua state and the set it was built from. */
typedef struct decider {
    policy_worker *pw;
    const policy_set *ps;
    uint64_t gen;
    ar_error err;              /* why pw is NULL */
} decider;

/* Follow a reload: rebuild the Lua state when the current set changed. */
static void decider_refresh(api_server *a, decider *d)
{
    uint64_t now_gen;
    const policy_set *latest = api_current_policies(a, &now_gen);
    if (now_gen == d->gen)
        return;
    policy_worker *fresh = NULL;
    ar_error_clear(&d->err);
    if (policy_worker_new(latest, &fresh, &d->err) != AR_OK) {
        ar_log("error", "cannot build a policy state for set %s: %s", policy_set_version(latest), d->err.message);
        return;
    }
    policy_worker_set_votes_json(fresh, 0); /* new_record builds the stored votes */
    policy_worker_free(d->pw);
    d->pw = fresh;
    d->ps = latest;
    d->gen = now_gen;
}

static void reply_stored(api_server *a, request *rq, json_t *rec)
{
    api_action_changed(a, rec); /* logs it; nobody can be waiting on a brand-new id yet */
    rq->done_status = MHD_HTTP_CREATED;
    action_state st = action_record_state(rec);
    if (st == ACTION_PENDING_APPROVAL)
        api_expiry_add(a, action_record_str(rec, "id"),
                   json_integer_value(json_object_get(json_object_get(rec, "approval"), "expires_ms")));
    if (st != ACTION_READY) {
        api_set_reply_action(rq, MHD_HTTP_CREATED, rec);
        api_resume(rq);
        return;
    }
    /* The reply's text is made before the scheduler may change and free its copy (the text,
     * not a deep copy of the record to render later). Once a waiter is added, rq may be
     * answered and gone at any moment: not to be read after. */
    int waits = rq->wait_ms > 0;
    if (waits) {
        copy_action_id(rq->action_id, action_record_str(rec, "id"));
        api_waiter_add(a, rq); /* before the scheduler can finish it */
    } else {
        api_set_reply_action(rq, MHD_HTTP_CREATED, rec);
    }
    scheduler_enqueue(a->sched, json_incref(rec));
    if (!waits)
        api_resume(rq);
}

/* The audit entries of a new action, in the batch that stores it: what was proposed, by whom
 * and why (the proposer), how it was decided (every vote), and the approval it waits for. The
 * data is written as text straight from the record (audit.h); it is made here, before anything
 * changes the record. */
static void audit_submission(journal_batch *b, const json_t *rec)
{
    const char *id = action_record_str(rec, "id");
    audit_batch_append_data(b, "received", id, audit_data_received, rec);
    audit_batch_append_data(b, "decided", id, audit_data_value, json_object_get(rec, "decision"));
    if (action_record_state(rec) == ACTION_PENDING_APPROVAL && json_object_get(rec, "approval"))
        audit_batch_append_data(b, "approval_requested", id, audit_data_approval_requested, rec);
}

/* One decided submission on its way to the journal: what the commit's callback needs to
 * answer. The counters the decision read travel with it (checked inside the transaction). */
typedef struct pending_store {
    api_server *a;
    request *rq;
    json_t *rec;
    unsigned char digest[ACTION_DIGEST_LEN];
    counter_reads reads;       /* snapshot already ended: only ids and versions are used */
} pending_store;

static void stores_pending_add(api_server *a, int delta)
{
    pthread_mutex_lock(&a->work_lock);
    a->stores_pending += delta;
    if (a->stores_pending == 0 && a->workers_stopping)
        pthread_cond_broadcast(&a->work_cond); /* a stopping worker may leave now (not before:
                                                  it would wake every idle worker per action) */
    pthread_mutex_unlock(&a->work_lock);
}

/* Decide again (what the decision read changed): back to the front of the work queue. */
static void requeue_submission(api_server *a, request *rq)
{
    pthread_mutex_lock(&a->work_lock);
    rq->next = a->work_head;
    a->work_head = rq;
    if (!a->work_tail)
        a->work_tail = rq;
    a->stores_pending--;
    pthread_cond_broadcast(&a->work_cond);
    pthread_mutex_unlock(&a->work_lock);
}

/* A submission the scheduler stored (scheduler_submit), in the state it is in now (READY, or
 * DISPATCHED when its first attempt went in the same commit): the scheduler takes it from here
 * and reports it (notify), so only the client is answered here. */
static void reply_submitted(api_server *a, request *rq, const json_t *rec)
{
    rq->done_status = MHD_HTTP_CREATED;
    if (rq->wait_ms > 0) {
        copy_action_id(rq->action_id, action_record_str(rec, "id"));
        api_waiter_add(a, rq); /* before the scheduler goes on with it */
        return;
    }
    api_set_reply_action(rq, MHD_HTTP_CREATED, rec);
    api_resume(rq);
}

/* The journal's thread: the decided action is durable (or refused). Answer, or decide again.
 * The decision worker has moved on meanwhile, so a group commit carries many workers' and
 * many requests' submissions. stored_rec: the record the scheduler stored (scheduler_submit),
 * NULL when the API journaled it itself (then handed to the scheduler here). */
static void store_ended(pending_store *ps, int status, journal_batch *b, const ar_error *err,
                        const json_t *stored_rec)
{
    api_server *a = ps->a;
    request *rq = ps->rq;
    if (status == AR_E_EXISTS) {
        /* Another submission with this key won the race. */
        const void *val;
        size_t vlen;
        unsigned char found[ACTION_IDEM_VALUE_LEN];
        if (journal_batch_conflict(b, NULL, &val, &vlen) == AR_OK && vlen == ACTION_IDEM_VALUE_LEN) {
            memcpy(found, val, ACTION_IDEM_VALUE_LEN);
            answer_existing(a, rq, (const char *)found, found + ACTION_ID_LEN, ps->digest);
        } else {
            api_set_reply_error(rq, 500, "internal", "idempotency record unreadable");
            api_resume(rq);
        }
    } else if (status == AR_OK && stored_rec) {
        reply_submitted(a, rq, stored_rec);
    } else if (status == AR_OK) {
        reply_stored(a, rq, ps->rec);
    } else if (status != AR_E_CONFLICT) {
        api_set_reply_ar_error(rq, status, err);
        api_resume(rq);
    }
    json_decref(ps->rec);
    free(ps);
    if (status == AR_E_CONFLICT)
        requeue_submission(a, rq);
    else
        stores_pending_add(a, -1);
}

static void store_done(void *arg, int status, journal_batch *b, const ar_error *err)
{
    store_ended(arg, status, b, err, NULL);
    journal_batch_free(b);
}

static void scheduler_stored(void *arg, int status, journal_batch *b, const ar_error *err,
                             const json_t *rec)
{
    store_ended(arg, status, b, err, rec); /* b stays the scheduler's */
}

/* Decide and hand the record to the journal; store_done answers. AR_E_CONFLICT: what the
 * decision read is stale already; decide again. Any other status: the request was answered
 * or will be. */
static int decide_and_store(api_server *a, decider *dc, request *rq, submission_fields *fields,
                            const unsigned char *digest, const char *idem, size_t idem_len)
{
    submission_fields f = *fields;
    f.level = autonomy_level(a->autonomy, f.connector_s, f.action_s); /* the view's and the record's */
    json_t *view = policy_view(rq, &f);
    if (!view) {
        api_set_reply_error(rq, 500, "internal", "out of memory");
        api_resume(rq);
        return AR_E_NOMEM;
    }
    pending_store *ps = calloc(1, sizeof *ps);
    if (!ps) {
        json_decref(view);
        api_set_reply_error(rq, 500, "internal", "out of memory");
        api_resume(rq);
        return AR_E_NOMEM;
    }
    counter_reads *cr = &ps->reads;
    counter_reads_reset(cr, a);
    policy_worker_set_counters(dc->pw, read_counter, cr);
    policy_decision d;
    policy_decide(dc->pw, view, &d);
    policy_worker_set_counters(dc->pw, NULL, NULL);
    json_decref(view);
    int stale = cr->stale;
    if (cr->snap) { /* the versions read are checked in the transaction, not the snapshot */
        journal_read_end(cr->snap);
        cr->snap = NULL;
    }
    if (stale) {
        json_decref(d.votes);
        free(ps);
        return AR_E_CONFLICT;
    }
    api_note_decision_time(a, d.duration_ns);
    metrics_observe(a->fam.policy_seconds, NULL, (double)d.duration_ns / 1e9);
    metrics_observe(a->fam.stage_seconds,
                    (const char *const[]){"decision", f.connector_s},
                    (double)d.duration_ns / 1e9);
    json_t *rec = new_record(rq, &f, &d, dc->ps, digest);
    json_decref(d.votes);
    journal_batch *b = rec ? journal_batch_new() : NULL;
    if (!b) {
        json_decref(rec);
        free(ps);
        api_set_reply_error(rq, 500, "internal", "out of memory");
        api_resume(rq);
        return AR_E_NOMEM;
    }
    if (idem_len) {
        unsigned char value[ACTION_IDEM_VALUE_LEN];
        memcpy(value, action_record_str(rec, "id"), ACTION_ID_LEN);
        memcpy(value + ACTION_ID_LEN, digest, ACTION_DIGEST_LEN);
        journal_batch_put_unless_exists(b, JDB_IDEMPOTENCY, idem, idem_len, value, sizeof value);
    }
    if (cr->n)
        journal_batch_apply(b, check_counter_reads, cr); /* before the store bumps them */
    audit_submission(b, rec);
    ps->a = a;
    ps->rq = rq;
    ps->rec = rec;
    memcpy(ps->digest, digest, ACTION_DIGEST_LEN);
    /* A conflict found in the transaction brings it back as the next round. Counted before it is
     * handed over: from then on the request may be answered and freed at any moment. */
    rq->decision_round++;
    stores_pending_add(a, +1);
    /* A READY action its connector can start at once is stored by the scheduler (which adds
     * the record to the batch), with its first DISPATCHED intent in the same commit: one sync
     * less before the call. So is one whose client waits for it: while the connector is busy
     * it may wait for a place, not stored yet (no one has been answered), for a short while. */
    int rc = AR_E_CLOSED;
    if (action_record_state(rec) == ACTION_READY) {
        int64_t hold = rq->wait_ms > 0 ? rq->wait_until - ar_mono_ms() : 0;
        if (hold > SCHEDULER_HOLD_MAX_MS)
            hold = SCHEDULER_HOLD_MAX_MS;
        pthread_rwlock_rdlock(&a->sched_lock);
        if (hold > 0 || scheduler_can_start(a->sched, f.connector_s))
            rc = scheduler_submit(a->sched, rec, b, scheduler_stored, ps, hold);
        pthread_rwlock_unlock(&a->sched_lock);
    }
    if (rc != AR_OK) {
        action_batch_store(b, rec);
        rc = journal_submit(a->journal, b, store_done, ps);
    }
    if (rc != AR_OK) {
        ar_error err = {0};
        ar_error_set(&err, rc, rc == AR_E_CLOSED ? "shutting_down" : "internal",
                     rc == AR_E_CLOSED ? "the daemon is stopping; send it again once it is back" : "out of memory");
        api_set_reply_ar_error(rq, rc, &err);
        api_resume(rq);
        journal_batch_free(b);
        json_decref(rec);
        free(ps);
        stores_pending_add(a, -1);
        return rc;
    }
    return AR_OK;
}

static void process_submission(api_server *a, decider *dc, request *rq)
{
    submission_fields f;
    submission_fields_get(rq, &f);
    const char *connector = f.connector_s;
    const char *given = f.given;
    unsigned char digest[ACTION_DIGEST_LEN];
    if (action_payload_digest(f.action_s, f.input, digest) != AR_OK) {
        api_set_reply_error(rq, 500, "internal", "out of memory");
        api_resume(rq);
        return;
    }
    char idem[MAX_KEY_LEN + 160];
    size_t idem_len = given ? action_idem_key(idem, sizeof idem, connector, rq->who.name, given) : 0;
    unsigned char found[ACTION_IDEM_VALUE_LEN];
    if (idem_len && find_key(a, idem, idem_len, found) == AR_OK) {
        answer_existing(a, rq, (const char *)found, found + ACTION_ID_LEN, digest);
        return;
    }
    /* Optimistic: a decision that read counters is stored only if they did not change since;
     * otherwise it is decided again on fresh values (and with the newest set). A conflict
     * found in the transaction brings the request back here (store_done) with its round. */
    for (; rq->decision_round < MAX_DECISION_ROUNDS; rq->decision_round++) {
        if (rq->decision_round >= 4)
            usleep((useconds_t)(200 * rq->decision_round)); /* heavy contention on one counter: let the others land */
        decider_refresh(a, dc);
        if (!dc->pw) {
            api_set_reply_error(rq, 503, "policy_unavailable", "the decision worker has no policy state: %s",
                                dc->err.message);
            api_resume(rq);
            return;
        }
        if (decide_and_store(a, dc, rq, &f, digest, idem, idem_len) != AR_E_CONFLICT)
            return; /* rq may be answered and gone already: not to be touched */
    }
    rq->retry_after_s = 1;
    api_set_reply_error(rq, 503, "counter_contention", "the guardrail counters this action's decision reads "
                        "kept changing while it was decided (%d rounds); send it again", MAX_DECISION_ROUNDS);
    api_resume(rq);
}

const policy_set *api_current_policies(api_server *a, uint64_t *gen)
{
    pthread_mutex_lock(&a->policy_lock);
    const policy_set *ps = a->policy_sets[a->n_sets - 1];
    *gen = a->policy_gen;
    pthread_mutex_unlock(&a->policy_lock);
    return ps;
}

void *api_worker_main(void *arg)
{
    api_server *a = arg;
    decider dc = {.gen = UINT64_MAX};
    for (;;) {
        pthread_mutex_lock(&a->work_lock);
        /* Stopping: leave once nothing is queued and no stored submission can come back to be
         * decided again (store_done). */
        while (!a->work_head && !(a->workers_stopping && a->stores_pending == 0))
            pthread_cond_wait(&a->work_cond, &a->work_lock);
        request *rq = a->work_head;
        if (rq) {
            a->work_head = rq->next;
            if (!a->work_head)
                a->work_tail = NULL;
        }
        pthread_mutex_unlock(&a->work_lock);
        if (!rq)
            break;
        process_submission(a, &dc, rq);
    }
    policy_worker_free(dc.pw);
    return NULL;
}

/* ---- validating results (the scheduler's thread) ------------------------------------------- */

/* The view validate gets: the same fields a decision saw, from the stored record. */
static json_t *record_view(const json_t *rec)
{
    json_t *proposer = json_object_get(rec, "proposer");
    const char *level = json_string_value(json_object_get(json_object_get(rec, "decision"), "autonomy"));
    return json_pack("{s:s, s:s, s:s, s:O, s:O, s:o, s:s, s:s}",
                     "connector", action_record_str(rec, "connector"), "action", action_record_str(rec, "action"),
                     "effect", action_record_str(rec, "effect"), "input", json_object_get(rec, "input"),
                     "priority", json_object_get(rec, "priority") ? json_object_get(rec, "priority") : json_null(),
                     "proposer", json_is_object(proposer) ? json_incref(proposer) : json_object(),
                     "submitter", action_record_str(rec, "submitter"), "autonomy", level ? level : "auto");
}

json_t *api_validate_result(void *arg, const json_t *rec, const json_t *result)
{
    api_server *a = arg;
    uint64_t gen;
    const policy_set *ps = api_current_policies(a, &gen);
    if (!policy_set_has_validate(ps))
        return NULL;
    if (gen != a->validate_gen) {
        policy_worker *fresh = NULL;
        ar_error err = {0};
        if (policy_worker_new(ps, &fresh, &err) != AR_OK)
            return json_pack("{s:s, s:s, s:s, s:b}", "reason", err.message, "rule", "", "policy", "", "policy_error", 1);
        policy_worker_free(a->validate_worker);
        a->validate_worker = fresh;
        a->validate_set = ps;
        a->validate_gen = gen;
    }
    json_t *view = record_view(rec);
    if (!view)
        return json_pack("{s:s, s:s, s:s, s:b}", "reason", "out of memory", "rule", "", "policy", "", "policy_error", 1);
    counter_reads cr = {0};
    counter_reads_reset(&cr, a);
    policy_worker_set_counters(a->validate_worker, read_counter, &cr);
    policy_validation v;
    policy_validate(a->validate_worker, view, result, &v);
    policy_worker_set_counters(a->validate_worker, NULL, NULL);
    counter_reads_reset(&cr, a);
    json_decref(view);
    if (v.ok)
        return NULL;
    return json_pack("{s:s, s:s, s:s, s:b, s:s}", "reason", v.reason, "rule", v.rule, "policy", v.file,
                     "policy_error", v.policy_error, "policy_version", policy_set_version(ps));
}

/* ---- request validation (HTTP thread) ----------------------------------------------------- */

/* v: the field's value (NULL: absent). */
static int check_field_type(request *rq, const json_t *v, const char *field, json_type type,
                            const char *type_name, int required)
{
    if (!v) {
        if (!required)
            return 1;
        api_set_reply_error(rq, 400, "invalid_request", "field \"%s\" is required (%s)", field, type_name);
        return 0;
    }
    int ok = json_typeof(v) == type || (type == JSON_REAL && json_is_integer(v));
    if (!ok)
        api_set_reply_error(rq, 400, "invalid_request", "field \"%s\" must be %s", field, type_name);
    return ok;
}

static int validate_proposer(request *rq, const json_t *p)
{
    static const char *const known[] = {"kind", "model", "confidence", "prompt_ref", "context_refs"};
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)p, k, v) {
        size_t i;
        for (i = 0; i < 5 && strcmp(k, known[i]) != 0; i++)
            ;
        if (i == 5) {
            api_set_reply_error(rq, 400, "invalid_request", "proposer: unknown field \"%s\" (known: kind, model, "
                                "confidence, prompt_ref, context_refs)", k);
            return 0;
        }
        if (i == 4) {
            /* References to what the proposer looked at (documents, tickets, URLs): kept for
             * the audit trail, at most 32 strings. */
            size_t n = json_array_size(v), j;
            json_t *ref;
            int ok = json_is_array(v) && n <= 32;
            json_array_foreach(v, j, ref)
                ok &= json_is_string(ref) && json_string_length(ref) <= 512;
            if (!ok) {
                api_set_reply_error(rq, 400, "invalid_request", "proposer.context_refs must be an array of at most 32 "
                                    "strings of at most 512 bytes");
                return 0;
            }
            continue;
        }
        if (i == 2 ? !json_is_number(v) : !json_is_string(v)) {
            api_set_reply_error(rq, 400, "invalid_request", "proposer.%s must be %s", k, i == 2 ? "a number" : "a string");
            return 0;
        }
        if (i == 2 && (json_number_value(v) < 0 || json_number_value(v) > 1)) {
            api_set_reply_error(rq, 400, "invalid_request", "proposer.confidence must be between 0 and 1");
            return 0;
        }
    }
    return 1;
}

/* The fields a submission may have, in the order of the "unknown field" message. */
enum { F_CONNECTOR, F_ACTION, F_INPUT, F_IDEMPOTENCY_KEY, F_PROPOSER, F_PRIORITY, F_WAIT_MS,
       F_DEADLINE_MS, N_FIELDS };

/* Which known field key is, or N_FIELDS. */
static int field_index(const char *key)
{
    static const char *const known[N_FIELDS] = {"connector", "action", "input", "idempotency_key",
                                                "proposer", "priority", "wait_ms", "deadline_ms"};
    int i;
    switch (key[0]) { /* one comparison instead of up to eight */
    case 'c': i = F_CONNECTOR; break;
    case 'a': i = F_ACTION; break;
    case 'i': i = key[1] == 'n' ? F_INPUT : F_IDEMPOTENCY_KEY; break;
    case 'p': i = key[1] == 'r' && key[2] == 'o' ? F_PROPOSER : F_PRIORITY; break;
    case 'w': i = F_WAIT_MS; break;
    case 'd': i = F_DEADLINE_MS; break;
    default: return N_FIELDS;
    }
    return strcmp(key, known[i]) == 0 ? i : N_FIELDS;
}

/* Parse and check the body; on success rq->submission holds it with defaults filled in. */
static int validate_submission(request *rq)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!body) {
        api_set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s at line %d, column %d",
                        jerr.text, jerr.line, jerr.column);
        return 0;
    }
    rq->submission = body;
    if (!json_is_object(body)) {
        api_set_reply_error(rq, 400, "invalid_request", "request body must be a JSON object");
        return 0;
    }
    /* One pass over the members: each field found once, not looked up by name again. */
    json_t *f[N_FIELDS] = {0};
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        int i = field_index(k);
        if (i == N_FIELDS) {
            api_set_reply_error(rq, 400, "invalid_request", "unknown field \"%s\" (known: connector, action, input, "
                            "idempotency_key, proposer, priority, wait_ms, deadline_ms)", k);
            return 0;
        }
        f[i] = v;
    }
    if (!check_field_type(rq, f[F_CONNECTOR], "connector", JSON_STRING, "a string", 1) ||
        !check_field_type(rq, f[F_ACTION], "action", JSON_STRING, "a string", 1) ||
        !check_field_type(rq, f[F_INPUT], "input", JSON_OBJECT, "an object", 0) ||
        !check_field_type(rq, f[F_IDEMPOTENCY_KEY], "idempotency_key", JSON_STRING, "a string", 0) ||
        !check_field_type(rq, f[F_PROPOSER], "proposer", JSON_OBJECT, "an object", 0) ||
        !check_field_type(rq, f[F_PRIORITY], "priority", JSON_INTEGER, "an integer", 0) ||
        !check_field_type(rq, f[F_WAIT_MS], "wait_ms", JSON_INTEGER, "an integer", 0) ||
        !check_field_type(rq, f[F_DEADLINE_MS], "deadline_ms", JSON_INTEGER, "an integer", 0))
        return 0;
    json_t *deadline = f[F_DEADLINE_MS];
    if (deadline && (json_integer_value(deadline) < 1 || json_integer_value(deadline) > 7LL * 86400000)) {
        api_set_reply_error(rq, 400, "invalid_request", "deadline_ms (milliseconds from now) must be from 1 to %lld",
                        7LL * 86400000);
        return 0;
    }
    const char *key = json_string_value(f[F_IDEMPOTENCY_KEY]);
    if (key && (strlen(key) == 0 || strlen(key) > MAX_KEY_LEN)) {
        api_set_reply_error(rq, 400, "invalid_request", "idempotency_key must be 1 to %d bytes", MAX_KEY_LEN);
        return 0;
    }
    if (f[F_PROPOSER] && !validate_proposer(rq, f[F_PROPOSER]))
        return 0;
    json_int_t wait = json_integer_value(f[F_WAIT_MS]);
    if (wait < 0 || wait > MAX_WAIT_MS) {
        api_set_reply_error(rq, 400, "invalid_request", "wait_ms must be between 0 and %d", MAX_WAIT_MS);
        return 0;
    }
    json_int_t prio = json_integer_value(f[F_PRIORITY]);
    if (prio < -1000 || prio > 1000) {
        api_set_reply_error(rq, 400, "invalid_request", "priority must be between -1000 and 1000");
        return 0;
    }
    rq->wait_ms = (int)wait;
    rq->wait_until = ar_mono_ms() + wait; /* the wait counts from the request */
    if (!f[F_INPUT])
        json_object_set_new(body, "input", json_object());
    if (!f[F_PRIORITY])
        json_object_set_new(body, "priority", json_integer(0));
    if (f[F_WAIT_MS])
        json_object_del(body, "wait_ms");
    return 1;
}

static json_t *find_descriptor_action(const json_t *descriptor, const char *name)
{
    size_t i;
    json_t *act;
    json_array_foreach(json_object_get(descriptor, "actions"), i, act) {
        const char *n = json_string_value(json_object_get(act, "name"));
        if (n && strcmp(n, name) == 0)
            return act;
    }
    return NULL;
}

static void list_action_names(const json_t *descriptor, char *buf, size_t cap)
{
    size_t i, used = 0;
    json_t *act;
    buf[0] = '\0';
    json_array_foreach(json_object_get(descriptor, "actions"), i, act) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "",
                         json_string_value(json_object_get(act, "name")));
        if (n < 0 || (size_t)n >= cap - used)
            break;
        used += (size_t)n;
    }
}

/* Check connector, action and input against the plugin's descriptor. */
static int validate_against_connector(api_server *a, request *rq)
{
    const char *connector = json_string_value(json_object_get(rq->submission, "connector"));
    const char *action = json_string_value(json_object_get(rq->submission, "action"));
    sandbox_snapshot snap;
    if (!a->sched || scheduler_connector(a->sched, connector, &snap) != AR_OK) {
        api_set_reply_error(rq, 404, "unknown_connector", "no connector named \"%s\" is configured; "
                        "GET /v1/connectors lists them", connector);
        return 0;
    }
    rq->descriptor = snap.descriptor; /* owned reference */
    /* A degraded connector (its processes are restarting) still takes work: the action waits
     * durably in the queue. Only a refused plugin, or one never started, is unavailable. */
    if (snap.state == SANDBOX_REFUSED || !snap.descriptor) {
        api_set_reply_error(rq, 503, "connector_unavailable", "connector \"%s\" is %s%s%s", connector,
                        sandbox_state_name(snap.state), snap.message[0] ? ": " : "", snap.message);
        return 0;
    }
    rq->descriptor_action = find_descriptor_action(snap.descriptor, action);
    if (!rq->descriptor_action) {
        char names[512];
        list_action_names(snap.descriptor, names, sizeof names);
        api_set_reply_error(rq, 404, "unknown_action", "connector \"%s\" has no action \"%s\" (it has: %s)",
                        connector, action, names);
        return 0;
    }
    ar_error err = {0};
    if (schema_validate(json_object_get(rq->descriptor_action, "input_schema"),
                        json_object_get(rq->submission, "input"), "input", &err) != AR_OK) {
        api_set_reply_error(rq, 422, "schema_violation", "%s", err.message);
        return 0;
    }
    return 1;
}

/* ---- routes ------------------------------------------------------------------------------- */

static enum MHD_Result suspend_for_worker(api_server *a, request *rq)
{
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    pthread_mutex_lock(&a->work_lock);
    if (a->workers_stopping) {
        pthread_mutex_unlock(&a->work_lock);
        api_set_reply_error(rq, 503, "shutting_down", "the daemon is stopping; submit again after it restarts");
        api_resume(rq);
        return MHD_YES;
    }
    rq->next = NULL;
    if (a->work_tail)
        a->work_tail->next = rq;
    else
        a->work_head = rq;
    a->work_tail = rq;
    pthread_cond_signal(&a->work_cond);
    pthread_mutex_unlock(&a->work_lock);
    return MHD_YES;
}

/* Backpressure: refuse new work, with a time to come back, rather than accept it and let it
 * rot; what was accepted is never dropped. 1: take it; 0: the reply is set. */
static int accept_more(api_server *a, request *rq)
{
    size_t held = a->sched ? scheduler_held(a->sched) : 0;
    if (held >= a->cfg->max_queue_depth) {
        rq->retry_after_s = 1;
        api_set_reply_error(rq, 429, "queue_full", "%zu actions are waiting to run (max_queue_depth %zu); "
                        "submit again after Retry-After", held, a->cfg->max_queue_depth);
        return 0;
    }
    journal_stats st;
    journal_get_stats(a->journal, &st);
    if (st.map_size && st.map_used * 10 >= st.map_size * 9) {
        rq->retry_after_s = 30;
        api_set_reply_error(rq, 503, "storage_nearly_full", "the journal is %zu%% full (map_size_mb %zu): raise "
                        "map_size_mb, or back up and compact the data directory", st.map_used * 100 / st.map_size,
                        a->cfg->map_size_mb);
        return 0;
    }
    return 1;
}

enum MHD_Result api_route_submit(api_server *a, request *rq)
{
    if (rq->too_large) {
        api_set_reply_error(rq, 413, "body_too_large", "request body exceeds max_body_bytes (%zu bytes)",
                        a->cfg->max_body_bytes);
        return api_queue_reply(rq);
    }
    if (!validate_submission(rq) || !validate_against_connector(a, rq) || !accept_more(a, rq))
        return api_queue_reply(rq);
    return suspend_for_worker(a, rq);
}

void api_route_get_action(api_server *a, request *rq, const char *id)
{
    json_t *rec;
    ar_error err = {0};
    if (strlen(id) != ACTION_ID_LEN) {
        api_set_reply_error(rq, 404, "not_found", "no action with id \"%s\" (ids are %d characters)", id, ACTION_ID_LEN);
        return;
    }
    int rc = action_load_by_id(a->journal, id, &rec, &err);
    if (rc == AR_OK && rq->own_only && strcmp(action_record_str(rec, "submitter"), rq->who.name) != 0) {
        /* Another submitter's action does not exist for this caller. */
        json_decref(rec);
        rc = ar_error_set(&err, AR_E_NOTFOUND, "not_found", "no action with id %s", id);
    }
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    api_set_reply_action(rq, 200, rec);
    json_decref(rec);
}

void api_route_list_actions(api_server *a, request *rq)
{
    const char *state = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "state");
    const char *connector = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "connector");
    const char *after = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "after");
    const char *limit_s = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "limit");
    const char *review = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "review");
    action_filter f = {.state = -1, .connector = connector && *connector ? connector : NULL,
                       .submitter = rq->own_only ? rq->who.name : NULL};
    if (state && *state && (f.state = action_state_from_name(state)) < 0) {
        api_set_reply_error(rq, 400, "invalid_request", "unknown state \"%s\" (e.g. READY, SUCCEEDED, FAILED, DENIED)", state);
        return;
    }
    if (review && *review) {
        if (strcmp(review, "true") && strcmp(review, "false")) {
            api_set_reply_error(rq, 400, "invalid_request", "review must be true or false");
            return;
        }
        f.review = strcmp(review, "true") == 0;
    }
    long limit = 50;
    if (limit_s && *limit_s) {
        char *end;
        limit = strtol(limit_s, &end, 10);
        if (*end || limit < 1 || limit > MAX_LIST_LIMIT) {
            api_set_reply_error(rq, 400, "invalid_request", "limit must be an integer from 1 to %d", MAX_LIST_LIMIT);
            return;
        }
    }
    json_t *page;
    char next[ACTION_ID_LEN + 1];
    ar_error err = {0};
    int rc = action_list(a->journal, &f, after, (size_t)limit, &page, next, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    api_reply_page(rq, "actions", page, next, action_render);
}

/* ---- cancel and resolve ---------------------------------------------------------------------- */

/* Load an action the caller may see; otherwise set a 404 and return NULL. */
json_t *api_load_visible(api_server *a, request *rq, const char *id)
{
    json_t *rec = NULL;
    ar_error err = {0};
    int rc = strlen(id) == ACTION_ID_LEN ? action_load_by_id(a->journal, id, &rec, &err)
                                         : ar_error_set(&err, AR_E_NOTFOUND, "not_found", "no action with id %s", id);
    if (rc == AR_OK && rq->own_only && strcmp(action_record_str(rec, "submitter"), rq->who.name) != 0) {
        json_decref(rec);
        rec = NULL;
        rc = ar_error_set(&err, AR_E_NOTFOUND, "not_found", "no action with id %s", id);
    }
    if (rc != AR_OK)
        api_set_reply_ar_error(rq, rc, &err);
    return rc == AR_OK ? rec : NULL;
}

/* The scheduler's answer to a cancel (loop or journal thread). */
static void cancel_answered(void *arg, int status, const json_t *rec)
{
    request *rq = arg;
    if (status == AR_OK) {
        api_set_reply_action(rq, 200, rec);
    } else if (status == AR_E_BUSY) {
        json_t *view = action_render(rec);
        json_object_set_new(view, "cancel", json_string("requested: a call is in flight; the action is "
                                                        "cancelled when it returns, unless it succeeded"));
        api_set_reply_json(rq, 202, view);
    } else {
        /* Not held by the scheduler: it ended meanwhile, or waits elsewhere. */
        json_t *now = NULL;
        if (action_load_by_id(rq->api->journal, rq->action_id, &now, NULL) == AR_OK &&
            action_state_terminal(action_record_state(now)))
            api_set_reply_error(rq, 409, "already_terminal", "action %s is already %s", rq->action_id,
                            action_state_name(action_record_state(now)));
        else
            api_set_reply_error(rq, 409, "not_cancellable", "action %s is %s and cannot be cancelled now",
                            rq->action_id, now ? action_state_name(action_record_state(now)) : "unknown");
        json_decref(now);
    }
    api_resume(rq);
}

enum MHD_Result api_route_cancel(api_server *a, request *rq, const char *id)
{
    json_t *rec = api_load_visible(a, rq, id);
    if (!rec)
        return api_queue_reply(rq);
    action_state st = action_record_state(rec);
    json_decref(rec);
    if (action_state_terminal(st)) {
        api_set_reply_error(rq, 409, "already_terminal", "action %s is already %s", id, action_state_name(st));
        return api_queue_reply(rq);
    }
    if (st == ACTION_PENDING_APPROVAL) {
        /* Waiting for a human: nothing ran, the scheduler does not hold it. */
        json_t *done = NULL;
        ar_error err = {0};
        int rc = approvals_cancel(a->journal, id, rq->who.name, &done, &err);
        if (rc == AR_OK) {
            api_action_changed(a, done);
            api_set_reply_action(rq, 200, done);
            json_decref(done);
            return api_queue_reply(rq);
        }
        if (rc != AR_E_EXISTS) { /* AR_E_EXISTS: decided meanwhile; the scheduler may hold it now */
            api_set_reply_ar_error(rq, rc, &err);
            return api_queue_reply(rq);
        }
    }
    snprintf(rq->action_id, sizeof rq->action_id, "%s", id);
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    int rc = scheduler_cancel(a->sched, id, rq->who.name, cancel_answered, rq);
    if (rc != AR_OK) {
        if (rc == AR_E_CLOSED)
            api_set_reply_error(rq, 503, "shutting_down", "the daemon is stopping; try again once it is back");
        else
            api_set_reply_error(rq, 500, "internal", "out of memory");
        api_resume(rq);
    }
    return MHD_YES;
}

typedef struct resolution {
    const char *id, *outcome, *reason, *who;
    json_t *rec;          /* the record as written (new reference), set by the callback */
} resolution;

/* Writer thread, inside the transaction: only an UNKNOWN_OUTCOME action can be resolved, so
 * two operators resolving at once cannot both win. */
static int apply_resolution(journal_txn *txn, void *arg, ar_error *err)
{
    resolution *r = arg;
    json_decref(r->rec);
    r->rec = NULL;
    json_t *rec;
    if (action_txn_load(txn, r->id, &rec) != AR_OK)
        return ar_error_set(err, AR_E_NOTFOUND, "not_found", "no action with id %s", r->id);
    if (action_record_state(rec) != ACTION_UNKNOWN_OUTCOME) {
        int rc = ar_error_set(err, AR_E_EXISTS, "not_unknown_outcome", "action %s is %s; only UNKNOWN_OUTCOME "
                              "actions are resolved", r->id, action_state_name(action_record_state(rec)));
        json_decref(rec);
        return rc;
    }
    int64_t now = ar_now_ms();
    json_object_set_new(rec, "resolution", json_pack("{s:s, s:s, s:s, s:I}", "by", r->who, "outcome", r->outcome,
                                                     "reason", r->reason, "at_ms", (json_int_t)now));
    action_state st = ACTION_FAILED;
    if (strcmp(r->outcome, "succeeded") == 0) {
        st = ACTION_SUCCEEDED;
        json_object_del(rec, "error");
    } else if (strcmp(r->outcome, "retry") == 0) {
        /* The operator checked that nothing happened: another attempt with the same key. */
        st = ACTION_READY;
        json_object_set_new(rec, "maybe_happened", json_false());
        json_object_del(rec, "finished_ms");
        /* A fresh attempt budget on top of what was spent. */
        json_object_set_new(rec, "attempt_allowance", json_integer(json_integer_value(json_object_get(rec, "attempts"))));
        int64_t deadline = json_integer_value(json_object_get(rec, "deadline_ms"));
        if (deadline && deadline < now + 60000)
            json_object_set_new(rec, "deadline_ms", json_integer(now + 300000));
    }
    action_record_set_state(rec, st, now);
    int rc = action_txn_store(txn, rec);
    if (rc == AR_OK)
        rc = audit_txn_append(txn, "resolved", r->id, json_pack("{s:s, s:s, s:s}", "outcome", r->outcome, "by", r->who,
                              "reason", r->reason), now, NULL, err);
    if (rc != AR_OK) {
        json_decref(rec);
        return err && err->code[0] ? rc : ar_error_set(err, rc, rc == AR_E_FULL ? "storage_full" : "internal",
                                                       "cannot store the resolution");
    }
    r->rec = rec;
    return AR_OK;
}

void api_route_resolve(api_server *a, request *rq, const char *id)
{
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const char *outcome = json_string_value(json_object_get(body, "outcome"));
    const char *reason = json_string_value(json_object_get(body, "reason"));
    if (!body) {
        api_set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s", jerr.text);
        return;
    }
    if (!outcome || !reason || !*reason || json_object_size(body) != 2 ||
        (strcmp(outcome, "succeeded") && strcmp(outcome, "failed") && strcmp(outcome, "retry"))) {
        json_decref(body);
        api_set_reply_error(rq, 400, "invalid_request", "expected {\"outcome\": \"succeeded\"|\"failed\"|\"retry\", "
                        "\"reason\": \"what you checked\"}");
        return;
    }
    if (strlen(id) != ACTION_ID_LEN) {
        json_decref(body);
        api_set_reply_error(rq, 404, "not_found", "no action with id %s", id);
        return;
    }
    resolution r = {.id = id, .outcome = outcome, .reason = reason, .who = rq->who.name};
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, apply_resolution, &r);
    ar_error err = {0};
    int rc = journal_commit(a->journal, b, &err);
    journal_batch_free(b);
    if (rc != AR_OK) {
        api_set_reply_error(rq, rc == AR_E_EXISTS ? 409 : api_status_for_error(rc), err.code[0] ? err.code : "internal",
                        "%s", err.message);
    } else {
        ar_log("info", "action %s resolved as %s by %s", id, outcome, rq->who.name);
        api_action_changed(a, r.rec);
        api_set_reply_action(rq, 200, r.rec);
        if (action_record_state(r.rec) == ACTION_READY)
            scheduler_enqueue(a->sched, json_deep_copy(r.rec));
    }
    json_decref(r.rec);
    json_decref(body);
}

void api_reply_page(request *rq, const char *key, json_t *page, const char *next, json_t *(*render)(const json_t *))
{
    json_t *out = json_array();
    size_t i;
    json_t *rec;
    json_array_foreach(page, i, rec)
        json_array_append_new(out, render(rec));
    json_decref(page);
    api_set_reply_json(rq, 200, json_pack("{s:o, s:o}", key, out, "next", next[0] ? json_string(next) : json_null()));
}
