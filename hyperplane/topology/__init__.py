"""Build a lab :class:`~hyperplane.labconfig.Plan` in network namespaces, and tear it down.

Theory of operation
-------------------
A lab named NAME is a handful of network namespaces, all named ``hp-NAME-*`` (default lab)::

    env-fn-a-0           node                      vpc                       host-server
    eth0 (TAP) ......... (the data path holds the TAP's fd)
    eth0 ===== veth ==== env1
                         eni0 ======= veth ======= eni0 --+
                                                          br0 198.18.1.1/24 (VPC router)
                                                   host0 -+ ======= veth ======= eth0 .5

- **node**: where the data path runs. The kernel here holds *no* address on any link (IPv6 is
  disabled before any link exists, so not even an fe80:: appears) and forwards nothing: the data
  path alone answers ARP/NDP for the ENI addresses and for the environments' gateways, and
  translates between the two sides.
- **vpc** (the fabric): one bridge per subnet carrying the VPC router's address (AWS's ``.1``);
  the kernel routes between subnets.
- **env-***: one per execution environment, with ``eth0`` addressed from ``[lab] env_cidr`` and
  a default route to a gateway the data path impersonates.
- **host-***: the VPC's machines, plugged into their subnet's bridge.
- **internet** (when the lab has a NAT gateway): a bridge carrying the internet gateway's
  address, the internet hosts' namespaces plugged into it, and each NAT gateway's public side.
  The fabric has no route to it: a function reaches the internet only through a NAT gateway
  (see :func:`_build_nat_gateway`).

What the fabric enforces, like the VPC does (:func:`_build_route_table`, :func:`nacl_ruleset`):
route tables as kernel routing tables chosen per subnet bridge by ``ip rule``, and network ACLs
as an nftables table ``inet hyperplane`` on the forward hook, so they apply exactly to traffic
the VPC router carries across a subnet's edge.

State lives in ``run_dir()/NAME/state.json``; the data path saves its connection tables
beside it in ``conntrack.state`` (see hyperplane.datapath), which ``hyperplane lab restart``
(hyperplane.lab.lifecycle: stop the data path, start a new one) restores and teardown removes with the
directory. Every namespace name is written to ``state.json`` *before* the namespace is
created, so a half-built lab (a crash, a failed step) can always be torn down, and teardown
only ever removes namespaces listed there. The state file is claimed before anything
is built (a second ``lab up`` of the same name is refused, touching nothing), and a failed build
is rolled back (:func:`rollback`) to exactly what that run created. The lab's directory must
belong to root and be writable by nobody else (:func:`check_lab_dir`): root's CLI trusts the
control socket and the state file found there.

All configuration is done over netlink with pyroute2: an ``IPRoute`` socket opened while the
thread is inside a namespace (:func:`hyperplane.netns.entered`) stays bound to that namespace.
Sysctls are written to ``/proc/sys/net`` from a thread inside the namespace: the kernel resolves
``/proc/sys/net`` against the *calling thread's* network namespace.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from pyroute2 import IPRoute, netns as pr_netns

from hyperplane import netns, proc
from hyperplane.errors import LabError
from hyperplane.labconfig import (EnvPlan, HostPlan, NaclPlan, NatGatewayPlan, Plan,
                                  RouteTablePlan, RulePlan, lab_mac)
from hyperplane.paths import STATE_FILE, lab_dir, run_dir, state_path, validate_lab_name

__all__ = ["LabError", "load_state", "save_state", "list_labs", "build", "rollback",
           "check_lab_dir", "teardown", "sysctl", "lab_namespaces", "nacl_ruleset",
           "apply_nacls", "nacl_counters", "add_eni_link", "remove_eni_link", "fabric_status",
           "NFT_TABLE"]

#: ifaddrmsg flag: skip Duplicate Address Detection, so the address is usable at once (DAD
#: would hold a new IPv6 address "tentative" for about a second).
IFA_F_NODAD = 0x02


# ---- on-disk state -----------------------------------------------------------------------------
def load_state(name: str) -> Optional[Dict[str, Any]]:
    """The lab's state, or None when there is no lab of that name."""
    path = state_path(name)
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read {path}: {e}; the lab's namespaces are named "
                       f"hp-{name}-*; if you remove the file, remove those by hand") from None


