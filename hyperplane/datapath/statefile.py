"""The data path's state file: its connection tables and control-plane state, saved while it
runs and as it stops, restored by the next data path of the same lab (``hyperplane lab
restart``).

The file is JSON: who saved it (pid, boot id, plan hash), when (wall clock and the lab clock's
offset), whether at shutdown (``final``), the control plane's state, and per ENI key and NAT
gateway the engine's connection snapshot (base64 of the engines' shared snapshot codec,
hyperplane.engine.types). It is restored only into the data path of the very plan that saved
it, on the same boot; anything else is refused with a reason, never misread.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import stat
import time
from typing import Any, Dict, Optional

from hyperplane import paths
from hyperplane.labconfig.model import FLOW_LOGS_AZ_ID, FLOW_LOGS_REGION

STATE_FORMAT = "hyperplane-conntrack-state"
STATE_VERSION = 1
RESTORE_COUNTS = ("restored", "expired", "eni_mismatch", "duplicate", "table_full", "invalid")


def default_state_file(name: str) -> Optional[str]:
    """``<lab dir>/conntrack.state`` when the lab's directory exists (a lab built with ``lab
    up``), else None: a data path run on its own saves nothing."""
    return paths.conntrack_state_path(name) if os.path.isdir(paths.lab_dir(name)) else None


def plan_hash(plan) -> str:
    """SHA-256 of the plan (its JSON, keys sorted): a state file is restored only into the
    data path of the very plan that saved it. ``[datapath]`` (which CPUs the process runs on)
    is left out: it changes nothing in the tables, so moving the data path to another CPU
    keeps its connections, and a file saved before the section existed still matches.
    Settings added later are left out while they hold their defaults (``[conntrack]``, the
    flow logs' ``format``, ``region`` and ``az_id``), so a file saved before they existed matches too."""

    d = plan.to_dict()
    d.pop("datapath", None)
    if not plan.conntrack.changed():
        d.pop("conntrack", None)
    fl = d.get("flow_logs", {})
    for key, default in (("format", ""), ("region", FLOW_LOGS_REGION),
                         ("az_id", FLOW_LOGS_AZ_ID)):
        if fl.get(key, default) == default:
            fl.pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _eni_json(e) -> Dict[str, Any]:
    return {"id": e.id, "ipv4": e.ipv4, "ipv6": e.ipv6}


def state_parts(d, final: bool) -> Dict[str, Any]:
    """What a state file holds, taken from the running data path ``d`` (a Daemon): the
    engines' snapshots as bytes, everything else as fresh JSON-ready values, so that
    :func:`encode_state` may run in another thread while the loop goes on."""
    keys = []
    for kg in d.keys.values():
        keys.append({"key": [kg.key[0], list(kg.key[1])], "ifname": kg.ifname,
                     "mac": kg.mac, "enis": [_eni_json(e) for e in kg.engine.enis],
                     **_table_snapshot(kg.engine)})
    nats = [{"id": nid, "enis": [_eni_json(x) for x in e.enis], **_table_snapshot(e)}
            for nid, e in d.natgw.items()]
    return {
        "format": STATE_FORMAT, "version": STATE_VERSION, "lab": d.plan.name,
        "config_hash": plan_hash(d.plan), "final": final, "pid": os.getpid(),
        "saved_wall": time.time(), "saved_monotonic": time.monotonic(),
        "saved_now": d.now(), "offset": d.offset, "boot_id": boot_id(),
        "keys": keys, "nat_gateways": nats, "control_plane": json.loads(json.dumps(d.cp.save())),
    }


def _table_snapshot(engine) -> Dict[str, Any]:
    return {"blob": engine.snapshot(), "connections": int(engine.counters()["connections"])}


def encode_state(parts: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`state_parts` as the state file's document: each connection table's snapshot as
    base64 with its SHA-256."""

    def table(t: Dict[str, Any]) -> Dict[str, Any]:
        blob = t["blob"]
        return {**t, "blob": base64.b64encode(blob).decode(),
                "sha256": hashlib.sha256(blob).hexdigest()}

    return {**parts, "keys": [table(k) for k in parts["keys"]],
            "nat_gateways": [table(n) for n in parts["nat_gateways"]]}


def write_state_file(path: str, doc: Dict[str, Any]) -> None:
    """Write ``doc`` as JSON to ``path`` atomically: a temp file created mode 0600 beside it,
    fsync, rename over ``path``, fsync of the directory. A reader sees the old file or the
    new one, never half of one; a crash leaves at worst a stray temp file."""
    data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


#: A state file larger than this is refused unread (a 1M-connection table is about 200 MB).
STATE_FILE_MAX = 1 << 30


def read_state_file(path: str) -> Dict[str, Any]:
    """The state file as a dict. FileNotFoundError when there is none; ValueError with the
    reason when it cannot be one (not a regular file, not ours, too big, not JSON)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise ValueError(f"owned by uid {st.st_uid} with mode "
                             f"{stat.S_IMODE(st.st_mode):04o}: only root may write it")
        if st.st_size > STATE_FILE_MAX:
            raise ValueError(f"{st.st_size} bytes, more than {STATE_FILE_MAX}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"not a state file: not JSON ({e}), e.g. cut short") from None
    if not isinstance(doc, dict):
        raise ValueError("not a state file: not a JSON object")
    return doc


def _is_num(v: Any) -> bool:

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_table(t: Any, where: str) -> None:

    if not isinstance(t, dict):
        raise ValueError(f"{where}: expected an object")
    enis = t.get("enis")
    if not isinstance(enis, list) or not enis or not all(
            isinstance(x, dict) and isinstance(x.get("id"), str)
            and all(x.get(a) is None or isinstance(x.get(a), str) for a in ("ipv4", "ipv6"))
            for x in enis):
        raise ValueError(f"{where}.enis: expected a non-empty list of {{id, ipv4, ipv6}}")
    if not isinstance(t.get("blob"), str) or not isinstance(t.get("sha256"), str):
        raise ValueError(f"{where}: no connection table (blob, sha256)")
    try:
        blob = base64.b64decode(t["blob"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}.blob: not base64") from None
    if hashlib.sha256(blob).hexdigest() != t["sha256"]:
        raise ValueError(f"{where}.blob: its SHA-256 does not match: the file is corrupt")
    if not isinstance(t.get("connections"), int):
        raise ValueError(f"{where}.connections: expected a count")


def check_state_doc(doc: Dict[str, Any], plan) -> None:
    """ValueError saying why ``doc`` cannot be restored into ``plan``'s data path (another
    format or version, another lab, another plan, a field missing or of the wrong type, a
    table whose SHA-256 does not match)."""
    if doc.get("format") != STATE_FORMAT:
        raise ValueError(f"not a state file (format {doc.get('format')!r}, not "
                         f"{STATE_FORMAT!r})")
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"state file version {doc.get('version')!r}; this data path reads "
                         f"version {STATE_VERSION} only")
    if doc.get("lab") != plan.name:
        raise ValueError(f"it belongs to lab {doc.get('lab')!r}, not {plan.name!r}")
    if doc.get("config_hash") != plan_hash(plan):
        raise ValueError("it was saved by a data path with another lab plan (the lab's "
                         "config changed): its connections may not fit this one")
    for f in ("saved_wall", "saved_monotonic", "saved_now", "offset"):
        if not _is_num(doc.get(f)):
            raise ValueError(f"{f}: expected a number, not {doc.get(f)!r}")
    if not 0 <= doc["offset"] <= 10 * 365 * 86400:
        raise ValueError(f"offset: the lab clock's offset {doc['offset']!r} is not 0 s to ten "
                         "years (what `hyperplane clock advance` allows)")
    if not isinstance(doc.get("boot_id"), str) or not isinstance(doc.get("final"), bool) or \
            not isinstance(doc.get("pid"), int):
        raise ValueError("boot_id, final, pid: missing or of the wrong type")
    for f in ("keys", "nat_gateways"):
        if not isinstance(doc.get(f), list):
            raise ValueError(f"{f}: expected a list")
    for i, k in enumerate(doc["keys"]):
        _check_table(k, f"keys[{i}]")
        key = k.get("key")
        if not (isinstance(key, list) and len(key) == 2 and isinstance(key[0], str)
                and isinstance(key[1], list) and all(isinstance(g, str) for g in key[1])):
            raise ValueError(f"keys[{i}].key: expected [subnet, [security groups]]")
        if not isinstance(k.get("ifname"), str) or not isinstance(k.get("mac"), str):
            raise ValueError(f"keys[{i}]: ifname and mac must be strings")
    for i, n in enumerate(doc["nat_gateways"]):
        _check_table(n, f"nat_gateways[{i}]")
        if not isinstance(n.get("id"), str):
            raise ValueError(f"nat_gateways[{i}].id: expected a string")
    if not isinstance(doc.get("control_plane"), dict):
        raise ValueError("control_plane: expected an object")


