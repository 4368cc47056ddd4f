/* hp_dp_worker.c - the threads besides the loop's: the inbound worker (a second thread that
 * receives on the ENI links, hp_dp.h says why) or workers 1..N-1 (each receiving on its own
 * socket of every veth link and translating with its own engines). All of them run only while
 * the loop's thread is inside hp_dp_poll, and are parked whenever it is not.
 */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

/* ---- parking ----------------------------------------------------------------------------
 * Python, which reads and changes tables and links between polls, never runs beside these
 * threads: hp_dp_poll sets run and wakes them, and before returning clears run, kicks each out
 * of epoll_wait and waits until each says it is parked. */
static void futex_wait(uint32_t *word, uint32_t expected)
{
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, HP_DP_MAX_WORKERS, NULL, NULL, 0);
}

/* A thread's wake-up eventfd. A write fails only when the counter is full (EAGAIN), and a
 * wake-up is pending then anyway; a read fails only when nothing is pending (EAGAIN), which is
 * what draining wants. Neither result needs handling. */
void hp_kick(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof one);
    (void)r;
}

void hp_drain_kick(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
}

/* Each worker advances its own engines' clocks (expiry); the loop does its own in hp_dp_tick. */
static void tick_shards(hp_dp *dp, hp_worker *wk, double now)
{
    if (dp->mt != HP_MT_WORKERS || now < wk->next_tick)
        return;
    for (unsigned g = 0; g < dp->n_groups; g++)
        hp_engine_advance(dp->groups[g].shard[wk->id], now);
    wk->next_tick = now + HP_DP_TICK;
}

static void *thread_main(void *arg)
{
    hp_worker *wk = arg;
    hp_dp *dp = (hp_dp *)((char *)(wk - wk->id) - offsetof(hp_dp, wk));
    struct epoll_event ev[64];
    int w = wk->id, sharded = dp->mt == HP_MT_WORKERS;
    for (;;) {
        if (!__atomic_load_n(&dp->run, __ATOMIC_SEQ_CST)) {
            if (__atomic_load_n(&dp->stop, __ATOMIC_SEQ_CST))
                return NULL;
            __atomic_store_n(&wk->parked, 1, __ATOMIC_SEQ_CST);
            futex_wait(&dp->run, 0);
            continue;
        }
        __atomic_store_n(&wk->parked, 0, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&dp->run, __ATOMIC_SEQ_CST))
            continue; /* parked again before doing anything */
        int ms = sharded ? (int)(HP_DP_TICK * 1000) : 1000;
        if (sharded) {
            __atomic_store_n(&wk->sleeping, 1, __ATOMIC_SEQ_CST);
            if (hp_handoff_pending(dp, w))
                ms = 0;
        }
        int n = epoll_wait(wk->epfd, ev, 64, ms);
        if (sharded)
            __atomic_store_n(&wk->sleeping, 0, __ATOMIC_SEQ_CST);
        if (n < 0 && errno != EINTR) {
            /* It cannot wait any more: say so and stop; hp_dp_poll returns
             * HP_POLL_WORKER_DOWN and the data path stops rather than half-working. */
            wk->fail_errno = errno;
            __atomic_store_n(&wk->failed, 1, __ATOMIC_SEQ_CST);
            __atomic_store_n(&wk->parked, 1, __ATOMIC_SEQ_CST);
            hp_kick(dp->wk[0].wake);
            return NULL;
        }
        double now = hp_dp_clock(dp);
        uint32_t got = 0;
        for (int i = 0; i < n; i++) {
            uint32_t u = ev[i].data.u32;
            if (u & KICK_TAG) { /* the kick: drain it, look at run again */
                hp_drain_kick(wk->wake);
            } else if (ev[i].events & (EPOLLERR | EPOLLHUP)) {
                if (hp_link_error(dp, w, dp->links[u]))
                    __atomic_store_n(&dp->links_down, 1, __ATOMIC_SEQ_CST);
            } else {
                got += hp_service(dp, w, dp->links[u], now);
            }
        }
        if (sharded) {
            got += hp_handoff_drain(dp, w, now);
            tick_shards(dp, wk, now);
        }
        if (got && __atomic_load_n(&dp->run, __ATOMIC_SEQ_CST))
            hp_spin(dp, hp_dp_clock(dp), w);
    }
}

void hp_in_unpark(hp_dp *dp)
{
    if (!dp->mt)
        return;
    __atomic_store_n(&dp->run, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&dp->run);
}

void hp_in_park(hp_dp *dp)
{
    if (!dp->mt)
        return;
    __atomic_store_n(&dp->run, 0, __ATOMIC_SEQ_CST);
    for (unsigned i = 1; i < dp->n_threads; i++)
        hp_kick(dp->wk[i].wake);
    for (unsigned i = 1; i < dp->n_threads; i++)
        while (!__atomic_load_n(&dp->wk[i].parked, __ATOMIC_SEQ_CST))
            sched_yield();
}

/* A thread's epoll set and kick eventfd (worker 0's set is the data path's own). */
static int worker_fds(hp_dp *dp, hp_worker *wk, char *err, size_t errlen)
{
    wk->epfd = wk->id ? epoll_create1(EPOLL_CLOEXEC) : dp->epfd;
    wk->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event kick = {.events = EPOLLIN, .data.u32 = KICK_TAG};
    if (wk->epfd < 0 || wk->wake < 0 || epoll_ctl(wk->epfd, EPOLL_CTL_ADD, wk->wake, &kick) < 0) {
        snprintf(err, errlen, "worker %d: %s", wk->id, strerror(errno));
        return -1;
    }
    return 0;
}

