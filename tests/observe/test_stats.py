"""`hyperplane stats`, `hyperplane metrics` and `hyperplane top`.

Unit tests feed the pure functions (hyperplane.observe.stats.summarize / metric_families / exposition,
hyperplane.observe.top.rates / top_flows) a hand-made ``counters`` reply. The lab tests (root) bring up
one embedded default lab, send a known number of UDP datagrams of a known size from fn-a-0 to an
echo server and a known number of unsolicited datagrams from the server to the ENI address, and
check that `stats --json`, `metrics --once`, a real HTTP scrape of `metrics --listen` and
`top` report exactly that traffic.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import Dict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hyperplane import cli, errors
from hyperplane.datapath import statefile
from hyperplane.lab import lifecycle
from hyperplane.observe import stats, top
from kit import REPO, traffic as nt
from kit.labs import cli_run, wait_until

ENI_A, ENI_B, ENI_NAT = "eni-0aaaaaaaaaaaaaaaa", "eni-0bbbbbbbbbbbbbbbb", "eni-0ccccccccccccccc1"


def _drops(**nonzero) -> Dict[str, int]:
    d = {r: 0 for r in stats.ENGINE_REASONS}
    d.update(nonzero)
    return d


def _pool(eni, address, family, proto, used, size=65000, enabled=True):
    return dict(eni=eni, family=family, address=address, proto=proto, used=used, size=size,
                enabled=enabled)


def counters(now: float = 100.0, scale: int = 1) -> dict:
    """A counters reply as hyperplane.datapath.daemon.Daemon.counters() gives it: one ENI key with two
    scale-out ENIs (the first one retired: not live any more), one NAT gateway. ``scale``
    multiplies the traffic counters (for rates between two snapshots)."""
    dp_drops = {"runt": 0, "not_our_mac": 0, "multicast": 9, "engine": 7, "no_route": 2,
                "function_pending": 0}
    return {
        "ok": True,
        "forwarded_outbound": 110 * scale, "forwarded_inbound": 95 * scale, "rst_sent": 1,
        "rst_withheld_fragment": 3,
        "drops": dp_drops,
        "links": [
            dict(name="eni0", role="eni", kind="veth", ifname="eni0", rx_packets=120 * scale,
                 rx_bytes=9000 * scale, rx_ring_drops=3, tx_packets=110 * scale,
                 tx_bytes=8800 * scale, tx_errors=0, up=True, state="active", blocked=0),
            dict(name="fn-a-0", role="env", kind="tap", ifname=None, rx_packets=111 * scale,
                 rx_bytes=8900, rx_ring_drops=0, tx_packets=95, tx_bytes=7000, tx_errors=1,
                 up=False, state="active", blocked=4),
        ],
        "enis": [{
            "id": ENI_A, "key": ["subnet-a", ["sg-2", "sg-1"]], "eni_ids": [ENI_A, ENI_B],
            "live_eni_ids": [ENI_B],
            "packets_outbound": 100 * scale, "bytes_outbound": 12800 * scale,
            "packets_inbound": 90 * scale, "bytes_inbound": 11520 * scale,
            "connections_created": 40 * scale, "connections_expired": 10,
            "connections": 30, "capacity": 1000, "events_lost": 2,
            "drops": _drops(unsolicited=5, security_group=1),
            "pool": [_pool(ENI_A, "198.18.1.4", 4, "tcp", 13000, enabled=False),
                     _pool(ENI_A, "198.18.1.4", 4, "udp", 7),
                     _pool(ENI_B, "198.18.1.9", 4, "tcp", 17),
                     _pool(ENI_B, "2001:2:0:1::9", 6, "udp", 0)],
            "eni_counters": [
                dict(eni=ENI_A, packets_outbound=60 * scale, bytes_outbound=7680 * scale,
                     packets_inbound=50 * scale, bytes_inbound=6400 * scale),
                dict(eni=ENI_B, packets_outbound=40 * scale, bytes_outbound=5120 * scale,
                     packets_inbound=40 * scale, bytes_inbound=5120 * scale)],
        }],
        "nat_gateways": [{
            "id": "nat-0123", "packets_outbound": 10 * scale, "bytes_outbound": 1000 * scale,
            "packets_inbound": 5 * scale, "bytes_inbound": 500 * scale,
            "connections_created": 3, "connections_expired": 1, "connections": 2,
            "capacity": 500, "events_lost": 0, "drops": _drops(unsolicited=1),
            "pool": [_pool(ENI_NAT, "198.18.200.10", 4, "tcp", 2, size=64512)],
            "eni_counters": [dict(eni=ENI_NAT, packets_outbound=10 * scale,
                                  bytes_outbound=1000 * scale, packets_inbound=5 * scale,
                                  bytes_inbound=500 * scale)],
        }],
        "events": {"subscribers": 1, "sent": 42, "lost": 2},
        "flow_logs": {"directory": "/x", "interval": 10, "records_written": 12, "intervals": 3},
        "control_plane": {"enis_created": 2, "scale_outs": 1},
        "clock": {"now": now, "offset": 0.0},
    }


# ---- summary ------------------------------------------------------------------------------------
def test_totals_sum_every_table_and_keep_the_data_path_forwarding_apart():
    s = stats.summarize(counters(), lab="x")
    t = s["totals"]
    assert s["schema"] == stats.SCHEMA and s["lab"] == "x"
    assert t["forwarded_packets"] == {"outbound": 110, "inbound": 95}
    assert t["packets"] == {"outbound": 110, "inbound": 95}          # key 100/90 + NAT 10/5
    assert t["bytes"] == {"outbound": 13800, "inbound": 12020}
    assert (t["connections"], t["capacity"]) == (32, 1500)
    assert (t["connections_created"], t["connections_expired"]) == (43, 11)
    # the data path's "engine" bucket (7) is the engines' reasons (5+1+1): counted once
    assert t["dropped"] == 9 + 2 + (5 + 1 + 1)
    assert t["rst_sent"] == 1 and t["rst_withheld_fragment"] == 3
    json.dumps(s)   # one JSON document


def test_per_eni_and_per_key():
    s = stats.summarize(counters())
    enis = {e["id"]: e for e in s["enis"]}
    assert set(enis) == {ENI_A, ENI_B, ENI_NAT}
    assert enis[ENI_A]["packets"] == {"outbound": 60, "inbound": 50}
    assert enis[ENI_A]["bytes"] == {"outbound": 7680, "inbound": 6400}
    assert enis[ENI_A]["key"] == "subnet-a/sg-1+sg-2" and enis[ENI_A]["live"] is False
    assert enis[ENI_B]["live"] is True
    assert enis[ENI_NAT]["nat_gateway"] == "nat-0123" and enis[ENI_NAT]["key"] is None
    (k,) = s["keys"]
    assert k["key"] == "subnet-a/sg-1+sg-2" and k["security_groups"] == ["sg-2", "sg-1"]
    assert (k["connections"], k["capacity"], k["percent"]) == (30, 1000, 3.0)
    assert k["eni_ids"] == [ENI_A, ENI_B] and k["live_eni_ids"] == [ENI_B]
    (n,) = s["nat_gateways"]
    assert (n["id"], n["connections"], n["percent"]) == ("nat-0123", 2, 0.4)


def test_pool_fill_percent():
    pools = stats.summarize(counters())["pools"]
    p = {(x["eni"], x["address"], x["proto"]): x for x in pools}
    a = p[(ENI_A, "198.18.1.4", "tcp")]
    assert (a["used"], a["size"], a["percent"], a["enabled"]) == (13000, 65000, 20.0, False)
    assert p[(ENI_B, "2001:2:0:1::9", "udp")]["percent"] == 0.0
    assert p[(ENI_B, "2001:2:0:1::9", "udp")]["family"] == 6
    assert p[(ENI_NAT, "198.18.200.10", "tcp")]["nat_gateway"] == "nat-0123"
    assert stats.percent(1, 0) == 0.0


def test_every_drop_reason_in_json_only_nonzero_in_text():
    s = stats.summarize(counters())
    assert list(s["drops"]["engine"]) == list(stats.ENGINE_REASONS)
    assert s["drops"]["engine"]["unsolicited"] == 6          # key 5 + NAT gateway 1
    assert s["drops"]["engine"]["fragment"] == 0
    assert s["drops"]["datapath"]["runt"] == 0
    text = stats.render_plain(stats.sections(s), stats.stats_head(s))
    drops = text.split("DROPS\n")[1].split("\n\n")[0].splitlines()
    rows = [ln.split() for ln in drops[1:]]
    assert rows == [["engine", "unsolicited", "6"], ["engine", "security_group", "1"],
                    ["datapath", "multicast", "9"], ["datapath", "no_route", "2"]]
    assert "fragment" not in text and "runt" not in text


def test_text_view_is_greppable():
    s = stats.summarize(counters(), lab="lab1")
    text = stats.render_plain(stats.sections(s), stats.stats_head(s))
    line = next(ln for ln in text.splitlines() if "198.18.1.4" in ln and "tcp" in ln)
    assert line.split() == [ENI_A, "(no", "new)", "198.18.1.4", "tcp", "13000", "65000",
                            "20.0%"]
    conn = next(ln for ln in text.splitlines() if ln.split()[:1] == ["subnet-a/sg-1+sg-2"])
    assert conn.split()[1:4] == ["30", "1000", "3.0%"]
    assert any(ln.split() == ["outbound", "110", "110", "13800"] for ln in text.splitlines())
    assert "FLOW LOGS" in text and "records_written" in text
    assert "DOWN" in text     # fn-a-0's interface is gone


def _state_section(s: dict) -> Dict[str, str]:
    text = stats.render_plain(stats.sections(s), stats.stats_head(s))
    rows = text.split("SAVED STATE\n")[1].split("\n\n")[0].splitlines()[1:]
    cells = [ln.strip().split("  ", 1) for ln in rows]   # columns are 2+ spaces apart
    return {k.strip(): v.strip() for k, v in cells}


def test_stats_names_every_refusal_the_daemon_counts():
    assert stats.REFUSALS == statefile.RESTORE_COUNTS[1:]


def test_saved_state_when_nothing_is_saved():
    s = stats.summarize(counters())          # a data path run on its own: no restore, no saves
    assert s["state"]["file"] is None and s["state"]["restored"] is None
    assert s["state"]["saves"] == {"saved": 0, "failed": 0, "last_error": None,
                                   "last_connections": 0, "last_seconds": None,
                                   "last_loop_seconds": None}
    assert _state_section(s) == {"file": "none: a data path run on its own saves nothing"}


def test_placement_in_json_and_text():
    from hyperplane.labconfig.model import DatapathPlan
    from hyperplane.labconfig.placement import place

    assert stats.summarize(counters())["placement"] is None   # an older daemon: none said
    assert "placement" not in [x.title for x in stats.sections(stats.summarize(counters()))]
    p = place(DatapathPlan(cpus=(1,)), {0, 1}, 2).to_dict()
    s = stats.summarize({**counters(), "placement": p})
    assert s["placement"] == p and json.loads(json.dumps(s))["placement"] == p
    (sec,) = [x for x in stats.sections(s) if x.title == "placement"]
    assert sec.rows == [["loop CPUs", "1", "lab file"], ["inbound worker CPUs", "0", "auto"],
                        ["ring frames", "16384", "auto"],
                        ["functions' CPUs", "0", "placement auto"],
                        ["workers", "1", "default"]]
    two = place(DatapathPlan(workers=2, worker_cpus=(1, 0)), {0, 1}, 2).to_dict()
    (sec,) = [x for x in stats.sections(stats.summarize({**counters(), "placement": two}))
              if x.title == "placement"]
    assert sec.rows[0] == ["loop CPUs", "1", "lab file"]     # worker 0 is the loop
    assert sec.rows[1][1] == "none (no worker)"               # no inbound worker beside them
    assert sec.rows[-2:] == [["workers", "2", "lab file"], ["worker CPUs", "1,0", "lab file"]]
    none = place(DatapathPlan(placement="none"), {0, 1}).to_dict()
    (sec,) = [x for x in stats.sections(stats.summarize({**counters(), "placement": none}))
              if x.title == "placement"]
    assert sec.rows[:2] == [["loop CPUs", "any (unpinned)", "default"],
                            ["inbound worker CPUs", "none (no worker)", "default"]]


def test_saved_state_restored_and_saving():
    c = counters()
    c["restore"] = {"state_file": "/run/hyperplane/l/conntrack.state",
                    "restored_from": "/run/hyperplane/l/conntrack.state", "ignored": None,
                    "shift": 0.0, "restored": 1200, "final": True, "down_for": 0.64,
                    "same_boot": True, "expired": 3, "eni_mismatch": 0, "duplicate": 0,
                    "table_full": 0, "invalid": 1, "tables": []}
    c["saves"] = {"saved": 4, "failed": 1, "last_error": "OSError: [Errno 28] No space left",
                  "last_connections": 1180, "last_seconds": 0.0123, "last_loop_seconds": 0.0004}
    s = stats.summarize(c)
    st = s["state"]
    assert (st["restored"], st["final"], st["down_for"], st["expired"], st["invalid"]) == \
        (1200, True, 0.64, 3, 1)
    assert st["saves"]["saved"] == 4 and st["saves"]["failed"] == 1
    rows = _state_section(s)
    assert rows["file"] == "/run/hyperplane/l/conntrack.state"
    assert rows["at start"] == ("restored 1200 connection(s), saved at shutdown, down 0.6 s; "
                                "refused: expired 3, invalid 1")
    assert rows["saves"] == ("4 saved, 1 failed; last: 1180 connection(s) in 12.3 ms (the loop "
                             "held 0.4 ms)")
    assert rows["last save error"] == "OSError: [Errno 28] No space left"
    json.dumps(s)                            # the JSON view carries it as is


def test_saved_state_ignored_file_says_why():
    c = counters()
    c["restore"] = {"state_file": "/x/conntrack.state", "restored_from": None,
                    "ignored": "saved by another lab plan (config hash differs)"}
    c["saves"] = {"saved": 0, "failed": 0, "last_error": None, "last_connections": 0,
                  "last_seconds": None}
    s = stats.summarize(c)
    assert s["state"]["restored"] is None and s["state"]["expired"] == 0
    rows = _state_section(s)
    assert rows["at start"] == "started afresh: saved by another lab plan (config hash differs)"
    assert rows["saves"] == "0 saved, 0 failed"


# ---- rates and top flows ---------------------------------------------------------------------------
def test_rates_between_two_snapshots():
    a = stats.summarize(counters(now=100.0, scale=1))
    b = stats.summarize(counters(now=102.0, scale=3))
    r = top.rates(a, b)
    assert r["dt"] == 2.0
    assert r["packets"] == {"outbound": 110.0, "inbound": 95.0}     # (330-110)/2, (285-95)/2
    assert r["bytes"]["outbound"] == (13800 * 3 - 13800) / 2
    assert r["forwarded"]["inbound"] == 95.0
    assert r["enis"][ENI_A]["packets"]["outbound"] == 60.0
    assert r["connections_created"] == (40 * 3 + 3 - 43) / 2     # the NAT gateway made none
    assert r["drops"]["engine"]["unsolicited"] == 0.0


def test_rates_survive_a_counter_reset_and_a_clock_advance():
    a = stats.summarize(counters(now=100.0, scale=3))
    c = counters(now=3702.0, scale=1)
    c["clock"]["offset"] = 3600.0      # `hyperplane clock --advance 1h` between the snapshots
    r = top.rates(a, stats.summarize(c))
    assert r["dt"] == 2.0
    # the data path restarted: the new value is the whole delta, never a negative rate
    assert r["packets"]["outbound"] == 110 / 2


def _entry(sport, pk, by, eni=ENI_B):
    return {"family": 4, "proto": "udp", "state": "REPLIED", "eni": eni, "eni_id": eni,
            "orig": {"src": "198.19.0.2", "sport": sport, "dst": "198.18.1.5", "dport": 7},
            "reply": {"src": "198.18.1.5", "sport": 7, "dst": "198.18.1.9", "dport": sport},
            "packets_orig": pk, "bytes_orig": by, "packets_reply": pk, "bytes_reply": by}


def test_top_flows_sorted_by_what_moved_since_the_last_refresh():
    prev = [_entry(1000, 100, 100000), _entry(1001, 1, 100)]
    cur = [_entry(1000, 101, 100100), _entry(1001, 11, 1100), _entry(1002, 2, 50)]
    flows = top.top_flows(prev, cur, dt=0.5)
    assert [f["orig"]["sport"] for f in flows] == [1001, 1000, 1002]
    f = flows[0]
    assert (f["d_packets"], f["d_bytes"], f["packets"], f["bytes"]) == (20, 2000, 22, 2200)
    assert (f["packets_rate"], f["bytes_rate"]) == (40.0, 4000.0)
    assert [f["orig"]["sport"] for f in top.top_flows(prev, cur, 0.5, by="packets")] == \
        [1001, 1002, 1000]
    assert len(top.top_flows([], [_entry(p, 1, 1) for p in range(40)], 1.0)) == top.TOP_FLOWS
    with pytest.raises(ValueError, match="bytes"):
        top.top_flows(prev, cur, 1.0, by="rate")


def test_top_frame_has_rates_drops_pools_and_flows():
    a = top.Snapshot(stats.summarize(counters(now=100.0)), [_entry(1000, 1, 100)], 100.0, 5.0)
    b = top.Snapshot(stats.summarize(counters(now=101.0, scale=2)), [_entry(1000, 3, 300)],
                     101.0, 6.0)
    text = stats.render_plain(top.frame_sections(a, b), top.frame_head("lab1", b, 1.0, 1))
    assert "lab lab1" in text and "uptime 0:00:06" in text
    rates = text.split("RATES\n")[1].split("\n\n")[0]
    assert any(ln.split()[:3] == ["all", "outbound", "110/s"] for ln in rates.splitlines())
    assert "unsolicited" in text
    assert "[####----------------]" in text          # 13000/65000 = 20 %
    flow = next(ln for ln in text.splitlines() if "198.19.0.2:1000 -> 198.18.1.5:7" in ln)
    assert "198.18.1.9:1000" in flow and flow.split()[-2:] == ["6", "600"]


def test_human_and_bar():
    assert top.human(950) == "950" and top.human(1500, "B/s") == "1.5 kB/s"
    assert top.human(2.5) == "2.5"
    assert top.bar(0.001, 10) == "[#---------]" and top.bar(100, 4) == "[####]"


# ---- Prometheus ---------------------------------------------------------------------------------
def _samples(text: str) -> Dict[str, list]:
    """sample name -> [(labels, value)] from an exposition, parsed by prometheus_client."""
    out: Dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples, name, **labels) -> float:
    got = [v for lb, v in samples.get(name, []) if all(lb.get(k) == w for k, w in labels.items())]
    assert len(got) == 1, f"{name}{labels}: {got} in {samples.get(name)}"
    return got[0]


def test_exposition_names_labels_and_values():
    text = stats.exposition(counters(), lab="lab1")
    fams = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert fams["hyperplane_packets"] == "counter" and fams["hyperplane_connections"] == "gauge"
    assert all(n.startswith("hyperplane_") for n in fams)
    s = _samples(text)
    assert _value(s, "hyperplane_up") == 1
    assert _value(s, "hyperplane_lab_info", lab="lab1") == 1
    assert _value(s, "hyperplane_packets_total", direction="outbound", eni=ENI_A) == 60
    assert _value(s, "hyperplane_bytes_total", direction="inbound", eni=ENI_B) == 5120
    assert _value(s, "hyperplane_packets_total", direction="inbound", eni=ENI_NAT) == 5
    assert _value(s, "hyperplane_forwarded_packets_total", direction="outbound") == 110
    assert _value(s, "hyperplane_rst_withheld_fragment_total") == 3
    assert _value(s, "hyperplane_drops_total", layer="engine", reason="unsolicited") == 6
    assert _value(s, "hyperplane_drops_total", layer="engine", reason="fragment") == 0
    assert _value(s, "hyperplane_drops_total", layer="datapath", reason="no_route") == 2
    # the data path's "engine" bucket is not exported: summing the family counts each drop once
    assert not [lb for lb, _ in s["hyperplane_drops_total"] if lb["reason"] == "engine"]
    assert sum(v for _, v in s["hyperplane_drops_total"]) == 9 + 2 + 7
    assert _value(s, "hyperplane_connections", key="subnet-a/sg-1+sg-2") == 30
    assert _value(s, "hyperplane_connections_capacity", key="subnet-a/sg-1+sg-2") == 1000
    assert _value(s, "hyperplane_nat_gateway_connections", nat_gateway="nat-0123") == 2
    assert _value(s, "hyperplane_port_pool_used", eni=ENI_A, address="198.18.1.4",
                  proto="tcp", family="ipv4") == 13000
    assert _value(s, "hyperplane_port_pool_size", eni=ENI_B, address="2001:2:0:1::9",
                  proto="udp", family="ipv6") == 65000
    assert _value(s, "hyperplane_link_packets_total", link="eni0", direction="rx") == 120
    assert _value(s, "hyperplane_link_up", link="fn-a-0") == 0
    assert _value(s, "hyperplane_events_lost_total") == 2
    assert _value(s, "hyperplane_events_sent_total") == 42
    assert _value(s, "hyperplane_control_plane_scale_outs_total") == 1
    assert _value(s, "hyperplane_flow_logs_records_written_total") == 12
    assert _value(s, "hyperplane_flow_logs_interval_seconds") == 10
    assert _value(s, "hyperplane_new_connections_total", key="subnet-a/sg-1+sg-2") == 40
    assert not [n for n in s if n.startswith(("process_", "python_"))]


def test_daemon_down_is_up_0_not_an_error():
    s = _samples(stats.exposition(None, lab="lab1"))
    assert list(s) == ["hyperplane_up"] and _value(s, "hyperplane_up") == 0

    def down():
        raise errors.HyperplaneError("the data path of lab 'lab1' is not running")

    from prometheus_client import generate_latest
    reg, col = stats.registry_for(down, "lab1")
    assert _value(_samples(generate_latest(reg).decode()), "hyperplane_up") == 0
    assert "not running" in col.last_error
    calls = []
    reg, _ = stats.registry_for(lambda: calls.append(1) or counters(), "lab1")
    for _ in range(2):   # every scrape asks the daemon again: values are never stale
        generate_latest(reg)
    assert len(calls) == 2


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)), ("127.0.0.53:0", ("127.0.0.53", 0)),
    ("[::1]:9469", ("::1", 9469)), ("localhost:80", ("127.0.0.1", 80))])
def test_listen_loopback_accepted(text, want):
    assert stats.parse_listen(text) == want


@pytest.mark.parametrize("text,why", [
    ("0.0.0.0:9469", "not a loopback"), ("198.18.0.1:9469", "not a loopback"),
    ("[::]:9469", "not a loopback"), ("example.com:9469", "not an IP address"),
    ("9469", "ADDRESS:PORT"), ("127.0.0.1:70000", "out of range")])
def test_listen_elsewhere_refused(text, why):
    with pytest.raises(ValueError, match=why) as e:
        stats.parse_listen(text)
    assert "--listen" in str(e.value)


def test_cli_refuses_non_loopback_and_bad_top_options(capsys):
    assert cli.main(["metrics", "--listen", "0.0.0.0:9469", "--name", "nosuchlab"]) == \
        errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "Traceback" not in err
    assert cli.main(["top", "--interval", "0", "--name", "nosuchlab"]) == errors.EXIT_USAGE
    assert "--interval" in capsys.readouterr().err
    assert cli.main(["top", "--iterations", "0", "--name", "nosuchlab"]) == errors.EXIT_USAGE
    assert "--iterations" in capsys.readouterr().err


def test_http_scrape_while_the_daemon_is_down_is_200_with_up_0():
    def down():
        raise errors.HyperplaneError("the data path of lab 'lab1' is not running")

    reg, _ = stats.registry_for(down, "lab1")
    srv = stats.serve(reg, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            s = _samples(resp.read().decode())
        assert list(s) == ["hyperplane_up"] and _value(s, "hyperplane_up") == 0
    finally:
        srv.shutdown()
        srv.server_close()


# ---- a real lab ------------------------------------------------------------------------------------
N_DATAGRAMS, PAYLOAD = 7, 111          # UDP fn-a-0 -> server, each echoed back
N_UNSOLICITED = 5                      # UDP server -> ENI address, matching no connection
IP_LEN = 20 + 8 + PAYLOAD


def stats_json(name: str) -> dict:
    r = cli_run("stats", "--json", "--name", name)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def slab(dlab) -> dict:
    """The module's default lab (the root conftest's) with known traffic through it: returns
    the lab name, plan, the flow's tuple, and `stats --json` before and after."""
    name = dlab.name
    plan = dlab.plan
    env, server, eni = plan.env("fn-a-0"), plan.hosts[0], plan.enis[0]
    s4 = server.ipv4.split("/")[0]
    before = stats_json(name)
    with nt.UdpEchoServer(server.netns, s4) as echo:
        c = nt.socket_in(env.netns, socket.AF_INET, socket.SOCK_DGRAM)
        with c:
            c.bind((env.ipv4.split("/")[0], 0))
            c.settimeout(5)
            for i in range(N_DATAGRAMS):
                data = bytes([i]) * PAYLOAD
                c.sendto(data, (s4, echo.port))
                got, peer = c.recvfrom(2048)
                assert (got, peer) == (data, (s4, echo.port))
            client = c.getsockname()
    u = nt.socket_in(server.netns, socket.AF_INET, socket.SOCK_DGRAM)
    with u:   # port 9 is below the pools' first port (536): never a connection's
        for _ in range(N_UNSOLICITED):
            u.sendto(b"x" * PAYLOAD, (eni.ipv4, 9))

    def counted():
        c = lifecycle.ask(name, "counters")
        n = sum(e["drops"]["unsolicited"] for e in c["enis"])
        return n >= before["drops"]["engine"]["unsolicited"] + N_UNSOLICITED
    wait_until(counted, 10, "the unsolicited datagrams to be dropped")
    after = stats_json(name)
    return {"name": name, "plan": plan, "eni": eni.id, "client": client, "server": s4,
            "port": echo.port, "before": before, "after": after}


