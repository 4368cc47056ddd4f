"""Idle timeouts and expiry: 350 s for established TCP and replied UDP (AWS), exact expiry at
last_seen + timeout, both tuples and the port freed together, custom timeouts, monotonic time."""
from __future__ import annotations

import math

import pytest

from hyperplane import DropReason, Timeouts, Verdict
from kit.frames import ENI_A, ENV, HOST, build, eni_addr, fields, tcp, udp

E4, H4, A4 = ENV[4][0], HOST[4][0], ENI_A.ipv4


def _established_tcp(eng, family=4, t0=0.0, last=10.0, sport=40001):
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    assert eng.outbound(tcp(family, env, host, sport, 443, flags="S"), now=t0).verdict == \
        Verdict.NEW
    port = fields(eng.inbound(tcp(family, host, eni, 443, sport, flags="SA"),
                              now=t0 + 0.5).packet).dport
    assert port == sport
    r = eng.outbound(tcp(family, env, host, sport, 443, flags="A"), now=last)
    assert r.verdict == Verdict.ESTABLISHED
    return fields(r.packet).sport


def _replied_udp(eng, family=4, t0=0.0, last=10.0, sport=40001):
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    r = eng.outbound(udp(family, env, host, sport, 9000), now=t0)
    assert r.verdict == Verdict.NEW
    port = fields(r.packet).sport
    assert eng.inbound(udp(family, host, eni, 9000, port), now=last).verdict == Verdict.REPLY
    return port


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("kind", ["tcp_established", "udp_replied"])
def test_default_idle_timeout_is_350s_and_expiry_is_exact(make_engine, family, kind):
    eng = make_engine()
    env, host, eni = ENV[family][0], HOST[family][0], eni_addr(ENI_A, family)
    opener = _established_tcp if kind == "tcp_established" else _replied_udp
    port = opener(eng, family, t0=0.0, last=10.0)
    e, = eng.entries(now=10.0)
    assert e.state == ("ESTABLISHED" if kind == "tcp_established" else "REPLIED")
    assert e.timeout == 350.0
    assert eng.entries(now=110.0)[0].timeout == 250.0

    assert eng.expire(now=359.75) == 0
    assert len(eng) == 1
    assert eng.expire(now=360.0) == 1            # exactly last_seen + 350
    assert len(eng) == 0 and eng.entries(now=360.0) == []
    c = eng.counters()
    assert c["connections_expired"] == 1 and c["connections"] == 0
    assert all(p["used"] == 0 for p in eng.pool_fill())

    # both tuples went together: the reply is now unsolicited ...
    proto = "tcp" if kind == "tcp_established" else "udp"
    flags = "A"
    res = eng.inbound(build(family, proto, host, eni, 443 if proto == "tcp" else 9000, port,
                            flags=flags), now=361.0)
    assert res == (Verdict.DROP, None, DropReason.UNSOLICITED)
    # ... and the orig side is a new connection (TCP: which must start with SYN)
    res = eng.outbound(build(family, proto, env, host, 40001, 443 if proto == "tcp" else 9000,
                             flags=flags), now=361.0)
    if proto == "tcp":
        assert res == (Verdict.DROP, None, DropReason.TCP_NOT_SYN)
    else:
        assert res.verdict == Verdict.NEW
        assert eng.counters()["connections_created"] == 2


def test_expiry_happens_on_any_call_not_only_expire(make_engine):
    eng = make_engine()
    port = _replied_udp(eng, last=10.0)
    # no expire() call: the inbound packet at the deadline itself finds nothing
    res = eng.inbound(udp(4, H4, A4, 9000, port), now=360.0)
    assert res == (Verdict.DROP, None, DropReason.UNSOLICITED)
    assert eng.counters()["connections_expired"] == 1


def test_traffic_in_either_direction_refreshes_the_one_timer(make_engine):
    eng = make_engine()
    port = _replied_udp(eng, last=10.0)
    assert eng.outbound(udp(4, E4, H4, 40001, 9000), now=300.0).verdict == Verdict.ESTABLISHED
    assert eng.expire(now=649.5) == 0
    assert eng.inbound(udp(4, H4, A4, 9000, port), now=649.5).verdict == Verdict.REPLY
    assert eng.expire(now=999.0) == 0
    assert eng.entries(now=999.0)[0].timeout == 0.5
    assert eng.expire(now=999.5) == 1


