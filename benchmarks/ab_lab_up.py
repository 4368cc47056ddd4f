#!/usr/bin/env python3
"""``lab up`` and ``lab down`` of the default lab with two checkouts, A against B, alternating.

    sudo python3 benchmarks/ab_lab_up.py /path/to/checkout-A /path/to/checkout-B [--pairs 6]

Each run is a fresh process with ``PYTHONPATH`` at one checkout (built: ``python3 setup.py
build_ext --inplace``) timing ``hyperplane.Lab.up()`` and then ``lab.down()``; the order inside
a pair alternates, and the result is the median of the per-pair ratios B/A beside both medians
(a small machine's speed drifts between runs; pairs cancel most of it). The test suite builds
a lab for nearly every lab test module, so this is what a change to the lab's life costs it.

``--b-config FILE``: B runs that lab file instead of the default lab (give the same checkout
twice to measure what a setting costs, e.g. a copy of the default lab with ``[metrics]``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = ("import sys, time, hyperplane\n"
         "config = sys.argv[1] or None\n"
         "t = time.monotonic(); lab = hyperplane.Lab.up(config); up = time.monotonic() - t\n"
         "t = time.monotonic(); lab.down(); print(up, time.monotonic() - t)\n")


def run(root: str, config: str = "") -> tuple:
    out = subprocess.run([sys.executable, "-c", CHILD, config],
                         env=dict(os.environ, PYTHONPATH=root),
                         capture_output=True, text=True, cwd="/tmp", timeout=120, check=True)
    up, down = map(float, out.stdout.split())
    return up, down


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--b-config", default="", metavar="FILE",
                    help="the lab file B runs (default: the default lab, as A)")
    args = ap.parse_args()
    configs = {"A": "", "B": os.path.abspath(args.b_config) if args.b_config else ""}
    res = {"A": [], "B": []}
    for i in range(args.pairs):
        order = [("A", args.a), ("B", args.b)]
        for tag, root in (order if i % 2 == 0 else order[::-1]):
            res[tag].append(run(os.path.abspath(root), configs[tag]))
    for tag, root in (("A", args.a), ("B", args.b)):
        ups, downs = [u for u, _ in res[tag]], [d for _, d in res[tag]]
        print(f"{tag} {root}: lab up median {statistics.median(ups):.2f} s (min {min(ups):.2f}, "
              f"max {max(ups):.2f}); lab down median {statistics.median(downs):.2f} s")
    for i, what in ((0, "lab up"), (1, "lab down")):
        ratios = [b[i] / a[i] for a, b in zip(res["A"], res["B"])]
        print(f"{what}: B/A median of {len(ratios)} paired ratios {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
