/*
 * aioctl.c - the aiorun command line: submit actions, look at them, decide the ones that wait
 * on a human, set graded autonomy, look at and reload the policies, check the daemon, pause
 * and resume connectors, manage API tokens.
 *
 *   aioctl [--url URL] [--json] [--timeout SECONDS] [--token-file FILE] COMMAND ...
 *
 * Talks to the daemon's HTTP/JSON API (client.c); prints a human view by default (render.c)
 * or, with --json, the daemon's reply exactly as received, for scripts. Every command but
 * health sends an API token (tokenfile.h says where it comes from). The token commands work
 * through the daemon, or with --config FILE directly on its data directory (offline.c);
 * backup works only that way (a compacted copy of the journal and the auth key, taken while
 * the daemon runs). cancel and resolve (UNKNOWN_OUTCOME, operator role) go to the daemon, as
 * do connectors pause/resume (operator role; the connector keeps its queue while paused).
 * connectors shows each connector's flow: paused, rate limited, circuit breaker, queue.
 * secrets and vault (vault_cmd.c) manage the connectors' credentials in the vault, through the
 * daemon or with --config FILE directly on its data directory (vault init only that way).
 * audit (audit_cmd.c) shows an action's audit trail, verifies the hash chain (against a kept
 * head too), prints (and signs) the head and exports entries, through the daemon or with
 * --config FILE directly on its data directory. compact (compact_cmd.c, --config FILE only)
 * runs the bounded-history compaction (retention.h) on the data directory at once.
 *
 * Policies ops can trust (docs/POLICIES.md): approvals lists the actions waiting on a human
 * (or the rejected or expired ones) and shows one; approve and reject decide one (approver or
 * operator role, plus a role the policy named; reject needs a --comment). autonomy shows the
 * levels (auto, semi, suggest) per connector.action pattern, from the config and set at
 * runtime; autonomy set changes one at runtime (operator; "config" removes the runtime
 * setting). policies shows the policy set in force; policies reload loads the files again
 * (operator; a broken set is refused, 422 with file and line, and the old one keeps serving).
 * An action's block shows its approval, the autonomy level when not auto, and every policy
 * file's vote.
 *
 * A busy daemon answers submit with 429 queue_full or 503 storage_nearly_full and a
 * Retry-After: nothing was stored. submit reports it (exit 4) or, with --retry-busy, waits
 * Retry-After (at most 60 s each time, within --wait's time, else --timeout's) and submits
 * again with the same idempotency key (made up when none is given), so that a resubmission can
 * never make a second action.
 *
 * Exit codes (aioctl.h; also in `aioctl --help`; never renumbered):
 *   0  ok. get and submit --wait: the action SUCCEEDED, or was SUGGESTED (the decision is the
 *      outcome, nothing is executed). submit without --wait: the action was accepted, whatever
 *      its state. cancel: the action is CANCELLED. resolve: the resolution is stored.
 *      approve, reject: the decision is stored (or was already, the same way). list,
 *      approvals, autonomy (also set), policies (also reload), connectors (also pause,
 *      resume), health, whoami, token, backup, compact: done.
 *   1  the action ended without success: DENIED, FAILED, REJECTED, EXPIRED, CANCELLED,
 *      UNKNOWN_OUTCOME. audit verify: the audit trail is not sound (or a kept head's
 *      signature does not check).
 *   2  usage error: unknown command or flag, bad number, INPUT_JSON not a JSON object, a token
 *      file that is missing (given with --token-file) or readable by others, a bad token name,
 *      role list or --expires, a --save FILE that cannot be written, a --config that cannot
 *      be loaded, backup or compact without --config, backup into a directory that is not
 *      new or empty,
 *      resolve without exactly one outcome flag and a --reason, reject without a --comment,
 *      approvals --state other than pending, rejected or expired, autonomy set with a LEVEL
 *      other than auto, semi, suggest or config.
 *   3  the daemon could not be reached, or did not answer in time.
 *   4  the daemon refused the request (4xx/5xx: "error: <code>: <message>" on stderr; 401
 *      unauthenticated: no token or a bad one; 403 forbidden: the token lacks the role, or
 *      (approve, reject) none of the roles the policy named; 403 four_eyes: the submitter may
 *      not decide its own action; 404 not_found, unknown_connector; 409 already_terminal,
 *      not_cancellable, not_unknown_outcome, already_decided (the other way), approval_expired,
 *      not_pending; 400 invalid_autonomy: a bad PATTERN; policies reload: 422 policy_invalid
 *      or policy_tests_failed, the message names file and line and the set in force keeps
 *      serving; submit: 429 queue_full, 503 storage_nearly_full, also after --retry-busy ran
 *      out of time), or its reply could not be read; with --config, the data directory
 *      refused it (token_exists, token_not_found, backup_failed, ...).
 *   5  the action is not finished: --wait ran out, or it waits on a human (PENDING_APPROVAL),
 *      or (get) it is still in progress, or (cancel) a call is in flight and the cancel is
 *      only requested. The action is printed all the same.
 *   6  audit verify --head: the audit trail kept is sound, but the kept head is older than
 *      the entries retention kept (they were cut after it), so it could not be checked.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <aiorun/version.h>

#include "aioctl.h"
#include "auth.h"
#include "client.h"
#include "offline.h"
#include "render.h"
#include "policy_cmd.h"
#include "tokenfile.h"
#include "vault_cmd.h"
#include "audit_cmd.h"

#define DEFAULT_URL "http://127.0.0.1:8470"
#define DEFAULT_TIMEOUT_MS 10000L
#define DEFAULT_WAIT_MS 30000L
#define MAX_WAIT_PER_REQUEST_MS 60000L /* the daemon holds a request at most this long */
#define MAX_WAIT_S (7.0 * 86400.0)
#define MAX_TIMEOUT_S 86400.0
#define POLL_FIRST_MS 200
#define POLL_MAX_MS 2000
#define MAX_EXPIRES_S (3650LL * 86400) /* --expires: ten years at most */
#define PRIORITY_MIN (-1000) /* the daemon's range for "priority" */
#define PRIORITY_MAX 1000
#define BUSY_MAX_PAUSE_MS 60000L /* --retry-busy: the longest wait before submitting again */
#define BUSY_MIN_PAUSE_MS 200L   /* ... and the shortest (even after "Retry-After: 0") */

