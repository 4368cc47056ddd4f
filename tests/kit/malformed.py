"""The corpus of malformed packets and what each engine direction does with it.

Every case is one packet, built in both directions: **outbound** (an environment 198.18.100.1
/ 2001:2:0:100::1 to a VPC host) and **inbound** (the host back to the ENI, sent after a valid
opener of the same family and protocol created a connection, so that a drop names what is wrong
with the packet and not "unsolicited"). ``expect_out`` / ``expect_in`` are a DropReason, or a
Verdict for a packet the engine translates (the policy in docs/robustness.md says why: the
engine does not parse TCP options and does not verify TCP/UDP checksums, it carries them).

tests/engine/test_malformed.py runs every case through both engines; docs/robustness.md holds the
table :func:`markdown_table` prints (a test keeps the two equal):

    python3 tests/kit/malformed.py      # print the table for docs/robustness.md

Fragments are in as single packets: a later fragment alone (no first fragment of its datagram
passed, so it is a `fragment` drop in both directions) and fragments no honest sender makes
(`bad_fragment`: RFC 1858's tiny first fragment and offset-8 overlap, RFC 7112's cut header
chain, a length that is no multiple of 8, a datagram past 65,535 bytes). Whole fragmented
datagrams, their trackers and the table limit are tests/engine/test_fragments*.py's; ICMP errors
are left out here, tests/engine/test_icmp.py has them.
"""
from __future__ import annotations

import os
import socket
import struct
import sys
from typing import Callable, List, NamedTuple, Union

from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from hyperplane import DropReason, Verdict

if not __package__:   # run as a script (the command above): kit is a package in tests/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kit.frames import ENI_A, ENV, HOST  # noqa: E402

R = DropReason
SPORT, DPORT = 40001, 443
Expect = Union[DropReason, Verdict]


class Case(NamedTuple):
    name: str
    what: str                       #: one line for the docs table
    family: int
    proto: str                      #: "tcp" or "udp": the opener's protocol
    make: Callable[[str, int], bytes]   #: make(direction, port) -> the packet
    expect_out: Expect
    expect_in: Expect
    note: str = ""                  #: why, when the reason is not obvious


# ---- builders ---------------------------------------------------------------------------------
def addrs(family: int, direction: str):
    """(src, dst) of a packet in that direction."""
    if direction == "outbound":
        return ENV[family][0], HOST[family][0]
    return HOST[family][0], ENI_A.ipv4 if family == 4 else ENI_A.ipv6


def ports(direction: str, port: int):
    return (port, DPORT) if direction == "outbound" else (DPORT, port)


def flags(direction: str) -> str:
    return "S" if direction == "outbound" else "SA"


def ip_layer(family, direction, **kw):
    src, dst = addrs(family, direction)
    return IP(src=src, dst=dst, **kw) if family == 4 else IPv6(src=src, dst=dst, **kw)


def tcp_pkt(family, direction, port, payload=b"", ipkw=None, **kw) -> bytes:
    sp, dp = ports(direction, port)
    kw.setdefault("flags", flags(direction))
    kw.setdefault("ack", 1001 if direction == "inbound" else 0)
    p = ip_layer(family, direction, **(ipkw or {})) / TCP(sport=sp, dport=dp, seq=1000, **kw)
    return raw(p / Raw(payload) if payload else p)


def udp_pkt(family, direction, port, payload=b"data", ipkw=None, **kw) -> bytes:
    sp, dp = ports(direction, port)
    return raw(ip_layer(family, direction, **(ipkw or {})) / UDP(sport=sp, dport=dp, **kw)
               / Raw(payload))


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def fix_ip4(b: bytearray) -> bytes:
    """Recompute the IPv4 header checksum after an edit (IHL taken from the packet)."""
    ihl = (b[0] & 0x0F) * 4
    b[10:12] = b"\0\0"
    b[10:12] = (0xFFFF ^ ones_sum(bytes(b[:ihl]))).to_bytes(2, "big")
    return bytes(b)


def edited(base: Callable[[str, int], bytes], pos: int, value: bytes, fix: bool = True):
    """A builder: base's packet with bytes at pos replaced (IPv4 header checksum fixed)."""
    def make(direction, port):
        b = bytearray(base(direction, port))
        b[pos:pos + len(value)] = value
        return fix_ip4(b) if fix and b[0] >> 4 == 4 else bytes(b)
    return make


