"""Parsing ``[metrics]``: the Prometheus exporter ``lab up`` starts beside the data path.

    [metrics]
    listen = "127.0.0.1:9469"     # loopback ADDRESS:PORT; port 0 picks a free port

Without the section (or with ``listen = ""``) a lab starts no exporter; ``hyperplane metrics``
still serves one in the foreground. :func:`split_listen` is the one rule for a listen address,
shared with ``hyperplane metrics --listen`` (hyperplane.observe.stats.parse_listen): loopback
only, because the endpoint has no authentication.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Tuple

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.model import DEFAULT_METRICS_LISTEN, MetricsPlan
from hyperplane.labconfig.parse_common import check_keys, expect

METRICS = Table("[metrics]", "The Prometheus exporter lab up starts beside the data path "
                "(hyperplane.observe.exporter); lab down stops it.", (
    Key("listen", "string", f"loopback ADDRESS:PORT it serves /metrics on, like "
        f"{DEFAULT_METRICS_LISTEN} (port 0: a free port, shown by lab status); \"\": none",
        default=""),
))

_LISTEN = re.compile(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)")


def split_listen(text: str) -> Tuple[str, int]:
    """``127.0.0.1:9469``, ``[::1]:9469`` or ``localhost:9469`` -> (address, port). ValueError
    saying what is wrong and what to write instead (without naming the field: the caller
    does) for anything that is not a loopback ADDRESS:PORT."""
    m = _LISTEN.fullmatch(text.strip())
    if not m:
        raise ValueError(f"write ADDRESS:PORT, e.g. {DEFAULT_METRICS_LISTEN} or [::1]:9469")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; use a loopback address such as "
                         "127.0.0.1 or ::1") from None
    if not addr.is_loopback:
        raise ValueError(f"{host} is not a loopback address; the metrics endpoint has no "
                         "authentication, so it only listens on loopback (127.0.0.0/8 or ::1); "
                         "scrape it from this machine or through a tunnel")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return str(addr), port


def parse_metrics(t: Any) -> MetricsPlan:
    """``[metrics]``: ``listen``, the loopback address and port of the lab's exporter."""
    expect(t, dict, "metrics", 'write it as a [metrics] table with listen = "127.0.0.1:9469"')
    check_keys(t, "metrics", METRICS)
    listen = expect(t.get("listen", ""), str, "metrics.listen",
                    f'write a quoted loopback address and port, like "{DEFAULT_METRICS_LISTEN}" '
                    '("127.0.0.1:0" picks a free port; "" or no [metrics]: no exporter)')
    if not listen.strip():
        return MetricsPlan()
    try:
        host, port = split_listen(listen)
    except ValueError as e:
        raise LabConfigError("metrics.listen", f"{listen!r}: {e}") from None
    return MetricsPlan(listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
