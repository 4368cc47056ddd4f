"""The data path in a real lab: kernel sockets in network namespaces, real frames, real NAT.

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN and /dev/net/tun (root); the lab tests are skipped otherwise
(the pytest plugin's fixtures say which capability is missing). They FAIL (never skip) when
the compiled engine is not built: the data path needs it, and a missing build must not turn
CI green.

The labs are the plugin's: uniquely named, under the session's ``HYPERPLANE_RUN_DIR``, so no
other lab on the machine is ever touched, and always taken down (with any namespace
``hp-NAME-*`` they left). Only the benchmark ranges 198.18.0.0/15 and 2001:2::/48 are used.
ICMP errors are translated (test_icmp_lab.py) but echo is not (Lambda has no ICMP), so nothing
here pings.

One module-scoped lab (the root conftest's ``dlab``, the embedded default lab: fn-a-0 on a TAP
device, fn-b-0 on a veth pair, one shared ENI 198.18.1.4 / 2001:2:0:1::4, a server 198.18.1.5
/ 2001:2:0:1::5) serves most tests; tests that change a lab (ethtool offloads, a second lab)
get their own (``own_lab``). The lab's lifecycle through the CLI and SIGTERM are
lab/test_lifecycle.py's, the demo learn/test_demo.py's.
"""
from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import subprocess
import threading
import time
from typing import Dict, List

import pytest
from pyroute2 import IPRoute

import hyperplane as hp
from hyperplane import netns, proc
from hyperplane import topology as hplab
from kit import traffic as nt, wire
from kit.labs import (LabView, Servers, cli_run, created, eni_drop, env_addr, finish_held, ours,
                      wait_until)

MB10 = 10_000_000
PORT_MIN, PORT_MAX = 536, 65535
MARKER = b"hp-lab-test-marker-" + secrets.token_hex(4).encode()


# ---- helpers ------------------------------------------------------------------------------------
def ethtool_tx(ns: str, on: bool, ifname: str = "eth0") -> None:
    subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "tx",
                    "on" if on else "off"], check=True, capture_output=True, timeout=10)
    out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", ifname], check=True,
                         capture_output=True, text=True, timeout=10).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("tx-checksumming:"))
    assert line.split(":")[1].split()[0] == ("on" if on else "off"), \
        f"ethtool -K {ifname} tx {'on' if on else 'off'} in {ns} did not take: {line!r}"


def scapy_l3(family: int, src: str, dst: str):
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    return IP(src=src, dst=dst, ttl=64) if family == 4 else IPv6(src=src, dst=dst, hlim=64)


ENVS = ["fn-a-0", "fn-b-0"]          # TAP, veth
FAMILIES = [4, 6]


# ---- 0. the build -------------------------------------------------------------------------------
def test_the_compiled_engine_is_built():
    assert hp.ENGINE == "compiled", \
        f"the data path needs the compiled engine, but: {hp.ENGINE_FALLBACK_REASON}"


def test_default_lab_shape(dlab):
    plan = dlab.plan
    assert [(e.name, e.attach) for e in plan.envs] == [("fn-a-0", "tap"), ("fn-b-0", "veth")]
    assert {e.eni for e in plan.envs} == {dlab.eni.id}
    assert (dlab.eni.ipv4, dlab.eni.ipv6) == ("198.18.1.4", "2001:2:0:1::4")
    assert (dlab.s4, dlab.s6) == ("198.18.1.5", "2001:2:0:1::5")


