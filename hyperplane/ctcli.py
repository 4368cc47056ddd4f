"""``hyperplane conntrack``: the connection table of a running lab, the way conntrack-tools
shows the kernel's.

    hyperplane conntrack list   [--name LAB] [FILTERS] [-o extended] [--json]   (conntrack -L)
    hyperplane conntrack events [--name LAB] [FILTERS] [-e MASK] [--rejects]
                                [-o extended,timestamp,id] [--count N] [--timeout S] [--json]
                                                                                (conntrack -E)
    hyperplane conntrack flush  [--name LAB] [FILTERS]                          (conntrack -D/-F)
    hyperplane conntrack count  [--name LAB] [FILTERS]                          (conntrack -C)

FILTERS, with conntrack's option names (hyperplane.ctfilter; applied inside the data path):
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
import signal
import socket
import sys
import textwrap
import threading
import time
from typing import Any, Dict, List, Optional, Set

from hyperplane.constants import TcpState, UdpState
from hyperplane.ctfilter import FIELDS, Filter, FilterError

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
# How long to wait for the data path to accept the events subscription.
SUBSCRIBE_TIMEOUT = 5.0


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
    (hyperplane.daemon.event_json). ``timestamp``: False for none, True for now, or a Unix
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


class UsageError(ValueError):
    """A bad option value: the message names the option and what it takes."""


def filter_spec(args: argparse.Namespace) -> Dict[str, Any]:
    """The filter dict (hyperplane.ctfilter field names) from the parsed options, each value
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


# ---- commands -------------------------------------------------------------------------------------
def _cli():
    from hyperplane import cli   # imported late: cli imports this module to build its parser

    return cli


def _checked(fn):
    """Run a command; a UsageError becomes the CLI's usage error (exit 2)."""
    def run(args):
        cli = _cli()
        try:
            return fn(args)
        except UsageError as e:
            raise cli.CliError(str(e), cli.EXIT_USAGE) from None
    run.__doc__ = fn.__doc__
    return run


@_checked
def cmd_list(args) -> int:
    cli = _cli()
    spec = filter_spec(args)
    out = output_options(args.output, LIST_OUTPUTS)
    entries = cli._control(args.name, "conntrack", filter=spec)["entries"]
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for e in entries:
            print(format_entry(e, extended="extended" in out))
    sys.stdout.flush()
    print(f"{PREFIX}: {len(entries)} flow entries have been shown.", file=sys.stderr)
    return cli.EXIT_OK


@_checked
def cmd_flush(args) -> int:
    cli = _cli()
    spec = filter_spec(args)
    n = cli._control(args.name, "conntrack_flush", filter=spec)["deleted"]
    print(f"{PREFIX}: {n} flow entries have been deleted.", file=sys.stderr)
    return cli.EXIT_OK


@_checked
def cmd_count(args) -> int:
    cli = _cli()
    spec = filter_spec(args)
    if spec:
        n = len(cli._control(args.name, "conntrack", filter=spec)["entries"])
    else:   # cheap: the tables' sizes, without shipping the entries
        c = cli._control(args.name, "counters")
        n = sum(e["connections"] for e in c["enis"] + c.get("nat_gateways", []))
    print(n)
    return cli.EXIT_OK


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


def read_events(sock: socket.socket, printer: EventPrinter, count: Optional[int] = None,
                timeout: Optional[float] = None) -> str:
    """Print events from a subscribed socket until ``count`` were shown ("count") or
    ``timeout`` seconds passed ("timeout"); StreamEnded when the data path hangs up."""
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = b""
    while count is None or printer.shown < count:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return "timeout"
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise StreamEnded()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            printer.line(ln)
            if count is not None and printer.shown >= count:
                return "count"
    return "count"


