"""The types and codecs both engines share, owned by neither (msgpack-python keeps its shared
types in modules neither engine owns, the same way): what a per-packet call returns, the
tuples and table entries it reports, connection events, the egress-rule check, and the
connection snapshot's byte layout (csrc/hp_snapshot.c writes the same).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import List, NamedTuple, Optional, Sequence

from hyperplane.engine.config import Eni
from hyperplane.engine.constants import IPPROTO_TCP, IPPROTO_UDP, DropReason, Verdict


class Result(NamedTuple):
    """What a per-packet call returns."""

    verdict: Verdict
    packet: Optional[bytes]          #: the rewritten packet, None when dropped
    reason: DropReason               #: DropReason.NONE unless dropped


class Tuple5(NamedTuple):
    """One direction of a connection, as the packet carries it."""

    src: str
    sport: int
    dst: str
    dport: int


class EntryInfo(NamedTuple):
    """A tracked connection as ``Engine.entries()`` reports it."""

    family: int
    proto: str
    orig: Tuple5
    reply: Tuple5
    state: str
    timeout: float                   #: seconds left before expiry
    eni: str
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int


class Event(NamedTuple):
    """What happened to a connection, as ``conntrack -E`` reports it, from
    ``Engine.take_events()`` (after ``enable_events()``), or a flow-log delta from
    ``Engine.flow_collect()``.

    kind: "new" (counters zero), "update" (the state changed; counters before the packet that
    changed it), "destroy" (reason "expired" or "deleted"), "reject" (one packet refused:
    ``orig`` is its tuple as it arrived, ``reply`` None, reason the drop reason: unsolicited,
    security_group or tcp_not_syn; its packet and bytes count in the direction it came from),
    "flow" (traffic since the last collection, in the delta fields).
    """

    kind: str
    time: float
    id: int                          #: 1 + connections created before it; 0 for "reject"
    family: int
    proto: str
    orig: Tuple5
    reply: Optional[Tuple5]
    state: str                       #: the state after the event; "" for "reject"
    eni: Optional[str]               #: the ENI it uses (reject: concerns), None if none
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int
    delta_packets_orig: int = 0      #: destroy/flow: not yet handed to a flow collection
    delta_bytes_orig: int = 0
    delta_packets_reply: int = 0
    delta_bytes_reply: int = 0
    reason: str = ""
    #: destroy/flow: VPC Flow Logs' tcp-flags of each direction since the last collection, the
    #: OR of FIN 1, SYN 2, RST 4 and SYN-ACK 18 over its segments (0 for UDP)
    tcp_flags_orig: int = 0
    tcp_flags_reply: int = 0


#: Event kinds, in csrc/hp_engine.h enum hp_event_type order (1-based).
EVENT_KINDS = ("new", "update", "destroy", "reject", "flow")
#: Why a connection was destroyed (hp_engine.h HP_GONE_*).
GONE_REASONS = ("expired", "deleted")
#: Drop reasons that produce a "reject" event.
REJECT_REASONS = ("unsolicited", "security_group", "tcp_not_syn")

# Engine.snapshot()/restore(): a header, then one fixed record per connection, the layout of
# csrc/hp_engine.h's hp_saved (host byte order: the blob is for this machine's next data path;
# x86 and arm64 Linux are little-endian). Tuples are hp_tuple's 40 bytes: src, dst (IPv4 in the
# first 4 of 16), sport, dport, family, proto, 2 zero bytes. Version 2 added each side's TCP
# window (hp_tcp_win: end, maxend, maxwin, maxack, scale, flags, 2 zero bytes); a version 1
# blob is refused with a message that says so, never read as version 2.
SNAPSHOT_MAGIC = b"HPCTSNAP"
SNAPSHOT_VERSION = 2
SNAP_HEADER = struct.Struct("<8sIII4x")      # magic, version, record size, count
SNAP_RECORD = struct.Struct("<40s40sd2Q2Q2Q2IIHBB20s20s")
SNAP_TUPLE = struct.Struct("<16s16sHHBB2x")
SNAP_WIN = struct.Struct("<IIIIBB2s")
#: restore()'s result keys: restored, then why a record was not (checked in this order).
#: other_slice (checked right after invalid): the record's port belongs to another shard's slice.
RESTORE_OUTCOMES = ("restored", "invalid", "eni_mismatch", "expired", "duplicate", "table_full",
                    "other_slice")

#: the most shards (data path workers) an engine's port range may be cut into
MAX_PORT_SLICES = 64


def check_port_slice(port_slice) -> tuple:
    """``(index, count)`` of an engine's port slice, checked: 0 <= index < count <= 64. The slice
    is the ports p with ``port_owner(p, count) == index`` of every ENI's range (a data path
    worker's share)."""
    try:
        index, count = port_slice
    except (TypeError, ValueError):
        raise ValueError(f"port_slice {port_slice!r}: a pair (index, count), e.g. (0, 1) for the "
                         f"whole port range") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)) or \
            not 0 <= index < count <= MAX_PORT_SLICES:
        raise ValueError(f"port_slice {port_slice!r}: needs whole numbers 0 <= index < count <= "
                         f"{MAX_PORT_SLICES} (count: the number of shards, index: this one's)")
    return int(index), int(count)


