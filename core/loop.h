/*
 * loop.h - a small epoll event loop with timers and cross-thread posting.
 *
 * The scheduler thread runs one loop; the sandbox supervisor registers its sockets on it.
 * Every function except loop_post() and loop_stop() must be called from the loop's own thread
 * (or before loop_run starts). Callbacks run on the loop thread.
 */
#ifndef LOOP_H
#define LOOP_H

#include <stddef.h>
#include <stdint.h>

typedef struct loop loop_t;

typedef void (*loop_io_cb)(loop_t *loop, int fd, uint32_t events, void *arg);
typedef void (*loop_timer_cb)(loop_t *loop, void *arg);
typedef void (*loop_post_cb)(loop_t *loop, void *arg);

/* Create a loop; *out owned by the caller, freed with loop_free. */
int loop_new(loop_t **out);
void loop_free(loop_t *loop);

/* Watch fd for EPOLLIN/EPOLLOUT/... (EPOLLERR|EPOLLHUP are always reported). The loop does
 * not own fd: remove it with loop_del_fd before closing it. */
int loop_add_fd(loop_t *loop, int fd, uint32_t events, loop_io_cb cb, void *arg);
int loop_mod_fd(loop_t *loop, int fd, uint32_t events);
int loop_del_fd(loop_t *loop, int fd);

/* One-shot timer at ar_mono_ms() time due_ms. Returns an id > 0 (0 on allocation failure). */
uint64_t loop_timer_add(loop_t *loop, int64_t due_ms, loop_timer_cb cb, void *arg);
/* Cancel a pending timer; unknown or fired ids are ignored. */
void loop_timer_cancel(loop_t *loop, uint64_t id);
/* Cancel every timer whose callback is cb, in one pass (for a shutdown that lets go of many at
 * once). Returns how many. */
size_t loop_timer_cancel_all(loop_t *loop, loop_timer_cb cb);

/* Thread-safe: run cb(arg) on the loop thread soon, in posting order. 0, AR_E_NOMEM, or
 * AR_E_CLOSED after loop_close (then cb never runs and arg stays the caller's). */
int loop_post(loop_t *loop, loop_post_cb cb, void *arg);
/* After the loop thread has returned from loop_run for good: refuse later posts, and run the
 * ones that arrived after the loop's last look, on the calling thread, so that no hand-off is
 * lost or leaked. */
void loop_close(loop_t *loop);

/* Run until loop_stop. Returns 0. */
int loop_run(loop_t *loop);
/* Thread-safe. */
void loop_stop(loop_t *loop);

#endif
