/*
 * policy.c - decisions by sandboxed Lua 5.4 policies (see policy.h).
 *
 * How the sandbox holds together:
 * - One lua_State per worker, created with a capped allocator. Only base, string, table, math,
 *   utf8 and os are opened (luaL_requiref, never luaL_openlibs), then cut down to an allowlist.
 * - The safe globals live in one table G that no policy can reach: it is the __index of the
 *   metatable of every call's fresh _ENV, and that metatable is protected (__metatable). The
 *   library tables in G are read-only proxies: empty tables whose protected metatable reads
 *   through to the real library and raises on writes. rawset is not offered, so a proxy stays
 *   empty; the string metatable is protected too, so ("").x cannot hand out the real table.
 * - Every file is compiled once per worker; each decision sets a fresh _ENV as the chunk's
 *   first upvalue, runs the chunk (which defines decide in that _ENV) and calls
 *   decide(action, ctx) with a fresh action table and a fresh, read-only ctx. A policy can
 *   therefore assign anything it likes: it is all gone by the next call.
 * - A count hook charges instructions and checks the wall-clock deadline. Once a call has
 *   overrun (instructions, deadline or memory), the hook and the sandbox's own pcall/xpcall
 *   keep re-raising, so a policy cannot catch its way past a limit.
 * - Policies cannot create finalizers (__gc) and the hook refuses to run Lua outside a call, so
 *   no code of one call can run during another.
 *
 * Composition: every file votes (also after a deny, so the record shows every opinion); the
 * most restrictive verdict wins and the first vote for it, in file order, names rule, reason
 * and file. The approve fields are merged over all approve votes. A file that fails is a deny
 * vote with rule policy_error. All files share one instruction budget and one deadline: once
 * a file has used them up, the files after it are not run and vote deny (policy_error, "not
 * run"). A memory overrun is collected, so the next file still runs.
 *
 * Load (validate_set) runs every chunk once and reads what it defines: decide (required),
 * validate (optional) and the counters table, converted to JSON with raw reads and parsed by
 * counters_def_parse; the set keeps the union, sorted by name. Nothing of that run survives:
 * each call still runs the chunk in a fresh _ENV, so a policy that rewrites counters changes
 * only its own call's table. ctx.counter(name) looks the name up in the set and asks the
 * worker's source (policy_worker_set_counters); policy_eval and the policy tests give a JSON
 * object of values as the source.
 *
 * validate(action, result, ctx) runs like decide (fresh _ENV, same limits, one budget for the
 * whole validation) in each file that defines it, until one rejects.
 *
 * Policy tests (policy_run_tests): each *_test.lua is compiled into a worker of its own (a
 * one-file set with the real set's limits), its chunk runs once in a fresh _ENV under the same
 * limits, and the tests table it leaves is copied to JSON with raw reads only (no Lua code
 * runs, nothing can raise), then checked and decided in C by a worker of the real set, with
 * ctx.now() pinned to the case's time.
 */
#include "policy.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <sodium.h>

#define DEFAULT_MEMORY_BYTES ((size_t)8 << 20)
#define DEFAULT_INSTRUCTIONS 1000000u
#define DEFAULT_TIMEOUT_MS 50
#define MAX_POLICY_FILE_BYTES ((size_t)1 << 20)
#define HOOK_STEP 1000
#define MAX_ACTION_DEPTH 32
#define LOG_LINE_MAX 512
#define LOG_LINES_PER_SECOND 20
#define NS_PER_SEC 1000000000LL

typedef struct policy_file {
    char name[256];
    char *source;
    size_t len;
    int has_validate;       /* the file defines validate (found at load) */
} policy_file;

struct policy_set {
    policy_file *files;
    size_t count;
    policy_limits limits;   /* defaults applied */
    char version[17];
    counter_def *counters;  /* the union of the files' declarations, sorted by name */
    size_t n_counters;
    int has_validate;       /* some file defines validate */
};

/* Why the current call was stopped; sticky until the call ends. */
enum fail_kind { FAIL_NONE = 0, FAIL_BUDGET, FAIL_DEADLINE, FAIL_MEMORY, FAIL_OUTSIDE };

typedef struct mem_cap {
    size_t used;
    size_t cap;
} mem_cap;

struct policy_worker {
    const policy_set *set;
    lua_State *L;
    mem_cap mem;            /* the allocator's userdata: must not move */
    int *chunk_refs;        /* registry refs of the compiled chunks, one per file */
    int env_mt_ref;         /* registry ref of {__index = G, __metatable = false} */
    int ctx_mt_ref;         /* registry ref of the read-only metatable of every call's ctx */
    int hook_step;
    /* the call in progress */
    int in_call;
    int fail;
    uint64_t instructions;
    int64_t deadline_ns;
    const char *current_file;
    int64_t decision_time_s; /* ctx.now(): when the decision started, seconds since the epoch */
    /* ctx.counter(name): where the values come from (NULL: every declared counter reads 0) */
    policy_counter_fn counter_fn;
    void *counter_arg;
    /* log() rate limit */
    int64_t log_window_ns;
    int log_lines;
    unsigned long log_dropped;
};

/* What one file's decide returned (for validate: OUT_ABSTAIN accepts, OUT_VOTE rejects). */
enum outcome { OUT_ABSTAIN, OUT_VOTE, OUT_INVALID };

/* What run_file does with a file. */
enum run_mode {
    RUN_DECIDE,             /* run the chunk, call decide(action, ctx) */
    RUN_LOAD,               /* at load: run the chunk, check decide and validate, read counters */
    RUN_VALIDATE            /* run the chunk, call validate(action, result, ctx) */
};

typedef struct run_ctx {
    policy_worker *w;
    size_t index;
    const json_t *action;
    enum run_mode mode;
    const json_t *result;   /* RUN_VALIDATE: the connector's result (NULL reads as nil) */
    /* RUN_LOAD: what the file declares (counters: a JSON object, owned; NULL: none) */
    int has_validate;
    json_t *counters;
    enum outcome outcome;
    /* OUT_VOTE: the vote as returned (has_*: the field was given); OUT_INVALID: reason says
     * what is wrong with it */
    policy_verdict verdict;
    int has_reason, has_rule, has_summary;
    char reason[sizeof(((policy_decision *)0)->reason)];
    char rule[sizeof(((policy_decision *)0)->rule)];
    char roles[POLICY_MAX_ROLES][sizeof(((policy_decision *)0)->roles[0])];
    int n_roles;
    int64_t expires_in_s;   /* 0: not given */
    char summary[sizeof(((policy_decision *)0)->summary)];
    int four_eyes;
} run_ctx;

/* The process-wide log sink (policy.h: set once at start); NULL means ar_log, component
 * "policy:<file>". */
static _Atomic(policy_log_fn) log_sink;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

static policy_worker *worker_of(lua_State *L)
{
    return *(policy_worker **)lua_getextraspace(L);
}

static const char *fail_text(int fail)
{
    switch (fail) {
    case FAIL_BUDGET: return "instruction budget exceeded";
    case FAIL_DEADLINE: return "deadline exceeded";
    case FAIL_MEMORY: return "memory limit exceeded";
    case FAIL_OUTSIDE: return "policy code may only run during a decision";
    default: return "failed";
    }
}

/* ---- memory cap ----------------------------------------------------------------------- */

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mem_cap *m = ud;
    size_t old = ptr ? osize : 0; /* with ptr == NULL, osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        m->used -= old;
        return NULL;
    }
    if (nsize > old && m->used - old + nsize > m->cap)
        return NULL; /* Lua collects garbage and retries, then raises LUA_ERRMEM */
    void *p = realloc(ptr, nsize);
    if (!p)
        return nsize <= old ? ptr : NULL; /* Lua assumes shrinking never fails */
    m->used = m->used - old + nsize;
    return p;
}

static int on_panic(lua_State *L)
{
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    fprintf(stderr, "policy: unprotected Lua error: %s\n", msg);
    return 0; /* Lua aborts */
}

/* ---- instruction budget and deadline --------------------------------------------------- */

/* Charge work done and stop the call once it is over a limit (raises a Lua error). */
static void charge(lua_State *L, policy_worker *w, uint64_t work)
{
    w->instructions += work;
    if (!w->in_call)
        w->fail = FAIL_OUTSIDE;
    else if (!w->fail && w->instructions >= w->set->limits.instructions)
        w->fail = FAIL_BUDGET;
    else if (!w->fail && mono_ns() > w->deadline_ns)
        w->fail = FAIL_DEADLINE;
    if (w->fail)
        luaL_error(L, "%s", fail_text(w->fail));
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    policy_worker *w = worker_of(L);
    charge(L, w, (uint64_t)w->hook_step);
}

static void begin_call(policy_worker *w)
{
    w->in_call = 1;
    w->fail = FAIL_NONE;
    w->instructions = 0;
    w->deadline_ns = mono_ns() + (int64_t)w->set->limits.timeout_ms * 1000000LL;
    lua_sethook(w->L, count_hook, LUA_MASKCOUNT, w->hook_step); /* also resets the counter */
}

static void end_call(policy_worker *w)
{
    w->in_call = 0;
    w->current_file = NULL;
    lua_settop(w->L, 0);
}

/* ---- the sandbox's own base functions --------------------------------------------------- */

/* pcall that cannot swallow an overrun: once the call is over a limit, errors propagate. */
static int sb_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    policy_worker *w = worker_of(L);
    if (status == LUA_ERRMEM && !w->fail)
        w->fail = FAIL_MEMORY;
    if (status != LUA_OK && w->fail)
        return lua_error(L);
    lua_pushboolean(L, status == LUA_OK);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* xpcall's message handler, wrapped: an error raised by the count hook calls the handler with
 * hooks disabled, so the policy's handler must not run once the call is over a limit. */
static int sb_msgh(lua_State *L)
{
    if (worker_of(L)->fail)
        return 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int sb_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, sb_msgh, 1);
    lua_replace(L, 2);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2); /* f, handler, true, f, args... */
    int status = lua_pcall(L, n - 2, LUA_MULTRET, 2);
    policy_worker *w = worker_of(L);
    if (status == LUA_ERRMEM && !w->fail)
        w->fail = FAIL_MEMORY;
    if (status != LUA_OK && w->fail)
        return lua_error(L);
    if (status != LUA_OK) {
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - 2;
}

/* setmetatable without finalizers: a __gc could run policy code during a later call. */
static int sb_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods are not allowed in policies");
        lua_pop(L, 1);
    }
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static void emit_log(const char *file, const char *line)
{
    policy_log_fn fn = atomic_load(&log_sink);
    if (fn) {
        fn(file, line);
        return;
    }
    char component[300];
    snprintf(component, sizeof component, "policy:%s", file);
    ar_log_as("info", component, NULL, "%s", line);
}

/* log(...): one line of tostring'ed arguments, at most LOG_LINE_MAX bytes, rate-limited. */
static int sb_log(lua_State *L)
{
    policy_worker *w = worker_of(L);
    const char *file = w->current_file ? w->current_file : "?";
    int64_t now = mono_ns();
    if (now - w->log_window_ns >= NS_PER_SEC) {
        if (w->log_dropped) {
            char note[64];
            snprintf(note, sizeof note, "... %lu lines dropped", w->log_dropped);
            emit_log(file, note);
        }
        w->log_window_ns = now;
        w->log_lines = 0;
        w->log_dropped = 0;
    }
    if (w->log_lines >= LOG_LINES_PER_SECOND) {
        w->log_dropped++;
        return 0;
    }
    w->log_lines++;

    char line[LOG_LINE_MAX + 1];
    size_t used = 0;
    int n = lua_gettop(L);
    for (int i = 1; i <= n && used < LOG_LINE_MAX; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1)
            line[used++] = ' ';
        size_t room = LOG_LINE_MAX - used;
        if (len > room)
            len = room;
        memcpy(line + used, s, len);
        used += len;
        lua_pop(L, 1);
    }
    line[used] = '\0';
    for (size_t i = 0; i < used; i++) { /* one line per call: no forged log lines */
        unsigned char c = (unsigned char)line[i];
        if (c < 0x20 || c == 0x7f)
            line[i] = ' ';
    }
    emit_log(file, line);
    return 0;
}

/* ---- pattern matching under the budget --------------------------------------------------- */

/* string.find/match/gmatch/gsub, written for the sandbox. Lua's own matcher runs in C where the
 * count hook never fires, and backtracking makes it polynomial: ("a"):rep(3000):find(".-.-b")
 * takes tens of seconds. This one implements the same pattern language (Lua 5.4 manual, 6.4.1,
 * same results and error messages; a differential test compares it with stock Lua) and charges
 * one instruction per character it tries, so the budget and the deadline hold. */

#define PM_MAX_CAPTURES 32
#define PM_MAX_DEPTH 200          /* nested matches before "pattern too complex" */
#define PM_CHECK_EVERY 1024       /* steps between limit checks */
#define PM_CAP_UNFINISHED (-1)
#define PM_CAP_POSITION (-2)

typedef struct pm_state {
    lua_State *L;
    policy_worker *w;
    const char *src, *src_end; /* the subject */
    const char *pat_end;
    int depth;                 /* recursion left */
    int level;                 /* captures open or closed so far */
    int countdown;             /* steps until the next limit check */
    struct {
        const char *init;
        ptrdiff_t len;         /* or PM_CAP_UNFINISHED / PM_CAP_POSITION */
    } cap[PM_MAX_CAPTURES];
} pm_state;

static void pm_init(pm_state *ms, lua_State *L, const char *s, size_t ls, const char *p,
                    size_t lp)
{
    ms->L = L;
    ms->w = worker_of(L);
    ms->src = s;
    ms->src_end = s + ls;
    ms->pat_end = p + lp;
    ms->countdown = PM_CHECK_EVERY;
}

