"""hyperplane as a user gets it: a plain ``pip install .`` (no editable install, no source tree
on the path), its pytest plugin in a test suite of the user's own in an empty folder, and
``hyperplane lab up`` run from inside a source checkout whose extension is not built (the data
path child must import the installed package, not the ``hyperplane/`` in the current
directory).

The install goes into a virtual environment of this module's own that sees this
environment's packages (scapy, pyroute2, pytest, Cython, setuptools) but gets hyperplane
itself from ``pip install --no-deps --no-build-isolation`` of this checkout: the extension is
compiled for it, which takes a minute.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hyperplane import netns
from hyperplane.lab.api import unique_name

_problem = netns.privilege_problem()
pytestmark = pytest.mark.skipif(_problem is not None, reason=f"the labs here {_problem}")

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900

USER_TESTS = textwrap.dedent('''
    """A user's own tests, with nothing of hyperplane's source around."""
    import subprocess
    import sys
    import time

    import hyperplane
    from hyperplane import labconfig


    def namespaces_of(name):
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [l.split()[0] for l in out.splitlines() if l.startswith(f"hp-{name}-")]


    def test_http_from_an_environment_leaves_with_the_eni_address(hyperplane_lab):
        lab = hyperplane_lab
        server = lab.nodes["server"].address(4)
        lab.popen("server", [sys.executable, "-m", "http.server", "8080", "--bind", server],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        get = ("import urllib.request; "
               f"print(urllib.request.urlopen('http://{server}:8080/', timeout=3).status)")
        for _ in range(100):
            r = lab.exec("fn-a-0", [sys.executable, "-c", get], capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        assert r.stdout.strip() == "200", r.stderr
        eni = lab.enis()[0]["ipv4"]
        entries = lab.conntrack(proto="tcp", dport=8080)
        assert entries and entries[0]["reply"]["dst"] == eni
        assert lab.stats()["totals"]["connections_created"] >= 1


    def test_a_second_lab_in_a_with_block_leaves_no_namespace(hyperplane_lab):
        with hyperplane.Lab.up() as second:
            name = second.name
            assert name != hyperplane_lab.name and namespaces_of(name)
        assert namespaces_of(name) == []


    def test_the_factory_makes_labs_from_toml_text(hyperplane_lab_factory):
        lab = hyperplane_lab_factory(config_text=labconfig.default_text())
        assert set(lab.nodes) >= {"fn-a-0", "fn-b-0", "server"}
''')


def user_env():
    """Our environment without PYTHONPATH: only what the venv installed is importable."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with hyperplane installed from this checkout by a plain ``pip install``."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    src = tmp_path_factory.mktemp("src")          # a copy: the build writes into its tree
    shutil.copytree(REPO, src, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", "build", "*.so", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
        "fuzz"))
    p = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", str(src)], capture_output=True, text=True,
                       timeout=INSTALL_TIMEOUT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import hyperplane; print(hyperplane.__file__, "
                            "hyperplane.ENGINE)"], cwd=venv, capture_output=True, text=True,
                           timeout=60)
    assert where.stdout.startswith(str(venv)) and where.stdout.split()[1] == "compiled", \
        where.stdout + where.stderr
    return venv


def test_a_users_test_suite_passes_with_the_plugin_of_a_plain_install(installed, tmp_path):
    (tmp_path / "test_mine.py").write_text(USER_TESTS)
    p = subprocess.run([str(installed / "bin" / "python"), "-m", "pytest", "-q",
                        "-p", "no:cacheprovider", "test_mine.py"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600,
                       env=user_env())
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "3 passed" in p.stdout, p.stdout[-2000:]


def test_without_cap_net_admin_the_fixtures_skip_naming_it(installed, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop CAP_NET_ADMIN for this test")
    (tmp_path / "test_mine.py").write_text(USER_TESTS)
    p = subprocess.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                        str(installed / "bin" / "python"), "-m", "pytest", "-q", "-rs",
                        "-p", "no:cacheprovider", "test_mine.py"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env=user_env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "3 skipped" in p.stdout and "needs CAP_NET_ADMIN" in p.stdout, p.stdout[-2000:]


def test_lab_up_inside_an_unbuilt_source_checkout_runs_the_installed_package(installed,
                                                                                 tmp_path):
    """The held-out failure: after a plain install, `hyperplane lab up` from inside the source
    checkout started `python -m hyperplane` on the checkout's unbuilt package and died with
    "No module named 'hyperplane.engine._engine'"."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "hyperplane", checkout / "hyperplane",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    name = unique_name("src")
    env = {**user_env(), "HYPERPLANE_RUN_DIR": str(tmp_path / "run")}
    hp = str(installed / "bin" / "hyperplane")
    try:
        up = subprocess.run([hp, "lab", "up", "--name", name], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        status = subprocess.run([hp, "lab", "status", "--name", name], cwd=checkout, env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "data path running" in status.stdout, status.stdout
    finally:
        down = subprocess.run([hp, "lab", "down", "--name", name], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not [ns for ns in netns.listall() if ns.startswith(f"hp-{name}-")]
