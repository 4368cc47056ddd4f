"""[datapath] workers and worker_cpus: the lab file's keys, every refusal, and where
hyperplane.labconfig.placement puts N workers on fake CPU sets (no machine needed): "auto" on
1, 2, 4, 8 and 64 CPUs and under a restricted affinity, the functions off the workers' CPUs,
the rings' budget shared by every worker's ring, and the saved plan's round trip (what
``lab restart`` reads to decide the same again)."""
from __future__ import annotations

import json

import pytest

from hyperplane import labconfig as lc
from hyperplane.labconfig import LabConfigError
from hyperplane.labconfig.model import DatapathPlan
from hyperplane.labconfig.placement import (AUTO_RING_FRAMES, RING_BUDGET_FRAMES, WORKERS_MAX,
                                            auto_workers, cpu_runs, describe, place,
                                            ring_frames_for)
from kit.labdocs import base_doc, parse, refused


def datapath(**keys):
    doc = base_doc()
    doc["datapath"] = keys
    return doc


def plan_of(**keys):
    return lc.resolve(parse(datapath(**keys)), "wk")


# ---- the lab file ------------------------------------------------------------------------------
def test_default_is_one_worker_exactly_as_before():
    p = plan_of()
    assert p.datapath.workers == 1 and p.datapath.worker_cpus == ()
    # one worker places exactly what the data path placed before workers existed
    before = place(DatapathPlan(), {0, 1}, 2)
    assert (before.workers, before.worker_cpus) == (1, ())
    assert (before.loop_cpus, before.inbound_cpus) == ((1,), (0,))


@pytest.mark.parametrize("value", [1, 2, 16, "auto"])
def test_workers_accepted_and_round_trip_through_the_saved_plan(value):
    keys = {"workers": value}
    if value not in (1, "auto"):
        keys["worker_cpus"] = list(range(value))
    p = plan_of(**keys)
    assert p.datapath.workers == value
    # lab restart reads the plan saved as JSON: the same keys come back, so the same placement
    back = lc.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p and back.datapath.workers == value
    assert back.datapath.worker_cpus == p.datapath.worker_cpus
    cpus = range(32)
    assert place(back.datapath, cpus, 3) == place(p.datapath, cpus, 3)


def test_a_plan_saved_before_workers_loads_with_one_worker():
    d = plan_of().to_dict()
    del d["datapath"]["workers"], d["datapath"]["worker_cpus"]
    back = lc.Plan.from_dict(json.loads(json.dumps(d)))
    assert back.datapath.workers == 1 and back.datapath.worker_cpus == ()


def test_worker_cpus_with_one_worker_is_the_loops_cpu():
    p = plan_of(workers=1, worker_cpus=[3])
    assert p.datapath.cpus == (3,)
    placed = place(p.datapath, range(4))
    assert placed.loop_cpus == (3,) and placed.source["loop_cpus"] == "lab file"
    assert placed.workers == 1 and placed.worker_cpus == ()


@pytest.mark.parametrize("value", [0, 17, -1, True, 2.0, "two", "", "AUTO", [2], {"n": 2}])
def test_bad_workers_name_the_field_and_the_fix(value):
    refused(datapath(workers=value), "datapath.workers", "whole number from 1 to 16", '"auto"')


@pytest.mark.parametrize("keys, field, words", [
    ({"workers": 2, "worker_cpus": [1]}, "datapath.worker_cpus",
     ("1 CPU(s) for 2 worker(s)", "one CPU per worker")),
    ({"workers": 2, "worker_cpus": [1, 0, 2]}, "datapath.worker_cpus",
     ("3 CPU(s) for 2 worker(s)",)),
    ({"workers": 1, "worker_cpus": [0, 1]}, "datapath.worker_cpus", ("2 CPU(s) for 1 worker",)),
    ({"workers": 2, "worker_cpus": [1, 1]}, "datapath.worker_cpus", ("twice",)),
    ({"workers": 2, "worker_cpus": [1, "0"]}, "datapath.worker_cpus[1]", ("CPU number",)),
    ({"workers": 2, "worker_cpus": "1,0"}, "datapath.worker_cpus", ("list",)),
    ({"workers": 2, "inbound_cpus": [0]}, "datapath.inbound_cpus",
     ("remove inbound_cpus", "by direction", "by port", "workers = 1")),
    ({"workers": 2, "cpus": [1]}, "datapath.cpus",
     ("remove cpus", "worker 0", "worker_cpus")),
    ({"workers": 2, "cpus": [1], "worker_cpus": [1, 0]}, "datapath.cpus", ("remove cpus",)),
    ({"workers": "auto", "worker_cpus": [1]}, "datapath.worker_cpus",
     ('workers = "auto"', "remove worker_cpus", "number of workers")),
    ({"workers": "auto", "cpus": [1]}, "datapath.cpus", ("remove cpus",)),
    ({"workers": "auto", "inbound_cpus": [0]}, "datapath.inbound_cpus",
     ("remove inbound_cpus",)),
    ({"workers": 1, "worker_cpus": [1], "cpus": [0]}, "datapath.worker_cpus",
     ("both place the one loop", "remove one")),
])
def test_bad_combinations_name_the_field_and_the_fix(keys, field, words):
    refused(datapath(**keys), field, *words)


