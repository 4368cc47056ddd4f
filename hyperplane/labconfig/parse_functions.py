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
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.parse_code import FUNCTION_CODE_KEYS, parse_function_code
from hyperplane.labconfig.parse_common import (NAME, SG_ID, check_keys, did_you_mean, expect,
                                               string_list, unique_name)
from hyperplane.labconfig.problems import group, soft, undefined

VPC_CONFIG = Table("[functions.vpc_config]", "Lambda's VpcConfig: the function's subnets and "
                   "security groups (one Hyperplane ENI per subnet and set of groups).", (
    Key("subnet_ids", "array", f"1 to {MAX_SUBNET_IDS} subnet ids the environments are spread "
        "over", required=True, items="string", min_items=1, max_items=MAX_SUBNET_IDS),
    Key("security_group_ids", "array", f"1 to {MAX_SECURITY_GROUPS} security group ids",
        required=True, items=Key("security_group_id", "string", "a security group id",
                                 pattern=SG_ID.pattern),
        min_items=1, max_items=MAX_SECURITY_GROUPS),
    Key("ipv6_allowed_for_dual_stack", "boolean", "let the environments' IPv6 out (every "
        "subnet must be dual-stack)", default=False),
))
FUNCTION = Table("[[functions]]", "A Lambda function: its execution environments, its "
                 "VpcConfig and what it runs.", (
    Key("name", "string", "the function's name (1-32 of a-z, 0-9 and '-', starting with a "
        "letter)", required=True, pattern=NAME.pattern),
    Key("environments", "array", "one entry per execution environment: how it is attached to "
        "the data path, a TAP device or a veth pair", required=True, min_items=1,
        items=Key("environment", "string", "an attach kind", enum=ATTACH_KINDS)),
    Key("vpc_config", "table", "absent: a function outside any VPC (no ENI)",
        table=VPC_CONFIG),
    Key("role", "string", "the name of an execution role under [[iam.roles]]"),
    *FUNCTION_CODE_KEYS,
))
def parse_functions(tables, subnets: List[Subnet], groups: List[SecurityGroup],
                    iam: Optional[Dict[str, Any]], base_dir: str) -> List[Function]:
    """``base_dir``: the folder a relative ``code`` path is taken from."""
    by_id = {s.id: s for s in subnets}
    sg_ids = [g.id for g in groups]
    roles = list((iam or {}).get("roles") or {})
    functions: List[Function] = []
    for i, t in enumerate(tables):
        f = f"functions[{i}]"
        with soft(defines=("function", t.get("name"))) as item:
            check_keys(t, f, FUNCTION)
            with soft():
                name = unique_name(t["name"], f"{f}.name", "function", "fn-a",
                                   [fn.name for fn in functions])
            with soft():
                envs = _environments(t["environments"], f"{f}.environments")
            role = None
            with soft():
                if "role" in t:
                    role = _role(t["role"], f"{f}.role", roles)
            with soft():
                code = parse_function_code(t, f, base_dir)
            vpc_config = None
            with soft():
                if "vpc_config" in t:  # absent: a function outside any VPC (no ENI)
                    vpc_config = _vpc_config(t["vpc_config"], f"{f}.vpc_config", by_id, sg_ids)
            item.check()
            functions.append(Function(name=name, environments=tuple(envs),
                                      vpc_config=vpc_config, role=role, **code))
    return functions


def _environments(value: Any, field: str) -> List[str]:
    envs = string_list(value, field, '["tap", "veth"]')
    if not envs:
        raise LabConfigError(field, "empty; list one entry per execution "
                             'environment, each "tap" or "veth" (e.g. ["tap"])')
    with group():
        for j, kind in enumerate(envs):
            with soft():
                if kind not in ATTACH_KINDS:
                    raise LabConfigError(f"{field}[{j}]", f"{kind!r} is not an attach "
                                         'kind; use "tap" or "veth"')
    return envs


def _role(value: Any, field: str, roles: List[str]) -> str:
    role = expect(value, str, field, 'the name of a role under [iam.roles], like "lambda-vpc"')
    if role not in roles:
        where = (f"define it under [iam.roles] or use one of: {', '.join(roles)}"
                 if roles else "define it under [iam.roles] (the config has no roles)")
        undefined("role", role, LabConfigError(
            field, "InvalidParameterValueException: The role defined for the function cannot "
            f"be assumed by Lambda: role {role!r} does not exist{did_you_mean(role, roles)}; "
            + where))
    return role


