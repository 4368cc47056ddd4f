"""ICMP errors through the NAT (RFC 5508), on both engines.

An ICMP error (destination unreachable, fragmentation needed / packet too big, time exceeded,
parameter problem) embeds the start of the packet that caused it. When that packet belongs to a
tracked connection the error is translated, outer and embedded headers both, so that the sender
learns of it: path-MTU discovery and "port unreachable" work through the NAT. Every translated
packet is read back with scapy field by field and every checksum recomputed by scapy (outer
IPv4 header, ICMP / ICMPv6, embedded IPv4 header); the embedded TCP/UDP checksum must come back
as the original sender computed it. Unrelated, malformed and non-error ICMP is dropped with its
named reason, and an error never changes its connection's state, timer or counters.
"""
from __future__ import annotations

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig,
    ICMPv6ParamProblem, ICMPv6TimeExceeded, IPerror6, IPv6, IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
)
from scapy.packet import Raw

from hyperplane import DropReason, Verdict
from kit.frames import (
    ENI_A, ENI_B, ENV, HOST, assert_checksums_valid, build, fields, ones_sum, pseudo_header_sum,
)

R = DropReason
#: a port range without the environments' ports: every translation changes the port
NAT_PORTS = dict(port_min=50000, port_max=50999)
ROUTER = {4: "198.19.0.1", 6: "2001:2:0:200::1"}    # a router on the way, in the VPC
EPORT, HPORT = {"tcp": 40001, "udp": 40002}, {"tcp": 443, "udp": 9000}
PAYLOAD = b"icmp-test-payload"

#: (name, family, scapy ICMP layer, field whose value must survive) for every error type
ERRORS = [
    ("v4_port_unreachable", 4, lambda: ICMP(type=3, code=3), None),
    ("v4_frag_needed", 4, lambda: ICMP(type=3, code=4, nexthopmtu=1400), ("nexthopmtu", 1400)),
    ("v4_time_exceeded", 4, lambda: ICMP(type=11, code=0), None),
    ("v4_parameter_problem", 4, lambda: ICMP(type=12, code=0, ptr=9), ("ptr", 9)),
    ("v6_port_unreachable", 6, lambda: ICMPv6DestUnreach(code=4), None),
    ("v6_packet_too_big", 6, lambda: ICMPv6PacketTooBig(mtu=1280), ("mtu", 1280)),
    ("v6_time_exceeded", 6, lambda: ICMPv6TimeExceeded(code=0), None),
    ("v6_parameter_problem", 6, lambda: ICMPv6ParamProblem(code=0, ptr=6), ("ptr", 6)),
]
ERROR_IDS = [e[0] for e in ERRORS]


# ---- building ---------------------------------------------------------------------------------
def l3(family, src, dst, ttl=64):
    return IP(src=src, dst=dst, ttl=ttl) if family == 4 else IPv6(src=src, dst=dst, hlim=ttl)


def icmp_error(family, layer, src, dst, about: bytes, ttl=64) -> bytes:
    """An ICMP error from ``src`` to ``dst`` embedding ``about`` (bytes, possibly cut)."""
    return raw(l3(family, src, dst, ttl) / layer / Raw(about))


def embedded(pkt: bytes) -> bytes:
    """The bytes after the 8-byte ICMP header (outer header without options/extensions)."""
    return pkt[(20 if pkt[0] >> 4 == 4 else 40) + 8:]


def open_flow(eng, family, proto, env=None):
    """One outbound packet; returns (the packet the environment sent, as the NAT sent it)."""
    env = env or ENV[family][0]
    sent = build(family, proto, env, HOST[family][0], EPORT[proto], HPORT[proto],
                 payload=PAYLOAD)
    res = eng.outbound(sent, now=1.0)
    assert res.verdict == Verdict.NEW
    return sent, res.packet


def reply_flow(eng, family, proto, nat_sent):
    """The VPC host answers; returns (the reply as the host sent it, as the environment got
    it)."""
    f = fields(nat_sent)
    reply = build(family, proto, f.dst, f.src, f.dport, f.sport, flags="SA", ack=1001,
                  payload=b"answer")
    res = eng.inbound(reply, now=1.5)
    assert res.verdict == Verdict.REPLY
    return reply, res.packet


# ---- checking ---------------------------------------------------------------------------------
def parse(pkt: bytes):
    return IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)


