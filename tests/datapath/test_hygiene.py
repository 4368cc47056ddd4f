"""Control-plane hygiene: the control socket is root-only, a malformed control request gets an
error and never stops or stalls the data path, and a failed ``lab up`` rolls back exactly what
it built.

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN (root); skipped otherwise, and FAILS when the compiled engine
is missing. One module-scoped default lab answers the control-socket tests; the rollback tests
build (and break) labs of their own, each under a fresh name ``tXXXXXX``, and every one of them
is torn down in a finally. The run directory is a world-traversable (0755) temporary directory,
so that when an unprivileged process cannot reach the socket it is the socket's own protection
that stops it, not a private parent directory. Only 198.18.0.0/15 and 2001:2::/48 are used.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
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
from pyroute2 import netns as pr_netns

import hyperplane as hp
from hyperplane import cli, control, errors, labconfig, netns, paths, proc
from hyperplane import topology as hplab
from hyperplane.lab import lifecycle
from hyperplane.lab import status as lab_status
from hyperplane.topology import builder, nodes
from kit import traffic as nt
from kit.labs import LabView, destroy, lab_name, ours, root_links

_problem = netns.privilege_problem()
pytestmark = pytest.mark.skipif(_problem is not None, reason=f"hygiene lab tests: {_problem}")

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


def assert_alive(lab: LabView) -> None:
    """The data path still answers, and it is the same process."""
    r = control.request(sock_path(lab), "ping")
    assert r["ok"] is True and r["pid"] == lab.pid, r
    assert proc.pid_alive(lab.pid)


def udp_through_nat(lab: LabView, srv: nt.UdpEchoServer, tag: bytes) -> None:
    """A UDP round trip from the veth environment through the NAT to the server and back; the
    server must have seen it from the ENI's address."""
    env = lab.env("fn-b-0")
    payload = b"hygiene-" + tag + b"-" + secrets.token_hex(4).encode()
    reply, _ = nt.udp_roundtrip(env.netns, srv.addr, srv.port, payload, timeout=6, retries=3)
    assert reply == payload
    seen = [d.peer for d in srv.datagrams if d.data == payload]
    assert seen and seen[0][0] == lab.eni.ipv4, f"server saw {seen}"


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


# ---- 3. a failed `lab up` rolls back -------------------------------------------------------------
NACL_LAB = labconfig.default_text() + """
[[network_acls]]
id = "acl-0a1b2c3d"
subnet_ids = ["subnet-a"]
[[network_acls.egress]]
rule_number = 100
protocol = "all"
action = "allow"
cidr = "0.0.0.0/0"
[[network_acls.ingress]]
rule_number = 100
protocol = "all"
action = "allow"
cidr = "0.0.0.0/0"
"""


def lab_processes(name: str) -> List[int]:
    """Pids of processes whose command line is a hyperplane data path of lab ``name``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"hyperplane" in b" ".join(argv) and name.encode() in argv:
            found.append(int(entry))
    return found


class Bystanders:
    """Namespaces a lab must never touch: another prefix, and a look-alike of the lab's own
    prefix (``hp-NAMEx-``), created before the lab, checked and removed after."""

    def __init__(self, name: str):
        self.names = [f"hq-{name}-keep", f"hp-{name}x-keep"]

    def __enter__(self):
        for ns in self.names:
            pr_netns.create(ns)
        return self

    def __exit__(self, *exc):
        for ns in self.names:
            if netns.exists(ns):
                pr_netns.remove(ns)

    def intact(self) -> bool:
        return all(netns.exists(ns) for ns in self.names)


def assert_rolled_back(name: str, run_dir: str, bystanders: Bystanders, links_before) -> None:
    assert ours(name) == [], f"namespaces left: {ours(name)}"
    assert not os.path.exists(os.path.join(run_dir, name)), "the lab's directory is left"
    assert hplab.load_state(name) is None
    assert lab_processes(name) == [], "a data path process is left"
    assert bystanders.intact(), "a namespace that is not the lab's was removed"
    assert root_links() == links_before, "links in the caller's namespace changed"


def _nth_call(real, n: int, after: bool = True, exc: BaseException = None):
    """``real`` that fails on its n-th call: after doing its work (``after``), so the failed
    step had built something, or before."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == n and not after:
            raise exc or OSError(f"injected failure at call {n}")
        out = real(*args, **kwargs)
        if len(calls) == n:
            raise exc or OSError(f"injected failure at call {n}")
        return out

    wrapper.calls = calls
    return wrapper


