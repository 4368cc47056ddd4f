"""Where an impairment of a lab's link goes: the links a user can name (:func:`links`) and, for
each direction of one, which end transmits it (its tc egress: a root qdisc and a clsact
filter) and which end receives it.

A link is named by the node it attaches, and its directions are seen from that node
("egress": what the node sends; "ingress": what reaches it):

=================  ==========================================  =================================
link               egress leaves by                            ingress leaves by
=================  ==========================================  =================================
environment, veth  the environment's ``eth0``                  the node-side veth ``envN``
                                                               (the data path sends through it)
environment, TAP   the environment's ``eth0`` (the TAP)        -- the data path writes into the
                                                               TAP's fd: no qdisc sees it; the
                                                               TAP's ingress hook is the place
host, int. host    the host's ``eth0``                         its bridge port (``hostN``)
ENI (``eniN``)     the node-side ``eniN`` (the data path)      the ENI's bridge port ``eniN``
=================  ==========================================  =================================

Why the transmitting end: the data path reads its node-side veth links with AF_PACKET, whose
taps see a frame *before* tc ingress, so anything done at the ingress of a link the data path
reads would not reach it (and the data path keeps its own drop filter there,
hyperplane.datapath.steal). A qdisc or filter at the other end's egress acts on the path. Only
a TAP's ingress direction has no transmitting end in the kernel; its receiving end (the
environment's ``eth0``) is read by nobody but the environment's stack, so its ingress hook is
where loss and duplication go.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from hyperplane.labconfig import Plan


@dataclasses.dataclass(frozen=True)
class End:
    """One end of a link: interface ``ifname`` in namespace ``ns``; ``what`` in words."""
    ns: str
    ifname: str
    what: str


@dataclasses.dataclass(frozen=True)
class Way:
    """One direction of a link: the end that transmits it (None: the data path writes into a
    TAP) and the end that receives it (None: the data path reads a TAP's fd). ``stack_sends``:
    the transmitting end is a node's own IP stack (an environment's or a host's ``eth0``), not
    the data path or a bridge forwarding."""
    sender: Optional[End]
    receiver: Optional[End]
    stack_sends: bool = False


@dataclasses.dataclass(frozen=True)
class Link:
    name: str
    kind: str
    egress: Way
    ingress: Way

    def way(self, direction: str) -> Way:
        return self.egress if direction == "egress" else self.ingress


def links(plan: Plan) -> Dict[str, Link]:
    """The links of a lab by the names users give them: environments, hosts, internet hosts,
    then ENIs as ``eniN`` (their node-side interface) and by their ids."""
    out: Dict[str, Link] = {}
    for env in plan.envs:
        mine = End(env.netns, env.ifname, f"{env.name}'s {env.ifname}")
        if env.attach == "tap":
            out[env.name] = Link(env.name, "environment (TAP)", egress=Way(mine, None, True),
                                 ingress=Way(None, mine))
        else:
            node = End(plan.node_ns, env.node_ifname, f"node-side {env.node_ifname}")
            out[env.name] = Link(env.name, "environment (veth)",
                                 egress=Way(mine, node, True), ingress=Way(node, mine))
    inet_hosts = [(h, True) for h in plan.internet_hosts]
    for h, internet in [(h, False) for h in plan.hosts] + inet_hosts:
        mine = End(h.netns, h.ifname, f"{h.name}'s {h.ifname}")
        bridge_ns = plan.internet.netns if internet and plan.internet else plan.fabric_ns
        port = End(bridge_ns, h.fabric_ifname, f"bridge port {h.fabric_ifname}")
        out[h.name] = Link(h.name, "internet host" if internet else "host",
                           egress=Way(mine, port, True), ingress=Way(port, mine))
    for e in plan.enis:
        node = End(plan.node_ns, e.node_ifname, f"node-side {e.node_ifname}")
        port = End(plan.fabric_ns, e.fabric_ifname, f"bridge port {e.fabric_ifname}")
        link = Link(f"eni{e.index}", f"ENI {e.id}", egress=Way(node, port),
                    ingress=Way(port, node))
        out[link.name] = link
        out[e.id] = link
    return out


def link_names(plan: Plan) -> List[str]:
    """What :func:`links` accepts, ENIs by ``eniN`` first then by id."""
    return list(links(plan))
