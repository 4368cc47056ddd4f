"""Link impairments (``[[impairments]]``, ``hyperplane lab impair``): delay, jitter, loss,
duplication, reordering and a rate limit on a link of a running lab, in netem's words.

Theory of operation
-------------------
Each direction of a link (hyperplane.topology.impair_place says which end transmits it) gets
its impairment at the transmitting end's tc egress. Which tools do it depends on the kernel,
found once per lab (:func:`backend`, kept in the lab's ``impairments.json``):

* **netem** (the kernel has sch_netem): one ``netem`` root qdisc does everything, as users know
  it (``tc qdisc replace dev IF root netem delay 10ms 2ms loss 1% ...``). netem reorders only
  delayed packets, so a ``reorder`` without a ``delay`` gets ``delay 1ms``.
* **tbf+bpf** (no sch_netem, like the 6.18 kernel this was written on, which has tbf, htb and
  clsact but of the classifiers only cls_bpf and no tc actions): ``rate`` is a ``tbf`` root
  qdisc; ``loss``, ``duplicate`` and ``reorder`` are one small eBPF program in a clsact egress
  filter (direct action, :func:`program`):

  - loss: a random fraction of the frames end with TC_ACT_STOLEN, which the sender's stack
    takes as sent (not TC_ACT_SHOT: TCP would see NET_XMIT_DROP, local congestion, and resend
    at once, where a path loss is noticed only by the missing acknowledgement);
  - duplicate: ``bpf_clone_redirect`` of the frame to the same device; the copy carries a mark
    (:data:`DUP_MARK`) so the program passes it once and clears the mark;
  - reorder: a random ``skb->hash`` (``bpf_set_hash``) on a fraction of the frames, and RPS on
    the receiving end spreads frames over the CPUs by hash: a frame steered to another CPU is
    processed before or after its neighbours. Only some of the rehashed frames overtake one
    (about half change CPU), so ``reorder = "10%"`` gives fewer than 10% out of order.

  ``delay`` and ``jitter`` have no tool without sch_netem: they are refused, saying so.

Loss, duplicate and reorder act per frame the sender hands its link; a local TCP hands it GSO
super-packets, so while an environment's or host's egress has them, its ``gso_max_segs`` is 1
(the old value is put back with :func:`clear`).

A TAP environment's ingress direction has no transmitting end in the kernel (the data path
writes into the TAP's fd): its loss and duplication go to the TAP's ingress hook (TC_ACT_SHOT
there is a receive-side loss), and delay, jitter, rate and reorder are refused there on every
kernel. Every request is checked whole before anything changes; a new impairment of a
direction replaces the old one. Everything is in the lab's namespaces and goes with them at
``lab down``; :func:`clear` takes one off by hand (the data path's own ingress filter on the
same links, hyperplane.datapath.steal, is never touched).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
from typing import Any, Dict, List, Optional, Sequence

from hyperplane import netns, paths
from hyperplane.errors import EXIT_USAGE, HyperplaneError, LabError
from hyperplane.labconfig import ImpairmentPlan, Plan
from hyperplane.labconfig.model import format_rate
from hyperplane.labconfig.parse_impairments import ways
from hyperplane.topology import tcbpf
from hyperplane.labconfig.parse_common import did_you_mean
from hyperplane.topology.impair_place import End, Link, Way, links
from hyperplane.topology.netlink import iproute

INGRESS, EGRESS = 0xFFFFFFF2, 0xFFFFFFF3     # clsact's two hooks
ROOT = 0xFFFFFFFF
#: The filter's name (``tc filter show dev IF egress``), priority and handle: not the data
#: path's (steal uses priority 1 on the ingress hook).
FILTER_NAME = "hyperplane-impair"
FILTER_PRIO, FILTER_HANDLE = 2, 2
#: skb->mark of a duplicate's copy while it passes the program again ("HPDP").
DUP_MARK = 0x48504450
#: The environment variable that forces the eBPF backend on a kernel that has netem.
BACKEND_ENV = "HYPERPLANE_IMPAIR_BACKEND"
BACKENDS = {"netem": "sch_netem (tc qdisc netem)",
            "tbf+bpf": "no sch_netem in this kernel: tbf for rate, eBPF (cls_bpf) for loss, "
                       "duplicate and reorder; no delay or jitter"}
_OUR_QDISCS = ("netem", "tbf")
_GET_PRANDOM_U32, _CLONE_REDIRECT, _SET_HASH = 7, 13, 48     # BPF helper ids
_TC_ACT_OK, _TC_ACT_SHOT, _TC_ACT_STOLEN = 0, 2, 4
_BPF_F_INGRESS = 1
_SKB_MARK = 8                                                # offsetof(struct __sk_buff, mark)
_NO_NETEM = ("this kernel has no sch_netem (`modprobe sch_netem`, or a kernel built with "
             "CONFIG_NET_SCH_NETEM); without it a lab does loss, duplicate and reorder (eBPF) "
             "and rate (tbf)")


class ImpairError(HyperplaneError):
    """An impairment that cannot be applied as asked (exit status 2): the message names the
    setting, why, and what works."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_USAGE)


