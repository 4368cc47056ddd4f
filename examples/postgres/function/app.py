"""fn-db: a Lambda handler that keeps one PostgreSQL connection per execution environment.

The connection is opened during init (module level), which runs once per execution
environment; every invocation that environment serves reuses it, as AWS recommends ("take
advantage of execution environment reuse": initialise SDK clients and database connections
outside the handler). So many invocations make ONE connection: one entry in the Hyperplane
ENI's connection table, one backend process on the server, one translated source port.

Each invocation answers what the server saw: the client address (the ENI's private address,
not the environment's: V2N source NAT) and port (the port the ENI chose), the backend's pid,
and the environment's invocation count (a global, so it survives between invocations). If the
connection broke in between (the server restarted, or a timeout cut it), the handler reconnects
once and says so in ``reconnected``.

Environment: DB_HOST, DB_PORT (5432), DB_NAME, DB_USER, DB_PASSWORD.
"""
import json
import os
import time

import pgwire

DB = {"host": os.environ["DB_HOST"], "port": int(os.environ.get("DB_PORT", "5432")),
      "database": os.environ.get("DB_NAME", "lab"), "user": os.environ.get("DB_USER", "app"),
      "password": os.environ.get("DB_PASSWORD"), "timeout": 5.0}


def _connect():
    started = time.monotonic()
    conn = pgwire.connect(**DB)
    print(f"connected to {DB['host']}:{DB['port']} as {DB['user']} in "
          f"{(time.monotonic() - started) * 1000:.1f} ms, backend pid {conn.backend_pid}",
          flush=True)
    return conn


# ---- init: once per execution environment ------------------------------------------------------
invocations = 0
init_error = None
try:
    conn = _connect()
except (OSError, pgwire.Error) as e:
    # A failed init fails the invocation and Lambda retries init on the next one; here the
    # first invocation retries the connection itself, so the response can say what happened.
    conn, init_error = None, f"{type(e).__name__}: {e}"
    print(f"init: no connection ({init_error}); the first invocation retries", flush=True)


def _ask(c):
    count = c.query("SELECT count(*) FROM items").rows[0][0]
    addr, port, pid = c.query(
        "SELECT host(inet_client_addr()), inet_client_port(), pg_backend_pid()").rows[0]
    return {"items": int(count), "client_addr": addr, "client_port": int(port),
            "backend_pid": int(pid)}


def _broken(e):
    return isinstance(e, (OSError, pgwire.Error)) and not (
        isinstance(e, pgwire.ServerError) and not e.fatal)


def handler(event, context):
    global conn, invocations, init_error
    invocations += 1
    out = {"invocation": invocations, "reconnected": None}
    if init_error:
        out["init_error"], init_error = init_error, None
    if conn is None:
        conn = _connect()
        out["reconnected"] = "no connection from init"
    else:
        try:
            out.update(_ask(conn))
            return out
        except Exception as e:        # the server restarted, or the path cut the connection
            if not _broken(e):
                raise
            out["reconnected"] = f"{type(e).__name__}: {e}"
            print(f"invocation {invocations}: connection broken ({out['reconnected']}); "
                  "reconnecting once", flush=True)
            conn.close()
            conn = _connect()
    out.update(_ask(conn))
    return out


if __name__ == "__main__":   # by hand: DB_HOST=127.0.0.1 DB_PASSWORD=... python3 app.py
    print(json.dumps(handler({}, None)))
