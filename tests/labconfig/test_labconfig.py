"""Lab config: loading the default lab, its plan, lab names, and validation (one test per rule,
each checking the field path is named). Pure Python: no privileges, no namespaces. The examples
and the VPC's network sections are test_labconfig_vpc.py's; functions, [lifecycle], [iam] and
[datapath] test_labconfig_runtime.py's; the documents they bend kit.labdocs's."""
from __future__ import annotations

import copy
import json

import pytest

from hyperplane import labconfig as lc
from hyperplane.labconfig import LabConfigError
from kit.labdocs import add_function, add_sg, add_subnet, base_doc, parse, refused


# ---- the default lab and its plan --------------------------------------------------------------
def test_default_lab_loads():
    cfg = lc.default()
    assert cfg.source == "<default>"
    assert [s.id for s in cfg.subnets] == ["subnet-a"]
    assert [f.name for f in cfg.functions] == ["fn-a", "fn-b"]
    assert cfg.functions[0].environments == ("tap",)
    assert cfg.functions[1].environments == ("veth",)
    assert cfg.functions[0].vpc_config == cfg.functions[1].vpc_config
    assert cfg.functions[0].vpc_config.ipv6_allowed_for_dual_stack is True
    assert [h.name for h in cfg.hosts] == ["server"]


def test_default_plan_shape():
    p = lc.resolve(lc.default(), "demo")
    assert (p.name, p.prefix, p.node_ns, p.fabric_ns) == (
        "demo", "hp-demo-", "hp-demo-node", "hp-demo-vpc")

    (s,) = p.subnets
    assert (s.id, s.cidr, s.ipv6_cidr, s.bridge, s.router4, s.router6) == (
        "subnet-a", "198.18.1.0/24", "2001:2:0:1::/64", "br0", "198.18.1.1", "2001:2:0:1::1")

    (eni,) = p.enis
    assert eni.index == 0
    assert eni.id.startswith("eni-") and len(eni.id) == 4 + 17
    assert all(c in "0123456789abcdef" for c in eni.id[4:])
    assert (eni.subnet, eni.security_groups) == ("subnet-a", ["sg-0a1b2c3d"])
    assert (eni.ipv4, eni.ipv6) == ("198.18.1.4", "2001:2:0:1::4")
    assert (eni.prefix4, eni.prefix6) == ("198.18.1.0/24", "2001:2:0:1::/64")
    assert (eni.router4, eni.router6) == ("198.18.1.1", "2001:2:0:1::1")
    assert (eni.node_ifname, eni.fabric_ifname) == ("eni0", "eni0")
    assert eni.mac.startswith("02:68:70:")

    e0, e1 = p.envs
    assert (e0.index, e0.name, e0.function, e0.attach) == (0, "fn-a-0", "fn-a", "tap")
    assert (e0.netns, e0.ifname, e0.node_ifname) == ("hp-demo-env-fn-a-0", "eth0", None)
    assert (e0.ipv4, e0.gw4) == ("198.19.0.2/30", "198.19.0.1")
    assert (e0.ipv6, e0.gw6) == ("2001:2:0:f000::2/64", "2001:2:0:f000::1")
    assert (e1.index, e1.name, e1.attach, e1.node_ifname) == (1, "fn-b-0", "veth", "env1")
    assert (e1.netns, e1.ifname) == ("hp-demo-env-fn-b-0", "eth0")
    assert (e1.ipv4, e1.gw4) == ("198.19.0.6/30", "198.19.0.5")
    assert (e1.ipv6, e1.gw6) == ("2001:2:0:f001::2/64", "2001:2:0:f001::1")
    assert e0.eni == e1.eni == eni.id, "functions with the same vpc_config share one ENI"
    assert e0.subnet == e1.subnet == "subnet-a"
    assert e0.gw_mac != e1.gw_mac and e0.gw_mac.startswith("02:68:70:")

    (h,) = p.hosts
    assert (h.name, h.netns, h.ifname, h.subnet) == (
        "server", "hp-demo-host-server", "eth0", "subnet-a")
    assert (h.ipv4, h.ipv6) == ("198.18.1.5/24", "2001:2:0:1::5/64")
    assert (h.gw4, h.gw6) == ("198.18.1.1", "2001:2:0:1::1")
    assert (h.fabric_ifname, h.mac) == ("host0", None)

    assert p.namespaces() == ["hp-demo-node", "hp-demo-vpc", "hp-demo-env-fn-a-0",
                              "hp-demo-env-fn-b-0", "hp-demo-host-server"]


