"""The VPC fabric: network ACLs (nftables), route tables, the NAT gateway's links, the internet,
ENI links added at run time.

The namespace tests need CAP_NET_ADMIN/CAP_SYS_ADMIN (root) and are skipped otherwise; the
ruleset tests at the top run anywhere. Every lab gets a random name (kit.labs.lab_name) and is
torn down by its fixture, even when a test fails. Traffic is real: ICMP echoes over raw sockets,
TCP and UDP through kit.traffic, each socket opened inside its host's namespace.

The lab used by most tests (built from the default plan with ``dataclasses.replace``)::

    subnet-a 198.18.1.0/24 (br0)    subnet-b 198.18.2.0/24 (br1)    subnet-pub 198.18.3.0/24 (br2)
      a1 .10   a2 .11                 b1 .10                          nat0i: NAT gateway .4
                                      rtb-private: 0/0 -> NAT gw      rtb-public: 0/0 -> igw

    internet 198.19.255.0/24 (inet0, router .1): web .20, nat0o (the NAT gateway's public side)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import socket
import struct
import subprocess
import time

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from hyperplane import labconfig, netns
from hyperplane import topology as lab
from hyperplane.labconfig import (
    HostPlan, InternetPlan, NaclPlan, NatGatewayPlan, RoutePlan, RouteTablePlan, RulePlan,
    SubnetPlan,
)
from hyperplane.topology import builder
from kit import traffic as nt, wire
from kit.frames import inet_checksum
from kit.labs import destroy, lab_name, ours, root_links

_problem = netns.privilege_problem()
needs_netns = pytest.mark.skipif(_problem is not None, reason=_problem or "")

NAT_ID = "nat-0f1e2d3c4b5a69788"
IGW_ID = "igw-0a1b2c3d4e5f60718"
INTERNET = "198.19.255.0/24"
WEB = "198.19.255.20"
ECHO_PAYLOAD = b"hyperplane-fabric-test"   # 22 bytes: an echo is 20 + 8 + 22 = 50 IP bytes
ECHO_IP_BYTES = 20 + 8 + len(ECHO_PAYLOAD)


# ---- the plan ------------------------------------------------------------------------------------
def _host(prefix: str, i: int, name: str, subnet: SubnetPlan, last: int) -> HostPlan:
    v4 = subnet.cidr.rsplit(".", 1)[0] + f".{last}"
    v6 = subnet.ipv6_cidr.split("/")[0] + f"{last:x}" if subnet.ipv6_cidr else None
    return HostPlan(name=name, netns=f"{prefix}host-{name}", ifname="eth0", subnet=subnet.id,
                    ipv4=f"{v4}/24", ipv6=f"{v6}/64" if v6 else None, gw4=subnet.router4,
                    gw6=subnet.router6 if v6 else None, fabric_ifname=f"host{i}")


def rule(number, action, protocol, cidr, ports=(0, 65535)) -> RulePlan:
    return RulePlan(number=number, action=action, protocol=protocol, cidr=cidr,
                    from_port=ports[0], to_port=ports[1])


def fabric_plan(name: str, nacls=()) -> labconfig.Plan:
    """Three subnets, three VPC hosts, a NAT gateway, the internet with one host, two route
    tables. No execution environments (the fabric does not need them)."""
    base = labconfig.resolve(labconfig.default(), name)
    p = base.prefix
    a = base.subnets[0]
    assert (a.id, a.cidr, a.bridge) == ("subnet-a", "198.18.1.0/24", "br0")
    b = SubnetPlan(id="subnet-b", cidr="198.18.2.0/24", ipv6_cidr="2001:2:0:2::/64",
                   bridge="br1", router4="198.18.2.1", router6="2001:2:0:2::1")
    pub = SubnetPlan(id="subnet-pub", cidr="198.18.3.0/24", ipv6_cidr=None, bridge="br2",
                     router4="198.18.3.1", router6=None)
    nat = NatGatewayPlan(
        index=0, id=NAT_ID, subnet=pub.id, private_ipv4="198.18.3.4",
        public_ipv4="198.19.255.10", prefix4=pub.cidr, router4=pub.router4,
        internet_cidr=INTERNET, internet_router4="198.19.255.1", idle_timeout=350.0,
        inside_ifname="nat0i", outside_ifname="nat0o",
        inside_mac=labconfig.lab_mac(name, "nat-in", 0),
        outside_mac=labconfig.lab_mac(name, "nat-out", 0))
    internet = InternetPlan(cidr=INTERNET, gateway_id=IGW_ID, netns=f"{p}internet",
                            bridge="inet0", router4="198.19.255.1")
    web = HostPlan(name="web", netns=f"{p}inet-web", ifname="eth0", subnet="internet",
                   ipv4=f"{WEB}/24", ipv6=None, gw4=internet.router4, gw6=None,
                   fabric_ifname="host0")
    return dataclasses.replace(
        base, subnets=[a, b, pub], envs=[],
        hosts=[_host(p, 0, "a1", a, 10), _host(p, 1, "a2", a, 11), _host(p, 2, "b1", b, 10)],
        nacls=list(nacls),
        route_tables=[
            RouteTablePlan(id="rtb-private", subnets=[b.id], table=100,
                           routes=[RoutePlan("0.0.0.0/0", NAT_ID, "nat")]),
            RouteTablePlan(id="rtb-public", subnets=[pub.id], table=101,
                           routes=[RoutePlan("0.0.0.0/0", IGW_ID, "igw")]),
        ],
        nat_gateways=[nat], internet=internet, internet_hosts=[web])


def addr(plan, host: str, v6: bool = False) -> str:
    h = plan.host(host)
    return (h.ipv6 if v6 else h.ipv4).split("/")[0]


def with_nacls(plan, *nacls):
    return dataclasses.replace(plan, nacls=list(nacls))


def counters(plan):
    """{(acl, direction, rule): (packets, bytes)} from lab.nacl_counters."""
    return {(c["acl"], c["direction"], c["rule"]): (c["packets"], c["bytes"])
            for c in lab.nacl_counters(plan)}


# ---- traffic helpers -------------------------------------------------------------------------------
def pings(ns: str, dst: str, count: int = 1, timeout: float = 1.5) -> int:
    """Send ``count`` ICMP echo requests (each ECHO_IP_BYTES long at the IP layer) from
    namespace ``ns`` to ``dst`` at once, then return how many distinct replies came back
    within ``timeout``."""
    v6 = ":" in dst
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = secrets.randbits(16)
    req, rep = (128, 129) if v6 else (8, 0)
    got = set()
    with s:
        for seq in range(count):
            hdr = struct.pack("!BBHHH", req, 0, 0, ident, seq)
            if not v6:  # the kernel computes the ICMPv6 checksum itself
                hdr = struct.pack("!BBHHH", req, 0, inet_checksum(hdr + ECHO_PAYLOAD), ident, seq)
            s.sendto(hdr + ECHO_PAYLOAD, (dst, 0))
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data = s.recv(2048)
            except socket.timeout:
                break
            if not v6:
                data = data[(data[0] & 0x0F) * 4:]  # raw IPv4 sockets include the IP header
            typ, _, _, rid, seq = struct.unpack("!BBHHH", data[:8])
            if typ == rep and rid == ident:
                got.add(seq)
    return len(got)


def tcp_ok(plan, src: str, dst: str, port: int, v6: bool = False, timeout: float = 2.0) -> bool:
    """One TCP exchange from host ``src`` to a server on host ``dst`` port ``port``."""
    with nt.TcpServer(plan.host(dst).netns, addr(plan, dst, v6), port):
        try:
            nt.tcp_send(plan.host(src).netns, addr(plan, dst, v6), port, b"x" * 100,
                        timeout=timeout, verify=True)
            return True
        except TimeoutError:
            return False


def ip_in(ns: str, *args: str) -> subprocess.CompletedProcess:
    """iproute2 in ``ns``: an independent view of the kernel's state (tests only)."""
    return subprocess.run(["ip", "netns", "exec", ns, "ip", *args], capture_output=True,
                          text=True)


