#!/usr/bin/env python3
"""A fast SYN scan of the ENI from the server, with flow logs on (the default).

    python3 benchmarks/scan_rate.py [--packets 40000] [--rates 50000,150000]   (root)

Brings up its own default lab (a unique name), sends ``--packets`` SYNs to ports 1.. of the
ENI's IPv4 address from the server namespace at each rate (tests/kit/wire.py's paced
IPPROTO_RAW sender), and prints what the data path counted: the eni link's rx ring drops
(frames lost before the engine saw them), ``unsolicited`` drops (every SYN should be one) and
events lost (REJECT events past events.REJECTS_PER_TICK: the flow-log interval says SKIPDATA).
The lab is taken down at the end, also on failure.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
os.environ.setdefault("HYPERPLANE_RUN_DIR", "/tmp/hp-scan-rate")
from kit.wire import ip_packet, send_raw  # noqa: E402

from hyperplane import control, paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=40_000)
    ap.add_argument("--rates", default="50000,150000", help="packets/s, comma-separated")
    a = ap.parse_args()
    name = f"scanr{os.getpid()}"
    hp = [sys.executable, "-m", "hyperplane"]
    subprocess.run(hp + ["lab", "up", "--name", name], check=True, capture_output=True)
    try:
        path = os.path.join(paths.lab_dir(name), "control.sock")
        c0 = control.request(path, "counters")
        addr = next(p["address"] for p in c0["enis"][0]["pool"] if p["family"] == 4)
        srv = f"hp-{name}-host-server"
        pkts = [ip_packet("198.18.1.5", addr, "tcp", 7000, 1 + k % 65535)
                for k in range(a.packets)]

        def eni_link(c):
            return next(x for x in c["links"] if x["role"] == "eni")

        for rate in (int(r) for r in a.rates.split(",")):
            before = control.request(path, "counters")
            t = time.monotonic()
            n = send_raw(srv, pkts, addr, rate=rate)
            dt = time.monotonic() - t
            time.sleep(1.0)
            after = control.request(path, "counters")
            unsol = (after["enis"][0]["drops"]["unsolicited"]
                     - before["enis"][0]["drops"]["unsolicited"])
            ring = eni_link(after)["rx_ring_drops"] - eni_link(before)["rx_ring_drops"]
            lost = after["events"]["lost"] - before["events"]["lost"]
            print(f"rate asked {rate:,}/s, achieved {n / dt:,.0f}/s: sent {n:,}, unsolicited "
                  f"+{unsol:,}, rx ring drops +{ring:,}, events lost +{lost:,}")
    finally:
        subprocess.run(hp + ["lab", "down", "--name", name], capture_output=True)


if __name__ == "__main__":
    main()
