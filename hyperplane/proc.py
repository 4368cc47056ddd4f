"""Processes this package starts and stops: a lab's data path, a bench's servers.

The rule everywhere: stop only a process we started, by its pid, and only after checking it is
still what we started (a pid can be reused once its process is gone); never by name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, List, Optional

#: Seconds a data path gets to save its tables and exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0

#: The log levels of ``--log-level`` and of the environment variable below, quietest last.
LOG_LEVELS = ("debug", "info", "warning", "error")
#: The environment variable that sets the command line's log level and, passed on by
#: ``lab up``/``lab restart``, the data path's and the workloads service's.
LOG_LEVEL_ENV = "HYPERPLANE_LOG_LEVEL"
#: The lab processes' log line: time, logger, level, message (hyperplane.lab.logs reads it).
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def log_level(text: Optional[str] = None) -> str:
    """The log level a process runs at: ``text`` (an option's value), else the environment's
    HYPERPLANE_LOG_LEVEL, else "info"; ValueError naming both and the choices when it is not
    one of LOG_LEVELS."""
    value = text if text is not None else os.environ.get(LOG_LEVEL_ENV) or "info"
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {value!r} (--log-level or {LOG_LEVEL_ENV}): choose from "
                         f"{', '.join(LOG_LEVELS)}")
    return level


def configure_logging(level: Optional[str] = None, fmt: str = LOG_FORMAT) -> None:
    """A process's logging: ``fmt`` lines (default LOG_FORMAT, a lab's log file's) on stderr,
    replacing any earlier set-up, with hyperplane's loggers at ``level`` (None:
    :func:`log_level` of the environment; an unknown one falls back to info, said in the log,
    so that a daemon never dies of its log level). Other libraries' loggers (pyroute2's)
    stay at info or quieter even at debug: their debug is a flood of netlink messages."""
    import logging

    try:
        name, problem = log_level(level), None
    except ValueError as e:
        name, problem = "info", str(e)
    number = getattr(logging, name.upper())   # LOG_LEVELS are logging's own names
    logging.basicConfig(stream=sys.stderr, level=max(logging.INFO, number), format=fmt,
                        force=True)
    logging.getLogger("hyperplane").setLevel(number)
    if problem:
        logging.getLogger("hyperplane").warning("%s; logging at info", problem)


def pid_alive(pid: Optional[int]) -> bool:
    """Whether ``pid`` names a running process (a zombie is not running)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_child(proc: subprocess.Popen, timeout: Optional[float] = None) -> None:
    """Stop a process this process started -- a data path, a bench's iperf3 server -- by its
    Popen (SIGTERM, then SIGKILL after ``timeout`` s, default STOP_TIMEOUT) and reap it."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=STOP_TIMEOUT if timeout is None else timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def tail(path: str, n: int = 20) -> str:
    """The last ``n`` lines of a log file, for error messages ("(no log)" when unreadable)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def cmdline(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_lab_process(pid: int, name: str) -> bool:
    """Only a process that is evidently lab ``name``'s data path may be signalled: its command
    line mentions hyperplane and carries the lab name as an argument (``NAME`` or
    ``--opt=NAME``). A recycled pid belonging to something else is never touched."""
    argv = cmdline(pid)
    if not argv:
        return False
    if not any("hyperplane" in a for a in argv):
        return False
    return any(a == name or a.endswith("=" + name) for a in argv)


def _gone(pid: int) -> bool:
    try:  # reap it if it is our child (tests), otherwise it would linger as a zombie
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_lab_process(pid: Any, name: str) -> Optional[int]:
    """Stop lab ``name``'s data path by the pid its state file records: SIGTERM, wait up to
    STOP_TIMEOUT s, then SIGKILL. Returns the pid if it was stopped; None when ``pid`` is not
    (or no longer) that lab's data path."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return None
    if not is_lab_process(pid, name):
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if _gone(pid):
            return pid
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return pid
    for _ in range(100):
        if _gone(pid):
            break
        time.sleep(0.02)
    return pid


# ---- process groups of our own children ------------------------------------------------------------
def exited_unreaped(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it: it stays a zombie, holding its
    pid and so its process group id, which therefore cannot have been reused by an unrelated
    process while we signal the group. True when it is no longer our child at all."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def signal_group(pgid: int, sig: int) -> None:
    """Signal the process group our child ``pgid`` leads (started with start_new_session);
    call it only while that child is unreaped (:func:`exited_unreaped`)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
