"""The C data path frame by frame: ARP, NDP, the neighbour queue, anti-spoofing, the NAT hop.

No lab and no daemon: one namespace holding two veth pairs,

    env side:  envp (the test's end)  ==veth==  env0 (a DataPath ENV link, gateway 198.19.0.1)
    ENI side:  enip (the test's end)  ==veth==  eni0 (a DataPath ENI link, ENI 198.18.1.4)

The test writes frames into envp/enip with AF_PACKET, runs ``DataPath.poll`` for a few
milliseconds in its own thread, and reads what came out, decoding with scapy (which also checks
every checksum). Every rig test runs twice: with one thread, and with the ENI link served by
the inbound worker thread (``DataPath.start_inbound_worker``), which runs only inside ``poll``.
The rig is kit.rig's; its fixture, ``rig``, the datapath conftest's.
"""
from __future__ import annotations

import os
import socket

import pytest

from hyperplane import netns
from kit.rig import (
    ENI4, ENI6, ENI_MAC, ENV4, ENV6, ENV_MAC, ETH_P_ALL, GW4, GW6, GW_MAC, HOST4, HOST6, HOST_MAC,
    ROUTER4, learn_env, scapy,
)


def _icmp6_ok(pkt) -> bool:
    """Recompute the ICMPv6 checksum with scapy and compare."""
    sc = scapy()
    raw = bytes(pkt[sc.IPv6])
    fresh = sc.IPv6(raw)
    l4 = fresh.payload
    got = l4.cksum
    del l4.cksum
    return sc.IPv6(bytes(fresh)).payload.cksum == got


# ---- ARP ------------------------------------------------------------------------------------------
def test_arp_request_for_the_gateway_is_answered(rig):
    sc = scapy()
    req = sc.Ether(src=ENV_MAC, dst="ff:ff:ff:ff:ff:ff") / sc.ARP(
        op=1, hwsrc=ENV_MAC, psrc=ENV4, pdst=GW4)
    out = rig.exchange("envp", req)["envp"]
    replies = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(sc.ARP)]
    assert len(replies) == 1
    a = replies[0][sc.ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, GW_MAC, GW4, ENV_MAC, ENV4)
    assert replies[0].dst == ENV_MAC and replies[0].src == GW_MAC
    # the requester is learned (RFC 826 merge), usable without a probe of its own
    assert {(n["address"], n["mac"]) for n in rig.dp.neighbours()} == {(ENV4, ENV_MAC)}


def test_arp_for_an_address_we_do_not_own_is_ignored(rig):
    sc = scapy()
    req = sc.Ether(src=ENV_MAC, dst="ff:ff:ff:ff:ff:ff") / sc.ARP(
        op=1, hwsrc=ENV_MAC, psrc=ENV4, pdst="198.19.0.3")
    assert rig.exchange("envp", req)["envp"] == []
    assert rig.dp.neighbours() == []  # a request not for us creates no entry (arp_accept=0)


def test_unsolicited_arp_reply_creates_no_entry(rig):
    sc = scapy()
    rep = sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.ARP(op=2, hwsrc=HOST_MAC, psrc=HOST4,
                                                        hwdst=ENI_MAC, pdst=ENI4)
    rig.exchange("enip", rep)
    assert rig.dp.neighbours() == []


# ---- NDP ------------------------------------------------------------------------------------------
def _ns(src_mac, src_ip, target, hlim=255, dad=False):
    sc = scapy()
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, in6_getnsma, in6_getnsmac
    from socket import inet_pton, inet_ntop, AF_INET6

    dst = inet_ntop(AF_INET6, in6_getnsma(inet_pton(AF_INET6, target)))
    pkt = sc.Ether(src=src_mac, dst=in6_getnsmac(inet_pton(AF_INET6, dst))) / sc.IPv6(
        src="::" if dad else src_ip, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=target)
    if not dad:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=src_mac)
    return pkt


