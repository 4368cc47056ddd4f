"""Capacity, port pools, exhaustion and its signal, scale-out over ENIs, port reuse delay,
no-address and tuple-collision drops, and the 65,000-port ENI (slow)."""
from __future__ import annotations

import struct
from array import array

import pytest

from hyperplane import DropReason, Verdict
from hyperplane.engine import reference
from hyperplane.engine.config import DEFAULT_PORT_MAX, DEFAULT_PORT_MIN
from kit.frames import (
    ENI_A, ENI_B, ENI_V4_ONLY, ENV, HOST, assert_checksums_valid, build, fields, tcp, udp,
)

E4, H4 = ENV[4][0], HOST[4][0]
SMALL = dict(port_min=40000, port_max=40099)
SMALL_RANGE = set(range(40000, 40100))


def _syn(i, family=4, env_i=0, host_i=0):
    """Flow number i: a SYN from a source port outside the small pool range (never kept)."""
    return tcp(family, ENV[family][env_i], HOST[family][host_i], 1000 + i, 443, flags="S")


def _fill(eng, n, now=1.0, family=4):
    ports, srcs = [], []
    for i in range(n):
        res = eng.outbound(_syn(i, family), now=now)
        assert res.verdict == Verdict.NEW, (i, res)
        f = fields(res.packet)
        ports.append(f.sport)
        srcs.append(f.src)
    return ports, srcs


# ---- table capacity ---------------------------------------------------------------------------
def test_table_full(make_engine):
    eng = make_engine(capacity=3)
    _fill(eng, 3)
    assert eng.outbound(_syn(3), now=2.0) == (Verdict.DROP, None, DropReason.TABLE_FULL)
    assert eng.outbound(udp(4, E4, H4, 5000, 9000), now=2.0) == (
        Verdict.DROP, None, DropReason.TABLE_FULL)
    c = eng.counters()
    assert c["drops"]["table_full"] == 2
    assert (c["connections"], c["capacity"], c["connections_created"]) == (3, 3, 3)
    assert sum(p["used"] for p in eng.pool_fill()) == 3, "a refused flow must not hold a port"
    # tracked connections still pass
    assert eng.outbound(_syn(0), now=2.0).verdict == Verdict.ESTABLISHED
    # once they expire (SYN_SENT: 120 s; flow 0 was refreshed at t=2) there is room again
    assert eng.expire(now=121.0) == 2
    assert eng.outbound(_syn(3), now=121.0).verdict == Verdict.NEW
    assert eng.outbound(_syn(4), now=121.0).verdict == Verdict.NEW
    assert eng.outbound(_syn(5), now=121.0) == (Verdict.DROP, None, DropReason.TABLE_FULL)


# ---- port pools -------------------------------------------------------------------------------
def test_small_pool_distinct_ports_then_exhausted_with_one_signal(make_engine):
    eng = make_engine(**SMALL)
    ports, srcs = _fill(eng, 100)
    assert set(ports) == SMALL_RANGE
    assert set(srcs) == {ENI_A.ipv4}
    assert eng.take_signals() == []
    res = eng.outbound(_syn(100), now=2.0)
    assert res == (Verdict.DROP, None, DropReason.PORT_EXHAUSTED)
    assert eng.take_signals() == [("pool_exhausted", 4, "tcp")]
    assert eng.outbound(_syn(101), now=2.0).reason == DropReason.PORT_EXHAUSTED
    assert eng.take_signals() == [], "the signal is raised once, not per packet"
    assert eng.counters()["drops"]["port_exhausted"] == 2
    # other pools are independent: UDP over IPv4 and TCP over IPv6 still work
    assert eng.outbound(udp(4, E4, H4, 1000, 9000), now=2.0).verdict == Verdict.NEW
    assert eng.outbound(_syn(0, family=6), now=2.0).verdict == Verdict.NEW
    assert eng.take_signals() == []
    fill = {(p["family"], p["proto"]): (p["used"], p["size"]) for p in eng.pool_fill()}
    assert fill == {(4, "tcp"): (100, 100), (4, "udp"): (1, 100), (6, "tcp"): (1, 100),
                    (6, "udp"): (0, 100)}
    # a port freed by expiry ends the exhaustion; the next exhaustion signals again
    assert eng.expire(now=121.0) == 101        # the 100 IPv4 TCP flows and the UDP one
    assert eng.outbound(_syn(100), now=121.0).verdict == Verdict.NEW
    _fill(eng, 99, now=121.0)
    assert eng.outbound(_syn(200), now=121.0).reason == DropReason.PORT_EXHAUSTED
    assert eng.take_signals() == [("pool_exhausted", 4, "tcp")]


