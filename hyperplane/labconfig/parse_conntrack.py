"""Parsing ``[conntrack]``: the data path's idle timeouts and table capacity, under the names of
the kernel's ``net.netfilter.nf_conntrack_*`` sysctls (without the prefix), so one value can
be given to both (``hyperplane bench`` sets the kernel's to the lab's).

Timeouts are whole seconds, as the kernel's sysctls are, from 1 to :data:`MAX_TIMEOUT`; an
absent key keeps the engine's default (:data:`~hyperplane.labconfig.model.CONNTRACK_DEFAULTS`:
AWS's 350 s for established TCP and replied UDP, Linux's values for the others). ``max`` is
each connection table's capacity, 1 to :data:`MAX_CAPACITY` (what the engine can hold).
"""
from __future__ import annotations

from typing import Any

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.model import CONNTRACK_DEFAULTS, ConntrackPlan
from hyperplane.labconfig.parse_common import check_keys, expect

#: Ten days: above the kernel's own longest default (established TCP, 432,000 s = 5 days).
MAX_TIMEOUT = 864_000
#: hyperplane.engine.config.EngineConfig's largest capacity (2**26 connections per table).
MAX_CAPACITY = 1 << 26


def parse_conntrack(t: Any) -> ConntrackPlan:
    """``[conntrack]``: each timeout key in whole seconds, ``max`` in connections."""
    expect(t, dict, "conntrack", "write it as a [conntrack] table")
    keys = list(CONNTRACK_DEFAULTS)
    for key in t:
        if isinstance(key, str) and key.startswith("nf_conntrack_") and key[13:] in keys:
            raise LabConfigError(f"conntrack.{key}", f"write {key[13:]} = ... (the sysctl's "
                                 "name without its nf_conntrack_ prefix)")
    check_keys(t, "conntrack", keys)
    values = {}
    for key in keys:
        if key not in t:
            continue
        field, default = f"conntrack.{key}", CONNTRACK_DEFAULTS[key]
        v = t[key]
        if key == "max":
            expect(v, int, field, f"write a number of connections, like max = {default}")
            if not 1 <= v <= MAX_CAPACITY:
                raise LabConfigError(field, f"{v} connections: set 1..{MAX_CAPACITY} (the "
                                     f"most one connection table holds; default {default})")
        else:
            expect(v, int, field, f"write whole seconds, like {key} = {default} (the kernel's "
                   f"nf_conntrack_{key} takes whole seconds too)")
            if not 1 <= v <= MAX_TIMEOUT:
                raise LabConfigError(field, f"{v} s: set 1..{MAX_TIMEOUT} seconds (ten days; "
                                     f"default {default})")
        values[key] = v
    return ConntrackPlan(**values)
