#!/usr/bin/env python3
"""Engines translating in parallel without I/O: does translation scale from 1 to 2 threads?

    flock /tmp/hp-cpu.lock python3 benchmarks/engine_threads.py [--repeats 6] [--json out.json]

The engine-level measure behind the data-path workers (each worker owns an engine shard, no
lock on the fast path). T threads, each with its OWN engine (same configuration and seed) and
its own copy of the packets, translate for a fixed number of rounds, released together from
a start gate (``hyperplane.engine._engine.translate_parallel``, csrc/hp_bench_threads.c; the
GIL is released). A round is the established case of compare.py, mixed: ``--flows`` (256)
established flows per engine, a quarter each IPv4 TCP, IPv4 UDP, IPv6 TCP and IPv6 UDP; the
round copies and translates one outbound batch of a data packet per flow (environment ->
VPC, 64-byte payload) and one inbound batch of a reply per flow (VPC -> ENI). Every packet
must pass (ESTABLISHED / REPLY); the figure is translations per second = packets translated
by all threads / wall time (the latest thread's end minus the earliest start). Beside it, the
on-CPU rate: each thread's packets over its own CPU time (CLOCK_THREAD_CPUTIME_ID), summed. It
still pays for what the threads do to each other (caches, memory, a shared line) but not for
time other processes took the CPU: on a small shared machine the wall-time ratio is the honest
figure and the on-CPU ratio tells how much of the gap is the machine's other load.

1 thread and 2 threads run alternately (1, 2, 1, 2, ...), ``--repeats`` times each, the same
number of rounds per thread (about ``--seconds`` for one thread); the result is the median of
each and the ratio of the medians (and the median of the pairwise ratios). Each thread is
pinned to its own CPU when the process may use at least two (said in the output); on a
2-CPU machine the second thread shares the machine with everything else that runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import os
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from hyperplane.engine.config import EngineConfig, Eni
from hyperplane.engine.constants import Direction, Verdict

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
SEED = 0x5EED_0F_4E_7A
ENI = Eni(id="eni-0be0c40000000000a", ipv4="198.18.1.10", ipv6="2001:2:0:1::10")
ENV = {4: int(ipaddress.IPv4Address("198.19.0.0")),
       6: int(ipaddress.IPv6Address("2001:2:0:100::"))}
SERVER = {4: ipaddress.IPv4Address("198.18.2.20").packed,
          6: ipaddress.IPv6Address("2001:2:0:200::20").packed}
SERVER_PORT = 443
TCP, UDP = 6, 17
TH_SYN, TH_ACK, TH_PSH = 0x02, 0x10, 0x08
PAYLOAD = bytes(range(64))
#: flow i's kind, by i % 4
KINDS = ((4, TCP), (4, UDP), (6, TCP), (6, UDP))


# ---- packets (struct, with correct checksums) ---------------------------------------------------
def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sum16(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


def packet(family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int,
           flags: int = 0, seq: int = 0, ack: int = 0, payload: bytes = b"") -> bytes:
    """One IPv4/IPv6 + TCP/UDP packet, TTL/hop limit 64, checksums set."""
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    l4 += payload
    if family == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
    c = 0xFFFF ^ _fold(_sum16(pseudo + l4))
    if proto == UDP and c == 0:
        c = 0xFFFF
    co = 16 if proto == TCP else 6
    l4 = l4[:co] + struct.pack("!H", c) + l4[co + 2:]
    if family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src,
                         dst)
        ip = ip[:10] + struct.pack("!H", 0xFFFF ^ _fold(_sum16(ip))) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src, dst)
    return ip + l4


def env_addr(i: int) -> bytes:
    family = KINDS[i % 4][0]
    a = ENV[family] + (i >> 8)
    return a.to_bytes(4 if family == 4 else 16, "big")


def env_port(i: int) -> int:
    return 1024 + (i & 255)


def _workload():
    """benchmarks/conftest.py (its Batch: packets back to back with the arrays translate_batch
    takes), loaded by path under its own name as compare.py loads it."""
    name = "hyperplane_bench_workload"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


class Batch(_workload().Batch):
    """benchmarks/conftest.py's Batch, which can say which packets got another verdict."""

    def expect(self, verdict: Verdict, what: str) -> None:
        bad = [(k, Verdict(v).name, r) for k, (v, r) in enumerate(zip(self.verdicts,
                                                                      self.reasons))
               if v != verdict]
        if bad:
            raise AssertionError(f"{what}: {len(bad)} of {self.n} packets not {verdict.name}, "
                                 f"first (index, verdict, reason): {bad[:3]}")


