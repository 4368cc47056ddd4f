"""``hyperplane capture``: pcap files of both sides of the NAT, packets paired up
(hyperplane.observe.capture)."""
from __future__ import annotations

import os
import shutil

from hyperplane.cli import completers
from hyperplane.cli.common import add_json, named, parse_duration, print_json
from hyperplane.errors import EXIT_OK, EXIT_USAGE, HyperplaneError
from hyperplane.lab import lifecycle
from hyperplane.observe.capture import (DEFAULT_FILTER, capture, default_dir, print_summary,
                                        resolve_envs, results_json)

CAPTURE_HELP = (
    "Capture the packets of execution environments on both sides of the data path: the "
    "environment side (their eth0, before NAT going out) and the ENI side (the ENI key's link "
    "in the node namespace, after NAT), as pcap files for tcpdump -r or Wireshark, then print "
    "each packet paired with its translated twin. Runs until --count/--duration or Ctrl-C. "
    "Needs root and tcpdump.")


def cmd_capture(args) -> int:
    name = args.name
    _, plan = lifecycle.load_lab(name)
    lifecycle.check_running(name)
    if shutil.which("tcpdump") is None:
        raise HyperplaneError("tcpdump is not installed; install it (apt-get install tcpdump) "
                              "and run the capture again")
    if args.count is not None and args.count < 1:
        raise HyperplaneError("--count must be at least 1 (packets per environment)",
                              EXIT_USAGE)
    duration = parse_duration(args.duration) if args.duration is not None else None
    if duration is not None and duration <= 0:
        raise HyperplaneError("--duration must be more than 0 (e.g. 10, 30s, 2m)", EXIT_USAGE)
    envs = resolve_envs(plan, args.env)
    lifecycle.need_privilege()
    links = lifecycle.request(name, "counters").get("links", [])
    outdir = os.path.abspath(args.dir) if args.dir else default_dir(name)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise HyperplaneError(f"--dir {outdir}: {e.strerror}", EXIT_USAGE) from None
    res = capture(plan, envs, links, outdir, bpf=args.filter or DEFAULT_FILTER,
                  count=args.count, duration=duration, ready_file=args.ready_file)
    if args.json:
        print_json(results_json(res))
    else:
        print_summary(res)
    return EXIT_OK


def register(sub) -> None:
    p = named(sub.add_parser("capture", help="pcap files of the environment side and the ENI "
                                             "side of the NAT, packets paired before/after "
                                             "(root, tcpdump)", description=CAPTURE_HELP))
    p.add_argument("--env", action="append", metavar="ENV",
                   help="an environment (e.g. fn-a-0) or a function (all its environments); "
                        "repeat for more (default: every environment attached to a VPC)"
                   ).completer = completers.environments_and_functions
    p.add_argument("--dir", help="where to write the pcap files (default: a new directory "
                                 "captures/<timestamp> in the lab's directory)")
    p.add_argument("--count", type=int, metavar="N",
                   help="stop after N packets on each environment side")
    p.add_argument("--duration", metavar="S", help="stop after this long (e.g. 10, 30s, 2m)")
    p.add_argument("--filter", metavar="BPF",
                   help=f"tcpdump filter for both sides (default {DEFAULT_FILTER!r}); NAT "
                        "changes the source, so filter on the destination or ports, e.g. "
                        "'udp port 53' or 'host 198.18.1.5'")
    p.add_argument("--ready-file", metavar="PATH",
                   help="write this JSON file (pid, dir, files) once every capture is "
                        "listening, for scripts")
    add_json(p, "the files and every packet pair (before/after NAT) as one JSON document")
    p.set_defaults(func=cmd_capture)
