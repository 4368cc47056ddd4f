"""``hyperplane top``: a live view of a running lab, refreshed every ``--interval`` seconds.

    hyperplane top [--name LAB] [--interval S] [--iterations N] [--sort bytes|packets]

Each refresh takes a snapshot (the daemon's ``counters``, ``conntrack`` and ``ping``) and
compares it with the previous one, the way ``top`` compares /proc between two reads:

* rates: packets/s and bytes/s per direction, overall and per ENI, from the engines' translated
  packet counters (a counter that went backwards means the data path restarted: the new value
  is then the whole delta, as Prometheus' ``rate()`` treats a reset);
* drops per reason with their rate (``unsolicited`` is the Hyperplane ENI refusing inbound
  packets that match no connection);
* connection-table and port-pool fill per ENI key and address;
* with more than one data path worker, per worker: packets received, forwarded and handed
  off per second, handoff drops, spills, connections and its port slices' fill
  (hyperplane.observe.workers);
* the top flows: connections sorted by bytes (or packets) moved since the previous refresh,
  from the per-connection counters conntrack keeps (``conntrack -L -o extended``'s
  packets=/bytes=), then by their totals.

The time between two snapshots is taken from the daemon's own clock (lab clock minus the
offset ``hyperplane clock --advance`` added), so the request round trip does not skew rates.
On a terminal the view is drawn with rich.live; otherwise each frame is printed as plain text
(a header line starting with ``----``, then the sections), like ``top -b``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from hyperplane.observe import stats, workers
from hyperplane.observe.stats import DIRECTIONS, Section

TOP_FLOWS = 15
DEFAULT_INTERVAL = 1.0


class Snapshot(NamedTuple):
    summary: Dict[str, Any]          #: stats.summarize(counters)
    entries: List[Dict[str, Any]]    #: the conntrack reply's entries
    ct_time: float                   #: the daemon's monotonic clock when it listed them
    uptime: Optional[float]          #: seconds since the data path started


# ---- pure computations ----------------------------------------------------------------------------
def _delta(a: float, b: float) -> float:
    """b - a for a counter; after a reset (b < a) the new value is the whole delta."""
    return b - a if b >= a else b


def _mono(summary: Dict[str, Any]) -> float:
    c = summary["clock"]
    return c["now"] - c["offset"]


def rates(prev: Dict[str, Any], cur: Dict[str, Any], dt: Optional[float] = None) -> Dict[str, Any]:
    """Per-second rates between two summaries (stats.summarize). ``dt`` defaults to the time
    between them on the daemon's clock. Returns {dt, packets {dir}, bytes {dir}, forwarded
    {dir}, connections_created, enis {id: {packets {dir}, bytes {dir}}}, drops {engine
    {reason}, datapath {reason}}}."""
    if dt is None:
        dt = _mono(cur) - _mono(prev)
    dt = dt if dt > 0 else 0.0
    per = (lambda a, b: _delta(a, b) / dt) if dt else (lambda a, b: 0.0)
    pt, ct = prev["totals"], cur["totals"]
    out: Dict[str, Any] = {
        "dt": dt,
        "packets": {d: per(pt["packets"][d], ct["packets"][d]) for d in DIRECTIONS},
        "bytes": {d: per(pt["bytes"][d], ct["bytes"][d]) for d in DIRECTIONS},
        "forwarded": {d: per(pt["forwarded_packets"][d], ct["forwarded_packets"][d])
                      for d in DIRECTIONS},
        "connections_created": per(pt["connections_created"], ct["connections_created"]),
    }
    before = {e["id"]: e for e in prev["enis"]}
    zero = {"packets": {d: 0 for d in DIRECTIONS}, "bytes": {d: 0 for d in DIRECTIONS}}
    out["enis"] = {e["id"]: {w: {d: per(before.get(e["id"], zero)[w][d], e[w][d])
                                 for d in DIRECTIONS} for w in ("packets", "bytes")}
                   for e in cur["enis"]}
    out["drops"] = {layer: {r: per(prev["drops"][layer].get(r, 0), n)
                            for r, n in cur["drops"][layer].items()}
                    for layer in ("engine", "datapath")}
    return out


def flow_key(e: Dict[str, Any]) -> Tuple:
    """A connection's identity across refreshes: its table and orig tuple (the reply tuple is
    determined by them)."""
    o = e["orig"]
    return (e.get("nat_gateway") or e.get("eni_id") or e.get("eni"), e["proto"], e["family"],
            o["src"], o["sport"], o["dst"], o["dport"])


def top_flows(prev: List[Dict[str, Any]], cur: List[Dict[str, Any]], dt: float,
              by: str = "bytes", n: int = TOP_FLOWS) -> List[Dict[str, Any]]:
    """The ``n`` connections of ``cur`` that moved the most ``by`` ("bytes" or "packets")
    since ``prev`` (ties: the larger total first). A connection not in ``prev`` counts from
    zero. Each is the entry plus ``packets``/``bytes`` (both directions, total),
    ``d_packets``/``d_bytes`` (since prev) and ``packets_rate``/``bytes_rate`` (per second)."""
    if by not in ("bytes", "packets"):
        raise ValueError(f"sort by 'bytes' or 'packets', not {by!r}")
    old = {flow_key(e): e for e in prev}
    out = []
    for e in cur:
        p = old.get(flow_key(e))
        row = dict(e)
        for w in ("packets", "bytes"):
            total = e[f"{w}_orig"] + e[f"{w}_reply"]
            before = (p[f"{w}_orig"] + p[f"{w}_reply"]) if p else 0
            row[w] = total
            row[f"d_{w}"] = _delta(before, total)
            row[f"{w}_rate"] = row[f"d_{w}"] / dt if dt > 0 else 0.0
        out.append(row)
    out.sort(key=lambda r: (r[f"d_{by}"], r[by]), reverse=True)
    return out[:n]


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.2 M' + unit (decimal prefixes, as network rates are usually given)."""
    for p in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or p == "T":
            num = f"{n:.0f}" if p == "" and n == int(n) else f"{n:.1f}"
            return f"{num} {p}{unit}".rstrip()
        n /= 1000.0
    return str(n)  # not reached


