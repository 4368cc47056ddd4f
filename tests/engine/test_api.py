"""The public API both engines share: entries(), counters(), translate_batch(), add_eni(), enis,
len(), the ``engine`` attribute, config validation; and the compiled engine's memory_bytes()."""
from __future__ import annotations

import dataclasses
from array import array

import pytest

from hyperplane import (
    FLAG_CSUM_PARTIAL, ConfigError, Direction, DropReason, EngineConfig, Eni, EntryInfo,
    Timeouts, Tuple5, Verdict,
)
from kit.frames import (
    ENI_A, ENI_B, ENV, HOST, assert_checksums_valid, build, compiled_module, complete_partial,
    fields, make_config, make_partial, no_clock, tcp, udp,
)

E4, H4, A4 = ENV[4][0], HOST[4][0], ENI_A.ipv4
E6, H6, A6 = ENV[6][0], HOST[6][0], ENI_A.ipv6


def test_engine_attribute_names_the_engine(request, engine_cls, make_engine):
    name = request.node.callspec.id
    assert engine_cls.engine == name
    assert make_engine().engine == name


def test_entries_fields_and_per_entry_counters(make_engine):
    eng = make_engine()
    syn = tcp(4, E4, H4, 40001, 443, flags="S")
    synack = tcp(4, H4, A4, 443, 40001, flags="SA")
    data = tcp(4, E4, H4, 40001, 443, flags="PA", payload=b"x" * 100)
    # IPv6 UDP flow that loses its source port to an earlier flow
    eng.outbound(udp(6, ENV[6][1], H6, 5353, 9000), now=0.5)
    u1 = udp(6, E6, H6, 5353, 9000, payload=b"q" * 33)
    eng.outbound(syn, now=1.0)
    eng.inbound(synack, now=2.0)
    eng.outbound(data, now=3.0)
    u_out = eng.outbound(u1, now=4.0)
    uport = fields(u_out.packet).sport
    assert uport != 5353
    r1 = udp(6, H6, A6, 9000, uport, payload=b"r" * 7)
    eng.inbound(r1, now=5.0)
    eng.inbound(r1, now=6.0)
    es = sorted(eng.entries(now=6.0))
    assert all(isinstance(e, EntryInfo) for e in es)
    assert es[0]._fields == ("family", "proto", "orig", "reply", "state", "timeout", "eni",
                             "packets_orig", "bytes_orig", "packets_reply", "bytes_reply")
    assert es == sorted([
        EntryInfo(4, "tcp", Tuple5(E4, 40001, H4, 443), Tuple5(H4, 443, A4, 40001),
                  "ESTABLISHED", 347.0, ENI_A.id, 2, len(syn) + len(data), 1, len(synack)),
        EntryInfo(6, "udp", Tuple5(ENV[6][1], 5353, H6, 9000), Tuple5(H6, 9000, A6, 5353),
                  "UNREPLIED", 24.5, ENI_A.id, 1, 48, 0, 0),
        EntryInfo(6, "udp", Tuple5(E6, 5353, H6, 9000), Tuple5(H6, 9000, A6, uport),
                  "REPLIED", 350.0, ENI_A.id, 1, len(u1), 2, 2 * len(r1)),
    ])
    assert isinstance(es[0].orig, Tuple5)
    assert len(eng) == 3


def test_entries_order_is_by_timeout_class_then_oldest_first(make_engine):
    eng = make_engine()
    eng.outbound(udp(4, E4, H4, 41000, 9000), now=1.0)                    # UNREPLIED
    eng.outbound(tcp(4, E4, H4, 42000, 443, flags="S"), now=2.0)          # SYN_SENT
    eng.outbound(udp(4, E4, H4, 41001, 9000), now=3.0)                    # UNREPLIED
    eng.outbound(tcp(4, E4, H4, 42001, 443, flags="S"), now=4.0)          # SYN_SENT
    eng.outbound(udp(4, E4, H4, 41000, 9000), now=5.0)   # refresh: now the younger of the two
    assert [e.orig.sport for e in eng.entries(now=5.0)] == [42000, 42001, 41001, 41000]


