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
 * - Every file is compiled once per worker. A call must behave as if the whole file ran in a
 *   fresh _ENV and then decide(action, ctx) ran on a fresh action table: nothing one call does
 *   is seen by the next call or by the next file. Two ways give that:
 *   - FILE_ONCE (prepare_file, when the worker is made): the chunk runs once; if its top level
 *     did not read the clock or the random generator or log, and everything it left reachable
 *     is fit (freeze_state: no metatables or C closures of its own, and no function assigns
 *     an upvalue that outlives a call, checked in its bytecode), every table it left is
 *     frozen and decide (and validate) are kept. A call is then only decide(action, ctx).
 *   - otherwise each call runs the chunk in a fresh _ENV, then decide, as before.
 *   A frozen table ("frozen views") reads through to its contents and logs every write in an
 *   undo log that is played back after every call, so a call sees its own writes and the next
 *   one does not. The action is converted once per decision into frozen tables shared by every
 *   file (and kept from one decision to the next, changed in place where the next action
 *   differs: view_update), so one file cannot change what the next one sees. The only thing a
 *   frozen table cannot fake is a metatable of the policy's own on it: setmetatable there
 *   abandons the call and the file runs the slow way (FILE_PRIVATE) from then on. ctx is one
 *   read-only table per worker.
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
 * Covers: a file's covers list is read at load (read_covers, raw reads) into its policy_file
 * as C strings. At the start of each decision and validation, mark_uncovered compares the
 * action's connector and action strings with them, in C; a file not covered is tallied as an
 * abstention (or skipped by validate) without any Lua call, also inside a batch.
 *
 * Load (validate_set) runs every chunk once and reads what it defines: decide (required),
 * validate (optional), covers (optional) and the counters table, converted to JSON with raw
 * reads and parsed by counters_def_parse; the set keeps the union, sorted by name. Nothing of
 * that run survives, and a policy that rewrites counters (or covers) during a call changes
 * only what that call sees.
 * ctx.counter(name) looks the name up in the set and asks the worker's source
 * (policy_worker_set_counters); policy_eval and the policy tests give a JSON object of values
 * as the source.
 *
 * Votes are kept as C data in the worker (policy_decision.vote_list); the JSON array is built
 * only when asked for (policy_votes_json; by policy_decide unless the worker is told not to).
 * Consecutive files that run once run under one lua_pcall (run_batch); a failing file ends
 * the batch and the next one starts after it.
 *
 * validate(action, result, ctx) runs like decide (as if in a fresh _ENV, same limits, one
 * budget for the whole validation) in each file that defines it, until one rejects.
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

/* The names covers entries use, as the config and plugins spell them: a connector is 1 to 64
 * of [a-z0-9_-] (config.c), an action 1 to 128 of [a-z0-9_-]. plugin.h also allows a dot in
 * an action name, but an entry has at most one dot, so that a stray one ("shop.refund.") is
 * an error rather than a file that silently never runs: such an action is covered by naming
 * its whole connector. */
#define COVER_CONNECTOR_MAX 64
#define COVER_ACTION_MAX 128
#define COVER_NAME_CHARS "abcdefghijklmnopqrstuvwxyz0123456789_-"
#define COVERS_MAX 256

/* One entry of a file's covers: "CONNECTOR.ACTION", or "CONNECTOR" (action_len 0: every action
 * of the connector). Connector names have no dot, so the first dot splits the two. */
typedef struct policy_cover {
    char connector[COVER_CONNECTOR_MAX + 1];
    size_t connector_len;
    char action[COVER_ACTION_MAX + 1];
    size_t action_len;
} policy_cover;

typedef struct policy_file {
    char name[256];
    char vote_name[256];    /* name, made valid UTF-8 (for decisions and votes) */
    json_t *vote_json;      /* vote_name as a JSON string, shared by the votes' JSON (policy_vote
                             * .file_json); owned (one reference); NULL: none made */
    json_t *abstain_json;   /* the file's abstention as a vote's JSON, shared likewise
                             * (policy_vote.abstain_json); owned; NULL: none made */
    char *source;
    size_t len;
    int has_validate;       /* the file defines validate (found at load) */
    policy_cover *covers;   /* what its covers declares (found at load); owned */
    size_t n_covers;        /* 0: no covers, the file runs for every action */
} policy_file;

struct policy_set {
    policy_file *files;
    size_t count;
    policy_limits limits;   /* defaults applied */
    char version[17];
    counter_def *counters;  /* the union of the files' declarations, sorted by name */
    size_t n_counters;
    int has_validate;       /* some file defines validate */
    int has_covers;         /* some file declares covers */
    struct {                /* the decision when every file abstains, by effect (default_for) */
        policy_verdict verdict;
        char reason[sizeof(((policy_decision *)0)->reason)];
    } defaults[4];
};

/* Why the current call was stopped; sticky until the call ends. FAIL_DEMOTE is not a failure
 * of the policy: the call did something the shared, frozen view cannot give it exactly (a
 * setmetatable on a frozen table), so it is abandoned and run again the slow way. */
enum fail_kind { FAIL_NONE = 0, FAIL_BUDGET, FAIL_DEADLINE, FAIL_MEMORY, FAIL_OUTSIDE,
                 FAIL_DEMOTE };

/* How a file's calls run, from the fastest:
 * FILE_ONCE: its chunk ran once, when the worker was made, and everything it left is frozen
 *   (see "frozen views"); a call is decide(action, ctx) (or validate) on the kept function,
 *   with the decision's frozen action, converted once for every file.
 * FILE_SHARED: each call runs the chunk in a fresh _ENV, then decide, on the shared frozen
 *   action (a file that cannot be run once: see prepare_file).
 * FILE_PRIVATE: as FILE_SHARED, but each call gets its own conversion of the action (a file
 *   demoted because it set a metatable on a frozen table). */
enum file_mode { FILE_PRIVATE = 0, FILE_SHARED, FILE_ONCE };

typedef struct file_state {
    enum file_mode mode;
    int decide_ref;         /* FILE_ONCE: registry refs of decide and validate (or LUA_NOREF) */
    int validate_ref;
    size_t kept_bytes;      /* FILE_ONCE: the memory its state holds (counted in w->kept_bytes) */
    int uncovered;          /* this decision or validation: the action is not one its covers
                             * names, so it is not run and abstains (mark_uncovered) */
} file_state;

typedef struct mem_cap {
    size_t used;
    size_t cap;
} mem_cap;

struct policy_worker {
    const policy_set *set;
    lua_State *L;
    mem_cap mem;            /* the allocator's userdata: must not move */
    int *chunk_refs;        /* registry refs of the compiled chunks, one per file */
    file_state *files;      /* how each file runs (set->count of them) */
    policy_vote *votes;     /* the last decision's votes (policy_decision.vote_list) */
    struct vote_text *vote_texts; /* their rules and reasons */
    int votes_json;         /* policy_decide builds policy_decision.votes */
    int env_mt_ref;         /* registry ref of {__index = G, __metatable = false} */
    int ctx_ref;            /* registry ref of the ctx every call gets: empty, read-only */
    int keys_ref;           /* registry ref of the result keys C reads (enum result_key) */
    int undo_ref;           /* registry ref of the undo log: {H, key, old value, ...} */
    int meta_ref;           /* registry ref of {H = frozen table} for frozen metatables, weak */
    int undo_n;             /* slots of the undo log in use (3 per write) */
    int reshaped;           /* the call added or removed a key of a frozen table */
    /* the frozen views of the action and the result, kept from one call to the next in the
     * table views_ref ({action view or false, result view or false}) and refreshed on first
     * use in each call (ready: done for this one) */
    int views_ref;
    int action_ready;
    int result_ready;
    struct shadow *shadows[3]; /* [slot]: what the kept view shows, as C data (view_update) */
    /* the connector and action the files' uncovered marks were made for (mark_uncovered):
     * the next action with the same two strings keeps them */
    struct {
        int valid;
        int has_conn, has_act;  /* the field was a string */
        size_t clen, alen;
        char conn[COVER_CONNECTOR_MAX];
        char act[COVER_ACTION_MAX];
    } marked;
    /* running files once (prepare_file) */
    int sys_ref;            /* registry ref of the set of the sandbox's own tables (libraries) */
    int preparing;          /* a chunk runs once for keeps: note what makes it unfit for that */
    int impure;             /* its top level read the clock, the random generator or logged */
    size_t kept_bytes;      /* memory the kept file states hold */
    const unsigned char *rng_state; /* math.random's state, to see whether a top level drew */
    size_t rng_size;
    lua_CFunction os_time, os_clock, os_date; /* the os functions the sandbox wraps */
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

typedef struct vote_text {
    char rule[sizeof(((policy_decision *)0)->rule)];
    char reason[sizeof(((policy_decision *)0)->reason)];
} vote_text;

/* The names of the fields of a result that C reads, as Lua strings made once per worker
 * (policy_worker.keys_ref: a sequence in this order), so that reading a result pushes them
 * from a table rather than interning each name again on every call. */
enum result_key { RK_VERDICT = 1, RK_REASON, RK_RULE, RK_SUMMARY, RK_ROLES, RK_EXPIRES_IN,
                  RK_FOUR_EYES, RK_OK, RK_COUNT = RK_OK };
static const char *const result_key_names[RK_COUNT] = {
    "verdict", "reason", "rule", "summary", "roles", "expires_in", "four_eyes", "ok"
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
    /* RUN_LOAD: what the file declares (counters: a JSON object, owned; NULL: none; covers:
     * owned, n_covers entries; NULL: none) */
    int has_validate;
    json_t *counters;
    policy_cover *covers;
    size_t n_covers;
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
    case FAIL_DEMOTE: return "run again with a private action";
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
    void *p = ptr ? realloc(ptr, nsize) : malloc(nsize); /* most blocks are new ones */
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
    w->action_ready = w->result_ready = 0; /* the next call refreshes the views */
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

static int fz_contents(lua_State *L, int idx);

/* setmetatable without finalizers: a __gc could run policy code during a later call. On a
 * frozen table (see "frozen views") the call is abandoned and run again on private tables,
 * where the metatable can be set for real. */
static int sb_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    if (fz_contents(L, 1)) {
        policy_worker *w = worker_of(L);
        if (!w->fail)
            w->fail = FAIL_DEMOTE; /* sticky: pcall cannot catch it */
        return luaL_error(L, "%s", fail_text(w->fail));
    }
    lua_settop(L, 2);
    if (t == LUA_TTABLE && fz_contents(L, 2)) {
        /* a frozen table as the metatable: the VM reads metamethods raw, so the object gets
         * its contents H, and getmetatable maps H back to the frozen table (H is never handed
         * out, so writes to the metatable still go through the undo log) */
        lua_rawgeti(L, LUA_REGISTRYINDEX, worker_of(L)->meta_ref);
        lua_pushvalue(L, 3);
        lua_pushvalue(L, 2);
        lua_rawset(L, -3);
        lua_pop(L, 1);
        lua_replace(L, 2);
    }
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
    if (w->preparing) { /* a top level that logs must log on every call: it runs every call */
        w->impure = 1;
        return 0;
    }
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

/* os.time, os.clock and os.date as the os library has them, noting a top level that reads the
 * clock (os.time() or os.date(format) without a time): such a top level must run on every
 * call. They call the library's own functions in the same frame, so errors read the same. */
static int sb_os_time(lua_State *L)
{
    policy_worker *w = worker_of(L);
    if (w->preparing && lua_isnoneornil(L, 1))
        w->impure = 1;
    return w->os_time(L);
}

static int sb_os_clock(lua_State *L)
{
    policy_worker *w = worker_of(L);
    if (w->preparing)
        w->impure = 1;
    return w->os_clock(L);
}

static int sb_os_date(lua_State *L)
{
    policy_worker *w = worker_of(L);
    if (w->preparing && lua_isnoneornil(L, 2))
        w->impure = 1;
    return w->os_date(L);
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

/* ---- string.lower and string.upper ------------------------------------------------------ */

/* string.lower/upper as Lua's own (tolower/toupper on every byte, same errors), but a string
 * that the conversion would not change is returned as it is: no new string to make, intern and
 * collect. Strings are values, so the caller cannot tell the difference; policies lower the
 * text they check, and most of it is lower case already. */
static int str_convert(lua_State *L, int (*convert)(int))
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len); /* a number becomes its string in place */
    size_t i = 0;
    while (i < len && convert((unsigned char)s[i]) == (unsigned char)s[i])
        i++;
    if (i == len) {
        lua_settop(L, 1);
        return 1;
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, len);
    memcpy(p, s, i);
    for (; i < len; i++)
        p[i] = (char)convert((unsigned char)s[i]);
    luaL_pushresultsize(&b, len);
    return 1;
}

static int sb_str_lower(lua_State *L)
{
    return str_convert(L, tolower);
}

static int sb_str_upper(lua_State *L)
{
    return str_convert(L, toupper);
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

/* ---- frozen views ------------------------------------------------------------------------------
 *
 * A frozen table is an empty table F whose metatable reads through to the real contents H
 * (__index = H) and sends every write to fz_newindex, which first appends H, the key and H's old
 * value to the worker's undo log, then writes H. After every call, undo_writes puts the old
 * values back (newest first), so a call may write a frozen table as it likes, it sees its own
 * writes, and the next call (or the next file of the same decision) sees the table as it was.
 * F stays empty (rawset is not offered; every write reaches fz_newindex), and H is never handed
 * out: __pairs iterates through F, and the sandbox's next, rawget, rawlen and getmetatable see
 * through F to H as they would see a plain table (getmetatable(F) is nil). The metatable keeps
 * H under the private key fz_mark too, which is how C code recognises a frozen table. A frozen
 * table given as a metatable (setmetatable(o, Class)) is installed as its H, since the VM reads
 * metamethods raw; metamethods never receive their metatable, and getmetatable(o) maps H back
 * to F (meta_ref), so H still never reaches policy code. What cannot be faked is a policy's own
 * metatable on F: setmetatable on a frozen table abandons the call (FAIL_DEMOTE) and the file
 * runs again the slow way. */

static const char fz_mark = 0; /* its address is the key of H in a frozen table's metatable */

/* If the value at idx is a frozen table, push its contents H and return 1; else push nothing
 * and return 0. */
static int fz_contents(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
        return 0;
    if (lua_rawgetp(L, -1, &fz_mark) != LUA_TTABLE) {
        lua_pop(L, 2);
        return 0;
    }
    lua_remove(L, -2);
    return 1;
}

/* Replace the value at idx by its contents when it is a frozen table. */
static void fz_unwrap(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (fz_contents(L, idx))
        lua_replace(L, idx);
}

static void raise_at_caller(lua_State *L, const char *what)
{
    luaL_where(L, 2); /* the Lua code whose write this is, as the VM would name it */
    lua_pushstring(L, what);
    lua_concat(L, 2);
    lua_error(L);
}

/* F[k] = v: log H[k]'s old value, then write H. The log entry is complete before H changes,
 * so a memory error on the way leaves nothing to undo or everything. */
static int fz_newindex(lua_State *L)
{
    policy_worker *w = worker_of(L);
    lua_settop(L, 3);
    if (!fz_contents(L, 1))
        return luaL_error(L, "not a frozen table");
    int h = lua_gettop(L); /* 4 */
    int kt = lua_type(L, 2);
    if (kt == LUA_TNIL)
        raise_at_caller(L, "index is nil");
    if (kt == LUA_TNUMBER && !lua_isinteger(L, 2) && lua_tonumber(L, 2) != lua_tonumber(L, 2))
        raise_at_caller(L, "index is NaN");
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->undo_ref); /* 5 */
    lua_Integer n = w->undo_n;
    lua_pushvalue(L, h);
    lua_rawseti(L, 5, n + 1);
    lua_pushvalue(L, 2);
    lua_rawseti(L, 5, n + 2);
    lua_pushvalue(L, 2);
    int old = lua_rawget(L, h);
    lua_rawseti(L, 5, n + 3);
    w->undo_n = (int)n + 3;
    /* a key added or removed can change H's layout for good (a rehash, a dead key), and with it
     * the order of pairs in later calls, which undoing the value cannot put back */
    if (old == LUA_TNIL || lua_isnil(L, 3))
        w->reshaped = 1;
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, h);
    return 0;
}