static const char usage_text[] =
    "usage: aioctl [--url URL] [--json] [--timeout SECONDS] [--token-file FILE] COMMAND [ARGS...]\n"
    "\n"
    "Submit actions to the aiorun daemon, look at them, cancel or resolve them, approve or\n"
    "reject those waiting on a human, set graded autonomy, look at and reload its policies,\n"
    "pause and resume its connectors, manage its API tokens, and back up its data directory.\n"
    "\n"
    "commands:\n"
    "  submit CONNECTOR ACTION [INPUT_JSON] [options]\n"
    "      Propose an action. INPUT_JSON is a JSON object (default {}); '-' reads it from stdin.\n"
    "        --key K             idempotency key: the same key and payload give back the same\n"
    "                            action instead of a new one\n"
    "        --wait [SECONDS]    wait until the action is finished or waits on a human\n"
    "                            (default 30; the daemon holds one request up to 60 s, longer\n"
    "                            waits poll)\n"
    "        --priority N        scheduling priority, -1000 to 1000 (default 0): higher runs\n"
    "                            first; waiting raises it (docs/FLOW.md)\n"
    "        --retry-busy        when the daemon is busy (429 queue_full, 503\n"
    "                            storage_nearly_full; it stored nothing), wait what its\n"
    "                            Retry-After says (at most 60 s at a time) and submit again\n"
    "                            with the same idempotency key (one is made when --key is\n"
    "                            not given), until --wait's time, else --timeout's, is used\n"
    "                            up. Without it a busy daemon is exit 4.\n"
    "        --proposer-kind K   who proposed it (agent, human, system, ...)\n"
    "        --model M           the model that proposed it\n"
    "        --confidence X      the proposer's confidence (a number)\n"
    "        --prompt-ref R      a reference to the prompt behind the proposal\n"
    "  get ID\n"
    "      Show one action: its decision (the autonomy level when not auto, and the vote of\n"
    "      every policy file that did not abstain), its approval when it needs one, attempts.\n"
    "  list [--state S] [--connector C] [--review] [--limit N] [--after ID] [--all]\n"
    "      Actions, newest first, one page (--limit N per page; --after ID: the page after\n"
    "      that id); --all follows every page (with --json: joined into one document,\n"
    "      {\"actions\": [...], \"next\": null}).\n"
    "      --review: only actions whose result a policy's validate rejected after they acted\n"
    "      (they ended SUCCEEDED and need a human look).\n"
    "  cancel ID\n"
    "      Cancel an action that has not finished. If a call to the API is in flight, the\n"
    "      cancel is only requested (exit 5): the action is cancelled when the call returns,\n"
    "      unless it succeeded.\n"
    "  resolve ID (--succeeded | --failed | --retry) --reason TEXT\n"
    "      Settle an UNKNOWN_OUTCOME action after checking the system of record: it happened\n"
    "      (--succeeded), it did not and must not be tried again (--failed), or it did not\n"
    "      and may be sent again with the same idempotency key (--retry). Operator role.\n"
    "  approvals [--state pending|rejected|expired] [--all]\n"
    "      Actions waiting on a human (default pending; or those rejected or expired): ID,\n"
    "      CONNECTOR.ACTION, SUBMITTER, ROLES that may decide (any: every approver), EXPIRES,\n"
    "      SUMMARY. One page (the daemon's); --all follows every page (with --json: joined\n"
    "      into one document, {\"approvals\": [...], \"next\": null}). Approver, operator or\n"
    "      reader role.\n"
    "  approvals show ID\n"
    "      Everything about one approval: the action and its input, proposer, submitter, who\n"
    "      may decide, four eyes, summary, rule, requested, expires, and the decision.\n"
    "  approve ID [--comment TEXT]\n"
    "  reject ID --comment TEXT\n"
    "      Decide an action that waits on a human; the comment is stored with it (reject\n"
    "      needs one). Needs the approver or operator role and one of the roles the policy\n"
    "      named (the config's \"approvers\" maps them to token roles and names); with four\n"
    "      eyes, not the token that submitted it. Deciding again the same way is a no-op; the\n"
    "      other way is refused (already_decided), as is an expired approval.\n"
    "  autonomy\n"
    "      The autonomy levels per pattern (connector.action, connector.* or *): from the\n"
    "      config and set at runtime (by whom, when). auto: the policies' verdict stands;\n"
    "      semi: what they allow waits on a human; suggest: what they allow or send to a\n"
    "      human is only recorded (SUGGESTED). A deny always stands.\n"
    "  autonomy set PATTERN auto|semi|suggest|config\n"
    "      Set PATTERN's level at runtime (journaled: it survives a restart); config removes\n"
    "      the runtime setting, so the config's level applies again. Operator role.\n"
    "  policies\n"
    "      The policy set in force: version, files, directory, when loaded, reloads,\n"
    "      decision time, and each guardrail counter with its value now.\n"
    "  policies reload\n"
    "      Load the policy files again. A set that does not compile or fails its tests is\n"
    "      refused (exit 4; the message names the file and line) and the set in force keeps\n"
    "      serving. Operator role. (SIGHUP, and by default a change of the files, reload too.)\n"
    "  connectors\n"
    "      The connector instances: plugin, status, processes serving/started, FLOW (ok,\n"
    "      paused, breaker open, half-open, rate-limited), QUEUE (queued/dispatched/running),\n"
    "      actions; then a line on each connector that is paused, rate limited or whose\n"
    "      circuit breaker is not closed (why, since when, the next trial).\n"
    "  connectors pause NAME [--reason TEXT]\n"
    "      Stop dispatching NAME's actions: they stay queued until it is resumed (one whose\n"
    "      deadline passes meanwhile fails); calls in flight finish. The pause is journaled\n"
    "      and survives a restart of the daemon. Operator role.\n"
    "  connectors resume NAME [--reason TEXT]\n"
    "      Dispatch NAME's actions again. Operator role.\n"
    "  stats [--day YYYY-MM-DD]\n"
    "      Per connector: finished actions, error rate, call and end-to-end latency\n"
    "      p50/p90/p99 (estimated from the /metrics histograms), cost per action, since the\n"
    "      daemon started. --day: the actions created that day (UTC), read from the journal:\n"
    "      how many, finished, failed, and what they cost.\n"
    "  whoami\n"
    "      The name and roles of the token aioctl sends.\n"
    "  health\n"
    "      Check that the daemon answers (sends no token).\n"
    "  token create --name NAME --roles ROLE[,ROLE...] [--expires DURATION] [--save [FILE]]\n"
    "      Create an API token. Roles: submitter, approver, operator, reader. DURATION: Ns,\n"
    "      Nm, Nh or Nd (30d, 12h); without it the token never expires. The token is shown\n"
    "      once: alone on stdout (so '> FILE' stores it), or with --save written to FILE\n"
    "      (default: the token file below) with mode 0600 and not shown.\n"
    "  token list\n"
    "      The tokens: name, roles, state, created, expires (never the tokens themselves).\n"
    "  token revoke NAME\n"
    "      Revoke a token; the daemon refuses it from its next request on.\n"
    "  The token commands go through the daemon (they need the operator role), or, with\n"
    "  --config FILE (the daemon's config), work directly on its data directory, whether the\n"
    "  daemon runs or not: that is how the first token is made. Run them as the daemon's user.\n"
    "  secrets set CONNECTOR NAME\n"
    "      Store a connector's secret in the vault (encrypted; its version goes up by one).\n"
    "      The value comes from stdin when it is not a terminal (one trailing newline is\n"
    "      dropped), else it is asked for twice without echo; never from the command line.\n"
    "  secrets list [CONNECTOR]\n"
    "      The secrets: connector, name, version, created, updated (never a value).\n"
    "  secrets rm CONNECTOR NAME\n"
    "      Remove a secret.\n"
    "  vault rotate\n"
    "      Re-encrypt every secret under a new master key (all or nothing) and say how many.\n"
    "      Back the new key file up again.\n"
    "  --config FILE vault init\n"
    "      Create the config's vault key file (vault_key_file; mode 0600). It is never\n"
    "      overwritten. Back it up: without it the secrets cannot be decrypted.\n"
    "  The secrets and vault commands go through the daemon (operator role), or, with\n"
    "  --config FILE, work directly on its data directory and vault key file (or passphrase\n"
    "  file), whether the daemon runs or not. Run them as the daemon's user.\n"
    "  audit show ID\n"
    "      One action's audit trail as a timeline: time, event, and its key facts (verdict\n"
    "      and rule, who decided, each attempt's outcome, ...).\n"
    "  audit verify [--head FILE] [--public-key FILE]\n"
    "      Check the hash chain: bodies against digests, chain hashes, seqs without gaps or\n"
    "      reordering, the action index. With --head FILE (kept from audit head): the chain\n"
    "      must still have that head, which catches a rewrite from some point on; a signed\n"
    "      head is checked first (with --public-key FILE when given). Exit 1 when not sound.\n"
    "      After retention cut the oldest entries, the chain is checked from the anchor the\n"
    "      cut left (an audit_cut entry must record it): \"verified from seq A (1..A-1 cut by\n"
    "      retention on DATE)\". A kept head older than the cut cannot be checked: exit 6.\n"
    "  audit head [--sign-key FILE]\n"
    "      The chain's head as a JSON document to keep elsewhere ({seq, head, time_ms});\n"
    "      with --sign-key, signed here with Ed25519 (public_key, signature).\n"
    "  audit export [--since TIME]\n"
    "      The entries since TIME as JSON lines, one stored entry a line. TIME: RFC 3339\n"
    "      (2026-11-26T17:00:00Z) or a duration back from now (24h, 7d).\n"
    "  audit keygen FILE\n"
    "      A key pair to sign heads: FILE (the secret key, mode 0600) and FILE.pub.\n"
    "  The audit commands go through the daemon (reader role), or, with --config FILE, read\n"
    "  its data directory directly, whether the daemon runs or not (docs/AUDIT.md).\n"
    "  --config FILE backup DIR\n"
    "      Copy the daemon's data directory to DIR (new or empty; made 0700): DIR/journal, a\n"
    "      compacted copy of the journal, and DIR/auth.key. Safe while the daemon runs: the\n"
    "      copy is one consistent snapshot and does not hold up its writes. Run it as the\n"
    "      daemon's user. README.md, \"Backup and restore\", says how to restore.\n"
    "  --config FILE compact\n"
    "      Compact old history now, as the daemon does every retention.interval_s: terminal\n"
    "      actions older than retention.actions_days become stubs (input, result, history\n"
    "      go), stubs older than retention.idempotency_days go with their idempotency keys,\n"
    "      audit entries older than retention.audit_bodies_days lose their bodies (the chain\n"
    "      still verifies), and those older than retention.audit_entries_days are deleted,\n"
    "      oldest first (an anchor and an audit_cut entry record the cut, so the chain kept\n"
    "      still verifies). Prints what it did. Safe while the daemon runs; run it as the\n"
    "      daemon's user. README.md, \"Bounded history\".\n"
    "\n"
    "the token sent (every command but health), from the first of:\n"
    "  --token TOKEN       the token itself. Other users can see a command line (ps):\n"
    "                      prefer --token-file or AIORUN_TOKEN\n"
    "  --token-file FILE   a file holding the token on its first line; it must be readable\n"
    "                      by you alone (chmod 600)\n"
    "  $AIORUN_TOKEN\n"
    "  $HOME/.config/aiorun/token, when it exists (chmod 600)\n"
    "\n"
    "options (anywhere on the line):\n"
    "  --url URL           the daemon (default: $AIORUN_URL, else " DEFAULT_URL ")\n"
    "  --json              print the daemon's JSON reply as received, one document, for\n"
    "                      scripts (an error reply's JSON goes to stdout too)\n"
    "  --timeout SECONDS   how long to wait for an answer, beyond any --wait (default 10)\n"
    "  --token TOKEN, --token-file FILE   see above\n"
    "  --config FILE       token, secrets, vault and audit commands, backup, compact: work on\n"
    "                      the data directory of this config\n"
    "  -h, --help          this help\n"
    "  --version           aioctl's version\n"
    "\n"
    "exit codes:\n"
    "  0  ok. get, submit --wait: the action SUCCEEDED, or was SUGGESTED (the decision is\n"
    "     the outcome; nothing is executed). submit without --wait: the action was accepted,\n"
    "     whatever its state. cancel: the action is CANCELLED. resolve: stored. approve,\n"
    "     reject: the decision is stored (or already was, the same way). list, approvals,\n"
    "     autonomy (also set), policies (also reload), connectors (also pause, resume),\n"
    "     health, whoami, token, backup, compact: done.\n"
    "  1  the action ended without success: DENIED, FAILED, REJECTED, EXPIRED, CANCELLED or\n"
    "     UNKNOWN_OUTCOME (an operator must find out whether it happened: aioctl resolve);\n"
    "     audit verify: the audit trail is not sound, or a kept head's signature fails\n"
    "  2  usage error: unknown command or flag, bad number, INPUT_JSON not a JSON object,\n"
    "     a token file that is missing (--token-file) or readable by others, a bad token\n"
    "     name, role or --expires, a --save FILE that cannot be written, a --config that\n"
    "     cannot be loaded; backup or compact without --config, backup into a DIR that is\n"
    "     not new or empty;\n"
    "     resolve without one outcome flag and a --reason; reject without a --comment;\n"
    "     approvals --state not pending, rejected or expired; autonomy set with another LEVEL;\n"
    "     secrets set with a value on the command line, an empty one or two that differ;\n"
    "     vault init without --config or over an existing key file\n"
    "  3  the daemon could not be reached or did not answer in time (start it: tools/run)\n"
    "  4  the daemon refused the request (4xx/5xx; \"error: <code>: <message>\" on stderr:\n"
    "     unauthenticated: no token or a bad one; forbidden: the token lacks the role (or,\n"
    "     approve and reject, each role the policy named); four_eyes: the submitter may not\n"
    "     decide its own action; not_found; unknown_connector; already_terminal,\n"
    "     not_cancellable, not_unknown_outcome; already_decided, approval_expired,\n"
    "     not_pending; invalid_autonomy (a bad PATTERN); policies reload: policy_invalid or\n"
    "     policy_tests_failed (422: the set in force keeps serving); submit: queue_full\n"
    "     (429) or storage_nearly_full (503), the daemon is busy and stored nothing: the\n"
    "     Retry-After seconds are shown, and --retry-busy waits and submits again) or sent\n"
    "     a reply that could not be read;\n"
    "     with --config: the data directory refused it (token_exists, token_not_found,\n"
    "     secret_not_found, vault_wrong_key, vault_key_mode, backup_failed, ...)\n"
    "  5  the action is not finished: --wait ran out, or it waits on a human\n"
    "     (PENDING_APPROVAL), or (get) it is still in progress, or (cancel) a call is in\n"
    "     flight and the cancel is only requested; it is printed all the same\n"
    "  6  audit verify --head: the trail kept is sound, but the kept head is older than\n"
    "     the entries retention kept, so it could not be checked\n";

/* Global options; any command may carry them anywhere on its line. */
typedef struct cli {
    const char *url;
    bool json;
    long timeout_ms;
    char *token;            /* --token: a copy (the one in argv is wiped); wiped at exit */
    const char *token_file; /* --token-file */
    const char *config;     /* --config: the token commands work offline on its data dir */
    /* Set when a token is looked up: where the token sent came from (for the hint after a
     * 401), and the token file it was read from ("" when none; for the --save check). */
    char token_origin[PATH_MAX + 64];
    char token_path[PATH_MAX];
} cli;

#define usage_error render_usage_error

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A positive number of seconds, at most max; as milliseconds (at least 1). */
static bool parse_seconds(const char *s, double max, long *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > max)
        return false;
    *ms = (long)(v * 1000.0 + 0.5);
    if (*ms < 1)
        *ms = 1;
    return true;
}

static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Does s look like the optional SECONDS of --wait (rather than the next argument)? */
static bool looks_like_number(const char *s)
{
    return (s[0] >= '0' && s[0] <= '9') || (s[0] == '.' && s[1] >= '0' && s[1] <= '9');
}

/* Match "--name VALUE" or "--name=VALUE" at argv[*i]. Returns 1 (matched, *value set, *i on
 * the last word used), 0 (not this flag), or -1 (matched but the value is missing). */
static int flag_value(int argc, char **argv, int *i, const char *name, const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        usage_error("%s needs a value", name);
        return -1;
    }
    *value = argv[++*i];
    return 1;
}

/* Report that memory ran out; returns the exit code for it. */
static int out_of_memory(void)
{
    fputs("aioctl: out of memory\n", stderr);
    return AIOCTL_REFUSED;
}

/* flag_value for an option whose value must not be empty: an empty one is reported with
 * if_empty, and answers -1. */
static int nonempty_value(int argc, char **argv, int *i, const char *name, const char *if_empty,
                          const char **value)
{
    int m = flag_value(argc, argv, i, name, value);
    if (m > 0 && !**value) {
        usage_error("%s", if_empty);
        return -1;
    }
    return m;
}

/* --token: keep a copy, and wipe the one in argv. Returns 1, or -1 when out of memory. */
static int take_token(cli *o, const char *v)
{
    tokenfile_wipe_free(o->token);
    if (!(o->token = strdup(v))) {
        out_of_memory();
        return -1;
    }
    /* Narrow the time others can read it in /proc/PID/cmdline (ps) to our start. */
    explicit_bzero((char *)v, strlen(v));
    return 1;
}

/* If argv[*i] is a global option, apply it (and consume its value) and return 1; 0 if it is
 * not one; -1 on a usage error (already reported). --help and --version exit here. */
static int take_global(cli *o, int argc, char **argv, int *i)
{
    /* The options whose value is a string that must not be empty. */
    const struct {
        const char *name, *if_empty;
        const char **dest;
    } strings[] = {
        {"--url", "--url needs a value, like " DEFAULT_URL, &o->url},
        {"--token-file", "--token-file needs a file name", &o->token_file},
        {"--config", "--config needs the daemon's config file, like aiorun.json", &o->config},
    };
    const char *a = argv[*i], *v = NULL;
    int m;

    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
        fputs(usage_text, stdout);
        exit(AIOCTL_OK);
    }
    if (strcmp(a, "--version") == 0) {
        printf("aioctl %s (plugin ABI %d.%d)\n", AIORUN_VERSION_STRING, AIORUN_ABI_MAJOR,
               AIORUN_ABI_MINOR);
        exit(AIOCTL_OK);
    }
    if (strcmp(a, "--json") == 0) {
        o->json = true;
        return 1;
    }
    for (size_t k = 0; k < sizeof strings / sizeof strings[0]; k++) {
        m = nonempty_value(argc, argv, i, strings[k].name, strings[k].if_empty, &v);
        if (m > 0)
            *strings[k].dest = v;
        if (m != 0)
            return m;
    }
    if ((m = nonempty_value(argc, argv, i, "--token", "--token needs a value", &v)) != 0)
        return m > 0 ? take_token(o, v) : m;
    if ((m = flag_value(argc, argv, i, "--timeout", &v)) != 0) {
        if (m < 0)
            return -1;
        if (!parse_seconds(v, MAX_TIMEOUT_S, &o->timeout_ms)) {
            usage_error("--timeout: expected a number of seconds > 0 and <= %.0f, got '%s'",
                        MAX_TIMEOUT_S, v);
            return -1;
        }
        return 1;
    }
    return 0;
}

/* A command's flags. */
/* FLAG_OPTIONAL_NUMBER takes the next word when it looks like a number, FLAG_OPTIONAL_VALUE
 * when it does not start with '-' (only for commands without positional arguments). */
