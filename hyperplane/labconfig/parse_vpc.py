"""Parsing ``[lab]``, ``[vpc]``, ``[[subnets]]`` and ``[[hosts]]``: the VPC's blocks, its
subnets and the machines in them (their services are :mod:`hyperplane.labconfig.parse_code`'s),
and whether the environments fit in ``lab.env_cidr``.
"""
from __future__ import annotations

from typing import Any, List, Optional

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.addressing import digest, reserved
from hyperplane.labconfig.model import (DEFAULT_ACCOUNT_ID, DEFAULT_ENV_CIDR,
                                        DEFAULT_ENV_IPV6_CIDR, RESERVED_AT_START,
                                        SUBNET_V4_PREFIX, VPC_V4_PREFIX, Host, IPNet, LabConfig,
                                        LabSettings, Subnet, Vpc)
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.parse_code import HOST_COMMAND_KEYS, host_command
from hyperplane.labconfig.parse_common import (ACCOUNT_ID, NAME, SUBNET_ID, VPC_ID, address,
                                               aws_id, check_keys, expect, network,
                                               range_overlap, unique_name)
from hyperplane.labconfig.problems import group, soft, undefined

LAB = Table("[lab]", "Where the execution environments' own links get their addresses (one "
            "/30 and one /64 per environment; Lambda's service-owned network), and the AWS "
            "account the lab pretends to be.", (
    Key("env_cidr", "string", "IPv4 CIDR the environments' /30 links come from; must not "
        "overlap any subnet", default=DEFAULT_ENV_CIDR),
    Key("env_ipv6_cidr", "string", "IPv6 CIDR the environments' /64s come from",
        default=DEFAULT_ENV_IPV6_CIDR),
    Key("account_id", "string", "the AWS account id (12 digits, quoted) in IAM ARNs and "
        "flow logs", default=DEFAULT_ACCOUNT_ID, pattern=ACCOUNT_ID.pattern),
))
VPC = Table("[vpc]", "The customer VPC: its IPv4 block and optional IPv6 block.", (
    Key("cidr", "string", f"the VPC's IPv4 block, /{VPC_V4_PREFIX[0]} to /{VPC_V4_PREFIX[1]}, "
        "inside 198.18.0.0/15", required=True),
    Key("ipv6_cidr", "string", "the VPC's IPv6 block (AWS gives a /56), inside 2001:2::/48; "
        "leave it out for an IPv4-only VPC"),
    Key("id", "string", "the VPC id (vpc- and 8 or 17 hex digits); derived from the blocks "
        "when left out", pattern=VPC_ID.pattern),
))
SUBNET = Table("[[subnets]]", "A subnet of the VPC; dual-stack when it has ipv6_cidr.", (
    Key("id", "string", "the subnet's id, e.g. subnet-a", required=True,
        pattern=SUBNET_ID.pattern),
    Key("cidr", "string", f"its IPv4 block inside vpc.cidr, /{SUBNET_V4_PREFIX[0]} to "
        f"/{SUBNET_V4_PREFIX[1]}", required=True),
    Key("ipv6_cidr", "string", "its IPv6 block: a /64 of vpc.ipv6_cidr"),
))
HOST = Table("[[hosts]]", "A machine in the VPC (a server the functions talk to), optionally "
             "running a service.", (
    Key("name", "string", "the host's name (1-32 of a-z, 0-9 and '-', starting with a "
        "letter)", required=True, pattern=NAME.pattern),
    Key("subnet", "string", "the id of the subnet it sits in", required=True),
    Key("ipv4", "string", "a fixed IPv4 address in its subnet; default: the next free one"),
    Key("ipv6", "string", "a fixed IPv6 address in its dual-stack subnet"),
    *HOST_COMMAND_KEYS,
))


def parse_lab(t: Any) -> LabSettings:
    expect(t, dict, "lab", "write it as a [lab] table")
    with group():
        check_keys(t, "lab", LAB)
        with soft():
            account = t.get("account_id", DEFAULT_ACCOUNT_ID)
            expect(account, str, "lab.account_id", 'write the 12 digits quoted, like '
                   '"123456789012" (an account id may start with 0)')
            if not ACCOUNT_ID.match(account):
                raise LabConfigError("lab.account_id", f"{account!r} is not an AWS account id; "
                                     'write exactly 12 digits, like "123456789012"')
        with soft():
            env4 = network(t.get("env_cidr", DEFAULT_ENV_CIDR), "lab.env_cidr", 4)
            if env4.prefixlen > 30:
                raise LabConfigError("lab.env_cidr", f"{env4} is smaller than one /30; every "
                                     "execution environment needs a /30, use a prefix of /30 "
                                     "or shorter")
        with soft():
            env6 = network(t.get("env_ipv6_cidr", DEFAULT_ENV_IPV6_CIDR), "lab.env_ipv6_cidr", 6)
            if env6.prefixlen > 64:
                raise LabConfigError("lab.env_ipv6_cidr", f"{env6} is smaller than one /64; "
                                     "every execution environment needs a /64, use a prefix of "
                                     "/64 or shorter")
    return LabSettings(env_cidr=env4, env_ipv6_cidr=env6, account_id=account)


