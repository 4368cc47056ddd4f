"""The data path's control socket, served from the loop's thread without ever blocking it.

The control protocol (hyperplane.control: the commands, their arguments and the client) is one
JSON object per line over a root-only Unix socket: ``{"cmd": "ping" | "counters" | "conntrack" |
"conntrack_flush" | "neighbours" | "enis" | "functions" | "function_update" | "invoke" | "clock"
| "stop", ...}`` answered by one JSON line. ``{"cmd": "events", "filter": {...}, "kinds":
[...]}`` is answered by ``{"ok": true}`` and then keeps the connection: one JSON line per
connection event (like ``conntrack -E``), written from the loop each tick, never per packet
(hyperplane.datapath.events).

The control socket is root-only twice over: the file is mode 0600 and every connection's
SO_PEERCRED uid is checked. Clients are served without blocking the loop, and a malformed
request (not UTF-8, not JSON, not an object, an unknown command or argument, a wrong type, a
line over CONTROL_LINE_MAX, nothing at all) is answered ``{"ok": false, "error": "..."}``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from hyperplane.control import CONTROL_ARGS, CONTROL_LINE_MAX
from hyperplane.datapath.events import EVENT_KINDS, Subscriber
from hyperplane.engine.ctfilter import Filter
from hyperplane.vpc import ControlPlaneError

log = logging.getLogger("hyperplane.datapath")

# The control socket is served from the loop without ever waiting for a client: every client
# socket is non-blocking, and while any client is connected the loop comes back every
# CONTROL_POLL_MS to read what arrived and write what it can. A client that says nothing, or
# trickles its request, costs the data path nothing; it is answered with an error and closed
# once CONTROL_TIMEOUT passes without a whole request line (or, for a reply, without progress).
CONTROL_TIMEOUT = 2.0
CONTROL_POLL_MS = 2
#: Clients served at once (beyond this a new client is told so and closed at once), and
#: connections the kernel queues before they are accepted (a full queue fails connect(2) with
#: EAGAIN for a non-blocking or timed client, so it is deep; the kernel caps it at somaxconn).
CONTROL_CLIENTS_MAX = 64
CONTROL_BACKLOG = 1024
#: Only these users may use the control socket, checked with SO_PEERCRED on every connection
#: (the socket file is mode 0600 as well: this holds even if someone loosens it).
CONTROL_UIDS = frozenset({0, os.geteuid()})


class ControlClient:
    """A control connection: the request bytes read so far, then the reply bytes not yet
    written, and the time by which the next of them must arrive or leave."""

    __slots__ = ("conn", "buf", "out", "deadline")

    def __init__(self, conn: socket.socket, deadline: float):
        self.conn = conn
        self.buf = bytearray()
        self.out: Optional[bytearray] = None
        self.deadline = deadline


class ControlServer:
    """The Daemon's control socket (a mixin of hyperplane.datapath.daemon.Daemon, whose
    ``__init__`` sets up the state it uses: ``control_path``, the listening socket ``_ctl`` and
    its poll bit ``_ctl_bit``, the clients being served ``_clients``). The loop calls
    :meth:`_serve_control`; a request is answered from the Daemon itself (``counters``,
    ``conntrack``, ``tick``, ``cp``, ...), and an ``events`` request hands its connection to
    the event subscribers (hyperplane.datapath.events)."""

    def open_control(self) -> None:
        """Listen on the control socket. It is bound under umask 177, so the file is mode 0600
        (root's) from the moment it exists; a chmod after bind would leave a window. Every
        connection is also checked with SO_PEERCRED (:data:`CONTROL_UIDS`)."""
        if not self.control_path:
            return
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(self.control_path)
        finally:
            os.umask(old)
        s.listen(CONTROL_BACKLOG)
        s.setblocking(False)
        self._ctl = s
        self._ctl_bit = 1 << self.dp.watch(s.fileno())

    def close_control(self) -> None:
        """Close every control connection (writing what it takes of a reply not yet sent) and
        the control socket, and remove the socket's file."""
        for c in self._clients:   # e.g. the reply to `stop`, if it is still unsent
            if c.out:
                _send_quietly_bytes(c.conn, bytes(c.out))
            c.conn.close()
        self._clients = []
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
            try:
                os.unlink(self.control_path)
            except (FileNotFoundError, TypeError):
                pass

    def _serve_control(self) -> None:
        """Accept new control clients, then take every client as far as it goes without
        waiting: read its request line, answer it, write the answer. The loop calls this when
        the control socket is readable and, while any client is connected, every
        CONTROL_POLL_MS; nothing here ever blocks, so the data path keeps forwarding whatever a
        client does."""
        now = time.monotonic()
        while self._ctl is not None:
            try:
                conn, _ = self._ctl.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. out of fds: the client stays queued; try again later
                log.warning("control socket: accept failed: %s", e)
                break
            self._accept(conn, now)
        self._clients = [c for c in self._clients if self._step(c, now)]

    def _accept(self, conn: socket.socket, now: float) -> None:
        conn.setblocking(False)
        uid = _peer_uid(conn)
        if uid not in CONTROL_UIDS:
            log.warning("control socket: refused a connection from uid %s (root only)", uid)
            _send_quietly(conn, {"ok": False, "error": "permission denied: the control "
                                 "socket is root-only"})
            conn.close()
            return
        if len(self._clients) >= CONTROL_CLIENTS_MAX:
            _send_quietly(conn, {"ok": False, "error": f"busy: {CONTROL_CLIENTS_MAX} control "
                                 "clients are connected already; try again"})
            conn.close()
            return
        self._clients.append(ControlClient(conn, now + CONTROL_TIMEOUT))

    def _step(self, c: "ControlClient", now: float) -> bool:
        """Move one client on: False once it is done with (closed, or handed to the event
        subscribers), True while it still has something to send or to be sent."""
        if c.out is None:
            eof = False
            try:
                while b"\n" not in c.buf and len(c.buf) <= CONTROL_LINE_MAX:
                    chunk = c.conn.recv(CONTROL_LINE_MAX)
                    if not chunk:
                        eof = True
                        break
                    c.buf += chunk
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:          # reset by the client: nobody to answer
                c.conn.close()
                return False
            end = c.buf.find(b"\n")
            sub = None
            if 0 <= end <= CONTROL_LINE_MAX:
                reply, sub = self._answer(c.conn, bytes(c.buf[:end]))
            elif len(c.buf) > CONTROL_LINE_MAX:
                reply = _refusal(f"request line longer than {CONTROL_LINE_MAX} bytes; one "
                                 "request is one JSON object on one line")
            elif eof and c.buf.strip():  # the client shut down writing after its request
                reply, sub = self._answer(c.conn, bytes(c.buf))
            elif eof:
                reply = _refusal('empty request; send one JSON object on one line, e.g. '
                                 '{"cmd": "ping"}')
            elif now >= c.deadline:
                reply = _refusal(f"no complete request line within {CONTROL_TIMEOUT:g} s; "
                                 "send the request as soon as you connect, ending in a newline")
            else:
                return True          # wait for the rest of the line
            c.buf = bytearray()
            if sub is not None:      # `conntrack events`: the connection stays open for events
                sub.pending += _reply_line(reply)
                if self._flush_sub(sub):
                    self._subs.append(sub)
                    self._event_options()   # record its kinds from now on
                else:
                    sub.conn.close()
                return False
            c.out = bytearray(_reply_line(reply))
            c.deadline = now + CONTROL_TIMEOUT
        try:
            while c.out:
                n = c.conn.send(c.out)
                del c.out[:n]
                c.deadline = now + CONTROL_TIMEOUT   # progress: the client is reading
        except (BlockingIOError, InterruptedError):
            if now < c.deadline:
                return True          # the socket buffer is full: write the rest later
        except OSError:
            pass
        c.conn.close()
        return False

    def _answer(self, conn: socket.socket,
                line: bytes) -> Tuple[Dict[str, Any], Optional[Subscriber]]:
        """The reply to one request line, and the new subscriber if it was a valid
        ``events`` request."""
        try:
            req = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            return _refusal(f"the request is not UTF-8 text ({e.reason} at byte {e.start})"), None
        except (ValueError, RecursionError) as e:
            return _refusal(f"the request is not JSON ({e}); send one object per line, e.g. "
                            '{"cmd": "ping"}'), None
        if isinstance(req, dict) and req.get("cmd") == "events":
            return self._subscribe(conn, req)
        return self.handle(req), None

    def _subscribe(self, conn: socket.socket,
                   req: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[Subscriber]]:
        try:
            _command(req)
            flt = Filter(req.get("filter"))
            kinds = req.get("kinds")
            if kinds is None:
                kinds = ["new", "update", "destroy"]
            if not isinstance(kinds, list) or not kinds or \
                    not all(isinstance(k, str) and k in EVENT_KINDS for k in kinds):
                raise ValueError(f"'kinds' must be a non-empty list drawn from "
                                 f"{list(EVENT_KINDS)}")
        except (TypeError, ValueError) as e:
            return _refusal(f"bad events request: {e}"), None
        return {"ok": True}, Subscriber(conn, flt, kinds)

    def handle(self, req: Any) -> Dict[str, Any]:
        """The reply to one control request (any decoded JSON value): always a dict with
        ``ok``, and ``error`` naming what was wrong when ok is false. Never raises: a request
        must not be able to stop the data path."""
        try:
            cmd = _command(req)
        except ValueError as e:
            return _refusal(str(e))
        try:
            reply = self._handle(cmd, req)
            log.debug("control request %s: %s", cmd, "ok" if reply.get("ok") else
                      reply.get("error"))
            return reply
        except ControlPlaneError as e:
            log.debug("control request %s refused: %s", cmd, e)
            return {"ok": False, "error": str(e), "code": e.code}
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            return _refusal(f"bad {cmd} request: {e}")
        except Exception as e:   # a bug: say so, log it, and keep the data path running
            log.exception("control request %r failed", cmd)
            return _refusal(f"{cmd} failed: internal error {type(e).__name__}: {e}; see the "
                            "data path's log")

    def _handle(self, cmd: str, req: Dict[str, Any]) -> Dict[str, Any]:
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid(), "name": self.plan.name,
                    "uptime": time.time() - self.started}
        if cmd == "counters":
            return {"ok": True, **self.counters()}
        if cmd == "conntrack":
            return {"ok": True, "now": self.now(), "entries": self.conntrack(req.get("filter"))}
        if cmd == "conntrack_flush":
            return {"ok": True, "deleted": self.conntrack_flush(req.get("filter"))}
        if cmd == "neighbours":
            return {"ok": True, "neighbours": self.dp.neighbours()}
        if cmd == "enis":
            self.tick()
            return {"ok": True, "now": self.now(), "enis": self.cp.eni_list(self.now())}
        if cmd == "functions":
            self.tick()
            return {"ok": True, "now": self.now(), "functions": self.cp.function_list(self.now())}
        if cmd == "function_update":
            r = self.cp.update_function(
                _text(req, "name"), subnet_ids=_texts(req, "subnet_ids"),
                security_group_ids=_texts(req, "security_group_ids"),
                ipv6_allowed=_flag(req, "ipv6"), now=self.now())
            self.tick()
            return {"ok": True, "function": r}
        if cmd == "invoke":
            r = self.cp.invoke(_text(req, "name"), self.now())
            return {"ok": True, "result": r}
        if cmd == "clock":
            now = self.advance_clock(req.get("advance", 0))
            return {"ok": True, "now": now, "offset": self.offset}
        if cmd == "stop":
            self.stop_reason = "control request"
            return {"ok": True}
        if cmd == "events":
            return _refusal("events keeps its connection open: send it over the control socket")
        return _refusal(f"unknown command {cmd!r}; known: {', '.join(CONTROL_ARGS)}")