@pytest.mark.parametrize("state,steps,timeout", [
    ("SYN_SENT", ["S"], 120.0),
    ("SYN_RECV", ["S", "<SA"], 60.0),
    ("FIN_WAIT", ["S", "<SA", "A", "FA"], 120.0),
    ("CLOSE_WAIT", ["S", "<SA", "A", "FA", "<A"], 60.0),
    ("LAST_ACK", ["S", "<SA", "A", "FA", "<FA"], 30.0),
    ("TIME_WAIT", ["S", "<SA", "A", "FA", "<FA", "A"], 120.0),
    ("CLOSE", ["S", "<RA"], 10.0),     # the VPC host refuses: RST|ACK acknowledging the SYN
    ("UNREPLIED", ["udp"], 30.0),
])
def test_per_state_default_timeouts(make_engine, state, steps, timeout):
    eng = make_engine()
    t = 0.0
    for s in steps:
        t += 1.0
        if s == "udp":
            r = eng.outbound(udp(4, E4, H4, 40001, 9000), now=t)
        elif s.startswith("<"):
            # the environment's SYN is seq 1000: the host acknowledges 1001 (RFC 9293 3.4)
            r = eng.inbound(tcp(4, H4, A4, 443, 40001, flags=s[1:],
                                ack=1001 if "A" in s else 0), now=t)
        else:
            r = eng.outbound(tcp(4, E4, H4, 40001, 443, flags=s), now=t)
        assert r.verdict != Verdict.DROP, (s, r)
    e, = eng.entries(now=t)
    assert (e.state, e.timeout) == (state, timeout)
    assert eng.expire(now=t + timeout - 0.25) == 0
    assert eng.expire(now=t + timeout) == 1


def test_custom_timeouts_are_respected(make_engine):
    to = Timeouts(tcp_syn_sent=3.0, tcp_syn_recv=4.0, tcp_established=5.0, udp_unreplied=2.5,
                  udp_replied=7.0)
    eng = make_engine(timeouts=to)
    eng.outbound(tcp(4, E4, H4, 40001, 443, flags="S"), now=0.0)
    eng.outbound(udp(4, E4, H4, 40002, 9000), now=0.0)
    got = sorted((e.proto, e.state, e.timeout) for e in eng.entries(now=0.0))
    assert got == [("tcp", "SYN_SENT", 3.0), ("udp", "UNREPLIED", 2.5)]
    assert eng.expire(now=2.5) == 1                 # the UDP flow
    assert [e.proto for e in eng.entries(now=2.5)] == ["tcp"]
    eng.inbound(tcp(4, H4, A4, 443, 40001, flags="SA"), now=2.75)   # SYN_RECV: 4 s from now
    assert eng.entries(now=2.75)[0].timeout == 4.0
    assert eng.expire(now=6.5) == 0
    eng.outbound(tcp(4, E4, H4, 40001, 443, flags="A"), now=6.5)    # ESTABLISHED: 5 s
    e, = eng.entries(now=6.5)
    assert (e.state, e.timeout) == ("ESTABLISHED", 5.0)
    assert eng.expire(now=11.25) == 0
    assert eng.expire(now=11.5) == 1
    assert eng.counters()["connections_expired"] == 2


def test_expire_counts_several_classes_at_once(make_engine):
    eng = make_engine()
    for i in range(3):
        eng.outbound(udp(4, E4, H4, 41000 + i, 9000), now=float(i))        # UNREPLIED 30 s
        eng.outbound(tcp(4, E4, H4, 42000 + i, 443, flags="S"), now=float(i))  # SYN_SENT 120 s
    assert len(eng) == 6
    assert eng.expire(now=31.0) == 2
    assert eng.expire(now=32.0) == 1
    assert eng.expire(now=122.0) == 3
    assert len(eng) == 0 and eng.counters()["connections_expired"] == 6


def test_time_never_goes_backwards(make_engine):
    eng = make_engine()
    eng.outbound(udp(4, E4, H4, 40001, 9000), now=100.0)
    # an earlier "now" is read as the latest time seen
    assert eng.entries(now=50.0)[0].timeout == 30.0
    assert eng.outbound(udp(4, E4, H4, 40001, 9000), now=20.0).verdict == Verdict.ESTABLISHED
    assert eng.expire(now=0.0) == 0
    assert eng.expire(now=129.5) == 0
    assert eng.expire(now=130.0) == 1          # last_seen stayed 100, not 20


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_now_is_refused(make_engine, bad):
    eng = make_engine()
    with pytest.raises(ValueError):
        eng.outbound(udp(4, E4, H4, 40001, 9000), now=bad)
    with pytest.raises(ValueError):
        eng.expire(now=bad)
    assert len(eng) == 0


def test_clock_is_used_when_now_is_omitted(make_engine):
    t = [1000.0]
    eng = make_engine(clock=lambda: t[0])
    assert eng.outbound(udp(4, E4, H4, 40001, 9000)).verdict == Verdict.NEW
    t[0] = 1010.0
    assert eng.entries()[0].timeout == 20.0
    t[0] = 1030.0
    assert eng.expire() == 1
    assert eng.counters()["connections_expired"] == 1
