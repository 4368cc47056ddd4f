"""The engine's small configuration: ENI addresses, port range, timeouts, capacity.

Bad values raise :class:`ConfigError` with a message that names the field and the fix.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from typing import Optional, Sequence

from hyperplane.engine.constants import TimeoutClass

#: AWS: "each ENI supports up to 65,000 connections/ports". 536..65535 holds exactly 65,000.
#: (Linux's ephemeral range 32768..60999 only holds 28,232; AWS NAT gateway uses 1024..65535 =
#: 64,512, which cannot hold 65,000, so the pool starts below 1024. Source ports below 1024
#: carry no privilege on the VPC side.)
DEFAULT_PORT_MIN = 536
DEFAULT_PORT_MAX = 65535

_ENI_ID = re.compile(r"^eni-[0-9a-f]{17}$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds, one per timeout class.

    Established TCP and replied UDP default to 350 s: the idle timeout AWS documents for NAT
    gateway connections. That is shorter than RFC 5382 REQ-5's 2 h 4 min for established TCP and
    than RFC 4787 REQ-5's "not less than 2 minutes" only for unreplied UDP; both deviations are on
    purpose, to behave like AWS. The other classes are shorter, because a connection in them is
    either not yet confirmed by the VPC side or already closing:

    - ``tcp_syn_sent`` 120 s: Linux's default, long enough for a client's SYN retransmissions
      (RFC 6298 initial RTO 1 s, doubling: 1+2+4+8+16+32 = 63 s, plus the last wait).
    - ``tcp_syn_recv`` 60 s: the handshake's last ACK is one RTT away.
    - ``tcp_fin_wait`` 120 s, ``tcp_close_wait`` 60 s, ``tcp_last_ack`` 30 s: closing states.
    - ``tcp_time_wait`` 120 s: 2 x MSL with Linux's 60 s MSL (RFC 9293 3.6.1 suggests 2 min MSL).
    - ``tcp_close`` 10 s: after a RST, long enough to absorb in-flight segments.
    - ``udp_unreplied`` 30 s: the kernel's value; a flow nobody answered holds a port briefly.
    """

    tcp_syn_sent: float = 120.0
    tcp_syn_recv: float = 60.0
    tcp_established: float = 350.0
    tcp_fin_wait: float = 120.0
    tcp_close_wait: float = 60.0
    tcp_last_ack: float = 30.0
    tcp_time_wait: float = 120.0
    tcp_close: float = 10.0
    udp_unreplied: float = 30.0
    udp_replied: float = 350.0

    def as_list(self) -> list:
        """Timeouts indexed by :class:`TimeoutClass` number (index 0 unused)."""
        out = [0.0] * (max(TimeoutClass) + 1)
        for cls in TimeoutClass:
            out[cls] = float(getattr(self, cls.name.lower()))
        return out

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 < v < 1e9):
                raise ConfigError(
                    f"timeouts.{f.name} = {v!r}: must be a number of seconds > 0 and < 1e9; "
                    f"set it to e.g. {getattr(Timeouts, f.name)}"
                )


