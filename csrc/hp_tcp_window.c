/* hp_tcp_window.c - TCP sequence-window tracking: is a segment part of its connection's byte
 * stream?
 *
 * hyperplane/engine/reference/window.py is the spec, with the why, the kernel and RFC anchors
 * for every rule; this file takes the same steps in the same order (the differential tests run
 * both). In short: per direction the highest end sent, the right edge the other side allowed,
 * the largest window and the highest ACK; the kernel's four checks (tcp_in_window); a segment
 * that fails them by little PASSes without changing anything, one further off is OUT
 * (tcp_out_of_window), an RST must be in the window and exact to close.
 */
#include "hp_tcp_window.h"

#include "hp_engine_internal.h"

#define WIN_OVERRUN 4          /* window() only: PASS, and the sender's end moves */
#define WIN_RELEARN 5          /* window() only: a restored side re-learns, then ACCEPT */

typedef struct {
    uint32_t seq, ack, sack, win, end;
    uint8_t flags, partial;
    int8_t wscale; /* -1: no window-scale option */
    uint8_t sack_perm;
} seg_t;

/* window.py read_segment. The options are walked only where they matter: a SYN's (window
 * scale, SACK-permitted), or SACK blocks when the receiver allowed SACK (want_sack); so a
 * data segment of a connection without SACK costs no walk (the kernel too reads SACK blocks
 * only then). */
static inline void read_segment(const uint8_t *b, const hp_parsed *p, seg_t *g, int want_sack)
{
    const uint8_t *t = b + p->l4;
    uint32_t doff = (uint32_t)(t[12] >> 4) * 4;
    g->seq = hp_get32(t + 4);
    g->ack = hp_get32(t + 8);
    g->flags = p->tcp_flags;
    g->win = hp_get16(t + 14);
    g->end = g->seq + (p->l3_len - p->l4 - doff) + !!(g->flags & HP_TH_SYN) +
             !!(g->flags & HP_TH_FIN);
    g->partial = p->frag == HP_FRAG_FIRST;
    g->wscale = -1;
    g->sack_perm = 0;
    g->sack = g->ack;
    if (doff > 20 && (want_sack || (g->flags & HP_TH_SYN)))
        hp_tcp_options(t, doff, g->flags & HP_TH_SYN, &g->wscale, &g->sack_perm,
                       want_sack ? &g->sack : NULL);
}

/* window.py init_side (the kernel's tcp_init_sender) */
static void init_side(hp_tcp_win *s, hp_tcp_win *r, const seg_t *g, int negotiate)
{
    s->end = s->maxend = g->end;
    s->maxwin = g->win ? g->win : 1; /* a SYN's window is never scaled (RFC 7323 2.2) */
    s->maxack = 0;
    s->flags = (uint8_t)((g->wscale >= 0 ? HP_TCPF_WSCALE : 0) |
                         (g->sack_perm ? HP_TCPF_SACK_PERM : 0));
    s->scale = (uint8_t)(g->wscale >= 0 ? g->wscale : 0);
    if (negotiate && !((s->flags & HP_TCPF_WSCALE) && (r->flags & HP_TCPF_WSCALE)))
        s->scale = r->scale = 0;
}

/* window.py _relearn: a restored side whose first segment missed the window */
static void relearn(hp_tcp_win *s, hp_tcp_win *r, const seg_t *g, uint32_t sack)
{
    s->end = g->end;
    uint32_t swin = g->win << s->scale;
    s->maxwin = swin ? swin : 1;
    s->maxend = g->end + s->maxwin;
    if ((r->flags & HP_TCPF_RESYNC) || hp_seq_after(sack, r->end)) {
        r->end = sack;
        if (hp_seq_before(r->maxend, sack))
            r->maxend = sack;
    }
}

/* window.py _update, with the segment's own numbers (hp_tcp_update in hp_tcp_window.h) */
static void update(hp_tcp_win *s, hp_tcp_win *r, const seg_t *g, uint32_t ack, uint32_t sack)
{
    uint32_t win = (g->flags & HP_TH_SYN) ? g->win : g->win << s->scale;
    uint32_t end = g->end;
    if (g->partial && hp_seq_after(s->maxend, end))
        end = s->maxend; /* the rest of the segment is in later fragments */
    hp_tcp_update(s, r, win, end, ack, sack, g->flags & HP_TH_ACK);
    s->flags &= (uint8_t)~HP_TCPF_RESYNC;
}

/* window.py _window, without the updates: ACCEPT, PASS, WIN_OVERRUN, WIN_RELEARN or OUT for
 * a segment from s to r; *ack and *sack get the numbers the update uses. Changes nothing: the
 * caller updates (update, or relearn and update) once it has decided. */