#: Ports go to data path workers in blocks of 2 ** PORT_BLOCK_SHIFT (csrc/hp_types.h
#: HP_PORT_BLOCK_SHIFT): Linux's connect() picks even ephemeral ports and bind() odd ones, so
#: with p % count every connection of a Linux client would land on one worker.
PORT_BLOCK_SHIFT = 1


def port_owner(port: int, count: int) -> int:
    """The shard (data path worker) of ``count`` whose slice holds ``port``."""
    return (port >> PORT_BLOCK_SHIFT) % count


def slice_ports(port_min: int, port_max: int, index: int, count: int) -> Sequence[int]:
    """The ports of [port_min, port_max] in slice ``index`` of ``count``, ascending:
    ``port_owner(p, count) == index`` (csrc/hp_ports.c hp_slice_ports). Count 1 is the whole
    range."""
    if count == 1:
        return range(port_min, port_max + 1)
    return [p for p in range(port_min, port_max + 1) if port_owner(p, count) == index]




def snapshot_blob(records, count: int) -> bytes:
    """A snapshot of count packed records, bytes-like (both engines write it the same way)."""
    return SNAP_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SNAP_RECORD.size,
                             count) + records


def snapshot_records(blob) -> memoryview:
    """The records part of a snapshot, after checking its header; ValueError says what is
    wrong with a blob that is not one."""
    m = memoryview(blob).cast("B")
    if len(m) < SNAP_HEADER.size:
        raise ValueError(f"connection snapshot: {len(m)} bytes, shorter than its "
                         f"{SNAP_HEADER.size}-byte header")
    magic, version, size, count = SNAP_HEADER.unpack_from(m)
    if magic != SNAPSHOT_MAGIC:
        raise ValueError(f"not a connection snapshot (magic {bytes(magic)!r}, expected "
                         f"{SNAPSHOT_MAGIC!r})")
    if version != SNAPSHOT_VERSION or size != SNAP_RECORD.size:
        why = (" (version 2 added the TCP sequence windows: a snapshot of an older "
               "hyperplane cannot be restored; its connections start anew)"
               if version < SNAPSHOT_VERSION else "")
        raise ValueError(f"connection snapshot version {version} with {size}-byte records: "
                         f"this engine reads version {SNAPSHOT_VERSION} with "
                         f"{SNAP_RECORD.size}-byte records{why}")
    if len(m) != SNAP_HEADER.size + count * size:
        raise ValueError(f"connection snapshot: header says {count} records "
                         f"({SNAP_HEADER.size + count * size} bytes), blob has {len(m)} bytes")
    return m[SNAP_HEADER.size:]


def orig_key(proto: str, orig: Tuple5) -> bytes:
    """The table key of an orig tuple given as text (Engine.delete)."""
    if proto not in ("tcp", "udp"):
        raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")
    src, dst = ipaddress.ip_address(orig.src), ipaddress.ip_address(orig.dst)
    if src.version != dst.version:
        raise ValueError(f"{orig}: source and destination of different families")
    for port in (orig.sport, orig.dport):
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"{orig}: port {port!r} is not 0..65535")
    return tuple_key(src.version, 6 if proto == "tcp" else 17, src.packed.ljust(16, b"\0"),
                     dst.packed.ljust(16, b"\0"), orig.sport, orig.dport)


