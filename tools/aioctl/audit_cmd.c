/*
 * audit_cmd.c - `aioctl audit show|verify|head|export|keygen` (see audit_cmd.h for usage and
 * exit codes): offline on the daemon's data directory with --config, else through the daemon's
 * API.
 */
#include "audit_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "aioctl.h"
#include "ar.h"
#include "audit.h"
#include "config.h"
#include "journal.h"
#include "render.h"

#define PAGE_LIMIT 500          /* entries per GET /v1/audit page */
#define KEY_FILE_MAX 1024       /* a key file is one line of hex */
#define HEAD_FILE_MAX 65536
#define ACTION_ID_CHARS 26
#define TYPE_WIDTH 19           /* the type column of the timeline */
#define VALUE_MAX 80            /* a value in the timeline is cut to this many bytes */

/* ---- messages ----------------------------------------------------------------------------- */

/* usage() and print_error() are render.h's render_usage_error() and render_ar_error(). */
#define usage render_usage_error
#define print_error render_ar_error

static int out_of_memory(void)
{
    fputs("aioctl: out of memory\n", stderr);
    return AIOCTL_REFUSED;
}

static int answered_without(const char *what)
{
    fprintf(stderr, "aioctl: the daemon answered without %s\n", what);
    return AIOCTL_REFUSED;
}

/* ---- command lines ------------------------------------------------------------------------ */

typedef struct opt {
    const char *name;    /* "--head" */
    const char **value;
} opt;

/* Positional words (at most max_pos) and "--name VALUE" / "--name=VALUE" options; "--" ends
 * the options. Returns AIOCTL_OK or AIOCTL_USAGE (reported). */
static int parse_args(const char *cmd, int argc, char **argv, const opt *opts, size_t n_opts,
                      const char **pos, int max_pos, int *n_pos)
{
    bool only_positional = false;
    *n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && strcmp(a, "--") == 0) {
            only_positional = true;
            continue;
        }
        if (!only_positional && a[0] == '-' && a[1] != '\0') {
            const opt *o = NULL;
            const char *v = NULL;
            for (size_t k = 0; k < n_opts && !o; k++) {
                size_t n = strlen(opts[k].name);
                if (strncmp(a, opts[k].name, n) == 0 && (a[n] == '\0' || a[n] == '=')) {
                    o = &opts[k];
                    v = a[n] == '=' ? a + n + 1 : NULL;
                }
            }
            if (!o)
                return usage("audit %s: unknown option '%s'", cmd, a);
            if (!v) {
                if (i + 1 >= argc)
                    return usage("audit %s: %s needs a value", cmd, o->name);
                v = argv[++i];
            }
            if (!*v)
                return usage("audit %s: %s must not be empty", cmd, o->name);
            *o->value = v;
            continue;
        }
        if (*n_pos >= max_pos)
            return usage("audit %s: unexpected argument '%s'", cmd, a);
        pos[(*n_pos)++] = a;
    }
    return AIOCTL_OK;
}

/* A duration back from now: N followed by s, m, h, d or w. */
static bool parse_ago(const char *s, int64_t now_ms, int64_t *out)
{
    char *end;
    if (!(s[0] >= '0' && s[0] <= '9'))
        return false;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || !end[0] || end[1])
        return false;
    long long unit;
    switch (end[0]) {
    case 's': unit = 1000LL; break;
    case 'm': unit = 60000LL; break;
    case 'h': unit = 3600000LL; break;
    case 'd': unit = 86400000LL; break;
    case 'w': unit = 7 * 86400000LL; break;
    default: return false;
    }
    if (v > now_ms / unit)
        return false; /* before 1970 */
    *out = now_ms - v * unit;
    return true;
}

/* n digits at *p into *v. */
static bool digits(const char **p, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return false;
        *v = *v * 10 + (**p - '0');
    }
    return true;
}

/* RFC 3339: YYYY-MM-DD, or YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM) ('t', ' ' and 'z'
 * too). As milliseconds since the epoch. */
static bool parse_rfc3339(const char *s, int64_t *out)
{
    struct tm tm = {0};
    int y, mo, d, h = 0, mi = 0, sec = 0, ms = 0, off = 0;
    const char *p = s;
    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d))
        return false;
    if (*p) {
        if (*p != 'T' && *p != 't' && *p != ' ')
            return false;
        p++;
        if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || *p++ != ':' ||
            !digits(&p, 2, &sec))
            return false;
        if (*p == '.') {
            p++;
            int scale = 100, n = 0;
            for (; *p >= '0' && *p <= '9'; p++, n++) {
                ms += (*p - '0') * scale;
                scale /= 10;
            }
            if (n == 0)
                return false;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1, oh, om;
            if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 || om > 59)
                return false;
            off = sign * (oh * 60 + om);
        } else {
            return false;
        }
        if (*p)
            return false;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || tm.tm_mday != d) /* timegm normalises 31 February away */
        return false;
    *out = ((int64_t)t - (int64_t)off * 60) * 1000 + ms;
    return true;
}

