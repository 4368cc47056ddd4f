"""``hyperplane demo`` end to end: it brings up a lab of its own, sends TCP and UDP through it
from both environments over IPv4 and IPv6 (every transfer checked), shows the connection
table and an unsolicited packet dropped, and takes the lab down, leaving nothing behind.

Needs CAP_NET_ADMIN/CAP_SYS_ADMIN and /dev/net/tun (root; skipped otherwise) and the compiled
engine. The demo names its lab itself (``demo-XXXXXX``, under the session's run dir); a lab it
left is torn down at the end (kit.labs.destroy).
"""
from __future__ import annotations

import os
import re

import pytest

from hyperplane import netns, paths
from kit.labs import cli_run, destroy, ours

_problem = netns.privilege_problem()


# ---- the demo -----------------------------------------------------------------------------------
@pytest.mark.skipif(_problem is not None, reason=f"the demo's lab {_problem}")
def test_demo_end_to_end(run_dir):
    r = cli_run("demo", timeout=120)
    out = r.stdout
    m = re.search(r"lab up --name (demo-[0-9a-f]+)", out)
    name = m.group(1) if m else None
    try:
        assert r.returncode == 0, f"demo exit {r.returncode}\n{out}\n{r.stderr}"
        assert name, out
        assert out.count("sha256 matches") == 4, out
        assert out.count("echo received") == 4, out
        assert "ESTABLISHED" in out
        assert "unsolicited" in out
        assert out.count("Hello from Lambda!") == 4, out    # two functions, cold then warm
        assert out.count("Init Duration") == 2, out
        assert "demo done" in out
        left = ours(name)
        assert not left, f"the demo left namespaces behind: {left}"
        assert not os.path.exists(paths.lab_dir(name))
    finally:
        if name:
            destroy(name)
