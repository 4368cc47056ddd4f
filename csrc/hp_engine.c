/* hp_engine.c - conntrack table, LRU expiry, port choice, state update and manip.
 *
 * Follow along in hyperplane/reference.py: same steps, same order, same results.
 */
#include "hp_engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hp_csum.h"
#include "hp_rand.h"
#include "hp_tcp.h"

#define FAM(f) ((f) == 6)       /* index of a family: 0 = IPv4, 1 = IPv6 */
#define UDP(p) ((p) == HP_IPPROTO_UDP)

/* ---- hash table ------------------------------------------------------------------------ */

static inline uint32_t bucket_of(const hp_engine *e, const hp_tuple *t)
{
    return (uint32_t)hp_siphash13_40(e->k0, e->k1, t) & e->mask;
}

static inline uint32_t lookup(const hp_engine *e, const hp_tuple *t)
{
    for (uint32_t n = e->buckets[bucket_of(e, t)]; n; n = e->entries[n >> 1].hnext[n & 1])
        if (memcmp(&e->entries[n >> 1].tuple[n & 1], t, sizeof *t) == 0)
            return n;
    return 0;
}

static void hash_insert(hp_engine *e, uint32_t idx, int dir)
{
    uint32_t *head = &e->buckets[bucket_of(e, &e->entries[idx].tuple[dir])];
    e->entries[idx].hnext[dir] = *head;
    *head = idx << 1 | (uint32_t)dir;
}

static void hash_remove(hp_engine *e, uint32_t idx, int dir)
{
    uint32_t node = idx << 1 | (uint32_t)dir;
    uint32_t *link = &e->buckets[bucket_of(e, &e->entries[idx].tuple[dir])];
    while (*link != node)
        link = &e->entries[*link >> 1].hnext[*link & 1];
    *link = e->entries[idx].hnext[dir];
}

/* ---- per-class LRU lists: oldest at the head, so expiry only looks at heads -------------- */

static void lru_unlink(hp_engine *e, uint32_t idx)
{
    hp_entry *x = &e->entries[idx];
    if (x->lru_prev)
        e->entries[x->lru_prev].lru_next = x->lru_next;
    else
        e->lru_head[x->state] = x->lru_next;
    if (x->lru_next)
        e->entries[x->lru_next].lru_prev = x->lru_prev;
    else
        e->lru_tail[x->state] = x->lru_prev;
}

static void lru_append(hp_engine *e, uint32_t idx)
{
    hp_entry *x = &e->entries[idx];
    uint32_t tail = e->lru_tail[x->state];
    x->lru_prev = tail;
    x->lru_next = 0;
    if (tail)
        e->entries[tail].lru_next = idx;
    else
        e->lru_head[x->state] = idx;
    e->lru_tail[x->state] = idx;
}

/* Append, but behind every entry of the class seen later than it (a restored connection may
 * be older than what the table holds): the lists stay sorted by last_seen, which expiry needs. */
static void lru_insert_sorted(hp_engine *e, uint32_t idx)
{
    hp_entry *x = &e->entries[idx];
    uint32_t after = e->lru_tail[x->state];
    while (after && e->entries[after].last_seen > x->last_seen)
        after = e->entries[after].lru_prev;
    if (after == e->lru_tail[x->state]) {
        lru_append(e, idx);
        return;
    }
    uint32_t before = after ? e->entries[after].lru_next : e->lru_head[x->state];
    x->lru_prev = after;
    x->lru_next = before;
    e->entries[before].lru_prev = idx;
    if (after)
        e->entries[after].lru_next = idx;
    else
        e->lru_head[x->state] = idx;
}

/* ---- events ----------------------------------------------------------------------------- */

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

static void ev_conn(hp_engine *e, uint32_t idx, int type, int reason, double now)
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

