"""The Lambda/VPC control plane: which Hyperplane ENIs exist, when, and who uses them.

A pure, clock-driven state machine: no sockets, no namespaces, no reading of clocks. Every
method takes ``now`` (seconds of the lab clock) and tells the data path what changed through an
:class:`Effects` object (the daemon in a running lab, a recorder in the tests, a small in-memory
driver in :func:`hyperplane.vpc.burst.simulate_burst`).

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
  key's ENIs in order. AWS adds another ENI only when they are all exhausted; this control plane
  starts the next one *before* that (:mod:`hyperplane.vpc.scaleout` says when).
- **Use** is an invocation or a packet from one of the function's environments; packets the
  data path counted since the previous tick are dated at that tick, so a jump of the lab clock
  (``hyperplane clock advance``) counts as idle time.

**Restart.** :meth:`ControlPlane.save` gives the state that matters across a restart of the
data path, and ``ControlPlane(plan, effects, now, restored=that)`` comes back in that state
(:mod:`hyperplane.vpc.saved`).

ENI states follow EC2's words (:mod:`hyperplane.vpc.state` lists them).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from hyperplane.labconfig import LifecyclePlan, Plan, bare, eni_id
from hyperplane.vpc.saved import SaveAndRestore
from hyperplane.vpc.scaleout import Rate, ScaleOut
from hyperplane.vpc.state import (COUNTERS, ControlPlaneError, Effects, EniState, FunctionState,
                                  Key, function_plans, key_of)
from hyperplane.vpc.updates import ConfigUpdates

REGION = "us-east-1"


def _spread(envs: Sequence[str], subnet_ids: Sequence[str],
            sgs: Sequence[str]) -> Dict[str, Optional[Key]]:
    """Environments round-robin over the function's subnets (None when not attached)."""
    if not subnet_ids:
        return {e: None for e in envs}
    return {e: key_of(subnet_ids[i % len(subnet_ids)], sgs) for i, e in enumerate(envs)}


class ControlPlane(SaveAndRestore, ScaleOut, ConfigUpdates):
    """See the module docstring (save and restore, scale-out and UpdateFunctionConfiguration
    come from the mixins of :mod:`hyperplane.vpc.saved`, :mod:`hyperplane.vpc.scaleout` and
    :mod:`hyperplane.vpc.updates`). ``plan`` is a :class:`hyperplane.labconfig.Plan`; its
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
        self._rates: Dict[Tuple[Key, int, str], Rate] = {}
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

        for fp in function_plans(plan):
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

    def _reclaim_at(self, key: Key) -> Optional[float]:
        """When the key's ENIs are reclaimed unless something uses them first (lab clock):
        once the last of the functions on the key has been idle ``inactive_after``
        (``_detect_idle``). None when one of them cannot go idle now (Pending, or an update in
        progress) or none uses the key."""
        last = None
        for fn in self.functions.values():
            u = fn.pending_update
            moving = u is not None and key in [key_of(s, u.security_group_ids)
                                               for s in u.subnet_ids]
            if not (moving or (fn.state in ("Active", "Pending") and key in fn.keys())):
                continue
            if fn.state != "Active" or u is not None:
                return None
            last = fn.last_used if last is None else max(last, fn.last_used)
        return None if last is None else last + self.lifecycle.inactive_after

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
    # ---- observation ----------------------------------------------------------------------------
    def eni_list(self, now: float, *, include_deleted: bool = True) -> List[Dict[str, Any]]:
        """Every ENI (``hyperplane eni list``): times in lab-clock seconds, the functions
        using it and, from the last tick, its pool fill per ``ipv4/tcp``-style pool.
        ``reclaim_at``: when an in-use ENI is reclaimed if its functions stay idle until then
        (Lambda's idle reclaim, ``lifecycle.inactive_after``), None when that cannot happen
        yet; ``delete_at``: when a ``deleting`` one goes."""
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
                delete_at=e.delete_at,
                reclaim_at=self._reclaim_at(e.key) if e.state == "in-use" else None,
                pools=pools))
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


def _free_address(plan: Plan, subnet: str, family: int, taken: Sequence[str]) -> Optional[str]:
    return plan.free_address(subnet, family, taken=taken)

