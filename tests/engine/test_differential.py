"""Differential test: the compiled engine and the reference engine (the spec) fed the same random
packet sequences must agree on every verdict, drop reason and output byte, and end with the
same counters, entries, pool fill and signals.

Hypothesis generates a configuration (sometimes a tiny port range or table, short timeouts, one
or two ENIs, an IPv4-only ENI) and a list of operations: outbound and inbound TCP/UDP packets
over IPv4/IPv6 with random flags, payloads, TTLs, partial checksums and random corruption or
truncation; inbound packets often aimed at a mapping an earlier outbound packet really got
(ENI address and port read from the output); batches; time steps (also backwards and past
every timeout); expire(); add_eni(); security-group egress rule sets (allow all, none, some)
and retiring / re-enabling ENIs mid-run; mid-run comparisons of the whole state.
ICMP: errors of every type from the VPC about packets the NAT really sent, and from
environments about replies they really received, embedded whole or cut short (also too short),
random ones about nothing, ones whose outer addresses do not fit, errors about ICMP or about
the other family, echo messages, partial checksums, corrupted and truncated errors.
TCP sequence windows: segments with sequence and acknowledgment numbers near the defaults, far
off and across the wrap, SYN options (window scale, SACK-permitted) and SACK blocks; the
snapshots (which carry each side's window) are compared at every check.
"""
from __future__ import annotations

import socket

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from hyperplane import FLAG_CSUM_PARTIAL, Direction, Timeouts, Verdict
from hyperplane.engine import reference
from hyperplane.engine.types import SNAP_HEADER, SNAP_RECORD
from kit.frames import (
    ENI_A, ENI_B, ENI_C, ENI_V4_ONLY, ENV, HOST, build, compiled_module, locate_l4, make_config,
    make_partial, no_clock, pseudo_header_sum,
)

from scapy.compat import raw
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
)
from scapy.packet import Raw

SHORT = Timeouts(tcp_syn_sent=5, tcp_syn_recv=4, tcp_established=20, tcp_fin_wait=6,
                 tcp_close_wait=5, tcp_last_ack=3, tcp_time_wait=6, tcp_close=2,
                 udp_unreplied=3, udp_replied=15)
SPORTS = (40000, 40001, 40002, 40005, 536, 1234, 33000, 65535)
DPORTS = (443, 9000, 8080)
FLAG_SETS = ("S", "S", "SA", "A", "A", "PA", "FA", "F", "R", "RA", "", "SF")
#: egress rule sets for set_egress_rules (HOST and DPORTS above: each set allows some of them)
EGRESS_SETS = (
    None, [],
    [("198.19.0.20/32", "tcp", 443, 9000)],
    [("198.19.0.0/16", "udp", 0, 8080), ("2001:2:0:200::/64", "all", 0, 0)],
    [("0.0.0.0/0", "all", 0, 0)],
    [("198.19.0.21/32", "tcp", 8080, 8080), ("2001:2:0:200::20/128", "tcp", 443, 443),
     ("198.19.0.20/31", "icmp", 0, 65535)],
)

configs = st.fixed_dictionaries({
    "enis": st.sampled_from([[ENI_A], [ENI_A], [ENI_A, ENI_B], [ENI_V4_ONLY, ENI_A],
                             [ENI_V4_ONLY]]),
    "ports": st.sampled_from([(40000, 40003), (40000, 40007), (40000, 40007), (40000, 40255),
                              (536, 65535)]),
    "capacity": st.sampled_from([1000, 1000, 1000, 1000, 3, 12]),
    "timeouts": st.sampled_from([Timeouts(), SHORT, SHORT]),
    "port_reuse_delay": st.sampled_from([0.0, 0.5, 2.0]),
    "seed": st.integers(0, (1 << 64) - 1),
    "events": st.sampled_from([16, 1024]),   # event ring capacity: 16 overflows often
    # connections one environment may hold (0: no limit); small ones are hit by bursts
    "max_connections_per_source": st.sampled_from([0, 0, 0, 1, 3, 8]),
    # the engine's slice of the ports (a data path worker's shard): whole, halves, a third
    "port_slice": st.sampled_from([(0, 1), (0, 1), (0, 1), (0, 2), (1, 2), (2, 3), (1, 64)]),
})

