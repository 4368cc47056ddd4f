/* hp_ports.h - one port pool per (ENI address, protocol). */
#ifndef HP_PORTS_H
#define HP_PORTS_H

#include <stddef.h>
#include <stdint.h>

/* Free ports form a doubly linked FIFO list over port indices; index n is the sentinel. The
 * initial order is a seeded permutation (RFC 6056 3.3.1); a freed port goes to the tail, so it
 * is handed out again only after every port that was free before it (RFC 6056 3.1).
 * take/free/take-specific are O(1); exhaustion is exact (n_free == 0).
 *
 * A pool holds one slice of [port_min, port_max]: the ports p with
 * (p >> HP_PORT_BLOCK_SHIFT) % stride == slice (a data path worker's share, issue 19: ports go
 * to workers in pairs, hp_dp_steer.c says why); stride 1 is the whole range. Indices count the
 * slice's ports in ascending order (hp_pool_port, hp_pool_index). n may be 0 (a range too
 * narrow for the slice). */
#include "hp_types.h"

#define HP_BLOCK (1u << HP_PORT_BLOCK_SHIFT)

typedef struct {
    uint16_t *next, *prev; /* n + 1 slots each */
    double *freed_at;      /* -inf until first freed */
    uint8_t *in_use;
    uint32_t n, n_free;
    uint16_t port_min;     /* the range's first port (index 0 when stride is 1) */
    uint16_t stride;       /* how many slices (1: every port of the range) */
    uint32_t b0;           /* stride > 1: the slice's first block (port >> HP_PORT_BLOCK_SHIFT) */
    uint32_t skip;         /* stride > 1: that block's ports below port_min */
} hp_pool;

/* The ports of [port_min, port_max] in slice `slice` of `stride` (stride 0 counts as 1): how
 * many, and the first in *first (port_min when there are none). */
uint32_t hp_slice_ports(uint16_t port_min, uint16_t port_max, uint16_t stride, uint16_t slice,
                        uint16_t *first);

int hp_pool_init(hp_pool *p, uint64_t seed, unsigned eni_index, int family, int proto,
                 uint16_t port_min, uint16_t port_max, uint16_t stride, uint16_t slice);
void hp_pool_destroy(hp_pool *p);
size_t hp_pool_bytes(const hp_pool *p);

/* Up to 1 + HP_PORT_PROBES candidate ports, best first, into out[]; returns the count.
 * The preferred port comes first when it is free and was not freed within reuse_delay. */
unsigned hp_pool_candidates(const hp_pool *p, uint16_t preferred, double now, double reuse_delay,
                            uint16_t *out);
/* The port of index i (< n). */
static inline uint16_t hp_pool_port(const hp_pool *p, uint32_t i)
{
    if (p->stride == 1)
        return (uint16_t)(p->port_min + i);
    uint32_t j = i + p->skip;
    return (uint16_t)(((p->b0 + (j >> HP_PORT_BLOCK_SHIFT) * p->stride) << HP_PORT_BLOCK_SHIFT) |
                      (j & (HP_BLOCK - 1)));
}
/* The index of port, which must be one of this pool's (hp_pool_find). */
static inline uint32_t hp_pool_index(const hp_pool *p, uint16_t port)
{
    if (p->stride == 1)
        return (uint32_t)port - p->port_min;
    return ((uint32_t)(port >> HP_PORT_BLOCK_SHIFT) - p->b0) / p->stride * HP_BLOCK +
           (port & (HP_BLOCK - 1)) - p->skip;
}
/* The index of port when it is one of this pool's (in its slice and range, in use or not),
 * else UINT32_MAX. A port below port_min wraps to a large d, past n. */
static inline uint32_t hp_pool_find(const hp_pool *p, uint16_t port)
{
    if (p->stride == 1) {
        uint32_t d = (uint32_t)port - p->port_min;
        return d < p->n ? d : UINT32_MAX;
    }
    uint32_t b = (uint32_t)port >> HP_PORT_BLOCK_SHIFT;
    if (!p->n || port < p->port_min || b < p->b0 || (b - p->b0) % p->stride)
        return UINT32_MAX;
    uint32_t i = hp_pool_index(p, port);
    return i < p->n ? i : UINT32_MAX;
}
void hp_pool_take(hp_pool *p, uint16_t port);
void hp_pool_release(hp_pool *p, uint16_t port, double now);

#endif