def test_plan_lookups():
    p = lc.resolve(lc.default(), "demo")
    assert p.eni(p.enis[0].id) is p.enis[0]
    assert p.env("fn-b-0") is p.envs[1]
    assert p.host("server") is p.hosts[0]
    assert p.subnet("subnet-a") is p.subnets[0]
    with pytest.raises(KeyError):
        p.env("nope")


def test_plan_json_round_trip():
    p = lc.resolve(lc.default(), "demo")
    text = json.dumps(p.to_dict())
    back = lc.Plan.from_dict(json.loads(text))
    assert back == p
    assert back.to_dict() == p.to_dict()
    assert isinstance(back.enis[0], lc.EniPlan) and isinstance(back.envs, list)


def test_resolve_is_deterministic():
    a = lc.resolve(lc.default(), "demo")
    b = lc.resolve(lc.loads(lc.default_text()), "demo")
    assert a == b and a.to_dict() == b.to_dict()
    other = lc.resolve(lc.default(), "other")
    assert other.enis[0].id != a.enis[0].id, "ENI ids depend on the lab name"
    assert other.enis[0].mac != a.enis[0].mac
    assert other.enis[0].ipv4 == a.enis[0].ipv4, "addresses do not"


def test_third_function_with_other_security_groups_gets_its_own_eni():
    doc = base_doc()
    add_function(doc, "fn-c", ["veth"], ["subnet-a"], ["sg-ffff", "sg-eeee"])
    p = lc.resolve(parse(doc), "demo")
    assert len(p.enis) == 2
    first, second = p.enis
    assert (second.index, second.ipv4, second.ipv6) == (1, "198.18.1.5", "2001:2:0:1::5")
    assert second.security_groups == ["sg-eeee", "sg-ffff"]
    assert (second.node_ifname, second.fabric_ifname) == ("eni1", "eni1")
    assert second.mac != first.mac
    env_c = p.env("fn-c-0")
    assert env_c.eni == second.id
    assert env_c.ipv4 == "198.19.0.10/30"
    # IPv6 is not allowed for fn-c, but the VPC has IPv6: the environment is addressed anyway
    # and the data path enforces the flag (so it can be switched on at run time)
    assert (env_c.ipv6, env_c.gw6) == ("2001:2:0:f002::2/64", "2001:2:0:f002::1")
    assert p.function("fn-c").ipv6_allowed_for_dual_stack is False
    # hosts come after every ENI
    assert p.hosts[0].ipv4 == "198.18.1.6/24"


def test_same_security_groups_in_another_order_share_the_eni():
    doc = base_doc()
    add_function(doc, "fn-c", ["veth"], ["subnet-a"], ["sg-2", "sg-1"])
    add_function(doc, "fn-d", ["tap"], ["subnet-a"], ["sg-1", "sg-2"])
    p = lc.resolve(parse(doc), "demo")
    assert len(p.enis) == 2
    assert p.env("fn-c-0").eni == p.env("fn-d-0").eni == p.enis[1].id