def test_counters_per_direction(make_engine):
    eng = make_engine()
    c = eng.counters()
    labels = {r.label for r in DropReason if r != DropReason.NONE}
    assert set(c) == {"packets_outbound", "bytes_outbound", "packets_inbound", "bytes_inbound",
                      "connections_created", "connections_expired", "connections_restored",
                      "connections", "capacity", "events_lost", "icmp_errors_translated",
                      "fragments_translated", "drops"}
    assert set(c["drops"]) == labels
    assert c == dict(packets_outbound=0, bytes_outbound=0, packets_inbound=0, bytes_inbound=0,
                     connections_created=0, connections_expired=0, connections_restored=0,
                     connections=0, capacity=1_000_000, events_lost=0, icmp_errors_translated=0,
                     fragments_translated=0,
                     drops={k: 0 for k in labels})
    o1 = udp(4, E4, H4, 40001, 9000, payload=b"a" * 10)
    o2 = tcp(6, E6, H6, 40002, 443, flags="S", payload=b"b" * 3)
    i1 = udp(4, H4, A4, 9000, 40001, payload=b"c" * 21)
    eng.outbound(o1, now=1.0)
    eng.outbound(o2, now=1.0)
    eng.outbound(o1, now=2.0)
    eng.inbound(i1, now=3.0)
    eng.inbound(udp(4, H4, A4, 9000, 40002), now=3.0)            # unsolicited: not counted
    eng.outbound(tcp(4, E4, H4, 40003, 443, flags="A"), now=3.0)  # tcp_not_syn: not counted
    c = eng.counters()
    drops = c.pop("drops")
    assert c == dict(packets_outbound=3, bytes_outbound=2 * len(o1) + len(o2),
                     packets_inbound=1, bytes_inbound=len(i1), connections_created=2,
                     connections_expired=0, connections_restored=0, connections=2,
                     capacity=1_000_000, events_lost=0, icmp_errors_translated=0,
                     fragments_translated=0)
    assert {k: v for k, v in drops.items() if v} == {"unsolicited": 1, "tcp_not_syn": 1}
    assert eng.expire(now=353.0) == 2            # SYN_SENT 120 s, replied UDP 350 s
    c = eng.counters()
    assert (c["connections"], c["connections_expired"], c["connections_created"]) == (0, 2, 2)
    assert c["packets_outbound"] == 3, "expiry does not rewrite history"


def test_enis_property_and_add_eni_checks(make_engine):
    eng = make_engine()
    enis = eng.enis
    assert enis == [ENI_A]
    enis.append(ENI_B)
    assert eng.enis == [ENI_A], "enis must be a copy"
    with pytest.raises(ConfigError, match=r"enis\[1\]\.id"):
        eng.add_eni(Eni("eni-bad", ipv4="198.18.1.11"))
    with pytest.raises(ConfigError, match=r"enis\[1\]\.ipv6"):
        eng.add_eni(Eni(ENI_B.id, ipv6="198.18.1.11"))
    with pytest.raises(ValueError, match=ENI_A.id):
        eng.add_eni(Eni(ENI_A.id, ipv4="198.18.1.11"))
    # an address already held by another ENI, written differently, is refused too
    with pytest.raises(ValueError, match=r"2001:2:0:1::10 .* already used by ENI " + ENI_A.id):
        eng.add_eni(Eni(ENI_B.id, ipv6="2001:0002:0000:0001:0000:0000:0000:0010"))
    assert eng.enis == [ENI_A]
    eng.add_eni(ENI_B)
    assert eng.enis == [ENI_A, ENI_B]


def test_at_most_256_enis(make_engine):
    many = [Eni(f"eni-{i:017x}", ipv4=f"198.18.{2 + i // 250}.{1 + i % 250}")
            for i in range(EngineConfig.MAX_ENIS)]
    assert EngineConfig.MAX_ENIS == 256
    eng = make_engine(enis=many, port_min=40000, port_max=40000)
    assert len(eng.enis) == 256
    with pytest.raises(ValueError):
        eng.add_eni(ENI_A)
    # 256 one-port ENIs hold 256 flows, on 256 addresses
    srcs = set()
    for i in range(256):
        res = eng.outbound(udp(4, E4, H4, 1000 + i, 9000), now=1.0)
        assert res.verdict == Verdict.NEW
        srcs.add(fields(res.packet).src)
    assert len(srcs) == 256
    assert eng.outbound(udp(4, E4, H4, 2000, 9000), now=1.0).reason == \
        DropReason.PORT_EXHAUSTED


