"""Snapshot and restore, a restart that loses no connection (in csrc/hp_engine.c:
hp_engine_snapshot, saved_ok, hp_engine_restore): every connection as fixed-size records in
the blob format both engines share (hyperplane.engine.types), and each record checked before
it is put back."""
from __future__ import annotations

import math
import struct
from typing import Dict, Optional

from hyperplane.engine.constants import (
    IPPROTO_TCP, IPPROTO_UDP, TcpState, TimeoutClass, UdpState,
)
from hyperplane.engine.reference import window
from hyperplane.engine.reference.parse import addr_bytes
from hyperplane.engine.reference.table import MAX_SOURCES, Conn
from hyperplane.engine.types import (
    RESTORE_OUTCOMES, SNAP_RECORD, SNAP_TUPLE, SNAP_WIN, snapshot_blob, snapshot_records,
    port_owner, tuple_key,
)


class SnapshotMixin:
    """The Engine's snapshot and restore (a mixin of
    :class:`~hyperplane.engine.reference.engine.Engine`). A restored connection goes into the
    table as a new one does (``_conn_insert``), and into its LRU list in its place by
    last_seen."""

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
                    conn.eni_port, conn.eni_index, conn.state,
                    *(SNAP_WIN.pack(*side.fields(), b"\0\0") for side in conn.win)))
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
        other_slice (its port is another shard's: port_slice), eni_mismatch, expired (timed out
        meanwhile), duplicate (a tuple or the port is taken already), table_full. ValueError
        for a blob that is not a snapshot."""
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
         state, w_orig, w_reply) = fields
        wins = [SNAP_WIN.unpack(w) for w in (w_orig, w_reply)]
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
              and cid != 0 and math.isfinite(last_seen)
              # windows: TCP only, known flags, scale <= 14; the opener's side always set
              and all(pad == b"\0\0" and scale <= window.MAX_WSCALE
                      and mw <= window.MAX_WINDOW
                      and not flags & ~window.F_ALL
                      and (proto == IPPROTO_TCP or not any((e, me, mw, ma, scale, flags)))
                      for e, me, mw, ma, scale, flags, pad in wins)
              and (proto != IPPROTO_TCP or wins[0][2] != 0))
        if not ok:
            return 1                                                     # invalid
        index, count = self.port_slice
        if count > 1 and port_owner(port, count) != index:
            return 6                                                     # other_slice
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
                    last_seen=seen, win=None)
        conn.counters = [po, bo, pr, br]
        conn.reported = [rpo, rbo, rpr, rbr]
        # The ends may have moved on while no data path ran (and a periodic state file can be
        # seconds old): each side may be learned again from its next segment (window.py).
        conn.win = [window.Side(*w[:5], w[5] | (window.F_RESYNC if w[2] else 0))
                    for w in wins]
        self._next_id = max(self._next_id, cid)
        self._conn_insert(conn, pool, src_key)
        self._lru_insert_sorted(conn)
        self._c["connections_restored"] += 1
        return 0
