"""The pure-Python reference engine: the readable specification of the data path.

Read this file to learn what the compiled engine (``csrc/``) does; the two share one API and
the differential tests require identical verdicts and identical bytes from both. It is slow on
purpose-free grounds: clarity first. Never use it on a fast path.

The life of a packet (``Engine._translate``):

1. **parse** the IPv4/IPv6 header (walking IPv6 extension headers) and the TCP/UDP header;
   anything malformed or unhandled is a drop with one :class:`DropReason`;
2. **TTL / hop limit**: a packet that would expire in forwarding is dropped;
3. **conntrack lookup** of the packet's tuple in one hash table that holds every connection's
   *orig* tuple (as the environment sent it) and *reply* tuple (as the VPC answers it);
4. outbound miss = **new connection**: TCP must start with SYN, the security-group egress rules
   must allow it (stateful: only here, never for later packets or replies), the table must have
   room, an enabled ENI and a port are chosen, the *reply* tuple is checked/inserted first, then
   the orig tuple;
   inbound miss = **unsolicited**, dropped;
5. **state update** (TCP transition table, UDP replied flag), counters, timer refresh;
6. **manip**: source (outbound) or destination (inbound) rewritten, TTL decremented, checksums
   updated incrementally (RFC 1624), or by the partial-checksum rule for offloaded packets.

ICMP takes a side road after step 2 (``Engine._icmp``): an ICMP *error* (destination
unreachable, time exceeded, parameter problem, packet too big) embeds the start of the packet
that caused it, and that embedded packet names the connection the error is about. A related
error is translated, outer and embedded headers both (RFC 5508), without touching the
connection's state; everything else ICMP is dropped.
"""
from __future__ import annotations

import collections
import itertools
import math
import socket
import struct
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from hyperplane.engine import tcp_states
from hyperplane.engine.config import EngineConfig, Eni
from hyperplane.engine.constants import (
    FLAG_CSUM_PARTIAL, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, PROTO_NAMES, Direction, DropReason, TcpState,
    TimeoutClass, UdpState, Verdict, state_name,
)
from hyperplane.engine.types import (
    EVENT_KINDS, RESTORE_OUTCOMES, SNAP_RECORD, SNAP_TUPLE, EgressRule, EntryInfo, Event, Result, Tuple5, check_new_eni, eni_index,
    orig_key, parse_egress_rules, snapshot_blob, snapshot_records, tuple_key,
)

ENGINE_NAME = "reference"

MAX_EXT_HEADERS = 8       # IPv6 extension headers walked before giving up (EXT_HEADER_CHAIN)
MAX_PENDING_SIGNALS = 64  # signals kept until take_signals()
PORT_PROBES = 8           # candidate ports tried per ENI on a reply-tuple collision
MAX_SOURCES = 65536       # distinct sources counted when max_connections_per_source is set
_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
R = DropReason


def _not_collected(c: List[int], r: List[int]) -> List[int]:
    """Traffic since the last flow collection: packets modulo 2^32 (the C core keeps what it
    handed out in 32 bits: a delta is never 2^32 packets or more), bytes exact."""
    return [(c[0] - r[0]) & 0xFFFFFFFF, c[1] - r[1], (c[2] - r[2]) & 0xFFFFFFFF, c[3] - r[3]]


# --------------------------------------------------------------------------------------------
# Small helpers shared with the tests (and mirrored in csrc/hp_csum.h, csrc/hp_rand.h)
# --------------------------------------------------------------------------------------------
def splitmix64(state: int) -> Tuple[int, int]:
    """One step of SplitMix64: returns (new state, output). Seeds the port permutations."""
    state = (state + _GOLDEN) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def fold(x: int) -> int:
    """Fold a one's-complement accumulator to 16 bits."""
    while x > 0xFFFF:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def csum_delta(old: bytes, new: bytes) -> int:
    """RFC 1624: the one's-complement difference ``~m + m'`` of two equal-length byte strings."""
    acc = 0
    for i in range(0, len(old), 2):
        acc += (0xFFFF ^ ((old[i] << 8) | old[i + 1])) + ((new[i] << 8) | new[i + 1])
    return fold(acc)


def csum_update_full(csum: int, delta: int) -> int:
    """Update a complete (complemented) checksum: HC' = ~(~HC + ~m + m') (RFC 1624 eqn. 3)."""
    return 0xFFFF ^ fold((0xFFFF ^ csum) + delta)


def csum_update_partial(csum: int, delta: int) -> int:
    """Update a partial checksum: the field holds the *uncomplemented* pseudo-header sum that
    the NIC (or the kernel's GSO) completes later, so it moves by the delta, uncomplemented."""
    return fold(csum + delta)


def ip_header_sum_ok(hdr: bytes) -> bool:
    acc = 0
    for i in range(0, len(hdr), 2):
        acc += (hdr[i] << 8) | hdr[i + 1]
    return fold(acc) == 0xFFFF


def ones_sum(data: bytes) -> int:
    """The folded one's-complement sum of ``data`` (an odd last byte padded with a zero)."""
    acc = 0
    for i in range(0, len(data) - 1, 2):
        acc += (data[i] << 8) | data[i + 1]
    if len(data) % 2:
        acc += data[-1] << 8
    return fold(acc)


def port_permutation(seed: int, eni_index: int, family: int, proto: int,
                     port_min: int, port_max: int) -> List[int]:
    """The order in which a pool hands out ports: a seeded Fisher-Yates shuffle of the range.

    RFC 6056 3.3.1 ("simple port randomization") picks each port at random; a permutation gives
    the same unpredictability and, with freed ports queued at the back, also delays reuse
    (RFC 6056 3.1)."""
    pool_no = 1 + eni_index * 4 + (2 if family == 6 else 0) + (1 if proto == IPPROTO_UDP else 0)
    state = (seed ^ ((_GOLDEN * pool_no) & _M64)) & _M64
    perm = list(range(port_min, port_max + 1))
    for i in range(len(perm) - 1, 0, -1):
        state, r = splitmix64(state)
        j = r % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def addr_bytes(family: int, text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)


def addr_text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, raw)


# --------------------------------------------------------------------------------------------
# Port pool: one per (ENI address, protocol)
# --------------------------------------------------------------------------------------------
class PortPool:
    """Free ports in FIFO order; O(1) take-specific, take-first and free.

    ``free`` is an ordered dict used as a doubly linked list: the initial order is the seeded
    permutation, a freed port goes to the back, so it is handed out only after every port that
    was free before it. ``freed_at`` remembers when a port was last freed, so that keeping an
    environment's source port does not reuse a port within ``port_reuse_delay``.
    """

    def __init__(self, ports: List[int], reuse_delay: float):
        self.free: "collections.OrderedDict[int, None]" = collections.OrderedDict.fromkeys(ports)
        self.freed_at: Dict[int, float] = {}
        self.size = len(ports)
        self.reuse_delay = reuse_delay

    @property
    def used(self) -> int:
        return self.size - len(self.free)

    def candidates(self, preferred: int, now: float) -> Iterator[int]:
        """Ports to try, best first: the preferred one if reusable, then the FIFO head onward."""
        if preferred in self.free:
            t = self.freed_at.get(preferred)
            if t is None or t + self.reuse_delay <= now:
                yield preferred
        yield from itertools.islice(iter(self.free), PORT_PROBES)

    def take(self, port: int) -> None:
        del self.free[port]

    def release(self, port: int, now: float) -> None:
        self.free[port] = None
        self.freed_at[port] = now


# --------------------------------------------------------------------------------------------
# Connection entry
# --------------------------------------------------------------------------------------------
class Conn:
    """One tracked connection: both tuples, the ct state and the counters."""

    __slots__ = ("id", "family", "proto", "orig_key", "reply_key", "env_addr", "env_port",
                 "eni_index", "eni_addr", "eni_port", "state", "last_seen", "counters",
                 "reported")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)
        self.counters = [0, 0, 0, 0]  # packets_orig, bytes_orig, packets_reply, bytes_reply
        self.reported = [0, 0, 0, 0]  # the same, as handed to flow_collect() so far


