"""Connection events, from the engines' rings to `conntrack events` readers and the flow logs.

Every engine records its connection events (NEW/UPDATE/DESTROY, and REJECT for refused packets)
in a bounded C ring (hyperplane.engine.types.Event); each tick the loop drains the rings into the
event subscribers and the flow-log writer (hyperplane.datapath.flowlogs), which at the end of each
aggregation interval also collects the per-connection traffic deltas from the engines.

That collection is a round of small steps, not one call: one "flow" event per connection costs
about 7 us of Python, so 64,000 connections at once held the loop 0.33 s, plus 0.27 s to write
the records, while a TAP's queue holds 500 packets and a veth ring 4,096: a burst of new flows
lost thousands of them (issue 16). Now the loop collects FLOW_COLLECT_CHUNK connections, polls
the links, collects the next chunk, and so on; the writer thread of
hyperplane.datapath.flowlogs writes the records.
"""
from __future__ import annotations

import json
import os
import socket
from typing import Any, Dict, List, Optional

from hyperplane import paths
from hyperplane.datapath import flowlogs
from hyperplane.engine.constants import TcpState, UdpState
from hyperplane.engine.ctfilter import Filter
from hyperplane.labconfig import eni_id

#: Connection events each engine's ring holds between two ticks (160 bytes each, 2.5 MiB a
#: ring): 16,384 per 50 ms tick is room for 327,000 connection events a second per ENI key;
#: more are counted as lost (events_lost), as conntrack -E reports ENOBUFS.
EVENT_RING = 16384
#: REJECT events (refused packets) each engine keeps per tick, 20,000 a second: a port scan
#: must not turn into Python work per packet in the data path's thread. Past it they count as
#: lost, and the flow-log interval says SKIPDATA, as AWS's does when records are skipped.
REJECTS_PER_TICK = 1000
#: Bytes of event lines waiting for a slow `conntrack events` reader before further events
#: for it are counted as lost instead of queued.
SUBSCRIBER_BACKLOG = 8 << 20
EVENT_KINDS = ("new", "update", "destroy", "reject")
#: Connections whose flow-log deltas the loop collects between two polls of the links at the
#: end of an interval: about 7 ms of Python, 56 packets at 8,000 a second on a link.
FLOW_COLLECT_CHUNK = 1024


def event_json(ev, timeouts: Optional[List[float]] = None) -> Dict[str, Any]:
    """An Event as one JSON object; ``timeout`` is the state's full idle timeout (what
    conntrack -E prints for NEW and UPDATE), None for DESTROY and REJECT."""
    d = ev._asdict()
    d["orig"] = ev.orig._asdict()
    d["reply"] = ev.reply._asdict() if ev.reply is not None else None
    d["timeout"] = None
    if timeouts is not None and ev.kind in ("new", "update"):
        names = TcpState if ev.proto == "tcp" else UdpState
        d["timeout"] = timeouts[names[ev.state].value]
    return d


class Subscriber:
    """A `conntrack events` client: its filter, the kinds it wants, bytes not yet written."""

    def __init__(self, conn: socket.socket, flt: Filter, kinds: List[str]):
        self.conn = conn
        self.filter = flt
        self.kinds = set(kinds)
        self.pending = bytearray()
        self.lost = 0


