"""Lab config: ``[conntrack]``, the data path's timeouts and table capacity under the kernel's
sysctl names. Pure Python: no privileges, no namespaces."""
from __future__ import annotations

import dataclasses
import json

import pytest

from hyperplane import labconfig as lc
from hyperplane.datapath import statefile
from hyperplane.engine.config import EngineConfig, Eni, Timeouts
from hyperplane.labconfig.model import CONNTRACK_DEFAULTS, CONNTRACK_TIMEOUT_KEYS
from kit.labdocs import base_doc, parse, refused


def conntrack(**values):
    doc = base_doc()
    doc["conntrack"] = values
    return doc


def test_defaults_are_exactly_the_engines():
    p = lc.resolve(parse(base_doc()), "ct")
    assert p.conntrack == lc.ConntrackPlan()
    assert p.conntrack.timeouts() == Timeouts()
    assert p.conntrack.max == EngineConfig(enis=[Eni("eni-0a1b2c3d4e5f60718", "198.18.1.4")]
                                           ).capacity
    assert dataclasses.asdict(p.conntrack) == CONNTRACK_DEFAULTS
    assert p.conntrack.changed() == {}
    # every engine timeout class has its key
    assert sorted(CONNTRACK_TIMEOUT_KEYS.values()) == sorted(
        f.name for f in dataclasses.fields(Timeouts))


def test_keys_set_the_engine_timeouts_and_an_absent_key_keeps_its_default():
    p = lc.resolve(parse(conntrack(udp_timeout=5, tcp_timeout_established=7440, max=64)), "ct")
    t = p.conntrack.timeouts()
    assert (t.udp_unreplied, t.tcp_established, t.udp_replied, t.tcp_close) == \
        (5.0, 7440.0, 350.0, 10.0)
    assert p.conntrack.max == 64
    assert p.conntrack.changed() == {"tcp_timeout_established": 7440, "udp_timeout": 5,
                                     "max": 64}
    # through JSON and back, as the daemon gets it
    assert lc.Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_a_state_file_of_a_lab_without_conntrack_still_matches():
    plain = lc.resolve(parse(base_doc()), "ct")
    d = plain.to_dict()
    del d["conntrack"]          # a plan saved before [conntrack] existed
    assert statefile.plan_hash(lc.Plan.from_dict(d)) == statefile.plan_hash(plain)
    changed = lc.resolve(parse(conntrack(udp_timeout=5)), "ct")
    assert statefile.plan_hash(changed) != statefile.plan_hash(plain)


@pytest.mark.parametrize("key, value, words", [
    ("udp_timeout", 0, ["0 s", "set 1..864000", "default 30"]),
    ("tcp_timeout_established", 864001, ["set 1..864000", "default 350"]),
    ("udp_timeout_stream", 1.5, ["must be an integer", "whole seconds",
                                 "nf_conntrack_udp_timeout_stream"]),
    ("tcp_timeout_close", "10s", ["must be an integer", "tcp_timeout_close = 10"]),
    ("tcp_timeout_syn_sent", True, ["must be an integer"]),
    ("max", 0, ["0 connections", f"set 1..{1 << 26}"]),
    ("max", 1 << 27, [f"set 1..{1 << 26}"]),
    ("max", "many", ["must be an integer", "max = 1000000"]),
    ("udp_timeout_unreplied", 5, ["unknown key", "did you mean", "udp_timeout, "
                                  "udp_timeout_stream, max"]),
    ("tcp_timeout_establshed", 5, ["unknown key", "did you mean 'tcp_timeout_established'"]),
    ("nf_conntrack_max", 5, ["write max = ...", "without its nf_conntrack_ prefix"]),
])
def test_bad_conntrack_names_the_field_the_problem_and_the_fix(key, value, words):
    refused(conntrack(**{key: value}), f"conntrack.{key}", *words)


def test_conntrack_must_be_a_table():
    doc = base_doc()
    doc["conntrack"] = 5
    refused(doc, "conntrack", "must be a table")
