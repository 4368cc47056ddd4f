"""The ``hyperplane`` command: a thin shell over the library. Each module of this package adds
one command group to the parser, parses its arguments, calls the library and prints
(``completers`` holds the shell completion's dynamic completers, which ``argcomplete`` calls
before anything is parsed when the shell is completing).

    hyperplane --version | --help
    hyperplane [--log-level debug|info|warning|error] COMMAND ...   (or HYPERPLANE_LOG_LEVEL)
    hyperplane demo [--name NAME] [--keep]       the default lab, real traffic, then down
    hyperplane lab up [CONFIG] [--name NAME]     build a lab and start its data path
    hyperplane lab status [--name NAME] [--json]
    hyperplane lab exec NODE [--name NAME] -- CMD...
    hyperplane lab restart [--name NAME]        a new data path that keeps the open connections
    hyperplane lab down [--name NAME]
    hyperplane lab list
    hyperplane lab validate [CONFIG] [--json]    check a lab file: every mistake at once (no root)
    hyperplane lab plan [CONFIG] [--name NAME] [--json]   what lab up would build (no root)
    hyperplane lab schema                        the lab file's JSON Schema, for editors
    hyperplane lab graph [CONFIG | --name NAME] [--format mermaid|dot]   draw the lab
    hyperplane lab logs [--service S] [-f] [-n N]  the data path's (or another process's) log
    hyperplane function list|update|invoke|logs  the lab's functions (VpcConfig, state, code)
    hyperplane eni list [--json]                 the lab's Hyperplane ENIs
    hyperplane clock [--advance DURATION]        the lab clock (lifecycle timers)
    hyperplane conntrack list|events|flush|count like conntrack -L / -E / -F / -C
    hyperplane stats [--json]                    packets, bytes, drops, table and pool fill
    hyperplane metrics [--listen ADDR:PORT] [--once]   a Prometheus endpoint (loopback)
    hyperplane top [--interval S] [--iterations N]     a live view of rates, drops, flows
    hyperplane flowlogs [--eni ID] [--follow]    VPC Flow Logs (v2) of the lab's ENIs
    hyperplane capture [--env ENV]               pcaps before and after NAT
    hyperplane run CONFIG [--name NAME]          the data path in the foreground
    hyperplane walk                              packets through the engine in memory (no root)
    hyperplane engine                            which engine is in use, and why
    hyperplane bench [--quick] [--json F] [--plot F]   hyperplane vs. the kernel's NAT (root)
    hyperplane completion bash|zsh|fish         shell completion code (eval "$(...)")
    hyperplane man                              the man page hyperplane(1), from this parser

Every command that prints a result takes ``--json`` (one JSON document on stdout; the streams
one object per line), except ``demo``, ``walk``, ``lab exec``, ``run``, ``metrics``, ``lab
schema``, ``lab graph``, ``completion`` and ``man`` (tests/cli/test_json_and_progress.py holds
the list and why). ``lab up`` and ``bench`` show their steps (the library's ``progress(step, done, total)`` callback, cli.progress) on stderr
when it is a terminal. ``--log-level`` is this process's logging level and is passed on to
the processes ``lab up`` and ``lab restart`` start.

Exit status: 0 success; 1 the operation failed (traffic did not pass, the data path died);
2 usage or configuration error; 3 no such lab, node or namespace; 4 not enough privilege
(CAP_NET_ADMIN); ``lab exec`` returns the command's own status (127 when it is not found).
Nothing outside this package (and ``hyperplane.__main__``) imports it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import argcomplete

from hyperplane import engine, proc
from hyperplane.cli import (bench, capture, completion, conntrack, flowlogs, lab, learn,
                            manpage, observe, vpc)
from hyperplane.cli.common import EXIT_STATUSES
from hyperplane.errors import EXIT_FAIL, EXIT_USAGE, PROG, HyperplaneError
from hyperplane.version import __version__

#: Each command group's register(sub), in the order ``--help`` lists the commands.
REGISTER = (learn.register_demo, lab.register, vpc.register, lab.register_run, learn.register,
            bench.register, conntrack.register, observe.register, flowlogs.register,
            capture.register, completion.register)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="hyperplane: a userspace connection-tracking V2N source NAT that behaves "
                    "like the Hyperplane ENI behind an AWS Lambda function attached to a VPC, "
                    "with network-namespace labs to run it in.",
        epilog="exit status: " + ", ".join(f"{code} {what}" for code, what in EXIT_STATUSES)
               + f". {engine.ENGINE_ENV}=reference selects the pure-Python "
               "reference engine (for walk; the data path needs the compiled one).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    ap.add_argument("--log-level", type=str.lower, choices=proc.LOG_LEVELS, default=None,
                    help=f"this command's log level, and the data path's and workloads "
                         f"service's that `lab up`/`lab restart` start (default: "
                         f"{proc.LOG_LEVEL_ENV}, else warning here and info there; see "
                         "`lab logs`)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTER:
        register(sub)
    manpage.register(sub, build_parser)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = build_parser()
    # When the shell is completing (_ARGCOMPLETE set by `hyperplane completion`'s code), this
    # writes the completions and exits; otherwise it returns at once.
    argcomplete.autocomplete(ap)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to `lab exec`'s command, untouched by argparse.
    tail: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)          # usage errors exit with status 2 here
    if tail:
        if getattr(args, "cmd", None) is None:
            ap.error("`--` is only for `lab exec NODE -- CMD...`")
        args.cmd = list(args.cmd) + tail
    try:   # the option, else HYPERPLANE_LOG_LEVEL (checked as strictly); neither: logging
        if args.log_level is None and os.environ.get(proc.LOG_LEVEL_ENV):  # is left alone
            args.log_level = proc.log_level()
        if args.log_level is not None:
            proc.configure_logging(args.log_level, fmt=f"{PROG}: %(levelname)s: %(message)s")
    except ValueError as e:
        ap.print_usage(sys.stderr)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.command is None:
        ap.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required; see {PROG} --help", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except HyperplaneError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:             # e.g. "hyperplane walk | head": stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL

