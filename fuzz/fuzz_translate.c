/* fuzz_translate.c - libFuzzer target: the engine (parse, conntrack, NAT manip) under a
 * stream of hostile packets and control operations, with its invariants checked after each.
 *
 * Build: fuzz/build.sh OUTDIR (clang -fsanitize=fuzzer,address,undefined). Run:
 *   OUTDIR/fuzz_translate -max_total_time=300 CORPUS_COPY fuzz/corpus/translate
 * docs/robustness.md explains the input policy this target holds the engine to.
 *
 * One input = one fresh engine (2 ENIs with IPv4 and IPv6, capacity 64, 16 ports per pool, a
 * 16-event ring, security-group rules that refuse IPv4 UDP above port 60000) and a sequence
 * of operations. Each operation starts with one byte; op % 8 selects:
 *
 *   0-3  translate: ctl, len_hi, len_lo, then len packet bytes (fewer if the input ends).
 *        ctl bit 0: direction (0 orig = environment -> VPC, 1 reply = VPC -> ENI);
 *        bit 1: checksum-partial (virtio NEEDS_CSUM); bits 2-7: time step in 1/4 s.
 *        The packet is copied into a buffer of exactly len bytes, so a read past the end is
 *        an ASan report, not a silent read of the next op.
 *   4    advance: 1 byte, the time step in seconds (expiry runs).
 *   5    collect: drain the event ring and walk hp_engine_flow_collect to its end.
 *   6    delete: 1 byte; bit 0 set: flush; else delete the orig tuple of a remembered NEW
 *        event (index byte >> 1), or of the last packet translated, both real and made-up.
 *   7    ENI on/off or restart: 1 byte; bit 2 clear: bit 0 the ENI, bit 1 enabled; bit 2
 *        set: a restart, the engine snapshotted and restored into a fresh one, which goes on
 *        (its TCP windows marked RESYNC, as after a real restart).
 *
 * Fragments (docs/robustness.md "Fragments"): a passed first fragment is checked like a whole
 * packet but for its L4 checksum, which covers the whole datagram (its sum over the fragment
 * must stay as it was, RFC 1624) and a UDP length that may run past it; a passed later one may
 * change only the address, TTL / hop limit and IPv4 header checksum, and must be of a datagram
 * whose first fragment passed in the same direction in this input, and get the same address.
 *
 * The connection table around each packet, the TCP sequence windows and snapshot -> restore
 * (after every input, and at each restart) are checked in fuzz_window.h: a dropped packet
 * (tcp_out_of_window, tcp_invalid, any) leaves the table byte-identical; a passed one changes
 * its own connection only, and a TCP segment the window passed changes no window or state.
 *
 * fuzz/make_corpus.py writes the seed inputs in this format. On a broken invariant the
 * harness calls __builtin_trap(): libFuzzer saves the input as crash-<sha1>.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hp_engine.h"

#define CAPACITY 64
#define PORT_MIN 40000
#define PORT_MAX 40015
#define N_REMEMBER 8
#define N_FRAGS 32 /* fragmented datagrams remembered per input (more: the check stands down) */

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond))                                                                       \
            __builtin_trap();                                                              \
    } while (0)

static const uint8_t ENI4[2][4] = {{198, 18, 1, 10}, {198, 18, 1, 11}};
static const uint8_t ENI6[2][16] = {
    {0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10},
    {0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x11},
};

/* A fragmented datagram whose first fragment passed: its key (hp_frag.c hp_frag_key) and the
 * address its first fragment was given, which every later fragment of it must get too. */
typedef struct {
    int dir, family, proto;
    uint32_t id;
    uint8_t src[16], dst[16];
    uint8_t to[16];
} frag_seen;

typedef struct {
    hp_engine *e;
    double now;
    uint64_t translated; /* hp_translate calls: every one is a packet or a drop counted */
    hp_tuple remembered[N_REMEMBER];
    unsigned n_remembered;
    hp_tuple last;
    hp_event ev[64];
    frag_seen frags[N_FRAGS];
    unsigned n_frags;
    int frags_lost; /* more datagrams than N_FRAGS: a later fragment may be of one not kept */
    int restarted;  /* the engine is a restored one (op 7, bit 2) */
} fuzz_state;

