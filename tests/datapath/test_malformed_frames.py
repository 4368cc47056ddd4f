"""Malformed IP inside well-formed Ethernet frames, through the data path: the engine's reason
for each (engine/test_malformed.py has the corpus through both engines), and nothing comes out.

The rig is kit.rig's (a scratch namespace, two veth pairs, a DataPath; the datapath conftest's
``rig``); runts and zero-length frames cannot cross a veth, so those are left to
fuzz/fuzz_frame.c.
"""
from __future__ import annotations

import pytest

from kit.rig import ENI4, ENI_MAC, ENV4, ENV6, ENV_MAC, GW_MAC, HOST4, HOST_MAC, learn_env


@pytest.fixture
def dp_rig(rig):
    """The data-path rig, in its own namespace (one thread, and with the inbound worker)."""
    return rig


def test_data_path_drops_malformed_ip_with_the_engine_reason(dp_rig):
    from scapy.compat import raw
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
    from scapy.layers.l2 import Ether

    learn_env(dp_rig)
    to_gw = Ether(src=ENV_MAC, dst=GW_MAC, type=0x0800)
    bad_sum = bytearray(raw(IP(src=ENV4, dst=HOST4) / UDP(sport=40000, dport=53) / b"x"))
    bad_sum[10] ^= 0xFF
    chain = IPv6(src=ENV6, dst="2001:2:0:1::5")
    for _ in range(9):
        chain = chain / IPv6ExtHdrDestOpt()
    frames = [
        ("envp", raw(to_gw) + b"\x45"),                                      # 1-byte IPv4
        ("envp", raw(to_gw) + bytes(bad_sum)),                               # header checksum
        ("envp", raw(Ether(src=ENV_MAC, dst=GW_MAC) / chain / TCP(sport=40000, dport=443))),
        ("envp", raw(to_gw) + b"\x60" * 40),                                # IPv6 as IPv4
        ("enip", raw(Ether(src=HOST_MAC, dst=ENI_MAC) / IP(src=HOST4, dst=ENI4, proto=6)
                     / (b"\0" * 10))),                                       # TCP header cut
    ]
    for side, frame in frames:
        out = dp_rig.exchange(side, frame)
        assert out["enip"] == [] and out["envp"] == [], side
    d = dp_rig.drops()
    assert (d["engine"], d["not_ip"]) == (4, 1)
    drops = dp_rig.engine.counters()["drops"]
    assert (drops["truncated"], drops["bad_ip_checksum"], drops["ext_header_chain"]) == (2, 1, 1)
    assert sum(drops.values()) == 4
    c = dp_rig.engine.counters()
    assert (c["packets_outbound"], c["packets_inbound"], len(dp_rig.engine)) == (0, 0, 0)