# ---- translate_batch --------------------------------------------------------------------------
def _mixed_outbound():
    """(packet, flags) covering NEW, ESTABLISHED, drops and a partial-checksum packet."""
    return [
        (tcp(4, E4, H4, 40001, 443, flags="S"), 0),
        (udp(6, E6, H6, 40002, 9000, payload=b"v6"), 0),
        (tcp(4, E4, H4, 40001, 443, flags="S"), 0),                           # retransmit
        (tcp(4, ENV[4][1], H4, 40001, 443, flags="S"), 0),                    # port conflict
        (build(4, "udp", E4, H4, 40003, 9000, ttl=1), 0),                     # ttl_expired
        (tcp(4, E4, HOST[4][1], 40004, 443, flags="A"), 0),                   # tcp_not_syn
        (b"\x45\x00", 0),                                                     # truncated
        (make_partial(tcp(6, E6, H6, 40005, 443, flags="S", payload=b"p" * 9)),
         FLAG_CSUM_PARTIAL),
        (make_partial(udp(4, E4, H4, 40006, 9000, payload=b"q" * 5)), FLAG_CSUM_PARTIAL),
        (udp(4, ENV[4][2], H4, 40007, 9000, chksum=0), 0),
    ]


def _pack(pkts, gap=3):
    buf = bytearray(b"\xab" * gap)
    offsets, lengths = [], []
    for p in pkts:
        offsets.append(len(buf))
        lengths.append(len(p))
        buf += p + b"\xab" * gap
    return buf, offsets, lengths


@pytest.mark.parametrize("container", ["array", "list", "memoryview"])
def test_translate_batch_equals_per_packet_calls(engine_cls, container):
    cfg = make_config()
    batch_eng = engine_cls(cfg, clock=no_clock)
    single_eng = engine_cls(cfg, clock=no_clock)
    items = _mixed_outbound()
    pkts = [p for p, _ in items]
    flags = bytes(f for _, f in items)
    buf, offsets, lengths = _pack(pkts)
    n = len(pkts)
    verdicts, reasons = bytearray(n), bytearray(n)
    if container == "array":
        offsets, lengths = array("I", offsets), array("I", lengths)
    target = memoryview(buf) if container == "memoryview" else buf
    passed = batch_eng.translate_batch(Direction.OUTBOUND, target, offsets, lengths, verdicts,
                                       reasons, flags=flags, now=5.0)
    expected = [single_eng.outbound(p, now=5.0, csum_partial=bool(f)) for p, f in items]
    assert passed == sum(r.verdict != Verdict.DROP for r in expected)
    assert [Verdict(v) for v in verdicts] == [r.verdict for r in expected]
    assert [DropReason(r) for r in reasons] == [r.reason for r in expected]
    for i, r in enumerate(expected):
        got = bytes(buf[offsets[i]:offsets[i] + lengths[i]])
        assert got == (r.packet if r.packet is not None else pkts[i]), i
        assert buf[offsets[i] - 3:offsets[i]] == b"\xab" * 3, "bytes between packets changed"
    assert [r.verdict for r in expected] == [
        Verdict.NEW, Verdict.NEW, Verdict.ESTABLISHED, Verdict.NEW, Verdict.DROP, Verdict.DROP,
        Verdict.DROP, Verdict.NEW, Verdict.NEW, Verdict.NEW]
    assert [r.reason for r in expected][4:7] == [
        DropReason.TTL_EXPIRED, DropReason.TCP_NOT_SYN, DropReason.TRUNCATED]
    for i in (0, 1, 2, 3):
        assert_checksums_valid(expected[i].packet)
    for i in (7, 8):
        assert_checksums_valid(complete_partial(expected[i].packet))
    assert_checksums_valid(expected[9].packet, udp_zero_ok=True)
    assert batch_eng.counters() == single_eng.counters()
    assert batch_eng.entries(now=5.0) == single_eng.entries(now=5.0)
    assert batch_eng.pool_fill() == single_eng.pool_fill()

    # inbound replies to every mapping, as one batch
    replies = []
    for e in single_eng.entries(now=5.0):
        fam = e.family
        replies.append(build(fam, e.proto, e.reply.src, e.reply.dst, e.reply.sport,
                             e.reply.dport, flags="SA", payload=b"reply"))
    rbuf, roff, rlen = _pack(replies)
    rv, rr = bytearray(len(replies)), bytearray(len(replies))
    assert batch_eng.translate_batch(Direction.INBOUND, rbuf, roff, rlen, rv, rr, now=6.0) == \
        len(replies)
    for i, p in enumerate(replies):
        single = single_eng.inbound(p, now=6.0)
        assert single.verdict == Verdict.REPLY
        assert bytes(rbuf[roff[i]:roff[i] + rlen[i]]) == single.packet
        assert (rv[i], rr[i]) == (Verdict.REPLY, DropReason.NONE)
        assert_checksums_valid(single.packet)
    assert batch_eng.counters() == single_eng.counters()
    assert batch_eng.entries(now=6.0) == single_eng.entries(now=6.0)