def test_neighbor_solicitation_for_the_eni_is_answered(rig):
    sc = scapy()
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr

    out = rig.exchange("enip", _ns(HOST_MAC, HOST6, ENI6))["enip"]
    nas = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(ICMPv6ND_NA)]
    assert len(nas) == 1
    na = nas[0]
    assert na.src == ENI_MAC and na.dst == HOST_MAC
    assert na[sc.IPv6].src == ENI6 and na[sc.IPv6].dst == HOST6 and na[sc.IPv6].hlim == 255
    assert na[ICMPv6ND_NA].tgt == ENI6
    # an ENI is not a router; solicited; override
    assert (na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (0, 1, 1)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == ENI_MAC
    assert _icmp6_ok(na)


def test_gateway_answers_as_a_router(rig):
    from scapy.layers.inet6 import ICMPv6ND_NA
    sc = scapy()

    out = rig.exchange("envp", _ns(ENV_MAC, ENV6, GW6))["envp"]
    na = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(ICMPv6ND_NA)][0]
    assert na[ICMPv6ND_NA].R == 1 and na[ICMPv6ND_NA].tgt == GW6


def test_dad_probe_for_our_address_is_defended_to_all_nodes(rig):
    from scapy.layers.inet6 import ICMPv6ND_NA
    sc = scapy()

    out = rig.exchange("enip", _ns(HOST_MAC, None, ENI6, dad=True))["enip"]
    na = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(ICMPv6ND_NA)][0]
    assert na[sc.IPv6].dst == "ff02::1" and na.dst == "33:33:00:00:00:01"
    assert na[ICMPv6ND_NA].S == 0  # RFC 4861 7.2.4: not solicited when answering ::


def _fix_icmp6_csum(frame: bytearray) -> bytearray:
    """Recompute the ICMPv6 checksum of an Ethernet+IPv6+ICMPv6 frame (RFC 4443 2.3)."""
    ip = frame[14:]
    plen = int.from_bytes(ip[4:6], "big")
    msg = bytearray(ip[40:40 + plen])
    msg[2:4] = b"\0\0"
    data = bytes(ip[8:40]) + plen.to_bytes(4, "big") + b"\0\0\0\x3a" + bytes(msg)
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    frame[14 + 40 + 2:14 + 40 + 4] = (~s & 0xFFFF).to_bytes(2, "big")
    return frame


@pytest.mark.parametrize("bad", ["hop_limit", "checksum", "zero_length_option"])
def test_invalid_ndp_is_dropped_and_counted(rig, bad):
    raw = bytearray(bytes(_ns(HOST_MAC, HOST6, ENI6, hlim=64 if bad == "hop_limit" else 255)))
    assert bytes(_fix_icmp6_csum(bytearray(raw))) == bytes(raw)  # the helper agrees with scapy
    if bad == "checksum":
        raw[14 + 40 + 2] ^= 0xFF
    if bad == "zero_length_option":
        raw[14 + 40 + 24 + 1] = 0  # the source link-layer option's length (RFC 4861 4.6)
        _fix_icmp6_csum(raw)       # only the option is wrong
    before = rig.drops()["bad_ndp"]
    out = rig.exchange("enip", bytes(raw))["enip"]
    assert out == []
    assert rig.drops()["bad_ndp"] == before + 1


# ---- forwarding, resolution, the wait queue ----------------------------------------------------
def _udp_out(sport=40000, dst=HOST4, src=ENV4, payload=b"x" * 32):
    sc = scapy()
    return sc.Ether(src=ENV_MAC, dst=GW_MAC) / sc.IP(src=src, dst=dst, ttl=64) / sc.UDP(
        sport=sport, dport=53) / payload


