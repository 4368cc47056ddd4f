"""The packet parser, mirrored in csrc/hp_parse.c: from raw bytes to a :class:`Parsed` (family,
protocol, addresses, ports, TCP flags, fragment fields, the packet an ICMP error embeds) or to
the one :class:`DropReason` that names what is wrong. The order of the checks is part of the
spec (docs/robustness.md): both engines give the same bad packet the same reason.

Step 1 of the life of a packet (see hyperplane.engine.reference.engine)."""
from __future__ import annotations

import socket
from typing import NamedTuple, Optional

from hyperplane.engine.constants import (
    FLAG_CSUM_PARTIAL, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, DropReason,
)
from hyperplane.engine.reference.csum import fold, ip_header_sum_ok, ones_sum

MAX_EXT_HEADERS = 8       # IPv6 extension headers walked before giving up (EXT_HEADER_CHAIN)

R = DropReason


def addr_bytes(family: int, text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)


def addr_text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, raw)


class Frag(NamedTuple):
    """A fragment's fields (RFC 791 / RFC 8200 4.5)."""

    first: bool      # offset 0 (it carries the transport header); else a later fragment
    more: bool       # more fragments follow
    ident: int       # identification: 16 bits (IPv4) or 32 (IPv6)
    offset: int      # where its data goes in the datagram's fragmentable part (bytes)
    length: int      # how many bytes of it this fragment carries


#: _walk_ext's answer for a later fragment: (LATER, next header, offset past the header, Frag)
LATER = "later"


def _walk_ext(b, end: int, proto: int, l4: int, outer: bool = False):
    """Walk IPv6 extension headers (RFC 8200 4.1: hop-by-hop, routing, destination options,
    authentication header, fragment) from offset ``l4`` to the transport header, bounded;
    returns (protocol, offset, Frag or None) or the DropReason.

    A Fragment header: an atomic fragment (offset 0, M 0; RFC 6946) is a whole packet and the
    walk goes on, so it does for a first fragment (offset 0, M 1), whose transport header
    follows; a later fragment ends the walk: (LATER, its next header, offset past it, Frag).
    Not ``outer`` (a packet embedded in an ICMP error), a later fragment is R.FRAGMENT and a
    first fragment is walked through (it has the ports)."""
    frag = None
    for _ in range(MAX_EXT_HEADERS + 1):
        if proto not in (0, 43, 60, 51, 44):
            return proto, l4, frag
        if l4 + (8 if proto == 44 else 2) > end:
            return R.TRUNCATED if frag is None else R.BAD_FRAGMENT   # RFC 7112: whole chain
        if proto == 44:
            at = l4
            offset, more = ((b[at + 2] << 8) | b[at + 3]) & 0xFFF8, b[at + 3] & 1
            length = end - (at + 8)
            proto, l4 = b[at], at + 8
            if not offset and not more:
                continue                                  # an atomic fragment
            if not outer:
                if offset:
                    return R.FRAGMENT
                continue
            if frag is not None:                          # a second Fragment header
                return R.BAD_FRAGMENT
            if (more and length & 7) or offset + length > 65535:
                return R.BAD_FRAGMENT     # RFC 8200 4.5: a multiple of 8; at most 64 KiB
            frag = Frag(not offset, bool(more), int.from_bytes(b[at + 4:at + 8], "big"),
                        offset, length)
            if offset:
                return LATER, proto, l4, frag
            continue
        hlen = (b[l4 + 1] + 2) * 4 if proto == 51 else (b[l4 + 1] + 1) * 8
        proto = b[l4]
        l4 += hlen
        if l4 > end:
            return R.TRUNCATED if frag is None else R.BAD_FRAGMENT   # RFC 7112: whole chain
    return R.EXT_HEADER_CHAIN


