"""Connection filters shared by ``conntrack list``, ``conntrack events`` and ``conntrack flush``.

The options follow conntrack-tools' (``-p``, ``-s``, ``-d``, ``-r``, ``-q``, ``--sport``,
``--dport``, ``--state``, ``-f``) plus ``--eni``. A filter travels to the data path as a JSON
object and is applied there, so that a large table is not shipped to the client to be thrown
away. Addresses match as an address or a prefix (``198.18.0.0/24``).

    orig_src (-s)   the environment's address         orig_dst (-d)  the peer's
    reply_src (-r)  the peer's address, as it answers reply_dst (-q)  the ENI's address
    sport, dport    ports of the orig tuple

A REJECT event (a refused packet) has only the packet's own tuple, as orig: for an unsolicited
inbound packet orig_src is the sender in the VPC and orig_dst the ENI address, and reply
conditions never match it.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Dict, Optional

from hyperplane.engine.constants import TcpState, UdpState

#: the states a connection can be in (TCP's, then UDP's), as the engines name them
STATES = tuple(s.name for s in TcpState if s is not TcpState.NONE) + \
    tuple(s.name for s in UdpState)

#: filter key -> what it is (for messages and --help)
FIELDS = {
    "family": "4 or 6",
    "proto": "tcp or udp",
    "state": "one of " + ", ".join(STATES),
    "orig_src": "an address or prefix",
    "orig_dst": "an address or prefix",
    "reply_src": "an address or prefix",
    "reply_dst": "an address or prefix",
    "sport": "a port 0-65535 (orig tuple)",
    "dport": "a port 0-65535 (orig tuple)",
    "eni": "an ENI id (eni-...)",
}
_ADDR = ("orig_src", "orig_dst", "reply_src", "reply_dst")


class FilterError(ValueError):
    """A filter field with a bad value: the message names the field and what it takes."""


class Filter:
    """A conjunction of conditions; an empty filter matches everything."""

    def __init__(self, spec: Optional[Dict[str, Any]] = None):
        if spec is not None and not isinstance(spec, dict):
            raise FilterError(f"filter {spec!r}: must be an object of field: value "
                              f"(fields: {', '.join(FIELDS)})")
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(FIELDS))
        if unknown:
            raise FilterError(f"unknown filter field(s) {', '.join(unknown)}; known: "
                              f"{', '.join(FIELDS)}")
        self.spec = {k: v for k, v in spec.items() if v is not None}
        s = self.spec
        if "family" in s and (type(s["family"]) is not int or s["family"] not in (4, 6)):
            raise FilterError(f"family {s['family']!r}: must be {FIELDS['family']}")
        if "proto" in s:
            if not isinstance(s["proto"], str) or s["proto"].lower() not in ("tcp", "udp"):
                raise FilterError(f"proto {s['proto']!r}: must be {FIELDS['proto']}")
            s["proto"] = s["proto"].lower()
        if "state" in s:
            if not isinstance(s["state"], str) or s["state"].upper() not in STATES:
                raise FilterError(f"state {s['state']!r}: must be {FIELDS['state']}")
            s["state"] = s["state"].upper()
        for k in ("sport", "dport"):
            if k in s and (not isinstance(s[k], int) or isinstance(s[k], bool)
                           or not 0 <= s[k] <= 65535):
                raise FilterError(f"{k} {s[k]!r}: must be {FIELDS[k]}")
        if "eni" in s and (not isinstance(s["eni"], str) or not s["eni"].startswith("eni-")
                           or len(s["eni"]) < 5):
            raise FilterError(f"eni {s['eni']!r}: must be {FIELDS['eni']}")
        self._nets = {}
        for k in _ADDR:
            if k in s:
                try:
                    self._nets[k] = ipaddress.ip_network(str(s[k]), strict=False)
                except ValueError:
                    raise FilterError(f"{k} {s[k]!r}: must be {FIELDS[k]}") from None

    def __bool__(self) -> bool:
        return bool(self.spec)

    def match(self, family: int, proto: str, state: str, orig, reply, eni: Optional[str]) -> bool:
        """``orig``/``reply``: (src, sport, dst, dport) as text addresses; ``reply`` may be None
        (a rejected packet), and then only orig conditions can match it."""
        s = self.spec
        if "family" in s and family != s["family"]:
            return False
        if "proto" in s and proto != s["proto"]:
            return False
        if "state" in s and state.upper() != s["state"]:
            return False
        if "eni" in s and eni != s["eni"]:
            return False
        if "sport" in s and orig[1] != s["sport"]:
            return False
        if "dport" in s and orig[3] != s["dport"]:
            return False
        for k, net in self._nets.items():
            side = orig if k.startswith("orig") else reply
            if side is None:
                return False
            addr = ipaddress.ip_address(side[0] if k.endswith("src") else side[2])
            if addr.version != net.version or addr not in net:
                return False
        return True

    def match_entry(self, e: Dict[str, Any]) -> bool:
        """An entry as the daemon's ``conntrack`` command lists it (dicts for the tuples)."""
        o, r = e["orig"], e["reply"]
        return self.match(e["family"], e["proto"], e["state"],
                          (o["src"], o["sport"], o["dst"], o["dport"]),
                          (r["src"], r["sport"], r["dst"], r["dport"]), e.get("eni_id"))

    def match_event(self, ev) -> bool:
        """A hyperplane.engine.types.Event."""
        return self.match(ev.family, ev.proto, ev.state, ev.orig, ev.reply, ev.eni)