# ---- the eBPF program --------------------------------------------------------------------------
def _per_65536(percent: float) -> int:
    return min(65536, round(percent * 65536 / 100))


def program(*, loss: float, duplicate: float, reorder: float, ifindex: int,
            ingress: bool) -> bytes:
    """The sched_cls program (direct action) of one direction: a copy made by this program
    (skb->mark == DUP_MARK) passes with its mark cleared; of the others, ``loss`` percent are
    dropped (TC_ACT_STOLEN at egress, TC_ACT_SHOT at ingress), ``duplicate`` percent are cloned
    to ``ifindex`` (the same device; its ingress when ``ingress``) and ``reorder`` percent get
    a random skb->hash. Each with its own random number (bpf_get_prandom_u32)."""
    i = tcbpf.insn
    MOV_X, MOV_K, AND_K, JGE_K, JNE_K, CALL, EXIT = 0xBF, 0xB7, 0x57, 0x35, 0x55, 0x85, 0x95
    LDX_W, ST_W, STX_W = 0x61, 0x62, 0x63
    drop_act = _TC_ACT_SHOT if ingress else _TC_ACT_STOLEN
    return b"".join([
        i(MOV_X, 6, 1),                                   # 0  r6 = skb
        i(LDX_W, 9, 6, off=_SKB_MARK),                    # 1  r9 = skb->mark
        i(JNE_K, 9, off=3, imm=DUP_MARK),                 # 2  not a copy of ours: goto 6
        i(ST_W, 6, off=_SKB_MARK, imm=0),                 # 3  skb->mark = 0
        i(MOV_K, 0, imm=_TC_ACT_OK),                      # 4
        i(EXIT),                                          # 5  pass the copy
        i(CALL, imm=_GET_PRANDOM_U32),                    # 6
        i(AND_K, 0, imm=0xFFFF),                          # 7
        i(JGE_K, 0, off=2, imm=_per_65536(loss)),         # 8  keep it: goto 11
        i(MOV_K, 0, imm=drop_act),                        # 9
        i(EXIT),                                          # 10 lost
        i(CALL, imm=_GET_PRANDOM_U32),                    # 11
        i(AND_K, 0, imm=0xFFFF),                          # 12
        i(JGE_K, 0, off=6, imm=_per_65536(duplicate)),    # 13 no copy: goto 20
        i(ST_W, 6, off=_SKB_MARK, imm=DUP_MARK),          # 14 mark the copy-to-be
        i(MOV_X, 1, 6),                                   # 15 r1 = skb
        i(MOV_K, 2, imm=ifindex),                         # 16 r2 = the same device
        i(MOV_K, 3, imm=_BPF_F_INGRESS if ingress else 0),  # 17
        i(CALL, imm=_CLONE_REDIRECT),                     # 18 the copy goes out (or in)
        i(STX_W, 6, 9, off=_SKB_MARK),                    # 19 the original's mark again
        i(CALL, imm=_GET_PRANDOM_U32),                    # 20
        i(MOV_X, 7, 0),                                   # 21 r7 = random
        i(AND_K, 0, imm=0xFFFF),                          # 22
        i(JGE_K, 0, off=3, imm=_per_65536(reorder)),      # 23 same hash: goto 27
        i(MOV_X, 1, 6),                                   # 24 r1 = skb
        i(MOV_X, 2, 7),                                   # 25 r2 = random: the new hash
        i(CALL, imm=_SET_HASH),                           # 26
        i(MOV_K, 0, imm=_TC_ACT_OK),                      # 27
        i(EXIT),                                          # 28
    ])


