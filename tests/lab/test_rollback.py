"""A failed ``lab up`` rolls back exactly what it built: an injected failure at each build
stage, an interrupt, a data path that exits at once or fails after it started; ``lab up`` of
a lab that exists is refused and leaves it alone; a lab directory others may write, or one
left over, is refused; a half-built lab goes down with ``lab down``; a damaged state file is a
clear error.

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN (root; the folder is skipped otherwise). The tests bring up
(and break) labs of their own through hyperplane.lab.lifecycle, each under a fresh name
``tXXXXXX`` (kit.labs.lab_name), and every one of them is torn down in a finally
(kit.labs.destroy); the lab that must be left alone is the root conftest's ``dlab``. Only
198.18.0.0/15 and 2001:2::/48 are used.
"""
from __future__ import annotations

import os
import shutil
from typing import List

import pytest
from pyroute2 import netns as pr_netns

import hyperplane as hp
from hyperplane import cli, errors, labconfig, netns, paths, proc
from hyperplane import topology as hplab
from hyperplane.lab import lifecycle
from hyperplane.lab import status as lab_status
from hyperplane.topology import builder, nodes
from kit import traffic as nt
from kit.labs import assert_alive, destroy, lab_name, ours, root_links, udp_through_nat

NOBODY = 65534


# ---- 1. a failed `lab up` rolls back -------------------------------------------------------------
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


def test_lab_up_of_an_existing_lab_is_refused_and_leaves_it_alone(dlab):
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
    with nt.UdpEchoServer(dlab.server.netns, dlab.s4) as udp_echo:
        udp_through_nat(dlab, udp_echo, b"second-up")


# ---- 2. the lab directory, half-built labs, damaged state ----------------------------------------
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
