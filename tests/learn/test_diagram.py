"""docs/tcp-states.md is generated from the engine's own TCP grid and cannot drift from it."""
from __future__ import annotations

import os
import subprocess
import sys

from hyperplane.learn import diagram
from hyperplane.engine import tcp_states
from hyperplane.engine.config import Timeouts
from hyperplane.engine.constants import Direction, TcpState
from kit import REPO
from kit.frames import compiled_module

DOC = os.path.join(REPO, "docs", "tcp-states.md")


def test_committed_page_is_what_the_generator_prints():
    out = subprocess.run([sys.executable, "-m", "hyperplane.learn.diagram"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with open(DOC, encoding="utf-8") as f:
        committed = f.read()
    assert committed == out.stdout, (
        f"docs/tcp-states.md is out of date with hyperplane/engine/tcp_states.py; regenerate it with "
        f"`{diagram.REGENERATE}` and commit the result")


def test_every_valid_cell_is_an_edge_and_every_edge_a_cell():
    grid = tcp_states.TRANSITIONS
    want = set()
    for d in Direction:
        for fc, name in enumerate(tcp_states.FLAG_CLASS_NAMES):
            for st in TcpState:
                nxt = grid[d][fc][st]
                if nxt == tcp_states.INV:
                    continue
                to = st if nxt == tcp_states.IGN else TcpState(nxt)
                want.add((st, to, diagram.DIR_NAMES[d], name, nxt == tcp_states.IGN))
    # read the edges back from the Mermaid text itself, as committed in the doc
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    got = {(a, b) + item for (a, b), items in diagram.parse_mermaid(block).items()
           for item in items}
    assert got == want, (f"in the diagram, not the grid: {sorted(got - want)}; "
                         f"in the grid, not the diagram: {sorted(want - got)}")
    # one edge line per (state, next state) pair: labels are collapsed
    pairs = [ln.split(" : ")[0].strip() for ln in block.splitlines() if " : " in ln]
    assert len(pairs) == len(set(pairs)) == len({(a, b) for a, b, *_ in want})
    # spot checks anyone can verify against RFC 9293: the handshake and a RST
    assert ("SYN_SENT", "SYN_RECV") in {(a.name, b.name) for a, b, *_ in got}
    assert (TcpState.SYN_RECV, TcpState.ESTABLISHED, "orig", "ACK", False) in got
    assert (TcpState.NONE, TcpState.SYN_SENT, "orig", "SYN", False) in got
    assert not any(a == TcpState.NONE and d == "reply" for a, _, d, *_ in got), \
        "a reply can never create a connection (unsolicited inbound is dropped)"


def test_states_show_their_timeouts():
    block = diagram.mermaid()
    t = Timeouts()
    assert 'state "ESTABLISHED (idle timeout 350 s)" as ESTABLISHED' in block
    assert f'state "TIME_WAIT (idle timeout {t.tcp_time_wait:g} s)" as TIME_WAIT' in block
    for st in TcpState:
        assert f" as {st.name}" in block


def test_compiled_grid_equals_the_python_grid():
    compiled = compiled_module().TCP_TRANSITIONS
    assert diagram.grid_diff(tcp_states.TRANSITIONS, compiled) == []
    assert diagram.checked_grid() is tcp_states.TRANSITIONS
    # and a difference would be reported, cell named
    broken = [list(map(list, d)) for d in tcp_states.TRANSITIONS]
    broken[Direction.INBOUND][tcp_states.SYN][TcpState.ESTABLISHED] = int(TcpState.CLOSE)
    assert diagram.grid_diff(tcp_states.TRANSITIONS, broken) == [
        f"[reply][SYN][ESTABLISHED]: {tcp_states.INV} != {int(TcpState.CLOSE)}"]


def test_dot_output_has_every_edge():
    text = diagram.dot()
    assert text.startswith("digraph tcp_conntrack {")
    for (a, b) in diagram.edges():
        assert f"    {a.name} -> {b.name} [label=" in text
