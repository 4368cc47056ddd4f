"""Addresses, packet builders, checksum checks and engine helpers shared by the tests (the
engine tests above all; the root conftest's engine fixtures are made from the helpers at the
end).

Packets are built with scapy and every checksum of a rewritten packet is verified by scapy
(re-parse, delete the checksum fields, rebuild, compare the bytes), so no test trusts the
engine's own checksum code. Only the benchmark ranges are used: IPv4 198.18.0.0/15 (RFC 2544)
and IPv6 2001:2::/48 (RFC 5180).
"""
from __future__ import annotations

import socket
import struct
from typing import Iterable, NamedTuple, Optional

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import NoPayload, Raw

from hyperplane import EngineConfig, Eni
from hyperplane.engine import reference

# ---- addresses --------------------------------------------------------------------------------
ENI_A = Eni("eni-0a1b2c3d4e5f60718", ipv4="198.18.1.10", ipv6="2001:2:0:1::10")
ENI_B = Eni("eni-0a1b2c3d4e5f60719", ipv4="198.18.1.11", ipv6="2001:2:0:1::11")
ENI_C = Eni("eni-0a1b2c3d4e5f6071a", ipv4="198.18.1.12", ipv6="2001:2:0:1::12")
ENI_V4_ONLY = Eni("eni-0a1b2c3d4e5f6071b", ipv4="198.18.1.13")

#: execution environments (the NATed side) and VPC hosts (the far side)
ENV = {4: ("198.18.100.1", "198.18.100.2", "198.18.100.3"),
       6: ("2001:2:0:100::1", "2001:2:0:100::2", "2001:2:0:100::3")}
HOST = {4: ("198.19.0.20", "198.19.0.21"),
        6: ("2001:2:0:200::20", "2001:2:0:200::21")}


def eni_addr(eni: Eni, family: int) -> str:
    return eni.ipv4 if family == 4 else eni.ipv6


# ---- building -----------------------------------------------------------------------------------
def build(family: int, proto: str, src: str, dst: str, sport: int, dport: int, *,
          flags: str = "S", ttl: int = 64, payload: bytes = b"", chksum: Optional[int] = None,
          ext: Iterable = (), seq: int = 1000, ack: int = 0, window: int = 8192,
          options: Iterable = ()) -> bytes:
    """One IPv4/IPv6 + TCP/UDP packet as bytes. ``ext``: scapy IPv6 extension headers placed
    between the IPv6 header and the transport header. ``chksum`` forces the L4 checksum field.
    TCP: ``seq``, ``ack``, ``window`` and ``options`` (scapy's, e.g. [("WScale", 7)])."""
    if family == 4:
        pkt = IP(src=src, dst=dst, ttl=ttl)
    else:
        pkt = IPv6(src=src, dst=dst, hlim=ttl)
        for h in ext:
            pkt = pkt / h
    kw = {} if chksum is None else {"chksum": chksum}
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window,
                 options=list(options), **kw)
    else:
        l4 = UDP(sport=sport, dport=dport, **kw)
    pkt = pkt / l4
    if payload:
        pkt = pkt / Raw(payload)
    return raw(pkt)


def tcp(family, src, dst, sport, dport, flags="S", **kw) -> bytes:
    return build(family, "tcp", src, dst, sport, dport, flags=flags, **kw)


def udp(family, src, dst, sport, dport, **kw) -> bytes:
    return build(family, "udp", src, dst, sport, dport, **kw)


# ---- reading ------------------------------------------------------------------------------------
class L4Info(NamedTuple):
    family: int
    proto: int
    l4: int       # offset of the TCP/UDP header
    end: int      # end of the IP packet


_EXT = (0, 43, 60)


def locate_l4(b: bytes) -> L4Info:
    """Find the transport header (test-side parser, independent of the engines)."""
    if b[0] >> 4 == 4:
        ihl = (b[0] & 0x0F) * 4
        total = struct.unpack_from("!H", b, 2)[0]
        return L4Info(4, b[9], ihl, total)
    nh, off = b[6], 40
    end = 40 + struct.unpack_from("!H", b, 4)[0]
    while nh in _EXT:
        nh, off = b[off], off + (b[off + 1] + 1) * 8
    return L4Info(6, nh, off, end)


class Fields(NamedTuple):
    src: str
    sport: int
    dst: str
    dport: int
    ttl: int      # TTL or hop limit


def fields(b: bytes) -> Fields:
    """Addresses, ports and TTL/hop limit, read by scapy."""
    p = dissect(b)
    ip = p[IP] if IP in p else p[IPv6]
    l4 = p[TCP] if TCP in p else p[UDP]
    ttl = ip.ttl if IP in p else ip.hlim
    return Fields(ip.src, l4.sport, ip.dst, l4.dport, ttl)


def dissect(b: bytes):
    """Parse ``b`` with scapy, keeping the TCP/UDP payload as Raw bytes. A NAT may pick any
    port in its range, and scapy binds some (2055 NetFlow, 4789 VXLAN, 5353 mDNS, ...) to a
    protocol it would then dissect the payload as; the tests compare bytes, so the payload is
    put back as the bytes that follow the transport header."""
    p = IP(b) if b[0] >> 4 == 4 else IPv6(b)
    for L in (TCP, UDP):
        if L in p and not isinstance(p[L].payload, (Raw, NoPayload)):
            info = locate_l4(b)
            hlen = 8 if L is UDP else (b[info.l4 + 12] >> 4) * 4
            data = bytes(b[info.l4 + hlen:info.end])
            p[L].remove_payload()
            if data:
                p[L].add_payload(Raw(data))
    return p


