"""Control-plane hygiene: the control socket is root-only, and a malformed control request gets
an error and never stops or stalls the data path (a failed ``lab up`` rolling back exactly what
it built is lab/test_rollback.py's).

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN (root); skipped otherwise, and FAILS when the compiled engine
is missing. One module-scoped default lab (the root conftest's ``dlab``) answers every test.
The run directory is a world-traversable (0755) temporary directory, so that when an
unprivileged process cannot reach the socket it is the socket's own protection that stops it,
not a private parent directory. Only 198.18.0.0/15 and 2001:2::/48 are used.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from typing import Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperplane import control, paths
from kit import traffic as nt
from kit.labs import LabView, assert_alive, udp_through_nat

NOBODY = 65534
REPLY_TIMEOUT = 10.0


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def run_dir() -> Iterator[str]:
    """A run dir others may traverse but not write (0755), removed at the end: this module's
    own, in place of the root conftest's (whose parents only root may enter)."""
    d = tempfile.mkdtemp(prefix="hp-hygiene-")
    os.chmod(d, 0o755)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HYPERPLANE_RUN_DIR", d)
            yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def udp_echo(dlab) -> Iterator[nt.UdpEchoServer]:
    with nt.UdpEchoServer(dlab.server.netns, dlab.s4) as srv:
        yield srv


def sock_path(lab: LabView) -> str:
    return paths.control_path(lab.name)


def exchange(path: str, data: bytes, shut_wr: bool = True,
             timeout: float = REPLY_TIMEOUT) -> Optional[dict]:
    """Send raw ``data`` to the control socket and read one reply line: the parsed reply, or
    None when the daemon closed without a word."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            if data:
                s.sendall(data)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the daemon answered and closed before taking it all (busy, too long)
        return read_reply(s)


def read_reply(s: socket.socket) -> Optional[dict]:
    buf = b""
    with contextlib.suppress(ConnectionResetError):   # closed with our excess bytes unread
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf:
        return None
    assert buf.endswith(b"\n") and buf.count(b"\n") == 1, f"not one reply line: {buf[:200]!r}"
    reply = json.loads(buf)
    assert isinstance(reply, dict), f"reply is not an object: {reply!r}"
    return reply


def assert_refused(reply: Optional[dict], *words: str) -> None:
    assert reply is not None, "no reply at all"
    assert reply.get("ok") is False, f"expected a refusal, got {reply}"
    err = reply.get("error")
    assert isinstance(err, str) and err, f"a refusal needs an error text: {reply}"
    for w in words:
        assert w in err, f"{w!r} not in the error {err!r}"


# ---- 1. the control socket is root-only ---------------------------------------------------------
def test_socket_and_directories_are_root_only(dlab, run_dir):
    st_sock = os.lstat(sock_path(dlab))
    assert stat.S_ISSOCK(st_sock.st_mode)
    assert st_sock.st_uid == 0
    assert stat.S_IMODE(st_sock.st_mode) == 0o600, oct(st_sock.st_mode)
    for d in (os.path.dirname(sock_path(dlab)), run_dir):
        st_dir = os.stat(d)
        assert st_dir.st_uid == 0, d
        assert not st_dir.st_mode & 0o022, f"{d} is writable by others: {oct(st_dir.st_mode)}"
    st_state = os.stat(paths.state_path(dlab.name))
    assert st_state.st_uid == 0 and not st_state.st_mode & 0o022


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _client(path: str, request: bytes) -> dict:
    """What an unprivileged client gets: can it see the socket, connect, and what reply."""
    out: dict = {"uid": os.getuid(), "euid": os.geteuid()}
    try:
        os.stat(path)
        out["stat"] = "ok"
    except OSError as e:
        out["stat"] = type(e).__name__
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REPLY_TIMEOUT)
        try:
            s.connect(path)
            out["connect"] = "ok"
        except OSError as e:
            out["connect"] = type(e).__name__
            return out
        data = b""
        try:
            s.sendall(request)
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            out["io_error"] = type(e).__name__
        out["reply"] = data.decode(errors="replace")
    return out


def as_nobody(path: str, request: bytes = b'{"cmd": "ping"}\n') -> dict:
    """Run :func:`_client` in a forked child that dropped to uid/gid 65534 (a fork rather than
    a new interpreter: this Python may live where nobody cannot execute it)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        try:
            os.close(r)
            try:
                _drop_to_nobody()
                out = _client(path, request)
            except BaseException as e:
                out = {"crash": repr(e)}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    assert "crash" not in out, out
    assert (out["uid"], out["euid"]) == (NOBODY, NOBODY), out
    return out