def cut(base, n: int):
    return lambda d, p: base(d, p)[:n]


def t4(d, p):
    return tcp_pkt(4, d, p)


def t6(d, p):
    return tcp_pkt(6, d, p)


def u4(d, p):
    return udp_pkt(4, d, p)


def u6(d, p):
    return udp_pkt(6, d, p)


def ext_chain(n: int, hbh_first: bool = False):
    def make(direction, port):
        p = ip_layer(6, direction)
        for i in range(n):
            p = p / (IPv6ExtHdrHopByHop() if hbh_first and i == 0 else IPv6ExtHdrDestOpt())
        sp, dp = ports(direction, port)
        return raw(p / TCP(sport=sp, dport=dp, flags=flags(direction),
                           ack=1001 if direction == "inbound" else 0))
    return make


def hbh_after_destopts(direction, port):
    p = ip_layer(6, direction) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()
    sp, dp = ports(direction, port)
    return raw(p / UDP(sport=sp, dport=dp) / Raw(b"hbh"))


def ext_overrun(direction, port):
    """A Destination Options header claiming (255 + 1) * 8 bytes in a 60-byte packet."""
    b = bytearray(ext_chain(1)(direction, port))
    b[41] = 255
    return bytes(b)


def ihl15_padded(direction, port):
    """IHL 15 (60-byte header) with total length 40, in a frame long enough for 60 bytes."""
    b = bytearray(t4(direction, port) + b"\0" * 20)
    b[0] = 0x4F
    return fix_ip4(b)


def tcp_doff15_garbage_options(direction, port):
    """Data offset 15: 40 bytes of options that are no valid option list (kind 2 with length
    0, kind 0xFE with a length past the header, bytes 0xFF) and a payload after them; the
    TCP checksum is correct, so only the options are wrong."""
    sp, dp = ports(direction, port)
    seg = bytearray(raw(TCP(sport=sp, dport=dp, flags=flags(direction), seq=1000,
                            ack=1001 if direction == "inbound" else 0, chksum=0)))
    seg[12] = 0xF0
    seg += b"\x02\x00" + b"\xfe\x7f" + b"\xff" * 36 + b"after-options"
    src, dst = addrs(4, direction)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", 6, len(seg))
    seg[16:18] = (0xFFFF ^ ones_sum(pseudo + bytes(seg))).to_bytes(2, "big")
    return raw(IP(src=src, dst=dst, proto=6) / Raw(bytes(seg)))


def udp_shorter_than_ip(direction, port):
    """UDP length 12 (4 payload bytes) in an IP packet that carries 20 payload bytes."""
    b = bytearray(udp_pkt(4, direction, port, payload=b"x" * 20))
    b[24:26] = (12).to_bytes(2, "big")
    return bytes(b)


def big_udp(family: int, ip_len: int, extra: int = 0):
    """A UDP packet whose IP length is ip_len (IPv4 total / IPv6 40 + payload length) in a
    buffer extra bytes longer."""
    def make(direction, port):
        hdr = 20 if family == 4 else 40
        return udp_pkt(family, direction, port, payload=b"\x5a" * (ip_len - hdr - 8)) + \
            b"\0" * extra
    return make


def bad_csum(base_pkt, value: int):
    def make(direction, port):
        return base_pkt(direction, port, chksum=value)
    return make


def version(v: int):
    def make(direction, port):
        b = bytearray(t4(direction, port))
        b[0] = (v << 4) | (b[0] & 0x0F)
        return bytes(b)
    return make


FRAG_ID = 0x4A7B


