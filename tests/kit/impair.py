"""Loss and reordering on a veth pair a lab created, for transfers that must survive them.

``tc netem`` (``loss 1% delay 1ms reorder 5% 50%``) is the usual tool and is used where the
kernel has it. Where it has not (``CONFIG_NET_SCH_NETEM`` unset, as on the 6.18 kernel this
was written on), the same two effects come from what such kernels do have, cls_bpf and RPS:

* **loss**: an eBPF program at the *receiving* end's tc ingress drops a random fraction of the
  frames (``bpf_get_prandom_u32``). Not at the sender's egress: a locally sent TCP segment
  dropped there comes back to TCP as NET_XMIT_DROP, which it treats as local congestion and
  sends again, not as a loss on the path;
* **reordering**: an eBPF program at the *sending* end's tc egress gives a random fraction of
  the frames a random ``skb->hash`` (``bpf_set_hash``), and RPS on the receiving end spreads
  frames over the CPUs by that hash. A frame steered to another CPU's backlog is processed
  there, before or after its neighbours: the reordering a multi-queue path makes.

Both ways apply to both directions of one veth pair (``a`` in namespace ``ns_a``, ``b`` in
``ns_b``) and come off again when the context ends, whatever happened. Everything is in
namespaces the lab made; nothing outside them is touched.
"""
from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from typing import Iterator, List, Tuple

from hyperplane import netns
from hyperplane.datapath import steal

__all__ = ["impaired", "ImpairError"]

INGRESS, EGRESS = 0xFFFFFFF2, 0xFFFFFFF3      # clsact's two hooks
_GET_PRANDOM_U32, _SET_HASH = 7, 48           # BPF helper ids (include/uapi/linux/bpf.h)
_TC_ACT_OK, _TC_ACT_SHOT = 0, 2
FILTER_NAME = "hp-test-impair"


class ImpairError(Exception):
    """The impairment could not be set up (the message says why)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(drop_per_65536: int, rehash_per_65536: int) -> bytes:
    """A sched_cls program (direct action): drop a frame with probability
    ``drop_per_65536``/65536, else give it a random skb->hash with probability
    ``rehash_per_65536``/65536, else let it pass unchanged."""
    MOV_X, MOV_K, AND_K, RSH_K, JGE_K, CALL, EXIT = 0xBF, 0xB7, 0x57, 0x77, 0x35, 0x85, 0x95
    return b"".join([
        _insn(MOV_X, 6, 1),                       # 0  r6 = skb
        _insn(CALL, imm=_GET_PRANDOM_U32),        # 1  r0 = random
        _insn(MOV_X, 7, 0),                       # 2  r7 = r0
        _insn(MOV_X, 0, 7),                       # 3  r0 = r7
        _insn(AND_K, 0, imm=0xFFFF),              # 4  r0 &= 0xffff
        _insn(JGE_K, 0, off=2, imm=drop_per_65536),   # 5  if r0 >= drop: goto 8
        _insn(MOV_K, 0, imm=_TC_ACT_SHOT),        # 6
        _insn(EXIT),                              # 7  drop
        _insn(MOV_X, 0, 7),                       # 8  r0 = r7
        _insn(RSH_K, 0, imm=16),                  # 9  r0 >>= 16
        _insn(JGE_K, 0, off=3, imm=rehash_per_65536),  # 10 if r0 >= rehash: goto 14
        _insn(MOV_X, 1, 6),                       # 11 r1 = skb
        _insn(MOV_X, 2, 7),                       # 12 r2 = the random number: the new hash
        _insn(CALL, imm=_SET_HASH),               # 13
        _insn(MOV_K, 0, imm=_TC_ACT_OK),          # 14
        _insn(EXIT),                              # 15
    ])


def _load(code: bytes) -> int:
    try:
        return steal.load_sched_cls(code, "impairment program")
    except steal.StealError as e:
        raise ImpairError(str(e)) from None


def _attach(ns: str, ifname: str, parent: int, code: bytes) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    fd = _load(code)
    try:
        with netns.entered(ns), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise ImpairError(f"no link {ifname!r} in {ns}")
            try:
                ipr.tc("add", "clsact", idx[0])
            except NetlinkError as e:
                if e.code != 17:     # EEXIST
                    raise ImpairError(f"{ns}/{ifname}: clsact: {e}") from None
            ipr.tc("add-filter", "bpf", idx[0], handle=1, fd=fd, name=FILTER_NAME,
                   parent=parent, prio=1, direct_action=True)
    finally:
        os.close(fd)


def _detach(ns: str, ifname: str) -> None:
    """Remove the clsact qdisc (and with it the filters) from ``ifname``; a link or namespace
    that is gone already is nothing to do."""
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", ifname, "clsact"],
                   capture_output=True, timeout=10)


def _rps(ns: str, ifname: str, mask: str) -> None:
    # `ip netns exec` mounts the namespace's own /sys, where the link's queues are
    path = f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {mask} > {path}"],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise ImpairError(f"{ns}/{ifname}: setting rps_cpus: {r.stderr.strip()}")


def has_netem(ns: str, ifname: str) -> bool:
    """Whether this kernel has netem (tried on ``ifname`` and taken off again)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ifname, "root",
                        "netem", "delay", "0"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return False
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", ifname, "root"],
                   capture_output=True, timeout=10)
    return True


@contextlib.contextmanager
def impaired(ns_a: str, a: str, ns_b: str, b: str, *, loss: float = 0.01,
             reorder: float = 0.05, delay_ms: float = 1.0,
             rehash: float = 0.25) -> Iterator[str]:
    """Loss ``loss`` both ways on the veth pair ``a``/``b``, and reordering: with netem,
    ``reorder`` of the frames go out at once while the rest wait ``delay_ms``; without it,
    ``rehash`` of the frames get a random hash (about half of them then land on another CPU,
    and only some of those overtake a neighbour: 0.25 gave TCPSACKReorder of a few to ~60 per
    100 MB on a 2-CPU machine, 0.05 often none). Yields what was used: ``"netem ..."`` or
    ``"bpf+rps ..."``."""
    ends: List[Tuple[str, str]] = [(ns_a, a), (ns_b, b)]
    if has_netem(ns_a, a):
        spec = ["delay", f"{delay_ms}ms", "reorder", f"{reorder * 100:g}%", "50%",
                "loss", f"{loss * 100:g}%"]
        try:
            for ns, ifname in ends:
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ifname,
                                "root", "netem", *spec], check=True, capture_output=True,
                               timeout=10)
            yield "netem " + " ".join(spec)
        finally:
            for ns, ifname in ends:
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", ifname,
                                "root"], capture_output=True, timeout=10)
        return
    ncpu = os.cpu_count() or 1
    if ncpu < 2:
        raise ImpairError("no netem in this kernel, and RPS reordering needs 2 CPUs")
    drop = program(round(loss * 65536), 0)
    rehashing = program(0, round(rehash * 65536))
    try:
        for (ns_s, snd), (ns_r, rcv) in ((ends[0], ends[1]), (ends[1], ends[0])):
            _attach(ns_s, snd, EGRESS, rehashing)
            _attach(ns_r, rcv, INGRESS, drop)
            _rps(ns_r, rcv, format((1 << min(ncpu, 32)) - 1, "x"))
        yield (f"bpf+rps: loss {loss:.1%} at ingress, {rehash:.1%} of frames rehashed at "
               f"egress and spread over {ncpu} CPUs by RPS (no netem in this kernel)")
    finally:
        for ns, ifname in ends:
            _detach(ns, ifname)
            with contextlib.suppress(ImpairError):
                _rps(ns, ifname, "0")