# ---- the backend, and the state file -----------------------------------------------------------
def _load(name: str) -> Dict[str, Any]:
    try:
        with open(paths.impairments_path(name), encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(name: str, d: Dict[str, Any]) -> None:
    tmp = paths.impairments_path(name) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=1)
    os.replace(tmp, paths.impairments_path(name))


def _tc(ns: str, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True,
                       text=True, timeout=15)
    if check and r.returncode != 0:
        raise LabError(f"tc {' '.join(args)} in {ns}: {r.stderr.strip() or r.returncode}")
    return r


def probe_netem(ns: str) -> bool:
    """Whether the kernel has sch_netem: tried on ``lo`` of namespace ``ns`` (one of the lab's)
    and taken off again."""
    r = _tc(ns, ["qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"], check=False)
    if r.returncode != 0:
        return False
    _tc(ns, ["qdisc", "del", "dev", "lo", "root"], check=False)
    return True


def backend(plan: Plan) -> str:
    """"netem" or "tbf+bpf" (:data:`BACKENDS`) for lab ``plan``: found once and kept in its
    ``impairments.json``; ``HYPERPLANE_IMPAIR_BACKEND=tbf+bpf`` forces the eBPF one."""
    d = _load(plan.name)
    if d.get("backend") in BACKENDS:
        return d["backend"]
    forced = os.environ.get(BACKEND_ENV, "")
    if forced and forced not in BACKENDS:
        raise ImpairError(f"{BACKEND_ENV}={forced!r}: use {' or '.join(BACKENDS)}")
    found = forced or ("netem" if probe_netem(plan.node_ns) else "tbf+bpf")
    d.update(backend=found, impairments=d.get("impairments", []))
    _save(plan.name, d)
    return found


# ---- what one direction needs ------------------------------------------------------------------
@dataclasses.dataclass
class _Steps:
    """What one direction of one link gets: a root qdisc at the sender (tc's words), an eBPF
    filter (at the sender's egress, or a TAP's ingress), RPS on the receiver."""
    qdisc: Optional[List[str]] = None
    qdisc_at: Optional[End] = None
    bpf_at: Optional[End] = None
    bpf_ingress: bool = False
    rps_at: Optional[End] = None
    #: the sender is a local stack (an environment's or host's eth0): its link's gso_max_segs
    #: goes to 1 so each TCP segment is a frame of its own (else a 64 KB GSO super-packet is
    #: one frame to loss, duplicate and reorder, as it is to netem)
    segs_at: Optional[End] = None
    notes: List[str] = dataclasses.field(default_factory=list)


def _netem_args(imp: ImpairmentPlan, notes: List[str]) -> List[str]:
    args = ["netem"]
    delay = imp.delay_ms
    if imp.reorder and not delay:
        delay = 1.0
        notes.append("netem reorders only delayed packets: delay 1ms added")
    if delay:
        args += ["delay", f"{delay:g}ms"] + ([f"{imp.jitter_ms:g}ms"] if imp.jitter_ms else [])
    for key in ("loss", "duplicate", "reorder"):
        if getattr(imp, key):
            args += [key, f"{getattr(imp, key):g}%"]
    if imp.rate_bit:
        args += ["rate", format_rate(imp.rate_bit)]
    return args


