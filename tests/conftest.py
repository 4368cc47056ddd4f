"""The fixtures tests of more than one folder use. The shared helpers are the kit's (tests/kit,
importable as ``kit`` from every test: pyproject's ``pythonpath``); a folder's own fixtures are
in its conftest.

* ``run_dir`` (session, autouse): ``HYPERPLANE_RUN_DIR`` points at a session tmp dir, inherited
  by the data paths the labs start, so no test lab lives in /run/hyperplane. A module that
  needs a run dir of its own (datapath/test_control_hygiene.py: one others may traverse)
  overrides it; a test that needs an empty one sets the variable itself with monkeypatch.
* ``engine_cls`` is parametrized over the ids ``compiled`` and ``reference`` (the markupsafe /
  multidict pattern): every engine test runs against both. The compiled variant FAILS (never
  skips) when ``hyperplane.engine._engine`` cannot be imported: a missing build must not turn
  the suite green. ``-k reference`` runs only the reference variant. ``make_engine(**overrides)``
  builds an engine of that class from an :class:`EngineConfig` with the benchmark-range ENIs
  of ``kit.frames``, a fixed seed, and a clock that fails the test if it is ever called: tests
  pass ``now`` explicitly, so no test depends on real time. The engine tests use them, and so
  do the data path's (the state file's round trip, a full table).
* ``dlab`` (module): the module's default lab from the plugin's
  ``hyperplane_module_lab_factory``, as a ``kit.labs.LabView``; ``own_lab``: labs of the
  test's own from ``hyperplane_lab_factory`` (``own_lab(config_text=None, wait_active=True)``),
  as views too. Both skip, naming the capability, where labs cannot be built (the plugin's
  check), and FAIL when the compiled engine is missing: the data path needs it.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Optional

import pytest
from hypothesis import settings

import hyperplane as hp
from kit.frames import ENGINE_IDS, get_engine_cls, make_config, no_clock
from kit.labs import LabView

# CI (CI=true) draws the same Hypothesis examples on every run, so whether a change lands never
# depends on the luck of the draw; local runs draw new examples each time and replay failures
# from the example database, which is where new counterexamples are found and then fixed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def run_dir(tmp_path_factory) -> Iterator:
    """The session's run directory (``HYPERPLANE_RUN_DIR``): every lab of the tests and its
    state live under it."""
    d = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERPLANE_RUN_DIR", str(d))
        yield d


# ---- engines -------------------------------------------------------------------------------------
@pytest.fixture(params=ENGINE_IDS, ids=ENGINE_IDS)
def engine_cls(request):
    """The engine class under test: the compiled one and the pure-Python reference."""
    return get_engine_cls(request.param)


@pytest.fixture
def make_engine(engine_cls):
    """Factory: ``make_engine(port_min=..., capacity=..., enis=[...], seed=...)``."""

    def make(clock=no_clock, **overrides):
        return engine_cls(make_config(**overrides), clock=clock)

    return make


# ---- labs ----------------------------------------------------------------------------------------
def _compiled() -> None:
    assert hp.ENGINE == "compiled", \
        f"the data path needs the compiled engine: {hp.ENGINE_FALLBACK_REASON}"


@pytest.fixture(scope="module")
def dlab(run_dir, hyperplane_module_lab_factory) -> LabView:
    """The module's default lab: fn-a-0 (TAP), fn-b-0 (veth), one ENI 198.18.1.4 /
    2001:2:0:1::4, a server 198.18.1.5 / 2001:2:0:1::5; down after the module's last test."""
    _compiled()
    return LabView(hyperplane_module_lab_factory())


@pytest.fixture
def own_lab(run_dir, hyperplane_lab_factory) -> Callable[..., LabView]:
    """Factory: ``own_lab(config_text=None, wait_active=True)`` brings up a lab of this test's
    own (the default lab, or the TOML given); every one goes down when the test ends (or at
    the end of its ``with`` block)."""
    _compiled()

    def make(config_text: Optional[str] = None, wait_active: bool = True) -> LabView:
        return LabView(hyperplane_lab_factory(config_text=config_text,
                                              wait_active=wait_active))

    return make