def links(ns: str):
    with netns.entered(ns):
        ipr = IPRoute()
    with ipr:
        return {link.get("ifname"): link for link in ipr.get_links()}


# ---- fixtures ------------------------------------------------------------------------------------
@contextlib.contextmanager
def built_lab(plan):
    """Build ``plan`` (under the session's run dir); always tear it down, and remove any
    namespace of it that stays."""
    try:
        lab.build(plan, "<test>")
        yield plan
    finally:
        destroy(plan.name)


@pytest.fixture(scope="module")
def fabric():
    """One lab for the traffic tests; each test loads the ACLs it needs (apply_nacls replaces
    the whole table atomically and zeroes every counter)."""
    if _problem is not None:
        pytest.skip(_problem)
    with built_lab(fabric_plan(lab_name())) as plan:
        yield plan


# ---- the ruleset (no privileges needed) --------------------------------------------------------------
ACL_A = NaclPlan(id="acl-0aaaaaaaaaaaaaaaa", subnets=["subnet-a"],
                 ingress=[rule(200, "allow", "all", "0.0.0.0/0"),
                          rule(100, "deny", "tcp", "198.18.2.0/24", (1024, 65535))],
                 egress=[rule(100, "allow", "udp", "2001:2:0:2::/64", (53, 53))])