# ---- requests: their shape, their arguments, the replies -----------------------------------------
def _command(req: Any) -> str:
    """The request's command, after checking the request's shape: a JSON object whose "cmd"
    is a known command and whose other keys are that command's arguments."""
    if not isinstance(req, dict):
        raise ValueError(f"a request is a JSON object such as {{\"cmd\": \"ping\"}}, not "
                         f"{_json_type(req)}")
    cmd = req.get("cmd")
    known = ", ".join(CONTROL_ARGS)
    if cmd is None:
        raise ValueError(f"the request has no \"cmd\"; it is one of {known}")
    if not isinstance(cmd, str):
        raise ValueError(f"\"cmd\" must be a string, not {_json_type(cmd)}; one of {known}")
    if cmd not in CONTROL_ARGS:
        raise ValueError(f"unknown command {cmd!r}; \"cmd\" is one of {known}")
    extra = sorted(k for k in req if k != "cmd" and k not in CONTROL_ARGS[cmd])
    if extra:
        takes = ", ".join(CONTROL_ARGS[cmd]) or "no arguments"
        raise ValueError(f"{cmd}: unknown argument(s) {', '.join(map(repr, extra))}; it takes "
                         f"{takes}")
    return cmd


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object" if isinstance(v, dict) else type(v).__name__


