"""VPC Flow Logs for the lab's ENIs, in AWS's default record format (version 2) or a custom
format of AWS's fields of versions 2 to 5 (``[flow_logs] format``,
hyperplane.labconfig.flowformat).

What AWS records (Amazon VPC user guide, "Flow log records"):

* A **record** describes one IP flow, a 5-tuple (source and destination address and port,
  protocol), **on one network interface**, during one **aggregation interval** (the capture
  window; AWS offers a maximum of 60 s or 600 s). A connection is two flows, one per
  direction: what the ENI sent and what it received are separate records.
* The default format is the version-2 fields, separated by spaces; files delivered to S3 start
  with a header line naming them::

      version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes
      start end action log-status

  ``protocol`` is the IANA number (6 TCP, 17 UDP); ``packets`` and ``bytes`` count whole IP
  packets (headers included); ``start``/``end`` are Unix seconds; ``action`` is ACCEPT
  (allowed by the security groups and network ACLs) or REJECT (refused); ``log-status`` is OK,
  **NODATA** (no traffic to or from the interface during the interval: every field but the
  times is ``-``) or **SKIPDATA** (some records were skipped in the interval).

How this module builds them from the engines' events (hyperplane.engine.types.Event):

* ``"flow"`` events (``Engine.flow_collect()`` at the end of each interval) carry each
  connection's traffic since the last collection, and ``"destroy"`` events the traffic a
  connection had not yet handed over when it ended: both become **ACCEPT** records.
  ``"reject"`` events (one refused packet each) become **REJECT** records. ``"new"`` and
  ``"update"`` carry no traffic and are ignored.
* Records are written **as seen at the ENI**, after NAT: the environment's address never
  appears (the VPC only ever sees the ENI's address). A connection with orig tuple
  ``E:e -> S:s`` and reply tuple ``S:s -> ENI:p`` gives

  - its orig traffic:  ``srcaddr ENI  srcport p  dstaddr S    dstport s``
  - its reply traffic: ``srcaddr S    srcport s  dstaddr ENI  dstport p``

* An unsolicited inbound packet (no connection matches it) is refused with its own tuple.
  A packet refused on the way **out** (security-group egress rule, or a TCP segment that is
  not a SYN for an unknown connection) never got a NAT port, so the record uses the ENI's
  address of that family (the address it would have left from) with the **environment's**
  source port: the only port there is. AWS cannot show such a record at all (the refused
  traffic never reaches a VPC interface); this lab shows it at the ENI that refused it.
* Records are aggregated per (ENI, 5-tuple, action) within the interval: packets and bytes
  are summed.

Differences from AWS, on purpose:

* ``start``/``end`` are the bounds of the aggregation interval (AWS: the first and last packet
  of the flow within it). The engines stamp events with the monotonic lab clock, not Unix
  time, so the interval is the honest granularity here. Both are on the *lab* clock (Unix time
  plus what ``hyperplane clock advance`` added). When the clock jumps over whole intervals,
  one NODATA record per ENI covers the jump.
* The interval is any whole number of seconds from 1 to 600 (``[flow_logs] interval``), so
  records appear while you watch. Records are written (appended, one flush per interval, never
  per packet) at the end of each interval, not minutes later.
* SKIPDATA: when the engines' event rings overflowed since the last write (``events_lost``
  grew), the traffic of lost "destroy"/"reject" events went unrecorded, so every record of
  that interval carries log-status SKIPDATA (an ENI without records gets a SKIPDATA record).

Custom formats (AWS's fields of versions 2 to 5, in the order the format lists them; the
header line names them; ``version`` is the highest version among them):

* ``pkt-srcaddr``/``pkt-dstaddr`` show the translation. AWS defines them as the packet-level
  *original* source and *final* destination, "to distinguish between the IP address of an
  intermediate layer through which traffic flows" (its example: a NAT gateway's interface),
  and documents that traffic sent from an interface whose source is not one of the
  interface's addresses shows the interface's address in ``srcaddr`` and the original source
  in ``pkt-srcaddr`` (and the same for destinations). A Hyperplane ENI is such an intermediate
  layer: what it sends left the execution environment, so ``srcaddr`` is the ENI's address and
  ``pkt-srcaddr`` the environment's; what it receives goes on to the environment, so
  ``dstaddr`` is the ENI's address and ``pkt-dstaddr`` the environment's. The other side's
  address is the same in both. (Flows are then aggregated per 5-tuple and these two.)
* ``tcp-flags``: the engines OR each direction's FIN 1, SYN 2, RST 4 and SYN-ACK 18 until the
  interval's collection (0: none of them; REJECT records: 0, the refused segment's flags are
  not kept). ``flow-direction``: egress (the ENI sent it) or ingress. ``traffic-path`` (egress
  only): 1 to a VPC address or through a NAT gateway (another resource of the VPC), 2 through
  the internet gateway (the NAT gateway's own egress), ``-`` when no route matches.
* ``instance-id`` is ``-`` (requester-managed interfaces, as AWS writes for a NAT gateway's),
  ``sublocation-*`` and ``pkt-*-aws-service`` are ``-`` (no sublocation; lab addresses are in
  no AWS service's ranges), ``region``/``az-id`` come from ``[flow_logs]``. A NODATA or
  SKIPDATA record fills the interface's own fields (ids, region, AZ) and ``-`` for the rest.

Files: ``<directory>/<eni-id>.log``, the header line once per file, then records.
``hyperplane flowlogs`` prints them (the lab keeps them under ``<lab dir>/flowlogs/``).
"""
from __future__ import annotations