static void pm_reset(pm_state *ms)
{
    ms->level = 0;
    ms->depth = PM_MAX_DEPTH;
}

static void pm_charge(pm_state *ms, ptrdiff_t steps)
{
    ms->countdown -= (int)(steps < PM_CHECK_EVERY ? steps : PM_CHECK_EVERY);
    if (ms->countdown > 0)
        return;
    uint64_t done = (uint64_t)(PM_CHECK_EVERY - ms->countdown);
    ms->countdown = PM_CHECK_EVERY;
    charge(ms->L, ms->w, done);
}

/* Charge what is left over when a string function returns. */
static void pm_finish(pm_state *ms)
{
    ms->w->instructions += (uint64_t)(PM_CHECK_EVERY - ms->countdown);
    ms->countdown = PM_CHECK_EVERY;
}

static int pm_class(int c, int cl)
{
    int res;
    switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    case 'z': res = c == 0; break; /* deprecated, still in Lua 5.4 */
    default: return cl == c;   /* %. %% %( ... stand for themselves */
    }
    res = res != 0;
    return isupper(cl) ? !res : res;
}

/* Is c in the set [p .. end], p at '[' and end at its ']'? */
static int pm_set(int c, const char *p, const char *end)
{
    int in = 1;
    p++;
    if (*p == '^') {
        in = 0;
        p++;
    }
    for (; p < end; p++) {
        if (*p == '%') {
            p++;
            if (pm_class(c, (unsigned char)*p))
                return in;
        } else if (p[1] == '-' && p + 2 < end) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
                return in;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return in;
        }
    }
    return !in;
}

/* The end of the single-character class starting at p. */
static const char *pm_class_end(pm_state *ms, const char *p)
{
    char c = *p++;
    if (c == '%') {
        if (p >= ms->pat_end)
            luaL_error(ms->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c == '[') {
        if (p < ms->pat_end && *p == '^')
            p++;
        for (;;) { /* the set's first character is never its end: "[]]" */
            if (p >= ms->pat_end)
                luaL_error(ms->L, "malformed pattern (missing ']')");
            if (*p++ == '%' && p < ms->pat_end)
                p++;
            if (p < ms->pat_end && *p == ']')
                return p + 1;
        }
    }
    return p;
}

static int pm_single(pm_state *ms, const char *s, const char *p, const char *ep)
{
    pm_charge(ms, 1 + ((ep - p) >> 4)); /* long sets cost more */
    if (s >= ms->src_end)
        return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return 1;
    case '%': return pm_class(c, (unsigned char)p[1]);
    case '[': return pm_set(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

static const char *pm_match(pm_state *ms, const char *s, const char *p);

static const char *pm_max_expand(pm_state *ms, const char *s, const char *p, const char *ep)
{
    ptrdiff_t n = 0;
    while (pm_single(ms, s + n, p, ep))
        n++;
    for (; n >= 0; n--) { /* longest first */
        const char *r = pm_match(ms, s + n, ep + 1);
        if (r)
            return r;
    }
    return NULL;
}

static const char *pm_min_expand(pm_state *ms, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = pm_match(ms, s, ep + 1);
        if (r)
            return r;
        if (!pm_single(ms, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *pm_open_capture(pm_state *ms, const char *s, const char *p, ptrdiff_t what)
{
    if (ms->level >= PM_MAX_CAPTURES)
        luaL_error(ms->L, "too many captures");
    ms->cap[ms->level].init = s;
    ms->cap[ms->level].len = what;
    ms->level++;
    const char *r = pm_match(ms, s, p);
    if (!r)
        ms->level--;
    return r;
}

static const char *pm_close_capture(pm_state *ms, const char *s, const char *p)
{
    int l = ms->level - 1;
    while (l >= 0 && ms->cap[l].len != PM_CAP_UNFINISHED)
        l--;
    if (l < 0)
        luaL_error(ms->L, "invalid pattern capture");
    ms->cap[l].len = s - ms->cap[l].init;
    const char *r = pm_match(ms, s, p);
    if (!r)
        ms->cap[l].len = PM_CAP_UNFINISHED;
    return r;
}

/* %bxy at p (pointing after "%b"). */
static const char *pm_balance(pm_state *ms, const char *s, const char *p)
{
    if (p + 1 >= ms->pat_end)
        luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= ms->src_end || *s != p[0])
        return NULL;
    int open = 1;
    while (++s < ms->src_end) {
        pm_charge(ms, 1);
        if (*s == p[1]) {
            if (--open == 0)
                return s + 1;
        } else if (*s == p[0]) {
            open++;
        }
    }
    return NULL;
}

/* %1 .. %9: the text of an earlier capture again. */
static const char *pm_backref(pm_state *ms, const char *s, int digit)
{
    int l = digit - '1';
    if (l < 0 || l >= ms->level || ms->cap[l].len == PM_CAP_UNFINISHED)
        luaL_error(ms->L, "invalid capture index %%%d", l + 1);
    ptrdiff_t len = ms->cap[l].len;
    if (len < 0) /* a position capture matches no text */
        return NULL;
    pm_charge(ms, 1 + (len >> 4));
    if (ms->src_end - s >= len && memcmp(ms->cap[l].init, s, (size_t)len) == 0)
        return s + len;
    return NULL;
}

/* %f[set] at p (pointing after "%f"); returns the pattern after the set, or NULL. */
static const char *pm_frontier(pm_state *ms, const char *s, const char *p)
{
    if (p >= ms->pat_end || *p != '[')
        luaL_error(ms->L, "missing '[' after '%%f' in pattern");
    const char *ep = pm_class_end(ms, p);
    pm_charge(ms, 1 + ((ep - p) >> 3));
    int prev = s == ms->src ? 0 : (unsigned char)s[-1];
    int cur = s < ms->src_end ? (unsigned char)*s : 0;
    return !pm_set(prev, p, ep - 1) && pm_set(cur, p, ep - 1) ? ep : NULL;
}

/* Match pattern p at s; the end of the match or NULL. */
static const char *pm_match(pm_state *ms, const char *s, const char *p)
{
    if (ms->depth-- == 0)
        luaL_error(ms->L, "pattern too complex");
    pm_charge(ms, 1);
    const char *r;
    for (;;) {
        if (p == ms->pat_end) {
            r = s;
            break;
        }
        if (*p == '(') {
            if (p + 1 < ms->pat_end && p[1] == ')')
                r = pm_open_capture(ms, s, p + 2, PM_CAP_POSITION);
            else
                r = pm_open_capture(ms, s, p + 1, PM_CAP_UNFINISHED);
            break;
        }
        if (*p == ')') {
            r = pm_close_capture(ms, s, p + 1);
            break;
        }
        if (*p == '$' && p + 1 == ms->pat_end) {
            r = s == ms->src_end ? s : NULL;
            break;
        }
        if (*p == '%' && p + 1 < ms->pat_end) {
            if (p[1] == 'b') {
                s = pm_balance(ms, s, p + 2);
                if (!s) {
                    r = NULL;
                    break;
                }
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                p = pm_frontier(ms, s, p + 2);
                if (!p) {
                    r = NULL;
                    break;
                }
                continue;
            }
            if (isdigit((unsigned char)p[1])) {
                s = pm_backref(ms, s, (unsigned char)p[1]);
                if (!s) {
                    r = NULL;
                    break;
                }
                p += 2;
                continue;
            }
        }
        /* one character class, maybe followed by a quantifier */
        const char *ep = pm_class_end(ms, p);
        char q = ep < ms->pat_end ? *ep : '\0';
        if (!pm_single(ms, s, p, ep)) {
            if (q == '*' || q == '?' || q == '-') { /* zero repetitions are fine */
                p = ep + 1;
                continue;
            }
            r = NULL;
            break;
        }
        if (q == '?') {
            r = pm_match(ms, s + 1, ep + 1);
            if (r)
                break;
            p = ep + 1;
            continue;
        }
        if (q == '+') {
            r = pm_max_expand(ms, s + 1, p, ep);
            break;
        }
        if (q == '*') {
            r = pm_max_expand(ms, s, p, ep);
            break;
        }
        if (q == '-') {
            r = pm_min_expand(ms, s, p, ep);
            break;
        }
        s++;
        p = ep;
    }
    ms->depth++;
    return r;
}

/* Push capture i; with no captures, capture 0 is the whole match s..e. */
static void pm_push_capture(pm_state *ms, int i, const char *s, const char *e)
{
    if (i >= ms->level) {
        if (i != 0)
            luaL_error(ms->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(ms->L, s, (size_t)(e - s));
        return;
    }
    ptrdiff_t len = ms->cap[i].len;
    if (len == PM_CAP_UNFINISHED)
        luaL_error(ms->L, "unfinished capture");
    if (len == PM_CAP_POSITION)
        lua_pushinteger(ms->L, (ms->cap[i].init - ms->src) + 1);
    else
        lua_pushlstring(ms->L, ms->cap[i].init, (size_t)len);
}

/* Push every capture (the whole match when there are none and s is given). */
static int pm_push_captures(pm_state *ms, const char *s, const char *e)
{
    int n = (ms->level == 0 && s) ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        pm_push_capture(ms, i, s, e);
    return n;
}

/* A 1-based, possibly negative, start position as a 0-based offset (may exceed len). */
static size_t pm_start(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 0;
    return len + (size_t)pos;
}

static int pm_has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (p[i] && strchr("^$*+?.([%-", p[i]))
            return 1;
    return 0;
}

static int pm_find_aux(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = pm_start(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || !pm_has_specials(p, lp))) {
        const char *hit = memmem(s + init, ls - init, p, lp); /* linear time */
        if (!hit) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (hit - s) + 1);
        lua_pushinteger(L, (lua_Integer)((size_t)(hit - s) + lp));
        return 2;
    }
    int anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    pm_state ms;
    pm_init(&ms, L, s, ls, p, lp);
    const char *start = s + init;
    do {
        pm_reset(&ms);
        const char *e = pm_match(&ms, start, p);
        if (e) {
            pm_finish(&ms);
            if (!find)
                return pm_push_captures(&ms, start, e);
            lua_pushinteger(L, (start - s) + 1);
            lua_pushinteger(L, e - s);
            return 2 + pm_push_captures(&ms, NULL, NULL);
        }
    } while (start++ < ms.src_end && !anchor);
    pm_finish(&ms);
    luaL_pushfail(L);
    return 1;
}

static int pm_find(lua_State *L)
{
    return pm_find_aux(L, 1);
}

static int pm_match_fn(lua_State *L)
{
    return pm_find_aux(L, 0);
}

typedef struct pm_gmatch {
    size_t next;      /* where the next search starts */
    size_t lastmatch; /* end of the last match, SIZE_MAX before the first */
} pm_gmatch;

static int pm_gmatch_next(lua_State *L)
{
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
    pm_gmatch *g = lua_touserdata(L, lua_upvalueindex(3));
    pm_state ms;
    pm_init(&ms, L, s, ls, p, lp);
    for (size_t at = g->next; at <= ls; at++) {
        pm_reset(&ms);
        const char *e = pm_match(&ms, s + at, p);
        if (e && (size_t)(e - s) != g->lastmatch) {
            g->next = g->lastmatch = (size_t)(e - s);
            pm_finish(&ms);
            return pm_push_captures(&ms, s + at, e);
        }
    }
    g->next = ls + 1;
    pm_finish(&ms);
    return 0;
}

static int pm_gmatch_fn(lua_State *L)
{
    size_t ls;
    luaL_checklstring(L, 1, &ls);
    luaL_checkstring(L, 2);
    size_t init = pm_start(luaL_optinteger(L, 3, 1), ls);
    lua_settop(L, 2);
    pm_gmatch *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->next = init > ls ? ls + 1 : init;
    g->lastmatch = SIZE_MAX;
    lua_pushcclosure(L, pm_gmatch_next, 3);
    return 1;
}

/* Append the replacement string (argument 3) for the match s..e, expanding %0-%9 and %%. */
static void pm_add_replacement(pm_state *ms, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = ms->L;
    size_t len;
    const char *r = lua_tolstring(L, 3, &len);
    const char *end = r + len;
    const char *pct;
    while ((pct = memchr(r, '%', (size_t)(end - r))) != NULL) {
        luaL_addlstring(b, r, (size_t)(pct - r));
        pct++;
        if (pct < end && *pct == '%') {
            luaL_addchar(b, '%');
        } else if (pct < end && *pct == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (pct < end && isdigit((unsigned char)*pct)) {
            pm_push_capture(ms, *pct - '1', s, e);
            luaL_tolstring(L, -1, NULL); /* a position capture is a number */
            lua_remove(L, -2);
            luaL_addvalue(b);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", '%');
        }
        r = pct + 1;
    }
    luaL_addlstring(b, r, (size_t)(end - r));
}

/* Append the replacement of the match s..e; 1 when the text changed. */
static int pm_add_value(pm_state *ms, luaL_Buffer *b, const char *s, const char *e, int type)
{
    lua_State *L = ms->L;
    if (type == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = pm_push_captures(ms, s, e);
        lua_call(L, n, 1);
    } else if (type == LUA_TTABLE) {
        pm_push_capture(ms, 0, s, e);
        lua_gettable(L, 3);
    } else {
        pm_add_replacement(ms, b, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: keep the original text */
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int pm_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int type = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L, type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION ||
                     type == LUA_TTABLE, 3, "string/function/table");
    int anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    pm_state ms;
    pm_init(&ms, L, src, ls, p, lp);
    const char *s = src, *lastmatch = NULL;
    lua_Integer n = 0;
    int changed = 0;
    while (n < max) {
        pm_reset(&ms);
        const char *e = pm_match(&ms, s, p);
        if (e && e != lastmatch) {
            n++;
            changed = pm_add_value(&ms, &b, s, e, type) | changed;
            s = lastmatch = e;
        } else if (s < ms.src_end) {
            luaL_addchar(&b, *s++);
        } else {
            break;
        }
        if (anchor)
            break;
    }
    pm_finish(&ms);
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, s, (size_t)(ms.src_end - s));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

/* ---- read-only library proxies ------------------------------------------------------------ */

static int ro_newindex(lua_State *L)
{
    return luaL_error(L, "attempt to modify read-only table");
}

/* pairs(proxy) walks the real table without ever handing it out. */
static int ro_next(lua_State *L)
{
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 2);
    if (lua_next(L, 3))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int ro_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, ro_next, 1);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Push a read-only proxy of the table at idx. */
static void push_proxy(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_newtable(L);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ro_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, idx);
    lua_pushcclosure(L, ro_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

/* ---- ctx: what the runtime tells a policy besides the action ------------------------------ */

static int ctx_now(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)worker_of(L)->decision_time_s);
    return 1;
}

/* ctx.counter(name): a declared counter's value from the worker's source. An undeclared name
 * or a failing source raises (so the policy fails: deny policy_error). Whole values are
 * integers, as whole numbers of an action are. */
static int ctx_counter(lua_State *L)
{
    policy_worker *w = worker_of(L);
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "ctx.counter(name): name must be a string, got a %s",
                          luaL_typename(L, 1));
    size_t len;
    const char *name = lua_tolstring(L, 1, &len);
    const counter_def *def = strlen(name) == len ? policy_set_find_counter(w->set, name) : NULL;
    if (!def)
        return luaL_error(L, "counter \"%s\" is not declared (declare it in counters = {...} of "
                             "a policy file)", name);
    double value = 0;
    if (w->counter_fn) {
        ar_error err;
        ar_error_clear(&err);
        /* the source is plain C and never raises; its failure is raised here */
        int rc = w->counter_fn(w->counter_arg, def, &value, &err);
        if (rc != AR_OK)
            return luaL_error(L, "counter %s unavailable: %s", def->name,
                              err.message[0] ? err.message : "failed");
        if (!isfinite(value))
            return luaL_error(L, "counter %s unavailable: its value is not a finite number",
                              def->name);
    }
    if (value == floor(value) && fabs(value) < 9007199254740992.0) /* 2^53: exact */
        lua_pushinteger(L, (lua_Integer)value);
    else
        lua_pushnumber(L, (lua_Number)value);
    return 1;
}

static int ctx_newindex(lua_State *L)
{
    return luaL_error(L, "ctx is read-only");
}

/* Build the metatable every call's ctx gets: each call's ctx is a new empty table (so nothing
 * a policy does to it can outlive the call) that reads through to the shared, unreachable
 * table of ctx functions and refuses writes. */
static int make_ctx_metatable(lua_State *L)
{
    lua_createtable(L, 0, 2); /* the functions */
    lua_pushcfunction(L, ctx_now);
    lua_setfield(L, -2, "now");
    lua_pushcfunction(L, ctx_counter);
    lua_setfield(L, -2, "counter");
    int fns = lua_gettop(L);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, fns);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ctx_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, fns);
    lua_pushcclosure(L, ro_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    return ref;
}

/* ---- building the sandbox ----------------------------------------------------------------- */

static const char *const base_allowed[] = {
    "assert", "error", "getmetatable", "ipairs", "next", "pairs", "rawequal", "rawget",
    "rawlen", "select", "tonumber", "tostring", "type", "_VERSION", NULL
};

static const char *const os_allowed[] = { "time", "clock", "date", NULL };

/* Open lib, remove the names in strip, put in the functions of replace, store a proxy as
 * G[name]. */
static void add_library(lua_State *L, int g, const char *name, lua_CFunction open,
                        const char *const *strip, const luaL_Reg *replace)
{
    luaL_requiref(L, name, open, 0);
    if (replace)
        luaL_setfuncs(L, replace, 0);
    for (; strip && *strip; strip++) {
        lua_pushnil(L);
        lua_setfield(L, -2, *strip);
    }
    push_proxy(L, -1);
    lua_setfield(L, g, name);
    lua_pop(L, 1);
}

typedef struct setup_ctx {
    policy_worker *w;
    size_t bad_file;        /* index of a file that did not compile, or SIZE_MAX */
    char message[400];
} setup_ctx;

/* Protected: open and cut down the libraries, build G and the env metatable, compile files. */
static int setup_state(lua_State *L)
{
    setup_ctx *sc = lua_touserdata(L, 1);
    policy_worker *w = sc->w;

    luaL_requiref(L, LUA_GNAME, luaopen_base, 0);
    int base = lua_gettop(L);
    lua_newtable(L);
    int g = lua_gettop(L);
    for (const char *const *n = base_allowed; *n; n++) {
        lua_getfield(L, base, *n);
        lua_setfield(L, g, *n);
    }
    lua_pushcfunction(L, sb_pcall);
    lua_setfield(L, g, "pcall");
    lua_pushcfunction(L, sb_xpcall);
    lua_setfield(L, g, "xpcall");
    lua_pushcfunction(L, sb_setmetatable);
    lua_setfield(L, g, "setmetatable");
    lua_pushcfunction(L, sb_log);
    lua_setfield(L, g, "log");

    static const char *const string_strip[] = { "dump", NULL };
    static const char *const math_strip[] = { "randomseed", NULL }; /* no state across calls */
    static const luaL_Reg string_budgeted[] = {
        { "find", pm_find }, { "match", pm_match_fn }, { "gmatch", pm_gmatch_fn },
        { "gsub", pm_gsub }, { NULL, NULL }
    };
    add_library(L, g, LUA_STRLIBNAME, luaopen_string, string_strip, string_budgeted);
    add_library(L, g, LUA_TABLIBNAME, luaopen_table, NULL, NULL);
    add_library(L, g, LUA_MATHLIBNAME, luaopen_math, math_strip, NULL);
    add_library(L, g, LUA_UTF8LIBNAME, luaopen_utf8, NULL, NULL);

    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
    lua_createtable(L, 0, 3);
    for (const char *const *n = os_allowed; *n; n++) {
        lua_getfield(L, -2, *n);
        lua_setfield(L, -2, *n);
    }
    push_proxy(L, -1);
    lua_setfield(L, g, LUA_OSLIBNAME);
    lua_pop(L, 2);

    /* ("").x reads the real string table (already without dump); getmetatable("") hides it */
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_createtable(L, 0, 2);
    lua_pushvalue(L, g);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    w->env_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    w->ctx_mt_ref = make_ctx_metatable(L);

    /* The state's own globals are never a policy's _ENV; leave an empty table there. */
    lua_newtable(L);
    lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_settop(L, 1);

    for (size_t i = 0; i < w->set->count; i++) {
        const policy_file *f = &w->set->files[i];
        char chunkname[sizeof f->name + 1];
        snprintf(chunkname, sizeof chunkname, "=%s", f->name);
        if (luaL_loadbufferx(L, f->source, f->len, chunkname, "t") != LUA_OK) {
            sc->bad_file = i;
            snprintf(sc->message, sizeof sc->message, "%s",
                     lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "cannot load");
            return 0;
        }
        const char *up = lua_getupvalue(L, -1, 1);
        if (!up || strcmp(up, "_ENV") != 0) {
            sc->bad_file = i;
            snprintf(sc->message, sizeof sc->message, "the chunk's first upvalue is not _ENV");
            return 0;
        }
        lua_pop(L, 1);
        w->chunk_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

/* Create a worker; a file that does not compile is policy_invalid naming it. */
static int worker_create(const policy_set *set, policy_worker **out, ar_error *err)
{
    policy_worker *w = calloc(1, sizeof *w);
    if (!w)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
    w->set = set;
    w->mem.cap = set->limits.memory_bytes;
    w->hook_step = set->limits.instructions < HOOK_STEP ? (int)set->limits.instructions
                                                         : HOOK_STEP;
    w->chunk_refs = calloc(set->count ? set->count : 1, sizeof *w->chunk_refs);
    if (!w->chunk_refs) {
        free(w);
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
    }
    w->L = lua_newstate(capped_alloc, &w->mem);
    if (!w->L) {
        free(w->chunk_refs);
        free(w);
        return ar_error_set(err, AR_E_NOMEM, "policy_memory",
                            "policy: cannot create a Lua state within %zu bytes",
                            set->limits.memory_bytes);
    }
    *(policy_worker **)lua_getextraspace(w->L) = w;
    lua_atpanic(w->L, on_panic);

    setup_ctx sc = { .w = w, .bad_file = SIZE_MAX };
    lua_pushcfunction(w->L, setup_state);
    lua_pushlightuserdata(w->L, &sc);
    int status = lua_pcall(w->L, 1, 0, 0);
    int rc = AR_OK;
    if (status == LUA_ERRMEM)
        rc = ar_error_set(err, AR_E_NOMEM, "policy_memory",
                          "policy: the policies do not fit the memory limit of %zu bytes",
                          set->limits.memory_bytes);
    else if (status != LUA_OK)
        rc = ar_error_set(err, AR_E_FAIL, "policy_setup", "policy: cannot set up the sandbox: %s",
                          lua_type(w->L, -1) == LUA_TSTRING ? lua_tostring(w->L, -1) : "?");
    else if (sc.bad_file != SIZE_MAX)
        rc = ar_error_set(err, AR_E_INVALID, "policy_invalid", "policy %s does not compile: %s",
                          set->files[sc.bad_file].name, sc.message);
    if (rc != AR_OK) {
        policy_worker_free(w);
        return rc;
    }
    lua_settop(w->L, 0);
    lua_gc(w->L, LUA_GCGEN, 0, 0); /* most of a call's objects die young: ~30% faster */
    lua_sethook(w->L, count_hook, LUA_MASKCOUNT, w->hook_step);
    *out = w;
    return AR_OK;
}

/* ---- one file, one decision ----------------------------------------------------------------- */

static void push_json(lua_State *L, json_t *v)
{
    luaL_checkstack(L, 3, "action too deep");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *val;
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach(v, key, val) {
            if (json_is_null(val))
                continue; /* null reads as nil: absent */
            lua_pushstring(L, key);
            push_json(L, val);
            lua_rawset(L, -3);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            json_t *val = json_array_get(v, i);
            if (json_is_null(val))
                continue;
            push_json(L, val);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(v));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    default:
        lua_pushnil(L);
        break;
    }
}

static int json_too_deep(const json_t *v, int depth)
{
    if (depth > MAX_ACTION_DEPTH)
        return 1;
    if (json_is_object(v)) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)v, key, val) {
            if (json_too_deep(val, depth + 1))
                return 1;
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (json_too_deep(json_array_get(v, i), depth + 1))
                return 1;
    }
    return 0;
}

