"""Lab builder: builds the default lab in network namespaces and checks the kernel's view of it.

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN (root); skipped otherwise. Every lab gets a random name
(``t`` + 6 hex), so its namespaces are ``hp-tXXXXXX-*``; fixtures tear every lab down, even when
a test fails. Kernel state is read with pyroute2 and /proc, except for two independent
cross-checks that use ``ip netns exec`` (tests only; product code never runs ``ip``).
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from hyperplane import labconfig, netns
from hyperplane import topology as lab
from hyperplane.topology import builder
from kit.frames import inet_checksum
from kit.labs import destroy, lab_name, ours

_problem = netns.privilege_problem()
pytestmark = pytest.mark.skipif(_problem is not None, reason=_problem or "")

IFA_F_TENTATIVE = 0x40


@pytest.fixture
def make_lab(run_dir):
    """Factory: ``make_lab()`` builds the default lab under a fresh name and returns its plan.
    Every lab the test names (built or attempted) is torn down afterwards."""
    names = []

    def make(name=None, config=None):
        name = name or lab_name()
        names.append(name)
        plan = labconfig.resolve(config or labconfig.default(), name)
        lab.build(plan, "<default>")
        return plan

    make.names = names
    yield make
    for name in names:
        destroy(name)   # and any namespace left, belt and braces


@pytest.fixture
def built(make_lab):
    return make_lab()


def ipr_in(ns: str) -> IPRoute:
    with netns.entered(ns):
        return IPRoute()


def links(ns: str):
    with ipr_in(ns) as ipr:
        return {link.get("ifname"): link for link in ipr.get_links()}


def addresses(ns: str, ifname: str):
    with ipr_in(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return [(a.get_attr("IFA_ADDRESS"), a["prefixlen"],
                 a.get_attr("IFA_FLAGS") or a["flags"]) for a in ipr.get_addr(index=idx)]


def default_gateways(ns: str):
    out = {}
    with ipr_in(ns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family):
                if r["dst_len"] == 0 and r.get("gateway"):
                    out[family] = r.get("gateway")
    return out


def read_sysctl_via_ip(ns: str, key: str) -> str:
    """An independent reader: a separate process put into the namespace by iproute2."""
    path = "/proc/sys/" + key.replace(".", "/")
    return subprocess.run(["ip", "netns", "exec", ns, "cat", path], check=True,
                          capture_output=True, text=True).stdout.strip()


def echo(ns: str, dst: str, timeout: float = 2.0) -> bool:
    """ICMP echo from namespace ``ns`` to ``dst`` over a raw socket (no `ping` binary needed).
    The socket is opened inside ``ns`` and stays there."""
    v6 = ":" in dst
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    with s:
        ident, payload = os.getpid() & 0xFFFF, b"hyperplane-lab-test"
        req_type, rep_type = (128, 129) if v6 else (8, 0)
        hdr = struct.pack("!BBHHH", req_type, 0, 0, ident, 1)
        if not v6:  # the kernel computes the ICMPv6 checksum itself
            hdr = struct.pack("!BBHHH", req_type, 0, inet_checksum(hdr + payload), ident, 1)
        deadline = time.monotonic() + timeout
        s.sendto(hdr + payload, (dst, 0))
        while time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = s.recv(2048)
            except socket.timeout:
                return False
            if not v6:
                data = data[(data[0] & 0x0F) * 4:]  # raw IPv4 sockets include the IP header
            if data[0] == rep_type and struct.unpack("!H", data[4:6])[0] == ident:
                return True
        return False


# ---- the built lab -----------------------------------------------------------------------------
def test_namespaces_exist_and_state_is_recorded(built, run_dir):
    assert sorted(ours(built.name)) == sorted(built.namespaces())
    state = lab.load_state(built.name)
    assert state["name"] == built.name
    assert state["namespaces"] == built.namespaces()
    assert state["pid"] is None and state["config_source"] == "<default>"
    assert labconfig.Plan.from_dict(state["plan"]) == built
    assert lab.list_labs() == [built.name]
    assert (run_dir / built.name / "state.json").is_file()


def test_nothing_appears_in_the_callers_namespace(built):
    with IPRoute() as ipr:
        names = {link.get("ifname") for link in ipr.get_links()}
    assert not names & {"eni0", "env1", "br0", "host0"}


def test_node_links_hold_no_addresses_at_all(built):
    node_links = links(built.node_ns)
    assert set(node_links) == {"lo", "eni0", "env1"}
    for ifname in ("eni0", "env1"):
        assert addresses(built.node_ns, ifname) == [], f"{ifname} has an address (fe80::?)"
    with ipr_in(built.node_ns) as ipr:
        v6 = [a.get("address") for a in ipr.get_addr(family=socket.AF_INET6)]
        assert v6 == [], "IPv6 must be disabled in the node namespace, even on lo"
    for ifname in ("eni0", "env1"):
        assert lab.sysctl(built.node_ns, f"net.ipv6.conf.{ifname}.disable_ipv6") == "1"


def test_forwarding_sysctls_per_namespace(built):
    expect = {
        built.node_ns: {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0",
                        "net.ipv6.conf.all.disable_ipv6": "1",
                        "net.ipv6.conf.default.disable_ipv6": "1"},
        built.fabric_ns: {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
                          "net.ipv4.conf.all.send_redirects": "0",
                          "net.ipv4.conf.default.send_redirects": "0"},
    }
    for ns, values in expect.items():
        for key, want in values.items():
            assert lab.sysctl(ns, key) == want, (ns, key)
            assert read_sysctl_via_ip(ns, key) == want, (ns, key)


def test_bridges_do_not_call_netfilter(built):
    """br_netfilter, when loaded, would run bridged frames through the VPC namespace's IP
    hooks; the lab turns it off there. Without the module the keys do not exist anywhere."""
    loaded = os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables")
    for key, _ in lab.BRIDGE_NF_SYSCTLS:
        if loaded:
            assert lab.sysctl(built.fabric_ns, key) == "0", key
        else:
            with pytest.raises(FileNotFoundError):
                lab.sysctl(built.fabric_ns, key)


def test_optional_sysctls_are_skipped_when_absent(built):
    got = lab.set_sysctls(built.fabric_ns, [("net.ipv4.ip_forward", 1),
                                            ("net.bridge.hp-no-such-key", 0)], if_present=True)
    assert got == ["net.ipv4.ip_forward"]
    assert lab.sysctl(built.fabric_ns, "net.ipv4.ip_forward") == "1"


def test_sysctls_stay_in_the_lab_namespaces(make_lab):
    """The builder writes /proc/sys/net from inside each namespace; ours must not change."""
    keys = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
            "net/ipv6/conf/default/disable_ipv6", "net/ipv6/conf/all/disable_ipv6",
            "net/ipv4/conf/all/send_redirects", "net/ipv6/conf/default/accept_dad"]
    keys += [k for k in ("net/bridge/bridge-nf-call-iptables",
                         "net/bridge/bridge-nf-call-ip6tables") if os.path.exists("/proc/sys/" + k)]

    def read_all():
        return {k: open("/proc/sys/" + k).read().strip() for k in keys}

    before = read_all()
    make_lab()
    assert read_all() == before


def test_env_addresses_routes_and_sysctls(built):
    for env in built.envs:
        got = addresses(env.netns, "eth0")
        have = {(a, p) for a, p, _ in got}
        a4, p4 = env.ipv4.split("/")
        a6, p6 = env.ipv6.split("/")
        assert (a4, int(p4)) in have and (a6, int(p6)) in have, got
        for a, _, flags in got:
            assert not flags & IFA_F_TENTATIVE, f"{a} is still doing DAD"
        assert default_gateways(env.netns) == {socket.AF_INET: env.gw4,
                                               socket.AF_INET6: env.gw6}
        assert lab.sysctl(env.netns, "net.ipv6.conf.eth0.accept_ra") == "0"
        assert links(env.netns)["lo"]["flags"] & 1, "lo is up"


def test_tap_environment_is_a_persistent_tun_device(built):
    (env,) = [e for e in built.envs if e.attach == "tap"]
    eth0 = links(env.netns)["eth0"]
    assert eth0.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "tun"
    # the data path can attach to it later by name
    with netns.entered(env.netns):
        fd = netns.open_tap("eth0")
    os.close(fd)
    assert "eth0" in links(env.netns), "closing an fd must not remove the persistent TAP"


def test_veth_environment(built):
    (env,) = [e for e in built.envs if e.attach == "veth"]
    eth0 = links(env.netns)["eth0"]
    assert eth0.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "veth"


def test_node_side_macs_match_the_plan(built):
    node_links = links(built.node_ns)
    for eni in built.enis:
        assert node_links[eni.node_ifname].get("address") == eni.mac
        assert node_links[eni.node_ifname]["flags"] & 1, "up"
    for env in built.envs:
        if env.attach == "veth":
            assert node_links[env.node_ifname].get("address") == env.gw_mac


def test_fabric_bridge_ports_and_router_addresses(built):
    fabric = links(built.fabric_ns)
    (subnet,) = built.subnets
    br = fabric[subnet.bridge]
    assert br.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "bridge"
    data = br.get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))
    assert data.get("IFLA_BR_STP_STATE") == 0
    assert data.get("IFLA_BR_MCAST_SNOOPING") == 0
    for port in [built.enis[0].fabric_ifname, built.hosts[0].fabric_ifname]:
        assert fabric[port].get("IFLA_MASTER") == br["index"], port
        assert addresses(built.fabric_ns, port) == [], f"bridge port {port} has an address"
    have = {(a, p) for a, p, _ in addresses(built.fabric_ns, subnet.bridge)}
    assert (subnet.router4, 24) in have and (subnet.router6, 64) in have


def test_host_addresses_and_routes(built):
    (host,) = built.hosts
    have = {(a, p) for a, p, _ in addresses(host.netns, "eth0")}
    assert ("198.18.1.5", 24) in have and ("2001:2:0:1::5", 64) in have
    assert default_gateways(host.netns) == {socket.AF_INET: host.gw4,
                                            socket.AF_INET6: host.gw6}


def test_host_reaches_the_vpc_router(built):
    host, subnet = built.hosts[0], built.subnets[0]
    assert echo(host.netns, subnet.router4)
    assert echo(host.netns, subnet.router6)


def test_host_reaches_router_cross_check_with_ip(built):
    """The same check with iproute2 doing the namespace switch (independent of our netns.py)."""
    host, subnet = built.hosts[0], built.subnets[0]
    code = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
            "s.connect((sys.argv[1],9)); print(s.getsockname()[0])")
    out = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", code,
                          subnet.router4], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "198.18.1.5"


# ---- teardown ----------------------------------------------------------------------------------
def test_teardown_removes_everything_and_is_idempotent(make_lab, run_dir):
    plan = make_lab()
    report = lab.teardown(plan.name)
    assert sorted(report["removed_namespaces"]) == sorted(plan.namespaces())
    assert report["stopped_pid"] is None
    assert ours(plan.name) == []
    assert not (run_dir / plan.name).exists()
    assert lab.load_state(plan.name) is None and lab.list_labs() == []
    assert lab.teardown(plan.name) == {"removed_namespaces": [], "stopped_pid": None}


def test_teardown_of_unknown_lab_is_empty(run_dir):
    assert lab.teardown(lab_name()) == {"removed_namespaces": [], "stopped_pid": None}


def test_teardown_stops_the_recorded_daemon(built):
    name = built.name
    # A stand-in daemon whose command line names hyperplane and the lab, like the real one.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "hyperplane", "--name", name])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = lab.load_state(name)
        state["pid"] = proc.pid
        lab.save_state(name, state)
        report = lab.teardown(name)
        assert report["stopped_pid"] == proc.pid
        assert proc.wait(timeout=5) is not None
        assert ours(name) == []
    finally:
        for p in (proc, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_teardown_leaves_an_unrelated_pid_alone(built):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = lab.load_state(built.name)
        state["pid"] = bystander.pid
        lab.save_state(built.name, state)
        report = lab.teardown(built.name)
        assert report["stopped_pid"] is None
        assert bystander.poll() is None, "a process that is not the lab's must not be signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_teardown_only_removes_recorded_namespaces(built):
    """A namespace with the lab's prefix that the state does not list is not the lab's."""
    stray = f"{built.prefix}stray"
    pr_netns.create(stray)
    try:
        lab.teardown(built.name)
        assert netns.exists(stray)
        assert ours(built.name) == [stray]
    finally:
        pr_netns.remove(stray)


def test_failed_build_leaves_nothing_behind(run_dir, monkeypatch, make_lab):
    def broken(plan, host):
        raise OSError("injected failure")

    monkeypatch.setattr(builder, "build_host", broken)
    name = lab_name()
    make_lab.names.append(name)
    plan = labconfig.resolve(labconfig.default(), name)
    with pytest.raises(lab.LabError) as info:
        lab.build(plan, "<default>")
    msg = str(info.value)
    assert "host server" in msg and "injected failure" in msg
    assert ours(name) == []
    assert not (run_dir / name).exists()
    assert lab.load_state(name) is None


def test_failed_build_midway_through_links(run_dir, monkeypatch, make_lab):
    calls = []
    real = builder.build_env

    def fails_on_second(plan, env):
        calls.append(env.name)
        if len(calls) == 2:
            raise RuntimeError("second environment breaks")
        real(plan, env)

    monkeypatch.setattr(builder, "build_env", fails_on_second)
    name = lab_name()
    make_lab.names.append(name)
    with pytest.raises(lab.LabError, match="environment fn-b-0"):
        lab.build(labconfig.resolve(labconfig.default(), name), "<default>")
    assert ours(name) == [] and not (run_dir / name).exists()


def test_build_refuses_an_existing_lab_name(built):
    with pytest.raises(lab.LabError, match="already exists; run `hyperplane lab down"):
        lab.build(built, "<default>")
    assert sorted(ours(built.name)) == sorted(built.namespaces()), "the first lab is untouched"
    assert lab.load_state(built.name) is not None


def test_build_refuses_when_a_namespace_exists(run_dir):
    name = lab_name()
    plan = labconfig.resolve(labconfig.default(), name)
    squatter = plan.hosts[0].netns
    pr_netns.create(squatter)
    try:
        with pytest.raises(lab.LabError, match="already exist"):
            lab.build(plan, "<default>")
        assert ours(name) == [squatter], "nothing built, the existing namespace untouched"
        assert lab.load_state(name) is None
    finally:
        pr_netns.remove(squatter)


def test_two_labs_side_by_side(make_lab):
    a = make_lab()
    b = make_lab()
    b_links = {ns: sorted(links(ns)) for ns in b.namespaces()}
    lab.teardown(a.name)
    assert ours(a.name) == []
    assert sorted(ours(b.name)) == sorted(b.namespaces())
    assert {ns: sorted(links(ns)) for ns in b.namespaces()} == b_links
    assert echo(b.hosts[0].netns, b.subnets[0].router4)
    assert lab.list_labs() == [b.name]


def test_half_built_state_tears_down(run_dir):
    """A state file listing namespaces that were never created (a crash mid-build)."""
    name = lab_name()
    plan = labconfig.resolve(labconfig.default(), name)
    pr_netns.create(plan.node_ns)
    try:
        lab.save_state(name, {"name": name, "plan": plan.to_dict(), "config_source": "x",
                              "namespaces": [plan.node_ns, plan.fabric_ns], "pid": None,
                              "created": 0})
        report = lab.teardown(name)
        assert report["removed_namespaces"] == [plan.node_ns]
        assert ours(name) == [] and lab.load_state(name) is None
    finally:
        if netns.exists(plan.node_ns):
            pr_netns.remove(plan.node_ns)


def test_namespace_appearing_mid_build_is_never_removed(run_dir, monkeypatch, make_lab):
    """The race: another party creates one of our names after the up-front check. The builder
    must forget that name, roll back, and leave the other party's namespace alone."""
    name = lab_name()
    make_lab.names.append(name)
    plan = labconfig.resolve(labconfig.default(), name)
    squatter = plan.hosts[0].netns
    real_exists = netns.exists
    blind = {"left": 2}  # hide it from the up-front check and from create_namespace's check

    def exists(ns):
        if ns == squatter and blind["left"]:
            blind["left"] -= 1
            return False
        return real_exists(ns)

    pr_netns.create(squatter)
    try:
        monkeypatch.setattr(netns, "exists", exists)
        with pytest.raises(lab.LabError, match="appeared while the lab was being built"):
            lab.build(plan, "<default>")
        monkeypatch.undo()
        assert netns.exists(squatter), "a namespace the lab did not create must survive"
        assert ours(name) == [squatter]
        assert lab.load_state(name) is None
    finally:
        pr_netns.remove(squatter)


def test_state_file_is_written_atomically(run_dir):
    name = lab_name()
    lab.save_state(name, {"name": name, "namespaces": []}, create=True)
    with pytest.raises(FileExistsError):
        lab.save_state(name, {"name": name}, create=True)
    lab.save_state(name, {"name": name, "namespaces": ["x"]})
    assert lab.load_state(name) == {"name": name, "namespaces": ["x"]}
    assert os.listdir(run_dir / name) == ["state.json"], "no temp files left"
    lab.teardown(name)
    assert not (run_dir / name).exists()
