/* hp_types.h - names shared by every part of the C core.
 *
 * The numbers match hyperplane/engine/constants.py (the Python side checks them at import).
 * Words follow the kernel's conntrack: a connection has an *orig* tuple (as the execution
 * environment sent it) and a *reply* tuple (as the VPC answers it); "manip" is the rewrite.
 */
#ifndef HP_TYPES_H
#define HP_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hp_drop_reasons.h"

/* Equality of addresses without a call. memcmp with a length chosen by family, and even with
 * a constant 4, 6 or 16, stayed a call into libc here: at 64-byte rates that call was the data
 * path's largest user-space cost (3.7 % of its CPU, above hp_translate). memcpy into integers
 * of a constant size compiles to plain loads. */
static inline int hp_eq4(const void *a, const void *b)
{
    uint32_t x, y;
    memcpy(&x, a, 4);
    memcpy(&y, b, 4);
    return x == y;
}

static inline int hp_eq16(const void *a, const void *b)
{
    uint64_t x[2], y[2];
    memcpy(x, a, 16);
    memcpy(y, b, 16);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1])) == 0;
}

/* an address of `family` (4: four bytes, else sixteen) */
static inline int hp_eq_addr(int family, const void *a, const void *b)
{
    return family == 4 ? hp_eq4(a, b) : hp_eq16(a, b);
}

static inline int hp_eq_mac(const void *a, const void *b)
{
    uint32_t x, y;
    uint16_t p, q;
    memcpy(&x, a, 4);
    memcpy(&y, b, 4);
    memcpy(&p, (const uint8_t *)a + 4, 2);
    memcpy(&q, (const uint8_t *)b + 4, 2);
    return x == y && p == q;
}

/* A function one C file calls in another, but nothing outside the C core: declared with this in
 * an internal header (hp_engine_internal.h, hp_dp_internal.h), it is not exported from the
 * extension module, so those calls go straight to it instead of through the PLT. */
#define HP_HIDDEN __attribute__((visibility("hidden")))

enum hp_dir { HP_DIR_ORIG = 0, HP_DIR_REPLY = 1 };  /* = Direction.OUTBOUND / INBOUND */

enum hp_verdict { HP_DROP = 0, HP_NEW = 1, HP_ESTABLISHED = 2, HP_REPLY = 3 };

/* enum hp_reason (HP_R_NONE ... HP_R_COUNT) and its labels: hp_drop_reasons.h */

/* ct_state: TCP states 1..8, UDP states 9..10. The state number is also the timeout class. */
enum hp_state {
    HP_S_NONE = 0,
    HP_S_SYN_SENT = 1,
    HP_S_SYN_RECV = 2,
    HP_S_ESTABLISHED = 3,
    HP_S_FIN_WAIT = 4,
    HP_S_CLOSE_WAIT = 5,
    HP_S_LAST_ACK = 6,
    HP_S_TIME_WAIT = 7,
    HP_S_CLOSE = 8,
    HP_S_UDP_UNREPLIED = 9,
    HP_S_UDP_REPLIED = 10,
    HP_N_CLASSES = 11
};

#define HP_FLAG_CSUM_PARTIAL 0x01u
/* hp_translate: a new connection refused for a reason hp_spills names is not counted and
 * makes no event (the data path hands it to another worker, hp_dp_outbound.c) */
#define HP_FLAG_SPILL 0x02u
#define HP_IPPROTO_TCP 6
#define HP_IPPROTO_UDP 17
#define HP_IPPROTO_ICMP 1
#define HP_IPPROTO_ICMPV6 58
#define HP_MAX_EXT_HEADERS 8
#define HP_PORT_PROBES 8
#define HP_MAX_ENIS 256
#define HP_MAX_SIGNALS 64
/* Data-path workers own ports in blocks of 1 << this (hp_dp_steer.c says why): worker w of N
 * owns port p of every ENI when (p >> HP_PORT_BLOCK_SHIFT) % N == w (hp_ports.h's slices). */
#define HP_PORT_BLOCK_SHIFT 1

/* The worker (of n) owning port p: one definition for the steering and the engine's slices. */
static inline unsigned hp_port_owner(uint32_t port, unsigned n)
{
    return (port >> HP_PORT_BLOCK_SHIFT) % n;
}

/* One direction of a connection, laid out without padding holes so that it can be hashed and
 * compared as 40 raw bytes (Open vSwitch's trick). IPv4 addresses use the first 4 bytes of the
 * 16, the rest zero. Ports in host byte order. */
typedef struct {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport;
    uint16_t dport;
    uint8_t family; /* 4 or 6 */
    uint8_t proto;  /* 6 or 17 (1 or 58 only in the REJECT event of an ICMP packet) */
    uint8_t pad[2]; /* always zero */
} hp_tuple;

_Static_assert(sizeof(hp_tuple) == 40, "hp_tuple must be 40 bytes, no padding");

#endif
