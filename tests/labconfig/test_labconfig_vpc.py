"""Lab config, the VPC: the example labs and the plan fields they bring, the plan's helpers,
[vpc] id and [lab] account_id, [[security_groups]], [[network_acls]], [[route_tables]],
[internet], [[nat_gateways]] and [[internet_hosts]]. Pure Python: no privileges, no
namespaces."""
from __future__ import annotations

import json

import pytest

from hyperplane import labconfig as lc
from kit.labdocs import add_sg, base_doc, example_doc, example_plan, parse, refused


# ---- examples and the new plan fields ----------------------------------------------------------
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


@pytest.mark.parametrize("name", [None, "natgw.toml", "nacl.toml", "scaleout.toml", "iam.toml",
                                  "postgres/lab.toml", "natgw-keepalive/lab.toml"])
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
