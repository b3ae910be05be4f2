/*
 * render.h - aioctl's human-readable output: an action as a short block, a list of actions and
 * the connectors as aligned tables.
 *
 * Every string that came from the daemon is printed with control characters replaced, so a
 * hostile reason or result cannot drive the terminal. All arguments are borrowed. Machine
 * output (--json) does not come through here: it is the daemon's JSON as received.
 */
#ifndef AIOCTL_RENDER_H
#define AIOCTL_RENDER_H

#include <stdio.h>
#include <jansson.h>

/* id, action, state, key, decision, attempts, result or error of one action object. */
void render_action(FILE *out, const json_t *action);

/* A table ID, STATE, CONNECTOR, ACTION, CREATED of an array of action objects. */
void render_action_table(FILE *out, const json_t *actions);

/* A table NAME, PLUGIN, VERSION, STATUS, SERVING, ACTIONS of an array of connector objects,
 * followed by the message of each connector that is refused or degraded. */
void render_connectors(FILE *out, const json_t *connectors);

/* Write s with control characters (and DEL) replaced by '?'. NULL writes nothing. */
void render_text(FILE *out, const char *s);

#endif
