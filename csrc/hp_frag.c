/* hp_frag.c - fragments: a tracker per datagram whose first fragment passed, and the address
 * rewrite of the later fragments (the first is translated like a whole packet).
 */
#include "hp_engine_internal.h"

#include <stdlib.h>
#include <string.h>

#include "hp_csum.h"

/* ---- fragments -------------------------------------------------------------------------- *
 *
 * A fragmented datagram's first fragment carries the ports: it is tracked and translated like
 * a whole packet (the incremental L4 checksum update is right for the whole datagram, whose
 * checksum it carries). Later fragments carry none: a tracker, made when the first fragment
 * passed, holds the connection, and they get its address rewrite (source outbound, destination
 * inbound) and nothing else. A later fragment with no tracker is dropped, so no fragment gets
 * past the unsolicited-inbound rule; none is held back waiting for its first (senders emit the
 * first fragment first; the kernel would reorder them by reassembling). */

void hp_frag_key(const hp_parsed *p, int dir, hp_tuple *k)
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
int hp_frag_room(hp_engine *e, const hp_tuple *k, double now)
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
void hp_frag_track(hp_engine *e, const hp_tuple *k, const hp_parsed *p, uint32_t idx,
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
int hp_frag_translate(hp_engine *e, int dir, uint8_t *b, const hp_parsed *p, double now,
                      uint8_t *reason)
{
    hp_tuple k;
    hp_frag_key(p, dir, &k);
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
    account(e, idx, dir, p->l3_len, now, 1);
    e->fragments++;
    *reason = HP_R_NONE;
    return dir == HP_DIR_ORIG ? HP_ESTABLISHED : HP_REPLY;
}