def test_non_root_cannot_connect(dlab):
    out = as_nobody(sock_path(dlab))
    assert out["stat"] == "ok", "the socket's path must be reachable, so the mode is the barrier"
    assert out["connect"] == "PermissionError", out
    assert_alive(dlab)


def test_peercred_refuses_non_root_even_when_the_mode_is_loosened(dlab):
    path = sock_path(dlab)
    os.chmod(path, 0o666)
    try:
        out = as_nobody(path, b'{"cmd": "stop"}\n')
        assert out["connect"] == "ok", "with mode 0666 the connect itself succeeds"
        reply = json.loads(out["reply"]) if out["reply"].strip() else None
        assert reply is None or (reply["ok"] is False and "root-only" in reply["error"]), out
        pong = as_nobody(path)
        assert '"ok": true' not in pong.get("reply", ""), pong
    finally:
        os.chmod(path, 0o600)
    assert_alive(dlab)   # the stop request of uid 65534 was not obeyed


# ---- 2. malformed requests -----------------------------------------------------------------------
def _j(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


BAD = [
    # (id, raw request, words the error must contain)
    ("not-json", b"not json\n", ["not JSON"]),
    ("half-object", b'{"cmd": "ping"\n', ["not JSON"]),
    ("nul", b"\x00\n", ["not JSON"]),
    ("nan-literal", b"NaN\n", ["JSON object"]),
    ("array", b"[1, 2]\n", ["JSON object", "array"]),
    ("number", b"42\n", ["JSON object"]),
    ("string", b'"ping"\n', ["JSON object"]),
    ("null", b"null\n", ["JSON object"]),
    ("no-cmd", _j({}), ['"cmd"']),
    ("cmd-null", _j({"cmd": None}), ['"cmd"']),
    ("cmd-number", _j({"cmd": 5}), ['"cmd" must be a string']),
    ("cmd-list", _j({"cmd": ["ping"]}), ['"cmd" must be a string']),
    ("cmd-object", _j({"cmd": {"ping": 1}}), ['"cmd" must be a string']),
    ("cmd-unknown", _j({"cmd": "nope"}), ["unknown command 'nope'"]),
    ("cmd-case", _j({"cmd": "PING"}), ["unknown command"]),
    ("invalid-utf8", b"\xff\xfe\n", ["not UTF-8"]),
    ("invalid-utf8-in-string", b'{"cmd": "\xc3\x28"}\n', ["not UTF-8"]),
    ("deep-nesting", b"[" * 50000 + b"\n", ["not JSON"]),
    ("huge-integer", b'{"cmd": "clock", "advance": ' + b"9" * 5000 + b"}\n", ["not JSON"]),
    ("too-long", b"x" * 70000 + b"\n", ["longer than 65536"]),
    ("too-long-json", _j({"cmd": "ping", "pad": "a" * 70000}), ["longer than 65536"]),
    ("empty", b"", ["empty request"]),
    ("blank-line", b"\n", ["not JSON"]),
    # every argument of every command, with a wrong type or value
    ("ping-extra", _j({"cmd": "ping", "verbose": True}), ["unknown argument", "verbose"]),
    ("counters-extra", _j({"cmd": "counters", "eni": "x"}), ["unknown argument"]),
    ("neighbours-extra", _j({"cmd": "neighbours", "x": 1}), ["unknown argument"]),
    ("enis-extra", _j({"cmd": "enis", "json": True}), ["unknown argument"]),
    ("functions-extra", _j({"cmd": "functions", "name": "fn-a"}), ["unknown argument"]),
    ("stop-extra", _j({"cmd": "stop", "now": True}), ["unknown argument"]),
    ("conntrack-filter-list", _j({"cmd": "conntrack", "filter": [1]}), ["filter"]),
    ("conntrack-filter-string", _j({"cmd": "conntrack", "filter": "tcp"}), ["filter"]),
    ("conntrack-filter-number", _j({"cmd": "conntrack", "filter": 4}), ["filter"]),
    ("conntrack-filter-field", _j({"cmd": "conntrack", "filter": {"bogus": 1}}), ["bogus"]),
    ("conntrack-family", _j({"cmd": "conntrack", "filter": {"family": [4]}}), ["family"]),
    ("conntrack-sport", _j({"cmd": "conntrack", "filter": {"sport": "x"}}), ["sport"]),
    ("conntrack-sport-range", _j({"cmd": "conntrack", "filter": {"sport": 70000}}), ["sport"]),
    ("conntrack-state", _j({"cmd": "conntrack", "filter": {"state": {}}}), ["state"]),
    ("conntrack-addr", _j({"cmd": "conntrack", "filter": {"orig_src": {}}}), ["orig_src"]),
    ("conntrack-typo", _j({"cmd": "conntrack", "filters": {}}), ["unknown argument"]),
    ("flush-filter-list", _j({"cmd": "conntrack_flush", "filter": ["tcp"]}), ["filter"]),
    ("flush-filter-field", _j({"cmd": "conntrack_flush", "filter": {"x": 1}}), ["x"]),
    ("events-filter-list", _j({"cmd": "events", "filter": [1]}), ["filter"]),
    ("events-kinds-string", _j({"cmd": "events", "kinds": "new"}), ["kinds"]),
    ("events-kinds-unknown", _j({"cmd": "events", "kinds": ["bogus"]}), ["kinds"]),
    ("events-kinds-nested", _j({"cmd": "events", "kinds": [["new"]]}), ["kinds"]),
    ("events-kinds-empty", _j({"cmd": "events", "kinds": []}), ["kinds"]),
    ("events-kinds-object", _j({"cmd": "events", "kinds": {"new": 1}}), ["kinds"]),
    ("events-extra", _j({"cmd": "events", "follow": True}), ["unknown argument"]),
    ("update-no-name", _j({"cmd": "function_update", "subnet_ids": []}), ["'name'"]),
    ("update-name-number", _j({"cmd": "function_update", "name": 5}), ["'name'"]),
    ("update-name-empty", _j({"cmd": "function_update", "name": ""}), ["'name'"]),
    ("update-subnets-string", _j({"cmd": "function_update", "name": "fn-a",
                                  "subnet_ids": "subnet-a"}), ["subnet_ids"]),
    ("update-subnets-numbers", _j({"cmd": "function_update", "name": "fn-a",
                                   "subnet_ids": [1]}), ["subnet_ids"]),
    ("update-sgs-object", _j({"cmd": "function_update", "name": "fn-a",
                              "security_group_ids": {"sg": 1}}), ["security_group_ids"]),
    ("update-ipv6-string", _j({"cmd": "function_update", "name": "fn-a", "ipv6": "yes"}),
     ["ipv6"]),
    ("update-ipv6-number", _j({"cmd": "function_update", "name": "fn-a", "ipv6": 1}), ["ipv6"]),
    ("update-typo", _j({"cmd": "function_update", "name": "fn-a", "subnet_id": ["x"]}),
     ["unknown argument", "subnet_id"]),
    ("update-unknown-function", _j({"cmd": "function_update", "name": "fn-zzz",
                                    "ipv6": True}), ["fn-zzz"]),
    ("invoke-no-name", _j({"cmd": "invoke"}), ["'name'"]),
    ("invoke-name-list", _j({"cmd": "invoke", "name": ["fn-a"]}), ["'name'"]),
    ("invoke-unknown", _j({"cmd": "invoke", "name": "fn-zzz"}), ["fn-zzz"]),
    ("clock-string", _j({"cmd": "clock", "advance": "5"}), ["advance"]),
    ("clock-negative", _j({"cmd": "clock", "advance": -1}), ["advance"]),
    ("clock-nan", b'{"cmd": "clock", "advance": NaN}\n', ["advance"]),
    ("clock-infinity", b'{"cmd": "clock", "advance": Infinity}\n', ["advance"]),
    ("clock-overflow", b'{"cmd": "clock", "advance": 1e400}\n', ["advance"]),
    ("clock-huge", _j({"cmd": "clock", "advance": 10 ** 30}), ["advance"]),
    ("clock-bool", _j({"cmd": "clock", "advance": True}), ["advance"]),
    ("clock-null", _j({"cmd": "clock", "advance": None}), ["advance"]),
    ("clock-list", _j({"cmd": "clock", "advance": [1]}), ["advance"]),
]


@pytest.mark.parametrize("data,words", [(d, w) for _, d, w in BAD], ids=[i for i, _, _ in BAD])
def test_malformed_request_gets_an_error(dlab, data, words):
    before = control.request(sock_path(dlab), "clock")["offset"]
    assert_refused(exchange(sock_path(dlab), data), *words)
    assert_alive(dlab)
    assert control.request(sock_path(dlab), "clock")["offset"] == before, "the clock moved"


def test_valid_requests_still_answered(dlab):
    path = sock_path(dlab)
    assert exchange(path, _j({"cmd": "ping"}))["pid"] == dlab.pid
    # no trailing newline: the request ends where the client stops writing
    assert exchange(path, b'{"cmd": "ping"}')["ok"] is True
    # only the first line of a connection is a request: the stop after it is not obeyed
    assert exchange(path, b'{"cmd": "ping"}\n{"cmd": "stop"}\n')["ok"] is True
    assert exchange(path, _j({"cmd": "conntrack", "filter": {}}))["ok"] is True
    assert exchange(path, _j({"cmd": "clock", "advance": 0}))["ok"] is True
    assert_alive(dlab)


def test_refused_flush_deletes_nothing(dlab, udp_echo):
    udp_through_nat(dlab, udp_echo, b"flush")
    n = len(dlab.ask("conntrack")["entries"])
    assert n >= 1
    assert_refused(exchange(sock_path(dlab), _j({"cmd": "conntrack_flush", "filter": [1]})))
    assert len(dlab.ask("conntrack")["entries"]) >= n


def test_a_refused_events_request_is_closed_and_a_valid_one_streams(dlab, udp_echo):
    path = sock_path(dlab)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REPLY_TIMEOUT)
        s.connect(path)
        s.sendall(_j({"cmd": "events", "kinds": ["bogus"]}))
        assert_refused(read_reply(s), "kinds")
        assert s.recv(1) == b"", "a refused events request must be closed"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REPLY_TIMEOUT)
        s.connect(path)
        s.sendall(_j({"cmd": "events", "kinds": ["new"], "filter": {"proto": "udp"}}))
        f = s.makefile("rb")
        assert json.loads(f.readline()) == {"ok": True}
        udp_through_nat(dlab, udp_echo, b"events")
        ev = json.loads(f.readline())
        assert ev["kind"] == "new" and ev["proto"] == "udp", ev
    assert_alive(dlab)


