"""The exporter process on its own (``python -m hyperplane.observe.exporter``), without a lab's
namespaces: a lab directory with a state file and no data path. It writes the URL it serves
(the real port for port 0), answers with ``hyperplane_up 0`` while no data path answers, exits
when the lab's state file goes away, and refuses a listen address that is not loopback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hyperplane import paths
from hyperplane.observe import exporter, promql
from kit import REPO
from kit.labs import wait_until

NAME = "texporter"


@pytest.fixture
def lab_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    os.makedirs(paths.lab_dir(NAME))
    with open(paths.state_path(NAME), "w") as f:
        f.write("{}")
    return tmp_path


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hyperplane.observe.exporter", *args],
                            cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_serves_up_0_without_a_data_path_and_exits_with_its_lab(lab_dir):
    p = start("--name", NAME, "--listen", "127.0.0.1:0")
    try:
        url = wait_until(lambda: exporter.read_url(NAME) or p.poll(), 20,
                         "the exporter to write its URL")
        assert isinstance(url, str), p.stderr.read()
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        text = exporter.scrape(url)
        assert promql.served_names(text) == {"hyperplane_up"}
        assert "hyperplane_up 0.0" in text
        os.unlink(paths.state_path(NAME))          # the lab is gone: so is its exporter
        assert p.wait(timeout=20) == 0
        assert "is gone" in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def test_refuses_an_address_that_is_not_loopback(lab_dir):
    p = start("--name", NAME, "--listen", "0.0.0.0:9469")
    out, err = p.communicate(timeout=20)
    assert p.returncode == 2 and "not a loopback address" in err and "Traceback" not in err
    assert exporter.read_url(NAME) is None
