/* approvals.c - parked actions and human decisions (see approvals.h). */
#include "approvals.h"

#include "audit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "action.h"

void approvals_request(json_t *rec, const policy_decision *d, int64_t now_ms, int64_t default_expiry_s)
{
    json_t *roles = json_array();
    for (int i = 0; i < d->n_roles; i++)
        json_array_append_new(roles, json_string(d->roles[i]));
    int64_t expiry = d->expires_in_s > 0 ? d->expires_in_s : default_expiry_s;
    json_object_set_new(rec, "approval", json_pack("{s:o, s:I, s:s, s:b, s:s, s:s, s:I}", "roles", roles,
                                                   "expires_ms", (json_int_t)(now_ms + expiry * 1000),
                                                   "summary", d->summary, "four_eyes", d->four_eyes,
                                                   "rule", d->rule, "policy", d->file,
                                                   "requested_ms", (json_int_t)now_ms));
}

/* Does the token fill the role the policy named? */
static int fills_role(const json_t *approvers, const char *role, const auth_identity *who)
{
    const json_t *mapped = approvers ? json_object_get(approvers, role) : NULL;
    if (!mapped) {
        unsigned bit;
        if (auth_roles_parse(role, &bit, NULL) == AR_OK && (who->roles & bit))
            return 1;
        return strcmp(role, who->name) == 0;
    }
    size_t i;
    json_t *entry;
    json_array_foreach(mapped, i, entry) {
        const char *e = json_string_value(entry);
        if (!e)
            continue;
        if (strncmp(e, "token:", 6) == 0) {
            if (strcmp(e + 6, who->name) == 0)
                return 1;
            continue;
        }
        unsigned bit;
        if (auth_roles_parse(e, &bit, NULL) == AR_OK && (who->roles & bit))
            return 1;
    }
    return 0;
}

int approvals_may_decide(const json_t *approvers, const json_t *rec, const auth_identity *who, ar_error *err)
{
    const json_t *ap = json_object_get(rec, "approval");
    if (json_is_true(json_object_get(ap, "four_eyes")) &&
        strcmp(action_record_str(rec, "submitter"), who->name) == 0)
        return ar_error_set(err, AR_E_INVALID, "four_eyes", "this action needs four eyes: %s submitted it and "
                            "may not approve it; another approver must decide", who->name);
    const json_t *roles = json_object_get(ap, "roles");
    if (json_array_size(roles) == 0)
        return AR_OK;
    size_t i;
    json_t *r;
    char named[256] = "";
    size_t used = 0;
    json_array_foreach(roles, i, r) {
        const char *role = json_string_value(r);
        if (role && fills_role(approvers, role, who))
            return AR_OK;
        int n = snprintf(named + used, sizeof named - used, "%s%s", i ? ", " : "", role ? role : "?");
        if (n > 0 && (size_t)n < sizeof named - used)
            used += (size_t)n;
    }
    return ar_error_set(err, AR_E_INVALID, "forbidden", "the policy asked for an approver in role %s; token %s "
                        "holds none of them", named, who->name);
}

typedef struct decide_op {
    const char *id, *decision, *comment, *who;
    const json_t *approvers;
    const auth_identity *identity;
    int expire_only;
    int cancel;
    int64_t now;
    json_t *rec;        /* result, new reference */
    int changed;
    int due;            /* a decision found the approval past its expiry */
} decide_op;

