"""ICMP errors through the data path, in a real lab (RFC 5508; engine/test_icmp.py has the
engine's field-by-field checks).

* "Port unreachable": a UDP socket in fn-a-0 connect()ed to a closed port of the server gets
  ConnectionRefusedError, over IPv4 and IPv6. The server's kernel answers the datagram (which
  arrives from the ENI's address and a NAT port) with an ICMP error to the ENI; the data path
  translates it back to fn-a-0, whose kernel finds the socket by the embedded ports.
* Path-MTU discovery: the server reports "fragmentation needed" / "packet too big" about a
  datagram fn-a-0 sent; fn-a-0's kernel lowers the path MTU its connected socket reports.
* An ICMP error about no known flow sent to the ENI reaches no environment and counts exactly
  one unsolicited drop each.

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN (root); skipped otherwise. One module-scoped default lab (the
root conftest's ``dlab``, from the pytest plugin, which takes it down at the end).
"""
from __future__ import annotations

import contextlib
import secrets
import socket
import time

import pytest

from kit import traffic as nt, wire
from kit.labs import LabView, bare, wait_until

IP_MTU, IPV6_MTU = 14, 24          # <linux/in.h>, <linux/in6.h>: a connected socket's path MTU
CLOSED_PORT = 9                     # discard: nothing listens on the server
NO_FLOW_PORT = 7                    # below every NAT pool: no mapping can have it


class IcmpLab(LabView):
    """The module's lab, with the shortcuts of these tests."""

    def addr(self, node, family: int) -> str:
        return bare(node.ipv4 if family == 4 else node.ipv6)

    def eni_counter(self, key: str) -> int:
        c = self.counters()
        return sum((e["drops"][key] if key in e["drops"] else e[key]) for e in c["enis"])


@pytest.fixture(scope="module")
def lab(dlab) -> IcmpLab:
    return IcmpLab(dlab.lab)


def udp_socket(lab: IcmpLab, family: int, port: int) -> socket.socket:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s = nt.socket_in(lab.env("fn-a-0").netns, af, socket.SOCK_DGRAM)
    s.settimeout(5.0)
    s.connect((lab.addr(lab.server, family), port))
    return s


@pytest.mark.parametrize("family", [4, 6])
def test_port_unreachable_reaches_the_socket(lab, family):
    before = lab.eni_counter("icmp_errors_translated")
    with udp_socket(lab, family, CLOSED_PORT) as s:
        s.send(b"anyone there?")
        with pytest.raises(ConnectionRefusedError):
            s.recv(100)
    assert lab.eni_counter("icmp_errors_translated") == before + 1


@pytest.mark.parametrize("family", [4, 6])
def test_path_mtu_discovery_through_the_nat(lab, family):
    """The server (standing in for a router with a small next hop) reports the datagram as too
    big; fn-a-0's kernel takes the MTU from the translated error."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
    from scapy.layers.l2 import Ether

    mtu = 1280 if family == 6 else 1300
    srv_ns = lab.server.netns
    srv_mac = wire.mac_of(srv_ns, "eth0")
    port = 20000 + secrets.randbelow(10000)
    with wire.Sniffer(srv_ns, "eth0", bpf=wire.bpf_l4("udp", port), outgoing=False) as sn, \
            udp_socket(lab, family, port) as s:
        opt = (socket.IPPROTO_IP, IP_MTU) if family == 4 else (socket.IPPROTO_IPV6, IPV6_MTU)
        assert s.getsockopt(*opt) > mtu
        s.send(b"x" * 1400)
        frame = sn.wait_for(lambda e: e.payload.dst == lab.addr(lab.server, family))[0]
        sent = bytes(frame.payload)               # the datagram as the NAT sent it
        eni = lab.addr(lab.eni, family)
        assert frame.payload.src == eni
        before = lab.eni_counter("icmp_errors_translated")
        l3 = IP(src=lab.addr(lab.server, family), dst=eni) / ICMP(type=3, code=4,
                                                                  nexthopmtu=mtu) \
            if family == 4 else IPv6(src=lab.addr(lab.server, family), dst=eni) / \
            ICMPv6PacketTooBig(mtu=mtu)
        wire.inject(srv_ns, "eth0", [Ether(src=srv_mac, dst=lab.eni.mac) / l3 / sent[:548]])
        wait_until(lambda: s.getsockopt(*opt) == mtu, 5.0, f"the socket's path MTU {mtu}")
    assert lab.eni_counter("icmp_errors_translated") == before + 1


def test_unrelated_error_reaches_no_environment(lab):
    """An error about a flow nobody has (ENI:7 -> server): dropped as unsolicited, one each."""
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
    from scapy.layers.l2 import Ether

    srv_ns = lab.server.netns
    srv_mac = wire.mac_of(srv_ns, "eth0")
    frames = []
    for family in (4, 6):
        srv, eni = lab.addr(lab.server, family), lab.addr(lab.eni, family)
        if family == 4:
            about = IP(src=eni, dst=srv) / UDP(sport=NO_FLOW_PORT, dport=CLOSED_PORT)
            err = IP(src=srv, dst=eni) / ICMP(type=3, code=3) / about
        else:
            about = IPv6(src=eni, dst=srv) / UDP(sport=NO_FLOW_PORT, dport=CLOSED_PORT)
            err = IPv6(src=srv, dst=eni) / ICMPv6DestUnreach(code=4) / about
        frames.append(Ether(src=srv_mac, dst=lab.eni.mac) / err)
    before = lab.eni_counter("unsolicited")
    translated = lab.eni_counter("icmp_errors_translated")
    with contextlib.ExitStack() as st:
        sniffers = [st.enter_context(wire.Sniffer(env.netns, "eth0", bpf=wire.bpf_l4(p),
                                                outgoing=False))
                    for env in lab.plan.envs for p in ("icmp", "icmp6")]
        assert wire.inject(srv_ns, "eth0", frames) == 2
        wait_until(lambda: lab.eni_counter("unsolicited") >= before + 2, 5.0,
                   "two unsolicited drops")
        time.sleep(0.3)       # anything forwarded by mistake would have arrived by now
    errors = [r for sn in sniffers for r in sn.records
              if r.data[12:14] == b"\x08\x00" and r.data[23] == 1
              or r.data[12:14] == b"\x86\xdd" and r.data[20] == 58 and r.data[54] < 128]
    assert errors == [], f"{len(errors)} ICMP errors reached an environment"
    assert lab.eni_counter("unsolicited") == before + 2
    assert lab.eni_counter("icmp_errors_translated") == translated