def test_environments_round_robin_over_subnets():
    doc = base_doc()
    add_subnet(doc, "subnet-b", "198.18.2.0/24", "2001:2:0:2::/64")
    add_function(doc, "fn-c", ["veth", "tap", "veth"], ["subnet-b", "subnet-a"],
                 ["sg-0a1b2c3d"], ipv6=True)
    p = lc.resolve(parse(doc), "demo")
    envs = [p.env(f"fn-c-{i}") for i in range(3)]
    assert [e.subnet for e in envs] == ["subnet-b", "subnet-a", "subnet-b"]
    eni_a = [e for e in p.enis if e.subnet == "subnet-a"]
    eni_b = [e for e in p.enis if e.subnet == "subnet-b"]
    assert len(eni_a) == 1 and len(eni_b) == 1, "fn-c shares subnet-a's ENI with fn-a/fn-b"
    assert [e.eni for e in envs] == [eni_b[0].id, eni_a[0].id, eni_b[0].id]
    assert eni_b[0].ipv4 == "198.18.2.4" and eni_b[0].router4 == "198.18.2.1"
    assert p.subnet("subnet-b").bridge == "br1"
    assert [e.index for e in p.envs] == [0, 1, 2, 3, 4]
    assert [e.node_ifname for e in envs] == ["env2", None, "env4"]


def test_function_with_two_subnets_gets_an_eni_in_each_even_with_one_environment():
    doc = base_doc()
    add_subnet(doc, "subnet-b", "198.18.2.0/24")
    add_function(doc, "fn-c", ["veth"], ["subnet-a", "subnet-b"], ["sg-9"])
    p = lc.resolve(parse(doc), "demo")
    assert {(e.subnet, tuple(e.security_groups)) for e in p.enis} == {
        ("subnet-a", ("sg-0a1b2c3d",)), ("subnet-a", ("sg-9",)), ("subnet-b", ("sg-9",))}


def test_ipv4_only_vpc():
    doc = base_doc()
    del doc["vpc"]["ipv6_cidr"]
    del doc["subnets"][0]["ipv6_cidr"]
    for f in doc["functions"]:
        f["vpc_config"]["ipv6_allowed_for_dual_stack"] = False
    p = lc.resolve(parse(doc), "demo")
    assert p.subnets[0].ipv6_cidr is None and p.subnets[0].router6 is None
    assert p.enis[0].ipv6 is None and p.enis[0].prefix6 is None
    assert all(e.ipv6 is None and e.gw6 is None for e in p.envs)
    assert p.hosts[0].ipv6 is None and p.hosts[0].gw6 is None


def test_fixed_host_addresses_are_honoured_and_skipped():
    doc = base_doc()
    doc["hosts"][0]["ipv4"] = "198.18.1.4"
    doc["hosts"][0]["ipv6"] = "2001:2:0:1::4"
    doc["hosts"].append({"name": "db", "subnet": "subnet-a"})
    p = lc.resolve(parse(doc), "demo")
    assert (p.enis[0].ipv4, p.enis[0].ipv6) == ("198.18.1.5", "2001:2:0:1::5")
    assert (p.host("server").ipv4, p.host("server").ipv6) == ("198.18.1.4/24",
                                                                "2001:2:0:1::4/64")
    assert (p.host("db").ipv4, p.host("db").ipv6) == ("198.18.1.6/24", "2001:2:0:1::6/64")
    assert p.host("db").fabric_ifname == "host1"


def test_macs_are_unique_and_locally_administered():
    doc = base_doc()
    add_function(doc, "fn-c", ["veth"] * 40, ["subnet-a"], ["sg-1"])
    p = lc.resolve(parse(doc), "demo")
    macs = [e.mac for e in p.enis] + [e.gw_mac for e in p.envs]
    assert len(set(macs)) == len(macs)
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01


def test_load_from_file(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(lc.default_text())
    cfg = lc.load(path)
    assert cfg.source == str(path)
    assert lc.resolve(cfg, "demo") == lc.resolve(lc.default(), "demo")


def test_load_missing_file(tmp_path):
    with pytest.raises(LabConfigError, match="cannot read"):
        lc.load(tmp_path / "nope.toml")


def test_config_is_frozen():
    cfg = lc.default()
    with pytest.raises(Exception):
        cfg.vpc = None
    with pytest.raises(Exception):
        lc.resolve(cfg, "demo").name = "x"


# ---- lab names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["demo", "t1a2b3c", "0lab", "a" * 20, "a-b"])
def test_good_lab_names(name):
    assert lc.validate_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "Demo", "-x", "a" * 21, "a/b", "a_b", "a.b", "..", 5])
