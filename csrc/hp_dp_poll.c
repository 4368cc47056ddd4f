/* hp_dp_poll.c - the data path loop: wait (epoll), take what the links received, hand each
 * frame to ARP/NDP or its direction, flush, look a little longer (spin), run the timers.
 */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

#include <errno.h>
#include <linux/if_packet.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hp_csum.h"

#define HP_RING_ROUNDS 8 /* rounds of HP_TXQ frames per link per wakeup */
#ifndef HP_SPIN_S
/* keep looking this long after the last packet (see spin). 200 us, not 30: a 64-byte TCP
 * request/response through the lab takes 100-150 us on this project's 2-vCPU VM, so with 30 us
 * the loop slept between a request and its response and each paid a wakeup: rr p50 142-146 us
 * against 31-41 us with 200 us (benchmarks/RESULTS.md, issue 18), the idle data path's CPU,
 * connections and 64-byte UDP unchanged. */
#define HP_SPIN_S 200e-6
#endif
#define HP_SPIN_MAX_S 500e-6 /* and no longer than this before the next epoll_wait */

/* An IP frame for its direction (after the owner's check, or handed over by another worker). */
void hp_forward(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh, uint8_t *f,
                uint32_t len, int family, double now, int hops)
{
    if (l->role == HP_ROLE_ENI)
        hp_inbound(dp, w, l, vh, f, len, family, now);
    else
        hp_outbound(dp, w, l, vh, f, len, family, now, hops);
}

/* One frame received on link l by thread w: Ethernet checks, then ARP/NDP, or with workers the
 * owner's check, then its direction. */
void hp_rx_frame(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh, uint8_t *f,
                 uint32_t len, double now)
{
    hp_port *p = PORT(l, w);
    p->rx_packets++;
    p->rx_bytes += len;
    if (len < 14) {
        COUNT_DROP(dp, HP_D_RUNT);
        return;
    }
    int mcast = f[0] & 1;
    if (!mcast && !hp_eq_mac(f, l->mac)) {
        COUNT_DROP(dp, HP_D_NOT_OUR_MAC);
        return;
    }
    uint32_t type = hp_get16(f + 12);
    if (type == 0x0806) {
        lock(dp, &l->lock);
        hp_arp_input(dp, w, l, f, len, now);
        unlock(dp, &l->lock);
        return;
    }
    int family = type == 0x0800 ? 4 : type == 0x86DD ? 6 : 0;
    if (!family || len < 15 || f[14] >> 4 != family) {
        COUNT_DROP(dp, HP_D_NOT_IP);
        return;
    }
    /* NDP: ICMPv6 types 133-137 straight after the IPv6 header (RFC 4861 forbids nothing
     * else, but no neighbour of ours sends extension headers before it). */
    if (family == 6 && len >= 14 + 40 + 4 && f[14 + 6] == 58 && f[54] >= 133 && f[54] <= 137) {
        lock(dp, &l->lock);
        hp_ndp_input(dp, w, l, f, len, now);
        unlock(dp, &l->lock);
        return;
    }
    if (mcast) {
        COUNT_DROP(dp, HP_D_MULTICAST);
        return;
    }
    if (dp->mt == HP_MT_WORKERS) {
        uint32_t fl = (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) ? HP_FLAG_CSUM_PARTIAL : 0;
        int o = hp_owner(dp, w, l, f + 14, len - 14, family, fl, now);
        if (o != w) {
            hp_handoff(dp, w, o, l, vh, f, len, 0);
            return;
        }
    }
    hp_forward(dp, w, l, vh, f, len, family, now, 0);
}

/* Send what the links have queued. With the inbound worker, each thread flushes the links
 * it sends on (the worker: environment and inside links; the loop: ENI links), under their
 * locks; the batches point only into the caller's own frames. A worker flushes its own ports,
 * which nobody else touches. */
