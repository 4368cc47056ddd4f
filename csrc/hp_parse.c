/* hp_parse.c - from raw bytes to a tuple, or to a named drop reason.
 *
 * Order of checks is part of the spec (hyperplane/engine/reference/parse.py, parse_packet): the
 * same bad packet gets the same reason from both engines.
 */
#include "hp_parse.h"

#include <string.h>

#include "hp_csum.h"

/* IPv6 extension headers we walk (RFC 8200 4.1): hop-by-hop, routing, destination options,
 * authentication header, fragment (44). */
static inline int is_ext_header(uint8_t nh)
{
    return nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44;
}

#define WALK_LATER_FRAGMENT (-1) /* walk_ext stopped at a later fragment's Fragment header */

/* Walk IPv6 extension headers from offset *l4 (next header *proto) to the transport header,
 * at most HP_MAX_EXT_HEADERS of them, never past end.
 *
 * A Fragment header (RFC 8200 4.5): with fr (the outer packet) its fields go to fr. An atomic
 * fragment (offset 0, M 0; RFC 6946) is a whole packet and the walk goes on; so it does for a
 * first fragment (offset 0, M 1), whose transport header follows; a later fragment (offset > 0)
 * ends the walk at WALK_LATER_FRAGMENT, *proto its Fragment header's next header and *l4 past it.
 * Without fr (a packet embedded in an ICMP error) a first fragment is walked through too (it has
 * the ports) and a later one is HP_R_FRAGMENT. */
static int walk_ext(const uint8_t *b, uint32_t end, uint8_t *proto, uint32_t *l4, hp_parsed *fr)
{
    for (int i = 0; i <= HP_MAX_EXT_HEADERS; i++) {
        if (!is_ext_header(*proto))
            return HP_R_NONE;
        if (*l4 + (*proto == 44 ? 8 : 2) > end)
            return HP_R_TRUNCATED;
        if (*proto == 44) {
            uint32_t at = *l4, off = hp_get16(b + at + 2) & 0xFFF8, more = b[at + 3] & 1;
            uint32_t len = end - (at + 8);
            *proto = b[at];
            *l4 = at + 8;
            if (!off && !more)
                continue; /* an atomic fragment: a whole packet */
            if (!fr) {    /* embedded: a first fragment has the ports, a later one has not */
                if (off)
                    return HP_R_FRAGMENT;
                continue;
            }
            if (fr->frag) /* a second Fragment header */
                return HP_R_BAD_FRAGMENT;
            if ((more && (len & 7)) || off + len > 65535)
                return HP_R_BAD_FRAGMENT; /* RFC 8200 4.5: a multiple of 8; at most 64 KiB */
            fr->frag = off ? HP_FRAG_LATER : HP_FRAG_FIRST;
            fr->frag_more = (uint8_t)more;
            fr->frag_id = (uint32_t)hp_get16(b + at + 4) << 16 | hp_get16(b + at + 6);
            fr->frag_off = off;
            fr->frag_len = len;
            if (off)
                return WALK_LATER_FRAGMENT;
            continue;
        }
        uint32_t hlen = *proto == 51 ? ((uint32_t)b[*l4 + 1] + 2) * 4
                                     : ((uint32_t)b[*l4 + 1] + 1) * 8;
        *proto = b[*l4];
        *l4 += hlen;
        if (*l4 > end)
            return HP_R_TRUNCATED;
    }
    return HP_R_EXT_HEADER_CHAIN;
}

/* ---- ICMP errors (RFC 792, RFC 4443 section 3) ------------------------------------------
 *
 * An ICMP error carries the start of the packet that caused it: its IP header and at least the
 * first 8 bytes after it, which hold the TCP/UDP ports. That embedded packet is how a NAT finds
 * the connection an error belongs to (RFC 5508 section 4, the kernel's nf_conntrack_icmp.c /
 * icmpv6.c). Errors: ICMPv4 destination unreachable (3, incl. code 4 "fragmentation needed"),
 * time exceeded (11), parameter problem (12); ICMPv6 destination unreachable (1), packet too
 * big (2), time exceeded (3), parameter problem (4). Anything else (echo, redirect, ...) is a
 * "query" here: it belongs to no TCP/UDP connection. */
static inline int icmp_is_error(int family, uint8_t type)
{
    if (family == 4)
        return type == 3 || type == 11 || type == 12;
    return type >= 1 && type <= 4;
}

/* The ICMP checksum covers the whole message; ICMPv6 adds a pseudo-header (RFC 4443 2.3). */
static int icmp_sum_ok(const uint8_t *b, int family, uint32_t l4, uint32_t end)
{
    uint64_t acc = 0;
    uint32_t len = end - l4, i;
    for (i = 0; i + 1 < len; i += 2)
        acc += hp_get16(b + l4 + i);
    if (len & 1)
        acc += (uint32_t)b[l4 + len - 1] << 8;
    if (family == 6) {
        for (i = 8; i < 40; i += 2) /* source and destination address */
            acc += hp_get16(b + i);
        acc += (len >> 16) + (len & 0xFFFF) + HP_IPPROTO_ICMPV6;
    }
    while (acc > 0xFFFF)
        acc = (acc & 0xFFFF) + (acc >> 16);
    return acc == 0xFFFF;
}