def frag(family: int, proto: str, offset: int, more: bool, take: Union[slice, bytes]):
    """A builder: one fragment (IPv4 MF/offset, or an IPv6 Fragment header) of a TCP/UDP
    datagram with 200 bytes of payload (checksum over the whole), carrying ``take`` (a slice
    of the transport segment, or the bytes themselves) at ``offset``."""
    def make(direction, port):
        whole = (tcp_pkt if proto == "tcp" else udp_pkt)(family, direction, port,
                                                          payload=b"\x66" * 200)
        seg = whole[20:] if family == 4 else whole[40:]
        data = seg[take] if isinstance(take, slice) else take
        nh = 6 if proto == "tcp" else 17
        if family == 4:
            p = ip_layer(4, direction, id=FRAG_ID, proto=nh, flags="MF" if more else 0,
                         frag=offset // 8)
        else:
            p = ip_layer(6, direction) / IPv6ExtHdrFragment(nh=nh, offset=offset // 8,
                                                            m=int(more), id=FRAG_ID)
        return raw(p / Raw(data)) if data else raw(p)
    return make


def frag6_chain_cut(direction, port):
    """First fragment (M set) holding a Destination Options header and no transport header:
    the UDP header comes in the next fragment (RFC 7112 forbids that)."""
    return raw(ip_layer(6, direction) / IPv6ExtHdrFragment(nh=60, offset=0, m=1, id=FRAG_ID)
               / IPv6ExtHdrDestOpt(nh=17))


def frag6_twice(direction, port):
    """Two Fragment headers, both offset 0 with M set, then UDP."""
    sp, dp = ports(direction, port)
    return raw(ip_layer(6, direction) / IPv6ExtHdrFragment(offset=0, m=1, id=FRAG_ID)
               / IPv6ExtHdrFragment(offset=0, m=1, id=FRAG_ID + 1) / UDP(sport=sp, dport=dp)
               / Raw(b"\x77" * 16))


def icmp_first_fragment(direction, port):
    """The first fragment of an ICMP echo request (16 of its 208 bytes)."""
    whole = raw(ICMP(type=8, id=port) / Raw(b"\x55" * 200))
    return raw(ip_layer(4, direction, id=FRAG_ID, proto=1, flags="MF") / Raw(whole[:16]))


# ---- the corpus ---------------------------------------------------------------------------------
NEW, REPLY = Verdict.NEW, Verdict.REPLY

CASES: List[Case] = [
    # lengths of the whole buffer
    Case("empty", "zero-length buffer", 4, "tcp", lambda d, p: b"", R.TRUNCATED, R.TRUNCATED),
    Case("one_byte_v4", "1 byte (0x45)", 4, "tcp", lambda d, p: b"\x45", R.TRUNCATED,
         R.TRUNCATED),
    Case("one_byte_v6", "1 byte (0x60)", 6, "tcp", lambda d, p: b"\x60", R.TRUNCATED,
         R.TRUNCATED),
    Case("ipv4_header_cut", "IPv4 header cut at 19 bytes", 4, "tcp", cut(t4, 19), R.TRUNCATED,
         R.TRUNCATED),
    Case("ipv6_header_cut", "IPv6 header cut at 39 bytes", 6, "tcp", cut(t6, 39), R.TRUNCATED,
         R.TRUNCATED),
    Case("version_0", "IP version 0", 4, "tcp", version(0), R.BAD_IP_VERSION, R.BAD_IP_VERSION),
    Case("version_5", "IP version 5", 4, "tcp", version(5), R.BAD_IP_VERSION, R.BAD_IP_VERSION),
    Case("version_15", "IP version 15", 4, "tcp", version(15), R.BAD_IP_VERSION,
         R.BAD_IP_VERSION),
    # IPv4 header fields
    Case("ipv4_ihl_0", "IPv4 IHL 0", 4, "tcp", edited(t4, 0, b"\x40", fix=False),
         R.BAD_IP_HEADER, R.BAD_IP_HEADER),
    Case("ipv4_ihl_4", "IPv4 IHL 4 (16 bytes)", 4, "tcp", edited(t4, 0, b"\x44", fix=False),
         R.BAD_IP_HEADER, R.BAD_IP_HEADER),
    Case("ipv4_ihl_past_frame", "IPv4 IHL 15 (60 bytes) in a 40-byte frame", 4, "tcp",
         edited(t4, 0, b"\x4f", fix=False), R.TRUNCATED, R.TRUNCATED,
         "the frame ends inside the header the IHL announces"),
    Case("ipv4_ihl_past_total_length", "IPv4 IHL 15, total length 40, frame of 60 bytes", 4,
         "tcp", ihl15_padded, R.BAD_IP_HEADER, R.BAD_IP_HEADER,
         "the header is longer than the packet it heads"),
    Case("ipv4_total_length_0", "IPv4 total length 0", 4, "tcp", edited(t4, 2, b"\x00\x00"),
         R.BAD_IP_HEADER, R.BAD_IP_HEADER),
    Case("ipv4_total_length_below_header", "IPv4 total length 19", 4, "tcp",
         edited(t4, 2, b"\x00\x13"), R.BAD_IP_HEADER, R.BAD_IP_HEADER),
    Case("ipv4_total_length_past_frame", "IPv4 total length 41 in a 40-byte frame", 4, "tcp",
         edited(t4, 2, b"\x00\x29"), R.TRUNCATED, R.TRUNCATED),
    Case("ipv4_total_length_65535_short_frame", "IPv4 total length 65535 in a 40-byte frame",
         4, "tcp", edited(t4, 2, b"\xff\xff"), R.TRUNCATED, R.TRUNCATED),
    Case("ipv4_trailing_bytes", "IPv4 total length shorter than the frame (padding)", 4, "udp",
         lambda d, p: u4(d, p) + b"\xee" * 9, NEW, REPLY,
         "link-layer padding: carried, not counted"),
    Case("ipv4_bad_header_checksum", "IPv4 header checksum wrong", 4, "tcp",
         edited(t4, 10, b"\x12\x34", fix=False), R.BAD_IP_CHECKSUM, R.BAD_IP_CHECKSUM),
    Case("ipv4_ttl_1", "IPv4 TTL 1", 4, "udp", lambda d, p: udp_pkt(4, d, p, ipkw={"ttl": 1}),
         R.TTL_EXPIRED, R.TTL_EXPIRED),
    Case("ipv4_ttl_0", "IPv4 TTL 0", 4, "udp", lambda d, p: udp_pkt(4, d, p, ipkw={"ttl": 0}),
         R.TTL_EXPIRED, R.TTL_EXPIRED),
    Case("ipv4_protocol_gre", "IPv4 protocol 47 (GRE)", 4, "tcp",
         lambda d, p: raw(ip_layer(4, d, proto=47) / Raw(b"\0" * 8)),
         R.UNSUPPORTED_PROTOCOL, R.UNSUPPORTED_PROTOCOL),
    # IPv6 header and extension headers
    Case("ipv6_payload_length_past_frame", "IPv6 payload length 1 byte past the frame", 6,
         "tcp", edited(t6, 4, b"\x00\x15"), R.TRUNCATED, R.TRUNCATED),
    Case("ipv6_payload_length_0", "IPv6 payload length 0 (TCP follows in the frame)", 6, "tcp",
         edited(t6, 4, b"\x00\x00"), R.TRUNCATED, R.TRUNCATED,
         "no jumbograms (RFC 2675): the TCP header is outside the packet"),
    Case("ipv6_payload_length_cuts_tcp", "IPv6 payload length 10: TCP header cut", 6, "tcp",
         edited(t6, 4, b"\x00\x0a"), R.TRUNCATED, R.TRUNCATED),
    Case("ipv6_trailing_bytes", "IPv6 payload length shorter than the frame (padding)", 6,
         "udp", lambda d, p: u6(d, p) + b"\xee" * 9, NEW, REPLY),
    Case("ipv6_hop_limit_1", "IPv6 hop limit 1", 6, "udp",
         lambda d, p: udp_pkt(6, d, p, ipkw={"hlim": 1}), R.HOP_LIMIT_EXPIRED,
         R.HOP_LIMIT_EXPIRED),
    Case("ipv6_8_ext_headers", "8 extension headers (the walk limit)", 6, "tcp", ext_chain(8),
         NEW, REPLY),
    Case("ipv6_9_ext_headers", "9 extension headers", 6, "tcp", ext_chain(9),
         R.EXT_HEADER_CHAIN, R.EXT_HEADER_CHAIN),
    Case("ipv6_200_ext_headers", "200 extension headers (1600 bytes)", 6, "tcp",
         ext_chain(200), R.EXT_HEADER_CHAIN, R.EXT_HEADER_CHAIN,
         "the walk stops after 9, whatever the chain's length"),
    Case("ipv6_ext_header_overrun", "extension header length past the packet", 6, "tcp",
         ext_overrun, R.TRUNCATED, R.TRUNCATED),
    Case("ipv6_ext_header_cut", "extension header announced, no byte of it", 6, "tcp",
         lambda d, p: raw(ip_layer(6, d, nh=60)), R.TRUNCATED, R.TRUNCATED),
    Case("ipv6_hop_by_hop_not_first", "Hop-by-Hop after Destination Options", 6, "udp",
         hbh_after_destopts, NEW, REPLY,
         "walked like any other; RFC 8200 4.1 wants it first (the kernel sends a "
         "parameter problem)"),
    Case("ipv6_no_next_header", "IPv6 next header 59 (none)", 6, "tcp",
         lambda d, p: raw(ip_layer(6, d, nh=59)), R.UNSUPPORTED_PROTOCOL,
         R.UNSUPPORTED_PROTOCOL),
    # TCP
    Case("tcp_header_cut", "TCP header cut at 10 bytes", 4, "tcp", cut(t4, 30), R.TRUNCATED,
         R.TRUNCATED),
    Case("tcp_data_offset_0", "TCP data offset 0", 4, "tcp",
         lambda d, p: tcp_pkt(4, d, p, dataofs=0), R.BAD_L4_HEADER, R.BAD_L4_HEADER),
    Case("tcp_data_offset_4", "TCP data offset 4 (16 bytes)", 6, "tcp",
         lambda d, p: tcp_pkt(6, d, p, dataofs=4), R.BAD_L4_HEADER, R.BAD_L4_HEADER),
    Case("tcp_data_offset_past_packet", "TCP data offset 15 in a 20-byte segment", 4, "tcp",
         edited(t4, 32, b"\xf0"), R.TRUNCATED, R.TRUNCATED),
    Case("tcp_options_garbage", "TCP data offset 15, 40 bytes of invalid options", 4, "tcp",
         tcp_doff15_garbage_options, NEW, REPLY,
         "options are not parsed: carried as they are (so is the payload after them)"),
    Case("tcp_bad_checksum", "TCP checksum wrong", 4, "tcp", bad_csum(
        lambda d, p, **kw: tcp_pkt(4, d, p, **kw), 0xBEEF), NEW, REPLY,
         "not verified; updated incrementally, so it stays wrong by the same amount"),
    Case("tcp6_bad_checksum", "TCP over IPv6, checksum wrong", 6, "tcp", bad_csum(
        lambda d, p, **kw: tcp_pkt(6, d, p, **kw), 0x0001), NEW, REPLY),
    # UDP
    Case("udp_header_cut", "UDP header cut at 6 bytes", 4, "udp", cut(u4, 26), R.TRUNCATED,
         R.TRUNCATED),
    Case("udp_length_7", "UDP length 7", 4, "udp", edited(u4, 24, b"\x00\x07"),
         R.BAD_L4_HEADER, R.BAD_L4_HEADER),
    Case("udp_length_0", "UDP length 0", 6, "udp", edited(u6, 44, b"\x00\x00"),
         R.BAD_L4_HEADER, R.BAD_L4_HEADER),
    Case("udp_length_past_packet", "UDP length 1 byte past the IP packet", 4, "udp",
         edited(u4, 24, b"\x00\x0d"), R.TRUNCATED, R.TRUNCATED),
    Case("udp_length_short_of_packet", "UDP length 12 in 28 bytes of IP payload", 4, "udp",
         udp_shorter_than_ip, NEW, REPLY, "the bytes after the UDP length are carried"),
    Case("udp_bad_checksum", "UDP checksum wrong", 4, "udp", bad_csum(
        lambda d, p, **kw: udp_pkt(4, d, p, **kw), 0xBEEF), NEW, REPLY,
         "not verified; stays wrong"),
    Case("udp4_no_checksum", "IPv4 UDP checksum 0 (none)", 4, "udp", bad_csum(
        lambda d, p, **kw: udp_pkt(4, d, p, **kw), 0), NEW, REPLY,
         "RFC 768: allowed, stays 0"),
    Case("udp6_no_checksum", "IPv6 UDP checksum 0", 6, "udp", bad_csum(
        lambda d, p, **kw: udp_pkt(6, d, p, **kw), 0), R.BAD_L4_HEADER, R.BAD_L4_HEADER,
         "RFC 8200 8.1: mandatory over IPv6"),
    # fragments (one packet each: nothing of the datagram passed before it)
    Case("ipv4_later_fragment_alone", "IPv4 UDP fragment at offset 104, its first never seen",
         4, "udp", frag(4, "udp", 104, False, slice(104, None)), R.FRAGMENT, R.FRAGMENT,
         "no first fragment passed, so no tracked datagram: nothing waits for reordering"),
    Case("ipv6_later_fragment_alone", "IPv6 TCP fragment at offset 24, its first never seen",
         6, "tcp", frag(6, "tcp", 24, False, slice(24, None)), R.FRAGMENT, R.FRAGMENT),
    Case("ipv4_tiny_first_fragment", "IPv4 first fragment with 8 bytes of a TCP header", 4,
         "tcp", frag(4, "tcp", 0, True, slice(0, 8)), R.BAD_FRAGMENT, R.BAD_FRAGMENT,
         "RFC 1858 tiny fragment: the first must hold the whole transport header"),
    Case("ipv6_tiny_first_fragment", "IPv6 first fragment with 16 bytes of a TCP header", 6,
         "tcp", frag(6, "tcp", 0, True, slice(0, 16)), R.BAD_FRAGMENT, R.BAD_FRAGMENT),
    Case("ipv4_udp_first_fragment_empty", "IPv4 first fragment (MF set) with no data", 4,
         "udp", frag(4, "udp", 0, True, b""), R.BAD_FRAGMENT, R.BAD_FRAGMENT),
    Case("ipv6_first_fragment_chain_cut", "IPv6 first fragment: Destination Options, no UDP",
         6, "udp", frag6_chain_cut, R.BAD_FRAGMENT, R.BAD_FRAGMENT,
         "RFC 7112: the whole header chain in the first fragment"),
    Case("ipv6_two_fragment_headers", "IPv6 with two Fragment headers", 6, "udp", frag6_twice,
         R.BAD_FRAGMENT, R.BAD_FRAGMENT),
    Case("ipv4_tcp_fragment_offset_8", "IPv4 TCP fragment at offset 8", 4, "tcp",
         frag(4, "tcp", 8, False, slice(8, None)), R.BAD_FRAGMENT, R.BAD_FRAGMENT,
         "RFC 1858 overlap: it would rewrite the TCP flags of a header that passed"),
    Case("ipv4_fragment_not_multiple_of_8", "IPv4 first fragment (MF set) of 13 bytes", 4,
         "udp", frag(4, "udp", 0, True, slice(0, 13)), R.BAD_FRAGMENT, R.BAD_FRAGMENT,
         "every fragment but the last carries a multiple of 8 bytes"),
    Case("ipv6_fragment_not_multiple_of_8", "IPv6 fragment (M set) of 13 bytes at offset 16",
         6, "udp", frag(6, "udp", 16, True, slice(16, 29)), R.BAD_FRAGMENT, R.BAD_FRAGMENT),
    Case("ipv4_fragment_past_65535", "IPv4 fragment at offset 65520 with 24 bytes", 4, "udp",
         frag(4, "udp", 65520, False, b"\x01" * 24), R.BAD_FRAGMENT, R.BAD_FRAGMENT,
         "no datagram is longer than 65,535 bytes"),
    Case("ipv6_fragment_past_65535", "IPv6 fragment at offset 65520 with 24 bytes", 6, "udp",
         frag(6, "udp", 65520, False, b"\x01" * 24), R.BAD_FRAGMENT, R.BAD_FRAGMENT),
    Case("ipv4_icmp_first_fragment", "IPv4 first fragment of an ICMP echo request", 4, "udp",
         icmp_first_fragment, R.UNSUPPORTED_PROTOCOL, R.UNSUPPORTED_PROTOCOL,
         "only TCP and UDP datagrams are tracked in fragments"),
    Case("ipv4_gre_later_fragment", "IPv4 GRE fragment at offset 800", 4, "udp",
         lambda d, p: raw(ip_layer(4, d, id=FRAG_ID, proto=47, frag=100) / Raw(b"\0" * 8)),
         R.UNSUPPORTED_PROTOCOL, R.UNSUPPORTED_PROTOCOL),
    # sizes
    Case("ipv4_65535", "IPv4 packet of 65535 bytes", 4, "udp", big_udp(4, 65535), NEW, REPLY),
    Case("ipv6_65575", "IPv6 packet of 40 + 65535 bytes", 6, "udp", big_udp(6, 65575), NEW,
         REPLY),
    Case("buffer_100000", "IPv4 packet of 1500 bytes in a 100000-byte buffer", 4, "udp",
         big_udp(4, 1500, extra=98500), NEW, REPLY, "the IP length rules; the rest is carried"),
]

BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "duplicate case names"


def label(e: Expect) -> str:
    if isinstance(e, Verdict):
        return "translated"
    return f"drop `{e.label}`"


def markdown_table() -> str:
    """The table of docs/robustness.md, generated from the corpus."""
    rows = ["| case | packet | outbound | inbound | note |",
            "|---|---|---|---|---|"]
    for c in CASES:
        rows.append(f"| `{c.name}` | {c.what} | {label(c.expect_out)} | {label(c.expect_in)} "
                    f"| {c.note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
