"""TCP sequence-window tracking: is a segment part of its connection's byte stream? (In C:
csrc/hp_tcp_window.c, the same steps in the same order.)

Why
---
The state grid (tcp_states.py) looks only at flags. Without sequence numbers, anyone on the VPC
side who can guess a live connection's reply tuple (the ENI's address and port, the server's
address and port: the ENI port is often the environment's own source port) can end it with one
forged RST, or move it to TIME_WAIT with a forged FIN. The kernel's conntrack
(nf_conntrack_proto_tcp.c, ``tcp_in_window``), pf and Open vSwitch (lib/conntrack-tcp.c, taken
from pf) all check each segment against the sequence space the two ends have announced, and
ignore segments outside it. This module is our own version of that check.

What is kept, per direction (:class:`Side`; the sender of a segment is ``w[direction]``, its
receiver ``w[1 - direction]``), the kernel's ``ip_ct_tcp_state`` fields:

* ``end``: the highest sequence number the side has sent, plus one (SEG.SEQ + SEG.LEN, where a
  SYN and a FIN count one each; RFC 9293 3.4);
* ``maxend``: the highest sequence number it may send: the largest ACK + window the *other*
  side has announced (the right edge of the receive window);
* ``maxwin``: the largest window it has announced (scaled), at least 1;
* ``maxack``: the highest ACK it has sent (flag MAXACK_SET once it has sent one): what it has
  received, so an RST to it must carry exactly this sequence number (RFC 5961 3.2);
* ``scale``: its window-scale shift from its SYN (RFC 7323 2.2: used only when both SYNs carry
  the option, at most 14); flags WSCALE and SACK_PERM note the SYN's options.

The checks, for a segment SEG.SEQ = seq, its end = seq + len, SEG.ACK = ack (``sack`` is the
highest right edge of its SACK blocks when above ack, RFC 2018, if R's SYN allowed SACK), from
sender S to receiver R; the four of ``tcp_in_window``:

I.   seq <= S.maxend              the data starts inside what R allowed;
II.  end >  S.end - R.maxwin      the data ends after what R may already have acknowledged;
III. sack <= R.end                S acknowledges nothing R has not sent;
IV.  sack >  R.end - maxackwin    S does not acknowledge something too old
                                  (maxackwin: S.maxwin, at least 66,000, the kernel's
                                  MAXACKWINDOW).

Outcomes (:data:`ACCEPT`, :data:`PASS`, :data:`OUT`)
--------------------------------------------------
* All four hold: **ACCEPT**. The windows are updated, the flags go to the state grid, the
  timer is refreshed.
* A check fails by little: **PASS**, the segment goes on but changes nothing (no state, no
  window, no timer). These are the segments the kernel lets through on purpose
  (``NFCT_TCP_IGNORE`` in nf_conntrack_proto_tcp.c): an old duplicate below the window (II) or an
  overly delayed ACK (IV), which the endpoint must see to answer with a duplicate ACK (RFC 9293
  3.10.7.4: "if an incoming segment is not acceptable, an acknowledgment should be sent"), and
  data past the window edge (I) by at most R's largest window, from TCPs that overrun the
  window ("%u bytes more than expected"; for that one the kernel, and we, record the new end so
  that the ACK for it fits III). Unlike the kernel, whose IGNORE has no lower limit, the slack
  is bounded as pf's second chance is (lib/conntrack-tcp.c: MAXACKWINDOW beyond the edges): a
  segment further off is OUT. An RST never passes by a margin: RFC 5961 3.2 wants it inside
  the window.
* Otherwise **OUT**: dropped as ``tcp_out_of_window``; nothing changes. A blind forger must
  guess both numbers to within a window: about 2^-32 * window per number.

RST (RFC 5961 3.2, the kernel's TCP_CONNTRACK_CLOSE case): an RST in the window whose sequence
number is exactly what R expects (R.maxack, R's RCV.NXT as we saw it) or right after S's last
data (S.end: a reset that ends S's own train of segments) closes the connection. One in the
window but not exact passes and changes nothing: the endpoint answers it with a challenge ACK
(RFC 5961 3.2), and a genuine peer then resets with the exact number. We do not send the
challenge ACK ourselves: the endpoint does. An RST below R.maxack acknowledges a point R has
already passed: OUT. Before the connection is established an RST in the window closes it.

SYN handling (the kernel's, and RFC 9293 3.5):
* The opener's SYN sets its side (``init_side``); a reopen of a TIME_WAIT/CLOSE tuple by a SYN
  starts both sides again; a SYN in SYN_SENT with a later sequence number (a new ISN) resets
  the opener's side (RFC 9293 3.8.1 / RFC 6191).
* The answering SYN-ACK sets the other side; window scaling is on only if both SYNs had the
  option. Its ACK must pass III and IV like any other: it must acknowledge our SYN.
* Before the other side has sent a SYN there is nothing to check its segments against: an RST
  or ACK from it is of this connection only when it acknowledges the opener's SYN exactly
  (RFC 9293 3.10.7.3, SYN-SENT); anything else is OUT.
* An environment's SYN that the grid ignores (IGN: a SYN on a tuple we think is still open,
  after the environment lost the connection) passes unchecked, as in the kernel (its
  TCP_CONNTRACK_IGNORE case): the server's challenge ACK (RFC 5961 4.2) and the environment's
  RST then put both ends and us back in step. The environment is our own side: the VPC side gets
  no such pass.

Restored connections (after a restart) carry their windows in the snapshot, and each side is
marked RESYNC: if its first segment after the restore misses the window (the periodic state
file can be seconds old while the ends kept sending), that side's window is learned again from
the segment, as the kernel does for a connection it picks up mid-stream (the
``td_maxwin == 0`` branch of ``tcp_in_window``), and the RST rules still apply. The first
in-window segment or the relearning clears the mark. Until then a forger who guesses the tuple
can set that side's window: the same exposure as the kernel's mid-stream pick-up, for one
segment per side after a restart.

A first fragment carries only part of its segment (its length is in the later fragments,
which are not reassembled here): its end is taken as the receive window's edge (S.maxend), the
most its data can reach, so that the ACK for the whole segment fits III.

All sequence arithmetic is modulo 2^32 (RFC 9293 3.4): :func:`before` / :func:`after`.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

from hyperplane.engine import tcp_states
from hyperplane.engine.constants import Direction, TcpState

ACCEPT, PASS, OUT = 0, 1, 2     # the window's verdict
#: The outcome of :func:`track` beyond the window's: the grid's INV for an in-window segment.
INVALID = 3
_OVERRUN = 4                    # _window only: PASS, and the sender's end moves

MASK = 0xFFFFFFFF
MAXACKWIN_CONST = 66000         # the kernel's MAXACKWINCONST: a minimum for the ACK check
MAX_WSCALE = 14                 # RFC 7323 2.3
#: The largest window TCP can announce (65,535 << 14, RFC 7323 2.3): ``maxwin`` never grows
#: past it. (The kernel's does: a segment straddling the right edge, sent again and again, adds
#: its overshoot every time and could in the end wrap the 32 bits.)
MAX_WINDOW = 0xFFFF << MAX_WSCALE

# Side.flags
F_WSCALE = 0x01       # its SYN carried the window-scale option
F_SACK_PERM = 0x02    # its SYN carried SACK-permitted (RFC 2018)
F_MAXACK_SET = 0x04   # it has sent an ACK: maxack is meaningful
F_RESYNC = 0x08       # restored: may be learned again from its next segment
F_ALL = 0x0F

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10


def before(a: int, b: int) -> bool:
    """a comes before b in sequence space (RFC 9293 3.4; the kernel's before())."""
    return ((a - b) & MASK) >= 0x80000000


def after(a: int, b: int) -> bool:
    return before(b, a)


class Side:
    """One direction's window data (what the C core keeps in ``hp_tcp_win``)."""

    __slots__ = ("end", "maxend", "maxwin", "maxack", "scale", "flags")

    def __init__(self, end=0, maxend=0, maxwin=0, maxack=0, scale=0, flags=0):
        self.end, self.maxend, self.maxwin = end, maxend, maxwin
        self.maxack, self.scale, self.flags = maxack, scale, flags

    def copy(self) -> "Side":
        return Side(self.end, self.maxend, self.maxwin, self.maxack, self.scale, self.flags)

    def fields(self) -> tuple:
        return (self.end, self.maxend, self.maxwin, self.maxack, self.scale, self.flags)

    def __repr__(self) -> str:
        return ("Side(end=%d, maxend=%d, maxwin=%d, maxack=%d, scale=%d, flags=%#x)"
                % self.fields())


def new_window() -> List[Side]:
    """Both sides, nothing seen: [orig, reply]."""
    return [Side(), Side()]


class Segment(NamedTuple):
    seq: int
    ack: int
    sack: int           # ack, or the highest SACK right edge above it
    win: int            # the window field, unscaled
    flags: int
    end: int            # seq + payload + SYN + FIN (mod 2^32)
    wscale: Optional[int]   # the window-scale option's shift (SYNs), None without it
    sack_perm: bool     # the SACK-permitted option (SYNs)
    partial: bool       # a first fragment: the segment goes on in later fragments


def read_segment(b, off: int, l4: int, l3_len: int, partial: bool) -> Segment:
    """The segment's numbers and options from the TCP header at ``b[off + l4:]`` (the parser
    has checked the header is whole: data offset >= 5 and within the packet)."""
    t = off + l4
    seq = int.from_bytes(b[t + 4:t + 8], "big")
    ack = int.from_bytes(b[t + 8:t + 12], "big")
    doff = (b[t + 12] >> 4) * 4
    flags = b[t + 13]
    win = (b[t + 14] << 8) | b[t + 15]
    payload = l3_len - l4 - doff
    end = (seq + payload + (1 if flags & TH_SYN else 0) + (1 if flags & TH_FIN else 0)) & MASK
    wscale, sack_perm, sack = None, False, ack
    i, stop = t + 20, t + doff
    while i < stop:                      # RFC 9293 3.1 options: kind, length, value
        kind = b[i]
        if kind == 0:                    # end of option list
            break
        if kind == 1:                    # no-operation
            i += 1
            continue
        if i + 1 >= stop:
            break
        olen = b[i + 1]
        if olen < 2 or i + olen > stop:
            break                        # a malformed option ends the walk, as in the kernel
        if kind == 3 and olen == 3 and flags & TH_SYN:
            wscale = min(b[i + 2], MAX_WSCALE)
        elif kind == 4 and olen == 2 and flags & TH_SYN:
            sack_perm = True
        elif kind == 5 and olen >= 10 and (olen - 2) % 8 == 0:
            for k in range(i + 2, i + olen, 8):      # SACK blocks: left edge, right edge
                right = int.from_bytes(b[k + 4:k + 8], "big")
                if after(right, sack):
                    sack = right
        i += olen
    return Segment(seq, ack, sack, win, flags, end, wscale, sack_perm, partial)


def init_side(s: Side, r: Side, seg: Segment, negotiate: bool) -> None:
    """A side's window from its SYN or SYN-ACK (the kernel's tcp_init_sender). With negotiate
    (the answering SYN), window scaling stays on only if both SYNs had the option."""
    s.end = s.maxend = seg.end
    s.maxwin = seg.win or 1              # a SYN's window is never scaled (RFC 7323 2.2)
    s.maxack = 0
    s.flags = (F_WSCALE if seg.wscale is not None else 0) | (F_SACK_PERM if seg.sack_perm
                                                             else 0)
    s.scale = seg.wscale or 0
    if negotiate and not (s.flags & F_WSCALE and r.flags & F_WSCALE):
        s.scale = r.scale = 0


def _maxackwin(s: Side) -> int:
    return s.maxwin if s.maxwin > MAXACKWIN_CONST else MAXACKWIN_CONST


def _relearn(s: Side, r: Side, seg: Segment, ack: int, sack: int) -> None:
    """A restored side whose first segment missed the window: learn it from the segment (the
    kernel's mid-stream pick-up)."""
    s.end = seg.end
    swin = (seg.win << s.scale) & MASK
    s.maxwin = swin or 1
    s.maxend = (seg.end + s.maxwin) & MASK
    if r.flags & F_RESYNC or after(sack, r.end):
        r.end = sack                     # what S has received is what R has sent
        if before(r.maxend, sack):
            r.maxend = sack


def _update(s: Side, r: Side, seg: Segment, ack: int, sack: int) -> None:
    """An accepted segment moves the windows (tcp_in_window's update, step for step)."""
    win = seg.win if seg.flags & TH_SYN else (seg.win << s.scale) & MASK
    end = seg.end
    if seg.partial and after(s.maxend, end):
        end = s.maxend                   # the rest of the segment is in later fragments
    swin = min(win + ((sack - ack) & MASK), MAX_WINDOW)
    if s.maxwin < swin:
        s.maxwin = swin
    if after(end, s.end):
        s.end = end
    if seg.flags & TH_ACK:
        if not s.flags & F_MAXACK_SET:
            s.maxack = ack
            s.flags |= F_MAXACK_SET
        elif after(ack, s.maxack):
            s.maxack = ack
    if r.maxwin and after(end, s.maxend):
        r.maxwin = min(r.maxwin + ((end - s.maxend) & MASK), MAX_WINDOW)
    if after((sack + win) & MASK, (r.maxend - 1) & MASK):
        r.maxend = (sack + win) & MASK
        if win == 0:
            r.maxend = (r.maxend + 1) & MASK
    s.flags &= ~F_RESYNC


def _window(s: Side, r: Side, seg: Segment, state: int) -> int:
    """ACCEPT, PASS, _OVERRUN or OUT for a segment from s to r, both already set up. Updates
    s and r (the caller's copies) only for ACCEPT."""
    seq, ack, end = seg.seq, seg.ack, seg.end
    # SACK blocks count only when the receiver allowed SACK in its SYN (as in the kernel; the
    # C core does not even walk the options otherwise)
    sack = seg.sack if r.flags & F_SACK_PERM else ack
    rst = seg.flags & TH_RST
    if not seg.flags & TH_ACK or (rst and ack == 0):
        # no ACK (or an RST with ACK set and 0 in it, from broken stacks): nothing to check
        ack = sack = r.end
    if rst and seq == 0 and state == TcpState.SYN_SENT:
        seq = end = s.end                # an RST answering a SYN carries seq 0
    maw = _maxackwin(s)
    upper = before(seq, (s.maxend + 1) & MASK)                                  # I
    ack_hi = before(sack, (r.end + 1) & MASK)                                   # III
    lower = not r.maxwin or after(end, (s.end - r.maxwin - 1) & MASK)           # II
    ack_lo = after(sack, (r.end - maw - 1) & MASK)                              # IV
    if rst and r.flags & F_MAXACK_SET and before(seq, r.maxack):
        return OUT                       # before what R has acknowledged: not its window
    if upper and ack_hi and lower and ack_lo:
        _update(s, r, seg, ack, sack)
        return ACCEPT
    if s.flags & F_RESYNC and not seg.flags & (TH_SYN | TH_RST):
        _relearn(s, r, seg, ack, sack)
        _update(s, r, seg, ack, sack)
        return ACCEPT
    if rst or not ack_hi:
        return OUT                       # an RST must be inside; never ACK unsent data
    if not upper:
        # past the right edge: a TCP that overruns the receiver's window, by at most that
        # window, passes and its end is recorded (the ACK for it must fit III)
        overshoot = (end - s.maxend) & MASK
        if lower and ack_lo and r.maxwin and overshoot <= r.maxwin:
            return _OVERRUN
        return OUT
    # below the left edge (II) or an old ACK (IV): pass within one more window's slack
    if not lower and not after(end, (s.end - r.maxwin - maw - 1) & MASK):
        return OUT
    if not ack_lo and not after(sack, (r.end - 2 * maw - 1) & MASK):
        return OUT
    return PASS


def track(w: List[Side], direction: Direction, state: int, nxt: int, seg: Segment) -> int:
    """The window's say on a segment of an existing connection (or the SYN that creates it,
    state NONE): ACCEPT (apply ``nxt``, the grid's cell, refresh the timer), PASS (forward,
    change nothing), OUT (drop as tcp_out_of_window) or INVALID (drop as tcp_invalid: in the
    window, but the grid's INV). ``w`` is changed only for ACCEPT (and the PASS of an overrun,
    its end)."""
    d = int(direction)
    fl = seg.flags
    syn = fl & TH_SYN and not fl & (TH_RST | TH_FIN)
    # 1. the opener's SYN: a new connection or a reopened tuple starts both sides again
    if d == 0 and syn and not fl & TH_ACK:
        if nxt == TcpState.SYN_SENT and state != TcpState.SYN_SENT:
            w[0], w[1] = Side(), Side()
            init_side(w[0], w[1], seg, negotiate=False)
            return ACCEPT
        if nxt == tcp_states.IGN:
            return PASS                  # a SYN on a tuple we think open: see the docstring
        if state == TcpState.SYN_SENT and after(seg.end, w[0].end):
            init_side(w[0], w[1], seg, negotiate=False)    # a new ISN
            return ACCEPT
    s, r = w[d].copy(), w[1 - d].copy()
    # 2. the answering side's SYN / SYN-ACK
    if syn and d == 1 and (s.maxwin == 0 or (
            state in (TcpState.SYN_SENT, TcpState.SYN_RECV) and after(seg.end, s.end))):
        init_side(s, r, seg, negotiate=True)
        if not fl & TH_ACK:
            if nxt == tcp_states.INV:
                return INVALID
            w[d], w[1 - d] = s, r        # a SYN (simultaneous open): nothing to check
            return ACCEPT
    elif s.maxwin == 0 and not s.flags & F_RESYNC:
        # 3. nothing seen from this side yet: it may only acknowledge the opener's SYN
        if fl & TH_ACK and seg.ack == r.end:
            return INVALID if nxt == tcp_states.INV else (ACCEPT if fl & TH_RST else PASS)
        return OUT
    # 4. the window
    v = _window(s, r, seg, state)
    if v == OUT:
        return OUT
    if nxt == tcp_states.INV:
        return INVALID
    if v == _OVERRUN:
        if after(seg.end, w[d].end):
            w[d].end = seg.end           # so that the ACK for it fits III (the kernel's too)
        return PASS
    if v == PASS:
        return PASS
    if fl & TH_RST and not _rst_closes(w[d], w[1 - d], seg, state):
        return PASS                      # in the window, not exact: the endpoint challenges
    w[d], w[1 - d] = s, r
    return ACCEPT


def _rst_closes(s: Side, r: Side, seg: Segment, state: int) -> bool:
    """An in-window RST (windows before it): does it close the connection?"""
    if state < TcpState.ESTABLISHED or not r.flags & F_MAXACK_SET:
        return True
    return seg.seq == r.maxack or seg.seq == s.end
