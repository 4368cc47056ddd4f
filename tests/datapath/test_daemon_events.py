"""The daemon's event fan-out to `conntrack events` readers, without a lab: a real engine's
events, a socketpair standing in for the client."""
from __future__ import annotations

import json
import socket

import pytest

from hyperplane.datapath import daemon, events
from hyperplane.engine import reference
from hyperplane.engine.ctfilter import Filter
from kit.frames import ENV, HOST, make_config, no_clock, udp


class _Bare(daemon.Daemon):
    """Only what _fan_out touches: no data path, no plan."""

    def __init__(self):   # noqa: D107 - the real one builds links
        self._subs = []
        self.events_sent = 0
        self.keys = {}
        self.natgw = {}


def _engine_with_events(n):
    eng = reference.Engine(make_config(), clock=no_clock)
    eng.enable_events()
    for k in range(n):
        eng.outbound(udp(4, ENV[4][k % 2], HOST[4][0], 41000 + k, 53), now=1.0)
    return eng, eng.take_events()


def _reader(sub_filter=None, kinds=("new",)):
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return events.Subscriber(ours, Filter(sub_filter), list(kinds)), theirs


def _lines(sock):
    sock.settimeout(1)
    data = b""
    while not data.endswith(b"\n"):
        data += sock.recv(1 << 20)
    return [json.loads(x) for x in data.decode().splitlines()]


def test_matching_events_reach_the_reader_and_ring_losses_are_reported_first():
    d = _Bare()
    eng, evs = _engine_with_events(4)
    sub, client = _reader({"orig_src": ENV[4][0]})
    d._subs = [sub]
    d._fan_out([(eng, evs)], ring_lost=3)
    got = _lines(client)
    assert got[0] == {"kind": "lost", "count": 3}
    assert [(x["kind"], x["orig"]["src"], x["orig"]["sport"]) for x in got[1:]] == [
        ("new", ENV[4][0], 41000), ("new", ENV[4][0], 41002)]
    assert got[1]["timeout"] == 30.0            # UDP UNREPLIED's full timeout
    assert d.events_sent == 2 and d._subs == [sub]
    client.close()


def test_a_loss_alone_is_still_reported():
    d = _Bare()
    sub, client = _reader()
    d._subs = [sub]
    d._fan_out([], ring_lost=5)
    assert _lines(client) == [{"kind": "lost", "count": 5}]
    client.close()


def test_a_reader_that_does_not_read_gets_a_lost_count_not_unbounded_memory(monkeypatch):
    monkeypatch.setattr(events, "SUBSCRIBER_BACKLOG", 64)
    d = _Bare()
    eng, evs = _engine_with_events(2)
    sub, client = _reader()
    d._subs = [sub]
    sub.pending += b"x" * 65                    # already over the backlog
    d._fan_out([(eng, evs)])
    assert sub.lost == 2 and d.events_sent == 0
    client.close()


def test_a_reader_that_went_away_is_dropped():
    d = _Bare()
    sub, client = _reader()
    d._subs = [sub]
    client.close()
    d._fan_out([])
    assert d._subs == []
    with pytest.raises(OSError):
        sub.conn.send(b"x")                     # closed by the daemon