static int parse_since(const char *s, int64_t *since_ms)
{
    if (parse_ago(s, ar_now_ms(), since_ms) || parse_rfc3339(s, since_ms))
        return AIOCTL_OK;
    return usage("audit export: --since: expected RFC 3339 (2026-11-26T17:00:00Z, 2026-11-26) "
                 "or a duration like 24h, 7d, 90m, got '%s'", s);
}

/* ---- files -------------------------------------------------------------------------------- */

/* Up to cap-1 bytes of path, NUL-terminated, into buf. private_only: refuse a file that others
 * may read or write (a secret key). Returns the exit code (reported). */
static int read_small_file(const char *path, char *buf, size_t cap, bool private_only,
                           const char *what)
{
    struct stat st;
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "aioctl: cannot read the %s %s: %s\n", what, path, strerror(errno));
        return AIOCTL_USAGE;
    }
    int rc = AIOCTL_OK;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "aioctl: the %s %s is not a regular file\n", what, path);
        rc = AIOCTL_USAGE;
    } else if (private_only && (st.st_mode & 077)) {
        fprintf(stderr, "aioctl: the %s %s may be read by others (mode %03o): chmod 600 %s\n",
                what, path, (unsigned)(st.st_mode & 0777), path);
        rc = AIOCTL_USAGE;
    }
    while (rc == AIOCTL_OK && n < cap - 1) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "aioctl: cannot read the %s %s: %s\n", what, path, strerror(errno));
            rc = AIOCTL_USAGE;
        }
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    if (rc == AIOCTL_OK && n == cap - 1) {
        fprintf(stderr, "aioctl: the %s %s is too large\n", what, path);
        rc = AIOCTL_USAGE;
    }
    close(fd);
    buf[n] = '\0';
    return rc;
}

/* One line of exactly 2*len hex digits (surrounding white space allowed) into out. */
static bool hex_line(const char *text, unsigned char *out, size_t len)
{
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
        text++;
    size_t n = 0;
    while ((text[n] >= '0' && text[n] <= '9') || (text[n] >= 'a' && text[n] <= 'f') ||
           (text[n] >= 'A' && text[n] <= 'F'))
        n++;
    for (const char *p = text + n; *p; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return false;
    return n == 2 * len && sodium_hex2bin(out, len, text, n, NULL, NULL, NULL) == 0;
}

/* The Ed25519 secret key in path (0600, hex), checked against the public key it holds. */
static int read_secret_key(const char *path, unsigned char sk[crypto_sign_SECRETKEYBYTES])
{
    char text[KEY_FILE_MAX];
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], check[crypto_sign_SECRETKEYBYTES];
    int rc = read_small_file(path, text, sizeof text, true, "signing key file");
    if (rc == AIOCTL_OK && !hex_line(text, sk, crypto_sign_SECRETKEYBYTES)) {
        fprintf(stderr, "aioctl: the signing key file %s does not hold a secret key (%d hex "
                "digits; make one with: aioctl audit keygen FILE)\n", path,
                2 * crypto_sign_SECRETKEYBYTES);
        rc = AIOCTL_USAGE;
    }
    if (rc == AIOCTL_OK) {
        /* seed || public key: the halves must belong together. */
        crypto_sign_seed_keypair(pk, check, sk);
        if (sodium_memcmp(check, sk, sizeof check) != 0) {
            fprintf(stderr, "aioctl: the signing key file %s is damaged (its public half does "
                    "not match its seed)\n", path);
            rc = AIOCTL_USAGE;
        }
    }
    sodium_memzero(text, sizeof text);
    sodium_memzero(check, sizeof check);
    if (rc != AIOCTL_OK)
        sodium_memzero(sk, crypto_sign_SECRETKEYBYTES);
    return rc;
}

static int read_public_key(const char *path, unsigned char pk[crypto_sign_PUBLICKEYBYTES])
{
    char text[KEY_FILE_MAX];
    int rc = read_small_file(path, text, sizeof text, false, "public key file");
    if (rc == AIOCTL_OK && !hex_line(text, pk, crypto_sign_PUBLICKEYBYTES)) {
        fprintf(stderr, "aioctl: the public key file %s does not hold a public key (%d hex "
                "digits, as keygen writes to FILE.pub)\n", path, 2 * crypto_sign_PUBLICKEYBYTES);
        rc = AIOCTL_USAGE;
    }
    return rc;
}

