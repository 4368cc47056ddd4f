"""The TCP connection-tracking transition table: the one both engines run.

Theory of operation
-------------------
Each packet of a tracked TCP connection is classified by its flags into one of six *flag
classes* (SYN, SYNACK, FIN, ACK, RST, NONE) and looked up in a grid
``TRANSITIONS[direction][flag class][current state]``. The cell holds the next state, or

* ``IGN`` - pass the packet, keep the state (a retransmission or a harmless oddity),
* ``INV`` - drop the packet as ``tcp_invalid``: it cannot happen in that state.

``direction`` is ORIG (environment -> VPC, the side that opened the connection) or REPLY. The
state names are the kernel's conntrack names (nf_conntrack_proto_tcp.c), which, like the kernel,
do not record *which* side sent the first FIN: FIN_WAIT means "one FIN seen", CLOSE_WAIT "that
FIN was acknowledged", LAST_ACK "FINs seen from both sides", TIME_WAIT "the last FIN acked".
Differences from the kernel, on purpose:

* A new outbound connection must start with a SYN (no mid-stream pick-up): the AWS documentation
  says every connection is tracked from its start, and an ACK for an unknown flow is dropped
  as ``tcp_not_syn`` before the table is consulted.
* No SYN_SENT2 state: a simultaneous open (a SYN from the VPC while ours is outstanding,
  RFC 9293 3.5 figure 8) goes straight to SYN_RECV.

Sequence numbers are not this grid's business: before a segment of a tracked connection
reaches it, ``hyperplane/engine/reference/window.py`` (``csrc/hp_tcp_window.c``) checks that
the segment lies in the window the two ends have announced, as the kernel's ``tcp_in_window``
does. A segment outside is dropped as ``tcp_out_of_window`` whatever its flags; one in the
window whose flags this grid refuses is ``tcp_invalid``. So a forged RST or FIN from the VPC
side with a guessed tuple but a wrong sequence number never reaches these cells.

``csrc/hp_tcp.c`` holds the same grid for the compiled engine, and
``tests/engine/test_tcp_table.py`` checks the compiled grid equals this one cell by cell.
"""
from __future__ import annotations

from hyperplane.engine.constants import Direction, TcpState

# Flag classes, in the order of the grid's rows.
SYN, SYNACK, FIN, ACK, RST, NONE = range(6)
FLAG_CLASS_NAMES = ("SYN", "SYNACK", "FIN", "ACK", "RST", "NONE")

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10

IGN = -1  # pass, no state change
INV = -2  # drop as tcp_invalid


def flag_class(flags: int) -> int:
    """Classify a TCP flags byte. RST wins; SYN with FIN is nonsense (RFC 9293 3.10.7.4)."""
    if flags & TH_RST:
        return RST
    if flags & TH_SYN:
        if flags & TH_FIN:
            return NONE
        return SYNACK if flags & TH_ACK else SYN
    if flags & TH_FIN:
        return FIN
    if flags & TH_ACK:
        return ACK
    return NONE


S = TcpState
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL = (
    S.NONE, S.SYN_SENT, S.SYN_RECV, S.ESTABLISHED, S.FIN_WAIT, S.CLOSE_WAIT, S.LAST_ACK,
    S.TIME_WAIT, S.CLOSE)