/* ---- an independent reading of the packet (not hp_parse: the oracle must not share bugs) -- */

static uint32_t get16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

static uint32_t sum_bytes(const uint8_t *p, uint32_t len, uint32_t acc)
{
    for (uint32_t i = 0; i + 1 < len; i += 2)
        acc += get16(p + i);
    if (len & 1)
        acc += (uint32_t)p[len - 1] << 8;
    return acc;
}

static uint32_t fold(uint32_t x)
{
    while (x > 0xFFFF)
        x = (x & 0xFFFF) + (x >> 16);
    return x;
}

enum { FRAG_NO = 0, FRAG_FIRST = 1, FRAG_LATER = 2 };

typedef struct {
    int family, proto;
    uint32_t l4, end; /* transport header offset, end of the IP packet */
    int frag;         /* FRAG_NO (an IPv6 atomic fragment too: a whole packet), FIRST, LATER */
    uint32_t frag_id; /* IPv4 identification, IPv6 Fragment header identification */
} shape;

/* Where the transport header is, for a packet the engine accepted (so lengths are sane).
 * A fragment (IPv4 MF or offset; an IPv6 Fragment header but an atomic one, RFC 6946) must
 * be one the engine's policy lets through (docs/robustness.md "Fragments"): fragment data a
 * multiple of 8 bytes unless it is the last, the datagram within 64 KiB, no IPv4 TCP fragment
 * at offset 8 (RFC 1858), one non-atomic Fragment header. For a later fragment, proto and l4
 * are what follows its IP header (IPv4) or Fragment header (IPv6). */
static int read_shape(const uint8_t *b, uint32_t n, shape *s)
{
    memset(s, 0, sizeof *s);
    if (n < 1)
        return -1;
    if (b[0] >> 4 == 4) {
        if (n < 20)
            return -1;
        s->family = 4;
        s->l4 = (uint32_t)(b[0] & 15) * 4;
        s->end = get16(b + 2);
        s->proto = b[9];
        if (s->l4 < 20 || s->end > n || s->l4 > s->end)
            return -1;
        uint32_t fw = get16(b + 6), off = (fw & 0x1FFF) * 8, more = (fw >> 13) & 1;
        if (off || more) {
            uint32_t len = s->end - s->l4;
            if ((more && len % 8) || off + len + s->l4 > 65535)
                return -1;
            if (s->proto == HP_IPPROTO_TCP && off == 8)
                return -1;
            s->frag = off ? FRAG_LATER : FRAG_FIRST;
            s->frag_id = get16(b + 4);
        }
    } else if (b[0] >> 4 == 6) {
        if (n < 40)
            return -1;
        s->family = 6;
        s->l4 = 40;
        s->end = 40 + get16(b + 4);
        s->proto = b[6];
        if (s->end > n)
            return -1;
        for (;;) { /* each step moves l4 on by 8 bytes at least */
            if (s->proto == 44) {
                uint32_t at = s->l4;
                if (at + 8 > s->end)
                    return -1;
                uint32_t off = get16(b + at + 2) & 0xFFF8, more = b[at + 3] & 1;
                s->proto = b[at];
                s->l4 = at + 8;
                if (!off && !more)
                    continue; /* atomic: a whole packet */
                uint32_t len = s->end - s->l4;
                if (s->frag || (more && len % 8) || off + len > 65535)
                    return -1;
                s->frag = off ? FRAG_LATER : FRAG_FIRST;
                s->frag_id = get16(b + at + 4) << 16 | get16(b + at + 6);
                if (off)
                    break;
            } else if (s->proto == 0 || s->proto == 43 || s->proto == 60 || s->proto == 51) {
                if (s->l4 + 2 > s->end)
                    return -1;
                uint32_t h = s->proto == 51 ? (b[s->l4 + 1] + 2u) * 4 : (b[s->l4 + 1] + 1u) * 8;
                s->proto = b[s->l4];
                s->l4 += h;
                if (s->l4 > s->end)
                    return -1;
            } else {
                break;
            }
        }
    } else {
        return -1;
    }
    return s->l4 <= s->end && s->end <= n ? 0 : -1;
}