# ---- 1. TCP 10 MB --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
@pytest.mark.parametrize("env_name", ENVS)
def test_tcp_10mb_through_the_nat(dlab, servers, env_name, family):
    env = dlab.env(env_name)
    srv = servers.tcp[family]
    data = nt.payload(MB10, seed=family)
    before = len(srv.connections)
    digest, local = nt.tcp_send(env.netns, srv.addr, srv.port, data, timeout=30)
    assert digest == nt.sha256(data), "the server hashed different bytes than were sent"
    assert local[0] == env_addr(env, family)
    new = srv.connections[before:]
    assert len(new) == 1, new
    peer, sdigest, nbytes, err = new[0]
    assert err is None and nbytes == MB10 and sdigest == nt.sha256(data)
    assert peer[0] == dlab.eni_addr(family), f"server saw {peer}, not the ENI's address"
    assert peer[0] != env_addr(env, family)
    assert PORT_MIN <= peer[1] <= PORT_MAX, f"ENI port {peer[1]} outside {PORT_MIN}..{PORT_MAX}"


# ---- 2. UDP --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
@pytest.mark.parametrize("env_name", ENVS)
def test_udp_roundtrip_through_the_nat(dlab, servers, env_name, family):
    env = dlab.env(env_name)
    srv = servers.udp[family]
    msg = b"udp " + env_name.encode() + b" " + secrets.token_bytes(1000)
    before = len(srv.datagrams)
    reply, local = nt.udp_roundtrip(env.netns, srv.addr, srv.port, msg, timeout=5)
    assert reply == msg
    assert local[0] == env_addr(env, family)
    seen = [d for d in srv.datagrams[before:] if d.data == msg]
    assert seen, "the server never recorded the datagram"
    for d in seen:
        assert d.peer[0] == dlab.eni_addr(family), f"server saw {d.peer}, not the ENI"
        assert PORT_MIN <= d.peer[1] <= PORT_MAX


# ---- 3. checksums the kernels verify -------------------------------------------------------------
def _all_csum_errors(lab: LabView) -> Dict[str, Dict[str, int]]:
    return {ns: wire.csum_error_counters(ns)
            for ns in [e.netns for e in lab.plan.envs] + [lab.server.netns]}


@pytest.mark.parametrize("tx_off_on", ["fn-b-0", "fn-a-0", "server"])
def test_checksums_verified_by_the_receiving_kernel(own_lab, tx_off_on):
    """With tx checksum offload off at the sender, every segment carries a complete checksum
    that the data path updates incrementally; the receiving kernel verifies it (nothing is
    CHECKSUM_PARTIAL on the way). Env side off: the server's kernel checks the outbound
    rewrite; server side off: the environments' kernels check the inbound rewrite."""
    lab = own_lab()
    ns = lab.server.netns if tx_off_on == "server" else lab.env(tx_off_on).netns
    ethtool_tx(ns, on=False)
    senders = lab.plan.envs if tx_off_on == "server" else [lab.env(tx_off_on)]
    before = _all_csum_errors(lab)
    failures: List[str] = []
    with contextlib.ExitStack() as st:
        srv = Servers(lab, st)
        for env in senders:
            for fam in FAMILIES:
                what = f"{env.name} v{fam}"
                try:  # UDP first: it fails fast (5 s) where a bad TCP checksum stalls
                    msg = secrets.token_bytes(1400 if fam == 4 else 1200)
                    reply, _ = nt.udp_roundtrip(env.netns, srv.udp[fam].addr,
                                                srv.udp[fam].port, msg, timeout=5)
                    if reply != msg:
                        failures.append(f"{what}: UDP reply differs")
                    data = nt.payload(MB10, seed=10 + fam)
                    digest, _ = nt.tcp_send(env.netns, srv.tcp[fam].addr, srv.tcp[fam].port,
                                            data, timeout=15)
                    if digest != nt.sha256(data):
                        failures.append(f"{what}: TCP digest differs")
                except (AssertionError, TimeoutError) as e:
                    failures.append(f"{what}: {e}")
        peers = {c.peer[0] for s in srv.tcp.values() for c in s.connections}
        peers |= {d.peer[0] for s in srv.udp.values() for d in s.datagrams}
    after = _all_csum_errors(lab)
    diff = {ns: {k: after[ns][k] - v for k, v in c.items() if after[ns][k] != v}
            for ns, c in before.items()}
    diff = {ns: d for ns, d in diff.items() if d}
    assert not diff and not failures, \
        f"checksum errors counted by the kernels: {diff}; traffic failures: {failures}"
    assert peers <= {lab.eni.ipv4, lab.eni.ipv6}, peers
    ethtool_tx(ns, on=True)


