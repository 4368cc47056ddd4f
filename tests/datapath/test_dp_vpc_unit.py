"""The C data path's VPC features frame by frame: function states, moving an environment to
another group, IPv6 permission, removing an address, the NAT-gateway role, RSTs for unknown TCP
segments, and the lab clock.

No lab and no daemon (kit.rig's approach, as in test_datapath_unit.py): one scratch namespace
(the conftest's ``scratch_ns``) with a veth pair per data-path link; the test holds the far end
of each pair (name + "p") with an AF_PACKET socket, writes frames there, runs
``DataPath.poll`` in its own thread for a few milliseconds and reads what came out, decoding
with scapy (which also checks checksums).

    group 0: env0 (gateway 198.19.0.1, environment 198.19.0.2)  ->  eni0 (ENI 198.18.1.4)
    group 1:                                                         eni1 (ENI 198.18.2.4)
    NAT gateway: in0 (inside, 198.18.3.5 in 198.18.3.0/24)   ->  out0 (EIP 198.18.200.4)
"""
from __future__ import annotations

import math
import socket
import time

import pytest

from hyperplane import netns
from kit.rig import ETH_P_ALL, Frames, scapy

GW_MAC, ENI_MAC, ENI1_MAC = "02:68:70:00:00:01", "02:68:70:00:00:e0", "02:68:70:00:00:e1"
IN_MAC, OUT_MAC = "02:68:70:00:00:a1", "02:68:70:00:00:a2"
ENV_MAC, HOST_MAC, RTR_MAC = "02:00:00:00:00:02", "02:00:00:00:00:05", "02:00:00:00:00:01"
PRIV_MAC, PUBRTR_MAC = "02:00:00:00:03:20", "02:00:00:00:c8:01"
ENV4, GW4, ENV6, GW6 = "198.19.0.2", "198.19.0.1", "2001:2:0:f000::2", "2001:2:0:f000::1"
ENI4, ENI6, HOST4, HOST6 = "198.18.1.4", "2001:2:0:1::4", "198.18.1.5", "2001:2:0:1::5"
ENI1_4, ROUTER1_4 = "198.18.2.4", "198.18.2.1"
NATGW4, INSIDE_NET, INSIDE_RTR = "198.18.3.5", "198.18.3.0/24", "198.18.3.1"
PRIV4, REMOTE4 = "198.18.3.20", "198.18.4.20"   # on the inside subnet / routed to it
EIP4, PUB_NET, PUB_RTR, NET_HOST = "198.18.200.4", "198.18.200.0/24", "198.18.200.1", \
    "198.18.250.9"


class Bench(Frames):
    """A DataPath whose links are veth pairs in one scratch namespace."""

    def __init__(self, ns: str):
        from hyperplane.engine._engine import DataPath

        self.ns = ns
        self.dp = DataPath()
        self.socks = {}
        self.engines = []

    def group(self, *enis, **cfg):
        from hyperplane.engine._engine import Engine
        from hyperplane.engine.config import EngineConfig

        eng = Engine(EngineConfig(enis=list(enis), seed=7, **cfg))
        self.engines.append(eng)
        return self.dp.add_group(eng), eng

    def link(self, role: str, group: int, name: str, mac: str) -> int:
        from pyroute2 import IPRoute

        with netns.entered(self.ns):
            with IPRoute() as ipr:
                ipr.link("add", ifname=name, kind="veth", peer=name + "p", address=mac)
                for n in (name, name + "p"):
                    ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
            li = self.dp.add_link(role, group, name=name, mac=mac, ifname=name)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((name + "p", ETH_P_ALL))
            s.setblocking(False)
        self.socks[name] = s
        return li

    def drain(self):
        """Frames that came out at the test's end of each link, decoded by scapy."""
        sc = scapy()
        return {name: [sc.Ether(f) for f in got] for name, got in super().drain().items()}

    def exchange(self, name: str, frame, ms: int = 30):
        self.drain()
        self.socks[name].send(bytes(frame))
        self.run(ms)
        return self.drain()

    def drops(self):
        return self.dp.counters()["drops"]

    def link_counters(self, name: str):
        return {x["name"]: x for x in self.dp.counters()["links"]}[name]


@pytest.fixture
def bench(scratch_ns):
    b = Bench(scratch_ns)
    try:
        yield b
    finally:
        b.close()