static int fz_len(lua_State *L)
{
    if (!fz_contents(L, 1))
        return luaL_error(L, "not a frozen table");
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
    return 1;
}

/* The iterator pairs(F) returns: next over H, with F as its state (H is never handed out). */
static int fz_next(lua_State *L)
{
    lua_settop(L, 2);
    if (!fz_contents(L, 1))
        return luaL_error(L, "not a frozen table");
    lua_pushvalue(L, 2);
    if (lua_next(L, 3))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int fz_pairs(lua_State *L)
{
    lua_pushcfunction(L, fz_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Replace the table H at idx by a new frozen table over it. protect: the metatable says
 * __metatable = false (as a call's _ENV does); otherwise getmetatable(F) is nil, as for the
 * plain table F stands for. */
static void fz_wrap(lua_State *L, int idx, int protect)
{
    idx = lua_absindex(L, idx);
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 6);
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, fz_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, fz_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, fz_pairs);
    lua_setfield(L, -2, "__pairs");
    if (protect) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pushvalue(L, idx);
    lua_rawsetp(L, -2, &fz_mark);
    lua_setmetatable(L, -2);
    lua_replace(L, idx);
}

#define UNDO_LOG_KEPT 48 /* slots of the undo log kept between calls (16 writes) */

/* Protected: put back what the logged writes changed, newest first. Writing a key that is
 * there never allocates; putting back a removed one may, so the caller lifts the memory cap. */
static int undo_writes_p(lua_State *L)
{
    policy_worker *w = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->undo_ref); /* 2 */
    for (lua_Integer i = w->undo_n; i >= 3; i -= 3) {
        lua_rawgeti(L, 2, i - 2); /* H */
        lua_rawgeti(L, 2, i - 1); /* key */
        lua_rawgeti(L, 2, i);     /* old value */
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    if (w->undo_n > UNDO_LOG_KEPT) { /* a log that grew large is not kept at that size */
        lua_createtable(L, UNDO_LOG_KEPT, 0);
        lua_rawseti(L, LUA_REGISTRYINDEX, w->undo_ref);
        return 0;
    }
    for (lua_Integer i = w->undo_n; i >= 1; i--) { /* let go of what the call wrote */
        lua_pushnil(L);
        lua_rawseti(L, 2, i);
    }
    return 0;
}

static void demote_all(policy_worker *w);

/* After every call on frozen views: undo its writes. If that fails (the system is out of
 * memory), the frozen state can no longer be trusted: every file goes back to private
 * conversions and the views are dropped. */
static void undo_writes(policy_worker *w)
{
    if (!w->undo_n)
        return;
    lua_State *L = w->L;
    size_t cap = w->mem.cap;
    w->mem.cap = SIZE_MAX;
    int top = lua_gettop(L);
    lua_pushcfunction(L, undo_writes_p);
    lua_pushlightuserdata(L, w);
    int status = lua_pcall(L, 1, 0, 0);
    lua_settop(L, top);
    w->mem.cap = cap;
    w->undo_n = 0;
    if (status != LUA_OK)
        demote_all(w);
}

/* The sandbox's next, rawget, rawlen and getmetatable: as Lua's own, but a frozen table looks
 * like the plain table it stands for. */
static int sb_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    fz_unwrap(L, 1);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int sb_rawget(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    lua_settop(L, 2);
    fz_unwrap(L, 1);
    lua_rawget(L, 1);
    return 1;
}

static int sb_rawlen(lua_State *L)
{
    int t = lua_type(L, 1);
    luaL_argexpected(L, t == LUA_TTABLE || t == LUA_TSTRING, 1, "table or string");
    lua_settop(L, 1);
    fz_unwrap(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 1));
    return 1;
}

static int sb_getmetatable(lua_State *L)
{
    luaL_checkany(L, 1);
    if (!lua_getmetatable(L, 1)) {
        lua_pushnil(L);
        return 1;
    }
    if (lua_rawgetp(L, -1, &fz_mark) == LUA_TTABLE) {
        lua_pop(L, 1);
        if (lua_getfield(L, -1, "__metatable") == LUA_TNIL)
            lua_pushnil(L); /* a frozen plain table has no metatable */
        return 1;
    }
    lua_pop(L, 1);
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return 1;
    /* the contents of a frozen table set as a metatable: give the frozen table back */
    lua_rawgeti(L, LUA_REGISTRYINDEX, worker_of(L)->meta_ref);
    lua_pushvalue(L, -2);
    if (lua_rawget(L, -2) == LUA_TTABLE)
        return 1;
    lua_pop(L, 2);
    return 1;
}

/* ---- running a file once: what its top level leaves ------------------------------------------
 *
 * A file can run once per worker instead of once per call when nothing its calls do can change
 * what the next call sees. Its tables are frozen (freeze_state), so their writes are undone
 * after each call. What freezing cannot cover makes the file unfit, and it keeps running its
 * chunk on every call: a kept table with a metatable of the policy's own (weak tables, classes),
 * a C closure with state (a gmatch iterator), and a function that assigns an upvalue cell that
 * outlives a call (local n = 0; function decide() n = n + 1 end), found in its bytecode. */

#if LUA_VERSION_NUM != 504
#error "the bytecode check below reads Lua 5.4's dump format"
#endif

#define BC_OP_SETUPVAL 10   /* lopcodes.h of Lua 5.4: UpValue[B] := R[A] */
#define BC_MAX_NESTING 250  /* deeper than the parser allows (LUAI_MAXCCALLS 200) */

typedef struct bc_buf {
    unsigned char *data;
    size_t len, cap;
    int failed;
} bc_buf;

static int bc_writer(lua_State *L, const void *p, size_t size, void *ud)
{
    (void)L;
    bc_buf *b = ud;
    if (b->len + size > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + size)
            cap *= 2;
        unsigned char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return 1;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, size);
    b->len += size;
    return 0;
}

typedef struct bc_reader {
    const unsigned char *p, *end;
    int bad;
    int writes;             /* an upvalue that outlives a call is assigned */
} bc_reader;

static size_t bc_size(bc_reader *r)
{
    size_t x = 0;
    unsigned char b;
    do {
        if (r->p >= r->end || x > (SIZE_MAX >> 8)) {
            r->bad = 1;
            return 0;
        }
        b = *r->p++;
        x = (x << 7) | (b & 0x7f);
    } while (!(b & 0x80));
    return x;
}

static void bc_skip(bc_reader *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        r->p = r->end;
        return;
    }
    r->p += n;
}

static void bc_string(bc_reader *r)
{
    size_t n = bc_size(r);
    if (n)
        bc_skip(r, n - 1);
}

/* One function of a dump (ldump.c: dumpFunction). outer[i]: upvalue i of the enclosing
 * function is a cell that outlives a call; NULL for the dumped closure itself, all of whose
 * upvalues do. An upvalue of a nested function outlives a call when it is one of those (an
 * upvalue of its parent: instack 0), not when it is a local of a running function. */
