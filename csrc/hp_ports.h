/* hp_ports.h - one port pool per (ENI address, protocol). */
#ifndef HP_PORTS_H
#define HP_PORTS_H

#include <stddef.h>
#include <stdint.h>

/* Free ports form a doubly linked FIFO list over port indices (port - port_min); index n is
 * the sentinel. The initial order is a seeded permutation (RFC 6056 3.3.1); a freed port goes
 * to the tail, so it is handed out again only after every port that was free before it
 * (RFC 6056 3.1). take/free/take-specific are O(1); exhaustion is exact (n_free == 0). */
typedef struct {
    uint16_t *next, *prev; /* n + 1 slots each */
    double *freed_at;      /* -inf until first freed */
    uint8_t *in_use;
    uint32_t n, n_free;
    uint16_t port_min;
} hp_pool;

int hp_pool_init(hp_pool *p, uint64_t seed, unsigned eni_index, int family, int proto,
                 uint16_t port_min, uint16_t port_max);
void hp_pool_destroy(hp_pool *p);
size_t hp_pool_bytes(const hp_pool *p);

/* Up to 1 + HP_PORT_PROBES candidate ports, best first, into out[]; returns the count.
 * The preferred port comes first when it is free and was not freed within reuse_delay. */
unsigned hp_pool_candidates(const hp_pool *p, uint16_t preferred, double now, double reuse_delay,
                            uint16_t *out);
void hp_pool_take(hp_pool *p, uint16_t port);
void hp_pool_release(hp_pool *p, uint16_t port, double now);

#endif
