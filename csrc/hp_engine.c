/* hp_engine.c - engine life, new connections (port choice), state update, manip and the
 * translate path; the table, events, snapshot, ICMP errors and fragments have a file each
 * (hp_engine_internal.h lists them).
 *
 * Follow along in hyperplane/engine/reference/engine.py: same steps, same order, same results.
 */
#include "hp_engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hp_csum.h"
#include "hp_rand.h"
#include "hp_tcp.h"
#include "hp_tcp_window.h"

/* ---- engine life ------------------------------------------------------------------------ */

hp_engine *hp_engine_new(const hp_config *cfg)
{
    hp_engine *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->cfg = *cfg;
    uint64_t s = cfg->seed;
    e->k0 = hp_splitmix64(&s);
    e->k1 = hp_splitmix64(&s);
    uint32_t nb = 16;
    while (nb < 2 * (uint64_t)cfg->capacity)
        nb <<= 1;
    e->mask = nb - 1;
    /* calloc: pages are zero-filled lazily by the kernel, so memory is touched as it is used */
    e->buckets = calloc(nb, sizeof *e->buckets);
    e->entries = calloc((size_t)cfg->capacity + 1, sizeof *e->entries);
    if (cfg->max_per_src) {
        /* at most min(capacity, HP_MAX_SOURCES) sources hold connections: twice that many
         * slots keeps probe chains short */
        uint32_t ns = 16, want = cfg->capacity < HP_MAX_SOURCES ? cfg->capacity : HP_MAX_SOURCES;
        while (ns < 2 * want)
            ns <<= 1;
        e->src_mask = ns - 1;
        e->src = calloc(ns, sizeof *e->src);
        if (!e->src) {
            hp_engine_free(e);
            return NULL;
        }
    }
    if (!e->buckets || !e->entries) {
        hp_engine_free(e);
        return NULL;
    }
    e->last_now = -INFINITY;
    return e;
}

void hp_engine_free(hp_engine *e)
{
    if (!e)
        return;
    for (unsigned i = 0; i < e->n_enis; i++)
        for (int f = 0; f < 2; f++)
            for (int u = 0; u < 2; u++)
                if (e->enis[i].pools[f][u]) {
                    hp_pool_destroy(e->enis[i].pools[f][u]);
                    free(e->enis[i].pools[f][u]);
                }
    free(e->buckets);
    free(e->entries);
    free(e->ev);
    free(e->src);
    free(e->frag);
    free(e);
}

int hp_engine_add_eni(hp_engine *e, const uint8_t *addr4, const uint8_t *addr6)
{
    if (e->n_enis >= HP_MAX_ENIS)
        return -1;
    hp_eni *x = &e->enis[e->n_enis++];
    memset(x, 0, sizeof *x);
    if (addr4) {
        x->has[0] = 1;
        memcpy(x->addr[0], addr4, 4);
    }
    if (addr6) {
        x->has[1] = 1;
        memcpy(x->addr[1], addr6, 16);
    }
    e->exhausted = 0;
    return 0;
}

int hp_engine_set_sg(hp_engine *e, const hp_sg_rule *rules, uint32_t n, int enforce)
{
    if (n > HP_MAX_SG_RULES)
        return -1;
    if (n)
        memcpy(e->sg.rule, rules, n * sizeof *rules);
    e->sg.n = n;
    e->sg.enforce = enforce != 0;
    return 0;
}

int hp_engine_set_eni_enabled(hp_engine *e, unsigned i, int enabled)
{
    if (i >= e->n_enis)
        return -1;
    e->enis[i].disabled = !enabled;
    e->exhausted = 0; /* the set of ENIs that may take connections changed */
    return 0;
}

size_t hp_engine_memory(const hp_engine *e)
{
    size_t m = sizeof *e + ((size_t)e->mask + 1) * sizeof *e->buckets +
               ((size_t)e->hw + 1) * sizeof *e->entries;
    for (unsigned i = 0; i < e->n_enis; i++)
        for (int f = 0; f < 2; f++)
            for (int u = 0; u < 2; u++)
                if (e->enis[i].pools[f][u])
                    m += sizeof(hp_pool) + hp_pool_bytes(e->enis[i].pools[f][u]);
    if (e->src)
        m += ((size_t)e->src_mask + 1) * sizeof *e->src;
    if (e->frag)
        m += HP_FRAG_SLOTS * sizeof *e->frag;
    return m;
}

