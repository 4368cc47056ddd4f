"""``hyperplane capture``: pcap files of both sides of the NAT, and the packets paired up.

A Hyperplane ENI does source NAT (V2N): a packet an execution environment sends leaves the ENI
with the ENI's address as its source (and a port the ENI chose), and the reply that comes back
to the ENI is rewritten to the environment's address and port before it is delivered. To *see*
that, capture the same packets at two points and compare them:

* the **environment side**: the environment's ``eth0`` inside its own namespace (a TAP device
  the data path holds the other end of, or a veth whose peer sits in the node namespace). Here
  packets carry the environment's own addresses (198.19.0.x in the default lab): before NAT on
  the way out, after it on the way back.
* the **ENI side**: the veth of the environment's ENI key (one link per (subnet, security
  groups) key, carrying every ENI address of that key, e.g. ``eni0``) in the node namespace.
  Here packets carry the ENI's address: after NAT on the way out, before it on the way back.
  Every environment that shares the ENI shows up on this link.

One tcpdump per capture point runs inside that point's namespace (a child forked from a thread
that entered the namespace inherits it) with ``-U -w FILE`` so every packet reaches the file at
once, in its own session so a Ctrl-C in the terminal reaches only us; we stop each one by pid
with SIGINT (tcpdump then writes its last packets and closes the file cleanly), always, in a
``finally``. Files: ``DIR/<env>.env.pcap`` and ``DIR/<link>.eni.pcap``.

Afterwards both files are read back with scapy and each environment-side packet is paired
with its ENI-side twin. NAT changes addresses, ports, checksums and the TTL (the data path is a
router: minus one, RFC 1812 5.3.1), but not what identifies the packet: protocol, the remote
end (destination on the way out, source on the way back), the IPv4 identification field, TCP
sequence/acknowledgment numbers and flags, and the payload bytes. That tuple is the key.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import datetime
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from hyperplane import paths
from hyperplane.errors import EXIT_FAIL, EXIT_NOT_FOUND, EXIT_USAGE, PROG, HyperplaneError

DEFAULT_FILTER = "tcp or udp"
#: How long tcpdump may take to open its interface and say "listening on".
LISTEN_TIMEOUT = 10.0
#: With --count: once the environment-side captures have their packets, how long the ENI side
#: may still take to show the translated copies of outbound ones (they cross the data path
#: microseconds later; this only bounds the wait when a packet was dropped there).
SETTLE = 1.0
#: Pairs printed per environment; the pcap files hold everything.
SUMMARY_LINES = 60
POLL = 0.02

PR_SET_PDEATHSIG = 1


# ---- capture points -----------------------------------------------------------------------------
@dataclasses.dataclass
class Point:
    """Where one tcpdump runs: ``side`` "env" or "eni", a label (environment name or link
    name), its namespace and interface, the pcap file it writes."""
    side: str
    label: str
    netns: str
    ifname: str
    path: str
    proc: Optional[subprocess.Popen] = None
    errlog: str = ""


def resolve_envs(plan, wanted: Optional[Sequence[str]]) -> List:
    """The EnvPlans to capture: every environment with a VPC config by default; names may be
    environments (fn-a-0) or functions (fn-a: all its environments)."""
    envs = list(plan.envs)
    if not wanted:
        chosen = [e for e in envs if e.eni]
        if not chosen:
            raise HyperplaneError(f"lab {plan.name!r} has no environment attached to a VPC: nothing "
                           "goes through an ENI to capture", EXIT_USAGE)
        return chosen
    chosen = []
    for w in wanted:
        hit = [e for e in envs if e.name == w] or [e for e in envs if e.function == w]
        if not hit:
            raise HyperplaneError(f"--env {w!r}: no such environment in lab {plan.name!r}; "
                           f"environments: {', '.join(e.name for e in envs)}"
                           f" (or a function name: {', '.join(f.name for f in plan.functions)})",
                           EXIT_NOT_FOUND)
        chosen += [e for e in hit if e not in chosen]
    return chosen


def eni_link_of(env, links: Iterable[dict], plan) -> Optional[str]:
    """The ENI-key link an environment's new connections leave by now. The data path's link
    list says it: an environment link belongs to the group (engine) of its current key, and
    that group has one link of role "eni". Falls back to the plan (the key at `lab up`)."""
    links = list(links)
    mine = [x for x in links if x.get("role") == "env" and x.get("name") == env.name]
    if mine:
        for x in links:
            if x.get("role") == "eni" and x.get("group") == mine[0].get("group"):
                return x.get("ifname") or x.get("name")
    if env.eni:
        return plan.eni(env.eni).node_ifname
    return None


def plan_points(plan, envs, links, outdir: str) -> Tuple[List[Point], List[Point], Dict[str, str]]:
    """(environment points, ENI points, {env name: ENI link}); one ENI point per link, however
    many of the chosen environments share it."""
    env_points, eni_points, link_of = [], [], {}
    for e in envs:
        env_points.append(Point("env", e.name, e.netns, e.ifname,
                                os.path.join(outdir, f"{e.name}.env.pcap")))
        link = eni_link_of(e, links, plan)
        if link is None:
            continue
        link_of[e.name] = link
        if all(p.label != link for p in eni_points):
            eni_points.append(Point("eni", link, plan.node_ns, link,
                                    os.path.join(outdir, f"{link}.eni.pcap")))
    return env_points, eni_points, link_of


# ---- tcpdump ------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child before exec: if the capture process dies (even SIGKILL), the kernel sends
    this tcpdump SIGINT, so no capture outlives the command that started it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


def start_tcpdump(p: Point, bpf: str, count: Optional[int], logdir: str) -> None:
    """Start tcpdump for ``p`` inside its namespace. ``--immediate-mode``: without it libpcap
    hands packets over a ring block at a time (when full, or after a timeout), and packets in
    the block still open when we stop it are lost; ``-U`` then writes each one to the file at
    once. ``-Z root``: Debian's tcpdump otherwise drops to the ``tcpdump`` user before opening
    the file, which may not be allowed to write there."""
    from hyperplane import netns

    argv = ["tcpdump", "-i", p.ifname, "-n", "--immediate-mode", "-U", "-Z", "root",
            "-w", p.path]
    if count:
        argv += ["-c", str(count)]
    argv.append(bpf)
    p.errlog = os.path.join(logdir, f"{p.side}-{p.label}.log")
    with open(p.errlog, "wb") as err, netns.entered(p.netns):
        p.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, start_new_session=True, close_fds=True,
                                  preexec_fn=_die_with_parent)


def _log(p: Point) -> str:
    try:
        with open(p.errlog, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def wait_listening(points: Sequence[Point], timeout: float = LISTEN_TIMEOUT) -> None:
    """Return once every tcpdump has printed "listening on" (its socket is bound, so traffic
    sent from now on is captured); CliError with tcpdump's own words if one exits first."""
    deadline = time.monotonic() + timeout
    waiting = list(points)
    while waiting:
        for p in list(waiting):
            text = _log(p)
            if "listening on" in text:
                waiting.remove(p)
            elif p.proc.poll() is not None:
                words = " ".join(text.split()) or f"exit status {p.proc.returncode}"
                bad_filter = "syntax error" in text or "can't parse filter" in text
                raise HyperplaneError(f"{'--filter: ' if bad_filter else ''}tcpdump on {p.ifname} in "
                               f"{p.netns} failed: {words}",
                               EXIT_USAGE if bad_filter else EXIT_FAIL)
        if waiting and time.monotonic() > deadline:
            raise HyperplaneError(f"tcpdump did not start listening within {timeout:.0f} s on "
                           + ", ".join(f"{p.ifname} ({p.netns})" for p in waiting))
        if waiting:
            time.sleep(POLL)


