"""A function's log, shaped like its CloudWatch Logs log group ``/aws/lambda/FUNCTION``.

Each execution environment writes one file, ``<lab dir>/functions/FUNCTION/ENV.log``; every
line is one log event::

    2026-12-06T11:04:34.123Z<TAB>2026/12/06/[$LATEST]3f2a...<TAB>START RequestId: ... Version: $LATEST

(time in UTC, the log stream, the message). A log stream is one runtime process's life, as in
Lambda, where each execution environment instance writes its own stream: a restarted runtime
(after a timeout or a crash) starts a new one. What the runtime prints goes in line by line,
between the platform's lines::

    INIT_START Runtime Version: python:3.11
    START RequestId: 8a1b... Version: $LATEST
    END RequestId: 8a1b...
    REPORT RequestId: 8a1b...  Duration: 2.10 ms  Billed Duration: 3 ms  Memory Size: 128 MB
           Max Memory Used: 21 MB  Init Duration: 61.02 ms

``hyperplane function logs FN [--follow]`` merges the environments' files by time, as ``aws logs
tail /aws/lambda/FN`` merges streams.
"""
from __future__ import annotations

import datetime
import glob
import os
import threading
import time
import uuid
from typing import Dict, Iterator, List, Optional

#: Lambda returns at most the last 4 KB of an invocation's log with ``--log-type Tail``.
TAIL_BYTES = 4096


def iso_now() -> str:
    """The time now in UTC with milliseconds, as CloudWatch shows it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_stream_name() -> str:
    """A log stream name as Lambda makes them: ``YYYY/MM/DD/[$LATEST]`` and 32 hex digits."""
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y/%m/%d")
    return f"{day}/[$LATEST]{uuid.uuid4().hex}"


class EnvLog:
    """The log of one execution environment: appends events to its file and, between
    :meth:`capture_begin` and :meth:`capture_end`, keeps the messages for ``--log-type Tail``."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)   # root only
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.stream = new_stream_name()
        self._capture: Optional[List[str]] = None

    def new_stream(self) -> str:
        with self._lock:
            self.stream = new_stream_name()
            return self.stream

    def write(self, message: str) -> None:
        lines = message.splitlines() or [""]
        with self._lock:
            now = iso_now()
            for line in lines:
                self._f.write(f"{now}\t{self.stream}\t{line}\n")
                if self._capture is not None:
                    self._capture.append(line)
            self._f.flush()

    def capture_begin(self) -> None:
        with self._lock:
            self._capture = []

    def capture_end(self) -> str:
        """What was written since :meth:`capture_begin`, the last TAIL_BYTES of it."""
        with self._lock:
            text = "".join(line + "\n" for line in (self._capture or []))
            self._capture = None
        data = text.encode("utf-8", "replace")[-TAIL_BYTES:]
        return data.decode("utf-8", "ignore")

    def close(self) -> None:
        with self._lock:
            self._f.close()


# ---- reading ------------------------------------------------------------------------------------
def log_files(functions_dir: str, function: str) -> List[str]:
    return sorted(glob.glob(os.path.join(functions_dir, glob.escape(function), "*.log")))


def parse_line(line: str, env: str) -> Optional[Dict[str, str]]:
    parts = line.rstrip("\n").split("\t", 2)
    if len(parts) != 3:
        return None
    return {"timestamp": parts[0], "stream": parts[1], "environment": env, "message": parts[2]}


def _read_new(functions_dir: str, function: str,
              offsets: Dict[str, int]) -> List[Dict[str, str]]:
    """The whole lines written to the function's log files past ``offsets`` (advanced), oldest
    first, merged over its environments (a file not in ``offsets`` is read from its start)."""
    events: List[Dict[str, str]] = []
    for path in log_files(functions_dir, function):
        env = os.path.basename(path)[:-len(".log")]
        try:
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                data = f.read()
        except OSError:
            continue
        end = data.rfind(b"\n") + 1        # a line still being written waits for its end
        offsets[path] = offsets.get(path, 0) + end
        events.extend(e for e in (parse_line(raw, env) for raw in
                                  data[:end].decode("utf-8", "replace").splitlines()) if e)
    events.sort(key=lambda e: e["timestamp"])   # stable: a file's order stays within a time
    return events


def read_events(functions_dir: str, function: str) -> List[Dict[str, str]]:
    """Every log event of ``function`` so far, oldest first (merged over its environments)."""
    return _read_new(functions_dir, function, {})


def follow_events(functions_dir: str, function: str, poll: float = 0.3,
                  stop: Optional[threading.Event] = None,
                  from_start: bool = False) -> Iterator[Dict[str, str]]:
    """Events as they are written, until ``stop`` is set or the caller stops iterating: those
    written after this call (``from_start``: every event, the ones already there first).
    Files that appear later (an environment's first cold start) are followed from their
    start."""
    offsets: Dict[str, int] = {} if from_start else \
        {p: os.path.getsize(p) for p in log_files(functions_dir, function)}
    return _follow(functions_dir, function, poll, stop, offsets)


def _follow(functions_dir: str, function: str, poll: float, stop: Optional[threading.Event],
            offsets: Dict[str, int]) -> Iterator[Dict[str, str]]:
    while stop is None or not stop.is_set():
        yield from _read_new(functions_dir, function, offsets)
        time.sleep(poll)