def _tbf_args(rate_bit: int) -> List[str]:
    # a burst of 10 ms at the rate (at least two full frames), queueing up to 100 ms
    burst = max(rate_bit // 8 // 100, 3200)
    return ["tbf", "rate", format_rate(rate_bit), "burst", str(burst), "latency", "100ms"]


def plan_way(kind: str, link: Link, direction: str, imp: ImpairmentPlan) -> _Steps:
    """What ``imp`` needs on ``direction`` of ``link`` with backend ``kind``; ImpairError
    naming each setting that cannot be applied there, why, and what works."""
    way: Way = link.way(direction)
    s = _Steps()
    refused: List[str] = []
    if way.sender is None:    # a TAP's ingress: the data path writes into the TAP's fd
        for key, value in (("delay", imp.delay_ms), ("jitter", imp.jitter_ms),
                           ("rate", imp.rate_bit), ("reorder", imp.reorder)):
            if value:
                refused.append(key)
        if refused:
            raise ImpairError(
                f"{link.name} ingress: {', '.join(refused)} cannot be applied: the data path "
                f"writes this TAP environment's frames straight into the TAP, so no qdisc sees "
                f"them on the way; loss and duplicate work here (at the TAP's ingress), or give "
                f'the environment a veth (environments = ["veth"]), or impair its egress')
        s.bpf_at, s.bpf_ingress = way.receiver, True
        return s
    if way.stack_sends and (imp.loss or imp.duplicate or imp.reorder):
        s.segs_at = way.sender
    if kind == "netem":
        s.qdisc, s.qdisc_at = _netem_args(imp, s.notes), way.sender
        return s
    for key, value in (("delay", imp.delay_ms), ("jitter", imp.jitter_ms)):
        if value:
            refused.append(key)
    if refused:
        raise ImpairError(f"{link.name} {direction}: {' and '.join(refused)}: {_NO_NETEM}")
    if imp.reorder:
        if way.receiver is None:
            raise ImpairError(f"{link.name} {direction}: reorder: {_NO_NETEM}, and reordering "
                              "without it needs RPS at the receiving end, which here is the "
                              "data path reading a TAP; give the environment a veth, or use "
                              "a kernel with sch_netem")
        if (os.cpu_count() or 1) < 2:
            raise ImpairError(f"{link.name} {direction}: reorder: {_NO_NETEM}, and reordering "
                              "without it spreads frames over CPUs (RPS): this machine has one")
        s.rps_at = way.receiver
    if imp.rate_bit:
        s.qdisc, s.qdisc_at = _tbf_args(imp.rate_bit), way.sender
    if imp.loss or imp.duplicate or imp.reorder:
        s.bpf_at = way.sender
    return s


# ---- doing it ----------------------------------------------------------------------------------
def _index(ipr, end: End) -> int:
    idx = ipr.link_lookup(ifname=end.ifname)
    if not idx:
        raise LabError(f"no link {end.ifname!r} in {end.ns} ({end.what}); is the lab up?")
    return idx[0]


def _attach_bpf(end: End, imp: ImpairmentPlan, ingress: bool) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    hook = INGRESS if ingress else EGRESS
    with iproute(end.ns) as ipr:
        idx = _index(ipr, end)
        code = program(loss=imp.loss, duplicate=imp.duplicate, reorder=imp.reorder,
                       ifindex=idx, ingress=ingress)
        try:
            fd = tcbpf.load_sched_cls(code, "impairment program")
        except tcbpf.BpfLoadError as e:
            raise LabError(f"{end.what}: {e}") from None
        try:
            try:
                ipr.tc("add", "clsact", idx)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise LabError(f"{end.what}: adding a clsact qdisc: {e}") from None
            _del_bpf(ipr, idx, hook)
            ipr.tc("add-filter", "bpf", idx, handle=FILTER_HANDLE, fd=fd, name=FILTER_NAME,
                   parent=hook, prio=FILTER_PRIO, direct_action=True)
        finally:
            os.close(fd)


def _del_bpf(ipr, idx: int, hook: int) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError

    for f in ipr.get_filters(index=idx, parent=hook):
        opts = f.get_attr("TCA_OPTIONS")
        if f.get_attr("TCA_KIND") == "bpf" and opts is not None \
                and opts.get_attr("TCA_BPF_NAME") == FILTER_NAME:
            try:
                ipr.tc("del-filter", "bpf", idx, handle=FILTER_HANDLE, parent=hook,
                       prio=FILTER_PRIO)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.ENODEV):
                    raise
            return True
    return False


