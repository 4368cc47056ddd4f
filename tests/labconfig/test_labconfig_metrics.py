"""Lab config ``[metrics]``: the exporter ``lab up`` starts (listen, loopback only, port 0 = a
free port), its Plan round trip, and a mistake refused naming the field and the fix, by the
library and by ``lab up``. Pure Python: no privileges, no namespaces."""
from __future__ import annotations

import pytest

from hyperplane import labconfig as lc
from hyperplane.observe import stats
from kit.labdocs import base_doc, parse, refused
from kit.labs import cli_run


def with_metrics(value):
    doc = base_doc()
    doc["metrics"] = value
    return doc


def test_no_metrics_section_means_no_exporter():
    plan = lc.resolve(parse(base_doc()), "demo")
    assert plan.metrics == lc.MetricsPlan() and plan.metrics.listen == ""
    assert lc.resolve(parse(with_metrics({"listen": ""})), "demo").metrics.listen == ""


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:9469", "127.0.0.1:9469"), ("127.0.0.1:0", "127.0.0.1:0"),
    ("localhost:9470", "127.0.0.1:9470"), ("[::1]:9469", "[::1]:9469"),
    ("127.0.0.53:80", "127.0.0.53:80")])
def test_listen_accepted_and_normalized(text, want):
    plan = lc.resolve(parse(with_metrics({"listen": text})), "demo")
    assert plan.metrics.listen == want
    assert lc.Plan.from_dict(plan.to_dict()) == plan


def test_state_files_before_metrics_load_without_an_exporter():
    d = lc.resolve(parse(with_metrics({"listen": "127.0.0.1:0"})), "demo").to_dict()
    del d["metrics"]
    assert lc.Plan.from_dict(d).metrics.listen == ""


@pytest.mark.parametrize("value,field,words", [
    ({"listen": "0.0.0.0:9469"}, "metrics.listen",
     ["'0.0.0.0:9469'", "not a loopback address", "no authentication", "127.0.0.0/8"]),
    ({"listen": "198.18.0.1:9469"}, "metrics.listen", ["not a loopback address"]),
    ({"listen": "example.com:9469"}, "metrics.listen", ["not an IP address", "127.0.0.1"]),
    ({"listen": "127.0.0.1"}, "metrics.listen", ["write ADDRESS:PORT", "127.0.0.1:9469"]),
    ({"listen": "127.0.0.1:70000"}, "metrics.listen", ["out of range 0-65535"]),
    ({"listen": 9469}, "metrics.listen", ["must be a string", '"127.0.0.1:9469"',
                                          '"127.0.0.1:0" picks a free port']),
    ({"listn": "127.0.0.1:9469"}, "metrics.listn", ["did you mean 'listen'"]),
    ("127.0.0.1:9469", "metrics", ["must be a table", "[metrics]"]),
])
def test_mistakes_name_the_field_and_the_fix(value, field, words):
    refused(with_metrics(value), field, *words)


def test_the_cli_applies_the_same_rule():
    """`--listen` and `[metrics] listen` say the same thing about the same address."""
    with pytest.raises(ValueError) as cli_err:
        stats.parse_listen("0.0.0.0:9469")
    with pytest.raises(lc.LabConfigError) as file_err:
        parse(with_metrics({"listen": "0.0.0.0:9469"}))
    assert str(cli_err.value).split(": ", 1)[1] == str(file_err.value).split(": ", 2)[2]


def test_lab_up_refuses_a_bad_listen_before_building_anything(tmp_path):
    text = lc.default_text() + '\n[metrics]\nlisten = "0.0.0.0:9469"\n'
    path = tmp_path / "lab.toml"
    path.write_text(text)
    r = cli_run("lab", "up", str(path), "--name", "tmetricsbad")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "metrics.listen" in r.stderr and "not a loopback address" in r.stderr
    assert "Traceback" not in r.stderr
    assert "tmetricsbad" not in cli_run("lab", "list").stdout
