"""Running the trials in the labs: :class:`Mode` (one column: a lab and the environment it is
measured through, and how to run a command on its client or its server side), one iperf3 run,
and :class:`Runner`, which warms each mode up and checks its NAT (:mod:`.checks`), runs every
test in :func:`~hyperplane.bench.analysis.rotation` order (ABBA for two modes), guards each
trial (a failure names the mode, the test and the data path's or OVS's fate) and records the
raw trials and the per-repeat figures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional

from hyperplane import netns, paths, proc
from hyperplane.bench import traffic
from hyperplane.bench.analysis import column_order, cpu_times, find_loss_free, median, rotation
from hyperplane.bench.checks import check_nat
from hyperplane.bench.report import format_value
from hyperplane.bench.settings import (
    CLIENT_CPU, CONN_DRAIN, METRICS, OVERLOAD_LOAD, PORT_BASE, REACHED, SERVER_CPU, TESTS,
    BenchError, Settings, progress,
)
from hyperplane.labconfig import Plan, bare


def _listening(ns: str, port: int, proto: str = "tcp") -> bool:
    """Whether a socket listens (TCP) or is bound (UDP) on ``port`` in namespace ``ns``:
    /proc/thread-self/net shows the calling thread's namespace."""
    want = f":{port:04X}"
    with netns.entered(ns):
        for name in (proto, proto + "6"):
            try:
                with open(f"/proc/thread-self/net/{name}") as f:
                    next(f)
                    for line in f:
                        parts = line.split()
                        if parts[1].endswith(want) and (proto == "udp" or parts[3] == "0A"):
                            return True
            except FileNotFoundError:
                continue
    return False


class Mode:
    """One column of the result: a lab, the environment (``plan.envs[env_index]``) its
    client runs in, and how to run the tests' commands there. ``hyperplane`` and
    ``hyperplane-tap`` share one lab (one data path, two environments)."""

    def __init__(self, mode: str, name: str, plan: Plan, pin: bool, env_index: int = 0):
        self.mode, self.name, self.plan = mode, name, plan
        self.env = plan.envs[env_index]
        self.server = plan.hosts[0]
        self.s4, self.s6 = bare(self.server.ipv4), bare(self.server.ipv6)
        self.pin = pin
        self.taskset = shutil.which("taskset") if pin else None
        self.pid: Optional[int] = None   # the data path's (hyperplane mode)
        self.switch: Any = None          # OVS mode's ovs.OvsSwitch
        self.rings: Dict[str, int] = {}   # veth link -> its ring's frames, as the daemon says
        self.placement: Optional[Dict[str, Any]] = None   # the daemon's placement (CPUs, rings)
        self.last_conn = -1e9            # monotonic end of the last conn trial

    def _ns(self, ns: str, argv: List[str], cpu: Optional[int]) -> List[str]:
        pin = [self.taskset, "-c", str(cpu)] if self.taskset and cpu is not None else []
        return ["ip", "netns", "exec", ns] + pin + argv

    def client(self, argv: List[str]) -> List[str]:
        return self._ns(self.env.netns, argv, CLIENT_CPU)

    def serverside(self, argv: List[str]) -> List[str]:
        return self._ns(self.server.netns, argv, SERVER_CPU)

    def datapath_cpu(self) -> Optional[float]:
        """CPU seconds the data path has used so far (None when there is none)."""
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def datapath_problem(self) -> str:
        """A sentence about the data path (or OVS) when it has died (with its log's tail),
        else ""."""
        if self.switch is not None:
            return self.switch.problem()
        if self.pid is None:
            return ""
        if proc.pid_alive(self.pid):
            return ""
        return (f"; the data path (pid {self.pid}) has exited:\n"
                + proc.tail(paths.log_path(self.name)))


