"""The TCP connection-tracking state diagram, generated from the grid the engines run.

``hyperplane.engine.tcp_states.TRANSITIONS[direction][flag class][state]`` is the table both engines
use (the compiled engine's copy, ``hyperplane.engine._engine.TCP_TRANSITIONS``, must be equal cell by
cell). This module turns it into

* a Mermaid ``stateDiagram-v2`` (GitHub renders it): one edge per (state, next state) pair,
  labelled with every (direction, flag class) that takes it, ``orig`` being the packet's
  direction environment -> VPC (the connection's orig tuple) and ``reply`` VPC -> ENI; a cell
  that passes the packet without changing state (``IGN``) is a self-loop marked
  ``(ignored)``; cells that drop the packet as ``tcp_invalid`` (``INV``) have no edge;
* each state's idle timeout from :class:`hyperplane.engine.config.Timeouts` defaults, in its name;
* the full grid as a Markdown table, invalid cells included;
* optionally Graphviz DOT.

``python3 -m hyperplane.learn.diagram > docs/tcp-states.md`` writes the page;
tests/learn/test_diagram.py fails when the committed page differs from what this prints, so
the doc cannot drift from the table (h11 generates its state diagrams from its own tables the
same way).
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from hyperplane.engine.config import Timeouts
from hyperplane.engine.constants import Direction, TcpState
from hyperplane.engine.tcp_states import FLAG_CLASS_NAMES, IGN, INV, TRANSITIONS

REGENERATE = "python3 -m hyperplane.learn.diagram > docs/tcp-states.md"

#: Direction names in the diagram: the kernel's words for a connection's two tuples.
DIR_NAMES = {Direction.OUTBOUND: "orig", Direction.INBOUND: "reply"}

Grid = Sequence[Sequence[Sequence[int]]]
#: (from state, to state) -> [(direction, flag class name, ignored)] in grid order.
Edges = Dict[Tuple[TcpState, TcpState], List[Tuple[str, str, bool]]]


class GridMismatch(RuntimeError):
    """The compiled engine's grid differs from tcp_states.TRANSITIONS."""


def compiled_grid() -> Optional[Grid]:
    """``hyperplane.engine._engine.TCP_TRANSITIONS``, or None when the extension is not built."""
    try:
        from hyperplane.engine import _engine
    except ImportError:
        return None
    return _engine.TCP_TRANSITIONS


def grid_diff(a: Grid, b: Grid) -> List[str]:
    """The cells where two grids differ, as ``[orig][SYN][SYN_SENT]: 1 != 2`` lines."""
    out = []
    for d in Direction:
        for fc, name in enumerate(FLAG_CLASS_NAMES):
            for st in TcpState:
                x, y = a[d][fc][st], b[d][fc][st]
                if x != y:
                    out.append(f"[{DIR_NAMES[d]}][{name}][{st.name}]: {x} != {y}")
    return out


def checked_grid() -> Grid:
    """tcp_states.TRANSITIONS, after checking the compiled copy (when built) equals it."""
    comp = compiled_grid()
    if comp is not None:
        diff = grid_diff(TRANSITIONS, comp)
        if diff:
            raise GridMismatch("the compiled engine's TCP grid differs from "
                               "hyperplane/engine/tcp_states.py (rebuild with `pip install -e .`?):\n"
                               + "\n".join(diff))
    return TRANSITIONS


def edges(grid: Grid = TRANSITIONS) -> Edges:
    """Every cell that is not INV, collapsed per (state, next state)."""
    out: Edges = {}
    for st in TcpState:
        for d in Direction:
            for fc, name in enumerate(FLAG_CLASS_NAMES):
                nxt = grid[d][fc][st]
                if nxt == INV:
                    continue
                to = st if nxt == IGN else TcpState(nxt)
                out.setdefault((st, to), []).append((DIR_NAMES[d], name, nxt == IGN))
    return out


def timeout_of(state: TcpState, timeouts: Timeouts = Timeouts()) -> Optional[float]:
    """The idle timeout of a state (its timeout class has the state's number); None for NONE."""
    if state == TcpState.NONE:
        return None
    return timeouts.as_list()[int(state)]


def state_title(state: TcpState) -> str:
    t = timeout_of(state)
    if t is None:
        return f"{state.name} (no entry yet)"
    return f"{state.name} (idle timeout {t:g} s)"


def _label(items: List[Tuple[str, str, bool]]) -> str:
    return ", ".join(f"{d} {f}" + (" (ignored)" if ign else "") for d, f, ign in items)


def mermaid(grid: Grid = TRANSITIONS) -> str:
    lines = ["stateDiagram-v2"]
    for st in TcpState:
        lines.append(f'    state "{state_title(st)}" as {st.name}')
    lines.append("    [*] --> NONE")
    for (a, b), items in edges(grid).items():
        lines.append(f"    {a.name} --> {b.name} : {_label(items)}")
    return "\n".join(lines)


_EDGE = re.compile(r"^\s*(\w+) --> (\w+) : (.+)$")
_ITEM = re.compile(r"^(orig|reply) (\w+)( \(ignored\))?$")


