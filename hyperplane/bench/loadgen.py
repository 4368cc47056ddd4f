"""Many new UDP flows from one execution environment, and a receiver that counts them by source.

This is how the lab shows what a burst of new connections does to an ENI's port pool: every
datagram here has its own (source port, destination port) pair, so every one is a new
connection to the NAT and takes one port of the ENI (65,000 per ENI). The receiver in a VPC
host counts what arrived per source address, i.e. per ENI, which is the server's view of the
scale-out.

The sender writes raw IPv4/UDP packets (``IPPROTO_RAW``), so it can use any source port without
binding 65,000 sockets; the UDP checksum is 0 ("none", allowed for IPv4 by RFC 768) and the
kernel fills in the IP header's checksum and id. The data path leaves a zero UDP checksum
zero. This is test tooling in Python (bounded by ``rate`` and a deadline), not the fast path.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import threading
import time
from collections import Counter
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

from hyperplane import netns

__all__ = ["flows", "udp_flow_burst", "UdpFlowCounter"]

_BENCH = ipaddress.ip_network("198.18.0.0/15")


def _check(addr: str) -> str:
    if ipaddress.ip_address(addr) not in _BENCH:
        raise ValueError(f"{addr}: the load generator only uses the benchmark range "
                         "198.18.0.0/15")
    return addr


def flows(count: int, dports: Sequence[int], sport_min: int = 1024,
          first: int = 0) -> Iterator[Tuple[int, int]]:
    """Flows ``first`` .. ``first + count - 1`` of a fixed sequence of distinct (source port,
    destination port) pairs: every source port from ``sport_min`` up with the first destination
    port, then again with the next one."""
    per_port = 65536 - sport_min
    if first < 0 or first + count > per_port * len(dports):
        raise ValueError(f"flows {first}..{first + count - 1} need more than {len(dports)} "
                         f"destination port(s) x {per_port} source ports")
    for i in range(first, first + count):
        yield sport_min + i % per_port, dports[i // per_port]


def udp_flow_burst(ns: Optional[str], src: str, dst: str, dports: Sequence[int], count: int,
                   rate: float, payload: Union[bytes, Callable[[int], bytes]] = b"hp",
                   timeout: float = 120.0, first: int = 0) -> Dict[str, float]:
    """Send ``count`` datagrams, each a new flow (``first`` onwards in the sequence of
    :func:`flows`), at about ``rate`` per second, paced every 100 datagrams. ``payload``: the
    same bytes in every datagram, or a function of the flow's number (0 for the first sent),
    so that a receiver can tell the flows apart. Returns {"sent", "seconds"}; raises
    TimeoutError past ``timeout``."""
    _check(src)
    _check(dst)
    if rate <= 0:
        raise ValueError("rate must be > 0 datagrams per second")
    with netns.entered(ns) if ns else _nullctx():
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    sa, da = socket.inet_aton(src), socket.inet_aton(dst)
    payload_of = payload if callable(payload) else (lambda i, fixed=payload: fixed)
    t0 = time.monotonic()
    deadline = t0 + timeout
    sent = 0
    try:
        for i, (sport, dport) in enumerate(flows(count, dports, first=first)):
            data = payload_of(i)
            ulen = 8 + len(data)
            # IPv4 header: version/IHL, TOS, total length, id (kernel), flags, TTL 64, UDP,
            # checksum (kernel), addresses; then UDP with checksum 0.
            pkt = (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0, 64, 17, 0, sa, da)
                   + struct.pack("!HHHH", sport, dport, ulen, 0) + data)
            while True:
                try:
                    s.sendto(pkt, (dst, 0))
                    break
                except OSError as e:  # EAGAIN / ENOBUFS: the device queue is full; retry
                    if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                        raise
                    time.sleep(0.001)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"burst from {src}: {sent} of {count} sent") from None
            sent += 1
            if sent % 100 == 0:
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"burst from {src}: {sent} of {count} sent in "
                                       f"{timeout:.0f} s")
    finally:
        s.close()
    return {"sent": sent, "seconds": time.monotonic() - t0}


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class UdpFlowCounter:
    """Counts datagrams per source address on some UDP ports of a host, in a thread.

    ``with UdpFlowCounter(ns, "198.18.1.5", [9000, 9001]) as c: ...; c.by_source()``"""

    def __init__(self, ns: Optional[str], addr: str, ports: Sequence[int]):
        self.ns, self.addr, self.ports = ns, _check(addr), list(ports)
        self._counts: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = []
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "UdpFlowCounter":
        with netns.entered(self.ns) if self.ns else _nullctx():
            for p in self.ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:  # root may exceed rmem_max: hold a whole burst while the thread catches up
                    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
                s.bind((self.addr, p))
                s.settimeout(0.05)
                self._socks.append(s)
        self._thread = threading.Thread(target=self._run, name="udp-flow-counter", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for s in self._socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    s = key.fileobj
                    while True:
                        try:
                            _, peer = s.recvfrom(2048)
                        except (BlockingIOError, InterruptedError):
                            break
                        with self._lock:
                            self._counts[peer[0]] += 1
        finally:
            sel.close()

    def by_source(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def wait_total(self, n: int, timeout: float) -> int:
        """Wait until ``n`` datagrams arrived or ``timeout`` passed; returns the total."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.total() < n:
            time.sleep(0.02)
        return self.total()

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 30.0) -> int:
        """Wait until nothing arrived for ``quiet`` seconds; returns the total."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.total()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.02)
        return self.total()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in self._socks:
            s.close()
