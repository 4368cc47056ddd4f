"""Link impairments on running labs (hyperplane.topology.impair, ``hyperplane lab impair``,
``Lab.impair``), measured on real traffic: UDP datagrams numbered by the sender and counted
by the receiver, from the default lab's environments (fn-a-0 on a TAP, fn-b-0 on a veth)
through the data path to the server. Loss and duplication are asserted within wide
statistical bands (thousands of datagrams; the bands are many standard deviations wide), the
rate limit by the share delivered of an unpaced burst and the tbf qdisc's own counters, never
by a clock. Which backend runs (netem or tbf+eBPF) is the kernel's; the delay test checks
which kernel it is on. Needs CAP_NET_ADMIN (the folder is skipped otherwise).

Only the benchmark ranges 198.18.0.0/15 and 2001:2::/48 are used.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import threading
import time
from typing import List, Tuple

import pytest

import hyperplane as hp
from hyperplane import paths
from hyperplane.labconfig import default_text
from hyperplane.topology import impair as mech
from kit import traffic as nt
from kit.labs import Servers, cli_run, ours

N = 2000           # datagrams per measurement
PORT = 47001
#: after the sender is done, the receiver stops once nothing came for this long
QUIET = 0.5
#: the sequence number of the datagrams that warm the path up (not counted)
WARMUP = 0xFFFFFFFF


def _tc(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True,
                          text=True, check=True, timeout=15).stdout


def _tc_link(ns: str, ifname: str) -> dict:
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show", "dev", ifname],
                         capture_output=True, text=True, check=True, timeout=15).stdout
    return json.loads(out)[0]


class _Receiver(threading.Thread):
    """Counts numbered datagrams arriving at (ns, addr, port); ``echo``: sends each back."""

    def __init__(self, ns: str, addr: str, port: int, echo: bool = False):
        super().__init__(daemon=True)
        self.sock = nt.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((addr, port))
        self.sock.settimeout(0.1)
        self.echo, self.seqs, self.done = echo, [], threading.Event()
        self.warm = threading.Event()
        self.start()

    def run(self) -> None:
        last = time.monotonic()
        while not (self.done.is_set() and time.monotonic() - last > QUIET):
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            last = time.monotonic()
            seq = struct.unpack("!I", data[:4])[0]
            if seq == WARMUP:
                self.warm.set()
            else:
                self.seqs.append(seq)
            if self.echo or seq == WARMUP:
                self.sock.sendto(data, peer)

    def finish(self) -> List[int]:
        self.done.set()
        self.join(30)
        self.sock.close()
        return self.seqs


def send(lab, env: str, n: int = N, size: int = 200, paced: bool = True,
         echo: bool = False) -> Tuple[List[int], List[int]]:
    """``n`` numbered datagrams from environment ``env`` to the server: (sequence numbers the
    server received, sequence numbers that came back to the environment -- with ``echo``)."""
    server = lab.server
    srv = _Receiver(server.netns, server.ipv4.split("/")[0], PORT, echo=echo)
    back = nt.socket_in(lab.plan.env(env).netns, socket.AF_INET, socket.SOCK_DGRAM)
    back.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    replies: List[int] = []
    try:
        _warm_up(back, srv, lab.s4)
        for i in range(n):
            # blocking: while an impaired link loses the ARP request for the gateway, the
            # datagrams wait in the neighbour queue and fill the send buffer for a second
            back.sendto(struct.pack("!I", i) + bytes(size - 4), (lab.s4, PORT))
            if paced and i % 50 == 49:
                time.sleep(0.005)    # keeps socket buffers from overflowing: no drop but ours
        back.settimeout(QUIET)
        if echo:
            while True:
                try:
                    seq = struct.unpack("!I", back.recv(65535)[:4])[0]
                except socket.timeout:
                    break
                if seq != WARMUP:     # a late echo of the warm-up
                    replies.append(seq)
    finally:
        back.close()
        got = srv.finish()
    return got, replies


def _warm_up(sock: socket.socket, srv: _Receiver, addr: str) -> None:
    """Until one datagram made it there and back: the neighbour entries on the way (the
    environment's gateway, the data path's next hop to the server, and back) are resolved, so
    an ARP request the impairment happens to lose does not hold the measured datagrams in a
    queue for the 1 s retransmit (the receiver would have stopped counting by then)."""
    sock.settimeout(0.2)
    try:
        for _ in range(50):
            sock.sendto(struct.pack("!I", WARMUP), (addr, PORT))
            try:
                while struct.unpack("!I", sock.recv(65535)[:4])[0] != WARMUP:
                    pass
                if srv.warm.is_set():
                    return
            except socket.timeout:
                continue
        raise AssertionError("no datagram made it to the server and back in 50 tries")
    finally:
        sock.settimeout(None)


def out_of_order(seqs: List[int]) -> int:
    return sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)


@pytest.fixture
def clean(dlab):
    """The default lab with no impairment after the test, whatever it did."""
    assert dlab.lab.impairments()["backend"] in mech.BACKENDS, "found at lab up"
    yield dlab
    for link in ("fn-a-0", "fn-b-0", "server", "eni0"):
        dlab.lab.impair(link, clear=True)
    assert dlab.lab.impairments()["impairments"] == []


def test_loss_at_an_environments_egress_is_measured_on_real_traffic(clean):
    doc = clean.lab.impair("fn-b-0", "egress", loss="20%")
    assert [(e["link"], e["direction"], e["settings"]) for e in doc["impairments"]] == \
        [("fn-b-0", "egress", "loss 20%")]
    got, _ = send(clean, "fn-b-0")
    assert 0.70 * N <= len(set(got)) <= 0.90 * N, f"{len(set(got))} of {N} with 20% loss"


def _retrans_segs(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                         capture_output=True, text=True, check=True, timeout=15).stdout
    head, values = [line.split() for line in out.splitlines() if line.startswith("Tcp:")][:2]
    return int(values[head.index("RetransSegs")])


@pytest.mark.parametrize("env", ["fn-a-0", "fn-b-0"], ids=["tap", "veth"])
def test_tcp_recovers_from_a_lossy_egress(clean, env):
    """Loss at the sender's own egress is a path loss for its TCP (the frame is reported
    sent): the transfer completes intact, by retransmissions."""
    clean.lab.impair(env, "egress", loss="3%")
    ns = clean.plan.env(env).netns
    before = _retrans_segs(ns)
    with contextlib.ExitStack() as stack:
        srv = Servers(clean, stack).tcp[4]
        data = nt.payload(2_000_000, seed=11)
        digest, _ = nt.tcp_send(ns, srv.addr, srv.port, data, timeout=60)
    assert digest == nt.sha256(data)
    assert _retrans_segs(ns) > before, "3% loss cost no retransmission"


@pytest.mark.parametrize("env", ["fn-a-0", "fn-b-0"], ids=["tap", "veth"])
def test_loss_at_an_environments_ingress_hits_only_what_reaches_it(clean, env):
    """The data path reads node-side links before tc ingress, so an environment's ingress
    impairment must sit where the traffic passes: the node-side veth's egress, or the TAP's
    ingress. Requests all reach the server; 20% of the echoes are lost."""
    clean.lab.impair(env, "ingress", loss="20%")
    got, replies = send(clean, env, echo=True)
    assert len(set(got)) >= 0.99 * N, f"the server got {len(set(got))} of {N}: egress is clean"
    assert 0.70 * len(got) <= len(set(replies)) <= 0.90 * len(got), \
        f"{len(set(replies))} of {len(got)} echoes came back with 20% ingress loss"


def test_loss_on_a_hosts_link(clean):
    clean.lab.impair("server", "ingress", loss="20%")
    got, _ = send(clean, "fn-b-0")
    assert 0.70 * N <= len(set(got)) <= 0.90 * N, f"{len(set(got))} of {N} with 20% loss"


@pytest.mark.parametrize("env,direction", [("fn-b-0", "egress"), ("fn-a-0", "ingress")],
                         ids=["veth-egress", "tap-ingress"])
def test_duplicates_are_seen_by_the_receiver(clean, env, direction):
    clean.lab.impair(env, direction, duplicate="20%")
    got, replies = send(clean, env, echo=direction == "ingress")
    seen = got if direction == "egress" else replies
    sent = N if direction == "egress" else len(set(got))
    extra = len(seen) - len(set(seen))
    assert len(set(seen)) >= 0.99 * sent, "duplication loses nothing"
    assert 0.10 * sent <= extra <= 0.30 * sent, f"{extra} duplicates of {sent} with 20%"


def test_reordering_is_seen(clean):
    if mech.backend(clean.plan) == "tbf+bpf" and (os.cpu_count() or 1) < 2:
        pytest.skip("reordering without netem needs 2 CPUs (RPS)")
    doc = clean.lab.impair("fn-b-0", "egress", reorder="50%")
    assert doc["impairments"][0]["settings"] == "reorder 50%"
    total = 0
    for _ in range(5):      # stop at the first batch that shows any
        got, _ = send(clean, "fn-b-0", paced=False)
        total += out_of_order(got)
        if total:
            break
    assert total > 0, "no datagram arrived out of order in 5 batches"


def test_rate_limit_takes_effect(clean):
    clean.lab.impair("fn-b-0", "egress", rate="1mbit")
    env = clean.plan.env("fn-b-0")
    qdisc = _tc(env.netns, "-s", "qdisc", "show", "dev", env.ifname, "root")
    assert "rate 1Mbit" in qdisc, qdisc
    got, _ = send(clean, "fn-b-0", size=1000, paced=False)
    # 2 MB at 1 Mbit/s would take 16 s: an unpaced burst mostly does not fit
    assert len(got) < 0.5 * N, f"{len(got)} of {N} 1000-byte datagrams passed 1mbit"
    stats = _tc(env.netns, "-s", "qdisc", "show", "dev", env.ifname, "root")
    dropped = int(stats.split("dropped")[1].split()[0].rstrip(","))
    assert dropped > 0 and ("tbf" in stats or "netem" in stats), stats


def test_clear_restores_clean_delivery(clean):
    env = clean.plan.env("fn-b-0")
    segs = _tc_link(env.netns, env.ifname)["gso_max_segs"]
    doc = clean.lab.impair("fn-b-0", loss="50%", rate="10mbit")
    assert "gso_max_segs 1" in doc["impairments"][0]["mechanism"]
    assert _tc_link(env.netns, env.ifname)["gso_max_segs"] == 1
    doc = clean.lab.impair("fn-b-0", clear=True)
    assert _tc_link(env.netns, env.ifname)["gso_max_segs"] == segs
    assert doc["impairments"] == []
    assert "tbf" not in _tc(env.netns, "qdisc", "show", "dev", env.ifname)
    assert "hyperplane-impair" not in _tc(env.netns, "filter", "show", "dev", env.ifname,
                                          "egress")
    node = _tc(clean.plan.node_ns, "filter", "show", "dev", env.node_ifname, "ingress")
    assert node.strip(), "the data path's own ingress filter stays"
    got, _ = send(clean, "fn-b-0")
    assert len(set(got)) >= 0.99 * N


def test_delay_needs_netem(clean):
    if mech.backend(clean.plan) == "netem":
        doc = clean.lab.impair("server", "ingress", delay="10ms", jitter="1ms")
        assert "netem" in doc["impairments"][0]["mechanism"]
        port = clean.server.fabric_ifname
        qdisc = _tc(clean.plan.fabric_ns, "qdisc", "show", "dev", port)
        assert "netem" in qdisc and "delay 10ms" in qdisc, qdisc
        return
    with pytest.raises(hp.HyperplaneError) as e:
        clean.lab.impair("server", delay="10ms", loss="1%")
    assert e.value.code == 2
    assert "delay" in str(e.value) and "sch_netem" in str(e.value)
    assert clean.lab.impairments()["impairments"] == [], "a refused request changes nothing"


def test_bad_values_name_the_option(clean):
    cases = [(dict(link="fn-b-0", loss="1"), "--loss"),
             (dict(link="fn-b-0", rate="fast"), "--rate"),
             (dict(link="fn-b-9", loss="1%"), "LINK"),
             (dict(link="fn-b-0", jitter="1ms"), "--jitter")]
    for kw, field in cases:
        with pytest.raises(hp.HyperplaneError) as e:
            clean.lab.impair(**kw)
        assert str(e.value).startswith(field) and e.value.code == 2, str(e.value)
    with pytest.raises(hp.HyperplaneError, match="did you mean 'fn-b-0'"):
        clean.lab.impair("fn-b-9", loss="1%")


def test_cli_impair_list_and_status(clean):
    r = cli_run("lab", "impair", "fn-b-0", "--direction", "egress", "--loss", "5%",
                "--name", clean.name)
    assert r.returncode == 0, r.stderr
    assert "fn-b-0 egress: loss 5%" in r.stdout
    r = cli_run("lab", "impair", "--list", "--json", "--name", clean.name)
    doc = json.loads(r.stdout)
    assert doc["backend"] in mech.BACKENDS
    assert [e["settings"] for e in doc["impairments"]] == ["loss 5%"]
    r = cli_run("lab", "status", "--name", clean.name)
    assert "fn-b-0 egress: loss 5%" in r.stdout and doc["backend"] in r.stdout
    r = cli_run("lab", "impair", "fn-b-0", "--loss", "5", "--name", clean.name)
    assert r.returncode == 2 and "--loss" in r.stderr and "Traceback" not in r.stderr
    r = cli_run("lab", "impair", "fn-b-0", "--clear", "--name", clean.name)
    assert r.returncode == 0 and "no impairments" in r.stdout


IMPAIRED = default_text() + """
[[impairments]]
link = "fn-b-0"
direction = "egress"
loss = "20%"
rate = "50mbit"

[[impairments]]
link = "eni0"
duplicate = "1%"
"""


def test_the_lab_files_impairments_apply_at_up_and_go_at_down(own_lab):
    with own_lab(IMPAIRED) as lab:
        doc = lab.lab.impairments()
        assert sorted((e["link"], e["direction"]) for e in doc["impairments"]) == \
            [("eni0", "egress"), ("eni0", "ingress"), ("fn-b-0", "egress")]
        env = lab.plan.env("fn-b-0")
        assert "rate 50Mbit" in _tc(env.netns, "qdisc", "show", "dev", env.ifname)
        assert hp.Lab.attach(lab.name).status()["impairments"]["impairments"] == \
            doc["impairments"]
        got, _ = send(lab, "fn-b-0")
        assert 0.70 * N <= len(set(got)) <= 0.90 * N, f"{len(set(got))} of {N} with 20% loss"
        lab.lab.restart()     # the links stay, and with them their impairments
        assert "hyperplane-impair" in _tc(lab.plan.node_ns, "filter", "show", "dev",
                                          lab.eni.node_ifname, "egress")
        assert lab.lab.impairments() == doc
        name = lab.name
    assert not ours(name), "lab down leaves nothing"
    assert not os.path.exists(paths.impairments_path(name))
