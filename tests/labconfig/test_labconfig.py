"""Lab config: loading, validation (one test per rule, each checking the field path is named),
and resolving into a plan. Pure Python: no privileges, no namespaces."""
from __future__ import annotations

import copy
import json
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import pytest

from hyperplane import labconfig as lc
from hyperplane.datapath import statefile
from hyperplane.labconfig import LabConfigError
from kit import REPO


def base_doc():
    """The default lab as a plain document, for tests to bend one value at a time."""
    return tomllib.loads(lc.default_text())


def parse(doc):
    return lc.parse(doc, source="test")


def refused(doc, field, *words):
    """Assert ``doc`` is refused, the message starts with ``field`` and contains ``words``."""
    with pytest.raises(LabConfigError) as info:
        parse(doc)
    err = info.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: "), str(err)
    for w in words:
        assert w in str(err), f"{w!r} not in {str(err)!r}"
    return str(err)


def add_subnet(doc, sid, cidr, ipv6=None):
    s = {"id": sid, "cidr": cidr}
    if ipv6:
        s["ipv6_cidr"] = ipv6
    doc["subnets"].append(s)


def add_sg(doc, sg_id, egress=None):
    """Define security group ``sg_id`` (AWS's default egress rules unless ``egress`` is given)."""
    sg = {"id": sg_id}
    if egress is not None:
        sg["egress"] = egress
    doc.setdefault("security_groups", []).append(sg)


def add_function(doc, name, envs, subnets, sgs, ipv6=False):
    """Add a function; its security groups are defined first when the document lacks them."""
    defined = {g["id"] for g in doc.get("security_groups", [])}
    for sg in sgs:
        if sg not in defined and isinstance(sg, str):
            add_sg(doc, sg)
            defined.add(sg)
    doc["functions"].append({"name": name, "environments": envs, "vpc_config": {
        "subnet_ids": subnets, "security_group_ids": sgs, "ipv6_allowed_for_dual_stack": ipv6}})


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


# ---- examples and the new plan fields ----------------------------------------------------------
EXAMPLES = Path(REPO) / "examples"


def example_doc(name):
    return tomllib.loads((EXAMPLES / name).read_text())


def example_plan(name, lab="ex"):
    return lc.resolve(lc.load(EXAMPLES / name), lab)


def test_default_plan_new_fields():
    p = lc.resolve(lc.default(), "demo")
    assert p.vpc_id.startswith("vpc-") and len(p.vpc_id) == 4 + 17
    assert p.vpc_id == lc.resolve(lc.default(), "other").vpc_id, "derived from the config"
    assert p.account_id == "123456789012"
    (sg,) = p.security_groups
    assert sg.id == "sg-0a1b2c3d"
    assert [(r.number, r.action, r.protocol, r.cidr, r.from_port, r.to_port) for r in sg.egress] \
        == [(0, "allow", "all", "0.0.0.0/0", 0, 65535), (0, "allow", "all", "::/0", 0, 65535)]
    assert (p.nacls, p.route_tables, p.nat_gateways, p.internet_hosts) == ([], [], [], [])
    assert p.internet is None and p.iam is None
    assert [(f.name, f.subnet_ids, f.security_group_ids, f.ipv6_allowed_for_dual_stack, f.role,
             f.envs) for f in p.functions] == [
        ("fn-a", ["subnet-a"], ["sg-0a1b2c3d"], True, None, ["fn-a-0"]),
        ("fn-b", ["subnet-a"], ["sg-0a1b2c3d"], True, None, ["fn-b-0"])]
    assert p.function("fn-b") is p.functions[1]
    assert p.lifecycle == lc.LifecyclePlan("lab", 1.0, 600.0, 10.0, 65000, 0.8, 8)
    assert p.nacl_of("subnet-a") is None and p.route_table_of("subnet-a") is None


@pytest.mark.parametrize("name", [None, "natgw.toml", "nacl.toml", "scaleout.toml", "iam.toml"])
def test_plan_round_trips_through_json(name):
    p = lc.resolve(lc.default(), "demo") if name is None else example_plan(name)
    back = lc.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p
    assert back.to_dict() == p.to_dict()


def test_old_state_without_new_keys_loads():
    d = lc.resolve(lc.default(), "demo").to_dict()
    for key in ("vpc_id", "account_id", "security_groups", "nacls", "route_tables",
                "nat_gateways", "internet", "internet_hosts", "functions", "lifecycle", "iam"):
        del d[key]
    old = lc.Plan.from_dict(d)
    assert (old.vpc_id, old.account_id, old.security_groups, old.functions) == (
        "", "123456789012", [], [])
    assert old.internet is None and old.lifecycle == lc.LifecyclePlan()
    assert old.namespaces() == lc.resolve(lc.default(), "demo").namespaces()


