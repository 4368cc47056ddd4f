"""One connection table made of shards: :class:`ShardedEngine`, the engine the data path's control
plane sees when N workers translate in parallel (issue 19).

Worker ``w`` of ``N`` owns an engine *shard* whose port pools hold only the ports ``p`` of every
ENI's range with ``(p >> 1) % N == w`` (pairs of ports: types.port_owner) (``Engine(config, port_slice=(w, N))``): the kernel steers a
packet on an ENI link by its destination port and on an environment link by its source port, so
every packet of a connection lands on the worker whose shard holds it, and the shards share
nothing (no lock on the fast path). A connection lives in the shard that owns its ENI port.

:class:`ShardedEngine` offers the control-plane side of ``Engine`` over all the shards at once:

* configuration (ENIs, egress rules, enabling, event options, expiry) goes to every shard;
* counters, ENI counters, pool fill, memory and ``len()`` are summed; ``capacity`` is the
  configured one, each shard holding ``ceil(capacity / N)`` connections, and
  ``max_connections_per_source`` is shared out so the shares add up to it: the data path hands a
  new connection one shard refuses for its share (ports, table, per-source limit) to the next
  worker (csrc/hp_drop_reasons.h hp_spills), so these limits are decided over the sum;
* entries are concatenated, events of all shards merged in time order, flow records collected
  over every shard;
* ``snapshot()`` writes ONE blob in the format of ``Engine.snapshot`` (records of all shards,
  each timeout class oldest first), and ``restore()`` routes each record to the shard owning its
  port (``port_owner(eni_port, N)``): a snapshot of 1 worker restores into 2 and back;
* ``take_signals()`` reports ``pool_exhausted`` only when every shard's pools of that kind are
  full: the data path hands a new connection whose owner's slice is full to another worker, so
  one full slice is not exhaustion, and scaling out (adding an ENI) then would be premature;
* ``per_shard()`` gives per-worker figures (connections, packets, drops, pool slices);
* connection ids stay unique over the table: shard ``i`` hands out the ids ``(id - 1) % N == i``.

With ``workers == 1`` it is exactly a plain ``Engine`` (every call goes to the one shard).
"""
from __future__ import annotations

import heapq
import math
import struct
import time
from typing import Callable, Dict, List, Tuple

from hyperplane.engine.config import EngineConfig
from hyperplane.engine.types import (
    MAX_PORT_SLICES, RESTORE_OUTCOMES, SNAP_RECORD, port_owner, snapshot_blob, snapshot_records,
)

# Where a snapshot record keeps what restore routes and snapshot orders by (SNAP_RECORD).
_LAST_SEEN = struct.Struct("<d")          # at byte 80, after the two tuples
_LAST_SEEN_AT = 80
_PORT = struct.Struct("<H")               # eni_port at byte 148
_PORT_AT = 148
_STATE_AT = 151                           # state byte, after eni_index
assert SNAP_RECORD.size == 192


#: The shards' engine class when none is given: hyperplane.engine sets it to its ``Engine`` (the
#: compiled one unless HYPERPLANE_ENGINE=reference) as it imports this module, which it always
#: does first (a submodule's package is imported before it), so no import cycle is needed.
DEFAULT_ENGINE_CLS = None


def _per_source_share(config: EngineConfig, i: int, workers: int) -> EngineConfig:
    """Shard i's share of max_connections_per_source: the shares add up to the limit (the
    data path spills a new connection refused as source_limit to the next worker, so a source
    gets the whole limit over all shards; a limit below the number of shards still lets each
    shard take one)."""
    limit = config.max_connections_per_source
    if not limit or workers == 1:
        return config
    import dataclasses
    share = limit // workers + (1 if i < limit % workers else 0)
    return dataclasses.replace(config, max_connections_per_source=max(1, share))