ENI_A_ID, ENI_B_ID, NAT_ID = "eni-0123456789abcdef0", "eni-0123456789abcdef1", \
    "eni-0123456789abcdefa"


@pytest.fixture
def vpc(bench):
    """Group 0 (env0 -> eni0, dual stack), group 1 (eni1 only), neighbours known."""
    from hyperplane.engine.config import Eni

    b = bench
    b.g0, b.eng0 = b.group(Eni(ENI_A_ID, ipv4=ENI4, ipv6=ENI6))
    b.g1, b.eng1 = b.group(Eni(ENI_B_ID, ipv4=ENI1_4))
    b.eni0 = b.link("eni", b.g0, "eni0", ENI_MAC)
    b.eni1 = b.link("eni", b.g1, "eni1", ENI1_MAC)
    b.env0 = b.link("env", b.g0, "env0", GW_MAC)
    dp = b.dp
    for a in (ENI4, ENI6):
        dp.add_address(b.eni0, a)
    dp.set_subnet(b.eni0, "198.18.1.0/24", "198.18.1.1")
    dp.set_subnet(b.eni0, "2001:2:0:1::/64", "2001:2:0:1::1")
    dp.add_address(b.eni1, ENI1_4)
    dp.set_subnet(b.eni1, "198.18.2.0/24", ROUTER1_4)
    for a in (GW4, GW6):
        dp.add_address(b.env0, a)
    dp.set_environment(b.env0, ENV4)
    dp.set_environment(b.env0, ENV6)
    # neighbours: each asks for our address once and is learned (RFC 826 merge / NS option)
    b.exchange("env0", _arp_req(ENV_MAC, ENV4, GW4))
    b.exchange("env0", _ns(ENV_MAC, ENV6, GW6))
    b.exchange("eni0", _arp_req(HOST_MAC, HOST4, ENI4))
    b.exchange("eni0", _ns(HOST_MAC, HOST6, ENI6))
    b.exchange("eni1", _arp_req(RTR_MAC, ROUTER1_4, ENI1_4))
    return b


@pytest.fixture
def natgw(bench):
    """A NAT gateway: in0 (inside, private side) -> out0 (public side, the EIP)."""
    from hyperplane.engine.config import Eni

    b = bench
    b.gn, b.engn = b.group(Eni(NAT_ID, ipv4=EIP4))
    b.out0 = b.link("eni", b.gn, "out0", OUT_MAC)
    b.in0 = b.link("inside", b.gn, "in0", IN_MAC)
    b.dp.add_address(b.out0, EIP4)
    b.dp.set_subnet(b.out0, PUB_NET, PUB_RTR)
    b.dp.add_address(b.in0, NATGW4)
    b.dp.set_subnet(b.in0, INSIDE_NET, INSIDE_RTR)
    b.exchange("out0", _arp_req(PUBRTR_MAC, PUB_RTR, EIP4))
    b.exchange("in0", _arp_req(PRIV_MAC, PRIV4, NATGW4))
    b.exchange("in0", _arp_req(RTR_MAC, INSIDE_RTR, NATGW4))
    return b


# ---- frames -----------------------------------------------------------------------------------
def _arp_req(mac, ip, target):
    sc = scapy()
    return sc.Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / sc.ARP(op=1, hwsrc=mac, psrc=ip,
                                                              pdst=target)


def _ns(mac, ip, target):
    sc = scapy()
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, in6_getnsma, in6_getnsmac

    dst = socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6,
                                                                         target)))
    return sc.Ether(src=mac, dst=in6_getnsmac(socket.inet_pton(socket.AF_INET6, dst))) / \
        sc.IPv6(src=ip, dst=dst, hlim=255) / ICMPv6ND_NS(tgt=target) / \
        ICMPv6NDOptSrcLLAddr(lladdr=mac)


def _ip(src, dst, ttl=64):
    sc = scapy()
    return sc.IPv6(src=src, dst=dst, hlim=ttl) if ":" in src else sc.IP(src=src, dst=dst, ttl=ttl)


def _udp(smac, dmac, src, dst, sport, dport, payload=b"x" * 16):
    sc = scapy()
    return sc.Ether(src=smac, dst=dmac) / _ip(src, dst) / sc.UDP(sport=sport, dport=dport) / \
        payload


def _tcp(smac, dmac, src, dst, sport, dport, flags, seq=1000, ack=0, payload=b""):
    sc = scapy()
    pkt = sc.Ether(src=smac, dst=dmac) / _ip(src, dst) / sc.TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=512)
    return pkt / payload if payload else pkt


