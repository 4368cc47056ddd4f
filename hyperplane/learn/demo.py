"""``hyperplane demo``: the default lab, real traffic through the data path, then down.

1. ``lab up`` with the embedded default lab: two functions sharing one ENI, one execution
   environment on a TAP device (fn-a-0) and one on a veth pair (fn-b-0), one dual-stack subnet
   and a server in it.
2. Real sockets: from each environment a TCP connection and a UDP exchange with the server,
   over IPv4 and IPv6. The server reports the source address it saw (the ENI's, never the
   environment's) and a SHA-256 of the bytes it got (compared with what was sent).
3. The connection table while the TCP connections are open, in ``conntrack -L`` style.
4. The server tries to open a TCP connection and send a UDP datagram *to* the ENI: nothing
   asked for them, so the data path drops both and counts them as ``unsolicited``.
5. Each function's own code runs (``function invoke``; the default lab's functions have the
   Lambda console's hello-world handler): a cold start, then a warm invocation.
6. The counters, then ``lab down`` (``--keep`` leaves the lab up).

Exit status 0 when every step did what it should, 1 otherwise (each failure is printed).
"""
from __future__ import annotations

import hashlib
import json
import secrets
import socket
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

from hyperplane import netns
from hyperplane.engine.types import EntryInfo, Tuple5
from hyperplane.lab.api import Lab
from hyperplane.lab.status import print_status
from hyperplane.learn.walk import conntrack_line

TCP_PORT, UDP_PORT = 8000, 5353
PAYLOAD = 1_000_000


