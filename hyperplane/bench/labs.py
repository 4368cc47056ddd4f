"""The labs of a run and what they need: their names (unique per process, or the next free
set), building them (the kernel lab by :func:`hyperplane.topology.build` and
:func:`~hyperplane.bench.kernel.kernel_nat`, the OVS lab by the same build and
:func:`~hyperplane.bench.ovs.ovs_nat`, the hyperplane lab by ``Lab.up``, placed by the
data path's default placement where that is the bench's pinning, with the environments
``--env`` asks for; with ``--workers 1,2`` a second one with two data path workers), tearing
them down (OVS's daemons first), and the tools the tests run (iperf3, nft, hp-traffic, OVS's
programs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from importlib import resources
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from hyperplane import labconfig, netns, topology
from hyperplane.bench import traffic
from hyperplane.bench import ovs
from hyperplane.bench.kernel import kernel_nat
from hyperplane.bench.runner import Mode
from hyperplane.bench.settings import (
    BENCH_CONFIG, CLIENT_CPU, RING_FRAMES, SERVER_CPU, TAP_COLUMN, W2_COLUMN, BenchError,
    Settings, bench_config, progress,
)
from hyperplane.errors import HyperplaneError, LabError
from hyperplane.lab.api import Lab
from hyperplane.labconfig.placement import place, veth_links


def lab_names(pid: Optional[int] = None) -> Dict[str, str]:
    """Unique-per-process lab names (``bench<pid % 10000>h`` / ``...k`` / ``...o``, and
    ``...w`` for two workers): at most 10 characters, within labconfig's 20 and short enough
    for ``hp-NAME-env-fn-0``."""
    n = (os.getpid() if pid is None else pid) % 10000
    return {"hyperplane": f"bench{n}h", "kernel": f"bench{n}k", "ovs": f"bench{n}o",
            W2_COLUMN: f"bench{n}w"}


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


def build_kernel_lab(name: str, created: List[str]) -> labconfig.Plan:
    """The kernel lab: the bench's topology (topology.build) with the node namespace made a
    Linux NAT router (kernel_nat). A failed build rolls itself back; a lab that was built is
    appended to ``created`` at once, before its NAT is set up, for the caller's finally."""
    with _config_file() as path:
        progress(f"building lab {name} (kernel NAT: ip_forward + nftables SNAT)")
        kplan = labconfig.resolve(bench_config(), name)
        try:
            topology.build(kplan, config_source=path)
        except LabError as e:
            raise BenchError(str(e)) from None
        created.append(name)
        kernel_nat(kplan)
    return kplan


def datapath_text(plan: labconfig.Plan, pin: bool, workers: int = 1) -> str:
    """The bench's ``[datapath]`` lines: none where the data path's own default placement
    (labconfig.placement) is the bench's pinning -- the loop off the sender's CPU, its inbound
    worker on it, 16,384-frame rings; else that pinning written out; ``--no-pin`` places
    nothing. With ``workers = 2``: worker 0 (the loop) on the server's CPU, worker 1 on the
    client's (where the inbound worker is with one), no inbound worker."""
    if workers > 1:
        if not pin:
            return f'placement = "none"\nring_frames = {RING_FRAMES}\nworkers = {workers}\n'
        dp = dataclasses.replace(plan.datapath, workers=workers, cpus=(), inbound_cpus=())
        auto = place(dp, os.sched_getaffinity(0), veth_links(plan))
        want = (SERVER_CPU, CLIENT_CPU) + tuple(range(2, workers))
        if (auto.worker_cpus, auto.ring_frames) != (want, RING_FRAMES):
            return (f"ring_frames = {RING_FRAMES}\nworkers = {workers}\n"
                    f"worker_cpus = [{', '.join(str(c) for c in want)}]\n")
        return f"workers = {workers}\n"
    auto = place(plan.datapath, os.sched_getaffinity(0), veth_links(plan))
    if not pin:
        return f'placement = "none"\nring_frames = {RING_FRAMES}\n'
    if (auto.loop_cpus, auto.inbound_cpus, auto.ring_frames) != \
            ((SERVER_CPU,), (CLIENT_CPU,), RING_FRAMES):
        return (f"ring_frames = {RING_FRAMES}\ncpus = [{SERVER_CPU}]\n"
                f"inbound_cpus = [{CLIENT_CPU}]\n")
    return ""


def hyperplane_lab_text(text: str, envs: Sequence[str], datapath: str) -> Tuple[str, str]:
    """The bench lab file for hyperplane mode: the environments ``--env`` asks for (in that
    order: ``plan.envs[i]`` is ``envs[i]``) and the ``[datapath]`` lines of
    :func:`datapath_text`. Returns (text, a one-line source for errors)."""
    one = 'environments = ["veth"]'
    if one not in text:
        raise BenchError(f"{BENCH_CONFIG} no longer says {one!r}; --env cannot choose")
    text = text.replace(one, "environments = [" + ", ".join(f'"{e}"' for e in envs) + "]")
    source = f"{BENCH_CONFIG} + environments {','.join(envs)}"
    if datapath:
        text += "\n[datapath]\n" + datapath
        source += " + [datapath] " + datapath.strip().replace("\n", ", ")
    else:
        source += " (the data path's default placement)"
    return text, source