def _l3(frame):
    sc = scapy()
    return frame[sc.IP] if frame.haslayer(sc.IP) else frame[sc.IPv6]


def _of(frames, layer):
    sc = scapy()
    return [f for f in frames if f.haslayer(getattr(sc, layer))]


def _checksums_ok(frame) -> bool:
    """scapy recomputes every checksum (IPv4 header, TCP/UDP) and the bytes are the same."""
    sc = scapy()
    raw = bytes(frame)
    fresh = sc.Ether(raw)
    ip = _l3(fresh)
    if fresh.haslayer(sc.IP):
        del ip.chksum
    for L in (sc.TCP, sc.UDP):
        if fresh.haslayer(L):
            del fresh[L].chksum
    return bytes(sc.Ether(bytes(fresh))) == raw


# ---- every new reason has a name ----------------------------------------------------------------
def test_new_drop_reasons_are_named_and_counted(vpc):
    from hyperplane.engine._engine import DATAPATH_DROP_REASONS, LINK_STATES

    new = ("function_pending", "function_inactive", "no_vpc_config", "ipv6_not_allowed")
    assert DATAPATH_DROP_REASONS[-5:-1] == new
    assert DATAPATH_DROP_REASONS[-1] == "handoff_full"   # the workers' (issue 19)
    assert set(new) <= set(vpc.drops())
    assert LINK_STATES == ("active", "pending", "inactive", "detached")
    c = vpc.link_counters("env0")
    assert (c["state"], c["blocked"], c["ipv6_allowed"]) == ("active", 0, True)
    assert vpc.dp.counters()["rst_sent"] == 0


# ---- function states ----------------------------------------------------------------------------
@pytest.mark.parametrize("state, reason", [("pending", "function_pending"),
                                           ("inactive", "function_inactive"),
                                           ("detached", "no_vpc_config")])
def test_a_function_that_is_not_active_cannot_send_but_arp_and_ndp_work(vpc, state, reason):
    sc = scapy()
    from scapy.layers.inet6 import ICMPv6ND_NA

    vpc.dp.set_link_state(vpc.env0, state)
    for i in range(3):
        out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV4, HOST4, 40000 + i, 53))
        assert out["eni0"] == []
    out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV6, HOST6, 40009, 53))
    assert out["eni0"] == []
    assert vpc.drops()[reason] == 4
    c = vpc.link_counters("env0")
    assert (c["state"], c["blocked"]) == (state, 4)
    assert vpc.eng0.counters()["packets_outbound"] == 0 and len(vpc.eng0) == 0
    # the neighbour protocols still answer: the environment's caches stay sane
    arp = _of(vpc.exchange("env0", _arp_req(ENV_MAC, ENV4, GW4))["env0"], "ARP")
    assert len(arp) == 1 and arp[0][sc.ARP].op == 2 and arp[0][sc.ARP].psrc == GW4
    na = [f for f in vpc.exchange("env0", _ns(ENV_MAC, ENV6, GW6))["env0"]
          if f.haslayer(ICMPv6ND_NA)]
    assert len(na) == 1 and na[0][ICMPv6ND_NA].tgt == GW6
    # Active again: forwarded, and blocked keeps its count
    vpc.dp.set_link_state(vpc.env0, "active")
    out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV4, HOST4, 40003, 53))
    (p,) = _of(out["eni0"], "UDP")
    assert _l3(p).src == ENI4 and p.dst == HOST_MAC
    assert vpc.link_counters("env0")["blocked"] == 4


def test_link_state_arguments_are_checked(vpc):
    dp = vpc.dp
    with pytest.raises(ValueError, match="state must be one of"):
        dp.set_link_state(vpc.env0, "asleep")
    with pytest.raises(ValueError, match="is an eni link; this needs an env link"):
        dp.set_link_state(vpc.eni0, "pending")
    for bad in (99, -1, "0", None):
        with pytest.raises(ValueError, match="no such link"):
            dp.set_link_state(bad, "pending")
    assert vpc.link_counters("env0")["state"] == "active"