hp_pool *hp_get_pool(hp_engine *e, unsigned i, int family, int proto)
{
    hp_pool **pp = &e->enis[i].pools[FAM(family)][UDP(proto)];
    if (!*pp) {
        hp_pool *p = malloc(sizeof *p);
        if (!p || hp_pool_init(p, e->cfg.seed, i, family, proto, e->cfg.port_min,
                               e->cfg.port_max, e->cfg.port_stride, e->cfg.port_slice) != 0) {
            free(p);
            return NULL;
        }
        *pp = p;
    }
    return *pp;
}

/* ---- new connection --------------------------------------------------------------------- */

static int new_conn(hp_engine *e, const uint8_t *b, const hp_parsed *p, double now,
                    uint32_t *out_idx)
{
    int state, family = p->t.family, proto = p->t.proto;
    if (proto == HP_IPPROTO_TCP) {
        state = hp_tcp_next(HP_DIR_ORIG, p->tcp_flags, HP_S_NONE);
        if (state < 0)
            return HP_R_TCP_NOT_SYN; /* no mid-stream pick-up: connections start with SYN */
    } else {
        state = HP_S_UDP_UNREPLIED;
    }
    /* Security groups are stateful: the rules are consulted here, for a new connection in
     * the orig direction, and never for its later packets or its replies. */
    if (!hp_sg_allows(&e->sg, &p->t))
        return HP_R_SECURITY_GROUP;
    if (e->n_entries >= e->cfg.capacity)
        return HP_R_TABLE_FULL;
    /* One environment may hold at most max_per_src connections (a SYN flood or a leak in one
     * function must not take the ports the others sharing the ENI need). */
    if (e->src) {
        const hp_src *s = hp_src_find(e, &p->t, 0);
        if (s ? s->count >= e->cfg.max_per_src : e->n_src >= HP_MAX_SOURCES)
            return HP_R_SOURCE_LIMIT;
    }

    /* First enabled ENI (scale-out order) with a free port whose reply tuple is unused. */
    int had_family = 0, had_free = 0;
    unsigned eni = 0;
    hp_pool *pool = NULL;
    hp_tuple reply;
    memset(&reply, 0, sizeof reply);
    memcpy(reply.src, p->t.dst, 16);
    reply.sport = p->t.dport;
    reply.family = (uint8_t)family;
    reply.proto = (uint8_t)proto;
    for (; eni < e->n_enis; eni++) {
        if (!e->enis[eni].has[FAM(family)] || e->enis[eni].disabled)
            continue;
        had_family = 1;
        pool = hp_get_pool(e, eni, family, proto);
        if (!pool)
            return HP_R_TABLE_FULL; /* out of memory for the pool: no room for connections */
        if (pool->n_free == 0)
            continue;
        had_free = 1;
        memcpy(reply.dst, e->enis[eni].addr[FAM(family)], 16);
        uint16_t cand[1 + HP_PORT_PROBES];
        unsigned nc = hp_pool_candidates(pool, p->t.sport, now, e->cfg.reuse_delay, cand);
        for (unsigned k = 0; k < nc; k++) {
            reply.dport = cand[k];
            /* unused, and not the orig tuple itself (a packet from ENI:port to ENI:port) */
            if (!lookup(e, &reply) && memcmp(&reply, &p->t, sizeof reply) != 0)
                goto found;
        }
    }
    if (!had_family)
        return HP_R_NO_ENI_ADDRESS;
    if (had_free)
        return HP_R_TUPLE_COLLISION;
    {
        uint8_t bit = (uint8_t)(1u << (FAM(family) << 1 | UDP(proto)));
        if (!(e->exhausted & bit)) {
            e->exhausted |= bit;
            if (e->n_signals < HP_MAX_SIGNALS)
                e->signals[e->n_signals++] = (uint8_t)(FAM(family) << 1 | UDP(proto));
        }
    }
    return HP_R_PORT_EXHAUSTED;

found:;
    uint32_t idx = hp_conn_insert(e, &p->t, &reply, eni, state, now, pool);
    if (proto == HP_IPPROTO_TCP) /* the opener's side of the window, from its SYN */
        hp_tcp_win_open(e->entries[idx].win, b, p);
    lru_append(e, idx);
    e->created++;
    /* ids count up; a shard's are the ids with (id - 1) % port_stride == port_slice, so the
     * shards of one table never hand out the same id */
    uint32_t id = e->last_id + 1;
    if (e->cfg.port_stride > 1)
        id += (e->cfg.port_slice + e->cfg.port_stride - (id - 1) % e->cfg.port_stride) %
              e->cfg.port_stride;
    e->entries[idx].id = e->last_id = id;
    hp_ev_conn(e, idx, HP_EV_NEW, 0, now);
    *out_idx = idx;
    return HP_R_NONE;
}

