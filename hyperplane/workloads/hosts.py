"""A host's service: the ``command`` of a ``[[hosts]]`` or ``[[internet_hosts]]`` table,
started in the host's namespace when the lab comes up, restarted when it exits, stopped when
the lab goes down.

Theory of operation. :meth:`HostService.start` spawns ``ip netns exec NETNS ARGV...`` (iproute2
enters the namespace and execs the command, so the pid we get is the command's; no preexec_fn,
which a multi-threaded service must not use) in a session of its own: its process group id is
its pid, and that group is the only thing this module ever signals. :meth:`HostService.poll`,
called every ~0.2 s, sees it exit, kills what is left of its group, logs the status and
restarts it after a backoff that doubles from 1 s up to 30 s and drops back to 1 s once a run
lasted 60 s (a crash loop does not spin; a service that ran a while restarts at once).
:meth:`HostService.stop` sends SIGTERM to the group, waits, then SIGKILL.

The group is signalled only while its leader is unreaped (exited or not): a zombie keeps its
pid, so the group id cannot have been reused by an unrelated process. Exits are therefore
noticed with ``waitid(WNOWAIT)`` and the leader is reaped only after its group was signalled.
"""
from __future__ import annotations

import datetime
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from hyperplane import proc
from hyperplane.errors import HyperplaneError
from hyperplane.labconfig.plan import HostPlan, bare

#: The PATH a service gets (the service's own PATH is not passed on).
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Restart delays in seconds: (first, cap); the delay doubles after each quick exit.
BACKOFF = (1.0, 30.0)
#: A run at least this long (seconds) resets the delay to the first one.
STABLE_AFTER = 60.0


def _now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class HostService:
    """The service of host ``host`` (a HostPlan with a ``command``) of lab ``lab``. Its output
    goes to ``log_path``; ``host_dir`` is the lab's writable folder for the host's data (its
    HOME and, unless the plan names a ``config_dir``, its working directory).

    ``backoff`` = (first, cap) restart delays and ``stable_after`` (a run this long resets the
    delay) are for tests; ``poll``'s ``now`` is ``time.monotonic()``. Safe to call from more
    than one thread."""

    def __init__(self, lab: str, host: HostPlan, log_path: str, host_dir: str, *,
                 backoff: Tuple[float, float] = BACKOFF, stable_after: float = STABLE_AFTER):
        if not host.command:
            raise ValueError(f"host {host.name!r} has no command to run")
        self.lab = lab
        self.host = host
        self.log_path = log_path
        self.host_dir = host_dir
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._stable_after = float(stable_after)
        self._lock = threading.RLock()
        self._proc: Optional[subprocess.Popen] = None
        self._started = 0.0            # time.monotonic() of the last spawn
        self._delay = self._backoff[0]
        self._restart_at: Optional[float] = None
        self._restarts = 0
        self._last_exit: Optional[int] = None
        self._stopped = True

    # ---- what it runs ------------------------------------------------------------------------
    def argv(self) -> List[str]:
        """The command line spawned: the host's command inside its namespace."""
        ip = shutil.which("ip") or shutil.which("ip", path=SERVICE_PATH)
        if ip is None:
            raise HyperplaneError(f"running host {self.host.name!r}'s command needs `ip` "
                                  "(iproute2): apt-get install iproute2")
        return [ip, "netns", "exec", self.host.netns, *self.host.command]

    def environment(self) -> Dict[str, str]:
        """A clean environment: PATH, LANG, HOME, the HYPERPLANE_* facts about the host, then
        the host's own ``environment`` (which may override any of them)."""
        h = self.host
        env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "HOME": self.host_dir,
               "HYPERPLANE_LAB": self.lab, "HYPERPLANE_HOST": h.name,
               "HYPERPLANE_HOST_DIR": self.host_dir, "HYPERPLANE_HOST_IPV4": bare(h.ipv4) or ""}
        if h.ipv6:
            env["HYPERPLANE_HOST_IPV6"] = bare(h.ipv6)
        if h.config_dir:
            env["HYPERPLANE_CONFIG_DIR"] = h.config_dir
        env.update(h.environment or {})
        return env

    # ---- the interface -----------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the command (nothing when it runs already). A spawn that fails (its working
        directory is gone, say) is logged and retried by :meth:`poll` after the backoff."""
        argv = self.argv()
        with self._lock:
            self._stopped = False
            if self._proc is not None:
                return
            self._restart_at = None
            os.makedirs(self.host_dir, mode=0o755, exist_ok=True)
            self._spawn(argv, time.monotonic())

    def poll(self, now: float) -> None:
        """Notice an exit (log it, clean up its group, schedule the restart) and restart when
        the delay is over. ``now``: time.monotonic()."""
        with self._lock:
            if self._stopped:
                return
            p = self._proc
            if p is not None:
                if not proc.exited_unreaped(p.pid):
                    return
                proc.signal_group(p.pid, signal.SIGKILL)   # what it left behind goes with it
                rc = p.wait()
                self._proc = None
                self._last_exit = rc
                if now - self._started >= self._stable_after:
                    self._delay = self._backoff[0]
                what = (f"exited with status {rc}" if rc >= 0 else
                        f"was killed by signal {signal.Signals(-rc).name}")
                self._schedule(now, f"command {what}")
                return
            if self._restart_at is not None and now >= self._restart_at:
                self._restart_at = None
                self._restarts += 1
                self._spawn(self.argv(), now)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the command's process group, up to ``timeout`` s for the command to
        exit, then SIGKILL to whatever is left of the group; reaped. Idempotent."""
        with self._lock:
            self._stopped = True
            self._restart_at = None
            p = self._proc
            if p is None:
                return
            if not proc.exited_unreaped(p.pid):
                proc.signal_group(p.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while not proc.exited_unreaped(p.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
            proc.signal_group(p.pid, signal.SIGKILL)
            self._last_exit = p.wait()
            self._proc = None
            self._log(f"[hyperplane] {_now_iso()} stopped (status {self._last_exit})\n")

    def status(self) -> Dict[str, Any]:
        """host, command (argv), pid (None when not running), running, restarts, last_exit
        (None before the first exit; negative: killed by that signal), log."""
        with self._lock:
            p = self._proc
            running = p is not None and not proc.exited_unreaped(p.pid)
            return {"host": self.host.name, "command": list(self.host.command),
                    "pid": p.pid if running else None, "running": running,
                    "restarts": self._restarts, "last_exit": self._last_exit,
                    "log": self.log_path}

    # ---- inside ------------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        try:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass

    def _schedule(self, now: float, what: str) -> None:
        delay = self._delay
        self._delay = min(self._delay * 2, self._backoff[1])
        self._restart_at = now + delay
        self._log(f"[hyperplane] {what}; restarting in {delay:g} s\n")

    def _spawn(self, argv: List[str], now: float) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        self._started = now
        with open(self.log_path, "ab") as logf:
            logf.write(f"[hyperplane] {_now_iso()} starting: "
                       f"{shlex.join(self.host.command)}\n".encode())
            logf.flush()
            try:
                self._proc = subprocess.Popen(
                    argv, cwd=self.host.config_dir or self.host_dir, env=self.environment(),
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, preexec_fn=None)
            except OSError as e:
                self._proc = None
                logf.write(f"[hyperplane] cannot start it: {e}\n".encode())
                logf.flush()
                self._schedule(now, "start failed")
