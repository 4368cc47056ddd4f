"""Connection events (what `conntrack -E` shows), flow-log deltas, delete and flush, per-ENI
counters: both engines (the differential test also holds them equal on random programs)."""
from __future__ import annotations

import pytest

from hyperplane import Tuple5
from kit.frames import ENI_A, ENI_B, ENV, HOST, eni_addr, fields, tcp, udp

FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])


def _tcp_open(eng, family, sport=40000, now=1.0):
    """SYN, SYN-ACK, ACK: returns the ENI port."""
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    out = eng.outbound(tcp(family, env, host, sport, 443, "S"), now=now)
    port = fields(out.packet).sport
    eng.inbound(tcp(family, host, eni, 443, port, "SA"), now=now + 0.1)
    eng.outbound(tcp(family, env, host, sport, 443, "A"), now=now + 0.2)
    return port


def test_events_are_off_until_enabled(make_engine):
    eng = make_engine()
    _tcp_open(eng, 4)
    assert eng.take_events() == []
    eng.enable_events(16)
    assert eng.take_events() == []          # nothing before enabling is kept
    eng.outbound(tcp(4, ENV[4][0], HOST[4][0], 40000, 443, "F"), now=2.0)
    assert [e.kind for e in eng.take_events()] == ["update"]


@FAMILIES
def test_tcp_connection_events_in_order(make_engine, family):
    eng = make_engine()
    eng.enable_events()
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    port = _tcp_open(eng, family)
    eng.outbound(tcp(family, env, host, 40000, 443, "PA", payload=b"x" * 10), now=1.5)
    assert eng.expire(now=1000.0) == 1
    evs = eng.take_events()
    assert [(e.kind, e.state) for e in evs] == [
        ("new", "SYN_SENT"), ("update", "SYN_RECV"), ("update", "ESTABLISHED"),
        ("destroy", "ESTABLISHED")]
    assert [e.time for e in evs] == [1.0, 1.1, 1.2, 1000.0]
    assert {e.id for e in evs} == {1}
    new, destroy = evs[0], evs[-1]
    assert new.orig == Tuple5(env, 40000, host, 443)
    assert new.reply == Tuple5(host, 443, eni, port)
    assert (new.packets_orig, new.packets_reply) == (0, 0)    # NEW: before the first packet
    assert destroy.reason == "expired"
    assert (destroy.packets_orig, destroy.packets_reply) == (3, 1)
    # nothing was collected for flow logs, so the whole traffic is in the delta
    assert (destroy.delta_packets_orig, destroy.delta_packets_reply) == (3, 1)
    assert destroy.delta_bytes_orig == destroy.bytes_orig > 0
    assert new.eni == ENI_A.id and new.family == family and new.proto == "tcp"


def test_unsolicited_and_refused_packets_are_reject_events(make_engine):
    eng = make_engine(enis=[ENI_A, ENI_B])
    eng.enable_events()
    eng.set_egress_rules([("198.19.0.20/32", "udp", 53, 53)])
    pkt = udp(4, HOST[4][0], eni_addr(ENI_B, 4), 9000, 41000, payload=b"knock")
    eng.inbound(pkt, now=1.0)
    eng.outbound(udp(4, ENV[4][0], "198.19.0.21", 40000, 53), now=2.0)      # SG: not allowed
    eng.outbound(tcp(4, ENV[4][0], "198.19.0.20", 40001, 80, "A"), now=3.0)  # not a SYN
    evs = eng.take_events()
    assert [(e.kind, e.reason) for e in evs] == [
        ("reject", "unsolicited"), ("reject", "security_group"), ("reject", "tcp_not_syn")]
    inbound = evs[0]
    assert inbound.orig == Tuple5(HOST[4][0], 9000, eni_addr(ENI_B, 4), 41000)
    assert inbound.reply is None and inbound.id == 0 and inbound.state == ""
    assert inbound.eni == ENI_B.id                     # the ENI it was sent to
    assert (inbound.packets_reply, inbound.bytes_reply) == (1, len(pkt))
    assert (inbound.packets_orig, inbound.bytes_orig) == (0, 0)
    assert evs[1].eni == ENI_A.id                      # the ENI it would have left from
    assert evs[1].packets_orig == 1 and evs[1].packets_reply == 0
    assert len(eng) == 0


