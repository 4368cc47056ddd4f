"""Where the data path runs: its loop's CPU, its inbound worker's, how many workers share the
traffic and their CPUs, its rings' depth, and where the functions' code runs, decided once when
the data path starts (:func:`place`).

Theory of operation
-------------------
What ``hyperplane bench`` measured on a 2-CPU machine whose CPUs also run both endpoints
(hyperplane.bench, benchmarks/RESULTS.md "Who pays for the receiver"):

- the **loop** must have a CPU the traffic's senders do not use: the kernel forwards a veth
  send in the sender's own system call, so a loop the scheduler puts on the sender's CPU
  halves the throughput;
- the **inbound worker** (the VPC -> environment direction in a thread of its own) belongs on
  another CPU: a send on a veth runs the receiver's stack, so the environment's receive path
  then runs beside the environment (connections +17 %);
- **rings** of 16,384 frames ride out the loop's stalls that 4,096 did not (ring drops).

So with ``placement = "auto"`` (the default) and the CPUs this process may use
(``os.sched_getaffinity``) sorted:

- 2 CPUs or more: the loop on the highest one, the inbound worker on the next highest, and the
  functions' code (the lab's own senders, run by the workloads service) on every CPU but the
  loop's. The highest CPUs because the low ones are where everything else starts (CPU 0 takes
  most interrupts and housekeeping, and users' ``taskset -c 0`` clients); the functions share
  the inbound worker's CPU on purpose (the receive path beside the receiver, as measured). On
  the bench's machine this is exactly its pinning: loop on CPU 1 (the servers'), worker on
  CPU 0 (the clients').
- 1 CPU: nothing pinned and no inbound worker (a second thread on the one CPU only adds locks
  and wake-ups).
- rings: 16,384 frames (32 MiB) per veth link up to :data:`RING_BUDGET_FRAMES` frames in all;
  a lab with more links gets shallower rings, never below the old default of 4,096.

Workers (``[datapath] workers``, docs/scaling.md): N loop threads, each with its own engine
shard owning the ports p with (p >> 1) % N == w of every ENI. The default is 1 (the one loop above,
with its inbound worker: exactly the data path before workers existed). ``workers = "auto"``
decides N from the number of CPUs the data path may use, C (:func:`auto_workers`):

- C < 4: 1 worker, placed as above. On 2 CPUs the traffic's endpoints, the kernel's receive
  path (which on veth runs in the sender's system call) and the functions share the cores;
  one loop with the inbound worker on the other CPU measured faster than two shards
  (/work/shared/PACKET_IO.md: "on 2 cores one worker with softirq on the other core beats
  sharding"), so "auto" keeps it.
- C >= 4: C // 2 workers, at most :data:`WORKERS_MAX`, on the highest CPUs (worker 0, the
  loop, on the highest, as the loop is today); the other half stays with the functions, the
  benchmark's endpoints and the kernel's side of every veth send. This is VPP's and
  OVS-DPDK's habit of never giving the data path every core (VPP keeps its main thread and
  the host off the workers' cores, OVS-DPDK's pmd-cpu-mask leaves the rest to the host), sized
  for a lab whose endpoints live on the same machine: 4 CPUs -> 2 workers, 8 -> 4, 64 -> 16.

With more than one worker there is no inbound worker (workers split the traffic by port, the
inbound worker by direction; the lab file may ask for one or the other), ``loop_cpus`` is
worker 0's CPU, the functions run off the workers' CPUs when any are left (else they share
them, and :func:`describe` says so), and every worker has its own ring on every veth link: the
rings' depth is then the share of :data:`RING_BUDGET_FRAMES` of ``links x workers`` rings
(:func:`ring_frames_for`), at least RING_FRAMES_MIN, so the total stays within the budget up
to 128 rings.

Every choice can be made in the lab file instead: explicit ``cpus``, ``inbound_cpus`` and
``ring_frames`` win (the rest is still placed around them), and ``placement = "none"`` places
nothing (the scheduler decides, no inbound worker, 4,096-frame rings, unless set explicitly).

:func:`place` is pure (CPU sets in, :class:`Placement` out) so tests feed it fake machines; the
data path (hyperplane.datapath.daemon) applies it and reports it in its counters, the workloads
service applies its ``function_cpus``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Tuple, Union

from hyperplane.engine.constants import RING_FRAMES_DEFAULT, RING_FRAMES_MIN, RING_FRAMES_STEP
from hyperplane.errors import LabConfigError
from hyperplane.labconfig.model import DatapathPlan

#: ``[datapath] placement``: "auto" places what the lab file leaves out, "none" nothing.
PLACEMENTS = ("auto", "none")
#: The ring depth "auto" gives each veth link (frames of 2 KiB: 32 MiB), as the bench measured.
AUTO_RING_FRAMES = 16384
#: The most ring frames "auto" gives all the veth links together (256 MiB): 8 links at
#: AUTO_RING_FRAMES; more links share it, each keeping at least RING_FRAMES_DEFAULT.
RING_BUDGET_FRAMES = 8 * AUTO_RING_FRAMES

#: ``[datapath] workers``: the most loop threads a data path runs (each an engine shard owning
#: a slice of every ENI's ports: 65,000 / 16 leaves each worker about 4,000 per ENI).
WORKERS_MAX = 16
#: "auto" runs more than one worker from this many CPUs on (see the module docstring).
AUTO_WORKERS_FROM = 4

#: Where a choice came from, as status and stats say it.
AUTO, LAB_FILE, DEFAULT = "auto", "lab file", "default"


@dataclasses.dataclass(frozen=True)
class Placement:
    """What :func:`place` decided. Empty CPU tuples: not pinned (the scheduler decides);
    ``inbound_cpus`` empty: no inbound worker. ``source`` says, per field, whether it was
    chosen automatically ("auto"), taken from the lab file ("lab file") or left at the
    unplaced default ("default", with ``placement = "none"``)."""
    placement: str
    loop_cpus: Tuple[int, ...]
    inbound_cpus: Tuple[int, ...]
    ring_frames: int
    #: where the functions' code (the workloads service's runtimes) runs; empty: anywhere
    function_cpus: Tuple[int, ...]
    #: the CPUs the data path could use when it decided
    allowed_cpus: Tuple[int, ...]
    source: Dict[str, str]
    #: loop threads, each owning the ports p with (p >> 1) % workers == w of every ENI (1: one loop)
    workers: int = 1
    #: with workers > 1, worker i runs on worker_cpus[i] (worker 0 is the loop: loop_cpus is
    #: worker_cpus[:1]); empty: unpinned. Always empty with one worker (loop_cpus says it).
    worker_cpus: Tuple[int, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (the data path's ``counters`` "placement", ``lab status --json``,
        ``stats --json``)."""
        d = dataclasses.asdict(self)
        for k in ("loop_cpus", "inbound_cpus", "function_cpus", "allowed_cpus", "worker_cpus"):
            d[k] = list(d[k])
        return d