# JSON values, and requests built from the real command and argument names
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)
ARGS = sorted({a for args in control.CONTROL_ARGS.values() for a in args} | {"x"})
SAFE_CMDS = [c for c in control.CONTROL_ARGS if c not in ("stop", "clock")]


def _harmless_clock(v) -> bool:
    """A valid advance moves the lab clock (a big one retires the lab's ENIs): keep it small."""
    return not (isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and v > 1)


REQUESTS = st.one_of(
    JSON,
    st.fixed_dictionaries({"cmd": st.sampled_from(SAFE_CMDS) | st.text(max_size=10) | JSON},
                          optional={a: JSON for a in ARGS}),
    st.fixed_dictionaries({"cmd": st.just("clock"),
                           "advance": JSON.filter(_harmless_clock)}),
    st.fixed_dictionaries({"cmd": st.just("stop"), "x": JSON}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=REQUESTS)
def test_property_every_request_gets_one_json_reply(dlab, req):
    line = json.dumps(req, allow_nan=True).encode() + b"\n"
    reply = exchange(sock_path(dlab), line)
    assert reply is not None and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert isinstance(reply.get("error"), str) and reply["error"], reply
    assert "internal error" not in reply.get("error", ""), reply


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300).filter(lambda b: b"\n" not in b))
def test_property_raw_bytes_get_one_json_reply(dlab, data):
    reply = exchange(sock_path(dlab), data + b"\n")
    assert reply is not None and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert reply.get("error"), reply