# ---- one engine with established flows ----------------------------------------------------------
def engine_class():
    from hyperplane.engine._engine import Engine
    return Engine


class Flows:
    """An engine with ``n`` established flows (KINDS mixed) and the data batches of a round:
    ``out`` (a data packet per flow, environment -> VPC) and ``inb`` (a reply per flow, VPC ->
    ENI). ``batches()`` gives fresh copies in translate_parallel's form."""

    NOW = 2.0

    def __init__(self, n: int = 256, cls=None):
        cls = cls or engine_class()
        self.n = n
        self.eng = cls(EngineConfig(enis=[ENI], capacity=max(16, 2 * n), seed=SEED))
        flows = range(n)
        syn = Batch([packet(*KINDS[i % 4], env_addr(i), SERVER[KINDS[i % 4][0]], env_port(i),
                            SERVER_PORT, TH_SYN, seq=1000) for i in flows])
        syn.run(self.eng, OUT, 1.0)
        syn.expect(Verdict.NEW, "first packet")
        self.mapping = []                 # flow -> (ENI address, ENI port)
        for i in flows:
            p, fam = syn.packet(i), KINDS[i % 4][0]
            a = p[12:16] if fam == 4 else p[8:24]
            self.mapping.append((a, int.from_bytes(p[(20 if fam == 4 else 40):][:2], "big")))
        reply = Batch([self._in(i, TH_SYN | TH_ACK, b"") for i in flows])
        reply.run(self.eng, IN, 1.0)
        reply.expect(Verdict.REPLY, "handshake reply")
        ack = Batch([self._out(i, TH_ACK, b"") for i in flows])
        ack.run(self.eng, OUT, 1.0)
        ack.expect(Verdict.ESTABLISHED, "handshake ACK")
        self.out_template = Batch([self._out(i, TH_PSH | TH_ACK, PAYLOAD) for i in flows])
        self.in_template = Batch([self._in(i, TH_PSH | TH_ACK, PAYLOAD) for i in flows])

    def _out(self, i, flags, payload):
        fam, proto = KINDS[i % 4]
        return packet(fam, proto, env_addr(i), SERVER[fam], env_port(i), SERVER_PORT, flags,
                      seq=1001, ack=5001, payload=payload)

    def _in(self, i, flags, payload):
        fam, proto = KINDS[i % 4]
        a, port = self.mapping[i]
        return packet(fam, proto, SERVER[fam], a, SERVER_PORT, port, flags,
                      seq=5000 if flags & TH_SYN else 5001, ack=1001, payload=payload)

    def batches(self) -> List[tuple]:
        """[(direction, buf, offsets, lengths, verdicts, reasons)] for OUT and IN: fresh
        copies of the templates (translate_parallel leaves the last round's result in them)."""
        return [(d, bytearray(b.buf), b.offsets, b.lengths, bytearray(b.n), bytearray(b.n))
                for d, b in ((OUT, self.out_template), (IN, self.in_template))]

    @property
    def packets_per_round(self) -> int:
        return 2 * self.n


def run_parallel(flows: Sequence[Flows], rounds: int, cpus: Optional[Sequence[int]]):
    from hyperplane.engine._engine import translate_parallel
    work = [f.batches() for f in flows]
    r = translate_parallel([f.eng for f in flows], work, rounds, now=Flows.NOW, cpus=cpus)
    return r, work


