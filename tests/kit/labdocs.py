"""Lab config documents for the config tests (tests/labconfig) to bend one value at a time:
the default lab as a plain document, the examples/ files, a parse that names its source, and
``refused`` (the document is refused, the message starts with the field's path)."""
from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import pytest

from hyperplane import labconfig as lc
from hyperplane.labconfig import LabConfigError
from kit import REPO

#: The example lab files (examples/ in the repository).
EXAMPLES = Path(REPO) / "examples"


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


def example_doc(name):
    return tomllib.loads((EXAMPLES / name).read_text())


def example_plan(name, lab="ex"):
    return lc.resolve(lc.load(EXAMPLES / name), lab)


#: One function whose environments list an unknown attach kind, whose vpc_config names an
#: unknown subnet and an unknown security group.
THREE_MISTAKES = """
[vpc]
cidr = "198.18.0.0/16"

[[subnets]]
id = "subnet-a"
cidr = "198.18.1.0/24"

[[security_groups]]
id = "sg-0a1b2c3d"

[[functions]]
name = "fn-a"
environments = ["tap", "wire"]
[functions.vpc_config]
subnet_ids = ["subnet-zz"]
security_group_ids = ["sg-0badbad0"]

[[hosts]]
name = "server"
subnet = "subnet-a"
"""
THREE_FIELDS = ["functions[0].environments[1]", "functions[0].vpc_config.subnet_ids[0]",
                "functions[0].vpc_config.security_group_ids[0]"]
