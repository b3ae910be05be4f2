/*
 * policy_cmd.h - `aioctl policy test` and `aioctl policy eval`: the policy files on their own,
 * without a daemon (they only read the policy directory, through core/policy.h).
 *
 * Usage (the lines for `aioctl --help`):
 *
 *   policy test [DIR] [--config FILE]
 *       Run the policy tests (*_test.lua) in DIR (default: ./policies) against the policies
 *       there. With --config FILE: the config's policy_dir and policy limits and defaults
 *       instead. One line per test, "PASS file: name" or "FAIL file: name: what differs", then
 *       "N passed, M failed". With --json: the whole report as JSON.
 *   policy eval ACTION_JSON [DIR] [--config FILE] [--counter NAME=VALUE]...
 *       Decide one action now with the policies in DIR (default: ./policies; --config as for
 *       test): the verdict, the policy and rule that made it, and every policy's vote.
 *       --counter gives what ctx.counter(NAME) returns (declared counters not given read 0).
 *       ACTION_JSON is what a policy sees, e.g. '{"connector":"shop","action":"refund",
 *       "effect":"irreversible","input":{"amount":250}}'; '-' reads it from stdin. With
 *       --json: the decision as JSON.
 *
 * Exit codes (aioctl.h):
 *   0  test: every test passed. eval: decided (whatever the verdict).
 *   1  test: at least one test failed.
 *   2  usage error (unknown subcommand or option, too many arguments, ACTION_JSON not a JSON
 *      object, DIR and --config both given), a directory or config that cannot be read, a
 *      policy or test file that is invalid (the message names the file and the line, or the
 *      test's number and name), no test files in DIR (test), or any other error.
 */
#ifndef AIOCTL_POLICY_CMD_H
#define AIOCTL_POLICY_CMD_H

/* Run `aioctl policy ...`: argv[0] is "test" or "eval", the rest its arguments (argc counts
 * them all; argv is borrowed). json_output: print JSON instead of text (--json, also accepted
 * among the arguments). Prints results on stdout and errors on stderr; returns the exit
 * code. */
int aioctl_policy_command(int argc, char **argv, int json_output);

#endif
