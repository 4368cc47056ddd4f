"""The connection table: :class:`Conn`, one tracked connection, and the Engine's methods that
insert connections, take the time, expire, remove and delete them (in csrc/hp_engine.c:
conn_insert, hp_engine_advance, conn_remove, lru_insert_sorted, hp_engine_delete,
hp_engine_flush).

One dict, ``self._table``, holds every connection twice: under the key of its orig tuple and
under the key of its reply tuple (``tuple_key`` / ``orig_key`` in hyperplane.engine.types,
shared with the compiled engine), each mapping to ``(conn, direction)``, so one lookup finds
the connection and the way the packet goes. One LRU list per timeout class, ``self._lru``,
oldest first: expiry looks only at list heads."""
from __future__ import annotations

import math
from typing import Optional

from hyperplane.engine.constants import Direction, TimeoutClass
from hyperplane.engine.types import Tuple5, orig_key

MAX_SOURCES = 65536       # distinct sources counted when max_connections_per_source is set

OUT, IN = Direction.OUTBOUND, Direction.INBOUND


class Conn:
    """One tracked connection: both tuples, the ct state, the counters and (TCP) the sequence
    windows of both sides (``win``: [orig, reply] :class:`~hyperplane.engine.reference.window.
    Side`)."""

    __slots__ = ("id", "family", "proto", "orig_key", "reply_key", "env_addr", "env_port",
                 "eni_index", "eni_addr", "eni_port", "state", "last_seen", "counters",
                 "reported", "win", "fl_tcp_flags")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)
        self.counters = [0, 0, 0, 0]  # packets_orig, bytes_orig, packets_reply, bytes_reply
        self.reported = [0, 0, 0, 0]  # the same, as handed to flow_collect() so far
        self.fl_tcp_flags = [0, 0]    # flow logs' tcp-flags [orig, reply] since then


class TableMixin:
    """The Engine's table methods (a mixin of
    :class:`~hyperplane.engine.reference.engine.Engine`). State: ``self._table``,
    ``self._lru``, ``self._per_source`` and the clock (``self._last_now``); ``_remove`` calls
    the engine's ``_ev_conn`` and ``_pool``, as conn_remove does in C."""

    def _conn_insert(self, conn: Conn, pool, src_key) -> None:
        """A new or restored connection into the table: both tuples (the reply tuple first: it
        was the collision check), its port taken from ``pool``, its source counted. The caller
        links it into its LRU list and counts it (created or restored)."""
        pool.take(conn.eni_port)
        self._table[conn.reply_key] = (conn, IN)
        self._table[conn.orig_key] = (conn, OUT)
        if self.config.max_connections_per_source:
            self._per_source[src_key] = self._per_source.get(src_key, 0) + 1

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

    # ---- deletion -----------------------------------------------------------------------------
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
