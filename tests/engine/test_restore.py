"""Engine.snapshot() / restore(): a data path that restarts puts its connections back, each on
its ENI with its port, state, timer, counters and id, so that their packets go on being
translated the same way (issue 7, "restart without loss"). Both engines; the differential test
holds them to the same bytes and outcomes on random programs."""
from __future__ import annotations

import struct

import pytest

from hyperplane import Timeouts, Verdict
from hyperplane.engine.config import Eni
from kit.frames import ENI_A, ENI_B, ENV, HOST, fields, tcp, udp

HEADER = 24     # magic, version, record size, count
RECORD = 192    # hp_saved (version 2: with the TCP windows)
VERSION = 2
WIN = (152, 172)  # each side's hp_tcp_win: end, maxend, maxwin, maxack (u32), scale, flags, pad


def _open(eng, family=4, sport=40000, now=1.0):
    """A TCP connection through the three-way handshake and a UDP flow with a reply: the
    ENI ports they got."""
    env, host = ENV[family][0], HOST[family][0]
    out = eng.outbound(tcp(family, env, host, sport, 443, "S"), now=now)
    port_t = fields(out.packet).sport
    eni = fields(out.packet).src
    assert eng.inbound(tcp(family, host, eni, 443, port_t, "SA"), now=now).verdict == \
        Verdict.REPLY
    assert eng.outbound(tcp(family, env, host, sport, 443, "A"), now=now).verdict == \
        Verdict.ESTABLISHED
    out = eng.outbound(udp(family, env, host, sport + 1, 53), now=now)
    port_u = fields(out.packet).sport
    assert eng.inbound(udp(family, host, eni, 53, port_u), now=now).verdict == Verdict.REPLY
    return eni, port_t, port_u


def _outcome(**kw):
    out = dict(restored=0, invalid=0, eni_mismatch=0, expired=0, duplicate=0, table_full=0,
               other_slice=0)
    out.update(kw)
    return out


def test_a_restored_table_translates_as_the_old_one_did(make_engine):
    old = make_engine(enis=[ENI_A, ENI_B])
    got = {f: _open(old, f) for f in (4, 6)}
    blob = old.snapshot()
    assert len(blob) == HEADER + 4 * RECORD
    new = make_engine(enis=[ENI_A, ENI_B])
    assert new.restore(blob, now=2.0) == _outcome(restored=4)
    assert new.counters()["connections_restored"] == 4
    # the same connections, counters and ids
    assert sorted(e[:4] + e[6:] for e in new.entries(now=2.0)) == \
        sorted(e[:4] + e[6:] for e in old.entries(now=2.0))
    for family, (eni, port_t, port_u) in got.items():
        env, host = ENV[family][0], HOST[family][0]
        # a reply mid-stream reaches the environment's socket; the next segment keeps the port
        r = new.inbound(tcp(family, host, eni, 443, port_t, "A"), now=3.0)
        assert r.verdict == Verdict.REPLY
        assert (fields(r.packet).dst, fields(r.packet).dport) == (env, 40000)
        o = new.outbound(tcp(family, env, host, 40000, 443, "A"), now=3.0)
        assert o.verdict == Verdict.ESTABLISHED
        assert (fields(o.packet).src, fields(o.packet).sport) == (eni, port_t)
        r = new.inbound(udp(family, host, eni, 53, port_u), now=3.0)
        assert (fields(r.packet).dst, fields(r.packet).dport) == (env, 40001)
    # ids continue after the restored ones
    out = new.outbound(udp(4, ENV[4][1], HOST[4][0], 5000, 53), now=3.0)
    assert out.verdict == Verdict.NEW
    ids = [ev.id for ev in new.flow_collect(now=3.0)]
    assert max(ids) == 5 and sorted(ids) == [1, 2, 3, 4, 5]