/* Make s valid UTF-8 in place, as JSON needs it: a sequence cut off at the end (by a
 * truncation) is dropped, any other invalid byte becomes '?'. */
static void utf8_clean(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t i = 0;
    while (p[i]) {
        unsigned char b = p[i];
        size_t len;
        unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xc2 && b <= 0xdf) {
            len = 2;
        } else if (b >= 0xe0 && b <= 0xef) {
            len = 3;
            if (b == 0xe0)
                lo = 0xa0; /* overlong */
            else if (b == 0xed)
                hi = 0x9f; /* surrogates */
        } else if (b >= 0xf0 && b <= 0xf4) {
            len = 4;
            if (b == 0xf0)
                lo = 0x90; /* overlong */
            else if (b == 0xf4)
                hi = 0x8f; /* beyond U+10FFFF */
        } else {
            p[i++] = '?';
            continue;
        }
        size_t k = 1;
        for (; k < len; k++) {
            unsigned char c = p[i + k];
            if (c == 0)
                break;
            if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf))
                break;
        }
        if (k == len) {
            i += len;
        } else if (p[i + k] == 0) {
            p[i] = 0; /* cut off at the end */
            return;
        } else {
            p[i++] = '?';
        }
    }
}

/* Copy the string field key of the table at idx (raw) into buf, cut to the buffer and made
 * valid UTF-8; 0 absent, 1 copied, -1 not a string (*type names what it is). */
static int copy_field(lua_State *L, int idx, const char *key, char *buf, size_t size,
                      const char **type)
{
    lua_pushstring(L, key);
    int t = lua_rawget(L, idx);
    int rc = 0;
    if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (len >= size)
            len = size - 1;
        memcpy(buf, s, len);
        buf[len] = '\0';
        utf8_clean(buf);
        rc = 1;
    } else if (t != LUA_TNIL) {
        *type = lua_typename(L, t);
        rc = -1;
    }
    lua_pop(L, 1);
    return rc;
}

#define MAX_EXPIRES_IN_S (30 * 24 * 3600)

static int valid_role(const char *s, size_t len)
{
    static const char allowed[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789_.:-";
    if (len < 1 || len >= sizeof(((run_ctx *)0)->roles[0]))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!s[i] || !strchr(allowed, s[i]))
            return 0;
    return 1;
}

/* roles (the table at idx): a sequence of at most POLICY_MAX_ROLES valid role names, kept
 * without duplicates. 0 ok, -1 invalid (c->reason says why). Raw reads only. */