def assert_icmp_checksums_valid(pkt: bytes) -> None:
    """scapy recomputes the outer IPv4 header, ICMP/ICMPv6 and embedded IPv4 header checksums
    (the embedded TCP/UDP checksum covers bytes the error does not carry: checked apart)."""
    p = parse(pkt)
    if IP in p:
        del p[IP].chksum
        del p[ICMP].chksum
        if IPerror in p:
            del p[IPerror].chksum
    else:
        p[IPv6].payload.cksum = None
    assert raw(p) == pkt, (f"checksums do not verify:\n  got      {pkt.hex()}\n"
                           f"  expected {raw(p).hex()}")


def inner_layers(p):
    ip = p[IPerror] if IPerror in p else p[IPerror6]
    l4 = p[TCPerror] if TCPerror in p else p[UDPerror]
    return ip, l4


def ttl_of(p):
    return p[IP].ttl if IP in p else p[IPv6].hlim


# ---- translated errors --------------------------------------------------------------------------
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("name,family,layer,keep", ERRORS, ids=ERROR_IDS)
def test_inbound_error_is_translated_back_to_the_environment(make_engine, name, family, layer,
                                                             keep, proto):
    """A router in the VPC reports on a packet the NAT sent (ENI:port -> host): the outer
    destination and the embedded source go back to the environment's address and port."""
    eng = make_engine(**NAT_PORTS)
    env_sent, nat_sent = open_flow(eng, family, proto)
    eni = fields(nat_sent)
    before = eng.entries(now=2.0)
    err = icmp_error(family, layer(), ROUTER[family], eni.src, nat_sent)
    res = eng.inbound(err, now=2.0)
    assert (res.verdict, res.reason) == (Verdict.REPLY, R.NONE)
    out = res.packet
    assert len(out) == len(err)
    p = parse(out)
    outer = p[IP] if family == 4 else p[IPv6]
    assert (outer.src, outer.dst) == (ROUTER[family], ENV[family][0])
    assert ttl_of(p) == 63
    icmp = outer.payload
    q = parse(err)
    assert (icmp.type, icmp.code) == (q[IP if family == 4 else IPv6].payload.type,
                                      q[IP if family == 4 else IPv6].payload.code)
    if keep:
        assert getattr(icmp, keep[0]) == keep[1], "the ICMP header's data must survive"
    ip, l4 = inner_layers(p)
    assert (ip.src, l4.sport, ip.dst, l4.dport) == (
        ENV[family][0], EPORT[proto], HOST[family][0], HPORT[proto])
    assert_icmp_checksums_valid(out)
    # the whole original packet is embedded: translated back, it is what the environment
    # sent except the TTL the NAT decremented, and every checksum of it verifies
    inner = embedded(out)
    assert_checksums_valid(inner)
    expect = bytearray(env_sent)
    ttl_at = 8 if family == 4 else 7
    expect[ttl_at] -= 1
    skip = 4 if family == 4 else 1      # TTL, protocol, header checksum / hop limit
    assert inner[:ttl_at] + inner[ttl_at + skip:] == \
        bytes(expect[:ttl_at]) + bytes(expect[ttl_at + skip:])
    # RELATED: not the connection's traffic
    assert eng.entries(now=2.0) == before
    c = eng.counters()
    assert c["icmp_errors_translated"] == 1
    assert (c["packets_inbound"], c["packets_outbound"]) == (0, 1)
    assert sum(c["drops"].values()) == 0


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("name,family,layer,keep", ERRORS, ids=ERROR_IDS)
def test_outbound_error_leaves_with_the_eni_address(make_engine, name, family, layer, keep,
                                                    proto):
    """The environment reports on a reply it received (host -> env:port): the outer source
    and the embedded destination become the ENI's address and the connection's port."""
    eng = make_engine(**NAT_PORTS)
    _, nat_sent = open_flow(eng, family, proto)
    eni = fields(nat_sent)
    host_reply, env_got = reply_flow(eng, family, proto, nat_sent)
    err = icmp_error(family, layer(), ENV[family][0], HOST[family][0], env_got)
    before = eng.entries(now=3.0)
    res = eng.outbound(err, now=3.0)
    assert (res.verdict, res.reason) == (Verdict.ESTABLISHED, R.NONE)
    p = parse(res.packet)
    outer = p[IP] if family == 4 else p[IPv6]
    assert (outer.src, outer.dst) == (eni.src, HOST[family][0])
    assert ttl_of(p) == 63
    if keep:
        assert getattr(outer.payload, keep[0]) == keep[1]
    ip, l4 = inner_layers(p)
    assert (ip.src, l4.sport, ip.dst, l4.dport) == (
        HOST[family][0], HPORT[proto], eni.src, eni.sport)
    assert_icmp_checksums_valid(res.packet)
    inner = embedded(res.packet)
    assert_checksums_valid(inner)
    ttl_at = 8 if family == 4 else 7
    expect = bytearray(host_reply)
    expect[ttl_at] -= 1
    skip = 4 if family == 4 else 1
    assert inner[:ttl_at] + inner[ttl_at + skip:] == \
        bytes(expect[:ttl_at]) + bytes(expect[ttl_at + skip:])
    assert eng.entries(now=3.0) == before
    c = eng.counters()
    assert c["icmp_errors_translated"] == 1
    assert (c["packets_outbound"], c["packets_inbound"]) == (1, 1)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("keep,csum_updated", [(8, False), (18, True), (20, True)])
