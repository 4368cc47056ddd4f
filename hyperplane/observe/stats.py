"""``hyperplane stats`` and ``hyperplane metrics``: the data path's counters, summed up.

    hyperplane stats [--name LAB] [--json]
    hyperplane metrics [--name LAB] [--listen 127.0.0.1:9469] [--once]

Both read the daemon's ``counters`` reply (hyperplane.datapath.daemon.Daemon.counters) and nothing else.
What the numbers mean, layer by layer:

* The **data path** (csrc/hp_dp.c) moves frames between links. ``forwarded_outbound`` counts
  packets it sent from an execution environment into the VPC, ``forwarded_inbound`` the other
  way. Its own drop reasons (``no_route``, ``function_pending``, ...) are packets it refused
  before or after asking an engine; the reason ``engine`` means "the engine dropped it", and
  the engine's own counter says why: the summary lists the engine reasons instead, so every
  dropped packet is counted once.
* An **engine** is one connection table: one per ENI key (subnet, security groups), holding
  one address per scale-out ENI of that key, and one per NAT gateway. Like the kernel's
  nf_conntrack it counts translated packets and bytes per direction (IP length: what
  ``conntrack -L -o extended`` would show as ``bytes=``), connections in the table against its
  capacity (``nf_conntrack_count`` / ``nf_conntrack_max``), and drops by reason. The most
  telling one is ``unsolicited``: an inbound packet that matches no connection's reply tuple,
  which AWS documents the Hyperplane ENI drops.
* A **port pool** is the set of source ports one ENI address hands out per protocol (the
  "65,000 connections/ports per ENI" of the AWS documentation). When every ENI of a key is
  out of ports, new connections are dropped as ``port_exhausted`` until scale-out adds an ENI.

The pure functions :func:`summarize` (counters -> the ``stats --json`` document),
:func:`sections` (summary -> text tables) and :func:`metric_families` (counters -> Prometheus
metric families) take plain dicts, so tests feed them hand-made counters.

JSON schema of ``stats --json`` (``"schema": 1``; counts are integers, percentages floats)::

    lab, clock {now, offset}
    totals {forwarded_packets {outbound, inbound}, packets {...}, bytes {...}, connections,
            capacity, connections_created, connections_expired, dropped, rst_sent,
            rst_withheld_fragment (a first fragment without ACK: no RST, hp_dp_rst.c)}
    enis[]  {id, key, nat_gateway, live, packets {outbound, inbound}, bytes {...}}
    keys[]  {key, subnet, security_groups[], eni_ids[], live_eni_ids[], connections, capacity,
             percent, connections_created, connections_expired, packets {...}, bytes {...},
             drops {reason: n}, events_lost}
    nat_gateways[]  {id, eni_ids[], connections, capacity, percent, ... as keys[]}
    pools[] {eni, key, nat_gateway, address, family, proto, used, size, percent, enabled}
    drops   {engine {reason: n} (summed over all tables), datapath {reason: n} (its "engine"
             entry is the sum of the engine reasons, kept as the data path counts it)}
    links[] {name, role, kind, ifname, up, state, io ("packet ring", "io_uring" or "read/write":
             how the link moves packets), rx {packets, bytes, ring_drops},
             tx {packets, bytes, errors}, blocked}
    events {subscribers, sent, lost}, flow_logs {...} or null, control_plane {...}
    state {file (null: nothing is saved), restored (connections put back at start, or null),
           ignored (why a state file was not used, or null), down_for, final, expired,
           eni_mismatch, duplicate, table_full, invalid,
           saves {saved, failed, last_error, last_connections, last_seconds,
                  last_loop_seconds (how long the save held the forwarding loop)}}
    placement {placement ("auto" or "none"), loop_cpus[], inbound_cpus[] (empty: no inbound
               worker), ring_frames, function_cpus[], allowed_cpus[], workers (loop threads
               each owning a slice of every ENI's ports), worker_cpus[] (worker i's CPU; empty:
               one worker or unpinned), source {loop_cpus, inbound_cpus, ring_frames, workers,
               worker_cpus: "auto", "lab file" or "default"}} or null
    workers[] the daemon's per-worker rows, unchanged (hyperplane.observe.workers says what
              they hold; the text view shows them with more than one worker)

Every drop reason is present in JSON (zero or not); the text view hides the zero ones.

Prometheus (``hyperplane metrics``): a collector of its own asks the daemon on every scrape, in
a registry of its own (no process_*/python_* metrics: they would describe the exporter, not the
data path). It listens on loopback only: the endpoint has no authentication. Families::

    hyperplane_up                                    1 if the daemon answered this scrape
    hyperplane_lab_info{lab}                         1
    hyperplane_forwarded_packets_total{direction}    the data path
    hyperplane_packets_total{direction,eni}          translated, per ENI
    hyperplane_bytes_total{direction,eni}            IP bytes, per ENI
    hyperplane_drops_total{layer,reason}             layer engine|datapath, each drop once
    hyperplane_connections{key}, hyperplane_connections_capacity{key}
    hyperplane_new_connections_total{key}, hyperplane_expired_connections_total{key}
    hyperplane_nat_gateway_connections{nat_gateway} (+ _capacity)
    hyperplane_port_pool_used{eni,address,family,proto} (+ hyperplane_port_pool_size)
    hyperplane_link_packets_total / _bytes_total{link,role,direction=rx|tx}
    hyperplane_link_rx_ring_drops_total, _tx_errors_total, hyperplane_link_up {link,role}
    hyperplane_rst_sent_total, hyperplane_rst_withheld_fragment_total,
    hyperplane_events_subscribers, hyperplane_events_sent_total,
    hyperplane_events_lost_total, hyperplane_control_plane_<counter>_total,
    hyperplane_flow_logs_<stat>[_total], hyperplane_lab_clock_seconds (+ _offset_seconds)
"""
from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

