"""Manip: outbound source NAT, inbound un-NAT, TTL / hop limit, checksums (complete, IPv4 UDP 0,
UDP computed 0, partial), and the port choice (keep the source port, else seeded random)."""
from __future__ import annotations

import pytest

from hyperplane import DropReason, Verdict
from kit.frames import (
    ENI_A, ENV, HOST, Fields, assert_checksums_valid, build, complete_partial, eni_addr, fields,
    l4_checksum, locate_l4, make_config, make_partial, no_clock, ones_sum, pseudo_header_sum,
    rebuilt_by_scapy, tcp, udp,
)

FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
PROTOS = pytest.mark.parametrize("proto", ["tcp", "udp"])
PROTO_NUM = {"tcp": 6, "udp": 17}


def _open(eng, family, proto, env_i=0, sport=40001, dport=443, now=1.0, payload=b""):
    """Send the first outbound packet of a flow; return the result (must be NEW)."""
    pkt = build(family, proto, ENV[family][env_i], HOST[family][0], sport, dport, flags="S",
                payload=payload)
    res = eng.outbound(pkt, now=now)
    assert res.verdict == Verdict.NEW, res
    return res


# ---- outbound / inbound ---------------------------------------------------------------------
@FAMILIES
@PROTOS
def test_outbound_snat_rewrites_source_and_decrements_ttl(make_engine, family, proto):
    eng = make_engine()
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    pkt = build(family, proto, env, host, 40001, 443, flags="S", ttl=64, payload=b"hello, vpc")
    res = eng.outbound(pkt, now=1.0)
    assert res.verdict == Verdict.NEW
    assert res.reason == DropReason.NONE
    assert isinstance(res.packet, bytes)
    assert fields(res.packet) == Fields(eni, 40001, host, 443, 63)
    assert_checksums_valid(res.packet)
    # byte for byte what scapy builds for the translated packet: nothing else changed
    assert res.packet == build(family, proto, eni, host, 40001, 443, flags="S", ttl=63,
                               payload=b"hello, vpc")


@FAMILIES
@PROTOS
@pytest.mark.parametrize("conflict", [False, True], ids=["port_kept", "port_changed"])
def test_inbound_reply_is_un_natted(make_engine, family, proto, conflict):
    eng = make_engine()
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    if conflict:  # another environment holds port 40001 first: ours gets another port
        _open(eng, family, proto, env_i=1)
    out = _open(eng, family, proto, env_i=0)
    eni_port = fields(out.packet).sport
    assert (eni_port != 40001) == conflict
    reply = build(family, proto, host, eni, 443, eni_port, flags="SA", ttl=60, payload=b"hi")
    res = eng.inbound(reply, now=1.5)
    assert res.verdict == Verdict.REPLY
    assert res.reason == DropReason.NONE
    assert fields(res.packet) == Fields(host, 443, env, 40001, 59)
    assert_checksums_valid(res.packet)
    assert res.packet == build(family, proto, host, env, 443, 40001, flags="SA", ttl=59,
                               payload=b"hi")
    # a second outbound packet of the flow is ESTABLISHED and keeps the mapping
    nxt = eng.outbound(build(family, proto, env, host, 40001, 443, flags="A"), now=2.0)
    assert nxt.verdict == Verdict.ESTABLISHED
    assert fields(nxt.packet) == Fields(eni, eni_port, host, 443, 63)
    assert_checksums_valid(nxt.packet)


