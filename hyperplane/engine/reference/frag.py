"""Fragments, mirrored in csrc/hp_frag.c: the tracker of a fragmented datagram whose first
fragment passed, and the address rewrite of its later fragments (the first fragment is
translated like a whole packet, by the translate path in engine.py)."""
from __future__ import annotations

from typing import Optional, Tuple

from hyperplane.engine.constants import Direction, DropReason, Verdict
from hyperplane.engine.reference.csum import csum_delta, csum_update_full
from hyperplane.engine.reference.parse import Parsed

FRAG_MAX = 1024           # fragmented datagrams tracked at once (csrc: HP_FRAG_MAX)
FRAG_TIMEOUT_V4 = 30.0    # the kernel's ipfrag_time
FRAG_TIMEOUT_V6 = 60.0    # the kernel's ip6frag_time

OUT = Direction.OUTBOUND
R = DropReason


class _Tracker:
    """A fragmented datagram whose first fragment passed."""

    __slots__ = ("conn", "next", "expires")

    def __init__(self, conn, next_: int, expires: float):
        self.conn = conn
        self.next = next_          # the fragments seen cover [0, next) without a gap
        self.expires = expires


def frag_key(direction: Direction, p: Parsed) -> tuple:
    """The datagram a fragment belongs to: direction, family, protocol (IPv4 only: RFC 791
    keys on it, RFC 8200 does not), addresses and identification."""
    return (direction, p.family, p.proto if p.family == 4 else 0, p.src, p.dst, p.frag.ident)


class FragMixin:
    """The Engine's fragment methods (a mixin of
    :class:`~hyperplane.engine.reference.engine.Engine`). State: ``self._frags``, key ->
    _Tracker; ``_fragment`` also reads the connection table and calls the engine's ``_drop``
    and ``_account``, as hp_frag.c calls into the engine."""

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

    def _frag_track(self, fkey, p: Parsed, conn, now: float) -> None:
        """The first fragment passed: track its datagram (a tracker of the same key starts
        over)."""
        self._frags[fkey] = _Tracker(
            conn, p.frag.length, now + (FRAG_TIMEOUT_V4 if p.family == 4 else FRAG_TIMEOUT_V6))

    def _fragment(self, direction, buf, off, p: Parsed, fkey, now) -> Tuple[int, int]:
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
