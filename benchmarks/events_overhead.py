#!/usr/bin/env python3
"""What recording connection events costs a new connection (compiled engine, one process).

    python3 benchmarks/events_overhead.py [--repeats 3]

Batches of 256 SYNs, all new tuples, through ``translate_batch`` with the event ring off and on
(16,384 events, emptied between batches as the daemon does each tick); the median time per new
connection of each, and their ratio, once per repeat. Established-flow packets emit no event,
so only new connections (NEW) and state changes (UPDATE) pay. Nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from kit.frames import ENV, HOST, make_config, tcp  # noqa: E402

from hyperplane import Direction  # noqa: E402
from hyperplane.engine._engine import Engine  # noqa: E402


def run(events: bool, rounds: int = 60) -> float:
    """Median nanoseconds per new connection."""
    eng = Engine(make_config(capacity=200_000), clock=lambda: 0.0)
    if events:
        eng.enable_events(16384)
    times, sport = [], 0
    for r in range(rounds):
        pkts = []
        for k in range(256):
            pkts.append(tcp(4, ENV[4][k % 3], HOST[4][r % 2], 1024 + sport % 60000,
                            443 + sport // 60000, "S"))
            sport += 1
        buf, offs, o = bytearray(b"".join(pkts)), [], 0
        for p in pkts:
            offs.append(o)
            o += len(p)
        v, rs = bytearray(256), bytearray(256)
        gc.disable()
        t = time.perf_counter()
        eng.translate_batch(Direction.OUTBOUND, buf, offs, [len(p) for p in pkts], v, rs,
                            now=1.0)
        times.append(time.perf_counter() - t)
        gc.enable()
        eng.discard_events()
    return statistics.median(times[5:]) / 256 * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    for _ in range(a.repeats):
        off, on = run(False), run(True)
        print(f"new-flow insert ns/connection: events off {off:.0f}, on {on:.0f}, "
              f"ratio on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
