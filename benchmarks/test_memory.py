"""Memory budget: <= 256 bytes per tracked connection at 1,000,000 connections (compiled).

The measurement runs in a fresh process (``compare.py --memory-probe``): inside this pytest
process, memory freed by earlier tests could be reused without raising the RSS, and the RSS
delta would read low. The probe opens 1,000,000 TCP connections (SYN batches of 256 over 16
ENIs of 65,000 ports) and reports ``memory_bytes()`` (what the C core allocated: table buckets,
entry slots used, port pools) and the RSS delta around the engine's construction and fill
(/proc/self/statm). The numbers go to ``record_property`` and stdout (``-s``). This is a
capacity assertion; nothing here asserts a timing.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

N = 1_000_000
BUDGET = 256          # bytes per tracked connection (the target)
COMPARE = Path(__file__).resolve().parent / "compare.py"


@pytest.mark.memory
def test_memory_per_connection_1m(compiled_cls, record_property, capsys):
    p = subprocess.run([sys.executable, str(COMPARE), "--memory-probe", str(N)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"memory probe failed:\n{p.stderr[-4000:]}"
    m = json.loads(p.stdout.strip().splitlines()[-1])
    assert m["connections"] == N and m["created"] == N, m

    for k in ("memory_bytes", "memory_bytes_per_conn", "rss_delta", "rss_bytes_per_conn",
              "insert_seconds"):
        record_property(k, m[k])
    with capsys.disabled():
        print(f"\n[memory] compiled engine, {N:,} TCP connections over {m['enis']} ENIs: "
              f"memory_bytes() {m['memory_bytes']:,} B = {m['memory_bytes_per_conn']:.1f} "
              f"B/connection; RSS delta {m['rss_delta']:,} B = {m['rss_bytes_per_conn']:.1f} "
              f"B/connection")

    assert m["memory_bytes_per_conn"] <= BUDGET, (
        f"memory_bytes(): {m['memory_bytes_per_conn']:.1f} B per connection > {BUDGET}")
    assert m["rss_bytes_per_conn"] <= BUDGET, (
        f"RSS delta: {m['rss_bytes_per_conn']:.1f} B per connection > {BUDGET}")