/* Writer thread, inside the transaction: the state decides what is allowed. */
static int apply_decision(journal_txn *txn, void *arg, ar_error *err)
{
    decide_op *op = arg;
    json_decref(op->rec);
    op->rec = NULL;
    op->changed = 0;
    json_t *rec;
    if (action_txn_load(txn, op->id, &rec) != AR_OK)
        return ar_error_set(err, AR_E_NOTFOUND, "not_found", "no action with id %s", op->id);
    json_t *ap = json_object_get(rec, "approval");
    action_state st = action_record_state(rec);
    int64_t expires = json_integer_value(json_object_get(ap, "expires_ms"));
    int rc = AR_OK;
    if (st != ACTION_PENDING_APPROVAL) {
        const char *before = json_string_value(json_object_get(ap, "decision"));
        if (!op->expire_only && before && strcmp(before, op->decision) == 0) {
            op->rec = rec; /* the same decision again: nothing changes */
            return AR_OK;
        }
        if (st == ACTION_EXPIRED)
            rc = ar_error_set(err, AR_E_EXISTS, "approval_expired", "the approval of %s expired; submit the "
                              "action again if it is still wanted", op->id);
        else if (before)
            rc = ar_error_set(err, AR_E_EXISTS, "already_decided", "%s was already %s by %s", op->id,
                              strcmp(before, "approve") == 0 ? "approved" : strcmp(before, "reject") == 0 ? "rejected"
                                                                                                      : "cancelled",
                              json_string_value(json_object_get(ap, "by")));
        else
            rc = ar_error_set(err, AR_E_EXISTS, "not_pending", "%s is %s, not waiting for approval", op->id,
                              action_state_name(st));
        json_decref(rec);
        return rc;
    }
    if (!op->expire_only && !op->cancel && expires && op->now >= expires) {
        json_decref(rec);
        op->due = 1;
        return ar_error_set(err, AR_E_EXISTS, "approval_expired", "the approval of %s expired; submit the "
                            "action again if it is still wanted", op->id);
    }
    if (op->cancel) {
        char msg[160];
        snprintf(msg, sizeof msg, "cancelled by %s while it waited for approval", op->who);
        json_object_set_new(ap, "decision", json_string("cancel"));
        json_object_set_new(ap, "by", json_string(op->who));
        json_object_set_new(ap, "decided_ms", json_integer(op->now));
        json_object_set_new(rec, "cancel_requested_by", json_string(op->who));
        json_object_set_new(rec, "error", json_pack("{s:s, s:s}", "class", "cancelled", "message", msg));
        action_record_set_state(rec, ACTION_CANCELLED, op->now);
    } else if (op->expire_only) {
        if (!expires || op->now < expires) {
            json_decref(rec);
            return ar_error_set(err, AR_E_EXISTS, "not_due", "%s is not due to expire", op->id);
        }
        json_object_set_new(ap, "decision", json_string("expire"));
        json_object_set_new(ap, "decided_ms", json_integer(op->now));
        json_object_set_new(rec, "error", json_pack("{s:s, s:s}", "class", "expired", "message",
                                                    "nobody decided before the approval expired"));
        action_record_set_state(rec, ACTION_EXPIRED, op->now);
    } else {
        if ((rc = approvals_may_decide(op->approvers, rec, op->identity, err)) != AR_OK) {
            json_decref(rec);
            return rc;
        }
        int approve = strcmp(op->decision, "approve") == 0;
        json_object_set_new(ap, "decision", json_string(op->decision));
        json_object_set_new(ap, "by", json_string(op->who));
        json_object_set_new(ap, "comment", json_string(op->comment ? op->comment : ""));
        json_object_set_new(ap, "decided_ms", json_integer(op->now));
        if (!approve)
            json_object_set_new(rec, "error", json_pack("{s:s, s:s}", "class", "rejected", "message",
                                                        op->comment && *op->comment ? op->comment : "rejected"));
        /* Time spent waiting for a human does not eat the action's deadline: it gets the same
         * budget again from the approval on. */
        int64_t deadline = json_integer_value(json_object_get(rec, "deadline_ms"));
        int64_t created = json_integer_value(json_object_get(rec, "created_ms"));
        if (approve && deadline > created)
            json_object_set_new(rec, "deadline_ms", json_integer(op->now + (deadline - created)));
        action_record_set_state(rec, approve ? ACTION_APPROVED : ACTION_REJECTED, op->now);
    }
    int wrc = action_txn_store(txn, rec);
    if (wrc == AR_OK) {
        const char *decided = op->cancel ? "cancel" : op->expire_only ? "expire" : op->decision;
        wrc = audit_txn_append(txn, "approval_decided", op->id, json_pack("{s:s, s:s, s:s}", "decision", decided,
                               "by", op->who ? op->who : "", "comment", op->comment ? op->comment : ""),
                               op->now, NULL, NULL);
    }
    if (wrc != AR_OK) {
        json_decref(rec);
        return ar_error_set(err, wrc, wrc == AR_E_FULL ? "storage_full" : "internal", "cannot store the decision");
    }
    op->changed = 1;
    op->rec = rec;
    return AR_OK;
}

