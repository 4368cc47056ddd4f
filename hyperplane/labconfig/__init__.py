"""The lab: a small VPC, its subnets, Lambda functions and hosts, loaded from TOML.

Three stages, each a plain function:

1. :func:`load` / :func:`loads` / :func:`default` parse TOML into a frozen :class:`LabConfig`
   and validate it. Every error is a :class:`LabConfigError` whose message starts with the
   field path (``functions[1].vpc_config.subnet_ids[0]: ...``) and says how to fix it.
2. :func:`resolve` turns a config plus a lab name into a :class:`Plan`: every namespace,
   interface name, MAC and address the lab will have. The plan is deterministic for a given
   (config, name), and round-trips through JSON (:meth:`Plan.to_dict` / :meth:`Plan.from_dict`),
   which is how the lab builder, the daemon and the CLI share it.
3. :mod:`hyperplane.topology` builds the plan in network namespaces.

How the plan mirrors AWS (facts from the Lambda and VPC documentation):

- One Hyperplane ENI per (subnet, set of security groups); every function with the same
  combination shares it. A function's execution environments are spread over its subnets
  (round-robin here; AWS spreads them over Availability Zones).
- AWS reserves five IPv4 addresses in every subnet: the network address, ``.1`` (VPC router),
  ``.2`` (DNS), ``.3`` (future use) and the broadcast address; for IPv6 the first four and the
  last address. The allocator never hands those out: ENIs get the first free addresses, then
  hosts without a fixed address.
- IPv4 subnets are between /16 and /28 (EC2 CreateSubnet); an IPv6 subnet is always a /64 of the
  VPC's IPv6 block. A function gets IPv6 only with ``ipv6_allowed_for_dual_stack = true``, and
  that is refused unless every one of its subnets is dual-stack.
- A function's VPC config holds at most 16 subnets and at most 5 security groups (Lambda
  ``VpcConfig``), and every group must exist (``[[security_groups]]``). A function without a
  VPC config still gets its environments, but no ENI.
- Security groups are stateful and, for Lambda, only their egress rules matter; a group
  without ``egress`` has AWS's default "allow all out". Network ACLs are stateless, numbered,
  first match wins, checked both ways at the subnet edge; subnets in no ACL use the default
  ACL (allow all).
- Internet access: a private subnet routes 0.0.0.0/0 to a NAT gateway, which sits in a public
  subnet (0.0.0.0/0 to the internet gateway) and translates to its Elastic IP on the stand-in
  internet (``[internet]``, ``[[internet_hosts]]``); idle connections expire after 350 s.
- ``[lifecycle]`` sets the ENI delays ("lab" or "aws" profile) and scale-out (ports per ENI,
  the high-water mark that starts the next ENI early, ENIs per key); ``[iam]`` holds identity
  and execution-role policies, checked (:mod:`hyperplane.labconfig.iam`) when the config is loaded.
- ``[flow_logs]``: VPC Flow Logs per ENI (default format v2) under the lab's directory
  (:mod:`hyperplane.datapath.flowlogs`): ``enabled``, ``interval`` (1..600 s; AWS offers 60 or 600),
  ``account_id``.
- ``[datapath]``: ``cpus``, the CPUs the data path process runs on (default: wherever the
  scheduler puts it). On a small machine where the traffic's own endpoints share the CPUs,
  keeping the data path off the sender's CPU is worth a lot (benchmarks/RESULTS.md).
  ``ring_frames``: frames (2 KiB each) in every veth link's receive ring, default 4096.
  ``inbound_cpus``: run the VPC -> environment direction in a second thread on these CPUs
  (csrc/hp_dp.h ``hp_dp_start_inbound``), with ``cpus`` keeping the loop off them; default:
  one thread does both.

Every address must lie in the benchmark ranges 198.18.0.0/15 (RFC 2544) and 2001:2::/48
(RFC 5180): they are reserved for exactly this kind of lab, so a lab can never collide with a
real network the machine is attached to.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import json
import re
from importlib import resources
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from hyperplane.engine.constants import RING_FRAMES_MAX, RING_FRAMES_MIN, RING_FRAMES_STEP
from hyperplane.errors import LabConfigError
from hyperplane.labconfig import iam
from hyperplane.paths import validate_lab_name

try:  # Python 3.11+; older Pythons need the identical third-party "tomli"
    import tomllib
except ImportError:  # pragma: no cover
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        raise ImportError("reading lab configs needs Python 3.11+ (tomllib) or "
                          "`pip install tomli`") from None

__all__ = [
    "LabConfigError", "LabSettings", "Vpc", "Subnet", "FunctionVpcConfig", "Function", "Host",
    "SecurityGroup", "NetworkAcl", "RouteTable", "Internet", "InternetHost", "NatGateway",
    "LabConfig", "SubnetPlan", "EniPlan", "EnvPlan", "HostPlan", "RulePlan", "SecurityGroupPlan",
    "NaclPlan", "RoutePlan", "RouteTablePlan", "NatGatewayPlan", "InternetPlan", "FunctionPlan",
    "LifecyclePlan", "FlowLogsPlan", "Plan", "LIFECYCLE_PROFILES", "NAT_IDLE_TIMEOUT",
    "load", "loads", "parse", "default", "default_text", "resolve", "validate_lab_name",
    "eni_id", "lab_mac", "bare", "BENCHMARK_V4", "BENCHMARK_V6", "ATTACH_KINDS",
]

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
IPNet = Union[IPv4Net, IPv6Net]

#: RFC 2544 / RFC 5180 benchmarking ranges: the only addresses a lab may use.
BENCHMARK_V4 = ipaddress.IPv4Network("198.18.0.0/15")
BENCHMARK_V6 = ipaddress.IPv6Network("2001:2::/48")
_RANGE_WHY = ("lab addresses must stay in the benchmark ranges 198.18.0.0/15 and 2001:2::/48 "
              "(RFC 2544, RFC 5180) so a lab can never collide with a real network")

#: How an execution environment is wired to the data path: a TAP device (the data path holds
#: the device's fd) or a veth pair (the data path reads the node-side end with AF_PACKET).
ATTACH_KINDS = ("tap", "veth")

#: EC2 CreateSubnet: "The allowed size for an IPv4 subnet is between a /28 netmask and a /16".
SUBNET_V4_PREFIX = (16, 28)
VPC_V4_PREFIX = (16, 28)
#: Lambda VpcConfig: SubnetIds at most 16 items, SecurityGroupIds at most 5.
MAX_SUBNET_IDS = 16
MAX_SECURITY_GROUPS = 5
#: AWS reserves the first four addresses of every subnet (network, router, DNS, future use).
RESERVED_AT_START = 4
#: A route table is carried by kernel routing table ROUTE_TABLE_BASE + its index.
ROUTE_TABLE_BASE = 100

DEFAULT_ENV_CIDR = "198.19.0.0/16"
DEFAULT_ENV_IPV6_CIDR = "2001:2:0:f000::/52"
DEFAULT_ACCOUNT_ID = "123456789012"
#: Flow-log aggregation interval of a lab, in seconds (AWS: 60 or 600; a lab allows 1..600).
FLOW_LOGS_INTERVAL = 10
FLOW_LOGS_INTERVAL_RANGE = (1, 600)
#: The stand-in internet: the top /24 of 198.19.0.0/16, far from the environments' /30s
#: (which are handed out from the bottom of lab.env_cidr).
DEFAULT_INTERNET_CIDR = "198.19.255.0/24"

#: EC2 quota "inbound or outbound rules per security group": 60.
MAX_SG_RULES = 60
#: EC2 quota "rules per network ACL" (per direction): 20 by default, at most 40.
MAX_NACL_RULES = 40
#: Network ACL rule numbers are 1..32766 (32767 and up are AWS's own, e.g. the final "*").
NACL_RULE_NUMBERS = (1, 32766)
#: A NAT gateway drops a connection after 350 s idle (AWS NAT gateway documentation). This is
#: shorter than RFC 5382 REQ-5's 2 h 4 min for established TCP on purpose: it is what AWS does.
NAT_IDLE_TIMEOUT = 350.0

#: Lifecycle profiles, in seconds: (eni_create_delay, inactive_after, eni_delete_delay).
#: "lab" is short enough to watch; "aws" is what the Lambda documentation says: a function idle
#: for 30 days has its ENI reclaimed and goes Inactive; after its VPC config is removed the ENI is
#: deleted within 20 minutes. AWS documents no number for ENI creation (the function is Pending
#: "while Lambda creates the network interface"); 90 s is an observed, typical figure.
LIFECYCLE_PROFILES = {
    "lab": (1.0, 600.0, 10.0),
    "aws": (90.0, 30 * 86400.0, 20 * 60.0),
}

_SUBNET_ID = re.compile(r"^subnet-[0-9a-z-]+$")
_SG_ID = re.compile(r"^sg-[0-9a-z]+$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
#: AWS resource ids: a prefix and 8 (older resources) or 17 lower-case hex digits.
_AWS_HEX_ID = "^{}-(?:[0-9a-f]{{8}}|[0-9a-f]{{17}})$"
_VPC_ID = re.compile(_AWS_HEX_ID.format("vpc"))
_NAT_ID = re.compile(_AWS_HEX_ID.format("nat"))
_IGW_ID = re.compile(_AWS_HEX_ID.format("igw"))
_ACL_ID = re.compile(r"^acl-[0-9a-z-]+$")
_RTB_ID = re.compile(r"^rtb-[0-9a-z-]+$")
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")


def bare(addr: Optional[str]) -> Optional[str]:
    """An address without its prefix length (plans carry ``198.18.1.5/24``); None stays None."""
    return addr.split("/")[0] if addr else None


# ---- the config model --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LabSettings:
    """``[lab]``: where the execution environments' own links get their addresses (one /30 and
    one /64 per environment). These stand in for Lambda's service-owned network.
    ``account_id`` is the AWS account the lab pretends to be (IAM ARNs, flow logs)."""
    env_cidr: IPv4Net = ipaddress.IPv4Network(DEFAULT_ENV_CIDR)
    env_ipv6_cidr: IPv6Net = ipaddress.IPv6Network(DEFAULT_ENV_IPV6_CIDR)
    account_id: str = DEFAULT_ACCOUNT_ID


@dataclasses.dataclass(frozen=True)
class Vpc:
    """``[vpc]``: the customer VPC's IPv4 block and optional IPv6 block. ``id`` is always set
    after parsing (derived from the blocks when the config leaves it out), because IAM
    conditions on ``lambda:VpcIds`` are evaluated when the config is loaded."""
    cidr: IPv4Net
    ipv6_cidr: Optional[IPv6Net] = None
    id: str = ""


@dataclasses.dataclass(frozen=True)
class Subnet:
    """``[[subnets]]``: dual-stack when ``ipv6_cidr`` is set."""
    id: str
    cidr: IPv4Net
    ipv6_cidr: Optional[IPv6Net] = None

    @property
    def dual_stack(self) -> bool:
        return self.ipv6_cidr is not None


@dataclasses.dataclass(frozen=True)
class FunctionVpcConfig:
    """``[functions.vpc_config]``: Lambda's ``VpcConfig`` (SubnetIds, SecurityGroupIds,
    Ipv6AllowedForDualStack)."""
    subnet_ids: Tuple[str, ...]
    security_group_ids: Tuple[str, ...]
    ipv6_allowed_for_dual_stack: bool = False


@dataclasses.dataclass(frozen=True)
class Function:
    """``[[functions]]``: one entry in ``environments`` per execution environment.
    ``vpc_config`` None = a function not attached to a VPC; ``role`` names an execution role
    under ``[iam.roles]`` (None = no role checks)."""
    name: str
    environments: Tuple[str, ...]
    vpc_config: Optional[FunctionVpcConfig]
    role: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Host:
    """``[[hosts]]``: a machine in the VPC (a server the functions talk to)."""
    name: str
    subnet: str
    ipv4: Optional[ipaddress.IPv4Address] = None
    ipv6: Optional[ipaddress.IPv6Address] = None


@dataclasses.dataclass(frozen=True)
class SecurityGroup:
    """``[[security_groups]]``: its egress rules (``RulePlan`` with number 0, action "allow").
    An absent ``egress`` key gives AWS's default rules (allow everything out); ``egress = []``
    allows nothing."""
    id: str
    egress: Tuple["RulePlan", ...]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class NetworkAcl:
    """``[[network_acls]]``: numbered allow/deny rules per direction and the subnets using it."""
    id: str
    subnet_ids: Tuple[str, ...]
    ingress: Tuple["RulePlan", ...]
    egress: Tuple["RulePlan", ...]


@dataclasses.dataclass(frozen=True)
class RouteTable:
    """``[[route_tables]]``: routes besides the implicit ``local`` one, and its subnets."""
    id: str
    subnet_ids: Tuple[str, ...]
    routes: Tuple["RoutePlan", ...]


@dataclasses.dataclass(frozen=True)
class Internet:
    """``[internet]``: the stand-in for the internet (an IPv4 block) behind the VPC's internet
    gateway ``gateway_id``."""
    cidr: IPv4Net
    gateway_id: str


@dataclasses.dataclass(frozen=True)
class InternetHost:
    """``[[internet_hosts]]``: a machine on the internet (reachable only through a NAT
    gateway)."""
    name: str
    ipv4: Optional[ipaddress.IPv4Address] = None


@dataclasses.dataclass(frozen=True)
class NatGateway:
    """``[[nat_gateways]]``: a NAT gateway in a public subnet; ``idle_timeout`` in seconds."""
    id: str
    subnet_id: str
    idle_timeout: float = NAT_IDLE_TIMEOUT


@dataclasses.dataclass(frozen=True)
class LabConfig:
    """A validated lab configuration. ``source`` says where it came from (a path, or
    ``<default>`` for the embedded lab). ``iam`` is what :func:`hyperplane.labconfig.iam.parse_iam_section`
    returned for ``[iam]`` (None without that section)."""
    vpc: Vpc
    subnets: Tuple[Subnet, ...]
    functions: Tuple[Function, ...]
    hosts: Tuple[Host, ...]
    lab: LabSettings = LabSettings()
    source: str = "<string>"
    security_groups: Tuple[SecurityGroup, ...] = ()
    network_acls: Tuple[NetworkAcl, ...] = ()
    route_tables: Tuple[RouteTable, ...] = ()
    internet: Optional[Internet] = None
    internet_hosts: Tuple[InternetHost, ...] = ()
    nat_gateways: Tuple[NatGateway, ...] = ()
    lifecycle: "LifecyclePlan" = dataclasses.field(default_factory=lambda: LifecyclePlan())
    iam: Optional[Dict[str, Any]] = dataclasses.field(default=None, hash=False)
    flow_logs: "FlowLogsPlan" = dataclasses.field(default_factory=lambda: FlowLogsPlan())
    datapath: "DatapathPlan" = dataclasses.field(default_factory=lambda: DatapathPlan())

    def subnet(self, subnet_id: str) -> Subnet:
        for s in self.subnets:
            if s.id == subnet_id:
                return s
        raise KeyError(subnet_id)


# ---- the plan ----------------------------------------------------------------------------------
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
    """A VPC host: its own namespace whose ``eth0`` is a veth to the subnet's bridge."""
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


