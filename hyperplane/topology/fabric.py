"""The VPC fabric: the namespace that is the VPC router, one bridge per subnet, route tables as
kernel routing tables chosen per subnet bridge by ``ip rule``, the stand-in internet with its
internet gateway, the NAT gateways' links, and what ``lab status`` shows of it all
(:func:`fabric_status`)."""
from __future__ import annotations

import ipaddress
import socket
from typing import Any, Dict, List

from hyperplane.errors import LabError
from hyperplane.labconfig import NatGatewayPlan, Plan, RouteTablePlan, lab_mac
from hyperplane.topology.nacl import nacl_counters
from hyperplane.topology.netlink import (add_addresses, iproute, link_index, link_state, lo_up,
                                         set_sysctls)
from hyperplane.topology.nodes import add_node_veth, join_bridge


# ---- the VPC router and the subnet bridges -----------------------------------------------------
#: br_netfilter, when something on the machine has loaded it, runs every frame a bridge switches
#: through the IP hooks of the bridge's namespace: a route lookup and the netfilter chains per
#: packet for traffic that a VPC switches inside a subnet, and nft counters that see bridged
#: frames. perf through the bench lab: 28 % of the CPU a 64-byte UDP stream cost the data path
#: went to br_nf_* in the VPC namespace. The lab turns it off in the namespaces that hold its
#: bridges. The keys are per namespace (Linux 5.3+) and absent without the module.
BRIDGE_NF_SYSCTLS = [
    ("net.bridge.bridge-nf-call-iptables", 0),
    ("net.bridge.bridge-nf-call-ip6tables", 0),
    ("net.bridge.bridge-nf-call-arptables", 0),
]

#: The fabric is the VPC router: it forwards, and never sends ICMP redirects (hosts in one
#: subnet talk through the bridge directly; a redirect would only confuse a learner's capture).
FABRIC_SYSCTLS = [
    ("net.ipv4.ip_forward", 1),
    ("net.ipv6.conf.all.forwarding", 1),
    ("net.ipv6.conf.default.forwarding", 1),
    ("net.ipv4.conf.all.send_redirects", 0),
    ("net.ipv4.conf.default.send_redirects", 0),
    ("net.ipv6.conf.default.accept_dad", 0),
]


def setup_fabric(plan: Plan) -> None:
    set_sysctls(plan.fabric_ns, FABRIC_SYSCTLS)
    set_sysctls(plan.fabric_ns, BRIDGE_NF_SYSCTLS, if_present=True)
    lo_up(plan.fabric_ns)


def build_bridge(plan: Plan, i: int) -> None:
    """One bridge per subnet: STP off (a single bridge cannot loop, and STP would hold ports in
    'listening' for seconds), multicast snooping off (NDP's solicited-node multicast must flood
    to every port without MLD reports). It carries the VPC router's addresses."""
    s = plan.subnets[i]
    with iproute(plan.fabric_ns) as ipr:
        ipr.link("add", ifname=s.bridge, kind="bridge", br_stp_state=0, br_mcast_snooping=0,
                 address=lab_mac(plan.name, "router", i))
        idx = link_index(ipr, s.bridge)
        ipr.link("set", index=idx, state="up")
        plen4 = int(s.cidr.split("/")[1])
        add_addresses(ipr, idx, f"{s.router4}/{plen4}",
                      f"{s.router6}/64" if s.router6 else None)


# ---- the internet and NAT gateways -------------------------------------------------------------
#: The internet namespace only holds the internet gateway's address on its bridge: it forwards
#: nothing (it has no route into the VPC, nor anywhere else).
INTERNET_SYSCTLS = [
    ("net.ipv4.ip_forward", 0),
    ("net.ipv6.conf.all.forwarding", 0),
    ("net.ipv4.conf.all.send_redirects", 0),
    ("net.ipv4.conf.default.send_redirects", 0),
    ("net.ipv6.conf.default.accept_dad", 0),
    ("net.ipv6.conf.default.accept_ra", 0),
]


def setup_internet(plan: Plan) -> None:
    assert plan.internet is not None
    set_sysctls(plan.internet.netns, INTERNET_SYSCTLS)
    set_sysctls(plan.internet.netns, BRIDGE_NF_SYSCTLS, if_present=True)
    lo_up(plan.internet.netns)