def test_ruleset_shape():
    plan = fabric_plan("shape", [ACL_A])
    cmds = lab.nacl_ruleset(plan)["nftables"]
    adds = [c["add"] for c in cmds if "add" in c]
    chains = [a["chain"]["name"] for a in adds if "chain" in a]
    assert chains == ["forward", f"{ACL_A.id}-ingress", f"{ACL_A.id}-egress"]
    (hook,) = [a["chain"] for a in adds if "chain" in a and a["chain"]["name"] == "forward"]
    assert (hook["family"], hook["hook"], hook["policy"]) == ("inet", "forward", "accept")
    ingress = [a["rule"] for a in adds if "rule" in a and a["rule"]["chain"].endswith("ingress")]
    # ascending rule number, the implicit deny last
    assert [r["comment"].split()[2] for r in ingress] == ["100", "200", "*"]
    assert ingress[0]["expr"][-2:] == [{"counter": f"{ACL_A.id}.ingress.100"}, {"drop": None}]
    assert ingress[1]["expr"][-2:] == [{"counter": f"{ACL_A.id}.ingress.200"}, {"return": None}]
    assert ingress[2]["expr"] == [{"counter": f"{ACL_A.id}.ingress.implicit"}, {"drop": None}]
    # ingress matches the source, the port range is the destination port
    left = [e["match"]["left"] for e in ingress[0]["expr"] if "match" in e]
    assert {"payload": {"protocol": "ip", "field": "saddr"}} in left
    assert {"payload": {"protocol": "tcp", "field": "dport"}} in left
    egress = [a["rule"] for a in adds if "rule" in a and a["rule"]["chain"].endswith("egress")]
    left = [e["match"]["left"] for e in egress[0]["expr"] if "match" in e]
    assert {"payload": {"protocol": "ip6", "field": "daddr"}} in left
    # stateless: no conntrack anywhere
    assert '"ct"' not in json.dumps(cmds)
    # only subnet-a is checked: egress jump (leaving br0) before the ingress jump (entering)
    fwd = [a["rule"] for a in adds if "rule" in a and a["rule"]["chain"] == "forward"]
    assert [r["expr"][-1]["jump"]["target"] for r in fwd] == [f"{ACL_A.id}-egress",
                                                              f"{ACL_A.id}-ingress"]
    assert fwd[0]["expr"][0]["match"] == {"op": "==", "left": {"meta": {"key": "iifname"}},
                                          "right": "br0"}
    assert fwd[0]["expr"][1]["match"]["op"] == "!="  # traffic inside the subnet is not checked


def test_ruleset_without_acls_has_no_jumps():
    cmds = lab.nacl_ruleset(fabric_plan("shape"))["nftables"]
    assert not [c for c in cmds if "rule" in c.get("add", {})]


@pytest.mark.parametrize("bad, message", [
    (NaclPlan("acl-1", ["subnet-zz"], [], []), r"nacls\[0\]\.subnets\[0\]: subnet 'subnet-zz'"),
    (NaclPlan("acl-1", ["subnet-a"], [rule(1, "allow", "gre", "0.0.0.0/0")], []),
     r"nacls\[0\]\.ingress\[rule 1\]\.protocol: 'gre'"),
    (NaclPlan("acl-1", ["subnet-a"], [], [rule(1, "reject", "all", "0.0.0.0/0")]),
     r"nacls\[0\]\.egress\[rule 1\]\.action: 'reject'"),
    (NaclPlan("acl-1", ["subnet-a"], [rule(1, "allow", "tcp", "0.0.0.0/0", (90, 80))], []),
     r"port range 90-80"),
    (NaclPlan("acl-1", ["subnet-a"], [rule(1, "allow", "all", "0.0.0.0/0"),
                                      rule(1, "deny", "all", "::/0")], []),
     r"rule numbers repeat"),
])
def test_ruleset_refuses_bad_rules(bad, message):
    with pytest.raises(lab.LabError, match=message):
        lab.nacl_ruleset(fabric_plan("bad", [bad]))