from hyperplane.engine.constants import DropReason
from hyperplane.labconfig.model import DEFAULT_METRICS_LISTEN
from hyperplane.labconfig.parse_metrics import split_listen
from hyperplane.observe import workers

SCHEMA = 1
DEFAULT_LISTEN = DEFAULT_METRICS_LISTEN
DIRECTIONS = ("outbound", "inbound")
#: The data path's drop reason that only says "an engine dropped it" (the engine's counter
#: says why): left out of sums and metrics so no packet is counted twice.
DATAPATH_ENGINE_REASON = "engine"
ENGINE_REASONS = tuple(r.label for r in DropReason if r != DropReason.NONE)
#: Flow-log stats that are levels, not counts (metric name without the prefix); every other
#: number in FlowLogs.stats() only grows and is exported as a counter.
FLOW_LOG_GAUGES = {"interval": "interval_seconds", "interval_start": "interval_start_seconds",
                   "files": "files", "pending_flows": "pending_flows"}


# ---- counters -> summary ------------------------------------------------------------------------
def key_name(subnet: str, security_groups: Iterable[str]) -> str:
    """``subnet-a/sg-1+sg-2``: one ENI key (subnet, set of security groups) as one word."""
    return f"{subnet}/{'+'.join(sorted(security_groups)) or '-'}"


def percent(used: int, size: int) -> float:
    return round(100.0 * used / size, 6) if size else 0.0


def _pair(d: Dict[str, Any], what: str) -> Dict[str, int]:
    return {x: int(d.get(f"{what}_{x}", 0)) for x in DIRECTIONS}


def _table_summary(t: Dict[str, Any]) -> Dict[str, Any]:
    """What keys[] and nat_gateways[] share: one engine's table and traffic."""
    return {
        "eni_ids": list(t.get("eni_ids") or [c["eni"] for c in t.get("eni_counters", [])]),
        "connections": int(t.get("connections", 0)),
        "capacity": int(t.get("capacity", 0)),
        "percent": percent(t.get("connections", 0), t.get("capacity", 0)),
        "connections_created": int(t.get("connections_created", 0)),
        "connections_expired": int(t.get("connections_expired", 0)),
        "packets": _pair(t, "packets"),
        "bytes": _pair(t, "bytes"),
        "drops": {r: int(t.get("drops", {}).get(r, 0)) for r in
                  _ordered(ENGINE_REASONS, t.get("drops", {}))},
        "events_lost": int(t.get("events_lost", 0)),
        "icmp_errors_translated": int(t.get("icmp_errors_translated", 0)),
    }