@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
@pytest.mark.parametrize("env_name", ENVS)
def test_a_bad_checksum_is_caught_by_the_server(dlab, servers, env_name, family):
    """Positive control for the test above: a UDP datagram with a wrong checksum, injected in
    an environment, is translated (incrementally: still wrong) and the server's kernel counts
    it, so the zero-error assertions do observe the data path's checksums."""
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    env = dlab.env(env_name)
    srv = servers.udp[family]
    key = "Udp.InCsumErrors" if family == 4 else "Udp6InCsumErrors"
    src = env_addr(env, family)
    frame = (Ether(src=wire.mac_of(env.netns, "eth0"), dst=env.gw_mac)
             / scapy_l3(family, src, srv.addr)
             / UDP(sport=40000 + family, dport=srv.port, chksum=0x1234) / (MARKER + b" bad"))
    before = wire.csum_error_counters(dlab.server.netns)[key]
    n_dgrams = len(srv.datagrams)
    c0 = dlab.counters()
    wire.inject(env.netns, "eth0", [frame])
    wait_until(lambda: wire.csum_error_counters(dlab.server.netns)[key] >= before + 1, 3.0,
               f"{key} in the server namespace to count the bad datagram")
    assert wire.csum_error_counters(dlab.server.netns)[key] == before + 1
    assert len(srv.datagrams) == n_dgrams, "a datagram with a bad checksum was delivered"
    c1 = dlab.counters()
    assert c1["forwarded_outbound"] >= c0["forwarded_outbound"] + 1


# ---- 4. hundreds of concurrent connections -------------------------------------------------------
def test_600_concurrent_connections_from_both_environments(dlab):
    n = 300
    with nt.TcpServer(dlab.server.netns, dlab.s4, backlog=4096) as srv:
        c0 = dlab.counters()
        results: Dict[str, list] = {}
        errors: List[BaseException] = []

        def run(env):
            try:
                results[env.name] = nt.tcp_many(env.netns, srv.addr, srv.port, n,
                                                payload_size=4096, timeout=60, seed=7)
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(e,), daemon=True) for e in dlab.plan.envs]
        for t in threads:
            t.start()
        live_max = 0
        deadline = time.monotonic() + 70
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            rows = dlab.ask("conntrack")["entries"]
            live_max = max(live_max, sum(1 for r in rows if r["proto"] == "tcp"
                                         and r["orig"]["dport"] == srv.port))
            time.sleep(0.2)
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "tcp_many did not finish"
        assert not errors, errors
        for env in dlab.plan.envs:
            bad = [r for r in results[env.name] if not r.ok]
            assert not bad, f"{env.name}: {len(bad)} of {n} failed, e.g. {bad[:3]}"
        conns = srv.wait_connections(2 * n, timeout=10)
        c1 = dlab.counters()
    rows = dlab.ask("conntrack")["entries"]
    after = sum(1 for r in rows if r["proto"] == "tcp" and r["orig"]["dport"] == srv.port)
    assert created(c1) - created(c0) >= 2 * n
    assert max(live_max, after) >= 2 * n, (live_max, after)
    assert {c.peer[0] for c in conns} == {dlab.eni.ipv4}
    assert all(c.error is None for c in conns), [c for c in conns if c.error][:3]
    ports = {c.peer[1] for c in conns}
    assert len(ports) >= 2 * n, f"only {len(ports)} distinct ENI ports for {2 * n} connections"
    assert all(PORT_MIN <= p <= PORT_MAX for p in ports)


