"""A bounded soak of connection churn through a lab: does the data path's memory stay flat?

A NAT that leaks a little per connection looks fine in every short test and falls over after a
week. This runs many short TCP connections and UDP flows from every execution environment of a
lab (IPv4 and IPv6) to a small server in the VPC, and samples the data path process's resident
memory (``VmRSS`` in ``/proc/PID/status``) and the connection table size every few seconds.

Churn here means: every TCP connection is a full handshake, a small request, the server's
echo, and the close (the NAT's entry ends in TIME_WAIT); every UDP flow is a new socket (a new
source port, so a new connection in the NAT) sending one datagram and reading the echo (the
entry becomes REPLIED). Left alone those entries would sit in the table for TIME_WAIT's 120 s and
replied UDP's 350 s and the table would just grow; so at each sample the clients pause, the
connections in flight finish, and ``clock --advance`` (default 400 s) moves the lab clock past
both timeouts: the engine expires them, frees their ports and slots, and the next round reuses
that memory. After a warm-up (the first rounds touch the table's pages, the allocators grow
their pools), RSS must stay flat: what it still gains per round is what the data path leaks.

Bounded by a connection count AND a duration (whichever comes first); stops by itself.

    python3 benchmarks/soak.py                          # its own default lab, 30 s, <= 6,000 conns
    python3 benchmarks/soak.py --duration 300 --connections 200000 --rate 600
    python3 benchmarks/soak.py --lab NAME --json        # a running lab (needs its env/server)

Needs root (network namespaces). Output: one line per sample, then a summary (``--json``: one
JSON object with every sample). Exit status 0 when every connection succeeded, 1 otherwise, 2
for bad options.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import selectors
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hyperplane import cli, netns  # noqa: E402
from hyperplane.lab import lifecycle
from hyperplane import paths
from hyperplane import control

MiB = 1 << 20


def _bare(addr: Optional[str]) -> Optional[str]:
    return addr.split("/")[0] if addr else None


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` of /proc/PID/status, in bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def _socket_in(ns: str, family: int, type_: int) -> socket.socket:
    with netns.entered(ns):
        return socket.socket(family, type_)


# ---- the server: TCP echo-and-close, UDP echo -----------------------------------------------------
class EchoServer:
    """TCP and UDP echo on one address of a VPC host, served by one thread with a selector.

    TCP: reads until the client's request is complete (the first byte says how many bytes
    follow), writes it back, and closes once the client has closed (so the client's side ends in
    TIME_WAIT, as a short HTTP-style exchange does). UDP: every datagram goes back to its sender.
    """

    def __init__(self, ns: str, addr: str):
        self.ns, self.addr = ns, addr
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.tcp = _socket_in(ns, fam, socket.SOCK_STREAM)
        self.udp = _socket_in(ns, fam, socket.SOCK_DGRAM)
        for s in (self.tcp, self.udp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, 0))
            s.setblocking(False)
        self.tcp.listen(1024)
        self.port_tcp = self.tcp.getsockname()[1]
        self.port_udp = self.udp.getsockname()[1]
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"echo[{addr}]", daemon=True)

    def __enter__(self) -> "EchoServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.tcp.close()
        self.udp.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.tcp, selectors.EVENT_READ, "accept")
        sel.register(self.udp, selectors.EVENT_READ, "udp")
        bufs: Dict[socket.socket, bytearray] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    if key.data == "accept":
                        for _ in range(64):
                            try:
                                c, _peer = self.tcp.accept()
                            except (BlockingIOError, InterruptedError):
                                break
                            c.setblocking(False)
                            bufs[c] = bytearray()
                            sel.register(c, selectors.EVENT_READ, "conn")
                    elif key.data == "udp":
                        for _ in range(256):
                            try:
                                data, peer = self.udp.recvfrom(2048)
                            except (BlockingIOError, InterruptedError):
                                break
                            with contextlib.suppress(OSError):
                                self.udp.sendto(data, peer)
                    else:
                        c = key.fileobj
                        try:
                            data = c.recv(4096)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError as e:
                            self.errors.append(f"tcp recv: {e}")
                            data = b""
                        b = bufs[c]
                        if data:
                            b += data
                            if b and len(b) == 1 + b[0]:
                                c.sendall(bytes(b))   # small: fits the socket buffer
                            continue
                        sel.unregister(c)            # the client closed: close too
                        c.close()
                        del bufs[c]
        finally:
            for c in list(bufs):
                c.close()
            sel.close()


# ---- the clients ------------------------------------------------------------------------------------
class Gate:
    """Lets the sampler pause the clients: ``enter()`` before a connection (blocks while
    paused), ``leave()`` after it; ``pause()`` waits until nothing is in flight."""

    def __init__(self):
        self._cv = threading.Condition()
        self._paused = False
        self._inflight = 0

    def enter(self) -> None:
        with self._cv:
            while self._paused:
                self._cv.wait()
            self._inflight += 1

    def leave(self) -> None:
        with self._cv:
            self._inflight -= 1
            self._cv.notify_all()

    def pause(self, timeout: float = 30.0) -> bool:
        with self._cv:
            self._paused = True
            return self._cv.wait_for(lambda: self._inflight == 0, timeout)

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()


class Worker(threading.Thread):
    """One client loop in one environment: ``proto`` ("tcp"/"udp") to one server address,
    one connection at a time, paced to ``rate`` per second, until the shared budget or the
    deadline runs out."""

    def __init__(self, soak: "Soak", env_ns: str, proto: str, addr: str, port: int, rate: float):
        super().__init__(name=f"{proto}->{addr}", daemon=True)
        self.soak, self.ns, self.proto, self.addr, self.port = soak, env_ns, proto, addr, port
        self.family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.rate = rate
        self.attempts = self.ok = 0
        self.errors: List[str] = []

    def one(self) -> None:
        msg = secrets.token_bytes(1 + secrets.randbelow(200))
        msg = bytes([len(msg) - 1]) + msg[1:]
        s = _socket_in(self.ns, self.family,
                       socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(self.soak.timeout)
        try:
            if self.proto == "tcp":
                s.connect((self.addr, self.port))
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        break
                    got += chunk
            else:
                got = b""
                for _ in range(3):   # a lost datagram is retried (same socket: same flow)
                    s.sendto(msg, (self.addr, self.port))
                    try:
                        got, _ = s.recvfrom(2048)
                        break
                    except socket.timeout:
                        continue
            if got != msg:
                raise RuntimeError(f"echo differs ({len(got)} of {len(msg)} bytes)")
        finally:
            s.close()

    def run(self) -> None:
        t0 = time.monotonic()
        while True:
            if not self.soak.take_one():
                return
            self.soak.gate.enter()
            try:
                self.attempts += 1
                self.one()
                self.ok += 1
            except Exception as e:  # counted and reported; the soak goes on
                if len(self.errors) < 20:
                    self.errors.append(f"{self.ns} {self.proto} [{self.addr}]:{self.port}: {e!r}")
            finally:
                self.soak.gate.leave()
            ahead = t0 + self.attempts / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


class Soak:
    def __init__(self, lab: str, duration: float, connections: int, rate: float,
                 interval: float, advance: float, warmup: float, timeout: float = 5.0,
                 out=sys.stdout, quiet: bool = False):
        self.lab, self.duration, self.budget = lab, duration, connections
        self.rate, self.interval, self.advance, self.warmup = rate, interval, advance, warmup
        self.timeout, self.out, self.quiet = timeout, out, quiet
        self.gate = Gate()
        self._lock = threading.Lock()
        self._taken = 0
        self.deadline = 0.0

    def take_one(self) -> bool:
        """One connection from the shared budget, if any is left and time is not up."""
        with self._lock:
            if self._taken >= self.budget or time.monotonic() >= self.deadline:
                return False
            self._taken += 1
            return True

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def counters(self) -> Dict[str, Any]:
        r = lifecycle.ask(self.lab, "counters")
        if not r.get("ok"):
            raise RuntimeError(f"counters from lab {self.lab}: {r}")
        return r

    def sample(self, t0: float, pid: int, c: Dict[str, Any]) -> Dict[str, Any]:
        return {"t": round(time.monotonic() - t0, 2), "rss": rss_bytes(pid),
                "connections": _table(c),
                "created": sum(e["connections_created"] for e in c["enis"]),
                "expired": sum(e["connections_expired"] for e in c["enis"])}

    def run(self) -> Dict[str, Any]:
        state, plan = lifecycle.load_lab(self.lab)
        pid = state["pid"]
        server = plan.hosts[0]
        addrs = [a for a in (_bare(server.ipv4), _bare(server.ipv6)) if a]
        c_start = self.counters()
        samples: List[Dict[str, Any]] = []
        with contextlib.ExitStack() as st:
            servers = [st.enter_context(EchoServer(server.netns, a)) for a in addrs]
            jobs = [(env.netns, proto, srv)
                    for env in plan.envs for srv in servers for proto in ("tcp", "udp")
                    if (":" not in srv.addr or env.ipv6)]
            per = self.rate / len(jobs)
            workers = [Worker(self, ns, proto, srv.addr,
                              srv.port_tcp if proto == "tcp" else srv.port_udp, per)
                       for ns, proto, srv in jobs]
            t0 = time.monotonic()
            self.deadline = t0 + self.duration
            samples.append(self.sample(t0, pid, c_start))
            self.say(f"soak of lab {self.lab}: data path pid {pid}, {len(workers)} client loops "
                     f"({len(plan.envs)} environments x {len(addrs)} families x tcp/udp), "
                     f"<= {self.budget} connections in <= {self.duration:g} s at ~{self.rate:g}/s")
            self.say(f"{'t/s':>7} {'RSS/KiB':>9} {'table':>7} {'created':>9} {'expired':>9}")
            self._print(samples[-1])
            for w in workers:
                w.start()
            while any(w.is_alive() for w in workers):
                next_at = samples[-1]["t"] + t0 + self.interval
                while time.monotonic() < next_at and any(w.is_alive() for w in workers):
                    time.sleep(0.05)
                # pause, let the last segments pass, expire TIME_WAIT/REPLIED, sample
                if not self.gate.pause(timeout=self.timeout * 4):
                    raise RuntimeError("clients did not finish their connections in time")
                time.sleep(0.2)
                c_before = self.counters()
                if self.advance:
                    r = _clock(self.lab, self.advance)
                    if not r.get("ok"):
                        raise RuntimeError(f"clock advance: {r}")
                c = self.counters()
                until = time.monotonic() + 3.0
                while self.advance and _table(c) and time.monotonic() < until:
                    time.sleep(0.02)     # the data path's loop expires on its next timer pass
                    c = self.counters()
                s = self.sample(t0, pid, c)
                s["table_before_advance"] = _table(c_before)
                samples.append(s)
                self._print(s)
                self.gate.resume()
            for w in workers:
                w.join(self.timeout * 4)
            server_errors = [e for srv in servers for e in srv.errors]
        c_end = self.counters()
        return self.summary(samples, workers, c_start, c_end, server_errors, pid)

    def _print(self, s: Dict[str, Any]) -> None:
        extra = (f"  (table {s['table_before_advance']} before clock --advance)"
                 if "table_before_advance" in s else "")
        self.say(f"{s['t']:7.1f} {s['rss'] // 1024:9d} {s['connections']:7d} "
                 f"{s['created']:9d} {s['expired']:9d}{extra}")

    def summary(self, samples, workers, c0, c1, server_errors, pid) -> Dict[str, Any]:
        def drops(c):
            out: Dict[str, int] = {}
            for e in c["enis"]:
                for k, v in e["drops"].items():
                    out[k] = out.get(k, 0) + v
            for k, v in c["drops"].items():
                out[f"dp:{k}"] = v
            return out

        d0, d1 = drops(c0), drops(c1)
        after = [s for s in samples if s["t"] >= self.warmup]
        base = after[0] if after else samples[-1]
        res = {
            "lab": self.lab, "pid": pid,
            "duration": round(samples[-1]["t"], 1), "rate": self.rate,
            "attempts": sum(w.attempts for w in workers),
            "succeeded": sum(w.ok for w in workers),
            "by_loop": {w.name + f"@{w.ns}": [w.ok, w.attempts] for w in workers},
            "errors": [e for w in workers for e in w.errors][:20] + server_errors[:5],
            "samples": samples,
            "warmup": self.warmup,
            "rss_first": samples[0]["rss"], "rss_after_warmup": base["rss"],
            "rss_last": samples[-1]["rss"], "rss_max": max(s["rss"] for s in samples),
            "rss_growth_after_warmup": max(s["rss"] for s in after) - base["rss"] if after else 0,
            "table_max": max(s.get("table_before_advance", s["connections"]) for s in samples),
            "created": sum(e["connections_created"] for e in c1["enis"])
            - sum(e["connections_created"] for e in c0["enis"]),
            "drops": {k: d1[k] - d0.get(k, 0) for k in d1 if d1[k] != d0.get(k, 0)},
            "rx_ring_drops": sum(x["rx_ring_drops"] for x in c1["links"])
            - sum(x["rx_ring_drops"] for x in c0["links"]),
        }
        self.say(f"{res['succeeded']} of {res['attempts']} connections succeeded in "
                 f"{res['duration']} s; the NAT created {res['created']}; table at most "
                 f"{res['table_max']}")
        self.say(f"RSS: {res['rss_first'] / MiB:.2f} MiB at start, "
                 f"{res['rss_after_warmup'] / MiB:.2f} MiB after {self.warmup:g} s of warm-up, "
                 f"{res['rss_last'] / MiB:.2f} MiB at the end; growth after warm-up "
                 f"{res['rss_growth_after_warmup'] / 1024:.0f} KiB")
        self.say(f"drops during the soak: {res['drops'] or 'none'}; rx ring drops "
                 f"{res['rx_ring_drops']}")
        for e in res["errors"]:
            self.say(f"  error: {e}")
        return res


def _table(c: Dict[str, Any]) -> int:
    """Connections in the tables of every ENI key of a lab's counters."""
    return sum(e["connections"] for e in c["enis"])


