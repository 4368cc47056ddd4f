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
#include "hp_engine_internal.h"

#include "hp_csum.h"
#include "hp_tcp.h"

#define MAXACKWIN_CONST 66000u /* the kernel's MAXACKWINCONST */
#define MAX_WSCALE 14          /* RFC 7323 2.3 */
#define WIN_OVERRUN 4          /* hp_window only: PASS, and the sender's end moves */
#define MAX_WINDOW HP_TCP_MAX_WINDOW /* maxwin's ceiling (window.py MAX_WINDOW) */

static inline uint32_t cap_add(uint32_t a, uint32_t b) /* min(a + b, MAX_WINDOW), no wrap */
{
    uint64_t x = (uint64_t)a + b;
    return x > MAX_WINDOW ? MAX_WINDOW : (uint32_t)x;
}

/* sequence space is modulo 2^32 (RFC 9293 3.4) */
static inline int before(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int after(uint32_t a, uint32_t b) { return before(b, a); }

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

typedef struct {
    uint32_t seq, ack, sack, win, end;
    uint8_t flags, partial;
    int8_t wscale; /* -1: no window-scale option */
    uint8_t sack_perm;
} seg_t;

/* window.py read_segment */
static void read_segment(const uint8_t *b, const hp_parsed *p, seg_t *g)
{
    const uint8_t *t = b + p->l4;
    uint32_t doff = (uint32_t)(t[12] >> 4) * 4;
    g->seq = get32(t + 4);
    g->ack = get32(t + 8);
    g->flags = t[13];
    g->win = hp_get16(t + 14);
    g->end = g->seq + (p->l3_len - p->l4 - doff) + !!(g->flags & HP_TH_SYN) +
             !!(g->flags & HP_TH_FIN);
    g->partial = p->frag == HP_FRAG_FIRST;
    g->wscale = -1;
    g->sack_perm = 0;
    g->sack = g->ack;
    uint32_t i = 20;
    while (i < doff) { /* options (RFC 9293 3.1): kind, length, value */
        uint8_t kind = t[i];
        if (kind == 0)
            break;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= doff)
            break;
        uint32_t olen = t[i + 1];
        if (olen < 2 || i + olen > doff)
            break; /* a malformed option ends the walk */
        if (kind == 3 && olen == 3 && (g->flags & HP_TH_SYN))
            g->wscale = (int8_t)(t[i + 2] < MAX_WSCALE ? t[i + 2] : MAX_WSCALE);
        else if (kind == 4 && olen == 2 && (g->flags & HP_TH_SYN))
            g->sack_perm = 1;
        else if (kind == 5 && olen >= 10 && (olen - 2) % 8 == 0)
            for (uint32_t k = i + 2; k < i + olen; k += 8) {
                uint32_t right = get32(t + k + 4);
                if (after(right, g->sack))
                    g->sack = right;
            }
        i += olen;
    }
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

static inline uint32_t maxackwin(const hp_tcp_win *s)
{
    return s->maxwin > MAXACKWIN_CONST ? s->maxwin : MAXACKWIN_CONST;
}

/* window.py _relearn: a restored side whose first segment missed the window */
static void relearn(hp_tcp_win *s, hp_tcp_win *r, const seg_t *g, uint32_t sack)
{
    s->end = g->end;
    uint32_t swin = g->win << s->scale;
    s->maxwin = swin ? swin : 1;
    s->maxend = g->end + s->maxwin;
    if ((r->flags & HP_TCPF_RESYNC) || after(sack, r->end)) {
        r->end = sack;
        if (before(r->maxend, sack))
            r->maxend = sack;
    }
}

/* window.py _update (tcp_in_window's update, step for step) */
static void update(hp_tcp_win *s, hp_tcp_win *r, const seg_t *g, uint32_t ack, uint32_t sack)
{
    uint32_t win = (g->flags & HP_TH_SYN) ? g->win : g->win << s->scale;
    uint32_t end = g->end;
    if (g->partial && after(s->maxend, end))
        end = s->maxend; /* the rest of the segment is in later fragments */
    uint32_t swin = cap_add(win, sack - ack);
    if (s->maxwin < swin)
        s->maxwin = swin;
    if (after(end, s->end))
        s->end = end;
    if (g->flags & HP_TH_ACK) {
        if (!(s->flags & HP_TCPF_MAXACK_SET)) {
            s->maxack = ack;
            s->flags |= HP_TCPF_MAXACK_SET;
        } else if (after(ack, s->maxack)) {
            s->maxack = ack;
        }
    }
    if (r->maxwin && after(end, s->maxend))
        r->maxwin = cap_add(r->maxwin, end - s->maxend);
    if (after(sack + win, r->maxend - 1)) {
        r->maxend = sack + win;
        if (win == 0)
            r->maxend++;
    }
    s->flags &= (uint8_t)~HP_TCPF_RESYNC;
}

/* window.py _window: ACCEPT, PASS, WIN_OVERRUN or OUT; s and r are the caller's copies */
static int window(hp_tcp_win *s, hp_tcp_win *r, const seg_t *g, int state)
{
    uint32_t seq = g->seq, ack = g->ack, sack = g->sack, end = g->end;
    int rst = g->flags & HP_TH_RST;
    if (!(g->flags & HP_TH_ACK) || (rst && ack == 0))
        ack = sack = r->end;
    if (rst && seq == 0 && state == HP_S_SYN_SENT)
        seq = end = s->end;
    uint32_t maw = maxackwin(s);
    int upper = before(seq, s->maxend + 1);                             /* I */
    int ack_hi = before(sack, r->end + 1);                              /* III */
    int lower = !r->maxwin || after(end, s->end - r->maxwin - 1);       /* II */
    int ack_lo = after(sack, r->end - maw - 1);                         /* IV */
    if (rst && (r->flags & HP_TCPF_MAXACK_SET) && before(seq, r->maxack))
        return HP_WIN_OUT;
    if (upper && ack_hi && lower && ack_lo) {
        update(s, r, g, ack, sack);
        return HP_WIN_ACCEPT;
    }
    if ((s->flags & HP_TCPF_RESYNC) && !(g->flags & (HP_TH_SYN | HP_TH_RST))) {
        relearn(s, r, g, sack);
        update(s, r, g, ack, sack);
        return HP_WIN_ACCEPT;
    }
    if (rst || !ack_hi)
        return HP_WIN_OUT;
    if (!upper) {
        uint32_t overshoot = end - s->maxend;
        if (lower && ack_lo && r->maxwin && overshoot <= r->maxwin)
            return WIN_OVERRUN;
        return HP_WIN_OUT;
    }
    if (!lower && !after(end, s->end - r->maxwin - maw - 1))
        return HP_WIN_OUT;
    if (!ack_lo && !after(sack, r->end - 2 * maw - 1))
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
    read_segment(b, p, &g);
    memset(w, 0, 2 * sizeof *w);
    init_side(&w[0], &w[1], &g, 0);
}

/* window.py track */
int hp_tcp_track(hp_tcp_win w[2], int d, int state, int nxt, const uint8_t *b,
                 const hp_parsed *p)
{
    seg_t g;
    read_segment(b, p, &g);
    uint8_t fl = g.flags;
    int syn = (fl & HP_TH_SYN) && !(fl & (HP_TH_RST | HP_TH_FIN));
    if (d == HP_DIR_ORIG && syn && !(fl & HP_TH_ACK)) {
        if (nxt == HP_S_SYN_SENT && state != HP_S_SYN_SENT) {
            memset(w, 0, 2 * sizeof *w);
            init_side(&w[0], &w[1], &g, 0);
            return HP_WIN_ACCEPT;
        }
        if (nxt == HP_TCP_IGN)
            return HP_WIN_PASS;
        if (state == HP_S_SYN_SENT && after(g.end, w[0].end)) {
            init_side(&w[0], &w[1], &g, 0);
            return HP_WIN_ACCEPT;
        }
    }
    hp_tcp_win s = w[d], r = w[!d];
    if (syn && d == HP_DIR_REPLY &&
        (s.maxwin == 0 ||
         ((state == HP_S_SYN_SENT || state == HP_S_SYN_RECV) && after(g.end, s.end)))) {
        init_side(&s, &r, &g, 1);
        if (!(fl & HP_TH_ACK)) {
            if (nxt == HP_TCP_INV)
                return HP_WIN_INVALID;
            w[d] = s;
            w[!d] = r;
            return HP_WIN_ACCEPT;
        }
    } else if (s.maxwin == 0 && !(s.flags & HP_TCPF_RESYNC)) {
        if ((fl & HP_TH_ACK) && g.ack == r.end)
            return nxt == HP_TCP_INV ? HP_WIN_INVALID
                                     : (fl & HP_TH_RST) ? HP_WIN_ACCEPT : HP_WIN_PASS;
        return HP_WIN_OUT;
    }
    int v = window(&s, &r, &g, state);
    if (v == HP_WIN_OUT)
        return HP_WIN_OUT;
    if (nxt == HP_TCP_INV)
        return HP_WIN_INVALID;
    if (v == WIN_OVERRUN) {
        if (after(g.end, w[d].end))
            w[d].end = g.end;
        return HP_WIN_PASS;
    }
    if (v == HP_WIN_PASS)
        return HP_WIN_PASS;
    if ((fl & HP_TH_RST) && !rst_closes(&w[d], &w[!d], &g, state))
        return HP_WIN_PASS;
    w[d] = s;
    w[!d] = r;
    return HP_WIN_ACCEPT;
}