def test_natgw_example_plan():
    p = example_plan("natgw.toml")
    assert p.internet == lc.InternetPlan(cidr="198.19.255.0/24",
                                         gateway_id="igw-0f1e2d3c4b5a69788",
                                         netns="hp-ex-inet", bridge="inet0",
                                         router4="198.19.255.1")
    (nat,) = p.nat_gateways
    assert (nat.index, nat.id, nat.subnet) == (0, "nat-0a1b2c3d4e5f60718", "subnet-public")
    assert (nat.private_ipv4, nat.public_ipv4) == ("198.18.2.4", "198.19.255.2")
    assert (nat.prefix4, nat.router4) == ("198.18.2.0/24", "198.18.2.1")
    assert (nat.internet_cidr, nat.internet_router4) == ("198.19.255.0/24", "198.19.255.1")
    assert (nat.idle_timeout, nat.inside_ifname, nat.outside_ifname) == (350.0, "nat0i", "nat0o")
    assert nat.inside_mac != nat.outside_mac and nat.inside_mac.startswith("02:68:70:")
    (web,) = p.internet_hosts
    assert (web.name, web.netns, web.ifname, web.subnet) == (
        "web", "hp-ex-ihost-web", "eth0", "internet")
    assert (web.ipv4, web.gw4, web.ipv6, web.gw6, web.fabric_ifname) == (
        "198.19.255.3/24", "198.19.255.1", None, None, "ihost0")
    assert p.internet_host("web") is web
    public, private = p.route_tables
    assert (public.id, public.subnets, public.table) == ("rtb-public", ["subnet-public"], 100)
    assert public.routes == [lc.RoutePlan("0.0.0.0/0", "igw-0f1e2d3c4b5a69788", "igw")]
    assert (private.id, private.subnets, private.table) == ("rtb-private", ["subnet-private"],
                                                             101)
    assert private.routes == [lc.RoutePlan("0.0.0.0/0", "nat-0a1b2c3d4e5f60718", "nat")]
    assert p.route_table_of("subnet-private") is private
    assert p.nat_gateway("nat-0a1b2c3d4e5f60718") is nat
    (sg,) = p.security_groups
    assert [(r.protocol, r.from_port, r.to_port, r.cidr) for r in sg.egress] == [
        ("tcp", 80, 80, "0.0.0.0/0"), ("tcp", 443, 443, "0.0.0.0/0"),
        ("all", 0, 65535, "198.18.0.0/16")]
    assert p.enis[0].subnet == "subnet-private" and p.enis[0].ipv4 == "198.18.1.4"
    assert p.host("db").ipv4 == "198.18.1.5/24"
    assert p.namespaces() == ["hp-ex-node", "hp-ex-vpc", "hp-ex-inet", "hp-ex-env-fn-a-0",
                              "hp-ex-host-db", "hp-ex-ihost-web"]


def test_nacl_example_plan():
    p = example_plan("nacl.toml")
    (acl,) = p.nacls
    assert (acl.id, acl.subnets) == ("acl-0a1b2c3d", ["subnet-fn"])
    assert [(r.number, r.action, r.protocol, r.from_port, r.to_port, r.cidr)
            for r in acl.ingress] == [
        (100, "deny", "tcp", 536, 65535, "0.0.0.0/0"),
        (110, "deny", "udp", 536, 65535, "0.0.0.0/0"),
        (200, "allow", "all", 0, 65535, "0.0.0.0/0")]
    assert [(r.number, r.action, r.protocol) for r in acl.egress] == [(100, "allow", "all")]
    assert p.nacl_of("subnet-fn") is acl
    assert p.nacl_of("subnet-srv") is None, "the default ACL (allow all) is not listed"
    assert p.enis[0].subnet == "subnet-fn" and p.hosts[0].subnet == "subnet-srv"


def test_scaleout_example_plan():
    p = example_plan("scaleout.toml")
    assert p.lifecycle == lc.LifecyclePlan(profile="lab", eni_create_delay=2.0,
                                           inactive_after=600.0, eni_delete_delay=10.0,
                                           ports_per_eni=100, high_water=0.8,
                                           max_enis_per_key=4)
    assert len(p.enis) == 1 and [e.eni for e in p.envs] == [p.enis[0].id] * 2
    assert p.subnets[0].cidr == "198.18.1.0/28"
    # what the control plane gets for the next ENIs: .6 up to .14 (.4 ENI, .5 server, .15 bcast)
    taken = set()
    while (addr := p.free_address("subnet-a", 4, taken)) is not None:
        taken.add(addr)
    assert sorted(taken, key=lambda a: int(a.split(".")[-1])) == [
        f"198.18.1.{i}" for i in range(6, 15)]


def test_iam_example_plan():
    p = example_plan("iam.toml")
    assert p.vpc_id == "vpc-0a1b2c3d4e5f60718" and p.account_id == "123456789012"
    assert p.function("fn-a").role == "lambda-vpc"
    assert set(p.iam["roles"]) == {"lambda-vpc", "no-eni-role"}
    assert len(p.iam["identity_policies"]) == 1


# ---- plan helpers ------------------------------------------------------------------------------
def test_free_address_skips_reserved_enis_nats_hosts_and_taken():
    p = lc.resolve(lc.default(), "demo")  # ENI .4, server .5
    assert p.free_address("subnet-a", 4) == "198.18.1.6"
    assert p.free_address("subnet-a", 4, {"198.18.1.6", "198.18.1.7"}) == "198.18.1.8"
    assert p.free_address("subnet-a", 6) == "2001:2:0:1::6"
    assert p.free_address("subnet-a", 6, {"2001:2:0:1::6"}) == "2001:2:0:1::7"
    with pytest.raises(KeyError):
        p.free_address("subnet-x", 4)
    nat = example_plan("natgw.toml")  # subnet-public: NAT gateway at .4
    assert nat.free_address("subnet-public", 4) == "198.18.2.5"
    assert nat.free_address("subnet-public", 6) is None, "IPv4-only subnet"


def test_free_address_none_when_full():
    doc = base_doc()
    doc["subnets"][0]["cidr"] = "198.18.1.0/28"  # 11 usable: ENI + 10 hosts fill it
    doc["hosts"] = [{"name": f"h{i}", "subnet": "subnet-a"} for i in range(10)]
    p = lc.resolve(parse(doc), "demo")
    assert p.free_address("subnet-a", 4) is None


