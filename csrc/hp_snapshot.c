/* hp_snapshot.c - snapshot and restore: a restart of the data path without losing its
 * connections (the record, hp_saved, is in hp_engine.h).
 */
#include "hp_engine_internal.h"

#include <math.h>
#include <string.h>

uint32_t hp_engine_snapshot(const hp_engine *e, hp_saved *out, uint32_t max)
{
    uint32_t k = 0;
    for (int cls = 1; cls < HP_N_CLASSES; cls++)
        for (uint32_t idx = e->lru_head[cls]; idx && k < max; idx = e->entries[idx].lru_next) {
            const hp_entry *x = &e->entries[idx];
            hp_saved *s = &out[k++];
            memset(s, 0, sizeof *s);
            s->orig = x->tuple[HP_DIR_ORIG];
            s->reply = x->tuple[HP_DIR_REPLY];
            s->last_seen = x->last_seen;
            for (int d = 0; d < 2; d++) {
                s->packets[d] = x->packets[d];
                s->bytes[d] = x->bytes[d];
                s->rep_bytes[d] = x->rep_bytes[d];
                s->rep_packets[d] = x->rep_packets[d];
            }
            s->id = x->id;
            s->eni_port = x->eni_port;
            s->eni_index = x->eni_index;
            s->state = x->state;
            s->win[0] = x->win[0];
            s->win[1] = x->win[1];
        }
    return k;
}

static int zero_tail(const uint8_t *a, int family)
{
    for (int i = family == 4 ? 4 : 16; i < 16; i++)
        if (a[i])
            return 0;
    return 1;
}

/* A record this engine could have written: one family and protocol, a state of that
 * protocol, tuples that mirror each other (reply = peer -> ENI:eni_port), zero padding. */
static int saved_ok(const hp_engine *e, const hp_saved *s)
{
    const hp_tuple *o = &s->orig, *r = &s->reply;
    int tcp = o->proto == HP_IPPROTO_TCP;
    if ((o->family != 4 && o->family != 6) || (!tcp && o->proto != HP_IPPROTO_UDP))
        return 0;
    if (r->family != o->family || r->proto != o->proto || o->pad[0] || o->pad[1] || r->pad[0] ||
        r->pad[1])
        return 0;
    if (tcp ? !(s->state >= HP_S_SYN_SENT && s->state <= HP_S_CLOSE)
            : !(s->state == HP_S_UDP_UNREPLIED || s->state == HP_S_UDP_REPLIED))
        return 0;
    if (!zero_tail(o->src, o->family) || !zero_tail(o->dst, o->family) ||
        !zero_tail(r->dst, o->family))
        return 0;
    if (memcmp(r->src, o->dst, 16) != 0 || r->sport != o->dport || r->dport != s->eni_port ||
        memcmp(o, r, sizeof *o) == 0)
        return 0;
    if (s->eni_port < e->cfg.port_min || s->eni_port > e->cfg.port_max)
        return 0;
    for (int d = 0; d < 2; d++) { /* flow logs cannot have been handed more than there was */
        if (s->rep_bytes[d] > s->bytes[d] ||
            (s->packets[d] <= UINT32_MAX && s->rep_packets[d] > s->packets[d]))
            return 0;
        const hp_tcp_win *w = &s->win[d]; /* windows: TCP only, known flags, scale <= 14 */
        if (w->pad[0] || w->pad[1] || w->scale > HP_TCP_MAX_WSCALE || (w->flags & ~HP_TCPF_ALL) ||
            w->maxwin > HP_TCP_MAX_WINDOW ||
            (!tcp && (w->end || w->maxend || w->maxwin || w->maxack || w->scale || w->flags)))
            return 0;
    }
    if (tcp && s->win[0].maxwin == 0)
        return 0; /* the opener's SYN set its side: a TCP record always has it */
    return s->id != 0 && isfinite(s->last_seen);
}

int hp_engine_restore(hp_engine *e, const hp_saved *s, double now, double shift)
{
    if (!saved_ok(e, s) || !isfinite(shift))
        return HP_RS_INVALID;
    if (e->cfg.port_stride > 1 &&
        hp_port_owner(s->eni_port, e->cfg.port_stride) != e->cfg.port_slice)
        return HP_RS_OTHER_SLICE; /* the shard owning that port restores it */
    int family = s->orig.family, proto = s->orig.proto;
    const hp_eni *eni = s->eni_index < e->n_enis ? &e->enis[s->eni_index] : NULL;
    if (!eni || !eni->has[FAM(family)] || memcmp(eni->addr[FAM(family)], s->reply.dst, 16) != 0)
        return HP_RS_ENI_MISMATCH;
    double seen = s->last_seen + shift;
    if (seen > now)
        seen = now;
    if (seen + e->cfg.timeouts[s->state] <= now)
        return HP_RS_EXPIRED;
    hp_pool *pool = hp_get_pool(e, s->eni_index, family, proto);
    if (!pool)
        return HP_RS_TABLE_FULL; /* out of memory for the pool */
    if (lookup(e, &s->orig) || lookup(e, &s->reply) ||
        pool->in_use[hp_pool_index(pool, s->eni_port)])
        return HP_RS_DUPLICATE;
    if (e->n_entries >= e->cfg.capacity)
        return HP_RS_TABLE_FULL;
    if (e->src && !hp_src_find(e, &s->orig, 0) && e->n_src >= HP_MAX_SOURCES)
        return HP_RS_TABLE_FULL; /* no room to count another source */

    uint32_t idx = hp_conn_insert(e, &s->orig, &s->reply, s->eni_index, s->state, seen, pool);
    hp_entry *x = &e->entries[idx];
    for (int d = 0; d < 2; d++) {
        x->packets[d] = s->packets[d];
        x->bytes[d] = s->bytes[d];
        x->rep_bytes[d] = s->rep_bytes[d];
        x->rep_packets[d] = s->rep_packets[d];
    }
    x->id = s->id;
    /* The ends may have moved on while no data path ran (and a periodic state file can be
     * seconds old): each side may be learned again from its next segment (RESYNC,
     * hyperplane/engine/reference/window.py). A UDP record's windows are zero (saved_ok). */
    for (int d = 0; d < 2; d++) {
        x->win[d] = s->win[d];
        if (x->win[d].maxwin)
            x->win[d].flags |= HP_TCPF_RESYNC;
    }
    if (s->id > e->last_id)
        e->last_id = s->id;
    hp_lru_insert_sorted(e, idx);
    e->restored++;
    return HP_RESTORED;
}
