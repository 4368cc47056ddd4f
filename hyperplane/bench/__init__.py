"""``hyperplane bench``: hyperplane side by side with the kernel's own NAT (issue 6) and with
Open vSwitch's userspace conntrack NAT (issue 18).

Theory of operation
-------------------
The same topology (``bench_lab.toml``: one environment on a veth, one ENI, one server) is built
once per mode (``--modes``, :data:`MODES`), as labs that live side by side for the whole run:

- **hyperplane** (lab ``bench<n>h``): the normal lab. The node namespace holds no address and
  forwards nothing; the data path (``hyperplane run``, started like ``lab up`` starts it)
  reads the environment's veth and the ENI's veth with AF_PACKET and translates between them.
  ``--env`` chooses the environment(s) it is measured through: a veth (default), a TAP, or
  both (``veth,tap``: the lab then has two environments of one function, and the TAP one is
  its own column, ``hyperplane-tap``, with the ratio tap/veth). ``--workers 1,2`` adds lab
  ``bench<n>w``, the same with ``[datapath] workers = 2`` (docs/scaling.md; worker 0 on the
  server's CPU, worker 1 on the client's, no inbound worker) through the first environment
  only: the column ``hyperplane-w2`` and the ratio w2/w1, in the same rotation.
- **kernel** (lab ``bench<n>k``): the same namespaces, links, MACs and addresses built by
  :func:`hyperplane.topology.build`, but no data path. Instead :func:`kernel_nat` turns the node
  namespace into a plain Linux NAT router, the fair baseline of ``PACKET_IO.md`` ("A fair
  side-by-side"): IPv6 back on, ``ip_forward=1`` and IPv6 forwarding, the environment's
  gateway addresses on its node-side veth (which already carries the gateway MAC the data path
  would answer with), the ENI's addresses on the ENI's veth, default routes via the VPC router,
  and one nftables table ``inet hyperplane_bench`` whose postrouting chain SNATs the
  environment's addresses to the ENI's and whose input chain drops new connections arriving
  on the ENI (:func:`nft_ruleset`). Offloads are left at their defaults in every lab (nothing
  here calls ethtool).
- **ovs** (lab ``bench<n>o``, the default where ``ovs-vswitchd`` is installed): built like the
  kernel's, with the node namespace left as hyperplane mode has it (no forwarding, no IPv6), and
  Open vSwitch's userspace datapath as the NAT (:mod:`.ovs`): its own ovsdb-server and
  ovs-vswitchd in the node namespace, a netdev bridge over the two veths, OpenFlow ARP/NDP
  responders and ``ct(commit,nat(src=ENI))`` flows (:func:`ovs_flows`), userspace TSO on,
  ovs-vswitchd pinned to hyperplane's loop's CPU; stopped by pid before the lab's teardown.

Kernel and OVS always use a veth environment: a TAP's far end is a file descriptor a data
path holds, and nobody would hold it for them.

Before measuring, every mode is checked to be a NAT (:func:`check_nat`): the server sees the
ENI's address as the peer, and an unsolicited SYN to the ENI's address gets no answer.

Every test runs the same commands in every mode, from the environment's namespace to the
server's, alternating the order across repeats (:func:`rotation`: ABBA for two modes,
hyperplane, kernel | kernel, hyperplane | ...; for more, rotated and reversed in turn), so a
slow drift of the machine (thermal, another tenant, the lead engineer rebuilding the
extension) hits every mode alike:

- ``tcp4-1``, ``tcp4-4``, ``tcp6-1``, ``tcp6-4``: iperf3, 1 or 4 streams, IPv4 or IPv6,
  Gbit/s received (``end.sum_received``).
- ``udp64``: the highest loss-free rate of 64-byte UDP payloads, one flow, IPv4 (RFC 2544
  section 26.1 "throughput", with a loss tolerance because a shared 2-core VM drops the odd
  packet that no NAT lost): :func:`find_loss_free` doubles the offered rate until a trial
  loses, then bisects. Then **overload**: every mode is offered twice hyperplane's loss-free
  rate (the same offered load) and report what they deliver, also as a fraction of their own
  loss-free rate: a NAT that livelocks under overload delivers far less than it could. The
  verdict counts only if the sender really reached that load (:func:`overload_load`). The
  sender writes whole, prebuilt frames on the environment's link (``hp-traffic udp-send
  --link``): through a UDP socket it reached ~300 kpps and could not offer "twice".
- ``conn``: new TCP connections per second (RFC 9693's connection establishment rate); each
  connection is connect, one byte each way (request and echo), close with RST.
- ``rr``: request/response round trips of 64 bytes on one TCP connection: p50 and p99
  microseconds (lower is better).

The generators are iperf3 and ``hp-traffic`` (``hyperplane/bench/tools/hp_traffic_*.c``, driven
through :mod:`hyperplane.bench.traffic`): Python would be the bottleneck. Client-side tools run
on CPU 0 and server-side tools on CPU 1 in every mode (``--no-pin``: unpinned). The data path's
veth rings are 16,384 frames deep (``[datapath] ring_frames``, :data:`RING_FRAMES`). Its loop is
pinned to the server's CPU (``[datapath] cpus = [1]``), away from the sender: the kernel's
forwarding runs in the sender's own system call (veth), so it is always on the sender's CPU, and
a scheduler that moves the data path onto that CPU too halves its throughput (measured:
benchmarks/RESULTS.md). Its inbound worker (``inbound_cpus = [0]``) does the VPC -> environment
direction on the client's CPU: a send on a veth runs the receiver's stack, so the environment's
receive path then runs beside the environment (connections +17 %). ``--no-pin`` leaves all of it
to the scheduler.

The medians, spreads, ratios, the loss-free search and the verdicts are plain functions without
I/O (:func:`summarize`, :func:`find_loss_free`, :func:`verdicts`, ...), unit-tested with fake
measurements.

Where it lives
--------------
- ``settings.py``: the tests, modes, environments, columns, metrics, targets and trial
  constants, :class:`BenchError`, :class:`Settings`, :func:`parse_tests`,
  :func:`parse_modes`, :func:`parse_envs`, :func:`bench_config` and :func:`progress`;
- ``kernel.py``: kernel mode (:func:`kernel_plan`, :func:`nft_ruleset`, :func:`kernel_nat`);
- ``ovs.py``: OVS mode (:func:`ovs_flows`, :class:`OvsSwitch`, :func:`ovs_nat`);
- ``checks.py``: is each mode a NAT (:func:`check_nat`);
- ``analysis.py``: loss, the loss-free search, the mode order, medians, ratios of every pair,
  :func:`summarize`, :func:`verdicts`, the overload shares, and :func:`machine`,
  :func:`cpu_times`, :func:`cpu_cost`;
- ``report.py``: the ``--json`` document, the table (:func:`print_table`) and the ``--plot`` PNG;
- ``runner.py``: :class:`Mode` (one column: a lab and an environment) and :class:`Runner`
  (every trial, in rotation order);
- ``labs.py``: the labs' names, building and tearing them down, :func:`check_tools`;
- ``traffic.py``: the ``hp-traffic`` driver (it builds ``tools/hp_traffic_*.c``);
  ``loadgen.py``: bursts of new UDP flows for the lab tests;
- this file: :func:`run`, the whole bench, and every public name of the modules above
  (``from hyperplane.bench import Settings, run``).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional

from hyperplane import netns, paths
from hyperplane.bench.analysis import (
    abba, column_order, cpu_cost, cpu_times, find_loss_free, is_loss_free, loss, machine,
    median, overload_fractions, overload_load, pair_ratios, ratio_of, rotation, summarize,
    verdicts,
)
from hyperplane.bench.kernel import kernel_nat, kernel_plan, nft_ruleset
from hyperplane.bench.checks import check_nat
from hyperplane.bench.labs import (
    build_kernel_lab, build_labs, build_workers_lab, check_tools, datapath_text, free_lab_names,
    hyperplane_lab_text, lab_names, stop_switches,
    teardown_labs,
)
from hyperplane.bench.ovs import OvsSwitch, ovs_flows, ovs_nat
from hyperplane.bench.report import cell, format_value, plot, print_table, report_json
from hyperplane.bench.runner import Mode, Runner
from hyperplane.bench.settings import (
    BENCH_CONFIG, CLIENT_CPU, COLUMNS, CONN_DRAIN, CPU_COST_TARGET, ENVS, FOUR_STREAM_TARGET,
    MAX_CONN_COUNT, METRICS, MODES, NFT_TABLE, OVERLOAD_LOAD, OVERLOAD_TARGET, OVS_RATIO_TARGET,
    PORT_BASE, RATIO_PAIRS, RATIO_TARGET, REACHED, RING_FRAMES, SERVER_CPU, TAP_COLUMN,
    TAP_TARGET, TEST_METRICS, TESTS, W2_COLUMN, WORKERS, WORKERS_TARGET, BenchError, Settings,
    bench_config, columns, default_modes, parse_envs, parse_modes, parse_tests, parse_workers,
    progress,
)

__all__ = [
    # settings
    "BENCH_CONFIG", "CLIENT_CPU", "COLUMNS", "CONN_DRAIN", "CPU_COST_TARGET", "ENVS",
    "FOUR_STREAM_TARGET", "MAX_CONN_COUNT", "METRICS", "MODES", "NFT_TABLE", "OVERLOAD_LOAD",
    "OVERLOAD_TARGET", "OVS_RATIO_TARGET", "PORT_BASE", "RATIO_PAIRS", "RATIO_TARGET",
    "REACHED", "RING_FRAMES", "SERVER_CPU", "TAP_COLUMN", "TAP_TARGET", "TEST_METRICS",
    "TESTS", "W2_COLUMN", "WORKERS", "WORKERS_TARGET", "BenchError", "Settings",
    "bench_config", "columns", "default_modes", "parse_envs", "parse_modes", "parse_tests",
    "parse_workers", "progress",
    # kernel, OVS, the correctness checks
    "kernel_nat", "kernel_plan", "nft_ruleset", "OvsSwitch", "ovs_flows", "ovs_nat",
    "check_nat",
    # analysis
    "abba", "column_order", "cpu_cost", "cpu_times", "find_loss_free", "is_loss_free", "loss",
    "machine", "median", "overload_fractions", "overload_load", "pair_ratios", "ratio_of",
    "rotation", "summarize", "verdicts",
    # report
    "cell", "format_value", "plot", "print_table", "report_json",
    # runner, labs, and the whole bench
    "Mode", "Runner", "build_labs", "build_kernel_lab", "build_workers_lab", "check_tools",
    "datapath_text",
    "free_lab_names", "hyperplane_lab_text",
    "lab_names", "stop_switches", "teardown_labs", "run",
]


def run(settings: Settings, json_path: Optional[str] = None, plot_path: Optional[str] = None,
        out=None, on_step: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, Any]:
    """The whole bench: check, build the modes' labs, warm up and check each mode is a NAT,
    run, tear down (OVS's daemons, then the labs; always, unless ``settings.keep``), report.
    Returns the JSON document. ``on_step(step, done, total)``
    hears of each trial before it runs (:meth:`Runner.steps` in all)."""
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
        build_labs(names, modes, created, settings)
        runner = Runner(settings, modes, on_step=on_step)
        runner.run()
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, old_term)
        if settings.keep and created:
            rd = os.environ.get("HYPERPLANE_RUN_DIR")
            how = " and ".join(f"`{f'HYPERPLANE_RUN_DIR={rd} ' if rd else ''}hyperplane lab "
                               f"down --name {n}`" for n in created)
            switches = [f"{m.switch.pids}" for m in modes.values() if m.switch is not None]
            progress(f"--keep: lab(s) {', '.join(created)} left up (state in "
                      f"{paths.run_dir()}); remove them with {how}"
                      + (f", after stopping OVS's daemons with `kill PID` ({', '.join(switches)})"
                         if switches else ""))
        elif created or any(m.switch is not None for m in modes.values()):
            progress(f"tearing down lab(s) {', '.join(created)}")
            errors = stop_switches(modes) + teardown_labs(created)
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
                    "datapath": (f"loop on CPU {SERVER_CPU} (off the sender's CPU, "
                                 "where the kernel's NAT runs in the sender's softirq), "
                                 f"inbound worker on CPU {CLIENT_CPU} (the VPC -> environment "
                                 "direction, whose sends carry the environment's receive path)"
                                 if settings.pin else "unpinned (placement = \"none\")"),
                    "ring_frames": (modes["hyperplane"].rings if "hyperplane" in modes
                                    else {}),
                    # where the data path really placed itself, and why (labconfig.placement)
                    "placement": (modes["hyperplane"].placement if "hyperplane" in modes
                                  else None),
                    **({"placement_w2": modes[W2_COLUMN].placement} if W2_COLUMN in modes
                       else {}),
                    "ovs_vswitchd_cpu": (SERVER_CPU if settings.pin and "ovs" in modes
                                         else None)},
        "modes": settings.modes, "envs": settings.envs,
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
