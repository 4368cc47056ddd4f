"""Loading a lab file: TOML text (a path, a string, the embedded default lab) to a
validated :class:`LabConfig`. :func:`parse` walks the sections in dependency order (each
``parse_*`` module owns a group of them), then checks the config as a whole.

Relative paths in a config (a function's ``code``) are taken from :func:`config_dir`: the
``base_dir`` the caller gives, else the folder of the config file, else the current directory.
"""
from __future__ import annotations

import dataclasses
import os
from importlib import resources
from typing import Any, Dict, Optional

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.model import LabConfig
from hyperplane.labconfig.parse_common import array_of_tables, check_keys, expect
from hyperplane.labconfig.parse_functions import check_iam, parse_functions, parse_iam
from hyperplane.labconfig.parse_impairments import parse_impairments
from hyperplane.labconfig.parse_routing import (check_internet_overlap, check_nat_gateways_public,
                                                parse_internet, parse_internet_hosts,
                                                parse_nat_gateways, parse_route_tables)
from hyperplane.labconfig.parse_runtime import parse_datapath, parse_flow_logs, parse_lifecycle
from hyperplane.labconfig.parse_security import parse_network_acls, parse_security_groups
from hyperplane.labconfig.parse_vpc import (check_env_capacity, parse_hosts, parse_lab,
                                            parse_subnets, parse_vpc)
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
    return _parse(doc, source, config_dir(source, base_dir))


def default_text() -> str:
    """The embedded default lab's TOML (commented, a good starting point for your own)."""
    # __package__ is hyperplane.labconfig: default_lab.toml sits in the package, beside this file
    return resources.files(__package__).joinpath("default_lab.toml").read_text("utf-8")


def default() -> LabConfig:
    """The embedded default lab: one dual-stack subnet, two functions sharing one ENI (one on a
    TAP, one on a veth), one server."""
    return loads(default_text(), source="<default>")


_TOP_LEVEL_KEYS = ["lab", "vpc", "subnets", "functions", "hosts", "security_groups",
                   "network_acls", "route_tables", "internet", "internet_hosts", "nat_gateways",
                   "lifecycle", "iam", "flow_logs", "datapath", "impairments"]


def _parse(doc: Dict[str, Any], source: str, base_dir: str) -> LabConfig:
    check_keys(doc, "", _TOP_LEVEL_KEYS, required=["vpc"])
    lab = parse_lab(doc.get("lab", {}))
    vpc = parse_vpc(doc["vpc"])
    subnets = parse_subnets(array_of_tables(doc, "subnets"), vpc, lab)
    sgs = parse_security_groups(array_of_tables(doc, "security_groups"), vpc)
    internet = parse_internet(doc["internet"], vpc) if "internet" in doc else None
    nats = parse_nat_gateways(array_of_tables(doc, "nat_gateways"), subnets, internet)
    tables = parse_route_tables(array_of_tables(doc, "route_tables"), vpc, subnets, internet,
                                nats)
    check_nat_gateways_public(nats, tables, internet)
    nacls = parse_network_acls(array_of_tables(doc, "network_acls"), subnets)
    iam = parse_iam(doc)
    functions = parse_functions(array_of_tables(doc, "functions"), subnets, sgs, iam,
                                base_dir)
    hosts = parse_hosts(array_of_tables(doc, "hosts"), subnets)
    ihosts = parse_internet_hosts(array_of_tables(doc, "internet_hosts"), internet)
    lifecycle = parse_lifecycle(doc.get("lifecycle", {}))
    flow_logs = parse_flow_logs(doc.get("flow_logs", {}), lab)
    datapath = parse_datapath(doc.get("datapath", {}))
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
                       lifecycle=lifecycle, iam=iam, flow_logs=flow_logs, datapath=datapath,
                       base_dir=base_dir)
    check_env_capacity(config)
    check_internet_overlap(config)
    allocate(config)  # raises when a subnet or the internet has too few addresses
    check_iam(config)
    if "impairments" in doc:   # the link names need the whole config
        config = dataclasses.replace(
            config, impairments=parse_impairments(array_of_tables(doc, "impairments"), config))
    return config
