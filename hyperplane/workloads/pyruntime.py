"""The lab's Python runtime for Lambda functions: ``python3.N pyruntime.py [HANDLER]``.

Theory of operation
-------------------
A lab's function service serves the Lambda Runtime API, version 2018-06-01 (AWS Lambda
Developer Guide, "Using the Lambda runtime API for custom runtimes", runtimes-api.html), at
``AWS_LAMBDA_RUNTIME_API`` inside an execution environment's network namespace, and starts this
file there for a function whose runtime is ``python3.N``. It then does what AWS's own Python
runtime client, awslambdaric (``bootstrap.py``), does:

1. **Init.** Put ``LAMBDA_TASK_ROOT`` first on ``sys.path``, chdir there, import the handler's
   module and look the function up. A failure is printed in Lambda's words, reported with
   ``POST /runtime/init/error``, and the process exits with status 1.
2. **Loop.** ``GET /runtime/invocation/next`` (no timeout: it blocks until an invocation
   arrives), call ``handler(event, context)``, and ``POST /runtime/invocation/{id}/response``
   with the JSON of the result, or ``.../error`` with the exception. The process lives on, so
   module globals persist from one invocation to the next (a connection opened at init is
   reused), as in Lambda.

This file imports the standard library only, and nothing of hyperplane: the service copies it
to a folder the unprivileged user can read and runs it with Debian's ``/usr/bin/python3.N``,
which does not see the project's packages. It runs on Python 3.8 and later. Where
``awslambdaric`` is installed, the service may run that instead; this file is the one that
needs nothing installed.

The contract with the service
-----------------------------
* argv: ``python3.N pyruntime.py [HANDLER]``; HANDLER, when given, wins over ``_HANDLER``
  (awslambdaric takes it from argv[1]; Lambda's bootstrap passes ``$_HANDLER`` there).
* env: ``AWS_LAMBDA_RUNTIME_API`` (host:port, required), ``_HANDLER`` ("mod.fn",
  "pkg.mod.fn" or "pkg/mod.fn"), ``LAMBDA_TASK_ROOT`` (the code's folder; default: the working
  directory), and for the context ``AWS_LAMBDA_FUNCTION_NAME``,
  ``AWS_LAMBDA_FUNCTION_VERSION``, ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``,
  ``AWS_LAMBDA_LOG_GROUP_NAME``, ``AWS_LAMBDA_LOG_STREAM_NAME``; ``AWS_LAMBDA_LOG_LEVEL``
  (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) sets the root logger's level.
* stdout: the function's print() output and its logging records; stderr: the runtime's error
  reports. Both are line-buffered; the service puts both in the function's log.
* exit status: the process never ends by itself while the Runtime API serves it. It exits
  1 after reporting an init error; 1 when the Runtime API cannot be reached (after one
  reconnection), answers ``/next`` with anything but 200, or answers anything with a 5xx
  ("Non-recoverable state. Runtime should exit promptly."); 2 when ``AWS_LAMBDA_RUNTIME_API``
  is not set. Any other status is the function's own doing (``sys.exit()`` in its code: what
  Lambda reports as ``Runtime.ExitError``).

Differences from awslambdaric, on purpose
-----------------------------------------
* None of: the Extensions and Telemetry APIs, the framed log protocol
  (``_LAMBDA_TELEMETRY_LOG_FD``), the JSON log format (``AWS_LAMBDA_LOG_FORMAT``), response
  streaming, SnapStart's ``/restore`` hooks, multi-concurrency (Managed Instances), the X-Ray
  error-cause header. Logs are plain lines.
* An error report goes to stderr one line per line, indented with spaces; awslambdaric writes
  it to stdout as one record joined by "\\r" with the indentation in U+00A0 (for CloudWatch).
* The root logger's level defaults to INFO, so that ``logging.info()`` shows in a lab's log;
  awslambdaric leaves it at WARNING unless ``AWS_LAMBDA_LOG_LEVEL`` is set. Set
  ``AWS_LAMBDA_LOG_LEVEL=WARN`` for Lambda's default.
* The log lines' ``aws_request_id`` is empty between invocations (awslambdaric keeps the last).
* JSON is the standard library's, not simplejson: a ``Decimal`` result becomes an int or a
  float (simplejson writes its digits exactly).
* An invocation without a Content-Type header is JSON (awslambdaric hands such a body over as
  bytes; Lambda always sends ``application/json``).
* A ``/response`` or ``/error`` the Runtime API refuses with a 4xx (413: over 6 MB) is printed
  and the loop goes on; awslambdaric raises, and the process dies.
* An init exception's stack trace leaves out the import machinery's frames.
"""
import decimal
import http.client
import importlib
import json
import logging
import math
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