static void ev_reject(hp_engine *e, const hp_tuple *t, int dir, uint32_t nbytes, int reason,
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

static void set_state(hp_engine *e, uint32_t idx, int state, double now)
{
    if (e->entries[idx].state == state)
        return;
    lru_unlink(e, idx);
    e->entries[idx].state = (uint8_t)state;
    lru_append(e, idx);
    ev_conn(e, idx, HP_EV_UPDATE, 0, now);
}

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

static hp_pool *get_pool(hp_engine *e, unsigned i, int family, int proto)
{
    hp_pool **pp = &e->enis[i].pools[FAM(family)][UDP(proto)];
    if (!*pp) {
        hp_pool *p = malloc(sizeof *p);
        if (!p || hp_pool_init(p, e->cfg.seed, i, family, proto, e->cfg.port_min,
                               e->cfg.port_max) != 0) {
            free(p);
            return NULL;
        }
        *pp = p;
    }
    return *pp;
}

/* ---- connections per source ------------------------------------------------------------- */

static uint32_t src_home(const hp_engine *e, const uint8_t *addr, uint8_t family)
{
    hp_tuple t;
    memset(&t, 0, sizeof t);
    memcpy(t.src, addr, 16);
    t.family = family;
    return (uint32_t)hp_siphash13_40(e->k0, e->k1, &t) & e->src_mask;
}

/* The slot of t's source, or NULL; with insert, a new slot (count 0) when there is none. */
static hp_src *src_find(hp_engine *e, const hp_tuple *t, int insert)
{
    for (uint32_t i = src_home(e, t->src, t->family);; i = (i + 1) & e->src_mask) {
        hp_src *s = &e->src[i];
        if (!s->used) {
            if (!insert)
                return NULL;
            memcpy(s->addr, t->src, 16);
            s->family = t->family;
            s->used = 1;
            s->count = 0;
            e->n_src++;
            return s;
        }
        if (s->family == t->family && memcmp(s->addr, t->src, 16) == 0)
            return s;
    }
}

/* One connection of t's source is gone; the slot goes when its count reaches 0. */
static void src_release(hp_engine *e, const hp_tuple *t)
{
    hp_src *s = src_find(e, t, 0);
    if (!s || --s->count)
        return;
    /* backward-shift deletion: move later entries of the cluster into the hole when their
     * home slot is not cyclically inside (hole, their slot] */
    uint32_t i = (uint32_t)(s - e->src), j = i, m = e->src_mask;
    for (;;) {
        j = (j + 1) & m;
        if (!e->src[j].used)
            break;
        uint32_t k = src_home(e, e->src[j].addr, e->src[j].family);
        if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
            e->src[i] = e->src[j];
            i = j;
        }
    }
    e->src[i].used = 0;
    e->n_src--;
}

/* ---- expiry ----------------------------------------------------------------------------- */

static void conn_remove(hp_engine *e, uint32_t idx, double now, int why)
{
    hp_entry *x = &e->entries[idx];
    ev_conn(e, idx, HP_EV_DESTROY, why, now);
    int family = x->tuple[0].family, proto = x->tuple[0].proto;
    lru_unlink(e, idx);
    hash_remove(e, idx, HP_DIR_ORIG);
    hash_remove(e, idx, HP_DIR_REPLY);
    if (e->src)
        src_release(e, &x->tuple[HP_DIR_ORIG]);
    hp_pool_release(e->enis[x->eni_index].pools[FAM(family)][UDP(proto)], x->eni_port, now);
    e->exhausted &= (uint8_t) ~(1u << (FAM(family) << 1 | UDP(proto)));
    x->state = HP_S_NONE;
    x->lru_next = e->free_head; /* free slots form a stack through lru_next */
    e->free_head = idx;
    e->n_entries--;
}

double hp_engine_advance(hp_engine *e, double now)
{
    if (now < e->last_now)
        now = e->last_now;
    e->last_now = now;
    for (int cls = 1; cls < HP_N_CLASSES; cls++) {
        double timeout = e->cfg.timeouts[cls];
        uint32_t idx;
        while ((idx = e->lru_head[cls]) && e->entries[idx].last_seen + timeout <= now) {
            conn_remove(e, idx, now, HP_GONE_EXPIRED);
            e->expired++;
        }
    }
    return now;
}

