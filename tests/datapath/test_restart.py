"""Restart without loss: the data path saves its connection tables and control-plane state
(``<lab dir>/conntrack.state``) and a new data path restores them, so an open TCP stream goes on
through ``hyperplane lab restart`` with its bytes and its ENI port.

Unit tests (no root): the state file's round trip through JSON into a new engine (both
engines), its atomic 0600 write, the refusals (another lab, another plan, another version,
cut short, a corrupt table, a file others may write) each with its reason, and the control
plane's save/restore.

Lab tests (root; skipped without CAP_NET_ADMIN, FAIL without the compiled engine): a paced TCP
transfer (SHA-256 checked by the server) and a UDP flow from an environment to the VPC host
across ``hyperplane lab restart``; the same with ``--no-restore`` breaks, which shows the test
observes the feature; a corrupt state file is ignored with its reason and the lab still works;
``lab down`` removes the state file with the lab's directory. The labs are the pytest plugin's
(the root conftest's ``dlab`` and ``own_lab``): uniquely named, always taken down; only
198.18.0.0/15 is used.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import threading
import time
import types
from typing import Optional

import pytest

from hyperplane import EngineConfig, Eni, labconfig, netns, paths
from hyperplane.datapath import daemon, restore, statefile
from hyperplane.lab import lifecycle
from hyperplane.vpc import ControlPlane
from kit import frames as tl, traffic as nt
from kit.labs import NATGW, bare, cli_run, wait_until
from kit.vpc import Recorder

PLAN = labconfig.resolve(labconfig.default(), "tunit")
ENI0 = PLAN.enis[0]
KEY0 = (ENI0.subnet, tuple(sorted(ENI0.security_groups)))
ENV4 = PLAN.envs[0].ipv4.split("/")[0]
HOST4 = PLAN.hosts[0].ipv4.split("/")[0]


# ---- unit: the state file -----------------------------------------------------------------------
def plan_engine(engine_cls):
    """An engine with the plan's ENI (as the daemon builds a key's engine)."""
    return engine_cls(EngineConfig(enis=[Eni(ENI0.id, ipv4=ENI0.ipv4, ipv6=ENI0.ipv6)],
                                   port_min=536), clock=tl.no_clock)


def with_connections(engine):
    """An established TCP connection and a replied UDP flow, at t = 10..12."""
    out = engine.outbound(tl.tcp(4, ENV4, HOST4, 40001, 5201, "S"), now=10.0).packet
    port = tl.fields(out).sport
    engine.inbound(tl.tcp(4, HOST4, ENI0.ipv4, 5201, port, "SA", seq=5000, ack=1001), now=10.1)
    engine.outbound(tl.tcp(4, ENV4, HOST4, 40001, 5201, "A", seq=1001, ack=5001), now=10.2)
    out = engine.outbound(tl.udp(4, ENV4, HOST4, 40002, 53, payload=b"q"), now=11.0).packet
    engine.inbound(tl.udp(4, HOST4, ENI0.ipv4, 53, tl.fields(out).sport, payload=b"a"),
                   now=11.5)
    return engine


def state_doc(engine, cp, now=12.0, plan=PLAN):
    """Daemon.state_doc of a data path with one key (this engine) and this control plane."""
    kg = types.SimpleNamespace(key=KEY0, ifname=ENI0.node_ifname, mac=ENI0.mac, engine=engine)
    fake = types.SimpleNamespace(keys={KEY0: kg}, natgw={}, plan=plan, now=lambda: now,
                                 offset=0.0, cp=cp)
    return daemon.Daemon.state_doc(fake, final=True)


def rows(engine, now):
    return sorted((r.proto, r.orig, r.reply, r.state, r.eni, r.packets_orig, r.bytes_orig,
                   r.packets_reply, r.bytes_reply) for r in engine.entries(now=now))


@pytest.fixture
def saved(engine_cls, tmp_path):
    """A state file written from an engine with two connections: (path, engine, doc)."""
    engine = with_connections(plan_engine(engine_cls))
    cp = ControlPlane(PLAN, Recorder(), 0.0, initial_active=True)
    doc = state_doc(engine, cp)
    path = str(tmp_path / "conntrack.state")
    statefile.write_state_file(path, doc)
    return path, engine, doc


def test_state_file_round_trip_restores_every_connection(saved, engine_cls):
    path, engine, _ = saved
    doc = statefile.read_state_file(path)
    statefile.check_state_doc(doc, PLAN)
    assert doc["final"] is True and doc["lab"] == "tunit" and doc["boot_id"] == statefile.boot_id()
    (table,) = doc["keys"]
    assert table["connections"] == 2
    assert [x["id"] for x in table["enis"]] == [ENI0.id]
    fresh = plan_engine(engine_cls)
    got = fresh.restore(base64.b64decode(table["blob"]), 20.0, 0.0)
    assert got["restored"] == 2 and sum(got.values()) == 2, got
    assert rows(fresh, 20.0) == rows(engine, 20.0)
    assert len(rows(fresh, 20.0)) == 2


def saving_daemon(engine, cp, state_file):
    """Just enough of a Daemon for its save methods: one key (this engine), this control
    plane, the state file."""
    kg = types.SimpleNamespace(key=KEY0, ifname=ENI0.node_ifname, mac=ENI0.mac, engine=engine)
    d = types.SimpleNamespace(keys={KEY0: kg}, natgw={}, plan=PLAN, now=lambda: 12.0,
                              offset=0.0, cp=cp, state_file=state_file, _save_thread=None,
                              saves={"saved": 0, "failed": 0, "last_error": None,
                                     "last_connections": 0, "last_seconds": None,
                                     "last_loop_seconds": None})
    for name in ("save_state", "save_in_background", "_join_save", "_write_parts", "_saved"):
        setattr(d, name, types.MethodType(getattr(daemon.Daemon, name), d))
    return d


@pytest.fixture
def held_writer(monkeypatch):
    """write_state_file made to wait until the test lets it go: (started, release)."""
    started, release = threading.Event(), threading.Event()
    real = statefile.write_state_file

    def write(path, doc):
        started.set()
        assert release.wait(30), "the test never released the writer"
        real(path, doc)

    monkeypatch.setattr(restore, "write_state_file", write)
    return started, release


def test_periodic_save_writes_in_a_thread_of_its_own(engine_cls, tmp_path, held_writer):
    started, release = held_writer
    engine = with_connections(plan_engine(engine_cls))
    cp = ControlPlane(PLAN, Recorder(), 0.0, initial_active=True)
    path = str(tmp_path / "conntrack.state")
    d = saving_daemon(engine, cp, path)
    assert d.save_in_background() is True
    assert started.wait(10)
    # the loop goes on while the file is written: the engine takes a new connection, and a
    # second save is not started on top of the first
    engine.outbound(tl.udp(4, ENV4, HOST4, 40003, 53, payload=b"x"), now=12.0)
    assert d.save_in_background() is False
    assert not os.path.exists(path) and d.saves["saved"] == 0
    release.set()
    d._join_save()
    assert d.saves["saved"] == 1 and d.saves["failed"] == 0
    assert d.saves["last_connections"] == 2 and d.saves["last_loop_seconds"] is not None
    doc = statefile.read_state_file(path)
    statefile.check_state_doc(doc, PLAN)
    assert doc["final"] is False
    fresh = plan_engine(engine_cls)           # the tables as they were when the save began
    got = fresh.restore(base64.b64decode(doc["keys"][0]["blob"]), 20.0, 0.0)
    assert got["restored"] == 2, got
    assert d.save_in_background() is True     # the next one may start
    d._join_save()
    assert d.saves["saved"] == 2 and d.saves["last_connections"] == 3


def test_final_save_waits_for_the_periodic_one(engine_cls, tmp_path, held_writer):
    started, release = held_writer
    engine = with_connections(plan_engine(engine_cls))
    d = saving_daemon(engine, ControlPlane(PLAN, Recorder(), 0.0, initial_active=True),
                      str(tmp_path / "conntrack.state"))
    assert d.save_in_background()
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    assert d.save_state(final=True) is True   # joins the periodic save, then writes its own
    assert d.saves["saved"] == 2
    assert statefile.read_state_file(d.state_file)["final"] is True


def test_a_failed_background_save_is_counted_not_raised(engine_cls, tmp_path):
    engine = with_connections(plan_engine(engine_cls))
    d = saving_daemon(engine, ControlPlane(PLAN, Recorder(), 0.0, initial_active=True),
                      str(tmp_path / "no-such-dir" / "conntrack.state"))
    assert d.save_in_background()
    d._join_save()
    assert d.saves["saved"] == 0 and d.saves["failed"] == 1
    assert "FileNotFoundError" in d.saves["last_error"]


def test_state_file_is_written_atomically_and_root_only(saved, tmp_path):
    path, engine, doc = saved
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    with open(path, "w") as f:   # an older, looser file is replaced, not rewritten in place
        f.write("old")
    os.chmod(path, 0o644)
    before = os.stat(path).st_ino
    statefile.write_state_file(path, doc)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_ino != before
    assert sorted(os.listdir(tmp_path)) == ["conntrack.state"], "a temp file was left"
    assert statefile.read_state_file(path) == json.loads(json.dumps(doc))


def _other_plan():
    import dataclasses
    return dataclasses.replace(PLAN, lifecycle=dataclasses.replace(PLAN.lifecycle,
                                                                   ports_per_eni=60000))


def _flip_blob(d):
    blob = bytearray(base64.b64decode(d["keys"][0]["blob"]))
    blob[-5] ^= 0xFF
    d["keys"][0]["blob"] = base64.b64encode(bytes(blob)).decode()


REFUSALS = {
    "other-lab": (lambda d: d.update(lab="tother"), "belongs to lab 'tother'"),
    "other-format": (lambda d: d.update(format="something"), "not a state file"),
    "newer-version": (lambda d: d.update(version=99), "version 99"),
    "corrupt-table": (_flip_blob, "SHA-256 does not match"),
    "not-base64": (lambda d: d["keys"][0].update(blob="%%%"), "not base64"),
    "no-tables": (lambda d: d.pop("keys"), "keys: expected a list"),
    "bad-offset": (lambda d: d.update(offset="soon"), "offset"),
    "negative-offset": (lambda d: d.update(offset=-5.0), "offset"),
    "infinite-time": (lambda d: d.update(saved_now=float("inf")), "saved_now"),
    "no-control-plane": (lambda d: d.pop("control_plane"), "control_plane"),
}


@pytest.mark.parametrize("what", list(REFUSALS))
def test_a_mismatched_or_damaged_state_is_refused_with_its_reason(saved, what):
    path, _, doc = saved
    doc = json.loads(json.dumps(doc))
    damage, words = REFUSALS[what]
    damage(doc)
    statefile.write_state_file(path, doc)
    with pytest.raises(ValueError, match=words):
        statefile.check_state_doc(statefile.read_state_file(path), PLAN)


def test_a_state_saved_by_another_plan_is_refused(saved):
    path, _, _ = saved
    with pytest.raises(ValueError, match="another lab plan"):
        statefile.check_state_doc(statefile.read_state_file(path), _other_plan())


@pytest.mark.parametrize("content", [b"", b"{\"format\": \"hyperplane-conn", b"\xff\xfe",
                                     b"[1, 2]"], ids=["empty", "cut-short", "binary", "list"])
def test_a_file_that_is_no_state_file_is_refused(tmp_path, content):
    path = tmp_path / "conntrack.state"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match="not a state file"):
        statefile.read_state_file(str(path))


def test_a_state_file_others_may_write_is_refused(saved):
    path, _, _ = saved
    os.chmod(path, 0o666)
    with pytest.raises(ValueError, match="only root may write it"):
        statefile.read_state_file(path)


def test_a_bad_table_is_a_clear_value_error_from_the_engine(engine_cls):
    with pytest.raises(ValueError, match="snapshot"):
        plan_engine(engine_cls).restore(b"not a snapshot at all", 1.0, 0.0)


# ---- unit: the control plane --------------------------------------------------------------------
def test_control_plane_comes_back_active_on_the_same_enis():
    """Functions Active (no new creation delay), the same ENIs with the same ids, a function
    updated to another key on its new ENI, the old one retired, and only the effects that
    state implies."""
    cp = ControlPlane(PLAN, Recorder(), 0.0)
    delay = PLAN.lifecycle.eni_create_delay
    cp.tick(delay + 0.1)
    fn = PLAN.functions[0].name
    sg = PLAN.security_groups[-1].id
    cp.update_function(fn, security_group_ids=[sg], now=delay + 1)
    cp.tick(2 * delay + 2)
    cp.tick(2 * delay + 3)
    saved = json.loads(json.dumps(cp.save()))
    fx = Recorder()
    now = 2 * delay + 4
    cp2 = ControlPlane(PLAN, fx, now, restored=saved)
    assert cp2.function_list(now) == cp.function_list(now)
    assert cp2.eni_list(now) == cp.eni_list(now)
    assert all(f["state"] == "Active" for f in cp2.function_list(now))
    active = [e[1] for e in fx.events if e[0] == "active"]
    assert active == [e.id for e in cp.enis.values()
                      if e.state in ("available", "in-use", "deleting")]
    assert len(cp.enis) >= 2 or len(PLAN.security_groups) == 1
    envs = {e[1]: (e[2], e[3]) for e in fx.events if e[0] == "env"}
    assert envs == {env: (st, key) for env, (st, key) in cp._env_seen.items()}
    assert cp2.counters == cp.counters


def test_a_foreign_control_plane_state_is_refused_before_any_effect():
    cp = ControlPlane(PLAN, Recorder(), 0.0, initial_active=True)
    saved = json.loads(json.dumps(cp.save()))
    saved["functions"][0]["envs"] = ["someone-else"]
    fx = Recorder()
    with pytest.raises(ValueError, match="not this lab's"):
        ControlPlane(PLAN, fx, 1.0, restored=saved)
    assert fx.events == []
    saved = json.loads(json.dumps(cp.save()))
    saved["enis"][0]["state"] = "exploded"
    with pytest.raises(ValueError, match=r"enis\[0\]\.state"):
        ControlPlane(PLAN, Recorder(), 1.0, restored=saved)


def test_another_boot_keeps_the_ages():
    """shift moves every saved time (a reboot resets CLOCK_MONOTONIC; ages are kept)."""
    cp = ControlPlane(PLAN, Recorder(), 1000.0, initial_active=True)
    saved = json.loads(json.dumps(cp.save()))
    cp2 = ControlPlane(PLAN, Recorder(), 5.0, restored=saved, shift=-995.0)
    assert [e.created_at for e in cp2.enis.values()] == [5.0] * len(cp2.enis)
    assert {f.last_used for f in cp2.functions.values()} == {5.0}


# ---- lab: a live stream across `hyperplane lab restart` -----------------------------------------
@pytest.fixture(scope="module")
def rlab(dlab):
    """The module's default lab (the root conftest's)."""
    return dlab


class PacedSender(threading.Thread):
    """The client side of kit.traffic's TCP protocol (8-byte length, the bytes, then the
    server's SHA-256), sending at about ``rate`` bytes/s from namespace ``ns`` so that the
    transfer spans a restart. ``op_timeout`` bounds every socket call."""

    def __init__(self, ns: str, addr: str, port: int, data: bytes, rate: float,
                 op_timeout: float):
        super().__init__(daemon=True)
        self.ns, self.addr, self.port, self.data = ns, addr, port, data
        self.rate, self.op_timeout = rate, op_timeout
        self.sent = 0
        self.local = None
        self.digest: Optional[bytes] = None
        self.error: Optional[str] = None
        self.connected = threading.Event()

    def run(self):
        with netns.entered(self.ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(self.op_timeout)
            s.connect((self.addr, self.port))
            self.local = s.getsockname()
            self.connected.set()
            s.sendall(nt.HEADER.pack(len(self.data)))
            t0 = time.monotonic()
            chunk = 32 << 10
            for i in range(0, len(self.data), chunk):
                s.sendall(self.data[i:i + chunk])
                self.sent = i + len(self.data[i:i + chunk])
                ahead = self.sent / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            got = b""
            while len(got) < nt.DIGEST_LEN:
                part = s.recv(nt.DIGEST_LEN - len(got))
                if not part:
                    raise ConnectionError(f"server closed after {len(got)} digest bytes")
                got += part
            self.digest = got
        except (OSError, ConnectionError) as e:
            self.error = f"{type(e).__name__}: {e} after {self.sent} bytes"
        finally:
            self.connected.set()
            s.close()


def conntrack_row(lab, sport: int, proto: str = "tcp"):
    for r in lab.ask("conntrack")["entries"]:
        if r["proto"] == proto and r["orig"]["sport"] == sport:
            return r
    return None


def restart(lab, *extra: str) -> dict:
    t0 = time.monotonic()
    r = cli_run("lab", "restart", "--name", lab.name, "--json", *extra, timeout=60)
    assert r.returncode == 0, f"lab restart failed ({r.returncode}): {r.stderr}"
    rep = json.loads(r.stdout)
    rep["took"] = time.monotonic() - t0
    lab.pid = rep["pid"]
    return rep


def udp_socket(lab, env):
    with netns.entered(env.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((env.ipv4.split("/")[0], 0))
    return s


def udp_exchange(s, dst, msg: bytes, tries: int = 3) -> int:
    """Send until echoed (at most ``tries`` sends, 2 s each); returns the sends it took."""
    for n in range(1, tries + 1):
        s.sendto(msg, dst)
        s.settimeout(2.0)
        with contextlib.suppress(socket.timeout):
            while True:
                data, peer = s.recvfrom(65535)
                if data == msg and peer == dst:
                    return n
    raise AssertionError(f"no echo of {msg!r} from {dst} after {tries} sends")


SIZE = 6_000_000
RATE = 1_500_000.0


def test_tcp_stream_and_udp_flow_survive_lab_restart(rlab):
    lab = rlab
    env = lab.env("fn-a-0")     # on a TAP: the new data path opens the same persistent TAP
    data = nt.payload(SIZE, seed=41)
    with nt.TcpServer(lab.server.netns, lab.s4, idle_timeout=40) as srv, \
            nt.UdpEchoServer(lab.server.netns, lab.s4) as usrv:
        us = udp_socket(lab, env)
        try:
            dst = (usrv.addr, usrv.port)
            sends = udp_exchange(us, dst, b"before restart")
            snd = PacedSender(env.netns, srv.addr, srv.port, data, RATE, op_timeout=20)
            snd.start()
            assert snd.connected.wait(10) and snd.local, snd.error
            wait_until(lambda: snd.sent >= 1_000_000 or snd.error, 15, "1 MB sent")
            assert snd.error is None, snd.error
            before = conntrack_row(lab, snd.local[1])
            assert before and before["state"] == "ESTABLISHED", before
            port_before = before["reply"]["dport"]
            udp_before = conntrack_row(lab, us.getsockname()[1], "udp")
            sent_at_stop = snd.sent

            rep = restart(lab)

            assert sent_at_stop < SIZE, "the transfer ended before the restart"
            r = rep["restore"]
            assert rep["stopped_pid"] and rep["saved"]["final"] is True, rep
            assert rep["saved"]["pid"] == rep["stopped_pid"], rep
            assert r["restored_from"] and r["same_boot"] is True, r
            assert r["restored"] >= 2, f"TCP and UDP should be restored: {r}"
            assert r["eni_mismatch"] == r["invalid"] == r["table_full"] == 0, r
            after = conntrack_row(lab, snd.local[1])
            assert after is not None, "the TCP connection is not in the new data path's table"
            assert after["reply"]["dport"] == port_before

            sends += udp_exchange(us, dst, b"after restart")
            snd.join(60)
            assert not snd.is_alive(), "the sender did not finish within 60 s"
            assert snd.error is None, f"the stream broke across the restart: {snd.error}"
            assert snd.digest == nt.sha256(data), "the server hashed other bytes than sent"
            conns = srv.wait_connections(1, timeout=10)
            assert len(conns) == 1, f"the server saw {len(conns)} connections: {conns}"
            peer, digest, nbytes, err = conns[0]
            assert err is None and nbytes == SIZE and digest == nt.sha256(data)
            assert peer == (lab.eni.ipv4, port_before), \
                f"the server saw {peer}, not one connection from {lab.eni.ipv4}:{port_before}"

            seen = {d.data: d.peer for d in usrv.datagrams}
            assert seen[b"before restart"] == seen[b"after restart"], seen
            assert seen[b"before restart"][0] == lab.eni.ipv4
            assert udp_before and seen[b"before restart"][1] == udp_before["reply"]["dport"]
            udp_after = conntrack_row(lab, us.getsockname()[1], "udp")
            # the restored entry kept its counters: every datagram of both daemons is in it
            assert udp_after["packets_orig"] == sends, (udp_after, sends)
        finally:
            us.close()
    st = os.stat(paths.conntrack_state_path(lab.name))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    print(f"restart took {rep['took']:.2f} s (CLI, stop to answering); restored "
          f"{r['restored']}; {sent_at_stop} of {SIZE} bytes sent at the restart")


def test_without_restore_the_same_stream_breaks(rlab):
    """The control: `lab restart --no-restore` starts a data path with an empty table; the
    stream's next segments are no SYN (dropped: tcp_not_syn) and the server's are unsolicited,
    so it stalls and the sender times out. The restore above is what keeps it alive."""
    lab = rlab
    env = lab.env("fn-a-0")
    data = nt.payload(SIZE, seed=42)
    with nt.TcpServer(lab.server.netns, lab.s4, idle_timeout=40) as srv:
        snd = PacedSender(env.netns, srv.addr, srv.port, data, RATE, op_timeout=8)
        snd.start()
        assert snd.connected.wait(10) and snd.local, snd.error
        wait_until(lambda: snd.sent >= 1_000_000 or snd.error, 15, "1 MB sent")
        assert snd.error is None, snd.error
        rep = restart(lab, "--no-restore")
        r = rep["restore"]
        assert r["restored_from"] is None and "switched off" in r["ignored"], r
        snd.join(40)
        assert not snd.is_alive(), "the sender neither finished nor failed within 40 s"
        assert snd.error is not None and snd.digest is None, \
            "without restore the stream should break, but it completed"
        assert conntrack_row(lab, snd.local[1]) is None
        drops = lab.counters()["enis"][0]["drops"]
        assert drops["tcp_not_syn"] + drops["unsolicited"] > 0, drops
        assert not srv.completed
        # a new connection works after the fresh start
        small = nt.payload(100_000, seed=43)
        digest, _ = nt.tcp_send(env.netns, srv.addr, srv.port, small, timeout=15)
        assert digest == nt.sha256(small)


def test_a_corrupt_state_file_is_ignored_and_lab_down_removes_it(own_lab):
    with own_lab() as lab:
        state, _ = lifecycle.load_lab(lab.name)
        rep = lifecycle.stop_datapath(lab.name, state)
        assert rep["stopped_pid"] and rep["saved"]["final"] is True
        path = paths.conntrack_state_path(lab.name)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        r = cli_run("lab", "restart", "--name", lab.name)
        assert r.returncode == 0, r.stderr
        assert "no data path was running" in r.stdout
        assert "started afresh" in r.stdout and "cut short" in r.stdout, r.stdout
        lab.pid = json.loads(cli_run("lab", "status", "--name", lab.name, "--json").stdout)["pid"]
        assert "is ignored" in open(os.path.join(paths.lab_dir(lab.name), "datapath.log")).read()
        with nt.UdpEchoServer(lab.server.netns, lab.s4) as usrv:
            reply, _ = nt.udp_roundtrip(lab.env("fn-b-0").netns, usrv.addr, usrv.port,
                                        b"after a corrupt state file", timeout=6)
            assert reply == b"after a corrupt state file"
        assert os.path.exists(path)
        r = cli_run("lab", "down", "--name", lab.name)
        assert r.returncode == 0, r.stderr
        assert not os.path.exists(path) and not os.path.exists(paths.lab_dir(lab.name))


# ---- lab: a function moved to a new ENI key, and a NAT gateway, across a restart -------------------
def _natgw_lab_text() -> str:
    text = NATGW.replace("idle_timeout = 2", "idle_timeout = 300")
    assert text != NATGW
    return text + """
