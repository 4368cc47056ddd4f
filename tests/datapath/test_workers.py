"""Workers (issue 19): N loop threads, each owning the ports p % N == its index of every ENI.

The two-link rig of test_datapath_unit.py (kit.rig) with ``DataPath.start_workers(2)`` and an
engine of two shards. What steering places (TCP/UDP by port: PACKET_FANOUT's program) lands on
its owner; what it cannot (an ICMP error, a fragment whose identification picks the other
worker) is handed over through the handoff rings; a new connection whose owner's slice is full
spills to the other worker, so exhaustion is decided over both slices; a worker that fails
stops the data path. Every other rig test runs with two workers too (the conftest's ``rig``).
"""
from __future__ import annotations

import pytest

from kit.rig import (ENI4, ENI_MAC, ENV4, ENV_MAC, GW_MAC, HOST4, HOST_MAC, Rig, learn_env,
                     scapy)


def _owner(port: int, workers: int = 2) -> int:
    return (port >> 1) % workers


def _rig(ns, **kw) -> Rig:
    from pyroute2 import IPRoute

    from hyperplane import netns

    with netns.entered(ns), IPRoute() as ipr:
        for a, b, mac in (("env0", "envp", GW_MAC), ("eni0", "enip", ENI_MAC)):
            ipr.link("add", ifname=a, kind="veth", peer=b, address=mac)
            for n in (a, b):
                ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
    return Rig(ns, workers=2, **kw)


@pytest.fixture
def rig2(scratch_ns):
    r = _rig(scratch_ns)
    try:
        yield r
    finally:
        r.close()


def _resolve_host(rig) -> None:
    """The server asks for the ENI (ARP): the data path answers and learns the server."""
    sc = scapy()
    rig.exchange("enip", sc.Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / sc.ARP(
        op=1, hwsrc=HOST_MAC, psrc=HOST4, pdst=ENI4))


def _udp(sport, dport=53, payload=b"q" * 16):
    sc = scapy()
    return sc.Ether(src=ENV_MAC, dst=GW_MAC) / sc.IP(src=ENV4, dst=HOST4, ttl=64) / sc.UDP(
        sport=sport, dport=dport) / payload


def _open(rig, sports):
    """Both neighbours known, one UDP datagram per source port; returns {source port: ENI
    port} of what left the ENI link."""
    sc = scapy()
    learn_env(rig)
    _resolve_host(rig)
    for sp in sports:
        rig.send("envp", _udp(sp, payload=b"%d" % sp))
    rig.run(80)
    got = {}
    for f in rig.drain()["enip"]:
        p = sc.Ether(f)
        if p.haslayer(sc.UDP):
            assert p[sc.IP].src == ENI4
            got[int(bytes(p[sc.UDP].payload))] = p[sc.UDP].sport
    return got


def test_flows_land_on_the_owner_of_their_port_and_come_back(rig2):
    sc = scapy()
    sports = list(range(40000, 40040))
    ports = _open(rig2, sports)
    assert sorted(ports) == sports
    # the kept source port where free, and always in the owner's slice: ports go to workers
    # in pairs, (p >> 1) % 2 (Linux clients connect from even ports)
    assert all(_owner(port) == _owner(sp) for sp, port in ports.items())
    w = rig2.dp.worker_counters()
    assert [x["forwarded_outbound"] for x in w] == [20, 20]
    for sp, port in ports.items():
        rig2.send("enip", sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.IP(src=HOST4, dst=ENI4) /
                  sc.UDP(sport=53, dport=port) / (b"r%d" % sp))
    rig2.run(80)
    back = [sc.Ether(f) for f in rig2.drain()["envp"]]
    got = {p[sc.UDP].dport: bytes(p[sc.UDP].payload) for p in back if p.haslayer(sc.UDP)}
    assert got == {sp: b"r%d" % sp for sp in sports}
    w = rig2.dp.worker_counters()
    assert [x["forwarded_inbound"] for x in w] == [20, 20]
    # the kernel steered every TCP/UDP frame to its owner: nothing needed handing over
    assert [x["handoff_out"] for x in w] == [0, 0]
    shards = rig2.engine.per_shard()
    assert [s["connections"] for s in shards] == [20, 20]


