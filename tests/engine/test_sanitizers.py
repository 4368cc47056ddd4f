"""The engine and data-path tests again, against an ASan + UBSan build of the extension.

A copy of the tree (without .git, build/ and the installed .so) is built with
``HYPERPLANE_SANITIZE=1`` (setup.py adds ``-fsanitize=address,undefined``), then a subset of
the suite runs in a subprocess with the sanitizer runtimes preloaded into Python (the
interpreter itself is not instrumented, so the runtimes must come first). Every report is
fatal: ASan aborts on the first error, UBSan halts on the first ``runtime error:``; leak
detection is off (CPython keeps memory to exit on purpose). The run must pass and print no
report.

Two checks keep the run honest: the copy's extension cannot even be imported without the
runtimes (it really is instrumented), and the tests import it from the copy, not from the
working tree.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from kit import REPO


#: the engine, parser, data path and malformed-input tests: the code with pointer arithmetic
SUBSET = ["tests/engine/test_parse.py", "tests/engine/test_nat.py",
          "tests/engine/test_states.py", "tests/engine/test_events.py",
          "tests/engine/test_differential.py",
          "tests/datapath/test_datapath_unit.py", "tests/datapath/test_dp_vpc_unit.py",
          "tests/engine/test_malformed.py", "tests/datapath/test_malformed_frames.py",
          "tests/engine/test_icmp.py", "tests/engine/test_source_limit.py",
          "tests/engine/test_sharded.py"]
REPORTS = ("AddressSanitizer", "runtime error:", "LeakSanitizer")


def _runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                          text=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.fail(f"gcc has no {name} (Debian: apt-get install libasan8 libubsan1, which "
                    "gcc-12 pulls in); the sanitizer build needs it")
    return path


@pytest.fixture(scope="module")
def sanitized_tree(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the extension (and the sanitizer build)")
    dst = str(tmp_path_factory.mktemp("sanitized"))
    tar = subprocess.run(
        f"tar -C {REPO} --exclude=./.git --exclude=./build --exclude=./fuzz/out "
        f"--exclude='*.so' --exclude='*/__pycache__' "
        f"--exclude=./.hypothesis -cf - . | tar -C {dst} -xf -",
        shell=True, capture_output=True, text=True)
    assert tar.returncode == 0, tar.stderr
    env = dict(os.environ, HYPERPLANE_SANITIZE="1")
    b = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-j", "2"],
                       cwd=dst, env=env, capture_output=True, text=True)
    assert b.returncode == 0, f"sanitizer build failed:\n{b.stdout[-3000:]}\n{b.stderr[-3000:]}"
    return dst


def _env(tree: str, preload: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=tree,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = f"{_runtime('libasan.so')} {_runtime('libubsan.so')}"
    return env


def test_the_copy_is_instrumented_and_is_what_the_tests_import(sanitized_tree):
    code = "import hyperplane.engine._engine as m; print(m.__file__)"
    bare = subprocess.run([sys.executable, "-c", code], cwd=sanitized_tree,
                          env=_env(sanitized_tree, preload=False), capture_output=True,
                          text=True)
    assert bare.returncode != 0 and "__asan" in bare.stderr, bare.stderr[-2000:]
    ok = subprocess.run([sys.executable, "-c", code], cwd=sanitized_tree,
                        env=_env(sanitized_tree, preload=True), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip().startswith(os.path.join(sanitized_tree, "hyperplane")), ok.stdout


def test_suite_subset_passes_under_asan_and_ubsan(sanitized_tree):
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET]
    r = subprocess.run(cmd, cwd=sanitized_tree, env=_env(sanitized_tree, preload=True),
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    tail = out[-4000:]
    for word in REPORTS:
        assert word not in out, f"sanitizer report ({word}):\n{tail}"
    assert r.returncode == 0, f"the subset failed under ASan/UBSan (rc {r.returncode}):\n{tail}"
    assert " passed" in r.stdout and " failed" not in r.stdout, tail
