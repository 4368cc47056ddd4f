"""The Lambda/VPC control plane: which Hyperplane ENIs exist, when, and who uses them.

A pure, clock-driven state machine: no sockets, no namespaces, no reading of clocks. Every
method takes ``now`` (seconds of the lab clock) and tells the data path what changed through an
:class:`Effects` object (the daemon in a running lab, a recorder in the tests, a small in-memory
driver in :func:`simulate_burst`).

Theory of operation (facts from the AWS Lambda VPC documentation, DESIGN.md):

- **One ENI per key.** A key is (subnet, set of security groups). Every function whose
  VpcConfig yields the same key shares that key's ENIs, however many functions there are. A
  function has one key per subnet of its VpcConfig; its execution environments are spread over
  those subnets (round-robin here, over Availability Zones in AWS).
- **Pending -> Active.** Creating an ENI takes time (``lifecycle.eni_create_delay``). A new
  function is ``Pending`` until every one of its keys has an available ENI, and cannot be invoked
  meanwhile (``ResourceConflictException``).
- **Updates keep the old ENI.** ``UpdateFunctionConfiguration`` with a new VpcConfig leaves the
  function ``Active`` with ``LastUpdateStatus: InProgress``; invocations keep using the previous
  configuration (the old ENIs) until the new keys have available ENIs, then the environments
  switch over at once.
- **Idle -> Inactive.** A function with no invocation and no traffic for
  ``lifecycle.inactive_after`` (14 days, later 30, in AWS) goes ``Inactive`` (reason ``Idle``)
  and Lambda reclaims the ENIs no other function needs. The next invocation *fails* and moves
  the function to ``Pending`` while new ENIs are created; here traffic from an environment of an
  Inactive function does the same (packets the data path dropped: ``env_blocked``).
- **Removing a VpcConfig** detaches the function at once; the ENIs no function uses any more are
  deleted after ``lifecycle.eni_delete_delay`` (AWS: up to 20 minutes), never while another
  function still uses them.
- **Scale-out.** An ENI carries up to 65,000 connections per protocol; the data path fills a
  key's ENIs in order. AWS adds another ENI only when they are all exhausted, so every new
  connection of a burst fails while that ENI is Pending. This control plane starts the next ENI
  *before* that: when every usable ENI of the key is filled past ``lifecycle.high_water``, or
  when, at the recent rate of port use, the key would run dry in less than twice the create
  delay. ``high_water = 0`` switches both off (AWS's behaviour). The mark alone is enough while
  rate x create delay stays below the ports left above it ((1 - 0.8) x 65,000 = 13,000); the
  prediction covers faster bursts. :func:`simulate_burst` measures both.
- **Use** is an invocation or a packet from one of the function's environments; packets the
  data path counted since the previous tick are dated at that tick, so a jump of the lab clock
  (``hyperplane clock advance``) counts as idle time.

**Restart.** :meth:`ControlPlane.save` gives the state that matters across a restart of the
data path (every ENI with its id, addresses, state and times; every function's state, VpcConfig
and environments' keys; the serials and counters) as JSON-ready data, and
``ControlPlane(plan, effects, now, restored=that)`` comes back in that state, replaying only
the effects that state implies (available ENIs answered for, retired ones closed to new
connections, environments active on their keys): restored functions are Active at once, on the
same ENIs, without a new creation delay. Times move by ``shift`` (0 on the same boot, where the
lab clock runs on; the downtime then counts as idle time, as it would have in the lab).

ENI states follow EC2's words: ``pending`` (being created), ``available`` (exists, no function
on it), ``in-use`` (a function uses its key), ``deleting`` (retired: takes no new connections but
still carries old ones until it goes), ``deleted``.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import (Any, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Set,
                    Tuple)

from hyperplane.engine.config import EngineConfig, Eni, Timeouts
from hyperplane.labconfig.iam import AccessDenied, check_vpc_config
from hyperplane.labconfig import (bare, MAX_SECURITY_GROUPS, MAX_SUBNET_IDS, EniPlan, EnvPlan,
                                  FunctionPlan, LifecyclePlan, Plan, SubnetPlan, eni_id,
                                  lab_mac)

__all__ = [
    "ControlPlaneError", "Effects", "NoEffects", "Key", "EniState", "FunctionState",
    "PendingUpdate", "ControlPlane", "simulate_burst", "key_of",
]

#: (subnet id, sorted security group ids): the identity of a Hyperplane ENI.
Key = Tuple[str, Tuple[str, ...]]

#: ``scale_out_early`` needs a prediction: time to exhaustion below this many create delays.
PREDICT_HORIZON = 2.0
#: Time constant (seconds) of the exponentially weighted average of the port-use rate: a
#: few ticks, so a burst is noticed within about one create delay and forgotten soon after.
RATE_TAU = 0.25

REGION = "us-east-1"
UPDATE_ACTION = "lambda:UpdateFunctionConfiguration"

COUNTERS = (
    "enis_created", "enis_deleted", "scale_outs", "scale_out_early", "scale_out_late",
    "scale_out_high_water", "scale_out_predicted", "scale_out_exhausted", "scale_out_failed",
    "eni_cap_reached", "invocations", "invocations_failed", "functions_idled",
    "functions_restored", "updates",
)


def key_of(subnet: str, security_groups: Iterable[str]) -> Key:
    """The key of an ENI: the subnet and the *set* of security groups (order does not matter,
    so it is kept sorted)."""
    return (subnet, tuple(sorted(security_groups)))


class ControlPlaneError(Exception):
    """A refused API call, worded like AWS's error: ``code`` (``ResourceNotFoundException``,
    ``ResourceConflictException``, ``ResourceNotReadyException``,
    ``InvalidParameterValueException``, ``ValidationException``, ``AccessDeniedException``) and
    ``message``. ``str()`` gives ``"code: message"``."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class Effects(Protocol):
    """What the data path does when the control plane decides something (the daemon)."""

    def eni_active(self, eni: "EniState") -> None:
        """The ENI became available: answer for its addresses on the key's link (creating the
        key's engine and link first if needed) and let the engine use it (``add_eni``)."""

    def eni_retired(self, eni: "EniState") -> None:
        """No new connections on this ENI; it still carries the ones it has."""

    def eni_deleted(self, eni: "EniState") -> None:
        """The ENI is gone: stop answering for its addresses."""

    def env_state(self, env: str, state: str, key: Optional[Key]) -> None:
        """An environment's link: ``active`` (new connections go out through ``key``'s ENIs),
        ``pending`` (function being created or restored; ``key`` is where it will go),
        ``inactive`` (function idle) or ``detached`` (no VpcConfig); traffic passes only when
        active or detached."""

    def env_ipv6(self, env: str, allowed: bool) -> None:
        """Whether the environment may send IPv6 (``Ipv6AllowedForDualStack``)."""


