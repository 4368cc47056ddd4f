/* hp_neigh.c - neighbour cache and ARP/NDP frames; see hp_neigh.h. */
#include "hp_neigh.h"

#include <stdlib.h>
#include <string.h>

#include "hp_csum.h"
#include "hp_types.h"

/* ---- the table: open addressing with linear probing, backward-shift deletion ---------------- */
static uint32_t neigh_hash(int family, const uint8_t *a)
{
    /* The low bytes of an address vary most within one link; mix them. */
    uint32_t x;
    memcpy(&x, family == 4 ? a : a + 12, 4);
    x ^= (uint32_t)family;
    x *= 0x9E3779B1u;
    return (x ^ (x >> 15)) & (HP_NEIGH_SLOTS - 1);
}

static int neigh_match(const hp_neigh *n, int family, const uint8_t *addr)
{
    return n->family == family && hp_eq_addr(family, n->addr, addr);
}

hp_neigh *hp_neigh_find(hp_neigh_table *t, int family, const uint8_t *addr)
{
    uint32_t i = neigh_hash(family, addr);
    for (uint32_t k = 0; k < HP_NEIGH_SLOTS; k++, i = (i + 1) & (HP_NEIGH_SLOTS - 1)) {
        hp_neigh *n = &t->slot[i];
        if (!n->family)
            return NULL;
        if (neigh_match(n, family, addr))
            return n;
    }
    return NULL;
}

hp_neigh *hp_neigh_get(hp_neigh_table *t, int family, const uint8_t *addr)
{
    uint32_t i = neigh_hash(family, addr);
    for (uint32_t k = 0; k < HP_NEIGH_SLOTS; k++, i = (i + 1) & (HP_NEIGH_SLOTS - 1)) {
        hp_neigh *n = &t->slot[i];
        if (!n->family) {
            if (t->n >= HP_NEIGH_MAX)
                return NULL;
            memset(n, 0, sizeof(*n));
            n->family = (uint8_t)family;
            memcpy(n->addr, addr, family == 4 ? 4 : 16);
            n->state = HP_NUD_INCOMPLETE;
            t->n++;
            return n;
        }
        if (neigh_match(n, family, addr))
            return n;
    }
    return NULL;
}

void hp_neigh_remove(hp_neigh_table *t, hp_neigh *n, hp_qpkt **queue)
{
    *queue = hp_neigh_take_queue(t, n);
    /* Backward shift (Knuth 6.4, algorithm R): move later members of the probe run into the
     * hole when their home slot does not lie cyclically in (hole, their slot]. */
    uint32_t hole = (uint32_t)(n - t->slot), j = hole;
    for (;;) {
        j = (j + 1) & (HP_NEIGH_SLOTS - 1);
        hp_neigh *m = &t->slot[j];
        if (!m->family)
            break;
        uint32_t home = neigh_hash(m->family, m->addr);
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays)
            continue;
        t->slot[hole] = *m;
        hole = j;
    }
    memset(&t->slot[hole], 0, sizeof(hp_neigh));
    t->n--;
}

void hp_neigh_free_queue(hp_qpkt *q)
{
    while (q) {
        hp_qpkt *next = q->next;
        free(q);
        q = next;
    }
}

int hp_neigh_enqueue(hp_neigh_table *t, hp_neigh *n, const struct virtio_net_hdr *vh,
                     const uint8_t *frame, uint32_t len, hp_qpkt **dropped)
{
    int rc = 0;
    *dropped = NULL;
    while (n->qhead && (n->qbytes + len > HP_NEIGH_UNRES_BYTES ||
                        t->qbytes + len > HP_NEIGH_QBYTES)) {
        hp_qpkt *old = n->qhead; /* Linux drops the oldest waiting packet, so do we */
        n->qhead = old->next;
        if (!n->qhead)
            n->qtail = NULL;
        n->qlen--;
        n->qbytes -= old->len;
        t->qbytes -= old->len;
        old->next = *dropped;
        *dropped = old;
        rc = 1;
    }
    if (n->qbytes + len > HP_NEIGH_UNRES_BYTES || t->qbytes + len > HP_NEIGH_QBYTES)
        return -1; /* no room even with this neighbour's queue empty */
    hp_qpkt *q = malloc(sizeof(hp_qpkt) + len);
    if (!q)
        return -1;
    q->next = NULL;
    q->vh = *vh;
    q->len = len;
    memcpy(q->frame, frame, len);
    if (n->qtail)
        n->qtail->next = q;
    else
        n->qhead = q;
    n->qtail = q;
    n->qlen++;
    n->qbytes += len;
    t->qbytes += len;
    return rc;
}

hp_qpkt *hp_neigh_take_queue(hp_neigh_table *t, hp_neigh *n)
{
    hp_qpkt *q = n->qhead;
    for (hp_qpkt *p = q; p; p = p->next)
        t->qbytes -= p->len;
    n->qhead = n->qtail = NULL;
    n->qlen = n->qbytes = 0;
    return q;
}

void hp_neigh_confirm(hp_neigh *n, const uint8_t *mac, double now)
{
    memcpy(n->mac, mac, 6);
    n->state = HP_NUD_REACHABLE;
    n->probes = 0;
    n->deadline = now + HP_NEIGH_REACHABLE;
}