static void bc_function(bc_reader *r, const unsigned char *outer, size_t n_outer, int depth)
{
    if (depth > BC_MAX_NESTING)
        r->bad = 1;
    bc_string(r);                   /* source */
    bc_size(r);                     /* linedefined */
    bc_size(r);                     /* lastlinedefined */
    bc_skip(r, 3);                  /* numparams, is_vararg, maxstacksize */
    size_t n_code = bc_size(r);
    if (r->bad || n_code > (size_t)(r->end - r->p) / 4) {
        r->bad = 1;
        return;
    }
    const unsigned char *code = r->p;
    bc_skip(r, n_code * 4);
    size_t n_k = bc_size(r);
    for (size_t i = 0; i < n_k && !r->bad; i++) {
        if (r->p >= r->end) {
            r->bad = 1;
            break;
        }
        switch (*r->p++) {          /* the constant's type tag */
        case 0: case 1: case 17:    /* nil, false, true */
            break;
        case 3: case 19:            /* integer, float */
            bc_skip(r, 8);
            break;
        case 4: case 20:            /* short, long string */
            bc_string(r);
            break;
        default:
            r->bad = 1;
        }
    }
    size_t n_up = bc_size(r);
    if (r->bad || n_up > 255) {
        r->bad = 1;
        return;
    }
    unsigned char lasting[256];
    for (size_t i = 0; i < n_up; i++) {
        if (r->end - r->p < 3) {
            r->bad = 1;
            return;
        }
        unsigned instack = r->p[0], idx = r->p[1];
        r->p += 3;
        lasting[i] = !outer || (!instack && idx < n_outer && outer[idx]);
    }
    for (size_t i = 0; i < n_code; i++) {
        uint32_t ins;
        memcpy(&ins, code + 4 * i, sizeof ins); /* dumped in the machine's order */
        if ((ins & 0x7f) == BC_OP_SETUPVAL) {
            unsigned b = (ins >> 16) & 0xff;
            if (b >= n_up || lasting[b])
                r->writes = 1;
        }
    }
    size_t n_protos = bc_size(r);
    for (size_t i = 0; i < n_protos && !r->bad; i++)
        bc_function(r, lasting, n_up, depth + 1);
    bc_skip(r, bc_size(r));         /* lineinfo */
    for (size_t n = bc_size(r); n && !r->bad; n--) { /* abslineinfo */
        bc_size(r);
        bc_size(r);
    }
    for (size_t n = bc_size(r); n && !r->bad; n--) { /* locvars */
        bc_string(r);
        bc_size(r);
        bc_size(r);
    }
    for (size_t n = bc_size(r); n && !r->bad; n--) /* upvalue names */
        bc_string(r);
}

/* 1 when the Lua function at idx, or a function nested in it, may assign one of its upvalues
 * (or when its bytecode cannot be read: assume it may). */
static int assigns_lasting_upvalue(lua_State *L, int idx)
{
    static const unsigned char header[] = {
        0x1b, 'L', 'u', 'a', 0x54, 0, 0x19, 0x93, '\r', '\n', 0x1a, '\n', 4,
        sizeof(lua_Integer), sizeof(lua_Number)
    };
    bc_buf b = { .data = NULL };
    lua_pushvalue(L, idx);
    int status = lua_dump(L, bc_writer, &b, 1);
    lua_pop(L, 1);
    int writes = 1;
    size_t fixed = sizeof header + sizeof(lua_Integer) + sizeof(lua_Number) + 1;
    if (status == 0 && !b.failed && b.len > fixed && memcmp(b.data, header, sizeof header) == 0) {
        bc_reader r = { .p = b.data + fixed, .end = b.data + b.len };
        bc_function(&r, NULL, 0, 0);
        if (!r.bad && r.p == r.end)
            writes = r.writes;
    }
    free(b.data);
    return writes;
}

typedef struct freezer {
    int seen;               /* stack index: object -> true (found) -> its frozen table */
    int list;               /* stack index: the objects found, in order */
    int sys;                /* stack index: the sandbox's own tables */
    lua_Integer n;
} freezer;

/* Note the value at idx (absolute) as part of the state; -1 when it makes the file unfit. */
static int freeze_visit(lua_State *L, freezer *fz, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL: case LUA_TBOOLEAN: case LUA_TNUMBER: case LUA_TSTRING:
        return 0;
    case LUA_TTABLE:
        lua_pushvalue(L, idx);
        if (lua_rawget(L, fz->sys) != LUA_TNIL) { /* read-only already */
            lua_pop(L, 1);
            return 0;
        }
        lua_pop(L, 1);
        break;
    case LUA_TFUNCTION:
        break;
    default:                        /* userdata, threads: nothing a policy can make */
        return -1;
    }
    lua_pushvalue(L, idx);
    if (lua_rawget(L, fz->seen) != LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, fz->seen);
    lua_pushvalue(L, idx);
    lua_rawseti(L, fz->list, ++fz->n);
    return 0;
}

/* Push the frozen table standing for the value at idx, or nothing; 1 if pushed. */
static int freeze_replacement(lua_State *L, freezer *fz, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE)
        return 0;
    lua_pushvalue(L, idx);
    if (lua_rawget(L, fz->seen) == LUA_TTABLE)
        return 1;
    lua_pop(L, 1);
    return 0;
}

/* Find everything reachable from the table env (a file's _ENV after its chunk ran): tables,
 * functions and their upvalues. If it is all fit to be kept, make every table frozen (a new
 * frozen table over each, every reference to a table replaced by its frozen table: in tables,
 * as keys too, and in upvalue cells), push the frozen _ENV and return 1; else push nothing,
 * change nothing and return 0. Raises on memory errors (the caller is protected). */
static int freeze_state(lua_State *L, policy_worker *w, int env)
{
    env = lua_absindex(L, env);
    int top = lua_gettop(L);
    freezer fz = { .seen = top + 1, .list = top + 2, .sys = top + 3 };
    lua_newtable(L);
    lua_newtable(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->sys_ref);
    luaL_checkstack(L, 8, "freezing");
    int fit = freeze_visit(L, &fz, env) == 0;
    for (lua_Integer i = 1; fit && i <= fz.n; i++) {
        lua_rawgeti(L, fz.list, i);
        int o = lua_gettop(L);
        if (lua_type(L, o) == LUA_TTABLE) {
            if (!lua_rawequal(L, o, env) && lua_getmetatable(L, o)) {
                fit = 0; /* a metatable of the policy's own */
            } else {
                lua_pushnil(L);
                while (fit && lua_next(L, o)) {
                    fit = freeze_visit(L, &fz, o + 1) == 0 && freeze_visit(L, &fz, o + 2) == 0;
                    lua_pop(L, 1);
                }
            }
        } else if (lua_iscfunction(L, o)) {
            fit = lua_getupvalue(L, o, 1) == NULL; /* a C closure keeps state we cannot see */
        } else {
            fit = !assigns_lasting_upvalue(L, o);
            for (int u = 1; fit && lua_getupvalue(L, o, u); u++) {
                fit = freeze_visit(L, &fz, o + 1) == 0;
                lua_pop(L, 1);
            }
        }
        lua_settop(L, o - 1);
    }
    if (!fit) {
        lua_settop(L, top);
        return 0;
    }
    for (lua_Integer i = 1; i <= fz.n; i++) { /* a frozen table over every table */
        if (lua_rawgeti(L, fz.list, i) == LUA_TTABLE) {
            lua_pushvalue(L, -1);
            lua_pushvalue(L, -1);
            fz_wrap(L, -1, lua_rawequal(L, -1, env));
            lua_rawset(L, fz.seen);
        }
        lua_pop(L, 1);
    }
    lua_newtable(L); /* top+4: tables and their keys to replace, after the traversals */
    int rekey = top + 4;
    lua_Integer n_rekey = 0;
    for (lua_Integer i = 1; i <= fz.n; i++) { /* each reference to a table: to its frozen one */
        lua_rawgeti(L, fz.list, i);
        int o = lua_gettop(L);
        if (lua_type(L, o) == LUA_TTABLE) {
            lua_pushnil(L);
            while (lua_next(L, o)) { /* o+1 key, o+2 value */
                if (freeze_replacement(L, &fz, o + 2)) { /* an existing field: allowed in next */
                    lua_pushvalue(L, o + 1);
                    lua_insert(L, -2);
                    lua_rawset(L, o);
                }
                if (freeze_replacement(L, &fz, o + 1)) {
                    lua_pop(L, 1);
                    lua_pushvalue(L, o);
                    lua_rawseti(L, rekey, ++n_rekey);
                    lua_pushvalue(L, o + 1);
                    lua_rawseti(L, rekey, ++n_rekey);
                }
                lua_pop(L, 1);
            }
        } else if (!lua_iscfunction(L, o)) {
            for (int u = 1; lua_getupvalue(L, o, u); u++) {
                if (freeze_replacement(L, &fz, o + 1))
                    lua_setupvalue(L, o, u);
                lua_pop(L, 1);
            }
        }
        lua_settop(L, o - 1);
    }
    for (lua_Integer j = 1; j < n_rekey; j += 2) { /* t[k] = v becomes t[frozen k] = v */
        lua_rawgeti(L, rekey, j);
        int t = lua_gettop(L);
        lua_rawgeti(L, rekey, j + 1);
        lua_pushvalue(L, t + 1);
        lua_rawget(L, t);
        lua_pushvalue(L, t + 1);
        lua_pushnil(L);
        lua_rawset(L, t);
        freeze_replacement(L, &fz, t + 1);
        lua_pushvalue(L, t + 2);
        lua_rawset(L, t);
        lua_settop(L, t - 1);
    }
    lua_pushvalue(L, env);
    lua_rawget(L, fz.seen);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return 1;
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

/* Build the ctx every call gets: an empty table (rawset is not offered, so it stays empty)
 * that reads through to the unreachable table of ctx functions, refuses writes and protects
 * its metatable. Nothing a policy does to it can outlive the call, so one serves them all. */
static int make_ctx(lua_State *L)
{
    lua_newtable(L);
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
    lua_setmetatable(L, -3);
    lua_pop(L, 1);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- building the sandbox ----------------------------------------------------------------- */

static const char *const base_allowed[] = {
    "assert", "error", "ipairs", "pairs", "rawequal", "select", "tonumber", "tostring", "type",
    "_VERSION", NULL
};

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
    static const luaL_Reg see_through[] = { /* they see through frozen tables */
        { "next", sb_next }, { "rawget", sb_rawget }, { "rawlen", sb_rawlen },
        { "getmetatable", sb_getmetatable }, { NULL, NULL }
    };
    luaL_setfuncs(L, see_through, 0);

    static const char *const string_strip[] = { "dump", NULL };
    static const char *const math_strip[] = { "randomseed", NULL }; /* no state across calls */
    static const luaL_Reg string_replaced[] = { /* budgeted matching; lower/upper: faster */
        { "find", pm_find }, { "match", pm_match_fn }, { "gmatch", pm_gmatch_fn },
        { "gsub", pm_gsub }, { "lower", sb_str_lower }, { "upper", sb_str_upper },
        { NULL, NULL }
    };
    add_library(L, g, LUA_STRLIBNAME, luaopen_string, string_strip, string_replaced);
    add_library(L, g, LUA_TABLIBNAME, luaopen_table, NULL, NULL);
    add_library(L, g, LUA_MATHLIBNAME, luaopen_math, math_strip, NULL);
    add_library(L, g, LUA_UTF8LIBNAME, luaopen_utf8, NULL, NULL);

    /* math.random's state (the userdata upvalue of random): a top level that draws changes it */
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 0); /* the module opened above */
    lua_getfield(L, -1, "random");
    if (lua_getupvalue(L, -1, 1) && lua_type(L, -1) == LUA_TUSERDATA) {
        w->rng_state = lua_touserdata(L, -1);
        w->rng_size = lua_rawlen(L, -1);
    }
    lua_settop(L, g);

    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
    lua_getfield(L, -1, "time");
    w->os_time = lua_tocfunction(L, -1);
    lua_getfield(L, -2, "clock");
    w->os_clock = lua_tocfunction(L, -1);
    lua_getfield(L, -3, "date");
    w->os_date = lua_tocfunction(L, -1);
    lua_pop(L, 3);
    if (!w->os_time || !w->os_clock || !w->os_date)
        return luaL_error(L, "the os library lacks time, clock or date");
    static const luaL_Reg os_wrapped[] = {
        { "time", sb_os_time }, { "clock", sb_os_clock }, { "date", sb_os_date }, { NULL, NULL }
    };
    lua_createtable(L, 0, 3);
    luaL_setfuncs(L, os_wrapped, 0);
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
    w->ctx_ref = make_ctx(L);
    lua_createtable(L, RK_COUNT, 0);
    for (int k = 0; k < RK_COUNT; k++) {
        lua_pushstring(L, result_key_names[k]);
        lua_rawseti(L, -2, k + 1);
    }
    w->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, UNDO_LOG_KEPT, 0);
    w->undo_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    w->meta_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 2, 0);
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, 1);
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, 2);
    w->views_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    /* the sandbox's own tables a file may keep (local S = string): never frozen */
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, g)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_pushboolean(L, 1);
            lua_rawset(L, -4);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->ctx_ref);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    w->sys_ref = luaL_ref(L, LUA_REGISTRYINDEX);

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
    w->files = calloc(set->count ? set->count : 1, sizeof *w->files);
    w->votes = calloc(set->count ? set->count : 1, sizeof *w->votes);
    w->vote_texts = calloc(set->count ? set->count : 1, sizeof *w->vote_texts);
    w->votes_json = 1;
    if (!w->chunk_refs || !w->files || !w->votes || !w->vote_texts) {
        free(w->chunk_refs);
        free(w->files);
        free(w->votes);
        free(w->vote_texts);
        free(w);
        return ar_error_set(err, AR_E_NOMEM, "out_of_memory", "policy: out of memory");
    }
    for (size_t i = 0; i < set->count; i++) {
        w->files[i].mode = FILE_SHARED;
        w->files[i].decide_ref = w->files[i].validate_ref = LUA_NOREF;
    }
    w->L = lua_newstate(capped_alloc, &w->mem);
    if (!w->L) {
        free(w->chunk_refs);
        free(w->files);
        free(w->votes);
        free(w->vote_texts);
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

/* push_json, frozen: every object and array becomes a frozen table (see "frozen views"), so one
 * conversion serves every file of a decision. An object's view also keeps, in its metatable
 * under fz_keys, the list of the keys it was built with, in order, so that view_refresh can
 * reuse it for the next decision's action. depth: v's depth (1 for the action itself); a value
 * deeper than MAX_ACTION_DEPTH (as json_too_deep counts) pushes nothing and returns -1. */
static const char fz_keys = 0;

#define VIEW_TOO_DEEP (-2)

static int push_frozen_json(lua_State *L, json_t *v, int depth)
{
    if (depth > MAX_ACTION_DEPTH)
        return VIEW_TOO_DEEP;
    luaL_checkstack(L, 4, "action too deep");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *val;
        int n = (int)json_object_size(v);
        int base = lua_gettop(L);
        lua_createtable(L, 0, n);     /* H */
        lua_createtable(L, n, 0);     /* its keys, in the order they went in */
        int k = 0;
        json_object_foreach(v, key, val) {
            if (json_is_null(val)) {
                if (depth + 1 > MAX_ACTION_DEPTH)
                    goto too_deep;
                continue;             /* null reads as nil: absent */
            }
            lua_pushstring(L, key);   /* as push_json: a key stops at a NUL */
            lua_pushvalue(L, -1);
            lua_rawseti(L, -3, ++k);
            if (push_frozen_json(L, val, depth + 1) != 0)
                goto too_deep;
            lua_rawset(L, -4);
        }
        fz_wrap(L, -2, 0);
        lua_getmetatable(L, -2);
        lua_insert(L, -2);
        lua_rawsetp(L, -2, &fz_keys);
        lua_pop(L, 1);
        return 0;
    too_deep:
        lua_settop(L, base);
        return VIEW_TOO_DEEP;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            json_t *val = json_array_get(v, i);
            if (json_is_null(val)) {
                if (depth + 1 > MAX_ACTION_DEPTH) {
                    lua_pop(L, 1);
                    return VIEW_TOO_DEEP;
                }
                continue;
            }
            if (push_frozen_json(L, val, depth + 1) != 0) {
                lua_pop(L, 1);
                return VIEW_TOO_DEEP;
            }
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        fz_wrap(L, -1, 0);
        return 0;
    }
    default:
        push_json(L, v);
        return 0;
    }
}