/* A kept head document: parsed, its signature checked (with pk when not NULL). *seq and head
 * receive what it says. */
static int read_head_file(const char *path, const unsigned char *pk, uint64_t *seq,
                          char head[AUDIT_HASH_HEX], json_t **doc_out)
{
    char *text = malloc(HEAD_FILE_MAX);
    json_error_t jerr;
    ar_error err = {0};
    if (!text)
        return out_of_memory();
    int rc = read_small_file(path, text, HEAD_FILE_MAX, false, "head file");
    json_t *doc = rc == AIOCTL_OK ? json_loads(text, 0, &jerr) : NULL;
    free(text);
    if (rc != AIOCTL_OK)
        return rc;
    json_t *s = json_object_get(doc, "seq");
    const char *h = json_string_value(json_object_get(doc, "head"));
    if (!json_is_integer(s) || json_integer_value(s) < 0 || !h || strlen(h) >= AUDIT_HASH_HEX) {
        json_decref(doc);
        return usage("the head file %s is not a head document (JSON with \"seq\" and \"head\", "
                     "as aioctl audit head prints)", path);
    }
    if (audit_head_check(doc, pk, &err) != AR_OK) {
        print_error(&err, "the head document's signature does not check");
        fprintf(stderr, "aioctl: %s cannot be trusted as a reference\n", path);
        json_decref(doc);
        return AIOCTL_NOT_SUCCEEDED;
    }
    *seq = (uint64_t)json_integer_value(s);
    snprintf(head, AUDIT_HASH_HEX, "%s", h);
    *doc_out = doc;
    return AIOCTL_OK;
}

/* Create path (O_EXCL, mode) holding text, synced. */
static int write_new_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        fprintf(stderr, "aioctl: cannot create %s: %s\n", path,
                errno == EEXIST ? "it exists (a key is never overwritten)" : strerror(errno));
        return errno == EEXIST ? AIOCTL_USAGE : AIOCTL_REFUSED;
    }
    size_t len = strlen(text), off = 0;
    bool ok = fchmod(fd, mode) == 0;
    while (ok && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        off += ok ? (size_t)w : 0;
    }
    ok = ok && fsync(fd) == 0;
    int saved = errno;
    close(fd);
    if (!ok) {
        fprintf(stderr, "aioctl: cannot write %s: %s\n", path, strerror(saved));
        unlink(path);
        return AIOCTL_REFUSED;
    }
    return AIOCTL_OK;
}

static int cmd_keygen(const audit_cmd_env *env, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc = parse_args("keygen", argc, argv, NULL, 0, pos, 1, &n_pos);
    if (rc != AIOCTL_OK)
        return rc;
    if (n_pos != 1 || !*pos[0])
        return usage("audit keygen: expected FILE (the secret key; the public key goes to "
                     "FILE.pub)");
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    char sk_hex[2 * crypto_sign_SECRETKEYBYTES + 2], pk_hex[2 * crypto_sign_PUBLICKEYBYTES + 2];
    char *pub_path = NULL;
    if (asprintf(&pub_path, "%s.pub", pos[0]) < 0)
        return out_of_memory();
    if (access(pub_path, F_OK) == 0) {
        fprintf(stderr, "aioctl: cannot create %s: it exists (a key is never overwritten)\n",
                pub_path);
        free(pub_path);
        return AIOCTL_USAGE;
    }
    crypto_sign_keypair(pk, sk);
    sodium_bin2hex(sk_hex, sizeof sk_hex - 1, sk, sizeof sk);
    sodium_bin2hex(pk_hex, sizeof pk_hex - 1, pk, sizeof pk);
    strcat(sk_hex, "\n");
    strcat(pk_hex, "\n");
    rc = write_new_file(pos[0], sk_hex, 0600);
    if (rc == AIOCTL_OK && (rc = write_new_file(pub_path, pk_hex, 0644)) != AIOCTL_OK)
        unlink(pos[0]);
    sodium_memzero(sk, sizeof sk);
    sodium_memzero(sk_hex, sizeof sk_hex);
    if (rc == AIOCTL_OK) {
        pk_hex[2 * crypto_sign_PUBLICKEYBYTES] = '\0';
        if (env->json) {
            json_t *doc = json_pack("{s:s,s:s,s:s}", "secret_key_file", pos[0],
                                    "public_key_file", pub_path, "public_key", pk_hex);
            char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            json_decref(doc);
            if (!text)
                rc = out_of_memory();
            else
                puts(text);
            free(text);
        } else {
            printf("secret key written to %s (mode 0600): keep it off the daemon's machine if "
                   "you can\npublic key %s written to %s: give it to whoever checks heads\n",
                   pos[0], pk_hex, pub_path);
        }
    }
    free(pub_path);
    return rc;
}

