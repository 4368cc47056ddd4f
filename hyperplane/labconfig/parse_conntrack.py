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
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.model import CONNTRACK_DEFAULTS, CONNTRACK_TIMEOUT_KEYS, ConntrackPlan
from hyperplane.labconfig.parse_common import check_keys, expect
from hyperplane.labconfig.problems import group, soft

#: Ten days: above the kernel's own longest default (established TCP, 432,000 s = 5 days).
MAX_TIMEOUT = 864_000
#: hyperplane.engine.config.EngineConfig's largest capacity (2**26 connections per table).
MAX_CAPACITY = 1 << 26

CONNTRACK = Table("[conntrack]", "The data path's connection-table idle timeouts (whole "
                  "seconds) and capacity, under the kernel's net.netfilter.nf_conntrack_* "
                  "names without the prefix; an absent key keeps the default.", tuple(
    Key(key, "integer", f"idle timeout in seconds of the engine's {CONNTRACK_TIMEOUT_KEYS[key]} "
        f"class (the kernel's nf_conntrack_{key})", default=CONNTRACK_DEFAULTS[key],
        minimum=1, maximum=MAX_TIMEOUT) for key in CONNTRACK_TIMEOUT_KEYS) + (
    Key("max", "integer", "connections each table holds (one per ENI key, one per NAT "
        "gateway); a new one past it is dropped as table_full (the kernel's nf_conntrack_max)",
        default=CONNTRACK_DEFAULTS["max"], minimum=1, maximum=MAX_CAPACITY),
))


def parse_conntrack(t: Any) -> ConntrackPlan:
    """``[conntrack]``: each timeout key in whole seconds, ``max`` in connections."""
    expect(t, dict, "conntrack", "write it as a [conntrack] table")
    keys = list(CONNTRACK_DEFAULTS)
    for key in t:
        if isinstance(key, str) and key.startswith("nf_conntrack_") and key[13:] in keys:
            raise LabConfigError(f"conntrack.{key}", f"write {key[13:]} = ... (the sysctl's "
                                 "name without its nf_conntrack_ prefix)")
    check_keys(t, "conntrack", CONNTRACK)
    values = {}
    with group():
        for key in keys:
            if key in t:
                with soft():
                    values[key] = _value(key, t[key])
    return ConntrackPlan(**values)


def _value(key: str, v: Any) -> int:
    """One key's value, checked: ``max`` in connections, the others in whole seconds."""
    field, default = f"conntrack.{key}", CONNTRACK_DEFAULTS[key]
    if key == "max":
        expect(v, int, field, f"write a number of connections, like max = {default}")
        if not 1 <= v <= MAX_CAPACITY:
            raise LabConfigError(field, f"{v} connections: set 1..{MAX_CAPACITY} (the most "
                                 f"one connection table holds; default {default})")
        return v
    expect(v, int, field, f"write whole seconds, like {key} = {default} (the kernel's "
           f"nf_conntrack_{key} takes whole seconds too)")
    if not 1 <= v <= MAX_TIMEOUT:
        raise LabConfigError(field, f"{v} s: set 1..{MAX_TIMEOUT} seconds (ten days; default "
                             f"{default})")
    return v