import ipaddress
import logging
import math
import os
import queue
import re
import threading
import time

from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from hyperplane.labconfig import bare
from hyperplane.labconfig.flowformat import (DEFAULT_FIELDS, NUMERIC as FORMAT_NUMERIC,
                                             header_of, parse_format, version_of)
from hyperplane.labconfig.model import FLOW_LOGS_AZ_ID, FLOW_LOGS_REGION

log = logging.getLogger("hyperplane.datapath.flowlogs")

#: The default (version 2) format's fields, in order (hyperplane.labconfig.flowformat's table).
FIELDS = DEFAULT_FIELDS
HEADER = " ".join(FIELDS)
ACCEPT, REJECT = "ACCEPT", "REJECT"
OK, NODATA, SKIPDATA = "OK", "NODATA", "SKIPDATA"
#: IANA protocol numbers (https://www.iana.org/assignments/protocol-numbers).
IANA_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
INTERVAL_RANGE = (1, 600)
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
_SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]")

EGRESS, INGRESS = "egress", "ingress"
# An aggregation key, in record field order, then the flow's direction and (custom formats
# with pkt-srcaddr/pkt-dstaddr only; "" otherwise) its packet-level addresses:
# (interface-id, srcaddr, dstaddr, srcport, dstport, protocol, action, flow-direction,
#  pkt-srcaddr, pkt-dstaddr) -> [packets, bytes, tcp-flags]
_Key = Tuple[str, str, str, int, int, int, str, str, str, str]
#: (ENI id, its subnet or None, destination address) -> the traffic-path of its egress, or
#: None ("-"); :func:`traffic_path` for a lab plan
TrafficPath = Callable[[str, Optional[str], str], Optional[int]]
#: AWS's traffic-path values a lab can have: through another resource in the same VPC
#: (including resources that create a network interface in it: a NAT gateway), and through an
#: internet gateway (or a gateway VPC endpoint; 8, "internet gateway, Nitro-based instances
#: only", does not apply: a Hyperplane ENI has no instance).
PATH_SAME_VPC, PATH_INTERNET_GATEWAY = 1, 2