def test_no_send_errors_or_truncated_frames_after_the_load(dlab, servers):
    """After the traffic above (and at least one 10 MB transfer here), no link failed a send
    and no received frame was cut short by the rings."""
    data = nt.payload(MB10, seed=5)
    for env in dlab.plan.envs:
        d, _ = nt.tcp_send(env.netns, servers.tcp[4].addr, servers.tcp[4].port, data)
        assert d == nt.sha256(data)
    c = dlab.counters()
    assert {link["name"]: link["tx_errors"] for link in c["links"]} == \
        {link["name"]: 0 for link in c["links"]}
    assert c["drops"]["rx_truncated"] == 0 and c["drops"]["runt"] == 0, c["drops"]
    assert all(link["up"] for link in c["links"])


# ---- 5. unsolicited inbound ----------------------------------------------------------------------
def test_unsolicited_inbound_never_reaches_an_environment(dlab, servers):
    """Frames the server's namespace injects at the ENI: SYNs and datagrams on many ports,
    ones that reuse a live connection's ENI port with the wrong server port (or the wrong
    protocol, or the wrong server address), and ones addressed to the environments' own
    addresses. None may reach an environment.

    Counting, from csrc/hp_dp_poll.c: every frame sent to the ENI's MAC that is unicast IP (not
    NDP) goes to the engine in the reply direction (``inbound``), whatever its destination IP;
    a frame matching no reply tuple is counted ``unsolicited`` by the engine. So frames to the
    environments' addresses *through the ENI's MAC* count as unsolicited as well; the same
    frames to a MAC that is not the data path's never get that far (``rx_frame`` drops them
    as ``not_our_mac``), nor do broadcast ones (``multicast``)."""
    from scapy.layers.inet import TCP, UDP
    from scapy.layers.l2 import Ether
    host_ns = dlab.server.netns
    srv_mac = wire.mac_of(host_ns, "eth0")
    held: List[tuple] = []
    with nt.TcpServer(host_ns, dlab.s4) as t4, nt.TcpServer(host_ns, dlab.s6) as t6:
        tcp_srv = {4: t4, 6: t6}
        try:
            # live connections: TCP with only 4 of the 8 header bytes sent (so they sit open,
            # idle, ESTABLISHED), and a UDP flow per environment and family
            for env in dlab.plan.envs:
                for fam in FAMILIES:
                    with netns.entered(env.netns):
                        s = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6)
                    s.settimeout(5)
                    s.connect((tcp_srv[fam].addr, tcp_srv[fam].port))
                    data = nt.payload(5000, seed=fam)
                    s.sendall(nt.HEADER.pack(len(data))[:4])
                    held.append((s, data))
                    nt.udp_roundtrip(env.netns, servers.udp[fam].addr, servers.udp[fam].port,
                                     b"flow", timeout=5)
            time.sleep(0.3)  # let the last ACKs pass
            rows = dlab.ask("conntrack")["entries"]
            server_ports = {("tcp", 4): t4.port, ("tcp", 6): t6.port,
                            ("udp", 4): servers.udp[4].port, ("udp", 6): servers.udp[6].port}
            live = [(r["family"], r["proto"], r["reply"]["sport"], r["reply"]["dport"])
                    for r in rows
                    if r["orig"]["dport"] == server_ports.get((r["proto"], r["family"]))
                    and r["reply"]["src"] == dlab.server_addr(r["family"])]
            assert len([x for x in live if x[1] == "tcp"]) >= 4, live
            assert len([x for x in live if x[1] == "udp"]) >= 4, live
            live_eni_ports = {(f, p, dport) for f, p, _, dport in live}
            # every reply tuple the engine knows (earlier tests left entries too): a frame
            # that happened to match one would be legitimate, so none of ours may
            known = {(r["family"], r["proto"], r["reply"]["src"], r["reply"]["sport"],
                      r["reply"]["dst"], r["reply"]["dport"]) for r in rows}

            def l4(proto, sport, dport):
                if proto == "tcp":
                    return TCP(sport=sport, dport=dport, flags="S", seq=12345) / MARKER
                return UDP(sport=sport, dport=dport) / MARKER

            to_eni, to_env_eni_mac, to_env_foreign_mac, to_env_bcast = [], [], [], []
            for fam in FAMILIES:
                src, eni_ip = dlab.server_addr(fam), dlab.eni_addr(fam)

                def frame(proto, sport, dport, dst=eni_ip, mac=dlab.eni.mac, src=src, fam=fam):
                    return (Ether(src=srv_mac, dst=mac) / scapy_l3(fam, src, dst)
                            / l4(proto, sport, dport))

                for proto in ("tcp", "udp"):
                    for dport in (1, 22, 80, 443, 4444, 8000, 53000, 65535):
                        if (fam, proto, dport) not in live_eni_ports:
                            to_eni.append(frame(proto, 8000, dport))
                for f, proto, sport, dport in live:
                    if f != fam:
                        continue
                    to_eni.append(frame(proto, sport + 1, dport))        # wrong server port
                    to_eni.append(frame(proto, sport - 1 or 2, dport))
                    other = "udp" if proto == "tcp" else "tcp"
                    if (fam, other, dport) not in live_eni_ports:
                        to_eni.append(frame(other, sport, dport))        # wrong protocol
                    stranger = "198.18.1.77" if fam == 4 else "2001:2:0:1::77"
                    to_eni.append(frame(proto, sport, dport, src=stranger))  # wrong server
                    if proto == "tcp":  # not a SYN: an ACK for a connection that is not there
                        to_eni.append(Ether(src=srv_mac, dst=dlab.eni.mac)
                                      / scapy_l3(fam, src, eni_ip)
                                      / TCP(sport=sport + 1, dport=dport, flags="A", seq=1,
                                            ack=1) / MARKER)
                for env in dlab.plan.envs:
                    for proto in ("tcp", "udp"):
                        dst = env_addr(env, fam)
                        to_env_eni_mac.append(frame(proto, 8000, 9999, dst=dst))
                        to_env_foreign_mac.append(frame(proto, 8000, 9999, dst=dst,
                                                        mac="02:00:5e:00:53:99"))
                        if fam == 4:
                            to_env_bcast.append(frame(proto, 8000, 9999, dst=dst,
                                                      mac="ff:ff:ff:ff:ff:ff"))
            def unknown(frames):
                out = []
                for f in frames:
                    ip, l4_ = f.payload, f.payload.payload
                    proto = "tcp" if l4_.name == "TCP" else "udp"
                    key = (4 if ip.version == 4 else 6, proto,
                           str(ipaddress.ip_address(ip.src)), l4_.sport,
                           str(ipaddress.ip_address(ip.dst)), l4_.dport)
                    if key not in known:
                        out.append(f)
                return out

            to_eni = unknown(to_eni)
            assert len(to_eni) >= 40, len(to_eni)
            n_unsolicited = len(to_eni) + len(to_env_eni_mac)

            c0 = dlab.counters()
            with contextlib.ExitStack() as st:
                sniffers = [st.enter_context(wire.Sniffer(env.netns, "eth0", bpf=wire.bpf_l4(p),
                                                        outgoing=False))
                            for env in dlab.plan.envs for p in ("tcp", "udp")]
                sent = wire.inject(host_ns, "eth0",
                                 to_eni + to_env_eni_mac + to_env_foreign_mac + to_env_bcast)
                assert sent == n_unsolicited + len(to_env_foreign_mac) + len(to_env_bcast)
                wait_until(lambda: eni_drop(dlab.counters(), "unsolicited")
                           >= eni_drop(c0, "unsolicited") + n_unsolicited, 5.0,
                           f"{n_unsolicited} unsolicited drops")
                wait_until(lambda: dlab.counters()["drops"]["not_our_mac"]
                           >= c0["drops"]["not_our_mac"] + len(to_env_foreign_mac), 3.0,
                           "the not_our_mac drops")
                time.sleep(0.5)  # anything forwarded by mistake would have arrived by now
            c1 = dlab.counters()
            # every injected frame carries MARKER (late segments of earlier tests' connections
            # may pass meanwhile: they are legitimate and do not)
            leaked = [(s.netns, r.data.hex()[:120]) for s in sniffers for r in s.records
                      if MARKER in r.data]
            assert not leaked, f"{len(leaked)} frames reached an environment: {leaked[:5]}"
            assert eni_drop(c1, "unsolicited") - eni_drop(c0, "unsolicited") == n_unsolicited
            assert c1["drops"]["engine"] - c0["drops"]["engine"] == n_unsolicited
            assert (c1["drops"]["not_our_mac"] - c0["drops"]["not_our_mac"]
                    == len(to_env_foreign_mac))
            assert c1["drops"]["multicast"] - c0["drops"]["multicast"] >= len(to_env_bcast)
            assert created(c1) == created(c0), "an inbound frame created a connection"

            # the live connections were not disturbed: finish them
            finish_held(held)
        finally:
            for s, _ in held:
                s.close()


