/* hp_tcp_window.h - what hp_tcp_window.c and the translate path share: sequence arithmetic,
 * the update of an accepted segment, and the common case inline.
 *
 * hp_tcp_track (hp_tcp_window.c) decides every case; hp_tcp_track_fast below decides only the
 * common one, a data or ACK segment of an established connection that passes the four checks,
 * and answers HP_WIN_SLOW for anything else, so that hp_translate pays no call and no copy for
 * the packets that make up nearly all traffic. Both run the same checks and the same update
 * (hp_tcp_update below), and the differential tests hold them to the reference engine.
 */
#ifndef HP_TCP_WINDOW_H
#define HP_TCP_WINDOW_H

#include "hp_csum.h"
#include "hp_engine.h"
#include "hp_parse.h"
#include "hp_tcp.h"

#define HP_MAXACKWIN_CONST 66000u /* the kernel's MAXACKWINCONST */

/* What the window says of a segment: HP_WIN_ACCEPT (apply the grid's cell, refresh the timer),
 * HP_WIN_PASS (forward, change nothing), HP_WIN_OUT (drop as tcp_out_of_window),
 * HP_WIN_INVALID (in the window, but the grid's INV: drop as tcp_invalid); HP_WIN_SLOW only
 * from hp_tcp_track_fast. */
enum { HP_WIN_SLOW = -1, HP_WIN_ACCEPT = 0, HP_WIN_PASS = 1, HP_WIN_OUT = 2, HP_WIN_INVALID = 3 };

/* hp_tcp_window.c: the window of a new connection from its SYN; the window's say on a segment
 * of a tracked one (nxt: the grid's cell), changing w only for HP_WIN_ACCEPT (and an overrun's
 * end). */
HP_HIDDEN void hp_tcp_win_open(hp_tcp_win w[2], const uint8_t *b, const hp_parsed *p);
HP_HIDDEN int hp_tcp_track(hp_tcp_win w[2], int dir, int state, int nxt, const uint8_t *b,
                           const hp_parsed *p);

/* sequence space is modulo 2^32 (RFC 9293 3.4) */
static inline int hp_seq_before(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int hp_seq_after(uint32_t a, uint32_t b) { return hp_seq_before(b, a); }

static inline uint32_t hp_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint32_t hp_win_cap_add(uint32_t a, uint32_t b) /* min(a + b, max window) */
{
    uint64_t x = (uint64_t)a + b;
    return x > HP_TCP_MAX_WINDOW ? HP_TCP_MAX_WINDOW : (uint32_t)x;
}

static inline uint32_t hp_maxackwin(const hp_tcp_win *s)
{
    return s->maxwin > HP_MAXACKWIN_CONST ? s->maxwin : HP_MAXACKWIN_CONST;
}

/* Walk the options t[20..doff) (RFC 9293 3.1: kind, length, value; a malformed option ends
 * the walk, as in the kernel). With syn, the window scale (*wscale, at most 14) and
 * SACK-permitted (*sack_perm) of a SYN; with sack, *sack becomes the highest right edge of the
 * SACK blocks (RFC 2018) above it. Inline with constant syn and sack, the unused half goes. */
static inline void hp_tcp_options(const uint8_t *t, uint32_t doff, int syn, int8_t *wscale,
                                  uint8_t *sack_perm, uint32_t *sack)
{
    uint32_t i = 20;
    while (i < doff) {
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
            break;
        if (syn && kind == 3 && olen == 3)
            *wscale = (int8_t)(t[i + 2] < HP_TCP_MAX_WSCALE ? t[i + 2] : HP_TCP_MAX_WSCALE);
        else if (syn && kind == 4 && olen == 2)
            *sack_perm = 1;
        else if (sack && kind == 5 && olen >= 10 && (olen - 2) % 8 == 0)
            for (uint32_t k = i + 2; k < i + olen; k += 8) {
                uint32_t right = hp_get32(t + k + 4);
                if (hp_seq_after(right, *sack))
                    *sack = right;
            }
        i += olen;
    }
}

/* window.py _update, tcp_in_window's update step for step: an accepted segment from s to r
 * with (scaled) window win, end, ack and sack; has_ack: the ACK flag. (The RESYNC mark, which
 * the fast path never sees set, is cleared by the slow path's update.) */
static inline void hp_tcp_update(hp_tcp_win *s, hp_tcp_win *r, uint32_t win, uint32_t end,
                                 uint32_t ack, uint32_t sack, int has_ack)
{
    uint32_t swin = hp_win_cap_add(win, sack - ack);
    if (s->maxwin < swin)
        s->maxwin = swin;
    if (hp_seq_after(end, s->end))
        s->end = end;
    if (has_ack) {
        if (!(s->flags & HP_TCPF_MAXACK_SET)) {
            s->maxack = ack;
            s->flags |= HP_TCPF_MAXACK_SET;
        } else if (hp_seq_after(ack, s->maxack)) {
            s->maxack = ack;
        }
    }
    if (r->maxwin && hp_seq_after(end, s->maxend))
        r->maxwin = hp_win_cap_add(r->maxwin, end - s->maxend);
    if (hp_seq_after(sack + win, r->maxend - 1)) {
        r->maxend = sack + win;
        if (win == 0)
            r->maxend++;
    }
}

/* The common case of hp_tcp_track: an ACK-flagged segment without SYN or RST, not a fragment,
 * from a side whose window is known and not re-learning, whose flags the grid allows (nxt),
 * inside the window: the windows move, HP_WIN_ACCEPT. Anything else: HP_WIN_SLOW, nothing
 * changed. */
static inline int hp_tcp_track_fast(hp_tcp_win w[2], int d, int nxt, const uint8_t *b,
                                    const hp_parsed *p)
{
    const uint8_t *t = b + p->l4;
    uint8_t fl = p->tcp_flags;
    hp_tcp_win *s = &w[d], *r = &w[!d];
    if ((fl & (HP_TH_SYN | HP_TH_RST | HP_TH_ACK)) != HP_TH_ACK || nxt == HP_TCP_INV ||
        p->frag != HP_FRAG_NO || !s->maxwin || (s->flags & HP_TCPF_RESYNC))
        return HP_WIN_SLOW;
    uint32_t doff = (uint32_t)(t[12] >> 4) * 4;
    uint32_t seq = hp_get32(t + 4), ack = hp_get32(t + 8);
    uint32_t win = (uint32_t)hp_get16(t + 14) << s->scale;
    uint32_t end = seq + (p->l3_len - p->l4 - doff) + (fl & HP_TH_FIN);
    uint32_t sack = ack;
    if (doff > 20 && (r->flags & HP_TCPF_SACK_PERM))
        hp_tcp_options(t, doff, 0, NULL, NULL, &sack);
    if (!(hp_seq_before(seq, s->maxend + 1) &&                                     /* I */
          hp_seq_before(sack, r->end + 1) &&                                       /* III */
          (!r->maxwin || hp_seq_after(end, s->end - r->maxwin - 1)) &&             /* II */
          hp_seq_after(sack, r->end - hp_maxackwin(s) - 1)))                       /* IV */
        return HP_WIN_SLOW;
    hp_tcp_update(s, r, win, end, ack, sack, 1);
    return HP_WIN_ACCEPT;
}

#endif