int hp_engine_delete(hp_engine *e, const hp_tuple *orig, double now)
{
    uint32_t node = lookup(e, orig);
    if (!node || (node & 1))
        return -1;
    conn_remove(e, node >> 1, now, HP_GONE_DELETED);
    return 0;
}

uint32_t hp_engine_flush(hp_engine *e, double now)
{
    uint32_t n = 0;
    for (int cls = 1; cls < HP_N_CLASSES; cls++)
        for (uint32_t idx; (idx = e->lru_head[cls]); n++)
            conn_remove(e, idx, now, HP_GONE_DELETED);
    return n;
}

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
        }
        v->id = x->id;
        v->state = x->state;
        v->eni_index = x->eni_index;
    }
    (void)now;
    *cursor = idx > e->hw ? 0 : idx;
    return k;
}

/* A connection into a free slot: both tuples in the hash table (the reply tuple first: it was
 * the collision check), its port taken, its source counted; the caller links it into its LRU
 * list and sets its id. */
static uint32_t conn_insert(hp_engine *e, const hp_tuple *orig, const hp_tuple *reply,
                            unsigned eni, int state, double last_seen, hp_pool *pool)
{
    uint32_t idx;
    if (e->free_head) {
        idx = e->free_head;
        e->free_head = e->entries[idx].lru_next;
    } else {
        idx = ++e->hw;
    }
    hp_entry *x = &e->entries[idx];
    memset(x, 0, sizeof *x);
    x->tuple[HP_DIR_ORIG] = *orig;
    x->tuple[HP_DIR_REPLY] = *reply;
    x->eni_index = (uint8_t)eni;
    x->eni_port = reply->dport;
    x->state = (uint8_t)state;
    x->last_seen = last_seen;
    hp_pool_take(pool, reply->dport);
    hash_insert(e, idx, HP_DIR_REPLY);
    hash_insert(e, idx, HP_DIR_ORIG);
    e->n_entries++;
    if (e->src)
        src_find(e, orig, 1)->count++;
    return idx;
}

/* ---- snapshot and restore --------------------------------------------------------------- */

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
    for (int d = 0; d < 2; d++) /* flow logs cannot have been handed more than there was */
        if (s->rep_bytes[d] > s->bytes[d] ||
            (s->packets[d] <= UINT32_MAX && s->rep_packets[d] > s->packets[d]))
            return 0;
    return s->id != 0 && isfinite(s->last_seen);
}

int hp_engine_restore(hp_engine *e, const hp_saved *s, double now, double shift)
{
    if (!saved_ok(e, s) || !isfinite(shift))
        return HP_RS_INVALID;
    int family = s->orig.family, proto = s->orig.proto;
    const hp_eni *eni = s->eni_index < e->n_enis ? &e->enis[s->eni_index] : NULL;
    if (!eni || !eni->has[FAM(family)] || memcmp(eni->addr[FAM(family)], s->reply.dst, 16) != 0)
        return HP_RS_ENI_MISMATCH;
    double seen = s->last_seen + shift;
    if (seen > now)
        seen = now;
    if (seen + e->cfg.timeouts[s->state] <= now)
        return HP_RS_EXPIRED;
    hp_pool *pool = get_pool(e, s->eni_index, family, proto);
    if (!pool)
        return HP_RS_TABLE_FULL; /* out of memory for the pool */
    if (lookup(e, &s->orig) || lookup(e, &s->reply) || pool->in_use[s->eni_port - pool->port_min])
        return HP_RS_DUPLICATE;
    if (e->n_entries >= e->cfg.capacity)
        return HP_RS_TABLE_FULL;
    if (e->src && !src_find(e, &s->orig, 0) && e->n_src >= HP_MAX_SOURCES)
        return HP_RS_TABLE_FULL; /* no room to count another source */

    uint32_t idx = conn_insert(e, &s->orig, &s->reply, s->eni_index, s->state, seen, pool);
    hp_entry *x = &e->entries[idx];
    for (int d = 0; d < 2; d++) {
        x->packets[d] = s->packets[d];
        x->bytes[d] = s->bytes[d];
        x->rep_bytes[d] = s->rep_bytes[d];
        x->rep_packets[d] = s->rep_packets[d];
    }
    x->id = s->id;
    if (s->id > e->last_id)
        e->last_id = s->id;
    lru_insert_sorted(e, idx);
    e->restored++;
    return HP_RESTORED;
}