def _parse_embedded(b, at: int, end: int, family: int) -> Optional["_Embedded"]:
    """The packet an ICMP error embeds, at offset ``at`` up to ``end``; None when unusable.

    It must be of the error's own family, carry TCP or UDP (an error about an ICMP message is
    never translated: RFC 1122 3.2.2 forbids errors about errors, so one is forged or broken),
    not be a later fragment (no ports), and hold 8 bytes of transport header. Its length and
    checksum fields are not checked: they describe the whole original packet."""
    avail = end - at
    if avail < 1 or b[at] >> 4 != family:
        return None
    if family == 4:
        if avail < 20:
            return None
        ihl = (b[at] & 0x0F) * 4
        if ihl < 20 or ((b[at + 6] << 8) | b[at + 7]) & 0x1FFF:
            return None
        proto, l4 = b[at + 9], at + ihl
        src, dst = bytes(b[at + 12:at + 16]), bytes(b[at + 16:at + 20])
    else:
        if avail < 40:
            return None
        walk = _walk_ext(b, end, b[at + 6], at + 40)
        if isinstance(walk, DropReason):   # a later fragment included
            return None
        proto, l4, _ = walk
        src, dst = bytes(b[at + 8:at + 24]), bytes(b[at + 24:at + 40])
    if proto not in (IPPROTO_TCP, IPPROTO_UDP) or l4 + 8 > end:
        return None
    return _Embedded(proto, src.ljust(16, b"\0"), dst.ljust(16, b"\0"),
                     (b[l4] << 8) | b[l4 + 1], (b[l4 + 2] << 8) | b[l4 + 3], at, l4)


class _Embedded(NamedTuple):
    """The packet an ICMP error is about, as the error carries it (usually cut short)."""

    proto: int
    src: bytes       # 16 bytes, IPv4 in the first 4
    dst: bytes
    sport: int
    dport: int
    ip: int          # offset of its IP header from the start of the outer packet
    l4: int          # offset of its TCP/UDP header (8 bytes of it are present)


#: Parsed.icmp
ICMP_NO, ICMP_QUERY, ICMP_ERROR = 0, 1, 2


class Parsed(NamedTuple):
    family: int
    proto: int
    l3_len: int      # IP total length (bytes counted per connection)
    l4: int          # offset of the TCP/UDP/ICMP header
    src: bytes
    dst: bytes
    sport: int       # ICMP: 0
    dport: int
    tcp_flags: int
    icmp: int = ICMP_NO                  # ICMP_QUERY: any ICMP message that is not an error
    inner: Optional[_Embedded] = None    # ICMP_ERROR: the packet the error is about
    end: int = 0                         # ICMP: offset of the end of the IP packet
    frag: Optional[Frag] = None          # a fragment: its fields (later ones: no ports)


# --------------------------------------------------------------------------------------------
# 1. parse
# --------------------------------------------------------------------------------------------
def parse_packet(b, off, n, flags):
    """The IP packet at ``b[off:off + n]`` as a :class:`Parsed`, or the DropReason of the first
    check it fails (the order of the checks is the spec: docs/robustness.md)."""
    if n < 1:
        return R.TRUNCATED
    version = b[off] >> 4
    frag = None
    if version == 4:
        if n < 20:
            return R.TRUNCATED
        ihl = (b[off] & 0x0F) * 4
        if ihl < 20:
            return R.BAD_IP_HEADER
        if n < ihl:
            return R.TRUNCATED
        total = (b[off + 2] << 8) | b[off + 3]
        if total < ihl:
            return R.BAD_IP_HEADER
        if total > n:
            return R.TRUNCATED
        if not ip_header_sum_ok(bytes(b[off:off + ihl])):
            return R.BAD_IP_CHECKSUM
        proto, l4, end = b[off + 9], off + ihl, off + total
        src, dst = bytes(b[off + 12:off + 16]), bytes(b[off + 16:off + 20])
        family, l3_len = 4, total
        fw = (b[off + 6] << 8) | b[off + 7]
        if fw & 0x3FFF:            # MF set or a non-zero fragment offset (RFC 791)
            offset, length, more = (fw & 0x1FFF) * 8, total - ihl, bool(fw & 0x2000)
            if (more and length & 7) or offset + length + ihl > 65535:
                return R.BAD_FRAGMENT
            if proto == IPPROTO_TCP and offset == 8:
                return R.BAD_FRAGMENT   # RFC 1858 3.2: it would rewrite the TCP flags
            frag = Frag(not offset, more, (b[off + 4] << 8) | b[off + 5], offset, length)
            if offset:
                return _later_fragment(family, proto, l3_len, l4 - off, src, dst, frag)
    elif version == 6:
        if n < 40:
            return R.TRUNCATED
        plen = (b[off + 4] << 8) | b[off + 5]
        if 40 + plen > n:
            return R.TRUNCATED
        end = off + 40 + plen
        proto, l4 = b[off + 6], off + 40
        src, dst = bytes(b[off + 8:off + 24]), bytes(b[off + 24:off + 40])
        family, l3_len = 6, 40 + plen
        walk = _walk_ext(b, end, proto, l4, outer=True)
        if isinstance(walk, DropReason):
            return walk
        if walk[0] == LATER:
            _, proto, l4, frag = walk
            return _later_fragment(family, proto, l3_len, l4 - off, src, dst, frag)
        proto, l4, frag = walk
    else:
        return R.BAD_IP_VERSION
    first = frag is not None
    if proto == (IPPROTO_ICMP if family == 4 else IPPROTO_ICMPV6):
        if first:
            return R.UNSUPPORTED_PROTOCOL
        return _parse_icmp(b, off, family, proto, l3_len, l4, end, src, dst, flags)
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return R.UNSUPPORTED_PROTOCOL
    # A first fragment must hold the whole transport header (RFC 1858's tiny fragments);
    # its length fields describe the whole datagram, which goes on in later fragments.
    short = R.BAD_FRAGMENT if first else R.TRUNCATED
    l4_len = end - l4
    if proto == IPPROTO_TCP:
        if l4_len < 20:
            return short
        doff = (b[l4 + 12] >> 4) * 4
        if doff < 20:
            return R.BAD_L4_HEADER
        if doff > l4_len:
            return short
        tcp_flags = b[l4 + 13]
    else:
        if l4_len < 8:
            return short
        ulen = (b[l4 + 4] << 8) | b[l4 + 5]
        if ulen < 8:
            return R.BAD_L4_HEADER
        if ulen > l4_len and not first:
            return R.TRUNCATED
        if family == 6 and not flags & FLAG_CSUM_PARTIAL and b[l4 + 6] == b[l4 + 7] == 0:
            return R.BAD_L4_HEADER     # RFC 8200 8.1: IPv6 UDP must carry a checksum
        tcp_flags = 0
    sport = (b[l4] << 8) | b[l4 + 1]
    dport = (b[l4 + 2] << 8) | b[l4 + 3]
    return Parsed(family, proto, l3_len, l4 - off, src.ljust(16, b"\0"),
                  dst.ljust(16, b"\0"), sport, dport, tcp_flags, frag=frag)