typedef enum { FLAG_SWITCH, FLAG_VALUE, FLAG_OPTIONAL_NUMBER, FLAG_OPTIONAL_VALUE } flag_kind;
typedef struct flag {
    const char *name;
    flag_kind kind;
    const char **value; /* FLAG_VALUE, FLAG_OPTIONAL_*: the value (NULL if none given) */
    bool *present;      /* set when the flag is seen (may be NULL for FLAG_VALUE) */
} flag;

/* Parse a command's words: global options, the command's flags, and up to max_pos positional
 * arguments ("--" ends the flags). Returns AIOCTL_OK or AIOCTL_USAGE (reported). */
static int parse_command_args(cli *o, const char *cmd, int argc, char **argv, const flag *flags,
                              size_t n_flags, const char **pos, int max_pos, int *n_pos)
{
    bool only_positional = false;
    *n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && a[0] == '-' && a[1] != '\0') {
            if (strcmp(a, "--") == 0) {
                only_positional = true;
                continue;
            }
            int g = take_global(o, argc, argv, &i);
            if (g < 0)
                return AIOCTL_USAGE;
            if (g > 0)
                continue;
            bool matched = false;
            for (size_t f = 0; f < n_flags && !matched; f++) {
                const flag *fl = &flags[f];
                size_t n = strlen(fl->name);
                if (fl->kind == FLAG_SWITCH) {
                    if (strcmp(a, fl->name) == 0) {
                        *fl->present = true;
                        matched = true;
                    }
                } else if (fl->kind == FLAG_VALUE) {
                    int m = flag_value(argc, argv, &i, fl->name, fl->value);
                    if (m < 0)
                        return AIOCTL_USAGE;
                    if (m > 0) {
                        if (fl->present)
                            *fl->present = true;
                        matched = true;
                    }
                } else if (strncmp(a, fl->name, n) == 0 && (a[n] == '\0' || a[n] == '=')) {
                    *fl->present = true;
                    *fl->value = NULL;
                    if (a[n] == '=')
                        *fl->value = a + n + 1;
                    else if (i + 1 < argc && fl->kind == FLAG_OPTIONAL_NUMBER &&
                             looks_like_number(argv[i + 1]))
                        *fl->value = argv[++i];
                    else if (i + 1 < argc && fl->kind == FLAG_OPTIONAL_VALUE &&
                             argv[i + 1][0] != '-')
                        *fl->value = argv[++i];
                    matched = true;
                }
            }
            if (!matched)
                return usage_error("%s: unknown option '%s'", cmd, a);
            continue;
        }
        if (*n_pos >= max_pos)
            return usage_error("%s: unexpected argument '%s'", cmd, a);
        pos[(*n_pos)++] = a;
    }
    return AIOCTL_OK;
}

/* --json: the daemon's reply exactly as received. */
static void print_body(const reply *rep)
{
    if (!rep->body)
        return;
    fwrite(rep->body, 1, rep->len, stdout);
    if (rep->len == 0 || rep->body[rep->len - 1] != '\n')
        fputc('\n', stdout);
}

/* A call failed: with --json, an error document from the daemon still goes to stdout. After
 * a 401 (client.c has printed "error: unauthenticated: <message>"), say which token was sent
 * and how to give one. */
static int call_failed(const cli *o, reply *rep, int rc)
{
    if (o->json && rep->json)
        print_body(rep);
    if (rep->status == 401) {
        if (o->token_origin[0])
            fprintf(stderr, "aioctl: %s\n", o->token_origin);
        fputs("aioctl: give a token with --token-file, AIORUN_TOKEN or --token (create one with: "
              "aioctl --config aiorun.json token create --name NAME --roles submitter)\n",
              stderr);
    }
    reply_fini(rep);
    return rc;
}

typedef enum { OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_HUMAN, OUTCOME_RUNNING } outcome;

static outcome classify(const char *state)
{
    static const char *const success[] = {"SUCCEEDED", "SUGGESTED"};
    static const char *const failure[] = {"DENIED", "FAILED", "REJECTED", "EXPIRED",
                                          "CANCELLED", "UNKNOWN_OUTCOME"};
    if (!state)
        return OUTCOME_RUNNING;
    for (size_t i = 0; i < sizeof success / sizeof success[0]; i++)
        if (strcmp(state, success[i]) == 0)
            return OUTCOME_SUCCESS;
    for (size_t i = 0; i < sizeof failure / sizeof failure[0]; i++)
        if (strcmp(state, failure[i]) == 0)
            return OUTCOME_FAILURE;
    if (strcmp(state, "PENDING_APPROVAL") == 0)
        return OUTCOME_HUMAN;
    return OUTCOME_RUNNING;
}

static int outcome_exit(outcome out)
{
    switch (out) {
    case OUTCOME_SUCCESS:
        return AIOCTL_OK;
    case OUTCOME_FAILURE:
        return AIOCTL_NOT_SUCCEEDED;
    default:
        return AIOCTL_PENDING;
    }
}

static const char *action_state(const json_t *action)
{
    return json_string_value(json_object_get(action, "state"));
}

/* A 2xx reply without what the command needs: "the daemon at URL answered without <what>". */
static int answered_without(const client *c, const char *what)
{
    fprintf(stderr, "aioctl: the daemon at %s answered without %s\n", client_url(c), what);
    return AIOCTL_REFUSED;
}

/* Is this reply an action object we can work with? Reports it when not. */
static bool check_action(const client *c, const reply *rep)
{
    if (json_is_object(rep->json) && json_is_string(json_object_get(rep->json, "id")) &&
        action_state(rep->json))
        return true;
    answered_without(c, "an action (no id or state)");
    return false;
}

/* The token to send (tokenfile.h): --token, --token-file, $AIORUN_TOKEN, the default file.
 * An explicit flag wins over the environment, as everywhere. *token is NULL when there is
 * none, else owned by the caller (tokenfile_wipe_free). Notes in o where it came from. */
static int resolve_token(cli *o, char **token)
{
    const char *env = getenv("AIORUN_TOKEN");
    char *default_path = NULL;
    int rc = AIOCTL_OK;

    *token = NULL;
    o->token_origin[0] = '\0';
    o->token_path[0] = '\0';
    if (o->token) {
        if (!(*token = strdup(o->token)))
            goto nomem;
        snprintf(o->token_origin, sizeof o->token_origin, "the token sent was the one given "
                 "with --token");
        return AIOCTL_OK;
    }
    if (o->token_file) {
        if ((rc = tokenfile_read(o->token_file, true, token)) != AIOCTL_OK)
            return rc;
        snprintf(o->token_origin, sizeof o->token_origin, "the token sent was read from %s",
                 o->token_file);
        snprintf(o->token_path, sizeof o->token_path, "%s", o->token_file);
        return AIOCTL_OK;
    }
    if (env && *env) {
        if (!(*token = strdup(env)))
            goto nomem;
        snprintf(o->token_origin, sizeof o->token_origin, "the token sent was the one in "
                 "AIORUN_TOKEN");
        return AIOCTL_OK;
    }
    default_path = tokenfile_default_path();
    if (default_path && (rc = tokenfile_read(default_path, false, token)) != AIOCTL_OK)
        goto done;
    if (*token) {
        snprintf(o->token_origin, sizeof o->token_origin, "the token sent was read from %s",
                 default_path);
        snprintf(o->token_path, sizeof o->token_path, "%s", default_path);
    } else if (default_path) {
        snprintf(o->token_origin, sizeof o->token_origin, "no token was sent: no --token, "
                 "--token-file or AIORUN_TOKEN, and no file %s", default_path);
    } else {
        snprintf(o->token_origin, sizeof o->token_origin, "no token was sent: no --token, "
                 "--token-file or AIORUN_TOKEN (and HOME is unset, so no default token file)");
    }
    goto done;
nomem:
    fputs("aioctl: out of memory\n", stderr);
    rc = AIOCTL_REFUSED;
done:
    free(default_path);
    return rc;
}

/* --config is the data directory of a daemon, which only the token commands and backup can
 * work on. */
static int refuse_config(const cli *o)
{
    if (!o->config)
        return AIOCTL_OK;
    return usage_error("--config works only with the token, secrets, vault and audit commands, "
                       "backup and compact (the others talk to the daemon: use --url)");
}

/* A client for the daemon that sends the token resolve_token finds. */
static int new_client(cli *o, client **c)
{
    char *token = NULL;
    int rc;

    *c = NULL;
    if ((rc = refuse_config(o)) != AIOCTL_OK || (rc = resolve_token(o, &token)) != AIOCTL_OK)
        return rc;
    rc = client_new(o->url, o->timeout_ms, token, c);
    tokenfile_wipe_free(token);
    return rc;
}

/* ---- talking to the daemon ------------------------------------------------------------- */

/* A client and its latest reply, released together by session_end (safe on a zeroed one). */
typedef struct session {
    client *c;
    reply rep;
} session;

static void session_end(session *s)
{
    reply_fini(&s->rep);
    client_free(s->c);
    s->c = NULL;
}

/* Send one request, releasing the previous reply first. Returns client_call's answer; a
 * failure is explained on stderr by client.c but not yet reported (call_failed). */
static int session_send(session *s, const char *method, const char *path, const json_t *body,
                        long extra_ms)
{
    reply_fini(&s->rep);
    return client_call(s->c, method, path, body, extra_ms, &s->rep);
}

/* Send one request. A failure is reported (call_failed, which releases the reply); on
 * AIOCTL_OK s->rep holds the answer. */
static int session_call(const cli *o, session *s, const char *method, const char *path,
                        const json_t *body)
{
    int rc = session_send(s, method, path, body, 0);
    return rc == AIOCTL_OK ? AIOCTL_OK : call_failed(o, &s->rep, rc);
}

/* The outcome rc of a request that must be answered with an action: a reply that is not one
 * is refused too, and a failure is reported (call_failed). */
static int action_reply(const cli *o, session *s, int rc)
{
    if (rc == AIOCTL_OK && !check_action(s->c, &s->rep))
        rc = AIOCTL_REFUSED;
    return rc == AIOCTL_OK ? AIOCTL_OK : call_failed(o, &s->rep, rc);
}

/* prefix, then segment percent-encoded, then "/verb" unless verb is NULL ("/v1/actions/" ID
 * "/cancel"). malloc'd, owned by the caller; NULL (reported) when out of memory. */
static char *resource_path(const char *prefix, const char *segment, const char *verb)
{
    char *escaped = client_escape(segment), *path = NULL;
    if (!escaped ||
        asprintf(&path, "%s%s%s%s", prefix, escaped, verb ? "/" : "", verb ? verb : "") < 0)
        path = NULL;
    free(escaped);
    if (!path)
        out_of_memory();
    return path;
}

/* method on the action id, or on its sub-resource verb (NULL: the action itself); the answer
 * must be an action (action_reply). id may point into s->rep: the path is made before that
 * reply is released. */
static int session_call_action(const cli *o, session *s, const char *method, const char *id,
                               const char *verb, const json_t *body)
{
    char *path = resource_path("/v1/actions/", id, verb);
    if (!path)
        return AIOCTL_REFUSED;
    int rc = session_send(s, method, path, body, 0);
    free(path);
    return action_reply(o, s, rc);
}

/* A new client that sends the token (new_client), then session_call on it. */
static int session_request(cli *o, session *s, const char *method, const char *path,
                           const json_t *body)
{
    int rc = new_client(o, &s->c);
    return rc == AIOCTL_OK ? session_call(o, s, method, path, body) : rc;
}

/* session_request on resource_path(prefix, name, verb). */
static int session_request_named(cli *o, session *s, const char *method, const char *prefix,
                                 const char *name, const char *verb, const json_t *body)
{
    int rc = new_client(o, &s->c);
    if (rc != AIOCTL_OK)
        return rc;
    char *path = resource_path(prefix, name, verb);
    if (!path)
        return AIOCTL_REFUSED;
    rc = session_call(o, s, method, path, body);
    free(path);
    return rc;
}

/* The array under key in the reply (borrowed from s->rep); NULL, reported as "answered
 * without <what>", when there is none. */
static json_t *reply_array(const session *s, const char *key, const char *what)
{
    json_t *v = json_object_get(s->rep.json, key);
    if (json_is_array(v))
        return v;
    answered_without(s->c, what);
    return NULL;
}

typedef void (*render_fn)(FILE *out, const json_t *v);

/* Show a reply: exactly as received (--json), else render's view of v (the reply or a part). */
static void show_reply(const cli *o, const reply *rep, render_fn render, const json_t *v)
{
    if (o->json)
        print_body(rep);
    else
        render(stdout, v);
}

/* Print a JSON document aioctl made (compact, keys in order), then wipe the text (it may hold
 * a token). doc is borrowed; NULL means it could not be made (out of memory). */
static int print_json(const json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (!text)
        return out_of_memory();
    puts(text);
    explicit_bzero(text, strlen(text));
    free(text);
    return AIOCTL_OK;
}

/* print_json, taking the reference to doc. */
static int print_json_take(json_t *doc)
{
    int rc = print_json(doc);
    json_decref(doc);
    return rc;
}

