"""IP fragments through the data path, in a real lab (engine/test_fragments*.py have the engine's
byte-level checks; docs/robustness.md "Fragments" the policy).

* Big datagrams: from each environment (fn-a-0 on a TAP, fn-b-0 on a veth) a UDP datagram of
  4000 and of 8000 bytes, IPv4 and IPv6, to an echo server in the VPC. The environment's kernel
  fragments it at the 1500-byte MTU; the data path translates every fragment (the server's
  sniffer sees the fragments arrive from the ENI's address), the server's kernel reassembles
  it from the ENI's address, echoes it, fragmented again, and the environment's socket gets it
  back byte for byte.
* Crafted fragments from the VPC host (raw frames injected on its eth0, to the ENI's MAC): a
  datagram to a live NAT port from the wrong source port (first and later fragments), and the
  later fragments alone of a datagram with the exact reply tuple. None of them reaches an
  environment (sniffers on every environment's eth0), and the engine counts exactly one
  `unsolicited` per first fragment and one `fragment` per later one. Then, as the positive
  control, the whole datagram with the exact reply tuple does reach the environment's socket
  (so the sniffers and the injection would have shown a leak).

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN (root); skipped otherwise. One module-scoped default lab (the
root conftest's ``dlab``, from the pytest plugin, which takes it down at the end). Every wait
is bounded.
"""
from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import struct
import time
from typing import List, Optional, Tuple

import pytest

from kit import traffic as nt, wire
from kit.labs import LabView, eni_drop, env_addr, env_sniffers, wait_until

ENVS = ["fn-a-0", "fn-b-0"]          # TAP, veth
FAMILIES = [4, 6]
SIZES = [4000, 8000]
MTU = 1500


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flab(dlab) -> LabView:
    """The module's default lab (the root conftest's)."""
    return dlab


@pytest.fixture(scope="module")
def echo(flab):
    with contextlib.ExitStack() as st:
        yield {f: st.enter_context(nt.UdpEchoServer(flab.server.netns, flab.server_addr(f)))
               for f in FAMILIES}


# ---- frames -----------------------------------------------------------------------------------
class IpInfo:
    """What the checks need from one Ethernet frame carrying IPv4 or IPv6."""

    def __init__(self, frame: bytes):
        et = struct.unpack_from("!H", frame, 12)[0]
        self.ok = et in (0x0800, 0x86DD) and len(frame) >= 14 + (20 if et == 0x0800 else 40)
        self.frag, self.ident = False, None
        if not self.ok:
            return
        ip = frame[14:]
        if et == 0x0800:
            self.src = str(ipaddress.ip_address(ip[12:16]))
            self.dst = str(ipaddress.ip_address(ip[16:20]))
            self.frag = bool(struct.unpack_from("!H", ip, 6)[0] & 0x3FFF)
            self.ident = struct.unpack_from("!H", ip, 4)[0]
        else:
            self.src = str(ipaddress.ip_address(ip[8:24]))
            self.dst = str(ipaddress.ip_address(ip[24:40]))
            if ip[6] == 44 and len(ip) >= 48:      # a Fragment header right after the header
                self.frag = True
                self.ident = struct.unpack_from("!I", ip, 44)[0]


def infos(sniffer: wire.Sniffer) -> List[IpInfo]:
    return [i for i in (IpInfo(r.data) for r in sniffer.records) if i.ok]


def fragments_translated(lab: LabView) -> int:
    return sum(e["fragments_translated"] for e in lab.counters()["enis"])


def expected_fragments(family: int, size: int) -> int:
    """How many fragments the kernel cuts a ``size``-byte UDP payload into at the MTU."""
    per = (MTU - 20) // 8 * 8 if family == 4 else (MTU - 48) // 8 * 8
    return -(-(size + 8) // per)


def crafted(family: int, src: str, dst: str, sport: int, dport: int, data: bytes,
            ident: int) -> List[bytes]:
    """The IP packets of one UDP datagram cut in fragments of about 1000 bytes (checksum over
    the whole datagram)."""
    from scapy.compat import raw
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

    if family == 4:
        pkt = IP(src=src, dst=dst, id=ident) / UDP(sport=sport, dport=dport) / data
        return [raw(f) for f in fragment(pkt, fragsize=1000)]
    pkt = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=ident) / UDP(sport=sport, dport=dport) \
        / data
    return [raw(f) for f in fragment6(pkt, 1000)]


