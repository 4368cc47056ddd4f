"""``hyperplane walk``: an in-memory walk through the engine (no namespaces, no root).

``walk`` pushes a TCP connection (handshake, data, FIN close) from an execution environment
(198.18.0.x) to a VPC server (198.18.2.x) through a Hyperplane ENI (198.18.1.10), and UDP flows
over IPv4 and IPv6 (2001:2::/48), through the engine with scapy-built packets. It prints every
packet before and after NAT with the verdict, the connection table in ``conntrack -L`` style,
the counters and the port-pool fill, and shows inbound packets that match no connection being
dropped as ``unsolicited``. Time is a lab clock that starts at 0 and is passed to every call
(``now=``), and the engine's seed is fixed, so the output is the same on every run and from
both engines (apart from the line naming the engine).

Exit status: 0 on success, 1 when the walk saw a verdict it did not expect, 2 on usage errors.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from hyperplane import engine
from hyperplane.engine import ENGINE, engine_reason
from hyperplane.engine.config import EngineConfig, Eni
from hyperplane.engine.constants import IPPROTO_TCP, IPPROTO_UDP, Direction, TcpState, Verdict
from hyperplane.engine.types import EntryInfo, Tuple5
from hyperplane.version import __version__

WALK_HELP = (
    "Walk packets through the engine in memory (no namespaces, no root): a TCP connection "
    "(handshake, data, FIN close) from an execution environment 198.18.0.5 to a VPC server "
    "198.18.2.20 through the ENI 198.18.1.10, UDP over IPv4 and IPv6 (2001:2::/48), and "
    "inbound packets that match no connection (dropped as unsolicited). Prints each packet "
    "before and after NAT with its verdict, the table in conntrack -L style, the counters and "
    "the port-pool fill. The lab clock starts at 0.")

# ---- the walk's lab (benchmark ranges only: 198.18.0.0/15, 2001:2::/48) ----------------------
ENI = Eni("eni-0a1b2c3d4e5f60718", ipv4="198.18.1.10", ipv6="2001:2:0:1::10")
ENV_A, ENV_B = "198.18.0.5", "198.18.0.6"       # two execution environments
ENV_A6 = "2001:2::5"
DB = "198.18.2.20"                              # a VPC server (PostgreSQL port)
DB_PORT = 5432
DNS4, DNS6 = "198.18.2.53", "2001:2:0:2::53"    # a resolver in the VPC, both families


# --------------------------------------------------------------------------------------------
# Text for packets and entries
# --------------------------------------------------------------------------------------------
def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def describe(raw: bytes) -> str:
    """One line for an IP packet: transport, endpoints, TCP flags, TTL/hop limit, length."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    pkt = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
    ttl = f"ttl={pkt.ttl}" if raw[0] >> 4 == 4 else f"hlim={pkt.hlim}"
    if TCP in pkt:
        t = pkt[TCP]
        what = f"TCP {_endpoint(pkt.src, t.sport)} > {_endpoint(pkt.dst, t.dport)} [{t.flags}]"
        payload = len(t.payload)
    else:
        u = pkt[UDP]
        what = f"UDP {_endpoint(pkt.src, u.sport)} > {_endpoint(pkt.dst, u.dport)}"
        payload = len(u.payload)
    return f"{what} {ttl} len={len(raw)}" + (f" data={payload}" if payload else "")


