"""The metric names a PromQL expression reads, so a dashboard or an alert rule can be checked
against what an exporter really serves (a query of a name nobody serves is silently empty).

:func:`metric_names` tokenizes the expression the way PromQL's lexer does, closely enough for
names: string literals, label matchers ``{...}``, ranges and subqueries ``[...]`` and Grafana
variables (``$lab``, ``${lab}``, ``[[lab]]``) are skipped; a name followed by ``(`` is a
function or aggregation; the label lists after ``by``, ``without``, ``on``, ``ignoring``,
``group_left`` and ``group_right`` are labels; keywords (``and``, ``or``, ``unless``, ``bool``,
``offset``, ``inf``, ``nan``, the aggregation operators) are not names. What is left is a metric
name exactly as a query gives it: a counter is ``..._total`` in the query as in the
exposition (the Prometheus text format,
https://prometheus.io/docs/instrumenting/exposition_formats/), so names are compared as
written, suffix and all.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Set, Tuple

#: PromQL's aggregation operators: ``sum by (x) (...)`` puts a keyword, not ``(``, after them.
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                          "count_values", "bottomk", "topk", "quantile", "limitk",
                          "limit_ratio"})
#: Keywords whose parenthesised list that follows holds label names.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left",
                                 "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}) \
    | AGGREGATIONS | LABEL_LIST_KEYWORDS

_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<open>[{\[(])
  | (?P<close>[}\])])
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)

_PAIRS = {"{": "}", "[": "]", "(": ")"}


def _tokens(expr: str) -> List[Tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(expr):
        kind = m.lastgroup
        if kind == "other" and m.group() in "\"'`":
            raise ValueError(f"unterminated string in {expr!r}")
        if kind != "space":
            out.append((kind, m.group()))
    return out


def metric_names(expr: str) -> Set[str]:
    """The metric names ``expr`` selects (see the module doc); ValueError when its brackets do
    not balance or a string is not closed."""
    toks = _tokens(expr)
    names: Set[str] = set()
    stack: List[str] = []          # open brackets; "(" opened for a label list is "L"
    label_list_next = False
    for i, (kind, text) in enumerate(toks):
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "open":
            inner = "L" if text == "(" and label_list_next else text
            stack.append(inner)
            label_list_next = False
            continue
        if kind == "close":
            if not stack or _PAIRS.get("(" if stack[-1] == "L" else stack[-1]) != text:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
            stack.pop()
            continue
        label_list_next = False
        if kind != "name" or any(s in ("{", "[", "L") for s in stack):
            continue               # label matchers, ranges, label lists: no metric names
        if text in LABEL_LIST_KEYWORDS:
            label_list_next = nxt == "("
        elif text in KEYWORDS or nxt == "(":
            continue               # a keyword, a function or an aggregation
        else:
            names.add(text)
    if stack:
        raise ValueError(f"unclosed {stack[-1].replace('L', '(')!r} in {expr!r}")
    return names


def served_names(exposition: str) -> Set[str]:
    """The sample names an exposition serves (``hyperplane_drops_total``, not the family name
    ``hyperplane_drops``): what a query selects."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name for fam in text_string_to_metric_families(exposition) for s in fam.samples}


def unserved(queries: Iterable[Tuple[str, str]], served: Set[str],
             synthetic: Iterable[str] = ("up",)) -> Dict[str, List[str]]:
    """``{where: [name, ...]}`` of every query (``(where, expr)``) that reads a metric name
    neither ``served`` nor ``synthetic`` (names Prometheus makes itself for every target, like
    ``up``); empty when every name is served."""
    known = set(served) | set(synthetic)
    out: Dict[str, List[str]] = {}
    for where, expr in queries:
        missing = sorted(metric_names(expr) - known)
        if missing:
            out[where] = missing
    return out

