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
  (see :func:`~hyperplane.topology.fabric.build_nat_gateway`).

What the fabric enforces, like the VPC does (:func:`~hyperplane.topology.fabric.build_route_table`,
:func:`~hyperplane.topology.nacl.nacl_ruleset`): route tables as kernel routing tables chosen
per subnet bridge by ``ip rule``, and network ACLs as an nftables table ``inet hyperplane`` on
the forward hook, so they apply exactly to traffic the VPC router carries across a subnet's
edge.

State lives in ``run_dir()/NAME/state.json``; the data path saves its connection tables
beside it in ``conntrack.state`` (see hyperplane.datapath), which ``hyperplane lab restart``
(hyperplane.lab.lifecycle: stop the data path, start a new one) restores and teardown removes with the
directory. Every namespace name is written to ``state.json`` *before* the namespace is
created, so a half-built lab (a crash, a failed step) can always be torn down, and teardown
only ever removes namespaces listed there. The state file is claimed before anything
is built (a second ``lab up`` of the same name is refused, touching nothing), and a failed build
is rolled back (:func:`~hyperplane.topology.builder.rollback`) to exactly what that run
created. The lab's directory must belong to root and be writable by nobody else
(:func:`~hyperplane.topology.state.check_lab_dir`): root's CLI trusts the control socket and the
state file found there.

All configuration is done over netlink with pyroute2: an ``IPRoute`` socket opened while the
thread is inside a namespace (:func:`hyperplane.netns.entered`) stays bound to that namespace
(:func:`~hyperplane.topology.netlink.iproute`).
Sysctls are written to ``/proc/sys/net`` from a thread inside the namespace: the kernel resolves
``/proc/sys/net`` against the *calling thread's* network namespace.

Where things are
----------------
- ``builder``: what is refused before anything is built, the build steps in order,
  :func:`build`, :func:`rollback` and :func:`teardown`; :func:`lab_namespaces` lists the
  namespaces. ``builder`` looks each step up by name when it runs, so a test replaces a step
  there (``monkeypatch.setattr(builder, "build_env", ...)``) to make a build fail midway.
- ``nodes``: the node namespace, the environments, the hosts, the veths that plug them into a
  bridge, and ENI links on a running lab (:func:`add_eni_link`, :func:`remove_eni_link`).
- ``fabric``: the VPC router's namespace, the subnet bridges, route tables, the internet and
  NAT gateways, and :func:`fabric_status`.
- ``nacl``: network ACLs as nftables (:func:`nacl_ruleset`, :func:`apply_nacls`,
  :func:`nacl_counters`) and :func:`nft`, the nft command run inside a namespace.
- ``state``: ``state.json`` (:func:`load_state`, :func:`save_state`, :func:`list_labs`) and
  :func:`check_lab_dir`.
- ``netlink``: the helpers under all of them: an rtnetlink socket bound to a namespace,
  interface lookups, addresses, routes, :func:`sysctl` and :func:`set_sysctls`.
"""
from __future__ import annotations

from hyperplane.errors import LabError
from hyperplane.topology.builder import (build, lab_namespaces, remove_function_code, rollback,
                                        teardown)
from hyperplane.topology.fabric import (BRIDGE_NF_SYSCTLS, FABRIC_SYSCTLS, INTERNET_SYSCTLS,
                                        MAIN_TABLE, RESERVED_TABLES, RULE_PRIORITY,
                                        fabric_status)
from hyperplane.topology.nacl import (DIRECTIONS, IMPLICIT_RULE, NACL_ACTIONS, NACL_PROTOCOLS,
                                      NFT_TABLE, apply_nacls, nacl_counters, nacl_ruleset, nft)
from hyperplane.topology.netlink import IFA_F_NODAD, set_sysctls, sysctl
from hyperplane.topology.nodes import (END_SYSCTLS, IFNAMSIZ, NODE_SYSCTLS, add_eni_link,
                                       remove_eni_link)
from hyperplane.topology.state import check_lab_dir, list_labs, load_state, save_state

__all__ = ["LabError", "load_state", "save_state", "list_labs", "build", "rollback",
           "remove_function_code",
           "check_lab_dir", "teardown", "sysctl", "lab_namespaces", "nacl_ruleset",
           "apply_nacls", "nacl_counters", "add_eni_link", "remove_eni_link", "fabric_status",
           "NFT_TABLE", "nft", "set_sysctls", "IFA_F_NODAD", "BRIDGE_NF_SYSCTLS",
           "FABRIC_SYSCTLS", "INTERNET_SYSCTLS", "NODE_SYSCTLS", "END_SYSCTLS", "MAIN_TABLE",
           "RESERVED_TABLES", "RULE_PRIORITY", "DIRECTIONS", "IMPLICIT_RULE", "NACL_ACTIONS",
           "NACL_PROTOCOLS", "IFNAMSIZ"]
