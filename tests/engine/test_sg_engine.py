"""Security-group egress rules and retired ENIs in the engine, both engines.

AWS security groups are stateful: the egress rules are looked at once, when a connection is
created in the orig direction (environment -> VPC); every later packet of that connection, and
every reply, follows the conntrack entry and is never checked again. A connection is allowed
when any rule matches its family, destination address, protocol and destination port; an empty
rule list allows nothing. ``set_eni_enabled(i, False)`` retires an ENI: no new connections, the
existing ones go on until they end.
"""
from __future__ import annotations

import pytest

from hyperplane import DropReason, Verdict
from hyperplane.engine import types
from kit.frames import ENI_A, ENI_B, ENV, HOST, fields, tcp, udp

E4, H4, H4b = ENV[4][0], HOST[4][0], HOST[4][1]     # 198.19.0.20 and .21
E6, H6 = ENV[6][0], HOST[6][0]
SG = DropReason.SECURITY_GROUP


def _used(eng):
    return sum(p["used"] for p in eng.pool_fill())


def test_the_reason_is_named_security_group():
    assert SG.label == "security_group"
    assert int(SG) == 18, "appended after the existing reasons: their numbers stay"


def test_no_rules_allow_everything(make_engine):
    eng = make_engine()
    eng.set_egress_rules([("0.0.0.0/0", "tcp", 443, 443)])
    eng.set_egress_rules(None)          # back to the default
    assert eng.outbound(tcp(4, E4, H4, 1000, 22), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(udp(6, E6, H6, 1000, 53), now=1.0).verdict == Verdict.NEW


def test_a_matching_rule_allows_and_others_are_denied_and_counted(make_engine):
    eng = make_engine()
    eng.set_egress_rules([("198.19.0.20/32", "tcp", 443, 444), ("198.19.0.0/24", "udp", 53, 53)])
    assert eng.outbound(tcp(4, E4, H4, 1000, 443), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(tcp(4, E4, H4, 1001, 444), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(udp(4, E4, H4b, 1002, 53), now=1.0).verdict == Verdict.NEW
    denied = [
        tcp(4, E4, H4, 1003, 442),          # port below the range
        tcp(4, E4, H4, 1004, 445),          # above it
        tcp(4, E4, H4b, 1005, 443),         # address outside the /32
        udp(4, E4, H4, 1006, 443),          # protocol: the 443 rule is TCP only
        tcp(4, E4, H4, 1007, 53),           # and the 53 rule UDP only
        tcp(6, E6, H6, 1008, 443),          # an IPv4 rule never allows IPv6
    ]
    for pkt in denied:
        res = eng.outbound(pkt, now=1.0)
        assert (res.verdict, res.reason, res.packet) == (Verdict.DROP, SG, None)
    c = eng.counters()
    assert c["drops"]["security_group"] == len(denied)
    assert c["connections"] == 3 and c["connections_created"] == 3
    assert _used(eng) == 3, "a denied connection takes no port"


def test_an_empty_list_allows_nothing(make_engine):
    eng = make_engine()
    eng.set_egress_rules([])
    for pkt in (tcp(4, E4, H4, 1000, 443), udp(6, E6, H6, 1000, 53)):
        assert eng.outbound(pkt, now=1.0).reason == SG
    assert len(eng) == 0 and _used(eng) == 0


def test_protocol_all_matches_every_protocol_and_port_of_its_family(make_engine):
    eng = make_engine()
    eng.set_egress_rules([("2001:2:0:200::/64", "all", 0, 0)])
    assert eng.outbound(tcp(6, E6, H6, 1000, 1), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(udp(6, E6, H6, 1001, 65535), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(tcp(4, E4, H4, 1002, 443), now=1.0).reason == SG
    assert eng.outbound(udp(6, E6, "2001:2:0:201::1", 1003, 53), now=1.0).reason == SG


def test_icmp_rules_are_accepted_and_allow_no_tcp_or_udp(make_engine):
    eng = make_engine()
    eng.set_egress_rules([("0.0.0.0/0", "icmp", 0, 65535)])
    assert eng.outbound(tcp(4, E4, H4, 1000, 443), now=1.0).reason == SG


def test_replies_and_later_packets_are_never_checked(make_engine):
    """Stateful: rules that change after a connection exists do not touch it, either way."""
    eng = make_engine()
    syn = eng.outbound(tcp(4, E4, H4, 1000, 443, flags="S"), now=1.0)
    u = eng.outbound(udp(4, E4, H4, 1001, 53), now=1.0)
    assert syn.verdict == u.verdict == Verdict.NEW
    eng.set_egress_rules([])            # now nothing may be opened
    t, p = fields(syn.packet), fields(u.packet)
    synack = tcp(4, H4, t.src, 443, t.sport, flags="SA", ack=1001)
    assert eng.inbound(synack, now=2.0).verdict == Verdict.REPLY
    assert eng.outbound(tcp(4, E4, H4, 1000, 443, flags="A"), now=2.0).verdict == \
        Verdict.ESTABLISHED
    assert eng.inbound(udp(4, H4, p.src, 53, p.sport), now=2.0).verdict == Verdict.REPLY
    assert eng.outbound(udp(4, E4, H4, 1001, 53), now=2.0).verdict == Verdict.ESTABLISHED
    assert eng.counters()["drops"]["security_group"] == 0
    # a new connection is checked
    assert eng.outbound(udp(4, E4, H4, 1002, 53), now=2.0).reason == SG


def test_a_denied_tcp_segment_that_is_no_syn_stays_tcp_not_syn(make_engine):
    """Order of checks (both engines): a TCP segment that cannot open a connection is
    tcp_not_syn before the rules are asked (what a NAT gateway answers with a RST)."""
    eng = make_engine()
    eng.set_egress_rules([])
    assert eng.outbound(tcp(4, E4, H4, 1000, 443, flags="A"), now=1.0).reason == \
        DropReason.TCP_NOT_SYN


def test_rule_bound_is_at_least_aws_300(make_engine):
    eng = make_engine()
    rules = [(f"198.18.{i // 256}.{i % 256}/32", "tcp", 443, 443) for i in range(512)]
    eng.set_egress_rules(rules[:300])
    eng.set_egress_rules(rules)                       # HP_MAX_SG_RULES = 512
    # the last rule of a full list is looked at
    eng.set_egress_rules(rules[:511] + [("198.19.0.20/32", "tcp", 443, 443)])
    assert eng.outbound(tcp(4, E4, H4, 1000, 443), now=1.0).verdict == Verdict.NEW
    with pytest.raises(ValueError, match="at most 512"):
        eng.set_egress_rules(rules + [("198.19.0.0/16", "all", 0, 0)])
    assert types.MAX_EGRESS_RULES == 512


@pytest.mark.parametrize("rules, match", [
    ("0.0.0.0/0", "not a list"),
    ([("0.0.0.0/0", "tcp", 1)], r"rule 0 .*must be \(cidr, protocol, from_port, to_port\)"),
    ([("0.0.0.0/0", "tcp", 1, 2), ("198.18.0.1/15", "tcp", 1, 2)],
     r"rule 1 .*cidr '198.18.0.1/15' is not a network address"),
    ([("nonsense", "tcp", 1, 2)], "rule 0 .*cidr 'nonsense'"),
    ([(None, "tcp", 1, 2)], "rule 0 .*cidr must be a string"),
    ([("0.0.0.0/0", "sctp", 1, 2)], "rule 0 .*protocol must be one of"),
    ([("0.0.0.0/0", "tcp", -1, 2)], "rule 0 .*from_port must be an integer 0..65535"),
    ([("0.0.0.0/0", "tcp", 1, 65536)], "rule 0 .*to_port must be an integer 0..65535"),
    ([("0.0.0.0/0", "tcp", True, 2)], "rule 0 .*from_port must be an integer"),
    ([("0.0.0.0/0", "udp", 9, 8)], "rule 0 .*from_port 9 is above to_port 8"),
])
def test_bad_rules_are_refused_by_name_and_change_nothing(make_engine, rules, match):
    eng = make_engine()
    eng.set_egress_rules([("198.19.0.20/32", "tcp", 443, 443)])
    with pytest.raises(ValueError, match=match):
        eng.set_egress_rules(rules)
    assert eng.outbound(tcp(4, E4, H4, 1000, 443), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(tcp(4, E4, H4, 1001, 80), now=1.0).reason == SG


# ---- retired ENIs ---------------------------------------------------------------------------
def test_a_disabled_eni_takes_no_new_connections_but_its_old_ones_flow(make_engine):
    eng = make_engine(enis=[ENI_A, ENI_B])
    old = eng.outbound(udp(4, E4, H4, 1000, 53), now=1.0)
    assert fields(old.packet).src == ENI_A.ipv4
    eng.set_eni_enabled(0, False)
    assert [r["enabled"] for r in eng.pool_fill()] == [False] * 4 + [True] * 4
    new = eng.outbound(udp(4, E4, H4, 1001, 53), now=1.0)
    assert new.verdict == Verdict.NEW and fields(new.packet).src == ENI_B.ipv4
    # the old connection, both ways, on the retired ENI
    o = fields(old.packet)
    assert eng.outbound(udp(4, E4, H4, 1000, 53), now=2.0).verdict == Verdict.ESTABLISHED
    back = eng.inbound(udp(4, H4, o.src, 53, o.sport), now=2.0)
    assert back.verdict == Verdict.REPLY and fields(back.packet).dst == E4
    # enabled again, by id: new connections prefer it (scale-out order)
    eng.set_eni_enabled(ENI_A.id, True)
    assert all(r["enabled"] for r in eng.pool_fill())
    assert fields(eng.outbound(udp(4, E4, H4, 1002, 53), now=3.0).packet).src == ENI_A.ipv4


def test_every_eni_disabled_is_no_eni_address(make_engine):
    eng = make_engine(enis=[ENI_A])
    eng.set_eni_enabled(0, False)
    res = eng.outbound(tcp(4, E4, H4, 1000, 443), now=1.0)
    assert res.reason == DropReason.NO_ENI_ADDRESS
    assert eng.take_signals() == [], "no pool ran out: no scale-out signal"


def test_enabling_an_eni_ends_exhaustion(make_engine):
    eng = make_engine(enis=[ENI_A, ENI_B], port_min=40000, port_max=40001)
    eng.set_eni_enabled(1, False)
    for i in range(2):
        assert eng.outbound(udp(4, E4, H4, 1000 + i, 53), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(udp(4, E4, H4, 1002, 53), now=1.0).reason == DropReason.PORT_EXHAUSTED
    assert eng.take_signals() == [("pool_exhausted", 4, "udp")]
    eng.set_eni_enabled(1, True)
    res = eng.outbound(udp(4, E4, H4, 1002, 53), now=1.0)
    assert res.verdict == Verdict.NEW and fields(res.packet).src == ENI_B.ipv4


@pytest.mark.parametrize("which", [2, -1, "eni-00000000000000000", 1.0, True])
def test_bad_eni_reference_is_refused(make_engine, which):
    eng = make_engine(enis=[ENI_A, ENI_B])
    with pytest.raises(ValueError, match="ENI"):
        eng.set_eni_enabled(which, False)
    assert all(r["enabled"] for r in eng.pool_fill())