def test_a_subnet_has_one_acl():
    two = [ACL_A, dataclasses.replace(ACL_A, id="acl-0bbbbbbbbbbbbbbbb")]
    with pytest.raises(lab.LabError, match=r"nacls\[1\]\.subnets\[0\].*already associated"):
        lab.nacl_ruleset(fabric_plan("bad", two))


def test_build_refuses_a_bad_plan_before_touching_anything(run_dir):
    name = lab_name()
    plan = fabric_plan(name)
    bad_rt = dataclasses.replace(plan.route_tables[1], subnets=["subnet-b"])
    with pytest.raises(lab.LabError, match="subnet 'subnet-b' is already associated"):
        lab.build(dataclasses.replace(plan, route_tables=[plan.route_tables[0], bad_rt]), "x")
    outside = dataclasses.replace(plan.internet, netns="hp-other-internet")
    with pytest.raises(lab.LabError, match="does not start with the lab's prefix"):
        lab.build(dataclasses.replace(plan, internet=outside), "x")
    assert lab.load_state(name) is None and ours(name) == []


def test_status_without_the_kernel():
    plan = fabric_plan("st", [ACL_A])
    st = lab.fabric_status(plan, live=False)
    assert st["internet"]["gateway_id"] == IGW_ID and st["internet"]["router"] == ["198.19.255.1"]
    assert st["internet_hosts"] == [{"name": "web", "role": "internet", "netns": "hp-st-inet-web",
                                     "subnet": "internet", "interface": "eth0",
                                     "addresses": [f"{WEB}/24"]}]
    (nat,) = st["nat_gateways"]
    assert (nat["id"], nat["private_ipv4"], nat["public_ipv4"]) == (NAT_ID, "198.18.3.4",
                                                                   "198.19.255.10")
    assert [r["number"] for r in st["nacls"][0]["ingress"]] == [100, 200]
    assert st["route_tables"][0]["routes"] == [{"destination": "0.0.0.0/0", "target": NAT_ID,
                                                "kind": "nat"}]


# ---- network ACLs with real traffic --------------------------------------------------------------
@needs_netns
def test_build_loads_the_acls():
    plan = fabric_plan(lab_name(), [ACL_A])
    with built_lab(plan):
        text = subprocess.run(["ip", "netns", "exec", plan.fabric_ns, "nft", "list", "ruleset"],
                              check=True, capture_output=True, text=True).stdout
        assert "table inet hyperplane" in text and "hook forward" in text
        assert f'counter name "{ACL_A.id}.ingress.100" drop' in text
        got = lab.nacl_counters(plan)
        assert [(c["direction"], c["rule"], c["action"]) for c in got] == [
            ("ingress", 100, "deny"), ("ingress", 200, "allow"), ("ingress", "*", "deny"),
            ("egress", 100, "allow"), ("egress", "*", "deny")]
        assert all(c["packets"] == 0 and c["bytes"] == 0 for c in got)
        # the caller's namespace has no such table
        mine = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert "hyperplane" not in mine


@needs_netns
def test_allowed_flow_passes_and_the_rest_meets_the_implicit_deny(fabric):
    acl = NaclPlan(id="acl-0bbbbbbbbbbbbbbbb", subnets=["subnet-b"],
                   ingress=[rule(100, "allow", "tcp", "198.18.1.0/24", (8000, 8000))],
                   egress=[rule(100, "allow", "tcp", "198.18.1.0/24", (1024, 65535))])
    plan = with_nacls(fabric, acl)
    lab.apply_nacls(plan)
    assert tcp_ok(plan, "a1", "b1", 8000)
    c = counters(plan)
    assert c[(acl.id, "ingress", 100)][0] >= 3, "SYN, ACK, data... entered subnet-b"
    assert c[(acl.id, "egress", 100)][0] >= 2, "SYN-ACK and the digest left subnet-b"
    assert c[(acl.id, "ingress", "*")] == (0, 0)
    # ICMP and IPv6 match no rule: the implicit deny drops them, counted exactly
    assert pings(plan.host("a1").netns, addr(plan, "b1"), count=3) == 0
    assert pings(plan.host("a1").netns, addr(plan, "b1", v6=True), count=2) == 0
    c = counters(plan)
    assert c[(acl.id, "ingress", "*")] == (5, 3 * ECHO_IP_BYTES + 2 * (40 + 8 + 22))
    assert not tcp_ok(plan, "a1", "b1", 8000, v6=True, timeout=1.0)