def _ordered(known: Iterable[str], got: Dict[str, Any]) -> List[str]:
    """Known names in their order, then any the counters have that this module does not know."""
    known = list(known)
    return known + [k for k in got if k not in known]


def summarize(c: Dict[str, Any], lab: Optional[str] = None) -> Dict[str, Any]:
    """The ``counters`` reply -> the stable ``stats --json`` document (see the module doc)."""
    keys, nats, enis, pools = [], [], [], []
    for t in c.get("enis", []):
        subnet, sgs = t["key"][0], list(t["key"][1])
        name = key_name(subnet, sgs)
        live = set(t.get("live_eni_ids", []))
        keys.append({"key": name, "subnet": subnet, "security_groups": sgs,
                     "live_eni_ids": list(t.get("live_eni_ids", [])), **_table_summary(t)})
        for e in t.get("eni_counters", []):
            enis.append({"id": e["eni"], "key": name, "nat_gateway": None,
                         "live": e["eni"] in live, "packets": _pair(e, "packets"),
                         "bytes": _pair(e, "bytes")})
        for p in t.get("pool", []):
            pools.append(_pool(p, name, None))
    for t in c.get("nat_gateways", []):
        nats.append({"id": t["id"], **_table_summary(t)})
        for e in t.get("eni_counters", []):
            enis.append({"id": e["eni"], "key": None, "nat_gateway": t["id"], "live": True,
                         "packets": _pair(e, "packets"), "bytes": _pair(e, "bytes")})
        for p in t.get("pool", []):
            pools.append(_pool(p, None, t["id"]))
    tables = keys + nats
    engine_drops = {r: sum(t["drops"].get(r, 0) for t in tables)
                    for r in _ordered(ENGINE_REASONS, {r: 0 for t in tables for r in t["drops"]})}
    dp_drops = {k: int(v) for k, v in c.get("drops", {}).items()}
    links = [{"name": x.get("name"), "role": x.get("role"), "kind": x.get("kind"),
              "ifname": x.get("ifname"), "up": bool(x.get("up", True)), "state": x.get("state"),
              "io": x.get("io"),
              "rx": {"packets": int(x.get("rx_packets", 0)), "bytes": int(x.get("rx_bytes", 0)),
                     "ring_drops": int(x.get("rx_ring_drops", 0))},
              "tx": {"packets": int(x.get("tx_packets", 0)), "bytes": int(x.get("tx_bytes", 0)),
                     "errors": int(x.get("tx_errors", 0))},
              "blocked": int(x.get("blocked", 0)),
              "kernel_stack": x.get("kernel_stack"),
              "kernel_stack_by": x.get("kernel_stack_by")} for x in c.get("links", [])]
    total = lambda f: sum(t[f] for t in tables)  # noqa: E731
    totals = {
        "forwarded_packets": {"outbound": int(c.get("forwarded_outbound", 0)),
                              "inbound": int(c.get("forwarded_inbound", 0))},
        "packets": {d: sum(t["packets"][d] for t in tables) for d in DIRECTIONS},
        "bytes": {d: sum(t["bytes"][d] for t in tables) for d in DIRECTIONS},
        "connections": total("connections"),
        "capacity": total("capacity"),
        "connections_created": total("connections_created"),
        "connections_expired": total("connections_expired"),
        # every dropped packet once: the data path's own reasons plus the engines' reasons
        # (the data path's "engine" bucket is their sum)
        "dropped": sum(v for k, v in dp_drops.items() if k != DATAPATH_ENGINE_REASON)
        + sum(engine_drops.values()),
        "rst_sent": int(c.get("rst_sent", 0)),
        "rst_withheld_fragment": int(c.get("rst_withheld_fragment", 0)),
    }
    ev = c.get("events", {})
    return {
        "schema": SCHEMA,
        "lab": lab,
        "clock": {"now": float(c.get("clock", {}).get("now", 0.0)),
                  "offset": float(c.get("clock", {}).get("offset", 0.0))},
        "totals": totals,
        "enis": enis,
        "keys": keys,
        "nat_gateways": nats,
        "pools": pools,
        "drops": {"engine": engine_drops, "datapath": dp_drops},
        "links": links,
        "events": {k: int(ev.get(k, 0)) for k in ("subscribers", "sent", "lost")},
        "flow_logs": c.get("flow_logs"),
        "control_plane": dict(c.get("control_plane", {})),
        "state": _state(c),
        "placement": c.get("placement"),
        "workers": [dict(w) for w in c.get("workers") or []],
    }


