"""``hyperplane bench``: hyperplane side by side with the kernel's NAT and Open vSwitch's
(hyperplane.bench)."""
from __future__ import annotations

import sys

from hyperplane.bench import ENVS, MODES, TESTS, Settings, run
from hyperplane.cli import progress
from hyperplane.cli.common import print_json
from hyperplane.errors import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="hyperplane side by side with the kernel's NAT and Open vSwitch's "
                      "(iperf3 TCP, 64-byte UDP loss-free rate and overload, connection rate, "
                      "request/response latency): a table of hyperplane/kernel and "
                      "hyperplane/OVS ratios (root)",
        description="Builds the bench lab once per mode: forwarded by hyperplane, by the "
                    "kernel (ip_forward + nftables SNAT in the node namespace) and by Open "
                    "vSwitch's userspace conntrack NAT (its own ovs-vswitchd in the node "
                    "namespace), checks each is a NAT (the server sees the ENI's address, an "
                    "unsolicited SYN is dropped), runs the same tests on all in alternating "
                    "order and prints median [min-max] per mode and the ratios. Exit 0 when "
                    "it ran (the verdicts are a report), 1 when it could not, 2 on bad "
                    "options.")
    p.add_argument("--tests", default=None,
                   help=f"comma-separated, from {','.join(TESTS)} (default: all)")
    p.add_argument("--modes", default=None,
                   help=f"comma-separated, from {','.join(MODES)}; hyperplane is required "
                        "(default: all three when ovs-vswitchd is installed, else "
                        "hyperplane,kernel)")
    p.add_argument("--env", default=None,
                   help=f"the environment(s) hyperplane is measured through: "
                        f"{' or '.join(ENVS)} or veth,tap (a column hyperplane-tap and the "
                        "ratio tap/veth); kernel and OVS always use a veth (default veth)")
    p.add_argument("--workers", default=None,
                   help="data path worker counts hyperplane is measured with: 1 or 1,2 "
                        "(1,2: a second hyperplane lab with [datapath] workers = 2, the column "
                        "hyperplane-w2 and the ratio w2/w1, through the first --env only; "
                        "default 1)")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds per trial (default 5; --quick 1); a udp64 trial lasts at "
                        "most 2 s (the loss-free search runs about ten)")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats per mode, order alternating across repeats (ABBA for two "
                        "modes; default 3; --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, 1-second trials, small counts (smoke, first look)")
    p.add_argument("--json", metavar="FILE", help="write machine, settings, every trial, "
                                                  "medians, ratios and verdicts as JSON "
                                                  "('-': on stdout, the table then on stderr)")
    p.add_argument("--plot", metavar="FILE", help="draw a PNG chart (needs matplotlib)")
    p.add_argument("--loss-tolerance", type=float, default=None,
                   help="loss a 'loss-free' UDP trial may have (default 0.001)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin clients to CPU 0 and servers to CPU 1")
    p.add_argument("--keep", action="store_true",
                   help="leave the labs up afterwards (prints how to remove them)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    to_stdout = args.json == "-"
    with progress.shown("bench") as step:   # on a terminal only; lines print above it
        doc = run(Settings.from_args(args), json_path=None if to_stdout else args.json,
                  plot_path=args.plot, out=sys.stderr if to_stdout else None, on_step=step)
    if to_stdout:
        print_json(doc)
    return EXIT_OK
