"""Resolving: a :class:`LabConfig` plus a lab name to a :class:`Plan`. Pure and
deterministic: ENIs per (subnet, set of security groups), addresses (ENIs first, then NAT
gateways, then hosts, around AWS's reserved ones), interface names and MACs.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any, Dict, Iterable, List, Optional, Tuple

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.addressing import eni_id, free_addresses, lab_mac
from hyperplane.labconfig.model import RESERVED_AT_START, ROUTE_TABLE_BASE, IPv4Net, LabConfig
from hyperplane.labconfig.plan import (EniPlan, EnvPlan, FunctionPlan, HostPlan, InternetPlan,
                                       NaclPlan, NatGatewayPlan, Plan, RouteTablePlan,
                                       SecurityGroupPlan, SubnetPlan)
from hyperplane.paths import validate_lab_name

EniKey = Tuple[str, frozenset]


def eni_keys(config: LabConfig) -> List[EniKey]:
    """(subnet, set of security groups) in order of first appearance: functions in file order,
    each function's subnets in its order. AWS creates an ENI for every subnet of the config,
    not only the ones an environment happens to land in."""
    keys: List[EniKey] = []
    for fn in config.functions:
        if fn.vpc_config is None:
            continue
        for sid in fn.vpc_config.subnet_ids:
            key = (sid, frozenset(fn.vpc_config.security_group_ids))
            if key not in keys:
                keys.append(key)
    return keys


@dataclasses.dataclass(frozen=True)
class _Layout:
    eni_v4: Dict[EniKey, ipaddress.IPv4Address]
    eni_v6: Dict[EniKey, Optional[ipaddress.IPv6Address]]
    host_v4: Dict[str, ipaddress.IPv4Address]
    host_v6: Dict[str, Optional[ipaddress.IPv6Address]]
    nat_private: Dict[str, ipaddress.IPv4Address]
    nat_public: Dict[str, ipaddress.IPv4Address]
    ihost_v4: Dict[str, ipaddress.IPv4Address]


def allocate(config: LabConfig) -> _Layout:
    """Addresses inside each subnet: ENIs first (key order), then NAT gateways (IPv4 only),
    then hosts without a fixed address (file order); fixed host addresses and AWS's reserved
    ones are skipped. On the internet: the gateway has the first usable address (.1), NAT
    gateways' public (Elastic) IPs come next, then internet hosts without a fixed address."""
    keys = eni_keys(config)
    eni_v4: Dict[EniKey, Any] = {}
    eni_v6: Dict[EniKey, Any] = {}
    host_v4: Dict[str, Any] = {h.name: h.ipv4 for h in config.hosts}
    host_v6: Dict[str, Any] = {h.name: h.ipv6 for h in config.hosts}
    nat_private: Dict[str, Any] = {}
    for si, subnet in enumerate(config.subnets):
        enis = [k for k in keys if k[0] == subnet.id]
        nats = [n.id for n in config.nat_gateways if n.subnet_id == subnet.id]
        hosts = [h for h in config.hosts if h.subnet == subnet.id]
        for version, net, fixed_of, out_eni, out_host, nat_ids in (
                (4, subnet.cidr, lambda h: h.ipv4, eni_v4, host_v4, nats),
                (6, subnet.ipv6_cidr, lambda h: h.ipv6, eni_v6, host_v6, [])):
            if net is None:
                for k in enis:
                    out_eni[k] = None
                continue
            fixed = {fixed_of(h) for h in hosts if fixed_of(h) is not None}
            wanted = len(enis) + len(nat_ids) + sum(1 for h in hosts if fixed_of(h) is None)
            free = free_addresses(net, fixed)
            for k in enis:
                out_eni[k] = next(free, None)
            for nat_id in nat_ids:
                nat_private[nat_id] = next(free, None)
            for h in hosts:
                if fixed_of(h) is None:
                    out_host[h.name] = next(free, None)
            if None in ([out_eni[k] for k in enis] + [nat_private[n] for n in nat_ids]
                        + [out_host[h.name] for h in hosts]):
                usable = net.num_addresses - RESERVED_AT_START - 1 - len(fixed)
                field = f"subnets[{si}].{'cidr' if version == 4 else 'ipv6_cidr'}"
                nat_part = f", {len(nat_ids)} NAT gateways" if nat_ids else ""
                raise LabConfigError(field, f"{net} has {max(usable, 0)} free addresses after "
                                     "AWS's 5 reserved ones and fixed host addresses, but needs "
                                     f"{wanted} ({len(enis)} ENIs{nat_part} and the hosts "
                                     "without a fixed address); use a larger subnet")
    nat_public: Dict[str, Any] = {}
    ihost_v4: Dict[str, Any] = {h.name: h.ipv4 for h in config.internet_hosts}
    if config.internet is not None:
        net = config.internet.cidr
        fixed = {h.ipv4 for h in config.internet_hosts if h.ipv4 is not None}
        free = _internet_addresses(net, fixed)
        for n in config.nat_gateways:
            nat_public[n.id] = next(free, None)
        for h in config.internet_hosts:
            if h.ipv4 is None:
                ihost_v4[h.name] = next(free, None)
        if None in list(nat_public.values()) + list(ihost_v4.values()):
            wanted = len(nat_public) + sum(1 for h in config.internet_hosts if h.ipv4 is None)
            raise LabConfigError("internet.cidr", f"{net} has {net.num_addresses - 3 - len(fixed)}"
                                 " free addresses after the network, gateway (.1) and broadcast "
                                 f"addresses and fixed host addresses, but needs {wanted} (NAT "
                                 "gateways' public IPs and internet hosts); use a larger block")
    return _Layout(eni_v4, eni_v6, host_v4, host_v6, nat_private, nat_public, ihost_v4)


