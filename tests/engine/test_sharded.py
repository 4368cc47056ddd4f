"""Port slices and ShardedEngine (issue 19): an engine may hold one slice of every ENI's ports
(``port_slice=(index, count)``: the ports port_owner(p, count) == index, pairs of ports), and N such shards, one per data
path worker, are seen as one table. Both engines (the differential test runs sliced engines too).

Packets go to the shard the kernel would steer them to: outbound by the source port, inbound by
the destination port (``port_owner(sport, N)`` / ``port_owner(dport, N)``)."""
from __future__ import annotations

import struct

import pytest

from hyperplane import DropReason, Verdict
from hyperplane.engine import ShardedEngine
from hyperplane.engine.config import DEFAULT_PORT_MAX, DEFAULT_PORT_MIN
from hyperplane.engine.types import SNAP_HEADER, SNAP_RECORD, port_owner, slice_ports
from kit.frames import ENI_A, ENI_B, ENV, HOST, fields, make_config, no_clock, tcp, udp

E4, H4 = ENV[4][0], HOST[4][0]
SMALL = dict(port_min=40000, port_max=40099)


def _records(blob):
    body = blob[SNAP_HEADER.size:]
    return [bytes(body[i:i + SNAP_RECORD.size]) for i in range(0, len(body), SNAP_RECORD.size)]


def _port_of(rec):
    return struct.unpack_from("<H", rec, 148)[0]


def _sharded(engine_cls, workers, **kw):
    return ShardedEngine(make_config(**kw), workers, clock=no_clock, engine_cls=engine_cls)


def _out(sh, pkt, now):
    """Outbound as the kernel steers it: to the worker owning the packet's source port."""
    return sh.shards[port_owner(fields(pkt).sport, sh.workers)].outbound(pkt, now=now)


def _in(sh, pkt, now):
    return sh.shards[port_owner(fields(pkt).dport, sh.workers)].inbound(pkt, now=now)


def _open_flows(sh, n, now=1.0, first_sport=20000):
    """n TCP connections through the handshake and n UDP flows with a reply; their ENI ports."""
    ports = []
    for i in range(n):
        sp = first_sport + i
        out = _out(sh, tcp(4, E4, H4, sp, 443, "S"), now + i * 0.01)
        assert out.verdict == Verdict.NEW, (i, out)
        f = fields(out.packet)
        assert _in(sh, tcp(4, H4, f.src, 443, f.sport, "SA"), now + i * 0.01).verdict == \
            Verdict.REPLY
        out = _out(sh, udp(4, E4, H4, sp, 53), now + i * 0.01)
        g = fields(out.packet)
        assert _in(sh, udp(4, H4, g.src, 53, g.sport), now + i * 0.01).verdict == Verdict.REPLY
        ports += [f.sport, g.sport]
    return ports


# ---- slices of a port range ---------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi", [(DEFAULT_PORT_MIN, DEFAULT_PORT_MAX), (40000, 40099),
                                   (1, 65535), (7, 7), (1000, 1002), (65534, 65535)])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 64])
def test_slices_partition_the_range_exactly(lo, hi, count):
    slices = [set(slice_ports(lo, hi, i, count)) for i in range(count)]
    assert set().union(*slices) == set(range(lo, hi + 1))
    assert sum(len(s) for s in slices) == hi - lo + 1, "the slices overlap"
    for i, s in enumerate(slices):
        assert all(port_owner(p, count) == i for p in s)
    if (lo, hi) == (DEFAULT_PORT_MIN, DEFAULT_PORT_MAX):
        assert sum(len(s) for s in slices) == 65_000


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_pool_sizes_sum_to_the_ports_per_eni(engine_cls, workers):
    """Each shard's pool_fill size is its slice's (the C engine counts it in hp_slice_ports, the
    reference in types.slice_ports); the ShardedEngine's rows sum to exactly 65,000."""
    sh = _sharded(engine_cls, workers, enis=[ENI_A, ENI_B])
    for i, s in enumerate(sh.shards):
        assert s.port_slice == (i, workers)
        assert {r["size"] for r in s.pool_fill()} == \
            {len(slice_ports(DEFAULT_PORT_MIN, DEFAULT_PORT_MAX, i, workers))}
    rows = sh.pool_fill()
    assert len(rows) == 8     # 2 ENIs x 2 families x 2 protocols, as one engine reports them
    assert {r["size"] for r in rows} == {65_000}
    assert rows == [dict(r, used=0, size=65_000) for r in sh.shards[0].pool_fill()]