def test_outbound_resolves_the_next_hop_then_sends_the_waiting_packet_translated(rig):
    sc = scapy()
    learn_env(rig)
    out = rig.exchange("envp", _udp_out())["enip"]
    arps = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(sc.ARP)]
    assert len(arps) == 1, "one ARP request for the server, nothing else yet"
    a = arps[0]
    assert a.dst == "ff:ff:ff:ff:ff:ff" and a[sc.ARP].op == 1
    assert (a[sc.ARP].psrc, a[sc.ARP].pdst, a[sc.ARP].hwsrc) == (ENI4, HOST4, ENI_MAC)
    assert [n["state"] for n in rig.dp.neighbours() if n["address"] == HOST4] == ["incomplete"]
    # the server answers: the queued packet leaves, NATed, to the server's MAC
    rep = sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.ARP(op=2, hwsrc=HOST_MAC, psrc=HOST4,
                                                        hwdst=ENI_MAC, pdst=ENI4)
    out = rig.exchange("enip", rep)["enip"]
    pkts = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(sc.UDP)]
    assert len(pkts) == 1
    p = pkts[0]
    assert (p.src, p.dst) == (ENI_MAC, HOST_MAC)
    assert p[sc.IP].src == ENI4 and p[sc.IP].dst == HOST4 and p[sc.IP].ttl == 63
    raw = bytes(p[sc.IP])
    fresh = sc.IP(raw)
    del fresh.chksum, fresh[sc.UDP].chksum
    again = sc.IP(bytes(fresh))
    assert (again.chksum, again[sc.UDP].chksum) == (p[sc.IP].chksum, p[sc.UDP].chksum)
    # later packets go straight out, no new ARP
    out = rig.exchange("envp", _udp_out())["enip"]
    assert len(out) == 1 and sc.Ether(out[0]).haslayer(sc.UDP)
    assert rig.dp.counters()["forwarded_outbound"] == 2


def test_off_subnet_destination_goes_to_the_router(rig):
    sc = scapy()
    learn_env(rig)
    out = rig.exchange("envp", _udp_out(dst="198.18.7.9"))["enip"]
    arps = [sc.Ether(f)[sc.ARP] for f in out if sc.Ether(f).haslayer(sc.ARP)]
    assert [a.pdst for a in arps] == [ROUTER4]


UNRES_BYTES = 212_992   # HP_NEIGH_UNRES_BYTES: Linux's unres_qlen_bytes default


def test_wait_queue_is_bounded_and_a_silent_next_hop_fails_after_three_probes(rig):
    """The queue of an unresolved next hop is bounded in bytes, as Linux's is; so small
    packets wait in their hundreds (test_small_packets_wait_in_their_hundreds_...)."""
    sc = scapy()
    learn_env(rig)
    frame = len(_udp_out(payload=b"x" * 1400))      # as queued: translated, same length
    fit = UNRES_BYTES // frame                       # 147 frames of 1,442 bytes
    for i in range(fit + 4):
        rig.send("envp", _udp_out(sport=41000 + i, payload=b"x" * 1400))
        if i % 20 == 19:
            rig.run(10)   # let the data path take them (the test's socket would drop some)
    rig.run(30)
    d = rig.drops()
    assert d["neigh_queue_full"] == 4               # the 4 oldest made room
    (n,) = [n for n in rig.dp.neighbours() if n["address"] == HOST4]
    assert n["state"] == "incomplete" and n["queued"] == fit
    rig.run(3300)  # probes at 0, 1 s, 2 s; given up at 3 s
    probes = [f for f in rig.drain()["enip"] if sc.Ether(f).haslayer(sc.ARP)]
    assert rig.drops()["neigh_failed"] == fit
    assert [n for n in rig.dp.neighbours() if n["address"] == HOST4] == []
    counters = {x["name"]: x for x in rig.dp.counters()["links"]}
    assert counters["eni0"]["arp_out"] == 3
    assert len(probes) == 3  # RFC 4861 MAX_MULTICAST_SOLICIT, RETRANS_TIMER apart


def test_small_packets_wait_in_their_hundreds_for_an_unresolved_next_hop(rig):
    """A burst of small datagrams while the next hop resolves: 500 wait (101, Linux's old
    packet count, lost 99 of a burst through a new ENI, issue 16)."""
    learn_env(rig)
    for i in range(500):
        rig.send("envp", _udp_out(sport=42000 + i))
        if i % 20 == 19:
            rig.run(10)
    rig.run(30)
    assert rig.drops().get("neigh_queue_full", 0) == 0
    (n,) = [n for n in rig.dp.neighbours() if n["address"] == HOST4]
    assert n["state"] == "incomplete" and n["queued"] == 500