/* One's-complement sum of the pseudo-header (RFC 768, RFC 9293 3.1, RFC 8200 8.1). */
static uint32_t pseudo_sum(const uint8_t *b, const shape *s)
{
    uint32_t alen = s->family == 4 ? 4 : 16;
    const uint8_t *src = b + (s->family == 4 ? 12 : 8);
    uint32_t acc = sum_bytes(src, 2 * alen, 0); /* src and dst are adjacent in both */
    return acc + (uint32_t)s->proto + (s->end - s->l4);
}

/* 1: the complete L4 checksum verifies; 0: it does not; -1: IPv4 UDP without a checksum. */
static int l4_sum_ok(const uint8_t *b, const shape *s)
{
    uint32_t coff = s->l4 + (s->proto == HP_IPPROTO_UDP ? 6 : 16);
    if (s->family == 4 && s->proto == HP_IPPROTO_UDP && get16(b + coff) == 0)
        return -1;
    return fold(sum_bytes(b + s->l4, s->end - s->l4, pseudo_sum(b, s))) == 0xFFFF;
}

/* The one's-complement sum of the transport bytes and pseudo-header, mod 0xFFFF (so 0 ==
 * 0xFFFF). On a first fragment the checksum covers the whole datagram and cannot be verified,
 * but an incremental update (RFC 1624) of address and port keeps this sum as it was. */
static uint32_t l4_residual(const uint8_t *b, const shape *s)
{
    return fold(sum_bytes(b + s->l4, s->end - s->l4, pseudo_sum(b, s))) % 0xFFFF;
}

/* Partial: the field holds the folded, uncomplemented pseudo-header sum (0 == 0xFFFF). */
static int partial_ok(const uint8_t *b, const shape *s)
{
    uint32_t c = get16(b + s->l4 + (s->proto == HP_IPPROTO_UDP ? 6 : 16));
    uint32_t want = fold(pseudo_sum(b, s));
    return (c % 0xFFFF) == (want % 0xFFFF);
}

#include "fuzz_window.h"

/* ---- invariants ---------------------------------------------------------------------------- */

static void check_table(const hp_engine *e)
{
    CHECK(e->n_entries <= e->cfg.capacity);
    CHECK(e->hw <= e->cfg.capacity);
    uint32_t live = 0;
    for (uint32_t i = 1; i <= e->hw; i++)
        live += e->entries[i].state != HP_S_NONE;
    CHECK(live == e->n_entries);
    /* every live entry sits in exactly one LRU list, that of its state */
    uint32_t in_lists = 0;
    for (int cls = 1; cls < HP_N_CLASSES; cls++)
        for (uint32_t i = e->lru_head[cls]; i; i = e->entries[i].lru_next) {
            CHECK(i <= e->hw && e->entries[i].state == cls);
            CHECK(++in_lists <= e->n_entries);
        }
    CHECK(in_lists == e->n_entries);
    /* each entry has two nodes in the hash chains, and chains end */
    uint32_t nodes = 0;
    for (uint32_t b = 0; b <= e->mask; b++)
        for (uint32_t n = e->buckets[b]; n; n = e->entries[n >> 1].hnext[n & 1]) {
            CHECK((n >> 1) <= e->hw && e->entries[n >> 1].state != HP_S_NONE);
            CHECK(++nodes <= 2 * e->n_entries);
        }
    CHECK(nodes == 2 * e->n_entries);
    /* each connection holds one port of one pool */
    uint32_t used = 0;
    for (unsigned i = 0; i < e->n_enis; i++)
        for (int f = 0; f < 2; f++)
            for (int u = 0; u < 2; u++) {
                const hp_pool *p = e->enis[i].pools[f][u];
                if (p) {
                    CHECK(p->n_free <= p->n);
                    used += p->n - p->n_free;
                }
            }
    CHECK(used == e->n_entries);
    CHECK(e->drops[HP_R_NONE] == 0);
}

static int is_eni_addr(const uint8_t *a, int family)
{
    for (int i = 0; i < 2; i++)
        if (memcmp(a, family == 4 ? ENI4[i] : ENI6[i], family == 4 ? 4 : 16) == 0)
            return 1;
    return 0;
}