static int read_roles(lua_State *L, int idx, run_ctx *c)
{
    int count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (++count > POLICY_MAX_ROLES) {
            lua_pop(L, 1);
            snprintf(c->reason, sizeof c->reason, "roles: at most %d roles may be named",
                     POLICY_MAX_ROLES);
            return -1;
        }
    }
    for (int i = 1; i <= count; i++) {
        int t = lua_rawgeti(L, idx, i);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            snprintf(c->reason, sizeof c->reason,
                     "roles must be an array of strings (keys 1, 2, ... only)");
            return -1;
        }
        if (t != LUA_TSTRING) {
            snprintf(c->reason, sizeof c->reason, "roles[%d] must be a string, got a %s", i,
                     lua_typename(L, t));
            lua_pop(L, 1);
            return -1;
        }
        size_t len;
        const char *role = lua_tolstring(L, -1, &len);
        if (!valid_role(role, len)) {
            lua_pop(L, 1);
            snprintf(c->reason, sizeof c->reason,
                     "roles[%d] is not a valid role name (1 to 63 of A-Z a-z 0-9 _ . : -)", i);
            return -1;
        }
        int dup = 0;
        for (int k = 0; k < c->n_roles; k++)
            dup |= strcmp(c->roles[k], role) == 0;
        if (!dup)
            memcpy(c->roles[c->n_roles++], role, len + 1);
        lua_pop(L, 1);
    }
    return 0;
}

static const char *const verdict_names[] = { "allow", "approve", "suggest", "deny" };

#define VERDICT_CHOICES "\"allow\", \"deny\", \"approve\" or \"suggest\""

