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
VPC control plane (hyperplane.vpc) ticks.

This module holds the Daemon's setup, its loop and tick, and what it reports; the rest of the
Daemon's methods are grouped by concern in mixins of their own modules, all run by the loop's
one thread: the control socket (hyperplane.datapath.control_server), connection events and flow
logs (hyperplane.datapath.events), restart without loss (hyperplane.datapath.restore, whose
periodic save alone writes from a thread of its own) and the control plane's effects
(hyperplane.datapath.effects).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from hyperplane import netns, proc
from hyperplane.datapath import steal
from hyperplane.datapath.control_server import CONTROL_POLL_MS, ControlClient, ControlServer
from hyperplane.datapath.effects import ControlPlaneEffects
from hyperplane.datapath.events import EVENT_RING, EventPump, Subscriber
from hyperplane.datapath.restore import SAVE_INTERVAL, SAVE_SHARE, SaveAndRestore
from hyperplane.datapath.statefile import default_state_file
from hyperplane.datapath.workers import worker_fault, worker_rows
from hyperplane.engine.config import EngineConfig, Eni
from hyperplane.engine.ctfilter import Filter
from hyperplane.errors import LabConfigError, LabError
from hyperplane.labconfig import bare, eni_id
from hyperplane.labconfig.placement import Placement, describe, place, veth_links
from hyperplane.vpc import ControlPlane

log = logging.getLogger("hyperplane.datapath")
#: HYPERPLANE_TAP_IO's values: how TAP links move packets ("" or io_uring: io_uring where it
#: can be set up; rw: one read/writev per packet)
TAP_IO_CHOICES = ("", "io_uring", "rw")

#: The control plane's tick (lifecycle, scale-out decisions): the loop comes back to Python
#: this often even when nothing else happens. Per tick, not per packet.
TICK_MS = 50


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


