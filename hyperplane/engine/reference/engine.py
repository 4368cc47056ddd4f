"""The Engine: its state, the control plane, the translate path and observation (in
csrc/hp_engine.c: hp_engine_new, hp_engine_add_eni, hp_translate, new_conn, update_state,
manip). Follow the C along here; each concern the translate path hands work to has its own
module, mixed into the Engine: table.py, events.py, snapshot.py, icmp.py, frag.py.

The life of a packet (``Engine._translate``):

1. **parse** the IPv4/IPv6 header (walking IPv6 extension headers) and the TCP/UDP header;
   anything malformed or unhandled is a drop with one :class:`DropReason` (parse.py);
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

ICMP takes a side road after step 2 (``IcmpMixin._icmp``, icmp.py): an ICMP *error*
(destination unreachable, time exceeded, parameter problem, packet too big) embeds the start of
the packet that caused it, and that embedded packet names the connection the error is about. A
related error is translated, outer and embedded headers both (RFC 5508), without touching the
connection's state; everything else ICMP is dropped. A later fragment takes another
(``FragMixin._fragment``, frag.py).
"""
from __future__ import annotations

import collections
import struct
import time
from typing import Callable, Dict, List, Optional, Tuple

from hyperplane.engine import tcp_states
from hyperplane.engine.config import EngineConfig, Eni
from hyperplane.engine.constants import (
    FLAG_CSUM_PARTIAL, IPPROTO_TCP, IPPROTO_UDP, PROTO_NAMES, Direction, DropReason, TcpState,
    TimeoutClass, UdpState, Verdict, state_name,
)
from hyperplane.engine.reference.csum import csum_delta, csum_update_full, csum_update_partial
from hyperplane.engine.reference.events import EventsMixin
from hyperplane.engine.reference.frag import FragMixin, frag_key
from hyperplane.engine.reference.icmp import IcmpMixin
from hyperplane.engine.reference.parse import Parsed, addr_bytes, addr_text, parse_packet
from hyperplane.engine.reference.ports import PortPool, port_permutation
from hyperplane.engine.reference.snapshot import SnapshotMixin
from hyperplane.engine.reference import window
from hyperplane.engine.reference.table import MAX_SOURCES, Conn, TableMixin
from hyperplane.engine.types import (
    EVENT_KINDS, EgressRule, EntryInfo, Result, Tuple5, check_new_eni, check_port_slice,
    eni_index, parse_egress_rules, slice_ports, tuple_key,
)

ENGINE_NAME = "reference"

MAX_PENDING_SIGNALS = 64  # signals kept until take_signals()

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
R = DropReason


def fl_tcp_flags(flags: int) -> int:
    """VPC Flow Logs' tcp-flags of one segment (csrc/hp_engine_internal.h fl_tcp_flags): FIN 1,
    SYN 2, RST 4, and SYN-ACK 18 (the SYN and ACK bits of one segment); ACK alone, PSH and URG
    are not recorded (AWS lists these four)."""
    return (flags & 0x07) | (0x10 if flags & 0x12 == 0x12 else 0)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