/* Interpret decide's result (top of the stack) into c; raw reads only, no metamethods. */
static void read_result(lua_State *L, run_ctx *c)
{
    int idx = lua_gettop(L);
    int t = lua_type(L, idx);
    if (t == LUA_TNIL) {
        c->outcome = OUT_ABSTAIN;
        return;
    }
    c->outcome = OUT_INVALID;
    if (t != LUA_TTABLE) {
        snprintf(c->reason, sizeof c->reason, "expected nil or a table, got a %s",
                 lua_typename(L, t));
        return;
    }
    lua_pushliteral(L, "verdict");
    int vt = lua_rawget(L, idx);
    size_t vlen = 0;
    const char *verdict = vt == LUA_TSTRING ? lua_tolstring(L, -1, &vlen) : NULL;
    int v = verdict && strlen(verdict) == vlen ? policy_verdict_from_name(verdict) : -1;
    if (v < 0) {
        if (vt == LUA_TNIL)
            snprintf(c->reason, sizeof c->reason, "verdict is missing");
        else if (!verdict)
            snprintf(c->reason, sizeof c->reason, "verdict must be " VERDICT_CHOICES ", got a %s",
                     lua_typename(L, vt));
        else if (memchr(verdict, '\0', vlen))
            snprintf(c->reason, sizeof c->reason,
                     "verdict must be " VERDICT_CHOICES ", got a string with a NUL byte");
        else
            snprintf(c->reason, sizeof c->reason, "verdict must be " VERDICT_CHOICES
                     ", got \"%.64s\"", verdict);
        utf8_clean(c->reason);
        return;
    }
    lua_pop(L, 1);

    run_ctx vote = { .verdict = (policy_verdict)v };
    const char *type = "?";
    int got;
    if ((got = copy_field(L, idx, "reason", vote.reason, sizeof vote.reason, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "reason must be a string, got a %s", type);
        return;
    }
    vote.has_reason = got;
    if ((got = copy_field(L, idx, "rule", vote.rule, sizeof vote.rule, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "rule must be a string, got a %s", type);
        return;
    }
    vote.has_rule = got;
    if ((got = copy_field(L, idx, "summary", vote.summary, sizeof vote.summary, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "summary must be a string, got a %s", type);
        return;
    }
    vote.has_summary = got;

    lua_pushliteral(L, "roles");
    t = lua_rawget(L, idx);
    if (t != LUA_TNIL && t != LUA_TTABLE) {
        snprintf(c->reason, sizeof c->reason, "roles must be an array of strings, got a %s",
                 lua_typename(L, t));
        return;
    }
    if (t == LUA_TTABLE && read_roles(L, lua_gettop(L), &vote) != 0) {
        memcpy(c->reason, vote.reason, sizeof c->reason);
        return;
    }
    lua_pop(L, 1);

    lua_pushliteral(L, "expires_in");
    t = lua_rawget(L, idx);
    if (t != LUA_TNIL) {
        int is_int = 0;
        lua_Integer secs = t == LUA_TNUMBER ? lua_tointegerx(L, -1, &is_int) : 0;
        if (t != LUA_TNUMBER) {
            snprintf(c->reason, sizeof c->reason,
                     "expires_in must be a number of seconds, got a %s", lua_typename(L, t));
            return;
        }
        if (!is_int || secs < 1 || secs > MAX_EXPIRES_IN_S) {
            snprintf(c->reason, sizeof c->reason,
                     "expires_in must be a whole number of seconds from 1 to %d (30 days), "
                     "got %s", MAX_EXPIRES_IN_S, lua_tostring(L, -1));
            return;
        }
        vote.expires_in_s = secs;
    }
    lua_pop(L, 1);

    lua_pushliteral(L, "four_eyes");
    t = lua_rawget(L, idx);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN) {
        snprintf(c->reason, sizeof c->reason, "four_eyes must be a boolean, got a %s",
                 lua_typename(L, t));
        return;
    }
    vote.four_eyes = lua_toboolean(L, -1);
    lua_pop(L, 1);

    /* keep c's identity (worker, file, action), take the vote */
    vote.w = c->w;
    vote.index = c->index;
    vote.action = c->action;
    vote.outcome = OUT_VOTE;
    *c = vote;
}

/* Converting Lua tables to JSON (a test file's cases, a policy's counters declaration). Only
 * raw reads of values already on the stack: no Lua code runs and nothing is allocated on the
 * Lua side, so nothing can raise. */
typedef struct tconv {
    lua_State *L;
    const char *part;       /* what the values are part of, for messages; NULL: "a test" */
    char path[256];         /* where in the case, "action.input.items[2]" */
    char why[400];          /* what is wrong, when a conversion fails */
} tconv;

static json_t *lua_to_json(tconv *tc, int idx, int depth);

/* Interpret validate's result (top of the stack) into c: OUT_ABSTAIN accepts, OUT_VOTE rejects
 * (has_reason, has_rule: given), OUT_INVALID: c->reason says what is wrong. Raw reads only. */
static void read_validation(lua_State *L, run_ctx *c)
{
    int idx = lua_gettop(L);
    int t = lua_type(L, idx);
    c->has_reason = c->has_rule = 0;
    c->reason[0] = c->rule[0] = '\0';
    if (t == LUA_TNIL || (t == LUA_TBOOLEAN && lua_toboolean(L, idx))) {
        c->outcome = OUT_ABSTAIN;
        return;
    }
    if (t == LUA_TBOOLEAN) {
        c->outcome = OUT_VOTE;
        return;
    }
    if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (len >= sizeof c->reason)
            len = sizeof c->reason - 1;
        memcpy(c->reason, s, len);
        c->reason[len] = '\0';
        utf8_clean(c->reason);
        c->has_reason = c->reason[0] != '\0';
        c->outcome = OUT_VOTE;
        return;
    }
    c->outcome = OUT_INVALID;
    if (t != LUA_TTABLE) {
        snprintf(c->reason, sizeof c->reason, "expected nil, true, false, a string or "
                 "{ok = ..., reason = ..., rule = ...}, got a %s", lua_typename(L, t));
        return;
    }
    lua_pushliteral(L, "ok");
    int ok_type = lua_rawget(L, idx);
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (ok_type != LUA_TBOOLEAN) {
        if (ok_type == LUA_TNIL)
            snprintf(c->reason, sizeof c->reason, "ok is missing (true or false)");
        else
            snprintf(c->reason, sizeof c->reason, "ok must be true or false, got a %s",
                     lua_typename(L, ok_type));
        return;
    }
    char reason[sizeof c->reason] = "", rule[sizeof c->rule] = "";
    const char *type = "?";
    int has_reason, has_rule;
    if ((has_reason = copy_field(L, idx, "reason", reason, sizeof reason, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "reason must be a string, got a %s", type);
        return;
    }
    if ((has_rule = copy_field(L, idx, "rule", rule, sizeof rule, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "rule must be a string, got a %s", type);
        return;
    }
    if (ok) {
        c->outcome = OUT_ABSTAIN;
        return;
    }
    c->outcome = OUT_VOTE;
    memcpy(c->reason, reason, sizeof reason);
    memcpy(c->rule, rule, sizeof rule);
    c->has_reason = has_reason && reason[0];
    c->has_rule = has_rule && rule[0];
}

/* RUN_LOAD, after the chunk ran in the env at env: decide must be a function, validate a
 * function or absent; counters, when there, is converted to JSON into c->counters (raises with
 * what is wrong). */
static int check_loaded_file(lua_State *L, run_ctx *c, int env)
{
    lua_pushliteral(L, "validate");
    int t = lua_rawget(L, env);
    lua_pop(L, 1);
    if (t != LUA_TNIL && t != LUA_TFUNCTION)
        return luaL_error(L, "validate must be a function validate(action, result, ctx), got "
                             "a %s", lua_typename(L, t));
    c->has_validate = t == LUA_TFUNCTION;

    lua_pushliteral(L, "counters");
    t = lua_rawget(L, env);
    if (t == LUA_TNIL)
        return 0;
    if (t != LUA_TTABLE)
        return luaL_error(L, "counters must be a table {name = {connector = ..., window = ...}, "
                             "...}, got a %s", lua_typename(L, t));
    tconv tc = { .L = L, .part = "a counter declaration" };
    snprintf(tc.path, sizeof tc.path, "counters");
    json_t *j = lua_to_json(&tc, lua_gettop(L), 1);
    if (!j)
        return luaL_error(L, "%s", tc.why);
    if (!json_is_object(j)) {
        json_decref(j);
        return luaL_error(L, "counters must be a table of names, {name = {connector = ..., "
                             "window = ...}, ...}, not a list");
    }
    c->counters = j;
    return 0;
}

/* Push a fresh, read-only ctx. */
static void push_ctx(lua_State *L, policy_worker *w)
{
    lua_createtable(L, 0, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->ctx_mt_ref);
    lua_setmetatable(L, -2);
}

/* Protected: run file c->index's chunk in a fresh _ENV, then (c->mode) its decide(action, ctx)
 * or validate(action, result, ctx), or only check what it defines. */
static int run_file(lua_State *L)
{
    run_ctx *c = lua_touserdata(L, 1);
    policy_worker *w = c->w;

    lua_rawgeti(L, LUA_REGISTRYINDEX, w->chunk_refs[c->index]); /* 2: chunk */
    lua_createtable(L, 0, 4);                                    /* 3: env */
    lua_pushvalue(L, 3);
    lua_setfield(L, 3, LUA_GNAME);                               /* _G is this call's env */
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->env_mt_ref);
    lua_setmetatable(L, 3);
    lua_pushvalue(L, 3);
    lua_setupvalue(L, 2, 1);                                     /* the chunk's _ENV */
    lua_pushvalue(L, 2);
    lua_call(L, 0, 0);

    if (c->mode == RUN_VALIDATE) {
        lua_pushliteral(L, "validate");
        if (lua_rawget(L, 3) != LUA_TFUNCTION)
            return luaL_error(L, "validate is not a function");
        push_json(L, (json_t *)c->action);
        if (c->result)
            push_json(L, (json_t *)c->result);
        else
            lua_pushnil(L);
        push_ctx(L, w);
        lua_call(L, 3, 1);
        read_validation(L, c);
        return 0;
    }
    lua_pushliteral(L, "decide");
    if (lua_rawget(L, 3) != LUA_TFUNCTION)
        return luaL_error(L, "%s", c->mode == RUN_LOAD ? "does not define a function decide(action)"
                                                       : "decide is not a function");
    if (c->mode == RUN_LOAD)
        return check_loaded_file(L, c, 3);
    push_json(L, (json_t *)c->action);
    push_ctx(L, w);                                              /* a fresh ctx */
    lua_call(L, 2, 1);
    read_result(L, c);
    return 0;
}

/* Run one file under the call's limits. AR_OK: c->outcome is set. Otherwise the policy failed
 * and message says why. */
static int run_protected(policy_worker *w, run_ctx *c, char *message, size_t size)
{
    lua_State *L = w->L;
    w->current_file = w->set->files[c->index].name;
    lua_settop(L, 0);
    lua_pushcfunction(L, run_file);
    lua_pushlightuserdata(L, c);
    int status = lua_pcall(L, 1, 0, 0);
    if (status == LUA_OK)
        return AR_OK;
    if (status == LUA_ERRMEM && !w->fail)
        w->fail = FAIL_MEMORY;
    if (w->fail)
        snprintf(message, size, "%s", fail_text(w->fail));
    else if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
        snprintf(message, size, "%s", lua_tostring(L, -1));
    else
        snprintf(message, size, "error object is a %s value", luaL_typename(L, -1));
    lua_settop(L, 0);
    if (w->fail == FAIL_MEMORY) {
        w->in_call = 0; /* the collection runs no policy code */
        lua_gc(L, LUA_GCCOLLECT);
        w->in_call = 1;
    }
    return AR_E_FAIL;
}

/* ---- public API --------------------------------------------------------------------------- */

void policy_set_log(policy_log_fn fn)
{
    atomic_store(&log_sink, fn);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_policy_file(int dirfd, policy_file *f, ar_error *err)
{
    int fd = openat(dirfd, f->name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ar_error_set(err, AR_E_IO, "policy_io", "policy %s: cannot open: %s", f->name,
                            strerror(errno));
    int rc = AR_OK;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = ar_error_set(err, AR_E_IO, "policy_io", "policy %s: cannot stat: %s", f->name,
                          strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ar_error_set(err, AR_E_INVALID, "policy_invalid", "policy %s is not a regular file",
                          f->name);
        goto fail;
    }
    if ((size_t)st.st_size > MAX_POLICY_FILE_BYTES) {
        rc = ar_error_set(err, AR_E_INVALID, "policy_invalid",
                          "policy %s is larger than %zu bytes", f->name, MAX_POLICY_FILE_BYTES);
        goto fail;
    }
    f->source = malloc((size_t)st.st_size + 1);
    if (!f->source) {
        rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
        goto fail;
    }
    size_t got = 0;
    while (got <= MAX_POLICY_FILE_BYTES) { /* read to EOF: the file may have changed size */
        char *grown = f->source;
        if (got == (size_t)st.st_size) {
            grown = realloc(f->source, got + 4096 + 1);
            if (!grown) {
                rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
                goto fail;
            }
            f->source = grown;
            st.st_size = (off_t)(got + 4096);
        }
        ssize_t n = read(fd, f->source + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = ar_error_set(err, AR_E_IO, "policy_io", "policy %s: cannot read: %s", f->name,
                              strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got > MAX_POLICY_FILE_BYTES) {
        rc = ar_error_set(err, AR_E_INVALID, "policy_invalid",
                          "policy %s is larger than %zu bytes", f->name, MAX_POLICY_FILE_BYTES);
        goto fail;
    }
    f->source[got] = '\0';
    f->len = got;
fail:
    close(fd);
    return rc;
}

#define TEST_SUFFIX "_test.lua"

static int has_suffix(const char *name, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && strcmp(name + len - n, suffix) == 0;
}

/* The sorted names of the policies (tests == 0: *.lua but not *_test.lua) or of the policy
 * tests (tests == 1: *_test.lua) in d. */
static int list_policy_names(DIR *d, const char *dir, int tests, char ***names, size_t *count,
                             ar_error *err)
{
    size_t cap = 0;
    for (;;) {
        errno = 0; /* readdir reports errors only through errno */
        struct dirent *de = readdir(d);
        if (!de)
            break;
        size_t len = strlen(de->d_name);
        /* hidden files (editor locks, ".#x.lua") are not policies */
        if (de->d_name[0] == '.' || len <= 4 || !has_suffix(de->d_name, len, ".lua"))
            continue;
        if (has_suffix(de->d_name, len, TEST_SUFFIX) != tests)
            continue;
        if (len >= sizeof(((policy_file *)0)->name))
            return ar_error_set(err, AR_E_INVALID, "policy_invalid",
                                "policy file name too long in %s", dir);
        if (*count == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **grown = realloc(*names, ncap * sizeof *grown);
            if (!grown)
                return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
            *names = grown;
            cap = ncap;
        }
        if (!((*names)[*count] = strdup(de->d_name)))
            return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
        (*count)++;
    }
    if (errno)
        return ar_error_set(err, AR_E_IO, "policy_io", "policy: cannot list %s: %s", dir,
                            strerror(errno));
    if (*count > 1)
        qsort(*names, *count, sizeof **names, cmp_names);
    return AR_OK;
}

static void compute_version(policy_set *set)
{
    crypto_generichash_state st;
    unsigned char hash[crypto_generichash_BYTES_MIN];
    crypto_generichash_init(&st, NULL, 0, sizeof hash);
    for (size_t i = 0; i < set->count; i++) {
        const policy_file *f = &set->files[i];
        unsigned char len[8];
        for (int b = 0; b < 8; b++)
            len[b] = (unsigned char)((uint64_t)f->len >> (8 * b));
        crypto_generichash_update(&st, (const unsigned char *)f->name, strlen(f->name) + 1);
        crypto_generichash_update(&st, len, sizeof len);
        crypto_generichash_update(&st, (const unsigned char *)f->source, f->len);
    }
    crypto_generichash_final(&st, hash, sizeof hash);
    sodium_bin2hex(set->version, sizeof set->version, hash, 8);
}

static int cmp_key_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_counter_names(const void *a, const void *b)
{
    return strcmp(((const counter_def *)a)->name, ((const counter_def *)b)->name);
}

/* Add file's counter declarations (a JSON object name -> declaration) to set->counters;
 * declared_by[k] is the file index that declared set->counters[k] first. A malformed
 * declaration, or a name another file declared differently, is policy_invalid. */
static int add_counters(policy_set *set, size_t **declared_by, size_t file, const json_t *decls,
                        ar_error *err)
{
    const char *fname = set->files[file].name;
    size_t n = json_object_size(decls);
    if (n == 0)
        return AR_OK;
    const char **keys = malloc(n * sizeof *keys);
    counter_def *grown = realloc(set->counters, (set->n_counters + n) * sizeof *grown);
    if (grown)
        set->counters = grown;
    size_t *by = realloc(*declared_by, (set->n_counters + n) * sizeof *by);
    if (by)
        *declared_by = by;
    if (!keys || !grown || !by) {
        free(keys);
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
    }
    size_t k = 0;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)decls, key, v)
        keys[k++] = key;
    qsort(keys, n, sizeof *keys, cmp_key_names); /* the same message whatever the table order */

    int rc = AR_OK;
    for (k = 0; k < n && rc == AR_OK; k++) {
        counter_def def;
        ar_error perr;
        ar_error_clear(&perr);
        if (counters_def_parse(keys[k], json_object_get(decls, keys[k]), &def, &perr) != AR_OK) {
            rc = ar_error_set(err, AR_E_INVALID, "policy_invalid", "policy %s is invalid: %s",
                              fname, perr.message);
            break;
        }
        size_t have = 0;
        while (have < set->n_counters && strcmp(set->counters[have].name, def.name) != 0)
            have++;
        if (have == set->n_counters) {
            set->counters[set->n_counters] = def;
            (*declared_by)[set->n_counters++] = file;
        } else if (strcmp(set->counters[have].id, def.id) != 0) {
            rc = ar_error_set(err, AR_E_INVALID, "policy_invalid",
                              "policy %s is invalid: counter \"%s\" is declared differently by "
                              "%s (one name must mean the same connector, action, sum and "
                              "window in every file)", fname, def.name,
                              set->files[(*declared_by)[have]].name);
        }
    }
    free(keys);
    return rc;
}

/* Run every chunk once in a scratch worker: it must run cleanly and define decide (and
 * validate, if anything, as a function); collect the counters the files declare. */
static int validate_set(policy_set *set, ar_error *err)
{
    policy_worker *w;
    int rc = worker_create(set, &w, err);
    if (rc != AR_OK)
        return rc;
    size_t *declared_by = NULL;
    for (size_t i = 0; i < set->count && rc == AR_OK; i++) {
        run_ctx c = { .w = w, .index = i, .mode = RUN_LOAD };
        char message[400];
        begin_call(w);
        if (run_protected(w, &c, message, sizeof message) != AR_OK)
            rc = ar_error_set(err, AR_E_INVALID, "policy_invalid", "policy %s is invalid: %s",
                              set->files[i].name, message);
        end_call(w);
        if (rc == AR_OK && c.counters)
            rc = add_counters(set, &declared_by, i, c.counters, err);
        json_decref(c.counters);
        set->files[i].has_validate = c.has_validate;
        set->has_validate |= c.has_validate;
    }
    free(declared_by);
    policy_worker_free(w);
    if (rc == AR_OK && set->n_counters > 1)
        qsort(set->counters, set->n_counters, sizeof *set->counters, cmp_counter_names);
    return rc;
}

int policy_set_load(const char *dir, const policy_limits *limits, policy_set **out,
                    ar_error *err)
{
    if (out)
        *out = NULL;
    if (!dir || !out)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument", "policy: no directory");
    if (sodium_init() < 0)
        return ar_error_set(err, AR_E_FAIL, "crypto_init", "policy: libsodium failed to start");

    int rc = AR_OK;
    char **names = NULL;
    size_t n_names = 0;
    DIR *d = NULL;
    policy_set *set = calloc(1, sizeof *set);
    if (!set)
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
    if (limits)
        set->limits = *limits;
    if (!set->limits.memory_bytes)
        set->limits.memory_bytes = DEFAULT_MEMORY_BYTES;
    if (!set->limits.instructions)
        set->limits.instructions = DEFAULT_INSTRUCTIONS;
    if (set->limits.timeout_ms <= 0)
        set->limits.timeout_ms = DEFAULT_TIMEOUT_MS;
    const int defaults[] = { set->limits.default_read, set->limits.default_write,
                             set->limits.default_irreversible };
    for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++)
        if (defaults[i] < 0 || defaults[i] > POLICY_DENY + 1) {
            rc = ar_error_set(err, AR_E_INVALID, "invalid_argument",
                              "policy: a default verdict must be 0 (built in) or a verdict + 1, "
                              "got %d", defaults[i]);
            goto fail;
        }

    d = opendir(dir);
    if (!d) {
        rc = ar_error_set(err, errno == ENOENT ? AR_E_NOTFOUND : AR_E_IO, "policy_io",
                          "policy: cannot open directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    rc = list_policy_names(d, dir, 0, &names, &n_names, err);
    if (rc != AR_OK)
        goto fail;
    set->files = calloc(n_names ? n_names : 1, sizeof *set->files);
    if (!set->files) {
        rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n_names; i++) {
        snprintf(set->files[i].name, sizeof set->files[i].name, "%s", names[i]);
        set->count = i + 1;
        rc = read_policy_file(dirfd(d), &set->files[i], err);
        if (rc != AR_OK)
            goto fail;
    }
    compute_version(set);
    rc = validate_set(set, err);
    if (rc != AR_OK)
        goto fail;
    *out = set;
    set = NULL;
fail:
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (d)
        closedir(d);
    policy_set_free(set);
    return rc;
}

void policy_set_free(policy_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->count; i++)
        free(set->files[i].source);
    free(set->files);
    free(set->counters);
    free(set);
}

size_t policy_set_count(const policy_set *set)
{
    return set ? set->count : 0;
}

const char *policy_set_version(const policy_set *set)
{
    return set ? set->version : "";
}

const counter_def *policy_set_counters(const policy_set *set, size_t *n)
{
    if (n)
        *n = set ? set->n_counters : 0;
    return set && set->n_counters ? set->counters : NULL;
}

const counter_def *policy_set_find_counter(const policy_set *set, const char *name)
{
    if (!set || !name || !set->n_counters)
        return NULL;
    counter_def key;
    if (strlen(name) >= sizeof key.name)
        return NULL;
    snprintf(key.name, sizeof key.name, "%s", name);
    return bsearch(&key, set->counters, set->n_counters, sizeof *set->counters,
                   cmp_counter_names);
}

int policy_set_has_validate(const policy_set *set)
{
    return set ? set->has_validate : 0;
}

void policy_worker_set_counters(policy_worker *w, policy_counter_fn fn, void *arg)
{
    if (!w)
        return;
    w->counter_fn = fn;
    w->counter_arg = fn ? arg : NULL;
}

int policy_worker_new(const policy_set *set, policy_worker **out, ar_error *err)
{
    if (out)
        *out = NULL;
    if (!set || !out)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument", "policy: no policy set");
    return worker_create(set, out, err);
}

void policy_worker_free(policy_worker *w)
{
    if (!w)
        return;
    if (w->L) {
        w->in_call = 0;
        lua_close(w->L);
    }
    free(w->chunk_refs);
    free(w);
}

int policy_verdict_from_name(const char *name)
{
    for (int v = POLICY_ALLOW; name && v <= POLICY_DENY; v++)
        if (strcmp(name, verdict_names[v]) == 0)
            return v;
    return -1;
}

const char *policy_verdict_name(policy_verdict v)
{
    return v >= POLICY_ALLOW && v <= POLICY_DENY ? verdict_names[v] : NULL;
}

static void set_decision(policy_decision *out, policy_verdict verdict, const char *rule,
                         const char *file, int policy_error, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Rule, file and reason of a decision or a rejection, as valid UTF-8. */
static void set_outcome_texts(char rule_out[128], char file_out[256], char reason_out[512],
                              const char *rule, const char *file, const char *fmt, va_list ap)
{
    snprintf(rule_out, 128, "%s", rule);
    snprintf(file_out, 256, "%s", file);
    vsnprintf(reason_out, 512, fmt, ap);
    utf8_clean(rule_out);
    utf8_clean(file_out);
    utf8_clean(reason_out);
}

static void set_decision(policy_decision *out, policy_verdict verdict, const char *rule,
                         const char *file, int policy_error, const char *fmt, ...)
{
    out->verdict = verdict;
    out->policy_error = policy_error;
    va_list ap;
    va_start(ap, fmt);
    set_outcome_texts(out->rule, out->file, out->reason, rule, file, fmt, ap);
    va_end(ap);
}

/* A policy that names no rule gets its file name without ".lua". */
static void rule_or_stem(char *rule, size_t size, const char *file)
{
    if (rule[0])
        return;
    size_t len = strlen(file);
    if (len > 4 && strcmp(file + len - 4, ".lua") == 0)
        len -= 4;
    if (len >= size)
        len = size - 1;
    memcpy(rule, file, len);
    rule[len] = '\0';
}

/* A JSON string of s, or null when s is NULL; invalid UTF-8 is cleaned first. NULL: no
 * memory. */
static json_t *json_text(const char *s)
{
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return NULL;
    utf8_clean(copy);
    j = json_string(copy);
    free(copy);
    return j;
}

/* Append {"file", "verdict", "rule", "reason"} to votes (NULL strings become null). On
 * failure the votes are dropped (*votes = NULL): the header promises all or nothing. */
static void add_vote(json_t **votes, const char *file, const char *verdict, const char *rule,
                     const char *reason)
{
    if (!*votes)
        return;
    json_t *vote = json_object();
    if (!vote || json_object_set_new(vote, "file", json_text(file)) ||
        json_object_set_new(vote, "verdict", json_text(verdict)) ||
        json_object_set_new(vote, "rule", json_text(rule)) ||
        json_object_set_new(vote, "reason", json_text(reason)) ||
        json_array_append_new(*votes, vote)) {
        json_decref(vote);
        json_decref(*votes);
        *votes = NULL;
    }
}

/* The approve votes, merged: the union of the roles named, the shortest expiry, four-eyes if
 * any asks, the first summary. */
typedef struct approve_merge {
    char roles[POLICY_MAX_ROLES][sizeof(((policy_decision *)0)->roles[0])];
    int n_roles;
    int64_t expires_in_s;
    int four_eyes;
    int have_summary;
    char summary[sizeof(((policy_decision *)0)->summary)];
} approve_merge;

static void merge_approve(approve_merge *m, const run_ctx *c)
{
    /* past POLICY_MAX_ROLES roles are dropped in file order: fewer approvers, never more */
    for (int i = 0; i < c->n_roles && m->n_roles < POLICY_MAX_ROLES; i++) {
        int dup = 0;
        for (int k = 0; k < m->n_roles; k++)
            dup |= strcmp(m->roles[k], c->roles[i]) == 0;
        if (!dup)
            memcpy(m->roles[m->n_roles++], c->roles[i], sizeof m->roles[0]);
    }
    if (c->expires_in_s && (!m->expires_in_s || c->expires_in_s < m->expires_in_s))
        m->expires_in_s = c->expires_in_s;
    m->four_eyes |= c->four_eyes;
    if (c->has_summary && !m->have_summary) {
        m->have_summary = 1;
        memcpy(m->summary, c->summary, sizeof m->summary);
    }
}

static const char *default_phrase(policy_verdict v)
{
    switch (v) {
    case POLICY_ALLOW: return "are allowed";
    case POLICY_APPROVE: return "need approval";
    case POLICY_SUGGEST: return "are only recorded as suggestions";
    default: return "are denied";
    }
}

/* Every policy abstained: the configured (or built-in) default for the action's effect. */
static void apply_default(const policy_set *set, const json_t *action, policy_decision *out)
{
    const char *effect = json_string_value(json_object_get(action, "effect"));
    int known = 1;
    int configured;
    policy_verdict builtin;
    if (effect && strcmp(effect, "read") == 0) {
        configured = set->limits.default_read;
        builtin = POLICY_ALLOW;
    } else if (effect && strcmp(effect, "irreversible") == 0) {
        configured = set->limits.default_irreversible;
        builtin = POLICY_APPROVE;
    } else {
        known = effect && strcmp(effect, "write") == 0;
        effect = "write";
        configured = set->limits.default_write;
        builtin = POLICY_APPROVE;
    }
    policy_verdict v = configured ? (policy_verdict)(configured - 1) : builtin;
    set_decision(out, v, "default", "", 0, "no policy had an opinion%s; %s actions %s by %s",
                 known ? "" : " and the action's effect is missing or unknown", effect,
                 default_phrase(v), configured ? "the configured default" : "default");
}

/* snprintf for text that may be cut to fit (reasons quote policy output of any length). */
static void cut_printf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cut_printf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

static const char *const decided_by[] = { "allowed", "approval required", "suggested only",
                                          "denied" };

/* policy_decide with ctx.now() returning now_s (the policy tests pin the time). */
static int decide_at(policy_worker *w, const json_t *action, int64_t now_s,
                     policy_decision *out)
{
    int64_t started = mono_ns();
    memset(out, 0, sizeof *out);
    out->votes = json_array();
    if (!w || !json_is_object(action)) {
        set_decision(out, POLICY_DENY, "action_invalid", "", 0, "the action is not a JSON object");
        goto out;
    }
    if (json_too_deep(action, 1)) {
        set_decision(out, POLICY_DENY, "action_invalid", "", 0,
                     "the action is nested deeper than %d levels", MAX_ACTION_DEPTH);
        goto out;
    }

    const policy_set *set = w->set;
    int have_vote = 0;
    approve_merge approve = { .n_roles = 0 };
    const char *stopped = NULL; /* the limit a file ran over, when it ends the decision */
    const char *stopped_by = NULL;
    w->decision_time_s = now_s;
    begin_call(w);
    for (size_t i = 0; i < set->count; i++) {
        const char *file = set->files[i].name;
        run_ctx c = { .w = w, .index = i, .action = action };
        char message[400];
        char why[sizeof out->reason];
        policy_verdict verdict;
        int policy_error = 0;
        if (stopped) {
            /* one budget and one deadline for the whole decision: nothing left to run it */
            cut_printf(why, sizeof why, "policy %s not run: %s by %s", file, stopped, stopped_by);
            verdict = POLICY_DENY;
            policy_error = 1;
        } else if (run_protected(w, &c, message, sizeof message) != AR_OK) {
            cut_printf(why, sizeof why, "policy %s failed: %s", file, message);
            verdict = POLICY_DENY;
            policy_error = 1;
            if (w->fail == FAIL_BUDGET || w->fail == FAIL_DEADLINE) {
                stopped = fail_text(w->fail);
                stopped_by = file;
            }
            w->fail = FAIL_NONE; /* a memory overrun was collected: the next file may run */
        } else if (c.outcome == OUT_INVALID) {
            cut_printf(why, sizeof why, "policy %s returned an invalid decision: %s", file,
                       c.reason);
            verdict = POLICY_DENY;
            policy_error = 1;
        } else if (c.outcome == OUT_ABSTAIN) {
            add_vote(&out->votes, file, NULL, NULL, NULL);
            continue;
        } else {
            verdict = c.verdict;
        }

        if (policy_error) {
            utf8_clean(why);
            add_vote(&out->votes, file, "deny", "policy_error", why);
        } else {
            add_vote(&out->votes, file, policy_verdict_name(verdict), c.has_rule ? c.rule : NULL,
                     c.has_reason ? c.reason : NULL);
            if (verdict == POLICY_APPROVE)
                merge_approve(&approve, &c);
        }
        /* the most restrictive verdict wins; the first vote for it (in file order) speaks */
        if (have_vote && verdict <= out->verdict)
            continue;
        have_vote = 1;
        if (policy_error) {
            set_decision(out, POLICY_DENY, "policy_error", file, 1, "%s", why);
        } else {
            rule_or_stem(c.rule, sizeof c.rule, file);
            if (c.reason[0])
                set_decision(out, verdict, c.rule, file, 0, "%s", c.reason);
            else
                set_decision(out, verdict, c.rule, file, 0, "%s by policy %s",
                             decided_by[verdict], file);
        }
    }
    end_call(w);
    if (!have_vote) {
        apply_default(set, action, out);
    } else if (out->verdict == POLICY_APPROVE) {
        memcpy(out->roles, approve.roles, sizeof out->roles);
        out->n_roles = approve.n_roles;
        out->expires_in_s = approve.expires_in_s;
        out->four_eyes = approve.four_eyes;
        memcpy(out->summary, approve.summary, sizeof out->summary);
    }
out:
    out->duration_ns = (uint64_t)(mono_ns() - started);
    return AR_OK;
}

int policy_decide(policy_worker *w, const json_t *action, policy_decision *out)
{
    return decide_at(w, action, (int64_t)time(NULL), out);
}

/* ---- validate: checking a connector's result ------------------------------------------------ */

static void set_rejection(policy_validation *out, const char *rule, const char *file,
                          int policy_error, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void set_rejection(policy_validation *out, const char *rule, const char *file,
                          int policy_error, const char *fmt, ...)
{
    out->ok = 0;
    out->policy_error = policy_error;
    va_list ap;
    va_start(ap, fmt);
    set_outcome_texts(out->rule, out->file, out->reason, rule, file, fmt, ap);
    va_end(ap);
}

/* policy_validate with ctx.now() returning now_s (the policy tests pin the time). Each file
 * that defines validate runs in file order, under one budget and one deadline, until one
 * rejects. */
static int validate_at(policy_worker *w, const json_t *action, const json_t *result,
                       int64_t now_s, policy_validation *out)
{
    int64_t started = mono_ns();
    memset(out, 0, sizeof *out);
    out->ok = 1;
    if (!w) {
        set_rejection(out, "policy_error", "", 1, "no policy worker to validate the result");
        goto out;
    }
    if (!w->set->has_validate)
        goto out; /* nothing to check: accepted */
    if (!json_is_object(action)) {
        set_rejection(out, "action_invalid", "", 1, "the action is not a JSON object");
        goto out;
    }
    if (json_too_deep(action, 1)) {
        set_rejection(out, "action_invalid", "", 1, "the action is nested deeper than %d levels",
                      MAX_ACTION_DEPTH);
        goto out;
    }
    if (result && json_too_deep(result, 1)) {
        set_rejection(out, "result_invalid", "", 1, "the result is nested deeper than %d levels",
                      MAX_ACTION_DEPTH);
        goto out;
    }
    const policy_set *set = w->set;
    w->decision_time_s = now_s;
    begin_call(w);
    for (size_t i = 0; i < set->count; i++) {
        if (!set->files[i].has_validate)
            continue;
        const char *file = set->files[i].name;
        run_ctx c = { .w = w, .index = i, .action = action, .mode = RUN_VALIDATE,
                      .result = result };
        char message[400];
        if (run_protected(w, &c, message, sizeof message) != AR_OK) {
            set_rejection(out, "policy_error", file, 1, "policy %s validate failed: %s", file,
                          message);
            break;
        }
        if (c.outcome == OUT_INVALID) {
            set_rejection(out, "policy_error", file, 1,
                          "policy %s validate returned an invalid result: %s", file, c.reason);
            break;
        }
        if (c.outcome == OUT_VOTE) {
            rule_or_stem(c.rule, sizeof c.rule, file);
            set_rejection(out, c.rule, file, 0, "%s",
                          c.has_reason ? c.reason : "rejected by validate");
            break;
        }
    }
    end_call(w);
out:
    out->duration_ns = (uint64_t)(mono_ns() - started);
    return AR_OK;
}

int policy_validate(policy_worker *w, const json_t *action, const json_t *result,
                    policy_validation *out)
{
    return validate_at(w, action, result, (int64_t)time(NULL), out);
}

/* ---- eval: one decision, as JSON ------------------------------------------------------------ */

/* The decision as policy_eval describes it (without the votes). NULL: no memory. */
static json_t *decision_json(const policy_decision *d)
{
    json_t *j = json_object();
    json_t *roles = json_array();
    int bad = !j || !roles;
    for (int i = 0; !bad && i < d->n_roles; i++)
        bad = json_array_append_new(roles, json_text(d->roles[i])) != 0;
    if (bad) {
        json_decref(j);
        json_decref(roles);
        return NULL;
    }
    bad = json_object_set_new(j, "verdict", json_text(policy_verdict_name(d->verdict))) ||
          json_object_set_new(j, "rule", json_text(d->rule)) ||
          json_object_set_new(j, "reason", json_text(d->reason)) ||
          json_object_set_new(j, "policy", json_text(d->file));
    bad |= json_object_set_new(j, "roles", roles) != 0; /* always takes roles */
    bad = bad ||
          json_object_set_new(j, "expires_in",
                              d->expires_in_s ? json_integer(d->expires_in_s) : json_null()) ||
          json_object_set_new(j, "summary", d->summary[0] ? json_text(d->summary) : json_null()) ||
          json_object_set_new(j, "four_eyes", json_boolean(d->four_eyes));
    if (bad) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* A counter source reading an object of name -> number (arg, may be NULL); a declared counter
 * it does not name reads 0. For policy_eval and the policy tests. */
static int json_counter_source(void *arg, const counter_def *def, double *value, ar_error *err)
{
    (void)err;
    const json_t *v = arg ? json_object_get((const json_t *)arg, def->name) : NULL;
    *value = json_is_number(v) ? json_number_value(v) : 0;
    return AR_OK;
}

/* Check given counter values (an object name -> number): every name declared by set, every
 * value a finite number. 0 ok, -1 (why set, naming the counter) otherwise. */
static int check_counter_values(const policy_set *set, const json_t *values, const char *where,
                                char *why, size_t size)
{
    if (!json_is_object(values)) {
        cut_printf(why, size, "%s must be a table of counter name = number", where);
        return -1;
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)values, key, v) {
        if (!policy_set_find_counter(set, key)) {
            cut_printf(why, size, "%s: counter \"%s\" is not declared by any policy file "
                       "(declare it in counters = {...} of a policy file)", where, key);
            return -1;
        }
        if (!json_is_number(v) || !isfinite(json_number_value(v))) {
            cut_printf(why, size, "%s: counter \"%s\" must be a number", where, key);
            return -1;
        }
    }
    return 0;
}

int policy_eval(const policy_set *set, const json_t *action, const json_t *counters,
                json_t **out, ar_error *err)
{
    if (out)
        *out = NULL;
    if (!set || !out)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument", "policy: no policy set");
    if (!json_is_object(action))
        return ar_error_set(err, AR_E_INVALID, "policy_action_invalid",
                            "policy: the action must be a JSON object");
    char why[400];
    if (counters && check_counter_values(set, counters, "counters", why, sizeof why) != 0)
        return ar_error_set(err, AR_E_INVALID, "policy_counter_invalid", "policy: %s", why);
    policy_worker *w;
    int rc = worker_create(set, &w, err);
    if (rc != AR_OK)
        return rc;
    policy_worker_set_counters(w, json_counter_source, (void *)counters);
    policy_decision d;
    decide_at(w, action, (int64_t)time(NULL), &d);
    policy_worker_free(w);
    json_t *j = decision_json(&d);
    if (!j || !d.votes || json_object_set_new(j, "votes", json_incref(d.votes))) {
        json_decref(j);
        json_decref(d.votes);
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
    }
    json_decref(d.votes);
    *out = j;
    return AR_OK;
}

/* ---- policy tests ----------------------------------------------------------------------------- */

/* A test case without "now" is decided at this time (a Wednesday at noon, UTC), so that a test
 * gives the same answer whenever it runs. */
#define TEST_DEFAULT_NOW "2026-01-07T12:00:00Z"
/* Tables in a test file nest at most this deep: a case, its action and the action's fields
 * (policy_decide refuses actions deeper than MAX_ACTION_DEPTH itself). */
#define TEST_MAX_DEPTH (MAX_ACTION_DEPTH + 4)

/* n decimal digits at s; -1 if any is not a digit. */
static int fixed_digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* "YYYY-MM-DDTHH:MM[:SS]Z" (UTC; a space may stand for the T) -> seconds since the epoch.
 * -1 if it is not such a time, or not a real one (2026-02-30). */
static int parse_utc(const char *s, int64_t *out)
{
    if (strlen(s) < 17 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') ||
        s[13] != ':')
        return -1;
    int year = fixed_digits(s, 4), mon = fixed_digits(s + 5, 2), day = fixed_digits(s + 8, 2);
    int hour = fixed_digits(s + 11, 2), min = fixed_digits(s + 14, 2), sec = 0;
    const char *rest = s + 16;
    if (rest[0] == ':') {
        sec = fixed_digits(rest + 1, 2);
        rest += 3;
    }
    if (year < 1970 || mon < 0 || day < 0 || hour < 0 || min < 0 || sec < 0 ||
        strcmp(rest, "Z") != 0)
        return -1;
    struct tm tm = { .tm_year = year - 1900, .tm_mon = mon - 1, .tm_mday = day,
                     .tm_hour = hour, .tm_min = min, .tm_sec = sec };
    time_t t = timegm(&tm);
    struct tm back;
    if (t == (time_t)-1 || !gmtime_r(&t, &back) || back.tm_year != year - 1900 ||
        back.tm_mon != mon - 1 || back.tm_mday != day || back.tm_hour != hour ||
        back.tm_min != min || back.tm_sec != sec)
        return -1;
    *out = (int64_t)t;
    return 0;
}


static size_t path_push(tconv *tc, const char *key, lua_Integer index)
{
    size_t len = strlen(tc->path);
    size_t room = sizeof tc->path - len;
    if (key)
        snprintf(tc->path + len, room, "%s%s", len ? "." : "", key);
    else
        snprintf(tc->path + len, room, "[%lld]", (long long)index);
    return len;
}

static json_t *conv_fail(tconv *tc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static json_t *conv_fail(tconv *tc, const char *fmt, ...)
{
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    cut_printf(tc->why, sizeof tc->why, "%s%s%s", tc->path, tc->path[0] ? ": " : "", what);
    utf8_clean(tc->why);
    return NULL;
}

/* A table is a list (keys 1..n) or a record (string keys); an empty one is a record. */
static json_t *table_to_json(tconv *tc, int idx, int depth)
{
    lua_State *L = tc->L;
    if (depth > TEST_MAX_DEPTH)
        return conv_fail(tc, "nested deeper than %d levels (does a table contain itself?)",
                         TEST_MAX_DEPTH);
    if (!lua_checkstack(L, 4))
        return conv_fail(tc, "nested too deep");
    size_t count = 0, names = 0, others = 0;
    lua_Integer max_index = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_type(L, -1) == LUA_TSTRING)
            names++;
        else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1)
            max_index = lua_tointeger(L, -1) > max_index ? lua_tointeger(L, -1) : max_index;
        else
            others++;
    }
    if (others || (names && names < count))
        return conv_fail(tc, "a table must be a list {a, b, ...} or have names as keys "
                             "{x = ..., y = ...}, not both");
    if (count && !names) {
        if ((size_t)max_index != count)
            return conv_fail(tc, "a list with a hole (a nil in the middle?)");
        json_t *list = json_array();
        if (!list)
            return conv_fail(tc, "out of memory");
        for (lua_Integer i = 1; i <= max_index; i++) {
            size_t mark = path_push(tc, NULL, i);
            lua_rawgeti(L, idx, i);
            json_t *v = lua_to_json(tc, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
            tc->path[mark] = '\0';
            if (!v || json_array_append_new(list, v)) {
                json_decref(list);
                return v ? conv_fail(tc, "out of memory") : NULL;
            }
        }
        return list;
    }
    json_t *record = json_object();
    if (!record)
        return conv_fail(tc, "out of memory");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t len;
        const char *key = lua_tolstring(L, -2, &len); /* a string key: not converted */
        if (strlen(key) != len) {
            json_decref(record);
            lua_pop(L, 2);
            return conv_fail(tc, "a name with a NUL byte");
        }
        size_t mark = path_push(tc, key, 0);
        json_t *v = lua_to_json(tc, lua_gettop(L), depth + 1);
        if (v && json_object_set_new(record, key, v)) {
            v = NULL;
            conv_fail(tc, "the name is not valid UTF-8");
        }
        tc->path[mark] = '\0';
        lua_pop(L, 1);
        if (!v) {
            json_decref(record);
            lua_pop(L, 1);
            return NULL;
        }
    }
    return record;
}

static json_t *lua_to_json(tconv *tc, int idx, int depth)
{
    lua_State *L = tc->L;
    json_t *j;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return json_integer((json_int_t)lua_tointeger(L, idx));
        if (!isfinite(lua_tonumber(L, idx)))
            return conv_fail(tc, "not a finite number");
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (!(j = json_stringn(s, len)))
            return conv_fail(tc, "the text is not valid UTF-8");
        return j;
    }
    case LUA_TTABLE:
        return table_to_json(tc, idx, depth);
    default:
        return conv_fail(tc, "a %s cannot be part of %s (only tables, text, numbers and "
                             "booleans)", lua_typename(L, lua_type(L, idx)),
                         tc->part ? tc->part : "a test");
    }
}

/* The case's name (a string field "name"), found without allocating; "" when it has none. */
static void raw_case_name(lua_State *L, int idx, char *buf, size_t size)
{
    buf[0] = '\0';
    if (!lua_checkstack(L, 3))
        return;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING &&
            strcmp(lua_tostring(L, -2), "name") == 0) {
            snprintf(buf, size, "%s", lua_tostring(L, -1));
            utf8_clean(buf);
            lua_pop(L, 2);
            return;
        }
        lua_pop(L, 1);
    }
}