corruptions = st.one_of(
    st.none(), st.none(), st.none(), st.none(), st.none(), st.none(), st.none(),
    st.tuples(st.just("flip"), st.integers(0, 80), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 80)),
)
tcp_flags = st.one_of(st.sampled_from(FLAG_SETS), st.sampled_from(FLAG_SETS),
                      st.integers(0, 255))
ttls = st.sampled_from([64] * 10 + [2, 1])
#: outbound source: environments 0-2; 3: a VPC host towards an ENI address and a pool port
#: (its orig tuple can take a future mapping's reply tuple); 4: a known mapping's reply tuple
#: sent outbound (the tuple is another connection's reply)
sources = st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3, 4])

#: TCP sequence numbers (window tracking, hyperplane/engine/reference/window.py): None for the
#: defaults (seq 1000, ack 0, window 8192), else (seq, ack, window, options): numbers near the
#: ones the defaults make (a SYN at 1000 ends at 1001), far off and across the 2^32 wrap, the
#: window-scale and SACK-permitted options of SYNs and SACK blocks
SEQS = [1000, 1001, 1008, 1041, 999, 0, 1 << 31, 0xFFFFFFFF, 5000, 70000]
numbers = st.one_of(
    st.none(), st.none(), st.none(),
    st.tuples(st.one_of(st.sampled_from(SEQS), st.integers(0, 0xFFFFFFFF)),
              st.one_of(st.sampled_from(SEQS), st.integers(0, 0xFFFFFFFF)),
              st.sampled_from([8192, 0, 1, 65535, 300]),
              st.sampled_from([(), (("WScale", 7),), (("WScale", 14), ("SAckOK", b"")),
                               (("WScale", 15),), (("SAckOK", b""),),
                               (("SAck", (1001, 1041)),), (("SAck", (0, 0xFFFFFFFF)),),
                               (("NOP", None), ("Timestamp", (1, 2)))])))

#: ("out", family, proto, source, sport, host_i, dport, flags, payload_len, ttl, ext, partial,
#:  corrupt, numbers)
out_ops = st.tuples(
    st.just("out"), st.sampled_from([4, 4, 6]), st.sampled_from(["tcp", "udp"]),
    sources, st.sampled_from(SPORTS), st.integers(0, 1), st.sampled_from(DPORTS),
    tcp_flags, st.sampled_from([0, 0, 1, 7, 40]), ttls,
    st.booleans(), st.sampled_from([False, False, False, True]), corruptions, numbers)
#: ("in", family, proto, pick, known, host_i, dport, flags, payload_len, ttl, ext, partial,
#:  corrupt, numbers): with known, aimed at the mapping number pick of those outbound packets
#: got
in_ops = st.tuples(
    st.just("in"), st.sampled_from([4, 4, 6]), st.sampled_from(["tcp", "udp"]),
    st.integers(0, 1 << 16), st.sampled_from([True, True, True, False]), st.integers(0, 1),
    st.sampled_from(DPORTS), tcp_flags, st.sampled_from([0, 0, 3, 40]), ttls,
    st.booleans(), st.sampled_from([False, False, False, True]), corruptions, numbers)
#: ICMP (type, code) by family: the errors, a PMTU one among them, and echo (not an error)
ICMP_KINDS = {4: [(3, 3), (3, 4), (11, 0), (12, 0), (3, 1), (8, 0), (0, 0)],
              6: [(1, 4), (2, 0), (3, 0), (4, 0), (1, 3), (128, 0), (129, 0)]}
ROUTER = {4: "198.19.0.1", 6: "2001:2:0:200::1"}
#: ("icmp_in"/"icmp_out", family, pick, about, kind_i, cut, ttl, partial, corrupt, odd):
#: an ICMP error (or echo) about ``about``: "known" a packet the NAT really sent (in) or an
#: environment really received (out), number pick; "random" a packet of no connection;
#: "other" one of the other family; "icmp" an ICMP message. cut: transport bytes kept (None:
#: all). odd: outer addresses that do not fit (in: sent to another address; out: from another
#: environment); otherwise in: from a router or the host. "fresh": first open a new flow (and
#: for "icmp_out" have the VPC answer it), then an error about that packet.
icmp_ops = st.tuples(
    st.sampled_from(["icmp_in", "icmp_in", "icmp_out"]), st.sampled_from([4, 4, 6]),
    st.integers(0, 1 << 16),
    st.sampled_from(["known"] * 6 + ["fresh"] * 6 + ["random", "other", "icmp"]),
    st.integers(0, 6), st.sampled_from([None] * 6 + [8, 18, 20, 7, 0]), ttls,
    st.sampled_from([False, False, False, True]), corruptions,
    st.sampled_from([0, 0, 0, 1, 2]))
#: ("frag", out_op or in_op, size, piece, order, ident): that packet with a payload of ``size``
#: bytes, cut into fragments of ``piece`` bytes (12: not a multiple of 8, so refused), sent in
#: ``order`` (skip_first: without its first; late_first: the first last; dup: each twice)
frag_ops = st.tuples(
    st.just("frag"), st.one_of(out_ops, out_ops, in_ops), st.sampled_from([9, 100, 700, 3000]),
    st.sampled_from([8, 16, 24, 512, 1400, 12]),
    st.sampled_from(["keep"] * 4 + ["reverse", "skip_first", "dup", "late_first"]),
    st.integers(0, (1 << 32) - 1))
ops = st.one_of(
    frag_ops, frag_ops, frag_ops,
    out_ops, out_ops, out_ops, out_ops, in_ops, in_ops, in_ops, icmp_ops, icmp_ops, icmp_ops,
    icmp_ops, icmp_ops,
    st.tuples(st.just("time"), st.sampled_from([0.0, 0.25, 1.0, 2.0, 3.5, 7.0, 31.0, 61.0, 121.0,
                                                351.0, -5.0])),
    # a burst of new flows from distinct source ports: exhausts small pools and tables
    st.tuples(st.just("burst"), st.sampled_from([4, 4, 6]), st.sampled_from(["tcp", "udp"]),
              st.integers(0, 2), st.integers(0, 40), st.integers(1, 12)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("check")),
    st.tuples(st.just("collect")),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16)),
    st.tuples(st.just("flush")),
    # a restart: snapshot both (same bytes), new engines restore it, the old ones again
    # (duplicates); shift moves the timers, corrupt flips one byte of a record first
    st.tuples(st.just("restart"), st.sampled_from([0.0, 0.0, 5.0, -3.0, 400.0]),
              st.one_of(st.none(), st.none(), st.none(), st.integers(0, 1 << 16))),
    st.tuples(st.just("add_eni")),
    st.tuples(st.just("egress"), st.integers(0, len(EGRESS_SETS) - 1)),
    st.tuples(st.just("enable"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("batch"), st.lists(out_ops, min_size=1, max_size=8)),
    st.tuples(st.just("batch"), st.lists(in_ops, min_size=1, max_size=8)),
    st.tuples(st.just("batch"), st.lists(st.one_of(in_ops, icmp_ops.filter(
        lambda o: o[0] == "icmp_in")), min_size=1, max_size=8)),
)