static int run(journal *j, decide_op *op, json_t **rec_out, int *changed, ar_error *err)
{
    journal_batch *b = journal_batch_new();
    journal_batch_apply(b, apply_decision, op);
    int rc = journal_commit(j, b, err);
    journal_batch_free(b);
    if (changed)
        *changed = op->changed;
    if (rc == AR_OK)
        *rec_out = op->rec;
    else
        json_decref(op->rec);
    return rc;
}

int approvals_decide(journal *j, const json_t *approvers, const char *id, const char *decision,
                     const char *comment, const auth_identity *who, json_t **rec_out, int *changed,
                     ar_error *err)
{
    decide_op op = {.id = id, .decision = decision, .comment = comment, .who = who->name,
                    .approvers = approvers, .identity = who, .now = ar_now_ms()};
    *rec_out = NULL;
    int rc = run(j, &op, rec_out, changed, err);
    if (rc == AR_E_EXISTS && op.due) {
        /* Found past its time: store the expiry now (the decision stays refused). */
        json_t *expired = NULL;
        if (approvals_expire(j, id, &expired, NULL) == AR_OK)
            *rec_out = expired;
    }
    return rc;
}

int approvals_expire(journal *j, const char *id, json_t **rec_out, ar_error *err)
{
    decide_op op = {.id = id, .decision = "expire", .expire_only = 1, .now = ar_now_ms()};
    *rec_out = NULL;
    return run(j, &op, rec_out, NULL, err);
}

int approvals_cancel(journal *j, const char *id, const char *who, json_t **rec_out, ar_error *err)
{
    decide_op op = {.id = id, .decision = "cancel", .cancel = 1, .who = who, .now = ar_now_ms()};
    *rec_out = NULL;
    return run(j, &op, rec_out, NULL, err);
}

json_t *approvals_view(const json_t *rec)
{
    const json_t *ap = json_object_get(rec, "approval");
    action_state st = action_record_state(rec);
    const char *state = st == ACTION_PENDING_APPROVAL ? "pending"
                        : st == ACTION_REJECTED       ? "rejected"
                        : st == ACTION_EXPIRED        ? "expired"
                        : st == ACTION_CANCELLED      ? "cancelled"
                                                      : "approved";
    json_t *decision = json_object_get(ap, "decision");
    return json_pack("{s:s, s:s, s:s, s:s, s:O, s:O, s:s, s:O, s:O, s:O, s:O, s:o, s:o, s:O, s:O, s:O, s:o, s:s}",
                     "id", action_record_str(rec, "id"), "state", state,
                     "connector", action_record_str(rec, "connector"), "action", action_record_str(rec, "action"),
                     "input", json_object_get(rec, "input") ? json_object_get(rec, "input") : json_null(),
                     "proposer", json_object_get(rec, "proposer") ? json_object_get(rec, "proposer") : json_null(),
                     "submitter", action_record_str(rec, "submitter"),
                     "roles", json_object_get(ap, "roles") ? json_object_get(ap, "roles") : json_array(),
                     "summary", json_object_get(ap, "summary") ? json_object_get(ap, "summary") : json_null(),
                     "four_eyes", json_object_get(ap, "four_eyes") ? json_object_get(ap, "four_eyes") : json_false(),
                     "rule", json_object_get(ap, "rule") ? json_object_get(ap, "rule") : json_null(),
                     "requested_at", action_time_json(json_object_get(ap, "requested_ms")),
                     "expires_at", action_time_json(json_object_get(ap, "expires_ms")),
                     "decision", decision ? decision : json_null(),
                     "decided_by", json_object_get(ap, "by") ? json_object_get(ap, "by") : json_null(),
                     "comment", json_object_get(ap, "comment") ? json_object_get(ap, "comment") : json_null(),
                     "decided_at", action_time_json(json_object_get(ap, "decided_ms")),
                     "action_state", action_state_name(st));
}
