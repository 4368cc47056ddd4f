"""The lab: a small VPC, its subnets, Lambda functions and hosts, loaded from TOML.

Three stages, each a plain function:

1. :func:`load` / :func:`loads` / :func:`default` parse TOML into a frozen :class:`LabConfig`
   and validate it. Every error is a :class:`LabConfigError` whose message starts with the
   field path (``functions[1].vpc_config.subnet_ids[0]: ...``) and says how to fix it; a file
   with several mistakes gives one error listing them all (``.problems``, one per line).
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
- What a function runs (Lambda CreateFunction's rules): ``runtime`` provided.al2023 /
  provided.al2 (the ``bootstrap`` of its ``code`` folder) or python3.N, ``handler``, ``code``
  (a folder, relative to the config file's folder; absent: the built-in hello-world handler),
  ``timeout`` 1..900 s, ``memory_size`` 128..10240 MB and ``environment`` (Lambda's key
  pattern, reserved keys and 4 KB limit). A host may run a ``command`` (a service) with an
  ``environment`` of its own.
- ``[flow_logs]``: VPC Flow Logs per ENI (default format v2) under the lab's directory
  (:mod:`hyperplane.datapath.flowlogs`): ``enabled``, ``interval`` (1..600 s; AWS offers 60 or 600),
  ``account_id``.
- ``[datapath]``: left out, the data path places itself when it starts
  (:mod:`hyperplane.labconfig.placement`, ``placement = "auto"``): with 2 CPUs or more its loop
  on the highest CPU it may use, its inbound worker on the next, the functions' code off the
  loop's CPU, rings of 16384 frames; on a small machine where the traffic's own endpoints share
  the CPUs, keeping the loop off the sender's CPU is worth a lot (benchmarks/RESULTS.md).
  ``cpus`` (the loop's CPUs), ``inbound_cpus`` (a second thread doing the VPC -> environment
  direction, csrc/hp_dp.h ``hp_dp_start_inbound``) and ``ring_frames`` (frames of 2 KiB in
  every veth link's receive ring) override its choices; ``placement = "none"`` places nothing
  (the scheduler decides, one thread does both directions, rings of 4096). ``workers`` (1..16
  or "auto") runs that many loop threads, each owning the ports p with (p >> 1) % workers == w of
  every ENI, on ``worker_cpus`` (docs/scaling.md); "auto" keeps 1 below 4 CPUs, else half.
- ``[metrics]``: ``listen``, the loopback address and port of the Prometheus exporter ``lab up``
  starts beside the data path (hyperplane.observe.exporter; port 0 picks a free one).

Every address must lie in the benchmark ranges 198.18.0.0/15 (RFC 2544) and 2001:2::/48
(RFC 5180): they are reserved for exactly this kind of lab, so a lab can never collide with a
real network the machine is attached to.

Where things are (the modules import one another directly, never through this package):

    model            AWS's limits, the lab's defaults, the frozen config (LabConfig and its
                     parts), and the rules, routes and settings the plan carries as they are
    plan             the resolved Plan and its parts, with its JSON round trip; bare()
    addressing       AWS's reserved addresses, free-address walks, derived ids and MACs
                     (eni_id, lab_mac)
    loading          load, loads, parse, default, default_text (default_lab.toml is beside it),
                     config_dir (where a config's relative paths are taken from)
    parse_common     the field-path helpers: types, keys, CIDRs, addresses, AWS ids, names,
                     the subnet associations of network ACLs and route tables
    fields           Key and Table: the lab file's tables as data (each parse_* module
                     declares its own; loading.LAB_FILE is the top), and the JSON Schema
                     made from them (json_schema)
    problems         every mistake at once: soft() scopes, broken names, clean sections
    parse_vpc        [lab], [vpc], [[subnets]], [[hosts]]
    parse_functions  [[functions]], [iam]
    parse_code       what runs: a function's runtime, handler, code, timeout, memory_size and
                     environment; a host's command and its environment
    parse_security   [[security_groups]], [[network_acls]]
    parse_routing    [internet], [[nat_gateways]], [[route_tables]], [[internet_hosts]]
    parse_runtime    [lifecycle], [flow_logs], [datapath]
    parse_metrics    [metrics] (and the loopback rule of every metrics listen address)
    parse_impairments [[impairments]] (and the values `lab impair` takes)
    resolving        resolve: a config and a lab name to a Plan (ENI keys, addresses, MACs)
    graph            a Plan drawn as a Mermaid flowchart or Graphviz DOT (``lab graph``)
    iam              the [iam] policies: their grammar and evaluation
"""
from __future__ import annotations

