"""Lambda-in-a-VPC semantics in a real lab: shared ENIs, scale-out past 65,000 ports, the ENI
lifecycle under a moved lab clock, security groups, network ACLs and a NAT gateway.

Needs CAP_NET_ADMIN (root); skipped otherwise, and FAILS when the compiled engine is missing.
Every test has a lab of its own (the root conftest's ``own_lab``, from the pytest plugin, which
names it uniquely and takes it down). Only the benchmark ranges 198.18.0.0/15 and 2001:2::/48
are used. What the server saw (the source address of what arrived) is the proof of which ENI
carried a connection.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Dict, List

import pytest

from hyperplane import netns
from hyperplane import topology as hplab
from hyperplane.bench import loadgen
from kit import traffic as nt
from kit.labs import NATGW, LabView, bare, cli_run, wait_until

BASE = """
[vpc]
cidr = "198.18.0.0/16"
ipv6_cidr = "2001:2::/56"

[[subnets]]
id = "subnet-a"
cidr = "198.18.1.0/24"
ipv6_cidr = "2001:2:0:1::/64"

[[subnets]]
id = "subnet-b"
cidr = "198.18.2.0/24"

[[security_groups]]
id = "sg-0a1b2c3d"

[[security_groups]]
id = "sg-web"
[[security_groups.egress]]
protocol = "tcp"
from_port = 8080
to_port = 8080
cidr = "198.18.0.0/16"
[[security_groups.egress]]
protocol = "udp"
from_port = 9000
to_port = 9001
cidr = "198.18.0.0/16"
"""

SHARING = BASE + """
[lifecycle]
eni_create_delay = 5
inactive_after = 120
eni_delete_delay = 30

[[functions]]
name = "fn-a"
environments = ["veth"]
[functions.vpc_config]
subnet_ids = ["subnet-a"]
security_group_ids = ["sg-0a1b2c3d"]

[[functions]]
name = "fn-b"
environments = ["tap"]
[functions.vpc_config]
subnet_ids = ["subnet-a"]
security_group_ids = ["sg-0a1b2c3d"]

[[functions]]
name = "fn-c"
environments = ["veth"]
[functions.vpc_config]
subnet_ids = ["subnet-a"]
security_group_ids = ["sg-web"]

[[hosts]]
name = "server"
subnet = "subnet-a"
"""


# ---- helpers ------------------------------------------------------------------------------------
def udp_from(lab: LabView, fn: str, port: int, dst: str = None, timeout: float = 3.0):
    """One UDP round trip from function ``fn``'s environment; returns the server's view of the
    sender (address, port) or None when nothing came back."""
    dst = dst or lab.s4
    with nt.UdpEchoServer(lab.server.netns, dst, port) as srv:
        try:
            nt.udp_roundtrip(lab.env(fn).netns, dst, port, b"hello", timeout=timeout)
        except (TimeoutError, AssertionError):
            return None
        return srv.datagrams[-1].peer[0]


def eni_by_fn(lab: LabView) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for e in lab.enis():
        for f in e["functions"]:
            out.setdefault(f, []).append(e)
    return out


# ---- shared ENIs and security groups ------------------------------------------------------------
def test_same_key_shares_one_eni_other_security_groups_get_their_own(own_lab):
    with own_lab(SHARING) as lab:
        enis = [e for e in lab.enis() if e["state"] in ("available", "in-use")]
        assert len(enis) == 2, enis
        by_fn = eni_by_fn(lab)
        assert by_fn["fn-a"][0]["id"] == by_fn["fn-b"][0]["id"]
        assert by_fn["fn-c"][0]["id"] != by_fn["fn-a"][0]["id"]
        assert sorted(by_fn["fn-c"][0]["security_groups"]) == ["sg-web"]
        seen = {fn: udp_from(lab, fn, 9000) for fn in ("fn-a", "fn-b", "fn-c")}
        assert seen["fn-a"] == seen["fn-b"] == by_fn["fn-a"][0]["ipv4"]
        assert seen["fn-c"] == by_fn["fn-c"][0]["ipv4"]
        assert seen["fn-a"] != seen["fn-c"]


def test_security_group_egress_rule_is_enforced_and_counted(own_lab):
    with own_lab(SHARING) as lab:
        ns_c = lab.env("fn-c").netns
        with nt.TcpServer(lab.server.netns, lab.s4, 8080) as ok_srv, \
                nt.TcpServer(lab.server.netns, lab.s4, 8081) as other:
            nt.tcp_send(ns_c, lab.s4, 8080, b"x" * 1000, verify=True, timeout=10)
            before = lab.engine_drop("security_group")
            with pytest.raises((TimeoutError, AssertionError)):
                nt.tcp_send(ns_c, lab.s4, 8081, b"x", timeout=2.5)
            denied = lab.engine_drop("security_group") - before
            assert denied >= 1  # the SYN and its retransmissions
            assert other.connections == []
            # the same port is fine for fn-a, whose security group allows all egress
            nt.tcp_send(lab.env("fn-a").netns, lab.s4, 8081, b"y" * 10, verify=True)
            assert len(ok_srv.connections) == 1 and len(other.connections) == 1
        # replies are never checked against egress rules: UDP 9000 is allowed out, the echo
        # comes back from source port 9000, and nothing more was denied
        assert udp_from(lab, "fn-c", 9000) is not None
        assert lab.engine_drop("security_group") - before == denied


# ---- scale-out ---------------------------------------------------------------------------------
SCALE = BASE + """
[lifecycle]
eni_create_delay = 1

