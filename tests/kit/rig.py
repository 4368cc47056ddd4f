"""The C data path alone, frame by frame: no lab and no daemon.

One scratch namespace (the datapath conftest's ``scratch_ns``) holds veth pairs: the data path
serves one end of each (a ``DataPath`` link), the test holds the other with an AF_PACKET socket,
writes frames there, runs ``DataPath.poll`` for a few milliseconds in its own thread and reads
what came out, decoding with scapy (which also checks every checksum). :class:`Rig` is the
two-link rig of datapath/test_datapath_unit.py (its fixture ``rig``: the conftest's):

    env side:  envp (the test's end)  ==veth==  env0 (a DataPath ENV link, gateway 198.19.0.1)
    ENI side:  enip (the test's end)  ==veth==  eni0 (a DataPath ENI link, ENI 198.18.1.4)
"""
from __future__ import annotations

import socket
import time

from hyperplane import netns

ETH_P_ALL = 0x0003
GW_MAC, ENI_MAC = "02:68:70:00:00:01", "02:68:70:00:00:e0"
ENV_MAC, HOST_MAC = "02:00:00:00:00:02", "02:00:00:00:00:05"
ENV4, GW4, ENV6, GW6 = "198.19.0.2", "198.19.0.1", "2001:2:0:f000::2", "2001:2:0:f000::1"
ENI4, ENI6 = "198.18.1.4", "2001:2:0:1::4"
HOST4, HOST6, ROUTER4, ROUTER6 = "198.18.1.5", "2001:2:0:1::5", "198.18.1.1", "2001:2:0:1::1"


def scapy():
    """scapy with every layer (imported on first use: the module imports without it)."""
    import scapy.all as sc

    return sc


class Frames:
    """A DataPath (``self.dp``) and one AF_PACKET socket per link (``self.socks``) at the
    test's end: send frames in, let the loop run, take out what came back. The base of
    :class:`Rig` and of datapath/test_dp_vpc_unit.py's bench."""

    def close(self):
        self.dp.close()
        for s in self.socks.values():
            s.close()

    def send(self, side: str, frame) -> None:
        self.socks[side].send(bytes(frame))

    def run(self, ms: int = 30) -> None:
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end:
            self.dp.poll(5)

    def drain(self):
        """Frames that arrived at the test's end of a link (outgoing ones excluded)."""
        out = {}
        for name, s in self.socks.items():
            got = []
            while True:
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] != socket.PACKET_OUTGOING:
                    got.append(data)
            out[name] = got
        return out


class Rig(Frames):
    def __init__(self, ns: str, inbound_worker: bool = False, workers: int = 1,
                 ports=None):
        from hyperplane.engine._engine import DataPath, Engine
        from hyperplane.engine.config import EngineConfig, Eni
        from hyperplane.engine.sharded import ShardedEngine

        self.ns = ns
        cfg = EngineConfig(enis=[Eni("eni-0123456789abcdef0", ipv4=ENI4, ipv6=ENI6)], seed=7,
                           **({} if ports is None else dict(port_min=ports[0],
                                                            port_max=ports[1])))
        self.dp = DataPath()
        if inbound_worker:   # every test again with the ENI link served by a thread of its own
            self.dp.start_inbound_worker()
        if workers > 1:   # and with workers, each owning a slice of the ports (issue 19)
            self.dp.start_workers(workers)
        self.engine = Engine(cfg) if workers == 1 else ShardedEngine(cfg, workers)
        g = self.dp.add_group(self.engine)
        with netns.entered(ns):
            self.eni = self.dp.add_link("eni", g, name="eni0", mac=ENI_MAC, ifname="eni0")
            self.env = self.dp.add_link("env", g, name="env0", mac=GW_MAC, ifname="env0")
            self.socks = {}
            for name in ("envp", "enip"):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((name, ETH_P_ALL))
                s.setblocking(False)
                self.socks[name] = s
        for a in (ENI4, ENI6):
            self.dp.add_address(self.eni, a)
        self.dp.set_subnet(self.eni, "198.18.1.0/24", ROUTER4)
        self.dp.set_subnet(self.eni, "2001:2:0:1::/64", ROUTER6)
        for a in (GW4, GW6):
            self.dp.add_address(self.env, a)
        self.dp.set_environment(self.env, ENV4)
        self.dp.set_environment(self.env, ENV6)
        self.drain()

    def exchange(self, side: str, frame, ms: int = 30):
        self.send(side, frame)
        self.run(ms)
        return self.drain()

    def drops(self):
        return self.dp.counters()["drops"]


def learn_env(rig: Rig) -> None:
    """The environment asks for its gateway (ARP), so the data path has learned its MAC."""
    sc = scapy()
    rig.exchange("envp", sc.Ether(src=ENV_MAC, dst="ff:ff:ff:ff:ff:ff") / sc.ARP(
        op=1, hwsrc=ENV_MAC, psrc=ENV4, pdst=GW4))
