#!/usr/bin/env python3
"""Compiled vs reference engine, side by side, and the performance targets.

    python3 benchmarks/compare.py            # full run (about 10 seconds)
    python3 benchmarks/compare.py --quick    # fewer repeats, 100,000-connection memory probe

Runs the three micro-benchmarks of ``test_bench_engine.py`` for both engines in one process
(the workloads are the same code: ``benchmarks/conftest.py``), timed with
``time.perf_counter``, the garbage collector off, the process pinned to one CPU. Every
number is a **median** over repeats (this is meant for small, noisy machines: medians, not
means or minimums), with the interquartile spread beside it.

1. established: a batch of 256 outbound data packets of ESTABLISHED IPv4 TCP flows (1,000
   tracked), translated in place in one bytearray; each round includes copying the 26 KB
   template into the working buffer (translation rewrites the packets and decrements the TTL);
2. new flows: a batch of 256 SYNs, all new tuples, into a table held at ~30,500 connections
   (building the SYNs and expiring the oldest batch are not timed);
3. expiry: one ``expire(now)`` call removing 10,000 connections.

Then, in a fresh process (``--memory-probe``) so the RSS delta is clean, 1,000,000 TCP
connections are opened in the compiled engine and the bytes per connection are read from
``memory_bytes()`` and from the RSS delta (/proc/self/statm).

Targets (PASS/FAIL each, exit status 1 when one fails):

* >= 10,000,000 established-flow translations per second on one core in batch mode (compiled);
* compiled >= 50x the reference engine on the same established-flow workload;
* <= 256 bytes per tracked connection at 1,000,000 connections (both measures).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent

TARGET_PPS = 10_000_000
TARGET_RATIO = 50.0
TARGET_BYTES_PER_CONN = 256
MEMORY_CONNECTIONS = 1_000_000


def load_workload():
    """benchmarks/conftest.py, loaded by path under its own name (it is also pytest's
    conftest; ``import conftest`` could pick up tests/conftest.py instead)."""
    spec = importlib.util.spec_from_file_location("hyperplane_bench_workload",
                                                  HERE / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
class Timing:
    """Seconds per round: the median and quartiles over ``samples``."""

    def __init__(self, samples: List[float], units: int, unit: str):
        self.samples = sorted(samples)
        self.units = units
        self.unit = unit
        self.median = statistics.median(self.samples)
        q = statistics.quantiles(self.samples, n=4) if len(self.samples) >= 2 else [self.median] * 3
        self.q1, self.q3 = q[0], q[2]

    @property
    def rate(self) -> float:
        return self.units / self.median

    @property
    def ns_per_unit(self) -> float:
        return 1e9 * self.median / self.units

    @property
    def spread_pct(self) -> float:
        return 100.0 * (self.q3 - self.q1) / self.median

    def as_dict(self) -> Dict[str, object]:
        return dict(median_s=self.median, q1_s=self.q1, q3_s=self.q3, samples=len(self.samples),
                    units_per_round=self.units, unit=self.unit, rate_per_s=self.rate,
                    ns_per_unit=self.ns_per_unit)


def timed(fn: Callable[[], object], repeats: int, block: int = 1, warmup: int = 3,
          setup: Optional[Callable[[], tuple]] = None) -> List[float]:
    """Per-round seconds: ``repeats`` samples, each the mean of ``block`` back-to-back rounds
    (blocks amortise the timer for rounds of a few microseconds). With ``setup`` (untimed,
    returns fn's args) every round is timed on its own."""
    clock = time.perf_counter
    out: List[float] = []
    gc.collect()
    gc.disable()
    try:
        for i in range(warmup + repeats):
            if setup is not None:
                args = setup()
                t0 = clock()
                fn(*args)
                dt = clock() - t0
            else:
                t0 = clock()
                for _ in range(block):
                    fn()
                dt = (clock() - t0) / block
            if i >= warmup:
                out.append(dt)
    finally:
        gc.enable()
    return out


def run_engine(wl, cls, quick: bool) -> Dict[str, Timing]:
    compiled = cls.engine == "compiled"
    res: Dict[str, Timing] = {}

    est = wl.Established(cls, 1_000, templates=1)
    s = timed(est.round, repeats=(21 if quick else 101) if compiled else (5 if quick else 21),
              block=64 if compiled else 1)
    est.check()
    res["established"] = Timing(s, wl.BATCH, "packets")

    rounds = (200 if quick else 1000) if compiled else (5 if quick else 30)
    warm = 5
    nf = wl.NewFlows(cls)
    s = timed(nf.round, repeats=rounds, warmup=warm, setup=lambda: (nf.setup(), ())[1])
    nf.check()
    res["new_flows"] = Timing(s, wl.BATCH, "connections")

    k = 10_000
    ex = wl.Expiry(cls, k)
    s = timed(ex.round, repeats=(7 if quick else 31) if compiled else (3 if quick else 7),
              warmup=1, setup=lambda: ex.setup()[0])
    assert set(ex.removed) == {k}, f"expiry removed {set(ex.removed)}, expected {k} each round"
    res["expiry"] = Timing(s, k, "connections")
    return res


# --------------------------------------------------------------------------------------------
# Memory (a fresh process)
# --------------------------------------------------------------------------------------------
def memory_probe(n: int) -> Dict[str, object]:
    """Run ``compare.py --memory-probe n`` and return its JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(n)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"memory probe failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
TITLES = {
    "established": "established translate",
    "new_flows": "new-flow insert",
    "expiry": "expire() 10,000 conns",
}
NOTES = (
    "established translate: batch of 256 data packets of established flows (1,000 tracked); "
    "each round includes the 26 KB copy of the template into the working buffer",
    "new-flow insert: batch of 256 SYNs, all new tuples, table steady at ~30,500 connections "
    "(building the SYNs and expiring the oldest batch are not timed)",
    "expire(): one call removing 10,000 connections (opening them is not timed)",
    "median/round ±IQR: median seconds per round, interquartile range in % of the median; "
    "rate = units per round / median; ratio = compiled rate / reference rate",
)


def fmt_time(s: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e3), ("us", 1e6)):
        if s * f >= 1.0:
            return f"{s * f:,.1f} {unit}"
    return f"{s * 1e9:,.0f} ns"


def rows(results: Dict[str, Dict[str, Timing]]):
    comp, ref = results.get("compiled"), results.get("reference")
    for key, title in TITLES.items():
        c = comp[key] if comp else None
        r = ref[key] if ref else None
        ratio = f"{r.median / c.median:,.1f}x" if c and r else "-"

        def cells(t: Optional[Timing]):
            if t is None:
                return ["-", "-", "-"]
            return [f"{fmt_time(t.median)} ±{t.spread_pct:.0f}%", f"{t.rate:,.0f}",
                    f"{t.ns_per_unit:,.1f}"]

        t = c or r
        unit = {"packets": "pkt", "connections": "conn"}[t.unit] if t else ""
        yield [title, unit] + cells(c) + cells(r) + [ratio]


HEADERS = ["benchmark", "unit", "compiled median ±IQR", "compiled unit/s", "ns/unit",
           "reference median ±IQR", "reference unit/s", "ns/unit", "ratio"]


def print_table(results) -> None:
    data = list(rows(results))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is not None:
        t = Table()
        for i, h in enumerate(HEADERS):
            t.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
        for r in data:
            t.add_row(*r)
        Console(width=200).print(t)
    else:
        widths = [max(len(h), *(len(r[i]) for r in data)) for i, h in enumerate(HEADERS)]
        for r in [HEADERS] + data:
            print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))))
    for n in NOTES:
        print(f"  {n}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Targets: " + ", ".join((
                                     f">= {TARGET_PPS:,} established pkt/s (compiled)",
                                     f">= {TARGET_RATIO:g}x reference",
                                     f"<= {TARGET_BYTES_PER_CONN} bytes/connection")))
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats and a 100,000-connection memory probe (the memory "
                         "target is then only indicative)")
    ap.add_argument("--memory-connections", type=int, default=None, metavar="N",
                    help=f"connections for the memory probe (default {MEMORY_CONNECTIONS:,}; "
                         "0 skips it)")
    ap.add_argument("--cpu", type=int, default=None,
                    help="CPU to pin to (default: the last one allowed)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--memory-probe", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    wl = load_workload()
    if args.memory_probe is not None:          # internal: one clean process, one JSON line
        print(json.dumps(wl.measure_memory(args.memory_probe)))
        return 0

    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        pinned = args.cpu if args.cpu is not None else allowed[-1]
        os.sched_setaffinity(0, {pinned})

    engines = {}
    for name in wl.ENGINE_NAMES:
        try:
            engines[name] = wl.engine_class(name)
        except ImportError as exc:
            print("*" * 78 + f"\nthe {name} engine does not import: {exc}\nbuild it with: "
                  "pip install -e .\n" + "*" * 78, file=sys.stderr)

    import hyperplane
    print(f"hyperplane {hyperplane.__version__}  python {sys.version.split()[0]}  "
          f"pinned to CPU {pinned if pinned is not None else '-'} of {os.cpu_count()}  "
          f"engines: {', '.join(engines) or 'none'}")
    results: Dict[str, Dict[str, Timing]] = {}
    for name, cls in engines.items():
        t0 = time.perf_counter()
        results[name] = run_engine(wl, cls, args.quick)
        print(f"  {name}: measured in {time.perf_counter() - t0:.1f} s", flush=True)

    n_mem = args.memory_connections
    if n_mem is None:
        n_mem = 100_000 if args.quick else MEMORY_CONNECTIONS
    mem = None
    if n_mem > 0 and "compiled" in engines:
        t0 = time.perf_counter()
        mem = memory_probe(n_mem)
        print(f"  memory probe ({n_mem:,} connections, fresh process): "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

    print()
    print_table(results)
    if mem:
        print(f"\nmemory, compiled engine, {mem['connections']:,} TCP connections over "
              f"{mem['enis']} ENIs: memory_bytes() {mem['memory_bytes']:,} B = "
              f"{mem['memory_bytes_per_conn']:.1f} B/connection; RSS delta {mem['rss_delta']:,} B"
              f" = {mem['rss_bytes_per_conn']:.1f} B/connection; opening them took "
              f"{mem['insert_seconds']:.2f} s ({mem['connections'] / mem['insert_seconds']:,.0f}"
              " connections/s incl. 256-SYN batch calls)")

    # ---- targets ------------------------------------------------------------------------------
    checks = []
    comp, ref = results.get("compiled"), results.get("reference")
    pps = comp["established"].rate if comp else None
    checks.append((f"established-flow translations >= {TARGET_PPS:,}/s on one core, batch mode",
                   pps is not None and pps >= TARGET_PPS,
                   f"{pps:,.0f}/s (median)" if pps else "compiled engine missing"))
    ratio = (ref["established"].median / comp["established"].median) if comp and ref else None
    checks.append((f"compiled >= {TARGET_RATIO:g}x reference (established-flow translation)",
                   ratio is not None and ratio >= TARGET_RATIO,
                   f"{ratio:,.1f}x" if ratio else "an engine is missing"))
    if n_mem > 0:
        for key, what in (("memory_bytes_per_conn", "memory_bytes()"),
                          ("rss_bytes_per_conn", "RSS delta")):
            v = mem[key] if mem else None
            checks.append((f"<= {TARGET_BYTES_PER_CONN} bytes per connection at {n_mem:,} "
                           f"connections ({what})",
                           v is not None and v <= TARGET_BYTES_PER_CONN,
                           f"{v:.1f} B" if v is not None else "compiled engine missing"))
    else:
        print("\nmemory probe skipped (--memory-connections 0): memory target not checked")
    print("\ntargets:")
    for what, ok, got in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}: {got}")

    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            pinned_cpu=pinned, quick=args.quick,
            results={e: {k: t.as_dict() for k, t in r.items()} for e, r in results.items()},
            memory=mem, targets=[dict(target=w, passed=ok, measured=g) for w, ok, g in checks],
        ), indent=2) + "\n")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