/* ---- new connection --------------------------------------------------------------------- */

static int new_conn(hp_engine *e, const hp_parsed *p, double now, uint32_t *out_idx)
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
        return HP_R_SG_DENIED;
    if (e->n_entries >= e->cfg.capacity)
        return HP_R_TABLE_FULL;
    /* One environment may hold at most max_per_src connections (a SYN flood or a leak in one
     * function must not take the ports the others sharing the ENI need). */
    if (e->src) {
        const hp_src *s = src_find(e, &p->t, 0);
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
        pool = get_pool(e, eni, family, proto);
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
    uint32_t idx = conn_insert(e, &p->t, &reply, eni, state, now, pool);
    lru_append(e, idx);
    e->created++;
    e->entries[idx].id = ++e->last_id;
    ev_conn(e, idx, HP_EV_NEW, 0, now);
    *out_idx = idx;
    return HP_R_NONE;
}

/* ---- state ------------------------------------------------------------------------------ */

/* Apply the transition; returns the verdict (HP_DROP for an invalid TCP transition). */
static int update_state(hp_engine *e, uint32_t idx, int dir, uint8_t tcp_flags, double now)
{
    hp_entry *x = &e->entries[idx];
    int verdict = dir == HP_DIR_ORIG ? HP_ESTABLISHED : HP_REPLY;
    if (x->tuple[0].proto == HP_IPPROTO_TCP) {
        int nxt = hp_tcp_next(dir, tcp_flags, x->state);
        if (nxt == HP_TCP_INV)
            return HP_DROP;
        if (nxt >= 0) {
            if (nxt == HP_S_SYN_SENT && x->state != HP_S_SYN_SENT)
                verdict = HP_NEW; /* TIME_WAIT/CLOSE re-opened by a new SYN */
            set_state(e, idx, nxt, now);
        }
    } else if (dir == HP_DIR_REPLY && x->state == HP_S_UDP_UNREPLIED) {
        set_state(e, idx, HP_S_UDP_REPLIED, now);
    }
    return verdict;
}