@pytest.mark.parametrize("port_slice", [(1, 3), (0, 2), (5, 7)])
def test_a_sliced_engine_hands_out_exactly_its_slice_then_is_exhausted(make_engine, engine_cls,
                                                                       port_slice):
    eng = engine_cls(make_config(**SMALL), clock=no_clock, port_slice=port_slice)
    want = set(slice_ports(40000, 40099, *port_slice))
    got = set()
    for i in range(len(want)):
        res = eng.outbound(tcp(4, E4, H4, 1000 + i, 443, "S"), now=1.0)  # sport not in range
        assert res.verdict == Verdict.NEW, (i, res)
        got.add(fields(res.packet).sport)
    assert got == want
    assert eng.take_signals() == []
    assert eng.outbound(tcp(4, E4, H4, 5000, 443, "S"), now=1.0) == \
        (Verdict.DROP, None, DropReason.PORT_EXHAUSTED)
    assert eng.take_signals() == [("pool_exhausted", 4, "tcp")]
    row = [r for r in eng.pool_fill() if r["family"] == 4 and r["proto"] == "tcp"][0]
    assert (row["used"], row["size"]) == (len(want), len(want))


def test_the_source_port_is_kept_only_inside_the_slice(engine_cls):
    eng = engine_cls(make_config(**SMALL), clock=no_clock, port_slice=(0, 2))
    kept = eng.outbound(tcp(4, E4, H4, 40008, 443, "S"), now=1.0)   # 40008-40009: slice 0
    assert fields(kept.packet).sport == 40008
    other = eng.outbound(tcp(4, E4, H4, 40010, 443, "S"), now=1.0)  # 40010-40011: slice 1
    port = fields(other.packet).sport
    assert port != 40010 and port_owner(port, 2) == 0 and 40000 <= port <= 40099


def test_an_empty_slice_takes_no_connection(engine_cls):
    eng = engine_cls(make_config(port_min=40000, port_max=40000), clock=no_clock,
                     port_slice=(1, 2))
    assert eng.outbound(tcp(4, E4, H4, 40001, 443, "S"), now=1.0) == \
        (Verdict.DROP, None, DropReason.PORT_EXHAUSTED)
    assert {r["size"] for r in eng.pool_fill()} == {0}


@pytest.mark.parametrize("bad", [(2, 2), (0, 65), (-1, 2), (0, 0), "x", (1,), (True, 2),
                                 (0.0, 1), None])
def test_a_bad_port_slice_is_refused_naming_it(engine_cls, bad):
    with pytest.raises(ValueError, match="port_slice"):
        engine_cls(make_config(), clock=no_clock, port_slice=bad)


def test_restore_refuses_a_record_of_another_slice(make_engine, engine_cls):
    whole = make_engine()
    ports = _open_flows_plain(whole, 20)
    blob = whole.snapshot()
    half = engine_cls(make_config(), clock=no_clock, port_slice=(1, 2))
    got = half.restore(blob, now=2.0)
    odd = sum(1 for p in ports if port_owner(p, 2))
    assert got["restored"] == odd and got["other_slice"] == len(ports) - odd
    assert all(port_owner(e.reply.dport, 2) == 1 for e in half.entries(now=2.0))


def _open_flows_plain(eng, n, now=1.0):
    ports = []
    for i in range(n):
        out = eng.outbound(tcp(4, E4, H4, 20000 + i, 443, "S"), now=now)
        f = fields(out.packet)
        eng.inbound(tcp(4, H4, f.src, 443, f.sport, "SA"), now=now)
        ports.append(f.sport)
    return ports


# ---- ShardedEngine ------------------------------------------------------------------------------
def test_one_worker_is_a_plain_engine(make_engine, engine_cls):
    plain = make_engine(enis=[ENI_A, ENI_B])
    sh = _sharded(engine_cls, 1, enis=[ENI_A, ENI_B])
    for e in (plain, sh):
        e.enable_events(1024)
    for i in range(30):
        pkt = (tcp if i % 2 else udp)(4, E4, H4, 30000 + i, 443)
        a = plain.outbound(pkt, now=1.0 + i)
        b = sh.shards[0].outbound(pkt, now=1.0 + i)
        assert a == b
    plain.inbound(udp(4, H4, ENI_A.ipv4, 1, 1), now=40.0)      # an unsolicited drop
    sh.shards[0].inbound(udp(4, H4, ENI_A.ipv4, 1, 1), now=40.0)
    assert sh.counters() == plain.counters()
    assert sh.entries(now=50.0) == plain.entries(now=50.0)
    assert sh.pool_fill() == plain.pool_fill()
    assert sh.eni_counters() == plain.eni_counters()
    assert sh.snapshot() == plain.snapshot()
    assert sh.take_events() == plain.take_events()
    assert len(sh) == len(plain)
    if hasattr(plain, "memory_bytes"):           # the compiled engine's
        assert sh.memory_bytes() == plain.memory_bytes()
    assert sh.flow_collect(now=60.0) == plain.flow_collect(now=60.0)
    assert sh.expire(now=500.0) == plain.expire(now=500.0)


