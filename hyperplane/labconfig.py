"""The lab: a small VPC, its subnets, Lambda functions and hosts, loaded from TOML.

Three stages, each a plain function:

1. :func:`load` / :func:`loads` / :func:`default` parse TOML into a frozen :class:`LabConfig`
   and validate it. Every error is a :class:`LabConfigError` whose message starts with the
   field path (``functions[1].vpc_config.subnet_ids[0]: ...``) and says how to fix it.
2. :func:`resolve` turns a config plus a lab name into a :class:`Plan`: every namespace,
   interface name, MAC and address the lab will have. The plan is deterministic for a given
   (config, name), and round-trips through JSON (:meth:`Plan.to_dict` / :meth:`Plan.from_dict`),
   which is how the lab builder, the daemon and the CLI share it.
3. :mod:`hyperplane.lab` builds the plan in network namespaces.

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
  ``VpcConfig``).

Every address must lie in the benchmark ranges 198.18.0.0/15 (RFC 2544) and 2001:2::/48
(RFC 5180): they are reserved for exactly this kind of lab, so a lab can never collide with a
real network the machine is attached to.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import re
from importlib import resources
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

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
    "LabConfig", "SubnetPlan", "EniPlan", "EnvPlan", "HostPlan", "Plan",
    "load", "loads", "parse", "default", "default_text", "resolve", "validate_lab_name",
    "eni_id", "lab_mac", "BENCHMARK_V4", "BENCHMARK_V6", "ATTACH_KINDS",
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

DEFAULT_ENV_CIDR = "198.19.0.0/16"
DEFAULT_ENV_IPV6_CIDR = "2001:2:0:f000::/52"

_LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-z-]+$")
_SG_ID = re.compile(r"^sg-[0-9a-z]+$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class LabConfigError(ValueError):
    """A lab configuration is wrong. ``field`` is the path of the offending value
    (``subnets[0].cidr``); the message says what is wrong and how to fix it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# ---- the config model --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LabSettings:
    """``[lab]``: where the execution environments' own links get their addresses (one /30 and
    one /64 per environment). These stand in for Lambda's service-owned network."""
    env_cidr: IPv4Net = ipaddress.IPv4Network(DEFAULT_ENV_CIDR)
    env_ipv6_cidr: IPv6Net = ipaddress.IPv6Network(DEFAULT_ENV_IPV6_CIDR)


@dataclasses.dataclass(frozen=True)
class Vpc:
    """``[vpc]``: the customer VPC's IPv4 block and optional IPv6 block."""
    cidr: IPv4Net
    ipv6_cidr: Optional[IPv6Net] = None


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
    """``[[functions]]``: one entry in ``environments`` per execution environment."""
    name: str
    environments: Tuple[str, ...]
    vpc_config: FunctionVpcConfig


@dataclasses.dataclass(frozen=True)
class Host:
    """``[[hosts]]``: a machine in the VPC (a server the functions talk to)."""
    name: str
    subnet: str
    ipv4: Optional[ipaddress.IPv4Address] = None
    ipv6: Optional[ipaddress.IPv6Address] = None