def save_state(name: str, state: Dict[str, Any], create: bool = False) -> None:
    """Write the state atomically (temp file + rename): a reader never sees half a file.

    ``create=True`` claims the name: the file is linked into place only if none exists
    (FileExistsError otherwise), so two concurrent builds of one lab cannot both proceed."""
    d = lab_dir(name)
    os.makedirs(d, mode=0o755, exist_ok=True)
    path = os.path.join(d, STATE_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if create:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def list_labs() -> List[str]:
    """Names of the labs that have a state file."""
    try:
        names = os.listdir(run_dir())
    except FileNotFoundError:
        return []
    return sorted(n for n in names
                  if os.path.isfile(os.path.join(run_dir(), n, STATE_FILE)))


# ---- small netlink / sysctl helpers ------------------------------------------------------------
@contextlib.contextmanager
def _ipr(ns: str) -> Iterator[IPRoute]:
    """An rtnetlink socket bound to namespace ``ns`` (opened from inside it), always closed."""
    with netns.entered(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname!r} not found")
    return found[0]


def sysctl(ns: str, key: str, value: Any = None) -> str:
    """Write (when ``value`` is given) and read back ``key`` (``net.ipv4.ip_forward``) inside
    namespace ``ns``. /proc/sys/net shows the calling thread's namespace, so the thread enters
    ``ns`` for the access. Interface names in keys must not contain dots."""
    path = "/proc/sys/" + key.replace(".", "/")
    with netns.entered(ns):
        if value is not None:
            with open(path, "w") as f:
                f.write(str(value))
        with open(path) as f:
            return f.read().strip()


def _set_sysctls(ns: str, items: List[Tuple[str, Any]],
                 if_present: bool = False) -> List[str]:
    """Write ``items`` inside ``ns``; with ``if_present``, keys that do not exist there (they
    come with a module that is not loaded) are skipped. Returns the keys written."""
    done = []
    with netns.entered(ns):
        for key, value in items:
            path = "/proc/sys/" + key.replace(".", "/")
            if if_present and not os.path.exists(path):
                continue
            with open(path, "w") as f:
                f.write(str(value))
            done.append(key)
    return done


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


def _lo_up(ns: str) -> None:
    with _ipr(ns) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def _add_addresses(ipr: IPRoute, index: int, ipv4: Optional[str], ipv6: Optional[str]) -> None:
    if ipv4:
        addr, plen = ipv4.split("/")
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen))
    if ipv6:
        addr, plen = ipv6.split("/")
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen),
                 family=socket.AF_INET6, flags=IFA_F_NODAD)


def _add_default_routes(ipr: IPRoute, index: int, gw4: Optional[str], gw6: Optional[str]) -> None:
    if gw4:
        ipr.route("add", dst="0.0.0.0/0", gateway=gw4, oif=index)
    if gw6:
        ipr.route("add", dst="::/0", gateway=gw6, oif=index, family=socket.AF_INET6)


# ---- build steps -------------------------------------------------------------------------------
# Each step is a module-level function, so a test can replace one to make a build fail midway.

def _create_namespace(state: Dict[str, Any], ns: str) -> None:
    """Record the name, then create the namespace (a crash in between leaves a name that
    teardown skips because it does not exist)."""
    if netns.exists(ns):
        raise LabError(f"network namespace {ns!r} already exists; it is not this lab's, so "
                       "it is left alone; remove it or pick another lab name")
    state["namespaces"].append(ns)
    save_state(state["name"], state)
    try:
        pr_netns.create(ns)  # O_EXCL on /run/netns/NAME: fails if it appeared meanwhile
    except FileExistsError:
        # Someone else made it between our check and our create: it is not ours, forget it
        # so the rollback leaves it alone.
        state["namespaces"].remove(ns)
        save_state(state["name"], state)
        raise LabError(f"network namespace {ns!r} appeared while the lab was being built; it "
                       "is not this lab's and is left alone") from None


