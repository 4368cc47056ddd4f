"""``hyperplane lab validate|schema|plan``, run as a user runs them: in a subprocess, and for
validate with no capability at all (even as root), since checking a file needs no privilege."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kit import REPO
from kit.labdocs import THREE_FIELDS as BAD_FIELDS, THREE_MISTAKES as BAD


#: Prints the process's effective capabilities to stderr, then runs the command line.
_CLI = ("import sys; "
        "cap = [l for l in open('/proc/self/status') if l.startswith('CapEff:')][0].split()[1]; "
        "print('CapEff=' + cap, file=sys.stderr); "
        "from hyperplane.cli import main; sys.exit(main(sys.argv[1:]))")
CAP_NET_ADMIN = 12


def run(*args, unprivileged=False):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", _CLI, *args]
    if unprivileged:
        if shutil.which("setpriv") is None:
            pytest.fail("setpriv (util-linux) is needed to drop every capability for this test")
        cmd = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
               "--no-new-privs", *cmd]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if unprivileged:
        cap = int(p.stderr.split("CapEff=")[1].split()[0], 16)
        assert not cap & (1 << CAP_NET_ADMIN), f"still has CAP_NET_ADMIN: {cap:#x}"
        assert cap == 0, f"capabilities left: {cap:#x}"
    return p


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return str(path)


def test_validate_reports_every_mistake_without_any_capability(bad_file):
    p = run("lab", "validate", bad_file, unprivileged=True)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3, p.stdout
    for line, field in zip(lines, BAD_FIELDS):
        assert line.startswith(f"{bad_file}: {field}: "), line
    assert "3 mistakes" in p.stderr


def test_validate_json_lists_the_problems(bad_file):
    p = run("lab", "validate", bad_file, "--json")
    assert p.returncode == 2, p.stderr
    out = json.loads(p.stdout)
    assert out["valid"] is False and out["summary"] is None
    assert [x["field"] for x in out["problems"]] == BAD_FIELDS
    assert "not an attach kind" in out["problems"][0]["message"]


def test_validate_a_good_file_summarises_it_without_any_capability():
    p = run("lab", "validate", unprivileged=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == ("<default>: valid: 1 subnet, 1 security group, 2 functions "
                                "(2 environments), 1 host; lab up would create 1 ENI and 5 "
                                "namespaces")
    p = run("lab", "validate", "examples/natgw.toml", "--json")
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["valid"] is True and out["problems"] == []
    assert out["summary"]["nat_gateways"] == 1 and out["summary"]["internet_hosts"] == 1
    assert out["summary"]["enis"] == 1 and out["summary"]["functions"] == 1


def test_validate_an_unreadable_file_names_it():
    p = run("lab", "validate", "/nonexistent/lab.toml")
    assert p.returncode == 2
    assert p.stdout.startswith("/nonexistent/lab.toml: cannot read the lab config"), p.stdout


def test_lab_up_shows_every_mistake_too(bad_file):
    p = run("lab", "up", bad_file, "--name", "hpval-bad", unprivileged=True)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "configuration: 3 mistakes" in p.stderr
    for field in BAD_FIELDS:
        assert f"  {field}: " in p.stderr, p.stderr


def test_the_committed_schema_is_lab_schemas_output():
    p = run("lab", "schema")
    assert p.returncode == 0, p.stderr
    committed = (Path(REPO) / "docs" / "lab.schema.json").read_text()
    assert p.stdout == committed, ("docs/lab.schema.json is stale: regenerate it with "
                                   "`hyperplane lab schema > docs/lab.schema.json`")
    assert json.loads(p.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_plan_lists_nodes_addresses_and_enis_without_any_capability():
    p = run("lab", "plan", "examples/natgw.toml", "--name", "pl", unprivileged=True)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert out.startswith("lab pl: 6 namespaces, VPC vpc-")
    assert "hp-pl-env-fn-a-0" in out and "hp-pl-host-db" in out and "hp-pl-ihost-web" in out
    assert "198.18.1.4" in out and "eni-" in out       # the ENI takes the first free address
    assert "NAT gateway nat-0a1b2c3d4e5f60718 in subnet-public" in out


def test_plan_json_is_the_plan():
    from hyperplane import labconfig as lc
    p = run("lab", "plan", "--name", "pj", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == json.loads(json.dumps(
        lc.resolve(lc.default(), "pj").to_dict()))


def test_plan_refuses_a_bad_name_and_a_bad_file(bad_file):
    p = run("lab", "plan", "--name", "Bad_Name")
    assert p.returncode == 2 and "invalid lab name" in p.stderr
    p = run("lab", "plan", bad_file)
    assert p.returncode == 2 and "3 mistakes" in p.stderr