def test_bad_lab_names(name):
    with pytest.raises(LabConfigError) as info:
        lc.validate_lab_name(name)
    assert info.value.field == "name" and str(info.value).startswith("name: ")


def test_resolve_checks_the_lab_name():
    with pytest.raises(LabConfigError, match="^name: "):
        lc.resolve(lc.default(), "Bad Name")


# ---- validation, one rule per test -------------------------------------------------------------
def test_toml_syntax_error_names_the_line():
    text = lc.default_text().replace('cidr = "198.18.1.0/24"', 'cidr = "198.18.1.0/24', 1)
    with pytest.raises(LabConfigError) as info:
        lc.loads(text, source="my.toml")
    assert info.value.field == "my.toml"
    assert "TOML syntax error" in str(info.value) and "line" in str(info.value)


def test_unknown_top_level_key():
    doc = base_doc()
    doc["sbunets"] = doc.pop("subnets")
    msg = refused(doc, "sbunets", "unknown key 'sbunets'", "known keys:", "did you mean "
                  "'subnets'")
    assert "lab, vpc, subnets, functions, hosts" in msg


def test_unknown_nested_key():
    doc = base_doc()
    doc["functions"][1]["vpc_config"]["subnet_id"] = ["subnet-a"]
    refused(doc, "functions[1].vpc_config.subnet_id", "unknown key 'subnet_id'",
            "subnet_ids")


def test_unknown_key_in_lab_and_hosts():
    doc = base_doc()
    doc["lab"]["env_cdir"] = "198.19.0.0/16"
    refused(doc, "lab.env_cdir", "unknown key", "env_cidr")
    doc = base_doc()
    doc["hosts"][0]["addr"] = "198.18.1.9"
    refused(doc, "hosts[0].addr", "unknown key", "ipv4")


def test_missing_required_key():
    doc = base_doc()
    del doc["subnets"][0]["cidr"]
    refused(doc, "subnets[0].cidr", "missing")
    doc = base_doc()
    del doc["vpc"]
    refused(doc, "vpc", "missing")


def test_single_bracket_table_for_an_array():
    text = lc.default_text().replace("[[hosts]]", "[hosts]")
    with pytest.raises(LabConfigError) as info:
        lc.loads(text)
    assert info.value.field == "hosts" and "[[hosts]]" in str(info.value)


def test_wrong_types():
    doc = base_doc()
    doc["vpc"]["cidr"] = 5
    refused(doc, "vpc.cidr", "must be a string", "an integer")
    doc = base_doc()
    doc["functions"][0]["vpc_config"]["ipv6_allowed_for_dual_stack"] = "yes"
    refused(doc, "functions[0].vpc_config.ipv6_allowed_for_dual_stack", "true or false")
    doc = base_doc()
    doc["functions"][0]["environments"] = "tap"
    refused(doc, "functions[0].environments", "must be an array")
    doc = base_doc()
    doc["functions"][0]["vpc_config"]["security_group_ids"] = ["sg-1", 7]
    refused(doc, "functions[0].vpc_config.security_group_ids[1]", "must be a string")
    doc = base_doc()
    doc["subnets"][0] = "subnet-a"
    refused(doc, "subnets[0]", "must be a table")


@pytest.mark.parametrize("value, words", [
    ("198.18.1.0/33", ["not an IPv4 CIDR"]),
    ("banana", ["no prefix length"]),
    ("198.18.1.0", ["no prefix length"]),
    ("198.18.1.1/24", ["host bits", "198.18.1.0/24"]),
    ("2001:2:0:1::/64", ["IPv6", "takes IPv4"]),
])
def test_bad_cidrs(value, words):
    doc = base_doc()
    doc["subnets"][0]["cidr"] = value
    refused(doc, "subnets[0].cidr", *words)


