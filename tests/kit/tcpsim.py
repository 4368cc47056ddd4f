"""Two honest TCP ends talking through an engine, for the window-tracking tests.

:class:`Conversation` plays an environment (side 0, behind the NAT) and a VPC host (side 1):
a three-way handshake with random initial sequence numbers (wrap-around included), window-scale
and SACK-permitted options or not, then data both ways within the window the other side
announced, ACKs (with SACK blocks for data received out of order), losses after the NAT,
reordering, retransmissions, window changes and FINs. Every segment is what a correct TCP
(RFC 9293, RFC 7323, RFC 2018) could send, so an engine must pass every one of them: each
``send`` returns the engine's result and the tests assert it was not dropped.

Packets are built with struct (scapy is too slow for thousands of Hypothesis steps).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import List, Optional, Tuple

MASK = 0xFFFFFFFF
TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _sum16(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def tcp_packet(family: int, src: str, dst: str, sport: int, dport: int, seq: int, ack: int,
               flags: int, win: int, options: bytes = b"", payload: bytes = b"",
               ttl: int = 64) -> bytes:
    """An IPv4/IPv6 TCP packet with correct checksums; options padded to 4 bytes."""
    options += b"\x01" * (-len(options) % 4)
    doff = (20 + len(options)) // 4
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & MASK, ack & MASK, doff << 4, flags,
                      win, 0, 0) + options + payload
    pseudo = s + d + (struct.pack("!BBH", 0, 6, len(tcp)) if family == 4
                      else struct.pack("!I3xB", len(tcp), 6))
    c = 0xFFFF ^ _fold(_sum16(pseudo + tcp))
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    if family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, ttl, 6, 0, s, d)
        ip = ip[:10] + struct.pack("!H", 0xFFFF ^ _fold(_sum16(ip))) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, ttl, s, d)
    return ip + tcp


def syn_options(mss: int, wscale: Optional[int], sack_perm: bool) -> bytes:
    o = struct.pack("!BBH", 2, 4, mss)
    if sack_perm:
        o += b"\x04\x02"
    if wscale is not None:
        o += b"\x01" + struct.pack("!BBB", 3, 3, wscale)
    return o


def sack_option(blocks: List[Tuple[int, int]]) -> bytes:
    if not blocks:
        return b""
    blocks = blocks[:3]
    return b"\x01\x01" + struct.pack("!BB", 5, 2 + 8 * len(blocks)) + b"".join(
        struct.pack("!II", a & MASK, b & MASK) for a, b in blocks)


class End:
    """One TCP end's send and receive variables (RFC 9293 3.3.1)."""

    def __init__(self, isn: int, wscale: Optional[int], sack: bool, rcv_wnd: int, mss: int):
        self.isn, self.wscale_opt, self.sack_opt = isn & MASK, wscale, sack
        self.una = self.nxt = self.isn      # SND.UNA, SND.NXT (offsets kept modulo 2^32)
        self.rcv_nxt: Optional[int] = None
        self.rcv_wnd = rcv_wnd              # bytes it is willing to receive
        self.mss = mss
        self.shift = 0                      # its receive-window shift, once both SYNs had it
        self.peer_edge: Optional[int] = None  # SND.UNA + SND.WND as last announced
        self.ooo: List[Tuple[int, int]] = []  # received out of order: [start, end)
        self.fin_sent = False
        self.fin_seq: Optional[int] = None

    def win_field(self) -> int:
        return min(self.rcv_wnd >> self.shift, 0xFFFF)