/* ---- the data directory ------------------------------------------------------------------- */

typedef struct store {
    config *cfg;
    journal *j;
} store;

static void store_close(store *s)
{
    journal_close(s->j);
    config_free(s->cfg);
    memset(s, 0, sizeof *s);
}

/* Load the config and open its journal, which must exist (reading an empty new one would say
 * nothing useful). Returns an exit code (reported). */
static int store_open(const char *config_path, store *s)
{
    ar_error err = {0};
    char dir[PATH_MAX], mdb[PATH_MAX + 16];
    memset(s, 0, sizeof *s);
    if (config_load_file(config_path, &s->cfg, &err) != AR_OK) {
        print_error(&err, "cannot load the config");
        return AIOCTL_USAGE;
    }
    if (config_journal_dir(s->cfg, dir, sizeof dir) != AR_OK) {
        fprintf(stderr, "aioctl: the data directory in %s is too long a path\n", config_path);
        store_close(s);
        return AIOCTL_USAGE;
    }
    snprintf(mdb, sizeof mdb, "%s/data.mdb", dir);
    if (access(mdb, F_OK) != 0) {
        fprintf(stderr, "error: no_journal: there is no journal at %s (%s): is %s the daemon's "
                "config?\n", dir, strerror(errno), config_path);
        store_close(s);
        return AIOCTL_REFUSED;
    }
    journal_opts jo = {.dir = dir, .map_size_mb = s->cfg->map_size_mb};
    if (journal_open(&jo, &s->j, &err) != AR_OK) {
        print_error(&err, "cannot open the journal");
        store_close(s);
        return AIOCTL_REFUSED;
    }
    return AIOCTL_OK;
}

/* ---- the daemon --------------------------------------------------------------------------- */

/* GET path on a new client; on AIOCTL_OK rep holds the JSON answer. */
static int get(const audit_cmd_env *env, client **c, reply *rep, const char *path)
{
    int rc = env->connect(env->ctx, c);
    if (rc != AIOCTL_OK)
        return rc;
    rc = client_call(*c, "GET", path, NULL, 0, rep);
    return rc == AIOCTL_OK ? AIOCTL_OK : env->call_failed(env->ctx, rep, rc);
}

static void print_body(const reply *rep)
{
    if (!rep->body)
        return;
    fwrite(rep->body, 1, rep->len, stdout);
    if (rep->len == 0 || rep->body[rep->len - 1] != '\n')
        fputc('\n', stdout);
}

/* One compact JSON document and a newline on stdout; doc is taken. */
static int print_json_take(json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    if (!text)
        return out_of_memory();
    puts(text);
    free(text);
    return AIOCTL_OK;
}

/* ---- show --------------------------------------------------------------------------------- */

/* The facts shown for each event type (audit.h's list); other types show every field. */
static const struct {
    const char *type;
    const char *keys[8];
} facts[] = {
    {"received", {"connector", "action", "effect", "submitter", "proposer", "idempotency_key"}},
    {"decided", {"verdict", "policy_verdict", "rule", "reason", "policy", "autonomy"}},
    {"approval_requested", {"roles", "expires_ms", "four_eyes", "summary"}},
    {"approval_decided", {"decision", "by", "comment"}},
    {"dispatched", {"attempt", "idempotency_key"}},
    {"completed", {"attempt", "outcome", "error_class", "http_status", "latency_ms", "cost"}},
    {"unknown_outcome", {"attempt", "reason"}},
    {"resolved", {"outcome", "by", "reason"}},
    {"recovered", {"how"}},
    {"validation_failed", {"rule", "reason", "policy"}},
    {"cancelled", {"by"}},
};

/* A value as text for the timeline: strings as they are, arrays of strings joined with ',',
 * expires_ms as a time, anything else as compact JSON. Malloc'd (NULL: nothing to show). */
static char *fact_text(const char *key, const json_t *v)
{
    char *text = NULL;
    if (json_is_null(v))
        return NULL;
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_integer(v) && strcmp(key, "expires_ms") == 0) {
        char buf[AR_TIME_LEN];
        ar_time_rfc3339((int64_t)json_integer_value(v), buf);
        return strdup(buf);
    }
    if (json_is_array(v)) {
        size_t i;
        const json_t *item;
        bool strings = true;
        json_array_foreach(v, i, item) strings = strings && json_is_string(item);
        if (strings && json_array_size(v) > 0)
            return render_join(v);
    }
    text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    return text;
}

static void print_fact(const char *key, const json_t *v)
{
    char *text = fact_text(key, v);
    if (!text)
        return;
    /* Strings with spaces are quoted; JSON (objects, numbers) is shown as it is. */
    bool quote = json_is_string(v) && (!*text || strpbrk(text, " \t=\"") != NULL);
    if (strlen(text) > VALUE_MAX)
        strcpy(text + VALUE_MAX - 3, "...");
    fputs("  ", stdout);
    render_text(stdout, key);
    fputs(quote ? "=\"" : "=", stdout);
    render_text(stdout, text);
    if (quote)
        fputc('"', stdout);
    free(text);
}