def checksums_ok(raw: bytes) -> bool:
    """Recompute every checksum of the packet from scratch and compare: the engine updates
    them incrementally (RFC 1624); this shows the result is what a full recomputation gives."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    v4 = raw[0] >> 4 == 4
    pkt = IP(raw) if v4 else IPv6(raw)
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    got = (pkt.chksum if v4 else None, l4.chksum)
    if v4:
        del pkt.chksum
    del l4.chksum
    again = (IP if v4 else IPv6)(bytes(pkt))
    want = (again.chksum if v4 else None, (again[TCP] if TCP in again else again[UDP]).chksum)
    return got == want


def conntrack_line(e: EntryInfo) -> str:
    """An entry the way ``conntrack -L`` prints one (with accounting on): protocol name and
    number, seconds left, TCP state, the orig tuple and its counters, ``[UNREPLIED]`` until the
    VPC answered, the reply tuple and its counters, ``[ASSURED]``; then the ENI."""
    num = IPPROTO_TCP if e.proto == "tcp" else IPPROTO_UDP
    parts = [f"{e.proto:<8} {num} {max(0, int(e.timeout))}"]
    if e.proto == "tcp":
        parts.append(e.state)
    o, r = e.orig, e.reply
    parts.append(f"src={o.src} dst={o.dst} sport={o.sport} dport={o.dport} "
                 f"packets={e.packets_orig} bytes={e.bytes_orig}")
    if e.packets_reply == 0:
        parts.append("[UNREPLIED]")
    parts.append(f"src={r.src} dst={r.dst} sport={r.sport} dport={r.dport} "
                 f"packets={e.packets_reply} bytes={e.bytes_reply}")
    # The kernel marks a connection ASSURED once both sides have talked (TCP: the handshake
    # completed); it then keeps the mark through the close.
    if e.packets_reply and e.state not in (TcpState.SYN_SENT.name, TcpState.SYN_RECV.name,
                                           "UNREPLIED"):
        parts.append("[ASSURED]")
    parts.append(f"eni={e.eni}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# walk
# --------------------------------------------------------------------------------------------
class Walk:
    """The engine and a lab clock; ``send`` pushes one packet and prints it before and after."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.now = 0.0
        self.eng = engine.Engine(EngineConfig(enis=[ENI], seed=2026))
        self.problems: List[str] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def section(self, title: str) -> None:
        self.say()
        self.say(f"== {title} " + "=" * max(3, 74 - len(title)))

    def tick(self, dt: float) -> None:
        self.now = round(self.now + dt, 6)

    def send(self, direction: Direction, pkt, note: str, expect: Verdict,
             dt: float = 0.001) -> Optional[bytes]:
        """Translate one scapy packet at the lab time; return the packet after NAT (or None)."""
        self.tick(dt)
        raw = bytes(pkt)
        call = self.eng.outbound if direction == Direction.OUTBOUND else self.eng.inbound
        res = call(raw, now=self.now)
        arrow = "out" if direction == Direction.OUTBOUND else "in "
        self.say(f"t={self.now:7.3f} {arrow}  {note}")
        self.say(f"    before  {describe(raw)}")
        if res.verdict == Verdict.DROP:
            self.say(f"    after   (dropped)  -> DROP reason={res.reason.label}")
        else:
            ok = "checksums ok" if checksums_ok(res.packet) else "CHECKSUMS WRONG"
            state = self.ct_state(direction, raw)
            self.say(f"    after   {describe(res.packet)}  -> {res.verdict.name}, "
                     f"ct_state {state} ({ok})")
            if ok != "checksums ok":
                self.problems.append(f"t={self.now}: {note}: checksums wrong after NAT")
        if res.verdict != expect:
            self.problems.append(f"t={self.now}: {note}: expected {expect.name}, got "
                                 f"{res.verdict.name} {res.reason.label}")
        return res.packet

    def ct_state(self, direction: Direction, raw: bytes) -> str:
        """The state of the connection the packet (as it arrived) belongs to."""
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6

        pkt = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
        t = Tuple5(pkt.src, pkt.payload.sport, pkt.dst, pkt.payload.dport)
        for e in self.eng.entries(now=self.now):
            if t == (e.orig if direction == Direction.OUTBOUND else e.reply):
                return e.state
        return "-"

    def table(self, title: str) -> None:
        entries = self.eng.entries(now=self.now)
        self.say(f"-- conntrack -L at t={self.now:.3f} ({title}): "
                 f"{len(entries)} connection(s)")
        for e in entries:
            self.say(conntrack_line(e))


