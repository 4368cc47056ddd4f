"""The data path's fixtures.

* ``servers`` (module): TCP and UDP echo servers on the server host of the module's ``dlab``
  (the root conftest's default lab), IPv4 and IPv6 (``kit.labs.Servers``);
* ``scratch_ns``: a namespace of the test's own, IPv6 link-local chatter off, removed
  afterwards whatever happened; skipped, naming the capability, where namespaces cannot be
  made (the rig tests need no lab, but they need that);
* ``rig``: kit.rig's two-link rig in it, once with one thread and once with the ENI link
  served by the inbound worker thread.
"""
from __future__ import annotations

import contextlib
import secrets
from typing import Iterator

import pytest

from hyperplane import netns
from kit.labs import LabView, Servers
from kit.rig import ENI_MAC, GW_MAC, Rig


@pytest.fixture(scope="module")
def servers(dlab: LabView) -> Iterator[Servers]:
    with contextlib.ExitStack() as stack:
        yield Servers(dlab, stack)


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    """A namespace of this test's own, removed afterwards whatever happened."""
    why = netns.privilege_problem()
    if why:
        pytest.skip(f"a scratch namespace {why}")
    from pyroute2 import netns as pnetns

    ns = f"hpu-{secrets.token_hex(3)}"
    pnetns.create(ns)
    try:
        with netns.entered(ns):
            for path in ("/proc/sys/net/ipv6/conf/all/disable_ipv6",
                         "/proc/sys/net/ipv6/conf/default/disable_ipv6"):
                with open(path, "w") as f:
                    f.write("1")  # no link-local chatter from the kernel on these links
        yield ns
    finally:
        pnetns.remove(ns)


@pytest.fixture(params=["one-thread", "inbound-worker", "two-workers"])
def rig(scratch_ns, request) -> Iterator[Rig]:
    from pyroute2 import IPRoute

    ns = scratch_ns
    r = None
    try:
        with netns.entered(ns):
            with IPRoute() as ipr:
                for a, b, mac in (("env0", "envp", GW_MAC), ("eni0", "enip", ENI_MAC)):
                    ipr.link("add", ifname=a, kind="veth", peer=b, address=mac)
                    for n in (a, b):
                        ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
        r = Rig(ns, inbound_worker=request.param == "inbound-worker",
                workers=2 if request.param == "two-workers" else 1)
        yield r
    finally:
        if r is not None:
            r.close()
