/* hp_dp.c - the data path loop; see hp_dp.h for the picture. */
#define _GNU_SOURCE
#include "hp_dp.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <linux/if_packet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hp_csum.h"

#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

/* Counted from both threads when the inbound worker runs (hp_dp_start_inbound). */
#define COUNT_DROP(dp, r) __atomic_fetch_add(&(dp)->drops[r], 1, __ATOMIC_RELAXED)

/* With the inbound worker, a link's neighbour table, transmit batch and ARP/NDP state are
 * shared by both threads (one receives on the link, the other sends on it), and an engine by
 * both directions: each has a mutex, taken only when the worker exists. Nothing takes two. */
static void lock(const hp_dp *dp, pthread_mutex_t *m)
{
    if (dp->mt)
        pthread_mutex_lock(m);
}

static void unlock(const hp_dp *dp, pthread_mutex_t *m)
{
    if (dp->mt)
        pthread_mutex_unlock(m);
}

#define WATCH_TAG 0x80000000u
#define HP_RING_ROUNDS 8 /* rounds of HP_TXQ frames per link per wakeup */
#ifndef HP_SPIN_S
#define HP_SPIN_S 30e-6     /* keep looking this long after the last packet (see spin) */
#endif
#define HP_SPIN_MAX_S 500e-6 /* and no longer than this before the next epoll_wait */

static const struct virtio_net_hdr NO_VNET; /* all zero: complete checksums, no GSO */

double hp_dp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of Python's time.monotonic() */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

hp_dp *hp_dp_new(void)
{
    hp_dp *dp = calloc(1, sizeof *dp);
    if (!dp)
        return NULL;
    dp->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (dp->epfd < 0) {
        free(dp);
        return NULL;
    }
    dp->in_epfd = dp->in_wake = -1;
    return dp;
}

static void free_queue(hp_qpkt *q)
{
    while (q) {
        hp_qpkt *next = q->next;
        free(q);
        q = next;
    }
}

static void stop_inbound(hp_dp *dp);
static int link_epfd(const hp_dp *dp, const hp_link *l);

void hp_dp_free(hp_dp *dp)
{
    if (!dp)
        return;
    stop_inbound(dp); /* first: it services links */
    for (unsigned i = 0; i < dp->n_links; i++) {
        hp_link *l = dp->links[i];
        for (unsigned s = 0; s < HP_NEIGH_SLOTS; s++)
            free_queue(l->neigh.slot[s].qhead);
        hp_io_close(&l->port);
        free(l);
    }
    close(dp->epfd);
    free(dp);
}

int hp_dp_add_group(hp_dp *dp, hp_engine *e)
{
    if (dp->n_groups >= HP_DP_MAX_GROUPS)
        return -1;
    dp->groups[dp->n_groups].engine = e;
    pthread_mutex_init(&dp->groups[dp->n_groups].lock, NULL);
    dp->groups[dp->n_groups].eni_link = -1;
    dp->groups[dp->n_groups].inside_link = -1;
    return (int)dp->n_groups++;
}

hp_link *hp_dp_link(hp_dp *dp, int link)
{
    return link >= 0 && (unsigned)link < dp->n_links ? dp->links[link] : NULL;
}

int hp_dp_add_link(hp_dp *dp, int role, int group, int kind, const char *ifname, int tap_fd,
                   const uint8_t *mac, char *err, size_t errlen)
{
    int bad_group = group < 0 || (unsigned)group >= dp->n_groups;
    if (dp->n_links >= HP_DP_MAX_LINKS || bad_group ||
        (role != HP_ROLE_ENV && role != HP_ROLE_ENI && role != HP_ROLE_INSIDE) ||
        (role == HP_ROLE_INSIDE && dp->groups[group].inside_link >= 0)) {
        if (kind == HP_PORT_TAP && tap_fd >= 0)
            close(tap_fd);
        if (!bad_group && role == HP_ROLE_INSIDE && dp->groups[group].inside_link >= 0)
            snprintf(err, errlen, "group %d already has an inside link (link %d)", group,
                     dp->groups[group].inside_link);
        else
            snprintf(err, errlen, "bad link: role %d group %d (%u groups, %u links)", role,
                     group, dp->n_groups, dp->n_links);
        return -1;
    }
    hp_link *l = calloc(1, sizeof *l);
    if (!l) {
        if (kind == HP_PORT_TAP)
            close(tap_fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = kind == HP_PORT_TAP ? hp_io_attach_tap(&l->port, tap_fd, err, errlen)
                                 : hp_io_open_packet(&l->port, ifname, dp->ring_frames, err,
                                                     errlen);
    if (rc < 0) {
        hp_io_close(&l->port);
        free(l);
        return -1;
    }
    l->role = role;
    l->group = group;
    memcpy(l->mac, mac, 6);
    pthread_mutex_init(&l->lock, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = dp->n_links};
    if (epoll_ctl(link_epfd(dp, l), EPOLL_CTL_ADD, l->port.fd, &ev) < 0) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        hp_io_close(&l->port);
        free(l);
        return -1;
    }
    if (role == HP_ROLE_ENI)
        dp->groups[group].eni_link = (int)dp->n_links;
    else if (role == HP_ROLE_INSIDE)
        dp->groups[group].inside_link = (int)dp->n_links;
    dp->links[dp->n_links] = l;
    return (int)dp->n_links++;
}

int hp_dp_add_own(hp_dp *dp, int link, int family, const uint8_t *addr)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l)
        return -1;
    if (family == 4 && l->n_own4 < HP_DP_MAX_OWN)
        memcpy(l->own4[l->n_own4++], addr, 4);
    else if (family == 6 && l->n_own6 < HP_DP_MAX_OWN)
        memcpy(l->own6[l->n_own6++], addr, 16);
    else
        return -1;
    return 0;
}

