"""What ``hyperplane lab status --json`` prints: a lab's nodes, ENIs, fabric, NAT gateways and,
while its data path runs, its counters, functions, live ENIs and placement (CPUs, rings); while its workloads service
runs, the execution environments (cold, warm, busy) and the hosts' services; with ``[metrics]``,
the exporter's URL; the active link impairments."""
from __future__ import annotations

import dataclasses
import os
import sys
import urllib.parse
from typing import Any, Dict, List, Optional

from hyperplane import control, labconfig, paths, proc, topology
from hyperplane.errors import EXIT_USAGE, PROG, HyperplaneError
from hyperplane.lab.impair import lines as impair_lines
from hyperplane.labconfig.placement import describe as describe_placement
from hyperplane.lab.lifecycle import ask, load_lab
from hyperplane.topology import impair as link_impair


def nodes(plan: labconfig.Plan) -> List[Dict[str, Any]]:
    """Every node of the lab: name, role (hyperplane, env, host, internet), netns, addresses
    (with their prefix length) and the role's own fields."""
    out: List[Dict[str, Any]] = [{
        "name": "hyperplane", "role": "hyperplane", "netns": plan.node_ns,
        # the node's kernel holds no address: these are the ones the data path answers for
        "addresses": [a for e in plan.enis for a in (
            f"{e.ipv4}/{e.prefix4.split('/')[1]}",
            f"{e.ipv6}/{e.prefix6.split('/')[1]}" if e.ipv6 else None) if a]
        + [a for v in plan.envs for a in (
            f"{v.gw4}/{v.ipv4.split('/')[1]}" if v.gw4 else None,
            f"{v.gw6}/{v.ipv6.split('/')[1]}" if v.gw6 else None) if a],
    }]
    for v in plan.envs:
        out.append({"name": v.name, "role": "env", "netns": v.netns, "function": v.function,
                    "attach": v.attach, "eni": v.eni, "interface": v.ifname,
                    "addresses": [a for a in (v.ipv4, v.ipv6) if a]})
    for h in plan.hosts:
        out.append({"name": h.name, "role": "host", "netns": h.netns, "subnet": h.subnet,
                    "interface": h.ifname, "addresses": [a for a in (h.ipv4, h.ipv6) if a]})
    for h in plan.internet_hosts:
        out.append({"name": h.name, "role": "internet", "netns": h.netns,
                    "interface": h.ifname, "addresses": [a for a in (h.ipv4, h.ipv6) if a]})
    return out


def namespaces_by_node(plan: labconfig.Plan) -> Dict[str, str]:
    """Node name -> namespace, for ``lab exec``: every node, plus ``node`` (the hyperplane
    node), ``vpc`` (the fabric) and ``internet`` (when the lab has one)."""
    names = {"hyperplane": plan.node_ns, "node": plan.node_ns, "vpc": plan.fabric_ns}
    names.update({v.name: v.netns for v in plan.envs})
    names.update({h.name: h.netns for h in plan.hosts})
    names.update({h.name: h.netns for h in plan.internet_hosts})
    if plan.internet is not None:
        names["internet"] = plan.internet.netns
    return names


