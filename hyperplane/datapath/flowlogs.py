"""VPC Flow Logs for the lab's ENIs, in AWS's default record format (version 2).

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

Files: ``<directory>/<eni-id>.log``, the header line once per file, then records.
``hyperplane flowlogs`` prints them (the lab keeps them under ``<lab dir>/flowlogs/``).
"""
from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
import time

from hyperplane.labconfig import bare
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

log = logging.getLogger("hyperplane.datapath.flowlogs")

VERSION = 2
#: The default (version 2) format's fields, in order.
FIELDS = ("version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
          "protocol", "packets", "bytes", "start", "end", "action", "log-status")
HEADER = " ".join(FIELDS)
#: Fields that hold numbers (``-`` when a NODATA/SKIPDATA record has none).
NUMERIC = frozenset(("version", "srcport", "dstport", "protocol", "packets", "bytes",
                     "start", "end"))
ACCEPT, REJECT = "ACCEPT", "REJECT"
OK, NODATA, SKIPDATA = "OK", "NODATA", "SKIPDATA"
#: IANA protocol numbers (https://www.iana.org/assignments/protocol-numbers).
IANA_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
INTERVAL_RANGE = (1, 600)
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
_SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]")

# An aggregation key, in record field order:
# (interface-id, srcaddr, dstaddr, srcport, dstport, protocol, action)
_Key = Tuple[str, str, str, int, int, int, str]


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
        vals: List[Any] = []
        for name, text in zip(FIELDS, parts):
            if text == "-":
                vals.append(None)
            elif name in NUMERIC:
                vals.append(int(text))
            else:
                vals.append(text)
        return cls(*vals)


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
    out_rejects: Dict[Tuple[str, int, int, str, int, int], List[int]]
    eni_addr: Dict[Tuple[str, int], str]
    enis: List[str]


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
                 account_id: str = "123456789012", start: Optional[float] = None):
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
        os.makedirs(directory, exist_ok=True)
        self._begin = math.floor(time.time() if start is None else start)
        self._flows: Dict[_Key, List[int]] = {}
        # Outbound rejects: their source address (the ENI's) is looked up at write time.
        # (eni, family, sport, dstaddr, dport, protocol) -> [packets, bytes]
        self._out_rejects: Dict[Tuple[str, int, int, str, int, int], List[int]] = {}
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

    def _count(self, table: Dict, key, packets: int, nbytes: int) -> None:
        c = table.get(key)
        if c is None:
            table[key] = [packets, nbytes]
        else:
            c[0] += packets
            c[1] += nbytes

    def _accept(self, ev) -> None:
        if not ev.delta_packets_orig and not ev.delta_packets_reply:
            return
        if ev.eni is None or ev.reply is None:
            self._c["events_without_eni"] += 1
            return
        proto = IANA_PROTOCOLS.get(ev.proto, 0)
        o, r = ev.orig, ev.reply
        self._eni_addr[(ev.eni, ev.family)] = r.dst   # the reply goes to the ENI's address
        if ev.delta_packets_orig:   # sent by the ENI, after source NAT
            self._count(self._flows, (ev.eni, r.dst, o.dst, r.dport, o.dport, proto, ACCEPT),
                        ev.delta_packets_orig, ev.delta_bytes_orig)
        if ev.delta_packets_reply:  # received by the ENI, before the reverse NAT
            self._count(self._flows, (ev.eni, r.src, r.dst, r.sport, r.dport, proto, ACCEPT),
                        ev.delta_packets_reply, ev.delta_bytes_reply)

    def _reject(self, ev) -> None:
        if ev.eni is None:
            self._c["events_without_eni"] += 1
            return
        proto = IANA_PROTOCOLS.get(ev.proto, 0)
        o = ev.orig
        if ev.packets_reply or ev.reason == "unsolicited":   # arrived from the VPC
            self._count(self._flows, (ev.eni, o.src, o.dst, o.sport, o.dport, proto, REJECT),
                        ev.packets_reply, ev.bytes_reply)
        else:                                                 # refused on its way out
            self._count(self._out_rejects, (ev.eni, ev.family, o.sport, o.dst, o.dport, proto),
                        ev.packets_orig, ev.bytes_orig)

    # ---- intervals ----------------------------------------------------------------------------
    def due(self, wall: float) -> bool:
        """Whether the current aggregation interval has ended at Unix time ``wall``."""
        return wall >= self._begin + self.interval

    def write(self, wall: float, eni_addresses: Dict[str, List[str]], events_lost: int = 0,
              final: bool = False) -> int:
        """Write the current interval's records and start the next interval; returns how many
        records were written (:meth:`close_interval` then :meth:`write_interval`).

        ``eni_addresses``: every live ENI id and its addresses (an ENI without traffic gets a
        NODATA record; outbound rejects take their source address from here).
        ``events_lost``: the engines' running total of events lost to full rings; when it grew
        since the last write, this interval's records are SKIPDATA. ``final``: the data path
        stops, so the interval ends now (at ``wall``), partial."""
        return self.write_interval(self.close_interval(wall, eni_addresses, events_lost, final))

    def close_interval(self, wall: float, eni_addresses: Dict[str, List[str]],
                       events_lost: int = 0, final: bool = False) -> "ClosedInterval":
        """End the current interval (arguments as for :meth:`write`) and start the next: the
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
                            self._out_rejects, dict(self._eni_addr), list(eni_addresses))
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
        for (eni, fam, sport, dst, dport, proto), (p, b) in iv.out_rejects.items():
            src = iv.eni_addr.get((eni, fam), "-")
            self._count(flows, (eni, src, dst, sport, dport, proto, REJECT), p, b)
        by_eni: Dict[str, List[Record]] = {}
        for key in sorted(flows):
            eni, src, dst, sport, dport, proto, action = key
            p, b = flows[key]
            by_eni.setdefault(eni, []).append(Record(
                VERSION, self.account_id, eni, src, dst, sport, dport, proto, p, b, begin, end,
                action, status))
            self._c["accept_records" if action == ACCEPT else "reject_records"] += 1
        if iv.final and end == begin and not flows:
            by_eni = {}                      # nothing happened in a zero-length interval
        else:
            for eni in iv.enis:
                if eni not in by_eni:
                    by_eni[eni] = [self._empty(eni, begin, end, status)]
        if iv.next_begin > end:              # the lab clock jumped over whole intervals
            for eni in iv.enis:
                by_eni.setdefault(eni, []).append(self._empty(eni, end, iv.next_begin, NODATA))
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

    def _empty(self, eni: str, begin: int, end: int, status: str) -> Record:
        """The record of an ENI that has no traffic to show: NODATA, or SKIPDATA."""
        self._c["nodata_records" if status != SKIPDATA else "skipdata_records"] += 1
        return Record(VERSION, self.account_id, eni, None, None, None, None, None, None, None,
                      begin, end, None, NODATA if status == OK else status)

    def _append(self, eni: str, records: List[Record]) -> None:
        """Append the records to the ENI's file (the header first in a new file), one write
        and one flush: a reader tailing the file sees whole intervals arrive."""
        path = os.path.join(self.directory, file_name(eni))
        text = "".join(r.line() + "\n" for r in records)
        try:
            with open(path, "a", encoding="ascii") as f:
                if f.tell() == 0:
                    text = HEADER + "\n" + text
                f.write(text)
            self._files.add(eni)
        except OSError as e:   # a full disk must not stop the data path
            self._c["write_errors"] += 1
            log.warning("flow logs: cannot append to %s: %s", path, e)

    def stats(self) -> Dict[str, Any]:
        """Counters for the daemon's `counters` command."""
        return {"directory": self.directory, "interval": self.interval,
                "account_id": self.account_id, "interval_start": self._begin,
                "files": len(self._files),
                "pending_flows": len(self._flows) + len(self._out_rejects),
                "intervals_waiting": self._queue.qsize() if self._queue is not None else 0,
                **self._c}