/* Protected: run the test file's chunk (file 0 of the worker's set) in a fresh _ENV and
 * return its tests table: the chunk's return value, or else its global tests. */
static int run_test_chunk(lua_State *L)
{
    policy_worker *w = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->chunk_refs[0]); /* 2: chunk */
    lua_createtable(L, 0, 4);                            /* 3: env */
    lua_pushvalue(L, 3);
    lua_setfield(L, 3, LUA_GNAME);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->env_mt_ref);
    lua_setmetatable(L, 3);
    lua_pushvalue(L, 3);
    lua_setupvalue(L, 2, 1);
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);                                   /* 4: what the chunk returned */
    if (lua_type(L, 4) == LUA_TTABLE)
        return 1;
    if (!lua_isnil(L, 4))
        return luaL_error(L, "the file returned a %s; return the list of tests, or define "
                             "tests = { ... }", luaL_typename(L, 4));
    lua_pushliteral(L, "tests");
    int t = lua_rawget(L, 3);
    if (t == LUA_TNIL)
        return luaL_error(L, "the file defines no tests: write tests = { {name = \"...\", "
                             "action = {...}, expect = {verdict = \"...\"}}, ... }");
    if (t != LUA_TTABLE)
        return luaL_error(L, "tests must be a table (a list of tests), got a %s",
                          lua_typename(L, t));
    return 1;
}