def _iperf3(mode: Mode, family: int, streams: int, seconds: float, port: int,
            timeout_extra: float = 30.0) -> Dict[str, Any]:
    """One iperf3 run; the server (``-s -1``: one test, then it exits) is started for it and
    stopped by pid afterwards, whatever happens."""
    addr = mode.s4 if family == 4 else mode.s6
    server = subprocess.Popen(
        mode.serverside(["iperf3", "-s", "-1", "-B", addr, "-p", str(port)]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _listening(mode.server.netns, port):
            if server.poll() is not None:
                raise BenchError(f"iperf3 server in {mode.server.netns} exited: "
                                 f"{server.stderr.read().decode(errors='replace').strip()}")
            if time.monotonic() > deadline:
                raise BenchError(f"iperf3 server in {mode.server.netns} did not listen on "
                                 f"port {port} within 10 s")
            time.sleep(0.02)
        argv = mode.client(["iperf3", "-c", addr, "-p", str(port), f"-{family}",
                            "-t", f"{seconds:g}", "-P", str(streams), "-J",
                            "--connect-timeout", "3000"])
        try:
            before = cpu_times()
            client = subprocess.run(argv, capture_output=True, text=True,
                                    timeout=seconds + timeout_extra)
            after = cpu_times()
        except subprocess.TimeoutExpired:
            raise BenchError(f"iperf3 -c {addr} did not finish within "
                             f"{seconds + timeout_extra:.0f} s") from None
        try:
            doc = json.loads(client.stdout)
        except ValueError:
            doc = {}
        if client.returncode != 0 or "error" in doc or "end" not in doc:
            why = (doc.get("error") or client.stderr.strip()
                   or f"exit status {client.returncode}")
            raise BenchError(f"iperf3 -c {addr} (IPv{family}, {streams} stream(s)) failed: "
                             f"{why}")
        rx = doc["end"]["sum_received"]
        tx = doc["end"].get("sum_sent", {})
        busy, wall = after[0] - before[0], after[1] - before[1]
        return {"gbps": rx["bits_per_second"] / 1e9, "bytes": rx.get("bytes"),
                "seconds": rx.get("seconds"), "retransmits": tx.get("retransmits"),
                # the whole machine's CPU time over the client's run (both endpoints and the
                # NAT, which is the point: what a byte costs end to end, in either mode)
                "cpu_busy": busy / wall if wall > 0 else None,
                "cpu_s_per_gbyte": busy / (rx["bytes"] / 1e9) if rx.get("bytes") else None}
    finally:
        proc.stop_child(server, timeout=3.0)


class Runner:
    """Runs every trial of one bench; keeps the raw trials and the per-repeat figures."""

    def __init__(self, settings: Settings, modes: Dict[str, Mode],
                 on_step: Optional[Callable[[str, int, int], None]] = None):
        self.s = settings
        #: ``on_step(step, done, total)`` before each trial (a test in a mode and repeat).
        self.on_step = on_step
        self.modes = {m: modes[m] for m in column_order(modes)}
        self.trials: List[Dict[str, Any]] = []
        self.figures: Dict[str, Dict[str, List[float]]] = {m: {} for m in self.modes}
        self.overload_offered: Optional[int] = None
        self.port = PORT_BASE
        self.t0 = time.monotonic()
        self.idle_datapath_cpu: List[float] = []

    def _next_port(self) -> int:
        """Every trial talks to a fresh server port: its flows are new to both NATs (no SYN
        meets the previous trial's closed entry for the same tuple, which the NATs treat
        differently from a new connection) and no server socket lingers between trials."""
        self.port += 1
        if self.port > 60000:
            self.port = PORT_BASE + 1
        return self.port

    def _record(self, mode: str, test: str, repeat: int, figures: Dict[str, float],
                raw: Dict[str, Any]) -> None:
        for metric, value in figures.items():
            self.figures[mode].setdefault(metric, []).append(value)
        self.trials.append({"mode": mode, "test": test, "repeat": repeat,
                            "figures": figures, "raw": raw})
        shown = ", ".join(f"{k} {format_value(v, METRICS[k][0])} {METRICS[k][0]}"
                          for k, v in figures.items())
        progress(f"[{time.monotonic() - self.t0:5.0f} s] {mode:10s} {test:6s} "
                  f"repeat {repeat + 1}: {shown}")

    def _guard(self, mode: Mode, what: str, fn: Callable[[], Any]) -> Any:
        """Run one trial; a failure names the mode, the test and (hyperplane) the data path's
        fate. While another lab's trial runs, the idle data path of every other hyperplane lab
        (``hyperplane``, ``hyperplane-w2``) is watched: its CPU time is recorded, so a
        busy-polling idle data path would show up."""
        # every other lab's data path (hyperplane's; with --workers 1,2 also hyperplane-w2's)
        others = list({m.name: m for m in self.modes.values()
                       if m.pid and m.switch is None and m.name != mode.name}.values())
        before = [o.datapath_cpu() for o in others]
        t0 = time.monotonic()
        try:
            return fn()
        except BenchError as e:
            raise BenchError(f"{mode.mode} mode, {what}: {e}{mode.datapath_problem()}") from None
        except Exception as e:
            raise BenchError(f"{mode.mode} mode, {what}: {type(e).__name__}: {e}"
                             f"{mode.datapath_problem()}") from e
        finally:
            wall = time.monotonic() - t0
            for o, b in zip(others, before):
                after = o.datapath_cpu()
                if b is not None and after is not None and wall > 0:
                    self.idle_datapath_cpu.append((after - b) / wall)

    # ---- warm-up --------------------------------------------------------------------------
    def warm_up(self, mode: Mode) -> None:
        """ARP/NDP settled, the data path's first flows done, and a clear error if the server
        is not reachable: a 1-second iperf3 per family."""
        for family in (4, 6):
            addr = mode.s4 if family == 4 else mode.s6
            try:
                _iperf3(mode, family, 1, 1.0, self._next_port(), timeout_extra=15)
            except BenchError as e:
                raise BenchError(f"{mode.mode} mode: the server {addr} is not reachable from "
                                 f"the environment over IPv{family} ({e})"
                                 f"{mode.datapath_problem()}") from None
        try:
            seen = check_nat(mode, self._next_port(), self._next_port())
        except BenchError as e:
            raise BenchError(f"{mode.mode} mode is not a correct NAT: {e}"
                             f"{mode.datapath_problem()}") from None
        progress(f"[{time.monotonic() - self.t0:5.0f} s] {mode.mode:10s} warm-up done "
                  f"(IPv4 and IPv6 reach the server, which sees {', '.join(seen)}; an "
                  "unsolicited SYN to the ENI is dropped)")

    # ---- tests ------------------------------------------------------------------------------
    def tcp(self, mode: Mode, test: str, repeat: int) -> None:
        family, streams = int(test[3]), int(test.split("-")[1])
        r = self._guard(mode, test, lambda: _iperf3(mode, family, streams, self.s.seconds,
                                                     self._next_port()))
        self._record(mode.mode, test, repeat, {test: r["gbps"]}, r)

    def udp_trial(self, mode: Mode, rate: int, seconds: float) -> Dict[str, Any]:
        port = self._next_port()
        sink = traffic.in_netns(mode.server.netns, traffic.argv(
            "udp-sink", bind=mode.s4, port=port, seconds=seconds + 20, idle_ms=500,
            cpu=SERVER_CPU if self.s.pin else -1))
        # Whole frames on the environment's link (hp-traffic's --link): a UDP socket's send
        # path cost the sender more than half of each datagram, and on a veth the receiver's
        # work (the kernel's forwarding, or hyperplane's packet socket) runs on the sender's
        # CPU too, so with sockets the generator, not the forwarder, set both modes' limits.
        send = traffic.in_netns(mode.env.netns, traffic.argv(
            "udp-send", dst=mode.s4, port=port, rate=rate, seconds=f"{seconds:g}", size=64,
            flows=1, link=mode.env.ifname, next_hop_mac=mode.env.gw_mac,
            cpu=CLIENT_CPU if self.s.pin else -1))
        with traffic.Server(sink) as server:
            sent = traffic.run(send, timeout=seconds + 30)
            if sent.get("sent", 0) > 0:
                got = server.result()
            else:
                got = server.stop()
        return {"target": rate, "sent": sent["sent"], "errors": sent.get("errors", 0),
                "rate": sent["rate"], "seconds": sent["seconds"],
                "delivered": got.get("packets", 0), "sink_seconds": got.get("seconds")}

    def udp64(self, mode: Mode, repeat: int) -> Dict[str, Any]:
        def measure(rate: int) -> Dict[str, Any]:
            return self.udp_trial(mode, rate, self.s.udp_seconds)

        r = self._guard(mode, "udp64 loss-free search", lambda: find_loss_free(
            measure, self.s.udp_start_rate, self.s.loss_tolerance, self.s.udp_bisect_steps,
            self.s.udp_max_rate))
        if r["rate"] <= 0:
            raise BenchError(f"{mode.mode} mode, udp64: no trial was loss-free, not even at "
                             f"{r['trials'][-1]['offered']} packets/s (loss "
                             f"{r['trials'][-1]['loss']:.3%}); raise --loss-tolerance or look "
                             "at the machine's load")
        self._record(mode.mode, "udp64", repeat, {"udp64": r["rate"]}, r)
        if r["generator_limited"]:
            progress(f"  note: nothing was lost, but the sender reached only "
                      f"{r['achieved']:.0f} of {r['offered']} packets/s: the receiver pushed "
                      "back (the kernel forwards a veth's packets in the sender's own system "
                      "call, on the sender's CPU; a TAP's queue holds the sender until the data "
                      "path reads); the figure is the rate delivered")
        return r

    def overload(self, mode: Mode, repeat: int, offered: int) -> None:
        r = self._guard(mode, "udp64 overload",
                        lambda: self.udp_trial(mode, offered, self.s.udp_seconds))
        delivered = r["delivered"] / r["seconds"] if r["seconds"] > 0 else 0.0
        r["delivered_rate"] = delivered
        r["reached"] = r["rate"] >= REACHED * offered
        self._record(mode.mode, "udp64-overload", repeat, {"udp64-overload": delivered}, r)
        if not r["reached"]:
            progress(f"  note: the sender reached {r['rate']:.0f} of {offered} packets/s: "
                      "the generator, not the NAT, limited the offered load")

    def _conn_gap(self, mode: Mode) -> None:
        """Rotating the server port keeps trials' tuples apart, but not the ENI's ports: each
        RST-closed connection holds its ENI port for the CLOSE timeout plus the reuse delay
        (CONN_DRAIN). Two trials of one mode back to back (ABBA's H H / K K at a repeat
        boundary, or a conn-only run) would then hold two trials' worth, up to 2 x 50,000 >
        65,000 ports. So a conn trial starts at least CONN_DRAIN after the mode's previous
        one ended: at most one trial's ports are ever held, below the scale-out mark. In a full
        run the other tests fill the gap and this waits for nothing."""
        wait = mode.last_conn + CONN_DRAIN - time.monotonic()
        if wait > 0:
            progress(f"  waiting {wait:.0f} s for the previous conn trial's closed entries "
                      "to expire")
            time.sleep(wait)

    def conn(self, mode: Mode, repeat: int) -> None:
        self._conn_gap(mode)
        port = self._next_port()
        cpu_s = SERVER_CPU if self.s.pin else -1
        cpu_c = CLIENT_CPU if self.s.pin else -1

        def trial() -> Dict[str, Any]:
            server = traffic.in_netns(mode.server.netns, traffic.argv(
                "tcp-server", bind=mode.s4, port=port, cpu=cpu_s))
            with traffic.Server(server) as srv:
                r = traffic.run(traffic.in_netns(mode.env.netns, traffic.argv(
                    "conn-rate", dst=mode.s4, port=port, count=self.s.conn_count,
                    concurrency=self.s.conn_concurrency, seconds=120, cpu=cpu_c)), timeout=150)
                srv.stop()
            return r

        try:
            r = self._guard(mode, "conn", trial)
        finally:
            mode.last_conn = time.monotonic()
        if not r.get("completed"):
            raise BenchError(f"{mode.mode} mode, conn: no connection completed ({r})"
                             f"{mode.datapath_problem()}")
        self._record(mode.mode, "conn", repeat, {"conn": r["rate"]}, r)

    def rr(self, mode: Mode, repeat: int) -> None:
        port = self._next_port()

        def trial() -> Dict[str, Any]:
            server = traffic.in_netns(mode.server.netns, traffic.argv(
                "tcp-server", bind=mode.s4, port=port, cpu=SERVER_CPU if self.s.pin else -1))
            with traffic.Server(server) as srv:
                r = traffic.run(traffic.in_netns(mode.env.netns, traffic.argv(
                    "rr", dst=mode.s4, port=port, count=self.s.rr_count, size=64,
                    cpu=CLIENT_CPU if self.s.pin else -1)), timeout=120)
                srv.stop()
            return r

        r = self._guard(mode, "rr", trial)
        if not r.get("count"):
            raise BenchError(f"{mode.mode} mode, rr: no round trip completed ({r})")
        self._record(mode.mode, "rr", repeat, {"rr-p50": r["p50_us"], "rr-p99": r["p99_us"]},
                     r)

    def trial(self, mode: Mode, test: str, repeat: int) -> None:
        """One trial of ``test`` (a name of settings.TESTS) in ``mode``."""
        if test.startswith("tcp"):
            self.tcp(mode, test, repeat)
        elif test == "udp64":
            self.udp64(mode, repeat)
        elif test == "conn":
            self.conn(mode, repeat)
        elif test == "rr":
            self.rr(mode, repeat)
        else:
            raise BenchError(f"unknown test {test!r}; valid tests are {', '.join(TESTS)}", 2)

    # ---- the whole run ------------------------------------------------------------------------
    def steps(self) -> int:
        """How many steps :meth:`run` reports: each test in each mode and repeat, and the
        overload trials when udp64 runs."""
        per_round = len(self.s.tests) + (1 if "udp64" in self.s.tests else 0)
        return self.s.repeats * len(self.modes) * per_round

    def _step(self, done: int, what: str, repeat: int, name: str) -> int:
        if self.on_step is not None:
            self.on_step(f"{what}, {name} mode, repeat {repeat + 1}/{self.s.repeats}", done,
                         self.steps())
        return done + 1

    def run(self) -> None:
        tests = self.s.tests
        warmed = set()
        done = 0
        for repeat, order in enumerate(rotation(list(self.modes), self.s.repeats)):
            for name in order:
                mode = self.modes[name]
                if name not in warmed:
                    self.warm_up(mode)
                    warmed.add(name)
                for test in tests:
                    done = self._step(done, test, repeat, name)
                    self.trial(mode, test, repeat)
        if "udp64" in tests:
            # The same offered load for every mode: twice hyperplane's loss-free median.
            base = median(self.figures["hyperplane"].get("udp64", []))
            offered = int(OVERLOAD_LOAD * base) if base else 0
            self.overload_offered = offered
            for repeat, order in enumerate(rotation(list(self.modes), self.s.repeats)):
                for name in order:
                    done = self._step(done, "overload", repeat, name)
                    self.overload(self.modes[name], repeat, offered)
        if self.on_step is not None:
            self.on_step("done", done, self.steps())