def _clock(lab: str, seconds: float) -> Dict[str, Any]:
    from hyperplane.datapath import daemon
    return control.request(paths.control_path(lab), "clock", advance=seconds)


def _positive(kind, name):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name}: {text!r} must be > 0")
        return v
    return conv


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Connection churn through a lab while sampling "
                                 "the data path's RSS and table size.")
    ap.add_argument("--lab", help="a running lab (default: bring up the default lab, tear it "
                    "down at the end)")
    ap.add_argument("--duration", type=_positive(float, "--duration"), default=30.0,
                    help="stop after this many seconds (default 30)")
    ap.add_argument("--connections", type=_positive(int, "--connections"), default=6000,
                    help="stop after this many connections (default 6000)")
    ap.add_argument("--rate", type=_positive(float, "--rate"), default=200.0,
                    help="new connections per second over all client loops (default 200)")
    ap.add_argument("--interval", type=_positive(float, "--interval"), default=3.0,
                    help="seconds between samples (default 3)")
    ap.add_argument("--advance", type=float, default=400.0,
                    help="lab-clock seconds to advance at each sample, past TIME_WAIT (120) and "
                    "replied UDP (350) (default 400; 0: never)")
    ap.add_argument("--warmup", type=float, default=20.0,
                    help="seconds of warm-up before RSS must stay flat (default 20: RSS "
                    "rises for the first ~4,000 connections)")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)
    if not 0 <= args.advance <= 500:
        ap.error(f"--advance: {args.advance:g}: use 0..500 seconds (more than 600 without "
                 "traffic would idle the functions of a lab-profile lab)")
    problem = netns.privilege_problem()
    if problem:
        print(f"soak: needs root/CAP_NET_ADMIN: {problem}", file=sys.stderr)
        return 4
    out = io.StringIO() if args.json else sys.stdout
    name = args.lab
    own = name is None
    if own:
        name = "soak" + secrets.token_hex(3)
        lifecycle.lab_up(None, name)
    try:
        res = Soak(name, args.duration, args.connections, args.rate, args.interval,
                   args.advance, args.warmup, out=out, quiet=args.json).run()
    finally:
        if own:
            from hyperplane import topology as hplab
            hplab.teardown(name)
    if args.json:
        print(json.dumps(res))
    return 0 if res["succeeded"] == res["attempts"] and res["attempts"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
