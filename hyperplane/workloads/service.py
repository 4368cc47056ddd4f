"""The workloads service of one lab: Lambda's invoke path and the hosts' services.

One process per lab (``python -m hyperplane.workloads --name LAB``), started by ``lab up``
beside the data path and stopped by ``lab down``. It outlives ``lab restart``, so the
functions' warm environments, and the connections their code holds, survive a restart of the
data path as they would survive a Hyperplane node's replacement.

It holds:

- one :class:`~hyperplane.workloads.environment.ExecutionEnvironment` per environment of
  every function (cold until its first invocation);
- one :class:`~hyperplane.workloads.hosts.HostService` per host with a ``command``;
- a control socket, ``workloads.sock`` in the lab's directory (root only), speaking the data
  path's protocol (hyperplane.control): one JSON request per line, one JSON reply per line.

``invoke`` does what Lambda's frontend does: the request must be JSON of at most 6 MB; the
function must be invocable (the data path's control plane decides: Pending and Inactive
refuse, as in AWS, and an invocation counts as use); then an idle environment is picked, warm
ones first, and the invocation runs there. With every environment busy the call is throttled
(``TooManyRequestsException``), as Lambda does at a function's concurrency limit: the lab's
environments are that limit.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socketserver
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from hyperplane import control, paths
from hyperplane.errors import LabConfigError
from hyperplane.labconfig import Plan
from hyperplane.labconfig.placement import place, veth_links
from hyperplane.workloads.environment import ExecutionEnvironment, function_arn
from hyperplane.workloads.hosts import HostService
from hyperplane.workloads.runtimes import (EntrypointError, code_sha256, install_code,
                                           install_runtime, tree_size)

log = logging.getLogger("hyperplane.workloads")

#: The largest synchronous invocation payload (Lambda's quota: 6 MB).
MAX_REQUEST_BYTES = 6291456
#: One request line on the control socket (a payload of 6 MB, escaped, fits).
REQUEST_LINE_MAX = 4 * MAX_REQUEST_BYTES
#: Seconds between looks at the hosts' services.
POLL_INTERVAL = 0.2
WORKLOADS_COMMANDS = ("ping", "invoke", "update_code", "environments", "hosts", "stop")


class InvokeError(Exception):
    """A refused invocation: Lambda's exception name, its message and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        self.code, self.message, self.status = code, message, status
        #: the sentence to show: the message, after its exception name unless it has one
        self.text = message if not code or message.startswith(code) else f"{code}: {message}"
        super().__init__(self.text)


def load_plan(lab: str) -> Plan:
    with open(paths.state_path(lab), encoding="utf-8") as f:
        return Plan.from_dict(json.load(f)["plan"])