def test_ipv4_given_where_ipv6_is_expected():
    doc = base_doc()
    doc["vpc"]["ipv6_cidr"] = "198.18.0.0/16"
    refused(doc, "vpc.ipv6_cidr", "takes IPv6")


@pytest.mark.parametrize("field, value", [
    ("cidr", "10.0.0.0/16"),
    ("ipv6_cidr", "2001:db8::/56"),
])
def test_vpc_outside_benchmark_ranges(field, value):
    doc = base_doc()
    doc["vpc"][field] = value
    refused(doc, f"vpc.{field}", "outside", "benchmark", "never collide with a real network")


def test_env_cidr_outside_benchmark_range():
    doc = base_doc()
    doc["lab"]["env_cidr"] = "100.64.0.0/16"
    refused(doc, "lab.env_cidr", "benchmark")


def test_host_address_outside_benchmark_range():
    doc = base_doc()
    doc["hosts"][0]["ipv4"] = "192.168.1.10"
    refused(doc, "hosts[0].ipv4", "benchmark")


def test_vpc_prefix_outside_aws_range():
    doc = base_doc()
    doc["vpc"]["cidr"] = "198.18.0.0/15"
    refused(doc, "vpc.cidr", "/16", "/28")


def test_subnet_prefix_outside_aws_range():
    doc = base_doc()
    doc["subnets"][0]["cidr"] = "198.18.1.0/29"
    refused(doc, "subnets[0].cidr", "/16", "/28")


def test_subnet_outside_vpc():
    doc = base_doc()
    doc["vpc"]["cidr"] = "198.18.0.0/24"
    refused(doc, "subnets[0].cidr", "not inside vpc.cidr")


def test_overlapping_subnets():
    doc = base_doc()
    add_subnet(doc, "subnet-b", "198.18.1.0/25")
    refused(doc, "subnets[1].cidr", "overlaps subnets[0]", "subnet-a")


def test_subnet_overlapping_env_cidr():
    doc = base_doc()
    doc["lab"]["env_cidr"] = "198.18.128.0/20"
    add_subnet(doc, "subnet-b", "198.18.130.0/24")
    refused(doc, "subnets[1].cidr", "overlaps lab.env_cidr")


def test_ipv6_subnet_overlapping_env_ipv6_cidr():
    doc = base_doc()
    doc["lab"]["env_ipv6_cidr"] = "2001:2::/60"
    refused(doc, "subnets[0].ipv6_cidr", "overlaps lab.env_ipv6_cidr")


def test_ipv6_subnet_needs_vpc_ipv6():
    doc = base_doc()
    del doc["vpc"]["ipv6_cidr"]
    refused(doc, "subnets[0].ipv6_cidr", "no IPv6 block", "[vpc]")


def test_ipv6_subnet_must_be_a_64():
    doc = base_doc()
    doc["subnets"][0]["ipv6_cidr"] = "2001:2:0:1::/80"
    refused(doc, "subnets[0].ipv6_cidr", "/64")


def test_ipv6_subnet_inside_vpc_ipv6():
    doc = base_doc()
    doc["subnets"][0]["ipv6_cidr"] = "2001:2:0:1000::/64"
    refused(doc, "subnets[0].ipv6_cidr", "not inside vpc.ipv6_cidr")


def test_duplicate_ipv6_subnet():
    doc = base_doc()
    add_subnet(doc, "subnet-b", "198.18.2.0/24", "2001:2:0:1::/64")
    refused(doc, "subnets[1].ipv6_cidr", "already used")


def test_bad_subnet_id():
    doc = base_doc()
    doc["subnets"][0]["id"] = "net-a"
    refused(doc, "subnets[0].id", "subnet-")