class NoEffects:
    """Effects that do nothing (a control plane on its own, e.g. to explore the API)."""

    def eni_active(self, eni): pass
    def eni_retired(self, eni): pass
    def eni_deleted(self, eni): pass
    def env_state(self, env, state, key): pass
    def env_ipv6(self, env, allowed): pass


@dataclasses.dataclass
class EniState:
    """One Hyperplane ENI. ``serial`` is its position among the ENIs ever created for its key
    (0 = the plan's), so ids never repeat; ``reason`` says why it was created (``initial``,
    ``update``, ``restore``, ``scale-out:high-water``, ``scale-out:prediction``,
    ``scale-out:exhausted``); ``delete_at`` is when a ``deleting`` ENI goes away."""
    id: str
    key: Key
    subnet: str
    security_groups: List[str]
    ipv4: Optional[str]
    ipv6: Optional[str]
    state: str
    created_at: float
    ready_at: float
    deleted_at: Optional[float] = None
    serial: int = 0
    retired: bool = False
    delete_at: Optional[float] = None
    reason: str = "initial"

    @property
    def live(self) -> bool:
        """Exists and is not on its way out (pending, available or in-use)."""
        return self.state in ("pending", "available", "in-use")

    @property
    def usable(self) -> bool:
        """Takes new connections."""
        return self.state in ("available", "in-use") and not self.retired


@dataclasses.dataclass
class PendingUpdate:
    """The VpcConfig an ``InProgress`` update moves the function to."""
    subnet_ids: List[str]
    security_group_ids: List[str]
    ipv6_allowed: bool
    started_at: float


@dataclasses.dataclass
class FunctionState:
    """A function as the Lambda API reports it (``State``, ``StateReason``,
    ``StateReasonCode``, ``LastUpdateStatus``...) plus which key each environment is on
    (``env_keys``; None = detached)."""
    name: str
    subnet_ids: List[str]
    security_group_ids: List[str]
    ipv6_allowed: bool
    role: Optional[str]
    envs: List[str]
    state: str = "Active"
    state_reason: Optional[str] = None
    state_reason_code: Optional[str] = None
    last_update_status: str = "Successful"
    last_update_status_reason: Optional[str] = None
    last_update_status_reason_code: Optional[str] = None
    last_used: float = 0.0
    env_keys: Dict[str, Optional[Key]] = dataclasses.field(default_factory=dict)
    pending_update: Optional[PendingUpdate] = None

    @property
    def attached(self) -> bool:
        return bool(self.subnet_ids)

    def keys(self) -> List[Key]:
        return [key_of(s, self.security_group_ids) for s in self.subnet_ids]


def _spread(envs: Sequence[str], subnet_ids: Sequence[str],
            sgs: Sequence[str]) -> Dict[str, Optional[Key]]:
    """Environments round-robin over the function's subnets (None when not attached)."""
    if not subnet_ids:
        return {e: None for e in envs}
    return {e: key_of(subnet_ids[i % len(subnet_ids)], sgs) for i, e in enumerate(envs)}


class _Rate:
    """Exponentially weighted average of a counter's growth per second (seeded with the first
    sample, so a burst from idle is seen at the second tick, not after several time
    constants)."""

    def __init__(self, t: float, value: float):
        self.t, self.value, self.rate = t, value, None

    def update(self, t: float, value: float) -> float:
        dt = t - self.t
        if dt > 0:
            sample = max(0.0, (value - self.value) / dt)
            if self.rate is None:
                self.rate = sample
            else:
                self.rate += (1.0 - math.exp(-dt / RATE_TAU)) * (sample - self.rate)
            self.t = t
        self.value = value
        return self.rate or 0.0