@needs_netns
def test_deny_rule_drops_and_counts_exactly_the_packets_sent(fabric):
    a1 = addr(fabric, "a1")
    acl = NaclPlan(id="acl-0bbbbbbbbbbbbbbbb", subnets=["subnet-b"],
                   ingress=[rule(100, "deny", "icmp", f"{a1}/32"),
                            rule(200, "allow", "all", "0.0.0.0/0"),
                            rule(210, "allow", "all", "::/0")],
                   egress=[rule(100, "allow", "all", "0.0.0.0/0"),
                           rule(110, "allow", "all", "::/0")])
    plan = with_nacls(fabric, acl)
    lab.apply_nacls(plan)
    b1 = addr(plan, "b1")
    assert pings(plan.host("a1").netns, b1, count=5) == 0
    assert counters(plan)[(acl.id, "ingress", 100)] == (5, 5 * ECHO_IP_BYTES)
    # the rule names one source address and one family: a2, and a1 over IPv6, pass
    assert pings(plan.host("a2").netns, b1, count=2) == 2
    assert pings(plan.host("a1").netns, addr(plan, "b1", v6=True), count=2) == 2
    c = counters(plan)
    assert c[(acl.id, "ingress", 100)] == (5, 5 * ECHO_IP_BYTES), "unchanged"
    assert c[(acl.id, "ingress", 200)] == (2, 2 * ECHO_IP_BYTES)
    assert c[(acl.id, "ingress", 210)][0] == 2
    assert c[(acl.id, "egress", 100)][0] == 2 and c[(acl.id, "egress", 110)][0] == 2


@needs_netns
def test_first_match_wins(fabric):
    def acl(allow_no, deny_no):
        return NaclPlan(id="acl-0bbbbbbbbbbbbbbbb", subnets=["subnet-b"],
                        ingress=[rule(allow_no, "allow", "tcp", "198.18.1.0/24", (8000, 8000)),
                                 rule(deny_no, "deny", "tcp", "198.18.1.0/24"),
                                 rule(300, "allow", "all", "0.0.0.0/0")],
                        egress=[rule(100, "allow", "all", "0.0.0.0/0")])

    plan = with_nacls(fabric, acl(100, 200))     # allow 8000, then deny all TCP
    lab.apply_nacls(plan)
    assert tcp_ok(plan, "a1", "b1", 8000)
    assert not tcp_ok(plan, "a1", "b1", 8001, timeout=1.0)
    c = counters(plan)
    assert c[("acl-0bbbbbbbbbbbbbbbb", "ingress", 100)][0] >= 3
    assert c[("acl-0bbbbbbbbbbbbbbbb", "ingress", 200)][0] >= 1

    plan = with_nacls(fabric, acl(200, 100))     # the same two rules, deny first
    lab.apply_nacls(plan)
    assert not tcp_ok(plan, "a1", "b1", 8000, timeout=1.0)
    c = counters(plan)
    assert c[("acl-0bbbbbbbbbbbbbbbb", "ingress", 100)][0] >= 1, "the deny matched first"
    assert c[("acl-0bbbbbbbbbbbbbbbb", "ingress", 200)] == (0, 0), "the allow never ran"


