/* test_loop.c - the scheduler's event loop: timers, fds, cross-thread posts, stop. */
#include "test_main.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "ar.h"
#include "loop.h"

typedef struct {
    int order[16];
    int n;
} trace;

typedef struct {
    trace *t;
    int tag;
    int stop_after;
} timer_arg;

static void record_timer(loop_t *l, void *arg)
{
    timer_arg *a = arg;
    a->t->order[a->t->n++] = a->tag;
    if (a->stop_after)
        loop_stop(l);
}

static void timers_fire_in_due_order(void **state)
{
    (void)state;
    loop_t *l;
    assert_int_equal(loop_new(&l), AR_OK);
    trace t = {0};
    int64_t now = ar_mono_ms();
    timer_arg a3 = {&t, 3, 1}, a1 = {&t, 1, 0}, a2 = {&t, 2, 0}, ax = {&t, 99, 0};
    assert_true(loop_timer_add(l, now + 30, record_timer, &a3) > 0);
    assert_true(loop_timer_add(l, now + 10, record_timer, &a1) > 0);
    uint64_t cancelled = loop_timer_add(l, now + 15, record_timer, &ax);
    assert_true(loop_timer_add(l, now + 20, record_timer, &a2) > 0);
    loop_timer_cancel(l, cancelled);
    assert_int_equal(loop_run(l), AR_OK);
    assert_int_equal(t.n, 3);
    assert_int_equal(t.order[0], 1);
    assert_int_equal(t.order[1], 2);
    assert_int_equal(t.order[2], 3);
    loop_free(l);
}

static void other_timer(loop_t *l, void *arg)
{
    record_timer(l, arg);
}

/* Cancelling every timer of one callback at once keeps the others, in due order. */
static void cancel_all_of_one_callback(void **state)
{
    (void)state;
    loop_t *l;
    assert_int_equal(loop_new(&l), AR_OK);
    trace t = {0};
    int64_t now = ar_mono_ms();
    timer_arg gone = {&t, 99, 0}, keep[5];
    for (int i = 0; i < 20; i++)
        loop_timer_add(l, now + 5 + (i * 7) % 40, record_timer, &gone);
    for (int i = 0; i < 5; i++) {
        keep[i] = (timer_arg){&t, i + 1, i == 4};
        loop_timer_add(l, now + 10 + 5 * i, other_timer, &keep[i]);
    }
    assert_int_equal(loop_timer_cancel_all(l, record_timer), 20);
    assert_int_equal(loop_timer_cancel_all(l, record_timer), 0);
    assert_int_equal(loop_run(l), AR_OK);
    assert_int_equal(t.n, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(t.order[i], i + 1);
    loop_free(l);
}

typedef struct {
    loop_t *l;
    int count;
    pthread_t poster;
} post_state;

static void count_post(loop_t *l, void *arg)
{
    post_state *s = arg;
    if (++s->count == 1000)
        loop_stop(l);
}

static void *post_many(void *arg)
{
    post_state *s = arg;
    for (int i = 0; i < 1000; i++)
        assert_int_equal(loop_post(s->l, count_post, s), AR_OK);
    return NULL;
}

static void posts_from_another_thread_all_run(void **state)
{
    (void)state;
    post_state s = {0};
    assert_int_equal(loop_new(&s.l), AR_OK);
    pthread_create(&s.poster, NULL, post_many, &s);
    assert_int_equal(loop_run(s.l), AR_OK);
    pthread_join(s.poster, NULL);
    assert_int_equal(s.count, 1000);
    loop_free(s.l);
}

typedef struct {
    int fds[2];
    int reads;
    char got[8];
} pipe_state;

static void on_readable(loop_t *l, int fd, uint32_t events, void *arg)
{
    pipe_state *p = arg;
    (void)events;
    ssize_t n = read(fd, p->got, sizeof p->got - 1);
    assert_true(n > 0);
    p->got[n] = '\0';
    p->reads++;
    /* Removing the watch from inside its own callback must be safe. */
    assert_int_equal(loop_del_fd(l, fd), AR_OK);
    loop_stop(l);
}

static void write_later(loop_t *l, void *arg)
{
    (void)l;
    pipe_state *p = arg;
    assert_int_equal(write(p->fds[1], "ping", 4), 4);
}

static void fd_readiness_calls_back_and_can_be_removed(void **state)
{
    (void)state;
    loop_t *l;
    pipe_state p = {0};
    assert_int_equal(loop_new(&l), AR_OK);
    assert_int_equal(pipe(p.fds), 0);
    assert_int_equal(loop_add_fd(l, p.fds[0], 0x001 /* EPOLLIN */, on_readable, &p), AR_OK);
    assert_int_equal(loop_add_fd(l, p.fds[0], 0x001, on_readable, &p), AR_E_EXISTS);
    assert_true(loop_timer_add(l, ar_mono_ms() + 5, write_later, &p) > 0);
    assert_int_equal(loop_run(l), AR_OK);
    assert_int_equal(p.reads, 1);
    assert_string_equal(p.got, "ping");
    assert_int_equal(loop_del_fd(l, p.fds[0]), AR_E_NOTFOUND);
    close(p.fds[0]);
    close(p.fds[1]);
    loop_free(l);
}

static void stop_before_run_returns_after_pending_posts(void **state)
{
    (void)state;
    post_state s = {0};
    assert_int_equal(loop_new(&s.l), AR_OK);
    assert_int_equal(loop_post(s.l, count_post, &s), AR_OK);
    loop_stop(s.l);
    assert_int_equal(loop_run(s.l), AR_OK);
    assert_int_equal(s.count, 1);
    loop_free(s.l);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(timers_fire_in_due_order),
    cmocka_unit_test(cancel_all_of_one_callback),
    cmocka_unit_test(posts_from_another_thread_all_run),
    cmocka_unit_test(fd_readiness_calls_back_and_can_be_removed),
    cmocka_unit_test(stop_before_run_returns_after_pending_posts),
};
AR_TEST_MAIN(tests, NULL, NULL)
