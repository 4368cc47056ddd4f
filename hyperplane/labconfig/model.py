"""The lab config's model: the limits AWS documents, the lab's defaults, and the frozen
dataclasses a lab file parses into (:class:`LabConfig` and its parts).

The settings sections (``[lifecycle]``, ``[flow_logs]``, ``[datapath]``, ``[metrics]``) and
the rules and routes of security groups, network ACLs and route tables go into the plan
(:mod:`hyperplane.labconfig.plan`) as they are, so their classes (:class:`LifecyclePlan`,
:class:`FlowLogsPlan`, :class:`DatapathPlan`, :class:`MetricsPlan`, :class:`RulePlan`,
:class:`RoutePlan`) live here
too, below the config classes that hold them.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import sys
from typing import Any, Dict, Optional, Tuple, Union

from hyperplane.engine.config import EngineConfig, Timeouts

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
IPNet = Union[IPv4Net, IPv6Net]

#: RFC 2544 / RFC 5180 benchmarking ranges: the only addresses a lab may use.
BENCHMARK_V4 = ipaddress.IPv4Network("198.18.0.0/15")
BENCHMARK_V6 = ipaddress.IPv6Network("2001:2::/48")

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
#: The region and Availability Zone id a lab's flow logs name (the region IAM checks assume).
FLOW_LOGS_REGION = "us-east-1"
FLOW_LOGS_AZ_ID = "use1-az1"
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

#: The code a function runs (hyperplane.labconfig.parse_code). Lambda's custom runtimes run the
#: ``bootstrap`` of the code folder; Python runtimes import the handler's module. A lab runs a
#: python3.N function with the machine's own interpreter, so the default is that interpreter's.
CUSTOM_RUNTIMES = ("provided.al2023", "provided.al2")
DEFAULT_RUNTIME = f"python3.{sys.version_info.minor}"
#: Lambda's default handlers: the console's Python blueprint, and the custom-runtime tutorial's
#: ``function.handler`` (a name the bootstrap reads from _HANDLER; Lambda does not look at it).
DEFAULT_PYTHON_HANDLER = "lambda_function.lambda_handler"
DEFAULT_CUSTOM_HANDLER = "function.handler"
#: Lambda CreateFunction: Handler matches [^\s]+, at most 128 characters.
MAX_HANDLER = 128
#: Lambda CreateFunction: Timeout 1..900 seconds (default 3), MemorySize 128..10240 MB (128).
TIMEOUT_RANGE = (1, 900)
DEFAULT_TIMEOUT = 3
MEMORY_SIZE_RANGE = (128, 10240)
DEFAULT_MEMORY_SIZE = 128
#: Lambda environment variables: keys match [a-zA-Z]([a-zA-Z0-9_])+; the keys and values
#: together may not exceed 4 KB; these keys are the runtime's own and cannot be set.
MAX_ENVIRONMENT_BYTES = 4096
RESERVED_ENVIRONMENT_KEYS = (
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR")

#: Lifecycle profiles, in seconds: (eni_create_delay, inactive_after, eni_delete_delay).
#: "lab" is short enough to watch; "aws" is what the Lambda documentation says: a function idle
#: for 30 days has its ENI reclaimed and goes Inactive; after its VPC config is removed the ENI is
#: deleted within 20 minutes. AWS documents no number for ENI creation (the function is Pending
#: "while Lambda creates the network interface"); 90 s is an observed, typical figure.
LIFECYCLE_PROFILES = {
    "lab": (1.0, 600.0, 10.0),
    "aws": (90.0, 30 * 86400.0, 20 * 60.0),
}


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


#: Environment variables as the frozen model keeps them: (key, value) pairs in file order.
Environment = Tuple[Tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Function:
    """``[[functions]]``: one entry in ``environments`` per execution environment.
    ``vpc_config`` None = a function not attached to a VPC; ``role`` names an execution role
    under ``[iam.roles]`` (None = no role checks).

    What it runs: ``runtime`` (a CUSTOM_RUNTIMES entry or python3.N), ``handler``, ``code``
    (the absolute path of its code folder; None = the built-in hello-world handler, Python
    runtimes only), ``timeout`` in seconds, ``memory_size`` in MB (shown, not enforced) and
    ``environment``, its environment variables."""
    name: str
    environments: Tuple[str, ...]
    vpc_config: Optional[FunctionVpcConfig]
    role: Optional[str] = None
    runtime: str = DEFAULT_RUNTIME
    handler: str = DEFAULT_PYTHON_HANDLER
    code: Optional[str] = None
    timeout: int = DEFAULT_TIMEOUT
    memory_size: int = DEFAULT_MEMORY_SIZE
    environment: Environment = ()


@dataclasses.dataclass(frozen=True)
class Host:
    """``[[hosts]]``: a machine in the VPC (a server the functions talk to). ``command`` is
    the argv of a service the lab runs in it (None: none), with ``environment`` added."""
    name: str
    subnet: str
    ipv4: Optional[ipaddress.IPv4Address] = None
    ipv6: Optional[ipaddress.IPv6Address] = None
    command: Optional[Tuple[str, ...]] = None
    environment: Environment = ()


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
    gateway); ``command`` and ``environment`` as a :class:`Host`'s."""
    name: str
    ipv4: Optional[ipaddress.IPv4Address] = None
    command: Optional[Tuple[str, ...]] = None
    environment: Environment = ()


