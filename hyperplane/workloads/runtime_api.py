"""The Lambda Runtime API (2018-06-01), served to one execution environment.

A runtime process (a custom runtime's ``bootstrap``, or the Python runtime client) talks to it
over HTTP at ``AWS_LAMBDA_RUNTIME_API`` (127.0.0.1:9001 inside the environment's own network
namespace, so this traffic is local to the environment and never crosses the NAT)::

    GET  /2018-06-01/runtime/invocation/next             -> 200, the event; blocks until one
    POST /2018-06-01/runtime/invocation/{id}/response    -> 202 {"status": "OK"}
    POST /2018-06-01/runtime/invocation/{id}/error       -> 202 {"status": "OK"}
    POST /2018-06-01/runtime/init/error                  -> 202 {"status": "OK"}

with the status codes of AWS's OpenAPI description of the API (runtimes-api.html): 400 for a
request id that is not the current invocation's, 403 for a call the runtime's phase does not
allow (an init error after init, a second answer to one invocation), 413 for a response over
6 MB, 500 when the environment is being shut down ("Runtime should exit promptly"). Errors
are ``{"errorMessage": ..., "errorType": ...}``.

:class:`RuntimeSession` is the state of one runtime process's life (init, then invocations one
at a time); :class:`RuntimeApiServer` serves the HTTP side and hands requests to the session of
the moment. The invoker side (hyperplane.workloads.environment) queues an :class:`Invocation`
and waits for it to finish. No clocks of the lab here: deadlines are wall-clock milliseconds,
as the API's ``Lambda-Runtime-Deadline-Ms`` header is.
"""
from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from typing import Any, Dict, Optional, Tuple

API_VERSION = "2018-06-01"
#: Where the runtime finds the API inside its environment (AWS_LAMBDA_RUNTIME_API).
API_HOST, API_PORT = "127.0.0.1", 9001
#: The most a synchronous invocation's response may carry. AWS documents "6 MB" and its error
#: message names 6291556 bytes, the figure used here.
MAX_RESPONSE_BYTES = 6291556
#: An error body from the runtime is kept up to this size (the rest is cut off).
MAX_ERROR_BYTES = 256 * 1024

_NEXT = f"/{API_VERSION}/runtime/invocation/next"
_INIT_ERROR = f"/{API_VERSION}/runtime/init/error"
_ANSWER = re.compile(rf"^/{API_VERSION}/runtime/invocation/([^/]+)/(response|error)$")


def error_body(error_type: str, message: str) -> bytes:
    """Lambda's error document."""
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


class Invocation:
    """One invocation: what the runtime is handed, and how it ended (``outcome`` "response"
    or "error" with ``body``, set once, then ``done`` is set)."""

    def __init__(self, request_id: str, payload: bytes, deadline_ms: int, arn: str,
                 trace_id: str):
        self.request_id = request_id
        self.payload = payload
        self.deadline_ms = deadline_ms
        self.arn = arn
        self.trace_id = trace_id
        self.outcome: Optional[str] = None
        self.body = b""
        self.error_type: Optional[str] = None
        self.done = threading.Event()

    def finish(self, outcome: str, body: bytes, error_type: Optional[str] = None) -> bool:
        """Record the end once; False when it had ended already."""
        if self.done.is_set():
            return False
        self.outcome, self.body, self.error_type = outcome, body, error_type
        self.done.set()
        return True


