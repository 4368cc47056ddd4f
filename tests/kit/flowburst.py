"""A burst of new UDP flows and a receiver that counts every one, as processes of their own in
a lab's namespaces (``python3 tests/kit/flowburst.py send|count ...``).

Python in one process cannot send 16,000 datagrams a second from two environments and receive
them too without the senders and the receiver taking turns at the GIL; three processes do.

* ``send SRC DST ENV COUNT RATE DEADLINE``: prints ``READY``, waits for a line on stdin, then
  sends ``COUNT`` datagrams from ``SRC`` to ``DST``, each a new flow, paced to ``RATE`` a
  second (hyperplane.bench.loadgen.udp_flow_burst: a raw socket, any source port without
  binding one, UDP checksum 0). The payload is the flow's identity: ``ENV`` (one byte) and the
  flow's number. Prints ``{"sent", "seconds"}``; past ``DEADLINE`` seconds it fails.
* ``count ADDR PORTS DEADLINE``: receives on ``ADDR`` at the comma-separated ``PORTS`` into a
  256 MiB socket buffer (SO_RCVBUFFORCE: root), prints ``READY``, and counts distinct
  payloads (flows) until stdin says ``done`` and nothing came for a second, or the deadline.
  Prints ``{"flows", "datagrams", "by_source", "rcvbuf_errors"}``: ``by_source`` per source
  address (the ENI the flow left from), ``rcvbuf_errors`` the namespace's UDP RcvbufErrors
  that grew meanwhile (what the receiver itself would have lost).

Only the benchmark range 198.18.0.0/15 is used; both commands stop by themselves.
"""
from __future__ import annotations

import ipaddress
import json
import selectors
import socket
import struct
import sys
import time

PORTS = (9000, 9001)
SO_RCVBUFFORCE = 33
_BENCH = ipaddress.ip_network("198.18.0.0/15")


def _bench(addr: str) -> str:
    if ipaddress.ip_address(addr) not in _BENCH:
        raise SystemExit(f"{addr}: only the benchmark range 198.18.0.0/15")
    return addr


def _udp_rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:]))["RcvbufErrors"])


def send(src: str, dst: str, env: int, count: int, rate: float, deadline: float) -> None:
    # imported here: the receiver's side stays standard library only
    from hyperplane.bench.loadgen import udp_flow_burst

    print("READY", flush=True)
    sys.stdin.readline()
    got = udp_flow_burst(None, src, dst, PORTS, count, rate,
                         payload=lambda i: struct.pack("!BI", env, i), timeout=deadline)
    print(json.dumps(got), flush=True)


def count(addr: str, ports: str, deadline: float) -> None:
    sel = selectors.DefaultSelector()
    socks = []
    for p in ports.split(","):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
        r.bind((_bench(addr), int(p)))
        r.setblocking(False)
        sel.register(r, selectors.EVENT_READ)
        socks.append(r)
    sel.register(sys.stdin, selectors.EVENT_READ)
    errors0 = _udp_rcvbuf_errors()
    print("READY", flush=True)
    stop = time.monotonic() + deadline
    flows, by_source = set(), {}
    datagrams, done, last = 0, False, time.monotonic()
    while time.monotonic() < stop and not (done and time.monotonic() - last > 1.0):
        for key, _ in sel.select(0.05):
            if key.fileobj is sys.stdin:
                done = done or sys.stdin.readline().strip() in ("done", "")
                if done:
                    sel.unregister(sys.stdin)
                continue
            while True:
                try:
                    data, peer = key.fileobj.recvfrom(64)
                except BlockingIOError:
                    break
                datagrams += 1
                flows.add(data)
                by_source[peer[0]] = by_source.get(peer[0], 0) + 1
                last = time.monotonic()
    print(json.dumps({"flows": len(flows), "datagrams": datagrams, "by_source": by_source,
                      "rcvbuf_errors": _udp_rcvbuf_errors() - errors0}), flush=True)
    for r in socks:
        r.close()


def main(argv) -> None:
    if argv[:1] == ["send"] and len(argv) == 7:
        send(argv[1], argv[2], int(argv[3]), int(argv[4]), float(argv[5]), float(argv[6]))
    elif argv[:1] == ["count"] and len(argv) == 4:
        count(argv[1], argv[2], float(argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