/* Does the Lua value at idx read as the JSON scalar v (as push_json would push it)? */
static int same_scalar(lua_State *L, int idx, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING: {
        size_t len;
        if (lua_type(L, idx) != LUA_TSTRING)
            return 0;
        const char *s = lua_tolstring(L, idx, &len);
        return len == json_string_length(v) && memcmp(s, json_string_value(v), len) == 0;
    }
    case JSON_INTEGER:
        return lua_isinteger(L, idx) &&
               lua_tointeger(L, idx) == (lua_Integer)json_integer_value(v);
    case JSON_REAL:
        return lua_type(L, idx) == LUA_TNUMBER && !lua_isinteger(L, idx) &&
               lua_tonumber(L, idx) == (lua_Number)json_real_value(v);
    case JSON_TRUE:
    case JSON_FALSE:
        return lua_type(L, idx) == LUA_TBOOLEAN &&
               lua_toboolean(L, idx) == json_is_true(v);
    default:
        return 0;
    }
}

/* Make the frozen view of an object at idx show the object v (at depth) instead, in place,
 * when v has the same keys (not null) in the same order as the ones the view was built with:
 * the table then has exactly the layout a fresh conversion would give it (same sizes, same
 * insertions), so nothing, not even the order of pairs, tells an earlier decision's action.
 * 0: done; -1: the keys differ; VIEW_TOO_DEEP. On anything but 0 the view is left half-done:
 * the caller has detached it and drops it. Raises on memory errors. */
static int view_refresh(lua_State *L, int idx, json_t *v, int depth)
{
    if (depth > MAX_ACTION_DEPTH)
        return VIEW_TOO_DEEP;
    if (!json_is_object(v) || !lua_getmetatable(L, idx))
        return -1;
    luaL_checkstack(L, 8, "action too deep");
    int mt = lua_gettop(L);
    if (lua_rawgetp(L, mt, &fz_keys) != LUA_TTABLE) { /* mt+1: the keys */
        lua_settop(L, mt - 1);
        return -1;
    }
    lua_rawgetp(L, mt, &fz_mark);                     /* mt+2: H */
    int keys = mt + 1, h = mt + 2;
    const char *key;
    json_t *val;
    lua_Integer n = 0;
    int rc = 0;
    json_object_foreach(v, key, val) {
        if (json_is_null(val)) {
            if (depth + 1 > MAX_ACTION_DEPTH) {
                rc = VIEW_TOO_DEEP;
                break;
            }
            continue;
        }
        if (lua_rawgeti(L, keys, ++n) != LUA_TSTRING || strcmp(lua_tostring(L, h + 1), key) != 0) {
            rc = -1;                                  /* another key (or no more keys) */
            break;
        }
        lua_rawget(L, h);                             /* h+1: the value the key has now */
        if (json_is_object(val)) {
            int sub = lua_type(L, h + 1) == LUA_TTABLE ? view_refresh(L, h + 1, val, depth + 1)
                                                       : -1;
            if (sub == VIEW_TOO_DEEP) {
                rc = sub;
                break;
            }
            if (sub == 0) {
                lua_settop(L, h);
                continue;
            }
        } else if (!json_is_array(val)) {
            if (depth + 1 > MAX_ACTION_DEPTH) {
                rc = VIEW_TOO_DEEP;
                break;
            }
            if (same_scalar(L, h + 1, val)) {
                lua_settop(L, h);
                continue;
            }
        }
        lua_settop(L, h);
        lua_rawgeti(L, keys, n);
        if (push_frozen_json(L, val, depth + 1) != 0) {
            rc = VIEW_TOO_DEEP;
            break;
        }
        lua_rawset(L, h);                             /* an existing key: the layout stays */
    }
    if (rc == 0 && (lua_Integer)lua_rawlen(L, keys) != n)
        rc = -1;                                      /* fewer keys than before */
    lua_settop(L, mt - 1);
    return rc;
}

/* json_object_foreach without looking each key's iterator up again (the same order). */
#define OBJECT_EACH(obj, it, key, val)                                                        \
    for (void *it = json_object_iter(obj);                                                    \
         it && ((key) = json_object_iter_key(it), (val) = json_object_iter_value(it), 1);    \
         it = json_object_iter_next(obj, it))

/* A C copy of what an object's view shows (a shadow), so that the next action can be compared
 * with it without a call into Lua: only what changed is written to the view. The invariant:
 * while a view is kept (views_ref slot holds it), the worker's shadow for the slot describes it
 * exactly, key order included; a view being changed is detached first, so an error half-way
 * drops the view and the shadow with it. An entry that could not be copied (no memory) is
 * SHADOW_UNKNOWN and never equal: its field is simply written again. */
#define SHADOW_UNKNOWN (-1)

typedef struct shadow shadow;

typedef struct shadow_entry {
    char *key;              /* the key as the view has it (objects; NULL in arrays) */
    int type;               /* json_type, or SHADOW_UNKNOWN */
    json_int_t i;
    double d;
    char *s;                /* a string's bytes (len of them) */
    size_t len;
    shadow *sub;            /* an object's or an array's entries */
} shadow_entry;

struct shadow {
    size_t n;
    shadow_entry *e;
};

static void shadow_free(shadow *sh);

static void entry_clear(shadow_entry *e)
{
    free(e->s);
    e->s = NULL;
    shadow_free(e->sub);
    e->sub = NULL;
    e->type = SHADOW_UNKNOWN;
}

static void shadow_free(shadow *sh)
{
    if (!sh)
        return;
    for (size_t i = 0; i < sh->n; i++) {
        free(sh->e[i].key);
        entry_clear(&sh->e[i]);
    }
    free(sh->e);
    free(sh);
}

static shadow *shadow_build(const json_t *v);

/* Make e describe v (its key stays). */
static void entry_set(shadow_entry *e, const json_t *v)
{
    entry_clear(e);
    int type = (int)json_typeof(v);
    switch (type) {
    case JSON_STRING:
        e->len = json_string_length(v);
        if (!(e->s = malloc(e->len ? e->len : 1)))
            return;
        memcpy(e->s, json_string_value(v), e->len);
        break;
    case JSON_INTEGER:
        e->i = json_integer_value(v);
        break;
    case JSON_REAL:
        e->d = json_real_value(v);
        break;
    case JSON_OBJECT:
    case JSON_ARRAY:
        if (!(e->sub = shadow_build(v)))
            return;
        break;
    default:
        break;
    }
    e->type = type;
}

/* The shadow of an object (its keys not null, in order, as push_frozen_json puts them in) or of
 * an array (every element). NULL: no memory. */
static shadow *shadow_build(const json_t *v)
{
    shadow *sh = calloc(1, sizeof *sh);
    size_t n = json_is_object(v) ? json_object_size(v) : json_array_size(v);
    if (!sh || (n && !(sh->e = calloc(n, sizeof *sh->e)))) {
        free(sh);
        return NULL;
    }
    if (json_is_array(v)) {
        for (size_t i = 0; i < n; i++) {
            sh->e[i].type = SHADOW_UNKNOWN;
            sh->n = i + 1;
            entry_set(&sh->e[i], json_array_get(v, i));
        }
        return sh;
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (json_is_null(val))
            continue;
        shadow_entry *e = &sh->e[sh->n++];
        e->type = SHADOW_UNKNOWN;
        if (!(e->key = strdup(key))) { /* as the view: the key stops at a NUL */
            shadow_free(sh);
            return NULL;
        }
        entry_set(e, val);
    }
    return sh;
}

static int shadow_same(const shadow *sh, const json_t *v);

/* Does e describe v exactly (what push_json would push, its type included)? */
static int entry_same(const shadow_entry *e, const json_t *v)
{
    if (e->type != (int)json_typeof(v))
        return 0;
    switch (e->type) {
    case JSON_STRING:
        return e->len == json_string_length(v) && memcmp(e->s, json_string_value(v), e->len) == 0;
    case JSON_INTEGER:
        return e->i == json_integer_value(v);
    case JSON_REAL:
        return e->d == json_real_value(v);
    case JSON_OBJECT:
    case JSON_ARRAY:
        return shadow_same(e->sub, v);
    default:
        return 1; /* true, false, null */
    }
}

