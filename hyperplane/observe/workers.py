"""Per-worker figures for ``hyperplane stats`` and ``hyperplane top`` (issue 19).

With ``[datapath] workers = N`` (docs/scaling.md) the data path runs N loop threads, each with
its engine shard owning the ports (p >> 1) % N == its index of every ENI. The daemon's ``counters``
reply carries ``workers``: one row per worker (hyperplane.datapath.workers.worker_rows) with
``worker, cpu, rx_packets, forwarded_outbound, forwarded_inbound, handoff_out, handoff_in,
handoff_full, spilled, connections, translated_outbound, translated_inbound, engine_drops,
pools`` (``pools``: ``eni, family, proto, used, size`` of that worker's slice of each pool).
``stats --json`` passes the rows through unchanged (stats.summarize's ``workers``).

The text views show them only when there is more than one worker (one worker is the whole
data path, which the other sections already describe):

* ``stats``: a ``workers`` section, one row per worker: packets received, forwarded out and
  in, handed off to another worker and received from one, handoffs dropped because the ring
  to the other worker was full, new connections spilled to another worker's slice,
  connections, engine drops, and its port slices compact: the ports in use over the slices'
  size summed over every ENI, family and protocol, and the fullest slice;
* ``top``: the same per worker as rates between two refreshes (:func:`worker_rates`).

Pure functions on plain dicts, so tests feed them hand-made rows. The sections are returned
as (title, header, rows) for stats.Section: this module imports nothing of stats, which
imports it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

#: A section as stats.Section takes it: (title, header, rows).
Parts = Tuple[str, List[str], List[List[str]]]

#: The counters a worker's rates are taken of (top), in the order shown.
RATE_FIELDS = ("rx_packets", "forwarded_outbound", "forwarded_inbound", "handoff_out",
               "handoff_in", "handoff_full", "spilled")


def percent(used: int, size: int) -> float:
    """As stats.percent: ``used`` of ``size`` in per cent (0 for an empty size)."""
    return round(100.0 * used / size, 6) if size else 0.0


def _pct(p: float) -> str:
    """As stats' fill cells: "0.015%" below 0.1 %, else one decimal."""
    return f"{p:.2g}%" if 0 < p < 0.1 else f"{p:.1f}%"


def rows_of(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The per-worker rows of a stats summary (empty when the daemon sent none)."""
    return list(summary.get("workers") or [])


def shown(summary: Dict[str, Any]) -> bool:
    """Whether the text views show per-worker rows: only with more than one worker."""
    return len(rows_of(summary)) > 1


def slice_fill(row: Dict[str, Any]) -> Dict[str, Any]:
    """A worker's port slices, compact: ``used`` and ``size`` summed over every ENI, family
    and protocol, their ``percent``, and the ``fullest`` slice (the pool row with the highest
    used/size; None without pools)."""
    pools = list(row.get("pools") or [])
    used = sum(int(p.get("used", 0)) for p in pools)
    size = sum(int(p.get("size", 0)) for p in pools)
    fullest = max(pools, key=lambda p: (percent(p.get("used", 0), p.get("size", 0)),
                                        int(p.get("used", 0))), default=None)
    return {"used": used, "size": size, "percent": percent(used, size), "fullest": fullest}


def _slice_name(p: Optional[Dict[str, Any]]) -> str:
    if not p:
        return "-"
    return (f"{p.get('eni', '?')} ipv{p.get('family', '?')}/{p.get('proto', '?')} "
            f"{int(p.get('used', 0))}/{int(p.get('size', 0))}")


def _cpu(row: Dict[str, Any]) -> str:
    return "any" if row.get("cpu") is None else str(row["cpu"])


def stats_section(summary: Dict[str, Any]) -> Optional[Parts]:
    """``stats``' workers section, or None with one worker (today's output unchanged)."""
    if not shown(summary):
        return None
    rows = []
    for w in rows_of(summary):
        f = slice_fill(w)
        rows.append([str(w.get("worker", "?")), _cpu(w)]
                    + [str(int(w.get(k, 0))) for k in RATE_FIELDS]
                    + [str(int(w.get("connections", 0))), str(int(w.get("engine_drops", 0))),
                       f"{f['used']}/{f['size']}", _pct(f["percent"]),
                       _slice_name(f["fullest"])])
    return ("workers", ["WORKER", "CPU", "RX PACKETS", "FWD OUT", "FWD IN", "HANDOFF OUT",
                        "HANDOFF IN", "HANDOFF DROPS", "SPILLED", "CONNECTIONS",
                        "ENGINE DROPS", "PORTS", "FILL", "FULLEST SLICE"], rows)


def _delta(a: float, b: float) -> float:
    """b - a for a counter; after a reset (b < a) the new value is the whole delta."""
    return b - a if b >= a else b


def worker_rates(prev: Dict[str, Any], cur: Dict[str, Any], dt: float) -> List[Dict[str, Any]]:
    """Per worker of ``cur`` (a stats summary), the per-second rate of each of
    :data:`RATE_FIELDS` since ``prev`` (a worker not in ``prev`` counts from zero; ``dt`` <= 0
    gives zeros), plus its ``worker``, ``cpu``, ``connections`` and :func:`slice_fill`."""
    before = {w.get("worker"): w for w in rows_of(prev)}
    out = []
    for w in rows_of(cur):
        p = before.get(w.get("worker"), {})
        row: Dict[str, Any] = {"worker": w.get("worker"), "cpu": w.get("cpu"),
                               "connections": int(w.get("connections", 0)),
                               "handoff_full": int(w.get("handoff_full", 0)),
                               "spilled": int(w.get("spilled", 0))}
        for k in RATE_FIELDS:
            d = _delta(float(p.get(k, 0)), float(w.get(k, 0)))
            row[f"{k}_per_second"] = d / dt if dt > 0 else 0.0
        f = slice_fill(w)
        row["ports"] = {"used": f["used"], "size": f["size"], "percent": f["percent"]}
        out.append(row)
    return out


def top_section(prev: Dict[str, Any], cur: Dict[str, Any], dt: float,
                human) -> Optional[Parts]:
    """``top``'s workers section (rates like its other rates; ``human`` formats a number),
    or None with one worker."""
    if not shown(cur):
        return None
    rows = []
    for r in worker_rates(prev, cur, dt):
        rate = lambda k: f"{human(r[f'{k}_per_second'])}/s"  # noqa: E731
        rows.append([str(r["worker"]), _cpu(r), rate("rx_packets"),
                     rate("forwarded_outbound"), rate("forwarded_inbound"),
                     rate("handoff_out"), rate("handoff_in"), rate("handoff_full"),
                     str(r["handoff_full"]), str(r["spilled"]), str(r["connections"]),
                     f"{r['ports']['used']}/{r['ports']['size']}",
                     _pct(r["ports"]["percent"])])
    return ("workers", ["WORKER", "CPU", "RX/S", "OUT/S", "IN/S", "HANDOFF OUT/S",
                        "HANDOFF IN/S", "HANDOFF DROPS/S", "HANDOFF DROPS", "SPILLED",
                        "CONNECTIONS", "PORTS", "FILL"], rows)