def split(pkt: bytes, piece: int, ident: int):
    """IPv4/IPv6 fragments of pkt carrying ``piece`` bytes each (the last fewer); for IPv6 the
    Fragment header goes right after the fixed header (any extension headers are in the
    fragmentable part). One piece that holds everything is no fragment (IPv6: atomic)."""
    out = []
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        body = pkt[ihl:(pkt[2] << 8) | pkt[3]]
        for o in range(0, len(body), piece):
            chunk = body[o:o + piece]
            h = bytearray(pkt[:ihl])
            h[2:4] = (ihl + len(chunk)).to_bytes(2, "big")
            h[4:6] = (ident & 0xFFFF).to_bytes(2, "big")
            h[6:8] = ((0x2000 if o + piece < len(body) else 0) | (o // 8)).to_bytes(2, "big")
            h[10:12] = b"\0\0"
            acc = sum(int.from_bytes(h[k:k + 2], "big") for k in range(0, ihl, 2))
            while acc >> 16:
                acc = (acc & 0xFFFF) + (acc >> 16)
            h[10:12] = (~acc & 0xFFFF).to_bytes(2, "big")
            out.append(bytes(h) + chunk)
    else:
        body = pkt[40:40 + ((pkt[4] << 8) | pkt[5])]
        for o in range(0, len(body), piece):
            chunk = body[o:o + piece]
            h = bytearray(pkt[:40])
            h[4:6] = (8 + len(chunk)).to_bytes(2, "big")
            h[6] = 44
            more = 1 if o + piece < len(body) else 0
            fh = bytes([pkt[6], 0]) + (((o // 8) << 3) | more).to_bytes(2, "big") + \
                ident.to_bytes(4, "big")
            out.append(bytes(h) + fh + chunk)
    return out


class Run:
    """Drives both engines in lock step and remembers the mappings outbound packets got."""

    def __init__(self, cfg_kw):
        kw = dict(cfg_kw)
        kw["port_min"], kw["port_max"] = kw.pop("ports")
        events = kw.pop("events")
        self.port_slice = kw.pop("port_slice")
        self.cfg = make_config(**kw)
        self.compiled = compiled_module().Engine(self.cfg, clock=no_clock,
                                                 port_slice=self.port_slice)
        self.reference = reference.Engine(self.cfg, clock=no_clock, port_slice=self.port_slice)
        self.events = events
        for e in (self.compiled, self.reference):
            e.enable_events(events)
        self.egress = None        # the rules set last (a restarted engine gets them too)
        self.disabled = set()     # ENIs retired
        self.now = 0.0
        self.known = []     # (family, proto, host, hport, eni address, eni port)
        self.sent_out = []  # packets as the NAT sent them into the VPC (ICMP errors embed them)
        self.got_in = []    # packets as environments received them
        self.log = []

    # ---- packets --------------------------------------------------------------------------
    def icmp_packet(self, op):
        kind, family, pick, about_kind, kind_i, cut, ttl, partial, corrupt, odd = op
        inbound = kind == "icmp_in"
        seen = self.sent_out if inbound else self.got_in
        if about_kind == "known" and seen:
            about = seen[pick % len(seen)]
            family = about[0] >> 4
        else:
            fam = (10 - family) if about_kind == "other" else family
            eaddr = self.eni_addr(pick, fam)
            env, host = ENV[fam][pick % 3], HOST[fam][pick % 2]
            if about_kind == "icmp":
                l3 = IP(src=eaddr, dst=host) if fam == 4 else IPv6(src=eaddr, dst=host)
                about = raw(l3 / (ICMP(type=8) if fam == 4 else ICMPv6EchoRequest())
                            / Raw(b"ping"))
            elif inbound:
                about = build(fam, "udp" if pick & 1 else "tcp", eaddr, host,
                              self.pool_port(pick), DPORTS[pick % 3], payload=b"x" * 5)
            else:
                about = build(fam, "udp" if pick & 1 else "tcp", host, env, DPORTS[pick % 3],
                              SPORTS[pick % len(SPORTS)], flags="SA")
        if cut is not None:
            about = about[:(20 if about[0] >> 4 == 4 else 40) + cut]
        a_fam = about[0] >> 4 if about else family
        alen, s_off = (4, 12) if a_fam == 4 else (16, 8)
        af = socket.AF_INET if a_fam == 4 else socket.AF_INET6
        try:
            a_src = socket.inet_ntop(af, about[s_off:s_off + alen])
            a_dst = socket.inet_ntop(af, about[s_off + alen:s_off + 2 * alen])
        except ValueError:
            a_src, a_dst = self.eni_addr(pick, family), ENV[family][0]
        if a_fam != family:   # the error's own addresses must be of its family
            a_src, a_dst = self.eni_addr(pick, family), ENV[family][pick % 3]
        if inbound:
            src = ROUTER[family] if pick & 2 else HOST[family][0]
            dst = a_src if odd != 1 else self.eni_addr(pick + 1, family)
        else:
            src = a_dst if odd != 2 else ENV[family][(pick + 1) % 3]
            dst = a_src
        t, code = ICMP_KINDS[family][kind_i]
        if family == 4:
            layer = ICMP(type=t, code=code, nexthopmtu=1400 if (t, code) == (3, 4) else 0)
            pkt = IP(src=src, dst=dst, ttl=ttl) / layer
        else:
            layer = ICMPv6PacketTooBig(mtu=1280) if t == 2 else \
                ICMPv6DestUnreach(type=t, code=code) if t < 128 else \
                ICMPv6EchoRequest(type=t)
            pkt = IPv6(src=src, dst=dst, hlim=ttl) / layer
        pkt = bytearray(raw(pkt / Raw(about)))
        if partial:   # the ICMP checksum field holds the pseudo-header sum (0 for ICMPv4)
            hl = 20 if family == 4 else 40
            psum = 0 if family == 4 else pseudo_header_sum(6, src, dst, 58, len(pkt) - 40)
            pkt[hl + 2:hl + 4] = psum.to_bytes(2, "big")
        pkt = self.corrupt(bytes(pkt), corrupt)
        return pkt, bool(partial), corrupt is None

    def corrupt(self, pkt, corrupt):
        if corrupt is None:
            return pkt
        if corrupt[0] == "flip":
            buf = bytearray(pkt)
            buf[corrupt[1] % len(buf)] ^= corrupt[2]
            return bytes(buf)
        return pkt[:corrupt[1] % (len(pkt) + 1)]

    def packet(self, op):
        if op[0].startswith("icmp"):
            return self.icmp_packet(op)
        (kind, family, proto, a, b, host_i, dport, flags, plen, ttl, ext, partial,
         corrupt) = op[:13]
        num = op[13] if len(op) > 13 else None
        tk = {} if num is None or proto != "tcp" else dict(
            seq=num[0], ack=num[1], window=num[2], options=num[3])
        hdrs = [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()] if ext and family == 6 else []
        fl = flags if isinstance(flags, str) else int(flags)
        payload = bytes(k & 0xFF for k in range(plen))
        if kind == "out":
            src, dst, sport = ENV[family][a % 3], HOST[family][host_i], b
            if a == 3:
                src, sport = HOST[family][host_i], dport
                dst, dport = self.eni_addr(host_i, family), self.pool_port(b)
            elif a == 4 and self.known:
                family, proto, src, sport, dst, dport = self.known[b % len(self.known)]
                hdrs = hdrs if family == 6 else []
            pkt = build(family, proto, src, dst, sport, dport, flags=fl, ttl=ttl,
                        payload=payload, ext=hdrs, **tk)
        else:
            if b and self.known:
                family, proto, host, hport, eaddr, eport = self.known[a % len(self.known)]
                hdrs = [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()] if ext and family == 6 \
                    else []
            else:
                host, hport = HOST[family][host_i], dport
                eaddr, eport = self.eni_addr(a, family), self.pool_port(a)
            pkt = build(family, proto, host, eaddr, hport, eport, flags=fl, ttl=ttl,
                        payload=payload, ext=hdrs, **tk)
        if partial:
            pkt = make_partial(pkt)
        pkt = self.corrupt(pkt, corrupt)
        return pkt, bool(partial), corrupt is None

    def eni_addr(self, k, family):
        enis = self.compiled.enis
        eni = enis[k % len(enis)]
        addr = eni.ipv4 if family == 4 else eni.ipv6
        return addr if addr is not None else ENI_A.ipv6   # IPv4-only ENI: any IPv6 address

    def pool_port(self, k):
        return self.cfg.port_min + k % (self.cfg.port_max - self.cfg.port_min + 1)

    def remember(self, direction, out_bytes):
        if out_bytes is None or direction not in ("out", "in"):
            return
        (self.sent_out if direction == "out" else self.got_in).append(bytes(out_bytes))
        if direction != "out":
            return
        info = locate_l4(out_bytes)
        af = socket.AF_INET if info.family == 4 else socket.AF_INET6
        alen = 4 if info.family == 4 else 16
        s_off, d_off = (12, 16) if info.family == 4 else (8, 24)
        src = socket.inet_ntop(af, out_bytes[s_off:s_off + alen])
        dst = socket.inet_ntop(af, out_bytes[d_off:d_off + alen])
        sport = int.from_bytes(out_bytes[info.l4:info.l4 + 2], "big")
        dport = int.from_bytes(out_bytes[info.l4 + 2:info.l4 + 4], "big")
        self.known.append((info.family, "tcp" if info.proto == 6 else "udp", dst, dport, src,
                           sport))

    # ---- comparisons --------------------------------------------------------------------
    def where(self, step, op, pkt=None):
        s = f"step {step}: {op!r} at now={self.now}"
        if pkt is not None:
            s += f"\n  packet {pkt.hex()}"
        return s

    def same(self, what, got, want, step, op, pkt=None):
        assert got == want, (f"{what} differ at {self.where(step, op, pkt)}\n"
                             f"  compiled  {got!r}\n  reference {want!r}")

    def compare_state(self, step, op):
        c, r = self.compiled, self.reference
        self.same("counters()", c.counters(), r.counters(), step, op)
        ec, er = c.entries(now=self.now), r.entries(now=self.now)
        self.same("sorted entries()", sorted(ec), sorted(er), step, op)
        self.same("entries() order", ec, er, step, op)
        self.same("pool_fill()", c.pool_fill(), r.pool_fill(), step, op)
        self.same("len()", len(c), len(r), step, op)
        self.same("enis", c.enis, r.enis, step, op)
        self.same("take_events()", c.take_events(), r.take_events(), step, op)
        self.same("eni_counters()", c.eni_counters(), r.eni_counters(), step, op)
        # the snapshot carries what entries() does not show: each side's TCP window
        self.same("snapshot()", c.snapshot(), r.snapshot(), step, op)

    # ---- steps -----------------------------------------------------------------------------
    def step(self, i, op):
        kind = op[0]
        c, r = self.compiled, self.reference
        if kind == "time":
            self.now += op[1]
        elif kind == "expire":
            self.same("expire()", c.expire(now=self.now), r.expire(now=self.now), i, op)
        elif kind == "check":
            self.compare_state(i, op)
        elif kind == "collect":   # slot order (C) and creation order (reference) differ
            self.same("flow_collect()", sorted(c.flow_collect(now=self.now)),
                      sorted(r.flow_collect(now=self.now)), i, op)
        elif kind == "delete":
            ent = r.entries(now=self.now)
            if ent:
                x = ent[op[1] % len(ent)]
                self.same("delete()", c.delete(x.proto, x.orig, now=self.now),
                          r.delete(x.proto, x.orig, now=self.now), i, op)
            # a tuple that is no connection's orig (a reply tuple, or nothing)
            self.same("delete(no such)", c.delete("udp", ("198.19.0.20", 1, "198.18.1.10", 2),
                                                  now=self.now),
                      r.delete("udp", ("198.19.0.20", 1, "198.18.1.10", 2), now=self.now), i, op)
        elif kind == "flush":
            self.same("flush()", c.flush(now=self.now), r.flush(now=self.now), i, op)
        elif kind == "restart":
            self.restart(i, op)
        elif kind == "frag":
            self.fragments(i, op)
        elif kind == "add_eni":
            if ENI_C not in c.enis:
                c.add_eni(ENI_C)
                r.add_eni(ENI_C)
        elif kind == "egress":
            self.egress = EGRESS_SETS[op[1]]
            c.set_egress_rules(self.egress)
            r.set_egress_rules(self.egress)
        elif kind == "enable":
            k = op[1] % len(c.enis)
            c.set_eni_enabled(k, op[2])
            r.set_eni_enabled(k, op[2])
            (self.disabled.discard if op[2] else self.disabled.add)(k)
        elif kind == "burst":
            _, family, proto, env_i, base, n = op
            for k in range(n):
                sport = 2000 + base * 16 + k
                self.step(i, ("out", family, proto, env_i, sport, k % 2, 443, "S", 0, 64,
                              False, False, None))
        elif kind in ("out", "in", "icmp_in", "icmp_out"):
            if kind.startswith("icmp") and op[3] == "fresh":
                op = self.fresh(i, op)
            pkt, partial, clean = self.packet(op)
            fn = "outbound" if kind in ("out", "icmp_out") else "inbound"
            rc = getattr(c, fn)(pkt, now=self.now, csum_partial=partial)
            rr = getattr(r, fn)(pkt, now=self.now, csum_partial=partial)
            self.same("results", tuple(rc), tuple(rr), i, op, pkt)
            assert type(rc.verdict) is Verdict
            if clean:
                self.remember(kind, rr.packet)
        else:
            self.batch(i, op)
        self.same("take_signals()", c.take_signals(), r.take_signals(), i, op)

    def fragments(self, i, op):
        _, inner, size, piece, order, ident = op
        inner = inner[:8] + (size,) + inner[9:12] + (None,) + inner[13:]  # clean, sized
        pkt, _, _ = self.packet(inner)
        pieces = split(pkt, piece, ident)
        if order == "reverse":
            pieces.reverse()
        elif order == "skip_first":
            pieces = pieces[1:]
        elif order == "dup":
            pieces = [p for p in pieces for _ in (0, 1)]
        elif order == "late_first":
            pieces = pieces[1:] + pieces[:1]
        fn = "outbound" if inner[0] == "out" else "inbound"
        for p in pieces:
            rc = getattr(self.compiled, fn)(p, now=self.now)
            rr = getattr(self.reference, fn)(p, now=self.now)
            self.same("results (fragment)", tuple(rc), tuple(rr), i, op, p)

    def restart(self, i, op):
        """Both engines' snapshots are the same bytes; fresh engines with the same ENIs, rules
        and retired ENIs restore it (maybe corrupted) alike, and the old ones find every record
        taken (or expired)."""
        _, shift, corrupt = op
        c, r = self.compiled, self.reference
        blob = c.snapshot()
        self.same("snapshot()", blob, r.snapshot(), i, op)
        self.same("take_events() before restart", c.take_events(), r.take_events(), i, op)
        blob = bytearray(blob)
        if corrupt is not None and len(blob) > 24:
            blob[24 + corrupt % (len(blob) - 24)] ^= 1 << (corrupt % 8)
        self.same("restore() into the old engines", c.restore(blob, now=self.now, shift=shift),
                  r.restore(blob, now=self.now, shift=shift), i, op)
        fresh = []
        for mod in (compiled_module(), reference):
            e = mod.Engine(self.cfg, clock=no_clock, port_slice=self.port_slice)
            if ENI_C in c.enis:
                e.add_eni(ENI_C)
            e.set_egress_rules(self.egress)
            for k in self.disabled:
                e.set_eni_enabled(k, False)
            e.enable_events(self.events)
            fresh.append(e)
        got = [e.restore(blob, now=self.now, shift=shift) for e in fresh]
        self.same("restore()", got[0], got[1], i, op)
        if corrupt is None:   # every record is back, or was overdue already
            saved = (len(blob) - SNAP_HEADER.size) // SNAP_RECORD.size
            assert got[1]["restored"] + got[1]["expired"] == saved, (got[1], saved)
        self.compiled, self.reference = fresh
        self.compare_state(i, op)

    def fresh(self, i, op):
        """Open a flow for an ICMP op (and answer it for an outbound error); the op, now about
        the packet that crossed the NAT last."""
        family, pick = op[1], op[2]
        proto = "udp" if pick & 1 else "tcp"
        self.step(i, ("out", family, proto, pick % 3, SPORTS[pick % len(SPORTS)], pick & 1,
                      DPORTS[pick % 3], "S", 3, 64, bool(pick & 4), False, None))
        seen = self.sent_out
        if op[0] == "icmp_out" and self.known:
            self.step(i, ("in", family, proto, len(self.known) - 1, True, 0, 443, "SA", 3, 64,
                          False, False, None))
            seen = self.got_in
        return op[:2] + (len(seen) - 1 if seen else 0, "known") + op[4:]

    def batch(self, i, op):
        items = [self.packet(o) for o in op[1]]
        direction = Direction.OUTBOUND if op[1][0][0] in ("out", "icmp_out") \
            else Direction.INBOUND
        buf, offsets, lengths = bytearray(), [], []
        for pkt, _, _ in items:
            offsets.append(len(buf))
            lengths.append(len(pkt))
            buf += pkt + b"\x5a"
        flags = bytes(FLAG_CSUM_PARTIAL if partial else 0 for _, partial, _ in items)
        n = len(items)
        outs = {}
        for name, eng in (("compiled", self.compiled), ("reference", self.reference)):
            b, v, rs = bytearray(buf), bytearray(n), bytearray(n)
            passed = eng.translate_batch(direction, b, offsets, lengths, v, rs, flags=flags,
                                         now=self.now)
            outs[name] = (passed, bytes(v), bytes(rs), bytes(b))
        self.same("translate_batch()", outs["compiled"], outs["reference"], i, op,
                  bytes(buf))
        _, v, _, b = outs["reference"]
        for k, (pkt, _, clean) in enumerate(items):
            if clean and v[k] != Verdict.DROP and not op[1][k][0].startswith("icmp"):
                self.remember("out" if direction == Direction.OUTBOUND else "in",
                              b[offsets[k]:offsets[k] + lengths[k]])


@settings(max_examples=200, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cfg=configs, program=st.lists(ops, min_size=10, max_size=60))
def test_compiled_and_spec_engines_agree(cfg, program):
    run = Run(cfg)
    for i, op in enumerate(program):
        run.step(i, op)
    run.compare_state(len(program), ("end",))
    # and once more after everything has timed out
    run.now += 10_000.0
    run.same("expire()", run.compiled.expire(now=run.now), run.reference.expire(now=run.now),
             len(program), ("expire all",))
    run.compare_state(len(program), ("after expire all",))
    assert len(run.reference) == 0