def test_spoofed_source_is_dropped(rig):
    learn_env(rig)
    before = rig.drops()["spoofed_source"]
    out = rig.exchange("envp", _udp_out(src="198.19.0.99"))
    assert out["enip"] == []
    assert rig.drops()["spoofed_source"] == before + 1
    assert rig.engine.counters()["packets_outbound"] == 0


def test_packet_to_the_gateway_itself_is_a_local_destination(rig):
    learn_env(rig)
    out = rig.exchange("envp", _udp_out(dst=GW4))
    assert out["enip"] == [] and rig.drops()["local_destination"] == 1


def test_unicast_for_another_mac_and_unknown_ethertypes_are_counted(rig):
    sc = scapy()
    rig.exchange("envp", sc.Ether(src=ENV_MAC, dst="02:99:99:99:99:99") / sc.IP(
        src=ENV4, dst=HOST4) / sc.UDP())
    rig.exchange("envp", sc.Ether(src=ENV_MAC, dst=GW_MAC, type=0x88B5) / (b"\0" * 46))
    d = rig.drops()
    assert (d["not_our_mac"], d["not_ip"]) == (1, 1)


def test_unsolicited_inbound_is_dropped_and_reaches_no_environment(rig):
    sc = scapy()
    learn_env(rig)
    syn = sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.IP(src=HOST4, dst=ENI4) / sc.TCP(
        sport=8000, dport=40000, flags="S")
    out = rig.exchange("enip", syn)
    assert out["envp"] == []
    assert rig.engine.counters()["drops"]["unsolicited"] == 1
    assert rig.drops()["engine"] == 1


def test_reply_is_translated_back_to_the_environment(rig):
    sc = scapy()
    learn_env(rig)
    rig.exchange("envp", _udp_out(sport=40001))
    rep = sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.ARP(op=2, hwsrc=HOST_MAC, psrc=HOST4,
                                                        hwdst=ENI_MAC, pdst=ENI4)
    out = rig.exchange("enip", rep)["enip"]
    sent = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(sc.UDP)][0]
    port = sent[sc.UDP].sport
    back = sc.Ether(src=HOST_MAC, dst=ENI_MAC) / sc.IP(src=HOST4, dst=ENI4) / sc.UDP(
        sport=53, dport=port) / b"answer"
    out = rig.exchange("enip", back)["envp"]
    got = [sc.Ether(f) for f in out if sc.Ether(f).haslayer(sc.UDP)]
    assert len(got) == 1
    g = got[0]
    assert (g.src, g.dst) == (GW_MAC, ENV_MAC)
    assert (g[sc.IP].src, g[sc.IP].dst, g[sc.UDP].dport) == (HOST4, ENV4, 40001)
    assert bytes(g[sc.UDP].payload) == b"answer"
    assert rig.dp.counters()["forwarded_inbound"] == 1


@pytest.mark.parametrize("gone", ["env0", "eni0"])
def test_a_vanished_interface_stops_being_polled(rig, gone):
    """(eni0, with the inbound worker: the worker finds it, the loop reports it.)"""
    from pyroute2 import IPRoute
    from hyperplane.engine._engine import POLL_LINK_DOWN

    with netns.entered(rig.ns), IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=gone)[0])
    seen = 0
    for _ in range(20):
        r = rig.dp.poll(10)
        if r > 0 and r & POLL_LINK_DOWN:
            seen += 1
    assert seen == 1, "reported once, then no longer polled (no busy loop)"
    links = {x["name"]: x["up"] for x in rig.dp.counters()["links"]}
    assert links == {"eni0": gone != "eni0", "env0": gone != "env0"}


