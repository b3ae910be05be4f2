/* autonomy.c - levels per connector action, from the config and runtime changes (see autonomy.h). */
#include "autonomy.h"

#include "audit.h"
#include "jsonw.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_KEY "autonomy"

struct autonomy {
    pthread_mutex_t lock;
    journal *journal;
    json_t *config;    /* pattern -> level */
    json_t *runtime;   /* pattern -> {level, by, at_ms} */
};

static const char *const levels[] = {"auto", "semi", "suggest"};

int autonomy_valid_level(const char *level)
{
    for (size_t i = 0; level && i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(level, levels[i]) == 0)
            return 1;
    return 0;
}

static const char *static_level(const char *level)
{
    for (size_t i = 0; level && i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(level, levels[i]) == 0)
            return levels[i];
    return "auto";
}

int autonomy_valid_pattern(const char *p)
{
    if (!p || !*p || strlen(p) > 160)
        return 0;
    if (strcmp(p, "*") == 0)
        return 1;
    const char *dot = strchr(p, '.');
    if (!dot || dot == p || !dot[1] || strchr(dot + 1, '.'))
        return 0;
    /* '*' only as the whole action part */
    const char *star = strchr(p, '*');
    return !star || (star == dot + 1 && star[1] == '\0');
}

/* How well does pattern fit connector.action? 3 exact, 2 "connector.*", 1 "*", 0 no. */
static int fit(const char *pattern, const char *connector, const char *action)
{
    if (strcmp(pattern, "*") == 0)
        return 1;
    size_t cl = strlen(connector);
    if (strncmp(pattern, connector, cl) != 0 || pattern[cl] != '.')
        return 0;
    const char *rest = pattern + cl + 1;
    if (strcmp(rest, "*") == 0)
        return 2;
    return strcmp(rest, action) == 0 ? 3 : 0;
}

int autonomy_open(const json_t *config_levels, journal *j, autonomy **out, ar_error *err)
{
    autonomy *a = calloc(1, sizeof *a);
    if (!a)
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    pthread_mutex_init(&a->lock, NULL);
    a->journal = j;
    a->config = config_levels ? json_deep_copy(config_levels) : json_object();
    a->runtime = NULL;
    journal_read *r;
    if (journal_read_begin(j, &r, NULL) == AR_OK) {
        const void *val;
        size_t len;
        if (journal_get(r, JDB_META, META_KEY, strlen(META_KEY), &val, &len) == AR_OK)
            a->runtime = json_loadb(val, len, 0, NULL);
        journal_read_end(r);
    }
    if (!json_is_object(a->runtime)) {
        json_decref(a->runtime);
        a->runtime = json_object();
    }
    if (!a->config || !a->runtime) {
        autonomy_free(a);
        return ar_error_set(err, AR_E_NOMEM, "internal", "out of memory");
    }
    *out = a;
    return AR_OK;
}

void autonomy_free(autonomy *a)
{
    if (!a)
        return;
    json_decref(a->config);
    json_decref(a->runtime);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* The best fit among one table's patterns; *score its fit. */
static const char *best(const json_t *table, int runtime, const char *connector, const char *action, int *score)
{
    const char *found = NULL, *pattern;
    json_t *v;
    *score = 0;
    json_object_foreach((json_t *)table, pattern, v) {
        int f = fit(pattern, connector, action);
        if (f > *score) {
            *score = f;
            found = json_string_value(runtime ? json_object_get(v, "level") : v);
        }
    }
    return found;
}

const char *autonomy_level(autonomy *a, const char *connector, const char *action)
{
    int rs, cs;
    pthread_mutex_lock(&a->lock);
    const char *r = best(a->runtime, 1, connector, action, &rs);
    const char *c = best(a->config, 0, connector, action, &cs);
    /* The more specific pattern wins; at equal fit, the operator's runtime change. */
    const char *level = rs >= cs && r ? r : c;
    const char *out = static_level(level);
    pthread_mutex_unlock(&a->lock);
    return out;
}

int autonomy_set(autonomy *a, const char *pattern, const char *level, const char *who, ar_error *err)
{
    if (!autonomy_valid_pattern(pattern))
        return ar_error_set(err, AR_E_INVALID, "invalid_autonomy", "pattern \"%s\" must be \"connector.action\", "
                            "\"connector.*\" or \"*\"", pattern ? pattern : "");
    if (level && !autonomy_valid_level(level))
        return ar_error_set(err, AR_E_INVALID, "invalid_autonomy", "level \"%s\" must be auto, semi or suggest", level);
    pthread_mutex_lock(&a->lock);
    json_t *next = json_deep_copy(a->runtime);
    if (level)
        json_object_set_new(next, pattern, json_pack("{s:s, s:s, s:I}", "level", level, "by", who,
                                                     "at_ms", (json_int_t)ar_now_ms()));
    else
        json_object_del(next, pattern);
    char *text = jsonw_dumps(next, JSON_COMPACT | JSON_SORT_KEYS);
    journal_batch *b = journal_batch_new();
    int rc = AR_E_NOMEM;
    if (text && b) {
        journal_batch_put(b, JDB_META, META_KEY, strlen(META_KEY), text, strlen(text));
        audit_batch_append(b, "autonomy_changed", NULL, json_pack("{s:s, s:o, s:s}", "pattern", pattern, "level",
                           level ? json_string(level) : json_null(), "by", who ? who : "unknown"));
        rc = journal_commit(a->journal, b, err);
    }
    if (rc == AR_OK) {
        json_decref(a->runtime);
        a->runtime = next;
        next = NULL;
    }
    pthread_mutex_unlock(&a->lock);
    json_decref(next);
    free(text);
    journal_batch_free(b);
    if (rc == AR_E_NOMEM)
        ar_error_set(err, rc, "internal", "out of memory");
    return rc;
}

json_t *autonomy_view(autonomy *a)
{
    pthread_mutex_lock(&a->lock);
    json_t *v = json_pack("{s:O, s:O, s:s}", "config", a->config, "runtime", a->runtime, "default", "auto");
    pthread_mutex_unlock(&a->lock);
    return v;
}
