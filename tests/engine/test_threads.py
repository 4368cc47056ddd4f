"""Engines translating in parallel, one per thread (``_engine.translate_parallel``,
csrc/hp_bench_threads.c): the engine-level benchmark of the data-path workers
(benchmarks/engine_threads.py) really translates, and the threads share nothing an engine
writes. ``.ci/tsan tests/engine/test_threads.py`` runs this file against a ThreadSanitizer
build, where a write shared between the threads would be reported. No timing is asserted.

The workload (established IPv4/IPv6 x TCP/UDP flows, a data packet out and a reply in per
flow and round) is benchmarks/engine_threads.py's, loaded by path.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from hyperplane import Verdict
from kit import REPO
from kit.frames import assert_checksums_valid, fields

_spec = importlib.util.spec_from_file_location(
    "hyperplane_engine_threads", os.path.join(REPO, "benchmarks", "engine_threads.py"))
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

FLOWS = 64          # per engine: 16 of each kind
ROUNDS = 40


@pytest.fixture
def compiled():
    try:
        from hyperplane.engine import _engine
    except ImportError as exc:
        pytest.fail(f"the compiled engine does not import ({exc}); build it with "
                    "python3 setup.py build_ext --inplace", pytrace=False)
    return _engine


def _once(batches):
    """What one translate_batch of each template gives on a fresh, identical engine."""
    f = bench.Flows(FLOWS)
    want = f.batches()
    for d, buf, off, ln, vo, ro in want:
        f.eng.translate_batch(d, buf, off, ln, vo, ro, now=bench.Flows.NOW)
    return want


@pytest.mark.parametrize("threads", [1, 2])
def test_every_thread_translates_every_packet_of_every_round(compiled, threads):
    flows = [bench.Flows(FLOWS) for _ in range(threads)]
    before = [f.eng.counters() for f in flows]
    cpus = sorted(os.sched_getaffinity(0))
    pin = cpus[:threads] if len(cpus) >= threads else None
    r, work = bench.run_parallel(flows, ROUNDS, pin)

    assert len(r["threads"]) == threads
    for t, f, b in zip(r["threads"], flows, before):
        assert t["passed"] == ROUNDS * 2 * FLOWS and t["dropped"] == 0, t
        assert t["pinned"] == (1 if pin else 0), t
        assert 0 < t["seconds"] <= r["wall_seconds"] and t["cpu_seconds"] > 0
        c = f.eng.counters()
        assert c["packets_outbound"] - b["packets_outbound"] == ROUNDS * FLOWS
        assert c["packets_inbound"] - b["packets_inbound"] == ROUNDS * FLOWS
        assert len(f.eng) == FLOWS                  # no connection made or lost on the way

    want = _once(work[0])
    for i, batches in enumerate(work):
        for (d, buf, off, ln, vo, ro), w in zip(batches, want):
            expected = Verdict.ESTABLISHED if d == bench.OUT else Verdict.REPLY
            assert set(vo) == {expected}, f"thread {i}, {d.name}: verdicts {set(vo)}"
            assert bytes(buf) == bytes(w[1]), f"thread {i}, {d.name}: the last round's bytes " \
                                              "differ from one translation on a fresh engine"
    # and independently of the engine: addresses rewritten, TTL down by one, checksums right
    (_, out, off, ln, _, _), (_, inb, ioff, iln, _, _) = work[-1]
    f = flows[-1]
    for k in range(FLOWS):
        p = bytes(out[off[k]:off[k] + ln[k]])
        q = bytes(inb[ioff[k]:ioff[k] + iln[k]])
        assert_checksums_valid(p)
        assert_checksums_valid(q)
        fo, fi = fields(p), fields(q)
        eni = bench.ENI.ipv4 if p[0] >> 4 == 4 else bench.ENI.ipv6
        assert (fo.src, fo.sport, fo.ttl) == (eni, f.mapping[k][1], 63), (k, fo)
        assert (fi.dport, fi.ttl) == (bench.env_port(k), 63), (k, fi)
    # the engines are free again
    assert f.eng.translate_batch(bench.OUT, bytearray(f.out_template.buf),
                                 f.out_template.offsets, f.out_template.lengths,
                                 bytearray(FLOWS), bytearray(FLOWS), now=3.0) == FLOWS


def test_bad_arguments_are_refused_with_the_reason(compiled):
    f = bench.Flows(8)
    b = f.batches()
    tp = compiled.translate_parallel
    with pytest.raises(ValueError, match="same engine twice"):
        tp([f.eng, f.eng], [b, f.batches()], 1)
    with pytest.raises(ValueError, match="rounds 0"):
        tp([f.eng], [b], 0)
    with pytest.raises(ValueError, match="one list per engine"):
        tp([f.eng], [b, b], 1)
    with pytest.raises(ValueError, match="1 to 4 batches"):
        tp([f.eng], [b * 3], 1)
    with pytest.raises(ValueError, match="past the buffer end"):
        d, buf, off, ln, vo, ro = b[0]
        tp([f.eng], [[(d, buf[:-1], off, ln, vo, ro)]], 1)
    with pytest.raises(ValueError, match="writable"):
        tp([f.eng], [[(d, bytes(buf), off, ln, vo, ro)]], 1)
    with pytest.raises(TypeError, match="compiled hyperplane Engine"):
        tp([object()], [b], 1)
    # still usable after the refusals (now: the engine's time, or its clock would expire all)
    assert tp([f.eng], [b], 1, now=bench.Flows.NOW)["threads"][0]["passed"] == 16
