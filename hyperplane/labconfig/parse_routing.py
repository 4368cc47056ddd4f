"""Parsing ``[internet]``, ``[[nat_gateways]]``, ``[[route_tables]]`` and
``[[internet_hosts]]``: the stand-in internet behind the internet gateway, NAT gateways in
public subnets, and the routes that make a subnet public or private.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.addressing import digest
from hyperplane.labconfig.model import (DEFAULT_INTERNET_CIDR, NAT_IDLE_TIMEOUT, Internet,
                                        InternetHost, LabConfig, NatGateway, RoutePlan,
                                        RouteTable, Subnet, Vpc)
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.parse_code import HOST_COMMAND_KEYS, host_command
from hyperplane.labconfig.parse_common import (IGW_ID, NAME, NAT_ID, RTB_ID, address,
                                               associations, aws_id, check_keys, did_you_mean,
                                               expect, network, rule_network, unique_name)
from hyperplane.labconfig.problems import group, soft, undefined

INTERNET = Table("[internet]", "The stand-in internet: an IPv4 block behind the VPC's internet "
                 "gateway.", (
    Key("cidr", "string", "the internet's IPv4 block (a /30 or larger, outside the VPC)",
        default=DEFAULT_INTERNET_CIDR),
    Key("gateway_id", "string", "the internet gateway's id (igw- and 8 or 17 hex digits); "
        "derived from the VPC when left out", pattern=IGW_ID.pattern),
))
NAT_GATEWAY = Table("[[nat_gateways]]", "A NAT gateway in a public subnet, translating to its "
                    "Elastic IP on the internet.", (
    Key("id", "string", "the NAT gateway's id (nat- and 8 or 17 hex digits)", required=True,
        pattern=NAT_ID.pattern),
    Key("subnet_id", "string", "the public subnet it sits in", required=True),
    Key("idle_timeout", "number", "seconds after which an idle connection is dropped",
        default=NAT_IDLE_TIMEOUT, exclusive_minimum=0),
))
ROUTE = Table("route", "A route besides the implicit local one.", (
    Key("destination", "string", "an IPv4 CIDR outside the VPC, e.g. 0.0.0.0/0", required=True),
    Key("target", "string", "a NAT gateway id (nat-...) or the internet gateway id (igw-...)",
        required=True, pattern="^(?:nat|igw)-"),
))
ROUTE_TABLE = Table("[[route_tables]]", "A route table and the subnets it is associated with "
                    "(subnets in none use the main table: only the local route).", (
    Key("id", "string", "the route table's id, e.g. rtb-private", required=True,
        pattern=RTB_ID.pattern),
    Key("subnet_ids", "array", "the subnets using it (a subnet has one route table)",
        items="string"),
    Key("routes", "array", "its routes", items=ROUTE),
))
INTERNET_HOST = Table("[[internet_hosts]]", "A machine on the internet, reachable from the VPC "
                      "only through a NAT gateway.", (
    Key("name", "string", "the host's name (1-32 of a-z, 0-9 and '-', starting with a "
        "letter)", required=True, pattern=NAME.pattern),
    Key("ipv4", "string", "a fixed address in internet.cidr; default: the next free one"),
    *HOST_COMMAND_KEYS,
))


def parse_internet(t: Any, vpc: Vpc) -> Internet:
    """The stand-in internet: an IPv4 block in the benchmark range behind an internet gateway.
    AWS attaches at most one internet gateway to a VPC, so there is one of each."""
    expect(t, dict, "internet", "write it as an [internet] table")
    check_keys(t, "internet", INTERNET)
    with group():
        with soft():
            cidr = network(t.get("cidr", DEFAULT_INTERNET_CIDR), "internet.cidr", 4)
            if cidr.prefixlen > 30:
                raise LabConfigError("internet.cidr", f"{cidr} has no room for the gateway and "
                                     "a host; use a /30 or larger block (the default is "
                                     f"{DEFAULT_INTERNET_CIDR})")
            if cidr.overlaps(vpc.cidr):
                raise LabConfigError("internet.cidr", f"{cidr} overlaps vpc.cidr {vpc.cidr}; "
                                     "the internet lies outside the VPC, pick another block "
                                     f"(the default is {DEFAULT_INTERNET_CIDR})")
        with soft():
            if "gateway_id" in t:
                gw = aws_id(t["gateway_id"], "internet.gateway_id", IGW_ID, "igw",
                            "an internet gateway")
            else:
                gw = "igw-" + digest("igw", vpc.id).hex()[:17]
    return Internet(cidr=cidr, gateway_id=gw)


def check_internet_overlap(config: LabConfig) -> None:
    """The internet block may share lab.env_cidr's range as long as no execution environment's
    /30 falls inside it (the default internet is the top /24 of the default env_cidr)."""
    if config.internet is None:
        return
    cidr = config.internet.cidr
    count = sum(len(fn.environments) for fn in config.functions)
    env4 = config.lab.env_cidr
    first, last = env4.network_address, env4.network_address + 4 * count - 1
    if cidr.overlaps(env4) and int(cidr.network_address) <= int(last) \
            and int(cidr.broadcast_address) >= int(first):
        raise LabConfigError("internet.cidr", f"{cidr} overlaps the execution environments' "
                             f"links ({first}-{last}, from lab.env_cidr {env4}); move the "
                             "internet or lab.env_cidr so they do not meet")


def parse_nat_gateways(tables, subnets: List[Subnet],
                       internet: Optional[Internet]) -> List[NatGateway]:
    known = [s.id for s in subnets]
    nats: List[NatGateway] = []
    for i, t in enumerate(tables):
        f = f"nat_gateways[{i}]"
        with soft(defines=("nat_gateway", t.get("id"))) as item:
            check_keys(t, f, NAT_GATEWAY)
            with soft():
                nat_id = aws_id(t["id"], f"{f}.id", NAT_ID, "nat", "a NAT gateway")
                if nat_id in [n.id for n in nats]:
                    raise LabConfigError(f"{f}.id", f"duplicate NAT gateway id {nat_id!r}; give "
                                         "each NAT gateway its own id")
            with soft():
                sid = expect(t["subnet_id"], str, f"{f}.subnet_id", 'like "subnet-public"')
                if sid not in known:
                    undefined("subnet", sid, LabConfigError(
                        f"{f}.subnet_id", f"InvalidSubnetID.NotFound: subnet {sid!r} is not "
                        f"defined{did_you_mean(sid, known)}; define it under [[subnets]] or use "
                        f"one of: {', '.join(known) or '(none)'}"))
                if internet is None:
                    undefined("internet", None, LabConfigError(
                        f"{f}.subnet_id", "a NAT gateway needs a public subnet, and the lab has "
                        "no internet gateway; add an [internet] section and a route table "
                        "sending 0.0.0.0/0 from this subnet to it"))
            with soft():
                timeout = t.get("idle_timeout", NAT_IDLE_TIMEOUT)
                if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                        timeout <= 0:
                    raise LabConfigError(f"{f}.idle_timeout", f"{timeout!r}: write a number of "
                                         "seconds > 0 (AWS's NAT gateway drops idle connections "
                                         f"after {NAT_IDLE_TIMEOUT:g} s; a smaller value "
                                         "shortens tests)")
            item.check()
            nats.append(NatGateway(id=nat_id, subnet_id=sid, idle_timeout=float(timeout)))
    return nats


def parse_route_tables(tables, vpc: Vpc, subnets: List[Subnet], internet: Optional[Internet],
                       nats: List[NatGateway]) -> List[RouteTable]:
    """Routes besides the implicit ``local`` route for the VPC's block, which always wins for
    addresses inside the VPC: a route to the VPC's block or a part of it is refused (a broader
    one such as 0.0.0.0/0 is fine, longest prefix match keeps VPC traffic local). Subnets in
    no table use the VPC's main route table: only the local route."""
    known = [s.id for s in subnets]
    nat_ids = [n.id for n in nats]
    owner: Dict[str, str] = {}
    out: List[RouteTable] = []
    for i, t in enumerate(tables):
        f = f"route_tables[{i}]"
        with soft(defines=("route_table", t.get("id"))) as item:
            check_keys(t, f, ROUTE_TABLE)
            with soft():
                rtb_id = expect(t["id"], str, f"{f}.id", 'like "rtb-private"')
                if not RTB_ID.match(rtb_id):
                    raise LabConfigError(f"{f}.id", f"{rtb_id!r} is not a route table id; write "
                                         "'rtb-' followed by lower-case letters, digits or '-' "
                                         "(rtb-private)")
                if rtb_id in [r.id for r in out]:
                    raise LabConfigError(f"{f}.id", f"duplicate route table id {rtb_id!r}; give "
                                         "each route table its own id")
            with soft():
                sids = associations(t, f, known, owner, t.get("id"), "route table")
            with soft():
                routes = _routes(t.get("routes", []), f"{f}.routes", vpc, internet, nat_ids)
            item.check()
            out.append(RouteTable(id=rtb_id, subnet_ids=tuple(sids), routes=tuple(routes)))
    return out


