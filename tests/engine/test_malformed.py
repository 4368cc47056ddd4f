"""Malformed packets (tests/kit/malformed.py) through both engines, in both directions.

Each case must give exactly its expected outcome: a drop counted under one named reason with
nothing else touched (no connection, no packet counted, the connection of the opener left as it
was), or a translation that carries what the engine does not check (TCP options, a wrong TCP/UDP
checksum, padding) exactly as it came. A checksum the engine does not verify must come out
wrong by the same amount it went in (RFC 1624 incremental update), so the receiver still drops
it. docs/robustness.md's table must be the corpus's (generated, compared here).
"""
from __future__ import annotations

import os
import socket
import struct

import pytest

from hyperplane import DropReason, Verdict
from kit import REPO
from kit.frames import ENI_A, ENV, HOST, locate_l4, ones_sum
from kit.malformed import CASES, DPORT, SPORT, Case, markdown_table, tcp_pkt, udp_pkt

IDS = [c.name for c in CASES]


def l4_sum(b: bytes) -> int:
    """One's-complement sum of pseudo-header + TCP/UDP segment (0xFFFF: the checksum verifies;
    anything else: wrong by that much). The IP length gives the segment length."""
    info = locate_l4(b)
    af, alen = (socket.AF_INET, 4) if info.family == 4 else (socket.AF_INET6, 16)
    off = 12 if info.family == 4 else 8
    src, dst = b[off:off + alen], b[off + alen:off + 2 * alen]
    seg = b[info.l4:info.end]
    assert socket.inet_ntop(af, src)
    pseudo = src + dst + struct.pack("!HH", info.proto, len(seg))
    return ones_sum(pseudo + seg)


def check_translated(case: Case, before: bytes, after: bytes, direction: str) -> None:
    """What a translated case must look like: same length, the NAT rewrite, the rest kept."""
    assert len(after) == len(before)
    info = locate_l4(before)
    fam = info.family
    f4 = fam == 4
    src = slice(12, 16) if f4 else slice(8, 24)
    dst = slice(16, 20) if f4 else slice(24, 40)
    eni = socket.inet_pton(socket.AF_INET if f4 else socket.AF_INET6,
                           ENI_A.ipv4 if f4 else ENI_A.ipv6)
    env = socket.inet_pton(socket.AF_INET if f4 else socket.AF_INET6, ENV[fam][0])
    if direction == "outbound":
        assert after[src] == eni and after[dst] == before[dst]
    else:
        assert after[dst] == env and after[src] == before[src]
        assert struct.unpack_from("!H", after, info.l4 + 2)[0] == SPORT
    ttl = 8 if f4 else 7
    assert after[ttl] == before[ttl] - 1
    if f4:
        assert ones_sum(after[:(after[0] & 0x0F) * 4]) == 0xFFFF, "IPv4 header checksum"
    # the transport header past the ports, the payload and any padding are carried as they are
    c_off = info.l4 + (16 if info.proto == 6 else 6)
    keep = [(info.l4 + 4, c_off), (c_off + 2, len(before))]
    for a, z in keep:
        assert after[a:z] == before[a:z], f"bytes {a}..{z} changed"
    csum_in = struct.unpack_from("!H", before, c_off)[0]
    if f4 and info.proto == 17 and csum_in == 0:
        assert struct.unpack_from("!H", after, c_off)[0] == 0   # RFC 768: no checksum stays so
    else:  # not verified: a right checksum stays right, a wrong one wrong by the same amount
        assert l4_sum(after) == l4_sum(before)


def opener(case: Case) -> bytes:
    """A valid packet of the case's family and protocol that creates the connection."""
    if case.proto == "tcp":
        return tcp_pkt(case.family, "outbound", SPORT)
    return udp_pkt(case.family, "outbound", SPORT)


