"""Parsing ``[[security_groups]]`` (stateful, egress rules) and ``[[network_acls]]``
(stateless, numbered rules both ways): protocols and ports, with AWS's quotas.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.model import (MAX_NACL_RULES, MAX_SG_RULES, NACL_RULE_NUMBERS,
                                        NetworkAcl, RulePlan, SecurityGroup, Subnet, Vpc)
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.parse_common import (ACL_ID, SG_ID, associations, check_keys, expect,
                                               rule_network)
from hyperplane.labconfig.problems import group, soft

_PORT_PROTOCOLS = ("tcp", "udp")
_SG_PROTOCOLS = ("tcp", "udp", "all")
_NACL_PROTOCOLS = ("tcp", "udp", "icmp", "all")


def _port(name: str) -> Key:
    return Key(name, "integer", f"{name.replace('_', ' ')} of the range (tcp and udp only)",
               minimum=0, maximum=65535)


def _protocol_key(allowed) -> Key:
    return Key("protocol", "string", '"-1" is AWS\'s spelling of "all"', required=True,
               enum=(*allowed, "-1"))


SG_RULE = Table("security group egress rule", "One stateful egress rule.", (
    _protocol_key(_SG_PROTOCOLS), _port("from_port"), _port("to_port"),
    Key("cidr", "string", "the destination network, IPv4 or IPv6 (any range, e.g. 0.0.0.0/0)",
        required=True),
    Key("description", "string", "what the rule is for"),
))
SECURITY_GROUP = Table("[[security_groups]]", "A security group: for Lambda only its egress "
                       "rules matter, and they are stateful.", (
    Key("id", "string", "the group's id, e.g. sg-0a1b2c3d", required=True,
        pattern=SG_ID.pattern),
    Key("description", "string", "what the group is for"),
    Key("egress", "array", "egress rules; absent: AWS's default (all traffic out); [] allows "
        "nothing", items=SG_RULE, max_items=MAX_SG_RULES),
))
NACL_RULE = Table("network ACL rule", "One numbered, stateless rule; the lowest matching "
                  "number decides.", (
    Key("rule_number", "integer", "the rule's number (unique per direction)", required=True,
        minimum=NACL_RULE_NUMBERS[0], maximum=NACL_RULE_NUMBERS[1]),
    _protocol_key(_NACL_PROTOCOLS),
    Key("action", "string", "allow or deny", required=True, enum=("allow", "deny")),
    Key("cidr", "string", "the network matched (the source inbound, the destination "
        "outbound)", required=True),
    _port("from_port"), _port("to_port"),
))
NETWORK_ACL = Table("[[network_acls]]", "A network ACL: stateless, numbered rules checked both "
                    "ways at the edge of its subnets.", (
    Key("id", "string", "the ACL's id, e.g. acl-0a1b2c3d", required=True,
        pattern=ACL_ID.pattern),
    Key("subnet_ids", "array", "the subnets using it (a subnet has one ACL; subnets in none "
        "use the default ACL, which allows all)", items="string"),
    Key("ingress", "array", "inbound rules", items=NACL_RULE, max_items=MAX_NACL_RULES),
    Key("egress", "array", "outbound rules", items=NACL_RULE, max_items=MAX_NACL_RULES),
))


def _protocol(value: Any, field: str, allowed: Sequence[str]) -> str:
    """A rule's protocol by name; "-1" is AWS's spelling of "all"."""
    names = ", ".join(f'"{p}"' for p in allowed)
    expect(value, str, field, f"write one of {names}")
    proto = "all" if value == "-1" else value
    if proto not in allowed:
        raise LabConfigError(field, f"{value!r} is not a protocol here; use one of {names} "
                             '("-1" also means "all", as in the AWS API)')
    return proto


def _ports(t: Dict[str, Any], f: str, protocol: str) -> Tuple[int, int]:
    """``from_port``/``to_port``: required for tcp/udp (0..65535, from <= to). Refused for the
    protocols that have no ports ("all", "icmp") rather than silently ignored: a port range
    there would suggest a restriction that does not exist."""
    if protocol not in _PORT_PROTOCOLS:
        for key in ("from_port", "to_port"):
            if key in t:
                raise LabConfigError(f"{f}.{key}", f"protocol {protocol!r} matches every port; "
                                     "remove from_port/to_port, or use protocol \"tcp\" or "
                                     "\"udp\" to restrict ports")
        return 0, 65535
    ports = []
    for key in ("from_port", "to_port"):
        if key not in t:
            raise LabConfigError(f"{f}.{key}", f"missing; a {protocol} rule needs from_port and "
                                 "to_port (0..65535, e.g. from_port = 443, to_port = 443)")
        port = expect(t[key], int, f"{f}.{key}", "write a port number 0..65535")
        if not 0 <= port <= 65535:
            raise LabConfigError(f"{f}.{key}", f"{port} is not a port; use 0..65535")
        ports.append(port)
    if ports[0] > ports[1]:
        raise LabConfigError(f"{f}.to_port", f"{ports[1]} is below from_port {ports[0]}; a range "
                             "is from_port..to_port, so swap them")
    return ports[0], ports[1]


def _description(t: Dict[str, Any], field: str) -> str:
    return expect(t.get("description", ""), str, field, 'write it as a quoted string')


def parse_security_groups(tables, vpc: Vpc) -> List[SecurityGroup]:
    """AWS gives a new security group one egress rule allowing all IPv4 traffic, plus one for
    all IPv6 traffic when the VPC has an IPv6 block; an absent ``egress`` key means those."""
    groups: List[SecurityGroup] = []
    for i, t in enumerate(tables):
        f = f"security_groups[{i}]"
        with soft(defines=("security_group", t.get("id"))) as item:
            check_keys(t, f, SECURITY_GROUP)
            with soft():
                sg_id = expect(t["id"], str, f"{f}.id", 'like "sg-0a1b2c3d"')
                if not SG_ID.match(sg_id):
                    raise LabConfigError(f"{f}.id", f"{sg_id!r} is not a security group id; "
                                         "write 'sg-' followed by lower-case letters or digits "
                                         "(sg-0a1b2c3d)")
                for j, other in enumerate(groups):
                    if other.id == sg_id:
                        raise LabConfigError(f"{f}.id", f"duplicate security group id "
                                             f"{sg_id!r} (also security_groups[{j}]); give each "
                                             "group its own id")
            with soft():
                if "egress" not in t:
                    rules = [RulePlan(0, "allow", "all", "0.0.0.0/0")]
                    if vpc.ipv6_cidr is not None:
                        rules.append(RulePlan(0, "allow", "all", "::/0"))
                else:
                    rules = _parse_sg_rules(t["egress"], f"{f}.egress")
            with soft():
                description = _description(t, f"{f}.description")
            item.check()
            groups.append(SecurityGroup(id=sg_id, egress=tuple(rules), description=description))
    return groups


def _parse_sg_rules(value: Any, f: str) -> List[RulePlan]:
    expect(value, list, f, "write it as an array of tables, e.g. egress = [{protocol = "
           '"tcp", from_port = 443, to_port = 443, cidr = "0.0.0.0/0"}] (or [] for none)')
    if len(value) > MAX_SG_RULES:
        raise LabConfigError(f, f"{len(value)} rules; AWS allows at most {MAX_SG_RULES} egress "
                             "rules per security group (RulesPerSecurityGroupLimitExceeded): "
                             "merge port ranges or CIDRs, or split the rules over groups")
    rules: List[RulePlan] = []
    with group():   # a broken rule stops the group after every rule is checked
        for j, r in enumerate(value):
            rf = f"{f}[{j}]"
            with soft() as one:
                expect(r, dict, rf, "write each rule as a table {protocol = ..., cidr = ...}")
                check_keys(r, rf, SG_RULE)
                proto = _protocol(r["protocol"], f"{rf}.protocol", _SG_PROTOCOLS)
                lo, hi = _ports(r, rf, proto)
                cidr = rule_network(r["cidr"], f"{rf}.cidr")
                rule = RulePlan(number=0, action="allow", protocol=proto, cidr=str(cidr),
                                from_port=lo, to_port=hi,
                                description=_description(r, f"{rf}.description"))
                one.check()
                for k, other in enumerate(rules):
                    if dataclasses.replace(other, description="") == \
                            dataclasses.replace(rule, description=""):
                        raise LabConfigError(rf, f"InvalidPermission.Duplicate: the same rule as "
                                             f"{f}[{k}]; remove one of them")
                rules.append(rule)
    return rules


def parse_network_acls(tables, subnets: List[Subnet]) -> List[NetworkAcl]:
    """Network ACLs are stateless: each direction is checked on its own, rules in ascending
    number, the first match decides, and a packet matching nothing is denied (the "*" rule).
    A subnet belongs to exactly one ACL; subnets listed in none use the VPC's default ACL,
    which allows everything."""
    known = [s.id for s in subnets]
    owner: Dict[str, str] = {}
    acls: List[NetworkAcl] = []
    for i, t in enumerate(tables):
        f = f"network_acls[{i}]"
        with soft(defines=("network_acl", t.get("id"))) as item:
            check_keys(t, f, NETWORK_ACL)
            with soft():
                acl_id = expect(t["id"], str, f"{f}.id", 'like "acl-0a1b2c3d"')
                if not ACL_ID.match(acl_id):
                    raise LabConfigError(f"{f}.id", f"{acl_id!r} is not a network ACL id; write "
                                         "'acl-' followed by lower-case letters, digits or '-' "
                                         "(acl-0a1b2c3d)")
                if acl_id in [a.id for a in acls]:
                    raise LabConfigError(f"{f}.id", f"duplicate network ACL id {acl_id!r}; give "
                                         "each ACL its own id")
            with soft():
                sids = associations(t, f, known, owner, t.get("id"), "network ACL")
            directions = {}
            for direction in ("ingress", "egress"):
                with soft():
                    directions[direction] = _parse_nacl_rules(t.get(direction, []),
                                                              f"{f}.{direction}")
            item.check()
            acls.append(NetworkAcl(id=acl_id, subnet_ids=tuple(sids),
                                   ingress=directions["ingress"], egress=directions["egress"]))
    return acls


def _parse_nacl_rules(value: Any, f: str) -> Tuple[RulePlan, ...]:
    expect(value, list, f, "write it as an array of tables, e.g. [{rule_number = 100, "
           'protocol = "all", action = "allow", cidr = "0.0.0.0/0"}]')
    if len(value) > MAX_NACL_RULES:
        raise LabConfigError(f, f"{len(value)} rules; AWS allows at most {MAX_NACL_RULES} rules "
                             "per direction in a network ACL (20 unless the quota is raised)")
    rules: List[RulePlan] = []
    numbers: Dict[int, int] = {}
    with group():   # a broken rule stops the group after every rule is checked
        for j, r in enumerate(value):
            rf = f"{f}[{j}]"
            with soft() as one:
                expect(r, dict, rf, "write each rule as a table {rule_number = ..., protocol = "
                       "..., action = ..., cidr = ...}")
                check_keys(r, rf, NACL_RULE)
                with soft():
                    number = expect(r["rule_number"], int, f"{rf}.rule_number",
                                    "write an integer like 100")
                    lo, hi = NACL_RULE_NUMBERS
                    if not lo <= number <= hi:
                        raise LabConfigError(f"{rf}.rule_number", f"{number} is outside "
                                             f"{lo}..{hi}; AWS keeps 32767 and up for itself "
                                             "(the final \"*\" deny rule)")
                    if number in numbers:
                        raise LabConfigError(f"{rf}.rule_number",
                                             "NetworkAclEntryAlreadyExists: rule number "
                                             f"{number} is already used by "
                                             f"{f}[{numbers[number]}]; rule numbers are unique "
                                             "per direction, pick another (leave gaps such as "
                                             "100, 110, 120 to insert rules later)")
                    numbers[number] = j
                with soft():
                    proto = _protocol(r["protocol"], f"{rf}.protocol", _NACL_PROTOCOLS)
                    from_port, to_port = _ports(r, rf, proto)
                with soft():
                    action = expect(r["action"], str, f"{rf}.action", 'write "allow" or "deny"')
                    if action not in ("allow", "deny"):
                        raise LabConfigError(f"{rf}.action", f"{action!r} is not an action; write "
                                             "\"allow\" or \"deny\"")
                with soft():
                    cidr = rule_network(r["cidr"], f"{rf}.cidr")
                one.check()
                rules.append(RulePlan(number=number, action=action, protocol=proto, cidr=str(cidr),
                                      from_port=from_port, to_port=to_port))
    return tuple(sorted(rules, key=lambda rule: rule.number))
