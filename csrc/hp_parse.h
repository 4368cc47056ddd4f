/* hp_parse.h - IPv4/IPv6 + TCP/UDP header parsing; no I/O, no state. */
#ifndef HP_PARSE_H
#define HP_PARSE_H

#include "hp_types.h"

typedef struct {
    hp_tuple t;         /* the packet's tuple, as it arrived */
    uint32_t l3_len;    /* IP total length: what conntrack counts as bytes */
    uint32_t l4;        /* offset of the TCP/UDP header from the start of the packet */
    uint8_t tcp_flags;  /* 0 for UDP */
} hp_parsed;

/* Parse n bytes at b. Returns HP_R_NONE and fills *out, or the drop reason. */
int hp_parse(const uint8_t *b, uint32_t n, uint32_t flags, hp_parsed *out);

#endif