static void print_timeline_entry(const json_t *e)
{
    char when[AR_TIME_LEN];
    json_t *t = json_object_get(e, "time_ms"), *data = json_object_get(e, "data");
    const char *type = json_string_value(json_object_get(e, "type"));
    printf("#%-6" JSON_INTEGER_FORMAT " ", json_integer_value(json_object_get(e, "seq")));
    if (json_is_true(json_object_get(e, "unreadable"))) {
        puts("(this entry cannot be read: run aioctl audit verify)");
        return;
    }
    if (json_is_integer(t))
        ar_time_rfc3339((int64_t)json_integer_value(t), when);
    else
        snprintf(when, sizeof when, "-");
    printf("%-24s  ", when);
    render_text(stdout, type ? type : "?");
    int pad = TYPE_WIDTH - (int)strlen(type ? type : "?");
    if (pad > 0)
        printf("%*s", pad, "");
    if (json_is_true(json_object_get(e, "erased")) && json_is_null(data)) {
        puts("  (body erased)");
        return;
    }
    size_t k;
    for (k = 0; type && k < sizeof facts / sizeof facts[0]; k++)
        if (strcmp(facts[k].type, type) == 0)
            break;
    if (type && k < sizeof facts / sizeof facts[0]) {
        for (size_t f = 0; f < 8 && facts[k].keys[f]; f++)
            print_fact(facts[k].keys[f], json_object_get(data, facts[k].keys[f]));
    } else if (json_is_object(data)) {
        const char *key;
        json_t *v;
        json_object_foreach(data, key, v) print_fact(key, v);
    }
    fputc('\n', stdout);
}

static void print_timeline(const char *id, const json_t *entries)
{
    size_t i, n = json_array_size(entries);
    const json_t *e;
    fputs("action ", stdout);
    render_text(stdout, id);
    printf(": %zu audit entr%s\n", n, n == 1 ? "y" : "ies");
    json_array_foreach(entries, i, e) print_timeline_entry(e);
}

static int show_offline(const audit_cmd_env *env, const char *id)
{
    store s;
    json_t *entries = NULL;
    ar_error err = {0};
    if (strlen(id) != ACTION_ID_CHARS)
        return usage("audit show: an action id has %d characters, got '%s'", ACTION_ID_CHARS, id);
    int rc = store_open(env->config, &s);
    if (rc != AIOCTL_OK)
        return rc;
    if (audit_read_action(s.j, id, &entries, &err) != AR_OK) {
        print_error(&err, "cannot read the audit trail");
        rc = AIOCTL_REFUSED;
    } else if (json_array_size(entries) == 0) {
        fprintf(stderr, "error: not_found: the audit trail has no entries for action %s\n", id);
        rc = AIOCTL_REFUSED;
    } else if (env->json) {
        rc = print_json_take(json_pack("{s:O}", "entries", entries));
    } else {
        print_timeline(id, entries);
    }
    json_decref(entries);
    store_close(&s);
    return rc;
}

static int show_online(const audit_cmd_env *env, const char *id)
{
    client *c = NULL;
    reply rep = {0};
    char *esc = client_escape(id), *path = NULL;
    if (!esc || asprintf(&path, "/v1/actions/%s/audit", esc) < 0) {
        free(esc);
        return out_of_memory();
    }
    free(esc);
    int rc = get(env, &c, &rep, path);
    if (rc == AIOCTL_OK) {
        json_t *entries = json_object_get(rep.json, "entries");
        if (env->json)
            print_body(&rep);
        else if (!json_is_array(entries))
            rc = answered_without("an \"entries\" list");
        else
            print_timeline(id, entries);
    }
    reply_fini(&rep);
    client_free(c);
    free(path);
    return rc;
}

static int cmd_show(const audit_cmd_env *env, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc = parse_args("show", argc, argv, NULL, 0, pos, 1, &n_pos);
    if (rc != AIOCTL_OK)
        return rc;
    if (n_pos != 1 || !*pos[0])
        return usage("audit show: expected ID (an action id)");
    return env->config ? show_offline(env, pos[0]) : show_online(env, pos[0]);
}

/* ---- verify ------------------------------------------------------------------------------- */

/* What a verification found, from audit_verify or the daemon's reply (strings borrowed). */
typedef struct verdict {
    bool ok;
    uint64_t entries, bad_seq;
    const char *head, *reason;
    uint64_t first_seq, cut_through;    /* bounded history: where the trail kept starts */
    int64_t cut_ms;
    bool head_unchecked;                /* the kept head is older than the trail kept */
    const char *head_note;
} verdict;