# ---- the Runtime API (runtimes-api.html), version 2018-06-01 -------------------------------------
API_VERSION = "2018-06-01"
NEXT_PATH = "/%s/runtime/invocation/next" % API_VERSION
INIT_ERROR_PATH = "/%s/runtime/init/error" % API_VERSION
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
USER_AGENT = "hyperplane-pyruntime/%d.%d.%d" % sys.version_info[:3]


def response_path(request_id: str) -> str:
    """Where the result of invocation ``request_id`` goes (202 Accepted, 400, 403, 413, 500)."""
    return "/%s/runtime/invocation/%s/response" % (API_VERSION, request_id)


def error_path(request_id: str) -> str:
    """Where the error of invocation ``request_id`` goes."""
    return "/%s/runtime/invocation/%s/error" % (API_VERSION, request_id)


# ---- Lambda's error types for what the runtime finds itself (awslambdaric's FaultException) ------
MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"   # no dot in the handler string
BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"  # handler module named like sys, time...
IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"         # the module, or one it imports, is gone
USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"    # the module does not compile
HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"             # the module has no such attribute
UNMARSHAL_ERROR = "Runtime.UnmarshalError"                # the event is not JSON
CONTEXT_UNMARSHAL_ERROR = "Runtime.LambdaContextUnmarshalError"  # a context header is not JSON
MARSHAL_ERROR = "Runtime.MarshalError"                    # the result is not JSON serializable
# Any other exception, at init or in the handler, is reported as itself: errorType is its
# class's name, errorMessage str() of it.

#: What Lambda logs (at WARNING) before an init error's report; awslambdaric's sentence goes on
#: about runtime updates, which a lab does not have.
UNHANDLED_WARNING = ("LAMBDA_WARNING: Unhandled exception. "
                     "The most likely cause is an issue in the function code.")


class Fault(Exception):
    """An error the runtime reports in Lambda's words: its type, message and stack trace."""

    def __init__(self, error_type: str, message: str, trace: Optional[List[str]] = None):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.trace = trace


class RuntimeApiGone(Exception):
    """The Runtime API cannot be reached, or told the runtime to exit: the process exits 1."""


# ---- the error document: {"errorMessage", "errorType", "requestId", "stackTrace"} ----------------
def make_error(message: str, error_type: str, stack_trace: Optional[List[str]],
               request_id: str = "") -> Dict[str, Any]:
    """The body of ``/init/error`` and ``/invocation/{id}/error``."""
    return {"errorMessage": message or "", "errorType": error_type or "",
            "requestId": request_id or "", "stackTrace": stack_trace or []}


def _is_runtime_frame(filename: str) -> bool:
    """A frame of this file or of the import machinery, which the user did not write."""
    return (filename == __file__ or os.path.abspath(filename) == os.path.abspath(__file__)
            or filename.startswith("<frozen importlib") or filename == importlib.__file__)


def error_from_exception(exc: BaseException, request_id: str = "") -> Dict[str, Any]:
    """``exc`` as Lambda reports it: its class name, str(), and the frames from the first one
    of the user's code on, formatted as ``traceback.format_list`` does (no caret lines)."""
    frames = [(f.filename, f.lineno, f.name, f.line)
              for f in traceback.extract_tb(exc.__traceback__)]
    for i, frame in enumerate(frames):
        if not _is_runtime_frame(frame[0]):
            frames = frames[i:]
            break
    return make_error(str(exc), type(exc).__name__, traceback.format_list(frames), request_id)


def format_error(error: Dict[str, Any]) -> str:
    """The lines Lambda logs for an error: ``[ERROR] Type: message``, then the traceback."""
    head = "[ERROR]"
    if error.get("errorType"):
        head += " " + error["errorType"]
    if error.get("errorMessage"):
        head += (":" if error.get("errorType") else "") + " " + error["errorMessage"]
    lines = [head]
    if error.get("stackTrace") is not None:
        lines.append("Traceback (most recent call last):")
        for element in error["stackTrace"]:
            lines.extend(element.splitlines() or [""])
    return "\n".join(lines)


