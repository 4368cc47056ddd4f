/* hp_dp_internal.h - what the data path's files share, and nothing outside them includes.
 *
 * The data path is one concern per file (VPP's nat44-ed splits the same way, by direction, with
 * threading apart):
 *   hp_dp.c           setup and teardown: groups, links and their addresses, options, clock
 *   hp_dp_poll.c      the loop: receive (service, rx_frame), flush, spin, link errors
 *   hp_dp_outbound.c  environment (or inside link) -> VPC, engine ORIG (VPP's in2out)
 *   hp_dp_inbound.c   VPC -> environment (or inside link), engine REPLY (VPP's out2in)
 *   hp_dp_rst.c       the TCP reset for a segment of no connection
 *   hp_dp_worker.c    the threads besides the loop's: the inbound worker (hp_dp_start_inbound)
 *                     or workers 1..N-1 (hp_dp_start_workers), parked outside hp_dp_poll
 *   hp_dp_steer.c     with workers: who owns a packet, the fanout program, handoff rings
 *   hp_neigh_io.c     the neighbour cache at work on a link: ARP/NDP input, probes, sending
 *                     through a neighbour or its queue, the timers (hp_dp_tick)
 * A function one file calls in another gets the hp_ prefix and is declared here, HP_HIDDEN
 * (not exported from the extension module). What every forwarded packet runs (the locks,
 * is_own, env_lookup, next_hop) is static inline here, so the split adds no call to it but
 * the one from rx_frame into its direction.
 */
#ifndef HP_DP_INTERNAL_H
#define HP_DP_INTERNAL_H

#include <pthread.h>
#include <string.h>

#include "hp_dp.h"

/* Counted from both threads when the inbound worker runs (hp_dp_start_inbound). */
#define COUNT_DROP(dp, r) __atomic_fetch_add(&(dp)->drops[r], 1, __ATOMIC_RELAXED)

/* With the inbound worker, a link's neighbour table, transmit batch and ARP/NDP state are
 * shared by both threads (one receives on the link, the other sends on it), and an engine by
 * both directions: each has a mutex, taken only when the worker exists. Nothing takes two.
 * With workers only the neighbour table and ARP/NDP state are shared (each worker has its own
 * port, so its own batch, and its own engine): lock() is taken, lock_engine() is not. */
static inline void lock(const hp_dp *dp, pthread_mutex_t *m)
{
    if (dp->mt)
        pthread_mutex_lock(m);
}

static inline void unlock(const hp_dp *dp, pthread_mutex_t *m)
{
    if (dp->mt)
        pthread_mutex_unlock(m);
}

static inline void lock_engine(const hp_dp *dp, hp_group *g)
{
    if (dp->mt == HP_MT_INBOUND)
        pthread_mutex_lock(&g->lock);
}

static inline void unlock_engine(const hp_dp *dp, hp_group *g)
{
    if (dp->mt == HP_MT_INBOUND)
        pthread_mutex_unlock(&g->lock);
}

/* The port thread w receives and sends with on link l. */
#define PORT(l, w) ((l)->pt[(w)])

static inline int link_down(const hp_link *l)
{
    return __atomic_load_n(&l->down, __ATOMIC_RELAXED);
}

#define WATCH_TAG 0x80000000u /* epoll data of a watched fd (bit i) */
#define KICK_TAG 0x40000000u  /* epoll data of a thread's kick eventfd */

static const struct virtio_net_hdr NO_VNET; /* all zero: complete checksums, no GSO */

/* ---- address -> environment link ------------------------------------------------------------ */
static inline uint32_t env_hash(int family, const uint8_t *a)
{
    uint32_t x;
    memcpy(&x, family == 4 ? a : a + 12, 4);
    x = (x ^ (uint32_t)family) * 0x9E3779B1u;
    return (x ^ (x >> 16)) & (HP_DP_ENV_SLOTS - 1);
}

static inline int env_lookup(const hp_dp *dp, int family, const uint8_t *addr)
{
    uint32_t i = env_hash(family, addr);
    for (unsigned k = 0; k < HP_DP_ENV_SLOTS; k++, i = (i + 1) & (HP_DP_ENV_SLOTS - 1)) {
        int v = dp->env_slot[i];
        if (!v)
            return -1;
        if ((v & 1) == (family == 6) && hp_eq_addr(family, dp->env_key[i], addr))
            return (v >> 1) - 1;
    }
    return -1;
}