class _Servers:
    """A TCP server (replies with the SHA-256 of what it got) and a UDP echo server, on both
    address families, in the host's namespace. Each records the peers it saw."""

    def __init__(self, host_ns: str, addrs: List[str]):
        self.seen: List[Tuple[str, str, int]] = []  # (proto, peer address, peer port)
        self.lock = threading.Lock()
        self.socks: List[socket.socket] = []
        self.stop = threading.Event()
        with netns.entered(host_ns):
            for a in addrs:
                fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                t = socket.socket(fam, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((a, TCP_PORT))
                t.listen(64)
                t.settimeout(0.2)
                u = socket.socket(fam, socket.SOCK_DGRAM)
                u.bind((a, UDP_PORT))
                u.settimeout(0.2)
                self.socks += [t, u]
        self.threads = [threading.Thread(target=self._loop, args=(s,), daemon=True)
                        for s in self.socks]
        for th in self.threads:
            th.start()

    def _loop(self, s: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                if s.type == socket.SOCK_STREAM:
                    c, peer = s.accept()
                    threading.Thread(target=self._tcp, args=(c, peer), daemon=True).start()
                else:
                    data, peer = s.recvfrom(65535)
                    with self.lock:
                        self.seen.append(("udp", peer[0], peer[1]))
                    s.sendto(data, peer)
            except (socket.timeout, OSError):
                continue

    def _tcp(self, c: socket.socket, peer) -> None:
        with self.lock:
            self.seen.append(("tcp", peer[0], peer[1]))
        c.settimeout(10)
        h, n = hashlib.sha256(), 0
        try:
            size = int.from_bytes(_recv_exact(c, 8), "big")
            while n < size:
                d = c.recv(min(1 << 20, size - n))
                if not d:
                    break
                h.update(d)
                n += len(d)
            c.sendall(h.digest())
            c.recv(1)  # wait for the client to close (keeps the connection ESTABLISHED)
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(2)
        for s in self.socks:
            s.close()


def _recv_exact(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            raise OSError("connection closed early")
        buf += d
    return buf


def run(name: Optional[str] = None, keep: bool = False, out=sys.stdout) -> int:
    say: Callable[..., None] = lambda s="": print(s, file=out, flush=True)  # noqa: E731
    name = name or f"demo-{secrets.token_hex(2)}"
    problems: List[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)
            say(f"   !! UNEXPECTED: {what}")

    say(f"== 1. lab up --name {name} (the embedded default lab)")
    t0 = time.monotonic()
    lab = Lab.up(name=name)
    servers = None
    held: List[socket.socket] = []
    try:
        st = lab.status()
        say(f"   built and running in {time.monotonic() - t0:.1f} s")
        print_status(st, out=out)
        plan = lab.plan
        host = plan.hosts[0]
        eni = plan.enis[0]
        targets = [a.split("/")[0] for a in (host.ipv4, host.ipv6) if a]
        eni_addrs = {eni.ipv4, eni.ipv6}
        servers = _Servers(host.netns, targets)

        say("\n== 2. TCP and UDP from each environment to the server "
            f"({', '.join(targets)})")
        data = secrets.token_bytes(PAYLOAD)
        want = hashlib.sha256(data).digest()
        for env in plan.envs:
            for dst in targets:
                if ":" in dst and not env.ipv6:
                    continue
                fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
                src = (env.ipv6 if fam == socket.AF_INET6 else env.ipv4).split("/")[0]
                with netns.entered(env.netns):
                    c = socket.socket(fam, socket.SOCK_STREAM)
                    u = socket.socket(fam, socket.SOCK_DGRAM)
                c.settimeout(10)
                u.settimeout(2)
                try:
                    c.connect((dst, TCP_PORT))
                    c.sendall(len(data).to_bytes(8, "big") + data)
                    got = _recv_exact(c, 32)
                    held.append(c)  # stays open for the table below
                    with servers.lock:
                        peer = [s for s in servers.seen if s[0] == "tcp"][-1]
                    ok = got == want and peer[1] in eni_addrs
                    say(f"   {env.name:<7} ({env.attach:<4}) TCP {src} -> {dst}:{TCP_PORT}: "
                        f"server saw {peer[1]} port {peer[2]}, {PAYLOAD:,} bytes, "
                        f"sha256 {'matches' if got == want else 'DIFFERS'}")
                    check(ok, f"TCP from {env.name} to {dst}")
                except OSError as e:
                    c.close()
                    check(False, f"TCP from {env.name} to {dst}: {e}")
                try:
                    msg = f"hello from {env.name}".encode()
                    reply = None
                    for _ in range(3):  # the first datagram may wait for ARP/NDP; retry
                        u.sendto(msg, (dst, UDP_PORT))
                        try:
                            reply = u.recv(2048)
                            break
                        except socket.timeout:
                            continue
                    with servers.lock:
                        peer = [s for s in servers.seen if s[0] == "udp"][-1]
                    say(f"   {env.name:<7} ({env.attach:<4}) UDP {src} -> {dst}:{UDP_PORT}: "
                        f"server saw {peer[1]} port {peer[2]}, echo "
                        f"{'received' if reply == msg else 'MISSING'}")
                    check(reply == msg and peer[1] in eni_addrs, f"UDP from {env.name} to {dst}")
                except (OSError, IndexError) as e:
                    check(False, f"UDP from {env.name} to {dst}: {e}")
                finally:
                    u.close()

        say("\n== 3. the connection table (conntrack -L style), TCP connections still open")
        rows = lab.conntrack()
        for r in sorted(rows, key=lambda r: (r["proto"], r["family"], r["orig"]["src"])):
            r = dict(r)
            r.pop("eni_id", None)
            r["orig"], r["reply"] = Tuple5(**r["orig"]), Tuple5(**r["reply"])
            say("   " + conntrack_line(EntryInfo(**r)))
        n_tcp = sum(1 for r in rows if r["proto"] == "tcp" and r["state"] == "ESTABLISHED")
        check(n_tcp == len(held), f"{len(held)} ESTABLISHED TCP entries expected, saw {n_tcp}")

        say("\n== 4. the server opens a TCP connection and sends a UDP datagram to the ENI")
        before = _unsolicited(lab.counters())
        with netns.entered(host.netns):
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with t, u:
            t.settimeout(1.5)
            try:
                t.connect((eni.ipv4, 4444))
                check(False, "an unsolicited TCP connection to the ENI was accepted")
            except socket.timeout:
                say(f"   TCP SYN to {eni.ipv4}:4444: no answer (timed out after 1.5 s)")
            except OSError as e:
                check(False, f"unsolicited TCP: expected a silent drop, got {e}")
            u.sendto(b"anyone there?", (eni.ipv4, 5555))
        time.sleep(0.3)
        after = _unsolicited(lab.counters())
        say(f"   unsolicited drops counted by the engine: {before} -> {after}")
        check(after - before >= 2, "the unsolicited SYN and datagram were not both counted")
        for c in held:
            c.close()
        held.clear()

        say("\n== 5. the functions run their code (function invoke: a cold start, then warm)")
        for fn in plan.functions:
            for attempt in ("cold", "warm"):
                meta, body = lab.invoke(fn.name, {"demo": attempt})
                report = next((e["message"] for e in reversed(lab.logs(fn.name))
                               if e["message"].startswith("REPORT")), "")
                took = " ".join(f for f in report.split("\t")[1:] if f.startswith(
                    ("Duration", "Init Duration")))
                say(f"   {fn.name} ({attempt}): {json.dumps(meta)} {body.decode()[:60]} "
                    f"[{took}]")
                check(meta.get("StatusCode") == 200 and "FunctionError" not in meta,
                      f"invoking {fn.name}: {meta} {body[:200]!r}")

        say("\n== 6. counters")
        c = lab.counters()
        say(f"   forwarded: outbound {c['forwarded_outbound']}, inbound "
            f"{c['forwarded_inbound']}")
        for e in c["enis"]:
            drops = " ".join(f"{k}={v}" for k, v in e["drops"].items() if v) or "none"
            say(f"   ENI {e['id']}: packets out {e['packets_outbound']} in "
                f"{e['packets_inbound']}, connections created {e['connections_created']}, "
                f"drops: {drops}")
            say("   pool: " + ", ".join(f"{p['address']}/{p['proto']} {p['used']}/{p['size']}"
                                        for p in e["pool"]))
        dpd = " ".join(f"{k}={v}" for k, v in c["drops"].items() if v) or "none"
        say(f"   data-path drops: {dpd}")
        for link in c["links"]:
            say(f"   link {link['name']:<7} {link['kind']:<4} rx {link['rx_packets']} pkts "
                f"tx {link['tx_packets']} pkts, ARP in/out {link['arp_in']}/{link['arp_out']}"
                f", NDP in/out {link['nd_in']}/{link['nd_out']}")
    finally:
        for c in held:
            c.close()
        if servers:
            servers.close()
        if keep:
            say(f"\n== lab {name} left running: `hyperplane lab down --name {name}`")
        else:
            rep = lab.down()
            say(f"\n== lab down: data path pid {rep.get('stopped_pid')} stopped, "
                f"{len(rep['removed_namespaces'])} namespaces removed")
    if problems:
        say(f"\ndemo: {len(problems)} UNEXPECTED result(s):")
        for p in problems:
            say(f"   - {p}")
        return 1
    say("\ndemo done: every step did what it should")
    return 0


def _unsolicited(counters) -> int:
    return sum(e["drops"].get("unsolicited", 0) for e in counters["enis"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(*sys.argv[1:2]))