/* Same keys in the same order (objects), same values? */
static int shadow_same(const shadow *sh, const json_t *v)
{
    if (json_is_array(v)) {
        if (json_array_size(v) != sh->n)
            return 0;
        for (size_t i = 0; i < sh->n; i++)
            if (!entry_same(&sh->e[i], json_array_get(v, i)))
                return 0;
        return 1;
    }
    size_t k = 0;
    const char *key;
    json_t *val;
    OBJECT_EACH((json_t *)v, it, key, val) {
        if (json_is_null(val))
            continue;
        if (k >= sh->n || strcmp(sh->e[k].key, key) != 0 || !entry_same(&sh->e[k], val))
            return 0;
        k++;
    }
    return k == sh->n;
}

/* view_refresh with the view's shadow sh (both changed in place, only where v differs; on -1
 * both are half-done, and the caller drops them). */
static int view_update(lua_State *L, int idx, shadow *sh, json_t *v, int depth)
{
    if (depth > MAX_ACTION_DEPTH)
        return VIEW_TOO_DEEP;
    if (!json_is_object(v))
        return -1;
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L), keys = 0, h = 0, rc = 0;
    const char *key;
    json_t *val;
    size_t k = 0;
    OBJECT_EACH(v, it, key, val) {
        if (json_is_null(val)) {
            if (depth + 1 > MAX_ACTION_DEPTH) {
                rc = VIEW_TOO_DEEP;
                break;
            }
            continue;
        }
        if (k >= sh->n || !sh->e[k].key || strcmp(sh->e[k].key, key) != 0) {
            rc = -1;                                  /* not the same keys in the same order */
            break;
        }
        shadow_entry *e = &sh->e[k++];
        if (entry_same(e, val))                       /* unchanged since the last action */
            continue;
        if (!h) {
            luaL_checkstack(L, 8, "action too deep");
            if (!lua_getmetatable(L, idx) || lua_rawgetp(L, -1, &fz_keys) != LUA_TTABLE ||
                lua_rawgetp(L, -2, &fz_mark) != LUA_TTABLE) {
                rc = -1;                              /* not a view: cannot happen */
                break;
            }
            keys = top + 2;
            h = top + 3;
        }
        if (json_is_object(val) && e->type == JSON_OBJECT) {
            lua_rawgeti(L, keys, (lua_Integer)k);
            lua_rawget(L, h);
            int sub = lua_type(L, -1) == LUA_TTABLE ? view_update(L, -1, e->sub, val, depth + 1)
                                                    : -1;
            lua_pop(L, 1);
            if (sub == VIEW_TOO_DEEP) {
                rc = sub;
                break;
            }
            if (sub == 0)
                continue;
        }
        lua_rawgeti(L, keys, (lua_Integer)k);
        if (push_frozen_json(L, val, depth + 1) != 0) {
            rc = VIEW_TOO_DEEP;
            break;
        }
        lua_rawset(L, h);                             /* an existing key: the layout stays */
        entry_set(e, val);
    }
    if (rc == 0 && k != sh->n)
        rc = -1;                                      /* fewer keys than before */
    lua_settop(L, top);
    return rc;
}

/* Push the frozen view of json (NULL: nil) for this call, the action's (slot 1) or the
 * result's (slot 2): refresh the one kept from the last call, or convert anew. *ready: done for
 * this call already. The kept view is detached while it changes, so an error half-way leaves
 * nothing half-done to the next call. 0, or VIEW_TOO_DEEP (nothing pushed). */
static int push_shared_view(lua_State *L, policy_worker *w, const json_t *json, int slot,
                            int *ready)
{
    if (!json) {
        lua_pushnil(L);
        return 0;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->views_ref);
    int views = lua_gettop(L);
    lua_rawgeti(L, views, slot);
    if (*ready) {
        lua_replace(L, views);
        return 0;
    }
    shadow **sh = &w->shadows[slot];
    if (*sh && lua_type(L, -1) == LUA_TTABLE && shadow_same(*sh, json)) {
        lua_replace(L, views);                        /* the kept view shows json already */
        *ready = 1;
        return 0;
    }
    lua_pushboolean(L, 0);
    lua_rawseti(L, views, slot);                      /* detached (an existing slot: no memory) */
    int rc = -1;
    if (lua_type(L, -1) == LUA_TTABLE)
        rc = *sh ? view_update(L, -1, *sh, (json_t *)json, 1)
                 : view_refresh(L, -1, (json_t *)json, 1);
    if (rc != 0 || !*sh) {
        if (rc != 0) {
            lua_pop(L, 1);
            if (rc == -1)
                rc = push_frozen_json(L, (json_t *)json, 1);
            if (rc != 0) {
                lua_pop(L, 1);
                return rc;
            }
        }
        shadow_free(*sh);                             /* a new view, or one without a shadow */
        *sh = json_is_object(json) ? shadow_build(json) : NULL;
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, views, slot);
    lua_replace(L, views);
    *ready = 1;
    return 0;
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

/* utf8_clean of the len bytes at s (s[len] is its NUL), with a fast way through the usual
 * case: no byte is 0 or above 0x7f, so there is nothing to clean. */
static void utf8_clean_n(char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        /* a byte with its top bit set, or a zero byte */
        if ((x | ((x - 0x0101010101010101u) & ~x)) & 0x8080808080808080u)
            break;
    }
    for (; i < len; i++)
        if (p[i] == 0 || p[i] >= 0x80)
            break;
    if (i < len)
        utf8_clean(s);
}

/* Copy the value at idx, when a string, into buf, cut to the buffer and made valid UTF-8; 0
 * nil, 1 copied, -1 not a string (*type names what it is). */
static int copy_value(lua_State *L, int idx, char *buf, size_t size, const char **type)
{
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (len >= size)
            len = size - 1;
        memcpy(buf, s, len);
        buf[len] = '\0';
        utf8_clean_n(buf, len);
        return 1;
    }
    if (t != LUA_TNIL) {
        *type = lua_typename(L, t);
        return -1;
    }
    return 0;
}

/* Push the worker's table of result keys (see result_key); returns its index. */
static int push_result_keys(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, worker_of(L)->keys_ref);
    return lua_gettop(L);
}

/* Push t[key] of the table at idx (raw), key one of the result keys (keys: their table, see
 * push_result_keys); returns its type. */
static int raw_field(lua_State *L, int idx, int keys, enum result_key key)
{
    lua_rawgeti(L, keys, key);
    return lua_rawget(L, idx);
}

