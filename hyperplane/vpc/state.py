"""The control plane's vocabulary: the key of an ENI, the state of ENIs and functions, the
:class:`Effects` the data path implements, and the error an API call is refused with.

ENI states follow EC2's words: ``pending`` (being created), ``available`` (exists, no function
on it), ``in-use`` (a function uses its key), ``deleting`` (retired: takes no new connections but
still carries old ones until it goes), ``deleted``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Protocol, Tuple

from hyperplane.labconfig import FunctionPlan, Plan

#: (subnet id, sorted security group ids): the identity of a Hyperplane ENI.
Key = Tuple[str, Tuple[str, ...]]

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


def function_plans(plan: Plan) -> List[FunctionPlan]:
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
