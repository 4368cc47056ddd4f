"""``hyperplane flowlogs``: print a lab's VPC Flow Log records (the default format v2 or the
lab's custom format, read from each file's header line), once or following them."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List

from hyperplane import paths
from hyperplane.cli import completers
from hyperplane.cli.common import add_json, named
from hyperplane.datapath.flowlogs import ACCEPT, REJECT, file_name
from hyperplane.labconfig.flowformat import header_of, parse_format
from hyperplane.errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, PROG, HyperplaneError
from hyperplane.lab import lifecycle
from hyperplane.observe.flowlogs import AnyRecord, Tail, select

#: Seconds between two looks at the files with --follow.
FOLLOW_POLL = 0.2


def register(sub) -> None:
    p = named(sub.add_parser(
        "flowlogs", help="print the lab's VPC Flow Log records (default format v2, or the "
                         "lab's [flow_logs] format; per ENI)",
        description="Print the VPC Flow Log records of a lab's ENIs, sorted by start time: one "
                    "record per direction of each flow per aggregation interval ([flow_logs] "
                    "interval in the lab config), ACCEPT or REJECT, and NODATA for an idle "
                    "ENI. The files are <lab dir>/flowlogs/<eni-id>.log, each in the format "
                    "its header line names (the default v2 fields, or the lab's [flow_logs] "
                    "format of AWS's fields of versions 2 to 5).",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--eni", metavar="ID", help="only this ENI's records (interface-id)"
                   ).completer = completers.enis
    p.add_argument("--action", type=str.upper, choices=[ACCEPT, REJECT],
                   help="only ACCEPT or only REJECT records (leaves out NODATA/SKIPDATA)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing records as intervals end, like tail -f (Ctrl-C stops)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="with --follow: stop after S seconds")
    add_json(p, "one JSON object per record, with the format's field names")
    p.set_defaults(func=cmd_flowlogs)


def _print(records: List[AnyRecord], as_json: bool, out) -> None:
    for r in records:
        print(json.dumps(r.as_json()) if as_json else r.line(), file=out)
    out.flush()


def cmd_flowlogs(args, out=None) -> int:
    out = out or sys.stdout
    if args.timeout is not None and (not args.follow or not args.timeout >= 0):
        raise HyperplaneError("--timeout S: a number of seconds >= 0, and only with --follow",
                              EXIT_USAGE)
    _, plan = lifecycle.load_lab(args.name)
    cfg = plan.flow_logs
    if not cfg.enabled:
        raise HyperplaneError(f"flow logs are off for lab {args.name!r} ([flow_logs] enabled = "
                              "false in its config); set enabled = true and bring the lab up "
                              "again to record them")
    fields = parse_format(cfg.format)
    if args.action is not None and "action" not in fields:
        raise HyperplaneError(f"--action: the flow-log format of lab {args.name!r} has no "
                              "${action} field; add it to [flow_logs] format, or leave "
                              "--action out", EXIT_USAGE)
    directory = paths.flow_logs_dir(args.name)
    tail = Tail(directory)
    records = tail.new()
    if args.eni is not None and not args.follow and \
            not os.path.exists(os.path.join(directory, file_name(args.eni))):
        known = sorted({r.interface_id for r in records})
        raise HyperplaneError(f"--eni {args.eni}: no flow log for that ENI in lab "
                              f"{args.name!r}; ENIs with flow logs: "
                              f"{', '.join(known) or 'none yet'} "
                              f"(`{PROG} eni list --name {args.name}` lists the ENIs)",
                              EXIT_NOT_FOUND)
    shown = select(records, args.eni, args.action)
    if not records:
        print(f"no flow log records yet in lab {args.name!r}: they are written at the end of "
              f"each {cfg.interval} s aggregation interval, under {directory}", file=sys.stderr)
    elif not shown:
        print("no record matches", file=sys.stderr)
    if not args.json and (shown or args.follow):   # the records' own format, else the lab's
        print(shown[0].header if shown else header_of(fields), file=out)
    _print(shown, args.json, out)
    if not args.follow:
        return EXIT_OK
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(FOLLOW_POLL if deadline is None
                       else max(0.0, min(FOLLOW_POLL, deadline - time.monotonic())))
            _print(select(tail.new(), args.eni, args.action), args.json, out)
    except KeyboardInterrupt:   # Ctrl-C is how a follow normally ends
        pass
    return EXIT_OK
