"""Benchmark workloads, shared by the pytest-benchmark modules here and by ``compare.py``.

The packets are raw IPv4/TCP bytes built with :mod:`struct` (scapy is far too slow to build a
million SYNs), with correct IPv4 header and TCP checksums. Addresses come only from the
benchmark range 198.18.0.0/15 (RFC 2544):

* execution environments: 198.19.0.0/16. Flow number ``i`` is environment address
  ``198.19.0.0 + (i >> 8)`` with source port ``1024 + (i & 255)``, so 256 consecutive flows
  share one address with 256 distinct source ports (one "batch of SYNs"), and flows up to
  16,777,215 are all distinct;
* Hyperplane ENIs: 198.18.1.10, 198.18.1.11, ... (one more for every 65,000 connections);
* the VPC server: 198.18.2.20 port 443.

The test modules reach these helpers through the ``wl`` fixture rather than ``import conftest``:
with a ``tests/conftest.py`` in the same session, the module name ``conftest`` is ambiguous.
``compare.py`` loads this file by path.

Benchmarks run for both engines through the ``engine_cls`` fixture (ids ``compiled`` and
``reference``); the compiled variant fails loudly when ``hyperplane.engine._engine`` does not import,
it is never skipped (STYLE.md, example 2). No test here asserts a timing.
"""
from __future__ import annotations

import gc
import importlib
import ipaddress
import math
import os
import resource
import struct
import sys
import time
from array import array
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from hyperplane.engine.config import EngineConfig, Eni
from hyperplane.engine.constants import Direction, Verdict
from hyperplane.engine.reference import fold as _fold

OUT, IN = Direction.OUTBOUND, Direction.INBOUND

BATCH = 256                     # packets per translate_batch call in every benchmark
PORTS_PER_ENI = 65_000          # the default pool: 536..65535
SEED = 0x5EED_0F_4E_7A          # fixed, so every run hashes and permutes ports the same way

ENV_BASE = int(ipaddress.IPv4Address("198.19.0.0"))
ENI_BASE = int(ipaddress.IPv4Address("198.18.1.10"))
SERVER = "198.18.2.20"
SERVER_PORT = 443
SERVER_RAW = ipaddress.IPv4Address(SERVER).packed

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PAYLOAD_LEN = 64                # data packets: 20 IP + 20 TCP + 64 payload = 104 bytes

ENGINE_NAMES = ("compiled", "reference")


# --------------------------------------------------------------------------------------------
# Engines and configuration
# --------------------------------------------------------------------------------------------
def engine_class(name: str):
    """The engine class by name. Raises ImportError when the compiled engine is not built."""
    if name == "compiled":
        return importlib.import_module("hyperplane.engine._engine").Engine
    if name == "reference":
        return importlib.import_module("hyperplane.engine.reference").Engine
    raise ValueError(f"engine {name!r}: use 'compiled' or 'reference'")


def enis_for(connections: int) -> int:
    """ENIs needed to hold ``connections`` TCP connections (65,000 ports each)."""
    return max(1, math.ceil(connections / PORTS_PER_ENI))


def eni(k: int) -> Eni:
    return Eni(id=f"eni-{0xbe0c4000000000000 + k:017x}",
               ipv4=str(ipaddress.IPv4Address(ENI_BASE + k)))


def make_config(n_enis: int = 1, capacity: int = 65_536) -> EngineConfig:
    return EngineConfig(enis=[eni(k) for k in range(n_enis)], capacity=capacity, seed=SEED)


def new_engine(cls, connections: int, spare_enis: int = 0):
    """An engine sized for ``connections`` TCP connections (capacity and ENIs)."""
    return cls(make_config(enis_for(connections) + spare_enis, capacity=max(connections, 16)))


# --------------------------------------------------------------------------------------------
# Packets
# --------------------------------------------------------------------------------------------
def flow_addr(i: int) -> int:
    """Environment address of flow ``i`` as a 32-bit integer."""
    return ENV_BASE + (i >> 8)