def test_daemon_survived_the_property_tests(dlab, udp_echo):
    assert_alive(dlab)
    udp_through_nat(dlab, udp_echo, b"after-fuzz")


def test_silent_clients_do_not_stall_the_data_path(dlab, udp_echo):
    path = sock_path(dlab)
    silent = []
    try:
        for _ in range(20):   # connected, saying nothing
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(REPLY_TIMEOUT)
            s.connect(path)
            silent.append(s)
        udp_through_nat(dlab, udp_echo, b"silent")
        assert_alive(dlab)
        for s in silent:   # each is eventually told why it is closed
            assert_refused(read_reply(s), "no complete request line")
    finally:
        for s in silent:
            s.close()


def test_a_trickling_client_does_not_hold_up_others(dlab, udp_echo):
    """A client that sends its request a byte at a time, never finishing the line: the data
    path keeps forwarding and other clients are answered meanwhile; it is cut off."""
    path = sock_path(dlab)
    done = threading.Event()
    result: List[Optional[dict]] = []

    def trickle():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(REPLY_TIMEOUT)
            s.connect(path)
            try:
                for b in (b'{"cmd": "ping", "pad": "' + b"a" * 400):
                    if done.is_set():
                        break
                    s.send(bytes([b]))
                    time.sleep(0.05)
            except OSError:
                pass   # cut off by the daemon: read its word below
            result.append(read_reply(s))

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(0.3)   # the trickle is under way
        assert_alive(dlab)
        udp_through_nat(dlab, udp_echo, b"trickle")
    finally:
        t.join(30)
        done.set()
    assert not t.is_alive()
    assert_refused(result[0], "no complete request line")


