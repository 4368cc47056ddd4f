"""``hyperplane capture``: the pcap files hold each packet before and after NAT.

The lab tests need CAP_NET_ADMIN (root) and tcpdump; they run one module-scoped default lab
(the root conftest's ``dlab``, from the pytest plugin, which takes it down at the end). Each
test starts the capture as a subprocess, waits for its --ready-file (every tcpdump is
listening), sends its own traffic, and reads both pcap files back with scapy: the environment
side must carry the environment's addresses, the ENI side the address the server saw (the
ENI's), with the same destination, payload, IPv4 id and TCP sequence numbers, and a TTL one
lower after the data path. The pairing logic is also checked without a lab on packets built
with scapy.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from hyperplane.observe import capture
from kit import REPO, traffic as nt
from kit.labs import bare, wait_until

TIMEOUT = 60


# ---- without a lab: pcap reading and pairing -----------------------------------------------------
def _frame(src, dst, sport, dport, payload=b"", ttl=64, ipid=7, seq=None):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    l3 = IP(src=src, dst=dst, ttl=ttl, id=ipid) if ":" not in src else \
        IPv6(src=src, dst=dst, hlim=ttl)
    l4 = UDP(sport=sport, dport=dport) if seq is None else \
        TCP(sport=sport, dport=dport, seq=seq, flags="S")
    return bytes(Ether() / l3 / l4 / payload)


def test_pcap_roundtrip_and_pairing(tmp_path):
    from scapy.utils import wrpcap

    env, eni, srv = "198.19.0.2", "198.18.1.4", "198.18.1.5"
    env_frames = [_frame(env, srv, 40000, 53, b"q1", ipid=1),
                  _frame(env, srv, 40000, 53, b"q1", ipid=1),       # a retransmission
                  _frame(srv, env, 53, 40000, b"a1", ttl=63, ipid=9),
                  _frame(env, srv, 40001, 443, seq=1000, ipid=2),   # dropped in the NAT
                  _frame("2001:2:0:f000::2", "2001:2:0:1::5", 40002, 53, b"q6")]
    eni_frames = [_frame(eni, srv, 1100, 53, b"q1", ttl=63, ipid=1),
                  _frame(eni, srv, 1100, 53, b"q1", ttl=63, ipid=1),
                  _frame(srv, eni, 53, 1100, b"a1", ipid=9),
                  _frame("198.18.1.4", srv, 1200, 53, b"other env", ipid=3),
                  _frame("2001:2:0:1::4", "2001:2:0:1::5", 40002, 53, b"q6", ttl=63)]
    wrpcap(str(tmp_path / "env.pcap"), env_frames)
    wrpcap(str(tmp_path / "eni.pcap"), eni_frames)
    # a file cut inside its last record (tcpdump still writing) reads as the complete ones
    data = (tmp_path / "eni.pcap").read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[:-5])
    assert [f for _, f in capture.read_frames(str(tmp_path / "cut.pcap"))] == eni_frames[:-1]

    pairs, left = capture.pair_up(capture.read_packets(str(tmp_path / "env.pcap")),
                                  capture.read_packets(str(tmp_path / "eni.pcap")),
                                  ("198.19.0.2/30", "2001:2:0:f000::2/64"))
    assert [(p.outbound, p.before is not None, p.after is not None) for p in pairs] == [
        (True, True, True), (True, True, True), (False, True, True), (True, True, False),
        (True, True, True)]
    assert [p.after.sport for p in pairs[:2]] == [1100, 1100]
    assert pairs[2].before.dst == eni and pairs[2].after.dst == env
    assert [q.payload for q in left] == [b"other env"]
    assert capture.format_pair(pairs[0]).startswith(
        "udp      198.19.0.2:40000 -> 198.18.1.5:53  ==>  198.18.1.4:1100 -> 198.18.1.5:53")
    assert "[2001:2:0:f000::2]:40002 -> [2001:2:0:1::5]:53  ==>  [2001:2:0:1::4]:40002" \
        in capture.format_pair(pairs[4])
    assert "not on the ENI side" in capture.format_pair(pairs[3])


# ---- the lab ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clab(dlab):
    """The module's default lab (the root conftest's); the capture needs tcpdump."""
    assert capture.shutil.which("tcpdump"), "tcpdump is not installed (.ci/run installs it)"
    return dlab


@pytest.fixture(scope="module")
def servers(clab):
    ns = clab.server.netns
    with contextlib.ExitStack() as stack:
        yield {"udp4": stack.enter_context(nt.UdpEchoServer(ns, clab.s4)),
               "udp6": stack.enter_context(nt.UdpEchoServer(ns, clab.s6)),
               "tcp4": stack.enter_context(nt.TcpServer(ns, clab.s4))}


@contextlib.contextmanager
def capturing(lab, tmp_path, *args):
    """Start `hyperplane capture` and yield (process, ready-file contents) once it listens;
    the process is always stopped (by its pid) at the end."""
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperplane", "capture", "--name", lab.name,
         "--dir", str(tmp_path / "pcap"), "--ready-file", str(ready), *args],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(f"capture exited early ({proc.returncode}): "
                                     f"{proc.communicate()}")
            return ready.exists()
        wait_until(up, 20, "the capture's ready file")
        yield proc, json.loads(ready.read_text())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _l3(pkt):
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    return pkt[IP] if IP in pkt else pkt[IPv6]


def _ttl(pkt):
    ip = _l3(pkt)
    return ip.ttl if ip.version == 4 else ip.hlim


def _udp_of(path, ports):
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    return [p for p in rdpcap(path) if UDP in p and {p[UDP].sport, p[UDP].dport} & ports]


def test_capture_udp_v4_v6_before_and_after_nat(clab, servers, tmp_path):
    from scapy.layers.inet import UDP

    env = clab.env("fn-a-0")                      # the TAP environment
    e4, e6 = bare(env.ipv4), bare(env.ipv6)
    sent = [(4, b"capture-v4-one"), (4, b"capture-v4-two"), (6, b"capture-v6-three")]
    # 3 exchanges = 6 packets on the environment side: --count 6 ends the capture by itself
    with capturing(clab, tmp_path, "--env", "fn-a-0", "--count", "6") as (proc, ready):
        locals_ = []
        for fam, data in sent:
            srv = servers[f"udp{fam}"]
            reply, local = nt.udp_roundtrip(env.netns, srv.addr, srv.port, data, timeout=10,
                                            retries=1)
            assert reply == data
            locals_.append(local)
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "capturing..." in err
    files = ready["files"]
    assert set(files) == {"fn-a-0.env", "eni0.eni"}
    # what the server saw: the ENI's address and port for each datagram
    seen = {d.data: d.peer for k in ("udp4", "udp6") for d in servers[k].datagrams}

    ports = {servers["udp4"].port, servers["udp6"].port}
    env_side = _udp_of(files["fn-a-0.env"], ports)
    eni_side = _udp_of(files["eni0.eni"], ports)
    for (fam, data), local in zip(sent, locals_):
        srv = servers[f"udp{fam}"]
        eni_addr, eni_port = seen[data]
        assert eni_addr in (clab.eni.ipv4, clab.eni.ipv6) or eni_addr.startswith(
            ("198.18.1.", "2001:2:0:1::")), eni_addr
        mine = [p for p in env_side if bytes(p[UDP].payload)[:len(data)] == data]
        theirs = [p for p in eni_side if bytes(p[UDP].payload)[:len(data)] == data]
        # environment side: request from the environment, reply to it (after un-NAT)
        req, rep = sorted(mine, key=lambda p: _l3(p).src != local[0])
        assert (_l3(req).src, req[UDP].sport) == (local[0], local[1])
        assert local[0] == (e4 if fam == 4 else e6)
        assert (_l3(req).dst, req[UDP].dport) == (srv.addr, srv.port)
        assert (_l3(rep).src, rep[UDP].sport) == (srv.addr, srv.port)
        assert (_l3(rep).dst, rep[UDP].dport) == (local[0], local[1]), "reply not un-NATed"
        # ENI side: the same packets with the ENI's address
        nreq, nrep = sorted(theirs, key=lambda p: _l3(p).src != eni_addr)
        assert (_l3(nreq).src, nreq[UDP].sport) == (eni_addr, eni_port)
        assert (_l3(nreq).dst, nreq[UDP].dport) == (srv.addr, srv.port)
        assert (_l3(nrep).dst, nrep[UDP].dport) == (eni_addr, eni_port)
        assert bytes(nreq[UDP].payload)[:len(data)] == bytes(req[UDP].payload)[:len(data)]
        assert _ttl(nreq) == _ttl(req) - 1, "the data path forwards: TTL/hop limit minus one"
        assert _ttl(rep) == _ttl(nrep) - 1
        if fam == 4:
            assert _l3(nreq).id == _l3(req).id
        # the printed summary pairs them, before ==> after
        ep = (lambda a, p: f"[{a}]:{p}" if ":" in a else f"{a}:{p}")
        s = ep(srv.addr, srv.port)
        assert f"{ep(*local)} -> {s}  ==>  {ep(eni_addr, eni_port)} -> {s}" in out, out
        assert f"{s} -> {ep(eni_addr, eni_port)}  ==>  {s} -> {ep(*local)}" in out, out


def test_capture_tcp_until_interrupted(clab, servers, tmp_path):
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    env = clab.env("fn-b-0")                      # the veth environment
    srv = servers["tcp4"]
    data = nt.payload(1000, seed=5)               # below the MSS: no segmentation offload
    with capturing(clab, tmp_path, "--env", "fn-b", "--filter", f"tcp port {srv.port}") \
            as (proc, ready):
        before = len(srv.connections)
        digest, local = nt.tcp_send(env.netns, srv.addr, srv.port, data, timeout=20)
        assert digest == nt.sha256(data)
        eni_addr, eni_port = srv.connections[before].peer
        files = ready["files"]

        def both_fins():  # the whole exchange is in the files (tcpdump -U writes at once)
            return all(sum(1 for p in rdpcap(f) if TCP in p and "F" in str(p[TCP].flags)) >= 2
                       for f in files.values())
        wait_until(both_fins, 10, "the FINs in both pcap files")
        proc.send_signal(signal.SIGINT)           # Ctrl-C: stop, close the files, summarise
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err

    def conn(path, addr, port):
        return [p for p in rdpcap(path)
                if TCP in p and (addr, port) in ((_l3(p).src, p[TCP].sport),
                                                 (_l3(p).dst, p[TCP].dport))]
    env_side = conn(files["fn-b-0.env"], *local)
    eni_side = conn(files["eni0.eni"], eni_addr, eni_port)
    assert len(env_side) == len(eni_side) and env_side, (len(env_side), len(eni_side))
    syn = [p for p in env_side if str(p[TCP].flags) == "S"][0]
    nsyn = [p for p in eni_side if str(p[TCP].flags) == "S"][0]
    assert (_l3(syn).src, syn[TCP].sport) == (bare(env.ipv4), local[1])
    assert (_l3(nsyn).src, nsyn[TCP].sport) == (eni_addr, eni_port)
    assert nsyn[TCP].seq == syn[TCP].seq and _ttl(nsyn) == _ttl(syn) - 1

    def stream(pkts, src):
        segs = sorted({p[TCP].seq: bytes(p[TCP].payload) for p in pkts
                       if _l3(p).src == src and len(p[TCP].payload)}.items())
        return b"".join(s for _, s in segs)
    sent = len(data).to_bytes(8, "big") + data
    assert stream(env_side, bare(env.ipv4)) == sent
    assert stream(eni_side, eni_addr) == sent
    assert stream(eni_side, srv.addr)[:32] == stream(env_side, srv.addr)[:32] == digest
    ep = f"{srv.addr}:{srv.port}"
    assert (f"tcp S    {local[0]}:{local[1]} -> {ep}  ==>  {eni_addr}:{eni_port} -> {ep}"
            in out), out
    assert f"tcp SA   {ep} -> {eni_addr}:{eni_port}  ==>  {ep} -> {local[0]}:{local[1]}" in out


def test_capture_errors(clab, tmp_path):
    def run(*args, env=None):
        return subprocess.run([sys.executable, "-m", "hyperplane", "capture", *args],
                              cwd=REPO, env=env or dict(os.environ), capture_output=True,
                              text=True, timeout=TIMEOUT)
    r = run("--name", clab.name, "--env", "fn-zz-0", "--dir", str(tmp_path))
    assert r.returncode == 3 and "fn-zz-0" in r.stderr and "fn-a-0, fn-b-0" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("--name", clab.name + "x", "--count", "1")
    assert r.returncode == 3 and "no lab named" in r.stderr
    r = run("--name", clab.name, "--filter", "tcp and and", "--dir", str(tmp_path), "--count", "1")
    assert r.returncode == 2 and "--filter" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run("--name", clab.name, "--count", "0")
    assert r.returncode == 2 and "--count" in r.stderr
    r = run("--name", clab.name, "--count", "1",
            env=dict(os.environ, PATH=str(tmp_path / "empty")))
    assert r.returncode == 1 and "tcpdump is not installed" in r.stderr
    # the refused filter's tcpdump did not outlive the command
    left = subprocess.run(["pgrep", "-f", f"tcpdump .*{tmp_path}"], capture_output=True)
    assert left.stdout.strip() == b""
