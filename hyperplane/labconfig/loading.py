"""Loading a lab file: TOML text (a path, a string, the embedded default lab) to a
validated :class:`LabConfig`. :func:`parse` walks the sections in dependency order (each
``parse_*`` module owns a group of them), then checks the config as a whole. It reports every
mistake at once (:mod:`hyperplane.labconfig.problems`): one :class:`LabConfigError` whose
``problems`` lists them. :data:`LAB_FILE` is the top level of the file's model
(:mod:`hyperplane.labconfig.fields`), which is also its JSON Schema.

Relative paths in a config (a function's ``code``) are taken from :func:`config_dir`: the
``base_dir`` the caller gives, else the folder of the config file, else the current directory.
"""
from __future__ import annotations

import dataclasses
import os
from importlib import resources
from typing import Any, Callable, Dict, Optional

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.iam import IAM_TABLE
from hyperplane.labconfig.model import LabConfig
from hyperplane.labconfig.parse_common import array_of_tables, check_keys, expect
from hyperplane.labconfig.parse_conntrack import CONNTRACK, parse_conntrack
from hyperplane.labconfig.parse_functions import (FUNCTION, check_iam, parse_functions,
                                                  parse_iam)
from hyperplane.labconfig.parse_impairments import IMPAIRMENT, parse_impairments
from hyperplane.labconfig.parse_metrics import METRICS, parse_metrics
from hyperplane.labconfig.parse_routing import (INTERNET, INTERNET_HOST, NAT_GATEWAY,
                                                ROUTE_TABLE, check_internet_overlap,
                                                check_nat_gateways_public, parse_internet,
                                                parse_internet_hosts, parse_nat_gateways,
                                                parse_route_tables)
from hyperplane.labconfig.parse_runtime import (DATAPATH, FLOW_LOGS, LIFECYCLE, parse_datapath,
                                                parse_flow_logs, parse_lifecycle)
from hyperplane.labconfig.parse_security import (NETWORK_ACL, SECURITY_GROUP,
                                                 parse_network_acls, parse_security_groups)
from hyperplane.labconfig.parse_vpc import (HOST, LAB, SUBNET, VPC, check_env_capacity,
                                            parse_hosts, parse_lab, parse_subnets, parse_vpc)
from hyperplane.labconfig.problems import any_problem, clean, collecting, problem, skip, soft
from hyperplane.labconfig.resolving import allocate

try:  # Python 3.11+; older Pythons need the identical third-party "tomli"
    import tomllib
except ImportError:  # pragma: no cover
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        raise ImportError("reading lab configs needs Python 3.11+ (tomllib) or "
                          "`pip install tomli`") from None


def config_dir(source: str, base_dir: Optional[str] = None) -> str:
    """The folder a config's relative paths are taken from: ``base_dir`` when given, else the
    folder of ``source`` when that is an existing file, else the current directory; absolute."""
    if base_dir is not None:
        return os.path.abspath(base_dir)
    if source and os.path.isfile(source):
        return os.path.dirname(os.path.abspath(source))
    return os.getcwd()


def load(path, base_dir: Optional[str] = None) -> LabConfig:
    """Read and validate the lab config at ``path``; relative paths in it are taken from
    ``base_dir`` (default: the file's folder)."""
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
    return loads(text, source=str(path), base_dir=base_dir)


def loads(text: str, source: str = "<string>", base_dir: Optional[str] = None) -> LabConfig:
    """Parse and validate a lab config from TOML text; ``source`` names it in errors, and
    relative paths in it are taken from :func:`config_dir` (``base_dir``, else the folder of
    ``source`` when that is a file, else the current directory)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LabConfigError(source, f"TOML syntax error: {e}; fix the line it names "
                             "(https://toml.io explains the syntax)") from None
    return parse(doc, source, base_dir)


def parse(doc: Dict[str, Any], source: str = "<mapping>",
          base_dir: Optional[str] = None) -> LabConfig:
    """Validate an already-parsed document (what ``tomllib.loads`` returns: plain dicts,
    lists, strings and booleans); relative paths as :func:`loads` takes them."""
    expect(doc, dict, source, "the lab config is a TOML document (a table)")
    with collecting():   # every mistake at once: one LabConfigError with .problems
        return _parse(doc, source, config_dir(source, base_dir))


def default_text() -> str:
    """The embedded default lab's TOML (commented, a good starting point for your own)."""
    # __package__ is hyperplane.labconfig: default_lab.toml sits in the package, beside this file
    return resources.files(__package__).joinpath("default_lab.toml").read_text("utf-8")


