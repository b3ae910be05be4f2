/*
 * loop.c - epoll event loop with a timer heap and an eventfd-driven post queue (see loop.h).
 */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "ar.h"

typedef struct watch {
    int fd;
    loop_io_cb cb;
    void *arg;
    struct watch *next;
} watch;

typedef struct timer {
    int64_t due_ms;
    uint64_t id;
    loop_timer_cb cb;
    void *arg;
} timer;

typedef struct post {
    loop_post_cb cb;
    void *arg;
    struct post *next;
} post;

struct loop {
    int epfd;
    int wakefd;
    int stopping;            /* written under post_lock, read by the loop thread */
    int closed;              /* loop_close: later posts are refused (under post_lock) */
    watch *watches;          /* few fds per loop: a list is enough */
    timer *heap;             /* min-heap on (due_ms, id) */
    size_t n_timers, cap_timers;
    uint64_t next_timer_id;
    pthread_mutex_t post_lock;
    post *post_head, *post_tail;
};

int loop_new(loop_t **out)
{
    loop_t *l = calloc(1, sizeof *l);
    if (!l)
        return AR_E_NOMEM;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->epfd < 0 || l->wakefd < 0)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) != 0)
        goto fail;
    pthread_mutex_init(&l->post_lock, NULL);
    l->next_timer_id = 1;
    *out = l;
    return AR_OK;
fail:
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->wakefd >= 0)
        close(l->wakefd);
    free(l);
    return AR_E_IO;
}

void loop_free(loop_t *l)
{
    if (!l)
        return;
    for (watch *w = l->watches, *n; w; w = n) {
        n = w->next;
        free(w);
    }
    for (post *p = l->post_head, *n; p; p = n) {
        n = p->next;
        free(p);
    }
    free(l->heap);
    pthread_mutex_destroy(&l->post_lock);
    close(l->epfd);
    close(l->wakefd);
    free(l);
}

static watch *find_watch(loop_t *l, int fd)
{
    for (watch *w = l->watches; w; w = w->next)
        if (w->fd == fd)
            return w;
    return NULL;
}

int loop_add_fd(loop_t *l, int fd, uint32_t events, loop_io_cb cb, void *arg)
{
    if (find_watch(l, fd))
        return AR_E_EXISTS;
    watch *w = calloc(1, sizeof *w);
    if (!w)
        return AR_E_NOMEM;
    *w = (watch){.fd = fd, .cb = cb, .arg = arg, .next = l->watches};
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        free(w);
        return AR_E_IO;
    }
    l->watches = w;
    return AR_OK;
}

int loop_mod_fd(loop_t *l, int fd, uint32_t events)
{
    watch *w = find_watch(l, fd);
    if (!w)
        return AR_E_NOTFOUND;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) == 0 ? AR_OK : AR_E_IO;
}

int loop_del_fd(loop_t *l, int fd)
{
    for (watch **pp = &l->watches; *pp; pp = &(*pp)->next) {
        if ((*pp)->fd != fd)
            continue;
        watch *w = *pp;
        *pp = w->next;
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
        free(w);
        return AR_OK;
    }
    return AR_E_NOTFOUND;
}

/* ---- timers ---------------------------------------------------------------------------- */

static int timer_less(const timer *a, const timer *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->id < b->id);
}

static void heap_swap(timer *h, size_t a, size_t b)
{
    timer t = h[a];
    h[a] = h[b];
    h[b] = t;
}

