/* fuzz_window.h - fuzz_translate's checks of the connection table around one packet, of the
 * TCP sequence windows (csrc/hp_tcp_window.c, hyperplane/engine/reference/window.py), and of
 * snapshot -> restore. Included by fuzz_translate.c after its independent packet reader
 * (shape, read_shape, get16), which these checks use to find the packet's connection.
 *
 *   table_save / check_untouched   a dropped packet leaves the whole table byte-identical
 *                                  (tcp_out_of_window and tcp_invalid above all: "nothing
 *                                  about the connection changes", not even its counters)
 *   check_passed                   a passed packet changes one connection only: its own
 *                                  (found by the packet's tuple), counters up by exactly the
 *                                  packet; a TCP segment the window PASSed (its timer kept
 *                                  while time moved on) changes no state and no window but an
 *                                  overrun's end; a new TCP connection's window is its SYN's
 *   check_windows                  what holds for every entry at any time
 *   roundtrip                      snapshot -> restore into a fresh engine gives back the same
 *                                  records (windows marked RESYNC), every one restored
 */
#ifndef FUZZ_WINDOW_H
#define FUZZ_WINDOW_H

#define MAX_BUCKETS 256

/* The table as it was before a packet (hp_translate does not expire: advance ran first). */
typedef struct {
    hp_entry entries[CAPACITY + 1];
    uint32_t buckets[MAX_BUCKETS];
    uint32_t n_entries, hw, free_head;
    uint32_t lru_head[HP_N_CLASSES], lru_tail[HP_N_CLASSES];
} table_copy;

static void table_save(const hp_engine *e, table_copy *c)
{
    CHECK(e->mask < MAX_BUCKETS && e->cfg.capacity == CAPACITY);
    memcpy(c->entries, e->entries, sizeof c->entries);
    memcpy(c->buckets, e->buckets, (e->mask + 1) * sizeof *e->buckets);
    c->n_entries = e->n_entries;
    c->hw = e->hw;
    c->free_head = e->free_head;
    memcpy(c->lru_head, e->lru_head, sizeof c->lru_head);
    memcpy(c->lru_tail, e->lru_tail, sizeof c->lru_tail);
}

/* Nothing in the table moved: entries (windows, counters, timers, links), chains, lists. */
static void check_untouched(const hp_engine *e, const table_copy *c)
{
    CHECK(memcmp(c->entries, e->entries, sizeof c->entries) == 0);
    CHECK(memcmp(c->buckets, e->buckets, (e->mask + 1) * sizeof *e->buckets) == 0);
    CHECK(c->n_entries == e->n_entries && c->hw == e->hw && c->free_head == e->free_head);
    CHECK(memcmp(c->lru_head, e->lru_head, sizeof c->lru_head) == 0);
    CHECK(memcmp(c->lru_tail, e->lru_tail, sizeof c->lru_tail) == 0);
}

/* Two entries alike but for their links (hash chain, LRU neighbours), which move when another
 * entry is inserted or moved to the back of its list. */
static int same_but_links(const hp_entry *a, const hp_entry *b)
{
    hp_entry x = *a, y = *b;
    memset(x.hnext, 0, sizeof x.hnext);
    memset(y.hnext, 0, sizeof y.hnext);
    x.lru_prev = x.lru_next = y.lru_prev = y.lru_next = 0;
    return memcmp(&x, &y, sizeof x) == 0;
}

static uint32_t get32(const uint8_t *p) { return get16(p) << 16 | get16(p + 2); }

static int seq_after(uint32_t a, uint32_t b) { return (int32_t)(b - a) < 0; }

/* The packet's tuple as it came (not hp_parse's reading), for one that is not a later
 * fragment and has its ports. */
static void packet_tuple(const uint8_t *in, const shape *s, hp_tuple *t)
{
    int v4 = s->family == 4;
    memset(t, 0, sizeof *t);
    memcpy(t->src, in + (v4 ? 12 : 8), v4 ? 4 : 16);
    memcpy(t->dst, in + (v4 ? 16 : 24), v4 ? 4 : 16);
    t->sport = (uint16_t)get16(in + s->l4);
    t->dport = (uint16_t)get16(in + s->l4 + 2);
    t->family = (uint8_t)s->family;
    t->proto = (uint8_t)s->proto;
}

/* SEG.SEQ + SEG.LEN of a TCP segment (a SYN and a FIN count one each; RFC 9293 3.4); for a
 * first fragment the length is the fragment's, as in hp_tcp_window.c. */