@dataclasses.dataclass(frozen=True)
class RulePlan:
    """One security-group egress rule (``number`` 0, ``action`` always "allow") or one network
    ACL rule. ``protocol`` is "tcp", "udp", "icmp" or "all" ("all" and "icmp" match every port,
    shown as 0..65535); ``cidr`` is an IPv4 or IPv6 network (a rule matches one family)."""
    number: int
    action: str
    protocol: str
    cidr: str
    from_port: int = 0
    to_port: int = 65535
    description: str = ""


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
class RoutePlan:
    """A route besides the implicit ``local`` one: ``kind`` "nat" (target a NAT gateway id) or
    "igw" (target the internet gateway id)."""
    destination: str
    target: str
    kind: str


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
    its execution role's name (or None) and its execution environments' names."""
    name: str
    subnet_ids: List[str]
    security_group_ids: List[str]
    ipv6_allowed_for_dual_stack: bool
    role: Optional[str]
    envs: List[str]


@dataclasses.dataclass(frozen=True)
class LifecyclePlan:
    """ENI lifecycle and scale-out, in seconds of the lab clock. ``profile`` "lab" (short
    delays) or "aws" (the documented ones). ``high_water`` is the pool fill (0..1) at which the
    next ENI of a key is started before the pool runs dry; 0 turns that off (AWS's behaviour:
    scale out only when every ENI of the key is exhausted)."""
    profile: str = "lab"
    eni_create_delay: float = 1.0
    inactive_after: float = 600.0
    eni_delete_delay: float = 10.0
    ports_per_eni: int = 65000
    high_water: float = 0.8
    max_enis_per_key: int = 8
    #: Connections one execution environment may hold on its ENI key at once (the engine's
    #: max_connections_per_source): a SYN flood or connection leak in one environment then
    #: cannot exhaust the ports the others sharing the ENI need. 0: no limit.
    max_connections_per_environment: int = 0


@dataclasses.dataclass(frozen=True)
class FlowLogsPlan:
    """``[flow_logs]``: VPC Flow Logs of every ENI (hyperplane.datapath.flowlogs), default format v2,
    one file per ENI under the lab's directory. ``interval`` is the aggregation interval in
    seconds of the lab clock: AWS offers 60 or 600; a lab accepts any whole number from 1 to
    600 so records show up while you watch. ``account_id`` fills the account-id field
    (default: ``[lab] account_id``)."""
    enabled: bool = True
    interval: int = FLOW_LOGS_INTERVAL
    account_id: str = DEFAULT_ACCOUNT_ID


@dataclasses.dataclass(frozen=True)
class DatapathPlan:
    """``[datapath]``: ``cpus`` pins the data path process to these CPUs (sched_setaffinity,
    checked against the CPUs it may use when it starts); empty: the scheduler decides.
    ``ring_frames``: the depth of each veth link's receive ring, which is how long a stall of
    the loop a link absorbs without dropping (like ``ethtool -G`` on a NIC).
    ``inbound_cpus``: when set, an inbound worker thread on these CPUs receives on the ENI
    links and does the VPC -> environment direction."""
    cpus: Tuple[int, ...] = ()
    #: frames in each veth link's receive ring (2 KiB each); 0: the default, 4,096 (8 MiB)
    ring_frames: int = 0
    #: when set, the VPC -> environment direction runs in a thread of its own on these CPUs
    inbound_cpus: Tuple[int, ...] = ()


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
        return next((str(a) for a in _free_addresses(ipaddress.ip_network(cidr), skip)), None)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data (``from_dict`` reverses it exactly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Plan":
        """Rebuild a plan from :meth:`to_dict`'s data. State files written before a field
        existed load with that field's default."""
        def rules(items):
            return [RulePlan(**r) for r in items]

        inet = d.get("internet")
        return cls(
            name=d["name"], prefix=d["prefix"], node_ns=d["node_ns"], fabric_ns=d["fabric_ns"],
            subnets=[SubnetPlan(**s) for s in d["subnets"]],
            enis=[EniPlan(**{**e, "security_groups": list(e["security_groups"])})
                  for e in d["enis"]],
            envs=[EnvPlan(**e) for e in d["envs"]],
            hosts=[HostPlan(**h) for h in d["hosts"]],
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
            internet_hosts=[HostPlan(**h) for h in d.get("internet_hosts", [])],
            functions=[FunctionPlan(**{**f, "subnet_ids": list(f["subnet_ids"]),
                                       "security_group_ids": list(f["security_group_ids"]),
                                       "envs": list(f["envs"])})
                       for f in d.get("functions", [])],
            lifecycle=LifecyclePlan(**d.get("lifecycle", {})),
            iam=d.get("iam"),
            flow_logs=FlowLogsPlan(**d.get("flow_logs", {})),
            datapath=DatapathPlan(
                cpus=tuple(d.get("datapath", {}).get("cpus", ())),
                ring_frames=int(d.get("datapath", {}).get("ring_frames", 0)),
                inbound_cpus=tuple(d.get("datapath", {}).get("inbound_cpus", ()))),
        )


