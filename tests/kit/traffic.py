"""Real traffic between network namespaces, for integration tests of the NAT data path: TCP
and UDP servers and clients, and a kernel-only topology (two namespaces, one veth) for testing
tools. Raw frames (sniffers, injection, raw IP) are kit.wire's.

One test process holds sockets in several namespaces at once: every socket here is *created*
inside its namespace (``hyperplane.netns.entered``) and keeps living there after the thread
moves back, so servers, clients, sniffers and injectors all run from the test's own threads.

Everything is bounded: every socket operation has a timeout, every loop a deadline, every
thread is joined on exit. Failures raise ``TimeoutError`` (nothing arrived in time) or
``AssertionError`` (anything else: refused, reset, short reply, missing interface) with the
namespace, addresses and what was seen so far in the message, never hang.

Namespace arguments are names as in ``/run/netns`` (``None``: the caller's own namespace);
addresses are plain strings. As a safety net, only the benchmark ranges 198.18.0.0/15 and
2001:2::/48 (plus unspecified and loopback addresses) are accepted.

TCP protocol (``TcpServer`` / ``tcp_send`` / ``tcp_many``): the client sends an 8-byte
big-endian length, then that many bytes; the server replies with the 32-byte SHA-256 of those
bytes and closes.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import random
import resource
import select
import selectors
import socket
import struct
import threading
import time
from typing import List, NamedTuple, Optional, Tuple, Union

from hyperplane import netns as _netns

__all__ = [
    "TcpServer", "ServerConn", "tcp_send", "tcp_many", "ConnResult",
    "UdpEchoServer", "Datagram", "udp_roundtrip",
    "payload", "sha256", "socket_in", "ThreadedService",
    "PAIR_ADDR", "PAIR_IF", "veth_pair",
]

Addr = Tuple[str, int]

HEADER = struct.Struct(">Q")
DIGEST_LEN = 32
SO_RCVBUFFORCE = 33

_ALLOWED_NETS = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:2::/48"))


# ---- small helpers ------------------------------------------------------------------------------
def payload(n: int, seed: int = 0) -> bytes:
    """``n`` deterministic pseudo-random bytes (10 MB in a few milliseconds)."""
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _ip(addr: str):
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"not an IP address: {addr!r}") from None


def _check_addr(addr: str) -> str:
    ip = _ip(addr)
    if not (ip.is_unspecified or ip.is_loopback or any(ip in n for n in _ALLOWED_NETS)):
        raise ValueError(f"{addr} is outside the test ranges 198.18.0.0/15 and 2001:2::/48")
    return addr


def _family(addr: str) -> int:
    return socket.AF_INET6 if _ip(addr).version == 6 else socket.AF_INET


def _norm(sockaddr) -> Addr:
    """(address, port) with the address in canonical text form (IPv6 scope/flowinfo dropped)."""
    return (str(ipaddress.ip_address(sockaddr[0].split("%")[0])), sockaddr[1])


def _same_addr(a: Addr, b: Addr) -> bool:
    return _norm(a) == _norm(b)


def in_netns(name: Optional[str]):
    return contextlib.nullcontext() if name is None else _netns.entered(name)


def netns_label(name: Optional[str]) -> str:
    return f"netns {name!r}" if name is not None else "the caller's netns"


def socket_in(name: Optional[str], family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ``name``."""
    try:
        with in_netns(name):
            return socket.socket(family, type_, proto)
    except _netns.NetnsError as e:
        raise AssertionError(str(e)) from None


def _source(source: Union[None, str, Addr]) -> Optional[Addr]:
    if source is None:
        return None
    if isinstance(source, str):
        return (_check_addr(source), 0)
    return (_check_addr(source[0]), int(source[1]))


def _ensure_nofile(extra: int) -> None:
    """Raise the soft RLIMIT_NOFILE so ``extra`` more descriptors fit (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    need = in_use + extra + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class _Waker:
    """A pipe that wakes a poll/select loop."""

    def __init__(self):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self):
        with contextlib.suppress(OSError):
            os.write(self.w, b"x")

    def close(self):
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class ThreadedService:
    """Start/stop plumbing shared by the servers and kit.wire's sniffer: one daemon thread, a waker,
    a bounded join on exit, and the thread's crash re-raised in the caller."""

    _join_timeout = 10.0

    def _start(self, name: str) -> None:
        self._stop = threading.Event()
        self._waker = _Waker()
        self._crash: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run_guarded, name=name, daemon=True)
        self._thread.start()

    def _run_guarded(self):
        try:
            self._run()
        except BaseException as e:  # surfaced by _stop_thread
            self._crash = e

    def _stop_thread(self) -> None:
        self._stop.set()
        self._waker.wake()
        self._thread.join(self._join_timeout)
        alive = self._thread.is_alive()
        if not alive:
            self._waker.close()
        if alive:
            raise AssertionError(f"{self._thread.name} did not stop within "
                                 f"{self._join_timeout:.0f}s")
        if self._crash is not None:
            raise AssertionError(f"{self._thread.name} crashed: {self._crash!r}") from self._crash