def enis(plan: labconfig.Plan, listed: List[Dict[str, Any]], counters: Dict[str, Any],
         now: float) -> List[Dict[str, Any]]:
    """Every ENI the data path has had (``listed``: the control plane's ``enis`` at lab-clock
    ``now``), live or not: its ``state`` (pending, available, in-use, deleting, deleted) and
    ``live`` (takes or carries connections: not deleting or deleted), addresses (a deleted
    ENI's are the ones it had), the packets it carried and the ports it holds, and for an
    in-use one ``reclaim_in``: seconds until Lambda's idle reclaim takes it if its functions
    stay idle (None: not while a function is Pending or updating). ``connections`` and
    ``drops`` are its key's engine's, which all the ENIs of a key share."""
    macs = {e.id: e.mac for e in plan.enis}
    per_eni: Dict[str, Dict[str, Any]] = {}
    for kc in counters.get("enis", []):
        for row in kc.get("eni_counters", []):
            per_eni[row["eni"]] = {
                "key": kc, "packets": {"outbound": row["packets_outbound"],
                                       "inbound": row["packets_inbound"]},
                "bytes": {"outbound": row["bytes_outbound"], "inbound": row["bytes_inbound"]},
                "pool": {f"{p['family']}/{p['proto']}": p["used"] for p in kc["pool"]
                         if p["eni"] == row["eni"]}}
    out = []
    for e in listed:
        c = per_eni.get(e["id"], {})
        kc = c.get("key", {})
        reclaim = e.get("reclaim_at")
        out.append({
            "id": e["id"], "subnet": e["subnet"], "security_groups": e["security_groups"],
            "mac": macs.get(e["id"]), "addresses": [a for a in (e["ipv4"], e["ipv6"]) if a],
            "state": e["state"], "live": e["state"] not in ("deleting", "deleted"),
            "retired": e["retired"], "reason": e["reason"],
            "created_at": e["created_at"], "ready_at": e["ready_at"],
            "deleted_at": e["deleted_at"], "delete_at": e["delete_at"],
            "reclaim_at": reclaim,
            "reclaim_in": None if reclaim is None else round(max(0.0, reclaim - now), 1),
            "functions": e["functions"],
            "packets": c.get("packets", {"outbound": 0, "inbound": 0}),
            "bytes": c.get("bytes", {"outbound": 0, "inbound": 0}),
            "pool": c.get("pool", {}),
            "connections": kc.get("connections", 0),
            "drops": {k: v for k, v in kc.get("drops", {}).items() if v}})
    return out


def status(name: str) -> Dict[str, Any]:
    """The ``lab status --json`` document of lab ``name``."""
    state, plan = load_lab(name)
    pid = state.get("pid")
    running = proc.pid_alive(pid)
    out = {
        "name": plan.name, "pid": pid, "running": running,
        "config": state.get("config_source"), "dir": paths.lab_dir(name),
        "nodes": nodes(plan),
        # without a data path, the plan's ENIs; with one, every ENI it ever had (enis())
        "enis": [{"id": e.id, "subnet": e.subnet, "security_groups": list(e.security_groups),
                  "mac": e.mac, "addresses": [a for a in (e.ipv4, e.ipv6) if a],
                  "state": None, "live": None}
                 for e in plan.enis],
        "lifecycle": {"inactive_after": plan.lifecycle.inactive_after,
                      "eni_create_delay": plan.lifecycle.eni_create_delay,
                      "eni_delete_delay": plan.lifecycle.eni_delete_delay},
        "fabric": {"netns": plan.fabric_ns,
                   "subnets": [{"id": s.id, "cidr": s.cidr, "ipv6_cidr": s.ipv6_cidr,
                                "router": [a for a in (s.router4, s.router6) if a]}
                               for s in plan.subnets]},
        # every setting (a script needs no table of defaults) and the ones the lab changed
        "conntrack": {**dataclasses.asdict(plan.conntrack),
                      "changed": plan.conntrack.changed()},
        "nat_gateways": [{"id": n.id, "subnet": n.subnet, "private_ipv4": n.private_ipv4,
                          "public_ipv4": n.public_ipv4, "idle_timeout": n.idle_timeout}
                         for n in plan.nat_gateways],
    }
    if running:
        try:
            c = ask(name, "counters", timeout=2.0)
            out["counters"] = {k: c[k] for k in ("forwarded_outbound", "forwarded_inbound",
                                                 "drops")}
            out["counters"]["drops"] = {k: v for k, v in c["drops"].items() if v}
            out["control_plane"] = c.get("control_plane", {})
            # where the data path placed itself (hyperplane.labconfig.placement)
            out["placement"] = c.get("placement")
            out["functions"] = ask(name, "functions", timeout=2.0)["functions"]
            listed = ask(name, "enis", timeout=2.0)
            out["enis"] = enis(plan, listed["enis"], c, listed["now"])
            out["now"] = listed["now"]   # the lab clock the ENIs' times are on
            out["live_enis"] = [e for e in listed["enis"] if e["state"] != "deleted"]
        except HyperplaneError as e:
            out["running"] = False
            out["error"] = str(e)
    if not running:   # the process is gone: why, from its log
        out["stopped"] = last_stop(name)
    wpid = state.get("workloads_pid")
    out["workloads"] = {"pid": wpid, "running": proc.pid_alive(wpid)}
    if out["workloads"]["running"]:
        try:
            for key, cmd in (("environments", "environments"), ("services", "hosts")):
                r = control.request(paths.workloads_socket_path(name), cmd, timeout=2.0)
                out["workloads"][key] = r[cmd]
        except (OSError, ValueError, KeyError) as e:
            out["workloads"]["error"] = f"the workloads service does not answer ({e})"
    out["metrics"] = metrics_status(plan, state)
    out["impairments"] = link_impair.active(plan)
    if plan.nacls:
        try:
            out["nacl_counters"] = topology.nacl_counters(plan)
        except Exception as e:  # the fabric is read with nft; report, do not fail status
            out["nacl_counters_error"] = str(e)
    return out