def print_error(text: str) -> None:
    """A runtime's report on stderr, flushed at once."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


# ---- the handler ---------------------------------------------------------------------------------
def load_handler(handler: str) -> Callable:
    """The function ``handler`` names ("mod.fn", "pkg.mod.fn", "pkg/mod.fn"): the module is
    everything before the last dot, "/" read as "."; the function is after it. Raises
    :class:`Fault` in Lambda's words, or whatever the module raises while it is imported."""
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError as e:
        raise Fault(MALFORMED_HANDLER_NAME, "Bad handler '%s': %s" % (handler, e))
    if modname.split(".")[0] in sys.builtin_module_names:
        raise Fault(BUILT_IN_MODULE_CONFLICT,
                    "Cannot use built-in module %s as a handler module" % modname)
    try:
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as e:
        raise Fault(IMPORT_MODULE_ERROR, "Unable to import module '%s': %s" % (modname, e))
    except SyntaxError as e:
        trace = ['  File "%s" Line %s\n    %s' % (e.filename, e.lineno, e.text)]
        raise Fault(USER_CODE_SYNTAX_ERROR, "Syntax error in module '%s': %s" % (modname, e),
                    trace)
    try:
        return getattr(module, fname)
    except AttributeError:
        raise Fault(HANDLER_NOT_FOUND, "Handler '%s' missing on module '%s'" % (fname, modname))


def init(handler: str) -> Callable:
    """Lambda's init phase: the task root first on sys.path and the working directory, then
    the handler."""
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    sys.path.insert(0, task_root)
    os.chdir(task_root)
    return load_handler(handler)


# ---- events and results --------------------------------------------------------------------------
class _Encoder(json.JSONEncoder):
    """Lambda's JSON: a Decimal (boto3's DynamoDB numbers) is a number."""

    def default(self, o: Any) -> Any:
        if isinstance(o, decimal.Decimal):
            if o.is_nan():
                return math.nan
            if o.is_finite() and o == o.to_integral_value():
                return int(o)
            return float(o)
        return super().default(o)


#: Lambda's python3.12 and later runtimes send non-ASCII characters as they are; older ones
#: escape them (awslambdaric's marshaller, by AWS_EXECUTION_ENV).
_ENCODER = _Encoder(ensure_ascii=sys.version_info < (3, 12))


def unmarshal_event(body: bytes, content_type: Optional[str]) -> Any:
    """The event: JSON (also when the Content-Type is missing), or the bytes themselves for
    another content type. An empty JSON body is an error, as in awslambdaric."""
    if content_type and content_type.split(";")[0].strip().lower() != "application/json":
        return body
    try:
        return json.loads(body)
    except Exception as e:
        raise Fault(UNMARSHAL_ERROR, "Unable to unmarshal input: %s" % e)


def marshal_response(result: Any) -> Tuple[bytes, str]:
    """The body and Content-Type of ``/response``: bytes as they are, anything else as JSON."""
    if isinstance(result, bytes):
        return result, "application/unknown"
    try:
        return _ENCODER.encode(result).encode("utf-8"), "application/json"
    except Exception as e:
        raise Fault(MARSHAL_ERROR, "Unable to marshal response: %s" % e)


# ---- the context object (Lambda's attribute names) -----------------------------------------------
class _Record:
    """An object whose slots come from a dict (missing keys are None), with a readable repr."""
    __slots__: Tuple[str, ...] = ()

    def __init__(self, values: Any = None):
        values = values if isinstance(values, dict) else {}
        for name in self.__slots__:
            setattr(self, name, values.get(name))

    def __repr__(self) -> str:
        fields = ",".join("%s=%s" % (n, getattr(self, n)) for n in self.__slots__)
        return "%s([%s])" % (type(self).__name__, fields)


class CognitoIdentity(_Record):
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")


class Client(_Record):
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code",
                 "app_package_name")


class ClientContext(_Record):
    __slots__ = ("custom", "env", "client")


def _json_header(value: Optional[str], what: str) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except Exception as e:
        raise Fault(CONTEXT_UNMARSHAL_ERROR, "Unable to parse %s JSON: %s" % (what, e))


