/* hp_table.c - the connection table: hash chains of both tuples, per-class LRU lists,
 * connections per source, insert, and removal (expiry, delete, flush).
 *
 * Lookup and the LRU moves a packet makes are static inline in hp_engine_internal.h.
 */
#include "hp_engine_internal.h"

#include <string.h>

/* ---- hash table ------------------------------------------------------------------------ */
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
/* Append, but behind every entry of the class seen later than it (a restored connection may
 * be older than what the table holds): the lists stay sorted by last_seen, which expiry needs. */
void hp_lru_insert_sorted(hp_engine *e, uint32_t idx)
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
hp_src *hp_src_find(hp_engine *e, const hp_tuple *t, int insert)
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
    hp_src *s = hp_src_find(e, t, 0);
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
    hp_ev_conn(e, idx, HP_EV_DESTROY, why, now);
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

/* A connection into a free slot: both tuples in the hash table (the reply tuple first: it was
 * the collision check), its port taken, its source counted; the caller links it into its LRU
 * list and sets its id. */
uint32_t hp_conn_insert(hp_engine *e, const hp_tuple *orig, const hp_tuple *reply,
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
        hp_src_find(e, orig, 1)->count++;
    return idx;
}
