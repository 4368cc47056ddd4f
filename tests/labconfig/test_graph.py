"""``hyperplane.labconfig.graph``: the lab drawn as Mermaid and DOT from its plan. The syntax is
checked by kit.graphsyntax (and by Graphviz's own ``dot -Tsvg`` where it is installed; CI
installs it), the content against the plan: every environment, ENI, subnet, host, NAT gateway
and route out of the VPC, with the edges between them."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from hyperplane import labconfig
from hyperplane.labconfig import graph
from kit import REPO, graphsyntax


def default_plan():
    return labconfig.resolve(labconfig.default(), "default")


def natgw_plan():
    return labconfig.resolve(labconfig.load(os.path.join(REPO, "examples", "natgw.toml")), "g")


def test_default_lab_as_mermaid_names_every_part_and_links_them():
    plan = default_plan()
    nodes, subgraphs, edges = graphsyntax.mermaid(graph.mermaid(plan))
    assert subgraphs == {"vpc": f"VPC {plan.vpc_id}", "sn0": "subnet-a"}
    assert nodes["env0"] == "fn-a-0 (fn-a)<br/>eth0 tap<br/>198.19.0.2/30<br/>2001:2:0:f000::2/64"
    assert nodes["env1"].startswith("fn-b-0 (fn-b)<br/>eth0 veth<br/>198.19.0.6/30")
    eni = plan.enis[0]
    assert nodes["eni0"] == f"ENI {eni.id}<br/>198.18.1.4<br/>2001:2:0:1::4<br/>sg-0a1b2c3d"
    assert nodes["subnet0"] == ("subnet subnet-a<br/>198.18.1.0/24<br/>2001:2:0:1::/64<br/>"
                                "router 198.18.1.1")
    assert nodes["host0"] == "host server<br/>198.18.1.5/24<br/>2001:2:0:1::5/64"
    assert set(edges) == {("env0", "hyperplane", "tap"), ("env1", "hyperplane", "veth"),
                          ("hyperplane", "eni0", "eni0"), ("eni0", "subnet0", ""),
                          ("host0", "subnet0", "")}


def test_a_nat_gateway_lab_draws_the_routes_out_and_the_internet():
    plan = natgw_plan()
    for text, parse in ((graph.mermaid(plan), graphsyntax.mermaid),
                        (graph.dot(plan), graphsyntax.dot)):
        nodes, _, edges = parse(text)
        nat = plan.nat_gateways[0]
        assert nat.id in nodes["nat0"] and nat.public_ipv4 in nodes["nat0"]
        assert plan.internet.gateway_id in nodes["igw"]
        assert "host web" in nodes["ihost0"]
        # private subnet -> NAT gateway (its 0.0.0.0/0), public subnet -> internet gateway,
        # the NAT gateway in the public subnet, out to the internet as its Elastic IP
        assert ("subnet0", "nat0", "0.0.0.0/0") in edges
        assert ("subnet1", "igw", "0.0.0.0/0") in edges
        assert ("nat0", "subnet1", "") in edges
        assert ("nat0", "igw", nat.public_ipv4) in edges
        assert ("ihost0", "igw", "") in edges


def test_dot_has_clusters_for_the_vpc_and_each_subnet():
    plan = natgw_plan()
    nodes, clusters, edges = graphsyntax.dot(graph.dot(plan))
    assert clusters == {"cluster_vpc", "cluster_sn0", "cluster_sn1", "cluster_internet"}
    assert nodes["subnet1"] == "subnet subnet-public\\n198.18.2.0/24\\nrouter 198.18.2.1"
    assert ("env0", "hyperplane", "veth") in edges


@pytest.mark.skipif(shutil.which("dot") is None and os.environ.get("CI") != "true",
                    reason="Graphviz's dot is not installed (Debian: graphviz)")
@pytest.mark.parametrize("plan", [default_plan, natgw_plan], ids=["default", "natgw"])
def test_graphviz_renders_the_dot_without_a_warning(plan):
    p = subprocess.run(["dot", "-Tsvg"], input=graph.dot(plan()), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.lstrip().startswith("<?xml") and "<svg" in p.stdout


def test_labels_cannot_break_out_of_their_quotes():
    nasty = ['a "quoted" <b>#1</b> \\ end']
    m = graph._mermaid_text(nasty)
    assert m.count('"') == 2 and "<" not in m and ">" not in m[:-1] and "#35;1" in m
    d = graph._dot_text(nasty)
    assert d == '"a \\"quoted\\" <b>#1</b> \\\\ end"'
    toks = graphsyntax._dot_tokens(d)
    assert len(toks) == 1 and toks[0][0] == "id"


def test_an_unknown_format_is_refused_naming_the_formats():
    with pytest.raises(ValueError, match="mermaid, dot"):
        graph.render(default_plan(), "svg")
    assert graph.render(default_plan(), "dot") == graph.dot(default_plan())
