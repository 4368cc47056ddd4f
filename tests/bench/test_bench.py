"""``hyperplane bench``: the kernel-mode plan, the loss-free search, medians, ratios, verdicts,
the JSON and the plot (no root), and one smoke run of the real command with every mode (root;
skipped without CAP_NET_ADMIN). OVS mode, the N-mode order and summary, ``--modes``/``--env``
and the NAT checks are in test_bench_modes.py. Nothing here asserts how fast anything is."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from hyperplane import bench, cli, labconfig, netns
from hyperplane import errors
from hyperplane.bench import settings as bench_settings
from kit import REPO
from kit.benchfigures import CT_TIMEOUTS, FIGURES, MACHINE, ct_bench_plan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench_plan(name: str = "bench42k") -> labconfig.Plan:
    return labconfig.resolve(bench.bench_config(), name)


# ---- the bench lab and kernel mode -------------------------------------------------------------
def test_bench_lab_toml_loads_with_one_veth_env_one_eni_one_server_and_no_flow_logs():
    cfg = labconfig.load(os.path.join(REPO, "hyperplane", "bench", "bench_lab.toml"))
    plan = labconfig.resolve(cfg, "bench42h")
    assert [(e.name, e.attach, e.node_ifname) for e in plan.envs] == [("fn-0", "veth", "env0")]
    assert [(x.ipv4, x.ipv6, x.node_ifname) for x in plan.enis] == [
        ("198.18.1.4", "2001:2:0:1::4", "eni0")]
    assert [(h.name, h.ipv4, h.ipv6) for h in plan.hosts] == [
        ("server", "198.18.1.5/24", "2001:2:0:1::5/64")]
    assert str(cfg.vpc.cidr) == "198.18.0.0/16" and str(cfg.vpc.ipv6_cidr) == "2001:2::/56"
    assert plan.flow_logs.enabled is False
    assert plan.functions[0].ipv6_allowed_for_dual_stack is True
    # the packaged copy is the same file
    assert bench.bench_config().vpc == cfg.vpc


def test_kernel_plan_addresses_routes_and_sysctls_exactly():
    kp = bench.kernel_plan(bench_plan())
    assert kp["namespace"] == "hp-bench42k-node"
    assert kp["addresses"] == [("env0", "198.19.0.1/30"), ("env0", "2001:2:0:f000::1/64"),
                               ("eni0", "198.18.1.4/24"), ("eni0", "2001:2:0:1::4/64")]
    assert kp["routes"] == [("0.0.0.0/0", "198.18.1.1", "eni0"),
                            ("::/0", "2001:2:0:1::1", "eni0")]
    sysctls = kp["sysctls"]
    for scope in ("all", "default", "env0", "eni0"):
        assert (f"net.ipv6.conf.{scope}.disable_ipv6", 0) in sysctls
        # DAD off before IPv6 comes back, so no address is ever tentative
        assert sysctls.index((f"net.ipv6.conf.{scope}.accept_dad", 0)) < \
            sysctls.index((f"net.ipv6.conf.{scope}.disable_ipv6", 0))
    assert ("net.ipv4.ip_forward", 1) in sysctls
    assert ("net.ipv6.conf.all.forwarding", 1) in sysctls
    assert kp["nft"] == bench.nft_ruleset(bench_plan())


def test_nft_ruleset_snats_the_environment_to_the_eni_per_family():
    assert bench.nft_ruleset(bench_plan()) == (
        "table inet hyperplane_bench {\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        '\t\toifname "eni0" ip saddr 198.19.0.0/30 snat ip to 198.18.1.4\n'
        '\t\toifname "eni0" ip6 saddr 2001:2:0:f000::/64 snat ip6 to 2001:2:0:1::4\n'
        "\t}\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        '\t\tiifname "eni0" meta l4proto { tcp, udp } ct state new drop\n'
        "\t}\n"
        "}\n")


def test_kernel_plan_refuses_a_tap_environment_and_several_enis():
    plan = labconfig.resolve(labconfig.default(), "k1")   # fn-a-0 is a TAP
    with pytest.raises(bench.BenchError, match="fn-a-0 are TAPs"):
        bench.kernel_plan(plan)
    two = plan.enis + [plan.enis[0]]
    with pytest.raises(bench.BenchError, match="has 2"):
        bench.kernel_plan(labconfig.Plan(**{**plan.__dict__, "enis": two}))


def test_lab_names_are_valid_short_and_distinct():
    names = bench.lab_names(pid=4_194_303)
    assert names == {"hyperplane": "bench4303h", "kernel": "bench4303k", "ovs": "bench4303o",
                     "hyperplane-w2": "bench4303w"}
    for n in names.values():
        labconfig.validate_lab_name(n)
        assert len(f"hp-{n}-env-fn-0") < 64


def test_free_lab_names_skips_a_lab_that_exists_already(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    mine = bench.lab_names()
    assert bench.free_lab_names() == mine
    kept = tmp_path / mine["kernel"]            # e.g. left by an earlier --keep
    kept.mkdir()
    (kept / "state.json").write_text('{"name": "%s", "namespaces": []}' % mine["kernel"])
    assert bench.free_lab_names() == bench.lab_names(os.getpid() + 1)


# ---- the loss-free search ----------------------------------------------------------------------
def fake_nat(capacity: float, sender_max: float = 1e12, seconds: float = 1.0):
    """A measure function: delivers at most ``capacity`` packets/s, sends at most
    ``sender_max``; records the offered rates."""
    offered = []

    def measure(rate):
        offered.append(rate)
        achieved = min(rate, sender_max)
        sent = int(achieved * seconds)
        return {"sent": sent, "delivered": min(sent, int(capacity * seconds)),
                "seconds": seconds, "rate": achieved}
    return measure, offered


def test_find_loss_free_finds_the_knee_within_one_bisection_step():
    measure, offered = fake_nat(300_000)
    r = bench.find_loss_free(measure, 10_000, 0.001, steps=5)
    # doubling: 10k..160k pass, 320k loses; 5 bisections of [160k, 320k] -> 5k steps
    assert offered[:6] == [10_000, 20_000, 40_000, 80_000, 160_000, 320_000]
    assert len(offered) == 6 + 5
    assert 300_000 - 160_000 / 2 ** 5 <= r["offered"] <= 300_000
    assert r["rate"] == r["offered"] and r["loss"] == 0.0
    assert r["first_lossy"] is not None and r["first_lossy"] > 300_000
    assert r["first_lossy"] - r["offered"] <= 160_000 / 2 ** 5 + 1
    assert not r["generator_limited"] and not r["capped"]
    assert [t["loss_free"] for t in r["trials"]][:6] == [True] * 5 + [False]


def test_find_loss_free_tolerance_counts_a_hair_of_loss_as_loss_free():
    def measure(rate):   # loses 0.05 % always, and everything above 100k
        sent = rate
        return {"sent": sent, "delivered": sent * 0.9995 if rate <= 100_000 else sent / 2,
                "seconds": 1.0, "rate": rate}
    strict = bench.find_loss_free(measure, 25_000, 0.0, steps=3)
    lenient = bench.find_loss_free(measure, 25_000, 0.001, steps=3)
    assert strict["rate"] == 0.0
    assert 87_500 <= lenient["offered"] <= 100_000
    assert lenient["loss"] == pytest.approx(0.0005)


def test_find_loss_free_when_even_the_start_rate_loses_goes_down_then_stops():
    measure, offered = fake_nat(30_000)
    r = bench.find_loss_free(measure, 100_000, 0.001, steps=4)
    assert offered == [100_000, 50_000, 25_000, 37_500, 31_250]
    assert r["offered"] == 25_000 and r["first_lossy"] == 31_250

    nothing, offered = fake_nat(0)
    r = bench.find_loss_free(nothing, 100_000, 0.001, steps=3)
    assert r["rate"] == 0.0 and r["offered"] == 0 and len(offered) == 4
    assert r["loss"] == 1.0


def test_find_loss_free_stops_when_the_generator_is_the_limit_or_at_the_cap():
    measure, offered = fake_nat(10_000_000, sender_max=150_000)
    r = bench.find_loss_free(measure, 50_000, 0.001)
    assert offered == [50_000, 100_000, 200_000]
    assert r["generator_limited"] and r["rate"] == 150_000 and r["offered"] == 200_000
    measure, offered = fake_nat(1e12)
    r = bench.find_loss_free(measure, 50_000, 0.001, max_rate=400_000)
    assert offered == [50_000, 100_000, 200_000, 400_000] and r["capped"]


def test_loss_and_is_loss_free():
    assert bench.loss(1000, 999) == pytest.approx(0.001)
    assert bench.loss(0, 0) == 0.0
    assert bench.is_loss_free(1000, 999, 0.001)
    assert not bench.is_loss_free(1000, 998, 0.001)
    assert not bench.is_loss_free(0, 0, 0.001)


def test_a_trial_runs_its_test_and_an_unknown_test_is_an_error():
    runner = bench.Runner(bench.Settings(), {})
    seen = []
    runner.tcp = lambda mode, test, repeat: seen.append(("tcp", test, repeat))
    runner.udp64 = lambda mode, repeat: seen.append(("udp64", repeat))
    runner.conn = lambda mode, repeat: seen.append(("conn", repeat))
    runner.rr = lambda mode, repeat: seen.append(("rr", repeat))
    for test in bench.TESTS:
        runner.trial(None, test, 2)
    assert seen == [("tcp", "tcp4-1", 2), ("tcp", "tcp4-4", 2), ("tcp", "tcp6-1", 2),
                    ("tcp", "tcp6-4", 2), ("udp64", 2), ("conn", 2), ("rr", 2)]
    with pytest.raises(bench.BenchError, match="unknown test 'udp1500'"):
        runner.trial(None, "udp1500", 0)


# ---- medians, ratios, verdicts ----------------------------------------------------------------
def test_summarize_medians_spreads_and_ratios():
    s = bench.summarize(FIGURES)
    assert list(s) == ["tcp4-1", "tcp6-1", "udp64", "udp64-overload", "conn", "rr-p50",
                       "rr-p99"]
    assert s["tcp4-1"]["hyperplane"] == {"median": 11.0, "min": 10.0, "max": 12.0,
                                         "values": [10.0, 12.0, 11.0]}
    assert s["tcp4-1"]["ratio"] == pytest.approx(11.0 / 10.5)
    assert s["udp64"]["ratio"] == pytest.approx(1.5)
    assert s["rr-p50"]["ratio"] == pytest.approx(0.7) and s["rr-p50"]["better"] == "lower"
    assert s["conn"]["unit"] == "conn/s" and s["conn"]["better"] == "higher"
    one_sided = bench.summarize({"hyperplane": {"conn": [1.0]}, "kernel": {"conn": [0.0]}})
    assert one_sided["conn"]["ratio"] is None
    assert bench.median([3.0, 1.0, 2.0, 10.0]) == 2.5 and bench.median([]) is None


def test_verdicts_follow_the_issue_done_means():
    s = bench.summarize(FIGURES)
    fr = bench.overload_fractions(s)
    assert fr["hyperplane"] == pytest.approx(430_000 / 450_000)
    assert fr["kernel"] == pytest.approx(0.5)
    v = {x["name"].split(" (")[0]: x for x in bench.verdicts(s, fr["hyperplane"], 1.98)}
    assert v["TCP one stream IPv4"]["meets"] is True
    assert v["TCP one stream IPv6"]["meets"] is False          # 9.0 / 10.0
    assert v["TCP one stream IPv6"]["value"] == pytest.approx(0.9)
    assert v["loss-free 64-byte UDP rate"]["meets"] is True
    assert v["connection rate"]["meets"] is False
    assert v["request/response p50"]["meets"] is True          # 35 us <= 50 us
    assert v["request/response p50"]["at_most"] is True
    assert v["hyperplane under 2x loss-free UDP load"]["meets"] is True
    assert not any("ovs" in x["name"] or "tap" in x["name"] for x in v.values())
    assert bench.verdicts(s, 0.89, 2.0)[-1]["meets"] is False
    # the fraction is no proof when the sender could not offer twice the loss-free rate
    short = bench.verdicts(s, 0.99, 1.5)[-1]
    assert short["meets"] is False and short["load"] == 1.5
    assert short["why"] == "not shown: the sender offered only 1.50x the loss-free rate, not 2x"
    assert bench.verdicts(s, 0.99, 2.0 * bench.REACHED)[-1]["meets"] is True
    unknown = bench.verdicts(s, 0.99)[-1]
    assert unknown["meets"] is False and "an unknown load" in unknown["why"]
    # only what was measured is judged
    only_tcp = bench.summarize({m: {"tcp4-1": FIGURES[m]["tcp4-1"]} for m in FIGURES})
    assert [x["name"] for x in bench.verdicts(only_tcp)] == [
        "TCP one stream IPv4 (hyperplane/kernel)"]


def test_abba_order_alternates_modes():
    assert bench.abba(4) == [("hyperplane", "kernel"), ("kernel", "hyperplane"),
                             ("hyperplane", "kernel"), ("kernel", "hyperplane")]


# ---- command line -----------------------------------------------------------------------------
def test_unknown_tests_are_an_error_listing_the_valid_ones(capsys):
    with pytest.raises(bench.BenchError) as e:
        bench.parse_tests("tcp4-1,udp,conn")
    assert str(e.value) == ("--tests: unknown test(s) udp; valid tests are tcp4-1, tcp4-4, "
                            "tcp6-1, tcp6-4, udp64, conn, rr")
    assert bench.parse_tests("rr, tcp6-1") == ["tcp6-1", "rr"]
    assert bench.parse_tests(None) == list(bench.TESTS)
    assert cli.main(["bench", "--tests", "nope"]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown test(s) nope" in err and "udp64, conn, rr" in err


def test_settings_quick_defaults_and_overrides():
    ns = types.SimpleNamespace(quick=True, tests="conn", seconds=None, repeats=None,
                               loss_tolerance=None, no_pin=True, keep=False)
    s = bench.Settings.from_args(ns)
    assert (s.repeats, s.seconds, s.tests, s.pin) == (1, 1.0, ["conn"], False)
    assert s.conn_count < bench.Settings().conn_count and s.rr_count < 10_000
    ns.seconds, ns.repeats, ns.loss_tolerance = 3, 2, 0.0
    s = bench.Settings.from_args(ns)
    assert (s.repeats, s.seconds, s.loss_tolerance) == (2, 3.0, 0.0)
    assert bench.Settings().conn_count == 20_000 and bench.Settings().repeats == 3
    ns.loss_tolerance = 0.7
    with pytest.raises(bench.BenchError, match="--loss-tolerance"):
        bench.Settings.from_args(ns)
    with pytest.raises(bench.BenchError, match="conn count"):
        bench.Settings(conn_count=60_000).validate()


def test_pinning_falls_back_to_unpinned_without_cpus_0_and_1(monkeypatch, capsys):
    ns = types.SimpleNamespace(quick=True, tests="conn", seconds=None, repeats=None,
                               loss_tolerance=None, no_pin=False, keep=False)
    monkeypatch.setattr(bench_settings.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert bench.Settings.from_args(ns).pin is True
    monkeypatch.setattr(bench_settings.os, "sched_getaffinity", lambda pid: {0})
    assert bench.Settings.from_args(ns).pin is False
    assert "running unpinned" in capsys.readouterr().err


# ---- the report ------------------------------------------------------------------------------


def fake_doc(overload_sent=(700_000.0, 900_000.0, 910_000.0)):
    trials = [{"mode": m, "test": "tcp4-1", "repeat": i, "figures": {"tcp4-1": v},
               "raw": {"gbps": v}} for m in FIGURES
              for i, v in enumerate(FIGURES[m]["tcp4-1"])]
    # what hyperplane's overload sender reached (its loss-free median is 450k)
    trials += [{"mode": "hyperplane", "test": "udp64-overload", "repeat": i,
                "figures": {"udp64-overload": FIGURES["hyperplane"]["udp64-overload"][i]},
                "raw": {"target": 900_000, "rate": r}} for i, r in enumerate(overload_sent)]
    return bench.report_json(bench.Settings(), trials, FIGURES, machine_info=MACHINE,
                             extra={"wall_seconds": 1.0})


def test_report_json_shape():
    doc = json.loads(json.dumps(fake_doc()))   # JSON-serialisable as it is
    assert set(doc) >= {"machine", "settings", "trials", "figures", "summary", "ratios",
                        "overload_fraction", "verdicts", "wall_seconds"}
    assert doc["machine"] == MACHINE
    assert doc["settings"]["tests"] == list(bench.TESTS)
    assert doc["settings"]["loss_tolerance"] == 0.001
    assert len(doc["trials"]) == 9
    assert doc["overload_load"] == pytest.approx(2.0)   # median 900k sent / 450k loss-free
    assert doc["ratios"]["udp64"] == pytest.approx(1.5)
    assert doc["summary"]["conn"]["kernel"]["values"] == [25_000.0] * 3
    assert {v["name"] for v in doc["verdicts"]} >= {"connection rate (hyperplane/kernel)"}
    real = bench.machine()
    assert real["nproc"] == os.cpu_count() and real["python"] and real["kernel"]


def test_print_table_shows_medians_spreads_ratios_and_verdicts():
    out = io.StringIO()
    bench.print_table(fake_doc(), out)
    text = out.getvalue()
    assert "11.00 [10.00-12.00]" in text              # tcp4-1 hyperplane
    assert "450k [400k-500k]" in text                 # udp64 hyperplane
    assert "1.50" in text and re.search(r"rr-p50 .* lower", text)
    assert re.search(r"/ own loss-free +. share +. +0\.96 +. +0\.50 ", text)  # overload
    assert "misses: TCP one stream IPv6 (hyperplane/kernel) = 0.90 (target >= 1.00)" in text
    assert "meets: TCP one stream IPv4" in text
    assert "meets: request/response p50 (hyperplane/kernel) = 0.70 (target <= 1.00)" in text
    assert "meets: hyperplane under 2x loss-free UDP load" in text
    out = io.StringIO()
    bench.print_table(fake_doc(overload_sent=(600_000.0,) * 3), out)
    assert ("misses: hyperplane under 2x loss-free UDP load (share of its loss-free rate "
            "delivered; no livelock) = 0.96 (target >= 0.90; not shown: the sender offered "
            "only 1.33x the loss-free rate, not 2x)") in out.getvalue()


def test_cpu_cost_is_the_median_cpu_seconds_per_gbyte_per_mode():
    trials = [{"mode": m, "test": "tcp4-4", "repeat": i,
               "figures": {"tcp4-4": 10.0}, "raw": {"cpu_s_per_gbyte": v}}
              for m, vals in (("hyperplane", [0.20, 0.10, 0.12]), ("kernel", [0.05, 0.06, 0.07]))
              for i, v in enumerate(vals)]
    trials.append({"mode": "kernel", "test": "udp64", "repeat": 0, "figures": {}, "raw": {}})
    cost = bench.cpu_cost(trials)
    assert list(cost) == ["tcp4-4"]                    # TCP tests with figures only
    assert cost["tcp4-4"]["hyperplane"] == pytest.approx(0.12)
    assert cost["tcp4-4"]["kernel"] == pytest.approx(0.06)
    assert cost["tcp4-4"]["ratio"] == pytest.approx(2.0)
    doc = fake_doc()
    doc["cpu_cost"] = cost
    out = io.StringIO()
    bench.print_table(doc, out)
    assert "tcp4-4 hyperplane 0.12 vs kernel 0.06 (hyperplane/kernel x2.00)" in out.getvalue()


def test_cpu_times_counts_busy_time():
    busy0, total0 = bench.cpu_times()
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:   # keep one CPU busy for a moment
        pass
    busy1, total1 = bench.cpu_times()
    # /proc/stat's idle time (NO_HZ accounting) and iowait may step back by a tick or two
    # between two reads while every other counter steps forward: a few ticks of slack
    assert 0 < busy1 - busy0 <= total1 - total0 + 5 / os.sysconf("SC_CLK_TCK")


def test_a_miss_never_prints_as_the_target():
    doc = fake_doc()
    doc["verdicts"] = [{"name": "connection rate (hyperplane/kernel)", "value": 0.9981,
                        "target": 1.0, "kind": "ratio", "meets": False}]
    out = io.StringIO()
    bench.print_table(doc, out)
    assert "misses: connection rate (hyperplane/kernel) = 0.9981 (target >= 1.00)" in \
        out.getvalue()


def test_plot_writes_a_png(tmp_path):
    # matplotlib is in the test extras; without it this fails with the install hint
    path = tmp_path / "bench.png"
    bench.plot(fake_doc(), str(path))
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    with pytest.raises(bench.BenchError, match=r"pip install 'hyperplane\[bench\]'"):
        bench.plot(fake_doc(), str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


# ---- the real thing (root) -------------------------------------------------------------------
_problem = netns.privilege_problem()


@pytest.mark.skipif(_problem is not None, reason=f"bench smoke run: {_problem}")
def test_bench_quick_smoke_runs_every_mode_and_leaves_nothing(tmp_path, monkeypatch,
                                                              ovs_installed, processes_naming):
    """The default modes: hyperplane, kernel and OVS where ovs-vswitchd is installed (CI
    installs it: there a missing OVS fails the test instead of skipping its mode). Afterwards
    no namespace, link, directory or OVS daemon of the run is left."""
    from pyroute2 import IPRoute

    from hyperplane import proc as hpproc
    from hyperplane import topology as hplab

    modes = ["hyperplane", "kernel"] + (["ovs"] if ovs_installed else [])

    jpath, ppath = tmp_path / "bench.json", tmp_path / "bench.png"
    run_dir = tmp_path / "run"
    env = dict(os.environ, HYPERPLANE_RUN_DIR=str(run_dir),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tests = ["tcp4-1", "tcp6-1", "udp64", "conn", "rr"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperplane", "bench", "--quick", "--seconds", "1", "--tests",
         ",".join(tests), "--json", str(jpath), "--plot", str(ppath)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    names = bench.lab_names(pid=proc.pid)
    try:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)   # the bench tears its labs down on SIGTERM
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"the bench did not finish within 300 s:\n{err}")
        assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        doc = json.loads(jpath.read_text())
        assert doc["labs"] == names
        metrics = ["tcp4-1", "tcp6-1", "udp64", "udp64-overload", "conn", "rr-p50", "rr-p99"]
        assert list(doc["summary"]) == metrics
        assert doc["modes"] == modes and doc["columns"] == modes
        for metric in metrics:
            row = doc["summary"][metric]
            for mode in modes:
                assert row[mode]["median"] > 0, (metric, mode, row)
            assert row["ratio"] == pytest.approx(row["hyperplane"]["median"]
                                                 / row["kernel"]["median"])
            assert doc["ratios"][metric] == row["ratio"]
            if "ovs" in modes:
                assert row["ratios"]["hyperplane/ovs"] == pytest.approx(
                    row["hyperplane"]["median"] / row["ovs"]["median"])
        assert {(t["mode"], t["test"]) for t in doc["trials"]} == {
            (m, t) for m in modes for t in tests + ["udp64-overload"]}
        # every mode was checked to be a NAT before it was measured
        for mode in modes:
            assert re.search(rf"{mode} +warm-up done \(IPv4 and IPv6 reach the server, which "
                             r"sees 198\.18\.1\.4, 2001:2:0:1::4; an unsolicited SYN to the ENI "
                             r"is dropped\)", err), (mode, err)
        ovs_pids = [int(p) for p in re.findall(r"(?:ovsdb-server|ovs-vswitchd) pid (\d+)", err)]
        assert len(ovs_pids) == (2 if "ovs" in modes else 0), err
        if ovs_pids:
            assert doc["pinning"]["ovs_vswitchd_cpu"] == 1
        assert doc["settings"]["repeats"] == 1 and doc["settings"]["quick"] is True
        assert doc["pinning"]["client_cpu"] == 0 and doc["pinning"]["server_cpu"] == 1
        assert doc["pinning"]["datapath_cpu"] == 1
        assert "inbound worker on CPU 0" in doc["pinning"]["datapath"]
        placed = doc["pinning"]["placement"]   # what the daemon chose, read back from it
        assert placed["loop_cpus"] == [1] and placed["inbound_cpus"] == [0], placed
        assert placed["ring_frames"] == bench.RING_FRAMES
        rings = doc["pinning"]["ring_frames"]   # what the daemon opened, read back from it
        assert len(rings) == 2 and set(rings.values()) == {bench.RING_FRAMES}, rings
        for test in ("tcp4-1", "tcp6-1"):   # the whole machine's CPU per GB, both modes
            assert doc["cpu_cost"][test]["hyperplane"] > 0 and doc["cpu_cost"][test]["kernel"] > 0
        assert "ratio h/k" in out and "udp64-overload" in out
        assert ("ratio h/ovs" in out) == ("ovs" in modes)
        assert ppath.read_bytes()[:8] == PNG_MAGIC
    finally:
        left = [ns for ns in netns.listall()
                if any(ns.startswith(f"hp-{n}-") for n in names.values())]
        if left:   # clean up after a failed run, then fail below
            monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(run_dir))
            for n in names.values():
                hplab.teardown(n)
    assert left == [], f"namespaces left behind: {left}"
    # The labs' links lived only in their namespaces: none of their MACs is in ours.
    macs = set()
    for n in names.values():
        plan = bench_plan(n)
        macs |= {e.gw_mac for e in plan.envs} | {x.mac for x in plan.enis}
    with IPRoute() as ipr:
        root = {link.get("address") for link in ipr.get_links()}
    assert not (macs & root), f"links of the bench labs in the root namespace: {macs & root}"
    for n in names.values():
        assert not (run_dir / n).exists()      # OVS's run/db/log directories went with it
    assert sorted(p.name for p in run_dir.iterdir()) == [".tools"]  # hp-traffic's cache only
    # OVS's daemons are gone, and no process of the run is left (nothing names its directory)
    assert not [p for p in ovs_pids if hpproc.pid_alive(p)], ovs_pids
    assert processes_naming(str(run_dir)) == []


@pytest.mark.skipif(_problem is not None, reason=f"bench interrupt: {_problem}")
def test_bench_interrupted_tears_every_lab_down(tmp_path, monkeypatch, ovs_installed,
                                                processes_naming):
    """Ctrl-C in the middle of a trial: every lab goes (and OVS's daemons, where OVS mode
    runs), the command says it was interrupted."""
    from hyperplane import topology as hplab

    labs = 3 if ovs_installed else 2

    run_dir = tmp_path / "run"
    env = dict(os.environ, HYPERPLANE_RUN_DIR=str(run_dir),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperplane", "bench", "--tests", "tcp4-1", "--seconds", "60",
         "--repeats", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    names = bench.lab_names(pid=proc.pid)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = [n for n in names.values()
                       if (run_dir / n / "state.json").exists()]
            if len(running) == labs and (run_dir / names["hyperplane"] / "lab.toml").exists():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(4)      # in the warm-up or the 60-second trial
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err and "tearing down lab(s)" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        left = [ns for ns in netns.listall()
                if any(ns.startswith(f"hp-{n}-") for n in names.values())]
        if left:
            monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(run_dir))
            for n in names.values():
                hplab.teardown(n)
    assert left == [], f"namespaces left behind: {left}"
    for n in names.values():
        assert not (run_dir / n).exists()
    assert processes_naming(str(run_dir)) == []   # no OVS daemon (nor anything) of the run


@pytest.mark.skipif(_problem is not None, reason=f"bench progress: {_problem}")
def test_bench_shows_its_trials_as_progress_on_a_terminal(tmp_path, monkeypatch):
    """stderr on a pseudo-terminal: the progress names each trial (mode, repeat, count);
    ``--json -`` puts the document on stdout. (Off a terminal nothing changes: the smoke run
    above reads its stderr through a pipe.) It measures hyperplane through a veth and a TAP
    (``--env veth,tap``): the TAP column's rr trial and its NAT checks run through the TAP."""
    from hyperplane import topology as hplab

    run_dir = tmp_path / "run"
    env = dict(os.environ, HYPERPLANE_RUN_DIR=str(run_dir),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperplane", "bench", "--quick", "--seconds", "1", "--tests",
         "rr", "--modes", "hyperplane,kernel", "--env", "veth,tap", "--json", "-"], cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    names = bench.lab_names(pid=proc.pid)
    chunks = []
    try:
        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
        reader.start()
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: the bench closed the terminal's last end
                break
            if not chunk:
                break
            err += chunk
        assert proc.wait(timeout=300) == 0, err.decode(errors="replace")[-3000:]
        reader.join(30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)   # the bench tears its labs down on SIGTERM
            proc.wait(timeout=60)
        monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(run_dir))
        for n in names.values():
            if (run_dir / n).exists():
                hplab.teardown(n)
    text = err.decode("utf-8", "replace")
    assert "bench: rr, hyperplane mode, repeat 1/1" in text and "1/3" in text, text[-3000:]
    doc = json.loads(chunks[0])
    assert list(doc["summary"]) == ["rr-p50", "rr-p99"]
    # hyperplane through its TAP environment too: its own column and the tap/veth ratio
    assert doc["columns"] == ["hyperplane", "hyperplane-tap", "kernel"]
    assert doc["summary"]["rr-p50"]["hyperplane-tap"]["median"] > 0
    assert doc["pair_ratios"]["rr-p50"]["tap/veth"] > 0


