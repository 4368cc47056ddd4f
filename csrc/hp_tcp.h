/* hp_tcp.h - TCP flag bits and flag classes, and the conntrack transition grid (same cells as
 * hyperplane/engine/tcp_states.py). The flag bits are defined here only: the grid's classifier
 * (hp_tcp.c) and the data path's RST (hp_dp_rst.c) use them. */
#ifndef HP_TCP_H
#define HP_TCP_H

#include <stdint.h>

/* The flags byte of a TCP header (its 14th, RFC 9293 section 3.1). */
#define HP_TH_FIN 0x01
#define HP_TH_SYN 0x02
#define HP_TH_RST 0x04
#define HP_TH_PSH 0x08
#define HP_TH_ACK 0x10
#define HP_TH_URG 0x20

/* Flag classes: the grid's rows, what hp_tcp_flag_class returns; tcp_states.py has the same
 * order (the compiled module checks that both classify every flags byte alike). */
enum hp_tcp_flag_class {
    HP_TCP_CLASS_SYN,
    HP_TCP_CLASS_SYNACK,
    HP_TCP_CLASS_FIN,
    HP_TCP_CLASS_ACK,
    HP_TCP_CLASS_RST,
    HP_TCP_CLASS_NONE,
    HP_TCP_N_FLAGCLASSES
};

#define HP_TCP_IGN (-1) /* pass, keep the state */
#define HP_TCP_INV (-2) /* drop as tcp_invalid */
#define HP_TCP_N_STATES 9 /* HP_S_NONE .. HP_S_CLOSE */

extern const int8_t hp_tcp_transitions[2][HP_TCP_N_FLAGCLASSES][HP_TCP_N_STATES];

/* inline: every TCP packet of a tracked connection is classified (a call cost the established
 * path about 2 % of its instructions) */
static inline int hp_tcp_flag_class(uint8_t f)
{
    if (f & HP_TH_RST)
        return HP_TCP_CLASS_RST;
    if (f & HP_TH_SYN) {
        if (f & HP_TH_FIN)
            return HP_TCP_CLASS_NONE; /* SYN+FIN is nonsense (RFC 9293 3.10.7.4) */
        return (f & HP_TH_ACK) ? HP_TCP_CLASS_SYNACK : HP_TCP_CLASS_SYN;
    }
    if (f & HP_TH_FIN)
        return HP_TCP_CLASS_FIN;
    if (f & HP_TH_ACK)
        return HP_TCP_CLASS_ACK;
    return HP_TCP_CLASS_NONE;
}

static inline int hp_tcp_next(int dir, uint8_t flags, int state)
{
    return hp_tcp_transitions[dir][hp_tcp_flag_class(flags)][state];
}

#endif
