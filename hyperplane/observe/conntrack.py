"""``hyperplane conntrack``: the connection table of a running lab, the way conntrack-tools
shows the kernel's.

    hyperplane conntrack list   [--name LAB] [FILTERS] [-o extended] [--json]   (conntrack -L)
    hyperplane conntrack events [--name LAB] [FILTERS] [-e MASK] [--rejects]
                                [-o extended,timestamp,id] [--count N] [--timeout S] [--json]
                                                                                (conntrack -E)
    hyperplane conntrack flush  [--name LAB] [FILTERS]                          (conntrack -D/-F)
    hyperplane conntrack count  [--name LAB] [FILTERS]                          (conntrack -C)

FILTERS, with conntrack's option names (hyperplane.engine.ctfilter; applied inside the data path):
``-p/--proto tcp|udp``, ``-f/--family ipv4|ipv6``, ``-s/--orig-src``, ``-d/--orig-dst``,
``-r/--reply-src``, ``-q/--reply-dst`` (an address or a prefix), ``--sport``/``--dport``
(orig tuple), ``--state NAME``, ``--eni ID``.

The line format is libnetfilter_conntrack's default one, field by field, so that what a
learner reads here reads the same on a Linux box::

    tcp      6 349 ESTABLISHED src=198.19.0.2 dst=198.18.1.5 sport=41000 dport=8080 \
packets=3 bytes=164 src=198.18.1.5 dst=198.18.1.4 sport=8080 dport=52113 packets=2 bytes=112 \
[ASSURED] mark=0 use=1 eni=eni-...

* the protocol name left-aligned in 8 columns, then its number (6 TCP, 17 UDP);
* the seconds left before the entry expires if nothing more is seen (whole seconds);
* the TCP state (the kernel's names; UDP has none on this line);
* the **orig** tuple (as the execution environment sent it) and its counters, then the
  **reply** tuple (as the VPC answers: to the ENI's address and NAT port) and its counters:
  packets and IP bytes as with ``nf_conntrack_acct=1``;
* ``[UNREPLIED]`` after the orig tuple while nothing came back (the kernel's
  !IPS_SEEN_REPLY), ``[ASSURED]`` after the reply tuple once the kernel would set IPS_ASSURED
  (TCP: the handshake completed and the connection reached ESTABLISHED; UDP: a reply came
  back. Recent kernels set it for UDP only once the flow has lived 2 s, and keep it on a TCP
  connection that was assured before a RST took it to CLOSE; we show the simpler rule);
* ``mark=0 use=1`` as the kernel prints them (no marks here), then our extra ``eni=ID`` (and
  ``nat-gateway=ID`` for a NAT gateway's table).

``-o extended`` prefixes the layer-3 protocol: ``ipv4     2`` / ``ipv6     10`` (AF_INET,
AF_INET6). Events use the same fields behind a right-aligned ``[NEW]``/``[UPDATE]``/
``[DESTROY]`` tag; like ctnetlink, NEW and UPDATE carry the new state's timeout and no
counters, DESTROY carries the counters and no timeout or state.
"""
from __future__ import annotations

import argparse
import json
import select
import socket
import time
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from hyperplane.engine.constants import TcpState, UdpState
from hyperplane.engine.ctfilter import FIELDS, Filter, FilterError
from hyperplane.errors import EXIT_USAGE, HyperplaneError

PREFIX = "hyperplane conntrack"
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}   # icmp: REJECT lines only
#: family -> (conntrack's layer-3 name, AF_ number) for ``-o extended``
L3 = {4: ("ipv4", 2), 6: ("ipv6", 10)}
#: TCP states reached only after a packet came back from the VPC (SYN/ACK or later)
_TCP_REPLIED = {"SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"}
#: TCP states in which the kernel's entry carries [ASSURED] (it is set on reaching
#: ESTABLISHED, nf_conntrack_proto_tcp.c, and stays through the closing states)
_TCP_ASSURED = _TCP_REPLIED - {"SYN_RECV"}
STATE_NAMES = [s.name for s in TcpState if s is not TcpState.NONE] + [s.name for s in UdpState]
EVENT_MASK = ("NEW", "UPDATE", "DESTROY", "REJECT")
LIST_OUTPUTS = ("extended",)
EVENT_OUTPUTS = ("extended", "timestamp", "id")
#: The data path's event kinds (``events``' "kinds"), in -e/--event-mask order.
EVENT_KINDS = tuple(k.lower() for k in EVENT_MASK)