#: The node namespace must never answer, forward or hold an address: IPv6 is disabled before
#: any link exists there ("default" covers links created later), so no fe80:: ever appears.
NODE_SYSCTLS = [
    ("net.ipv6.conf.all.disable_ipv6", 1),
    ("net.ipv6.conf.default.disable_ipv6", 1),
    ("net.ipv4.ip_forward", 0),
    ("net.ipv6.conf.all.forwarding", 0),
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

#: Environments and hosts: no router advertisements (the lab's routes are static) and no DAD
#: (not even for link-local addresses), so the lab is usable the moment it is built.
END_SYSCTLS = [
    ("net.ipv6.conf.default.accept_ra", 0),
    ("net.ipv6.conf.all.accept_ra", 0),
    ("net.ipv6.conf.default.accept_dad", 0),
    ("net.ipv4.ip_forward", 0),
]


def _setup_node(plan: Plan) -> None:
    _set_sysctls(plan.node_ns, NODE_SYSCTLS)
    _lo_up(plan.node_ns)


def _setup_fabric(plan: Plan) -> None:
    _set_sysctls(plan.fabric_ns, FABRIC_SYSCTLS)
    _set_sysctls(plan.fabric_ns, BRIDGE_NF_SYSCTLS, if_present=True)
    _lo_up(plan.fabric_ns)


def _setup_end(ns: str) -> None:
    _set_sysctls(ns, END_SYSCTLS)
    _lo_up(ns)


def _build_bridge(plan: Plan, i: int) -> None:
    """One bridge per subnet: STP off (a single bridge cannot loop, and STP would hold ports in
    'listening' for seconds), multicast snooping off (NDP's solicited-node multicast must flood
    to every port without MLD reports). It carries the VPC router's addresses."""
    s = plan.subnets[i]
    with _ipr(plan.fabric_ns) as ipr:
        ipr.link("add", ifname=s.bridge, kind="bridge", br_stp_state=0, br_mcast_snooping=0,
                 address=lab_mac(plan.name, "router", i))
        idx = _index(ipr, s.bridge)
        ipr.link("set", index=idx, state="up")
        plen4 = int(s.cidr.split("/")[1])
        _add_addresses(ipr, idx, f"{s.router4}/{plen4}",
                       f"{s.router6}/64" if s.router6 else None)


def _add_node_veth(plan: Plan, ifname: str, mac: str, peer_ns: str, peer_ifname: str) -> None:
    """A veth created in the node namespace with its peer created directly in ``peer_ns``, so
    neither end ever appears in the caller's namespace. The node end takes ``mac`` and comes
    up with no address (IPv6 is disabled there): the data path answers ARP/NDP on it itself."""
    with _ipr(plan.node_ns) as ipr:
        ipr.link("add", ifname=ifname, kind="veth", address=mac,
                 peer={"ifname": peer_ifname, "net_ns_fd": peer_ns})
        ipr.link("set", index=_index(ipr, ifname), state="up")


def _build_eni(plan: Plan, i: int) -> None:
    """The ENI's veth: node namespace <-> its subnet's bridge in the fabric."""
    eni = plan.enis[i]
    _add_node_veth(plan, eni.node_ifname, eni.mac, plan.fabric_ns, eni.fabric_ifname)
    _join_bridge(plan.fabric_ns, eni.fabric_ifname, plan.subnet(eni.subnet).bridge)


def _join_bridge(ns: str, port: str, bridge: str) -> None:
    """Enslave ``port`` to ``bridge`` in namespace ``ns`` (the fabric or the internet). A
    bridge port is pure layer 2: IPv6 is disabled on it so it carries no fe80:: address of its
    own (only the bridge, the router, has addresses)."""
    _set_sysctls(ns, [(f"net.ipv6.conf.{port}.disable_ipv6", 1)])
    with _ipr(ns) as ipr:
        idx = _index(ipr, port)
        ipr.link("set", index=idx, master=_index(ipr, bridge))
        ipr.link("set", index=idx, state="up")


def _build_env(plan: Plan, env: EnvPlan) -> None:
    """The environment's eth0 (TAP or veth), addresses and default routes."""
    _setup_end(env.netns)
    if env.attach == "tap":
        # A persistent TAP: it outlives this fd; the data path opens it again by name.
        with netns.entered(env.netns):
            os.close(netns.open_tap(env.ifname, persist=True))
    else:
        with _ipr(plan.node_ns) as ipr:
            # The node-side end takes gw_mac: the data path answers ARP/NDP for the gateway
            # with it, so the environment sees one consistent gateway MAC.
            ipr.link("add", ifname=env.node_ifname, kind="veth", address=env.gw_mac,
                     peer={"ifname": env.ifname, "net_ns_fd": env.netns})
            ipr.link("set", index=_index(ipr, env.node_ifname), state="up")
    _configure_end(env)


def _configure_end(node: Union[EnvPlan, HostPlan]) -> None:
    """The interface of an environment or a host, inside its namespace: no router
    advertisements, up, its addresses, default routes via its gateways."""
    _set_sysctls(node.netns, [(f"net.ipv6.conf.{node.ifname}.accept_ra", 0)])
    with _ipr(node.netns) as ipr:
        idx = _index(ipr, node.ifname)
        ipr.link("set", index=idx, state="up")
        _add_addresses(ipr, idx, node.ipv4, node.ipv6)
        _add_default_routes(ipr, idx, node.gw4, node.gw6)


def _host_attachment(plan: Plan, host: HostPlan) -> Tuple[str, str]:
    """(namespace, bridge) a host plugs into: its subnet's bridge in the fabric, or the
    internet bridge for an internet host."""
    if plan.internet is not None and host in plan.internet_hosts:
        return plan.internet.netns, plan.internet.bridge
    return plan.fabric_ns, plan.subnet(host.subnet).bridge


def _build_host(plan: Plan, host: HostPlan) -> None:
    """A VPC host (or an internet host): a veth from its bridge to the host's own namespace."""
    _setup_end(host.netns)
    ns, bridge = _host_attachment(plan, host)
    with _ipr(ns) as ipr:
        ipr.link("add", ifname=host.fabric_ifname, kind="veth",
                 peer={"ifname": host.ifname, "net_ns_fd": host.netns})
    _join_bridge(ns, host.fabric_ifname, bridge)
    _configure_end(host)


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


def _setup_internet(plan: Plan) -> None:
    assert plan.internet is not None
    _set_sysctls(plan.internet.netns, INTERNET_SYSCTLS)
    _set_sysctls(plan.internet.netns, BRIDGE_NF_SYSCTLS, if_present=True)
    _lo_up(plan.internet.netns)


def _build_internet_bridge(plan: Plan) -> None:
    """The internet side of the internet gateway: one bridge holding ``router4`` (with the
    prefix of ``internet.cidr``), the internet hosts' default gateway."""
    net = plan.internet
    assert net is not None
    with _ipr(net.netns) as ipr:
        ipr.link("add", ifname=net.bridge, kind="bridge", br_stp_state=0, br_mcast_snooping=0,
                 address=lab_mac(plan.name, "igw", 0))
        idx = _index(ipr, net.bridge)
        ipr.link("set", index=idx, state="up")
        _add_addresses(ipr, idx, f"{net.router4}/{net.cidr.split('/')[1]}", None)


def _build_nat_gateway(plan: Plan, nat: NatGatewayPlan) -> None:
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
    _add_node_veth(plan, nat.inside_ifname, nat.inside_mac, plan.fabric_ns, nat.inside_ifname)
    _join_bridge(plan.fabric_ns, nat.inside_ifname, bridge)
    _add_node_veth(plan, nat.outside_ifname, nat.outside_mac, plan.internet.netns,
                   nat.outside_ifname)
    _join_bridge(plan.internet.netns, nat.outside_ifname, plan.internet.bridge)


# ---- route tables ------------------------------------------------------------------------------
#: ``ip rule`` priorities: subnet number ``i`` gets RULE_PRIORITY + 2*i ("connected routes
#: first") and RULE_PRIORITY + 2*i + 1 ("then its route table"), before the main table (32766).
RULE_PRIORITY = 1000
MAIN_TABLE = 254
#: Kernel table numbers a route table may not use: unspec, default, main, local.
RESERVED_TABLES = (0, 253, 254, 255)


def _build_route_table(plan: Plan, rt: RouteTablePlan) -> None:
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
    with _ipr(plan.fabric_ns) as ipr:
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
                          oif=_index(ipr, plan.subnet(nat.subnet).bridge))
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


