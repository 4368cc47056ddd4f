"""Engine selection at import time (msgpack's pattern): HYPERPLANE_ENGINE forces the reference,
unset means the compiled engine, a missing build falls back loudly, a bad value is an error.
Each case runs in a fresh interpreter because the choice is made once, on import."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kit import REPO
from kit.frames import compiled_module

# Make the build look missing: a None entry in sys.modules makes "import hyperplane.engine._engine"
# raise ImportError, exactly like an absent extension module.
HIDE_BUILD = "import sys; sys.modules['hyperplane.engine._engine'] = None; "
SHOW = ("import warnings; warnings.simplefilter('always'); import hyperplane; "
        "print(hyperplane.ENGINE, hyperplane.Engine.__module__, "
        "hyperplane.ENGINE_FALLBACK_REASON is None)")


def run(code, engine=None):
    env = {k: v for k, v in os.environ.items() if k != "HYPERPLANE_ENGINE"}
    if engine is not None:
        env["HYPERPLANE_ENGINE"] = engine
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value", ["reference", "REFERENCE", " reference "])
def test_env_var_forces_reference(value):
    p = run(SHOW, value)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["reference", "hyperplane.engine.reference.engine", "True"]
    assert p.stderr == ""


def test_unset_means_compiled():
    compiled_module()   # fails loudly with the build command when not built
    p = run(SHOW)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["compiled", "hyperplane.engine._engine", "True"]
    assert p.stderr == ""


def test_explicit_compiled():
    compiled_module()
    p = run(SHOW, "compiled")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "compiled"


@pytest.mark.parametrize("value", ["fast", "c", "reference2"])
def test_invalid_value_is_an_import_error(value):
    p = run("import hyperplane", value)
    assert p.returncode != 0
    assert "ImportError" in p.stderr
    assert "HYPERPLANE_ENGINE" in p.stderr and value in p.stderr
    assert "'compiled' or 'reference'" in p.stderr


def test_missing_build_falls_back_loudly():
    p = run(HIDE_BUILD + SHOW)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["reference", "hyperplane.engine.reference.engine", "False"]
    assert "compiled engine is NOT built" in p.stderr
    assert "pip install -e ." in p.stderr
    assert "RuntimeWarning" in p.stderr


def test_missing_build_with_compiled_forced_is_an_error():
    p = run(HIDE_BUILD + "import hyperplane", "compiled")
    assert p.returncode != 0
    assert "ImportError" in p.stderr
    assert "pip install -e ." in p.stderr
