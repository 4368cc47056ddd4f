/* hp_dp_steer.c - with workers: which worker owns a packet, the kernel's half of that answer
 * (a classic BPF program per veth link for PACKET_FANOUT), and the rings that carry a packet
 * to its owner when the kernel could not know it (VPP's handoff).
 *
 * Worker w of N owns the ports p of every ENI with (p >> 1) % N == w: its engine shard takes new
 * connections' ports only from there. A reply on an ENI link is addressed to its connection's
 * port; a packet from an environment (or a NAT gateway's inside link) carries its source port,
 * which the kept-source-port rule makes the connection's port when it is free -- and in any
 * case the worker picked by the source port allocates from its own slice. So the owner is
 * (ENI link: destination port, else source port) % N, and the fanout program computes exactly
 * that for TCP and UDP. What it cannot compute:
 *   - a fragment: the program steers every fragment of a datagram by its identification, so
 *     they all reach one worker, which learns the owner from the first (it has the ports) and
 *     hands the later ones over;
 *   - an ICMP error (and NDP, ARP, anything else): to worker 0, which finds the owner from the
 *     embedded packet's port (ENI link: its source port, the ENI's; else its destination);
 *   - a TAP: one queue, read by worker 0;
 * each is handed over through a single-producer single-consumer ring per pair of workers. A new
 * connection whose owner's slice is full spills to the next worker (hp_dp_outbound.c).
 */
#define _GNU_SOURCE
#include "hp_dp_internal.h"

#include <errno.h>
#include <linux/filter.h>
#include <stdio.h>
#include <stdlib.h>

#include "hp_csum.h"
#include "hp_parse.h"

/* ---- handoff rings ------------------------------------------------------------------------ */
#define HO_BYTES (4u << 20) /* per pair of workers: 60 MTU-sized frames per ms at 64 KB... */
#define HO_HDR 24u
#define HO_SKIP 0xFFFFu /* a record that only pads to the end of the ring */
#define HO_BATCH 256u   /* records taken per ring before their sends are flushed */

struct hp_ho_ring {
    uint64_t head __attribute__((aligned(64))); /* written by the producer */
    uint64_t tail __attribute__((aligned(64))); /* written by the consumer */
    uint8_t *buf __attribute__((aligned(64)));
};

typedef struct {
    uint32_t size, len; /* the record's bytes (8-aligned), the frame's */
    uint16_t link;
    uint8_t hops, pad;
    struct virtio_net_hdr vh;
} ho_rec;
_Static_assert(sizeof(ho_rec) <= HO_HDR, "a handoff record's header fits HO_HDR");

/* ---- the owners of fragmented datagrams ------------------------------------------------------
 * Learned by the worker all of a datagram's fragments reach (the program steers them by
 * identification), from its first fragment; a direct-mapped cache (a collision forgets the
 * older datagram, whose later fragments then stay with this worker and are dropped by its
 * engine as fragments without a first, as when the first was lost). */
#define FS_SLOTS 4096u
typedef struct {
    uint8_t src[16], dst[16];
    uint32_t id;
    uint8_t family, proto, owner, used;
    double expires;
} fs_slot;
struct hp_fsteer {
    fs_slot s[FS_SLOTS];
};

static fs_slot *fs_slot_of(struct hp_fsteer *fs, const hp_parsed *p)
{
    uint32_t x, y;
    memcpy(&x, p->t.family == 4 ? p->t.src : p->t.src + 12, 4);
    memcpy(&y, p->t.family == 4 ? p->t.dst : p->t.dst + 12, 4);
    uint32_t h = (x * 0x9E3779B1u) ^ (y * 0x85EBCA77u) ^ (p->frag_id * 0xC2B2AE3Du);
    return &fs->s[(h ^ (h >> 15)) & (FS_SLOTS - 1)];
}

static int fs_same(const fs_slot *s, const hp_parsed *p)
{
    return s->used && s->id == p->frag_id && s->family == p->t.family &&
           s->proto == p->t.proto && hp_eq16(s->src, p->t.src) && hp_eq16(s->dst, p->t.dst);
}

/* ---- who owns a packet -----------------------------------------------------------------------
 * Port p belongs to worker (p >> HP_PORT_BLOCK_SHIFT) % N: pairs of ports, not single ones,
 * because Linux's connect() picks even ephemeral ports (and bind() odd ones): by p % 2, every
 * connection of a Linux client would land on worker 0. */
