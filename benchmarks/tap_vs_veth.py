"""A TAP environment against a veth one, and TAP through io_uring against read/writev.

Two labs of the bench's topology (hyperplane/bench/bench_lab.toml) with two environments each,
``environments = ["tap", "veth"]``, and the bench's data path settings (``[datapath] cpus=[1],
inbound_cpus=[0], ring_frames=16384``; clients on CPU 0, servers on CPU 1): one lab's data path
started with ``HYPERPLANE_TAP_IO=rw`` (one read/writev per packet: the TAP before), the other's
with io_uring (after). The bench's own trials (hyperplane.bench.runner: iperf3 one TCP stream,
the 64-byte UDP loss-free search with frames written on the environment's link, connection
rate, request/response) run through tap-rw, tap-io_uring and the io_uring lab's veth
environment, in ABC CBA order per repeat pair; the table gives medians and tap/veth ratios.
Also the idle data path's CPU share over a few quiet seconds (it must sleep). Run as root,
alone on the machine's CPUs:

    flock /tmp/hp-cpu.lock env PYTHONPATH=$PWD python3 benchmarks/tap_vs_veth.py \\
        --seconds 3 --repeats 2 [--tests tcp4-1,udp64,conn,rr] [--json out.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import statistics
import sys
import time
from importlib import resources

from hyperplane import labconfig, topology
from hyperplane.bench import runner as brunner
from hyperplane.bench.settings import (
    BENCH_CONFIG, CLIENT_CPU, RING_FRAMES, SERVER_CPU, Settings, parse_tests,
)
from hyperplane.lab.api import Lab

HIGHER = {"tcp4-1": True, "udp64": True, "conn": True, "rr-p50": False, "rr-p99": False}


def lab_text() -> str:
    text = resources.files("hyperplane.bench").joinpath(BENCH_CONFIG).read_text()
    assert 'environments = ["veth"]' in text
    text = text.replace('environments = ["veth"]', 'environments = ["tap", "veth"]')
    return text + (f"\n[datapath]\nring_frames = {RING_FRAMES}\ncpus = [{SERVER_CPU}]\n"
                   f"inbound_cpus = [{CLIENT_CPU}]\n")


def up(name: str, text: str, tap_io: str) -> Lab:
    old = os.environ.pop("HYPERPLANE_TAP_IO", None)
    if tap_io == "rw":
        os.environ["HYPERPLANE_TAP_IO"] = "rw"
    try:
        return Lab.up("tap_vs_veth", name, wait_active=True, config_text=text)
    finally:
        os.environ.pop("HYPERPLANE_TAP_IO", None)
        if old is not None:
            os.environ["HYPERPLANE_TAP_IO"] = old


def mode_for(label: str, lab: Lab, text: str, attach: str) -> brunner.Mode:
    plan = labconfig.resolve(labconfig.loads(text, source="tap_vs_veth"), lab.name)
    m = brunner.Mode(label, lab.name, plan, True)
    m.env = next(e for e in plan.envs if e.attach == attach)
    m.pid = lab.pid
    io = {x["name"]: x.get("io") for x in lab.counters()["links"]}
    print(f"{label}: environment {m.env.name} ({attach}), link io {io.get(m.env.name)}",
          file=sys.stderr)
    return m


def idle_cpu(pid: int, seconds: float = 3.0) -> float:
    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    a = cpu()
    time.sleep(seconds)
    return (cpu() - a) / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tests", default="tcp4-1,udp64,conn,rr")
    ap.add_argument("--json")
    args = ap.parse_args()
    s = Settings(tests=parse_tests(args.tests), seconds=args.seconds, repeats=args.repeats,
                 conn_count=5000, rr_count=5000)
    s.validate()
    text = lab_text()
    tag = secrets.token_hex(2)
    names = {"rw": f"tv{tag}r", "io_uring": f"tv{tag}u"}
    created = []
    try:
        labs = {}
        for io, name in names.items():
            labs[io] = up(name, text, io)
            created.append(name)
        modes = [mode_for("tap-rw", labs["rw"], text, "tap"),
                 mode_for("tap-uring", labs["io_uring"], text, "tap"),
                 mode_for("veth", labs["io_uring"], text, "veth")]
        r = brunner.Runner(s, {"hyperplane": modes[1]})
        r.figures = collections.defaultdict(dict)
        for m in modes:
            topology.sysctl(m.env.netns, "net.ipv4.ip_local_port_range", "1024 65535")
            r.warm_up(m)
        idle = {io: idle_cpu(lab.pid) for io, lab in labs.items()}
        for rep in range(s.repeats):
            order = modes if rep % 2 == 0 else modes[::-1]
            for m in order:
                for test in s.tests:
                    r.trial(m, test, rep)
        counters = {io: [x for x in lab.counters()["links"]] for io, lab in labs.items()}
    finally:
        for name in created:
            try:
                topology.teardown(name)
            except Exception as e:  # noqa: BLE001 -- report, tear the other down
                print(f"teardown {name}: {e}", file=sys.stderr)
    med = {m.mode: {k: statistics.median(v) for k, v in r.figures[m.mode].items()}
           for m in modes}
    metrics = [k for k in HIGHER if k in med["veth"]]
    print(f"{'metric':10s} {'tap-rw':>12s} {'tap-uring':>12s} {'veth':>12s} "
          f"{'rw/veth':>8s} {'uring/veth':>10s}")
    for k in metrics:
        v = med["veth"][k]
        a, b = med["tap-rw"][k], med["tap-uring"][k]
        ra, rb = (a / v, b / v) if HIGHER[k] else (v / a, v / b)
        print(f"{k:10s} {a:12.2f} {b:12.2f} {v:12.2f} {ra:8.2f} {rb:10.2f}")
    print("(ratios: tap over veth, for latency veth over tap: >= 1 is as good as veth)")
    print("idle data path CPU share: " + ", ".join(f"{k} {v:.3f}" for k, v in idle.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"figures": r.figures, "medians": med, "idle_cpu": idle,
                       "trials": r.trials, "links": counters}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