def auto_workers(cpus: int) -> int:
    """``workers = "auto"`` on a data path that may use ``cpus`` CPUs: 1 below
    AUTO_WORKERS_FROM (the loop and its inbound worker: the fastest on 2 CPUs shared with the
    endpoints), else half of them, at most WORKERS_MAX (the other half for the functions and
    the endpoints). See the module docstring."""
    if cpus < AUTO_WORKERS_FROM:
        return 1
    return min(WORKERS_MAX, cpus // 2)


def check_workers(workers: Union[int, str], worker_cpus: Tuple[int, ...],
                  cpus: Tuple[int, ...], inbound: Tuple[int, ...]) -> None:
    """What ``[datapath] workers`` rules out (LabConfigError naming the field and the fix):
    worker_cpus with "auto" or with a count it does not match, the one loop's CPU given twice
    (cpus and worker_cpus), and beside more than one worker the inbound worker (it splits the
    traffic by direction, workers by port: one or the other) or cpus (the loop is worker 0)."""
    if workers == "auto":
        for key, given in (("worker_cpus", worker_cpus), ("cpus", cpus),
                           ("inbound_cpus", inbound)):
            if given:
                raise LabConfigError(f"datapath.{key}", f"{list(given)} with workers = "
                                     "\"auto\": the placement chooses the workers' CPUs "
                                     f"itself; remove {key}, or write the number of workers "
                                     "(like workers = 2 with worker_cpus = [3, 2])")
        return
    if worker_cpus and len(worker_cpus) != workers:
        raise LabConfigError("datapath.worker_cpus", f"{list(worker_cpus)} names "
                             f"{len(worker_cpus)} CPU(s) for {workers} worker(s): list one "
                             f"CPU per worker ({workers}), or leave worker_cpus out for the "
                             "placement's choice")
    if workers == 1:
        if worker_cpus and cpus and tuple(cpus) != tuple(worker_cpus):
            raise LabConfigError("datapath.worker_cpus", f"{list(worker_cpus)} and cpus = "
                                 f"{list(cpus)} both place the one loop: remove one of them")
        return
    if inbound:
        raise LabConfigError("datapath.inbound_cpus", f"{list(inbound)} with workers = "
                             f"{workers}: the inbound worker splits the traffic by direction, "
                             "workers split it by port, and a data path does one or the other; "
                             "remove inbound_cpus (or set workers = 1 to keep the inbound "
                             "worker)")
    if cpus:
        raise LabConfigError("datapath.cpus", f"{list(cpus)} with workers = {workers}: the "
                             "loop is worker 0, which runs on worker_cpus[0]; remove cpus and "
                             "list each worker's CPU in worker_cpus, worker 0's first")


def ring_frames_for(veth_links: int, workers: int = 1) -> int:
    """"auto"'s ring depth for a lab of ``veth_links`` veth links, each with one ring per
    worker: AUTO_RING_FRAMES each while RING_BUDGET_FRAMES holds them all, else their share
    of it (whole blocks of RING_FRAMES_STEP), never below RING_FRAMES_DEFAULT with one worker
    (as before workers existed) nor below RING_FRAMES_MIN with more (a worker's ring carries
    only its slice of the link's traffic)."""
    rings = max(1, veth_links) * max(1, workers)
    share = RING_BUDGET_FRAMES // rings
    share -= share % RING_FRAMES_STEP
    floor = RING_FRAMES_DEFAULT if workers <= 1 else RING_FRAMES_MIN
    return max(floor, min(AUTO_RING_FRAMES, share))


def _check_available(field: str, want: Tuple[int, ...], allowed: Tuple[int, ...]) -> None:
    missing = sorted(set(want) - set(allowed))
    if missing:
        raise LabConfigError(f"datapath.{field}", f"CPU(s) {missing} are not available here "
                             f"(the data path may use {list(allowed)}); pick from those or "
                             f"leave {field} out")


def place(datapath: DatapathPlan, allowed: Iterable[int], veth_links: int = 1) -> Placement:
    """The placement of a data path with the lab's ``[datapath]`` (``datapath``), allowed to
    run on the CPUs ``allowed`` (its ``os.sched_getaffinity(0)``), opening ``veth_links`` veth
    links (see the module docstring). LabConfigError (naming the field and the fix) when the
    lab file asks for CPUs outside ``allowed``, or when ``inbound_cpus`` leaves the loop no
    CPU of its own."""
    cpus = tuple(sorted(set(allowed)))
    if not cpus:
        raise ValueError("place: no CPU allowed at all")
    check_workers(datapath.workers, tuple(datapath.worker_cpus), tuple(datapath.cpus),
                  tuple(datapath.inbound_cpus))
    _check_available("cpus", datapath.cpus, cpus)
    _check_available("inbound_cpus", datapath.inbound_cpus, cpus)
    _check_available("worker_cpus", datapath.worker_cpus, cpus)
    auto = datapath.placement == "auto"
    unset = AUTO if auto else DEFAULT
    workers = (auto_workers(len(cpus)) if datapath.workers == "auto"
               else int(datapath.workers))
    if workers > 1:
        return _place_workers(datapath, cpus, workers, veth_links)
    source = {"loop_cpus": LAB_FILE if datapath.cpus or datapath.worker_cpus else unset,
              "inbound_cpus": LAB_FILE if datapath.inbound_cpus else unset,
              "ring_frames": LAB_FILE if datapath.ring_frames else unset,
              "workers": AUTO if datapath.workers == "auto" else DEFAULT,
              "worker_cpus": DEFAULT}

    loop = tuple(datapath.cpus or datapath.worker_cpus)
    if not loop and auto and len(cpus) >= 2:
        free = [c for c in cpus if c not in datapath.inbound_cpus]
        if not free:
            raise LabConfigError("datapath.inbound_cpus", f"{list(datapath.inbound_cpus)} "
                                 f"takes every CPU the data path may use ({list(cpus)}), "
                                 "leaving its loop none of its own: leave a CPU out of "
                                 "inbound_cpus, or leave inbound_cpus out")
        loop = (free[-1],)

    inbound = tuple(datapath.inbound_cpus)
    if not inbound and auto and loop:
        free = [c for c in cpus if c not in loop]
        inbound = (free[-1],) if free else ()

    frames = datapath.ring_frames or (ring_frames_for(veth_links) if auto
                                      else RING_FRAMES_DEFAULT)
    functions = tuple(c for c in cpus if c not in loop) if auto and loop else ()
    return Placement(placement=datapath.placement, loop_cpus=loop, inbound_cpus=inbound,
                     ring_frames=frames, function_cpus=functions, allowed_cpus=cpus,
                     source=source)


def _place_workers(datapath: DatapathPlan, cpus: Tuple[int, ...], workers: int,
                   veth_links: int) -> Placement:
    """:func:`place` with more than one worker (the lab file gave neither cpus nor
    inbound_cpus: :func:`check_workers`): worker i on worker_cpus[i] (auto: the highest CPUs
    first; unpinned when there are fewer CPUs than workers), no inbound worker, the functions
    off the workers' CPUs when any are left, rings shared by links x workers."""
    auto = datapath.placement == "auto"
    unset = AUTO if auto else DEFAULT
    pinned = tuple(datapath.worker_cpus)
    if not pinned and auto and workers <= len(cpus):
        pinned = tuple(reversed(cpus))[:workers]
    frames = datapath.ring_frames or (ring_frames_for(veth_links, workers) if auto
                                      else RING_FRAMES_DEFAULT)
    functions: Tuple[int, ...] = ()
    if auto and pinned:
        functions = tuple(c for c in cpus if c not in pinned) or cpus   # else: shared
    source = {"loop_cpus": LAB_FILE if datapath.worker_cpus else unset,
              "inbound_cpus": unset,
              "ring_frames": LAB_FILE if datapath.ring_frames else unset,
              "workers": AUTO if datapath.workers == "auto" else LAB_FILE,
              "worker_cpus": LAB_FILE if datapath.worker_cpus else unset}
    return Placement(placement=datapath.placement, loop_cpus=pinned[:1], inbound_cpus=(),
                     ring_frames=frames, function_cpus=functions, allowed_cpus=cpus,
                     source=source, workers=workers, worker_cpus=pinned)


def describe(p: Dict[str, Any]) -> str:
    """One line for people: ``placement auto: loop on CPU 1 (auto), inbound worker on CPU 0
    (auto), rings 16384 frames (auto)`` from a :meth:`Placement.to_dict`; with workers:
    ``placement auto: 2 workers on CPUs 3,2 (auto; worker 0 is the loop), rings 16384 frames
    per worker per link (auto), functions on CPUs 0,1``."""
    src = p.get("source") or {}
    cpus = lambda xs: ("CPU " if len(xs) == 1 else "CPUs ") + ",".join(map(str, xs))  # noqa: E731
    n = p.get("workers", 1)
    if n > 1:
        runs = lambda xs: ("CPU " if len(xs) == 1 else "CPUs ") + cpu_runs(xs)  # noqa: E731
        if p["worker_cpus"]:
            where = (f"on {runs(p['worker_cpus'])} ({src.get('worker_cpus', '?')}; worker 0 is "
                     "the loop)")
        elif p["placement"] == "auto" and n > len(p.get("allowed_cpus") or ()):
            where = f"unpinned (more workers than the {len(p['allowed_cpus'])} CPU(s))"
        else:
            where = f"unpinned ({src.get('worker_cpus', '?')})"
        fn = p.get("function_cpus") or []
        if not fn:
            functions = "functions anywhere"
        elif set(fn) & set(p["worker_cpus"]):
            functions = f"functions share the workers' CPUs (no CPU left: {runs(fn)})"
        else:
            functions = f"functions on {runs(fn)}"
        return (f"placement {p['placement']}: {n} workers ({src.get('workers', '?')}) {where}, "
                f"rings {p['ring_frames']} frames per worker per link "
                f"({src.get('ring_frames', '?')}), {functions}")
    loop = f"loop on {cpus(p['loop_cpus'])}" if p["loop_cpus"] else "loop unpinned"
    worker = (f"inbound worker on {cpus(p['inbound_cpus'])}" if p["inbound_cpus"]
              else "no inbound worker")
    return (f"placement {p['placement']}: {loop} ({src.get('loop_cpus', '?')}), {worker} "
            f"({src.get('inbound_cpus', '?')}), rings {p['ring_frames']} frames "
            f"({src.get('ring_frames', '?')})"
            + (", 1 worker (auto)" if src.get("workers") == AUTO else ""))


def cpu_runs(xs) -> str:
    """CPU numbers for people, in their order, runs of three or more shortened:
    ``[63, 62, 61, 60]`` -> "63-60", ``[0, 1, 2, 5]`` -> "0-2,5"."""
    out, i, xs = [], 0, list(xs)
    while i < len(xs):
        j = i
        step = xs[i + 1] - xs[i] if i + 1 < len(xs) and abs(xs[i + 1] - xs[i]) == 1 else 0
        while step and j + 1 < len(xs) and xs[j + 1] - xs[j] == step:
            j += 1
        if j - i >= 2:
            out.append(f"{xs[i]}-{xs[j]}")
            i = j + 1
        else:
            out.append(str(xs[i]))
            i += 1
    return ",".join(out)


def veth_links(plan) -> int:
    """How many veth links the data path of ``plan`` (a hyperplane.labconfig.Plan) opens: one
    per ENI key, one per environment on a veth, two per NAT gateway (the rings' budget is
    shared among them)."""
    keys = {(e.subnet, tuple(sorted(e.security_groups))) for e in plan.enis}
    return len(keys) + sum(1 for v in plan.envs if v.attach != "tap") + \
        2 * len(plan.nat_gateways)