def test_ipv6_udp_exhaustion_signal_names_family_and_proto(make_engine):
    eng = make_engine(port_min=40000, port_max=40003)
    for i in range(4):
        assert eng.outbound(udp(6, ENV[6][0], HOST[6][0], 1000 + i, 9000),
                            now=1.0).verdict == Verdict.NEW
    res = eng.outbound(udp(6, ENV[6][0], HOST[6][0], 2000, 9000), now=1.0)
    assert res.reason == DropReason.PORT_EXHAUSTED
    assert eng.take_signals() == [("pool_exhausted", 6, "udp")]


def test_second_eni_takes_over_when_first_is_full(make_engine):
    eng = make_engine(enis=[ENI_A, ENI_B], **SMALL)
    ports, srcs = _fill(eng, 200)
    assert srcs[:100] == [ENI_A.ipv4] * 100 and srcs[100:] == [ENI_B.ipv4] * 100
    assert set(ports[:100]) == SMALL_RANGE and set(ports[100:]) == SMALL_RANGE
    by_eni = {}
    for e in eng.entries(now=1.0):
        by_eni.setdefault(e.eni, set()).add((e.reply.dst, e.reply.dport))
    assert {k: len(v) for k, v in by_eni.items()} == {ENI_A.id: 100, ENI_B.id: 100}
    assert {a for a, _ in by_eni[ENI_B.id]} == {ENI_B.ipv4}
    assert eng.take_signals() == []
    assert eng.outbound(_syn(200), now=1.0).reason == DropReason.PORT_EXHAUSTED
    assert eng.take_signals() == [("pool_exhausted", 4, "tcp")]
    # the reply to a flow on the second ENI comes back through it
    last = _syn(199)
    out = eng.outbound(last, now=1.5)
    back = eng.inbound(tcp(4, H4, ENI_B.ipv4, 443, fields(out.packet).sport, flags="SA"),
                       now=1.5)
    assert back.verdict == Verdict.REPLY
    assert fields(back.packet).dst == E4 and fields(back.packet).dport == 1199


def test_add_eni_at_runtime_ends_exhaustion(make_engine):
    eng = make_engine(**SMALL)
    _fill(eng, 100)
    assert eng.outbound(_syn(100), now=1.0).reason == DropReason.PORT_EXHAUSTED
    assert eng.take_signals() == [("pool_exhausted", 4, "tcp")]
    eng.add_eni(ENI_B)
    assert [e.id for e in eng.enis] == [ENI_A.id, ENI_B.id]
    res = eng.outbound(_syn(100), now=2.0)
    assert res.verdict == Verdict.NEW
    assert fields(res.packet).src == ENI_B.ipv4
    assert_checksums_valid(res.packet)
    fill = [(p["eni"], p["family"], p["proto"], p["used"]) for p in eng.pool_fill()]
    assert fill == [(ENI_A.id, 4, "tcp", 100), (ENI_A.id, 4, "udp", 0),
                    (ENI_A.id, 6, "tcp", 0), (ENI_A.id, 6, "udp", 0),
                    (ENI_B.id, 4, "tcp", 1), (ENI_B.id, 4, "udp", 0),
                    (ENI_B.id, 6, "tcp", 0), (ENI_B.id, 6, "udp", 0)]
    # the added ENI fills up too, then the signal comes again
    for i in range(101, 200):
        assert eng.outbound(_syn(i), now=2.0).verdict == Verdict.NEW
    assert eng.outbound(_syn(200), now=2.0).reason == DropReason.PORT_EXHAUSTED
    assert eng.take_signals() == [("pool_exhausted", 4, "tcp")]


def test_pool_fill_rows_and_numbers(make_engine):
    eng = make_engine(enis=[ENI_A, ENI_V4_ONLY], port_min=40000, port_max=40009)
    for i in range(3):
        eng.outbound(_syn(i), now=1.0)
    for i in range(2):
        eng.outbound(udp(6, ENV[6][0], HOST[6][0], 1000 + i, 9000), now=1.0)
    for i in range(12):   # 10 on ENI A, 2 on the second
        eng.outbound(udp(4, E4, H4, 2000 + i, 9000), now=1.0)
    assert eng.pool_fill() == [dict(row, enabled=True) for row in [
        dict(eni=ENI_A.id, family=4, address=ENI_A.ipv4, proto="tcp", used=3, size=10),
        dict(eni=ENI_A.id, family=4, address=ENI_A.ipv4, proto="udp", used=10, size=10),
        dict(eni=ENI_A.id, family=6, address=ENI_A.ipv6, proto="tcp", used=0, size=10),
        dict(eni=ENI_A.id, family=6, address=ENI_A.ipv6, proto="udp", used=2, size=10),
        dict(eni=ENI_V4_ONLY.id, family=4, address=ENI_V4_ONLY.ipv4, proto="tcp", used=0,
             size=10),
        dict(eni=ENI_V4_ONLY.id, family=4, address=ENI_V4_ONLY.ipv4, proto="udp", used=2,
             size=10),
    ]]
    assert eng.expire(now=31.0) == 14                     # the unreplied UDP flows
    assert [p["used"] for p in eng.pool_fill()] == [3, 0, 0, 0, 0, 0]