int hp_dp_remove_own(hp_dp *dp, int link, int family, const uint8_t *addr)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l || (family != 4 && family != 6))
        return -1;
    size_t alen = family == 4 ? 4 : 16;
    uint8_t *own = family == 4 ? &l->own4[0][0] : &l->own6[0][0];
    uint32_t *n = family == 4 ? &l->n_own4 : &l->n_own6;
    for (uint32_t i = 0; i < *n; i++) {
        if (memcmp(own + i * alen, addr, alen) != 0)
            continue;
        /* keep the order: the first address is the source of our ARP/NDP probes */
        memmove(own + i * alen, own + (i + 1) * alen, (*n - i - 1) * alen);
        (*n)--;
        return 0;
    }
    return -1;
}

static hp_link *env_link(hp_dp *dp, int link)
{
    hp_link *l = hp_dp_link(dp, link);
    return l && l->role == HP_ROLE_ENV ? l : NULL;
}

int hp_dp_set_link_group(hp_dp *dp, int link, int group)
{
    hp_link *l = env_link(dp, link);
    if (!l || group < 0 || (unsigned)group >= dp->n_groups)
        return -1;
    l->group = group;
    return 0;
}

int hp_dp_set_link_state(hp_dp *dp, int link, int state)
{
    hp_link *l = env_link(dp, link);
    if (!l || state < 0 || state >= HP_LINK_N_STATES)
        return -1;
    l->state = (uint8_t)state;
    return 0;
}

int hp_dp_set_link_ipv6(hp_dp *dp, int link, int allowed)
{
    hp_link *l = env_link(dp, link);
    if (!l)
        return -1;
    l->no_ipv6 = !allowed;
    return 0;
}

int hp_dp_set_group_options(hp_dp *dp, int group, int rst_unknown_tcp)
{
    if (group < 0 || (unsigned)group >= dp->n_groups)
        return -1;
    dp->groups[group].rst_unknown_tcp = rst_unknown_tcp != 0;
    return 0;
}

int hp_dp_set_clock_offset(hp_dp *dp, double offset)
{
    if (!(offset >= dp->clock_offset)) /* also refuses NaN */
        return -1;
    dp->clock_offset = offset;
    return 0;
}

double hp_dp_clock(const hp_dp *dp)
{
    return hp_dp_now() + dp->clock_offset;
}

/* ---- address -> environment link ------------------------------------------------------------ */
static uint32_t env_hash(int family, const uint8_t *a)
{
    uint32_t x;
    memcpy(&x, family == 4 ? a : a + 12, 4);
    x = (x ^ (uint32_t)family) * 0x9E3779B1u;
    return (x ^ (x >> 16)) & (HP_DP_ENV_SLOTS - 1);
}

static int env_lookup(const hp_dp *dp, int family, const uint8_t *addr)
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

int hp_dp_set_env(hp_dp *dp, int link, int family, const uint8_t *addr)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l || l->role != HP_ROLE_ENV || env_lookup(dp, family, addr) >= 0)
        return -1;
    uint32_t i = env_hash(family, addr);
    for (unsigned k = 0; k < HP_DP_ENV_SLOTS; k++, i = (i + 1) & (HP_DP_ENV_SLOTS - 1)) {
        if (dp->env_slot[i])
            continue;
        memset(dp->env_key[i], 0, 16);
        memcpy(dp->env_key[i], addr, family == 4 ? 4 : 16);
        dp->env_slot[i] = ((link + 1) << 1) | (family == 6);
        if (family == 4) {
            memcpy(l->env4, addr, 4);
            l->has_env4 = 1;
        } else {
            memcpy(l->env6, addr, 16);
            l->has_env6 = 1;
        }
        return 0;
    }
    return -1;
}

int hp_dp_set_subnet(hp_dp *dp, int link, int family, const uint8_t *net, int plen,
                     const uint8_t *router)
{
    hp_link *l = hp_dp_link(dp, link);
    if (!l || (l->role != HP_ROLE_ENI && l->role != HP_ROLE_INSIDE) || plen < 0 ||
        plen > (family == 4 ? 32 : 128))
        return -1;
    if (family == 4) {
        memcpy(l->net4, net, 4);
        memcpy(l->router4, router, 4);
        l->plen4 = (uint8_t)plen;
        l->has_net4 = 1;
    } else {
        memcpy(l->net6, net, 16);
        memcpy(l->router6, router, 16);
        l->plen6 = (uint8_t)plen;
        l->has_net6 = 1;
    }
    return 0;
}

