"""hyperplane/workloads/pyruntime.py, the lab's Python runtime for Lambda functions, run as the
service runs it: a subprocess with a clean environment (no PYTHONPATH: the file must need only
the standard library) against a fake Runtime API of the test's own, with handlers written in
tmp_path.

``FakeRuntimeApi`` serves the Lambda Runtime API 2018-06-01 on 127.0.0.1 (an ephemeral port, a
thread): it hands out the invocations a test queues on ``GET /runtime/invocation/next`` and
records every POST. Each wait is bounded; each runtime process is killed (by its Popen) when the
test ends. ``HYPERPLANE_PYRUNTIME_PYTHON=/path/to/python3.8`` runs the runtime with another
interpreter (it must work from 3.8 on).
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional

import pytest

from kit import REPO

PYRUNTIME = os.path.join(REPO, "hyperplane", "workloads", "pyruntime.py")
PYTHON = os.environ.get("HYPERPLANE_PYRUNTIME_PYTHON") or sys.executable
WAIT = 10.0            # seconds any single wait may take
API = "/2018-06-01/runtime"


# ---- a fake Runtime API --------------------------------------------------------------------------
class Post(NamedTuple):
    path: str
    headers: Dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class _QuietServer(ThreadingHTTPServer):
    """A server that says nothing of a connection a killed runtime left behind."""
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeRuntimeApi:
    """The Runtime API as a test needs it: ``invoke()`` queues an invocation (or, with
    ``status``, an answer to ``/next`` such as 500), ``next_post()`` waits for what the runtime
    POSTs. ``post_status`` answers POSTs with another status than 202 (the first matching path
    suffix wins), after reading the body or, with ``refuse_unread``, at once and closing the
    connection (the body recorded is then empty); ``drop_connections`` closes each connection
    after its answer without saying so (HTTP/1.1 keep-alive broken by the server)."""

    def __init__(self) -> None:
        self.nexts: "queue.Queue[dict]" = queue.Queue()
        self.posts: "queue.Queue[Post]" = queue.Queue()
        self.post_status: Dict[str, tuple] = {}
        self.drop_connections = False
        self.refuse_unread = False
        self.next_calls = 0
        self._stop = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes = b"", headers: Optional[dict] = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if api.drop_connections:
                    self.close_connection = True

            def do_GET(self):
                if self.path != API + "/invocation/next":
                    return self._answer(404)
                api.next_calls += 1
                while not api._stop.is_set():
                    try:
                        inv = api.nexts.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    return self._answer(inv["status"], inv["body"], inv["headers"])
                self._answer(500, b'{"errorMessage":"shutting down"}')

            def do_POST(self):
                refusal = next((answer for suffix, answer in api.post_status.items()
                                if self.path.endswith(suffix)), None)
                body = b""
                if refusal is None or not api.refuse_unread:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.posts.put(Post(self.path, dict(self.headers.items()), body))
                if refusal is not None:
                    if api.refuse_unread:
                        self.close_connection = True
                    return self._answer(refusal[0], refusal[1],
                                        {"Content-Type": "application/json"})
                self._answer(202, b'{"status":"OK"}', {"Content-Type": "application/json"})

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def invoke(self, event=None, *, body: Optional[bytes] = None, request_id: Optional[str] = None,
               deadline_ms: Optional[int] = None, headers: Optional[dict] = None,
               status: int = 200) -> str:
        request_id = request_id or str(uuid.uuid4())
        if body is None:
            body = json.dumps(event if event is not None else {}).encode()
        h = {"Lambda-Runtime-Aws-Request-Id": request_id,
             "Lambda-Runtime-Deadline-Ms": str(deadline_ms or int(time.time() * 1000) + 30000),
             "Lambda-Runtime-Invoked-Function-Arn":
                 "arn:aws:lambda:us-east-1:123456789012:function:fn",
             "Lambda-Runtime-Trace-Id": "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1",
             "Content-Type": "application/json"}
        h.update(headers or {})
        self.nexts.put({"status": status, "body": body, "headers": {k: v for k, v in h.items()
                                                                     if v is not None}})
        return request_id

    def next_post(self, timeout: float = WAIT) -> Post:
        try:
            return self.posts.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the runtime posted nothing in %.0f s" % timeout) from None

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeRuntimeApi]:
    fake = FakeRuntimeApi()
    try:
        yield fake
    finally:
        fake.close()


# ---- the runtime process -------------------------------------------------------------------------
class Runtime:
    """A running pyruntime.py: its Popen and the lines of its stdout and stderr, read as they
    come (so a test sees whether print() output arrives while the process still runs)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        self.closed: Dict[str, bool] = {"stdout": False, "stderr": False}
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(name,), daemon=True)
                         for name in ("stdout", "stderr")]
        for t in self._readers:
            t.start()

    def _read(self, name: str) -> None:
        for line in getattr(self.proc, name):
            with self._cond:
                self.lines[name].append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed[name] = True
            self._cond.notify_all()

    def wait_line(self, stream: str, needle: str, timeout: float = WAIT) -> str:
        """The first line of ``stream`` containing ``needle``, waiting for it if need be (not
        past the stream's end)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[stream]:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.closed[stream]:
                    raise AssertionError("no %s line with %r (%s); %s: %r" % (
                        stream, needle, "closed" if self.closed[stream] else "%.0f s" % timeout,
                        stream, self.lines[stream]))
                self._cond.wait(left)

    def text(self, stream: str) -> str:
        for t in self._readers:
            t.join(timeout=WAIT)
        with self._cond:
            return "\n".join(self.lines[stream])

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout=timeout)


def write_code(root: Path, files: Dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@contextlib.contextmanager
def run_runtime(api: FakeRuntimeApi, task_root: Path, handler: Optional[str],
                argv: tuple = (), **env_extra: str) -> Iterator[Runtime]:
    """pyruntime.py under ``PYTHON`` with the service's environment; killed at the end."""
    env = {"AWS_LAMBDA_RUNTIME_API": api.address, "LAMBDA_TASK_ROOT": str(task_root),
           "AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
           "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/fn",
           "AWS_LAMBDA_LOG_STREAM_NAME": "2024/01/01/[$LATEST]abcdef",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    if handler is not None:
        env["_HANDLER"] = handler
    env.update(env_extra)
    proc = subprocess.Popen([PYTHON, PYRUNTIME, *argv], env=env, cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield Runtime(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


COUNTER = """\
import os
COUNT = {"imports": 0, "calls": 0}
COUNT["imports"] += 1

def handler(event, context):
    COUNT["calls"] += 1
    return {"event": event, "count": dict(COUNT), "cwd": os.getcwd()}
"""


# ---- results -------------------------------------------------------------------------------------
def test_a_dict_result_is_the_response_and_globals_persist(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": COUNTER})
    with run_runtime(api, code, "app.handler"):
        first = api.invoke({"n": 1})
        post = api.next_post()
        assert post.path == "%s/invocation/%s/response" % (API, first)
        assert post.headers["Content-Type"] == "application/json"
        assert post.json() == {"event": {"n": 1}, "count": {"imports": 1, "calls": 1},
                               "cwd": str(code)}
        second = api.invoke({"n": 2})
        post = api.next_post()
        assert post.path.endswith("/%s/response" % second)
        assert post.json()["count"] == {"imports": 1, "calls": 2}   # the same module, once imported


def test_a_handler_in_a_package_by_slash_and_argv_wins_over_the_env(api, tmp_path):
    code = write_code(tmp_path / "task", {"pkg/__init__.py": "", "pkg/mod.py": COUNTER})
    with run_runtime(api, code, "no_such.handler", argv=("pkg/mod.handler",)):
        api.invoke({"x": 1})
        assert api.next_post().json()["event"] == {"x": 1}


def test_context_and_trace_id(api, tmp_path):
    code = write_code(tmp_path / "task", {"ctx.py": """\
import os, time
def handler(event, context):
    return {"function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "aws_request_id": context.aws_request_id,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "identity": [context.identity.cognito_identity_id,
                         context.identity.cognito_identity_pool_id],
            "client_context": None if context.client_context is None else
                [context.client_context.custom, context.client_context.client.app_title],
            "remaining": context.get_remaining_time_in_millis(),
            "trace": os.environ.get("_X_AMZN_TRACE_ID")}
"""})
    with run_runtime(api, code, "ctx.handler"):
        deadline = int(time.time() * 1000) + 5000
        rid = api.invoke({}, deadline_ms=deadline)
        ctx = api.next_post().json()
        assert ctx == {"function_name": "fn", "function_version": "$LATEST",
                       "invoked_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:fn",
                       "memory_limit_in_mb": "128",      # a str in Lambda too
                       "aws_request_id": rid, "log_group_name": "/aws/lambda/fn",
                       "log_stream_name": "2024/01/01/[$LATEST]abcdef",
                       "identity": [None, None], "client_context": None,
                       "remaining": ctx["remaining"],
                       "trace": "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1"}
        assert 0 < ctx["remaining"] <= 5000
        # the optional context headers, and a deadline already past: 0, never negative
        api.invoke({}, deadline_ms=int(time.time() * 1000) - 1000, headers={
            "Lambda-Runtime-Client-Context": json.dumps({"custom": {"k": "v"},
                                                         "client": {"app_title": "app"}}),
            "Lambda-Runtime-Cognito-Identity": json.dumps({"cognitoIdentityId": "id",
                                                           "cognitoIdentityPoolId": "pool"}),
            "Lambda-Runtime-Trace-Id": None})
        ctx = api.next_post().json()
        assert ctx["client_context"] == [{"k": "v"}, "app"]
        assert ctx["identity"] == ["id", "pool"]
        assert ctx["remaining"] == 0
        assert ctx["trace"] is None           # an invocation without a trace id clears it


# ---- errors in the handler -----------------------------------------------------------------------
def test_an_exception_is_reported_and_the_loop_goes_on(api, tmp_path):
    code = write_code(tmp_path / "task", {"boom.py": """\
def helper(event):
    if event.get("fail"):
        raise ValueError("bad input: %s" % event["fail"])
    return "fine"

def handler(event, context):
    return helper(event)
"""})
    with run_runtime(api, code, "boom.handler") as rt:
        rid = api.invoke({"fail": "x"})
        post = api.next_post()
        assert post.path == "%s/invocation/%s/error" % (API, rid)
        assert post.headers["Lambda-Runtime-Function-Error-Type"] == "ValueError"
        err = post.json()
        assert err["errorType"] == "ValueError"
        assert err["errorMessage"] == "bad input: x"
        assert err["requestId"] == rid
        # the user's frames only, as traceback.format_list writes them
        assert len(err["stackTrace"]) == 2
        assert err["stackTrace"][0].startswith('  File "%s", line 7, in handler\n'
                                               % (code / "boom.py"))
        assert "return helper(event)" in err["stackTrace"][0]
        assert 'raise ValueError("bad input: %s" % event["fail"])' in err["stackTrace"][1]
        rt.wait_line("stderr", "[ERROR] ValueError: bad input: x")
        rt.wait_line("stderr", "Traceback (most recent call last):")
        rt.wait_line("stderr", 'boom.py", line 3, in helper')
        # the process lives on
        api.invoke({})
        post = api.next_post()
        assert post.path.endswith("/response") and post.json() == "fine"
        assert rt.proc.poll() is None


def test_a_result_that_is_not_json_is_a_marshal_error(api, tmp_path):
    code = write_code(tmp_path / "task", {"m.py": """\
def handler(event, context):
    return {1, 2} if event.get("set") else b"raw bytes"
"""})
    with run_runtime(api, code, "m.handler") as rt:
        api.invoke({"set": True})
        post = api.next_post()
        assert post.path.endswith("/error")
        assert post.headers["Lambda-Runtime-Function-Error-Type"] == "Runtime.MarshalError"
        assert post.json()["errorMessage"] == \
            "Unable to marshal response: Object of type set is not JSON serializable"
        rt.wait_line("stderr", "[ERROR] Runtime.MarshalError: Unable to marshal response")
        api.invoke({})                     # bytes go as they are
        post = api.next_post()
        assert post.path.endswith("/response")
        assert (post.body, post.headers["Content-Type"]) == (b"raw bytes", "application/unknown")


def test_an_empty_body_is_an_unmarshal_error_as_in_awslambdaric(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": COUNTER})
    with run_runtime(api, code, "app.handler"):
        api.invoke(body=b"")
        post = api.next_post()
        assert post.path.endswith("/error")
        assert post.json()["errorType"] == "Runtime.UnmarshalError"
        assert post.json()["errorMessage"] == \
            "Unable to unmarshal input: Expecting value: line 1 column 1 (char 0)"
        api.invoke(body=b"{}")
        post = api.next_post()
        assert post.path.endswith("/response")
        assert post.json()["event"] == {} and post.json()["count"]["calls"] == 1


# ---- errors at init ------------------------------------------------------------------------------
INIT_FAILURES = {
    "missing-module": ({}, "lambda_function.lambda_handler", "Runtime.ImportModuleError",
                       "Unable to import module 'lambda_function': "
                       "No module named 'lambda_function'"),
    "missing-dependency": ({"m.py": "import no_such_dependency\n"}, "m.handler",
                           "Runtime.ImportModuleError",
                           "Unable to import module 'm': No module named 'no_such_dependency'"),
    "syntax-error": ({"m.py": "x = 1\ny = 2\nz = = 3\n"}, "m.handler",
                     "Runtime.UserCodeSyntaxError",
                     "Syntax error in module 'm': invalid syntax (m.py, line 3)"),
    "handler-missing": ({"m.py": "def other(e, c):\n    pass\n"}, "m.fn",
                        "Runtime.HandlerNotFound", "Handler 'fn' missing on module 'm'"),
    "malformed-handler": ({}, "x", "Runtime.MalformedHandlerName",
                          "Bad handler 'x': not enough values to unpack (expected 2, got 1)"),
    "no-handler-at-all": ({}, None, "Runtime.MalformedHandlerName",
                          "Bad handler '': not enough values to unpack (expected 2, got 1)"),
    "built-in-module": ({}, "sys.handler", "Runtime.BuiltInModuleConflict",
                        "Cannot use built-in module sys as a handler module"),
    "exception-at-import": ({"m.py": "CONFIG = {}\nPORT = int(CONFIG.get('port', 'eighty'))\n"},
                            "m.handler", "ValueError",
                            "invalid literal for int() with base 10: 'eighty'"),
}


@pytest.mark.parametrize("files, handler, error_type, message", list(INIT_FAILURES.values()),
                         ids=list(INIT_FAILURES))
def test_an_init_failure_is_reported_and_the_process_exits_1(api, tmp_path, files, handler,
                                                             error_type, message):
    code = write_code(tmp_path / "task", files)
    with run_runtime(api, code, handler) as rt:
        post = api.next_post()
        assert post.path == API + "/init/error"
        assert post.headers["Lambda-Runtime-Function-Error-Type"] == error_type
        err = post.json()
        assert (err["errorType"], err["errorMessage"], err["requestId"]) == \
            (error_type, message, "")
        assert isinstance(err["stackTrace"], list)
        assert rt.wait_exit() == 1
        assert api.next_calls == 0                    # init failed: no invocation asked for
        stderr = rt.text("stderr")
        assert "[ERROR] %s: %s" % (error_type, message) in stderr
        assert "Traceback (most recent call last):" in stderr
        assert "LAMBDA_WARNING: Unhandled exception." in rt.text("stdout")
        if error_type == "ValueError":              # the user's frame, not the import machinery's
            assert len(err["stackTrace"]) == 1
            assert err["stackTrace"][0].startswith('  File "%s", line 2, in <module>'
                                                   % (code / "m.py"))
        if error_type == "Runtime.UserCodeSyntaxError":
            assert err["stackTrace"] == ['  File "%s" Line 3\n    z = = 3\n' % (code / "m.py")]


# ---- the log -------------------------------------------------------------------------------------
def test_print_and_logging_reach_the_log_at_once(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": """\
import logging, time
logging.info("at init")
def handler(event, context):
    print("printed", event["n"])
    logging.info("logged %s", event["n"])
    logging.getLogger("lib").debug("not at INFO")
    return "ok"
"""})
    with run_runtime(api, code, "app.handler") as rt:
        rid = api.invoke({"n": 7})
        api.next_post()
        assert rt.wait_line("stdout", "printed 7") == "printed 7"
        line = rt.wait_line("stdout", "logged 7")
        level, stamp, request_id, message = line.split("\t")
        assert (level, request_id, message) == ("[INFO]", rid, "logged 7")
        assert time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S") and stamp.endswith("Z")
        assert len(stamp) == len("2024-01-01T00:00:00.000Z")
        assert rt.wait_line("stdout", "at init").split("\t")[2] == ""   # no invocation yet
        assert rt.proc.poll() is None                    # all of it while the process runs
        rt.proc.kill()
        assert "not at INFO" not in rt.text("stdout")


def test_the_log_level_comes_from_the_environment(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": """\
import logging
def handler(event, context):
    logging.debug("debug line")
    logging.info("info line")
    logging.warning("warning line")
    return "ok"
"""})
    with run_runtime(api, code, "app.handler", AWS_LAMBDA_LOG_LEVEL="WARN") as rt:
        api.invoke({})
        api.next_post()
        assert rt.wait_line("stdout", "warning line").startswith("[WARNING]\t")
        rt.proc.kill()
        assert "info line" not in rt.text("stdout")
    with run_runtime(api, code, "app.handler", AWS_LAMBDA_LOG_LEVEL="TRACE") as rt:
        api.invoke({})
        api.next_post()
        assert rt.wait_line("stdout", "debug line").startswith("[DEBUG]\t")


# ---- the Runtime API's answers -------------------------------------------------------------------
def test_next_answering_500_ends_the_process(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": COUNTER})
    with run_runtime(api, code, "app.handler") as rt:
        api.invoke(status=500, body=json.dumps({
            "errorMessage": "Non-recoverable state. Runtime should exit promptly.",
            "errorType": "Runtime.ExitError"}).encode())
        assert rt.wait_exit(timeout=3) == 1
        assert api.next_calls == 1                       # asked once: no spinning
        line = rt.wait_line("stderr", "exiting with status 1")
        assert "500" in line and "Non-recoverable state" in line


def test_an_unreachable_api_ends_the_process(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": COUNTER})
    address = api.address
    api.close()                                          # nothing listens there any more
    api.address = address
    with run_runtime(api, code, "app.handler") as rt:
        assert rt.wait_exit(timeout=3) == 1
        assert "cannot be reached" in rt.wait_line("stderr", "exiting with status 1")


def test_no_runtime_api_address_exits_2(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": COUNTER})
    with run_runtime(api, code, "app.handler", AWS_LAMBDA_RUNTIME_API="") as rt:
        assert rt.wait_exit() == 2
        rt.wait_line("stderr", "AWS_LAMBDA_RUNTIME_API is not set")


@pytest.mark.parametrize("refuse_unread", [False, True], ids=["body-read", "body-unread"])
def test_a_refused_response_is_printed_and_the_loop_goes_on(api, tmp_path, refuse_unread):
    code = write_code(tmp_path / "task", {"big.py": """\
def handler(event, context):
    return "x" * event["size"]
"""})
    api.post_status["/big-one/response"] = (413, json.dumps({
        "errorMessage": "Exceeded maximum allowed payload size (6291556 bytes).",
        "errorType": "RequestEntityTooLarge"}).encode())
    api.refuse_unread = refuse_unread       # an API that answers 413 before reading it all
    with run_runtime(api, code, "big.handler") as rt:
        api.invoke({"size": 7 * 1024 * 1024}, request_id="big-one")
        assert len(api.next_post().body) == (0 if refuse_unread else 7 * 1024 * 1024 + 2)
        line = rt.wait_line("stderr", "refused")
        assert "413" in line and "Exceeded maximum allowed payload size" in line
        api.invoke({"size": 3})
        assert api.next_post().json() == "xxx"
        assert rt.proc.poll() is None


def test_a_dropped_connection_is_opened_again(api, tmp_path):
    code = write_code(tmp_path / "task", {"app.py": COUNTER})
    api.drop_connections = True          # every answer closes its keep-alive connection silently
    with run_runtime(api, code, "app.handler") as rt:
        for n in range(3):
            api.invoke({"n": n})
            assert api.next_post().json()["count"]["calls"] == n + 1
        assert rt.proc.poll() is None


# ---- the file itself -----------------------------------------------------------------------------
def test_the_runtime_imports_only_the_standard_library_and_parses_as_python_3_8():
    source = Path(PYRUNTIME).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            imported.add(node.module.split(".")[0])
    if hasattr(sys, "stdlib_module_names"):
        assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert "hyperplane" not in imported