# ---- moving an environment to another group -----------------------------------------------------
def test_set_link_group_moves_new_connections_and_old_replies_still_arrive(vpc):
    sc = scapy()
    out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV4, HOST4, 40001, 53))
    (old,) = _of(out["eni0"], "UDP")
    assert _l3(old).src == ENI4
    vpc.dp.set_link_group(vpc.env0, vpc.g1)
    assert vpc.link_counters("env0")["group"] == vpc.g1
    out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV4, HOST4, 40002, 53))
    assert out["eni0"] == []
    (new,) = _of(out["eni1"], "UDP")
    # the new ENI's address; HOST4 is off its subnet: to its router
    assert _l3(new).src == ENI1_4 and new.dst == RTR_MAC
    assert len(vpc.eng1) == 1 and len(vpc.eng0) == 1
    # a reply of the old connection, through the old ENI, still reaches the environment
    back = vpc.exchange("eni0", _udp(HOST_MAC, ENI_MAC, HOST4, ENI4, 53, old[sc.UDP].sport,
                                     b"old"))["env0"]
    (b,) = _of(back, "UDP")
    assert (_l3(b).dst, b[sc.UDP].dport, bytes(b[sc.UDP].payload)) == (ENV4, 40001, b"old")
    back = vpc.exchange("eni1", _udp(RTR_MAC, ENI1_MAC, HOST4, ENI1_4, 53, new[sc.UDP].sport,
                                     b"new"))["env0"]
    (b,) = _of(back, "UDP")
    assert (_l3(b).dst, b[sc.UDP].dport, bytes(b[sc.UDP].payload)) == (ENV4, 40002, b"new")
    assert b.dst == ENV_MAC and _checksums_ok(b)


def test_set_link_group_arguments_are_checked(vpc):
    with pytest.raises(ValueError, match="no such group"):
        vpc.dp.set_link_group(vpc.env0, 7)
    with pytest.raises(ValueError, match="needs an env link"):
        vpc.dp.set_link_group(vpc.eni0, vpc.g1)
    assert vpc.link_counters("env0")["group"] == vpc.g0


# ---- IPv6 permission ----------------------------------------------------------------------------
def test_ipv6_is_refused_without_dual_stack_permission(vpc):
    from scapy.layers.inet6 import ICMPv6ND_NA

    vpc.dp.set_link_ipv6(vpc.env0, False)
    assert vpc.link_counters("env0")["ipv6_allowed"] is False
    out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV6, HOST6, 40001, 53))
    assert out["eni0"] == [] and vpc.drops()["ipv6_not_allowed"] == 1
    assert vpc.eng0.counters()["packets_outbound"] == 0
    assert vpc.link_counters("env0")["blocked"] == 0, "blocked counts function states only"
    # NDP is not IPv6 data: answered
    assert any(f.haslayer(ICMPv6ND_NA) for f in vpc.exchange("env0", _ns(ENV_MAC, ENV6,
                                                                         GW6))["env0"])
    # IPv4 unaffected
    out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV4, HOST4, 40002, 53))
    assert len(_of(out["eni0"], "UDP")) == 1
    vpc.dp.set_link_ipv6(vpc.env0, True)
    out = vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV6, HOST6, 40003, 53))
    (p,) = _of(out["eni0"], "UDP")
    assert _l3(p).src == ENI6 and vpc.drops()["ipv6_not_allowed"] == 1
    with pytest.raises(ValueError, match="needs an env link"):
        vpc.dp.set_link_ipv6(vpc.eni0, False)


# ---- removing an address ------------------------------------------------------------------------
def test_remove_address_stops_arp_and_ndp_answers(vpc):
    sc = scapy()
    from scapy.layers.inet6 import ICMPv6ND_NA

    def answers():
        arp = [f for f in _of(vpc.exchange("eni0", _arp_req(HOST_MAC, HOST4, ENI4))["eni0"],
                              "ARP") if f[sc.ARP].op == 2]
        na = [f for f in vpc.exchange("eni0", _ns(HOST_MAC, HOST6, ENI6))["eni0"]
              if f.haslayer(ICMPv6ND_NA)]
        return len(arp), len(na)

    assert answers() == (1, 1)
    vpc.dp.remove_address(vpc.eni0, ENI4)
    assert answers() == (0, 1)
    vpc.dp.remove_address(vpc.eni0, ENI6)
    assert answers() == (0, 0)
    with pytest.raises(ValueError, match=f"does not own {ENI4}"):
        vpc.dp.remove_address(vpc.eni0, ENI4)
    with pytest.raises(ValueError, match="does not own 198.18.2.4"):
        vpc.dp.remove_address(vpc.eni0, ENI1_4)     # another link's
    with pytest.raises(ValueError, match="no such link"):
        vpc.dp.remove_address(42, ENI1_4)
    vpc.dp.add_address(vpc.eni0, ENI4)
    assert answers() == (1, 0)