class Engine(TableMixin, EventsMixin, SnapshotMixin, IcmpMixin, FragMixin):
    """V2N source NAT with connection tracking. Same API as the compiled ``hyperplane.Engine``."""

    engine = ENGINE_NAME

    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic,
                 port_slice: Tuple[int, int] = (0, 1)):
        #: (index, count): this engine holds the ports port_owner(p, count) == index of every ENI's range
        #: (a data path worker's shard; see hyperplane.engine.sharded). (0, 1): all of them.
        self.port_slice = check_port_slice(port_slice)
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
        self._fc_round: Optional[list] = None   # a flow_collect(limit=...) round half-way
        self._fc_pos = 0                        # ... and where it goes on
        self._ev_kinds = set(EVENT_KINDS[:4])
        self._reject_limit = self._rejects = 0
        self._eni_c: List[List[int]] = []   # per ENI: packets/bytes outbound, inbound
        self._per_source: Dict[Tuple[int, bytes], int] = {}   # (family, source) -> connections
        # fragmented datagrams whose first fragment passed: key -> tracker (see frag.py)
        self._frags: Dict[tuple, object] = {}
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
                                             cfg.port_min, cfg.port_max, self.port_slice),
                            cfg.port_reuse_delay)
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

    # ---- the data path ------------------------------------------------------------------------
    def _drop(self, reason: DropReason) -> Tuple[int, int]:
        self._drops[reason] += 1
        return Verdict.DROP, reason

    def _translate(self, direction, buf, off, length, flags, now) -> Tuple[int, int]:
        p = parse_packet(buf, off, length, flags)
        if isinstance(p, DropReason):
            return self._drop(p)
        # 2. TTL: a router must not forward a packet whose TTL would reach 0 (RFC 1812 5.3.1).
        ttl = buf[off + (8 if p.family == 4 else 7)]
        if ttl <= 1:
            return self._drop(R.TTL_EXPIRED if p.family == 4 else R.HOP_LIMIT_EXPIRED)
        if p.icmp:
            return self._icmp(direction, buf, off, p, flags, now)
        if p.frag is not None:
            fkey = frag_key(direction, p)
            if not p.frag.first:
                return self._fragment(direction, buf, off, p, fkey, now)
            if not self._frag_room(fkey, now):
                return self._drop(R.FRAGMENT_TABLE_FULL)

        key = tuple_key(p.family, p.proto, p.src, p.dst, p.sport, p.dport)
        hit = self._table.get(key)
        if direction == OUT:
            if hit is None:
                res = self._new_conn(p, key, now, buf, off)
                if isinstance(res, DropReason):
                    if res in (R.SECURITY_GROUP, R.TCP_NOT_SYN):
                        self._ev_reject(p, OUT, res, now)
                    return self._drop(res)
                conn, verdict, refresh = res, Verdict.NEW, True
            else:
                conn, d = hit
                if d != OUT:      # the packet looks like a reply of another connection
                    return self._drop(R.TUPLE_COLLISION)
                verdict, why, refresh = self._update_state(conn, OUT, buf, off, p, now)
                if verdict == Verdict.DROP:
                    return self._drop(why)
            self._manip(buf, off, p, flags, src=True, addr=conn.eni_addr, port=conn.eni_port)
            self._account(conn, OUT, p.l3_len, now, refresh, p.tcp_flags)
            self._c["packets_outbound"] += 1
            self._c["bytes_outbound"] += p.l3_len
        else:
            if hit is None or hit[1] != IN:
                self._ev_reject(p, IN, R.UNSOLICITED, now)
                return self._drop(R.UNSOLICITED)
            conn = hit[0]
            verdict, why, refresh = self._update_state(conn, IN, buf, off, p, now)
            if verdict == Verdict.DROP:
                return self._drop(why)
            self._manip(buf, off, p, flags, src=False, addr=conn.env_addr, port=conn.env_port)
            self._account(conn, IN, p.l3_len, now, refresh, p.tcp_flags)
            self._c["packets_inbound"] += 1
            self._c["bytes_inbound"] += p.l3_len
        if p.frag is not None:        # a first fragment passed: track its datagram
            self._frag_track(fkey, p, conn, now)
            self._c["fragments_translated"] += 1
        return verdict, R.NONE

    # 4. new connection -----------------------------------------------------------------------
    def _new_conn(self, p: Parsed, orig_key: bytes, now: float, buf=None, off: int = 0):
        seg = None
        if p.proto == IPPROTO_TCP:
            state = tcp_states.next_state(OUT, p.tcp_flags, TcpState.NONE)
            if state < 0:
                return R.TCP_NOT_SYN    # no mid-stream pick-up: connections start with SYN
            seg = window.read_segment(buf, off, p.l4, p.l3_len, p.frag is not None)
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
        # ids count up; a shard's are those with id % count == index (0-based here, reported
        # + 1), so the shards of one table never hand out the same id
        index, count = self.port_slice
        cid = self._next_id + (index - self._next_id) % count
        conn = Conn(id=cid, family=p.family, proto=p.proto, orig_key=orig_key,
                    reply_key=reply_key, env_addr=p.src[:4] if p.family == 4 else p.src,
                    env_port=p.sport, eni_index=eni_index, eni_addr=eni_raw, eni_port=port,
                    state=state, last_seen=now, win=window.new_window())
        if p.proto == IPPROTO_TCP:    # the opener's side of the window, from its SYN
            window.init_side(conn.win[0], conn.win[1], seg, negotiate=False)
        self._next_id = cid + 1
        self._conn_insert(conn, self._pool(eni_index, p.family, p.proto), src_key)
        self._lru[state][conn] = conn
        self._c["connections_created"] += 1
        self._ev_conn(conn, "new", now)
        return conn

    def _choose_port(self, p: Parsed, now: float):
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
    def _update_state(self, conn: Conn, direction: Direction, buf, off: int, p: Parsed,
                      now: float) -> Tuple[int, int, bool]:
        """The grid's transition, after the window's say (window.py): (verdict, reason,
        refresh). The verdict is DROP with tcp_out_of_window or tcp_invalid, else the packet's;
        refresh is False for a segment the window passed without changing anything (the timer
        is not refreshed either)."""
        verdict = Verdict.ESTABLISHED if direction == OUT else Verdict.REPLY
        if conn.proto == IPPROTO_TCP:
            state = conn.state
            nxt = tcp_states.next_state(direction, p.tcp_flags, TcpState(state))
            seg = window.read_segment(buf, off, p.l4, p.l3_len, p.frag is not None)
            w = window.track(conn.win, direction, state, nxt, seg)
            if w == window.OUT:
                return Verdict.DROP, R.TCP_OUT_OF_WINDOW, False
            if w == window.INVALID:
                return Verdict.DROP, R.TCP_INVALID, False
            if w == window.PASS:
                return verdict, R.NONE, False
            if nxt >= 0:
                if nxt == TcpState.SYN_SENT and state != TcpState.SYN_SENT:
                    verdict = Verdict.NEW      # TIME_WAIT/CLOSE re-opened by a new SYN
                self._set_state(conn, nxt, now)
        elif direction == IN and conn.state == UdpState.UNREPLIED:
            self._set_state(conn, UdpState.REPLIED, now)
        return verdict, R.NONE, True

    def _set_state(self, conn: Conn, state: int, now: float) -> None:
        if state != conn.state:
            del self._lru[conn.state][conn]
            conn.state = state
            self._lru[state][conn] = conn
            self._ev_conn(conn, "update", now)

    def _account(self, conn: Conn, direction: Direction, nbytes: int, now: float,
                 refresh: bool = True, tcp_flags: int = 0) -> None:
        for c in (conn.counters, self._eni_c[conn.eni_index]):
            c[2 * direction] += 1
            c[2 * direction + 1] += nbytes
        if tcp_flags:   # OR-ed until the next flow collection, as AWS's tcp-flags are
            conn.fl_tcp_flags[direction] |= fl_tcp_flags(tcp_flags)
        if refresh:                   # a segment the window PASSed keeps the timer as it was
            conn.last_seen = now
            self._lru[conn.state].move_to_end(conn)   # most recently used at the back

    # 6. manip ---------------------------------------------------------------------------------
    def _manip(self, b, off, p: Parsed, flags: int, src: bool, addr: bytes, port: int) -> None:
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
        connections (``enabled``); ``size``: the ports of this engine's slice."""
        out = []
        size = len(slice_ports(self.config.port_min, self.config.port_max, *self.port_slice))
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