def test_a_deleted_tap_stops_being_polled(scratch_ns):
    """A TAP environment link whose device is deleted reports once and is unwatched."""
    from pyroute2 import IPRoute
    from hyperplane.engine._engine import POLL_LINK_DOWN, DataPath, Engine
    from hyperplane.engine.config import EngineConfig, Eni

    ns = scratch_ns
    dp = None
    try:
        with netns.entered(ns):
            os.close(netns.open_tap("tap0", persist=True))
            fd = netns.open_tap("tap0")
        dp = DataPath()
        g = dp.add_group(Engine(EngineConfig(enis=[Eni("eni-0123456789abcdef0", ipv4=ENI4)])))
        dp.add_link("env", g, name="tap0", mac=GW_MAC, tap_fd=fd)
        assert dp.poll(10) & POLL_LINK_DOWN == 0
        with netns.entered(ns), IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname="tap0")[0])
        results = [dp.poll(10) for _ in range(10)]
        assert sum(1 for r in results if r > 0 and r & POLL_LINK_DOWN) == 1
        assert [x["up"] for x in dp.counters()["links"]] == [False]
    finally:
        if dp is not None:
            dp.close()


@pytest.mark.parametrize("frames", [1024, 4096])
def test_ring_depth_is_how_many_frames_wait_for_the_loop(scratch_ns, frames):
    """[datapath] ring_frames: while the loop does not run, a link holds exactly that many
    frames; the rest are counted as ring drops, and the loop then takes every one it held."""
    from pyroute2 import IPRoute
    from hyperplane.engine._engine import DataPath, Engine
    from hyperplane.engine.config import EngineConfig, Eni

    sent = 3000
    dp = s = None
    try:
        with netns.entered(scratch_ns):
            with open("/proc/sys/net/ipv6/conf/all/disable_ipv6", "w") as f:
                f.write("1")
            with IPRoute() as ipr:
                ipr.link("add", ifname="env0", kind="veth", peer="envp", address=GW_MAC)
                for n in ("env0", "envp"):
                    ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
            dp = DataPath()
            dp.ring_frames = frames
            g = dp.add_group(Engine(EngineConfig(enis=[Eni("eni-0123456789abcdef0",
                                                           ipv4=ENI4)])))
            link = dp.add_link("env", g, name="env0", mac=GW_MAC, ifname="env0")
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind(("envp", ETH_P_ALL))
        frame = bytes.fromhex(GW_MAC.replace(":", "") + ENV_MAC.replace(":", "")) + \
            b"\x88\xb5" + bytes(50)                      # local experimental EtherType
        for _ in range(sent):
            s.send(frame)
        (c,) = dp.counters()["links"]
        assert c["ring_frames"] == frames
        held = min(sent, frames)
        assert c["rx_ring_drops"] == sent - held
        for _ in range(20):
            dp.poll(5)
        (c,) = dp.counters()["links"]
        assert c["rx_packets"] == held and link == 0
        assert dp.counters()["drops"]["not_ip"] == held  # each one looked at, none lost after
    finally:
        if dp is not None:
            dp.close()
        if s is not None:
            s.close()


@pytest.mark.parametrize("frames", [1000, 512, 131072])
def test_a_ring_depth_the_kernel_cannot_have_is_refused(scratch_ns, frames):
    from pyroute2 import IPRoute
    from hyperplane.engine._engine import DataPath, Engine
    from hyperplane.engine.config import EngineConfig, Eni

    dp = DataPath()
    try:
        with netns.entered(scratch_ns):
            with IPRoute() as ipr:
                ipr.link("add", ifname="env0", kind="veth", peer="envp")
            dp.ring_frames = frames
            g = dp.add_group(Engine(EngineConfig(enis=[Eni("eni-0123456789abcdef0",
                                                           ipv4=ENI4)])))
            with pytest.raises(OSError, match="multiple of 128 from 1024 to 65536"):
                dp.add_link("env", g, name="env0", mac=GW_MAC, ifname="env0")
    finally:
        dp.close()
