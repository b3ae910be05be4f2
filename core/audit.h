/*
 * audit.h - the hash-chained audit trail: why everything happened, provably unaltered.
 *
 * Entries live in the journal's environment and are appended inside the same transaction as
 * the state change they describe (never one without the other): audit_txn_append runs inside a
 * journal apply callback; audit_batch_append adds such a callback to a batch. The chain head is
 * read inside that transaction, so appends from several threads or processes (the daemon and
 * an offline aioctl) stay in one chain.
 *
 * The head (last seq and its chain) is the last entry's: its key gives the seq, and an entry as
 * written here ends with its "chain", read from there without parsing; any other last entry
 * (an erased one, one written otherwise) is parsed. An append writes only its entry and its
 * index key. Earlier versions also kept a head record (JDB_META, key AUDIT_HEAD_KEY: seq and
 * chain, 40 bytes) written with every append; it is now ignored, neither read nor written nor
 * removed, so a journal that holds one (stale from the first append on) keeps working, and so
 * does an older writer appending to this journal (it trusted the record only when it matched
 * the last entry, and otherwise took the head from that entry).
 *
 * An entry (JDB_AUDIT, key: seq as 8 bytes big-endian; value: compact JSON):
 *   {"seq": n, "time_ms": t, "type": "...", "action": "<id>" | null, "data": {...},
 *    "digest": "<hex BLAKE2b-256 of the body>", "chain": "<hex BLAKE2b-256(prev chain || digest)>"}
 * where the body is the canonical JSON (sorted keys, compact, jansson JSON_SORT_KEYS |
 * JSON_COMPACT) of {"seq", "time_ms", "type", "action", "data"}, and prev chain is the previous
 * entry's chain (32 zero bytes for seq 1; seqs start at 1 and have no gaps). The chain covers
 * digests, not bodies, so a body can later be erased (compaction: "data" becomes null and
 * "erased": true) while the chain still verifies. JDB_AUDIT_INDEX maps action id (26 bytes) +
 * seq (8 bytes BE) -> empty, for one action's story without a scan.
 *
 * Bounded history (audit_txn_cut): the oldest entries may be deleted, always a prefix of the
 * chain, with their index keys. The anchor (JDB_META, key AUDIT_ANCHOR_KEY, compact JSON
 * {"seq": S, "chain": "<hex chain of S>", "time_ms": <S's time>, "cut_ms": <the cut's time>})
 * then says where the trail starts (at S + 1, chaining from that chain), and an audit_cut entry
 * appended in the same transaction records the same cut in the chain itself, so that an
 * anchor cannot be made up without rewriting the chain (which kept heads catch). Without an
 * anchor the trail starts at seq 1 from 32 zero bytes, as before.
 *
 * Event types and their data (what the rest of the daemon appends; see docs/AUDIT.md):
 *   received {connector, action, effect, submitter, proposer, digest, idempotency_key}
 *   decided {verdict, policy_verdict, rule, reason, policy, policy_version, autonomy, votes}
 *   approval_requested {roles, expires_ms, summary, four_eyes}
 *   approval_decided {decision, by, comment}          (also expire and cancel)
 *   dispatched {attempt, idempotency_key, digest}
 *   completed {attempt, outcome, error_class, http_status, latency_ms, cost}
 *   unknown_outcome {attempt, reason}, resolved {outcome, by, reason}
 *   recovered {how}, validation_failed {rule, reason, policy}
 *   cancelled {by}, policy_reloaded {version, files, why}, config_loaded {digest, connectors}
 *   autonomy_changed {pattern, level, by}, token_created / token_revoked {name, roles, by}
 *   secret_set / secret_removed {connector, name, version, by}, vault_rotated {count, by}
 *   connector_paused / connector_resumed {connector, by, reason}, breaker {connector, from, to, why}
 *   audit_cut {through_seq, chain, through_time_ms, by}  (audit_txn_cut: entries up to through_seq
 *     were deleted; chain and through_time_ms are that entry's; by "retention")
 *
 * Never put a secret or a token in data.
 */