static inline void account(hp_engine *e, uint32_t idx, int dir, uint32_t nbytes, double now)
{
    hp_entry *x = &e->entries[idx];
    x->packets[dir]++;
    x->bytes[dir] += nbytes;
    x->last_seen = now;
    if (e->lru_tail[x->state] != idx) { /* most recently used at the back */
        lru_unlink(e, idx);
        lru_append(e, idx);
    }
    e->packets[dir]++;
    e->bytes[dir] += nbytes;
    e->enis[x->eni_index].packets[dir]++;
    e->enis[x->eni_index].bytes[dir] += nbytes;
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

static inline int drop(hp_engine *e, int reason, uint8_t *out_reason)
{
    e->drops[reason]++;
    *out_reason = (uint8_t)reason;
    return HP_DROP;
}

/* ---- ICMP errors (RFC 5508 section 4; the kernel's nf_nat_icmp_reply_translation) ------- *
 *
 * An ICMP error about a packet of a tracked connection is RELATED to it, in the kernel's word:
 * it is translated so that the host that sent the packet learns of the error ("port
 * unreachable" fails the socket, "fragmentation needed" / "packet too big" lowers the path MTU,
 * RFC 1191 / RFC 8201), but it is not the connection's traffic: its state, timer and counters
 * stay as they are (RFC 5508 REQ-6: an error must not refresh or delete the mapping; else a
 * forged error could keep a mapping alive or kill it).
 *
 * The error carries the offending packet's IP header and first 8+ bytes (ports), as that
 * packet was when the error's sender saw it, i.e. on the far side of the NAT:
 *   inbound (from the VPC): the packet the NAT sent, ENI:port -> peer. Reversed, that is the
 *     connection's reply tuple. Translation (RFC 5508 REQ-4): outer destination ENI ->
 *     environment, embedded source ENI:port -> environment:port;
 *   outbound (from an environment): a reply the environment received, peer -> env:port.
 *     Reversed, the orig tuple. Translation: outer source environment -> ENI, embedded
 *     destination env:port -> ENI:port.
 * The error must travel back along the embedded packet's path (the kernel's "outer daddr
 * mismatch" check): its outer destination is the embedded source; an environment's error must
 * also come from the embedded destination (its own address), so one environment cannot send
 * errors about another's connections. The ICMP type, code and the rest of its header (the
 * next-hop MTU of a PMTU error) are left alone.
 *
 * Checksums, all incremental (RFC 1624): the outer IPv4 header (address, TTL); the embedded
 * IPv4 header (address); the embedded TCP/UDP checksum when its field is inside the message
 * (address and port; an IPv4 UDP checksum of 0 stays 0); the ICMP checksum, which covers the
 * embedded bytes just changed and, for ICMPv6 only, the outer addresses (pseudo-header). When
 * the ICMP checksum is partial (offloaded) only the pseudo-header part moves. */
static void icmp_manip(uint8_t *b, const hp_parsed *p, uint32_t flags, int dir,
                       const uint8_t *addr, uint16_t port)
{
    int v4 = p->t.family == 4, udp = p->inner.proto == HP_IPPROTO_UDP;
    int outer_src = dir == HP_DIR_ORIG, inner_src = dir == HP_DIR_REPLY;
    unsigned alen = v4 ? 4 : 16;
    uint8_t *oa = b + (v4 ? (outer_src ? 12 : 16) : (outer_src ? 8 : 24));
    uint8_t *ip = b + p->inner_ip, *l4 = b + p->inner_l4;
    uint8_t *ia = ip + (v4 ? (inner_src ? 12 : 16) : (inner_src ? 8 : 24));
    uint8_t *ipp = l4 + (inner_src ? 0 : 2);
    uint32_t d_outer = hp_csum_delta(oa, addr, alen);
    uint32_t d_inner = hp_csum_delta(ia, addr, alen);
    uint32_t old_port = hp_get16(ipp);
    uint32_t d_icmp = d_inner + hp_csum_delta16(old_port, port); /* words inside the message */

    if (v4) { /* the embedded IPv4 header checksum covers its addresses */
        uint32_t old = hp_get16(ip + 10), neu = hp_csum_update_full(old, d_inner);
        d_icmp += hp_csum_delta16(old, neu);
        hp_put16(ip + 10, neu);
    }
    uint32_t c_off = p->inner_l4 + (udp ? 6 : 16);
    if (c_off + 2 <= p->end) { /* a TCP checksum lies past the 8 bytes an error must carry */
        uint32_t old = hp_get16(b + c_off);
        if (!(udp && v4 && old == 0)) { /* RFC 768: IPv4 UDP checksum 0 stays 0 */
            uint32_t neu = hp_csum_update_full(
                old, hp_fold(d_inner + hp_csum_delta16(old_port, port)));
            if (udp && neu == 0)
                neu = 0xFFFF;
            d_icmp += hp_csum_delta16(old, neu);
            hp_put16(b + c_off, neu);
        }
    }
    memcpy(ia, addr, alen);
    hp_put16(ipp, port);

    if (v4) {
        uint32_t ttlw = hp_get16(b + 8);
        uint32_t d_ip = hp_fold(d_outer + hp_csum_delta16(ttlw, ttlw - 0x100));
        hp_put16(b + 10, hp_csum_update_full(hp_get16(b + 10), d_ip));
        b[8]--;
    } else {
        b[7]--;
    }
    uint8_t *ic = b + p->l4 + 2;
    if (flags & HP_FLAG_CSUM_PARTIAL) {
        if (!v4) /* the pseudo-header sum: outer addresses */
            hp_put16(ic, hp_csum_update_partial(hp_get16(ic), d_outer));
    } else {
        if (!v4)
            d_icmp += d_outer;
        hp_put16(ic, hp_csum_update_full(hp_get16(ic), hp_fold(d_icmp)));
    }
    memcpy(oa, addr, alen);
}

/* An ICMP packet that parsed: translate an error that belongs to a connection, drop the rest
 * (queries: Lambda supports only TCP and UDP; from the VPC they are unsolicited). */
static int icmp_translate(hp_engine *e, int dir, uint8_t *b, const hp_parsed *p, uint32_t flags,
                          double now, uint8_t *reason)
{
    if (p->icmp == HP_ICMP_ERROR) {
        /* the connection's tuple in this packet's direction: the embedded one, reversed */
        hp_tuple k = p->inner;
        memcpy(k.src, p->inner.dst, 16);
        memcpy(k.dst, p->inner.src, 16);
        k.sport = p->inner.dport;
        k.dport = p->inner.sport;
        uint32_t node = lookup(e, &k);
        int related = node && (int)(node & 1) == dir &&
                      memcmp(p->t.dst, p->inner.src, 16) == 0 &&
                      (dir == HP_DIR_REPLY || memcmp(p->t.src, p->inner.dst, 16) == 0);
        if (related) {
            const hp_entry *x = &e->entries[node >> 1];
            if (dir == HP_DIR_REPLY)
                icmp_manip(b, p, flags, dir, x->tuple[HP_DIR_ORIG].src,
                           x->tuple[HP_DIR_ORIG].sport);
            else
                icmp_manip(b, p, flags, dir, x->tuple[HP_DIR_REPLY].dst,
                           x->tuple[HP_DIR_REPLY].dport);
            e->icmp_errors++;
            *reason = HP_R_NONE;
            return dir == HP_DIR_REPLY ? HP_REPLY : HP_ESTABLISHED;
        }
        if (dir == HP_DIR_ORIG)
            return drop(e, HP_R_ICMP_UNRELATED, reason);
    } else if (dir == HP_DIR_ORIG) {
        return drop(e, HP_R_UNSUPPORTED_PROTOCOL, reason);
    }
    ev_reject(e, &p->t, HP_DIR_REPLY, p->l3_len, HP_R_UNSOLICITED, now);
    return drop(e, HP_R_UNSOLICITED, reason);
}

/* ---- fragments -------------------------------------------------------------------------- *
 *
 * A fragmented datagram's first fragment carries the ports: it is tracked and translated like
 * a whole packet (the incremental L4 checksum update is right for the whole datagram, whose
 * checksum it carries). Later fragments carry none: a tracker, made when the first fragment
 * passed, holds the connection, and they get its address rewrite (source outbound, destination
 * inbound) and nothing else. A later fragment with no tracker is dropped, so no fragment gets
 * past the unsolicited-inbound rule; none is held back waiting for its first (senders emit the
 * first fragment first; the kernel would reorder them by reassembling). */

static void frag_key(const hp_parsed *p, int dir, hp_tuple *k)
{
    memset(k, 0, sizeof *k);
    memcpy(k->src, p->t.src, 16);
    memcpy(k->dst, p->t.dst, 16);
    k->sport = (uint16_t)(p->frag_id >> 16);
    k->dport = (uint16_t)p->frag_id;
    k->family = p->t.family;
    k->proto = p->t.family == 4 ? p->t.proto : 0; /* RFC 791 keys on it; RFC 8200 does not */
    k->pad[0] = (uint8_t)dir;
}

static inline uint32_t frag_home(const hp_engine *e, const hp_tuple *k)
{
    return (uint32_t)hp_siphash13_40(e->k0, e->k1, k) & (HP_FRAG_SLOTS - 1);
}

static void frag_remove(hp_engine *e, uint32_t i)
{
    uint32_t j = i, m = HP_FRAG_SLOTS - 1;
    for (;;) { /* backward-shift deletion, as src_release */
        j = (j + 1) & m;
        if (!e->frag[j].used)
            break;
        uint32_t k = frag_home(e, &e->frag[j].key);
        if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
            e->frag[i] = e->frag[j];
            i = j;
        }
    }
    e->frag[i].used = 0;
    e->n_frag--;
}