def _later_fragment(family, proto, l3_len, l4, src, dst, frag):
    """A later fragment: addresses, protocol and fragment fields (its ports are in the
    first). Fragments of anything but TCP and UDP are unsupported like the rest; an IPv6 one
    may start inside an extension header of the fragmentable part."""
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) or (
            proto not in (IPPROTO_TCP, IPPROTO_UDP)
            and not (family == 6 and proto in (0, 43, 60, 51, 44))):
        return R.UNSUPPORTED_PROTOCOL
    return Parsed(family, proto, l3_len, l4, src.ljust(16, b"\0"), dst.ljust(16, b"\0"),
                  0, 0, 0, frag=frag)


def _parse_icmp(b, off, family, proto, l3_len, l4, end, src, dst, flags):
    """ICMP (RFC 792, RFC 4443 section 3). An error carries the start of the packet that
    caused it: its IP header and at least 8 bytes after it (the ports); that embedded
    packet names the connection the error is about (RFC 5508 section 4, the kernel's
    nf_conntrack_icmp.c). Errors: ICMPv4 destination unreachable (3, incl. code 4
    "fragmentation needed"), time exceeded (11), parameter problem (12); ICMPv6
    destination unreachable (1), packet too big (2), time exceeded (3), parameter problem
    (4). Anything else (echo, redirect, ...) is a "query": it belongs to no connection."""
    if end - l4 < 8:
        return R.TRUNCATED            # type, code, checksum and the 4 bytes after them
    p = Parsed(family, proto, l3_len, l4 - off, src.ljust(16, b"\0"), dst.ljust(16, b"\0"),
               0, 0, 0, ICMP_QUERY, None, end - off)
    is_error = b[l4] in ((3, 11, 12) if family == 4 else (1, 2, 3, 4))
    if not is_error:
        return p
    # RFC 5508 REQ-3: an error whose checksum fails is dropped, not translated (translated,
    # it would get a fresh, valid checksum). A partial checksum is not complete yet.
    if not flags & FLAG_CSUM_PARTIAL:
        acc = ones_sum(bytes(b[l4:end]))
        if family == 6:               # pseudo-header (RFC 4443 2.3)
            n = end - l4
            acc += ones_sum(src + dst) + (n >> 16) + (n & 0xFFFF) + IPPROTO_ICMPV6
        if fold(acc) != 0xFFFF:
            return R.BAD_ICMP
    inner = _parse_embedded(b, l4 + 8, end, family)
    if inner is None:
        return R.BAD_ICMP
    return p._replace(icmp=ICMP_ERROR,
                      inner=inner._replace(ip=inner.ip - off, l4=inner.l4 - off))
