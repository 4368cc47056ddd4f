/* hp_tcp.h - the TCP conntrack transition grid (same cells as hyperplane/tcp_states.py). */
#ifndef HP_TCP_H
#define HP_TCP_H

#include <stdint.h>

#define HP_TCP_IGN (-1) /* pass, keep the state */
#define HP_TCP_INV (-2) /* drop as tcp_invalid */
#define HP_TCP_N_FLAGCLASSES 6
#define HP_TCP_N_STATES 9

extern const int8_t hp_tcp_transitions[2][HP_TCP_N_FLAGCLASSES][HP_TCP_N_STATES];

int hp_tcp_flag_class(uint8_t flags);

static inline int hp_tcp_next(int dir, uint8_t flags, int state)
{
    return hp_tcp_transitions[dir][hp_tcp_flag_class(flags)][state];
}

#endif
