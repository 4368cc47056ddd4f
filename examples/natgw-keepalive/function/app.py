"""fn-plain and fn-keepalive: one TCP connection per execution environment, to a server on
the internet through the NAT gateway, opened during init and reused by every invocation.

Each invocation sends one line and reads the answer. What it returns says what happened:
``result`` "ok", or the error the connection gave (``ConnectionResetError``: the NAT gateway
answered with a RST because it had dropped the idle connection; ``TimeoutError``: no answer at
all), after which the handler reconnects once and tries again (``reconnected``: true).
``connection`` counts the connections this environment has opened, ``idle_seconds`` is the
real time (not the lab clock) since the previous invocation ended.

KEEPALIVE=1 turns TCP keep-alive on for the socket (SO_KEEPALIVE; TCP_KEEPIDLE,
TCP_KEEPINTVL, TCP_KEEPCNT from KEEPALIVE_IDLE / KEEPALIVE_INTERVAL / KEEPALIVE_COUNT, default
5 s, 5 s, 3): after 5 s without traffic the kernel sends a probe, which the server's kernel
answers, and that traffic refreshes the NAT gateway's idle timer (350 s). A real function would
use an idle time well under 350 s, e.g. 60 s; 5 s makes the lab demonstration quick.

Environment: ECHO_HOST, ECHO_PORT (7000), KEEPALIVE ("1" or unset), READ_TIMEOUT (3 s).
"""
import os
import socket
import time

HOST = os.environ["ECHO_HOST"]
PORT = int(os.environ.get("ECHO_PORT", "7000"))
KEEPALIVE = os.environ.get("KEEPALIVE") == "1"
READ_TIMEOUT = float(os.environ.get("READ_TIMEOUT", "3"))


def _connect():
    s = socket.create_connection((HOST, PORT), timeout=READ_TIMEOUT)
    if KEEPALIVE:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE,
                     int(os.environ.get("KEEPALIVE_IDLE", "5")))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL,
                     int(os.environ.get("KEEPALIVE_INTERVAL", "5")))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT,
                     int(os.environ.get("KEEPALIVE_COUNT", "3")))
    print(f"connected {'%s:%d' % s.getsockname()[:2]} -> {HOST}:{PORT}, "
          f"keep-alive {'on' if KEEPALIVE else 'off'}", flush=True)
    return s, s.makefile("rb")


# ---- init: once per execution environment ------------------------------------------------------
sock, reader = _connect()
connections = 1
invocations = 0
last_used = time.monotonic()


def _exchange(line):
    sock.sendall(line.encode() + b"\n")
    answer = reader.readline()
    if not answer:
        raise ConnectionError("the server closed the connection")
    return answer.decode().rstrip("\n")


def handler(event, context):
    global sock, reader, connections, invocations, last_used
    invocations += 1
    now = time.monotonic()
    out = {"invocation": invocations, "keepalive": KEEPALIVE, "connection": connections,
           "idle_seconds": round(now - last_used, 1), "result": "ok", "error": None,
           "reconnected": False}
    line = f"invocation {invocations}"
    try:
        out["reply"] = _exchange(line)
    except OSError as e:       # ConnectionResetError, TimeoutError, BrokenPipeError, ...
        out["result"] = "error"
        out["error"] = f"{type(e).__name__}: {e}"
        print(f"invocation {invocations}: {out['error']}; reconnecting", flush=True)
        reader.close()
        sock.close()
        sock, reader = _connect()
        connections += 1
        out["reconnected"], out["connection"] = True, connections
        out["reply"] = _exchange(line)
    last_used = time.monotonic()
    return out