/* What a translated TCP/UDP packet must look like next to the packet that went in. */
static void check_manip(const uint8_t *in, const uint8_t *out, uint32_t n, int dir,
                        uint32_t flags)
{
    shape s;
    if (read_shape(in, n, &s) != 0)
        __builtin_trap(); /* the engine accepted something whose lengths do not hold */
    if (s.family == 4)
        CHECK(fold(sum_bytes(out, (uint32_t)(out[0] & 15) * 4, 0)) == 0xFFFF);
    int v4 = s.family == 4;
    uint32_t alen = v4 ? 4 : 16;
    uint32_t a = v4 ? (dir == HP_DIR_ORIG ? 12 : 16) : (dir == HP_DIR_ORIG ? 8 : 24);
    uint32_t ttl = v4 ? 8 : 7;
    if (s.frag == FRAG_LATER) {
        /* a later fragment of TCP or UDP (IPv6: its fragmentable part may start with an
         * extension header); no ports in it: only the address, TTL / hop limit and IPv4
         * header checksum change, everything after them is the datagram's middle */
        CHECK(s.proto == HP_IPPROTO_TCP || s.proto == HP_IPPROTO_UDP ||
              (!v4 && (s.proto == 0 || s.proto == 43 || s.proto == 60 || s.proto == 51 ||
                       s.proto == 44)));
        for (uint32_t i = 0; i < n; i++) {
            int may = (i >= a && i < a + alen) || i == ttl || (v4 && (i == 10 || i == 11));
            if (!may)
                CHECK(in[i] == out[i]);
        }
        CHECK(out[ttl] == (uint8_t)(in[ttl] - 1));
        CHECK(is_eni_addr(dir == HP_DIR_ORIG ? out + a : in + a, s.family));
        return;
    }
    if (s.proto == 1 || s.proto == 58) {
        CHECK(s.frag == FRAG_NO); /* a fragmented ICMP message is not translated */
        /* an ICMP error translated back (RFC 5508): its rewritten embedded packet and its
         * ICMP checksum must still add up (ICMPv6 sums a pseudo-header, ICMPv4 does not) */
        CHECK(out[s.family == 4 ? 8 : 7] == (uint8_t)(in[s.family == 4 ? 8 : 7] - 1));
        uint32_t before = fold(sum_bytes(in + s.l4, s.end - s.l4,
                                         s.proto == 58 ? pseudo_sum(in, &s) : 0));
        uint32_t after = fold(sum_bytes(out + s.l4, s.end - s.l4,
                                        s.proto == 58 ? pseudo_sum(out, &s) : 0));
        if (!(flags & HP_FLAG_CSUM_PARTIAL) && before == 0xFFFF)
            CHECK(after == 0xFFFF);
        CHECK(memcmp(in + s.end, out + s.end, n - s.end) == 0); /* trailing bytes kept */
        return;
    }
    if (s.proto != HP_IPPROTO_TCP && s.proto != HP_IPPROTO_UDP)
        __builtin_trap(); /* the engine passed a protocol it does not translate */
    /* the whole transport header is there; a first fragment's UDP length is the datagram's */
    uint32_t l4_len = s.end - s.l4;
    if (s.proto == HP_IPPROTO_TCP) {
        CHECK(l4_len >= 20);
        CHECK(in[s.l4 + 12] >> 4 >= 5 && (uint32_t)(in[s.l4 + 12] >> 4) * 4 <= l4_len);
    } else {
        CHECK(l4_len >= 8 && get16(in + s.l4 + 4) >= 8);
        CHECK(s.frag == FRAG_FIRST || get16(in + s.l4 + 4) <= l4_len);
    }
    uint32_t port = s.l4 + (dir == HP_DIR_ORIG ? 0 : 2);
    uint32_t csum = s.l4 + (s.proto == HP_IPPROTO_UDP ? 6 : 16);
    /* only the rewritten address, port, TTL and checksums change; padding after the IP
     * packet and the payload are carried as they were */
    for (uint32_t i = 0; i < n; i++) {
        int may = (i >= a && i < a + alen) || i == port || i == port + 1 || i == ttl ||
                  i == csum || i == csum + 1 || (v4 && (i == 10 || i == 11));
        if (!may)
            CHECK(in[i] == out[i]);
    }
    CHECK(out[ttl] == (uint8_t)(in[ttl] - 1));
    if (dir == HP_DIR_ORIG) { /* source NAT: an ENI address, a port of the pool */
        CHECK(is_eni_addr(out + a, s.family));
        CHECK(get16(out + port) >= PORT_MIN && get16(out + port) <= PORT_MAX);
    } else {
        CHECK(is_eni_addr(in + a, s.family));
    }
    if (s.frag == FRAG_FIRST) {
        if (flags & HP_FLAG_CSUM_PARTIAL) /* the field moved by the pseudo-header's change */
            CHECK((get16(out + csum) + fold(pseudo_sum(in, &s))) % 0xFFFF ==
                  (get16(in + csum) + fold(pseudo_sum(out, &s))) % 0xFFFF);
        else if (v4 && s.proto == HP_IPPROTO_UDP && get16(in + csum) == 0)
            CHECK(get16(out + csum) == 0);
        else
            CHECK(l4_residual(in, &s) == l4_residual(out, &s));
    } else if (flags & HP_FLAG_CSUM_PARTIAL) {
        if (partial_ok(in, &s))
            CHECK(partial_ok(out, &s));
    } else {
        int before = l4_sum_ok(in, &s);
        if (before < 0)
            CHECK(get16(out + csum) == 0); /* RFC 768: "no checksum" stays so */
        else /* RFC 1624: a good checksum stays good, a bad one stays bad */
            CHECK(l4_sum_ok(out, &s) == before);
    }
}

