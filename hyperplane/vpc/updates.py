"""``UpdateFunctionConfiguration``: the part of
:class:`~hyperplane.vpc.control_plane.ControlPlane` that changes a function's VpcConfig, with
AWS's validation of a VpcConfig and the IAM checks (:mod:`hyperplane.labconfig.iam`).

An update of an Active function keeps its old ENIs until the new keys have available ones (the
control plane's tick then switches the environments over); removing the VpcConfig detaches the
function at once (see the theory of operation in :mod:`hyperplane.vpc.control_plane`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set

from hyperplane.labconfig import MAX_SECURITY_GROUPS, MAX_SUBNET_IDS, Plan
from hyperplane.labconfig.iam import AccessDenied, check_vpc_config
from hyperplane.vpc.state import ControlPlaneError, FunctionState, PendingUpdate, key_of

UPDATE_ACTION = "lambda:UpdateFunctionConfiguration"


class ConfigUpdates:
    """Lambda ``UpdateFunctionConfiguration(VpcConfig=...)`` (a mixin of
    :class:`~hyperplane.vpc.control_plane.ControlPlane`)."""

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


def _id_list(value: Any, field: str) -> List[str]:
    if isinstance(value, str) or not all(isinstance(x, str) for x in value):
        raise ControlPlaneError("ValidationException", f"{field} must be a list of id "
                                f"strings, not {value!r}")
    return list(value)


def _known_security_groups(plan: Plan) -> Set[str]:
    known = {g.id for g in plan.security_groups}
    known.update(g for e in plan.enis for g in e.security_groups)
    known.update(g for f in plan.functions for g in f.security_group_ids)
    return known
