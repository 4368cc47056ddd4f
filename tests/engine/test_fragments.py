"""IP fragments through the NAT (issue 7), on both engines.

A fragmented TCP/UDP datagram carries its ports only in its FIRST fragment (offset 0), so the
engine tracks each datagram (key: direction, family, source, destination, IP identification;
IPv4 also the protocol) once its first fragment passed conntrack, and translates the LATER
fragments of that datagram by address alone. Nothing is reassembled or held back: a later
fragment with no tracked first is dropped (``fragment``), so an unsolicited inbound fragment
never passes. Linux does the same job by reassembling in nf_defrag (ip_fragment.c, bounded by
ipfrag_high_thresh, ipfrag_time 30 s / ip6frag_time 60 s); VPP's "shallow virtual
reassembly" (ip4_sv_reass) translates fragments without reassembling, as here.

The checks do not trust the engine: every translated datagram is reassembled here (test-side
code, RFC 791 / RFC 8200 4.5) and compared byte for byte with what scapy builds for the
expected addresses and ports, checksums recomputed by scapy over the WHOLE datagram (the first
fragment's L4 checksum is updated incrementally and covers bytes the engine never sees).
Later fragments must differ from what came in only in the NAT's address, the TTL / hop limit
and the IPv4 header checksum.
"""
from __future__ import annotations

import functools
import socket
import struct
from typing import List, Optional, Tuple

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
    fragment6,
)
from scapy.packet import Raw

from hyperplane import DropReason, Timeouts, Tuple5, Verdict
from kit.frames import ENI_A, ENV, HOST, assert_checksums_valid, dissect, fields, ones_sum

R = DropReason
NEW, EST, REPLY, DROP = Verdict.NEW, Verdict.ESTABLISHED, Verdict.REPLY, Verdict.DROP
#: a port range without the environments' ports: every translation changes the port too
NAT_PORTS = dict(port_min=50000, port_max=50999)
#: connections that outlive every fragment tracker, so a tracker's own timeout is what is seen
LONG_UDP = Timeouts(udp_unreplied=600.0, udp_replied=600.0)
EPORT, HPORT = {"udp": 40001, "tcp": 40002}, {"udp": 9000, "tcp": 443}
LIFETIME = {4: 30.0, 6: 60.0}            # ipfrag_time / ip6frag_time
MAX_DATAGRAMS = 1024
FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
PROTOS = pytest.mark.parametrize("proto", ["udp", "tcp"])


def eni(family: int) -> str:
    return ENI_A.ipv4 if family == 4 else ENI_A.ipv6


def af(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


# ---- building ---------------------------------------------------------------------------------
def datagram(family: int, proto: str, src: str, dst: str, sport: int, dport: int,
             payload: bytes, ident: int, *, ttl: int = 64, flags: str = "PA", seq: int = 1001,
             ack: int = 5001, options=(), before=(), after=()):
    """A scapy datagram ready for fragment()/fragment6(): IPv4 with identification ``ident``,
    or IPv6 with ``before`` extension headers, a Fragment header with that identification and
    ``after`` extension headers. L4 checksums are computed over the whole datagram."""
    if family == 4:
        pkt = IP(src=src, dst=dst, ttl=ttl, id=ident)
    else:
        pkt = IPv6(src=src, dst=dst, hlim=ttl)
        for h in before:
            pkt = pkt / h
        pkt = pkt / IPv6ExtHdrFragment(id=ident)
        for h in after:
            pkt = pkt / h
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, options=list(options))
    else:
        l4 = UDP(sport=sport, dport=dport)
    return pkt / l4 / Raw(payload)


def pieces(pkt, size: int) -> List[bytes]:
    """The fragments of ``pkt``: IPv4 with ``size`` bytes of data each; IPv6 ``size`` bytes
    long each (header included), as scapy's fragment()/fragment6() cut them."""
    if IP in pkt:
        return [raw(f) for f in fragment(pkt, fragsize=size)]
    return [raw(f) for f in fragment6(pkt, size)]


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def segment(pkt) -> bytes:
    """The transport header and data of a datagram built by datagram() without extension
    headers other than the Fragment header."""
    b = raw(pkt)
    return b[20:] if b[0] >> 4 == 4 else b[48:]


def frag_info(b: bytes) -> Tuple[int, bool, int, int, int]:
    """(offset in bytes, more fragments, identification, start of the fragment's data, end of
    the packet) of one IPv4 fragment or IPv6 packet with a Fragment header."""
    if b[0] >> 4 == 4:
        ihl = (b[0] & 0x0F) * 4
        fo = struct.unpack_from("!H", b, 6)[0]
        return ((fo & 0x1FFF) * 8, bool(fo & 0x2000), struct.unpack_from("!H", b, 4)[0], ihl,
                struct.unpack_from("!H", b, 2)[0])
    nh, off = b[6], 40
    while nh != 44:
        assert nh in (0, 43, 60), f"no Fragment header in {b[:80].hex()}"
        nh, off = b[off], off + (b[off + 1] + 1) * 8
    fo = struct.unpack_from("!H", b, off + 2)[0]
    return (fo & 0xFFF8, bool(fo & 1), struct.unpack_from("!I", b, off + 4)[0], off + 8,
            40 + struct.unpack_from("!H", b, 4)[0])