def test_freed_port_queues_behind_every_other_free_port(make_engine):
    """RFC 6056 3.1: a freed port is handed out only after all ports free before it."""
    eng = make_engine(**SMALL)
    first = eng.outbound(udp(4, E4, H4, 1000, 9000), now=0.0)
    freed = fields(first.packet).sport
    assert eng.expire(now=30.0) == 1
    ports = []
    for i in range(100):
        res = eng.outbound(udp(4, E4, H4, 2000 + i, 9000), now=31.0)
        assert res.verdict == Verdict.NEW
        ports.append(fields(res.packet).sport)
    assert freed not in ports[:99]
    assert ports[99] == freed
    assert set(ports) == SMALL_RANGE


@pytest.mark.parametrize("delay", [2.0, 5.0])
def test_just_freed_port_is_not_kept_within_reuse_delay(make_engine, delay):
    eng = make_engine(port_reuse_delay=delay, **SMALL)
    res = eng.outbound(udp(4, ENV[4][0], H4, 40050, 9000), now=0.0)
    assert fields(res.packet).sport == 40050          # kept: never used before
    assert eng.expire(now=30.0) == 1                  # unreplied UDP: freed at t=30
    assert all(p["used"] == 0 for p in eng.pool_fill())
    soon = eng.outbound(udp(4, ENV[4][1], H4, 40050, 9000), now=30.0 + delay / 2)
    assert soon.verdict == Verdict.NEW
    assert fields(soon.packet).sport != 40050, "freed port reused within port_reuse_delay"
    assert 40000 <= fields(soon.packet).sport <= 40099
    later = eng.outbound(udp(4, ENV[4][2], H4, 40050, 9000), now=30.0 + delay)
    assert later.verdict == Verdict.NEW
    assert fields(later.packet).sport == 40050, "after the delay the source port is kept"


def test_zero_reuse_delay_keeps_freed_port_at_once(make_engine):
    eng = make_engine(port_reuse_delay=0.0, **SMALL)
    eng.outbound(udp(4, ENV[4][0], H4, 40050, 9000), now=0.0)
    assert eng.expire(now=30.0) == 1
    res = eng.outbound(udp(4, ENV[4][1], H4, 40050, 9000), now=30.0)
    assert fields(res.packet).sport == 40050


# ---- no address / tuple collision ---------------------------------------------------------------
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_ipv6_without_an_eni_ipv6_address(make_engine, proto):
    eng = make_engine(enis=[ENI_V4_ONLY])
    res = eng.outbound(build(6, proto, ENV[6][0], HOST[6][0], 40001, 443), now=1.0)
    assert res == (Verdict.DROP, None, DropReason.NO_ENI_ADDRESS)
    assert eng.counters()["drops"]["no_eni_address"] == 1
    assert len(eng) == 0
    assert eng.take_signals() == [], "no address is not exhaustion"
    assert eng.outbound(build(4, proto, E4, H4, 40001, 443), now=1.0).verdict == Verdict.NEW
    # adding a dual-stack ENI enables IPv6, on that ENI
    eng.add_eni(ENI_B)
    res = eng.outbound(build(6, proto, ENV[6][0], HOST[6][0], 40001, 443), now=2.0)
    assert res.verdict == Verdict.NEW
    assert fields(res.packet).src == ENI_B.ipv6


def test_outbound_packet_matching_a_reply_tuple_is_a_collision(make_engine):
    """An environment packet that looks like the VPC's reply to another connection."""
    eng = make_engine()
    out = eng.outbound(tcp(4, E4, H4, 40001, 443, flags="S"), now=1.0)
    port = fields(out.packet).sport
    spoof = tcp(4, H4, ENI_A.ipv4, 443, port, flags="S")
    assert eng.outbound(spoof, now=2.0) == (Verdict.DROP, None, DropReason.TUPLE_COLLISION)
    assert eng.counters()["drops"]["tuple_collision"] == 1
    assert len(eng) == 1
    e, = eng.entries(now=2.0)
    assert (e.packets_orig, e.packets_reply) == (1, 0)


