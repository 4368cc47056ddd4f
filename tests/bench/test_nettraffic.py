"""The traffic toolkit (kit.traffic, kit.wire) on a kernel-only topology: two namespaces joined by a
veth pair, no data path in between. Proves the tools themselves before NAT tests rely on them.

    A (hpa0)  198.18.200.1/24  2001:2:0:c8::1/64  <--veth-->  B (hpb0)  198.18.200.2/24  2001:2:0:c8::2/64
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from typing import NamedTuple

import pytest

from hyperplane import netns
from kit import traffic as nt, wire

PROBLEM = netns.privilege_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"network namespaces: {PROBLEM}")

ADDR = nt.PAIR_ADDR
PREFIX = {4: 24, 6: 64}
IF_A, IF_B = nt.PAIR_IF
MB = 1 << 20


class Topo(NamedTuple):
    a: str          # namespace names
    b: str
    mac_a: str      # as pyroute2 reports them
    mac_b: str


@pytest.fixture(scope="module")
def topo():
    with nt.veth_pair(f"hpt-{secrets.token_hex(3)}-") as (a, b, mac_a, mac_b):
        yield Topo(a, b, mac_a, mac_b)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Every test ends with the thread and file-descriptor counts it started with."""
    if "topo" in request.fixturenames:
        request.getfixturevalue("topo")  # build it first: its own fds/threads are not leaks
    threads, fds = threading.active_count(), _fd_count()
    yield
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (threading.active_count() > threads
                                           or _fd_count() > fds):
        time.sleep(0.02)
    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]
    assert _fd_count() <= fds, os.listdir("/proc/self/fd")


# ---- TCP ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_tcp_10mb_hash_roundtrip(topo, family):
    a_addr, b_addr = ADDR[family]
    data = nt.payload(10 * MB, seed=family)
    with nt.TcpServer(topo.b, b_addr) as srv:
        digest, local = nt.tcp_send(topo.a, b_addr, srv.port, data, timeout=30)
        conns = srv.connections
    assert digest == nt.sha256(data)
    assert local[0] == a_addr
    assert len(conns) == 1
    assert conns[0].peer == local            # the server saw A's own address and port
    assert conns[0].peer[0] == a_addr
    assert conns[0].digest == digest and conns[0].nbytes == len(data) and conns[0].error is None


def test_payload_is_deterministic():
    assert nt.payload(1000, 7) == nt.payload(1000, 7)
    assert nt.payload(1000, 7) != nt.payload(1000, 8)
    assert len(nt.payload(0, 1)) == 0


def test_tcp_empty_payload_and_verify(topo):
    a_addr, b_addr = ADDR[4]
    with nt.TcpServer(topo.b, b_addr) as srv:
        digest, _ = nt.tcp_send(topo.a, b_addr, srv.port, b"", verify=True)
        nt.tcp_send(topo.a, b_addr, srv.port, b"x" * 100, verify=True, source=a_addr)
    assert digest == nt.sha256(b"")
    assert [c.nbytes for c in srv.connections] == [0, 100]


def test_tcp_many_300_concurrent(topo):
    a_addr, b_addr = ADDR[4]
    n = 300
    with nt.TcpServer(topo.b, b_addr) as srv:
        results = nt.tcp_many(topo.a, b_addr, srv.port, n, payload_size=4096, timeout=60)
        conns = srv.wait_connections(n, timeout=10)
    assert len(results) == n
    bad = [r for r in results if not r.ok]
    assert not bad, bad[:5]
    assert all(local[0] == a_addr for local, ok in results)
    ports = {local[1] for local, ok in results}
    assert len(ports) == n
    assert len(conns) == n and all(c.digest is not None for c in conns)
    assert {c.peer for c in conns} == {r.local_addr for r in results}
    assert len({c.peer[1] for c in conns}) == n    # 300 distinct client ports seen by the server
    assert len({c.digest for c in conns}) == n     # each connection carried its own payload
    assert srv.max_live == n                       # all were open at the same time