def test_duplicate_subnet_id():
    doc = base_doc()
    add_subnet(doc, "subnet-a", "198.18.2.0/24")
    refused(doc, "subnets[1].id", "duplicate subnet id")


def test_duplicate_function_name():
    doc = base_doc()
    doc["functions"][1]["name"] = "fn-a"
    refused(doc, "functions[1].name", "duplicate function name")


def test_bad_function_name():
    doc = base_doc()
    doc["functions"][0]["name"] = "Fn_A"
    refused(doc, "functions[0].name", "a-z")


def test_duplicate_host_name():
    doc = base_doc()
    doc["hosts"].append({"name": "server", "subnet": "subnet-a"})
    refused(doc, "hosts[1].name", "duplicate host name")


def test_function_references_unknown_subnet():
    doc = base_doc()
    doc["functions"][1]["vpc_config"]["subnet_ids"] = ["subnet-x"]
    msg = refused(doc, "functions[1].vpc_config.subnet_ids[0]")
    assert msg == ('functions[1].vpc_config.subnet_ids[0]: subnet \'subnet-x\' is not defined; '
                   "define it under [[subnets]] or use one of: subnet-a")


def test_function_lists_a_subnet_twice():
    doc = base_doc()
    doc["functions"][0]["vpc_config"]["subnet_ids"] = ["subnet-a", "subnet-a"]
    refused(doc, "functions[0].vpc_config.subnet_ids[1]", "twice")


def test_function_without_subnets():
    doc = base_doc()
    doc["functions"][0]["vpc_config"]["subnet_ids"] = []
    refused(doc, "functions[0].vpc_config.subnet_ids", "at least one subnet")


def test_function_with_too_many_subnets():
    doc = base_doc()
    for i in range(17):
        add_subnet(doc, f"subnet-{i}", f"198.18.{10 + i}.0/24")
    doc["functions"][0]["vpc_config"]["subnet_ids"] = [f"subnet-{i}" for i in range(17)]
    doc["functions"][0]["vpc_config"]["ipv6_allowed_for_dual_stack"] = False
    refused(doc, "functions[0].vpc_config.subnet_ids", "at most 16")


def test_ipv6_allowed_needs_dual_stack_subnets():
    doc = base_doc()
    add_subnet(doc, "subnet-b", "198.18.2.0/24")  # IPv4 only
    add_function(doc, "fn-c", ["veth"], ["subnet-a", "subnet-b"], ["sg-1"], ipv6=True)
    refused(doc, "functions[2].vpc_config.ipv6_allowed_for_dual_stack",
            "InvalidParameterValueException", "subnet-b", "not dual-stack",
            "ipv6_allowed_for_dual_stack = false")


def test_empty_environments():
    doc = base_doc()
    doc["functions"][0]["environments"] = []
    refused(doc, "functions[0].environments", "empty", '"tap" or "veth"')


def test_bad_attach_kind():
    doc = base_doc()
    doc["functions"][1]["environments"] = ["veth", "vm"]
    refused(doc, "functions[1].environments[1]", "'vm'", '"tap" or "veth"')


@pytest.mark.parametrize("sgs, field, words", [
    ([], "functions[0].vpc_config.security_group_ids", ["list 1 to 5"]),
    ([f"sg-{i}" for i in range(6)], "functions[0].vpc_config.security_group_ids", ["1 to 5"]),
    (["sg-1", "sg-1"], "functions[0].vpc_config.security_group_ids[1]", ["twice"]),
    (["security-1"], "functions[0].vpc_config.security_group_ids[0]", ["sg-"]),
])
def test_security_groups(sgs, field, words):
    doc = base_doc()
    for i in range(6):
        add_sg(doc, f"sg-{i}")
    doc["functions"][0]["vpc_config"]["security_group_ids"] = sgs
    refused(doc, field, *words)


def test_host_in_unknown_subnet():
    doc = base_doc()
    doc["hosts"][0]["subnet"] = "subnet-z"
    refused(doc, "hosts[0].subnet", "'subnet-z' is not defined", "subnet-a")