def test_an_icmp_error_reaches_the_owner_through_a_handoff(rig2):
    """ICMP goes to worker 0 (the program cannot read the embedded ports); worker 0 finds the
    owner from the embedded packet's source port (the ENI's port) and hands it over."""
    sc = scapy()
    ports = _open(rig2, [40002])   # worker 1's
    port = ports[40002]
    assert _owner(port) == 1
    inner = sc.IP(src=ENI4, dst=HOST4, ttl=63) / sc.UDP(sport=port, dport=53) / (b"q" * 16)
    err = sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.IP(src=HOST4, dst=ENI4) / sc.ICMP(
        type=3, code=3) / bytes(inner)
    before = rig2.dp.worker_counters()
    out = rig2.exchange("enip", err)["envp"]
    icmp = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(sc.ICMP)]
    assert len(icmp) == 1
    e = icmp[0]
    assert e[sc.IP].dst == ENV4 and e[sc.ICMP].type == 3
    emb = sc.IP(bytes(e[sc.ICMP].payload))
    assert (emb.src, emb[sc.UDP].sport) == (ENV4, 40002)   # translated back
    after = rig2.dp.worker_counters()
    assert after[0]["handoff_out"] - before[0]["handoff_out"] == 1
    assert after[1]["handoff_in"] - before[1]["handoff_in"] == 1
    assert rig2.engine.counters()["icmp_errors_translated"] == 1


def test_fragments_are_handed_to_the_owner_of_their_datagram(rig2):
    """Every fragment of a datagram goes to the worker its identification picks; that worker
    learns the owner from the first fragment's ports and hands the later ones over."""
    sc = scapy()
    _open(rig2, [40010])   # the server's MAC is known from here on
    sport, ident = 40011, 4242   # owner 1, the identification steers to worker 0
    dgram = sc.IP(src=ENV4, dst=HOST4, ttl=64, id=ident) / sc.UDP(sport=sport, dport=53) / (
        b"f" * 3000)
    frags = sc.fragment(dgram, fragsize=1200)
    assert len(frags) == 3
    before = rig2.dp.worker_counters()
    for fr in frags:
        rig2.send("envp", sc.Ether(src=ENV_MAC, dst=GW_MAC) / fr)
    rig2.run(60)
    out = [sc.Ether(f) for f in rig2.drain()["enip"]]
    got = [p for p in out if p.haslayer(sc.IP) and p[sc.IP].id == ident]
    assert len(got) == 3 and all(p[sc.IP].src == ENI4 for p in got)
    first = [p for p in got if p[sc.IP].frag == 0][0]
    assert _owner(first[sc.UDP].sport) == 1
    after = rig2.dp.worker_counters()
    assert after[0]["handoff_out"] - before[0]["handoff_out"] == 3
    assert after[1]["handoff_in"] - before[1]["handoff_in"] == 3
    assert rig2.engine.counters()["fragments_translated"] == 3


def test_a_full_slice_spills_so_exhaustion_is_decided_over_both(scratch_ns):
    """Four ports per ENI (two per worker: 65532-65533 and 65534-65535): four flows whose
    source ports all pick worker 0 get all four ports (two spill to worker 1); the fifth is
    port_exhausted, counted once."""
    sc = scapy()
    rig = _rig(scratch_ns, ports=(65532, 65535))
    try:
        ports = _open(rig, [40000, 40001, 40004, 40005, 40008])   # all worker 0's
        assert len(ports) == 4 and sorted(ports.values()) == [65532, 65533, 65534, 65535]
        c = rig.engine.counters()
        assert c["drops"]["port_exhausted"] == 1 and c["connections"] == 4
        assert sum(x["spilled"] for x in rig.dp.worker_counters()) >= 2
        # the spilled flows' replies come back (their ports are worker 1's)
        for sp, port in ports.items():
            rig.send("enip", sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.IP(src=HOST4, dst=ENI4)
                     / sc.UDP(sport=53, dport=port) / b"r")
        rig.run(60)
        back = [sc.Ether(f) for f in rig.drain()["envp"]]
        assert sorted(p[sc.UDP].dport for p in back if p.haslayer(sc.UDP)) == sorted(ports)
        # and a spilled flow's next datagram finds its connection on worker 1
        rig.send("envp", _udp(sorted(ports)[-1], payload=b"again"))
        rig.run(40)
        again = [sc.Ether(f) for f in rig.drain()["enip"]]
        assert [p[sc.UDP].sport for p in again if p.haslayer(sc.UDP)] == \
            [ports[sorted(ports)[-1]]]
        assert rig.engine.counters()["connections"] == 4
    finally:
        rig.close()


def test_a_worker_that_stops_stops_the_data_path(rig2):
    from hyperplane.engine._engine import POLL_WORKER_DOWN

    rig2.dp.break_worker(1)
    r = rig2.dp.poll(50)
    assert r > 0 and r & POLL_WORKER_DOWN
    assert [w for w, _ in rig2.dp.workers_down()] == [1]
    assert rig2.dp.poll(10) & POLL_WORKER_DOWN, "no half-working data path afterwards"
    with pytest.raises(ValueError, match="no such worker"):
        rig2.dp.break_worker(5)


def test_workers_are_refused_once_links_exist(rig2):
    with pytest.raises(OSError, match="run already"):
        rig2.dp.start_workers(2)