def test_one_worker_keeps_the_inbound_worker():
    p = plan_of(workers=1, cpus=[1], inbound_cpus=[0])
    assert p.datapath.inbound_cpus == (0,) and p.datapath.workers == 1


def test_worker_cpus_outside_the_allowed_cpus_name_the_field():
    with pytest.raises(LabConfigError) as e:
        place(DatapathPlan(workers=2, worker_cpus=(1, 7)), {0, 1})
    assert e.value.field == "datapath.worker_cpus" and "[7]" in str(e.value)
    assert "[0, 1]" in str(e.value) and "leave worker_cpus out" in str(e.value)


def test_place_refuses_what_the_parser_refuses():
    # place() is also fed plans built in code (and older saved ones): same rules, same fields
    with pytest.raises(LabConfigError) as e:
        place(DatapathPlan(workers=2, inbound_cpus=(0,)), range(4))
    assert e.value.field == "datapath.inbound_cpus"
    with pytest.raises(LabConfigError) as e:
        place(DatapathPlan(workers=3, worker_cpus=(0, 1)), range(4))
    assert e.value.field == "datapath.worker_cpus"


def test_schema_declares_the_keys():
    from hyperplane.labconfig.fields import json_schema
    from hyperplane.labconfig.loading import LAB_FILE

    props = json_schema(LAB_FILE)["properties"]["datapath"]["properties"]
    w = props["workers"]
    assert w["type"] == ["integer", "string"] and w["pattern"] == "^auto$"
    assert (w["minimum"], w["maximum"], w["default"]) == (1, WORKERS_MAX, 1)
    assert props["worker_cpus"]["type"] == "array"


# ---- "auto" --------------------------------------------------------------------------------
@pytest.mark.parametrize("n, want", [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (8, 4), (16, 8),
                                     (32, 16), (64, 16), (1024, 16)])
def test_auto_workers_rule(n, want):
    assert auto_workers(n) == want


@pytest.mark.parametrize("n", [1, 2])
def test_auto_on_small_machines_is_todays_placement(n):
    auto = place(DatapathPlan(workers="auto"), range(n), 2)
    today = place(DatapathPlan(), range(n), 2)
    assert auto.workers == 1 and auto.worker_cpus == ()
    assert (auto.loop_cpus, auto.inbound_cpus, auto.function_cpus, auto.ring_frames) == \
        (today.loop_cpus, today.inbound_cpus, today.function_cpus, today.ring_frames)
    assert auto.source == {**today.source, "workers": "auto"}
    if n == 2:      # the loop and the inbound worker, one CPU each
        assert (auto.loop_cpus, auto.inbound_cpus) == ((1,), (0,))
    assert describe(auto.to_dict()).endswith(", 1 worker (auto)")


@pytest.mark.parametrize("n, workers", [(4, 2), (8, 4), (64, 16)])
def test_auto_on_bigger_machines_takes_the_highest_cpus_and_leaves_the_rest(n, workers):
    p = place(DatapathPlan(workers="auto"), range(n), 2)
    assert p.workers == workers
    assert p.worker_cpus == tuple(range(n - 1, n - 1 - workers, -1))   # highest first
    assert p.loop_cpus == (n - 1,)                                     # worker 0 is the loop
    assert p.inbound_cpus == ()
    assert p.function_cpus == tuple(range(n - workers))                # off the workers' CPUs
    assert p.source == {"loop_cpus": "auto", "inbound_cpus": "auto", "ring_frames": "auto",
                        "workers": "auto", "worker_cpus": "auto"}
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d and d["worker_cpus"] == list(p.worker_cpus)