/* The exit code for a verdict: a trail not sound first; then a kept head not checked. */
static int verdict_exit(const verdict *v)
{
    if (!v->ok)
        return AIOCTL_NOT_SUCCEEDED;
    return v->head_unchecked ? AIOCTL_HEAD_UNCHECKED : AIOCTL_OK;
}

/* What a verification found, for people; returns the exit code. head_doc: the kept head
 * checked against, or NULL. */
static int report_verify(const verdict *v, const json_t *head_doc)
{
    if (!v->ok) {
        printf("audit trail NOT sound: seq %" PRIu64 ": ", v->bad_seq);
        render_text(stdout, v->reason && *v->reason ? v->reason : "(no reason given)");
        fputc('\n', stdout);
        return verdict_exit(v);
    }
    printf("audit trail ok: %" PRIu64 " entr%s", v->entries, v->entries == 1 ? "y" : "ies");
    if (v->cut_through) {
        char when[AR_TIME_LEN];
        ar_time_rfc3339(v->cut_ms, when);
        printf(" verified from seq %" PRIu64 " (1..%" PRIu64 " cut by retention on %s)",
               v->first_seq ? v->first_seq : v->cut_through + 1, v->cut_through, when);
    }
    if (v->head && *v->head) {
        fputs(", head ", stdout);
        render_text(stdout, v->head);
    }
    fputc('\n', stdout);
    if (head_doc && v->head_unchecked) {
        fputs("kept head NOT checked: ", stdout);
        render_text(stdout, v->head_note && *v->head_note ? v->head_note
                                                           : "it is older than the trail kept");
        fputs(" (check a kept head taken after that cut)\n", stdout);
    } else if (head_doc) {
        json_t *t = json_object_get(head_doc, "time_ms");
        char when[AR_TIME_LEN] = "-";
        if (json_is_integer(t))
            ar_time_rfc3339((int64_t)json_integer_value(t), when);
        printf("matches the kept head of seq %" JSON_INTEGER_FORMAT " (taken %s%s)\n",
               json_integer_value(json_object_get(head_doc, "seq")), when,
               json_object_get(head_doc, "signature") ? ", signature checked" : ", unsigned");
    }
    return verdict_exit(v);
}

static int verify_offline(const audit_cmd_env *env, uint64_t seq, const char *head,
                          const json_t *head_doc)
{
    store s;
    audit_verify_result res;
    ar_error err = {0};
    int rc = store_open(env->config, &s);
    if (rc != AIOCTL_OK)
        return rc;
    if (audit_verify(s.j, seq, seq ? head : NULL, &res, &err) != AR_OK) {
        print_error(&err, "cannot verify the audit trail");
        rc = err.code[0] && strcmp(err.code, "audit_head_invalid") == 0 ? AIOCTL_USAGE
                                                                         : AIOCTL_REFUSED;
        store_close(&s);
        return rc;
    }
    verdict v = {.ok = res.ok, .entries = res.entries, .bad_seq = res.first_bad_seq,
                 .head = res.head, .reason = res.reason, .first_seq = res.first_seq,
                 .cut_through = res.cut_through, .cut_ms = res.cut_ms,
                 .head_unchecked = res.head_unchecked != 0, .head_note = res.head_note};
    if (env->json) {
        /* the API's shape (core/api_audit.c) */
        json_t *doc = res.ok ? json_pack("{s:b,s:I,s:s,s:I}", "ok", 1, "entries",
                                         (json_int_t)res.entries, "head", res.head, "first_seq",
                                         (json_int_t)res.first_seq)
                             : json_pack("{s:b,s:I,s:s}", "ok", 0, "first_bad_seq",
                                         (json_int_t)res.first_bad_seq, "reason", res.reason);
        if (doc && res.cut_through) {
            json_object_set_new(doc, "cut_through", json_integer((json_int_t)res.cut_through));
            json_object_set_new(doc, "cut_ms", json_integer((json_int_t)res.cut_ms));
        }
        if (doc && res.ok && res.head_unchecked) {
            json_object_set_new(doc, "head_unchecked", json_true());
            json_object_set_new(doc, "head_note", json_string(res.head_note));
        }
        rc = print_json_take(doc);
        if (rc == AIOCTL_OK)
            rc = verdict_exit(&v);
    } else {
        rc = report_verify(&v, head_doc);
    }
    store_close(&s);
    return rc;
}