# ---- network ACLs ------------------------------------------------------------------------------
#: The nftables table (family ``inet``: IPv4 and IPv6) holding the network ACLs in the fabric.
NFT_TABLE = "hyperplane"
DIRECTIONS = ("ingress", "egress")
NACL_PROTOCOLS = ("all", "tcp", "udp", "icmp")
NACL_ACTIONS = ("allow", "deny")
#: The rule name nacl_counters() reports for an ACL's implicit last rule.
IMPLICIT_RULE = "*"


def _nacl_chain(acl_id: str, direction: str) -> str:
    return f"{acl_id}-{direction}"


def _nacl_counter(acl_id: str, direction: str, rule: Union[int, str]) -> str:
    """The named counter of one ACL rule: ``acl-x.ingress.100``; the implicit last rule is
    ``acl-x.ingress.implicit`` (nft would read a '*' in a name as a wildcard)."""
    return f"{acl_id}.{direction}.{'implicit' if rule == IMPLICIT_RULE else rule}"


def _match(left: Dict[str, Any], right: Any, op: str = "==") -> Dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Dict[str, Any]:
    return {"meta": {"key": key}}


def _rule_matches(rule: RulePlan, direction: str, where: str) -> List[Dict[str, Any]]:
    """nft match expressions for one ACL rule. An ingress rule's CIDR is the packet's source,
    an egress rule's its destination; the port range is the destination port in both
    directions (so an egress rule for 1024-65535 lets replies out to clients' ephemeral ports).
    The CIDR's family decides the rule's family."""
    try:
        net = ipaddress.ip_network(rule.cidr, strict=False)
    except ValueError:
        raise LabError(f"{where}.cidr: {rule.cidr!r} is not a CIDR") from None
    v4 = net.version == 4
    out = []
    if net.prefixlen == 0:
        out.append(_match(_meta("nfproto"), "ipv4" if v4 else "ipv6"))
    else:
        field = "saddr" if direction == "ingress" else "daddr"
        out.append(_match({"payload": {"protocol": "ip" if v4 else "ip6", "field": field}},
                          {"prefix": {"addr": str(net.network_address),
                                      "len": net.prefixlen}}))
    if rule.protocol not in NACL_PROTOCOLS:
        raise LabError(f"{where}.protocol: {rule.protocol!r} is not one of "
                       f"{', '.join(NACL_PROTOCOLS)}")
    if rule.protocol == "icmp":
        out.append(_match(_meta("l4proto"), "icmp" if v4 else "ipv6-icmp"))
    elif rule.protocol in ("tcp", "udp"):
        lo, hi = rule.from_port, rule.to_port
        if not 0 <= lo <= hi <= 65535:
            raise LabError(f"{where}: port range {lo}-{hi} is not within 0-65535 (from_port "
                           "<= to_port)")
        if (lo, hi) == (0, 65535):
            out.append(_match(_meta("l4proto"), rule.protocol))
        else:
            out.append(_match({"payload": {"protocol": rule.protocol, "field": "dport"}},
                              lo if lo == hi else {"range": [lo, hi]}))
    return out


def _subnet_acls(plan: Plan) -> Dict[str, NaclPlan]:
    """subnet id -> its ACL. A subnet not listed uses the default ACL (allow all: no check)."""
    known = {s.id for s in plan.subnets}
    out: Dict[str, NaclPlan] = {}
    for i, acl in enumerate(plan.nacls):
        for j, sid in enumerate(acl.subnets):
            if sid not in known:
                raise LabError(f"nacls[{i}].subnets[{j}]: subnet {sid!r} is not in the lab "
                               f"(known: {', '.join(sorted(known))})")
            if sid in out:
                raise LabError(f"nacls[{i}].subnets[{j}]: subnet {sid!r} is already associated "
                               f"with {out[sid].id}; a subnet has exactly one network ACL")
            out[sid] = acl
    return out


