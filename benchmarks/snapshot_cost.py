"""What a restart costs the connection table: Engine.snapshot() and Engine.restore() time and
blob size for N tracked connections (compiled engine), the medians of a few runs.

    python3 benchmarks/snapshot_cost.py [--sizes 1000 100000 1000000] [--runs 3]

The daemon's save (hyperplane/datapath/restore.py) adds base64 + JSON + fsync on top of snapshot(), and
holds the data path's loop meanwhile; restore happens once, before the first packet.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from array import array

from hyperplane import Direction, EngineConfig, Eni
from hyperplane.engine._engine import Engine

ENIS = [Eni(f"eni-0a1b2c3d4e5f607{i:02x}", ipv4=f"198.18.1.{10 + i}") for i in range(16)]


def udp4(src: int, sport: int) -> bytes:
    """An IPv4 UDP packet 198.18.(100+src>>8).(src&255):sport -> 198.19.0.20:53."""
    ip = bytearray(b"\x45\x00\x00\x1c\x00\x00\x00\x00\x40\x11\x00\x00" + bytes(8))
    ip[12:16] = bytes([198, 18, 100 + (src >> 8), src & 255])
    ip[16:20] = bytes([198, 19, 0, 20])
    acc = sum(int.from_bytes(ip[k:k + 2], "big") for k in range(0, 20, 2))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    ip[10:12] = (~acc & 0xFFFF).to_bytes(2, "big")
    return bytes(ip) + sport.to_bytes(2, "big") + b"\x00\x35\x00\x08\x00\x00"


def filled(n: int) -> Engine:
    """An engine holding n UDP connections (16 ENIs, so a million fit in the port pools)."""
    eng = Engine(EngineConfig(enis=ENIS, capacity=max(n, 16), seed=1))
    batch = 4096
    for start in range(0, n, batch):
        k = min(batch, n - start)
        buf = bytearray()
        for i in range(start, start + k):
            buf += udp4(i // 60000, 1024 + i % 60000)
        offsets = array("I", range(0, 28 * k, 28))
        lengths = array("I", [28] * k)
        passed = eng.translate_batch(Direction.OUTBOUND, buf, offsets, lengths, bytearray(k),
                                     bytearray(k), now=1.0)
        assert passed == k, (start, passed)
    return eng


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    print(f"{'connections':>12} {'snapshot ms':>12} {'restore ms':>11} {'blob MiB':>9} "
          f"{'us/conn save':>13} {'us/conn restore':>16}")
    for n in a.sizes:
        eng = filled(n)
        snap, rest = [], []
        for _ in range(a.runs):
            t = time.perf_counter()
            blob = eng.snapshot()
            snap.append(time.perf_counter() - t)
            fresh = Engine(EngineConfig(enis=ENIS, capacity=max(n, 16), seed=1))
            t = time.perf_counter()
            got = fresh.restore(blob, now=2.0)
            rest.append(time.perf_counter() - t)
            assert got["restored"] == n, got
        s, r = statistics.median(snap), statistics.median(rest)
        print(f"{n:>12,} {s * 1e3:>12.1f} {r * 1e3:>11.1f} {len(blob) / 2**20:>9.1f} "
              f"{s / n * 1e6:>13.3f} {r / n * 1e6:>16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