def _blocker(dst_eni, port, i):
    """An environment flow from VPC host H4:443 to dst_eni:port: its orig tuple is exactly the
    reply tuple a new mapping to H4:443 on (dst_eni, port) would need."""
    return udp(4, H4, dst_eni.ipv4, 443, port, payload=bytes([i]))


def test_new_mapping_whose_reply_tuples_are_all_taken_is_a_collision(make_engine):
    # ENI A's 10 ports are used by 10 flows whose orig tuples take every reply tuple
    # (H4:443 -> ENI B:p) that a new flow to H4:443 could get on ENI B.
    eng = make_engine(enis=[ENI_A, ENI_B], port_min=40000, port_max=40009)
    for i, port in enumerate(range(40000, 40010)):
        res = eng.outbound(_blocker(ENI_B, port, i), now=1.0)
        assert res.verdict == Verdict.NEW and fields(res.packet).src == ENI_A.ipv4
    res = eng.outbound(udp(4, E4, H4, 40003, 443), now=2.0)
    assert res == (Verdict.DROP, None, DropReason.TUPLE_COLLISION)
    assert eng.counters()["drops"]["tuple_collision"] == 1
    assert eng.take_signals() == [], "ENI B still has free ports: not exhaustion"
    assert len(eng) == 10
    # another destination has no such conflict
    ok = eng.outbound(udp(4, E4, HOST[4][1], 40003, 443), now=2.0)
    assert ok.verdict == Verdict.NEW and fields(ok.packet).src == ENI_B.ipv4


def test_new_mapping_probes_past_taken_reply_tuples(make_engine):
    eng = make_engine(enis=[ENI_A, ENI_B], port_min=40000, port_max=40009)
    # 5 blockers take (H4:443 -> ENI B:40000..40004); 5 fillers use ENI A's remaining ports
    for i, port in enumerate(range(40000, 40005)):
        assert eng.outbound(_blocker(ENI_B, port, i), now=1.0).verdict == Verdict.NEW
    for i in range(5):
        assert eng.outbound(udp(4, ENV[4][1], H4, 1000 + i, 9000), now=1.0).verdict == \
            Verdict.NEW
    assert [p["used"] for p in eng.pool_fill() if p["family"] == 4] == [0, 10, 0, 0]
    res = eng.outbound(udp(4, E4, H4, 40000, 443), now=2.0)   # prefers a blocked port
    assert res.verdict == Verdict.NEW
    f = fields(res.packet)
    assert f.src == ENI_B.ipv4 and 40005 <= f.sport <= 40009
    back = eng.inbound(udp(4, H4, ENI_B.ipv4, 443, f.sport), now=3.0)
    assert back.verdict == Verdict.REPLY and fields(back.packet).dport == 40000