def _eni(s: dict, eni_id: str) -> dict:
    return next(e for e in s["enis"] if e["id"] == eni_id)


def _udp_pool(s: dict, eni_id: str) -> dict:
    return next(p for p in s["pools"] if p["eni"] == eni_id and p["proto"] == "udp"
                and p["family"] == 4)


def test_stats_json_counts_the_traffic_sent(slab):
    b, a = slab["before"], slab["after"]
    eb, ea = _eni(b, slab["eni"]), _eni(a, slab["eni"])
    for d in ("outbound", "inbound"):
        assert ea["packets"][d] - eb["packets"][d] == N_DATAGRAMS, d
        assert ea["bytes"][d] - eb["bytes"][d] == N_DATAGRAMS * IP_LEN, d
        assert a["totals"]["forwarded_packets"][d] - b["totals"]["forwarded_packets"][d] >= \
            N_DATAGRAMS
    assert a["drops"]["engine"]["unsolicited"] - b["drops"]["engine"]["unsolicited"] == \
        N_UNSOLICITED
    assert a["totals"]["connections"] >= 1
    assert _udp_pool(a, slab["eni"])["used"] >= 1
    (k,) = a["keys"]
    assert k["connections"] >= 1 and k["capacity"] > 0
    assert a["state"]["file"].endswith("/conntrack.state")   # a lab's data path saves
    assert a["state"]["saves"]["failed"] == 0


