"""The resolved plan: every namespace, interface name, MAC and address a lab has
(:class:`Plan` and its parts), as :func:`hyperplane.labconfig.resolving.resolve` lays it out.
It round-trips through JSON (:meth:`Plan.to_dict` / :meth:`Plan.from_dict`), which is how the
lab builder, the daemon and the command line share it.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Dict, Iterable, List, Optional, Tuple

from hyperplane.labconfig.addressing import free_addresses
from hyperplane.labconfig.model import (DEFAULT_ACCOUNT_ID, DEFAULT_MEMORY_SIZE,
                                        DEFAULT_PYTHON_HANDLER, DEFAULT_RUNTIME,
                                        DEFAULT_TIMEOUT, ConntrackPlan, DatapathPlan, FlowLogsPlan,
                                        ImpairmentPlan, LifecyclePlan, RoutePlan, RulePlan)
from hyperplane.labconfig.model import MetricsPlan


def bare(addr: Optional[str]) -> Optional[str]:
    """An address without its prefix length (plans carry ``198.18.1.5/24``); None stays None."""
    return addr.split("/")[0] if addr else None


@dataclasses.dataclass(frozen=True)
class SubnetPlan:
    """A subnet as built: a bridge in the fabric namespace carrying the VPC router's addresses
    (AWS's reserved ``.1``)."""
    id: str
    cidr: str
    ipv6_cidr: Optional[str]
    bridge: str
    router4: str
    router6: Optional[str]


@dataclasses.dataclass(frozen=True)
class EniPlan:
    """A Hyperplane ENI: a veth pair from the node namespace (where the data path owns
    ``node_ifname`` and answers for ``ipv4``/``ipv6`` itself) to the subnet's bridge."""
    index: int
    id: str
    subnet: str
    security_groups: List[str]
    ipv4: str
    ipv6: Optional[str]
    prefix4: str
    prefix6: Optional[str]
    router4: str
    router6: Optional[str]
    node_ifname: str
    fabric_ifname: str
    mac: str


@dataclasses.dataclass(frozen=True)
class EnvPlan:
    """An execution environment: its own namespace with ``eth0`` (a TAP device, or a veth whose
    other end ``node_ifname`` sits in the node namespace). ``gw4``/``gw6`` are answered by the
    data path, which uses ``gw_mac`` on this link.

    ``eni`` and ``subnet`` are "" for a function without a VPC config. Every environment gets
    its IPv6 /64 (``ipv6``/``gw6``) whenever the VPC has an IPv6 block, whatever its function's
    ``Ipv6AllowedForDualStack`` says: the data path enforces that flag per link, so
    ``hyperplane function update --ipv6-dual-stack`` works at run time without re-addressing
    the environment (with the flag off, its IPv6 packets are dropped, as in AWS)."""
    index: int
    name: str
    function: str
    attach: str
    netns: str
    ifname: str
    node_ifname: Optional[str]
    eni: str
    subnet: str
    ipv4: str
    gw4: str
    ipv6: Optional[str]
    gw6: Optional[str]
    gw_mac: str


@dataclasses.dataclass(frozen=True)
class HostPlan:
    """A VPC host (or an internet host): its own namespace whose ``eth0`` is a veth to the
    subnet's bridge. ``command``: the argv of the service the lab runs in it (None: none),
    with ``environment`` added to its environment, started in ``config_dir`` (the folder the
    config's relative paths are taken from; None without a command)."""
    name: str
    netns: str
    ifname: str
    subnet: str
    ipv4: str
    ipv6: Optional[str]
    gw4: str
    gw6: Optional[str]
    fabric_ifname: str
    mac: Optional[str] = None
    command: Optional[List[str]] = None
    environment: Dict[str, str] = dataclasses.field(default_factory=dict)
    config_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SecurityGroupPlan:
    """A security group: only its egress rules matter for V2N traffic (stateful: checked when a
    connection is created, replies always allowed). An empty list allows nothing."""
    id: str
    egress: List[RulePlan]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class NaclPlan:
    """A network ACL and the subnets it is associated with. Rules in ascending ``number``; the
    implicit last rule ("*", deny) is not listed. Subnets without an ACL use the default one,
    which allows everything."""
    id: str
    subnets: List[str]
    ingress: List[RulePlan]
    egress: List[RulePlan]


@dataclasses.dataclass(frozen=True)
class RouteTablePlan:
    """A route table, its subnets, and the kernel routing table number (``table``) that
    carries it in the fabric namespace."""
    id: str
    subnets: List[str]
    routes: List[RoutePlan]
    table: int


@dataclasses.dataclass(frozen=True)
class NatGatewayPlan:
    """A NAT gateway in a public subnet, run by the data path as a second engine: its private
    side ``inside_ifname`` (node namespace <-> the subnet's bridge, same name at both ends)
    answers for ``private_ipv4``; its public side ``outside_ifname`` (node namespace <-> the
    internet bridge) answers for ``public_ipv4`` (its Elastic IP) and translates to it."""
    index: int
    id: str
    subnet: str
    private_ipv4: str
    public_ipv4: str
    prefix4: str
    router4: str
    internet_cidr: str
    internet_router4: str
    idle_timeout: float
    inside_ifname: str
    outside_ifname: str
    inside_mac: str
    outside_mac: str


@dataclasses.dataclass(frozen=True)
class InternetPlan:
    """The stand-in for the internet: namespace ``netns`` with bridge ``bridge`` carrying the
    internet gateway's address ``router4`` (the first usable address of ``cidr``)."""
    cidr: str
    gateway_id: str
    netns: str
    bridge: str
    router4: str


@dataclasses.dataclass(frozen=True)
class FunctionPlan:
    """A function as created: its VpcConfig (``subnet_ids`` empty = not attached to a VPC),
    its execution role's name (or None) and its execution environments' names; what it runs:
    ``runtime`` ("provided.al2023", "provided.al2" or "python3.N"), ``handler``, ``code`` (the
    absolute path of its code folder; None = the built-in hello-world handler), ``timeout``
    (seconds), ``memory_size`` (MB, informational) and ``environment`` (its variables)."""
    name: str
    subnet_ids: List[str]
    security_group_ids: List[str]
    ipv6_allowed_for_dual_stack: bool
    role: Optional[str]
    envs: List[str]
    runtime: str = DEFAULT_RUNTIME
    handler: str = DEFAULT_PYTHON_HANDLER
    code: Optional[str] = None
    timeout: int = DEFAULT_TIMEOUT
    memory_size: int = DEFAULT_MEMORY_SIZE
    environment: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a lab named ``name`` consists of. ``prefix`` starts every namespace name, so
    two labs never share a namespace."""
    name: str
    prefix: str
    node_ns: str
    fabric_ns: str
    subnets: List[SubnetPlan]
    enis: List[EniPlan]
    envs: List[EnvPlan]
    hosts: List[HostPlan]
    vpc_id: str = ""
    account_id: str = "123456789012"
    security_groups: List[SecurityGroupPlan] = dataclasses.field(default_factory=list)
    nacls: List[NaclPlan] = dataclasses.field(default_factory=list)
    route_tables: List[RouteTablePlan] = dataclasses.field(default_factory=list)
    nat_gateways: List[NatGatewayPlan] = dataclasses.field(default_factory=list)
    internet: Optional[InternetPlan] = None
    internet_hosts: List[HostPlan] = dataclasses.field(default_factory=list)
    functions: List[FunctionPlan] = dataclasses.field(default_factory=list)
    lifecycle: LifecyclePlan = dataclasses.field(default_factory=LifecyclePlan)
    #: {"identity_policies": [policy document, ...] or None,
    #:  "roles": {role name: [policy document, ...]}}: validated IAM policy documents (JSON
    #: grammar, see hyperplane.labconfig.iam); None when the config has no [iam] section (no checks).
    iam: Optional[Dict[str, Any]] = None
    flow_logs: FlowLogsPlan = dataclasses.field(default_factory=FlowLogsPlan)
    datapath: DatapathPlan = dataclasses.field(default_factory=DatapathPlan)
    conntrack: ConntrackPlan = dataclasses.field(default_factory=ConntrackPlan)
    metrics: MetricsPlan = dataclasses.field(default_factory=MetricsPlan)
    #: ``[[impairments]]``, applied at ``lab up`` (hyperplane.topology.impair)
    impairments: Tuple[ImpairmentPlan, ...] = ()

    def namespaces(self) -> List[str]:
        """All namespace names in build order: node, fabric, internet (when there is one),
        environments, hosts, internet hosts."""
        return ([self.node_ns, self.fabric_ns]
                + ([self.internet.netns] if self.internet else [])
                + [e.netns for e in self.envs] + [h.netns for h in self.hosts]
                + [h.netns for h in self.internet_hosts])

    def subnet(self, subnet_id: str) -> SubnetPlan:
        return _find(self.subnets, "id", subnet_id)

    def eni(self, eni_id: str) -> EniPlan:
        return _find(self.enis, "id", eni_id)

    def env(self, name: str) -> EnvPlan:
        return _find(self.envs, "name", name)

    def host(self, name: str) -> HostPlan:
        return _find(self.hosts, "name", name)

    def internet_host(self, name: str) -> HostPlan:
        return _find(self.internet_hosts, "name", name)

    def function(self, name: str) -> FunctionPlan:
        return _find(self.functions, "name", name)

    def security_group(self, sg_id: str) -> SecurityGroupPlan:
        return _find(self.security_groups, "id", sg_id)

    def nat_gateway(self, nat_id: str) -> NatGatewayPlan:
        return _find(self.nat_gateways, "id", nat_id)

    def nacl_of(self, subnet_id: str) -> Optional[NaclPlan]:
        """The network ACL associated with the subnet; None = the VPC's default ACL, which
        allows all traffic both ways."""
        return next((a for a in self.nacls if subnet_id in a.subnets), None)

    def route_table_of(self, subnet_id: str) -> Optional[RouteTablePlan]:
        """The subnet's route table; None = the VPC's main table, which has only the local
        route (the subnet reaches nothing outside the VPC)."""
        return next((t for t in self.route_tables if subnet_id in t.subnets), None)

    def sg_rules(self, sg_ids: Iterable[str]) -> List[RulePlan]:
        """The egress rules of a set of security groups: an ENI with several groups allows a
        connection when any rule of any group allows it (AWS evaluates the union). Each rule
        once, in the groups' order; KeyError for an unknown group."""
        rules: List[RulePlan] = []
        for sg_id in sg_ids:
            for rule in self.security_group(sg_id).egress:
                if rule not in rules:
                    rules.append(rule)
        return rules

    def free_address(self, subnet_id: str, family: int, taken: Iterable[str] = ()) -> Optional[str]:
        """The first address of the subnet (``family`` 4 or 6) that AWS does not reserve, that
        no ENI, NAT gateway or host of this plan uses and that is not in ``taken`` (addresses
        the caller handed out since, e.g. to scale-out ENIs). None when the subnet is full or
        has no block of that family. KeyError for an unknown subnet."""
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {family!r}")
        s = self.subnet(subnet_id)
        cidr = s.cidr if family == 4 else s.ipv6_cidr
        if cidr is None:
            return None
        used = {a.split("/")[0] for a in taken}
        for e in self.enis:
            if e.subnet == subnet_id:
                used.add(e.ipv4 if family == 4 else e.ipv6)
        for n in self.nat_gateways:
            if n.subnet == subnet_id and family == 4:
                used.add(n.private_ipv4)
        for h in self.hosts:
            if h.subnet == subnet_id:
                addr = h.ipv4 if family == 4 else h.ipv6
                if addr:
                    used.add(addr.split("/")[0])
        skip = {ipaddress.ip_address(a) for a in used if a}
        return next((str(a) for a in free_addresses(ipaddress.ip_network(cidr), skip)), None)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data (``from_dict`` reverses it exactly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Plan":
        """Rebuild a plan from :meth:`to_dict`'s data. State files written before a field
        existed load with that field's default."""
        def rules(items):
            return [RulePlan(**r) for r in items]

        def host(h):
            cmd = h.get("command")
            return HostPlan(**{**h, "command": list(cmd) if cmd is not None else None,
                               "environment": dict(h.get("environment") or {})})

        inet = d.get("internet")
        return cls(
            name=d["name"], prefix=d["prefix"], node_ns=d["node_ns"], fabric_ns=d["fabric_ns"],
            subnets=[SubnetPlan(**s) for s in d["subnets"]],
            enis=[EniPlan(**{**e, "security_groups": list(e["security_groups"])})
                  for e in d["enis"]],
            envs=[EnvPlan(**e) for e in d["envs"]],
            hosts=[host(h) for h in d["hosts"]],
            vpc_id=d.get("vpc_id", ""),
            account_id=d.get("account_id", DEFAULT_ACCOUNT_ID),
            security_groups=[SecurityGroupPlan(**{**g, "egress": rules(g["egress"])})
                             for g in d.get("security_groups", [])],
            nacls=[NaclPlan(id=a["id"], subnets=list(a["subnets"]),
                            ingress=rules(a["ingress"]), egress=rules(a["egress"]))
                   for a in d.get("nacls", [])],
            route_tables=[RouteTablePlan(id=t["id"], subnets=list(t["subnets"]),
                                         routes=[RoutePlan(**r) for r in t["routes"]],
                                         table=t["table"])
                          for t in d.get("route_tables", [])],
            nat_gateways=[NatGatewayPlan(**n) for n in d.get("nat_gateways", [])],
            internet=InternetPlan(**inet) if inet else None,
            internet_hosts=[host(h) for h in d.get("internet_hosts", [])],
            functions=[FunctionPlan(**{**f, "subnet_ids": list(f["subnet_ids"]),
                                       "security_group_ids": list(f["security_group_ids"]),
                                       "envs": list(f["envs"]),
                                       "environment": dict(f.get("environment") or {})})
                       for f in d.get("functions", [])],
            lifecycle=LifecyclePlan(**d.get("lifecycle", {})),
            iam=d.get("iam"),
            flow_logs=FlowLogsPlan(**d.get("flow_logs", {})),
            datapath=DatapathPlan(
                cpus=tuple(d.get("datapath", {}).get("cpus", ())),
                ring_frames=int(d.get("datapath", {}).get("ring_frames", 0)),
                inbound_cpus=tuple(d.get("datapath", {}).get("inbound_cpus", ())),
                placement=d.get("datapath", {}).get("placement", "auto"),
                workers=d.get("datapath", {}).get("workers", 1),
                worker_cpus=tuple(d.get("datapath", {}).get("worker_cpus", ()))),
            conntrack=ConntrackPlan(**d.get("conntrack", {})),
            metrics=MetricsPlan(**d.get("metrics", {})),
            impairments=tuple(ImpairmentPlan(**i) for i in d.get("impairments", ())),
        )


def _find(items, attr, value):
    for item in items:
        if getattr(item, attr) == value:
            return item
    raise KeyError(value)