/* copy_value of the field key of the table at idx (raw). */
static int copy_field(lua_State *L, int idx, int keys, enum result_key key, char *buf,
                      size_t size, const char **type)
{
    raw_field(L, idx, keys, key);
    int rc = copy_value(L, -1, buf, size, type);
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

/* Interpret decide's result (top of the stack) into c; raw reads only, no metamethods (a
 * frozen table is read as the table it stands for). */
static void read_result(lua_State *L, run_ctx *c)
{
    int idx = lua_gettop(L);
    fz_unwrap(L, idx);
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
    int keys = push_result_keys(L);
    int vt = raw_field(L, idx, keys, RK_VERDICT);
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

    /* filled in place: on failure, c->reason says why and the rest is ignored */
    c->verdict = (policy_verdict)v;
    const char *type = "?";
    int got;
    if ((got = copy_field(L, idx, keys, RK_REASON, c->reason, sizeof c->reason, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "reason must be a string, got a %s", type);
        return;
    }
    c->has_reason = got;
    if ((got = copy_field(L, idx, keys, RK_RULE, c->rule, sizeof c->rule, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "rule must be a string, got a %s", type);
        return;
    }
    c->has_rule = got;
    if ((got = copy_field(L, idx, keys, RK_SUMMARY, c->summary, sizeof c->summary, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "summary must be a string, got a %s", type);
        return;
    }
    c->has_summary = got;

    t = raw_field(L, idx, keys, RK_ROLES);
    if (t != LUA_TNIL && t != LUA_TTABLE) {
        snprintf(c->reason, sizeof c->reason, "roles must be an array of strings, got a %s",
                 lua_typename(L, t));
        return;
    }
    if (t == LUA_TTABLE)
        fz_unwrap(L, -1);
    if (t == LUA_TTABLE && read_roles(L, lua_gettop(L), c) != 0)
        return;
    lua_pop(L, 1);

    t = raw_field(L, idx, keys, RK_EXPIRES_IN);
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
        c->expires_in_s = secs;
    }
    lua_pop(L, 1);

    t = raw_field(L, idx, keys, RK_FOUR_EYES);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN) {
        snprintf(c->reason, sizeof c->reason, "four_eyes must be a boolean, got a %s",
                 lua_typename(L, t));
        return;
    }
    c->four_eyes = lua_toboolean(L, -1);
    lua_pop(L, 1);

    c->outcome = OUT_VOTE;
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
    fz_unwrap(L, idx);
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
    int keys = push_result_keys(L);
    int ok_type = raw_field(L, idx, keys, RK_OK);
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
    if ((has_reason = copy_field(L, idx, keys, RK_REASON, reason, sizeof reason, &type)) < 0) {
        snprintf(c->reason, sizeof c->reason, "reason must be a string, got a %s", type);
        return;
    }
    if ((has_rule = copy_field(L, idx, keys, RK_RULE, rule, sizeof rule, &type)) < 0) {
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

/* Parse one covers entry (len bytes at s) into e. NULL: fine; otherwise what is wrong. */
static const char *parse_cover(const char *s, size_t len, policy_cover *e)
{
    const char *dot = memchr(s, '.', len);
    size_t clen = dot ? (size_t)(dot - s) : len;
    if (clen == 0)
        return dot ? "the connector before the dot is empty" : "it is empty";
    if (clen > COVER_CONNECTOR_MAX)
        return "the connector name is longer than 64 characters";
    for (size_t i = 0; i < clen; i++)
        if (!s[i] || !strchr(COVER_NAME_CHARS, s[i]))
            return "a connector name is lower-case letters, digits, _ and - only";
    memcpy(e->connector, s, clen);
    e->connector[clen] = '\0';
    e->connector_len = clen;
    e->action[0] = '\0';
    e->action_len = 0;
    if (!dot)
        return NULL;
    const char *a = dot + 1;
    size_t alen = len - clen - 1;
    if (alen == 0)
        return "the action after the dot is empty";
    if (alen > COVER_ACTION_MAX)
        return "the action name is longer than 128 characters";
    for (size_t i = 0; i < alen; i++) {
        if (a[i] == '.')
            return "an entry has at most one dot, between the connector and the action (to "
                   "cover an action whose name has a dot, name its whole connector)";
        if (!a[i] || !strchr(COVER_NAME_CHARS, a[i]))
            return "an action name is lower-case letters, digits, _ and - only";
    }
    memcpy(e->action, a, alen);
    e->action[alen] = '\0';
    e->action_len = alen;
    return NULL;
}

#define COVERS_EXAMPLE "write covers = { \"CONNECTOR.ACTION\", \"CONNECTOR\", ... }, e.g. " \
                       "covers = { \"shop.refund\", \"llm\" }"

/* RUN_LOAD: the file's covers (the table on top of the stack) into c->covers: a non-empty list
 * of valid entries (raises with what is wrong). Raw reads only. */
static int read_covers(lua_State *L, run_ctx *c)
{
    int idx = lua_gettop(L);
    lua_Unsigned n = lua_rawlen(L, idx);
    if (n > COVERS_MAX)
        return luaL_error(L, "covers has more than %d entries: cover whole connectors instead "
                             "(%s)", COVERS_MAX, COVERS_EXAMPLE);
    lua_pushnil(L);
    if (!lua_next(L, idx))
        return luaL_error(L, "covers is empty: name the actions the file decides on (%s), or "
                             "remove covers to run it for every action", COVERS_EXAMPLE);
    do {
        lua_pop(L, 1); /* the value; the key stays for lua_next */
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
            (lua_Unsigned)lua_tointeger(L, -1) > n)
            return luaL_error(L, "covers must be a list of strings, not a table with a %s key "
                                 "(%s)", lua_type(L, -1) == LUA_TSTRING ? "named" : "non-list",
                              COVERS_EXAMPLE);
    } while (lua_next(L, idx));
    c->covers = calloc(n, sizeof *c->covers); /* validate_set frees it, whatever happens */
    if (!c->covers)
        return luaL_error(L, "not enough memory");
    c->n_covers = n;
    for (lua_Unsigned k = 1; k <= n; k++) {
        int t = lua_rawgeti(L, idx, (lua_Integer)k);
        if (t != LUA_TSTRING)
            return luaL_error(L, "covers[%d] must be a string, got a %s (%s)", (int)k,
                              lua_typename(L, t), COVERS_EXAMPLE);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        const char *why = parse_cover(s, len, &c->covers[k - 1]);
        if (why) {
            char shown[72]; /* the entry as written, cut, with odd bytes made visible */
            size_t m = len < sizeof shown - 1 ? len : sizeof shown - 1;
            for (size_t i = 0; i < m; i++)
                shown[i] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' ? s[i] : '?';
            shown[m] = '\0';
            return luaL_error(L, "covers[%d] \"%s\"%s is not a valid entry: %s (%s)", (int)k,
                              shown, len > m ? "..." : "", why, COVERS_EXAMPLE);
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* RUN_LOAD, after the chunk ran in the env at env: decide must be a function, validate a
 * function or absent; covers, when there, is read into c->covers; counters, when there, is
 * converted to JSON into c->counters (raises with what is wrong). */
static int check_loaded_file(lua_State *L, run_ctx *c, int env)
{
    lua_pushliteral(L, "validate");
    int t = lua_rawget(L, env);
    lua_pop(L, 1);
    if (t != LUA_TNIL && t != LUA_TFUNCTION)
        return luaL_error(L, "validate must be a function validate(action, result, ctx), got "
                             "a %s", lua_typename(L, t));
    c->has_validate = t == LUA_TFUNCTION;

    lua_pushliteral(L, "covers");
    t = lua_rawget(L, env);
    if (t != LUA_TNIL && t != LUA_TTABLE)
        return luaL_error(L, "covers must be a list of strings, got a %s (%s)",
                          lua_typename(L, t), COVERS_EXAMPLE);
    if (t == LUA_TTABLE)
        read_covers(L, c);
    lua_pop(L, 1);

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

/* Push the read-only ctx. */
static void push_ctx(lua_State *L, policy_worker *w)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->ctx_ref);
}

/* Push what file c->index's call gets as its action (and, for validate, result): the
 * decision's frozen views, or private conversions. */
static int push_call_args(lua_State *L, run_ctx *c)
{
    policy_worker *w = c->w;
    if (w->files[c->index].mode == FILE_PRIVATE) {
        push_json(L, (json_t *)c->action);
        if (c->mode != RUN_VALIDATE)
            return 1;
        if (c->result)
            push_json(L, (json_t *)c->result);
        else
            lua_pushnil(L);
        return 2;
    }
    if (push_shared_view(L, w, c->action, 1, &w->action_ready) != 0)
        return luaL_error(L, "the action is nested deeper than %d levels", MAX_ACTION_DEPTH);
    if (c->mode != RUN_VALIDATE)
        return 1;
    if (push_shared_view(L, w, c->result, 2, &w->result_ready) != 0)
        return luaL_error(L, "the result is nested deeper than %d levels", MAX_ACTION_DEPTH);
    return 2;
}

/* Protected: run file c->index's chunk in a fresh _ENV, then (c->mode) its decide(action, ctx)
 * or validate(action, result, ctx), or only check what it defines. */
static int run_file(lua_State *L)
{
    run_ctx *c = lua_touserdata(L, 1);
    policy_worker *w = c->w;
    const file_state *f = &w->files[c->index];

    if (f->mode == FILE_ONCE && c->mode != RUN_LOAD) { /* the chunk ran when w was made */
        int validate = c->mode == RUN_VALIDATE;
        if (lua_rawgeti(L, LUA_REGISTRYINDEX, validate ? f->validate_ref : f->decide_ref) !=
            LUA_TFUNCTION)
            return luaL_error(L, "%s is not a function", validate ? "validate" : "decide");
        int n = push_call_args(L, c);
        push_ctx(L, w);
        lua_call(L, n + 1, 1);
        if (validate)
            read_validation(L, c);
        else
            read_result(L, c);
        return 0;
    }

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
        push_call_args(L, c);
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
    push_call_args(L, c);
    push_ctx(L, w);
    lua_call(L, 2, 1);
    read_result(L, c);
    return 0;
}

/* After a failed protected call (status, its error object on top of the stack): say why in
 * message, clear the stack, and collect the garbage of a memory overrun. */
static void failure_message(policy_worker *w, int status, char *message, size_t size)
{
    lua_State *L = w->L;
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
}

/* Run fn (run_file) for one file under the call's limits. AR_OK: c->outcome is set. Otherwise
 * the policy failed and message says why. */
static int run_protected(policy_worker *w, lua_CFunction fn, run_ctx *c, char *message,
                         size_t size)
{
    lua_State *L = w->L;
    w->current_file = w->set->files[c->index].name;
    lua_settop(L, 0);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, c);
    int status = lua_pcall(L, 1, 0, 0);
    if (status == LUA_OK)
        return AR_OK;
    failure_message(w, status, message, size);
    return AR_E_FAIL;
}

/* Let go of what prepare_file kept of file i; its calls run the chunk again. */
static void release_file(policy_worker *w, size_t i, enum file_mode mode)
{
    file_state *f = &w->files[i];
    luaL_unref(w->L, LUA_REGISTRYINDEX, f->decide_ref);
    luaL_unref(w->L, LUA_REGISTRYINDEX, f->validate_ref);
    f->decide_ref = f->validate_ref = LUA_NOREF;
    f->mode = mode;
    w->kept_bytes -= f->kept_bytes;
    f->kept_bytes = 0;
}

/* A file goes back to running its chunk with private conversions, for good. */
static void demote_file(policy_worker *w, size_t i)
{
    release_file(w, i, FILE_PRIVATE);
}

/* Forget the kept views of the action and the result: the next use builds them anew. */
static void drop_views(policy_worker *w)
{
    lua_rawgeti(w->L, LUA_REGISTRYINDEX, w->views_ref);
    for (int slot = 1; slot <= 2; slot++) {
        lua_pushboolean(w->L, 0);
        lua_rawseti(w->L, -2, slot);
    }
    lua_pop(w->L, 1);
    w->action_ready = w->result_ready = 0;
}

static void demote_all(policy_worker *w)
{
    for (size_t i = 0; i < w->set->count; i++)
        demote_file(w, i);
    drop_views(w); /* they may be half-undone */
}

/* Whether file f's covers names the action's connector (clen bytes at conn; NULL: none, or
 * not a string) and action (alen bytes at act; NULL likewise). No covers: every action. */
static int file_covers(const policy_file *f, const char *conn, size_t clen, const char *act,
                       size_t alen)
{
    if (!f->n_covers)
        return 1;
    if (!conn)
        return 0;
    for (size_t k = 0; k < f->n_covers; k++) {
        const policy_cover *e = &f->covers[k];
        if (e->connector_len == clen && memcmp(e->connector, conn, clen) == 0 &&
            (e->action_len == 0 ||
             (act && e->action_len == alen && memcmp(e->action, act, alen) == 0)))
            return 1;
    }
    return 0;
}

/* At the start of a decision or a validation: mark the files whose covers does not name the
 * action (file_state.uncovered). They are not run and abstain, as if decide (or validate) had
 * returned nil: their code could not have told the action apart from another one it ignores
 * (the same connector and action strings), and no Lua runs to find out. */
static void mark_uncovered(policy_worker *w, const json_t *action)
{
    const policy_set *set = w->set;
    if (!set->has_covers)
        return; /* nothing marked: every file_state.uncovered stays 0 */
    const json_t *jc = json_object_get(action, "connector");
    const json_t *ja = json_object_get(action, "action");
    const char *conn = json_is_string(jc) ? json_string_value(jc) : NULL;
    const char *act = json_is_string(ja) ? json_string_value(ja) : NULL;
    size_t clen = conn ? json_string_length(jc) : 0, alen = act ? json_string_length(ja) : 0;
    if (w->marked.valid && w->marked.has_conn == !!conn && w->marked.has_act == !!act &&
        w->marked.clen == clen && w->marked.alen == alen &&
        memcmp(w->marked.conn, conn ? conn : "", clen) == 0 &&
        memcmp(w->marked.act, act ? act : "", alen) == 0)
        return; /* the same names as the last time: the same marks */
    for (size_t i = 0; i < set->count; i++)
        w->files[i].uncovered = !file_covers(&set->files[i], conn, clen, act, alen);
    /* longer names are no covers entry's: they are simply not remembered */
    w->marked.valid = clen <= sizeof w->marked.conn && alen <= sizeof w->marked.act;
    if (w->marked.valid) {
        w->marked.has_conn = !!conn;
        w->marked.has_act = !!act;
        w->marked.clen = clen;
        w->marked.alen = alen;
        memcpy(w->marked.conn, conn ? conn : "", clen);
        memcpy(w->marked.act, act ? act : "", alen);
    }
}

typedef struct view_job {
    policy_worker *w;
    const json_t *action;
    int rc;
} view_job;

static int action_view_p(lua_State *L)
{
    view_job *j = lua_touserdata(L, 1);
    j->rc = push_shared_view(L, j->w, j->action, 1, &j->w->action_ready);
    return 0;
}

/* At the start of a decision: the action's frozen view, when some file will use it (one that
 * is covered and not private), checking its depth on the way (json_too_deep's answer, without
 * a walk of its own). 1: too deep; 0: ready; -1: not made (no file uses it, or no memory: each
 * file's call tries again). */
static int action_view(policy_worker *w, const json_t *action)
{
    size_t i = 0;
    while (i < w->set->count && (w->files[i].mode == FILE_PRIVATE || w->files[i].uncovered))
        i++;
    if (i == w->set->count)
        return -1;
    view_job j = { .w = w, .action = action, .rc = -1 };
    lua_State *L = w->L;
    lua_pushcfunction(L, action_view_p);
    lua_pushlightuserdata(L, &j);
    int status = lua_pcall(L, 1, 0, 0);
    lua_settop(L, 0);
    if (status != LUA_OK)
        return -1;
    return j.rc == VIEW_TOO_DEEP ? 1 : 0;
}

/* After every call of file i on frozen tables: undo its writes; if it added or removed keys,
 * the tables it touched may no longer be laid out as a fresh run would lay them out, so they
 * are not used again: a file that ran once runs its chunk on every call from now on, and the
 * action's views are built anew. */
static void after_call(policy_worker *w, size_t i)
{
    undo_writes(w);
    if (!w->reshaped)
        return;
    w->reshaped = 0;
    if (w->files[i].mode == FILE_ONCE)
        release_file(w, i, FILE_SHARED);
    drop_views(w);
}

/* A run_ctx for file index, without clearing its buffers (a decision makes one per file). */
static void run_ctx_init(run_ctx *c, policy_worker *w, size_t index, const json_t *action,
                         enum run_mode mode, const json_t *result)
{
    c->w = w;
    c->index = index;
    c->action = action;
    c->mode = mode;
    c->result = result;
    c->has_validate = 0;
    c->counters = NULL;
    c->covers = NULL;
    c->n_covers = 0;
    c->outcome = OUT_ABSTAIN;
    c->verdict = POLICY_ALLOW;
    c->has_reason = c->has_rule = c->has_summary = 0;
    c->reason[0] = c->rule[0] = c->summary[0] = '\0';
    c->n_roles = 0;
    c->expires_in_s = 0;
    c->four_eyes = 0;
}

/* Run file c->index for a decision or a validation (c->mode): on the shared frozen views when
 * it can, then undo its writes to them; a call that has to be demoted is run again, the slow
 * way, as if the first attempt had not happened (its instructions are not charged). */
static int run_policy(policy_worker *w, run_ctx *c, char *message, size_t size)
{
    if (w->files[c->index].mode != FILE_PRIVATE) {
        uint64_t charged = w->instructions;
        int rc = run_protected(w, run_file, c, message, size);
        after_call(w, c->index);
        if (w->fail != FAIL_DEMOTE)
            return rc;
        demote_file(w, c->index);
        run_ctx_init(c, c->w, c->index, c->action, c->mode, c->result);
        w->fail = FAIL_NONE;
        w->instructions = charged;
        lua_sethook(w->L, count_hook, LUA_MASKCOUNT, w->hook_step); /* restarts the count */
    }
    int rc = run_protected(w, run_file, c, message, size);
    after_call(w, c->index); /* the action views may be shared with other files */
    return rc;
}

/* ---- running a file once: the run ---------------------------------------------------------- */

/* Kept file states may hold at most this share of the memory cap: the calls need the rest. */
#define KEPT_SHARE_DIVISOR 4

/* Protected: run file c->index's chunk in a fresh _ENV, as a call would, and when what it left
 * can be frozen, keep its decide and validate (mode FILE_ONCE). */
static int prepare_file_p(lua_State *L)
{
    run_ctx *c = lua_touserdata(L, 1);
    policy_worker *w = c->w;
    file_state *f = &w->files[c->index];
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->chunk_refs[c->index]); /* 2: chunk */
    lua_createtable(L, 0, 4);                                    /* 3: env, as run_file's */
    lua_pushvalue(L, 3);
    lua_setfield(L, 3, LUA_GNAME);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->env_mt_ref);
    lua_setmetatable(L, 3);
    lua_pushvalue(L, 3);
    lua_setupvalue(L, 2, 1);
    lua_pushvalue(L, 2);
    lua_call(L, 0, 0);
    if (w->impure)
        return 0;
    lua_pushliteral(L, "decide");                                /* 4 */
    if (lua_rawget(L, 3) != LUA_TFUNCTION)
        return 0;
    lua_pushliteral(L, "validate");                              /* 5 */
    int vt = lua_rawget(L, 3);
    if (vt != LUA_TNIL && vt != LUA_TFUNCTION)
        return 0;
    if (!freeze_state(L, w, 3))
        return 0;
    lua_pushvalue(L, 4);
    f->decide_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (vt == LUA_TFUNCTION) {
        lua_pushvalue(L, 5);
        f->validate_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    f->mode = FILE_ONCE;
    return 0;
}

/* Run file i's chunk once for keeps, if it can be: its top level must not read the clock or
 * the random generator or log (each call would see or do something else), everything it
 * leaves must be fit to freeze (freeze_state), and what it keeps must fit its share of the
 * memory cap. Otherwise the file stays FILE_SHARED: its chunk runs on every call, as before.
 * Both ways decide alike; this one is only faster. */
static void prepare_file(policy_worker *w, size_t i)
{
    lua_State *L = w->L;
    file_state *f = &w->files[i];
    unsigned char rng[64];
    int rng_known = w->rng_state && w->rng_size <= sizeof rng;
    if (rng_known)
        memcpy(rng, w->rng_state, w->rng_size);
    size_t before = w->mem.used;
    run_ctx c = { .w = w, .index = i, .mode = RUN_LOAD };
    begin_call(w);
    w->current_file = w->set->files[i].name;
    w->preparing = 1;
    w->impure = 0;
    lua_settop(L, 0);
    lua_pushcfunction(L, prepare_file_p);
    lua_pushlightuserdata(L, &c);
    int status = lua_pcall(L, 1, 0, 0);
    w->preparing = 0;
    end_call(w);
    if (!rng_known || memcmp(rng, w->rng_state, w->rng_size) != 0)
        w->impure = 1;
    lua_gc(L, LUA_GCCOLLECT);
    size_t kept = w->mem.used > before ? w->mem.used - before : 0;
    if (status != LUA_OK || w->impure || f->mode != FILE_ONCE ||
        w->kept_bytes + kept > w->mem.cap / KEPT_SHARE_DIVISOR) {
        release_file(w, i, FILE_SHARED);
        lua_gc(L, LUA_GCCOLLECT);
        return;
    }
    f->kept_bytes = kept;
    w->kept_bytes += kept;
}

/* worker_create, then every file run once where it can be (policy_worker_new). */
static int worker_create_prepared(const policy_set *set, policy_worker **out, ar_error *err)
{
    int rc = worker_create(set, out, err);
    if (rc != AR_OK)
        return rc;
    policy_worker *w = *out;
    lua_gc(w->L, LUA_GCCOLLECT);
    for (size_t i = 0; i < set->count; i++)
        prepare_file(w, i);
    return AR_OK;
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
        if (run_protected(w, run_file, &c, message, sizeof message) != AR_OK)
            rc = ar_error_set(err, AR_E_INVALID, "policy_invalid", "policy %s is invalid: %s",
                              set->files[i].name, message);
        end_call(w);
        if (rc == AR_OK && c.counters)
            rc = add_counters(set, &declared_by, i, c.counters, err);
        json_decref(c.counters);
        set->files[i].has_validate = c.has_validate;
        set->has_validate |= c.has_validate;
        if (rc == AR_OK && c.n_covers) {
            set->files[i].covers = c.covers;
            set->files[i].n_covers = c.n_covers;
            set->has_covers = 1;
        } else {
            free(c.covers);
        }
    }
    free(declared_by);
    policy_worker_free(w);
    if (rc == AR_OK && set->n_counters > 1)
        qsort(set->counters, set->n_counters, sizeof *set->counters, cmp_counter_names);
    return rc;
}

static void default_for(const policy_set *set, int kind, policy_verdict *v, char *reason,
                        size_t size);

/* A file's abstention, the vote policy_votes_json writes for it: {"file": file_json, "verdict":
 * null, "rule": null, "reason": null}. NULL when file_json is (or out of memory). */
static json_t *abstain_vote_json(json_t *file_json)
{
    json_t *vote = file_json ? json_object() : NULL;
    if (vote && (json_object_set_nocheck(vote, "file", file_json) ||
                 json_object_set_new_nocheck(vote, "verdict", json_null()) ||
                 json_object_set_new_nocheck(vote, "rule", json_null()) ||
                 json_object_set_new_nocheck(vote, "reason", json_null()))) {
        json_decref(vote);
        vote = NULL;
    }
    return vote;
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
        memcpy(set->files[i].vote_name, set->files[i].name, sizeof set->files[i].vote_name);
        utf8_clean(set->files[i].vote_name);
        set->files[i].vote_json = json_stringn_nocheck(set->files[i].vote_name,
                                                       strlen(set->files[i].vote_name));
        set->files[i].abstain_json = abstain_vote_json(set->files[i].vote_json);
        set->count = i + 1;
        rc = read_policy_file(dirfd(d), &set->files[i], err);
        if (rc != AR_OK)
            goto fail;
    }
    compute_version(set);
    for (int kind = 0; kind < 4; kind++)
        default_for(set, kind, &set->defaults[kind].verdict, set->defaults[kind].reason,
                    sizeof set->defaults[kind].reason);
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
    for (size_t i = 0; i < set->count; i++) {
        free(set->files[i].source);
        free(set->files[i].covers);
        json_decref(set->files[i].vote_json); /* votes' JSON still holding it keeps it */
        json_decref(set->files[i].abstain_json);
    }
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
    return worker_create_prepared(set, out, err);
}

void policy_worker_free(policy_worker *w)
{
    if (!w)
        return;
    if (w->L) {
        w->in_call = 0;
        lua_close(w->L);
    }
    for (int slot = 1; slot <= 2; slot++)
        shadow_free(w->shadows[slot]);
    free(w->chunk_refs);
    free(w->files);
    free(w->votes);
    free(w->vote_texts);
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
            memcpy(m->roles[m->n_roles++], c->roles[i], strlen(c->roles[i]) + 1);
    }
    if (c->expires_in_s && (!m->expires_in_s || c->expires_in_s < m->expires_in_s))
        m->expires_in_s = c->expires_in_s;
    m->four_eyes |= c->four_eyes;
    if (c->has_summary && !m->have_summary) {
        m->have_summary = 1;
        memcpy(m->summary, c->summary, strlen(c->summary) + 1);
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
static void set_decision_text(policy_decision *out, policy_verdict verdict, const char *rule,
                              const char *file, int policy_error, const char *reason);

/* The default for an effect: 0 read, 1 write, 2 irreversible, 3 missing or unknown (write). */
static void default_for(const policy_set *set, int kind, policy_verdict *v, char *reason,
                        size_t size)
{
    static const char *const names[] = { "read", "write", "irreversible", "write" };
    const int configured[] = { set->limits.default_read, set->limits.default_write,
                               set->limits.default_irreversible, set->limits.default_write };
    *v = configured[kind] ? (policy_verdict)(configured[kind] - 1)
                          : kind == 0 ? POLICY_ALLOW : POLICY_APPROVE;
    snprintf(reason, size, "no policy had an opinion%s; %s actions %s by %s",
             kind == 3 ? " and the action's effect is missing or unknown" : "", names[kind],
             default_phrase(*v), configured[kind] ? "the configured default" : "default");
}

/* Every policy abstained: the configured (or built-in) default for the action's effect (the
 * texts made once, at load). */
static void apply_default(const policy_set *set, const json_t *action, policy_decision *out)
{
    const char *effect = json_string_value(json_object_get(action, "effect"));
    int kind = !effect ? 3 : strcmp(effect, "read") == 0 ? 0 : strcmp(effect, "write") == 0 ? 1
             : strcmp(effect, "irreversible") == 0 ? 2 : 3;
    set_decision_text(out, set->defaults[kind].verdict, "default", "", 0,
                      set->defaults[kind].reason);
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

/* Copy src into dst (size bytes), cut to fit; src is valid UTF-8, so only a cut needs a
 * clean-up. */
static void copy_text(char *dst, size_t size, const char *src)
{
    size_t len = strlen(src);
    if (len < size) {
        memcpy(dst, src, len + 1);
        return;
    }
    memcpy(dst, src, size - 1);
    dst[size - 1] = '\0';
    utf8_clean(dst);
}

/* set_decision for texts that are valid UTF-8 already (no formatting). */
static void set_decision_text(policy_decision *out, policy_verdict verdict, const char *rule,
                              const char *file, int policy_error, const char *reason)
{
    out->verdict = verdict;
    out->policy_error = policy_error;
    copy_text(out->rule, sizeof out->rule, rule);
    copy_text(out->file, sizeof out->file, file);
    copy_text(out->reason, sizeof out->reason, reason);
}

static void run_ctx_init(run_ctx *c, policy_worker *w, size_t index, const json_t *action,
                         enum run_mode mode, const json_t *result);
static int action_view(policy_worker *w, const json_t *action);

/* A decision being tallied: every file's vote goes in, the most restrictive wins. */
typedef struct tally {
    policy_decision *out;
    int have_vote;
    approve_merge approve;
    const char *stopped;    /* the limit a file ran over, when it ends the decision */
    const char *stopped_by;
} tally;

/* Record file i's vote: from c when why is NULL, else a policy_error deny saying why (in the
 * file's vote text already). */
static void tally_file(policy_worker *w, tally *t, size_t i, run_ctx *c, const char *why)
{
    policy_decision *out = t->out;
    policy_vote *vote = &w->votes[i];
    vote_text *text = &w->vote_texts[i];
    const char *file = w->set->files[i].name;
    vote->file = w->set->files[i].vote_name;
    vote->file_json = w->set->files[i].vote_json;
    vote->abstain_json = w->set->files[i].abstain_json;
    vote->abstained = 0;
    policy_verdict verdict = POLICY_DENY;
    if (!why && c->outcome == OUT_INVALID) {
        cut_printf(text->reason, sizeof text->reason,
                   "policy %s returned an invalid decision: %s", file, c->reason);
        why = text->reason;
    } else if (!why && c->outcome == OUT_ABSTAIN) {
        vote->abstained = 1;
        return;
    } else if (!why) {
        verdict = c->verdict;
    }

    vote->verdict = verdict;
    if (why) {
        utf8_clean(text->reason);
        vote->rule = "policy_error";
        vote->reason = text->reason;
    } else {
        vote->rule = c->has_rule ? memcpy(text->rule, c->rule, strlen(c->rule) + 1) : NULL;
        vote->reason = c->has_reason ? memcpy(text->reason, c->reason, strlen(c->reason) + 1)
                                     : NULL;
        if (verdict == POLICY_APPROVE)
            merge_approve(&t->approve, c);
    }
    /* the most restrictive verdict wins; the first vote for it (in file order) speaks */
    if (t->have_vote && verdict <= out->verdict)
        return;
    t->have_vote = 1;
    if (why) {
        set_decision_text(out, POLICY_DENY, "policy_error", vote->file, 1, text->reason);
    } else {
        rule_or_stem(c->rule, sizeof c->rule, vote->file);
        if (c->reason[0])
            set_decision_text(out, verdict, c->rule, vote->file, 0, c->reason);
        else
            set_decision(out, verdict, c->rule, file, 0, "%s by policy %s",
                         decided_by[verdict], file);
    }
}

/* Record that file i, not run (its covers does not name the action), abstains: tally_file of
 * an abstention, without a run_ctx. */
static void tally_uncovered(policy_worker *w, size_t i)
{
    w->votes[i].file = w->set->files[i].vote_name;
    w->votes[i].file_json = w->set->files[i].vote_json;
    w->votes[i].abstain_json = w->set->files[i].abstain_json;
    w->votes[i].abstained = 1;
}

/* Record that file i failed (message says why; w->fail the limit it ran over, if any). */
static void tally_failure(policy_worker *w, tally *t, size_t i, run_ctx *c, const char *message)
{
    const char *file = w->set->files[i].name;
    vote_text *text = &w->vote_texts[i];
    cut_printf(text->reason, sizeof text->reason, "policy %s failed: %s", file, message);
    if (w->fail == FAIL_BUDGET || w->fail == FAIL_DEADLINE) {
        t->stopped = fail_text(w->fail);
        t->stopped_by = file;
    }
    w->fail = FAIL_NONE; /* a memory overrun was collected: the next file may run */
    tally_file(w, t, i, c, text->reason);
}

/* The files that run once, one after the other under a single lua_pcall (a call costs
 * less than a protected call each). A file that fails ends the batch there: b->next. */
typedef struct batch {
    policy_worker *w;
    tally *t;
    const json_t *action;
    size_t next;            /* the file running, or the first not run */
    uint64_t charged;       /* instructions charged before it started */
    /* check_depth: the decision has not made the action's view yet (decide_at leaves that to
     * the batch, sparing a protected call of its own): the batch makes it first and sets
     * too_deep, running nothing, when the action is nested too deeply */
    int check_depth;
    int too_deep;
    run_ctx c;
} batch;

static int run_batch_p(lua_State *L)
{
    batch *b = lua_touserdata(L, 1);
    policy_worker *w = b->w;
    for (; b->next < w->set->count &&
           (w->files[b->next].mode == FILE_ONCE || w->files[b->next].uncovered); b->next++) {
        size_t i = b->next;
        if (w->files[i].uncovered) { /* not run: abstains */
            tally_uncovered(w, i);
            continue;
        }
        if (lua_gettop(L) != 3 || !w->action_ready) { /* first, or the views were dropped */
            lua_settop(L, 1);
            if (push_shared_view(L, w, b->action, 1, &w->action_ready) != 0) { /* 2 */
                if (b->check_depth) {
                    b->too_deep = 1;
                    return 0;
                }
                return luaL_error(L, "the action is nested deeper than %d levels",
                                  MAX_ACTION_DEPTH);
            }
            b->check_depth = 0;
            push_ctx(L, w);                                                  /* 3 */
        }
        w->current_file = w->set->files[i].name;
        b->charged = w->instructions;
        run_ctx_init(&b->c, w, i, b->action, RUN_DECIDE, NULL);
        if (lua_rawgeti(L, LUA_REGISTRYINDEX, w->files[i].decide_ref) != LUA_TFUNCTION)
            return luaL_error(L, "decide is not a function");
        lua_pushvalue(L, 2);
        lua_pushvalue(L, 3);
        lua_call(L, 2, 1);
        read_result(L, &b->c);
        lua_settop(L, 3);
        after_call(w, i);
        tally_file(w, b->t, i, &b->c, NULL);
    }
    return 0;
}

/* Run files from b->next on, as many as run once; returns with b->next past the last one
 * handled (a failing file is tallied, or demoted and run again the slow way). */
static void run_batch(policy_worker *w, batch *b)
{
    lua_State *L = w->L;
    lua_settop(L, 0);
    lua_pushcfunction(L, run_batch_p);
    lua_pushlightuserdata(L, b);
    int status = lua_pcall(L, 1, 0, 0);
    if (status == LUA_OK) {
        lua_settop(L, 0);
        return;
    }
    if (b->check_depth) {
        /* making the action's view failed (no memory) before anything ran: as when
         * action_view fails, check the depth by a walk, then run the batch as it stands */
        lua_settop(L, 0);
        b->check_depth = 0;
        if (json_too_deep(b->action, 1)) {
            b->too_deep = 1;
            return;
        }
        run_batch(w, b);
        return;
    }
    size_t i = b->next;
    char message[400];
    failure_message(w, status, message, sizeof message);
    after_call(w, i);
    if (w->fail == FAIL_DEMOTE) { /* as run_policy does */
        demote_file(w, i);
        w->fail = FAIL_NONE;
        w->instructions = b->charged;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, w->hook_step);
        run_ctx_init(&b->c, w, i, b->action, RUN_DECIDE, NULL);
        if (run_protected(w, run_file, &b->c, message, sizeof message) != AR_OK)
            tally_failure(w, b->t, i, &b->c, message);
        else
            tally_file(w, b->t, i, &b->c, NULL);
    } else {
        tally_failure(w, b->t, i, &b->c, message);
    }
    b->next = i + 1;
}

/* The decision on an action nested too deeply: no file runs. */
static void set_too_deep(policy_decision *out)
{
    set_decision(out, POLICY_DENY, "action_invalid", "", 0,
                 "the action is nested deeper than %d levels", MAX_ACTION_DEPTH);
}

/* policy_decide with ctx.now() returning now_s (the policy tests pin the time). */
static int decide_at(policy_worker *w, const json_t *action, int64_t now_s,
                     policy_decision *out)
{
    int64_t started = mono_ns();
    memset(out, 0, sizeof *out);
    if (!w || !json_is_object(action)) {
        set_decision(out, POLICY_DENY, "action_invalid", "", 0, "the action is not a JSON object");
        goto out;
    }
    w->decision_time_s = now_s;
    mark_uncovered(w, action);
    begin_call(w);
    const policy_set *set = w->set;
    /* The action's view, and with it the check of its depth, before any file runs. When the
     * first file to run runs once, its batch makes the view first (b.check_depth). */
    size_t first = 0;
    while (first < set->count && w->files[first].uncovered)
        first++;
    int defer = first < set->count && w->files[first].mode == FILE_ONCE;
    int deep = defer ? 0 : action_view(w, action);
    if (deep < 0)
        deep = json_too_deep(action, 1);
    if (deep) {
        end_call(w);
        set_too_deep(out);
        goto out;
    }

    /* set field by field: their text buffers (kilobytes) are written before they are read */
    tally t;
    t.out = out;
    t.have_vote = 0;
    t.approve.n_roles = 0;
    t.approve.expires_in_s = 0;
    t.approve.four_eyes = 0;
    t.approve.have_summary = 0;
    t.stopped = t.stopped_by = NULL;
    batch b;
    b.w = w;
    b.t = &t;
    b.action = action;
    b.next = 0;
    b.charged = 0;
    b.check_depth = defer;
    b.too_deep = 0;
    run_ctx_init(&b.c, w, 0, action, RUN_DECIDE, NULL);
    while (b.next < set->count) {
        size_t i = b.next;
        if (w->files[i].uncovered) { /* not run: abstains, also once the budget is gone */
            b.next = i + 1;
            tally_uncovered(w, i);
            continue;
        }
        if (!t.stopped && w->files[i].mode == FILE_ONCE) {
            run_batch(w, &b);
            if (b.too_deep) {
                end_call(w);
                set_too_deep(out);
                goto out;
            }
            continue;
        }
        b.next = i + 1;
        run_ctx_init(&b.c, w, i, action, RUN_DECIDE, NULL);
        if (t.stopped) {
            /* one budget and one deadline for the whole decision: nothing left to run it */
            vote_text *text = &w->vote_texts[i];
            cut_printf(text->reason, sizeof text->reason, "policy %s not run: %s by %s",
                       set->files[i].name, t.stopped, t.stopped_by);
            tally_file(w, &t, i, &b.c, text->reason);
            continue;
        }
        char message[400];
        if (run_policy(w, &b.c, message, sizeof message) != AR_OK)
            tally_failure(w, &t, i, &b.c, message);
        else
            tally_file(w, &t, i, &b.c, NULL);
    }
    end_call(w);
    out->vote_list = w->votes;
    out->n_votes = set->count;
    if (!t.have_vote) {
        apply_default(set, action, out);
    } else if (out->verdict == POLICY_APPROVE) {
        /* only the strings: out is zeroed, so what follows each one stays 0 */
        for (int k = 0; k < t.approve.n_roles; k++)
            memcpy(out->roles[k], t.approve.roles[k], strlen(t.approve.roles[k]) + 1);
        out->n_roles = t.approve.n_roles;
        out->expires_in_s = t.approve.expires_in_s;
        out->four_eyes = t.approve.four_eyes;
        if (t.approve.have_summary)
            memcpy(out->summary, t.approve.summary, strlen(t.approve.summary) + 1);
    }
out:
    if (!w || w->votes_json)
        out->votes = policy_votes_json(out);
    out->duration_ns = (uint64_t)(mono_ns() - started);
    return AR_OK;
}

/* A vote's strings are valid UTF-8 already (cleaned when they were copied). */
static json_t *vote_string(const char *s)
{
    return s ? json_stringn_nocheck(s, strlen(s)) : json_null();
}

/* Set key (a literal) of obj to v (a new reference, or NULL: fails), as
 * json_object_set_new_nocheck without measuring the key. */
#define SET_LITERAL(obj, key, v) json_object_setn_new_nocheck(obj, key, sizeof key - 1, v)

json_t *policy_votes_json(const policy_decision *d)
{
    json_t *votes = json_array();
    for (size_t i = 0; votes && d && i < d->n_votes; i++) {
        const policy_vote *v = &d->vote_list[i];
        int abstained = v->abstained;
        if (abstained && v->abstain_json) { /* most files abstain: one object per file, shared */
            if (json_array_append(votes, v->abstain_json)) {
                json_decref(votes);
                return NULL;
            }
            continue;
        }
        json_t *vote = json_object();
        /* the file's name: the set's string, shared (strings are not changed once made) */
        if (!vote ||
            SET_LITERAL(vote, "file", v->file_json ? json_incref(v->file_json)
                                                   : vote_string(v->file)) ||
            SET_LITERAL(vote, "verdict", abstained ? json_null()
                                         : vote_string(policy_verdict_name(v->verdict))) ||
            SET_LITERAL(vote, "rule", vote_string(abstained ? NULL : v->rule)) ||
            SET_LITERAL(vote, "reason", vote_string(abstained ? NULL : v->reason)) ||
            json_array_append_new(votes, vote)) {
            json_decref(vote);
            json_decref(votes);
            return NULL;
        }
    }
    return votes;
}

void policy_worker_set_votes_json(policy_worker *w, int build)
{
    if (w)
        w->votes_json = build != 0;
}

size_t policy_worker_files_run_once(const policy_worker *w)
{
    size_t n = 0;
    for (size_t i = 0; w && i < w->set->count; i++)
        n += w->files[i].mode == FILE_ONCE;
    return n;
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
    mark_uncovered(w, action);
    begin_call(w);
    for (size_t i = 0; i < set->count; i++) {
        if (!set->files[i].has_validate || w->files[i].uncovered)
            continue; /* an uncovered file's validate is not run: it accepts */
        const char *file = set->files[i].name;
        run_ctx c;
        run_ctx_init(&c, w, i, action, RUN_VALIDATE, result);
        char message[400];
        if (run_policy(w, &c, message, sizeof message) != AR_OK) {
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
    int rc = worker_create_prepared(set, &w, err);
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
