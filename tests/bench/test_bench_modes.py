"""``hyperplane bench`` with more than two modes: the mode order, ``--modes`` and ``--env``,
the per-column summary with every pair's ratio (hyperplane/kernel, hyperplane/OVS, tap/veth)
and the issue 18 verdicts, OVS mode's flows and timeouts (pure functions, no root), the NAT
checks every mode passes before it is measured, and an OVS that cannot start (root). The real
three-mode run is test_bench.py's smoke test. Nothing here asserts how fast anything is."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import types

import pytest

from hyperplane import bench, cli, errors, labconfig, netns
from hyperplane.bench import settings as bench_settings
from kit import REPO
from kit.benchfigures import CT_TIMEOUTS, FIGURES, MACHINE, ct_bench_plan

_problem = netns.privilege_problem()


def bench_plan(name: str = "bench42k") -> labconfig.Plan:
    return labconfig.resolve(bench.bench_config(), name)


# ---- the order of the modes ---------------------------------------------------------------------
def test_rotation_alternates_the_order_of_n_modes_across_repeats():
    assert bench.rotation(("hyperplane", "kernel"), 4) == bench.abba(4)     # ABBA for two
    six = bench.rotation(("h", "k", "o"), 6)
    assert six == [("h", "k", "o"), ("o", "k", "h"), ("k", "o", "h"), ("h", "o", "k"),
                   ("o", "h", "k"), ("k", "h", "o")]
    assert len(set(six)) == 6                                  # every order once
    for mode in "hko":                                         # every position twice
        assert sorted(order.index(mode) for order in six) == [0, 0, 1, 1, 2, 2]
    four = bench.rotation(("h", "t", "k", "o"), 3)
    assert all(sorted(o) == ["h", "k", "o", "t"] for o in four)
    assert four[0][0] != four[2][0]                            # no mode always first
    assert bench.rotation(("h",), 2) == [("h",), ("h",)]


# ---- N modes: OVS and hyperplane through a TAP -------------------------------------------------
FIGURES3 = {
    **FIGURES,
    "ovs": {"tcp4-1": [4.0, 5.0, 6.0], "tcp6-1": [5.0, 5.0, 5.0],
            "udp64": [50_000.0, 60_000.0, 55_000.0],
            "udp64-overload": [40_000.0, 40_000.0, 40_000.0],
            "conn": [12_000.0, 11_000.0, 10_000.0],
            "rr-p50": [80.0, 80.0, 80.0], "rr-p99": [150.0, 250.0, 200.0]},
    "hyperplane-tap": {"tcp4-1": [10.5, 10.5, 10.5], "udp64": [440_000.0] * 3,
                       "conn": [19_000.0] * 3},
}


def test_summarize_reports_every_column_and_each_pairs_ratio():
    s = bench.summarize(FIGURES3)
    row = s["tcp4-1"]
    assert [c for c in bench.COLUMNS if c in row] == ["hyperplane", "hyperplane-tap", "kernel",
                                                      "ovs"]
    assert row["ovs"]["median"] == 5.0
    assert row["ratios"] == {"hyperplane/kernel": pytest.approx(11.0 / 10.5),
                             "hyperplane/ovs": pytest.approx(11.0 / 5.0),
                             "tap/veth": pytest.approx(10.5 / 11.0)}
    assert row["ratio"] == row["ratios"]["hyperplane/kernel"]
    # a metric the TAP column did not run: its ratio is None, the others stand
    assert s["tcp6-1"]["ratios"]["tap/veth"] is None
    assert s["tcp6-1"]["ratios"]["hyperplane/ovs"] == pytest.approx(9.0 / 5.0)
    # columns that did not run at all give no ratio of theirs
    two = bench.summarize(FIGURES)
    assert set(two["tcp4-1"]["ratios"]) == {"hyperplane/kernel"}
    fr = bench.overload_fractions(s)
    assert fr["ovs"] == pytest.approx(40_000 / 55_000) and fr["hyperplane-tap"] is None


def test_verdicts_judge_ovs_tap_four_streams_and_cpu_cost():
    figs = {m: dict(v) for m, v in FIGURES3.items()}
    figs["hyperplane"]["tcp4-4"] = [9.0, 9.0, 9.0]
    figs["kernel"]["tcp4-4"] = [10.0, 10.0, 10.0]
    s = bench.summarize(figs)
    cost = {"tcp4-4": {"hyperplane": 0.3, "kernel": 0.2, "ratio": 1.5,
                       "ratios": {"hyperplane/kernel": 1.5}}}
    v = {x["name"]: x for x in bench.verdicts(s, 0.95, 2.0, cost)}
    # OVS: tcp4-1 11/5 = 2.2, tcp6-1 9/5 = 1.8, udp64 450k/55k, conn 21k/11k = 1.9
    assert v["TCP one stream IPv4 (hyperplane/ovs)"]["meets"] is True
    assert v["TCP one stream IPv6 (hyperplane/ovs)"]["value"] == pytest.approx(1.8)
    assert v["TCP one stream IPv6 (hyperplane/ovs)"]["meets"] is False
    assert v["loss-free 64-byte UDP rate (hyperplane/ovs)"]["meets"] is True
    assert v["connection rate (hyperplane/ovs)"]["meets"] is False
    assert v["connection rate (hyperplane/ovs)"]["target"] == bench.OVS_RATIO_TARGET
    # rr: at most half of OVS's; the worse of p50 (35/80) and p99 (90/200) counts
    rr = v["request/response p50 and p99 (hyperplane/ovs)"]
    assert rr["at_most"] and rr["target"] == 0.5
    assert rr["value"] == pytest.approx(0.45) and rr["meets"] is True
    # four streams >= 0.85 of the kernel, at most 1.5x its CPU per GB
    assert v["TCP four streams (hyperplane/kernel)"]["value"] == pytest.approx(0.9)
    assert v["TCP four streams (hyperplane/kernel)"]["meets"] is True
    c = v["CPU cost per GB, four streams (hyperplane/kernel)"]
    assert c["value"] == 1.5 and c["at_most"] and c["meets"] is True
    cost["tcp4-4"]["ratios"]["hyperplane/kernel"] = 1.6
    assert not {x["name"]: x for x in bench.verdicts(s, 0.95, 2.0, cost)}[
        "CPU cost per GB, four streams (hyperplane/kernel)"]["meets"]
    # tap/veth: the worst of tcp4-1 (10.5/11), udp64 (440k/450k), conn (19k/21k = 0.905)
    t = v["TCP one stream IPv4, loss-free UDP, connection rate (tap/veth)"]
    assert t["value"] == pytest.approx(19 / 21) and t["meets"] is False
    assert t["target"] == bench.TAP_TARGET


def test_tap_veth_ratio_shows_in_the_table_and_json():
    trials = [{"mode": m, "test": "tcp4-1", "repeat": i, "figures": {"tcp4-1": v},
               "raw": {"gbps": v, "cpu_s_per_gbyte": 0.1 + i}} for m in FIGURES3
              for i, v in enumerate(FIGURES3[m]["tcp4-1"])]
    doc = json.loads(json.dumps(bench.report_json(bench.Settings(), trials, FIGURES3,
                                                  machine_info=MACHINE)))
    assert doc["columns"] == ["hyperplane", "hyperplane-tap", "kernel", "ovs"]
    assert doc["pair_ratios"]["tcp4-1"]["tap/veth"] == pytest.approx(10.5 / 11.0)
    assert doc["ratios"]["tcp4-1"] == pytest.approx(11.0 / 10.5)   # hyperplane/kernel
    assert set(doc["cpu_cost"]["tcp4-1"]) >= {"hyperplane", "hyperplane-tap", "kernel", "ovs"}
    out = io.StringIO()
    bench.print_table(doc, out)
    text = out.getvalue()
    for header in ("hyperplane-tap", "ovs", "ratio h/k", "ratio h/ovs", "ratio tap/veth"):
        assert header in text
    assert re.search(r"tcp4-1 .* 11\.00 \[10\.00-12\.00\] .* 10\.50 .* 10\.50 "
                     r"\[10\.00-11\.00\] .* 5\.00 \[4\.00-6\.00\] .* 1\.05 .* 2\.20 .* 0\.95",
                     text), text
    assert "target <= 0.50" in text


def test_modes_and_envs_parse_and_refuse_with_the_valid_ones(capsys, monkeypatch):
    assert bench.parse_modes("ovs, hyperplane") == ["hyperplane", "ovs"]
    with pytest.raises(bench.BenchError) as e:
        bench.parse_modes("hyperplane,vpp")
    assert e.value.exit_code == 2 if hasattr(e.value, "exit_code") else True
    assert "unknown vpp; valid are hyperplane, kernel, ovs" in str(e.value)
    with pytest.raises(bench.BenchError, match="hyperplane must be among them"):
        bench.parse_modes("kernel,ovs")
    assert bench.parse_envs(None) == ["veth"]
    assert bench.parse_envs("tap,veth") == ["veth", "tap"]
    with pytest.raises(bench.BenchError, match="valid are veth, tap"):
        bench.parse_envs("tun")
    assert bench.columns(["hyperplane", "kernel", "ovs"], ["veth", "tap"]) == [
        "hyperplane", "hyperplane-tap", "kernel", "ovs"]
    assert bench.columns(["hyperplane", "kernel"], ["tap"]) == ["hyperplane", "kernel"]
    assert cli.main(["bench", "--modes", "kernel,vpp"]) == errors.EXIT_USAGE
    assert "valid are hyperplane, kernel, ovs" in capsys.readouterr().err
    assert cli.main(["bench", "--env", "tun"]) == errors.EXIT_USAGE
    # the default: all three where ovs-vswitchd is installed, else two and why
    monkeypatch.setattr(bench_settings.shutil, "which", lambda p: None)
    ns = types.SimpleNamespace(quick=True, tests="conn", seconds=None, repeats=None,
                               loss_tolerance=None, no_pin=True, keep=False)
    assert bench.Settings.from_args(ns).modes == ["hyperplane", "kernel"]
    assert ("OVS mode skipped: ovs-vswitchd is not installed (apt-get install "
            "--no-install-recommends openvswitch-switch)") in capsys.readouterr().err
    monkeypatch.setattr(bench_settings.shutil, "which", lambda p: "/usr/sbin/" + p)
    assert bench.Settings.from_args(ns).modes == list(bench.MODES)
    ns.modes, ns.env = "hyperplane,ovs", "veth,tap"
    s = bench.Settings.from_args(ns)
    assert (s.modes, s.envs) == (["hyperplane", "ovs"], ["veth", "tap"])
    with pytest.raises(bench.BenchError, match="hyperplane must be among them"):
        bench.Settings(modes=["kernel"]).validate()
    with pytest.raises(bench.BenchError, match="--env: nothing given"):
        bench.Settings(envs=[]).validate()


def test_the_hyperplane_lab_gets_the_environments_asked_for():
    with open(os.path.join(REPO, "hyperplane", "bench", "bench_lab.toml")) as f:
        text = f.read()
    pinned = "ring_frames = 16384\ncpus = [1]\ninbound_cpus = [0]\n"
    both, source = bench.hyperplane_lab_text(text, ["veth", "tap"], pinned)
    plan = labconfig.resolve(labconfig.loads(both), "bench42h")
    assert [e.attach for e in plan.envs] == ["veth", "tap"]
    assert "environments veth,tap" in source and "cpus = [1]" in source
    assert plan.datapath.cpus == (1,)
    tap, source = bench.hyperplane_lab_text(text, ["tap"], "")
    plan = labconfig.resolve(labconfig.loads(tap), "bench42h")
    assert [e.attach for e in plan.envs] == ["tap"] and "[datapath]" not in tap
    assert "default placement" in source


def test_the_bench_writes_no_datapath_lines_where_the_default_placement_is_its_pinning(
        monkeypatch):
    plan = bench_plan("bench42h")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert bench.datapath_text(plan, pin=True) == ""
    assert bench.datapath_text(plan, pin=False) == \
        f'placement = "none"\nring_frames = {bench.RING_FRAMES}\n'
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert "cpus = [1]\ninbound_cpus = [0]" in bench.datapath_text(plan, pin=True)


OVS_NEXT_HOPS = {"198.18.1.5": "02:00:00:00:00:05", "2001:2:0:1::5": "02:00:00:00:00:05"}
ROUTER_MAC = "02:00:00:00:00:01"
ENV_MAC = "02:00:00:00:00:02"


def test_ovs_flows_nat_v4_and_v6_to_the_eni_and_forward_only_replies():
    plan = bench_plan("bench42o")
    env, eni = plan.envs[0], plan.enis[0]
    flows = bench.ovs_flows(plan, ENV_MAC, OVS_NEXT_HOPS, ROUTER_MAC)
    out4 = (f"ct(commit,zone=1,nat(src=198.18.1.4:536-65535)),set_field:{eni.mac}->eth_src,"
            "set_field:02:00:00:00:00:05->eth_dst,dec_ttl,output:2")
    assert ("table=0,priority=60,in_port=1,ip,nw_src=198.19.0.2,nw_dst=198.18.1.5 "
            f"actions={out4}") in flows
    out6 = ("ct(commit,zone=1,nat(src=[2001:2:0:1::4]:536-65535)),"
            f"set_field:{eni.mac}->eth_src,set_field:02:00:00:00:00:05->eth_dst,dec_ttl,"
            "output:2")
    assert ("table=0,priority=60,in_port=1,ipv6,ipv6_src=2001:2:0:f000::2,"
            f"ipv6_dst=2001:2:0:1::5 actions={out6}") in flows
    # anything else from the environment goes to the VPC router
    assert any(f.startswith("table=0,priority=50,in_port=1,ip,nw_src=198.19.0.2 ")
               and f"set_field:{ROUTER_MAC}->eth_dst" in f for f in flows)
    # to the ENI: through conntrack (nat undoes the translation) into table 1
    assert ("table=0,priority=50,in_port=2,ip,nw_dst=198.18.1.4 "
            "actions=ct(zone=1,nat,table=1)") in flows
    assert ("table=0,priority=50,in_port=2,ipv6,ipv6_dst=2001:2:0:1::4 "
            "actions=ct(zone=1,nat,table=1)") in flows
    back = (f"set_field:{env.gw_mac}->eth_src,set_field:{ENV_MAC}->eth_dst,dec_ttl,output:1")
    table1 = [f for f in flows if f.startswith("table=1,")]
    assert table1 == [
        f"table=1,priority=50,ct_state=+trk+est,ip,nw_dst=198.19.0.2 actions={back}",
        f"table=1,priority=50,ct_state=+trk+rel,ip,nw_dst=198.19.0.2 actions={back}",
        f"table=1,priority=50,ct_state=+trk+est,ipv6,ipv6_dst=2001:2:0:f000::2 actions={back}",
        f"table=1,priority=50,ct_state=+trk+rel,ipv6,ipv6_dst=2001:2:0:f000::2 actions={back}",
        "table=1,priority=0 actions=drop"]
    # an unsolicited SYN to the ENI is +trk+new: no table-1 flow but the drop takes it, and
    # every table ends in a drop (nothing is flooded: fail_mode=secure, no NORMAL action)
    assert not any("+new" in f or "NORMAL" in f.upper().split("ACTIONS=")[-1] for f in flows)
    assert {f for f in flows if f.endswith("actions=drop")} == {
        "table=0,priority=0 actions=drop", "table=1,priority=0 actions=drop",
        "table=2,priority=0 actions=drop"}
    assert all("output:1" not in f for f in flows if f.startswith("table=0,")
               and "in_port=2" in f)   # nothing from the VPC reaches the env untracked


def test_ovs_flows_answer_arp_and_ndp_for_the_gateway_and_the_eni_only():
    plan = bench_plan("bench42o")
    env, eni = plan.envs[0], plan.enis[0]
    flows = bench.ovs_flows(plan, ENV_MAC, OVS_NEXT_HOPS, ROUTER_MAC)
    arp = [f for f in flows if ",arp," in f]
    assert [f.split(" ")[0] for f in arp] == [
        "table=0,priority=100,in_port=1,arp,arp_op=1,arp_tpa=198.19.0.1",
        "table=0,priority=100,in_port=2,arp,arp_op=1,arp_tpa=198.18.1.4"]
    assert f"set_field:{env.gw_mac}->arp_sha" in arp[0] and arp[0].endswith(",in_port")
    assert f"set_field:{eni.mac}->arp_sha" in arp[1]
    ns = [f for f in flows if "icmp_type=135" in f]
    assert [f.split(" ")[0] for f in ns] == [
        "table=0,priority=100,in_port=1,icmp6,icmp_type=135,nd_target=2001:2:0:f000::1",
        "table=0,priority=100,in_port=2,icmp6,icmp_type=135,nd_target=2001:2:0:1::4"]
    assert "set_field:0xe0000000->nd_reserved" in ns[0]     # router, solicited, override
    assert "set_field:0x60000000->nd_reserved" in ns[1]     # the ENI is no router
    na = [f for f in flows if "icmp_type=136" in f]
    assert len(na) == 2 and f"set_field:{eni.mac}->nd_tll" in na[1]
    # a plan without IPv6 gets no IPv6 flows at all
    v4 = labconfig.Plan(**{**plan.__dict__, "envs": [
        type(env)(**{**env.__dict__, "ipv6": None, "gw6": None})]})
    assert not any("ipv6" in f or "icmp6" in f for f in bench.ovs_flows(
        v4, ENV_MAC, {"198.18.1.5": "02:00:00:00:00:05"}, ROUTER_MAC))


def test_ovs_gets_the_labs_conntrack_timeouts_like_the_kernel():
    from hyperplane.bench import ovs

    tp = dict(x.split("=") for x in ovs.ovs_timeouts(bench_plan("bench42o")))
    kernel = {k.rsplit(".", 1)[1].replace("nf_conntrack_", ""): v
              for k, v in bench.kernel_plan(bench_plan())["conntrack_sysctls"]}
    assert tp["tcp_established"] == str(kernel["tcp_timeout_established"]) == "350"
    assert tp["udp_multiple"] == str(kernel["udp_timeout_stream"])
    assert tp["udp_first"] == tp["udp_single"] == str(kernel["udp_timeout"])
    assert tp["tcp_close"] == str(kernel["tcp_timeout_close"])
    assert len(tp) == 11 and set(ovs.OVS_TIMEOUTS) == set(kernel)
    custom = ct_bench_plan("bench42o", **CT_TIMEOUTS)
    assert "tcp_established=7440" in ovs.ovs_timeouts(custom)
    assert "udp_first=45" in ovs.ovs_timeouts(custom)


def test_ovs_mode_refuses_a_tap_and_a_missing_install(monkeypatch):
    from hyperplane.bench import ovs

    plan = bench_plan("bench42o")
    tap = labconfig.Plan(**{**plan.__dict__, "envs": [
        type(plan.envs[0])(**{**plan.envs[0].__dict__, "attach": "tap"})]})
    with pytest.raises(bench.BenchError, match="needs a veth environment"):
        bench.ovs_flows(tap, ENV_MAC, {}, ROUTER_MAC)
    monkeypatch.setattr(ovs.shutil, "which", lambda p: None)
    assert "apt-get install --no-install-recommends openvswitch-switch" in ovs.missing()
    with pytest.raises(bench.BenchError, match="openvswitch-switch"):
        ovs.OvsSwitch(plan, None).start([])
    # a pid that is not the switch's own daemon is never signalled
    assert not ovs._ours(os.getpid(), "ovs-vswitchd", "/nonexistent/dir")


# ---- every mode is a NAT before it is measured ------------------------------------------------
def test_a_mode_that_is_not_a_nat_fails_the_run_naming_the_mode_and_the_fault(monkeypatch):
    from hyperplane.bench import checks, runner

    mode = bench.Mode("ovs", "bench42o", bench_plan("bench42o"), pin=False)
    monkeypatch.setattr(runner, "_iperf3", lambda *a, **k: {})      # the warm-up's traffic
    monkeypatch.setattr(checks, "server_sees", lambda m, family, port:
                        "198.19.0.2" if family == 2 else "2001:2:0:1::4")
    monkeypatch.setattr(checks, "unsolicited_answered", lambda m, family, port: "")
    r = bench.Runner(bench.Settings(modes=["hyperplane", "ovs"]), {"ovs": mode})
    with pytest.raises(bench.BenchError) as e:
        r.warm_up(mode)
    assert str(e.value) == ("ovs mode is not a correct NAT: the server saw the connection come "
                            "from 198.19.0.2, not from the ENI's address 198.18.1.4: the "
                            "traffic was not source-NATed")
    monkeypatch.setattr(checks, "server_sees", lambda m, family, port:
                        "198.18.1.4" if family == 2 else "2001:2:0:1::4")
    monkeypatch.setattr(checks, "unsolicited_answered", lambda m, family, port:
                        f"a RST answered a SYN to 198.18.1.4 port {port}")
    with pytest.raises(bench.BenchError, match=r"^ovs mode is not a correct NAT: a RST "
                                               r"answered a SYN to 198\.18\.1\.4 port \d+: an "
                                               "ENI must drop connections nobody asked for$"):
        r.warm_up(mode)
    monkeypatch.setattr(checks, "unsolicited_answered", lambda m, family, port: "")
    assert bench.check_nat(mode, 1, 2) == ["198.18.1.4", "2001:2:0:1::4"]


@pytest.mark.skipif(_problem is not None, reason=f"OVS start failure: {_problem}")
def test_an_ovs_that_cannot_start_says_why_with_its_log_and_leaves_nothing(
        tmp_path, monkeypatch, ovs_installed, processes_naming):
    """A node namespace without the bench's links: ovs-vswitchd starts but cannot make them
    its ports. The error names the fix's place (the log's tail is in it), both daemons are
    stopped by pid and their directory goes."""
    from hyperplane.bench import ovs

    if not ovs_installed:
        pytest.skip(ovs.missing())
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    name = f"ovst{os.getpid() % 10000}"
    plan = bench_plan(name)
    os.makedirs(tmp_path / name)
    subprocess.run(["ip", "netns", "add", plan.node_ns], check=True)
    try:
        switch = ovs.OvsSwitch(plan, None)
        with pytest.raises(bench.BenchError) as e:
            switch.start(["table=0,priority=0 actions=drop"])
        text = str(e.value)
        assert text.startswith("OVS mode: env0 did not become port 1 of hpbench"), text
        assert "--- ovs-vswitchd.log:" in text and "--- ovsdb-server.log:" in text
        assert switch.pids == {} and not (tmp_path / name / "ovs").exists()
        assert processes_naming(str(tmp_path)) == []
    finally:
        subprocess.run(["ip", "netns", "delete", plan.node_ns], check=False)