def test_a_full_ring_keeps_the_oldest_and_counts_the_rest(make_engine):
    eng = make_engine()
    eng.enable_events(16)                              # rounded to 16
    for k in range(20):
        eng.outbound(udp(4, ENV[4][0], HOST[4][0], 41000 + k, 53), now=1.0)
    evs = eng.take_events()
    assert len(evs) == 16
    assert [e.orig.sport for e in evs] == list(range(41000, 41016))
    assert eng.events_lost == 4 == eng.counters()["events_lost"]
    eng.outbound(udp(4, ENV[4][0], HOST[4][0], 42000, 53), now=1.0)
    assert [e.orig.sport for e in eng.take_events()] == [42000]   # room again


def test_discard_events_empties_the_ring_without_counting_a_loss(make_engine):
    eng = make_engine()
    eng.enable_events(16)
    for k in range(3):
        eng.outbound(udp(4, ENV[4][0], HOST[4][0], 41000 + k, 53), now=1.0)
    assert eng.discard_events() == 3
    assert eng.take_events() == [] and eng.events_lost == 0
    eng.outbound(udp(4, ENV[4][0], HOST[4][0], 42000, 53), now=1.0)
    assert [e.orig.sport for e in eng.take_events()] == [42000]


@pytest.mark.parametrize("bad", [-1, 1 << 25, 1.5, True, "16"])
def test_event_capacity_is_checked(make_engine, bad):
    with pytest.raises(ValueError, match="capacity"):
        make_engine().enable_events(bad)


def test_flow_collect_hands_out_each_packet_once(make_engine):
    eng = make_engine()
    eng.enable_events()
    port = _tcp_open(eng, 4)
    first = eng.flow_collect(now=2.0)
    assert len(first) == 1
    f = first[0]
    assert f.kind == "flow" and f.time == 1.2          # the last packet's time
    assert (f.delta_packets_orig, f.delta_packets_reply) == (2, 1)
    assert eng.flow_collect(now=2.5) == []             # nothing new
    eng.inbound(tcp(4, HOST[4][0], eni_addr(ENI_A, 4), 443, port, "PA", payload=b"yz"),
                now=3.0)
    second = eng.flow_collect(now=3.5)
    assert [(x.delta_packets_orig, x.delta_packets_reply, x.delta_bytes_reply)
            for x in second] == [(0, 1, 42)]
    assert (second[0].packets_orig, second[0].packets_reply) == (2, 2)   # totals go on
    # the destroy event then carries only what was not collected yet: nothing
    eng.take_events()
    assert eng.flush(now=4.0) == 1
    (gone,) = eng.take_events()
    assert gone.kind == "destroy" and gone.reason == "deleted"
    assert (gone.delta_packets_orig, gone.delta_packets_reply) == (0, 0)


def test_flow_collect_in_limited_steps_hands_out_each_packet_once(make_engine):
    """A round of flow_collect(limit=...) calls (the data path's, a chunk between polls)
    gives what one unlimited call would: every connection with traffic once, nothing twice,
    even with connections made and removed while the round goes on."""
    eng = make_engine()
    eng.enable_events()
    for i in range(10):
        eng.outbound(udp(4, ENV[4][0], HOST[4][0], 20000 + i, 53), now=1.0)
    assert eng.flow_collect_done
    got = eng.flow_collect(now=2.0, limit=4)
    assert len(got) == 4 and not eng.flow_collect_done
    assert eng.delete("udp", Tuple5(ENV[4][0], 20009, HOST[4][0], 53), now=2.0)
    eng.outbound(udp(4, ENV[4][0], HOST[4][0], 30000, 53), now=2.0)   # made mid-round
    while not eng.flow_collect_done:
        step = eng.flow_collect(now=2.0, limit=4)
        assert len(step) <= 4
        got += step
    gone = [e for e in eng.take_events() if e.kind == "destroy"]
    ports = sorted(e.orig.sport for e in got)
    late = eng.flow_collect(now=3.0)                 # the next round (unlimited)
    ports_late = [e.orig.sport for e in late]
    # each of the 10 first flows once: in the round, or (the deleted one) in its destroy event
    assert sorted(ports + [e.orig.sport for e in gone]) == sorted(
        [20000 + i for i in range(10)] + [30000] * (30000 in ports))
    assert len(set(ports)) == len(ports)
    # the connection made mid-round: in the round or in the next one, never in both
    assert (30000 in ports) != (30000 in ports_late)
    assert set(ports_late) <= {30000}
    assert all(e.delta_packets_orig == 1 for e in got + late)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_flow_collect_limit_is_checked(make_engine, bad):
    with pytest.raises(ValueError, match="limit"):
        make_engine().flow_collect(now=1.0, limit=bad)