# ---- NAT gateway --------------------------------------------------------------------------------
def test_nat_gateway_both_ways_on_link_and_through_the_inside_router(natgw):
    sc = scapy()
    b = natgw
    seen = []
    # a private host on the inside subnet, and one behind the VPC router (any source: no
    # anti-spoofing on an inside link)
    for src, smac, sport, back_mac in ((PRIV4, PRIV_MAC, 41000, PRIV_MAC),
                                       (REMOTE4, RTR_MAC, 41001, RTR_MAC)):
        out = b.exchange("in0", _tcp(smac, IN_MAC, src, NET_HOST, sport, 80, "S"))
        (p,) = _of(out["out0"], "TCP")
        assert out["in0"] == []
        assert (_l3(p).src, _l3(p).dst, _l3(p).ttl) == (EIP4, NET_HOST, 63)
        assert (p.src, p.dst) == (OUT_MAC, PUBRTR_MAC), "to the public subnet's router"
        assert _checksums_ok(p)
        port = p[sc.TCP].sport
        seen.append(port)
        rep = _tcp(PUBRTR_MAC, OUT_MAC, NET_HOST, EIP4, 80, port, "SA", seq=7, ack=1001)
        back = b.exchange("out0", rep)
        (r,) = _of(back["in0"], "TCP")
        assert (_l3(r).src, _l3(r).dst, r[sc.TCP].dport) == (NET_HOST, src, sport)
        assert (r.src, r.dst) == (IN_MAC, back_mac), "on-link: the host; else the router"
        assert _checksums_ok(r)
    assert len(set(seen)) == 2
    d = b.drops()
    assert d["spoofed_source"] == 0 and d["no_environment"] == 0
    c = b.dp.counters()
    assert (c["forwarded_outbound"], c["forwarded_inbound"]) == (2, 2)
    assert [x["role"] for x in c["links"]] == ["eni", "inside"]


def test_nat_gateway_drops_what_is_addressed_to_itself(natgw):
    b = natgw
    for dst in (NATGW4, EIP4):
        out = b.exchange("in0", _udp(PRIV_MAC, IN_MAC, PRIV4, dst, 41000, 53))
        assert out["out0"] == []
    assert b.drops()["local_destination"] == 2 and len(b.engn) == 0


def test_unsolicited_on_the_public_side_is_dropped(natgw):
    out = natgw.exchange("out0", _tcp(PUBRTR_MAC, OUT_MAC, NET_HOST, EIP4, 80, 40000, "S"))
    assert out["in0"] == []
    assert natgw.engn.counters()["drops"]["unsolicited"] == 1


def test_one_inside_link_per_group_and_inside_needs_a_subnet(bench):
    from hyperplane.engine.config import Eni

    g, _ = bench.group(Eni(NAT_ID, ipv4=EIP4))
    bench.link("inside", g, "in0", IN_MAC)
    with pytest.raises(ValueError, match="already has an inside link"):
        bench.dp.add_link("inside", g, name="in1", mac=IN_MAC, ifname="in1")
    with pytest.raises(ValueError, match="no such group"):
        bench.dp.add_link("env", 3, name="x", mac=IN_MAC, ifname="x")
    with pytest.raises(ValueError, match="role must be one of"):
        bench.dp.add_link("outside", g, name="x", mac=IN_MAC, ifname="x")
    assert len(bench.dp.counters()["links"]) == 1


def test_reply_without_an_inside_route_is_no_route(bench):
    """A NAT gateway's inside link without a subnet of the family cannot deliver replies."""
    from hyperplane.engine.config import Eni

    b = bench
    g, eng = b.group(Eni(NAT_ID, ipv4=EIP4))
    out0 = b.link("eni", g, "out0", OUT_MAC)
    b.link("inside", g, "in0", IN_MAC)
    b.dp.add_address(out0, EIP4)
    b.dp.set_subnet(out0, PUB_NET, PUB_RTR)
    b.exchange("out0", _tcp(PUBRTR_MAC, OUT_MAC, NET_HOST, EIP4, 80, 40000, "SA"))
    assert b.drops()["no_route"] == 1
    assert eng.counters()["drops"]["unsolicited"] == 0, "not even shown to the engine"