def raw_fragment(template: bytes, offset: int, more: bool, data: bytes) -> bytes:
    """A fragment of the same datagram as ``template`` (same headers, identification and, for
    IPv6, the same headers before the Fragment header) with the given offset, M flag and data;
    lengths and the IPv4 header checksum made right."""
    if template[0] >> 4 == 4:
        ihl = (template[0] & 0x0F) * 4
        b = bytearray(template[:ihl]) + data
        b[2:4] = len(b).to_bytes(2, "big")
        b[6:8] = ((0x2000 if more else 0) | (offset // 8)).to_bytes(2, "big")
        return fix_ip4(b)
    _, _, _, start, _ = frag_info(template)
    b = bytearray(template[:start]) + data
    b[4:6] = (len(b) - 40).to_bytes(2, "big")
    b[start - 6:start - 4] = (offset | int(more)).to_bytes(2, "big")
    return bytes(b)


def fix_ip4(b: bytearray) -> bytes:
    ihl = (b[0] & 0x0F) * 4
    b[10:12] = b"\0\0"
    b[10:12] = (0xFFFF ^ ones_sum(bytes(b[:ihl]))).to_bytes(2, "big")
    return bytes(b)


# ---- checking -------------------------------------------------------------------------------
def reassemble(frags: List[bytes]) -> bytes:
    """Test-side reassembly (RFC 791 section 3.2 / RFC 8200 section 4.5): the fragments must be
    of one datagram and cover it without gap or overlap, only the last without M set."""
    recs = []
    for b in frags:
        off, more, ident, start, end = frag_info(b)
        if b[0] >> 4 == 4:
            key = (ident, b[9], b[12:20])
        else:
            key = (ident, b[8:40])
        recs.append((off, more, key, b, b[start:end], start))
    assert len({r[2] for r in recs}) == 1, "fragments of different datagrams"
    recs.sort(key=lambda r: r[0])
    pos = 0
    for off, more, _, _, data, _ in recs:
        assert off == pos, f"gap or overlap at {pos} (next fragment at {off})"
        pos += len(data)
    assert [r[1] for r in recs] == [True] * (len(recs) - 1) + [False], "M flags"
    first, data = recs[0][3], b"".join(r[4] for r in recs)
    if first[0] >> 4 == 4:
        hdr = bytearray(first[:recs[0][5]])
        hdr[2:4] = (len(hdr) + len(data)).to_bytes(2, "big")
        hdr[6:8] = b"\0\0"
        return fix_ip4(hdr) + data
    start = recs[0][5]
    # drop the Fragment header: its next header goes where the header before it pointed
    nh_at, nh, off = 6, first[6], 40
    while nh != 44:
        nh_at, nh, off = off, first[off], off + (first[off + 1] + 1) * 8
    hdr = bytearray(first[:start - 8])
    hdr[nh_at] = first[start - 8]
    hdr[4:6] = (len(hdr) - 40 + len(data)).to_bytes(2, "big")
    return bytes(hdr) + data


def expected_whole(sent_whole: bytes, *, src=None, sport=None, dst=None, dport=None) -> bytes:
    """The datagram as the NAT must deliver it: ``sent_whole`` with the given address/port
    changed, the TTL / hop limit one less and every checksum recomputed by scapy."""
    p = dissect(sent_whole)
    ip = p[IP] if IP in p else p[IPv6]
    l4 = p[TCP] if TCP in p else p[UDP]
    if src is not None:
        ip.src = src
    if dst is not None:
        ip.dst = dst
    if sport is not None:
        l4.sport = sport
    if dport is not None:
        l4.dport = dport
    if IP in p:
        ip.ttl -= 1
        del ip.chksum
    else:
        ip.hlim -= 1
    del l4.chksum
    return raw(p)


def assert_later_translated(before: bytes, after: bytes, direction: str, addr: str) -> None:
    """A later fragment: only the source (outbound) or destination (inbound) address, the TTL /
    hop limit and the IPv4 header checksum differ; the header checksum verifies."""
    assert after is not None and len(after) == len(before)
    v4 = before[0] >> 4 == 4
    want = bytearray(before)
    alen = 4 if v4 else 16
    at = (12 if v4 else 8) if direction == "outbound" else (16 if v4 else 24)
    want[at:at + alen] = socket.inet_pton(af(4 if v4 else 6), addr)
    want[8 if v4 else 7] -= 1
    got = bytearray(after)
    if v4:
        assert ones_sum(bytes(got[:(got[0] & 0x0F) * 4])) == 0xFFFF, "IPv4 header checksum"
        want[10:12] = got[10:12] = b"\0\0"
    assert bytes(got) == bytes(want), (f"later fragment rewritten wrongly:\n  got  "
                                       f"{after[:64].hex()}\n  want {bytes(want)[:64].hex()}")


def nat_port(first_out: bytes) -> int:
    return fields(first_out).sport


def send(eng, direction: str, pkts: List[bytes], now: float):
    """Each packet through the engine; the list of results."""
    call = eng.outbound if direction == "outbound" else eng.inbound
    return [call(p, now=now) for p in pkts]


def drops(eng) -> dict:
    return {k: v for k, v in eng.counters()["drops"].items() if v}


# ---- flows ------------------------------------------------------------------------------------
class Flow:
    """An outbound datagram from ENV[family][0] to HOST[family][0] sent in fragments, and what
    the engine made of them."""

    def __init__(self, eng, family: int, proto: str = "udp", size: int = 3001, ident: int = 0x4242,
                 now: float = 1.0, piece: int = 1000, count: Optional[int] = None):
        self.family, self.proto = family, proto
        env, host = ENV[family][0], HOST[family][0]
        self.pkt = datagram(family, proto, env, host, EPORT[proto], HPORT[proto],
                            payload(size), ident)
        self.sent = pieces(self.pkt, piece)
        assert len(self.sent) >= 4
        self.whole = reassemble(self.sent)
        assert_checksums_valid(self.whole)      # scapy computed it over the whole datagram
        self.results = send(eng, "outbound", self.sent[:count], now)   # count: the first ones
        self.port = nat_port(self.results[0].packet) if self.results[0].packet else None


def open_tcp(eng, family: int) -> int:
    """A TCP handshake from ENV[family][0] (whole packets); returns the NAT port."""
    from kit.frames import tcp
    env, host = ENV[family][0], HOST[family][0]
    syn = eng.outbound(tcp(family, env, host, EPORT["tcp"], HPORT["tcp"], "S", seq=1000),
                       now=1.0)
    assert syn.verdict == NEW
    port = nat_port(syn.packet)
    sa = eng.inbound(tcp(family, host, eni(family), HPORT["tcp"], port, "SA", seq=5000,
                         ack=1001), now=1.0)
    assert sa.verdict == REPLY
    ack = eng.outbound(tcp(family, env, host, EPORT["tcp"], HPORT["tcp"], "A", seq=1001,
                           ack=5001), now=1.0)
    assert ack.verdict == EST
    return port


# ---- datagrams that pass ------------------------------------------------------------------
@FAMILIES
def test_outbound_udp_datagram_in_fragments(make_engine, family):
    """3009 bytes of UDP in 4 fragments: the first creates the connection, the later ones
    follow it; reassembled, the datagram comes from ENI:port with a valid UDP checksum."""
    eng = make_engine(**NAT_PORTS)
    f = Flow(eng, family)
    assert [r.verdict for r in f.results] == [NEW] + [EST] * (len(f.sent) - 1)
    assert all(r.reason == R.NONE for r in f.results)
    out = [r.packet for r in f.results]
    assert 50000 <= f.port <= 50999
    for before, after in zip(f.sent[1:], out[1:]):
        assert_later_translated(before, after, "outbound", eni(family))
    got = reassemble(out)
    assert got == expected_whole(f.whole, src=eni(family), sport=f.port)
    assert_checksums_valid(got)
    (e,) = eng.entries(now=1.0)
    assert (e.proto, e.orig, e.state) == (
        "udp", Tuple5(ENV[family][0], EPORT["udp"], HOST[family][0], HPORT["udp"]), "UNREPLIED")
    assert (e.packets_orig, e.bytes_orig) == (len(f.sent), sum(len(p) for p in f.sent))
    c = eng.counters()
    assert c["fragments_translated"] == len(f.sent)
    assert (c["packets_outbound"], c["connections_created"]) == (len(f.sent), 1)
    assert drops(eng) == {}


@FAMILIES
def test_inbound_fragmented_reply_reaches_the_environment(make_engine, family):
    """The host answers ENI:port with 5001 bytes in fragments: every one is a REPLY and the
    datagram reassembles to the environment's address and port, checksum valid."""
    eng = make_engine(**NAT_PORTS)
    f = Flow(eng, family)
    host = HOST[family][0]
    rpkt = datagram(family, "udp", host, eni(family), HPORT["udp"], f.port, payload(5001, 3),
                    0x77AA)
    rsent = pieces(rpkt, 1200)
    assert len(rsent) >= 5
    res = send(eng, "inbound", rsent, now=2.0)
    assert [r.verdict for r in res] == [REPLY] * len(rsent)
    for before, r in zip(rsent[1:], res[1:]):
        assert_later_translated(before, r.packet, "inbound", ENV[family][0])
    got = reassemble([r.packet for r in res])
    assert got == expected_whole(reassemble(rsent), dst=ENV[family][0], dport=EPORT["udp"])
    assert_checksums_valid(got)
    (e,) = eng.entries(now=2.0)
    assert e.state == "REPLIED"
    assert (e.packets_reply, e.bytes_reply) == (len(rsent), sum(len(p) for p in rsent))
    c = eng.counters()
    assert c["fragments_translated"] == len(f.sent) + len(rsent)
    assert c["packets_inbound"] == len(rsent)
    assert drops(eng) == {}


@FAMILIES
def test_tcp_segments_in_fragments_both_ways(make_engine, family):
    eng = make_engine(**NAT_PORTS)
    port = open_tcp(eng, family)
    env, host = ENV[family][0], HOST[family][0]
    out_pkt = datagram(family, "tcp", env, host, EPORT["tcp"], HPORT["tcp"], payload(3000, 1),
                       0x1111, seq=1001, ack=5001)
    out_sent = pieces(out_pkt, 1000)
    res = send(eng, "outbound", out_sent, now=2.0)
    assert [r.verdict for r in res] == [EST] * len(out_sent)
    got = reassemble([r.packet for r in res])
    assert got == expected_whole(reassemble(out_sent), src=eni(family), sport=port)
    assert_checksums_valid(got)
    in_pkt = datagram(family, "tcp", host, eni(family), HPORT["tcp"], port, payload(4000, 2),
                      0x2222, seq=5001, ack=4001)
    in_sent = pieces(in_pkt, 1400)
    res = send(eng, "inbound", in_sent, now=2.0)
    assert [r.verdict for r in res] == [REPLY] * len(in_sent)
    for before, r in zip(in_sent[1:], res[1:]):
        assert_later_translated(before, r.packet, "inbound", env)
    got = reassemble([r.packet for r in res])
    assert got == expected_whole(reassemble(in_sent), dst=env, dport=EPORT["tcp"])
    assert_checksums_valid(got)
    (e,) = eng.entries(now=2.0)
    assert e.state == "ESTABLISHED"
    assert (e.packets_orig, e.packets_reply) == (2 + len(out_sent), 1 + len(in_sent))
    assert eng.counters()["fragments_translated"] == len(out_sent) + len(in_sent)


def test_tcp_first_fragment_must_hold_the_options_too(make_engine):
    """TCP with 12 bytes of options (data offset 8): a 24-byte first fragment holds the fixed
    header but not the whole one (bad_fragment); a 32-byte one does."""
    eng = make_engine(**NAT_PORTS)
    port = open_tcp(eng, 4)
    ts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    def mk(ident):
        return datagram(4, "tcp", ENV[4][0], HOST[4][0], EPORT["tcp"], HPORT["tcp"],
                        payload(200), ident, options=ts)

    assert raw(mk(1))[32] >> 4 == 8                               # data offset 8: 32 bytes
    short = pieces(mk(0x31), 24)
    assert eng.outbound(short[0], now=2.0) == (DROP, None, R.BAD_FRAGMENT)
    whole = pieces(mk(0x32), 32)
    res = send(eng, "outbound", whole, now=2.0)
    assert [r.verdict for r in res] == [EST] * len(whole)
    assert reassemble([r.packet for r in res]) == expected_whole(
        reassemble(whole), src=ENI_A.ipv4, sport=port)


def test_ipv6_extension_headers_before_and_after_the_fragment_header(make_engine):
    """Destination Options before the Fragment header (unfragmentable part, in every fragment)
    and after it (in the first fragment only): walked; the datagram passes intact."""
    eng = make_engine(**NAT_PORTS)
    pkt = datagram(6, "udp", ENV[6][0], HOST[6][0], EPORT["udp"], HPORT["udp"], payload(3000),
                   0xE0E0, before=[IPv6ExtHdrDestOpt()], after=[IPv6ExtHdrDestOpt()])
    sent = pieces(pkt, 1000)
    res = send(eng, "outbound", sent, now=1.0)
    assert [r.verdict for r in res] == [NEW] + [EST] * (len(sent) - 1)
    port = nat_port(res[0].packet)
    for before, r in zip(sent[1:], res[1:]):
        assert_later_translated(before, r.packet, "outbound", ENI_A.ipv6)
    got = reassemble([r.packet for r in res])
    assert got == expected_whole(reassemble(sent), src=ENI_A.ipv6, sport=port)
    assert_checksums_valid(got)


def test_fragments_in_one_batch(make_engine):
    """translate_batch: the fragments of a datagram (IPv4 and IPv6) in one call, in place."""
    eng = make_engine(**NAT_PORTS)
    d4 = pieces(datagram(4, "udp", ENV[4][0], HOST[4][0], EPORT["udp"], HPORT["udp"],
                         payload(2500), 0xBA7C), 800)
    d6 = pieces(datagram(6, "udp", ENV[6][0], HOST[6][0], EPORT["udp"], HPORT["udp"],
                         payload(2500), 0xBA7C6), 800)
    pkts = d4 + d6
    buf, offs = bytearray(), []
    for p in pkts:
        offs.append(len(buf))
        buf += p
    n = len(pkts)
    v, r = bytearray(n), bytearray(n)
    assert eng.translate_batch(0, buf, offs, [len(p) for p in pkts], v, r, now=1.0) == n
    assert list(v) == [NEW] + [EST] * (len(d4) - 1) + [NEW] + [EST] * (len(d6) - 1)
    out = [bytes(buf[o:o + len(p)]) for o, p in zip(offs, pkts)]
    for fam, sent, got in ((4, d4, out[:len(d4)]), (6, d6, out[len(d4):])):
        whole = reassemble(got)
        assert whole == expected_whole(reassemble(sent), src=eni(fam), sport=fields(whole).sport)
        assert_checksums_valid(whole)
    assert eng.counters()["fragments_translated"] == n


# ---- datagrams that do not pass -------------------------------------------------------------
@PROTOS
@FAMILIES
def test_unsolicited_inbound_fragments_never_pass(make_engine, family, proto):
    """From the VPC, with a live connection on the ENI port but from another host: the first
    fragment is unsolicited and every later one a `fragment` drop; later fragments alone too;
    and a datagram id the environment used outbound opens nothing inbound."""
    eng = make_engine(**NAT_PORTS)
    if proto == "tcp":
        port = open_tcp(eng, family)
    else:
        port = Flow(eng, family, ident=0x5150, count=1).port     # its tracker stays live
    n_conn, before = len(eng), eng.counters()["fragments_translated"]
    stranger, host = HOST[family][1], HOST[family][0]
    flags = {"flags": "SA", "seq": 9000, "ack": 1001} if proto == "tcp" else {}
    dgram = datagram(family, proto, stranger, eni(family), HPORT[proto], port, payload(3000),
                     0x5150, **flags)
    sent = pieces(dgram, 1000)
    res = send(eng, "inbound", sent, now=2.0)
    assert res[0] == (DROP, None, R.UNSOLICITED)
    assert res[1:] == [(DROP, None, R.FRAGMENT)] * (len(sent) - 1)
    # later fragments alone (the first never sent), from the connection's own host this time,
    # and with the identification of the datagram the environment sent
    lone = pieces(datagram(family, proto, host, eni(family), HPORT[proto], port, payload(3000),
                           0x5150, **flags), 1000)[1:]
    assert send(eng, "inbound", lone, now=2.0) == [(DROP, None, R.FRAGMENT)] * len(lone)
    d = drops(eng)
    assert d == {"unsolicited": 1, "fragment": len(sent) - 1 + len(lone)}
    assert eng.counters()["fragments_translated"] == before
    assert len(eng) == n_conn


@PROTOS
@FAMILIES
def test_no_connection_no_fragment_passes(make_engine, family, proto):
    """An empty table: even a perfect first fragment (a SYN, for TCP) needs a connection
    inbound: unsolicited, no entry; its later fragments are dropped."""
    eng = make_engine(**NAT_PORTS)
    sent = pieces(datagram(family, proto, HOST[family][0], eni(family), 53, 50123,
                           payload(2000), 0xD00D, flags="S"), 600)
    res = send(eng, "inbound", sent, now=1.0)
    assert [r.reason for r in res] == [R.UNSOLICITED] + [R.FRAGMENT] * (len(sent) - 1)
    assert all(r.packet is None for r in res)
    assert (len(eng), eng.counters()["fragments_translated"]) == (0, 0)


@FAMILIES
def test_a_later_fragment_before_its_first_is_dropped_for_good(make_engine, family):
    """No reordering buffer: the early piece is dropped, the first still passes (alone: the
    early piece does not come out with it), the rest follow; a resent copy of the early piece
    then passes, which completes the datagram."""
    eng = make_engine(**NAT_PORTS)
    pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"], HPORT["udp"],
                   payload(3001), 0x0E0E)
    a, b, c, d = pieces(pkt, 1000)
    assert eng.outbound(c, now=1.0) == (DROP, None, R.FRAGMENT)
    first = eng.outbound(a, now=1.1)
    assert first.verdict == NEW and len(first.packet) == len(a)
    rest = send(eng, "outbound", [b, d], now=1.2)
    assert [r.verdict for r in rest] == [EST, EST]
    assert eng.counters()["fragments_translated"] == 3
    again = eng.outbound(c, now=1.3)
    assert again.verdict == EST
    got = reassemble([first.packet, rest[0].packet, again.packet, rest[1].packet])
    assert got == expected_whole(reassemble([a, b, c, d]), src=eni(family),
                                 sport=nat_port(first.packet))
    assert eng.counters()["fragments_translated"] == 4
    assert drops(eng) == {"fragment": 1}


@pytest.mark.parametrize("reason", ["security_group", "tcp_not_syn"])
@FAMILIES
def test_later_fragments_of_a_refused_first_are_dropped(make_engine, family, reason):
    eng = make_engine(**NAT_PORTS)
    if reason == "security_group":   # egress allows only TCP 443: a UDP datagram is refused
        eng.set_egress_rules([("198.18.0.0/15", "tcp", 443, 443), ("2001:2::/48", "tcp", 443,
                                                                       443)])
        pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"],
                       HPORT["udp"], payload(3000), 0x5EC)
    else:                            # a data segment of no connection
        pkt = datagram(family, "tcp", ENV[family][0], HOST[family][0], EPORT["tcp"],
                       HPORT["tcp"], payload(3000), 0x5EC, flags="PA")
    sent = pieces(pkt, 1000)
    res = send(eng, "outbound", sent, now=1.0)
    assert res == [(DROP, None, R[reason.upper()])] + [(DROP, None, R.FRAGMENT)] * (len(sent) - 1)
    assert len(eng) == 0 and eng.counters()["fragments_translated"] == 0