# ---- the 65,000-port ENI -----------------------------------------------------------------------
def _udp_batch(n, first):
    """n distinct UDP flows (IPv4, UDP checksum 0) in one buffer: only the ports vary, so the
    IPv4 header (and its checksum) is the same in all of them."""
    template = bytearray(udp(4, E4, H4, 1, 1, chksum=0))
    size = len(template)
    buf = bytearray(template * n)
    for k in range(n):
        i = first + k
        struct.pack_into("!HH", buf, k * size + 20, 1 + i % 60000, 1000 + i // 60000)
    offsets = array("I", range(0, n * size, size))
    lengths = array("I", [size]) * n
    return buf, offsets, lengths, size


def _run_batch(eng, buf, offsets, lengths, now):
    n = len(offsets)
    verdicts, reasons = bytearray(n), bytearray(n)
    passed = eng.translate_batch(0, buf, offsets, lengths, verdicts, reasons, now=now)
    return passed, verdicts, reasons


@pytest.mark.slow
def test_one_eni_holds_exactly_65000_connections(engine_cls, make_engine):
    # Measured on the 2-core development VM: ~2.5 s with the reference engine, ~0.2 s with the
    # compiled one (130,001 packets each), so both engines run the full default range.
    per_eni = DEFAULT_PORT_MAX - DEFAULT_PORT_MIN + 1
    assert per_eni == 65000
    eng = make_engine()            # the DEFAULT config: 536..65535, capacity 1,000,000
    buf, offsets, lengths, size = _udp_batch(per_eni, 0)
    passed, verdicts, reasons = _run_batch(eng, buf, offsets, lengths, now=1.0)
    assert passed == per_eni
    assert verdicts == bytes([Verdict.NEW]) * per_eni
    assert reasons == bytes(per_eni)
    ports = [struct.unpack_from("!H", buf, o + 20)[0] for o in offsets]
    srcs = {bytes(buf[o + 12:o + 16]) for o in offsets}
    assert srcs == {bytes([198, 18, 1, 10])}
    assert len(set(ports)) == per_eni
    assert min(ports) == DEFAULT_PORT_MIN and max(ports) == DEFAULT_PORT_MAX
    assert len(eng) == per_eni
    assert eng.pool_fill()[1]["used"] == per_eni      # ENI A, IPv4, UDP

    extra, eo, el, _ = _udp_batch(1, per_eni)
    passed, verdicts, reasons = _run_batch(eng, extra, eo, el, now=2.0)
    assert (passed, verdicts[0], reasons[0]) == (0, Verdict.DROP, DropReason.PORT_EXHAUSTED)
    assert eng.take_signals() == [("pool_exhausted", 4, "udp")]

    assert eng.expire(now=1.0 + 30.0) == per_eni      # unreplied UDP: 30 s
    assert len(eng) == 0 and eng.pool_fill()[1]["used"] == 0
    assert eng.counters()["connections_expired"] == per_eni
    buf, offsets, lengths, size = _udp_batch(per_eni, per_eni)
    passed, verdicts, _ = _run_batch(eng, buf, offsets, lengths, now=40.0)
    assert passed == per_eni and verdicts == bytes([Verdict.NEW]) * per_eni
    assert len({struct.unpack_from("!H", buf, o + 20)[0] for o in offsets}) == per_eni


# ---- the seeded permutation and the probe bound ------------------------------------------------
@pytest.mark.parametrize("family,proto", [(4, "tcp"), (4, "udp"), (6, "tcp"), (6, "udp")])
def test_pool_hands_out_ports_in_the_seeded_permutation_order(make_engine, family, proto):
    """RFC 6056 3.3.1 via a seeded Fisher-Yates permutation (reference.port_permutation, the
    same in csrc/hp_rand.h): with the source port never kept, ports come out in its order."""
    seed = 0xC0FFEE
    eng = make_engine(enis=[ENI_B, ENI_A], seed=seed, **SMALL)
    got = []
    for i in range(100):
        res = eng.outbound(build(family, proto, ENV[family][0], HOST[family][0], 1000 + i, 443),
                           now=1.0)
        assert fields(res.packet).src == (ENI_B.ipv4 if family == 4 else ENI_B.ipv6)
        got.append(fields(res.packet).sport)
    pnum = 6 if proto == "tcp" else 17
    assert got == reference.port_permutation(seed, 0, family, pnum, 40000, 40099)
    # the second ENI's pool has its own order
    res = eng.outbound(build(family, proto, ENV[family][1], HOST[family][0], 999, 443), now=1.0)
    assert fields(res.packet).sport == reference.port_permutation(seed, 1, family, pnum,
                                                                  40000, 40099)[0]


@pytest.mark.parametrize("blocked", [7, 8])
def test_new_mapping_probes_at_most_eight_ports(make_engine, blocked):
    """reference.PORT_PROBES = 8: a new mapping tries the kept port, then the first 8 ports of
    the FIFO; if all their reply tuples are taken it is dropped as tuple_collision."""
    seed = 99
    eng = make_engine(enis=[ENI_A, ENI_B], port_min=40000, port_max=40015, seed=seed)
    order_b = reference.port_permutation(seed, 1, 4, 17, 40000, 40015)
    for i in range(blocked):         # blockers on ENI A take the FIFO head of ENI B
        assert eng.outbound(_blocker(ENI_B, order_b[i], i), now=1.0).verdict == Verdict.NEW
    for i in range(16 - blocked):    # fill ENI A
        assert eng.outbound(udp(4, ENV[4][1], H4, 1000 + i, 9000), now=1.0).verdict == \
            Verdict.NEW
    assert [p["used"] for p in eng.pool_fill() if p["family"] == 4] == [0, 16, 0, 0]
    res = eng.outbound(udp(4, E4, H4, 1000, 443), now=2.0)
    if blocked == 8:
        assert res == (Verdict.DROP, None, DropReason.TUPLE_COLLISION)
    else:
        assert res.verdict == Verdict.NEW
        assert (fields(res.packet).src, fields(res.packet).sport) == (ENI_B.ipv4, order_b[7])
