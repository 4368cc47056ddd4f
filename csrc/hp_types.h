/* hp_types.h - names shared by every part of the C core.
 *
 * The numbers match hyperplane/constants.py (the Python side checks them at import).
 * Words follow the kernel's conntrack: a connection has an *orig* tuple (as the execution
 * environment sent it) and a *reply* tuple (as the VPC answers it); "manip" is the rewrite.
 */
#ifndef HP_TYPES_H
#define HP_TYPES_H

#include <stddef.h>
#include <stdint.h>

enum hp_dir { HP_DIR_ORIG = 0, HP_DIR_REPLY = 1 };  /* = Direction.OUTBOUND / INBOUND */

enum hp_verdict { HP_DROP = 0, HP_NEW = 1, HP_ESTABLISHED = 2, HP_REPLY = 3 };

enum hp_reason {
    HP_R_NONE = 0,
    HP_R_TRUNCATED = 1,
    HP_R_BAD_IP_VERSION = 2,
    HP_R_BAD_IP_HEADER = 3,
    HP_R_BAD_IP_CHECKSUM = 4,
    HP_R_FRAGMENT = 5, /* a later fragment of no datagram whose first fragment passed */
    HP_R_UNSUPPORTED_PROTOCOL = 6,
    HP_R_EXT_HEADER_CHAIN = 7,
    HP_R_BAD_L4_HEADER = 8,
    HP_R_TTL_EXPIRED = 9,
    HP_R_HOP_LIMIT_EXPIRED = 10,
    HP_R_UNSOLICITED = 11,
    HP_R_TCP_NOT_SYN = 12,
    HP_R_TCP_INVALID = 13,
    HP_R_PORT_EXHAUSTED = 14,
    HP_R_TABLE_FULL = 15,
    HP_R_NO_ENI_ADDRESS = 16,
    HP_R_TUPLE_COLLISION = 17,
    HP_R_SG_DENIED = 18, /* no security-group egress rule allows the new connection */
    HP_R_BAD_ICMP = 19,  /* an ICMP error whose checksum or embedded packet is unusable */
    HP_R_ICMP_UNRELATED = 20, /* an environment's ICMP error about no tracked connection */
    HP_R_SOURCE_LIMIT = 21, /* the source (one environment) holds its maximum of connections */
    HP_R_FRAGMENT_TABLE_FULL = 22, /* a first fragment when HP_FRAG_MAX datagrams are tracked */
    HP_R_BAD_FRAGMENT = 23, /* tiny first fragment, overlap at offset 8, bad length, too far */
    HP_R_COUNT = 24
};

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
#define HP_IPPROTO_TCP 6
#define HP_IPPROTO_UDP 17
#define HP_IPPROTO_ICMP 1
#define HP_IPPROTO_ICMPV6 58
#define HP_MAX_EXT_HEADERS 8
#define HP_PORT_PROBES 8
#define HP_MAX_ENIS 256
#define HP_MAX_SIGNALS 64

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
