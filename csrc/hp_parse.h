/* hp_parse.h - IPv4/IPv6 + TCP/UDP/ICMP header parsing; no I/O, no state. */
#ifndef HP_PARSE_H
#define HP_PARSE_H

#include "hp_types.h"

/* Is the packet a fragment (hp_parsed.frag)? A first fragment (offset 0, more to come) carries
 * the transport header and parses like a whole packet; a later one has only addresses, the
 * protocol and the fragment fields. */
enum { HP_FRAG_NO = 0, HP_FRAG_FIRST = 1, HP_FRAG_LATER = 2 };

/* What kind of ICMP message a packet is (hp_parsed.icmp). */
enum { HP_ICMP_NO = 0, HP_ICMP_QUERY = 1, HP_ICMP_ERROR = 2 };

typedef struct {
    hp_tuple t;         /* the packet's tuple, as it arrived (ICMP: ports 0) */
    uint32_t l3_len;    /* IP total length: what conntrack counts as bytes */
    uint32_t l4;        /* offset of the TCP/UDP/ICMP header from the start of the packet */
    uint8_t tcp_flags;  /* 0 for UDP and ICMP */
    uint8_t icmp;       /* HP_ICMP_*: not ICMP, a non-error (echo, ...), an error */
    /* ICMP errors only: the embedded packet (the one the error is about), as it was sent */
    hp_tuple inner;
    uint32_t inner_ip;  /* offset of its IP header */
    uint32_t inner_l4;  /* offset of its TCP/UDP header (at least 8 bytes of it are present) */
    uint32_t end;       /* end of the outer IP packet: the embedded packet stops here */
    /* fragments only */
    uint8_t frag;       /* HP_FRAG_* */
    uint8_t frag_more;  /* more fragments follow (IPv4 MF, IPv6 M) */
    uint32_t frag_id;   /* IPv4 identification (16 bits) or IPv6 fragment identification */
    uint32_t frag_off;  /* where its data goes in the datagram's fragmentable part (bytes) */
    uint32_t frag_len;  /* how many bytes of it this fragment carries */
} hp_parsed;

/* Parse n bytes at b. Returns HP_R_NONE and fills *out, or the drop reason. */
int hp_parse(const uint8_t *b, uint32_t n, uint32_t flags, hp_parsed *out);

#endif
