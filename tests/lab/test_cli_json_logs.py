"""The command line against running labs: ``lab up`` shows its progress on a terminal and not
on a pipe; ``--log-level debug`` makes the data path log each control request, which an info
lab does not; ``lab logs`` prints and follows the data path's log (across ``lab restart``);
the new ``--json`` outputs parse and carry their keys. Two labs brought up by hand (the
lifecycle's CLI is under test), both taken down at the end. Needs CAP_NET_ADMIN (the folder's
conftest skips otherwise); no timing assertions, only bounded waits."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from hyperplane import paths
from kit import REPO
from kit.labs import cli_run, destroy, lab_name

#: How long a follow may take to show a line (a bound, not a measurement).
FOLLOW_WAIT = 60.0


def _cli_argv(*args):
    return [sys.executable, "-m", "hyperplane", *args]


def _up_on_a_terminal(name: str) -> str:
    """``--log-level debug lab up`` with stderr on a pseudo-terminal; its stderr text."""
    master, slave = os.openpty()
    try:
        p = subprocess.Popen(_cli_argv("--log-level", "debug", "lab", "up", "--name", name),
                             cwd=REPO, env=dict(os.environ), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = None
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:        # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        p.stdout.read()
        assert p.wait(timeout=120) == 0, b"".join(chunks)[-3000:]
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def labs():
    """(debug lab name, its lab-up stderr on a terminal, info lab name, its lab-up process)."""
    debug, info = lab_name(), lab_name()
    try:
        tty_err = _up_on_a_terminal(debug)
        piped = cli_run("lab", "up", "--name", info, "--json", timeout=120)
        assert piped.returncode == 0, piped.stderr
        yield debug, tty_err, info, piped
    finally:
        for name in (debug, info):
            destroy(name)


def test_lab_up_shows_progress_on_a_terminal_and_none_on_a_pipe(labs):
    debug, tty_err, info, piped = labs
    assert "lab up: " in tty_err, tty_err[-2000:]
    assert "namespaces and their links" in tty_err and "ENI(s) to become Active" in tty_err
    assert "lab up:" not in piped.stderr and "\x1b[" not in piped.stderr, piped.stderr
    st = json.loads(piped.stdout)           # --json: what `lab status --json` prints
    assert st["name"] == info and st["running"] is True and st["enis"], st


def test_debug_lab_logs_control_requests_and_an_info_lab_does_not(labs):
    debug, _, info, _ = labs
    p = cli_run("lab", "logs", "--name", debug)
    assert p.returncode == 0, p.stderr
    assert "data path running" in p.stdout
    assert " DEBUG control request ping" in p.stdout, p.stdout[-3000:]
    recs = [json.loads(x) for x in cli_run("lab", "logs", "--name", debug, "--json")
            .stdout.splitlines()]   # debug is hyperplane's only (pyroute2's would be a flood)
    assert {r["logger"] for r in recs if r["level"] == "DEBUG"} == {"hyperplane.datapath"}
    p = cli_run("lab", "logs", "--name", debug, "--service", "workloads")
    assert " DEBUG workloads request ping: ok" in p.stdout, p.stdout[-3000:]
    p = cli_run("lab", "logs", "--name", info, "--json")
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    assert records and all(set(r) == {"time", "logger", "level", "message"} for r in records)
    assert any(r["message"].startswith("data path running") for r in records)
    assert not any(r["level"] == "DEBUG" for r in records), records
    p = cli_run("lab", "logs", "--name", info, "--service", "workloads", "--lines", "5")
    assert p.returncode == 0 and "workloads of lab" in p.stdout, p.stdout
    p = cli_run("lab", "logs", "--name", info, "--service", "nope")
    assert p.returncode == 2 and "--service nope" in p.stderr and "datapath" in p.stderr


def test_lab_logs_follow_shows_new_lines_and_outlives_a_restart(labs):
    _, _, info, _ = labs
    f = subprocess.Popen(_cli_argv("lab", "logs", "--name", info, "-f", "--lines", "0"),
                         cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in f.stdout], daemon=True).start()

    def wait_for(text: str) -> None:
        seen = []
        while True:
            try:
                line = lines.get(timeout=FOLLOW_WAIT)
            except queue.Empty:
                pytest.fail(f"`lab logs -f` did not show {text!r}; it showed {seen}")
            seen.append(line)
            if text in line:
                return

    try:
        # A line written after the follow started: it shows only lines written after it
        # opened the file (--lines 0), so write a marker each half second until one shows.
        marker = f"marker-{os.getpid()}"
        for i in range(int(FOLLOW_WAIT * 2)):
            with open(paths.log_path(info), "a") as log:
                log.write(f"{marker} {i}\n")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            assert line.startswith(marker), line
            break
        else:
            pytest.fail("`lab logs -f` showed none of the lines written after it started")
        r = cli_run("lab", "restart", "--name", info, "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["pid"]
        wait_for("data path running")      # the new data path's start, same follow
    finally:
        f.send_signal(signal.SIGTERM)      # by its pid; it ends quietly
        try:
            assert f.wait(timeout=30) == 0, f.stderr.read()
        finally:
            if f.poll() is None:
                f.kill()
                f.wait()


def test_the_new_json_outputs_parse_with_their_keys(labs):
    debug, _, info, _ = labs
    ok = lambda *a: _json(cli_run(*a, "--json"))   # noqa: E731
    clock = ok("clock", "--name", info, "--advance", "10")
    assert clock["offset"] >= 10 and clock["now"] > 0
    assert ok("conntrack", "count", "--name", info) == {"count": 0}
    assert ok("conntrack", "flush", "--name", info) == {"deleted": 0}
    upd = ok("function", "update", "fn-a", "--name", info, "--no-ipv6-dual-stack", "--wait")
    assert upd["updated"]["name"] == "fn-a" and upd["waited"]["name"] == "fn-a"
    assert upd["waited"]["last_update_status"] == "Successful", upd
    assert {lab["name"] for lab in ok("lab", "list")} >= {debug, info}
    top = [json.loads(x) for x in cli_run("top", "--name", info, "--json", "--interval", "0.2",
                                          "--iterations", "2").stdout.splitlines()]
    assert [t["frame"] for t in top] == [1, 2]
    assert {"totals", "rates", "drops", "tables", "pools", "top_flows"} <= set(top[0])
    cap = ok("capture", "--name", info, "--duration", "1")
    assert {"dir", "interrupted", "files", "environments", "unpaired"} <= set(cap)
    assert {f["side"] for f in cap["files"]} == {"env", "eni"}
    assert all(isinstance(e["pairs"], list) for e in cap["environments"])
    down = ok("lab", "down", "--name", debug)
    assert down["name"] == debug and down["removed_namespaces"], down
    assert ok("lab", "down", "--name", debug) is None


def _json(p: subprocess.CompletedProcess):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)
