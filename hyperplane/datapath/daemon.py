"""The data path process: opens the lab's links, runs the C loop, serves the control socket.

One process, one thread. It moves itself into the node namespace, builds one Engine per ENI
key (the connection table of one (subnet, security groups) key, holding one address per
scale-out ENI of that key) and a DataPath with

* a link per key: an AF_PACKET ring on the veth into the subnet; the data path answers
  ARP/NDP for the key's live ENI addresses and finds the subnet's hosts (and the VPC router .1);
* an environment link per execution environment: a TAP fd (opened inside the environment's
  namespace, the way a microVM's virtio-net device is backed by a tap fd its VMM holds) or an
  AF_PACKET ring on the node end of a veth; the data path answers for the gateway address;
* per NAT gateway, an inside link (into its public subnet) and an outside link (the internet).

Then it loops: ``DataPath.poll`` moves packets in C with the GIL released and comes back only
for the control socket, a signal (SIGINT/SIGTERM stop it cleanly), or every TICK_MS, when the
VPC control plane (hyperplane.vpc) ticks. The control protocol is one JSON object per line over
a root-only Unix socket: ``{"cmd": "ping" | "counters" | "conntrack" | "conntrack_flush" |
"neighbours" | "enis" | "functions" | "function_update" | "invoke" | "clock" | "stop", ...}``
answered by one JSON line. ``{"cmd": "events", "filter": {...}, "kinds": [...]}`` is answered
by ``{"ok": true}`` and then keeps the connection: one JSON line per connection event (like
``conntrack -E``), written from the loop each tick, never per packet.

The control socket is root-only twice over: the file is mode 0600 and every connection's
SO_PEERCRED uid is checked. Clients are served without blocking the loop, and a malformed
request (not UTF-8, not JSON, not an object, an unknown command or argument, a wrong type, a
line over CONTROL_LINE_MAX, nothing at all) is answered ``{"ok": false, "error": "..."}``.

Restart without loss: the daemon saves its state to ``<lab dir>/conntrack.state`` (mode 0600,
written atomically: temp file, fsync, rename) when it stops and every SAVE_INTERVAL seconds from
the tick (written by a thread of its own, so the loop forwards meanwhile), and a new daemon of
the same lab and plan restores it before it forwards a packet:
the lab clock's offset, per ENI key the engine's ENIs in their order and its connection table
(``Engine.snapshot``/``Engine.restore``: tuples, ENI port, state, timer, counters), the NAT
gateways' tables, and the control plane's state (hyperplane.vpc: which functions are Active on
which ENIs, scale-out ENIs). A TCP stream that was open keeps its ENI port and goes on. On the
same boot (``/proc/sys/kernel/random/boot_id``) the downtime counts as idle time, as it would
for the kernel's conntrack; after a reboot the saved ages are kept. A state file of another
lab, another plan or a bad one is ignored with the reason in the log and in ``counters``
(``restore``); the lab then starts afresh.

Every engine records its connection events (NEW/UPDATE/DESTROY, and REJECT for refused packets)
in a bounded C ring (hyperplane.engine.types.Event); each tick the loop drains the rings into the
event subscribers and the flow-log writer (hyperplane.datapath.flowlogs), which at the end of each
aggregation interval also collects the per-connection traffic deltas from the engines.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from hyperplane import netns, topology
from hyperplane.control import CONTROL_ARGS, CONTROL_LINE_MAX
from hyperplane.datapath import flowlogs, steal
from hyperplane.datapath.statefile import (
    RESTORE_COUNTS, boot_id, check_state_doc, default_state_file, encode_state,
    read_state_file, state_parts, write_state_file)
from hyperplane.engine.config import EngineConfig, Eni, Timeouts
from hyperplane.engine.constants import TcpState, UdpState
from hyperplane.engine.ctfilter import Filter
from hyperplane.errors import LabConfigError
from hyperplane.labconfig import bare, eni_id, lab_mac
from hyperplane.vpc import ControlPlane, ControlPlaneError

log = logging.getLogger("hyperplane.datapath")

#: The control plane's tick (lifecycle, scale-out decisions): the loop comes back to Python
#: this often even when nothing else happens. Per tick, not per packet.
TICK_MS = 50
# The control socket is served from the loop without ever waiting for a client: every client
# socket is non-blocking, and while any client is connected the loop comes back every
# CONTROL_POLL_MS to read what arrived and write what it can. A client that says nothing, or
# trickles its request, costs the data path nothing; it is answered with an error and closed
# once CONTROL_TIMEOUT passes without a whole request line (or, for a reply, without progress).
CONTROL_TIMEOUT = 2.0
CONTROL_POLL_MS = 2
#: Clients served at once (beyond this a new client is told so and closed at once), and
#: connections the kernel queues before they are accepted (a full queue fails connect(2) with
#: EAGAIN for a non-blocking or timed client, so it is deep; the kernel caps it at somaxconn).
CONTROL_CLIENTS_MAX = 64
CONTROL_BACKLOG = 1024
#: Only these users may use the control socket, checked with SO_PEERCRED on every connection
#: (the socket file is mode 0600 as well: this holds even if someone loosens it).
CONTROL_UIDS = frozenset({0, os.geteuid()})
#: Connection events each engine's ring holds between two ticks (160 bytes each, 2.5 MiB a
#: ring): 16,384 per 50 ms tick is room for 327,000 connection events a second per ENI key;
#: more are counted as lost (events_lost), as conntrack -E reports ENOBUFS.
EVENT_RING = 16384
#: REJECT events (refused packets) each engine keeps per tick, 20,000 a second: a port scan
#: must not turn into Python work per packet in the data path's thread. Past it they count as
#: lost, and the flow-log interval says SKIPDATA, as AWS's does when records are skipped.
REJECTS_PER_TICK = 1000
#: Bytes of event lines waiting for a slow `conntrack events` reader before further events
#: for it are counted as lost instead of queued.
SUBSCRIBER_BACKLOG = 8 << 20
EVENT_KINDS = ("new", "update", "destroy", "reject")
#: Seconds between two saves of the connection tables while the data path runs (from the tick,
#: never per packet), so a daemon that is killed rather than stopped loses at most this much.
SAVE_INTERVAL = 10.0
#: ...and at least this many times as long as the last save took. 60,000 connections: the
#: snapshots hold the loop 16 ms; encoding (87 ms, base64 + JSON) and writing with fsync run in
#: a thread beside it (Daemon.save_in_background), taking the GIL in pieces of tens of ms.
SAVE_SHARE = 20


def event_json(ev, timeouts: Optional[List[float]] = None) -> Dict[str, Any]:
    """An Event as one JSON object; ``timeout`` is the state's full idle timeout (what
    conntrack -E prints for NEW and UPDATE), None for DESTROY and REJECT."""
    d = ev._asdict()
    d["orig"] = ev.orig._asdict()
    d["reply"] = ev.reply._asdict() if ev.reply is not None else None
    d["timeout"] = None
    if timeouts is not None and ev.kind in ("new", "update"):
        names = TcpState if ev.proto == "tcp" else UdpState
        d["timeout"] = timeouts[names[ev.state].value]
    return d


class _Subscriber:
    """A `conntrack events` client: its filter, the kinds it wants, bytes not yet written."""

    def __init__(self, conn: socket.socket, flt: Filter, kinds: List[str]):
        self.conn = conn
        self.filter = flt
        self.kinds = set(kinds)
        self.pending = bytearray()
        self.lost = 0


class _Client:
    """A control connection: the request bytes read so far, then the reply bytes not yet
    written, and the time by which the next of them must arrive or leave."""

    __slots__ = ("conn", "buf", "out", "deadline")

    def __init__(self, conn: socket.socket, deadline: float):
        self.conn = conn
        self.buf = bytearray()
        self.out: Optional[bytearray] = None
        self.deadline = deadline


Key = Tuple[str, Tuple[str, ...]]


class _KeyGroup:
    """The data path's side of one ENI key (subnet, security groups): an engine (its
    connection table, one ENI address per scale-out ENI), a group in the DataPath, and the key's
    link into the subnet, which answers for every live ENI address of the key."""

    def __init__(self, key: Key, engine, group: int, link: int, ifname: str, mac: str = ""):
        self.key = key
        self.engine = engine
        self.group = group
        self.link = link
        self.ifname = ifname
        self.mac = mac
        self.index: Dict[str, int] = {}      # ENI id -> index in the engine
        self.addresses: Dict[str, List[str]] = {}  # ENI id -> addresses the link answers for


class Daemon:
    """The data path of one lab plan (see hyperplane.labconfig.Plan), driven by the VPC control
    plane (hyperplane.vpc.ControlPlane), which decides when ENIs become available, retire or go
    away and which key each environment uses. The daemon is its ``effects``: it turns those
    decisions into DataPath and Engine calls."""

    def __init__(self, plan, control_path: Optional[str], initial_active: bool = False, *,
                 state_file: Optional[str] = "", restore: bool = True,
                 save_interval: float = SAVE_INTERVAL):
        """``state_file``: where the state is saved and restored from ("": the lab
        directory's ``conntrack.state`` when that directory exists; None: nowhere).
        ``restore=False`` starts afresh even when a matching state file exists."""
        from hyperplane.engine._engine import DataPath

        self.plan = plan
        self.control_path = control_path
        self.started = time.time()
        self.offset = 0.0  # the lab clock runs ahead of the monotonic clock by this much
        self.dp = DataPath()
        self.dp.ring_frames = plan.datapath.ring_frames   # before any link is added
        if plan.datapath.inbound_cpus:
            self.dp.start_inbound_worker(plan.datapath.inbound_cpus)
            log.info("inbound worker on CPU(s) %s", sorted(plan.datapath.inbound_cpus))
        self.keys: Dict[Key, _KeyGroup] = {}
        self.env_links: Dict[str, int] = {}
        # veth link -> (its ifname, None when the kernel's stack is kept off it, else why not)
        self.kernel_stack: Dict[int, Tuple[str, Optional[str]]] = {}
        self.natgw: Dict[str, Any] = {}
        self.stop_reason: Optional[str] = None
        self._ctl: Optional[socket.socket] = None
        self._wake_r = self._wake_w = -1
        self._wake_bit = self._ctl_bit = 0
        self._next_tick = 0.0
        self._subs: List[_Subscriber] = []
        self._ev_kinds: frozenset = frozenset()   # the event kinds the engines record
        self._clients: List[_Client] = []   # control connections being read or answered
        self._ring_lost = 0   # events the engines' rings lost, as last told to subscribers
        self.events_sent = 0
        self.flowlogs = None   # hyperplane.datapath.flowlogs.FlowLogs, when the plan asks for them
        self._macs = {e.mac for e in plan.enis}
        lc = plan.lifecycle
        self.port_min = 65536 - lc.ports_per_eni
        self.state_file = default_state_file(plan.name) if state_file == "" else state_file
        self.save_interval = save_interval
        self._next_save = time.monotonic() + save_interval
        self.saves = {"saved": 0, "failed": 0, "last_error": None, "last_connections": 0,
                      "last_seconds": None, "last_loop_seconds": None}
        self._save_thread: Optional[threading.Thread] = None
        self.restore_report: Dict[str, Any] = {"state_file": self.state_file,
                                               "restored_from": None, "ignored": None}
        saved = None
        if self.state_file and not restore:
            self.restore_report["ignored"] = "restore switched off (--no-restore)"
            log.info("restore: switched off; starting afresh")
        elif self.state_file:
            saved = self._read_saved()

        for eni in plan.enis:
            key = (eni.subnet, tuple(sorted(eni.security_groups)))
            self._add_key(key, eni.node_ifname, eni.mac, first=eni)
        if saved is not None:
            saved = self._restore_keys(saved)
        default_group = next(iter(self.keys.values())).group if self.keys else None
        for env in plan.envs:
            if default_group is None:
                log.warning("environment %s: no ENI key at all, so no link", env.name)
                continue
            key = self._key_of_eni(env.eni)
            g = self.keys[key].group if key else default_group
            if env.attach == "tap":
                with netns.entered(env.netns):
                    fd = netns.open_tap(env.ifname)
                li = self.dp.add_link("env", g, name=env.name, mac=env.gw_mac, tap_fd=fd)
            else:
                li = self._add_veth_link("env", g, env.name, env.gw_mac, env.node_ifname)
            for a in (env.gw4, env.gw6):
                if a:
                    self.dp.add_address(li, a)
            for a in (env.ipv4, env.ipv6):
                if a:
                    self.dp.set_environment(li, bare(a))
            self.env_links[env.name] = li
            fn = plan.function(env.function)
            self.dp.set_link_ipv6(li, bool(fn.ipv6_allowed_for_dual_stack))
            self.dp.set_link_state(li, "pending" if fn.subnet_ids else "detached")
        for nat in plan.nat_gateways:
            self._add_nat_gateway(nat)
        cp_state = None
        if saved is not None:
            cp_state = self._restore_tables(saved)
        if cp_state is not None:
            try:
                self.cp = ControlPlane(plan, self, self.now(), restored=cp_state,
                                       shift=self.restore_report["shift"])
            except ValueError as e:   # checked before any effect: start afresh
                self._restore_failed(f"control plane: {e}")
                cp_state = None
        if cp_state is None:
            self.cp = ControlPlane(plan, self, self.now(), initial_active=initial_active)
        self._open_flowlogs()

    # ---- building blocks ----------------------------------------------------------------------
    def now(self) -> float:
        """The lab clock: monotonic time plus what `hyperplane clock advance` added."""
        return time.monotonic() + self.offset

    def _add_veth_link(self, role: str, group: int, name: str, mac: str, ifname: str) -> int:
        """A data path link on the node namespace's veth ``ifname``, with the kernel's IP
        stack kept off it (hyperplane.datapath.steal): the node answers nothing, so what its stack would
        do with the frames is work thrown away on the sender's CPU. Where that cannot be done
        the link works as before, and its counters say why (``kernel_stack``)."""
        li = self.dp.add_link(role, group, name=name, mac=mac, ifname=ifname)
        try:
            steal.steal(ifname)
            self.kernel_stack[li] = (ifname, None)
        except steal.StealError as e:
            self.kernel_stack[li] = (ifname, str(e))
            log.warning("link %s: the kernel's IP stack still sees its frames: %s", name, e)
        return li

    def _key_of_eni(self, eni_id: str) -> Optional[Key]:
        for e in self.plan.enis:
            if e.id == eni_id:
                return (e.subnet, tuple(sorted(e.security_groups)))
        return None

    def _engine_config(self, enis, timeouts=None, port_min=None, port_max=65535,
                       per_source=None):
        kw = {} if timeouts is None else {"timeouts": timeouts}
        if per_source:
            kw["max_connections_per_source"] = per_source
        return EngineConfig(enis=enis, port_min=self.port_min if port_min is None else port_min,
                            port_max=port_max, **kw)

    def _add_key(self, key: Key, ifname: str, mac: str, first=None, eni=None) -> _KeyGroup:
        """Engine + group + link for a key. The engine starts with the key's first ENI
        disabled: it carries connections only once the control plane says it is available."""
        from hyperplane.engine._engine import Engine

        seed = first or eni
        per_env = self.plan.lifecycle.max_connections_per_environment
        engine = Engine(self._engine_config([Eni(seed.id, ipv4=seed.ipv4, ipv6=seed.ipv6)],
                                            per_source=per_env),
                        clock=self.now)
        engine.set_eni_enabled(0, False)
        engine.enable_events(EVENT_RING)
        self._event_options(engine)
        rules = self.plan.sg_rules(list(key[1]))
        engine.set_egress_rules([(r.cidr, r.protocol, r.from_port, r.to_port) for r in rules])
        g = self.dp.add_group(engine)
        li = self._add_veth_link("eni", g, ifname, mac, ifname)
        s = self.plan.subnet(key[0])
        self.dp.set_subnet(li, s.cidr, s.router4)
        if s.ipv6_cidr:
            self.dp.set_subnet(li, s.ipv6_cidr, s.router6)
        kg = _KeyGroup(key, engine, g, li, ifname, mac)
        kg.index[seed.id] = 0
        self.keys[key] = kg
        return kg

    def _add_nat_gateway(self, nat) -> None:
        """A NAT gateway is a second kind of group: an engine with the NAT-gateway profile
        (source ports 1024-65535, every idle timeout at most ``idle_timeout``), an inside link
        into its public subnet and an outside link onto the internet. A TCP segment of a
        connection it no longer knows (timed out) is answered with a RST, as AWS documents."""
        from hyperplane.engine._engine import Engine

        t = Timeouts()
        idle = float(nat.idle_timeout)
        t = dataclasses.replace(t, **{f.name: min(getattr(t, f.name), idle)
                                      for f in dataclasses.fields(t)})
        t = dataclasses.replace(t, tcp_established=idle, udp_replied=idle)
        cfg = self._engine_config([Eni(eni_id(self.plan.name, nat.id, ()), ipv4=nat.public_ipv4)],
                                  timeouts=t, port_min=1024)
        engine = Engine(cfg, clock=self.now)
        engine.enable_events(EVENT_RING)
        self._event_options(engine)
        g = self.dp.add_group(engine)
        out = self._add_veth_link("eni", g, nat.outside_ifname, nat.outside_mac,
                                  nat.outside_ifname)
        self.dp.add_address(out, nat.public_ipv4)
        self.dp.set_subnet(out, nat.internet_cidr, nat.internet_router4)
        inside = self._add_veth_link("inside", g, nat.inside_ifname, nat.inside_mac,
                                     nat.inside_ifname)
        self.dp.add_address(inside, nat.private_ipv4)
        self.dp.set_subnet(inside, nat.prefix4, nat.router4)
        self.dp.set_group_options(g, rst_unknown_tcp=True)
        self.natgw[nat.id] = engine

    # ---- effects of the control plane ---------------------------------------------------------
    def eni_active(self, eni) -> None:
        kg = self.keys.get(tuple(eni.key))
        if kg is None:
            i = len(self.keys)
            ifname = f"eni{i}"
            while any(k.ifname == ifname for k in self.keys.values()):
                i += 1
                ifname = f"eni{i}"
            mac = lab_mac(self.plan.name, "eni", i, self._macs)
            topology.add_eni_link(self.plan, eni.subnet, ifname, mac)
            kg = self._add_key(tuple(eni.key), ifname, mac, eni=eni)
        if eni.id in kg.index:
            kg.engine.set_eni_enabled(kg.index[eni.id], True)
        else:
            kg.engine.add_eni(Eni(eni.id, ipv4=eni.ipv4, ipv6=eni.ipv6))
            kg.index[eni.id] = len(kg.engine.enis) - 1
        addrs = [a for a in (eni.ipv4, eni.ipv6) if a]
        for a in addrs:
            self.dp.add_address(kg.link, a)
        kg.addresses[eni.id] = addrs
        log.info("ENI %s available: %s on %s", eni.id, " ".join(addrs), kg.ifname)

    def eni_retired(self, eni) -> None:
        kg = self.keys.get(tuple(eni.key))
        if kg is not None and eni.id in kg.index:
            kg.engine.set_eni_enabled(kg.index[eni.id], False)

    def eni_deleted(self, eni) -> None:
        kg = self.keys.get(tuple(eni.key))
        if kg is None or eni.id not in kg.index:
            return
        kg.engine.set_eni_enabled(kg.index[eni.id], False)
        for a in kg.addresses.pop(eni.id, []):
            self.dp.remove_address(kg.link, a)
        log.info("ENI %s deleted", eni.id)

    def env_state(self, env: str, state: str, key) -> None:
        li = self.env_links.get(env)
        if li is None:
            return
        if state == "active" and key is not None:
            self.dp.set_link_group(li, self.keys[tuple(key)].group)
        self.dp.set_link_state(li, state)

    def env_ipv6(self, env: str, allowed: bool) -> None:
        li = self.env_links.get(env)
        if li is not None:
            self.dp.set_link_ipv6(li, allowed)

    # ---- the control plane's tick -------------------------------------------------------------
    def tick(self) -> None:
        links = self.dp.counters()["links"]
        env_packets = {x["name"]: x["rx_packets"] for x in links if x["name"] in self.env_links}
        env_blocked = {x["name"]: x["blocked"] for x in links if x["name"] in self.env_links}
        pools = {k: kg.engine.pool_fill() for k, kg in self.keys.items()}
        exhausted = [k for k, kg in self.keys.items() if kg.engine.take_signals()]
        self.cp.tick(self.now(), env_packets=env_packets, env_blocked=env_blocked, pools=pools,
                     exhausted=exhausted)
        self.pump_events()
        if self.state_file and time.monotonic() >= self._next_save and \
                self.save_in_background():
            # the snapshots hold the loop (about 0.3 us a connection) and the writer thread
            # takes the GIL now and then: never more than 1/SAVE_SHARE of the time, however
            # big the tables grow
            took = self.saves["last_seconds"] or 0.0
            self._next_save = time.monotonic() + max(self.save_interval, SAVE_SHARE * took)

    # ---- events and flow logs -----------------------------------------------------------------
    def engines(self) -> List[Tuple[Any, Optional[str]]]:
        """(engine, NAT gateway id or None) for every connection table of the data path."""
        return [(kg.engine, None) for kg in self.keys.values()] + \
            [(e, nid) for nid, e in self.natgw.items()]

    def wall(self) -> float:
        """Unix time on the lab clock (flow-log start/end): wall time plus the clock offset."""
        return time.time() + self.offset

    def eni_addresses(self) -> Dict[str, List[str]]:
        out = {eid: list(a) for kg in self.keys.values() for eid, a in kg.addresses.items()}
        for nat in self.plan.nat_gateways:
            out[eni_id(self.plan.name, nat.id, ())] = [nat.public_ipv4]
        return out

    def _open_flowlogs(self) -> None:
        cfg = getattr(self.plan, "flow_logs", None)
        if cfg is None or not getattr(cfg, "enabled", True) or not self.control_path:
            return
        self.flowlogs = flowlogs.FlowLogs(
            os.path.join(os.path.dirname(self.control_path), "flowlogs"),
            interval=cfg.interval, account_id=cfg.account_id, start=self.wall())
        self._event_options()

    def _wanted_kinds(self) -> frozenset:
        kinds = set()
        for sub in self._subs:
            kinds |= sub.kinds
        if self.flowlogs is not None:
            kinds |= {"destroy", "reject"}   # the only kinds that carry traffic for them
        return frozenset(kinds)

    def _event_options(self, engine=None) -> None:
        """Let the engines record only the event kinds someone reads (a kind nobody asked for
        costs nothing, not even an Event object), with the reject budget per tick."""
        if engine is not None:
            engine.event_options(kinds=sorted(self._ev_kinds), reject_limit=REJECTS_PER_TICK)
            return
        kinds = self._wanted_kinds()
        if kinds != self._ev_kinds:
            self._ev_kinds = kinds
            for e, _ in self.engines():
                e.event_options(kinds=sorted(kinds), reject_limit=REJECTS_PER_TICK)

    def pump_events(self) -> None:
        """Drain every engine's event ring into the subscribers and the flow logs; at the end
        of a flow-log interval collect the traffic deltas and write the interval's records."""
        self._event_options()
        ring_lost = sum(e.events_lost for e, _ in self.engines())
        new_losses, self._ring_lost = ring_lost - self._ring_lost, ring_lost
        if not self._subs and self.flowlogs is None:   # nobody listens: no Event objects
            for engine, _ in self.engines():
                engine.discard_events()
            return
        batch = []
        for engine, _ in self.engines():
            evs = engine.take_events()
            if evs:
                batch.append((engine, evs))
        if self._subs:   # (losses from before a reader subscribed are not its losses)
            self._fan_out(batch, new_losses)
        fl = self.flowlogs
        if fl is not None:
            for _, evs in batch:
                fl.add(evs)
            wall = self.wall()
            if fl.due(wall):
                for engine, _ in self.engines():
                    fl.add(engine.flow_collect())
                    fl.add(engine.take_events())   # what expired while collecting
                lost = sum(e.events_lost for e, _ in self.engines())
                fl.write(wall, self.eni_addresses(), events_lost=lost)

    def _fan_out(self, batch, ring_lost: int = 0) -> None:
        """Queue each subscriber's matching events; ``ring_lost`` events the engines' rings
        dropped since the last call are reported to every subscriber (they may have matched)."""
        alive = []
        for sub in self._subs:
            sub.lost += ring_lost
            lines = []
            for engine, evs in batch:
                tmo = engine.config.timeouts.as_list()
                for ev in evs:
                    if ev.kind in sub.kinds and sub.filter.match_event(ev):
                        lines.append(json.dumps(event_json(ev, tmo)))
            if len(sub.pending) > SUBSCRIBER_BACKLOG:
                sub.lost += len(lines)
            elif lines or sub.lost:
                n = len(lines)
                if sub.lost:
                    lines.insert(0, json.dumps({"kind": "lost", "count": sub.lost}))
                    sub.lost = 0
                sub.pending += ("\n".join(lines) + "\n").encode()
                self.events_sent += n
            if self._flush_sub(sub):
                alive.append(sub)
            else:
                sub.conn.close()
        self._subs = alive

    @staticmethod
    def _flush_sub(sub: _Subscriber) -> bool:
        """Write what the subscriber's socket takes; False when the client went away."""
        try:
            if not sub.pending:   # nothing to write: did the client hang up?
                return sub.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            n = sub.conn.send(sub.pending)
            del sub.pending[:n]
            return True
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def advance_clock(self, seconds: float) -> float:
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or \
                not 0 <= seconds <= 10 * 365 * 86400:
            raise ValueError("advance must be a number of seconds from 0 to ten years")
        self.offset += float(seconds)
        self.dp.set_clock_offset(self.offset)
        now = self.now()
        for engine, _ in self.engines():   # what the jump timed out is gone when we answer
            engine.expire(now=now)
        self.tick()
        return now

    # ---- restart without loss ----------------------------------------------------------------
    def state_doc(self, final: bool) -> Dict[str, Any]:
        """The state file's content (JSON-ready): see the module docstring. Connection tables
        are the engines' snapshot blobs, base64, each with its SHA-256."""
        return encode_state(state_parts(self, final))

    def save_state(self, final: bool = False) -> bool:
        """Write the state file atomically (mode 0600), here and now (at shutdown). Never
        raises: a failed save is logged and counted (``saves.failed``)."""
        self._join_save()
        t0 = time.monotonic()
        try:
            parts = state_parts(self, final)
        except Exception as e:   # noqa: BLE001 - counted, and the data path goes on
            self._saved(None, t0, 0.0, e)
            return False
        return self._write_parts(parts, t0, time.monotonic() - t0)

    def save_in_background(self) -> bool:
        """The periodic save. Only the engines' snapshots (C, about 0.3 us a connection) are
        taken in the loop's thread; encoding, writing and fsync run in a thread of their own
        while the loop goes on forwarding (hp_dp_poll runs without the GIL). Measured at
        60,000 connections: the loop is held 16 ms for the snapshot, where the whole save held
        it about 0.2 s (87 ms of base64 and JSON, 70-120 ms of write and fsync to the run
        directory's ext4): at 175 kpps, more than the environment ring's 4,096 frames.
        False, and nothing started, while the previous save is still being written."""
        if self._save_thread is not None and self._save_thread.is_alive():
            return False
        t0 = time.monotonic()
        try:
            parts = state_parts(self, False)
        except Exception as e:   # noqa: BLE001
            self._saved(None, t0, 0.0, e)
            return False
        held = time.monotonic() - t0
        self._save_thread = threading.Thread(target=self._write_parts, args=(parts, t0, held),
                                             name="hyperplane-save", daemon=True)
        self._save_thread.start()
        return True

    def _join_save(self) -> None:
        if self._save_thread is not None:
            self._save_thread.join()
            self._save_thread = None

    def _write_parts(self, parts: Dict[str, Any], t0: float, held: float) -> bool:
        try:
            doc = encode_state(parts)
            write_state_file(self.state_file, doc)
        except Exception as e:   # noqa: BLE001
            self._saved(None, t0, held, e)
            return False
        self._saved(sum(k["connections"] for k in doc["keys"] + doc["nat_gateways"]), t0, held,
                    None, final=parts["final"])
        return True

    def _saved(self, n: Optional[int], t0: float, held: float, error: Optional[BaseException],
               final: bool = False) -> None:
        """Count one save (from whichever thread wrote it; the counters are plain ints, each
        written by the one save in flight)."""
        if error is not None:
            self.saves["failed"] += 1
            self.saves["last_error"] = f"{type(error).__name__}: {error}"
            log.error("saving the state to %s failed: %s", self.state_file, error)
            return
        self.saves["saved"] += 1
        self.saves["last_connections"] = n
        self.saves["last_seconds"] = round(time.monotonic() - t0, 6)
        self.saves["last_loop_seconds"] = round(held, 6)
        if final:
            log.info("state saved to %s: %d connection(s)", self.state_file, n)

    def _ignore(self, why: str) -> None:
        self.restore_report["ignored"] = why
        log.warning("restore: %s is ignored: %s; starting afresh", self.state_file, why)

    def _read_saved(self) -> Optional[Dict[str, Any]]:
        """The saved state if there is a usable one for this lab and plan (checked: format,
        version, lab, plan hash, the blobs' SHA-256), else None with the reason logged."""
        try:
            doc = read_state_file(self.state_file)
        except FileNotFoundError:
            log.info("restore: no state file %s; starting afresh", self.state_file)
            return None
        except (OSError, ValueError) as e:
            self._ignore(str(e))
            return None
        try:
            check_state_doc(doc, self.plan)
        except ValueError as e:
            self._ignore(str(e))
            return None
        same_boot = doc["boot_id"] == boot_id()
        self.offset = float(doc["offset"])
        self.dp.set_clock_offset(self.offset)
        # same boot: the clock ran on while we were down (that time is idle time, as for the
        # kernel's conntrack); another boot: the saved ages are kept
        shift = 0.0 if same_boot else self.now() - float(doc["saved_now"])
        self.restore_report.update(
            restored_from=self.state_file, final=bool(doc["final"]), same_boot=same_boot,
            shift=shift, saved_pid=doc["pid"], down_for=max(0.0, time.time() - doc["saved_wall"]),
            **dict.fromkeys(RESTORE_COUNTS, 0))
        return doc

    def _restore_failed(self, why: str) -> None:
        """A check that passed the file but failed while applying it: drop whatever was
        restored so far and start afresh."""
        for e, _ in self.engines():
            e.flush()
        self.restore_report.update(dict.fromkeys(RESTORE_COUNTS, 0))
        self.restore_report["restored_from"] = None
        self._ignore(why)

    def _restore_keys(self, doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The saved ENI keys: a key the plan does not have (a function update's) gets its
        link and engine back under the saved name and MAC, and every engine gets its ENIs in
        the saved order (index i of the saved table = index i here, as restore needs), all
        closed to new connections until the control plane opens them."""
        try:
            for i, k in enumerate(doc["keys"]):
                key = (k["key"][0], tuple(sorted(k["key"][1])))
                first = k["enis"][0]
                kg = self.keys.get(key)
                if kg is None:
                    if key[0] not in {s.id for s in self.plan.subnets}:
                        raise ValueError(f"keys[{i}]: subnet {key[0]!r} is not in the plan")
                    self._macs.add(k["mac"])
                    topology.add_eni_link(self.plan, key[0], k["ifname"], k["mac"])
                    seed = Eni(first["id"], ipv4=first["ipv4"], ipv6=first["ipv6"])
                    kg = self._add_key(key, k["ifname"], k["mac"], eni=seed)
                have = kg.engine.enis
                for j, x in enumerate(k["enis"]):
                    if j < len(have):
                        if (have[j].id, have[j].ipv4, have[j].ipv6) != \
                                (x["id"], x["ipv4"], x["ipv6"]):
                            raise ValueError(f"keys[{i}].enis[{j}]: {x['id']} is not this "
                                             f"lab's ENI {have[j].id}")
                        continue
                    kg.engine.add_eni(Eni(x["id"], ipv4=x["ipv4"], ipv6=x["ipv6"]))
                    kg.engine.set_eni_enabled(j, False)
                    kg.index[x["id"]] = j
        except Exception as e:   # noqa: BLE001 - whatever it was, the lab must still start
            self._restore_failed(f"ENI keys: {type(e).__name__}: {e}")
            return None
        return doc

    def _restore_tables(self, doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Every saved connection table into its engine (same ENIs, same ports, timers moved
        by the shift); the control plane's saved state, or None when restoring failed."""
        import base64

        now, shift = self.now(), self.restore_report["shift"]
        pairs = [(self.keys[(k["key"][0], tuple(sorted(k["key"][1])))].engine, k,
                  k["enis"][0]["id"]) for k in doc["keys"]]   # a key's table: its first ENI
        for n in doc["nat_gateways"]:
            if n["id"] not in self.natgw:
                self._restore_failed(f"NAT gateway {n['id']} is not in the plan")
                return None
            pairs.append((self.natgw[n["id"]], n, n["id"]))
        per_table = []
        try:
            for engine, k, what in pairs:
                got = engine.restore(base64.b64decode(k["blob"]), now, shift)
                per_table.append({"table": what, **{c: int(got.get(c, 0))
                                                    for c in RESTORE_COUNTS}})
                for c in RESTORE_COUNTS:
                    self.restore_report[c] += int(got.get(c, 0))
        except (ValueError, TypeError, AttributeError) as e:
            self._restore_failed(f"connection table: {e}")
            return None
        r = self.restore_report
        r["tables"] = per_table
        log.info("restore: %d connection(s) restored from %s (saved %s, down %.1f s, %s "
                 "boot; expired %d, ENI mismatch %d, duplicate %d, table full %d, invalid %d)",
                 r["restored"], self.state_file, "at shutdown" if r["final"] else "periodically",
                 r["down_for"], "same" if r["same_boot"] else "another", r["expired"],
                 r["eni_mismatch"], r["duplicate"], r["table_full"], r["invalid"])
        return doc["control_plane"]

    # ---- control socket ---------------------------------------------------------------------
    def open_control(self) -> None:
        """Listen on the control socket. It is bound under umask 177, so the file is mode 0600
        (root's) from the moment it exists; a chmod after bind would leave a window. Every
        connection is also checked with SO_PEERCRED (:data:`CONTROL_UIDS`)."""
        if not self.control_path:
            return
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(self.control_path)
        finally:
            os.umask(old)
        s.listen(CONTROL_BACKLOG)
        s.setblocking(False)
        self._ctl = s
        self._ctl_bit = 1 << self.dp.watch(s.fileno())

    def _serve_control(self) -> None:
        """Accept new control clients, then take every client as far as it goes without
        waiting: read its request line, answer it, write the answer. The loop calls this when
        the control socket is readable and, while any client is connected, every
        CONTROL_POLL_MS; nothing here ever blocks, so the data path keeps forwarding whatever a
        client does."""
        now = time.monotonic()
        while self._ctl is not None:
            try:
                conn, _ = self._ctl.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. out of fds: the client stays queued; try again later
                log.warning("control socket: accept failed: %s", e)
                break
            self._accept(conn, now)
        self._clients = [c for c in self._clients if self._step(c, now)]

    def _accept(self, conn: socket.socket, now: float) -> None:
        conn.setblocking(False)
        uid = _peer_uid(conn)
        if uid not in CONTROL_UIDS:
            log.warning("control socket: refused a connection from uid %s (root only)", uid)
            _send_quietly(conn, {"ok": False, "error": "permission denied: the control "
                                 "socket is root-only"})
            conn.close()
            return
        if len(self._clients) >= CONTROL_CLIENTS_MAX:
            _send_quietly(conn, {"ok": False, "error": f"busy: {CONTROL_CLIENTS_MAX} control "
                                 "clients are connected already; try again"})
            conn.close()
            return
        self._clients.append(_Client(conn, now + CONTROL_TIMEOUT))

    def _step(self, c: "_Client", now: float) -> bool:
        """Move one client on: False once it is done with (closed, or handed to the event
        subscribers), True while it still has something to send or to be sent."""
        if c.out is None:
            eof = False
            try:
                while b"\n" not in c.buf and len(c.buf) <= CONTROL_LINE_MAX:
                    chunk = c.conn.recv(CONTROL_LINE_MAX)
                    if not chunk:
                        eof = True
                        break
                    c.buf += chunk
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:          # reset by the client: nobody to answer
                c.conn.close()
                return False
            end = c.buf.find(b"\n")
            sub = None
            if 0 <= end <= CONTROL_LINE_MAX:
                reply, sub = self._answer(c.conn, bytes(c.buf[:end]))
            elif len(c.buf) > CONTROL_LINE_MAX:
                reply = _refusal(f"request line longer than {CONTROL_LINE_MAX} bytes; one "
                                 "request is one JSON object on one line")
            elif eof and c.buf.strip():  # the client shut down writing after its request
                reply, sub = self._answer(c.conn, bytes(c.buf))
            elif eof:
                reply = _refusal('empty request; send one JSON object on one line, e.g. '
                                 '{"cmd": "ping"}')
            elif now >= c.deadline:
                reply = _refusal(f"no complete request line within {CONTROL_TIMEOUT:g} s; "
                                 "send the request as soon as you connect, ending in a newline")
            else:
                return True          # wait for the rest of the line
            c.buf = bytearray()
            if sub is not None:      # `conntrack events`: the connection stays open for events
                sub.pending += _reply_line(reply)
                if self._flush_sub(sub):
                    self._subs.append(sub)
                    self._event_options()   # record its kinds from now on
                else:
                    sub.conn.close()
                return False
            c.out = bytearray(_reply_line(reply))
            c.deadline = now + CONTROL_TIMEOUT
        try:
            while c.out:
                n = c.conn.send(c.out)
                del c.out[:n]
                c.deadline = now + CONTROL_TIMEOUT   # progress: the client is reading
        except (BlockingIOError, InterruptedError):
            if now < c.deadline:
                return True          # the socket buffer is full: write the rest later
        except OSError:
            pass
        c.conn.close()
        return False

    def _answer(self, conn: socket.socket,
                line: bytes) -> Tuple[Dict[str, Any], Optional[_Subscriber]]:
        """The reply to one request line, and the new subscriber if it was a valid
        ``events`` request."""
        try:
            req = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            return _refusal(f"the request is not UTF-8 text ({e.reason} at byte {e.start})"), None
        except (ValueError, RecursionError) as e:
            return _refusal(f"the request is not JSON ({e}); send one object per line, e.g. "
                            '{"cmd": "ping"}'), None
        if isinstance(req, dict) and req.get("cmd") == "events":
            return self._subscribe(conn, req)
        return self.handle(req), None

    def _subscribe(self, conn: socket.socket,
                   req: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[_Subscriber]]:
        try:
            _command(req)
            flt = Filter(req.get("filter"))
            kinds = req.get("kinds")
            if kinds is None:
                kinds = ["new", "update", "destroy"]
            if not isinstance(kinds, list) or not kinds or \
                    not all(isinstance(k, str) and k in EVENT_KINDS for k in kinds):
                raise ValueError(f"'kinds' must be a non-empty list drawn from "
                                 f"{list(EVENT_KINDS)}")
        except (TypeError, ValueError) as e:
            return _refusal(f"bad events request: {e}"), None
        return {"ok": True}, _Subscriber(conn, flt, kinds)

    def handle(self, req: Any) -> Dict[str, Any]:
        """The reply to one control request (any decoded JSON value): always a dict with
        ``ok``, and ``error`` naming what was wrong when ok is false. Never raises: a request
        must not be able to stop the data path."""
        try:
            cmd = _command(req)
        except ValueError as e:
            return _refusal(str(e))
        try:
            return self._handle(cmd, req)
        except ControlPlaneError as e:
            return {"ok": False, "error": str(e), "code": e.code}
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            return _refusal(f"bad {cmd} request: {e}")
        except Exception as e:   # a bug: say so, log it, and keep the data path running
            log.exception("control request %r failed", cmd)
            return _refusal(f"{cmd} failed: internal error {type(e).__name__}: {e}; see the "
                            "data path's log")

    def _handle(self, cmd: str, req: Dict[str, Any]) -> Dict[str, Any]:
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid(), "name": self.plan.name,
                    "uptime": time.time() - self.started}
        if cmd == "counters":
            return {"ok": True, **self.counters()}
        if cmd == "conntrack":
            return {"ok": True, "now": self.now(), "entries": self.conntrack(req.get("filter"))}
        if cmd == "conntrack_flush":
            return {"ok": True, "deleted": self.conntrack_flush(req.get("filter"))}
        if cmd == "neighbours":
            return {"ok": True, "neighbours": self.dp.neighbours()}
        if cmd == "enis":
            self.tick()
            return {"ok": True, "now": self.now(), "enis": self.cp.eni_list(self.now())}
        if cmd == "functions":
            self.tick()
            return {"ok": True, "now": self.now(), "functions": self.cp.function_list(self.now())}
        if cmd == "function_update":
            r = self.cp.update_function(
                _text(req, "name"), subnet_ids=_texts(req, "subnet_ids"),
                security_group_ids=_texts(req, "security_group_ids"),
                ipv6_allowed=_flag(req, "ipv6"), now=self.now())
            self.tick()
            return {"ok": True, "function": r}
        if cmd == "invoke":
            r = self.cp.invoke(_text(req, "name"), self.now())
            return {"ok": True, "result": r}
        if cmd == "clock":
            now = self.advance_clock(req.get("advance", 0))
            return {"ok": True, "now": now, "offset": self.offset}
        if cmd == "stop":
            self.stop_reason = "control request"
            return {"ok": True}
        if cmd == "events":
            return _refusal("events keeps its connection open: send it over the control socket")
        return _refusal(f"unknown command {cmd!r}; known: {', '.join(CONTROL_ARGS)}")

    def counters(self) -> Dict[str, Any]:
        out = self.dp.counters()
        for i, link in enumerate(out["links"]):
            if i not in self.kernel_stack:
                link["kernel_stack"] = "not on this link (a TAP)"
            else:
                why = self.kernel_stack[i][1]
                link["kernel_stack"] = "bypassed" if why is None else f"sees every frame: {why}"
        out["enis"] = [{"id": kg.engine.enis[0].id, "key": [kg.key[0], list(kg.key[1])],
                        "eni_ids": list(kg.index), "live_eni_ids": list(kg.addresses),
                        **kg.engine.counters(),
                        "pool": kg.engine.pool_fill(),
                        "eni_counters": kg.engine.eni_counters()}
                       for kg in self.keys.values()]
        out["nat_gateways"] = [{"id": nid, **e.counters(), "pool": e.pool_fill(),
                                "eni_counters": e.eni_counters()}
                               for nid, e in self.natgw.items()]
        out["events"] = {"subscribers": len(self._subs), "sent": self.events_sent,
                         "lost": sum(e.events_lost for e, _ in self.engines())}
        if self.flowlogs is not None:
            out["flow_logs"] = self.flowlogs.stats()
        out["control_plane"] = dict(self.cp.counters)
        out["clock"] = {"now": self.now(), "offset": self.offset}
        out["restore"] = dict(self.restore_report)
        out["saves"] = dict(self.saves)
        return out

    def conntrack(self, spec=None) -> List[Dict[str, Any]]:
        """The tracked connections that match the filter (hyperplane.engine.ctfilter)."""
        flt = Filter(spec)
        rows = []
        for e, nat in self.engines():
            for x in e.entries():
                d = x._asdict()
                d["orig"] = x.orig._asdict()
                d["reply"] = x.reply._asdict()
                d["eni_id"] = x.eni
                if nat:
                    d["nat_gateway"] = nat
                if flt.match_entry(d):
                    rows.append(d)
        return rows

    def conntrack_flush(self, spec=None) -> int:
        """Delete the matching connections (every one without a filter): their ports are free
        again, DESTROY events go out with reason "deleted". Returns how many."""
        flt = Filter(spec)
        n = 0
        for e, _ in self.engines():
            if not flt:
                n += e.flush()
                continue
            for x in e.entries():
                if flt.match(x.family, x.proto, x.state, x.orig, x.reply, x.eni):
                    n += bool(e.delete(x.proto, x.orig))
        self.pump_events()
        return n

    # ---- the loop -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_reason = signal.Signals(signum).name

    def run(self) -> int:
        from hyperplane.engine._engine import POLL_INTERRUPTED, POLL_LINK_DOWN

        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)
        self._wake_bit = 1 << self.dp.watch(self._wake_r)
        self.open_control()
        log.info("data path running: %d ENI link(s), %d environment link(s)",
                 len(self.plan.enis), len(self.plan.envs))
        try:
            self.tick()
            while self.stop_reason is None:
                wait = max(0, int((self._next_tick - time.monotonic()) * 1000))
                if self._clients:   # control clients mid-request: come back for them soon
                    wait = min(wait, CONTROL_POLL_MS)
                r = self.dp.poll(wait)
                if time.monotonic() >= self._next_tick:
                    self._next_tick = time.monotonic() + TICK_MS / 1000
                    self.tick()
                if r == POLL_INTERRUPTED or (r > 0 and r & self._wake_bit):
                    try:
                        os.read(self._wake_r, 512)
                    except BlockingIOError:
                        pass
                if (r > 0 and r & self._ctl_bit) or self._clients:
                    self._serve_control()
                if r > 0 and r & POLL_LINK_DOWN:
                    gone = [x["name"] for x in self.dp.counters()["links"] if not x["up"]]
                    log.warning("interface gone, no longer polled: %s", ", ".join(gone))
        finally:
            self.close()
        log.info("data path stopped (%s)", self.stop_reason)
        return 0

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        try:
            if self.flowlogs is not None:   # the last, partial interval
                self.pump_events()
                for engine, _ in self.engines():
                    self.flowlogs.add(engine.flow_collect())
                    self.flowlogs.add(engine.take_events())
                self.flowlogs.write(self.wall(), self.eni_addresses(),
                                    events_lost=sum(e.events_lost for e, _ in self.engines()),
                                    final=True)
        except Exception:   # never keep the data path from closing
            log.exception("flow logs: the last interval was not written")
        if self.state_file:   # the connections as they stand now that nothing moves any more
            self.save_state(final=True)
        for sub in self._subs:
            sub.conn.close()
        self._subs = []
        for c in self._clients:   # e.g. the reply to `stop`, if it is still unsent
            if c.out:
                _send_quietly_bytes(c.conn, bytes(c.out))
            c.conn.close()
        self._clients = []
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
            try:
                os.unlink(self.control_path)
            except (FileNotFoundError, TypeError):
                pass
        self.dp.close()
        self._release_links()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _release_links(self) -> None:
        """The data path stopped: its veth links go back to how the lab built them, so the
        node's kernel sees their frames again (whoever uses the node namespace next, e.g. a
        kernel NAT for comparison, must not find them silently dropped)."""
        for ifname, why in self.kernel_stack.values():
            if why is not None:
                continue
            try:
                steal.release(ifname)
            except Exception as e:   # never keep the data path from stopping
                log.warning("link %s: the ingress filter stays: %s", ifname, e)
        self.kernel_stack.clear()


def run_plan(plan, control_path: Optional[str], initial_active: bool = False,
             restore: bool = True) -> int:
    """Enter the node namespace and run the data path until SIGINT/SIGTERM or a stop request
    (restoring the lab's saved state first unless ``restore`` is false)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pin_cpus(plan.datapath.cpus, plan.datapath.inbound_cpus)
    netns.enter(plan.node_ns)
    d = Daemon(plan, control_path, initial_active=initial_active, restore=restore)
    return d.run()


def pin_cpus(cpus, inbound_cpus=()) -> None:
    """Run this process on ``cpus`` (``[datapath] cpus``); nothing when empty. A CPU this
    process may not use (offline, outside its cpuset) is a configuration error naming them;
    ``inbound_cpus`` (the inbound worker's, started later) is checked here too, before pinning
    narrows what this process may use."""
    allowed = os.sched_getaffinity(0)
    for field, want in (("datapath.cpus", cpus), ("datapath.inbound_cpus", inbound_cpus)):
        missing = sorted(set(want) - allowed)
        if missing:
            raise LabConfigError(field, f"CPU(s) {missing} are not available here (this "
                                 f"process may use {sorted(allowed)}); pick from those or "
                                 f"leave {field.split('.')[1]} out")
    if not cpus:
        return
    os.sched_setaffinity(0, set(cpus))
    logging.getLogger("hyperplane.datapath.daemon").info("data path pinned to CPU(s) %s", sorted(cpus))


def _command(req: Any) -> str:
    """The request's command, after checking the request's shape: a JSON object whose "cmd"
    is a known command and whose other keys are that command's arguments."""
    if not isinstance(req, dict):
        raise ValueError(f"a request is a JSON object such as {{\"cmd\": \"ping\"}}, not "
                         f"{_json_type(req)}")
    cmd = req.get("cmd")
    known = ", ".join(CONTROL_ARGS)
    if cmd is None:
        raise ValueError(f"the request has no \"cmd\"; it is one of {known}")
    if not isinstance(cmd, str):
        raise ValueError(f"\"cmd\" must be a string, not {_json_type(cmd)}; one of {known}")
    if cmd not in CONTROL_ARGS:
        raise ValueError(f"unknown command {cmd!r}; \"cmd\" is one of {known}")
    extra = sorted(k for k in req if k != "cmd" and k not in CONTROL_ARGS[cmd])
    if extra:
        takes = ", ".join(CONTROL_ARGS[cmd]) or "no arguments"
        raise ValueError(f"{cmd}: unknown argument(s) {', '.join(map(repr, extra))}; it takes "
                         f"{takes}")
    return cmd


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object" if isinstance(v, dict) else type(v).__name__


def _refusal(error: str) -> Dict[str, Any]:
    return {"ok": False, "error": error}


def _reply_line(reply: Dict[str, Any]) -> bytes:
    """One reply as one JSON line; a reply that cannot be encoded becomes an error reply."""
    try:
        return json.dumps(reply).encode() + b"\n"
    except (TypeError, ValueError) as e:
        log.error("control reply not encodable as JSON: %s", e)
        return json.dumps(_refusal(f"internal error: the reply is not JSON ({e})")).encode() + \
            b"\n"


def _send_quietly(conn: socket.socket, reply: Dict[str, Any]) -> None:
    """Best effort, never waiting: for a client that is being turned away."""
    _send_quietly_bytes(conn, _reply_line(reply))


def _send_quietly_bytes(conn: socket.socket, data: bytes) -> None:
    try:
        conn.send(data)
    except OSError:
        pass


_UCRED = struct.Struct("iII")   # struct ucred: pid, uid, gid


def _peer_uid(conn: socket.socket) -> Optional[int]:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED, recorded by the
    kernel at connect time: the client cannot forge it)."""
    try:
        _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        _UCRED.size))
    except (OSError, struct.error):
        return None
    return uid


def _text(req: Dict[str, Any], key: str) -> str:
    v = req.get(key)
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key!r} must be a non-empty string")
    return v


def _texts(req: Dict[str, Any], key: str) -> Optional[List[str]]:
    v = req.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{key!r} must be a list of strings")
    return v


def _flag(req: Dict[str, Any], key: str) -> Optional[bool]:
    v = req.get(key)
    if v is not None and not isinstance(v, bool):
        raise ValueError(f"{key!r} must be true or false")
    return v
