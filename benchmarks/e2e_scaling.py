"""End-to-end cost vs. the number of tracked connections: hyperplane and the kernel's NAT (issue 6).

``benchmarks/RESULTS.md`` ("How cost grows") measures the engine alone. This measures the
whole path: the labs of ``hyperplane bench`` (``hyperplane/bench/bench_lab.toml``, built with
:func:`hyperplane.bench.build_labs`: one lab forwarded by the hyperplane data path pinned to
CPU 1, one by the kernel, ip_forward + nftables SNAT), and for each table size N the same
traffic through both while each NAT holds N idle tracked connections:

- **fill**: ``hp-traffic udp-send --dst-ports N --src-port 61000`` from the environment to the
  server, one 64-byte datagram per flow: N distinct UDP flows (server ports 1024 .. 1024+N-1,
  where nobody listens), paced at ``--fill-rate`` (40,000/s) when the flows exist already (a
  refresh), else slower as N nears the ENI's size (see "No scale-out" below: 6,000/s at
  50,000). Both NATs track an outbound UDP flow on
  its first packet, as *unreplied* (30 s in both: hyperplane's ``udp_unreplied`` and the
  kernel's ``nf_conntrack_udp_timeout``).
- **the table size is read, not assumed**: hyperplane: the control socket's ``counters``
  (the sum of its ENI keys' ``connections``, what ``hyperplane conntrack count`` prints), and
  how many ENIs the key has live (a second one would mean a scale-out); kernel:
  ``/proc/sys/net/netfilter/nf_conntrack_count`` in the node namespace (conntrack -C is not
  installed). Read before the fill, after it and after the measurements.
- **measurements** (the ``hyperplane bench`` runners): ``tcp4-1`` (iperf3, one stream, 3 s),
  ``rr`` (5,000 request/responses of 64 bytes: p50, p99) and a fixed-rate 64-byte UDP trial
  (100 kpps for 2 s, one flow: delivered packets/s and loss).

Why the fill is safe and stays put:

- **The ICMP port unreachable replies are accepted, not filtered.** The server's kernel
  rate-limits them per destination (``net.ipv4.icmp_ratelimit``, 1 s, burst 6, for the types in
  ``icmp_ratemask``, which includes destination unreachable; plus the global
  ``icmp_msgs_per_sec``): the server answers a handful per fill, not N, in both modes alike.
  The count sent is reported (``icmp_unreach``). No nftables rule in the server's namespace,
  which would cost every measured packet a hook.
- **Every fill sends the same N tuples** (a fixed source port, ``--src-port``). A refill before
  each repeat only refreshes the entries, and the next size's fill (sizes go up) refreshes the
  previous size's flows and adds the rest: the table holds N fill flows, never the leftovers of
  an earlier fill on top.
- **Every measurement finishes well inside the 30 s timeout** of the fill before it (a repeat is
  refill + about 8 s of traffic); the script checks this and says so when it was not the case.
- **No scale-out.** Sizes are at most 50,000: hyperplane's ENI has 65,000 ports and starts a
  second ENI at 80 % (52,000). A refill that found its entries expired but their ports still in
  the 2 s reuse delay would hold two fills' worth of ports: when the two fills together pass
  52,000, hyperplane is never refilled between 20 s and 30 + 2 + 3 s after its previous fill
  (the script waits until the old entries are gone). hyperplane also scales out early when the
  recent rate of new ports would exhaust the ENI within two creation delays (2 s in the lab):
  a fill that creates flows goes at most at 80 % of (65,000 - N) / 2 s. The live ENIs are read
  after each fill and a second one is reported.

Order: sizes ascending; per size the modes in ABBA order across sizes (hyperplane first for the
1st size, kernel first for the 2nd, ...), each mode doing its repeats back to back (a refill
before each, ~7 s apart: the entries are refreshed, never recreated).

    python3 benchmarks/e2e_scaling.py                       # sizes 0,1000,10000,50000; ~5 min
    python3 benchmarks/e2e_scaling.py --sizes 0,50000 --repeats 2 --json scaling.json

Root (builds network namespaces). Both labs are always torn down (also on Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hyperplane import bench  # noqa: E402
from hyperplane.lab import lifecycle

DEFAULT_SIZES = (0, 1000, 10000, 50000)
#: hyperplane's ENI: 65,000 ports, a 2nd ENI at 80 % (52,000); the fill plus the measurements'
#: few flows stay below that.
MAX_SIZE = 50_000
FILL_PORT = 1024            # the fill's server ports: FILL_PORT .. FILL_PORT + N - 1
FILL_SRC_PORT = 61000       # the fill's fixed source port (the same tuples every time)
MEASURE_PORT = 52000        # measurement server ports from here up (the Runner's counter)
MODES = ("hyperplane", "kernel")   # the two labs this script compares (no OVS mode here)
#: A refill this soon after the previous one refreshes live entries.
SAFE_REFRESH = 20.0
#: hyperplane starts a 2nd ENI at 80 % of 65,000 ports.
SCALE_OUT_PORTS = 52_000
#: The fill is "reached" when the table holds at least this share of N.
REACHED_SHARE = 0.99
FILL_TOP_UPS = 2            # resend the fill (same tuples) at most this often to reach N

#: metric -> (unit, higher is better, what); loss gets no ratios (0 % / 0 % says nothing)
METRICS = {
    "tcp4-1": ("Gbit/s", True, "TCP IPv4, 1 stream (iperf3)"),
    "rr-p50": ("us", False, "64-byte request/response, median"),
    "rr-p99": ("us", False, "64-byte request/response, 99th percentile"),
    "udp-delivered": ("pps", True, "64-byte UDP at the fixed rate, delivered"),
    "udp-loss": ("%", False, "64-byte UDP at the fixed rate, lost"),
}


class ScalingError(RuntimeError):
    pass


def parse_sizes(text: str) -> List[int]:
    """``"0,1000,10000"`` -> sorted distinct sizes; ScalingError naming --sizes otherwise."""
    out = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            raise ScalingError(f"--sizes: {part!r} is not a whole number (e.g. --sizes "
                               "0,1000,10000,50000)") from None
        if not 0 <= n <= MAX_SIZE:
            raise ScalingError(f"--sizes: {n} is out of range 0..{MAX_SIZE} (hyperplane's ENI "
                               "has 65,000 ports and scales out at 52,000)")
        out.append(n)
    if not out:
        raise ScalingError("--sizes: give at least one size, e.g. --sizes 0,1000")
    return sorted(set(out))


def summarize(figures: Dict[int, Dict[str, Dict[str, List[float]]]],
              sizes: List[int]) -> Dict[str, Any]:
    """Per size and metric: each mode's median and values, the ratio hyperplane/kernel and each
    mode's median relative to its median at the smallest size (how cost grows)."""
    out: Dict[str, Any] = {}
    base = sizes[0]
    for n in sizes:
        rows = {}
        for metric, (unit, higher, what) in METRICS.items():
            row: Dict[str, Any] = {"unit": unit, "better": "higher" if higher else "lower",
                                   "what": what}
            for m in MODES:
                v = figures.get(n, {}).get(m, {}).get(metric, [])
                b = figures.get(base, {}).get(m, {}).get(metric, [])
                med, bmed = bench.median(v), bench.median(b)
                row[m] = {"median": med, "min": min(v) if v else None,
                          "max": max(v) if v else None, "values": v,
                          "vs_first_size": (med / bmed if med is not None and bmed
                                            and unit != "%" else None)}
            row["ratio"] = (None if unit == "%" else
                            bench.ratio_of(row["hyperplane"]["median"], row["kernel"]["median"]))
            rows[metric] = row
        out[str(n)] = rows
    return out


