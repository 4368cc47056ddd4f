"""Write the seed corpora of the libFuzzer targets (fuzz/corpus/translate, fuzz/corpus/frame).

    python3 fuzz/make_corpus.py            # rewrite both directories
    python3 fuzz/make_corpus.py --check    # exit 1 if the committed files differ (a test runs it)

A seed is a short script in each target's op format (see the comment at the top of
fuzz/fuzz_translate.c and fuzz/fuzz_frame.c): a valid connection in both directions gives the
fuzzer a starting point deep in the state machine, and a few broken packets near each check
give it the edges to mutate across. Addresses match the harnesses: ENIs 198.18.1.10/.11 and
2001:2:0:1::10/::11, ports 40000-40015, so a source port in that range is kept by the NAT and
the reply can be written here.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

HERE = os.path.dirname(os.path.abspath(__file__))

ENV4, ENV6 = "198.18.100.1", "2001:2:0:100::1"
HOST4, HOST6 = "198.19.0.20", "2001:2:0:200::20"
ENI4, ENI6 = "198.18.1.10", "2001:2:0:1::10"
SPORT = 40001           # inside the harness's port range: the NAT keeps it


# ---- fuzz_translate ops ---------------------------------------------------------------------
def partialize(b: bytes) -> bytes:
    """What a sender with checksum offload hands over (virtio NEEDS_CSUM): the L4 checksum
    field holds the folded, uncomplemented pseudo-header sum. No extension headers here."""
    b = bytearray(b)
    if b[0] >> 4 == 4:
        l4, proto, addrs, l4_len = (b[0] & 15) * 4, b[9], b[12:20], ((b[2] << 8) | b[3])
        l4_len -= l4
    else:
        l4, proto, addrs, l4_len = 40, b[6], b[8:40], (b[4] << 8) | b[5]
    acc = sum((addrs[i] << 8) | addrs[i + 1] for i in range(0, len(addrs), 2)) + proto + l4_len
    while acc > 0xFFFF:
        acc = (acc & 0xFFFF) + (acc >> 16)
    c = l4 + (6 if proto == 17 else 16)
    b[c:c + 2] = acc.to_bytes(2, "big")
    return bytes(b)


def tr(pkt, reply: bool = False, partial: bool = False, step: int = 4) -> bytes:
    """A translate op: direction, checksum-partial flag, time step in 1/4 s, the packet."""
    b = raw(pkt) if not isinstance(pkt, (bytes, bytearray)) else bytes(pkt)
    if partial:
        b = partialize(b)
    ctl = (1 if reply else 0) | (2 if partial else 0) | (min(step, 63) << 2)
    return bytes([0, ctl, len(b) >> 8, len(b) & 0xFF]) + b


def advance(seconds: int) -> bytes:
    return bytes([4, seconds])


def collect() -> bytes:
    return bytes([5, 0])


def delete(remembered: int) -> bytes:
    return bytes([6, remembered << 1])


def flush() -> bytes:
    return bytes([6, 1])


def eni_enabled(index: int, enabled: bool) -> bytes:
    return bytes([7, index | (2 if enabled else 0)])


def ip(family: int, src: str, dst: str, **kw):
    return IP(src=src, dst=dst, **kw) if family == 4 else IPv6(src=src, dst=dst, **kw)


def env(family):
    return ENV4 if family == 4 else ENV6


def host(family):
    return HOST4 if family == 4 else HOST6


def eni(family):
    return ENI4 if family == 4 else ENI6


def tcp_out(family, flags, seq=1000, ack=0, payload=b"", sport=SPORT, **kw):
    p = ip(family, env(family), host(family), **kw) / TCP(sport=sport, dport=443, flags=flags,
                                                          seq=seq, ack=ack)
    return p / Raw(payload) if payload else p


def tcp_in(family, flags, seq=5000, ack=1001, payload=b"", **kw):
    p = ip(family, host(family), eni(family), **kw) / TCP(sport=443, dport=SPORT, flags=flags,
                                                          seq=seq, ack=ack)
    return p / Raw(payload) if payload else p


def udp_out(family, dport=53, sport=SPORT, payload=b"query", **kw):
    return ip(family, env(family), host(family), **kw) / UDP(sport=sport, dport=dport) / \
        Raw(payload)


def udp_in(family, payload=b"answer", **kw):
    return ip(family, host(family), eni(family), **kw) / UDP(sport=53, dport=SPORT) / \
        Raw(payload)


def tcp_session(family: int, partial: bool = False) -> bytes:
    return b"".join([
        tr(tcp_out(family, "S", seq=1000), partial=partial),
        tr(tcp_in(family, "SA", seq=5000, ack=1001), reply=True, partial=partial),
        tr(tcp_out(family, "A", seq=1001, ack=5001), partial=partial),
        tr(tcp_out(family, "PA", seq=1001, ack=5001, payload=b"GET / HTTP/1.0\r\n\r\n"),
           partial=partial),
        tr(tcp_in(family, "PA", seq=5001, ack=1019, payload=b"HTTP/1.0 200 OK\r\n\r\n"),
           reply=True, partial=partial),
        collect(),
        tr(tcp_out(family, "FA", seq=1019, ack=5020), partial=partial),
        tr(tcp_in(family, "FA", seq=5020, ack=1020), reply=True, partial=partial),
        tr(tcp_out(family, "A", seq=1020, ack=5021), partial=partial),
        collect(), advance(130), collect(),
    ])


def udp_session(family: int, partial: bool = False) -> bytes:
    return b"".join([tr(udp_out(family), partial=partial),
                     tr(udp_in(family), reply=True, partial=partial),
                     tr(udp_out(family, payload=b"again"), partial=partial), collect(),
                     advance(40), collect()])


def icmp_error(family: int, kind: str) -> bytes:
    """A tracked TCP/UDP flow, then an ICMP error about it from the VPC side, embedding the
    packet as it left the NAT (RFC 5508: the error must be translated back)."""
    if kind == "tcp":
        opener = tr(tcp_out(family, "S"))
        inner4 = IPerror(src=ENI4, dst=HOST4) / TCPerror(sport=SPORT, dport=443, flags="S",
                                                         seq=1000)
        inner6 = IPv6(src=ENI6, dst=HOST6) / TCP(sport=SPORT, dport=443, flags="S", seq=1000)
    else:
        opener = tr(udp_out(family))
        inner4 = IPerror(src=ENI4, dst=HOST4) / UDPerror(sport=SPORT, dport=53) / Raw(b"query")
        inner6 = IPv6(src=ENI6, dst=HOST6) / UDP(sport=SPORT, dport=53) / Raw(b"query")
    if family == 4:
        err = IP(src=HOST4, dst=ENI4) / ICMP(type=3, code=4, nexthopmtu=1280) / inner4
        ttl_err = IP(src="198.19.0.1", dst=ENI4) / ICMP(type=11, code=0) / inner4
    else:
        err = IPv6(src=HOST6, dst=ENI6) / ICMPv6PacketTooBig(mtu=1280) / inner6
        ttl_err = IPv6(src="2001:2:0:200::1", dst=ENI6) / ICMPv6DestUnreach(code=1) / inner6
    return opener + tr(err, reply=True) + tr(ttl_err, reply=True) + collect()


def datagram(family: int, src: str, dst: str, l4) -> bytes:
    """The transport bytes of a whole datagram, its checksum computed over all of them."""
    return raw(ip(family, src, dst) / l4)[20 if family == 4 else 40:]


def frag(family: int, src: str, dst: str, nh: int, data: bytes, off: int, more: bool,
         ident: int, **kw):
    """One fragment: data at byte offset off of the datagram's fragmentable part (IPv4: MF
    and the offset in the IP header; IPv6: a Fragment header whose next header is nh)."""
    if family == 4:
        return IP(src=src, dst=dst, proto=nh, id=ident, frag=off // 8,
                  flags="MF" if more else 0, **kw) / Raw(data)
    return (IPv6(src=src, dst=dst, **kw)
            / IPv6ExtHdrFragment(nh=nh, offset=off // 8, m=int(more), id=ident) / Raw(data))


def fragmented(family: int, src: str, dst: str, l4, ident: int, cuts=(24, 48)) -> List:
    """A datagram in fragments, cut at the byte offsets cuts (multiples of 8), first first."""
    d = datagram(family, src, dst, l4)
    nh = 6 if l4.haslayer(TCP) else 17
    edges = [0] + [c for c in cuts if c < len(d)] + [len(d)]
    return [frag(family, src, dst, nh, d[a:b], a, b < len(d), ident)
            for a, b in zip(edges, edges[1:])]


def frag_udp(family: int) -> bytes:
    """A fragmented UDP query out, a fragmented answer back (same id both ways: the keys
    differ by direction and addresses)."""
    out = fragmented(family, env(family), host(family),
                     UDP(sport=SPORT, dport=53) / Raw(b"q" * 64), 0x1234)
    back = fragmented(family, host(family), eni(family),
                      UDP(sport=53, dport=SPORT) / Raw(b"a" * 64), 0x1234)
    return b"".join([tr(p) for p in out] + [tr(p, reply=True) for p in back] + [collect()])


def frag_tcp(family: int) -> bytes:
    """A TCP connection opened whole, then a data segment fragmented each way."""
    out = fragmented(family, env(family), host(family),
                     TCP(sport=SPORT, dport=443, flags="PA", seq=1001, ack=5001)
                     / Raw(b"G" * 40), 77)
    back = fragmented(family, host(family), eni(family),
                      TCP(sport=443, dport=SPORT, flags="PA", seq=5001, ack=1041)
                      / Raw(b"H" * 40), 78)
    return b"".join([tr(tcp_out(family, "S")), tr(tcp_in(family, "SA"), reply=True),
                     tr(tcp_out(family, "A", seq=1001, ack=5001))]
                    + [tr(p) for p in out] + [tr(p, reply=True) for p in back] + [collect()])


def frag_edges(family: int) -> bytes:
    """Later fragments of no passed first one (both ways), a tiny TCP first fragment (its
    header cut at 16 bytes) and its rest, fragments out of order and duplicated (after a gap
    the tracker stays), then one after the tracker timed out."""
    udp = UDP(sport=SPORT, dport=53) / Raw(b"r" * 48)
    first, second, third = fragmented(family, env(family), host(family), udp, 9)
    tcp = datagram(family, env(family), host(family),
                   TCP(sport=SPORT, dport=443, flags="S") / Raw(b"s" * 16))
    in_later = fragmented(family, host(family), eni(family),
                          UDP(sport=53, dport=SPORT) / Raw(b"t" * 40), 10, cuts=(24,))[1]
    return b"".join([
        tr(second), tr(in_later, reply=True),
        tr(frag(family, env(family), host(family), 6, tcp[:16], 0, True, 11)),
        tr(frag(family, env(family), host(family), 6, tcp[16:], 16, False, 11)),
        tr(first), tr(third), tr(second), tr(third),
        advance(70), tr(third), collect(),
    ])


def many_flows(family: int, proto: str, n: int) -> bytes:
    """n new connections from distinct source ports: fills the port pools and the table."""
    ops = []
    for i in range(n):
        if proto == "udp":
            ops.append(tr(udp_out(family, sport=41000 + i), step=0))
        else:
            ops.append(tr(tcp_out(family, "S", sport=41000 + i), step=0))
    return b"".join(ops)


def trunc(pkt, n: int) -> bytes:
    return raw(pkt)[:n]


def edit(pkt, pos: int, value: bytes) -> bytes:
    b = bytearray(raw(pkt))
    b[pos:pos + len(value)] = value
    return bytes(b)


# ---- TCP sequence windows (csrc/hp_tcp_window.c, hyperplane/engine/reference/window.py) ----
M32 = 0xFFFFFFFF
SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7), ("NOP", None)]
SYNACK_OPTS = [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b""), ("NOP", None),
               ("WScale", 8)]


def restart() -> bytes:
    """Op 7 with bit 2: snapshot, restore into a fresh engine (windows RESYNC), go on."""
    return bytes([7, 4])


class Conv:
    """One TCP connection with consistent numbers: c and s are the next sequence number the
    environment (client) and the VPC host (server) send. A segment given its own seq is a
    forgery or a retransmission and moves nothing; otherwise it advances its sender by its
    length (SYN and FIN count one)."""

    def __init__(self, family: int, c_isn: int, s_isn: int, partial: bool = False):
        self.f, self.c, self.s, self.partial = family, c_isn & M32, s_isn & M32, partial

    def _seg(self, out: bool, flags: str, data: bytes, seq, ack, win: int, options) -> bytes:
        own = seq is None
        seq = (self.c if out else self.s) if own else seq & M32
        ack = (self.s if out else self.c) if ack is None else ack & M32
        if "A" not in flags:
            ack = 0
        src, dst = (env(self.f), host(self.f)) if out else (host(self.f), eni(self.f))
        ports = dict(sport=SPORT, dport=443) if out else dict(sport=443, dport=SPORT)
        p = ip(self.f, src, dst) / TCP(flags=flags, seq=seq, ack=ack, window=win,
                                       options=options or [], **ports)
        if data:
            p = p / Raw(data)
        if own:
            n = (len(data) + ("S" in flags) + ("F" in flags)) & M32
            if out:
                self.c = (self.c + n) & M32
            else:
                self.s = (self.s + n) & M32
        return tr(p, reply=not out, partial=self.partial)

    def out(self, flags, data=b"", seq=None, ack=None, win=502, options=None) -> bytes:
        return self._seg(True, flags, data, seq, ack, win, options)

    def back(self, flags, data=b"", seq=None, ack=None, win=235, options=None) -> bytes:
        return self._seg(False, flags, data, seq, ack, win, options)

    def handshake(self) -> bytes:
        return (self.out("S", win=64240, options=SYN_OPTS)
                + self.back("SA", win=65160, options=SYNACK_OPTS) + self.out("A"))


def window_session(family: int, c_isn: int, s_isn: int, partial: bool = False) -> bytes:
    """A handshake with window scaling and SACK, a request, two answer segments of which the
    first is 'lost' (the client ACKs below it with a SACK block for the second), the
    retransmission, the full ACK, FINs both ways."""
    k = Conv(family, c_isn, s_isn, partial)
    ops = [k.handshake(), k.out("PA", b"GET / HTTP/1.1\r\n\r\n")]
    s0 = k.s
    ops.append(k.back("A", b"a" * 1000))
    s1 = k.s
    ops.append(k.back("PA", b"b" * 1000))
    ops.append(k.out("A", ack=s0, options=[("NOP", None), ("NOP", None), ("SAck", (s1, k.s))]))
    ops.append(k.back("A", b"a" * 1000, seq=s0))          # the retransmission: in the window
    ops += [k.out("A"), collect(), k.out("FA"), k.back("FA"), k.out("A"), collect()]
    return b"".join(ops)


def window_rst(family: int) -> bytes:
    """RSTs against an established connection (RFC 5961 3.2): in the window but inexact (passes,
    changes nothing), far off and below what was acknowledged (tcp_out_of_window), exact
    (closes); a reopen, the RST answering a SYN with seq 0, a SYN-ACK acknowledging the wrong
    number (out) and the right one."""
    k = Conv(family, 1000, 5000)
    ops = [k.handshake(), k.out("PA", b"q" * 100), k.back("PA", b"r" * 300), k.out("A")]
    ops += [k.back("R", seq=k.s + 1000), k.back("R", seq=k.s + 0x40000000),
            k.back("R", seq=k.s - 5000), k.back("RA", seq=k.s + 1000, ack=k.c + 0x10000000),
            k.out("R", seq=k.c + 64), k.out("A"), k.back("R", seq=k.s), k.out("A"), collect()]
    k2 = Conv(family, 0x12345678, 0x9ABCDEF0)
    ops += [k2.out("S", seq=0x12340000, win=512), k2.out("S", win=64240, options=SYN_OPTS),
            k2.back("RA", seq=0, ack=k2.c),
            k2.out("S", seq=0x22345678, win=1024), k2.back("SA", ack=0x22345678 + 7),
            k2.back("RA", ack=0x22345678 + 3), k2.back("SA", ack=0x22345679), collect()]
    return b"".join(ops)


def window_forged(family: int) -> bytes:
    """Segments off the byte stream: far ahead (out), acknowledging data never sent (out),
    old duplicates below the window (pass, or out further down), an ACK too old, an overrun
    past the receiver's window (passes, its end recorded, then acknowledged), a zero window
    and its probe."""
    k = Conv(family, 0x7FFFFF00, 0x80000100)
    ops = [k.handshake(), k.out("PA", b"x" * 200), k.back("A", b"y" * 500), k.out("A")]
    ops += [k.back("PA", b"z" * 10, seq=k.s + 0x80000000), k.out("PA", b"z", seq=k.c + 0x7FFF0000),
            k.back("A", ack=k.c + 100000), k.out("A", ack=k.s + 1),
            k.out("PA", b"d" * 50, seq=k.c - 100), k.out("PA", b"d" * 50, seq=k.c - 200000),
            k.out("PA", b"d" * 50, seq=k.c - 10000000), k.back("A", ack=k.c - 70000),
            k.back("A", ack=k.c - 300000), k.back("A", win=1)]
    # past the right edge (the SYN-ACK's ack + 65160) by less than the server's largest
    # window: passes, its end recorded so that the server's ACK for it fits
    ops += [k.back("A"), k.out("PA", b"v" * 100, seq=k.c + 66000), k.back("A", ack=k.c + 66100)]
    ops += [k.out("PA", b"o" * 1000), k.back("A"), k.back("A", win=0), k.out("A", b"p"),
            k.out("A", b"p", seq=k.c - 1), k.back("A", win=100), k.out("FA"), k.back("A"),
            k.out("A", b"late", seq=k.c), collect()]
    return b"".join(ops)


def window_restart(family: int) -> bytes:
    """A restart in the middle of a connection (its windows restored, RESYNC): the client's
    next segment in the window, the server's far ahead (that side learned again), an inexact
    RST after; and a connection restored in SYN_SENT whose SYN-ACK comes after."""
    k = Conv(family, 3000, 0xFFFFF000)
    ops = [k.handshake(), k.out("PA", b"m" * 64), k.back("PA", b"n" * 64), k.out("A"),
           restart(), k.out("PA", b"m" * 64), k.back("PA", b"n" * 64, seq=k.s + 3000000),
           k.out("A", ack=k.s + 3000064), k.back("R", seq=k.s + 3000010),
           k.back("R", seq=k.s + 3000074), k.out("A", ack=k.s + 3000064), collect(),
           restart(), k.back("PA", b"n" * 64, seq=k.s + 5000000), k.out("A", ack=k.s + 5000064),
           flush(), advance(3)]  # past the port's reuse delay: the NAT keeps SPORT again
    k2 = Conv(family, 0xFFFFFFFF, 77)
    k2_ops = [k2.out("S", win=64240, options=SYN_OPTS), restart(),
              k2.back("SA", win=65160, options=SYNACK_OPTS), k2.out("A"), k2.out("PA", b"after"),
              restart(), k2.back("R", seq=k2.s), collect()]
    return b"".join(ops + k2_ops)


def window_env_syn(family: int) -> bytes:
    """The environment lost the connection and opens the same tuple again: its bare SYN passes
    unchecked (RFC 5961 4.2), the server's challenge ACK, the environment's exact RST, the SYN
    again (a reopen); also a simultaneous open (the server's SYN without ACK)."""
    k = Conv(family, 100, 200)
    ops = [k.handshake(), k.out("PA", b"s" * 30), k.back("A")]
    old_c = k.c
    ops += [k.out("S", seq=0x50000000, win=64240, options=SYN_OPTS), k.back("A"),
            k.out("R", seq=old_c), k.out("S", seq=0x50000000, win=64240, options=SYN_OPTS),
            k.back("SA", seq=0x60000000, ack=0x50000001), collect()]
    k2 = Conv(family, 0xF0000000, 0x0F000000)
    return b"".join(ops) + flush() + advance(3) + b"".join([
        k2.out("S", options=SYN_OPTS), k2.back("S", options=[("WScale", 14)]),
        k2.out("SA", options=[("WScale", 3)]), k2.back("SA"), k2.out("A"), collect()])


def translate_seeds() -> Dict[str, bytes]:
    s: Dict[str, bytes] = {}
    for f in (4, 6):
        s[f"tcp{f}_session"] = tcp_session(f)
        s[f"tcp{f}_session_partial"] = tcp_session(f, partial=True)
        s[f"udp{f}_session"] = udp_session(f)
        s[f"udp{f}_session_partial"] = udp_session(f, partial=True)
        s[f"tcp{f}_rst_and_reopen"] = b"".join([
            tr(tcp_out(f, "S")), tr(tcp_in(f, "SA"), reply=True), tr(tcp_out(f, "A", seq=1001)),
            tr(tcp_in(f, "R", seq=5001), reply=True), tr(tcp_out(f, "A", seq=1001)),
            tr(tcp_out(f, "S", seq=9000)), collect()])
        s[f"icmp{f}_error_tcp"] = icmp_error(f, "tcp")
        s[f"icmp{f}_error_udp"] = icmp_error(f, "udp")
        s[f"udp{f}_pool_exhaustion"] = many_flows(f, "udp", 36) + collect()
        s[f"unsolicited{f}"] = tr(tcp_in(f, "S"), reply=True) + tr(udp_in(f), reply=True)
        s[f"ttl{f}_1"] = tr(udp_out(f, **({"ttl": 1} if f == 4 else {"hlim": 1})))
        s[f"tcp{f}_not_syn"] = tr(tcp_out(f, "A")) + tr(tcp_out(f, "F"))
    s["table_full"] = many_flows(4, "tcp", 34) + many_flows(6, "tcp", 34) + collect()
    s["delete_and_flush"] = (tr(tcp_out(4, "S")) + tr(tcp_in(4, "SA"), reply=True)
                             + tr(udp_out(4)) + tr(udp_out(6))
                             + collect() + delete(0) + delete(1) + tr(udp_out(6, payload=b"z"))
                             + flush() + tr(udp_in(6), reply=True))
    s["eni_disabled"] = (eni_enabled(0, False) + tr(udp_out(4)) + eni_enabled(1, False)
                         + tr(udp_out(4, sport=40002)) + eni_enabled(0, True)
                         + tr(udp_out(4, sport=40003)) + collect())
    s["sg_denied_udp4"] = tr(udp_out(4, dport=60001)) + collect()
    s["tuple_collision"] = tr(udp_out(4)) + tr(ip(4, host(4), eni(4)) / UDP(sport=53, dport=SPORT)
                                               / Raw(b"x"))
    s["expiry"] = tr(udp_out(4)) + tr(tcp_out(6, "S")) + advance(200) + advance(200) + collect()
    s["ipv6_ext_headers"] = (
        tr(IPv6(src=ENV6, dst=HOST6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
           / TCP(sport=SPORT, dport=443, flags="S"))
        + tr(IPv6(src=HOST6, dst=ENI6) / IPv6ExtHdrRouting() / TCP(sport=443, dport=SPORT,
                                                                    flags="SA", ack=1001),
             reply=True))
    ah = bytes([17, 4, 0, 0]) + (0x1000).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\0" * 12
    s["ipv6_ah"] = tr(raw(IPv6(src=ENV6, dst=HOST6, nh=51)) + ah
                      + raw(UDP(sport=SPORT, dport=53, chksum=0x1234) / Raw(b"q")))
    chain = IPv6(src=ENV6, dst=HOST6)
    for _ in range(9):
        chain = chain / IPv6ExtHdrDestOpt()
    s["ipv6_long_chain"] = tr(chain / UDP(sport=SPORT, dport=53))
    s["fragments"] = (tr(IP(src=ENV4, dst=HOST4, flags="MF") / UDP(sport=SPORT, dport=53)
                         / Raw(b"a" * 32))
                      + tr(IP(src=ENV4, dst=HOST4, frag=5) / Raw(b"b" * 16))
                      + tr(IPv6(src=ENV6, dst=HOST6) / IPv6ExtHdrFragment(m=1, id=7)
                           / UDP(sport=SPORT, dport=53) / Raw(b"c" * 32)))
    for f in (4, 6):
        s[f"frag{f}_udp"] = frag_udp(f)
        s[f"frag{f}_tcp"] = frag_tcp(f)
        s[f"frag{f}_edges"] = frag_edges(f)
    s["frag4_udp_no_checksum"] = b"".join(
        tr(p) for p in fragmented(4, ENV4, HOST4, UDP(sport=SPORT, dport=53, chksum=0)
                                  / Raw(b"n" * 40), 5))
    s["frag4_partial"] = (tr(fragmented(4, ENV4, HOST4, UDP(sport=SPORT, dport=53)
                                        / Raw(b"p" * 40), 6)[0], partial=True)
                          + tr(fragmented(4, ENV4, HOST4, UDP(sport=SPORT, dport=53)
                                          / Raw(b"p" * 40), 6)[1], partial=True))
    s["frag6_atomic"] = (tr(IPv6(src=ENV6, dst=HOST6) / IPv6ExtHdrFragment(m=0, offset=0, id=3)
                            / UDP(sport=SPORT, dport=53) / Raw(b"whole"))
                         + tr(IPv6(src=HOST6, dst=ENI6) / IPv6ExtHdrFragment(m=0, offset=0, id=4)
                              / UDP(sport=53, dport=SPORT) / Raw(b"whole"), reply=True))
    # IPv6: the fragmentable part starts with a destination options header, so the later
    # fragment's Fragment header names that (60), not UDP
    d6 = raw(IPv6(src=ENV6, dst=HOST6) / IPv6ExtHdrDestOpt() / UDP(sport=SPORT, dport=53)
             / Raw(b"o" * 40))[40:]
    s["frag6_ext_in_fragmentable"] = (tr(frag(6, ENV6, HOST6, 60, d6[:32], 0, True, 21))
                                      + tr(frag(6, ENV6, HOST6, 60, d6[32:], 32, False, 21)))
    s["ipv4_options"] = tr(IP(src=ENV4, dst=HOST4, options=b"\x01\x01\x01\x00")
                           / TCP(sport=SPORT, dport=443, flags="S"))
    s["tcp_options"] = tr(IP(src=ENV4, dst=HOST4) / TCP(sport=SPORT, dport=443, flags="S",
                                                        options=[("MSS", 1460), ("SAckOK", b""),
                                                                 ("WScale", 7), ("NOP", None)]))
    s["truncated"] = b"".join([
        tr(b""), tr(b"\x45"), tr(trunc(tcp_out(4, "S"), 19)), tr(trunc(tcp_out(4, "S"), 30)),
        tr(trunc(tcp_out(6, "S"), 39)), tr(trunc(tcp_out(6, "S"), 50)),
        tr(trunc(udp_out(4), 24)), tr(trunc(udp_out(6), 44)),
    ])
    s["bad_fields"] = b"".join([
        tr(edit(tcp_out(4, "S"), 0, b"\x44")), tr(edit(tcp_out(4, "S"), 10, b"\x12\x34")),
        tr(edit(tcp_out(4, "S"), 2, b"\xff\xff")), tr(edit(tcp_out(6, "S"), 4, b"\x00\x05")),
        tr(edit(tcp_out(4, "S"), 32, b"\x40")), tr(edit(tcp_out(4, "S"), 32, b"\xf0")),
        tr(edit(udp_out(4), 24, b"\x00\x07")), tr(edit(udp_out(6), 46, b"\x00\x00")),
        tr(edit(tcp_out(4, "S"), 0, b"\x55")),
    ])
    s["bad_l4_checksums"] = (tr(TCP_bad_csum(4)) + tr(ip(4, env(4), host(4))
                                                      / UDP(sport=SPORT, dport=53, chksum=0)
                                                      / Raw(b"nocsum")))
    for f in (4, 6):
        s[f"window{f}_session"] = window_session(f, 1000, 5000)
        s[f"window{f}_wrap"] = window_session(f, 0xFFFFFFF8, 0xFFFFFC00)
        s[f"window{f}_rst"] = window_rst(f)
        s[f"window{f}_forged"] = window_forged(f)
        s[f"window{f}_restart"] = window_restart(f)
        s[f"window{f}_env_syn"] = window_env_syn(f)
    s["window4_session_partial"] = window_session(4, 0x80000000, 0x7FFFFFFF, partial=True)
    s["oversized"] = tr(ip(6, env(6), host(6)) / UDP(sport=SPORT, dport=53)
                        / Raw(b"\xab" * 8000))
    return s


def TCP_bad_csum(family):
    return ip(family, env(family), host(family)) / TCP(sport=SPORT, dport=443, flags="S",
                                                       chksum=0xBEEF)


# ---- fuzz_frame ops -----------------------------------------------------------------------------
GW_MAC, ENI_MAC = "02:68:70:00:00:01", "02:68:70:00:00:e0"
ENV_MAC, HOST_MAC = "02:00:00:00:00:02", "02:00:00:00:00:05"
F_ENV4, F_GW4, F_ENV6, F_GW6 = "198.19.0.2", "198.19.0.1", "2001:2:0:f000::2", "2001:2:0:f000::1"
F_ENI4, F_ENI6, F_HOST4, F_HOST6 = "198.18.1.4", "2001:2:0:1::4", "198.18.1.5", "2001:2:0:1::5"


def fr(frame, on_eni: bool = False, csum: bool = False, step: int = 1) -> bytes:
    b = raw(frame) if not isinstance(frame, (bytes, bytearray)) else bytes(frame)
    c = (4 if on_eni else 0) | (8 if csum else 0) | (min(step, 15) << 4)
    return bytes([c, len(b) >> 8, len(b) & 0xFF]) + b


def tick(seconds: int) -> bytes:
    return bytes([3, seconds])


def frame_seeds() -> Dict[str, bytes]:
    to_gw = Ether(src=ENV_MAC, dst=GW_MAC)
    to_eni = Ether(src=HOST_MAC, dst=ENI_MAC)
    arp_gw = Ether(src=ENV_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ENV_MAC, psrc=F_ENV4,
                                                               pdst=F_GW4)
    arp_reply = Ether(src=HOST_MAC, dst=ENI_MAC) / ARP(op=2, hwsrc=HOST_MAC, psrc=F_HOST4,
                                                       hwdst=ENI_MAC, pdst=F_ENI4)
    ns = (Ether(src=HOST_MAC, dst="33:33:ff:00:00:04")
          / IPv6(src=F_HOST6, dst="ff02::1:ff00:4", hlim=255)
          / ICMPv6ND_NS(tgt=F_ENI6) / ICMPv6NDOptSrcLLAddr(lladdr=HOST_MAC))
    na = (Ether(src=HOST_MAC, dst=ENI_MAC) / IPv6(src=F_HOST6, dst=F_ENI6, hlim=255)
          / ICMPv6ND_NA(tgt=F_HOST6, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=HOST_MAC))
    udp4 = to_gw / IP(src=F_ENV4, dst=F_HOST4) / UDP(sport=40001, dport=53) / Raw(b"q" * 20)
    udp4_back = to_eni / IP(src=F_HOST4, dst=F_ENI4) / UDP(sport=53, dport=40001) / Raw(b"a")
    tcp6 = to_gw / IPv6(src=F_ENV6, dst=F_HOST6) / TCP(sport=40002, dport=443, flags="S")
    tcp6_back = to_eni / IPv6(src=F_HOST6, dst=F_ENI6) / TCP(sport=443, dport=40002,
                                                             flags="SA", ack=1)
    s = {
        "arp_and_udp4": fr(arp_gw) + fr(udp4) + fr(arp_reply, on_eni=True)
        + fr(udp4_back, on_eni=True) + tick(2),
        "ndp_and_tcp6": fr(ns, on_eni=True) + fr(tcp6) + fr(na, on_eni=True)
        + fr(tcp6_back, on_eni=True) + tick(40) + tick(40),
        "unresolved_queue": b"".join(fr(udp4, step=0) for _ in range(12)) + tick(1) + tick(1)
        + tick(1) + tick(1),
        "rst_for_unknown_tcp": fr(to_gw / IP(src=F_ENV4, dst=F_HOST4)
                                  / TCP(sport=40003, dport=443, flags="A", seq=7, ack=9)),
        "odd_frames": fr(b"") + fr(b"\x02" * 13) + fr(to_gw / Raw(b"\x08\x00"))
        + fr(Ether(src=ENV_MAC, dst="02:00:00:00:00:99") / IP(src=F_ENV4, dst=F_HOST4))
        + fr(to_gw / IP(src="198.19.0.77", dst=F_HOST4) / UDP())
        + fr(to_gw / IP(src=F_ENV4, dst=F_GW4) / UDP())
        + fr(raw(arp_gw)[:30]) + fr(raw(ns)[:60], on_eni=True),
        "fragments_udp4": fr(arp_gw) + b"".join(
            fr(to_gw / p) for p in fragmented(4, F_ENV4, F_HOST4, UDP(sport=40001, dport=53)
                                              / Raw(b"f" * 40), 31))
        + fr(arp_reply, on_eni=True) + b"".join(
            fr(to_eni / p, on_eni=True)
            for p in fragmented(4, F_HOST4, F_ENI4, UDP(sport=53, dport=40001)
                                / Raw(b"g" * 40), 32)) + tick(2),
        "partial_checksum": fr(udp4, csum=True) + fr(arp_reply, on_eni=True)
        + fr(udp4_back, on_eni=True, csum=True),
    }
    return s


def write(dirname: str, seeds: Dict[str, bytes], check: bool) -> List[str]:
    d = os.path.join(HERE, "corpus", dirname)
    problems = []
    existing = set(os.listdir(d)) if os.path.isdir(d) else set()
    if check:
        for name, data in seeds.items():
            path = os.path.join(d, name)
            if name not in existing or open(path, "rb").read() != data:
                problems.append(f"{dirname}/{name} differs from make_corpus.py's output")
        for extra in sorted(existing - set(seeds)):
            problems.append(f"{dirname}/{extra} is not written by make_corpus.py")
        return problems
    os.makedirs(d, exist_ok=True)
    for extra in existing - set(seeds):
        os.unlink(os.path.join(d, extra))
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="compare with the committed files instead of writing them")
    args = ap.parse_args(argv)
    problems = write("translate", translate_seeds(), args.check)
    problems += write("frame", frame_seeds(), args.check)
    for p in problems:
        print(p, file=sys.stderr)
    if not args.check:
        print(f"wrote {len(translate_seeds())} translate and {len(frame_seeds())} frame seeds "
              f"under {os.path.join(HERE, 'corpus')}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