def build_internet_bridge(plan: Plan) -> None:
    """The internet side of the internet gateway: one bridge holding ``router4`` (with the
    prefix of ``internet.cidr``), the internet hosts' default gateway."""
    net = plan.internet
    assert net is not None
    with iproute(net.netns) as ipr:
        ipr.link("add", ifname=net.bridge, kind="bridge", br_stp_state=0, br_mcast_snooping=0,
                 address=lab_mac(plan.name, "igw", 0))
        idx = link_index(ipr, net.bridge)
        ipr.link("set", index=idx, state="up")
        add_addresses(ipr, idx, f"{net.router4}/{net.cidr.split('/')[1]}", None)


def build_nat_gateway(plan: Plan, nat: NatGatewayPlan) -> None:
    """A NAT gateway's two links; the data path runs the gateway itself (a second engine).

    - private side ``inside_ifname``: node namespace <-> the NAT gateway subnet's bridge in the
      fabric (same name at both ends). The data path answers ARP for ``private_ipv4`` here;
      private subnets' route tables send ``0.0.0.0/0`` to that address.
    - public side ``outside_ifname``: node namespace <-> the internet bridge. The data path
      answers for ``public_ipv4`` (the Elastic IP) and translates to it.

    AWS puts a NAT gateway in a public subnet whose route table sends 0.0.0.0/0 to the internet
    gateway. Here the gateway's public side sits directly on the internet bridge, which *is*
    that route: the fabric itself never gets a path to the internet."""
    if plan.internet is None:
        raise LabError(f"NAT gateway {nat.id} needs the internet (plan.internet is None); "
                       "a NAT gateway's public side has nowhere to go without it")
    bridge = plan.subnet(nat.subnet).bridge
    add_node_veth(plan, nat.inside_ifname, nat.inside_mac, plan.fabric_ns, nat.inside_ifname)
    join_bridge(plan.fabric_ns, nat.inside_ifname, bridge)
    add_node_veth(plan, nat.outside_ifname, nat.outside_mac, plan.internet.netns,
                  nat.outside_ifname)
    join_bridge(plan.internet.netns, nat.outside_ifname, plan.internet.bridge)


# ---- route tables ------------------------------------------------------------------------------
#: ``ip rule`` priorities: subnet number ``i`` gets RULE_PRIORITY + 2*i ("connected routes
#: first") and RULE_PRIORITY + 2*i + 1 ("then its route table"), before the main table (32766).
RULE_PRIORITY = 1000
MAIN_TABLE = 254
#: Kernel table numbers a route table may not use: unspec, default, main, local.
RESERVED_TABLES = (0, 253, 254, 255)


