"""Where the data path runs: its loop's CPU, its inbound worker's, its rings' depth, and where
the functions' code runs, decided once when the data path starts (:func:`place`).

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

Every choice can be made in the lab file instead: explicit ``cpus``, ``inbound_cpus`` and
``ring_frames`` win (the rest is still placed around them), and ``placement = "none"`` places
nothing (the scheduler decides, no inbound worker, 4,096-frame rings, unless set explicitly).

:func:`place` is pure (CPU sets in, :class:`Placement` out) so tests feed it fake machines; the
data path (hyperplane.datapath.daemon) applies it and reports it in its counters, the workloads
service applies its ``function_cpus``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Tuple

from hyperplane.engine.constants import RING_FRAMES_DEFAULT, RING_FRAMES_STEP
from hyperplane.errors import LabConfigError
from hyperplane.labconfig.model import DatapathPlan

#: ``[datapath] placement``: "auto" places what the lab file leaves out, "none" nothing.
PLACEMENTS = ("auto", "none")
#: The ring depth "auto" gives each veth link (frames of 2 KiB: 32 MiB), as the bench measured.
AUTO_RING_FRAMES = 16384
#: The most ring frames "auto" gives all the veth links together (256 MiB): 8 links at
#: AUTO_RING_FRAMES; more links share it, each keeping at least RING_FRAMES_DEFAULT.
RING_BUDGET_FRAMES = 8 * AUTO_RING_FRAMES

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

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (the data path's ``counters`` "placement", ``lab status --json``,
        ``stats --json``)."""
        d = dataclasses.asdict(self)
        for k in ("loop_cpus", "inbound_cpus", "function_cpus", "allowed_cpus"):
            d[k] = list(d[k])
        return d


def ring_frames_for(veth_links: int) -> int:
    """"auto"'s ring depth for a lab of ``veth_links`` veth links: AUTO_RING_FRAMES each while
    RING_BUDGET_FRAMES holds them all, else their share of it (whole blocks of
    RING_FRAMES_STEP), never below RING_FRAMES_DEFAULT."""
    share = RING_BUDGET_FRAMES // max(1, veth_links)
    share -= share % RING_FRAMES_STEP
    return max(RING_FRAMES_DEFAULT, min(AUTO_RING_FRAMES, share))


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
    _check_available("cpus", datapath.cpus, cpus)
    _check_available("inbound_cpus", datapath.inbound_cpus, cpus)
    auto = datapath.placement == "auto"
    unset = AUTO if auto else DEFAULT
    source = {"loop_cpus": LAB_FILE if datapath.cpus else unset,
              "inbound_cpus": LAB_FILE if datapath.inbound_cpus else unset,
              "ring_frames": LAB_FILE if datapath.ring_frames else unset}

    loop = tuple(datapath.cpus)
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


def describe(p: Dict[str, Any]) -> str:
    """One line for people: ``placement auto: loop on CPU 1 (auto), inbound worker on CPU 0
    (auto), rings 16384 frames (auto)`` from a :meth:`Placement.to_dict`."""
    src = p.get("source") or {}
    cpus = lambda xs: ("CPU " if len(xs) == 1 else "CPUs ") + ",".join(map(str, xs))  # noqa: E731
    loop = f"loop on {cpus(p['loop_cpus'])}" if p["loop_cpus"] else "loop unpinned"
    worker = (f"inbound worker on {cpus(p['inbound_cpus'])}" if p["inbound_cpus"]
              else "no inbound worker")
    return (f"placement {p['placement']}: {loop} ({src.get('loop_cpus', '?')}), {worker} "
            f"({src.get('inbound_cpus', '?')}), rings {p['ring_frames']} frames "
            f"({src.get('ring_frames', '?')})")


def veth_links(plan) -> int:
    """How many veth links the data path of ``plan`` (a hyperplane.labconfig.Plan) opens: one
    per ENI key, one per environment on a veth, two per NAT gateway (the rings' budget is
    shared among them)."""
    keys = {(e.subnet, tuple(sorted(e.security_groups))) for e in plan.enis}
    return len(keys) + sum(1 for v in plan.envs if v.attach != "tap") + \
        2 * len(plan.nat_gateways)
