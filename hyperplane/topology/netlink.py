"""The small netlink and sysctl helpers every part of the lab builder uses: an rtnetlink socket
bound to a namespace, interface lookups, addresses and default routes, link states, sysctls.
Each enters the namespace from the calling thread, for the reasons the theory of operation in
:mod:`hyperplane.topology` gives."""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Dict, Iterator, List, Optional, Tuple

from pyroute2 import IPRoute

from hyperplane import netns
from hyperplane.errors import LabError


#: ifaddrmsg flag: skip Duplicate Address Detection, so the address is usable at once (DAD
#: would hold a new IPv6 address "tentative" for about a second).
IFA_F_NODAD = 0x02


@contextlib.contextmanager
def iproute(ns: str) -> Iterator[IPRoute]:
    """An rtnetlink socket bound to namespace ``ns`` (opened from inside it), always closed."""
    with netns.entered(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def link_index(ipr: IPRoute, ifname: str) -> int:
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


def set_sysctls(ns: str, items: List[Tuple[str, Any]],
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


def lo_up(ns: str) -> None:
    with iproute(ns) as ipr:
        ipr.link("set", index=link_index(ipr, "lo"), state="up")


def add_addresses(ipr: IPRoute, index: int, ipv4: Optional[str], ipv6: Optional[str]) -> None:
    if ipv4:
        addr, plen = ipv4.split("/")
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen))
    if ipv6:
        addr, plen = ipv6.split("/")
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen),
                 family=socket.AF_INET6, flags=IFA_F_NODAD)


def add_default_routes(ipr: IPRoute, index: int, gw4: Optional[str], gw6: Optional[str]) -> None:
    if gw4:
        ipr.route("add", dst="0.0.0.0/0", gateway=gw4, oif=index)
    if gw6:
        ipr.route("add", dst="::/0", gateway=gw6, oif=index, family=socket.AF_INET6)


def link_state(ns: str, names: List[str]) -> Dict[str, Any]:
    """{ifname: {"up": bool, "mac": str}} for the names present in ``ns``."""
    out: Dict[str, Any] = {}
    with iproute(ns) as ipr:
        for link in ipr.get_links():
            name = link.get("ifname")
            if name in names:
                out[name] = {"up": bool(link["flags"] & 1), "mac": link.get("address")}
    return out
