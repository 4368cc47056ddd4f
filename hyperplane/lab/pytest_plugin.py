"""The pytest plugin (entry point ``pytest11: hyperplane``): labs as fixtures in your own tests.

    def test_reaches_the_server(hyperplane_lab):
        r = hyperplane_lab.exec("fn-a-0", ["ping", "-c1", "198.18.1.5"], capture_output=True)
        assert r.returncode == 0

    def test_two_labs(hyperplane_lab_factory):
        a = hyperplane_lab_factory()                        # the embedded default lab
        b = hyperplane_lab_factory(config="lab.toml")      # or config_text="...TOML..."

* ``hyperplane_lab``: the embedded default lab, up for one test and always down afterwards;
* ``hyperplane_lab_factory(config=None, config_text=None, name=None, wait_active=True)``:
  makes labs, every one of which is taken down when the test ends, pass or fail
  (``wait_active=False``: returns before the functions' ENIs exist, while they are Pending);
* ``hyperplane_module_lab_factory``: the same, but its labs live until the last test of the
  module has run (a lab takes a few seconds to build: share one among a module's tests).

Each lab gets a unique name (``pt-`` and six hex digits), so tests never meet each other's labs
nor one somebody runs by hand, and ``hyperplane lab list`` shows them while they run. Without
CAP_NET_ADMIN (and the rest a lab needs: CAP_SYS_ADMIN, /dev/net/tun) the fixtures skip,
saying which capability is missing.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional

import pytest
from pyroute2 import netns as pr_netns

from hyperplane import netns
from hyperplane.lab.api import Lab, unique_name

#: The prefix of the names the fixtures give their labs.
NAME_PREFIX = "pt"


class LabFactory:
    """Brings labs up on request and takes every one of them down at :meth:`close`."""

    def __init__(self) -> None:
        self.labs: List[Lab] = []

    def __call__(self, config: Optional[str] = None, config_text: Optional[str] = None,
                 name: Optional[str] = None, wait_active: bool = True) -> Lab:
        lab = Lab.up(None if config is None else str(config), name or unique_name(NAME_PREFIX),
                     config_text=config_text, wait_active=wait_active)
        self.labs.append(lab)
        return lab

    def close(self) -> None:
        """Take every lab down, the last made first; take the others down all the same when one
        fails. A namespace of a lab made here that is still there afterwards (``hp-NAME-*``:
        the name is this factory's own) is removed and reported. Then fail the test with what
        went wrong, if anything did."""
        errors = []
        while self.labs:
            lab = self.labs.pop()
            try:
                lab.down()
            except Exception as e:
                errors.append(f"lab {lab.name}: {e}")
            left = [ns for ns in netns.listall() if ns.startswith(f"hp-{lab.name}-")]
            for ns in left:
                try:
                    pr_netns.remove(ns)
                except OSError as e:
                    errors.append(f"lab {lab.name}: namespace {ns}: {e}")
            if left:
                errors.append(f"lab {lab.name}: namespace(s) {', '.join(left)} were left "
                              "after it went down (removed now)")
        if errors:
            pytest.fail("tearing down hyperplane labs failed: " + "; ".join(errors),
                        pytrace=False)


def _factory() -> Iterator[Callable[..., Lab]]:
    why = netns.privilege_problem()
    if why:
        pytest.skip(f"a hyperplane lab {why}")
    factory = LabFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def hyperplane_lab_factory() -> Iterator[Callable[..., Lab]]:
    """``factory(config=None, config_text=None, name=None, wait_active=True) ->
    hyperplane.Lab``: each call brings a lab up (the embedded default lab unless a config file
    or TOML text is given; ``wait_active`` as for ``Lab.up``); all of them go down when the
    test ends."""
    yield from _factory()


@pytest.fixture(scope="module")
def hyperplane_module_lab_factory() -> Iterator[Callable[..., Lab]]:
    """:func:`hyperplane_lab_factory` whose labs go down after the module's last test."""
    yield from _factory()


@pytest.fixture
def hyperplane_lab(hyperplane_lab_factory) -> Lab:
    """The embedded default lab (fn-a-0 on a TAP, fn-b-0 on a veth, one ENI, a server at
    198.18.1.5 / 2001:2:0:1::5), up for this test and down afterwards."""
    return hyperplane_lab_factory()