void hp_flush_all(hp_dp *dp, int w)
{
    for (unsigned i = 0; i < dp->n_links; i++) {
        hp_link *l = dp->links[i];
        if (dp->mt == HP_MT_WORKERS) {
            if (PORT(l, w)->ntx)
                hp_io_flush(PORT(l, w));
            continue;
        }
        if (dp->mt && (l->role == HP_ROLE_ENI) == w)
            continue;
        if (!__atomic_load_n(&l->port.ntx, __ATOMIC_RELAXED))
            continue;
        lock(dp, &l->lock);
        hp_io_flush(&l->port);
        unlock(dp, &l->lock);
    }
}

/* Take what one link has received: rounds of ring frames (and the super-packets they stand
 * for), or a batch of TAP reads. Sends are flushed before frames and buffers are reused, since
 * their iovecs point into them. */
uint32_t hp_service(hp_dp *dp, int w, hp_link *l, double now)
{
    uint32_t got = 0;
    hp_port *p = PORT(l, w);
    if (p->kind == HP_PORT_PACKET) {
        /* Rounds of up to HP_TXQ frames: take them, flush what they produced (the iovecs
         * point into the frames), give them back. A bounded number of rounds per call keeps
         * one busy link from starving the others (epoll is level-triggered: it comes back). */
        for (int round = 0; round < HP_RING_ROUNDS; round++) {
            uint32_t k = 0;
            for (; k < HP_TXQ; k++) {
                struct tpacket2_hdr *h = hp_io_ring_next(p);
                if (!h)
                    break;
                uint8_t *frame = (uint8_t *)h + h->tp_mac;
                struct virtio_net_hdr vh;
                if (h->tp_status & TP_STATUS_COPY) { /* a super-packet: whole on the queue */
                    if (p->nbig == HP_BIG_N) {
                        hp_flush_all(dp, w);
                        p->nbig = 0;
                    }
                    uint8_t *big;
                    int r = hp_io_recv_big(p, &big);
                    if (r < 0) {
                        p->rx_packets++;
                        COUNT_DROP(dp, HP_D_RX_TRUNCATED);
                        continue;
                    }
                    memcpy(&vh, big, HP_VNET_LEN);
                    hp_rx_frame(dp, w, l, &vh, big + HP_VNET_LEN, (uint32_t)r - HP_VNET_LEN, now);
                } else if (h->tp_snaplen < h->tp_len) {
                    p->rx_packets++;
                    COUNT_DROP(dp, HP_D_RX_TRUNCATED);
                } else {
                    memcpy(&vh, frame - HP_VNET_LEN, HP_VNET_LEN); /* PACKET_VNET_HDR: here */
                    hp_rx_frame(dp, w, l, &vh, frame, h->tp_snaplen, now);
                }
            }
            if (k)
                hp_flush_all(dp, w);
            p->nbig = 0;
            hp_io_ring_release(p);
            got += k;
            if (k < HP_TXQ)
                break;
        }
    } else if (p->tap_io == HP_TAP_IO_URING) {
        /* Rounds of up to HP_TAP_RX packets io_uring has read (hp_io_tap.c), as many rounds as
         * a ring link gets; the buffers go back after the sends pointing into them. */
        for (int round = 0; round < HP_RING_ROUNDS; round++) {
            uint32_t k = 0;
            uint8_t *buf;
            int r;
            while ((r = hp_io_tap_next(p, &buf)) >= 0) {
                k++;
                if ((uint32_t)r < HP_VNET_LEN) {
                    p->rx_packets++;
                    COUNT_DROP(dp, HP_D_RUNT);
                    continue;
                }
                struct virtio_net_hdr vh;
                memcpy(&vh, buf, HP_VNET_LEN);
                hp_rx_frame(dp, w, l, &vh, buf + HP_VNET_LEN, (uint32_t)r - HP_VNET_LEN, now);
            }
            if (k)
                hp_flush_all(dp, w); /* before the buffers are read into again */
            hp_io_tap_release(p);
            got += k;
            if (k < HP_TAP_RX || p->tap_io != HP_TAP_IO_URING)
                break;
        }
    } else {
        /* Rounds of HP_TAP_BATCH reads, as many as a ring link gets: one batch per call drained
         * a TAP at 32 packets per pass of the loop, too slow to keep up at 8,000 packets a
         * second while the loop also collected flow logs between passes (the TAP's queue,
         * 500 packets, overflowed: issue 16). */
        for (int round = 0; round < HP_RING_ROUNDS; round++) {
            int drained = 0;
            for (int b = 0; b < HP_TAP_BATCH; b++) {
                uint8_t *slot = p->tapbuf + (size_t)b * HP_TAP_SLOT;
                ssize_t r = read(p->fd, slot, HP_TAP_SLOT);
                if (r < 0) {
                    drained = 1; /* EAGAIN */
                    break;
                }
                if ((uint32_t)r < HP_VNET_LEN) {
                    p->rx_packets++;
                    COUNT_DROP(dp, HP_D_RUNT);
                    continue;
                }
                struct virtio_net_hdr vh;
                memcpy(&vh, slot, HP_VNET_LEN);
                hp_rx_frame(dp, w, l, &vh, slot + HP_VNET_LEN, (uint32_t)r - HP_VNET_LEN, now);
                got++;
            }
            hp_flush_all(dp, w); /* before the slots are read into again */
            if (drained)
                break;
        }
    }
    return got;
}

