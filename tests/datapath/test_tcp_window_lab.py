"""TCP sequence windows through the NAT in a real lab (issue 16): blind injection from the VPC
side, and a large transfer through a lossy, reordering VPC link.

* Blind injection: an environment holds an idle TCP connection to a server on a VPC host. From
  the VPC host's namespace, segments are forged on the connection's reply tuple (server
  address:port -> the ENI's address and the connection's ENI port, read from the lab's
  conntrack listing) with sequence (or acknowledgement) numbers far outside the window, one of
  each of ACK, ACK with data, FIN, RST, RST+ACK, SYN and no flag per number. None may reach the
  environment (a sniffer in its namespace, BPF-filtered on the connection's port, runs from
  before the first forgery to after a fence that must arrive), the connection's state and
  timer stay as they were (the lab clock is moved 60 s first, so a refreshed timer would show
  as 60 s more, not as a race), the connection still carries data both ways, and each forgery
  is counted as the engine drop ``tcp_out_of_window``. Controls: a retransmission of data
  already acknowledged (the fence) reaches the environment, which acknowledges it again; an
  in-window RST with an inexact sequence number (RFC 5961 3.2) reaches it, does not close the
  entry, and is answered with a challenge ACK; the exact RST then closes both.
* A 100 MB transfer each way through the NAT with loss and reordering on the server host's
  link (``tc netem``, or where the kernel has no netem an eBPF + RPS stand-in: kit.impair),
  window scaling and SACK on (Linux defaults, checked on the sockets), SHA-256 compared, and
  retransmissions and SACK recoveries seen (the impairment did its work).

Needs root (the plugin's fixtures skip, naming the capability, without it). Only the
benchmark ranges 198.18.0.0/15 and 2001:2::/48; the labs are the plugin's, uniquely named and
always taken down; every wait is bounded.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import secrets
import socket
import struct
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

from kit import impair, traffic as nt, wire
from kit.labs import LabView, env_addr, wait_until

OOW = "tcp_out_of_window"          # the engine's drop reason for a segment outside the window
ENV = "fn-b-0"                     # the veth environment of the default lab
IO_TIMEOUT = 10.0
FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
#: every forgery is one of these (scapy's flag letters): ACK, ACK with data, FIN, RST, RST+ACK,
#: SYN, no flag
FORGED_FLAGS = ["A", "PA", "FA", "R", "RA", "S", ""]
FORGED_DATA = b"forged-" + secrets.token_hex(4).encode()
CLOCK_STEP = 60.0


# ---- an idle connection and what its segments say -----------------------------------------------
class Idle:
    """A TCP connection from the environment to a listener on the server host, both ends held
    here (sockets created in their namespaces), idle between the calls that use it. A sniffer
    in the server's namespace sees its segments, so the next sequence numbers are known."""

    def __init__(self, lab: LabView, family: int, stack: contextlib.ExitStack):
        self.lab, self.family = lab, family
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        self.server_addr = lab.server_addr(family)
        self.eni_addr = lab.eni_addr(family)
        env = lab.env(ENV)
        self.env_ns, self.env_addr = env.netns, env_addr(env, family)
        ls = stack.enter_context(nt.socket_in(lab.server.netns, af, socket.SOCK_STREAM))
        ls.bind((self.server_addr, 0))
        ls.listen(1)
        ls.settimeout(IO_TIMEOUT)
        self.server_port = ls.getsockname()[1]
        self.wire = stack.enter_context(wire.Sniffer(lab.server.netns, lab.server.ifname,
                                                     bpf=wire.bpf_l4("tcp", self.server_port)))
        self.client = stack.enter_context(nt.socket_in(self.env_ns, af, socket.SOCK_STREAM))
        self.client.settimeout(IO_TIMEOUT)
        self.client.connect((self.server_addr, self.server_port))
        self.server, _ = ls.accept()
        stack.enter_context(self.server)
        self.server.settimeout(IO_TIMEOUT)
        self.env_port = self.client.getsockname()[1]
        self.env_sent = self.server_sent = 0       # data bytes each end sent
        (e,) = lab.conntrack(proto="tcp", orig_src=self.env_addr, sport=self.env_port)
        self.eni_port = e["reply"]["dport"]
        assert (e["reply"]["src"], e["reply"]["sport"], e["reply"]["dst"]) == \
            (self.server_addr, self.server_port, self.eni_addr), e

    def roundtrip(self, tag: bytes) -> None:
        """Data both ways: the environment sends, the server answers."""
        self.client.sendall(b"ping " + tag)
        assert _recv(self.server, 5 + len(tag)) == b"ping " + tag
        self.env_sent += 5 + len(tag)
        self.server.sendall(b"pong " + tag)
        assert _recv(self.client, 5 + len(tag)) == b"pong " + tag
        self.server_sent += 5 + len(tag)

    def entry(self) -> Dict:
        (e,) = self.lab.conntrack(proto="tcp", orig_src=self.env_addr, sport=self.env_port)
        return e

    def segments(self, from_eni: Optional[bool] = None) -> List:
        """The connection's TCP segments seen at the server host (scapy), in order; only those
        the ENI sent (True) or the server sent (False)."""
        out = []
        for e in self.wire.matching():
            ip = _l3(e)
            if ip is None:
                continue
            if from_eni is None or (ip.src == self.eni_addr) == from_eni:
                out.append(e)
        return out

    def quiet_edges(self) -> Tuple[int, int, int]:
        """Once both ends have acknowledged everything sent so far: (the server's next sequence
        number, the environment's next sequence number, the server's last window field). The
        numbers come from the initial ones (the SYN and the SYN-ACK) and the bytes each end
        sent, not from the last segment captured, which may lag behind."""
        from scapy.layers.inet import TCP

        def edges():
            srv, eni = self.segments(False), self.segments(True)
            syn = [e for e in eni if e[TCP].flags == "S"]
            synack = [e for e in srv if e[TCP].flags == "SA"]
            if not syn or not synack:
                return None
            e_nxt = (syn[0][TCP].seq + 1 + self.env_sent) % 2**32
            s_nxt = (synack[0][TCP].seq + 1 + self.server_sent) % 2**32
            if any(e[TCP].ack == s_nxt for e in eni) and any(e[TCP].ack == e_nxt for e in srv):
                return s_nxt, e_nxt, srv[-1][TCP].window
            return None
        return wait_until(edges, 5.0, "both ends of the connection acknowledging everything")

    def forge(self, flags: str, seq: int, ack: int, payload: bytes = b"", window: int = 512):
        """A segment on the reply tuple, as IP bytes (for kit.wire.send_raw)."""
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6
        l3 = (IP(src=self.server_addr, dst=self.eni_addr, ttl=64) if self.family == 4
              else IPv6(src=self.server_addr, dst=self.eni_addr, hlim=64))
        seg = l3 / TCP(sport=self.server_port, dport=self.eni_port, flags=flags,
                       seq=seq % 2**32, ack=ack % 2**32 if "A" in flags else 0, window=window)
        return bytes(seg / payload if payload else seg)


