"""From trials to figures and verdicts: loss, the loss-free search (RFC 2544's throughput), the
mode order (:func:`rotation`, ABBA for two), medians, ratios, the per-metric summary, the
verdicts of the issues' "Done means" and the overload shares. These are plain functions
without I/O, unit-tested with fake measurements. Then what the figures were measured on and
what they cost: :func:`machine` and :func:`cpu_times` read /proc, :func:`cpu_cost` turns the
trials' readings into CPU seconds per GB.
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
    COLUMNS, CPU_COST_TARGET, FOUR_STREAM_TARGET, METRICS, OVERLOAD_LOAD, OVERLOAD_TARGET,
    OVS_RATIO_TARGET, RATIO_PAIRS, RATIO_TARGET, REACHED, TAP_TARGET, TESTS, WORKERS_TARGET,
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


def rotation(modes: Sequence[str], repeats: int) -> List[Tuple[str, ...]]:
    """The mode order of each repeat, so a drift over time favours no mode: for two modes
    ABBA (A B | B A | A B ...); for more, repeat r takes the modes rotated by r // 2 places,
    reversed on odd repeats (three modes: ABC, CBA, BCA, ACB, CAB, BAC: every mode in every
    position twice in six repeats, and each repeat's last mode first in the next)."""
    modes = tuple(modes)
    n = len(modes)
    if n <= 2:
        return [modes if r % 2 == 0 else modes[::-1] for r in range(repeats)]
    out = []
    for r in range(repeats):
        k = (r // 2) % n
        order = modes[k:] + modes[:k]
        out.append(order[::-1] if r % 2 else order)
    return out


def abba(repeats: int) -> List[Tuple[str, ...]]:
    """:func:`rotation` of hyperplane and kernel: hyperplane first, then kernel first, ..."""
    return rotation(("hyperplane", "kernel"), repeats)


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def ratio_of(h: Optional[float], k: Optional[float]) -> Optional[float]:
    """hyperplane's figure over the kernel's; None when either is missing or the kernel's is 0
    (also used by benchmarks/e2e_scaling.py)."""
    if h is None or k is None or k == 0:
        return None
    return h / k


def column_order(names) -> List[str]:
    """Result columns in COLUMNS order (unknown names last, as given)."""
    names = list(names)
    return [c for c in COLUMNS if c in names] + [c for c in names if c not in COLUMNS]


def pair_ratios(medians: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """The ratios of RATIO_PAIRS whose two columns were measured: ``hyperplane/kernel``,
    ``hyperplane/ovs``, ``tap/veth`` (hyperplane through a TAP over through a veth) and
    ``w2/w1`` (two data path workers over one)."""
    return {name: ratio_of(medians[a], medians[b]) for name, (a, b) in RATIO_PAIRS.items()
            if a in medians and b in medians}


def summarize(figures: Dict[str, Dict[str, List[float]]]) -> Dict[str, Dict[str, Any]]:
    """``figures[column][metric]`` = one value per repeat -> per metric: unit, which way is
    better, each column's median/min/max/values, ``ratios`` (:func:`pair_ratios`) and
    ``ratio``, the hyperplane/kernel one (None when a side is missing or its median is 0).
    Metrics in METRICS order, columns in COLUMNS order."""
    out: Dict[str, Dict[str, Any]] = {}
    cols = column_order(figures)
    for metric, (unit, higher, what) in METRICS.items():
        per = {m: list(figures.get(m, {}).get(metric, [])) for m in cols}
        if not any(per.values()):
            continue
        row: Dict[str, Any] = {"unit": unit, "better": "higher" if higher else "lower",
                               "what": what}
        for m in cols:
            v = per[m]
            row[m] = {"median": median(v), "min": min(v) if v else None,
                      "max": max(v) if v else None, "values": v}
        row["ratios"] = pair_ratios({m: row[m]["median"] for m in cols})
        row["ratio"] = row["ratios"].get("hyperplane/kernel")
        out[metric] = row
    return out


def verdicts(summary: Dict[str, Dict[str, Any]],
             overload_fraction: Optional[float] = None,
             overload_load: Optional[float] = None,
             cost: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """The issues' "Done means", for what was measured (a check whose columns or metrics did
    not run is left out):

    - hyperplane/kernel >= 1.0 on one TCP stream (IPv4, IPv6), the loss-free UDP rate and the
      connection rate; rr p50 at most the kernel's; four streams >= 0.85 (the copy limit) at a
      whole-machine CPU cost per GB (``cost``, :func:`cpu_cost`) at most 1.5x the kernel's;
    - hyperplane/OVS >= 2.0 on one TCP stream (IPv4, IPv6), loss-free UDP and connection
      rate, and rr p50 and p99 at most half of OVS's;
    - tap/veth >= 0.95 on one TCP stream (IPv4), loss-free UDP and connection rate;
    - w2/w1 >= 1.0 on four TCP streams (IPv4, IPv6) and the connection rate, the tests with
      flows for two workers to split (one stream or one UDP flow is one worker's);
    - hyperplane delivering >= 90 % of its loss-free rate under twice that load
      (``overload_fraction``: its median delivered / its median loss-free rate), shown only
      when the sender really offered twice the load: ``overload_load`` is the median rate
      hyperplane's sender reached over its loss-free rate, and below ``2 x REACHED`` the
      verdict misses with a ``why`` (a generator that cannot offer the load proves nothing).

    Each verdict: ``name``, ``metrics``, ``value`` (the worst of them), ``target``,
    ``at_most`` (the value must not exceed the target) and ``meets``."""
    out: List[Dict[str, Any]] = []

    def check(name: str, pair: str, metrics: List[str], target: float,
              at_most: bool = False) -> None:
        ratios = [summary[m].get("ratios", {}).get(pair, False) for m in metrics
                  if m in summary]
        if not ratios or any(r is False for r in ratios):
            return          # not measured (or that pair's columns did not run)
        worst = None if any(r is None for r in ratios) else (max if at_most else min)(ratios)
        out.append({"name": f"{name} ({pair})", "metrics": [m for m in metrics if m in summary],
                    "value": worst, "target": target, "kind": "ratio", "at_most": at_most,
                    "meets": worst is not None and (worst <= target if at_most
                                                    else worst >= target)})

    k, o, t = "hyperplane/kernel", "hyperplane/ovs", "tap/veth"
    check("TCP one stream IPv4", k, ["tcp4-1"], RATIO_TARGET)
    check("TCP one stream IPv6", k, ["tcp6-1"], RATIO_TARGET)
    check("loss-free 64-byte UDP rate", k, ["udp64"], RATIO_TARGET)
    check("connection rate", k, ["conn"], RATIO_TARGET)
    check("request/response p50", k, ["rr-p50"], RATIO_TARGET, at_most=True)
    check("TCP four streams", k, ["tcp4-4", "tcp6-4"], FOUR_STREAM_TARGET)
    if cost:
        rows = [cost[test] for test in ("tcp4-4", "tcp6-4") if test in cost]
        vals = [r.get("ratios", {}).get(k, False) for r in rows]
        if vals and not any(v is False for v in vals):
            worst = None if any(v is None for v in vals) else max(vals)
            out.append({"name": f"CPU cost per GB, four streams ({k})",
                        "metrics": [x for x in ("tcp4-4", "tcp6-4") if x in cost],
                        "value": worst, "target": CPU_COST_TARGET, "kind": "ratio",
                        "at_most": True,
                        "meets": worst is not None and worst <= CPU_COST_TARGET})
    check("TCP one stream IPv4", o, ["tcp4-1"], OVS_RATIO_TARGET)
    check("TCP one stream IPv6", o, ["tcp6-1"], OVS_RATIO_TARGET)
    check("loss-free 64-byte UDP rate", o, ["udp64"], OVS_RATIO_TARGET)
    check("connection rate", o, ["conn"], OVS_RATIO_TARGET)
    check("request/response p50 and p99", o, ["rr-p50", "rr-p99"], 1 / OVS_RATIO_TARGET,
          at_most=True)
    check("TCP one stream IPv4, loss-free UDP, connection rate", t,
          ["tcp4-1", "udp64", "conn"], TAP_TARGET)
    check("TCP four streams and connection rate", "w2/w1", ["tcp4-4", "tcp6-4", "conn"],
          WORKERS_TARGET)
    if "udp64-overload" in summary:
        offered = overload_load is not None and overload_load >= OVERLOAD_LOAD * REACHED
        v = {"name": "hyperplane under 2x loss-free UDP load (share of its loss-free "
                     "rate delivered; no livelock)",
             "metrics": ["udp64-overload"], "value": overload_fraction,
             "target": OVERLOAD_TARGET, "kind": "fraction", "at_most": False,
             "load": overload_load,
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
    """Per column: median delivered under overload / median loss-free rate."""
    out: Dict[str, Optional[float]] = {}
    if "udp64-overload" in summary and "udp64" in summary:
        for m in column_order(c for c in summary["udp64"] if isinstance(summary["udp64"][c], dict)
                              and "median" in summary["udp64"][c]):
            if m in summary["udp64-overload"]:
                out[m] = ratio_of(summary["udp64-overload"][m]["median"],
                                  summary["udp64"][m]["median"])
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


def cpu_cost(trials: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per TCP test and column, the median CPU seconds the whole machine spent per GB moved
    (``cpu_s_per_gbyte`` of the trials), ``ratios`` (:func:`pair_ratios`) and ``ratio`` (the
    hyperplane/kernel one): what the throughput ratios do not show when a mode is held back
    by something else than CPU."""
    out: Dict[str, Dict[str, Any]] = {}
    cols = column_order({t["mode"] for t in trials})
    for test in TESTS:
        if not test.startswith("tcp"):
            continue
        row: Dict[str, Any] = {}
        for mode in cols:
            vals = [t["raw"].get("cpu_s_per_gbyte") for t in trials
                    if t["mode"] == mode and t["test"] == test]
            row[mode] = median([v for v in vals if v is not None])
        if all(v is None for v in row.values()):
            continue
        row["ratios"] = pair_ratios({m: row[m] for m in cols})
        row["ratio"] = row["ratios"].get("hyperplane/kernel")
        out[test] = row
    return out
