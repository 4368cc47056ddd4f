"""A lab's process logs, read and followed: the library under ``hyperplane lab logs``.

A lab's processes log to files in its directory (hyperplane.paths): the data path to
``datapath.log``, the workloads service to ``workloads.log`` (both started by
hyperplane.lab.lifecycle with their stdout and stderr there), and each host service with a
``command`` to ``hosts/HOST.log``. The data path and the workloads service write
proc.LOG_FORMAT lines (``2026-12-06 14:01:02,345 hyperplane.datapath INFO message``), which
:func:`parse_line` splits into fields; anything else (a traceback, a host's own output) is a
line with only a message.

:func:`follow_lines` keeps reading like ``tail -F``: ``lab restart`` appends to the same file,
and a file that is replaced (a new inode) or truncated is read again from its start, so a
follow outlives a restart, and even a ``lab down`` and ``lab up`` of the same name.
"""
from __future__ import annotations

import collections
import os
import re
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

from hyperplane import paths
from hyperplane.errors import EXIT_USAGE, HyperplaneError
from hyperplane.lab import lifecycle

#: The services every lab has; a host's name is a service too (its ``command``'s output).
SERVICES = ("datapath", "workloads")
#: Seconds between two looks at a followed file.
FOLLOW_POLL = 0.2

_LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<logger>\S+) "
                   r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<message>.*)$")


def log_file(name: str, service: str = "datapath") -> str:
    """The path of lab ``name``'s ``service`` log: ``datapath``, ``workloads`` or a host's
    name; HyperplaneError (exit status 3) when there is no such lab, 2 for another service."""
    _, plan = lifecycle.load_lab(name)
    if service == "datapath":
        return paths.log_path(name)
    if service == "workloads":
        return paths.workloads_log_path(name)
    hosts = sorted(h.name for h in list(plan.hosts) + list(plan.internet_hosts))
    if service in hosts:
        return paths.host_log_path(name, service)
    raise HyperplaneError(f"--service {service}: lab {name!r} has no such service; choose "
                          f"from {', '.join(list(SERVICES) + hosts)}", EXIT_USAGE)


def parse_line(line: str) -> Dict[str, Any]:
    """One log line as ``time``, ``logger``, ``level`` and ``message`` (the first three None
    for a line that is not a log record, such as a traceback's)."""
    m = _LINE.match(line)
    if m is None:
        return {"time": None, "logger": None, "level": None, "message": line}
    return m.groupdict()


def read_lines(path: str, lines: Optional[int] = None) -> List[str]:
    """The file's last ``lines`` lines (None: all), without their newlines; [] when it does
    not exist (yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            if lines is None:
                return f.read().splitlines()
            return list(collections.deque((ln.rstrip("\n") for ln in f), maxlen=lines))
    except FileNotFoundError:
        return []


def follow_lines(path: str, lines: Optional[int] = None, poll: float = FOLLOW_POLL,
                 stop: Optional[threading.Event] = None) -> Iterator[str]:
    """The file's last ``lines`` lines (None: all), then each line as it is written, until
    ``stop`` is set or the caller stops iterating (``tail -F``: a replaced or truncated file
    is read again from its start; a missing one is waited for)."""
    f = None
    ino = None
    part = ""
    try:
        try:
            f = open(path, encoding="utf-8", errors="replace")
            ino = os.fstat(f.fileno()).st_ino
            *done, part = f.read().split("\n")
            yield from done if lines is None else done[max(0, len(done) - lines):]
        except FileNotFoundError:
            f = None
        while stop is None or not stop.is_set():
            if f is not None:
                part += f.read()
                *done, part = part.split("\n")
                yield from done
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (f is None or st.st_ino != ino or st.st_size < f.tell()):
                if f is not None:   # replaced or truncated: what the old one still had first
                    part += f.read()
                    *done, part = part.split("\n")
                    yield from done
                    if part:
                        yield part
                    part = ""
                    f.close()
                try:
                    f = open(path, encoding="utf-8", errors="replace")
                    ino = os.fstat(f.fileno()).st_ino
                    continue
                except FileNotFoundError:
                    f = None
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()
