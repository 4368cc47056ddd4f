"""The lab tests' shortcuts: a view over ``hyperplane.Lab``, and the helpers lab tests share.

The labs come from the pytest plugin (hyperplane.lab.pytest_plugin: ``hyperplane_lab``,
``hyperplane_lab_factory``, ``hyperplane_module_lab_factory``), which names them uniquely,
takes them down and removes any ``hp-NAME-*`` namespace they left. The root conftest's
``dlab`` (the module's default lab) and ``own_lab`` (labs of the test's own) hand them to the
tests as a :class:`LabView`. Tests of the lifecycle itself (a failed ``lab up`` rolled back, a
data path killed, the CLI's own ``lab up``/``down``) bring labs up by hand: :func:`lab_name`
names them and :func:`destroy` takes down whatever is left of them.

Only the benchmark ranges 198.18.0.0/15 and 2001:2::/48 are used.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from typing import Dict, List, Optional, Set

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

import hyperplane
from hyperplane import control, netns, paths, proc
from hyperplane import topology
from hyperplane.labconfig import bare
from kit import REPO, traffic, wire

#: How long a ``python -m hyperplane`` of :func:`cli_run` may take.
CMD_TIMEOUT = 60.0

__all__ = ["LabView", "Servers", "NATGW", "bare", "wait_until", "env_addr", "eni_drop",
           "created", "env_sniffers", "cli_run", "assert_alive", "udp_through_nat", "lab_name",
           "ours", "destroy", "root_links", "finish_held"]

#: A VPC whose private subnet (fn-a's) routes to the internet through a NAT gateway in the
#: public subnet; one internet host, "web". The NAT gateway's idle timeout is 2 s.
NATGW = """
[vpc]
cidr = "198.18.0.0/16"

[[subnets]]
id = "subnet-private"
cidr = "198.18.1.0/24"

[[subnets]]
id = "subnet-public"
cidr = "198.18.2.0/24"

[internet]
cidr = "198.19.255.0/24"
gateway_id = "igw-0a1b2c3d4e5f60718"

[[route_tables]]
id = "rtb-public"
subnet_ids = ["subnet-public"]
[[route_tables.routes]]
destination = "0.0.0.0/0"
target = "igw-0a1b2c3d4e5f60718"

[[route_tables]]
id = "rtb-private"
subnet_ids = ["subnet-private"]
[[route_tables.routes]]
destination = "0.0.0.0/0"
target = "nat-0a1b2c3d"

[[nat_gateways]]
id = "nat-0a1b2c3d"
subnet_id = "subnet-public"
idle_timeout = 2

[[security_groups]]
id = "sg-0a1b2c3d"

[[functions]]
name = "fn-a"
environments = ["veth"]
[functions.vpc_config]
subnet_ids = ["subnet-private"]
security_group_ids = ["sg-0a1b2c3d"]

[[internet_hosts]]
name = "web"
"""


class LabView:
    """A running lab (a ``hyperplane.Lab``, in ``.lab``) with the tests' shortcuts: its
    ``plan``; ``eni`` (the first ENI) and ``server`` (the first VPC host, None when there is
    none) with the server's addresses ``s4``/``s6``; ``pid``, the data path's when the view was
    made (a test that restarts the data path sets it again). What the view does not define is
    the Lab's (``exec``, ``popen``, ``conntrack``, ``events``, ``restart``, ``down`` ...).
    Leaving a ``with`` block takes the lab down, as for a Lab."""

    def __init__(self, lab: "hyperplane.Lab"):
        self.lab = lab
        self.name = lab.name
        self.plan = lab.plan
        self.pid: Optional[int] = lab.pid
        self.eni = self.plan.enis[0] if self.plan.enis else None
        self.server = self.plan.hosts[0] if self.plan.hosts else None
        self.s4 = bare(self.server.ipv4) if self.server else None
        self.s6 = bare(self.server.ipv6) if self.server else None

    def __getattr__(self, name: str):
        if name == "lab":        # not set yet: no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.lab, name)

    def __enter__(self) -> "LabView":
        return self

    def __exit__(self, *exc) -> None:
        self.lab.down()

    def __repr__(self) -> str:
        return f"<LabView {self.name!r}>"

    def env(self, name: str):
        """The environment ``name`` (``fn-a-0``), else the first of the function ``name``
        (``fn-a``)."""
        for e in self.plan.envs:
            if e.name == name:
                return e
        return next(e for e in self.plan.envs if e.function == name)

    # ---- the control socket ------------------------------------------------------------------
    def reply(self, cmd: str, **args) -> dict:
        """One request to the data path, the reply as it is (``ok`` unchecked)."""
        return control.request(paths.control_path(self.name), cmd, **args)

    def ask(self, cmd: str, **args) -> dict:
        """One request to the data path, which must answer ``ok``."""
        r = self.reply(cmd, **args)
        assert r.get("ok"), f"control request {cmd!r} to lab {self.name}: {r}"
        return r

    def counters(self) -> dict:
        return self.ask("counters")

    def eni_addr(self, family: int) -> str:
        return self.eni.ipv4 if family == 4 else self.eni.ipv6

    def server_addr(self, family: int) -> str:
        return self.s4 if family == 4 else self.s6

    # ---- the VPC control plane ---------------------------------------------------------------
    def enis(self) -> List[dict]:
        return self.ask("enis")["enis"]

    def functions(self) -> Dict[str, dict]:
        """The functions by name."""
        return {f["name"]: f for f in self.ask("functions")["functions"]}

    def advance(self, seconds: float) -> None:
        """Move the lab clock forward."""
        self.ask("clock", advance=seconds)

    def dp_drop(self, reason: str) -> int:
        """A drop counter of the data path (outside the engines)."""
        return self.ask("counters")["drops"][reason]

    def engine_drop(self, reason: str) -> int:
        """A drop counter summed over the engines."""
        return sum(e["drops"][reason] for e in self.ask("counters")["enis"])


class Servers:
    """TCP (SHA-256) and UDP echo servers on the lab's server host, IPv4 and IPv6, until
    ``stack`` closes: ``.tcp[family]``, ``.udp[family]``."""

    def __init__(self, lab: LabView, stack: contextlib.ExitStack):
        ns = lab.server.netns
        self.tcp = {4: stack.enter_context(traffic.TcpServer(ns, lab.s4)),
                    6: stack.enter_context(traffic.TcpServer(ns, lab.s6))}
        self.udp = {4: stack.enter_context(traffic.UdpEchoServer(ns, lab.s4)),
                    6: stack.enter_context(traffic.UdpEchoServer(ns, lab.s6))}


# ---- waiting and counting ----------------------------------------------------------------------
def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    """Poll ``pred()`` until it returns something truthy (returned), else AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def env_addr(env, family: int) -> str:
    """An environment's (any node's) address of ``family``, without its prefix length."""
    return bare(env.ipv4 if family == 4 else env.ipv6)


