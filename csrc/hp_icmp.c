/* hp_icmp.c - ICMP errors about a tracked connection, translated; ICMP queries dropped. */
#include "hp_engine_internal.h"

#include <string.h>

#include "hp_csum.h"

/* ---- ICMP errors (RFC 5508 section 4; the kernel's nf_nat_icmp_reply_translation) ------- *
 *
 * An ICMP error about a packet of a tracked connection is RELATED to it, in the kernel's word:
 * it is translated so that the host that sent the packet learns of the error ("port
 * unreachable" fails the socket, "fragmentation needed" / "packet too big" lowers the path MTU,
 * RFC 1191 / RFC 8201), but it is not the connection's traffic: its state, timer and counters
 * stay as they are (RFC 5508 REQ-6: an error must not refresh or delete the mapping; else a
 * forged error could keep a mapping alive or kill it).
 *
 * The error carries the offending packet's IP header and first 8+ bytes (ports), as that
 * packet was when the error's sender saw it, i.e. on the far side of the NAT:
 *   inbound (from the VPC): the packet the NAT sent, ENI:port -> peer. Reversed, that is the
 *     connection's reply tuple. Translation (RFC 5508 REQ-4): outer destination ENI ->
 *     environment, embedded source ENI:port -> environment:port;
 *   outbound (from an environment): a reply the environment received, peer -> env:port.
 *     Reversed, the orig tuple. Translation: outer source environment -> ENI, embedded
 *     destination env:port -> ENI:port.
 * The error must travel back along the embedded packet's path (the kernel's "outer daddr
 * mismatch" check): its outer destination is the embedded source; an environment's error must
 * also come from the embedded destination (its own address), so one environment cannot send
 * errors about another's connections. The ICMP type, code and the rest of its header (the
 * next-hop MTU of a PMTU error) are left alone.
 *
 * Checksums, all incremental (RFC 1624): the outer IPv4 header (address, TTL); the embedded
 * IPv4 header (address); the embedded TCP/UDP checksum when its field is inside the message
 * (address and port; an IPv4 UDP checksum of 0 stays 0); the ICMP checksum, which covers the
 * embedded bytes just changed and, for ICMPv6 only, the outer addresses (pseudo-header). When
 * the ICMP checksum is partial (offloaded) only the pseudo-header part moves. */
static void icmp_manip(uint8_t *b, const hp_parsed *p, uint32_t flags, int dir,
                       const uint8_t *addr, uint16_t port)
{
    int v4 = p->t.family == 4, udp = p->inner.proto == HP_IPPROTO_UDP;
    int outer_src = dir == HP_DIR_ORIG, inner_src = dir == HP_DIR_REPLY;
    unsigned alen = v4 ? 4 : 16;
    uint8_t *oa = b + (v4 ? (outer_src ? 12 : 16) : (outer_src ? 8 : 24));
    uint8_t *ip = b + p->inner_ip, *l4 = b + p->inner_l4;
    uint8_t *ia = ip + (v4 ? (inner_src ? 12 : 16) : (inner_src ? 8 : 24));
    uint8_t *ipp = l4 + (inner_src ? 0 : 2);
    uint32_t d_outer = hp_csum_delta(oa, addr, alen);
    uint32_t d_inner = hp_csum_delta(ia, addr, alen);
    uint32_t old_port = hp_get16(ipp);
    uint32_t d_icmp = d_inner + hp_csum_delta16(old_port, port); /* words inside the message */

    if (v4) { /* the embedded IPv4 header checksum covers its addresses */
        uint32_t old = hp_get16(ip + 10), neu = hp_csum_update_full(old, d_inner);
        d_icmp += hp_csum_delta16(old, neu);
        hp_put16(ip + 10, neu);
    }
    uint32_t c_off = p->inner_l4 + (udp ? 6 : 16);
    if (c_off + 2 <= p->end) { /* a TCP checksum lies past the 8 bytes an error must carry */
        uint32_t old = hp_get16(b + c_off);
        if (!(udp && v4 && old == 0)) { /* RFC 768: IPv4 UDP checksum 0 stays 0 */
            uint32_t neu = hp_csum_update_full(
                old, hp_fold(d_inner + hp_csum_delta16(old_port, port)));
            if (udp && neu == 0)
                neu = 0xFFFF;
            d_icmp += hp_csum_delta16(old, neu);
            hp_put16(b + c_off, neu);
        }
    }
    memcpy(ia, addr, alen);
    hp_put16(ipp, port);

    if (v4) {
        uint32_t ttlw = hp_get16(b + 8);
        uint32_t d_ip = hp_fold(d_outer + hp_csum_delta16(ttlw, ttlw - 0x100));
        hp_put16(b + 10, hp_csum_update_full(hp_get16(b + 10), d_ip));
        b[8]--;
    } else {
        b[7]--;
    }
    uint8_t *ic = b + p->l4 + 2;
    if (flags & HP_FLAG_CSUM_PARTIAL) {
        if (!v4) /* the pseudo-header sum: outer addresses */
            hp_put16(ic, hp_csum_update_partial(hp_get16(ic), d_outer));
    } else {
        if (!v4)
            d_icmp += d_outer;
        hp_put16(ic, hp_csum_update_full(hp_get16(ic), hp_fold(d_icmp)));
    }
    memcpy(oa, addr, alen);
}

/* An ICMP packet that parsed: translate an error that belongs to a connection, drop the rest
 * (queries: Lambda supports only TCP and UDP; from the VPC they are unsolicited). */
int hp_icmp_translate(hp_engine *e, int dir, uint8_t *b, const hp_parsed *p, uint32_t flags,
                      double now, uint8_t *reason)
{
    if (p->icmp == HP_ICMP_ERROR) {
        /* the connection's tuple in this packet's direction: the embedded one, reversed */
        hp_tuple k = p->inner;
        memcpy(k.src, p->inner.dst, 16);
        memcpy(k.dst, p->inner.src, 16);
        k.sport = p->inner.dport;
        k.dport = p->inner.sport;
        uint32_t node = lookup(e, &k);
        int related = node && (int)(node & 1) == dir &&
                      memcmp(p->t.dst, p->inner.src, 16) == 0 &&
                      (dir == HP_DIR_REPLY || memcmp(p->t.src, p->inner.dst, 16) == 0);
        if (related) {
            const hp_entry *x = &e->entries[node >> 1];
            if (dir == HP_DIR_REPLY)
                icmp_manip(b, p, flags, dir, x->tuple[HP_DIR_ORIG].src,
                           x->tuple[HP_DIR_ORIG].sport);
            else
                icmp_manip(b, p, flags, dir, x->tuple[HP_DIR_REPLY].dst,
                           x->tuple[HP_DIR_REPLY].dport);
            e->icmp_errors++;
            *reason = HP_R_NONE;
            return dir == HP_DIR_REPLY ? HP_REPLY : HP_ESTABLISHED;
        }
        if (dir == HP_DIR_ORIG)
            return drop(e, HP_R_ICMP_UNRELATED, reason);
    } else if (dir == HP_DIR_ORIG) {
        return drop(e, HP_R_UNSUPPORTED_PROTOCOL, reason);
    }
    hp_ev_reject(e, &p->t, HP_DIR_REPLY, p->l3_len, HP_R_UNSOLICITED, now);
    return drop(e, HP_R_UNSOLICITED, reason);
}
