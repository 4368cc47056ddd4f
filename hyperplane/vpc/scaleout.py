"""Scale-out: the part of :class:`~hyperplane.vpc.control_plane.ControlPlane` that adds an ENI
to a key before (or, AWS's way, once) its ports run out.

An ENI carries up to 65,000 connections per protocol; the data path fills a key's ENIs in order.
AWS adds another ENI only when they are all exhausted, so every new connection of a burst fails
while that ENI is Pending. This control plane starts the next ENI *before* that: when every
usable ENI of the key is filled past ``lifecycle.high_water``, or when, at the recent rate of
port use, the key would run dry in less than twice the create delay. ``high_water = 0`` switches
both off (AWS's behaviour). The mark alone is enough while rate x create delay stays below the
ports left above it ((1 - 0.8) x 65,000 = 13,000); the prediction covers faster bursts.
:func:`hyperplane.vpc.burst.simulate_burst` measures both.

The mixin reads the control plane's pool fills (``_pools``, from each tick) and lifecycle
settings, keeps the port-use rates (``_rates``) and the keys at their ENI cap (``_capped``), and
creates ENIs through the control plane's ENI methods (``_enis_of``, ``_create_eni``,
``_used_keys``).
"""
from __future__ import annotations

import math
from typing import Dict, List, Set, Tuple

from hyperplane.vpc.state import EniState, Key

#: ``scale_out_early`` needs a prediction: time to exhaustion below this many create delays.
PREDICT_HORIZON = 2.0
#: Time constant (seconds) of the exponentially weighted average of the port-use rate: a
#: few ticks, so a burst is noticed within about one create delay and forgotten soon after.
RATE_TAU = 0.25


class Rate:
    """Exponentially weighted average of a counter's growth per second (seeded with the first
    sample, so a burst from idle is seen at the second tick, not after several time
    constants)."""

    def __init__(self, t: float, value: float):
        self.t, self.value, self.rate = t, value, None

    def update(self, t: float, value: float) -> float:
        dt = t - self.t
        if dt > 0:
            sample = max(0.0, (value - self.value) / dt)
            if self.rate is None:
                self.rate = sample
            else:
                self.rate += (1.0 - math.exp(-dt / RATE_TAU)) * (sample - self.rate)
            self.t = t
        self.value = value
        return self.rate or 0.0


class ScaleOut:
    """Adds the next ENI of a key: on exhaustion, past the high-water mark, or on the predicted
    time to exhaustion (a mixin of :class:`~hyperplane.vpc.control_plane.ControlPlane`)."""

    def _fill(self, eni: EniState) -> float:
        """The fullest pool (any family/protocol) of an ENI, 0..1, from the last tick."""
        fills = [r["used"] / r["size"] for r in self._pools.get(eni.id, ())
                 if r.get("size") and r.get("enabled", True)]
        return max(fills, default=0.0)

    def _full(self, eni: EniState) -> bool:
        return any(r["used"] >= r["size"] for r in self._pools.get(eni.id, ()) if r.get("size"))

    def _time_to_exhaustion(self, key: Key, usable: List[EniState], now: float) -> float:
        """Seconds until the key's usable ENIs run out of ports for some family/protocol, at
        the recent rate of port use (inf when no pool is filling)."""
        totals: Dict[Tuple[int, str], List[int]] = {}
        for e in usable:
            for r in self._pools.get(e.id, ()):
                t = totals.setdefault((r["family"], r["proto"]), [0, 0])
                t[0] += r["used"]
                t[1] += r["size"] - r["used"]
        for e in usable:   # an ENI that became available this tick has no rows yet: all free
            seen = {(r["family"], r["proto"]) for r in self._pools.get(e.id, ())}
            for (family, proto), t in totals.items():
                if (family, proto) not in seen and (e.ipv4 if family == 4 else e.ipv6):
                    t[1] += self.lifecycle.ports_per_eni
        best = math.inf
        for (family, proto), (used, free) in totals.items():
            rate = self._rates.get((key, family, proto))
            if rate is None:
                self._rates[(key, family, proto)] = Rate(now, used)
                continue
            r = rate.update(now, used)
            if r > 0:
                best = min(best, free / r)
        return best

    def _scale_out(self, now: float, exhausted: Set[Key]) -> None:
        lc = self.lifecycle
        for key in self._used_keys(active_only=True):
            live = [e for e in self._enis_of(key) if e.live]
            usable = [e for e in live if e.usable]
            if not usable:
                continue
            tte = self._time_to_exhaustion(key, usable, now)
            trigger = None
            if key in exhausted:
                trigger = "exhausted"
            elif lc.high_water > 0 and all(self._fill(e) >= lc.high_water for e in usable):
                trigger = "high-water"
            elif (lc.high_water > 0 and self.predict
                  and tte < PREDICT_HORIZON * lc.eni_create_delay):
                trigger = "prediction"
            if trigger is None:
                self._capped.discard(key)
                continue
            if any(e.state == "pending" for e in live):
                continue            # one new ENI at a time per key
            if len(live) >= lc.max_enis_per_key:
                if key not in self._capped:
                    self._capped.add(key)
                    self.counters["eni_cap_reached"] += 1
                continue
            if self._create_eni(key, now, f"scale-out:{trigger}") is None:
                self.counters["scale_out_failed"] += 1
                continue
            self.counters["scale_outs"] += 1
            self.counters[{"exhausted": "scale_out_exhausted", "high-water":
                           "scale_out_high_water", "prediction": "scale_out_predicted"}[trigger]] += 1
            late = trigger == "exhausted" or all(self._full(e) for e in usable)
            self.counters["scale_out_late" if late else "scale_out_early"] += 1

