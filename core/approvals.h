/*
 * approvals.h - the human approval queue: who may decide a parked action, and the decision.
 *
 * A policy verdict "approve" parks the action as PENDING_APPROVAL with an "approval" object on
 * its record: the roles that may decide (named by the policy), when it expires, the summary
 * shown to the human, the rule that asked, and four_eyes (the submitter may not approve its own
 * action). A decision is journaled conditionally — inside the writer's transaction the action
 * must still be pending — so two approvers deciding at once cannot both win; the record keeps
 * who, when, the decision and the comment.
 *
 * A role a policy names is matched against the deciding token through the config's
 * "approvers" map (role -> ["approver", "token:alice", ...]: token roles, or token names after
 * "token:"); a role the map does not name matches a token role or token name equal to it.
 */
#ifndef APPROVALS_H
#define APPROVALS_H

#include <jansson.h>

#include "ar.h"
#include "auth.h"
#include "journal.h"
#include "policy.h"

/* Put the approval request on a record (now: the decision time). */
void approvals_request(json_t *rec, const policy_decision *d, int64_t now_ms, int64_t default_expiry_s);

/* May this token decide the record's approval? AR_OK, or AR_E_INVALID with code "forbidden"
 * (a role the policy named is missing) or "four_eyes" (the submitter itself). approvers: the
 * config's map (borrowed, may be NULL). */
int approvals_may_decide(const json_t *approvers, const json_t *rec, const auth_identity *who, ar_error *err);

/* Decide: "approve" → APPROVED (its deadline then counts again from the approval: the wait for
 * a human is not charged to it), "reject" → REJECTED, conditionally as described above.
 * *rec_out: the record as stored (new reference). Errors: AR_E_NOTFOUND "not_found";
 * AR_E_EXISTS "already_decided" (decided otherwise), "approval_expired" (then the expiry is
 * stored and *rec_out is the EXPIRED record, if it was still pending), "not_pending"; a repeat
 * of the same decision is AR_OK with the record as it is (idempotent), *changed = 0. */
int approvals_decide(journal *j, const json_t *approvers, const char *id, const char *decision,
                     const char *comment, const auth_identity *who, json_t **rec_out, int *changed,
                     ar_error *err);

/* Expire a pending approval whose time has passed: EXPIRED, journaled. AR_OK with *rec_out (new
 * reference) when it expired now; AR_E_EXISTS when it is no longer pending (or not due). */
int approvals_expire(journal *j, const char *id, json_t **rec_out, ar_error *err);

/* Cancel an action still waiting for approval: CANCELLED, journaled conditionally. AR_OK with
 * *rec_out (new reference); AR_E_EXISTS when it is no longer pending. who: recorded. */
int approvals_cancel(journal *j, const char *id, const char *who, json_t **rec_out, ar_error *err);

/* The approval view of a record for the API (new reference). */
json_t *approvals_view(const json_t *rec);

#endif
