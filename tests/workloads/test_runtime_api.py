"""The Lambda Runtime API server (hyperplane.workloads.runtime_api) over real HTTP on loopback,
driven as a runtime drives it: every endpoint, its status codes and its error documents. No
namespace is needed: the server is given a socket, here one on 127.0.0.1 of the test's own
namespace (in a lab it is bound inside the environment's)."""
from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Dict, Optional, Tuple

import pytest

from hyperplane.workloads.runtime_api import (MAX_RESPONSE_BYTES, Invocation, RuntimeApiServer,
                                              RuntimeSession, deadline_ms)

NEXT = "/2018-06-01/runtime/invocation/next"


@pytest.fixture
def api():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = RuntimeApiServer(sock)
    server.session = RuntimeSession()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def call(server, method: str, path: str, body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None, timeout: float = 5.0
         ) -> Tuple[int, Dict[str, str], bytes]:
    c = http.client.HTTPConnection(*server.server_address, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def submit(server, payload=b'{"k": 1}', rid="req-1") -> Invocation:
    inv = Invocation(rid, payload, deadline_ms(3.0), "arn:aws:lambda:us-east-1:1:function:f",
                     "Root=1-0-0")
    server.session.submit(inv)
    return inv


def next_in_thread(server):
    out = {}
    t = threading.Thread(target=lambda: out.update(r=call(server, "GET", NEXT)), daemon=True)
    t.start()
    return t, out


def test_next_blocks_until_an_invocation_and_carries_the_documented_headers(api):
    t, out = next_in_thread(api)
    t.join(0.3)
    assert t.is_alive(), "GET /next must wait while there is no invocation"
    assert api.session.init_done.is_set() and api.session.phase == "idle"
    submit(api)
    t.join(5)
    status, headers, body = out["r"]
    assert status == 200 and json.loads(body) == {"k": 1}
    assert headers["lambda-runtime-aws-request-id"] == "req-1"
    assert int(headers["lambda-runtime-deadline-ms"]) > 0
    assert headers["lambda-runtime-invoked-function-arn"].endswith(":function:f")
    assert headers["lambda-runtime-trace-id"].startswith("Root=")
    assert api.session.phase == "invoke"


def test_response_is_accepted_once_then_forbidden(api):
    inv = submit(api)
    assert call(api, "GET", NEXT)[0] == 200
    status, _, body = call(api, "POST", "/2018-06-01/runtime/invocation/req-1/response",
                           b'"done"')
    assert status == 202 and json.loads(body) == {"status": "OK"}
    assert inv.done.is_set() and inv.outcome == "response" and inv.body == b'"done"'
    status, _, body = call(api, "POST", "/2018-06-01/runtime/invocation/req-1/response", b"1")
    assert status == 403 and json.loads(body)["errorType"] == "InvalidStateTransition"


def test_unknown_request_id_is_400(api):
    submit(api)
    call(api, "GET", NEXT)
    status, _, body = call(api, "POST", "/2018-06-01/runtime/invocation/nope/response", b"1")
    assert status == 400 and json.loads(body)["errorType"] == "InvalidRequestID"
    status, _, body = call(api, "POST", "/2018-06-01/runtime/invocation/nope/error", b"{}")
    assert status == 400


def test_error_takes_the_body_or_builds_one_from_the_header(api):
    inv = submit(api)
    call(api, "GET", NEXT)
    doc = {"errorMessage": "boom", "errorType": "ValueError", "stackTrace": []}
    status, _, _ = call(api, "POST", "/2018-06-01/runtime/invocation/req-1/error",
                        json.dumps(doc).encode(),
                        {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
    assert status == 202
    assert inv.outcome == "error" and inv.error_type == "ValueError"
    assert json.loads(inv.body) == doc
    inv2 = submit(api, rid="req-2")
    call(api, "GET", NEXT)
    call(api, "POST", "/2018-06-01/runtime/invocation/req-2/error", b"not json",
         {"Lambda-Runtime-Function-Error-Type": "Runtime.Crash"})
    assert inv2.error_type == "Runtime.Crash"
    assert json.loads(inv2.body) == {"errorMessage": "not json", "errorType": "Runtime.Crash"}


def test_oversized_response_is_413_and_fails_the_invocation(api):
    inv = submit(api)
    call(api, "GET", NEXT)
    status, _, body = call(api, "POST", "/2018-06-01/runtime/invocation/req-1/response",
                           b"x" * (MAX_RESPONSE_BYTES + 1))
    assert status == 413 and json.loads(body)["errorType"] == "RequestEntityTooLarge"
    assert inv.outcome == "error" and inv.error_type == "Function.ResponseSizeTooLarge"
    assert str(MAX_RESPONSE_BYTES) in json.loads(inv.body)["errorMessage"]
    # exactly the limit is fine
    inv2 = submit(api, rid="req-2")
    call(api, "GET", NEXT)
    assert call(api, "POST", "/2018-06-01/runtime/invocation/req-2/response",
                b"y" * MAX_RESPONSE_BYTES)[0] == 202
    assert len(inv2.body) == MAX_RESPONSE_BYTES


def test_chunked_response_is_read(api):
    inv = submit(api)
    call(api, "GET", NEXT)
    c = http.client.HTTPConnection(*api.server_address, timeout=5)
    c.request("POST", "/2018-06-01/runtime/invocation/req-1/response",
              body=iter([b'{"a":', b' 1}']), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    assert c.getresponse().status == 202
    c.close()
    assert json.loads(inv.body) == {"a": 1}


def test_init_error_only_during_init(api):
    status, _, _ = call(api, "POST", "/2018-06-01/runtime/init/error",
                        b'{"errorMessage": "no module", "errorType": "Runtime.ImportModuleError"}',
                        {"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"})
    assert status == 202
    assert api.session.init_error[0] == "Runtime.ImportModuleError"
    t, out = next_in_thread(api)     # after the first /next, init is over
    t.join(0.2)
    status, _, body = call(api, "POST", "/2018-06-01/runtime/init/error", b"{}")
    assert status == 403 and json.loads(body)["errorType"] == "InvalidStateTransition"
    api.session.close()
    t.join(5)
    assert out["r"][0] == 500, "a closed session tells the waiting runtime to exit"


def test_next_without_answering_fails_the_invocation_in_progress(api):
    inv = submit(api)
    call(api, "GET", NEXT)
    t, _ = next_in_thread(api)
    inv.done.wait(5)
    assert inv.outcome == "error" and inv.error_type == "Runtime.NoResponse"
    api.session.close()
    t.join(5)


def test_unknown_paths_are_404_with_an_error_document(api):
    for method, path in (("GET", "/2018-06-01/runtime/invocation/x/response"),
                         ("POST", "/2018-06-01/runtime/invocation/next"),
                         ("GET", "/")):
        status, _, body = call(api, method, path, b"" if method == "POST" else None)
        assert status == 404 and "errorMessage" in json.loads(body)


def test_a_closed_session_answers_500(api):
    api.session.close()
    status, _, body = call(api, "GET", NEXT)
    assert status == 500 and "exit" in json.loads(body)["errorMessage"]