class _Frag(NamedTuple):
    """A fragment's fields (RFC 791 / RFC 8200 4.5)."""

    first: bool      # offset 0 (it carries the transport header); else a later fragment
    more: bool       # more fragments follow
    ident: int       # identification: 16 bits (IPv4) or 32 (IPv6)
    offset: int      # where its data goes in the datagram's fragmentable part (bytes)
    length: int      # how many bytes of it this fragment carries


#: _walk_ext's answer for a later fragment: (LATER, next header, offset past the header, _Frag)
LATER = "later"


def _walk_ext(b, end: int, proto: int, l4: int, outer: bool = False):
    """Walk IPv6 extension headers (RFC 8200 4.1: hop-by-hop, routing, destination options,
    authentication header, fragment) from offset ``l4`` to the transport header, bounded;
    returns (protocol, offset, _Frag or None) or the DropReason.

    A Fragment header: an atomic fragment (offset 0, M 0; RFC 6946) is a whole packet and the
    walk goes on, so it does for a first fragment (offset 0, M 1), whose transport header
    follows; a later fragment ends the walk: (LATER, its next header, offset past it, _Frag).
    Not ``outer`` (a packet embedded in an ICMP error), a later fragment is R.FRAGMENT and a
    first fragment is walked through (it has the ports)."""
    frag = None
    for _ in range(MAX_EXT_HEADERS + 1):
        if proto not in (0, 43, 60, 51, 44):
            return proto, l4, frag
        if l4 + (8 if proto == 44 else 2) > end:
            return R.TRUNCATED if frag is None else R.BAD_FRAGMENT   # RFC 7112: whole chain
        if proto == 44:
            at = l4
            offset, more = ((b[at + 2] << 8) | b[at + 3]) & 0xFFF8, b[at + 3] & 1
            length = end - (at + 8)
            proto, l4 = b[at], at + 8
            if not offset and not more:
                continue                                  # an atomic fragment
            if not outer:
                if offset:
                    return R.FRAGMENT
                continue
            if frag is not None:                          # a second Fragment header
                return R.BAD_FRAGMENT
            if (more and length & 7) or offset + length > 65535:
                return R.BAD_FRAGMENT     # RFC 8200 4.5: a multiple of 8; at most 64 KiB
            frag = _Frag(not offset, bool(more), int.from_bytes(b[at + 4:at + 8], "big"),
                         offset, length)
            if offset:
                return LATER, proto, l4, frag
            continue
        hlen = (b[l4 + 1] + 2) * 4 if proto == 51 else (b[l4 + 1] + 1) * 8
        proto = b[l4]
        l4 += hlen
        if l4 > end:
            return R.TRUNCATED if frag is None else R.BAD_FRAGMENT   # RFC 7112: whole chain
    return R.EXT_HEADER_CHAIN


def _parse_embedded(b, at: int, end: int, family: int) -> Optional["_Embedded"]:
    """The packet an ICMP error embeds, at offset ``at`` up to ``end``; None when unusable.

    It must be of the error's own family, carry TCP or UDP (an error about an ICMP message is
    never translated: RFC 1122 3.2.2 forbids errors about errors, so one is forged or broken),
    not be a later fragment (no ports), and hold 8 bytes of transport header. Its length and
    checksum fields are not checked: they describe the whole original packet."""
    avail = end - at
    if avail < 1 or b[at] >> 4 != family:
        return None
    if family == 4:
        if avail < 20:
            return None
        ihl = (b[at] & 0x0F) * 4
        if ihl < 20 or ((b[at + 6] << 8) | b[at + 7]) & 0x1FFF:
            return None
        proto, l4 = b[at + 9], at + ihl
        src, dst = bytes(b[at + 12:at + 16]), bytes(b[at + 16:at + 20])
    else:
        if avail < 40:
            return None
        walk = _walk_ext(b, end, b[at + 6], at + 40)
        if isinstance(walk, DropReason):   # a later fragment included
            return None
        proto, l4, _ = walk
        src, dst = bytes(b[at + 8:at + 24]), bytes(b[at + 24:at + 40])
    if proto not in (IPPROTO_TCP, IPPROTO_UDP) or l4 + 8 > end:
        return None
    return _Embedded(proto, src.ljust(16, b"\0"), dst.ljust(16, b"\0"),
                     (b[l4] << 8) | b[l4 + 1], (b[l4 + 2] << 8) | b[l4 + 3], at, l4)


class _Embedded(NamedTuple):
    """The packet an ICMP error is about, as the error carries it (usually cut short)."""

    proto: int
    src: bytes       # 16 bytes, IPv4 in the first 4
    dst: bytes
    sport: int
    dport: int
    ip: int          # offset of its IP header from the start of the outer packet
    l4: int          # offset of its TCP/UDP header (8 bytes of it are present)


#: _Parsed.icmp
ICMP_NO, ICMP_QUERY, ICMP_ERROR = 0, 1, 2

FRAG_MAX = 1024           # fragmented datagrams tracked at once (csrc: HP_FRAG_MAX)
FRAG_TIMEOUT_V4 = 30.0    # the kernel's ipfrag_time
FRAG_TIMEOUT_V6 = 60.0    # the kernel's ip6frag_time


class _Tracker:
    """A fragmented datagram whose first fragment passed."""

    __slots__ = ("conn", "next", "expires")

    def __init__(self, conn, next_: int, expires: float):
        self.conn = conn
        self.next = next_          # the fragments seen cover [0, next) without a gap
        self.expires = expires


class _Parsed(NamedTuple):
    family: int
    proto: int
    l3_len: int      # IP total length (bytes counted per connection)
    l4: int          # offset of the TCP/UDP/ICMP header
    src: bytes
    dst: bytes
    sport: int       # ICMP: 0
    dport: int
    tcp_flags: int
    icmp: int = ICMP_NO                  # ICMP_QUERY: any ICMP message that is not an error
    inner: Optional[_Embedded] = None    # ICMP_ERROR: the packet the error is about
    end: int = 0                         # ICMP: offset of the end of the IP packet
    frag: Optional[_Frag] = None         # a fragment: its fields (later ones: no ports)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