def default() -> LabConfig:
    """The embedded default lab: one dual-stack subnet, two functions sharing one ENI (one on a
    TAP, one on a veth), one server."""
    return loads(default_text(), source="<default>")


def _section(key: str, doc: str, table: Table) -> Key:
    return Key(key, "table", doc, table=table)


def _array(key: str, doc: str, table: Table) -> Key:
    return Key(key, "array", doc, items=table)


#: The lab file's top level: one line per section (hyperplane.labconfig.fields); the loader
#: accepts exactly these keys, and ``hyperplane lab schema`` publishes them.
LAB_FILE = Table("hyperplane lab file", "A hyperplane lab: a small VPC, its subnets, Lambda "
                 "functions and hosts, in network namespaces on one machine. Every address "
                 "lies in 198.18.0.0/15 and 2001:2::/48 (RFC 2544, RFC 5180).", (
    _section("lab", "the environments' address blocks and the account id", LAB),
    Key("vpc", "table", "the customer VPC", required=True, table=VPC),
    _array("subnets", "the VPC's subnets", SUBNET),
    _array("functions", "Lambda functions (at least one)", FUNCTION),
    _array("hosts", "machines in the VPC for the functions to talk to", HOST),
    _array("security_groups", "security groups (egress rules)", SECURITY_GROUP),
    _array("network_acls", "network ACLs (stateless subnet rules)", NETWORK_ACL),
    _array("route_tables", "route tables (what makes a subnet public or private)", ROUTE_TABLE),
    _section("internet", "the stand-in internet behind the internet gateway", INTERNET),
    _array("internet_hosts", "machines on the internet", INTERNET_HOST),
    _array("nat_gateways", "NAT gateways in public subnets", NAT_GATEWAY),
    _section("lifecycle", "ENI delays and scale-out", LIFECYCLE),
    _section("iam", "policies checked when a function's VpcConfig is created", IAM_TABLE),
    _section("flow_logs", "VPC Flow Logs per ENI", FLOW_LOGS),
    _section("datapath", "the data path process's CPUs and rings", DATAPATH),
    _section("conntrack", "connection-table timeouts and capacity (the kernel's "
             "nf_conntrack_* names)", CONNTRACK),
    _section("metrics", "the Prometheus exporter lab up starts beside the data path", METRICS),
    _array("impairments", "delay, loss, duplicate, reorder and rate on a link of the lab "
           "(netem's words)", IMPAIRMENT),
))

#: What a section that could not be read at all leaves its dependents (they skip it).
_BROKEN = object()


def _part(key: str, kind: Optional[str], parse: Callable[..., Any], *needs: Any) -> Any:
    """Parse one section (``parse()``) when the sections it ``needs`` parsed, as one
    independent part: its problems are recorded, and when it fails as a whole (or something
    it needs did) references to its ``kind`` stay silent and dependents get ``_BROKEN``."""
    with soft(section=key, unavailable=kind):
        if any(n is _BROKEN for n in needs):
            skip()
        return parse()
    return _BROKEN