#ifndef AUDIT_H
#define AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"
#include "journal.h"
#include "jsonw.h"

#define AUDIT_HASH_HEX 65   /* 64 hex characters + NUL */
#define AUDIT_HEAD_KEY "audit_head"  /* earlier versions' head record in JDB_META: ignored */
#define AUDIT_ANCHOR_KEY "audit_anchor" /* JDB_META: where a cut trail starts (above) */

/* Inside a journal apply callback: append one entry (data: taken; NULL is {}; action_id NULL
 * for events about no action). *seq_out (may be NULL) receives its seq. A type that is empty,
 * an action_id that is not 26 characters, or data that does not survive a JSON round trip
 * unchanged (invalid UTF-8, a NUL in a key, nesting too deep to parse) is AR_E_INVALID, code
 * "audit_invalid"; a last entry that cannot be read (the chain cannot go on from it) is
 * AR_E_FORMAT, code "audit_head_unreadable". */
int audit_txn_append(journal_txn *txn, const char *type, const char *action_id, json_t *data,
                     int64_t now_ms, uint64_t *seq_out, ar_error *err);

/* Add "append this entry" to a batch (at this point of its operations): data is taken (and
 * released before this returns); the time is taken when the batch is built, and so is the
 * entry's text (on the caller's thread: the writer only chains it). What audit_txn_append
 * would refuse makes the batch fail with the same error when it is committed. */
void audit_batch_append(journal_batch *b, const char *type, const char *action_id, json_t *data);

/* audit_batch_append with the data given as JSON text (len bytes, copied): its canonical form,
 * as jsonw_dumps(data, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) writes it (compact, every
 * object's keys in jansson's sorted order, strings escaped as jansson escapes them). The caller
 * vouches for that form; builds without NDEBUG check it (parse, dump, compare) and fail the batch
 * with code "audit_invalid" when it differs, so the test suite catches a caller that drifts.
 * data NULL: the caller could not write its data (a value that is not UTF-8, out of memory);
 * the batch fails with code "audit_invalid", as audit_batch_append's does for such data. */
void audit_batch_append_text(journal_batch *b, const char *type, const char *action_id,
                             const char *data, size_t len);

/* The data of the daemon's own action entries, written as text straight from the action
 * record (rec, borrowed) for audit_batch_append_text, without building a JSON tree: byte for
 * byte the canonical text of the object the daemon used to build with json_pack (keys sorted;
 * an absent value null where that code put null, four_eyes false; {} where json_pack failed:
 * a needed nested value absent, e.g. no "attempts", or a string that is not UTF-8). Each
 * appends to out and returns 0, or -1 with out as it was when a nested value cannot be written
 * (not UTF-8, out of memory: the batch must fail, see audit_batch_append_text's NULL data).
 *   received {action, connector, digest, effect, idempotency_key, proposer, submitter}
 *   approval_requested {expires_ms, four_eyes, roles, summary} from rec's "approval"
 *   dispatched {attempt, digest, idempotency_key}
 *   completed {attempt, cost, error_class, http_status, latency_ms, outcome, state}: the last
 *     history entry's call (its attempt, else rec's "attempts"), the error's class, the state
 *   unknown_outcome {attempt, reason}: the error's message, "" without one
 *   cancelled {by}: cancel_requested_by
 *   recovered {how}: how (its argument is that value, not the record)
 * audit_data_value writes v itself ({} when NULL): decided (the decision), validation_failed
 * (the validation object). */