static int verify_online(const audit_cmd_env *env, uint64_t seq, const char *head,
                         const json_t *head_doc)
{
    client *c = NULL;
    reply rep = {0};
    char *path = NULL, *esc = seq ? client_escape(head) : NULL;
    int rc;
    if ((seq && !esc) ||
        (seq ? asprintf(&path, "/v1/audit/verify?seq=%" PRIu64 "&head=%s", seq, esc)
             : asprintf(&path, "/v1/audit/verify")) < 0) {
        free(esc);
        return out_of_memory();
    }
    free(esc);
    if ((rc = get(env, &c, &rep, path)) == AIOCTL_OK) {
        const json_t *doc = rep.json;
        json_t *ok = json_object_get(doc, "ok");
        verdict v = {
            .ok = json_is_true(ok),
            .entries = (uint64_t)json_integer_value(json_object_get(doc, "entries")),
            .bad_seq = (uint64_t)json_integer_value(json_object_get(doc, "first_bad_seq")),
            .head = json_string_value(json_object_get(doc, "head")),
            .reason = json_string_value(json_object_get(doc, "reason")),
            .first_seq = (uint64_t)json_integer_value(json_object_get(doc, "first_seq")),
            .cut_through = (uint64_t)json_integer_value(json_object_get(doc, "cut_through")),
            .cut_ms = (int64_t)json_integer_value(json_object_get(doc, "cut_ms")),
            .head_unchecked = json_is_true(json_object_get(doc, "head_unchecked")),
            .head_note = json_string_value(json_object_get(doc, "head_note")),
        };
        if (!json_is_boolean(ok)) {
            rc = answered_without("an \"ok\" verdict");
        } else if (env->json) {
            print_body(&rep);
            rc = verdict_exit(&v);
        } else {
            rc = report_verify(&v, head_doc);
        }
    }
    reply_fini(&rep);
    client_free(c);
    free(path);
    return rc;
}

static int cmd_verify(const audit_cmd_env *env, int argc, char **argv)
{
    const char *head_file = NULL, *pub_file = NULL, *pos[1];
    const opt opts[] = {{"--head", &head_file}, {"--public-key", &pub_file}};
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    uint64_t seq = 0;
    char head[AUDIT_HASH_HEX] = "";
    json_t *head_doc = NULL;
    int n_pos, rc = parse_args("verify", argc, argv, opts, 2, pos, 0, &n_pos);
    if (rc != AIOCTL_OK)
        return rc;
    if (pub_file && !head_file)
        return usage("audit verify: --public-key checks the signature of a --head FILE; give "
                     "one");
    if (pub_file && (rc = read_public_key(pub_file, pk)) != AIOCTL_OK)
        return rc;
    if (head_file &&
        (rc = read_head_file(head_file, pub_file ? pk : NULL, &seq, head, &head_doc)) != AIOCTL_OK)
        return rc;
    if (head_file && seq == 0) {
        /* The head of an empty trail: every trail starts from it. */
        json_decref(head_doc);
        head_doc = NULL;
    }
    rc = env->config ? verify_offline(env, seq, head, head_doc)
                     : verify_online(env, seq, head, head_doc);
    json_decref(head_doc);
    return rc;
}

/* ---- head --------------------------------------------------------------------------------- */

static int head_offline(const audit_cmd_env *env, const unsigned char *sk)
{
    store s;
    json_t *doc = NULL;
    ar_error err = {0};
    int rc = store_open(env->config, &s);
    if (rc != AIOCTL_OK)
        return rc;
    if (audit_head_document(s.j, sk, &doc, &err) != AR_OK) {
        print_error(&err, "cannot read the audit head");
        rc = AIOCTL_REFUSED;
    } else {
        rc = print_json_take(doc);
    }
    store_close(&s);
    return rc;
}

static int head_online(const audit_cmd_env *env, const unsigned char *sk)
{
    client *c = NULL;
    reply rep = {0};
    ar_error err = {0};
    int rc = get(env, &c, &rep, "/v1/audit/head");
    if (rc == AIOCTL_OK) {
        json_t *seq = json_object_get(rep.json, "seq"), *head = json_object_get(rep.json, "head");
        json_t *t = json_object_get(rep.json, "time_ms");
        json_t *doc = json_is_integer(seq) && json_is_string(head) && json_is_integer(t)
                          ? json_pack("{s:O,s:O,s:O}", "seq", seq, "head", head, "time_ms", t)
                          : NULL;
        if (!doc) {
            rc = answered_without("a head (seq, head, time_ms)");
        } else if (sk && audit_head_sign(doc, sk, &err) != AR_OK) {
            print_error(&err, "cannot sign the head");
            json_decref(doc);
            rc = AIOCTL_REFUSED;
        } else {
            rc = print_json_take(doc);
        }
    }
    reply_fini(&rep);
    client_free(c);
    return rc;
}