def test_sg_rules_is_the_union_of_the_groups():
    doc = base_doc()
    web = {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr": "0.0.0.0/0"}
    dns = {"protocol": "udp", "from_port": 53, "to_port": 53, "cidr": "198.18.0.2/32"}
    add_sg(doc, "sg-web", [web])
    add_sg(doc, "sg-dns", [dict(web), dns])
    p = lc.resolve(parse(doc), "demo")
    rules = p.sg_rules(["sg-web", "sg-dns"])
    assert [(r.protocol, r.from_port, r.cidr) for r in rules] == [
        ("tcp", 443, "0.0.0.0/0"), ("udp", 53, "198.18.0.2/32")]
    assert p.sg_rules([]) == []
    with pytest.raises(KeyError):
        p.sg_rules(["sg-nope"])


def test_function_without_vpc_config():
    doc = base_doc()
    doc["functions"].append({"name": "fn-c", "environments": ["veth"]})
    p = lc.resolve(parse(doc), "demo")
    env = p.env("fn-c-0")
    assert (env.eni, env.subnet) == ("", "")
    assert env.ipv4 == "198.19.0.10/30" and env.gw4 == "198.19.0.9"
    assert env.ipv6 == "2001:2:0:f002::2/64", "the VPC has IPv6: addressed anyway"
    fn = p.function("fn-c")
    assert (fn.subnet_ids, fn.security_group_ids, fn.ipv6_allowed_for_dual_stack, fn.envs) == (
        [], [], False, ["fn-c-0"])
    assert len(p.enis) == 1, "no ENI for a function outside the VPC"


def test_every_environment_gets_ipv6_when_the_vpc_has_it():
    doc = base_doc()
    for f in doc["functions"]:
        f["vpc_config"]["ipv6_allowed_for_dual_stack"] = False
    p = lc.resolve(parse(doc), "demo")
    assert [(e.ipv6, e.gw6) for e in p.envs] == [
        ("2001:2:0:f000::2/64", "2001:2:0:f000::1"), ("2001:2:0:f001::2/64", "2001:2:0:f001::1")]
    assert [f.ipv6_allowed_for_dual_stack for f in p.functions] == [False, False]


def test_env_ipv6_capacity_counts_every_environment():
    doc = base_doc()
    for f in doc["functions"]:
        f["vpc_config"]["ipv6_allowed_for_dual_stack"] = False
    doc["lab"]["env_ipv6_cidr"] = "2001:2:0:f000::/64"  # one /64, two environments
    refused(doc, "lab.env_ipv6_cidr", "holds 1", "have 2", "shorter prefix")
    del doc["vpc"]["ipv6_cidr"]
    del doc["subnets"][0]["ipv6_cidr"]
    parse(doc)  # no IPv6 in the VPC: no /64s needed


def test_nat_gateway_address_comes_after_enis_and_before_hosts():
    doc = example_doc("natgw.toml")
    doc["functions"][0]["vpc_config"]["subnet_ids"] = ["subnet-private", "subnet-public"]
    doc["hosts"].append({"name": "bastion", "subnet": "subnet-public"})
    doc["internet_hosts"].insert(0, {"name": "fixed", "ipv4": "198.19.255.2"})
    p = lc.resolve(parse(doc), "demo")
    assert [e.ipv4 for e in p.enis if e.subnet == "subnet-public"] == ["198.18.2.4"]
    assert p.nat_gateways[0].private_ipv4 == "198.18.2.5"
    assert p.host("bastion").ipv4 == "198.18.2.6/24"
    # the fixed internet address is skipped: NAT gateway first, then the other hosts
    assert p.nat_gateways[0].public_ipv4 == "198.19.255.3"
    assert p.internet_host("fixed").ipv4 == "198.19.255.2/24"
    assert p.internet_host("web").ipv4 == "198.19.255.4/24"
    assert [h.fabric_ifname for h in p.internet_hosts] == ["ihost0", "ihost1"]


def test_internet_hosts_alone_are_enough():
    doc = example_doc("natgw.toml")
    del doc["hosts"]
    p = lc.resolve(parse(doc), "demo")
    assert p.hosts == [] and [h.name for h in p.internet_hosts] == ["web"]


# ---- [vpc] id and [lab] account_id -------------------------------------------------------------
def test_vpc_id_given():
    doc = base_doc()
    doc["vpc"]["id"] = "vpc-0a1b2c3d"
    assert lc.resolve(parse(doc), "demo").vpc_id == "vpc-0a1b2c3d"


@pytest.mark.parametrize("value", ["vpc-xyz", "vpc-0A1B2C3D", "vpc-0a1b2c3d4", "0a1b2c3d"])
def test_bad_vpc_id(value):
    doc = base_doc()
    doc["vpc"]["id"] = value
    refused(doc, "vpc.id", "not a VPC id", "8 or 17 lower-case hex")


@pytest.mark.parametrize("value, words", [
    ("12345", ["12 digits"]), ("12345678901a", ["12 digits"]),
    (123456789012, ["must be a string", "quoted"]),
])
def test_bad_account_id(value, words):
    doc = base_doc()
    doc["lab"]["account_id"] = value
    refused(doc, "lab.account_id", *words)


def test_account_id_given():
    doc = base_doc()
    doc["lab"]["account_id"] = "012345678901"
    assert lc.resolve(parse(doc), "demo").account_id == "012345678901"


# ---- [[security_groups]] -----------------------------------------------------------------------
def sg_doc(*rules):
    """The default lab with sg-0a1b2c3d's egress set to ``rules``."""
    doc = base_doc()
    doc["security_groups"][0]["egress"] = list(rules)
    return doc


def test_undefined_security_group_is_refused_like_aws():
    doc = base_doc()
    doc["functions"][1]["vpc_config"]["security_group_ids"] = ["sg-0a1b2c3e"]
    refused(doc, "functions[1].vpc_config.security_group_ids[0]",
            "InvalidParameterValueException", "InvalidGroup.NotFound",
            "'sg-0a1b2c3e' does not exist", "did you mean 'sg-0a1b2c3d'",
            "[[security_groups]]", "use one of: sg-0a1b2c3d")


def test_security_group_needs_a_definition_even_with_none_defined():
    doc = base_doc()
    del doc["security_groups"]
    refused(doc, "functions[0].vpc_config.security_group_ids[0]", "does not exist",
            "[[security_groups]]", "defines none")


def test_default_egress_in_an_ipv4_only_vpc():
    doc = base_doc()
    del doc["vpc"]["ipv6_cidr"]
    del doc["subnets"][0]["ipv6_cidr"]
    for f in doc["functions"]:
        f["vpc_config"]["ipv6_allowed_for_dual_stack"] = False
    (sg,) = lc.resolve(parse(doc), "demo").security_groups
    assert [(r.protocol, r.cidr) for r in sg.egress] == [("all", "0.0.0.0/0")]


def test_empty_egress_allows_nothing():
    (sg,) = lc.resolve(parse(sg_doc()), "demo").security_groups
    assert sg.egress == []


def test_egress_rules_parsed():
    doc = sg_doc({"protocol": "-1", "cidr": "10.0.0.0/8", "description": "anything"},
                 {"protocol": "udp", "from_port": 53, "to_port": 53, "cidr": "::/0"})
    (sg,) = lc.resolve(parse(doc), "demo").security_groups
    assert sg.egress == [
        lc.RulePlan(0, "allow", "all", "10.0.0.0/8", 0, 65535, "anything"),
        lc.RulePlan(0, "allow", "udp", "::/0", 53, 53)]


def test_too_many_egress_rules():
    rules = [{"protocol": "tcp", "from_port": p, "to_port": p, "cidr": "0.0.0.0/0"}
             for p in range(61)]
    refused(sg_doc(*rules), "security_groups[0].egress", "61 rules", "at most 60")
    parse(sg_doc(*rules[:60]))


@pytest.mark.parametrize("rule, field, words", [
    ({"protocol": "icmp", "cidr": "0.0.0.0/0"}, "protocol", ["'icmp'", '"tcp", "udp", "all"']),
    ({"protocol": "TCP", "from_port": 1, "to_port": 2, "cidr": "0.0.0.0/0"}, "protocol",
     ["not a protocol"]),
    ({"protocol": "tcp", "to_port": 443, "cidr": "0.0.0.0/0"}, "from_port",
     ["missing", "from_port and to_port"]),
    ({"protocol": "udp", "from_port": 53, "cidr": "0.0.0.0/0"}, "to_port", ["missing"]),
    ({"protocol": "all", "from_port": 0, "cidr": "0.0.0.0/0"}, "from_port",
     ["matches every port", "remove from_port/to_port"]),
    ({"protocol": "tcp", "from_port": 0, "to_port": 70000, "cidr": "0.0.0.0/0"}, "to_port",
     ["0..65535"]),
    ({"protocol": "tcp", "from_port": 443, "to_port": 80, "cidr": "0.0.0.0/0"}, "to_port",
     ["below from_port", "swap"]),
    ({"protocol": "tcp", "from_port": "443", "to_port": 443, "cidr": "0.0.0.0/0"}, "from_port",
     ["must be an integer"]),
    ({"protocol": "all", "cidr": "198.18.1.7/24"}, "cidr",
     ["host bits", '"198.18.1.0/24"', "write that"]),
    ({"protocol": "all", "cidr": "2001:2::1/48"}, "cidr", ["host bits", "2001:2::/48"]),
    ({"protocol": "all", "cidr": "0.0.0.0"}, "cidr", ["no prefix length", "/32"]),
    ({"protocol": "all", "cidr": "anywhere/0"}, "cidr", ["not an IPv4 or IPv6 CIDR"]),
    ({"protocol": "all"}, "cidr", ["missing"]),
    ({"protocol": "all", "cidr": "0.0.0.0/0", "ports": 5}, "ports", ["unknown key"]),
])
def test_bad_egress_rule(rule, field, words):
    refused(sg_doc(rule), f"security_groups[0].egress[0].{field}", *words)


def test_duplicate_egress_rule():
    rule = {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr": "0.0.0.0/0"}
    refused(sg_doc(rule, dict(rule, description="again")), "security_groups[0].egress[1]",
            "InvalidPermission.Duplicate", "egress[0]")


def test_egress_must_be_an_array():
    doc = base_doc()
    doc["security_groups"][0]["egress"] = {"protocol": "all", "cidr": "0.0.0.0/0"}
    refused(doc, "security_groups[0].egress", "must be an array", "egress = [")


def test_bad_and_duplicate_security_group_ids():
    doc = base_doc()
    doc["security_groups"][0]["id"] = "group-1"
    refused(doc, "security_groups[0].id", "not a security group id", "sg-")
    doc = base_doc()
    add_sg(doc, "sg-0a1b2c3d")
    refused(doc, "security_groups[1].id", "duplicate security group id", "security_groups[0]")


def test_unknown_security_group_key():
    doc = base_doc()
    doc["security_groups"][0]["ingress"] = []
    refused(doc, "security_groups[0].ingress", "unknown key", "egress")


# ---- [[network_acls]] --------------------------------------------------------------------------
def nacl_doc(ingress=(), egress=(), subnet_ids=("subnet-fn",)):
    doc = example_doc("nacl.toml")
    doc["network_acls"][0].update(ingress=list(ingress), egress=list(egress),
                                  subnet_ids=list(subnet_ids))
    return doc


def nrule(number, action="allow", protocol="all", cidr="0.0.0.0/0", **ports):
    return {"rule_number": number, "action": action, "protocol": protocol, "cidr": cidr, **ports}


def test_nacl_rules_are_sorted_by_number():
    doc = nacl_doc(ingress=[nrule(300), nrule(100, "deny", "icmp"),
                            nrule(200, "deny", "tcp", "::/0", from_port=22, to_port=22)])
    (acl,) = lc.resolve(parse(doc), "demo").nacls
    assert [(r.number, r.action, r.protocol, r.cidr, r.from_port, r.to_port)
            for r in acl.ingress] == [(100, "deny", "icmp", "0.0.0.0/0", 0, 65535),
                                      (200, "deny", "tcp", "::/0", 22, 22),
                                      (300, "allow", "all", "0.0.0.0/0", 0, 65535)]
    assert acl.egress == [], "no rules: only the implicit deny"


@pytest.mark.parametrize("rule, field, words", [
    (nrule(0), "rule_number", ["1..32766"]),
    (nrule(32767), "rule_number", ["1..32766", "32767"]),
    (nrule(True), "rule_number", ["must be an integer"]),
    (nrule(100, "permit"), "action", ["'permit'", '"allow" or "deny"']),
    (nrule(100, protocol="gre"), "protocol", ["not a protocol", '"icmp"']),
    (nrule(100, protocol="icmp", from_port=0, to_port=0), "from_port", ["matches every port"]),
    (nrule(100, protocol="tcp"), "from_port", ["missing"]),
    (nrule(100, cidr="198.18.1.1/24"), "cidr", ["host bits"]),
])
def test_bad_nacl_rule(rule, field, words):
    refused(nacl_doc(ingress=[rule]), f"network_acls[0].ingress[0].{field}", *words)


def test_nacl_rule_numbers_unique_per_direction():
    refused(nacl_doc(egress=[nrule(100), nrule(100, "deny")]),
            "network_acls[0].egress[1].rule_number", "NetworkAclEntryAlreadyExists",
            "egress[0]")
    parse(nacl_doc(ingress=[nrule(100)], egress=[nrule(100)]))  # the same number both ways


def test_nacl_rule_count_limit():
    refused(nacl_doc(ingress=[nrule(i + 1) for i in range(41)]), "network_acls[0].ingress",
            "at most 40")


def test_nacl_unknown_subnet():
    refused(nacl_doc(subnet_ids=["subnet-fm"]), "network_acls[0].subnet_ids[0]",
            "'subnet-fm' is not defined", "did you mean 'subnet-fn'", "subnet-srv")


def test_subnet_in_two_nacls():
    doc = nacl_doc()
    doc["network_acls"].append({"id": "acl-other", "subnet_ids": ["subnet-srv", "subnet-fn"]})
    refused(doc, "network_acls[1].subnet_ids[1]", "already associated with network ACL "
            "'acl-0a1b2c3d'", "exactly one")


def test_bad_and_duplicate_nacl_ids():
    doc = nacl_doc()
    doc["network_acls"][0]["id"] = "nacl-1"
    refused(doc, "network_acls[0].id", "not a network ACL id", "acl-")
    doc = nacl_doc()
    doc["network_acls"].append({"id": "acl-0a1b2c3d"})
    refused(doc, "network_acls[1].id", "duplicate network ACL id")


# ---- [[route_tables]], [internet], [[nat_gateways]], [[internet_hosts]] ------------------------
def natgw_doc():
    return example_doc("natgw.toml")


def test_nat_gateway_in_a_private_subnet():
    doc = natgw_doc()
    doc["nat_gateways"][0]["subnet_id"] = "subnet-private"
    refused(doc, "nat_gateways[0].subnet_id", "a NAT gateway needs a public subnet",
            "route 0.0.0.0/0 to the internet gateway igw-0f1e2d3c4b5a69788",
            "'rtb-private' sends 0.0.0.0/0 to NAT gateway", "private subnet")


def test_nat_gateway_in_a_subnet_without_route_table():
    doc = natgw_doc()
    doc["route_tables"][0]["subnet_ids"] = []
    refused(doc, "nat_gateways[0].subnet_id", "needs a public subnet", "has no route table")


def test_nat_gateway_in_a_subnet_without_default_route():
    doc = natgw_doc()
    doc["route_tables"][0]["routes"] = [{"destination": "203.0.113.0/24",
                                         "target": "igw-0f1e2d3c4b5a69788"}]
    refused(doc, "nat_gateways[0].subnet_id", "needs a public subnet", "no 0.0.0.0/0 route")


def test_nat_gateway_without_internet():
    doc = natgw_doc()
    del doc["internet"], doc["internet_hosts"]
    doc["route_tables"] = []
    refused(doc, "nat_gateways[0].subnet_id", "public subnet", "[internet]")


@pytest.mark.parametrize("key, value, words", [
    ("id", "nat-12345", ["not a NAT gateway id", "8 or 17"]),
    ("idle_timeout", 0, ["> 0", "350"]),
    ("idle_timeout", "350", ["number of seconds"]),
    ("subnet_id", "subnet-pubic", ["InvalidSubnetID.NotFound", "did you mean 'subnet-public'"]),
])
def test_bad_nat_gateway(key, value, words):
    doc = natgw_doc()
    doc["nat_gateways"][0][key] = value
    refused(doc, f"nat_gateways[0].{key}", *words)


def test_nat_gateway_idle_timeout_for_tests():
    doc = natgw_doc()
    doc["nat_gateways"][0]["idle_timeout"] = 2
    assert lc.resolve(parse(doc), "demo").nat_gateways[0].idle_timeout == 2.0


def test_duplicate_nat_gateway():
    doc = natgw_doc()
    doc["nat_gateways"].append(dict(doc["nat_gateways"][0]))
    refused(doc, "nat_gateways[1].id", "duplicate NAT gateway id")


def test_route_to_an_unknown_nat_gateway():
    doc = natgw_doc()
    doc["route_tables"][1]["routes"][0]["target"] = "nat-0a1b2c3d4e5f60719"
    refused(doc, "route_tables[1].routes[0].target", "InvalidNatGatewayID.NotFound",
            "'nat-0a1b2c3d4e5f60719' does not exist", "did you mean 'nat-0a1b2c3d4e5f60718'")


def test_route_to_an_unknown_internet_gateway():
    doc = natgw_doc()
    doc["route_tables"][0]["routes"][0]["target"] = "igw-0a1b2c3d"
    refused(doc, "route_tables[0].routes[0].target", "InvalidGatewayID.NotFound",
            "'igw-0f1e2d3c4b5a69788'")
    doc = base_doc()
    doc["route_tables"] = [{"id": "rtb-a", "subnet_ids": ["subnet-a"], "routes": [
        {"destination": "0.0.0.0/0", "target": "igw-0a1b2c3d"}]}]
    refused(doc, "route_tables[0].routes[0].target", "InvalidGatewayID.NotFound", "[internet]")


def test_route_to_something_else():
    doc = natgw_doc()
    doc["route_tables"][0]["routes"][0]["target"] = "pcx-1234"
    refused(doc, "route_tables[0].routes[0].target", "not a route target", "nat-", "igw-")


@pytest.mark.parametrize("dest, words", [
    ("198.18.0.0/16", ["inside the VPC's block", "local route"]),
    ("198.18.5.0/24", ["inside the VPC's block"]),
    ("::/0", ["IPv6", "IPv4 only"]),
    ("0.0.0.1/0", ["host bits"]),
])
def test_bad_route_destination(dest, words):
    doc = natgw_doc()
    doc["route_tables"][1]["routes"][0]["destination"] = dest
    refused(doc, "route_tables[1].routes[0].destination", *words)


def test_duplicate_route():
    doc = natgw_doc()
    doc["route_tables"][1]["routes"].append(dict(doc["route_tables"][1]["routes"][0]))
    refused(doc, "route_tables[1].routes[1].destination", "RouteAlreadyExists")


def test_subnet_in_two_route_tables():
    doc = natgw_doc()
    doc["route_tables"][1]["subnet_ids"].append("subnet-public")
    refused(doc, "route_tables[1].subnet_ids[1]", "already associated with route table "
            "'rtb-public'")


def test_bad_route_table_id():
    doc = natgw_doc()
    doc["route_tables"][0]["id"] = "table-1"
    refused(doc, "route_tables[0].id", "not a route table id", "rtb-")


@pytest.mark.parametrize("cidr, words", [
    ("198.18.128.0/24", ["overlaps vpc.cidr"]),
    ("203.0.113.0/24", ["outside 198.18.0.0/15", "benchmark"]),
    ("198.19.0.0/24", ["overlaps the execution environments' links", "198.19.0.0-198.19.0.3"]),
    ("198.19.255.0/31", ["no room", "/30"]),
])
def test_bad_internet_cidr(cidr, words):
    doc = natgw_doc()
    doc["internet"]["cidr"] = cidr
    refused(doc, "internet.cidr", *words)


def test_internet_may_share_env_cidr_where_no_environment_is():
    doc = natgw_doc()
    doc["internet"]["cidr"] = "198.19.0.8/29"  # fn-a's only /30 is 198.19.0.0/30
    p = lc.resolve(parse(doc), "demo")
    assert p.internet.router4 == "198.19.0.9"
    assert p.internet_hosts[0].ipv4 == "198.19.0.11/29"


def test_internet_defaults():
    doc = natgw_doc()
    doc["internet"] = {}
    doc["route_tables"][0]["routes"][0]["target"] = "igw-" + "0" * 17  # not the derived id
    msg = refused(doc, "route_tables[0].routes[0].target", "InvalidGatewayID.NotFound")
    derived = msg.split("internet gateway is '")[1].split("'")[0]
    assert len(derived) == 4 + 17 and derived.startswith("igw-")
    doc["route_tables"][0]["routes"][0]["target"] = derived
    p = lc.resolve(parse(doc), "demo")
    assert (p.internet.cidr, p.internet.gateway_id) == ("198.19.255.0/24", derived)


def test_bad_internet_gateway_id():
    doc = natgw_doc()
    doc["internet"]["gateway_id"] = "gw-1"
    refused(doc, "internet.gateway_id", "not an internet gateway id", "igw-")


def test_internet_too_small_for_its_hosts():
    doc = natgw_doc()
    doc["internet"]["cidr"] = "198.19.255.0/30"  # .2 only: the NAT gateway takes it
    refused(doc, "internet.cidr", "needs 2", "larger block")


def test_internet_host_without_internet():
    doc = base_doc()
    doc["internet_hosts"] = [{"name": "web"}]
    refused(doc, "internet_hosts[0]", "[internet]")


@pytest.mark.parametrize("addr, words", [
    ("198.19.254.9", ["outside internet.cidr"]),
    ("198.19.255.1", ["gateway"]),
    ("198.19.255.255", ["broadcast"]),
    ("198.19.255.0", ["network"]),
])
def test_bad_internet_host_address(addr, words):
    doc = natgw_doc()
    doc["internet_hosts"][0]["ipv4"] = addr
    refused(doc, "internet_hosts[0].ipv4", *words)


def test_duplicate_internet_host():
    doc = natgw_doc()
    doc["internet_hosts"][0]["ipv4"] = "198.19.255.9"
    doc["internet_hosts"].append({"name": "web2", "ipv4": "198.19.255.9"})
    refused(doc, "internet_hosts[1].ipv4", "already internet_hosts[0]'s")
    doc = natgw_doc()
    doc["internet_hosts"].append({"name": "web"})
    refused(doc, "internet_hosts[1].name", "duplicate internet host name")


# ---- functions: vpc_config, role ---------------------------------------------------------------
def test_role_must_be_defined():
    doc = example_doc("iam.toml")
    doc["functions"][0]["role"] = "lambda-vcp"
    refused(doc, "functions[0].role", "InvalidParameterValueException",
            "cannot be assumed by Lambda", "did you mean 'lambda-vpc'", "[iam.roles]")
    doc = base_doc()
    doc["functions"][0]["role"] = "lambda-vpc"
    refused(doc, "functions[0].role", "cannot be assumed", "no roles")


# ---- [lifecycle] -------------------------------------------------------------------------------
def lifecycle(**values):
    doc = base_doc()
    doc["lifecycle"] = values
    return doc


def test_lifecycle_aws_profile():
    p = lc.resolve(parse(lifecycle(profile="aws")), "demo")
    assert (p.lifecycle.profile, p.lifecycle.eni_create_delay, p.lifecycle.inactive_after,
            p.lifecycle.eni_delete_delay) == ("aws", 90.0, 30 * 24 * 3600.0, 1200.0)
    assert (p.lifecycle.ports_per_eni, p.lifecycle.high_water, p.lifecycle.max_enis_per_key) \
        == (65000, 0.8, 8)


def test_lifecycle_overrides_the_profile():
    p = lc.resolve(parse(lifecycle(profile="aws", eni_create_delay=5, high_water=0,
                                   ports_per_eni=1, max_enis_per_key=64)), "demo")
    lp = p.lifecycle
    assert (lp.eni_create_delay, lp.inactive_after, lp.high_water, lp.ports_per_eni,
            lp.max_enis_per_key) == (5.0, 2592000.0, 0.0, 1, 64)
    assert isinstance(lp.eni_create_delay, float)


@pytest.mark.parametrize("key, value, words", [
    ("profile", "prod", ['"lab"', '"aws"']),
    ("eni_create_delay", 0, ["> 0", "uses 1"]),
    ("inactive_after", -1, ["> 0"]),
    ("eni_delete_delay", True, ["number of seconds"]),
    ("ports_per_eni", 0, ["1..65000"]),
    ("ports_per_eni", 65001, ["1..65000"]),
    ("ports_per_eni", 100.5, ["must be an integer"]),
    ("high_water", 0.3, ["0.5 to 0.99", "write 0"]),
    ("high_water", 1, ["0.5 to 0.99"]),
    ("max_enis_per_key", 0, ["1..64"]),
    ("max_enis_per_key", 65, ["1..64"]),
    ("eni_creation_delay", 1, ["unknown key", "did you mean 'eni_create_delay'"]),
])
def test_bad_lifecycle(key, value, words):
    refused(lifecycle(**{key: value}), f"lifecycle.{key}", *words)


# ---- [iam] -------------------------------------------------------------------------------------
def iam_doc():
    return example_doc("iam.toml")


def test_iam_identity_policy_refuses_a_subnet():
    doc = iam_doc()
    doc["functions"][0]["vpc_config"]["subnet_ids"] = ["subnet-a", "subnet-b"]
    doc["functions"][0]["vpc_config"]["ipv6_allowed_for_dual_stack"] = False
    refused(doc, "functions[0].vpc_config", "AccessDeniedException",
            "arn:aws:iam::123456789012:user/lab is not authorized to perform: "
            "lambda:CreateFunction", "function:fn-a")


def test_iam_role_without_eni_permissions():
    doc = iam_doc()
    doc["functions"][0]["role"] = "no-eni-role"
    refused(doc, "functions[0].vpc_config", "InvalidParameterValueException",
            "execution role does not have permissions to call CreateNetworkInterface on EC2")


def test_iam_deny_without_vpc_config():
    doc = iam_doc()
    del doc["functions"][0]["vpc_config"]
    refused(doc, "functions[0]", "AccessDeniedException", "explicit deny")


def test_iam_roles_checked_only_when_named():
    doc = iam_doc()
    del doc["functions"][0]["role"]
    doc["iam"]["roles"].reverse()  # the role without ENI permissions first: still not used
    assert parse(doc).functions[0].role is None


def test_iam_policy_error_names_the_field():
    doc = iam_doc()
    doc["iam"]["identity_policies"][0]["Statement"][0]["Effect"] = "Permit"
    with pytest.raises(LabConfigError) as info:
        parse(doc)
    assert info.value.field.startswith("iam.identity_policies[0].Statement[0]")
    assert "Effect" in str(info.value)


# ---- [datapath] --------------------------------------------------------------------------------
def test_datapath_cpus_default_is_unpinned_and_round_trips():
    plan = lc.resolve(parse(base_doc()), "dp")
    assert plan.datapath.cpus == ()
    doc = base_doc()
    doc["datapath"] = {"cpus": [1, 0]}
    plan = lc.resolve(parse(doc), "dp")
    assert plan.datapath.cpus == (1, 0)
    assert lc.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("value, field, word", [
    ({"cpus": "1"}, "datapath.cpus", "list"),
    ({"cpus": [-1]}, "datapath.cpus[0]", "CPU number"),
    ({"cpus": [0, True]}, "datapath.cpus[1]", "CPU number"),
    ({"cpus": [1, 1]}, "datapath.cpus", "twice"),
    ({"cpu": [1]}, "datapath.cpu", ""),
])
def test_datapath_bad_cpus_name_the_field(value, field, word):
    doc = base_doc()
    doc["datapath"] = value
    refused(doc, field, word)


def test_datapath_ring_frames_default_and_round_trip():
    assert lc.resolve(parse(base_doc()), "dp").datapath.ring_frames == 0   # 0: the C default
    doc = base_doc()
    doc["datapath"] = {"ring_frames": 16384}
    plan = lc.resolve(parse(doc), "dp")
    assert plan.datapath.ring_frames == 16384
    assert lc.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("value", [1000, 512, 65664, 131072, "4096", True, -128])
def test_datapath_bad_ring_frames_name_the_field_and_the_fix(value):
    doc = base_doc()
    doc["datapath"] = {"ring_frames": value}
    refused(doc, "datapath.ring_frames", "multiple of 128 from 1024 to 65536")


def test_datapath_inbound_cpus_round_trip_and_errors():
    assert lc.resolve(parse(base_doc()), "dp").datapath.inbound_cpus == ()   # no worker
    doc = base_doc()
    doc["datapath"] = {"cpus": [1], "inbound_cpus": [0]}
    plan = lc.resolve(parse(doc), "dp")
    assert plan.datapath.inbound_cpus == (0,)
    assert lc.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    doc["datapath"] = {"cpus": [1], "inbound_cpus": [0, 0]}
    refused(doc, "datapath.inbound_cpus", "twice")
    # the worker needs the loop kept off its CPUs: no cpus, or cpus all among inbound_cpus
    for dp in ({"inbound_cpus": [0]}, {"cpus": [0], "inbound_cpus": [0]},
               {"cpus": [0], "inbound_cpus": [0, 1]}):
        doc["datapath"] = dp
        refused(doc, "datapath.inbound_cpus", "set datapath.cpus to CPUs outside them")
    doc["datapath"] = {"cpus": [0, 1], "inbound_cpus": [0]}   # the loop may still use CPU 1
    assert lc.resolve(parse(doc), "dp").datapath.cpus == (0, 1)
    doc["datapath"] = {"inbound_cpus": ["0"]}
    refused(doc, "datapath.inbound_cpus[0]", "CPU number")


def test_pin_cpus_checks_the_inbound_workers_cpus_before_pinning():
    import os

    from hyperplane.datapath import daemon

    missing = max(os.sched_getaffinity(0)) + 1
    before = os.sched_getaffinity(0)
    with pytest.raises(LabConfigError) as e:
        daemon.pin_cpus((min(before),), (missing,))
    assert e.value.field == "datapath.inbound_cpus" and str(missing) in str(e.value)
    assert os.sched_getaffinity(0) == before     # refused before anything changed


def test_pin_cpus_refuses_a_cpu_this_process_may_not_use():
    import os

    from hyperplane.datapath import daemon

    missing = max(os.sched_getaffinity(0)) + 1
    before = os.sched_getaffinity(0)
    with pytest.raises(LabConfigError) as e:
        daemon.pin_cpus((missing,))
    assert e.value.field == "datapath.cpus" and str(missing) in str(e.value)
    assert os.sched_getaffinity(0) == before     # refused before anything changed
    daemon.pin_cpus(())                           # empty: nothing happens
    assert os.sched_getaffinity(0) == before


def test_pin_cpus_pins_the_process():
    import subprocess
    import sys

    cpu = min(__import__("os").sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c",
                          "import os; from hyperplane.datapath import daemon; "
                          f"daemon.pin_cpus(({cpu},)); print(sorted(os.sched_getaffinity(0)))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"[{cpu}]"


def test_datapath_cpus_do_not_change_the_plan_hash_of_a_saved_state():
    from hyperplane.datapath import daemon

    doc = base_doc()
    plain = lc.resolve(parse(doc), "dp")
    doc["datapath"] = {"cpus": [0]}
    pinned = lc.resolve(parse(doc), "dp")
    assert plain != pinned
    assert statefile.plan_hash(plain) == statefile.plan_hash(pinned)   # restore across a CPU move
    doc["flow_logs"] = {"enabled": False}
    assert statefile.plan_hash(lc.resolve(parse(doc), "dp")) != statefile.plan_hash(plain)
