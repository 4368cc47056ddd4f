"""The data path process: opens the lab's links, runs the C loop, serves the control socket.

One process, one thread. It moves itself into the node namespace, builds one Engine per ENI
(the connection table of one (subnet, security groups) key) and a DataPath with

* an ENI link per ENI: an AF_PACKET ring on the veth into the subnet; the data path answers
  ARP/NDP for the ENI's addresses and finds the subnet's hosts (and the VPC router .1);
* an environment link per execution environment: a TAP fd (opened inside the environment's
  namespace, the way a microVM's virtio-net device is backed by a tap fd its VMM holds) or an
  AF_PACKET ring on the node end of a veth; the data path answers for the gateway address.

Then it loops: ``DataPath.poll`` moves packets in C with the GIL released and comes back only
for the control socket, a signal (SIGINT/SIGTERM stop it cleanly), or every POLL_MS. The
control protocol is one JSON object per line over a root-only Unix socket: ``{"cmd": "ping" |
"counters" | "conntrack" | "neighbours" | "stop"}`` answered by one JSON line.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from hyperplane import netns
from hyperplane.config import EngineConfig, Eni

log = logging.getLogger("hyperplane.datapath")

POLL_MS = 200
# Control requests are served in the loop, so a client that connects and says nothing holds up
# the data path for at most this long; it stays below the ~128 ms of trickle traffic the rx
# rings hold (hp_io.h). Our own client writes its request as soon as it connects.
CONTROL_TIMEOUT = 0.1


def _bare(addr: Optional[str]) -> Optional[str]:
    return addr.split("/")[0] if addr else None


class Daemon:
    """The data path of one lab plan (see hyperplane.labconfig.Plan)."""

    def __init__(self, plan, control_path: Optional[str]):
        from hyperplane._engine import DataPath, Engine

        self.plan = plan
        self.control_path = control_path
        self.started = time.time()
        self.dp = DataPath()
        self.engines: Dict[str, Any] = {}
        self.groups: Dict[str, int] = {}
        self.stop_reason: Optional[str] = None
        self._ctl: Optional[socket.socket] = None
        self._wake_r = self._wake_w = -1
        self._wake_bit = self._ctl_bit = 0
        for eni in plan.enis:
            cfg = EngineConfig(enis=[Eni(eni.id, ipv4=eni.ipv4, ipv6=eni.ipv6)])
            engine = Engine(cfg)
            g = self.dp.add_group(engine)
            self.engines[eni.id] = engine
            self.groups[eni.id] = g
            li = self.dp.add_link("eni", g, name=eni.node_ifname, mac=eni.mac,
                                  ifname=eni.node_ifname)
            for a in (eni.ipv4, eni.ipv6):
                if a:
                    self.dp.add_address(li, a)
            self.dp.set_subnet(li, eni.prefix4, eni.router4)
            if eni.ipv6 and eni.prefix6:
                self.dp.set_subnet(li, eni.prefix6, eni.router6)
        for env in plan.envs:
            g = self.groups[env.eni]
            if env.attach == "tap":
                with netns.entered(env.netns):
                    fd = netns.open_tap(env.ifname)
                li = self.dp.add_link("env", g, name=env.name, mac=env.gw_mac, tap_fd=fd)
            else:
                li = self.dp.add_link("env", g, name=env.name, mac=env.gw_mac,
                                      ifname=env.node_ifname)
            for a in (env.gw4, env.gw6):
                if a:
                    self.dp.add_address(li, a)
            for a in (env.ipv4, env.ipv6):
                if a:
                    self.dp.set_environment(li, _bare(a))

    # ---- control socket ---------------------------------------------------------------------
    def open_control(self) -> None:
        if not self.control_path:
            return
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)  # root-only from the moment it exists
        try:
            s.bind(self.control_path)
        finally:
            os.umask(old)
        s.listen(16)
        s.setblocking(False)
        self._ctl = s
        self._ctl_bit = 1 << self.dp.watch(s.fileno())

    def _serve_control(self) -> None:
        while self._ctl is not None:
            try:
                conn, _ = self._ctl.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(CONTROL_TIMEOUT)
                try:
                    line = conn.makefile("rb").readline(1 << 16)
                    reply = self.handle(json.loads(line or b"{}"))
                except (OSError, ValueError) as e:
                    reply = {"ok": False, "error": f"bad request: {e}"}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    def handle(self, req: Dict[str, Any]) -> Dict[str, Any]:
        cmd = req.get("cmd") if isinstance(req, dict) else None
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid(), "name": self.plan.name,
                    "uptime": time.time() - self.started}
        if cmd == "counters":
            return {"ok": True, **self.counters()}
        if cmd == "conntrack":
            return {"ok": True, "entries": self.conntrack()}
        if cmd == "neighbours":
            return {"ok": True, "neighbours": self.dp.neighbours()}
        if cmd == "stop":
            self.stop_reason = "control request"
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}; known: ping, counters, "
                                      "conntrack, neighbours, stop"}

    def counters(self) -> Dict[str, Any]:
        out = self.dp.counters()
        out["enis"] = [{"id": eid, **e.counters(), "pool": e.pool_fill()}
                       for eid, e in self.engines.items()]
        return out

    def conntrack(self) -> List[Dict[str, Any]]:
        rows = []
        for eid, e in self.engines.items():
            for x in e.entries():
                d = x._asdict()
                d["orig"] = x.orig._asdict()
                d["reply"] = x.reply._asdict()
                d["eni_id"] = eid
                rows.append(d)
        return rows

    # ---- the loop -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_reason = signal.Signals(signum).name

    def run(self) -> int:
        from hyperplane._engine import POLL_INTERRUPTED, POLL_LINK_DOWN

        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)
        self._wake_bit = 1 << self.dp.watch(self._wake_r)
        self.open_control()
        log.info("data path running: %d ENI link(s), %d environment link(s)",
                 len(self.plan.enis), len(self.plan.envs))
        try:
            while self.stop_reason is None:
                r = self.dp.poll(POLL_MS)
                if r == POLL_INTERRUPTED or (r > 0 and r & self._wake_bit):
                    try:
                        os.read(self._wake_r, 512)
                    except BlockingIOError:
                        pass
                if r > 0 and r & self._ctl_bit:
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
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
            try:
                os.unlink(self.control_path)
            except (FileNotFoundError, TypeError):
                pass
        self.dp.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1


def run_plan(plan, control_path: Optional[str]) -> int:
    """Enter the node namespace and run the data path until SIGINT/SIGTERM or a stop request."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    netns.enter(plan.node_ns)
    d = Daemon(plan, control_path)
    return d.run()


def request(control_path: str, cmd: str, timeout: float = 5.0, **args) -> Dict[str, Any]:
    """Send one control request and return the reply (raises OSError when nobody listens)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control_path)
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = s.makefile("rb").readline(1 << 26)
    if not data:
        raise OSError(f"no reply from {control_path}")
    return json.loads(data)