def traffic_path(plan, subnet: Optional[str], dst: str, nat_gateway: bool = False) \
        -> Optional[int]:
    """The traffic-path of egress from an ENI in ``subnet`` of ``plan`` to ``dst``: a NAT
    gateway's egress goes out through the internet gateway (2); an ENI's to an address of one
    of the VPC's subnets, or along a route to a NAT gateway, stays with another resource of the
    VPC (1); along a route to the internet gateway, 2; None when no route matches."""
    if nat_gateway:
        return PATH_INTERNET_GATEWAY
    try:
        a = ipaddress.ip_address(dst)
    except ValueError:
        return None
    for s in plan.subnets:
        for cidr in (s.cidr, s.ipv6_cidr):
            if cidr and a in ipaddress.ip_network(cidr):
                return PATH_SAME_VPC
    table = plan.route_table_of(subnet) if subnet else None
    best = None
    for r in table.routes if table else ():
        net = ipaddress.ip_network(r.destination)
        if net.version == a.version and a in net and (best is None or
                                                      net.prefixlen > best[0].prefixlen):
            best = (net, r)
    if best is None:
        return None
    return PATH_SAME_VPC if best[1].kind == "nat" else PATH_INTERNET_GATEWAY


class Record(NamedTuple):
    """One flow log record (default format v2). ``None`` stands for ``-``."""

    version: int
    account_id: str
    interface_id: str
    srcaddr: Optional[str]
    dstaddr: Optional[str]
    srcport: Optional[int]
    dstport: Optional[int]
    protocol: Optional[int]
    packets: Optional[int]
    bytes: Optional[int]
    start: int
    end: int
    action: Optional[str]
    log_status: str

    def line(self) -> str:
        """The record as AWS writes it: the fields in order, separated by spaces."""
        return " ".join("-" if v is None else str(v) for v in self)

    def as_json(self) -> Dict[str, Any]:
        """The record with the v2 field names (numbers as numbers, ``-`` as null)."""
        return dict(zip(FIELDS, self))

    @classmethod
    def parse(cls, line: str) -> "Record":
        """A record from one line of a flow log file; ValueError for anything else (the
        header included)."""
        parts = line.split()
        if len(parts) != len(FIELDS) or parts[0] == "version":
            raise ValueError(f"not a v2 flow log record: {line!r}")
        return cls(*_typed(FIELDS, parts))


    @property
    def header(self) -> str:
        return HEADER


def _typed(fields: Sequence[str], parts: Sequence[str]) -> List[Any]:
    """A record line's words as values: ``-`` None, the numeric fields ints, the rest text."""
    return [None if text == "-" else int(text) if name in FORMAT_NUMERIC else text
            for name, text in zip(fields, parts)]


class CustomRecord:
    """One record of a custom format: the file's fields (its header line) and their values
    (numbers as ints, ``-`` as None); ``eni`` is the ENI of the file it came from. Fields read
    as attributes with ``_`` for ``-`` (``r.pkt_srcaddr``); ``interface_id`` falls back to the
    file's ENI when the format leaves that field out."""

    __slots__ = ("fields", "values", "eni")

    def __init__(self, fields: Sequence[str], values: Sequence[Any], eni: Optional[str] = None):
        self.fields, self.values, self.eni = tuple(fields), tuple(values), eni

    @classmethod
    def parse(cls, fields: Sequence[str], line: str, eni: Optional[str] = None) \
            -> "CustomRecord":
        """A record from one line of a file whose header named ``fields``; ValueError for
        anything else (the header included)."""
        parts = line.split()
        if len(parts) != len(fields) or parts == list(fields):
            raise ValueError(f"not a record of format {header_of(fields)!r}: {line!r}")
        return cls(fields, _typed(fields, parts), eni)

    def __getattr__(self, name: str) -> Any:
        key = name.replace("_", "-")
        if key in self.fields:
            return self.values[self.fields.index(key)]
        if name == "interface_id":
            return self.eni
        raise AttributeError(f"the format has no field {key!r}")

    def line(self) -> str:
        return " ".join("-" if v is None else str(v) for v in self.values)

    def as_json(self) -> Dict[str, Any]:
        return dict(zip(self.fields, self.values))

    @property
    def header(self) -> str:
        return header_of(self.fields)

    def __eq__(self, other) -> bool:
        return isinstance(other, CustomRecord) and (self.fields, self.values, self.eni) == \
            (other.fields, other.values, other.eni)

    def __repr__(self) -> str:
        return f"CustomRecord({self.as_json()!r})"


