"""A burst of 70,000 new connections against one ENI key, with and without the high-water mark.

AWS scales a Hyperplane ENI key out only when its ENIs are exhausted, and the next ENI takes a
while to create: every new connection in between fails. hyperplane starts the next ENI early,
when a pool crosses a high-water mark (or its recent rate predicts exhaustion within twice the
creation delay). This measures the difference, two ways:

* ``--sim``: in process, the real compiled Engine driven by the ControlPlane with a simulated
  clock (hyperplane.vpc.simulate_burst), over a grid of rates; deterministic and quick.
* ``--lab`` (root): a real lab. One execution environment sends 70,000 new UDP flows at a fixed
  rate through the data path to a server in the VPC; a connection "fails" when its datagram does
  not arrive (the engine drops it as port_exhausted while the next ENI is still Pending).

    python3 benchmarks/scaleout_burst.py --sim
    python3 benchmarks/scaleout_burst.py --lab --rate 10000 --delay 1
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from hyperplane.lab import lifecycle

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

LAB = """
[vpc]
cidr = "198.18.0.0/16"

[[subnets]]
id = "subnet-a"
cidr = "198.18.1.0/24"

[[security_groups]]
id = "sg-0a1b2c3d"

[lifecycle]
eni_create_delay = {delay}
high_water = {high_water}

[[functions]]
name = "fn-a"
environments = ["veth"]
[functions.vpc_config]
subnet_ids = ["subnet-a"]
security_group_ids = ["sg-0a1b2c3d"]

[[hosts]]
name = "server"
subnet = "subnet-a"
"""


def run_sim(args) -> list:
    from hyperplane.vpc import simulate_burst

    rows = []
    for rate in args.rates:
        for hw in (0.0, args.high_water):
            r = simulate_burst(connections=args.connections, rate=rate,
                               create_delay=args.delay, high_water=hw)
            rows.append({"mode": "sim", "rate": rate, "create_delay": args.delay,
                         "high_water": hw, "failed": r["failed"], "enis": r["enis"]})
            print(f"sim  rate={rate:>7}/s delay={args.delay:g}s high_water={hw:<4} "
                  f"failed={r['failed']:>6} enis={r['enis']}", flush=True)
    return rows


def run_lab(args) -> list:
    from hyperplane import cli
    from hyperplane import topology as lab
    from hyperplane.bench import loadgen

    rows = []
    for hw in (0.0, args.high_water):
        name = f"burst{os.getpid() % 10000}{int(hw * 100)}"
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "burst.toml")
            with open(cfg, "w") as f:
                f.write(LAB.format(delay=args.delay, high_water=hw))
            try:
                lifecycle.lab_up(cfg, name)
                _, plan = lifecycle.load_lab(name)
                env, server = plan.envs[0], plan.hosts[0]
                src, dst = env.ipv4.split("/")[0], server.ipv4.split("/")[0]
                with loadgen.UdpFlowCounter(server.netns, dst, [9000, 9001]) as srv:
                    # one flow first: the data path resolves the server's MAC before the burst
                    loadgen.udp_flow_burst(env.netns, src, dst, [9000, 9001], 1, rate=1)
                    srv.wait_total(1, 5)
                    t0 = time.monotonic()
                    loadgen.udp_flow_burst(env.netns, src, dst, [9000, 9001],
                                           args.connections - 1, rate=args.rate, first=1)
                    took = time.monotonic() - t0
                    got = srv.wait_quiet(quiet=0.5)
                c = lifecycle.ask(name, "counters")
                exhausted = sum(e["drops"]["port_exhausted"] for e in c["enis"])
                enis = lifecycle.ask(name, "enis")["enis"]
                row = {"mode": "lab", "rate": args.rate, "create_delay": args.delay,
                       "high_water": hw, "sent": args.connections, "arrived": got,
                       "failed": args.connections - got, "port_exhausted": exhausted,
                       "enis": len(enis), "burst_seconds": round(took, 2),
                       "by_source": srv.by_source()}
                rows.append(row)
                print(f"lab  rate={args.rate}/s delay={args.delay:g}s high_water={hw:<4} "
                      f"sent={args.connections} arrived={got} failed={row['failed']} "
                      f"(port_exhausted={exhausted}) enis={len(enis)} in {took:.1f}s",
                      flush=True)
            finally:
                lab.teardown(name)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", action="store_true")
    ap.add_argument("--lab", action="store_true")
    ap.add_argument("--connections", type=int, default=70000)
    ap.add_argument("--rate", type=float, default=10000.0, help="lab: new flows per second")
    ap.add_argument("--rates", type=float, nargs="*", default=[2000, 5000, 10000, 20000, 50000],
                    help="sim: rates to try")
    ap.add_argument("--delay", type=float, default=1.0, help="ENI creation delay (s)")
    ap.add_argument("--high-water", type=float, default=0.8)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if not (args.sim or args.lab):
        args.sim = True
    rows = (run_sim(args) if args.sim else []) + (run_lab(args) if args.lab else [])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
