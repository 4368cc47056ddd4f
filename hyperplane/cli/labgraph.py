"""``hyperplane lab graph [CONFIG | --name LAB] [--format mermaid|dot]``: the lab drawn from
its resolved plan (:mod:`hyperplane.labconfig.graph`): a config file's, a running lab's (the
plan it was built from), or the embedded default lab's."""
from __future__ import annotations

from hyperplane.cli import completers
from hyperplane.cli.common import DEFAULT_LAB
from hyperplane.errors import EXIT_OK
from hyperplane.lab import lifecycle
from hyperplane.labconfig import graph


def cmd_lab_graph(args) -> int:
    if args.config is not None:                  # a file, resolved under --name (or default)
        plan = lifecycle.read_config(args.config, args.name or DEFAULT_LAB)[2]
    elif args.name is not None:                  # the lab that is up, as it was built
        _, plan = lifecycle.load_lab(args.name)
    else:                                        # the embedded default lab, like `lab up`
        plan = lifecycle.read_config(None, DEFAULT_LAB)[2]
    print(graph.render(plan, args.format), end="")   # argparse checked the format
    return EXIT_OK


def register(labsub) -> None:
    q = labsub.add_parser(
        "graph", help="draw the lab (environments, hyperplane node, ENIs, VPC, subnets, hosts, "
                      "NAT gateways, internet) as a Mermaid flowchart or Graphviz DOT")
    q.add_argument("config", nargs="?", help="lab TOML to draw (default: the lab --name if "
                   "given, else the embedded default lab)")
    q.add_argument("--name", default=None, help="without CONFIG: the running lab to draw (the "
                   "plan it was built from); with CONFIG: the lab name to resolve it under "
                   f"(default {DEFAULT_LAB})").completer = completers.labs
    q.add_argument("--format", choices=graph.FORMATS, default="mermaid",
                   help="mermaid (a flowchart GitHub renders in Markdown; default) or dot "
                        "(Graphviz: `| dot -Tsvg > lab.svg`)")
    q.set_defaults(func=cmd_lab_graph)
