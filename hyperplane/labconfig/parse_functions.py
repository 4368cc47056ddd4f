"""Parsing ``[[functions]]`` (Lambda's ``VpcConfig`` and its limits; the code they run is
:mod:`hyperplane.labconfig.parse_code`'s) and ``[iam]``: the
policies are read and checked by :mod:`hyperplane.labconfig.iam`, here they are tied to the
functions' ``lambda:CreateFunction`` calls.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from hyperplane.errors import LabConfigError
from hyperplane.labconfig import iam
from hyperplane.labconfig.model import (ATTACH_KINDS, MAX_SECURITY_GROUPS, MAX_SUBNET_IDS,
                                        Function, FunctionVpcConfig, LabConfig, SecurityGroup,
                                        Subnet)
from hyperplane.labconfig.parse_code import FUNCTION_CODE_KEYS, parse_function_code
from hyperplane.labconfig.parse_common import (SG_ID, check_keys, did_you_mean, expect,
                                               string_list, unique_name)


def parse_functions(tables, subnets: List[Subnet], groups: List[SecurityGroup],
                    iam: Optional[Dict[str, Any]], base_dir: str) -> List[Function]:
    """``base_dir``: the folder a relative ``code`` path is taken from."""
    by_id = {s.id: s for s in subnets}
    known_ids = ", ".join(by_id) or "(none defined)"
    sg_ids = [g.id for g in groups]
    roles = list((iam or {}).get("roles") or {})
    functions: List[Function] = []
    for i, t in enumerate(tables):
        f = f"functions[{i}]"
        check_keys(t, f, ["name", "environments", "vpc_config", "role", *FUNCTION_CODE_KEYS],
                   required=["name", "environments"])
        name = unique_name(t["name"], f"{f}.name", "function", "fn-a",
                           [fn.name for fn in functions])
        envs = string_list(t["environments"], f"{f}.environments", '["tap", "veth"]')
        if not envs:
            raise LabConfigError(f"{f}.environments", "empty; list one entry per execution "
                                 'environment, each "tap" or "veth" (e.g. ["tap"])')
        for j, kind in enumerate(envs):
            if kind not in ATTACH_KINDS:
                raise LabConfigError(f"{f}.environments[{j}]", f"{kind!r} is not an attach "
                                     'kind; use "tap" or "veth"')
        role = None
        if "role" in t:
            role = expect(t["role"], str, f"{f}.role", 'the name of a role under [iam.roles], '
                          'like "lambda-vpc"')
            if role not in roles:
                where = (f"define it under [iam.roles] or use one of: {', '.join(roles)}"
                         if roles else "define it under [iam.roles] (the config has no roles)")
                raise LabConfigError(f"{f}.role", "InvalidParameterValueException: The role "
                                     f"defined for the function cannot be assumed by Lambda: "
                                     f"role {role!r} does not exist{did_you_mean(role, roles)}; "
                                     + where)
        code = parse_function_code(t, f, base_dir)
        if "vpc_config" not in t:  # a function outside any VPC: no ENI, no VPC access
            functions.append(Function(name=name, environments=tuple(envs), vpc_config=None,
                                      role=role, **code))
            continue

        vf = f"{f}.vpc_config"
        vc = expect(t["vpc_config"], dict, vf, "write it as a [functions.vpc_config] table")
        check_keys(vc, vf, ["subnet_ids", "security_group_ids", "ipv6_allowed_for_dual_stack"],
                   required=["subnet_ids", "security_group_ids"])
        subnet_ids = string_list(vc["subnet_ids"], f"{vf}.subnet_ids", '["subnet-a"]')
        if not subnet_ids:
            raise LabConfigError(f"{vf}.subnet_ids", "empty; a VPC-attached function needs at "
                                 f"least one subnet (one of: {known_ids})")
        if len(subnet_ids) > MAX_SUBNET_IDS:
            raise LabConfigError(f"{vf}.subnet_ids", f"{len(subnet_ids)} subnets; Lambda allows "
                                 f"at most {MAX_SUBNET_IDS}, remove some")
        for j, sid in enumerate(subnet_ids):
            if sid not in by_id:
                raise LabConfigError(f"{vf}.subnet_ids[{j}]", f"subnet {sid!r} is not defined; "
                                     "define it under [[subnets]] or use one of: "
                                     f"{known_ids}")
            if sid in subnet_ids[:j]:
                raise LabConfigError(f"{vf}.subnet_ids[{j}]", f"subnet {sid!r} is listed twice; "
                                     "list each subnet once")
        sgs = string_list(vc["security_group_ids"], f"{vf}.security_group_ids",
                          '["sg-0a1b2c3d"]')
        if not 1 <= len(sgs) <= MAX_SECURITY_GROUPS:
            raise LabConfigError(f"{vf}.security_group_ids", f"{len(sgs)} security groups; "
                                 f"list 1 to {MAX_SECURITY_GROUPS} (Lambda's limit is "
                                 f"{MAX_SECURITY_GROUPS})")
        for j, sg in enumerate(sgs):
            if not SG_ID.match(sg):
                raise LabConfigError(f"{vf}.security_group_ids[{j}]", f"{sg!r} is not a "
                                     "security group id; write 'sg-' followed by lower-case "
                                     "letters or digits (sg-0a1b2c3d)")
            if sg in sgs[:j]:
                raise LabConfigError(f"{vf}.security_group_ids[{j}]", f"{sg!r} is listed twice; "
                                     "list each security group once")
            if sg not in sg_ids:
                where = (f" or use one of: {', '.join(sg_ids)}" if sg_ids
                         else " (the config defines none yet)")
                raise LabConfigError(f"{vf}.security_group_ids[{j}]", "InvalidParameterValue"
                                     "Exception: Error occurred while DescribeSecurityGroups. "
                                     f"EC2 Error Code: InvalidGroup.NotFound. The security group "
                                     f"{sg!r} does not exist{did_you_mean(sg, sg_ids)}; define "
                                     f"it as a [[security_groups]] table{where}")
        ipv6_ok = vc.get("ipv6_allowed_for_dual_stack", False)
        expect(ipv6_ok, bool, f"{vf}.ipv6_allowed_for_dual_stack", "write true or false")
        if ipv6_ok:
            for j, sid in enumerate(subnet_ids):
                if not by_id[sid].dual_stack:
                    raise LabConfigError(
                        f"{vf}.ipv6_allowed_for_dual_stack",
                        "InvalidParameterValueException: Ipv6AllowedForDualStack is true but "
                        f"subnet {sid!r} ({vf}.subnet_ids[{j}]) is not dual-stack: it has no "
                        "IPv6 CIDR block. Give that subnet an ipv6_cidr, remove it from "
                        "subnet_ids, or set ipv6_allowed_for_dual_stack = false")
        functions.append(Function(
            name=name, environments=tuple(envs),
            vpc_config=FunctionVpcConfig(subnet_ids=tuple(subnet_ids),
                                         security_group_ids=tuple(sgs),
                                         ipv6_allowed_for_dual_stack=ipv6_ok), role=role,
            **code))
    return functions


# ---- IAM (hyperplane.labconfig.iam evaluates the policies) -------------------------------------
def parse_iam(doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if "iam" not in doc:
        return None
    try:
        return iam.parse_iam_section(doc["iam"], field="iam")
    except iam.IamPolicyError as e:
        raise LabConfigError(e.field, e.message) from None


def check_iam(config: LabConfig) -> None:
    """Every function is created with ``lambda:CreateFunction``, checked as AWS checks it: the
    identity policies must allow the call, seeing the lambda:VpcIds/SubnetIds/SecurityGroupIds
    condition keys of its VpcConfig (none for a function without one, which is how a
    ``Null: lambda:VpcIds`` deny forces every function into a VPC), and a function's execution
    role, when it names one, must grant the ec2 network-interface permissions."""
    if config.iam is None:
        return
    roles = config.iam.get("roles") or {}
    for i, fn in enumerate(config.functions):
        vc = fn.vpc_config
        try:
            iam.check_vpc_config(
                action="lambda:CreateFunction", function_name=fn.name,
                account_id=config.lab.account_id, vpc_id=config.vpc.id if vc else None,
                subnet_ids=list(vc.subnet_ids) if vc else [],
                security_group_ids=list(vc.security_group_ids) if vc else [],
                identity_policies=config.iam.get("identity_policies"), role_name=fn.role,
                role_policies=roles.get(fn.role) if fn.role else None)
        except iam.AccessDenied as e:
            raise LabConfigError(f"functions[{i}].vpc_config" if vc else f"functions[{i}]",
                                 str(e)) from None
        except iam.IamPolicyError as e:
            raise LabConfigError(e.field, e.message) from None