def parse_vpc(t: Any) -> Vpc:
    expect(t, dict, "vpc", "write it as a [vpc] table")
    with group():
        check_keys(t, "vpc", VPC)
        with soft():
            cidr = network(t["cidr"], "vpc.cidr", 4)
            lo, hi = VPC_V4_PREFIX
            if not lo <= cidr.prefixlen <= hi:
                raise LabConfigError("vpc.cidr", f"{cidr}: an AWS VPC's IPv4 block is between "
                                     f"/{lo} and /{hi}; pick a prefix length in that range")
        ipv6 = None
        with soft():
            if "ipv6_cidr" in t:
                ipv6 = network(t["ipv6_cidr"], "vpc.ipv6_cidr", 6)
                if ipv6.prefixlen > 64:
                    raise LabConfigError("vpc.ipv6_cidr", f"{ipv6} cannot hold a /64 subnet; "
                                         "AWS gives a VPC a /56, use a prefix of /64 or shorter")
        with soft():
            vpc_id = aws_id(t["id"], "vpc.id", VPC_ID, "vpc", "a VPC") if "id" in t else None
    if vpc_id is None:  # derived from the blocks, so IAM conditions on lambda:VpcIds see a stable id
        vpc_id = "vpc-" + digest("vpc", str(cidr), str(ipv6 or "")).hex()[:17]
    return Vpc(cidr=cidr, ipv6_cidr=ipv6, id=vpc_id)


def parse_subnets(tables, vpc: Vpc, lab: LabSettings) -> List[Subnet]:
    subnets: List[Subnet] = []
    for i, t in enumerate(tables):
        f = f"subnets[{i}]"
        with soft(defines=("subnet", t.get("id"))) as item:
            check_keys(t, f, SUBNET)
            with soft():
                sid = expect(t["id"], str, f"{f}.id", 'like "subnet-a"')
                if not SUBNET_ID.match(sid):
                    raise LabConfigError(f"{f}.id", f"{sid!r} is not a subnet id; write 'subnet-' "
                                         "followed by lower-case letters, digits or '-' "
                                         "(subnet-a)")
                for other in subnets:
                    if other.id == sid:
                        raise LabConfigError(f"{f}.id", f"duplicate subnet id {sid!r}; every "
                                             "subnet needs its own id")
            with soft():
                cidr = _subnet_cidr(t["cidr"], f"{f}.cidr", vpc, lab)
            with soft():
                ipv6 = _subnet_ipv6(t, f, vpc, lab)
            item.check()
            for j, other in enumerate(subnets):
                if cidr.overlaps(other.cidr):
                    raise LabConfigError(f"{f}.cidr", f"{cidr} overlaps subnets[{j}] "
                                         f"({other.id}, {other.cidr}); subnets of a VPC must "
                                         "not overlap")
                if ipv6 is not None and other.ipv6_cidr is not None and \
                        ipv6 == other.ipv6_cidr:
                    raise LabConfigError(f"{f}.ipv6_cidr", f"{ipv6} is already used by "
                                         f"subnets[{j}] ({other.id}); give each subnet its own "
                                         "/64")
            subnets.append(Subnet(id=sid, cidr=cidr, ipv6_cidr=ipv6))
    return subnets


def _subnet_cidr(value: Any, field: str, vpc: Vpc, lab: LabSettings) -> IPNet:
    cidr = network(value, field, 4)
    lo, hi = SUBNET_V4_PREFIX
    if not lo <= cidr.prefixlen <= hi:
        raise LabConfigError(field, f"{cidr}: AWS subnets are between /{lo} and "
                             f"/{hi}; pick a prefix length in that range")
    if not cidr.subnet_of(vpc.cidr):
        raise LabConfigError(field, f"{cidr} is not inside vpc.cidr {vpc.cidr}; a "
                             "subnet must be carved out of its VPC's block")
    if range_overlap(cidr, lab.env_cidr):
        raise LabConfigError(field, f"{cidr} overlaps lab.env_cidr "
                             f"{lab.env_cidr} (the execution environments' links); move "
                             "the subnet or set [lab] env_cidr to another range")
    return cidr