# ---- RST for a segment of no connection ---------------------------------------------------------
RST_CASES = [
    # flags, seq, ack, payload: the RST's (flags, seq, ack) per RFC 9293 3.10.7.1
    ("PA", 1000, 5000, b"0123456789", ("R", 5000, 0)),
    ("A", 1000, 0xFFFFFFFF, b"", ("R", 0xFFFFFFFF, 0)),
    ("F", 7, 0, b"abc", ("RA", 0, 7 + 3 + 1)),               # FIN counts one
    ("", 0xFFFFFFF0, 0, b"x" * 0x20, ("RA", 0, 0x10)),        # wraps around 2**32
    ("SF", 100, 0, b"", ("RA", 0, 102)),                      # SYN and FIN count one each
]


def _check_rst(frame, *, src, dst, sport, dport, want, mac_to, mac_from):
    sc = scapy()
    ip, t = _l3(frame), frame[sc.TCP]
    assert (frame.src, frame.dst) == (mac_from, mac_to)
    assert (ip.src, ip.dst, t.sport, t.dport) == (src, dst, sport, dport)
    assert (ip.ttl if frame.haslayer(sc.IP) else ip.hlim) == 64
    assert (str(t.flags), t.seq, t.ack) == want
    assert t.dataofs == 5 and bytes(t.payload) == b""
    assert _checksums_ok(frame)


@pytest.mark.parametrize("flags, seq, ack, payload, want", RST_CASES)
def test_nat_gateway_answers_an_unknown_tcp_segment_with_a_rst_ipv4(natgw, flags, seq, ack,
                                                                   payload, want):
    b = natgw
    b.dp.set_group_options(b.gn, rst_unknown_tcp=True)
    # from a remote subnet: the frame comes from the router's MAC; the RST goes straight back
    # to that MAC (no neighbour lookup)
    seg = _tcp("02:00:00:00:77:77", IN_MAC, REMOTE4, NET_HOST, 41000, 443, flags, seq=seq,
               ack=ack, payload=payload)
    out = b.exchange("in0", seg)
    assert out["out0"] == []
    (rst,) = _of(out["in0"], "TCP")
    _check_rst(rst, src=NET_HOST, dst=REMOTE4, sport=443, dport=41000, want=want,
               mac_to="02:00:00:00:77:77", mac_from=IN_MAC)
    assert b.dp.counters()["rst_sent"] == 1
    assert b.engn.counters()["drops"]["tcp_not_syn"] == 1, "still counted by the engine"
    assert len(b.engn) == 0


@pytest.mark.parametrize("flags, seq, ack, payload, want", RST_CASES[:3])
def test_env_link_gets_a_rst_ipv6(vpc, flags, seq, ack, payload, want):
    vpc.dp.set_group_options(vpc.g0, rst_unknown_tcp=True)
    seg = _tcp(ENV_MAC, GW_MAC, ENV6, HOST6, 41000, 443, flags, seq=seq, ack=ack,
               payload=payload)
    out = vpc.exchange("env0", seg)
    assert out["eni0"] == []
    (rst,) = _of(out["env0"], "TCP")
    _check_rst(rst, src=HOST6, dst=ENV6, sport=443, dport=41000, want=want, mac_to=ENV_MAC,
               mac_from=GW_MAC)
    assert vpc.dp.counters()["rst_sent"] == 1


def test_no_rst_for_a_rst_nor_when_the_option_is_off(natgw):
    b = natgw
    seg = _tcp(PRIV_MAC, IN_MAC, PRIV4, NET_HOST, 41000, 443, "A", ack=9)
    assert _of(b.exchange("in0", seg)["in0"], "TCP") == []          # option off (default)
    b.dp.set_group_options(b.gn, rst_unknown_tcp=True)
    for fl in ("R", "RA"):
        seg = _tcp(PRIV_MAC, IN_MAC, PRIV4, NET_HOST, 41000, 443, fl, ack=9)
        assert _of(b.exchange("in0", seg)["in0"], "TCP") == []
    assert b.dp.counters()["rst_sent"] == 0
    assert b.engn.counters()["drops"]["tcp_not_syn"] == 3
    b.dp.set_group_options(b.gn, rst_unknown_tcp=False)
    seg = _tcp(PRIV_MAC, IN_MAC, PRIV4, NET_HOST, 41000, 443, "A", ack=9)
    assert _of(b.exchange("in0", seg)["in0"], "TCP") == []
    with pytest.raises(ValueError, match="no such group"):
        b.dp.set_group_options(9, rst_unknown_tcp=True)