class RuntimeSession:
    """The Runtime API's view of one runtime process: ``phase`` is "init" until its first
    ``/next``, then "idle" (waiting for an event) or "invoke" (an event handed out, its answer
    awaited); "closed" once the environment drops it (its pending ``/next`` gets a 500)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.phase = "init"
        self.init_done = threading.Event()       # the first /next arrived
        self.init_error: Optional[Tuple[str, bytes]] = None   # (errorType, body)
        self.pending: Optional[Invocation] = None     # queued, not yet handed out
        self.current: Optional[Invocation] = None     # handed out, answer awaited
        self.answered: Dict[str, str] = {}           # request id -> how it ended (recent ones)

    # ---- the invoker's side --------------------------------------------------------------------
    def submit(self, inv: Invocation) -> None:
        with self.cond:
            self.pending = inv
            self.cond.notify_all()

    def close(self) -> None:
        """The environment is done with this runtime (a timeout, a crash, shutdown)."""
        with self.cond:
            self.phase = "closed"
            self.cond.notify_all()

    # ---- the runtime's side (called from the HTTP handler's threads) ------------------------
    def next_event(self) -> Optional[Invocation]:
        """``GET /next``: the next invocation, waiting as long as it takes; None when closed."""
        with self.cond:
            if self.phase == "closed":
                return None
            if self.phase == "init":
                self.init_done.set()
            if self.current is not None:   # asked for more without answering this one
                self._end(self.current, "error", error_body(
                    "Runtime.NoResponse", f"RequestId: {self.current.request_id} Error: the "
                    "runtime asked for the next invocation without posting a response or an "
                    "error for this one"), "Runtime.NoResponse")
            self.phase = "idle"
            while self.pending is None and self.phase != "closed":
                self.cond.wait()
            if self.phase == "closed":
                return None
            inv, self.pending = self.pending, None
            self.current, self.phase = inv, "invoke"
            return inv

    def answer(self, request_id: str, outcome: str, body: bytes,
               error_type: Optional[str]) -> Tuple[int, bytes]:
        """``POST .../{id}/response`` or ``.../error``: (HTTP status, reply body)."""
        with self.cond:
            if self.phase == "closed":
                return 500, error_body("Runtime.Shutdown", "the execution environment is "
                                       "shutting down; the runtime should exit")
            cur = self.current
            if cur is None or cur.request_id != request_id:
                if request_id in self.answered:
                    return 403, error_body("InvalidStateTransition", f"invocation "
                                           f"{request_id} has ended already "
                                           f"({self.answered[request_id]})")
                return 400, error_body("InvalidRequestID", f"Invalid request ID: "
                                       f"{request_id!r} is not the invocation in progress")
            self._end(cur, outcome, body, error_type)
            return 202, b'{"status":"OK"}'

    def fail_current(self, request_id: str, error_type: str, message: str) -> None:
        """End the invocation in progress with an error of the API's own (an oversized
        response), if it is still ``request_id``."""
        with self.cond:
            if self.current is not None and self.current.request_id == request_id:
                self._end(self.current, "error", error_body(error_type, message), error_type)

    def init_failed(self, error_type: str, body: bytes) -> Tuple[int, bytes]:
        """``POST /runtime/init/error``: only during init."""
        with self.cond:
            if self.phase != "init":
                return 403, error_body("InvalidStateTransition", "init/error is allowed only "
                                       "before the runtime's first GET invocation/next")
            self.init_error = (error_type, body)
            self.cond.notify_all()
            return 202, b'{"status":"OK"}'

    def _end(self, inv: Invocation, outcome: str, body: bytes,
             error_type: Optional[str]) -> None:
        inv.finish(outcome, body, error_type)
        self.answered[inv.request_id] = outcome
        if len(self.answered) > 64:
            self.answered.pop(next(iter(self.answered)))
        if self.current is inv:
            self.current, self.phase = None, "idle"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"          # keep-alive: a runtime keeps one connection
    # headers and body leave in two writes: without TCP_NODELAY the body waits for the
    # client's delayed ACK (40 ms per invocation on Linux)
    disable_nagle_algorithm = True
    server_version = "hyperplane-runtime-api"
    sys_version = ""
    server: "RuntimeApiServer"

    def log_message(self, fmt: str, *args: Any) -> None:   # the function's log is not ours
        pass

    def _reply(self, status: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _body(self, limit: int) -> Tuple[Optional[bytes], int]:
        """The request body (None when it exceeds ``limit``: the excess is read and dropped,
        up to twice the limit, so the connection stays usable) and its size."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts, size = [], 0
            while True:
                line = self.rfile.readline(1024)
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    self.rfile.readline(1024)
                    break
                chunk = self.rfile.read(n)
                self.rfile.readline(16)
                size += n
                if size <= limit:
                    parts.append(chunk)
                elif size > 2 * limit:
                    self.close_connection = True
                    return None, size
            return (b"".join(parts) if size <= limit else None), size
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        if n > limit:
            if n <= 2 * limit:
                self.rfile.read(n)
            else:
                self.close_connection = True
            return None, n
        return self.rfile.read(n) if n > 0 else b"", n

    def do_GET(self) -> None:
        if self.path != _NEXT:
            return self._reply(404, error_body("InvalidRequest", f"no such endpoint: GET "
                                               f"{self.path}; the runtime asks GET {_NEXT}"))
        session = self.server.session
        inv = session.next_event() if session is not None else None
        if inv is None:
            self.close_connection = True
            return self._reply(500, error_body("Runtime.Shutdown", "Non-recoverable state: "
                                               "the execution environment is shutting down. "
                                               "Runtime should exit promptly."))
        self._reply(200, inv.payload, {
            "Lambda-Runtime-Aws-Request-Id": inv.request_id,
            "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": inv.arn,
            "Lambda-Runtime-Trace-Id": inv.trace_id,
        })

    def do_POST(self) -> None:
        session = self.server.session
        err_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        if self.path == _INIT_ERROR:
            body, _ = self._body(MAX_ERROR_BYTES)
            if session is None:
                return self._reply(500, error_body("Runtime.Shutdown", "no runtime is "
                                                   "starting in this environment"))
            status, reply = session.init_failed(*_error_of(err_type, body))
            return self._reply(status, reply)
        m = _ANSWER.match(self.path)
        if m is None:
            self._body(MAX_ERROR_BYTES)
            return self._reply(404, error_body("InvalidRequest", f"no such endpoint: POST "
                                               f"{self.path}"))
        request_id, kind = m.group(1), m.group(2)
        if session is None:
            self._body(MAX_RESPONSE_BYTES)
            return self._reply(500, error_body("Runtime.Shutdown", "no runtime is running "
                                               "in this environment"))
        if kind == "response":
            body, size = self._body(MAX_RESPONSE_BYTES)
            if body is None:
                msg = (f"Response payload size exceeded maximum allowed payload size "
                       f"({MAX_RESPONSE_BYTES} bytes).")
                session.fail_current(request_id, "Function.ResponseSizeTooLarge", msg)
                return self._reply(413, error_body(
                    "RequestEntityTooLarge", f"Exceeded maximum allowed payload size "
                    f"({MAX_RESPONSE_BYTES} bytes): the response has {size} bytes"))
            status, reply = session.answer(request_id, "response", body, None)
        else:
            body, _ = self._body(MAX_ERROR_BYTES)
            etype, ebody = _error_of(err_type, body)
            status, reply = session.answer(request_id, "error", ebody, etype)
        self._reply(status, reply)


def _error_of(header_type: Optional[str], body: Optional[bytes]) -> Tuple[str, bytes]:
    """(errorType, error document) of a runtime's error report: its JSON body when it is one
    (the type from the body, else the header), else a document built from the header (the
    API's documented default)."""
    doc: Any = None
    if body:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
    if isinstance(doc, dict):
        etype = doc.get("errorType") if isinstance(doc.get("errorType"), str) else None
        etype = etype or header_type or "Runtime.Unknown"
        return etype, body or b""
    etype = header_type or "Runtime.Unknown"
    text = (body or b"").decode("utf-8", "replace")[:4096]
    return etype, error_body(etype, text or f"the runtime reported {etype} with no details")


class RuntimeApiServer(http.server.ThreadingHTTPServer):
    """The API on a socket already bound (inside the environment's namespace). ``session`` is
    the runtime of the moment (None between runtimes)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket):
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.session: Optional[RuntimeSession] = None
        self._thread = threading.Thread(target=self.serve_forever, name="runtime-api",
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self.session is not None:
            self.session.close()
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()


def deadline_ms(seconds: float) -> int:
    """``Lambda-Runtime-Deadline-Ms`` for a deadline ``seconds`` from now."""
    return int((time.time() + seconds) * 1000)
