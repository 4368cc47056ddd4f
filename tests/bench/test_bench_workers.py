"""``hyperplane bench --workers 1,2`` (issue 19): the option, the ``hyperplane-w2`` column's
lab text (two data path workers, through the first environment), the w2/w1 ratio in the
summary, the JSON and the table, and its verdict. Pure functions with fake figures, no root;
nothing here asserts how fast anything is."""
from __future__ import annotations

import io
import json
import os
import re
import time
import types

import pytest

from hyperplane import bench, cli, errors, labconfig
from hyperplane.bench import labs as bench_labs
from kit import REPO
from kit.benchfigures import FIGURES, MACHINE

FIGURES_W = {
    **FIGURES,
    "hyperplane": {**FIGURES["hyperplane"], "tcp4-4": [10.0, 10.0, 10.0]},
    "hyperplane-w2": {"tcp4-1": [10.0, 9.0, 11.0], "tcp4-4": [12.0, 12.0, 12.0],
                      "conn": [25_000.0, 24_000.0, 26_000.0]},
}


def _ns(**kw):
    base = dict(quick=True, tests="conn", seconds=None, repeats=None, loss_tolerance=None,
                no_pin=True, keep=False, modes="hyperplane,kernel", env=None, workers=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_workers_option_parses_defaults_to_one_and_refuses_with_the_valid_ones(capsys):
    assert bench.parse_workers(None) == [1]
    assert bench.parse_workers("2, 1") == [1, 2]
    with pytest.raises(bench.BenchError, match="unknown 3; valid are 1, 2"):
        bench.parse_workers("1,3")
    with pytest.raises(bench.BenchError, match="1 must be among them.*--workers 1,2"):
        bench.parse_workers("2")
    with pytest.raises(bench.BenchError, match="--workers: nothing given"):
        bench.Settings(workers=[]).validate()
    assert bench.Settings.from_args(_ns()).workers == [1]
    assert bench.Settings.from_args(_ns(workers="1,2")).workers == [1, 2]
    assert cli.main(["bench", "--workers", "4"]) == errors.EXIT_USAGE
    assert "--workers: unknown 4; valid are 1, 2" in capsys.readouterr().err
    assert cli.main(["bench", "--workers", "2"]) == errors.EXIT_USAGE
    # the columns: w2 after the TAP column, before the other modes; none by default
    assert bench.columns(["hyperplane", "kernel"], ["veth"]) == ["hyperplane", "kernel"]
    assert bench.columns(["hyperplane", "kernel", "ovs"], ["veth", "tap"], [1, 2]) == [
        "hyperplane", "hyperplane-tap", "hyperplane-w2", "kernel", "ovs"]
    assert bench.column_order(["kernel", "hyperplane-w2", "hyperplane"]) == [
        "hyperplane", "hyperplane-w2", "kernel"]


def test_the_workers_lab_has_two_workers_on_the_bench_cpus_through_the_first_env():
    plan = labconfig.resolve(bench.bench_config(), "bench42w")
    with open(os.path.join(REPO, "hyperplane", "bench", "bench_lab.toml")) as f:
        base = f.read()
    for pin in (True, False):
        dp = bench.datapath_text(plan, pin, workers=2)
        assert "workers = 2" in dp and "inbound_cpus" not in dp
        text, source = bench.hyperplane_lab_text(base, ["veth"], dp)
        p = labconfig.resolve(labconfig.loads(text, source=source), "bench42w")
        assert p.datapath.workers == 2 and [e.attach for e in p.envs] == ["veth"]
        assert "workers = 2" in source
    assert 'placement = "none"' in bench.datapath_text(plan, False, workers=2)
    # pinned: either the default placement already is worker 0 on the server's CPU and
    # worker 1 on the client's, or the lines say so
    pinned = bench.datapath_text(plan, True, workers=2)
    assert pinned == "workers = 2\n" or "worker_cpus = [1, 0]" in pinned
    # one worker: unchanged
    assert "workers" not in bench.datapath_text(plan, True)
    names = bench.lab_names(pid=4_194_303)
    assert names["hyperplane-w2"] == "bench4303w"
    assert len(set(names.values())) == len(names)
    labconfig.validate_lab_name(names["hyperplane-w2"])


def test_build_labs_adds_the_w2_lab_only_when_asked(monkeypatch):
    built = []

    class FakeLab:
        pid = 4321

        def placement(self):
            return {"workers": 2}

        def counters(self):
            return {"links": [{"name": "l", "kind": "veth", "ring_frames": 16384}]}

    def up(source, name, wait_active, config_text):
        built.append((name, config_text))
        return FakeLab()

    monkeypatch.setattr(bench_labs.Lab, "up", staticmethod(up))
    monkeypatch.setattr(bench_labs.topology, "sysctl", lambda *a: None)
    names = bench.lab_names(pid=42)
    for workers, expect in (([1], ["bench42h"]), ([1, 2], ["bench42h", "bench42w"])):
        built.clear()
        modes, created = {}, []
        s = bench.Settings(modes=["hyperplane"], envs=["veth", "tap"], workers=workers)
        bench.build_labs(names, modes, created, s)
        assert created == expect == [n for n, _ in built]
        assert set(modes) == set(bench.columns(s.modes, s.envs, s.workers))
        if workers == [1]:
            assert "workers" not in built[0][1]         # the default: the lab text unchanged
    w2 = modes["hyperplane-w2"]
    assert w2.mode == "hyperplane-w2" and w2.pid == 4321 and w2.env.attach == "veth"
    assert w2.placement == {"workers": 2}
    text = dict(built)["bench42w"]
    assert "workers = 2" in text and 'environments = ["veth"]' in text
    assert "workers = 1" in dict(built)["bench42h"]    # whatever HYPERPLANE_WORKERS says


def test_w2_over_w1_ratio_shows_in_the_summary_json_table_and_verdict():
    s = bench.summarize(FIGURES_W)
    assert s["tcp4-1"]["ratios"]["w2/w1"] == pytest.approx(10.0 / 11.0)
    assert s["tcp6-1"]["ratios"]["w2/w1"] is None          # w2 did not run it
    trials = [{"mode": m, "test": "tcp4-1", "repeat": i, "figures": {"tcp4-1": v},
               "raw": {"gbps": v, "cpu_s_per_gbyte": 0.1 + i}} for m in FIGURES_W
              for i, v in enumerate(FIGURES_W[m]["tcp4-1"])]
    doc = json.loads(json.dumps(bench.report_json(bench.Settings(workers=[1, 2]), trials,
                                                  FIGURES_W, machine_info=MACHINE)))
    assert doc["columns"] == ["hyperplane", "hyperplane-w2", "kernel"]
    assert doc["settings"]["workers"] == [1, 2]
    assert doc["pair_ratios"]["tcp4-1"]["w2/w1"] == pytest.approx(10.0 / 11.0)
    assert doc["cpu_cost"]["tcp4-1"]["ratios"]["w2/w1"] is not None
    v = {x["name"]: x for x in doc["verdicts"]}
    w = v["TCP four streams and connection rate (w2/w1)"]
    assert w["metrics"] == ["tcp4-4", "conn"] and w["target"] == bench.WORKERS_TARGET
    assert w["value"] == pytest.approx(min(12.0 / 10.0, 25_000 / 21_000))
    assert w["meets"] is True
    out = io.StringIO()
    bench.print_table(doc, out)
    text = out.getvalue()
    assert "hyperplane-w2" in text and "ratio w2/w1" in text
    assert re.search(r"tcp4-1 .* 11\.00 \[10\.00-12\.00\] .* 10\.00 \[9\.00-11\.00\] .* 0\.91",
                     text), text
    assert re.search(r"(meets|misses): TCP four streams and connection rate \(w2/w1\)", text)
    # one worker (the default): no w2 column, ratio or verdict
    doc1 = bench.report_json(bench.Settings(), trials[:6], FIGURES, machine_info=MACHINE)
    assert "hyperplane-w2" not in doc1["columns"]
    assert all("w2/w1" not in r for r in doc1["pair_ratios"].values())
    assert not any("w2/w1" in x["name"] for x in doc1["verdicts"])


def test_every_other_hyperplane_labs_idle_data_path_is_watched():
    """While one column's trial runs, the data paths of the other hyperplane labs are idle:
    their CPU time is recorded (a busy-polling idle data path would show), never the running
    lab's own, nor a lab without a data path (kernel)."""
    plan = labconfig.resolve(bench.bench_config(), "bench42h")
    modes = {c: bench.Mode(c, n, plan, pin=False) for c, n in (
        ("hyperplane", "bench42h"), ("hyperplane-w2", "bench42w"), ("kernel", "bench42k"))}
    modes["hyperplane"].pid, modes["hyperplane-w2"].pid = 11, 22
    used = {"bench42h": [0.0], "bench42w": [0.0]}

    def cpu(m):
        return lambda: used[m.name][0]
    for m in modes.values():
        if m.pid:
            m.datapath_cpu = cpu(m)

    def trial():                       # the w2 lab runs: only hyperplane's is idle
        used["bench42h"][0] += 0.002
        used["bench42w"][0] += 5.0
        time.sleep(0.05)
        return "ran"
    r = bench.Runner(bench.Settings(modes=["hyperplane", "kernel"], workers=[1, 2]), modes)
    assert r._guard(modes["hyperplane-w2"], "tcp4-1", trial) == "ran"
    assert len(r.idle_datapath_cpu) == 1 and r.idle_datapath_cpu[0] < 1.0
    r._guard(modes["kernel"], "tcp4-1", lambda: None)      # both watched
    assert len(r.idle_datapath_cpu) == 3
