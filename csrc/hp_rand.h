/* hp_rand.h - seeded randomness: SplitMix64 (port permutations, hash key) and SipHash-1-3
 * (the table's keyed hash, so flows chosen by an attacker cannot pile into one bucket; the
 * same choice CPython made in PEP 456). */
#ifndef HP_RAND_H
#define HP_RAND_H

#include <stdint.h>
#include <string.h>

#define HP_GOLDEN 0x9E3779B97F4A7C15ULL

static inline uint64_t hp_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += HP_GOLDEN);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

#define HP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define HP_SIPROUND                                                                         \
    do {                                                                                    \
        v0 += v1; v1 = HP_ROTL(v1, 13); v1 ^= v0; v0 = HP_ROTL(v0, 32);                     \
        v2 += v3; v3 = HP_ROTL(v3, 16); v3 ^= v2;                                           \
        v0 += v3; v3 = HP_ROTL(v3, 21); v3 ^= v0;                                           \
        v2 += v1; v1 = HP_ROTL(v1, 17); v1 ^= v2; v2 = HP_ROTL(v2, 32);                     \
    } while (0)

/* SipHash-1-3 of exactly 40 bytes (one hp_tuple): 5 message words, 1 compression round each,
 * then the length block and 3 finalisation rounds. */
static inline uint64_t hp_siphash13_40(uint64_t k0, uint64_t k1, const void *data)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t m[5];
    memcpy(m, data, 40);
    for (int i = 0; i < 5; i++) {
        v3 ^= m[i];
        HP_SIPROUND;
        v0 ^= m[i];
    }
    uint64_t b = (uint64_t)40 << 56;
    v3 ^= b;
    HP_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    HP_SIPROUND;
    HP_SIPROUND;
    HP_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

#endif
