"""A lab's lifecycle through the command line (``lab up``, ``status --json``, ``exec``, ``down``
twice: every namespace, link, file and process of it gone, no zombie left) and a data path that
gets SIGTERM (it saves, stops cleanly and gives the links back to the node's kernel).

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN and /dev/net/tun (root: the folder is skipped otherwise), and
the compiled engine. ``lab up`` through the CLI is under test here, so that lab is brought up
by hand (kit.labs.lab_name) and torn down in a finally (kit.labs.destroy); the SIGTERM test's
lab is the root conftest's ``own_lab``. Only the benchmark ranges are used.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import time
from typing import List

from pyroute2 import IPRoute

from hyperplane import netns, paths, proc
from hyperplane import topology as hplab
from kit.labs import cli_run, destroy, lab_name, ours, root_links, wait_until


# ---- the CLI lifecycle --------------------------------------------------------------------------
def _check_status_shape(st: dict, name: str) -> None:
    assert st["name"] == name
    assert isinstance(st["pid"], int) and st["pid"] > 1
    assert st["running"] is True
    assert isinstance(st["nodes"], list) and st["nodes"]
    for n in st["nodes"]:
        assert {"name", "role", "netns", "addresses"} <= set(n), n
        assert n["role"] in ("env", "hyperplane", "host"), n
        assert n["netns"].startswith(f"hp-{name}-"), n
        assert isinstance(n["addresses"], list)
        for a in n["addresses"]:
            ipaddress.ip_interface(a)
    roles = sorted(n["role"] for n in st["nodes"])
    assert roles == ["env", "env", "host", "hyperplane"], roles
    assert isinstance(st["enis"], list) and len(st["enis"]) == 1
    for e in st["enis"]:
        assert {"id", "subnet", "addresses"} <= set(e), e
        assert e["id"].startswith("eni-")
        assert sorted(e["addresses"]) == sorted(["198.18.1.4", "2001:2:0:1::4"])
    envs = {n["name"]: n for n in st["nodes"] if n["role"] == "env"}
    assert envs["fn-b-0"]["addresses"][0] == "198.19.0.6/30"


def test_cli_lifecycle(run_dir):
    name = lab_name()
    links_before = root_links()
    pid = None
    try:
        r = cli_run("lab", "up", "--name", name)
        assert r.returncode == 0, f"lab up: {r.returncode}\n{r.stdout}\n{r.stderr}"
        # the default lab's idle reclaim is said, on one line (issue 16)
        note = [line for line in r.stdout.splitlines() if "reclaimed" in line]
        assert len(note) == 1 and "idle for 600 s" in note[0] and "new address" in note[0]
        assert len(ours(name)) == 5
        r = cli_run("lab", "status", "--name", name, "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        _check_status_shape(st, name)
        pid = st["pid"]
        assert proc.pid_alive(pid)
        r = cli_run("lab", "exec", "fn-b-0", "--name", name, "--", "ip", "-br", "addr")
        assert r.returncode == 0, r.stderr
        assert "198.19.0.6" in r.stdout, r.stdout
        r = cli_run("lab", "down", "--name", name)
        assert r.returncode == 0, r.stderr
        assert f"lab {name} down" in r.stdout
        assert ours(name) == []
        # the data path was the (exited) `lab up` process's child: it must be gone, and in
        # any case not linger as a zombie child of ours
        wait_until(lambda: not proc.pid_alive(pid), 3.0, f"data path pid {pid} to go")
        with contextlib.suppress(ChildProcessError):
            assert os.waitpid(pid, os.WNOHANG)[0] == 0, "an unreaped child of ours"
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            assert int(fields[1]) != os.getpid(), f"pid {pid} is a zombie child of ours"
        except FileNotFoundError:
            pass
        assert not os.path.exists(paths.lab_dir(name))
        assert root_links() == links_before
        r = cli_run("lab", "down", "--name", name)
        assert r.returncode == 0, r.stderr
        assert "nothing to do" in r.stdout
    finally:
        destroy(name)


# ---- SIGTERM ------------------------------------------------------------------------------------
def test_sigterm_stops_the_data_path_cleanly(own_lab):
    from hyperplane.datapath import steal

    lab = own_lab()
    pid = lab.pid
    assert proc.pid_alive(pid) and lab.ask("ping")["pid"] == pid
    veths = [lab.eni.node_ifname] + [e.node_ifname for e in lab.plan.envs if e.attach == "veth"]

    def filtered() -> List[bool]:
        with netns.entered(lab.plan.node_ns):
            ipr = IPRoute()
        with ipr:
            return [steal.stolen(ifname, ipr) for ifname in veths]

    assert filtered() == [True] * len(veths)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not proc.pid_alive(pid), 3.0, f"data path {pid} to exit after SIGTERM")
    took = time.monotonic() - t0
    with contextlib.suppress(ChildProcessError):
        _, status = os.waitpid(pid, 0)  # our child (lab_up ran here): reap it
        assert os.waitstatus_to_exitcode(status) == 0, status
    with open(os.path.join(paths.lab_dir(lab.name), "datapath.log")) as f:
        log = f.read()
    assert "data path stopped (SIGTERM)" in log, log[-2000:]
    assert took < 3.0
    assert not os.path.exists(paths.control_path(lab.name)), "control socket left behind"
    # the links are as the lab built them: the node's kernel sees their frames again
    assert filtered() == [False] * len(veths)
    rep = hplab.teardown(lab.name)
    assert sorted(rep["removed_namespaces"]) == sorted(lab.plan.namespaces())
    assert ours(lab.name) == []


def test_the_builders_teardown_stops_the_workloads_service_and_removes_the_code(own_lab):
    """hyperplane.topology.teardown (what the bench and the test kit call, not `lab down`)
    stops both of the lab's processes by their recorded pids and removes the functions' code
    folders: nothing of the lab keeps running."""
    lab = own_lab()
    meta, _ = lab.lab.invoke("fn-a")                  # a warm runtime in fn-a-0
    assert meta["StatusCode"] == 200
    st = lab.lab.status()["workloads"]
    runtime = next(e["pid"] for e in st["environments"] if e["environment"] == "fn-a-0")
    assert paths.function_code_dirs(lab.name)
    rep = hplab.teardown(lab.name)
    assert rep["stopped_pid"] and ours(lab.name) == []
    for pid in (st["pid"], runtime):
        wait_until(lambda: not proc.pid_alive(pid), 5, f"process {pid} to be gone")
    assert paths.function_code_dirs(lab.name) == []