def test_tcp_many_in_windows_v6(topo):
    a_addr, b_addr = ADDR[6]
    with nt.TcpServer(topo.b, b_addr) as srv:
        results = nt.tcp_many(topo.a, b_addr, srv.port, 20, payload_size=100_000,
                              concurrency=5)
    assert all(ok for _, ok in results) and len(results) == 20
    assert 1 <= srv.max_live <= 5


def test_tcp_errors_are_raised_not_hung(topo):
    a_addr, b_addr = ADDR[4]
    t0 = time.monotonic()
    with nt.TcpServer(topo.b, b_addr) as srv:
        port = srv.port
    with pytest.raises(AssertionError, match="Connection refused|ConnectionRefused"):
        nt.tcp_send(topo.a, b_addr, port, b"hello", timeout=5)
    results = nt.tcp_many(topo.a, b_addr, port, 3, 10, timeout=5)
    assert [ok for _, ok in results] == [False] * 3
    assert all("refused" in r.error for r in results)
    with pytest.raises(AssertionError, match="unreachable|no route|Network is unreachable"):
        nt.tcp_send(topo.a, "198.19.77.1", 80, b"x", timeout=2)    # no route in A
    assert time.monotonic() - t0 < 5
    with pytest.raises(ValueError, match="outside the test ranges"):
        nt.tcp_send(topo.a, "192.0.2.1", 80, b"x", timeout=1)


def test_tcp_server_records_incomplete_connection(topo):
    import socket

    a_addr, b_addr = ADDR[4]
    with nt.TcpServer(topo.b, b_addr) as srv:
        with netns.entered(topo.a):
            s = socket.socket()
        with s:
            s.settimeout(5)
            s.connect((b_addr, srv.port))
            s.sendall(nt.HEADER.pack(100) + b"only-ten!!")
        (c,) = srv.wait_connections(1, timeout=5)
    assert c.digest is None and c.nbytes == 10 and "EOF" in c.error


# ---- UDP ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_udp_roundtrip(topo, family):
    a_addr, b_addr = ADDR[family]
    msg = nt.payload(1200, seed=10 + family)
    with nt.UdpEchoServer(topo.b, b_addr) as srv:
        reply, local = nt.udp_roundtrip(topo.a, b_addr, srv.port, msg)
        reply2, local2 = nt.udp_roundtrip(topo.a, b_addr, srv.port, b"second", source=local)
        seen = srv.datagrams
    assert reply == msg and reply2 == b"second"
    assert local[0] == a_addr and local2 == local
    assert seen == [nt.Datagram(local, msg), nt.Datagram(local, b"second")]


def test_udp_timeout_is_bounded(topo):
    a_addr, b_addr = ADDR[4]
    with nt.UdpEchoServer(topo.b, b_addr, echo=False) as srv:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no reply after 3 sends"):
            nt.udp_roundtrip(topo.a, b_addr, srv.port, b"ping", timeout=0.6, retries=3)
        elapsed = time.monotonic() - t0
        assert 0.5 < elapsed < 2
        deadline = time.monotonic() + 2
        while len(srv.datagrams) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [d.data for d in srv.datagrams] == [b"ping"] * 3


# ---- raw frames -----------------------------------------------------------------------------------
def test_mac_of_matches_pyroute2(topo):
    assert wire.mac_of(topo.a, IF_A) == topo.mac_a
    assert wire.mac_of(topo.b, IF_B) == topo.mac_b
    assert wire.ifindex_of(topo.a, IF_A) >= 1
    with pytest.raises(AssertionError, match="no interface"):
        wire.mac_of(topo.a, IF_B)       # B's end is not in A