# ---- 6. anti-spoofing ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
@pytest.mark.parametrize("env_name", ENVS)
def test_spoofed_source_is_dropped(dlab, servers, env_name, family):
    """An environment sends with the other environment's source address."""
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    env = dlab.env(env_name)
    other = next(e for e in dlab.plan.envs if e.name != env_name)
    srv = servers.udp[family]
    frame = (Ether(src=wire.mac_of(env.netns, "eth0"), dst=env.gw_mac)
             / scapy_l3(family, env_addr(other, family), srv.addr)
             / UDP(sport=41000, dport=srv.port) / MARKER)
    n_dgrams = len(srv.datagrams)
    c0 = dlab.counters()
    with wire.Sniffer(dlab.server.netns, "eth0", bpf=wire.bpf_l4("udp")) as sn:
        wire.inject(env.netns, "eth0", [frame])
        wait_until(lambda: dlab.counters()["drops"]["spoofed_source"]
                   > c0["drops"]["spoofed_source"], 3.0, "the spoofed_source drop")
        time.sleep(0.2)
    c1 = dlab.counters()
    assert c1["drops"]["spoofed_source"] == c0["drops"]["spoofed_source"] + 1
    assert created(c1) == created(c0)
    assert not [r for r in sn.records if MARKER in r.data], "the spoofed datagram got out"
    assert len(srv.datagrams) == n_dgrams