def test_auto_under_a_restricted_affinity_counts_and_places_inside_it():
    p = place(DatapathPlan(workers="auto"), {2, 5, 7, 9, 11, 12})
    assert p.workers == 3 and p.worker_cpus == (12, 11, 9) and p.function_cpus == (2, 5, 7)
    assert p.allowed_cpus == (2, 5, 7, 9, 11, 12)
    p = place(DatapathPlan(workers="auto"), {6, 7, 8})        # 3 CPUs: one worker, as today
    assert p.workers == 1 and p.loop_cpus == (8,) and p.inbound_cpus == (7,)


# ---- a given number of workers -----------------------------------------------------------------
def test_two_workers_on_two_cpus_share_them_with_the_functions_and_say_so():
    p = place(DatapathPlan(workers=2), {0, 1}, 2)
    assert p.worker_cpus == (1, 0) and p.loop_cpus == (1,) and p.inbound_cpus == ()
    assert p.function_cpus == (0, 1)                           # no CPU left: shared
    assert p.source["workers"] == "lab file" and p.source["worker_cpus"] == "auto"
    assert "functions share the workers' CPUs" in describe(p.to_dict())


def test_explicit_worker_cpus_win_in_their_order():
    p = place(DatapathPlan(workers=2, worker_cpus=(0, 2)), range(4))
    assert p.worker_cpus == (0, 2) and p.loop_cpus == (0,) and p.function_cpus == (1, 3)
    assert p.source["worker_cpus"] == p.source["loop_cpus"] == "lab file"
    assert describe(p.to_dict()) == (
        "placement auto: 2 workers (lab file) on CPUs 0,2 (lab file; worker 0 is the loop), "
        "rings 16384 frames per worker per link (auto), functions on CPUs 1,3")


def test_more_workers_than_cpus_are_left_unpinned():
    p = place(DatapathPlan(workers=4), {0, 1})
    assert p.workers == 4 and p.worker_cpus == () and p.loop_cpus == ()
    assert p.function_cpus == ()
    assert "unpinned (more workers than the 2 CPU(s))" in describe(p.to_dict())


def test_placement_none_pins_no_worker_but_keeps_explicit_ones():
    p = place(DatapathPlan(placement="none", workers=2), range(8), 2)
    assert p.workers == 2 and p.worker_cpus == () and p.function_cpus == ()
    assert p.ring_frames == 4096 and p.source["worker_cpus"] == "default"
    p = place(DatapathPlan(placement="none", workers=2, worker_cpus=(5, 6)), range(8))
    assert p.worker_cpus == (5, 6) and p.loop_cpus == (5,) and p.function_cpus == ()
    p = place(DatapathPlan(placement="none", workers="auto"), range(8))
    assert p.workers == 4 and p.worker_cpus == ()     # the count is still decided


# ---- rings ---------------------------------------------------------------------------------
def test_rings_share_the_budget_over_every_workers_ring():
    assert ring_frames_for(2, 1) == ring_frames_for(2) == AUTO_RING_FRAMES
    assert ring_frames_for(2, 4) == AUTO_RING_FRAMES          # 8 rings: the budget holds them
    assert ring_frames_for(2, 8) == 8192                      # 16 rings: half as deep
    for links, workers in [(2, 2), (2, 8), (3, 16), (8, 16), (4, 5)]:
        frames = ring_frames_for(links, workers)
        assert frames % 128 == 0 and 1024 <= frames <= AUTO_RING_FRAMES
        assert links * workers * frames <= RING_BUDGET_FRAMES   # within the budget to 128 rings
    assert ring_frames_for(20, 16) == 1024                    # past it: the smallest ring
    assert ring_frames_for(1000) == 4096                      # one worker: as before
    p = place(DatapathPlan(workers="auto"), range(64), veth_links=3)
    assert p.ring_frames == ring_frames_for(3, 16) and 3 * 16 * p.ring_frames <= RING_BUDGET_FRAMES
    assert place(DatapathPlan(workers=2, ring_frames=2048), range(4)).ring_frames == 2048


def test_cpu_runs():
    assert cpu_runs([63, 62, 61, 60]) == "63-60"
    assert cpu_runs([0, 1, 2, 5]) == "0-2,5"
    assert cpu_runs([1, 0]) == "1,0" and cpu_runs([]) == ""
