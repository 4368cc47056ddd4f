"""``lab graph`` and shell completion against a real running lab (the module's default lab):
the graph of ``--name`` is the plan the lab was built from, and completion offers the lab for
``--name`` and its functions for ``function invoke``."""
from __future__ import annotations

from hyperplane.labconfig import graph
from kit import graphsyntax
from kit.labs import cli_run
from kit.shellcomplete import complete, values


def test_lab_graph_of_a_running_lab_is_the_plan_it_was_built_from(dlab):
    p = cli_run("lab", "graph", "--name", dlab.name)
    assert p.returncode == 0, p.stderr
    assert p.stdout == graph.mermaid(dlab.plan)
    nodes, _, _ = graphsyntax.mermaid(p.stdout)
    assert dlab.eni.id in nodes["eni0"] and dlab.s4 in nodes["host0"]
    p = cli_run("lab", "graph", "--name", dlab.name, "--format", "dot")
    assert p.returncode == 0 and p.stdout == dlab.lab.graph("dot"), p.stderr
    graphsyntax.dot(p.stdout)


def test_completion_offers_the_running_lab_and_its_functions(dlab, tmp_path):
    words, p = complete("hyperplane lab status --name ", tmp_path)
    assert dlab.name in words, (words, p.stderr)
    words, p = complete(f"hyperplane function invoke --name {dlab.name} ", tmp_path)
    assert values(words) == [f.name for f in dlab.plan.functions] == ["fn-a", "fn-b"], words
    words, _ = complete(f"hyperplane lab exec --name {dlab.name} fn-", tmp_path)
    assert words == ["fn-a-0", "fn-b-0"]
