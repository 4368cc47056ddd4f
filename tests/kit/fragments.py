"""IP fragments for the engine's fragment tests (engine/test_fragments*.py): datagrams cut in
fragments with scapy or by hand, the engine run over them, and the checks that do not trust
the engine (test-side reassembly, RFC 791 / RFC 8200 4.5, compared byte for byte with what
scapy builds for the expected addresses and ports)."""
from __future__ import annotations

import socket
import struct
from typing import List, Optional, Tuple

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Raw

from hyperplane import DropReason, Timeouts, Verdict
from kit.frames import ENI_A, ENV, HOST, assert_checksums_valid, dissect, fields, ones_sum, tcp

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
