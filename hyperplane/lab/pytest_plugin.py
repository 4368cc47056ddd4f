"""The pytest plugin (entry point ``pytest11: hyperplane``): labs as fixtures in your own tests.

    def test_reaches_the_server(hyperplane_lab):
        r = hyperplane_lab.exec("fn-a-0", ["ping", "-c1", "198.18.1.5"], capture_output=True)
        assert r.returncode == 0

    def test_two_labs(hyperplane_lab_factory):
        a = hyperplane_lab_factory()                        # the embedded default lab
        b = hyperplane_lab_factory(config="lab.toml")      # or config_text="...TOML..."

``hyperplane_lab`` is the embedded default lab, up for one test and always down afterwards;
``hyperplane_lab_factory(config=None, config_text=None, name=None)`` makes labs, every one of
which is taken down when the test ends, pass or fail. Each lab gets a unique name, and its
state lives under a run directory of the test's own (``HYPERPLANE_RUN_DIR``), so tests never
meet each other's labs nor a lab someone runs by hand. Without CAP_NET_ADMIN (and the rest a
lab needs: CAP_SYS_ADMIN, /dev/net/tun) both fixtures skip, saying which capability is missing.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional

import pytest

from hyperplane import netns
from hyperplane.lab.api import Lab, unique_name

#: The prefix of the names the fixtures give their labs (``pt-3f9a1c``).
NAME_PREFIX = "pt"


def _skip_without_privilege() -> None:
    why = netns.privilege_problem()
    if why:
        pytest.skip(f"a hyperplane lab {why}")


@pytest.fixture
def hyperplane_lab_factory(tmp_path_factory, monkeypatch) -> Iterator[Callable[..., Lab]]:
    """``factory(config=None, config_text=None, name=None) -> hyperplane.Lab``: each call
    brings a lab up (the embedded default lab unless a config file or TOML text is given); all
    of them go down when the test ends."""
    _skip_without_privilege()
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path_factory.mktemp("hyperplane-labs")))
    made: List[Lab] = []

    def factory(config: Optional[str] = None, config_text: Optional[str] = None,
                name: Optional[str] = None) -> Lab:
        lab = Lab.up(None if config is None else str(config), name or unique_name(NAME_PREFIX),
                     config_text=config_text)
        made.append(lab)
        return lab

    try:
        yield factory
    finally:
        errors = []
        for lab in reversed(made):
            try:
                lab.down()
            except Exception as e:   # take the others down all the same, then report
                errors.append(f"lab {lab.name}: {e}")
        if errors:
            pytest.fail("tearing down hyperplane labs failed: " + "; ".join(errors),
                        pytrace=False)


@pytest.fixture
def hyperplane_lab(hyperplane_lab_factory) -> Lab:
    """The embedded default lab (fn-a-0 on a TAP, fn-b-0 on a veth, one ENI, a server at
    198.18.1.5 / 2001:2:0:1::5), up for this test and down afterwards."""
    return hyperplane_lab_factory()
