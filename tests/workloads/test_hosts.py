"""A host's service (hyperplane.workloads.hosts.HostService): it runs in the host's namespace
with the HYPERPLANE_* environment, is restarted with a growing backoff when it exits, and is
stopped by its process group. Every test needs a network namespace of its own, so the module
is skipped, naming the capability, where one cannot be made."""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from typing import Callable, Iterator

import pytest

from hyperplane import netns
from hyperplane.labconfig import HostPlan
from hyperplane.workloads.hosts import HostService

#: Restart delays small enough for a test: 0.05, 0.1, 0.2, 0.4, 0.4 ...
FAST = (0.05, 0.4)


@pytest.fixture(scope="module", autouse=True)
def _needs_namespaces() -> None:
    why = netns.privilege_problem()
    if why:
        pytest.skip(f"a host's namespace {why}")


@pytest.fixture
def host_ns() -> Iterator[str]:
    """A namespace of this test's own (``ip netns add``), deleted afterwards whatever
    happened."""
    ns = f"hp-t{secrets.token_hex(4)}-h"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.fixture
def service(host_ns, tmp_path) -> Iterator[Callable[..., HostService]]:
    """Factory: ``service(command, **keywords)`` is a HostService of host "db" in ``host_ns``
    (config folder tmp_path/cfg, host folder tmp_path/host); each is stopped afterwards."""
    made = []
    (tmp_path / "cfg").mkdir()

    def make(command, environment=None, **kw) -> HostService:
        host = HostPlan(name="db", netns=host_ns, ifname="eth0", subnet="subnet-a",
                        ipv4="198.18.1.5/24", ipv6="2001:2:0:1::5/64", gw4="198.18.1.1",
                        gw6="2001:2:0:1::1", fabric_ifname="host0", command=list(command),
                        environment=dict(environment or {}), config_dir=str(tmp_path / "cfg"))
        s = HostService("tlab", host, str(tmp_path / "db.log"), str(tmp_path / "host"), **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop(timeout=1.0)


def wait_for(cond, timeout=10.0, poll=None):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        if poll is not None:
            poll.poll(time.monotonic())
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:      # a zombie of someone else's is gone for us
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_command_runs_in_the_namespace_with_the_host_environment(service, host_ns,
                                                                      tmp_path):
    script = ('d="$HYPERPLANE_HOST_DIR"; env > "$d/env.tmp"; ip -br addr > "$d/addr.txt"; '
              'readlink /proc/self/ns/net > "$d/ns.txt"; pwd > "$d/pwd.txt"; '
              'mv "$d/env.tmp" "$d/env.txt"; exec sleep 1000')
    s = service(["/bin/sh", "-c", script], environment={"DB_NAME": "lab", "LANG": "C"},
                backoff=FAST)
    s.start()
    host = tmp_path / "host"
    wait_for((host / "env.txt").exists)
    assert oct(host.stat().st_mode & 0o777) == "0o755"
    env = dict(line.split("=", 1) for line in (host / "env.txt").read_text().splitlines()
               if "=" in line)
    assert env["HYPERPLANE_LAB"] == "tlab"
    assert env["HYPERPLANE_HOST"] == "db"
    assert env["HYPERPLANE_HOST_DIR"] == env["HOME"] == str(host)
    assert env["HYPERPLANE_HOST_IPV4"] == "198.18.1.5"
    assert env["HYPERPLANE_HOST_IPV6"] == "2001:2:0:1::5"
    assert env["HYPERPLANE_CONFIG_DIR"] == str(tmp_path / "cfg")
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["DB_NAME"] == "lab"
    assert env["LANG"] == "C", "the host's own environment comes last"
    assert not any(k.startswith("PYTEST") for k in env), "the caller's environment leaked"
    # it ran in the namespace: that namespace's inode, and only its loopback
    ino = os.stat(netns.path(host_ns)).st_ino
    assert (host / "ns.txt").read_text().strip() == f"net:[{ino}]"
    assert [line.split()[0] for line in (host / "addr.txt").read_text().splitlines()] == ["lo"]
    assert (host / "pwd.txt").read_text().strip() == str(tmp_path / "cfg")
    log = (tmp_path / "db.log").read_text()
    assert log.startswith("[hyperplane] ") and " starting: /bin/sh -c " in log.splitlines()[0]


def test_an_exiting_command_is_restarted_with_a_growing_backoff(service, tmp_path):
    s = service(["/bin/sh", "-c", "echo ran; exit 3"], backoff=FAST)
    s.start()
    wait_for(lambda: s.status()["restarts"] >= 4, poll=s)
    st = s.status()
    assert st["last_exit"] == 3
    log = (tmp_path / "db.log").read_text()
    assert "[hyperplane] command exited with status 3; restarting in 0.05 s" in log
    assert "restarting in 0.1 s" in log and "restarting in 0.2 s" in log
    assert log.count(" starting: ") == st["restarts"] + 1
    assert log.count("ran\n") >= 4, "its output goes to the log"


def test_the_backoff_stays_short_for_a_command_that_ran_a_while(service, tmp_path):
    s = service(["/bin/sh", "-c", "sleep 0.15; exit 3"], backoff=FAST, stable_after=0.1)
    s.start()
    wait_for(lambda: s.status()["restarts"] >= 3, poll=s)
    log = (tmp_path / "db.log").read_text()
    assert "restarting in 0.1 s" not in log
    assert log.count("restarting in 0.05 s") >= 3


def test_the_backoff_is_capped(service, tmp_path):
    s = service(["false"], backoff=(0.01, 0.04))
    s.start()
    wait_for(lambda: s.status()["restarts"] >= 5, poll=s)
    log = (tmp_path / "db.log").read_text()
    assert "restarting in 0.04 s" in log and "restarting in 0.08 s" not in log
    assert s.status()["last_exit"] == 1


def test_stop_ends_the_command_and_its_group(service, tmp_path):
    kids = tmp_path / "host" / "kids"
    s = service(["/bin/sh", "-c", f'sleep 1000 & echo $! > {kids}.tmp; mv {kids}.tmp {kids}; '
                                  'exec sleep 1000'], backoff=FAST)
    s.start()
    wait_for(kids.exists)
    st = s.status()
    assert st["running"] and st["pid"]
    pid, kid = st["pid"], int(kids.read_text())
    assert os.getpgid(kid) == pid, "started in a session of its own: its group is its pid"
    s.stop(timeout=2.0)
    assert gone(pid) and gone(kid)
    st = s.status()
    assert (st["running"], st["pid"], st["last_exit"]) == (False, None, -15)
    s.stop()                                          # idempotent
    s.poll(time.monotonic() + 100)                    # a stopped service is not restarted
    assert s.status()["pid"] is None


def test_stop_kills_a_command_that_ignores_sigterm(service, tmp_path):
    ready = tmp_path / "host" / "ready"
    s = service(["/bin/sh", "-c", f'trap "" TERM; touch {ready}; while :; do sleep 1; done'])
    s.start()
    wait_for(ready.exists)
    pid = s.status()["pid"]
    t0 = time.monotonic()
    s.stop(timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert gone(pid)
    assert s.status()["last_exit"] == -9


def test_status_shape(service, tmp_path):
    s = service(["sleep", "1000"], backoff=FAST)
    st = s.status()
    assert st == {"host": "db", "command": ["sleep", "1000"], "pid": None, "running": False,
                  "restarts": 0, "last_exit": None, "log": str(tmp_path / "db.log")}
    s.start()
    st = s.status()
    assert set(st) == {"host", "command", "pid", "running", "restarts", "last_exit", "log"}
    assert st["running"] is True and isinstance(st["pid"], int)
    s.start()                                         # running already: nothing new
    assert s.status()["pid"] == st["pid"]


def test_a_missing_program_is_logged_and_retried(service, tmp_path):
    s = service(["/nonexistent/program"], backoff=FAST)
    s.start()
    wait_for(lambda: s.status()["restarts"] >= 1, poll=s)
    assert s.status()["last_exit"] not in (None, 0)
    assert "restarting in 0.05 s" in (tmp_path / "db.log").read_text()


def test_a_host_without_a_command_has_no_service(tmp_path):
    host = HostPlan(name="db", netns="x", ifname="eth0", subnet="s", ipv4="198.18.1.5/24",
                    ipv6=None, gw4="198.18.1.1", gw6=None, fabric_ifname="host0")
    with pytest.raises(ValueError, match="no command"):
        HostService("tlab", host, str(tmp_path / "log"), str(tmp_path / "h"))
