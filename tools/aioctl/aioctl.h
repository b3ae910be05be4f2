/*
 * aioctl.h - what the parts of the aioctl CLI share: its exit codes.
 *
 * The exit codes are part of aioctl's interface (scripts branch on them); they are listed in
 * `aioctl --help` and at the top of aioctl.c. Never renumber them.
 */
#ifndef AIOCTL_H
#define AIOCTL_H

enum aioctl_exit {
    AIOCTL_OK = 0,           /* done; the action SUCCEEDED or was SUGGESTED, or was accepted
                                (cancel: it is CANCELLED) */
    AIOCTL_NOT_SUCCEEDED = 1,/* the action ended in DENIED, FAILED, REJECTED, EXPIRED, CANCELLED,
                                UNKNOWN_OUTCOME */
    AIOCTL_USAGE = 2,        /* bad command line: unknown flag, bad number, invalid INPUT_JSON */
    AIOCTL_UNREACHABLE = 3,  /* the daemon could not be reached or did not answer in time */
    AIOCTL_REFUSED = 4,      /* the daemon answered with an error (4xx/5xx) or an unreadable reply */
    AIOCTL_PENDING = 5,      /* the action is not finished (--wait ran out, PENDING_APPROVAL, a
                                cancel only requested, ...) */
    AIOCTL_HEAD_UNCHECKED = 6 /* audit verify --head: the trail kept is sound, but the kept head
                                is older than it (cut by retention) and could not be checked */
};

#endif