def _refusal(error: str) -> Dict[str, Any]:
    return {"ok": False, "error": error}


def _reply_line(reply: Dict[str, Any]) -> bytes:
    """One reply as one JSON line; a reply that cannot be encoded becomes an error reply."""
    try:
        return json.dumps(reply).encode() + b"\n"
    except (TypeError, ValueError) as e:
        log.error("control reply not encodable as JSON: %s", e)
        return json.dumps(_refusal(f"internal error: the reply is not JSON ({e})")).encode() + \
            b"\n"


def _send_quietly(conn: socket.socket, reply: Dict[str, Any]) -> None:
    """Best effort, never waiting: for a client that is being turned away."""
    _send_quietly_bytes(conn, _reply_line(reply))


def _send_quietly_bytes(conn: socket.socket, data: bytes) -> None:
    try:
        conn.send(data)
    except OSError:
        pass


_UCRED = struct.Struct("iII")   # struct ucred: pid, uid, gid


def _peer_uid(conn: socket.socket) -> Optional[int]:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED, recorded by the
    kernel at connect time: the client cannot forge it)."""
    try:
        _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        _UCRED.size))
    except (OSError, struct.error):
        return None
    return uid


def _text(req: Dict[str, Any], key: str) -> str:
    v = req.get(key)
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key!r} must be a non-empty string")
    return v


def _texts(req: Dict[str, Any], key: str) -> Optional[List[str]]:
    v = req.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{key!r} must be a list of strings")
    return v


def _flag(req: Dict[str, Any], key: str) -> Optional[bool]:
    v = req.get(key)
    if v is not None and not isinstance(v, bool):
        raise ValueError(f"{key!r} must be true or false")
    return v
