"""The lab graphs in README.md and docs/tools.md are what ``hyperplane lab graph`` prints: each
``<!-- hyperplane lab graph ARGS -->`` line is followed by a ```mermaid block that must equal
the output of that command (``--format mermaid``), so the pictures cannot drift from the code.
The command's own errors and its Graphviz output are checked here too."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from kit import REPO, graphsyntax
from kit.shellcomplete import cli_env

MARKER = re.compile(r"^<!-- (hyperplane lab graph[^>]*?) -->\n```mermaid\n(.*?)^```$", re.M | re.S)


def run(*args):
    return subprocess.run([sys.executable, "-m", "hyperplane", *args], env=cli_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def drawn(doc):
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        return MARKER.findall(f.read())


@pytest.mark.parametrize("doc,count", [("README.md", 1), ("docs/tools.md", 2)])
def test_the_graphs_in_the_docs_are_what_lab_graph_prints(doc, count):
    found = drawn(doc)
    assert len(found) == count, f"{doc}: expected {count} marked graphs, found {len(found)}"
    for command, block in found:
        argv = shlex.split(command)[1:] + ["--format", "mermaid"]
        p = run(*argv)
        assert p.returncode == 0, p.stderr
        assert block == p.stdout, (f"{doc}: the graph after `{command}` differs from what the "
                                   "command prints now; paste its output there")
        graphsyntax.mermaid(block)
    assert found[0][0] == "hyperplane lab graph"      # the default lab comes first


def test_dot_format_and_errors():
    p = run("lab", "graph", "--format", "dot")
    assert p.returncode == 0, p.stderr
    nodes, clusters, _ = graphsyntax.dot(p.stdout)
    assert "cluster_vpc" in clusters and "hyperplane" in nodes
    p = run("lab", "graph", "--name", "no-such-lab-here")
    assert p.returncode == 3 and "no lab named 'no-such-lab-here'" in p.stderr
    p = run("lab", "graph", "/nonexistent/lab.toml")
    assert p.returncode == 2 and "cannot read /nonexistent/lab.toml" in p.stderr
    p = run("lab", "graph", "--format", "svg")
    assert p.returncode == 2 and "invalid choice: 'svg'" in p.stderr
    assert "Traceback" not in p.stderr
