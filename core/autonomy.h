/*
 * autonomy.h - graded autonomy: how far aiorun may act on its own, per connector action.
 *
 * Levels: "auto" keeps the policies' verdict; "semi" turns allow into approve (a human
 * approves everything); "suggest" turns allow and approve into SUGGESTED (recorded, never
 * executed). Deny always stands. Patterns are "connector.action", "connector.*" or "*"; the most
 * specific match wins (an exact name, then the longest wildcard pattern). The config's
 * "autonomy" object sets them; an operator changes them at runtime (journaled in JDB_META under
 * "autonomy", and those changes win over the config's). With no pattern at all, every action is
 * "auto": the policies alone decide.
 *
 * Thread-safe: HTTP threads and decision workers read it while an operator changes it.
 */
#ifndef AUTONOMY_H
#define AUTONOMY_H

#include <jansson.h>

#include "ar.h"
#include "journal.h"

typedef struct autonomy autonomy;

/* Load from the config's "autonomy" object (borrowed, may be NULL) and the runtime changes in
 * the journal. *out owned by the caller (autonomy_free). */
int autonomy_open(const json_t *config_levels, journal *j, autonomy **out, ar_error *err);
void autonomy_free(autonomy *a);

/* "auto", "semi" or "suggest" for connector.action (static strings). */
const char *autonomy_level(autonomy *a, const char *connector, const char *action);

/* Set (or, with level NULL, remove) a runtime level for pattern, journaled before it applies.
 * AR_E_INVALID (code "invalid_autonomy") for a bad pattern or level. */
int autonomy_set(autonomy *a, const char *pattern, const char *level, const char *who, ar_error *err);

/* {"config": {...}, "runtime": {pattern: {level, by, at_ms}}, "default": "auto"} (new ref). */
json_t *autonomy_view(autonomy *a);

/* Is this a level name? */
int autonomy_valid_level(const char *level);
/* Is this a pattern: "connector.action", "connector.*" or "*"? */
int autonomy_valid_pattern(const char *pattern);

#endif
