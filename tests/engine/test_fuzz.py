"""Coverage-guided fuzzing of the C parser, translator and frame input (libFuzzer), bounded.

``fuzz/build.sh`` builds two libFuzzer targets with ASan and UBSan (every report fatal):
``fuzz_translate`` (the engine under a stream of packets and control operations, invariants
checked after each: see fuzz/fuzz_translate.c) and ``fuzz_frame`` (the data path's Ethernet /
ARP / NDP input in front of it). Each runs here for a bounded time on a copy of the committed
seed corpus, and must end with exit 0, no crash/leak/timeout/OOM artifact, and a real number of
inputs executed (a count, read from libFuzzer's final statistics: not a timing).

A mutant engine (a copy of csrc/ with one deliberate bug) shows that the harness's invariants
catch a broken translation from the seeds alone: the fuzz run is not green because it checks
nothing.

Without clang and its libFuzzer runtime the tests skip locally and FAIL under CI=true, where
.ci/run installs them (Debian: clang-14 libclang-rt-14-dev). docs/robustness.md says how to run
the fuzzers for longer.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from kit import REPO

FUZZ = os.path.join(REPO, "fuzz")
BUILD = os.path.join(FUZZ, "build.sh")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: seconds per target: long enough for hundreds of thousands of inputs on one core
RUN_SECONDS = {"fuzz_translate": 45, "fuzz_frame": 20}
#: inputs a run must at least execute: far below what a slow machine does in that time, far
#: above what a harness that bails out early or hangs would reach
MIN_EXECS = 20000


def _need_clang() -> None:
    probe = subprocess.run([BUILD, "--probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        why = f"no clang with libFuzzer: {probe.stderr.strip()}"
        if IN_CI:
            pytest.fail(f"{why} (.ci/run installs clang-14 libclang-rt-14-dev in CI)")
        pytest.skip(why)


def _build(out: str, csrc: str = None) -> None:
    env = dict(os.environ)
    if csrc:
        env["HYPERPLANE_CSRC"] = csrc
    r = subprocess.run([BUILD, out], capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"fuzz/build.sh failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def fuzzers(tmp_path_factory):
    _need_clang()
    out = str(tmp_path_factory.mktemp("fuzzers"))
    _build(out)
    return out


def _stats(output: str) -> dict:
    return {k: int(v) for k, v in re.findall(r"^stat::(\w+):\s+(\d+)", output, re.M)}


def test_seed_corpus_is_what_make_corpus_writes():
    """The committed seeds are exactly the generator's output (no stale or hand-edited file)."""
    r = subprocess.run([sys.executable, os.path.join(FUZZ, "make_corpus.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for target in ("translate", "frame"):
        assert len(os.listdir(os.path.join(FUZZ, "corpus", target))) >= 6


@pytest.mark.parametrize("target", ["fuzz_translate", "fuzz_frame"])
def test_bounded_fuzz_run_finds_nothing(fuzzers, tmp_path, target):
    corpus = tmp_path / "corpus"
    shutil.copytree(os.path.join(FUZZ, "corpus", target.replace("fuzz_", "")), corpus)
    seeds = len(os.listdir(corpus))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [os.path.join(fuzzers, target), f"-max_total_time={RUN_SECONDS[target]}",
           "-timeout=5", "-rss_limit_mb=1024", "-print_final_stats=1",
           f"-artifact_prefix={artifacts}/", str(corpus)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path,
                       timeout=RUN_SECONDS[target] + 120)
    tail = "\n".join(r.stderr.splitlines()[-40:])
    assert r.returncode == 0, f"{target} exited {r.returncode}:\n{tail}"
    found = sorted(os.listdir(artifacts))
    assert not found, f"{target} left {found}:\n{tail}"
    for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert bad not in r.stderr, tail
    st = _stats(r.stderr)
    assert st.get("number_of_executed_units", 0) > MIN_EXECS, tail
    # the corpus grew: the fuzzer found inputs that reach new code, so it is exploring
    assert len(os.listdir(corpus)) > seeds, tail
    done = re.findall(r"DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", r.stderr)
    print(f"{target}: {st['number_of_executed_units']} inputs, "
          f"{st.get('average_exec_per_sec')} exec/s, cov/ft/corpus {done[-1] if done else '?'}, "
          f"corpus {seeds} -> {len(os.listdir(corpus))} files")


def test_the_invariants_catch_a_broken_translation(tmp_path):
    """A copy of csrc/ whose manip decrements the TTL twice: one seed alone makes the harness
    trap in its translation check, so a silent NAT bug cannot pass the fuzz run."""
    _need_clang()
    csrc = tmp_path / "csrc"
    shutil.copytree(os.path.join(REPO, "csrc"), csrc)
    engine_c = csrc / "hp_engine.c"
    text = engine_c.read_text()
    needle = "        b[8]--;\n    } else {\n        b[7]--; /* hop limit"
    assert text.count(needle) == 1, "hp_engine.c manip changed: update the mutation"
    engine_c.write_text(text.replace(needle, "        b[8] -= 2;\n    } else {\n"
                                             "        b[7]--; /* hop limit"))
    out = tmp_path / "out"
    _build(str(out), csrc=str(csrc))
    seed = os.path.join(FUZZ, "corpus", "translate", "tcp4_session")
    r = subprocess.run([str(out / "fuzz_translate"), f"-artifact_prefix={tmp_path}/", seed],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode != 0, r.stderr[-2000:]
    # __builtin_trap() in an invariant check, not some unrelated failure
    assert "deadly signal" in r.stderr and " in check_manip " in r.stderr, r.stderr[-2000:]