def test_delete_frees_the_port_and_only_takes_orig_tuples(make_engine):
    eng = make_engine(port_min=40000, port_max=40000)  # one port per protocol
    env, host = ENV[4][0], HOST[4][0]
    out = eng.outbound(udp(4, env, host, 40000, 53), now=1.0)
    eni_port = fields(out.packet).sport
    # the reply tuple is not an orig tuple: nothing deleted
    assert eng.delete("udp", (host, 53, eni_addr(ENI_A, 4), eni_port), now=1.1) is False
    assert eng.delete("tcp", (env, 40000, host, 53), now=1.1) is False   # other protocol
    assert eng.outbound(udp(4, env, host, 40001, 53), now=1.2).packet is None   # exhausted
    assert eng.delete("udp", Tuple5(env, 40000, host, 53), now=1.3) is True
    assert len(eng) == 0
    assert eng.outbound(udp(4, env, host, 40001, 53), now=1.4).packet is not None
    with pytest.raises(ValueError, match="proto"):
        eng.delete("icmp", (env, 1, host, 2), now=1.5)
    with pytest.raises(ValueError):
        eng.delete("udp", (env, 1, "2001:2::1", 2), now=1.5)   # families differ


def test_eni_counters_per_eni_and_direction(make_engine):
    eng = make_engine(enis=[ENI_A, ENI_B])
    eng.set_eni_enabled(0, False)                      # new connections use ENI_B
    out = eng.outbound(udp(4, ENV[4][0], HOST[4][0], 40000, 53, payload=b"q" * 5), now=1.0)
    eng.inbound(udp(4, HOST[4][0], eni_addr(ENI_B, 4), 53, fields(out.packet).sport,
                    payload=b"a" * 9), now=1.1)
    a, b = eng.eni_counters()
    assert a == dict(eni=ENI_A.id, packets_outbound=0, bytes_outbound=0, packets_inbound=0,
                     bytes_inbound=0)
    assert b == dict(eni=ENI_B.id, packets_outbound=1, bytes_outbound=33, packets_inbound=1,
                     bytes_inbound=37)


def test_event_kinds_not_asked_for_are_skipped_not_lost(make_engine):
    eng = make_engine()
    eng.enable_events(16)
    eng.event_options(kinds=["destroy", "reject"])
    _tcp_open(eng, 4)                                  # NEW + 2 UPDATE: not recorded
    eng.inbound(udp(4, HOST[4][0], eni_addr(ENI_A, 4), 9, 41000), now=2.0)
    assert eng.expire(now=1000.0) == 1
    assert [e.kind for e in eng.take_events()] == ["reject", "destroy"]
    assert eng.events_lost == 0
    eng.enable_events(16)                              # resets the options: everything again
    eng.outbound(udp(4, ENV[4][0], HOST[4][0], 40000, 53), now=1001.0)
    assert [e.kind for e in eng.take_events()] == ["new"]


