"""Drives ``hp-traffic``, the small C traffic generator of ``hyperplane bench``.

The benchmark compares hyperplane's NAT with the kernel's; the generators must not be the
bottleneck, and Python cannot send a million 64-byte datagrams a second. So the per-packet work
is done in C (sendmmsg/recvmmsg, epoll) by ``tools/hp_traffic_*.c`` and their header
``tools/hp_traffic.h``, compiled on first use into the run directory and cached there by a hash
of those files, the compiler and its flags. This module builds it, composes command
lines (optionally inside a network namespace) and runs servers and clients with bounded waits:
every process started here is stopped (by its own pid) before control leaves, and every result
is the tool's one JSON line as a dict.

    with Server(in_netns("b", argv("udp-sink", bind="198.18.200.2", port=9000))) as sink:
        sent = run(in_netns("a", argv("udp-send", dst="198.18.200.2", port=9000,
                                      rate=20000, seconds=1)), timeout=10)
        got = sink.result(timeout=5)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hyperplane import paths

__all__ = ["TrafficError", "tool_path", "argv", "in_netns", "Server", "run", "SOURCES", "CFLAGS"]

#: hp-traffic's C files and its header, sorted by name: each ``.c`` is compiled and every one of
#: them is in the build's hash, so editing any file (the header too) builds a new binary.
_TOOLS = Path(__file__).parent / "tools"
SOURCES = tuple(sorted(_TOOLS.glob("hp_traffic*.[ch]")))
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
READY_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


class TrafficError(RuntimeError):
    """hp-traffic could not be built, did not start, failed, or did not finish in time."""


# ---- building -----------------------------------------------------------------------------------
#: hp-traffic's cache under the run directory. A lab's directory is ``run_dir()/NAME`` and a lab
#: name starts with a letter or digit, so a dot-name can never be a lab's (``tools`` was).
CACHE = ".tools"
#: Binaries of other sources or flags older than this are removed when a new one is built.
PRUNE_AFTER_S = 24 * 3600


def _tidy(cache: str, keep: str) -> None:
    """Remove hp-traffic binaries of other builds that nobody has used for a day, and the cache
    directory of earlier versions (``run_dir()/tools``) when it holds nothing but those, so a
    lab may be named ``tools``. Never fails the build: this is housekeeping."""
    now = time.time()
    try:
        for name in os.listdir(cache):
            path = os.path.join(cache, name)
            if (name.startswith("hp-traffic-") and path != keep
                    and now - os.stat(path).st_mtime > PRUNE_AFTER_S):
                os.unlink(path)
    except OSError:
        pass
    legacy = os.path.join(os.path.dirname(cache), "tools")
    try:
        names = os.listdir(legacy)
        if names and all(n.startswith(("hp-traffic-", ".hp-traffic-")) for n in names):
            shutil.rmtree(legacy)
    except OSError:
        pass


def _digest(cc: str) -> str:
    """The build's cache key: each of SOURCES (its name, length and bytes, in order), then the
    compiler and the flags."""
    h = hashlib.sha256()
    for src in SOURCES:
        data = src.read_bytes()
        h.update(f"{src.name}\0{len(data)}\0".encode() + data)
    h.update(" ".join([cc] + CFLAGS).encode())
    return h.hexdigest()[:12]


def tool_path() -> str:
    """The path of a compiled hp-traffic, building it if these sources and these flags have not
    been built yet. Built into a temporary name and renamed into place, so concurrent callers
    (parallel tests, two benches) never see or run a half-written binary."""
    cc = os.environ.get("CC") or "cc"
    if not any(s.suffix == ".c" for s in SOURCES):
        raise TrafficError(f"hp-traffic's C sources (hp_traffic_*.c) are missing from "
                           f"{_TOOLS}: reinstall hyperplane")
    digest = _digest(cc)
    cache = os.path.join(paths.run_dir(), CACHE)
    path = os.path.join(cache, f"hp-traffic-{digest}")
    if os.access(path, os.X_OK):
        return path
    if shutil.which(cc) is None:
        raise TrafficError("no C compiler (cc) to build hp-traffic for `hyperplane bench`: "
                           "install gcc (apt-get install gcc)")
    os.makedirs(cache, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hp-traffic-", dir=cache)
    os.close(fd)
    try:
        try:
            proc = subprocess.run([cc, *CFLAGS, "-o", tmp,
                                   *(str(s) for s in SOURCES if s.suffix == ".c")],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TrafficError(f"building hp-traffic with {cc}: {e}") from None
        if proc.returncode != 0:
            raise TrafficError(f"building hp-traffic with {cc} failed (exit {proc.returncode}):"
                               f"\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _tidy(cache, path)
    return path


# ---- command lines ------------------------------------------------------------------------------
def argv(sub: str, **opts: Any) -> List[str]:
    """``[tool, sub, "--opt-name", "value", ...]``; underscores in names become dashes and
    options whose value is None are left out (so callers can pass optional settings as is)."""
    out = [tool_path(), sub]
    for name, value in opts.items():
        if value is not None:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out


def in_netns(ns: str, argv: Sequence[str]) -> List[str]:
    """The same command run inside network namespace ``ns`` (as named in /run/netns)."""
    return ["ip", "netns", "exec", ns] + list(argv)


def _parse(out: str, cmd: Sequence[str], err: str) -> Dict[str, Any]:
    """The last line of the tool's stdout, which is its JSON result."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
        if not isinstance(result, dict):
            raise ValueError("not an object")
        return result
    except (IndexError, ValueError):
        raise TrafficError(f"{' '.join(cmd)}: no JSON result on stdout (got {out[-500:]!r}; "
                           f"stderr: {err.strip()[-2000:]})") from None


