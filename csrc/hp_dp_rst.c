/* hp_dp_rst.c - the data path's TCP reset for a segment of no connection. */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

#include <string.h>

#include "hp_csum.h"
#include "hp_tcp.h"

/* ---- TCP reset for a segment of no connection ---------------------------------------------- */
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
 * came from, addresses and ports swapped, complete checksums, TTL / hop limit 64.
 *
 * A first IP fragment (IPv4 MF, IPv6 M; this data path does not reassemble) holds only the start
 * of its segment: SEG.LEN is the whole segment's length, which is in later fragments, so the
 * ack = SEG.SEQ + SEG.LEN of a segment without ACK cannot be computed. A RST whose ack counts
 * only the first fragment would acknowledge data nobody received, so none is sent: the fragment
 * is counted in rst_withheld_fragment (it is still the engine's tcp_not_syn drop). This is a
 * deliberate gap in RFC 9293 3.10.7.1's "causes a RST to be sent": only a segment without ACK
 * (and, being tcp_not_syn, without SYN) meets it, which no TCP sends on a connection (RFC 9293
 * 3.10.7.4, fifth: a synchronized endpoint drops a segment without ACK), so what is withheld
 * is an answer to a FIN or NULL scan. With ACK set the RST is <SEQ=SEG.ACK><CTL=RST>, which
 * needs no length: a first fragment with ACK gets its RST. A later fragment carries no TCP
 * header (it is dropped as `fragment`, never tcp_not_syn); it is refused here all the same. */
void hp_send_rst(hp_dp *dp, int w, hp_link *l, const uint8_t *f, const uint8_t *ip, uint32_t n,
                 uint32_t flags)
{
    hp_parsed p;
    if (hp_parse(ip, n, flags, &p) != HP_R_NONE || p.t.proto != HP_IPPROTO_TCP)
        return;
    if (p.frag == HP_FRAG_LATER)
        return;
    const uint8_t *th = ip + p.l4;
    uint8_t fl = th[13];
    if (fl & HP_TH_RST)
        return;
    if (!(fl & HP_TH_ACK) && p.frag == HP_FRAG_FIRST) {
        __atomic_fetch_add(&dp->rst_withheld_fragment, 1, __ATOMIC_RELAXED);
        return;
    }
    uint32_t doff = (uint32_t)(th[12] >> 4) * 4;
    uint32_t seg_len = p.l3_len - p.l4 - doff + !!(fl & HP_TH_SYN) + !!(fl & HP_TH_FIN);
    uint32_t seq = 0, ack = 0;
    uint8_t rfl = HP_TH_RST;
    if (fl & HP_TH_ACK) {
        seq = (uint32_t)hp_get16(th + 8) << 16 | hp_get16(th + 10);
    } else {
        ack = ((uint32_t)hp_get16(th + 4) << 16 | hp_get16(th + 6)) + seg_len;
        rfl |= HP_TH_ACK;
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
    hp_io_send_now(PORT(l, w), &NO_VNET, out, 14 + iplen + 20);
    unlock(dp, &l->lock);
    __atomic_fetch_add(&dp->rst_sent, 1, __ATOMIC_RELAXED);
}