class LambdaContext:
    """The handler's second argument. ``memory_limit_in_mb`` is a str, as Lambda's is (it is
    the environment variable's text)."""

    def __init__(self, request_id: str, deadline_ms: int, invoked_function_arn: Optional[str],
                 client_context: Any = None, cognito_identity: Any = None,
                 tenant_id: Optional[str] = None):
        self.aws_request_id = request_id
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id
        self.client_context = None
        if client_context is not None:
            self.client_context = ClientContext(client_context)
            self.client_context.client = Client(self.client_context.client)
        self.identity = CognitoIdentity()
        if isinstance(cognito_identity, dict):
            self.identity.cognito_identity_id = cognito_identity.get("cognitoIdentityId")
            self.identity.cognito_identity_pool_id = cognito_identity.get("cognitoIdentityPoolId")
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until the invocation's deadline; never negative."""
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def log(self, msg: Any) -> None:
        """Lambda's ``context.log``: the text on stdout, as it is (no newline added)."""
        sys.stdout.write(str(msg))

    def __repr__(self) -> str:
        names = ("aws_request_id", "log_group_name", "log_stream_name", "function_name",
                 "memory_limit_in_mb", "function_version", "invoked_function_arn",
                 "client_context", "identity", "tenant_id")
        return "LambdaContext([%s])" % ",".join("%s=%s" % (n, getattr(self, n)) for n in names)


# ---- logging: Lambda's text format, the request id in each record --------------------------------
LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s"
LOG_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: Lambda's AWS_LAMBDA_LOG_LEVEL names that are not Python's.
_LOG_LEVEL_NAMES = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}

#: The invocation under way ("" between invocations), for the log records.
_request_id = ""


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = _request_id
        return True


class _StdoutHandler(logging.Handler):
    """Writes each record to the sys.stdout of the moment, as awslambdaric's log sink does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def setup_logging(level: str) -> None:
    """A root handler in Lambda's format with UTC times; the root's level from ``level``
    (AWS_LAMBDA_LOG_LEVEL), INFO when it is empty or unknown."""
    logging.Formatter.converter = time.gmtime     # as awslambdaric: every formatter in UTC
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    name = _LOG_LEVEL_NAMES.get(level.upper(), level.upper())
    root.setLevel(name if isinstance(logging.getLevelName(name), int) else logging.INFO)


def line_buffered() -> None:
    """stdout and stderr flushed at each newline, so print() shows in the log at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, OSError, ValueError):
            pass


def flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


# ---- the HTTP client -----------------------------------------------------------------------------
class Reply(NamedTuple):
    status: int
    reason: str
    headers: Any          # http.client.HTTPMessage: get() is case-insensitive
    body: bytes


def _api_message(reply: Reply) -> str:
    """The Runtime API's own words for a refusal (its errorMessage), else the body's text."""
    try:
        doc = json.loads(reply.body)
        if isinstance(doc, dict) and doc.get("errorMessage"):
            return "%s (%s)" % (doc["errorMessage"], doc.get("errorType", ""))
    except ValueError:
        pass
    return reply.body.decode("utf-8", "replace").strip()


class RuntimeApi:
    """One keep-alive connection to the Runtime API at ``address`` (host:port), with no
    timeout (``/next`` blocks until an invocation arrives); a dropped connection is opened
    again once, and a second failure raises :class:`RuntimeApiGone`."""

    def __init__(self, address: str):
        self.address = address
        self._conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None) -> Reply:
        all_headers = {"User-Agent": USER_AGENT}
        all_headers.update(headers or {})
        for attempt in (1, 2):
            if self._conn is None:
                # timeout=None: blocking, whatever socket.setdefaulttimeout() the function set
                self._conn = http.client.HTTPConnection(self.address, timeout=None)
            try:
                return self._exchange(self._conn, method, path, body, all_headers)
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt == 2:
                    raise RuntimeApiGone("the Runtime API at %s cannot be reached (%s %s): %s: %s"
                                         % (self.address, method, path, type(e).__name__, e))
        raise AssertionError("unreachable")

    def _exchange(self, conn: http.client.HTTPConnection, method: str, path: str,
                  body: Optional[bytes], headers: Dict[str, str]) -> Reply:
        try:
            conn.request(method, path, body=body, headers=headers)
        except OSError as send_error:
            # An API that refuses a large body (413) may answer and close before it has read
            # all of it: the answer is then still there to read. If not, the send error stands.
            if conn.sock is None:           # not even connected
                raise
            try:
                resp = conn.getresponse()
                reply = Reply(resp.status, resp.reason, resp.msg, resp.read())
            except (OSError, http.client.HTTPException):
                raise send_error from None
            self.close()
            return reply
        resp = conn.getresponse()
        return Reply(resp.status, resp.reason, resp.msg, resp.read())

    def next_invocation(self) -> Reply:
        """The next invocation; anything but 200 is the end (the runtime must not spin)."""
        reply = self.request("GET", NEXT_PATH)
        if reply.status != 200:
            raise RuntimeApiGone("the Runtime API at %s answered GET %s with %d %s: %s"
                                 % (self.address, NEXT_PATH, reply.status, reply.reason,
                                    _api_message(reply)))
        return reply

    def post(self, path: str, body: bytes, headers: Dict[str, str]) -> bool:
        """POST ``body``; True when accepted (202). A 5xx raises :class:`RuntimeApiGone`
        ("Non-recoverable state"); another refusal (400, 403, 413) is printed."""
        reply = self.request("POST", path, body, headers)
        if reply.status in (200, 202):
            return True
        if reply.status >= 500:
            raise RuntimeApiGone("the Runtime API at %s answered POST %s with %d %s: %s"
                                 % (self.address, path, reply.status, reply.reason,
                                    _api_message(reply)))
        print_error("[ERROR] Runtime API refused POST %s: %d %s: %s"
                    % (path, reply.status, reply.reason, _api_message(reply)))
        return False

    def post_error(self, path: str, error: Dict[str, Any]) -> bool:
        body = json.dumps(error, ensure_ascii=_ENCODER.ensure_ascii).encode("utf-8")
        return self.post(path, body, {ERROR_TYPE_HEADER: error["errorType"],
                                      "Content-Type": "application/json"})


