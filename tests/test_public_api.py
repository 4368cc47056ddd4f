"""The public API's promises that need no lab (no root): ``import hyperplane`` stays light, and
errors are HyperplaneError with the command line's words and exit status. The API on real labs
is tests/lab/test_lab_api.py."""
from __future__ import annotations

import subprocess
import sys

import pytest

import hyperplane
from hyperplane import errors, netns, paths, topology
from hyperplane.lab.api import Lab, unique_name


def namespaces_of(name: str):
    return [ns for ns in netns.listall() if ns.startswith(f"hp-{name}-")]


def test_import_hyperplane_does_not_load_the_lab_layers():
    code = ("import sys, hyperplane; assert 'pyroute2' not in sys.modules, 'pyroute2'; "
            "assert 'hyperplane.lab.api' not in sys.modules; "
            "assert hyperplane.Lab.__module__ == 'hyperplane.lab.api'; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_attach_to_no_such_lab_is_not_found_with_the_command_line_words():
    name = unique_name("nolab")
    with pytest.raises(hyperplane.HyperplaneError) as info:
        Lab.attach(name)
    assert info.value.code == errors.EXIT_NOT_FOUND
    assert str(info.value) == (f"no lab named {name!r}; start one with `hyperplane lab up "
                               f"--name {name}`")


def test_a_bad_config_is_a_configuration_error_and_builds_nothing():
    name = unique_name("bad")
    with pytest.raises(hyperplane.HyperplaneError) as info:
        Lab.up(config_text='[vpc]\ncidr = "10.0.0.0/16"\n', name=name)
    assert info.value.code == errors.EXIT_USAGE
    # every mistake at once: the bad block, and no function nor host
    lines = str(info.value).splitlines()
    assert lines[0] == "configuration: 3 mistakes, fix them all:", str(info.value)
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["vpc.cidr", "functions",
                                                                  "hosts"]
    assert topology.load_state(name) is None and not namespaces_of(name)


def test_unique_names_are_valid_lab_names_and_differ():
    names = {unique_name() for _ in range(50)}
    assert len(names) == 50
    for n in names:
        assert paths.validate_lab_name(n) == n
