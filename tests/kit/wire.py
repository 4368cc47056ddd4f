"""Frames on the wire, for the namespace tests: capture what an interface receives
(``Sniffer``, with classic BPF filters built here or tcpdump expressions), inject raw Ethernet
frames, send raw IP packets through a namespace's own routing, and read the kernel's checksum
error counters.

The same rules as kit.traffic (whose socket and thread plumbing this module uses): every
socket is created in its namespace, every wait is bounded, failures are TimeoutError or
AssertionError with the namespace in the message. Only the benchmark ranges 198.18.0.0/15
and 2001:2::/48 are used.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import secrets
import select
import socket
import struct
import threading
import time
from typing import Callable, Iterable, List, NamedTuple, Optional, Tuple, Union

from kit.frames import inet_checksum
from kit.traffic import ThreadedService, in_netns, netns_label, socket_in

__all__ = [
    "Sniffer", "Frame", "inject", "mac_of", "ifindex_of", "bpf_l4", "bpf_ethertype",
    "csum_error_counters", "ip_packet", "send_raw",
]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SIOCGIFHWADDR = 0x8927
#: What :func:`ip_packet` carries unless told otherwise (random per run: a sniffer can tell a
#: test's own packets from everything else).
MARKER = b"hp-wire-" + secrets.token_hex(4).encode()


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
        try:
            from scapy.arch.common import compile_filter
            fprog = compile_filter(bpf, linktype=1)  # DLT_EN10MB
        except Exception as e:
            raise AssertionError(f"cannot compile BPF {bpf!r} (libpcap needed): {e}; "
                                 "use kit.wire.bpf_l4() instead") from e
        return ctypes.string_at(ctypes.addressof(fprog.bf_insns.contents), fprog.bf_len * 8)
    ins = list(bpf)
    for code, jt, jf, k in ins:
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ValueError(f"BPF jump offset out of range in {ins}")
    return b"".join(struct.pack("HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in ins)


class Sniffer(ThreadedService):
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
                raise TimeoutError(f"Sniffer {self.ifname} in {netns_label(self.netns)}: "
                                   f"{len(got)} of {count} matching frames after {timeout}s "
                                   f"({len(self.records)} captured in all)")
            time.sleep(0.01)

    def __enter__(self) -> "Sniffer":
        s = socket_in(self.netns, socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: no rx yet
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            if self.bpf is not None:
                code = _compile_bpf(self.bpf)
                buf = ctypes.create_string_buffer(code)
                fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            if not self.outgoing:
                try:
                    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                except OSError:
                    self._filter_out = True
            try:
                with in_netns(self.netns):
                    s.bind((self.ifname, ETH_P_ALL))
            except OSError as e:
                raise AssertionError(f"Sniffer: cannot bind to {self.ifname!r} in "
                                     f"{netns_label(self.netns)}: {e}") from e
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
            raise AssertionError(f"Sniffer {self.ifname} in {netns_label(self.netns)}: the kernel "
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
    s = socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: never receives
    sent = 0
    try:
        try:
            with in_netns(netns):
                s.bind((ifname, 0))
        except OSError as e:
            raise AssertionError(f"inject: no interface {ifname!r} in {netns_label(netns)}: "
                                 f"{e}") from e
        s.settimeout(timeout)
        for f in frames:
            b = bytes(f)
            if len(b) < 14:
                raise ValueError(f"inject: {len(b)}-byte frame is shorter than an Ethernet header")
            try:
                n = s.send(b)
            except socket.timeout:
                raise TimeoutError(f"inject on {ifname} in {netns_label(netns)}: send timed out "
                                   f"after {sent} frames") from None
            except OSError as e:
                raise AssertionError(f"inject on {ifname} in {netns_label(netns)}: frame {sent} "
                                     f"({len(b)} bytes): {e}") from e
            if n != len(b):
                raise AssertionError(f"inject on {ifname}: sent {n} of {len(b)} bytes")
            sent += 1
    finally:
        s.close()
    return sent


def mac_of(netns: Optional[str], ifname: str) -> str:
    """The MAC address of ``ifname`` in ``netns`` as "aa:bb:cc:dd:ee:ff" (SIOCGIFHWADDR)."""
    s = socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16s16x", ifname.encode())
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, ifr)
        except OSError as e:
            raise AssertionError(f"mac_of: no interface {ifname!r} in {netns_label(netns)}: {e}") \
                from e
    finally:
        s.close()
    return ":".join(f"{b:02x}" for b in res[18:24])


def ifindex_of(netns: Optional[str], ifname: str) -> int:
    """The interface index of ``ifname`` inside ``netns``."""
    try:
        with in_netns(netns):
            return socket.if_nametoindex(ifname)
    except OSError as e:
        raise AssertionError(f"ifindex_of: no interface {ifname!r} in {netns_label(netns)}: {e}") \
            from e


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
    with in_netns(netns):
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


# ---- raw IP through a namespace's own routing ---------------------------------------------------
def ip_packet(src: str, dst: str, proto: str, sport: int, dport: int, flags: int = 0x02,
              payload: bytes = MARKER) -> bytes:
    """An IPv4/IPv6 packet with a TCP (``flags``, default SYN) or UDP header, correct
    checksums, for a raw ``IPPROTO_RAW`` socket (the kernel adds only the link layer, and for
    IPv4 the header checksum and id)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    p = 6 if proto == "tcp" else 17
    if p == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 7777, 0, 5 << 4, flags, 65535, 0, 0)
        at = 16
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
        at = 6
    l4 += payload
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, p, len(l4))
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", len(l4), p)
    c = inet_checksum(pseudo + l4)
    if p == 17 and c == 0:
        c = 0xFFFF
    l4 = l4[:at] + struct.pack("!H", c) + l4[at + 2:]
    if s.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, p, 0,
                           s.packed, d.packed) + l4
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), p, 64, s.packed, d.packed) + l4


def send_raw(ns: str, packets: List[bytes], dst: str, rate: float = 10_000) -> int:
    """Send IP packets from namespace ``ns`` through its kernel's routing (raw IPPROTO_RAW
    socket, so any source address and port), about ``rate`` per second. Returns how many."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with in_netns(ns):
        s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent, t0 = 0, time.monotonic()
    try:
        for p in packets:
            while True:
                try:
                    s.sendto(p, (dst, 0))
                    break
                except OSError as e:   # the device queue is full for a moment: retry
                    if e.errno not in (105, 11):  # ENOBUFS, EAGAIN
                        raise
                    time.sleep(0.001)
            sent += 1
            if sent % 100 == 0:
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        s.close()
    return sent
