/*
 * action.h - the action record: its states, its stored form, and its journal keys.
 *
 * An action is stored in JDB_ACTIONS under its id as a JSON object (the "record"). Ids are
 * ULIDs (26 Crockford base32 characters: 48-bit millisecond time + 80 random bits), so the
 * database's key order is creation order and listing newest-first is a backwards cursor walk.
 * JDB_IDEMPOTENCY maps (connector, idempotency key) to (id, payload digest). JDB_QUEUE holds
 * every action that is not terminal yet (id -> connector): it is what recovery scans at start,
 * so start-up cost follows the work in flight, not the size of the history.
 *
 * Record fields (besides those below: deadline_ms, history [one entry per attempt and lookup:
 * kind, attempt, key, digest, deadline_ms, started_ms, finished_ms, outcome, http_status,
 * latency_ms, message], maybe_happened, next_attempt_ms, reconcile, resolution): id, connector, action, effect, idempotency_key, submitter (the token name
 * that submitted it), input, proposer, priority,
 * digest (hex BLAKE2b-256 of the canonical action+input), decision {verdict, reason, rule,
 * policy, policy_version}, validation {ok, reason, rule, policy, policy_error} and review (true)
 * when validate rejected the result, state, attempts, result, error {class, message}, created_ms,
 * updated_ms, finished_ms. action_render turns a record into the API's shape.
 */
#ifndef ACTION_H
#define ACTION_H

#include <stddef.h>
#include <jansson.h>

#include "ar.h"
#include "journal.h"

#define ACTION_ID_LEN 26
#define ACTION_DIGEST_LEN 32

typedef enum action_state {
    ACTION_RECEIVED = 0,
    ACTION_DENIED,
    ACTION_SUGGESTED,
    ACTION_PENDING_APPROVAL,
    ACTION_APPROVED,
    ACTION_REJECTED,
    ACTION_EXPIRED,
    ACTION_READY,
    ACTION_DISPATCHED,
    ACTION_RETRY_WAIT,
    ACTION_SUCCEEDED,
    ACTION_FAILED,
    ACTION_UNKNOWN_OUTCOME,
    ACTION_CANCELLED,
    ACTION_STATE_COUNT
} action_state;

const char *action_state_name(action_state s);
/* -1 for an unknown name. */
int action_state_from_name(const char *name);
/* Terminal: nothing more will happen without an operator. */
int action_state_terminal(action_state s);
/* Worth answering a waiting client: terminal, or waiting on a human. */
int action_state_settled(action_state s);

/* A new ULID into out (ACTION_ID_LEN chars + NUL). Monotonic within this process. */
void action_id_new(char out[ACTION_ID_LEN + 1]);
/* The first 10 characters of every id created at ms (the ULID's time part): ids sort by it, so
 * a cursor seek to it finds the first action created at or after ms. */
void action_id_time_prefix(int64_t ms, char out[11]);

/* BLAKE2b-256 over the canonical (sorted keys, compact) JSON of {"action", "input"}. */
int action_payload_digest(const char *action, const json_t *input,
                          unsigned char out[ACTION_DIGEST_LEN]);

/* Record accessors (borrowed record). */
action_state action_record_state(const json_t *rec);
const char *action_record_str(const json_t *rec, const char *field); /* "" when absent */

/* Set state and updated_ms (and finished_ms when terminal). */
void action_record_set_state(json_t *rec, action_state s, int64_t now_ms);

/* A time stored as milliseconds (a JSON integer) as the API shows it: an RFC 3339 UTC string,
 * or null when absent. A new reference. */
json_t *action_time_json(const json_t *ms_value);

/* The API's view of a record: a new reference owned by the caller. Timestamps become
 * RFC 3339 UTC strings; internal fields (digest, *_ms) are dropped. */
json_t *action_render(const json_t *rec);

/* The text of action_render(rec) (compact), written straight from the record without building
 * the rendered value: every answered action goes through it. NUL-terminated, the caller frees
 * it; NULL when out of memory or a string in the record is not UTF-8. */
char *action_render_text(const json_t *rec);

/* ---- journal keys and batch helpers ---------------------------------------------------- */

/* Idempotency key, scoped per connector and per submitter (two submitters never share a key):
 * connector '\0' submitter '\0' key. Returns the length written (<= cap) or 0 if too long. */
size_t action_idem_key(char *buf, size_t cap, const char *connector, const char *submitter,
                       const char *key);
/* Idempotency value: id (26 bytes) followed by the digest (32 bytes). */
#define ACTION_IDEM_VALUE_LEN (ACTION_ID_LEN + ACTION_DIGEST_LEN)

/* Add "store this record" to a batch (JDB_ACTIONS), and keep JDB_QUEUE in step with its
 * state: present while non-terminal, deleted once terminal. A non-terminal record's text is
 * followed by up to ACTION_RECORD_ROOM blanks (room to grow in place, never past
 * ACTION_RECORD_PADDED_MAX bytes): a reader of the stored bytes must allow blanks after the
 * JSON, as json_loadb does. */
#define ACTION_RECORD_ROOM 320
#define ACTION_RECORD_PADDED_MAX 1990
int action_batch_store(journal_batch *b, const json_t *rec);

/* The same inside a journal apply callback (the writer's transaction): store a record (and
 * its queue entry), or load one (*out a new reference; AR_E_NOTFOUND). */
int action_txn_store(journal_txn *txn, const json_t *rec);
int action_txn_load(journal_txn *txn, const char *id, json_t **out);

/* Load one record by id from a read snapshot; *out is a new reference. AR_E_NOTFOUND. */
int action_load(journal_read *r, const char *id, json_t **out, ar_error *err);
/* Same, opening its own snapshot. */
int action_load_by_id(journal *j, const char *id, json_t **out, ar_error *err);

/* A page of records, newest first, optionally filtered; after: an id to continue after
 * (exclusive), or NULL. *page is a new JSON array of records; *next the id to continue with
 * (written into next_out, "" when the walk ended). Scans at most max_scan records. */
typedef struct action_filter {
    int state;              /* -1: any */
    const char *connector;  /* NULL: any */
    const char *submitter;  /* NULL: any */
    int review;             /* 1: only those flagged for review (a result validate rejected) */
} action_filter;
int action_list(journal *j, const action_filter *f, const char *after, size_t limit,
                json_t **page, char next_out[ACTION_ID_LEN + 1], ar_error *err);

#endif
