"""Every mistake of a lab file at once (hyperplane.labconfig.problems): each independent part
reports its own mistake, in today's words; a broken definition does not also make every
reference to it "not defined"; the checks of the whole config wait for clean sections.
Pure Python: no privileges."""
from __future__ import annotations

import pytest

from hyperplane import Lab, LabConfigError, labconfig as lc
from hyperplane.errors import EXIT_USAGE, HyperplaneError, config_error
from kit.labdocs import THREE_FIELDS, THREE_MISTAKES, base_doc, parse


def problems(doc):
    with pytest.raises(LabConfigError) as info:
        parse(doc)
    return info.value


def alone(doc, field):
    """The error ``doc`` gives when it has only that mistake (today's text)."""
    err = problems(doc)
    assert [p.field for p in err.problems] == [field], str(err)
    return str(err)


def test_the_three_mistakes_of_one_function_are_all_reported():
    with pytest.raises(LabConfigError) as info:
        lc.loads(THREE_MISTAKES, source="three.toml")
    err = info.value
    assert [p.field for p in err.problems] == THREE_FIELDS
    assert str(err).splitlines() == [str(p) for p in err.problems]
    assert "'wire' is not an attach kind" in str(err)
    assert "subnet 'subnet-zz' is not defined" in str(err)
    assert "InvalidGroup.NotFound" in str(err) and "'sg-0badbad0'" in str(err)
    # the first problem's field and message, as a single error had them
    assert (err.field, err.message) == (THREE_FIELDS[0], err.problems[0].message)


def test_each_problem_keeps_the_text_it_has_alone():
    doc = base_doc()
    fn = doc["functions"][0]
    fn["environments"] = ["tap", "wire"]
    fn["vpc_config"]["subnet_ids"] = ["subnet-zz"]
    texts = [str(p) for p in problems(doc).problems]

    one = base_doc()
    one["functions"][0]["environments"] = ["tap", "wire"]
    two = base_doc()
    two["functions"][0]["vpc_config"]["subnet_ids"] = ["subnet-zz"]
    assert texts == [alone(one, "functions[0].environments[1]"),
                     alone(two, "functions[0].vpc_config.subnet_ids[0]")]


def test_one_mistake_is_todays_error():
    doc = base_doc()
    doc["vpc"]["cidr"] = "10.0.0.0/16"
    err = problems(doc)
    assert err.problems == [err]
    assert str(err) == f"vpc.cidr: {err.message}" and "\n" not in str(err)
    assert config_error(err).args[0] == f"configuration: {err}"


def test_independent_sections_each_report():
    doc = base_doc()
    doc["bogus"] = 1
    doc["lifecycle"] = {"profile": "fast"}
    doc["datapath"] = {"cpus": [-1]}
    doc["hosts"][0]["addr"] = "x"
    err = problems(doc)
    assert [p.field for p in err.problems] == ["bogus", "hosts[0].addr", "lifecycle.profile",
                                               "datapath.cpus[0]"]


def test_a_broken_subnet_is_not_also_undefined_everywhere():
    doc = base_doc()
    doc["subnets"][0]["cidr"] = "198.18.1.0/33"
    doc["network_acls"] = [{"id": "acl-1", "subnet_ids": ["subnet-a"]}]
    doc["hosts"].append({"name": "db", "subnet": "subnet-a", "ipv4": "198.18.1.9"})
    err = problems(doc)
    assert [p.field for p in err.problems] == ["subnets[0].cidr"], str(err)


def test_a_security_group_with_a_bad_rule_is_not_also_undefined():
    doc = base_doc()
    doc["security_groups"][0]["egress"] = [{"protocol": "tcpx", "cidr": "0.0.0.0/0"}]
    err = problems(doc)
    assert [p.field for p in err.problems] == ["security_groups[0].egress[0].protocol"]


def test_a_reference_to_a_name_never_defined_is_still_reported_beside_a_broken_one():
    doc = base_doc()
    doc["subnets"][0]["cidr"] = "198.18.1.0/33"
    doc["hosts"].append({"name": "db", "subnet": "subnet-typo"})
    err = problems(doc)
    assert [p.field for p in err.problems] == ["subnets[0].cidr", "hosts[1].subnet"]


def test_an_unreadable_section_silences_references_to_its_kind():
    doc = base_doc()
    doc["subnets"] = {"id": "subnet-a", "cidr": "198.18.1.0/24"}   # [subnets], not [[subnets]]
    err = problems(doc)
    assert [p.field for p in err.problems] == ["subnets"], str(err)
    assert "[[subnets]] (double brackets)" in str(err)