int hp_dp_watch(hp_dp *dp, int fd)
{
    if (dp->n_watch >= HP_DP_MAX_WATCH)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = WATCH_TAG | dp->n_watch};
    if (epoll_ctl(dp->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -1;
    dp->watch_fd[dp->n_watch] = fd;
    return (int)dp->n_watch++;
}

/* ---- helpers ----------------------------------------------------------------------------- */
static int is_own(const hp_link *l, int family, const uint8_t *a)
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

/* ---- neighbours -------------------------------------------------------------------------- */
static void probe(hp_link *l, hp_neigh *n, double now)
{
    uint8_t buf[HP_NDP_FRAME_MAX];
    uint32_t len = 0;
    const uint8_t *ucast = n->state == HP_NUD_PROBE ? n->mac : NULL;
    if (n->family == 4 && l->n_own4) {
        len = hp_arp_build(buf, 1, l->mac, ucast, l->mac, l->own4[0], NULL, n->addr);
        l->arp_out++;
    } else if (n->family == 6 && l->n_own6) {
        len = hp_ndp_ns_build(buf, l->mac, ucast, l->own6[0], n->addr);
        l->nd_out++;
    }
    if (len)
        hp_io_send_now(&l->port, &NO_VNET, buf, len);
    n->probes++;
    n->deadline = now + HP_NEIGH_RETRANS;
}

static void set_macs(uint8_t *frame, const uint8_t *dst, const uint8_t *src)
{
    memcpy(frame, dst, 6);
    memcpy(frame + 6, src, 6);
}

/* A reply arrived: the MAC is known; send what waited for it, oldest first. */
static void resolved(hp_link *l, hp_neigh *n, const uint8_t *mac, double now)
{
    hp_neigh_confirm(n, mac, now);
    hp_qpkt *q = hp_neigh_take_queue(&l->neigh, n);
    if (q)
        hp_io_flush(&l->port);
    while (q) {
        hp_qpkt *next = q->next;
        set_macs(q->frame, mac, l->mac);
        hp_io_send_now(&l->port, &q->vh, q->frame, q->len);
        free(q);
        q = next;
    }
}

/* Someone who is talking to us told us its MAC (an ARP request, an NS with a source
 * link-layer option): RFC 826's merge, RFC 4861 section 7.2.3. */
static void learn(hp_link *l, int family, const uint8_t *addr, const uint8_t *mac, double now)
{
    hp_neigh *n = hp_neigh_find(&l->neigh, family, addr);
    if (!n) {
        n = hp_neigh_get(&l->neigh, family, addr);
        if (!n)
            return;
        memcpy(n->mac, mac, 6);
        n->state = HP_NUD_STALE;
        n->deadline = now + HP_NEIGH_GC;
    } else if (n->state == HP_NUD_INCOMPLETE) {
        resolved(l, n, mac, now);
    } else if (!hp_eq_mac(n->mac, mac)) {
        memcpy(n->mac, mac, 6);
        n->state = HP_NUD_STALE;
        n->deadline = now + HP_NEIGH_GC;
    }
}

static void transmit_locked(hp_dp *dp, hp_link *out, int family, const uint8_t *nexthop,
                            const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len,
                            double now)
{
    hp_neigh *n = hp_neigh_find(&out->neigh, family, nexthop);
    if (n && n->state != HP_NUD_INCOMPLETE) {
        if (n->state == HP_NUD_STALE) { /* use it, and ask whether it is still there */
            n->state = HP_NUD_PROBE;
            n->probes = 0;
            probe(out, n, now);
        }
        set_macs(frame, n->mac, out->mac);
        hp_io_send(&out->port, vh, frame, len);
        return;
    }
    if (!n) {
        n = hp_neigh_get(&out->neigh, family, nexthop);
        if (!n) {
            COUNT_DROP(dp, HP_D_NEIGH_TABLE_FULL);
            return;
        }
        probe(out, n, now);
    }
    hp_qpkt *dropped;
    int r = hp_neigh_enqueue(&out->neigh, n, vh, frame, len, &dropped);
    if (dropped) {
        free(dropped);
        COUNT_DROP(dp, HP_D_NEIGH_QUEUE_FULL);
    }
    if (r < 0)
        COUNT_DROP(dp, HP_D_NEIGH_QUEUE_FULL);
}

static void transmit(hp_dp *dp, hp_link *out, int family, const uint8_t *nexthop,
                     const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len, double now)
{
    lock(dp, &out->lock);
    transmit_locked(dp, out, family, nexthop, vh, frame, len, now);
    unlock(dp, &out->lock);
}

void hp_dp_tick(hp_dp *dp, double now)
{
    for (unsigned li = 0; li < dp->n_links; li++) {
        hp_link *l = dp->links[li];
        if (!l->neigh.n)
            continue;
        lock(dp, &l->lock);
        for (unsigned i = 0; i < HP_NEIGH_SLOTS;) {
            hp_neigh *n = &l->neigh.slot[i];
            int remove = 0;
            if (!n->family || now < n->deadline) {
                i++;
                continue;
            }
            switch (n->state) {
            case HP_NUD_INCOMPLETE:
            case HP_NUD_PROBE:
                if (n->probes >= HP_NEIGH_PROBES)
                    remove = 1;
                else
                    probe(l, n, now);
                break;
            case HP_NUD_REACHABLE:
                n->state = HP_NUD_STALE;
                n->deadline = now + HP_NEIGH_GC;
                break;
            default: /* STALE and unused for HP_NEIGH_GC */
                remove = 1;
            }
            if (!remove) {
                i++;
                continue;
            }
            hp_qpkt *q;
            hp_neigh_remove(&l->neigh, n, &q);
            for (hp_qpkt *p = q; p; p = p->next)
                COUNT_DROP(dp, HP_D_NEIGH_FAILED);
            free_queue(q);
            /* backward shift may have moved a later entry into slot i: look at it again */
        }
        unlock(dp, &l->lock);
    }
    for (unsigned g = 0; g < dp->n_groups; g++) {
        lock(dp, &dp->groups[g].lock);
        hp_engine_advance(dp->groups[g].engine, now);
        unlock(dp, &dp->groups[g].lock);
    }
}

/* ---- ARP and NDP for the addresses we own ---------------------------------------------------- */
static void arp_input(hp_dp *dp, hp_link *l, const uint8_t *f, uint32_t len, double now)
{
    l->arp_in++;
    if (len < 42) {
        COUNT_DROP(dp, HP_D_RUNT);
        return;
    }
    const uint8_t *a = f + 14;
    if (hp_get16(a) != 1 || hp_get16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4)
        return;
    uint32_t op = hp_get16(a + 6);
    const uint8_t *sha = a + 8, *spa = a + 14, *tpa = a + 24;
    static const uint8_t zero4[4];
    if (sha[0] & 1) /* a multicast sender MAC is never a neighbour */
        return;
    int has_sender = memcmp(spa, zero4, 4) != 0;
    if (op == 1 && is_own(l, 4, tpa)) {
        uint8_t out[HP_ARP_FRAME_LEN];
        uint32_t n = hp_arp_build(out, 2, l->mac, sha, l->mac, tpa, sha, spa);
        hp_io_send_now(&l->port, &NO_VNET, out, n);
        l->arp_out++;
        if (has_sender)
            learn(l, 4, spa, sha, now);
        return;
    }
    /* A reply, or any ARP from a neighbour we already track, updates it; ARP never creates an
     * entry we did not ask for (like the kernel's arp_accept=0), so it cannot fill the table. */
    hp_neigh *n = has_sender ? hp_neigh_find(&l->neigh, 4, spa) : NULL;
    if (!n)
        return;
    if (op == 2)
        resolved(l, n, sha, now);
    else if (n->state != HP_NUD_INCOMPLETE)
        memcpy(n->mac, sha, 6);
}

/* The link-layer address option of type want (1 source, 2 target), RFC 4861 section 4.6.1. */
static int nd_option(const uint8_t *opt, uint32_t len, int want, const uint8_t **mac)
{
    *mac = NULL;
    while (len >= 2) {
        uint32_t olen = (uint32_t)opt[1] * 8;
        if (olen == 0 || olen > len)
            return -1; /* RFC 4861: a zero-length option makes the message invalid */
        if (opt[0] == want && olen >= 8)
            *mac = opt + 2;
        opt += olen;
        len -= olen;
    }
    return 0;
}

static void ndp_input(hp_dp *dp, hp_link *l, const uint8_t *f, uint32_t len, double now)
{
    l->nd_in++;
    const uint8_t *ip = f + 14;
    uint32_t plen = hp_get16(ip + 4);
    if (ip[40] != 135 && ip[40] != 136)
        return; /* Router Solicitation/Advertisement, Redirect: we are not that kind of router */
    if (plen < 24 || 40 + plen > len - 14 || ip[7] != 255 || hp_icmp6_csum(ip, plen) != 0 ||
        ip[41] != 0) {
        COUNT_DROP(dp, HP_D_BAD_NDP); /* RFC 4861 sections 7.1.1, 7.1.2: silently discard */
        return;
    }
    const uint8_t *m = ip + 40, *src = ip + 8, *target = m + 8, *mac;
    static const uint8_t unspec[16];
    int from_unspec = memcmp(src, unspec, 16) == 0;
    if (m[0] == 135) { /* Neighbor Solicitation */
        if (nd_option(m + 24, plen - 24, 1, &mac) < 0) {
            COUNT_DROP(dp, HP_D_BAD_NDP);
            return;
        }
        if (!is_own(l, 6, target))
            return;
        uint8_t out[HP_NDP_FRAME_MAX];
        uint32_t n;
        /* the environments' gateway and a NAT gateway's inside are routers (R flag); an ENI
         * is not */
        if (from_unspec) { /* duplicate address detection by someone else: answer all nodes */
            static const uint8_t all6[16] = {0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
            static const uint8_t allmac[6] = {0x33, 0x33, 0, 0, 0, 1};
            n = hp_ndp_na_build(out, l->mac, allmac, target, all6, l->role != HP_ROLE_ENI, 0);
        } else {
            n = hp_ndp_na_build(out, l->mac, mac ? mac : f + 6, target, src,
                                l->role != HP_ROLE_ENI, 1);
            if (mac)
                learn(l, 6, src, mac, now);
        }
        hp_io_send_now(&l->port, &NO_VNET, out, n);
        l->nd_out++;
    } else if (m[0] == 136) { /* Neighbor Advertisement */
        if (nd_option(m + 24, plen - 24, 2, &mac) < 0) {
            COUNT_DROP(dp, HP_D_BAD_NDP);
            return;
        }
        hp_neigh *n = hp_neigh_find(&l->neigh, 6, target);
        if (!n)
            return;
        if (!mac)
            mac = f + 6;
        if (n->state == HP_NUD_INCOMPLETE || (m[4] & 0x40)) /* solicited: confirms */
            resolved(l, n, mac, now);
        else if (m[4] & 0x20) /* override */
            memcpy(n->mac, mac, 6);
    }
}

/* ---- TCP reset for a segment of no connection ---------------------------------------------- */
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

static uint32_t sum16(const uint8_t *p, uint32_t len) /* len even */
{
    uint32_t s = 0;
    for (uint32_t i = 0; i < len; i += 2)
        s += hp_get16(p + i);
    return s;
}

/* What an AWS NAT gateway does with a packet of a connection it no longer tracks (idle for
 * 350 s): it answers with a RST, so the sender learns at once instead of retransmitting into
 * silence. The RST follows RFC 9293 section 3.10.7.1 (reset generation for a segment of a
 * connection that does not exist): if the segment carries ACK, the RST takes its sequence
 * number from SEG.ACK; otherwise seq = 0, ACK set, ack = SEG.SEQ + SEG.LEN (SYN and FIN count
 * one each). Never a RST for a RST. Sent straight back to the frame's source MAC on the link it
 * came from, addresses and ports swapped, complete checksums, TTL / hop limit 64. */
static void send_rst(hp_dp *dp, hp_link *l, const uint8_t *f, const uint8_t *ip, uint32_t n,
                     uint32_t flags)
{
    hp_parsed p;
    if (hp_parse(ip, n, flags, &p) != HP_R_NONE || p.t.proto != HP_IPPROTO_TCP)
        return;
    const uint8_t *th = ip + p.l4;
    uint8_t fl = th[13];
    if (fl & TH_RST)
        return;
    uint32_t doff = (uint32_t)(th[12] >> 4) * 4;
    uint32_t seg_len = p.l3_len - p.l4 - doff + !!(fl & TH_SYN) + !!(fl & TH_FIN);
    uint32_t seq = 0, ack = 0;
    uint8_t rfl = TH_RST;
    if (fl & TH_ACK) {
        seq = (uint32_t)hp_get16(th + 8) << 16 | hp_get16(th + 10);
    } else {
        ack = ((uint32_t)hp_get16(th + 4) << 16 | hp_get16(th + 6)) + seg_len;
        rfl |= TH_ACK;
    }

    int v4 = p.t.family == 4;
    uint32_t alen = v4 ? 4 : 16, iplen = v4 ? 20 : 40;
    uint8_t out[14 + 40 + 20];
    memset(out, 0, sizeof out);
    memcpy(out, f + 6, 6);
    memcpy(out + 6, l->mac, 6);
    hp_put16(out + 12, v4 ? 0x0800 : 0x86DD);
    uint8_t *o = out + 14, *t = o + iplen;
    if (v4) {
        o[0] = 0x45;
        hp_put16(o + 2, 40);
        o[8] = 64;
        o[9] = HP_IPPROTO_TCP;
        memcpy(o + 12, p.t.dst, 4);
        memcpy(o + 16, p.t.src, 4);
        hp_put16(o + 10, ~hp_fold(sum16(o, 20)) & 0xFFFF);
    } else {
        o[0] = 0x60;
        hp_put16(o + 4, 20);
        o[6] = HP_IPPROTO_TCP;
        o[7] = 64;
        memcpy(o + 8, p.t.dst, 16);
        memcpy(o + 24, p.t.src, 16);
    }
    hp_put16(t, p.t.dport);
    hp_put16(t + 2, p.t.sport);
    hp_put16(t + 4, seq >> 16);
    hp_put16(t + 6, seq & 0xFFFF);
    hp_put16(t + 8, ack >> 16);
    hp_put16(t + 10, ack & 0xFFFF);
    t[12] = 5 << 4;
    t[13] = rfl;
    /* pseudo-header (RFC 9293 3.1, RFC 8200 8.1): addresses, protocol, TCP length */
    uint32_t s = sum16(p.t.src, alen) + sum16(p.t.dst, alen) + HP_IPPROTO_TCP + 20 + sum16(t, 20);
    hp_put16(t + 16, ~hp_fold(s) & 0xFFFF);
    lock(dp, &l->lock);
    hp_io_send_now(&l->port, &NO_VNET, out, 14 + iplen + 20);
    unlock(dp, &l->lock);
    __atomic_fetch_add(&dp->rst_sent, 1, __ATOMIC_RELAXED);
}

/* ---- forwarding ------------------------------------------------------------------------------ */
static const int STATE_DROP[HP_LINK_N_STATES] = {
    [HP_LINK_PENDING] = HP_D_FUNCTION_PENDING,
    [HP_LINK_INACTIVE] = HP_D_FUNCTION_INACTIVE,
    [HP_LINK_DETACHED] = HP_D_NO_VPC_CONFIG,
};

static const uint8_t *next_hop(const hp_link *out, int family, const uint8_t *dst)
{
    if (family == 4)
        return hp_prefix_match(dst, out->net4, out->plen4) ? dst : out->router4;
    return hp_prefix_match(dst, out->net6, out->plen6) ? dst : out->router6;
}

/* From an environment (or a NAT gateway's inside link) into the VPC: engine ORIG, then out of
 * the group's ENI link. */
static void outbound(hp_dp *dp, hp_link *l, const struct virtio_net_hdr *vh, uint8_t *f,
                     uint32_t len, int family, double now)
{
    uint8_t *ip = f + 14;
    uint32_t n = len - 14;
    hp_group *g = &dp->groups[l->group];
    hp_link *out = hp_dp_link(dp, g->eni_link);
    if (l->role == HP_ROLE_ENV) {
        /* Lambda: a function that is not Active cannot send (the invocation fails); ARP and
         * NDP were answered before this, so the environment's neighbour cache stays sane. */
        if (l->state != HP_LINK_ACTIVE) {
            l->blocked++;
            COUNT_DROP(dp, STATE_DROP[l->state]);
            return;
        }
        /* Lambda: IPv6 outbound only with Ipv6AllowedForDualStack */
        if (family == 6 && l->no_ipv6) {
            COUNT_DROP(dp, HP_D_IPV6_NOT_ALLOWED);
            return;
        }
    }
    /* An environment sends from its own address and nothing else (anti-spoofing); an inside
     * link carries many subnets' traffic, so any source. Packets too short to hold the
     * addresses go on to the engine, which names what is wrong with them. */
    if (n >= (family == 4 ? 20u : 40u)) {
        const uint8_t *src = ip + (family == 4 ? 12 : 8), *dst = ip + (family == 4 ? 16 : 24);
        if (l->role == HP_ROLE_ENV &&
            (family == 4 ? !l->has_env4 || !hp_eq4(src, l->env4)
                         : !l->has_env6 || !hp_eq16(src, l->env6))) {
            COUNT_DROP(dp, HP_D_SPOOFED_SOURCE);
            return;
        }
        /* the data path has no local stack: nothing is addressed to it (a NAT gateway's
         * public address included) */
        if (is_own(l, family, dst) ||
            (l->role == HP_ROLE_INSIDE && out && is_own(out, family, dst))) {
            COUNT_DROP(dp, HP_D_LOCAL_DESTINATION);
            return;
        }
    }
    if (!out || !(family == 4 ? out->has_net4 : out->has_net6)) {
        COUNT_DROP(dp, HP_D_NO_ROUTE);
        return;
    }
    uint8_t reason;
    uint32_t flags = (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) ? HP_FLAG_CSUM_PARTIAL : 0;
    lock(dp, &g->lock);
    int verdict = hp_translate(g->engine, HP_DIR_ORIG, ip, n, flags, now, &reason);
    unlock(dp, &g->lock);
    if (verdict == HP_DROP) {
        COUNT_DROP(dp, HP_D_ENGINE);
        if (reason == HP_R_TCP_NOT_SYN && g->rst_unknown_tcp)
            send_rst(dp, l, f, ip, n, flags);
        return;
    }
    dp->forwarded[0]++;
    transmit(dp, out, family, next_hop(out, family, family == 4 ? ip + 16 : ip + 24), vh, f,
             len, now);
}

/* From the VPC to the ENI: engine REPLY, then to the environment that owns the destination
 * address, or to the group's inside link (a NAT gateway's private side). */
static void inbound(hp_dp *dp, hp_link *l, const struct virtio_net_hdr *vh, uint8_t *f,
                    uint32_t len, int family, double now)
{
    uint8_t *ip = f + 14, reason;
    uint32_t flags = (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) ? HP_FLAG_CSUM_PARTIAL : 0;
    hp_group *g = &dp->groups[l->group];
    hp_link *inside = hp_dp_link(dp, g->inside_link);
    if (inside && !(family == 4 ? inside->has_net4 : inside->has_net6)) {
        COUNT_DROP(dp, HP_D_NO_ROUTE);
        return;
    }
    lock(dp, &g->lock);
    int verdict = hp_translate(g->engine, HP_DIR_REPLY, ip, len - 14, flags, now, &reason);
    unlock(dp, &g->lock);
    if (verdict != HP_REPLY) {
        COUNT_DROP(dp, HP_D_ENGINE); /* unsolicited and the rest: the engine counted the reason */
        return;
    }
    const uint8_t *dst = family == 4 ? ip + 16 : ip + 24;
    if (inside) {
        dp->forwarded[1]++;
        transmit(dp, inside, family, next_hop(inside, family, dst), vh, f, len, now);
        return;
    }
    int li = env_lookup(dp, family, dst);
    if (li < 0) {
        COUNT_DROP(dp, HP_D_NO_ENVIRONMENT);
        return;
    }
    dp->forwarded[1]++;
    transmit(dp, dp->links[li], family, dst, vh, f, len, now);
}

static void rx_frame(hp_dp *dp, hp_link *l, const struct virtio_net_hdr *vh, uint8_t *f,
                     uint32_t len, double now)
{
    l->rx_packets++;
    l->rx_bytes += len;
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
        arp_input(dp, l, f, len, now);
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
        ndp_input(dp, l, f, len, now);
        unlock(dp, &l->lock);
        return;
    }
    if (mcast) {
        COUNT_DROP(dp, HP_D_MULTICAST);
        return;
    }
    if (l->role == HP_ROLE_ENI)
        inbound(dp, l, vh, f, len, family, now);
    else
        outbound(dp, l, vh, f, len, family, now);
}

/* Send what the links have queued. With the inbound worker, each thread flushes the links
 * it sends on (the worker: environment and inside links; the loop: ENI links), under their
 * locks; the batches point only into the caller's own frames. */
static void flush_all(hp_dp *dp, int worker)
{
    for (unsigned i = 0; i < dp->n_links; i++) {
        hp_link *l = dp->links[i];
        if (dp->mt && (l->role == HP_ROLE_ENI) == worker)
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
static uint32_t service(hp_dp *dp, hp_link *l, double now)
{
    uint32_t got = 0;
    int worker = dp->mt && l->role == HP_ROLE_ENI; /* which thread this is */
    if (l->port.kind == HP_PORT_PACKET) {
        /* Rounds of up to HP_TXQ frames: take them, flush what they produced (the iovecs
         * point into the frames), give them back. A bounded number of rounds per call keeps
         * one busy link from starving the others (epoll is level-triggered: it comes back). */
        for (int round = 0; round < HP_RING_ROUNDS; round++) {
            uint32_t k = 0;
            for (; k < HP_TXQ; k++) {
                struct tpacket2_hdr *h = hp_io_ring_next(&l->port);
                if (!h)
                    break;
                uint8_t *frame = (uint8_t *)h + h->tp_mac;
                struct virtio_net_hdr vh;
                if (h->tp_status & TP_STATUS_COPY) { /* a super-packet: whole on the queue */
                    if (l->port.nbig == HP_BIG_N) {
                        flush_all(dp, worker);
                        l->port.nbig = 0;
                    }
                    uint8_t *big;
                    int r = hp_io_recv_big(&l->port, &big);
                    if (r < 0) {
                        l->rx_packets++;
                        COUNT_DROP(dp, HP_D_RX_TRUNCATED);
                        continue;
                    }
                    memcpy(&vh, big, HP_VNET_LEN);
                    rx_frame(dp, l, &vh, big + HP_VNET_LEN, (uint32_t)r - HP_VNET_LEN, now);
                } else if (h->tp_snaplen < h->tp_len) {
                    l->rx_packets++;
                    COUNT_DROP(dp, HP_D_RX_TRUNCATED);
                } else {
                    memcpy(&vh, frame - HP_VNET_LEN, HP_VNET_LEN); /* PACKET_VNET_HDR: here */
                    rx_frame(dp, l, &vh, frame, h->tp_snaplen, now);
                }
            }
            if (k)
                flush_all(dp, worker);
            l->port.nbig = 0;
            hp_io_ring_release(&l->port);
            got += k;
            if (k < HP_TXQ)
                break;
        }
    } else {
        for (int b = 0; b < HP_TAP_BATCH; b++) {
            uint8_t *slot = l->port.tapbuf + (size_t)b * HP_TAP_SLOT;
            ssize_t r = read(l->port.fd, slot, HP_TAP_SLOT);
            if (r < 0)
                break; /* EAGAIN: drained */
            if ((uint32_t)r < HP_VNET_LEN) {
                l->rx_packets++;
                COUNT_DROP(dp, HP_D_RUNT);
                continue;
            }
            struct virtio_net_hdr vh;
            memcpy(&vh, slot, HP_VNET_LEN);
            rx_frame(dp, l, &vh, slot + HP_VNET_LEN, (uint32_t)r - HP_VNET_LEN, now);
            got++;
        }
        flush_all(dp, worker);
    }
    return got;
}

/* After a pass that moved packets, look at the rings a little longer before sleeping: traffic
 * that keeps coming is taken without a wakeup per packet (the sender's side of a wakeup is an
 * IPI and a scheduler call, ours a context switch, at every packet of a paced stream). The
 * look is a read of the next frame's status; between looks the CPU is offered to anything else
 * runnable (sched_yield), so a server sharing the CPU is not held up. It ends after HP_SPIN_S
 * without a packet, or after HP_SPIN_MAX_S in all, so the control socket, TAP links and the
 * timers are served at that pace at the least. */
static void spin(hp_dp *dp, double now, int worker)
{
    double quiet_until = now + HP_SPIN_S, stop = now + HP_SPIN_MAX_S;
    /* the loop stops at its next tick; the worker when hp_dp_poll parks it */
    while (now < quiet_until && now < stop &&
           (worker ? __atomic_load_n(&dp->in_run, __ATOMIC_SEQ_CST) : now < dp->next_tick)) {
        uint32_t got = 0;
        for (unsigned i = 0; i < dp->n_links; i++) {
            hp_link *l = dp->links[i];
            if (dp->mt && (l->role == HP_ROLE_ENI) != worker)
                continue;
            if (!l->down && l->port.kind == HP_PORT_PACKET && hp_io_ring_ready(&l->port))
                got += service(dp, l, now);
        }
        now = hp_dp_clock(dp);
        if (got)
            quiet_until = now + HP_SPIN_S;
        else
            sched_yield();
    }
}

/* The epoll set a link is in: the worker's for ENI links while it runs. */
static int link_epfd(const hp_dp *dp, const hp_link *l)
{
    return dp->mt && l->role == HP_ROLE_ENI ? dp->in_epfd : dp->epfd;
}

/* The interface went away (its namespace was deleted, the TAP was removed): the socket reports
 * an error forever after. Stop watching it, so the loop does not spin, and tell the caller. */
static int link_error(hp_dp *dp, hp_link *l)
{
    int err = 0;
    socklen_t elen = sizeof err;
    if (l->port.kind == HP_PORT_PACKET &&
        getsockopt(l->port.fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err != ENETDOWN &&
        err != ENODEV && err != ENXIO && err != 0)
        return 0; /* a transient error, now cleared */
    epoll_ctl(link_epfd(dp, l), EPOLL_CTL_DEL, l->port.fd, NULL);
    l->down = 1;
    return HP_POLL_LINK_DOWN;
}

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
                if (link_error(dp, dp->links[u]))
                    __atomic_store_n(&dp->in_links_down, 1, __ATOMIC_SEQ_CST);
            } else {
                got += service(dp, dp->links[u], now);
            }
        }
        if (got && __atomic_load_n(&dp->in_run, __ATOMIC_SEQ_CST))
            spin(dp, hp_dp_clock(dp), 1);
    }
}

