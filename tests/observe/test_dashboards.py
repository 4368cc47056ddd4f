"""`hyperplane metrics --grafana / --prometheus-config / --alerts` (hyperplane.observe.dashboards)
and the PromQL name checker (hyperplane.observe.promql) the lab test runs them through.

Pure Python: the documents' shape, the YAML emitter read back by a YAML parser, the committed
examples/monitoring/ files equal to the generator, and the checker on good and bad queries.
That every name the documents query is served by a real lab's exporter is
tests/lab/test_metrics_lab.py's.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hyperplane import cli, errors
from hyperplane.observe import dashboards as dash
from hyperplane.observe import promql, stats
from kit import REPO

MONITORING = Path(REPO) / "examples" / "monitoring"


# ---- the committed files ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(dash.example_files()))
def test_committed_examples_equal_the_generator(name):
    committed = (MONITORING / name).read_text(encoding="utf-8")
    assert committed == dash.example_files()[name], (
        f"examples/monitoring/{name} differs from what hyperplane.observe.dashboards makes; "
        "regenerate: python3 -c 'from hyperplane.observe import dashboards; "
        "dashboards.write_examples(\"examples/monitoring\")'")


def test_example_lab_serves_metrics():
    from hyperplane import labconfig as lc

    cfg = lc.load(MONITORING / "lab.toml")
    assert cfg.metrics.listen == dash.EXAMPLE_ADDRESS
    assert cfg.nat_gateways, "the dashboard's NAT gateway panel needs one to show something"


# ---- YAML ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", [
    dash.alert_rules(), dash.prometheus_config(), dash.scrape_config("[::1]:9469", "lab-1"),
    dash.grafana_dashboard(),
    {"yes": None, "on": [True, False], "a b": "x: y # z", "n": [1, -2.5, 1e300],
     "empty": {}, "none": [], "nested": [[1, [2]], [{}], {"k": []}],
     "quotes": "\"'\\\n\t{{ $labels.x }} é ✓", "123": "0123", "-": "- not a list"}],
    ids=["alerts", "prometheus", "scrape-v6", "dashboard", "awkward"])
def test_yaml_reads_back_as_the_same_data(doc):
    assert yaml.safe_load(dash.to_yaml(doc, "a header\n\nwith a blank line")) == doc


def test_yaml_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError, match="set"):
        dash.to_yaml({"a": {1, 2}})
    with pytest.raises(ValueError, match="inf"):
        dash.to_yaml([float("inf")])


# ---- the documents ------------------------------------------------------------------------------
def test_dashboard_variables_and_panels():
    d = dash.grafana_dashboard()
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["lab"]["definition"] == "label_values(hyperplane_up, lab)"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert g["x"] + g["w"] <= 24 and not mine & cells, f"panel {p['title']!r} overlaps"
        cells |= mine
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert 'lab="$lab"' in t["expr"], (p["title"], t["expr"])
    titles = {p["title"]: p for p in d["panels"]}
    drops = titles["Drops/s by reason"]
    assert drops["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert "by (layer, reason)" in drops["targets"][0]["expr"]
    pool = titles["Port pool fill per ENI"]
    assert pool["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert "hyperplane_port_pool_used" in pool["targets"][0]["expr"]
    for want in ("Packets/s by direction", "Bytes/s by direction", "Connection table fill",
                 "New connections/s", "Events lost/s", "Up"):
        assert want in titles


def test_alert_rules_cover_the_brief_and_name_a_fix():
    (group,) = dash.alert_rules()["groups"]
    rules = {r["alert"]: r for r in group["rules"]}
    assert set(rules) >= {"HyperplanePortPoolFilling", "HyperplaneDrops",
                          "HyperplaneEventsLost", "HyperplaneDataPathDown",
                          "HyperplaneExporterDown"}
    pool = rules["HyperplanePortPoolFilling"]
    assert pool["for"] == "5m" and pool["expr"].endswith("> 0.8")
    assert "by (lab, eni)" in pool["expr"]
    assert "by (lab, layer, reason)" in rules["HyperplaneDrops"]["expr"]
    assert rules["HyperplaneExporterDown"]["expr"] == 'up{job="hyperplane"} == 0'
    assert rules["HyperplaneDataPathDown"]["expr"] == "hyperplane_up == 0"
    for r in group["rules"]:
        assert r["annotations"]["summary"], r["alert"]
        assert "Fix: " in r["annotations"]["description"], r["alert"]
    # each fix of a drop reason is shown only for that reason (a Go template `if`)
    desc = rules["HyperplaneDrops"]["annotations"]["description"]
    for reason in dash.DROP_FIXES:
        assert f'{{{{ if eq $labels.reason "{reason}" }}}}' in desc
    assert set(dash.DROP_FIXES) <= set(stats.ENGINE_REASONS)
    assert dash.alert_rules(drop_rate=5)["groups"][0]["rules"][2]["expr"].endswith("> 5")


def test_scrape_config_labels_every_series_with_the_lab():
    (job,) = dash.scrape_config("127.0.0.1:9470", "demo")["scrape_configs"]
    assert job["job_name"] == dash.JOB and job["honor_labels"] is True
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9470"], "labels": {"lab": "demo"}}]


# ---- the PromQL name checker --------------------------------------------------------------------
@pytest.mark.parametrize("expr,names", [
    ('sum by (direction) (rate(hyperplane_packets_total{lab="$lab",eni=~"a}b"}'
     '[$__rate_interval]))', {"hyperplane_packets_total"}),
    ("max by (lab, eni) (hyperplane_port_pool_used / hyperplane_port_pool_size) > 0.8",
     {"hyperplane_port_pool_used", "hyperplane_port_pool_size"}),
    ("sum without (eni) (x) and bool y unless on(key) group_left(eni, z) w offset 5m",
     {"x", "y", "w"}),
    ("rate(a[1h:5m] @ 100) * 1e3 + 0x1F - inf", {"a"}),
    ('label_replace(q, "dst", "$1", "src", "(.*)") or vector(0)', {"q"}),
    ('up{job="hyperplane"} == 0', {"up"}),
    ("sum(rate(r[${__range}])) / count(c)", {"r", "c"}),
    ("topk(3, sum by (key) (rate(hyperplane_new_connections_total[5m])))",
     {"hyperplane_new_connections_total"}),
])
def test_metric_names(expr, names):
    assert promql.metric_names(expr) == names


@pytest.mark.parametrize("expr", ["sum(x", 'x{a="b}', "x]", "rate(x[5m)"])
def test_metric_names_refuses_what_does_not_parse(expr):
    with pytest.raises(ValueError):
        promql.metric_names(expr)


EXPOSITION = """\
# HELP hyperplane_up 1 when the lab's data path answered this scrape
# TYPE hyperplane_up gauge
hyperplane_up 1.0
# HELP hyperplane_drops dropped packets
# TYPE hyperplane_drops counter
hyperplane_drops_total{layer="engine",reason="unsolicited"} 5.0
"""


def test_unserved_finds_a_name_the_exporter_does_not_serve():
    served = promql.served_names(EXPOSITION)
    assert served == {"hyperplane_up", "hyperplane_drops_total"}
    good = [("ok", "sum(rate(hyperplane_drops_total[5m])) and hyperplane_up == 1"),
            ("synthetic", 'up{job="hyperplane"} == 0')]
    assert promql.unserved(good, served) == {}
    bad = good + [("family name", "rate(hyperplane_drops[5m])"),
                  ("typo", "hyperplane_upp == 0 or hyperplane_up == 0")]
    assert promql.unserved(bad, served) == {"family name": ["hyperplane_drops"],
                                            "typo": ["hyperplane_upp"]}
    assert promql.unserved([("synthetic", "up == 0")], served, synthetic=()) == \
        {"synthetic": ["up"]}


def test_the_queries_read_the_metrics_that_matter():
    names = {n for _, e in dash.queries() for n in promql.metric_names(e)}
    assert {"hyperplane_up", "hyperplane_drops_total", "hyperplane_port_pool_used",
            "hyperplane_events_lost_total", "up"} <= names


# ---- the command line ---------------------------------------------------------------------------
def test_cli_prints_the_documents(capsys):
    assert cli.main(["metrics", "--grafana"]) == errors.EXIT_OK
    assert json.loads(capsys.readouterr().out) == dash.grafana_dashboard()
    assert cli.main(["metrics", "--alerts"]) == errors.EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out) == dash.alert_rules()
    assert cli.main(["metrics", "--prometheus-config", "--listen", "[::1]:9470",
                     "--name", "demo"]) == errors.EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out) == dash.scrape_config("[::1]:9470", "demo")


@pytest.mark.parametrize("argv,code,words", [
    (["--prometheus-config", "--listen", "127.0.0.1:0"], errors.EXIT_USAGE,
     ["port 0 is not an address Prometheus can scrape"]),
    (["--prometheus-config", "--listen", "0.0.0.0:9469"], errors.EXIT_USAGE,
     ["not a loopback address"]),
    (["--prometheus-config", "--name", "nosuchlab"], errors.EXIT_NOT_FOUND,
     ["no lab named 'nosuchlab'"]),
])
def test_cli_prometheus_config_mistakes(capsys, argv, code, words):
    assert cli.main(["metrics", *argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err