int audit_data_value(jsonw_buf *out, const json_t *v);
int audit_data_received(jsonw_buf *out, const json_t *rec);
int audit_data_approval_requested(jsonw_buf *out, const json_t *rec);
int audit_data_dispatched(jsonw_buf *out, const json_t *rec);
int audit_data_completed(jsonw_buf *out, const json_t *rec);
int audit_data_unknown_outcome(jsonw_buf *out, const json_t *rec);
int audit_data_cancelled(jsonw_buf *out, const json_t *rec);
int audit_data_recovered(jsonw_buf *out, const json_t *how);

/* Append the entry whose data write(out, arg) writes (one of the above; arg borrowed), through
 * a buffer on the stack: audit_batch_append_text of its text, or of NULL when it fails. */
typedef int (*audit_data_writer)(jsonw_buf *out, const json_t *arg);
void audit_batch_append_data(journal_batch *b, const char *type, const char *action_id,
                             audit_data_writer write, const json_t *arg);

/* One action's entries in order: *out a new JSON array (owned by the caller) of the entries
 * as stored (an entry that cannot be read appears as {"seq": n, "unreadable": true}). An
 * action_id that is not 26 characters is AR_E_INVALID. */
int audit_read_action(journal *j, const char *action_id, json_t **out, ar_error *err);
/* Up to limit entries with seq > after, in order: *out a new array; *next the last seq given
 * (after when none). */
int audit_read_after(journal *j, uint64_t after, size_t limit, json_t **out, uint64_t *next,
                     ar_error *err);
/* Entries whose time_ms >= since_ms, in order, written as JSON lines to fd (audit export). */
int audit_export(journal *j, int64_t since_ms, int fd, size_t *count, ar_error *err);

/* The head: the last seq (0 when empty) and its chain (hex; "" when empty), read as an append
 * reads it (above); a last entry that cannot be read is AR_E_FORMAT, "audit_head_unreadable".
 * A trail with no entry left after a cut (audit_txn_cut leaves its own entry, so only when
 * made otherwise) has the anchor's seq and chain as its head, and appends go on from it; an
 * anchor that cannot be read then is AR_E_FORMAT, "audit_anchor_unreadable". */
int audit_head(journal *j, uint64_t *seq, char chain_hex[AUDIT_HASH_HEX], ar_error *err);

typedef struct audit_verify_result {
    int ok;
    uint64_t entries;               /* entries checked */
    char head[AUDIT_HASH_HEX];      /* the chain of the last entry ("" when empty) */
    uint64_t first_bad_seq;         /* 0 when ok */
    char reason[256];               /* what is wrong at first_bad_seq: "body digest mismatch",
                                       "chain mismatch", "sequence gap (expected N)",
                                       "unreadable entry", "does not match the exported head";
                                       also "out of order: ..." (an entry stored under another
                                       seq's key, e.g. two entries swapped), "not in the action
                                       index", "the action index ..." (first_bad_seq: the seq the
                                       bad index key names); after a cut also "the
                                       anchor is not attested by an audit_cut entry: ...",
                                       "an entry kept below the cut ...", "the action
                                       index names an entry cut by retention ...", "the
                                       audit anchor ... cannot be read" */
    /* Added: bounded history. */
    uint64_t first_seq;             /* where the trail starts: 1, or the anchor's seq + 1 */
    uint64_t cut_through;           /* entries 1..cut_through were cut (0: never cut) */
    int64_t cut_ms;                 /* when the last cut was made (0: never cut) */
    int head_unchecked;             /* the exported head is older than the trail kept (its seq
                                       is below the anchor's): it could not be checked; ok
                                       still says whether the trail kept is sound */
    char head_note[256];            /* why, when head_unchecked: "the kept head (seq N) is older
                                       than the trail kept: entries up to M were cut by
                                       retention at <RFC 3339>" */
} audit_verify_result;