def bar(pct: float, width: int = 20) -> str:
    """'[####----------------]': a fill bar; any use at all shows at least one mark."""
    k = min(width, max(0, round(pct / 100.0 * width)))
    if pct > 0 and k == 0:
        k = 1
    return "[" + "#" * k + "-" * (width - k) + "]"


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def uptime_text(s: Optional[float]) -> str:
    if s is None:
        return "?"
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h}:{m:02d}:{s:02d}"


def frame_head(lab: str, snap: Snapshot, interval: float, frame: int,
               wall: Optional[float] = None) -> str:
    c = snap.summary["clock"]
    clock = time.strftime("%H:%M:%S", time.localtime(wall if wall is not None else time.time()))
    adv = f"  lab clock +{c['offset']:g} s" if c["offset"] else ""
    return (f"hyperplane top - lab {lab}  {clock}  uptime {uptime_text(snap.uptime)}{adv}  "
            f"every {interval:g} s  frame {frame}")


def frame_sections(prev: Snapshot, cur: Snapshot, by: str = "bytes",
                   n: int = TOP_FLOWS) -> List[Section]:
    """One refresh of the view, from two snapshots."""
    s = cur.summary
    r = rates(prev.summary, s)
    rows = [["all", d, f"{human(r['packets'][d])}/s", human(r["bytes"][d], "B/s"),
             str(s["totals"]["packets"][d]), str(s["totals"]["bytes"][d])] for d in DIRECTIONS]
    for e in s["enis"]:
        er = r["enis"].get(e["id"])
        for d in DIRECTIONS:
            rows.append([e["id"], d, f"{human(er['packets'][d])}/s",
                         human(er["bytes"][d], "B/s"), str(e["packets"][d]), str(e["bytes"][d])])
    out = [Section("rates", ["ENI", "DIRECTION", "PACKETS/S", "BYTES/S", "PACKETS", "BYTES"],
                   rows)]
    drops = [[layer, reason, str(total), f"{human(r['drops'][layer].get(reason, 0.0))}/s"]
             for layer, reason, total in stats.nonzero_drops(s)]
    out.append(Section("drops", ["LAYER", "REASON", "TOTAL", "PER SECOND"], drops,
                       empty="none"))
    out.append(Section(
        "tables", ["TABLE", "CONNECTIONS", "CAPACITY", "FILL", "NEW/S"],
        [[k["key"], str(k["connections"]), str(k["capacity"]), stats._pct(k["percent"]),
          f"{human(_created_rate(prev.summary, k, r['dt']))}/s"] for k in s["keys"]]
        + [[f"nat {g['id']}", str(g["connections"]), str(g["capacity"]),
            stats._pct(g["percent"]), f"{human(_created_rate(prev.summary, g, r['dt']))}/s"]
           for g in s["nat_gateways"]]))
    out.append(Section(
        "port pools", ["ENI", "ADDRESS", "PROTO", "USED", "SIZE", "FILL", ""],
        [[p["eni"] if p["enabled"] else f"{p['eni']} (no new)", p["address"], p["proto"],
          str(p["used"]), str(p["size"]), stats._pct(p["percent"]), bar(p["percent"])]
         for p in s["pools"]]))
    out += [Section(*w) for w in [workers.top_section(prev.summary, s, r["dt"], human)]
            if w is not None]
    dt = cur.ct_time - prev.ct_time
    flows = top_flows(prev.entries, cur.entries, dt, by=by, n=n)
    out.append(Section(
        f"top flows by {by} (of {len(cur.entries)})",
        ["PROTO", "ORIG", "NAT SOURCE", "STATE", "ENI", "PACKETS/S", "BYTES/S", "PACKETS",
         "BYTES"],
        [[f["proto"], f"{_ep(f['orig']['src'], f['orig']['sport'])} -> "
                      f"{_ep(f['orig']['dst'], f['orig']['dport'])}",
          _ep(f["reply"]["dst"], f["reply"]["dport"]), f["state"],
          f.get("nat_gateway") or f.get("eni_id") or f.get("eni", "-"),
          f"{human(f['packets_rate'])}/s", human(f["bytes_rate"], "B/s"), str(f["packets"]),
          str(f["bytes"])] for f in flows],
        empty="no connections"))
    return out