@FAMILIES
@PROTOS
def test_unsolicited_inbound_is_dropped_and_counted(make_engine, family, proto):
    eng = make_engine()
    host, eni = HOST[family][0], eni_addr(ENI_A, family)
    res = eng.inbound(build(family, proto, host, eni, 443, 40001, flags="SA"), now=1.0)
    assert res == (Verdict.DROP, None, DropReason.UNSOLICITED)
    assert eng.counters()["drops"]["unsolicited"] == 1
    assert len(eng) == 0
    # with a connection open, anything that is not exactly its reply tuple is still unsolicited
    out = _open(eng, family, proto)
    port = fields(out.packet).sport
    wrong = [
        build(family, proto, HOST[family][1], eni, 443, port, flags="SA"),      # other host
        build(family, proto, host, eni, 444, port, flags="SA"),                 # other port
        build(family, proto, host, eni, 443, port + 1, flags="SA"),             # other ENI port
        build(family, "udp" if proto == "tcp" else "tcp", host, eni, 443, port,
              flags="SA"),                                                      # other proto
        # the orig tuple itself, arriving inbound, is not a reply
        build(family, proto, ENV[family][0], host, 40001, 443, flags="SA"),
    ]
    for i, pkt in enumerate(wrong, start=2):
        res = eng.inbound(pkt, now=2.0)
        assert res == (Verdict.DROP, None, DropReason.UNSOLICITED), i
        assert eng.counters()["drops"]["unsolicited"] == i
    c = eng.counters()
    assert c["packets_inbound"] == 0 and c["bytes_inbound"] == 0
    assert sum(c["drops"].values()) == 1 + len(wrong)


# ---- port choice ----------------------------------------------------------------------------
@FAMILIES
@PROTOS
def test_source_port_kept_when_free(make_engine, family, proto):
    eng = make_engine()
    for i, sport in enumerate((40001, 536, 65535, 1024)):
        res = eng.outbound(build(family, proto, ENV[family][0], HOST[family][0], sport, 443),
                           now=1.0 + i)
        assert res.verdict == Verdict.NEW
        assert fields(res.packet).sport == sport


@PROTOS
def test_source_port_outside_range_gets_a_pool_port(make_engine, proto):
    eng = make_engine(port_min=40000, port_max=40099)
    got = set()
    for sport in (80, 39999, 40100, 65535):
        res = eng.outbound(build(4, proto, ENV[4][0], HOST[4][0], sport, 443), now=1.0)
        assert res.verdict == Verdict.NEW
        port = fields(res.packet).sport
        assert 40000 <= port <= 40099
        got.add(port)
    assert len(got) == 4


def test_conflicting_flow_gets_seeded_random_port(engine_cls):
    def conflicting_port(seed):
        eng = engine_cls(make_config(seed=seed), clock=no_clock)
        a = eng.outbound(tcp(4, ENV[4][0], HOST[4][0], 40001, 443), now=0.0)
        b = eng.outbound(tcp(4, ENV[4][1], HOST[4][1], 40001, 443), now=0.0)
        assert fields(a.packet).sport == 40001
        pb = fields(b.packet).sport
        assert pb != 40001 and 536 <= pb <= 65535
        assert_checksums_valid(b.packet)
        return pb

    p1, p1_again, p2 = conflicting_port(1), conflicting_port(1), conflicting_port(2)
    assert p1 == p1_again, "the same seed must give the same port"
    assert p1 != p2, "two seeds gave the same random port"


# ---- TTL / hop limit ----------------------------------------------------------------------------
@FAMILIES
@pytest.mark.parametrize("ttl", [0, 1])
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_ttl_or_hop_limit_expired(make_engine, family, ttl, direction):
    eng = make_engine()
    reason = DropReason.TTL_EXPIRED if family == 4 else DropReason.HOP_LIMIT_EXPIRED
    label = reason.label
    host, eni = HOST[family][0], eni_addr(ENI_A, family)
    if direction == "outbound":
        res = eng.outbound(tcp(family, ENV[family][0], host, 40001, 443, ttl=ttl), now=1.0)
        assert len(eng) == 0, "an expiring packet must not create a connection"
    else:
        _open(eng, family, "tcp")
        res = eng.inbound(tcp(family, host, eni, 443, 40001, flags="SA", ttl=ttl), now=2.0)
        e, = eng.entries(now=2.0)
        assert e.state == "SYN_SENT" and e.packets_reply == 0
    assert res == (Verdict.DROP, None, reason)
    assert eng.counters()["drops"][label] == 1
    # TTL 2 is forwarded with TTL 1
    if direction == "outbound":
        ok = eng.outbound(tcp(family, ENV[family][0], host, 40001, 443, ttl=2), now=3.0)
        assert ok.verdict == Verdict.NEW
    else:
        ok = eng.inbound(tcp(family, host, eni, 443, 40001, flags="SA", ttl=2), now=3.0)
        assert ok.verdict == Verdict.REPLY
    assert fields(ok.packet).ttl == 1
    assert_checksums_valid(ok.packet)