def running_metrics_url(state: Dict[str, Any]) -> Optional[str]:
    """The URL the lab's exporter serves, from its state; None when none runs."""
    return state.get("metrics_url") if proc.pid_alive(state.get("metrics_pid")) else None


def metrics_status(plan: labconfig.Plan, state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The lab's metrics exporter (``[metrics]``): ``listen`` as the lab file asks, ``url`` it
    serves (the real port when port 0 was asked), ``pid`` and ``running``; None when the lab
    has no ``[metrics]``."""
    if not plan.metrics.listen:
        return None
    url = running_metrics_url(state)
    return {"listen": plan.metrics.listen, "url": url or state.get("metrics_url"),
            "pid": state.get("metrics_pid"), "running": url is not None}


def metrics_target(name: str) -> str:
    """``HOST:PORT`` where lab ``name``'s exporter serves (the real port when ``[metrics]
    listen`` asked for port 0), for a scrape config; HyperplaneError (exit status 2) when the
    lab has no ``[metrics]``, or when its exporter is not running and its port is not known."""
    state, plan = load_lab(name)
    if not plan.metrics.listen:
        raise HyperplaneError(
            f"lab {name!r} has no [metrics] listen: add [metrics] listen = "
            f'"{labconfig.DEFAULT_METRICS_LISTEN}" to its lab file and `{PROG} lab down` / '
            f"`lab up` it, or give --listen ADDR:PORT of a `{PROG} metrics` you run",
            EXIT_USAGE)
    url = running_metrics_url(state)
    if url:
        return urllib.parse.urlsplit(url).netloc
    if plan.metrics.listen.endswith(":0"):
        raise HyperplaneError(f"the metrics exporter of lab {name!r} is not running and its "
                              f"[metrics] listen {plan.metrics.listen} picks a port when it "
                              f"starts: `{PROG} lab restart --name {name}` starts it again",
                              EXIT_USAGE)
    return plan.metrics.listen


def last_stop(name: str) -> Optional[str]:
    """Why the lab's data path last stopped, from its log ("SIGTERM", "worker stopped: worker
    1 (...)": a worker that failed stops the data path, hyperplane.datapath.daemon), or None."""
    try:
        with open(paths.log_path(name), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    marker = "data path stopped ("
    lines = [ln for ln in tail.splitlines() if marker in ln]
    if not lines:
        return None
    why = lines[-1].split(marker, 1)[1]
    return why[:-1] if why.endswith(")") else why


def print_status(st: Dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    p = lambda s="": print(s, file=out)  # noqa: E731
    run = f"running, pid {st['pid']}" if st["running"] else "NOT running" + (
        f" (stopped: {st['stopped']})" if st.get("stopped") else "")
    p(f"lab {st['name']}: data path {run}; config {st['config']}")
    p(f"  {'node':<14} {'role':<10} {'netns':<28} addresses")
    for n in st["nodes"]:
        extra = f" ({n['attach']})" if n.get("attach") else ""
        p(f"  {n['name'] + extra:<14} {n['role']:<10} {n['netns']:<28} "
          + " ".join(n["addresses"]))
    for e in st["enis"]:
        p("  " + eni_line(e, st.get("now")))
    for f in st.get("functions", []):
        p(f"  function {f['name']}: {f['state']}"
          + (f" ({f['state_reason_code']})" if f.get("state_reason_code") else "")
          + f", ENIs {', '.join(f.get('enis', [])) or '-'}")
    w = st.get("workloads") or {}
    if w and not w.get("running"):
        p("  workloads service NOT running: functions cannot be invoked")
    for e in w.get("environments", []):
        p(f"  environment {e['environment']} ({e['function']}): {e['state']}"
          + (f", runtime pid {e['pid']}" if e.get("pid") else "")
          + f", {e['invocations']} invocation(s), {e['cold_starts']} cold start(s)"
          + (f", last error {e['last_error']}" if e.get("last_error") else ""))
    for h in w.get("services", []):
        p(f"  host {h['host']} service: " + (f"running, pid {h['pid']}" if h.get("running")
                                            else "NOT running")
          + f", {h.get('restarts', 0)} restart(s); log {h.get('log')}")
    ct = st.get("conntrack")
    if ct is not None:   # a human reads what differs from the defaults everyone knows
        changed = ", ".join(f"{k} = {v}" + ("" if k == "max" else " s")
                            for k, v in ct["changed"].items())
        p(f"  conntrack: {changed + ' (the rest default)' if changed else 'defaults'} "
          f"(established TCP {ct['tcp_timeout_established']} s, UDP "
          f"{ct['udp_timeout']}/{ct['udp_timeout_stream']} s, max {ct['max']} per table)")
    m = st.get("metrics")
    if m and m["running"]:
        p(f"  metrics: {m['url']} (exporter pid {m['pid']})")
    elif m:
        p(f"  metrics exporter NOT running ([metrics] listen = \"{m['listen']}\"; its log: "
          f"{paths.metrics_log_path(st['name'])}): `lab restart` starts it again")
    for n in st.get("nat_gateways", []):
        p(f"  NAT gateway {n['id']} in {n['subnet']}: {n['private_ipv4']} -> "
          f"{n['public_ipv4']} (idle timeout {n['idle_timeout']:g} s)")
    denied = [r for r in st.get("nacl_counters", []) if r["action"] == "deny" and r["packets"]]
    for r in denied:
        p(f"  NACL {r['acl']} {r['direction']} rule {r['rule']} denied {r['packets']} packet(s)")
    imp = st.get("impairments")
    for line in impair_lines(imp) if imp else []:
        p("  " + line)
    if st.get("placement"):
        p("  data path " + describe_placement(st["placement"]))
    c = st.get("counters")
    if c:
        drops = " ".join(f"{k}={v}" for k, v in c["drops"].items()) or "none"
        p(f"  forwarded: outbound={c['forwarded_outbound']} inbound={c['forwarded_inbound']}"
          f"  data-path drops: {drops}")


def eni_line(e: Dict[str, Any], now: Optional[float] = None) -> str:
    """One ENI of ``lab status``: its addresses and state; for an in-use one, when the idle
    reclaim would take it; a deleted one says so, with the addresses it had. ``now``: the lab
    clock its times are on."""
    ago = (lambda t: f"{max(0.0, now - t):.0f} s ago") if now is not None else \
        (lambda t: f"at {t:.0f} s")
    until = (lambda t: f"in {max(0.0, t - now):.0f} s") if now is not None else \
        (lambda t: f"at {t:.0f} s")
    head = f"ENI {e['id']} in {e['subnet']} ({', '.join(e['security_groups'])})"
    addrs = " ".join(e["addresses"])
    if e.get("state") is None:          # no data path: the plan's ENI
        return f"{head}: {addrs}"
    if e["state"] == "deleted":
        return f"{head}: deleted {ago(e['deleted_at'])} (it had {addrs}; not live)"
    line = f"{head}: {addrs}  {e['state']}"
    if e["reason"] != "initial":
        line += f" ({e['reason']})"
    if e["state"] == "deleting":
        line += f", no new connections, deleted {until(e['delete_at'])}"
    pk = e["packets"]
    line += f"  packets out={pk['outbound']} in={pk['inbound']}"
    if e.get("reclaim_in") is not None:
        line += (f"  idle reclaim in {e['reclaim_in']:.0f} s unless used (then a new ENI at a "
                 "new address)")
    return line
