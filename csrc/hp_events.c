/* hp_events.c - what happened to connections, as conntrack -E reports it: a bounded ring of
 * events the caller drains between polls, and the flow-log deltas of hp_engine_flow_collect.
 */
#include "hp_engine_internal.h"

#include <stdlib.h>
#include <string.h>

static hp_event *ev_slot(hp_engine *e, int type, double now)
{
    if (!(e->ev_kinds & (1u << type)))
        return NULL; /* a kind nobody asked for: skipped, not lost */
    if (type == HP_EV_REJECT && e->ev_reject_limit && e->ev_rejects >= e->ev_reject_limit) {
        e->ev_lost++;
        return NULL;
    }
    if (e->ev_tail - e->ev_head > e->ev_mask) { /* full: keep the oldest, count the loss */
        e->ev_lost++;
        return NULL;
    }
    if (type == HP_EV_REJECT)
        e->ev_rejects++;
    hp_event *v = &e->ev[e->ev_tail++ & e->ev_mask];
    memset(v, 0, sizeof *v);
    v->type = (uint8_t)type;
    v->time = now;
    return v;
}

void hp_ev_conn(hp_engine *e, uint32_t idx, int type, int reason, double now)
{
    if (!e->ev)
        return;
    const hp_entry *x = &e->entries[idx];
    hp_event *v = ev_slot(e, type, now);
    if (!v)
        return;
    memcpy(v->tuple, x->tuple, sizeof v->tuple);
    for (int d = 0; d < 2; d++) {
        v->packets[d] = x->packets[d];
        v->bytes[d] = x->bytes[d];
        if (type == HP_EV_DESTROY) {
            v->dpackets[d] = (uint32_t)((uint32_t)x->packets[d] - x->rep_packets[d]);
            v->dbytes[d] = x->bytes[d] - x->rep_bytes[d];
            v->tcp_flags[d] = x->fl_tcp_flags[d];
        }
    }
    v->id = x->id;
    v->state = x->state;
    v->eni_index = x->eni_index;
    v->reason = (uint8_t)reason;
}

/* The ENI a refused packet concerns: inbound, the one whose address it was sent to; outbound,
 * the first that takes new connections of its family (the one it would have left from). */
static unsigned reject_eni(const hp_engine *e, const hp_tuple *t, int dir)
{
    int f = FAM(t->family);
    for (unsigned i = 0; i < e->n_enis; i++) {
        if (!e->enis[i].has[f])
            continue;
        if (dir == HP_DIR_REPLY ? memcmp(e->enis[i].addr[f], t->dst, 16) == 0
                                : !e->enis[i].disabled)
            return i;
    }
    return HP_EV_NO_ENI;
}

void hp_ev_reject(hp_engine *e, const hp_tuple *t, int dir, uint32_t nbytes, int reason,
                  double now)
{
    if (!e->ev)
        return;
    hp_event *v = ev_slot(e, HP_EV_REJECT, now);
    if (!v)
        return;
    v->tuple[0] = *t;
    v->packets[dir] = 1;
    v->bytes[dir] = nbytes;
    v->eni_index = (uint8_t)reject_eni(e, t, dir);
    v->reason = (uint8_t)reason;
}

int hp_engine_events(hp_engine *e, uint32_t capacity)
{
    free(e->ev);
    e->ev = NULL;
    e->ev_mask = e->ev_head = e->ev_tail = 0;
    e->ev_kinds = 1u << HP_EV_NEW | 1u << HP_EV_UPDATE | 1u << HP_EV_DESTROY | 1u << HP_EV_REJECT;
    e->ev_reject_limit = e->ev_rejects = 0;
    if (capacity == 0)
        return 0;
    uint32_t n = 16;
    while (n < capacity && n < (1u << 24))
        n <<= 1;
    e->ev = malloc((size_t)n * sizeof *e->ev);
    if (!e->ev)
        return -1;
    e->ev_mask = n - 1;
    return 0;
}

uint32_t hp_engine_discard_events(hp_engine *e)
{
    uint32_t n = e->ev_tail - e->ev_head;
    e->ev_head = e->ev_tail;
    e->ev_rejects = 0;
    return n;
}

void hp_engine_event_options(hp_engine *e, uint32_t kinds, uint32_t reject_limit)
{
    e->ev_kinds = kinds;
    e->ev_reject_limit = reject_limit;
}

uint32_t hp_engine_take_events(hp_engine *e, hp_event *out, uint32_t max)
{
    uint32_t k = 0;
    e->ev_rejects = 0; /* a drain: the reject budget starts again */
    for (; k < max && e->ev_head != e->ev_tail; k++)
        out[k] = e->ev[e->ev_head++ & e->ev_mask];
    return k;
}

/* ---- flow logs -------------------------------------------------------------------------- */

uint32_t hp_engine_flow_collect(hp_engine *e, hp_event *out, uint32_t max, uint32_t *cursor,
                                double now)
{
    uint32_t k = 0, idx = *cursor ? *cursor : 1;
    for (; idx <= e->hw && k < max; idx++) {
        hp_entry *x = &e->entries[idx];
        /* rep_packets is 32 bits: deltas are taken modulo 2^32 (fewer per collection) */
        if (x->state == HP_S_NONE || ((uint32_t)x->packets[0] == x->rep_packets[0] &&
                                      (uint32_t)x->packets[1] == x->rep_packets[1]))
            continue;
        hp_event *v = &out[k++];
        memset(v, 0, sizeof *v);
        v->type = HP_EV_FLOW;
        v->time = x->last_seen;
        memcpy(v->tuple, x->tuple, sizeof v->tuple);
        for (int d = 0; d < 2; d++) {
            v->packets[d] = x->packets[d];
            v->bytes[d] = x->bytes[d];
            v->dpackets[d] = (uint32_t)((uint32_t)x->packets[d] - x->rep_packets[d]);
            v->dbytes[d] = x->bytes[d] - x->rep_bytes[d];
            x->rep_packets[d] = (uint32_t)x->packets[d];
            x->rep_bytes[d] = x->bytes[d];
            v->tcp_flags[d] = x->fl_tcp_flags[d];
            x->fl_tcp_flags[d] = 0;
        }
        v->id = x->id;
        v->state = x->state;
        v->eni_index = x->eni_index;
    }
    (void)now;
    *cursor = idx > e->hw ? 0 : idx;
    return k;
}