/* GET path and show the array under key in its answer; a reply without one is refused as
 * "answered without <what>". */
static int show_list(cli *o, const char *path, const char *key, const char *what,
                     render_fn render)
{
    session s = {0};
    const json_t *list = NULL;
    int rc = session_request(o, &s, "GET", path, NULL);
    if (rc == AIOCTL_OK && !(list = reply_array(&s, key, what)))
        rc = AIOCTL_REFUSED;
    if (rc == AIOCTL_OK)
        show_reply(o, &s.rep, render, list);
    session_end(&s);
    return rc;
}

/* On a new client, send method to the action id (or its verb) and show the action it answers
 * with. s (zeroed by the caller) is the caller's to end: the reply decides its exit code. */
static int show_action_call(cli *o, session *s, const char *method, const char *id,
                            const char *verb, const json_t *body)
{
    int rc = new_client(o, &s->c);
    if (rc == AIOCTL_OK)
        rc = session_call_action(o, s, method, id, verb, body);
    if (rc == AIOCTL_OK)
        show_reply(o, &s->rep, render_action, s->rep.json);
    return rc;
}

/* ---- command lines --------------------------------------------------------------------- */

/* parse_command_args for a command without positional arguments. */
static int parse_flags_only(cli *o, const char *cmd, int argc, char **argv, const flag *flags,
                            size_t n_flags)
{
    const char *pos[1];
    int n_pos;
    return parse_command_args(o, cmd, argc, argv, flags, n_flags, pos, 0, &n_pos);
}

/* parse_command_args for a command with exactly one non-empty argument (*arg, borrowed from
 * argv); without it: "<cmd>: expected <what>". */
static int parse_one_arg(cli *o, const char *cmd, int argc, char **argv, const flag *flags,
                         size_t n_flags, const char *what, const char **arg)
{
    const char *pos[1];
    int n_pos, rc = parse_command_args(o, cmd, argc, argv, flags, n_flags, pos, 1, &n_pos);
    if (rc)
        return rc;
    if (n_pos != 1 || !*pos[0])
        return usage_error("%s: expected %s", cmd, what);
    *arg = pos[0];
    return AIOCTL_OK;
}

/* A command or subcommand: its name and what runs it. */
typedef struct command {
    const char *name;
    int (*run)(cli *o, int argc, char **argv);
} command;

static const command *find_command(const command *table, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (strcmp(name, table[k].name) == 0)
            return &table[k];
    return NULL;
}

/* A command with subcommands (connectors pause, token create, ...). The global options in
 * front of the subcommand are applied; then the subcommand named by the next word runs with
 * the words after it, or, when the command stands alone or an option of its own comes first,
 * bare runs with the words left (bare NULL: a subcommand is required). subs_hint names the
 * subcommands for the messages: "create, list or revoke". */
static int run_subcommand(cli *o, const char *cmd, int argc, char **argv, const command *subs,
                          size_t n_subs, int (*bare)(cli *o, int argc, char **argv),
                          const char *subs_hint)
{
    int i;
    for (i = 0; i < argc && argv[i][0] == '-'; i++) {
        int g = take_global(o, argc, argv, &i);
        if (g < 0)
            return AIOCTL_USAGE;
        if (g == 0 && bare)
            break; /* an option of the bare command: it parses the rest */
        if (g == 0)
            return usage_error("%s: unknown option '%s' (expected %s)", cmd, argv[i], subs_hint);
    }
    if (i < argc && argv[i][0] != '-') {
        const command *sub = find_command(subs, n_subs, argv[i]);
        if (!sub)
            return usage_error("%s: unknown subcommand '%s' (%s)", cmd, argv[i], subs_hint);
        return sub->run(o, argc - i - 1, argv + i + 1);
    }
    if (!bare)
        return usage_error("%s: expected %s", cmd, subs_hint);
    return bare(o, argc - i, argv + i);
}

/* ---- submit ---------------------------------------------------------------------------- */

/* Read INPUT_JSON (a string, or stdin for "-"); *out is a new reference. */
static int load_input(const char *text, json_t **out)
{
    json_error_t jerr;
    bool from_stdin = text && strcmp(text, "-") == 0;
    const size_t flags = JSON_DECODE_ANY | JSON_REJECT_DUPLICATES;

    *out = NULL;
    json_t *input = !text       ? json_object()
                    : from_stdin ? json_loadf(stdin, flags, &jerr)
                                 : json_loads(text, flags, &jerr);
    if (!input) {
        if (!text)
            return usage_error("out of memory");
        return usage_error("INPUT_JSON%s is not valid JSON: %s (line %d, column %d, byte %d)",
                           from_stdin ? " (from stdin)" : "", jerr.text, jerr.line, jerr.column,
                           jerr.position);
    }
    if (!json_is_object(input)) {
        json_decref(input);
        return usage_error("INPUT_JSON%s must be a JSON object, like '{\"message\":\"hi\"}'",
                           from_stdin ? " (from stdin)" : "");
    }
    *out = input;
    return AIOCTL_OK;
}

static int set_string(json_t *obj, const char *key, const char *value)
{
    return value ? json_object_set_new(obj, key, json_string(value)) : 0;
}

/* Refusals that only say "not now": 429 queue_full (the scheduler holds max_queue_depth
 * actions) and 503 storage_nearly_full (the journal's map is 90% used). Nothing was stored. */
static bool busy_refusal(const reply *rep)
{
    const char *code = json_string_value(json_object_get(rep->json, "error"));
    return code && ((rep->status == 429 && strcmp(code, "queue_full") == 0) ||
                    (rep->status == 503 && strcmp(code, "storage_nearly_full") == 0));
}

/* A fresh idempotency key, "aioctl-" and 32 hex digits (128 random bits). */
static int new_idempotency_key(char *buf, size_t cap)
{
    unsigned char raw[16];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("aioctl: getrandom");
            return AIOCTL_REFUSED;
        }
        got += (size_t)n;
    }
    int len = snprintf(buf, cap, "aioctl-");
    for (size_t i = 0; i < sizeof raw && (size_t)len + 2 < cap; i++)
        len += snprintf(buf + len, cap - (size_t)len, "%02x", raw[i]);
    return AIOCTL_OK;
}

/* submit's command line, checked. */
typedef struct submission {
    const char *connector, *action;
    const char *input;        /* INPUT_JSON as given ("-": stdin), or NULL for {} */
    const char *key;          /* --key, or the one made for --retry-busy, or NULL */
    bool key_given;           /* --key was given */
    const char *kind, *model, *prompt_ref, *confidence_s, *priority_s;
    double confidence;
    long priority;
    bool wait, retry_busy;
    long wait_ms;             /* --wait's time (DEFAULT_WAIT_MS when it has none) */
    char made_key[48];
} submission;

/* submit's words into sub (zeroed by the caller). Returns AIOCTL_OK or AIOCTL_USAGE
 * (reported). */
static int parse_submit(cli *o, int argc, char **argv, submission *sub)
{
    const char *pos[3], *wait_s = NULL;
    const flag flags[] = {
        {"--key", FLAG_VALUE, &sub->key, NULL},
        {"--wait", FLAG_OPTIONAL_NUMBER, &wait_s, &sub->wait},
        {"--retry-busy", FLAG_SWITCH, NULL, &sub->retry_busy},
        {"--priority", FLAG_VALUE, &sub->priority_s, NULL},
        {"--proposer-kind", FLAG_VALUE, &sub->kind, NULL},
        {"--model", FLAG_VALUE, &sub->model, NULL},
        {"--confidence", FLAG_VALUE, &sub->confidence_s, NULL},
        {"--prompt-ref", FLAG_VALUE, &sub->prompt_ref, NULL},
    };
    int n_pos, rc;

    sub->wait_ms = DEFAULT_WAIT_MS;
    rc = parse_command_args(o, "submit", argc, argv, flags, sizeof flags / sizeof flags[0], pos,
                            3, &n_pos);
    if (rc)
        return rc;
    if (n_pos < 2)
        return usage_error("submit: expected CONNECTOR ACTION [INPUT_JSON]");
    if (!*pos[0] || !*pos[1])
        return usage_error("submit: CONNECTOR and ACTION must not be empty");
    if (wait_s && !parse_seconds(wait_s, MAX_WAIT_S, &sub->wait_ms))
        return usage_error("--wait: expected a number of seconds > 0 and <= %.0f, got '%s'",
                           MAX_WAIT_S, wait_s);
    if (sub->priority_s && !parse_long(sub->priority_s, PRIORITY_MIN, PRIORITY_MAX, &sub->priority))
        return usage_error("--priority: expected an integer from %d to %d (higher runs first), "
                           "got '%s'", PRIORITY_MIN, PRIORITY_MAX, sub->priority_s);
    if (sub->confidence_s) {
        char *end;
        errno = 0;
        sub->confidence = strtod(sub->confidence_s, &end);
        if (errno || end == sub->confidence_s || *end || !isfinite(sub->confidence))
            return usage_error("--confidence: expected a number, got '%s'", sub->confidence_s);
    }
    if (sub->key && !*sub->key)
        return usage_error("--key must not be empty");
    sub->connector = pos[0];
    sub->action = pos[1];
    sub->input = n_pos > 2 ? pos[2] : NULL;
    sub->key_given = sub->key != NULL;
    return AIOCTL_OK;
}

/* How long the daemon may hold one request of a --wait with left ms to go. */
static long request_wait_ms(int64_t left)
{
    return left <= 0 ? 0 : left < MAX_WAIT_PER_REQUEST_MS ? (long)left : MAX_WAIT_PER_REQUEST_MS;
}

/* {"kind", "model", "prompt_ref", "confidence"}, those given: a new reference, or NULL when
 * out of memory. */
static json_t *proposer_json(const submission *sub)
{
    json_t *p = json_object();
    if (!p || set_string(p, "kind", sub->kind) || set_string(p, "model", sub->model) ||
        set_string(p, "prompt_ref", sub->prompt_ref) ||
        (sub->confidence_s && json_object_set_new(p, "confidence", json_real(sub->confidence)))) {
        json_decref(p);
        return NULL;
    }
    return p;
}

/* The POST body: a new reference, or NULL when out of memory. input is borrowed. */
static json_t *submit_body(const submission *sub, json_t *input)
{
    json_t *body = json_object();
    if (!body || json_object_set_new(body, "connector", json_string(sub->connector)) ||
        json_object_set_new(body, "action", json_string(sub->action)) ||
        json_object_set(body, "input", input) || set_string(body, "idempotency_key", sub->key))
        goto fail;
    if ((sub->kind || sub->model || sub->confidence_s || sub->prompt_ref) &&
        json_object_set_new(body, "proposer", proposer_json(sub)))
        goto fail;
    if (sub->priority_s && json_object_set_new(body, "priority", json_integer(sub->priority)))
        goto fail;
    if (sub->wait &&
        json_object_set_new(body, "wait_ms", json_integer(request_wait_ms(sub->wait_ms))))
        goto fail;
    return body;
fail:
    json_decref(body);
    return NULL;
}

/* The daemon answered busy (busy_refusal): say so and, with --retry-busy, wait what its
 * Retry-After asks (BUSY_MIN_PAUSE_MS to BUSY_MAX_PAUSE_MS) if that ends before
 * busy_deadline. Returns true when it is time to submit again (the reply is released). */
static bool wait_out_busy(const submission *sub, session *s, int64_t busy_deadline)
{
    long after_s = s->rep.retry_after_s >= 0 ? s->rep.retry_after_s : 1;
    if (!sub->retry_busy) {
        fprintf(stderr, "aioctl: the daemon is busy and stored nothing; try again in %ld s, "
                "or submit with --retry-busy\n", after_s);
        return false;
    }
    int64_t pause_ms = after_s * 1000 < BUSY_MAX_PAUSE_MS ? after_s * 1000 : BUSY_MAX_PAUSE_MS;
    if (pause_ms < BUSY_MIN_PAUSE_MS)
        pause_ms = BUSY_MIN_PAUSE_MS;
    int64_t left = busy_deadline - mono_ms();
    if (pause_ms > left) {
        fprintf(stderr, "aioctl: the daemon is busy and asks to wait %ld s, but %.1f s are "
                "left of the %s time: giving up (nothing was stored; a longer %s gives it "
                "more time)\n", after_s, left > 0 ? (double)left / 1000.0 : 0.0,
                sub->wait ? "--wait" : "--timeout", sub->wait ? "--wait" : "--timeout or --wait");
        return false;
    }
    fprintf(stderr, "aioctl: the daemon is busy; submitting again in %.*f s with "
            "idempotency key %s\n", pause_ms % 1000 ? 1 : 0, (double)pause_ms / 1000.0, sub->key);
    reply_fini(&s->rep);
    sleep_ms(pause_ms);
    return true;
}

/* POST the submission, again while the daemon is busy and wait_out_busy says so (each time
 * with the rest of --wait as body's wait_ms). The answer must be an action (action_reply). */