def test_embedded_tcp_cut_short(make_engine, family, keep, csum_updated):
    """An error need carry only 8 bytes of the TCP header (RFC 792): the ports are rewritten;
    the TCP checksum is updated only when its field (bytes 16-17) is there."""
    eng = make_engine(**NAT_PORTS)
    env_sent, nat_sent = open_flow(eng, family, "tcp")
    hl = 20 if family == 4 else 40
    about = nat_sent[:hl + keep]
    layer = ICMP(type=3, code=1) if family == 4 else ICMPv6DestUnreach(code=3)
    res = eng.inbound(icmp_error(family, layer, ROUTER[family], fields(nat_sent).src, about),
                      now=2.0)
    assert res.verdict == Verdict.REPLY
    assert_icmp_checksums_valid(res.packet)
    inner = embedded(res.packet)
    assert len(inner) == hl + keep
    src_at = slice(12, 16) if family == 4 else slice(8, 24)
    assert inner[src_at] == env_sent[src_at]        # the environment's address again
    assert inner[hl:hl + 2] == EPORT["tcp"].to_bytes(2, "big")
    assert inner[hl + 2:hl + 4] == HPORT["tcp"].to_bytes(2, "big")
    if csum_updated:   # back to the checksum the environment computed
        assert inner[hl + 16:hl + 18] == env_sent[hl + 16:hl + 18]
    assert inner[hl + 4:hl + keep] == env_sent[hl + 4:hl + keep]


def test_embedded_ipv4_udp_checksum_zero_stays_zero(make_engine):
    """RFC 768: an IPv4 UDP checksum of 0 means "none"; the embedded one stays 0."""
    eng = make_engine(**NAT_PORTS)
    sent = build(4, "udp", ENV[4][0], HOST[4][0], 40002, 9000, chksum=0, payload=b"x")
    nat_sent = eng.outbound(sent, now=1.0).packet
    assert nat_sent[26:28] == b"\0\0"
    res = eng.inbound(icmp_error(4, ICMP(type=3, code=3), HOST[4][0], fields(nat_sent).src,
                                 nat_sent), now=2.0)
    assert res.verdict == Verdict.REPLY
    assert embedded(res.packet)[26:28] == b"\0\0"
    assert_icmp_checksums_valid(res.packet)


def test_embedded_ipv6_with_extension_headers(make_engine):
    """The embedded IPv6 packet's extension headers are walked to its ports."""
    eng = make_engine(**NAT_PORTS)
    sent = build(6, "udp", ENV[6][0], HOST[6][0], 40002, 9000, ext=[IPv6ExtHdrDestOpt()],
                 payload=b"opts")
    nat_sent = eng.outbound(sent, now=1.0).packet
    res = eng.inbound(icmp_error(6, ICMPv6PacketTooBig(mtu=1300), ROUTER[6],
                                 fields(nat_sent).src, nat_sent), now=2.0)
    assert res.verdict == Verdict.REPLY
    assert_icmp_checksums_valid(res.packet)
    inner = embedded(res.packet)
    assert fields(inner)[:4] == (ENV[6][0], 40002, HOST[6][0], 9000)
    assert_checksums_valid(inner)