# ---- one invocation ------------------------------------------------------------------------------
def handle_invocation(api: RuntimeApi, handler: Callable, reply: Reply) -> None:
    """Call the handler with the event and context of ``reply`` (the answer to ``/next``) and
    post its result or its error."""
    global _request_id
    headers = reply.headers
    request_id = headers.get("Lambda-Runtime-Aws-Request-Id") or ""
    _request_id = request_id
    trace_id = headers.get("Lambda-Runtime-Trace-Id")
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)
    error = None
    try:
        try:
            context = LambdaContext(
                request_id, int(headers.get("Lambda-Runtime-Deadline-Ms") or 0),
                headers.get("Lambda-Runtime-Invoked-Function-Arn"),
                _json_header(headers.get("Lambda-Runtime-Client-Context"), "Client Context"),
                _json_header(headers.get("Lambda-Runtime-Cognito-Identity"), "Cognito Identity"),
                headers.get("Lambda-Runtime-Aws-Tenant-Id"))
            event = unmarshal_event(reply.body, headers.get("Content-Type"))
            body, content_type = marshal_response(handler(event, context))
        except Fault as f:
            error = make_error(f.message, f.error_type, f.trace, request_id)
        except Exception as e:
            error = error_from_exception(e, request_id)
        finally:
            flush_output()
        if error is None:
            api.post(response_path(request_id), body, {"Content-Type": content_type})
        else:
            print_error(format_error(error))
            api.post_error(error_path(request_id), error)
    finally:
        _request_id = ""


# ---- the process ---------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    """Init, then serve invocations until the Runtime API goes away; the exit status."""
    argv = sys.argv if argv is None else argv
    line_buffered()
    address = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not address:
        print_error("[ERROR] pyruntime: AWS_LAMBDA_RUNTIME_API is not set; exiting with status 2")
        return 2
    handler_name = argv[1] if len(argv) > 1 else os.environ.get("_HANDLER", "")
    setup_logging(os.environ.get("AWS_LAMBDA_LOG_LEVEL", ""))
    api = RuntimeApi(address)
    try:
        handler = init(handler_name)
    except Exception as e:
        error = (make_error(e.message, e.error_type, e.trace) if isinstance(e, Fault)
                 else error_from_exception(e))
        logging.warning(UNHANDLED_WARNING)
        print_error(format_error(error))
        try:
            api.post_error(INIT_ERROR_PATH, error)
        except RuntimeApiGone as gone:
            print_error("[ERROR] pyruntime: %s" % gone)
        print_error("[ERROR] pyruntime: init failed; exiting with status 1")
        return 1
    try:
        while True:
            handle_invocation(api, handler, api.next_invocation())
    except RuntimeApiGone as gone:
        print_error("[ERROR] pyruntime: %s; exiting with status 1" % gone)
        return 1
    finally:
        api.close()


if __name__ == "__main__":
    sys.exit(main())
