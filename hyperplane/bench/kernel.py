"""Kernel mode: the node namespace of a lab built without a data path, made a plain Linux NAT
router (IPv6 and forwarding on, the gateway and ENI addresses, default routes via the VPC
router, one nftables SNAT table). :func:`kernel_plan` and :func:`nft_ruleset` say what, as data
without I/O; :func:`kernel_nat` applies it.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any, Dict, List, Tuple

from hyperplane import netns, topology
from hyperplane.bench.settings import NFT_TABLE, BenchError
from hyperplane.errors import LabError
from hyperplane.labconfig import Plan
from hyperplane.labconfig.model import CONNTRACK_TIMEOUT_KEYS


def _prefixlen(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).prefixlen


def kernel_plan(plan: Plan) -> Dict[str, Any]:
    """What :func:`kernel_nat` configures in the node namespace of a lab built without a data
    path, as data (no I/O): ``sysctls`` [(key, value)] in order, ``addresses``
    [(ifname, "addr/plen")], ``routes`` [(destination, gateway, ifname)] and ``nft`` (the
    ruleset text). Needs exactly one ENI (the bench lab has one) and veth environments only:
    the kernel cannot drive a TAP whose fd nobody holds."""
    if len(plan.enis) != 1:
        raise BenchError(f"kernel mode routes everything out of one ENI; lab {plan.name!r} "
                         f"has {len(plan.enis)}")
    eni = plan.enis[0]
    envs = [e for e in plan.envs if e.eni == eni.id]
    taps = [e.name for e in envs if e.attach != "veth" or not e.node_ifname]
    if taps:
        raise BenchError(f"kernel mode needs veth environments; {', '.join(taps)} are TAPs, "
                         "which only a data path holding their fd can drive")
    links = [e.node_ifname for e in envs] + [eni.node_ifname]
    sysctls: List[Tuple[str, Any]] = []
    # Link-local addresses appear the moment IPv6 comes back on: no DAD, so nothing waits.
    for scope in ["all", "default"] + links:
        sysctls.append((f"net.ipv6.conf.{scope}.accept_dad", 0))
    for scope in ["all", "default"] + links:
        sysctls.append((f"net.ipv6.conf.{scope}.disable_ipv6", 0))
    sysctls += [("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1)]
    addresses: List[Tuple[str, str]] = []
    for e in envs:
        addresses.append((e.node_ifname, f"{e.gw4}/{_prefixlen(e.ipv4)}"))
        if e.gw6 and e.ipv6:
            addresses.append((e.node_ifname, f"{e.gw6}/{_prefixlen(e.ipv6)}"))
    addresses.append((eni.node_ifname, f"{eni.ipv4}/{_prefixlen(eni.prefix4)}"))
    if eni.ipv6 and eni.prefix6:
        addresses.append((eni.node_ifname, f"{eni.ipv6}/{_prefixlen(eni.prefix6)}"))
    routes = [("0.0.0.0/0", eni.router4, eni.node_ifname)]
    if eni.ipv6 and eni.router6:
        routes.append(("::/0", eni.router6, eni.node_ifname))
    return {"namespace": plan.node_ns, "sysctls": sysctls, "addresses": addresses,
            "routes": routes, "nft": nft_ruleset(plan),
            "conntrack_sysctls": conntrack_sysctls(plan)}


def conntrack_sysctls(plan: Plan) -> List[Tuple[str, int]]:
    """The kernel's conntrack timeouts set to the lab's ``[conntrack]`` (hyperplane's defaults
    when it has none), so both modes expire connections alike: without this the kernel keeps
    an established TCP connection 5 days (432,000 s) and a replied UDP flow 120 s, hyperplane
    350 s each. These sysctls are per network namespace, so they change only the kernel lab's
    node namespace. ``nf_conntrack_max`` is not among them: it is global (read-only outside
    the initial namespace on current kernels, 6.18 here), and the bench never changes the host's settings;
    the bench's connection counts stay far below both tables' capacity anyway."""
    return [(f"net.netfilter.nf_conntrack_{key}", getattr(plan.conntrack, key))
            for key in CONNTRACK_TIMEOUT_KEYS]


def nft_ruleset(plan: Plan) -> str:
    """The node namespace's NAT in kernel mode: one table, one postrouting chain, one SNAT rule
    per family and environment, to the environment's ENI address, and an input chain that
    drops new TCP/UDP connections arriving on the ENI (an ENI answers no unsolicited SYN, not
    even with a RST; hyperplane and OVS drop them too) (``nft -f -`` loads it)."""
    eni = plan.enis[0]
    rules = []
    for e in plan.envs:
        if e.eni != eni.id:
            continue
        net4 = ipaddress.ip_interface(e.ipv4).network
        rules.append(f'oifname "{eni.node_ifname}" ip saddr {net4} snat ip to {eni.ipv4}')
        if e.ipv6 and eni.ipv6:
            net6 = ipaddress.ip_interface(e.ipv6).network
            rules.append(f'oifname "{eni.node_ifname}" ip6 saddr {net6} '
                         f'snat ip6 to {eni.ipv6}')
    body = "".join(f"\t\t{r}\n" for r in rules)
    return (f"table inet {NFT_TABLE} {{\n"
            "\tchain postrouting {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            f"{body}"
            "\t}\n"
            "\tchain input {\n"
            "\t\ttype filter hook input priority filter; policy accept;\n"
            f'\t\tiifname "{eni.node_ifname}" meta l4proto {{ tcp, udp }} ct state new drop\n'
            "\t}\n"
            "}\n")


def kernel_nat(plan: Plan) -> Dict[str, Any]:
    """Make the node namespace of a lab built by :func:`hyperplane.topology.build` (and no data
    path) a kernel NAT router: :func:`kernel_plan`, applied. Everything lives in the lab's
    namespaces, so the lab's own teardown removes it. Returns the plan it applied."""
    from pyroute2 import IPRoute

    kp = kernel_plan(plan)
    ns = kp["namespace"]
    for key, value in kp["sysctls"]:
        topology.sysctl(ns, key, value)
    with netns.entered(ns):
        ipr = IPRoute()   # bound to the namespace it was opened in
    try:
        for ifname, cidr in kp["addresses"]:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise BenchError(f"kernel mode: no interface {ifname} in {ns}")
            addr, plen = cidr.split("/")
            v6 = ":" in addr
            ipr.addr("add", index=idx[0], address=addr, prefixlen=int(plen),
                     **({"family": socket.AF_INET6, "flags": topology.IFA_F_NODAD} if v6 else {}))
        for dst, gw, ifname in kp["routes"]:
            ipr.route("add", dst=dst, gateway=gw, oif=ipr.link_lookup(ifname=ifname)[0],
                      **({"family": socket.AF_INET6} if ":" in dst else {}))
    finally:
        ipr.close()
    try:
        topology.nft(ns, ["-f", "-"], kp["nft"])
    except LabError as e:
        raise BenchError(f"kernel mode: {e}") from None
    # after the NAT table, which has the kernel load conntrack (and so its sysctls) if needed
    for key, value in kp["conntrack_sysctls"]:
        topology.sysctl(ns, key, value)
    return kp