def l4_checksum(b: bytes) -> int:
    info = locate_l4(b)
    return struct.unpack_from("!H", b, info.l4 + (16 if info.proto == 6 else 6))[0]


def rebuilt_by_scapy(b: bytes) -> bytes:
    """Re-parse, delete the IPv4 header and TCP/UDP checksums, rebuild: the packet as it would
    be with correct checksums."""
    p = dissect(b)
    if IP in p:
        del p[IP].chksum
    for L in (TCP, UDP):
        if L in p:
            del p[L].chksum
    return raw(p)


def assert_checksums_valid(b: bytes, *, udp_zero_ok: bool = False) -> None:
    """Every checksum (IPv4 header, TCP/UDP) of ``b`` is what scapy computes. An IPv4 UDP
    checksum of 0 ("no checksum", RFC 768) is accepted only with ``udp_zero_ok``."""
    b = bytes(b)
    good = rebuilt_by_scapy(b)
    if udp_zero_ok and b[0] >> 4 == 4 and b[9] == 17 and l4_checksum(b) == 0:
        info = locate_l4(b)
        good = bytearray(good)
        good[info.l4 + 6:info.l4 + 8] = b"\0\0"
        good = bytes(good)
    assert b == good, (
        "checksums do not verify:\n  got      " + b.hex() + "\n  expected " + good.hex())


# ---- one's-complement arithmetic (RFC 1071), for the partial-checksum tests ------------------
def fold(x: int) -> int:
    while x > 0xFFFF:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\0"
    return fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def inet_checksum(data: bytes) -> int:
    """The Internet checksum of ``data`` (RFC 1071): the complement of its one's-complement
    sum, as an ICMP, TCP or UDP header carries it."""
    return ~ones_sum(data) & 0xFFFF


def pseudo_header_sum(family: int, src: str, dst: str, proto: int, l4_len: int) -> int:
    """The uncomplemented, folded pseudo-header sum (RFC 793 3.1 / RFC 768 for IPv4, RFC 8200
    8.1 for IPv6): source, destination, protocol, upper-layer length. This is what a
    CHECKSUM_PARTIAL packet carries in its L4 checksum field."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s = socket.inet_pton(af, src)
    d = socket.inet_pton(af, dst)
    return fold(ones_sum(s) + ones_sum(d) + proto + (l4_len >> 16) + (l4_len & 0xFFFF))


def make_partial(b: bytes) -> bytes:
    """Replace the L4 checksum of a complete packet with the uncomplemented pseudo-header sum,
    as the kernel leaves it for a CHECKSUM_PARTIAL (offloaded) packet."""
    info = locate_l4(b)
    f = fields(b)
    out = bytearray(b)
    c_off = info.l4 + (16 if info.proto == 6 else 6)
    psum = pseudo_header_sum(info.family, f.src, f.dst, info.proto, info.end - info.l4)
    out[c_off:c_off + 2] = psum.to_bytes(2, "big")
    return bytes(out)


def complete_partial(b: bytes) -> bytes:
    """What the NIC (or skb_checksum_help) does to a CHECKSUM_PARTIAL packet: sum the L4 segment
    from csum_start, the field included (it holds the pseudo-header sum), and store the
    complement there (a UDP result of 0 is sent as 0xFFFF)."""
    info = locate_l4(b)
    out = bytearray(b)
    c_off = info.l4 + (16 if info.proto == 6 else 6)
    c = 0xFFFF ^ ones_sum(bytes(out[info.l4:info.end]))
    if c == 0 and info.proto == 17:
        c = 0xFFFF
    out[c_off:c_off + 2] = c.to_bytes(2, "big")
    return bytes(out)


# ---- engines --------------------------------------------------------------------------------
ENGINE_IDS = ("compiled", "reference")
DEFAULT_SEED = 0x5EED_0001

BUILD_HINT = ("the compiled engine hyperplane.engine._engine is not built ({exc}). Build it with:\n"
              "    python3 -m pip install -e .\n"
              "(or python3 setup.py build_ext --inplace). Run only the reference engine with "
              "-k reference.")


def compiled_module():
    """``hyperplane.engine._engine``, or a loud test failure with the build command."""
    try:
        import hyperplane.engine._engine as mod
    except ImportError as exc:
        pytest.fail(BUILD_HINT.format(exc=exc), pytrace=False)
    return mod


def get_engine_cls(name: str):
    if name == "compiled":
        return compiled_module().Engine
    return reference.Engine


def no_clock():
    raise AssertionError("the engine read its clock: tests must pass now= explicitly")


def make_config(**overrides) -> EngineConfig:
    """An EngineConfig with one benchmark-range ENI and a fixed seed, fields overridden."""
    kw = dict(enis=[ENI_A], seed=DEFAULT_SEED)
    kw.update(overrides)
    return EngineConfig(**kw)