# ---- checksums ----------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_ipv4_udp_checksum_zero_stays_zero(make_engine, direction):
    eng = make_engine()
    env, host, eni = ENV[4][0], HOST[4][0], ENI_A.ipv4
    out = eng.outbound(udp(4, env, host, 40001, 9000, chksum=0, payload=b"no csum"), now=1.0)
    res = out if direction == "outbound" else eng.inbound(
        udp(4, host, eni, 9000, 40001, chksum=0, payload=b"no csum"), now=2.0)
    assert res.verdict in (Verdict.NEW, Verdict.REPLY)
    assert l4_checksum(res.packet) == 0
    assert_checksums_valid(res.packet, udp_zero_ok=True)   # the IPv4 header checksum is right
    want = (Fields(eni, 40001, host, 9000, 63) if direction == "outbound"
            else Fields(host, 9000, env, 40001, 63))
    assert fields(res.packet) == want


def _payload_for_zero_udp_sum(family, src, dst, sport, dport):
    """A 2-byte payload that makes the UDP checksum of (src, dst, sport, dport) compute to 0."""
    ulen = 8 + 2
    s = pseudo_header_sum(family, src, dst, 17, ulen)
    s = ones_sum(sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + ulen.to_bytes(2, "big")
                 + b"\0\0" + s.to_bytes(2, "big"))
    word = 0xFFFF - s
    return word.to_bytes(2, "big")


@FAMILIES
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_udp_computed_zero_checksum_is_sent_as_ffff(make_engine, family, direction):
    eng = make_engine()
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    if direction == "outbound":
        payload = _payload_for_zero_udp_sum(family, eni, host, 40001, 9000)
        pkt = udp(family, env, host, 40001, 9000, payload=payload)
    else:
        eng.outbound(udp(family, env, host, 40001, 9000, payload=b"xy"), now=1.0)
        payload = _payload_for_zero_udp_sum(family, host, env, 9000, 40001)
        pkt = udp(family, host, eni, 9000, 40001, payload=payload)
    assert l4_checksum(pkt) not in (0, 0xFFFF), "precondition: input has an ordinary checksum"
    res = getattr(eng, direction)(pkt, now=2.0)
    assert res.verdict != Verdict.DROP
    assert l4_checksum(res.packet) == 0xFFFF
    assert_checksums_valid(res.packet)   # scapy also sends a computed 0 as 0xFFFF


@FAMILIES
@PROTOS
@pytest.mark.parametrize("conflict", [False, True], ids=["port_kept", "port_changed"])
def test_partial_checksum_moves_with_addresses_only(make_engine, family, proto, conflict):
    """csum_partial: the L4 field holds the uncomplemented pseudo-header sum (PACKET_IO.md, the
    checksum trap). After NAT it must be the pseudo-header sum of the rewritten addresses (ports
    are not in it), and completing it must give a valid checksum."""
    eng = make_engine()
    pnum = PROTO_NUM[proto]
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    if conflict:  # another environment holds port 40001 first: ours gets another port
        _open(eng, family, proto, env_i=1)
    src = build(family, proto, env, host, 40001, 443, flags="S", payload=b"offloaded payload!")
    pkt = make_partial(src)
    info = locate_l4(pkt)
    l4_len = info.end - info.l4
    assert l4_checksum(pkt) == pseudo_header_sum(family, env, host, pnum, l4_len)

    res = eng.outbound(pkt, now=1.0, csum_partial=True)
    assert res.verdict == Verdict.NEW
    f = fields(res.packet)
    assert (f.src, f.dst, f.dport, f.ttl) == (eni, host, 443, 63)
    assert (f.sport != 40001) == conflict
    assert l4_checksum(res.packet) == pseudo_header_sum(family, eni, host, pnum, l4_len)
    assert_checksums_valid(complete_partial(res.packet))   # also checks the IPv4 header sum

    reply = make_partial(build(family, proto, host, eni, 443, f.sport, flags="SA",
                               payload=b"offloaded reply"))
    rinfo = locate_l4(reply)
    back = eng.inbound(reply, now=2.0, csum_partial=True)
    assert back.verdict == Verdict.REPLY
    assert fields(back.packet) == Fields(host, 443, env, 40001, 63)
    assert l4_checksum(back.packet) == pseudo_header_sum(family, host, env, pnum,
                                                         rinfo.end - rinfo.l4)
    assert_checksums_valid(complete_partial(back.packet))