def build_labs(names: Dict[str, str], modes: Dict[str, Mode], created: List[str],
               settings: Settings) -> None:
    """Build the labs of ``settings.modes``: kernel (:func:`build_kernel_lab`), OVS
    (topology.build + ovs_nat: its daemons in the node namespace) and hyperplane (Lab.up: the
    data path in the background, waited for until its function is Active; one environment
    per ``settings.envs``, each its own column). A failed build rolls itself back (each call
    does); a lab that was built is appended to ``created`` at once, and an OVS switch is on
    its Mode (``.switch``) as soon as it runs, so the caller's finally tears down exactly what
    this run built."""
    cfg = bench_config()
    pin = settings.pin
    with _config_file() as path:
        if "kernel" in settings.modes:
            kplan = build_kernel_lab(names["kernel"], created)
            modes["kernel"] = Mode("kernel", names["kernel"], kplan, pin)
        if "ovs" in settings.modes:
            progress(f"building lab {names['ovs']} (Open vSwitch userspace conntrack NAT)")
            plan = labconfig.resolve(cfg, names["ovs"])
            try:
                topology.build(plan, config_source=path)
            except LabError as e:
                raise BenchError(str(e)) from None
            created.append(names["ovs"])
            modes["ovs"] = Mode("ovs", names["ovs"], plan, pin)
            modes["ovs"].switch = ovs.ovs_nat(plan, SERVER_CPU if pin else None)
            pids = modes["ovs"].switch.pids
            progress(f"  OVS started: ovsdb-server pid {pids['ovsdb-server']}, "
                     f"ovs-vswitchd pid {pids[ovs.VSWITCHD]}"
                     + (f" pinned to CPU {SERVER_CPU} (hyperplane's loop's)" if pin
                        else " unpinned"))
        progress(f"building lab {names['hyperplane']} (hyperplane data path, environment(s) "
                 f"{', '.join(settings.envs)})")
        with open(path, encoding="utf-8") as f:
            base = f.read()
        dp = datapath_text(labconfig.resolve(cfg, "bench"), pin)
        if 2 in settings.workers:   # one worker, whatever HYPERPLANE_WORKERS says
            dp += "workers = 1\n"
        text, source = hyperplane_lab_text(base, settings.envs, dp)
        hplan = labconfig.resolve(labconfig.loads(text, source=source), names["hyperplane"])
        try:
            hlab = Lab.up(source, names["hyperplane"], wait_active=True, config_text=text)
        except HyperplaneError as e:
            raise BenchError(str(e)) from None
        created.append(names["hyperplane"])
        for i, column in enumerate(["hyperplane", TAP_COLUMN][:len(settings.envs)]):
            modes[column] = Mode(column, names["hyperplane"], hplan, pin, env_index=i)
            modes[column].pid = hlab.pid
        _describe(modes["hyperplane"], hlab)
        if 2 in settings.workers:
            modes[W2_COLUMN] = build_workers_lab(base, names[W2_COLUMN], created, settings, 2)
    for m in modes.values():
        # Every mode alike: the client may use 64,000 source ports, so even a 50,000-connection
        # conn trial never reuses a 4-tuple (Linux's default range holds 28,232).
        topology.sysctl(m.env.netns, "net.ipv4.ip_local_port_range", "1024 65535")


def _describe(mode: Mode, lab: Lab) -> None:
    """What the data path of ``mode``'s lab says of itself: its placement and veth rings."""
    mode.placement = lab.placement()
    mode.rings = {x["name"]: x["ring_frames"] for x in lab.counters()["links"]
                  if x.get("kind") == "veth"}


def build_workers_lab(base: str, name: str, created: List[str], settings: Settings,
                      workers: int) -> Mode:
    """The ``hyperplane-w2`` column's lab: the bench topology through the first of
    ``settings.envs`` only, its data path with ``workers`` workers (:func:`datapath_text`);
    appended to ``created`` once it is up."""
    cfg = bench_config()
    env = settings.envs[:1]
    progress(f"building lab {name} (hyperplane data path with {workers} workers, environment "
             f"{env[0]})")
    text, source = hyperplane_lab_text(
        base, env, datapath_text(labconfig.resolve(cfg, "bench"), settings.pin, workers))
    plan = labconfig.resolve(labconfig.loads(text, source=source), name)
    try:
        lab = Lab.up(source, name, wait_active=True, config_text=text)
    except HyperplaneError as e:
        raise BenchError(str(e)) from None
    created.append(name)
    mode = Mode(W2_COLUMN, name, plan, settings.pin)
    mode.pid = lab.pid
    _describe(mode, lab)
    return mode


def stop_switches(modes: Dict[str, Mode]) -> List[str]:
    """Stop every OVS this run started (by pid; before its lab's teardown); problems."""
    errors = []
    for m in modes.values():
        if m.switch is not None:
            errors += [f"OVS of lab {m.name}: {e}" for e in m.switch.stop()]
            m.switch = None
    return errors


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
    """iperf3 (TCP tests and the warm-up), nft (kernel mode), OVS's programs (OVS mode) and
    the hp-traffic tool (udp64, conn, rr; hyperplane.bench.traffic builds it)."""
    if shutil.which("iperf3") is None:
        raise BenchError("iperf3 is missing: apt-get install iperf3")
    if "kernel" in settings.modes and shutil.which("nft") is None:
        raise BenchError("nft is missing (kernel mode loads its NAT with it): "
                         "apt-get install nftables")
    out: Dict[str, Any] = {"iperf3": shutil.which("iperf3"), "taskset": shutil.which("taskset")}
    if "ovs" in settings.modes:
        why = ovs.missing()
        if why:
            raise BenchError(f"--modes has ovs, but {why}; or leave ovs out of --modes", 2)
        out["ovs_vswitchd"] = shutil.which(ovs.VSWITCHD)
    if any(t in settings.tests for t in ("udp64", "conn", "rr")):
        try:
            out["hp_traffic"] = traffic.tool_path()
        except Exception as e:
            raise BenchError(f"the hp-traffic generator is not available: {e}") from None
    return out