# ---- the benchmark ---------------------------------------------------------------------------
def measure(flows: Sequence[Flows], rounds: int, cpus) -> Dict[str, object]:
    r, work = run_parallel(flows, rounds, cpus)
    passed = sum(t["passed"] for t in r["threads"])
    dropped = sum(t["dropped"] for t in r["threads"])
    if dropped or passed != rounds * sum(f.packets_per_round for f in flows):
        raise SystemExit(f"{len(flows)} threads: {dropped} packets dropped, {passed} passed "
                         f"(expected {rounds} x {sum(f.packets_per_round for f in flows)})")
    return dict(threads=len(flows), rounds=rounds, packets=passed,
                wall_s=r["wall_seconds"], rate=passed / r["wall_seconds"],
                cpu_rate=sum(t["passed"] / t["cpu_seconds"] for t in r["threads"]),
                per_thread_s=[t["seconds"] for t in r["threads"]],
                per_thread_cpu_s=[t["cpu_seconds"] for t in r["threads"]],
                pinned=[t["pinned"] for t in r["threads"]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="the parallel case (default 2)")
    ap.add_argument("--flows", type=int, default=256, help="established flows per engine")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="about how long one measurement of 1 thread runs (default 1)")
    ap.add_argument("--repeats", type=int, default=6, help="measurements of each (default 6)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the threads")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.threads < 2 or args.flows < 4 or args.repeats < 1 or args.seconds <= 0:
        ap.error("--threads >= 2, --flows >= 4, --repeats >= 1, --seconds > 0")

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(allowed) >= args.threads
    cpus = {1: [allowed[0]] if pin else None,
            args.threads: allowed[:args.threads] if pin else None}
    if pin:
        how = f"each thread pinned to its own CPU ({', '.join(map(str, allowed[:args.threads]))})"
    elif args.no_pin:
        how = "threads not pinned (--no-pin)"
    else:
        how = (f"threads NOT pinned: the process may use {len(allowed)} CPU(s), fewer than "
               f"{args.threads}")
    engines = [Flows(args.flows) for _ in range(args.threads)]
    per_round = engines[0].packets_per_round
    # calibrate: rounds for about --seconds on one thread
    probe = measure(engines[:1], 200, cpus[1])
    rounds = max(200, int(args.seconds * probe["rate"] / per_round))
    print(f"engine-level parallel translation: {args.flows} established flows per engine "
          f"(IPv4/IPv6 x TCP/UDP), {per_round} packets per round (out + in), {rounds:,} rounds "
          f"per thread; {how}; {os.cpu_count()} CPUs online", flush=True)
    runs: Dict[int, List[dict]] = {1: [], args.threads: []}
    for k in range(args.repeats):
        for t in (1, args.threads) if k % 2 == 0 else (args.threads, 1):
            m = measure(engines[:t], rounds, cpus[t])
            runs[t].append(m)
            print(f"  {t} thread(s): {m['rate']:>14,.0f} translations/s  "
                  f"({m['wall_s']:.3f} s wall; on-CPU rate {m['cpu_rate']:>12,.0f}/s)",
                  flush=True)
    med = {t: statistics.median(m["rate"] for m in ms) for t, ms in runs.items()}
    pairs = [b["rate"] / a["rate"] for a, b in zip(runs[1], runs[args.threads])]
    ratio = med[args.threads] / med[1]
    cmed = {t: statistics.median(m["cpu_rate"] for m in ms) for t, ms in runs.items()}
    cratio = cmed[args.threads] / cmed[1]
    print(f"median: 1 thread {med[1]:,.0f}/s, {args.threads} threads "
          f"{med[args.threads]:,.0f}/s; ratio {args.threads}/1 = {ratio:.2f}x "
          f"(median of pairwise ratios {statistics.median(pairs):.2f}x, "
          f"range {min(pairs):.2f}-{max(pairs):.2f})")
    print(f"on-CPU (each thread's packets / its own CPU time, summed; leaves out the time other "
          f"processes took): 1 thread {cmed[1]:,.0f}/s, {args.threads} threads "
          f"{cmed[args.threads]:,.0f}/s; ratio {cratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            flows_per_engine=args.flows, packets_per_round=per_round, rounds=rounds,
            pinned=pin, cpus_allowed=allowed, cpu_count=os.cpu_count(),
            median_rate={str(t): r for t, r in med.items()}, ratio=ratio,
            median_cpu_rate={str(t): r for t, r in cmed.items()}, cpu_ratio=cratio,
            pairwise_ratios=pairs, runs={str(t): ms for t, ms in runs.items()},
            when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