static int cmd_head(const audit_cmd_env *env, int argc, char **argv)
{
    const char *key_file = NULL, *pos[1];
    const opt opts[] = {{"--sign-key", &key_file}};
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
    int n_pos, rc = parse_args("head", argc, argv, opts, 1, pos, 0, &n_pos);
    if (rc != AIOCTL_OK)
        return rc;
    if (key_file && (rc = read_secret_key(key_file, sk)) != AIOCTL_OK)
        return rc;
    rc = env->config ? head_offline(env, key_file ? sk : NULL)
                     : head_online(env, key_file ? sk : NULL);
    sodium_memzero(sk, sizeof sk);
    return rc;
}

/* ---- export ------------------------------------------------------------------------------- */

static int export_offline(const audit_cmd_env *env, int64_t since_ms)
{
    store s;
    ar_error err = {0};
    size_t count = 0;
    int rc = store_open(env->config, &s);
    if (rc != AIOCTL_OK)
        return rc;
    fflush(stdout); /* audit_export writes to the descriptor */
    if (audit_export(s.j, since_ms, STDOUT_FILENO, &count, &err) != AR_OK) {
        print_error(&err, "cannot export the audit trail");
        rc = AIOCTL_REFUSED;
    } else {
        fprintf(stderr, "aioctl: exported %zu audit entr%s\n", count, count == 1 ? "y" : "ies");
    }
    store_close(&s);
    return rc;
}

static int export_online(const audit_cmd_env *env, int64_t since_ms)
{
    client *c = NULL;
    reply rep = {0};
    uint64_t after = 0;
    size_t count = 0;
    int rc = env->connect(env->ctx, &c);
    if (rc != AIOCTL_OK)
        return rc;
    for (;;) {
        char path[96];
        snprintf(path, sizeof path, "/v1/audit?after=%" PRIu64 "&limit=%d", after, PAGE_LIMIT);
        reply_fini(&rep);
        if ((rc = client_call(c, "GET", path, NULL, 0, &rep)) != AIOCTL_OK) {
            rc = env->call_failed(env->ctx, &rep, rc);
            break;
        }
        json_t *entries = json_object_get(rep.json, "entries"), *next = json_object_get(rep.json, "next");
        if (!json_is_array(entries)) {
            rc = answered_without("an \"entries\" list");
            break;
        }
        size_t i;
        json_t *e;
        uint64_t last = after;
        json_array_foreach(entries, i, e) {
            json_t *seq = json_object_get(e, "seq"), *t = json_object_get(e, "time_ms");
            if (json_is_integer(seq) && (uint64_t)json_integer_value(seq) > last)
                last = (uint64_t)json_integer_value(seq);
            if (json_is_integer(t) && json_integer_value(t) < since_ms)
                continue;
            char *line = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
            if (!line) {
                rc = out_of_memory();
                break;
            }
            puts(line);
            free(line);
            count++;
        }
        if (rc != AIOCTL_OK)
            break;
        if (json_is_integer(next) && (uint64_t)json_integer_value(next) > last)
            last = (uint64_t)json_integer_value(next);
        if (json_array_size(entries) == 0 || json_is_null(next) || last <= after)
            break; /* the last page, or a daemon that does not move on */
        after = last;
    }
    if (rc == AIOCTL_OK)
        fprintf(stderr, "aioctl: exported %zu audit entr%s\n", count, count == 1 ? "y" : "ies");
    reply_fini(&rep);
    client_free(c);
    return rc;
}

static int cmd_export(const audit_cmd_env *env, int argc, char **argv)
{
    const char *since = NULL, *pos[1];
    const opt opts[] = {{"--since", &since}};
    int64_t since_ms = INT64_MIN;
    int n_pos, rc = parse_args("export", argc, argv, opts, 1, pos, 0, &n_pos);
    if (rc != AIOCTL_OK)
        return rc;
    if (since && (rc = parse_since(since, &since_ms)) != AIOCTL_OK)
        return rc;
    return env->config ? export_offline(env, since_ms) : export_online(env, since_ms);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

int aioctl_audit_command(const audit_cmd_env *env, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(const audit_cmd_env *env, int argc, char **argv);
    } subs[] = {{"show", cmd_show}, {"verify", cmd_verify}, {"head", cmd_head},
                {"export", cmd_export}, {"keygen", cmd_keygen}};
    if (sodium_init() < 0) {
        fputs("aioctl: libsodium cannot be initialised\n", stderr);
        return AIOCTL_REFUSED;
    }
    if (argc < 1)
        return usage("audit: expected show, verify, head, export or keygen");
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
        if (strcmp(argv[0], subs[i].name) == 0)
            return subs[i].run(env, argc - 1, argv + 1);
    return usage("audit: unknown subcommand '%s' (show, verify, head, export or keygen)", argv[0]);
}