/* After a pass that moved packets, look at the rings a little longer before sleeping: traffic
 * that keeps coming is taken without a wakeup per packet (the sender's side of a wakeup is an
 * IPI and a scheduler call, ours a context switch, at every packet of a paced stream). The
 * look is a read of the next frame's status (of a TAP through io_uring: its completion ring,
 * which the sched_yield below lets the kernel fill); between looks the CPU is offered to anything else
 * runnable (sched_yield), so a server sharing the CPU is not held up. It ends after HP_SPIN_S
 * without a packet, or after HP_SPIN_MAX_S in all, so the control socket, read/write TAP links
 * and the timers are served at that pace at the least. */
void hp_spin(hp_dp *dp, double now, int w)
{
    double quiet_until = now + HP_SPIN_S, stop = now + HP_SPIN_MAX_S;
    hp_worker *wk = &dp->wk[w];
    /* the loop stops at its next tick; the others when hp_dp_poll parks them */
    while (now < quiet_until && now < stop &&
           (w ? __atomic_load_n(&dp->run, __ATOMIC_SEQ_CST) : now < wk->next_tick)) {
        uint32_t got = 0;
        for (unsigned i = 0; i < dp->n_links; i++) {
            hp_link *l = dp->links[i];
            if (dp->mt == HP_MT_INBOUND && link_thread(dp, l) != w)
                continue;
            hp_port *p = PORT(l, w);
            if (!link_down(l) && (p->kind == HP_PORT_PACKET ? hp_io_ring_ready(p)
                                  : w == 0 && p->tap_io == HP_TAP_IO_URING && hp_io_tap_ready(p)))
                got += hp_service(dp, w, l, now);
        }
        if (dp->mt == HP_MT_WORKERS)
            got += hp_handoff_drain(dp, w, now);
        now = hp_dp_clock(dp);
        if (got)
            quiet_until = now + HP_SPIN_S;
        else
            sched_yield();
    }
}

/* The interface went away (its namespace was deleted, the TAP was removed): the socket reports
 * an error forever after. Stop watching it (thread w's socket, in w's epoll set), so the loop
 * does not spin, and tell the caller. */