def _set_rps(end: End, on: bool) -> None:
    # `ip netns exec` mounts the namespace's own /sys, where the link's queues are
    mask = format((1 << min(os.cpu_count() or 1, 32)) - 1, "x") if on else "0"
    path = f"/sys/class/net/{end.ifname}/queues/rx-0/rps_cpus"
    r = subprocess.run(["ip", "netns", "exec", end.ns, "sh", "-c", f"echo {mask} > {path}"],
                       capture_output=True, text=True, timeout=15)
    if r.returncode != 0 and on:
        raise LabError(f"{end.what}: setting RPS ({path}): {r.stderr.strip()}")


def _root_is_ours(end: End) -> bool:
    with iproute(end.ns) as ipr:
        idx = ipr.link_lookup(ifname=end.ifname)
        return bool(idx) and any(q.get("parent") == ROOT
                                 and q.get_attr("TCA_KIND") in _OUR_QDISCS
                                 for q in ipr.get_qdiscs(index=idx[0]))


def _gso_max_segs(end: End, value: Optional[int] = None) -> int:
    """The link's gso_max_segs; with ``value``, set it first."""
    if value is not None:
        subprocess.run(["ip", "-n", end.ns, "link", "set", "dev", end.ifname, "gso_max_segs",
                        str(value)], capture_output=True, text=True, timeout=15, check=True)
    with iproute(end.ns) as ipr:
        return int(ipr.get_links(_index(ipr, end))[0].get_attr("IFLA_GSO_MAX_SEGS"))


def _undo(way: Way, rps: bool, segs: Optional[int] = None) -> None:
    """Take everything this module may have put on one direction off again (``segs``: the
    sender's gso_max_segs before); a namespace or link that is gone is nothing to do."""
    if segs and way.sender is not None and netns.exists(way.sender.ns):
        try:
            _gso_max_segs(way.sender, segs)
        except (LabError, subprocess.CalledProcessError):
            pass
    for end in (way.sender, way.receiver):
        if end is None or not netns.exists(end.ns):
            continue
        if end is way.sender and _root_is_ours(end):
            _tc(end.ns, ["qdisc", "del", "dev", end.ifname, "root"], check=False)
        with iproute(end.ns) as ipr:
            idx = ipr.link_lookup(ifname=end.ifname)
            if idx and _del_bpf(ipr, idx[0], EGRESS if end is way.sender else INGRESS) and \
                    not any(ipr.get_filters(index=idx[0], parent=h) for h in (INGRESS, EGRESS)):
                # the clsact qdisc this module added, now empty (the data path's drop filter
                # on a node-side link keeps it)
                _tc(end.ns, ["qdisc", "del", "dev", end.ifname, "clsact"], check=False)
        if rps and end is way.receiver:
            _set_rps(end, False)


def _describe(s: _Steps, imp: ImpairmentPlan) -> str:
    parts = []
    if s.qdisc:
        parts.append(f"tc qdisc {' '.join(s.qdisc)} at {s.qdisc_at.what} egress")
    if s.bpf_at is not None:
        what = [f"{k} {getattr(imp, k):g}%" for k in ("loss", "duplicate", "reorder")
                if getattr(imp, k)]
        hook = "ingress" if s.bpf_ingress else "egress"
        parts.append(f"eBPF ({', '.join(what)}) at {s.bpf_at.what} {hook}")
    if s.rps_at is not None:
        parts.append(f"RPS at {s.rps_at.what}")
    if s.segs_at is not None:
        parts.append(f"gso_max_segs 1 at {s.segs_at.what}")
    return "; ".join(parts + s.notes)


