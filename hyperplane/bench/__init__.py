"""``hyperplane bench``: hyperplane side by side with the kernel's own NAT (issue 6).

Theory of operation
-------------------
The same topology (``bench_lab.toml``: one environment on a veth, one ENI, one server) is built
twice, as two labs that live side by side for the whole run:

- **hyperplane** (lab ``bench<n>h``): the normal lab. The node namespace holds no address and
  forwards nothing; the data path (``hyperplane run``, started like ``lab up`` starts it)
  reads the environment's veth and the ENI's veth with AF_PACKET and translates between them.
- **kernel** (lab ``bench<n>k``): the same namespaces, links, MACs and addresses built by
  :func:`hyperplane.topology.build`, but no data path. Instead :func:`kernel_nat` turns the node
  namespace into a plain Linux NAT router, the fair baseline of ``PACKET_IO.md`` ("A fair
  side-by-side"): IPv6 back on, ``ip_forward=1`` and IPv6 forwarding, the environment's
  gateway addresses on its node-side veth (which already carries the gateway MAC the data path
  would answer with), the ENI's addresses on the ENI's veth, default routes via the VPC router,
  and one nftables table ``inet hyperplane_bench`` whose postrouting chain SNATs the
  environment's addresses to the ENI's (:func:`nft_ruleset`). Offloads are left at their
  defaults in both labs (nothing here calls ethtool).

Every test runs the same commands in both labs, from the environment's namespace to the
server's, alternating the modes in ABBA order across repeats (hyperplane, kernel | kernel,
hyperplane | ...), so a slow drift of the machine (thermal, another tenant, the lead engineer
rebuilding the extension) hits both modes alike:

- ``tcp4-1``, ``tcp4-4``, ``tcp6-1``, ``tcp6-4``: iperf3, 1 or 4 streams, IPv4 or IPv6,
  Gbit/s received (``end.sum_received``).
- ``udp64``: the highest loss-free rate of 64-byte UDP payloads, one flow, IPv4 (RFC 2544
  section 26.1 "throughput", with a loss tolerance because a shared 2-core VM drops the odd
  packet that no NAT lost): :func:`find_loss_free` doubles the offered rate until a trial
  loses, then bisects. Then **overload**: both modes are offered twice hyperplane's loss-free
  rate (the same offered load) and report what they deliver, also as a fraction of their own
  loss-free rate: a NAT that livelocks under overload delivers far less than it could. The
  verdict counts only if the sender really reached that load (:func:`overload_load`). The
  sender writes whole, prebuilt frames on the environment's link (``hp-traffic udp-send
  --link``): through a UDP socket it reached ~300 kpps and could not offer "twice".
- ``conn``: new TCP connections per second (RFC 9693's connection establishment rate); each
  connection is connect, one byte each way (request and echo), close with RST.
- ``rr``: request/response round trips of 64 bytes on one TCP connection: p50 and p99
  microseconds (lower is better).

The generators are iperf3 and ``hp-traffic`` (``hyperplane/bench/tools/hp_traffic_*.c``, driven through
:mod:`hyperplane.bench.traffic`): Python would be the bottleneck. Client-side tools run on CPU 0 and
server-side tools on CPU 1 in both modes (``--no-pin``: unpinned). The data path's veth rings
are 16,384 frames deep (``[datapath] ring_frames``, :data:`RING_FRAMES`). Its loop is pinned
to the server's CPU (``[datapath] cpus = [1]``), away from the sender: the kernel's forwarding
runs in the sender's own system call (veth), so it is always on the sender's CPU, and a
scheduler that moves the data path onto that CPU too halves its throughput (measured:
benchmarks/RESULTS.md). Its inbound worker (``inbound_cpus = [0]``) does the VPC ->
environment direction on the client's CPU: a send on a veth runs the receiver's stack, so the
environment's receive path then runs beside the environment (connections +17 %). ``--no-pin``
leaves all of it to the scheduler.

The medians, spreads, ratios, the loss-free search and the verdicts are plain functions without
I/O (:func:`summarize`, :func:`find_loss_free`, :func:`verdicts`, ...), unit-tested with fake
measurements.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from importlib import resources
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from hyperplane import engine, labconfig, netns, paths, proc, topology
from hyperplane.bench import traffic
from hyperplane.errors import HyperplaneError, LabError
from hyperplane.lab.api import Lab
from hyperplane.labconfig import Plan, bare
from hyperplane.version import __version__

__all__ = ["BenchError", "TESTS", "MODES", "METRICS", "Settings", "parse_tests",
           "bench_config", "kernel_plan", "nft_ruleset", "kernel_nat", "loss", "is_loss_free",
           "find_loss_free", "abba", "median", "summarize", "verdicts", "report_json",
           "print_table", "plot", "run", "register", "NFT_TABLE"]

TESTS = ("tcp4-1", "tcp4-4", "tcp6-1", "tcp6-4", "udp64", "conn", "rr")
MODES = ("hyperplane", "kernel")
#: The nftables table kernel mode loads into the node namespace.
NFT_TABLE = "hyperplane_bench"
BENCH_CONFIG = "bench_lab.toml"

#: The rows of the result table: metric -> (unit, higher is better, what it is). A test gives
#: one row, except udp64 (loss-free rate, and the overload row) and rr (p50 and p99).
METRICS: Dict[str, Tuple[str, bool, str]] = {
    "tcp4-1": ("Gbit/s", True, "TCP IPv4, 1 stream (iperf3)"),
    "tcp4-4": ("Gbit/s", True, "TCP IPv4, 4 streams (iperf3)"),
    "tcp6-1": ("Gbit/s", True, "TCP IPv6, 1 stream (iperf3)"),
    "tcp6-4": ("Gbit/s", True, "TCP IPv6, 4 streams (iperf3)"),
    "udp64": ("pps", True, "highest loss-free 64-byte UDP rate, IPv4, 1 flow"),
    "udp64-overload": ("pps", True, "64-byte UDP delivered at 2x hyperplane's loss-free rate"),
    "conn": ("conn/s", True, "new TCP connections/s (connect, 1 byte each way, RST)"),
    "rr-p50": ("us", False, "TCP request/response round trip, 64 bytes, median"),
    "rr-p99": ("us", False, "TCP request/response round trip, 64 bytes, 99th percentile"),
}
TEST_METRICS = {"tcp4-1": ["tcp4-1"], "tcp4-4": ["tcp4-4"], "tcp6-1": ["tcp6-1"],
                "tcp6-4": ["tcp6-4"], "udp64": ["udp64", "udp64-overload"], "conn": ["conn"],
                "rr": ["rr-p50", "rr-p99"]}

#: The issue's "Done means": ratios at least 1.0 on these, and under twice the loss-free UDP
#: load hyperplane still delivers at least 90 % of its loss-free rate.
RATIO_TARGET = 1.0
OVERLOAD_TARGET = 0.90
#: ... under this multiple of its loss-free rate.
OVERLOAD_LOAD = 2.0
#: A trial "reached" its offered rate when the sender achieved at least this share of it.
REACHED = 0.95
#: hyperplane's ENI has 65,000 ports and starts a second ENI at the lab's high-water mark
#: (0.8, i.e. 52,000 ports in use); a conn trial must stay below that (see _conn_gap).
MAX_CONN_COUNT = 50_000
#: Closed (RST) connections hold their ENI port for the TCP CLOSE timeout (10 s, DESIGN.md /
#: hyperplane.engine.config.Timeouts.tcp_close; the kernel's nf_conntrack_tcp_timeout_close is 10 s
#: too) plus the port reuse delay (2 s).
CONN_DRAIN = 10.0 + 2.0 + 1.0
#: Server ports: every trial gets the next one (see _next_port).
PORT_BASE = 20000
CLIENT_CPU, SERVER_CPU = 0, 1
#: hyperplane mode's [datapath] ring_frames: 16,384 frames of 2 KiB per veth link (32 MiB,
#: 94 ms of 64-byte packets at 175 kpps) instead of the default 4,096. With the default, 7 of
#: 10 three-second trials at 175 kpps lost 0.5-6.6 % to ring overflow while the loop shared its
#: CPU with the UDP sink; with 16,384, none of 6 did (benchmarks/RESULTS.md).
RING_FRAMES = 16384


class BenchError(HyperplaneError):
    """The bench cannot run (or a trial failed); the message says what to do."""


# ---- settings ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Settings:
    """What one run measures. :meth:`from_args` applies ``--quick``'s small defaults."""
    tests: List[str] = dataclasses.field(default_factory=lambda: list(TESTS))
    seconds: float = 5.0
    repeats: int = 3
    quick: bool = False
    loss_tolerance: float = 0.001
    pin: bool = True
    keep: bool = False
    conn_count: int = 20_000
    conn_concurrency: int = 64
    rr_count: int = 10_000
    udp_start_rate: int = 50_000
    udp_bisect_steps: int = 5
    udp_max_rate: int = 20_000_000

    @classmethod
    def from_args(cls, args) -> "Settings":
        quick = bool(getattr(args, "quick", False))
        s = cls(quick=quick)
        if quick:
            s.seconds, s.repeats = 1.0, 1
            s.conn_count, s.rr_count, s.udp_bisect_steps = 2_000, 1_000, 3
        s.tests = parse_tests(getattr(args, "tests", None))
        if getattr(args, "seconds", None) is not None:
            s.seconds = float(args.seconds)
        if getattr(args, "repeats", None) is not None:
            s.repeats = int(args.repeats)
        if getattr(args, "loss_tolerance", None) is not None:
            s.loss_tolerance = float(args.loss_tolerance)
        s.pin = not getattr(args, "no_pin", False)
        if s.pin and not {CLIENT_CPU, SERVER_CPU} <= os.sched_getaffinity(0):
            progress(f"pinning needs CPUs {CLIENT_CPU} and {SERVER_CPU}; this process may use "
                      f"{sorted(os.sched_getaffinity(0))}: running unpinned (as --no-pin)")
            s.pin = False
        s.keep = bool(getattr(args, "keep", False))
        s.validate()
        return s

    def validate(self) -> None:
        if not 0.5 <= self.seconds <= 600:
            raise BenchError(f"--seconds {self.seconds:g}: use 0.5 to 600", 2)
        if not 1 <= self.repeats <= 100:
            raise BenchError(f"--repeats {self.repeats}: use 1 to 100", 2)
        if not 0 <= self.loss_tolerance < 0.5:
            raise BenchError(f"--loss-tolerance {self.loss_tolerance:g}: use 0 (RFC 2544: "
                             "no loss at all) up to below 0.5; 0.001 is the default", 2)
        if not 1 <= self.conn_count <= MAX_CONN_COUNT:
            raise BenchError(f"conn count {self.conn_count}: use 1..{MAX_CONN_COUNT} (the "
                             "ENI's 65,000 ports, below its scale-out high-water mark)", 2)

    @property
    def udp_seconds(self) -> float:
        """Each loss-free search trial is at most 2 s long (a search takes about ten)."""
        return min(self.seconds, 2.0)


