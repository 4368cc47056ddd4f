#!/usr/bin/env python3
"""Two copies of the bench's hyperplane lab, data path variant A against B, trials alternating.

    sudo flock /tmp/hp-cpu.lock python3 benchmarks/ab_datapath.py [--b-env K=V ...]
         [--b-gro env0,eni0] [--b-ring FRAMES] [--tests tcp4-4,tcp6-4,tcp4-1] [--seconds 3]
         [--rounds 4]

Both labs are built as ``hyperplane bench`` builds its hyperplane lab (its topology, the
``[datapath]`` ring and CPUs; clients on CPU 0, servers on CPU 1). B's data path starts with the
environment variables ``--b-env`` adds (A's with ``--a-env``: for a build that reads a setting
from its environment), ``--b-ring`` as its ``ring_frames``, and GRO on the node's links named by
``--b-gro`` (``ethtool -K LINK gro on``; every other node link gro off). Then, per round and
test, one trial in each lab back to back (the bench's own iperf3 trial, order alternating by
round), so both variants meet the same minute of a machine whose speed drifts. Prints each
trial (with the hypervisor's steal time and each CPU's busy share), per variant and test the median Gbit/s and CPU s/GB
(the whole machine's busy CPU per GB moved, the bench's ``cpu_s_per_gbyte``), and the median of
the per-round ratios B/A. An A/A run (no B options) shows the noise floor. Issue 18's
"Four streams at the copy limit" in benchmarks/RESULTS.md was measured with it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hyperplane import labconfig  # noqa: E402
from hyperplane.bench import labs, runner, settings  # noqa: E402
from hyperplane.lab.api import Lab  # noqa: E402


def parse_env(items: List[str]) -> Dict[str, str]:
    bad = [x for x in items if "=" not in x]
    if bad:
        sys.exit(f"--a-env/--b-env take NAME=VALUE, not {bad[0]!r}")
    return dict(x.split("=", 1) for x in items)


def steal() -> float:
    """Seconds the hypervisor took from this machine's CPUs so far (/proc/stat)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")


def per_cpu() -> List[List[int]]:
    """(busy, all) jiffies of each CPU so far (/proc/stat; idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        rows = [ln.split() for ln in f if ln.startswith("cpu") and ln[3].isdigit()]
    return [[sum(map(int, r[1:])) - int(r[4]) - int(r[5]), sum(map(int, r[1:]))] for r in rows]


def busy_since(before: List[List[int]]) -> str:
    """Each CPU's busy share since ``before``, e.g. "cpu0 77% cpu1 100%"."""
    return " ".join(f"cpu{i} {100 * (b[0] - a[0]) / max(1, b[1] - a[1]):.0f}%"
                    for i, (a, b) in enumerate(zip(before, per_cpu())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a-env", nargs="*", default=[], metavar="K=V")
    ap.add_argument("--b-env", nargs="*", default=[], metavar="K=V")
    ap.add_argument("--a-gro", default="", metavar="LINKS", help="node links with GRO on in A")
    ap.add_argument("--b-gro", default="", metavar="LINKS", help="node links with GRO on in B")
    ap.add_argument("--b-ring", type=int, default=0, help="B's [datapath] ring_frames")
    ap.add_argument("--tests", default="tcp4-4,tcp6-4,tcp4-1")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    variants = {"A": (parse_env(args.a_env), args.a_gro), "B": (parse_env(args.b_env), args.b_gro)}
    tests = args.tests.split(",")
    names = dict(zip("AB", labs.free_lab_names().values()))
    with labs._config_file() as path, open(path, encoding="utf-8") as f:
        text = f.read()
    rings = {"A": settings.RING_FRAMES, "B": args.b_ring or settings.RING_FRAMES}
    datapath = (f"\n[datapath]\ncpus = [{settings.SERVER_CPU}]\n"
                f"inbound_cpus = [{settings.CLIENT_CPU}]\n")
    base_env = dict(os.environ)
    up: Dict[str, Lab] = {}
    try:
        modes = {}
        for v, (env, gro) in variants.items():
            os.environ.update(env)
            vtext = text + datapath + f"ring_frames = {rings[v]}\n"
            try:
                up[v] = Lab.up("ab_datapath", names[v], wait_active=True, config_text=vtext)
            finally:
                os.environ.clear()
                os.environ.update(base_env)
            plan = labconfig.resolve(labconfig.loads(vtext, source="ab"), names[v])
            modes[v] = runner.Mode("hyperplane", names[v], plan, True)
            modes[v].pid = up[v].pid
            node = f"hp-{names[v]}-node"
            out = subprocess.run(["ip", "netns", "exec", node, "ip", "-o", "link", "show"],
                                 capture_output=True, text=True, check=True).stdout
            on = set(filter(None, gro.split(",")))
            for ln in out.splitlines():
                link = ln.split(":")[1].strip().split("@")[0]
                if link != "lo":
                    subprocess.run(["ip", "netns", "exec", node, "ethtool", "-K", link, "gro",
                                    "on" if link in on else "off"], check=True,
                                   capture_output=True)
                    print(f"{v} {node} {link}: gro {'on' if link in on else 'off'}")
        r = runner.Runner(settings.Settings(tests=tests, seconds=args.seconds, repeats=1,
                                            quick=False, loss_tolerance=0.001, pin=True),
                          {"hyperplane": modes["A"], "kernel": modes["B"]})
        for v in variants:
            r.warm_up(modes[v])
        res: Dict[str, Dict[str, List]] = {v: {t: [] for t in tests} for v in variants}
        for rnd in range(args.rounds):
            for t in tests:
                fam, streams = int(t[3]), int(t.split("-")[1])
                for v in (["A", "B"] if rnd % 2 == 0 else ["B", "A"]):
                    st0, cpus0 = steal(), per_cpu()
                    x = runner._iperf3(modes[v], fam, streams, args.seconds, r._next_port())
                    res[v][t].append((x["gbps"], x["cpu_s_per_gbyte"]))
                    print(f"round {rnd + 1} {v} {t}: {x['gbps']:.2f} Gbit/s "
                          f"{x['cpu_s_per_gbyte']:.3f} CPU s/GB retr {x['retransmits']} "
                          f"steal {steal() - st0:.2f} s, {busy_since(cpus0)}", flush=True)
        print(f"A: env {variants['A'][0]} gro {variants['A'][1] or '-'}; "
              f"B: env {variants['B'][0]} gro {variants['B'][1] or '-'}")
        for t in tests:
            a, b = res["A"][t], res["B"][t]
            g = statistics.median(y[0] / x[0] for x, y in zip(a, b))
            c = statistics.median(y[1] / x[1] for x, y in zip(a, b))
            print(f"{t}: A {statistics.median(x[0] for x in a):.2f} Gbit/s "
                  f"{statistics.median(x[1] for x in a):.3f} s/GB | B "
                  f"{statistics.median(x[0] for x in b):.2f} Gbit/s "
                  f"{statistics.median(x[1] for x in b):.3f} s/GB | B/A Gbit/s {g:.3f} "
                  f"CPU/GB {c:.3f}")
    finally:
        for lab in up.values():
            lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