class ShardedEngine:
    """``workers`` engine shards, shard ``i`` holding the ports ``port_owner(p, workers) == i`` of every
    ENI, seen as one table (see the module docstring). ``engine_cls``: the engine class of the
    shards (``hyperplane.engine.Engine`` by default; the reference engine for tests)."""

    def __init__(self, config: EngineConfig, workers: int,
                 clock: Callable[[], float] = time.monotonic, engine_cls=None):
        if not isinstance(workers, int) or isinstance(workers, bool) or \
                not 1 <= workers <= MAX_PORT_SLICES:
            raise ValueError(f"workers {workers!r}: a whole number from 1 to {MAX_PORT_SLICES}")
        if not isinstance(config, EngineConfig):
            raise TypeError("config must be a hyperplane.EngineConfig")
        config.validate()
        cls = engine_cls or DEFAULT_ENGINE_CLS
        self.workers = workers
        self._config = config
        self._clock = clock
        shard_cfg = config
        if workers > 1:
            import dataclasses
            shard_cfg = dataclasses.replace(config, capacity=math.ceil(config.capacity / workers))
            if shard_cfg.seed is None:  # one seed for all shards, so their key and orders agree
                shard_cfg = dataclasses.replace(shard_cfg, seed=config.resolved_seed())
        #: the shards, shard i with port_slice (i, workers)
        self.shards = [cls(_per_source_share(shard_cfg, i, workers), clock=clock,
                           port_slice=(i, workers))
                       for i in range(workers)]
        self.engine = self.shards[0].engine
        self._events: List = []          # merged events not yet taken (take_events(max=...))
        self._fc_shard = 0               # the shard a flow_collect(limit=...) round is in
        self._pending_exhausted: List[Tuple[int, str]] = []   # signalled by a shard, not all full

    # ---- attributes ------------------------------------------------------------------------------
    @property
    def config(self) -> EngineConfig:
        """The configuration as given (the shards' capacity is ceil(capacity / workers))."""
        return self._config

    @property
    def clock(self):
        return self._clock

    @clock.setter
    def clock(self, clock) -> None:
        self._clock = clock
        for s in self.shards:
            s.clock = clock

    @property
    def enis(self):
        return self.shards[0].enis

    def _now(self, now):
        return self._clock() if now is None else now

    # ---- configuration: every shard --------------------------------------------------------------
    def add_eni(self, eni) -> None:
        for s in self.shards:
            s.add_eni(eni)

    def set_eni_enabled(self, eni, enabled) -> None:
        for s in self.shards:
            s.set_eni_enabled(eni, enabled)

    def set_egress_rules(self, rules) -> None:
        for s in self.shards:
            s.set_egress_rules(rules)

    def enable_events(self, capacity=16384) -> None:
        """Each shard gets a ring of ``capacity`` events."""
        for s in self.shards:
            s.enable_events(capacity)
        self._events = []

    def event_options(self, kinds=None, reject_limit=None) -> None:
        """As Engine.event_options, for every shard (``reject_limit`` is per shard)."""
        for s in self.shards:
            s.event_options(kinds=kinds, reject_limit=reject_limit)

    def expire(self, now=None) -> int:
        now = self._now(now)
        return sum(s.expire(now=now) for s in self.shards)

    # ---- events and flow records -----------------------------------------------------------------
    @property
    def events_lost(self) -> int:
        return sum(s.events_lost for s in self.shards)

    def take_events(self, max=None) -> list:
        """The oldest events of all shards (at most ``max``), merged in time order."""
        if self.workers == 1:
            return self.shards[0].take_events(max)
        fresh = [s.take_events() for s in self.shards]
        evs = list(heapq.merge(self._events, *fresh, key=lambda v: v.time))
        if max is not None and len(evs) > max:
            self._events = evs[max:]
            return evs[:max]
        self._events = []
        return evs

    def discard_events(self) -> int:
        n = len(self._events) + sum(s.discard_events() for s in self.shards)
        self._events = []
        return n

    def flow_collect(self, now=None, limit=None) -> list:
        """As Engine.flow_collect over every shard; a limited round walks the shards in turn."""
        now = self._now(now)
        if limit is None:
            self._fc_shard = 0
            out = []
            for s in self.shards:
                out.extend(s.flow_collect(now=now))
            return out
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit {limit!r}: a whole number of events, at least 1")
        out = []
        while len(out) < limit:
            s = self.shards[self._fc_shard]
            out.extend(s.flow_collect(now=now, limit=limit - len(out)))
            if not s.flow_collect_done:
                break                     # this shard's round goes on with the next call
            self._fc_shard = (self._fc_shard + 1) % self.workers
            if self._fc_shard == 0:
                break                     # every shard walked: the round is over
        return out

    @property
    def flow_collect_done(self) -> bool:
        return self._fc_shard == 0 and self.shards[0].flow_collect_done

    # ---- deletion, snapshot, restore -------------------------------------------------------------
    def delete(self, proto, orig, now=None) -> bool:
        """Delete the connection whose orig tuple is ``orig`` (it is in exactly one shard)."""
        now = self._now(now)
        return any(s.delete(proto, orig, now=now) for s in self.shards)

    def flush(self, now=None) -> int:
        now = self._now(now)
        return sum(s.flush(now=now) for s in self.shards)

    def snapshot(self) -> bytes:
        """Every connection of every shard as ONE blob in Engine.snapshot's format (each timeout
        class oldest first, as a single engine writes it)."""
        if self.workers == 1:
            return self.shards[0].snapshot()
        per = []
        for s in self.shards:
            rec = bytes(snapshot_records(s.snapshot()))
            size = SNAP_RECORD.size
            per.append([rec[i:i + size] for i in range(0, len(rec), size)])
        merged = list(heapq.merge(*per, key=lambda r: (
            r[_STATE_AT], _LAST_SEEN.unpack_from(r, _LAST_SEEN_AT)[0])))
        return snapshot_blob(b"".join(merged), len(merged))

    def restore(self, blob, now=None, shift: float = 0.0) -> Dict[str, int]:
        """Put back a snapshot's connections (of any number of workers), each into the shard
        owning its port (``port_owner(eni_port, workers)``). Returns Engine.restore's counts, summed."""
        rec = bytes(snapshot_records(blob))
        if not math.isfinite(shift):
            raise ValueError(f"shift {shift!r}: must be a finite number of seconds")
        now = self._now(now)
        if self.workers == 1:
            return self.shards[0].restore(blob, now=now, shift=shift)
        parts: List[List[bytes]] = [[] for _ in self.shards]
        size = SNAP_RECORD.size
        for i in range(0, len(rec), size):
            port = _PORT.unpack_from(rec, i + _PORT_AT)[0]
            parts[port_owner(port, self.workers)].append(rec[i:i + size])
        out = dict.fromkeys(RESTORE_OUTCOMES, 0)
        for s, part in zip(self.shards, parts):
            got = s.restore(snapshot_blob(b"".join(part), len(part)), now=now, shift=shift)
            for k, v in got.items():
                out[k] += v
        return out

    # ---- observation -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def entries(self, now=None) -> list:
        now = self._now(now)
        out = []
        for s in self.shards:
            out.extend(s.entries(now=now))
        return out

    def counters(self) -> Dict[str, object]:
        """Engine.counters summed over the shards (drops by reason too); ``capacity`` is the
        configured capacity."""
        if self.workers == 1:
            return self.shards[0].counters()
        out: Dict[str, object] = {}
        drops: Dict[str, int] = {}
        for s in self.shards:
            for k, v in s.counters().items():
                if k == "drops":
                    for r, n in v.items():
                        drops[r] = drops.get(r, 0) + n
                else:
                    out[k] = out.get(k, 0) + v
        out["capacity"] = self._config.capacity
        out["drops"] = drops
        return out

    def pool_fill(self) -> List[Dict[str, object]]:
        """One row per (ENI, family, protocol) as Engine.pool_fill, ``used`` and ``size`` summed
        over the slices (``size`` sums to the ports per ENI)."""
        if self.workers == 1:
            return self.shards[0].pool_fill()
        rows = [dict(r) for r in self.shards[0].pool_fill()]
        for s in self.shards[1:]:
            for row, r in zip(rows, s.pool_fill()):
                row["used"] += r["used"]
                row["size"] += r["size"]
        return rows

    def eni_counters(self) -> List[Dict[str, object]]:
        rows = [dict(r) for r in self.shards[0].eni_counters()]
        for s in self.shards[1:]:
            for row, r in zip(rows, s.eni_counters()):
                for k, v in r.items():
                    if k != "eni":
                        row[k] += v
        return rows

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes() for s in self.shards)

    def take_signals(self) -> List[Tuple[str, int, str]]:
        """``("pool_exhausted", family, proto)`` once every shard's pools of that kind are full
        (all slices of every enabled ENI of the family), not when one slice is: a new connection
        whose owner's slice is full goes to another worker. A kind a shard signalled is checked
        again on each call until every slice is full (then reported once) or a shard frees up."""
        if self.workers == 1:
            return self.shards[0].take_signals()
        for s in self.shards:
            for _, family, proto in s.take_signals():
                if (family, proto) not in self._pending_exhausted:
                    self._pending_exhausted.append((family, proto))
        if not self._pending_exhausted:
            return []
        fills = [s.pool_fill() for s in self.shards]
        out, keep = [], []
        for family, proto in self._pending_exhausted:
            state = _kind_state(fills, family, proto)
            if state == "full":
                out.append(("pool_exhausted", family, proto))
            elif state == "partly":
                keep.append((family, proto))
        self._pending_exhausted = keep
        return out

    def per_shard(self) -> List[Dict[str, object]]:
        """One dict per shard (a data path worker): index, connections, packets per direction,
        drops (all reasons), and its pool slices (ENI, family, protocol, ports used / size)."""
        return [shard_row(s, i) for i, s in enumerate(self.shards)]


def shard_row(engine, index: int = 0) -> Dict[str, object]:
    """One shard's row of :meth:`ShardedEngine.per_shard` (of any engine: a plain one is one
    shard)."""
    c = engine.counters()
    return dict(index=index, connections=c["connections"],
                packets_outbound=c["packets_outbound"], packets_inbound=c["packets_inbound"],
                drops=sum(c["drops"].values()),
                pools=[dict(eni=r["eni"], family=r["family"], proto=r["proto"], used=r["used"],
                            size=r["size"]) for r in engine.pool_fill()])


def _kind_state(fills, family: int, proto: str) -> str:
    """Over every shard's pool rows: "full" when every slice of every enabled ENI of that family
    and protocol is full, "none" when no slice is, "partly" in between (keep watching)."""
    full = empty = 0
    for rows in fills:
        for r in rows:
            if r["family"] == family and r["proto"] == proto and r["enabled"]:
                if r["used"] >= r["size"]:
                    full += 1
                else:
                    empty += 1
    if full and not empty:
        return "full"
    return "partly" if full else "none"