def _recv(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            raise AssertionError(f"connection closed after {len(got)} of {n} bytes")
        got += chunk
    return got


def _l3(e):
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    return e[IP] if e.haslayer(IP) else e[IPv6] if e.haslayer(IPv6) else None


def _end(e) -> int:
    """SEG.SEQ + SEG.LEN (SYN and FIN count one each), mod 2**32."""
    from scapy.layers.inet import TCP
    t = e[TCP]
    return (t.seq + len(bytes(t.payload)) + bool(t.flags & 0x02) + bool(t.flags & 0x01)) % 2**32


def _sig(e) -> Tuple[str, int, int, int]:
    from scapy.layers.inet import TCP
    t = e[TCP]
    return (str(t.flags), t.seq, t.ack if t.flags & 0x10 else 0, len(bytes(t.payload)))


def _inbound_seen(lab: LabView) -> int:
    """Inbound packets the engines have decided on: translated or dropped for any reason."""
    c = lab.counters()
    return sum(e["packets_inbound"] + sum(e["drops"].values()) for e in c["enis"])


def _engine_drops(lab: LabView) -> Dict[str, int]:
    """The engine drop counters of ``stats --json``, by reason."""
    return lab.stats()["drops"]["engine"]


def _oow(lab: LabView) -> int:
    return _engine_drops(lab).get(OOW, 0)


def _rose(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _env_sniffer(conn: Idle) -> wire.Sniffer:
    """What the environment receives on the connection (its own port), nothing it sends."""
    return wire.Sniffer(conn.env_ns, "eth0", bpf=wire.bpf_l4("tcp", conn.env_port),
                        outgoing=False)


# ---- blind injection -------------------------------------------------------------------------
@FAMILIES
def test_blind_segments_off_the_window_reach_nothing_and_change_nothing(dlab, family):
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    with contextlib.ExitStack() as st:
        conn = Idle(dlab, family, st)
        conn.roundtrip(b"before")
        s_nxt, e_nxt, window = conn.quiet_edges()
        dlab.advance(CLOCK_STEP)     # a refreshed timer would now stand CLOCK_STEP higher
        # sequence numbers off the server's next one by 2**30 and 2**20 either way and by two
        # random amounts at least 2**21 (2 MiB, above any window this idle connection
        # advertised) away; the real ack. Then the real sequence number with acks 2**30 off.
        offsets = [2**30, -2**30, 1 << 20, -(1 << 20)] + \
            [rng.randrange(1 << 21, 2**32 - (1 << 21)) for _ in range(2)]
        plan = [(fl, s_nxt + off, e_nxt) for fl in FORGED_FLAGS for off in offsets]
        plan += [(fl, s_nxt, e_nxt + off) for fl in ("A", "PA", "FA") for off in (2**30, -2**30)]
        forged = [conn.forge(fl, seq, ack, FORGED_DATA if "P" in fl else b"", window)
                  for fl, seq, ack in plan]
        t0 = time.monotonic()
        before = conn.entry()
        drops0, seen0 = _engine_drops(dlab), _inbound_seen(dlab)
        last = b"pong before"[-4:]          # the server's last 4 data bytes
        with _env_sniffer(conn) as env_rx:
            sent = wire.send_raw(dlab.server.netns, forged, conn.eni_addr, rate=2000)
            wait_until(lambda: _inbound_seen(dlab) >= seen0 + sent, 10.0,
                       f"the data path deciding on the {sent} forged segments")
            after = conn.entry()
            t1 = time.monotonic()
            drops = _rose(drops0, _engine_drops(dlab))
            oow = drops.get(OOW, 0)
            # the fence, and the in-window control: the server's last 4 data bytes again, a
            # retransmission of data already acknowledged (RFC 9293 3.10.7.4: the receiver
            # acknowledges it again). It must get through, and once it has, everything sent
            # before it has been delivered or dropped.
            fence = ("PA", (s_nxt - 4) % 2**32, e_nxt, 4)
            acks_before = len(conn.segments(True))
            retrans = conn.forge("PA", s_nxt - 4, e_nxt, last, window)
            wire.send_raw(dlab.server.netns, [retrans], conn.eni_addr)
            with contextlib.suppress(TimeoutError):
                env_rx.wait_for(lambda e: _sig(e) == fence, timeout=5.0)
        got = [_sig(e) for e in env_rx.matching()]
        wanted = {_sig(_ether(p)) for p in forged}
        reached = [g for g in got if g in wanted]
        other = [g for g in got if g not in wanted and g != fence]
        fenced = fence in got
        # the environment answered the retransmission with an ACK of everything it has
        reacked = fenced and bool(_wait_quietly(lambda: any(
            _sig(e)[0] == "A" and _sig(e)[2] == s_nxt
            for e in conn.segments(True)[acks_before:]), 5.0))
        conn.roundtrip(b"after")
        final = conn.entry()
        report = (f"family {family}, seed {seed}: {len(reached)} of {sent} forged segments "
                  f"reached the environment {reached[:8]}{' ...' if len(reached) > 8 else ''}; "
                  f"other segments there {other}; state {before['state']} -> "
                  f"{after['state']} -> {final['state']}, timeout {before['timeout']:.1f} -> "
                  f"{after['timeout']:.1f} s; reply packets {before['packets_reply']} -> "
                  f"{after['packets_reply']}; engine drops {drops}; the retransmission got "
                  f"through: {fenced}, and was acknowledged: {reacked}")
        print(report)
        assert sent == len(plan) == 48
        assert reached == [] and other == [], report
        assert after["state"] == before["state"] == "ESTABLISHED", report
        # not refreshed: the entry only aged (a refresh would have put it CLOCK_STEP higher)
        assert before["timeout"] - (t1 - t0) - 0.5 <= after["timeout"] <= before["timeout"], \
            report
        assert oow == sent, report
        assert fenced and reacked, report
        assert final["state"] == "ESTABLISHED", report


def _wait_quietly(pred, timeout: float):
    """``pred()``'s first truthy value within ``timeout`` seconds, else None."""
    with contextlib.suppress(AssertionError):
        return wait_until(pred, timeout, "")
    return None


def _ether(ip_bytes: bytes):
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    return Ether() / (IP(ip_bytes) if ip_bytes[0] >> 4 == 4 else IPv6(ip_bytes))


@FAMILIES
def test_in_window_rst_is_challenged_and_the_exact_one_closes(dlab, family):
    """RFC 5961 3.2: a RST inside the window but not at RCV.NXT reaches the environment, which
    answers with a challenge ACK; the NAT's entry stays ESTABLISHED and carries data. A RST at
    exactly RCV.NXT then resets the environment's socket, and the entry closes."""
    with contextlib.ExitStack() as st:
        conn = Idle(dlab, family, st)
        conn.roundtrip(b"before")
        s_nxt, e_nxt, window = conn.quiet_edges()
        drops0 = _engine_drops(dlab)
        inexact = ("R", (s_nxt + 1000) % 2**32, 0, 0)
        acks_before = len(conn.segments(True))
        with _env_sniffer(conn) as env_rx:
            wire.send_raw(dlab.server.netns, [conn.forge("R", s_nxt + 1000, 0)], conn.eni_addr)
            with contextlib.suppress(TimeoutError):
                env_rx.wait_for(lambda e: _sig(e) == inexact, timeout=5.0)
        arrived = inexact in [_sig(e) for e in env_rx.matching()]
        challenged = arrived and bool(_wait_quietly(lambda: any(
            _sig(e)[0] == "A" and (_sig(e)[1], _sig(e)[2]) == (e_nxt, s_nxt)
            for e in conn.segments(True)[acks_before:]), 5.0))
        e = conn.entry()
        drops = _rose(drops0, _engine_drops(dlab))
        report = (f"family {family}: the in-window inexact RST reached the environment: "
                  f"{arrived}; its challenge ACK reached the server: {challenged}; state "
                  f"{e['state']}, timeout {e['timeout']:.1f} s; engine drops {drops}")
        print(report)
        assert arrived and challenged, report
        assert e["state"] == "ESTABLISHED" and drops == {}, report
        conn.roundtrip(b"after the inexact RST")
        s_nxt, e_nxt, window = conn.quiet_edges()
        wire.send_raw(dlab.server.netns, [conn.forge("R", s_nxt, 0)], conn.eni_addr)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            conn.client.settimeout(5.0)
            conn.client.recv(1)
        assert conn.entry()["state"] == "CLOSE"


# ---- a large transfer through a lossy, reordering VPC link --------------------------------------
MB100 = 100_000_000
TRANSFER_DEADLINE = 45.0           # per direction; a stalled transfer fails here, never hangs
CHUNK = 1 << 20
TCPI_OPT_SACK, TCPI_OPT_WSCALE = 2, 4


def _tcp_info(s: socket.socket) -> Dict[str, int]:
    """struct tcp_info's first fields (linux/tcp.h): options, window scales, total_retrans."""
    b = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    u8 = struct.unpack_from("8B", b)
    u32 = struct.unpack_from("24I", b, 8)
    return {"options": u8[5], "snd_wscale": u8[6] & 0xF, "rcv_wscale": u8[6] >> 4,
            "total_retrans": u32[23]}


def _netstat(ns: str) -> Dict[str, int]:
    """The namespace's Tcp and TcpExt counters (/proc/net/snmp and netstat, read inside it)."""
    out: Dict[str, int] = {}
    with nt.in_netns(ns):
        for f in ("snmp", "netstat"):
            with open(f"/proc/thread-self/net/{f}") as fh:
                lines = fh.read().splitlines()
            for head, vals in zip(lines[::2], lines[1::2]):
                proto, names = head.split(":", 1)
                if proto in ("Tcp", "TcpExt"):
                    out.update((f"{proto}.{k}", int(v)) for k, v in
                               zip(names.split(), vals.split(":", 1)[1].split()))
    return out


def _send(s: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    for at in range(0, len(data), CHUNK):
        s.settimeout(max(0.1, deadline - time.monotonic()))
        s.sendall(view[at:at + CHUNK])
    s.shutdown(socket.SHUT_WR)


def _receive(s: socket.socket, deadline: float) -> Tuple[bytes, int]:
    """SHA-256 and length of everything until EOF."""
    h, n = hashlib.sha256(), 0
    buf = bytearray(1 << 20)
    while True:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        k = s.recv_into(buf)
        if not k:
            return h.digest(), n
        h.update(memoryview(buf)[:k])
        n += k


def _transfer(lab: LabView, sender_is_env: bool, data: bytes) -> Dict:
    """``data`` over one new connection from the environment to the server host (or back),
    through the NAT; both ends here, the sender in a thread of its own."""
    env = lab.env(ENV)
    with contextlib.ExitStack() as st:
        ls = st.enter_context(nt.socket_in(lab.server.netns, socket.AF_INET,
                                           socket.SOCK_STREAM))
        ls.bind((lab.s4, 0))
        ls.listen(1)
        ls.settimeout(IO_TIMEOUT)
        cl = st.enter_context(nt.socket_in(env.netns, socket.AF_INET, socket.SOCK_STREAM))
        cl.settimeout(IO_TIMEOUT)
        cl.connect((lab.s4, ls.getsockname()[1]))
        sv, peer = ls.accept()
        st.enter_context(sv)
        snd, rcv = (cl, sv) if sender_is_env else (sv, cl)
        deadline = time.monotonic() + TRANSFER_DEADLINE
        failed: List[BaseException] = []

        def run():
            try:
                _send(snd, data, deadline)
            except BaseException as e:      # reported by the test's thread
                failed.append(e)

        t = threading.Thread(target=run, name="transfer-sender", daemon=True)
        t0 = time.monotonic()
        t.start()
        try:
            digest, n = _receive(rcv, deadline)
        except socket.timeout:
            raise AssertionError(f"the transfer stalled: nothing for the rest of the "
                                 f"{TRANSFER_DEADLINE} s deadline (sender: {failed})") from None
        finally:
            t.join(timeout=5.0)
        assert not failed, f"the sender failed: {failed[0]!r}"
        return {"digest": digest, "bytes": n, "seconds": time.monotonic() - t0,
                "info": _tcp_info(snd), "peer": peer[0]}


def test_100mb_each_way_through_a_lossy_reordering_vpc_link(own_lab):
    """100 MB up and 100 MB down through the NAT with 1 % loss and reordering on the server
    host's link, both directions (netem ``reorder 5% 50%`` with 1 ms delay, or kit.impair's
    eBPF + RPS stand-in where the kernel has no netem). Window scaling and SACK on (the Linux
    defaults; the sockets say both were negotiated); the server saw the ENI's address; the
    bytes arrive whole (SHA-256 of what was sent against SHA-256 of what arrived); the sender
    retransmitted and recovered by SACK (the impairment did its work); the NAT dropped none
    of the segments. Reordering counters are reported, not asserted (the stand-in's varies)."""
    lab = own_lab()
    host = lab.server
    data = nt.payload(MB100, seed=16)
    want = hashlib.sha256(data).digest()
    with contextlib.ExitStack() as st:
        try:
            how = st.enter_context(impair.impaired(host.netns, host.ifname, lab.plan.fabric_ns,
                                                   host.fabric_ifname, loss=0.01, reorder=0.05))
        except impair.ImpairError as e:
            pytest.skip(f"no way to impair the link here: {e}")
        results = {}
        for name, sender_is_env in (("up", True), ("down", False)):
            sender_ns = lab.env(ENV).netns if sender_is_env else host.netns
            receiver_ns = host.netns if sender_is_env else lab.env(ENV).netns
            drops0, tx0, rx0 = _engine_drops(lab), _netstat(sender_ns), _netstat(receiver_ns)
            r = _transfer(lab, sender_is_env, data)
            tx1, rx1 = _netstat(sender_ns), _netstat(receiver_ns)
            r["drops"] = _rose(drops0, _engine_drops(lab))
            r["sender"] = {k: tx1[k] - tx0.get(k, 0) for k in (
                "Tcp.RetransSegs", "TcpExt.TCPSackRecovery", "TcpExt.TCPSACKReorder",
                "TcpExt.TCPDSACKRecv") if k in tx1}
            r["receiver"] = {k: rx1[k] - rx0.get(k, 0) for k in (
                "TcpExt.TCPOFOQueue", "TcpExt.TCPDSACKOldSent") if k in rx1}
            results[name] = r
    report = f"{how}: " + "; ".join(
        f"{k}: {r['bytes']} bytes in {r['seconds']:.1f} s, tcp_info {r['info']}, engine drops "
        f"{r['drops']}, sender {r['sender']}, receiver {r['receiver']}"
        for k, r in results.items())
    print(report)
    for r in results.values():
        assert r["peer"] == lab.eni.ipv4, report           # it went through the NAT
        assert (r["bytes"], r["digest"]) == (MB100, want), report
        assert r["info"]["options"] & TCPI_OPT_SACK and r["info"]["options"] & TCPI_OPT_WSCALE, \
            report
        assert r["info"]["snd_wscale"] > 0 and r["info"]["rcv_wscale"] > 0, report
        assert r["sender"]["Tcp.RetransSegs"] > 0, report
        assert r["sender"]["TcpExt.TCPSackRecovery"] > 0, report
        assert r["drops"] == {}, report