def test_stats_text_view(slab):
    r = cli_run("stats", "--name", slab["name"])
    assert r.returncode == 0, r.stderr
    a = slab["after"]
    eni_row = next(ln.split() for ln in r.stdout.splitlines()
                   if ln.split()[:1] == [slab["eni"]])
    ea = _eni(a, slab["eni"])
    assert eni_row[2:] == [str(ea["packets"]["outbound"]), str(ea["bytes"]["outbound"]),
                           str(ea["packets"]["inbound"]), str(ea["bytes"]["inbound"])]
    drop = next(ln.split() for ln in r.stdout.splitlines() if "unsolicited" in ln.split())
    assert drop == ["engine", "unsolicited", str(a["drops"]["engine"]["unsolicited"])]


def _check_exposition(text: str, slab: dict) -> None:
    a, eni = slab["after"], slab["eni"]
    s = _samples(text)
    assert _value(s, "hyperplane_up") == 1
    ea = _eni(a, eni)
    for d in ("outbound", "inbound"):
        assert _value(s, "hyperplane_packets_total", direction=d, eni=eni) == ea["packets"][d]
        assert _value(s, "hyperplane_bytes_total", direction=d, eni=eni) == ea["bytes"][d]
    assert _value(s, "hyperplane_drops_total", layer="engine", reason="unsolicited") == \
        a["drops"]["engine"]["unsolicited"]
    (k,) = a["keys"]
    assert _value(s, "hyperplane_connections", key=k["key"]) == k["connections"]
    assert _value(s, "hyperplane_connections_capacity", key=k["key"]) == k["capacity"]
    p = _udp_pool(a, eni)
    assert _value(s, "hyperplane_port_pool_used", eni=eni, address=p["address"], proto="udp",
                  family="ipv4") == p["used"] >= 1


def test_metrics_once(slab):
    r = cli_run("metrics", "--once", "--name", slab["name"])
    assert r.returncode == 0, r.stderr
    _check_exposition(r.stdout, slab)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_http_scrape(slab):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hyperplane", "metrics", "--name",
                             slab["name"], "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/metrics"
        assert url in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            _check_exposition(resp.read().decode(), slab)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0


def test_top_shows_the_flow_and_rates(slab):
    r = cli_run("top", "--name", slab["name"], "--iterations", "2", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    frames = r.stdout.split("---- hyperplane top")[1:]
    assert len(frames) == 2
    src, sport = slab["client"]
    flow = f"{src}:{sport} -> {slab['server']}:{slab['port']}"
    for f in frames:
        assert "\nRATES\n" in f and "\nDROPS\n" in f and "\nPORT POOLS\n" in f
        line = next((ln for ln in f.splitlines() if flow in ln), None)
        assert line is not None, f"flow {flow} not in:\n{f}"
        cols = line.split()
        assert cols[0] == "udp" and cols[-2:] == [str(2 * N_DATAGRAMS),
                                                  str(2 * N_DATAGRAMS * IP_LEN)]
        assert any(ln.split()[:2] == ["engine", "unsolicited"] for ln in f.splitlines())


