"""The report of a run: the ``--json`` document (:func:`report_json`), the summary as a rich table
with the verdict lines (:func:`print_table`, its cells :func:`cell` and figures
:func:`format_value`), and the ``--plot`` PNG (:func:`plot`).
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
from typing import Any, Dict, List, Optional

from hyperplane.bench.analysis import (
    column_order, cpu_cost, machine, overload_fractions, overload_load, summarize, verdicts,
)
from hyperplane.bench.settings import OVERLOAD_TARGET, RATIO_PAIRS, BenchError, Settings


#: The ratio columns' headers.
SHORT = {"hyperplane/kernel": "h/k", "hyperplane/ovs": "h/ovs"}


def report_json(settings: Settings, trials: List[Dict[str, Any]],
                figures: Dict[str, Dict[str, List[float]]], *,
                machine_info: Optional[Dict[str, Any]] = None,
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``--json`` document: machine, settings, every trial's raw figures, and per metric
    the medians, spreads and ratios (``ratios``: hyperplane/kernel per metric, as before OVS
    mode; ``pair_ratios``: every measured pair per metric), then the verdicts."""
    summary = summarize(figures)
    fractions = overload_fractions(summary)
    load = overload_load(trials, summary)
    cost = cpu_cost(trials)
    doc = {
        "machine": machine_info if machine_info is not None else machine(),
        "settings": dataclasses.asdict(settings),
        "trials": trials,
        "figures": figures,
        "summary": summary,
        "columns": column_order(figures),
        "ratios": {m: row["ratio"] for m, row in summary.items()},
        "pair_ratios": {m: row["ratios"] for m, row in summary.items()},
        "overload_fraction": fractions,
        "overload_load": load,
        "verdicts": verdicts(summary, fractions.get("hyperplane"), load, cost),
        "cpu_cost": cost,
    }
    doc.update(extra or {})
    return doc