@dataclasses.dataclass(frozen=True)
class LabConfig:
    """A validated lab configuration. ``source`` says where it came from (a path, or
    ``<default>`` for the embedded lab)."""
    vpc: Vpc
    subnets: Tuple[Subnet, ...]
    functions: Tuple[Function, ...]
    hosts: Tuple[Host, ...]
    lab: LabSettings = LabSettings()
    source: str = "<string>"

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
    data path, which uses ``gw_mac`` on this link."""
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

    def namespaces(self) -> List[str]:
        """All namespace names in build order: node, fabric, environments, hosts."""
        return ([self.node_ns, self.fabric_ns] + [e.netns for e in self.envs]
                + [h.netns for h in self.hosts])

    def subnet(self, subnet_id: str) -> SubnetPlan:
        return _find(self.subnets, "id", subnet_id)

    def eni(self, eni_id: str) -> EniPlan:
        return _find(self.enis, "id", eni_id)

    def env(self, name: str) -> EnvPlan:
        return _find(self.envs, "name", name)

    def host(self, name: str) -> HostPlan:
        return _find(self.hosts, "name", name)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data (``from_dict`` reverses it exactly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Plan":
        return cls(
            name=d["name"], prefix=d["prefix"], node_ns=d["node_ns"], fabric_ns=d["fabric_ns"],
            subnets=[SubnetPlan(**s) for s in d["subnets"]],
            enis=[EniPlan(**{**e, "security_groups": list(e["security_groups"])})
                  for e in d["enis"]],
            envs=[EnvPlan(**e) for e in d["envs"]],
            hosts=[HostPlan(**h) for h in d["hosts"]],
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


def validate_lab_name(name: str) -> str:
    """Lab names become part of namespace names (``hp-NAME-node``) and of a directory name, so
    they are short, lower-case and free of path characters."""
    if not isinstance(name, str) or not _LAB_NAME.match(name):
        raise LabConfigError("name", f"invalid lab name {name!r}: use 1-20 characters from a-z, "
                             "0-9 and '-', starting with a letter or digit (e.g. 'demo')")
    return name


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
def _parse(doc: Dict[str, Any], source: str) -> LabConfig:
    _check_keys(doc, "", ["lab", "vpc", "subnets", "functions", "hosts"], required=["vpc"])
    lab = _parse_lab(doc.get("lab", {}))
    vpc = _parse_vpc(doc["vpc"])
    subnets = _parse_subnets(_array_of_tables(doc, "subnets"), vpc, lab)
    functions = _parse_functions(_array_of_tables(doc, "functions"), subnets)
    hosts = _parse_hosts(_array_of_tables(doc, "hosts"), subnets)
    if not functions:
        raise LabConfigError("functions", "a lab needs at least one function; add a "
                             "[[functions]] table with name, environments and vpc_config "
                             "(the default lab, hyperplane/default_lab.toml, has two)")
    if not hosts:
        raise LabConfigError("hosts", "a lab needs at least one host for the functions to "
                             "talk to; add a [[hosts]] table with name and subnet")
    config = LabConfig(vpc=vpc, subnets=tuple(subnets), functions=tuple(functions),
                       hosts=tuple(hosts), lab=lab, source=source)
    _check_env_capacity(config)
    _allocate(config)  # raises when a subnet has too few addresses
    return config


def _parse_lab(t: Any) -> LabSettings:
    _expect(t, dict, "lab", "write it as a [lab] table")
    _check_keys(t, "lab", ["env_cidr", "env_ipv6_cidr"])
    env4 = _network(t.get("env_cidr", DEFAULT_ENV_CIDR), "lab.env_cidr", 4)
    env6 = _network(t.get("env_ipv6_cidr", DEFAULT_ENV_IPV6_CIDR), "lab.env_ipv6_cidr", 6)
    if env4.prefixlen > 30:
        raise LabConfigError("lab.env_cidr", f"{env4} is smaller than one /30; every execution "
                             "environment needs a /30, use a prefix of /30 or shorter")
    if env6.prefixlen > 64:
        raise LabConfigError("lab.env_ipv6_cidr", f"{env6} is smaller than one /64; every "
                             "execution environment needs a /64, use a prefix of /64 or shorter")
    return LabSettings(env_cidr=env4, env_ipv6_cidr=env6)


def _parse_vpc(t: Any) -> Vpc:
    _expect(t, dict, "vpc", "write it as a [vpc] table")
    _check_keys(t, "vpc", ["cidr", "ipv6_cidr"], required=["cidr"])
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
    return Vpc(cidr=cidr, ipv6_cidr=ipv6)


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


def _parse_functions(tables, subnets: List[Subnet]) -> List[Function]:
    by_id = {s.id: s for s in subnets}
    known_ids = ", ".join(by_id) or "(none defined)"
    functions: List[Function] = []
    for i, t in enumerate(tables):
        f = f"functions[{i}]"
        _check_keys(t, f, ["name", "environments", "vpc_config"],
                    required=["name", "environments", "vpc_config"])
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
                                         ipv6_allowed_for_dual_stack=ipv6_ok)))
    return functions


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


def _check_env_capacity(config: LabConfig) -> None:
    count = sum(len(fn.environments) for fn in config.functions)
    env4 = config.lab.env_cidr
    fits4 = 2 ** (30 - env4.prefixlen)
    if count > fits4:
        raise LabConfigError("lab.env_cidr", f"{env4} holds {fits4} execution environments "
                             f"(one /30 each) but the functions have {count}; use a shorter "
                             "prefix or fewer environments")
    count6 = sum(len(fn.environments) for fn in config.functions
                 if fn.vpc_config.ipv6_allowed_for_dual_stack)
    env6 = config.lab.env_ipv6_cidr
    fits6 = 2 ** (64 - env6.prefixlen)
    if count6 > fits6:
        raise LabConfigError("lab.env_ipv6_cidr", f"{env6} holds {fits6} execution "
                             f"environments (one /64 each) but {count6} have IPv6; use a "
                             "shorter prefix")


# ---- resolving ---------------------------------------------------------------------------------
EniKey = Tuple[str, frozenset]


def _eni_keys(config: LabConfig) -> List[EniKey]:
    """(subnet, set of security groups) in order of first appearance: functions in file order,
    each function's subnets in its order. AWS creates an ENI for every subnet of the config,
    not only the ones an environment happens to land in."""
    keys: List[EniKey] = []
    for fn in config.functions:
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


def _allocate(config: LabConfig) -> _Layout:
    """Addresses inside each subnet: ENIs first (key order), then hosts without a fixed address
    (file order); fixed host addresses and AWS's reserved ones are skipped."""
    keys = _eni_keys(config)
    eni_v4: Dict[EniKey, Any] = {}
    eni_v6: Dict[EniKey, Any] = {}
    host_v4: Dict[str, Any] = {h.name: h.ipv4 for h in config.hosts}
    host_v6: Dict[str, Any] = {h.name: h.ipv6 for h in config.hosts}
    for si, subnet in enumerate(config.subnets):
        enis = [k for k in keys if k[0] == subnet.id]
        hosts = [h for h in config.hosts if h.subnet == subnet.id]
        for version, net, fixed_of, out_eni, out_host in (
                (4, subnet.cidr, lambda h: h.ipv4, eni_v4, host_v4),
                (6, subnet.ipv6_cidr, lambda h: h.ipv6, eni_v6, host_v6)):
            if net is None:
                for k in enis:
                    out_eni[k] = None
                continue
            fixed = {fixed_of(h) for h in hosts if fixed_of(h) is not None}
            wanted = len(enis) + sum(1 for h in hosts if fixed_of(h) is None)
            free = _free_addresses(net, fixed)
            for k in enis:
                out_eni[k] = next(free, None)
            for h in hosts:
                if fixed_of(h) is None:
                    out_host[h.name] = next(free, None)
            if None in [out_eni[k] for k in enis] + [out_host[h.name] for h in hosts]:
                usable = net.num_addresses - RESERVED_AT_START - 1 - len(fixed)
                field = f"subnets[{si}].{'cidr' if version == 4 else 'ipv6_cidr'}"
                raise LabConfigError(field, f"{net} has {max(usable, 0)} free addresses after "
                                     "AWS's 5 reserved ones and fixed host addresses, but needs "
                                     f"{wanted} ({len(enis)} ENIs and the hosts without a fixed "
                                     "address); use a larger subnet")
    return _Layout(eni_v4, eni_v6, host_v4, host_v6)


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
    env4, env6 = config.lab.env_cidr, config.lab.env_ipv6_cidr
    for fn in config.functions:
        vc = fn.vpc_config
        for i, attach in enumerate(fn.environments):
            index = len(envs)
            sid = vc.subnet_ids[i % len(vc.subnet_ids)]  # round-robin over the subnets
            base4 = env4.network_address + 4 * index
            net6 = ipaddress.IPv6Network((int(env6.network_address) + (index << 64), 64))
            has6 = vc.ipv6_allowed_for_dual_stack
            env_name = f"{fn.name}-{i}"
            envs.append(EnvPlan(
                index=index, name=env_name, function=fn.name, attach=attach,
                netns=f"{prefix}env-{env_name}", ifname="eth0",
                node_ifname=f"env{index}" if attach == "veth" else None,
                eni=enis[(sid, frozenset(vc.security_group_ids))].id, subnet=sid,
                ipv4=f"{base4 + 2}/30", gw4=str(base4 + 1),
                ipv6=f"{net6.network_address + 2}/64" if has6 else None,
                gw6=str(net6.network_address + 1) if has6 else None,
                gw_mac=lab_mac(name, "gw", index, macs)))

    hosts: List[HostPlan] = []
    for i, h in enumerate(config.hosts):
        s = sp[h.subnet]
        v6 = layout.host_v6[h.name]
        hosts.append(HostPlan(
            name=h.name, netns=f"{prefix}host-{h.name}", ifname="eth0", subnet=h.subnet,
            ipv4=f"{layout.host_v4[h.name]}/{ipaddress.ip_network(s.cidr).prefixlen}",
            ipv6=f"{v6}/64" if v6 else None, gw4=s.router4, gw6=s.router6 if v6 else None,
            fabric_ifname=f"host{i}", mac=None))

    return Plan(name=name, prefix=prefix, node_ns=f"{prefix}node", fabric_ns=f"{prefix}vpc",
                subnets=subnet_plans, enis=list(enis.values()), envs=envs, hosts=hosts)