def test_timed_out_connection_gets_a_rst(natgw):
    """The NAT-gateway story end to end: a connection idles past its timeout (the clock moved,
    no sleeping), the next segment of it gets a RST."""
    sc = scapy()
    b = natgw
    b.dp.set_group_options(b.gn, rst_unknown_tcp=True)
    out = b.exchange("in0", _tcp(PRIV_MAC, IN_MAC, PRIV4, NET_HOST, 41000, 443, "S"))
    port = _of(out["out0"], "TCP")[0][sc.TCP].sport
    b.exchange("out0", _tcp(PUBRTR_MAC, OUT_MAC, NET_HOST, EIP4, 443, port, "SA", seq=50,
                            ack=1001))
    b.exchange("in0", _tcp(PRIV_MAC, IN_MAC, PRIV4, NET_HOST, 41000, 443, "A", seq=1001,
                           ack=51))
    assert [e.state for e in b.engn.entries(now=b.dp.now())] == ["ESTABLISHED"]
    b.dp.set_clock_offset(b.engn.config.timeouts.tcp_established + 1)
    b.run(30)
    assert len(b.engn) == 0
    out = b.exchange("in0", _tcp(PRIV_MAC, IN_MAC, PRIV4, NET_HOST, 41000, 443, "PA",
                                 seq=1001, ack=51, payload=b"late"))
    (rst,) = _of(out["in0"], "TCP")
    _check_rst(rst, src=NET_HOST, dst=PRIV4, sport=443, dport=41000, want=("R", 51, 0),
               mac_to=PRIV_MAC, mac_from=IN_MAC)


def _first_fragment(smac, dmac, src, dst, flags, *, seq, ack, payload, ident=0x4242):
    """The first fragment of a TCP segment cut by scapy (IPv4 MF / IPv6 M set): its TCP header
    and its first 36 payload bytes; the rest would come in later fragments."""
    sc = scapy()
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6

    seg = sc.TCP(sport=41000, dport=443, flags=flags, seq=seq, ack=ack, window=512) / payload
    if ":" in src:
        frags = fragment6(sc.IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=ident) / seg,
                          40 + 8 + 20 + 40)
    else:
        frags = sc.fragment(sc.IP(src=src, dst=dst, id=ident) / seg, fragsize=20 + 40)
    assert len(frags) > 1
    return sc.Ether(src=smac, dst=dmac) / frags[0], sc.Ether(src=smac, dst=dmac) / frags[1]


# flags, SEG.ACK; the segment's 300 payload bytes go on past its first fragment
FIRST_FRAGMENT_CASES = [("F", 0), ("", 0), ("PA", 5000), ("FA", 0xFFFFFFFF)]


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("flags, ack", FIRST_FRAGMENT_CASES)
def test_a_first_fragment_gets_a_rst_only_when_its_length_is_not_needed(request, family,
                                                                        flags, ack):
    """RFC 9293 3.10.7.1: with ACK the RST is <SEQ=SEG.ACK><CTL=RST> and needs no length; without
    ACK its ack is SEG.SEQ + SEG.LEN, and a first fragment does not hold SEG.LEN (the rest of
    the segment is in later fragments, not reassembled here). Before the fix the RST acked
    SEG.SEQ + the first fragment's bytes: data the sender's peer never saw. No RST then; the
    fragment is counted as rst_withheld_fragment and is still the engine's tcp_not_syn."""
    b = request.getfixturevalue("natgw" if family == 4 else "vpc")
    if family == 4:   # the NAT gateway's inside link
        link, eng, grp, src, dst, smac, dmac = "in0", b.engn, b.gn, PRIV4, NET_HOST, PRIV_MAC, \
            IN_MAC
    else:             # an environment's link
        link, eng, grp, src, dst, smac, dmac = "env0", b.eng0, b.g0, ENV6, HOST6, ENV_MAC, GW_MAC
    b.dp.set_group_options(grp, rst_unknown_tcp=True)
    first, later = _first_fragment(smac, dmac, src, dst, flags, seq=1000, ack=ack,
                                   payload=bytes(range(256)) + b"z" * 44)
    out = b.exchange(link, first)
    assert eng.counters()["drops"]["tcp_not_syn"] == 1
    c = b.dp.counters()
    if "A" in flags:
        (rst,) = _of(out[link], "TCP")
        _check_rst(rst, src=dst, dst=src, sport=443, dport=41000, want=("R", ack, 0),
                   mac_to=smac, mac_from=dmac)
        assert (c["rst_sent"], c["rst_withheld_fragment"]) == (1, 0)
    else:
        assert _of(out[link], "TCP") == []
        assert (c["rst_sent"], c["rst_withheld_fragment"]) == (0, 1)
    # its later fragment: no datagram remembered (the first was refused), so `fragment`, and no
    # RST for it either way (it has no TCP header)
    out = b.exchange(link, later)
    assert all(_of(frames, "TCP") == [] for frames in out.values()), "nothing went on"
    assert eng.counters()["drops"]["fragment"] == 1
    assert b.dp.counters()["rst_sent"] == c["rst_sent"]