def format_value(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("Gbit/s", "%"):
        return f"{value:.2f}"
    if unit == "us":
        return f"{value:.1f}"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def _num(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def cell(side: Dict[str, Any], unit: str) -> str:
    """One mode's summary as a table cell: "median [min-max]" (just the value for one)."""
    if side["median"] is None:
        return "-"
    if len(side["values"]) == 1:
        return format_value(side["median"], unit)
    return (f"{format_value(side['median'], unit)} "
            f"[{format_value(side['min'], unit)}-{format_value(side['max'], unit)}]")


def print_table(doc: Dict[str, Any], out=None) -> None:
    """The summary as a rich table, then the verdict lines."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = out or sys.stdout
    width = shutil.get_terminal_size().columns if out.isatty() else 200
    console = Console(file=out, width=max(100, width))
    m = doc["machine"]
    s = doc["settings"]
    t = Table(title=escape(f"hyperplane bench: {m.get('cpu')} x{m.get('nproc')}, Linux "
                           f"{m.get('kernel')}; {s['repeats']} repeat(s), {s['seconds']:g} s "
                           "trials, median [min-max]"))
    cols = doc.get("columns") or column_order(doc["figures"])
    pairs = [p for p in RATIO_PAIRS if any(p in row.get("ratios", {})
                                           for row in doc["summary"].values())]
    for col, just in ([("test", "left"), ("unit", "left")] + [(c, "right") for c in cols]
                      + [(f"ratio {SHORT.get(p, p)}", "right") for p in pairs]
                      + [("better", "left")]):
        t.add_column(col, justify=just, no_wrap=True)
    fr = doc.get("overload_fraction") or {}
    for metric, row in doc["summary"].items():
        cells = [cell(row[mode], row["unit"]) if mode in row else "-" for mode in cols]
        ratios = [_num(row.get("ratios", {}).get(p)) for p in pairs]
        t.add_row(*(escape(c) for c in (metric, row["unit"], *cells, *ratios, row["better"])))
        if metric == "udp64-overload":
            t.add_row(*(escape(c) for c in (
                "  / own loss-free", "share",
                *("-" if fr.get(mode) is None else f"{fr[mode]:.2f}" for mode in cols),
                *("" for _ in pairs), f"hyperplane >= {OVERLOAD_TARGET:.2f}")))
    console.print(t)
    if s.get("tests") and "udp64" in s["tests"]:
        console.print(f"loss-free = delivered >= (1 - {s['loss_tolerance']:g}) x sent "
                      "(RFC 2544 asks for zero loss; a shared VM drops the odd packet)",
                      soft_wrap=True)
    for v in doc["verdicts"]:
        value = "-" if v["value"] is None else f"{v['value']:.2f}"
        if v["value"] is not None and not v["meets"] and value == f"{v['target']:.2f}":
            value = f"{v['value']:.4f}"   # a miss that would print as the target itself
        word = "meets" if v["meets"] else "misses"
        why = f"; {v['why']}" if v.get("why") else ""
        sign = "<=" if v.get("at_most") else ">="
        console.print(escape(f"{word}: {v['name']} = {value} (target {sign} {v['target']:.2f}"
                             f"{why})"), soft_wrap=True)
    cost = doc.get("cpu_cost") or {}
    if cost:
        console.print("CPU cost, whole machine (CPU seconds per GB moved, median; lower is "
                      "better): " + "; ".join(
                          f"{test} " + " vs ".join(f"{c} {_num(r.get(c))}" for c in cols
                                                   if c in r)
                          + "".join(f" ({p} x{_num(x)})" for p, x in r.get("ratios", {}).items())
                          for test, r in cost.items()),
                      soft_wrap=True)


def plot(doc: Dict[str, Any], path: str) -> None:
    """A PNG: the ratios per metric (one bar per measured pair, a line at 1.0), then each
    metric's medians per column with min-max error bars."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'hyperplane[bench]'") from None
    summary = doc["summary"]
    metrics = list(summary)
    if not metrics:
        raise BenchError("--plot: nothing was measured")
    ncols = min(4, len(metrics))
    nrows = 1 + (len(metrics) + ncols - 1) // ncols
    fig = plt.figure(figsize=(3.2 * ncols + 1, 3.0 * nrows + 0.6))
    grid = fig.add_gridspec(nrows, ncols)
    ax = fig.add_subplot(grid[0, :])
    cols = doc.get("columns") or column_order(doc["figures"])
    pairs = [p for p in RATIO_PAIRS if any(p in summary[m].get("ratios", {}) for m in metrics)]
    width = 0.8 / max(1, len(pairs))
    shown = []
    for j, pair in enumerate(pairs):
        ratios = [summary[m].get("ratios", {}).get(pair) or 0.0 for m in metrics]
        shown += [r for r in ratios if r > 0]
        xs = [i + (j - (len(pairs) - 1) / 2) * width for i in range(len(metrics))]
        ax.bar(xs, ratios, width=width, label=pair)
        for x, r in zip(xs, ratios):
            ax.annotate(f"{r:.2f}", (x, r), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    if shown and max(shown) / min(shown) > 4:   # one outlier would flatten the rest
        ax.set_yscale("log", base=2)
        from matplotlib.ticker import FuncFormatter
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("ratio of medians")
    ax.legend(fontsize=8)
    ax.set_title("ratios of medians (rr: lower is better; the rest: higher is better)",
                 fontsize=10)
    palette = {"hyperplane": "tab:blue", "hyperplane-tap": "tab:cyan", "kernel": "tab:gray",
               "hyperplane-w2": "tab:purple",
               "ovs": "tab:orange"}
    for i, metric in enumerate(metrics):
        row = summary[metric]
        a = fig.add_subplot(grid[1 + i // ncols, i % ncols])
        here = [c for c in cols if c in row]
        meds = [row[m]["median"] or 0.0 for m in here]
        err = [[max(0.0, (row[m]["median"] or 0.0) - (row[m]["min"] or 0.0)) for m in here],
               [max(0.0, (row[m]["max"] or 0.0) - (row[m]["median"] or 0.0)) for m in here]]
        a.bar(here, meds, yerr=err, capsize=4, color=[palette.get(m, "tab:purple") for m in here])
        a.set_title(f"{metric} ({row['unit']}, {row['better']} is better)", fontsize=9)
        a.tick_params(labelsize=7)
    m = doc["machine"]
    s = doc["settings"]
    fig.suptitle(f"hyperplane bench ({', '.join(cols)}): {m.get('cpu')} x{m.get('nproc')}, "
                 f"Linux {m.get('kernel')}, {m.get('date', '')[:10]}; {s['repeats']} repeat(s) "
                 f"of {s['seconds']:g} s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