@FAMILIES
def test_a_deleted_connection_takes_its_fragments_with_it(make_engine, family):
    eng = make_engine(**NAT_PORTS)
    pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"], HPORT["udp"],
                   payload(3001), 0xDE1)
    a, b, c, d = pieces(pkt, 1000)
    assert eng.outbound(a, now=1.0).verdict == NEW
    assert eng.outbound(b, now=1.0).verdict == EST
    orig = Tuple5(ENV[family][0], EPORT["udp"], HOST[family][0], HPORT["udp"])
    assert eng.delete("udp", orig, now=1.5) is True
    assert send(eng, "outbound", [c, d], now=2.0) == [(DROP, None, R.FRAGMENT)] * 2
    assert len(eng) == 0
    assert eng.counters()["fragments_translated"] == 2


@FAMILIES
def test_the_key_holds_addresses_and_protocol(make_engine, family):
    """A later fragment with the identification of a tracked datagram but another source (or,
    IPv4, another protocol) belongs to no tracked datagram."""
    eng = make_engine(**NAT_PORTS)
    pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"], HPORT["udp"],
                   payload(3001), 0x7E7)
    a, b, c, d = pieces(pkt, 1000)
    assert eng.outbound(a, now=1.0).verdict == NEW
    other_src = bytearray(b)
    at = 12 if family == 4 else 8
    other_src[at:at + (4 if family == 4 else 16)] = socket.inet_pton(af(family), ENV[family][1])
    strays = [fix_ip4(other_src) if family == 4 else bytes(other_src)]
    if family == 4:
        other_proto = bytearray(c)
        other_proto[9] = 6
        strays.append(fix_ip4(other_proto))
    assert send(eng, "outbound", strays, now=1.0) == [(DROP, None, R.FRAGMENT)] * len(strays)
    assert [r.verdict for r in send(eng, "outbound", [b, c, d], now=1.0)] == [EST] * 3


