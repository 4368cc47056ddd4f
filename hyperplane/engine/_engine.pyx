# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled engine: Cython bindings over the C core in csrc/.

Same public API as hyperplane.engine.reference.Engine (the readable specification); the differential
tests hold the two to identical verdicts and bytes. The batch call releases the GIL and runs
entirely in C: no per-packet Python.
"""
import math
import socket
import time
from array import array

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from cpython.bytearray cimport PyByteArray_AS_STRING

from hyperplane.engine._engine cimport *
from hyperplane.engine.config import EngineConfig, Eni
from hyperplane.engine.constants import (
    PROTO_NAMES, RING_FRAMES_DEFAULT, RING_FRAMES_MAX, RING_FRAMES_MIN, RING_FRAMES_STEP,
    Direction, DropReason,
    TimeoutClass, Verdict, state_name)
from hyperplane.engine import tcp_states as _tcp_states
from hyperplane.engine.types import (
    EVENT_KINDS, GONE_REASONS, MAX_EGRESS_RULES, RESTORE_OUTCOMES, EntryInfo, Event, Result,
    Tuple5, check_new_eni, check_port_slice, eni_index, orig_key, parse_egress_rules,
    snapshot_blob, snapshot_records)

ENGINE_NAME = "compiled"

#: The TCP transition grid compiled into the C core (compare with tcp_states.TRANSITIONS).
TCP_TRANSITIONS = tuple(
    tuple(tuple(int(hp_tcp_transitions[d][f][s]) for s in range(HP_TCP_N_STATES))
          for f in range(HP_TCP_N_FLAGCLASSES))
    for d in range(2))


def _check_tcp_flag_classes():
    """The grid's rows are flag classes: the reference engine's classifier (tcp_states, with
    its own flag bits and row order) must put every flags byte in the row the C core's
    (hp_tcp.h) does. Raises AssertionError at the first byte where they differ."""
    for f in range(256):
        py, c = _tcp_states.flag_class(f), hp_tcp_flag_class(f)
        if py != c:
            raise AssertionError(
                f"TCP flags 0x{f:02x}: hyperplane/engine/tcp_states.py's flag_class gives row {py}, "
                f"csrc/hp_tcp.c's hp_tcp_flag_class row {c}")


_check_tcp_flag_classes()

#: The engine's drop reasons by number, named as the C core names them (csrc/hp_drop_reasons.h).
DROP_REASON_NAMES = tuple(hp_reason_names[i].decode() for i in range(HP_R_COUNT))


def _check_drop_reasons():
    """DropReason (hyperplane/engine/constants.py, the reference engine's) must be the C list: the
    same numbers, each with the same name. Raises AssertionError at the first number where they
    differ: with the two out of step, a counter would carry another reason's name."""
    for i, name in enumerate(DROP_REASON_NAMES):
        try:
            r = DropReason(i)
        except ValueError:
            raise AssertionError(f"drop reason {i} is {name!r} in csrc/hp_drop_reasons.h, but "
                                 f"hyperplane/engine/constants.py's DropReason has no {i}") from None
        if r.label != name:
            raise AssertionError(f"drop reason {i} is {name!r} in csrc/hp_drop_reasons.h, but "
                                 f"DropReason.{r.name} ({r.label!r}) in hyperplane/engine/constants.py")
    for r in DropReason:
        if not 0 <= r.value < HP_R_COUNT:
            raise AssertionError(f"DropReason.{r.name} = {r.value} in hyperplane/engine/constants.py "
                                 f"is not in csrc/hp_drop_reasons.h (0 to {HP_R_COUNT - 1})")


_check_drop_reasons()
_VERDICTS = [Verdict(i) for i in range(4)]
_REASONS = [DropReason(i) for i in range(HP_R_COUNT)]
assert len(RESTORE_OUTCOMES) == HP_RS_COUNT, "RESTORE_OUTCOMES and csrc/hp_engine.h disagree"
assert MAX_EGRESS_RULES == HP_MAX_SG_RULES, "types.MAX_EGRESS_RULES and hp_acl.h disagree"
# [datapath] ring_frames is checked where the lab file is read, before this extension loads
assert (RING_FRAMES_MIN, RING_FRAMES_MAX, RING_FRAMES_STEP, RING_FRAMES_DEFAULT) == \
    (HP_RING_FRAMES_MIN, HP_RING_FRAMES_MAX, HP_RING_FPB, HP_RING_FRAMES_DEFAULT), \
    "constants.RING_FRAMES_* and csrc/hp_io.h disagree"
_TIMEOUT_CLASSES = [int(c) for c in TimeoutClass]


cdef object _u32(object seq):
    """A buffer of uint32 for offsets/lengths (array('I'), numpy uint32), or a copy of a list."""
    try:
        m = memoryview(seq)
        if m.format in ("I", "=I", "<I") and m.itemsize == 4:
            return seq
    except TypeError:
        pass
    return array("I", seq)


cdef class Engine:
    """V2N source NAT with connection tracking (compiled). See hyperplane.engine.reference.Engine."""

    cdef hp_engine *_e
    cdef bint _busy
    cdef list _enis
    cdef uint32_t _fc_cursor   # where a flow_collect(limit=...) round goes on (0: none open)
    cdef readonly object config
    cdef readonly tuple port_slice  # (index, count): the ports (p >> 1) % count == index of each ENI
    cdef public object clock

    engine = ENGINE_NAME

    def __cinit__(self):
        self._e = NULL

    def __init__(self, config, clock=time.monotonic, port_slice=(0, 1)):
        cdef hp_config c
        if self._e != NULL:
            raise RuntimeError("Engine.__init__ called twice; build a new Engine instead")
        if not isinstance(config, EngineConfig):
            raise TypeError("config must be a hyperplane.EngineConfig")
        self.port_slice = check_port_slice(port_slice)
        self.config = config.validate()
        self.clock = clock
        c.capacity = config.capacity
        c.max_per_src = config.max_connections_per_source
        c.port_min = config.port_min
        c.port_max = config.port_max
        c.reuse_delay = config.port_reuse_delay
        tl = config.timeouts.as_list()
        for i in range(HP_N_CLASSES):
            c.timeouts[i] = tl[i]
        c.seed = config.resolved_seed()
        c.port_slice = self.port_slice[0]
        c.port_stride = self.port_slice[1]
        self._e = hp_engine_new(&c)
        if self._e == NULL:
            raise MemoryError(f"cannot allocate a table of {config.capacity} connections")
        self._enis = []
        for eni in config.enis:
            self._add(eni)

    def __dealloc__(self):
        if self._e != NULL:
            hp_engine_free(self._e)
            self._e = NULL

    # ---- control plane ----------------------------------------------------------------------
    def add_eni(self, eni):
        """Add an ENI at the end of the scale-out order."""
        self._check_idle()
        eni.validate(f"enis[{len(self._enis)}]")
        check_new_eni(self._enis, eni)
        if len(self._enis) >= HP_MAX_ENIS:
            raise ValueError(f"at most {HP_MAX_ENIS} ENIs")
        self._add(eni)

    cdef _add(self, eni):
        cdef bytes a4 = socket.inet_pton(socket.AF_INET, eni.ipv4) if eni.ipv4 else None
        cdef bytes a6 = socket.inet_pton(socket.AF_INET6, eni.ipv6) if eni.ipv6 else None
        cdef const uint8_t *p4 = NULL
        cdef const uint8_t *p6 = NULL
        if a4 is not None:
            p4 = <const uint8_t *>a4
        if a6 is not None:
            p6 = <const uint8_t *>a6
        if hp_engine_add_eni(self._e, p4, p6) != 0:
            raise ValueError(f"at most {HP_MAX_ENIS} ENIs")
        self._enis.append(eni)

    @property
    def enis(self):
        return list(self._enis)

    def set_egress_rules(self, rules):
        """Security-group egress rules for new connections (see the reference engine): None
        allows everything, a list of ``(cidr, protocol, from_port, to_port)`` allows what any
        rule matches, an empty list allows nothing."""
        cdef hp_sg_rule *c = NULL
        cdef uint32_t i, n
        parsed = parse_egress_rules(rules)
        self._check_idle()
        n = len(parsed) if parsed is not None else 0
        if n:
            c = <hp_sg_rule *>calloc(n, sizeof(hp_sg_rule))
            if c == NULL:
                raise MemoryError("egress rules")
        try:
            for i in range(n):
                r = parsed[i]
                raw = r.network.network_address.packed
                memcpy(c[i].net, <const char *>raw, len(raw))
                c[i].plen = r.network.prefixlen
                c[i].family = r.network.version
                c[i].proto = r.proto
                c[i].port_min = r.port_min
                c[i].port_max = r.port_max
            if hp_engine_set_sg(self._e, c, n, parsed is not None) != 0:
                raise ValueError(f"egress rules: {n} rules; at most {HP_MAX_SG_RULES}")
        finally:
            free(c)

    def set_eni_enabled(self, eni, enabled):
        """Let an ENI (index or id) take new connections or not; its existing ones go on."""
        cdef int i = eni_index(self._enis, eni)
        self._check_idle()
        hp_engine_set_eni_enabled(self._e, i, 1 if enabled else 0)

    # ---- time ---------------------------------------------------------------------------------
    cdef double _advance(self, now) except? -1.0:
        cdef double t = self.clock() if now is None else float(now)
        if not math.isfinite(t):
            raise ValueError(f"now = {now!r}: must be a finite number of seconds")
        return hp_engine_advance(self._e, t)

    def expire(self, now=None):
        """Expire every connection idle longer than its state's timeout. Returns how many."""
        cdef uint64_t before = self._e.expired
        self._enter()
        try:
            self._advance(now)
        finally:
            self._busy = False
        return int(self._e.expired - before)

    cdef _check_idle(self):
        if self._busy:
            raise RuntimeError("engine is in use by another thread; one engine, one thread")

    cdef _enter(self):
        self._check_idle()
        self._busy = True

    # ---- per-packet API -----------------------------------------------------------------------
    def outbound(self, packet, now=None, csum_partial=False):
        """Environment -> VPC: source NAT. Returns the verdict and the rewritten packet."""
        return self._one(0, packet, now, csum_partial)

    def inbound(self, packet, now=None, csum_partial=False):
        """VPC -> ENI: reverse NAT of a reply, or a drop (``unsolicited`` when untracked)."""
        return self._one(1, packet, now, csum_partial)

    cdef _one(self, int d, packet, now, bint partial):
        cdef bytearray buf = bytearray(packet)
        cdef uint8_t reason = 0
        cdef int v
        self._enter()
        try:
            t = self._advance(now)
            v = hp_translate(self._e, d, <uint8_t *>PyByteArray_AS_STRING(buf), len(buf),
                             1 if partial else 0, t, &reason)
        finally:
            self._busy = False
        if v == HP_DROP:
            return Result(Verdict.DROP, None, _REASONS[reason])
        return Result(_VERDICTS[v], bytes(buf), DropReason.NONE)

    def translate_batch(self, direction, buf, offsets, lengths, verdicts, reasons, flags=None,
                        now=None):
        """Translate ``len(offsets)`` packets in place in ``buf`` (see the reference engine).

        ``buf``: writable bytes buffer; ``offsets``/``lengths``: uint32 buffers (array('I'))
        or sequences; ``verdicts``/``reasons``: writable byte buffers (bytearray);
        ``flags``: optional bytes with FLAG_CSUM_PARTIAL per packet. Runs without the GIL."""
        cdef int d = int(Direction(direction))
        cdef uint8_t[::1] b
        try:
            b = buf
        except (BufferError, TypeError, ValueError):
            raise ValueError("buf must be writable (bytearray, memoryview of one, array)")
        cdef const uint32_t[::1] off = _u32(offsets)
        cdef const uint32_t[::1] ln = _u32(lengths)
        cdef uint8_t[::1] vo
        cdef uint8_t[::1] ro
        try:
            vo = verdicts
            ro = reasons
        except (BufferError, TypeError, ValueError):
            raise ValueError("verdicts and reasons must be writable byte buffers (bytearray)")
        cdef const uint8_t[::1] fl
        cdef const uint8_t *flp = NULL
        cdef uint32_t n = off.shape[0], i, passed
        cdef size_t blen = b.shape[0]
        if ln.shape[0] < n or vo.shape[0] < n or ro.shape[0] < n:
            raise ValueError("lengths, verdicts, reasons and flags need one slot per offset")
        if flags is not None:
            fl = flags
            if fl.shape[0] < n:
                raise ValueError("lengths, verdicts, reasons and flags need one slot per offset")
            if n:
                flp = &fl[0]
        for i in range(n):
            if <size_t>off[i] + ln[i] > blen:
                raise ValueError(f"packet {i}: offset {off[i]} + length {ln[i]} past the buffer end")
        passed = 0
        self._enter()
        try:
            t = self._advance(now)
            if n:
                with nogil:
                    passed = hp_translate_batch(self._e, d, &b[0], &off[0], &ln[0], flp, n, t,
                                                &vo[0], &ro[0])
        finally:
            self._busy = False
        return passed

    # ---- events, flow collection, deletion -----------------------------------------------------
    def enable_events(self, capacity=16384):
        """Record events (NEW/UPDATE/DESTROY/REJECT) in a ring of ``capacity`` (rounded up to a
        power of two, at least 16) until ``take_events()``; 0 turns them off. A full ring keeps
        the oldest events and counts the rest in ``events_lost``. Recording costs one copy per
        connection event in C, nothing per packet of an existing connection."""
        self._check_idle()
        if not isinstance(capacity, int) or isinstance(capacity, bool) or \
                not 0 <= capacity <= 1 << 24:
            raise ValueError(f"capacity {capacity!r}: must be an integer from 0 to {1 << 24}")
        if hp_engine_events(self._e, capacity) < 0:
            raise MemoryError("event ring")

    @property
    def events_lost(self):
        return self._e.ev_lost

    def take_events(self, max=None):
        """The oldest recorded events (at most ``max``), removed from the ring."""
        self._check_idle()
        if self._e.ev == NULL:
            return []
        cdef uint32_t n = self._e.ev_mask + 1 if max is None else min(int(max), self._e.ev_mask + 1)
        cdef hp_event *buf = <hp_event *>calloc(n if n else 1, sizeof(hp_event))
        if buf == NULL:
            raise MemoryError("events")
        try:
            n = hp_engine_take_events(self._e, buf, n)
            return [self._event(&buf[i]) for i in range(n)]
        finally:
            free(buf)

    def discard_events(self):
        """Empty the ring without building Event objects (nobody is listening); returns how
        many were dropped. They do not count as lost."""
        self._check_idle()
        return hp_engine_discard_events(self._e)

    def event_options(self, kinds=None, reject_limit=None):
        """Record only ``kinds`` (names from "new", "update", "destroy", "reject"; the others
        are skipped, not lost), and keep at most ``reject_limit`` REJECT events between two
        drains (0: no limit; past it they count in events_lost). None leaves a setting as it is.
        Both stay until ``enable_events`` resets them (everything, no limit)."""
        self._check_idle()
        k, lim = _event_options(kinds, reject_limit, self._e.ev_kinds, self._e.ev_reject_limit)
        hp_engine_event_options(self._e, k, lim)

    def flow_collect(self, now=None, limit=None):
        """One "flow" event per connection with traffic since the last collection (the delta
        fields), marking it collected. Takes the time first, so what expires now ends in a
        "destroy" event carrying its uncollected traffic instead. ``limit``: at most that many
        events, going on from where the previous limited call stopped (a round, which
        ``flow_collect_done`` says has visited every connection); a connection made during a
        round is collected in it or in the next one, never twice."""
        self._check_idle()
        cdef uint32_t n, chunk = 4096, cap = 0
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"limit {limit!r}: a whole number of events, at least 1")
            cap = <uint32_t>min(limit, 1 << 24)
            chunk = min(chunk, cap)
        else:
            self._fc_cursor = 0
        self._advance(now)
        cdef hp_event *buf = <hp_event *>calloc(chunk, sizeof(hp_event))
        if buf == NULL:
            raise MemoryError("flow records")
        out = []
        try:
            while True:
                if cap:
                    chunk = min(chunk, cap - <uint32_t>len(out))
                n = hp_engine_flow_collect(self._e, buf, chunk, &self._fc_cursor, 0.0)
                out.extend(self._event(&buf[i]) for i in range(n))
                if self._fc_cursor == 0 or (cap and <uint32_t>len(out) >= cap):
                    return out
        finally:
            free(buf)

    @property
    def flow_collect_done(self):
        """No ``flow_collect(limit=...)`` round is half-way (it visited every connection)."""
        return self._fc_cursor == 0

    def delete(self, str proto, orig, now=None):
        """Delete the connection whose orig tuple is ``orig`` (a "destroy" event, reason
        "deleted"); False when there is none."""
        self._check_idle()
        cdef bytes key = orig_key(proto, Tuple5(*orig))
        cdef hp_tuple t
        memset(&t, 0, sizeof(t))
        t.family = key[0]
        t.proto = key[1]
        memcpy(t.src, <const char *>key + 2, 16)
        memcpy(t.dst, <const char *>key + 18, 16)
        t.sport = key[34] << 8 | key[35]
        t.dport = key[36] << 8 | key[37]
        cdef double tm = self._advance(now)
        return hp_engine_delete(self._e, &t, tm) == 0

    def flush(self, now=None):
        """Delete every connection; returns how many."""
        self._check_idle()
        cdef double tm = self._advance(now)
        return hp_engine_flush(self._e, tm)

    def snapshot(self):
        """Every connection as a blob for ``restore()`` (see hyperplane.engine.reference.Engine)."""
        self._check_idle()
        cdef uint32_t n = self._e.n_entries
        cdef bytearray body = bytearray(<size_t>n * sizeof(hp_saved))
        cdef uint32_t k = 0
        if n:
            k = hp_engine_snapshot(self._e, <hp_saved *>PyByteArray_AS_STRING(body), n)
        del body[<size_t>k * sizeof(hp_saved):]
        return snapshot_blob(body, k)

    def restore(self, blob, now=None, double shift=0.0):
        """Put back the connections of a ``snapshot()`` (see hyperplane.engine.reference.Engine)."""
        cdef const uint8_t[::1] rec = snapshot_records(blob)
        if not math.isfinite(shift):
            raise ValueError(f"shift {shift!r}: must be a finite number of seconds")
        self._check_idle()
        cdef double t = self._advance(now)
        cdef size_t i, n = rec.shape[0] // sizeof(hp_saved)
        cdef hp_saved s
        counts = [0] * HP_RS_COUNT
        for i in range(n):
            memcpy(&s, &rec[i * sizeof(hp_saved)], sizeof(hp_saved))  # records may be unaligned
            counts[hp_engine_restore(self._e, &s, t, shift)] += 1
        return dict(zip(RESTORE_OUTCOMES, counts))

    cdef _event(self, hp_event *v):
        proto = v.tuple[0].proto
        kind = EVENT_KINDS[v.type - 1]
        eni = self._enis[v.eni_index].id if v.eni_index != HP_EV_NO_ENI else None
        if v.type == HP_EV_REJECT:
            reason = _REASONS[v.reason].label
        elif v.type == HP_EV_DESTROY:
            reason = GONE_REASONS[v.reason]
        else:
            reason = ""
        return Event(kind, v.time, v.id, v.tuple[0].family, PROTO_NAMES[proto],
                     _tuple5(&v.tuple[0]),
                     None if v.type == HP_EV_REJECT else _tuple5(&v.tuple[1]),
                     "" if v.type == HP_EV_REJECT else state_name(proto, v.state), eni,
                     v.packets[0], v.bytes[0], v.packets[1], v.bytes[1],
                     v.dpackets[0], v.dbytes[0], v.dpackets[1], v.dbytes[1], reason,
                     v.tcp_flags[0], v.tcp_flags[1])

    # ---- observation --------------------------------------------------------------------------
    def __len__(self):
        self._check_idle()
        return self._e.n_entries

    def entries(self, now=None):
        """Every tracked connection (by timeout class, oldest first within a class)."""
        self._check_idle()
        cdef double t = self._advance(now)
        cdef uint32_t idx
        cdef hp_entry *x
        out = []
        for cls in _TIMEOUT_CLASSES:
            idx = self._e.lru_head[cls]
            while idx:
                x = &self._e.entries[idx]
                out.append(self._info(x, t))
                idx = x.lru_next
        return out

    cdef _info(self, hp_entry *x, double now):
        f = x.tuple[0].family
        proto = x.tuple[0].proto
        return EntryInfo(f, PROTO_NAMES[proto], _tuple5(&x.tuple[0]), _tuple5(&x.tuple[1]),
                         state_name(proto, x.state),
                         x.last_seen + self._e.cfg.timeouts[x.state] - now,
                         self._enis[x.eni_index].id, x.packets[0], x.bytes[0],
                         x.packets[1], x.bytes[1])

    def counters(self):
        """Packets and bytes per direction, connections, ICMP errors translated (not counted
        in the packets: they are not a connection's traffic), and every drop reason by name."""
        self._check_idle()
        e = self._e
        return {
            "packets_outbound": e.packets[0], "bytes_outbound": e.bytes[0],
            "packets_inbound": e.packets[1], "bytes_inbound": e.bytes[1],
            "connections_created": e.created, "connections_expired": e.expired,
            "connections": e.n_entries, "capacity": e.cfg.capacity, "events_lost": e.ev_lost,
            "connections_restored": e.restored, "icmp_errors_translated": e.icmp_errors,
            "fragments_translated": e.fragments,
            "drops": {r.label: e.drops[r] for r in _REASONS if r != DropReason.NONE},
        }

    def pool_fill(self):
        """Ports in use per ENI address and protocol, and whether the ENI takes new
        connections (``enabled``); ``size``: the ports of this engine's slice."""
        self._check_idle()
        cdef hp_pool *p
        cdef uint16_t first
        out = []
        size = hp_slice_ports(self.config.port_min, self.config.port_max, self.port_slice[1],
                              self.port_slice[0], &first)
        for i, eni in enumerate(self._enis):
            for fi, family in ((0, 4), (1, 6)):
                addr = eni.ipv4 if family == 4 else eni.ipv6
                if addr is None:
                    continue
                for ui, proto in ((0, "tcp"), (1, "udp")):
                    p = self._e.enis[i].pools[fi][ui]
                    used = (p.n - p.n_free) if p != NULL else 0
                    out.append(dict(eni=eni.id, family=family, address=addr, proto=proto,
                                    used=used, size=size,
                                    enabled=not self._e.enis[i].disabled))
        return out

    def eni_counters(self):
        """Packets and bytes translated through each ENI, per direction."""
        self._check_idle()
        return [dict(eni=eni.id, packets_outbound=self._e.enis[i].packets[0],
                     bytes_outbound=self._e.enis[i].bytes[0],
                     packets_inbound=self._e.enis[i].packets[1],
                     bytes_inbound=self._e.enis[i].bytes[1])
                for i, eni in enumerate(self._enis)]

    def take_signals(self):
        """Signals raised since the last call, e.g. ``("pool_exhausted", 4, "tcp")``."""
        self._check_idle()
        out = []
        for k in range(self._e.n_signals):
            code = self._e.signals[k]
            out.append(("pool_exhausted", 6 if code >> 1 else 4, "udp" if code & 1 else "tcp"))
        self._e.n_signals = 0
        return out

    def memory_bytes(self):
        """Bytes the C core holds: table buckets, entry slots used so far, port pools."""
        self._check_idle()
        return hp_engine_memory(self._e)