def test_without_restore_the_same_packets_are_unsolicited_or_refused(make_engine):
    """What restore prevents: a new table drops the replies, and refuses a mid-stream TCP
    segment (no pick-up without a SYN)."""
    old = make_engine()
    eni, port_t, port_u = _open(old)
    new = make_engine()
    assert new.inbound(tcp(4, HOST[4][0], eni, 443, port_t, "A"), now=3.0).verdict == \
        Verdict.DROP
    assert new.outbound(tcp(4, ENV[4][0], HOST[4][0], 40000, 443, "A"), now=3.0).verdict == \
        Verdict.DROP
    assert new.inbound(udp(4, HOST[4][0], eni, 53, port_u), now=3.0).verdict == Verdict.DROP


def test_another_eni_address_refuses_the_records(make_engine):
    old = make_engine()
    _open(old)
    other = Eni(ENI_A.id, ipv4="198.18.1.99", ipv6="2001:2:0:1::99")
    assert make_engine(enis=[other]).restore(old.snapshot(), now=2.0) == \
        _outcome(eni_mismatch=2)
    # and an engine with no ENI at that index
    blob = old.snapshot()
    eng = make_engine(enis=[ENI_B, ENI_A])   # index 0 is now ENI_B
    assert eng.restore(blob, now=2.0) == _outcome(eni_mismatch=2)


def test_timers_go_on_and_what_timed_out_meanwhile_is_not_restored(make_engine):
    slow = Timeouts(udp_replied=120.0, tcp_established=7440.0)
    old = make_engine(timeouts=slow)
    _open(old, now=1.0)
    blob = old.snapshot()
    eng = make_engine(timeouts=slow)
    assert eng.restore(blob, now=200.0) == _outcome(restored=1, expired=1)
    (e,) = eng.entries(now=200.0)
    assert e.proto == "tcp" and e.timeout == pytest.approx(7440 - 199)
    # shift: the time between two clocks (another boot); ages are kept
    eng = make_engine(timeouts=slow)
    assert eng.restore(blob, now=5000.0, shift=4990.0) == _outcome(restored=2)
    assert sorted(round(x.timeout) for x in eng.entries(now=5000.0)) == [120 - 9, 7440 - 9]
    # a timer never starts in the future
    eng = make_engine(timeouts=slow)
    assert eng.restore(blob, now=0.5, shift=100.0) == _outcome(restored=2)
    assert sorted(round(x.timeout) for x in eng.entries(now=0.5)) == [120, 7440]


def test_restored_connections_expire_in_order_with_newer_ones(make_engine):
    """A restored connection older than what the table holds goes in front of it in its
    timeout class: expiry (which looks only at the oldest) still finds it."""
    old = make_engine()
    old.outbound(udp(4, ENV[4][0], HOST[4][0], 4000, 53), now=10.0)   # unreplied: 30 s
    eng = make_engine()
    eng.outbound(udp(4, ENV[4][1], HOST[4][1], 4001, 53), now=30.0)   # another port
    assert eng.restore(old.snapshot(), now=31.0) == _outcome(restored=1)
    assert eng.expire(now=41.0) == 1
    (left,) = eng.entries(now=41.0)
    assert left.orig.src == ENV[4][1]


def test_restoring_twice_or_into_a_busy_table(make_engine):
    old = make_engine()
    _, _, port_u = _open(old)
    blob = old.snapshot()
    assert old.restore(blob, now=2.0) == _outcome(duplicate=2)
    eng = make_engine(capacity=1)
    assert eng.restore(blob, now=2.0) == _outcome(restored=1, table_full=1)
    # the port is held by another connection (other tuples) already
    eng = make_engine(port_min=port_u, port_max=port_u)
    assert eng.outbound(udp(4, ENV[4][2], HOST[4][1], 9, 9), now=2.0).verdict == Verdict.NEW
    rec = [r for r in _records(blob) if r["proto"] == 17]
    assert eng.restore(_blob(rec), now=2.0) == _outcome(duplicate=1)