class WorkloadsService:
    def __init__(self, lab: str, plan: Optional[Plan] = None):
        self.lab = lab
        self.plan = plan or load_plan(lab)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        # the folder the functions' user reads its code and runtime from (see runtimes.py)
        prefix = paths.function_code_prefix(lab)
        self.root = tempfile.mkdtemp(prefix=os.path.basename(prefix),
                                     dir=os.path.dirname(prefix))
        os.chmod(self.root, 0o755)
        runtime_dir = os.path.join(self.root, "runtime")
        install_runtime(runtime_dir)
        fdir = paths.functions_dir(lab)
        # the functions' code off the data path's loop: the same decision the data path makes
        # from the same lab file and CPUs (both start from `lab up`); none if it cannot place
        try:
            self.function_cpus = place(self.plan.datapath, os.sched_getaffinity(0),
                                       veth_links(self.plan)).function_cpus
        except LabConfigError:   # the data path refuses to start and says why
            self.function_cpus = ()
        self.envs: Dict[str, List[ExecutionEnvironment]] = {}
        self.code: Dict[str, Dict[str, Any]] = {}     # function -> its deployed code
        for fn in self.plan.functions:
            task = os.path.join(self.root, "task", fn.name, "1")
            self.code[fn.name] = self._deploy(fn.code, task, revision=1)
            self.envs[fn.name] = [
                ExecutionEnvironment(fn, self.plan.env(e), task_root=task,
                                     runtime_dir=runtime_dir,
                                     log_path=os.path.join(fdir, fn.name, f"{e}.log"),
                                     account_id=self.plan.account_id,
                                     cpus=self.function_cpus)
                for e in fn.envs]
        self.hosts = [HostService(lab, h, paths.host_log_path(lab, h.name),
                                  os.path.join(paths.lab_dir(lab), "hosts", h.name))
                      for h in list(self.plan.hosts) + list(self.plan.internet_hosts)
                      if h.command]

    # ---- code ------------------------------------------------------------------------------------
    @staticmethod
    def _deploy(code: Optional[str], task: str, revision: int) -> Dict[str, Any]:
        install_code(code, task)
        return {"task_root": task, "revision": revision,
                "code_sha256": code_sha256(task), "code_size": tree_size(task),
                "last_modified": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())}

    def update_code(self, name: str, code: Optional[str]) -> Dict[str, Any]:
        """UpdateFunctionCode: deploy ``code`` (None: the function's ``code`` folder again,
        re-read) as a new revision. New invocations run it: an environment whose runtime
        still runs the old code is stopped when it is next taken (one busy now finishes its
        invocation on the old code), so that invocation is a cold start on the new code."""
        if name not in self.envs:
            raise InvokeError("ResourceNotFoundException", "Function not found: "
                              f"{function_arn(self.plan.account_id, name)}", 404)
        fn = self.plan.function(name)
        source = code if code is not None else fn.code
        if source is not None and not os.path.isdir(source):
            raise InvokeError("InvalidParameterValueException", f"the code folder {source} "
                              "does not exist or is not a folder", 400)
        with self.lock:
            revision = self.code[name]["revision"] + 1
        task = os.path.join(self.root, "task", name, str(revision))
        try:
            info = self._deploy(source, task, revision)
        except (EntrypointError, OSError) as e:
            shutil.rmtree(task, ignore_errors=True)
            raise InvokeError("InvalidParameterValueException", str(e), 400) from None
        with self.lock:     # _take stops a runtime still on the old code when it comes free
            self.code[name] = info
            for env in self.envs[name]:
                env.task_root = task
        return {"FunctionName": name, "CodeSha256": info["code_sha256"],
                "CodeSize": info["code_size"], "LastModified": info["last_modified"],
                "Revision": revision, "Source": source}

    # ---- invoke ----------------------------------------------------------------------------------
    def invoke(self, name: str, payload: Optional[str], log_type: str = "None"
               ) -> Dict[str, Any]:
        if log_type not in ("None", "Tail"):
            raise InvokeError("InvalidParameterValueException", f"LogType {log_type!r} is "
                              "not one of None, Tail")
        if name not in self.envs:
            raise InvokeError("ResourceNotFoundException", "Function not found: "
                              f"{function_arn(self.plan.account_id, name)}", 404)
        data = (payload or "{}").encode("utf-8")         # no payload: an empty event
        if len(data) > MAX_REQUEST_BYTES:
            raise InvokeError("RequestEntityTooLargeException", f"Request must be smaller "
                              f"than {MAX_REQUEST_BYTES} bytes for the InvokeFunction "
                              f"operation (the payload has {len(data)})", 413)
        try:
            json.loads(data)
        except ValueError as e:
            raise InvokeError("InvalidRequestContentException", f"Could not parse request "
                              f"body into json: {e}") from None
        self._check_invocable(name)
        env = self._take(name)
        try:
            meta, body = env.invoke(data, tail=log_type == "Tail")
        finally:
            with self.lock:
                env.busy = False
        return {"metadata": meta, "payload_b64": base64.b64encode(body).decode()}

    def _check_invocable(self, name: str) -> None:
        """The data path's control plane: Pending/Inactive refuse; an invocation is use."""
        try:
            r = control.request(paths.control_path(self.lab), "invoke", name=name)
        except (OSError, ValueError) as e:
            raise InvokeError("ServiceException", f"the data path of lab {self.lab!r} does not "
                              f"answer ({e}); see {paths.log_path(self.lab)}", 500) from None
        if not r.get("ok"):
            raise InvokeError(str(r.get("code") or ""), str(r.get("error", "refused")), 409)

    def _take(self, name: str) -> ExecutionEnvironment:
        with self.lock:
            idle = [e for e in self.envs[name] if not e.busy]
            if not idle:
                raise InvokeError("TooManyRequestsException", "Rate Exceeded. (Reason: "
                                  f"ConcurrentInvocationLimitExceeded: all "
                                  f"{len(self.envs[name])} execution environment(s) of "
                                  f"{name} are busy)", 429)
            current = self.code[name]["task_root"]
            for e in idle:      # a runtime still running code an update replaced
                if e.warm and e.running_task_root != current:
                    e.stop_runtime()
            env = next((e for e in idle if e.warm), idle[0])
            env.busy = True
            return env

    # ---- what it says ----------------------------------------------------------------------------
    def environments(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [e.describe() for envs in self.envs.values() for e in envs]

    def host_status(self) -> List[Dict[str, Any]]:
        return [h.status() for h in self.hosts]

    def handle(self, req: Dict[str, Any]) -> Dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid()}
        if cmd == "invoke":
            name, payload = req.get("name"), req.get("payload")
            if not isinstance(name, str) or not (payload is None or isinstance(payload, str)):
                return {"ok": False, "error": "invoke takes \"name\" (a function name) and "
                        "\"payload\" (JSON text or null)", "code": "usage"}
            try:
                return {"ok": True, **self.invoke(name, payload,
                                                  str(req.get("log_type") or "None"))}
            except InvokeError as e:
                return {"ok": False, "error": e.text, "exception": e.code, "status": e.status}
        if cmd == "update_code":
            name, code = req.get("name"), req.get("code")
            if not isinstance(name, str) or not (code is None or isinstance(code, str)):
                return {"ok": False, "error": "update_code takes \"name\" (a function name) "
                        "and \"code\" (an absolute folder path, or null for the configured "
                        "one)", "code": "usage"}
            try:
                return {"ok": True, "function": self.update_code(name, code)}
            except InvokeError as e:
                return {"ok": False, "error": e.text, "exception": e.code, "status": e.status}
        if cmd == "environments":
            return {"ok": True, "environments": self.environments()}
        if cmd == "hosts":
            return {"ok": True, "hosts": self.host_status()}
        if cmd == "stop":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}; known: "
                f"{', '.join(WORKLOADS_COMMANDS)}", "code": "usage"}

    # ---- running ---------------------------------------------------------------------------------
    def run(self, socket_path: str) -> int:
        for h in self.hosts:
            h.start()
        server = _ControlServer(socket_path, self)
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True, name="workloads-control")
        t.start()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        log.info("workloads of lab %s: %d function(s), %d host service(s), pid %d",
                 self.lab, len(self.envs), len(self.hosts), os.getpid())
        try:
            while not self.stopping.wait(POLL_INTERVAL):
                now = time.monotonic()
                for h in self.hosts:
                    h.poll(now)
        finally:
            server.shutdown()
            server.server_close()
            self.shutdown()
            try:
                os.unlink(socket_path)
            except OSError:
                pass
        return 0

    def shutdown(self) -> None:
        for h in self.hosts:
            h.stop()
        for envs in self.envs.values():
            for e in envs:
                e.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)


class _Connection(socketserver.StreamRequestHandler):
    server: "_ControlServer"

    def handle(self) -> None:
        line = self.rfile.readline(REQUEST_LINE_MAX + 1)
        if not line:
            return
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object such as {\"cmd\": \"ping\"}")
            reply = self.server.service.handle(req)
            log.debug("workloads request %s: %s", req.get("cmd"),
                      "ok" if reply.get("ok") else reply.get("error"))
        except ValueError as e:
            reply = {"ok": False, "error": f"bad request: {e}", "code": "usage"}
        except Exception as e:   # keep serving; say what broke
            log.exception("workloads request failed")
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, service: WorkloadsService):
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o077)          # root only, as the data path's control socket
        try:
            super().__init__(path, _Connection)
        finally:
            os.umask(old)
        self.service = service