def line_parser(header: str, eni: Optional[str] = None) -> Callable[[str], Any]:
    """How to read the records of a file whose first line is ``header``: ``Record.parse`` for
    the default format, else :meth:`CustomRecord.parse` with its fields. ValueError when the
    header names no format."""
    if header == HEADER:
        return Record.parse
    fields = parse_format(" ".join("${%s}" % n for n in header.split()) or "-")
    return lambda line: CustomRecord.parse(fields, line, eni)


class ClosedInterval(NamedTuple):
    """An interval :meth:`FlowLogs.close_interval` ended, waiting to be written: its bounds
    (``next_begin``: where the next one starts, past ``end`` when the clock jumped), its
    log-status, whether the data path stopped (``final``), the aggregates, the ENI addresses
    known then and the live ENIs."""

    begin: int
    end: int
    next_begin: int
    status: str
    final: bool
    flows: Dict[_Key, List[int]]
    out_rejects: Dict[Tuple[str, int, int, str, int, int, str], List[int]]
    eni_addr: Dict[Tuple[str, int], str]
    enis: List[str]
    subnets: Dict[str, str]


def _family_of(addr: str) -> int:
    return 6 if ":" in addr else 4


def file_name(eni: str) -> str:
    """``<eni-id>.log`` (anything but letters, digits, ``.``, ``_`` and ``-`` replaced, so an
    id can never name a path outside the directory)."""
    return _SAFE_FILE.sub("_", eni) + ".log"


