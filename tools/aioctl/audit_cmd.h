/*
 * audit_cmd.h - `aioctl audit ...`: the daemon's hash-chained audit trail (core/audit.h,
 * docs/AUDIT.md): one action's story, verification, heads to keep (signed), export.
 *
 * Usage (the lines for `aioctl --help`):
 *
 *   audit show ID
 *       One action's audit entries as a timeline: seq, time (UTC), type, and the key facts of
 *       each event (verdict and rule, who approved, each attempt's outcome, ...).
 *   audit verify [--head FILE] [--public-key FILE]
 *       Check the whole chain: every body against its digest (erased bodies excepted), every
 *       chain hash, seqs without gaps or reordering, the action index. With --head FILE (a
 *       head document kept from `audit head`): the chain at its seq must still be that head,
 *       which catches a rewrite of the chain from some point on, and a cut tail. A signed head
 *       document's signature is checked first (with --public-key FILE, as written by keygen,
 *       when given; else with the key it carries). Prints "ok" with the number of entries and
 *       the head, or the first bad seq and what is wrong there (exit 1). After retention cut
 *       the oldest entries (core/audit.h, audit_txn_cut) the chain is checked from the anchor
 *       the cut left, which an audit_cut entry in the chain must record: "ok: N entries
 *       verified from seq A (1..A-1 cut by retention on DATE)". A kept head whose seq is
 *       before the cut (below A - 1) cannot be checked: "kept head NOT checked: ..." and exit
 *       6 (the trail kept is sound; check a head kept after the cut instead).
 *   audit head [--sign-key FILE]
 *       The head now, as a JSON document to keep elsewhere: {"seq", "head", "time_ms"}; with
 *       --sign-key FILE (a secret key from keygen) signed here, with Ed25519, adding
 *       "public_key" and "signature" (over "aiorun-audit-head-v1\n<seq>\n<head>\n<time_ms>").
 *   audit export [--since TIME]
 *       The entries whose time_ms is at or after TIME, as JSON lines (one stored entry a line,
 *       in seq order), for an outside archive or SIEM. TIME: RFC 3339 ("2026-11-26T17:00:00Z",
 *       "2026-11-26T18:00:00+01:00", "2026-11-26") or a duration back from now ("24h", "7d",
 *       "90m", "30s", "2w"). Without --since: every entry. The count goes to stderr.
 *   audit keygen FILE
 *       Make an Ed25519 key pair for signing heads: FILE (the 64-byte secret key as hex, mode
 *       0600) and FILE.pub (the public key as hex). Neither may exist. No daemon involved.
 *
 * Without --config the commands go to the daemon (reader, operator or approver role):
 * GET /v1/actions/{id}/audit ({"entries": [...]}), GET /v1/audit/verify[?seq=N&head=HEX]
 * ({"ok": true, "entries", "head", "first_seq"} or {"ok": false, "first_bad_seq", "reason"};
 * after a cut also "cut_through" and "cut_ms", and, for a kept head before it,
 * "head_unchecked": true and "head_note"),
 * GET /v1/audit/head ({"seq", "head", "time_ms"}), GET /v1/audit?after=SEQ&limit=N
 * ({"entries": [...], "next": SEQ or null}; export follows the pages). With --config FILE (the
 * daemon's config) they read its data directory directly (core/audit.h), whether the daemon
 * runs or not; they never write to it. --json: show and verify print JSON (online: the
 * daemon's reply as received; offline: the same shape); head and export always print JSON.
 *
 * Exit codes (aioctl.h): 0 done (verify: the trail is sound); 1 verify found a problem, or the
 * head document's signature does not check; 2 usage (unknown subcommand or option, a bad
 * TIME, an unreadable or malformed key or head file, a secret key file others may read,
 * keygen over an existing file, a config that cannot be loaded); 3 the daemon could not be
 * reached; 4 refused (by the daemon, or by the data directory: no journal there, not_found
 * for an action without entries, ...); 6 verify --head: the trail kept is sound but the kept
 * head is older than it (cut by retention) and could not be checked.
 */
#ifndef AIOCTL_AUDIT_CMD_H
#define AIOCTL_AUDIT_CMD_H

#include "client.h"

/* What aioctl.c hands these commands (as vault_cmd_env). */
typedef struct audit_cmd_env {
    const char *config;   /* --config FILE (borrowed): read its data directory; NULL: the daemon */
    int json;             /* --json */
    /* Online: a new client for the daemon that sends the API token (owned by the caller of
     * connect afterwards: client_free). Returns an aioctl exit code (failures reported). */
    int (*connect)(void *ctx, client **out);
    /* Online: report a failed call (an error document for --json, the 401 hint), release rep,
     * return rc. */
    int (*call_failed)(void *ctx, reply *rep, int rc);
    void *ctx;
} audit_cmd_env;

/* `aioctl audit SUBCOMMAND ARGS...`: argv holds the words after "audit" with aioctl's global
 * options taken out (borrowed). Returns the exit code. */
int aioctl_audit_command(const audit_cmd_env *env, int argc, char **argv);

#endif