def test_exhaustion_is_signalled_only_over_the_sum(engine_cls):
    sh = _sharded(engine_cls, 2, **SMALL)
    half = len(slice_ports(40000, 40099, 0, 2))
    for i in range(half + 1):          # shard 0's slice full, and one more SYN refused
        sh.shards[0].outbound(tcp(4, E4, H4, 1000 + 2 * i, 443, "S"), now=1.0)
    assert sh.take_signals() == [], "one full slice is not exhaustion: the other has ports"
    for i in range(half - 1):
        assert sh.shards[1].outbound(tcp(4, E4, H4, 1001 + 2 * i, 443, "S"),
                                     now=1.0).verdict == Verdict.NEW
    assert sh.take_signals() == [], "shard 1 has one port left"
    assert sh.shards[1].outbound(tcp(4, E4, H4, 3001, 443, "S"), now=1.0).verdict == Verdict.NEW
    assert sh.take_signals() == [("pool_exhausted", 4, "tcp")]
    assert sh.take_signals() == [], "reported once"
    assert sh.counters()["drops"]["port_exhausted"] == 1
    sh2 = _sharded(engine_cls, 2, **SMALL)
    for s in (0, 1):
        for i in range(half):
            sh2.shards[s].outbound(tcp(4, E4, H4, 1000 + 2 * i + s, 443, "S"), now=1.0)
    assert sh2.take_signals() == []
    sh2.shards[1].outbound(tcp(4, E4, H4, 9001, 443, "S"), now=1.0)
    assert sh2.take_signals() == [("pool_exhausted", 4, "tcp")]
    assert sh2.take_signals() == []
    assert [r["used"] for r in sh2.pool_fill() if r["proto"] == "tcp" and r["family"] == 4] \
        == [100]


def test_a_signal_watched_until_every_slice_is_full(engine_cls):
    sh = _sharded(engine_cls, 2, **SMALL)
    half = len(slice_ports(40000, 40099, 0, 2))
    for i in range(half + 1):
        sh.shards[0].outbound(tcp(4, E4, H4, 1000 + 2 * i, 443, "S"), now=1.0)
    assert sh.take_signals() == []
    for i in range(half):    # shard 1 fills without a refusal of its own
        sh.shards[1].outbound(tcp(4, E4, H4, 1001 + 2 * i, 443, "S"), now=1.0)
    assert sh.take_signals() == [("pool_exhausted", 4, "tcp")]


@pytest.mark.parametrize("workers", [2, 3])
def test_snapshot_of_one_worker_restores_into_n_and_back(engine_cls, workers):
    one = _sharded(engine_cls, 1, enis=[ENI_A, ENI_B])
    ports = _open_flows(one, 60)
    before = sorted(one.entries(now=5.0))
    blob = one.snapshot()
    many = _sharded(engine_cls, workers, enis=[ENI_A, ENI_B])
    got = many.restore(blob, now=5.0)
    assert got == dict(got, restored=len(ports)) and sum(got.values()) == len(ports)
    for i, s in enumerate(many.shards):
        assert all(port_owner(e.reply.dport, workers) == i for e in s.entries(now=5.0))
    assert sorted(many.entries(now=5.0)) == before
    assert len(many) == len(ports) and many.counters()["connections_restored"] == len(ports)
    blob2 = many.snapshot()
    assert blob2[:8] == blob[:8] and len(blob2) == len(blob)
    recs = _records(blob2)
    assert sorted(_port_of(r) for r in recs) == sorted(ports)
    order = [(r[151], struct.unpack_from("<d", r, 80)[0]) for r in recs]
    assert order == sorted(order), "each timeout class oldest first, as one engine writes it"
    back = _sharded(engine_cls, 1, enis=[ENI_A, ENI_B])
    assert back.restore(blob2, now=5.0)["restored"] == len(ports)
    assert sorted(back.entries(now=5.0)) == before
    # the connections go on: a reply through the owner shard is translated
    f = [e for e in many.entries(now=5.0) if e.proto == "udp"][0]
    assert _in(many, udp(4, f.reply.src, f.reply.dst, f.reply.sport, f.reply.dport),
               6.0).verdict == Verdict.REPLY