def nacl_ruleset(plan: Plan) -> Dict[str, Any]:
    """The network ACLs as one nftables JSON document (``nft -j -f -`` loads it atomically,
    replacing any earlier version of the table).

    Shape (``nft list ruleset`` in the fabric shows it)::

        table inet hyperplane {
            counter acl-x.egress.100 {}  ... one per rule, and acl-x.egress.implicit
            chain forward {                     # hook forward: only routed packets
                iifname "br0" oifname != "br0" jump acl-x-egress    # leaving subnet-a
                ...                                                  # (every egress first)
                oifname "br1" iifname != "br1" jump acl-y-ingress   # entering subnet-b
            }
            chain acl-x-egress {
                ip daddr 198.18.2.0/24 tcp dport 80 counter name "acl-x.egress.100" return
                ...                                   # ascending rule number
                counter name "acl-x.egress.implicit" drop        # the implicit "*" deny
            }
        }

    AWS semantics: an ACL is checked where traffic crosses its subnet's edge, in both
    directions, per packet and without state (no ``ct`` match anywhere, so a reply is judged
    like any other packet). Rules run in ascending number and the first match decides: allow
    ``return``s to the forward chain (the next check, e.g. the destination's ingress ACL),
    deny drops. Traffic inside one subnet is bridged, never routed, so no ACL sees it (the
    ``oifname !=`` guard also keeps it out when br_netfilter pushes bridged IP through this
    hook). A subnet in no ACL uses the default ACL, which allows everything: no jump at all.
    """
    acls = _subnet_acls(plan)
    table = {"family": "inet", "table": NFT_TABLE}
    cmds: List[Dict[str, Any]] = [
        # add + delete + add: one transaction that replaces the table whether it exists or not
        {"add": {"table": {"family": "inet", "name": NFT_TABLE}}},
        {"delete": {"table": {"family": "inet", "name": NFT_TABLE}}},
        {"add": {"table": {"family": "inet", "name": NFT_TABLE}}},
        {"add": {"chain": {**table, "name": "forward", "type": "filter", "hook": "forward",
                           "prio": 0, "policy": "accept"}}},
    ]
    for i, acl in enumerate(plan.nacls):
        for direction in DIRECTIONS:
            chain = _nacl_chain(acl.id, direction)
            cmds.append({"add": {"chain": {**table, "name": chain}}})
            rules = sorted(getattr(acl, direction), key=lambda r: r.number)
            numbers = [r.number for r in rules]
            if len(set(numbers)) != len(numbers):
                raise LabError(f"nacls[{i}].{direction}: rule numbers repeat ({numbers}); "
                               "every rule needs its own number")
            for j, rule in enumerate(rules):
                where = f"nacls[{i}].{direction}[rule {rule.number}]"
                if rule.action not in NACL_ACTIONS:
                    raise LabError(f"{where}.action: {rule.action!r} is not 'allow' or 'deny'")
                name = _nacl_counter(acl.id, direction, rule.number)
                cmds.append({"add": {"counter": {**table, "name": name}}})
                ports = (f" {rule.from_port}-{rule.to_port}"
                         if rule.protocol in ("tcp", "udp") else "")
                cmds.append({"add": {"rule": {
                    **table, "chain": chain,
                    "comment": f"{acl.id} {direction} {rule.number} {rule.action} "
                               f"{rule.protocol} {rule.cidr}{ports}",
                    "expr": _rule_matches(rule, direction, where) + [
                        {"counter": name},
                        {"return": None} if rule.action == "allow" else {"drop": None}]}}})
            name = _nacl_counter(acl.id, direction, IMPLICIT_RULE)
            cmds.append({"add": {"counter": {**table, "name": name}}})
            cmds.append({"add": {"rule": {
                **table, "chain": chain, "comment": f"{acl.id} {direction} * deny",
                "expr": [{"counter": name}, {"drop": None}]}}})
    for direction, dev, other in (("egress", "iifname", "oifname"),
                                  ("ingress", "oifname", "iifname")):
        for s in plan.subnets:
            acl = acls.get(s.id)
            if acl is None:
                continue
            cmds.append({"add": {"rule": {
                **table, "chain": "forward", "comment": f"{direction} {s.id} -> {acl.id}",
                "expr": [_match(_meta(dev), s.bridge), _match(_meta(other), s.bridge, "!="),
                         {"jump": {"target": _nacl_chain(acl.id, direction)}}]}}})
    return {"nftables": cmds}


def nft(ns: str, args: List[str], stdin: Optional[str] = None) -> str:
    """Run ``nft ARGS`` in namespace ``ns``: the child is forked by a thread that is inside
    ``ns``, and a child starts in its parent thread's namespace (network ACLs; the kernel mode
    of ``hyperplane bench``)."""
    exe = shutil.which("nft")
    if exe is None:
        raise LabError("this needs the nft command from nftables; install it "
                       "(Debian/Ubuntu: apt-get install nftables)")
    with netns.entered(ns):
        proc = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                              timeout=30)
    if proc.returncode != 0:
        raise LabError(f"`nft {' '.join(args)}` in {ns} failed: {proc.stderr.strip()}")
    return proc.stdout