def _probe(topo, family, dport=40002, proto="udp"):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    a_addr, b_addr = ADDR[family]
    l3 = IP(src=a_addr, dst=b_addr) if family == 4 else IPv6(src=a_addr, dst=b_addr)
    l4 = UDP(sport=40001, dport=dport) if proto == "udp" else TCP(sport=40001, dport=dport)
    return bytes(Ether(src=topo.mac_a, dst=topo.mac_b) / l3 / l4 / Raw(b"hpt-probe"))


def _is_probe(dport=40002):
    from scapy.layers.inet import UDP

    return lambda e: UDP in e and e[UDP].dport == dport and bytes(e[UDP].payload) == b"hpt-probe"


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_sniffer_sees_injected_udp_exactly_once(topo, family):
    frame = _probe(topo, family)
    noise = [_probe(topo, family, dport=40003), _probe(topo, family, proto="tcp")]
    with wire.Sniffer(topo.b, IF_B) as everything, \
            wire.Sniffer(topo.b, IF_B, bpf=wire.bpf_l4("udp", 40002)) as filtered, \
            wire.Sniffer(topo.b, IF_B, bpf="udp dst port 40002", outgoing=False) as pcap:
        assert wire.inject(topo.a, IF_A, noise + [frame]) == 3
        (seen,) = everything.wait_for(_is_probe(), count=1, timeout=5)
        filtered.wait_for(count=1, timeout=5)
        pcap.wait_for(count=1, timeout=5)
    # after exit: counts are final and exact
    assert len(everything.matching(_is_probe())) == 1
    assert filtered.frames == [frame]               # the very bytes, nothing else
    assert pcap.frames == [frame]
    assert [r.pkttype for r in filtered.records] == [0]   # PACKET_HOST
    assert bytes(seen) == frame
    assert everything.drops == 0


def test_sniffer_sees_nothing_when_nothing_is_sent(topo):
    with wire.Sniffer(topo.b, IF_B, bpf=wire.bpf_l4("udp", 40002)) as filtered, \
            wire.Sniffer(topo.b, IF_B) as everything:
        time.sleep(0.3)
    assert filtered.frames == []
    assert everything.matching(_is_probe()) == []


def test_sniffer_sees_outgoing_and_real_traffic(topo):
    """Frames the namespace itself sends (kernel UDP) appear too, unless outgoing=False."""
    a_addr, b_addr = ADDR[4]
    with nt.UdpEchoServer(topo.b, b_addr) as srv, \
            wire.Sniffer(topo.a, IF_A, bpf=wire.bpf_l4("udp", srv.port)) as both, \
            wire.Sniffer(topo.a, IF_A, bpf=wire.bpf_l4("udp", srv.port), outgoing=False) as inbound:
        nt.udp_roundtrip(topo.a, b_addr, srv.port, b"hello")
        both.wait_for(count=2)
        inbound.wait_for(count=1)
    assert sorted(r.pkttype for r in both.records) == [0, 4]    # HOST (reply), OUTGOING
    assert [r.pkttype for r in inbound.records] == [0]


def test_sniffer_bad_interface(topo):
    with pytest.raises(AssertionError, match="cannot bind"):
        with wire.Sniffer(topo.a, "nonexistent0"):
            pass
    with pytest.raises(AssertionError, match="no interface"):
        wire.inject(topo.a, "nonexistent0", [b"\0" * 60])


def test_everything_closes(topo):
    """Servers, sniffers and clients used together leave no thread or descriptor behind (the
    autouse fixture checks the counts; this also checks them mid-test)."""
    base = threading.active_count()
    a_addr, b_addr = ADDR[6]
    with nt.TcpServer(topo.b, b_addr) as t, nt.UdpEchoServer(topo.b, b_addr) as u, \
            wire.Sniffer(topo.b, IF_B):
        assert threading.active_count() == base + 3
        nt.tcp_send(topo.a, b_addr, t.port, b"abc", verify=True)
        nt.udp_roundtrip(topo.a, b_addr, u.port, b"abc")
        nt.tcp_many(topo.a, b_addr, t.port, 10, 10)
    assert threading.active_count() == base