/* Packets the engine let through: connection traffic, and ICMP errors translated for one
 * (those count apart: they are not the connection's traffic, RFC 5508 REQ-6). */
static uint64_t passed(const hp_engine *e)
{
    return e->packets[0] + e->packets[1] + e->icmp_errors;
}

/* A first fragment passed (to: the address it was given), or a later one (it must be of a
 * datagram whose first fragment passed in the same direction, and get the same address). */
static void frag_passed(fuzz_state *st, const uint8_t *in, const uint8_t *out, int dir,
                        const shape *s)
{
    int v4 = s->family == 4;
    uint32_t alen = v4 ? 4 : 16, so = v4 ? 12 : 8, d = v4 ? 16 : 24;
    uint32_t a = dir == HP_DIR_ORIG ? so : d; /* the rewritten one */
    frag_seen k;
    memset(&k, 0, sizeof k);
    k.dir = dir;
    k.family = s->family;
    k.proto = v4 ? s->proto : 0; /* RFC 791 keys on it, RFC 8200 does not */
    k.id = s->frag_id;
    memcpy(k.src, in + so, alen);
    memcpy(k.dst, in + d, alen);
    frag_seen *f = NULL;
    for (unsigned i = 0; i < st->n_frags && !f; i++)
        if (memcmp(&st->frags[i], &k, offsetof(frag_seen, to)) == 0)
            f = &st->frags[i];
    if (s->frag == FRAG_FIRST) {
        if (!f && st->n_frags < N_FRAGS)
            f = &st->frags[st->n_frags++];
        if (!f) {
            st->frags_lost = 1;
            return;
        }
        memcpy(k.to, out + a, alen);
        *f = k;
    } else if (f) {
        CHECK(memcmp(out + a, f->to, alen) == 0);
    } else {
        CHECK(st->frags_lost); /* no first fragment of it passed this way */
    }
}

static void remember(fuzz_state *st, const hp_tuple *t)
{
    st->remembered[st->n_remembered++ % N_REMEMBER] = *t;
}