@dataclasses.dataclass(frozen=True)
class NatGateway:
    """``[[nat_gateways]]``: a NAT gateway in a public subnet; ``idle_timeout`` in seconds."""
    id: str
    subnet_id: str
    idle_timeout: float = NAT_IDLE_TIMEOUT


@dataclasses.dataclass(frozen=True)
class LabConfig:
    """A validated lab configuration. ``source`` says where it came from (a path, or
    ``<default>`` for the embedded lab); ``base_dir`` is the folder its relative paths (a
    function's code, a host's command) were taken from. ``iam`` is what
    :func:`hyperplane.labconfig.iam.parse_iam_section` returned for ``[iam]`` (None without
    that section)."""
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
    base_dir: str = ""
    conntrack: "ConntrackPlan" = dataclasses.field(default_factory=lambda: ConntrackPlan())
    metrics: "MetricsPlan" = dataclasses.field(default_factory=lambda: MetricsPlan())
    impairments: Tuple["ImpairmentPlan", ...] = ()

    def subnet(self, subnet_id: str) -> Subnet:
        for s in self.subnets:
            if s.id == subnet_id:
                return s
        raise KeyError(subnet_id)


# ---- rules, routes and settings: parsed here, carried into the plan as they are ---------------
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
class RoutePlan:
    """A route besides the implicit ``local`` one: ``kind`` "nat" (target a NAT gateway id) or
    "igw" (target the internet gateway id)."""
    destination: str
    target: str
    kind: str


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
    #: A custom record format, AWS's ``${field} ${field} ...`` (hyperplane.labconfig.flowformat);
    #: "": the default format (version 2).
    format: str = ""
    #: what the ``region`` and ``az-id`` fields of a custom format say
    region: str = FLOW_LOGS_REGION
    az_id: str = FLOW_LOGS_AZ_ID


@dataclasses.dataclass(frozen=True)
class DatapathPlan:
    """``[datapath]``: ``cpus`` pins the data path process to these CPUs (sched_setaffinity,
    checked against the CPUs it may use when it starts); empty: the scheduler decides.
    ``ring_frames``: the depth of each veth link's receive ring, which is how long a stall of
    the loop a link absorbs without dropping (like ``ethtool -G`` on a NIC).
    ``inbound_cpus``: when set, an inbound worker thread on these CPUs receives on the ENI
    links and does the VPC -> environment direction.
    ``placement``: "auto" chooses what the others leave out when the data path starts
    (hyperplane.labconfig.placement); "none" leaves it to the scheduler and the defaults.
    ``workers``: how many loop threads share the traffic, each owning the ports p with
    (p >> 1) % workers == w of every ENI (pairs of ports) (1: one loop, as before; "auto": decided from the CPUs when
    the data path starts, hyperplane.labconfig.placement.auto_workers); ``worker_cpus``: one
    CPU per worker (worker 0 is the loop that also runs the control plane)."""
    cpus: Tuple[int, ...] = ()
    #: frames in each veth link's receive ring (2 KiB each); 0: the placement's choice
    ring_frames: int = 0
    #: when set, the VPC -> environment direction runs in a thread of its own on these CPUs
    inbound_cpus: Tuple[int, ...] = ()
    #: "auto": the data path places what is left out (hyperplane.labconfig.placement); "none"
    placement: str = "auto"
    #: loop threads, each with its own engine shard owning a slice of every ENI's ports: an
    #: int 1..16, or "auto" (hyperplane.labconfig.placement.auto_workers)
    workers: Union[int, str] = 1
    #: worker i runs on worker_cpus[i]; empty: the placement's choice
    worker_cpus: Tuple[int, ...] = ()


#: ``[conntrack]`` keys (the kernel's sysctl names without ``nf_conntrack_``) -> the field of
#: hyperplane.engine.config.Timeouts each one sets.
CONNTRACK_TIMEOUT_KEYS = {
    "tcp_timeout_syn_sent": "tcp_syn_sent", "tcp_timeout_syn_recv": "tcp_syn_recv",
    "tcp_timeout_established": "tcp_established", "tcp_timeout_fin_wait": "tcp_fin_wait",
    "tcp_timeout_close_wait": "tcp_close_wait", "tcp_timeout_last_ack": "tcp_last_ack",
    "tcp_timeout_time_wait": "tcp_time_wait", "tcp_timeout_close": "tcp_close",
    "udp_timeout": "udp_unreplied", "udp_timeout_stream": "udp_replied",
}
#: The engine's defaults, read off hyperplane.engine.config (Timeouts: AWS's 350 s for
#: established TCP and replied UDP, Linux's values for the rest; EngineConfig's capacity).
CONNTRACK_DEFAULTS = {**{key: int(getattr(Timeouts, name))
                         for key, name in CONNTRACK_TIMEOUT_KEYS.items()},
                      "max": EngineConfig.capacity}