def test_icmpv6_partial_checksum_moves_by_the_pseudo_header_only(make_engine):
    """An offloaded (CHECKSUM_PARTIAL) ICMPv6 error holds the pseudo-header sum: the outer
    address change moves it; completed afterwards, the checksum is right."""
    eng = make_engine(**NAT_PORTS)
    _, nat_sent = open_flow(eng, 6, "udp")
    eni = fields(nat_sent).src
    err = bytearray(icmp_error(6, ICMPv6DestUnreach(code=4), HOST[6][0], eni, nat_sent))
    n = len(err) - 40
    err[42:44] = pseudo_header_sum(6, HOST[6][0], eni, 58, n).to_bytes(2, "big")
    res = eng.inbound(bytes(err), now=2.0, csum_partial=True)
    assert res.verdict == Verdict.REPLY
    out = bytearray(res.packet)
    assert int.from_bytes(out[42:44], "big") == pseudo_header_sum(6, HOST[6][0], ENV[6][0],
                                                                  58, n)
    out[42:44] = (0xFFFF ^ ones_sum(bytes(out[40:]))).to_bytes(2, "big")   # the NIC's part
    assert_icmp_checksums_valid(bytes(out))


def test_icmpv4_partial_checksum_is_left_alone(make_engine):
    """ICMPv4 has no pseudo-header: a partial checksum field (0) does not move."""
    eng = make_engine(**NAT_PORTS)
    _, nat_sent = open_flow(eng, 4, "udp")
    err = bytearray(icmp_error(4, ICMP(type=3, code=3), HOST[4][0], fields(nat_sent).src,
                               nat_sent))
    err[22:24] = b"\0\0"
    res = eng.inbound(bytes(err), now=2.0, csum_partial=True)
    assert res.verdict == Verdict.REPLY
    out = bytearray(res.packet)
    assert out[22:24] == b"\0\0"
    out[22:24] = (0xFFFF ^ ones_sum(bytes(out[20:]))).to_bytes(2, "big")
    assert_icmp_checksums_valid(bytes(out))


# ---- state untouched ------------------------------------------------------------------------
def test_an_error_changes_no_state_timer_or_counter(make_engine):
    """RFC 5508 REQ-6 / the kernel's RELATED: a SYN_SENT connection stays SYN_SENT, its
    timeout keeps running, its counters stay; no conntrack event."""
    eng = make_engine(**NAT_PORTS)
    eng.enable_events()
    _, nat_sent = open_flow(eng, 4, "tcp")
    eng.take_events()
    (e0,) = eng.entries(now=50.0)
    res = eng.inbound(icmp_error(4, ICMP(type=3, code=3), HOST[4][0], fields(nat_sent).src,
                                 nat_sent), now=50.0)
    assert res.verdict == Verdict.REPLY
    (e1,) = eng.entries(now=50.0)
    assert e1 == e0 and e1.state == "SYN_SENT"
    assert eng.take_events() == []
    # the error did not refresh the timer: SYN_SENT (120 s from t=1) expires on time
    assert eng.expire(now=121.5) == 1