int hp_link_error(hp_dp *dp, int w, hp_link *l)
{
    int err = 0;
    socklen_t elen = sizeof err;
    hp_port *p = PORT(l, w);
    if (p->kind == HP_PORT_PACKET &&
        getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err != ENETDOWN &&
        err != ENODEV && err != ENXIO && err != 0)
        return 0; /* a transient error, now cleared */
    int epfd = dp->wk[w].epfd;
    epoll_ctl(epfd, EPOLL_CTL_DEL, p->fd, NULL);
    int wfd = hp_io_tap_wait_fd(p);
    if (wfd >= 0)
        epoll_ctl(epfd, EPOLL_CTL_DEL, wfd, NULL);
    /* with workers each sees its own socket fail: the link is reported once */
    return __atomic_exchange_n(&l->down, 1, __ATOMIC_RELAXED) ? 0 : HP_POLL_LINK_DOWN;
}

/* Whether a thread other than the loop stopped on an error: the data path must not go on
 * with part of its ports unserved. */
static int workers_failed(hp_dp *dp)
{
    for (unsigned i = 1; i < dp->n_threads; i++)
        if (__atomic_load_n(&dp->wk[i].failed, __ATOMIC_SEQ_CST))
            return HP_POLL_WORKER_DOWN;
    return 0;
}

static int poll_loop(hp_dp *dp, int timeout_ms)
{
    struct epoll_event ev[64];
    hp_worker *wk = &dp->wk[0];
    double deadline = hp_dp_clock(dp) + timeout_ms / 1000.0;
    for (;;) {
        double now = hp_dp_clock(dp);
        if (now >= wk->next_tick) {
            hp_dp_tick(dp, now);
            wk->next_tick = now + HP_DP_TICK;
        }
        double wait = deadline - now;
        if (wk->next_tick - now < wait)
            wait = wk->next_tick - now;
        int ms = wait <= 0 ? 0 : (int)(wait * 1000.0) + 1;
        /* with workers: say it sleeps, then look at the handoff rings once more (a producer
         * that pushed before seeing the flag has its packet seen here) */
        if (dp->mt == HP_MT_WORKERS) {
            __atomic_store_n(&wk->sleeping, 1, __ATOMIC_SEQ_CST);
            if (hp_handoff_pending(dp, 0))
                ms = 0;
        }
        int n = epoll_wait(dp->epfd, ev, 64, ms);
        if (dp->mt == HP_MT_WORKERS)
            __atomic_store_n(&wk->sleeping, 0, __ATOMIC_SEQ_CST);
        if (n < 0)
            return errno == EINTR ? HP_POLL_INTR : -1;
        now = hp_dp_clock(dp);
        int ready = 0;
        uint32_t got = 0;
        for (int i = 0; i < n; i++) {
            uint32_t u = ev[i].data.u32;
            if (u & WATCH_TAG)
                ready |= 1 << (u & 0xff);
            else if (u & KICK_TAG)
                hp_drain_kick(wk->wake);
            else if (ev[i].events & (EPOLLERR | EPOLLHUP))
                ready |= hp_link_error(dp, 0, dp->links[u]);
            else
                got += hp_service(dp, 0, dp->links[u], now);
        }
        if (dp->mt == HP_MT_WORKERS)
            got += hp_handoff_drain(dp, 0, now);
        if (dp->mt && __atomic_exchange_n(&dp->links_down, 0, __ATOMIC_SEQ_CST))
            ready |= HP_POLL_LINK_DOWN;
        ready |= workers_failed(dp);
        if (ready)
            return ready;
        if (got)
            hp_spin(dp, hp_dp_clock(dp), 0);
        if (hp_dp_clock(dp) >= deadline)
            return 0;
    }
}

/* Every time here is the data path's clock (hp_dp_clock): CLOCK_MONOTONIC plus the lab's
 * offset, so moving the clock forward runs the timers and the engines' expiry at once. */
int hp_dp_poll(hp_dp *dp, int timeout_ms)
{
    int down = workers_failed(dp);
    if (down)
        return down; /* the data path is stopping: nothing runs without every worker */
    hp_in_unpark(dp);
    int r = poll_loop(dp, timeout_ms);
    hp_in_park(dp);
    return r;
}
