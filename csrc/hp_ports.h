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
 * A pool holds one slice of [port_min, port_max]: the ports p with p % stride == slice (a data
 * path worker's share, issue 19); stride 1 is the whole range. Index i is port first + i * stride,
 * first being the lowest port of the slice. n may be 0 (a range too narrow for the slice). */
typedef struct {
    uint16_t *next, *prev; /* n + 1 slots each */
    double *freed_at;      /* -inf until first freed */
    uint8_t *in_use;
    uint32_t n, n_free;
    uint16_t port_min;     /* the slice's first port (index 0) */
    uint16_t stride;       /* 1: every port of the range */
} hp_pool;

/* The ports of [port_min, port_max] with p % stride == slice (stride 0 counts as 1): how many,
 * and the first in *first (port_min when there are none). */
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
/* The index of port, which must be one of this pool's (hp_pool_find). */
static inline uint32_t hp_pool_index(const hp_pool *p, uint16_t port)
{
    uint32_t d = (uint32_t)port - p->port_min;
    return p->stride == 1 ? d : d / p->stride;
}
/* The index of port when it is one of this pool's (in its slice and range, in use or not),
 * else UINT32_MAX. A port below port_min wraps to a large d, past n. */
static inline uint32_t hp_pool_find(const hp_pool *p, uint16_t port)
{
    uint32_t d = (uint32_t)port - p->port_min;
    if (p->stride != 1) {
        if (d % p->stride)
            return UINT32_MAX;
        d /= p->stride;
    }
    return d < p->n ? d : UINT32_MAX;
}
void hp_pool_take(hp_pool *p, uint16_t port);
void hp_pool_release(hp_pool *p, uint16_t port, double now);

#endif