@pytest.mark.parametrize("name", IDS)
def test_outbound(make_engine, name):
    case = next(c for c in CASES if c.name == name)
    eng = make_engine()
    pkt = case.make("outbound", SPORT)
    res = eng.outbound(pkt, now=1.0)
    c = eng.counters()
    if isinstance(case.expect_out, DropReason):
        assert res == (Verdict.DROP, None, case.expect_out)
        assert c["drops"][case.expect_out.label] == 1
        assert sum(c["drops"].values()) == 1, c["drops"]
        assert (c["packets_outbound"], c["connections_created"], len(eng)) == (0, 0, 0)
    else:
        assert (res.verdict, res.reason) == (case.expect_out, DropReason.NONE)
        assert sum(c["drops"].values()) == 0
        assert c["packets_outbound"] == 1 and len(eng) == 1
        check_translated(case, pkt, res.packet, "outbound")
        info = locate_l4(pkt)
        assert c["bytes_outbound"] == info.end   # the IP length, not the buffer's


@pytest.mark.parametrize("name", IDS)
def test_inbound_after_a_valid_opener(make_engine, name):
    case = next(c for c in CASES if c.name == name)
    eng = make_engine()
    first = eng.outbound(opener(case), now=1.0)
    assert first.verdict == Verdict.NEW
    port = struct.unpack_from("!H", first.packet, locate_l4(first.packet).l4)[0]
    pkt = case.make("inbound", port)
    res = eng.inbound(pkt, now=2.0)
    c = eng.counters()
    entry = eng.entries(now=2.0)[0]
    if isinstance(case.expect_in, DropReason):
        assert res == (Verdict.DROP, None, case.expect_in)
        assert c["drops"][case.expect_in.label] == 1
        assert sum(c["drops"].values()) == 1, c["drops"]
        assert c["packets_inbound"] == 0 and entry.packets_reply == 0
        assert len(eng) == 1
    else:
        assert (res.verdict, res.reason) == (case.expect_in, DropReason.NONE)
        assert sum(c["drops"].values()) == 0
        assert entry.packets_reply == 1
        check_translated(case, pkt, res.packet, "inbound")


def test_one_batch_of_every_case_drops_each_with_its_reason(make_engine):
    """The whole corpus in one translate_batch: the per-packet outcome does not depend on
    what came before it in the batch, and dropped packets are left untouched in the buffer."""
    eng = make_engine()
    pkts = [c.make("outbound", SPORT + i) for i, c in enumerate(CASES)]
    offsets, buf = [], bytearray()
    for p in pkts:
        offsets.append(len(buf))
        buf += p
    before = bytes(buf)
    n = len(pkts)
    verdicts, reasons = bytearray(n), bytearray(n)
    eng.translate_batch(0, buf, offsets, [len(p) for p in pkts], verdicts, reasons, now=1.0)
    for i, c in enumerate(CASES):
        if isinstance(c.expect_out, DropReason):
            assert (verdicts[i], reasons[i]) == (Verdict.DROP, c.expect_out), c.name
            assert buf[offsets[i]:offsets[i] + len(pkts[i])] == \
                before[offsets[i]:offsets[i] + len(pkts[i])], c.name
        else:
            assert verdicts[i] == c.expect_out, c.name
    drops = sum(isinstance(c.expect_out, DropReason) for c in CASES)
    assert sum(eng.counters()["drops"].values()) == drops


def test_docs_table_is_the_corpus():
    with open(os.path.join(REPO, "docs", "robustness.md")) as f:
        doc = f.read()
    assert markdown_table() in doc, (
        "docs/robustness.md's table differs from tests/kit/malformed.py: paste the output "
        "of `python3 tests/kit/malformed.py` between the table markers")


def test_every_reason_a_parser_can_give_is_in_the_corpus():
    """Each parse-level drop reason has at least one case (a new reason needs a case)."""
    parse_reasons = {DropReason.TRUNCATED, DropReason.BAD_IP_VERSION, DropReason.BAD_IP_HEADER,
                     DropReason.BAD_IP_CHECKSUM, DropReason.UNSUPPORTED_PROTOCOL,
                     DropReason.EXT_HEADER_CHAIN, DropReason.BAD_L4_HEADER,
                     DropReason.TTL_EXPIRED, DropReason.HOP_LIMIT_EXPIRED,
                     DropReason.FRAGMENT, DropReason.BAD_FRAGMENT}
    seen = {c.expect_out for c in CASES} | {c.expect_in for c in CASES}
    assert parse_reasons <= seen, parse_reasons - seen
    assert HOST  # the corpus sends to the benchmark-range hosts of kit.frames
    assert DPORT == 443