[lifecycle]
eni_create_delay = 0.5

[[security_groups]]
id = "sg-0e0f0a0b"
"""


def test_an_updated_function_and_a_nat_gateway_connection_survive(own_lab):
    """fn-a is updated to another security group: a new ENI key, whose link the old data path
    added at run time. Across the restart the function stays Active on that ENI (no new
    creation delay), the ENI list is the same, and a TCP connection through that ENI and the
    NAT gateway to an internet host keeps going (both tables restored)."""
    with own_lab(_natgw_lab_text()) as lab:
        lab.ask("function_update", name="fn-a", security_group_ids=["sg-0e0f0a0b"])
        wait_until(lambda: (lambda f: f["state"] == "Active" and f["last_update_status"]
                            == "Successful")(lab.functions()["fn-a"]), 10, "the update")
        fn_before = lab.functions()["fn-a"]
        enis_before = [(e["id"], e["state"], e["ipv4"]) for e in lab.enis()]
        new_eni = fn_before["enis"][0]
        assert new_eni != lab.plan.enis[0].id, "the update should move fn-a to a new ENI"
        web = lab.plan.internet_hosts[0]
        w4 = bare(web.ipv4)
        ready, held = threading.Event(), []

        def serve():
            with netns.entered(web.netns):
                ls = socket.socket()
            ls.bind((w4, 8090))
            ls.listen(1)
            ls.settimeout(15)
            ready.set()
            with ls:
                c, peer = ls.accept()
                held.append((c, peer))

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert ready.wait(5)
        with netns.entered(lab.env("fn-a").netns):
            cs = socket.socket()
        cs.settimeout(10)
        try:
            cs.connect((w4, 8090))
            cs.sendall(b"ping")
            t.join(10)
            assert held and held[0][0].recv(4) == b"ping"
            held[0][0].settimeout(10)
            assert held[0][1][0] == lab.plan.nat_gateways[0].public_ipv4

            rep = restart(lab)

            r = rep["restore"]
            tables = {x["table"]: x["restored"] for x in r["tables"]}
            assert tables.get(lab.plan.nat_gateways[0].id) == 1, r
            assert r["restored"] >= 2, r
            fn_after = lab.functions()["fn-a"]
            assert fn_after["state"] == "Active" and fn_after["enis"] == fn_before["enis"]
            assert [(e["id"], e["state"], e["ipv4"]) for e in lab.enis()] == enis_before
            # the connection goes on both ways
            cs.sendall(b"after")
            assert held[0][0].recv(5) == b"after"
            held[0][0].sendall(b"back")
            assert cs.recv(4) == b"back"
            # and a new connection leaves from the new ENI through the NAT gateway
            with nt.TcpServer(web.netns, w4, 8080) as srv:
                nt.tcp_send(lab.env("fn-a").netns, w4, 8080, b"n" * 50_000, verify=True,
                            timeout=15)
                assert srv.connections[0].peer[0] == lab.plan.nat_gateways[0].public_ipv4
        finally:
            cs.close()
            for c, _ in held:
                c.close()