def test_partial_checksum_ipv6_udp_zero_field_is_not_a_missing_checksum(make_engine):
    """The IPv6 'UDP checksum 0 is invalid' rule applies to complete checksums only: a partial
    packet's field is a pseudo-header sum the NIC completes later."""
    eng = make_engine()
    pkt = udp(6, ENV[6][0], HOST[6][0], 40001, 9000, chksum=0, payload=b"x")
    res = eng.outbound(pkt, now=1.0, csum_partial=True)
    assert res.verdict == Verdict.NEW
    full = eng.outbound(udp(6, ENV[6][1], HOST[6][0], 40002, 9000, chksum=0), now=1.0)
    assert full == (Verdict.DROP, None, DropReason.BAD_L4_HEADER)


@FAMILIES
@PROTOS
def test_bad_input_l4_checksum_stays_bad(make_engine, family, proto):
    """Input L4 checksums are not verified; an incremental update keeps a bad one bad by
    exactly the same error, so the receiver still drops it."""
    eng = make_engine()
    good = build(family, proto, ENV[family][0], HOST[family][0], 40001, 443, payload=b"abcd")
    bad = bytearray(good)
    info = locate_l4(good)
    c_off = info.l4 + (16 if proto == "tcp" else 6)
    bad[c_off + 1] ^= 0x01
    bad_in, good_in = l4_checksum(bytes(bad)), l4_checksum(good)
    res = eng.outbound(bytes(bad), now=1.0)
    assert res.verdict == Verdict.NEW
    bad_out, good_out = l4_checksum(res.packet), l4_checksum(rebuilt_by_scapy(res.packet))
    assert bad_out != good_out
    # one's-complement: the output is off by exactly what the input was off by
    assert (bad_out - good_out) % 0xFFFF == (bad_in - good_in) % 0xFFFF


@FAMILIES
@PROTOS
@pytest.mark.parametrize("port", [2055, 4789, 5353], ids=["netflow", "vxlan", "mdns"])
def test_translated_port_that_scapy_binds_reads_back_as_bytes(make_engine, family, proto, port):
    """A pool may hand out a port scapy binds to a protocol (the differential test once drew
    2055, NetFlow, from 536-65535); both directions still read back byte for byte."""
    import scapy.layers.netflow  # noqa: F401  (binds 2055; any test module may have loaded
    import scapy.layers.vxlan  # noqa: F401      these already, so the test does so itself)
    eng = make_engine(port_min=port, port_max=port)
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    out = _open(eng, family, proto, payload=b"\x00\x01\x02payload")
    assert fields(out.packet).sport == port
    assert rebuilt_by_scapy(out.packet) == out.packet
    reply = build(family, proto, host, eni, 443, port, flags="SA", payload=b"\x00\x01\x02reply")
    res = eng.inbound(reply, now=1.5)
    assert res.verdict == Verdict.REPLY
    assert fields(res.packet) == Fields(host, 443, env, 40001, 63)
    assert_checksums_valid(res.packet)
    assert rebuilt_by_scapy(res.packet) == res.packet
