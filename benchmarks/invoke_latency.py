#!/usr/bin/env python3
"""What running a function's code costs in a lab: invoke round trips, cold starts, lab up.

    sudo python3 benchmarks/invoke_latency.py [--invokes 200] [--colds 10] [--ups 5]

On the embedded default lab (fn-a: the console's hello-world in Python, on a TAP environment):

- **warm invoke**: ``lab.invoke`` round trips (the caller -> workloads service -> the data
  path's control plane check -> the Runtime API -> the runtime and back), median and p99,
  against a **baseline measured in the same run**: a ``ping`` on the data path's control socket
  (one local request/reply on the same kind of socket), so the ratio says what the invocation
  path adds beyond one control round trip;
- **in the runtime**: the REPORT line's Duration (the Runtime API hand-off and the handler);
- **cold start**: Init Duration (the runtime process started in the environment's namespace as
  nobody, Python's start-up, the handler's import) over ``--colds`` cold starts, each forced by
  killing the warm runtime by the pid ``lab.environments()`` reports (a process of this
  script's own lab);
- **lab up**: seconds for ``Lab.up()`` of the default lab, with the workloads service (now).

Quote medians: the machine is small and noisy.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

import hyperplane


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--invokes", type=int, default=200)
    ap.add_argument("--colds", type=int, default=10)
    ap.add_argument("--ups", type=int, default=5)
    args = ap.parse_args()

    ups = []
    for _ in range(args.ups):
        t0 = time.monotonic()
        lab = hyperplane.Lab.up()
        ups.append(time.monotonic() - t0)
        lab.down()

    with hyperplane.Lab.up() as lab:
        lab.invoke("fn-a")                        # the cold start, out of the warm figures
        pings, invokes = [], []
        for _ in range(args.invokes):             # alternate, so drift hits both alike
            t0 = time.perf_counter()
            lab.request("ping")
            pings.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            meta, _ = lab.invoke("fn-a", {"k": 1})
            invokes.append(time.perf_counter() - t0)
            assert "FunctionError" not in meta, meta
        reports = [e["message"] for e in lab.logs("fn-a") if e["message"].startswith("REPORT")]
        durations = [float(f.split()[1]) for r in reports[1:] for f in r.split("\t")
                     if f.startswith("Duration:")]
        inits = []
        for _ in range(args.colds):
            env = next(e for e in lab.environments() if e["environment"] == "fn-a-0")
            if env["pid"]:
                os.kill(env["pid"], signal.SIGKILL)   # the runtime this lab started
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and next(
                        e for e in lab.environments()
                        if e["environment"] == "fn-a-0")["state"] != "cold":
                    time.sleep(0.01)
            meta, _ = lab.invoke("fn-a")
            assert "FunctionError" not in meta, meta
            last = [e["message"] for e in lab.logs("fn-a") if e["message"].startswith("REPORT")][-1]
            inits += [float(f.split()[2]) for f in last.split("\t")
                      if f.startswith("Init Duration:")]

    ms = lambda s: s * 1000.0  # noqa: E731
    print(f"lab up (default lab), {len(ups)} runs: median {statistics.median(ups):.2f} s "
          f"(min {min(ups):.2f}, max {max(ups):.2f})")
    print(f"control ping (baseline), {len(pings)}: median {ms(statistics.median(pings)):.3f} ms, "
          f"p99 {ms(pct(pings, 0.99)):.3f} ms")
    print(f"warm lab.invoke, {len(invokes)}: median {ms(statistics.median(invokes)):.3f} ms, "
          f"p99 {ms(pct(invokes, 0.99)):.3f} ms; ratio to the baseline (medians) "
          f"{statistics.median(invokes) / statistics.median(pings):.1f}x")
    if durations:
        print(f"REPORT Duration (in the runtime), {len(durations)}: median "
              f"{statistics.median(durations):.2f} ms, p99 {pct(durations, 0.99):.2f} ms")
    if inits:
        print(f"cold start Init Duration, {len(inits)}: median {statistics.median(inits):.1f} ms "
              f"(min {min(inits):.1f}, max {max(inits):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