static uint32_t seg_end(const uint8_t *in, const shape *s)
{
    const uint8_t *t = in + s->l4;
    uint32_t doff = (uint32_t)(t[12] >> 4) * 4;
    return get32(t + 4) + (s->end - s->l4 - doff) + !!(t[13] & 0x02) + !!(t[13] & 0x01);
}

/* A tcp_out_of_window or tcp_invalid drop is of a tracked TCP connection, in its direction
 * (the table itself is checked untouched for every drop). */
static void check_window_drop(const hp_engine *e, const uint8_t *in, uint32_t len, int dir)
{
    shape s;
    CHECK(read_shape(in, len, &s) == 0);
    CHECK(s.proto == HP_IPPROTO_TCP && s.frag != FRAG_LATER);
    hp_tuple t;
    packet_tuple(in, &s, &t);
    int found = 0;
    for (uint32_t i = 1; i <= e->hw; i++)
        found += e->entries[i].state != HP_S_NONE &&
                 memcmp(&e->entries[i].tuple[dir], &t, sizeof t) == 0;
    CHECK(found == 1);
}

static void check_new_tcp(const hp_entry *x, const uint8_t *in, const shape *s)
{
    static const hp_tcp_win zero;
    uint32_t end = seg_end(in, s), wnd = get16(in + s->l4 + 14);
    CHECK(x->state == HP_S_SYN_SENT);
    CHECK(x->win[0].end == end && x->win[0].maxend == end);
    CHECK(x->win[0].maxwin == (wnd ? wnd : 1) && x->win[0].maxack == 0);
    CHECK(!(x->win[0].flags & (HP_TCPF_MAXACK_SET | HP_TCPF_RESYNC)));
    CHECK(memcmp(&x->win[1], &zero, sizeof zero) == 0);
}

/* A passed packet (verdict v, at time now) against the table before it. */
static void check_passed(const hp_engine *e, const table_copy *c, const uint8_t *in,
                         uint32_t len, int dir, int v, double now)
{
    shape s;
    CHECK(read_shape(in, len, &s) == 0);
    if (s.proto == 1 || s.proto == 58) { /* an ICMP error is not its connection's traffic */
        check_untouched(e, c);
        return;
    }
    uint32_t at = 0, changed = 0;
    for (uint32_t i = 1; i <= CAPACITY; i++)
        if (!same_but_links(&c->entries[i], &e->entries[i])) {
            at = i;
            changed++;
        }
    CHECK(changed == 1);
    const hp_entry *b = &c->entries[at], *x = &e->entries[at];
    CHECK(x->state != HP_S_NONE);
    CHECK(x->last_seen == now || x->last_seen == b->last_seen);
    if (v == HP_NEW && b->state == HP_S_NONE) { /* a new connection in a free slot */
        CHECK(x->packets[dir] == 1 && x->bytes[dir] == s.end);
        CHECK(x->packets[!dir] == 0 && x->bytes[!dir] == 0 && x->id == e->last_id);
        CHECK(x->last_seen == now);
    } else { /* an existing one (or its tuple reopened by a SYN): only its own counters */
        CHECK(b->state != HP_S_NONE && b->id == x->id && b->eni_port == x->eni_port);
        CHECK(memcmp(b->tuple, x->tuple, sizeof b->tuple) == 0);
        CHECK(x->packets[dir] == b->packets[dir] + 1 && x->bytes[dir] == b->bytes[dir] + s.end);
        CHECK(x->packets[!dir] == b->packets[!dir] && x->bytes[!dir] == b->bytes[!dir]);
        CHECK(memcmp(x->rep_bytes, b->rep_bytes, sizeof b->rep_bytes) == 0);
        CHECK(memcmp(x->rep_packets, b->rep_packets, sizeof b->rep_packets) == 0);
    }
    int v4 = s.family == 4;
    if (s.frag == FRAG_LATER) { /* the datagram's connection: no state, no window, no ports */
        CHECK(v != HP_NEW && x->last_seen == now && x->state == b->state);
        CHECK(memcmp(x->win, b->win, sizeof b->win) == 0);
        CHECK(memcmp(x->tuple[dir].src, in + (v4 ? 12 : 8), v4 ? 4 : 16) == 0);
        CHECK(memcmp(x->tuple[dir].dst, in + (v4 ? 16 : 24), v4 ? 4 : 16) == 0);
        return;
    }
    hp_tuple t;
    packet_tuple(in, &s, &t);
    CHECK(memcmp(&x->tuple[dir], &t, sizeof t) == 0); /* the packet's own connection */
    if (s.proto == HP_IPPROTO_UDP) {
        CHECK(v != HP_NEW || x->state == HP_S_UDP_UNREPLIED);
        CHECK(x->last_seen == now);
        CHECK(x->state == (dir == HP_DIR_REPLY ? HP_S_UDP_REPLIED
                                               : b->state == HP_S_NONE ? x->state : b->state));
        return;
    }
    if (v == HP_NEW) { /* a SYN opened it (or reopened a TIME_WAIT/CLOSE tuple) */
        CHECK(x->last_seen == now);
        check_new_tcp(x, in, &s);
        return;
    }
    if (x->last_seen == b->last_seen && now != b->last_seen) {
        /* the window PASSed it: no state, no timer, no window moved (the LRU list kept its
         * order), but for an overrun past the right edge, whose end is recorded */
        CHECK(x->state == b->state && x->lru_prev == b->lru_prev && x->lru_next == b->lru_next);
        CHECK(memcmp(&x->win[!dir], &b->win[!dir], sizeof b->win[0]) == 0);
        hp_tcp_win w = x->win[dir];
        if (w.end != b->win[dir].end) {
            CHECK(w.end == seg_end(in, &s) && seq_after(w.end, b->win[dir].end));
            w.end = b->win[dir].end;
        }
        CHECK(memcmp(&w, &b->win[dir], sizeof w) == 0);
    }
}