def _find(items, attr, value):
    for item in items:
        if getattr(item, attr) == value:
            return item
    raise KeyError(value)


# ---- loading -----------------------------------------------------------------------------------
def load(path) -> LabConfig:
    """Read and validate the lab config at ``path``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LabConfigError(str(path), f"cannot read the lab config: {e.strerror}; "
                             "check the path (or leave it out to use the default lab)") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabConfigError(str(path), f"not UTF-8 text ({e}); TOML files must be UTF-8") \
            from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> LabConfig:
    """Parse and validate a lab config from TOML text; ``source`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LabConfigError(source, f"TOML syntax error: {e}; fix the line it names "
                             "(https://toml.io explains the syntax)") from None
    return parse(doc, source)


def parse(doc: Dict[str, Any], source: str = "<mapping>") -> LabConfig:
    """Validate an already-parsed document (what ``tomllib.loads`` returns: plain dicts,
    lists, strings and booleans)."""
    _expect(doc, dict, source, "the lab config is a TOML document (a table)")
    return _parse(doc, source)


def default_text() -> str:
    """The embedded default lab's TOML (commented, a good starting point for your own)."""
    return resources.files(__package__).joinpath("default_lab.toml").read_text("utf-8")


def default() -> LabConfig:
    """The embedded default lab: one dual-stack subnet, two functions sharing one ENI (one on a
    TAP, one on a veth), one server."""
    return loads(default_text(), source="<default>")


# ---- parsing helpers (each takes the field path so errors can name it) -------------------------
_TYPE_NAMES = {str: "a string", bool: "true or false", list: "an array", dict: "a table",
               int: "an integer", float: "a number"}


def _type_name(v: Any) -> str:
    """What TOML value the user wrote, in TOML's words."""
    if isinstance(v, bool):
        return "a boolean"
    for typ in (str, int, float, list, dict):
        if isinstance(v, typ):
            return _TYPE_NAMES[typ]
    return "a date/time" if v is not None else "nothing"


def _expect(value: Any, typ: type, field: str, hint: str = "") -> Any:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise LabConfigError(field, f"must be {_TYPE_NAMES[typ]}, not {_type_name(value)} "
                             f"({value!r}){'; ' + hint if hint else ''}")
    return value


def _check_keys(table: Dict[str, Any], field: str, known: Sequence[str],
                required: Sequence[str] = ()) -> None:
    where = (lambda k: f"{field}.{k}") if field else (lambda k: k)
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise LabConfigError(where(key), f"unknown key '{key}'; {hint}known keys: "
                                 f"{', '.join(known)}")
    for key in required:
        if key not in table:
            raise LabConfigError(where(key), f"missing; add {key} = ... under "
                                 f"{'[' + field + ']' if field else 'the top level'}")


def _array_of_tables(doc: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    value = doc.get(key, [])
    if isinstance(value, dict):
        raise LabConfigError(key, f"must be an array of tables: write each entry as "
                             f"[[{key}]] (double brackets), not [{key}]")
    _expect(value, list, key, f"write each entry as a [[{key}]] table")
    for i, item in enumerate(value):
        _expect(item, dict, f"{key}[{i}]", f"write each entry as a [[{key}]] table")
    return value


def _network(value: Any, field: str, version: int) -> IPNet:
    kind = "IPv4" if version == 4 else "IPv6"
    example = "198.18.1.0/24" if version == 4 else "2001:2:0:1::/64"
    _expect(value, str, field, f'write it as a quoted CIDR like "{example}"')
    if "/" not in value:
        raise LabConfigError(field, f"{value!r} has no prefix length; write an {kind} CIDR "
                             f'like "{example}"')
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise LabConfigError(field, f"{value!r} is not an {kind} CIDR; write it like "
                             f'"{example}"') from None
    if net.version != version:
        raise LabConfigError(field, f"{value!r} is an IPv{net.version} CIDR but this field "
                             f'takes {kind}, like "{example}"')
    if ipaddress.ip_interface(value).ip != net.network_address:
        raise LabConfigError(field, f"{value!r} has host bits set; the network is "
                             f'"{net}", write that')
    _check_benchmark(net, field)
    return net


def _address(value: Any, field: str, version: int):
    kind = "IPv4" if version == 4 else "IPv6"
    example = "198.18.1.10" if version == 4 else "2001:2:0:1::10"
    _expect(value, str, field, f'write it as a quoted address like "{example}"')
    if "/" in value:
        raise LabConfigError(field, f"{value!r}: write the address without a prefix length "
                             f'(like "{example}"); the subnet gives the prefix')
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise LabConfigError(field, f"{value!r} is not an {kind} address; write it like "
                             f'"{example}"') from None
    if addr.version != version:
        raise LabConfigError(field, f"{value!r} is an IPv{addr.version} address but this "
                             f'field takes {kind}, like "{example}"')
    _check_benchmark(ipaddress.ip_network(addr), field)
    return addr


def _check_benchmark(net: IPNet, field: str) -> None:
    bench = BENCHMARK_V4 if net.version == 4 else BENCHMARK_V6
    if not net.subnet_of(bench):
        raise LabConfigError(field, f"{net} is outside {bench}; {_RANGE_WHY}")


def _range_overlap(a: IPNet, b: IPNet) -> bool:
    return a.version == b.version and a.overlaps(b)


# ---- parsing and validation --------------------------------------------------------------------
_TOP_LEVEL_KEYS = ["lab", "vpc", "subnets", "functions", "hosts", "security_groups",
                   "network_acls", "route_tables", "internet", "internet_hosts", "nat_gateways",
                   "lifecycle", "iam", "flow_logs", "datapath"]


def _parse(doc: Dict[str, Any], source: str) -> LabConfig:
    _check_keys(doc, "", _TOP_LEVEL_KEYS, required=["vpc"])
    lab = _parse_lab(doc.get("lab", {}))
    vpc = _parse_vpc(doc["vpc"])
    subnets = _parse_subnets(_array_of_tables(doc, "subnets"), vpc, lab)
    sgs = _parse_security_groups(_array_of_tables(doc, "security_groups"), vpc)
    internet = _parse_internet(doc["internet"], vpc) if "internet" in doc else None
    nats = _parse_nat_gateways(_array_of_tables(doc, "nat_gateways"), subnets, internet)
    tables = _parse_route_tables(_array_of_tables(doc, "route_tables"), vpc, subnets, internet,
                                 nats)
    _check_nat_gateways_public(nats, tables, internet)
    nacls = _parse_network_acls(_array_of_tables(doc, "network_acls"), subnets)
    iam = _parse_iam(doc)
    functions = _parse_functions(_array_of_tables(doc, "functions"), subnets, sgs, iam)
    hosts = _parse_hosts(_array_of_tables(doc, "hosts"), subnets)
    ihosts = _parse_internet_hosts(_array_of_tables(doc, "internet_hosts"), internet)
    lifecycle = _parse_lifecycle(doc.get("lifecycle", {}))
    flow_logs = _parse_flow_logs(doc.get("flow_logs", {}), lab)
    datapath = _parse_datapath(doc.get("datapath", {}))
    if not functions:
        raise LabConfigError("functions", "a lab needs at least one function; add a "
                             "[[functions]] table with name and environments (and a "
                             "vpc_config to attach it to the VPC; the default lab, "
                             "hyperplane/labconfig/default_lab.toml, has two)")
    if not hosts and not ihosts:
        raise LabConfigError("hosts", "a lab needs at least one host for the functions to "
                             "talk to; add a [[hosts]] table with name and subnet (or an "
                             "[[internet_hosts]] table behind a NAT gateway)")
    config = LabConfig(vpc=vpc, subnets=tuple(subnets), functions=tuple(functions),
                       hosts=tuple(hosts), lab=lab, source=source,
                       security_groups=tuple(sgs), network_acls=tuple(nacls),
                       route_tables=tuple(tables), internet=internet,
                       internet_hosts=tuple(ihosts), nat_gateways=tuple(nats),
                       lifecycle=lifecycle, iam=iam, flow_logs=flow_logs, datapath=datapath)
    _check_env_capacity(config)
    _check_internet_overlap(config)
    _allocate(config)  # raises when a subnet or the internet has too few addresses
    _check_iam(config)
    return config


def _parse_lab(t: Any) -> LabSettings:
    _expect(t, dict, "lab", "write it as a [lab] table")
    _check_keys(t, "lab", ["env_cidr", "env_ipv6_cidr", "account_id"])
    account = t.get("account_id", DEFAULT_ACCOUNT_ID)
    _expect(account, str, "lab.account_id", 'write the 12 digits quoted, like "123456789012" '
            "(an account id may start with 0)")
    if not _ACCOUNT_ID.match(account):
        raise LabConfigError("lab.account_id", f"{account!r} is not an AWS account id; write "
                             'exactly 12 digits, like "123456789012"')
    env4 = _network(t.get("env_cidr", DEFAULT_ENV_CIDR), "lab.env_cidr", 4)
    env6 = _network(t.get("env_ipv6_cidr", DEFAULT_ENV_IPV6_CIDR), "lab.env_ipv6_cidr", 6)
    if env4.prefixlen > 30:
        raise LabConfigError("lab.env_cidr", f"{env4} is smaller than one /30; every execution "
                             "environment needs a /30, use a prefix of /30 or shorter")
    if env6.prefixlen > 64:
        raise LabConfigError("lab.env_ipv6_cidr", f"{env6} is smaller than one /64; every "
                             "execution environment needs a /64, use a prefix of /64 or shorter")
    return LabSettings(env_cidr=env4, env_ipv6_cidr=env6, account_id=account)


def _parse_vpc(t: Any) -> Vpc:
    _expect(t, dict, "vpc", "write it as a [vpc] table")
    _check_keys(t, "vpc", ["id", "cidr", "ipv6_cidr"], required=["cidr"])
    cidr = _network(t["cidr"], "vpc.cidr", 4)
    lo, hi = VPC_V4_PREFIX
    if not lo <= cidr.prefixlen <= hi:
        raise LabConfigError("vpc.cidr", f"{cidr}: an AWS VPC's IPv4 block is between /{lo} "
                             f"and /{hi}; pick a prefix length in that range")
    ipv6 = None
    if "ipv6_cidr" in t:
        ipv6 = _network(t["ipv6_cidr"], "vpc.ipv6_cidr", 6)
        if ipv6.prefixlen > 64:
            raise LabConfigError("vpc.ipv6_cidr", f"{ipv6} cannot hold a /64 subnet; AWS gives "
                                 "a VPC a /56, use a prefix of /64 or shorter")
    if "id" in t:
        vpc_id = _aws_id(t["id"], "vpc.id", _VPC_ID, "vpc", "a VPC")
    else:  # derived from the blocks, so IAM conditions on lambda:VpcIds see a stable id
        vpc_id = "vpc-" + _digest("vpc", str(cidr), str(ipv6 or "")).hex()[:17]
    return Vpc(cidr=cidr, ipv6_cidr=ipv6, id=vpc_id)


def _aws_id(value: Any, field: str, pattern, prefix: str, what: str) -> str:
    example = f"{prefix}-0a1b2c3d4e5f60718"
    _expect(value, str, field, f'like "{example}"')
    if not pattern.match(value):
        raise LabConfigError(field, f"{value!r} is not {what} id; write '{prefix}-' followed "
                             f"by 8 or 17 lower-case hex digits, like {example}")
    return value


def _parse_subnets(tables, vpc: Vpc, lab: LabSettings) -> List[Subnet]:
    subnets: List[Subnet] = []
    for i, t in enumerate(tables):
        f = f"subnets[{i}]"
        _check_keys(t, f, ["id", "cidr", "ipv6_cidr"], required=["id", "cidr"])
        sid = _expect(t["id"], str, f"{f}.id", 'like "subnet-a"')
        if not _SUBNET_ID.match(sid):
            raise LabConfigError(f"{f}.id", f"{sid!r} is not a subnet id; write 'subnet-' "
                                 "followed by lower-case letters, digits or '-' (subnet-a)")
        for other in subnets:
            if other.id == sid:
                raise LabConfigError(f"{f}.id", f"duplicate subnet id {sid!r}; every subnet "
                                     "needs its own id")
        cidr = _network(t["cidr"], f"{f}.cidr", 4)
        lo, hi = SUBNET_V4_PREFIX
        if not lo <= cidr.prefixlen <= hi:
            raise LabConfigError(f"{f}.cidr", f"{cidr}: AWS subnets are between /{lo} and "
                                 f"/{hi}; pick a prefix length in that range")
        if not cidr.subnet_of(vpc.cidr):
            raise LabConfigError(f"{f}.cidr", f"{cidr} is not inside vpc.cidr {vpc.cidr}; a "
                                 "subnet must be carved out of its VPC's block")
        if _range_overlap(cidr, lab.env_cidr):
            raise LabConfigError(f"{f}.cidr", f"{cidr} overlaps lab.env_cidr "
                                 f"{lab.env_cidr} (the execution environments' links); move "
                                 "the subnet or set [lab] env_cidr to another range")
        ipv6 = None
        if "ipv6_cidr" in t:
            ipv6 = _network(t["ipv6_cidr"], f"{f}.ipv6_cidr", 6)
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
            if _range_overlap(ipv6, lab.env_ipv6_cidr):
                raise LabConfigError(f"{f}.ipv6_cidr", f"{ipv6} overlaps lab.env_ipv6_cidr "
                                     f"{lab.env_ipv6_cidr}; move the subnet or set [lab] "
                                     "env_ipv6_cidr to another range")
        for j, other in enumerate(subnets):
            if cidr.overlaps(other.cidr):
                raise LabConfigError(f"{f}.cidr", f"{cidr} overlaps subnets[{j}] "
                                     f"({other.id}, {other.cidr}); subnets of a VPC must not "
                                     "overlap")
            if ipv6 is not None and other.ipv6_cidr is not None and ipv6 == other.ipv6_cidr:
                raise LabConfigError(f"{f}.ipv6_cidr", f"{ipv6} is already used by subnets[{j}] "
                                     f"({other.id}); give each subnet its own /64")
        subnets.append(Subnet(id=sid, cidr=cidr, ipv6_cidr=ipv6))
    return subnets


def _string_list(value: Any, field: str, example: str) -> List[str]:
    _expect(value, list, field, f"write it as an array like {example}")
    for j, item in enumerate(value):
        _expect(item, str, f"{field}[{j}]", f"write it as an array of strings like {example}")
    return list(value)


def _unique_name(value: Any, field: str, what: str, example: str, taken: List[str]) -> str:
    """A function's or host's name: it becomes part of namespace names, so it is short and
    plain, and two of a kind may not share one."""
    name = _expect(value, str, field, f'like "{example}"')
    if not _NAME.match(name):
        raise LabConfigError(field, f"{name!r}: a {what} name is 1-32 characters from a-z, 0-9 "
                             "and '-', starting with a letter")
    if name in taken:
        raise LabConfigError(field, f"duplicate {what} name {name!r}; give each {what} its "
                             "own name")
    return name


def _parse_functions(tables, subnets: List[Subnet], groups: List[SecurityGroup],
                     iam: Optional[Dict[str, Any]]) -> List[Function]:
    by_id = {s.id: s for s in subnets}
    known_ids = ", ".join(by_id) or "(none defined)"
    sg_ids = [g.id for g in groups]
    roles = list((iam or {}).get("roles") or {})
    functions: List[Function] = []
    for i, t in enumerate(tables):
        f = f"functions[{i}]"
        _check_keys(t, f, ["name", "environments", "vpc_config", "role"],
                    required=["name", "environments"])
        name = _unique_name(t["name"], f"{f}.name", "function", "fn-a",
                            [fn.name for fn in functions])
        envs = _string_list(t["environments"], f"{f}.environments", '["tap", "veth"]')
        if not envs:
            raise LabConfigError(f"{f}.environments", "empty; list one entry per execution "
                                 'environment, each "tap" or "veth" (e.g. ["tap"])')
        for j, kind in enumerate(envs):
            if kind not in ATTACH_KINDS:
                raise LabConfigError(f"{f}.environments[{j}]", f"{kind!r} is not an attach "
                                     'kind; use "tap" or "veth"')
        role = None
        if "role" in t:
            role = _expect(t["role"], str, f"{f}.role", 'the name of a role under [iam.roles], '
                           'like "lambda-vpc"')
            if role not in roles:
                where = (f"define it under [iam.roles] or use one of: {', '.join(roles)}"
                         if roles else "define it under [iam.roles] (the config has no roles)")
                raise LabConfigError(f"{f}.role", "InvalidParameterValueException: The role "
                                     f"defined for the function cannot be assumed by Lambda: "
                                     f"role {role!r} does not exist{_did_you_mean(role, roles)}; "
                                     + where)
        if "vpc_config" not in t:  # a function outside any VPC: no ENI, no VPC access
            functions.append(Function(name=name, environments=tuple(envs), vpc_config=None,
                                      role=role))
            continue

        vf = f"{f}.vpc_config"
        vc = _expect(t["vpc_config"], dict, vf, "write it as a [functions.vpc_config] table")
        _check_keys(vc, vf, ["subnet_ids", "security_group_ids", "ipv6_allowed_for_dual_stack"],
                    required=["subnet_ids", "security_group_ids"])
        subnet_ids = _string_list(vc["subnet_ids"], f"{vf}.subnet_ids", '["subnet-a"]')
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
        sgs = _string_list(vc["security_group_ids"], f"{vf}.security_group_ids",
                           '["sg-0a1b2c3d"]')
        if not 1 <= len(sgs) <= MAX_SECURITY_GROUPS:
            raise LabConfigError(f"{vf}.security_group_ids", f"{len(sgs)} security groups; "
                                 f"list 1 to {MAX_SECURITY_GROUPS} (Lambda's limit is "
                                 f"{MAX_SECURITY_GROUPS})")
        for j, sg in enumerate(sgs):
            if not _SG_ID.match(sg):
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
                                     f"{sg!r} does not exist{_did_you_mean(sg, sg_ids)}; define "
                                     f"it as a [[security_groups]] table{where}")
        ipv6_ok = vc.get("ipv6_allowed_for_dual_stack", False)
        _expect(ipv6_ok, bool, f"{vf}.ipv6_allowed_for_dual_stack", "write true or false")
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
                                         ipv6_allowed_for_dual_stack=ipv6_ok), role=role))
    return functions


def _did_you_mean(value: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _reserved(net: IPNet, addr) -> bool:
    """AWS reserves the first four addresses and the last one of every subnet (for IPv4: the
    network, the VPC router, DNS, future use, and the broadcast address)."""
    offset = int(addr) - int(net.network_address)
    return offset < RESERVED_AT_START or addr == net.broadcast_address


def _parse_hosts(tables, subnets: List[Subnet]) -> List[Host]:
    by_id = {s.id: s for s in subnets}
    known_ids = ", ".join(by_id) or "(none defined)"
    hosts: List[Host] = []
    for i, t in enumerate(tables):
        f = f"hosts[{i}]"
        _check_keys(t, f, ["name", "subnet", "ipv4", "ipv6"], required=["name", "subnet"])
        name = _unique_name(t["name"], f"{f}.name", "host", "server", [h.name for h in hosts])
        sid = _expect(t["subnet"], str, f"{f}.subnet", 'like "subnet-a"')
        if sid not in by_id:
            raise LabConfigError(f"{f}.subnet", f"subnet {sid!r} is not defined; define it "
                                 f"under [[subnets]] or use one of: {known_ids}")
        subnet = by_id[sid]
        ipv4 = ipv6 = None
        if "ipv4" in t:
            ipv4 = _address(t["ipv4"], f"{f}.ipv4", 4)
            _check_fixed(ipv4, subnet.cidr, sid, f"{f}.ipv4", [(j, h.ipv4) for j, h in
                                                                enumerate(hosts)])
        if "ipv6" in t:
            if not subnet.dual_stack:
                raise LabConfigError(f"{f}.ipv6", f"subnet {sid!r} has no IPv6 block; remove "
                                     "ipv6 or give the subnet an ipv6_cidr")
            ipv6 = _address(t["ipv6"], f"{f}.ipv6", 6)
            _check_fixed(ipv6, subnet.ipv6_cidr, sid, f"{f}.ipv6", [(j, h.ipv6) for j, h in
                                                                     enumerate(hosts)])
        hosts.append(Host(name=name, subnet=sid, ipv4=ipv4, ipv6=ipv6))
    return hosts


def _check_fixed(addr, net: IPNet, sid: str, field: str, taken) -> None:
    if addr not in net:
        raise LabConfigError(field, f"{addr} is outside its subnet {sid} ({net}); pick an "
                             "address inside it or leave the field out to get one assigned")
    if _reserved(net, addr):
        first = net.network_address + RESERVED_AT_START
        raise LabConfigError(field, f"{addr} is reserved: AWS reserves the first four and the "
                             f"last address of every subnet; use {first} or later (and not "
                             f"{net.broadcast_address})")
    for j, other in taken:
        if other == addr:
            raise LabConfigError(field, f"{addr} is already hosts[{j}]'s address; give each "
                                 "host its own address or leave the field out")


# ---- security groups, network ACLs, routes, NAT gateways, the internet -------------------------
_PORT_PROTOCOLS = ("tcp", "udp")


def _protocol(value: Any, field: str, allowed: Sequence[str]) -> str:
    """A rule's protocol by name; "-1" is AWS's spelling of "all"."""
    names = ", ".join(f'"{p}"' for p in allowed)
    _expect(value, str, field, f"write one of {names}")
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
        port = _expect(t[key], int, f"{f}.{key}", "write a port number 0..65535")
        if not 0 <= port <= 65535:
            raise LabConfigError(f"{f}.{key}", f"{port} is not a port; use 0..65535")
        ports.append(port)
    if ports[0] > ports[1]:
        raise LabConfigError(f"{f}.to_port", f"{ports[1]} is below from_port {ports[0]}; a range "
                             "is from_port..to_port, so swap them")
    return ports[0], ports[1]


def _rule_network(value: Any, field: str) -> IPNet:
    """A rule's ``cidr``: any IPv4 or IPv6 network. It is a match, not an address the lab
    uses, so it may lie outside the benchmark ranges ("0.0.0.0/0", "::/0")."""
    _expect(value, str, field, 'write it as a quoted CIDR like "0.0.0.0/0" or "198.18.2.0/24"')
    if "/" not in value:
        raise LabConfigError(field, f"{value!r} has no prefix length; write a CIDR like "
                             '"198.18.2.0/24" (one address is /32, or /128 for IPv6)')
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise LabConfigError(field, f"{value!r} is not an IPv4 or IPv6 CIDR; write it like "
                             '"198.18.2.0/24" or "::/0"') from None
    raise LabConfigError(field, f"{value!r} has host bits set; the network is \"{net}\", write "
                         "that (AWS refuses a CIDR with host bits too)")


def _description(t: Dict[str, Any], field: str) -> str:
    return _expect(t.get("description", ""), str, field, 'write it as a quoted string')


def _parse_security_groups(tables, vpc: Vpc) -> List[SecurityGroup]:
    """AWS gives a new security group one egress rule allowing all IPv4 traffic, plus one for
    all IPv6 traffic when the VPC has an IPv6 block; an absent ``egress`` key means those."""
    groups: List[SecurityGroup] = []
    for i, t in enumerate(tables):
        f = f"security_groups[{i}]"
        _check_keys(t, f, ["id", "description", "egress"], required=["id"])
        sg_id = _expect(t["id"], str, f"{f}.id", 'like "sg-0a1b2c3d"')
        if not _SG_ID.match(sg_id):
            raise LabConfigError(f"{f}.id", f"{sg_id!r} is not a security group id; write 'sg-' "
                                 "followed by lower-case letters or digits (sg-0a1b2c3d)")
        for j, other in enumerate(groups):
            if other.id == sg_id:
                raise LabConfigError(f"{f}.id", f"duplicate security group id {sg_id!r} (also "
                                     f"security_groups[{j}]); give each group its own id")
        if "egress" not in t:
            rules = [RulePlan(0, "allow", "all", "0.0.0.0/0")]
            if vpc.ipv6_cidr is not None:
                rules.append(RulePlan(0, "allow", "all", "::/0"))
        else:
            rules = _parse_sg_rules(t["egress"], f"{f}.egress")
        groups.append(SecurityGroup(id=sg_id, egress=tuple(rules),
                                    description=_description(t, f"{f}.description")))
    return groups


def _parse_sg_rules(value: Any, f: str) -> List[RulePlan]:
    _expect(value, list, f, "write it as an array of tables, e.g. egress = [{protocol = "
            '"tcp", from_port = 443, to_port = 443, cidr = "0.0.0.0/0"}] (or [] for none)')
    if len(value) > MAX_SG_RULES:
        raise LabConfigError(f, f"{len(value)} rules; AWS allows at most {MAX_SG_RULES} egress "
                             "rules per security group (RulesPerSecurityGroupLimitExceeded): "
                             "merge port ranges or CIDRs, or split the rules over groups")
    rules: List[RulePlan] = []
    for j, r in enumerate(value):
        rf = f"{f}[{j}]"
        _expect(r, dict, rf, "write each rule as a table {protocol = ..., cidr = ...}")
        _check_keys(r, rf, ["protocol", "from_port", "to_port", "cidr", "description"],
                    required=["protocol", "cidr"])
        proto = _protocol(r["protocol"], f"{rf}.protocol", ("tcp", "udp", "all"))
        lo, hi = _ports(r, rf, proto)
        cidr = _rule_network(r["cidr"], f"{rf}.cidr")
        rule = RulePlan(number=0, action="allow", protocol=proto, cidr=str(cidr), from_port=lo,
                        to_port=hi, description=_description(r, f"{rf}.description"))
        for k, other in enumerate(rules):
            if dataclasses.replace(other, description="") == \
                    dataclasses.replace(rule, description=""):
                raise LabConfigError(rf, f"InvalidPermission.Duplicate: the same rule as {f}[{k}]; "
                                     "remove one of them")
        rules.append(rule)
    return rules


def _parse_network_acls(tables, subnets: List[Subnet]) -> List[NetworkAcl]:
    """Network ACLs are stateless: each direction is checked on its own, rules in ascending
    number, the first match decides, and a packet matching nothing is denied (the "*" rule).
    A subnet belongs to exactly one ACL; subnets listed in none use the VPC's default ACL,
    which allows everything."""
    known = [s.id for s in subnets]
    owner: Dict[str, str] = {}
    acls: List[NetworkAcl] = []
    for i, t in enumerate(tables):
        f = f"network_acls[{i}]"
        _check_keys(t, f, ["id", "subnet_ids", "ingress", "egress"], required=["id"])
        acl_id = _expect(t["id"], str, f"{f}.id", 'like "acl-0a1b2c3d"')
        if not _ACL_ID.match(acl_id):
            raise LabConfigError(f"{f}.id", f"{acl_id!r} is not a network ACL id; write 'acl-' "
                                 "followed by lower-case letters, digits or '-' (acl-0a1b2c3d)")
        if acl_id in [a.id for a in acls]:
            raise LabConfigError(f"{f}.id", f"duplicate network ACL id {acl_id!r}; give each "
                                 "ACL its own id")
        sids = _associations(t, f, known, owner, acl_id, "network ACL")
        directions = {}
        for direction in ("ingress", "egress"):
            directions[direction] = _parse_nacl_rules(t.get(direction, []), f"{f}.{direction}")
        acls.append(NetworkAcl(id=acl_id, subnet_ids=tuple(sids), ingress=directions["ingress"],
                               egress=directions["egress"]))
    return acls


def _associations(t: Dict[str, Any], f: str, known: List[str], owner: Dict[str, str],
                  owner_id: str, what: str) -> List[str]:
    """``subnet_ids`` of a network ACL or route table: defined subnets, each associated with
    at most one ACL / one route table (``owner`` remembers which, across tables)."""
    sids = _string_list(t.get("subnet_ids", []), f"{f}.subnet_ids", '["subnet-a"]')
    for j, sid in enumerate(sids):
        sf = f"{f}.subnet_ids[{j}]"
        if sid not in known:
            raise LabConfigError(sf, f"subnet {sid!r} is not defined{_did_you_mean(sid, known)}; "
                                 f"define it under [[subnets]] or use one of: "
                                 f"{', '.join(known) or '(none defined)'}")
        if sid in sids[:j]:
            raise LabConfigError(sf, f"subnet {sid!r} is listed twice; list each subnet once")
        if sid in owner:
            raise LabConfigError(sf, f"subnet {sid!r} is already associated with {what} "
                                 f"{owner[sid]!r}; a subnet has exactly one {what}, remove it "
                                 "from one of them")
        owner[sid] = owner_id
    return sids


def _parse_nacl_rules(value: Any, f: str) -> Tuple[RulePlan, ...]:
    _expect(value, list, f, "write it as an array of tables, e.g. [{rule_number = 100, "
            'protocol = "all", action = "allow", cidr = "0.0.0.0/0"}]')
    if len(value) > MAX_NACL_RULES:
        raise LabConfigError(f, f"{len(value)} rules; AWS allows at most {MAX_NACL_RULES} rules "
                             "per direction in a network ACL (20 unless the quota is raised)")
    rules: List[RulePlan] = []
    numbers: Dict[int, int] = {}
    for j, r in enumerate(value):
        rf = f"{f}[{j}]"
        _expect(r, dict, rf, "write each rule as a table {rule_number = ..., protocol = ..., "
                "action = ..., cidr = ...}")
        _check_keys(r, rf, ["rule_number", "protocol", "action", "cidr", "from_port", "to_port"],
                    required=["rule_number", "protocol", "action", "cidr"])
        number = _expect(r["rule_number"], int, f"{rf}.rule_number", "write an integer like 100")
        lo, hi = NACL_RULE_NUMBERS
        if not lo <= number <= hi:
            raise LabConfigError(f"{rf}.rule_number", f"{number} is outside {lo}..{hi}; AWS "
                                 "keeps 32767 and up for itself (the final \"*\" deny rule)")
        if number in numbers:
            raise LabConfigError(f"{rf}.rule_number", f"NetworkAclEntryAlreadyExists: rule "
                                 f"number {number} is already used by {f}[{numbers[number]}]; "
                                 "rule numbers are unique per direction, pick another (leave "
                                 "gaps such as 100, 110, 120 to insert rules later)")
        numbers[number] = j
        proto = _protocol(r["protocol"], f"{rf}.protocol", ("tcp", "udp", "icmp", "all"))
        action = _expect(r["action"], str, f"{rf}.action", 'write "allow" or "deny"')
        if action not in ("allow", "deny"):
            raise LabConfigError(f"{rf}.action", f"{action!r} is not an action; write \"allow\" "
                                 "or \"deny\"")
        from_port, to_port = _ports(r, rf, proto)
        cidr = _rule_network(r["cidr"], f"{rf}.cidr")
        rules.append(RulePlan(number=number, action=action, protocol=proto, cidr=str(cidr),
                              from_port=from_port, to_port=to_port))
    return tuple(sorted(rules, key=lambda rule: rule.number))


def _parse_internet(t: Any, vpc: Vpc) -> Internet:
    """The stand-in internet: an IPv4 block in the benchmark range behind an internet gateway.
    AWS attaches at most one internet gateway to a VPC, so there is one of each."""
    _expect(t, dict, "internet", "write it as an [internet] table")
    _check_keys(t, "internet", ["cidr", "gateway_id"])
    cidr = _network(t.get("cidr", DEFAULT_INTERNET_CIDR), "internet.cidr", 4)
    if cidr.prefixlen > 30:
        raise LabConfigError("internet.cidr", f"{cidr} has no room for the gateway and a host; "
                             "use a /30 or larger block (the default is "
                             f"{DEFAULT_INTERNET_CIDR})")
    if cidr.overlaps(vpc.cidr):
        raise LabConfigError("internet.cidr", f"{cidr} overlaps vpc.cidr {vpc.cidr}; the "
                             "internet lies outside the VPC, pick another block (the default "
                             f"is {DEFAULT_INTERNET_CIDR})")
    if "gateway_id" in t:
        gw = _aws_id(t["gateway_id"], "internet.gateway_id", _IGW_ID, "igw", "an internet gateway")
    else:
        gw = "igw-" + _digest("igw", vpc.id).hex()[:17]
    return Internet(cidr=cidr, gateway_id=gw)


def _check_internet_overlap(config: LabConfig) -> None:
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


def _parse_nat_gateways(tables, subnets: List[Subnet],
                        internet: Optional[Internet]) -> List[NatGateway]:
    known = [s.id for s in subnets]
    nats: List[NatGateway] = []
    for i, t in enumerate(tables):
        f = f"nat_gateways[{i}]"
        _check_keys(t, f, ["id", "subnet_id", "idle_timeout"], required=["id", "subnet_id"])
        nat_id = _aws_id(t["id"], f"{f}.id", _NAT_ID, "nat", "a NAT gateway")
        if nat_id in [n.id for n in nats]:
            raise LabConfigError(f"{f}.id", f"duplicate NAT gateway id {nat_id!r}; give each "
                                 "NAT gateway its own id")
        sid = _expect(t["subnet_id"], str, f"{f}.subnet_id", 'like "subnet-public"')
        if sid not in known:
            raise LabConfigError(f"{f}.subnet_id", f"InvalidSubnetID.NotFound: subnet {sid!r} "
                                 f"is not defined{_did_you_mean(sid, known)}; define it under "
                                 f"[[subnets]] or use one of: {', '.join(known) or '(none)'}")
        if internet is None:
            raise LabConfigError(f"{f}.subnet_id", "a NAT gateway needs a public subnet, and "
                                 "the lab has no internet gateway; add an [internet] section "
                                 "and a route table sending 0.0.0.0/0 from this subnet to it")
        timeout = t.get("idle_timeout", NAT_IDLE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise LabConfigError(f"{f}.idle_timeout", f"{timeout!r}: write a number of seconds "
                                 f"> 0 (AWS's NAT gateway drops idle connections after "
                                 f"{NAT_IDLE_TIMEOUT:g} s; a smaller value shortens tests)")
        nats.append(NatGateway(id=nat_id, subnet_id=sid, idle_timeout=float(timeout)))
    return nats


def _parse_route_tables(tables, vpc: Vpc, subnets: List[Subnet], internet: Optional[Internet],
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
        _check_keys(t, f, ["id", "subnet_ids", "routes"], required=["id"])
        rtb_id = _expect(t["id"], str, f"{f}.id", 'like "rtb-private"')
        if not _RTB_ID.match(rtb_id):
            raise LabConfigError(f"{f}.id", f"{rtb_id!r} is not a route table id; write 'rtb-' "
                                 "followed by lower-case letters, digits or '-' (rtb-private)")
        if rtb_id in [r.id for r in out]:
            raise LabConfigError(f"{f}.id", f"duplicate route table id {rtb_id!r}; give each "
                                 "route table its own id")
        sids = _associations(t, f, known, owner, rtb_id, "route table")
        value = t.get("routes", [])
        _expect(value, list, f"{f}.routes", "write it as an array of tables, e.g. routes = "
                '[{destination = "0.0.0.0/0", target = "nat-0a1b2c3d"}]')
        routes: List[RoutePlan] = []
        for j, r in enumerate(value):
            rf = f"{f}.routes[{j}]"
            _expect(r, dict, rf, "write each route as a table {destination = ..., target = ...}")
            _check_keys(r, rf, ["destination", "target"], required=["destination", "target"])
            dest = _rule_network(r["destination"], f"{rf}.destination")
            if dest.version != 4:
                raise LabConfigError(f"{rf}.destination", f"{dest} is IPv6; NAT gateways and "
                                     "this lab's internet are IPv4 only, write an IPv4 CIDR "
                                     'like "0.0.0.0/0"')
            if dest.subnet_of(vpc.cidr):
                raise LabConfigError(f"{rf}.destination", f"InvalidParameterValue: {dest} lies "
                                     f"inside the VPC's block {vpc.cidr}, which the implicit "
                                     "local route always carries; route only addresses outside "
                                     'the VPC (e.g. "0.0.0.0/0")')
            if any(other.destination == str(dest) for other in routes):
                raise LabConfigError(f"{rf}.destination", f"RouteAlreadyExists: {dest} already "
                                     "has a route in this table; keep one")
            target = _expect(r["target"], str, f"{rf}.target", 'a NAT gateway id ("nat-...") '
                             "or the internet gateway id")
            routes.append(RoutePlan(destination=str(dest), target=target,
                                    kind=_route_kind(target, f"{rf}.target", internet, nat_ids)))
        out.append(RouteTable(id=rtb_id, subnet_ids=tuple(sids), routes=tuple(routes)))
    return out


def _route_kind(target: str, field: str, internet: Optional[Internet],
                nat_ids: List[str]) -> str:
    if target.startswith("nat-"):
        if target not in nat_ids:
            where = (f"use one of: {', '.join(nat_ids)}" if nat_ids
                     else "add a [[nat_gateways]] table with that id")
            raise LabConfigError(field, f"InvalidNatGatewayID.NotFound: The natGateway ID "
                                 f"{target!r} does not exist{_did_you_mean(target, nat_ids)}; "
                                 + where)
        return "nat"
    if target.startswith("igw-"):
        if internet is None:
            raise LabConfigError(field, f"InvalidGatewayID.NotFound: The gateway ID {target!r} "
                                 "does not exist: the lab has no internet gateway; add an "
                                 "[internet] section (with gateway_id = "
                                 f"{target!r} to keep this route as written)")
        if target != internet.gateway_id:
            raise LabConfigError(field, f"InvalidGatewayID.NotFound: The gateway ID {target!r} "
                                 f"does not exist; the lab's internet gateway is "
                                 f"{internet.gateway_id!r} (set [internet] gateway_id to "
                                 "choose it)")
        return "igw"
    raise LabConfigError(field, f"{target!r} is not a route target here; use a NAT gateway id "
                         "(\"nat-...\") or the internet gateway id (\"igw-...\")")


def _check_nat_gateways_public(nats: List[NatGateway], tables: List[RouteTable],
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


def _parse_internet_hosts(tables, internet: Optional[Internet]) -> List[InternetHost]:
    hosts: List[InternetHost] = []
    for i, t in enumerate(tables):
        f = f"internet_hosts[{i}]"
        _check_keys(t, f, ["name", "ipv4"], required=["name"])
        name = _unique_name(t["name"], f"{f}.name", "internet host", "web",
                            [h.name for h in hosts])
        if internet is None:
            raise LabConfigError(f, "internet hosts live on the lab's internet; add an "
                                 "[internet] section (its defaults are fine)")
        ipv4 = None
        if "ipv4" in t:
            ipv4 = _address(t["ipv4"], f"{f}.ipv4", 4)
            net = internet.cidr
            if ipv4 not in net:
                raise LabConfigError(f"{f}.ipv4", f"{ipv4} is outside internet.cidr {net}; pick "
                                     "an address inside it or leave the field out")
            if ipv4 in (net.network_address, net.network_address + 1, net.broadcast_address):
                raise LabConfigError(f"{f}.ipv4", f"{ipv4} is the internet's network, gateway "
                                     f"or broadcast address; use {net.network_address + 2} or "
                                     "later")
            for j, other in enumerate(hosts):
                if other.ipv4 == ipv4:
                    raise LabConfigError(f"{f}.ipv4", f"{ipv4} is already internet_hosts[{j}]'s "
                                         "address; give each host its own or leave it out")
        hosts.append(InternetHost(name=name, ipv4=ipv4))
    return hosts


def _parse_lifecycle(t: Any) -> LifecyclePlan:
    """``[lifecycle]``: a profile's three delays, each overridable, and the scale-out knobs."""
    _expect(t, dict, "lifecycle", "write it as a [lifecycle] table")
    _check_keys(t, "lifecycle", ["profile", "eni_create_delay", "inactive_after",
                                 "eni_delete_delay", "ports_per_eni", "high_water",
                                 "max_enis_per_key", "max_connections_per_environment"])
    profile = _expect(t.get("profile", "lab"), str, "lifecycle.profile", 'write "lab" or "aws"')
    if profile not in LIFECYCLE_PROFILES:
        raise LabConfigError("lifecycle.profile", f"{profile!r} is not a profile; write \"lab\" "
                             "(short delays) or \"aws\" (the documented ones)")
    delays = {}
    for key, default in zip(("eni_create_delay", "inactive_after", "eni_delete_delay"),
                            LIFECYCLE_PROFILES[profile]):
        v = t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise LabConfigError(f"lifecycle.{key}", f"{v!r}: write a number of seconds > 0 "
                                 f"(profile {profile!r} uses {default:g})")
        delays[key] = float(v)
    ports = _expect(t.get("ports_per_eni", 65000), int, "lifecycle.ports_per_eni",
                    "write an integer 1..65000")
    if not 1 <= ports <= 65000:
        raise LabConfigError("lifecycle.ports_per_eni", f"{ports}: use 1..65000 (an AWS ENI "
                             "carries up to 65,000 connections; fewer shows scale-out sooner)")
    hw = t.get("high_water", 0.8)
    if isinstance(hw, bool) or not isinstance(hw, (int, float)) or \
            not (hw == 0 or 0.5 <= hw <= 0.99):
        raise LabConfigError("lifecycle.high_water", f"{hw!r}: write 0 (off: scale out only "
                             "when every ENI of a key is full, as AWS does) or a fill level "
                             "from 0.5 to 0.99 at which the next ENI is started early")
    cap = _expect(t.get("max_enis_per_key", 8), int, "lifecycle.max_enis_per_key",
                  "write an integer 1..64")
    if not 1 <= cap <= 64:
        raise LabConfigError("lifecycle.max_enis_per_key", f"{cap}: use 1..64")
    per_env = _expect(t.get("max_connections_per_environment", 0), int,
                      "lifecycle.max_connections_per_environment",
                      "write an integer >= 0 (0: no limit)")
    if not 0 <= per_env <= 1_000_000:
        raise LabConfigError("lifecycle.max_connections_per_environment",
                             f"{per_env}: use 0 (no limit) to 1000000")
    return LifecyclePlan(profile=profile, ports_per_eni=ports, high_water=float(hw),
                         max_enis_per_key=cap, max_connections_per_environment=per_env,
                         **delays)


def _parse_flow_logs(t: Any, lab: LabSettings) -> FlowLogsPlan:
    """``[flow_logs]``: on/off, the aggregation interval, the account id of the records."""
    _expect(t, dict, "flow_logs", "write it as a [flow_logs] table")
    _check_keys(t, "flow_logs", ["enabled", "interval", "account_id"])
    enabled = _expect(t.get("enabled", True), bool, "flow_logs.enabled", "write true or false")
    lo, hi = FLOW_LOGS_INTERVAL_RANGE
    interval = t.get("interval", FLOW_LOGS_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int) or \
            not lo <= interval <= hi:
        raise LabConfigError("flow_logs.interval", f"{interval!r}: write a whole number of "
                             f"seconds from {lo} to {hi} (AWS offers 60 or 600; a lab may use "
                             "less to see records sooner)")
    account = t.get("account_id", lab.account_id)
    _expect(account, str, "flow_logs.account_id", 'write the 12 digits quoted, like '
            '"123456789012" (leave it out to use [lab] account_id)')
    if not _ACCOUNT_ID.match(account):
        raise LabConfigError("flow_logs.account_id", f"{account!r} is not an AWS account id; "
                             'write exactly 12 digits, like "123456789012"')
    return FlowLogsPlan(enabled=enabled, interval=interval, account_id=account)




def _parse_cpu_list(t: Dict[str, Any], key: str) -> Tuple[int, ...]:
    field = f"datapath.{key}"
    cpus = t.get(key, [])
    _expect(cpus, list, field, f"write a list of CPU numbers, like {key} = [1]")
    for i, c in enumerate(cpus):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 1024:
            raise LabConfigError(f"{field}[{i}]", f"{c!r}: write a CPU number from 0 "
                                 "(see `nproc` or /proc/cpuinfo)")
    if len(set(cpus)) != len(cpus):
        raise LabConfigError(field, f"{cpus!r} names a CPU twice; list each once")
    return tuple(cpus)


def _parse_datapath(t: Any) -> DatapathPlan:
    """``[datapath]``: the CPUs the data path runs on, its inbound worker's, and its rings'
    depth."""
    _expect(t, dict, "datapath", "write it as a [datapath] table")
    _check_keys(t, "datapath", ["cpus", "ring_frames", "inbound_cpus"])
    frames = t.get("ring_frames", 0)
    if isinstance(frames, bool) or not isinstance(frames, int) or (frames and (
            not RING_FRAMES_MIN <= frames <= RING_FRAMES_MAX or frames % RING_FRAMES_STEP)):
        raise LabConfigError("datapath.ring_frames",
                             f"{frames!r}: write a multiple of {RING_FRAMES_STEP} from "
                             f"{RING_FRAMES_MIN} to {RING_FRAMES_MAX} (frames of 2 KiB per veth "
                             "link; the default is 4096), or leave it out")
    cpus, inbound = _parse_cpu_list(t, "cpus"), _parse_cpu_list(t, "inbound_cpus")
    if inbound and not set(cpus) - set(inbound):
        # The point of the worker is a CPU of its own; an unpinned loop (or one pinned to the
        # worker's CPUs) may share that CPU with it, paying for two threads' locks and
        # wake-ups and gaining nothing.
        raise LabConfigError("datapath.inbound_cpus",
                             f"{list(inbound)!r} needs the loop kept off those CPUs: set "
                             "datapath.cpus to CPUs outside them (like cpus = [1] with "
                             "inbound_cpus = [0]), or leave inbound_cpus out")
    return DatapathPlan(cpus=cpus, ring_frames=frames, inbound_cpus=inbound)


# ---- IAM (hyperplane.labconfig.iam evaluates the policies; imported only when a config has [iam]) -------
def _parse_iam(doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if "iam" not in doc:
        return None
    try:
        return iam.parse_iam_section(doc["iam"], field="iam")
    except iam.IamPolicyError as e:
        raise LabConfigError(e.field, e.message) from None


def _check_iam(config: LabConfig) -> None:
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


def _check_env_capacity(config: LabConfig) -> None:
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


# ---- resolving ---------------------------------------------------------------------------------
EniKey = Tuple[str, frozenset]


def _eni_keys(config: LabConfig) -> List[EniKey]:
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


def _allocate(config: LabConfig) -> _Layout:
    """Addresses inside each subnet: ENIs first (key order), then NAT gateways (IPv4 only),
    then hosts without a fixed address (file order); fixed host addresses and AWS's reserved
    ones are skipped. On the internet: the gateway has the first usable address (.1), NAT
    gateways' public (Elastic) IPs come next, then internet hosts without a fixed address."""
    keys = _eni_keys(config)
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
            free = _free_addresses(net, fixed)
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


def _free_addresses(net: IPNet, skip) -> Iterable:
    first = int(net.network_address) + RESERVED_AT_START
    last = int(net.broadcast_address) - 1
    cls = type(net.network_address)
    n = first
    while n <= last:
        addr = cls(n)
        if addr not in skip:
            yield addr
        n += 1


def _digest(*parts: str) -> bytes:
    """sha256 over NUL-separated parts: stable across runs and machines."""
    return hashlib.sha256("\0".join(parts).encode()).digest()


def eni_id(lab_name: str, subnet_id: str, security_groups: Iterable[str]) -> str:
    """``eni-`` + 17 hex digits, like AWS's, derived from the lab and the ENI's key so the same
    lab always gets the same ids."""
    return "eni-" + _digest(lab_name, subnet_id, *sorted(security_groups)).hex()[:17]


def lab_mac(lab_name: str, kind: str, index: int, taken: Optional[set] = None) -> str:
    """A locally administered unicast MAC ``02:68:70:xx:xx:xx`` (0x68 0x70 = "hp"), derived
    from (lab, kind, index). ``taken`` avoids a (rare) repeat inside one lab."""
    salt = 0
    while True:
        parts = [lab_name, kind, str(index)] + ([str(salt)] if salt else [])
        mac = "02:68:70:" + ":".join(f"{b:02x}" for b in _digest(*parts)[:3])
        if taken is None or mac not in taken:
            if taken is not None:
                taken.add(mac)
            return mac
        salt += 1


def resolve(config: LabConfig, name: str) -> Plan:
    """Lay the lab out: namespaces, interface names, MACs and addresses. Pure and deterministic
    (no I/O), so the same (config, name) always gives the same plan."""
    validate_lab_name(name)
    prefix = f"hp-{name}-"
    layout = _allocate(config)
    macs: set = set()

    subnet_plans: List[SubnetPlan] = []
    for i, s in enumerate(config.subnets):
        subnet_plans.append(SubnetPlan(
            id=s.id, cidr=str(s.cidr), ipv6_cidr=str(s.ipv6_cidr) if s.ipv6_cidr else None,
            bridge=f"br{i}", router4=str(s.cidr.network_address + 1),
            router6=str(s.ipv6_cidr.network_address + 1) if s.ipv6_cidr else None))
    sp = {s.id: s for s in subnet_plans}

    enis: Dict[EniKey, EniPlan] = {}
    for i, key in enumerate(_eni_keys(config)):
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
            role=fn.role, envs=names))

    hosts: List[HostPlan] = []
    for i, h in enumerate(config.hosts):
        s = sp[h.subnet]
        v6 = layout.host_v6[h.name]
        hosts.append(HostPlan(
            name=h.name, netns=f"{prefix}host-{h.name}", ifname="eth0", subnet=h.subnet,
            ipv4=f"{layout.host_v4[h.name]}/{ipaddress.ip_network(s.cidr).prefixlen}",
            ipv6=f"{v6}/64" if v6 else None, gw4=s.router4, gw6=s.router6 if v6 else None,
            fabric_ifname=f"host{i}", mac=None))

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
                gw4=internet.router4, gw6=None, fabric_ifname=f"ihost{i}", mac=None))

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
        # through JSON once, so the plan equals its own round trip (tuples become lists)
        iam=json.loads(json.dumps(config.iam)) if config.iam is not None else None)
