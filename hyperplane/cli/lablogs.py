"""``hyperplane lab logs``: a lab's process logs, printed or followed (hyperplane.lab.logs)."""
from __future__ import annotations

import signal
import threading

from hyperplane.cli.common import add_json, named, print_json_line
from hyperplane.errors import EXIT_OK, EXIT_USAGE, HyperplaneError
from hyperplane.lab import logs

#: ``--lines`` when not given: the whole log without -f, its last lines with -f (as tail -f).
FOLLOW_LINES = 10


def cmd_lab_logs(args) -> int:
    if args.lines is not None and args.lines < 0:
        raise HyperplaneError(f"--lines {args.lines}: give 0 or more (how many of the last "
                              "lines to print first)", EXIT_USAGE)
    path = logs.log_file(args.name, args.service)

    def show(line: str) -> None:
        if args.json:
            print_json_line(logs.parse_line(line))
        else:
            print(line, flush=True)

    if not args.follow:
        for line in logs.read_lines(path, args.lines):
            show(line)
        return EXIT_OK
    stop = threading.Event()
    # Ctrl-C, or SIGTERM from a script, ends a follow quietly, as it ends tail -f.
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        lines = FOLLOW_LINES if args.lines is None else args.lines
        for line in logs.follow_lines(path, lines, stop=stop):
            show(line)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    return EXIT_OK


def register(labsub) -> None:
    q = named(labsub.add_parser(
        "logs", help="a lab's process log: the data path's (default), the workloads "
                     "service's or a host service's; -f follows it",
        description="Print a lab's process log: the data path's (datapath.log in the lab's "
                    "directory), the workloads service's (the functions' code and the hosts' "
                    "services) or a host service's output. With -f, keep printing new lines "
                    "like tail -F until Ctrl-C, across `lab restart` (the file is read again "
                    "when it is replaced). `--log-level debug` on `lab up` makes the logs "
                    "say more (each control request)."))
    q.add_argument("--service", default="datapath", metavar="SERVICE",
                   help=f"{', '.join(logs.SERVICES)} or a host's name (default datapath)")
    q.add_argument("--follow", "-f", action="store_true",
                   help="keep printing lines as they are written (Ctrl-C stops)")
    q.add_argument("--lines", "-n", type=int, metavar="N",
                   help=f"only the last N lines (default: all; with -f the last "
                        f"{FOLLOW_LINES})")
    add_json(q, "one JSON object per line (JSON Lines): time, logger, level, message "
                        "(null fields for a line that is not a log record)")
    q.set_defaults(func=cmd_lab_logs)
