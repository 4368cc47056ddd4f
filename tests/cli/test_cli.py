"""The ``hyperplane`` command, run as a user runs it: in a subprocess.

``walk`` (the in-memory walk) runs with the reference engine (HYPERPLANE_ENGINE=reference) and with the default
engine (the compiled one when built; otherwise the loud fallback to the reference).
"""
import os
import re
import subprocess
import sys

import pytest

import hyperplane
from kit import REPO

ENI_ADDR = "198.18.1.10"


def run_cli(*args, engine=None, module="hyperplane"):
    env = dict(os.environ)
    env.pop("HYPERPLANE_ENGINE", None)
    if engine is not None:
        env["HYPERPLANE_ENGINE"] = engine
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    how = ["-m", module] if module else \
        ["-c", "import sys; from hyperplane.cli import main; sys.exit(main())"]
    return subprocess.run([sys.executable, *how, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("engine", ["reference", None], ids=["reference", "default"])
def test_walk(engine):
    p = run_cli("walk", engine=engine)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    # which engine ran, said up front
    first = out.splitlines()[0]
    assert "engine: " in first
    if engine == "reference":
        assert "engine: reference" in first
    # the environment's packets leave with the ENI's address as their source
    assert re.search(rf"after +TCP {re.escape(ENI_ADDR)}:\d+ > 198\.18\.2\.20:5432 \[S\]", out)
    assert re.search(r"after +UDP \[2001:2:0:1::10\]:\d+ > ", out)   # IPv6 too
    # a conntrack -L line for the established TCP connection, with both tuples
    assert re.search(
        rf"^tcp +6 \d+ ESTABLISHED src=198\.18\.0\.5 dst=198\.18\.2\.20 sport=\d+ dport=5432 "
        rf"packets=\d+ bytes=\d+ src=198\.18\.2\.20 dst={re.escape(ENI_ADDR)} sport=5432 "
        rf"dport=\d+ packets=\d+ bytes=\d+ \[ASSURED\]", out, re.M), out
    # a forged RST with a guessed sequence number is dropped; an inexact one in the window
    # passes and leaves the connection ESTABLISHED (RFC 5961)
    assert "DROP reason=tcp_out_of_window" in out
    assert re.search(r"RST inside the window.*\n.*\n.*-> REPLY, ct_state ESTABLISHED", out)
    # an unsolicited inbound packet is dropped, and counted
    assert "DROP reason=unsolicited" in out
    assert re.search(r"drops: .*unsolicited=\d+", out)
    assert "UNEXPECTED" not in out


def test_walk_runs_from_the_console_entry_point():
    """What the `hyperplane` script calls (pyproject's hyperplane.cli:main)."""
    p = run_cli("walk", engine="reference", module=None)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ESTABLISHED" in p.stdout


def test_version():
    p = run_cli("--version", engine="reference")
    assert p.returncode == 0
    assert p.stdout.strip() == f"hyperplane {hyperplane.__version__}"


def test_engine_command():
    p = run_cli("engine", engine="reference")
    assert p.returncode == 0
    assert p.stdout.splitlines()[0] == "engine: reference"
    assert "HYPERPLANE_ENGINE=reference" in p.stdout
    p = run_cli("engine")
    assert p.returncode == 0
    assert re.match(r"engine: (compiled|reference)\nwhy: ", p.stdout)


@pytest.mark.parametrize("args", [[], ["no-such-command"], ["walk", "--no-such-flag"], ["lab"], ["lab", "up", "--bogus"]],
                         ids=["none", "unknown-command", "unknown-flag", "lab-without-subcommand",
                              "lab-up-unknown-flag"])
def test_usage_errors_exit_2(args):
    p = run_cli(*args, engine="reference")
    assert p.returncode == 2
    assert "usage: hyperplane" in p.stderr


def test_help():
    p = run_cli("--help", engine="reference")
    assert p.returncode == 0
    for cmd in ("demo", "lab", "run", "walk", "engine"):
        assert cmd in p.stdout
    p = run_cli("lab", "--help", engine="reference")
    assert p.returncode == 0
    for cmd in ("up", "status", "exec", "down", "list"):
        assert cmd in p.stdout


@pytest.mark.parametrize("group", ["lab", "eni", "function"])
def test_a_command_group_alone_prints_its_own_usage(group):
    p = run_cli(group, engine="reference")
    assert p.returncode == 2
    assert p.stderr.startswith(f"usage: hyperplane {group} ")
    assert f"{group.upper()}_COMMAND" in p.stderr


def test_lab_up_note_says_the_idle_eni_is_reclaimed_and_comes_back_at_a_new_address():
    """What ``lab up`` prints about Lambda's idle reclaim, from the lab's own lifecycle."""
    from hyperplane.cli.lab import reclaim_note
    from hyperplane.labconfig import LifecyclePlan

    note = reclaim_note(LifecyclePlan(inactive_after=600.0, eni_create_delay=1.0))
    assert "\n" not in note
    assert "idle for 600 s" in note and "reclaimed" in note and "new address" in note
    assert "idle for 30 s" in reclaim_note(LifecyclePlan(inactive_after=30.0))