@dataclasses.dataclass(frozen=True)
class ConntrackPlan:
    """``[conntrack]``: the idle timeouts (whole seconds) and the capacity of every connection
    table of the data path, named like the kernel's ``net.netfilter.nf_conntrack_*`` sysctls so a
    lesson or a bench can set both alike. ``max`` is the capacity of each table (one per ENI key
    and one per NAT gateway); a new connection past it is dropped as ``table_full``. Defaults:
    :data:`CONNTRACK_DEFAULTS`. A NAT gateway keeps its own ``idle_timeout`` for established TCP
    and replied UDP and caps the other timeouts at it."""
    tcp_timeout_syn_sent: int = CONNTRACK_DEFAULTS["tcp_timeout_syn_sent"]
    tcp_timeout_syn_recv: int = CONNTRACK_DEFAULTS["tcp_timeout_syn_recv"]
    tcp_timeout_established: int = CONNTRACK_DEFAULTS["tcp_timeout_established"]
    tcp_timeout_fin_wait: int = CONNTRACK_DEFAULTS["tcp_timeout_fin_wait"]
    tcp_timeout_close_wait: int = CONNTRACK_DEFAULTS["tcp_timeout_close_wait"]
    tcp_timeout_last_ack: int = CONNTRACK_DEFAULTS["tcp_timeout_last_ack"]
    tcp_timeout_time_wait: int = CONNTRACK_DEFAULTS["tcp_timeout_time_wait"]
    tcp_timeout_close: int = CONNTRACK_DEFAULTS["tcp_timeout_close"]
    udp_timeout: int = CONNTRACK_DEFAULTS["udp_timeout"]
    udp_timeout_stream: int = CONNTRACK_DEFAULTS["udp_timeout_stream"]
    max: int = CONNTRACK_DEFAULTS["max"]

    def timeouts(self):
        """The engine's :class:`hyperplane.engine.config.Timeouts` with these values."""
        return Timeouts(**{name: float(getattr(self, key))
                           for key, name in CONNTRACK_TIMEOUT_KEYS.items()})

    def changed(self) -> Dict[str, int]:
        """The settings that differ from the defaults, in key order."""
        return {k: getattr(self, k) for k, v in CONNTRACK_DEFAULTS.items()
                if getattr(self, k) != v}


#: Where ``hyperplane metrics`` listens unless told otherwise, and the example of ``[metrics]``.
DEFAULT_METRICS_LISTEN = "127.0.0.1:9469"


@dataclasses.dataclass(frozen=True)
class MetricsPlan:
    """``[metrics]``: ``listen`` is the loopback ``ADDRESS:PORT`` of the Prometheus exporter
    ``lab up`` starts beside the data path (hyperplane.observe.exporter); port 0 picks a free
    port (``lab status`` shows the real one). "": no exporter."""
    listen: str = ""


#: ``[[impairments]] direction``: "both", or one way as seen from the node the link attaches.
IMPAIRMENT_DIRECTIONS = ("both", "egress", "ingress")


@dataclasses.dataclass(frozen=True)
class ImpairmentPlan:
    """``[[impairments]]``: netem's vocabulary on one link of the lab. ``link`` names it the way
    a user knows it (an environment such as ``fn-a-0``, a host or internet host such as
    ``server``, an ENI as ``eni0`` or by its id); ``direction`` is "both", "egress" (what leaves
    that node) or "ingress" (what reaches it). ``loss``, ``duplicate`` and ``reorder`` are
    percentages (0..100), ``delay_ms``/``jitter_ms`` milliseconds, ``rate_bit`` bits per second
    (0: no limit). hyperplane.topology.impair places and applies it."""
    link: str
    direction: str = "both"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    rate_bit: int = 0

    def settings(self) -> str:
        """In tc's words: ``delay 10ms jitter 2ms loss 1% rate 100mbit`` ("none" when clean)."""
        words = []
        if self.delay_ms:
            words.append(f"delay {self.delay_ms:g}ms")
        if self.jitter_ms:
            words.append(f"jitter {self.jitter_ms:g}ms")
        for key in ("loss", "duplicate", "reorder"):
            if getattr(self, key):
                words.append(f"{key} {getattr(self, key):g}%")
        if self.rate_bit:
            words.append(f"rate {format_rate(self.rate_bit)}")
        return " ".join(words) or "none"


def format_rate(bits: int) -> str:
    """Bits per second in tc's units: 100000000 -> ``100mbit``."""
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= size and bits % size == 0:
            return f"{bits // size}{unit}"
    return f"{bits}bit"
