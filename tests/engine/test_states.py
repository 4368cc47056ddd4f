"""Connection state through the engines: the TCP grid walked by real packets, and UDP's
UNREPLIED -> REPLIED."""
from __future__ import annotations

import pytest

from hyperplane import DropReason, Timeouts, Verdict
from kit.frames import ENI_A, ENV, HOST, assert_checksums_valid, build, eni_addr, fields

T = Timeouts()
STATE_TIMEOUT = {
    "SYN_SENT": T.tcp_syn_sent, "SYN_RECV": T.tcp_syn_recv, "ESTABLISHED": T.tcp_established,
    "FIN_WAIT": T.tcp_fin_wait, "CLOSE_WAIT": T.tcp_close_wait, "LAST_ACK": T.tcp_last_ack,
    "TIME_WAIT": T.tcp_time_wait, "CLOSE": T.tcp_close,
    "UNREPLIED": T.udp_unreplied, "REPLIED": T.udp_replied,
}
V = Verdict


class Flow:
    """One environment flow through an engine; ``out``/``inn`` send a packet each way. TCP
    segments carry the sequence numbers a real pair of ends would: each side's next sequence
    number advances by its data, SYN and FIN; a repeated SYN or FIN is a retransmission (its
    first sequence number again); ACK acknowledges all the other side has sent; an RST before
    the other side has sent anything carries seq 0 (RFC 9293 3.10.7.1)."""

    ISN = (1000, 700000)    # the environment's and the VPC host's initial sequence numbers

    def __init__(self, eng, family=4, proto="tcp", sport=40001):
        self.eng, self.family, self.proto = eng, family, proto
        self.env, self.host = ENV[family][0], HOST[family][0]
        self.eni = eni_addr(ENI_A, family)
        self.sport, self.eni_port = sport, None
        self.now = 0.0
        self.nxt = [None, None]     # next sequence number per side (None: no SYN sent)
        self.fin_seq = [None, None]

    def _numbers(self, d, flags, payload):
        """seq and ack for a segment from side d (0: environment, 1: VPC host)."""
        if "S" in flags and "R" not in flags:
            # the first SYN, or a retransmission (it may carry more data than the first)
            self.nxt[d] = max(self.nxt[d] or 0, self.ISN[d] + 1 + len(payload))
            seq = self.ISN[d]
        elif "F" in flags and self.fin_seq[d] is not None:
            seq = self.fin_seq[d]               # a retransmitted FIN
        elif self.nxt[d] is None:
            seq = 0
        else:
            seq = self.nxt[d]
            self.nxt[d] += len(payload)
            if "F" in flags:
                self.fin_seq[d] = seq + len(payload)
                self.nxt[d] += 1
        other = self.nxt[1 - d]
        ack = other if "A" in flags and other is not None else 0
        return seq & 0xFFFFFFFF, ack & 0xFFFFFFFF

    def _build(self, d, flags, payload, src, dst, sport, dport):
        kw = {}
        if self.proto == "tcp":
            kw["seq"], kw["ack"] = self._numbers(d, flags, payload)
        return build(self.family, self.proto, src, dst, sport, dport, flags=flags,
                     payload=payload, **kw)

    def out(self, flags="", payload=b"", dt=1.0):
        self.now += dt
        res = self.eng.outbound(self._build(0, flags, payload, self.env, self.host, self.sport,
                                            443), now=self.now)
        if res.packet is not None:
            assert_checksums_valid(res.packet)
            self.eni_port = fields(res.packet).sport
        return res

    def inn(self, flags="", payload=b"", dt=1.0):
        self.now += dt
        res = self.eng.inbound(self._build(1, flags, payload, self.host, self.eni, 443,
                                           self.eni_port), now=self.now)
        if res.packet is not None:
            assert_checksums_valid(res.packet)
            assert fields(res.packet).dport == self.sport
        return res

    def entry(self):
        e, = self.eng.entries(now=self.now)
        return e


