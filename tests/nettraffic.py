"""Real traffic between network namespaces, for integration tests of the NAT data path.

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
import fcntl
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
from typing import Callable, Iterable, List, NamedTuple, Optional, Tuple, Union

from hyperplane import netns as _netns

__all__ = [
    "TcpServer", "ServerConn", "tcp_send", "tcp_many", "ConnResult",
    "UdpEchoServer", "Datagram", "udp_roundtrip",
    "Sniffer", "Frame", "inject", "mac_of", "ifindex_of",
    "payload", "sha256", "bpf_l4",
    "PAIR_ADDR", "PAIR_IF", "veth_pair",
]

Addr = Tuple[str, int]

HEADER = struct.Struct(">Q")
DIGEST_LEN = 32
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SIOCGIFHWADDR = 0x8927

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


def _ns(name: Optional[str]):
    return contextlib.nullcontext() if name is None else _netns.entered(name)


def _where(name: Optional[str]) -> str:
    return f"netns {name!r}" if name is not None else "the caller's netns"


def _socket_in(name: Optional[str], family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ``name``."""
    try:
        with _ns(name):
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


class _ThreadedService:
    """Start/stop plumbing shared by the servers and the sniffer: one daemon thread, a waker,
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


class TcpServer(_ThreadedService):
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
                    raise TimeoutError(f"TcpServer {self.addr}:{self.port} in {_where(self.netns)}"
                                       f": {len(self._conns)} of {n} connections after {timeout}s")
                self._cond.wait(left)
            return list(self._conns)

    def _record(self, c: _SrvConn, digest: Optional[bytes], error: Optional[str]) -> None:
        c.recorded = True
        with self._cond:
            self._conns.append(ServerConn(c.peer, digest, c.nbytes, error))
            self._cond.notify_all()

    # -- lifecycle
    def __enter__(self) -> "TcpServer":
        s = _socket_in(self.netns, self.family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((self.addr, self.requested_port))
            except OSError as e:
                raise AssertionError(f"TcpServer: cannot bind {self.addr}:{self.requested_port} "
                                     f"in {_where(self.netns)}: {e}") from e
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
    where = f"tcp_send {_where(netns)} -> [{server_addr}]:{port}"
    s = _socket_in(netns, _family(server_addr), socket.SOCK_STREAM)
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
        with _ns(netns):
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


class UdpEchoServer(_ThreadedService):
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
        s = _socket_in(self.netns, self.family, socket.SOCK_DGRAM)
        try:
            if self.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            try:
                s.bind((self.addr, self.requested_port))
            except OSError as e:
                raise AssertionError(f"UdpEchoServer: cannot bind {self.addr}:"
                                     f"{self.requested_port} in {_where(self.netns)}: {e}") from e
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
    where = f"udp_roundtrip {_where(netns)} -> [{server_addr}]:{port}"
    dst = (server_addr, port)
    attempts = max(1, retries)
    strays: List[str] = []
    local = None
    s = _socket_in(netns, fam, socket.SOCK_DGRAM)
    try:
        src = _source(source)
        if src is None:  # learn the routed source address so local_addr is not the wildcard
            probe = _socket_in(netns, fam, socket.SOCK_DGRAM)
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


# ---- raw frames -------------------------------------------------------------------------------------
class Frame(NamedTuple):
    data: bytes      # the Ethernet frame
    pkttype: int     # PACKET_HOST 0, BROADCAST 1, MULTICAST 2, OTHERHOST 3, OUTGOING 4
    time: float      # time.monotonic() when read


def _assemble(prog) -> List[Tuple[int, int, int, int]]:
    """Classic BPF from instructions whose jump targets are absolute indices (readable layout)
    to the kernel's relative offsets."""
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        if code == _BPF_JA:
            out.append((code, 0, 0, k - i - 1))
        elif code & 0x07 == 0x05:  # conditional jumps
            out.append((code, jt - i - 1, jf - i - 1, k))
        else:
            out.append((code, jt, jf, k))
    return out


_BPF_LDH, _BPF_LDB, _BPF_LDH_IND, _BPF_LDXB_MSH = 0x28, 0x30, 0x48, 0xB1
_BPF_JA, _BPF_JEQ, _BPF_JSET, _BPF_RET = 0x05, 0x15, 0x45, 0x06


