"""Micro-benchmarks of the data path, for both engines (ids ``compiled`` and ``reference``).

Run them for real with ``python3 -m pytest benchmarks --benchmark-enable``; the test run
(``--benchmark-disable`` in pyproject) runs each body once as a plain test, so the workloads and
their verdicts stay checked. Nothing here asserts a timing: only the verdicts and counts that
show the benchmark measured what it says. The end-of-run summary and ``extra_info`` give
packets/s = packets per round / median round time.

``compare.py`` runs the same workloads with ``time.perf_counter`` and checks the targets.
"""
import pytest

N_FLOWS = 1_000          # established flows behind the established-flow benchmark
EXPIRE_K = 10_000        # connections removed by one expire() call


@pytest.mark.benchmark(group="established translate, 256/batch")
def test_established_translate_batch(benchmark, engine_cls, wl, report_rate):
    """(1) Established-flow translation in batch mode: 1,000 ESTABLISHED IPv4 TCP flows, one
    outbound batch of 256 data packets (104 bytes each, distinct flows) in one bytearray.

    Each round first copies the 26 KB template into the working buffer (translation is in place
    and decrements the TTL); the copy is included in the measured time."""
    est = wl.Established(engine_cls, N_FLOWS, templates=1)
    passed = benchmark(est.round)
    est.check()
    assert passed == wl.BATCH
    report_rate(benchmark, wl.BATCH)


@pytest.mark.benchmark(group="new-flow insert, 256 SYNs/batch")
def test_new_flow_insert(benchmark, engine_cls, wl, report_rate):
    """(2) New connections: a batch of 256 SYNs from 256 distinct source ports per round; every
    round comes from a new environment address, so every tuple is new (NEW verdict, a port
    taken, both tuples inserted). The table is held at about 30,500 connections: each round's
    setup (not timed) moves the clock 1 s, expires the round opened 120 s before and builds
    the round's SYNs."""
    rounds = 200 if engine_cls.engine == "compiled" else 20
    nf = wl.NewFlows(engine_cls)
    created = benchmark.pedantic(nf.round, setup=nf.setup, rounds=rounds, warmup_rounds=5)
    nf.check()
    assert created == wl.BATCH
    assert len(nf.eng) == nf.STEADY_ROUNDS * wl.BATCH
    report_rate(benchmark, wl.BATCH, "connections")


@pytest.mark.benchmark(group="expire 10,000 connections")
def test_expire_all(benchmark, engine_cls, wl, report_rate):
    """(3) Expiry: 10,000 connections opened at t (setup, not timed); one ``expire(t + 1000)``
    removes them all, freeing both tuples and the ports."""
    rounds = 20 if engine_cls.engine == "compiled" else 3
    ex = wl.Expiry(engine_cls, EXPIRE_K)
    removed = benchmark.pedantic(ex.round, setup=ex.setup, rounds=rounds)
    assert removed == EXPIRE_K and set(ex.removed) == {EXPIRE_K}
    assert len(ex.eng) == 0
    report_rate(benchmark, EXPIRE_K, "connections")


@pytest.mark.scaling
@pytest.mark.benchmark(group="scaling: established translate vs table size")
@pytest.mark.parametrize("hot", [256, 16_384], ids=["hot256", "hot16k"])
@pytest.mark.parametrize("tracked", [1_000, 100_000, 1_000_000], ids=["1k", "100k", "1M"])
def test_scaling_established(benchmark, compiled_cls, wl, report_rate, tracked, hot):
    """Established translation (as in (1)) with 1k, 100k and 1M tracked connections, compiled
    engine only. The table is filled with SYN batches (SYN_SENT connections); then ``hot``
    flows spread across it (at most all of them) are made ESTABLISHED and the rounds cycle
    through batches of 256 distinct hot flows. ``hot256``: one batch, the same 256 entries every
    round (cache-warm lookups, the table size alone); ``hot16k``: 64 batches over 16,384 flows,
    so lookups leave the caches as the table grows."""
    n_hot = min(tracked, hot)
    est = wl.Established(compiled_cls, n_hot, tracked=tracked, templates=n_hot // wl.BATCH)
    assert len(est.eng) == tracked
    passed = benchmark(est.round)
    est.check()
    assert passed == wl.BATCH
    report_rate(benchmark, wl.BATCH)
    benchmark.extra_info.update(tracked_connections=tracked, established_flows=n_hot,
                                batches=len(est.templates))