def test_the_per_source_limit_counts_restored_connections(make_engine):
    old = make_engine()
    _open(old)
    eng = make_engine(max_connections_per_source=2)
    assert eng.restore(old.snapshot(), now=2.0) == _outcome(restored=2)
    r = eng.outbound(udp(4, ENV[4][0], HOST[4][0], 7000, 53), now=2.0)
    assert r.verdict == Verdict.DROP and r.reason.label == "source_limit"


def _records(blob):
    out = []
    for k in range((len(blob) - HEADER) // RECORD):
        rec = blob[HEADER + k * RECORD:HEADER + (k + 1) * RECORD]
        out.append({"raw": bytearray(rec), "proto": rec[37]})
    return out


def _blob(records):
    return struct.pack("<8sIII4x", b"HPCTSNAP", VERSION, RECORD, len(records)) + \
        b"".join(bytes(r["raw"]) for r in records)


@pytest.mark.parametrize("offset, value, why", [
    (36, 9, "family 9"),
    (37, 1, "protocol ICMP"),
    (151, 0, "state NONE"),
    (151, 10, "a UDP state on TCP"),
    (38, 1, "padding not zero"),
    (40 + 32, 1, "reply tuple's source port is not the orig destination port"),
    (144, 0, "id 0"),
    (8, 0xFF, "an IPv4 address with bytes past the 4th"),
    (WIN[0] + 16, 15, "window scale 15 (RFC 7323: at most 14)"),
    (WIN[1] + 17, 0x10, "an unknown window flag"),
    (WIN[1] + 18, 1, "window padding not zero"),
    (WIN[0] + 11, 0x40, "a window larger than RFC 7323 allows"),
    ("no_orig_window", 0, "a TCP record without the opener's window"),
    ("udp_window", 1, "a UDP record with a window"),
])
def test_records_no_engine_could_have_written_are_invalid(make_engine, offset, value, why):
    old = make_engine()
    _open(old)
    rec = [r for r in _records(old.snapshot()) if r["proto"] == (17 if offset == "udp_window"
                                                                  else 6)]
    if offset == 144:
        rec[0]["raw"][144:148] = bytes(4)
    elif offset == "no_orig_window":
        rec[0]["raw"][WIN[0] + 8:WIN[0] + 12] = bytes(4)    # maxwin 0
    elif offset == "udp_window":
        rec[0]["raw"][WIN[0]] = value
    else:
        rec[0]["raw"][offset] = value
    assert make_engine().restore(_blob(rec), now=2.0) == _outcome(invalid=1), why


def test_a_record_whose_port_is_outside_the_range_is_invalid(make_engine):
    old = make_engine(port_min=40000, port_max=40009)
    _open(old)
    eng = make_engine(port_min=50000, port_max=50009)
    assert eng.restore(old.snapshot(), now=2.0) == _outcome(invalid=2)


@pytest.mark.parametrize("blob, words", [
    (b"", "shorter than its 24-byte header"),
    (b"NOTASNAP" + bytes(16), "not a connection snapshot"),
    (struct.pack("<8sIII4x", b"HPCTSNAP", 3, RECORD, 0), "version 3"),
    # a snapshot of the hyperplane before window tracking: refused, never misread
    (struct.pack("<8sIII4x", b"HPCTSNAP", 1, 152, 1) + bytes(152),
     "version 1 with 152-byte records.*added the TCP sequence windows"),
    (struct.pack("<8sIII4x", b"HPCTSNAP", VERSION, 100, 0), "100-byte records"),
    (struct.pack("<8sIII4x", b"HPCTSNAP", VERSION, RECORD, 3) + bytes(RECORD),
     "header says 3"),
])
def test_a_blob_that_is_no_snapshot_is_refused_with_the_reason(make_engine, blob, words):
    eng = make_engine()
    with pytest.raises(ValueError, match=words):
        eng.restore(blob, now=1.0)
    assert len(eng) == 0


def test_an_empty_table_snapshots_to_a_header(make_engine):
    blob = make_engine().snapshot()
    assert blob == struct.pack("<8sIII4x", b"HPCTSNAP", VERSION, RECORD, 0)
    assert make_engine().restore(blob, now=1.0) == _outcome()
