"""How a TAP environment's packets move (csrc/hp_io_tap.c): io_uring by default, one read/writev
per packet with ``HYPERPLANE_TAP_IO=rw`` (or where io_uring cannot be set up). Both ways, in a
lab of the test's own (the default lab: fn-a-0 is the TAP): the mechanism is the one reported
in the counters and in ``stats``; 10 MB of TCP cross the NAT intact, as TSO super-packets; a
burst of datagrams queued on the TAP while the data path is stopped -- many more than the
receive buffers io_uring reads into -- reaches the server complete and in order.

Needs root (the lab fixtures skip, naming the capability, without it). Nothing here is timed.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct

import pytest

from hyperplane import paths
from hyperplane.observe import stats
from kit import traffic as nt
from kit.labs import Servers, env_addr, wait_until

TAP_ENV = "fn-a-0"
BURST = 1000          # HP_TAP_RX (64) receive buffers are posted at a time
MB10 = 10_000_000


def _io_uring_off() -> str:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return "" if f.read().strip() == "0" else "kernel.io_uring_disabled is set"
    except FileNotFoundError:
        return ""


@pytest.fixture(params=["io_uring", "rw"])
def tap_lab(request, own_lab, monkeypatch):
    """The default lab, its data path started with HYPERPLANE_TAP_IO unset or ``rw``."""
    if request.param == "rw":
        monkeypatch.setenv("HYPERPLANE_TAP_IO", "rw")
    else:
        why = _io_uring_off()
        if why:
            pytest.skip(f"io_uring TAP I/O: {why}")
        monkeypatch.delenv("HYPERPLANE_TAP_IO", raising=False)
    with own_lab() as lab:
        yield request.param, lab


def _tap_link(lab) -> dict:
    env = lab.env(TAP_ENV)
    links = [x for x in lab.counters()["links"] if x["name"] == env.name]
    assert len(links) == 1 and links[0]["kind"] == "tap", links
    return links[0]


def test_the_tap_mechanism_is_reported(tap_lab):
    mode, lab = tap_lab
    want = "io_uring" if mode == "io_uring" else "read/write"
    assert _tap_link(lab)["io"] == want
    summary = stats.summarize(lab.counters())
    by_name = {x["name"]: x for x in summary["links"]}
    assert by_name[TAP_ENV]["io"] == want
    assert {x["io"] for x in summary["links"] if x["kind"] == "veth"} == {"packet ring"}
    text = stats.render_plain(stats.sections(summary))
    assert any(TAP_ENV in ln and want in ln for ln in text.splitlines()), text
    with open(paths.log_path(lab.name), encoding="utf-8") as f:
        said = [ln for ln in f if "TAP links use" in ln]
    if mode == "rw":  # said once, with the reason
        assert len(said) == 1 and "HYPERPLANE_TAP_IO=rw" in said[0], said
    else:
        assert said == []


@pytest.fixture
def servers(tap_lab):
    with contextlib.ExitStack() as stack:
        yield Servers(tap_lab[1], stack)


def test_tcp_through_the_tap_is_intact_and_stays_super_packets(tap_lab, servers):
    mode, lab = tap_lab
    env = lab.env(TAP_ENV)
    srv = servers.tcp[4]
    before = _tap_link(lab)
    data = nt.payload(MB10, seed=18)
    digest, local = nt.tcp_send(env.netns, srv.addr, srv.port, data, timeout=30)
    assert digest == nt.sha256(data), "the server hashed different bytes than were sent"
    assert local[0] == env_addr(env, 4)
    peer, sdigest, nbytes, err = srv.connections[-1]
    assert err is None and nbytes == MB10 and sdigest == nt.sha256(data)
    assert peer[0] == lab.eni_addr(4), f"server saw {peer}, not the ENI's address"
    after = _tap_link(lab)
    assert after["io"] == before["io"], "the TAP changed mechanism under load (a fallback)"
    pkts = after["rx_packets"] - before["rx_packets"]
    nbytes_rx = after["rx_bytes"] - before["rx_bytes"]
    assert nbytes_rx >= MB10
    # TSO super-packets came off the TAP whole: far fewer packets than MTU frames would be
    assert pkts < MB10 // 1448 // 3, f"{pkts} packets for {nbytes_rx} bytes: not super-packets"
    assert after["tx_errors"] == before["tx_errors"]


def test_a_burst_larger_than_the_posted_reads_arrives_complete_and_in_order(tap_lab, servers):
    """The data path is stopped (SIGSTOP, its own pid) while BURST datagrams queue on the TAP
    (its queue is ring_frames deep); once it runs again it takes them in batches of at most
    the posted buffers, and the server must see every one, in the order sent."""
    mode, lab = tap_lab
    env = lab.env(TAP_ENV)
    srv = servers.udp[4]
    nt.udp_roundtrip(env.netns, srv.addr, srv.port, b"warm up", timeout=5)  # neighbours known
    tag = os.urandom(4)
    with netns_socket(env.netns) as s:
        start = len(srv.datagrams)
        os.kill(lab.pid, signal.SIGSTOP)
        try:
            for i in range(BURST):
                s.sendto(tag + struct.pack("!I", i) + bytes(60), (srv.addr, srv.port))
        finally:
            os.kill(lab.pid, signal.SIGCONT)

        def ours():
            got = [d.data for d in srv.datagrams[start:] if d.data[:4] == tag]
            return got if len(got) >= BURST else None

        got = wait_until(ours, 15, f"{BURST} datagrams at the server")
    seq = [struct.unpack("!I", d[4:8])[0] for d in got]
    assert seq == list(range(BURST)), "datagrams lost, duplicated or reordered"
    assert _tap_link(lab)["io"] == ("io_uring" if mode == "io_uring" else "read/write")


@contextlib.contextmanager
def netns_socket(ns: str):
    """A UDP socket made inside namespace ``ns`` (it stays there), closed afterwards."""
    from hyperplane import netns
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        yield s
    finally:
        s.close()


def test_a_bad_tap_io_value_is_named_with_the_fix(own_lab, monkeypatch):
    from hyperplane.errors import HyperplaneError
    monkeypatch.setenv("HYPERPLANE_TAP_IO", "fast")
    with pytest.raises(HyperplaneError, match=r"HYPERPLANE_TAP_IO='fast': use rw .* or io_uring"):
        with own_lab():
            pass