/* What a case expects; NULL / -1: not checked. */
typedef struct test_expect {
    int is_result;          /* the case has a result: it tests validate (valid, rule, reason,
                             * policy); otherwise decide (the rest) */
    int valid;
    const char *reason;     /* a part of the rejection's reason */
    policy_verdict verdict;
    const char *rule;
    const char *policy;
    const char *summary;
    const json_t *roles;    /* an array of strings, or {} (from a Lua {}): none */
    int four_eyes;
} test_expect;

/* Is key one of names (NULL-terminated)? */
static int known_key(const char *key, const char *const *names)
{
    for (; *names; names++)
        if (strcmp(key, *names) == 0)
            return 1;
    return 0;
}

/* An optional string field; -1 (why set) if it is there but not a string. */
static int opt_string(const json_t *obj, const char *key, const char *where, const char **out,
                      char *why, size_t size)
{
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_string(v)) {
        snprintf(why, size, "%s%s must be text (in quotes)", where, key);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

/* The expect of a case with a result (validate): valid, and rule, reason, policy. */
static int read_result_expect(const json_t *x, test_expect *e, char *why, size_t size)
{
    static const char *const keys[] = { "valid", "rule", "reason", "policy", NULL };
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)x, key, v) {
        if (!known_key(key, keys)) {
            cut_printf(why, size, "unknown field \"expect.%s\" (a test with a result expects "
                                  "valid, rule, reason and policy)", key);
            return -1;
        }
    }
    v = json_object_get(x, "valid");
    if (!json_is_boolean(v)) {
        snprintf(why, size, "expect.valid %s: a test with a result expects valid = true or false",
                 v ? "must be true or false" : "is missing");
        return -1;
    }
    e->is_result = 1;
    e->valid = json_is_true(v);
    e->four_eyes = -1;
    if (opt_string(x, "rule", "expect.", &e->rule, why, size) ||
        opt_string(x, "reason", "expect.", &e->reason, why, size) ||
        opt_string(x, "policy", "expect.", &e->policy, why, size))
        return -1;
    return 0;
}

/* Check a case (as JSON) and read it: its action, time, counter values (*counters: an object
 * or NULL), result (*result: NULL for a decide case) and expectation. 0 ok, -1 malformed (why
 * says what to fix). */
static int read_case(const policy_set *set, const json_t *c, const json_t **action,
                     int64_t *now_s, const json_t **counters, const json_t **result,
                     test_expect *e, char *why, size_t size)
{
    static const char *const case_keys[] = { "name", "action", "expect", "now", "counters",
                                             "result", NULL };
    static const char *const expect_keys[] = { "verdict", "rule", "policy", "roles",
                                               "four_eyes", "summary", NULL };
    const char *key;
    const json_t *v;
    if (!json_is_object(c)) {
        snprintf(why, size, "a test must be a table {name = ..., action = {...}, expect = {...}}");
        return -1;
    }
    json_object_foreach((json_t *)c, key, v) {
        if (!known_key(key, case_keys)) {
            cut_printf(why, size, "unknown field \"%s\" (a test has name, action, expect, now, "
                                  "counters and result)", key);
            return -1;
        }
    }
    v = json_object_get(c, "name");
    if (!json_is_string(v) || !json_string_length(v)) {
        snprintf(why, size, "name is missing: every test needs a name = \"what it checks\"");
        return -1;
    }
    *action = json_object_get(c, "action");
    if (!json_is_object(*action)) {
        snprintf(why, size, "action must be a table {connector = ..., action = ..., "
                            "effect = ..., input = {...}}");
        return -1;
    }
    v = json_object_get(c, "now");
    if (!v) {
        parse_utc(TEST_DEFAULT_NOW, now_s);
    } else if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *now_s = (int64_t)json_integer_value(v);
    } else if (!json_is_string(v) || parse_utc(json_string_value(v), now_s) != 0) {
        snprintf(why, size, "now must be a UTC time like \"2026-03-07T22:30:00Z\" (or seconds "
                            "since the epoch)");
        return -1;
    }

    *counters = json_object_get(c, "counters");
    if (*counters && check_counter_values(set, *counters, "counters", why, size) != 0)
        return -1;
    *result = json_object_get(c, "result");

    const json_t *x = json_object_get(c, "expect");
    memset(e, 0, sizeof *e);
    if (!json_is_object(x)) {
        if (*result)
            snprintf(why, size, "expect must be a table {valid = true} (or valid = false, "
                                "rule = \"...\", reason = \"...\")");
        else
            snprintf(why, size, "expect must be a table {verdict = \"allow\", rule = \"...\"}");
        return -1;
    }
    if (*result)
        return read_result_expect(x, e, why, size);
    json_object_foreach((json_t *)x, key, v) {
        if (!known_key(key, expect_keys)) {
            cut_printf(why, size, "unknown field \"expect.%s\" (expect has verdict, rule, policy, "
                                  "roles, four_eyes and summary)", key);
            return -1;
        }
    }
    e->four_eyes = -1;
    v = json_object_get(x, "verdict");
    int verdict = policy_verdict_from_name(json_string_value(v));
    if (verdict < 0) {
        if (json_is_string(v))
            cut_printf(why, size, "expect.verdict must be " VERDICT_CHOICES ", got \"%s\"",
                       json_string_value(v));
        else
            snprintf(why, size, "expect.verdict is missing: " VERDICT_CHOICES);
        return -1;
    }
    e->verdict = (policy_verdict)verdict;
    if (opt_string(x, "rule", "expect.", &e->rule, why, size) ||
        opt_string(x, "policy", "expect.", &e->policy, why, size) ||
        opt_string(x, "summary", "expect.", &e->summary, why, size))
        return -1;
    v = json_object_get(x, "four_eyes");
    if (v && !json_is_boolean(v)) {
        snprintf(why, size, "expect.four_eyes must be true or false");
        return -1;
    }
    e->four_eyes = v ? json_is_true(v) : -1;
    v = json_object_get(x, "roles");
    if (v && !(json_is_object(v) && json_object_size(v) == 0)) {
        int ok = json_is_array(v);
        for (size_t i = 0; ok && i < json_array_size(v); i++)
            ok = json_is_string(json_array_get(v, i));
        if (!ok) {
            snprintf(why, size, "expect.roles must be a list of role names, like "
                                "{\"finance\"} ({} for none)");
            return -1;
        }
    }
    e->roles = v;
    return 0;
}