def test_rejects_past_the_limit_count_as_lost_until_the_next_drain(make_engine):
    eng = make_engine()
    eng.enable_events(64)
    eng.event_options(reject_limit=3)
    knock = [udp(4, HOST[4][0], eni_addr(ENI_A, 4), 9, 41000 + k) for k in range(5)]
    for pkt in knock:
        eng.inbound(pkt, now=1.0)
    eng.outbound(udp(4, ENV[4][0], HOST[4][0], 40000, 53), now=1.0)   # not a reject: kept
    evs = eng.take_events()
    assert [(e.kind, e.orig.dport) for e in evs] == [
        ("reject", 41000), ("reject", 41001), ("reject", 41002), ("new", 53)]
    assert eng.events_lost == 2
    assert eng.counters()["drops"]["unsolicited"] == 5   # the drops themselves all count
    for pkt in knock[:2]:                              # the drain gave a new budget
        eng.inbound(pkt, now=2.0)
    assert len(eng.take_events()) == 2 and eng.events_lost == 2


@pytest.mark.parametrize("kw", [dict(kinds=["new", "flow"]), dict(kinds="new"),
                                dict(reject_limit=-1), dict(reject_limit=1.5),
                                dict(reject_limit=True)])
def test_event_options_are_checked(make_engine, kw):
    eng = make_engine()
    eng.enable_events(16)
    with pytest.raises(ValueError, match="kinds|reject_limit"):
        eng.event_options(**kw)


@FAMILIES
def test_flow_collect_ors_the_flow_logs_tcp_flags_per_direction_and_starts_again(make_engine,
                                                                                  family):
    """AWS's tcp-flags: FIN 1, SYN 2, RST 4, SYN-ACK 18, OR-ed over the interval per direction;
    a plain ACK or PSH adds nothing; each collection starts from 0; a destroy event carries
    what was not collected yet. UDP carries 0."""
    eng = make_engine()
    eng.enable_events()
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    port = _tcp_open(eng, family)                          # S out, SA in, A out
    eng.outbound(tcp(family, env, host, 40000, 443, "PA", payload=b"x"), now=1.3)
    (f,) = eng.flow_collect(now=2.0)
    assert (f.tcp_flags_orig, f.tcp_flags_reply) == (2, 18)
    eng.outbound(tcp(family, env, host, 40000, 443, "PA", payload=b"y"), now=2.5)
    (f,) = eng.flow_collect(now=3.0)
    assert (f.tcp_flags_orig, f.tcp_flags_reply) == (0, 0)  # data only: no listed flag
    eng.outbound(tcp(family, env, host, 40000, 443, "FA"), now=3.5)
    eng.inbound(tcp(family, host, eni, 443, port, "FA"), now=3.6)
    (f,) = eng.flow_collect(now=4.0)
    assert (f.tcp_flags_orig, f.tcp_flags_reply) == (1, 1)
    eng.inbound(tcp(family, host, eni, 443, port, "R"), now=4.5)
    eng.take_events()
    assert eng.flush(now=5.0) == 1
    (gone,) = [e for e in eng.take_events() if e.kind == "destroy"]
    assert (gone.tcp_flags_orig, gone.tcp_flags_reply) == (0, 4)
    eng.outbound(udp(family, env, host, 42000, 53), now=6.0)
    (u,) = eng.flow_collect(now=7.0)
    assert (u.proto, u.tcp_flags_orig, u.tcp_flags_reply) == ("udp", 0, 0)


def test_a_short_connection_ors_syn_and_fin_into_3_and_19(make_engine):
    """AWS's example: opened and closed within one interval, the client's record shows 3
    (SYN, FIN) and the server's 19 (SYN-ACK, FIN)."""
    eng = make_engine()
    env, host, eni = ENV[4][0], HOST[4][0], eni_addr(ENI_A, 4)
    port = _tcp_open(eng, 4)
    eng.outbound(tcp(4, env, host, 40000, 443, "FA"), now=1.5)
    eng.inbound(tcp(4, host, eni, 443, port, "FA"), now=1.6)
    (f,) = eng.flow_collect(now=2.0)
    assert (f.tcp_flags_orig, f.tcp_flags_reply) == (3, 19)