def bpf_l4(proto: Union[int, str], port: Optional[int] = None) -> List[Tuple[int, int, int, int]]:
    """A classic BPF program (list of (code, jt, jf, k)) accepting Ethernet frames that carry
    IPv4 (unfragmented or first fragment) or IPv6 (no extension headers) with transport
    ``proto`` ("tcp", "udp", "icmp", "icmp6" or a number) and, if given, ``port`` as source or
    destination port. For :class:`Sniffer` without tcpdump/libpcap expressions."""
    p = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58}[proto] if isinstance(proto, str) else proto
    LDH, LDB, LDH_IND, LDXB_MSH = _BPF_LDH, _BPF_LDB, _BPF_LDH_IND, _BPF_LDXB_MSH
    JA, JEQ, JSET, RET = _BPF_JA, _BPF_JEQ, _BPF_JSET, _BPF_RET
    if port is None:
        return _assemble([
            (LDH, 0, 0, 12),            # 0 ethertype
            (JEQ, 2, 4, 0x0800),        # 1 IPv4?
            (LDB, 0, 0, 23),            # 2 IPv4 protocol
            (JEQ, 7, 8, p),             # 3
            (JEQ, 5, 8, 0x86DD),        # 4 IPv6? (A still holds the ethertype)
            (LDB, 0, 0, 20),            # 5 IPv6 next header
            (JEQ, 7, 8, p),             # 6
            (RET, 0, 0, 0x40000),       # 7 accept
            (RET, 0, 0, 0),             # 8 drop
        ])
    ACC, DROP = 18, 19
    return _assemble([
        (LDH, 0, 0, 12),                # 0 ethertype
        (JEQ, 2, 11, 0x0800),           # 1 IPv4?
        (LDB, 0, 0, 23),                # 2 IPv4 protocol
        (JEQ, 4, DROP, p),              # 3
        (LDH, 0, 0, 20),                # 4 flags + fragment offset
        (JSET, DROP, 6, 0x1FFF),        # 5 non-first fragment: no ports
        (LDXB_MSH, 0, 0, 14),           # 6 X = IPv4 header length
        (LDH_IND, 0, 0, 14),            # 7 source port
        (JEQ, ACC, 9, port),            # 8
        (LDH_IND, 0, 0, 16),            # 9 destination port
        (JA, 0, 0, 17),                 # 10 -> common compare
        (JEQ, 12, DROP, 0x86DD),        # 11 IPv6? (A still holds the ethertype)
        (LDB, 0, 0, 20),                # 12 IPv6 next header
        (JEQ, 14, DROP, p),             # 13
        (LDH, 0, 0, 54),                # 14 source port
        (JEQ, ACC, 16, port),           # 15
        (LDH, 0, 0, 56),                # 16 destination port
        (JEQ, ACC, DROP, port),         # 17
        (RET, 0, 0, 0x40000),           # 18 accept
        (RET, 0, 0, 0),                 # 19 drop
    ])


