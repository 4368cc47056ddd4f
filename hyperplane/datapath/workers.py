"""The data path's workers as the control plane reports them.

With ``[datapath] workers = N`` the C data path runs N loop threads, each receiving on its own
socket of every veth link and translating with its own engine shard, which owns the ports
(p >> 1) % N == its index of every ENI (csrc/hp_dp_steer.c says how packets find their owner). One
row per worker joins what its thread counted (csrc/hp_dp.h hp_worker: packets received,
forwarded, handed over) with what its shards hold (connections, drops, pool slices).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hyperplane.engine.sharded import shard_row

#: Fault injection for tests: "worker-stop:<worker>:<seconds>" makes that worker fail that many
#: seconds after the data path starts, the way a real failure of its wait would.
FAULT_ENV = "HYPERPLANE_FAULT"


def worker_fault(environ=os.environ) -> Optional[Tuple[int, float]]:
    """(worker, monotonic time to break it) from HYPERPLANE_FAULT, or None."""
    spec = environ.get(FAULT_ENV, "")
    if not spec:
        return None
    parts = spec.split(":")
    try:
        if len(parts) != 3 or parts[0] != "worker-stop":
            raise ValueError
        return int(parts[1]), time.monotonic() + float(parts[2])
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r}: use worker-stop:<worker>:<seconds>") from None


def _shard_rows(engine) -> List[Dict[str, Any]]:
    """Per shard of one connection table (a plain Engine is one shard)."""
    return engine.per_shard() if hasattr(engine, "per_shard") else [shard_row(engine)]


def worker_rows(threads: Sequence[Dict[str, Any]], engines: Sequence[Any],
                cpus: Sequence[int] = ()) -> List[Dict[str, Any]]:
    """One dict per worker: its thread's counters (DataPath.worker_counters) plus, summed over
    every connection table, its shard's connections, packets, drops and pool slices."""
    rows = []
    for t in threads:
        w = t["worker"]
        row = dict(t, cpu=cpus[w] if w < len(cpus) else None, connections=0,
                   translated_outbound=0, translated_inbound=0, engine_drops=0, pools=[])
        for e in engines:
            shards = _shard_rows(e)
            if w >= len(shards):
                continue
            s = shards[w]
            row["connections"] += s["connections"]
            row["translated_outbound"] += s["packets_outbound"]
            row["translated_inbound"] += s["packets_inbound"]
            row["engine_drops"] += s["drops"]
            row["pools"] += s["pools"]
        rows.append(row)
    return rows