def test_a_whole_segment_in_an_atomic_fragment_gets_its_rst(vpc):
    """An IPv6 atomic fragment (offset 0, M clear; RFC 6946) is a whole segment: SEG.LEN is
    known, so the RST without ACK is sent with ack = SEG.SEQ + SEG.LEN (+1 for the FIN)."""
    sc = scapy()
    from scapy.layers.inet6 import IPv6ExtHdrFragment

    vpc.dp.set_group_options(vpc.g0, rst_unknown_tcp=True)
    seg = sc.Ether(src=ENV_MAC, dst=GW_MAC) / sc.IPv6(src=ENV6, dst=HOST6) / \
        IPv6ExtHdrFragment(id=7, m=0, offset=0) / \
        sc.TCP(sport=41000, dport=443, flags="F", seq=1000, window=512) / (b"q" * 100)
    (rst,) = _of(vpc.exchange("env0", seg)["env0"], "TCP")
    _check_rst(rst, src=HOST6, dst=ENV6, sport=443, dport=41000, want=("RA", 0, 1000 + 100 + 1),
               mac_to=ENV_MAC, mac_from=GW_MAC)
    assert vpc.dp.counters()["rst_withheld_fragment"] == 0


# ---- the lab clock ------------------------------------------------------------------------------
def test_clock_offset_moves_expiry_forward(vpc):
    vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV4, HOST4, 40001, 53))
    assert len(vpc.eng0) == 1
    timeout = vpc.eng0.config.timeouts.udp_unreplied     # 30 s by default
    vpc.run(30)
    assert len(vpc.eng0) == 1, "nothing expires without the clock moving"
    before = time.monotonic()
    vpc.dp.set_clock_offset(timeout + 1)
    assert vpc.dp.clock_offset == timeout + 1
    assert vpc.dp.now() >= before + timeout + 1
    vpc.run(30)
    c = vpc.eng0.counters()
    assert (len(vpc.eng0), c["connections_expired"]) == (0, 1)
    # a packet of the same flow now opens a new connection
    vpc.exchange("env0", _udp(ENV_MAC, GW_MAC, ENV4, HOST4, 40001, 53))
    assert vpc.eng0.counters()["connections_created"] == 2


def test_clock_offset_never_goes_back(vpc):
    vpc.dp.set_clock_offset(100)
    vpc.dp.set_clock_offset(100)          # the same is fine
    for bad in (99.5, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="clock offset"):
            vpc.dp.set_clock_offset(bad)
    assert vpc.dp.clock_offset == 100


# ---- index checks -------------------------------------------------------------------------------
def test_every_index_argument_is_checked(vpc):
    dp = vpc.dp
    calls = [
        lambda: dp.add_address(5, ENI4),
        lambda: dp.set_environment(vpc.eni0, "198.19.0.9"),
        lambda: dp.set_subnet(vpc.env0, "198.19.0.0/24", GW4),
        lambda: dp.set_subnet(-1, "198.19.0.0/24", GW4),
        lambda: dp.remove_address(True, ENI4),
        lambda: dp.set_link_ipv6(3, True),
        lambda: dp.set_link_group(3, 0),
        lambda: dp.set_group_options(-1),
        lambda: dp.link_index("nope"),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert dp.link_index("env0") == vpc.env0 and dp.link_index("eni1") == vpc.eni1