def flow_sport(i: int) -> int:
    return 1024 + (i & 255)


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def ipv4_tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int = 0,
             ack: int = 0, payload: bytes = b"", ttl: int = 64) -> bytes:
    """One IPv4/TCP packet with correct checksums (DF set, no options)."""
    total = 40 + len(payload)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcsum = 0xFFFF ^ _fold(_sum16(pseudo + tcp))
    tcp = tcp[:16] + struct.pack("!H", tcsum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, ttl, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", 0xFFFF ^ _fold(_sum16(ip))) + ip[12:]
    return ip + tcp


class Batch:
    """Packets back to back in one bytearray, with the arrays ``translate_batch`` takes."""

    def __init__(self, packets: Sequence[bytes] = (), *, n: int = 0, size: int = 0):
        if packets:
            n = len(packets)
            self.buf = bytearray(b"".join(packets))
            offs, o = [], 0
            for p in packets:
                offs.append(o)
                o += len(p)
            self.offsets = array("I", offs)
            self.lengths = array("I", (len(p) for p in packets))
        else:                            # n equal-size slots, filled later (fill_syns)
            self.buf = bytearray(n * size)
            self.offsets = array("I", range(0, n * size, size))
            self.lengths = array("I", [size]) * n
        self.n = n
        self.verdicts = bytearray(n)
        self.reasons = bytearray(n)

    def run(self, eng, direction, now: float, buf=None) -> int:
        return eng.translate_batch(direction, self.buf if buf is None else buf, self.offsets,
                                   self.lengths, self.verdicts, self.reasons, now=now)

    def packet(self, k: int) -> bytes:
        o = self.offsets[k]
        return bytes(self.buf[o:o + self.lengths[k]])


# The SYN every flow opens with; the fast filler only patches the environment address, the
# source port and the two checksums (the checksums start from precomputed partial sums).
_SYN = struct.Struct("!BBHHHBBHBBBB4sHHIIBBHHH")
_SYN_LEN = 40
_SYN_SEQ = 1000
_SYN_IP_BASE = (0x4500 + _SYN_LEN + 0x4000 + (64 << 8 | 6) + _sum16(SERVER_RAW)
                + (198 << 8 | 19))
_SYN_TCP_BASE = (_sum16(SERVER_RAW) + 6 + 20 + SERVER_PORT + _sum16(struct.pack("!I", _SYN_SEQ))
                 + (5 << 12 | TH_SYN) + 65535 + (198 << 8 | 19))


def fill_syns(batch: Batch, first_flow: int, n: Optional[int] = None) -> None:
    """Write SYNs of flows ``first_flow ..`` into a Batch made with ``Batch(n=.., size=40)``."""
    n = batch.n if n is None else n
    pack, buf, server, sp = _SYN.pack_into, batch.buf, SERVER_RAW, SERVER_PORT
    ipb, tcpb = _SYN_IP_BASE, _SYN_TCP_BASE
    for k in range(n):
        i = first_flow + k
        a = i >> 8                                   # 198.19.(a >> 8).(a & 255)
        sport = 1024 + (i & 255)
        ic = ipb + a                                 # two folds are enough for these sums
        ic = (ic & 0xFFFF) + (ic >> 16)
        ic = 0xFFFF ^ ((ic & 0xFFFF) + (ic >> 16))
        tc = tcpb + a + sport
        tc = (tc & 0xFFFF) + (tc >> 16)
        tc = 0xFFFF ^ ((tc & 0xFFFF) + (tc >> 16))
        pack(buf, k * _SYN_LEN, 0x45, 0, _SYN_LEN, 0, 0x4000, 64, 6, ic,
             198, 19, (a >> 8) & 255, a & 255, server, sport, sp, _SYN_SEQ, 0, 5 << 4, TH_SYN,
             65535, tc, 0)


def syn_batch(first_flow: int, n: int) -> Batch:
    b = Batch(n=n, size=_SYN_LEN)
    fill_syns(b, first_flow)
    return b


def env_raw(i: int) -> bytes:
    return struct.pack("!I", flow_addr(i))


def data_batch(flows: Sequence[int], payload_len: int = PAYLOAD_LEN) -> Batch:
    """PSH|ACK data packets of established flows, environment -> VPC (the hot path)."""
    pl = bytes(k & 255 for k in range(payload_len))
    return Batch([ipv4_tcp(env_raw(i), SERVER_RAW, flow_sport(i), SERVER_PORT,
                           TH_PSH | TH_ACK, seq=_SYN_SEQ + 1, ack=5001, payload=pl)
                  for i in flows])


def _expect(batch: Batch, verdicts, what: str) -> None:
    ok = set(int(v) for v in verdicts)
    bad = [(k, Verdict(v).name, r) for k, (v, r) in enumerate(zip(batch.verdicts, batch.reasons))
           if v not in ok]
    if bad:
        raise AssertionError(f"{what}: {len(bad)} of {batch.n} packets got an unexpected verdict, "
                             f"first (index, verdict, reason): {bad[:3]}")


def establish(eng, flows: Sequence[int], now: float) -> Dict[int, Tuple[bytes, int]]:
    """Run the three-way handshake for ``flows`` (SYN out, SYN-ACK in, ACK out) in batches.

    A flow may already be in SYN_SENT (filled by SYNs before): its SYN then counts as a
    retransmission, which also reveals its mapping. Returns flow -> (ENI address, ENI port)."""
    mapping: Dict[int, Tuple[bytes, int]] = {}
    for s in range(0, len(flows), 4096):
        part = list(flows[s:s + 4096])
        syn = Batch([ipv4_tcp(env_raw(i), SERVER_RAW, flow_sport(i), SERVER_PORT, TH_SYN,
                              seq=_SYN_SEQ) for i in part])
        syn.run(eng, OUT, now)
        _expect(syn, (Verdict.NEW, Verdict.ESTABLISHED), "handshake SYN")
        for k, i in enumerate(part):
            o = syn.offsets[k]
            mapping[i] = (bytes(syn.buf[o + 12:o + 16]),
                          int.from_bytes(syn.buf[o + 20:o + 22], "big"))
        synack = Batch([ipv4_tcp(SERVER_RAW, mapping[i][0], SERVER_PORT, mapping[i][1],
                                 TH_SYN | TH_ACK, seq=5000, ack=_SYN_SEQ + 1) for i in part])
        synack.run(eng, IN, now)
        _expect(synack, (Verdict.REPLY,), "handshake SYN-ACK")
        ack = Batch([ipv4_tcp(env_raw(i), SERVER_RAW, flow_sport(i), SERVER_PORT, TH_ACK,
                              seq=_SYN_SEQ + 1, ack=5001) for i in part])
        ack.run(eng, OUT, now)
        _expect(ack, (Verdict.ESTABLISHED,), "handshake ACK")
    return mapping


def fill(eng, first_flow: int, n: int, now: float, chunk: int = 65_536) -> int:
    """Open ``n`` new connections (SYN_SENT) with SYN batches; returns how many were created."""
    b = Batch(n=min(chunk, max(n, 1)), size=_SYN_LEN)
    created = 0
    for s in range(0, n, b.n):
        m = min(b.n, n - s)
        fill_syns(b, first_flow + s, m)
        if m < b.n:
            created += eng.translate_batch(OUT, b.buf, b.offsets[:m], b.lengths[:m],
                                           b.verdicts, b.reasons, now=now)
        else:
            created += b.run(eng, OUT, now)
    return created


def spread(n_flows: int, k: int) -> List[int]:
    """``k`` flow numbers spread evenly over ``0 .. n_flows - 1``."""
    k = min(k, n_flows)
    return [j * n_flows // k for j in range(k)]


class Established:
    """``n_flows`` established connections (``tracked`` connections in all, the rest SYN_SENT)
    and ``templates`` data batches of BATCH packets over distinct flows spread across them.

    ``round()`` is the benchmarked unit: copy the next template into the working buffer (the
    engine translates in place and decrements the TTL, so the input must be fresh every round;
    the ~26 KB copy is part of the measured time) and translate the batch."""

    def __init__(self, cls, n_flows: int, tracked: Optional[int] = None, templates: int = 1,
                 now: float = 0.0):
        tracked = max(tracked or n_flows, n_flows)
        self.eng = new_engine(cls, tracked)
        self.now = now + 2.0
        if tracked > n_flows:                      # filler: SYN_SENT connections
            assert fill(self.eng, 0, tracked, now) == tracked
        flows = spread(tracked, n_flows)
        establish(self.eng, flows, now + 1.0)
        hot = spread(len(flows), min(len(flows), templates * BATCH))
        hot = [flows[j] for j in hot]
        self.templates = [data_batch(hot[s:s + BATCH])
                          for s in range(0, len(hot) - BATCH + 1, BATCH)]
        self.work = Batch([self.templates[0].packet(k) for k in range(BATCH)])
        self._next = 0

    def round(self) -> int:
        t = self.templates[self._next]
        self._next = (self._next + 1) % len(self.templates)
        w = self.work
        w.buf[:] = t.buf                           # in place: same length, no reallocation
        return self.eng.translate_batch(OUT, w.buf, w.offsets, w.lengths, w.verdicts,
                                        w.reasons, now=self.now)

    def check(self) -> None:
        """After a round: every packet ESTABLISHED and rewritten to an ENI address."""
        _expect(self.work, (Verdict.ESTABLISHED,), "established data")
        for k in range(BATCH):
            o = self.work.offsets[k]
            src = int.from_bytes(self.work.buf[o + 12:o + 16], "big")
            assert ENI_BASE <= src < ENI_BASE + 256, f"packet {k}: source not NATed"
            assert self.work.buf[o + 8] == 63, f"packet {k}: TTL not decremented"


class NewFlows:
    """BATCH SYNs per round, each round from a new environment address (256 distinct source
    ports), so every round's tuples are new, into a table held at a steady size.

    Each round's setup (not timed) moves the clock 1 s, expires the round opened
    ``STEADY_ROUNDS`` = 120 s earlier (the SYN_SENT timeout) and writes the round's SYNs; the
    table therefore holds about 30,500 connections whatever the number of rounds, and the
    timed call (``round``) only inserts: its own expiry pass finds nothing due."""

    STEADY_ROUNDS = 120

    def __init__(self, cls, now: float = 0.0):
        assert make_config().timeouts.tcp_syn_sent == self.STEADY_ROUNDS
        self.eng = new_engine(cls, (self.STEADY_ROUNDS + 2) * BATCH)
        self.now = now
        self.batch = Batch(n=BATCH, size=_SYN_LEN)
        self._round = 0
        for _ in range(self.STEADY_ROUNDS):        # reach the steady state (and build the pool)
            self.setup()
            self.round()
            self.check()

    def setup(self):
        """Next round (not timed): clock + 1 s, expire the oldest round, write new SYNs."""
        self.now += 1.0
        self.eng.expire(self.now)
        fill_syns(self.batch, self._round * BATCH)
        self._round += 1
        return (), {}

    def round(self) -> int:
        b = self.batch
        return self.eng.translate_batch(OUT, b.buf, b.offsets, b.lengths, b.verdicts,
                                        b.reasons, now=self.now)

    def check(self) -> None:
        _expect(self.batch, (Verdict.NEW,), "new-flow SYN")


class Expiry:
    """Each round: ``k`` connections opened at t (setup, not timed), then one ``expire(t+1000)``
    removes them all (every timeout is below 1000 s). One engine: the clock moves 2000 s a
    round, and the ports freed by one round serve the next."""

    HORIZON = 1000.0

    def __init__(self, cls, k: int):
        self.k = k
        self.eng = new_engine(cls, k)
        self.t = 0.0
        self.removed: List[int] = []

    def setup(self):
        self.t += 2 * self.HORIZON
        assert fill(self.eng, 0, self.k, self.t) == self.k
        return (self.t + self.HORIZON,), {}

    def round(self, now: float) -> int:
        n = self.eng.expire(now)
        self.removed.append(n)
        return n


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (pages * page size)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(n: int, engine: str = "compiled") -> Dict[str, object]:
    """Open ``n`` TCP connections (SYN batches of BATCH) in a fresh engine and report what it
    costs: ``memory_bytes()`` (what the C core allocated) and the RSS delta around the engine's
    construction and fill. The SYN buffer is built before the first RSS reading, so the delta
    is the engine's. Run it in a fresh process for a clean RSS delta (``compare.py
    --memory-probe N``): memory freed by earlier work can be reused without raising the RSS."""
    cls = engine_class(engine)
    syns = syn_batch(0, n)
    offs, lens = memoryview(syns.offsets), memoryview(syns.lengths)
    verdicts, reasons = bytearray(BATCH), bytearray(BATCH)
    cfg = make_config(enis_for(n), capacity=n)
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    eng = cls(cfg)
    created = 0
    for s in range(0, n, BATCH):
        e = min(n, s + BATCH)
        created += eng.translate_batch(OUT, syns.buf, offs[s:e], lens[s:e], verdicts, reasons,
                                       now=0.0)
    seconds = time.perf_counter() - t0
    rss1 = rss_bytes()
    out = dict(engine=engine, connections=len(eng), created=created, enis=len(cfg.enis),
               rss_delta=rss1 - rss0, insert_seconds=seconds,
               maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    if hasattr(eng, "memory_bytes"):
        out["memory_bytes"] = eng.memory_bytes()
        out["memory_bytes_per_conn"] = out["memory_bytes"] / max(1, len(eng))
    out["rss_bytes_per_conn"] = out["rss_delta"] / max(1, len(eng))
    return out


# --------------------------------------------------------------------------------------------
# pytest: fixtures, marker, and a packets/s summary
# --------------------------------------------------------------------------------------------
_RATES: List[Tuple[str, float, str]] = []     # (test id, units per second, unit)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "scaling: table-size scaling benchmarks (build up to 1M connections; "
                   "deselect with -m 'not scaling')")
    config.addinivalue_line(
        "markers", "memory: builds 1,000,000 connections to check the memory budget")


# Taken now: later, sys.modules["conftest"] may be tests/conftest.py.
_THIS_MODULE = sys.modules.get(__name__)


@pytest.fixture(scope="session")
def wl():
    """This module's workload helpers (``wl.Established``, ``wl.fill`` ...)."""
    return _THIS_MODULE


@pytest.fixture(params=ENGINE_NAMES)
def engine_cls(request):
    """The engine class, once per engine. A missing compiled build fails, never skips."""
    try:
        return engine_class(request.param)
    except ImportError as exc:
        pytest.fail(f"the compiled engine hyperplane.engine._engine does not import ({exc}); build it "
                    "with: pip install -e .   (or python setup.py build_ext --inplace)",
                    pytrace=False)


@pytest.fixture
def compiled_cls():
    try:
        return engine_class("compiled")
    except ImportError as exc:
        pytest.fail(f"the compiled engine hyperplane.engine._engine does not import ({exc}); build it "
                    "with: pip install -e .", pytrace=False)


@pytest.fixture
def report_rate(request):
    """``report_rate(benchmark, units_per_round, unit)``: when benchmarking is enabled, store
    units/s at the median round time in ``benchmark.extra_info`` and the end-of-run summary."""
    def report(benchmark, units: int, unit: str = "packets") -> Optional[float]:
        stats = getattr(benchmark, "stats", None)
        if not stats:
            return None                          # --benchmark-disable: ran once, not timed
        median = stats.stats.median
        rate = units / median
        benchmark.extra_info.update({f"{unit}_per_round": units, f"{unit}_per_s": rate,
                                     f"ns_per_{unit[:-1]}": 1e9 * median / units})
        _RATES.append((request.node.nodeid.split("::", 1)[-1], rate, unit))
        return rate
    return report


def pytest_terminal_summary(terminalreporter):
    if not _RATES:
        return
    tr = terminalreporter
    tr.section("hyperplane: rates at the median round time")
    width = max(len(name) for name, _, _ in _RATES)
    for name, rate, unit in _RATES:
        tr.write_line(f"{name:<{width}}  {rate:>14,.0f} {unit}/s  {1e9 / rate:>10.1f} ns/"
                      f"{unit[:-1]}")
