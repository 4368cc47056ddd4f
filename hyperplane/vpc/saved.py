"""Restart: the part of :class:`~hyperplane.vpc.control_plane.ControlPlane` that saves its state
and comes back to it, and the validation of a saved document.

:meth:`ControlPlane.save` gives the state that matters across a restart of the data path (every
ENI with its id, addresses, state and times; every function's state, VpcConfig and environments'
keys; the serials and counters) as JSON-ready data, and ``ControlPlane(plan, effects, now,
restored=that)`` comes back in that state, replaying only the effects that state implies
(available ENIs answered for, retired ones closed to new connections, environments active on
their keys): restored functions are Active at once, on the same ENIs, without a new creation
delay. Times move by ``shift`` (0 on the same boot, where the lab clock runs on; the downtime
then counts as idle time, as it would have in the lab).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping

from hyperplane.vpc.state import (COUNTERS, EniState, FunctionState, Key, PendingUpdate,
                                  function_plans, key_of)


class SaveAndRestore:
    """:meth:`save` and the restore behind ``ControlPlane(..., restored=...)`` (a mixin of
    :class:`~hyperplane.vpc.control_plane.ControlPlane`)."""

    SAVE_VERSION = 1

    def save(self) -> Dict[str, Any]:
        """The state to come back to after a restart of the data path (JSON-ready; see
        :meth:`_load`). Traffic counters, port-use rates and pool fills are left out: the new
        data path's links and engines count afresh and report them at the next tick."""
        return {
            "version": self.SAVE_VERSION,
            "enis": [dict(dataclasses.asdict(e), key=[e.key[0], list(e.key[1])])
                     for e in self.enis.values()],
            "functions": [dict(
                dataclasses.asdict(fn),
                env_keys={env: None if k is None else [k[0], list(k[1])]
                          for env, k in fn.env_keys.items()})
                for fn in self.functions.values()],
            "next_serial": [[k[0], list(k[1]), n] for k, n in self._next_serial.items()],
            "counters": dict(self.counters),
            "last_tick": self._last_tick,
        }

    def _load(self, d: Mapping[str, Any], now: float, shift: float) -> None:
        """Take the saved state ``d`` (from :meth:`save`, times moved by ``shift``), then tell
        the effects what it implies. Raises ValueError naming the field when ``d`` is not such
        state or does not fit this plan (its functions and environments), before any effect."""
        if not isinstance(d, Mapping) or d.get("version") != self.SAVE_VERSION:
            raise ValueError(f"control_plane: not saved control-plane state of version "
                             f"{self.SAVE_VERSION}")
        enis: Dict[str, EniState] = {}
        for i, raw in enumerate(_saved_list(d, "enis")):
            e = _saved_eni(raw, f"control_plane.enis[{i}]", shift)
            if e.id in enis:
                raise ValueError(f"control_plane.enis[{i}]: ENI {e.id} is listed twice")
            enis[e.id] = e
        functions: Dict[str, FunctionState] = {}
        for i, raw in enumerate(_saved_list(d, "functions")):
            fn = _saved_function(raw, f"control_plane.functions[{i}]", shift)
            functions[fn.name] = fn
        planned = {fp.name: list(fp.envs) for fp in function_plans(self.plan)}
        got = {name: fn.envs for name, fn in functions.items()}
        if got != planned:
            raise ValueError(f"control_plane.functions: the saved functions and environments "
                             f"{got} are not this lab's {planned}")
        serials: Dict[Key, int] = {}
        for i, row in enumerate(_saved_list(d, "next_serial")):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                    and _str_list(row[1]) and _int(row[2])):
                raise ValueError(f"control_plane.next_serial[{i}]: expected [subnet, "
                                 f"[security groups], n], not {row!r}")
            serials[key_of(row[0], row[1])] = row[2]
        counters = d.get("counters")
        if not isinstance(counters, Mapping):
            raise ValueError("control_plane.counters: expected an object")

        self.enis, self.functions, self._next_serial = enis, functions, serials
        for name in COUNTERS:
            if _int(counters.get(name)):
                self.counters[name] = counters[name]
        last = d.get("last_tick")
        if isinstance(last, (int, float)) and not isinstance(last, bool):
            self._last_tick = min(now, float(last) + shift)
        for e in self.enis.values():
            if e.state in ("available", "in-use", "deleting"):
                self.effects.eni_active(e)
                if e.retired:
                    self.effects.eni_retired(e)
        for fn in self.functions.values():
            for env in fn.envs:
                self._set_ipv6(env, fn.ipv6_allowed and fn.attached)
            self._show_envs(fn)
        self._refresh()