def _internet_addresses(net: IPv4Net, skip) -> Iterable:
    """The stand-in internet has no AWS reservations: everything but the network address,
    the gateway (the first usable address) and the broadcast address."""
    for n in range(int(net.network_address) + 2, int(net.broadcast_address)):
        addr = ipaddress.IPv4Address(n)
        if addr not in skip:
            yield addr


def _service(host, base_dir: str) -> Dict[str, Any]:
    """A host's service as its HostPlan carries it (the config's folder only with one)."""
    if host.command is None:
        return {}
    return {"command": list(host.command), "environment": dict(host.environment),
            "config_dir": base_dir or None}


def resolve(config: LabConfig, name: str) -> Plan:
    """Lay the lab out: namespaces, interface names, MACs and addresses. Pure and deterministic
    (no I/O), so the same (config, name) always gives the same plan."""
    validate_lab_name(name)
    prefix = f"hp-{name}-"
    layout = allocate(config)
    macs: set = set()

    subnet_plans: List[SubnetPlan] = []
    for i, s in enumerate(config.subnets):
        subnet_plans.append(SubnetPlan(
            id=s.id, cidr=str(s.cidr), ipv6_cidr=str(s.ipv6_cidr) if s.ipv6_cidr else None,
            bridge=f"br{i}", router4=str(s.cidr.network_address + 1),
            router6=str(s.ipv6_cidr.network_address + 1) if s.ipv6_cidr else None))
    sp = {s.id: s for s in subnet_plans}

    enis: Dict[EniKey, EniPlan] = {}
    for i, key in enumerate(eni_keys(config)):
        sid, sgs = key
        s = sp[sid]
        v6 = layout.eni_v6[key]
        enis[key] = EniPlan(
            index=i, id=eni_id(name, sid, sgs), subnet=sid, security_groups=sorted(sgs),
            ipv4=str(layout.eni_v4[key]), ipv6=str(v6) if v6 else None,
            prefix4=s.cidr, prefix6=s.ipv6_cidr, router4=s.router4, router6=s.router6,
            node_ifname=f"eni{i}", fabric_ifname=f"eni{i}", mac=lab_mac(name, "eni", i, macs))

    envs: List[EnvPlan] = []
    functions: List[FunctionPlan] = []
    env4, env6 = config.lab.env_cidr, config.lab.env_ipv6_cidr
    # Every environment gets a /64 when the VPC has IPv6; the data path applies the
    # function's Ipv6AllowedForDualStack per link, so it can change at run time.
    has6 = config.vpc.ipv6_cidr is not None
    for fn in config.functions:
        vc = fn.vpc_config
        names: List[str] = []
        for i, attach in enumerate(fn.environments):
            index = len(envs)
            eni, sid = "", ""
            if vc is not None:
                sid = vc.subnet_ids[i % len(vc.subnet_ids)]  # round-robin over the subnets
                eni = enis[(sid, frozenset(vc.security_group_ids))].id
            base4 = env4.network_address + 4 * index
            net6 = ipaddress.IPv6Network((int(env6.network_address) + (index << 64), 64))
            env_name = f"{fn.name}-{i}"
            names.append(env_name)
            envs.append(EnvPlan(
                index=index, name=env_name, function=fn.name, attach=attach,
                netns=f"{prefix}env-{env_name}", ifname="eth0",
                node_ifname=f"env{index}" if attach == "veth" else None,
                eni=eni, subnet=sid,
                ipv4=f"{base4 + 2}/30", gw4=str(base4 + 1),
                ipv6=f"{net6.network_address + 2}/64" if has6 else None,
                gw6=str(net6.network_address + 1) if has6 else None,
                gw_mac=lab_mac(name, "gw", index, macs)))
        functions.append(FunctionPlan(
            name=fn.name, subnet_ids=list(vc.subnet_ids) if vc else [],
            security_group_ids=list(vc.security_group_ids) if vc else [],
            ipv6_allowed_for_dual_stack=vc.ipv6_allowed_for_dual_stack if vc else False,
            role=fn.role, envs=names, runtime=fn.runtime, handler=fn.handler, code=fn.code,
            timeout=fn.timeout, memory_size=fn.memory_size, environment=dict(fn.environment)))

    hosts: List[HostPlan] = []
    for i, h in enumerate(config.hosts):
        s = sp[h.subnet]
        v6 = layout.host_v6[h.name]
        hosts.append(HostPlan(
            name=h.name, netns=f"{prefix}host-{h.name}", ifname="eth0", subnet=h.subnet,
            ipv4=f"{layout.host_v4[h.name]}/{ipaddress.ip_network(s.cidr).prefixlen}",
            ipv6=f"{v6}/64" if v6 else None, gw4=s.router4, gw6=s.router6 if v6 else None,
            fabric_ifname=f"host{i}", mac=None, **_service(h, config.base_dir)))

    internet = None
    ihosts: List[HostPlan] = []
    nats: List[NatGatewayPlan] = []
    if config.internet is not None:
        inet = config.internet
        internet = InternetPlan(cidr=str(inet.cidr), gateway_id=inet.gateway_id,
                                netns=f"{prefix}inet", bridge="inet0",
                                router4=str(inet.cidr.network_address + 1))
        for i, n in enumerate(config.nat_gateways):
            s = sp[n.subnet_id]
            nats.append(NatGatewayPlan(
                index=i, id=n.id, subnet=n.subnet_id,
                private_ipv4=str(layout.nat_private[n.id]),
                public_ipv4=str(layout.nat_public[n.id]), prefix4=s.cidr, router4=s.router4,
                internet_cidr=internet.cidr, internet_router4=internet.router4,
                idle_timeout=float(n.idle_timeout), inside_ifname=f"nat{i}i",
                outside_ifname=f"nat{i}o", inside_mac=lab_mac(name, "nat-in", i, macs),
                outside_mac=lab_mac(name, "nat-out", i, macs)))
        for i, h in enumerate(config.internet_hosts):
            ihosts.append(HostPlan(
                name=h.name, netns=f"{prefix}ihost-{h.name}", ifname="eth0", subnet="internet",
                ipv4=f"{layout.ihost_v4[h.name]}/{inet.cidr.prefixlen}", ipv6=None,
                gw4=internet.router4, gw6=None, fabric_ifname=f"ihost{i}", mac=None,
                **_service(h, config.base_dir)))

    return Plan(
        name=name, prefix=prefix, node_ns=f"{prefix}node", fabric_ns=f"{prefix}vpc",
        subnets=subnet_plans, enis=list(enis.values()), envs=envs, hosts=hosts,
        vpc_id=config.vpc.id, account_id=config.lab.account_id,
        security_groups=[SecurityGroupPlan(id=g.id, egress=list(g.egress),
                                           description=g.description)
                         for g in config.security_groups],
        nacls=[NaclPlan(id=a.id, subnets=list(a.subnet_ids),
                        ingress=sorted(a.ingress, key=lambda r: r.number),
                        egress=sorted(a.egress, key=lambda r: r.number))
               for a in config.network_acls],
        route_tables=[RouteTablePlan(id=t.id, subnets=list(t.subnet_ids), routes=list(t.routes),
                                     table=ROUTE_TABLE_BASE + i)
                      for i, t in enumerate(config.route_tables)],
        nat_gateways=nats, internet=internet, internet_hosts=ihosts, functions=functions,
        lifecycle=config.lifecycle, flow_logs=config.flow_logs, datapath=config.datapath,
        conntrack=config.conntrack,
        metrics=config.metrics,
        impairments=config.impairments,
        # through JSON once, so the plan equals its own round trip (tuples become lists)
        iam=json.loads(json.dumps(config.iam)) if config.iam is not None else None)
