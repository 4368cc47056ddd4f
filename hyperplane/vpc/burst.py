"""The burst simulation: :func:`simulate_burst` drives a real engine with the control plane on an
explicit clock, in process, to measure how many connections of a burst fail with and without
early scale-out (``benchmarks/scaleout_burst.py --sim`` runs it over a grid of rates)."""
from __future__ import annotations

import math
import struct
from typing import Any, Dict

from hyperplane.engine.config import EngineConfig, Eni, Timeouts
from hyperplane.labconfig import (EniPlan, EnvPlan, FunctionPlan, LifecyclePlan, Plan,
                                  SubnetPlan, eni_id, lab_mac)
from hyperplane.vpc.control_plane import ControlPlane
from hyperplane.vpc.state import NoEffects, key_of


class _BurstEffects(NoEffects):
    """The data path of :func:`simulate_burst`: one engine for its one key."""

    def __init__(self, engine_cls, ports_per_eni: int, hold: float, clock):
        self.engine_cls, self.ports, self.hold, self.clock = engine_cls, ports_per_eni, hold, clock
        self.engine = None

    def eni_active(self, eni):
        e = Eni(eni.id, ipv4=eni.ipv4, ipv6=eni.ipv6)
        if self.engine is None:
            t = Timeouts(udp_unreplied=self.hold, udp_replied=max(self.hold, 350.0))
            cfg = EngineConfig(enis=[e], port_min=65536 - self.ports, port_max=65535, seed=1,
                               timeouts=t)
            self.engine = self.engine_cls(cfg, clock=self.clock)
        else:
            self.engine.add_eni(e)

    def eni_retired(self, eni):
        if self.engine is not None and hasattr(self.engine, "set_eni_enabled"):
            self.engine.set_eni_enabled(eni.id, False)


def _burst_plan(create_delay: float, high_water: float, ports_per_eni: int,
                max_enis: int) -> Plan:
    """One subnet, one security group, one function with one environment."""
    name, sid, sg = "burst", "subnet-a", "sg-burst"
    subnet = SubnetPlan(id=sid, cidr="198.18.1.0/24", ipv6_cidr=None, bridge="br0",
                        router4="198.18.1.1", router6=None)
    eni = EniPlan(index=0, id=eni_id(name, sid, [sg]), subnet=sid, security_groups=[sg],
                  ipv4="198.18.1.4", ipv6=None, prefix4=subnet.cidr, prefix6=None,
                  router4=subnet.router4, router6=None, node_ifname="eni0",
                  fabric_ifname="eni0", mac=lab_mac(name, "eni", 0))
    env = EnvPlan(index=0, name="fn-0", function="fn", attach="tap", netns="hp-burst-env-fn-0",
                  ifname="eth0", node_ifname=None, eni=eni.id, subnet=sid, ipv4="198.19.0.2/30",
                  gw4="198.19.0.1", ipv6=None, gw6=None, gw_mac=lab_mac(name, "gw", 0))
    fn = FunctionPlan(name="fn", subnet_ids=[sid], security_group_ids=[sg],
                      ipv6_allowed_for_dual_stack=False, role=None, envs=[env.name])
    lc = LifecyclePlan(eni_create_delay=create_delay, high_water=high_water,
                       ports_per_eni=ports_per_eni, max_enis_per_key=max_enis)
    return Plan(name=name, prefix="hp-burst-", node_ns="hp-burst-node", fabric_ns="hp-burst-vpc",
                subnets=[subnet], enis=[eni], envs=[env], hosts=[], functions=[fn],
                lifecycle=lc)


def _udp4_template(src: str, dst: str) -> bytearray:
    """An IPv4/UDP packet (1 byte of payload, UDP checksum 0 = none, RFC 768) whose ports
    are patched in per flow; the IP header checksum does not cover the ports."""
    import socket
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 29, 0, 0x4000, 64, 17, 0,
                                socket.inet_aton(src), socket.inet_aton(dst)))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return hdr + struct.pack("!HHHH", 0, 0, 9, 0) + b"x"