def stop(points: Sequence[Point], timeout: float = 5.0) -> None:
    """SIGINT every tcpdump still running (by pid: only the ones we started), wait for it to
    close its file; SIGKILL one that does not. Safe to call twice."""
    for p in points:
        if p.proc is not None and p.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGINT)
    for p in points:
        if p.proc is None:
            continue
        try:
            p.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()


# ---- reading pcap files -------------------------------------------------------------------------
def read_frames(path: str) -> List[Tuple[float, bytes]]:
    """(timestamp, frame) of every complete record of a classic pcap file. A file tcpdump is
    still writing may end in half a record: that one is left out."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    if len(data) < 24:
        return []
    magic = data[:4]
    for endian in ("<", ">"):
        m = struct.unpack(endian + "I", magic)[0]
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            scale = 1e-6 if m == 0xA1B2C3D4 else 1e-9
            break
    else:
        raise ValueError(f"{path}: not a pcap file")
    rec = struct.Struct(endian + "IIII")
    out, off = [], 24
    while off + rec.size <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += rec.size
        if off + incl > len(data):
            break
        out.append((sec + frac * scale, data[off:off + incl]))
        off += incl
    return out


class Pkt(NamedTuple):
    """What the summary needs of one captured TCP/UDP packet."""
    ts: float
    family: int
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    ttl: int
    ipid: Optional[int]      # IPv4 identification; None for IPv6
    seq: int
    ack: int
    flags: str
    payload: bytes


def decode(ts: float, frame: bytes) -> Optional[Pkt]:
    """An Ethernet frame -> Pkt with scapy, or None for anything but IPv4/IPv6 TCP/UDP. The
    payload is cut by the IP length (a short frame may carry Ethernet padding)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    pkt = Ether(frame)
    if IP in pkt:
        ip, family = pkt[IP], 4
        if ip.frag or ip.flags.MF:
            return None
        l3 = frame[14:14 + ip.len]
        hl, ttl, ipid = ip.ihl * 4, ip.ttl, ip.id
    elif IPv6 in pkt:
        ip, family = pkt[IPv6], 6
        l3 = frame[14:14 + 40 + ip.plen]
        hl, ttl, ipid = 40, ip.hlim, None
    else:
        return None
    if family == 6 and ip.nh not in (6, 17):
        return None  # extension headers: not produced by the lab
    if TCP in ip:
        t = ip[TCP]
        body = l3[hl + t.dataofs * 4:]
        return Pkt(ts, family, "tcp", ip.src, t.sport, ip.dst, t.dport, ttl, ipid, t.seq, t.ack,
                   str(t.flags), body)
    if UDP in ip:
        u = ip[UDP]
        return Pkt(ts, family, "udp", ip.src, u.sport, ip.dst, u.dport, ttl, ipid, 0, 0, "",
                   l3[hl + 8:])
    return None