/* ---- state ------------------------------------------------------------------------------ */

static void set_state(hp_engine *e, uint32_t idx, int state, double now)
{
    if (e->entries[idx].state == state)
        return;
    lru_unlink(e, idx);
    e->entries[idx].state = (uint8_t)state;
    lru_append(e, idx);
    hp_ev_conn(e, idx, HP_EV_UPDATE, 0, now);
}

/* The grid's transition, after the window's say (hp_tcp_window.h/.c). Returns the verdict in
 * the low byte; for HP_DROP the reason (tcp_out_of_window, tcp_invalid) in the next byte
 * (UPD_REASON); UPD_KEEP_TIMER when the window passed the segment without changing anything
 * (the timer is not refreshed). One int, so that it stays in a register. */
#define UPD_REASON(r) ((r) << 8)
#define UPD_KEEP_TIMER 0x10000
static inline __attribute__((always_inline)) int
update_state(hp_engine *e, uint32_t idx, int dir, const uint8_t *b, const hp_parsed *p, double now)
{
    hp_entry *x = &e->entries[idx];
    int verdict = dir == HP_DIR_ORIG ? HP_ESTABLISHED : HP_REPLY;
    if (x->tuple[0].proto == HP_IPPROTO_TCP) {
        int state = x->state;
        int nxt = hp_tcp_next(dir, p->tcp_flags, state);
        int w = hp_tcp_track_fast(x->win, dir, nxt, b, p); /* the common case, inline */
        if (w == HP_WIN_SLOW)
            w = hp_tcp_track(x->win, dir, state, nxt, b, p);
        switch (w) {
        case HP_WIN_OUT:
            return HP_DROP | UPD_REASON(HP_R_TCP_OUT_OF_WINDOW);
        case HP_WIN_INVALID:
            return HP_DROP | UPD_REASON(HP_R_TCP_INVALID);
        case HP_WIN_PASS:
            return verdict | UPD_KEEP_TIMER;
        }
        if (nxt >= 0) {
            if (nxt == HP_S_SYN_SENT && state != HP_S_SYN_SENT)
                verdict = HP_NEW; /* TIME_WAIT/CLOSE re-opened by a new SYN */
            set_state(e, idx, nxt, now);
        }
    } else if (dir == HP_DIR_REPLY && x->state == HP_S_UDP_UNREPLIED) {
        set_state(e, idx, HP_S_UDP_REPLIED, now);
    }
    return verdict;
}

/* ---- manip ------------------------------------------------------------------------------ */

/* Rewrite the source (src=1) or destination address and port, decrement the TTL / hop limit,
 * and update checksums incrementally. */
static void manip(uint8_t *b, const hp_parsed *p, uint32_t flags, int src, const uint8_t *addr,
                  uint16_t port)
{
    int v4 = p->t.family == 4, udp = p->t.proto == HP_IPPROTO_UDP;
    unsigned alen = v4 ? 4 : 16;
    uint8_t *a = b + (v4 ? (src ? 12 : 16) : (src ? 8 : 24));
    uint8_t *l4 = b + p->l4;
    uint8_t *pp = l4 + (src ? 0 : 2);
    uint8_t *c = l4 + (udp ? 6 : 16);
    uint32_t d_addr = hp_csum_delta(a, addr, alen);
    uint32_t old_port = hp_get16(pp);

    if (v4) {
        uint32_t ttlw = hp_get16(b + 8); /* TTL and protocol share a 16-bit word */
        uint32_t d_ip = hp_fold(d_addr + hp_csum_delta16(ttlw, ttlw - 0x100));
        hp_put16(b + 10, hp_csum_update_full(hp_get16(b + 10), d_ip));
        b[8]--;
    } else {
        b[7]--; /* hop limit: IPv6 has no header checksum */
    }
    uint32_t csum = hp_get16(c);
    if (flags & HP_FLAG_CSUM_PARTIAL) {
        /* uncomplemented pseudo-header sum: addresses move it, ports do not */
        csum = hp_csum_update_partial(csum, d_addr);
    } else if (!(udp && v4 && csum == 0)) { /* RFC 768: IPv4 UDP checksum 0 stays 0 */
        csum = hp_csum_update_full(csum, hp_fold(d_addr + hp_csum_delta16(old_port, port)));
        if (udp && csum == 0)
            csum = 0xFFFF; /* RFC 768: a computed 0 is sent as all ones */
    }
    memcpy(a, addr, alen);
    hp_put16(pp, port);
    hp_put16(c, csum);
}