def _parse(doc: Dict[str, Any], source: str, base_dir: str) -> Optional[LabConfig]:
    """Every section is its own part (hyperplane.labconfig.problems): a mistake in one is
    reported and the others are still checked; checks of the whole config run when what they
    read parsed cleanly. Returns None when there were problems (the collector raises them)."""
    with soft():
        check_keys(doc, "", LAB_FILE)
    lab = _part("lab", None, lambda: parse_lab(doc.get("lab", {})))
    vpc = _part("vpc", None, lambda: parse_vpc(doc["vpc"]) if "vpc" in doc else skip())
    subnets = _part("subnets", "subnet", lambda: parse_subnets(
        array_of_tables(doc, "subnets"), vpc, lab), vpc, lab)
    sgs = _part("security_groups", "security_group", lambda: parse_security_groups(
        array_of_tables(doc, "security_groups"), vpc), vpc)
    internet = _part("internet", "internet", lambda: parse_internet(doc["internet"], vpc)
                     if "internet" in doc else None, vpc)
    nats = _part("nat_gateways", "nat_gateway", lambda: parse_nat_gateways(
        array_of_tables(doc, "nat_gateways"), _list(subnets), _optional(internet)))
    tables = _part("route_tables", "route_table", lambda: parse_route_tables(
        array_of_tables(doc, "route_tables"), vpc, _list(subnets),
        _optional(internet), _list(nats)), vpc)
    if clean("nat_gateways", "route_tables", "internet", "subnets"):
        with soft(section="nat_gateways"):
            check_nat_gateways_public(nats, tables, internet)
    nacls = _part("network_acls", "network_acl", lambda: parse_network_acls(
        array_of_tables(doc, "network_acls"), _list(subnets)))
    iam = _part("iam", "role", lambda: parse_iam(doc))
    functions = _part("functions", "function", lambda: parse_functions(
        array_of_tables(doc, "functions"), _list(subnets), _list(sgs), _optional(iam),
        base_dir))
    hosts = _part("hosts", "host", lambda: parse_hosts(array_of_tables(doc, "hosts"),
                                                       _list(subnets)))
    ihosts = _part("internet_hosts", "internet_host", lambda: parse_internet_hosts(
        array_of_tables(doc, "internet_hosts"), _optional(internet)))
    lifecycle = _part("lifecycle", None, lambda: parse_lifecycle(doc.get("lifecycle", {})))
    flow_logs = _part("flow_logs", None, lambda: parse_flow_logs(doc.get("flow_logs", {}), lab),
                      lab)
    datapath = _part("datapath", None, lambda: parse_datapath(doc.get("datapath", {})))
    conntrack = _part("conntrack", None, lambda: parse_conntrack(doc.get("conntrack", {})))
    metrics = _part("metrics", None, lambda: parse_metrics(doc.get("metrics", {})))
    if clean("functions") and functions == []:
        problem(LabConfigError(
            "functions", "a lab needs at least one function; add a [[functions]] table with "
            "name and environments (and a vpc_config to attach it to the VPC; the default lab, "
            "hyperplane/labconfig/default_lab.toml, has two)"))
    if clean("hosts", "internet_hosts") and hosts == [] and ihosts == []:
        problem(LabConfigError(
            "hosts", "a lab needs at least one host for the functions to talk to; add a "
            "[[hosts]] table with name and subnet (or an [[internet_hosts]] table behind a NAT "
            "gateway)"))
    if any_problem():
        return None   # the checks of the whole config need every part of it
    config = LabConfig(vpc=vpc, subnets=tuple(subnets), functions=tuple(functions),
                       hosts=tuple(hosts), lab=lab, source=source,
                       security_groups=tuple(sgs), network_acls=tuple(nacls),
                       route_tables=tuple(tables), internet=internet,
                       internet_hosts=tuple(ihosts), nat_gateways=tuple(nats),
                       lifecycle=lifecycle, iam=iam, flow_logs=flow_logs, datapath=datapath,
                       base_dir=base_dir, conntrack=conntrack,
                       metrics=metrics)
    # Independent of one another: each reports its own mistake.
    for check in (check_env_capacity, check_internet_overlap, allocate, check_iam):
        with soft():
            check(config)   # allocate raises when a subnet or the internet has too few addresses
    if "impairments" in doc and not any_problem():   # the link names need the whole config
        with soft(section="impairments"):
            config = dataclasses.replace(config, impairments=parse_impairments(
                array_of_tables(doc, "impairments"), config))
    return None if any_problem() else config


def _list(value: Any) -> Any:
    """A list section's value for its dependents: [] when it could not be read (references to
    its kind are silent then)."""
    return [] if value is _BROKEN else value


def _optional(value: Any) -> Any:
    """An optional section's value for its dependents: None when it could not be read."""
    return None if value is _BROKEN else value