static void take_events(fuzz_state *st)
{
    uint32_t k, cap = st->e->ev_mask + 1;
    while ((k = hp_engine_take_events(st->e, st->ev, 64)) > 0) {
        CHECK(k <= cap);
        for (uint32_t i = 0; i < k; i++) {
            const hp_event *v = &st->ev[i];
            CHECK(v->type >= HP_EV_NEW && v->type <= HP_EV_REJECT);
            CHECK(v->eni_index < st->e->n_enis || v->eni_index == HP_EV_NO_ENI);
            if (v->type == HP_EV_NEW)
                remember(st, &v->tuple[HP_DIR_ORIG]);
            if (v->type == HP_EV_REJECT)
                CHECK(v->reason > HP_R_NONE && v->reason < HP_R_COUNT);
        }
    }
}

/* ---- operations ---------------------------------------------------------------------------- */

static void op_translate(fuzz_state *st, const uint8_t **p, const uint8_t *end)
{
    if (end - *p < 3) {
        *p = end;
        return;
    }
    uint8_t ctl = (*p)[0];
    uint32_t len = get16(*p + 1);
    *p += 3;
    if (len > (uint32_t)(end - *p))
        len = (uint32_t)(end - *p);
    int dir = ctl & 1;
    uint32_t flags = ctl & 2 ? HP_FLAG_CSUM_PARTIAL : 0;
    st->now += (ctl >> 2) * 0.25;

    uint8_t *in = malloc(len ? len : 1), *buf = malloc(len ? len : 1);
    CHECK(in && buf);
    memcpy(in, *p, len);
    memcpy(buf, *p, len);
    *p += len;

    hp_engine *e = st->e;
    uint64_t passed_before = passed(e), fragments_before = e->fragments;
    hp_engine_advance(e, st->now);
    static table_copy before; /* the table as the packet finds it (14 KiB: not on the stack) */
    table_save(e, &before);
    uint8_t reason = 0xEE;
    int v = hp_translate(e, dir, buf, len, flags, st->now, &reason);
    st->translated++;
    CHECK(v >= HP_DROP && v <= HP_REPLY);
    if (v == HP_DROP) {
        CHECK(reason > HP_R_NONE && reason < HP_R_COUNT);
        CHECK(memcmp(in, buf, len) == 0); /* a dropped packet is left as it came */
        CHECK(passed(e) == passed_before);
        CHECK(e->fragments == fragments_before);
        check_untouched(e, &before); /* nothing about any connection changed */
        if (reason == HP_R_TCP_OUT_OF_WINDOW || reason == HP_R_TCP_INVALID)
            check_window_drop(e, in, len, dir);
    } else {
        CHECK(reason == HP_R_NONE);
        CHECK(dir == HP_DIR_ORIG ? v != HP_REPLY : v == HP_REPLY);
        CHECK(passed(e) == passed_before + 1);
        check_manip(in, buf, len, dir, flags);
        check_passed(e, &before, in, len, dir, v, st->now);
        shape s;
        CHECK(read_shape(in, len, &s) == 0);
        CHECK(e->fragments == fragments_before + (s.frag != FRAG_NO));
        if (s.frag != FRAG_NO)
            frag_passed(st, in, buf, dir, &s);
        /* remember a tuple of the packet as it came, for a later delete */
        if (s.frag != FRAG_LATER && s.l4 + 4 <= len) {
            memset(&st->last, 0, sizeof st->last);
            memcpy(st->last.src, in + (s.family == 4 ? 12 : 8), s.family == 4 ? 4 : 16);
            memcpy(st->last.dst, in + (s.family == 4 ? 16 : 24), s.family == 4 ? 4 : 16);
            st->last.sport = (uint16_t)get16(in + s.l4);
            st->last.dport = (uint16_t)get16(in + s.l4 + 2);
            st->last.family = (uint8_t)s.family;
            st->last.proto = (uint8_t)s.proto;
        }
    }
    /* every packet handed over is either counted as passed or as one named drop */
    uint64_t counted = passed(e);
    for (int r = 0; r < HP_R_COUNT; r++)
        counted += e->drops[r];
    CHECK(counted == st->translated);
    free(in);
    free(buf);
}