static int post_submission(const cli *o, session *s, const submission *sub, json_t *body,
                           int64_t deadline, int64_t busy_deadline)
{
    long extra_ms = sub->wait ? request_wait_ms(sub->wait_ms) : 0;
    int rc;
    for (;;) {
        rc = session_send(s, "POST", "/v1/actions", body, extra_ms);
        if (rc != AIOCTL_REFUSED || !busy_refusal(&s->rep) ||
            !wait_out_busy(sub, s, busy_deadline))
            break;
        if (sub->wait) {
            extra_ms = request_wait_ms(deadline - mono_ms());
            if (json_object_set_new(body, "wait_ms", json_integer(extra_ms)))
                return out_of_memory();
        }
    }
    return action_reply(o, s, rc);
}

/* Past the daemon's own wait (or if it answered early): poll the action in s->rep until it
 * is no longer running or deadline passes. */
static int poll_action(const cli *o, session *s, int64_t deadline)
{
    int64_t interval = POLL_FIRST_MS;
    while (classify(action_state(s->rep.json)) == OUTCOME_RUNNING) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            break;
        sleep_ms(interval < left ? interval : left);
        interval = interval * 3 / 2 < POLL_MAX_MS ? interval * 3 / 2 : POLL_MAX_MS;
        const char *id = json_string_value(json_object_get(s->rep.json, "id"));
        int rc = session_call_action(o, s, "GET", id, NULL, NULL);
        if (rc != AIOCTL_OK)
            return rc;
    }
    return AIOCTL_OK;
}

/* Show the submitted action and choose the exit code: AIOCTL_OK without --wait, else its
 * outcome, with a hint when it is not finished or may not have happened. existing: the
 * daemon answered 200 (an action it had) rather than 201. */
static int report_submission(const cli *o, const session *s, const submission *sub,
                             bool existing)
{
    if (o->json) {
        print_body(&s->rep);
    } else {
        /* A key aioctl made is new: a 200 for it can only be our own earlier submission. */
        if (existing && sub->key_given)
            fputs("aioctl: this idempotency key was used before with the same request; "
                  "this is the existing action (nothing new was submitted)\n", stderr);
        render_action(stdout, s->rep.json);
    }
    if (!sub->wait)
        return AIOCTL_OK;
    const char *state = action_state(s->rep.json);
    const char *id = json_string_value(json_object_get(s->rep.json, "id"));
    outcome out = classify(state);
    if (out == OUTCOME_HUMAN)
        fprintf(stderr, "aioctl: %s waits on a human (PENDING_APPROVAL): an approver "
                "decides with aioctl approve %s, or aioctl reject %s --comment TEXT; follow "
                "it with: aioctl get %s\n", id, id, id, id);
    else if (out == OUTCOME_RUNNING)
        fprintf(stderr, "aioctl: %s is still %s after %.1f s; follow it with: aioctl get %s\n",
                id, state, (double)sub->wait_ms / 1000.0, id);
    else if (state && strcmp(state, "UNKNOWN_OUTCOME") == 0)
        fprintf(stderr, "aioctl: %s may or may not have happened; an operator must check "
                "the system of record\n", id);
    return outcome_exit(out);
}

static int cmd_submit(cli *o, int argc, char **argv)
{
    submission sub = {0};
    json_t *input = NULL, *body = NULL;
    session s = {0};
    int rc;

    if ((rc = parse_submit(o, argc, argv, &sub)) != AIOCTL_OK ||
        (rc = load_input(sub.input, &input)) != AIOCTL_OK)
        return rc;
    /* A resubmission after "busy" must not make a second action: give it a key. */
    if (sub.retry_busy && !sub.key) {
        if ((rc = new_idempotency_key(sub.made_key, sizeof sub.made_key)) != AIOCTL_OK)
            goto done;
        sub.key = sub.made_key;
    }
    if (!(body = submit_body(&sub, input))) {
        rc = out_of_memory();
        goto done;
    }
    if ((rc = new_client(o, &s.c)) != AIOCTL_OK)
        goto done;
    int64_t start = mono_ms(), deadline = start + sub.wait_ms;
    /* --retry-busy keeps trying until --wait's time (else --timeout's) has passed. */
    int64_t busy_deadline = start + (sub.wait ? sub.wait_ms : o->timeout_ms);
    if ((rc = post_submission(o, &s, &sub, body, deadline, busy_deadline)) != AIOCTL_OK)
        goto done;
    bool existing = s.rep.status == 200;
    if (sub.wait && (rc = poll_action(o, &s, deadline)) != AIOCTL_OK)
        goto done;
    rc = report_submission(o, &s, &sub, existing);
done:
    session_end(&s);
    json_decref(body);
    json_decref(input);
    return rc;
}

/* ---- get, list ------------------------------------------------------------------------- */

static int cmd_get(cli *o, int argc, char **argv)
{
    const char *id = NULL;
    session s = {0};
    int rc = parse_one_arg(o, "get", argc, argv, NULL, 0, "ID", &id);

    if (rc)
        return rc;
    rc = show_action_call(o, &s, "GET", id, NULL, NULL);
    if (rc == AIOCTL_OK)
        rc = outcome_exit(classify(action_state(s.rep.json)));
    session_end(&s);
    return rc;
}

/* base, then "?name=value&..." for each value that is not NULL (percent-encoded). malloc'd,
 * owned by the caller (NULL: no memory). */
static char *query_path(const char *base, const char *const *names, const char *const *values,
                        size_t n)
{
    char *path = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&path, &size);
    if (!mem)
        return NULL;
    fputs(base, mem);
    char sep = '?';
    for (size_t i = 0; i < n; i++) {
        if (!values[i])
            continue;
        char *v = client_escape(values[i]);
        if (!v) {
            fclose(mem);
            free(path);
            return NULL;
        }
        fprintf(mem, "%c%s=%s", sep, names[i], v);
        free(v);
        sep = '&';
    }
    if (fclose(mem) != 0) {
        free(path);
        return NULL;
    }
    return path;
}

/* A list the daemon serves in pages: GET path(ctx, after) answers {key: [...], "next": the
 * cursor of the next page, or null}. */
typedef struct pager {
    char *(*path)(const void *ctx, const char *after); /* malloc'd (NULL: no memory) */
    const void *ctx;
    const char *key;  /* "actions" */
    const char *what; /* for "answered without <what>": "an \"actions\" list" */
    render_fn render; /* the table of the items */
} pager;

/* GET the page after the cursor after (NULL: the first); *items is its list, borrowed from
 * s->rep. */
static int get_page(const cli *o, session *s, const pager *p, const char *after, json_t **items)
{
    char *path = p->path(p->ctx, after);
    if (!path)
        return out_of_memory();
    int rc = session_call(o, s, "GET", path, NULL);
    free(path);
    if (rc == AIOCTL_OK && !(*items = reply_array(s, p->key, p->what)))
        rc = AIOCTL_REFUSED;
    return rc;
}

/* One page: as received (--json), else a table. *next: the next page's cursor (borrowed from
 * s->rep), NULL on the last page. */
static int show_page(const cli *o, session *s, const pager *p, const char *after,
                     const char **next)
{
    json_t *items;
    int rc = get_page(o, s, p, after, &items);
    *next = NULL;
    if (rc != AIOCTL_OK)
        return rc;
    show_reply(o, &s->rep, p->render, items);
    *next = json_string_value(json_object_get(s->rep.json, "next"));
    if (*next && !**next)
        *next = NULL;
    return AIOCTL_OK;
}

/* Append the items of every page from the cursor after on to collected. */
static int collect_pages(const cli *o, session *s, const pager *p, const char *after,
                         json_t *collected)
{
    char *cursor = NULL;
    json_t *items;
    int rc;

    if (after && !(cursor = strdup(after)))
        return out_of_memory();
    while ((rc = get_page(o, s, p, cursor, &items)) == AIOCTL_OK) {
        if (json_array_extend(collected, items)) {
            rc = out_of_memory();
            break;
        }
        const char *next = json_string_value(json_object_get(s->rep.json, "next"));
        if (!next || !*next)
            break;
        if (cursor && strcmp(cursor, next) == 0) {
            fprintf(stderr, "aioctl: the daemon returned the same page cursor twice (%s); "
                    "stopping\n", cursor);
            rc = AIOCTL_REFUSED;
            break;
        }
        free(cursor);
        if (!(cursor = strdup(next))) {
            rc = out_of_memory();
            break;
        }
    }
    free(cursor);
    return rc;
}

/* Every page from the cursor after on, shown as one. */
static int show_all_pages(const cli *o, session *s, const pager *p, const char *after)
{
    json_t *collected = json_array();
    int rc = collected ? collect_pages(o, s, p, after, collected) : out_of_memory();
    if (rc == AIOCTL_OK && o->json)
        /* Several pages make one document, shaped like a single page with nothing after it. */
        rc = print_json_take(json_pack("{s:O,s:n}", p->key, collected, "next"));
    else if (rc == AIOCTL_OK)
        p->render(stdout, collected);
    json_decref(collected);
    return rc;
}

/* A malloc'd copy of s in upper case (upper) or lower case (ASCII), or NULL when out of
 * memory. */
