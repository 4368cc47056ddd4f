"""Parsing ``[[impairments]]``: netem's vocabulary (``delay``, ``jitter``, ``loss``,
``duplicate``, ``reorder``, ``rate``) on a link of the lab, named by the node it attaches
(an environment, a host, an internet host, an ENI as ``eni0``). :func:`parse_impairment` is
also what ``hyperplane lab impair`` and ``Lab.impair`` validate their values with, so the lab
file, the command line and the API accept exactly the same words. Where and how an impairment
is applied is hyperplane.topology.impair's.

    [[impairments]]
    link = "fn-b-0"          # the environment's link to the node
    direction = "egress"     # "both" (default), "egress" or "ingress", seen from fn-b-0
    loss = "1%"
    rate = "100mbit"
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence, Tuple

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.model import IMPAIRMENT_DIRECTIONS, ImpairmentPlan, LabConfig
from hyperplane.labconfig.parse_common import check_keys, did_you_mean, expect
from hyperplane.labconfig.problems import soft
from hyperplane.labconfig.resolving import eni_keys

#: The keys of one impairment besides ``link`` and ``direction``.
SETTINGS = ("delay", "jitter", "loss", "duplicate", "reorder", "rate")

_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s)\s*$", re.I)
_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)\s*$",
                   re.I)
#: tc's rate units: "bit" ones are bits per second, "bps" ones bytes per second.
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
               "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
MAX_DELAY_MS = 60_000.0
RATE_RANGE = (8_000, 100 * 10**9)   # 8 kbit/s .. 100 gbit/s

IMPAIRMENT = Table("[[impairments]]", "netem's impairments on one link of the lab, applied at "
                   "lab up (hyperplane lab impair changes them at run time).", (
    Key("link", "string", "the node whose link it is: an environment (fn-a-0), a host, an "
        "internet host, or an ENI by position (eni0)", required=True),
    Key("direction", "string", "both ways, or one as seen from that node", default="both",
        enum=IMPAIRMENT_DIRECTIONS),
    Key("delay", "string", 'added delay, like "10ms" (needs sch_netem)', pattern=_TIME.pattern),
    Key("jitter", "string", 'variation of the delay, like "2ms" (needs delay)',
        pattern=_TIME.pattern),
    Key("loss", "string", 'frames dropped, like "1%"', pattern=_PERCENT.pattern),
    Key("duplicate", "string", 'frames sent twice, like "1%"', pattern=_PERCENT.pattern),
    Key("reorder", "string", 'frames sent out of order, like "5%"', pattern=_PERCENT.pattern),
    Key("rate", "string", 'bandwidth limit in tc\'s units, like "100mbit"',
        pattern=_RATE.pattern),
))


def _time_ms(value: Any, field: str) -> float:
    text = expect(value, str, field, 'write a time like "10ms" (units us, ms, s)')
    m = _TIME.match(text)
    if not m:
        raise LabConfigError(field, f"{text!r} is not a time; write a number and a unit like "
                             '"10ms", "500us" or "1s"')
    ms = float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]
    if ms > MAX_DELAY_MS:
        raise LabConfigError(field, f"{text!r}: at most 60s")
    return ms


def _percent(value: Any, field: str) -> float:
    text = expect(value, str, field, 'write a percentage like "1%"')
    m = _PERCENT.match(text)
    if not m or float(m.group(1)) > 100:
        raise LabConfigError(field, f"{text!r} is not a percentage; write one from \"0%\" to "
                             '"100%", like "1%" or "0.5%"')
    return float(m.group(1))


def _rate(value: Any, field: str) -> int:
    text = expect(value, str, field, 'write a rate like "100mbit"')
    m = _RATE.match(text)
    if not m:
        raise LabConfigError(field, f"{text!r} is not a rate; write a number and one of tc's "
                             'units like "100mbit", "512kbit", "1gbit" (bits per second) or '
                             '"10mbps" (bytes per second)')
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if not RATE_RANGE[0] <= bits <= RATE_RANGE[1]:
        raise LabConfigError(field, f"{text!r}: use 8kbit to 100gbit")
    return bits


def parse_impairment(t: Dict[str, Any], field: str, links: Sequence[str]) -> ImpairmentPlan:
    """One impairment (a table of :data:`IMPAIRMENT`); ``links``: the names the lab's links go by.
    LabConfigError naming ``field.key``, the problem and the fix."""
    expect(t, dict, field, "write it as an [[impairments]] table")
    check_keys(t, field, IMPAIRMENT)
    link = expect(t["link"], str, f"{field}.link", 'name a node, like "fn-a-0" or "server"')
    if link not in links:
        raise LabConfigError(f"{field}.link", f"no link {link!r} in this lab"
                             f"{did_you_mean(link, links)}; a link is named by the node it "
                             f"attaches: {', '.join(links)}")
    direction = expect(t.get("direction", "both"), str, f"{field}.direction",
                       'write "both", "egress" or "ingress"')
    if direction not in IMPAIRMENT_DIRECTIONS:
        raise LabConfigError(f"{field}.direction",
                             f"{direction!r}{did_you_mean(direction, IMPAIRMENT_DIRECTIONS)}: "
                             'write "both", "egress" (what leaves the node) or "ingress" '
                             "(what reaches it)")
    kw: Dict[str, Any] = {}
    if "delay" in t:
        kw["delay_ms"] = _time_ms(t["delay"], f"{field}.delay")
    if "jitter" in t:
        kw["jitter_ms"] = _time_ms(t["jitter"], f"{field}.jitter")
        if not kw.get("delay_ms"):
            raise LabConfigError(f"{field}.jitter", "jitter varies a delay: give delay too "
                                 '(e.g. delay = "10ms", jitter = "2ms")')
    for key in ("loss", "duplicate", "reorder"):
        if key in t:
            kw[key] = _percent(t[key], f"{field}.{key}")
    if "rate" in t:
        kw["rate_bit"] = _rate(t["rate"], f"{field}.rate")
    if not any(kw.values()):
        raise LabConfigError(field, f"impairment of {link!r} changes nothing; give at least "
                             f"one of {', '.join(SETTINGS)} (to remove one at run time: "
                             "`hyperplane lab impair LINK --clear`)")
    return ImpairmentPlan(link=link, direction=direction, **kw)


def ways(direction: str) -> Tuple[str, ...]:
    """"both" -> ("egress", "ingress"); one way stays itself."""
    return ("egress", "ingress") if direction == "both" else (direction,)


def config_links(config: LabConfig) -> List[str]:
    """The names the links of a config's lab go by: environments (``fn-a-0``), hosts, internet
    hosts, then ENIs by position (``eni0``: an ENI's id depends on the lab's name, which the
    file does not know; at run time the id works too)."""
    names = [f"{fn.name}-{i}" for fn in config.functions for i in range(len(fn.environments))]
    names += [h.name for h in config.hosts] + [h.name for h in config.internet_hosts]
    return names + [f"eni{i}" for i in range(len(eni_keys(config)))]


def parse_impairments(items: List[Dict[str, Any]], config: LabConfig
                      ) -> Tuple[ImpairmentPlan, ...]:
    """``[[impairments]]``: each validated; one link's direction is impaired by one entry."""
    links = config_links(config)
    out: List[ImpairmentPlan] = []
    seen: Dict[Tuple[str, str], int] = {}
    for i, t in enumerate(items):
        with soft():   # each entry's mistakes are its own
            imp = parse_impairment(t, f"impairments[{i}]", links)
            for way in ways(imp.direction):
                if (imp.link, way) in seen:
                    raise LabConfigError(f"impairments[{i}]", f"{imp.link!r} {way} is impaired "
                                         f"by impairments[{seen[imp.link, way]}] already; put "
                                         "all of one direction's settings in one table")
                seen[imp.link, way] = i
            out.append(imp)
    return tuple(out)
