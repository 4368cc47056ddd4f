"""A default lab (no ``[datapath]``) places its data path itself, as
hyperplane.labconfig.placement.place says for the CPUs the data path may use: its threads'
affinity (/proc/PID/task/*/status), ``lab status`` and ``stats`` (JSON and text), the function
runtimes' CPUs, and the same placement after ``lab restart``. No timing is asserted."""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Set

from hyperplane import labconfig
from hyperplane.lab import status as lab_status
from hyperplane.labconfig.placement import describe, place, veth_links
from hyperplane.observe import stats as ob_stats
from kit.labs import cli_run


def parse_cpu_list(text: str) -> Set[int]:
    """``0-2,5`` -> {0, 1, 2, 5} (the kernel's Cpus_allowed_list)."""
    out: Set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def threads_cpus(pid: int) -> Dict[int, Set[int]]:
    """Thread id -> the CPUs it may run on, for every thread of process ``pid``."""
    out = {}
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        with open(status) as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    out[int(status.split("/")[4])] = parse_cpu_list(line.split(":", 1)[1])
    return out


def expected(lab) -> dict:
    """What the data path must have decided: the pure function on the CPUs it inherited from
    this process (Lab.up starts it as a child of ours)."""
    plan = labconfig.resolve(labconfig.default(), lab.name)
    assert plan.datapath == labconfig.DatapathPlan()   # no [datapath]: placement "auto"
    return place(plan.datapath, os.sched_getaffinity(0), veth_links(plan)).to_dict()


def check_threads(pid: int, p: dict) -> None:
    allowed = set(p["allowed_cpus"])
    threads = threads_cpus(pid)
    main = threads.pop(pid)
    assert main == (set(p["loop_cpus"]) or allowed), (main, p)
    workers: List[Set[int]] = [c for c in threads.values() if c == set(p["inbound_cpus"])]
    if p["inbound_cpus"]:
        # the inbound worker is the one thread pinned to inbound_cpus (the loop is not there)
        assert len(workers) == 1 and not set(p["loop_cpus"]) & set(p["inbound_cpus"]), threads
    else:
        # no worker: every other thread (the periodic save, ...) shares the loop's CPUs
        assert all(c == main for c in threads.values()), threads


def test_default_lab_places_its_data_path_and_says_so(own_lab, monkeypatch):
    monkeypatch.delenv("HYPERPLANE_WORKERS", raising=False)   # the default is what is checked
    lab = own_lab()
    want = expected(lab)
    got = lab.placement()
    assert got == want
    assert got["source"] == {"loop_cpus": "auto", "inbound_cpus": "auto",
                             "ring_frames": "auto", "workers": "default",
                             "worker_cpus": "default"}
    assert got["workers"] == 1 and got["worker_cpus"] == []
    assert got["ring_frames"] == 16384
    check_threads(lab.pid, got)
    # the veth links' rings are as deep as it says
    veth = [x for x in lab.counters()["links"] if x.get("kind") == "veth"]
    assert veth and all(x["ring_frames"] == got["ring_frames"] for x in veth), veth

    st = lab_status.status(lab.name)
    assert st["placement"] == want
    out = cli_run("lab", "status", "--name", lab.name)
    assert out.returncode == 0, out.stderr
    assert "data path " + describe(want) in out.stdout, out.stdout

    s = ob_stats.summarize(lab.counters(), lab.name)
    assert s["placement"] == want == lab.stats()["placement"]
    out = cli_run("stats", "--name", lab.name)
    assert out.returncode == 0, out.stderr
    assert "placement" in out.stdout and "ring frames" in out.stdout and "16384" in out.stdout

    # the functions' code runs off the loop's CPU (where there is another)
    lab.invoke("fn-b", {"hello": "placement"})
    env = next(e for e in lab.environments() if e["environment"] == "fn-b-0")
    assert env["cpus"] == want["function_cpus"]
    if want["function_cpus"]:
        assert os.sched_getaffinity(env["pid"]) == set(want["function_cpus"])
        assert not set(want["loop_cpus"]) & os.sched_getaffinity(env["pid"])

    # lab restart decides the same again from the same lab file and CPUs
    lab.pid = lab.restart()["pid"]
    assert lab.placement() == want
    check_threads(lab.pid, want)


def test_placement_none_places_nothing(own_lab, monkeypatch):
    monkeypatch.delenv("HYPERPLANE_WORKERS", raising=False)
    text = labconfig.default_text() + '\n[datapath]\nplacement = "none"\n'
    lab = own_lab(text)
    p = lab.placement()
    allowed = sorted(os.sched_getaffinity(0))
    assert p["loop_cpus"] == [] and p["inbound_cpus"] == [] and p["ring_frames"] == 4096
    assert p["source"] == {"loop_cpus": "default", "inbound_cpus": "default",
                           "ring_frames": "default", "workers": "default",
                           "worker_cpus": "default"}
    # no thread pinned: the loop's and every other one may use every CPU, and no worker
    assert all(c == set(allowed) for c in threads_cpus(lab.pid).values())