# ---- pure formatting ------------------------------------------------------------------------------
def seen_reply(d: Dict[str, Any]) -> bool:
    """The kernel's IPS_SEEN_REPLY: a packet came back from the VPC. An UPDATE event carries
    the counters from *before* the packet that changed the state, so the state speaks too."""
    if d.get("packets_reply"):
        return True
    st = d.get("state", "")
    return st in _TCP_REPLIED if d.get("proto") == "tcp" else st == "REPLIED"


def assured(d: Dict[str, Any]) -> bool:
    """The kernel's IPS_ASSURED (see the module docstring for the rule shown)."""
    if not seen_reply(d):
        return False
    return d.get("state") in _TCP_ASSURED if d.get("proto") == "tcp" else True


def _tuple(t: Dict[str, Any]) -> List[str]:
    return [f"src={t['src']}", f"dst={t['dst']}", f"sport={t['sport']}", f"dport={t['dport']}"]


def _proto(d: Dict[str, Any], extended: bool) -> List[str]:
    out = []
    if extended:
        name, num = L3[d["family"]]
        out.append(f"{name:<8} {num}")
    proto = d["proto"]
    out.append(f"{proto:<8} {PROTO_NUMBERS.get(proto, 0)}")
    return out


def _extras(d: Dict[str, Any], eni_key: str) -> List[str]:
    out = []
    if d.get(eni_key):
        out.append(f"eni={d[eni_key]}")
    if d.get("nat_gateway"):
        out.append(f"nat-gateway={d['nat_gateway']}")
    return out


def format_entry(d: Dict[str, Any], extended: bool = False) -> str:
    """One ``conntrack list`` line from an entry as the daemon's ``conntrack`` command lists it
    (EntryInfo fields, orig/reply as dicts, ``eni_id``, maybe ``nat_gateway``)."""
    parts = _proto(d, extended)
    parts.append(str(max(0, int(d["timeout"]))))
    if d["proto"] == "tcp":
        parts.append(d["state"])
    parts += _tuple(d["orig"])
    parts.append(f"packets={d['packets_orig']} bytes={d['bytes_orig']}")
    if not seen_reply(d):
        parts.append("[UNREPLIED]")
    parts += _tuple(d["reply"])
    parts.append(f"packets={d['packets_reply']} bytes={d['bytes_reply']}")
    if assured(d):
        parts.append("[ASSURED]")
    parts += ["mark=0", "use=1"]
    return " ".join(parts + _extras(d, "eni_id"))


def timestamp_prefix(t: float) -> str:
    """conntrack -E -o timestamp's ``[seconds.microseconds]`` and a tab."""
    sec = int(t)
    usec = min(999999, int(round((t - sec) * 1e6)))
    return f"[{sec}.{usec:06d}]\t"


def format_event(d: Dict[str, Any], timestamp: Any = False, extended: bool = False,
                 show_id: bool = False) -> str:
    """One ``conntrack events`` line from an event as the daemon sends it
    (hyperplane.datapath.events.event_json). ``timestamp``: False for none, True for now, or a Unix
    time to print (conntrack prints the time it received the event, not the packet's)."""
    kind = d["kind"]
    parts = [f"{'[' + kind.upper() + ']':>9}"] + _proto(d, extended)
    if kind == "reject":
        # our extension: a packet the engine refused (no entry was made); orig is its tuple
        # as it arrived, in whichever direction that was
        parts += _tuple(d["orig"])
        parts.append(f"reason={d.get('reason') or 'unknown'}")
    else:
        if kind in ("new", "update"):
            if d.get("timeout") is not None:
                parts.append(str(int(d["timeout"])))
            if d["proto"] == "tcp":
                parts.append(d["state"])
        parts += _tuple(d["orig"])
        if kind == "destroy":
            parts.append(f"packets={d['packets_orig']} bytes={d['bytes_orig']}")
        if not seen_reply(d):
            parts.append("[UNREPLIED]")
        if d.get("reply"):
            parts += _tuple(d["reply"])
        if kind == "destroy":
            parts.append(f"packets={d['packets_reply']} bytes={d['bytes_reply']}")
        if assured(d):
            parts.append("[ASSURED]")
        if show_id and d.get("id"):
            parts.append(f"id={d['id']}")
    line = " ".join(parts + _extras(d, "eni"))
    if timestamp is not False and timestamp is not None:
        line = timestamp_prefix(time.time() if timestamp is True else float(timestamp)) + line
    return line