# ---- malformed fragments ------------------------------------------------------------------------
@FAMILIES
def test_tiny_first_fragment_of_a_tcp_segment(make_engine, family):
    """RFC 1858's tiny fragment: a first fragment with 8 (or 16) bytes of a 20-byte TCP header
    is bad_fragment, even on a live connection, and the rest of its datagram is dropped."""
    eng = make_engine(**NAT_PORTS)
    open_tcp(eng, family)
    pkt = datagram(family, "tcp", ENV[family][0], HOST[family][0], EPORT["tcp"], HPORT["tcp"],
                   payload(100), 0x71)
    tmpl, seg = pieces(pkt, 64)[0], segment(pkt)
    for n in (8, 16):
        first = raw_fragment(tmpl, 0, True, seg[:n])
        assert eng.outbound(first, now=2.0) == (DROP, None, R.BAD_FRAGMENT), n
    # what follows the 8-byte first: IPv4 offset 8 is RFC 1858's overlap (bad_fragment too);
    # IPv6 offset 16 just has no first
    rest_at = 8 if family == 4 else 16
    rest = raw_fragment(tmpl, rest_at, False, seg[rest_at:])
    want = R.BAD_FRAGMENT if family == 4 else R.FRAGMENT
    assert eng.outbound(rest, now=2.0) == (DROP, None, want)
    # the control: the same datagram with a 24-byte first fragment passes
    res = send(eng, "outbound", [raw_fragment(tmpl, 0, True, seg[:24]),
                                 raw_fragment(tmpl, 24, False, seg[24:])], now=2.0)
    assert [r.verdict for r in res] == [EST, EST]
    assert eng.counters()["fragments_translated"] == 2