def tuple_key(family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """The table key. Bytes, so Python's dict hashes it with its seeded SipHash (PEP 456):
    the reference table resists hash flooding like the compiled one."""
    return struct.pack("!BB16s16sHH", family, proto, src, dst, sport, dport)


def check_new_eni(enis: List[Eni], eni: Eni) -> None:
    """add_eni's rule, shared by both engines: ids and addresses are unique across ENIs."""
    def addrs(x: Eni):
        return {ipaddress.ip_address(a) for a in (x.ipv4, x.ipv6) if a is not None}

    for e in enis:
        if e.id == eni.id:
            raise ValueError(f"ENI {eni.id} is already in the engine")
        for a in addrs(eni) & addrs(e):
            raise ValueError(f"address {a} of {eni.id} is already used by ENI {e.id}")


# --------------------------------------------------------------------------------------------
# Security-group egress rules (csrc/hp_acl.c)
# --------------------------------------------------------------------------------------------
#: AWS: 60 egress rules per security group x 5 groups per ENI = 300; a rule with an IPv4 and an
#: IPv6 range counts twice here. The compiled engine has room for this many (HP_MAX_SG_RULES).
MAX_EGRESS_RULES = 512
#: protocol names a rule may use -> protocol number; 0 = every protocol and port (AWS "-1").
#: "icmp" is accepted because security groups have it, and matches nothing the engine tracks.
EGRESS_PROTOCOLS = {"all": 0, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": 1}


class EgressRule(NamedTuple):
    """One egress rule, validated: traffic to ``network`` with ``proto`` (0 = all) and a
    destination port in ``port_min..port_max`` (ignored for all protocols)."""

    network: object                  #: ipaddress.IPv4Network or IPv6Network
    proto: int
    port_min: int
    port_max: int

    def allows(self, family: int, proto: int, dst: bytes, dport: int) -> bool:
        if self.network.version != family:
            return False
        alen = 4 if family == 4 else 16
        if ipaddress.ip_address(dst[:alen]) not in self.network:
            return False
        if self.proto == 0:
            return True
        return self.proto == proto and self.port_min <= dport <= self.port_max


def parse_egress_rules(rules) -> Optional[List[EgressRule]]:
    """Check ``Engine.set_egress_rules``' argument (shared by both engines): None, or a list of
    ``(cidr, protocol, from_port, to_port)``. Raises ValueError naming the bad rule."""
    if rules is None:
        return None
    if not isinstance(rules, (list, tuple)):
        raise ValueError(f"egress rules: {rules!r} is not a list of (cidr, protocol, "
                         "from_port, to_port); use None to allow everything")
    out = []
    for i, rule in enumerate(rules):
        where = f"egress rule {i} {rule!r}"
        if not isinstance(rule, (tuple, list)) or len(rule) != 4:
            raise ValueError(f"{where}: must be (cidr, protocol, from_port, to_port)")
        cidr, proto, lo, hi = rule
        if not isinstance(cidr, str):
            raise ValueError(f"{where}: cidr must be a string like '198.18.0.0/15'")
        try:
            net = ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise ValueError(f"{where}: cidr {cidr!r} is not a network address ({exc})") from None
        if proto not in EGRESS_PROTOCOLS:
            raise ValueError(f"{where}: protocol must be one of {sorted(EGRESS_PROTOCOLS)}")
        for name, v in (("from_port", lo), ("to_port", hi)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535:
                raise ValueError(f"{where}: {name} must be an integer 0..65535")
        if lo > hi:
            raise ValueError(f"{where}: from_port {lo} is above to_port {hi}")
        out.append(EgressRule(net, EGRESS_PROTOCOLS[proto], lo, hi))
    if len(out) > MAX_EGRESS_RULES:
        raise ValueError(f"egress rules: {len(out)} rules; at most {MAX_EGRESS_RULES}")
    return out


def eni_index(enis: List[Eni], which) -> int:
    """An ENI's position given its index or its id (``set_eni_enabled``, both engines)."""
    if isinstance(which, str):
        for i, eni in enumerate(enis):
            if eni.id == which:
                return i
        raise ValueError(f"ENI {which!r} is not in the engine")
    if not isinstance(which, int) or isinstance(which, bool) or not 0 <= which < len(enis):
        raise ValueError(f"ENI index {which!r}: the engine has {len(enis)} ENIs "
                         f"(0..{len(enis) - 1}); pass an index or an ENI id")
    return which