#define OWNER(port, nw) ((int)hp_port_owner((port), (nw)))
int hp_owner(hp_dp *dp, int w, const hp_link *l, const uint8_t *ip, uint32_t n, int family,
             uint32_t flags, double now)
{
    unsigned nw = dp->n_threads;
    unsigned at = l->role == HP_ROLE_ENI ? 2 : 0; /* the destination port, or the source */
    /* TCP and UDP without fragments or extension headers: what the program steered by */
    if (family == 4) {
        uint32_t ihl = (ip[0] & 15u) * 4;
        if (n >= 20 && (ip[9] == HP_IPPROTO_TCP || ip[9] == HP_IPPROTO_UDP) &&
            !(hp_get16(ip + 6) & 0x3FFF) && ihl >= 20 && n >= ihl + 4)
            return OWNER(hp_get16(ip + ihl + at), nw);
    } else if (n >= 44 && (ip[6] == HP_IPPROTO_TCP || ip[6] == HP_IPPROTO_UDP)) {
        return OWNER(hp_get16(ip + 40 + at), nw);
    }
    hp_parsed p;
    if (hp_parse(ip, n, flags, &p) != HP_R_NONE)
        return w; /* this worker's engine names what is wrong with it */
    fs_slot *s = p.frag ? fs_slot_of(dp->wk[w].fsteer, &p) : NULL;
    if (p.frag == HP_FRAG_LATER)
        return fs_same(s, &p) && now < s->expires ? s->owner : w;
    if (p.icmp == HP_ICMP_ERROR)
        return OWNER(at ? p.inner.sport : p.inner.dport, nw);
    if (p.icmp)
        return w; /* echo and the like: not translated, the engine here says so */
    int owner = OWNER(at ? p.t.dport : p.t.sport, nw);
    if (p.frag == HP_FRAG_FIRST) {
        memcpy(s->src, p.t.src, 16);
        memcpy(s->dst, p.t.dst, 16);
        s->id = p.frag_id;
        s->family = p.t.family;
        s->proto = p.t.proto;
        s->owner = (uint8_t)owner;
        s->used = 1;
        s->expires = now + (family == 4 ? HP_FRAG_TIMEOUT4 : HP_FRAG_TIMEOUT6);
    }
    return owner;
}

/* ---- handoff ------------------------------------------------------------------------------- */
void hp_handoff(hp_dp *dp, int from, int to, const hp_link *l, const struct virtio_net_hdr *vh,
                const uint8_t *f, uint32_t len, int hops)
{
    hp_worker *src = &dp->wk[from], *dst = &dp->wk[to];
    struct hp_ho_ring *r = dst->from[from];
    uint32_t size = (HO_HDR + len + 7u) & ~7u;
    uint64_t head = r->head, tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    uint32_t off = (uint32_t)(head & (HO_BYTES - 1));
    uint32_t skip = off + size > HO_BYTES ? HO_BYTES - off : 0;
    if (size > HO_BYTES / 2 || head + skip + size - tail > HO_BYTES) {
        src->handoff_full++;
        COUNT_DROP(dp, HP_D_HANDOFF_FULL);
        return;
    }
    if (skip) {
        ho_rec *pad = (ho_rec *)(r->buf + off);
        pad->size = skip;
        pad->link = HO_SKIP;
        head += skip;
        off = 0;
    }
    ho_rec *h = (ho_rec *)(r->buf + off);
    h->size = size;
    h->len = len;
    h->link = (uint16_t)l->index;
    h->hops = (uint8_t)hops;
    h->vh = *vh;
    memcpy(r->buf + off + HO_HDR, f, len);
    /* publish, then look whether the consumer sleeps (it says so, then looks at the rings:
     * with both in one total order, one of the two sees the other) */
    __atomic_store_n(&r->head, head + size, __ATOMIC_SEQ_CST);
    src->handoff_out++;
    if (__atomic_load_n(&dst->sleeping, __ATOMIC_SEQ_CST))
        hp_kick(dst->wake);
}

int hp_handoff_pending(hp_dp *dp, int w)
{
    for (unsigned s = 0; s < dp->n_threads; s++) {
        struct hp_ho_ring *r = dp->wk[w].from[s];
        if (r && __atomic_load_n(&r->head, __ATOMIC_SEQ_CST) != r->tail)
            return 1;
    }
    return 0;
}

/* Take what the other workers handed to w: each frame goes on to its direction here (with the
 * spill's hop count); the ring's space is given back after the sends pointing into it. */
uint32_t hp_handoff_drain(hp_dp *dp, int w, double now)
{
    hp_worker *wk = &dp->wk[w];
    uint32_t got = 0;
    for (unsigned s = 0; s < dp->n_threads; s++) {
        struct hp_ho_ring *r = wk->from[s];
        if (!r)
            continue;
        uint64_t tail = r->tail, head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        uint32_t k = 0;
        while (tail != head && k < HO_BATCH) {
            ho_rec *h = (ho_rec *)(r->buf + (tail & (HO_BYTES - 1)));
            tail += h->size;
            if (h->link == HO_SKIP)
                continue;
            uint8_t *f = (uint8_t *)h + HO_HDR;
            int family = hp_get16(f + 12) == 0x0800 ? 4 : 6;
            struct virtio_net_hdr vh = h->vh;
            wk->handoff_in++;
            hp_forward(dp, w, dp->links[h->link], &vh, f, h->len, family, now, h->hops);
            k++;
        }
        if (k)
            hp_flush_all(dp, w);
        __atomic_store_n(&r->tail, tail, __ATOMIC_RELEASE);
        got += k;
    }
    return got;
}