static void heap_up(timer *h, size_t i)
{
    while (i > 0 && timer_less(&h[i], &h[(i - 1) / 2])) {
        heap_swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(timer *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && timer_less(&h[l], &h[m]))
            m = l;
        if (r < n && timer_less(&h[r], &h[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(h, i, m);
        i = m;
    }
}

static void heap_remove_at(loop_t *l, size_t i)
{
    l->n_timers--;
    if (i == l->n_timers)
        return;
    l->heap[i] = l->heap[l->n_timers];
    heap_down(l->heap, l->n_timers, i);
    heap_up(l->heap, i);
}

uint64_t loop_timer_add(loop_t *l, int64_t due_ms, loop_timer_cb cb, void *arg)
{
    if (l->n_timers == l->cap_timers) {
        size_t cap = l->cap_timers ? l->cap_timers * 2 : 64;
        timer *h = realloc(l->heap, cap * sizeof *h);
        if (!h)
            return 0;
        l->heap = h;
        l->cap_timers = cap;
    }
    uint64_t id = l->next_timer_id++;
    l->heap[l->n_timers] = (timer){.due_ms = due_ms, .id = id, .cb = cb, .arg = arg};
    heap_up(l->heap, l->n_timers++);
    return id;
}

size_t loop_timer_cancel_all(loop_t *l, loop_timer_cb cb)
{
    /* One pass and one heapify: cancelling many timers one by one would be quadratic. */
    size_t kept = 0, n = l->n_timers;
    for (size_t i = 0; i < n; i++)
        if (l->heap[i].cb != cb)
            l->heap[kept++] = l->heap[i];
    l->n_timers = kept;
    for (size_t i = kept / 2; i-- > 0;)
        heap_down(l->heap, kept, i);
    return n - kept;
}

void loop_timer_cancel(loop_t *l, uint64_t id)
{
    /* Linear search: cancels are rare next to the work each timer guards. */
    for (size_t i = 0; i < l->n_timers; i++) {
        if (l->heap[i].id == id) {
            heap_remove_at(l, i);
            return;
        }
    }
}

static void run_due_timers(loop_t *l)
{
    int64_t now = ar_mono_ms();
    while (l->n_timers > 0 && l->heap[0].due_ms <= now) {
        timer t = l->heap[0];
        heap_remove_at(l, 0);
        t.cb(l, t.arg);
    }
}

static int next_timeout_ms(loop_t *l)
{
    if (l->n_timers == 0)
        return -1;
    int64_t d = l->heap[0].due_ms - ar_mono_ms();
    if (d < 0)
        return 0;
    return d > 60000 ? 60000 : (int)d;
}

/* ---- posting ----------------------------------------------------------------------------- */

int loop_post(loop_t *l, loop_post_cb cb, void *arg)
{
    post *p = malloc(sizeof *p);
    if (!p)
        return AR_E_NOMEM;
    *p = (post){.cb = cb, .arg = arg, .next = NULL};
    pthread_mutex_lock(&l->post_lock);
    if (l->closed) {
        pthread_mutex_unlock(&l->post_lock);
        free(p);
        return AR_E_CLOSED;
    }
    if (l->post_tail)
        l->post_tail->next = p;
    else
        l->post_head = p;
    l->post_tail = p;
    pthread_mutex_unlock(&l->post_lock);
    uint64_t one = 1;
    ssize_t rc = write(l->wakefd, &one, sizeof one);
    (void)rc; /* EAGAIN means a wakeup is already pending */
    return AR_OK;
}

static void run_posts(loop_t *l)
{
    uint64_t n;
    ssize_t rc = read(l->wakefd, &n, sizeof n);
    (void)rc;
    pthread_mutex_lock(&l->post_lock);
    post *p = l->post_head;
    l->post_head = l->post_tail = NULL;
    pthread_mutex_unlock(&l->post_lock);
    while (p) {
        post *next = p->next;
        p->cb(l, p->arg);
        free(p);
        p = next;
    }
}

void loop_close(loop_t *l)
{
    pthread_mutex_lock(&l->post_lock);
    l->closed = 1;
    post *p = l->post_head;
    l->post_head = l->post_tail = NULL;
    pthread_mutex_unlock(&l->post_lock);
    while (p) {
        post *next = p->next;
        p->cb(l, p->arg);
        free(p);
        p = next;
    }
}

void loop_stop(loop_t *l)
{
    pthread_mutex_lock(&l->post_lock);
    l->stopping = 1;
    pthread_mutex_unlock(&l->post_lock);
    uint64_t one = 1;
    ssize_t rc = write(l->wakefd, &one, sizeof one);
    (void)rc;
}

static int is_stopping(loop_t *l)
{
    pthread_mutex_lock(&l->post_lock);
    int s = l->stopping;
    pthread_mutex_unlock(&l->post_lock);
    return s;
}

int loop_run(loop_t *l)
{
    enum { BATCH = 64 };
    struct epoll_event evs[BATCH];
    while (!is_stopping(l)) {
        int n = epoll_wait(l->epfd, evs, BATCH, next_timeout_ms(l));
        if (n < 0 && errno != EINTR)
            return AR_E_IO;
        for (int i = 0; i < n; i++) {
            watch *w = evs[i].data.ptr;
            if (!w) {
                run_posts(l);
                continue;
            }
            /* A callback earlier in this batch may have removed a later watch: look it up
             * again before calling it. (If its memory was reused by a new watch, that watch
             * sees one spurious wakeup; handlers use non-blocking fds and tolerate it.) */
            watch *live = l->watches;
            while (live && live != w)
                live = live->next;
            if (live && live->cb)
                live->cb(l, live->fd, evs[i].events, live->arg);
        }
        run_due_timers(l);
    }
    /* Stopping: still run what was posted so that no hand-off is silently dropped. */
    run_posts(l);
    pthread_mutex_lock(&l->post_lock);
    l->stopping = 0;
    pthread_mutex_unlock(&l->post_lock);
    return AR_OK;
}