# ---- 7. neighbour resolution ---------------------------------------------------------------------
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20


def test_neighbours_are_resolved_both_ways(dlab, servers):
    for env in dlab.plan.envs:
        for fam in FAMILIES:
            nt.udp_roundtrip(env.netns, servers.udp[fam].addr, servers.udp[fam].port,
                             b"neigh", timeout=5)
    srv_mac = wire.mac_of(dlab.server.netns, "eth0")
    neigh = dlab.ask("neighbours")["neighbours"]
    for addr in (dlab.s4, dlab.s6):
        rows = [n for n in neigh if n["address"] == addr]
        assert len(rows) == 1, (addr, neigh)
        assert rows[0]["link"] == dlab.eni.node_ifname
        assert rows[0]["mac"] == srv_mac, rows[0]
        assert rows[0]["state"] in ("reachable", "stale", "probe"), rows[0]
    for env in dlab.plan.envs:
        with netns.entered(env.netns):
            ipr = IPRoute()
        with ipr:
            entries = {n.get_attr("NDA_DST"): n for fam in (socket.AF_INET, socket.AF_INET6)
                       for n in ipr.get_neighbours(family=fam)}
        for gw in (env.gw4, env.gw6):
            n = entries.get(gw)
            assert n is not None, f"{env.name}: no kernel neighbour entry for gateway {gw}"
            assert n.get_attr("NDA_LLADDR") == env.gw_mac, (env.name, gw, n)
            assert not n["state"] & (NUD_INCOMPLETE | NUD_FAILED), (env.name, gw, n["state"])