def print_table(doc: Dict[str, Any], out=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = out or sys.stdout
    console = Console(file=out, width=160)
    m, s = doc["machine"], doc["settings"]
    t = Table(title=escape(
        f"e2e scaling: {m.get('cpu')} x{m.get('nproc')}, Linux {m.get('kernel')}; "
        f"{s['repeats']} repeat(s) per size and mode, median [min-max]; tcp4-1 {s['tcp_seconds']:g} s, "
        f"rr {s['rr_count']}, UDP {s['udp_rate']} pps x {s['udp_seconds']:g} s"))
    for col, just in (("N idle", "right"), ("metric", "left"), ("unit", "left"),
                      ("hyperplane", "right"), ("kernel", "right"), ("ratio h/k", "right"),
                      ("h vs N0", "right"), ("k vs N0", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for n in s["sizes"]:
        tab = doc["tables"][str(n)]
        t.add_row(escape(f"{n:,}"), "table size", "entries",
                  *(escape(_reached(tab.get(mode, {}))) for mode in MODES), "", "", "")
        for metric, row in doc["summary"][str(n)].items():
            cells = [bench.cell(row[mode], row["unit"]) for mode in MODES]
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            rel = ["-" if row[mode]["vs_first_size"] is None
                   else f"{row[mode]['vs_first_size']:.2f}" for mode in MODES]
            t.add_row("", escape(metric), escape(row["unit"]), *(escape(c) for c in cells),
                      ratio, *rel, end_section=metric == list(METRICS)[-1])
    console.print(t)
    console.print(escape(
        "table size: the NAT's tracked connections after the fill, median over repeats "
        "[min-max] ('NOT REACHED' when below 99 % of N); vs N0: the mode's median / its own "
        f"median at N = {s['sizes'][0]:,}; rr and loss: lower is better"), soft_wrap=True)
    for note in doc["notes"]:
        console.print(escape("note: " + note), soft_wrap=True)


def _reached(tab: Dict[str, Any]) -> str:
    filled = tab.get("filled") or []
    if not filled:
        return "-"
    med = bench.median(filled)
    text = f"{med:,.0f}"
    if min(filled) != max(filled):
        text += f" [{min(filled):,}-{max(filled):,}]"
    if not tab.get("reached", True):
        text += " NOT REACHED"
    return text


# ---- reading the tables ------------------------------------------------------------------------
def hyperplane_table(mode: bench.Mode) -> Dict[str, Any]:
    """The hyperplane lab's tracked connections (the sum over its ENI keys, as
    ``hyperplane conntrack count`` computes it) and how many ENIs its keys have live."""
    from hyperplane import cli

    c = lifecycle.request(mode.name, "counters")
    keys = c["enis"] + c.get("nat_gateways", [])
    return {"connections": sum(int(k["connections"]) for k in keys),
            "live_enis": sum(len(k.get("live_eni_ids", [])) for k in c["enis"]),
            "pool": [k.get("pool") for k in c["enis"]]}


def _proc_in_ns(ns: str, path: str) -> str:
    from hyperplane import netns

    with netns.entered(ns):
        with open(path) as f:
            return f.read()


def kernel_table(mode: bench.Mode) -> Dict[str, Any]:
    """The kernel lab's node namespace's conntrack entries (nf_conntrack_count is per
    namespace)."""
    text = _proc_in_ns(mode.plan.node_ns, "/proc/sys/net/netfilter/nf_conntrack_count")
    return {"connections": int(text.strip())}


def table(mode: bench.Mode) -> Dict[str, Any]:
    return hyperplane_table(mode) if mode.mode == "hyperplane" else kernel_table(mode)


def icmp_unreach_sent(mode: bench.Mode) -> int:
    """ICMP destination unreachable messages the server has sent (IPv4, /proc/net/snmp)."""
    text = _proc_in_ns(mode.server.netns, "/proc/thread-self/net/snmp")
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("Icmp:")]
    head, vals = lines[0], lines[1]
    return int(vals[head.index("OutDestUnreachs")])


def udp_timeouts(modes: Dict[str, bench.Mode]) -> Dict[str, float]:
    from hyperplane.engine.config import Timeouts

    k = float(_proc_in_ns(modes["kernel"].plan.node_ns,
                          "/proc/sys/net/netfilter/nf_conntrack_udp_timeout").strip())
    return {"hyperplane": float(Timeouts().udp_unreplied), "kernel": k}


# ---- the run -----------------------------------------------------------------------------------
class Scaling:
    def __init__(self, args, modes: Dict[str, bench.Mode]):
        self.a = args
        self.modes = modes
        self.settings = bench.Settings(tests=["tcp4-1", "rr"], seconds=args.tcp_seconds,
                                       repeats=args.repeats, rr_count=args.rr_count, pin=True)
        self.runner = bench.Runner(self.settings, modes)
        self.runner.port = MEASURE_PORT      # above the fill's ports
        self.figures: Dict[int, Dict[str, Dict[str, List[float]]]] = {}
        self.tables: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self.trials: List[Dict[str, Any]] = []
        self.notes: List[str] = []
        self.last_fill: Dict[str, float] = {m: -1e9 for m in MODES}
        self.last_n: Dict[str, int] = {m: 0 for m in MODES}
        self.timeouts = udp_timeouts(modes)
        self.expire_gap = min(self.timeouts.values())
        self.gone_gap = max(self.timeouts.values()) + 2.0 + 3.0   # + reuse delay + margin
        self.t0 = time.monotonic()

    def log(self, msg: str) -> None:
        bench.progress(f"[{time.monotonic() - self.t0:5.0f} s] {msg}")

    def new_flow_rate(self, n: int) -> float:
        """The fill rate when the fill creates flows: hyperplane also starts a second ENI when
        the recent rate of new ports would exhaust the ENI within PREDICT_HORIZON creation
        delays (hyperplane.vpc), so new flows go at most at 80 % of the rate that would leave
        the free ports (65,000 - n at the fill's end) for that long. Both modes alike."""
        from hyperplane import vpc

        lc = self.modes["hyperplane"].plan.lifecycle
        free = max(1, lc.ports_per_eni - n)
        limit = 0.8 * free / (vpc.PREDICT_HORIZON * max(lc.eni_create_delay, 0.01))
        return float(min(self.a.fill_rate, limit))

    def before_fill(self, mode: bench.Mode, n: int) -> float:
        """Wait when a refill could meet the previous fill's entries half expired (see the
        module docstring); returns the fill rate: the full --fill-rate when every flow is
        known to be live (a pure refresh takes no port), else :meth:`new_flow_rate`."""
        age = time.monotonic() - self.last_fill[mode.mode]   # of the oldest entries
        if (mode.mode == "hyperplane" and self.last_n[mode.mode] + n > SCALE_OUT_PORTS
                and SAFE_REFRESH < age < self.gone_gap):
            # Their ports would wait out the reuse delay while the refill takes new ones, and
            # both together would pass the high-water mark.
            wait = self.gone_gap - age
            self.log(f"{mode.mode}: waiting {wait:.0f} s for the previous fill's entries to "
                     "expire (a refill now could meet them half expired and scale out)")
            time.sleep(wait)
            age = self.gone_gap
        if age < SAFE_REFRESH and self.last_n[mode.mode] >= n:
            return float(self.a.fill_rate)
        return self.new_flow_rate(n)

    def fill(self, mode: bench.Mode, n: int, rate: float) -> Dict[str, Any]:
        """Send the N fill flows (refreshing those that exist); returns the udp-send results
        and the table read after it. Resends (the same tuples) when the table is short of N."""
        from hyperplane.bench import traffic

        icmp0 = icmp_unreach_sent(mode)
        seconds = max(0.05, n / rate)
        self.last_fill[mode.mode] = time.monotonic()
        self.last_n[mode.mode] = n
        sends = []
        for attempt in range(1 + FILL_TOP_UPS):
            argv = traffic.in_netns(mode.env.netns, traffic.argv(
                "udp-send", dst=mode.s4, port=FILL_PORT, rate=n / seconds, seconds=seconds,
                size=64, dst_ports=n, src_port=FILL_SRC_PORT, cpu=bench.CLIENT_CPU))
            r = self.runner._guard(mode, "fill", lambda: traffic.run(argv, timeout=seconds + 30))
            sends.append(r)
            time.sleep(0.3)                  # the data path's last batch, the kernel's softirq
            tab = table(mode)
            if tab["connections"] >= REACHED_SHARE * n:
                break
            self.log(f"{mode.mode}: the table holds {tab['connections']:,} after fill "
                     f"{attempt + 1}, short of {n:,}; resending the same flows")
        return {"rate": rate, "sends": sends, "table": tab,
                "icmp_unreach": icmp_unreach_sent(mode) - icmp0}

    def repeat(self, mode: bench.Mode, n: int, rep: int) -> None:
        tab = self.tables.setdefault(str(n), {}).setdefault(
            mode.mode, {"before": [], "filled": [], "after": [], "live_enis": [],
                        "icmp_unreach": [], "fill_age_at_end": [], "reached": True})
        fig = self.figures.setdefault(n, {}).setdefault(mode.mode, {})
        rate = self.before_fill(mode, n) if n else 0.0
        tab["before"].append(table(mode)["connections"])
        if n:
            f = self.fill(mode, n, rate)
            filled = f["table"]
            tab["icmp_unreach"].append(f["icmp_unreach"])
            tab.setdefault("fill_rates", []).append(round(rate))
        else:
            f, filled = None, table(mode)
        tab["filled"].append(filled["connections"])
        if "live_enis" in filled:
            tab["live_enis"].append(filled["live_enis"])
        if n and filled["connections"] < REACHED_SHARE * n:
            tab["reached"] = False
        self.log(f"{mode.mode:10s} N={n:<6,} repeat {rep + 1}: table {tab['before'][-1]:,} -> "
                 f"{filled['connections']:,}" + (f", {filled['live_enis']} live ENI(s)"
                                                  if "live_enis" in filled else "")
                 + (f" (fill at {rate:,.0f}/s)" if n else ""))
        r = self.runner
        # tcp4-1 and rr through the bench's runners (they record into r.figures)
        r.tcp(mode, "tcp4-1", rep)
        fig.setdefault("tcp4-1", []).append(r.figures[mode.mode]["tcp4-1"][-1])
        r.rr(mode, rep)
        fig.setdefault("rr-p50", []).append(r.figures[mode.mode]["rr-p50"][-1])
        fig.setdefault("rr-p99", []).append(r.figures[mode.mode]["rr-p99"][-1])
        u = r._guard(mode, "udp fixed rate",
                     lambda: r.udp_trial(mode, self.a.udp_rate, self.a.udp_seconds))
        delivered = u["delivered"] / u["seconds"] if u["seconds"] > 0 else 0.0
        lost = 100.0 * bench.loss(u["sent"], u["delivered"])
        if u["rate"] < bench.REACHED * self.a.udp_rate:
            self.notes.append(
                f"{mode.mode} N={n:,} repeat {rep + 1}: the UDP sender reached only "
                f"{u['rate']:,.0f} of {self.a.udp_rate:,} packets/s: the generator was slowed "
                "(a busy CPU 0; in kernel mode also the forwarding itself, which runs in the "
                "sender's own system call), so 'delivered' is below the offered rate")
        fig.setdefault("udp-delivered", []).append(delivered)
        fig.setdefault("udp-loss", []).append(lost)
        self.log(f"{mode.mode:10s} N={n:<6,} repeat {rep + 1}: udp {delivered / 1e3:.0f}k pps "
                 f"delivered of {u['rate'] / 1e3:.0f}k sent, loss {lost:.3f} %")
        after = table(mode)
        tab["after"].append(after["connections"])
        age = time.monotonic() - self.last_fill[mode.mode]   # of the fill's oldest entries
        tab["fill_age_at_end"].append(round(age, 1) if n else None)
        if n and age > self.expire_gap - 3:
            self.notes.append(f"{mode.mode} N={n} repeat {rep + 1}: the measurements ended "
                              f"{age:.0f} s after the fill, near the {self.expire_gap:g} s UDP "
                              "timeout; the table may have shrunk during them")
        self.trials.append({"size": n, "mode": mode.mode, "repeat": rep,
                            "table_before": tab["before"][-1],
                            "table_filled": filled, "table_after": after["connections"],
                            "fill": f, "udp": u,
                            "tcp4-1": r.trials[-2]["raw"] if len(r.trials) >= 2 else None,
                            "rr": r.trials[-1]["raw"] if r.trials else None})

    def run(self) -> None:
        for name in MODES:
            self.runner.warm_up(self.modes[name])
        for n, order in zip(self.a.sizes, bench.abba(len(self.a.sizes))):
            for name in order:
                for rep in range(self.a.repeats):
                    self.repeat(self.modes[name], n, rep)
        for n in self.a.sizes:
            for m, tab in self.tables.get(str(n), {}).items():
                if n and not tab["reached"]:
                    self.notes.append(f"{m}: N={n:,} was NOT reached: the table held "
                                      f"{min(tab['filled']):,}-{max(tab['filled']):,} entries "
                                      "after the fill (and its resends)")
                if any(x > 1 for x in tab.get("live_enis", [])):
                    self.notes.append(f"{m}: N={n:,}: the ENI key had "
                                      f"{max(tab['live_enis'])} live ENIs (a scale-out)")
                if tab["icmp_unreach"]:
                    tab["icmp_unreach_max"] = max(tab["icmp_unreach"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES),
                   help="idle UDP flows to hold, comma-separated (default 0,1000,10000,50000; "
                        f"at most {MAX_SIZE:,})")
    p.add_argument("--repeats", type=int, default=3, help="repeats per size and mode (3)")
    p.add_argument("--tcp-seconds", type=float, default=3.0, help="iperf3 seconds (3)")
    p.add_argument("--rr-count", type=int, default=5000, help="rr transactions (5000)")
    p.add_argument("--udp-rate", type=int, default=100_000,
                   help="fixed 64-byte UDP rate, packets/s (100000)")
    p.add_argument("--udp-seconds", type=float, default=2.0, help="UDP trial seconds (2)")
    p.add_argument("--fill-rate", type=int, default=40_000,
                   help="new flows per second while filling (40000)")
    p.add_argument("--json", metavar="FILE", help="write everything as JSON")
    args = p.parse_args(argv)
    try:
        args.sizes = parse_sizes(args.sizes)
        if not 1 <= args.repeats <= 20:
            raise ScalingError(f"--repeats {args.repeats}: use 1..20")
        # a repeat (fill + tcp + rr + udp) must end well inside its fill's 30 s UDP timeout
        if not 0.5 <= args.tcp_seconds <= 5:
            raise ScalingError(f"--tcp-seconds {args.tcp_seconds:g}: use 0.5..5 (a repeat "
                               "must end well inside the 30 s UDP timeout of its fill)")
        if not 100 <= args.rr_count <= 10_000:
            raise ScalingError(f"--rr-count {args.rr_count}: use 100..10000")
        if not 1000 <= args.udp_rate <= 2_000_000:
            raise ScalingError(f"--udp-rate {args.udp_rate}: use 1000..2000000 packets/s")
        if not 0.5 <= args.udp_seconds <= 3:
            raise ScalingError(f"--udp-seconds {args.udp_seconds:g}: use 0.5..3")
        if not 10_000 <= args.fill_rate <= 200_000:
            raise ScalingError(f"--fill-rate {args.fill_rate}: use 10000..200000 flows/s")
    except ScalingError as e:
        print(f"e2e_scaling: {e}", file=sys.stderr)
        return 2

    from hyperplane import netns

    problem = netns.privilege_problem()
    if problem:
        print(f"e2e_scaling: building the labs {problem}", file=sys.stderr)
        return 4
    try:   # iperf3, nft and hp-traffic (built here if needed)
        tools = bench.check_tools(bench.Settings(tests=["tcp4-1", "udp64", "rr"],
                                                 modes=list(MODES)))
    except bench.BenchError as e:
        print(f"e2e_scaling: {e}", file=sys.stderr)
        return 1
    names = bench.free_lab_names()
    modes: Dict[str, bench.Mode] = {}
    created: List[str] = []
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    run: Optional[Scaling] = None
    failure: Optional[str] = None
    interrupted = False
    try:
        bench.build_labs(names, modes, created, bench.Settings(modes=list(MODES)))
        run = Scaling(args, modes)
        run.run()
    except bench.BenchError as e:
        failure = str(e)
    except KeyboardInterrupt as e:   # Ctrl-C or SIGTERM: tear down, then report what ran
        failure = f"interrupted ({e or 'Ctrl-C'})"
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if created:
            bench.progress(f"tearing down lab(s) {', '.join(created)}")
            errors = bench.teardown_labs(created)
            if errors:
                bench.progress("teardown problems: " + "; ".join(errors))
    if run is None:
        print(f"e2e_scaling: {failure}", file=sys.stderr)
        return 130 if interrupted else 1
    doc = {
        "machine": bench.machine(),
        "settings": {"sizes": args.sizes, "repeats": args.repeats,
                     "tcp_seconds": args.tcp_seconds, "rr_count": args.rr_count,
                     "udp_rate": args.udp_rate, "udp_seconds": args.udp_seconds,
                     "fill_rate": args.fill_rate, "fill_ports": [FILL_PORT, "FILL_PORT+N-1"],
                     "fill_src_port": FILL_SRC_PORT, "pin": {"client_cpu": bench.CLIENT_CPU,
                                                             "server_cpu": bench.SERVER_CPU,
                                                             "datapath_cpu": bench.SERVER_CPU}},
        "udp_timeouts": run.timeouts,
        "labs": names, "tools": tools,
        "tables": run.tables,
        "figures": {str(n): v for n, v in run.figures.items()},
        "summary": summarize(run.figures, [n for n in args.sizes if n in run.figures]
                             or args.sizes),
        "trials": run.trials,
        "notes": run.notes + ([f"stopped early: {failure}"] if failure else []),
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    doc["settings"]["sizes"] = [n for n in args.sizes if str(n) in run.tables]
    print_table(doc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
            f.write("\n")
    bench.progress(f"done in {doc['wall_seconds']:.0f} s")
    return 130 if interrupted else 1 if failure else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
