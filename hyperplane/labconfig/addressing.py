"""Addresses and names a lab derives: the addresses AWS reserves in every subnet, the walk
over a subnet's free ones, and the stable digest behind derived ids (VPC, internet gateway,
ENI) and MACs, so the same lab always gets the same ones.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional

from hyperplane.labconfig.model import RESERVED_AT_START, IPNet


def reserved(net: IPNet, addr) -> bool:
    """AWS reserves the first four addresses and the last one of every subnet (for IPv4: the
    network, the VPC router, DNS, future use, and the broadcast address)."""
    offset = int(addr) - int(net.network_address)
    return offset < RESERVED_AT_START or addr == net.broadcast_address


def free_addresses(net: IPNet, skip) -> Iterable:
    first = int(net.network_address) + RESERVED_AT_START
    last = int(net.broadcast_address) - 1
    cls = type(net.network_address)
    n = first
    while n <= last:
        addr = cls(n)
        if addr not in skip:
            yield addr
        n += 1


def digest(*parts: str) -> bytes:
    """sha256 over NUL-separated parts: stable across runs and machines."""
    return hashlib.sha256("\0".join(parts).encode()).digest()


def eni_id(lab_name: str, subnet_id: str, security_groups: Iterable[str]) -> str:
    """``eni-`` + 17 hex digits, like AWS's, derived from the lab and the ENI's key so the same
    lab always gets the same ids."""
    return "eni-" + digest(lab_name, subnet_id, *sorted(security_groups)).hex()[:17]


def lab_mac(lab_name: str, kind: str, index: int, taken: Optional[set] = None) -> str:
    """A locally administered unicast MAC ``02:68:70:xx:xx:xx`` (0x68 0x70 = "hp"), derived
    from (lab, kind, index). ``taken`` avoids a (rare) repeat inside one lab."""
    salt = 0
    while True:
        parts = [lab_name, kind, str(index)] + ([str(salt)] if salt else [])
        mac = "02:68:70:" + ":".join(f"{b:02x}" for b in digest(*parts)[:3])
        if taken is None or mac not in taken:
            if taken is not None:
                taken.add(mac)
            return mac
        salt += 1