/* ---- helpers ----------------------------------------------------------------------------- */
static inline int is_own(const hp_link *l, int family, const uint8_t *a)
{
    if (family == 4) {
        for (uint32_t i = 0; i < l->n_own4; i++)
            if (hp_eq4(l->own4[i], a))
                return 1;
    } else {
        for (uint32_t i = 0; i < l->n_own6; i++)
            if (hp_eq16(l->own6[i], a))
                return 1;
    }
    return 0;
}

/* the next hop on the way out of link out: the destination when it is on-link, else the
 * subnet's router */
static inline const uint8_t *next_hop(const hp_link *out, int family, const uint8_t *dst)
{
    if (family == 4)
        return hp_prefix_match(dst, out->net4, out->plen4) ? dst : out->router4;
    return hp_prefix_match(dst, out->net6, out->plen6) ? dst : out->router6;
}

/* The thread a link's frames are taken by, without workers: the inbound worker (1) for ENI
 * links while it exists, else the loop (0). */
static inline int link_thread(const hp_dp *dp, const hp_link *l)
{
    return dp->mt == HP_MT_INBOUND && l->role == HP_ROLE_ENI;
}

/* hp_dp_poll.c; w is the calling thread (hp_worker.id) */
HP_HIDDEN void hp_rx_frame(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh,
                           uint8_t *f, uint32_t len, double now);
HP_HIDDEN void hp_forward(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh,
                          uint8_t *f, uint32_t len, int family, double now, int hops);
HP_HIDDEN void hp_flush_all(hp_dp *dp, int w);
HP_HIDDEN uint32_t hp_service(hp_dp *dp, int w, hp_link *l, double now);
HP_HIDDEN void hp_spin(hp_dp *dp, double now, int w);
HP_HIDDEN int hp_link_error(hp_dp *dp, int w, hp_link *l);

/* hp_dp_outbound.c, hp_dp_inbound.c: a received IP frame, by direction; hops: how many
 * workers a new connection already spilled over (hp_dp_steer.c) */
HP_HIDDEN void hp_outbound(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh,
                           uint8_t *f, uint32_t len, int family, double now, int hops);
HP_HIDDEN void hp_inbound(hp_dp *dp, int w, hp_link *l, const struct virtio_net_hdr *vh,
                          uint8_t *f, uint32_t len, int family, double now);

/* hp_dp_rst.c */
HP_HIDDEN void hp_send_rst(hp_dp *dp, int w, hp_link *l, const uint8_t *f, const uint8_t *ip,
                           uint32_t n, uint32_t flags);

/* hp_dp_worker.c */
HP_HIDDEN void hp_in_unpark(hp_dp *dp);
HP_HIDDEN void hp_in_park(hp_dp *dp);
HP_HIDDEN void hp_stop_threads(hp_dp *dp);
HP_HIDDEN void hp_kick(int fd);
HP_HIDDEN void hp_drain_kick(int fd);

/* hp_dp_steer.c (workers only) */
HP_HIDDEN int hp_owner(hp_dp *dp, int w, const hp_link *l, const uint8_t *ip, uint32_t n,
                       int family, uint32_t flags, double now);
HP_HIDDEN void hp_handoff(hp_dp *dp, int from, int to, const hp_link *l,
                          const struct virtio_net_hdr *vh, const uint8_t *f, uint32_t len,
                          int hops);
HP_HIDDEN uint32_t hp_handoff_drain(hp_dp *dp, int w, double now);
HP_HIDDEN int hp_handoff_pending(hp_dp *dp, int w);
HP_HIDDEN int hp_steer_setup(hp_dp *dp, char *err, size_t errlen);
HP_HIDDEN void hp_steer_free(hp_dp *dp);
HP_HIDDEN int hp_fanout_link(hp_dp *dp, hp_link *l, const char *ifname, char *err,
                             size_t errlen);

/* hp_neigh_io.c: ARP and NDP input (under the link's lock), and a frame out of link out to
 * nexthop (it takes the lock) */
HP_HIDDEN void hp_arp_input(hp_dp *dp, int w, hp_link *l, const uint8_t *f, uint32_t len,
                            double now);
HP_HIDDEN void hp_ndp_input(hp_dp *dp, int w, hp_link *l, const uint8_t *f, uint32_t len,
                            double now);
HP_HIDDEN void hp_transmit(hp_dp *dp, int w, hp_link *out, int family, const uint8_t *nexthop,
                           const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len,
                           double now);

#endif
