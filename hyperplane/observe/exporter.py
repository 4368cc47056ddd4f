"""``python -m hyperplane.observe.exporter --name LAB --listen ADDR:PORT``: the Prometheus
exporter ``lab up`` starts beside the data path when the lab file has ``[metrics] listen``.

It is ``hyperplane metrics`` as a background process of the lab (hyperplane.lab.lifecycle
starts it, records its pid as ``metrics_pid`` and stops it by that pid): the same registry
(:func:`hyperplane.observe.stats.registry_for`), the same ``counters`` request on every scrape,
the same loopback-only rule. Once it listens it writes the URL it serves to
``metrics.url`` in the lab's directory (the real port when port 0 was asked) and logs it.

It outlives the data path on purpose: while ``lab restart`` replaces the data path, or after
the data path died, scrapes still answer, with ``hyperplane_up 0``, so a dashboard shows the
gap and an alert can fire. It exits on SIGTERM/SIGINT, and by itself when the lab's state
file is gone (the lab was removed without stopping it), so it cannot outlive its lab.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import urllib.request
from typing import Any, Dict, List, Optional

from hyperplane import control, paths
from hyperplane.observe import stats

#: Seconds between checks that the lab still exists.
LAB_CHECK_INTERVAL = 1.0


def counters_fetch(name: str, timeout: float = 5.0):
    """A ``fetch`` for :func:`stats.registry_for`: lab ``name``'s data path's ``counters``
    reply, or an exception (no data path, a refusal) that the collector turns into
    ``hyperplane_up 0``."""
    def fetch() -> Dict[str, Any]:
        r = control.request(paths.control_path(name), "counters", timeout=timeout)
        if not r.get("ok"):
            raise OSError(r.get("error", "refused"))
        return r
    return fetch


def url_of(host: str, port: int) -> str:
    """``http://HOST:PORT/metrics`` (an IPv6 address in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


def write_url(name: str, url: str) -> None:
    """Write ``metrics.url`` whole or not at all (a reader never sees half a URL)."""
    path = paths.metrics_url_path(name)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(url + "\n")
    os.replace(tmp, path)


def read_url(name: str) -> Optional[str]:
    """The URL lab ``name``'s exporter wrote, or None (not written yet, or no exporter)."""
    try:
        with open(paths.metrics_url_path(name), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def scrape(url: str, timeout: float = 5.0) -> str:
    """One scrape of ``url``: the exposition text (OSError when nothing answers). No proxy:
    the exporter listens on this machine's loopback."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return r.read().decode()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hyperplane.observe.exporter",
                                 description="serve a lab's counters to Prometheus (what "
                                             "`lab up` starts for [metrics] listen)")
    ap.add_argument("--name", required=True, help="the lab's name")
    ap.add_argument("--listen", required=True, metavar="ADDR:PORT",
                    help="loopback address and port (port 0 picks a free one)")
    args = ap.parse_args(argv)
    try:
        host, port = stats.parse_listen(args.listen)
    except ValueError as e:
        print(f"metrics exporter of lab {args.name}: {e}", file=sys.stderr)
        return 2
    registry, _ = stats.registry_for(counters_fetch(args.name), args.name)
    try:
        srv = stats.serve(registry, host, port)
    except OSError as e:
        print(f"metrics exporter of lab {args.name}: --listen {args.listen}: cannot listen: "
              f"{e.strerror or e}; choose another port in [metrics] listen (or port 0)",
              file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = url_of(host, srv.server_address[1])
    try:
        write_url(args.name, url)
        print(f"serving Prometheus metrics of lab {args.name} on {url}", flush=True)
        state = paths.state_path(args.name)
        while not stop.wait(LAB_CHECK_INTERVAL):
            if not os.path.exists(state):
                print(f"lab {args.name} is gone ({state} removed): stopping", flush=True)
                break
    finally:
        srv.shutdown()
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
