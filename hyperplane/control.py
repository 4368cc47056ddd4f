"""The data path's control socket: the protocol and its client.

The data path (hyperplane.datapath) listens on a Unix stream socket, ``control.sock`` in the
lab's directory, mode 0600 and root only. A request is one JSON object on one line; the reply
is one JSON object on one line with ``"ok"`` true, or false and an ``"error"`` sentence::

    {"cmd": "conntrack", "filter": {"proto": "tcp"}}
    {"ok": true, "entries": [...], "now": 12.5}

``events`` is the one command that keeps its connection open: after the first reply line each
line is one connection event (``conntrack events --json`` prints them unchanged).
"""
from __future__ import annotations

import json
import socket
from typing import Any, Dict, List, Tuple

from hyperplane.errors import EXIT_USAGE, HyperplaneError

#: Each command and the arguments it takes (besides "cmd"); the data path refuses anything
#: else by name, so a misspelt argument is an error rather than silently ignored.
CONTROL_ARGS: Dict[str, Tuple[str, ...]] = {
    "ping": (), "counters": (), "conntrack": ("filter",), "conntrack_flush": ("filter",),
    "events": ("filter", "kinds"), "neighbours": (), "enis": (), "functions": (),
    "function_update": ("name", "subnet_ids", "security_group_ids", "ipv6"),
    "invoke": ("name",), "clock": ("advance",), "stop": (),
}
#: One request is one JSON object on one line of at most this many bytes.
CONTROL_LINE_MAX = 1 << 16
#: A reply line may be much longer (a whole connection table).
REPLY_LINE_MAX = 1 << 26
#: Seconds an ``events`` subscription waits for the data path's first reply.
SUBSCRIBE_TIMEOUT = 5.0


def request(control_path: str, cmd: str, timeout: float = 5.0, **args) -> Dict[str, Any]:
    """Send one control request and return the reply (raises OSError when nobody listens,
    ValueError when the reply is not JSON)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control_path)
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = s.makefile("rb").readline(REPLY_LINE_MAX)
    if not data:
        raise OSError(f"no reply from {control_path}")
    return json.loads(data)


def subscribe(control_path: str, spec: Dict[str, Any], kinds: List[str]) -> socket.socket:
    """Connect to the control socket and ask for events; returns the socket once the data path
    said yes (its first line), positioned at the first event line. A refusal (a bad filter,
    say) is a HyperplaneError with the data path's words (exit status 2); a data path that does
    not answer is an OSError."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(SUBSCRIBE_TIMEOUT)
        s.connect(control_path)
        s.sendall(json.dumps({"cmd": "events", "filter": spec, "kinds": kinds}).encode() + b"\n")
        first = b""
        while not first.endswith(b"\n"):   # byte by byte: nothing after the line is consumed
            c = s.recv(1)
            if not c:
                raise OSError("the data path closed the connection")
            first += c
        reply = json.loads(first)
        if not reply.get("ok"):
            raise HyperplaneError(reply.get("error", "refused"), EXIT_USAGE)
        s.settimeout(None)
        return s
    except BaseException:
        s.close()
        raise