def _routes(value: Any, f: str, vpc: Vpc, internet: Optional[Internet],
            nat_ids: List[str]) -> List[RoutePlan]:
    expect(value, list, f, "write it as an array of tables, e.g. routes = "
           '[{destination = "0.0.0.0/0", target = "nat-0a1b2c3d"}]')
    routes: List[RoutePlan] = []
    with group():
        for j, r in enumerate(value):
            rf = f"{f}[{j}]"
            with soft():
                expect(r, dict, rf, "write each route as a table {destination = ..., target = "
                       "...}")
                check_keys(r, rf, ROUTE)
                dest = rule_network(r["destination"], f"{rf}.destination")
                if dest.version != 4:
                    raise LabConfigError(f"{rf}.destination", f"{dest} is IPv6; NAT gateways "
                                         "and this lab's internet are IPv4 only, write an IPv4 "
                                         'CIDR like "0.0.0.0/0"')
                if dest.subnet_of(vpc.cidr):
                    raise LabConfigError(f"{rf}.destination", f"InvalidParameterValue: {dest} "
                                         f"lies inside the VPC's block {vpc.cidr}, which the "
                                         "implicit local route always carries; route only "
                                         'addresses outside the VPC (e.g. "0.0.0.0/0")')
                if any(other.destination == str(dest) for other in routes):
                    raise LabConfigError(f"{rf}.destination", f"RouteAlreadyExists: {dest} "
                                         "already has a route in this table; keep one")
                target = expect(r["target"], str, f"{rf}.target", 'a NAT gateway id '
                                '("nat-...") or the internet gateway id')
                routes.append(RoutePlan(destination=str(dest), target=target,
                                        kind=_route_kind(target, f"{rf}.target", internet,
                                                         nat_ids)))
    return routes