# ---- TCP ------------------------------------------------------------------------------------------
class ServerConn(NamedTuple):
    """One connection as a :class:`TcpServer` saw it."""
    peer: Addr                 # (address, port) of the client as seen by the server
    digest: Optional[bytes]    # SHA-256 of the received payload; None when it did not complete
    nbytes: int                # payload bytes received
    error: Optional[str]       # why it did not complete (EOF, reset, idle timeout, ...)


class _SrvConn:
    __slots__ = ("sock", "peer", "hdr", "remaining", "nbytes", "hasher", "out", "last",
                 "recorded")

    def __init__(self, sock, peer):
        self.sock, self.peer = sock, peer
        self.hdr = bytearray()
        self.remaining: Optional[int] = None
        self.nbytes = 0
        self.hasher = hashlib.sha256()
        self.out = b""
        self.last = time.monotonic()
        self.recorded = False


class TcpServer(ThreadedService):
    """Length-prefixed SHA-256 server in namespace ``netns`` (one selector thread, any number of
    concurrent connections). Use as a context manager; ``.port`` is the bound port.

    ``.connections``: a snapshot list of :class:`ServerConn`, one per accepted connection once it
    finished (the record is made *before* the digest is sent, so a client holding its digest
    always finds its record). Connections idle for ``idle_timeout`` seconds are dropped and
    recorded with an error. ``.max_live``: the most connections open at once. Exiting stops the
    thread, closes every socket and re-raises a crash of the serving thread as AssertionError.
    """

    def __init__(self, netns: Optional[str], addr: str, port: int = 0,
                 family: Optional[int] = None, backlog: int = 4096,
                 max_len: int = 1 << 31, idle_timeout: float = 60.0):
        self.netns, self.addr = netns, _check_addr(addr)
        self.family = family or _family(addr)
        self.requested_port, self.backlog = port, backlog
        self.max_len, self.idle_timeout = max_len, idle_timeout
        self.port: int = 0
        self._lock = threading.Lock()
        self._conns: List[ServerConn] = []
        self._cond = threading.Condition(self._lock)
        self._sock: Optional[socket.socket] = None
        self.max_live = 0  # most connections open at once, as the server saw them

    # -- records
    @property
    def connections(self) -> List[ServerConn]:
        with self._lock:
            return list(self._conns)

    @property
    def completed(self) -> List[ServerConn]:
        return [c for c in self.connections if c.digest is not None]

    def wait_connections(self, n: int, timeout: float = 10.0) -> List[ServerConn]:
        """Block until at least ``n`` connections are recorded; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"TcpServer {self.addr}:{self.port} in "
                                       f"{netns_label(self.netns)}: {len(self._conns)} of {n} "
                                       f"connections after {timeout}s")
                self._cond.wait(left)
            return list(self._conns)

    def _record(self, c: _SrvConn, digest: Optional[bytes], error: Optional[str]) -> None:
        c.recorded = True
        with self._cond:
            self._conns.append(ServerConn(c.peer, digest, c.nbytes, error))
            self._cond.notify_all()

    # -- lifecycle
    def __enter__(self) -> "TcpServer":
        s = socket_in(self.netns, self.family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((self.addr, self.requested_port))
            except OSError as e:
                raise AssertionError(f"TcpServer: cannot bind {self.addr}:{self.requested_port} "
                                     f"in {netns_label(self.netns)}: {e}") from e
            s.listen(self.backlog)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._sock = s
        self.port = s.getsockname()[1]
        self._start(f"TcpServer[{self.netns}]{self.addr}:{self.port}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop_thread()

    # -- serving thread
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        live: dict = {}
        lsock = self._sock
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        try:
            sel.register(lsock, selectors.EVENT_READ, None)
            sel.register(self._waker.r, selectors.EVENT_READ, "wake")
            next_sweep = time.monotonic() + 1.0
            while not self._stop.is_set():
                events = sel.select(timeout=0.5)
                # accept before serving, so connections established together are live together
                if any(key.data is None for key, _ in events):
                    self._accept(lsock, sel, live)
                for key, ev in events:
                    c = key.data
                    if isinstance(c, _SrvConn) and live.get(c.sock.fileno()) is c:
                        self._service(c, ev, sel, live, buf, view)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 1.0
                    for c in [c for c in live.values() if now - c.last > self.idle_timeout]:
                        self._finish(c, sel, live, f"idle for {self.idle_timeout}s after "
                                                   f"{c.nbytes} payload bytes")
        finally:
            for c in list(live.values()):
                self._finish(c, sel, live, "server stopped")
            sel.close()
            lsock.close()

    def _accept(self, lsock, sel, live) -> None:
        while True:  # bounded by the accept queue
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ECONNABORTED and friends: the peer went away already
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            sock.setblocking(False)
            c = _SrvConn(sock, _norm(peer))
            live[sock.fileno()] = c
            sel.register(sock, selectors.EVENT_READ, c)
            self.max_live = max(self.max_live, len(live))

    def _finish(self, c, sel, live, error: Optional[str] = None) -> None:
        if error is not None and not c.recorded:
            self._record(c, None, error)
        live.pop(c.sock.fileno(), None)
        with contextlib.suppress(Exception):
            sel.unregister(c.sock)
        c.sock.close()

    def _service(self, c: _SrvConn, ev, sel, live, buf, view) -> None:
        c.last = time.monotonic()
        try:
            if c.out:  # finishing the digest write
                n = c.sock.send(c.out)
                c.out = c.out[n:]
                if not c.out:
                    self._finish(c, sel, live)
                return
            for _ in range(16):  # bounded, so one fast sender cannot starve the others
                want = (HEADER.size - len(c.hdr) if c.remaining is None
                        else min(len(buf), c.remaining))
                n = c.sock.recv_into(view[:want])
                if n == 0:
                    got = (f"{len(c.hdr)} of 8 header bytes" if c.remaining is None
                           else f"{c.nbytes} payload bytes, {c.remaining} missing")
                    self._finish(c, sel, live, f"EOF after {got}")
                    return
                if c.remaining is None:
                    c.hdr += view[:n]
                    if len(c.hdr) < HEADER.size:
                        continue
                    (c.remaining,) = HEADER.unpack(c.hdr)
                    if c.remaining > self.max_len:
                        self._finish(c, sel, live,
                                     f"length header {c.remaining} > max_len {self.max_len}")
                        return
                else:
                    c.hasher.update(view[:n])
                    c.nbytes += n
                    c.remaining -= n
                if c.remaining == 0:
                    digest = c.hasher.digest()
                    self._record(c, digest, None)
                    c.out = digest
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    if c.out:
                        sel.modify(c.sock, selectors.EVENT_WRITE, c)
                    else:
                        self._finish(c, sel, live)
                    return
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # after the record (digest computed) the client merely left before reading it
            self._finish(c, sel, live, f"{e.__class__.__name__}: {e} after {c.nbytes} payload "
                                       "bytes")


def tcp_send(netns: Optional[str], server_addr: str, port: int, payload: bytes,
             timeout: float = 30.0, source: Union[None, str, Addr] = None,
             verify: bool = False) -> Tuple[bytes, Addr]:
    """Connect from ``netns`` to ``server_addr:port``, send length header + ``payload``, read the
    32-byte digest. Returns ``(digest, local_addr)`` where ``local_addr`` is the client's own
    (address, port). ``timeout`` bounds the whole exchange. ``source``: bind to this address
    (or (address, port)) first. ``verify``: also assert the digest equals sha256(payload)."""
    _check_addr(server_addr)
    deadline = time.monotonic() + timeout
    where = f"tcp_send {netns_label(netns)} -> [{server_addr}]:{port}"
    s = socket_in(netns, _family(server_addr), socket.SOCK_STREAM)
    local: Optional[Addr] = None
    phase = "connect"
    got = bytearray()

    def left() -> float:
        rem = deadline - time.monotonic()
        if rem <= 0:
            raise socket.timeout()
        return rem

    try:
        src = _source(source)
        if src is not None:
            if src[1]:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(src)
        s.settimeout(left())
        s.connect((server_addr, port))
        local = _norm(s.getsockname())
        phase = "send"
        s.settimeout(left())
        s.sendall(HEADER.pack(len(payload)))
        s.settimeout(left())
        s.sendall(payload)
        phase = "read digest"
        while len(got) < DIGEST_LEN:
            s.settimeout(left())
            chunk = s.recv(DIGEST_LEN - len(got))
            if not chunk:
                raise AssertionError(f"{where} from {local}: server closed after {len(got)} of "
                                     f"{DIGEST_LEN} digest bytes")
            got += chunk
    except socket.timeout:
        raise TimeoutError(f"{where} from {local}: timed out ({timeout}s) in phase {phase!r}"
                           f"{f' with {len(got)} digest bytes' if got else ''}") from None
    except OSError as e:
        raise AssertionError(f"{where} from {local}: {phase} failed: "
                             f"{e.__class__.__name__}: {e}") from e
    finally:
        s.close()
    digest = bytes(got)
    if verify and digest != sha256(payload):
        raise AssertionError(f"{where} from {local}: digest mismatch for {len(payload)} bytes")
    return digest, local


class ConnResult(tuple):
    """``(local_addr, ok)`` from :func:`tcp_many`, with ``.local_addr``, ``.ok`` and ``.error``
    (None when ok) as attributes."""

    def __new__(cls, local_addr: Optional[Addr], ok: bool, error: Optional[str] = None):
        self = tuple.__new__(cls, (local_addr, ok))
        self.error = error
        return self

    local_addr = property(lambda self: self[0])
    ok = property(lambda self: self[1])

    def __repr__(self):
        return f"ConnResult({self[0]!r}, {self[1]!r}{'' if self.ok else f', {self.error!r}'})"


class _Cli:
    __slots__ = ("i", "sock", "local", "out", "sent", "got", "expect", "error", "done")

    def __init__(self, i, sock):
        self.i, self.sock = i, sock
        self.local: Optional[Addr] = None
        self.out = None
        self.sent = 0
        self.got = bytearray()
        self.expect = b""
        self.error: Optional[str] = None
        self.done = False


def tcp_many(netns: Optional[str], server_addr: str, port: int, n: int, payload_size: int,
             concurrency: Optional[int] = None, timeout: float = 60.0, seed: int = 0,
             source: Optional[str] = None) -> List[ConnResult]:
    """Open ``n`` connections from ``netns`` that are really concurrent: in windows of
    ``concurrency`` (default all ``n``), every connection of the window is established and held
    open before any of them sends a byte; then all send and all read their digest, multiplexed
    in this thread. Each connection sends a distinct ``payload_size``-byte payload (its index in
    the first 8 bytes) and its digest is checked. Returns one :class:`ConnResult`
    ``(local_addr, ok)`` per connection, in order; failures (refused, reset, wrong digest,
    ``timeout`` for the whole call exceeded) are ``ok=False`` with ``.error``, never raised.
    ``source``: bind every connection to this local address (the kernel picks the ports)."""
    _check_addr(server_addr)
    if n <= 0:
        return []
    window = max(1, min(concurrency or n, n))
    _ensure_nofile(window + 8)
    fam = _family(server_addr)
    base = payload(payload_size, seed)
    k = min(8, payload_size)
    deadline = time.monotonic() + timeout
    results: List[ConnResult] = []
    src = None if source is None else (_check_addr(source), 0)
    for start in range(0, n, window):
        clis = _many_window(netns, fam, server_addr, port, range(start, min(n, start + window)),
                            base, k, deadline, timeout, src)
        results.extend(ConnResult(c.local, c.error is None, c.error) for c in clis)
    return results


def _many_window(netns, fam, server_addr, port, idxs, base, k, deadline, timeout, src):
    clis: List[_Cli] = []
    sel = selectors.DefaultSelector()
    try:
        with in_netns(netns):
            for i in idxs:
                clis.append(_Cli(i, socket.socket(fam, socket.SOCK_STREAM)))
        # phase 1: connect everything, wait until all are established (or failed)
        pending = 0
        for c in clis:
            c.sock.setblocking(False)
            try:
                if src is not None:
                    c.sock.bind(src)
                rc = c.sock.connect_ex((server_addr, port))
            except OSError as e:
                c.error = f"connect: {e}"
                continue
            if rc in (0, errno.EINPROGRESS):
                sel.register(c.sock, selectors.EVENT_WRITE, c)
                pending += 1
            else:
                c.error = f"connect: {os.strerror(rc)}"
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                c = key.data
                sel.unregister(c.sock)
                pending -= 1
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    c.error = f"connect: {os.strerror(err)}"
                else:
                    c.local = _norm(c.sock.getsockname())
        for c in clis:
            if c.local is None and c.error is None:
                with contextlib.suppress(Exception):
                    sel.unregister(c.sock)
                c.error = f"connect: timed out ({timeout}s for the whole call)"
        # phase 2: all established connections send, then read their digest
        active = 0
        for c in clis:
            if c.error is not None:
                continue
            body = bytearray(base)
            body[:k] = c.i.to_bytes(8, "big")[-k:] if k else b""
            c.expect = sha256(body)
            c.out = memoryview(bytes(HEADER.pack(len(body)) + body))
            sel.register(c.sock, selectors.EVENT_WRITE, c)
            active += 1
        while active:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, ev in sel.select(timeout=min(left, 1.0)):
                c = key.data
                try:
                    if c.sent < len(c.out):
                        c.sent += c.sock.send(c.out[c.sent:c.sent + (1 << 20)])
                        if c.sent == len(c.out):
                            sel.modify(c.sock, selectors.EVENT_READ, c)
                        continue
                    chunk = c.sock.recv(DIGEST_LEN - len(c.got))
                    if not chunk:
                        c.error = f"server closed after {len(c.got)} digest bytes"
                    else:
                        c.got += chunk
                        if len(c.got) < DIGEST_LEN:
                            continue
                        if bytes(c.got) != c.expect:
                            c.error = "digest mismatch"
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    c.error = f"{'send' if c.sent < len(c.out) else 'read'}: {e}"
                c.done = True
                sel.unregister(c.sock)
                c.sock.close()
                active -= 1
        for c in clis:
            if c.error is None and not c.done:
                phase = "send" if c.sent < len(c.out) else "read digest"
                c.error = f"{phase}: timed out ({timeout}s for the whole call)"
        return clis
    finally:
        sel.close()
        for c in clis:
            c.sock.close()


# ---- UDP ------------------------------------------------------------------------------------------
class Datagram(NamedTuple):
    peer: Addr     # (address, port) of the sender as seen by the server
    data: bytes


class UdpEchoServer(ThreadedService):
    """UDP server in ``netns`` that sends every datagram back unchanged to its sender (``echo=
    False``: only records). ``.datagrams``: snapshot list of :class:`Datagram`; ``.port``."""

    def __init__(self, netns: Optional[str], addr: str, port: int = 0,
                 family: Optional[int] = None, echo: bool = True):
        self.netns, self.addr = netns, _check_addr(addr)
        self.family = family or _family(addr)
        self.requested_port, self.echo = port, echo
        self.port = 0
        self._lock = threading.Lock()
        self._dgrams: List[Datagram] = []
        self.send_errors: List[str] = []

    @property
    def datagrams(self) -> List[Datagram]:
        with self._lock:
            return list(self._dgrams)

    def __enter__(self) -> "UdpEchoServer":
        s = socket_in(self.netns, self.family, socket.SOCK_DGRAM)
        try:
            if self.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            try:
                s.bind((self.addr, self.requested_port))
            except OSError as e:
                raise AssertionError(f"UdpEchoServer: cannot bind {self.addr}:"
                                     f"{self.requested_port} in {netns_label(self.netns)}: "
                                     f"{e}") from e
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._sock = s
        self.port = s.getsockname()[1]
        self._start(f"UdpEchoServer[{self.netns}]{self.addr}:{self.port}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop_thread()

    def _run(self) -> None:
        s = self._sock
        poller = select.poll()
        poller.register(s.fileno(), select.POLLIN)
        poller.register(self._waker.r, select.POLLIN)
        try:
            while not self._stop.is_set():
                poller.poll(500)
                for _ in range(1024):
                    try:
                        data, peer = s.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:  # e.g. ICMP errors queued on the socket
                        self.send_errors.append(f"recv: {e}")
                        continue
                    with self._lock:
                        self._dgrams.append(Datagram(_norm(peer), data))
                    if self.echo:
                        try:
                            s.sendto(data, peer)
                        except OSError as e:
                            self.send_errors.append(f"sendto {peer}: {e}")
        finally:
            s.close()


def udp_roundtrip(netns: Optional[str], server_addr: str, port: int, payload: bytes,
                  timeout: float = 5.0, retries: int = 3,
                  source: Union[None, str, Addr] = None) -> Tuple[bytes, Addr]:
    """Send ``payload`` from ``netns`` to ``server_addr:port`` and wait for the reply. Up to
    ``retries`` sends (at least one), each waiting ``timeout / retries`` seconds, so ``timeout``
    bounds the call. Only a datagram from exactly (server_addr, port) counts; others are listed
    in the error. Returns ``(reply, local_addr)``; ``local_addr`` is the real source
    (address, port): unless ``source`` is given, the socket is bound to the address the kernel
    routes from."""
    _check_addr(server_addr)
    fam = _family(server_addr)
    where = f"udp_roundtrip {netns_label(netns)} -> [{server_addr}]:{port}"
    dst = (server_addr, port)
    attempts = max(1, retries)
    strays: List[str] = []
    local = None
    s = socket_in(netns, fam, socket.SOCK_DGRAM)
    try:
        src = _source(source)
        if src is None:  # learn the routed source address so local_addr is not the wildcard
            probe = socket_in(netns, fam, socket.SOCK_DGRAM)
            try:
                probe.connect(dst)
                src = (_norm(probe.getsockname())[0], 0)
            except OSError as e:
                raise AssertionError(f"{where}: no route: {e}") from e
            finally:
                probe.close()
        try:
            s.bind(src)
        except OSError as e:
            raise AssertionError(f"{where}: cannot bind {src}: {e}") from e
        local = _norm(s.getsockname())
        for _attempt in range(attempts):
            try:
                s.sendto(payload, dst)
            except OSError as e:
                raise AssertionError(f"{where} from {local}: sendto failed: {e}") from e
            until = time.monotonic() + timeout / attempts
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    data, peer = s.recvfrom(65535)
                except socket.timeout:
                    break
                except ConnectionRefusedError:  # ICMP port unreachable for an earlier send
                    strays.append("ICMP port unreachable")
                    continue
                if _same_addr(peer, dst):
                    return data, local
                strays.append(f"{len(data)} bytes from {_norm(peer)}")
    finally:
        s.close()
    extra = f"; other datagrams/errors: {strays[:10]}" if strays else ""
    raise TimeoutError(f"{where} from {local}: no reply after {attempts} sends in {timeout}s{extra}")



# ---- a kernel-only topology for testing tools ---------------------------------------------------
#: ``veth_pair``'s addresses, A's then B's, per family; and its interface names (A's, B's).
PAIR_ADDR = {4: ("198.18.200.1", "198.18.200.2"), 6: ("2001:2:0:c8::1", "2001:2:0:c8::2")}
PAIR_IF = ("hpa0", "hpb0")
_IFA_F_NODAD = 0x02


def _sysctl(ns: str, key: str, value: str) -> None:
    """Write a net sysctl of namespace ``ns`` (/proc/sys/net follows the writer's namespace)."""
    with _netns.entered(ns):
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


@contextlib.contextmanager
def veth_pair(prefix: str):
    """Two new namespaces ``prefix + "a"`` and ``prefix + "b"`` joined by one veth (``PAIR_IF``)
    with ``PAIR_ADDR`` (IPv6 without DAD, usable at once): yields (a, b, mac_a, mac_b). Both
    namespaces are removed on exit; one that exists already is refused, never reused."""
    from pyroute2 import IPRoute
    from pyroute2 import netns as pnetns

    a, b = prefix + "a", prefix + "b"
    created = []
    try:
        for name in (a, b):
            assert not _netns.exists(name), f"namespace {name} already exists"
            pnetns.create(name)
            created.append(name)
        for name in (a, b):  # quiet, immediately usable IPv6 on links created from now on
            _sysctl(name, "net.ipv6.conf.default.accept_dad", "0")
            _sysctl(name, "net.ipv6.conf.default.router_solicitations", "0")
        macs = {}
        with _netns.entered(a):
            with IPRoute() as ipr:
                ipr.link("add", ifname=PAIR_IF[0], kind="veth",
                         peer={"ifname": PAIR_IF[1], "net_ns_fd": b})
        for name, ifname, side in ((a, PAIR_IF[0], 0), (b, PAIR_IF[1], 1)):
            with _netns.entered(name):
                with IPRoute() as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                    idx = ipr.link_lookup(ifname=ifname)[0]
                    ipr.addr("add", index=idx, address=PAIR_ADDR[4][side], prefixlen=24)
                    ipr.addr("add", index=idx, address=PAIR_ADDR[6][side], prefixlen=64,
                             flags=_IFA_F_NODAD)
                    ipr.link("set", index=idx, state="up")
                    macs[name] = ipr.get_links(idx)[0].get("IFLA_ADDRESS")
        yield a, b, macs[a], macs[b]
    finally:
        for name in created:
            pnetns.remove(name)
