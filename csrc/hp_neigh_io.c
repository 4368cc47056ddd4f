/* hp_neigh_io.c - the neighbour cache at work on a data path link: ARP and NDP input for the
 * addresses we own, probes, sending through a resolved neighbour or queueing for one, and
 * the timers (hp_dp_tick). The cache itself and the frames are in hp_neigh.c, without I/O.
 */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

#include <stdlib.h>
#include <string.h>

#include "hp_csum.h"

/* ---- neighbours -------------------------------------------------------------------------- */
/* Sending is through the calling thread's port p of link l. */
static void probe(hp_port *p, hp_link *l, hp_neigh *n, double now)
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
        hp_io_send_now(p, &NO_VNET, buf, len);
    n->probes++;
    n->deadline = now + HP_NEIGH_RETRANS;
}

static void set_macs(uint8_t *frame, const uint8_t *dst, const uint8_t *src)
{
    memcpy(frame, dst, 6);
    memcpy(frame + 6, src, 6);
}

/* A reply arrived: the MAC is known; send what waited for it, oldest first. */
static void resolved(hp_port *p, hp_link *l, hp_neigh *n, const uint8_t *mac, double now)
{
    hp_neigh_confirm(n, mac, now);
    hp_qpkt *q = hp_neigh_take_queue(&l->neigh, n);
    if (q)
        hp_io_flush(p);
    while (q) {
        hp_qpkt *next = q->next;
        set_macs(q->frame, mac, l->mac);
        hp_io_send_now(p, &q->vh, q->frame, q->len);
        free(q);
        q = next;
    }
}

/* Someone who is talking to us told us its MAC (an ARP request, an NS with a source
 * link-layer option): RFC 826's merge, RFC 4861 section 7.2.3. */
static void learn(hp_port *p, hp_link *l, int family, const uint8_t *addr, const uint8_t *mac,
                  double now)
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
        resolved(p, l, n, mac, now);
    } else if (!hp_eq_mac(n->mac, mac)) {
        memcpy(n->mac, mac, 6);
        n->state = HP_NUD_STALE;
        n->deadline = now + HP_NEIGH_GC;
    }
}

static void transmit_locked(hp_dp *dp, int w, hp_link *out, int family, const uint8_t *nexthop,
                            const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len,
                            double now)
{
    hp_port *p = PORT(out, w);
    hp_neigh *n = hp_neigh_find(&out->neigh, family, nexthop);
    if (n && n->state != HP_NUD_INCOMPLETE) {
        if (n->state == HP_NUD_STALE) { /* use it, and ask whether it is still there */
            n->state = HP_NUD_PROBE;
            n->probes = 0;
            probe(p, out, n, now);
        }
        set_macs(frame, n->mac, out->mac);
        hp_io_send(p, vh, frame, len);
        return;
    }
    if (!n) {
        n = hp_neigh_get(&out->neigh, family, nexthop);
        if (!n) {
            COUNT_DROP(dp, HP_D_NEIGH_TABLE_FULL);
            return;
        }
        probe(p, out, n, now);
    }
    hp_qpkt *dropped;
    int r = hp_neigh_enqueue(&out->neigh, n, vh, frame, len, &dropped);
    while (dropped) { /* the oldest waiting packets that made room */
        hp_qpkt *next = dropped->next;
        free(dropped);
        COUNT_DROP(dp, HP_D_NEIGH_QUEUE_FULL);
        dropped = next;
    }
    if (r < 0)
        COUNT_DROP(dp, HP_D_NEIGH_QUEUE_FULL);
}

void hp_transmit(hp_dp *dp, int w, hp_link *out, int family, const uint8_t *nexthop,
                 const struct virtio_net_hdr *vh, uint8_t *frame, uint32_t len, double now)
{
    lock(dp, &out->lock);
    transmit_locked(dp, w, out, family, nexthop, vh, frame, len, now);
    unlock(dp, &out->lock);
}

void hp_dp_tick(hp_dp *dp, double now)
{
    for (unsigned li = 0; li < dp->n_links; li++) {
        hp_link *l = dp->links[li];
        lock(dp, &l->lock); /* before looking at n: other threads add neighbours */
        if (!l->neigh.n) {
            unlock(dp, &l->lock);
            continue;
        }
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
                    probe(PORT(l, 0), l, n, now);
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
            hp_neigh_free_queue(q);
            /* backward shift may have moved a later entry into slot i: look at it again */
        }
        unlock(dp, &l->lock);
    }
    /* the loop's engines; with workers, each worker advances its own (hp_dp_worker.c) */
    for (unsigned g = 0; g < dp->n_groups; g++) {
        lock_engine(dp, &dp->groups[g]);
        hp_engine_advance(dp->groups[g].shard[0], now);
        unlock_engine(dp, &dp->groups[g]);
    }
}

/* ---- ARP and NDP for the addresses we own ---------------------------------------------------- */
void hp_arp_input(hp_dp *dp, int w, hp_link *l, const uint8_t *f, uint32_t len, double now)
{
    hp_port *p = PORT(l, w);
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
        hp_io_send_now(p, &NO_VNET, out, n);
        l->arp_out++;
        if (has_sender)
            learn(p, l, 4, spa, sha, now);
        return;
    }
    /* A reply, or any ARP from a neighbour we already track, updates it; ARP never creates an
     * entry we did not ask for (like the kernel's arp_accept=0), so it cannot fill the table. */
    hp_neigh *n = has_sender ? hp_neigh_find(&l->neigh, 4, spa) : NULL;
    if (!n)
        return;
    if (op == 2)
        resolved(p, l, n, sha, now);
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

void hp_ndp_input(hp_dp *dp, int w, hp_link *l, const uint8_t *f, uint32_t len, double now)
{
    hp_port *p = PORT(l, w);
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
                learn(p, l, 6, src, mac, now);
        }
        hp_io_send_now(p, &NO_VNET, out, n);
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
            resolved(p, l, n, mac, now);
        else if (m[4] & 0x20) /* override */
            memcpy(n->mac, mac, 6);
    }
}