/* Walk the whole chain in one read snapshot: each body (unless erased) against its digest,
 * each chain against prev + digest, seqs without gaps or reordering, and the index against the
 * entries. With expected_seq > 0: the chain at expected_seq must equal expected_head (an
 * exported head, which detects a rewrite of the chain from some point on; a chain that ends
 * before expected_seq fails too: its tail was cut). The first problem in seq order is reported;
 * the index is checked (both ways) once the chain is sound. The result says what is wrong; the
 * return status is for I/O failures only (and AR_E_INVALID, code "audit_head_invalid", for an
 * expected_head that is not 64 hex digits).
 * With an anchor (a cut trail): the walk starts at anchor.seq + 1 from anchor.chain; once the
 * chain kept is sound, the newest audit_cut entry in it must record the anchor's seq, chain and
 * time, and its own time the anchor's cut_ms (else "the anchor is not attested ..."); no index
 * key may name a seq below first_seq. An expected_seq equal to the anchor's seq is checked
 * against the anchor's chain; one below it cannot be checked: head_unchecked and head_note
 * say so, and ok says only whether the trail kept is sound. */
int audit_verify(journal *j, uint64_t expected_seq, const char *expected_head,
                 audit_verify_result *out, ar_error *err);

/* A signed head, for keeping elsewhere: {"seq", "head", "time_ms", "public_key" (hex),
 * "signature" (hex Ed25519 over "aiorun-audit-head-v1\n<seq>\n<head>\n<time_ms>")} — a new
 * object. secret_key: 64 bytes (crypto_sign); NULL: unsigned ({"seq", "head", "time_ms"}). */
int audit_head_document(journal *j, const unsigned char *secret_key, json_t **out, ar_error *err);
/* Check a head document's signature (when it has one) with public_key (32 bytes; NULL: the one
 * it carries): AR_OK or AR_E_INVALID, code "audit_head_signature". Also refused: a document
 * without a well-formed seq, head and time_ms; an unsigned one when public_key is given (a
 * signature was expected); one carrying a public_key other than the one given. */
int audit_head_check(const json_t *doc, const unsigned char *public_key, ar_error *err);

/* Added for aioctl, which signs the head the daemon reports: sign doc ({"seq", "head",
 * "time_ms"}, borrowed and changed in place) as audit_head_document does, adding "public_key"
 * and "signature". AR_E_INVALID (code "audit_head_invalid") for a malformed doc. */
int audit_head_sign(json_t *doc, const unsigned char *secret_key, ar_error *err);

/* Added: compaction. Inside a journal apply callback, erase the body of entry seq: its "data"
 * becomes null and "erased" true; digest and chain stay, so the chain still verifies (the
 * body's digest can no longer be checked). AR_E_NOTFOUND when there is no such entry;
 * erasing an erased entry again is AR_OK. An audit_cut entry keeps its body (verify reads
 * it): AR_E_INVALID, code "audit_cut_kept". A body that does not match its digest (altered)
 * is not erased: AR_E_FORMAT, code "audit_erase_refused" (retention passes over it and the
 * cut refuses it; verify names it). */
int audit_txn_erase(journal_txn *txn, uint64_t seq, ar_error *err);

/* Added: bounded history. Inside a journal apply callback, delete the entries from the first
 * one kept (1, or the anchor's seq + 1) through through_seq, with their index keys, write the
 * anchor (through_seq, its chain and time_ms; cut_ms = now_ms) and append an audit_cut entry
 * at now_ms recording the same (*seq_out, may be NULL, gets its seq). Each entry is checked as
 * audit_verify checks it before it goes: one that does not verify (missing, unreadable, body
 * digest or chain mismatch) is AR_E_FORMAT, code "audit_cut_refused", naming it, and the
 * callback must fail (nothing is cut). through_seq outside first kept..last: AR_E_INVALID,
 * code "audit_cut_invalid". An anchor that cannot be read: AR_E_FORMAT,
 * "audit_anchor_unreadable". Cost: one parse and digest per entry cut. */
int audit_txn_cut(journal_txn *txn, uint64_t through_seq, int64_t now_ms, uint64_t *seq_out,
                  ar_error *err);

#endif