_ENI_STATES = ("pending", "available", "in-use", "deleting", "deleted")
_FUNCTION_STATES = ("Pending", "Active", "Inactive", "Failed")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _saved_list(d: Mapping[str, Any], field: str) -> List[Any]:
    v = d.get(field)
    if not isinstance(v, list):
        raise ValueError(f"control_plane.{field}: expected a list, not {type(v).__name__}")
    return v


def _check(raw: Any, where: str, fields: Mapping[str, Any]) -> Dict[str, Any]:
    """``raw`` as a dict whose every field passes its check (a predicate)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object")
    for name, ok in fields.items():
        if not ok(raw.get(name)):
            raise ValueError(f"{where}.{name}: unexpected value {raw.get(name)!r}")
    return raw


def _saved_key(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and _str_list(v[1])


def _saved_eni(raw: Any, where: str, shift: float) -> EniState:
    r = _check(raw, where, {
        "id": lambda v: isinstance(v, str) and v, "key": _saved_key,
        "subnet": lambda v: isinstance(v, str), "security_groups": _str_list,
        "ipv4": _opt_str, "ipv6": _opt_str, "state": lambda v: v in _ENI_STATES,
        "created_at": _num, "ready_at": _num, "deleted_at": lambda v: v is None or _num(v),
        "serial": _int, "retired": lambda v: isinstance(v, bool),
        "delete_at": lambda v: v is None or _num(v), "reason": lambda v: isinstance(v, str)})

    def moved(t):
        return None if t is None else float(t) + shift
    return EniState(id=r["id"], key=key_of(r["key"][0], r["key"][1]), subnet=r["subnet"],
                    security_groups=list(r["security_groups"]), ipv4=r["ipv4"], ipv6=r["ipv6"],
                    state=r["state"], created_at=moved(r["created_at"]),
                    ready_at=moved(r["ready_at"]), deleted_at=moved(r["deleted_at"]),
                    serial=r["serial"], retired=r["retired"], delete_at=moved(r["delete_at"]),
                    reason=r["reason"])


def _saved_function(raw: Any, where: str, shift: float) -> FunctionState:
    r = _check(raw, where, {
        "name": lambda v: isinstance(v, str) and v, "subnet_ids": _str_list,
        "security_group_ids": _str_list, "ipv6_allowed": lambda v: isinstance(v, bool),
        "role": _opt_str, "envs": _str_list, "state": lambda v: v in _FUNCTION_STATES,
        "state_reason": _opt_str, "state_reason_code": _opt_str,
        "last_update_status": lambda v: isinstance(v, str),
        "last_update_status_reason": _opt_str, "last_update_status_reason_code": _opt_str,
        "last_used": _num, "env_keys": lambda v: isinstance(v, dict) and all(
            x is None or _saved_key(x) for x in v.values()),
        "pending_update": lambda v: v is None or isinstance(v, dict)})
    fn = FunctionState(
        name=r["name"], subnet_ids=list(r["subnet_ids"]),
        security_group_ids=list(r["security_group_ids"]), ipv6_allowed=r["ipv6_allowed"],
        role=r["role"], envs=list(r["envs"]), state=r["state"],
        state_reason=r["state_reason"], state_reason_code=r["state_reason_code"],
        last_update_status=r["last_update_status"],
        last_update_status_reason=r["last_update_status_reason"],
        last_update_status_reason_code=r["last_update_status_reason_code"],
        last_used=float(r["last_used"]) + shift,
        env_keys={env: None if k is None else key_of(k[0], k[1])
                  for env, k in r["env_keys"].items()})
    u = r["pending_update"]
    if u is not None:
        u = _check(u, f"{where}.pending_update", {
            "subnet_ids": _str_list, "security_group_ids": _str_list,
            "ipv6_allowed": lambda v: isinstance(v, bool), "started_at": _num})
        fn.pending_update = PendingUpdate(list(u["subnet_ids"]), list(u["security_group_ids"]),
                                          u["ipv6_allowed"], float(u["started_at"]) + shift)
    return fn