# Every public name the single module had, re-exported from the module that now holds it.
from hyperplane.errors import LabConfigError
from hyperplane.labconfig import iam  # noqa: F401
from hyperplane.labconfig.addressing import eni_id, lab_mac
from hyperplane.labconfig.loading import config_dir, default, default_text, load, loads, parse
from hyperplane.labconfig.model import (  # noqa: F401
    ATTACH_KINDS, BENCHMARK_V4, BENCHMARK_V6, DEFAULT_ACCOUNT_ID, DEFAULT_ENV_CIDR,
    DEFAULT_ENV_IPV6_CIDR, DEFAULT_INTERNET_CIDR, FLOW_LOGS_INTERVAL, FLOW_LOGS_INTERVAL_RANGE,
    LIFECYCLE_PROFILES, MAX_NACL_RULES, MAX_SECURITY_GROUPS, MAX_SG_RULES, MAX_SUBNET_IDS,
    NACL_RULE_NUMBERS, NAT_IDLE_TIMEOUT, RESERVED_AT_START, ROUTE_TABLE_BASE, SUBNET_V4_PREFIX,
    VPC_V4_PREFIX, ConntrackPlan, DatapathPlan, FlowLogsPlan, Function, FunctionVpcConfig, Host,
    Internet,
    InternetHost, IPNet, IPv4Net, IPv6Net, LabConfig, LabSettings, LifecyclePlan, NatGateway,
    NetworkAcl, RoutePlan, RouteTable, RulePlan, SecurityGroup, Subnet, Vpc,
)
from hyperplane.labconfig.model import DEFAULT_METRICS_LISTEN, MetricsPlan  # noqa: F401
from hyperplane.labconfig.model import IMPAIRMENT_DIRECTIONS, ImpairmentPlan  # noqa: F401
from hyperplane.labconfig.plan import (
    EniPlan, EnvPlan, FunctionPlan, HostPlan, InternetPlan, NaclPlan, NatGatewayPlan, Plan,
    RouteTablePlan, SecurityGroupPlan, SubnetPlan, bare,
)
from hyperplane.labconfig.resolving import EniKey, resolve  # noqa: F401
from hyperplane.paths import validate_lab_name

__all__ = [
    "LabConfigError", "LabSettings", "Vpc", "Subnet", "FunctionVpcConfig", "Function", "Host",
    "SecurityGroup", "NetworkAcl", "RouteTable", "Internet", "InternetHost", "NatGateway",
    "LabConfig", "SubnetPlan", "EniPlan", "EnvPlan", "HostPlan", "RulePlan", "SecurityGroupPlan",
    "NaclPlan", "RoutePlan", "RouteTablePlan", "NatGatewayPlan", "InternetPlan", "FunctionPlan",
    "LifecyclePlan", "FlowLogsPlan", "ConntrackPlan", "Plan", "LIFECYCLE_PROFILES",
    "NAT_IDLE_TIMEOUT",
    "load", "loads", "parse", "config_dir", "default", "default_text", "resolve",
    "validate_lab_name", "eni_id", "lab_mac", "bare", "BENCHMARK_V4", "BENCHMARK_V6", "ATTACH_KINDS",
    "MetricsPlan",
    "ImpairmentPlan",
]
