"""A small PostgreSQL client: the frontend side of the wire protocol, standard library only.

Why the example carries it: a Lambda deployment package carries its own dependencies, and the
lab runs functions with Debian's /usr/bin/python3.11, where nothing from pip is importable. A
real function would ship pg8000 or psycopg (with its libpq) in its code folder; this file keeps
the example runnable with nothing installed, and small enough to read in one sitting.

What it speaks is the PostgreSQL documentation's chapter "Frontend/Backend Protocol"
(https://www.postgresql.org/docs/current/protocol.html; chapter 55 of the 15 and 16 manuals),
named by its sections:

* Message Flow, Start-up: StartupMessage (protocol 3.0, ``user``, ``database``), then the
  server's Authentication* requests: AuthenticationOk (``trust``), AuthenticationMD5Password,
  and AuthenticationSASL with SCRAM-SHA-256 (section SASL Authentication; RFC 5802 and
  RFC 7677, without channel binding), answered with PasswordMessage / SASLInitialResponse /
  SASLResponse; then ParameterStatus, BackendKeyData and ReadyForQuery.
* Message Flow, Simple Query: Query ``'Q'``, answered by RowDescription, DataRow,
  CommandComplete (or EmptyQueryResponse, ErrorResponse) and ReadyForQuery. Text format.
* Message Flow, Termination: Terminate ``'X'``.
* Message Formats: every message is a type byte, an Int32 length that counts itself, and the
  body (the StartupMessage alone has no type byte). Error and Notice Message Fields: the
  ErrorResponse's fields.

Not here: the extended query protocol (parameters, prepared statements), COPY, notifications,
TLS (a client asking for it sends SSLRequest first). Values come back as ``str`` (None for NULL).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
from typing import Dict, List, NamedTuple, Optional, Tuple

PROTOCOL_3_0 = 196608   # StartupMessage: major 3 in the high 16 bits, minor 0


class Error(Exception):
    """The connection cannot go on: the server closed it, or spoke something unexpected."""


class ServerError(Error):
    """An ErrorResponse. ``fields`` by their code letter: S severity, C SQLSTATE, M
    message, D detail, ... ``fatal``: the server ends the connection after it."""

    def __init__(self, fields: Dict[str, str]):
        self.fields = fields
        super().__init__(f"{fields.get('S', 'ERROR')}: {fields.get('M', '?')} "
                         f"(SQLSTATE {fields.get('C', '?')})")

    @property
    def fatal(self) -> bool:
        return self.fields.get("V", self.fields.get("S")) in ("FATAL", "PANIC")


class Result(NamedTuple):
    columns: List[str]
    rows: List[Tuple[Optional[str], ...]]
    tag: str   # CommandComplete's tag, e.g. "SELECT 1"


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


class Connection:
    def __init__(self, host: str, port: int = 5432, *, user: str, database: str,
                 password: Optional[str] = None, timeout: float = 5.0):
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        self.parameters: Dict[str, str] = {}   # ParameterStatus: server_version, TimeZone, ...
        self.backend_pid: Optional[int] = None
        params = (_cstr("user") + _cstr(user) + _cstr("database") + _cstr(database)
                  + _cstr("application_name") + _cstr("pgwire") + b"\0")
        self._sock.sendall(struct.pack("!ii", 8 + len(params), PROTOCOL_3_0) + params)
        try:
            self._authenticate(user, password)
            self._until_ready()
        except BaseException:
            self._sock.close()
            raise

    # ---- Start-up --------------------------------------------------------------------------------
    def _authenticate(self, user: str, password: Optional[str]) -> None:
        scram = None
        while True:
            kind, body = self._read()
            if kind == b"E":                                # refused: no such role, pg_hba
                raise ServerError(self._fields(body))
            if kind != b"R":
                raise Error(f"expected an Authentication message, got {kind!r}")
            code, = struct.unpack_from("!i", body)
            if code == 0:                                   # AuthenticationOk
                return
            if password is None:
                raise Error(f"the server asks for a password (authentication code {code})")
            if code == 5:                                   # AuthenticationMD5Password
                inner = hashlib.md5((password + user).encode()).hexdigest()
                digest = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self._send(b"p", _cstr("md5" + digest))
            elif code == 10:                                # AuthenticationSASL
                if b"SCRAM-SHA-256\0" not in body[4:]:
                    raise Error(f"no supported SASL mechanism in {body[4:]!r}")
                scram = _Scram(password)
                first = scram.client_first()
                self._send(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first)
            elif code == 11 and scram:                      # AuthenticationSASLContinue
                self._send(b"p", scram.client_final(body[4:]))
            elif code == 12 and scram:                      # AuthenticationSASLFinal
                scram.verify_server(body[4:])
            else:
                raise Error(f"unsupported authentication request (code {code})")

    def _until_ready(self) -> None:
        while True:
            kind, body = self._read()
            if kind == b"S":                                # ParameterStatus
                name, value = body.split(b"\0")[:2]
                self.parameters[name.decode()] = value.decode()
            elif kind == b"K":                              # BackendKeyData
                self.backend_pid, _secret = struct.unpack("!ii", body[:8])
            elif kind == b"E":                              # e.g. no such database
                raise ServerError(self._fields(body))
            elif kind == b"Z":                              # ReadyForQuery
                return

    # ---- Simple Query ----------------------------------------------------------------------------
    def query(self, sql: str) -> Result:
        """Run ``sql`` (one statement; with several, the last one's result). A ServerError
        after ReadyForQuery: the connection stays usable unless ``fatal``."""
        self._send(b"Q", _cstr(sql))
        columns: List[str] = []
        rows: List[Tuple[Optional[str], ...]] = []
        tag, error = "", None
        while True:
            kind, body = self._read()
            if kind == b"T":                                # RowDescription
                n, = struct.unpack_from("!h", body)
                columns, off = [], 2
                for _ in range(n):
                    end = body.index(b"\0", off)
                    columns.append(body[off:end].decode())
                    off = end + 1 + 18                      # oids, attnum, type, size, fmt
                rows = []
            elif kind == b"D":                              # DataRow
                n, = struct.unpack_from("!h", body)
                row, off = [], 2
                for _ in range(n):
                    size, = struct.unpack_from("!i", body, off)
                    off += 4
                    row.append(None if size < 0 else body[off:off + size].decode())
                    off += max(size, 0)
                rows.append(tuple(row))
            elif kind == b"C":                              # CommandComplete
                tag = body.rstrip(b"\0").decode()
            elif kind == b"E":                              # ErrorResponse
                error = ServerError(self._fields(body))
                if error.fatal:
                    raise error
            elif kind == b"Z":                              # ReadyForQuery
                if error:
                    raise error
                return Result(columns, rows, tag)
            # EmptyQueryResponse 'I', NoticeResponse 'N', ParameterStatus 'S': nothing to do

    def close(self) -> None:
        """Terminate, then close the socket. Never raises."""
        try:
            self._send(b"X", b"")
        except OSError:
            pass
        self._sock.close()

    # ---- Message Formats -------------------------------------------------------------------------
    def _send(self, kind: bytes, body: bytes) -> None:
        self._sock.sendall(kind + struct.pack("!i", 4 + len(body)) + body)

    def _read(self) -> Tuple[bytes, bytes]:
        head = self._exactly(5)
        size, = struct.unpack_from("!i", head, 1)
        return head[:1], self._exactly(size - 4)

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise Error("the server closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    @staticmethod
    def _fields(body: bytes) -> Dict[str, str]:
        return {f[:1].decode(): f[1:].decode("utf-8", "replace")
                for f in body.split(b"\0") if f}


class _Scram:
    """SCRAM-SHA-256 (RFC 5802 section 3, RFC 7677), as PostgreSQL uses it: the user
    name comes from the StartupMessage, so the client sends ``n=`` empty; no channel binding
    (gs2 header ``n,,``)."""

    def __init__(self, password: str):
        self.password = password.encode()   # (RFC 5802 wants SASLprep; ASCII needs none)
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def client_first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise Error("SCRAM: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        without_proof = f"c=biws,r={attrs['r']}"        # biws = base64("n,,")
        auth = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.server_signature = hmac.digest(server_key, auth, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server(self, server_final: bytes) -> None:
        attrs = dict(a.split("=", 1) for a in server_final.decode().split(","))
        if base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise Error("SCRAM: the server's signature is wrong (not the server we asked?)")


def connect(host: str, port: int = 5432, **kwargs) -> Connection:
    """``connect(host, port, user=..., database=..., password=None, timeout=5.0)``."""
    return Connection(host, port, **kwargs)