@dataclasses.dataclass(frozen=True)
class Eni:
    """One Hyperplane ENI: an id and its private address(es) in the subnet."""

    id: str
    ipv4: Optional[str] = None
    ipv6: Optional[str] = None

    def validate(self, where: str) -> None:
        if not isinstance(self.id, str) or not _ENI_ID.match(self.id):
            raise ConfigError(
                f"{where}.id = {self.id!r}: an ENI id is 'eni-' and 17 lower-case hex digits, "
                "e.g. 'eni-0a1b2c3d4e5f60718'"
            )
        if self.ipv4 is None and self.ipv6 is None:
            raise ConfigError(f"{where}: give the ENI an ipv4 and/or an ipv6 address")
        for fam, field in ((4, "ipv4"), (6, "ipv6")):
            v = getattr(self, field)
            if v is None:
                continue
            try:
                a = ipaddress.ip_address(v)
            except ValueError:
                raise ConfigError(f"{where}.{field} = {v!r}: not an IP address") from None
            if a.version != fam:
                raise ConfigError(f"{where}.{field} = {v!r}: must be an IPv{fam} address")
            if a.is_multicast or a.is_unspecified or a.is_loopback:
                raise ConfigError(
                    f"{where}.{field} = {v!r}: an ENI address must be a unicast address "
                    "(use the benchmark ranges 198.18.0.0/15 or 2001:2::/48 in labs)"
                )


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What an engine needs: its ENIs (in scale-out order), ports, timeouts and capacity."""

    enis: Sequence[Eni]
    port_min: int = DEFAULT_PORT_MIN
    port_max: int = DEFAULT_PORT_MAX
    timeouts: Timeouts = dataclasses.field(default_factory=Timeouts)
    capacity: int = 1_000_000
    #: A freed port is not taken as the "keep the source port" choice until this many seconds
    #: have passed, and freed ports queue behind all older free ports (RFC 6056 section 3.1
    #: warns against quick reuse: stray segments of the old connection would hit the new one).
    port_reuse_delay: float = 2.0
    #: Seeds the hash key and the port permutations. None: drawn from os.urandom.
    seed: Optional[int] = None
    #: Connections one source address (one execution environment) may hold at once; a new
    #: one beyond it is dropped as ``source_limit``, so one environment's SYN flood or
    #: connection leak cannot take the ports and table slots of the others sharing the ENI.
    #: 0: no limit. (At most 65,536 distinct sources are counted when a limit is set.)
    max_connections_per_source: int = 0

    MAX_ENIS = 256

    @property
    def ports_per_eni(self) -> int:
        return self.port_max - self.port_min + 1

    def resolved_seed(self) -> int:
        if self.seed is not None:
            return self.seed & 0xFFFFFFFFFFFFFFFF
        return int.from_bytes(os.urandom(8), "little")

    def validate(self) -> "EngineConfig":
        if not self.enis:
            raise ConfigError("enis: empty; give at least one ENI, e.g. "
                              "Eni(id='eni-0a1b2c3d4e5f60718', ipv4='198.18.1.10')")
        if len(self.enis) > self.MAX_ENIS:
            raise ConfigError(f"enis: {len(self.enis)} ENIs; at most {self.MAX_ENIS}")
        seen_ids, seen_addrs = set(), set()
        for i, e in enumerate(self.enis):
            if not isinstance(e, Eni):
                raise ConfigError(f"enis[{i}] = {e!r}: must be an Eni(id=..., ipv4=..., ipv6=...)")
            e.validate(f"enis[{i}]")
            if e.id in seen_ids:
                raise ConfigError(f"enis[{i}].id = {e.id!r}: duplicate ENI id; ids are unique")
            seen_ids.add(e.id)
            for a in (e.ipv4, e.ipv6):
                if a is None:
                    continue
                key = ipaddress.ip_address(a)
                if key in seen_addrs:
                    raise ConfigError(f"enis[{i}]: address {a} is used by another ENI")
                seen_addrs.add(key)
        for name in ("port_min", "port_max"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not (1 <= v <= 65535):
                raise ConfigError(f"{name} = {v!r}: must be a port number 1..65535")
        if self.port_min > self.port_max:
            raise ConfigError(
                f"port_min = {self.port_min} > port_max = {self.port_max}: swap them "
                f"(the default {DEFAULT_PORT_MIN}..{DEFAULT_PORT_MAX} holds 65,000 ports)"
            )
        if not isinstance(self.timeouts, Timeouts):
            raise ConfigError("timeouts: must be a hyperplane.Timeouts(...)")
        self.timeouts.validate()
        if (not isinstance(self.capacity, int) or isinstance(self.capacity, bool)
                or not (1 <= self.capacity <= 1 << 26)):
            raise ConfigError(
                f"capacity = {self.capacity!r}: must be 1..{1 << 26} connections "
                "(default 1,000,000)"
            )
        d = self.port_reuse_delay
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not (0 <= d < 1e9):
            raise ConfigError(f"port_reuse_delay = {d!r}: must be seconds >= 0 (default 2.0)")
        m = self.max_connections_per_source
        if not isinstance(m, int) or isinstance(m, bool) or not (0 <= m < 1 << 32):
            raise ConfigError(f"max_connections_per_source = {m!r}: must be an integer >= 0 "
                              "(0: no limit)")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ConfigError(f"seed = {self.seed!r}: must be a non-negative int or None")
        return self