def _route_kind(target: str, field: str, internet: Optional[Internet],
                nat_ids: List[str]) -> str:
    if target.startswith("nat-"):
        if target not in nat_ids:
            where = (f"use one of: {', '.join(nat_ids)}" if nat_ids
                     else "add a [[nat_gateways]] table with that id")
            undefined("nat_gateway", target, LabConfigError(
                field, f"InvalidNatGatewayID.NotFound: The natGateway ID {target!r} does not "
                f"exist{did_you_mean(target, nat_ids)}; " + where))
        return "nat"
    if target.startswith("igw-"):
        if internet is None:
            undefined("internet", None, LabConfigError(
                field, f"InvalidGatewayID.NotFound: The gateway ID {target!r} does not exist: "
                "the lab has no internet gateway; add an [internet] section (with gateway_id = "
                f"{target!r} to keep this route as written)"))
        if target != internet.gateway_id:
            raise LabConfigError(field, f"InvalidGatewayID.NotFound: The gateway ID {target!r} "
                                 f"does not exist; the lab's internet gateway is "
                                 f"{internet.gateway_id!r} (set [internet] gateway_id to "
                                 "choose it)")
        return "igw"
    raise LabConfigError(field, f"{target!r} is not a route target here; use a NAT gateway id "
                         "(\"nat-...\") or the internet gateway id (\"igw-...\")")


def check_nat_gateways_public(nats: List[NatGateway], tables: List[RouteTable],
                              internet: Optional[Internet]) -> None:
    """A NAT gateway reaches the internet through its own subnet's route table, so that
    subnet must be public: 0.0.0.0/0 -> the internet gateway. A subnet whose default route
    points at a NAT gateway is private by definition."""
    for i, n in enumerate(nats):
        table = next((t for t in tables if n.subnet_id in t.subnet_ids), None)
        default = None
        if table is not None:
            default = next((r for r in table.routes if r.destination == "0.0.0.0/0"), None)
        if default is not None and default.kind == "igw":
            continue
        if table is None:
            why = ("it has no route table (the VPC's main table has only the local route)")
        elif default is None:
            why = f"its route table {table.id!r} has no 0.0.0.0/0 route"
        else:
            why = (f"its route table {table.id!r} sends 0.0.0.0/0 to NAT gateway "
                   f"{default.target!r}, which makes it a private subnet")
        raise LabConfigError(f"nat_gateways[{i}].subnet_id", f"a NAT gateway needs a public "
                             f"subnet (route 0.0.0.0/0 to the internet gateway "
                             f"{internet.gateway_id if internet else ''}), and subnet "
                             f"{n.subnet_id!r} is not public: {why}; put the NAT gateway in a "
                             "public subnet or give this one that route")


def parse_internet_hosts(tables, internet: Optional[Internet]) -> List[InternetHost]:
    hosts: List[InternetHost] = []
    for i, t in enumerate(tables):
        f = f"internet_hosts[{i}]"
        with soft(defines=("internet_host", t.get("name"))) as item:
            check_keys(t, f, INTERNET_HOST)
            with soft():
                name = unique_name(t["name"], f"{f}.name", "internet host", "web",
                                   [h.name for h in hosts])
            if internet is None:
                undefined("internet", None, LabConfigError(
                    f, "internet hosts live on the lab's internet; add an [internet] section "
                    "(its defaults are fine)"))
            ipv4 = None
            with soft():
                if "ipv4" in t:
                    ipv4 = _internet_address(t["ipv4"], f"{f}.ipv4", internet, hosts)
            with soft():
                command, env = host_command(t, f)
            item.check()
            hosts.append(InternetHost(name=name, ipv4=ipv4, command=command, environment=env))
    return hosts


def _internet_address(value: Any, field: str, internet: Internet, hosts: List[InternetHost]):
    ipv4 = address(value, field, 4)
    net = internet.cidr
    if ipv4 not in net:
        raise LabConfigError(field, f"{ipv4} is outside internet.cidr {net}; pick "
                             "an address inside it or leave the field out")
    if ipv4 in (net.network_address, net.network_address + 1, net.broadcast_address):
        raise LabConfigError(field, f"{ipv4} is the internet's network, gateway "
                             f"or broadcast address; use {net.network_address + 2} or "
                             "later")
    for j, other in enumerate(hosts):
        if other.ipv4 == ipv4:
            raise LabConfigError(field, f"{ipv4} is already internet_hosts[{j}]'s "
                                 "address; give each host its own or leave it out")
    return ipv4
