"""The lab's ends and the links that reach them: the node namespace (where the data path runs),
the execution environments, the VPC's and the internet's hosts, and the veths that plug them
into a bridge: ENI links when the lab is built and while it runs (add_eni_link,
remove_eni_link)."""
from __future__ import annotations

import os
from typing import Tuple, Union

from hyperplane import netns
from hyperplane.errors import LabError
from hyperplane.labconfig import EnvPlan, HostPlan, Plan
from hyperplane.topology.netlink import (add_addresses, add_default_routes, iproute, link_index,
                                         lo_up, set_sysctls)


# ---- built with the lab: the node, environments, hosts, ENIs ---------------------------------
#: The node namespace must never answer, forward or hold an address: IPv6 is disabled before
#: any link exists there ("default" covers links created later), so no fe80:: ever appears.
NODE_SYSCTLS = [
    ("net.ipv6.conf.all.disable_ipv6", 1),
    ("net.ipv6.conf.default.disable_ipv6", 1),
    ("net.ipv4.ip_forward", 0),
    ("net.ipv6.conf.all.forwarding", 0),
]

#: Environments and hosts: no router advertisements (the lab's routes are static) and no DAD
#: (not even for link-local addresses), so the lab is usable the moment it is built.
END_SYSCTLS = [
    ("net.ipv6.conf.default.accept_ra", 0),
    ("net.ipv6.conf.all.accept_ra", 0),
    ("net.ipv6.conf.default.accept_dad", 0),
    ("net.ipv4.ip_forward", 0),
]


def setup_node(plan: Plan) -> None:
    set_sysctls(plan.node_ns, NODE_SYSCTLS)
    lo_up(plan.node_ns)


def _setup_end(ns: str) -> None:
    set_sysctls(ns, END_SYSCTLS)
    lo_up(ns)


def add_node_veth(plan: Plan, ifname: str, mac: str, peer_ns: str, peer_ifname: str) -> None:
    """A veth created in the node namespace with its peer created directly in ``peer_ns``, so
    neither end ever appears in the caller's namespace. The node end takes ``mac`` and comes
    up with no address (IPv6 is disabled there): the data path answers ARP/NDP on it itself."""
    with iproute(plan.node_ns) as ipr:
        ipr.link("add", ifname=ifname, kind="veth", address=mac,
                 peer={"ifname": peer_ifname, "net_ns_fd": peer_ns})
        ipr.link("set", index=link_index(ipr, ifname), state="up")


def build_eni(plan: Plan, i: int) -> None:
    """The ENI's veth: node namespace <-> its subnet's bridge in the fabric."""
    eni = plan.enis[i]
    add_node_veth(plan, eni.node_ifname, eni.mac, plan.fabric_ns, eni.fabric_ifname)
    join_bridge(plan.fabric_ns, eni.fabric_ifname, plan.subnet(eni.subnet).bridge)


def join_bridge(ns: str, port: str, bridge: str) -> None:
    """Enslave ``port`` to ``bridge`` in namespace ``ns`` (the fabric or the internet). A
    bridge port is pure layer 2: IPv6 is disabled on it so it carries no fe80:: address of its
    own (only the bridge, the router, has addresses)."""
    set_sysctls(ns, [(f"net.ipv6.conf.{port}.disable_ipv6", 1)])
    with iproute(ns) as ipr:
        idx = link_index(ipr, port)
        ipr.link("set", index=idx, master=link_index(ipr, bridge))
        ipr.link("set", index=idx, state="up")


def build_env(plan: Plan, env: EnvPlan) -> None:
    """The environment's eth0 (TAP or veth), addresses and default routes."""
    _setup_end(env.netns)
    if env.attach == "tap":
        # A persistent TAP: it outlives this fd; the data path opens it again by name.
        with netns.entered(env.netns):
            os.close(netns.open_tap(env.ifname, persist=True))
    else:
        with iproute(plan.node_ns) as ipr:
            # The node-side end takes gw_mac: the data path answers ARP/NDP for the gateway
            # with it, so the environment sees one consistent gateway MAC.
            ipr.link("add", ifname=env.node_ifname, kind="veth", address=env.gw_mac,
                     peer={"ifname": env.ifname, "net_ns_fd": env.netns})
            ipr.link("set", index=link_index(ipr, env.node_ifname), state="up")
    _configure_end(env)


