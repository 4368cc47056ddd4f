"""One execution environment of a function: its Runtime API, its runtime process, its log.

The life of an environment, as Lambda's documentation tells it (lambda-runtime-environment):

- **Cold**: no runtime runs. The first invocation routed here starts one (a *cold start*):
  the **init** phase runs the runtime and the function's initialisation code (a Python
  handler's module-level code: a database connection opened here lives on) until the runtime
  first asks ``GET /runtime/invocation/next``. Init may take INIT_TIMEOUT (10 s in Lambda).
- **Warm**: the runtime waits in ``/next``. An invocation is handed to it and must be answered
  (``/response`` or ``/error``) within the function's ``timeout``; then it waits again, with
  everything its process holds (globals, open sockets) kept for the next invocation.
- A **timeout** (``Task timed out after 3.00 seconds``), a runtime that exits, or an init error
  ends the runtime: the environment is cold again and the next invocation starts a new one.

The runtime runs as the unprivileged user ``nobody`` (Lambda's sbx_user1051 has no
privileges either) inside the environment's network namespace, in its own process group, with
the environment variables Lambda sets. Its stdout and stderr go to the environment's log.
"""
from __future__ import annotations

import base64
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from hyperplane import netns, proc
from hyperplane.labconfig import EnvPlan, FunctionPlan
from hyperplane.workloads.logs import EnvLog, iso_now
from hyperplane.workloads.runtime_api import (API_HOST, API_PORT, Invocation, RuntimeApiServer,
                                              RuntimeSession, deadline_ms, error_body)
from hyperplane.workloads.runtimes import EntrypointError, runtime_command

#: Seconds the init phase may take before the runtime's first ``/next`` (Lambda: 10 s).
#: ``HYPERPLANE_LAMBDA_INIT_TIMEOUT`` shortens it (tests of a runtime that never asks).
INIT_TIMEOUT = float(os.environ.get("HYPERPLANE_LAMBDA_INIT_TIMEOUT") or 10.0)
#: Bash, which a custom runtime finds at /bin/sh (see _spawn).
BASH = "/bin/bash"
#: Who runs the function's code.
RUNTIME_USER = "nobody"
#: The region the lab pretends to be in.
REGION = "us-east-1"
#: PATH in a Lambda execution environment (with the usual system folders of this machine).
LAMBDA_PATH = "/usr/local/bin:/usr/bin:/bin:/opt/bin:/usr/local/sbin:/usr/sbin:/sbin"


def function_arn(account_id: str, function: str) -> str:
    return f"arn:aws:lambda:{REGION}:{account_id}:function:{function}"


def trace_id() -> str:
    """An X-Ray trace header as Lambda passes it (Root=1-<8 hex time>-<24 hex>)."""
    return (f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
            f"Parent={uuid.uuid4().hex[:16]};Sampled=0")