# ---- not translated ---------------------------------------------------------------------------
def test_inbound_error_about_no_connection_is_unsolicited(make_engine):
    eng = make_engine(**NAT_PORTS)
    eng.enable_events()
    about = build(4, "udp", ENI_A.ipv4, HOST[4][0], 40123, 9000)
    err = icmp_error(4, ICMP(type=3, code=3), HOST[4][0], ENI_A.ipv4, about)
    assert eng.inbound(err, now=1.0) == (Verdict.DROP, None, R.UNSOLICITED)
    (ev,) = eng.take_events()
    assert (ev.kind, ev.reason, ev.proto, ev.eni) == ("reject", "unsolicited", "icmp", ENI_A.id)
    assert (ev.orig.src, ev.orig.dst, ev.orig.sport, ev.orig.dport) == (
        HOST[4][0], ENI_A.ipv4, 0, 0)
    assert (ev.packets_reply, ev.bytes_reply) == (1, len(err))
    assert eng.counters()["drops"]["unsolicited"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_inbound_errors_that_do_not_fit_the_connection(make_engine, family):
    """Known connection, wrong details: each is unsolicited."""
    eng = make_engine(enis=[ENI_A, ENI_B], **NAT_PORTS)
    env_sent, nat_sent = open_flow(eng, family, "udp")
    f = fields(nat_sent)
    other_eni = ENI_B.ipv4 if family == 4 else ENI_B.ipv6
    layer = (lambda: ICMP(type=3, code=3)) if family == 4 else (lambda: ICMPv6DestUnreach(code=4))
    wrong_port = build(family, "udp", f.src, f.dst, f.sport, 9001)
    wrong_proto = build(family, "tcp", f.src, f.dst, f.sport, f.dport)
    cases = [
        icmp_error(family, layer(), ROUTER[family], other_eni, nat_sent),   # outer dst != ENI
        icmp_error(family, layer(), ROUTER[family], f.src, wrong_port),
        icmp_error(family, layer(), ROUTER[family], f.src, wrong_proto),
        # the packet as the environment sent it (an orig tuple, not one the NAT sent)
        icmp_error(family, layer(), ROUTER[family], f.src, env_sent),
    ]
    for err in cases:
        assert eng.inbound(err, now=2.0) == (Verdict.DROP, None, R.UNSOLICITED)
    c = eng.counters()
    assert c["drops"]["unsolicited"] == len(cases)
    assert c["icmp_errors_translated"] == 0


@pytest.mark.parametrize("family", [4, 6])
def test_outbound_unrelated_errors(make_engine, family):
    eng = make_engine(**NAT_PORTS)
    _, nat_sent = open_flow(eng, family, "udp")
    _, env_got = reply_flow(eng, family, "udp", nat_sent)
    layer = (lambda: ICMP(type=3, code=3)) if family == 4 else (lambda: ICMPv6DestUnreach(code=4))
    me, other = ENV[family][0], ENV[family][1]
    stranger = build(family, "udp", HOST[family][1], me, 9000, EPORT["udp"])
    cases = [
        icmp_error(family, layer(), me, HOST[family][1], stranger),   # no such connection
        icmp_error(family, layer(), other, HOST[family][0], env_got),  # another env's flow
        icmp_error(family, layer(), me, HOST[family][1], env_got),    # not to the sender
    ]
    for err in cases:
        assert eng.outbound(err, now=2.0) == (Verdict.DROP, None, R.ICMP_UNRELATED)
    c = eng.counters()
    assert c["drops"]["icmp_unrelated"] == len(cases)
    assert c["icmp_errors_translated"] == 0


QUERIES = {
    "v4_echo_request": (4, lambda: ICMP(type=8)),
    "v4_echo_reply": (4, lambda: ICMP(type=0)),
    "v4_redirect": (4, lambda: ICMP(type=5, gw="198.19.0.1")),
    "v6_echo_request": (6, lambda: ICMPv6EchoRequest()),
    "v6_echo_reply": (6, lambda: ICMPv6EchoReply()),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_icmp_that_is_not_an_error(make_engine, name):
    """From the VPC: unsolicited (with a reject event); from an environment: unsupported
    (Lambda supports TCP and UDP only)."""
    family, layer = QUERIES[name]
    eng = make_engine(**NAT_PORTS)
    eng.enable_events()
    eni = ENI_A.ipv4 if family == 4 else ENI_A.ipv6
    into = raw(l3(family, HOST[family][0], eni) / layer())
    assert eng.inbound(into, now=1.0) == (Verdict.DROP, None, R.UNSOLICITED)
    (ev,) = eng.take_events()
    assert (ev.kind, ev.proto) == ("reject", "icmp" if family == 4 else "icmpv6")
    out = raw(l3(family, ENV[family][0], HOST[family][0]) / layer())
    assert eng.outbound(out, now=1.0) == (Verdict.DROP, None, R.UNSUPPORTED_PROTOCOL)
    assert eng.take_events() == []


def _malformed():
    u4 = build(4, "udp", ENI_A.ipv4, HOST[4][0], 40002, 9000)
    u6 = build(6, "udp", ENI_A.ipv6, HOST[6][0], 40002, 9000)
    e4 = lambda about: icmp_error(4, ICMP(type=3, code=3), HOST[4][0], ENI_A.ipv4, about)  # noqa
    e6 = lambda about: icmp_error(6, ICMPv6DestUnreach(code=4), HOST[6][0], ENI_A.ipv6,  # noqa
                                  about)
    bad_sum = bytearray(e4(u4))
    bad_sum[22] ^= 0x55
    bad_sum6 = bytearray(e6(u6))
    bad_sum6[43] ^= 0x01
    ihl4 = bytearray(u4)
    ihl4[0] = 0x44
    later_frag = raw(IP(src=ENI_A.ipv4, dst=HOST[4][0], frag=100, proto=17) / Raw(b"\0" * 8))
    # a later IPv6 fragment: no ports (an error about a first fragment is translated)
    frag6 = raw(IPv6(src=ENI_A.ipv6, dst=HOST[6][0]) / IPv6ExtHdrFragment(offset=3, m=1, nh=17)
                / Raw(b"\0" * 8))
    return {
        "bad_icmp_checksum": (bytes(bad_sum), R.BAD_ICMP),
        "bad_icmpv6_checksum": (bytes(bad_sum6), R.BAD_ICMP),
        "embedded_cut_in_ip_header": (e4(u4[:19]), R.BAD_ICMP),
        "embedded_cut_in_ports": (e4(u4[:27]), R.BAD_ICMP),
        "embedded_v6_cut_in_ports": (e6(u6[:47]), R.BAD_ICMP),
        "embedded_ihl_4": (e4(bytes(ihl4)), R.BAD_ICMP),
        "embedded_other_family": (e4(u6), R.BAD_ICMP),
        "embedded_v4_in_icmpv6": (e6(u4), R.BAD_ICMP),
        "embedded_later_fragment": (e4(later_frag), R.BAD_ICMP),
        "embedded_v6_later_fragment": (e6(frag6), R.BAD_ICMP),
        "error_about_an_error": (e4(raw(IP(src=ENI_A.ipv4, dst=HOST[4][0]) / ICMP(type=3)
                                        / Raw(u4))), R.BAD_ICMP),
        "error_about_icmpv6": (e6(raw(IPv6(src=ENI_A.ipv6, dst=HOST[6][0])
                                      / ICMPv6EchoRequest())), R.BAD_ICMP),
        "embedded_gre": (e4(raw(IP(src=ENI_A.ipv4, dst=HOST[4][0], proto=47) / Raw(b"\0" * 8))),
                         R.BAD_ICMP),
        "icmp_header_cut": (raw(IP(src=HOST[4][0], dst=ENI_A.ipv4, proto=1) / Raw(b"\3\3\0\0")),
                            R.TRUNCATED),
        "icmpv6_header_cut": (raw(IPv6(src=HOST[6][0], dst=ENI_A.ipv6, nh=58) / Raw(b"\1\4")),
                              R.TRUNCATED),
        "ttl_1": (icmp_error(4, ICMP(type=3, code=3), HOST[4][0], ENI_A.ipv4, u4, ttl=1),
                  R.TTL_EXPIRED),
        "icmpv6_in_ipv4": (raw(IP(src=HOST[4][0], dst=ENI_A.ipv4, proto=58)
                               / ICMPv6DestUnreach() / Raw(u6)), R.UNSUPPORTED_PROTOCOL),
    }


MALFORMED = _malformed()


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_icmp(make_engine, name, direction):
    pkt, reason = MALFORMED[name]
    eng = make_engine(**NAT_PORTS)
    eng.outbound(build(4, "udp", ENV[4][0], HOST[4][0], 40002, 9000), now=1.0)
    assert getattr(eng, direction)(pkt, now=2.0) == (Verdict.DROP, None, reason)
    c = eng.counters()
    assert c["drops"][reason.label] == 1
    assert sum(c["drops"].values()) == 1
    assert c["icmp_errors_translated"] == 0


def test_translated_errors_in_a_batch(make_engine):
    """The batch call translates errors in place like the single call."""
    eng = make_engine(**NAT_PORTS)
    _, n4 = open_flow(eng, 4, "udp")
    _, n6 = open_flow(eng, 6, "tcp")
    errs = [icmp_error(4, ICMP(type=3, code=4, nexthopmtu=1200), ROUTER[4], fields(n4).src, n4),
            icmp_error(6, ICMPv6PacketTooBig(mtu=1280), ROUTER[6], fields(n6).src, n6),
            icmp_error(4, ICMP(type=8), ROUTER[4], fields(n4).src, b"")]
    buf, offs = bytearray(), []
    for e in errs:
        offs.append(len(buf))
        buf += e
    v, r = bytearray(3), bytearray(3)
    assert eng.translate_batch(1, buf, offs, [len(e) for e in errs], v, r, now=2.0) == 2
    assert list(v) == [Verdict.REPLY, Verdict.REPLY, Verdict.DROP]
    assert R(r[2]) == R.UNSOLICITED
    for k in (0, 1):
        pkt = bytes(buf[offs[k]:offs[k] + len(errs[k])])
        assert_icmp_checksums_valid(pkt)
        assert parse(pkt).dst == ENV[4 if k == 0 else 6][0]
    assert parse(bytes(buf[:len(errs[0])]))[ICMP].nexthopmtu == 1200