def build_route_table(plan: Plan, rt: RouteTablePlan) -> None:
    """A VPC route table as a kernel routing table in the fabric, chosen per subnet bridge.

    The fabric's main table holds only the subnets' connected routes (AWS's implicit ``local``
    route, which always wins). For each subnet associated with the table, two rules match
    packets arriving on its bridge::

        1000+2i: iif brI lookup main suppress_prefixlength 0   # any connected route, not /0
        1001+2i: iif brI lookup TABLE                          # else this route table

    Targets:

    - ``nat``: ``DEST via <NAT gateway private_ipv4> dev <its subnet's bridge>``. The fabric
      ARPs for that address on the bridge, and the data path answers on the gateway's link.
    - ``igw``: a ``blackhole`` route. In AWS only instances with a public IP reach the internet
      through the internet gateway; the lab's hosts have none, so their packets are dropped
      silently, as the internet gateway would. The one user of a public subnet's igw route,
      the NAT gateway, has its public side on the internet bridge directly.
    """
    if rt.table in RESERVED_TABLES or not 0 < rt.table < 2 ** 32:
        raise LabError(f"route table {rt.id}: kernel table {rt.table} is reserved or invalid; "
                       "use 1..252 or 256 and above")
    nats = {n.id: n for n in plan.nat_gateways}
    with iproute(plan.fabric_ns) as ipr:
        for j, route in enumerate(rt.routes):
            where = f"route table {rt.id} route {j} ({route.destination} -> {route.target})"
            try:
                dest = ipaddress.ip_network(route.destination, strict=False)
            except ValueError:
                raise LabError(f"{where}: {route.destination!r} is not a CIDR") from None
            family = socket.AF_INET if dest.version == 4 else socket.AF_INET6
            if route.kind == "nat":
                nat = nats.get(route.target)
                if nat is None:
                    raise LabError(f"{where}: no NAT gateway {route.target!r} in the lab "
                                   f"(known: {', '.join(nats) or 'none'})")
                if dest.version != 4:
                    raise LabError(f"{where}: a NAT gateway translates IPv4 only; route "
                                   "IPv6 to an egress-only internet gateway instead")
                ipr.route("add", dst=str(dest), gateway=nat.private_ipv4, table=rt.table,
                          oif=link_index(ipr, plan.subnet(nat.subnet).bridge))
            elif route.kind == "igw":
                ipr.route("add", dst=str(dest), type="blackhole", table=rt.table,
                          family=family)
            else:
                raise LabError(f"{where}: unknown route kind {route.kind!r}; use 'nat' or "
                               "'igw'")
        index = {s.id: i for i, s in enumerate(plan.subnets)}
        for sid in rt.subnets:
            if sid not in index:
                raise LabError(f"route table {rt.id}: subnet {sid!r} is not in the lab")
            bridge = plan.subnets[index[sid]].bridge
            prio = RULE_PRIORITY + 2 * index[sid]
            for family in (socket.AF_INET, socket.AF_INET6):
                ipr.rule("add", family=family, priority=prio, iifname=bridge,
                         table=MAIN_TABLE, suppress_prefixlen=0)
                ipr.rule("add", family=family, priority=prio + 1, iifname=bridge,
                         table=rt.table)


# ---- status ------------------------------------------------------------------------------------
def fabric_status(plan: Plan, live: bool = True) -> Dict[str, Any]:
    """What ``lab status`` can show about the VPC fabric beyond subnets and ENIs: the internet,
    its hosts (in the same shape as the CLI's host nodes), NAT gateways, route tables and
    network ACLs. ``live=True`` adds the kernel's view where the lab runs: each NAT gateway
    link's state (``links``) and every ACL rule's counters (``nacl_counters``); a failure
    there is reported in ``errors`` instead of raised."""
    inet = plan.internet
    out: Dict[str, Any] = {
        "internet": None if inet is None else {
            "gateway_id": inet.gateway_id, "cidr": inet.cidr, "netns": inet.netns,
            "bridge": inet.bridge, "router": [inet.router4]},
        "internet_hosts": [{"name": h.name, "role": "internet", "netns": h.netns,
                            "subnet": h.subnet, "interface": h.ifname,
                            "addresses": [a for a in (h.ipv4, h.ipv6) if a]}
                           for h in plan.internet_hosts],
        "nat_gateways": [{"id": n.id, "subnet": n.subnet, "private_ipv4": n.private_ipv4,
                          "public_ipv4": n.public_ipv4, "idle_timeout": n.idle_timeout,
                          "inside_ifname": n.inside_ifname, "outside_ifname": n.outside_ifname}
                         for n in plan.nat_gateways],
        "route_tables": [{"id": rt.id, "table": rt.table, "subnets": list(rt.subnets),
                          "routes": [{"destination": r.destination, "target": r.target,
                                      "kind": r.kind} for r in rt.routes]}
                         for rt in plan.route_tables],
        "nacls": [{"id": a.id, "subnets": list(a.subnets),
                   "ingress": [dict(vars(r)) for r in sorted(a.ingress, key=lambda r: r.number)],
                   "egress": [dict(vars(r)) for r in sorted(a.egress, key=lambda r: r.number)]}
                  for a in plan.nacls],
    }
    if not live:
        return out
    errors: List[str] = []
    try:
        names = [x for n in plan.nat_gateways for x in (n.inside_ifname, n.outside_ifname)]
        links = link_state(plan.node_ns, names) if names else {}
        for n in out["nat_gateways"]:
            n["links"] = {k: links.get(n[k]) for k in ("inside_ifname", "outside_ifname")}
    except Exception as e:
        errors.append(f"NAT gateway links: {e}")
    try:
        out["nacl_counters"] = nacl_counters(plan)
    except Exception as e:
        errors.append(f"ACL counters: {e}")
    if errors:
        out["errors"] = errors
    return out
