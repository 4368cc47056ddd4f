"""The two labs of a run and what they need: their names (unique per process, or the next free
pair), building them (the kernel lab by :func:`hyperplane.topology.build` and
:func:`~hyperplane.bench.kernel.kernel_nat`, the hyperplane lab by ``Lab.up``, placed by the data
path's default placement where that is the bench's pinning), tearing them down, and the tools
the tests run (iperf3, nft, hp-traffic).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from importlib import resources
from typing import Any, Dict, Iterator, List, Optional, Sequence

from hyperplane import labconfig, netns, topology
from hyperplane.bench import traffic
from hyperplane.bench.kernel import kernel_nat
from hyperplane.bench.runner import Mode
from hyperplane.bench.settings import (
    BENCH_CONFIG, CLIENT_CPU, RING_FRAMES, SERVER_CPU, BenchError, Settings, bench_config,
    progress,
)
from hyperplane.errors import HyperplaneError, LabError
from hyperplane.lab.api import Lab
from hyperplane.labconfig.placement import place, veth_links


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


def build_labs(names: Dict[str, str], modes: Dict[str, Mode], created: List[str],
               pin: bool) -> None:
    """Build the kernel lab (topology.build + kernel_nat) and the hyperplane lab (Lab.up: the
    data path in the background, waited for until its function is Active). A failed build
    rolls itself back (both calls do); a lab that was built is appended to ``created`` at
    once, so the caller's finally tears down exactly what this run built."""
    with _config_file() as path:
        kplan = build_kernel_lab(names["kernel"], created)
        modes["kernel"] = Mode("kernel", names["kernel"], kplan, pin)
        progress(f"building lab {names['hyperplane']} (hyperplane data path)")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # the same topology, with a deeper ring, the data path's loop off the sender's CPU and
        # its inbound worker on it: the data path's own default placement where that is it
        # (2 CPUs: labconfig.placement), else written out; --no-pin places nothing
        auto = place(kplan.datapath, os.sched_getaffinity(0), veth_links(kplan))
        if not pin:
            datapath = f'placement = "none"\nring_frames = {RING_FRAMES}\n'
        elif (auto.loop_cpus, auto.inbound_cpus, auto.ring_frames) != \
                ((SERVER_CPU,), (CLIENT_CPU,), RING_FRAMES):
            datapath = (f"ring_frames = {RING_FRAMES}\ncpus = [{SERVER_CPU}]\n"
                        f"inbound_cpus = [{CLIENT_CPU}]\n")
        else:
            datapath = ""
        text += ("\n[datapath]\n" + datapath) if datapath else ""
        source = (f"{path} + [datapath] " + datapath.strip().replace("\n", ", ")) if datapath \
            else f"{path} (the data path's default placement)"
        cfg = labconfig.loads(text, source=source)
        hplan = labconfig.resolve(cfg, names["hyperplane"])
        try:
            hlab = Lab.up(source, names["hyperplane"], wait_active=True, config_text=text)
        except HyperplaneError as e:
            raise BenchError(str(e)) from None
        created.append(names["hyperplane"])
        modes["hyperplane"] = Mode("hyperplane", names["hyperplane"], hplan, pin)
        modes["hyperplane"].pid = hlab.pid
        modes["hyperplane"].placement = hlab.placement()
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
