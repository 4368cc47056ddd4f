"""Correctness before measuring: every mode must be a NAT like a Lambda ENI before its speed
means anything. :func:`check_nat` asks, per mode (column):

- does the server see the ENI's address as the peer of a TCP connection from the environment
  (IPv4, and IPv6 when the lab has it)? A mode that forwarded without translating would be
  measured doing less work;
- is an unsolicited SYN from the server to the ENI's address dropped? Nothing may answer:
  neither a SYN-ACK nor a RST (a connect from the server's namespace must time out, within
  :data:`UNSOLICITED_WAIT`).

The sockets are made in the namespaces (a socket stays in the namespace it was made in), so
the checks run in this process with no tool to start.
"""
from __future__ import annotations

import contextlib
import socket
from typing import Any, List

from hyperplane import netns
from hyperplane.bench.settings import BenchError
from hyperplane.labconfig import bare

#: How long an unsolicited connect waits for an answer that must not come.
UNSOLICITED_WAIT = 1.0
#: How long the connection from the environment may take.
CONNECT_WAIT = 5.0


def _socket(ns: str, family: int) -> socket.socket:
    with netns.entered(ns):
        return socket.socket(family, socket.SOCK_STREAM)


def server_sees(mode: Any, family: int, port: int) -> str:
    """The address the server sees as the peer of a TCP connection from the mode's
    environment to it (``family`` AF_INET or AF_INET6)."""
    addr = mode.s4 if family == socket.AF_INET else mode.s6
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(_socket(mode.server.netns, family))
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(1)
        srv.settimeout(CONNECT_WAIT)
        cli = stack.enter_context(_socket(mode.env.netns, family))
        cli.settimeout(CONNECT_WAIT)
        try:
            cli.connect((addr, port))
            conn, peer = srv.accept()
        except OSError as e:
            raise BenchError(f"a TCP connection from the environment to {addr} port {port} "
                             f"failed: {e}") from None
        conn.close()
        return peer[0]


def unsolicited_answered(mode: Any, family: int, port: int) -> str:
    """"" when a SYN from the server to the ENI's address (``port``) gets no answer, else
    what answered."""
    eni = mode.plan.enis[0]
    addr = eni.ipv4 if family == socket.AF_INET else eni.ipv6
    with _socket(mode.server.netns, family) as s:
        s.settimeout(UNSOLICITED_WAIT)
        try:
            s.connect((addr, port))
        except socket.timeout:
            return ""
        except ConnectionRefusedError:
            return f"a RST answered a SYN to {addr} port {port}"
        except OSError as e:
            if e.errno in (113, 101):   # EHOSTUNREACH, ENETUNREACH: an ICMP error came back
                return f"an ICMP error answered a SYN to {addr} port {port} ({e})"
            raise BenchError(f"the unsolicited SYN to {addr} port {port} failed: {e}") from None
        return f"a connection to {addr} port {port} was accepted"


def check_nat(mode: Any, port: int, syn_port: int) -> List[str]:
    """Both checks for one mode (IPv4, and IPv6 when the environment and the ENI have it):
    a connection to the server's ``port``, an unsolicited SYN to the ENI's ``syn_port``.
    BenchError saying what is wrong. Returns the addresses the server saw."""
    eni = mode.plan.enis[0]
    families = [(socket.AF_INET, eni.ipv4)]
    if mode.s6 and eni.ipv6 and mode.env.ipv6:
        families.append((socket.AF_INET6, eni.ipv6))
    seen = []
    for family, want in families:
        got = server_sees(mode, family, port)
        if bare(got) != want:
            raise BenchError(f"the server saw the connection come from {got}, not from the "
                             f"ENI's address {want}: the traffic was not source-NATed")
        seen.append(got)
        answered = unsolicited_answered(mode, family, syn_port)
        if answered:
            raise BenchError(f"{answered}: an ENI must drop connections nobody asked for")
    return seen