def _vpc_config(value: Any, vf: str, by_id: Dict[str, Subnet],
                sg_ids: List[str]) -> FunctionVpcConfig:
    known_ids = ", ".join(by_id) or "(none defined)"
    vc = expect(value, dict, vf, "write it as a [functions.vpc_config] table")
    with group():
        check_keys(vc, vf, VPC_CONFIG)
        with soft() as subnets_ok:
            subnet_ids = string_list(vc["subnet_ids"], f"{vf}.subnet_ids", '["subnet-a"]')
            if not subnet_ids:
                raise LabConfigError(f"{vf}.subnet_ids", "empty; a VPC-attached function needs "
                                     f"at least one subnet (one of: {known_ids})")
            if len(subnet_ids) > MAX_SUBNET_IDS:
                raise LabConfigError(f"{vf}.subnet_ids", f"{len(subnet_ids)} subnets; Lambda "
                                     f"allows at most {MAX_SUBNET_IDS}, remove some")
            for j, sid in enumerate(subnet_ids):
                with soft():
                    if sid not in by_id:
                        undefined("subnet", sid, LabConfigError(
                            f"{vf}.subnet_ids[{j}]", f"subnet {sid!r} is not defined; define it "
                            f"under [[subnets]] or use one of: {known_ids}"))
                    if sid in subnet_ids[:j]:
                        raise LabConfigError(f"{vf}.subnet_ids[{j}]", f"subnet {sid!r} is "
                                             "listed twice; list each subnet once")
        with soft():
            sgs = _security_group_ids(vc["security_group_ids"], f"{vf}.security_group_ids",
                                      sg_ids)
        with soft():
            ipv6_ok = vc.get("ipv6_allowed_for_dual_stack", False)
            expect(ipv6_ok, bool, f"{vf}.ipv6_allowed_for_dual_stack", "write true or false")
            if ipv6_ok and not subnets_ok.failed:
                for j, sid in enumerate(subnet_ids):
                    if not by_id[sid].dual_stack:
                        raise LabConfigError(
                            f"{vf}.ipv6_allowed_for_dual_stack",
                            "InvalidParameterValueException: Ipv6AllowedForDualStack is true "
                            f"but subnet {sid!r} ({vf}.subnet_ids[{j}]) is not dual-stack: it "
                            "has no IPv6 CIDR block. Give that subnet an ipv6_cidr, remove it "
                            "from subnet_ids, or set ipv6_allowed_for_dual_stack = false")
    return FunctionVpcConfig(subnet_ids=tuple(subnet_ids), security_group_ids=tuple(sgs),
                             ipv6_allowed_for_dual_stack=ipv6_ok)


def _security_group_ids(value: Any, field: str, sg_ids: List[str]) -> List[str]:
    sgs = string_list(value, field, '["sg-0a1b2c3d"]')
    if not 1 <= len(sgs) <= MAX_SECURITY_GROUPS:
        raise LabConfigError(field, f"{len(sgs)} security groups; list 1 to "
                             f"{MAX_SECURITY_GROUPS} (Lambda's limit is {MAX_SECURITY_GROUPS})")
    with group():
        for j, sg in enumerate(sgs):
            with soft():
                if not SG_ID.match(sg):
                    raise LabConfigError(f"{field}[{j}]", f"{sg!r} is not a security group "
                                         "id; write 'sg-' followed by lower-case letters or "
                                         "digits (sg-0a1b2c3d)")
                if sg in sgs[:j]:
                    raise LabConfigError(f"{field}[{j}]", f"{sg!r} is listed twice; list each "
                                         "security group once")
                if sg not in sg_ids:
                    where = (f" or use one of: {', '.join(sg_ids)}" if sg_ids
                             else " (the config defines none yet)")
                    undefined("security_group", sg, LabConfigError(
                        f"{field}[{j}]", "InvalidParameterValueException: Error occurred while "
                        "DescribeSecurityGroups. EC2 Error Code: InvalidGroup.NotFound. The "
                        f"security group {sg!r} does not exist{did_you_mean(sg, sg_ids)}; "
                        f"define it as a [[security_groups]] table{where}"))
    return sgs


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