STAGES = {
    # stage: (config or None, {(topology module, function): (nth call, fail after it ran)},
    #         words). A function is replaced where its caller looks it up: the build steps in
    #         builder, the link helpers build_eni and build_host call in nodes.
    "third-namespace": (None, {(builder, "create_namespace"): (3, True)}, ["create namespace"]),
    "first-namespace": (None, {(builder, "create_namespace"): (1, False)},
                        ["create namespace"]),
    "eni-veth": (None, {(nodes, "add_node_veth"): (1, True)}, ["ENI eni-"]),
    "tap-environment": (None, {(builder, "build_env"): (1, True)}, ["environment fn-a-0"]),
    "veth-environment": (None, {(builder, "build_env"): (2, True)}, ["environment fn-b-0"]),
    "second-bridge-port": (None, {(nodes, "join_bridge"): (2, True)}, ["host server"]),
    "nft-table": (NACL_LAB, {(builder, "apply_nacls"): (1, True)}, ["network ACLs"]),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_failed_build_rolls_back(run_dir, monkeypatch, tmp_path, stage):
    config, faults, words = STAGES[stage]
    path = None
    if config:
        path = tmp_path / "lab.toml"
        path.write_text(config)
    name = lab_name()
    before = root_links()
    with Bystanders(name) as by:
        try:
            for (module, fn), (n, after) in faults.items():
                monkeypatch.setattr(module, fn, _nth_call(getattr(module, fn), n, after))
            with pytest.raises(errors.HyperplaneError) as info:
                lifecycle.lab_up(str(path) if path else None, name)
            monkeypatch.undo()
            msg = str(info.value)
            for w in words + ["injected failure", "rolled back", "nothing of lab"]:
                assert w in msg, f"{w!r} not in {msg!r}"
            assert_rolled_back(name, run_dir, by, before)
        finally:
            monkeypatch.undo()
            destroy(name)


def test_nft_table_existed_before_the_rollback(run_dir, monkeypatch, tmp_path):
    """The nft stage really had loaded its table (so the rollback removed one)."""
    path = tmp_path / "lab.toml"
    path.write_text(NACL_LAB)
    name = lab_name()
    seen = []
    real = builder.apply_nacls

    def load_then_fail(plan):
        real(plan)
        seen.append(len(hplab.nacl_counters(plan)))
        raise OSError("injected failure after nft")

    monkeypatch.setattr(builder, "apply_nacls", load_then_fail)
    try:
        with pytest.raises(errors.HyperplaneError, match="rolled back"):
            lifecycle.lab_up(str(path), name)
        assert seen and seen[0] >= 2, "the ACL counters were readable: the table was loaded"
        assert ours(name) == []
    finally:
        monkeypatch.undo()
        destroy(name)


def test_interrupted_build_rolls_back(run_dir, monkeypatch):
    name = lab_name()
    before = root_links()
    with Bystanders(name) as by:
        try:
            monkeypatch.setattr(builder, "build_host",
                                _nth_call(builder.build_host, 1, True, KeyboardInterrupt()))
            with pytest.raises(KeyboardInterrupt):
                lifecycle.lab_up(None, name)
            monkeypatch.undo()
            assert_rolled_back(name, run_dir, by, before)
        finally:
            monkeypatch.undo()
            destroy(name)


def test_data_path_that_exits_at_once_rolls_back(run_dir, monkeypatch):
    """A real data path failure: the child refuses to run on the reference engine."""
    name = lab_name()
    before = root_links()
    monkeypatch.setenv(hp.ENGINE_ENV, "reference")   # only the child sees it
    with Bystanders(name) as by:
        try:
            with pytest.raises(errors.HyperplaneError) as info:
                lifecycle.lab_up(None, name)
            msg = str(info.value)
            assert "the data path exited with status" in msg and "rolled back" in msg, msg
            assert "compiled engine" in msg, "the data path's log tail is in the message"
            assert_rolled_back(name, run_dir, by, before)
        finally:
            destroy(name)


@pytest.mark.parametrize("where", ["ready-wait", "state-save-after-start", "functions-active"])
def test_failure_after_the_data_path_started_stops_it(run_dir, monkeypatch, where):
    name = lab_name()
    before = root_links()
    started: List[int] = []
    if where == "ready-wait":
        real_wait = lifecycle.wait_ready

        def wait_then_fail(n, proc):
            started.append(proc.pid)
            real_wait(n, proc)           # it really runs and answers
            raise errors.HyperplaneError("injected failure: not ready")

        monkeypatch.setattr(lifecycle, "wait_ready", wait_then_fail)
    elif where == "state-save-after-start":
        real_save = hplab.save_state

        def save(n, state, create=False):
            if state.get("pid"):
                started.append(state["pid"])
                raise OSError("injected failure: disk full")
            real_save(n, state, create)

        monkeypatch.setattr(hplab, "save_state", save)
    else:
        def functions_fail(n, timeout):
            started.append(lifecycle.load_lab(n)[0]["pid"])
            raise errors.HyperplaneError("injected failure: functions stay Pending")

        monkeypatch.setattr(lifecycle, "wait_functions_active", functions_fail)
    with Bystanders(name) as by:
        try:
            with pytest.raises(errors.HyperplaneError) as info:
                lifecycle.lab_up(None, name)
            monkeypatch.undo()
            msg = str(info.value)
            assert "injected failure" in msg and "rolled back" in msg, msg
            assert started, "the data path was started before the failure"
            assert not proc.pid_alive(started[0]), f"data path pid {started[0]} still runs"
            assert_rolled_back(name, run_dir, by, before)
        finally:
            monkeypatch.undo()
            destroy(name)


def test_lab_up_of_an_existing_lab_is_refused_and_leaves_it_alone(dlab, udp_echo):
    state_file = paths.state_path(dlab.name)
    with open(state_file, "rb") as f:
        state_before = f.read()
    namespaces = sorted(ours(dlab.name))
    with pytest.raises(errors.HyperplaneError, match=f"lab '{dlab.name}' already exists; run "
                                           f"`hyperplane lab down --name {dlab.name}`"):
        lifecycle.lab_up(None, dlab.name)
    with open(state_file, "rb") as f:
        assert f.read() == state_before
    assert sorted(ours(dlab.name)) == namespaces
    assert_alive(dlab)
    udp_through_nat(dlab, udp_echo, b"second-up")


# ---- 4. the lab directory, half-built labs, damaged state ----------------------------------------
def test_lab_directory_writable_by_others_is_refused(run_dir):
    name = lab_name()
    d = os.path.join(run_dir, name)
    os.mkdir(d)
    os.chmod(d, 0o777)
    try:
        plan = labconfig.resolve(labconfig.default(), name)
        with pytest.raises(hplab.LabError, match="writable by other users"):
            hplab.build(plan, "<default>")
        assert ours(name) == [] and os.listdir(d) == [], "nothing was built"
        os.chown(d, NOBODY, NOBODY)
        os.chmod(d, 0o755)
        with pytest.raises(hplab.LabError, match="belongs to uid 65534"):
            hplab.build(plan, "<default>")
        assert ours(name) == [] and os.listdir(d) == []
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_leftover_lab_directory_is_refused_and_kept(run_dir):
    name = lab_name()
    d = os.path.join(run_dir, name)
    os.mkdir(d)
    with open(os.path.join(d, "datapath.log"), "w") as f:
        f.write("an earlier run\n")
    try:
        with pytest.raises(hplab.LabError, match="no state file"):
            hplab.build(labconfig.resolve(labconfig.default(), name), "<default>")
        assert os.listdir(d) == ["datapath.log"] and ours(name) == []
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_half_built_lab_goes_down_with_lab_down_twice(run_dir, monkeypatch, capfd):
    """A build whose rollback failed too leaves a half-built lab and says so; `lab status`
    reports it without a traceback and `lab down` removes it, and is idempotent."""
    name = lab_name()
    try:
        monkeypatch.setattr(builder, "build_env", _nth_call(builder.build_env, 2, True))
        monkeypatch.setattr(builder, "teardown", lambda n: (_ for _ in ()).throw(
            hplab.LabError("injected rollback failure")))
        with pytest.raises(errors.HyperplaneError) as info:
            lifecycle.lab_up(None, name)
        monkeypatch.undo()
        assert "rolling back failed as well" in str(info.value)
        assert f"hyperplane lab down --name {name}" in str(info.value)
        assert ours(name), "the half-built lab is still there"
        capfd.readouterr()
        assert cli.main(["lab", "status", "--name", name]) == errors.EXIT_FAIL
        st = lab_status.status(name)
        assert st["running"] is False and st["pid"] is None
        capfd.readouterr()
        assert cli.main(["lab", "down", "--name", name]) == 0
        assert "removed" in capfd.readouterr().out
        assert ours(name) == [] and hplab.load_state(name) is None
        assert cli.main(["lab", "down", "--name", name]) == 0
        assert "nothing to do" in capfd.readouterr().out
    finally:
        monkeypatch.undo()
        destroy(name)


def test_damaged_state_file_is_a_clear_error(run_dir, capfd):
    name = lab_name()
    d = os.path.join(run_dir, name)
    os.mkdir(d)
    try:
        with open(os.path.join(d, "state.json"), "w") as f:
            f.write('{"name": "half')
        for argv in (["lab", "down"], ["lab", "status"]):
            assert cli.main(argv + ["--name", name]) == errors.EXIT_FAIL
            err = capfd.readouterr().err
            assert "cannot read" in err and "state.json" in err and "Traceback" not in err, err
        with open(os.path.join(d, "state.json"), "w") as f:
            f.write('{"name": "x", "plan": 5}')
        assert cli.main(["lab", "status", "--name", name]) == errors.EXIT_FAIL
        assert "does not describe a lab" in capfd.readouterr().err
        assert cli.main(["lab", "down", "--name", name]) == 0, "nothing recorded: nothing to do"
        assert not os.path.exists(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