class Daemon(ControlServer, EventPump, SaveAndRestore, ControlPlaneEffects):
    """The data path of one lab plan (see hyperplane.labconfig.Plan), driven by the VPC control
    plane (hyperplane.vpc.ControlPlane), which decides when ENIs become available, retire or go
    away and which key each environment uses. The daemon is its ``effects``: it turns those
    decisions into DataPath and Engine calls.

    One object, one thread: its methods are grouped by concern into this module and the mixins
    it inherits (see the module docstring), and all of them share the state that ``__init__``
    sets up here, in one place."""

    def __init__(self, plan, control_path: Optional[str], initial_active: bool = False, *,
                 state_file: Optional[str] = "", restore: bool = True,
                 save_interval: float = SAVE_INTERVAL, placement: Optional[Placement] = None):
        """``state_file``: where the state is saved and restored from ("": the lab
        directory's ``conntrack.state`` when that directory exists; None: nowhere).
        ``restore=False`` starts afresh even when a matching state file exists.
        ``placement``: what :func:`run_plan` decided for this process (its loop already
        pinned); None, for a Daemon built inside another process: only what the lab file
        sets explicitly, as ``placement = "none"`` (that process's CPUs are not ours)."""
        # The compiled engine is imported where it is used, never at the top of the module:
        # importing hyperplane.datapath.daemon (e.g. for pin_cpus, or a test's stand-in Daemon)
        # must not need the compiled build.
        from hyperplane.engine._engine import DataPath

        self.plan = plan
        self.control_path = control_path
        self.started = time.time()
        self.offset = 0.0  # the lab clock runs ahead of the monotonic clock by this much
        if placement is None:
            placement = place(dataclasses.replace(plan.datapath, placement="none"),
                              os.sched_getaffinity(0), veth_links(plan))
        self.placement = placement
        tap_io = os.environ.get("HYPERPLANE_TAP_IO", "")
        if tap_io not in TAP_IO_CHOICES:   # read by csrc/hp_io_tap.c
            raise LabError(f"HYPERPLANE_TAP_IO={tap_io!r}: use rw (one read/writev per packet) "
                           "or io_uring (the default), or unset it")
        self.dp = DataPath()
        self.dp.ring_frames = placement.ring_frames   # before any link is added
        if placement.workers > 1:   # before any group or link: a shard, a socket per worker
            cpus = list(placement.worker_cpus) or None
            self.dp.start_workers(placement.workers, cpus)
            log.info("%d workers, on CPU(s) %s", placement.workers, cpus or "any")
        elif placement.inbound_cpus:
            self.dp.start_inbound_worker(placement.inbound_cpus)
            log.info("inbound worker on CPU(s) %s", list(placement.inbound_cpus))
        self.keys: Dict[Key, _KeyGroup] = {}
        self.env_links: Dict[str, int] = {}
        # veth link -> (its ifname, None when the kernel's stack is kept off it, else why not)
        self.kernel_stack: Dict[int, Tuple[str, Optional[str]]] = {}
        # veth link -> the steal mechanism that keeps the stack off it (steal.MECHANISMS' key)
        self.kernel_stack_by: Dict[int, str] = {}
        self.natgw: Dict[str, Any] = {}
        self.stop_reason: Optional[str] = None
        self._ctl: Optional[socket.socket] = None
        self._wake_r = self._wake_w = -1
        self._wake_bit = self._ctl_bit = 0
        self._next_tick = 0.0
        self._subs: List[Subscriber] = []
        self._ev_kinds: frozenset = frozenset()   # the event kinds the engines record
        self._clients: List[ControlClient] = []   # control connections being read or answered
        self._ring_lost = 0   # events the engines' rings lost, as last told to subscribers
        self.events_sent = 0
        self.flowlogs = None   # hyperplane.datapath.flowlogs.FlowLogs, when the plan asks for them
        self._fl_round: Optional[Tuple[float, List[Any]]] = None   # see EventPump
        self._macs = {e.mac for e in plan.enis}
        lc = plan.lifecycle
        self.port_min = 65536 - lc.ports_per_eni
        self.state_file = default_state_file(plan.name) if state_file == "" else state_file
        self.save_interval = save_interval
        self._next_save = time.monotonic() + save_interval
        self.saves = {"saved": 0, "failed": 0, "last_error": None, "last_connections": 0,
                      "last_seconds": None, "last_loop_seconds": None}
        self._save_thread: Optional[threading.Thread] = None
        self._tap_io_said = False
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
                    # as deep as a veth link's ring: the TAP's own 500 packets rode out only
                    # 60 ms of a loop busy elsewhere at 8,000 packets a second (issue 16)
                    netns.set_tx_queue_len(env.ifname, placement.ring_frames)
                li = self.dp.add_link("env", g, name=env.name, mac=env.gw_mac, tap_fd=fd)
                self._say_tap_io(li)
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
    def _say_tap_io(self, li):
        """Log, once per daemon, how TAP links move packets when it is not io_uring (and why)."""
        io, why = self.dp.link_io(li)
        if io != "io_uring" and not self._tap_io_said:
            self._tap_io_said = True
            log.warning("TAP links use %s, one system call per packet (%s)", io, why)

    def _add_veth_link(self, role: str, group: int, name: str, mac: str, ifname: str) -> int:
        """A data path link on the node namespace's veth ``ifname``, with the kernel's IP
        stack kept off it (hyperplane.datapath.steal): the node answers nothing, so what its stack would
        do with the frames is work thrown away on the sender's CPU. Where that cannot be done
        the link works as before, and its counters say why (``kernel_stack``)."""
        li = self.dp.add_link(role, group, name=name, mac=mac, ifname=ifname)
        try:
            how = steal.steal(ifname)
            self.kernel_stack[li] = (ifname, None)
            self.kernel_stack_by[li] = how
            log.info("link %s: the kernel's IP stack kept off with a %s", name,
                     steal.MECHANISMS[how])
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
        """An engine's config: the lab's ``[conntrack]`` timeouts (unless ``timeouts`` is
        given) and table capacity (``max``)."""
        ct = self.plan.conntrack
        kw = {"timeouts": ct.timeouts() if timeouts is None else timeouts,
              "capacity": ct.max}
        if per_source:
            kw["max_connections_per_source"] = per_source
        return EngineConfig(enis=enis, port_min=self.port_min if port_min is None else port_min,
                            port_max=port_max, **kw)

    def _add_key(self, key: Key, ifname: str, mac: str, first=None, eni=None) -> _KeyGroup:
        """Engine + group + link for a key. The engine starts with the key's first ENI
        disabled: it carries connections only once the control plane says it is available."""
        seed = first or eni
        per_env = self.plan.lifecycle.max_connections_per_environment
        engine = self._new_engine(self._engine_config(
            [Eni(seed.id, ipv4=seed.ipv4, ipv6=seed.ipv6)], per_source=per_env))
        engine.set_eni_enabled(0, False)
        engine.enable_events(EVENT_RING)
        self._event_options(engine)
        rules = self.plan.sg_rules(list(key[1]))
        engine.set_egress_rules([(r.cidr, r.protocol, r.from_port, r.to_port) for r in rules])
        g = self.dp.add_group(engine)
        # A segment of a connection the ENI no longer tracks (idle past tcp_established, the
        # 350 s of AWS's Hyperplane-based NAT) is answered with a RST, as the NAT gateway does:
        # the function's socket fails at once with ECONNRESET instead of retransmitting into
        # silence until its own timeout (the reason AWS advises TCP keep-alive under 350 s).
        self.dp.set_group_options(g, rst_unknown_tcp=True)
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
        t = self.plan.conntrack.timeouts()   # [conntrack], each capped at the idle timeout
        idle = float(nat.idle_timeout)
        t = dataclasses.replace(t, **{f.name: min(getattr(t, f.name), idle)
                                      for f in dataclasses.fields(t)})
        t = dataclasses.replace(t, tcp_established=idle, udp_replied=idle)
        cfg = self._engine_config([Eni(eni_id(self.plan.name, nat.id, ()), ipv4=nat.public_ipv4)],
                                  timeouts=t, port_min=1024)
        engine = self._new_engine(cfg)
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

    def _new_engine(self, cfg):
        """A connection table: one Engine, or with workers a ShardedEngine whose shard i takes
        the ports (p >> 1) % workers == i (the one table the control plane sees)."""
        from hyperplane.engine._engine import Engine

        if self.dp.workers == 1:
            return Engine(cfg, clock=self.now)
        from hyperplane.engine.sharded import ShardedEngine

        return ShardedEngine(cfg, self.dp.workers, clock=self.now)

    def engines(self) -> List[Tuple[Any, Optional[str]]]:
        """(engine, NAT gateway id or None) for every connection table of the data path."""
        return [(kg.engine, None) for kg in self.keys.values()] + \
            [(e, nid) for nid, e in self.natgw.items()]

    # ---- the lab clock ------------------------------------------------------------------------
    def now(self) -> float:
        """The lab clock: monotonic time plus what `hyperplane clock advance` added."""
        return time.monotonic() + self.offset

    def wall(self) -> float:
        """Unix time on the lab clock (flow-log start/end): wall time plus the clock offset."""
        return time.time() + self.offset

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

    # ---- what the control requests read and change --------------------------------------------
    def counters(self) -> Dict[str, Any]:
        out = self.dp.counters()
        for i, link in enumerate(out["links"]):
            if i not in self.kernel_stack:
                link["kernel_stack"] = "not on this link (a TAP)"
            else:
                why = self.kernel_stack[i][1]
                link["kernel_stack"] = "bypassed" if why is None else f"sees every frame: {why}"
                if i in self.kernel_stack_by:
                    link["kernel_stack_by"] = steal.MECHANISMS[self.kernel_stack_by[i]]
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
        out["placement"] = self.placement.to_dict()
        out["workers"] = worker_rows(self.dp.worker_counters(),
                                     [e for e, _ in self.engines()],
                                     self.placement.worker_cpus)
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
        from hyperplane.engine._engine import POLL_INTERRUPTED, POLL_LINK_DOWN, POLL_WORKER_DOWN

        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)
        self._wake_bit = 1 << self.dp.watch(self._wake_r)
        self.open_control()
        log.info("data path running: %d ENI link(s), %d environment link(s)",
                 len(self.plan.enis), len(self.plan.envs))
        failed = False
        fault = worker_fault()
        try:
            self.tick()
            while self.stop_reason is None:
                wait = max(0, int((self._next_tick - time.monotonic()) * 1000))
                if self._clients:   # control clients mid-request: come back for them soon
                    wait = min(wait, CONTROL_POLL_MS)
                if self._fl_round is not None:   # a flow-log round: a step after each poll
                    wait = min(wait, 1)   # of 1 ms, which drains the links (0: one pass)
                r = self.dp.poll(wait)
                if fault and time.monotonic() >= fault[1]:
                    self.dp.break_worker(fault[0])   # HYPERPLANE_FAULT (tests only)
                    fault = None
                if time.monotonic() >= self._next_tick:
                    self._next_tick = time.monotonic() + TICK_MS / 1000
                    self.tick()
                if self._fl_round is not None:
                    self.flow_collect_step()
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
                if r > 0 and r & POLL_WORKER_DOWN:
                    # part of the ports would go unserved: stop cleanly instead
                    down = ", ".join(f"worker {w} ({why})" for w, why in self.dp.workers_down())
                    log.error("data path worker stopped: %s; the data path stops", down)
                    self.stop_reason = f"worker stopped: {down}"
                    failed = True
        finally:
            self.close()
        log.info("data path stopped (%s)", self.stop_reason)
        return 1 if failed else 0

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        try:
            if self.flowlogs is not None:   # the last, partial interval
                self.pump_events()
                self.flow_collect_step(limit=None)   # an interval that was due: at once
                for engine, _ in self.engines():
                    self.flowlogs.add(engine.flow_collect())
                    self.flowlogs.add(engine.take_events())
                self.flowlogs.drain()
                self.flowlogs.write(self.wall(), self.eni_addresses(),
                                    events_lost=sum(e.events_lost for e, _ in self.engines()),
                                    final=True, eni_subnets=self.eni_subnets())
                self.flowlogs.close()
        except Exception:   # never keep the data path from closing
            log.exception("flow logs: the last interval was not written")
        if self.state_file:   # the connections as they stand now that nothing moves any more
            self.save_state(final=True)
        for sub in self._subs:
            sub.conn.close()
        self._subs = []
        self.close_control()
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
        self.kernel_stack_by.clear()


def run_plan(plan, control_path: Optional[str], initial_active: bool = False,
             restore: bool = True, log_level: Optional[str] = None) -> int:
    """Enter the node namespace and run the data path until SIGINT/SIGTERM or a stop request
    (restoring the lab's saved state first unless ``restore`` is false), logging at
    ``log_level`` (None: HYPERPLANE_LOG_LEVEL, which lab up/restart pass on, else info)."""
    proc.configure_logging(log_level)
    # decided here, from the CPUs this process may use, before pinning narrows them
    placement = place(plan.datapath, os.sched_getaffinity(0), veth_links(plan))
    log.info("%s", describe(placement.to_dict()))
    pin_cpus(placement.loop_cpus, placement.inbound_cpus)
    netns.enter(plan.node_ns)
    d = Daemon(plan, control_path, initial_active=initial_active, restore=restore,
               placement=placement)
    return d.run()


def pin_cpus(cpus, inbound_cpus=()) -> None:
    """Run this process on ``cpus`` (the placement's loop CPUs); nothing when empty. A CPU this
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