/* The embedded packet at offset at, running to end (usually cut short: only its tuple is
 * needed). It must be of the error's own family, carry TCP or UDP (an error about an ICMP
 * message is never answered with a translation: RFC 1122 3.2.2 forbids errors about errors,
 * so one is forged or broken), and hold 8 bytes of transport header. Its length and checksum
 * fields are not checked: they describe the whole original packet. */
static int parse_inner(const uint8_t *b, uint32_t at, uint32_t end, int family, hp_parsed *out)
{
    hp_tuple *t = &out->inner;
    uint32_t l4, avail = end - at;
    uint8_t proto;
    memset(t, 0, sizeof *t);
    if (avail < 1 || (b[at] >> 4) != family)
        return HP_R_BAD_ICMP;
    if (family == 4) {
        if (avail < 20)
            return HP_R_BAD_ICMP;
        uint32_t ihl = (uint32_t)(b[at] & 0x0F) * 4;
        if (ihl < 20)
            return HP_R_BAD_ICMP;
        if (hp_get16(b + at + 6) & 0x1FFF) /* a later fragment: it has no ports */
            return HP_R_BAD_ICMP;
        proto = b[at + 9];
        l4 = at + ihl;
        memcpy(t->src, b + at + 12, 4);
        memcpy(t->dst, b + at + 16, 4);
    } else {
        if (avail < 40)
            return HP_R_BAD_ICMP;
        proto = b[at + 6];
        l4 = at + 40;
        if (walk_ext(b, end, &proto, &l4, NULL) != HP_R_NONE) /* a later fragment included */
            return HP_R_BAD_ICMP;
        memcpy(t->src, b + at + 8, 16);
        memcpy(t->dst, b + at + 24, 16);
    }
    if (proto != HP_IPPROTO_TCP && proto != HP_IPPROTO_UDP)
        return HP_R_BAD_ICMP;
    if (l4 + 8 > end)
        return HP_R_BAD_ICMP;
    t->family = (uint8_t)family;
    t->proto = proto;
    t->sport = (uint16_t)hp_get16(b + l4);
    t->dport = (uint16_t)hp_get16(b + l4 + 2);
    out->inner_ip = at;
    out->inner_l4 = l4;
    return HP_R_NONE;
}

static int parse_icmp(const uint8_t *b, uint32_t l4, uint32_t end, uint32_t flags, uint8_t proto,
                      hp_parsed *out)
{
    if (end - l4 < 8)
        return HP_R_TRUNCATED; /* type, code, checksum and the 4 bytes after them */
    out->t.proto = proto;      /* ports stay 0 */
    out->l4 = l4;
    out->end = end;
    out->tcp_flags = 0;
    if (!icmp_is_error(out->t.family, b[l4])) {
        out->icmp = HP_ICMP_QUERY;
        return HP_R_NONE;
    }
    out->icmp = HP_ICMP_ERROR;
    /* RFC 5508 REQ-3: an error whose checksum fails is dropped, not translated (a translated
     * one would get a fresh, valid checksum). A partial checksum is not complete yet. */
    if (!(flags & HP_FLAG_CSUM_PARTIAL) && !icmp_sum_ok(b, out->t.family, l4, end))
        return HP_R_BAD_ICMP;
    return parse_inner(b, l4 + 8, end, out->t.family, out);
}

/* A later fragment: addresses, protocol and fragment fields only (no ports: they are in the
 * first fragment). Fragments of anything but TCP and UDP are unsupported like the rest; an IPv6
 * one may start inside an extension header of the fragmentable part. */
static int later_fragment(uint8_t proto, uint32_t l4, uint32_t end, hp_parsed *out)
{
    if (proto == HP_IPPROTO_ICMP || proto == HP_IPPROTO_ICMPV6 ||
        (proto != HP_IPPROTO_TCP && proto != HP_IPPROTO_UDP &&
         !(out->t.family == 6 && is_ext_header(proto))))
        return HP_R_UNSUPPORTED_PROTOCOL;
    out->t.proto = proto;
    out->l4 = l4;
    out->end = end;
    out->tcp_flags = 0;
    return HP_R_NONE;
}