static int role_listed(const json_t *roles, const char *role)
{
    for (size_t i = 0; i < json_array_size(roles); i++)
        if (strcmp(json_string_value(json_array_get(roles, i)), role) == 0)
            return 1;
    return 0;
}

static int decision_has_role(const policy_decision *d, const char *role)
{
    for (int i = 0; i < d->n_roles; i++)
        if (strcmp(d->roles[i], role) == 0)
            return 1;
    return 0;
}

/* Append s to buf (cut to fit). */
static void append(char *buf, size_t size, const char *s)
{
    size_t len = strlen(buf);
    if (len + 1 < size)
        snprintf(buf + len, size - len, "%s", s);
}

/* Add one difference to the list (a JSON string); -1: no memory. */
static int add_difference(json_t *list, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int add_difference(json_t *list, const char *fmt, ...)
{
    char text[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    utf8_clean(text);
    return json_array_append_new(list, json_text(text));
}

/* Compare decision and expectation; the differences go to list (strings). -1: no memory. */
static int compare(const test_expect *e, const policy_decision *d, json_t *list)
{
    int rc = 0;
    if (d->verdict != e->verdict)
        rc |= add_difference(list, "verdict: expected %s, got %s", verdict_names[e->verdict],
                             verdict_names[d->verdict]);
    if (e->rule && strcmp(e->rule, d->rule) != 0)
        rc |= add_difference(list, "rule: expected %s, got %s", e->rule, d->rule);
    if (e->policy && strcmp(e->policy, d->file) != 0)
        rc |= add_difference(list, "policy: expected %s, got %s", e->policy,
                             d->file[0] ? d->file : "none (no policy had an opinion)");
    if (e->roles) {
        /* the same set of roles, in any order */
        int same = 1;
        for (size_t i = 0; same && i < json_array_size(e->roles); i++)
            same = decision_has_role(d, json_string_value(json_array_get(e->roles, i)));
        for (int i = 0; same && i < d->n_roles; i++)
            same = role_listed(e->roles, d->roles[i]);
        if (!same) {
            char want[600] = "", got[600] = "";
            for (size_t i = 0; i < json_array_size(e->roles); i++) {
                append(want, sizeof want, i ? ", " : "");
                append(want, sizeof want, json_string_value(json_array_get(e->roles, i)));
            }
            for (int i = 0; i < d->n_roles; i++) {
                append(got, sizeof got, i ? ", " : "");
                append(got, sizeof got, d->roles[i]);
            }
            rc |= add_difference(list, "roles: expected %s, got %s",
                                 want[0] ? want : "none (anyone may approve)",
                                 got[0] ? got : "none (anyone may approve)");
        }
    }
    if (e->four_eyes >= 0 && e->four_eyes != d->four_eyes)
        rc |= add_difference(list, "four_eyes: expected %s, got %s",
                             e->four_eyes ? "true" : "false", d->four_eyes ? "true" : "false");
    if (e->summary && strcmp(e->summary, d->summary) != 0) {
        if (d->summary[0])
            rc |= add_difference(list, "summary: expected \"%s\", got \"%s\"", e->summary,
                                 d->summary);
        else
            rc |= add_difference(list, "summary: expected \"%s\", got none", e->summary);
    }
    return rc ? -1 : 0;
}

/* Compare a validation and a result case's expectation, as compare does. -1: no memory. */
static int compare_validation(const test_expect *e, const policy_validation *v, json_t *list)
{
    int rc = 0;
    if (e->valid != v->ok)
        rc |= add_difference(list, "valid: expected %s, got %s", e->valid ? "true" : "false",
                             v->ok ? "true" : "false");
    if (e->rule && strcmp(e->rule, v->rule) != 0)
        rc |= add_difference(list, "rule: expected %s, got %s", e->rule,
                             v->rule[0] ? v->rule : "none (valid)");
    if (e->policy && strcmp(e->policy, v->file) != 0)
        rc |= add_difference(list, "policy: expected %s, got %s", e->policy,
                             v->file[0] ? v->file : "none");
    if (e->reason && !strstr(v->reason, e->reason))
        rc |= add_difference(list, "reason: expected it to contain \"%s\", got \"%s\"",
                             e->reason, v->reason);
    return rc ? -1 : 0;
}

/* The report's "got" of a decide case: decision_json and the votes. NULL: no memory. */
static json_t *decision_got(const policy_decision *d)
{
    json_t *got = decision_json(d);
    if (got && (!d->votes || json_object_set_new(got, "votes", json_incref(d->votes)))) {
        json_decref(got);
        return NULL;
    }
    return got;
}

/* The report's "got" of a result case: {"valid", "rule", "reason", "policy"} ("" when
 * valid). NULL: no memory. */
static json_t *validation_got(const policy_validation *v)
{
    json_t *got = json_object();
    if (got && (json_object_set_new(got, "valid", json_boolean(v->ok)) ||
                json_object_set_new(got, "rule", json_text(v->rule)) ||
                json_object_set_new(got, "reason", json_text(v->reason)) ||
                json_object_set_new(got, "policy", json_text(v->file)))) {
        json_decref(got);
        return NULL;
    }
    return got;
}

/* One test file's report entry for a case, appended to cases (got and differences are
 * taken). -1: no memory. */
static int add_case_report(json_t *cases, const char *file, const json_t *c, json_t *got,
                           json_t *differences)
{
    json_t *entry = json_object();
    if (!entry || !got || !differences || json_array_append_new(cases, json_incref(entry))) {
        json_decref(entry);
        json_decref(got);
        json_decref(differences);
        return -1;
    }
    json_decref(entry); /* cases holds it */
    int bad = json_object_set_new(entry, "file", json_text(file)) ||
              json_object_set_new(entry, "name", json_incref(json_object_get(c, "name"))) ||
              json_object_set_new(entry, "ok", json_boolean(json_array_size(differences) == 0)) ||
              json_object_set_new(entry, "expected", json_incref(json_object_get(c, "expect")));
    bad |= json_object_set_new(entry, "got", got) != 0;
    bad |= json_object_set_new(entry, "differences", differences) != 0;
    return bad ? -1 : 0;
}

static int test_invalid(ar_error *err, const char *file, size_t index, const char *name,
                        const char *why)
{
    if (name && name[0])
        return ar_error_set(err, AR_E_INVALID, "policy_test_invalid",
                            "policy test %s: test %zu (\"%.80s\"): %s", file, index, name, why);
    return ar_error_set(err, AR_E_INVALID, "policy_test_invalid", "policy test %s: test %zu: %s",
                        file, index, why);
}

/* Load test file name of dir (its directory fd) in the sandbox and convert its tests to a
 * JSON array of cases (*out, owned by the caller). */
static int load_test_file(const policy_set *set, int dir_fd, const char *name, json_t **out,
                          ar_error *err)
{
    *out = NULL;
    policy_file file = { .source = NULL };
    snprintf(file.name, sizeof file.name, "%s", name);
    policy_set tset = { .files = &file, .count = 1, .limits = set->limits };
    policy_worker *w = NULL;
    json_t *cases = NULL;
    ar_error inner;
    ar_error_clear(&inner);
    int rc = read_policy_file(dir_fd, &file, &inner);
    if (rc == AR_OK)
        rc = worker_create(&tset, &w, &inner);
    if (rc != AR_OK) {
        /* "policy x.lua does not compile: ..." -> "policy test x.lua does not compile: ..." */
        const char *code = rc == AR_E_INVALID ? "policy_test_invalid" : inner.code;
        if (strncmp(inner.message, "policy ", 7) == 0)
            ar_error_set(err, rc, code, "policy test %s", inner.message + 7);
        else
            ar_error_set(err, rc, code, "policy test %s: %s", name, inner.message);
        goto fail;
    }

    lua_State *L = w->L;
    begin_call(w);
    w->current_file = file.name;
    lua_settop(L, 0);
    lua_pushcfunction(L, run_test_chunk);
    lua_pushlightuserdata(L, w);
    int status = lua_pcall(L, 1, 1, 0);
    w->in_call = 0; /* keep the result on the stack: no end_call yet */
    w->current_file = NULL;
    if (status != LUA_OK) {
        const char *why = w->fail ? fail_text(w->fail)
                          : status == LUA_ERRMEM ? fail_text(FAIL_MEMORY)
                          : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                          : "error object is not a string";
        rc = ar_error_set(err, AR_E_INVALID, "policy_test_invalid", "policy test %s failed: %s",
                          name, why);
        goto fail;
    }
    int tests = lua_gettop(L);
    size_t n = 0;
    lua_Integer max_index = 0;
    int list = 1;
    lua_pushnil(L);
    while (lua_next(L, tests)) {
        lua_pop(L, 1);
        n++;
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1)
            max_index = lua_tointeger(L, -1) > max_index ? lua_tointeger(L, -1) : max_index;
        else
            list = 0;
    }
    if (!list || n == 0 || (size_t)max_index != n) {
        rc = ar_error_set(err, AR_E_INVALID, "policy_test_invalid",
                          "policy test %s: %s", name, n == 0 ? "tests is empty: add a test"
                          : "tests must be a list { {name = ...}, {name = ...} }, with no "
                            "names as keys and no holes");
        goto fail;
    }
    if (!(cases = json_array())) {
        rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
        goto fail;
    }
    for (size_t i = 1; i <= n; i++) {
        char case_name[128];
        tconv tc = { .L = L };
        lua_rawgeti(L, tests, (lua_Integer)i);
        int t = lua_type(L, -1);
        if (t != LUA_TTABLE) {
            snprintf(tc.why, sizeof tc.why, "a test must be a table {name = ..., action = {...}, "
                                            "expect = {...}}, got a %s", lua_typename(L, t));
            rc = test_invalid(err, name, i, NULL, tc.why);
            goto fail;
        }
        raw_case_name(L, lua_gettop(L), case_name, sizeof case_name);
        json_t *c = lua_to_json(&tc, lua_gettop(L), 1);
        lua_pop(L, 1);
        if (!c) {
            rc = test_invalid(err, name, i, case_name, tc.why);
            goto fail;
        }
        if (json_array_append_new(cases, c)) {
            rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
            goto fail;
        }
    }
    *out = cases;
    cases = NULL;
fail:
    if (w)
        end_call(w);
    policy_worker_free(w);
    free(file.source);
    json_decref(cases);
    return rc;
}

int policy_run_tests(const policy_set *set, const char *dir, json_t **report, ar_error *err)
{
    if (report)
        *report = NULL;
    if (!set || !dir || !report)
        return ar_error_set(err, AR_E_INVALID, "invalid_argument",
                            "policy: no policy set or directory");
    int rc = AR_OK;
    char **names = NULL;
    size_t n_names = 0;
    policy_worker *w = NULL;
    json_t *cases = NULL, *out = json_object(), *all = json_array();
    DIR *d = opendir(dir);
    if (!d) {
        rc = ar_error_set(err, errno == ENOENT ? AR_E_NOTFOUND : AR_E_IO, "policy_io",
                          "policy: cannot open directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (!out || !all) {
        rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
        goto fail;
    }
    rc = list_policy_names(d, dir, 1, &names, &n_names, err);
    if (rc == AR_OK)
        rc = policy_worker_new(set, &w, err);
    if (rc != AR_OK)
        goto fail;

    json_int_t passed = 0, failed = 0;
    for (size_t f = 0; f < n_names; f++) {
        rc = load_test_file(set, dirfd(d), names[f], &cases, err);
        if (rc != AR_OK)
            goto fail;
        for (size_t i = 0; i < json_array_size(cases); i++) {
            const json_t *c = json_array_get(cases, i);
            const json_t *action, *counters, *result;
            int64_t now_s;
            test_expect e;
            char why[400];
            if (read_case(set, c, &action, &now_s, &counters, &result, &e, why,
                          sizeof why) != 0) {
                rc = test_invalid(err, names[f], i + 1,
                                  json_string_value(json_object_get(c, "name")), why);
                goto fail;
            }
            policy_worker_set_counters(w, json_counter_source, (void *)counters);
            json_t *differences = json_array();
            json_t *got = NULL;
            int bad = !differences;
            if (e.is_result) {
                policy_validation val;
                validate_at(w, action, result, now_s, &val);
                bad = bad || compare_validation(&e, &val, differences) != 0;
                got = bad ? NULL : validation_got(&val);
            } else {
                policy_decision dec;
                decide_at(w, action, now_s, &dec);
                bad = bad || compare(&e, &dec, differences) != 0;
                got = bad ? NULL : decision_got(&dec);
                json_decref(dec.votes);
            }
            policy_worker_set_counters(w, NULL, NULL);
            if (bad) {
                json_decref(differences);
                json_decref(got);
            } else {
                if (json_array_size(differences) == 0)
                    passed++;
                else
                    failed++;
                bad = add_case_report(all, names[f], c, got, differences) != 0;
            }
            if (bad) {
                rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
                goto fail;
            }
        }
        json_decref(cases);
        cases = NULL;
    }
    if (json_object_set_new(out, "passed", json_integer(passed)) ||
        json_object_set_new(out, "failed", json_integer(failed)) ||
        json_object_set(out, "cases", all)) {
        rc = ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
        goto fail;
    }
    *report = out;
    out = NULL;
fail:
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (d)
        closedir(d);
    policy_worker_free(w);
    json_decref(cases);
    json_decref(all);
    json_decref(out);
    return rc;
}