static void close_worker_fds(hp_dp *dp, hp_worker *wk)
{
    if (wk->epfd >= 0 && wk->epfd != dp->epfd)
        close(wk->epfd);
    if (wk->wake >= 0)
        close(wk->wake);
    wk->epfd = wk->wake = -1;
}

/* Start threads 1..n-1 parked: with one_each, thread i on cpus[i] (-1: any CPU), else every one
 * on cpus[0..ncpus) (none: any CPU). Signals stay the loop's (Python's). */
static int start_threads(hp_dp *dp, unsigned n, const int *cpus, int ncpus, int one_each,
                         char *err, size_t errlen)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = 0;
    for (unsigned i = 1; i < n && !rc; i++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int k = one_each ? (int)i : 0; k < (one_each ? (int)i + 1 : ncpus); k++)
            if (cpus && cpus[k] >= 0 && cpus[k] < CPU_SETSIZE)
                CPU_SET(cpus[k], &set);
        if (CPU_COUNT(&set))
            pthread_attr_setaffinity_np(&attr, sizeof set, &set);
        dp->wk[i].parked = 0;
        rc = pthread_create(&dp->wk[i].thread, &attr, thread_main, &dp->wk[i]);
        pthread_attr_destroy(&attr);
        if (!rc)
            dp->n_threads = i + 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        snprintf(err, errlen, "worker thread: %s", strerror(rc));
        return -1;
    }
    for (unsigned i = 1; i < n; i++)
        while (!__atomic_load_n(&dp->wk[i].parked, __ATOMIC_SEQ_CST))
            sched_yield(); /* parked until the first hp_dp_poll */
    return 0;
}

int hp_dp_start_inbound(hp_dp *dp, const int *cpus, int n, char *err, size_t errlen)
{
    if (dp->mt) {
        snprintf(err, errlen, "the inbound worker or workers run already");
        return -1;
    }
    hp_worker *wk = &dp->wk[1];
    wk->id = 1;
    if (worker_fds(dp, wk, err, errlen) < 0)
        goto fail;
    for (unsigned i = 0; i < dp->n_links; i++) { /* the ENI links move to the worker */
        hp_link *l = dp->links[i];
        l->pt[1] = &l->port;
        if (l->role != HP_ROLE_ENI || link_down(l))
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(dp->epfd, EPOLL_CTL_DEL, l->port.fd, NULL);
        if (epoll_ctl(wk->epfd, EPOLL_CTL_ADD, l->port.fd, &ev) < 0) {
            snprintf(err, errlen, "inbound worker: epoll_ctl: %s", strerror(errno));
            epoll_ctl(dp->epfd, EPOLL_CTL_ADD, l->port.fd, &ev);
            goto fail;
        }
    }
    dp->mt = HP_MT_INBOUND;
    dp->run = 0;
    if (start_threads(dp, 2, cpus, n, 0, err, errlen) < 0) {
        dp->mt = HP_MT_NONE;
        for (unsigned i = 0; i < dp->n_links; i++) {
            hp_link *l = dp->links[i];
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
            if (l->role == HP_ROLE_ENI && !link_down(l))
                epoll_ctl(dp->epfd, EPOLL_CTL_ADD, l->port.fd, &ev);
        }
        goto fail;
    }
    return 0;
fail:
    close_worker_fds(dp, wk);
    return -1;
}

int hp_dp_start_workers(hp_dp *dp, int n, const int *cpus, char *err, size_t errlen)
{
    if (dp->mt) {
        snprintf(err, errlen, "the inbound worker or workers run already");
        return -1;
    }
    if (n < 2 || n > HP_DP_MAX_WORKERS) {
        snprintf(err, errlen, "workers: %d; from 2 to %d", n, HP_DP_MAX_WORKERS);
        return -1;
    }
    if (dp->n_links || dp->n_groups) {
        snprintf(err, errlen, "workers are started before any group or link is added");
        return -1;
    }
    dp->mt = HP_MT_WORKERS;
    dp->n_threads = (unsigned)n; /* the steering's modulus from here on */
    for (int i = 0; i < n; i++) {
        dp->wk[i].id = i;
        if (worker_fds(dp, &dp->wk[i], err, errlen) < 0)
            goto fail;
    }
    if (hp_steer_setup(dp, err, errlen) < 0)
        goto fail;
    dp->n_threads = 1;
    dp->run = 0;
    if (start_threads(dp, (unsigned)n, cpus, n, 1, err, errlen) < 0)
        goto fail_threads;
    return 0;
fail_threads:
    hp_stop_threads(dp);
fail:
    for (int i = 0; i < n; i++)
        close_worker_fds(dp, &dp->wk[i]);
    hp_steer_free(dp);
    dp->mt = HP_MT_NONE;
    dp->n_threads = 1;
    return -1;
}

void hp_stop_threads(hp_dp *dp)
{
    if (dp->n_threads <= 1)
        return;
    __atomic_store_n(&dp->stop, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&dp->run, 0, __ATOMIC_SEQ_CST);
    futex_wake_all(&dp->run);
    for (unsigned i = 1; i < dp->n_threads; i++)
        hp_kick(dp->wk[i].wake);
    for (unsigned i = 1; i < dp->n_threads; i++) {
        pthread_join(dp->wk[i].thread, NULL);
        close_worker_fds(dp, &dp->wk[i]);
    }
    dp->n_threads = 1;
}

int hp_dp_break_worker(hp_dp *dp, int w)
{
    if (dp->mt != HP_MT_WORKERS || w < 1 || (unsigned)w >= dp->n_threads)
        return -1;
    close(dp->wk[w].epfd); /* its next epoll_wait fails: the path a real failure takes */
    dp->wk[w].epfd = -1;
    return 0;
}