static void in_unpark(hp_dp *dp)
{
    if (!dp->mt)
        return;
    __atomic_store_n(&dp->in_run, 1, __ATOMIC_SEQ_CST);
    futex_wake(&dp->in_run);
}

static void in_park(hp_dp *dp)
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

static void stop_inbound(hp_dp *dp)
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

static int poll_loop(hp_dp *dp, int timeout_ms)
{
    struct epoll_event ev[64];
    double deadline = hp_dp_clock(dp) + timeout_ms / 1000.0;
    for (;;) {
        double now = hp_dp_clock(dp);
        if (now >= dp->next_tick) {
            hp_dp_tick(dp, now);
            dp->next_tick = now + HP_DP_TICK;
        }
        double wait = deadline - now;
        if (dp->next_tick - now < wait)
            wait = dp->next_tick - now;
        int ms = wait <= 0 ? 0 : (int)(wait * 1000.0) + 1;
        int n = epoll_wait(dp->epfd, ev, 64, ms);
        if (n < 0)
            return errno == EINTR ? HP_POLL_INTR : -1;
        now = hp_dp_clock(dp);
        int ready = 0;
        uint32_t got = 0;
        for (int i = 0; i < n; i++) {
            uint32_t u = ev[i].data.u32;
            if (u & WATCH_TAG)
                ready |= 1 << (u & 0xff);
            else if (ev[i].events & (EPOLLERR | EPOLLHUP))
                ready |= link_error(dp, dp->links[u]);
            else
                got += service(dp, dp->links[u], now);
        }
        if (dp->mt && __atomic_exchange_n(&dp->in_links_down, 0, __ATOMIC_SEQ_CST))
            ready |= HP_POLL_LINK_DOWN;
        if (ready)
            return ready;
        if (got)
            spin(dp, hp_dp_clock(dp), 0);
        if (hp_dp_clock(dp) >= deadline)
            return 0;
    }
}

/* Every time here is the data path's clock (hp_dp_clock): CLOCK_MONOTONIC plus the lab's
 * offset, so moving the clock forward runs the timers and the engines' expiry at once. */
int hp_dp_poll(hp_dp *dp, int timeout_ms)
{
    in_unpark(dp);
    int r = poll_loop(dp, timeout_ms);
    in_park(dp);
    return r;
}