[[functions]]
name = "fn-a"
environments = ["veth"]
[functions.vpc_config]
subnet_ids = ["subnet-a"]
security_group_ids = ["sg-0a1b2c3d"]

[[hosts]]
name = "server"
subnet = "subnet-a"
"""


def test_65000_connections_fill_an_eni_and_the_next_leave_from_a_new_eni(own_lab):
    with own_lab(SCALE) as lab:
        env = lab.env("fn-a")
        src = bare(env.ipv4)
        first = lab.enis()
        assert len(first) == 1
        eni0 = first[0]
        # 65,000 new flows: source ports 1024-65535 to port 9000, the rest to 9001
        with loadgen.UdpFlowCounter(lab.server.netns, lab.s4, [9000, 9001, 9002]) as srv:
            # the first flow alone, so that the data path has resolved the server's MAC before
            # the burst (packets waiting for ARP are queued, 8 per neighbour, like the kernel's
            # bounded unresolved queue; a burst would overflow it)
            loadgen.udp_flow_burst(env.netns, src, lab.s4, [9000, 9001], 1, rate=1)
            assert srv.wait_total(1, 5) == 1
            loadgen.udp_flow_burst(env.netns, src, lab.s4, [9000, 9001], 64999, rate=20000,
                                   first=1)
            assert srv.wait_quiet(quiet=0.5) == 65000
            assert srv.by_source() == {eni0["ipv4"]: 65000}
            # the pool is full, and the high-water mark (80 %) already started the next ENI
            enis = wait_until(lambda: (lambda es: len(es) == 2 and all(
                e["state"] != "pending" for e in es) and es)(lab.enis()),
                10, "a second ENI to become available")
            eni1 = next(e for e in enis if e["id"] != eni0["id"])
            assert eni1["ipv4"] not in (eni0["ipv4"], lab.s4)
            assert eni1["subnet"] == "subnet-a"
            c = lab.ask("counters")
            udp = [p for p in c["enis"][0]["pool"] if p["eni"] == eni0["id"]
                   and p["family"] == 4 and p["proto"] == "udp"][0]
            assert (udp["used"], udp["size"]) == (65000, 65000)
            assert c["control_plane"]["scale_out_early"] >= 1
            assert c["enis"][0]["drops"]["port_exhausted"] == 0  # nothing failed
            # the next connections (new tuples: port 9002) leave from the new ENI's address
            loadgen.udp_flow_burst(env.netns, src, lab.s4, [9002], 2000, rate=20000)
            assert srv.wait_total(67000, 10) == 67000
            assert srv.by_source() == {eni0["ipv4"]: 65000, eni1["ipv4"]: 2000}


# ---- the lifecycle under a moved lab clock ------------------------------------------------------
def test_pending_until_the_eni_is_created_then_active(own_lab):
    with own_lab(SHARING, wait_active=False) as lab:
        fns = lab.functions()
        assert {f["state"] for f in fns.values()} == {"Pending"}
        assert {e["state"] for e in lab.enis()} == {"pending"}
        r = lab.reply("invoke", name="fn-a")
        assert not r["ok"] and "Pending" in r["error"], r
        before = lab.dp_drop("function_pending")
        assert udp_from(lab, "fn-a", 9000, timeout=1.0) is None
        assert lab.dp_drop("function_pending") > before
        lab.advance(5)  # the lab's eni_create_delay
        wait_until(lambda: all(f["state"] == "Active" for f in lab.functions().values()), 5,
                   "the functions to become Active")
        assert lab.ask("invoke", name="fn-a")["result"]["StatusCode"] == 200
        eni = eni_by_fn(lab)["fn-a"][0]
        assert udp_from(lab, "fn-a", 9000) == eni["ipv4"]


def test_update_keeps_the_old_eni_until_the_new_one_is_available(own_lab):
    with own_lab(SHARING) as lab:
        old = eni_by_fn(lab)["fn-a"][0]
        # a key nobody has yet (both security groups): a new ENI, on a link made at run time
        r = lab.reply("function_update", name="fn-a",
                      security_group_ids=["sg-0a1b2c3d", "sg-web"])
        assert r["ok"], r
        f = lab.functions()["fn-a"]
        assert f["last_update_status"] == "InProgress"
        assert udp_from(lab, "fn-a", 9000) == old["ipv4"]  # still the old ENI
        lab.advance(5)
        wait_until(lambda: lab.functions()["fn-a"]["last_update_status"] == "Successful", 5,
                   "the update to complete")
        new = [e for e in eni_by_fn(lab)["fn-a"] if e["id"] != old["id"]]
        assert len(new) == 1 and sorted(new[0]["security_groups"]) == ["sg-0a1b2c3d", "sg-web"]
        assert new[0]["ipv4"] not in (old["ipv4"], lab.s4)
        assert udp_from(lab, "fn-a", 9000) == new[0]["ipv4"]
        # the old ENI still serves fn-b, so it stays
        assert udp_from(lab, "fn-b", 9000) == old["ipv4"]
        assert next(e for e in lab.enis() if e["id"] == old["id"])["state"] != "deleted"


def test_removed_vpc_config_deletes_the_eni_after_the_delay_if_unused(own_lab):
    with own_lab(SHARING) as lab:
        by_fn = eni_by_fn(lab)
        eni_c, eni_ab = by_fn["fn-c"][0], by_fn["fn-a"][0]
        assert lab.ask("function_update", name="fn-c", subnet_ids=[], security_group_ids=[])
        assert lab.ask("function_update", name="fn-a", subnet_ids=[], security_group_ids=[])
        before = lab.dp_drop("no_vpc_config")
        assert udp_from(lab, "fn-c", 9000, timeout=1.0) is None
        assert lab.dp_drop("no_vpc_config") > before
        state = {e["id"]: e["state"] for e in lab.enis()}
        assert state[eni_c["id"]] == "deleting"
        assert state[eni_ab["id"]] != "deleting"     # fn-b still uses it
        lab.advance(20)  # (the lab clock also runs in real time: keep a margin)
        assert {e["id"]: e["state"] for e in lab.enis()}[eni_c["id"]] == "deleting"
        lab.advance(10)  # past the 30 s delete delay
        state = {e["id"]: e["state"] for e in lab.enis()}
        assert state[eni_c["id"]] == "deleted" and state[eni_ab["id"]] != "deleted"
        assert udp_from(lab, "fn-b", 9000) == eni_ab["ipv4"]
        # the deleted ENI's address is no longer answered in the subnet
        c = lab.ask("counters")
        assert eni_c["id"] not in [i for e in c["enis"] for i in e["live_eni_ids"]]


def test_idle_function_goes_inactive_and_traffic_brings_it_back(own_lab):
    with own_lab(SHARING) as lab:
        old = eni_by_fn(lab)["fn-a"][0]
        assert udp_from(lab, "fn-a", 9000) == old["ipv4"]
        lab.advance(121)  # inactive_after = 120 s without traffic or invocations
        fns = lab.functions()
        assert fns["fn-a"]["state"] == "Inactive" and fns["fn-b"]["state"] == "Inactive"
        assert {e["id"]: e["state"] for e in lab.enis()}[old["id"]] == "deleted"
        before = lab.dp_drop("function_inactive")
        assert udp_from(lab, "fn-a", 9000, timeout=1.0) is None   # fails ...
        assert lab.dp_drop("function_inactive") > before
        wait_until(lambda: lab.functions()["fn-a"]["state"] == "Pending", 2,
                   "traffic to start Pending")                     # ... and starts Pending
        r = lab.reply("invoke", name="fn-b")  # an invocation of an Inactive function: the same
        assert not r["ok"], r
        lab.advance(5)
        wait_until(lambda: lab.functions()["fn-a"]["state"] == "Active", 5, "Active again")
        new = eni_by_fn(lab)["fn-a"][0]
        assert new["id"] != old["id"]
        assert udp_from(lab, "fn-a", 9000) == new["ipv4"]


# ---- network ACLs ------------------------------------------------------------------------------
NACL = BASE + """
# subnet-a only lets TCP to port 8080 in: the replies of its own outbound connections (to the
# ENI's ephemeral ports) are denied at the subnet edge, exactly the AWS pitfall
[[network_acls]]
id = "acl-0a1b2c3d"
subnet_ids = ["subnet-a"]
[[network_acls.egress]]
rule_number = 100
protocol = "all"
action = "allow"
cidr = "0.0.0.0/0"
[[network_acls.ingress]]
rule_number = 100
protocol = "tcp"
action = "allow"
cidr = "0.0.0.0/0"
from_port = 8080
to_port = 8080
[[network_acls.ingress]]
rule_number = 200
protocol = "udp"
action = "allow"
cidr = "198.18.2.0/24"
from_port = 536
to_port = 65535

