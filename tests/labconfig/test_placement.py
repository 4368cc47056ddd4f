"""hyperplane.labconfig.placement: where the data path places its loop, its inbound worker, its
rings and the functions' code, on fake CPU sets (no machine needed), and [datapath] placement
in the lab file."""
from __future__ import annotations

import json

import pytest

from hyperplane import labconfig as lc
from hyperplane.labconfig import LabConfigError
from hyperplane.labconfig.model import DatapathPlan
from hyperplane.labconfig.placement import (AUTO_RING_FRAMES, Placement, describe, place,
                                            ring_frames_for, veth_links)
from kit.labdocs import base_doc, parse, refused

AUTO_SRC = {"loop_cpus": "auto", "inbound_cpus": "auto", "ring_frames": "auto",
            "workers": "default", "worker_cpus": "default"}   # one worker: the default


def test_one_cpu_pins_nothing_and_starts_no_worker():
    p = place(DatapathPlan(), {0})
    assert (p.loop_cpus, p.inbound_cpus, p.function_cpus) == ((), (), ())
    assert p.ring_frames == AUTO_RING_FRAMES and p.source == AUTO_SRC


def test_two_cpus_are_the_benchs_pinning():
    # hyperplane.bench: loop on SERVER_CPU (1), inbound worker on CLIENT_CPU (0)
    from hyperplane.bench.settings import CLIENT_CPU, RING_FRAMES, SERVER_CPU

    p = place(DatapathPlan(), {0, 1}, veth_links=2)
    assert p.loop_cpus == (SERVER_CPU,) and p.inbound_cpus == (CLIENT_CPU,)
    assert p.ring_frames == RING_FRAMES == 16384
    assert p.function_cpus == (0,)          # the lab's senders off the loop's CPU


@pytest.mark.parametrize("n", [4, 64])
def test_many_cpus_loop_and_worker_on_the_highest(n):
    p = place(DatapathPlan(), range(n))
    assert p.loop_cpus == (n - 1,) and p.inbound_cpus == (n - 2,)
    assert p.function_cpus == tuple(range(n - 1))
    assert p.allowed_cpus == tuple(range(n))


def test_restricted_affinity_places_inside_it():
    p = place(DatapathPlan(), {2, 5, 7})
    assert p.loop_cpus == (7,) and p.inbound_cpus == (5,) and p.function_cpus == (2, 5)
    p = place(DatapathPlan(), {3})
    assert p.loop_cpus == () and p.inbound_cpus == ()


def test_explicit_values_win_and_the_rest_is_placed_around_them():
    p = place(DatapathPlan(cpus=(0,)), range(4))
    assert p.loop_cpus == (0,) and p.inbound_cpus == (3,) and p.function_cpus == (1, 2, 3)
    assert p.source == {**AUTO_SRC, "loop_cpus": "lab file"}
    p = place(DatapathPlan(inbound_cpus=(3,)), range(4))
    assert p.loop_cpus == (2,) and p.inbound_cpus == (3,)
    assert p.source["inbound_cpus"] == "lab file" and p.source["loop_cpus"] == "auto"
    p = place(DatapathPlan(ring_frames=2048), {0, 1})
    assert p.ring_frames == 2048 and p.source["ring_frames"] == "lab file"
    p = place(DatapathPlan(cpus=(0, 1)), {0, 1})   # the loop takes both: no CPU for a worker
    assert p.loop_cpus == (0, 1) and p.inbound_cpus == () and p.function_cpus == ()


def test_none_places_nothing_but_keeps_explicit_values():
    p = place(DatapathPlan(placement="none"), range(64), veth_links=2)
    assert (p.loop_cpus, p.inbound_cpus, p.function_cpus) == ((), (), ())
    assert p.ring_frames == 4096
    assert p.source == {"loop_cpus": "default", "inbound_cpus": "default",
                        "ring_frames": "default", "workers": "default", "worker_cpus": "default"}
    p = place(DatapathPlan(placement="none", cpus=(1,), inbound_cpus=(0,)), {0, 1})
    assert p.loop_cpus == (1,) and p.inbound_cpus == (0,) and p.function_cpus == ()


def test_cpus_outside_the_allowed_set_name_the_field():
    with pytest.raises(LabConfigError) as e:
        place(DatapathPlan(cpus=(9,)), {0, 1})
    assert e.value.field == "datapath.cpus" and "[9]" in str(e.value) and "[0, 1]" in str(e.value)
    with pytest.raises(LabConfigError) as e:
        place(DatapathPlan(inbound_cpus=(4,)), {0, 1})
    assert e.value.field == "datapath.inbound_cpus"
    with pytest.raises(LabConfigError) as e:   # the worker takes every CPU: no loop CPU left
        place(DatapathPlan(inbound_cpus=(0, 1)), {0, 1})
    assert e.value.field == "datapath.inbound_cpus" and "leave a CPU out" in str(e.value)


def test_ring_budget_shared_by_many_links():
    assert ring_frames_for(1) == ring_frames_for(8) == AUTO_RING_FRAMES
    assert ring_frames_for(16) == 8192
    assert ring_frames_for(10) % 128 == 0 and 4096 <= ring_frames_for(10) < AUTO_RING_FRAMES
    assert ring_frames_for(1000) == 4096          # never below the old default


def test_veth_links_of_the_default_lab():
    plan = lc.resolve(lc.default(), "pl")
    # one ENI key, one veth environment (the other is a TAP)
    assert [v.attach for v in plan.envs] == ["tap", "veth"]
    assert veth_links(plan) == 2


def test_to_dict_and_describe():
    d = place(DatapathPlan(), {0, 1}).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["loop_cpus"] == [1] and d["inbound_cpus"] == [0]
    assert describe(d) == ("placement auto: loop on CPU 1 (auto), inbound worker on CPU 0 "
                           "(auto), rings 16384 frames (auto)")
    assert "loop unpinned (default), no inbound worker (default)" in \
        describe(place(DatapathPlan(placement="none"), {0, 1}).to_dict())
    assert isinstance(place(DatapathPlan(), {0}), Placement)


def test_lab_file_placement_key():
    plan = lc.resolve(parse(base_doc()), "pl")
    assert plan.datapath.placement == "auto"          # no [datapath]: placed automatically
    doc = base_doc()
    doc["datapath"] = {"placement": "none"}
    plan = lc.resolve(parse(doc), "pl")
    assert plan.datapath.placement == "none"
    assert lc.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("value", ["fast", "", 1, True, ["auto"]])
def test_lab_file_bad_placement_names_the_field_and_the_fix(value):
    doc = base_doc()
    doc["datapath"] = {"placement": value}
    refused(doc, "datapath.placement", '"auto"', '"none"')