class ControlPlane:
    """See the module docstring. ``plan`` is a :class:`hyperplane.labconfig.Plan`; its
    ``enis`` are the first ENI of each key (used as they are). ``initial_active``: the plan's
    ENIs exist already (a lab that starts warm) instead of being created now. ``predict``:
    also scale out on the predicted time to exhaustion (with ``high_water > 0``)."""

    def __init__(self, plan: Plan, effects: Effects, now: float, *,
                 initial_active: bool = False, predict: bool = True,
                 restored: Optional[Mapping[str, Any]] = None, shift: float = 0.0):
        self.plan = plan
        self.effects = effects
        self.lifecycle: LifecyclePlan = plan.lifecycle
        self.predict = predict
        self.counters: Dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.enis: Dict[str, EniState] = {}           # every ENI ever, in creation order
        self.functions: Dict[str, FunctionState] = {}
        self._next_serial: Dict[Key, int] = {}
        self._env_function: Dict[str, str] = {e.name: e.function for e in plan.envs}
        self._env_seen: Dict[str, Tuple[str, Optional[Key]]] = {}
        self._env_v6: Dict[str, bool] = {}
        self._packets: Dict[str, int] = {}
        self._blocked: Dict[str, int] = {}
        self._pools: Dict[str, List[Mapping]] = {}    # ENI id -> its last pool_fill rows
        self._rates: Dict[Tuple[Key, int, str], _Rate] = {}
        self._capped: Set[Key] = set()                # keys in a "cap reached" episode
        self._last_tick = now

        if restored is not None:   # a restarted data path: the saved state, not a new lab
            self._load(restored, now, shift)
            return
        delay = 0.0 if initial_active else self.lifecycle.eni_create_delay
        for e in plan.enis:
            key = key_of(e.subnet, e.security_groups)
            self.enis[e.id] = EniState(
                id=e.id, key=key, subnet=e.subnet, security_groups=list(key[1]),
                ipv4=bare(e.ipv4), ipv6=bare(e.ipv6),
                state="available" if initial_active else "pending",
                created_at=now, ready_at=now + delay, serial=0)
            self._next_serial[key] = max(self._next_serial.get(key, 0), 1)
            self.counters["enis_created"] += 1

        for fp in _function_plans(plan):
            env_subnet = {e.name: e.subnet for e in plan.envs if e.function == fp.name}
            fn = FunctionState(
                name=fp.name, subnet_ids=list(fp.subnet_ids),
                security_group_ids=list(fp.security_group_ids) if fp.subnet_ids else [],
                ipv6_allowed=bool(fp.ipv6_allowed_for_dual_stack), role=fp.role,
                envs=list(fp.envs), last_used=now)
            fn.env_keys = _spread(fn.envs, fn.subnet_ids, fn.security_group_ids)
            for env, subnet in env_subnet.items():   # the plan already says where each one is
                if fn.attached and subnet in fn.subnet_ids:
                    fn.env_keys[env] = key_of(subnet, fn.security_group_ids)
            self.functions[fn.name] = fn
            if fn.attached and not initial_active:
                fn.state, fn.state_reason_code = "Pending", "Creating"
                fn.state_reason = "The function is being created."
            for key in fn.keys():     # every subnet gets an ENI, even one no environment uses
                if not any(e.live for e in self._enis_of(key)):
                    self._create_eni(key, now, "initial", ready_now=initial_active)

        for e in self.enis.values():
            if e.state == "available":
                self.effects.eni_active(e)
        for fn in self.functions.values():
            for env in fn.envs:
                self._set_ipv6(env, fn.ipv6_allowed and fn.attached)
            self._show_envs(fn)
        self._refresh()

    # ---- restart ----------------------------------------------------------------------------------
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
        planned = {fp.name: list(fp.envs) for fp in _function_plans(self.plan)}
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

    # ---- the clock ------------------------------------------------------------------------------
    def tick(self, now: float, *, env_packets: Mapping[str, int] = {},
             env_blocked: Mapping[str, int] = {}, pools: Mapping[Key, Sequence[Mapping]] = {},
             exhausted: Iterable[Key] = ()) -> None:
        """Advance the control plane to ``now``. ``env_packets``/``env_blocked``: cumulative
        packets received per environment link / dropped there because the function was not
        active; ``pools``: per key, the engine's ``pool_fill()`` rows; ``exhausted``: keys whose
        engine raised ``pool_exhausted`` since the last tick."""
        self._note_traffic(now, env_packets, env_blocked)
        self._complete(now)
        self._detect_idle(now)
        for rows in pools.values():
            for eni in {r["eni"] for r in rows}:
                self._pools[eni] = [r for r in rows if r["eni"] == eni]
        self._scale_out(now, {key_of(k[0], k[1]) for k in exhausted})
        self._delete_due(now)
        self._refresh()
        self._last_tick = max(self._last_tick, now)

    def _note_traffic(self, now, env_packets, env_blocked) -> None:
        """Packets counted since the last tick are use, dated at the last tick: the counters
        only say they came after it, and a jump of the lab clock (``hyperplane clock
        advance``) is idle time, not time the traffic was seen at."""
        for env, count in env_packets.items():
            before = self._packets.get(env, 0)
            self._packets[env] = count
            fn = self._function_of_env(env)
            if fn is not None and count > before and fn.state == "Active":
                fn.last_used = max(fn.last_used, min(self._last_tick, now))
        for env, count in env_blocked.items():
            before = self._blocked.get(env, 0)
            self._blocked[env] = count
            fn = self._function_of_env(env)
            if fn is not None and count > before and fn.state == "Inactive":
                self._restore(fn, now)   # traffic wakes it up, as an invocation does

    def _complete(self, now: float) -> None:
        """ENIs whose creation finished become available; functions and updates waiting for
        them complete."""
        for e in self.enis.values():
            if e.state == "pending" and e.ready_at <= now:
                e.state = "available"
                self.effects.eni_active(e)
        for fn in self.functions.values():
            if fn.state == "Pending" and self._ready(fn.keys()):
                fn.state, fn.state_reason, fn.state_reason_code = "Active", None, None
                fn.last_used = now
                if fn.last_update_status == "InProgress":
                    fn.last_update_status = "Successful"
                self._show_envs(fn)
            elif fn.state == "Active" and fn.pending_update is not None:
                u = fn.pending_update
                if self._ready([key_of(s, u.security_group_ids) for s in u.subnet_ids]):
                    self._switch(fn, now)

    def _ready(self, keys: Iterable[Key]) -> bool:
        return all(any(e.usable for e in self._enis_of(k)) for k in keys)

    def _switch(self, fn: FunctionState, now: float) -> None:
        """An InProgress update's ENIs are available: move the environments over and let the
        old keys' ENIs go if nobody else uses them."""
        u = fn.pending_update
        fn.pending_update = None
        self._apply_config(fn, u.subnet_ids, u.security_group_ids, u.ipv6_allowed)
        fn.last_update_status = "Successful"
        fn.last_update_status_reason = fn.last_update_status_reason_code = None
        self._show_envs(fn)
        self._release_unused(now)

    def _detect_idle(self, now: float) -> None:
        idle_keys: Set[Key] = set()
        for fn in self.functions.values():
            if (fn.state == "Active" and fn.attached and fn.pending_update is None
                    and now - fn.last_used >= self.lifecycle.inactive_after):
                fn.state, fn.state_reason_code = "Inactive", "Idle"
                fn.state_reason = (f"The function has been idle for {now - fn.last_used:g} s; "
                                   "Lambda reclaimed its network interfaces. The next "
                                   "invocation fails and restores them.")
                self.counters["functions_idled"] += 1
                self._show_envs(fn)
                idle_keys.update(fn.keys())
        if idle_keys:   # reclaimed now, not after the delete delay: they were idle anyway
            self._release_unused(now, only=idle_keys, immediate=True)

    # ---- scale-out ------------------------------------------------------------------------------
    def _fill(self, eni: EniState) -> float:
        """The fullest pool (any family/protocol) of an ENI, 0..1, from the last tick."""
        fills = [r["used"] / r["size"] for r in self._pools.get(eni.id, ())
                 if r.get("size") and r.get("enabled", True)]
        return max(fills, default=0.0)

    def _full(self, eni: EniState) -> bool:
        return any(r["used"] >= r["size"] for r in self._pools.get(eni.id, ()) if r.get("size"))

    def _time_to_exhaustion(self, key: Key, usable: List[EniState], now: float) -> float:
        """Seconds until the key's usable ENIs run out of ports for some family/protocol, at
        the recent rate of port use (inf when no pool is filling)."""
        totals: Dict[Tuple[int, str], List[int]] = {}
        for e in usable:
            for r in self._pools.get(e.id, ()):
                t = totals.setdefault((r["family"], r["proto"]), [0, 0])
                t[0] += r["used"]
                t[1] += r["size"] - r["used"]
        for e in usable:   # an ENI that became available this tick has no rows yet: all free
            seen = {(r["family"], r["proto"]) for r in self._pools.get(e.id, ())}
            for (family, proto), t in totals.items():
                if (family, proto) not in seen and (e.ipv4 if family == 4 else e.ipv6):
                    t[1] += self.lifecycle.ports_per_eni
        best = math.inf
        for (family, proto), (used, free) in totals.items():
            rate = self._rates.get((key, family, proto))
            if rate is None:
                self._rates[(key, family, proto)] = _Rate(now, used)
                continue
            r = rate.update(now, used)
            if r > 0:
                best = min(best, free / r)
        return best

    def _scale_out(self, now: float, exhausted: Set[Key]) -> None:
        lc = self.lifecycle
        for key in self._used_keys(active_only=True):
            live = [e for e in self._enis_of(key) if e.live]
            usable = [e for e in live if e.usable]
            if not usable:
                continue
            tte = self._time_to_exhaustion(key, usable, now)
            trigger = None
            if key in exhausted:
                trigger = "exhausted"
            elif lc.high_water > 0 and all(self._fill(e) >= lc.high_water for e in usable):
                trigger = "high-water"
            elif (lc.high_water > 0 and self.predict
                  and tte < PREDICT_HORIZON * lc.eni_create_delay):
                trigger = "prediction"
            if trigger is None:
                self._capped.discard(key)
                continue
            if any(e.state == "pending" for e in live):
                continue            # one new ENI at a time per key
            if len(live) >= lc.max_enis_per_key:
                if key not in self._capped:
                    self._capped.add(key)
                    self.counters["eni_cap_reached"] += 1
                continue
            if self._create_eni(key, now, f"scale-out:{trigger}") is None:
                self.counters["scale_out_failed"] += 1
                continue
            self.counters["scale_outs"] += 1
            self.counters[{"exhausted": "scale_out_exhausted", "high-water":
                           "scale_out_high_water", "prediction": "scale_out_predicted"}[trigger]] += 1
            late = trigger == "exhausted" or all(self._full(e) for e in usable)
            self.counters["scale_out_late" if late else "scale_out_early"] += 1

    # ---- ENIs -----------------------------------------------------------------------------------
    def _enis_of(self, key: Key) -> List[EniState]:
        return [e for e in self.enis.values() if e.key == key]

    def _create_eni(self, key: Key, now: float, reason: str,
                    ready_now: bool = False) -> Optional[EniState]:
        """A new pending ENI for ``key`` (None when the subnet has no free address). Its id
        derives from the lab, the key and the serial, so ids never repeat."""
        subnet, sgs = key
        serial = self._next_serial.get(key, 0)
        self._next_serial[key] = serial + 1
        new_id = eni_id(self.plan.name, subnet, list(sgs) + ([f"#{serial}"] if serial else []))
        salt = 0
        while new_id in self.enis:   # a (very rare) hash prefix repeat
            salt += 1
            new_id = eni_id(self.plan.name, subnet, list(sgs) + [f"#{serial}.{salt}"])
        taken = [a for e in self.enis.values() if e.state != "deleted"
                 for a in (e.ipv4, e.ipv6) if a]
        ipv4 = _free_address(self.plan, subnet, 4, taken)
        if ipv4 is None:
            return None
        ipv6 = None
        if self.plan.subnet(subnet).ipv6_cidr:
            ipv6 = _free_address(self.plan, subnet, 6, taken)
            if ipv6 is None:
                return None
        delay = 0.0 if ready_now else self.lifecycle.eni_create_delay
        e = EniState(id=new_id, key=key, subnet=subnet, security_groups=list(sgs), ipv4=ipv4,
                     ipv6=ipv6, state="available" if ready_now else "pending",
                     created_at=now, ready_at=now + delay, serial=serial, reason=reason)
        self.enis[e.id] = e
        self.counters["enis_created"] += 1
        return e

    def _ensure(self, keys: Iterable[Key], now: float, reason: str) -> Optional[str]:
        """Make sure every key has a live ENI (creating pending ones); the subnet that ran out
        of addresses when one could not be created (the ENIs created so far are dropped)."""
        made = []
        for key in keys:
            if any(e.live and not e.retired for e in self._enis_of(key)):
                continue
            e = self._create_eni(key, now, reason)
            if e is None:
                for m in made:
                    m.state, m.deleted_at = "deleted", now
                    self.counters["enis_deleted"] += 1
                return key[0]
            made.append(e)
        return None

    def _used_keys(self, active_only: bool = False) -> Set[Key]:
        """Keys some function needs: Active and Pending functions' current keys and the keys an
        InProgress update moves to (``active_only``: only functions that carry traffic)."""
        used: Set[Key] = set()
        for fn in self.functions.values():
            if fn.state == "Active" or (fn.state == "Pending" and not active_only):
                used.update(fn.keys())
                if fn.pending_update is not None and not active_only:
                    u = fn.pending_update
                    used.update(key_of(s, u.security_group_ids) for s in u.subnet_ids)
        return used

    def _release_unused(self, now: float, only: Optional[Set[Key]] = None,
                        immediate: bool = False) -> None:
        """ENIs of keys no function needs any more: retired, and deleted after the delete
        delay (``immediate``: at once, for idle reclaim)."""
        used = self._used_keys()
        for e in list(self.enis.values()):
            if not e.live or e.key in used or (only is not None and e.key not in only):
                continue
            e.retired = True
            self.effects.eni_retired(e)
            if immediate:
                self._delete(e, now)
            else:
                e.state, e.delete_at = "deleting", now + self.lifecycle.eni_delete_delay

    def _delete(self, e: EniState, now: float) -> None:
        e.state, e.deleted_at, e.retired = "deleted", now, True
        self.counters["enis_deleted"] += 1
        self.effects.eni_deleted(e)

    def _delete_due(self, now: float) -> None:
        for e in list(self.enis.values()):
            if e.state == "deleting" and e.delete_at is not None and e.delete_at <= now:
                self._delete(e, now)

    def _refresh(self) -> None:
        """available/in-use: whether some function uses the ENI's key."""
        used = self._used_keys()
        for e in self.enis.values():
            if e.state in ("available", "in-use"):
                e.state = "in-use" if e.key in used else "available"

    # ---- environments ---------------------------------------------------------------------------
    def _function_of_env(self, env: str) -> Optional[FunctionState]:
        name = self._env_function.get(env)
        return self.functions.get(name) if name else None

    def _show_envs(self, fn: FunctionState) -> None:
        """Tell the data path the state of each of the function's environments."""
        for env in fn.envs:
            key = fn.env_keys.get(env)
            if not fn.attached:
                state, key = "detached", None
            elif fn.state == "Active":
                state = "active"
            elif fn.state == "Pending":
                state = "pending"
            else:
                state, key = "inactive", None
            if self._env_seen.get(env) != (state, key):
                self._env_seen[env] = (state, key)
                self.effects.env_state(env, state, key)

    def _set_ipv6(self, env: str, allowed: bool) -> None:
        if self._env_v6.get(env) != allowed:
            self._env_v6[env] = allowed
            self.effects.env_ipv6(env, allowed)

    def _apply_config(self, fn: FunctionState, subnet_ids, sgs, ipv6: bool) -> None:
        fn.subnet_ids, fn.security_group_ids = list(subnet_ids), list(sgs)
        fn.ipv6_allowed = bool(ipv6) and bool(subnet_ids)
        fn.env_keys = _spread(fn.envs, fn.subnet_ids, fn.security_group_ids)
        for env in fn.envs:
            self._set_ipv6(env, fn.ipv6_allowed)

    # ---- the Lambda API -------------------------------------------------------------------------
    def _function(self, name: str) -> FunctionState:
        fn = self.functions.get(name)
        if fn is None:
            raise ControlPlaneError(
                "ResourceNotFoundException",
                f"Function not found: {self._arn(name)} (this lab's functions: "
                f"{', '.join(self.functions) or 'none'})")
        return fn

    def _arn(self, name: str) -> str:
        return f"arn:aws:lambda:{REGION}:{self.plan.account_id}:function:{name}"

    def _restore(self, fn: FunctionState, now: float) -> None:
        """Inactive -> Pending: recreate the ENIs it needs (Inactive again, with the reason,
        when a subnet has no address left: AWS leaves a function it cannot restore
        Inactive)."""
        full = self._ensure(fn.keys(), now, "restore")
        if full is not None:
            fn.state_reason_code = "SubnetOutOfIPAddresses"
            fn.state_reason = (f"Lambda could not restore the function: subnet {full} has no "
                               "free IP address for a network interface.")
            return
        fn.state, fn.state_reason_code = "Pending", "Restoring"
        fn.state_reason = "The function is being restored."
        self.counters["functions_restored"] += 1
        self._show_envs(fn)

    def invoke(self, name: str, now: float) -> Dict[str, Any]:
        """Lambda ``Invoke``: succeeds only on an Active function (and counts as use). On an
        Inactive one it fails and starts restoring the function (Pending)."""
        fn = self._function(name)
        if fn.state == "Active":
            fn.last_used = now
            self.counters["invocations"] += 1
            return {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
        self.counters["invocations_failed"] += 1
        if fn.state == "Pending":
            raise ControlPlaneError(
                "ResourceConflictException", "The operation cannot be performed at this time. "
                "The function is currently in the following state: Pending")
        if fn.state == "Inactive":
            self._restore(fn, now)
            self._refresh()
            raise ControlPlaneError(
                "ResourceNotReadyException", "The function is currently in the following "
                "state: Inactive. Lambda is restoring its network interfaces; the function "
                "is Pending and can be invoked once it is Active again.")
        raise ControlPlaneError(
            "ResourceNotReadyException", f"The function is currently in the following state: "
            f"{fn.state} ({fn.state_reason_code}: {fn.state_reason})")

    def update_function(self, name: str, *, subnet_ids: Optional[Sequence[str]] = None,
                        security_group_ids: Optional[Sequence[str]] = None,
                        ipv6_allowed: Optional[bool] = None, now: float) -> Dict[str, Any]:
        """Lambda ``UpdateFunctionConfiguration(VpcConfig=...)``. Arguments left None keep
        their current value; ``subnet_ids=[]`` removes the VpcConfig. Returns the function as
        :meth:`function_list` shows it."""
        fn = self._function(name)
        if fn.state == "Pending":
            raise ControlPlaneError(
                "ResourceConflictException", "The operation cannot be performed at this time. "
                "The function is currently in the following state: Pending")
        if fn.last_update_status == "InProgress":
            raise ControlPlaneError(
                "ResourceConflictException", "The operation cannot be performed at this time. "
                f"An update is in progress for resource: {self._arn(name)}")
        subnets = _id_list(subnet_ids, "SubnetIds") if subnet_ids is not None \
            else list(fn.subnet_ids)
        sgs = _id_list(security_group_ids, "SecurityGroupIds") \
            if security_group_ids is not None else list(fn.security_group_ids)
        if ipv6_allowed is not None and not isinstance(ipv6_allowed, bool):
            raise ControlPlaneError("ValidationException", f"Ipv6AllowedForDualStack must be "
                                    f"true or false, not {ipv6_allowed!r}")
        ipv6 = fn.ipv6_allowed if ipv6_allowed is None else ipv6_allowed
        if not subnets:
            sgs, ipv6 = [], False
        else:
            self._validate(subnets, sgs, ipv6)
        self._check_iam(fn, subnets, sgs)
        self.counters["updates"] += 1

        if not subnets:                       # detach: at once; unused ENIs go after a delay
            self._apply_config(fn, [], [], False)
            fn.state, fn.state_reason, fn.state_reason_code = "Active", None, None
            fn.last_update_status = "Successful"
            fn.last_update_status_reason = fn.last_update_status_reason_code = None
            self._show_envs(fn)
            self._release_unused(now)
        elif fn.state in ("Inactive", "Failed"):   # nothing to keep: provision the new config
            keys = [key_of(s, sgs) for s in subnets]
            full = self._ensure(keys, now, "update")
            if full is not None:
                self._update_failed(fn, full)
            else:
                self._apply_config(fn, subnets, sgs, ipv6)
                fn.state, fn.state_reason_code = "Pending", "Restoring"
                fn.state_reason = "The function is being restored with its new VpcConfig."
                fn.last_update_status = "InProgress"
                self._show_envs(fn)
        else:                                 # Active: keep the old ENIs until the new ones work
            full = self._ensure([key_of(s, sgs) for s in subnets], now, "update")
            if full is not None:
                self._update_failed(fn, full)
            else:
                fn.pending_update = PendingUpdate(subnets, sgs, ipv6, now)
                fn.last_update_status = "InProgress"
                fn.last_update_status_reason = "The function is being updated."
                fn.last_update_status_reason_code = "Creating"
        self._refresh()
        return self._function_dict(fn, now)

    def _update_failed(self, fn: FunctionState, subnet: str) -> None:
        fn.last_update_status = "Failed"
        fn.last_update_status_reason_code = "SubnetOutOfIPAddresses"
        fn.last_update_status_reason = (f"Subnet {subnet} has no free IP address for a "
                                        "network interface; the previous VpcConfig stays.")

    def _validate(self, subnets: List[str], sgs: List[str], ipv6: bool) -> None:
        """AWS's checks on a VpcConfig, with its error codes."""
        if len(subnets) > MAX_SUBNET_IDS:
            raise ControlPlaneError(
                "ValidationException", "1 validation error detected: Value at "
                "'vpcConfig.subnetIds' failed to satisfy constraint: Member must have length "
                f"less than or equal to {MAX_SUBNET_IDS} (got {len(subnets)})")
        if len(sgs) > MAX_SECURITY_GROUPS:
            raise ControlPlaneError(
                "ValidationException", "1 validation error detected: Value at "
                "'vpcConfig.securityGroupIds' failed to satisfy constraint: Member must have "
                f"length less than or equal to {MAX_SECURITY_GROUPS} (got {len(sgs)})")
        if not sgs:
            raise ControlPlaneError(
                "InvalidParameterValueException", "SecurityGroupIds is empty: a VpcConfig with "
                "SubnetIds needs at least one security group (or pass SubnetIds=[] to detach "
                "the function from the VPC)")
        for what, ids in (("subnet", subnets), ("security group", sgs)):
            for i, x in enumerate(ids):
                if x in ids[:i]:
                    raise ControlPlaneError("InvalidParameterValueException",
                                            f"{what} {x!r} is listed twice; list each once")
        known = {s.id: s for s in self.plan.subnets}
        for s in subnets:
            if s not in known:
                raise ControlPlaneError(
                    "InvalidParameterValueException", "Error occurred while DescribeSubnets. "
                    "EC2 Error Code: InvalidSubnetID.NotFound. EC2 Error Message: The subnet "
                    f"ID '{s}' does not exist (this lab's subnets: {', '.join(known)})")
        known_sgs = _known_security_groups(self.plan)
        for g in sgs:
            if g not in known_sgs:
                raise ControlPlaneError(
                    "InvalidParameterValueException", "Error occurred while "
                    "DescribeSecurityGroups. EC2 Error Code: InvalidGroup.NotFound. EC2 Error "
                    f"Message: The security group '{g}' does not exist (this lab's security "
                    f"groups: {', '.join(sorted(known_sgs))})")
        if ipv6:
            for s in subnets:
                if not known[s].ipv6_cidr:
                    raise ControlPlaneError(
                        "InvalidParameterValueException", "Ipv6AllowedForDualStack is true but "
                        f"subnet '{s}' is not dual-stack (it has no IPv6 CIDR block); use only "
                        "dual-stack subnets or set Ipv6AllowedForDualStack to false")

    def _check_iam(self, fn: FunctionState, subnets: List[str], sgs: List[str]) -> None:
        """The caller's identity policies and the execution role (hyperplane.labconfig.iam), when the
        lab has an [iam] section."""
        iam = self.plan.iam
        if iam is None:
            return
        roles = iam.get("roles") or {}
        try:
            check_vpc_config(
                action=UPDATE_ACTION, function_name=fn.name, account_id=self.plan.account_id,
                identity_policies=iam.get("identity_policies"), role_name=fn.role,
                role_policies=roles.get(fn.role) if fn.role is not None else None,
                vpc_id=self.plan.vpc_id or None, subnet_ids=subnets, security_group_ids=sgs)
        except AccessDenied as e:
            raise ControlPlaneError(e.code, e.message) from e

    # ---- observation ----------------------------------------------------------------------------
    def eni_list(self, now: float, *, include_deleted: bool = True) -> List[Dict[str, Any]]:
        """Every ENI (``hyperplane eni list``): times in lab-clock seconds, the functions
        using it and, from the last tick, its pool fill per ``ipv4/tcp``-style pool."""
        users: Dict[Key, List[str]] = {}
        for fn in self.functions.values():
            if fn.state in ("Active", "Pending"):
                for k in fn.keys():
                    users.setdefault(k, []).append(fn.name)
                if fn.pending_update is not None:
                    u = fn.pending_update
                    for s in u.subnet_ids:
                        users.setdefault(key_of(s, u.security_group_ids), []).append(fn.name)
        out = []
        for e in self.enis.values():
            if e.state == "deleted" and not include_deleted:
                continue
            pools = {f"ipv{r['family']}/{r['proto']}": {
                "used": r["used"], "size": r["size"],
                "fill": round(r["used"] / r["size"], 4) if r["size"] else 0.0}
                for r in self._pools.get(e.id, ())}
            out.append(dict(
                id=e.id, subnet=e.subnet, security_groups=list(e.security_groups),
                key=[e.key[0], list(e.key[1])], ipv4=e.ipv4, ipv6=e.ipv6, state=e.state,
                retired=e.retired, serial=e.serial, reason=e.reason,
                functions=sorted(set(users.get(e.key, []))) if e.live else [],
                created_at=e.created_at, ready_at=e.ready_at, deleted_at=e.deleted_at,
                delete_at=e.delete_at, pools=pools))
        return out

    def function_list(self, now: float) -> List[Dict[str, Any]]:
        """Every function, with the Lambda API's state fields."""
        return [self._function_dict(fn, now) for fn in self.functions.values()]

    def _function_dict(self, fn: FunctionState, now: float) -> Dict[str, Any]:
        u = fn.pending_update
        envs = []
        for env in fn.envs:
            state, key = self._env_seen.get(env, ("?", None))
            key = fn.env_keys.get(env) if key is None else key
            live = [e.id for e in self._enis_of(key) if e.usable] \
                if key and state == "active" else []
            envs.append(dict(name=env, state=state, subnet=key[0] if key else None,
                             key=[key[0], list(key[1])] if key else None, enis=live))
        enis: List[str] = []    # the ENIs its environments' new connections use
        for e in envs:
            enis.extend(i for i in e["enis"] if i not in enis)
        return dict(
            name=fn.name, arn=self._arn(fn.name), state=fn.state,
            subnet_ids=list(fn.subnet_ids), security_group_ids=list(fn.security_group_ids),
            ipv6_allowed=fn.ipv6_allowed, enis=enis,
            state_reason=fn.state_reason, state_reason_code=fn.state_reason_code,
            last_update_status=fn.last_update_status,
            last_update_status_reason=fn.last_update_status_reason,
            last_update_status_reason_code=fn.last_update_status_reason_code,
            vpc_id=(self.plan.vpc_id or None) if fn.attached else None,
            pending_vpc_config=None if u is None else dict(
                subnet_ids=list(u.subnet_ids), security_group_ids=list(u.security_group_ids),
                ipv6_allowed_for_dual_stack=u.ipv6_allowed, since=u.started_at),
            role=fn.role, last_used=fn.last_used, idle_for=max(0.0, now - fn.last_used),
            environments=envs)


# ---- helpers ------------------------------------------------------------------------------------
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


def _id_list(value: Any, field: str) -> List[str]:
    if isinstance(value, str) or not all(isinstance(x, str) for x in value):
        raise ControlPlaneError("ValidationException", f"{field} must be a list of id "
                                f"strings, not {value!r}")
    return list(value)


def _function_plans(plan: Plan) -> List[FunctionPlan]:
    """The plan's functions; for a plan without them (an older plan), derived from the
    environments and their ENIs."""
    if plan.functions:
        return list(plan.functions)
    out: Dict[str, FunctionPlan] = {}
    for env in plan.envs:
        eni = next((e for e in plan.enis if e.id == env.eni), None)
        fp = out.setdefault(env.function, FunctionPlan(
            name=env.function, subnet_ids=[], security_group_ids=sorted(eni.security_groups)
            if eni else [], ipv6_allowed_for_dual_stack=env.ipv6 is not None, role=None,
            envs=[]))
        fp.envs.append(env.name)
        if eni and eni.subnet not in fp.subnet_ids:
            fp.subnet_ids.append(eni.subnet)
    return list(out.values())


def _known_security_groups(plan: Plan) -> Set[str]:
    known = {g.id for g in plan.security_groups}
    known.update(g for e in plan.enis for g in e.security_groups)
    known.update(g for f in plan.functions for g in f.security_group_ids)
    return known


def _free_address(plan: Plan, subnet: str, family: int, taken: Sequence[str]) -> Optional[str]:
    return plan.free_address(subnet, family, taken=taken)


# ---- the burst simulation -----------------------------------------------------------------------
class _BurstEffects(NoEffects):
    """The data path of :func:`simulate_burst`: one engine for its one key."""

    def __init__(self, engine_cls, ports_per_eni: int, hold: float, clock):
        self.engine_cls, self.ports, self.hold, self.clock = engine_cls, ports_per_eni, hold, clock
        self.engine = None

    def eni_active(self, eni):
        e = Eni(eni.id, ipv4=eni.ipv4, ipv6=eni.ipv6)
        if self.engine is None:
            t = Timeouts(udp_unreplied=self.hold, udp_replied=max(self.hold, 350.0))
            cfg = EngineConfig(enis=[e], port_min=65536 - self.ports, port_max=65535, seed=1,
                               timeouts=t)
            self.engine = self.engine_cls(cfg, clock=self.clock)
        else:
            self.engine.add_eni(e)

    def eni_retired(self, eni):
        if self.engine is not None and hasattr(self.engine, "set_eni_enabled"):
            self.engine.set_eni_enabled(eni.id, False)


def _burst_plan(create_delay: float, high_water: float, ports_per_eni: int,
                max_enis: int) -> Plan:
    """One subnet, one security group, one function with one environment."""
    name, sid, sg = "burst", "subnet-a", "sg-burst"
    subnet = SubnetPlan(id=sid, cidr="198.18.1.0/24", ipv6_cidr=None, bridge="br0",
                        router4="198.18.1.1", router6=None)
    eni = EniPlan(index=0, id=eni_id(name, sid, [sg]), subnet=sid, security_groups=[sg],
                  ipv4="198.18.1.4", ipv6=None, prefix4=subnet.cidr, prefix6=None,
                  router4=subnet.router4, router6=None, node_ifname="eni0",
                  fabric_ifname="eni0", mac=lab_mac(name, "eni", 0))
    env = EnvPlan(index=0, name="fn-0", function="fn", attach="tap", netns="hp-burst-env-fn-0",
                  ifname="eth0", node_ifname=None, eni=eni.id, subnet=sid, ipv4="198.19.0.2/30",
                  gw4="198.19.0.1", ipv6=None, gw6=None, gw_mac=lab_mac(name, "gw", 0))
    fn = FunctionPlan(name="fn", subnet_ids=[sid], security_group_ids=[sg],
                      ipv6_allowed_for_dual_stack=False, role=None, envs=[env.name])
    lc = LifecyclePlan(eni_create_delay=create_delay, high_water=high_water,
                       ports_per_eni=ports_per_eni, max_enis_per_key=max_enis)
    return Plan(name=name, prefix="hp-burst-", node_ns="hp-burst-node", fabric_ns="hp-burst-vpc",
                subnets=[subnet], enis=[eni], envs=[env], hosts=[], functions=[fn],
                lifecycle=lc)


def _udp4_template(src: str, dst: str) -> bytearray:
    """An IPv4/UDP packet (1 byte of payload, UDP checksum 0 = none, RFC 768) whose ports
    are patched in per flow; the IP header checksum does not cover the ports."""
    import socket
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 29, 0, 0x4000, 64, 17, 0,
                                socket.inet_aton(src), socket.inet_aton(dst)))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return hdr + struct.pack("!HHHH", 0, 0, 9, 0) + b"x"