[[functions]]
name = "fn-a"
environments = ["veth"]
[functions.vpc_config]
subnet_ids = ["subnet-a"]
security_group_ids = ["sg-0a1b2c3d"]

[[hosts]]
name = "server"
subnet = "subnet-b"

[[hosts]]
name = "neighbour"
subnet = "subnet-a"
"""


def _nacl(lab: LabView, direction: str, rule) -> int:
    rows = [r for r in hplab.nacl_counters(lab.plan)
            if r["direction"] == direction and str(r["rule"]) == str(rule)]
    assert len(rows) == 1, rows
    return rows[0]["packets"]


def test_nacl_blocking_ephemeral_ports_breaks_replies_and_counts_them(own_lab):
    with own_lab(NACL) as lab:
        server = lab.plan.host("server")
        s4 = bare(server.ipv4)
        ns = lab.env("fn-a").netns
        with nt.TcpServer(server.netns, s4, 8081) as srv:
            out_before = _nacl(lab, "egress", 100)
            deny_before = _nacl(lab, "ingress", "*")
            with pytest.raises((TimeoutError, AssertionError)):
                nt.tcp_send(ns, s4, 8081, b"x", timeout=2.5)
            # the SYN left the subnet (egress rule 100), the SYN-ACK to the ENI's ephemeral
            # port hit the implicit deny of the ingress rules: stateless, per packet
            assert _nacl(lab, "egress", 100) > out_before
            assert _nacl(lab, "ingress", "*") > deny_before
            assert srv.completed == []
        # UDP replies are allowed back by rule 200, so UDP works across the same edge
        allowed_before = _nacl(lab, "ingress", 200)
        assert udp_from(lab, "fn-a", 9000, dst=s4) is not None
        assert _nacl(lab, "ingress", 200) > allowed_before
        # inside one subnet nothing crosses an edge: TCP to the neighbour in subnet-a works
        nb = lab.plan.host("neighbour")
        with nt.TcpServer(nb.netns, bare(nb.ipv4), 8081):
            nt.tcp_send(ns, bare(nb.ipv4), 8081, b"z" * 100, verify=True)


# ---- NAT gateway (kit.labs.NATGW, which datapath/test_restart.py restarts) -------------------
def test_nat_gateway_path_and_idle_timeout_rst(own_lab):
    with own_lab(NATGW) as lab:
        web = lab.plan.internet_hosts[0]
        nat = lab.plan.nat_gateways[0]
        w4 = bare(web.ipv4)
        ns = lab.env("fn-a").netns
        # through the NAT gateway: the internet host sees the NAT gateway's public address
        with nt.TcpServer(web.netns, w4, 8080) as srv:
            nt.tcp_send(ns, w4, 8080, b"n" * 100_000, verify=True)
            assert srv.connections[0].peer[0] == nat.public_ipv4
        # the internet cannot reach into the VPC: no route to the ENI or the subnets
        eni = lab.plan.enis[0]
        with pytest.raises((TimeoutError, AssertionError)):
            nt.tcp_send(web.netns, eni.ipv4, 8080, b"x", timeout=1.5)
        # an idle connection times out at the NAT gateway (2 s here, 350 s in AWS); the next
        # segment on it is answered with a RST, which reaches the function through the ENI
        listener_ready = threading.Event()
        held: List[socket.socket] = []

        def serve():
            with netns.entered(web.netns):
                ls = socket.socket()
            ls.bind((w4, 8090))
            ls.listen(1)
            ls.settimeout(10)
            listener_ready.set()
            with ls:
                c, _ = ls.accept()
                held.append(c)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert listener_ready.wait(5)
        with netns.entered(ns):
            cs = socket.socket()
        cs.settimeout(5)
        try:
            cs.connect((w4, 8090))
            cs.sendall(b"ping")
            t.join(5)
            assert held and held[0].recv(4) == b"ping"
            rst_before = lab.ask("counters")["rst_sent"]
            time.sleep(2.5)  # idle past the NAT gateway's timeout (the data path ticks 20/s)
            nat_c = lab.ask("counters")["nat_gateways"][0]
            assert nat_c["connections"] == 0 and nat_c["connections_expired"] >= 1
            cs.sendall(b"late")
            with pytest.raises(ConnectionResetError):
                cs.recv(10)
            assert lab.ask("counters")["rst_sent"] == rst_before + 1
        finally:
            cs.close()
            for c in held:
                c.close()


# ---- IAM, through the command line --------------------------------------------------------------
IAM = SCALE + """
[iam]
identity_policies = ['''
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Resource": "*",
   "Action": ["lambda:CreateFunction", "lambda:UpdateFunctionConfiguration"]},
  {"Sid": "NoWebGroup", "Effect": "Deny", "Resource": "*",
   "Action": ["lambda:CreateFunction", "lambda:UpdateFunctionConfiguration"],
   "Condition": {"ForAnyValue:StringEquals": {"lambda:SecurityGroupIds": ["sg-web"]}}}]}
''']
"""


def test_cli_function_update_eni_list_and_an_iam_refusal(own_lab):
    import json as _json

    with own_lab(IAM) as lab:
        r = cli_run("function", "update", "fn-a", "--name", lab.name,
                    "--security-groups", "sg-web,sg-0a1b2c3d")
        assert r.returncode == 2, r
        assert "AccessDeniedException" in r.stderr and "explicit deny" in r.stderr, r.stderr
        assert lab.functions()["fn-a"]["security_group_ids"] == ["sg-0a1b2c3d"]
        r = cli_run("function", "update", "fn-a", "--name", lab.name, "--subnets", "subnet-b",
                    "--wait")
        assert r.returncode == 0, r.stderr
        assert "LastUpdateStatus=Successful" in r.stdout, r.stdout
        r = cli_run("eni", "list", "--name", lab.name, "--json")
        assert r.returncode == 0, r.stderr
        enis = _json.loads(r.stdout)
        used = [e for e in enis if "fn-a" in e["functions"]]
        assert [e["subnet"] for e in used] == ["subnet-b"]
        assert used[0]["ipv4"].startswith("198.18.2.")
        r = cli_run("function", "list", "--name", lab.name)
        assert r.returncode == 0 and "fn-a" in r.stdout and "subnet-b" in r.stdout, r
        r = cli_run("clock", "--name", lab.name, "--advance", "2m")
        assert r.returncode == 0 and "ahead of the machine's clock by 120.0 s" in r.stdout, r
        r = cli_run("function", "update", "fn-a", "--name", lab.name, "--subnets", "subnet-zz")
        assert r.returncode == 2 and "subnet-zz" in r.stderr, r