def test_events_counters_and_flow_records_are_merged(engine_cls):
    sh = _sharded(engine_cls, 2, enis=[ENI_A, ENI_B], capacity=1001)
    sh.enable_events(1024)
    ports = _open_flows(sh, 10)
    per = sh.per_shard()
    assert [p["index"] for p in per] == [0, 1]
    assert all(p["connections"] > 0 for p in per), "flows from even and odd ports: both shards"
    assert sum(p["connections"] for p in per) == len(sh) == len(ports)
    for p in per:
        assert all(r["used"] <= r["size"] for r in p["pools"])
        assert sum(r["used"] for r in p["pools"]) == p["connections"]
    _in(sh, udp(4, H4, ENI_A.ipv4, 1, 1000), 2.0)    # unsolicited, on shard 0
    _in(sh, udp(4, H4, ENI_A.ipv4, 1, 1001), 2.0)    # and on shard 1
    c = sh.counters()
    assert c["capacity"] == 1001 and [s.config.capacity for s in sh.shards] == [501, 501]
    assert c["connections"] == len(ports) and c["drops"]["unsolicited"] == 2
    assert c["packets_outbound"] == c["packets_inbound"] == 2 * 10   # drops are not translated
    assert sum(p["drops"] for p in sh.per_shard()) == 2
    assert sum(r["packets_outbound"] for r in sh.eni_counters()) == 20
    evs = sh.take_events()
    news = [e for e in evs if e.kind == "new"]
    assert len(news) == len(ports)
    assert len({e.id for e in news}) == len(news), "the shards hand out distinct ids"
    assert all((e.id - 1) % 2 == port_owner(int(e.reply.dport), 2) for e in news)
    assert [e.time for e in evs] == sorted(e.time for e in evs)
    rejects = [e for e in evs if e.kind == "reject"]
    assert len(rejects) == 2
    # a limited flow collection walks every shard once per round
    seen = []
    while True:
        seen += sh.flow_collect(now=3.0, limit=3)
        if sh.flow_collect_done:
            break
    assert len(seen) == len(ports) and len({(e.proto, e.orig) for e in seen}) == len(ports)
    assert sh.flow_collect(now=4.0) == []


def test_take_events_with_max_keeps_the_rest_in_order(engine_cls):
    sh = _sharded(engine_cls, 2)
    sh.enable_events(64)
    _open_flows(sh, 6)
    first = sh.take_events(max=5)
    rest = sh.take_events()
    assert len(first) == 5 and len(first) + len(rest) == 6 * 2 * 2   # NEW + UPDATE each
    times = [e.time for e in first + rest]
    assert times == sorted(times)


def test_delete_flush_and_config_reach_every_shard(engine_cls):
    sh = _sharded(engine_cls, 2, enis=[ENI_A])
    _open_flows(sh, 4)
    e = [x for x in sh.entries(now=2.0) if port_owner(x.reply.dport, 2) == 1][0]
    assert sh.delete(e.proto, e.orig, now=2.0) is True
    assert sh.delete(e.proto, e.orig, now=2.0) is False
    assert len(sh) == 7
    sh.add_eni(ENI_B)
    assert all(s.enis == [ENI_A, ENI_B] for s in sh.shards) and sh.enis == [ENI_A, ENI_B]
    sh.set_eni_enabled(ENI_A.id, False)
    assert all(not r["enabled"] for r in sh.pool_fill() if r["eni"] == ENI_A.id)
    sh.set_egress_rules([])          # nothing allowed: a new flow on either shard is refused
    for sp in (50000, 50001):
        assert _out(sh, udp(4, E4, H4, sp, 53), 3.0).reason == DropReason.SECURITY_GROUP
    assert sh.flush(now=3.0) == 7 and len(sh) == 0


def test_workers_and_config_are_checked(engine_cls):
    for bad in (0, 65, "2", True):
        with pytest.raises(ValueError, match="workers"):
            ShardedEngine(make_config(), bad, engine_cls=engine_cls)
    with pytest.raises(TypeError, match="EngineConfig"):
        ShardedEngine({}, 2, engine_cls=engine_cls)


def test_memory_counts_a_slice_pool_by_its_ports():
    """hp_engine_memory: a pool of half the ports costs half the per-port bytes (next, prev:
    2 bytes each, freed_at 8, in_use 1 = 13 per port)."""
    from kit.frames import compiled_module
    Engine = compiled_module().Engine
    whole = Engine(make_config(), clock=no_clock)
    half = Engine(make_config(), clock=no_clock, port_slice=(1, 2))
    for e in (whole, half):
        assert e.outbound(tcp(4, E4, H4, 1001, 443, "S"), now=1.0).verdict == Verdict.NEW
    assert whole.memory_bytes() - half.memory_bytes() == (65_000 - 32_500) * 13
