/*
 * daemon.h - the aiorun runtime: wires config, journal, policies, scheduler and API together.
 *
 * The one runtime struct that holds every long-lived object lives in daemon.c; nothing else in
 * the daemon keeps global mutable state.
 */
#ifndef DAEMON_H
#define DAEMON_H

#include "ar.h"

/* Load the config, open the journal, load the policies, start the sandboxes, recover unfinished
 * work, listen, and serve until SIGINT or SIGTERM; then stop cleanly. Returns the process exit
 * status (0 after a clean stop, 1 when start-up failed: the reason is logged). */
int daemon_run(const char *config_path);

/* Validate a config file and its policies without starting anything. Prints the verdict;
 * returns 0 when valid, 1 otherwise. */
int daemon_check_config(const char *config_path);

#endif