/* ---- the data path ---------------------------------------------------------------------- */

int hp_translate(hp_engine *e, int dir, uint8_t *b, uint32_t n, uint32_t flags, double now,
                 uint8_t *reason)
{
    hp_parsed p;
    uint32_t idx, node;
    int r = hp_parse(b, n, flags, &p), verdict, upd = 0;
    if (r)
        return drop(e, r, reason);
    /* A router must not forward a packet whose TTL would reach 0 (RFC 1812 5.3.1). */
    if (b[p.t.family == 4 ? 8 : 7] <= 1)
        return drop(e, p.t.family == 4 ? HP_R_TTL_EXPIRED : HP_R_HOP_LIMIT_EXPIRED, reason);
    if (p.icmp)
        return hp_icmp_translate(e, dir, b, &p, flags, now, reason);
    hp_tuple fk;
    if (p.frag == HP_FRAG_LATER)
        return hp_frag_translate(e, dir, b, &p, now, reason);
    if (p.frag == HP_FRAG_FIRST) {
        hp_frag_key(&p, dir, &fk);
        if (!hp_frag_room(e, &fk, now))
            return drop(e, HP_R_FRAGMENT_TABLE_FULL, reason);
    }

    node = lookup(e, &p.t);
    if (dir == HP_DIR_ORIG) {
        if (!node) {
            r = new_conn(e, b, &p, now, &idx);
            if (r) {
                if ((flags & HP_FLAG_SPILL) && hp_spills(r)) {
                    *reason = (uint8_t)r; /* another worker's turn: nothing counted */
                    return HP_DROP;
                }
                if (r == HP_R_SECURITY_GROUP || r == HP_R_TCP_NOT_SYN)
                    hp_ev_reject(e, &p.t, HP_DIR_ORIG, p.l3_len, r, now);
                return drop(e, r, reason);
            }
            verdict = HP_NEW;
        } else {
            if (node & 1) /* the packet looks like a reply of another connection */
                return drop(e, HP_R_TUPLE_COLLISION, reason);
            idx = node >> 1;
            upd = update_state(e, idx, HP_DIR_ORIG, b, &p, now);
            verdict = upd & 0xFF;
            if (verdict == HP_DROP)
                return drop(e, (upd >> 8) & 0xFF, reason);
        }
        hp_entry *x = &e->entries[idx];
        manip(b, &p, flags, 1, e->enis[x->eni_index].addr[FAM(p.t.family)], x->eni_port);
    } else {
        if (!node || !(node & 1)) {
            hp_ev_reject(e, &p.t, HP_DIR_REPLY, p.l3_len, HP_R_UNSOLICITED, now);
            return drop(e, HP_R_UNSOLICITED, reason);
        }
        idx = node >> 1;
        upd = update_state(e, idx, HP_DIR_REPLY, b, &p, now);
        verdict = upd & 0xFF;
        if (verdict == HP_DROP)
            return drop(e, (upd >> 8) & 0xFF, reason);
        hp_entry *x = &e->entries[idx];
        manip(b, &p, flags, 0, x->tuple[HP_DIR_ORIG].src, x->tuple[HP_DIR_ORIG].sport);
    }
    account(e, idx, dir, p.l3_len, now, !(upd & UPD_KEEP_TIMER));
    if (p.tcp_flags) /* OR-ed until the next flow collection, as AWS's tcp-flags are */
        e->entries[idx].fl_tcp_flags[dir] |= fl_tcp_flags(p.tcp_flags);
    if (p.frag == HP_FRAG_FIRST) {
        hp_frag_track(e, &fk, &p, idx, now);
        e->fragments++;
    }
    *reason = HP_R_NONE;
    return verdict;
}

uint32_t hp_translate_batch(hp_engine *e, int dir, uint8_t *buf, const uint32_t *offsets,
                            const uint32_t *lengths, const uint8_t *flags, uint32_t n,
                            double now, uint8_t *verdicts, uint8_t *reasons)
{
    uint32_t passed = 0;
    for (uint32_t i = 0; i < n; i++) {
        int v = hp_translate(e, dir, buf + offsets[i], lengths[i], flags ? flags[i] : 0, now,
                             &reasons[i]);
        verdicts[i] = (uint8_t)v;
        passed += v != HP_DROP;
    }
    return passed;
}
