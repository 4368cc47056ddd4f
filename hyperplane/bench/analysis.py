"""From trials to figures and verdicts: loss, the loss-free search (RFC 2544's throughput), the
ABBA order, medians, ratios, the per-metric summary, the verdicts of the issue's "Done means"
and the overload shares. These are plain functions without I/O, unit-tested with fake
measurements. Then what the figures were measured on and what they cost: :func:`machine` and
:func:`cpu_times` read /proc, :func:`cpu_cost` turns the trials' readings into CPU seconds per GB.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import socket
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hyperplane import engine
from hyperplane.bench.settings import (
    METRICS, MODES, OVERLOAD_LOAD, OVERLOAD_TARGET, RATIO_TARGET, REACHED, TESTS,
)
from hyperplane.version import __version__


def loss(sent: float, delivered: float) -> float:
    """Share of the sent packets that did not arrive (0 when nothing was sent)."""
    if sent <= 0:
        return 0.0
    return max(0.0, 1.0 - delivered / sent)


def is_loss_free(sent: float, delivered: float, tolerance: float) -> bool:
    """RFC 2544's "no loss", with ``tolerance``: delivered >= (1 - tolerance) * sent."""
    return sent > 0 and delivered >= (1.0 - tolerance) * sent


def find_loss_free(measure: Callable[[int], Dict[str, Any]], start_rate: int,
                   tolerance: float, steps: int = 5, max_rate: int = 20_000_000,
                   reached: float = REACHED) -> Dict[str, Any]:
    """The highest loss-free rate: offer ``start_rate`` packets/s, double while the trial is
    loss-free, then bisect ``steps`` times between the last loss-free and the first lossy rate.

    ``measure(rate)`` runs one trial and returns at least ``sent``, ``delivered``, ``seconds``
    and ``rate`` (what the sender achieved, packets/s). When a loss-free trial's sender fell
    short of the offered rate (below ``reached`` of it), the generator is the limit, not the
    NAT: the search stops there and says so (``generator_limited``). When even ``start_rate``
    loses, the bisection goes down from it (half, a quarter, ...); if nothing is loss-free the
    result's ``rate`` is 0.

    Returns ``rate`` (delivered packets/s of the best loss-free trial), ``offered`` (its
    offered rate), ``loss`` (at it), ``first_lossy`` (the lowest offered rate that lost),
    ``generator_limited``, ``capped`` (stopped at ``max_rate``) and every ``trials`` entry."""
    trials: List[Dict[str, Any]] = []

    def probe(rate: int) -> Dict[str, Any]:
        r = dict(measure(int(rate)))
        r["offered"] = int(rate)
        r["loss"] = loss(r["sent"], r["delivered"])
        r["loss_free"] = is_loss_free(r["sent"], r["delivered"], tolerance)
        r["delivered_rate"] = r["delivered"] / r["seconds"] if r["seconds"] > 0 else 0.0
        trials.append(r)
        return r

    def result(best: Optional[Dict[str, Any]], hi: Optional[int], **flags) -> Dict[str, Any]:
        out = {"rate": best["delivered_rate"] if best else 0.0,
               "offered": best["offered"] if best else 0,
               "achieved": best["rate"] if best else 0.0,
               "loss": best["loss"] if best else (trials[-1]["loss"] if trials else 0.0),
               "first_lossy": hi, "generator_limited": False, "capped": False,
               "tolerance": tolerance, "trials": trials}
        out.update(flags)
        return out

    start_rate = max(1, int(start_rate))
    best: Optional[Dict[str, Any]] = None
    lo, hi, rate = 0, None, start_rate
    while True:
        t = probe(rate)
        if not t["loss_free"]:
            hi = rate
            break
        best, lo = t, rate
        if t["rate"] < reached * rate:
            return result(best, None, generator_limited=True)
        if rate * 2 > max_rate:
            return result(best, None, capped=True)
        rate *= 2
    for _ in range(max(0, steps)):
        mid = (lo + hi) // 2
        if mid <= lo or mid >= hi:
            break
        t = probe(mid)
        if t["loss_free"]:
            best, lo = t, mid
        else:
            hi = mid
    return result(best, hi)


def abba(repeats: int) -> List[Tuple[str, str]]:
    """The mode order of each repeat: hyperplane first, then kernel first, and so on (ABBA),
    so a drift over time does not favour either mode."""
    return [MODES if r % 2 == 0 else MODES[::-1] for r in range(repeats)]


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def ratio_of(h: Optional[float], k: Optional[float]) -> Optional[float]:
    """hyperplane's figure over the kernel's; None when either is missing or the kernel's is 0
    (also used by benchmarks/e2e_scaling.py)."""
    if h is None or k is None or k == 0:
        return None
    return h / k


def summarize(figures: Dict[str, Dict[str, List[float]]]) -> Dict[str, Dict[str, Any]]:
    """``figures[mode][metric]`` = one value per repeat -> per metric: unit, which way is
    better, each mode's median/min/max/values and the ratio hyperplane median / kernel median
    (None when a side is missing or the kernel's median is 0). Metrics in METRICS order."""
    out: Dict[str, Dict[str, Any]] = {}
    for metric, (unit, higher, what) in METRICS.items():
        per = {m: list(figures.get(m, {}).get(metric, [])) for m in MODES}
        if not any(per.values()):
            continue
        row: Dict[str, Any] = {"unit": unit, "better": "higher" if higher else "lower",
                               "what": what}
        for m in MODES:
            v = per[m]
            row[m] = {"median": median(v), "min": min(v) if v else None,
                      "max": max(v) if v else None, "values": v}
        row["ratio"] = ratio_of(row["hyperplane"]["median"], row["kernel"]["median"])
        out[metric] = row
    return out