def simulate_burst(connections: int = 70_000, rate: float = 10_000.0,
                   create_delay: float = 1.0, high_water: float = 0.8, tick: float = 0.05, *,
                   predict: bool = True, ports_per_eni: int = 65_000, max_enis: int = 8,
                   hold: float = 3600.0, engine_cls=None) -> Dict[str, Any]:
    """A burst of ``connections`` new UDP flows from one execution environment, ``rate`` per
    second, through a real engine (``hyperplane.Engine`` unless ``engine_cls``) driven by the
    control plane, with a control-plane tick every ``tick`` seconds. Everything runs in
    process on an explicit clock, so the result is exact and repeatable. Each flow holds its
    port for ``hold`` seconds (the engine's UDP timeout; the default outlasts any burst, so
    all the burst's connections are open at once).

    AWS's behaviour is ``high_water=0``: the next ENI is created only once the pool is
    exhausted, so roughly ``rate x (create_delay + tick)`` connections fail (at most the ones
    past the first ENI's ports). With a high-water mark (and the rate prediction) the next ENI
    is ready before the pool runs dry. Returns the failed count and what the control plane did.
    """
    if engine_cls is None:
        from hyperplane.engine import Engine as engine_cls
    if not (connections > 0 and rate > 0 and tick > 0 and create_delay >= 0):
        raise ValueError("connections, rate and tick must be > 0 and create_delay >= 0")
    clock = {"now": 0.0}
    fx = _BurstEffects(engine_cls, ports_per_eni, hold, lambda: clock["now"])
    plan = _burst_plan(create_delay, high_water, ports_per_eni, max_enis)
    cp = ControlPlane(plan, fx, 0.0, initial_active=True, predict=predict)
    key = key_of("subnet-a", ["sg-burst"])
    pkt = _udp4_template("198.19.0.2", "198.18.1.200")
    failed = 0
    first_failure = last_failure = None
    by_source: Dict[bytes, int] = {}
    ticks = 1          # the k-th tick runs at k * tick (no drift from repeated additions)
    packets = 0

    def do_tick(t: float) -> None:
        clock["now"] = t
        eng = fx.engine
        cp.tick(t, env_packets={"fn-0": packets}, env_blocked={},
                pools={key: eng.pool_fill()},
                exhausted=[key] if eng.take_signals() else [])

    for i in range(connections):
        t = i / rate
        while ticks * tick <= t:
            do_tick(ticks * tick)
            ticks += 1
        sport, dport = 1024 + i % 64000, 10000 + i // 64000
        struct.pack_into("!HH", pkt, 20, sport, dport)
        clock["now"] = t
        res = fx.engine.outbound(bytes(pkt), now=t)
        packets += 1
        if res.packet is None:
            failed += 1
            first_failure = t if first_failure is None else first_failure
            last_failure = t
        else:                                  # the ENI address it left from
            src = res.packet[12:16]
            by_source[src] = by_source.get(src, 0) + 1
    end = connections / rate
    while ticks * tick <= end + create_delay + tick:
        do_tick(ticks * tick)
        ticks += 1
    import socket
    drops = fx.engine.counters()["drops"]
    left = max(0, connections - ports_per_eni)
    return dict(
        connections=connections, rate=rate, create_delay=create_delay, high_water=high_water,
        predict=predict, tick=tick, failed=failed,
        # AWS's way: the flows from exhaustion until the next ENI is available fail. The
        # control plane sees the exhaustion at the next tick and the ENI's readiness at a tick,
        # so the gap is create_delay to create_delay + 2 ticks (if ``hold`` is shorter than the
        # burst, expiring flows also free ports: not counted here).
        expected_failed_without_high_water=[
            min(left, math.floor(rate * create_delay)),
            min(left, math.ceil(rate * (create_delay + 2 * tick)) + 1)],
        first_failure_at=first_failure, last_failure_at=last_failure,
        enis=len(cp.enis),
        connections_per_eni=[by_source.get(socket.inet_aton(e.ipv4), 0)
                             for e in cp.enis.values()],
        eni_reasons=[e.reason for e in cp.enis.values()],
        eni_ready_at=[round(e.ready_at, 3) for e in cp.enis.values()],
        drops={k: v for k, v in drops.items() if v},
        counters=dict(cp.counters), engine=getattr(fx.engine, "engine", "?"))