def test_many_clients_at_once(dlab, udp_echo):
    path = sock_path(dlab)
    requests = [_j({"cmd": "ping"}), b"garbage\n", _j({"cmd": "counters"}), b"\xff\n",
                _j({"cmd": "clock", "advance": "x"})]
    replies: List[Optional[dict]] = [None] * 150
    errors: List[BaseException] = []
    start = threading.Barrier(len(replies))

    told_busy = [0]

    def client(i):
        try:
            start.wait(REPLY_TIMEOUT)
            for _ in range(200):   # "busy" means: more than CONTROL_CLIENTS_MAX at once; retry
                replies[i] = exchange(path, requests[i % len(requests)])
                r = replies[i]
                if not (r and r.get("ok") is False and "busy" in r.get("error", "")):
                    break
                told_busy[0] += 1
                time.sleep(0.02)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(len(replies))]
    for t in threads:
        t.start()
    udp_through_nat(dlab, udp_echo, b"many")
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    for i, r in enumerate(replies):
        assert r is not None, f"client {i} got no reply"
        assert not (r["ok"] is False and "busy" in r["error"]), f"client {i} never served"
        if i % len(requests) in (0, 2):
            assert r["ok"] is True, r
            if i % len(requests) == 0:
                assert r["pid"] == dlab.pid
        else:
            assert_refused(r)
    # how many were told to come back depends on the scheduling; every one was served in the end
    print(f"{told_busy[0]} busy replies before every client was served")
    assert_alive(dlab)