static void op_collect(fuzz_state *st)
{
    take_events(st);
    uint32_t cursor = 0, rounds = 0, k;
    do {
        k = hp_engine_flow_collect(st->e, st->ev, 16, &cursor, st->now);
        CHECK(k <= 16);
        for (uint32_t i = 0; i < k; i++) {
            CHECK(st->ev[i].type == HP_EV_FLOW);
            CHECK(st->ev[i].dpackets[0] + st->ev[i].dpackets[1] > 0);
        }
        CHECK(++rounds <= CAPACITY + 2);
    } while (cursor != 0);
    /* right after a full walk nothing is left to collect */
    CHECK(hp_engine_flow_collect(st->e, st->ev, 64, &cursor, st->now) == 0);
}

static void op_delete(fuzz_state *st, uint8_t arg)
{
    hp_engine *e = st->e;
    if (arg & 1) {
        uint32_t before = e->n_entries;
        CHECK(hp_engine_flush(e, st->now) == before);
        CHECK(e->n_entries == 0);
        return;
    }
    unsigned i = arg >> 1;
    const hp_tuple *t = i < N_REMEMBER && i < st->n_remembered ? &st->remembered[i] : &st->last;
    uint32_t before = e->n_entries;
    int r = hp_engine_delete(e, t, st->now);
    CHECK(r == 0 ? e->n_entries == before - 1 : (r == -1 && e->n_entries == before));
}

/* One engine as every input starts with (and a restart restores into). */
static hp_engine *new_engine(void)
{
    hp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.capacity = CAPACITY;
    cfg.port_min = PORT_MIN;
    cfg.port_max = PORT_MAX;
    cfg.reuse_delay = 2.0;
    cfg.seed = 7;
    static const double timeouts[HP_N_CLASSES] = {0, 120, 60, 350, 120, 60, 30, 120, 10, 30, 350};
    memcpy(cfg.timeouts, timeouts, sizeof timeouts);
    hp_engine *e = hp_engine_new(&cfg);
    CHECK(e);
    for (int i = 0; i < 2; i++)
        CHECK(hp_engine_add_eni(e, ENI4[i], ENI6[i]) == 0);
    CHECK(hp_engine_events(e, 16) == 0);
    /* allow every TCP and IPv6 connection, IPv4 UDP only to ports 1-60000 */
    hp_sg_rule rules[3];
    memset(rules, 0, sizeof rules);
    rules[0] = (hp_sg_rule){.plen = 0, .family = 4, .proto = HP_IPPROTO_TCP, .port_max = 65535};
    rules[1] = (hp_sg_rule){.plen = 0, .family = 4, .proto = HP_IPPROTO_UDP, .port_min = 1,
                            .port_max = 60000};
    rules[2] = (hp_sg_rule){.plen = 0, .family = 6, .proto = HP_SG_PROTO_ALL};
    CHECK(hp_engine_set_sg(e, rules, 3, 1) == 0);
    return e;
}

/* A restart: the events drained (their NEW tuples remembered), the engine snapshotted and
 * restored into a fresh one, which takes over with its own counters. */
static void op_restart(fuzz_state *st)
{
    take_events(st);
    hp_engine *f = roundtrip(st->e);
    hp_engine_free(st->e);
    st->e = f;
    st->translated = 0;
    st->restarted = 1;
    st->n_frags = 0; /* the fragment trackers are not in a snapshot */
    st->frags_lost = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_state st;
    memset(&st, 0, sizeof st);
    st.now = 1.0;
    st.e = new_engine();

    const uint8_t *p = data, *end = data + size;
    while (p < end) {
        uint8_t op = *p++ % 8;
        if (op <= 3) {
            op_translate(&st, &p, end);
        } else {
            uint8_t arg = p < end ? *p++ : 0;
            if (op == 4)
                st.now = hp_engine_advance(st.e, st.now + arg);
            else if (op == 5)
                op_collect(&st);
            else if (op == 6)
                op_delete(&st, arg);
            else if (arg & 4)
                op_restart(&st);
            else
                CHECK(hp_engine_set_eni_enabled(st.e, arg & 1, (arg >> 1) & 1) == 0);
        }
        check_table(st.e);
        check_windows(st.e, st.restarted);
        check_timers(st.e);
        if (st.e->ev_tail - st.e->ev_head > st.e->ev_mask / 2)
            take_events(&st);
    }
    take_events(&st);
    hp_engine_free(roundtrip(st.e));
    hp_engine_free(st.e);
    return 0;
}