def verdicts(summary: Dict[str, Dict[str, Any]],
             overload_fraction: Optional[float] = None,
             overload_load: Optional[float] = None) -> List[Dict[str, Any]]:
    """The issue's "Done means", for what was measured: TCP ratios (IPv4 and IPv6: every
    stream count run) >= 1.0, the loss-free UDP ratio >= 1.0, the connection-rate ratio >= 1.0,
    and hyperplane delivering >= 90 % of its loss-free rate under twice that load
    (``overload_fraction``: its median delivered / its median loss-free rate). The last one is
    shown only when the sender really offered twice the load: ``overload_load`` is the median
    rate hyperplane's sender reached over its loss-free rate, and below ``2 x REACHED`` the
    verdict misses with a ``why`` (a generator that cannot offer the load proves nothing)."""
    out: List[Dict[str, Any]] = []

    def ratio_check(name: str, metrics: List[str]) -> None:
        ratios = [summary[m]["ratio"] for m in metrics if m in summary]
        if not ratios:
            return
        worst = None if any(r is None for r in ratios) else min(ratios)
        out.append({"name": name, "metrics": [m for m in metrics if m in summary],
                    "value": worst, "target": RATIO_TARGET, "kind": "ratio",
                    "meets": worst is not None and worst >= RATIO_TARGET})

    ratio_check("TCP throughput IPv4 (hyperplane/kernel)", ["tcp4-1", "tcp4-4"])
    ratio_check("TCP throughput IPv6 (hyperplane/kernel)", ["tcp6-1", "tcp6-4"])
    ratio_check("loss-free 64-byte UDP rate (hyperplane/kernel)", ["udp64"])
    ratio_check("connection rate (hyperplane/kernel)", ["conn"])
    if "udp64-overload" in summary:
        offered = overload_load is not None and overload_load >= OVERLOAD_LOAD * REACHED
        v = {"name": "hyperplane under 2x loss-free UDP load (share of its loss-free "
                     "rate delivered; no livelock)",
             "metrics": ["udp64-overload"], "value": overload_fraction,
             "target": OVERLOAD_TARGET, "kind": "fraction", "load": overload_load,
             "meets": offered and overload_fraction is not None
             and overload_fraction >= OVERLOAD_TARGET}
        if not offered:
            v["why"] = ("not shown: the sender offered only "
                        + ("an unknown load" if overload_load is None
                           else f"{overload_load:.2f}x the loss-free rate")
                        + f", not {OVERLOAD_LOAD:g}x")
        out.append(v)
    return out


def overload_load(trials: List[Dict[str, Any]],
                  summary: Dict[str, Dict[str, Any]]) -> Optional[float]:
    """The load hyperplane's overload trials really offered, as a multiple of its loss-free
    rate: the median rate its sender reached over the median loss-free rate."""
    rates = [t["raw"].get("rate") for t in trials
             if t["mode"] == "hyperplane" and t["test"] == "udp64-overload"]
    base = summary.get("udp64", {}).get("hyperplane", {}).get("median")
    return ratio_of(median([r for r in rates if r is not None]), base)


def overload_fractions(summary: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Per mode: median delivered under overload / median loss-free rate."""
    out: Dict[str, Optional[float]] = {m: None for m in MODES}
    if "udp64-overload" in summary and "udp64" in summary:
        for m in MODES:
            out[m] = ratio_of(summary["udp64-overload"][m]["median"], summary["udp64"][m]["median"])
    return out


# ---- the machine: what the figures were measured on, and what they cost -----------------------
def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return {"cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "hyperplane": __version__,
            "engine": engine.ENGINE, "hostname": socket.gethostname(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def cpu_times() -> Tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds elapsed), from /proc/stat's ``cpu``
    line: busy = everything but idle and iowait, summed over CPUs."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])          # user nice system idle iowait irq softirq steal
    return (total - fields[3] - fields[4]) / hz, total / hz


def cpu_cost(trials: List[Dict[str, Any]]) -> Dict[str, Dict[str, Optional[float]]]:
    """Per TCP test and mode, the median CPU seconds the whole machine spent per GB moved
    (``cpu_s_per_gbyte`` of the trials), and the hyperplane/kernel ratio: what the throughput
    ratios do not show when a mode is held back by something else than CPU."""
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for test in TESTS:
        if not test.startswith("tcp"):
            continue
        row: Dict[str, Optional[float]] = {}
        for mode in MODES:
            vals = [t["raw"].get("cpu_s_per_gbyte") for t in trials
                    if t["mode"] == mode and t["test"] == test]
            row[mode] = median([v for v in vals if v is not None])
        if row["hyperplane"] is None and row["kernel"] is None:
            continue
        row["ratio"] = ratio_of(row["hyperplane"], row["kernel"])
        out[test] = row
    return out