def subscribe(path: str, spec: Dict[str, Any], kinds: List[str]) -> socket.socket:
    """Connect to the control socket and ask for events; returns the socket once the data path
    said yes (its first line), positioned at the first event line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(SUBSCRIBE_TIMEOUT)
        s.connect(path)
        s.sendall(json.dumps({"cmd": "events", "filter": spec, "kinds": kinds}).encode() + b"\n")
        first = b""
        while not first.endswith(b"\n"):   # byte by byte: nothing after the line is consumed
            c = s.recv(1)
            if not c:
                raise OSError("the data path closed the connection")
            first += c
        reply = json.loads(first)
        if not reply.get("ok"):
            raise UsageError(reply.get("error", "refused"))
        s.settimeout(None)
        return s
    except BaseException:
        s.close()
        raise


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


@_checked
def cmd_events(args) -> int:
    cli = _cli()
    spec = filter_spec(args)
    outputs = output_options(args.output, EVENT_OUTPUTS)
    kinds = event_kinds(args.event_mask, args.rejects)
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count {args.count}: must be 1 or more")
    if args.timeout is not None and not 0 < args.timeout <= 10 * 365 * 86400:
        raise UsageError(f"--timeout {args.timeout}: must be a number of seconds > 0")
    cli._running(args.name)
    try:
        sock = subscribe(cli.control_path(args.name), spec, kinds)
    except (OSError, ValueError) as e:
        if isinstance(e, UsageError):
            raise
        raise cli.CliError(f"the data path of lab {args.name!r} does not answer ({e})") from None
    printer = EventPrinter(sys.stdout, sys.stderr, outputs, as_json=args.json)
    status, why = cli.EXIT_OK, None
    # Ctrl-C and SIGTERM end the stream quietly, as they end conntrack -E (which installs its
    # handlers even where the shell started it with SIGINT ignored, as `cmd &` does).
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        try:
            how = read_events(sock, printer, args.count, args.timeout)
            if how == "timeout" and args.count is not None:
                status = cli.EXIT_FAIL
                why = (f"{printer.shown} of {args.count} events within {args.timeout:g} s")
        except (KeyboardInterrupt, _Stop):
            pass
        except StreamEnded:
            status = cli.EXIT_FAIL
            why = (f"the data path of lab {args.name!r} ended the event stream (did it stop? "
                   f"see `{cli.PROG} lab status --name {args.name}`)")
        except OSError as e:
            status = cli.EXIT_FAIL
            why = f"reading events from lab {args.name!r}: {e}"
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        sock.close()
    sys.stdout.flush()
    print(f"{PREFIX}: {printer.shown} flow events have been shown.", file=sys.stderr)
    if why:
        print(f"{cli.PROG}: error: {why}", file=sys.stderr)
    return status


# ---- parser ---------------------------------------------------------------------------------------
def _wrap(text: str) -> str:
    return textwrap.fill(text, 79)


def _add_filters(q: argparse.ArgumentParser) -> None:
    g = q.add_argument_group("filters (conntrack's names; all must match)")
    g.add_argument("-p", "--proto", metavar="PROTO", help="tcp or udp")
    g.add_argument("-f", "--family", metavar="FAMILY", help="ipv4 or ipv6")
    g.add_argument("-s", "--orig-src", "--src", dest="orig_src", metavar="ADDR",
                   help="orig source: the execution environment's address (or a prefix)")
    g.add_argument("-d", "--orig-dst", "--dst", dest="orig_dst", metavar="ADDR",
                   help="orig destination: the peer in the VPC (address or prefix)")
    g.add_argument("-r", "--reply-src", dest="reply_src", metavar="ADDR",
                   help="reply source: the peer, as it answers (address or prefix)")
    g.add_argument("-q", "--reply-dst", dest="reply_dst", metavar="ADDR",
                   help="reply destination: the ENI's address, after NAT (address or prefix)")
    g.add_argument("--sport", metavar="PORT", help="orig source port (the environment's)")
    g.add_argument("--dport", metavar="PORT", help="orig destination port (the peer's)")
    g.add_argument("--state", metavar="STATE",
                   help="a TCP state (SYN_SENT, ESTABLISHED, TIME_WAIT, ...) or, for UDP, "
                        "UNREPLIED or REPLIED")
    g.add_argument("--eni", metavar="ID", help="the ENI the connection uses (eni-...)")


def register(sub, named) -> None:
    """Add this module's commands to the `hyperplane` parser (`named` adds --name)."""
    cli = _cli()
    raw = argparse.RawDescriptionHelpFormatter
    group = cli._command_group(sub, "conntrack", "the lab's connection table, like "
                               "conntrack-tools: list, events, flush, count (running lab)")

    q = named(group.add_parser(
        "list", help="one line per tracked connection (conntrack -L)", formatter_class=raw,
        description=_wrap("One line per tracked connection in conntrack -L's format, then on "
                          "stderr how many were shown.") + "\n\n" + _LINE_HELP))
    _add_filters(q)
    q.add_argument("-o", "--output", metavar="FORMAT",
                   help="extended: prefix the layer-3 protocol (ipv4 2 / ipv6 10)")
    q.add_argument("--json", action="store_true", help="the entries as a JSON list")
    q.set_defaults(func=cmd_list)

    q = named(group.add_parser(
        "events", help="connection events as they happen (conntrack -E)", formatter_class=raw,
        description=_wrap(
            "Connection events as they happen, in conntrack -E's format: [NEW] when an entry "
            "is made, [UPDATE] on each state change, [DESTROY] when it expires or is "
            "flushed. The data path sends them once per tick (50 ms), never per packet. "
            "Stops on Ctrl-C (exit 0), after --count events, or after --timeout seconds; the "
            "data path stopping ends it with an error (exit 1).")
        + "\n\n" + _wrap(
            "--rejects (a hyperplane extension, not in conntrack) also shows packets the "
            "engine refused without making an entry:")
        + "\n   [REJECT] udp      17 src=198.18.1.5 dst=198.18.1.4 sport=9000 dport=41000 \\"
          "\n      reason=unsolicited eni=eni-...\n" + _wrap(
            "reason is unsolicited (an inbound packet matching no connection: AWS drops "
            "them), security_group (no egress rule allows the new connection) or tcp_not_syn "
            "(a new TCP connection that does not start with SYN).")
        + "\n\n" + _LINE_HELP))
    _add_filters(q)
    q.add_argument("-e", "--event-mask", metavar="MASK",
                   help="comma-separated NEW, UPDATE, DESTROY, REJECT or ALL "
                        "(default NEW,UPDATE,DESTROY)")
    q.add_argument("--rejects", action="store_true",
                   help="also show refused packets as [REJECT] lines (hyperplane extension)")
    q.add_argument("-o", "--output", metavar="FORMAT[,...]",
                   help="extended (layer-3 protocol), timestamp ([seconds.micros] and a tab "
                        "before each line: when it was received, as conntrack does), "
                        "id (the connection's id)")
    q.add_argument("--count", type=int, metavar="N", help="exit after N events")
    q.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="exit after this many seconds in all (like `timeout S conntrack -E`); "
                        "exit 0, or 1 when --count events had not come by then")
    q.add_argument("--json", action="store_true",
                   help="each event as the data path's JSON line, unchanged")
    q.set_defaults(func=cmd_events)

    q = named(group.add_parser(
        "flush", help="delete the matching connections (all without filters; conntrack -D/-F)",
        description="Delete the matching connections (every one without a filter): their NAT "
                    "ports are free again and [DESTROY] events go out; then print how many "
                    "on stderr. A later packet of a deleted connection is new (outbound) or "
                    "unsolicited (inbound)."))
    _add_filters(q)
    q.set_defaults(func=cmd_flush)

    q = named(group.add_parser("count", help="how many connections are tracked "
                                             "(conntrack -C)"))
    _add_filters(q)
    q.set_defaults(func=cmd_count)


_LINE_HELP = """\
line format (libnetfilter_conntrack's):
  tcp      6 349 ESTABLISHED src=ENV dst=PEER sport=P dport=Q packets=N bytes=B \\
      src=PEER dst=ENI sport=Q dport=NATPORT packets=N bytes=B [ASSURED] mark=0 use=1 eni=ID
  protocol and number; seconds left before expiry; TCP state; the orig tuple (as the
  environment sent it) and its counters; [UNREPLIED] while nothing came back; the reply tuple
  (as the VPC answers, to the ENI address and NAT port) and its counters; [ASSURED] once the
  connection is confirmed both ways; eni= is hyperplane's."""
