"""Events and flow collection (in csrc/hp_engine.c: ev_slot, ev_conn, ev_reject,
hp_engine_events, hp_engine_event_options, hp_engine_take_events, hp_engine_discard_events,
hp_engine_flow_collect): the bounded ring of NEW/UPDATE/DESTROY/REJECT events that
``conntrack -E``-style listeners drain, and the per-connection traffic deltas that flow logs
collect."""
from __future__ import annotations

import collections
from typing import List, Optional

from hyperplane.engine.constants import PROTO_NAMES, Direction, DropReason, TimeoutClass
from hyperplane.engine.reference.parse import Parsed, addr_bytes, addr_text
from hyperplane.engine.reference.table import Conn
from hyperplane.engine.types import EVENT_KINDS, Event, Tuple5

IN = Direction.INBOUND


def _not_collected(c: List[int], r: List[int]) -> List[int]:
    """Traffic since the last flow collection: packets modulo 2^32 (the C core keeps what it
    handed out in 32 bits: a delta is never 2^32 packets or more), bytes exact."""
    return [(c[0] - r[0]) & 0xFFFFFFFF, c[1] - r[1], (c[2] - r[2]) & 0xFFFFFFFF, c[3] - r[3]]


class EventsMixin:
    """The Engine's event and flow-collection methods (a mixin of
    :class:`~hyperplane.engine.reference.engine.Engine`). State: the ring ``self._events``
    (None: off), its capacity, ``self._events_lost``, the kinds asked for and the REJECT
    budget; ``_ev_conn`` and ``flow_collect`` describe a connection with the engine's
    ``_info``."""

    # ---- events --------------------------------------------------------------------------------
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
        fl = conn.fl_tcp_flags if kind == "destroy" else (0, 0)
        self._push(Event(kind, now, conn.id + 1, info.family, info.proto, info.orig, info.reply,
                         info.state, info.eni, *c, *d, reason, *fl))

    def _ev_reject(self, p: Parsed, direction: Direction, reason: DropReason,
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

    # ---- flow collection -----------------------------------------------------------------------
    def flow_collect(self, now: Optional[float] = None,
                     limit: Optional[int] = None) -> List[Event]:
        """One "flow" event per connection with traffic since the last collection (the delta
        fields), marking it collected. Takes the time first, so what expires now ends in a
        "destroy" event carrying its uncollected traffic instead. ``limit``: at most that many
        events, going on from where the previous limited call stopped (a round, which
        ``flow_collect_done`` says has visited every connection); a connection made during a
        round is collected in it or in the next one, never twice (here: in the next one; the
        compiled engine walks its slots, so it depends on the slot)."""
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 1):
            raise ValueError(f"limit {limit!r}: a whole number of events, at least 1")
        now = self._advance(now)
        rnd = self._fc_round
        if limit is None or rnd is None:   # a new round: the connections there are now
            rnd = [conn for cls in TimeoutClass for conn in self._lru[cls].values()]
            self._fc_pos = 0
        self._fc_round = None
        out: List[Event] = []
        pos = self._fc_pos
        while pos < len(rnd) and (limit is None or len(out) < limit):
            conn = rnd[pos]
            pos += 1
            c, r = conn.counters, conn.reported
            if self._lru[conn.state].get(conn) is not conn or (c[0] == r[0] and c[2] == r[2]):
                continue    # gone since the round began (its destroy event had it), or idle
            info = self._info(conn, conn.last_seen)
            out.append(Event("flow", conn.last_seen, conn.id + 1, info.family, info.proto,
                             info.orig, info.reply, info.state, info.eni, *c,
                             *_not_collected(c, r), "", *conn.fl_tcp_flags))
            conn.reported = list(c)
            conn.fl_tcp_flags = [0, 0]
        if pos < len(rnd):
            self._fc_round, self._fc_pos = rnd, pos
        return out

    @property
    def flow_collect_done(self) -> bool:
        """No ``flow_collect(limit=...)`` round is half-way (it visited every connection)."""
        return self._fc_round is None
