"""Restart without loss: the Daemon's saves of its state, and its restore by the next Daemon.

The daemon saves its state to ``<lab dir>/conntrack.state`` (mode 0600, written atomically:
temp file, fsync, rename; the file's format and checks are hyperplane.datapath.statefile) when
it stops and every SAVE_INTERVAL seconds from the tick (written by a thread of its own, so the
loop forwards meanwhile), and a new daemon of the same lab and plan restores it before it
forwards a packet:
the lab clock's offset, per ENI key the engine's ENIs in their order and its connection table
(``Engine.snapshot``/``Engine.restore``: tuples, ENI port, state, timer, counters), the NAT
gateways' tables, and the control plane's state (hyperplane.vpc: which functions are Active on
which ENIs, scale-out ENIs). A TCP stream that was open keeps its ENI port and goes on. On the
same boot (``/proc/sys/kernel/random/boot_id``) the downtime counts as idle time, as it would
for the kernel's conntrack; after a reboot the saved ages are kept. A state file of another
lab, another plan or a bad one is ignored with the reason in the log and in ``counters``
(``restore``); the lab then starts afresh.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Optional

from hyperplane import topology
from hyperplane.datapath.statefile import (
    RESTORE_COUNTS, boot_id, check_state_doc, encode_state, read_state_file, state_parts,
    write_state_file)
from hyperplane.engine.config import Eni

log = logging.getLogger("hyperplane.datapath")

#: Seconds between two saves of the connection tables while the data path runs (from the tick,
#: never per packet), so a daemon that is killed rather than stopped loses at most this much.
SAVE_INTERVAL = 10.0
#: ...and at least this many times as long as the last save took. 60,000 connections: the
#: snapshots hold the loop 16 ms; encoding (87 ms, base64 + JSON) and writing with fsync run in
#: a thread beside it (Daemon.save_in_background), taking the GIL in pieces of tens of ms.
SAVE_SHARE = 20


class SaveAndRestore:
    """The Daemon's saves and its restore (a mixin of hyperplane.datapath.daemon.Daemon, whose
    ``__init__`` sets up the state it uses: ``state_file``, ``saves``, ``_save_thread``,
    ``restore_report``, and calls :meth:`_read_saved`, :meth:`_restore_keys` and
    :meth:`_restore_tables` while it builds the links). The tick starts the periodic save,
    ``close`` writes the final one."""

    def state_doc(self, final: bool) -> Dict[str, Any]:
        """The state file's content (JSON-ready): see the module docstring. Connection tables
        are the engines' snapshot blobs, base64, each with its SHA-256."""
        return encode_state(state_parts(self, final))

    def save_state(self, final: bool = False) -> bool:
        """Write the state file atomically (mode 0600), here and now (at shutdown). Never
        raises: a failed save is logged and counted (``saves.failed``)."""
        self._join_save()
        t0 = time.monotonic()
        try:
            parts = state_parts(self, final)
        except Exception as e:   # noqa: BLE001 - counted, and the data path goes on
            self._saved(None, t0, 0.0, e)
            return False
        return self._write_parts(parts, t0, time.monotonic() - t0)

    def save_in_background(self) -> bool:
        """The periodic save. Only the engines' snapshots (C, about 0.3 us a connection) are
        taken in the loop's thread; encoding, writing and fsync run in a thread of their own
        while the loop goes on forwarding (hp_dp_poll runs without the GIL). Measured at
        60,000 connections: the loop is held 16 ms for the snapshot, where the whole save held
        it about 0.2 s (87 ms of base64 and JSON, 70-120 ms of write and fsync to the run
        directory's ext4): at 175 kpps, more than the environment ring's 4,096 frames.
        False, and nothing started, while the previous save is still being written."""
        if self._save_thread is not None and self._save_thread.is_alive():
            return False
        t0 = time.monotonic()
        try:
            parts = state_parts(self, False)
        except Exception as e:   # noqa: BLE001
            self._saved(None, t0, 0.0, e)
            return False
        held = time.monotonic() - t0
        self._save_thread = threading.Thread(target=self._write_parts, args=(parts, t0, held),
                                             name="hyperplane-save", daemon=True)
        self._save_thread.start()
        return True

    def _join_save(self) -> None:
        if self._save_thread is not None:
            self._save_thread.join()
            self._save_thread = None

    def _write_parts(self, parts: Dict[str, Any], t0: float, held: float) -> bool:
        try:
            doc = encode_state(parts)
            write_state_file(self.state_file, doc)
        except Exception as e:   # noqa: BLE001
            self._saved(None, t0, held, e)
            return False
        self._saved(sum(k["connections"] for k in doc["keys"] + doc["nat_gateways"]), t0, held,
                    None, final=parts["final"])
        return True

    def _saved(self, n: Optional[int], t0: float, held: float, error: Optional[BaseException],
               final: bool = False) -> None:
        """Count one save (from whichever thread wrote it; the counters are plain ints, each
        written by the one save in flight)."""
        if error is not None:
            self.saves["failed"] += 1
            self.saves["last_error"] = f"{type(error).__name__}: {error}"
            log.error("saving the state to %s failed: %s", self.state_file, error)
            return
        self.saves["saved"] += 1
        self.saves["last_connections"] = n
        self.saves["last_seconds"] = round(time.monotonic() - t0, 6)
        self.saves["last_loop_seconds"] = round(held, 6)
        if final:
            log.info("state saved to %s: %d connection(s)", self.state_file, n)

    def _ignore(self, why: str) -> None:
        self.restore_report["ignored"] = why
        log.warning("restore: %s is ignored: %s; starting afresh", self.state_file, why)

    def _read_saved(self) -> Optional[Dict[str, Any]]:
        """The saved state if there is a usable one for this lab and plan (checked: format,
        version, lab, plan hash, the blobs' SHA-256), else None with the reason logged."""
        try:
            doc = read_state_file(self.state_file)
        except FileNotFoundError:
            log.info("restore: no state file %s; starting afresh", self.state_file)
            return None
        except (OSError, ValueError) as e:
            self._ignore(str(e))
            return None
        try:
            check_state_doc(doc, self.plan)
        except ValueError as e:
            self._ignore(str(e))
            return None
        same_boot = doc["boot_id"] == boot_id()
        self.offset = float(doc["offset"])
        self.dp.set_clock_offset(self.offset)
        # same boot: the clock ran on while we were down (that time is idle time, as for the
        # kernel's conntrack); another boot: the saved ages are kept
        shift = 0.0 if same_boot else self.now() - float(doc["saved_now"])
        self.restore_report.update(
            restored_from=self.state_file, final=bool(doc["final"]), same_boot=same_boot,
            shift=shift, saved_pid=doc["pid"], down_for=max(0.0, time.time() - doc["saved_wall"]),
            **dict.fromkeys(RESTORE_COUNTS, 0))
        return doc

    def _restore_failed(self, why: str) -> None:
        """A check that passed the file but failed while applying it: drop whatever was
        restored so far and start afresh."""
        for e, _ in self.engines():
            e.flush()
        self.restore_report.update(dict.fromkeys(RESTORE_COUNTS, 0))
        self.restore_report["restored_from"] = None
        self._ignore(why)

    def _restore_keys(self, doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The saved ENI keys: a key the plan does not have (a function update's) gets its
        link and engine back under the saved name and MAC, and every engine gets its ENIs in
        the saved order (index i of the saved table = index i here, as restore needs), all
        closed to new connections until the control plane opens them."""
        try:
            for i, k in enumerate(doc["keys"]):
                key = (k["key"][0], tuple(sorted(k["key"][1])))
                first = k["enis"][0]
                kg = self.keys.get(key)
                if kg is None:
                    if key[0] not in {s.id for s in self.plan.subnets}:
                        raise ValueError(f"keys[{i}]: subnet {key[0]!r} is not in the plan")
                    self._macs.add(k["mac"])
                    topology.add_eni_link(self.plan, key[0], k["ifname"], k["mac"])
                    seed = Eni(first["id"], ipv4=first["ipv4"], ipv6=first["ipv6"])
                    kg = self._add_key(key, k["ifname"], k["mac"], eni=seed)
                have = kg.engine.enis
                for j, x in enumerate(k["enis"]):
                    if j < len(have):
                        if (have[j].id, have[j].ipv4, have[j].ipv6) != \
                                (x["id"], x["ipv4"], x["ipv6"]):
                            raise ValueError(f"keys[{i}].enis[{j}]: {x['id']} is not this "
                                             f"lab's ENI {have[j].id}")
                        continue
                    kg.engine.add_eni(Eni(x["id"], ipv4=x["ipv4"], ipv6=x["ipv6"]))
                    kg.engine.set_eni_enabled(j, False)
                    kg.index[x["id"]] = j
        except Exception as e:   # noqa: BLE001 - whatever it was, the lab must still start
            self._restore_failed(f"ENI keys: {type(e).__name__}: {e}")
            return None
        return doc

    def _restore_tables(self, doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Every saved connection table into its engine (same ENIs, same ports, timers moved
        by the shift); the control plane's saved state, or None when restoring failed."""
        import base64

        now, shift = self.now(), self.restore_report["shift"]
        pairs = [(self.keys[(k["key"][0], tuple(sorted(k["key"][1])))].engine, k,
                  k["enis"][0]["id"]) for k in doc["keys"]]   # a key's table: its first ENI
        for n in doc["nat_gateways"]:
            if n["id"] not in self.natgw:
                self._restore_failed(f"NAT gateway {n['id']} is not in the plan")
                return None
            pairs.append((self.natgw[n["id"]], n, n["id"]))
        per_table = []
        try:
            for engine, k, what in pairs:
                got = engine.restore(base64.b64decode(k["blob"]), now, shift)
                per_table.append({"table": what, **{c: int(got.get(c, 0))
                                                    for c in RESTORE_COUNTS}})
                for c in RESTORE_COUNTS:
                    self.restore_report[c] += int(got.get(c, 0))
        except (ValueError, TypeError, AttributeError) as e:
            self._restore_failed(f"connection table: {e}")
            return None
        r = self.restore_report
        r["tables"] = per_table
        log.info("restore: %d connection(s) restored from %s (saved %s, down %.1f s, %s "
                 "boot; expired %d, ENI mismatch %d, duplicate %d, table full %d, invalid %d)",
                 r["restored"], self.state_file, "at shutdown" if r["final"] else "periodically",
                 r["down_for"], "same" if r["same_boot"] else "another", r["expired"],
                 r["eni_mismatch"], r["duplicate"], r["table_full"], r["invalid"])
        return doc["control_plane"]
