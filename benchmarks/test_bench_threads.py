"""Engines translating in parallel, one per thread, without I/O (the engine-level measure of
the data-path workers): 1 and 2 threads, each with its own engine and 256 established flows
(IPv4/IPv6 x TCP/UDP), a data packet out and a reply in per flow and round.

``python3 -m pytest benchmarks/test_bench_threads.py --benchmark-enable`` times one call of
``translate_parallel`` (ROUNDS rounds on every thread); the summary's packets/s is all threads'
packets over the median call. ``benchmarks/engine_threads.py`` is the real measurement (1 and 2
threads alternating, pinned, the ratio). Nothing here asserts a timing; every call checks that
every packet of every round passed.
"""
import importlib.util
import os
import sys

import pytest

_spec = importlib.util.spec_from_file_location(
    "hyperplane_engine_threads", os.path.join(os.path.dirname(__file__), "engine_threads.py"))
et = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = et
_spec.loader.exec_module(et)

ROUNDS = 200


@pytest.mark.benchmark(group="parallel translate, one engine per thread")
@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
def test_parallel_translate(benchmark, compiled_cls, report_rate, threads):
    flows = [et.Flows(256, compiled_cls) for _ in range(threads)]
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[:threads] if len(allowed) >= threads else None
    r, _ = benchmark.pedantic(et.run_parallel, args=(flows, ROUNDS, cpus), rounds=5,
                              warmup_rounds=1)
    per_call = threads * ROUNDS * flows[0].packets_per_round
    assert sum(t["passed"] for t in r["threads"]) == per_call
    assert sum(t["dropped"] for t in r["threads"]) == 0
    report_rate(benchmark, per_call)
    benchmark.extra_info.update(threads=threads, pinned=cpus is not None)