def simulate_burst(connections: int = 70_000, rate: float = 10_000.0,
                   create_delay: float = 1.0, high_water: float = 0.8, tick: float = 0.05, *,
                   predict: bool = True, ports_per_eni: int = 65_000, max_enis: int = 8,
                   hold: float = 3600.0, engine_cls=None) -> Dict[str, Any]:
    """A burst of ``connections`` new UDP flows from one execution environment, ``rate`` per
    second, through a real engine (``hyperplane.Engine`` unless ``engine_cls``) driven by the
    control plane, with a control-plane tick every ``tick`` seconds. Everything runs in
    process on an explicit clock, so the result is exact and repeatable. Each flow holds its
    port for ``hold`` seconds (the engine's UDP timeout; the default outlasts any burst, so
    all the burst's connections are open at once).

    AWS's behaviour is ``high_water=0``: the next ENI is created only once the pool is
    exhausted, so roughly ``rate x (create_delay + tick)`` connections fail (at most the ones
    past the first ENI's ports). With a high-water mark (and the rate prediction) the next ENI
    is ready before the pool runs dry. Returns the failed count and what the control plane did.
    """
    if engine_cls is None:
        from hyperplane.engine import Engine as engine_cls
    if not (connections > 0 and rate > 0 and tick > 0 and create_delay >= 0):
        raise ValueError("connections, rate and tick must be > 0 and create_delay >= 0")
    clock = {"now": 0.0}
    fx = _BurstEffects(engine_cls, ports_per_eni, hold, lambda: clock["now"])
    plan = _burst_plan(create_delay, high_water, ports_per_eni, max_enis)
    cp = ControlPlane(plan, fx, 0.0, initial_active=True, predict=predict)
    key = key_of("subnet-a", ["sg-burst"])
    pkt = _udp4_template("198.19.0.2", "198.18.1.200")
    failed = 0
    first_failure = last_failure = None
    by_source: Dict[bytes, int] = {}
    ticks = 1          # the k-th tick runs at k * tick (no drift from repeated additions)
    packets = 0

    def do_tick(t: float) -> None:
        clock["now"] = t
        eng = fx.engine
        cp.tick(t, env_packets={"fn-0": packets}, env_blocked={},
                pools={key: eng.pool_fill()},
                exhausted=[key] if eng.take_signals() else [])

    for i in range(connections):
        t = i / rate
        while ticks * tick <= t:
            do_tick(ticks * tick)
            ticks += 1
        sport, dport = 1024 + i % 64000, 10000 + i // 64000
        struct.pack_into("!HH", pkt, 20, sport, dport)
        clock["now"] = t
        res = fx.engine.outbound(bytes(pkt), now=t)
        packets += 1
        if res.packet is None:
            failed += 1
            first_failure = t if first_failure is None else first_failure
            last_failure = t
        else:                                  # the ENI address it left from
            src = res.packet[12:16]
            by_source[src] = by_source.get(src, 0) + 1
    end = connections / rate
    while ticks * tick <= end + create_delay + tick:
        do_tick(ticks * tick)
        ticks += 1
    import socket
    drops = fx.engine.counters()["drops"]
    left = max(0, connections - ports_per_eni)
    return dict(
        connections=connections, rate=rate, create_delay=create_delay, high_water=high_water,
        predict=predict, tick=tick, failed=failed,
        # AWS's way: the flows from exhaustion until the next ENI is available fail. The
        # control plane sees the exhaustion at the next tick and the ENI's readiness at a tick,
        # so the gap is create_delay to create_delay + 2 ticks (if ``hold`` is shorter than the
        # burst, expiring flows also free ports: not counted here).
        expected_failed_without_high_water=[
            min(left, math.floor(rate * create_delay)),
            min(left, math.ceil(rate * (create_delay + 2 * tick)) + 1)],
        first_failure_at=first_failure, last_failure_at=last_failure,
        enis=len(cp.enis),
        connections_per_eni=[by_source.get(socket.inet_aton(e.ipv4), 0)
                             for e in cp.enis.values()],
        eni_reasons=[e.reason for e in cp.enis.values()],
        eni_ready_at=[round(e.ready_at, 3) for e in cp.enis.values()],
        drops={k: v for k, v in drops.items() if v},
        counters=dict(cp.counters), engine=getattr(fx.engine, "engine", "?"))