static char *ascii_case(const char *s, bool upper)
{
    char *copy = strdup(s);
    for (char *p = copy; p && *p; p++) {
        if (upper && *p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
        else if (!upper && *p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    }
    return copy;
}

/* list's filters, each NULL when not given. */
typedef struct list_filter {
    const char *state; /* upper case */
    const char *connector;
    const char *limit;
    bool review;
} list_filter;

/* "/v1/actions?..." with the filters (ctx: a list_filter) and the page cursor after. */
static char *actions_path(const void *ctx, const char *after)
{
    const list_filter *f = ctx;
    const char *const names[] = {"state", "connector", "limit", "after", "review"};
    const char *const values[] = {f->state, f->connector, f->limit, after, f->review ? "true" : NULL};
    return query_path("/v1/actions", names, values, 5);
}

static int cmd_list(cli *o, int argc, char **argv)
{
    const char *state = NULL, *after = NULL, *next;
    list_filter f = {0};
    bool all = false;
    const flag flags[] = {
        {"--state", FLAG_VALUE, &state, NULL},
        {"--connector", FLAG_VALUE, &f.connector, NULL},
        {"--limit", FLAG_VALUE, &f.limit, NULL},
        {"--after", FLAG_VALUE, &after, NULL},
        {"--all", FLAG_SWITCH, NULL, &all},
        {"--review", FLAG_SWITCH, NULL, &f.review},
    };
    const pager p = {actions_path, &f, "actions", "an \"actions\" list", render_action_table};
    long limit;
    char *state_upper = NULL;
    session s = {0};
    int rc = parse_flags_only(o, "list", argc, argv, flags, sizeof flags / sizeof flags[0]);

    if (rc)
        return rc;
    if (f.limit && !parse_long(f.limit, 1, 1000000, &limit))
        return usage_error("--limit: expected a positive integer, got '%s'", f.limit);
    /* States are upper case; accept "denied" too. */
    if (state && !(f.state = state_upper = ascii_case(state, true)))
        return out_of_memory();
    if ((rc = new_client(o, &s.c)) == AIOCTL_OK && all) {
        rc = show_all_pages(o, &s, &p, after);
    } else if (rc == AIOCTL_OK && (rc = show_page(o, &s, &p, after, &next)) == AIOCTL_OK &&
               next && !o->json) {
        fputs("(more: aioctl list --after ", stderr);
        render_text(stderr, next);
        fputs(", or --all)\n", stderr);
    }
    session_end(&s);
    free(state_upper);
    return rc;
}

/* ---- connectors, health, whoami -------------------------------------------------------- */

/* Does s hold something other than blanks? */
static bool has_text(const char *s)
{
    for (; s && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return true;
    return false;
}

/* A connector object from the daemon: as received (--json), else as a one-row table. */
static int show_connector(const cli *o, const reply *rep)
{
    if (o->json) {
        print_body(rep);
        return AIOCTL_OK;
    }
    json_t *one = json_pack("[O]", rep->json);
    if (!one)
        return out_of_memory();
    render_connectors(stdout, one);
    json_decref(one);
    return AIOCTL_OK;
}

/* connectors pause|resume NAME [--reason TEXT]: POST /v1/connectors/NAME/VERB (operator). */
static int connectors_flow(cli *o, const char *verb, int argc, char **argv)
{
    const char *name = NULL, *reason = NULL;
    const flag flags[] = {{"--reason", FLAG_VALUE, &reason, NULL}};
    char cmd[32];
    session s = {0};
    json_t *body = NULL;
    int rc;

    snprintf(cmd, sizeof cmd, "connectors %s", verb);
    rc = parse_one_arg(o, cmd, argc, argv, flags, sizeof flags / sizeof flags[0],
                       "NAME (a connector; aioctl connectors lists them)", &name);
    if (rc)
        return rc;
    if (reason && !has_text(reason))
        return usage_error("%s: --reason must not be empty", cmd);
    if (reason && !(body = json_pack("{s:s}", "reason", reason)))
        return out_of_memory();
    rc = session_request_named(o, &s, "POST", "/v1/connectors/", name, verb, body);
    if (rc == AIOCTL_OK) {
        if (!json_is_object(s.rep.json) || !json_is_string(json_object_get(s.rep.json, "name")))
            rc = answered_without(s.c, "a connector");
        else
            rc = show_connector(o, &s.rep);
    }
    json_decref(body);
    session_end(&s);
    return rc;
}

static int cmd_connectors_pause(cli *o, int argc, char **argv)
{
    return connectors_flow(o, "pause", argc, argv);
}

static int cmd_connectors_resume(cli *o, int argc, char **argv)
{
    return connectors_flow(o, "resume", argc, argv);
}

static int cmd_connectors_list(cli *o, int argc, char **argv)
{
    int rc = parse_flags_only(o, "connectors", argc, argv, NULL, 0);
    if (rc)
        return rc;
    return show_list(o, "/v1/connectors", "connectors", "a \"connectors\" list",
                     render_connectors);
}

/* aioctl connectors [pause NAME [--reason TEXT] | resume NAME [--reason TEXT]] */
static int cmd_connectors(cli *o, int argc, char **argv)
{
    static const command subs[] = {{"pause", cmd_connectors_pause},
                                   {"resume", cmd_connectors_resume}};
    return run_subcommand(o, "connectors", argc, argv, subs, sizeof subs / sizeof subs[0],
                          cmd_connectors_list, "pause NAME or resume NAME; nothing to list them");
}

/* /healthz's answer: as received (--json), then, unless its status is "ok", a complaint. */
static int report_health(const cli *o, const session *s)
{
    const char *status = json_string_value(json_object_get(s->rep.json, "status"));
    if (o->json)
        print_body(&s->rep);
    if (!status || strcmp(status, "ok") != 0) {
        fprintf(stderr, "aioctl: the daemon at %s is not healthy: status '", client_url(s->c));
        render_text(stderr, status ? status : "(none)");
        fputs("'\n", stderr);
        return AIOCTL_REFUSED;
    }
    if (!o->json)
        printf("ok: aiorun answers at %s\n", client_url(s->c));
    return AIOCTL_OK;
}

static int cmd_health(cli *o, int argc, char **argv)
{
    session s = {0};
    int rc = parse_flags_only(o, "health", argc, argv, NULL, 0);

    if (rc)
        return rc;
    /* /healthz needs no token; sending none keeps health working whatever the token file. */
    if ((rc = refuse_config(o)) != AIOCTL_OK ||
        (rc = client_new(o->url, o->timeout_ms, NULL, &s.c)) != AIOCTL_OK)
        return rc;
    if ((rc = session_call(o, &s, "GET", "/healthz", NULL)) == AIOCTL_OK)
        rc = report_health(o, &s);
    session_end(&s);
    return rc;
}

/* "NAME (roles: a,b)". */
static int print_identity(const char *name, const json_t *roles)
{
    char *csv = render_join(roles);
    if (!csv)
        return out_of_memory();
    render_text(stdout, name);
    fputs(" (roles: ", stdout);
    render_text(stdout, csv);
    fputs(")\n", stdout);
    free(csv);
    return AIOCTL_OK;
}

/* aioctl stats: GET /v1/stats as a table (latency quantiles are bucket estimates). */
static int cmd_stats(cli *o, int argc, char **argv)
{
    session s = {0};
    const char *day = NULL;
    const flag flags[] = {{"--day", FLAG_VALUE, &day, NULL}};
    int rc = parse_flags_only(o, "stats", argc, argv, flags, 1);

    if (rc)
        return rc;
    char path[64];
    if (day && (strlen(day) != 10 || day[4] != '-' || day[7] != '-'))
        return usage_error("stats --day: expected YYYY-MM-DD, got '%s'", day);
    snprintf(path, sizeof path, day ? "/v1/stats?day=%s" : "/v1/stats", day ? day : "");
    if ((rc = session_request(o, &s, "GET", path, NULL)) == AIOCTL_OK) {
        if (o->json)
            print_body(&s.rep);
        else if (day)
            render_stats_day(stdout, json_object_get(s.rep.json, "connectors"));
        else
            render_stats(stdout, json_object_get(s.rep.json, "connectors"));
    }
    session_end(&s);
    return rc;
}

static int cmd_whoami(cli *o, int argc, char **argv)
{
    session s = {0};
    int rc = parse_flags_only(o, "whoami", argc, argv, NULL, 0);

    if (rc)
        return rc;
    if ((rc = session_request(o, &s, "GET", "/v1/whoami", NULL)) == AIOCTL_OK) {
        const char *name = json_string_value(json_object_get(s.rep.json, "name"));
        if (!name)
            rc = answered_without(s.c, "a token name");
        else if (o->json)
            print_body(&s.rep);
        else
            rc = print_identity(name, json_object_get(s.rep.json, "roles"));
    }
    session_end(&s);
    return rc;
}

/* ---- cancel and resolve ---------------------------------------------------------------- */

/* cancel answered 202: a call is in flight, so the outcome is decided when it returns. */
static int cancel_requested(const reply *rep, const char *id)
{
    const char *note = json_string_value(json_object_get(rep->json, "cancel"));
    fputs("aioctl: cancel ", stderr);
    render_text(stderr, note ? note : "requested");
    fputs("; follow it with: aioctl get ", stderr);
    render_text(stderr, id);
    fputc('\n', stderr);
    return AIOCTL_PENDING;
}

static int cmd_cancel(cli *o, int argc, char **argv)
{
    const char *id = NULL;
    session s = {0};
    int rc = parse_one_arg(o, "cancel", argc, argv, NULL, 0, "ID", &id);

    if (rc)
        return rc;
    rc = show_action_call(o, &s, "POST", id, "cancel", NULL);
    if (rc == AIOCTL_OK && s.rep.status == 202)
        rc = cancel_requested(&s.rep, id);
    session_end(&s);
    return rc;
}

static int cmd_resolve(cli *o, int argc, char **argv)
{
    const char *id = NULL, *reason = NULL;
    bool succeeded = false, failed = false, retry = false;
    const flag flags[] = {
        {"--succeeded", FLAG_SWITCH, NULL, &succeeded},
        {"--failed", FLAG_SWITCH, NULL, &failed},
        {"--retry", FLAG_SWITCH, NULL, &retry},
        {"--reason", FLAG_VALUE, &reason, NULL},
    };
    session s = {0};
    json_t *body;
    int rc = parse_one_arg(o, "resolve", argc, argv, flags, sizeof flags / sizeof flags[0],
                           "ID (--succeeded | --failed | --retry) --reason TEXT", &id);

    if (rc)
        return rc;
    if (succeeded + failed + retry != 1)
        return usage_error("resolve: give exactly one of --succeeded (it happened), --failed (it "
                           "did not; do not try again) or --retry (it did not; send it again)");
    if (!has_text(reason))
        return usage_error("resolve: --reason TEXT is required: say what you checked (it is "
                           "stored with the action)");
    const char *chosen = succeeded ? "succeeded" : failed ? "failed" : "retry";
    if (!(body = json_pack("{s:s,s:s}", "outcome", chosen, "reason", reason)))
        return out_of_memory();
    rc = show_action_call(o, &s, "POST", id, "resolve", body);
    session_end(&s);
    json_decref(body);
    return rc;
}

/* ---- approvals, autonomy, policies ---------------------------------------------------- */

/* Does the reply hold an object with key (not null)? Reported as "answered without <what>"
 * when not. */
static bool reply_has(const session *s, const char *key, const char *what)
{
    const json_t *v = json_object_get(s->rep.json, key);
    if (v && !json_is_null(v))
        return true;
    answered_without(s->c, what);
    return false;
}

/* Is s one of the n words of set? */
static bool is_one_of(const char *s, const char *const *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, set[i]) == 0)
            return true;
    return false;
}

/* "/v1/approvals?state=...&after=..." (ctx: the state, lower case, or NULL). */
static char *approvals_path(const void *ctx, const char *after)
{
    const char *const names[] = {"state", "after"};
    const char *const values[] = {ctx, after};
    return query_path("/v1/approvals", names, values, 2);
}

/* aioctl approvals [--state pending|rejected|expired] [--all] */
static int cmd_approvals_list(cli *o, int argc, char **argv)
{
    static const char *const states[] = {"pending", "rejected", "expired"};
    const char *state_given = NULL, *next;
    bool all = false;
    const flag flags[] = {
        {"--state", FLAG_VALUE, &state_given, NULL},
        {"--all", FLAG_SWITCH, NULL, &all},
    };
    char *state = NULL;
    session s = {0};
    int rc = parse_flags_only(o, "approvals", argc, argv, flags, sizeof flags / sizeof flags[0]);

    if (rc)
        return rc;
    if (state_given && !(state = ascii_case(state_given, false)))
        return out_of_memory();
    if (state && !is_one_of(state, states, sizeof states / sizeof states[0])) {
        free(state);
        return usage_error("approvals: --state must be pending, rejected or expired, got '%s'",
                           state_given);
    }
    const pager p = {approvals_path, state, "approvals", "an \"approvals\" list",
                     render_approval_table};
    if ((rc = new_client(o, &s.c)) == AIOCTL_OK && all) {
        rc = show_all_pages(o, &s, &p, NULL);
    } else if (rc == AIOCTL_OK && (rc = show_page(o, &s, &p, NULL, &next)) == AIOCTL_OK &&
               next && !o->json) {
        fprintf(stderr, "(more: aioctl approvals%s%s --all)\n", state ? " --state " : "",
                state ? state : "");
    }
    session_end(&s);
    free(state);
    return rc;
}

/* aioctl approvals show ID */
static int cmd_approvals_show(cli *o, int argc, char **argv)
{
    const char *id = NULL;
    session s = {0};
    int rc = parse_one_arg(o, "approvals show", argc, argv, NULL, 0, "ID", &id);

    if (rc)
        return rc;
    rc = session_request_named(o, &s, "GET", "/v1/approvals/", id, NULL, NULL);
    if (rc == AIOCTL_OK && !reply_has(&s, "id", "an approval"))
        rc = AIOCTL_REFUSED;
    if (rc == AIOCTL_OK)
        show_reply(o, &s.rep, render_approval, s.rep.json);
    session_end(&s);
    return rc;
}

static int cmd_approvals(cli *o, int argc, char **argv)
{
    static const command subs[] = {{"show", cmd_approvals_show}};
    return run_subcommand(o, "approvals", argc, argv, subs, sizeof subs / sizeof subs[0],
                          cmd_approvals_list, "show ID; aioctl approve ID and aioctl reject ID "
                          "decide");
}

/* approve|reject ID [--comment TEXT]: POST /v1/approvals/ID {"decision", "comment"}. */
static int decide_approval(cli *o, const char *decision, int argc, char **argv)
{
    bool reject = strcmp(decision, "reject") == 0;
    const char *id = NULL, *comment = NULL;
    const flag flags[] = {{"--comment", FLAG_VALUE, &comment, NULL}};
    session s = {0};
    json_t *body;
    int rc = parse_one_arg(o, decision, argc, argv, flags, sizeof flags / sizeof flags[0],
                           reject ? "ID --comment TEXT" : "ID [--comment TEXT]", &id);

    if (rc)
        return rc;
    if (reject && !comment)
        return usage_error("reject: --comment TEXT is required: say why (it is stored with the "
                           "action, as its error)");
    if (comment && !has_text(comment))
        return usage_error("%s: --comment must not be empty", decision);
    if (!(body = json_pack("{s:s}", "decision", decision)) || set_string(body, "comment", comment)) {
        json_decref(body);
        return out_of_memory();
    }
    rc = session_request_named(o, &s, "POST", "/v1/approvals/", id, NULL, body);
    if (rc == AIOCTL_OK && !reply_has(&s, "id", "an approval"))
        rc = AIOCTL_REFUSED;
    if (rc == AIOCTL_OK)
        show_reply(o, &s.rep, render_approval_line, s.rep.json);
    json_decref(body);
    session_end(&s);
    return rc;
}

static int cmd_approve(cli *o, int argc, char **argv)
{
    return decide_approval(o, "approve", argc, argv);
}

static int cmd_reject(cli *o, int argc, char **argv)
{
    return decide_approval(o, "reject", argc, argv);
}

/* The reply of GET or PUT /v1/autonomy: shown when it has its "config" and "runtime". */
static int show_autonomy(const cli *o, const session *s)
{
    if (!json_is_object(json_object_get(s->rep.json, "config")) ||
        !json_is_object(json_object_get(s->rep.json, "runtime")))
        return answered_without(s->c, "the autonomy levels (\"config\" and \"runtime\")");
    show_reply(o, &s->rep, render_autonomy, s->rep.json);
    return AIOCTL_OK;
}

/* aioctl autonomy */
static int cmd_autonomy_show(cli *o, int argc, char **argv)
{
    session s = {0};
    int rc = parse_flags_only(o, "autonomy", argc, argv, NULL, 0);

    if (rc)
        return rc;
    if ((rc = session_request(o, &s, "GET", "/v1/autonomy", NULL)) == AIOCTL_OK)
        rc = show_autonomy(o, &s);
    session_end(&s);
    return rc;
}

/* aioctl autonomy set PATTERN auto|semi|suggest|config: PUT /v1/autonomy (operator); "config"
 * sends null, which removes the runtime setting of PATTERN. */
static int cmd_autonomy_set(cli *o, int argc, char **argv)
{
    static const char *const levels[] = {"auto", "semi", "suggest", "config"};
    const char *pos[2];
    session s = {0};
    json_t *body;
    int n_pos, rc = parse_command_args(o, "autonomy set", argc, argv, NULL, 0, pos, 2, &n_pos);

    if (rc)
        return rc;
    if (n_pos != 2 || !*pos[0])
        return usage_error("autonomy set: expected PATTERN LEVEL (PATTERN: connector.action, "
                           "connector.* or *; LEVEL: auto, semi, suggest or config)");
    if (!is_one_of(pos[1], levels, sizeof levels / sizeof levels[0]))
        return usage_error("autonomy set: LEVEL must be auto, semi, suggest, or config (remove "
                           "the runtime setting), got '%s'", pos[1]);
    bool remove = strcmp(pos[1], "config") == 0;
    body = json_pack("{s:s,s:o}", "pattern", pos[0], "level",
                     remove ? json_null() : json_string(pos[1]));
    if (!body)
        return out_of_memory();
    if ((rc = session_request(o, &s, "PUT", "/v1/autonomy", body)) == AIOCTL_OK) {
        if (!o->json) {
            render_text(stdout, pos[0]);
            if (remove)
                fputs(": runtime setting removed; the config decides\n\n", stdout);
            else
                printf(": %s from now on\n\n", pos[1]);
        }
        rc = show_autonomy(o, &s);
    }
    json_decref(body);
    session_end(&s);
    return rc;
}

static int cmd_autonomy(cli *o, int argc, char **argv)
{
    static const command subs[] = {{"set", cmd_autonomy_set}};
    return run_subcommand(o, "autonomy", argc, argv, subs, sizeof subs / sizeof subs[0],
                          cmd_autonomy_show, "set PATTERN LEVEL; nothing to list them");
}

/* aioctl policies */
static int cmd_policies_show(cli *o, int argc, char **argv)
{
    session s = {0};
    int rc = parse_flags_only(o, "policies", argc, argv, NULL, 0);

    if (rc)
        return rc;
    rc = session_request(o, &s, "GET", "/v1/policies", NULL);
    if (rc == AIOCTL_OK && !reply_has(&s, "version", "a policy version"))
        rc = AIOCTL_REFUSED;
    if (rc == AIOCTL_OK)
        show_reply(o, &s.rep, render_policies, s.rep.json);
    session_end(&s);
    return rc;
}

/* What a reload did, for people: the version now in force, and whether it changed. before:
 * the version in force just before (NULL when unknown). */
static void print_reload(const session *s, const char *before)
{
    const char *version = json_string_value(json_object_get(s->rep.json, "version"));
    if (before && strcmp(before, version) == 0) {
        fputs("policies unchanged: the files are the set in force (version ", stdout);
        render_text(stdout, version);
        fputs(")\n", stdout);
    } else {
        fputs("policies reloaded: version ", stdout);
        render_text(stdout, version);
        if (before) {
            fputs(" (was ", stdout);
            render_text(stdout, before);
            fputc(')', stdout);
        }
        fputc('\n', stdout);
    }
    render_policies(stdout, s->rep.json);
}

/* aioctl policies reload: POST /v1/policies/reload (operator). A set that does not load (or
 * fails its tests) is refused with 422 and the message names file and line: exit 4, and the
 * set in force keeps serving. */
static int cmd_policies_reload(cli *o, int argc, char **argv)
{
    session s = {0};
    char *before = NULL;
    int rc = parse_flags_only(o, "policies reload", argc, argv, NULL, 0);

    if (rc)
        return rc;
    if ((rc = new_client(o, &s.c)) != AIOCTL_OK)
        goto done;
    /* The version before, to say whether the reload changed anything (people only). */
    if (!o->json && (rc = session_call(o, &s, "GET", "/v1/policies", NULL)) != AIOCTL_OK)
        goto done;
    const char *was = json_string_value(json_object_get(s.rep.json, "version"));
    if (was && !(before = strdup(was))) {
        rc = out_of_memory();
        goto done;
    }
    rc = session_call(o, &s, "POST", "/v1/policies/reload", NULL);
    if (rc == AIOCTL_OK && !reply_has(&s, "version", "a policy version"))
        rc = AIOCTL_REFUSED;
    if (rc == AIOCTL_OK && o->json)
        print_body(&s.rep);
    else if (rc == AIOCTL_OK)
        print_reload(&s, before);
done:
    free(before);
    session_end(&s);
    return rc;
}

static int cmd_policies(cli *o, int argc, char **argv)
{
    static const command subs[] = {{"reload", cmd_policies_reload}};
    return run_subcommand(o, "policies", argc, argv, subs, sizeof subs / sizeof subs[0],
                          cmd_policies_show, "reload; nothing to show them");
}

/* ---- token create / list / revoke ------------------------------------------------------ */

/* "30d", "12h", "90m", "45s": a positive duration, at most MAX_EXPIRES_S, in seconds. */
static bool parse_duration(const char *s, int64_t *seconds)
{
    char *end;
    if (!(s[0] >= '0' && s[0] <= '9'))
        return false;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v <= 0 || !end[0] || end[1])
        return false;
    long long unit;
    switch (end[0]) {
    case 's': unit = 1; break;
    case 'm': unit = 60; break;
    case 'h': unit = 3600; break;
    case 'd': unit = 86400; break;
    default: return false;
    }
    if (v > MAX_EXPIRES_S / unit)
        return false;
    *seconds = v * unit;
    return true;
}