@needs_netns
def test_ingress_ephemeral_deny_breaks_replies_while_requests_arrive(fabric):
    """Stateless: a1's request leaves subnet-a and reaches b1, but b1's reply is a new packet
    to a1's ephemeral port and subnet-a's ingress rule drops it. No connection tracking
    remembers that a1 asked."""
    acl = NaclPlan(id="acl-0aaaaaaaaaaaaaaaa", subnets=["subnet-a"],
                   ingress=[rule(100, "deny", "udp", "0.0.0.0/0", (1024, 65535)),
                            rule(110, "deny", "tcp", "0.0.0.0/0", (1024, 65535)),
                            rule(200, "allow", "all", "0.0.0.0/0")],
                   egress=[rule(100, "allow", "all", "0.0.0.0/0")])
    plan = with_nacls(fabric, acl)
    lab.apply_nacls(plan)
    a1, b1 = plan.host("a1"), addr(plan, "b1")
    with nt.UdpEchoServer(plan.host("b1").netns, b1, 53) as srv:
        with pytest.raises(TimeoutError):
            nt.udp_roundtrip(a1.netns, b1, 53, b"query", timeout=1.0, retries=1)
        assert [d.data for d in srv.datagrams] == [b"query"], "the request arrived"
        assert srv.datagrams[0].peer[0] == addr(plan, "a1")
    c = counters(plan)
    assert c[(acl.id, "ingress", 100)] == (1, 20 + 8 + 5), "exactly the one reply, dropped"
    assert c[(acl.id, "egress", 100)] == (1, 20 + 8 + 5), "exactly the one request, allowed"

    with wire.Sniffer(plan.host("b1").netns, "eth0", bpf=wire.bpf_l4("tcp", 80)) as sn:
        assert not tcp_ok(plan, "a1", "b1", 80, timeout=1.5)
        syns = sn.wait_for(lambda e: e.haslayer("TCP") and e["TCP"].dport == 80
                           and e["TCP"].flags == "S")
        assert syns, "the SYN reached b1"
        sn.wait_for(lambda e: e.haslayer("TCP") and e["TCP"].sport == 80
                    and e["TCP"].flags == "SA")
    assert counters(plan)[(acl.id, "ingress", 110)][0] >= 1, "b1's SYN-ACK was dropped"
    # the reply's port decides: ICMP (no ports) still passes rule 200
    assert pings(a1.netns, b1, count=2) == 2


@needs_netns
def test_traffic_inside_a_subnet_is_not_filtered(fabric):
    """An ACL with no rules (only the implicit deny) cuts subnet-a off from other subnets, but
    a1 and a2 (both in subnet-a) talk through the bridge: the VPC router never sees them."""
    acl = NaclPlan(id="acl-0aaaaaaaaaaaaaaaa", subnets=["subnet-a"], ingress=[], egress=[])
    plan = with_nacls(fabric, acl)
    lab.apply_nacls(plan)
    a1 = plan.host("a1").netns
    assert pings(a1, addr(plan, "a2"), count=3) == 3
    assert pings(a1, addr(plan, "a2", v6=True), count=2) == 2
    assert tcp_ok(plan, "a1", "a2", 8000)
    assert all(c["packets"] == 0 for c in lab.nacl_counters(plan)), "nothing reached an ACL"
    assert pings(a1, addr(plan, "b1"), count=4) == 0
    c = counters(plan)
    assert c[(acl.id, "egress", "*")] == (4, 4 * ECHO_IP_BYTES), "leaving subnet-a: dropped"
    assert c[(acl.id, "ingress", "*")] == (0, 0)


@needs_netns
def test_no_acl_means_no_check(fabric):
    plan = with_nacls(fabric)
    lab.apply_nacls(plan)   # an empty table: the default ACL allows everything
    assert lab.nacl_counters(plan) == []
    assert pings(plan.host("a1").netns, addr(plan, "b1"), count=2) == 2
    assert tcp_ok(plan, "b1", "a1", 8000)


# ---- route tables, the NAT gateway's links, the internet ------------------------------------------
@needs_netns
def test_private_subnet_routes_the_internet_to_the_nat_gateway(fabric):
    nat, b1 = fabric.nat_gateways[0], addr(fabric, "b1")
    out = ip_in(fabric.fabric_ns, "route", "get", WEB, "from", b1, "iif", "br1")
    assert out.returncode == 0, out.stderr
    assert f"via {nat.private_ipv4} dev br2 table 100" in out.stdout
    # connected routes win over the table's default route (suppress_prefixlength 0)
    out = ip_in(fabric.fabric_ns, "route", "get", addr(fabric, "a1"), "from", b1, "iif", "br1")
    assert "dev br0" in out.stdout and "via" not in out.stdout
    # the main table has no default route: subnet-a (no route table) cannot reach the internet
    out = ip_in(fabric.fabric_ns, "route", "get", WEB, "from", addr(fabric, "a1"), "iif", "br0")
    assert out.returncode != 0 and "unreachable" in out.stderr.lower()
    main = ip_in(fabric.fabric_ns, "route", "show", "table", "main").stdout
    assert "default" not in main
    assert sorted(line.split()[0] for line in main.splitlines()) == [
        "198.18.1.0/24", "198.18.2.0/24", "198.18.3.0/24"]
    # a public subnet's igw route: its hosts have no public IP, the internet gateway drops them
    assert "blackhole default" in ip_in(fabric.fabric_ns, "route", "show", "table", "101").stdout
    rules = ip_in(fabric.fabric_ns, "rule", "show").stdout
    assert "1002:\tfrom all iif br1 lookup main suppress_prefixlength 0" in rules
    assert "1003:\tfrom all iif br1 lookup 100" in rules
    assert "iif br0" not in rules, "subnet-a has no route table"