# ---- [conntrack]: the kernel side runs with the lab's timeouts ---------------------------------

def test_kernel_plan_sets_every_conntrack_timeout_to_the_labs_and_never_the_global_max():
    # the bench lab has no [conntrack]: the kernel gets hyperplane's defaults (350 s, not 5 days)
    kp = bench.kernel_plan(bench_plan())
    assert dict(kp["conntrack_sysctls"]) == {
        "net.netfilter.nf_conntrack_tcp_timeout_syn_sent": 120,
        "net.netfilter.nf_conntrack_tcp_timeout_syn_recv": 60,
        "net.netfilter.nf_conntrack_tcp_timeout_established": 350,
        "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": 120,
        "net.netfilter.nf_conntrack_tcp_timeout_close_wait": 60,
        "net.netfilter.nf_conntrack_tcp_timeout_last_ack": 30,
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait": 120,
        "net.netfilter.nf_conntrack_tcp_timeout_close": 10,
        "net.netfilter.nf_conntrack_udp_timeout": 30,
        "net.netfilter.nf_conntrack_udp_timeout_stream": 350}
    kp = bench.kernel_plan(ct_bench_plan("bench42k", max=1000, **CT_TIMEOUTS))
    got = dict(kp["conntrack_sysctls"])
    for key, value in CT_TIMEOUTS.items():
        assert got[f"net.netfilter.nf_conntrack_{key}"] == value
    assert not any("max" in k for k in got)   # global: the bench leaves the host's alone