int hp_steer_setup(hp_dp *dp, char *err, size_t errlen)
{
    for (unsigned d = 0; d < dp->n_threads; d++) {
        hp_worker *wk = &dp->wk[d];
        wk->fsteer = calloc(1, sizeof *wk->fsteer);
        if (!wk->fsteer)
            goto oom;
        for (unsigned s = 0; s < dp->n_threads; s++) {
            if (s == d)
                continue;
            struct hp_ho_ring *r = aligned_alloc(64, sizeof *r);
            if (!r)
                goto oom;
            memset(r, 0, sizeof *r);
            wk->from[s] = r;
            r->buf = aligned_alloc(64, HO_BYTES);
            if (!r->buf)
                goto oom;
        }
    }
    return 0;
oom:
    snprintf(err, errlen, "workers: out of memory for the handoff rings");
    return -1;
}

void hp_steer_free(hp_dp *dp)
{
    for (unsigned d = 0; d < HP_DP_MAX_WORKERS; d++) {
        hp_worker *wk = &dp->wk[d];
        for (unsigned s = 0; s < HP_DP_MAX_WORKERS; s++) {
            if (wk->from[s])
                free(wk->from[s]->buf);
            free(wk->from[s]);
            wk->from[s] = NULL;
        }
        free(wk->fsteer);
        wk->fsteer = NULL;
    }
}

/* ---- the fanout program ------------------------------------------------------------------------
 * Classic BPF over the packet from its network header (SKF_NET_OFF: the fanout hook runs after
 * the Ethernet header was pulled); the kernel takes the result modulo the group's members,
 * which joined in worker order. at: 0 the source port, 2 the destination port. */
#define NET(k) ((uint32_t)(SKF_NET_OFF + (k)))
static void steer_program(struct sock_filter *f, unsigned at)
{
    struct sock_filter prog[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 0, 14),        /* -> 16 */
        /* 2 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, NET(6)),                  /* flags, offset */
        /* 3 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x3FFF, 10, 0),        /* -> 14 */
        /* 4 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, NET(9)),                  /* protocol */
        /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HP_IPPROTO_TCP, 1, 0),   /* -> 7 */
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HP_IPPROTO_UDP, 0, 19), /* -> 26 */
        /* 7 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, NET(0)),
        /* 8 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x0F),
        /* 9 */ BPF_STMT(BPF_ALU | BPF_LSH | BPF_K, 2),
        /* 10 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),                            /* X = IHL */
        /* 11 */ BPF_STMT(BPF_LD | BPF_H | BPF_IND, NET(at)),
        /* 12 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, HP_PORT_BLOCK_SHIFT),
        /* 13 */ BPF_STMT(BPF_RET | BPF_A, 0),
        /* 14 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, NET(4)),                 /* fragment id */
        /* 15 */ BPF_STMT(BPF_RET | BPF_A, 0),
        /* 16 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x86DD, 0, 9),         /* -> 26 */
        /* 17 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, NET(6)),                 /* next header */
        /* 18 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HP_IPPROTO_TCP, 2, 0),  /* -> 21 */
        /* 19 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HP_IPPROTO_UDP, 1, 0),  /* -> 21 */
        /* 20 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 44, 3, 5),              /* -> 24, 26 */
        /* 21 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, NET(40 + at)),
        /* 22 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, HP_PORT_BLOCK_SHIFT),
        /* 23 */ BPF_STMT(BPF_RET | BPF_A, 0),
        /* 24 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NET(44)),                /* fragment id */
        /* 25 */ BPF_STMT(BPF_RET | BPF_A, 0),
        /* 26 */ BPF_STMT(BPF_RET | BPF_K, 0), /* ARP, NDP, ICMP, ...: worker 0 */
    };
    memcpy(f, prog, sizeof prog);
}
#define STEER_LEN 27

/* Every worker's port on a new link: a veth gets a socket per worker in one fanout group
 * (worker 0's, the link's own port, first); a TAP a send-only dup per worker (worker 0 reads). */
int hp_fanout_link(hp_dp *dp, hp_link *l, const char *ifname, char *err, size_t errlen)
{
    for (unsigned w = 1; w < dp->n_threads; w++) {
        hp_port *p = calloc(1, sizeof *p);
        if (!p) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        p->fd = -1;
        l->pt[w] = p;
    }
    if (l->port.kind == HP_PORT_TAP) {
        for (unsigned w = 1; w < dp->n_threads; w++)
            if (hp_io_attach_tap_tx(l->pt[w], l->port.fd, err, errlen) < 0)
                return -1;
        return 0;
    }
    struct sock_filter prog[STEER_LEN];
    steer_program(prog, l->role == HP_ROLE_ENI ? 2 : 0);
    struct sock_fprog fp = {.len = STEER_LEN, .filter = prog};
    uint16_t id = 0;
    if (hp_io_fanout_join(&l->port, &id, &fp, err, errlen) < 0)
        return -1;
    for (unsigned w = 1; w < dp->n_threads; w++)
        if (hp_io_open_packet(l->pt[w], ifname, dp->ring_frames, err, errlen) < 0 ||
            hp_io_fanout_join(l->pt[w], &id, NULL, err, errlen) < 0)
            return -1;
    return 0;
}