def test_a_broken_vpc_stops_what_depends_on_it_silently():
    doc = base_doc()
    doc["vpc"]["cidr"] = "198.18.0.0/8"
    doc["datapath"] = {"ring_frames": 7}
    err = problems(doc)
    assert [p.field for p in err.problems] == ["vpc.cidr", "datapath.ring_frames"]


def test_unknown_and_missing_keys_are_each_reported():
    doc = base_doc()
    del doc["subnets"][0]["cidr"]
    doc["subnets"][0]["cdir"] = "198.18.1.0/24"
    doc["functions"][1]["vpc_config"]["subnet_id"] = "subnet-a"
    err = problems(doc)
    assert [p.field for p in err.problems] == ["subnets[0].cdir", "subnets[0].cidr",
                                               "functions[1].vpc_config.subnet_id"]


def test_whole_config_checks_wait_for_clean_sections():
    doc = base_doc()
    doc["functions"] = [{"name": "Bad Name", "environments": ["tap"]}]
    err = problems(doc)   # not also "a lab needs at least one function"
    assert [p.field for p in err.problems] == ["functions[0].name"]

    doc = base_doc()
    doc["lab"]["env_cidr"] = "198.19.0.0/30"   # room for one environment, the lab has two
    doc["datapath"] = {"cpus": [-1]}
    err = problems(doc)   # capacity needs the whole config: it waits for datapath
    assert [p.field for p in err.problems] == ["datapath.cpus[0]"]
    del doc["datapath"]
    assert [p.field for p in problems(doc).problems] == ["lab.env_cidr"]


def test_a_function_refused_by_iam_and_a_broken_one_are_both_reported():
    doc = base_doc()
    doc["iam"] = {"roles": [{"name": "r1", "policies": []}]}
    doc["functions"][0]["role"] = "r2"
    doc["functions"][1]["timeout"] = 0
    err = problems(doc)
    assert [p.field for p in err.problems] == ["functions[0].role", "functions[1].timeout"]


def test_a_broken_iam_section_silences_role_references():
    doc = base_doc()
    doc["iam"] = {"roles": "r1"}
    doc["functions"][0]["role"] = "r1"
    err = problems(doc)
    assert [p.field for p in err.problems] == ["iam.roles"]


def test_lab_up_shows_every_mistake(tmp_path):
    path = tmp_path / "three.toml"
    path.write_text(THREE_MISTAKES)
    with pytest.raises(HyperplaneError) as info:   # refused before anything is built
        Lab.up(str(path), "hpval-three")
    assert info.value.code == EXIT_USAGE
    lines = str(info.value).splitlines()
    assert lines[0] == "configuration: 3 mistakes, fix them all:"
    assert [line.split(": ")[0].strip() for line in lines[1:]] == THREE_FIELDS


def test_the_settings_sections_report_each_key():
    doc = base_doc()
    doc["lifecycle"] = {"ports_per_eni": 0, "high_water": 0.3, "eni_delete_delay": -1}
    doc["datapath"] = {"ring_frames": 5, "cpus": [-1], "inbound_cpus": "x"}
    err = problems(doc)
    assert [p.field for p in err.problems] == [
        "lifecycle.eni_delete_delay", "lifecycle.ports_per_eni", "lifecycle.high_water",
        "datapath.ring_frames", "datapath.cpus[0]", "datapath.inbound_cpus"]


def test_a_bad_profile_silences_the_delays_it_would_default():
    doc = base_doc()
    doc["lifecycle"] = {"profile": "fast", "inactive_after": 0}
    err = problems(doc)
    assert [p.field for p in err.problems] == ["lifecycle.profile"]


def test_each_mistake_of_flow_logs_and_internet_is_its_own():
    """[flow_logs] and [internet] check key by key, like the other sections."""
    doc = base_doc()
    doc["flow_logs"] = {"interval": 0, "account_id": "12", "format": "${srcadr}",
                        "region": "mars", "az_id": "us-east-1a"}
    doc["internet"] = {"cidr": "198.18.0.0/31", "gateway_id": "igw-x"}
    fields = {p.field for p in problems(doc).problems}
    assert {"flow_logs.interval", "flow_logs.account_id", "flow_logs.format",
            "flow_logs.region", "flow_logs.az_id", "internet.cidr",
            "internet.gateway_id"} <= fields, fields