def _configure_end(node: Union[EnvPlan, HostPlan]) -> None:
    """The interface of an environment or a host, inside its namespace: no router
    advertisements, up, its addresses, default routes via its gateways."""
    set_sysctls(node.netns, [(f"net.ipv6.conf.{node.ifname}.accept_ra", 0)])
    with iproute(node.netns) as ipr:
        idx = link_index(ipr, node.ifname)
        ipr.link("set", index=idx, state="up")
        add_addresses(ipr, idx, node.ipv4, node.ipv6)
        add_default_routes(ipr, idx, node.gw4, node.gw6)


def _host_attachment(plan: Plan, host: HostPlan) -> Tuple[str, str]:
    """(namespace, bridge) a host plugs into: its subnet's bridge in the fabric, or the
    internet bridge for an internet host."""
    if plan.internet is not None and host in plan.internet_hosts:
        return plan.internet.netns, plan.internet.bridge
    return plan.fabric_ns, plan.subnet(host.subnet).bridge


def build_host(plan: Plan, host: HostPlan) -> None:
    """A VPC host (or an internet host): a veth from its bridge to the host's own namespace."""
    _setup_end(host.netns)
    ns, bridge = _host_attachment(plan, host)
    with iproute(ns) as ipr:
        ipr.link("add", ifname=host.fabric_ifname, kind="veth",
                 peer={"ifname": host.ifname, "net_ns_fd": host.netns})
    join_bridge(ns, host.fabric_ifname, bridge)
    _configure_end(host)


# ---- run-time links ----------------------------------------------------------------------------
IFNAMSIZ = 16


def _check_ifname(ifname: str) -> None:
    if (not isinstance(ifname, str) or not 0 < len(ifname) < IFNAMSIZ or "/" in ifname
            or ifname in (".", "..") or any(c.isspace() for c in ifname)):
        raise LabError(f"invalid interface name {ifname!r}: 1-15 characters, no '/' or spaces")


def add_eni_link(plan: Plan, subnet_id: str, ifname: str, mac: str) -> None:
    """Plug one more ENI into a running lab: a veth ``ifname`` in the node namespace (MAC
    ``mac``, up, no address) whose peer, also ``ifname``, joins ``subnet_id``'s bridge in the
    fabric. The daemon calls it when a function update brings a new (subnet, security groups)
    key. Works from any thread, in any namespace (the daemon's sits in the node namespace).

    Idempotent: if the link already exists with that MAC on that bridge, nothing happens; a
    link of that name that differs is an error. No state is recorded: teardown deletes every
    link of the lab's namespaces, whether build() or this function made it."""
    try:
        bridge = plan.subnet(subnet_id).bridge
    except KeyError:
        raise LabError(f"add_eni_link: subnet {subnet_id!r} is not in lab {plan.name!r} "
                       f"(known: {', '.join(s.id for s in plan.subnets)})") from None
    _check_ifname(ifname)
    mac = str(mac).lower()
    missing = [ns for ns in (plan.node_ns, plan.fabric_ns) if not netns.exists(ns)]
    if missing:
        raise LabError(f"add_eni_link: lab {plan.name!r} is not built (no namespace "
                       f"{', '.join(missing)}); run `hyperplane lab up` first")
    with iproute(plan.node_ns) as ipr:
        have = ipr.link_lookup(ifname=ifname)
        node_mac = ipr.get_links(have[0])[0].get("address") if have else None
    with iproute(plan.fabric_ns) as ipr:
        peer = ipr.link_lookup(ifname=ifname)
        master = ipr.get_links(peer[0])[0].get("IFLA_MASTER") if peer else None
        bridge_idx = link_index(ipr, bridge)
    if have or peer:
        if node_mac == mac and master == bridge_idx:
            return
        raise LabError(f"add_eni_link: {ifname!r} already exists in lab {plan.name!r} "
                       f"(node side MAC {node_mac}, fabric side "
                       f"{'on another bridge' if peer else 'missing'}); pick another name")
    try:
        add_node_veth(plan, ifname, mac, plan.fabric_ns, ifname)
        join_bridge(plan.fabric_ns, ifname, bridge)
    except Exception as e:
        remove_eni_link(plan, ifname)  # the peer goes with it
        raise LabError(f"add_eni_link {ifname} ({subnet_id}): {type(e).__name__}: {e}") from e


def remove_eni_link(plan: Plan, ifname: str) -> bool:
    """Delete the node-namespace link ``ifname`` (its fabric peer goes with it). Returns False
    when there was no such link. For ENIs deleted while the lab runs."""
    _check_ifname(ifname)
    with iproute(plan.node_ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        for idx in found:
            ipr.link("del", index=idx)
    return bool(found)