def eni_drop(c: dict, reason: str) -> int:
    """A drop counter summed over the ENIs of ``counters``."""
    return sum(e["drops"].get(reason, 0) for e in c["enis"])


def created(c: dict) -> int:
    """Connections created, summed over the ENIs of ``counters``."""
    return sum(e["connections_created"] for e in c["enis"])


def env_sniffers(stack: contextlib.ExitStack, lab: LabView) -> List[wire.Sniffer]:
    """A sniffer on every environment's eth0 (bound before returning), taking every IPv4/IPv6
    frame the environment receives, until ``stack`` closes."""
    return [stack.enter_context(wire.Sniffer(e.netns, "eth0",
                                             bpf=wire.bpf_ethertype(0x0800, 0x86DD),
                                             outgoing=False))
            for e in lab.plan.envs]


def cli_run(*args: str, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m hyperplane ARGS`` with this run dir; output captured, bounded."""
    return subprocess.run([sys.executable, "-m", "hyperplane", *args], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True,
                          timeout=timeout)


def assert_alive(lab: LabView) -> None:
    """The data path still answers, and it is the same process."""
    r = control.request(paths.control_path(lab.name), "ping")
    assert r["ok"] is True and r["pid"] == lab.pid, r
    assert proc.pid_alive(lab.pid)


def udp_through_nat(lab: LabView, srv: traffic.UdpEchoServer, tag: bytes) -> None:
    """A UDP round trip from the veth environment through the NAT to the server and back; the
    server must have seen it from the ENI's address."""
    env = lab.env("fn-b-0")
    payload = b"hygiene-" + tag + b"-" + secrets.token_hex(4).encode()
    reply, _ = traffic.udp_roundtrip(env.netns, srv.addr, srv.port, payload, timeout=6,
                                     retries=3)
    assert reply == payload
    seen = [d.peer for d in srv.datagrams if d.data == payload]
    assert seen and seen[0][0] == lab.eni.ipv4, f"server saw {seen}"


# ---- labs brought up by hand ---------------------------------------------------------------------
def lab_name() -> str:
    """A lab name of the test's own (``t`` and six hex digits)."""
    return "t" + secrets.token_hex(3)


def ours(name: str) -> List[str]:
    """The namespaces on this machine that belong to lab ``name``."""
    return [n for n in netns.listall() if n.startswith(f"hp-{name}-")]


def destroy(name: str, pid: Optional[int] = None) -> None:
    """Tear lab ``name`` down; then remove any of its namespaces that is still there (only
    ``hp-NAME-*`` of a name the test made up) and reap its data path if it was our child."""
    try:
        topology.teardown(name)
    finally:
        for ns in ours(name):
            with contextlib.suppress(Exception):
                pr_netns.remove(ns)
        if pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def root_links() -> Set[str]:
    """The names of the links in the caller's namespace."""
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def finish_held(held) -> None:
    """Finish the transfers ``held`` holds open, ``(socket, data)`` each, whose first 4 of the
    8 header bytes were sent to a ``traffic.TcpServer``: send the rest and the data, and check
    the server's SHA-256 of it (the connection must have lived through whatever came between)."""
    for s, data in held:
        s.sendall(traffic.HEADER.pack(len(data))[4:] + data)
        got = b""
        while len(got) < traffic.DIGEST_LEN:
            chunk = s.recv(traffic.DIGEST_LEN - len(got))
            assert chunk, "a live connection was closed"
            got += chunk
        assert got == traffic.sha256(data)
