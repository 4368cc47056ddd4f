"""What the bench tests share: whether OVS mode can run here (under CI=true it must: a missing
Open vSwitch fails the test instead of skipping OVS), and the processes a run left behind."""
from __future__ import annotations

import os
from typing import Callable, List

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def ovs_installed() -> bool:
    """True when OVS mode can run; False locally without Open vSwitch; a failure under CI,
    which installs it (.ci/run)."""
    from hyperplane.bench import ovs

    why = ovs.missing()
    if why and IN_CI:
        pytest.fail(f"CI must run the bench's OVS mode: {why} (.ci/run installs it)")
    return not why


@pytest.fixture
def processes_naming() -> Callable[[str], List[int]]:
    """A function: the running processes whose command line mentions a text (a run's
    directory), so a test can tell that no daemon of its run survived."""
    def find(text: str) -> List[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if text.encode() in f.read():
                            found.append(int(entry))
                except OSError:
                    continue
        return found
    return find