# ---- 1. big datagrams ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
@pytest.mark.parametrize("env_name", ENVS)
def test_big_datagrams_cross_the_nat_in_fragments(flab, echo, env_name, family, size):
    env = flab.env(env_name)
    srv = echo[family]
    eni, mine = flab.eni_addr(family), env_addr(env, family)
    msg = secrets.token_bytes(size)
    before_srv = len(srv.datagrams)
    before_frag = fragments_translated(flab)
    with contextlib.ExitStack() as st:
        at_server = st.enter_context(wire.Sniffer(flab.server.netns, "eth0",
                                                bpf=wire.bpf_ethertype(0x0800, 0x86DD),
                                                outgoing=False))
        at_env = st.enter_context(wire.Sniffer(env.netns, "eth0",
                                             bpf=wire.bpf_ethertype(0x0800, 0x86DD),
                                             outgoing=False))
        reply, local = nt.udp_roundtrip(env.netns, srv.addr, srv.port, msg, timeout=9,
                                        retries=3)
        time.sleep(0.1)          # the sniffers' last frames
    assert reply == msg, "the echo came back different"
    assert local[0] == mine
    seen = [d for d in srv.datagrams[before_srv:] if d.data == msg]
    assert seen, "the server never got the datagram whole"
    assert {d.peer[0] for d in seen} == {eni}, f"the server saw {seen[0].peer}, not the ENI"
    n = expected_fragments(family, size)
    got_srv = [i for i in infos(at_server) if i.frag and i.src == eni]
    got_env = [i for i in infos(at_env) if i.frag and i.src == srv.addr]
    assert len(got_srv) >= n, f"{len(got_srv)} fragments from the ENI at the server, want {n}"
    assert len(got_env) >= n, f"{len(got_env)} fragments from the server at {env_name}, want {n}"
    assert {i.dst for i in got_env} == {mine}
    assert fragments_translated(flab) - before_frag >= 2 * n


# ---- 2. crafted fragments from the VPC --------------------------------------------------------
def live_udp(lab: LabView, env, family: int, srv) -> Tuple[socket.socket, int]:
    """A UDP socket in ``env`` with a replied connection to the echo server; its ENI port."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s = nt.socket_in(env.netns, af, socket.SOCK_DGRAM)
    s.settimeout(5.0)
    s.bind((env_addr(env, family), 0))
    s.sendto(b"open", (srv.addr, srv.port))
    assert s.recvfrom(100)[0] == b"open"
    lport = s.getsockname()[1]
    rows = [r for r in lab.ask("conntrack")["entries"]
            if r["proto"] == "udp" and r["orig"]["sport"] == lport
            and r["orig"]["src"] == env_addr(env, family)]
    assert len(rows) == 1, rows
    return s, rows[0]["reply"]["dport"]


def ids_seen(sniffers: List[wire.Sniffer], src: str, ids) -> List[Tuple[str, int]]:
    return [(sn.netns, i.ident) for sn in sniffers for i in infos(sn)
            if i.src == src and i.frag and i.ident in ids]


@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
def test_crafted_fragments_from_the_vpc_reach_no_environment(flab, echo, family):
    from scapy.layers.l2 import Ether

    env = flab.env("fn-b-0")
    srv = echo[family]
    srv_ns = flab.server.netns
    srv_mac = wire.mac_of(srv_ns, "eth0")
    eni = flab.eni_addr(family)
    base = secrets.randbelow(0x7000) + 0x1000
    no_reply_id, later_only_id, control_id = base, base + 1, base + 2
    sock: Optional[socket.socket] = None
    try:
        sock, port = live_udp(flab, env, family, srv)
        data = secrets.token_bytes(3000)
        # the wrong source port: no connection's reply tuple
        no_reply = crafted(family, srv.addr, eni, srv.port + 1, port, data, no_reply_id)
        # the exact reply tuple, but only the later fragments: the first never came
        later_only = crafted(family, srv.addr, eni, srv.port, port, data, later_only_id)[1:]
        assert len(no_reply) >= 4 and len(later_only) >= 3
        control = crafted(family, srv.addr, eni, srv.port, port, data, control_id)
        frame = Ether(src=srv_mac, dst=flab.eni.mac, type=0x0800 if family == 4 else 0x86DD)
        c0 = flab.counters()
        unsol0, frag0 = eni_drop(c0, "unsolicited"), eni_drop(c0, "fragment")
        translated0 = sum(e["fragments_translated"] for e in c0["enis"])
        want_frag = len(no_reply) - 1 + len(later_only)
        with contextlib.ExitStack() as st:
            sniffers = env_sniffers(st, flab)
            sent = wire.inject(srv_ns, "eth0", [bytes(frame) + p for p in no_reply + later_only])
            assert sent == len(no_reply) + len(later_only)
            wait_until(lambda: eni_drop(flab.counters(), "fragment") >= frag0 + want_frag,
                       5.0, f"{want_frag} fragment drops")
            time.sleep(0.3)       # anything forwarded by mistake would have arrived by now
            leaked = ids_seen(sniffers, srv.addr, {no_reply_id, later_only_id})
            c1 = flab.counters()
            # the positive control: the whole datagram with the exact reply tuple
            assert wire.inject(srv_ns, "eth0", [bytes(frame) + p for p in control]) == len(control)
            got, peer = sock.recvfrom(65535)
            time.sleep(0.1)
            passed = ids_seen(sniffers, srv.addr, {control_id})
        assert leaked == [], f"{len(leaked)} crafted fragments reached an environment: {leaked}"
        assert eni_drop(c1, "unsolicited") - unsol0 == 1
        assert eni_drop(c1, "fragment") - frag0 == want_frag
        assert sum(e["fragments_translated"] for e in c1["enis"]) == translated0
        assert got == data and peer[:2] == (srv.addr, srv.port)
        assert len(passed) == len(control), f"the sniffers saw {len(passed)} of the control's " \
                                            f"{len(control)} fragments"
        assert fragments_translated(flab) - translated0 == len(control)
    finally:
        if sock is not None:
            sock.close()
