"""Fake bench figures for the bench's unit tests: a machine and two modes' per-repeat
figures (tests/bench/test_bench.py; test_bench_modes.py adds OVS and the TAP column), and the
bench lab with a [conntrack] section."""
import os

from hyperplane import labconfig
from kit import REPO

MACHINE = {"cpu": "Test CPU", "nproc": 2, "kernel": "6.1", "python": "3.11",
           "hyperplane": "0.1.0", "engine": "compiled", "hostname": "h", "date": "2026-01-01"}
FIGURES = {
    "hyperplane": {"tcp4-1": [10.0, 12.0, 11.0], "tcp6-1": [9.0, 9.5, 8.0],
                   "udp64": [400_000.0, 500_000.0, 450_000.0],
                   "udp64-overload": [420_000.0, 430_000.0, 440_000.0],
                   "conn": [20_000.0, 22_000.0, 21_000.0],
                   "rr-p50": [30.0, 40.0, 35.0], "rr-p99": [80.0, 90.0, 100.0]},
    "kernel": {"tcp4-1": [10.0, 11.0, 10.5], "tcp6-1": [10.0, 10.0, 10.0],
               "udp64": [300_000.0, 300_000.0, 300_000.0],
               "udp64-overload": [150_000.0, 150_000.0, 150_000.0],
               "conn": [25_000.0, 25_000.0, 25_000.0],
               "rr-p50": [50.0, 50.0, 50.0], "rr-p99": [100.0, 100.0, 100.0]},
}

CT_TIMEOUTS = {"tcp_timeout_established": 7440, "udp_timeout": 45, "udp_timeout_stream": 90}


def ct_bench_plan(name: str, **conntrack) -> labconfig.Plan:
    with open(os.path.join(REPO, "hyperplane", "bench", "bench_lab.toml")) as f:
        text = f.read() + "\n[conntrack]\n" + "".join(f"{k} = {v}\n"
                                                      for k, v in conntrack.items())
    return labconfig.resolve(labconfig.loads(text), name)
