"""IP fragments through the NAT, on both engines: the edges. Malformed fragments (RFC 1858's
tiny first fragment and offset-8 overlap, RFC 7112's cut header chain, lengths that are no
multiple of 8, a datagram past 65,535 bytes, other protocols), the datagram table (1024
trackers, their timeouts, what refreshes and what forgets them), IPv6 atomic fragments and ICMP
errors about a first fragment. test_fragments.py says how fragments are tracked; kit.fragments
builds and checks them.
"""
from __future__ import annotations

import functools
import socket
import struct
from typing import Tuple

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
    fragment6,
)
from scapy.packet import Raw

from kit.frames import ENI_A, ENV, HOST, assert_checksums_valid, fields, ones_sum
from kit.fragments import (
    DROP, EPORT, EST, FAMILIES, Flow, HPORT, LIFETIME, LONG_UDP, MAX_DATAGRAMS, NAT_PORTS, NEW, R,
    REPLY, af, datagram, drops, eni, expected_whole, frag_info, open_tcp, payload, pieces,
    raw_fragment, reassemble, segment, send,
)


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