def test_ipv4_udp_first_fragment_without_data(make_engine):
    """A first fragment with M set and no byte of the UDP header."""
    eng = make_engine(**NAT_PORTS)
    tmpl = pieces(datagram(4, "udp", ENV[4][0], HOST[4][0], EPORT["udp"], HPORT["udp"],
                           payload(100), 0x99), 64)[0]
    assert eng.outbound(raw_fragment(tmpl, 0, True, b""), now=1.0) == \
        (DROP, None, R.BAD_FRAGMENT)


def test_ipv6_first_fragment_without_the_whole_header_chain(make_engine):
    """RFC 7112: the first fragment holds a Destination Options header but the UDP header
    is left to the second fragment."""
    eng = make_engine(**NAT_PORTS)
    pkt = datagram(6, "udp", ENV[6][0], HOST[6][0], EPORT["udp"], HPORT["udp"], payload(100),
                   0x7112, after=[IPv6ExtHdrDestOpt()])
    tmpl = pieces(pkt, 96)[0]
    start = frag_info(tmpl)[3]
    assert tmpl[start - 8] == 60                      # the Fragment header's next header
    chain = tmpl[start:]
    first = raw_fragment(tmpl, 0, True, chain[:8])    # the options header alone
    assert eng.outbound(first, now=1.0) == (DROP, None, R.BAD_FRAGMENT)
    assert len(eng) == 0