def _compile_bpf(bpf) -> bytes:
    """BPF as raw ``struct sock_filter`` bytes, from a tcpdump expression (compiled by libpcap
    through scapy, for Ethernet) or a list of (code, jt, jf, k)."""
    if isinstance(bpf, str):
        import ctypes
        try:
            from scapy.arch.common import compile_filter
            fprog = compile_filter(bpf, linktype=1)  # DLT_EN10MB
        except Exception as e:
            raise AssertionError(f"cannot compile BPF {bpf!r} (libpcap needed): {e}; "
                                 "use nettraffic.bpf_l4() instead") from e
        return ctypes.string_at(ctypes.addressof(fprog.bf_insns.contents), fprog.bf_len * 8)
    ins = list(bpf)
    for code, jt, jf, k in ins:
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ValueError(f"BPF jump offset out of range in {ins}")
    return b"".join(struct.pack("HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in ins)


class Sniffer(_ThreadedService):
    """Capture every frame on ``ifname`` in ``netns``: an AF_PACKET socket bound before
    ``__enter__`` returns (so nothing that arrives afterwards is missed), read by a thread until
    exit, then drained. ``bpf``: tcpdump expression (needs tcpdump) or a classic BPF list such as
    :func:`bpf_l4`, attached before the socket is bound so no unfiltered frame slips in.
    ``outgoing=False`` skips frames the interface sends. On exit, AssertionError if the kernel
    dropped frames for this socket (``strict=False``: only counted in ``.drops``).

    ``.frames``: raw frames (bytes); ``.records``: :class:`Frame` with packet type and time;
    ``.matching(pred)``: the scapy ``Ether`` frames for which ``pred(ether)`` is true;
    ``.wait_for(pred, count, timeout)`` waits for matches while capturing."""

    def __init__(self, netns: Optional[str], ifname: str, bpf=None, outgoing: bool = True,
                 strict: bool = True, rcvbuf: int = 32 << 20):
        self.netns, self.ifname, self.bpf = netns, ifname, bpf
        self.outgoing, self.strict, self.rcvbuf = outgoing, strict, rcvbuf
        self._lock = threading.Lock()
        self._recs: List[Frame] = []
        self.drops = 0
        self._filter_out = False

    @property
    def records(self) -> List[Frame]:
        with self._lock:
            return list(self._recs)

    @property
    def frames(self) -> List[bytes]:
        return [r.data for r in self.records]

    def matching(self, pred: Optional[Callable] = None) -> list:
        from scapy.layers.l2 import Ether
        out = []
        for f in self.frames:
            e = Ether(f)
            if pred is None or pred(e):
                out.append(e)
        return out

    def wait_for(self, pred: Optional[Callable] = None, count: int = 1,
                 timeout: float = 5.0) -> list:
        """The matching frames once at least ``count`` were captured; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.matching(pred)
            if len(got) >= count:
                return got
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Sniffer {self.ifname} in {_where(self.netns)}: {len(got)} of "
                                   f"{count} matching frames after {timeout}s "
                                   f"({len(self.records)} captured in all)")
            time.sleep(0.01)

    def __enter__(self) -> "Sniffer":
        s = _socket_in(self.netns, socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: no rx yet
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            if self.bpf is not None:
                code = _compile_bpf(self.bpf)
                import ctypes
                buf = ctypes.create_string_buffer(code)
                fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            if not self.outgoing:
                try:
                    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                except OSError:
                    self._filter_out = True
            try:
                with _ns(self.netns):
                    s.bind((self.ifname, ETH_P_ALL))
            except OSError as e:
                raise AssertionError(f"Sniffer: cannot bind to {self.ifname!r} in "
                                     f"{_where(self.netns)}: {e}") from e
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._sock = s
        self._start(f"Sniffer[{self.netns}]{self.ifname}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop_thread()
        if self.drops and self.strict and not any(exc):
            raise AssertionError(f"Sniffer {self.ifname} in {_where(self.netns)}: the kernel "
                                 f"dropped {self.drops} frames (socket buffer full)")

    def _stats(self) -> None:
        with contextlib.suppress(OSError):
            _packets, drops = struct.unpack(
                "II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.drops += drops

    def _drain(self, buf, view) -> None:
        s = self._sock
        while True:
            try:
                n, addr = s.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            pkttype = addr[2]
            if self._filter_out and pkttype == PACKET_OUTGOING:
                continue
            rec = Frame(bytes(view[:n]), pkttype, time.monotonic())
            with self._lock:
                self._recs.append(rec)

    def _run(self) -> None:
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._waker.r, select.POLLIN)
        try:
            while not self._stop.is_set():
                poller.poll(500)
                self._drain(buf, view)
            self._drain(buf, view)  # what arrived before exit
            self._stats()
        finally:
            self._sock.close()


def inject(netns: Optional[str], ifname: str, frames: Iterable, timeout: float = 5.0) -> int:
    """Send raw Ethernet frames (bytes, or scapy packets) out of ``ifname`` in ``netns`` through
    an AF_PACKET socket. Returns the number sent."""
    s = _socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: never receives
    sent = 0
    try:
        try:
            with _ns(netns):
                s.bind((ifname, 0))
        except OSError as e:
            raise AssertionError(f"inject: no interface {ifname!r} in {_where(netns)}: {e}") from e
        s.settimeout(timeout)
        for f in frames:
            b = bytes(f)
            if len(b) < 14:
                raise ValueError(f"inject: {len(b)}-byte frame is shorter than an Ethernet header")
            try:
                n = s.send(b)
            except socket.timeout:
                raise TimeoutError(f"inject on {ifname} in {_where(netns)}: send timed out after "
                                   f"{sent} frames") from None
            except OSError as e:
                raise AssertionError(f"inject on {ifname} in {_where(netns)}: frame {sent} "
                                     f"({len(b)} bytes): {e}") from e
            if n != len(b):
                raise AssertionError(f"inject on {ifname}: sent {n} of {len(b)} bytes")
            sent += 1
    finally:
        s.close()
    return sent


def mac_of(netns: Optional[str], ifname: str) -> str:
    """The MAC address of ``ifname`` in ``netns`` as "aa:bb:cc:dd:ee:ff" (SIOCGIFHWADDR)."""
    s = _socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16s16x", ifname.encode())
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, ifr)
        except OSError as e:
            raise AssertionError(f"mac_of: no interface {ifname!r} in {_where(netns)}: {e}") \
                from e
    finally:
        s.close()
    return ":".join(f"{b:02x}" for b in res[18:24])


def ifindex_of(netns: Optional[str], ifname: str) -> int:
    """The interface index of ``ifname`` inside ``netns``."""
    try:
        with _ns(netns):
            return socket.if_nametoindex(ifname)
    except OSError as e:
        raise AssertionError(f"ifindex_of: no interface {ifname!r} in {_where(netns)}: {e}") \
            from e


# ---- additions for the data-path lab tests -------------------------------------------------
def bpf_ethertype(*ethertypes: int) -> List[Tuple[int, int, int, int]]:
    """A classic BPF program (for :class:`Sniffer`) accepting Ethernet frames whose EtherType is
    one of ``ethertypes`` (e.g. ``0x0806`` ARP, ``0x86DD`` IPv6); no VLAN tags."""
    if not ethertypes:
        raise ValueError("bpf_ethertype: at least one EtherType")
    n = len(ethertypes)
    acc, drop = n + 1, n + 2
    prog = [(_BPF_LDH, 0, 0, 12)]
    for i, t in enumerate(ethertypes):
        prog.append((_BPF_JEQ, acc, (i + 2) if i + 1 < n else drop, t))
    prog += [(_BPF_RET, 0, 0, 0x40000), (_BPF_RET, 0, 0, 0)]
    return _assemble(prog)


def csum_error_counters(netns: Optional[str]) -> dict:
    """The kernel's checksum/header error counters in ``netns``, read from
    ``/proc/thread-self/net/{snmp,snmp6,netstat}`` while this thread is inside it:
    ``{"Tcp.InCsumErrors": n, "Udp.InCsumErrors": n, "Ip.InHdrErrors": n,
    "IpExt.InCsumErrors": n, "Udp6InCsumErrors": n, "Ip6InHdrErrors": n}``
    (TCP over IPv6 is counted in ``Tcp``; a counter the kernel does not have is left out)."""
    want = {"Tcp": ("InCsumErrors",), "Udp": ("InCsumErrors",), "Ip": ("InHdrErrors",),
            "IpExt": ("InCsumErrors",)}
    want6 = ("Udp6InCsumErrors", "Ip6InHdrErrors")
    texts = {}
    with _ns(netns):
        for f in ("snmp", "netstat", "snmp6"):
            try:
                with open(f"/proc/thread-self/net/{f}") as fh:
                    texts[f] = fh.read()
            except FileNotFoundError:  # snmp6 is absent when IPv6 is disabled
                texts[f] = ""
    out = {}
    for f in ("snmp", "netstat"):
        lines = texts[f].splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            proto, names = head.split(":", 1)
            _, values = vals.split(":", 1)
            for k, v in zip(names.split(), values.split()):
                if k in want.get(proto, ()):
                    out[f"{proto}.{k}"] = int(v)
    for line in texts["snmp6"].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in want6:
            out[parts[0]] = int(parts[1])
    return out


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
