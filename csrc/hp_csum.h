/* hp_csum.h - incremental Internet checksum updates (RFC 1071, RFC 1624).
 *
 * A "delta" is the one's-complement sum of ~old + new over 16-bit big-endian words. One's-
 * complement addition is associative, so deltas of parts (address, port, TTL) can be added and
 * folded in any grouping and give the same 16 bits as one pass (the reference engine's
 * csum_delta does one pass; the differential tests hold the two equal).
 */
#ifndef HP_CSUM_H
#define HP_CSUM_H

#include <stdint.h>

static inline uint32_t hp_fold(uint32_t x)
{
    while (x > 0xFFFFu)
        x = (x & 0xFFFFu) + (x >> 16);
    return x;
}

/* ~old + new over len bytes (len even), folded to 16 bits. */
static inline uint32_t hp_csum_delta(const uint8_t *old, const uint8_t *new_, unsigned len)
{
    uint32_t acc = 0;
    for (unsigned i = 0; i < len; i += 2) {
        acc += 0xFFFFu ^ (((uint32_t)old[i] << 8) | old[i + 1]);
        acc += ((uint32_t)new_[i] << 8) | new_[i + 1];
    }
    return hp_fold(acc);
}

static inline uint32_t hp_csum_delta16(uint32_t oldw, uint32_t neww)
{
    return hp_fold((0xFFFFu ^ oldw) + neww);
}

/* A complete (complemented) checksum field: HC' = ~(~HC + ~m + m')  (RFC 1624 eqn. 3). */
static inline uint32_t hp_csum_update_full(uint32_t csum, uint32_t delta)
{
    return 0xFFFFu ^ hp_fold((0xFFFFu ^ csum) + delta);
}

/* A partial checksum field (virtio-net NEEDS_CSUM, CHECKSUM_PARTIAL): it holds the
 * *uncomplemented* pseudo-header sum, completed later by the NIC/GSO, so it moves by the delta
 * without complementing (PACKET_IO.md, "The checksum trap"). */
static inline uint32_t hp_csum_update_partial(uint32_t csum, uint32_t delta)
{
    return hp_fold(csum + delta);
}

/* Verify a complete checksum over an IPv4 header: the one's-complement sum is all ones. */
static inline int hp_ip_header_sum_ok(const uint8_t *h, unsigned len)
{
    uint32_t acc = 0;
    for (unsigned i = 0; i < len; i += 2)
        acc += ((uint32_t)h[i] << 8) | h[i + 1];
    return hp_fold(acc) == 0xFFFFu;
}

static inline uint32_t hp_get16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline void hp_put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

#endif