def test_ipv4_tcp_overlap_at_offset_8(make_engine):
    """IPv4 TCP at offset 8 (RFC 1858: it would rewrite the flags of a header that passed):
    bad_fragment, even after a valid first fragment of its datagram."""
    eng = make_engine(**NAT_PORTS)
    open_tcp(eng, 4)
    pkt = datagram(4, "tcp", ENV[4][0], HOST[4][0], EPORT["tcp"], HPORT["tcp"], payload(100),
                   0x0808)
    tmpl, seg = pieces(pkt, 24)[0], segment(pkt)
    assert eng.outbound(raw_fragment(tmpl, 0, True, seg[:24]), now=2.0).verdict == EST
    evil = raw_fragment(tmpl, 8, False, b"\0" * 5 + b"\x50\x02\xff" + seg[16:])  # doff 5, SYN
    assert eng.outbound(evil, now=2.0) == (DROP, None, R.BAD_FRAGMENT)
    assert drops(eng) == {"bad_fragment": 1}


@FAMILIES
def test_udp_at_offset_8_is_the_next_piece(make_engine, family):
    """UDP: an 8-byte first fragment holds the whole header, offset 8 is just the next piece."""
    eng = make_engine(**NAT_PORTS)
    pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"], HPORT["udp"],
                   payload(40), 0x0809)
    tmpl, seg = pieces(pkt, 64)[0], segment(pkt)
    res = send(eng, "outbound", [raw_fragment(tmpl, 0, True, seg[:8]),
                                 raw_fragment(tmpl, 8, False, seg[8:])], now=2.0)
    assert [r.verdict for r in res] == [NEW, EST]
    got = reassemble([r.packet for r in res])
    assert got == expected_whole(reassemble([raw_fragment(tmpl, 0, True, seg[:8]),
                                             raw_fragment(tmpl, 8, False, seg[8:])]),
                                 src=eni(family), sport=fields(got).sport)
    assert drops(eng) == {}


@FAMILIES
def test_more_fragments_with_a_length_not_a_multiple_of_8(make_engine, family):
    """M set and a data length that is no multiple of 8 (RFC 791 / RFC 8200 4.5): bad_fragment,
    a middle fragment of a tracked datagram or a first one; the last one may have any length."""
    eng = make_engine(**NAT_PORTS)
    f = Flow(eng, family, count=1)
    assert f.results[0].verdict == NEW
    a, b, c, d = f.sent
    off, more, _, start, end = frag_info(b)
    assert more
    short = raw_fragment(b, off, True, b[start:end - 1])      # 1 byte short of a multiple
    assert eng.outbound(short, now=1.0) == (DROP, None, R.BAD_FRAGMENT)
    # a first fragment 1 byte past a multiple of 8, of another datagram
    s = frag_info(a)[3]
    other = bytearray(a)
    if family == 4:
        other[4:6] = b"\x0b\xad"
    else:
        other[s - 4:s] = b"\x00\x00\x0b\xad"
    odd_first = raw_fragment(bytes(other), 0, True, a[s:] + b"\x00")
    assert eng.outbound(odd_first, now=1.0) == (DROP, None, R.BAD_FRAGMENT)
    # the real pieces pass; the last (3009 bytes of UDP: an odd remainder) too
    assert (frag_info(d)[4] - frag_info(d)[3]) % 8 != 0
    assert [r.verdict for r in send(eng, "outbound", [b, c, d], now=1.0)] == [EST] * 3
    assert drops(eng) == {"bad_fragment": 2}


@FAMILIES
def test_fragment_past_65535_bytes(make_engine, family):
    """A fragment of a tracked datagram reaching past 65,535 bytes is bad_fragment; one that
    stays inside is translated."""
    eng = make_engine(**NAT_PORTS)
    f = Flow(eng, family, count=1)
    tmpl = f.sent[1]
    assert eng.outbound(raw_fragment(tmpl, 65520, False, b"\x01" * 24), now=1.0) == \
        (DROP, None, R.BAD_FRAGMENT)
    assert eng.outbound(raw_fragment(tmpl, 65000, True, b"\x02" * 16), now=1.0).verdict == EST
    assert drops(eng) == {"bad_fragment": 1}


