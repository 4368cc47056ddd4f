"""Names shared by both engines: verdicts, directions, drop reasons, TCP states.

The numeric values are part of the engine ABI: ``csrc/hp_types.h`` uses the same numbers, and
the drop reasons are ``csrc/hp_drop_reasons.h``'s list, which the compiled module checks
against ``DropReason`` name by name when it is imported.
Words follow the kernel's conntrack (``orig``/``reply``, ``ct_state``) so that a learner can
move on to netfilter without relearning vocabulary.
"""
from __future__ import annotations

import enum


class Direction(enum.IntEnum):
    """Which way a packet crosses the Hyperplane ENI."""

    #: execution environment -> VPC; matches a connection's *orig* tuple; source is NATed.
    OUTBOUND = 0
    #: VPC -> ENI address; matches a connection's *reply* tuple; destination is un-NATed.
    INBOUND = 1


class Verdict(enum.IntEnum):
    """What the engine decided for one packet."""

    DROP = 0         #: not forwarded; the reason says why
    NEW = 1          #: outbound packet that created (or re-opened) a connection
    ESTABLISHED = 2  #: outbound packet of a tracked connection
    REPLY = 3        #: inbound packet matching a tracked connection's reply tuple


class DropReason(enum.IntEnum):
    """Every drop has exactly one of these names, and each has its own counter."""

    NONE = 0
    TRUNCATED = 1             #: buffer shorter than the headers say
    BAD_IP_VERSION = 2        #: first nibble is neither 4 nor 6
    BAD_IP_HEADER = 3         #: IPv4 IHL < 5 or total length < header length
    BAD_IP_CHECKSUM = 4       #: IPv4 header checksum does not verify (RFC 1812 5.2.2)
    #: a later fragment (offset > 0) of no datagram whose first fragment passed in that
    #: direction: it came before its first (nothing is held back for reordering), its first was
    #: refused (unsolicited, ...), its tracker timed out, or its connection is gone
    FRAGMENT = 5
    #: transport is neither TCP nor UDP (incl. ESP, no-next-header), or an ICMP message that is
    #: not an error (echo, ...) sent by an environment: Lambda supports only TCP and UDP
    UNSUPPORTED_PROTOCOL = 6
    EXT_HEADER_CHAIN = 7      #: IPv6 extension-header chain longer than the walk limit
    BAD_L4_HEADER = 8         #: TCP data offset < 5 / UDP length field inconsistent
    TTL_EXPIRED = 9           #: IPv4 TTL <= 1: forwarding would expire it
    HOP_LIMIT_EXPIRED = 10    #: IPv6 hop limit <= 1
    #: inbound packet matching no reply tuple (AWS: dropped); also any ICMP from the VPC that
    #: is not an error about a tracked connection
    UNSOLICITED = 11
    TCP_NOT_SYN = 12          #: new outbound TCP connection that does not start with SYN
    TCP_INVALID = 13          #: TCP flags not allowed in the connection's state
    PORT_EXHAUSTED = 14       #: every ENI of the family has no free port for this protocol
    TABLE_FULL = 15           #: connection table at capacity
    #: no enabled ENI has an address of the packet's family (e.g. IPv6 off, every ENI retired)
    NO_ENI_ADDRESS = 16
    #: the tuple is already another connection's tuple in the other direction: an outbound
    #: packet that looks like a reply, or a new mapping whose reply tuple is taken (the check
    #: done by inserting the reply tuple first); new mappings probe other ports before this
    TUPLE_COLLISION = 17
    #: a new connection that no security-group egress rule allows (stateful: only checked when
    #: a connection is created in the orig direction; its later packets and replies never are)
    SECURITY_GROUP = 18
    #: an ICMP error that cannot be translated: its checksum fails (RFC 5508 REQ-3), or the
    #: packet it embeds is cut before 8 bytes of transport header, of the other IP family, not
    #: TCP/UDP (an error about an ICMP message included), or a later IPv4/IPv6 fragment
    BAD_ICMP = 19
    #: an ICMP error from an environment about no connection it has (from the VPC, such an
    #: error is UNSOLICITED like any other packet that matches nothing)
    ICMP_UNRELATED = 20
    #: a new connection from a source (an environment's address) that already holds
    #: ``max_connections_per_source`` connections: one environment's SYN flood or connection
    #: leak cannot take every port and table slot from the others sharing the ENI
    SOURCE_LIMIT = 21
    #: a first fragment when 1024 datagrams are being tracked already (none timed out)
    FRAGMENT_TABLE_FULL = 22
    #: a fragment no honest sender makes: a first fragment without the whole transport header
    #: (RFC 1858's tiny fragment; for IPv6 also without the whole header chain, RFC 7112), an
    #: IPv4 TCP fragment at offset 8 (RFC 1858's overlap), a non-last fragment whose length is no
    #: multiple of 8, a fragment past 65,535 bytes of datagram
    BAD_FRAGMENT = 23
    #: a TCP segment of a tracked connection whose sequence or acknowledgment number is
    #: outside the window its two ends have announced (a blind injection, a segment of an old
    #: incarnation of the tuple): it changes neither the state nor the timer
    #: (hyperplane/engine/reference/window.py)
    TCP_OUT_OF_WINDOW = 24

    @property
    def label(self) -> str:
        """The lower-case name used in counters, JSON and the CLI (``port_exhausted``)."""
        return self.name.lower()


class TcpState(enum.IntEnum):
    """TCP connection-tracking states (the kernel's names, RFC 9293 section 3.3.2)."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8


class UdpState(enum.IntEnum):
    """UDP has no handshake: a flow is UNREPLIED until the VPC answers once."""

    UNREPLIED = 9
    REPLIED = 10


class TimeoutClass(enum.IntEnum):
    """One idle timeout and one LRU expiry list per class (VPP NAT44-ED's idea)."""

    TCP_SYN_SENT = 1
    TCP_SYN_RECV = 2
    TCP_ESTABLISHED = 3
    TCP_FIN_WAIT = 4
    TCP_CLOSE_WAIT = 5
    TCP_LAST_ACK = 6
    TCP_TIME_WAIT = 7
    TCP_CLOSE = 8
    UDP_UNREPLIED = 9
    UDP_REPLIED = 10


N_TIMEOUT_CLASSES = 11  # index 0 unused, so a state's number is its class number

#: Per-packet flag bits for the batch call.
FLAG_CSUM_PARTIAL = 0x01  # virtio-net header said VIRTIO_NET_HDR_F_NEEDS_CSUM

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
#: Connections are TCP or UDP; the ICMP names appear only in "reject" events (an unsolicited
#: ICMP packet from the VPC), spelt as conntrack and the flow logs spell them.
PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp",
               IPPROTO_ICMPV6: "icmpv6"}


def state_name(proto: int, state: int) -> str:
    """Human name of an entry's ct_state (``ESTABLISHED``, ``UNREPLIED`` ...)."""
    if proto == IPPROTO_TCP:
        return TcpState(state).name
    return UdpState(state).name


#: [datapath] ring_frames: frames per block of the receive ring (csrc/hp_io.h HP_RING_FPB), the
#: bounds the C side accepts (HP_RING_FRAMES_MIN/MAX) and its default (HP_RING_FRAMES_DEFAULT;
#: the extension asserts at import that these agree, as it does for its other shared constants).
RING_FRAMES_STEP, RING_FRAMES_MIN, RING_FRAMES_MAX = 128, 1024, 65536
RING_FRAMES_DEFAULT = 4096