/* The slot of a live tracker for k, or -1 (one that timed out is removed on the way). */
static int frag_find(hp_engine *e, const hp_tuple *k, double now)
{
    if (!e->frag)
        return -1;
    for (uint32_t i = frag_home(e, k);; i = (i + 1) & (HP_FRAG_SLOTS - 1)) {
        hp_frag *f = &e->frag[i];
        if (!f->used)
            return -1;
        if (memcmp(&f->key, k, sizeof *k) == 0) {
            if (f->expires > now)
                return (int)i;
            frag_remove(e, i);
            return -1;
        }
    }
}

/* Room for a tracker of k: it has one already, or fewer than HP_FRAG_MAX are live (after the
 * timed-out ones are reclaimed). */
static int frag_room(hp_engine *e, const hp_tuple *k, double now)
{
    if (!e->frag) {
        e->frag = calloc(HP_FRAG_SLOTS, sizeof *e->frag);
        return e->frag != NULL;
    }
    if (e->n_frag < HP_FRAG_MAX || frag_find(e, k, now) >= 0)
        return 1;
    for (uint32_t i = 0; i < HP_FRAG_SLOTS;) {
        if (e->frag[i].used && e->frag[i].expires <= now)
            frag_remove(e, i); /* another entry may have moved into i: look again */
        else
            i++;
    }
    return e->n_frag < HP_FRAG_MAX;
}