def test_fragments_of_other_protocols_are_unsupported(make_engine):
    eng = make_engine(**NAT_PORTS)
    icmp4 = [raw(f) for f in fragment(IP(src=ENV[4][0], dst=HOST[4][0], id=5) / ICMP(type=8)
                                      / Raw(payload(2000)), fragsize=800)]
    icmp6 = [raw(f) for f in fragment6(IPv6(src=ENV[6][0], dst=HOST[6][0])
                                       / IPv6ExtHdrFragment(id=6) / ICMPv6EchoRequest()
                                       / Raw(payload(2000)), 800)]
    gre_out = [raw(f) for f in fragment(IP(src=ENV[4][0], dst=HOST[4][0], id=7, proto=47)
                                        / Raw(payload(2000)), fragsize=800)]
    gre_in = [raw(f) for f in fragment(IP(src=HOST[4][0], dst=ENI_A.ipv4, id=8, proto=47)
                                       / Raw(payload(2000)), fragsize=800)]
    for direction, pkts in (("outbound", icmp4), ("outbound", icmp6), ("outbound", gre_out),
                            ("inbound", gre_in)):
        res = send(eng, direction, pkts, now=1.0)
        assert res == [(DROP, None, R.UNSUPPORTED_PROTOCOL)] * len(pkts), direction
    assert eng.counters()["fragments_translated"] == 0 and len(eng) == 0


# ---- the datagram table ---------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def small_datagram(family: int, ident: int) -> Tuple[bytes, ...]:
    """A 2-fragment UDP datagram of the same flow, identification ``ident``."""
    pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"], HPORT["udp"],
                   payload(24, ident), ident)
    out = tuple(pieces(pkt, 16 if family == 4 else 64))
    assert len(out) == 2
    return out


@FAMILIES
def test_fragment_table_holds_1024_datagrams(make_engine, family):
    """1024 datagrams in flight: the 1025th first fragment is fragment_table_full (its later
    fragment then has no first); completing one frees its place; once the trackers have timed
    out (30 s IPv4, 60 s IPv6), new first fragments are accepted again."""
    eng = make_engine(timeouts=LONG_UDP, **NAT_PORTS)
    life = LIFETIME[family]
    for i in range(1, MAX_DATAGRAMS + 1):
        r = eng.outbound(small_datagram(family, i)[0], now=1.0)
        assert r.verdict == (NEW if i == 1 else EST), i
    extra = small_datagram(family, 5000)
    assert eng.outbound(extra[0], now=2.0) == (DROP, None, R.FRAGMENT_TABLE_FULL)
    assert eng.outbound(extra[1], now=2.0) == (DROP, None, R.FRAGMENT)
    # completing datagram 1 forgets it: one place free
    assert eng.outbound(small_datagram(family, 1)[1], now=3.0).verdict == EST
    assert eng.outbound(small_datagram(family, 5001)[0], now=3.0).verdict == EST
    assert eng.outbound(small_datagram(family, 5002)[0], now=3.0) == \
        (DROP, None, R.FRAGMENT_TABLE_FULL)
    # just before the trackers of t=1 time out: still full
    assert eng.outbound(small_datagram(family, 5003)[0], now=1.0 + life - 1.0) == \
        (DROP, None, R.FRAGMENT_TABLE_FULL)
    # after: reclaimed, so a first fragment is accepted, and its datagram completes
    late = small_datagram(family, 5004)
    assert eng.outbound(late[0], now=1.0 + life + 1.0).verdict == EST
    assert eng.outbound(late[1], now=1.0 + life + 1.0).verdict == EST
    c = eng.counters()
    assert c["drops"]["fragment_table_full"] == 3
    assert c["connections_created"] == 1 and len(eng) == 1


@FAMILIES
def test_a_tracker_times_out(make_engine, family):
    """A datagram's later fragments pass until its tracker's time (30 s / 60 s from the first
    fragment) is up, then are `fragment` drops, while the connection lives on."""
    eng = make_engine(timeouts=LONG_UDP, **NAT_PORTS)
    life = LIFETIME[family]
    sent = Flow(eng, family, now=1.0, count=1).sent          # the first fragment only
    assert eng.outbound(sent[1], now=1.0).verdict == EST
    assert eng.outbound(sent[2], now=1.0 + life - 1.0).verdict == EST
    assert eng.outbound(sent[3], now=1.0 + life + 1.0) == (DROP, None, R.FRAGMENT)
    assert len(eng) == 1


def test_later_fragments_refresh_the_connection(make_engine):
    """They are the connection's packets: counted, and its idle timer restarts (UDP unreplied:
    30 s)."""
    eng = make_engine(**NAT_PORTS)
    pkt = datagram(4, "udp", ENV[4][0], HOST[4][0], EPORT["udp"], HPORT["udp"], payload(3001),
                   0x7177)
    a, b = pieces(pkt, 1000)[:2]
    assert eng.outbound(a, now=1.0).verdict == NEW
    assert eng.outbound(b, now=20.0).verdict == EST
    (e,) = eng.entries(now=20.0)
    assert e.timeout == pytest.approx(30.0)
    assert (e.packets_orig, e.bytes_orig) == (2, len(a) + len(b))