class Engine:
    """V2N source NAT with connection tracking. Same API as the compiled ``hyperplane.Engine``."""

    engine = ENGINE_NAME

    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config.validate()
        self.clock = clock
        self._seed = config.resolved_seed()
        self._timeouts = config.timeouts.as_list()
        self._enis: List[Eni] = []
        self._pools: Dict[Tuple[int, int, int], PortPool] = {}
        self._table: Dict[bytes, Tuple[Conn, Direction]] = {}
        # One LRU list per timeout class: every entry sits in the list of its state's class,
        # oldest first, so expiry looks only at list heads (no table scan).
        self._lru = [collections.OrderedDict() for _ in range(len(self._timeouts))]
        self._next_id = 0
        self._last_now = float("-inf")
        self._exhausted = set()        # (family, proto) whose every pool is full right now
        self._signals: List[Tuple[str, int, str]] = []
        self._c = dict(packets_outbound=0, bytes_outbound=0, packets_inbound=0,
                       bytes_inbound=0, connections_created=0, connections_expired=0,
                       connections_restored=0, icmp_errors_translated=0,
                       fragments_translated=0)
        self._drops = [0] * len(DropReason)
        self._egress: Optional[List[EgressRule]] = None   # None: allow everything
        self._disabled: set = set()     # indexes of ENIs that take no new connections
        self._events: Optional[collections.deque] = None   # None: events off
        self._events_cap = 0
        self._events_lost = 0
        self._ev_kinds = set(EVENT_KINDS[:4])
        self._reject_limit = self._rejects = 0
        self._eni_c: List[List[int]] = []   # per ENI: packets/bytes outbound, inbound
        self._per_source: Dict[Tuple[int, bytes], int] = {}   # (family, source) -> connections
        # fragmented datagrams whose first fragment passed: key -> _Tracker (see _fragment)
        self._frags: Dict[tuple, "_Tracker"] = {}
        for eni in config.enis:
            self._add_eni_unchecked(eni)

    # ---- control plane ----------------------------------------------------------------------
    def add_eni(self, eni: Eni) -> None:
        """Add an ENI at the end of the scale-out order (the control plane's answer to a
        ``pool_exhausted`` signal)."""
        eni.validate(f"enis[{len(self._enis)}]")
        check_new_eni(self._enis, eni)
        if len(self._enis) >= EngineConfig.MAX_ENIS:
            raise ValueError(f"at most {EngineConfig.MAX_ENIS} ENIs")
        self._add_eni_unchecked(eni)

    def set_egress_rules(self, rules) -> None:
        """The security-group egress rules new connections must pass: None (the default)
        allows everything; otherwise a list of ``(cidr, protocol, from_port, to_port)`` with
        protocol "tcp", "udp", "icmp" or "all" (any port), and a new connection is allowed when
        any rule matches its family, destination address, protocol and destination port. An
        empty list allows nothing (a security group without egress rules). Connections already
        tracked, and every reply, are never checked again (security groups are stateful)."""
        self._egress = parse_egress_rules(rules)

    def set_eni_enabled(self, eni, enabled: bool) -> None:
        """Let an ENI (index or id) take new connections or not. A disabled (retired) ENI keeps
        carrying its existing connections until they end; new ones go to the next enabled ENI
        of the scale-out order."""
        i = eni_index(self._enis, eni)
        if enabled:
            self._disabled.discard(i)
        else:
            self._disabled.add(i)
        self._exhausted.clear()          # the set of ENIs that may take connections changed

    def _add_eni_unchecked(self, eni: Eni) -> None:
        self._enis.append(eni)
        self._eni_c.append([0, 0, 0, 0])
        self._exhausted.clear()

    def _pool(self, eni_index: int, family: int, proto: int) -> PortPool:
        key = (eni_index, family, proto)
        pool = self._pools.get(key)
        if pool is None:  # built on first use; its order depends only on the seed and the key
            cfg = self.config
            pool = PortPool(port_permutation(self._seed, eni_index, family, proto,
                                             cfg.port_min, cfg.port_max), cfg.port_reuse_delay)
            self._pools[key] = pool
        return pool

    def _eni_addr(self, eni: Eni, family: int) -> Optional[str]:
        return eni.ipv4 if family == 4 else eni.ipv6

    # ---- per-packet API ---------------------------------------------------------------------
    def outbound(self, packet: bytes, now: Optional[float] = None,
                 csum_partial: bool = False) -> Result:
        """Environment -> VPC: source NAT. Returns the verdict and the rewritten packet."""
        return self._one(OUT, packet, now, csum_partial)

    def inbound(self, packet: bytes, now: Optional[float] = None,
                csum_partial: bool = False) -> Result:
        """VPC -> ENI: reverse NAT of a reply, or a drop (``unsolicited`` when untracked)."""
        return self._one(IN, packet, now, csum_partial)

    def _one(self, direction, packet, now, csum_partial) -> Result:
        now = self._advance(now)
        buf = bytearray(packet)
        verdict, reason = self._translate(direction, buf, 0, len(buf),
                                          FLAG_CSUM_PARTIAL if csum_partial else 0, now)
        if verdict == Verdict.DROP:
            return Result(Verdict.DROP, None, DropReason(reason))
        return Result(Verdict(verdict), bytes(buf), R.NONE)

    def translate_batch(self, direction, buf, offsets, lengths, verdicts, reasons,
                        flags=None, now: Optional[float] = None) -> int:
        """Translate ``len(offsets)`` packets in place in ``buf``.

        ``offsets``/``lengths`` index each IP packet in ``buf``; ``verdicts`` and ``reasons``
        (byte-sized, writable) receive one :class:`Verdict` and :class:`DropReason` each;
        ``flags`` (optional, bytes) carries :data:`FLAG_CSUM_PARTIAL` per packet. Returns the
        number of packets not dropped."""
        direction = Direction(direction)
        n = len(offsets)
        if len(lengths) < n or len(verdicts) < n or len(reasons) < n or (
                flags is not None and len(flags) < n):
            raise ValueError("lengths, verdicts, reasons and flags need one slot per offset")
        try:
            view = memoryview(buf)
        except TypeError:
            view = None
        if view is None or view.readonly:
            raise ValueError("buf must be writable (bytearray, memoryview of one, array)")
        for out in (verdicts, reasons):   # byte buffers, as the compiled engine needs them
            if memoryview(out).readonly or memoryview(out).itemsize != 1:
                raise ValueError("verdicts and reasons must be writable byte buffers (bytearray)")
        view = view.cast("B")
        for i in range(n):
            if offsets[i] + lengths[i] > len(view):
                raise ValueError(f"packet {i}: offset {offsets[i]} + length {lengths[i]} "
                                 "past the buffer end")
        now = self._advance(now)
        passed = 0
        for i in range(n):
            off, ln = offsets[i], lengths[i]
            v, r = self._translate(direction, view, off, ln, flags[i] if flags is not None else 0,
                                   now)
            verdicts[i], reasons[i] = v, r
            passed += v != Verdict.DROP
        return passed

    def _advance(self, now: Optional[float]) -> float:
        """Take the time (never backwards) and expire what is due."""
        t = self.clock() if now is None else float(now)
        if not math.isfinite(t):
            raise ValueError(f"now = {now!r}: must be a finite number of seconds")
        now = t
        if now < self._last_now:
            now = self._last_now
        self._last_now = now
        self._expire(now)
        return now

    # ---- the data path ------------------------------------------------------------------------
    def _drop(self, reason: DropReason) -> Tuple[int, int]:
        self._drops[reason] += 1
        return Verdict.DROP, reason

    def _translate(self, direction, buf, off, length, flags, now) -> Tuple[int, int]:
        p = self._parse(buf, off, length, flags)
        if isinstance(p, DropReason):
            return self._drop(p)
        # 2. TTL: a router must not forward a packet whose TTL would reach 0 (RFC 1812 5.3.1).
        ttl = buf[off + (8 if p.family == 4 else 7)]
        if ttl <= 1:
            return self._drop(R.TTL_EXPIRED if p.family == 4 else R.HOP_LIMIT_EXPIRED)
        if p.icmp:
            return self._icmp(direction, buf, off, p, flags, now)
        if p.frag is not None:
            fkey = (direction, p.family, p.proto if p.family == 4 else 0, p.src, p.dst,
                    p.frag.ident)
            if not p.frag.first:
                return self._fragment(direction, buf, off, p, fkey, now)
            if not self._frag_room(fkey, now):
                return self._drop(R.FRAGMENT_TABLE_FULL)

        key = tuple_key(p.family, p.proto, p.src, p.dst, p.sport, p.dport)
        hit = self._table.get(key)
        if direction == OUT:
            if hit is None:
                res = self._new_conn(p, key, now)
                if isinstance(res, DropReason):
                    if res in (R.SECURITY_GROUP, R.TCP_NOT_SYN):
                        self._ev_reject(p, OUT, res, now)
                    return self._drop(res)
                conn, verdict = res, Verdict.NEW
            else:
                conn, d = hit
                if d != OUT:      # the packet looks like a reply of another connection
                    return self._drop(R.TUPLE_COLLISION)
                verdict = self._update_state(conn, OUT, p.tcp_flags, now)
                if verdict == Verdict.DROP:
                    return self._drop(R.TCP_INVALID)
            self._manip(buf, off, p, flags, src=True, addr=conn.eni_addr, port=conn.eni_port)
            self._account(conn, OUT, p.l3_len, now)
            self._c["packets_outbound"] += 1
            self._c["bytes_outbound"] += p.l3_len
        else:
            if hit is None or hit[1] != IN:
                self._ev_reject(p, IN, R.UNSOLICITED, now)
                return self._drop(R.UNSOLICITED)
            conn = hit[0]
            verdict = self._update_state(conn, IN, p.tcp_flags, now)
            if verdict == Verdict.DROP:
                return self._drop(R.TCP_INVALID)
            self._manip(buf, off, p, flags, src=False, addr=conn.env_addr, port=conn.env_port)
            self._account(conn, IN, p.l3_len, now)
            self._c["packets_inbound"] += 1
            self._c["bytes_inbound"] += p.l3_len
        if p.frag is not None:        # a first fragment passed: track its datagram
            self._frags[fkey] = _Tracker(
                conn, p.frag.length, now + (FRAG_TIMEOUT_V4 if p.family == 4 else FRAG_TIMEOUT_V6))
            self._c["fragments_translated"] += 1
        return verdict, R.NONE

    # fragments -----------------------------------------------------------------------------------
    # A fragmented datagram's first fragment carries the ports: it is tracked and translated
    # like a whole packet (the incremental L4 checksum update is right for the whole datagram,
    # whose checksum it carries). Later fragments carry none: the tracker made when the first
    # passed holds the connection, and they get its address rewrite (source outbound,
    # destination inbound) and nothing else, as VPP's shallow virtual reassembly does. A later
    # fragment with no tracker is dropped, so no fragment gets past the unsolicited-inbound
    # rule; none is held back waiting for its first (senders emit the first fragment first).
    # Bounded like the kernel's defragmentation: FRAG_MAX datagrams, for ipfrag_time (30 s)
    # or ip6frag_time (60 s) at most.
    def _frag_find(self, fkey, now: float) -> Optional["_Tracker"]:
        t = self._frags.get(fkey)
        if t is not None and t.expires <= now:     # timed out: gone
            del self._frags[fkey]
            return None
        return t

    def _frag_room(self, fkey, now: float) -> bool:
        if len(self._frags) < FRAG_MAX or self._frag_find(fkey, now) is not None:
            return True
        for k in [k for k, t in self._frags.items() if t.expires <= now]:
            del self._frags[k]
        return len(self._frags) < FRAG_MAX

    def _fragment(self, direction, buf, off, p: _Parsed, fkey, now) -> Tuple[int, int]:
        t = self._frag_find(fkey, now)
        if t is None:
            return self._drop(R.FRAGMENT)
        conn = t.conn
        if self._table.get(conn.orig_key) != (conn, OUT):   # the connection is gone
            del self._frags[fkey]
            return self._drop(R.FRAGMENT)
        # Forget the datagram once its bytes went through in order up to the last fragment;
        # after a gap (reordered, lost or duplicated fragments) it stays until it times out, so
        # that no fragment of it is refused for a miscount.
        if p.frag.offset == t.next:
            t.next += p.frag.length
            if not p.frag.more:
                del self._frags[fkey]
        src = direction == OUT
        addr = conn.eni_addr if src else conn.env_addr
        a_off = off + ((12 if src else 16) if p.family == 4 else (8 if src else 24))
        alen = len(addr)
        if p.family == 4:
            ttl_old = bytes(buf[off + 8:off + 10])
            ttl_new = bytes([ttl_old[0] - 1, ttl_old[1]])
            hc = (buf[off + 10] << 8) | buf[off + 11]
            hc = csum_update_full(hc, csum_delta(bytes(buf[a_off:a_off + alen]) + ttl_old,
                                                 addr + ttl_new))
            buf[off + 8] = ttl_new[0]
            buf[off + 10:off + 12] = hc.to_bytes(2, "big")
        else:
            buf[off + 7] -= 1
        buf[a_off:a_off + alen] = addr
        self._account(conn, direction, p.l3_len, now)
        name = "outbound" if src else "inbound"
        self._c["packets_" + name] += 1
        self._c["bytes_" + name] += p.l3_len
        self._c["fragments_translated"] += 1
        return (Verdict.ESTABLISHED if src else Verdict.REPLY), R.NONE

    # 1. parse ----------------------------------------------------------------------------------
    def _parse(self, b, off, n, flags):
        if n < 1:
            return R.TRUNCATED
        version = b[off] >> 4
        frag = None
        if version == 4:
            if n < 20:
                return R.TRUNCATED
            ihl = (b[off] & 0x0F) * 4
            if ihl < 20:
                return R.BAD_IP_HEADER
            if n < ihl:
                return R.TRUNCATED
            total = (b[off + 2] << 8) | b[off + 3]
            if total < ihl:
                return R.BAD_IP_HEADER
            if total > n:
                return R.TRUNCATED
            if not ip_header_sum_ok(bytes(b[off:off + ihl])):
                return R.BAD_IP_CHECKSUM
            proto, l4, end = b[off + 9], off + ihl, off + total
            src, dst = bytes(b[off + 12:off + 16]), bytes(b[off + 16:off + 20])
            family, l3_len = 4, total
            fw = (b[off + 6] << 8) | b[off + 7]
            if fw & 0x3FFF:            # MF set or a non-zero fragment offset (RFC 791)
                offset, length, more = (fw & 0x1FFF) * 8, total - ihl, bool(fw & 0x2000)
                if (more and length & 7) or offset + length + ihl > 65535:
                    return R.BAD_FRAGMENT
                if proto == IPPROTO_TCP and offset == 8:
                    return R.BAD_FRAGMENT   # RFC 1858 3.2: it would rewrite the TCP flags
                frag = _Frag(not offset, more, (b[off + 4] << 8) | b[off + 5], offset, length)
                if offset:
                    return self._later_fragment(family, proto, l3_len, l4 - off, src, dst, frag)
        elif version == 6:
            if n < 40:
                return R.TRUNCATED
            plen = (b[off + 4] << 8) | b[off + 5]
            if 40 + plen > n:
                return R.TRUNCATED
            end = off + 40 + plen
            proto, l4 = b[off + 6], off + 40
            src, dst = bytes(b[off + 8:off + 24]), bytes(b[off + 24:off + 40])
            family, l3_len = 6, 40 + plen
            walk = _walk_ext(b, end, proto, l4, outer=True)
            if isinstance(walk, DropReason):
                return walk
            if walk[0] == LATER:
                _, proto, l4, frag = walk
                return self._later_fragment(family, proto, l3_len, l4 - off, src, dst, frag)
            proto, l4, frag = walk
        else:
            return R.BAD_IP_VERSION
        first = frag is not None
        if proto == (IPPROTO_ICMP if family == 4 else IPPROTO_ICMPV6):
            if first:
                return R.UNSUPPORTED_PROTOCOL
            return self._parse_icmp(b, off, family, proto, l3_len, l4, end, src, dst, flags)
        if proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return R.UNSUPPORTED_PROTOCOL
        # A first fragment must hold the whole transport header (RFC 1858's tiny fragments);
        # its length fields describe the whole datagram, which goes on in later fragments.
        short = R.BAD_FRAGMENT if first else R.TRUNCATED
        l4_len = end - l4
        if proto == IPPROTO_TCP:
            if l4_len < 20:
                return short
            doff = (b[l4 + 12] >> 4) * 4
            if doff < 20:
                return R.BAD_L4_HEADER
            if doff > l4_len:
                return short
            tcp_flags = b[l4 + 13]
        else:
            if l4_len < 8:
                return short
            ulen = (b[l4 + 4] << 8) | b[l4 + 5]
            if ulen < 8:
                return R.BAD_L4_HEADER
            if ulen > l4_len and not first:
                return R.TRUNCATED
            if family == 6 and not flags & FLAG_CSUM_PARTIAL and b[l4 + 6] == b[l4 + 7] == 0:
                return R.BAD_L4_HEADER     # RFC 8200 8.1: IPv6 UDP must carry a checksum
            tcp_flags = 0
        sport = (b[l4] << 8) | b[l4 + 1]
        dport = (b[l4 + 2] << 8) | b[l4 + 3]
        return _Parsed(family, proto, l3_len, l4 - off, src.ljust(16, b"\0"),
                       dst.ljust(16, b"\0"), sport, dport, tcp_flags, frag=frag)

    @staticmethod
    def _later_fragment(family, proto, l3_len, l4, src, dst, frag):
        """A later fragment: addresses, protocol and fragment fields (its ports are in the
        first). Fragments of anything but TCP and UDP are unsupported like the rest; an IPv6 one
        may start inside an extension header of the fragmentable part."""
        if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) or (
                proto not in (IPPROTO_TCP, IPPROTO_UDP)
                and not (family == 6 and proto in (0, 43, 60, 51, 44))):
            return R.UNSUPPORTED_PROTOCOL
        return _Parsed(family, proto, l3_len, l4, src.ljust(16, b"\0"), dst.ljust(16, b"\0"),
                       0, 0, 0, frag=frag)

    def _parse_icmp(self, b, off, family, proto, l3_len, l4, end, src, dst, flags):
        """ICMP (RFC 792, RFC 4443 section 3). An error carries the start of the packet that
        caused it: its IP header and at least 8 bytes after it (the ports); that embedded
        packet names the connection the error is about (RFC 5508 section 4, the kernel's
        nf_conntrack_icmp.c). Errors: ICMPv4 destination unreachable (3, incl. code 4
        "fragmentation needed"), time exceeded (11), parameter problem (12); ICMPv6
        destination unreachable (1), packet too big (2), time exceeded (3), parameter problem
        (4). Anything else (echo, redirect, ...) is a "query": it belongs to no connection."""
        if end - l4 < 8:
            return R.TRUNCATED            # type, code, checksum and the 4 bytes after them
        p = _Parsed(family, proto, l3_len, l4 - off, src.ljust(16, b"\0"), dst.ljust(16, b"\0"),
                    0, 0, 0, ICMP_QUERY, None, end - off)
        is_error = b[l4] in ((3, 11, 12) if family == 4 else (1, 2, 3, 4))
        if not is_error:
            return p
        # RFC 5508 REQ-3: an error whose checksum fails is dropped, not translated (translated,
        # it would get a fresh, valid checksum). A partial checksum is not complete yet.
        if not flags & FLAG_CSUM_PARTIAL:
            acc = ones_sum(bytes(b[l4:end]))
            if family == 6:               # pseudo-header (RFC 4443 2.3)
                n = end - l4
                acc += ones_sum(src + dst) + (n >> 16) + (n & 0xFFFF) + IPPROTO_ICMPV6
            if fold(acc) != 0xFFFF:
                return R.BAD_ICMP
        inner = _parse_embedded(b, l4 + 8, end, family)
        if inner is None:
            return R.BAD_ICMP
        return p._replace(icmp=ICMP_ERROR,
                          inner=inner._replace(ip=inner.ip - off, l4=inner.l4 - off))

    # ICMP ----------------------------------------------------------------------------------------
    def _icmp(self, direction, buf, off, p: _Parsed, flags, now) -> Tuple[int, int]:
        """Translate an ICMP error that belongs to a connection; drop the rest.

        An error about a packet of a tracked connection is RELATED to it, in the kernel's word
        (nf_nat_icmp_reply_translation): it is translated so that the host that sent the packet
        learns of the error ("port unreachable" fails the socket, "fragmentation needed" /
        "packet too big" lowers the path MTU, RFC 1191 / RFC 8201), but it is not the
        connection's traffic: state, timer and counters stay as they are (RFC 5508 REQ-6: an
        error neither refreshes nor deletes a mapping, else a forged one could do either).

        The embedded packet is as the error's sender saw it, on the far side of the NAT:

        * inbound (from the VPC): a packet the NAT sent, ENI:port -> peer; reversed, the
          connection's *reply* tuple. Translation: outer destination ENI -> environment,
          embedded source ENI:port -> environment:port (RFC 5508 REQ-4);
        * outbound (from an environment): a reply it received, peer -> env:port; reversed,
          the *orig* tuple. Translation: outer source environment -> ENI, embedded
          destination env:port -> ENI:port.

        The error must go back along the embedded packet's path (the kernel's "outer daddr
        mismatch" check): its outer destination is the embedded source; an environment's error
        must also come from the embedded destination (its own address), so that one
        environment cannot send errors about another's connections. Type, code and the rest of
        the ICMP header (a PMTU error's next-hop MTU) are not touched.

        Anything else: from the VPC unsolicited (an error about nothing we track, or a query:
        the "reject" event names the ICMP packet itself, ports 0); from an environment an
        unrelated error is ICMP_UNRELATED and a query UNSUPPORTED_PROTOCOL (Lambda supports
        TCP and UDP only)."""
        if p.icmp == ICMP_ERROR:
            e = p.inner
            reversed_key = tuple_key(p.family, e.proto, e.dst, e.src, e.dport, e.sport)
            hit = self._table.get(reversed_key)
            related = (hit is not None and hit[1] == direction and p.dst == e.src
                       and (direction == IN or p.src == e.dst))
            if related:
                conn = hit[0]
                if direction == IN:     # back to the environment's address and port
                    self._icmp_manip(buf, off, p, flags, direction, conn.env_addr,
                                     conn.env_port)
                else:                   # out as the ENI's address and the connection's port
                    self._icmp_manip(buf, off, p, flags, direction, conn.eni_addr,
                                     conn.eni_port)
                self._c["icmp_errors_translated"] += 1
                return (Verdict.REPLY if direction == IN else Verdict.ESTABLISHED), R.NONE
            if direction == OUT:
                return self._drop(R.ICMP_UNRELATED)
        elif direction == OUT:
            return self._drop(R.UNSUPPORTED_PROTOCOL)
        self._ev_reject(p, IN, R.UNSOLICITED, now)
        return self._drop(R.UNSOLICITED)

    def _icmp_manip(self, b, off, p: _Parsed, flags: int, direction, addr: bytes,
                    port: int) -> None:
        """Rewrite a related ICMP error: outer source (outbound) or destination (inbound), the
        embedded destination (outbound) or source (inbound) address and port, TTL; checksums
        incrementally (RFC 1624): the outer IPv4 header; the embedded IPv4 header (address);
        the embedded TCP/UDP checksum when that field is inside the message (an IPv4 UDP 0
        stays 0); the ICMP checksum, which covers the embedded bytes just changed and, for
        ICMPv6 only, the outer addresses (its pseudo-header). A partial ICMP checksum holds
        only the pseudo-header sum: only the outer addresses move it."""
        v4, alen, e = p.family == 4, (4 if p.family == 4 else 16), p.inner
        out_src, in_src = direction == OUT, direction == IN
        oa = off + ((12 if out_src else 16) if v4 else (8 if out_src else 24))
        ip, l4 = off + e.ip, off + e.l4
        ia = ip + ((12 if in_src else 16) if v4 else (8 if in_src else 24))
        pp = l4 + (0 if in_src else 2)
        new_port = port.to_bytes(2, "big")
        old_outer, old_inner = bytes(b[oa:oa + alen]), bytes(b[ia:ia + alen])
        old_port = bytes(b[pp:pp + 2])
        d_outer = csum_delta(old_outer, addr)
        d_inner = csum_delta(old_inner, addr)
        # the ICMP checksum covers every embedded byte: collect the changed words' deltas
        d_icmp = d_inner + csum_delta(old_port, new_port)

        def set16(pos: int, value: int) -> None:
            nonlocal d_icmp
            old = bytes(b[pos:pos + 2])
            b[pos:pos + 2] = value.to_bytes(2, "big")
            d_icmp += csum_delta(old, bytes(b[pos:pos + 2]))

        if v4:                                    # embedded IPv4 header checksum
            set16(ip + 10, csum_update_full((b[ip + 10] << 8) | b[ip + 11], d_inner))
        udp = e.proto == IPPROTO_UDP
        c = l4 + (6 if udp else 16)
        if c + 2 <= off + p.end:   # a TCP checksum lies past the 8 bytes an error must carry
            csum = (b[c] << 8) | b[c + 1]
            if not (udp and v4 and csum == 0):    # RFC 768: IPv4 UDP checksum 0 stays 0
                csum = csum_update_full(csum, csum_delta(old_inner + old_port, addr + new_port))
                set16(c, 0xFFFF if udp and csum == 0 else csum)
        b[ia:ia + alen] = addr
        b[pp:pp + 2] = new_port

        if v4:
            ttl_old = bytes(b[off + 8:off + 10])
            ttl_new = bytes([ttl_old[0] - 1, ttl_old[1]])
            hc = (b[off + 10] << 8) | b[off + 11]
            hc = csum_update_full(hc, csum_delta(old_outer + ttl_old, addr + ttl_new))
            b[off + 8] = ttl_new[0]
            b[off + 10:off + 12] = hc.to_bytes(2, "big")
        else:
            b[off + 7] -= 1
        ic = off + p.l4 + 2
        icsum = (b[ic] << 8) | b[ic + 1]
        if flags & FLAG_CSUM_PARTIAL:
            if not v4:
                icsum = csum_update_partial(icsum, d_outer)
        else:
            if not v4:
                d_icmp += d_outer
            icsum = csum_update_full(icsum, fold(d_icmp))
        b[ic:ic + 2] = icsum.to_bytes(2, "big")
        b[oa:oa + alen] = addr

    # 4. new connection -----------------------------------------------------------------------
    def _new_conn(self, p: _Parsed, orig_key: bytes, now: float):
        if p.proto == IPPROTO_TCP:
            state = tcp_states.next_state(OUT, p.tcp_flags, TcpState.NONE)
            if state < 0:
                return R.TCP_NOT_SYN    # no mid-stream pick-up: connections start with SYN
        else:
            state = UdpState.UNREPLIED
        # Security groups are stateful: the rules are consulted here, for a new connection in
        # the orig direction, and never for its later packets or its replies.
        if self._egress is not None and not any(
                r.allows(p.family, p.proto, p.dst, p.dport) for r in self._egress):
            return R.SECURITY_GROUP
        if len(self._table) // 2 >= self.config.capacity:
            return R.TABLE_FULL
        # One environment may hold at most max_connections_per_source connections: a SYN
        # flood or a leak in one function must not take the ports the others need.
        limit = self.config.max_connections_per_source
        src_key = (p.family, p.src)
        if limit:
            held = self._per_source.get(src_key, 0)
            if held >= limit or (held == 0 and len(self._per_source) >= MAX_SOURCES):
                return R.SOURCE_LIMIT
        choice = self._choose_port(p, now)
        if isinstance(choice, DropReason):
            return choice
        eni_index, eni_raw, port, reply_key = choice
        conn = Conn(id=self._next_id, family=p.family, proto=p.proto, orig_key=orig_key,
                    reply_key=reply_key, env_addr=p.src[:4] if p.family == 4 else p.src,
                    env_port=p.sport, eni_index=eni_index, eni_addr=eni_raw, eni_port=port,
                    state=state, last_seen=now)
        self._next_id += 1
        self._pool(eni_index, p.family, p.proto).take(port)
        self._table[reply_key] = (conn, IN)   # reply tuple first: it was the collision check
        self._table[orig_key] = (conn, OUT)
        self._lru[state][conn] = conn
        self._c["connections_created"] += 1
        if limit:
            self._per_source[src_key] = self._per_source.get(src_key, 0) + 1
        self._ev_conn(conn, "new", now)
        return conn

    def _choose_port(self, p: _Parsed, now: float):
        """First enabled ENI (in scale-out order) with a free port whose reply tuple is
        unused."""
        had_family = had_free = False
        orig_key = tuple_key(p.family, p.proto, p.src, p.dst, p.sport, p.dport)
        for i, eni in enumerate(self._enis):
            text = self._eni_addr(eni, p.family)
            if text is None or i in self._disabled:
                continue
            had_family = True
            pool = self._pool(i, p.family, p.proto)
            if not pool.free:
                continue
            had_free = True
            raw = addr_bytes(p.family, text)
            for port in pool.candidates(p.sport, now):
                # The reply tuple: the VPC host answering the ENI's address and port.
                reply_key = tuple_key(p.family, p.proto, p.dst, raw.ljust(16, b"\0"),
                                      p.dport, port)
                # unused, and not the orig tuple itself (a packet from ENI:port to ENI:port)
                if reply_key not in self._table and reply_key != orig_key:
                    return i, raw, port, reply_key
        if not had_family:
            return R.NO_ENI_ADDRESS
        if had_free:
            return R.TUPLE_COLLISION
        key = (p.family, p.proto)
        if key not in self._exhausted:
            self._exhausted.add(key)
            if len(self._signals) < MAX_PENDING_SIGNALS:   # bounded, like the C core
                self._signals.append(("pool_exhausted", p.family, PROTO_NAMES[p.proto]))
        return R.PORT_EXHAUSTED

    # 5. state ---------------------------------------------------------------------------------
    def _update_state(self, conn: Conn, direction: Direction, tcp_flags: int,
                      now: float) -> int:
        """Apply the transition; returns the verdict (DROP for an invalid TCP transition)."""
        verdict = Verdict.ESTABLISHED if direction == OUT else Verdict.REPLY
        if conn.proto == IPPROTO_TCP:
            nxt = tcp_states.next_state(direction, tcp_flags, TcpState(conn.state))
            if nxt == tcp_states.INV:
                return Verdict.DROP
            if nxt >= 0:
                if nxt == TcpState.SYN_SENT and conn.state != TcpState.SYN_SENT:
                    verdict = Verdict.NEW      # TIME_WAIT/CLOSE re-opened by a new SYN
                self._set_state(conn, nxt, now)
        elif direction == IN and conn.state == UdpState.UNREPLIED:
            self._set_state(conn, UdpState.REPLIED, now)
        return verdict

    def _set_state(self, conn: Conn, state: int, now: float) -> None:
        if state != conn.state:
            del self._lru[conn.state][conn]
            conn.state = state
            self._lru[state][conn] = conn
            self._ev_conn(conn, "update", now)

    def _account(self, conn: Conn, direction: Direction, nbytes: int, now: float) -> None:
        for c in (conn.counters, self._eni_c[conn.eni_index]):
            c[2 * direction] += 1
            c[2 * direction + 1] += nbytes
        conn.last_seen = now
        self._lru[conn.state].move_to_end(conn)   # most recently used at the back

    # 6. manip ---------------------------------------------------------------------------------
    def _manip(self, b, off, p: _Parsed, flags: int, src: bool, addr: bytes, port: int) -> None:
        """Rewrite source (src=True) or destination address and port, decrement TTL, and update
        checksums incrementally."""
        a_off = off + ((12 if src else 16) if p.family == 4 else (8 if src else 24))
        alen = 4 if p.family == 4 else 16
        l4 = off + p.l4
        p_off = l4 + (0 if src else 2)
        old_addr = bytes(b[a_off:a_off + alen])
        old_port = bytes(b[p_off:p_off + 2])
        new_port = port.to_bytes(2, "big")
        if p.family == 4:
            ttl_old = bytes(b[off + 8:off + 10])                      # TTL and protocol word
            ttl_new = bytes([ttl_old[0] - 1, ttl_old[1]])
            hc = (b[off + 10] << 8) | b[off + 11]
            hc = csum_update_full(hc, csum_delta(old_addr + ttl_old, addr + ttl_new))
            b[off + 8] = ttl_new[0]
            b[off + 10:off + 12] = hc.to_bytes(2, "big")
        else:
            b[off + 7] -= 1                                            # hop limit: no checksum
        c_off = l4 + (16 if p.proto == IPPROTO_TCP else 6)
        csum = (b[c_off] << 8) | b[c_off + 1]
        if flags & FLAG_CSUM_PARTIAL:
            # The field holds the uncomplemented pseudo-header sum (addresses, length, proto);
            # ports are not in it: the final checksum, computed later, covers them.
            csum = csum_update_partial(csum, csum_delta(old_addr, addr))
        elif p.proto == IPPROTO_UDP and p.family == 4 and csum == 0:
            pass                                  # RFC 768: 0 = "no checksum", and stays 0
        else:
            csum = csum_update_full(csum, csum_delta(old_addr + old_port, addr + new_port))
            if p.proto == IPPROTO_UDP and csum == 0:
                csum = 0xFFFF                     # RFC 768: a computed 0 is sent as all ones
        b[a_off:a_off + alen] = addr
        b[p_off:p_off + 2] = new_port
        b[c_off:c_off + 2] = csum.to_bytes(2, "big")

    # ---- expiry -------------------------------------------------------------------------------
    def expire(self, now: Optional[float] = None) -> int:
        """Expire every connection idle for longer than its state's timeout. Returns how many."""
        before = self._c["connections_expired"]
        self._advance(now)
        return self._c["connections_expired"] - before

    def _expire(self, now: float) -> None:
        for cls in TimeoutClass:
            lru, timeout = self._lru[cls], self._timeouts[cls]
            while lru:
                conn = next(iter(lru.values()))
                if conn.last_seen + timeout > now:
                    break                         # the rest of the list is younger
                self._remove(conn, now, "expired")
                self._c["connections_expired"] += 1

    def _remove(self, conn: Conn, now: float, why: str) -> None:
        self._ev_conn(conn, "destroy", now, reason=why)
        del self._lru[conn.state][conn]
        del self._table[conn.orig_key]
        del self._table[conn.reply_key]
        self._pool(conn.eni_index, conn.family, conn.proto).release(conn.eni_port, now)
        self._exhausted.discard((conn.family, conn.proto))
        if self.config.max_connections_per_source:
            key = (conn.family, conn.orig_key[2:18])
            self._per_source[key] -= 1
            if not self._per_source[key]:
                del self._per_source[key]

    # ---- events, flow collection, deletion -----------------------------------------------------
    def enable_events(self, capacity: int = 16384) -> None:
        """Record events (NEW/UPDATE/DESTROY/REJECT) in a ring of ``capacity`` (rounded up to a
        power of two, at least 16) until ``take_events()``; 0 turns them off. A full ring keeps
        the oldest events and counts the rest in ``events_lost``."""
        if not isinstance(capacity, int) or isinstance(capacity, bool) or \
                not 0 <= capacity <= 1 << 24:
            raise ValueError(f"capacity {capacity!r}: must be an integer from 0 to {1 << 24}")
        n = 16
        while n < capacity:
            n <<= 1
        self._events = collections.deque() if capacity else None
        self._events_cap = n if capacity else 0
        self._ev_kinds = set(EVENT_KINDS[:4])   # every kind, no reject limit
        self._reject_limit = self._rejects = 0

    def event_options(self, kinds=None, reject_limit: Optional[int] = None) -> None:
        """Record only ``kinds`` (names from "new", "update", "destroy", "reject"; the others
        are skipped, not lost), and keep at most ``reject_limit`` REJECT events between two
        drains (0: no limit; past it they count in events_lost): a port scan must not become
        work per packet for whoever drains the ring. None leaves a setting as it is. Both stay
        until ``enable_events`` resets them (everything, no limit)."""
        if kinds is not None:
            if isinstance(kinds, str) or not set(kinds) <= set(EVENT_KINDS[:4]):
                raise ValueError(f"kinds {kinds!r}: a list drawn from {list(EVENT_KINDS[:4])}")
            self._ev_kinds = set(kinds)
        if reject_limit is not None:
            if not isinstance(reject_limit, int) or isinstance(reject_limit, bool) or \
                    not 0 <= reject_limit < 1 << 32:
                raise ValueError(f"reject_limit {reject_limit!r}: an integer >= 0 (0: no limit)")
            self._reject_limit = reject_limit

    @property
    def events_lost(self) -> int:
        return self._events_lost

    def take_events(self, max: Optional[int] = None) -> List[Event]:
        """The oldest recorded events (at most ``max``), removed from the ring."""
        if self._events is None:
            return []
        self._rejects = 0    # a drain: the reject budget starts again
        n = len(self._events) if max is None else min(max, len(self._events))
        return [self._events.popleft() for _ in range(n)]

    def discard_events(self) -> int:
        """Empty the ring without handing the events out (nobody is listening); returns how
        many were dropped. They do not count as lost."""
        if self._events is None:
            return 0
        n = len(self._events)
        self._events.clear()
        self._rejects = 0
        return n

    def _push(self, ev: Event) -> None:
        if ev.kind not in self._ev_kinds:
            return                       # not asked for: skipped, not lost
        if ev.kind == "reject" and self._reject_limit and self._rejects >= self._reject_limit:
            self._events_lost += 1
        elif len(self._events) >= self._events_cap:
            self._events_lost += 1
        else:
            if ev.kind == "reject":
                self._rejects += 1
            self._events.append(ev)

    def _ev_conn(self, conn: Conn, kind: str, now: float, reason: str = "") -> None:
        if self._events is None:
            return
        info = self._info(conn, now)
        c, r = conn.counters, conn.reported
        d = _not_collected(c, r) if kind == "destroy" else [0, 0, 0, 0]
        self._push(Event(kind, now, conn.id + 1, info.family, info.proto, info.orig, info.reply,
                         info.state, info.eni, *c, *d, reason=reason))

    def _ev_reject(self, p: _Parsed, direction: Direction, reason: DropReason,
                   now: float) -> None:
        if self._events is None:
            return
        alen = 4 if p.family == 4 else 16
        eni = None
        for i, e in enumerate(self._enis):
            text = self._eni_addr(e, p.family)
            if text is None:
                continue
            if (addr_bytes(p.family, text) == p.dst[:alen]) if direction == IN \
                    else i not in self._disabled:
                eni = e.id
                break
        orig = Tuple5(addr_text(p.family, p.src[:alen]), p.sport,
                      addr_text(p.family, p.dst[:alen]), p.dport)
        c = [0, 0, 1, p.l3_len] if direction == IN else [1, p.l3_len, 0, 0]
        self._push(Event("reject", now, 0, p.family, PROTO_NAMES[p.proto], orig, None, "", eni,
                         *c, reason=reason.label))

    # ---- snapshot and restore (a restart that loses no connection) ---------------------------
    def snapshot(self) -> bytes:
        """Every connection as a blob for ``restore()``: tuples, ENI, port, state, last_seen,
        counters and id, each timeout class oldest first. The same bytes from both engines."""
        out = []
        for cls in TimeoutClass:
            for conn in self._lru[cls].values():
                out.append(SNAP_RECORD.pack(
                    self._snap_tuple(conn.orig_key), self._snap_tuple(conn.reply_key),
                    conn.last_seen, conn.counters[0], conn.counters[2], conn.counters[1],
                    conn.counters[3], conn.reported[1], conn.reported[3],
                    conn.reported[0] & 0xFFFFFFFF, conn.reported[2] & 0xFFFFFFFF, conn.id + 1,
                    conn.eni_port, conn.eni_index, conn.state))
        return snapshot_blob(b"".join(out), len(out))

    @staticmethod
    def _snap_tuple(key: bytes) -> bytes:
        family, proto, src, dst, sport, dport = struct.unpack("!BB16s16sHH", key)
        return SNAP_TUPLE.pack(src, dst, sport, dport, family, proto)

    def restore(self, blob, now: Optional[float] = None, shift: float = 0.0) -> Dict[str, int]:
        """Put back the connections of a ``snapshot()`` (usually an earlier data path's): each
        on its ENI (same index, same address) with its port, state, counters, id and timer
        (``last_seen + shift``, never later than now). No events. Returns how many were restored
        and, for the rest, why not: invalid (not a record this engine could have written),
        eni_mismatch, expired (timed out meanwhile), duplicate (a tuple or the port is taken
        already), table_full. ValueError for a blob that is not a snapshot."""
        records = snapshot_records(blob)
        if not math.isfinite(shift):
            raise ValueError(f"shift {shift!r}: must be a finite number of seconds")
        now = self._advance(now)
        out = dict.fromkeys(RESTORE_OUTCOMES, 0)
        for fields in SNAP_RECORD.iter_unpack(records):
            out[RESTORE_OUTCOMES[self._restore_one(fields, now, shift)]] += 1
        return out

    def _restore_one(self, fields, now: float, shift: float) -> int:
        (o_raw, r_raw, last_seen, po, pr, bo, br, rbo, rbr, rpo, rpr, cid, port, eni,
         state) = fields
        o_src, o_dst, o_sport, o_dport, family, proto = SNAP_TUPLE.unpack(o_raw)
        r_src, r_dst, r_sport, r_dport, r_family, r_proto = SNAP_TUPLE.unpack(r_raw)
        alen = 4 if family == 4 else 16
        states = range(TcpState.SYN_SENT, TcpState.CLOSE + 1) if proto == IPPROTO_TCP else \
            (UdpState.UNREPLIED, UdpState.REPLIED)
        ok = (family in (4, 6) and proto in (IPPROTO_TCP, IPPROTO_UDP)
              and (r_family, r_proto) == (family, proto)
              and o_raw[-2:] == r_raw[-2:] == b"\0\0" and state in states
              and all(a[alen:] == bytes(16 - alen) for a in (o_src, o_dst, r_dst))
              and r_src == o_dst and r_sport == o_dport and r_dport == port and o_raw != r_raw
              and self.config.port_min <= port <= self.config.port_max
              and rbo <= bo and rbr <= br    # flow logs got no more than there was
              and (po > 0xFFFFFFFF or rpo <= po) and (pr > 0xFFFFFFFF or rpr <= pr)
              and cid != 0 and math.isfinite(last_seen))
        if not ok:
            return 1                                                     # invalid
        text = self._eni_addr(self._enis[eni], family) if eni < len(self._enis) else None
        if text is None or addr_bytes(family, text).ljust(16, b"\0") != r_dst:
            return 2                                                     # eni_mismatch
        seen = min(last_seen + shift, now)
        if seen + self._timeouts[state] <= now:
            return 3                                                     # expired
        pool = self._pool(eni, family, proto)
        orig_key = tuple_key(family, proto, o_src, o_dst, o_sport, o_dport)
        reply_key = tuple_key(family, proto, r_src, r_dst, r_sport, r_dport)
        if orig_key in self._table or reply_key in self._table or port not in pool.free:
            return 4                                                     # duplicate
        limit = self.config.max_connections_per_source
        src_key = (family, o_src)
        if len(self._table) // 2 >= self.config.capacity or (
                limit and src_key not in self._per_source
                and len(self._per_source) >= MAX_SOURCES):
            return 5                                                     # table_full
        conn = Conn(id=cid - 1, family=family, proto=proto, orig_key=orig_key,
                    reply_key=reply_key, env_addr=o_src[:alen], env_port=o_sport,
                    eni_index=eni, eni_addr=r_dst[:alen], eni_port=port, state=state,
                    last_seen=seen)
        conn.counters = [po, bo, pr, br]
        conn.reported = [rpo, rbo, rpr, rbr]
        self._next_id = max(self._next_id, cid)
        pool.take(port)
        self._table[reply_key] = (conn, IN)
        self._table[orig_key] = (conn, OUT)
        self._lru_insert_sorted(conn)
        self._c["connections_restored"] += 1
        if limit:
            self._per_source[src_key] = self._per_source.get(src_key, 0) + 1
        return 0

    def _lru_insert_sorted(self, conn: Conn) -> None:
        """Append, but behind every connection of the class seen later than it (a restored
        connection may be older than what the table holds): expiry needs the order."""
        lru = self._lru[conn.state]
        later = []
        for other in reversed(lru):
            if other.last_seen <= conn.last_seen:
                break
            later.append(other)
        lru[conn] = conn
        for other in reversed(later):
            lru.move_to_end(other)

    def flow_collect(self, now: Optional[float] = None) -> List[Event]:
        """One "flow" event per connection with traffic since the last collection (the delta
        fields), marking it collected. Takes the time first, so what expires now ends in a
        "destroy" event carrying its uncollected traffic instead."""
        now = self._advance(now)
        out = []
        for cls in TimeoutClass:
            for conn in self._lru[cls].values():
                c, r = conn.counters, conn.reported
                if c[0] == r[0] and c[2] == r[2]:
                    continue
                info = self._info(conn, conn.last_seen)
                out.append(Event("flow", conn.last_seen, conn.id + 1, info.family, info.proto,
                                 info.orig, info.reply, info.state, info.eni, *c,
                                 *_not_collected(c, r)))
                conn.reported = list(c)
        return out

    def delete(self, proto: str, orig: Tuple5, now: Optional[float] = None) -> bool:
        """Delete the connection whose orig tuple is ``orig`` (a "destroy" event, reason
        "deleted"); False when there is none."""
        key = orig_key(proto, Tuple5(*orig))
        now = self._advance(now)
        hit = self._table.get(key)
        if hit is None or hit[1] != OUT:
            return False
        self._remove(hit[0], now, "deleted")
        return True

    def flush(self, now: Optional[float] = None) -> int:
        """Delete every connection; returns how many."""
        now = self._advance(now)
        n = 0
        for cls in TimeoutClass:
            while self._lru[cls]:
                self._remove(next(iter(self._lru[cls].values())), now, "deleted")
                n += 1
        return n

    # ---- observation --------------------------------------------------------------------------
    def entries(self, now: Optional[float] = None) -> List[EntryInfo]:
        """Every tracked connection (by timeout class, oldest first within a class)."""
        now = self._advance(now)
        out = []
        for cls in TimeoutClass:
            for conn in self._lru[cls].values():
                out.append(self._info(conn, now))
        return out

    def _info(self, conn: Conn, now: float) -> EntryInfo:
        f = conn.family
        k_o, k_r = conn.orig_key, conn.reply_key
        alen = 4 if f == 4 else 16

        def tup(k):
            _, _, s, d, sp, dp = struct.unpack("!BB16s16sHH", k)
            return Tuple5(addr_text(f, s[:alen]), sp, addr_text(f, d[:alen]), dp)

        c = conn.counters
        return EntryInfo(f, PROTO_NAMES[conn.proto], tup(k_o), tup(k_r),
                         state_name(conn.proto, conn.state),
                         conn.last_seen + self._timeouts[conn.state] - now,
                         self._enis[conn.eni_index].id, c[0], c[1], c[2], c[3])

    def __len__(self) -> int:
        return len(self._table) // 2

    def counters(self) -> Dict[str, object]:
        """Packets and bytes per direction, connections, ICMP errors translated (not counted
        in the packets: they are not a connection's traffic), and every drop reason by name."""
        out = dict(self._c)
        out["connections"] = len(self)
        out["capacity"] = self.config.capacity
        out["events_lost"] = self._events_lost
        out["drops"] = {r.label: self._drops[r] for r in DropReason if r != R.NONE}
        return out

    def pool_fill(self) -> List[Dict[str, object]]:
        """Ports in use per ENI address and protocol, and whether the ENI takes new
        connections (``enabled``)."""
        out = []
        size = self.config.ports_per_eni
        for i, eni in enumerate(self._enis):
            for family in (4, 6):
                addr = self._eni_addr(eni, family)
                if addr is None:
                    continue
                for proto in (IPPROTO_TCP, IPPROTO_UDP):
                    pool = self._pools.get((i, family, proto))
                    out.append(dict(eni=eni.id, family=family, address=addr,
                                    proto=PROTO_NAMES[proto],
                                    used=pool.used if pool else 0, size=size,
                                    enabled=i not in self._disabled))
        return out

    def eni_counters(self) -> List[Dict[str, object]]:
        """Packets and bytes translated through each ENI, per direction."""
        return [dict(eni=eni.id, packets_outbound=c[0], bytes_outbound=c[1],
                     packets_inbound=c[2], bytes_inbound=c[3])
                for eni, c in zip(self._enis, self._eni_c)]

    def take_signals(self) -> List[Tuple[str, int, str]]:
        """Signals raised since the last call, e.g. ``("pool_exhausted", 4, "tcp")``: every ENI
        of that family is out of ports for that protocol. Raised once until a port frees up or
        an ENI is added."""
        out, self._signals = self._signals, []
        return out

    @property
    def enis(self) -> List[Eni]:
        return list(self._enis)