def _walk(flow, steps):
    """Each step: direction, flags, the verdict, the state after it, and optionally
    "kept": the segment passed without refreshing the timer (it changed nothing: an ACK from a
    side that has sent no SYN, window.py)."""
    for i, (direction, flags, verdict, state, *kept) in enumerate(steps):
        before = flow.entry().timeout if kept else None
        res = (flow.out if direction == "out" else flow.inn)(flags, payload=b"d" * i)
        assert res.verdict == verdict, (i, direction, flags, res)
        assert res.reason == DropReason.NONE
        e = flow.entry()
        assert e.state == state, (i, direction, flags)
        want = before - 1.0 if kept else STATE_TIMEOUT[state]     # each step is 1 s later
        assert e.timeout == pytest.approx(want), (i, state)


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_handshake_data_and_active_close(make_engine, family):
    flow = Flow(make_engine(), family)
    _walk(flow, [
        ("out", "S", V.NEW, "SYN_SENT"),
        ("in", "SA", V.REPLY, "SYN_RECV"),
        ("out", "A", V.ESTABLISHED, "ESTABLISHED"),
        ("out", "PA", V.ESTABLISHED, "ESTABLISHED"),
        ("in", "PA", V.REPLY, "ESTABLISHED"),
        ("out", "FA", V.ESTABLISHED, "FIN_WAIT"),
        ("in", "A", V.REPLY, "CLOSE_WAIT"),
        ("in", "FA", V.REPLY, "LAST_ACK"),
        ("out", "A", V.ESTABLISHED, "TIME_WAIT"),
        # TIME_WAIT: a retransmitted last FIN and its ACK keep the state
        ("in", "FA", V.REPLY, "TIME_WAIT"),
        ("out", "A", V.ESTABLISHED, "TIME_WAIT"),
    ])
    port = flow.eni_port
    # the same 4-tuple reopened from TIME_WAIT (RFC 6191): NEW again, same mapping
    _walk(flow, [("out", "S", V.NEW, "SYN_SENT")])
    assert flow.eni_port == port
    c = flow.eng.counters()
    assert c["connections_created"] == 1 and c["connections"] == 1
    assert sum(c["drops"].values()) == 0


def test_tcp_passive_close_from_the_vpc(make_engine):
    flow = Flow(make_engine())
    _walk(flow, [
        ("out", "S", V.NEW, "SYN_SENT"),
        ("in", "SA", V.REPLY, "SYN_RECV"),
        ("out", "A", V.ESTABLISHED, "ESTABLISHED"),
        ("in", "FA", V.REPLY, "FIN_WAIT"),
        ("out", "A", V.ESTABLISHED, "CLOSE_WAIT"),
        ("out", "FA", V.ESTABLISHED, "LAST_ACK"),
        ("in", "A", V.REPLY, "TIME_WAIT"),
    ])


def test_tcp_simultaneous_open(make_engine):
    flow = Flow(make_engine())
    _walk(flow, [
        ("out", "S", V.NEW, "SYN_SENT"),
        ("in", "S", V.REPLY, "SYN_RECV"),
        ("out", "SA", V.ESTABLISHED, "SYN_RECV"),
        ("in", "A", V.REPLY, "ESTABLISHED"),
    ])


def test_tcp_ignored_packets_pass_and_keep_state(make_engine):
    flow = Flow(make_engine())
    _walk(flow, [
        ("out", "S", V.NEW, "SYN_SENT"),
        ("out", "S", V.ESTABLISHED, "SYN_SENT"),      # retransmitted SYN
        ("in", "A", V.REPLY, "SYN_SENT", "kept"),     # ACK before SYNACK: ignored
        ("in", "SA", V.REPLY, "SYN_RECV"),
        ("in", "SA", V.REPLY, "SYN_RECV"),            # retransmitted SYNACK
        ("out", "A", V.ESTABLISHED, "ESTABLISHED"),
        ("in", "SA", V.REPLY, "ESTABLISHED"),         # SYNACK again (our ACK was lost)
        ("out", "S", V.ESTABLISHED, "ESTABLISHED", "kept"),   # stray SYN: passes as is
    ])


@pytest.mark.parametrize("setup,rst_dir", [
    ([("out", "S")], "out"),
    ([("out", "S")], "in"),
    ([("out", "S"), ("in", "SA")], "in"),
    ([("out", "S"), ("in", "SA"), ("out", "A")], "in"),
    ([("out", "S"), ("in", "SA"), ("out", "A")], "out"),
    ([("out", "S"), ("in", "SA"), ("out", "A"), ("out", "FA")], "in"),
    ([("out", "S"), ("in", "SA"), ("out", "A"), ("out", "FA"), ("in", "FA"), ("out", "A")],
     "out"),
], ids=["syn_sent_out", "syn_sent_in", "syn_recv_in", "established_in", "established_out",
        "fin_wait_in", "time_wait_out"])