def test_unresolvable_next_hop_is_probed_three_times_then_fails(dlab):
    """UDP to a silent address in the subnet: the data path sends 3 ARP requests (3 Neighbor
    Solicitations for IPv6), 1 s apart, then drops what waited as ``neigh_failed``."""
    from scapy.layers.inet6 import ICMPv6ND_NS
    from scapy.layers.l2 import ARP
    silent = {4: "198.18.1.200", 6: "2001:2:0:1::200"}
    env = dlab.env("fn-b-0")
    per_family = 2
    c0 = dlab.counters()
    with wire.Sniffer(dlab.server.netns, "eth0", bpf=wire.bpf_ethertype(0x0806, 0x86DD)) as sn:
        for fam in FAMILIES:
            with netns.entered(env.netns):
                s = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6,
                                  socket.SOCK_DGRAM)
            with s:
                for i in range(per_family):
                    s.sendto(b"anyone at .200? %d" % i, (silent[fam], 9000 + i))
        wait_until(lambda: dlab.counters()["drops"]["neigh_failed"]
                   >= c0["drops"]["neigh_failed"] + 2 * per_family, 5.0,
                   "neigh_failed for the queued datagrams")
        time.sleep(1.3)  # a 4th probe would have gone out by now
    c1 = dlab.counters()
    assert c1["drops"]["neigh_failed"] - c0["drops"]["neigh_failed"] == 2 * per_family
    arps = sn.matching(lambda e: ARP in e and e[ARP].op == 1 and e[ARP].pdst == silent[4])
    assert len(arps) == 3, [a.summary() for a in arps]
    for a in arps:
        assert a[ARP].psrc == dlab.eni.ipv4 and a[ARP].hwsrc == dlab.eni.mac
    ns6 = sn.matching(lambda e: ICMPv6ND_NS in e and e[ICMPv6ND_NS].tgt == silent[6])
    assert len(ns6) == 3, [a.summary() for a in ns6]
    from scapy.layers.l2 import Ether
    times = sorted(r.time for r in sn.records
                   if ARP in Ether(r.data) and Ether(r.data)[ARP].pdst == silent[4])
    # RFC 4861 RETRANS_TIMER: 1 s apart (the data path's timers tick every 50 ms)
    assert all(0.8 < b - a < 1.5 for a, b in zip(times, times[1:])), times
    assert not [n for n in dlab.ask("neighbours")["neighbours"]
                if n["address"] in silent.values()]