/* auth.h's rule for names, checked here too so both modes answer a bad one the same way. */
static bool valid_token_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > AUTH_NAME_MAX)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-'))
            return false;
    return true;
}

/* Wipe a JSON string in place (it held a token) before its value is freed. */
static void wipe_json_string(json_t *v)
{
    if (json_is_string(v))
        explicit_bzero((char *)json_string_value(v), json_string_length(v));
}

/* "2026-11-26T17:00:00.123Z" for ms since the epoch. */
static void format_time_ms(int64_t ms, char *buf, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    char date[32];
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%03dZ", date, (int)(ms % 1000));
}

/* The token's file for --save: FILE, else --token-file, else the default file. *path is
 * malloc'd, owned by the caller. */
static int save_path(const cli *o, const char *given, char **path)
{
    *path = NULL;
    if (given && !*given)
        return usage_error("--save: the file name must not be empty");
    if (given || o->token_file) {
        *path = strdup(given ? given : o->token_file);
    } else {
        const char *home = getenv("HOME");
        if (!home || !*home)
            return usage_error("--save: HOME is unset, so there is no default token file; "
                               "give --save FILE");
        *path = tokenfile_default_path();
    }
    return *path ? AIOCTL_OK : out_of_memory();
}

/* Same file (by device and inode)? False when either does not exist. */
static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* What create shows: the token once (stdout), or where it was saved. */
typedef struct created {
    const char *name;
    const char *roles;      /* "a,b" */
    const char *expires_at; /* RFC 3339, or NULL for never */
    const char *token;
} created;

/* ["a", "b"] from "a,b": a new reference, or NULL when out of memory. */
static json_t *roles_array(const char *csv)
{
    json_t *roles = json_array();
    char *copy = strdup(csv), *save = NULL;
    if (!roles || !copy)
        goto fail;
    for (char *r = strtok_r(copy, ",", &save); r; r = strtok_r(NULL, ",", &save))
        if (json_array_append_new(roles, json_string(r)))
            goto fail;
    free(copy);
    return roles;
fail:
    free(copy);
    json_decref(roles);
    return NULL;
}

/* {"name", "roles": [...], "expires_at"} plus the token or where it was saved; a new
 * reference (NULL when out of memory). */
static json_t *created_json(const created *cr, const char *saved_to)
{
    json_t *roles = roles_array(cr->roles);
    if (!roles)
        return NULL;
    json_t *doc = json_pack("{s:s,s:o,s:s?,s:s?}", "name", cr->name, "roles", roles,
                            "expires_at", cr->expires_at, saved_to ? "saved_to" : "token",
                            saved_to ? saved_to : cr->token);
    if (doc && !json_object_get(doc, "expires_at"))
        json_object_set_new(doc, "expires_at", json_null());
    return doc;
}

/* Store a new token (save was begun by tokenfile_save_begin; committed or aborted here) and
 * say where it went. */
static int store_created(const cli *o, const created *cr, tokenfile_save *save)
{
    char *path = strdup(save->path);
    int rc;

    if (!path) {
        tokenfile_save_abort(save);
        return out_of_memory();
    }
    if ((rc = tokenfile_save_commit(save, cr->token)) != AIOCTL_OK)
        fprintf(stderr, "aioctl: token %s was created but could not be stored, so nobody "
                "has it; revoke it: aioctl%s%s token revoke %s\n", cr->name,
                o->config ? " --config " : "", o->config ? o->config : "", cr->name);
    else if (o->json)
        rc = print_json_take(created_json(cr, path));
    else
        printf("token for %s saved to %s\n", cr->name, path);
    free(path);
    return rc;
}

/* Show a new token, or store it (store_created when save was begun). raw: the daemon's reply,
 * printed as is for --json without --save (NULL offline). */
static int show_created(const cli *o, const created *cr, tokenfile_save *save, const reply *raw)
{
    int rc = AIOCTL_OK;

    if (save && save->path)
        return store_created(o, cr, save);
    if (o->json && raw) {
        print_body(raw);
    } else if (o->json) {
        json_t *doc = created_json(cr, NULL);
        rc = print_json(doc);
        wipe_json_string(json_object_get(doc, "token"));
        json_decref(doc);
    } else {
        printf("%s\n", cr->token);
    }
    if (rc == AIOCTL_OK) {
        fprintf(stderr, "token for %s (roles %s", cr->name, cr->roles);
        if (cr->expires_at)
            fprintf(stderr, "; expires %s", cr->expires_at);
        fputs(") \u2014 shown once; store it now\n", stderr);
    }
    return rc;
}

static int token_create_offline(cli *o, const char *name, unsigned roles, int64_t expires_s,
                                tokenfile_save *save)
{
    offline *off = NULL;
    char token[AUTH_TOKEN_LEN + 1] = {0}, roles_csv[128], expires_at[40];
    int64_t expires_ms = expires_s ? ar_now_ms() + expires_s * 1000 : 0;
    int rc = offline_open(o->config, &off);

    if (rc == AIOCTL_OK)
        rc = offline_token_create(off, name, roles, expires_ms, token);
    offline_close(off);
    if (rc != AIOCTL_OK) {
        tokenfile_save_abort(save);
        return rc;
    }
    auth_roles_format(roles, roles_csv, sizeof roles_csv);
    if (expires_ms)
        format_time_ms(expires_ms, expires_at, sizeof expires_at);
    created cr = {name, roles_csv, expires_ms ? expires_at : NULL, token};
    rc = show_created(o, &cr, save, NULL);
    explicit_bzero(token, sizeof token);
    return rc;
}

/* POST /v1/tokens's body {"name", "roles": [...], "expires_in_s"}: a new reference, or NULL
 * when out of memory. */
static json_t *token_request(const char *name, const char *roles_csv, int64_t expires_s)
{
    json_t *roles = roles_array(roles_csv);
    json_t *body = roles ? json_pack("{s:s,s:o}", "name", name, "roles", roles) : NULL;
    if (body && expires_s && json_object_set_new(body, "expires_in_s", json_integer(expires_s))) {
        json_decref(body);
        return NULL;
    }
    return body;
}

/* The daemon's answer to POST /v1/tokens: show or store the token it holds. */
static int show_created_reply(const cli *o, const session *s, const char *name,
                              const char *roles_csv, tokenfile_save *save)
{
    json_t *token = json_object_get(s->rep.json, "token");
    json_t *reply_roles = json_object_get(s->rep.json, "roles");
    char *got_roles = NULL;
    int rc;

    if (!json_is_string(token) || json_string_length(token) == 0)
        return answered_without(s->c, "a token");
    if (json_array_size(reply_roles) > 0 && !(got_roles = render_join(reply_roles)))
        return out_of_memory();
    created cr = {name, got_roles ? got_roles : roles_csv,
                  json_string_value(json_object_get(s->rep.json, "expires_at")),
                  json_string_value(token)};
    rc = show_created(o, &cr, save, &s->rep);
    wipe_json_string(token);
    free(got_roles);
    return rc;
}