def test_fixed_host_address_outside_its_subnet():
    doc = base_doc()
    doc["hosts"][0]["ipv4"] = "198.18.2.10"
    refused(doc, "hosts[0].ipv4", "outside its subnet")
    doc = base_doc()
    doc["hosts"][0]["ipv6"] = "2001:2:0:2::10"
    refused(doc, "hosts[0].ipv6", "outside its subnet")


@pytest.mark.parametrize("field, value", [
    ("ipv4", "198.18.1.0"), ("ipv4", "198.18.1.1"), ("ipv4", "198.18.1.2"),
    ("ipv4", "198.18.1.3"), ("ipv4", "198.18.1.255"),
    ("ipv6", "2001:2:0:1::"), ("ipv6", "2001:2:0:1::3"),
    ("ipv6", "2001:2:0:1:ffff:ffff:ffff:ffff"),
])
def test_fixed_host_address_reserved(field, value):
    doc = base_doc()
    doc["hosts"][0][field] = value
    refused(doc, f"hosts[0].{field}", "reserved", "AWS")


def test_fixed_host_address_duplicate():
    doc = base_doc()
    doc["hosts"][0]["ipv4"] = "198.18.1.10"
    doc["hosts"].append({"name": "db", "subnet": "subnet-a", "ipv4": "198.18.1.10"})
    refused(doc, "hosts[1].ipv4", "already hosts[0]'s address")


def test_fixed_host_address_with_prefix():
    doc = base_doc()
    doc["hosts"][0]["ipv4"] = "198.18.1.10/24"
    refused(doc, "hosts[0].ipv4", "without a prefix length")


def test_fixed_ipv6_in_ipv4_only_subnet():
    doc = base_doc()
    add_subnet(doc, "subnet-b", "198.18.2.0/24")
    doc["hosts"].append({"name": "db", "subnet": "subnet-b", "ipv6": "2001:2:0:2::10"})
    refused(doc, "hosts[1].ipv6", "no IPv6 block")


def test_env_cidr_too_small():
    doc = base_doc()
    doc["lab"]["env_cidr"] = "198.19.0.0/29"  # two /30s
    doc["functions"][0]["environments"] = ["tap", "veth"]
    refused(doc, "lab.env_cidr", "holds 2", "have 3")


def test_env_cidr_smaller_than_a_30():
    doc = base_doc()
    doc["lab"]["env_cidr"] = "198.19.0.0/31"
    refused(doc, "lab.env_cidr", "/30")


def test_env_ipv6_cidr_too_small():
    doc = base_doc()
    doc["lab"]["env_ipv6_cidr"] = "2001:2:0:f000::/64"  # one /64, two IPv6 environments
    refused(doc, "lab.env_ipv6_cidr", "holds 1")


def test_subnet_too_small_for_enis_and_hosts():
    doc = base_doc()
    doc["subnets"][0]["cidr"] = "198.18.1.0/28"  # 16 - 5 reserved = 11 usable
    doc["hosts"] = [{"name": f"h{i}", "subnet": "subnet-a"} for i in range(11)]
    refused(doc, "subnets[0].cidr", "needs 12", "larger subnet")


def test_needs_a_function():
    doc = base_doc()
    doc["functions"] = []
    refused(doc, "functions", "at least one function")
    doc = base_doc()
    del doc["functions"]
    refused(doc, "functions", "at least one function")


def test_needs_a_host():
    doc = base_doc()
    doc["hosts"] = []
    refused(doc, "hosts", "at least one host")


def test_error_is_a_value_error():
    assert issubclass(LabConfigError, ValueError)
    e = LabConfigError("vpc.cidr", "bad")
    assert (e.field, e.message, str(e)) == ("vpc.cidr", "bad", "vpc.cidr: bad")


def test_base_doc_is_valid():
    # guards the tests above: each bends exactly one thing of a valid document
    parse(copy.deepcopy(base_doc()))