def read_packets(path: str) -> List[Pkt]:
    return [p for p in (decode(ts, fr) for ts, fr in read_frames(path)) if p is not None]


# ---- pairing ------------------------------------------------------------------------------------
class Pair(NamedTuple):
    """One packet seen on both sides. ``outbound``: environment -> VPC, so ``before`` is the
    environment-side copy and ``after`` the ENI-side one; for a reply it is the other way
    round. ``after`` is None when the other side has no copy (dropped by the data path, or
    the capture stopped first)."""
    outbound: bool
    before: Optional[Pkt]
    after: Optional[Pkt]


def _key(p: Pkt, outbound: bool):
    remote = (p.dst, p.dport) if outbound else (p.src, p.sport)
    return (outbound, p.proto, remote, p.ipid, p.seq, p.ack, p.flags, p.payload)


def pair_up(env_pkts: Sequence[Pkt], eni_pkts: Sequence[Pkt],
            env_addrs: Iterable[str]) -> Tuple[List[Pair], List[Pkt]]:
    """Pair each environment-side packet of this environment (by its addresses) with its
    ENI-side copy; returns (pairs in environment-side order, ENI-side packets left over: other
    environments sharing the link, or copies whose twin was not captured). The same key twice
    (a retransmission) pairs first with first."""
    addrs = {a.split("/")[0] for a in env_addrs if a}
    pool: Dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
    for q in eni_pkts:
        # On the ENI link a packet is outbound when its source is not a VPC peer we can tell
        # from here; both keys are filed and whichever the environment side asks for is used.
        pool[_key(q, True)].append(q)
        pool[_key(q, False)].append(q)
    used = set()
    pairs = []
    for p in env_pkts:
        if p.src in addrs:
            outbound = True
        elif p.dst in addrs:
            outbound = False
        else:
            continue
        cands = pool.get(_key(p, outbound))
        twin = None
        while cands:
            q = cands.popleft()
            if id(q) not in used:
                twin = q
                used.add(id(q))
                break
        pairs.append(Pair(outbound, p, twin) if outbound else Pair(outbound, twin, p))
    left = [q for q in eni_pkts if id(q) not in used]
    return pairs, left


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _flow(p: Pkt) -> str:
    return f"{_ep(p.src, p.sport)} -> {_ep(p.dst, p.dport)}"