#: What a restore refuses, by reason (hyperplane.datapath.statefile.RESTORE_COUNTS after "restored").
REFUSALS = ("expired", "eni_mismatch", "duplicate", "table_full", "invalid")


def _state(c: Dict[str, Any]) -> Dict[str, Any]:
    """The daemon's ``restore`` report and ``saves`` counters (hyperplane.datapath.restore: restart
    without loss) in a fixed shape: what came back at start and how saving goes."""
    r, sv = c.get("restore") or {}, c.get("saves") or {}
    restored = r.get("restored_from") is not None and "restored" in r
    out = {"file": r.get("state_file"), "restored": int(r["restored"]) if restored else None,
           "ignored": r.get("ignored"), "down_for": r.get("down_for") if restored else None,
           "final": r.get("final") if restored else None}
    for k in REFUSALS:
        out[k] = int(r.get(k, 0)) if restored else 0
    out["saves"] = {"saved": int(sv.get("saved", 0)), "failed": int(sv.get("failed", 0)),
                    "last_error": sv.get("last_error"),
                    "last_connections": int(sv.get("last_connections", 0)),
                    "last_seconds": sv.get("last_seconds"),
                    "last_loop_seconds": sv.get("last_loop_seconds")}
    return out


def _state_rows(st: Dict[str, Any]) -> List[List[str]]:
    if not st["file"]:
        return [["file", "none: a data path run on its own saves nothing"]]
    if st["restored"] is not None:
        refused = ", ".join(f"{k.replace('_', ' ')} {st[k]}" for k in REFUSALS if st[k])
        start = (f"restored {st['restored']} connection(s), saved "
                 f"{'at shutdown' if st['final'] else 'periodically'}, down "
                 f"{float(st['down_for'] or 0):.1f} s" + (f"; refused: {refused}" if refused
                                                          else ""))
    elif st["ignored"]:
        start = f"started afresh: {st['ignored']}"
    else:
        start = "started afresh (no saved state)"
    sv = st["saves"]
    saves = f"{sv['saved']} saved, {sv['failed']} failed"
    if sv["saved"]:
        took = sv["last_seconds"]
        held = sv["last_loop_seconds"]
        saves += (f"; last: {sv['last_connections']} connection(s)"
                  + (f" in {float(took) * 1000:.1f} ms" if took is not None else "")
                  + (f" (the loop held {float(held) * 1000:.1f} ms)" if held is not None else ""))
    rows = [["file", st["file"]], ["at start", start], ["saves", saves]]
    if sv["last_error"]:
        rows.append(["last save error", str(sv["last_error"])])
    return rows


def _pool(p: Dict[str, Any], key: Optional[str], nat: Optional[str]) -> Dict[str, Any]:
    return {"eni": p["eni"], "key": key, "nat_gateway": nat, "address": p["address"],
            "family": int(p["family"]), "proto": p["proto"], "used": int(p["used"]),
            "size": int(p["size"]), "percent": percent(p["used"], p["size"]),
            "enabled": bool(p.get("enabled", True))}


def nonzero_drops(summary: Dict[str, Any]) -> List[Tuple[str, str, int]]:
    """(layer, reason, packets) of every drop reason that counted something, engine first."""
    out = [("engine", r, n) for r, n in summary["drops"]["engine"].items() if n]
    out += [("datapath", r, n) for r, n in summary["drops"]["datapath"].items()
            if n and r != DATAPATH_ENGINE_REASON]
    return out


# ---- text: sections rendered as plain aligned text or rich tables -------------------------------
class Section(NamedTuple):
    """One titled table of strings: printed as aligned text (greppable, one row per line) or
    as a rich table on a terminal. ``empty`` is printed instead when there are no rows."""

    title: str
    header: List[str]
    rows: List[List[str]]
    empty: str = "none"


