"""Lab config, what runs in the VPC: functions (vpc_config, role), [lifecycle], [iam] and
[datapath] (the data path's CPUs and rings). Pure Python: no privileges, no namespaces."""
from __future__ import annotations

import json

import pytest

from hyperplane import labconfig as lc
from hyperplane.datapath import statefile
from hyperplane.labconfig import LabConfigError
from kit.labdocs import base_doc, example_doc, parse, refused


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
    # the worker needs the loop kept off its CPUs: cpus all among inbound_cpus, or no cpus
    # with nothing placed (placement "auto" keeps the loop off them itself)
    for dp in ({"inbound_cpus": [0], "placement": "none"}, {"cpus": [0], "inbound_cpus": [0]},
               {"cpus": [0], "inbound_cpus": [0, 1]}):
        doc["datapath"] = dp
        refused(doc, "datapath.inbound_cpus", "set datapath.cpus to CPUs outside them")
    doc["datapath"] = {"inbound_cpus": [0]}                   # auto places the loop elsewhere
    assert lc.resolve(parse(doc), "dp").datapath.inbound_cpus == (0,)
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
    doc = base_doc()
    plain = lc.resolve(parse(doc), "dp")
    doc["datapath"] = {"cpus": [0]}
    pinned = lc.resolve(parse(doc), "dp")
    assert plain != pinned
    assert statefile.plan_hash(plain) == statefile.plan_hash(pinned)   # restore across a CPU move
    doc["flow_logs"] = {"enabled": False}
    assert statefile.plan_hash(lc.resolve(parse(doc), "dp")) != statefile.plan_hash(plain)