def parse_mermaid(text: str) -> Edges:
    """Read the edges back from :func:`mermaid`'s output (``[*]`` lines are not grid cells)."""
    out: Edges = {}
    for line in text.splitlines():
        m = _EDGE.match(line)
        if not m:
            continue
        a, b = TcpState[m.group(1)], TcpState[m.group(2)]
        for item in m.group(3).split(", "):
            im = _ITEM.match(item)
            if not im:
                raise ValueError(f"unreadable edge label {item!r} in {line!r}")
            out.setdefault((a, b), []).append((im.group(1), im.group(2), bool(im.group(3))))
    return out


def dot(grid: Grid = TRANSITIONS) -> str:
    """The same diagram in Graphviz DOT (``dot -Tsvg``): ignored cells dashed."""
    lines = ["digraph tcp_conntrack {", "    rankdir=TB;", "    node [shape=box];"]
    for st in TcpState:
        lines.append(f'    {st.name} [label="{state_title(st)}"];')
    for (a, b), items in edges(grid).items():
        real = [x for x in items if not x[2]]
        ign = [x for x in items if x[2]]
        if real:
            lines.append(f'    {a.name} -> {b.name} [label="{_label(real)}"];')
        if ign:
            lines.append(f'    {a.name} -> {b.name} [label="{_label(ign)}", style=dashed];')
    lines.append("}")
    return "\n".join(lines)


def _cell(v: int) -> str:
    if v == INV:
        return "invalid"
    if v == IGN:
        return "ignored"
    return TcpState(v).name


def table(grid: Grid = TRANSITIONS) -> str:
    """The whole grid: one row per (direction, flag class), one column per current state."""
    head = ["packet"] + [st.name for st in TcpState]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in Direction:
        for fc, name in enumerate(FLAG_CLASS_NAMES):
            cells = [f"{DIR_NAMES[d]} {name}"] + [_cell(grid[d][fc][st]) for st in TcpState]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def page(grid: Optional[Grid] = None) -> str:
    """docs/tcp-states.md."""
    grid = checked_grid() if grid is None else grid
    t = Timeouts()
    return f"""# TCP connection tracking: the state diagram

<!-- Generated by `{REGENERATE}` from hyperplane/engine/tcp_states.py.
     Do not edit by hand: tests/learn/test_diagram.py fails when this file and the table differ. -->

Every tracked TCP connection has one state, the kernel's conntrack names
(`nf_conntrack_proto_tcp.c`). Each packet is classified by its flags into a flag class (SYN,
SYNACK, FIN, ACK, RST, NONE; RST wins, SYN+FIN counts as NONE) and looked up in the grid
`TRANSITIONS[direction][flag class][state]` of
[`hyperplane/engine/tcp_states.py`](../hyperplane/engine/tcp_states.py), the table both engines run (the
compiled engine's copy in `csrc/hp_tcp.c` is checked equal cell by cell). **orig** is a packet
in the direction the connection was opened, from the execution environment to the VPC;
**reply** is the VPC's answer to the ENI. An edge marked *(ignored)* passes the packet and
keeps the state (a retransmission); a cell with no edge drops the packet as `tcp_invalid`. A
new connection must start with an orig SYN: anything else for an unknown flow is dropped as
`tcp_not_syn`, and a reply for an unknown flow as `unsolicited`, before the grid is consulted.
A segment of a tracked connection reaches the grid only if its sequence and acknowledgment
numbers are in the window its two ends announced: far outside, it is dropped as
`tcp_out_of_window` whatever its flags, so a forged RST or FIN moves no edge here
([window.py](../hyperplane/engine/reference/window.py)).
Each state shows its idle timeout (the `Timeouts` defaults; established TCP gets the 350 s
AWS documents for NAT gateway connections): a connection idle that long is removed and its
port returns to the pool. See [learn-conntrack.md](learn-conntrack.md) for the tour.

```mermaid
{mermaid(grid)}
```

## The grid

Rows: the packet (direction and flag class). Columns: the connection's state before it. Cells:
the state after it, *ignored* (passed, state kept) or *invalid* (dropped as `tcp_invalid`).

{table(grid)}

## Timeouts

| state | idle timeout (s) | `Timeouts` field |
|---|---|---|
""" + "\n".join(f"| {st.name} | {timeout_of(st):g} | `tcp_{st.name.lower()}` |"
                for st in TcpState if st != TcpState.NONE) + f"""

UDP has no grid: a flow is UNREPLIED ({t.udp_unreplied:g} s) until the VPC answers once, then
REPLIED ({t.udp_replied:g} s).
"""


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m hyperplane.learn.diagram",
        description="Print the TCP conntrack state diagram generated from the engine's "
                    f"transition grid (default: the page docs/tcp-states.md; `{REGENERATE}`).")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--mermaid", action="store_true", help="only the Mermaid diagram")
    fmt.add_argument("--dot", action="store_true", help="Graphviz DOT instead")
    args = ap.parse_args(argv)
    try:
        grid = checked_grid()
    except GridMismatch as e:
        print(f"hyperplane.learn.diagram: error: {e}", file=sys.stderr)
        return 1
    if args.mermaid:
        print(mermaid(grid))
    elif args.dot:
        print(dot(grid))
    else:
        sys.stdout.write(page(grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