@FAMILIES
def test_a_datagram_seen_in_order_is_forgotten_at_its_last_fragment(make_engine, family):
    """Its bytes went through without a gap up to the last fragment: the tracker is gone and
    a repeated later fragment is a `fragment` drop; the same identification again is a new
    datagram, whose first fragment passes."""
    eng = make_engine(timeouts=LONG_UDP, **NAT_PORTS)
    pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"], HPORT["udp"],
                   payload(3001), 0xC0DE)
    a, b, c, d = pieces(pkt, 1000)
    res = send(eng, "outbound", [a, b, c, d], now=1.0)
    assert [r.verdict for r in res] == [NEW, EST, EST, EST]
    assert eng.outbound(b, now=1.5) == (DROP, None, R.FRAGMENT)
    assert eng.outbound(a, now=2.0).verdict == EST
    assert eng.outbound(b, now=2.0).verdict == EST
    assert eng.counters()["fragments_translated"] == 6


@FAMILIES
@pytest.mark.parametrize("order", ["adbc", "abbdc", "acbd", "abdc"])
def test_after_a_gap_the_datagram_is_kept_until_it_times_out(make_engine, family, order):
    """Reordered or duplicated fragments: no piece is refused for a miscount (lengths alone
    would add up too early with a duplicate); the tracker stays until its timeout."""
    eng = make_engine(timeouts=LONG_UDP, **NAT_PORTS)
    pkt = datagram(family, "udp", ENV[family][0], HOST[family][0], EPORT["udp"], HPORT["udp"],
                   payload(3001), 0xC0DE)
    piece = dict(zip("abcd", pieces(pkt, 1000)))
    res = send(eng, "outbound", [piece[k] for k in order], now=1.0)
    assert [r.verdict for r in res] == [NEW] + [EST] * (len(order) - 1)
    assert eng.outbound(piece["b"], now=2.0).verdict == EST           # still tracked
    timeout = 30.0 if family == 4 else 60.0
    assert eng.outbound(piece["c"], now=1.0 + timeout) == (DROP, None, R.FRAGMENT)


# ---- IPv6 atomic fragments and ICMP errors ----------------------------------------------------
def test_ipv6_atomic_fragment_is_a_whole_packet(make_engine):
    """RFC 8200 4.5 / RFC 6946: a Fragment header with offset 0 and M clear is the whole
    datagram; translated as such (the header carried as it is), no datagram tracked."""
    eng = make_engine(**NAT_PORTS)
    ident = 0xA70
    out = raw(IPv6(src=ENV[6][0], dst=HOST[6][0]) / IPv6ExtHdrFragment(id=ident, m=0, offset=0)
              / UDP(sport=EPORT["udp"], dport=HPORT["udp"]) / Raw(b"atomic"))
    res = eng.outbound(out, now=1.0)
    assert (res.verdict, res.reason) == (NEW, R.NONE)
    port = fields(res.packet).sport
    assert res.packet == expected_whole(out, src=ENI_A.ipv6, sport=port)
    assert_checksums_valid(res.packet)
    assert res.packet[40:48] == out[40:48]                         # the Fragment header
    # no datagram is tracked under its identification
    later = raw_fragment(out, 8, False, b"\0" * 8)
    assert eng.outbound(later, now=1.0) == (DROP, None, R.FRAGMENT)
    back = raw(IPv6(src=HOST[6][0], dst=ENI_A.ipv6) / IPv6ExtHdrFragment(id=9, m=0, offset=0)
               / UDP(sport=HPORT["udp"], dport=port) / Raw(b"atomic reply"))
    res = eng.inbound(back, now=1.0)
    assert res.verdict == REPLY
    assert res.packet == expected_whole(back, dst=ENV[6][0], dport=EPORT["udp"])
    (e,) = eng.entries(now=1.0)
    assert (e.packets_orig, e.packets_reply) == (1, 1)


@FAMILIES
def test_icmp_error_about_a_first_fragment_is_translated(make_engine, family):
    """A router reports on the first fragment the NAT sent (IPv6: it embeds the Fragment
    header, offset 0): translated back like any error (RFC 5508), the embedded ports and the
    embedded checksum as the environment sent them."""
    eng = make_engine(**NAT_PORTS)
    f = Flow(eng, family)
    nat_first = f.results[0].packet
    router = "198.19.0.1" if family == 4 else "2001:2:0:200::1"
    about = nat_first[:548] if family == 4 else nat_first
    if family == 4:
        err = raw(IP(src=router, dst=ENI_A.ipv4) / ICMP(type=3, code=4, nexthopmtu=576)
                  / Raw(about))
    else:
        err = raw(IPv6(src=router, dst=ENI_A.ipv6) / ICMPv6PacketTooBig(mtu=1280) / Raw(about))
    res = eng.inbound(err, now=2.0)
    assert (res.verdict, res.reason) == (REPLY, R.NONE)
    out = res.packet
    hl = 20 if family == 4 else 40
    inner = out[hl + 8:]
    sent_first = f.sent[0]
    # outer: to the environment, ICMP checksum verifies
    assert socket.inet_ntop(af(family), out[16:20] if family == 4 else out[24:40]) == \
        ENV[family][0]
    if family == 4:
        assert ones_sum(out[20:]) == 0xFFFF
        assert ones_sum(inner[:20]) == 0xFFFF
    else:
        pseudo = out[8:40] + struct.pack("!I3xB", len(out) - 40, 58)
        assert ones_sum(pseudo + out[40:]) == 0xFFFF
    # embedded: the first fragment as the environment sent it (TTL one less)
    l4 = frag_info(sent_first)[3]
    ttl_at = 8 if family == 4 else 7
    assert inner[ttl_at] == sent_first[ttl_at] - 1
    skip = {ttl_at} | ({10, 11} if family == 4 else set())
    assert [x for i, x in enumerate(inner) if i not in skip] == \
        [x for i, x in enumerate(sent_first[:len(inner)]) if i not in skip]
    assert inner[l4:l4 + 4] == struct.pack("!HH", EPORT["udp"], HPORT["udp"])
    assert eng.counters()["icmp_errors_translated"] == 1