def format_pair(pair: Pair) -> str:
    """``tcp S    198.19.0.2:40000 -> 198.18.1.5:443  ==>  198.18.1.4:40000 -> 198.18.1.5:443``:
    the packet before the data path, then after it (for a reply: ENI side first)."""
    p = pair.before or pair.after
    head = f"{p.proto} {p.flags:<4}"
    if pair.before is None:
        return f"{head} (not on the ENI side)  ==>  {_flow(pair.after)}"
    if pair.after is None:
        return f"{head} {_flow(pair.before)}  ==>  (not on the ENI side: dropped by the data " \
               "path, or the capture stopped first)"
    us = (pair.after.ts - pair.before.ts) * 1e6
    return (f"{head} {_flow(pair.before)}  ==>  {_flow(pair.after)}"
            f"   {'ttl' if p.family == 4 else 'hlim'} {pair.before.ttl}->{pair.after.ttl}, "
            f"{len(p.payload)} B, {us:+.0f} us")


def results(env_points: Sequence[Point], eni_points: Sequence[Point],
            link_of: Dict[str, str], plan) -> Dict:
    """What a capture found: ``files`` (path, side, ifname, netns, packets), per environment
    its ENI link and ``pairs`` (:class:`Pair`, every one), and per ENI link the packets left
    without a twin (other environments sharing it). :func:`print_summary` prints it,
    :func:`results_json` makes it JSON."""
    eni_pkts = {p.label: read_packets(p.path) for p in eni_points}
    files = [{"path": p.path, "side": p.side, "label": p.label, "ifname": p.ifname,
              "netns": p.netns, "packets": len(read_frames(p.path))}
             for p in list(env_points) + list(eni_points)]
    left_total: Dict[str, set] = {k: {id(q) for q in v} for k, v in eni_pkts.items()}
    envs = []
    for p in env_points:
        env = plan.env(p.label)
        link = link_of.get(p.label)
        pairs, left = pair_up(read_packets(p.path), eni_pkts.get(link, []),
                              (env.ipv4, env.ipv6))
        if link in left_total:
            left_total[link] &= {id(q) for q in left}
        envs.append({"environment": p.label, "link": link, "pairs": pairs})
    return {"files": files, "environments": envs,
            "unpaired": {link: len(ids) for link, ids in left_total.items() if ids}}


def _pkt_json(p: Optional[Pkt]) -> Optional[Dict]:
    if p is None:
        return None
    return {"time": p.ts, "src": p.src, "sport": p.sport, "dst": p.dst, "dport": p.dport,
            "ttl": p.ttl, "ipid": p.ipid, "seq": p.seq, "ack": p.ack, "flags": p.flags,
            "payload_bytes": len(p.payload)}


def pair_json(pair: Pair) -> Dict:
    """One pair as JSON: direction, protocol, the packet ``before`` and ``after`` NAT (null
    when that side has no copy) and the microseconds between them."""
    p = pair.before or pair.after
    both = pair.before is not None and pair.after is not None
    return {"direction": "outbound" if pair.outbound else "reply", "proto": p.proto,
            "family": p.family, "before": _pkt_json(pair.before), "after": _pkt_json(pair.after),
            "delay_us": round((pair.after.ts - pair.before.ts) * 1e6, 1) if both else None}


def results_json(res: Dict) -> Dict:
    """:func:`results` (and capture's ``dir``/``interrupted``) with every pair as JSON."""
    return {**res, "environments": [{**e, "pairs": [pair_json(x) for x in e["pairs"]]}
                                    for e in res["environments"]]}


def print_summary(res: Dict, out=None) -> None:
    """The files, then each environment's packets paired before/after NAT (the first
    SUMMARY_LINES of them), then the ENI-side packets without a twin."""
    out = out or sys.stdout
    print("files:", file=out)
    for f in res["files"]:
        side = "environment side" if f["side"] == "env" else "ENI side"
        print(f"  {f['path']}  ({side}: {f['ifname']} in {f['netns']}, {f['packets']} "
              "packet(s))", file=out)
    for e in res["environments"]:
        pairs = e["pairs"]
        print(f"\n{e['environment']} <-> {e['link'] or '(no ENI)'}: before ==> after NAT "
              "(requests: environment side ==> ENI side; replies: ENI side ==> environment "
              "side)", file=out)
        if not pairs:
            print("  (no TCP/UDP packets of this environment were captured)", file=out)
        for pair in pairs[:SUMMARY_LINES]:
            print("  " + format_pair(pair), file=out)
        if len(pairs) > SUMMARY_LINES:
            print(f"  ... and {len(pairs) - SUMMARY_LINES} more: open the pcap files "
                  "(tcpdump -nr FILE, or Wireshark)", file=out)
    for link, n in res["unpaired"].items():
        print(f"\n{link}: {n} packet(s) of other environments sharing this ENI "
              "(or without a twin on the environment side)", file=out)