def _ports(raw: bytes):
    """(source address, source port) of an IP packet: where the ENI mapping shows."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    pkt = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
    return pkt.src, pkt.payload.sport


def run_walk(out=sys.stdout) -> int:
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    OUT, IN = Direction.OUTBOUND, Direction.INBOUND
    d = Walk(out)
    d.say(f"hyperplane {__version__} walk - engine: {ENGINE} ({engine_reason()})")
    d.say(f"ENI {ENI.id}: {ENI.ipv4} and {ENI.ipv6}; ports "
          f"{d.eng.config.port_min}-{d.eng.config.port_max} "
          f"({d.eng.config.ports_per_eni:,} per protocol); lab clock starts at t=0")
    d.say("out = execution environment -> VPC (source NAT to the ENI), "
          "in = VPC -> ENI (reverse NAT of a reply)")

    # ---- 1. TCP ----------------------------------------------------------------------------
    d.section(f"1. TCP {ENV_A} -> {DB}:{DB_PORT} through the ENI: handshake and data")
    sport, seq, sseq = 40001, 1000, 7000

    def c2s(flags, payload=b"", s=None, a=None):
        p = IP(src=ENV_A, dst=DB, ttl=64) / TCP(sport=sport, dport=DB_PORT, flags=flags,
                                                seq=s, ack=a or 0)
        return p / payload if payload else p

    syn = d.send(OUT, c2s("S", s=seq), "SYN: the environment opens a connection",
                 Verdict.NEW)
    eni_addr, eni_port = _ports(syn) if syn else (ENI.ipv4, sport)

    def s2c(flags, payload=b"", s=None, a=None):
        p = IP(src=DB, dst=eni_addr, ttl=64) / TCP(sport=DB_PORT, dport=eni_port, flags=flags,
                                                   seq=s, ack=a or 0)
        return p / payload if payload else p

    q, r = b"SELECT 1;", b"1 row"
    d.send(IN, s2c("SA", s=sseq, a=seq + 1), "SYN-ACK from the server, to the ENI",
           Verdict.REPLY)
    d.send(OUT, c2s("A", s=seq + 1, a=sseq + 1), "ACK: handshake done", Verdict.ESTABLISHED)
    d.send(OUT, c2s("PA", q, s=seq + 1, a=sseq + 1), "query", Verdict.ESTABLISHED)
    d.send(IN, s2c("PA", r, s=sseq + 1, a=seq + 1 + len(q)), "answer", Verdict.REPLY)
    d.send(OUT, c2s("A", s=seq + 1 + len(q), a=sseq + 1 + len(r)), "ACK of the answer",
           Verdict.ESTABLISHED)
    d.table("after the handshake and data")
    d.say("-- the sequence window: the engine knows what each side has sent and acknowledged")
    nxt = sseq + 1 + len(r)          # what the environment expects from the server next
    d.send(IN, s2c("R", s=nxt + 123_456_789), "a host in the VPC forges an RST on this "
           "tuple, guessing the sequence number", Verdict.DROP)
    d.send(IN, s2c("R", s=nxt + 1000), "an RST inside the window but not the exact number: "
           "passed, the connection stays (the environment answers with a challenge ACK, "
           "RFC 5961)", Verdict.REPLY)

    d.section("2. TCP close: FIN from the environment, then from the server")
    s1, s2 = seq + 1 + len(q), sseq + 1 + len(r)
    d.send(OUT, c2s("FA", s=s1, a=s2), "FIN from the environment", Verdict.ESTABLISHED,
           dt=5.0)
    d.send(IN, s2c("A", s=s2, a=s1 + 1), "server ACKs the FIN", Verdict.REPLY)
    d.send(IN, s2c("FA", s=s2, a=s1 + 1), "FIN from the server", Verdict.REPLY)
    d.send(OUT, c2s("A", s=s1 + 1, a=s2 + 1), "last ACK: TIME_WAIT", Verdict.ESTABLISHED)

    # ---- 3. UDP over IPv4: two environments, same source port ------------------------------
    d.section(f"3. UDP over IPv4: DNS from {ENV_A} and {ENV_B}, same source port 33333")
    mapped = []
    for env in (ENV_A, ENV_B):
        qry = (IP(src=env, dst=DNS4) / UDP(sport=33333, dport=53)
               / DNS(id=7, rd=1, qd=DNSQR(qname="db.vpc.internal")))
        got = d.send(OUT, qry, f"DNS query from {env}", Verdict.NEW, dt=0.5)
        mapped.append(_ports(got) if got else (ENI.ipv4, 33333))
    d.say("    (both environments share the ENI address: the second one's port was "
          "already taken on the ENI, so it got another)")
    for env, (addr, port) in zip((ENV_A, ENV_B), mapped):
        ans = (IP(src=DNS4, dst=addr) / UDP(sport=53, dport=port)
               / DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname="db.vpc.internal"),
                     an=DNSRR(rrname="db.vpc.internal", rdata=DB)))
        d.send(IN, ans, f"DNS answer for {env}, to the ENI port {port}", Verdict.REPLY)

    # ---- 4. UDP over IPv6 ----------------------------------------------------------------------
    d.section(f"4. UDP over IPv6: DNS from {ENV_A6} to {DNS6} (Ipv6AllowedForDualStack)")
    qry6 = (IPv6(src=ENV_A6, dst=DNS6, hlim=64) / UDP(sport=33334, dport=53)
            / DNS(id=8, rd=1, qd=DNSQR(qname="db.vpc.internal", qtype="AAAA")))
    got6 = d.send(OUT, qry6, "DNS query (AAAA) over IPv6", Verdict.NEW, dt=0.5)
    a6, p6 = _ports(got6) if got6 else (ENI.ipv6, 33334)
    ans6 = (IPv6(src=DNS6, dst=a6, hlim=64) / UDP(sport=53, dport=p6)
            / DNS(id=8, qr=1, rd=1, ra=1, qd=DNSQR(qname="db.vpc.internal", qtype="AAAA"),
                  an=DNSRR(rrname="db.vpc.internal", type="AAAA", rdata="2001:2:0:2::20")))
    d.send(IN, ans6, "DNS answer over IPv6", Verdict.REPLY)

    # ---- 5. unsolicited ------------------------------------------------------------------------
    d.section("5. Inbound from the VPC that matches no connection: dropped")
    d.send(IN, IP(src=DB, dst=ENI.ipv4) / TCP(sport=51000, dport=22, flags="S", seq=1),
           f"a VPC host tries to open a connection to the ENI ({ENI.ipv4}:22)",
           Verdict.DROP)
    d.send(IN, IP(src="198.18.2.99", dst=ENI.ipv4) / UDP(sport=53, dport=mapped[0][1]),
           "a different VPC host sends to a mapped ENI port (tuple mismatch)", Verdict.DROP)

    # ---- 6. table, counters, pools ---------------------------------------------------------
    d.section("6. State")
    d.table("all flows")
    c = d.eng.counters()
    d.say(f"-- counters: packets out {c['packets_outbound']} ({c['bytes_outbound']} bytes), "
          f"in {c['packets_inbound']} ({c['bytes_inbound']} bytes); connections "
          f"{c['connections']} of {c['capacity']:,}, created {c['connections_created']}, "
          f"expired {c['connections_expired']}")
    drops = {k: v for k, v in c["drops"].items() if v}
    d.say("-- drops: " + (", ".join(f"{k}={v}" for k, v in drops.items()) or "none")
          + f" (the other {len(c['drops']) - len(drops)} reasons: 0)")
    d.say("-- port pools (used / size per ENI address and protocol):")
    for p in d.eng.pool_fill():
        d.say(f"   {p['eni']} {p['address']:<16} {p['proto']}  {p['used']:>5} / {p['size']:,}"
              f"  ({100.0 * p['used'] / p['size']:.3f}%)")

    # ---- 7. expiry -----------------------------------------------------------------------------
    d.section("7. Idle timeouts: the lab clock jumps to t=400 s")
    d.now = 400.0
    n = d.eng.expire(now=d.now)
    d.say(f"expire(now={d.now:.1f}) removed {n} connection(s): TIME_WAIT after 120 s, "
          "replied UDP after 350 s (AWS's idle timeout); their ports are free again")
    d.send(IN, s2c("A", s=s2 + 1, a=s1 + 1), "a late segment of the closed TCP connection",
           Verdict.DROP, dt=0.0)
    d.table("after expiry")

    d.say()
    if d.problems:
        d.say("walk: UNEXPECTED results:")
        for p in d.problems:
            d.say(f"  {p}")
        return 1
    d.say(f"walk done: every verdict as expected (engine: {ENGINE})")
    return 0