#: A cell that reads as a number ("12", "1.5 kB/s", "20.0%", "0/s"), not an address: the
#: column is right-aligned.
_NUMERIC = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?( ?[kMGTP]?B?(/s)?|%)?$|^\d+/\d+$")


def _right(rows: List[List[str]], col: int) -> bool:
    cells = [r[col] for r in rows if r[col] not in ("", "-")]
    return bool(cells) and all(_NUMERIC.match(c) for c in cells)


def render_plain(sections: List[Section], head: Optional[str] = None) -> str:
    lines = [head, ""] if head else []
    for s in sections:
        lines.append(s.title.upper())
        if not s.rows:
            lines += [f"  {s.empty}", ""]
            continue
        table = [s.header] + s.rows
        widths = [max(len(r[i]) for r in table) for i in range(len(s.header))]
        right = [_right(s.rows, i) for i in range(len(s.header))]
        for r in table:
            cells = [c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)]
            lines.append(("  " + "  ".join(cells)).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_rich(sections: List[Section], head: Optional[str] = None):
    """The same sections as rich renderables (for a terminal, or rich.live in top)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: List[Any] = [Text(head, style="bold")] if head else []
    for s in sections:
        if not s.rows:
            parts.append(Text(f"{s.title}: {s.empty}", style="dim"))
            continue
        t = Table(title=Text(s.title), title_justify="left", title_style="bold cyan",
                  box=box.SIMPLE_HEAD, pad_edge=False)
        for i, h in enumerate(s.header):
            t.add_column(h, justify="right" if _right(s.rows, i) else "left")
        for r in s.rows:
            t.add_row(*(Text(c) for c in r))   # cells are text, never markup ("[##--]")
        parts.append(t)
    return Group(*parts)


def _pct(p: float) -> str:
    return f"{p:.2g}%" if 0 < p < 0.1 else f"{p:.1f}%"


def _flow_logs_rows(fl: Any) -> List[List[str]]:
    if not isinstance(fl, dict):
        return []
    return [[str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
            for k, v in fl.items()]


def sections(s: Dict[str, Any]) -> List[Section]:
    """A summary (see :func:`summarize`) as the text view's sections."""
    t = s["totals"]
    out = [Section("traffic", ["DIRECTION", "FORWARDED", "TRANSLATED", "BYTES"],
                   [[d, str(t["forwarded_packets"][d]), str(t["packets"][d]), str(t["bytes"][d])]
                    for d in DIRECTIONS])]
    out.append(Section(
        "ENIs", ["ENI", "KEY", "OUT PACKETS", "OUT BYTES", "IN PACKETS", "IN BYTES"],
        [[e["id"] + ("" if e["live"] else " (gone)"), e["key"] or f"nat {e['nat_gateway']}",
          str(e["packets"]["outbound"]), str(e["bytes"]["outbound"]),
          str(e["packets"]["inbound"]), str(e["bytes"]["inbound"])] for e in s["enis"]]))
    out.append(Section(
        "connection tables", ["TABLE", "CONNECTIONS", "CAPACITY", "FILL", "CREATED", "EXPIRED"],
        [[(k["key"] if "key" in k else f"nat {k['id']}"), str(k["connections"]),
          str(k["capacity"]), _pct(k["percent"]), str(k["connections_created"]),
          str(k["connections_expired"])] for k in s["keys"] + s["nat_gateways"]]))
    out.append(Section(
        "port pools", ["ENI", "ADDRESS", "PROTO", "USED", "SIZE", "FILL"],
        [[p["eni"] + ("" if p["enabled"] else " (no new)"), p["address"], p["proto"],
          str(p["used"]), str(p["size"]), _pct(p["percent"])] for p in s["pools"]]))
    out += [Section(*w) for w in [workers.stats_section(s)] if w is not None]
    out.append(Section("drops", ["LAYER", "REASON", "PACKETS"],
                       [[layer, r, str(n)] for layer, r, n in nonzero_drops(s)],
                       empty="none (every drop reason is zero)"))
    out.append(Section(
        "links", ["LINK", "ROLE", "STATE", "I/O", "RX PACKETS", "RX BYTES", "TX PACKETS",
                  "TX BYTES", "RING DROPS", "TX ERRORS"],
        [[x["name"] or "-", x["role"] or "-",
          (x["state"] or "-") if x["up"] else "DOWN", x.get("io") or "-",
          str(x["rx"]["packets"]), str(x["rx"]["bytes"]), str(x["tx"]["packets"]),
          str(x["tx"]["bytes"]), str(x["rx"]["ring_drops"]), str(x["tx"]["errors"])]
         for x in s["links"]]))
    ev = s["events"]
    out.append(Section("events", ["SUBSCRIBERS", "SENT", "LOST"],
                       [[str(ev["subscribers"]), str(ev["sent"]), str(ev["lost"])]]))
    if s.get("flow_logs") is not None:
        out.append(Section("flow logs", ["STAT", "VALUE"], _flow_logs_rows(s["flow_logs"])))
    if "state" in s:
        out.append(Section("saved state", ["STAT", "VALUE"], _state_rows(s["state"])))
    if s.get("placement"):
        out.append(Section("placement", ["PART", "CHOSEN", "FROM"],
                           _placement_rows(s["placement"])))
    return out


def _placement_rows(p: Dict[str, Any]) -> List[List[str]]:
    src = p.get("source") or {}
    cpus = lambda xs, none: ",".join(map(str, xs)) if xs else none  # noqa: E731
    return [["loop CPUs", cpus(p["loop_cpus"], "any (unpinned)"), src.get("loop_cpus", "-")],
            ["inbound worker CPUs", cpus(p["inbound_cpus"], "none (no worker)"),
             src.get("inbound_cpus", "-")],
            ["ring frames", str(p["ring_frames"]), src.get("ring_frames", "-")],
            ["functions' CPUs", cpus(p.get("function_cpus") or (), "any"),
             f"placement {p.get('placement')}"],
            ["workers", str(p.get("workers", 1)), src.get("workers", "-")]] + \
        ([["worker CPUs", cpus(p.get("worker_cpus") or (), "any (unpinned)"),
           src.get("worker_cpus", "-")]] if p.get("workers", 1) > 1 else [])


def stats_head(s: Dict[str, Any]) -> str:
    t = s["totals"]
    return (f"lab {s['lab'] or '?'}: {t['connections']} connection(s), "
            f"{t['dropped']} packet(s) dropped, lab clock {s['clock']['now']:.1f} s"
            + (f" (advanced {s['clock']['offset']:g} s)" if s["clock"]["offset"] else ""))


# ---- Prometheus ---------------------------------------------------------------------------------
def _family_label(f: Any) -> str:
    return f"ipv{f}"


def metric_families(c: Optional[Dict[str, Any]], lab: Optional[str] = None) -> List[Any]:
    """Counters (None: the daemon did not answer) -> prometheus_client metric families.

    Names follow the Prometheus conventions: prefix ``hyperplane_``, counters end in
    ``_total`` (prometheus_client adds it), sizes in bytes, one label per dimension
    (direction, eni, key, reason, layer, proto, family, link). ``hyperplane_up`` is 1 when the
    daemon answered this scrape, else 0 and nothing else is exported (not an HTTP error)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    up = GaugeMetricFamily("hyperplane_up", "1 when the lab's data path answered this scrape")
    up.add_metric([], 0 if c is None else 1)
    if c is None:
        return [up]
    s = summarize(c, lab)
    fams: List[Any] = [up]

    def counter(name, doc, labels=()):
        m = CounterMetricFamily(name, doc, labels=list(labels))
        fams.append(m)
        return m

    def gauge(name, doc, labels=()):
        m = GaugeMetricFamily(name, doc, labels=list(labels))
        fams.append(m)
        return m

    info = gauge("hyperplane_lab_info", "the lab this endpoint serves (always 1)", ["lab"])
    info.add_metric([lab or ""], 1)
    m = counter("hyperplane_forwarded_packets", "packets the data path forwarded "
                "(outbound: environment to VPC; inbound: VPC to environment)", ["direction"])
    for d in DIRECTIONS:
        m.add_metric([d], s["totals"]["forwarded_packets"][d])
    pk = counter("hyperplane_packets", "packets translated through an ENI", ["direction", "eni"])
    by = counter("hyperplane_bytes", "IP bytes translated through an ENI", ["direction", "eni"])
    for e in s["enis"]:
        for d in DIRECTIONS:
            pk.add_metric([d, e["id"]], e["packets"][d])
            by.add_metric([d, e["id"]], e["bytes"][d])
    dr = counter("hyperplane_drops", "dropped packets by reason; layer engine: the connection "
                 "tracker (e.g. unsolicited inbound), datapath: the packet I/O around it",
                 ["layer", "reason"])
    for r, n in s["drops"]["engine"].items():
        dr.add_metric(["engine", r], n)
    for r, n in s["drops"]["datapath"].items():
        if r != DATAPATH_ENGINE_REASON:
            dr.add_metric(["datapath", r], n)
    counter("hyperplane_rst_sent", "TCP RSTs sent for segments of connections no table "
            "tracks (an ENI's or a NAT gateway's)") \
        .add_metric([], s["totals"]["rst_sent"])
    counter("hyperplane_rst_withheld_fragment", "first IP fragments without ACK left without "
            "a RST (its ack would need the whole segment's length)") \
        .add_metric([], s["totals"]["rst_withheld_fragment"])
    conn = gauge("hyperplane_connections", "connections in an ENI key's table", ["key"])
    cap = gauge("hyperplane_connections_capacity", "capacity of an ENI key's table", ["key"])
    # not "connections_created": OpenMetrics reserves the _created suffix (counter timestamps)
    cre = counter("hyperplane_new_connections", "connections created in an ENI key's table",
                  ["key"])
    exp = counter("hyperplane_expired_connections", "connections that timed out", ["key"])
    for k in s["keys"]:
        conn.add_metric([k["key"]], k["connections"])
        cap.add_metric([k["key"]], k["capacity"])
        cre.add_metric([k["key"]], k["connections_created"])
        exp.add_metric([k["key"]], k["connections_expired"])
    if s["nat_gateways"]:
        nconn = gauge("hyperplane_nat_gateway_connections", "connections in a NAT gateway's "
                      "table", ["nat_gateway"])
        ncap = gauge("hyperplane_nat_gateway_connections_capacity", "capacity of a NAT "
                     "gateway's table", ["nat_gateway"])
        for n in s["nat_gateways"]:
            nconn.add_metric([n["id"]], n["connections"])
            ncap.add_metric([n["id"]], n["capacity"])
    labels = ["eni", "address", "family", "proto"]
    used = gauge("hyperplane_port_pool_used", "source ports in use on an ENI address", labels)
    size = gauge("hyperplane_port_pool_size", "source ports an ENI address can hand out", labels)
    for p in s["pools"]:
        lv = [p["eni"], p["address"], _family_label(p["family"]), p["proto"]]
        used.add_metric(lv, p["used"])
        size.add_metric(lv, p["size"])
    lp = counter("hyperplane_link_packets", "frames received (rx) or sent (tx) on a link",
                 ["link", "role", "direction"])
    lb = counter("hyperplane_link_bytes", "bytes received (rx) or sent (tx) on a link",
                 ["link", "role", "direction"])
    lrd = counter("hyperplane_link_rx_ring_drops", "frames the kernel dropped because a link's "
                  "receive ring was full", ["link", "role"])
    lte = counter("hyperplane_link_tx_errors", "frames a link failed to send", ["link", "role"])
    lup = gauge("hyperplane_link_up", "1 while a link's interface exists", ["link", "role"])
    for x in s["links"]:
        name, role = x["name"] or "", x["role"] or ""
        for d in ("rx", "tx"):
            lp.add_metric([name, role, d], x[d]["packets"])
            lb.add_metric([name, role, d], x[d]["bytes"])
        lrd.add_metric([name, role], x["rx"]["ring_drops"])
        lte.add_metric([name, role], x["tx"]["errors"])
        lup.add_metric([name, role], 1 if x["up"] else 0)
    ev = s["events"]
    gauge("hyperplane_events_subscribers", "`conntrack events` clients connected") \
        .add_metric([], ev["subscribers"])
    counter("hyperplane_events_sent", "connection events sent to subscribers") \
        .add_metric([], ev["sent"])
    counter("hyperplane_events_lost", "connection events lost because an engine's event ring "
            "was full (conntrack -E's ENOBUFS)").add_metric([], ev["lost"])
    for k, v in s["control_plane"].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            counter(f"hyperplane_control_plane_{_metric_word(k)}",
                    f"VPC control plane: {k.replace('_', ' ')}").add_metric([], v)
    fl = s.get("flow_logs")
    if isinstance(fl, dict):   # hyperplane.datapath.flowlogs.FlowLogs.stats(): its counters, and gauges
        for k, v in fl.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue    # directory, account id
            doc = f"flow logs: {k.replace('_', ' ')}"
            if k in FLOW_LOG_GAUGES:
                gauge(f"hyperplane_flow_logs_{FLOW_LOG_GAUGES[k]}", doc).add_metric([], v)
            else:
                counter(f"hyperplane_flow_logs_{_metric_word(k)}", doc).add_metric([], v)
    gauge("hyperplane_lab_clock_seconds", "the lab clock (monotonic time plus what "
          "`hyperplane clock --advance` added)").add_metric([], s["clock"]["now"])
    gauge("hyperplane_lab_clock_offset_seconds", "how far `hyperplane clock --advance` moved "
          "the lab clock").add_metric([], s["clock"]["offset"])
    return fams


def _metric_word(k: str) -> str:
    w = re.sub(r"[^a-zA-Z0-9_]", "_", str(k)).lower()
    return w[:-6] if w.endswith("_total") else w


class CountersCollector:
    """A prometheus_client collector that asks the daemon for ``counters`` on every scrape,
    so a value is never older than the scrape. ``fetch()`` returns the counters or raises;
    any failure becomes ``hyperplane_up 0`` instead of an HTTP 500."""

    def __init__(self, fetch: Callable[[], Dict[str, Any]], lab: Optional[str] = None):
        self.fetch = fetch
        self.lab = lab
        self.last_error: Optional[str] = None   # why the last scrape got no counters

    def collect(self):
        try:
            c = self.fetch()
            self.last_error = None
        except Exception as e:   # the daemon is down or refused: report it as a value
            c = None
            self.last_error = str(e) or type(e).__name__
        yield from metric_families(c, self.lab)


def registry_for(fetch: Callable[[], Dict[str, Any]], lab: Optional[str] = None):
    """(registry, collector): a registry of its own holding only the counters collector.

    The default registry's process/platform/GC collectors are left out on purpose: they would
    describe this exporter process, not the data path, and invite reading them as the data
    path's memory or CPU."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    collector = CountersCollector(fetch, lab)
    reg.register(collector)
    return reg, collector


def exposition(c: Optional[Dict[str, Any]], lab: Optional[str] = None) -> str:
    """The Prometheus text exposition of one counters dict (None: daemon down)."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(lambda: _or_raise(c), lab)[0]).decode()


def _or_raise(c):
    if c is None:
        raise OSError("no counters")
    return c


def parse_listen(text: str) -> Tuple[str, int]:
    """``127.0.0.1:9469``, ``[::1]:9469`` or ``localhost:9469`` -> (address, port); ValueError
    (naming --listen) for anything that is not a loopback address: the endpoint has no
    authentication, so it must not be reachable from other machines. The rule is the lab
    file's ``[metrics] listen`` one (hyperplane.labconfig.parse_metrics.split_listen)."""
    try:
        return split_listen(text)
    except ValueError as e:
        raise ValueError(f"--listen {text!r}: {e}") from None


def serve(registry, host: str, port: int):
    """An HTTP server for ``registry`` on (host, port), serving in a daemon thread; returns
    the server (``server_address`` has the real port when ``port`` is 0)."""
    import socket
    from http.server import ThreadingHTTPServer

    from prometheus_client import MetricsHandler

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    srv = Server((host, port), MetricsHandler.factory(registry))
    threading.Thread(target=srv.serve_forever, name="metrics-http", daemon=True).start()
    return srv
