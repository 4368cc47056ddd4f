/* hp_ports.c - port allocation (see hp_ports.h; reference: PortPool in
 * hyperplane/engine/reference/ports.py). */
#include "hp_ports.h"

#include <math.h>
#include <stdlib.h>

#include "hp_rand.h"
#include "hp_types.h"

/* The slice's first block and how many of its ports lie below port_min (*skip); its size. */
static uint32_t slice_of(uint16_t port_min, uint16_t port_max, uint32_t k, uint32_t w,
                         uint32_t *b0, uint32_t *skip)
{
    uint32_t bmin = (uint32_t)port_min >> HP_PORT_BLOCK_SHIFT;
    uint32_t bmax = (uint32_t)port_max >> HP_PORT_BLOCK_SHIFT;
    *b0 = bmin + (w % k + k - bmin % k) % k;
    *skip = *b0 == bmin ? (port_min & (HP_BLOCK - 1)) : 0;
    if (*b0 > bmax || port_min > port_max)
        return 0;
    uint32_t nb = (bmax - *b0) / k + 1, last = *b0 + (nb - 1) * k;
    uint32_t over = last == bmax ? (HP_BLOCK - 1) - (port_max & (HP_BLOCK - 1)) : 0;
    return nb * HP_BLOCK - *skip - over;
}

uint32_t hp_slice_ports(uint16_t port_min, uint16_t port_max, uint16_t stride, uint16_t slice,
                        uint16_t *first)
{
    uint32_t k = stride ? stride : 1, b0, skip;
    *first = port_min;
    if (k == 1)
        return port_min <= port_max ? (uint32_t)port_max - port_min + 1 : 0;
    uint32_t n = slice_of(port_min, port_max, k, slice, &b0, &skip);
    if (n)
        *first = (uint16_t)((b0 << HP_PORT_BLOCK_SHIFT) + skip);
    return n;
}

int hp_pool_init(hp_pool *p, uint64_t seed, unsigned eni_index, int family, int proto,
                 uint16_t port_min, uint16_t port_max, uint16_t stride, uint16_t slice)
{
    uint16_t first;
    uint32_t n = hp_slice_ports(port_min, port_max, stride, slice, &first), i;
    uint32_t m = n ? n : 1; /* an empty slice still gets (unused) arrays: malloc(0) may be NULL */
    p->n = p->n_free = n;
    p->port_min = port_min;
    p->stride = stride > 1 ? stride : 1;
    p->b0 = p->skip = 0;
    if (p->stride > 1)
        slice_of(port_min, port_max, p->stride, slice, &p->b0, &p->skip);
    p->next = malloc((n + 1) * sizeof *p->next);
    p->prev = malloc((n + 1) * sizeof *p->prev);
    p->freed_at = malloc(m * sizeof *p->freed_at);
    p->in_use = calloc(m, 1);
    uint16_t *perm = malloc(m * sizeof *perm);
    if (!p->next || !p->prev || !p->freed_at || !p->in_use || !perm) {
        free(perm);
        hp_pool_destroy(p);
        return -1;
    }
    /* The seeded Fisher-Yates shuffle of the indices, exactly as reference.port_permutation
     * (of the whole range, the same order as before slices existed). */
    uint64_t pool_no = 1 + (uint64_t)eni_index * 4 + (family == 6 ? 2 : 0) +
                       (proto == HP_IPPROTO_UDP ? 1 : 0);
    uint64_t state = seed ^ (HP_GOLDEN * pool_no);
    for (i = 0; i < n; i++)
        perm[i] = (uint16_t)i;
    for (i = n ? n - 1 : 0; i > 0; i--) {
        uint64_t j = hp_splitmix64(&state) % ((uint64_t)i + 1);
        uint16_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    /* Link the free list in permutation order: sentinel -> perm[0] -> ... -> sentinel. */
    uint16_t prev = (uint16_t)n;
    for (i = 0; i < n; i++) {
        p->next[prev] = perm[i];
        p->prev[perm[i]] = prev;
        prev = perm[i];
        p->freed_at[i] = -INFINITY;
    }
    p->next[prev] = (uint16_t)n;
    p->prev[n] = prev;
    free(perm);
    return 0;
}

void hp_pool_destroy(hp_pool *p)
{
    free(p->next);
    free(p->prev);
    free(p->freed_at);
    free(p->in_use);
    p->next = p->prev = NULL;
    p->freed_at = NULL;
    p->in_use = NULL;
}

size_t hp_pool_bytes(const hp_pool *p)
{
    size_t m = p->n ? p->n : 1;
    return (size_t)(p->n + 1) * 4 + m * (sizeof(double) + 1);
}

unsigned hp_pool_candidates(const hp_pool *p, uint16_t preferred, double now, double reuse_delay,
                            uint16_t *out)
{
    unsigned k = 0;
    /* the kept source port only when it is in this pool's slice */
    uint32_t pi = hp_pool_find(p, preferred);
    if (pi != UINT32_MAX && !p->in_use[pi] && p->freed_at[pi] + reuse_delay <= now)
        out[k++] = preferred;
    uint32_t i = p->next[p->n];
    for (unsigned probes = 0; probes < HP_PORT_PROBES && i != p->n; probes++, i = p->next[i])
        out[k++] = hp_pool_port(p, i);
    return k;
}

void hp_pool_take(hp_pool *p, uint16_t port)
{
    uint32_t i = hp_pool_index(p, port);
    p->next[p->prev[i]] = p->next[i];
    p->prev[p->next[i]] = p->prev[i];
    p->in_use[i] = 1;
    p->n_free--;
}

void hp_pool_release(hp_pool *p, uint16_t port, double now)
{
    uint32_t i = hp_pool_index(p, port), tail = p->prev[p->n];
    p->next[tail] = (uint16_t)i;
    p->prev[i] = (uint16_t)tail;
    p->next[i] = (uint16_t)p->n;
    p->prev[p->n] = (uint16_t)i;
    p->freed_at[i] = now;
    p->in_use[i] = 0;
    p->n_free++;
}