def _kill(proc: "subprocess.Popen[str]") -> None:
    """SIGKILL our own child by its pid (never by name) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# ---- servers and sinks --------------------------------------------------------------------------
class Server:
    """A tcp-server or udp-sink running in the background, usable as a context manager.

    Starting waits for its READY line (bound and listening), so a client started afterwards
    cannot race it. ``stop()`` ends a server (SIGTERM: it prints its counts and exits 0);
    ``result()`` waits for a sink that ends by itself (time limit or idle). Leaving the ``with``
    block always ends the process."""

    def __init__(self, argv: Sequence[str], ready_timeout: float = READY_TIMEOUT) -> None:
        self.argv = list(argv)
        self._result: Optional[Dict[str, Any]] = None
        self.proc: "subprocess.Popen[str]" = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            _kill(self.proc)
            self._close_pipes()
            raise

    def _wait_ready(self, timeout: float) -> None:
        import selectors

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        seen = b""
        with selectors.DefaultSelector() as sel:  # read bytes, not lines: never block past it
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    _kill(self.proc)
                    raise TrafficError(f"{' '.join(self.argv)}: not READY within {timeout} s "
                                       f"(stderr: {self._stderr()})")
                chunk = os.read(fd, 1)  # one byte at a time: leave the JSON line in the pipe
                if not chunk:
                    self.proc.wait()
                    raise TrafficError(f"{' '.join(self.argv)} exited with status "
                                       f"{self.proc.returncode} before READY: {self._stderr()}")
                seen += chunk
        if seen.strip() != b"READY":
            _kill(self.proc)
            raise TrafficError(f"{' '.join(self.argv)}: expected READY, got {seen!r}")

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().strip()[-2000:]

    def _collect(self, timeout: float) -> Dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            self._close_pipes()
            raise TrafficError(f"{' '.join(self.argv)}: did not finish within {timeout} s "
                               "(killed)") from None
        if self.proc.returncode != 0:
            raise TrafficError(f"{' '.join(self.argv)} failed (exit {self.proc.returncode}): "
                               f"{err.strip()[-2000:]}")
        self._result = _parse(out, self.argv, err)
        return self._result

    def _close_pipes(self) -> None:
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def stop(self, timeout: float = STOP_TIMEOUT) -> Dict[str, Any]:
        """SIGTERM the server (its own pid), wait up to ``timeout`` s (then SIGKILL) and return
        its JSON result. Calling it again returns the same result."""
        if self._result is not None:
            return self._result
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self._collect(timeout)

    def result(self, timeout: float = 60.0) -> Dict[str, Any]:
        """Wait for a sink that ends by itself (``--seconds`` or ``--idle-ms``) and return its
        JSON result; killed and TrafficError after ``timeout`` s."""
        if self._result is not None:
            return self._result
        return self._collect(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._result is None:
                self.stop()
        except TrafficError:
            if exc[0] is None:  # do not hide the exception that got us here
                raise
        finally:
            _kill(self.proc)
            self._close_pipes()


# ---- clients ------------------------------------------------------------------------------------
def run(argv: Sequence[str], timeout: float) -> Dict[str, Any]:
    """Run a client (udp-send, conn-rate, rr) to its end and return its JSON result. Killed
    (by pid) and TrafficError past ``timeout`` s; TrafficError with its stderr when it fails."""
    cmd = list(argv)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise TrafficError(f"{' '.join(cmd)}: did not finish within {timeout} s (killed)") \
            from None
    except BaseException:
        _kill(proc)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise TrafficError(f"{' '.join(cmd)} failed (exit {proc.returncode}): "
                           f"{err.strip()[-2000:]}")
    return _parse(out, cmd, err)