/* ---- frames ---------------------------------------------------------------------------------- */
static const uint8_t BCAST[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static void eth_header(uint8_t *out, const uint8_t *dst, const uint8_t *src, uint16_t type)
{
    memcpy(out, dst, 6);
    memcpy(out + 6, src, 6);
    hp_put16(out + 12, type);
}

uint32_t hp_arp_build(uint8_t *out, int op, const uint8_t *src_mac, const uint8_t *dst_mac,
                      const uint8_t *sha, const uint8_t *spa, const uint8_t *tha,
                      const uint8_t *tpa)
{
    static const uint8_t zero[6];
    memset(out, 0, HP_ARP_FRAME_LEN);
    eth_header(out, dst_mac ? dst_mac : BCAST, src_mac, 0x0806);
    uint8_t *a = out + 14;
    hp_put16(a, 1);         /* hardware type: Ethernet */
    hp_put16(a + 2, 0x0800); /* protocol type: IPv4 */
    a[4] = 6;
    a[5] = 4;
    hp_put16(a + 6, (uint32_t)op); /* 1 request, 2 reply */
    memcpy(a + 8, sha, 6);
    memcpy(a + 14, spa, 4);
    memcpy(a + 18, tha ? tha : zero, 6);
    memcpy(a + 24, tpa, 4);
    return HP_ARP_FRAME_LEN;
}

uint16_t hp_icmp6_csum(const uint8_t *ip6, uint32_t icmp_len)
{
    /* RFC 4443 section 2.3: over the pseudo-header (RFC 8200 section 8.1) and the message. */
    uint32_t s = 0;
    for (int i = 8; i < 40; i += 2)
        s += hp_get16(ip6 + i);
    s += icmp_len >> 16;
    s += icmp_len & 0xffff;
    s += 58;
    const uint8_t *m = ip6 + 40;
    uint32_t i = 0;
    for (; i + 1 < icmp_len; i += 2)
        s += hp_get16(m + i);
    if (i < icmp_len)
        s += (uint32_t)m[i] << 8;
    return (uint16_t)~hp_fold(s);
}

static uint32_t icmp6_frame(uint8_t *out, const uint8_t *dst_mac, const uint8_t *src_mac,
                            const uint8_t *src_ip, const uint8_t *dst_ip, uint32_t icmp_len)
{
    eth_header(out, dst_mac, src_mac, 0x86DD);
    uint8_t *ip = out + 14;
    ip[0] = 0x60;
    ip[1] = ip[2] = ip[3] = 0;
    hp_put16(ip + 4, icmp_len);
    ip[6] = 58;   /* ICMPv6 */
    ip[7] = 255;  /* RFC 4861: NDP messages carry hop limit 255, receivers check it */
    memcpy(ip + 8, src_ip, 16);
    memcpy(ip + 24, dst_ip, 16);
    uint8_t *m = ip + 40;
    hp_put16(m + 2, 0);
    hp_put16(m + 2, hp_icmp6_csum(ip, icmp_len));
    return 14 + 40 + icmp_len;
}

uint32_t hp_ndp_ns_build(uint8_t *out, const uint8_t *src_mac, const uint8_t *dst_mac,
                         const uint8_t *src_ip, const uint8_t *target)
{
    uint8_t dip[16], mmac[6];
    if (dst_mac) {
        memcpy(dip, target, 16);
    } else {
        /* Solicited-node multicast ff02::1:ffXX:XXXX (RFC 4291 section 2.7.1) and its MAC
         * 33:33:ff:XX:XX:XX (RFC 2464 section 7). */
        static const uint8_t sn[13] = {0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff};
        memcpy(dip, sn, 13);
        memcpy(dip + 13, target + 13, 3);
        mmac[0] = mmac[1] = 0x33;
        memcpy(mmac + 2, dip + 12, 4);
        dst_mac = mmac;
    }
    uint8_t *m = out + 14 + 40;
    memset(m, 0, 32);
    m[0] = 135; /* Neighbor Solicitation, RFC 4861 section 4.3 */
    memcpy(m + 8, target, 16);
    m[24] = 1; /* option: source link-layer address, length 1 (8 bytes) */
    m[25] = 1;
    memcpy(m + 26, src_mac, 6);
    return icmp6_frame(out, dst_mac, src_mac, src_ip, dip, 32);
}

uint32_t hp_ndp_na_build(uint8_t *out, const uint8_t *our_mac, const uint8_t *dst_mac,
                         const uint8_t *target, const uint8_t *dst_ip, int router,
                         int solicited)
{
    uint8_t *m = out + 14 + 40;
    memset(m, 0, 32);
    m[0] = 136; /* Neighbor Advertisement, RFC 4861 section 4.4 */
    m[4] = (uint8_t)((router ? 0x80 : 0) | (solicited ? 0x40 : 0) | 0x20 /* override */);
    memcpy(m + 8, target, 16);
    m[24] = 2; /* option: target link-layer address */
    m[25] = 1;
    memcpy(m + 26, our_mac, 6);
    return icmp6_frame(out, dst_mac, our_mac, target, dst_ip, 32);
}
