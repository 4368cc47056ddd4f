#!/usr/bin/env python3
"""The established-flow translation cost of two checkouts, A against B, alternating.

    python3 benchmarks/ab_established.py /path/to/checkout-A /path/to/checkout-B [--pairs 12]

compare.py's "established translate" figure moves by 50 % between runs on a small machine whose
CPU changes speed under it; a ratio between two builds needs both measured side by side. This
runs, for each pair, one fresh process per checkout (its own build, ``PYTHONPATH`` pointing at
it, pinned to one CPU, garbage collector off): the workload of benchmarks/conftest.py (1,000
established IPv4 TCP flows, batches of 256 PSH|ACK data packets, every packet checked
ESTABLISHED), 3,000 rounds, the median ns per packet. The order inside a pair alternates, and
the result is the median of the per-pair ratios B/A, beside both medians. Each checkout must be
built (``python3 setup.py build_ext --inplace``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROUNDS = 3000

CHILD = r"""
import gc, importlib.util, os, statistics, sys, time
cpu = int(sys.argv[2])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
spec = importlib.util.spec_from_file_location("hp_ab_workload", sys.argv[1] + "/benchmarks/conftest.py")
wl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wl)
from hyperplane.engine.constants import Direction, Verdict
eng = wl.new_engine(wl.engine_class("compiled"), 1000)
flows = list(range(1000))
wl.establish(eng, flows, 1.0)
batch = wl.data_batch(flows[:256])
template = bytes(batch.buf)
gc.disable()
times = []
for _ in range(int(sys.argv[3])):
    buf = bytearray(template)
    t0 = time.perf_counter()
    batch.run(eng, Direction.OUTBOUND, 2.0, buf=buf)
    times.append(time.perf_counter() - t0)
assert all(v == Verdict.ESTABLISHED for v in batch.verdicts), "a data packet was not ESTABLISHED"
print(statistics.median(times) / batch.n * 1e9)
"""


def measure(tree: Path, cpu: int, rounds: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    p = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(cpu), str(rounds)],
                       env=env, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise SystemExit(f"{tree}: the measurement failed:\n{p.stderr[-3000:]}")
    return float(p.stdout.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="checkout A (the baseline)")
    ap.add_argument("b", type=Path, help="checkout B")
    ap.add_argument("--pairs", type=int, default=12, help="alternating pairs (default 12)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="batches per measurement")
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                    help="CPU to pin to (-1: none; default the last)")
    args = ap.parse_args()
    a_ns, b_ns = [], []
    for k in range(args.pairs):
        order = [(args.a, a_ns), (args.b, b_ns)]
        for tree, out in (order if k % 2 == 0 else order[::-1]):
            out.append(measure(tree.resolve(), args.cpu, args.rounds))
        print(f"pair {k + 1:>2}: A {a_ns[-1]:7.1f} ns/packet  B {b_ns[-1]:7.1f} ns/packet  "
              f"B/A {b_ns[-1] / a_ns[-1]:.3f}", flush=True)
    ratios = [b / a for a, b in zip(a_ns, b_ns)]
    print(f"median: A {statistics.median(a_ns):.1f} ns/packet, B {statistics.median(b_ns):.1f} "
          f"ns/packet; median of the pairs' ratios B/A = {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
