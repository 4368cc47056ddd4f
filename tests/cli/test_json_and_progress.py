"""Every command that prints has ``--json`` (the parser walked, with a short allow-list);
``--log-level`` and HYPERPLANE_LOG_LEVEL are checked as usage; the progress display is drawn
only on a terminal; the bench reports each trial as a step. No root needed: the lab-backed
checks of the JSON outputs are tests/lab/test_cli_json_logs.py."""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

from hyperplane import cli
from hyperplane.bench import Settings
from hyperplane.bench.runner import Runner
from hyperplane.cli import progress
from hyperplane.lab import logs
from kit import REPO

#: Leaf commands without --json, and why JSON makes no sense for them. Keep it short.
NO_JSON = {
    "demo": "a narrated tour for a person (it brings a lab up, sends traffic, explains)",
    "walk": "a narrated walk of packets through the engine in memory: the text is the point",
    "lab exec": "runs the user's command: the output is that command's own",
    "run": "the data path in the foreground: a daemon that only logs (see `lab logs`)",
    "metrics": "prints or serves the Prometheus text format, a machine format of its own",
    "completion": "prints a shell script for the shell to load",
    "man": "prints a manual page for man(1)",
    "lab schema": "prints a JSON Schema document: JSON already",
    "lab graph": "prints a Mermaid or DOT drawing for a renderer; the same plan as JSON is "
                 "`lab plan --json`",
}


def leaves(parser: argparse.ArgumentParser, path=()):
    """(command words, parser) of every leaf command of the parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for action in subs:
        for name, p in action.choices.items():
            yield from leaves(p, path + (name,))


def test_every_command_that_prints_has_json():
    found = dict(leaves(cli.build_parser()))
    assert {"lab up", "lab down", "lab list", "lab logs", "clock", "conntrack count",
            "conntrack flush", "function update", "engine", "capture", "top"} <= set(found)
    missing = sorted(name for name, p in found.items()
                     if "--json" not in p._option_string_actions and name not in NO_JSON)
    assert not missing, f"commands that print without --json: {missing}; add --json, or " \
                        "add them to NO_JSON with the reason"


def run_cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYPERPLANE_LOG_LEVEL", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "hyperplane", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_engine_json_says_which_engine_and_why():
    p = run_cli("engine", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["engine"] in ("compiled", "reference") and doc["why"]
    assert "fallback_reason" in doc


def test_a_bad_log_level_is_a_usage_error_naming_the_option_and_the_choices():
    p = run_cli("--log-level", "verbose", "engine")
    assert p.returncode == 2
    assert "--log-level" in p.stderr and "'verbose'" in p.stderr
    assert all(c in p.stderr for c in ("debug", "info", "warning", "error")), p.stderr
    p = run_cli("engine", env_extra={"HYPERPLANE_LOG_LEVEL": "loud"})
    assert p.returncode == 2
    assert "HYPERPLANE_LOG_LEVEL" in p.stderr and "'loud'" in p.stderr and "debug" in p.stderr
    p = run_cli("--log-level", "DEBUG", "engine", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["engine"]


# ---- the progress display ------------------------------------------------------------------------
def test_progress_is_none_off_a_terminal():
    with progress.shown("lab up", err=io.StringIO()) as step:
        assert step is None


def test_progress_draws_the_steps_on_a_terminal():
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as err:
            with progress.shown("lab up", err=err) as step:
                assert step is not None
                step("build 5 namespaces and their links", 1, 7)
                step("start the data path", 2, 7)
            err.flush()
        os.set_blocking(master, False)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(slave)
        os.close(master)
    text = out.decode("utf-8", "replace")
    assert "lab up: start the data path" in text and "2/7" in text, text


def test_the_bench_reports_each_trial_as_a_step(monkeypatch):
    s = Settings(tests=["tcp4-1", "udp64", "rr"], repeats=2)
    r = Runner(s, {"hyperplane": object(), "kernel": object()}, on_step=None)
    heard = []
    r.on_step = lambda step, done, total: heard.append((step, done, total))
    for name in ("warm_up", "tcp", "udp64", "conn", "rr", "overload"):
        monkeypatch.setattr(r, name, lambda *a, **k: None)
    r.run()
    # 3 tests + overload, in 2 modes, 2 repeats; then "done" with every step counted.
    assert r.steps() == 16
    assert [d for _, d, _ in heard] == list(range(17))
    assert {t for _, _, t in heard} == {16}
    assert heard[0][0] == "tcp4-1, hyperplane mode, repeat 1/2"
    assert heard[-2][0].startswith("overload, ") and heard[-1][0] == "done"


# ---- lab logs: reading and following a file ------------------------------------------------------
def test_parse_line_splits_a_log_record_and_keeps_other_lines_whole():
    rec = logs.parse_line("2026-12-06 14:01:02,345 hyperplane.datapath INFO data path running")
    assert rec == {"time": "2026-12-06 14:01:02,345", "logger": "hyperplane.datapath",
                   "level": "INFO", "message": "data path running"}
    assert logs.parse_line("Traceback (most recent call last):") == {
        "time": None, "logger": None, "level": None,
        "message": "Traceback (most recent call last):"}


def test_follow_lines_reads_on_across_a_replaced_file(tmp_path):
    path = tmp_path / "datapath.log"
    path.write_text("one\ntwo\nthree\n")
    assert logs.read_lines(str(path), 2) == ["two", "three"]
    assert logs.read_lines(str(tmp_path / "none.log")) == []
    it = logs.follow_lines(str(path), lines=1, poll=0.01)
    assert next(it) == "three"
    with open(path, "a") as f:
        f.write("four\n")
    assert next(it) == "four"
    path.unlink()                          # replaced, as a new lab of the same name would
    path.write_text("new one\n")
    assert next(it) == "new one"
    it.close()
