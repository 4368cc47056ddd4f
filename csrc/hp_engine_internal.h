/* hp_engine_internal.h - what the engine's files share, and nothing outside them includes.
 *
 * The engine is one concern per file, as the reference engine is (hyperplane/engine/reference/:
 * engine.py, table.py, events.py, snapshot.py, icmp.py, frag.py, beside parse, ports, csum):
 *   hp_engine.c    engine life and the translate path (hp_translate: follow along there)
 *   hp_table.c     the connection table: hash chains, LRU lists, counts per source, expiry
 *   hp_events.c    the event ring (conntrack -E) and flow-log collection
 *   hp_snapshot.c  snapshot and restore
 *   hp_icmp.c      ICMP errors about a tracked connection (RFC 5508)
 *   hp_frag.c      fragments after the first
 *   hp_tcp_window.c  TCP sequence-window tracking (its common case inline: hp_tcp_window.h)
 * A function one file calls in another gets the hp_ prefix and is declared here, HP_HIDDEN
 * (not exported from the extension module). What the established-flow path runs for every
 * packet (lookup, account, the LRU moves, drop) stays static inline, here, as it was in the
 * one file: a call across files would cost it.
 */
#ifndef HP_ENGINE_INTERNAL_H
#define HP_ENGINE_INTERNAL_H

#include <string.h>

#include "hp_engine.h"
#include "hp_rand.h"

#define FAM(f) ((f) == 6)       /* index of a family: 0 = IPv4, 1 = IPv6 */
#define UDP(p) ((p) == HP_IPPROTO_UDP)

/* ---- hash table (hp_table.c) ------------------------------------------------------------ */

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

/* ---- per-class LRU lists: oldest at the head, so expiry only looks at heads -------------- */

static inline void lru_unlink(hp_engine *e, uint32_t idx)
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

static inline void lru_append(hp_engine *e, uint32_t idx)
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

/* Counting a packet of connection idx (hp_engine.c, hp_frag.c); refresh 0: a segment the
 * window passed without changing anything keeps the timer as it was. */
static inline void account(hp_engine *e, uint32_t idx, int dir, uint32_t nbytes, double now,
                           int refresh)
{
    hp_entry *x = &e->entries[idx];
    x->packets[dir]++;
    x->bytes[dir] += nbytes;
    if (refresh) {
        x->last_seen = now;
        if (e->lru_tail[x->state] != idx) { /* most recently used at the back */
            lru_unlink(e, idx);
            lru_append(e, idx);
        }
    }
    e->packets[dir]++;
    e->bytes[dir] += nbytes;
    e->enis[x->eni_index].packets[dir]++;
    e->enis[x->eni_index].bytes[dir] += nbytes;
}

/* VPC Flow Logs' tcp-flags of one segment: FIN 1, SYN 2, RST 4, and SYN-ACK 18 (the SYN and
 * ACK bits of one segment); ACK alone, PSH and URG are not recorded (AWS lists these four). */
static inline uint8_t fl_tcp_flags(uint8_t f)
{
    return (uint8_t)((f & 0x07) | ((f & 0x12) == 0x12 ? 0x10 : 0));
}

static inline int drop(hp_engine *e, int reason, uint8_t *out_reason)
{
    e->drops[reason]++;
    *out_reason = (uint8_t)reason;
    return HP_DROP;
}

/* hp_table.c */
/* Append, keeping the class's list sorted by last_seen (a restored connection may be older). */
HP_HIDDEN void hp_lru_insert_sorted(hp_engine *e, uint32_t idx);
/* A connection into a free slot: the caller links it into its LRU list and sets its id. */
HP_HIDDEN uint32_t hp_conn_insert(hp_engine *e, const hp_tuple *orig, const hp_tuple *reply,
                                  unsigned eni, int state, double last_seen, hp_pool *pool);
/* The slot of t's source, or NULL; with insert, a new slot (count 0) when there is none. */
HP_HIDDEN hp_src *hp_src_find(hp_engine *e, const hp_tuple *t, int insert);

/* hp_engine.c: ENI i's port pool for family and proto, built on first use; NULL: no memory */
HP_HIDDEN hp_pool *hp_get_pool(hp_engine *e, unsigned i, int family, int proto);

/* hp_tcp_window.c: hp_tcp_win_open, hp_tcp_track, in hp_tcp_window.h */

/* hp_events.c */
HP_HIDDEN void hp_ev_conn(hp_engine *e, uint32_t idx, int type, int reason, double now);
HP_HIDDEN void hp_ev_reject(hp_engine *e, const hp_tuple *t, int dir, uint32_t nbytes,
                            int reason, double now);

/* hp_icmp.c: an ICMP packet that parsed */
HP_HIDDEN int hp_icmp_translate(hp_engine *e, int dir, uint8_t *b, const hp_parsed *p,
                                uint32_t flags, double now, uint8_t *reason);

/* hp_frag.c: the tracker key of a fragment's datagram; room for a tracker of k; track a first
 * fragment's datagram; translate a later fragment */
HP_HIDDEN void hp_frag_key(const hp_parsed *p, int dir, hp_tuple *k);
HP_HIDDEN int hp_frag_room(hp_engine *e, const hp_tuple *k, double now);
HP_HIDDEN void hp_frag_track(hp_engine *e, const hp_tuple *k, const hp_parsed *p, uint32_t idx,
                             double now);
HP_HIDDEN int hp_frag_translate(hp_engine *e, int dir, uint8_t *b, const hp_parsed *p,
                                double now, uint8_t *reason);

#endif