def _subnet_ipv6(t, f: str, vpc: Vpc, lab: LabSettings) -> Optional[IPNet]:
    if "ipv6_cidr" not in t:
        return None
    ipv6 = network(t["ipv6_cidr"], f"{f}.ipv6_cidr", 6)
    if vpc.ipv6_cidr is None:
        raise LabConfigError(f"{f}.ipv6_cidr", "the VPC has no IPv6 block; add "
                             "ipv6_cidr under [vpc] (e.g. \"2001:2::/56\") or remove "
                             "this subnet's ipv6_cidr")
    if ipv6.prefixlen != 64:
        raise LabConfigError(f"{f}.ipv6_cidr", f"{ipv6}: an AWS subnet's IPv6 block is "
                             "always a /64; use a /64 of vpc.ipv6_cidr")
    if not ipv6.subnet_of(vpc.ipv6_cidr):
        raise LabConfigError(f"{f}.ipv6_cidr", f"{ipv6} is not inside vpc.ipv6_cidr "
                             f"{vpc.ipv6_cidr}; use a /64 of the VPC's IPv6 block")
    if range_overlap(ipv6, lab.env_ipv6_cidr):
        raise LabConfigError(f"{f}.ipv6_cidr", f"{ipv6} overlaps lab.env_ipv6_cidr "
                             f"{lab.env_ipv6_cidr}; move the subnet or set [lab] "
                             "env_ipv6_cidr to another range")
    return ipv6


def parse_hosts(tables, subnets: List[Subnet]) -> List[Host]:
    by_id = {s.id: s for s in subnets}
    known_ids = ", ".join(by_id) or "(none defined)"
    hosts: List[Host] = []
    for i, t in enumerate(tables):
        f = f"hosts[{i}]"
        with soft(defines=("host", t.get("name"))) as item:
            check_keys(t, f, HOST)
            with soft():
                name = unique_name(t["name"], f"{f}.name", "host", "server",
                                   [h.name for h in hosts])
            ipv4 = ipv6 = None
            with soft():
                sid = expect(t["subnet"], str, f"{f}.subnet", 'like "subnet-a"')
                if sid not in by_id:
                    undefined("subnet", sid, LabConfigError(
                        f"{f}.subnet", f"subnet {sid!r} is not defined; define it under "
                        f"[[subnets]] or use one of: {known_ids}"))
                subnet = by_id[sid]
                if "ipv4" in t:
                    ipv4 = address(t["ipv4"], f"{f}.ipv4", 4)
                    _check_fixed(ipv4, subnet.cidr, sid, f"{f}.ipv4", [(j, h.ipv4) for j, h in
                                                                        enumerate(hosts)])
                if "ipv6" in t:
                    if not subnet.dual_stack:
                        raise LabConfigError(f"{f}.ipv6", f"subnet {sid!r} has no IPv6 block; "
                                             "remove ipv6 or give the subnet an ipv6_cidr")
                    ipv6 = address(t["ipv6"], f"{f}.ipv6", 6)
                    _check_fixed(ipv6, subnet.ipv6_cidr, sid, f"{f}.ipv6",
                                 [(j, h.ipv6) for j, h in enumerate(hosts)])
            with soft():
                command, env = host_command(t, f)
            item.check()
            hosts.append(Host(name=name, subnet=sid, ipv4=ipv4, ipv6=ipv6, command=command,
                              environment=env))
    return hosts


def _check_fixed(addr, net: IPNet, sid: str, field: str, taken) -> None:
    if addr not in net:
        raise LabConfigError(field, f"{addr} is outside its subnet {sid} ({net}); pick an "
                             "address inside it or leave the field out to get one assigned")
    if reserved(net, addr):
        first = net.network_address + RESERVED_AT_START
        raise LabConfigError(field, f"{addr} is reserved: AWS reserves the first four and the "
                             f"last address of every subnet; use {first} or later (and not "
                             f"{net.broadcast_address})")
    for j, other in taken:
        if other == addr:
            raise LabConfigError(field, f"{addr} is already hosts[{j}]'s address; give each "
                                 "host its own address or leave the field out")


def check_env_capacity(config: LabConfig) -> None:
    count = sum(len(fn.environments) for fn in config.functions)
    env4 = config.lab.env_cidr
    fits4 = 2 ** (30 - env4.prefixlen)
    if count > fits4:
        raise LabConfigError("lab.env_cidr", f"{env4} holds {fits4} execution environments "
                             f"(one /30 each) but the functions have {count}; use a shorter "
                             "prefix or fewer environments")
    if config.vpc.ipv6_cidr is None:
        return  # no IPv6 anywhere: the environments get no /64
    env6 = config.lab.env_ipv6_cidr
    fits6 = 2 ** (64 - env6.prefixlen)
    if count > fits6:
        raise LabConfigError("lab.env_ipv6_cidr", f"{env6} holds {fits6} execution "
                             f"environments (one /64 each) but the functions have {count} (in a "
                             "VPC with IPv6 every environment gets a /64, whether or not its "
                             "function allows IPv6 yet); use a shorter prefix")