def _find(plan: Plan, link: str) -> Link:
    known = links(plan)
    if link not in known:
        raise ImpairError(f"no link {link!r} in lab {plan.name!r}"
                          f"{did_you_mean(link, list(known))}; a link is named by the node it "
                          f"attaches: {', '.join(known)}")
    return known[link]


def apply(plan: Plan, imp: ImpairmentPlan) -> None:
    """Impair ``imp.link`` of the running lab ``plan`` as ``imp`` says, replacing what its
    direction(s) had. Checked whole first (ImpairError, nothing changed); :func:`active` lists
    the result."""
    link = _find(plan, imp.link)
    kind = backend(plan)
    steps = {d: plan_way(kind, link, d, imp) for d in ways(imp.direction)}
    clear(plan, link.name, imp.direction)
    d = _load(plan.name)
    entries = list(d.get("impairments", []))   # the other links' and directions'
    done: List[Dict[str, Any]] = []
    try:
        for direction, s in steps.items():
            if s.qdisc:
                _tc(s.qdisc_at.ns, ["qdisc", "replace", "dev", s.qdisc_at.ifname, "root",
                                    *s.qdisc])
            if s.bpf_at is not None:
                _attach_bpf(s.bpf_at, imp, s.bpf_ingress)
            if s.rps_at is not None:
                _set_rps(s.rps_at, True)
            segs = None
            if s.segs_at is not None:
                segs = _gso_max_segs(s.segs_at)
                _gso_max_segs(s.segs_at, 1)
            one = dataclasses.replace(imp, link=link.name, direction=direction)
            done.append({"link": link.name, "kind": link.kind, "direction": direction,
                         "settings": one.settings(), "values": dataclasses.asdict(one),
                         "mechanism": _describe(s, one), "rps": s.rps_at is not None,
                         "gso_max_segs": segs if segs != 1 else None})
    except Exception:
        for direction in steps:
            _undo(link.way(direction), rps=True,
                  segs=next((e.get("gso_max_segs") for e in done
                             if e["direction"] == direction), None))
        d.update(backend=kind, impairments=entries)   # the old ones are off too
        _save(plan.name, d)
        raise
    d.update(backend=kind, impairments=entries + done)
    _save(plan.name, d)


def clear(plan: Plan, link: str, direction: str = "both") -> int:
    """Take the impairment of ``link`` off (``direction``: "both", "egress" or "ingress");
    returns how many directions had one."""
    found = _find(plan, link)
    d = _load(plan.name)
    mine = [e for e in d.get("impairments", [])
            if e["link"] == found.name and e["direction"] in ways(direction)]
    for w in ways(direction):
        _undo(found.way(w), rps=any(e["direction"] == w and e.get("rps") for e in mine),
              segs=next((e.get("gso_max_segs") for e in mine if e["direction"] == w), None))
    if d:
        d["impairments"] = [e for e in d.get("impairments", []) if e not in mine]
        _save(plan.name, d)
    return len(mine)


def active(plan: Plan) -> Dict[str, Any]:
    """``{"backend", "backend_note", "impairments": [{"link", "kind", "direction",
    "settings", "values", "mechanism"}, ...]}`` of lab ``plan`` (backend None for a lab that
    has not been up since impairments existed)."""
    d = _load(plan.name)
    kind = d.get("backend")
    return {"backend": kind, "backend_note": BACKENDS.get(kind, ""),
            "impairments": list(d.get("impairments", []))}


def apply_all(plan: Plan) -> None:
    """The lab file's ``[[impairments]]``, at ``lab up`` (the links exist); finds the backend
    either way, so ``lab status`` and ``lab impair --list`` can say it from the start."""
    backend(plan)
    for imp in plan.impairments:
        apply(plan, imp)