def test_translate_batch_flags_none_means_complete_checksums(make_engine):
    eng = make_engine()
    pkt = udp(4, E4, H4, 40001, 9000, payload=b"z" * 11)
    buf = bytearray(pkt)
    v, r = bytearray(1), bytearray(1)
    assert eng.translate_batch(Direction.OUTBOUND, buf, [0], [len(pkt)], v, r, now=1.0) == 1
    assert_checksums_valid(bytes(buf))


def test_translate_batch_argument_errors(make_engine):
    eng = make_engine()
    eng.outbound(udp(4, E4, H4, 39999, 9000), now=0.0)       # UNREPLIED, 30 s
    pkt = udp(4, E4, H4, 40001, 9000)
    n = len(pkt)

    def call(buf=None, offsets=(0,), lengths=(n,), verdicts=None, reasons=None, **kw):
        return eng.translate_batch(Direction.OUTBOUND,
                                   bytearray(pkt) if buf is None else buf,
                                   array("I", offsets), array("I", lengths),
                                   bytearray(1) if verdicts is None else verdicts,
                                   bytearray(1) if reasons is None else reasons, now=1.0, **kw)

    with pytest.raises(ValueError):
        call(offsets=(1,))                       # past the buffer end
    with pytest.raises(ValueError):
        call(lengths=(n + 1,))
    with pytest.raises(ValueError):
        call(buf=bytes(pkt))                     # read-only
    with pytest.raises(ValueError):
        call(offsets=(0, 0), lengths=(n,))       # fewer lengths than offsets
    with pytest.raises(ValueError):
        call(offsets=(0, 0), lengths=(n, n))     # verdicts/reasons too short
    with pytest.raises(ValueError):
        call(flags=b"")                          # flags too short
    with pytest.raises(ValueError):
        call(verdicts=bytes(1))                  # read-only verdicts
    with pytest.raises(ValueError):
        call(reasons=array("I", [0]))            # not a byte buffer
    # a refused call changes nothing: no packet counted, and time did not move to now=1.0
    assert len(eng) == 1 and eng.counters()["packets_outbound"] == 1
    assert eng.entries(now=0.0)[0].timeout == 30.0
    assert call() == 1 and len(eng) == 2
    v, r = bytearray(), bytearray()
    assert eng.translate_batch(Direction.OUTBOUND, bytearray(), array("I"), array("I"), v, r,
                               now=2.0) == 0


