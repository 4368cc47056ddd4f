"""Keep the node namespace's IP stack off the data path's links.

A packet socket gets a *copy* of what a link receives: the kernel's own stack still sees every
frame. The node namespace holds no address and forwards nothing, so for it each frame is work
thrown away -- and not a little: for an address it has no route to, IPv4's input path builds a
route entry per packet and frees it through RCU (``ip_route_input_slow``, ``dst_destroy``).
On a veth that work runs on the *sender's* CPU. Measured on the bench lab with the sender at
full speed (``hp-traffic udp-send --rate 0``): 64-byte UDP went from ~300 to ~400 kpps per
sender core once the stack was kept out (benchmarks/RESULTS.md).

So the data path drops its veth links' received frames at tc ingress, after the packet taps
(its own socket has its copy by then) and before the IP stack, with a ``clsact`` qdisc and one
filter that drops everything. Two filters do that, tried in this order (:data:`MECHANISMS`):

* ``matchall``: a ``matchall`` classifier with a ``gact drop`` action -- plain rtnetlink, which
  needs only CAP_NET_ADMIN (``tc filter add dev IF ingress matchall action drop``);
* ``bpf``: where the kernel has no matchall classifier or no gact action (it answers ENOENT or
  EOPNOTSUPP: "TC classifier not found", "Failed to load TC action module"; a kernel built with
  only cls_bpf, like the 6.18 one this was written on), a two-instruction eBPF program in
  direct-action mode that returns TC_ACT_SHOT, loaded with bpf(2). That needs CAP_BPF (or
  CAP_SYS_ADMIN), bpf(2)'s number for the machine, and a seccomp profile that lets it through,
  which container runtimes often do not.

:func:`steal` returns which one it used; the data path shows it per link
(``hyperplane stats``: ``kernel_stack_by``) and in its log. Either way this is not the kernel
doing the NAT: the filter looks at nothing and drops everything; every packet the node forwards
is still the data path's. When the data path stops it takes the filter off again
(:func:`release`, whichever kind it is), so the links are as the lab built them. Where both are
refused, :func:`steal` says why and the data path works as before (just with the stack's wasted
work).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from typing import Dict, Iterator

from hyperplane.topology import tcbpf

#: Shown by ``tc filter show dev IF ingress``: who put the filter there.
FILTER_NAME = "hyperplane-steal"
#: tc's ingress hook of a clsact qdisc, and the filter's handle and priority there.
INGRESS_PARENT = 0xFFFFFFF2
FILTER_PRIO = 1
FILTER_HANDLE = 1

_TC_ACT_SHOT = 2
#: r0 = TC_ACT_SHOT; exit.  (BPF_ALU64 | BPF_MOV | BPF_K = 0xb7, BPF_JMP | BPF_EXIT = 0x95)
_PROGRAM = struct.pack("<BBhi", 0xB7, 0, 0, _TC_ACT_SHOT) + struct.pack("<BBhi", 0x95, 0, 0, 0)
#: How each mechanism is shown (the data path's per-link ``kernel_stack_by``).
MECHANISMS: Dict[str, str] = {"matchall": "tc matchall filter, gact drop action",
                              "bpf": "tc bpf filter, eBPF drop program (bpf(2))"}
#: What a kernel without the matchall classifier or the gact action answers (the classifier or
#: action module is not found) -- the errors after which the eBPF program is tried.
_NOT_IN_KERNEL = (errno.ENOENT, errno.EOPNOTSUPP)


class StealError(Exception):
    """The filter could not be put in place; the message says why."""


@contextlib.contextmanager
def _rtnl(ipr=None) -> Iterator:
    """``ipr`` (the caller's, left open), or an IPRoute of the calling thread's namespace for
    the length of the block."""
    if ipr is not None:
        yield ipr
        return
    from pyroute2 import IPRoute

    with IPRoute() as own:
        yield own


def load_sched_cls(code: bytes, what: str) -> int:
    """Load ``code`` (eBPF instructions) as a tc classifier program; returns its file
    descriptor (the caller closes it). StealError when the kernel refuses it
    (hyperplane.topology.tcbpf does the loading)."""
    try:
        return tcbpf.load_sched_cls(code, what)
    except tcbpf.BpfLoadError as e:
        raise StealError(str(e)) from None


def load_drop_program() -> int:
    """Load the drop-everything program; returns its file descriptor."""
    return load_sched_cls(_PROGRAM, "drop program")


def steal(ifname: str, ipr=None) -> str:
    """Drop what ``ifname`` (a link of the calling thread's namespace) receives, after the
    packet taps; returns the mechanism used, a key of :data:`MECHANISMS`: "matchall" where the
    kernel has the matchall classifier and the gact action, else "bpf". Idempotent: an
    existing clsact qdisc is kept and this module's filter replaced."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _rtnl(ipr) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise StealError(f"no link {ifname!r} in this namespace")
        try:
            ipr.tc("add", "clsact", idx[0])
        except NetlinkError as e:
            if e.code != errno.EEXIST:   # a clsact qdisc from an earlier run, or impairments'
                raise StealError(f"{ifname}: adding a clsact qdisc failed: {e}") from None
        _remove_ours(ipr, idx[0], ifname)
        try:
            ipr.tc("add-filter", "matchall", idx[0], handle=FILTER_HANDLE,
                   parent=INGRESS_PARENT, prio=FILTER_PRIO,
                   action={"kind": "gact", "action": "drop"})
            return "matchall"
        except NetlinkError as e:
            if e.code not in _NOT_IN_KERNEL:
                raise StealError(f"{ifname}: attaching the matchall drop filter failed: "
                                 f"{e}") from None
            refused = f"matchall/gact: {os.strerror(e.code)}"
        try:
            fd = load_drop_program()
        except StealError as e:
            raise StealError(f"{e} (the kernel refused the matchall filter with a gact drop "
                             f"action too: {refused})") from None
        try:
            ipr.tc("replace-filter", "bpf", idx[0], handle=FILTER_HANDLE, fd=fd,
                   name=FILTER_NAME, parent=INGRESS_PARENT, prio=FILTER_PRIO,
                   direct_action=True)
        except NetlinkError as e:
            raise StealError(f"{ifname}: attaching the ingress filter failed: {e}") from None
        finally:
            os.close(fd)
        return "bpf"


def _remove_ours(ipr, index: int, ifname: str) -> bool:
    """Delete this module's filter (either kind) from link ``index``; False when it has none."""
    from pyroute2.netlink.exceptions import NetlinkError

    kind = _our_kind(ipr, index)
    if kind is None:
        return False
    try:
        ipr.tc("del-filter", kind, index, handle=FILTER_HANDLE, parent=INGRESS_PARENT,
               prio=FILTER_PRIO)
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.ENODEV):   # gone meanwhile
            return False
        raise StealError(f"{ifname}: removing the ingress filter failed: {e}") from None
    return True


def _our_kind(ipr, index: int):
    """"bpf" or "matchall" when link ``index`` carries this module's ingress filter, else None.
    The eBPF filter carries :data:`FILTER_NAME`; a matchall filter has no name, so it is this
    module's by its place (priority and handle on the ingress hook of a node-side link)."""
    for f in ipr.get_filters(index=index, parent=INGRESS_PARENT):
        kind = f.get_attr("TCA_KIND")
        opts = f.get_attr("TCA_OPTIONS")
        if kind == "bpf" and opts is not None and opts.get_attr("TCA_BPF_NAME") == FILTER_NAME:
            return "bpf"
        if kind == "matchall" and f["info"] >> 16 == FILTER_PRIO and \
                f.get("handle") == FILTER_HANDLE:
            return "matchall"
    return None


def release(ifname: str, ipr=None) -> bool:
    """Take this module's filter (either kind) off ``ifname`` again (the data path stopping:
    the link is then as the lab built it). True when there was one to remove; a link that is
    gone, or a filter someone else removed, is nothing to do."""
    with _rtnl(ipr) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return False
        return _remove_ours(ipr, idx[0], ifname)


def stolen(ifname: str, ipr=None) -> bool:
    """Whether ``ifname`` carries this module's ingress filter (either kind)."""
    with _rtnl(ipr) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        return bool(idx) and _our_kind(ipr, idx[0]) is not None