def lost_warning(count: int) -> str:
    """conntrack -E's ENOBUFS warning, and what it means here."""
    return ("WARNING: We have hit ENOBUFS! We are losing events.\n"
            f"{count} event(s) were dropped by the data path because this reader fell more "
            "than 8 MiB behind (conntrack's netlink socket buffer overflow, here).")


# ---- options --------------------------------------------------------------------------------------
#: filter field -> the option that sets it (for messages)
OPTION = {"proto": "-p/--proto", "family": "-f/--family", "orig_src": "-s/--orig-src",
          "orig_dst": "-d/--orig-dst", "reply_src": "-r/--reply-src",
          "reply_dst": "-q/--reply-dst", "sport": "--sport", "dport": "--dport",
          "state": "--state", "eni": "--eni"}


class UsageError(HyperplaneError, ValueError):
    """A bad option value: the message names the option and what it takes (exit status 2)."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_USAGE)


def filter_spec(args: argparse.Namespace) -> Dict[str, Any]:
    """The filter dict (hyperplane.engine.ctfilter field names) from the parsed options, each value
    checked here so that a mistake is a usage error naming the option, not a data-path
    refusal."""
    spec: Dict[str, Any] = {}
    fam = getattr(args, "family", None)
    if fam is not None:
        f = fam.lower()
        if f not in ("ipv4", "ipv6", "4", "6"):
            raise UsageError(f"{OPTION['family']} {fam!r}: must be ipv4 or ipv6")
        spec["family"] = 4 if f in ("ipv4", "4") else 6
    proto = getattr(args, "proto", None)
    if proto is not None:
        p = {"6": "tcp", "17": "udp"}.get(proto, proto.lower())
        if p not in PROTO_NUMBERS:
            raise UsageError(f"{OPTION['proto']} {proto!r}: must be tcp or udp (6 or 17); "
                             "hyperplane tracks no other protocol")
        spec["proto"] = p
    state = getattr(args, "state", None)
    if state is not None:
        if state.upper() not in STATE_NAMES:
            raise UsageError(f"--state {state!r}: must be one of {', '.join(STATE_NAMES)}")
        spec["state"] = state.upper()
    for k in ("sport", "dport"):
        v = getattr(args, k, None)
        if v is not None:
            try:
                spec[k] = int(v, 10)
            except ValueError:
                raise UsageError(f"--{k} {v!r}: must be {FIELDS[k]}") from None
    for k in ("orig_src", "orig_dst", "reply_src", "reply_dst", "eni"):
        v = getattr(args, k, None)
        if v is not None:
            spec[k] = v
    for k, v in spec.items():        # the data path's own checks, one field at a time
        try:
            Filter({k: v})
        except FilterError:
            raise UsageError(f"{OPTION[k]} {v!r}: must be {FIELDS[k]}") from None
    return spec


def output_options(text: Optional[str], allowed) -> Set[str]:
    """``-o extended,timestamp`` -> {"extended", "timestamp"} (conntrack's comma list)."""
    if not text:
        return set()
    got = {x.strip().lower() for x in text.split(",") if x.strip()}
    bad = sorted(got - set(allowed))
    if bad:
        raise UsageError(f"-o/--output {','.join(bad)!r}: this command takes "
                         f"{', '.join(allowed)} (comma-separated)")
    return got


def event_kinds(mask: Optional[str], rejects: bool) -> List[str]:
    """``-e NEW,DESTROY`` (conntrack's --event-mask; ALL = NEW,UPDATE,DESTROY) plus REJECT with
    ``--rejects`` -> the daemon's kinds."""
    if mask is None:
        names = ["NEW", "UPDATE", "DESTROY"]
    else:
        names = []
        for x in (t.strip().upper() for t in mask.split(",")):
            if x == "ALL":
                names += ["NEW", "UPDATE", "DESTROY"]
            elif x in EVENT_MASK:
                names.append(x)
            elif x:
                raise UsageError(f"-e/--event-mask {x!r}: must be a comma-separated list of "
                                 f"{', '.join(EVENT_MASK)} or ALL")
        if not names:
            raise UsageError("-e/--event-mask: give at least one of NEW, UPDATE, DESTROY, "
                             "REJECT, ALL")
    if rejects:
        names.append("REJECT")
    return [k.lower() for k in EVENT_MASK if k in names]


# ---- events --------------------------------------------------------------------------------------
class EventPrinter:
    """Turns the daemon's event lines into conntrack -E lines on ``out`` (warnings on
    ``err``) and counts them."""

    def __init__(self, out, err, outputs: Set[str] = frozenset(), as_json: bool = False):
        self.out, self.err = out, err
        self.outputs = outputs
        self.as_json = as_json
        self.shown = 0
        self.lost = 0

    def line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            d = json.loads(text)
        except ValueError:
            print(f"{PREFIX}: skipping a line that is not JSON: {text[:80]!r}", file=self.err)
            return
        if d.get("kind") == "lost":
            self.lost += int(d.get("count", 0))
            print(lost_warning(int(d.get("count", 0))), file=self.err, flush=True)
            if self.as_json:
                print(text, file=self.out, flush=True)
            return
        if self.as_json:
            print(text, file=self.out, flush=True)
        else:
            print(format_event(d, timestamp="timestamp" in self.outputs,
                               extended="extended" in self.outputs,
                               show_id="id" in self.outputs), file=self.out, flush=True)
        self.shown += 1


class StreamEnded(Exception):
    """The data path closed the event stream (it stopped, or the lab went down)."""


def event_lines(sock: socket.socket, deadline: Optional[float] = None) -> Iterator[bytes]:
    """The event lines of a subscribed socket (hyperplane.control.subscribe), one JSON object
    each, as they arrive; returns when the monotonic ``deadline`` passes (None: never),
    StreamEnded when the data path hangs up."""
    buf = b""
    while True:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise StreamEnded()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines


def read_events(sock: socket.socket, printer: EventPrinter, count: Optional[int] = None,
                timeout: Optional[float] = None) -> str:
    """Print events from a subscribed socket until ``count`` were shown ("count") or
    ``timeout`` seconds passed ("timeout"); StreamEnded when the data path hangs up."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if count is not None and printer.shown >= count:
        return "count"
    for ln in event_lines(sock, deadline):
        printer.line(ln)
        if count is not None and printer.shown >= count:
            return "count"
    return "timeout"


# ---- the table, through a running lab's control requests ----------------------------------------
#: request(cmd, **args) -> the data path's reply (hyperplane.lab.lifecycle.request for a lab)
Request = Callable[..., Dict[str, Any]]


def spec_of(filters: Dict[str, Any]) -> Dict[str, Any]:
    """The filter dict from keyword filters (``proto="tcp", dport=80``), checked as the
    command line checks its options (UsageError naming the filter)."""
    unknown = sorted(set(filters) - set(OPTION))
    if unknown:
        raise UsageError(f"unknown filter(s) {', '.join(unknown)}; filters are "
                         f"{', '.join(OPTION)}")
    return filter_spec(types.SimpleNamespace(
        **{k: None if v is None else str(v) for k, v in filters.items()}))


def list_entries(request: Request, spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The matching connections, as ``conntrack list --json`` prints them."""
    return request("conntrack", filter=spec)["entries"]


def flush(request: Request, spec: Dict[str, Any]) -> int:
    """Delete the matching connections (all without a filter); how many were deleted."""
    return request("conntrack_flush", filter=spec)["deleted"]


def count(request: Request, spec: Dict[str, Any]) -> int:
    """How many connections match (``conntrack count``)."""
    if spec:
        return len(list_entries(request, spec))
    c = request("counters")   # cheap: the tables' sizes, without shipping the entries
    return sum(e["connections"] for e in c["enis"] + c.get("nat_gateways", []))