def test_tcp_rst_closes(make_engine, setup, rst_dir):
    flow = Flow(make_engine())
    for d, flags in setup:
        assert (flow.out if d == "out" else flow.inn)(flags).verdict != V.DROP
    res = (flow.out if rst_dir == "out" else flow.inn)("R" if rst_dir == "out" else "RA")
    assert res.verdict == (V.ESTABLISHED if rst_dir == "out" else V.REPLY)
    e = flow.entry()
    assert e.state == "CLOSE"
    assert e.timeout == pytest.approx(T.tcp_close)
    # CLOSE: a late RST passes (with an ACK of what we sent: in SYN_SENT the VPC side has no
    # window yet, and only an acknowledgment of our SYN shows it is of this connection), a new
    # SYN on the same tuple reopens it
    _walk(flow, [("in", "RA", V.REPLY, "CLOSE"), ("out", "S", V.NEW, "SYN_SENT")])


@pytest.mark.parametrize("flags", ["A", "PA", "F", "FA", "R", "RA", "SA", "", "SF", "U"])
@pytest.mark.parametrize("family", [4, 6])
def test_new_tcp_connection_must_start_with_syn(make_engine, flags, family):
    flow = Flow(make_engine(), family)
    res = flow.out(flags)
    assert res == (V.DROP, None, DropReason.TCP_NOT_SYN)
    assert len(flow.eng) == 0
    c = flow.eng.counters()
    assert c["drops"]["tcp_not_syn"] == 1
    assert c["connections_created"] == 0 and c["packets_outbound"] == 0
    assert all(p["used"] == 0 for p in flow.eng.pool_fill())


@pytest.mark.parametrize("setup,bad", [
    ([("out", "S")], ("out", "A")),             # opener cannot ACK before the SYNACK
    ([("out", "S")], ("out", "SA")),            # opener cannot send SYNACK
    ([("out", "S")], ("out", "FA")),            # nothing to close yet
    ([("out", "S")], ("in", "FA")),             # acknowledges our SYN, but FIN before SYN
    ([("out", "S")], ("out", "")),              # no flags
    ([("out", "S"), ("in", "SA"), ("out", "A")], ("in", "S")),   # VPC opening on our mapping
    ([("out", "S"), ("in", "SA"), ("out", "A")], ("out", "")),
    ([("out", "S"), ("in", "SA"), ("out", "A")], ("out", "SF")),  # SYN+FIN: nonsense
    ([("out", "S"), ("in", "SA"), ("out", "A")], ("out", "SA")),
    ([("out", "S"), ("in", "SA"), ("out", "A")], ("in", "")),
], ids=["ss_out_ack", "ss_out_synack", "ss_out_fin", "ss_in_fin", "ss_out_none",
        "es_in_syn", "es_out_none", "es_out_synfin", "es_out_synack", "es_in_none"])
def test_tcp_invalid_transition_dropped(make_engine, setup, bad):
    flow = Flow(make_engine())
    for d, flags in setup:
        assert (flow.out if d == "out" else flow.inn)(flags).verdict != V.DROP
    before = flow.entry()
    res = (flow.out if bad[0] == "out" else flow.inn)(bad[1], dt=5.0)
    assert res == (V.DROP, None, DropReason.TCP_INVALID)
    after = flow.entry()
    assert after.state == before.state
    # not counted on the entry, and the idle timer is not refreshed
    assert after._replace(timeout=before.timeout) == before
    assert after.timeout == pytest.approx(before.timeout - 5.0)
    c = flow.eng.counters()
    assert c["drops"]["tcp_invalid"] == 1
    assert c["packets_outbound"] + c["packets_inbound"] == len(setup)


@pytest.mark.parametrize("family", [4, 6])
def test_udp_unreplied_then_replied(make_engine, family):
    flow = Flow(make_engine(), family, proto="udp")
    _walk(flow, [
        ("out", "", V.NEW, "UNREPLIED"),
        ("out", "", V.ESTABLISHED, "UNREPLIED"),
        ("in", "", V.REPLY, "REPLIED"),
        ("in", "", V.REPLY, "REPLIED"),
        ("out", "", V.ESTABLISHED, "REPLIED"),
    ])
    assert flow.entry().proto == "udp"
