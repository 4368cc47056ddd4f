"""``hyperplane conntrack list|events|flush|count``: a running lab's connection table, the way
conntrack-tools shows the kernel's (the formats and filters are hyperplane.observe.conntrack's).
"""
from __future__ import annotations

import argparse
import functools
import signal
import sys
import textwrap
import threading

from hyperplane.cli import completers
from hyperplane.cli.common import add_json, command_group, named, print_json
from hyperplane.errors import EXIT_FAIL, EXIT_OK, PROG
from hyperplane.lab import lifecycle
from hyperplane.observe.conntrack import (
    EVENT_OUTPUTS, LIST_OUTPUTS, PREFIX, EventPrinter, StreamEnded, UsageError, count,
    event_kinds, filter_spec, flush, format_entry, list_entries, output_options, read_events)


def _request(name: str):
    """Lab ``name``'s control requests, as the observe functions take them."""
    return functools.partial(lifecycle.request, name)


def cmd_list(args) -> int:
    spec = filter_spec(args)
    out = output_options(args.output, LIST_OUTPUTS)
    entries = list_entries(_request(args.name), spec)
    if args.json:
        print_json(entries)
    else:
        for e in entries:
            print(format_entry(e, extended="extended" in out))
    sys.stdout.flush()
    print(f"{PREFIX}: {len(entries)} flow entries have been shown.", file=sys.stderr)
    return EXIT_OK


def cmd_flush(args) -> int:
    n = flush(_request(args.name), filter_spec(args))
    if args.json:
        print_json({"deleted": n})
    print(f"{PREFIX}: {n} flow entries have been deleted.", file=sys.stderr)
    return EXIT_OK


def cmd_count(args) -> int:
    n = count(_request(args.name), filter_spec(args))
    print_json({"count": n}) if args.json else print(n)
    return EXIT_OK


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def cmd_events(args) -> int:
    spec = filter_spec(args)
    outputs = output_options(args.output, EVENT_OUTPUTS)
    kinds = event_kinds(args.event_mask, args.rejects)
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count {args.count}: must be 1 or more")
    if args.timeout is not None and not 0 < args.timeout <= 10 * 365 * 86400:
        raise UsageError(f"--timeout {args.timeout}: must be a number of seconds > 0")
    sock = lifecycle.subscribe(args.name, spec, kinds)
    printer = EventPrinter(sys.stdout, sys.stderr, outputs, as_json=args.json)
    status, why = EXIT_OK, None
    # Ctrl-C and SIGTERM end the stream quietly, as they end conntrack -E (which installs its
    # handlers even where the shell started it with SIGINT ignored, as `cmd &` does).
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        try:
            how = read_events(sock, printer, args.count, args.timeout)
            if how == "timeout" and args.count is not None:
                status = EXIT_FAIL
                why = (f"{printer.shown} of {args.count} events within {args.timeout:g} s")
        except (KeyboardInterrupt, _Stop):
            pass
        except StreamEnded:
            status = EXIT_FAIL
            why = (f"the data path of lab {args.name!r} ended the event stream (did it stop? "
                   f"see `{PROG} lab status --name {args.name}`)")
        except OSError as e:
            status = EXIT_FAIL
            why = f"reading events from lab {args.name!r}: {e}"
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        sock.close()
    sys.stdout.flush()
    print(f"{PREFIX}: {printer.shown} flow events have been shown.", file=sys.stderr)
    if why:
        print(f"{PROG}: error: {why}", file=sys.stderr)
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
    g.add_argument("--eni", metavar="ID", help="the ENI the connection uses (eni-...)"
                   ).completer = completers.enis


def register(sub) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    group = command_group(sub, "conntrack", "the lab's connection table, like "
                               "conntrack-tools: list, events, flush, count (running lab)")

    q = named(group.add_parser(
        "list", help="one line per tracked connection (conntrack -L)", formatter_class=raw,
        description=_wrap("One line per tracked connection in conntrack -L's format, then on "
                          "stderr how many were shown.") + "\n\n" + _LINE_HELP))
    _add_filters(q)
    q.add_argument("-o", "--output", metavar="FORMAT",
                   help="extended: prefix the layer-3 protocol (ipv4 2 / ipv6 10)")
    add_json(q, "the entries as a JSON list")
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
    add_json(q, "each event as the data path's JSON line, unchanged")
    q.set_defaults(func=cmd_events)

    q = named(group.add_parser(
        "flush", help="delete the matching connections (all without filters; conntrack -D/-F)",
        description="Delete the matching connections (every one without a filter): their NAT "
                    "ports are free again and [DESTROY] events go out; then print how many "
                    "on stderr. A later packet of a deleted connection is new (outbound) or "
                    "unsolicited (inbound)."))
    _add_filters(q)
    add_json(q, "{deleted: how many} on stdout (the line on stderr stays)")
    q.set_defaults(func=cmd_flush)

    q = named(group.add_parser("count", help="how many connections are tracked "
                                             "(conntrack -C)"))
    _add_filters(q)
    add_json(q, "{count: how many}")
    q.set_defaults(func=cmd_count)


_LINE_HELP = """\
line format (libnetfilter_conntrack's):
  tcp      6 349 ESTABLISHED src=ENV dst=PEER sport=P dport=Q packets=N bytes=B \\
      src=PEER dst=ENI sport=Q dport=NATPORT packets=N bytes=B [ASSURED] mark=0 use=1 eni=ID
  protocol and number; seconds left before expiry; TCP state; the orig tuple (as the
  environment sent it) and its counters; [UNREPLIED] while nothing came back; the reply tuple
  (as the VPC answers, to the ENI address and NAT port) and its counters; [ASSURED] once the
  connection is confirmed both ways; eni= is hyperplane's."""
