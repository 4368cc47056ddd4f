"""A lab drawn from its resolved :class:`~hyperplane.labconfig.plan.Plan`, as a Mermaid
``flowchart`` (GitHub renders it in Markdown) or a Graphviz DOT ``digraph`` (``dot -Tsvg``):
what ``hyperplane lab graph`` prints. Pure functions from a plan to text, no I/O.

What is drawn:

- each execution environment (its function, attach kind and addresses), linked to the
  hyperplane node (the data path) by its attach kind (tap or veth);
- the hyperplane node, linked to each Hyperplane ENI by the ENI's link in the node namespace;
- the VPC as a subgraph holding one subgraph per subnet; a subnet's subgraph holds the subnet
  itself (its CIDRs and VPC router address), its ENIs (id, addresses, security groups), its
  hosts and its NAT gateways, each linked to the subnet;
- a subnet's routes out of the VPC (its route table's ``0.0.0.0/0`` and the like) as edges to
  the NAT gateway or the internet gateway; a NAT gateway's public side (its Elastic IP) as an
  edge to the internet, a subgraph holding the internet gateway and the internet hosts.

Node ids are built from the kind and the index (``env0``, ``eni0``, ``subnet1``): never a name
from the config, so they hold only letters and digits, which both languages take bare. Every
label is quoted, with the characters each language would misread replaced.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from hyperplane.labconfig.plan import Plan

#: The formats :func:`render` draws, by name.
FORMATS = ("mermaid", "dot")

# One drawing, independent of the language: nodes (id, label lines), clusters that nest, edges.
_Node = Tuple[str, List[str]]
_Edge = Tuple[str, str, str]


class _Cluster:
    def __init__(self, cid: str, title: List[str]):
        self.id = cid
        self.title = title
        self.nodes: List[_Node] = []
        self.clusters: List["_Cluster"] = []


def _addresses(*addrs: Optional[str]) -> List[str]:
    return [a for a in addrs if a]


def _layout(plan: Plan) -> Tuple[_Cluster, List[_Edge]]:
    """The lab as one top-level cluster (the drawing itself, untitled) and its edges."""
    top = _Cluster("", [])
    edges: List[_Edge] = []
    for i, v in enumerate(plan.envs):
        top.nodes.append((f"env{i}", [f"{v.name} ({v.function})", f"{v.ifname} {v.attach}"]
                          + _addresses(v.ipv4, v.ipv6)))
        edges.append((f"env{i}", "hyperplane", v.attach))
    top.nodes.append(("hyperplane", ["hyperplane node", "data path"]))

    vpc = _Cluster("vpc", [f"VPC {plan.vpc_id}".rstrip()])
    top.clusters.append(vpc)
    subnet_ids: Dict[str, str] = {}
    boxes: Dict[str, _Cluster] = {}
    for i, s in enumerate(plan.subnets):
        sid = subnet_ids[s.id] = f"subnet{i}"
        box = boxes[s.id] = _Cluster(f"sn{i}", [s.id])
        vpc.clusters.append(box)
        box.nodes.append((sid, [f"subnet {s.id}"] + _addresses(s.cidr, s.ipv6_cidr)
                          + [f"router {s.router4}"]))
    for i, e in enumerate(plan.enis):
        boxes[e.subnet].nodes.append((f"eni{i}", [f"ENI {e.id}"] + _addresses(e.ipv4, e.ipv6)
                                      + [" ".join(e.security_groups)]))
        edges.append(("hyperplane", f"eni{i}", e.node_ifname))
        edges.append((f"eni{i}", subnet_ids[e.subnet], ""))
    for i, h in enumerate(plan.hosts):
        boxes[h.subnet].nodes.append((f"host{i}", [f"host {h.name}"]
                                      + _addresses(h.ipv4, h.ipv6)))
        edges.append((f"host{i}", subnet_ids[h.subnet], ""))
    nat_ids: Dict[str, str] = {}
    for i, n in enumerate(plan.nat_gateways):
        nid = nat_ids[n.id] = f"nat{i}"
        boxes[n.subnet].nodes.append((nid, [f"NAT gateway {n.id}", n.private_ipv4,
                                            f"Elastic IP {n.public_ipv4}"]))
        edges.append((nid, subnet_ids[n.subnet], ""))

    if plan.internet is not None:
        net = _Cluster("internet", [f"internet {plan.internet.cidr}"])
        top.clusters.append(net)
        net.nodes.append(("igw", [f"internet gateway {plan.internet.gateway_id}",
                                  plan.internet.router4]))
        for i, h in enumerate(plan.internet_hosts):
            net.nodes.append((f"ihost{i}", [f"host {h.name}"] + _addresses(h.ipv4, h.ipv6)))
            edges.append((f"ihost{i}", "igw", ""))
        for i, n in enumerate(plan.nat_gateways):
            edges.append((f"nat{i}", "igw", n.public_ipv4))
    for t in plan.route_tables:
        for sub in t.subnets:
            for r in t.routes:
                target = nat_ids.get(r.target) if r.kind == "nat" else (
                    "igw" if r.kind == "igw" and plan.internet is not None else None)
                if target is not None and sub in subnet_ids:
                    edges.append((subnet_ids[sub], target, r.destination))
    return top, edges


# ---- Mermaid ------------------------------------------------------------------------------
def _mermaid_text(lines: List[str]) -> str:
    """A quoted Mermaid label: ``"`` would end it, ``#`` starts an entity code, ``<``/``>``
    would be taken as HTML; lines are joined by ``<br/>``."""
    esc = [x.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;")
           .replace(">", "#gt;") for x in lines]
    return '"' + "<br/>".join(esc) + '"'


def _mermaid_cluster(c: _Cluster, depth: int, out: List[str]) -> None:
    pad = "    " * depth
    for nid, label in c.nodes:
        out.append(f"{pad}{nid}[{_mermaid_text(label)}]")
    for sub in c.clusters:
        out.append(f"{pad}subgraph {sub.id} [{_mermaid_text(sub.title)}]")
        _mermaid_cluster(sub, depth + 1, out)
        out.append(f"{pad}end")


def mermaid(plan: Plan) -> str:
    """The lab as a Mermaid ``flowchart LR`` (ends with a newline)."""
    top, edges = _layout(plan)
    out = ["flowchart LR"]
    _mermaid_cluster(top, 1, out)
    for a, b, label in edges:
        out.append(f"    {a} -->|{_mermaid_text([label])}| {b}" if label else f"    {a} --> {b}")
    return "\n".join(out) + "\n"


# ---- Graphviz DOT -------------------------------------------------------------------------
def _dot_text(lines: List[str]) -> str:
    """A quoted DOT string; lines are joined by ``\\n`` (centred lines)."""
    return '"' + "\\n".join(x.replace("\\", "\\\\").replace('"', '\\"') for x in lines) + '"'


def _dot_cluster(c: _Cluster, depth: int, out: List[str]) -> None:
    pad = "    " * depth
    for nid, label in c.nodes:
        out.append(f"{pad}{nid} [label={_dot_text(label)}];")
    for sub in c.clusters:
        out.append(f"{pad}subgraph cluster_{sub.id} {{")
        out.append(f"{pad}    label={_dot_text(sub.title)};")
        _dot_cluster(sub, depth + 1, out)
        out.append(f"{pad}}}")


def dot(plan: Plan) -> str:
    """The lab as a Graphviz ``digraph`` (ends with a newline); subgraphs are clusters."""
    top, edges = _layout(plan)
    out = [f"digraph {_dot_text([f'lab {plan.name}'])} {{", "    rankdir=LR;",
           '    node [shape=box, fontname="Helvetica"];',
           '    edge [fontname="Helvetica", fontsize=10];',
           '    graph [fontname="Helvetica"];']
    _dot_cluster(top, 1, out)
    for a, b, label in edges:
        out.append(f"    {a} -> {b} [label={_dot_text([label])}];" if label
                   else f"    {a} -> {b};")
    out.append("}")
    return "\n".join(out) + "\n"


def render(plan: Plan, format: str = "mermaid") -> str:
    """The lab drawn in ``format`` (one of :data:`FORMATS`); ValueError for another."""
    if format == "mermaid":
        return mermaid(plan)
    if format == "dot":
        return dot(plan)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