class EventPump:
    """The Daemon's events and flow logs (a mixin of hyperplane.datapath.daemon.Daemon, whose
    ``__init__`` sets up the state it uses: the subscribers ``_subs``, the kinds the engines
    record ``_ev_kinds``, the ring losses last reported ``_ring_lost``, ``events_sent`` and
    ``flowlogs``, the flow-log round ``_fl_round``: (the wall time it was due, the engines
    still to collect) or None). The loop's thread calls :meth:`pump_events` from the tick and
    after a flush, and :meth:`flow_collect_step` between polls while a round goes on; the
    control server adds subscribers."""

    def eni_subnets(self) -> Dict[str, str]:
        """Every ENI id the data path has (scale-out ones too, and the NAT gateways') -> its
        subnet: the flow logs' subnet-id."""
        out = {eid: kg.key[0] for kg in self.keys.values() for eid in kg.index}
        for nat in self.plan.nat_gateways:
            out[eni_id(self.plan.name, nat.id, ())] = nat.subnet
        return out

    def eni_addresses(self) -> Dict[str, List[str]]:
        out = {eid: list(a) for kg in self.keys.values() for eid, a in kg.addresses.items()}
        for nat in self.plan.nat_gateways:
            out[eni_id(self.plan.name, nat.id, ())] = [nat.public_ipv4]
        return out

    def _open_flowlogs(self) -> None:
        cfg = getattr(self.plan, "flow_logs", None)
        if cfg is None or not getattr(cfg, "enabled", True) or not self.control_path:
            return
        plan = self.plan
        nat_enis = {eni_id(plan.name, n.id, ()) for n in plan.nat_gateways}
        self.flowlogs = flowlogs.FlowLogs(
            os.path.join(os.path.dirname(self.control_path), paths.FLOW_LOGS_DIR),
            interval=cfg.interval, account_id=cfg.account_id, start=self.wall(),
            record_format=cfg.format, vpc_id=plan.vpc_id, region=cfg.region, az_id=cfg.az_id,
            traffic_path=lambda eni, subnet, dst: flowlogs.traffic_path(
                plan, subnet, dst, eni in nat_enis))
        self._event_options()

    def _wanted_kinds(self) -> frozenset:
        kinds = set()
        for sub in self._subs:
            kinds |= sub.kinds
        if self.flowlogs is not None:
            kinds |= {"destroy", "reject"}   # the only kinds that carry traffic for them
        return frozenset(kinds)

    def _event_options(self, engine=None) -> None:
        """Let the engines record only the event kinds someone reads (a kind nobody asked for
        costs nothing, not even an Event object), with the reject budget per tick."""
        if engine is not None:
            engine.event_options(kinds=sorted(self._ev_kinds), reject_limit=REJECTS_PER_TICK)
            return
        kinds = self._wanted_kinds()
        if kinds != self._ev_kinds:
            self._ev_kinds = kinds
            for e, _ in self.engines():
                e.event_options(kinds=sorted(kinds), reject_limit=REJECTS_PER_TICK)

    def pump_events(self) -> None:
        """Drain every engine's event ring into the subscribers and the flow logs; at the end
        of a flow-log interval start the round that collects the traffic deltas
        (:meth:`flow_collect_step`, which the loop calls between polls until it is over)."""
        self._drain_events()
        fl = self.flowlogs
        if fl is not None and self._fl_round is None and fl.due(self.wall()):
            self._fl_round = (self.wall(), [e for e, _ in self.engines()])

    def _drain_events(self) -> None:
        self._event_options()
        ring_lost = sum(e.events_lost for e, _ in self.engines())
        new_losses, self._ring_lost = ring_lost - self._ring_lost, ring_lost
        if not self._subs and self.flowlogs is None:   # nobody listens: no Event objects
            for engine, _ in self.engines():
                engine.discard_events()
            return
        batch = []
        for engine, _ in self.engines():
            evs = engine.take_events()
            if evs:
                batch.append((engine, evs))
        if self._subs:   # (losses from before a reader subscribed are not its losses)
            self._fan_out(batch, new_losses)
        if self.flowlogs is not None:
            for _, evs in batch:
                self.flowlogs.add(evs)

    def flow_collect_step(self, limit: Optional[int] = FLOW_COLLECT_CHUNK) -> bool:
        """One step of the flow-log round: the deltas of at most ``limit`` connections of an
        engine; once every engine is done, the interval is closed (at the time it was due) and
        handed to the writer thread. ``limit=None``: the whole rest of the round at once, the
        records written before this returns (the data path is stopping). True while the round
        goes on."""
        fl, rnd = self.flowlogs, self._fl_round
        if fl is None or rnd is None:
            return False
        wall, engines = rnd
        if engines:
            engine = engines[0]
            fl.add(engine.flow_collect(limit=limit))
            if limit is not None and not engine.flow_collect_done:
                return True
            engines.pop(0)
            if limit is not None and engines:
                return True
            for engine in engines:
                fl.add(engine.flow_collect())
            engines.clear()
        self._drain_events()   # what expired while collecting: its traffic, in this interval
        iv = fl.close_interval(wall, self.eni_addresses(),
                               events_lost=sum(e.events_lost for e, _ in self.engines()),
                               eni_subnets=self.eni_subnets())
        self._fl_round = None
        if limit is None:
            fl.drain()
            fl.write_interval(iv)
        else:
            fl.write_later(iv)
        return False

    def _fan_out(self, batch, ring_lost: int = 0) -> None:
        """Queue each subscriber's matching events; ``ring_lost`` events the engines' rings
        dropped since the last call are reported to every subscriber (they may have matched)."""
        alive = []
        for sub in self._subs:
            sub.lost += ring_lost
            lines = []
            for engine, evs in batch:
                tmo = engine.config.timeouts.as_list()
                for ev in evs:
                    if ev.kind in sub.kinds and sub.filter.match_event(ev):
                        lines.append(json.dumps(event_json(ev, tmo)))
            if len(sub.pending) > SUBSCRIBER_BACKLOG:
                sub.lost += len(lines)
            elif lines or sub.lost:
                n = len(lines)
                if sub.lost:
                    lines.insert(0, json.dumps({"kind": "lost", "count": sub.lost}))
                    sub.lost = 0
                sub.pending += ("\n".join(lines) + "\n").encode()
                self.events_sent += n
            if self._flush_sub(sub):
                alive.append(sub)
            else:
                sub.conn.close()
        self._subs = alive

    @staticmethod
    def _flush_sub(sub: Subscriber) -> bool:
        """Write what the subscriber's socket takes; False when the client went away."""
        try:
            if not sub.pending:   # nothing to write: did the client hang up?
                return sub.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            n = sub.conn.send(sub.pending)
            del sub.pending[:n]
            return True
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
