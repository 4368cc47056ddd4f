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

int hp_parse(const uint8_t *b, uint32_t n, uint32_t flags, hp_parsed *out)
{
    uint32_t l4, end;
    uint8_t proto;

    if (n < 1)
        return HP_R_TRUNCATED;
    memset(&out->t, 0, sizeof out->t);
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
        int i;
        for (i = 0; i <= HP_MAX_EXT_HEADERS; i++) {
            if (!is_ext_header(proto))
                break;
            if (proto == 44)
                return HP_R_FRAGMENT;
            if (l4 + 2 > end)
                return HP_R_TRUNCATED;
            uint32_t hlen = proto == 51 ? ((uint32_t)b[l4 + 1] + 2) * 4
                                        : ((uint32_t)b[l4 + 1] + 1) * 8;
            proto = b[l4];
            l4 += hlen;
            if (l4 > end)
                return HP_R_TRUNCATED;
        }
        if (i > HP_MAX_EXT_HEADERS)
            return HP_R_EXT_HEADER_CHAIN;
        memcpy(out->t.src, b + 8, 16);
        memcpy(out->t.dst, b + 24, 16);
        out->t.family = 6;
        out->l3_len = 40 + plen;
        break;
    }
    default:
        return HP_R_BAD_IP_VERSION;
    }

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
    return HP_R_NONE;
}