@pytest.mark.skipif(_problem is not None, reason=f"kernel-mode sysctls: {_problem}")
def test_kernel_nat_sets_the_conntrack_sysctls_in_its_node_namespace_only(tmp_path,
                                                                         monkeypatch):
    from hyperplane import topology

    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    name = f"ct{os.getpid() % 100000}k"
    plan = ct_bench_plan(name, **CT_TIMEOUTS)
    keys = [k for k, _ in bench.kernel_plan(plan)["conntrack_sysctls"]]

    def host_values():
        files = {k: "/proc/sys/" + k.replace(".", "/") for k in keys}
        return {k: open(f).read().strip() for k, f in files.items() if os.path.exists(f)}

    ours = host_values()   # empty while no conntrack module is loaded yet
    topology.build(plan, config_source="<test>")
    try:
        bench.kernel_nat(plan)
        ours = ours or host_values()   # the kernel NAT loaded conntrack just now
        assert ours, "no nf_conntrack sysctls on this host after the kernel NAT was set up"
        for key, value in CT_TIMEOUTS.items():
            assert topology.sysctl(plan.node_ns, f"net.netfilter.nf_conntrack_{key}") == \
                str(value)
        assert topology.sysctl(plan.node_ns, "net.netfilter.nf_conntrack_tcp_timeout_close") \
            == "10"
    finally:
        topology.teardown(name)
    for k, v in ours.items():   # this namespace's (the host's) values are untouched
        assert open("/proc/sys/" + k.replace(".", "/")).read().strip() == v, k
