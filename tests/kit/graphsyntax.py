"""Syntax checks for what ``hyperplane lab graph`` prints, without Mermaid or Graphviz
installed: the Mermaid flowchart subset the renderer writes (bare alphanumeric ids, quoted
labels, ``subgraph``/``end`` balanced, edges between declared ids) and a recursive-descent
parser of the DOT grammar subset it writes (graphviz.org/doc/info/lang.html). Each returns what
it read, so tests can check the content too, and raises AssertionError naming the line."""
from __future__ import annotations

import re
from typing import Dict, List, Set, Tuple

_ID = r"[A-Za-z][A-Za-z0-9]*"
_Q = r'"([^"]*)"'
# Words Mermaid's flowchart grammar takes as keywords, not ids.
MERMAID_RESERVED = {"end", "subgraph", "graph", "flowchart", "style", "class", "classDef",
                    "click", "linkStyle", "direction", "default"}


def mermaid(text: str) -> Tuple[Dict[str, str], Dict[str, str], List[Tuple[str, str, str]]]:
    """(nodes id -> label, subgraphs id -> title, edges (a, b, label)) of a flowchart."""
    lines = text.splitlines()
    assert lines and lines[0] == "flowchart LR", lines[:1]
    assert text.endswith("\n")
    nodes: Dict[str, str] = {}
    subgraphs: Dict[str, str] = {}
    edges: List[Tuple[str, str, str]] = []
    depth = 0
    for n, line in enumerate(lines[1:], 2):
        s = line.strip()
        if m := re.fullmatch(rf"({_ID})\[{_Q}\]", s):
            assert m[1] not in nodes and m[1] not in subgraphs, (n, line)
            nodes[m[1]] = m[2]
        elif m := re.fullmatch(rf"subgraph ({_ID}) \[{_Q}\]", s):
            assert m[1] not in nodes and m[1] not in subgraphs, (n, line)
            subgraphs[m[1]] = m[2]
            depth += 1
        elif s == "end":
            depth -= 1
            assert depth >= 0, (n, "an `end` without its subgraph")
        elif m := re.fullmatch(rf"({_ID}) -->(?:\|{_Q}\|)? ({_ID})", s):
            edges.append((m[1], m[3], m[2] or ""))
        else:
            raise AssertionError(f"line {n} is not Mermaid the renderer should write: {line!r}")
    assert depth == 0, "a subgraph without its `end`"
    for i in list(nodes) + list(subgraphs):
        assert i not in MERMAID_RESERVED and i[0] not in "ox", i   # `--> o`/`x` mean arrows
    for a, b, _ in edges:
        assert a in nodes and b in nodes, f"edge {a} --> {b} between undeclared nodes"
    return nodes, subgraphs, edges


_DOT_TOKEN = re.compile(r'\s*(?:(->)|([{}\[\];,=])|"((?:[^"\\]|\\.)*)"|([A-Za-z_][A-Za-z0-9_]*'
                        r'|-?[0-9.]+))')


def _dot_tokens(text: str) -> List[Tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text.rstrip()):
        m = _DOT_TOKEN.match(text, pos)
        assert m, f"DOT: cannot read {text[pos:pos + 40]!r}"
        pos = m.end()
        if m[1]:
            out.append(("->", m[1]))
        elif m[2]:
            out.append((m[2], m[2]))
        elif m[3] is not None:
            out.append(("id", m[3].replace('\\"', '"')))
        else:
            out.append(("id", m[4]))
    return out


def dot(text: str) -> Tuple[Dict[str, str], Set[str], List[Tuple[str, str, str]]]:
    """(nodes id -> label, cluster names, edges (a, b, label)) of a ``digraph``."""
    toks = _dot_tokens(text)
    i = 0
    nodes: Dict[str, str] = {}
    clusters: Set[str] = set()
    edges: List[Tuple[str, str, str]] = []

    def take(kind: str) -> str:
        nonlocal i
        assert i < len(toks) and toks[i][0] == kind, f"DOT: expected {kind} at {toks[i:i + 3]}"
        i += 1
        return toks[i - 1][1]

    def attrs() -> Dict[str, str]:
        out: Dict[str, str] = {}
        if i < len(toks) and toks[i][0] == "[":
            take("[")
            while toks[i][0] != "]":
                k = take("id")
                take("=")
                out[k] = take("id")
                if toks[i][0] == ",":
                    take(",")
            take("]")
        return out

    def stmts() -> None:
        take("{")
        while toks[i][0] != "}":
            first = take("id")
            if first == "subgraph":
                clusters.add(take("id"))
                stmts()
                continue
            if first in ("node", "edge", "graph"):
                attrs()
            elif toks[i][0] == "=":
                take("=")
                take("id")
            elif toks[i][0] == "->":
                take("->")
                second = take("id")
                edges.append((first, second, attrs().get("label", "")))
            else:
                nodes[first] = attrs().get("label", "")
            take(";")
        take("}")

    assert take("id") == "digraph"
    take("id")
    stmts()
    assert i == len(toks), f"DOT: text after the graph: {toks[i:i + 3]}"
    for a, b, _ in edges:
        assert a in nodes and b in nodes, f"edge {a} -> {b} between undeclared nodes"
    return nodes, clusters, edges