class ExecutionEnvironment:
    """Environment ``env`` of function ``fn``; ``task_root`` holds its code, ``runtime_dir``
    the Python runtime client, ``log_path`` its log. The service makes sure only one
    invocation at a time is given to :meth:`invoke`."""

    def __init__(self, fn: FunctionPlan, env: EnvPlan, *, task_root: str, runtime_dir: str,
                 log_path: str, account_id: str, cpus: Tuple[int, ...] = ()):
        """``cpus``: the CPUs the runtime runs on (the placement's ``function_cpus``, off the
        data path's loop); empty: wherever the scheduler puts it."""
        self.fn, self.env = fn, env
        self.cpus = tuple(cpus)
        self.task_root, self.runtime_dir = task_root, runtime_dir
        self.account_id = account_id
        self.log = EnvLog(log_path)
        self.server: Optional[RuntimeApiServer] = None
        self.session: Optional[RuntimeSession] = None
        self.proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self.busy = False                   # set and cleared by the service, under its lock
        self.invocations = 0
        self.cold_starts = 0
        self.last_error: Optional[str] = None
        self.note: Optional[str] = None
        #: the code the running runtime was started from (an update deploys a new folder)
        self.running_task_root: Optional[str] = None
        self._memory_at_end = 0     # Max Memory Used of a runtime killed by a timeout

    # ---- what it is now ------------------------------------------------------------------------
    @property
    def warm(self) -> bool:
        return self.proc is not None and not proc.exited_unreaped(self.proc.pid)

    def describe(self) -> Dict[str, Any]:
        return {"environment": self.env.name, "function": self.fn.name,
                "state": "busy" if self.busy else ("warm" if self.warm else "cold"),
                "pid": self.proc.pid if self.warm and self.proc else None,
                "invocations": self.invocations, "cold_starts": self.cold_starts,
                "log_stream": self.log.stream if self.warm else None,
                "last_error": self.last_error, "note": self.note,
                "runtime_api": f"{API_HOST}:{API_PORT}", "cpus": list(self.cpus)}

    # ---- the Runtime API's socket, in the environment's namespace ---------------------------
    def _open_api(self) -> None:
        if self.server is not None:
            return
        with netns.entered(self.env.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((API_HOST, API_PORT))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self.server = RuntimeApiServer(sock)
        self.server.start()

    # ---- the runtime process -----------------------------------------------------------------
    def _lambda_env(self) -> Dict[str, str]:
        fn = self.fn
        env = {
            "PATH": LAMBDA_PATH, "LANG": "en_US.UTF-8", "TZ": ":UTC",
            "_HANDLER": fn.handler,
            "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_LAMBDA_FUNCTION_NAME": fn.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": self.log.stream,
            "AWS_LAMBDA_RUNTIME_API": f"{API_HOST}:{API_PORT}",
            "LAMBDA_TASK_ROOT": self.task_root,
            "LAMBDA_RUNTIME_DIR": self.runtime_dir,
        }
        if fn.runtime.startswith("python"):   # not set for the OS-only (provided) runtimes
            env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{fn.runtime}"
            env["PYTHONUNBUFFERED"] = "1"
        env.update(fn.environment)
        return env

    def _spawn(self, argv: List[str]) -> None:
        user = pwd.getpwnam(RUNTIME_USER)
        # `ip netns exec` (as Lab.exec and the hosts' services enter a node) execs in place,
        # so the pid is the runtime's, in a mount namespace of its own that sees no mount of
        # ours and shows none of its own to us
        cmd = ["ip", "netns", "exec", self.env.netns]
        if self.fn.runtime.startswith("provided") and os.path.exists(BASH):
            # Amazon Linux's /bin/sh is bash, and custom runtimes are written for it (AWS's
            # tutorial's bootstrap is `#!/bin/sh` with `set -euo pipefail` and `source`): in
            # the runtime's mount namespace, /bin/sh is bash too.
            cmd += [BASH, "-c", f'mount --bind {BASH} /bin/sh && exec "$@"', "hp-runtime"]
        cmd += ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                "--clear-groups", "--no-new-privs", "--", *argv]
        self.session = RuntimeSession()
        assert self.server is not None
        self.server.session = self.session
        self.log.new_stream()
        self.running_task_root = self.task_root
        self.proc = subprocess.Popen(cmd, cwd=self.task_root, env=self._lambda_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     close_fds=True)
        if self.cpus:   # `ip netns exec` and setpriv exec in place: this pid is the runtime's
            try:
                os.sched_setaffinity(self.proc.pid, self.cpus)
            except OSError:   # gone already: its exit is reported like any other
                pass
        self._reader = threading.Thread(target=self._pump, args=(self.proc,), daemon=True,
                                        name=f"log-{self.env.name}")
        self._reader.start()

    def _pump(self, p: subprocess.Popen) -> None:
        """The runtime's output, line by line, into the log."""
        assert p.stdout is not None
        for raw in iter(p.stdout.readline, b""):
            self.log.write(raw.decode("utf-8", "replace").rstrip("\n"))
        p.stdout.close()

    def _exit_status(self) -> str:
        """How the runtime ended, as Lambda words it (read without reaping it)."""
        try:
            info = os.waitid(os.P_PID, self.proc.pid,   # type: ignore[union-attr]
                             os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ChildProcessError, AttributeError):
            return "exited"
        if info is None:
            return "running"
        if info.si_code == os.CLD_EXITED:
            return f"exit status {info.si_status}"
        return f"signal: {signal.Signals(info.si_status).name.lower()[3:]}"

    def stop_runtime(self) -> None:
        """Kill the runtime's process group (its pid, which leads it) and forget it."""
        if self.session is not None:
            self.session.close()
        p = self.proc
        if p is not None:
            # the leader is unreaped until here, so its group id is still ours to signal:
            # whatever the runtime started (a bootstrap's curl) goes with it
            proc.signal_group(p.pid, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self.server is not None:
            self.server.session = None
        self.proc, self.session, self._reader = None, None, None

    def _max_memory_mb(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:   # type: ignore[union-attr]
                for line in f:
                    if line.startswith("VmHWM:"):
                        return max(1, -(-int(line.split()[1]) // 1024))
        except (OSError, AttributeError, ValueError):
            pass
        return 0

    # ---- an invocation ---------------------------------------------------------------------------
    def invoke(self, payload: bytes, tail: bool = False) -> Tuple[Dict[str, Any], bytes]:
        """Run one invocation here: (metadata as ``aws lambda invoke`` prints it, response
        payload). A function error is a StatusCode 200 with ``FunctionError``; never raises
        for what the function does."""
        rid = str(uuid.uuid4())
        self.invocations += 1
        self._memory_at_end = 0
        self.log.capture_begin()
        init_ms: Optional[float] = None
        failure: Optional[Tuple[str, bytes]] = None   # (errorType, body) before the handler ran
        if not self.warm:
            self.stop_runtime()   # a runtime that exited while idle: reap it and its group
            failure, init_ms = self._cold_start(rid)
        status_note = ""
        t0 = time.monotonic()
        self.log.write(f"START RequestId: {rid} Version: $LATEST")
        if failure is None:
            outcome, etype, body = self._run(rid, payload)
        else:
            outcome, (etype, body) = "error", failure
        ms = (time.monotonic() - t0) * 1000.0
        mem = self._max_memory_mb() if self.warm else self._memory_at_end
        if etype == "Sandbox.Timedout":
            status_note = "\tStatus: timeout"
        elif outcome == "error" and etype and etype.startswith(("Runtime.", "Function.")):
            status_note = f"\tStatus: error\tError Type: {etype}"
        self.log.write(f"END RequestId: {rid}")
        report = (f"REPORT RequestId: {rid}\tDuration: {ms:.2f} ms\tBilled Duration: "
                  f"{max(1, int(-(-ms // 1)))} ms\tMemory Size: {self.fn.memory_size} MB\t"
                  f"Max Memory Used: {mem} MB")
        if init_ms is not None:
            report += f"\tInit Duration: {init_ms:.2f} ms"
        self.log.write(report + status_note)
        log_tail = self.log.capture_end()
        meta: Dict[str, Any] = {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
        if outcome == "error":
            meta["FunctionError"] = "Unhandled"
            self.last_error = etype
        if tail:
            meta["LogResult"] = base64.b64encode(log_tail.encode()).decode()
        return meta, body

    def _cold_start(self, rid: str) -> Tuple[Optional[Tuple[str, bytes]], float]:
        """Start a runtime and wait for its first ``/next``: (None, init ms) when it is ready,
        else the invocation's error and the init time."""
        self.cold_starts += 1
        t0 = time.monotonic()
        try:
            self._open_api()
            argv, self.note = runtime_command(self.fn.runtime, self.fn.handler, self.task_root,
                                              self.runtime_dir)
        except (EntrypointError, OSError) as e:
            if isinstance(e, EntrypointError):
                etype, why = "Runtime.InvalidEntrypoint", str(e)
            else:
                etype = "Runtime.Unknown"
                why = (f"the Runtime API could not listen on {API_HOST}:{API_PORT} in "
                       f"{self.env.netns}: {e.strerror or e}")
            self.log.new_stream()
            self.log.write(f"INIT_REPORT Init Duration: 0.00 ms\tPhase: init\tStatus: error\t"
                           f"Error Type: {etype}\n{why}")
            return (etype, error_body(etype, f"RequestId: {rid} Error: {why}")), 0.0
        self._spawn(argv)
        # Lambda's words: python:3.11, provided:al2023
        version = self.fn.runtime.replace("python3", "python:3", 1).replace(
            "provided.", "provided:", 1)
        self.log.write(f"INIT_START Runtime Version: {version}")
        if self.note:
            self.log.write(f"[hyperplane] {self.note}")
        session = self.session
        assert session is not None and self.proc is not None
        deadline = t0 + INIT_TIMEOUT
        failure: Optional[Tuple[str, bytes]] = None
        while not session.init_done.wait(0.01):
            if session.init_error is not None:
                end = time.monotonic() + 1.0   # it should exit after reporting; a moment
                while self.warm and time.monotonic() < end:
                    time.sleep(0.01)
                failure = session.init_error
                break
            if not self.warm:
                if self._reader is not None:
                    self._reader.join(timeout=1)
                failure = ("Runtime.ExitError", error_body(
                    "Runtime.ExitError", f"RequestId: {rid} Error: Runtime exited with error: "
                    f"{self._exit_status()}"))
                break
            if time.monotonic() > deadline:
                failure = ("Sandbox.Timedout", error_body(
                    "Sandbox.Timedout", f"RequestId: {rid} Error: Task timed out after "
                    f"{INIT_TIMEOUT:.2f} seconds: the runtime did not ask for an invocation "
                    f"(GET /2018-06-01/runtime/invocation/next) during init"))
                break
        init_ms = (time.monotonic() - t0) * 1000.0
        if failure is not None:
            status = "timeout" if failure[0] == "Sandbox.Timedout" else "error"
            self.log.write(f"INIT_REPORT Init Duration: {init_ms:.2f} ms\tPhase: init\t"
                           f"Status: {status}" + (f"\tError Type: {failure[0]}"
                                                  if status == "error" else ""))
            self.stop_runtime()
        return failure, init_ms

    def _run(self, rid: str, payload: bytes) -> Tuple[str, Optional[str], bytes]:
        """Hand the event to the warm runtime and wait for its answer, its exit or the
        timeout: (outcome "response"/"error", errorType, body)."""
        session, p = self.session, self.proc
        assert session is not None and p is not None
        timeout = float(self.fn.timeout)
        inv = Invocation(rid, payload, deadline_ms(timeout),
                         function_arn(self.account_id, self.fn.name), trace_id())
        deadline = time.monotonic() + timeout
        session.submit(inv)
        while not inv.done.wait(0.01):
            if not self.warm:
                if self._reader is not None:
                    self._reader.join(timeout=1)
                status = self._exit_status()
                self.log.write(f"RequestId: {rid} Error: Runtime exited with error: {status}")
                self.stop_runtime()
                return "error", "Runtime.ExitError", error_body(
                    "Runtime.ExitError", f"RequestId: {rid} Error: Runtime exited with error: "
                    f"{status}")
            if time.monotonic() > deadline:
                self.log.write(f"{iso_now()} {rid} Task timed out after {timeout:.2f} seconds")
                self._memory_at_end = self._max_memory_mb()   # before the kill, for REPORT
                self.stop_runtime()
                return "error", "Sandbox.Timedout", error_body(
                    "Sandbox.Timedout", f"RequestId: {rid} Error: Task timed out after "
                    f"{timeout:.2f} seconds")
        if inv.outcome == "response":
            return "response", None, inv.body
        return "error", inv.error_type, inv.body

    def shutdown(self) -> None:
        self.stop_runtime()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.log.close()