def apply_nacls(plan: Plan) -> None:
    """Load :func:`nacl_ruleset` into the fabric in one transaction. Safe to call again on a
    running lab (new rules replace the old ones atomically; every counter starts at zero)."""
    nft(plan.fabric_ns, ["-j", "-f", "-"], json.dumps(nacl_ruleset(plan)))


def nacl_counters(plan: Plan) -> List[Dict[str, Any]]:
    """Packets and bytes each ACL rule matched, read from the fabric's nftables counters:
    one dict per rule ``{acl, direction, rule, action, packets, bytes}``, ACLs in plan order,
    ingress then egress, rules ascending and the implicit deny (``rule`` "*") last. Bytes are
    IP packet lengths (the forward hook sees no Ethernet header). Empty when there is no ACL."""
    if not plan.nacls:
        return []
    doc = json.loads(nft(plan.fabric_ns, ["-j", "list", "counters", "table", "inet",
                                          NFT_TABLE]))
    found = {c["counter"]["name"]: c["counter"] for c in doc.get("nftables", [])
             if "counter" in c}
    out = []
    for acl in plan.nacls:
        for direction in DIRECTIONS:
            rules = [(r.number, r.action) for r in sorted(getattr(acl, direction),
                                                         key=lambda r: r.number)]
            for number, action in rules + [(IMPLICIT_RULE, "deny")]:
                c = found.get(_nacl_counter(acl.id, direction, number))
                if c is None:
                    raise LabError(f"the fabric has no counter for {acl.id} {direction} rule "
                                   f"{number}: the loaded ACLs differ from the plan; reload "
                                   "them (apply_nacls)")
                out.append({"acl": acl.id, "direction": direction, "rule": number,
                            "action": action, "packets": c["packets"], "bytes": c["bytes"]})
    return out


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
    with _ipr(plan.node_ns) as ipr:
        have = ipr.link_lookup(ifname=ifname)
        node_mac = ipr.get_links(have[0])[0].get("address") if have else None
    with _ipr(plan.fabric_ns) as ipr:
        peer = ipr.link_lookup(ifname=ifname)
        master = ipr.get_links(peer[0])[0].get("IFLA_MASTER") if peer else None
        bridge_idx = _index(ipr, bridge)
    if have or peer:
        if node_mac == mac and master == bridge_idx:
            return
        raise LabError(f"add_eni_link: {ifname!r} already exists in lab {plan.name!r} "
                       f"(node side MAC {node_mac}, fabric side "
                       f"{'on another bridge' if peer else 'missing'}); pick another name")
    try:
        _add_node_veth(plan, ifname, mac, plan.fabric_ns, ifname)
        _join_bridge(plan.fabric_ns, ifname, bridge)
    except Exception as e:
        remove_eni_link(plan, ifname)  # the peer goes with it
        raise LabError(f"add_eni_link {ifname} ({subnet_id}): {type(e).__name__}: {e}") from e


