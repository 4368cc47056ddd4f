"""max_connections_per_source: one environment cannot take every port and table slot of an ENI
it shares (issue 7's SYN-flood protection), on both engines."""
from __future__ import annotations

import ipaddress
import random

import pytest

from hyperplane import ConfigError, DropReason, Verdict
from kit.frames import ENV, HOST, tcp, udp


def _syn(env, sport, family=4):
    return tcp(family, env, HOST[family][0], sport, 443, "S")


def test_a_source_holds_at_most_its_limit_and_the_others_are_not_affected(make_engine):
    eng = make_engine(max_connections_per_source=3)
    a, b = ENV[4][0], ENV[4][1]
    got = [eng.outbound(_syn(a, 40000 + k), now=1.0).verdict for k in range(10)]
    assert got == [Verdict.NEW] * 3 + [Verdict.DROP] * 7
    assert eng.counters()["drops"]["source_limit"] == 7
    # another environment, and the same one over IPv6 (another address), still connect
    assert eng.outbound(_syn(b, 40000), now=1.0).verdict == Verdict.NEW
    assert eng.outbound(_syn(ENV[6][0], 40000, 6), now=1.0).verdict == Verdict.NEW
    # the flooding source's existing connections keep working
    assert eng.outbound(tcp(4, a, HOST[4][0], 40000, 443, "S"), now=1.1).verdict != Verdict.DROP
    # a connection of its own going away gives room for exactly one more
    assert eng.delete("tcp", (a, 40001, HOST[4][0], 443), now=2.0)
    assert eng.outbound(_syn(a, 41000), now=2.0).verdict == Verdict.NEW
    assert eng.outbound(_syn(a, 41001), now=2.0).reason == DropReason.SOURCE_LIMIT
    # expiry frees them too
    eng.expire(now=1000.0)
    assert len(eng) == 0
    assert eng.outbound(udp(4, a, HOST[4][0], 42000, 53), now=1000.0).verdict == Verdict.NEW


def test_no_limit_by_default(make_engine):
    eng = make_engine(capacity=50)
    assert all(eng.outbound(_syn(ENV[4][0], 40000 + k), now=1.0).verdict == Verdict.NEW
               for k in range(50))
    assert eng.counters()["drops"]["source_limit"] == 0


def test_many_sources_come_and_go(make_engine):
    """Thousands of sources with one connection each, deleted in random order and opened
    again: the per-source counts (an open-addressing table in C with backward-shift deletion)
    neither forget a source nor keep a stale one."""
    eng = make_engine(max_connections_per_source=1, capacity=5000)
    rng = random.Random(7)
    net = ipaddress.ip_network("198.18.128.0/20")
    srcs = [str(net[i]) for i in range(1, 3001)]
    for s in srcs:
        assert eng.outbound(_syn(s, 40000), now=1.0).verdict == Verdict.NEW
    for s in srcs:                      # each holds its one connection
        assert eng.outbound(_syn(s, 40001), now=1.0).reason == DropReason.SOURCE_LIMIT
    order = srcs[:]
    rng.shuffle(order)
    for s in order[:2000]:
        assert eng.delete("tcp", (s, 40000, HOST[4][0], 443), now=2.0)
    gone = set(order[:2000])
    for s in srcs:
        r = eng.outbound(_syn(s, 40002), now=3.0)
        assert r.verdict == (Verdict.NEW if s in gone else Verdict.DROP), s
    assert len(eng) == 3000


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", 1 << 32])
def test_the_limit_is_checked(make_engine, bad):
    with pytest.raises(ConfigError, match="max_connections_per_source"):
        make_engine(max_connections_per_source=bad)
