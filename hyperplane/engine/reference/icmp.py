"""ICMP errors about a tracked connection (in csrc/hp_engine.c: icmp_translate, icmp_manip):
an error whose embedded packet (parsed by parse.py, as hp_parse.c does) belongs to a
connection is RELATED to it and translated, outer and embedded headers both (RFC 5508);
every other ICMP message is dropped. The side road of the translate path after step 2."""
from __future__ import annotations

from typing import Tuple

from hyperplane.engine.constants import (
    FLAG_CSUM_PARTIAL, IPPROTO_UDP, Direction, DropReason, Verdict,
)
from hyperplane.engine.reference.csum import (
    csum_delta, csum_update_full, csum_update_partial, fold,
)
from hyperplane.engine.reference.parse import ICMP_ERROR, Parsed
from hyperplane.engine.types import tuple_key

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
R = DropReason


class IcmpMixin:
    """The Engine's ICMP error translation (a mixin of
    :class:`~hyperplane.engine.reference.engine.Engine`): it looks the embedded packet's
    connection up in ``self._table`` and changes nothing of it (state, timer, counters);
    ``_icmp`` calls the engine's ``_drop`` and ``_ev_reject``."""

    def _icmp(self, direction, buf, off, p: Parsed, flags, now) -> Tuple[int, int]:
        """Translate an ICMP error that belongs to a connection; drop the rest.

        An error about a packet of a tracked connection is RELATED to it, in the kernel's word
        (nf_nat_icmp_reply_translation): it is translated so that the host that sent the packet
        learns of the error ("port unreachable" fails the socket, "fragmentation needed" /
        "packet too big" lowers the path MTU, RFC 1191 / RFC 8201), but it is not the
        connection's traffic: state, timer and counters stay as they are (RFC 5508 REQ-6: an
        error neither refreshes nor deletes a mapping, else a forged one could do either).

        The embedded packet is as the error's sender saw it, on the far side of the NAT:

        * inbound (from the VPC): a packet the NAT sent, ENI:port -> peer; reversed, the
          connection's *reply* tuple. Translation: outer destination ENI -> environment,
          embedded source ENI:port -> environment:port (RFC 5508 REQ-4);
        * outbound (from an environment): a reply it received, peer -> env:port; reversed,
          the *orig* tuple. Translation: outer source environment -> ENI, embedded
          destination env:port -> ENI:port.

        The error must go back along the embedded packet's path (the kernel's "outer daddr
        mismatch" check): its outer destination is the embedded source; an environment's error
        must also come from the embedded destination (its own address), so that one
        environment cannot send errors about another's connections. Type, code and the rest of
        the ICMP header (a PMTU error's next-hop MTU) are not touched.

        Anything else: from the VPC unsolicited (an error about nothing we track, or a query:
        the "reject" event names the ICMP packet itself, ports 0); from an environment an
        unrelated error is ICMP_UNRELATED and a query UNSUPPORTED_PROTOCOL (Lambda supports
        TCP and UDP only)."""
        if p.icmp == ICMP_ERROR:
            e = p.inner
            reversed_key = tuple_key(p.family, e.proto, e.dst, e.src, e.dport, e.sport)
            hit = self._table.get(reversed_key)
            related = (hit is not None and hit[1] == direction and p.dst == e.src
                       and (direction == IN or p.src == e.dst))
            if related:
                conn = hit[0]
                if direction == IN:     # back to the environment's address and port
                    self._icmp_manip(buf, off, p, flags, direction, conn.env_addr,
                                     conn.env_port)
                else:                   # out as the ENI's address and the connection's port
                    self._icmp_manip(buf, off, p, flags, direction, conn.eni_addr,
                                     conn.eni_port)
                self._c["icmp_errors_translated"] += 1
                return (Verdict.REPLY if direction == IN else Verdict.ESTABLISHED), R.NONE
            if direction == OUT:
                return self._drop(R.ICMP_UNRELATED)
        elif direction == OUT:
            return self._drop(R.UNSUPPORTED_PROTOCOL)
        self._ev_reject(p, IN, R.UNSOLICITED, now)
        return self._drop(R.UNSOLICITED)

    def _icmp_manip(self, b, off, p: Parsed, flags: int, direction, addr: bytes,
                    port: int) -> None:
        """Rewrite a related ICMP error: outer source (outbound) or destination (inbound), the
        embedded destination (outbound) or source (inbound) address and port, TTL; checksums
        incrementally (RFC 1624): the outer IPv4 header; the embedded IPv4 header (address);
        the embedded TCP/UDP checksum when that field is inside the message (an IPv4 UDP 0
        stays 0); the ICMP checksum, which covers the embedded bytes just changed and, for
        ICMPv6 only, the outer addresses (its pseudo-header). A partial ICMP checksum holds
        only the pseudo-header sum: only the outer addresses move it."""
        v4, alen, e = p.family == 4, (4 if p.family == 4 else 16), p.inner
        out_src, in_src = direction == OUT, direction == IN
        oa = off + ((12 if out_src else 16) if v4 else (8 if out_src else 24))
        ip, l4 = off + e.ip, off + e.l4
        ia = ip + ((12 if in_src else 16) if v4 else (8 if in_src else 24))
        pp = l4 + (0 if in_src else 2)
        new_port = port.to_bytes(2, "big")
        old_outer, old_inner = bytes(b[oa:oa + alen]), bytes(b[ia:ia + alen])
        old_port = bytes(b[pp:pp + 2])
        d_outer = csum_delta(old_outer, addr)
        d_inner = csum_delta(old_inner, addr)
        # the ICMP checksum covers every embedded byte: collect the changed words' deltas
        d_icmp = d_inner + csum_delta(old_port, new_port)

        def set16(pos: int, value: int) -> None:
            nonlocal d_icmp
            old = bytes(b[pos:pos + 2])
            b[pos:pos + 2] = value.to_bytes(2, "big")
            d_icmp += csum_delta(old, bytes(b[pos:pos + 2]))

        if v4:                                    # embedded IPv4 header checksum
            set16(ip + 10, csum_update_full((b[ip + 10] << 8) | b[ip + 11], d_inner))
        udp = e.proto == IPPROTO_UDP
        c = l4 + (6 if udp else 16)
        if c + 2 <= off + p.end:   # a TCP checksum lies past the 8 bytes an error must carry
            csum = (b[c] << 8) | b[c + 1]
            if not (udp and v4 and csum == 0):    # RFC 768: IPv4 UDP checksum 0 stays 0
                csum = csum_update_full(csum, csum_delta(old_inner + old_port, addr + new_port))
                set16(c, 0xFFFF if udp and csum == 0 else csum)
        b[ia:ia + alen] = addr
        b[pp:pp + 2] = new_port

        if v4:
            ttl_old = bytes(b[off + 8:off + 10])
            ttl_new = bytes([ttl_old[0] - 1, ttl_old[1]])
            hc = (b[off + 10] << 8) | b[off + 11]
            hc = csum_update_full(hc, csum_delta(old_outer + ttl_old, addr + ttl_new))
            b[off + 8] = ttl_new[0]
            b[off + 10:off + 12] = hc.to_bytes(2, "big")
        else:
            b[off + 7] -= 1
        ic = off + p.l4 + 2
        icsum = (b[ic] << 8) | b[ic + 1]
        if flags & FLAG_CSUM_PARTIAL:
            if not v4:
                icsum = csum_update_partial(icsum, d_outer)
        else:
            if not v4:
                d_icmp += d_outer
            icsum = csum_update_full(icsum, fold(d_icmp))
        b[ic:ic + 2] = icsum.to_bytes(2, "big")
        b[oa:oa + alen] = addr