def remove_eni_link(plan: Plan, ifname: str) -> bool:
    """Delete the node-namespace link ``ifname`` (its fabric peer goes with it). Returns False
    when there was no such link. For ENIs deleted while the lab runs."""
    _check_ifname(ifname)
    with _ipr(plan.node_ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        for idx in found:
            ipr.link("del", index=idx)
    return bool(found)


# ---- status ------------------------------------------------------------------------------------
def _link_state(ns: str, names: List[str]) -> Dict[str, Any]:
    """{ifname: {"up": bool, "mac": str}} for the names present in ``ns``."""
    out: Dict[str, Any] = {}
    with _ipr(ns) as ipr:
        for link in ipr.get_links():
            name = link.get("ifname")
            if name in names:
                out[name] = {"up": bool(link["flags"] & 1), "mac": link.get("address")}
    return out


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
        links = _link_state(plan.node_ns, names) if names else {}
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


# ---- build order -------------------------------------------------------------------------------
def lab_namespaces(plan: Plan) -> List[str]:
    """Every namespace of the plan in build order: :meth:`Plan.namespaces` plus the internet's
    and its hosts' (once each, in case ``Plan.namespaces`` lists them already)."""
    names = list(plan.namespaces())
    if plan.internet is not None:
        names.append(plan.internet.netns)
        names += [h.netns for h in plan.internet_hosts]
    return list(dict.fromkeys(names))


def _check_plan(plan: Plan) -> None:
    """What can be refused before anything is built."""
    if plan.internet_hosts and plan.internet is None:
        raise LabError("the plan has internet hosts but no internet (plan.internet is None)")
    for ns in lab_namespaces(plan):
        if not ns.startswith(plan.prefix) or "/" in ns:
            # teardown removes only namespaces under the lab's prefix
            raise LabError(f"namespace {ns!r} does not start with the lab's prefix "
                           f"{plan.prefix!r}; every namespace of a lab must")
    _subnet_acls(plan)
    nacl_ruleset(plan)  # rule errors
    seen: Dict[str, str] = {}
    tables: Dict[int, str] = {}
    for rt in plan.route_tables:
        if rt.routes and rt.table in tables:
            raise LabError(f"route tables {tables[rt.table]} and {rt.id} share kernel table "
                           f"{rt.table}")
        tables[rt.table] = rt.id
        for sid in rt.subnets:
            if sid in seen:
                raise LabError(f"route table {rt.id}: subnet {sid!r} is already associated "
                               f"with {seen[sid]}; a subnet has one route table")
            seen[sid] = rt.id
    if plan.nacls and shutil.which("nft") is None:
        raise LabError("the lab has network ACLs, which need the nft command from nftables; "
                       "install it (Debian/Ubuntu: apt-get install nftables)")


def _steps(plan: Plan, state: Dict[str, Any]) -> Iterator[Tuple[str, Callable[[], None]]]:
    """(description, action) in build order. Namespaces first, node sysctls before any link
    can reach the node namespace, bridges before the ports that join them."""
    for ns in lab_namespaces(plan):
        yield f"create namespace {ns}", lambda ns=ns: _create_namespace(state, ns)
    yield f"configure node namespace {plan.node_ns}", lambda: _setup_node(plan)
    yield f"configure VPC namespace {plan.fabric_ns}", lambda: _setup_fabric(plan)
    inet = plan.internet
    if inet is not None:
        yield f"configure internet namespace {inet.netns}", lambda: _setup_internet(plan)
    for i, s in enumerate(plan.subnets):
        yield f"bridge {s.bridge} for {s.id}", lambda i=i: _build_bridge(plan, i)
    if inet is not None:
        yield (f"internet bridge {inet.bridge} ({inet.gateway_id}, {inet.cidr})",
               lambda: _build_internet_bridge(plan))
    for i, e in enumerate(plan.enis):
        yield (f"ENI {e.id} ({e.node_ifname} -> {plan.fabric_ns}/{e.fabric_ifname})",
               lambda i=i: _build_eni(plan, i))
    for nat in plan.nat_gateways:
        yield (f"NAT gateway {nat.id} ({nat.inside_ifname} -> {nat.subnet}, "
               f"{nat.outside_ifname} -> internet)", lambda nat=nat: _build_nat_gateway(plan, nat))
    for env in plan.envs:
        yield (f"environment {env.name} ({env.attach}, {env.netns})",
               lambda env=env: _build_env(plan, env))
    for host in plan.hosts:
        yield f"host {host.name} ({host.netns})", lambda host=host: _build_host(plan, host)
    for host in plan.internet_hosts:
        yield (f"internet host {host.name} ({host.netns})",
               lambda host=host: _build_host(plan, host))
    for rt in plan.route_tables:
        if rt.routes:
            yield (f"route table {rt.id} (kernel table {rt.table})",
                   lambda rt=rt: _build_route_table(plan, rt))
    if plan.nacls:
        yield (f"network ACLs ({', '.join(a.id for a in plan.nacls)}) as nftables table "
               f"inet {NFT_TABLE}", lambda: apply_nacls(plan))


def build(plan: Plan, config_source: str) -> Dict[str, Any]:
    """Build ``plan``; return the state written to ``state.json``.

    Refuses (LabError, touching nothing) when a lab of that name exists or any of the plan's
    namespaces already exists. On any failure the lab is rolled back and LabError names the step.
    """
    name = validate_lab_name(plan.name)
    if load_state(name) is not None:
        raise LabError(f"lab {name!r} already exists; run `hyperplane lab down --name {name}` "
                       "first")
    try:
        _check_plan(plan)
    except LabError as e:
        raise LabError(f"cannot build lab {name!r}: {e}") from None
    taken = [ns for ns in lab_namespaces(plan) if netns.exists(ns)]
    if taken:
        raise LabError(f"network namespace(s) {', '.join(taken)} already exist but lab {name!r} "
                       "has no state; they are left alone. Remove them (`ip netns delete`) if "
                       "they are left over, or pick another lab name")
    problem = netns.privilege_problem()
    if problem:
        raise LabError(f"cannot build lab {name!r}: {problem}")

    check_lab_dir(name)

    state: Dict[str, Any] = {"name": name, "plan": plan.to_dict(),
                             "config_source": config_source, "namespaces": [], "pid": None,
                             "created": time.time()}
    try:
        save_state(name, state, create=True)
    except FileExistsError:
        raise LabError(f"lab {name!r} already exists; run `hyperplane lab down --name {name}` "
                       "first") from None
    failed: Optional[Tuple[str, Exception]] = None
    try:
        for what, action in _steps(plan, state):
            try:
                action()
            except Exception as e:
                failed = (what, e)
                break
    except BaseException as e:   # KeyboardInterrupt, SystemExit: roll back, then let it go on
        _add_note(e, rollback(name))
        raise
    if failed is not None:
        what, e = failed
        raise LabError(f"building lab {name!r} failed at step '{what}': "
                       f"{type(e).__name__}: {e}; {rollback(name)}") from e
    return state


def rollback(name: str) -> str:
    """Undo a failed ``lab up`` of lab ``name``: :func:`teardown` of what its state file
    records, which is exactly what this run created (the state file was claimed with O_EXCL
    semantics before anything was built, and every namespace is recorded before it is
    created): its data path, by pid; its namespaces, with every link and the nftables table
    inside them; its directory. Never raises: returns a sentence for the error message."""
    try:
        rep = teardown(name)
    except Exception as e:
        return (f"rolling back failed as well ({e}); run `hyperplane lab down --name {name}` "
                "to remove what is left")
    pid = rep.get("stopped_pid")
    return (f"rolled back: removed {len(rep['removed_namespaces'])} namespace(s)"
            f"{f', stopped data path pid {pid}' if pid else ''} and the lab's directory; "
            f"nothing of lab {name!r} is left")


def _add_note(e: BaseException, note: str) -> None:
    if hasattr(e, "add_note"):  # Python 3.11+
        e.add_note(note)


def check_lab_dir(name: str) -> None:
    """Refuse a lab directory that another user could have prepared: it (and the run
    directory above it) must belong to us or root, and nobody else may write to it. The
    control socket and state file live there, and root's CLI trusts both. A directory left
    over with files in it but no state file is refused too, so that a rollback, which removes
    the lab's directory, only ever removes what its own run put there."""
    rd, d = run_dir(), lab_dir(name)
    os.makedirs(rd, mode=0o755, exist_ok=True)
    for path, what in ((rd, "run directory"), (d, "lab directory")):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise LabError(f"{what} {path} is not a directory; remove it")
        if st.st_uid not in (0, os.geteuid()):
            raise LabError(f"{what} {path} belongs to uid {st.st_uid}, not root: another user "
                           "could replace the lab's control socket there; remove it or set "
                           "HYPERPLANE_RUN_DIR to a directory only root can write")
        others_write = st.st_mode & 0o022
        if others_write and not (path == rd and st.st_mode & stat.S_ISVTX):
            raise LabError(f"{what} {path} is writable by other users (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}); `chmod go-w {path}` or set "
                           "HYPERPLANE_RUN_DIR to a directory only root can write")
    if os.path.isdir(d) and os.listdir(d):
        raise LabError(f"{d} exists with files in it ({', '.join(sorted(os.listdir(d))[:5])}) "
                       f"but lab {name!r} has no state file: left over from an earlier lab? "
                       "Remove the directory, or pick another lab name")


# ---- teardown ----------------------------------------------------------------------------------
def _delete_links(ns: str, taps: List[str]) -> None:
    """Delete the namespace's interfaces before removing it. Removing a namespace's name does
    not destroy it while anything (a stray fd or socket) still holds it, and a persistent TAP
    would then live on; deleting the links first makes the teardown complete regardless."""
    with _ipr(ns) as ipr:
        for ifname in taps:
            for idx in ipr.link_lookup(ifname=ifname):
                _quietly(ipr.link, "del", index=idx)
        for link in ipr.get_links():
            if link.get("ifname") != "lo":
                # A veth's peer vanishes with it, so a later delete may find nothing: fine.
                _quietly(ipr.link, "del", index=link["index"])


def _quietly(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:
        pass


def teardown(name: str) -> Dict[str, Any]:
    """Stop the lab's daemon, remove the namespaces recorded in its state file, remove its
    directory. Idempotent and safe on a half-built lab; never touches a namespace the state
    file does not list (nor one outside the lab's ``hp-NAME-`` prefix)."""
    report: Dict[str, Any] = {"removed_namespaces": [], "stopped_pid": None}
    state = load_state(name)
    if state is None:
        return report
    recorded = state.get("namespaces")
    recorded = recorded if isinstance(recorded, list) else []   # an edited state file
    present = [ns for ns in recorded
               if isinstance(ns, str) and "/" not in ns and netns.exists(ns)]
    problem = netns.privilege_problem()
    if present and problem:
        raise LabError(f"cannot tear down lab {name!r}: {problem}")
    report["stopped_pid"] = proc.stop_lab_process(state.get("pid"), name)

    prefix = f"hp-{name}-"
    taps: Dict[str, List[str]] = {}
    plan = state.get("plan")
    envs = plan.get("envs") if isinstance(plan, dict) else None
    for env in envs if isinstance(envs, list) else []:
        if isinstance(env, dict) and env.get("attach") == "tap" and \
                isinstance(env.get("netns"), str):
            taps.setdefault(env["netns"], []).append(str(env.get("ifname", "eth0")))
    errors = []
    for ns in reversed(recorded):
        if not isinstance(ns, str) or not ns.startswith(prefix) or "/" in ns:
            continue  # not a name this lab could have created (an edited state file)
        if not netns.exists(ns):
            continue
        try:
            _delete_links(ns, taps.get(ns, []))
        except Exception as e:  # still remove the namespace below
            errors.append(f"deleting links in {ns}: {e}")
        try:
            pr_netns.remove(ns)
            report["removed_namespaces"].append(ns)
        except OSError as e:
            errors.append(f"removing {ns}: {e}")
    if errors:
        # Keep the state file so the user can retry `hyperplane lab down`.
        state["namespaces"] = [ns for ns in recorded
                               if isinstance(ns, str) and ns.startswith(prefix)
                               and "/" not in ns and netns.exists(ns)]
        save_state(name, state)
        raise LabError(f"teardown of lab {name!r} was incomplete: {'; '.join(errors)}")
    shutil.rmtree(lab_dir(name), ignore_errors=True)
    return report