# ---- config validation --------------------------------------------------------------------
OTHER_ID = "eni-0a1b2c3d4e5f60719"
BAD_CONFIGS = {
    "no_enis": (dict(enis=[]), "enis"),
    "eni_id_short": (dict(enis=[Eni("eni-123", ipv4="198.18.1.10")]), r"enis\[0\]\.id"),
    "eni_id_upper": (dict(enis=[Eni("eni-0A1B2C3D4E5F60718", ipv4="198.18.1.10")]),
                     r"enis\[0\]\.id"),
    "eni_id_not_str": (dict(enis=[Eni(7, ipv4="198.18.1.10")]), r"enis\[0\]\.id"),
    "eni_no_address": (dict(enis=[Eni(ENI_A.id)]), r"enis\[0\]"),
    "eni_ipv4_garbage": (dict(enis=[Eni(ENI_A.id, ipv4="198.18.1.300")]), r"enis\[0\]\.ipv4"),
    "eni_ipv4_is_v6": (dict(enis=[Eni(ENI_A.id, ipv4="2001:2:0:1::10")]), r"enis\[0\]\.ipv4"),
    "eni_ipv6_is_v4": (dict(enis=[Eni(ENI_A.id, ipv6="198.18.1.10")]), r"enis\[0\]\.ipv6"),
    "eni_not_eni": (dict(enis=["198.18.1.10"]), r"enis\[0\]"),
    "second_eni_bad": (dict(enis=[ENI_A, Eni(OTHER_ID, ipv6="2001:2:0:1::zz")]),
                       r"enis\[1\]\.ipv6"),
    "duplicate_id": (dict(enis=[ENI_A, Eni(ENI_A.id, ipv4="198.18.1.11")]), r"enis\[1\]\.id"),
    "duplicate_address": (dict(enis=[ENI_A, Eni(OTHER_ID, ipv6="2001:2:0:1:0::10")]),
                          r"enis\[1\]"),
    "too_many_enis": (dict(enis=[Eni(f"eni-{i:017x}", ipv4=f"198.18.{2 + i // 250}."
                                     f"{1 + i % 250}") for i in range(257)]), "enis"),
    "port_min_0": (dict(port_min=0), "port_min"),
    "port_max_65536": (dict(port_max=65536), "port_max"),
    "port_min_bool": (dict(port_min=True), "port_min"),
    "port_min_str": (dict(port_min="536"), "port_min"),
    "port_max_float": (dict(port_max=65535.0), "port_max"),
    "ports_swapped": (dict(port_min=40001, port_max=40000), "port_min"),
    "timeout_zero": (dict(timeouts=Timeouts(tcp_established=0)), "timeouts.tcp_established"),
    "timeout_negative": (dict(timeouts=Timeouts(udp_replied=-1.0)), "timeouts.udp_replied"),
    "timeout_nan": (dict(timeouts=Timeouts(tcp_close=float("nan"))), "timeouts.tcp_close"),
    "timeout_huge": (dict(timeouts=Timeouts(tcp_syn_sent=1e9)), "timeouts.tcp_syn_sent"),
    "timeout_str": (dict(timeouts=Timeouts(udp_unreplied="30")), "timeouts.udp_unreplied"),
    "timeout_bool": (dict(timeouts=Timeouts(tcp_time_wait=True)), "timeouts.tcp_time_wait"),
    "timeouts_dict": (dict(timeouts={"tcp_established": 350.0}), "timeouts"),
    "capacity_0": (dict(capacity=0), "capacity"),
    "capacity_huge": (dict(capacity=(1 << 26) + 1), "capacity"),
    "capacity_float": (dict(capacity=1000.0), "capacity"),
    "capacity_bool": (dict(capacity=True), "capacity"),
    "reuse_delay_negative": (dict(port_reuse_delay=-0.5), "port_reuse_delay"),
    "reuse_delay_str": (dict(port_reuse_delay="2"), "port_reuse_delay"),
    "seed_negative": (dict(seed=-1), "seed"),
    "seed_str": (dict(seed="42"), "seed"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_names_the_field(engine_cls, name):
    overrides, field = BAD_CONFIGS[name]
    with pytest.raises(ConfigError, match=field) as info:
        engine_cls(make_config(**overrides), clock=no_clock)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("overrides", [
    dict(capacity=1), dict(capacity=1 << 16), dict(port_min=40000, port_max=40000),
    dict(port_min=1, port_max=65535), dict(port_reuse_delay=0), dict(seed=0),
    dict(seed=(1 << 64) - 1), dict(seed=None), dict(enis=[Eni(ENI_A.id, ipv6=ENI_A.ipv6)]),
    dict(timeouts=Timeouts(tcp_established=1, udp_replied=0.001)),
], ids=lambda o: ",".join(f"{k}={v!r}"[:30] for k, v in o.items()))
def test_edge_configs_are_accepted(make_engine, overrides):
    eng = make_engine(**overrides)
    assert len(eng) == 0
    fam = 6 if overrides.get("enis") else 4
    res = eng.outbound(udp(fam, ENV[fam][0], HOST[fam][0], 40000, 9000), now=1.0)
    assert res.verdict == Verdict.NEW


def test_config_is_frozen():
    cfg = make_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port_min = 1


# ---- compiled only --------------------------------------------------------------------------
def test_compiled_memory_bytes():
    Engine = compiled_module().Engine
    small = Engine(make_config(capacity=1000), clock=no_clock)
    big = Engine(make_config(capacity=200_000), clock=no_clock)
    m0 = small.memory_bytes()
    assert isinstance(m0, int) and m0 > 0
    assert big.memory_bytes() > m0, "the table scales with capacity"
    for i in range(500):
        small.outbound(udp(4, E4, H4, 1000 + i, 9000), now=1.0)
    assert len(small) == 500
    assert small.memory_bytes() >= m0
