"""What a runtime process is and the files it runs from (hyperplane.workloads.runtimes): the
deployed copy of a function's code, the custom runtime's bootstrap checks, the Python
interpreter the unprivileged user can run."""
from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile

import pytest

from hyperplane.workloads import runtimes
from hyperplane.workloads.runtimes import EntrypointError, install_code, runtime_command


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_code_is_copied_readable_by_everyone_and_executables_stay_executable(tmp_path):
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "bootstrap").write_text("#!/bin/sh\n")
    os.chmod(src / "bootstrap", 0o700)
    (src / "lib" / "m.py").write_text("x = 1\n")
    os.chmod(src / "lib" / "m.py", 0o600)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    os.symlink(src / "nowhere", src / "dangling")
    dest = tmp_path / "task"
    install_code(str(src), str(dest))
    assert mode(dest / "bootstrap") == 0o755 and mode(dest / "lib" / "m.py") == 0o644
    assert mode(dest / "lib") == 0o755 and mode(dest) == 0o755
    assert not (dest / "__pycache__").exists() and not (dest / "dangling").exists()
    (src / "lib" / "m.py").write_text("x = 2\n")          # a deployed copy: edits do not leak
    assert (dest / "lib" / "m.py").read_text() == "x = 1\n"


def test_no_code_is_the_consoles_hello_world(tmp_path):
    install_code(None, str(tmp_path / "task"))
    assert "Hello from Lambda!" in (tmp_path / "task" / "lambda_function.py").read_text()


def test_code_over_lambdas_250_mb_quota_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runtimes, "MAX_CODE_BYTES", 10)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big").write_bytes(b"x" * 11)
    with pytest.raises(EntrypointError, match="Unzipped size must be smaller than 10 bytes"):
        install_code(str(tmp_path / "src"), str(tmp_path / "task"))


def test_a_custom_runtime_needs_an_executable_bootstrap(tmp_path):
    with pytest.raises(EntrypointError, match="Couldn't find valid bootstrap"):
        runtime_command("provided.al2023", "function.handler", str(tmp_path), str(tmp_path))
    (tmp_path / "bootstrap").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "bootstrap", 0o644)
    with pytest.raises(EntrypointError, match="permission denied"):
        runtime_command("provided.al2023", "function.handler", str(tmp_path), str(tmp_path))
    os.chmod(tmp_path / "bootstrap", 0o755)
    argv, note = runtime_command("provided.al2", "function.handler", str(tmp_path),
                                 str(tmp_path))
    assert argv == [str(tmp_path / "bootstrap")] and note is None


def test_python_runs_on_an_interpreter_everyone_may_run(tmp_path):
    version = f"python3.{sys.version_info.minor}"
    argv, note = runtime_command(version, "app.handler", str(tmp_path), "/rt")
    assert runtimes.world_runnable(argv[0])
    assert argv[1:] in (["/rt/pyruntime.py"], ["-m", "awslambdaric", "app.handler"])
    assert note is None, "this machine has its own python3.N for the project's version"
    argv, note = runtime_command("python3.99", "app.handler", str(tmp_path), "/rt")
    assert note and "python3.99 is not installed here" in note


def test_world_runnable_needs_every_folder_searchable():
    top = tempfile.mkdtemp(prefix="hp-test-runnable-")      # in /tmp, which everyone searches
    try:
        os.chmod(top, 0o755)
        d = os.path.join(top, "private")
        os.mkdir(d)
        exe = os.path.join(d, "x")
        with open(exe, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(exe, 0o755)
        os.chmod(d, 0o700)
        assert not runtimes.world_runnable(exe)
        os.chmod(d, 0o755)
        assert runtimes.world_runnable(exe)
        os.chmod(exe, 0o750)
        assert not runtimes.world_runnable(exe)
    finally:
        shutil.rmtree(top)