@needs_netns
def test_traffic_to_the_internet_asks_for_the_nat_gateway(fabric):
    """A packet from b1 to the internet host: the fabric ARPs for the NAT gateway's private
    address on the public subnet, and that request reaches the gateway's node-side link (no
    data path runs here, so nobody answers and nothing gets through)."""
    nat = fabric.nat_gateways[0]
    with wire.Sniffer(fabric.node_ns, nat.inside_ifname, bpf=wire.bpf_ethertype(0x0806)) as sn:
        assert pings(fabric.host("b1").netns, WEB, count=1, timeout=1.0) == 0
        arp = sn.wait_for(lambda e: e.haslayer("ARP") and e["ARP"].op == 1
                          and e["ARP"].pdst == nat.private_ipv4)
    assert arp[0]["ARP"].psrc == "198.18.3.1", "asked by the VPC router on the public subnet"


@needs_netns
def test_nat_gateway_links(fabric):
    nat, inet = fabric.nat_gateways[0], fabric.internet
    node = links(fabric.node_ns)
    for ifname, mac in ((nat.inside_ifname, nat.inside_mac),
                        (nat.outside_ifname, nat.outside_mac)):
        assert node[ifname].get("address") == mac and node[ifname]["flags"] & 1, ifname
        assert lab.sysctl(fabric.node_ns, f"net.ipv6.conf.{ifname}.disable_ipv6") == "1"
    with netns.entered(fabric.node_ns):
        ipr = IPRoute()
    with ipr:
        held = [a.get("IFA_ADDRESS") for a in ipr.get_addr() if a["index"] != node["lo"]["index"]]
    assert held == [], "the node namespace holds no address outside lo"
    vpc = links(fabric.fabric_ns)
    assert vpc[nat.inside_ifname].get("IFLA_MASTER") == vpc["br2"]["index"]
    internet = links(inet.netns)
    assert internet[nat.outside_ifname].get("IFLA_MASTER") == internet[inet.bridge]["index"]
    assert internet["host0"].get("IFLA_MASTER") == internet[inet.bridge]["index"]
    assert not root_links() & {nat.inside_ifname, nat.outside_ifname, inet.bridge}
    st = lab.fabric_status(fabric)
    assert st["nat_gateways"][0]["links"] == {
        "inside_ifname": {"up": True, "mac": nat.inside_mac},
        "outside_ifname": {"up": True, "mac": nat.outside_mac}}
    assert "errors" not in st


@needs_netns
def test_internet_host_has_no_route_into_the_vpc(fabric):
    web = fabric.internet_hosts[0]
    assert pings(web.netns, fabric.internet.router4, count=1) == 1, "the internet works"
    out = ip_in(web.netns, "route", "get", addr(fabric, "b1"))
    assert f"via {fabric.internet.router4}" in out.stdout, "only its default route"
    out = ip_in(fabric.internet.netns, "route", "get", addr(fabric, "b1"))
    assert out.returncode != 0 and "unreachable" in out.stderr.lower()
    assert lab.sysctl(fabric.internet.netns, "net.ipv4.ip_forward") == "0"
    with wire.Sniffer(fabric.host("b1").netns, "eth0", bpf=wire.bpf_l4("icmp")) as sn:
        for target in ("b1", "a1"):
            assert pings(web.netns, addr(fabric, target), count=2, timeout=1.0) == 0
    from_web = sn.matching(lambda e: e.haslayer("IP") and WEB in (e["IP"].src, e["IP"].dst))
    assert from_web == [], "nothing from the internet reached the VPC"
    # and the fabric has no route to the internet at all (only per-subnet tables do)
    out = ip_in(fabric.fabric_ns, "route", "get", WEB)
    assert out.returncode != 0