/* What holds for every entry: a TCP state with both windows well-formed (known flags, scale
 * at most 14 and only with the option, pad zero, maxack only once an ACK was sent, the
 * opener's side set by its SYN); UDP without windows. restarted: the engine came from a
 * restore (RESYNC marks, and a relearned side may have moved the other's end). */
static void check_windows(const hp_engine *e, int restarted)
{
    static const hp_tcp_win zero;
    for (uint32_t i = 1; i <= e->hw; i++) {
        const hp_entry *x = &e->entries[i];
        if (x->state == HP_S_NONE)
            continue;
        if (x->tuple[0].proto != HP_IPPROTO_TCP) {
            CHECK(x->state == HP_S_UDP_UNREPLIED || x->state == HP_S_UDP_REPLIED);
            CHECK(memcmp(x->win, &zero, sizeof zero) == 0 &&
                  memcmp(&x->win[1], &zero, sizeof zero) == 0);
            continue;
        }
        CHECK(x->state >= HP_S_SYN_SENT && x->state <= HP_S_CLOSE);
        for (int d = 0; d < 2; d++) {
            const hp_tcp_win *w = &x->win[d];
            CHECK(w->pad[0] == 0 && w->pad[1] == 0);
            CHECK(w->scale <= 14 && !(w->flags & ~HP_TCPF_ALL));
            CHECK(w->scale == 0 || (w->flags & HP_TCPF_WSCALE));
            CHECK((w->flags & HP_TCPF_MAXACK_SET) || w->maxack == 0);
            CHECK(!(w->flags & HP_TCPF_RESYNC) || (restarted && w->maxwin != 0));
        }
        CHECK(x->win[0].maxwin != 0);
        CHECK(x->win[0].maxwin <= HP_TCP_MAX_WINDOW && x->win[1].maxwin <= HP_TCP_MAX_WINDOW);
        if (!restarted && x->win[1].maxwin == 0) /* the other side has sent nothing tracked */
            CHECK(x->win[1].end == 0 && x->win[1].maxack == 0 && x->win[1].flags == 0 &&
                  x->win[1].scale == 0);
    }
}

/* Every class's list oldest first (expiry looks only at heads), and none overdue. */
static void check_timers(const hp_engine *e)
{
    for (int cls = 1; cls < HP_N_CLASSES; cls++) {
        double prev = -1e300;
        for (uint32_t i = e->lru_head[cls]; i; i = e->entries[i].lru_next) {
            const hp_entry *x = &e->entries[i];
            CHECK(x->last_seen >= prev && x->last_seen <= e->last_now);
            CHECK(x->last_seen + e->cfg.timeouts[cls] > e->last_now);
            prev = x->last_seen;
        }
    }
}

static hp_engine *new_engine(void);
static void check_table(const hp_engine *e);