/* The first fragment passed: track its datagram (a tracker of the same key starts over). */
static void frag_track(hp_engine *e, const hp_tuple *k, const hp_parsed *p, uint32_t idx,
                       double now)
{
    int at = frag_find(e, k, now);
    hp_frag *f;
    if (at >= 0) {
        f = &e->frag[at];
    } else {
        uint32_t i = frag_home(e, k);
        while (e->frag[i].used)
            i = (i + 1) & (HP_FRAG_SLOTS - 1);
        f = &e->frag[i];
        f->key = *k;
        f->used = 1;
        e->n_frag++;
    }
    f->conn = idx;
    f->conn_id = e->entries[idx].id;
    f->next = p->frag_len;
    f->expires = now + (p->t.family == 4 ? HP_FRAG_TIMEOUT4 : HP_FRAG_TIMEOUT6);
}

/* A later fragment: the address rewrite of its datagram's connection, TTL / hop limit, IPv4
 * header checksum. */
static int frag_translate(hp_engine *e, int dir, uint8_t *b, const hp_parsed *p, double now,
                          uint8_t *reason)
{
    hp_tuple k;
    frag_key(p, dir, &k);
    int at = frag_find(e, &k, now);
    if (at < 0)
        return drop(e, HP_R_FRAGMENT, reason);
    hp_frag *f = &e->frag[at];
    uint32_t idx = f->conn;
    hp_entry *x = &e->entries[idx];
    if (x->state == HP_S_NONE || x->id != f->conn_id) { /* the connection is gone */
        frag_remove(e, (uint32_t)at);
        return drop(e, HP_R_FRAGMENT, reason);
    }
    /* Forget the datagram once its bytes went through in order up to the last fragment; after
     * a gap (reordered, lost or duplicated fragments) it stays until it times out, so that no
     * fragment of it is refused for a miscount. */
    if (p->frag_off == f->next) {
        f->next += p->frag_len;
        if (!p->frag_more)
            frag_remove(e, (uint32_t)at);
    }
    int v4 = p->t.family == 4;
    unsigned alen = v4 ? 4 : 16;
    int src = dir == HP_DIR_ORIG;
    const uint8_t *addr = src ? e->enis[x->eni_index].addr[FAM(p->t.family)]
                              : x->tuple[HP_DIR_ORIG].src;
    uint8_t *a = b + (v4 ? (src ? 12 : 16) : (src ? 8 : 24));
    if (v4) {
        uint32_t ttlw = hp_get16(b + 8);
        uint32_t d = hp_fold(hp_csum_delta(a, addr, alen) + hp_csum_delta16(ttlw, ttlw - 0x100));
        hp_put16(b + 10, hp_csum_update_full(hp_get16(b + 10), d));
        b[8]--;
    } else {
        b[7]--;
    }
    memcpy(a, addr, alen);
    account(e, idx, dir, p->l3_len, now);
    e->fragments++;
    *reason = HP_R_NONE;
    return dir == HP_DIR_ORIG ? HP_ESTABLISHED : HP_REPLY;
}