# ---- ENI links at run time -----------------------------------------------------------------------
@needs_netns
def test_add_eni_link_at_run_time(fabric):
    mac = labconfig.lab_mac(fabric.name, "eni", 99)
    # the daemon calls it from a thread that sits in the node namespace
    with netns.entered(fabric.node_ns):
        lab.add_eni_link(fabric, "subnet-b", "eni9", mac)
        lab.add_eni_link(fabric, "subnet-b", "eni9", mac)   # again: nothing changes
    try:
        node, vpc = links(fabric.node_ns), links(fabric.fabric_ns)
        assert node["eni9"].get("address") == mac and node["eni9"]["flags"] & 1
        assert vpc["eni9"].get("IFLA_MASTER") == vpc["br1"]["index"] and vpc["eni9"]["flags"] & 1
        assert lab.sysctl(fabric.fabric_ns, "net.ipv6.conf.eni9.disable_ipv6") == "1"
        assert "eni9" not in root_links()
        # it is on subnet-b's wire: b1's ARP for an unknown neighbour reaches it
        with wire.Sniffer(fabric.node_ns, "eni9", bpf=wire.bpf_ethertype(0x0806)) as sn:
            pings(fabric.host("b1").netns, "198.18.2.77", count=1, timeout=0.5)
            sn.wait_for(lambda e: e.haslayer("ARP") and e["ARP"].pdst == "198.18.2.77")
        with pytest.raises(lab.LabError, match="already exists"):
            lab.add_eni_link(fabric, "subnet-a", "eni9", mac)
        with pytest.raises(lab.LabError, match="already exists"):
            lab.add_eni_link(fabric, "subnet-b", "eni9", "02:68:70:00:00:01")
        with pytest.raises(lab.LabError, match="subnet 'subnet-nope' is not in lab"):
            lab.add_eni_link(fabric, "subnet-nope", "eni10", mac)
        with pytest.raises(lab.LabError, match="invalid interface name"):
            lab.add_eni_link(fabric, "subnet-b", "a-much-too-long-name", mac)
        assert "eni10" not in links(fabric.node_ns)
    finally:
        assert lab.remove_eni_link(fabric, "eni9")
    assert "eni9" not in links(fabric.node_ns) and "eni9" not in links(fabric.fabric_ns)
    assert not lab.remove_eni_link(fabric, "eni9")


def test_add_eni_link_needs_a_built_lab():
    with pytest.raises(lab.LabError, match="is not built"):
        lab.add_eni_link(fabric_plan(lab_name()), "subnet-a", "eni5", "02:68:70:00:00:05")


@needs_netns
def test_teardown_leaves_nothing(tmp_path):
    plan = fabric_plan(lab_name(), [ACL_A])
    before = root_links()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
        try:
            lab.build(plan, "<test>")
            assert sorted(ours(plan.name)) == sorted(lab.lab_namespaces(plan))
            assert plan.internet.netns in lab.load_state(plan.name)["namespaces"]
            lab.add_eni_link(plan, "subnet-a", "eni7", labconfig.lab_mac(plan.name, "eni", 7))
            report = lab.teardown(plan.name)
            assert sorted(report["removed_namespaces"]) == sorted(lab.lab_namespaces(plan))
            assert ours(plan.name) == [] and not (tmp_path / plan.name).exists()
            assert root_links() == before
            assert lab.teardown(plan.name) == {"removed_namespaces": [], "stopped_pid": None}
        finally:
            lab.teardown(plan.name)
            for ns in ours(plan.name):
                pr_netns.remove(ns)


@needs_netns
def test_failed_fabric_step_rolls_back(run_dir, monkeypatch):
    def broken(plan, rt):
        raise OSError("injected failure")

    monkeypatch.setattr(builder, "build_route_table", broken)
    plan = fabric_plan(lab_name(), [ACL_A])
    try:
        with pytest.raises(lab.LabError, match="route table rtb-private.*injected failure"):
            lab.build(plan, "<test>")
        assert ours(plan.name) == [] and lab.load_state(plan.name) is None
    finally:
        for ns in ours(plan.name):
            pr_netns.remove(ns)