class FlowLogs:
    """The flow-log writer of one data path: aggregates events, writes one file per ENI.

    The daemon drives it: ``add(events)`` every tick with whatever the engines' event rings
    held; when ``due(wall)`` says the interval has ended, it adds the engines'
    ``flow_collect()`` deltas and calls ``write(wall, eni_addresses, events_lost)``; at
    shutdown ``write(..., final=True)`` writes the partial last interval.

    Intervals start at ``floor(start)`` and follow each other every ``interval`` seconds, so
    record times are whole seconds and every record of an interval has the same start/end.
    """

    def __init__(self, directory: str, interval: int = 10,
                 account_id: str = "123456789012", start: Optional[float] = None,
                 record_format: str = "", vpc_id: str = "", region: str = FLOW_LOGS_REGION,
                 az_id: str = FLOW_LOGS_AZ_ID, traffic_path: Optional[TrafficPath] = None):
        """``record_format``: AWS's ``${field} ...`` ("": the default, version 2); ``vpc_id``,
        ``region``, ``az_id`` fill those fields; ``traffic_path(eni, subnet, dstaddr)`` gives an
        egress record's traffic-path (None: ``-``)."""
        lo, hi = INTERVAL_RANGE
        if isinstance(interval, bool) or not isinstance(interval, int) or \
                not lo <= interval <= hi:
            raise ValueError(f"interval {interval!r}: a whole number of seconds from {lo} to "
                             f"{hi}")
        if not isinstance(account_id, str) or not _ACCOUNT_ID.match(account_id):
            raise ValueError(f"account_id {account_id!r}: exactly 12 digits")
        self.directory = directory
        self.interval = interval
        self.account_id = account_id
        self.fields: Tuple[str, ...] = parse_format(record_format)   # ValueError when wrong
        self.version = version_of(self.fields)
        self.header = header_of(self.fields)
        self.vpc_id, self.region, self.az_id = vpc_id or None, region, az_id
        # the route lookup (about 20 us) only for a format that has the field
        self.traffic_path = traffic_path if "traffic-path" in self.fields else None
        # pkt-srcaddr/pkt-dstaddr split what the v2 fields would aggregate: only when asked for
        self._pkt = bool({"pkt-srcaddr", "pkt-dstaddr"} & set(self.fields))
        os.makedirs(directory, exist_ok=True)
        self._begin = math.floor(time.time() if start is None else start)
        self._flows: Dict[_Key, List[int]] = {}
        # Outbound rejects: their source address (the ENI's) is looked up at write time.
        # (eni, family, sport, dstaddr, dport, protocol, pkt-srcaddr) -> [packets, bytes, 0]
        self._out_rejects: Dict[Tuple[str, int, int, str, int, int, str], List[int]] = {}
        self._eni_addr: Dict[Tuple[str, int], str] = {}   # last known address per family
        self._lost_seen = 0
        self._files: set = set()
        self._queue: Optional[queue.Queue] = None     # intervals for the writer thread
        self._thread: Optional[threading.Thread] = None
        self._c = {"intervals": 0, "records": 0, "accept_records": 0, "reject_records": 0,
                   "nodata_records": 0, "skipdata_records": 0, "skipdata_intervals": 0,
                   "events_without_eni": 0, "write_errors": 0}

    # ---- aggregation ------------------------------------------------------------------------
    def add(self, events: Iterable[Any]) -> None:
        """Count the traffic of ``events`` (hyperplane.engine.types.Event, any kinds) into the
        current interval."""
        for ev in events:
            if ev.kind in ("flow", "destroy"):
                self._accept(ev)
            elif ev.kind == "reject":
                self._reject(ev)

    def _count(self, table: Dict, key, packets: int, nbytes: int, flags: int = 0) -> None:
        c = table.get(key)
        if c is None:
            table[key] = [packets, nbytes, flags]
        else:
            c[0] += packets
            c[1] += nbytes
            c[2] |= flags

    def _pkt_addrs(self, src: str, dst: str) -> Tuple[str, str]:
        return (src, dst) if self._pkt else ("", "")

    def _accept(self, ev) -> None:
        if not ev.delta_packets_orig and not ev.delta_packets_reply:
            return
        if ev.eni is None or ev.reply is None:
            self._c["events_without_eni"] += 1
            return
        proto = IANA_PROTOCOLS.get(ev.proto, 0)
        o, r = ev.orig, ev.reply
        self._eni_addr[(ev.eni, ev.family)] = r.dst   # the reply goes to the ENI's address
        if ev.delta_packets_orig:   # sent by the ENI, after source NAT; it came from o.src
            self._count(self._flows, (ev.eni, r.dst, o.dst, r.dport, o.dport, proto, ACCEPT,
                                      EGRESS, *self._pkt_addrs(o.src, o.dst)),
                        ev.delta_packets_orig, ev.delta_bytes_orig, ev.tcp_flags_orig)
        if ev.delta_packets_reply:  # received by the ENI, before the reverse NAT to o.src
            self._count(self._flows, (ev.eni, r.src, r.dst, r.sport, r.dport, proto, ACCEPT,
                                      INGRESS, *self._pkt_addrs(r.src, o.src)),
                        ev.delta_packets_reply, ev.delta_bytes_reply, ev.tcp_flags_reply)

    def _reject(self, ev) -> None:
        if ev.eni is None:
            self._c["events_without_eni"] += 1
            return
        proto = IANA_PROTOCOLS.get(ev.proto, 0)
        o = ev.orig
        if ev.packets_reply or ev.reason == "unsolicited":   # arrived from the VPC
            self._count(self._flows, (ev.eni, o.src, o.dst, o.sport, o.dport, proto, REJECT,
                                      INGRESS, *self._pkt_addrs(o.src, o.dst)),
                        ev.packets_reply, ev.bytes_reply)
        else:                                                 # refused on its way out
            self._count(self._out_rejects, (ev.eni, ev.family, o.sport, o.dst, o.dport, proto,
                                            o.src if self._pkt else ""),
                        ev.packets_orig, ev.bytes_orig)

    # ---- intervals ----------------------------------------------------------------------------
    def due(self, wall: float) -> bool:
        """Whether the current aggregation interval has ended at Unix time ``wall``."""
        return wall >= self._begin + self.interval

    def write(self, wall: float, eni_addresses: Dict[str, List[str]], events_lost: int = 0,
              final: bool = False, eni_subnets: Optional[Dict[str, str]] = None) -> int:
        """Write the current interval's records and start the next interval; returns how many
        records were written (:meth:`close_interval` then :meth:`write_interval`).

        ``eni_addresses``: every live ENI id and its addresses (an ENI without traffic gets a
        NODATA record; outbound rejects take their source address from here).
        ``events_lost``: the engines' running total of events lost to full rings; when it grew
        since the last write, this interval's records are SKIPDATA. ``final``: the data path
        stops, so the interval ends now (at ``wall``), partial."""
        return self.write_interval(self.close_interval(wall, eni_addresses, events_lost, final,
                                                       eni_subnets))

    def close_interval(self, wall: float, eni_addresses: Dict[str, List[str]],
                       events_lost: int = 0, final: bool = False,
                       eni_subnets: Optional[Dict[str, str]] = None) -> "ClosedInterval":
        """End the current interval (arguments as for :meth:`write`; ``eni_subnets``: ENI id ->
        its subnet, for the subnet-id field) and start the next: the
        cheap half of a write, which takes the interval's aggregates away so that
        :meth:`write_interval` (sorting, formatting, files: about 4 us a record) can run in
        another thread while :meth:`add` fills the next interval."""
        begin, end_of = self._begin, self._begin + self.interval
        if final or wall < end_of:           # a partial interval, up to now
            end = max(begin, math.ceil(wall))
            nxt = end
        else:                                # a whole one; skip intervals the clock jumped
            end = end_of
            nxt = begin + self.interval * int((wall - begin) // self.interval)
        for eni, addrs in eni_addresses.items():
            for a in addrs:
                self._eni_addr[(eni, _family_of(a))] = bare(a)
        lost = events_lost > self._lost_seen
        self._lost_seen = events_lost
        iv = ClosedInterval(begin, end, nxt, SKIPDATA if lost else OK, final, self._flows,
                            self._out_rejects, dict(self._eni_addr), list(eni_addresses),
                            dict(eni_subnets or {}))
        self._flows, self._out_rejects = {}, {}
        self._begin = nxt
        self._c["intervals"] += 1
        if lost:
            self._c["skipdata_intervals"] += 1
        return iv

    def write_interval(self, iv: "ClosedInterval") -> int:
        """Write the records of an interval :meth:`close_interval` ended; how many. Touches
        only ``iv``, the files and the record counters, so it may run in another thread than
        :meth:`add` (one writer at a time, intervals in order)."""
        begin, end, status, flows = iv.begin, iv.end, iv.status, iv.flows
        for (eni, fam, sport, dst, dport, proto, pkt_src), (p, b, _) in \
                iv.out_rejects.items():
            src = iv.eni_addr.get((eni, fam), "-")
            self._count(flows, (eni, src, dst, sport, dport, proto, REJECT, EGRESS, pkt_src,
                                dst if pkt_src else ""), p, b)
        by_eni: Dict[str, List[str]] = {}
        for key in sorted(flows):
            by_eni.setdefault(key[0], []).append(
                self._line(self._values(key, flows[key], begin, end, status, iv.subnets)))
            self._c["accept_records" if key[6] == ACCEPT else "reject_records"] += 1
        if iv.final and end == begin and not flows:
            by_eni = {}                      # nothing happened in a zero-length interval
        else:
            for eni in iv.enis:
                if eni not in by_eni:
                    by_eni[eni] = [self._empty(eni, begin, end, status, iv.subnets)]
        if iv.next_begin > end:              # the lab clock jumped over whole intervals
            for eni in iv.enis:
                by_eni.setdefault(eni, []).append(
                    self._empty(eni, end, iv.next_begin, NODATA, iv.subnets))
        n = sum(len(v) for v in by_eni.values())
        for eni in sorted(by_eni):
            self._append(eni, by_eni[eni])
        self._c["records"] += n
        return n

    # ---- the writer thread --------------------------------------------------------------------
    def write_later(self, iv: "ClosedInterval") -> None:
        """:meth:`write_interval` in the writer thread (started at the first call), intervals
        in the order given: the data path's loop must not stop forwarding for the 0.27 s that
        writing 64,000 records takes (a TAP's queue holds 500 packets)."""
        if self._queue is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._writer, name="hyperplane-flowlogs",
                                            daemon=True)
            self._thread.start()
        self._queue.put(iv)

    def _writer(self) -> None:
        q = self._queue
        while True:
            iv = q.get()
            try:
                if iv is None:
                    return
                self.write_interval(iv)
            except Exception:   # a bug: count it, keep the thread (and the intervals) going
                self._c["write_errors"] += 1
                log.exception("flow logs: an interval was not written")
            finally:
                q.task_done()

    def drain(self) -> None:
        """Wait until every interval given to :meth:`write_later` is written."""
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        """Write what waits and stop the writer thread."""
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None

    def _empty(self, eni: str, begin: int, end: int, status: str,
               subnets: Dict[str, str]) -> str:
        """The record of an ENI that has no traffic to show: NODATA, or SKIPDATA."""
        self._c["nodata_records" if status != SKIPDATA else "skipdata_records"] += 1
        v = self._interface_values(eni, subnets)
        v.update({"start": begin, "end": end, "log-status": NODATA if status == OK else status})
        return self._line(v)

    # ---- record values ------------------------------------------------------------------------
    def _interface_values(self, eni: str, subnets: Dict[str, str]) -> Dict[str, Any]:
        """The fields that describe the interface rather than a flow (None: ``-``)."""
        return {"version": self.version, "account-id": self.account_id, "interface-id": eni,
                "vpc-id": self.vpc_id, "subnet-id": subnets.get(eni), "region": self.region,
                "az-id": self.az_id}

    def _values(self, key: _Key, counts: List[int], begin: int, end: int, status: str,
                subnets: Dict[str, str]) -> Dict[str, Any]:
        """Every field of one flow's record (None: ``-``)."""
        eni, src, dst, sport, dport, proto, action, direction, pkt_src, pkt_dst = key
        v = self._interface_values(eni, subnets)
        v.update({"srcaddr": src, "dstaddr": dst, "srcport": sport, "dstport": dport,
                  "protocol": proto, "packets": counts[0], "bytes": counts[1], "start": begin,
                  "end": end, "action": action, "log-status": status, "tcp-flags": counts[2],
                  "type": "IPv6" if ":" in (dst if src == "-" else src) else "IPv4",
                  "pkt-srcaddr": pkt_src or src, "pkt-dstaddr": pkt_dst or dst,
                  "flow-direction": direction})
        if direction == EGRESS and self.traffic_path is not None:
            v["traffic-path"] = self.traffic_path(eni, subnets.get(eni), dst)
        return v

    def _line(self, values: Dict[str, Any]) -> str:
        """A record as AWS writes it: the format's fields in order, separated by spaces."""
        return " ".join("-" if values.get(n) is None else str(values[n]) for n in self.fields)

    def _append(self, eni: str, records: List[str]) -> None:
        """Append the records to the ENI's file (the header first in a new file), one write
        and one flush: a reader tailing the file sees whole intervals arrive."""
        path = os.path.join(self.directory, file_name(eni))
        text = "".join(r + "\n" for r in records)
        try:
            with open(path, "a", encoding="ascii") as f:
                if f.tell() == 0:
                    text = self.header + "\n" + text
                f.write(text)
            self._files.add(eni)
        except OSError as e:   # a full disk must not stop the data path
            self._c["write_errors"] += 1
            log.warning("flow logs: cannot append to %s: %s", path, e)

    def stats(self) -> Dict[str, Any]:
        """Counters for the daemon's `counters` command."""
        return {"directory": self.directory, "interval": self.interval,
                "account_id": self.account_id, "format": self.header, "interval_start": self._begin,
                "files": len(self._files),
                "pending_flows": len(self._flows) + len(self._out_rejects),
                "intervals_waiting": self._queue.qsize() if self._queue is not None else 0,
                **self._c}