class Conversation:
    """Side 0 (environment) opens to side 1 (VPC host) through ``eng``; ``send(d, ...)`` pushes
    a segment from side d through the engine (outbound for 0, inbound for 1) and returns the
    engine's Result. Segments in flight after the NAT wait in ``flight[d]`` until delivered or
    lost."""

    def __init__(self, eng, family, env, host, eni, sport, dport, isn, wscale, sack, rcv_wnd,
                 mss=1400, now=1.0):
        self.eng, self.family = eng, family
        self.addr = (env, host)
        self.eni, self.sport, self.dport = eni, sport, dport
        self.eni_port: Optional[int] = None
        self.ends = [End(isn[i], wscale[i], sack[i], rcv_wnd[i], mss) for i in (0, 1)]
        self.flight: List[List[Tuple[int, int, int, bytes]]] = [[], []]  # seq, len, flags, data
        self.now = now
        self.results = []

    # ---- the wire --------------------------------------------------------------------------
    def _packet(self, d, seq, ack, flags, win, options=b"", payload=b""):
        if d == 0:
            return tcp_packet(self.family, self.addr[0], self.addr[1], self.sport, self.dport,
                              seq, ack, flags, win, options, payload)
        return tcp_packet(self.family, self.addr[1], self.eni, self.dport, self.eni_port, seq,
                          ack, flags, win, options, payload)

    def raw(self, d, seq, ack, flags, win=1000, options=b"", payload=b""):
        """A segment from side d as given (forged or not) through the engine."""
        pkt = self._packet(d, seq, ack, flags, win, options, payload)
        fn = self.eng.outbound if d == 0 else self.eng.inbound
        res = fn(pkt, now=self.now)
        self.results.append((d, flags, res))
        return res

    def send(self, d, seq, flags, payload=b"", options=b"", track=True):
        e = self.ends[d]
        ack = e.rcv_nxt if flags & TH_ACK else 0
        res = self.raw(d, seq, ack or 0, flags, e.win_field() if not flags & TH_SYN
                       else min(e.rcv_wnd, 0xFFFF), options, payload)
        if d == 0 and res.packet is not None and self.eni_port is None:
            self.eni_port = struct.unpack_from(
                "!H", res.packet, (20 if self.family == 4 else 40))[0]
        if track and res.verdict != 0:
            self.flight[d].append((seq, len(payload), flags, payload))
        return res

    # ---- the handshake ---------------------------------------------------------------------
    def handshake(self):
        a, b = self.ends
        out = [self.send(0, a.isn, TH_SYN, options=syn_options(a.mss, a.wscale_opt,
                                                                a.sack_opt), track=False)]
        a.nxt = (a.isn + 1) & MASK
        b.rcv_nxt = a.nxt
        both = a.wscale_opt is not None and b.wscale_opt is not None
        a.shift = a.wscale_opt if both else 0
        b.shift = b.wscale_opt if both else 0
        self.sack_ok = a.sack_opt and b.sack_opt
        out.append(self.send(1, b.isn, TH_SYN | TH_ACK,
                             options=syn_options(b.mss, b.wscale_opt, b.sack_opt), track=False))
        b.nxt = (b.isn + 1) & MASK
        a.rcv_nxt = b.nxt
        a.una, b.una = a.nxt, b.nxt
        # each side's edge: from the SYN's window (never scaled, RFC 7323 2.2)
        a.peer_edge = (a.nxt + min(b.rcv_wnd, 0xFFFF)) & MASK
        b.peer_edge = (b.nxt + min(a.rcv_wnd, 0xFFFF)) & MASK
        out.append(self.ack(0))
        return out

    # ---- steps -----------------------------------------------------------------------------
    def usable(self, d) -> int:
        """How many more bytes side d may send: up to the edge it was given, none past it."""
        e = self.ends[d]
        return 0 if _before(e.peer_edge, e.nxt) else (e.peer_edge - e.nxt) & MASK

    def data(self, d, n):
        """Up to n new bytes from side d, within the window it was given; None if none fit."""
        e = self.ends[d]
        if e.fin_sent:
            return None
        n = min(n, e.mss, self.usable(d))
        if n <= 0:
            return None
        payload = bytes((e.nxt + k) & 0xFF for k in range(n))
        res = self.send(d, e.nxt, TH_ACK | TH_PSH, payload)
        e.nxt = (e.nxt + n) & MASK
        return res

    def fin(self, d):
        e = self.ends[d]
        if e.fin_sent:
            return self.send(d, e.fin_seq, TH_FIN | TH_ACK)     # retransmitted
        e.fin_sent, e.fin_seq = True, e.nxt
        res = self.send(d, e.nxt, TH_FIN | TH_ACK)
        e.nxt = (e.nxt + 1) & MASK
        return res

    def retransmit(self, d):
        """The oldest unacknowledged bytes of side d again (at most one MSS)."""
        e = self.ends[d]
        n = min((e.nxt - e.una) & MASK, e.mss)
        if n <= 0:
            return None
        if e.fin_sent and ((e.fin_seq - e.una) & MASK) < n:
            n = (e.fin_seq - e.una) & MASK
            if n == 0:
                return self.fin(d)
        payload = bytes((e.una + k) & 0xFF for k in range(n))
        return self.send(d, e.una, TH_ACK | TH_PSH, payload)

    def ack(self, d):
        """A pure ACK from side d, with SACK blocks for what it holds out of order."""
        e = self.ends[d]
        opts = sack_option(list(reversed(e.ooo))) if self.sack_ok else b""
        return self.send(d, e.nxt, TH_ACK, options=opts, track=False)

    def lose(self, d, k):
        if self.flight[d]:
            self.flight[d].pop(k % len(self.flight[d]))

    def deliver(self, d, k):
        """Segment k in flight from side d reaches side 1 - d, which ACKs it (through the
        engine)."""
        if not self.flight[d]:
            return None
        seq, n, flags, _ = self.flight[d].pop(k % len(self.flight[d]))
        r, s = self.ends[1 - d], self.ends[d]
        end = (seq + n + (1 if flags & TH_FIN else 0)) & MASK
        if r.rcv_nxt is not None and _before(r.rcv_nxt, end) and not _before(
                (r.rcv_nxt + r.rcv_wnd) & MASK, seq):
            if not _after(seq, r.rcv_nxt):
                r.rcv_nxt = end
                self._merge(r)
            else:
                r.ooo.append((seq, end))
                r.ooo = r.ooo[-3:]
        res = self.ack(1 - d)
        # the ACK reaches side d at once (ACKs are not lost here: losing data is enough)
        acked = r.rcv_nxt
        if _after(acked, s.una) and not _after(acked, s.nxt):
            s.una = acked
        edge = (acked + (r.win_field() << r.shift)) & MASK
        if s.peer_edge is None or _after(edge, s.peer_edge):
            s.peer_edge = edge
        return res

    def _merge(self, r):
        changed = True
        while changed:
            changed = False
            for a, b in list(r.ooo):
                if not _after(a, r.rcv_nxt):
                    r.ooo.remove((a, b))
                    if _after(b, r.rcv_nxt):
                        r.rcv_nxt = b
                    changed = True

    def set_window(self, d, wnd):
        """Side d changes the window it offers (never shrinking its right edge: RFC 9293
        3.8.6.2.2 asks a receiver not to)."""
        e = self.ends[d]
        if e.rcv_nxt is None:
            return
        granted = (self.ends[1 - d].peer_edge - e.rcv_nxt) & MASK
        e.rcv_wnd = max(wnd, granted if granted < 1 << 30 else 0)


def _before(a, b):
    return ((a - b) & MASK) >= 0x80000000


def _after(a, b):
    return _before(b, a)
