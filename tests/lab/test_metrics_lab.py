"""``[metrics]`` in a running lab: the exporter ``lab up`` starts, what it serves, and its life.

The module's lab is examples/monitoring/lab.toml with ``listen = "127.0.0.1:0"`` (a free port):
a function in a private subnet behind a NAT gateway, a VPC host and an internet host. Traffic
goes through the ENI (UDP to the VPC host), through the NAT gateway (TCP to the internet host)
and at the ENI unasked (dropped as unsolicited). Then a real HTTP scrape of the exporter the
lab started must serve every metric name that every dashboard panel and every alert rule
queries (hyperplane.observe.promql) -- and the same check must fail on a name it does not serve.
The exporter's life: ``lab status`` shows its URL, it serves ``hyperplane_up 0`` while the data
path is down and survives ``lab restart``, which starts it again when it died, and ``lab down``
stops it (its pid gone, its port closed).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
from pathlib import Path
from typing import Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hyperplane import labconfig, proc
from hyperplane.errors import HyperplaneError
from hyperplane.lab import lifecycle
from hyperplane.observe import dashboards, exporter, promql
from kit import REPO, traffic
from kit.labs import cli_run, destroy, lab_name, ours, wait_until

EXAMPLE = Path(REPO) / "examples" / "monitoring" / "lab.toml"
N_UDP, N_TCP, N_UNSOLICITED = 5, 3, 4


def lab_text(listen: str = "127.0.0.1:0") -> str:
    text = EXAMPLE.read_text()
    out, n = re.subn(r'(?m)^listen = "[^"]*"', f'listen = "{listen}"', text)
    assert n == 1, "examples/monitoring/lab.toml has no [metrics] listen line"
    return out


def samples(text: str) -> Dict[Tuple[str, Tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(text: str, name: str, **labels) -> float:
    want = set(labels.items())
    got = [v for (n, ls), v in samples(text).items() if n == name and want <= set(ls)]
    assert got, f"{name}{labels} not in the scrape"
    return sum(got)


def metrics_of(name: str) -> dict:
    st = lifecycle.load_lab(name)[0]
    return {"pid": st.get("metrics_pid"), "url": st.get("metrics_url")}


@pytest.fixture(scope="module")
def mlab(run_dir, hyperplane_module_lab_factory):
    """The monitoring example lab, up, with traffic of every kind through it."""
    lab = hyperplane_module_lab_factory(config_text=lab_text())
    plan = lab.plan
    env = plan.envs[0]
    db, web = plan.host("db"), plan.internet_hosts[0]
    eni = plan.enis[0]
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(traffic.UdpEchoServer(db.netns, labconfig.bare(db.ipv4)))
        tcp = stack.enter_context(traffic.TcpServer(web.netns, labconfig.bare(web.ipv4),
                                                    port=80))
        for i in range(N_UDP):
            data = bytes([i]) * 50
            reply, _ = traffic.udp_roundtrip(env.netns, echo.addr, echo.port, data)
            assert reply == data
        for i in range(N_TCP):
            traffic.tcp_send(env.netns, tcp.addr, tcp.port, b"m" * 1000, verify=True)
    u = traffic.socket_in(db.netns, socket.AF_INET, socket.SOCK_DGRAM)
    with u:   # port 9 is below the pools' first port: never a connection's
        for _ in range(N_UNSOLICITED):
            u.sendto(b"x" * 20, (eni.ipv4, 9))
    wait_until(lambda: sum(e["drops"]["unsolicited"]
                           for e in lifecycle.ask(lab.name, "counters")["enis"])
               >= N_UNSOLICITED, 10, "the unsolicited datagrams to be dropped")
    return lab


def test_the_lab_started_an_exporter_on_a_free_port(mlab):
    m = metrics_of(mlab.name)
    assert proc.pid_alive(m["pid"]) and proc.is_lab_process(m["pid"], mlab.name)
    host_port = m["url"].split("//")[1].split("/")[0]
    assert m["url"] == f"http://{host_port}/metrics" and host_port.startswith("127.0.0.1:")
    assert int(host_port.rsplit(":", 1)[1]) > 0          # the real port, not the 0 asked for
    assert exporter.read_url(mlab.name) == m["url"] == mlab.metrics_url


def test_every_dashboard_and_alert_query_reads_a_served_name(mlab):
    text = exporter.scrape(metrics_of(mlab.name)["url"])
    assert value(text, "hyperplane_up") == 1
    # the traffic is there, so the panels have something to show
    assert value(text, "hyperplane_packets_total", direction="outbound") >= N_UDP + N_TCP
    assert value(text, "hyperplane_drops_total", layer="engine",
                 reason="unsolicited") >= N_UNSOLICITED
    assert value(text, "hyperplane_nat_gateway_connections_capacity") > 0
    assert value(text, "hyperplane_lab_info", lab=mlab.name) == 1
    served = promql.served_names(text)
    queries = dashboards.queries()
    assert len(queries) > 15
    assert promql.unserved(queries, served) == {}, \
        "a dashboard panel or alert rule queries a metric the exporter does not serve"
    # and the check can fail: a query of a name this scrape does not have is reported
    bad = queries + [("panel 'typo'", "rate(hyperplane_drops[5m])"),
                     ("alert Typo", "hyperplane_port_pool_fill > 0.8")]
    assert promql.unserved(bad, served) == {"panel 'typo'": ["hyperplane_drops"],
                                            "alert Typo": ["hyperplane_port_pool_fill"]}


def test_status_shows_the_url_and_prometheus_config_uses_it(mlab):
    m = metrics_of(mlab.name)
    r = cli_run("lab", "status", "--name", mlab.name)
    assert r.returncode == 0, r.stderr
    assert f"metrics: {m['url']} (exporter pid {m['pid']})" in r.stdout
    r = cli_run("lab", "status", "--name", mlab.name, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["metrics"]
    assert got == {"listen": "127.0.0.1:0", "url": m["url"], "pid": m["pid"], "running": True}
    r = cli_run("metrics", "--prometheus-config", "--name", mlab.name)
    assert r.returncode == 0, r.stderr
    target = m["url"].split("//")[1].split("/")[0]
    assert f'- "{target}"' in r.stdout and f'lab: "{mlab.name}"' in r.stdout
    # a foreground `hyperplane metrics` on the same port says who has it
    r = cli_run("metrics", "--name", mlab.name, "--listen", target)
    assert r.returncode == 1 and "cannot listen" in r.stderr, r.stderr
    assert f"already serves its metrics at {m['url']}" in r.stderr


def test_exporter_outlives_the_data_path_and_restart_brings_it_back(mlab):
    name = mlab.name
    m = metrics_of(name)
    state, _ = lifecycle.load_lab(name)
    lifecycle.stop_datapath(name, state)
    text = exporter.scrape(m["url"])         # still answering: the data path is down
    assert value(text, "hyperplane_up") == 0
    assert promql.served_names(text) == {"hyperplane_up"}
    mlab.restart()
    assert metrics_of(name) == m              # the same exporter, at the same URL
    assert value(exporter.scrape(m["url"]), "hyperplane_up") == 1

    os.kill(m["pid"], signal.SIGTERM)         # the lab's own exporter, which this test started
    wait_until(lambda: not proc.pid_alive(m["pid"]), 10, "the exporter to stop")
    assert mlab.metrics_url is None
    r = cli_run("lab", "status", "--name", name)
    assert "metrics exporter NOT running" in r.stdout and "lab restart" in r.stdout
    mlab.restart()
    again = metrics_of(name)
    assert again["pid"] != m["pid"] and proc.pid_alive(again["pid"])
    assert value(exporter.scrape(again["url"]), "hyperplane_up") == 1


def test_lab_down_stops_the_exporter(own_lab):
    lab = own_lab(labconfig.default_text() + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
    m = metrics_of(lab.name)
    port = int(m["url"].split("//")[1].split("/")[0].rsplit(":", 1)[1])
    assert value(exporter.scrape(m["url"]), "hyperplane_up") == 1
    lab.down()
    assert not proc.pid_alive(m["pid"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_lab_without_metrics_starts_no_exporter(mlab, dlab):
    st = lifecycle.load_lab(dlab.name)[0]
    assert st.get("metrics_pid") is None and exporter.read_url(dlab.name) is None
    assert dlab.status()["metrics"] is None and dlab.metrics_url is None
    r = cli_run("metrics", "--prometheus-config", "--name", dlab.name)
    assert r.returncode == 2 and "has no [metrics] listen" in r.stderr


def test_an_exporter_that_cannot_listen_fails_lab_up_and_rolls_it_back(run_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        name = lab_name()
        try:
            with pytest.raises(HyperplaneError) as e:
                lifecycle.lab_up(None, name, config_text=labconfig.default_text()
                                 + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
            assert "the metrics exporter exited" in str(e.value)
            assert f"127.0.0.1:{port}: cannot listen" in str(e.value)
            assert "[metrics] listen" in str(e.value)     # the fix
            assert ours(name) == []
            assert name not in [x["name"] for x in lifecycle.list_labs()]
        finally:
            destroy(name)
