"""``hyperplane lab validate|schema|plan``: the lab file on its own, with no privilege and
nothing built. ``validate`` reports every mistake at once (one ``SOURCE: field: problem; fix``
line each, exit status 2) or what the file defines; ``schema`` prints the JSON Schema the
loader's own tables generate (editors check a lab file with it as it is typed); ``plan``
shows the namespaces, interfaces and addresses ``lab up`` would build.
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional

from hyperplane import labconfig
from hyperplane.cli.common import add_json, named, print_json, table
from hyperplane.errors import EXIT_OK, EXIT_USAGE, LabConfigError, config_error
from hyperplane.labconfig.fields import json_schema
from hyperplane.labconfig.loading import LAB_FILE


def _load(config: Optional[str]) -> labconfig.LabConfig:
    return labconfig.load(config) if config else labconfig.default()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary(config: labconfig.LabConfig, plan: labconfig.Plan) -> Dict[str, int]:
    """What a valid lab file defines, and how many ENIs and namespaces its plan has."""
    return {"subnets": len(config.subnets), "security_groups": len(config.security_groups),
            "network_acls": len(config.network_acls),
            "route_tables": len(config.route_tables),
            "nat_gateways": len(config.nat_gateways),
            "functions": len(config.functions),
            "environments": sum(len(fn.environments) for fn in config.functions),
            "hosts": len(config.hosts), "internet_hosts": len(config.internet_hosts),
            "enis": len(plan.enis), "namespaces": len(plan.namespaces())}


def summary_line(s: Dict[str, int]) -> str:
    words = [_plural(s["subnets"], "subnet"), _plural(s["security_groups"], "security group"),
             f"{_plural(s['functions'], 'function')} "
             f"({_plural(s['environments'], 'environment')})", _plural(s["hosts"], "host")]
    for key, word in (("network_acls", "network ACL"), ("route_tables", "route table"),
                      ("nat_gateways", "NAT gateway"), ("internet_hosts", "internet host")):
        if s[key]:
            words.append(_plural(s[key], word))
    return (f"{', '.join(words)}; lab up would create {_plural(s['enis'], 'ENI')} and "
            f"{_plural(s['namespaces'], 'namespace')}")


def cmd_lab_validate(args) -> int:
    source = args.config or "<default>"
    try:
        config = _load(args.config)
        plan = labconfig.resolve(config, args.name)
    except LabConfigError as e:
        problems: List[LabConfigError] = e.problems
        if args.json:
            print(json.dumps({"valid": False, "source": source,
                              "problems": [{"field": p.field, "message": p.message}
                                           for p in problems], "summary": None}, indent=2))
        else:
            for p in problems:   # a file that cannot be read is its own field
                print(p if p.field == source else f"{source}: {p}")
            print(f"{source}: {_plural(len(problems), 'mistake')}", file=sys.stderr)
        return EXIT_USAGE
    s = summary(config, plan)
    if args.json:
        print(json.dumps({"valid": True, "source": source, "problems": [], "summary": s},
                         indent=2))
    else:
        print(f"{source}: valid: {summary_line(s)}")
    return EXIT_OK


def schema_text() -> str:
    """``hyperplane lab schema``'s output (docs/lab.schema.json is a copy of it)."""
    return json.dumps(json_schema(LAB_FILE), indent=2) + "\n"


def cmd_lab_schema(args) -> int:
    sys.stdout.write(schema_text())
    return EXIT_OK


def plan_rows(plan: labconfig.Plan) -> List[List[str]]:
    """One row per node: its namespace, its interface and its addresses."""
    rows = [["NODE", "NAMESPACE", "INTERFACE", "IPV4", "IPV6", "DETAIL"]]
    rows.append(["hyperplane", plan.node_ns, "-", "-", "-",
                 "the data path's namespace: the ENIs' and environments' links"])
    for s in plan.subnets:
        rows.append(["vpc", plan.fabric_ns, s.bridge, s.router4, s.router6 or "-",
                     f"{s.id} {s.cidr} router"])
    for v in plan.envs:
        rows.append([v.name, v.netns, v.ifname, v.ipv4, v.ipv6 or "-",
                     f"{v.attach}, function {v.function}, ENI {v.eni or '-'}"])
    for h in plan.hosts:
        rows.append([h.name, h.netns, h.ifname, h.ipv4, h.ipv6 or "-", f"host in {h.subnet}"])
    if plan.internet is not None:
        rows.append(["internet", plan.internet.netns, plan.internet.bridge,
                     plan.internet.router4, "-", f"{plan.internet.gateway_id} "
                                                 f"{plan.internet.cidr}"])
    for h in plan.internet_hosts:
        rows.append([h.name, h.netns, h.ifname, h.ipv4, "-", "internet host"])
    return rows


def print_plan(plan: labconfig.Plan, out=None) -> None:
    out = out or sys.stdout
    print(f"lab {plan.name}: {_plural(len(plan.namespaces()), 'namespace')}, VPC "
          f"{plan.vpc_id}", file=out)
    table(plan_rows(plan), out)
    if plan.enis:
        print("", file=out)
        table([["ENI", "SUBNET", "SECURITY GROUPS", "IPV4", "IPV6", "NODE IF", "VPC IF"]] +
              [[e.id, e.subnet, ",".join(e.security_groups), e.ipv4, e.ipv6 or "-",
                e.node_ifname, e.fabric_ifname] for e in plan.enis], out)
    for n in plan.nat_gateways:
        print(f"NAT gateway {n.id} in {n.subnet}: {n.private_ipv4} -> {n.public_ipv4}",
              file=out)


def cmd_lab_plan(args) -> int:
    try:
        plan = labconfig.resolve(_load(args.config), args.name)
    except LabConfigError as e:
        raise config_error(e) from None
    if args.json:
        print_json(plan.to_dict())
    else:
        print_plan(plan)
    return EXIT_OK


def register(labsub) -> None:
    """Add validate, schema and plan to the ``lab`` command group."""
    config_help = "lab TOML (default: the embedded default lab)"
    q = named(labsub.add_parser("validate", help="check a lab file, every mistake at once "
                                                 "(no privilege needed)"))
    q.add_argument("config", nargs="?", help=config_help)
    add_json(q, 'machine-readable: {"valid", '
                   '"problems": [{"field", "message"}], "summary"}')
    q.set_defaults(func=cmd_lab_validate)
    q = labsub.add_parser("schema", help="the lab file's JSON Schema (draft 2020-12), for "
                                         "editors")
    q.set_defaults(func=cmd_lab_schema)
    q = named(labsub.add_parser("plan", help="the namespaces, interfaces, addresses and ENIs "
                                             "lab up would build (no privilege needed)"))
    q.add_argument("config", nargs="?", help=config_help)
    add_json(q, "the whole plan as JSON")
    q.set_defaults(func=cmd_lab_plan)
