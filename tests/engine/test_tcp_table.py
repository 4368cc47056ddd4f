"""The TCP transition grid: the compiled copy (csrc/hp_tcp.c) equals tcp_states.TRANSITIONS cell
by cell, and flag bytes are classified as the grid's rows expect."""
from __future__ import annotations

import pytest

from hyperplane import Direction, TcpState
from hyperplane.engine import tcp_states
from hyperplane.engine.tcp_states import ACK, FIN, NONE, RST, SYN, SYNACK, flag_class
from kit.frames import compiled_module

F, S, R, P, A, U, E, C = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


def test_reference_grid_shape():
    grid = tcp_states.TRANSITIONS
    assert len(grid) == len(Direction)
    for rows in grid:
        assert len(rows) == len(tcp_states.FLAG_CLASS_NAMES)
        for row in rows:
            assert len(row) == len(TcpState)
            assert all(v in (tcp_states.IGN, tcp_states.INV) or v in iter(TcpState) for v in row)


def test_compiled_grid_equals_tcp_states_cell_by_cell():
    compiled = compiled_module().TCP_TRANSITIONS
    ref = tcp_states.TRANSITIONS
    assert len(compiled) == len(ref)
    diffs = []
    for d in Direction:
        assert len(compiled[d]) == len(ref[d])
        for fc, name in enumerate(tcp_states.FLAG_CLASS_NAMES):
            assert len(compiled[d][fc]) == len(ref[d][fc])
            for st in TcpState:
                got, want = compiled[d][fc][st], ref[d][fc][st]
                if got != want:
                    diffs.append(f"[{d.name}][{name}][{st.name}]: compiled {got}, "
                                 f"reference {want}")
    assert not diffs, "\n".join(diffs)
    # and the same structure: nested tuples of ints
    assert isinstance(compiled, tuple) and isinstance(compiled[0][0], tuple)
    assert all(type(v) is int for d in compiled for row in d for v in row)


@pytest.mark.parametrize("flags,cls", [
    (S, SYN), (S | E | C, SYN), (S | P, SYN), (S | U, SYN),
    (S | A, SYNACK), (S | A | P, SYNACK),
    (F, FIN), (F | A, FIN), (F | P | A, FIN), (F | U, FIN),
    (A, ACK), (P | A, ACK), (A | U, ACK), (A | E | C, ACK),
    (R, RST), (R | A, RST), (R | S, RST), (R | S | F, RST), (R | F | A, RST), (0xFF, RST),
    (0, NONE), (P, NONE), (U, NONE), (E | C, NONE), (P | U, NONE),
    (S | F, NONE), (S | F | A, NONE), (S | F | P | A | U, NONE),
])
def test_flag_class(flags, cls):
    assert flag_class(flags) == cls, tcp_states.FLAG_CLASS_NAMES[flag_class(flags)]


def test_flag_class_of_every_byte_is_one_of_six():
    seen = {flag_class(b) for b in range(256)}
    assert seen == {SYN, SYNACK, FIN, ACK, RST, NONE}
    assert all(flag_class(b) == RST for b in range(256) if b & R)


def test_next_state_is_the_grid_lookup():
    assert tcp_states.next_state(Direction.OUTBOUND, S, TcpState.NONE) == TcpState.SYN_SENT
    assert tcp_states.next_state(Direction.INBOUND, S | A, TcpState.SYN_SENT) == \
        TcpState.SYN_RECV
    assert tcp_states.next_state(Direction.OUTBOUND, A, TcpState.NONE) == tcp_states.INV
    assert tcp_states.next_state(Direction.INBOUND, A, TcpState.SYN_SENT) == tcp_states.IGN
    assert tcp_states.next_state(Direction.OUTBOUND, R, TcpState.ESTABLISHED) == TcpState.CLOSE


def test_describe_lists_the_handshake():
    text = tcp_states.describe()
    assert "NONE --outbound SYN--> SYN_SENT" in text
    assert "SYN_SENT --inbound SYNACK--> SYN_RECV" in text
    assert "SYN_RECV --outbound ACK--> ESTABLISHED" in text