static int token_create_online(cli *o, const char *name, const char *roles_csv,
                               int64_t expires_s, tokenfile_save *save)
{
    session s = {0};
    json_t *body = token_request(name, roles_csv, expires_s);
    int rc;

    if (!body) {
        rc = out_of_memory();
        goto done;
    }
    if ((rc = new_client(o, &s.c)) != AIOCTL_OK)
        goto done;
    /* Storing the new token over the file whose token this very request carries would lose
     * the caller's own token. */
    if (save->path && o->token_path[0] && same_file(save->path, o->token_path)) {
        rc = usage_error("--save would overwrite %s, the token file this command uses to "
                         "authenticate; give --save ANOTHER_FILE", save->path);
        goto done;
    }
    if ((rc = session_call(o, &s, "POST", "/v1/tokens", body)) == AIOCTL_OK)
        rc = show_created_reply(o, &s, name, roles_csv, save);
done:
    tokenfile_save_abort(save); /* a no-op once show_created committed or aborted it */
    json_decref(body);
    session_end(&s);
    return rc;
}

static int cmd_token_create(cli *o, int argc, char **argv)
{
    const char *name = NULL, *roles_s = NULL, *expires = NULL, *save_given = NULL;
    bool save = false;
    const flag flags[] = {
        {"--name", FLAG_VALUE, &name, NULL},
        {"--roles", FLAG_VALUE, &roles_s, NULL},
        {"--expires", FLAG_VALUE, &expires, NULL},
        {"--save", FLAG_OPTIONAL_VALUE, &save_given, &save},
    };
    unsigned roles;
    int64_t expires_s = 0;
    char *path = NULL;
    ar_error err = {0};
    tokenfile_save saver = {.fd = -1};
    int rc = parse_flags_only(o, "token create", argc, argv, flags,
                              sizeof flags / sizeof flags[0]);

    if (rc)
        return rc;
    if (!name || !roles_s)
        return usage_error("token create: expected --name NAME --roles ROLE[,ROLE...]");
    if (!valid_token_name(name))
        return usage_error("token create: --name must be 1 to %d of A-Z a-z 0-9 _ . -, got '%s'",
                           AUTH_NAME_MAX, name);
    if (auth_roles_parse(roles_s, &roles, &err) != AR_OK)
        return usage_error("token create: --roles: %s", err.message);
    if (expires && !parse_duration(expires, &expires_s))
        return usage_error("--expires: expected a duration like 30d, 12h, 90m or 45s (at most "
                           "3650d), got '%s'", expires);
    if (save) {
        if ((rc = save_path(o, save_given, &path)) != AIOCTL_OK)
            return rc;
        /* Before the token exists: a file we cannot write must not cost a token. */
        rc = tokenfile_save_begin(&saver, path);
        free(path);
        if (rc != AIOCTL_OK)
            return rc;
    }
    if (o->config)
        return token_create_offline(o, name, roles, expires_s, &saver);
    return token_create_online(o, name, roles_s, expires_s, &saver);
}

static int token_list_offline(cli *o)
{
    offline *off = NULL;
    json_t *tokens = NULL;
    int rc = offline_open(o->config, &off);

    if (rc == AIOCTL_OK && (rc = offline_token_list(off, &tokens)) == AIOCTL_OK) {
        if (o->json)
            rc = print_json_take(json_pack("{s:O}", "tokens", tokens));
        else
            render_token_table(stdout, tokens);
    }
    json_decref(tokens);
    offline_close(off);
    return rc;
}

static int cmd_token_list(cli *o, int argc, char **argv)
{
    int rc = parse_flags_only(o, "token list", argc, argv, NULL, 0);

    if (rc)
        return rc;
    if (o->config)
        return token_list_offline(o);
    return show_list(o, "/v1/tokens", "tokens", "a \"tokens\" list", render_token_table);
}

static int token_revoke_offline(cli *o, const char *name)
{
    offline *off = NULL;
    int rc = offline_open(o->config, &off);

    if (rc == AIOCTL_OK && (rc = offline_token_revoke(off, name)) == AIOCTL_OK) {
        if (o->json)
            rc = print_json_take(json_pack("{s:s,s:s}", "name", name, "state", "revoked"));
        else
            printf("token %s revoked\n", name);
    }
    offline_close(off);
    return rc;
}

static int token_revoke_online(cli *o, const char *name)
{
    session s = {0};
    int rc = session_request_named(o, &s, "DELETE", "/v1/tokens/", name, NULL, NULL);

    if (rc == AIOCTL_OK) {
        if (o->json)
            print_body(&s.rep);
        else
            printf("token %s revoked\n", name);
    }
    session_end(&s);
    return rc;
}

static int cmd_token_revoke(cli *o, int argc, char **argv)
{
    const char *name = NULL;
    int rc = parse_one_arg(o, "token revoke", argc, argv, NULL, 0, "NAME", &name);

    if (rc)
        return rc;
    if (!valid_token_name(name))
        return usage_error("token revoke: '%s' is not a token name (1 to %d of A-Z a-z 0-9 _ . -)",
                           name, AUTH_NAME_MAX);
    if (o->config)
        return token_revoke_offline(o, name);
    return token_revoke_online(o, name);
}

/* aioctl token create|list|revoke ... */
static int cmd_token(cli *o, int argc, char **argv)
{
    static const command subs[] = {
        {"create", cmd_token_create}, {"list", cmd_token_list}, {"revoke", cmd_token_revoke}};
    return run_subcommand(o, "token", argc, argv, subs, sizeof subs / sizeof subs[0], NULL,
                          "create, list or revoke");
}

/* ---- backup ---------------------------------------------------------------------------- */

/* What a backup wrote, for people: where, how large, and how to restore it. */
static void print_backup(const offline_backup_info *info, const char *dir)
{
    double mib = (double)info->journal_bytes / (1024.0 * 1024.0);
    printf("backup of %s written to %s (journal %.*f MiB, compacted)\n", info->data_dir, dir,
           mib < 0.1 ? 2 : 1, mib);
    printf("to restore: stop the daemon, move %s aside, then\n"
           "  mkdir -m 700 %s && cp -a %s/journal %s\n"
           "  install -m 600 %s/auth.key %s\n"
           "and start the daemon (README.md, \"Backup and restore\")\n",
           info->data_dir, info->data_dir, dir, info->journal_dir, dir, info->auth_key_file);
}

static int cmd_backup(cli *o, int argc, char **argv)
{
    const char *dir = NULL;
    offline *off = NULL;
    offline_backup_info info;
    int rc = parse_one_arg(o, "backup", argc, argv, NULL, 0, "DIR (a new or empty directory)",
                           &dir);

    if (rc)
        return rc;
    if (!o->config)
        return usage_error("backup needs --config FILE (the daemon's config, like aiorun.json): "
                           "it reads the daemon's data directory directly, whether the daemon "
                           "runs or not");
    if ((rc = offline_open_existing(o->config, &off)) == AIOCTL_OK)
        rc = offline_backup(off, dir, &info);
    offline_close(off);
    if (rc != AIOCTL_OK)
        return rc;
    if (o->json)
        return print_json_take(json_pack("{s:s,s:s,s:I,s:s,s:s}", "data_dir", info.data_dir,
                                         "backup", dir, "journal_bytes",
                                         (json_int_t)info.journal_bytes, "journal_dir",
                                         info.journal_dir, "auth_key_file", info.auth_key_file));
    print_backup(&info, dir);
    return AIOCTL_OK;
}

/* compact_cmd.c: one compaction run on the config's data directory. */
int aioctl_compact_command(const char *config_path, bool json);

static int cmd_compact(cli *o, int argc, char **argv)
{
    int rc = parse_flags_only(o, "compact", argc, argv, NULL, 0);
    if (rc)
        return rc;
    if (!o->config)
        return usage_error("compact needs --config FILE (the daemon's config, like aiorun.json): it works "
                           "on the daemon's data directory directly, whether the daemon runs or not");
    return aioctl_compact_command(o->config, o->json);
}

/* aioctl policy test|eval: runs the policy files alone, without the daemon (policy_cmd.c).
 * A global --config is handed on so that the config's policy_dir and limits apply. */
static int cmd_policy(cli *o, int argc, char **argv)
{
    char **args = calloc((size_t)argc + 3, sizeof *args);
    if (!args)
        return out_of_memory();
    int n = 0;
    for (int k = 0; k < argc; k++)
        args[n++] = argv[k];
    if (o->config) {
        args[n++] = "--config";
        args[n++] = (char *)o->config;
    }
    int rc = aioctl_policy_command(n, args, o->json);
    free(args);
    return rc;
}

/* aioctl secrets|vault ...: the words are parsed here (global options anywhere, "--"); the
 * commands themselves are in vault_cmd.c, which reaches the daemon through these two. */
static int vault_connect(void *ctx, client **c)
{
    return new_client(ctx, c);
}

static int vault_call_failed(void *ctx, reply *rep, int rc)
{
    return call_failed(ctx, rep, rc);
}

static int run_vault_family(cli *o, const char *cmd, int argc, char **argv,
                            int (*run)(const vault_cmd_env *env, int argc, char **argv))
{
    const char **pos = calloc((size_t)argc + 1, sizeof *pos);
    int n_pos, rc;
    if (!pos)
        return out_of_memory();
    if ((rc = parse_command_args(o, cmd, argc, argv, NULL, 0, pos, argc, &n_pos)) == AIOCTL_OK) {
        vault_cmd_env env = {.config = o->config, .json = o->json, .connect = vault_connect,
                             .call_failed = vault_call_failed, .ctx = o};
        rc = run(&env, n_pos, (char **)pos);
    }
    free(pos);
    return rc;
}

static int cmd_secrets(cli *o, int argc, char **argv)
{
    return run_vault_family(o, "secrets", argc, argv, aioctl_secrets_command);
}

static int cmd_vault(cli *o, int argc, char **argv)
{
    return run_vault_family(o, "vault", argc, argv, aioctl_vault_command);
}

/* aioctl audit ...: the global options are taken out here (anywhere on the line); the
 * subcommands parse their own options (audit_cmd.c), and reach the daemon through the same two
 * hooks as the vault commands. */
static int cmd_audit(cli *o, int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int n = 0, rc = AIOCTL_OK;
    if (!rest)
        return out_of_memory();
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            while (i < argc)
                rest[n++] = argv[i++];
            break;
        }
        if (argv[i][0] == '-') {
            int g = take_global(o, argc, argv, &i);
            if (g < 0) {
                rc = AIOCTL_USAGE;
                goto done;
            }
            if (g > 0)
                continue;
        }
        rest[n++] = argv[i];
    }
    audit_cmd_env env = {.config = o->config, .json = o->json, .connect = vault_connect,
                         .call_failed = vault_call_failed, .ctx = o};
    rc = aioctl_audit_command(&env, n, rest);
done:
    free(rest);
    return rc;
}

static const command commands[] = {
    {"submit", cmd_submit},         {"get", cmd_get},           {"list", cmd_list},
    {"cancel", cmd_cancel},         {"resolve", cmd_resolve},   {"approvals", cmd_approvals},
    {"approve", cmd_approve},       {"reject", cmd_reject},     {"autonomy", cmd_autonomy},
    {"policies", cmd_policies},     {"connectors", cmd_connectors}, {"health", cmd_health},
    {"whoami", cmd_whoami},         {"token", cmd_token},       {"backup", cmd_backup},
    {"stats", cmd_stats},           {"compact", cmd_compact},
    {"policy", cmd_policy},         {"secrets", cmd_secrets},   {"vault", cmd_vault},
    {"audit", cmd_audit},
};
#define COMMAND_NAMES "submit, get, list, cancel, resolve, approvals, approve, reject, autonomy, " \
                      "policies, policy, connectors, whoami, health, token, secrets, vault, " \
                      "audit, backup, compact"

int main(int argc, char **argv)
{
    const char *env_url = getenv("AIORUN_URL");
    cli o = {.url = env_url && *env_url ? env_url : DEFAULT_URL, .json = false,
             .timeout_ms = DEFAULT_TIMEOUT_MS};
    int i;

    for (i = 1; i < argc; i++) {
        int g = take_global(&o, argc, argv, &i);
        if (g < 0)
            return AIOCTL_USAGE;
        if (g > 0)
            continue;
        if (argv[i][0] == '-')
            return usage_error("unknown option '%s'", argv[i]);
        break;
    }
    if (i >= argc)
        return usage_error("missing COMMAND (" COMMAND_NAMES ")");
    if (strcmp(argv[i], "help") == 0) {
        fputs(usage_text, stdout);
        return AIOCTL_OK;
    }
    const command *cmd = find_command(commands, sizeof commands / sizeof commands[0], argv[i]);
    if (!cmd)
        return usage_error("unknown command '%s' (" COMMAND_NAMES ")", argv[i]);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fputs("aioctl: cannot initialise libcurl\n", stderr);
        return AIOCTL_UNREACHABLE;
    }
    int rc = cmd->run(&o, argc - i - 1, argv + i + 1);
    curl_global_cleanup();
    tokenfile_wipe_free(o.token);
    if (fflush(stdout) != 0 && rc == AIOCTL_OK) {
        perror("aioctl: writing the output");
        rc = AIOCTL_REFUSED;
    }
    return rc;
}