static inline int window(const hp_tcp_win *s, const hp_tcp_win *r, const seg_t *g, int state,
                         uint32_t *ack_out, uint32_t *sack_out)
{
    uint32_t seq = g->seq, ack = g->ack, sack = g->sack, end = g->end;
    int rst = g->flags & HP_TH_RST;
    if (!(g->flags & HP_TH_ACK) || (rst && ack == 0))
        ack = sack = r->end;
    if (rst && seq == 0 && state == HP_S_SYN_SENT)
        seq = end = s->end;
    *ack_out = ack;
    *sack_out = sack;
    uint32_t maw = hp_maxackwin(s);
    int upper = hp_seq_before(seq, s->maxend + 1);                             /* I */
    int ack_hi = hp_seq_before(sack, r->end + 1);                              /* III */
    int lower = !r->maxwin || hp_seq_after(end, s->end - r->maxwin - 1);       /* II */
    int ack_lo = hp_seq_after(sack, r->end - maw - 1);                         /* IV */
    if (rst && (r->flags & HP_TCPF_MAXACK_SET) && hp_seq_before(seq, r->maxack))
        return HP_WIN_OUT;
    if (upper && ack_hi && lower && ack_lo)
        return HP_WIN_ACCEPT;
    if ((s->flags & HP_TCPF_RESYNC) && !(g->flags & (HP_TH_SYN | HP_TH_RST)))
        return WIN_RELEARN;
    if (rst || !ack_hi)
        return HP_WIN_OUT;
    if (!upper) {
        uint32_t overshoot = end - s->maxend;
        if (lower && ack_lo && r->maxwin && overshoot <= r->maxwin)
            return WIN_OVERRUN;
        return HP_WIN_OUT;
    }
    if (!lower && !hp_seq_after(end, s->end - r->maxwin - maw - 1))
        return HP_WIN_OUT;
    if (!ack_lo && !hp_seq_after(sack, r->end - 2 * maw - 1))
        return HP_WIN_OUT;
    return HP_WIN_PASS;
}

/* window.py _rst_closes (windows before the RST) */
static int rst_closes(const hp_tcp_win *s, const hp_tcp_win *r, const seg_t *g, int state)
{
    if (state < HP_S_ESTABLISHED || !(r->flags & HP_TCPF_MAXACK_SET))
        return 1;
    return g->seq == r->maxack || g->seq == s->end;
}

void hp_tcp_win_open(hp_tcp_win w[2], const uint8_t *b, const hp_parsed *p)
{
    seg_t g;
    read_segment(b, p, &g, 0);
    memset(w, 0, 2 * sizeof *w);
    init_side(&w[0], &w[1], &g, 0);
}

/* The end of track for a segment the window has judged (v) with s and r as they will be
 * kept if it is accepted: the grid's INV, PASS, an overrun's end, RST exactness, and the
 * update. w_s and w_r are the connection's sides (s and r may be copies of them, or them). */
static inline int judged(hp_tcp_win *w_s, hp_tcp_win *w_r, hp_tcp_win *s, hp_tcp_win *r,
                         const seg_t *g, int v, int state, int nxt, uint32_t ack,
                         uint32_t sack)
{
    if (v == HP_WIN_OUT)
        return HP_WIN_OUT;
    if (nxt == HP_TCP_INV)
        return HP_WIN_INVALID;
    if (v == WIN_OVERRUN) {
        if (hp_seq_after(g->end, w_s->end))
            w_s->end = g->end;
        return HP_WIN_PASS;
    }
    if (v == HP_WIN_PASS)
        return HP_WIN_PASS;
    if ((g->flags & HP_TH_RST) && !rst_closes(w_s, w_r, g, state))
        return HP_WIN_PASS;
    if (v == WIN_RELEARN)
        relearn(s, r, g, sack);
    update(s, r, g, ack, sack);
    if (s != w_s) {
        *w_s = *s;
        *w_r = *r;
    }
    return HP_WIN_ACCEPT;
}

/* window.py track */
int hp_tcp_track(hp_tcp_win w[2], int d, int state, int nxt, const uint8_t *b,
                 const hp_parsed *p)
{
    hp_tcp_win *ws = &w[d], *wr = &w[!d];
    uint8_t fl = p->tcp_flags;
    uint32_t ack, sack;
    seg_t g;
    read_segment(b, p, &g, wr->flags & HP_TCPF_SACK_PERM);
    /* The common case (no SYN, the sender's window known): judged on the connection's own
     * sides, updated in place. */
    if (!(fl & HP_TH_SYN) && ws->maxwin) {
        int v = window(ws, wr, &g, state, &ack, &sack);
        return judged(ws, wr, ws, wr, &g, v, state, nxt, ack, sack);
    }
    int syn = (fl & HP_TH_SYN) && !(fl & (HP_TH_RST | HP_TH_FIN));
    if (d == HP_DIR_ORIG && syn && !(fl & HP_TH_ACK)) {
        if (nxt == HP_S_SYN_SENT && state != HP_S_SYN_SENT) {
            memset(w, 0, 2 * sizeof *w);
            init_side(&w[0], &w[1], &g, 0);
            return HP_WIN_ACCEPT;
        }
        if (nxt == HP_TCP_IGN)
            return HP_WIN_PASS;
        if (state == HP_S_SYN_SENT && hp_seq_after(g.end, w[0].end)) {
            init_side(&w[0], &w[1], &g, 0);
            return HP_WIN_ACCEPT;
        }
    }
    hp_tcp_win s = *ws, r = *wr;
    if (syn && d == HP_DIR_REPLY &&
        (s.maxwin == 0 ||
         ((state == HP_S_SYN_SENT || state == HP_S_SYN_RECV) && hp_seq_after(g.end, s.end)))) {
        init_side(&s, &r, &g, 1);
        if (!(fl & HP_TH_ACK)) {
            if (nxt == HP_TCP_INV)
                return HP_WIN_INVALID;
            *ws = s;
            *wr = r;
            return HP_WIN_ACCEPT;
        }
    } else if (s.maxwin == 0 && !(s.flags & HP_TCPF_RESYNC)) {
        if ((fl & HP_TH_ACK) && g.ack == r.end)
            return nxt == HP_TCP_INV ? HP_WIN_INVALID
                                     : (fl & HP_TH_RST) ? HP_WIN_ACCEPT : HP_WIN_PASS;
        return HP_WIN_OUT;
    }
    int v = window(&s, &r, &g, state, &ack, &sack);
    return judged(ws, wr, &s, &r, &g, v, state, nxt, ack, sack);
}
