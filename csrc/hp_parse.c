/* hp_parse.c - from raw bytes to a tuple, or to a named drop reason.
 *
 * Order of checks is part of the spec (hyperplane/reference.py, Engine._parse): the same bad
 * packet gets the same reason from both engines.
 */
#include "hp_parse.h"

#include <string.h>

#include "hp_csum.h"

/* IPv6 extension headers we walk (RFC 8200 4.1): hop-by-hop, routing, destination options,
 * authentication header. A fragment header (44) is reported as a fragment. */
static inline int is_ext_header(uint8_t nh)
{
    return nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44;
}

/* Walk IPv6 extension headers from offset *l4 (next header *proto) to the transport header,
 * at most HP_MAX_EXT_HEADERS of them, never past end. */
static int walk_ext(const uint8_t *b, uint32_t end, uint8_t *proto, uint32_t *l4)
{
    for (int i = 0; i <= HP_MAX_EXT_HEADERS; i++) {
        if (!is_ext_header(*proto))
            return HP_R_NONE;
        if (*proto == 44)
            return HP_R_FRAGMENT;
        if (*l4 + 2 > end)
            return HP_R_TRUNCATED;
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
        if (walk_ext(b, end, &proto, &l4) != HP_R_NONE) /* fragments included */
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

int hp_parse(const uint8_t *b, uint32_t n, uint32_t flags, hp_parsed *out)
{
    uint32_t l4, end;
    uint8_t proto;

    if (n < 1)
        return HP_R_TRUNCATED;
    memset(&out->t, 0, sizeof out->t);
    out->icmp = HP_ICMP_NO;
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
        if (hp_get16(b + 6) & 0x3FFF)    /* MF set or a non-zero fragment offset */
            return HP_R_FRAGMENT;
        proto = b[9];
        l4 = ihl;
        end = total;
        memcpy(out->t.src, b + 12, 4);
        memcpy(out->t.dst, b + 16, 4);
        out->t.family = 4;
        out->l3_len = total;
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
        int r = walk_ext(b, end, &proto, &l4);
        if (r)
            return r;
        memcpy(out->t.src, b + 8, 16);
        memcpy(out->t.dst, b + 24, 16);
        out->t.family = 6;
        out->l3_len = 40 + plen;
        break;
    }
    default:
        return HP_R_BAD_IP_VERSION;
    }

    if (proto == (out->t.family == 4 ? HP_IPPROTO_ICMP : HP_IPPROTO_ICMPV6))
        return parse_icmp(b, l4, end, flags, proto, out);
    if (proto != HP_IPPROTO_TCP && proto != HP_IPPROTO_UDP)
        return HP_R_UNSUPPORTED_PROTOCOL;
    uint32_t l4_len = end - l4;
    if (proto == HP_IPPROTO_TCP) {
        if (l4_len < 20)
            return HP_R_TRUNCATED;
        uint32_t doff = (uint32_t)(b[l4 + 12] >> 4) * 4;
        if (doff < 20)
            return HP_R_BAD_L4_HEADER;
        if (doff > l4_len)
            return HP_R_TRUNCATED;
        out->tcp_flags = b[l4 + 13];
    } else {
        if (l4_len < 8)
            return HP_R_TRUNCATED;
        uint32_t ulen = hp_get16(b + l4 + 4);
        if (ulen < 8)
            return HP_R_BAD_L4_HEADER;
        if (ulen > l4_len)
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