# ---- 8. the data path owns its addresses ---------------------------------------------------------
def test_node_namespace_kernel_has_no_addresses_and_does_not_forward(dlab):
    with netns.entered(dlab.plan.node_ns):
        ipr = IPRoute()
    with ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addrs = [(names.get(a["index"]), a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()]
    expected = {dlab.eni.node_ifname} | {e.node_ifname for e in dlab.plan.envs if e.node_ifname}
    assert expected <= set(names.values()), names
    extra = [(n, a) for n, a in addrs if not (n == "lo" and a in ("127.0.0.1", "::1"))]
    assert not extra, f"the node namespace's kernel holds addresses: {extra}"
    assert hplab.sysctl(dlab.plan.node_ns, "net.ipv4.ip_forward") == "0"
    with netns.entered(dlab.plan.node_ns):
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            assert f.read().strip() == "0"


def _ip_in_receives(ns: str) -> int:
    """The IPv4 stack's ``Ip: InReceives`` in namespace ``ns``."""
    with netns.entered(ns):
        with open("/proc/thread-self/net/snmp") as f:
            head, values = [line.split() for line in f if line.startswith("Ip:")][:2]
    return int(values[head.index("InReceives")])


def test_node_namespace_ip_stack_never_sees_the_data_paths_frames(dlab, servers):
    """hyperplane.datapath.steal: the node's veth links drop what they receive at tc ingress, after the
    data path's packet socket took its copy, so the node's own IP stack (which would build and
    free a route entry per packet for nothing) counts no packet, while the NAT carries 10 MB."""
    from hyperplane.datapath import steal

    links = {x["ifname"]: x for x in dlab.counters()["links"]}
    veths = [dlab.eni.node_ifname] + [e.node_ifname for e in dlab.plan.envs
                                      if e.attach == "veth"]
    for ifname in veths:
        assert links[ifname]["kernel_stack"] == "bypassed", links[ifname]
        assert links[ifname]["kernel_stack_by"] in steal.MECHANISMS.values(), links[ifname]
    tap = [x for x in links.values() if x["kind"] == "tap"]
    assert tap and all(x["kernel_stack"] == "not on this link (a TAP)" for x in tap)
    with netns.entered(dlab.plan.node_ns):
        ipr = IPRoute()
    with ipr:
        assert all(steal.stolen(ifname, ipr) for ifname in veths)
        with pytest.raises(steal.StealError, match="no link 'hp-no-such-link'"):
            steal.steal("hp-no-such-link", ipr)

    before = _ip_in_receives(dlab.plan.node_ns)
    env = dlab.env("fn-b-0")
    srv = servers.tcp[4]
    data = nt.payload(MB10, seed=7)
    digest, _ = nt.tcp_send(env.netns, srv.addr, srv.port, data, timeout=30)
    assert digest == nt.sha256(data)
    assert _ip_in_receives(dlab.plan.node_ns) == before, \
        "the node namespace's IP stack received frames the data path carried"


# ---- 9. two labs side by side --------------------------------------------------------------------
def test_two_labs_side_by_side_and_one_goes_down(dlab, servers, own_lab):
    with own_lab() as other:
        assert other.name != dlab.name
        assert not set(ours(other.name)) & set(ours(dlab.name))
        with contextlib.ExitStack() as st:
            osrv = Servers(other, st)
            jobs = []
            for lab_, srv in ((dlab, servers), (other, osrv)):
                for env in lab_.plan.envs:
                    for fam in FAMILIES:
                        jobs.append((lab_, srv, env, fam))
            errors: List[str] = []
            data = nt.payload(2_000_000, seed=3)

            def run(lab_, srv, env, fam):
                try:
                    d, _ = nt.tcp_send(env.netns, srv.tcp[fam].addr, srv.tcp[fam].port, data,
                                       timeout=30)
                    if d != nt.sha256(data):
                        errors.append(f"{lab_.name} {env.name} v{fam}: digest differs")
                    r, _ = nt.udp_roundtrip(env.netns, srv.udp[fam].addr, srv.udp[fam].port,
                                            b"both", timeout=5)
                    if r != b"both":
                        errors.append(f"{lab_.name} {env.name} v{fam}: bad UDP reply")
                except Exception as e:
                    errors.append(f"{lab_.name} {env.name} v{fam}: {e!r}")

            c_other0, c_d0 = other.counters(), dlab.counters()
            threads = [threading.Thread(target=run, args=j, daemon=True) for j in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads), "traffic did not finish in 60 s"
            assert not errors, errors
            assert created(other.counters()) - created(c_other0) >= 8
            assert created(dlab.counters()) - created(c_d0) >= 8
            assert {c.peer[0] for s in osrv.tcp.values() for c in s.connections} == \
                {other.eni.ipv4, other.eni.ipv6}
        other_ns = ours(other.name)
        assert len(other_ns) == 5
        mine_before = ours(dlab.name)
        r = cli_run("lab", "down", "--name", other.name)
        assert r.returncode == 0, r.stderr
        assert ours(other.name) == []
        assert not proc.pid_alive(other.pid)
    assert ours(dlab.name) == mine_before and len(mine_before) == 5
    assert proc.pid_alive(dlab.pid)
    assert dlab.ask("ping")["pid"] == dlab.pid
    data = nt.payload(1_000_000, seed=4)
    for env in dlab.plan.envs:
        d, _ = nt.tcp_send(env.netns, servers.tcp[4].addr, servers.tcp[4].port, data)
        assert d == nt.sha256(data)
    assert all(link["up"] for link in dlab.counters()["links"])
