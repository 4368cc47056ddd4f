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
and the IPv4 header checksum. Here: the datagrams that pass and those that do not;
test_fragments_edges.py has malformed fragments, the datagram table, IPv6 atomic fragments and
ICMP errors; kit.fragments builds and checks the datagrams of both.
"""
from __future__ import annotations

import socket

import pytest
from scapy.compat import raw
from scapy.layers.inet6 import IPv6ExtHdrDestOpt

from hyperplane import Tuple5
from kit.frames import ENI_A, ENV, HOST, assert_checksums_valid, fields
from kit.fragments import (
    DROP, EPORT, EST, FAMILIES, Flow, HPORT, NAT_PORTS, NEW, PROTOS, R, REPLY, af,
    assert_later_translated, datagram, drops, eni, expected_whole, fix_ip4, nat_port, open_tcp,
    payload, pieces, reassemble, send,
)


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