# ---- a capture ------------------------------------------------------------------------------------
def default_dir(lab_name: str) -> str:
    base = os.path.join(paths.lab_dir(lab_name), paths.CAPTURES_DIR,
                        datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    d, i = base, 1
    while os.path.exists(d):
        i += 1
        d = f"{base}-{i}"
    return d


def _ready(path: Optional[str], outdir: str, points: Sequence[Point]) -> None:
    """Tell scripts the captures are listening: the --ready-file (written whole, then renamed
    into place, so a reader never sees half of it) and a line on stderr."""
    if path:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "dir": outdir,
                       "files": {f"{p.label}.{p.side}": p.path for p in points}}, f)
        os.replace(tmp, path)
    print("capturing... (Ctrl-C to stop)", file=sys.stderr, flush=True)


def _outbound_settled(env_points, eni_points, link_of, plan) -> bool:
    """Every outbound packet on the environment side already has its ENI-side copy."""
    eni = {p.label: read_packets(p.path) for p in eni_points}
    for p in env_points:
        env = plan.env(p.label)
        pairs, _ = pair_up(read_packets(p.path), eni.get(link_of.get(p.label), []),
                           (env.ipv4, env.ipv6))
        if any(x.outbound and x.after is None for x in pairs):
            return False
    return True


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def capture(plan, envs, links, outdir: str, bpf: str = DEFAULT_FILTER,
            count: Optional[int] = None, duration: Optional[float] = None,
            ready_file: Optional[str] = None, err=None) -> Dict:
    """Capture ``envs`` (EnvPlans of ``plan``) on both sides of the NAT into ``outdir`` until
    ``count`` packets per environment side, ``duration`` seconds, or Ctrl-C/SIGINT/SIGTERM;
    then read the files back and pair the packets before/after NAT. ``links`` is the running
    data path's link list (its ``counters``), which says which ENI link each environment uses
    now. Returns :func:`results` with ``dir`` and ``interrupted`` (true after Ctrl-C). Every
    tcpdump started here is stopped, always."""
    err = err or sys.stderr
    env_points, eni_points, link_of = plan_points(plan, envs, links, outdir)
    for p in env_points:
        if p.label not in link_of:
            print(f"{PROG}: note: {p.label} has no VPC config, so no ENI side",
                  file=err)
    points = env_points + eni_points
    bpf = bpf or DEFAULT_FILTER
    logdir = tempfile.mkdtemp(prefix="hp-capture-")
    interrupted = False
    # Ctrl-C, or SIGINT/SIGTERM from a script, ends the capture cleanly. SIGINT explicitly:
    # a shell starts background jobs with SIGINT ignored, and Python keeps that.
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # The ENI side first: it must be listening before an environment's packet can reach it.
        for p in eni_points + env_points:
            start_tcpdump(p, bpf, count if p.side == "env" else None, logdir)
        wait_listening(points)
        _ready(ready_file, outdir, points)
        deadline = time.monotonic() + duration if duration is not None else None
        settle_until = None
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if count and all(p.proc.poll() is not None for p in env_points):
                    # --count reached on every environment side: let the ENI side catch the
                    # translated copies of the last outbound packets, then stop it.
                    settle_until = settle_until or now + SETTLE
                    if now >= settle_until or _outbound_settled(env_points, eni_points,
                                                                 link_of, plan):
                        break
                time.sleep(POLL)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        try:
            stop(points)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            shutil.rmtree(logdir, ignore_errors=True)
    if interrupted:
        print("stopped (Ctrl-C)", file=err)
    return {"dir": outdir, "interrupted": interrupted,
            **results(env_points, eni_points, link_of, plan)}
