/* hp_dp_worker.c - the inbound worker: a second thread that receives on the ENI links while
 * hp_dp_poll runs (hp_dp.h says why), parked whenever it does not.
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

/* ---- the inbound worker ---------------------------------------------------------------------
 * See hp_dp.h. The worker runs only while the loop's thread is inside hp_dp_poll (Python,
 * which reads and changes tables and links between polls, never runs beside it): hp_dp_poll
 * sets in_run and wakes it, and before returning clears in_run, kicks it out of epoll_wait
 * and waits until it says it is parked. */
static void futex_wait(uint32_t *word, uint32_t expected)
{
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The worker's wake-up eventfd. A write fails only when the counter is full (EAGAIN), and a
 * wake-up is pending then anyway; a read fails only when nothing is pending (EAGAIN), which is
 * what draining wants. Neither result needs handling. */
static void kick(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof one);
    (void)r;
}

static void drain(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
}

static void *inbound_worker(void *arg)
{
    hp_dp *dp = arg;
    struct epoll_event ev[64];
    for (;;) {
        if (!__atomic_load_n(&dp->in_run, __ATOMIC_SEQ_CST)) {
            if (__atomic_load_n(&dp->in_stop, __ATOMIC_SEQ_CST))
                return NULL;
            __atomic_store_n(&dp->in_parked, 1, __ATOMIC_SEQ_CST);
            futex_wait(&dp->in_run, 0);
            continue;
        }
        __atomic_store_n(&dp->in_parked, 0, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&dp->in_run, __ATOMIC_SEQ_CST))
            continue; /* parked again before doing anything */
        int n = epoll_wait(dp->in_epfd, ev, 64, 1000);
        double now = hp_dp_clock(dp);
        uint32_t got = 0;
        for (int i = 0; i < n; i++) {
            uint32_t u = ev[i].data.u32;
            if (u == WATCH_TAG) { /* the kick: drain it, look at in_run again */
                drain(dp->in_wake);
            } else if (ev[i].events & (EPOLLERR | EPOLLHUP)) {
                if (hp_link_error(dp, dp->links[u]))
                    __atomic_store_n(&dp->in_links_down, 1, __ATOMIC_SEQ_CST);
            } else {
                got += hp_service(dp, dp->links[u], now);
            }
        }
        if (got && __atomic_load_n(&dp->in_run, __ATOMIC_SEQ_CST))
            hp_spin(dp, hp_dp_clock(dp), 1);
    }
}

void hp_in_unpark(hp_dp *dp)
{
    if (!dp->mt)
        return;
    __atomic_store_n(&dp->in_run, 1, __ATOMIC_SEQ_CST);
    futex_wake(&dp->in_run);
}

void hp_in_park(hp_dp *dp)
{
    if (!dp->mt)
        return;
    __atomic_store_n(&dp->in_run, 0, __ATOMIC_SEQ_CST);
    kick(dp->in_wake);
    while (!__atomic_load_n(&dp->in_parked, __ATOMIC_SEQ_CST))
        sched_yield();
}

int hp_dp_start_inbound(hp_dp *dp, const int *cpus, int n, char *err, size_t errlen)
{
    if (dp->mt) {
        snprintf(err, errlen, "the inbound worker is running already");
        return -1;
    }
    dp->in_epfd = epoll_create1(EPOLL_CLOEXEC);
    dp->in_wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event kick = {.events = EPOLLIN, .data.u32 = WATCH_TAG};
    if (dp->in_epfd < 0 || dp->in_wake < 0 ||
        epoll_ctl(dp->in_epfd, EPOLL_CTL_ADD, dp->in_wake, &kick) < 0) {
        snprintf(err, errlen, "inbound worker: %s", strerror(errno));
        goto fail;
    }
    for (unsigned i = 0; i < dp->n_links; i++) { /* the ENI links move to the worker */
        hp_link *l = dp->links[i];
        if (l->role != HP_ROLE_ENI || l->down)
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(dp->epfd, EPOLL_CTL_DEL, l->port.fd, NULL);
        if (epoll_ctl(dp->in_epfd, EPOLL_CTL_ADD, l->port.fd, &ev) < 0) {
            snprintf(err, errlen, "inbound worker: epoll_ctl: %s", strerror(errno));
            epoll_ctl(dp->epfd, EPOLL_CTL_ADD, l->port.fd, &ev);
            goto fail;
        }
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (n > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int i = 0; i < n; i++)
            if (cpus[i] >= 0 && cpus[i] < CPU_SETSIZE)
                CPU_SET(cpus[i], &set);
        pthread_attr_setaffinity_np(&attr, sizeof set, &set);
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals are the loop's (Python's) */
    dp->in_parked = 0;
    dp->in_run = 0;
    dp->mt = 1;
    int rc = pthread_create(&dp->in_thread, &attr, inbound_worker, dp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        dp->mt = 0;
        snprintf(err, errlen, "inbound worker: %s", strerror(rc));
        for (unsigned i = 0; i < dp->n_links; i++) {
            hp_link *l = dp->links[i];
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
            if (l->role == HP_ROLE_ENI && !l->down)
                epoll_ctl(dp->epfd, EPOLL_CTL_ADD, l->port.fd, &ev);
        }
        goto fail;
    }
    while (!__atomic_load_n(&dp->in_parked, __ATOMIC_SEQ_CST))
        sched_yield(); /* parked until the first hp_dp_poll */
    return 0;
fail:
    if (dp->in_epfd >= 0)
        close(dp->in_epfd);
    if (dp->in_wake >= 0)
        close(dp->in_wake);
    dp->in_epfd = dp->in_wake = -1;
    return -1;
}

void hp_stop_inbound(hp_dp *dp)
{
    if (!dp->mt)
        return;
    __atomic_store_n(&dp->in_stop, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&dp->in_run, 0, __ATOMIC_SEQ_CST);
    futex_wake(&dp->in_run);
    kick(dp->in_wake);
    pthread_join(dp->in_thread, NULL);
    dp->mt = 0;
    close(dp->in_epfd);
    close(dp->in_wake);
    dp->in_epfd = dp->in_wake = -1;
}