int hp_parse(const uint8_t *b, uint32_t n, uint32_t flags, hp_parsed *out)
{
    uint32_t l4, end;
    uint8_t proto;

    if (n < 1)
        return HP_R_TRUNCATED;
    memset(&out->t, 0, sizeof out->t);
    out->icmp = HP_ICMP_NO;
    out->frag = HP_FRAG_NO;
    switch (b[0] >> 4) {
    case 4: {
        if (n < 20)
            return HP_R_TRUNCATED;
        uint32_t ihl = (uint32_t)(b[0] & 0x0F) * 4;
        if (ihl < 20)
            return HP_R_BAD_IP_HEADER;
        if (n < ihl)
            return HP_R_TRUNCATED;
        uint32_t total = hp_get16(b + 2);
        if (total < ihl)
            return HP_R_BAD_IP_HEADER;
        if (total > n)
            return HP_R_TRUNCATED;
        if (!hp_ip_header_sum_ok(b, ihl))
            return HP_R_BAD_IP_CHECKSUM; /* RFC 1812 5.2.2: a router verifies it */
        proto = b[9];
        l4 = ihl;
        end = total;
        memcpy(out->t.src, b + 12, 4);
        memcpy(out->t.dst, b + 16, 4);
        out->t.family = 4;
        out->l3_len = total;
        uint32_t fw = hp_get16(b + 6);
        if (fw & 0x3FFF) { /* MF set or a non-zero fragment offset (RFC 791) */
            uint32_t off = (fw & 0x1FFF) * 8, len = total - ihl, more = (fw >> 13) & 1;
            if ((more && (len & 7)) || off + len + ihl > 65535)
                return HP_R_BAD_FRAGMENT;
            if (proto == HP_IPPROTO_TCP && off == 8)
                return HP_R_BAD_FRAGMENT; /* RFC 1858 3.2: rewrites the TCP flags */
            out->frag = off ? HP_FRAG_LATER : HP_FRAG_FIRST;
            out->frag_more = (uint8_t)more;
            out->frag_id = hp_get16(b + 4);
            out->frag_off = off;
            out->frag_len = len;
            if (off)
                return later_fragment(proto, l4, end, out);
        }
        break;
    }
    case 6: {
        if (n < 40)
            return HP_R_TRUNCATED;
        uint32_t plen = hp_get16(b + 4);
        if (40 + plen > n)
            return HP_R_TRUNCATED;
        end = 40 + plen;
        proto = b[6];
        l4 = 40;
        memcpy(out->t.src, b + 8, 16);
        memcpy(out->t.dst, b + 24, 16);
        out->t.family = 6;
        out->l3_len = 40 + plen;
        int r = walk_ext(b, end, &proto, &l4, out);
        if (r == WALK_LATER_FRAGMENT)
            return later_fragment(proto, l4, end, out);
        if (r == HP_R_TRUNCATED && out->frag)
            return HP_R_BAD_FRAGMENT; /* RFC 7112: the whole header chain in the first one */
        if (r)
            return r;
        break;
    }
    default:
        return HP_R_BAD_IP_VERSION;
    }

    int first = out->frag == HP_FRAG_FIRST;
    if (proto == (out->t.family == 4 ? HP_IPPROTO_ICMP : HP_IPPROTO_ICMPV6))
        return first ? HP_R_UNSUPPORTED_PROTOCOL : parse_icmp(b, l4, end, flags, proto, out);
    if (proto != HP_IPPROTO_TCP && proto != HP_IPPROTO_UDP)
        return HP_R_UNSUPPORTED_PROTOCOL;
    /* A first fragment must hold the whole transport header (RFC 1858's tiny fragments); its
     * length fields describe the whole datagram, which goes on in later fragments. */
    uint32_t l4_len = end - l4;
    if (proto == HP_IPPROTO_TCP) {
        if (l4_len < 20)
            return first ? HP_R_BAD_FRAGMENT : HP_R_TRUNCATED;
        uint32_t doff = (uint32_t)(b[l4 + 12] >> 4) * 4;
        if (doff < 20)
            return HP_R_BAD_L4_HEADER;
        if (doff > l4_len)
            return first ? HP_R_BAD_FRAGMENT : HP_R_TRUNCATED;
        out->tcp_flags = b[l4 + 13];
    } else {
        if (l4_len < 8)
            return first ? HP_R_BAD_FRAGMENT : HP_R_TRUNCATED;
        uint32_t ulen = hp_get16(b + l4 + 4);
        if (ulen < 8)
            return HP_R_BAD_L4_HEADER;
        if (ulen > l4_len && !first)
            return HP_R_TRUNCATED;
        if (out->t.family == 6 && !(flags & HP_FLAG_CSUM_PARTIAL) && b[l4 + 6] == 0 &&
            b[l4 + 7] == 0)
            return HP_R_BAD_L4_HEADER; /* RFC 8200 8.1: IPv6 UDP must carry a checksum */
        out->tcp_flags = 0;
    }
    out->t.proto = proto;
    out->t.sport = (uint16_t)hp_get16(b + l4);
    out->t.dport = (uint16_t)hp_get16(b + l4 + 2);
    out->l4 = l4;
    out->end = end;
    return HP_R_NONE;
}