#: TRANSITIONS[direction][flag class][state] -> next state, IGN or INV.
#: Columns:    NONE SYN_SENT SYN_RECV ESTABLISHED FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE
TRANSITIONS = (
    # ---- ORIG: environment -> VPC -------------------------------------------------------------
    (
        # SYN:  NONE->SYN_SENT opens (RFC 9293 3.5); SYN_SENT: retransmitted SYN;
        #       SYN_RECV/ES/closing: stray or retransmitted SYN, harmless, ignored;
        #       TIME_WAIT/CLOSE -> SYN_SENT: the same 4-tuple is reused (RFC 9293 3.6.1, RFC 6191).
        (sSS, sSS, IGN, IGN, IGN, IGN, IGN, sSS, sSS),
        # SYNACK from the opener: only in a simultaneous open (we are SYN_RECV after their SYN);
        #       anywhere else the opener cannot send one.
        (INV, INV, sSR, INV, INV, INV, INV, INV, INV),
        # FIN:  before the handshake completes there is nothing to close (INV in NONE/SYN_SENT);
        #       SYN_RECV/ES -> FIN_WAIT: first FIN (RFC 9293 3.6); FIN_WAIT/CLOSE_WAIT -> LAST_ACK:
        #       the second FIN; LAST_ACK: retransmitted FIN; TIME_WAIT: retransmitted last FIN;
        #       CLOSE: stays closed.
        (INV, INV, sFW, sFW, sLA, sLA, sLA, sTW, sCL),
        # ACK:  NONE: a new connection must start with SYN (checked before the table);
        #       SYN_SENT: the opener cannot ACK before the SYNACK; SYN_RECV -> ESTABLISHED: third
        #       packet of the three-way handshake; FIN_WAIT -> CLOSE_WAIT: the FIN is acked;
        #       LAST_ACK -> TIME_WAIT: the last FIN is acked.
        (INV, INV, sES, sES, sCW, sCW, sTW, sTW, sCL),
        # RST:  closes the connection in every state (RFC 9293 3.10.7); CLOSE holds the entry
        #       a short while so late segments still match.
        (INV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
        # NONE: no flags (or SYN+FIN): never valid (RFC 9293 3.10.7.4: ACK must be set).
        (INV, INV, INV, INV, INV, INV, INV, INV, INV),
    ),
    # ---- REPLY: VPC -> ENI ----------------------------------------------------------------------
    (
        # SYN:  SYN_SENT -> SYN_RECV: simultaneous open (RFC 9293 3.5 figure 8); otherwise the
        #       VPC side cannot open on our mapping (that would be unsolicited); ignored while
        #       a retransmission could explain it (SYN_RECV), invalid elsewhere.
        (INV, sSR, IGN, INV, INV, INV, INV, INV, INV),
        # SYNACK: SYN_SENT -> SYN_RECV: the answer to our SYN (RFC 9293 3.5 figure 6);
        #       later: a retransmitted SYNACK (our ACK was lost), ignored.
        (INV, sSR, IGN, IGN, IGN, IGN, IGN, IGN, IGN),
        # FIN:  same meaning as from the opener: first FIN -> FIN_WAIT, second -> LAST_ACK.
        (INV, INV, sFW, sFW, sLA, sLA, sLA, sTW, sCL),
        # ACK:  SYN_SENT: an ACK before any SYNACK is ignored (RFC 9293 3.10.7.3 makes the
        #       opener answer it with RST); SYN_RECV -> ESTABLISHED in a simultaneous open;
        #       FIN_WAIT -> CLOSE_WAIT, LAST_ACK -> TIME_WAIT as above.
        (INV, IGN, sES, sES, sCW, sCW, sTW, sTW, sCL),
        # RST:  closes in every state (RFC 9293 3.10.7), once window.py has found it in the
        #       window and exact (RFC 5961 3.2; an inexact one passes without reaching here).
        (INV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
        # NONE: never valid.
        (INV, INV, INV, INV, INV, INV, INV, INV, INV),
    ),
)


def next_state(direction: Direction, flags: int, state: TcpState) -> int:
    """The grid lookup: next state, :data:`IGN` or :data:`INV`."""
    return TRANSITIONS[direction][flag_class(flags)][state]


def describe() -> str:
    """The grid as text, one line per state-changing transition, generated from the table so
    it cannot drift from what the engines run."""
    lines = []
    for d in Direction:
        for fc, row in enumerate(TRANSITIONS[d]):
            for st, nxt in enumerate(row):
                if nxt >= 0 and nxt != st:
                    lines.append(f"{TcpState(st).name:>11} --{d.name.lower()} "
                                 f"{FLAG_CLASS_NAMES[fc]}--> {TcpState(nxt).name}")
    return "\n".join(lines)
