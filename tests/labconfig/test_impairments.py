"""``[[impairments]]`` (hyperplane.labconfig.parse_impairments): netem's words validated with
the field, the problem and the fix; the ImpairmentPlan tuple on LabConfig and on the Plan,
through the Plan's JSON round trip."""
from __future__ import annotations

import json

import pytest

from hyperplane import labconfig
from hyperplane.labconfig import ImpairmentPlan, LabConfigError


def load(*tables: str):
    return labconfig.loads(labconfig.default_text() + "".join(
        f"\n[[impairments]]\n{t}\n" for t in tables))


def test_values_in_netems_words():
    c = load('link = "fn-b-0"\ndirection = "egress"\ndelay = "10ms"\njitter = "500us"\n'
             'loss = "1.5%"\nduplicate = "1%"\nreorder = "5%"\nrate = "100mbit"',
             'link = "server"\nrate = "10mbps"', 'link = "eni0"\nloss = "0.1%"')
    a, b, e = c.impairments
    assert a == ImpairmentPlan(link="fn-b-0", direction="egress", delay_ms=10.0, jitter_ms=0.5,
                               loss=1.5, duplicate=1.0, reorder=5.0, rate_bit=100_000_000)
    assert a.settings() == ("delay 10ms jitter 0.5ms loss 1.5% duplicate 1% reorder 5% "
                            "rate 100mbit")
    assert b.direction == "both" and b.rate_bit == 80_000_000     # bytes per second, as tc
    assert e.link == "eni0"


def test_the_plan_carries_them_through_json():
    c = load('link = "fn-a-0"\ndirection = "ingress"\nloss = "2%"')
    plan = labconfig.resolve(c, "imp")
    assert plan.impairments == c.impairments
    again = labconfig.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and isinstance(again.impairments, tuple)
    # a state file written before impairments existed
    d = plan.to_dict()
    del d["impairments"]
    assert labconfig.Plan.from_dict(d).impairments == ()


@pytest.mark.parametrize("table,field,words", [
    ('link = "fn-b-1"\nloss = "1%"', "impairments[0].link",
     ["did you mean 'fn-b-0'", "fn-a-0, fn-b-0, server, eni0"]),
    ('loss = "1%"', "impairments[0].link", ["missing"]),
    ('link = "server"\nloss = "1"', "impairments[0].loss", ['"1%"']),
    ('link = "server"\nloss = "101%"', "impairments[0].loss", ["100%"]),
    ('link = "server"\nloss = 1', "impairments[0].loss", ["a string"]),
    ('link = "server"\ndelay = "10"', "impairments[0].delay", ['"10ms"']),
    ('link = "server"\ndelay = "2min"', "impairments[0].delay", ["unit"]),
    ('link = "server"\njitter = "1ms"', "impairments[0].jitter", ["give delay too"]),
    ('link = "server"\nrate = "100mb"', "impairments[0].rate", ['"100mbit"']),
    ('link = "server"\nrate = "1bit"', "impairments[0].rate", ["8kbit"]),
    ('link = "server"\ndirection = "out"\nloss = "1%"', "impairments[0].direction",
     ['"egress"']),
    ('link = "server"\nlos = "1%"', "impairments[0].los", ["did you mean 'loss'"]),
    ('link = "server"', "impairments[0]", ["changes nothing", "--clear"]),
])
def test_mistakes_name_the_field_and_the_fix(table, field, words):
    with pytest.raises(LabConfigError) as e:
        load(table)
    assert e.value.field == field, str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_one_direction_is_impaired_by_one_table():
    with pytest.raises(LabConfigError, match=r"impairments\[1\].*'server' egress is impaired "
                                             r"by impairments\[0\]"):
        load('link = "server"\nloss = "1%"', 'link = "server"\ndirection = "egress"\n'
             'rate = "1mbit"')
    c = load('link = "server"\ndirection = "egress"\nloss = "1%"',
             'link = "server"\ndirection = "ingress"\nrate = "1mbit"')
    assert len(c.impairments) == 2


def test_impairments_must_be_an_array_of_tables():
    with pytest.raises(LabConfigError, match=r"\[\[impairments\]\]"):
        labconfig.loads(labconfig.default_text() + '\n[impairments]\nlink = "server"\n')