/* A record says what its entry holds (resync: each side with a window marked RESYNC). */
static void check_record(const hp_saved *s, const hp_entry *x, int resync)
{
    CHECK(memcmp(&s->orig, &x->tuple[HP_DIR_ORIG], sizeof s->orig) == 0);
    CHECK(memcmp(&s->reply, &x->tuple[HP_DIR_REPLY], sizeof s->reply) == 0);
    CHECK(s->last_seen == x->last_seen && s->id == x->id && s->state == x->state);
    CHECK(s->eni_port == x->eni_port && s->eni_index == x->eni_index);
    CHECK(memcmp(s->packets, x->packets, sizeof s->packets) == 0);
    CHECK(memcmp(s->bytes, x->bytes, sizeof s->bytes) == 0);
    CHECK(memcmp(s->rep_bytes, x->rep_bytes, sizeof s->rep_bytes) == 0);
    CHECK(memcmp(s->rep_packets, x->rep_packets, sizeof s->rep_packets) == 0);
    for (int d = 0; d < 2; d++) {
        hp_tcp_win w = s->win[d];
        if (resync && w.maxwin)
            w.flags |= HP_TCPF_RESYNC;
        CHECK(memcmp(&w, &x->win[d], sizeof w) == 0);
    }
}

/* Snapshot e, restore every record into a fresh engine at e's time: all come back, a second
 * restore of each is a duplicate, and the fresh engine's snapshot is the same records with each
 * side that had a window marked RESYNC. Returns the fresh engine (the caller frees it or goes
 * on with it: a restart). */
static hp_engine *roundtrip(const hp_engine *e)
{
    static hp_saved a[CAPACITY], b[CAPACITY];
    uint32_t n = hp_engine_snapshot(e, a, CAPACITY);
    CHECK(n == e->n_entries);
    uint32_t k = 0; /* the records are the entries, class by class, each list oldest first */
    for (int cls = 1; cls < HP_N_CLASSES; cls++)
        for (uint32_t i = e->lru_head[cls]; i; i = e->entries[i].lru_next) {
            CHECK(k < n);
            check_record(&a[k++], &e->entries[i], 0);
        }
    CHECK(k == n);
    hp_engine *f = new_engine();
    for (unsigned i = 0; i < e->n_enis; i++)
        CHECK(hp_engine_set_eni_enabled(f, i, !e->enis[i].disabled) == 0);
    for (uint32_t i = 0; i < n; i++)
        CHECK(hp_engine_restore(f, &a[i], e->last_now, 0.0) == HP_RESTORED);
    for (uint32_t i = 0; i < n; i++)
        CHECK(hp_engine_restore(f, &a[i], e->last_now, 0.0) == HP_RS_DUPLICATE);
    CHECK(f->n_entries == n && f->restored == n && f->last_id <= e->last_id);
    CHECK(hp_engine_advance(f, e->last_now) == e->last_now && f->n_entries == n);
    for (uint32_t i = 1; i <= f->hw; i++) { /* each restored entry is its original's */
        const hp_entry *y = &f->entries[i];
        uint32_t j = 1;
        while (j <= e->hw && (e->entries[j].state == HP_S_NONE ||
                              memcmp(e->entries[j].tuple, y->tuple, sizeof y->tuple) != 0))
            j++;
        CHECK(y->state != HP_S_NONE && j <= e->hw);
        const hp_entry *x = &e->entries[j];
        hp_saved r;
        memset(&r, 0, sizeof r);
        r.orig = x->tuple[HP_DIR_ORIG];
        r.reply = x->tuple[HP_DIR_REPLY];
        r.last_seen = x->last_seen;
        memcpy(r.packets, x->packets, sizeof r.packets);
        memcpy(r.bytes, x->bytes, sizeof r.bytes);
        memcpy(r.rep_bytes, x->rep_bytes, sizeof r.rep_bytes);
        memcpy(r.rep_packets, x->rep_packets, sizeof r.rep_packets);
        r.id = x->id;
        r.eni_port = x->eni_port;
        r.eni_index = x->eni_index;
        r.state = x->state;
        memcpy(r.win, x->win, sizeof r.win);
        check_record(&r, y, 1);
    }
    CHECK(hp_engine_snapshot(f, b, CAPACITY) == n);
    for (uint32_t i = 0; i < n; i++) {
        for (int d = 0; d < 2; d++)
            if (a[i].win[d].maxwin)
                a[i].win[d].flags |= HP_TCPF_RESYNC;
        CHECK(memcmp(&a[i], &b[i], sizeof a[i]) == 0);
    }
    check_table(f);
    check_windows(f, 1);
    check_timers(f);
    return f;
}

#endif
