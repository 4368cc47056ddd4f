"""The lab lifecycle's tests (``lab up``/``down``/``restart`` through the library and the
command line, VPC labs, a failed ``lab up`` rolled back): every one needs network namespaces,
so the whole folder is skipped, naming the capability, where labs cannot be built. Their labs
are the root conftest's ``dlab``/``own_lab``, or brought up by hand where the lifecycle itself
is under test (kit.labs.lab_name, kit.labs.destroy)."""
from __future__ import annotations

import pytest

from hyperplane import netns


@pytest.fixture(scope="module", autouse=True)
def _needs_namespaces() -> None:
    why = netns.privilege_problem()
    if why:
        pytest.skip(f"a lab {why}")