def _event_options(kinds, reject_limit, cur_kinds, cur_limit):
    """Check event_options' arguments; returns (kind bits, reject limit) for the C core."""
    bits = cur_kinds
    if kinds is not None:
        names = list(kinds) if not isinstance(kinds, str) else None
        if names is None or not set(names) <= set(EVENT_KINDS[:4]):
            raise ValueError(f"kinds {kinds!r}: a list drawn from {list(EVENT_KINDS[:4])}")
        bits = 0
        for n in names:
            bits |= 1 << (EVENT_KINDS.index(n) + 1)
    lim = cur_limit
    if reject_limit is not None:
        if not isinstance(reject_limit, int) or isinstance(reject_limit, bool) or \
                not 0 <= reject_limit < 1 << 32:
            raise ValueError(f"reject_limit {reject_limit!r}: an integer >= 0 (0: no limit)")
        lim = reject_limit
    return bits, lim


cdef object _tuple5(hp_tuple *t):
    cdef int alen = 4 if t.family == 4 else 16
    fam = socket.AF_INET if t.family == 4 else socket.AF_INET6
    return Tuple5(socket.inet_ntop(fam, (<char *>t.src)[:alen]), t.sport,
                  socket.inet_ntop(fam, (<char *>t.dst)[:alen]), t.dport)
include "_datapath.pxi"
include "_bench_threads.pxi"