def parse_tests(text: Optional[str]) -> List[str]:
    """``--tests`` (comma-separated) -> the tests in the canonical order; BenchError naming
    the valid ones for an unknown name. None or empty: all of them."""
    if text is None or not text.strip():
        return list(TESTS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TESTS]
    if unknown:
        raise BenchError(f"--tests: unknown test(s) {', '.join(unknown)}; valid tests are "
                         f"{', '.join(TESTS)}", 2)
    return [t for t in TESTS if t in names]


def bench_config() -> labconfig.LabConfig:
    """The bench topology (``hyperplane/bench/bench_lab.toml``)."""
    text = resources.files(__package__).joinpath(BENCH_CONFIG).read_text("utf-8")
    return labconfig.loads(text, source=BENCH_CONFIG)


# ---- kernel mode -------------------------------------------------------------------------------
def _prefixlen(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).prefixlen


def kernel_plan(plan: Plan) -> Dict[str, Any]:
    """What :func:`kernel_nat` configures in the node namespace of a lab built without a data
    path, as data (no I/O): ``sysctls`` [(key, value)] in order, ``addresses``
    [(ifname, "addr/plen")], ``routes`` [(destination, gateway, ifname)] and ``nft`` (the
    ruleset text). Needs exactly one ENI (the bench lab has one) and veth environments only:
    the kernel cannot drive a TAP whose fd nobody holds."""
    if len(plan.enis) != 1:
        raise BenchError(f"kernel mode routes everything out of one ENI; lab {plan.name!r} "
                         f"has {len(plan.enis)}")
    eni = plan.enis[0]
    envs = [e for e in plan.envs if e.eni == eni.id]
    taps = [e.name for e in envs if e.attach != "veth" or not e.node_ifname]
    if taps:
        raise BenchError(f"kernel mode needs veth environments; {', '.join(taps)} are TAPs, "
                         "which only a data path holding their fd can drive")
    links = [e.node_ifname for e in envs] + [eni.node_ifname]
    sysctls: List[Tuple[str, Any]] = []
    # Link-local addresses appear the moment IPv6 comes back on: no DAD, so nothing waits.
    for scope in ["all", "default"] + links:
        sysctls.append((f"net.ipv6.conf.{scope}.accept_dad", 0))
    for scope in ["all", "default"] + links:
        sysctls.append((f"net.ipv6.conf.{scope}.disable_ipv6", 0))
    sysctls += [("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1)]
    addresses: List[Tuple[str, str]] = []
    for e in envs:
        addresses.append((e.node_ifname, f"{e.gw4}/{_prefixlen(e.ipv4)}"))
        if e.gw6 and e.ipv6:
            addresses.append((e.node_ifname, f"{e.gw6}/{_prefixlen(e.ipv6)}"))
    addresses.append((eni.node_ifname, f"{eni.ipv4}/{_prefixlen(eni.prefix4)}"))
    if eni.ipv6 and eni.prefix6:
        addresses.append((eni.node_ifname, f"{eni.ipv6}/{_prefixlen(eni.prefix6)}"))
    routes = [("0.0.0.0/0", eni.router4, eni.node_ifname)]
    if eni.ipv6 and eni.router6:
        routes.append(("::/0", eni.router6, eni.node_ifname))
    return {"namespace": plan.node_ns, "sysctls": sysctls, "addresses": addresses,
            "routes": routes, "nft": nft_ruleset(plan)}


def nft_ruleset(plan: Plan) -> str:
    """The node namespace's NAT in kernel mode: one table, one postrouting chain, one SNAT rule
    per family and environment, to the environment's ENI address (``nft -f -`` loads it)."""
    eni = plan.enis[0]
    rules = []
    for e in plan.envs:
        if e.eni != eni.id:
            continue
        net4 = ipaddress.ip_interface(e.ipv4).network
        rules.append(f'oifname "{eni.node_ifname}" ip saddr {net4} snat ip to {eni.ipv4}')
        if e.ipv6 and eni.ipv6:
            net6 = ipaddress.ip_interface(e.ipv6).network
            rules.append(f'oifname "{eni.node_ifname}" ip6 saddr {net6} '
                         f'snat ip6 to {eni.ipv6}')
    body = "".join(f"\t\t{r}\n" for r in rules)
    return (f"table inet {NFT_TABLE} {{\n"
            "\tchain postrouting {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            f"{body}"
            "\t}\n"
            "}\n")


def kernel_nat(plan: Plan) -> Dict[str, Any]:
    """Make the node namespace of a lab built by :func:`hyperplane.topology.build` (and no data
    path) a kernel NAT router: :func:`kernel_plan`, applied. Everything lives in the lab's
    namespaces, so the lab's own teardown removes it. Returns the plan it applied."""
    from pyroute2 import IPRoute

    kp = kernel_plan(plan)
    ns = kp["namespace"]
    for key, value in kp["sysctls"]:
        topology.sysctl(ns, key, value)
    with netns.entered(ns):
        ipr = IPRoute()   # bound to the namespace it was opened in
    try:
        for ifname, cidr in kp["addresses"]:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise BenchError(f"kernel mode: no interface {ifname} in {ns}")
            addr, plen = cidr.split("/")
            v6 = ":" in addr
            ipr.addr("add", index=idx[0], address=addr, prefixlen=int(plen),
                     **({"family": socket.AF_INET6, "flags": topology.IFA_F_NODAD} if v6 else {}))
        for dst, gw, ifname in kp["routes"]:
            ipr.route("add", dst=dst, gateway=gw, oif=ipr.link_lookup(ifname=ifname)[0],
                      **({"family": socket.AF_INET6} if ":" in dst else {}))
    finally:
        ipr.close()
    try:
        topology.nft(ns, ["-f", "-"], kp["nft"])
    except LabError as e:
        raise BenchError(f"kernel mode: {e}") from None
    return kp


# ---- pure logic: loss, the loss-free search, medians, ratios, verdicts ------------------------
def loss(sent: float, delivered: float) -> float:
    """Share of the sent packets that did not arrive (0 when nothing was sent)."""
    if sent <= 0:
        return 0.0
    return max(0.0, 1.0 - delivered / sent)


def is_loss_free(sent: float, delivered: float, tolerance: float) -> bool:
    """RFC 2544's "no loss", with ``tolerance``: delivered >= (1 - tolerance) * sent."""
    return sent > 0 and delivered >= (1.0 - tolerance) * sent


def find_loss_free(measure: Callable[[int], Dict[str, Any]], start_rate: int,
                   tolerance: float, steps: int = 5, max_rate: int = 20_000_000,
                   reached: float = REACHED) -> Dict[str, Any]:
    """The highest loss-free rate: offer ``start_rate`` packets/s, double while the trial is
    loss-free, then bisect ``steps`` times between the last loss-free and the first lossy rate.

    ``measure(rate)`` runs one trial and returns at least ``sent``, ``delivered``, ``seconds``
    and ``rate`` (what the sender achieved, packets/s). When a loss-free trial's sender fell
    short of the offered rate (below ``reached`` of it), the generator is the limit, not the
    NAT: the search stops there and says so (``generator_limited``). When even ``start_rate``
    loses, the bisection goes down from it (half, a quarter, ...); if nothing is loss-free the
    result's ``rate`` is 0.

    Returns ``rate`` (delivered packets/s of the best loss-free trial), ``offered`` (its
    offered rate), ``loss`` (at it), ``first_lossy`` (the lowest offered rate that lost),
    ``generator_limited``, ``capped`` (stopped at ``max_rate``) and every ``trials`` entry."""
    trials: List[Dict[str, Any]] = []

    def probe(rate: int) -> Dict[str, Any]:
        r = dict(measure(int(rate)))
        r["offered"] = int(rate)
        r["loss"] = loss(r["sent"], r["delivered"])
        r["loss_free"] = is_loss_free(r["sent"], r["delivered"], tolerance)
        r["delivered_rate"] = r["delivered"] / r["seconds"] if r["seconds"] > 0 else 0.0
        trials.append(r)
        return r

    def result(best: Optional[Dict[str, Any]], hi: Optional[int], **flags) -> Dict[str, Any]:
        out = {"rate": best["delivered_rate"] if best else 0.0,
               "offered": best["offered"] if best else 0,
               "achieved": best["rate"] if best else 0.0,
               "loss": best["loss"] if best else (trials[-1]["loss"] if trials else 0.0),
               "first_lossy": hi, "generator_limited": False, "capped": False,
               "tolerance": tolerance, "trials": trials}
        out.update(flags)
        return out

    start_rate = max(1, int(start_rate))
    best: Optional[Dict[str, Any]] = None
    lo, hi, rate = 0, None, start_rate
    while True:
        t = probe(rate)
        if not t["loss_free"]:
            hi = rate
            break
        best, lo = t, rate
        if t["rate"] < reached * rate:
            return result(best, None, generator_limited=True)
        if rate * 2 > max_rate:
            return result(best, None, capped=True)
        rate *= 2
    for _ in range(max(0, steps)):
        mid = (lo + hi) // 2
        if mid <= lo or mid >= hi:
            break
        t = probe(mid)
        if t["loss_free"]:
            best, lo = t, mid
        else:
            hi = mid
    return result(best, hi)


def abba(repeats: int) -> List[Tuple[str, str]]:
    """The mode order of each repeat: hyperplane first, then kernel first, and so on (ABBA),
    so a drift over time does not favour either mode."""
    return [MODES if r % 2 == 0 else MODES[::-1] for r in range(repeats)]


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def ratio_of(h: Optional[float], k: Optional[float]) -> Optional[float]:
    """hyperplane's figure over the kernel's; None when either is missing or the kernel's is 0
    (also used by benchmarks/e2e_scaling.py)."""
    if h is None or k is None or k == 0:
        return None
    return h / k


def summarize(figures: Dict[str, Dict[str, List[float]]]) -> Dict[str, Dict[str, Any]]:
    """``figures[mode][metric]`` = one value per repeat -> per metric: unit, which way is
    better, each mode's median/min/max/values and the ratio hyperplane median / kernel median
    (None when a side is missing or the kernel's median is 0). Metrics in METRICS order."""
    out: Dict[str, Dict[str, Any]] = {}
    for metric, (unit, higher, what) in METRICS.items():
        per = {m: list(figures.get(m, {}).get(metric, [])) for m in MODES}
        if not any(per.values()):
            continue
        row: Dict[str, Any] = {"unit": unit, "better": "higher" if higher else "lower",
                               "what": what}
        for m in MODES:
            v = per[m]
            row[m] = {"median": median(v), "min": min(v) if v else None,
                      "max": max(v) if v else None, "values": v}
        row["ratio"] = ratio_of(row["hyperplane"]["median"], row["kernel"]["median"])
        out[metric] = row
    return out


def verdicts(summary: Dict[str, Dict[str, Any]],
             overload_fraction: Optional[float] = None,
             overload_load: Optional[float] = None) -> List[Dict[str, Any]]:
    """The issue's "Done means", for what was measured: TCP ratios (IPv4 and IPv6: every
    stream count run) >= 1.0, the loss-free UDP ratio >= 1.0, the connection-rate ratio >= 1.0,
    and hyperplane delivering >= 90 % of its loss-free rate under twice that load
    (``overload_fraction``: its median delivered / its median loss-free rate). The last one is
    shown only when the sender really offered twice the load: ``overload_load`` is the median
    rate hyperplane's sender reached over its loss-free rate, and below ``2 x REACHED`` the
    verdict misses with a ``why`` (a generator that cannot offer the load proves nothing)."""
    out: List[Dict[str, Any]] = []

    def ratio_check(name: str, metrics: List[str]) -> None:
        ratios = [summary[m]["ratio"] for m in metrics if m in summary]
        if not ratios:
            return
        worst = None if any(r is None for r in ratios) else min(ratios)
        out.append({"name": name, "metrics": [m for m in metrics if m in summary],
                    "value": worst, "target": RATIO_TARGET, "kind": "ratio",
                    "meets": worst is not None and worst >= RATIO_TARGET})

    ratio_check("TCP throughput IPv4 (hyperplane/kernel)", ["tcp4-1", "tcp4-4"])
    ratio_check("TCP throughput IPv6 (hyperplane/kernel)", ["tcp6-1", "tcp6-4"])
    ratio_check("loss-free 64-byte UDP rate (hyperplane/kernel)", ["udp64"])
    ratio_check("connection rate (hyperplane/kernel)", ["conn"])
    if "udp64-overload" in summary:
        offered = overload_load is not None and overload_load >= OVERLOAD_LOAD * REACHED
        v = {"name": "hyperplane under 2x loss-free UDP load (share of its loss-free "
                     "rate delivered; no livelock)",
             "metrics": ["udp64-overload"], "value": overload_fraction,
             "target": OVERLOAD_TARGET, "kind": "fraction", "load": overload_load,
             "meets": offered and overload_fraction is not None
             and overload_fraction >= OVERLOAD_TARGET}
        if not offered:
            v["why"] = ("not shown: the sender offered only "
                        + ("an unknown load" if overload_load is None
                           else f"{overload_load:.2f}x the loss-free rate")
                        + f", not {OVERLOAD_LOAD:g}x")
        out.append(v)
    return out


def overload_load(trials: List[Dict[str, Any]],
                  summary: Dict[str, Dict[str, Any]]) -> Optional[float]:
    """The load hyperplane's overload trials really offered, as a multiple of its loss-free
    rate: the median rate its sender reached over the median loss-free rate."""
    rates = [t["raw"].get("rate") for t in trials
             if t["mode"] == "hyperplane" and t["test"] == "udp64-overload"]
    base = summary.get("udp64", {}).get("hyperplane", {}).get("median")
    return ratio_of(median([r for r in rates if r is not None]), base)


def overload_fractions(summary: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Per mode: median delivered under overload / median loss-free rate."""
    out: Dict[str, Optional[float]] = {m: None for m in MODES}
    if "udp64-overload" in summary and "udp64" in summary:
        for m in MODES:
            out[m] = ratio_of(summary["udp64-overload"][m]["median"], summary["udp64"][m]["median"])
    return out


# ---- the report ------------------------------------------------------------------------------
def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return {"cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "hyperplane": __version__,
            "engine": engine.ENGINE, "hostname": socket.gethostname(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def cpu_times() -> Tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds elapsed), from /proc/stat's ``cpu``
    line: busy = everything but idle and iowait, summed over CPUs."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])          # user nice system idle iowait irq softirq steal
    return (total - fields[3] - fields[4]) / hz, total / hz


def cpu_cost(trials: List[Dict[str, Any]]) -> Dict[str, Dict[str, Optional[float]]]:
    """Per TCP test and mode, the median CPU seconds the whole machine spent per GB moved
    (``cpu_s_per_gbyte`` of the trials), and the hyperplane/kernel ratio: what the throughput
    ratios do not show when a mode is held back by something else than CPU."""
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for test in TESTS:
        if not test.startswith("tcp"):
            continue
        row: Dict[str, Optional[float]] = {}
        for mode in MODES:
            vals = [t["raw"].get("cpu_s_per_gbyte") for t in trials
                    if t["mode"] == mode and t["test"] == test]
            row[mode] = median([v for v in vals if v is not None])
        if row["hyperplane"] is None and row["kernel"] is None:
            continue
        row["ratio"] = ratio_of(row["hyperplane"], row["kernel"])
        out[test] = row
    return out


def report_json(settings: Settings, trials: List[Dict[str, Any]],
                figures: Dict[str, Dict[str, List[float]]], *,
                machine_info: Optional[Dict[str, Any]] = None,
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``--json`` document: machine, settings, every trial's raw figures, and per metric
    the medians, spreads and ratios, then the verdicts."""
    summary = summarize(figures)
    fractions = overload_fractions(summary)
    load = overload_load(trials, summary)
    doc = {
        "machine": machine_info if machine_info is not None else machine(),
        "settings": dataclasses.asdict(settings),
        "trials": trials,
        "figures": figures,
        "summary": summary,
        "ratios": {m: row["ratio"] for m, row in summary.items()},
        "overload_fraction": fractions,
        "overload_load": load,
        "verdicts": verdicts(summary, fractions["hyperplane"], load),
        "cpu_cost": cpu_cost(trials),
    }
    doc.update(extra or {})
    return doc


def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("Gbit/s", "%"):
        return f"{value:.2f}"
    if unit == "us":
        return f"{value:.1f}"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def _num(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def cell(side: Dict[str, Any], unit: str) -> str:
    """One mode's summary as a table cell: "median [min-max]" (just the value for one)."""
    if side["median"] is None:
        return "-"
    if len(side["values"]) == 1:
        return _fmt(side["median"], unit)
    return (f"{_fmt(side['median'], unit)} "
            f"[{_fmt(side['min'], unit)}-{_fmt(side['max'], unit)}]")


def print_table(doc: Dict[str, Any], out=None) -> None:
    """The summary as a rich table, then the verdict lines."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = out or sys.stdout
    width = shutil.get_terminal_size().columns if out.isatty() else 130
    console = Console(file=out, width=max(100, width))
    m = doc["machine"]
    s = doc["settings"]
    t = Table(title=escape(f"hyperplane bench: {m.get('cpu')} x{m.get('nproc')}, Linux "
                           f"{m.get('kernel')}; {s['repeats']} repeat(s), {s['seconds']:g} s "
                           "trials, median [min-max]"))
    for col, just in (("test", "left"), ("unit", "left"), ("hyperplane", "right"),
                      ("kernel", "right"), ("ratio h/k", "right"), ("", "left")):
        t.add_column(col, justify=just, no_wrap=True)
    fr = doc.get("overload_fraction") or {}
    for metric, row in doc["summary"].items():
        cells = [cell(row[mode], row["unit"]) for mode in MODES]
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        t.add_row(*(escape(c) for c in (metric, row["unit"], *cells, ratio,
                                        f"{row['better']} is better")))
        if metric == "udp64-overload":
            t.add_row(*(escape(c) for c in (
                "  / own loss-free", "share",
                *("-" if fr.get(mode) is None else f"{fr[mode]:.2f}" for mode in MODES),
                "", f"hyperplane >= {OVERLOAD_TARGET:.2f}")))
    console.print(t)
    if s.get("tests") and "udp64" in s["tests"]:
        console.print(f"loss-free = delivered >= (1 - {s['loss_tolerance']:g}) x sent "
                      "(RFC 2544 asks for zero loss; a shared VM drops the odd packet)",
                      soft_wrap=True)
    for v in doc["verdicts"]:
        value = "-" if v["value"] is None else f"{v['value']:.2f}"
        if v["value"] is not None and not v["meets"] and value == f"{v['target']:.2f}":
            value = f"{v['value']:.4f}"   # a miss that would print as the target itself
        word = "meets" if v["meets"] else "misses"
        why = f"; {v['why']}" if v.get("why") else ""
        console.print(escape(f"{word}: {v['name']} = {value} (target >= {v['target']:.2f}"
                             f"{why})"), soft_wrap=True)
    cost = doc.get("cpu_cost") or {}
    if cost:
        console.print("CPU cost, whole machine (CPU seconds per GB moved, median; lower is "
                      "better): " + "; ".join(
                          f"{test} {_num(r['hyperplane'])} vs {_num(r['kernel'])} "
                          f"(x{_num(r['ratio'])})" for test, r in cost.items()),
                      soft_wrap=True)


def plot(doc: Dict[str, Any], path: str) -> None:
    """A PNG: ratios per metric (a line at 1.0), then each metric's medians per mode with
    min-max error bars."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'hyperplane[bench]'") from None
    summary = doc["summary"]
    metrics = list(summary)
    if not metrics:
        raise BenchError("--plot: nothing was measured")
    ncols = min(4, len(metrics))
    nrows = 1 + (len(metrics) + ncols - 1) // ncols
    fig = plt.figure(figsize=(3.2 * ncols + 1, 3.0 * nrows + 0.6))
    grid = fig.add_gridspec(nrows, ncols)
    ax = fig.add_subplot(grid[0, :])
    ratios = [summary[m]["ratio"] or 0.0 for m in metrics]
    colors = ["tab:green" if (r >= 1.0) == (summary[m]["better"] == "higher") else "tab:red"
              for m, r in zip(metrics, ratios)]
    ax.bar(metrics, ratios, color=colors)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    shown = [r for r in ratios if r > 0]
    if shown and max(shown) / min(shown) > 4:   # one outlier would flatten the rest
        ax.set_yscale("log", base=2)
        from matplotlib.ticker import FuncFormatter
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("hyperplane / kernel")
    ax.set_title("ratio of medians (rr: lower is better; the rest: higher is better)",
                 fontsize=10)
    for i, r in enumerate(ratios):
        ax.annotate(f"{r:.2f}", (i, r), ha="center", va="bottom", fontsize=8)
    for i, metric in enumerate(metrics):
        row = summary[metric]
        a = fig.add_subplot(grid[1 + i // ncols, i % ncols])
        meds = [row[m]["median"] or 0.0 for m in MODES]
        err = [[max(0.0, (row[m]["median"] or 0.0) - (row[m]["min"] or 0.0)) for m in MODES],
               [max(0.0, (row[m]["max"] or 0.0) - (row[m]["median"] or 0.0)) for m in MODES]]
        a.bar(list(MODES), meds, yerr=err, capsize=4, color=["tab:blue", "tab:gray"])
        a.set_title(f"{metric} ({row['unit']}, {row['better']} is better)", fontsize=9)
        a.tick_params(labelsize=8)
    m = doc["machine"]
    s = doc["settings"]
    fig.suptitle(f"hyperplane bench vs. the kernel's NAT: {m.get('cpu')} x{m.get('nproc')}, "
                 f"Linux {m.get('kernel')}, {m.get('date', '')[:10]}; {s['repeats']} repeat(s) "
                 f"of {s['seconds']:g} s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


# ---- running things in the labs ----------------------------------------------------------------
def progress(msg: str) -> None:
    """A progress line on stderr (the table and --json go to stdout and the file)."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _listening(ns: str, port: int, proto: str = "tcp") -> bool:
    """Whether a socket listens (TCP) or is bound (UDP) on ``port`` in namespace ``ns``:
    /proc/thread-self/net shows the calling thread's namespace."""
    want = f":{port:04X}"
    with netns.entered(ns):
        for name in (proto, proto + "6"):
            try:
                with open(f"/proc/thread-self/net/{name}") as f:
                    next(f)
                    for line in f:
                        parts = line.split()
                        if parts[1].endswith(want) and (proto == "udp" or parts[3] == "0A"):
                            return True
            except FileNotFoundError:
                continue
    return False


class Mode:
    """One of the two labs, and how to run the tests' commands in it."""

    def __init__(self, mode: str, name: str, plan: Plan, pin: bool):
        self.mode, self.name, self.plan = mode, name, plan
        self.env = plan.envs[0]
        self.server = plan.hosts[0]
        self.s4, self.s6 = bare(self.server.ipv4), bare(self.server.ipv6)
        self.pin = pin
        self.taskset = shutil.which("taskset") if pin else None
        self.pid: Optional[int] = None   # the data path's (hyperplane mode)
        self.rings: Dict[str, int] = {}   # veth link -> its ring's frames, as the daemon says
        self.last_conn = -1e9            # monotonic end of the last conn trial

    def _ns(self, ns: str, argv: List[str], cpu: Optional[int]) -> List[str]:
        pin = [self.taskset, "-c", str(cpu)] if self.taskset and cpu is not None else []
        return ["ip", "netns", "exec", ns] + pin + argv

    def client(self, argv: List[str]) -> List[str]:
        return self._ns(self.env.netns, argv, CLIENT_CPU)

    def serverside(self, argv: List[str]) -> List[str]:
        return self._ns(self.server.netns, argv, SERVER_CPU)

    def datapath_cpu(self) -> Optional[float]:
        """CPU seconds the data path has used so far (None when there is none)."""
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def datapath_problem(self) -> str:
        """A sentence about the data path when it has died (with its log's tail), else ""."""
        if self.mode != "hyperplane":
            return ""
        if proc.pid_alive(self.pid):
            return ""
        return (f"; the data path (pid {self.pid}) has exited:\n"
                + proc.tail(paths.log_path(self.name)))


def _iperf3(mode: Mode, family: int, streams: int, seconds: float, port: int,
            timeout_extra: float = 30.0) -> Dict[str, Any]:
    """One iperf3 run; the server (``-s -1``: one test, then it exits) is started for it and
    stopped by pid afterwards, whatever happens."""
    addr = mode.s4 if family == 4 else mode.s6
    server = subprocess.Popen(
        mode.serverside(["iperf3", "-s", "-1", "-B", addr, "-p", str(port)]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _listening(mode.server.netns, port):
            if server.poll() is not None:
                raise BenchError(f"iperf3 server in {mode.server.netns} exited: "
                                 f"{server.stderr.read().decode(errors='replace').strip()}")
            if time.monotonic() > deadline:
                raise BenchError(f"iperf3 server in {mode.server.netns} did not listen on "
                                 f"port {port} within 10 s")
            time.sleep(0.02)
        argv = mode.client(["iperf3", "-c", addr, "-p", str(port), f"-{family}",
                            "-t", f"{seconds:g}", "-P", str(streams), "-J",
                            "--connect-timeout", "3000"])
        try:
            before = cpu_times()
            client = subprocess.run(argv, capture_output=True, text=True,
                                    timeout=seconds + timeout_extra)
            after = cpu_times()
        except subprocess.TimeoutExpired:
            raise BenchError(f"iperf3 -c {addr} did not finish within "
                             f"{seconds + timeout_extra:.0f} s") from None
        try:
            doc = json.loads(client.stdout)
        except ValueError:
            doc = {}
        if client.returncode != 0 or "error" in doc or "end" not in doc:
            why = (doc.get("error") or client.stderr.strip()
                   or f"exit status {client.returncode}")
            raise BenchError(f"iperf3 -c {addr} (IPv{family}, {streams} stream(s)) failed: "
                             f"{why}")
        rx = doc["end"]["sum_received"]
        tx = doc["end"].get("sum_sent", {})
        busy, wall = after[0] - before[0], after[1] - before[1]
        return {"gbps": rx["bits_per_second"] / 1e9, "bytes": rx.get("bytes"),
                "seconds": rx.get("seconds"), "retransmits": tx.get("retransmits"),
                # the whole machine's CPU time over the client's run (both endpoints and the
                # NAT, which is the point: what a byte costs end to end, in either mode)
                "cpu_busy": busy / wall if wall > 0 else None,
                "cpu_s_per_gbyte": busy / (rx["bytes"] / 1e9) if rx.get("bytes") else None}
    finally:
        proc.stop_child(server, timeout=3.0)


class Runner:
    """Runs every trial of one bench; keeps the raw trials and the per-repeat figures."""

    def __init__(self, settings: Settings, modes: Dict[str, Mode]):
        self.s = settings
        self.modes = modes
        self.trials: List[Dict[str, Any]] = []
        self.figures: Dict[str, Dict[str, List[float]]] = {m: {} for m in MODES}
        self.port = PORT_BASE
        self.t0 = time.monotonic()
        self.idle_datapath_cpu: List[float] = []

    def _next_port(self) -> int:
        """Every trial talks to a fresh server port: its flows are new to both NATs (no SYN
        meets the previous trial's closed entry for the same tuple, which the NATs treat
        differently from a new connection) and no server socket lingers between trials."""
        self.port += 1
        if self.port > 60000:
            self.port = PORT_BASE + 1
        return self.port

    def _record(self, mode: str, test: str, repeat: int, figures: Dict[str, float],
                raw: Dict[str, Any]) -> None:
        for metric, value in figures.items():
            self.figures[mode].setdefault(metric, []).append(value)
        self.trials.append({"mode": mode, "test": test, "repeat": repeat,
                            "figures": figures, "raw": raw})
        shown = ", ".join(f"{k} {_fmt(v, METRICS[k][0])} {METRICS[k][0]}"
                          for k, v in figures.items())
        progress(f"[{time.monotonic() - self.t0:5.0f} s] {mode:10s} {test:6s} "
                  f"repeat {repeat + 1}: {shown}")

    def _guard(self, mode: Mode, what: str, fn: Callable[[], Any]) -> Any:
        """Run one trial; a failure names the mode, the test and (hyperplane) the data path's
        fate. While the kernel's trial runs, the idle data path of the other lab is watched:
        its CPU time is recorded, so a busy-polling idle data path would show up."""
        other = self.modes["hyperplane"] if mode.mode == "kernel" else None
        before = other.datapath_cpu() if other else None
        t0 = time.monotonic()
        try:
            return fn()
        except BenchError as e:
            raise BenchError(f"{mode.mode} mode, {what}: {e}{mode.datapath_problem()}") from None
        except Exception as e:
            raise BenchError(f"{mode.mode} mode, {what}: {type(e).__name__}: {e}"
                             f"{mode.datapath_problem()}") from e
        finally:
            after = other.datapath_cpu() if other else None
            if before is not None and after is not None:
                wall = time.monotonic() - t0
                if wall > 0:
                    self.idle_datapath_cpu.append((after - before) / wall)

    # ---- warm-up --------------------------------------------------------------------------
    def warm_up(self, mode: Mode) -> None:
        """ARP/NDP settled, the data path's first flows done, and a clear error if the server
        is not reachable: a 1-second iperf3 per family."""
        for family in (4, 6):
            addr = mode.s4 if family == 4 else mode.s6
            try:
                _iperf3(mode, family, 1, 1.0, self._next_port(), timeout_extra=15)
            except BenchError as e:
                raise BenchError(f"{mode.mode} mode: the server {addr} is not reachable from "
                                 f"the environment over IPv{family} ({e})"
                                 f"{mode.datapath_problem()}") from None
        progress(f"[{time.monotonic() - self.t0:5.0f} s] {mode.mode:10s} warm-up done "
                  "(IPv4 and IPv6 reach the server)")

    # ---- tests ------------------------------------------------------------------------------
    def tcp(self, mode: Mode, test: str, repeat: int) -> None:
        family, streams = int(test[3]), int(test.split("-")[1])
        r = self._guard(mode, test, lambda: _iperf3(mode, family, streams, self.s.seconds,
                                                     self._next_port()))
        self._record(mode.mode, test, repeat, {test: r["gbps"]}, r)

    def udp_trial(self, mode: Mode, rate: int, seconds: float) -> Dict[str, Any]:
        port = self._next_port()
        sink = traffic.in_netns(mode.server.netns, traffic.argv(
            "udp-sink", bind=mode.s4, port=port, seconds=seconds + 20, idle_ms=500,
            cpu=SERVER_CPU if self.s.pin else -1))
        # Whole frames on the environment's link (hp-traffic's --link): a UDP socket's send
        # path cost the sender more than half of each datagram, and on a veth the receiver's
        # work (the kernel's forwarding, or hyperplane's packet socket) runs on the sender's
        # CPU too, so with sockets the generator, not the forwarder, set both modes' limits.
        send = traffic.in_netns(mode.env.netns, traffic.argv(
            "udp-send", dst=mode.s4, port=port, rate=rate, seconds=f"{seconds:g}", size=64,
            flows=1, link=mode.env.ifname, next_hop_mac=mode.env.gw_mac,
            cpu=CLIENT_CPU if self.s.pin else -1))
        with traffic.Server(sink) as server:
            sent = traffic.run(send, timeout=seconds + 30)
            if sent.get("sent", 0) > 0:
                got = server.result()
            else:
                got = server.stop()
        return {"target": rate, "sent": sent["sent"], "errors": sent.get("errors", 0),
                "rate": sent["rate"], "seconds": sent["seconds"],
                "delivered": got.get("packets", 0), "sink_seconds": got.get("seconds")}

    def udp64(self, mode: Mode, repeat: int) -> Dict[str, Any]:
        def measure(rate: int) -> Dict[str, Any]:
            return self.udp_trial(mode, rate, self.s.udp_seconds)

        r = self._guard(mode, "udp64 loss-free search", lambda: find_loss_free(
            measure, self.s.udp_start_rate, self.s.loss_tolerance, self.s.udp_bisect_steps,
            self.s.udp_max_rate))
        if r["rate"] <= 0:
            raise BenchError(f"{mode.mode} mode, udp64: no trial was loss-free, not even at "
                             f"{r['trials'][-1]['offered']} packets/s (loss "
                             f"{r['trials'][-1]['loss']:.3%}); raise --loss-tolerance or look "
                             "at the machine's load")
        self._record(mode.mode, "udp64", repeat, {"udp64": r["rate"]}, r)
        if r["generator_limited"]:
            progress(f"  note: nothing was lost, but the sender reached only "
                      f"{r['achieved']:.0f} of {r['offered']} packets/s: the receiver pushed "
                      "back (the kernel forwards a veth's packets in the sender's own system "
                      "call, on the sender's CPU); the figure is the rate delivered")
        return r

    def overload(self, mode: Mode, repeat: int, offered: int) -> None:
        r = self._guard(mode, "udp64 overload",
                        lambda: self.udp_trial(mode, offered, self.s.udp_seconds))
        delivered = r["delivered"] / r["seconds"] if r["seconds"] > 0 else 0.0
        r["delivered_rate"] = delivered
        r["reached"] = r["rate"] >= REACHED * offered
        self._record(mode.mode, "udp64-overload", repeat, {"udp64-overload": delivered}, r)
        if not r["reached"]:
            progress(f"  note: the sender reached {r['rate']:.0f} of {offered} packets/s: "
                      "the generator, not the NAT, limited the offered load")

    def _conn_gap(self, mode: Mode) -> None:
        """Rotating the server port keeps trials' tuples apart, but not the ENI's ports: each
        RST-closed connection holds its ENI port for the CLOSE timeout plus the reuse delay
        (CONN_DRAIN). Two trials of one mode back to back (ABBA's H H / K K at a repeat
        boundary, or a conn-only run) would then hold two trials' worth, up to 2 x 50,000 >
        65,000 ports. So a conn trial starts at least CONN_DRAIN after the mode's previous
        one ended: at most one trial's ports are ever held, below the scale-out mark. In a full
        run the other tests fill the gap and this waits for nothing."""
        wait = mode.last_conn + CONN_DRAIN - time.monotonic()
        if wait > 0:
            progress(f"  waiting {wait:.0f} s for the previous conn trial's closed entries "
                      "to expire")
            time.sleep(wait)

    def conn(self, mode: Mode, repeat: int) -> None:
        self._conn_gap(mode)
        port = self._next_port()
        cpu_s = SERVER_CPU if self.s.pin else -1
        cpu_c = CLIENT_CPU if self.s.pin else -1

        def trial() -> Dict[str, Any]:
            server = traffic.in_netns(mode.server.netns, traffic.argv(
                "tcp-server", bind=mode.s4, port=port, cpu=cpu_s))
            with traffic.Server(server) as srv:
                r = traffic.run(traffic.in_netns(mode.env.netns, traffic.argv(
                    "conn-rate", dst=mode.s4, port=port, count=self.s.conn_count,
                    concurrency=self.s.conn_concurrency, seconds=120, cpu=cpu_c)), timeout=150)
                srv.stop()
            return r

        try:
            r = self._guard(mode, "conn", trial)
        finally:
            mode.last_conn = time.monotonic()
        if not r.get("completed"):
            raise BenchError(f"{mode.mode} mode, conn: no connection completed ({r})"
                             f"{mode.datapath_problem()}")
        self._record(mode.mode, "conn", repeat, {"conn": r["rate"]}, r)

    def rr(self, mode: Mode, repeat: int) -> None:
        port = self._next_port()

        def trial() -> Dict[str, Any]:
            server = traffic.in_netns(mode.server.netns, traffic.argv(
                "tcp-server", bind=mode.s4, port=port, cpu=SERVER_CPU if self.s.pin else -1))
            with traffic.Server(server) as srv:
                r = traffic.run(traffic.in_netns(mode.env.netns, traffic.argv(
                    "rr", dst=mode.s4, port=port, count=self.s.rr_count, size=64,
                    cpu=CLIENT_CPU if self.s.pin else -1)), timeout=120)
                srv.stop()
            return r

        r = self._guard(mode, "rr", trial)
        if not r.get("count"):
            raise BenchError(f"{mode.mode} mode, rr: no round trip completed ({r})")
        self._record(mode.mode, "rr", repeat, {"rr-p50": r["p50_us"], "rr-p99": r["p99_us"]},
                     r)

    # ---- the whole run ------------------------------------------------------------------------
    def run(self) -> None:
        tests = self.s.tests
        warmed = set()
        for repeat, order in enumerate(abba(self.s.repeats)):
            for name in order:
                mode = self.modes[name]
                if name not in warmed:
                    self.warm_up(mode)
                    warmed.add(name)
                for test in tests:
                    if test.startswith("tcp"):
                        self.tcp(mode, test, repeat)
                    elif test == "udp64":
                        self.udp64(mode, repeat)
                    elif test == "conn":
                        self.conn(mode, repeat)
                    elif test == "rr":
                        self.rr(mode, repeat)
        if "udp64" in tests:
            # The same offered load for both modes: twice hyperplane's loss-free median.
            base = median(self.figures["hyperplane"].get("udp64", []))
            offered = int(OVERLOAD_LOAD * base) if base else 0
            self.overload_offered = offered
            for repeat, order in enumerate(abba(self.s.repeats)):
                for name in order:
                    self.overload(self.modes[name], repeat, offered)


# ---- labs --------------------------------------------------------------------------------------
def lab_names(pid: Optional[int] = None) -> Dict[str, str]:
    """Unique-per-process lab names (``bench<pid % 10000>h`` / ``...k``): at most 10
    characters, within labconfig's 20 and short enough for ``hp-NAME-env-fn-0``."""
    n = (os.getpid() if pid is None else pid) % 10000
    return {"hyperplane": f"bench{n}h", "kernel": f"bench{n}k"}


def free_lab_names() -> Dict[str, str]:
    """:func:`lab_names`, or the next free pair when a lab of that name exists already (one
    kept with ``--keep`` by an earlier process of the same pid % 10000): this run builds, and
    so tears down, only labs of its own."""
    pid = os.getpid()
    for k in range(10):
        names = lab_names(pid + k)
        if all(topology.load_state(n) is None and not any(
                ns.startswith(f"hp-{n}-") for ns in netns.listall()) for n in names.values()):
            return names
    raise BenchError(f"labs named {lab_names(pid)['hyperplane']} and the next nine exist "
                     "already; remove old bench labs (`hyperplane lab list`, `lab down`)")


@contextlib.contextmanager
def _config_file() -> Iterator[str]:
    with resources.as_file(resources.files(__package__).joinpath(BENCH_CONFIG)) as p:
        yield str(p)


def build_labs(names: Dict[str, str], modes: Dict[str, Mode], created: List[str],
               pin: bool) -> None:
    """Build the kernel lab (topology.build + kernel_nat) and the hyperplane lab (Lab.up: the
    data path in the background, waited for until its function is Active). A failed build
    rolls itself back (both calls do); a lab that was built is appended to ``created`` at
    once, so the caller's finally tears down exactly what this run built."""
    cfg = bench_config()
    with _config_file() as path:
        progress(f"building lab {names['kernel']} (kernel NAT: ip_forward + nftables SNAT)")
        kplan = labconfig.resolve(cfg, names["kernel"])
        try:
            topology.build(kplan, config_source=path)
        except LabError as e:
            raise BenchError(str(e)) from None
        created.append(names["kernel"])
        modes["kernel"] = Mode("kernel", names["kernel"], kplan, pin)
        kernel_nat(kplan)
        progress(f"building lab {names['hyperplane']} (hyperplane data path)")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # the same topology, with a deeper ring, the data path's loop off the sender's CPU and
        # its inbound worker on it
        datapath = f"ring_frames = {RING_FRAMES}\n" + (
            f"cpus = [{SERVER_CPU}]\ninbound_cpus = [{CLIENT_CPU}]\n" if pin else "")
        text += "\n[datapath]\n" + datapath
        source = f"{path} + [datapath] " + datapath.strip().replace("\n", ", ")
        cfg = labconfig.loads(text, source=source)
        hplan = labconfig.resolve(cfg, names["hyperplane"])
        try:
            hlab = Lab.up(source, names["hyperplane"], wait_active=True, config_text=text)
        except HyperplaneError as e:
            raise BenchError(str(e)) from None
        created.append(names["hyperplane"])
        modes["hyperplane"] = Mode("hyperplane", names["hyperplane"], hplan, pin)
        modes["hyperplane"].pid = hlab.pid
        modes["hyperplane"].rings = {x["name"]: x["ring_frames"] for x in
                                     hlab.counters()["links"]
                                     if x.get("kind") == "veth"}
    for m in modes.values():
        # Both modes alike: the client may use 64,000 source ports, so even a 50,000-connection
        # conn trial never reuses a 4-tuple (Linux's default range holds 28,232).
        topology.sysctl(m.env.netns, "net.ipv4.ip_local_port_range", "1024 65535")


def teardown_labs(names: Sequence[str]) -> List[str]:
    """Tear the labs down (each independently); returns error messages."""
    errors = []
    for name in names:
        try:
            topology.teardown(name)
        except Exception as e:
            errors.append(f"lab {name}: {e}")
    return errors


def check_tools(settings: Settings) -> Dict[str, Any]:
    """iperf3 (TCP tests and the warm-up), nft (kernel mode), and the hp-traffic tool (udp64,
    conn, rr; hyperplane.bench.traffic builds it)."""
    if shutil.which("iperf3") is None:
        raise BenchError("iperf3 is missing: apt-get install iperf3")
    if shutil.which("nft") is None:
        raise BenchError("nft is missing (kernel mode loads its NAT with it): "
                         "apt-get install nftables")
    out: Dict[str, Any] = {"iperf3": shutil.which("iperf3"), "taskset": shutil.which("taskset")}
    if any(t in settings.tests for t in ("udp64", "conn", "rr")):
        try:
            out["hp_traffic"] = traffic.tool_path()
        except Exception as e:
            raise BenchError(f"the hp-traffic generator is not available: {e}") from None
    return out


def run(settings: Settings, json_path: Optional[str] = None, plot_path: Optional[str] = None,
        out=None) -> Dict[str, Any]:
    """The whole bench: check, build both labs, warm up, run, tear down (always, unless
    ``settings.keep``), report. Returns the JSON document."""
    problem = netns.privilege_problem()
    if problem:
        raise BenchError(f"the bench builds labs, which {problem}", 4)
    if plot_path:   # fail before minutes of measuring, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BenchError("--plot needs matplotlib: pip install 'hyperplane[bench]'") \
                from None
    tools = check_tools(settings)
    names = free_lab_names()
    modes: Dict[str, Mode] = {}
    created: List[str] = []
    t0 = time.monotonic()
    runner: Optional[Runner] = None
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    with contextlib.suppress(ValueError):   # only the main thread may set handlers
        signal.signal(signal.SIGTERM, on_term)
    try:
        build_labs(names, modes, created, settings.pin)
        runner = Runner(settings, modes)
        runner.run()
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, old_term)
        if settings.keep and created:
            rd = os.environ.get("HYPERPLANE_RUN_DIR")
            how = " and ".join(f"`{f'HYPERPLANE_RUN_DIR={rd} ' if rd else ''}hyperplane lab "
                               f"down --name {n}`" for n in created)
            progress(f"--keep: lab(s) {', '.join(created)} left up (state in "
                      f"{paths.run_dir()}); remove them with {how}")
        elif created:
            progress(f"tearing down lab(s) {', '.join(created)}")
            errors = teardown_labs(created)
            if errors:
                progress("teardown problems: " + "; ".join(errors))
    wall = time.monotonic() - t0
    idle = runner.idle_datapath_cpu
    doc = report_json(settings, runner.trials, runner.figures, extra={
        "labs": names, "tools": tools,
        "pinning": {"enabled": settings.pin and tools.get("taskset") is not None,
                    "client_cpu": CLIENT_CPU if settings.pin else None,
                    "server_cpu": SERVER_CPU if settings.pin else None,
                    "iperf3": "taskset -c CPU" if settings.pin and tools.get("taskset")
                    else "unpinned",
                    "hp_traffic": "--cpu CPU" if settings.pin else "--cpu -1 (unpinned)",
                    "datapath_cpu": SERVER_CPU if settings.pin else None,
                    "datapath": (f"[datapath] cpus = [{SERVER_CPU}] (off the sender's CPU, "
                                 "where the kernel's NAT runs in the sender's softirq), "
                                 f"inbound_cpus = [{CLIENT_CPU}] (the VPC -> environment "
                                 "direction, whose sends carry the environment's receive path)"
                                 if settings.pin else "unpinned"),
                    "ring_frames": (modes["hyperplane"].rings if "hyperplane" in modes
                                    else {})},
        "overload_offered_pps": getattr(runner, "overload_offered", None),
        "idle_datapath_cpu_share": (max(idle) if idle else None),
        "wall_seconds": round(wall, 1)})
    print_table(doc, out)
    if idle and max(idle) > 0.05:
        progress(f"note: the idle hyperplane data path used up to {max(idle):.0%} of a CPU "
                  "during kernel trials")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    if plot_path:
        plot(doc, plot_path)
    progress(f"done in {wall:.0f} s")
    return doc