def frame_json(lab: str, prev: Snapshot, cur: Snapshot, interval: float, frame: int,
               by: str = "bytes", n: int = TOP_FLOWS) -> Dict[str, Any]:
    """One refresh as data (``top --json``, one line per refresh): what :func:`frame_sections`
    shows, unformatted: the summary's totals, ENIs, tables and pools, :func:`rates`, the
    non-zero drops and the top flows; with more than one worker also ``workers``
    (workers.worker_rates)."""
    s = cur.summary
    r = rates(prev.summary, s)
    extra = ({"workers": workers.worker_rates(prev.summary, s, r["dt"])}
             if workers.shown(s) else {})
    return {
        "lab": lab, "frame": frame, "interval": interval, "time": time.time(),
        "uptime": cur.uptime, "clock_offset": s["clock"]["offset"], "sort": by,
        "totals": s["totals"], "rates": r,
        "drops": [{"layer": layer, "reason": reason, "total": total,
                   "per_second": r["drops"][layer].get(reason, 0.0)}
                  for layer, reason, total in stats.nonzero_drops(s)],
        "tables": [{**t, "created_per_second": _created_rate(prev.summary, t, r["dt"])}
                   for t in s["keys"] + s["nat_gateways"]],
        "pools": s["pools"], "connections": len(cur.entries),
        "top_flows": top_flows(prev.entries, cur.entries, cur.ct_time - prev.ct_time, by=by,
                               n=n),
        **extra,
    }


def _created_rate(prev: Dict[str, Any], table: Dict[str, Any], dt: float) -> float:
    key = "key" if "key" in table else "id"
    before = next((t for t in prev["keys"] + prev["nat_gateways"] if t.get(key) == table[key]),
                  None)
    if before is None or dt <= 0:
        return 0.0
    return _delta(before["connections_created"], table["connections_created"]) / dt


# ---- taking snapshots ---------------------------------------------------------------------------
def snapshot(request: Callable[..., Dict[str, Any]], lab: str) -> Snapshot:
    """One look at a running lab through ``request(cmd, **args)`` (the lab's control
    requests): its counters summed up, its connection table, the data path's clocks."""
    c = request("counters")
    ct = request("conntrack")
    ping = request("ping")
    summary = stats.summarize(c, lab)
    return Snapshot(summary, ct["entries"], float(ct["now"]) - summary["clock"]["offset"],
                    ping.get("uptime"))
