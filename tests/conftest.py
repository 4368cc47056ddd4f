"""One fixture, both engines (the markupsafe / multidict pattern).

``engine_cls`` is parametrized over the ids ``compiled`` and ``reference``; every engine test
runs against both. The compiled variant FAILS (never skips) when ``hyperplane.engine._engine`` cannot be
imported: a missing build must not turn the suite green. ``-k reference`` runs only the
reference variant.

``make_engine(**overrides)`` builds an engine of that class from an :class:`EngineConfig` with
the benchmark-range ENIs of ``hp_testlib``, a fixed seed, and a clock that fails the test if it
is ever called: tests pass ``now`` explicitly, so no test depends on real time.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hp_testlib import ENGINE_IDS, get_engine_cls, make_config, no_clock  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI (CI=true) draws the same Hypothesis examples on every run, so whether a change lands never
# depends on the luck of the draw; local runs draw new examples each time and replay failures
# from the example database, which is where new counterexamples are found and then fixed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory of the test module's own (``HYPERPLANE_RUN_DIR``, inherited by the
    subprocesses a lab starts), for the lab tests: every lab and its state live under it. A
    module with other needs (a function-scoped one, a root-only one) defines its own."""
    d = tmp_path_factory.mktemp("labs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERPLANE_RUN_DIR", str(d))
        yield d