/* ---- the data path ---------------------------------------------------------------------- */

int hp_translate(hp_engine *e, int dir, uint8_t *b, uint32_t n, uint32_t flags, double now,
                 uint8_t *reason)
{
    hp_parsed p;
    uint32_t idx, node;
    int r = hp_parse(b, n, flags, &p), verdict;
    if (r)
        return drop(e, r, reason);
    /* A router must not forward a packet whose TTL would reach 0 (RFC 1812 5.3.1). */
    if (b[p.t.family == 4 ? 8 : 7] <= 1)
        return drop(e, p.t.family == 4 ? HP_R_TTL_EXPIRED : HP_R_HOP_LIMIT_EXPIRED, reason);
    if (p.icmp)
        return icmp_translate(e, dir, b, &p, flags, now, reason);
    hp_tuple fk;
    if (p.frag == HP_FRAG_LATER)
        return frag_translate(e, dir, b, &p, now, reason);
    if (p.frag == HP_FRAG_FIRST) {
        frag_key(&p, dir, &fk);
        if (!frag_room(e, &fk, now))
            return drop(e, HP_R_FRAGMENT_TABLE_FULL, reason);
    }

    node = lookup(e, &p.t);
    if (dir == HP_DIR_ORIG) {
        if (!node) {
            r = new_conn(e, &p, now, &idx);
            if (r) {
                if (r == HP_R_SG_DENIED || r == HP_R_TCP_NOT_SYN)
                    ev_reject(e, &p.t, HP_DIR_ORIG, p.l3_len, r, now);
                return drop(e, r, reason);
            }
            verdict = HP_NEW;
        } else {
            if (node & 1) /* the packet looks like a reply of another connection */
                return drop(e, HP_R_TUPLE_COLLISION, reason);
            idx = node >> 1;
            verdict = update_state(e, idx, HP_DIR_ORIG, p.tcp_flags, now);
            if (verdict == HP_DROP)
                return drop(e, HP_R_TCP_INVALID, reason);
        }
        hp_entry *x = &e->entries[idx];
        manip(b, &p, flags, 1, e->enis[x->eni_index].addr[FAM(p.t.family)], x->eni_port);
    } else {
        if (!node || !(node & 1)) {
            ev_reject(e, &p.t, HP_DIR_REPLY, p.l3_len, HP_R_UNSOLICITED, now);
            return drop(e, HP_R_UNSOLICITED, reason);
        }
        idx = node >> 1;
        verdict = update_state(e, idx, HP_DIR_REPLY, p.tcp_flags, now);
        if (verdict == HP_DROP)
            return drop(e, HP_R_TCP_INVALID, reason);
        hp_entry *x = &e->entries[idx];
        manip(b, &p, flags, 0, x->tuple[HP_DIR_ORIG].src, x->tuple[HP_DIR_ORIG].sport);
    }
    account(e, idx, dir, p.l3_len, now);
    if (p.frag == HP_FRAG_FIRST) {
        frag_track(e, &fk, &p, idx, now);
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
