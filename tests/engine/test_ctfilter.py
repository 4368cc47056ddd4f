"""hyperplane.engine.ctfilter: the filters of `conntrack list|events|flush`, applied in the data path.

Each field is checked with an entry (as the daemon's ``conntrack`` command lists it) that it
must keep and one it must drop; bad values raise FilterError naming the field. Addresses are
from the benchmark ranges only.
"""
from __future__ import annotations

import pytest

from hyperplane.engine.ctfilter import FIELDS, Filter, FilterError
from hyperplane.engine.types import Event, Tuple5

ENI = "eni-0a1b2c3d4e5f60718"
OTHER_ENI = "eni-0a1b2c3d4e5f60719"


def entry(family=4, proto="tcp", state="ESTABLISHED", eni=ENI, sport=40000, dport=443,
          nat_port=52000):
    """An entry dict: environment -> server, NATed to the ENI's address."""
    env, srv, eni_addr = (("198.19.0.2", "198.18.1.5", "198.18.1.4") if family == 4 else
                          ("2001:2:0:f000::2", "2001:2:0:1::5", "2001:2:0:1::4"))
    return {"family": family, "proto": proto, "state": state, "eni_id": eni,
            "orig": {"src": env, "sport": sport, "dst": srv, "dport": dport},
            "reply": {"src": srv, "sport": dport, "dst": eni_addr, "dport": nat_port}}


def from_env(addr: str):
    e = entry()
    e["orig"] = dict(e["orig"], src=addr)
    return e


def test_an_empty_filter_matches_everything_and_is_false():
    f = Filter()
    assert not f and Filter({}).spec == {}
    assert f.match_entry(entry()) and f.match_entry(entry(family=6, proto="udp"))


def test_none_values_are_no_condition():
    f = Filter({"proto": None, "sport": None})
    assert not f
    assert f.match_entry(entry(proto="udp", sport=1))


@pytest.mark.parametrize("spec, keeps, drops", [
    ({"family": 4}, entry(), entry(family=6)),
    ({"family": 6}, entry(family=6), entry()),
    ({"proto": "udp"}, entry(proto="udp", state="REPLIED"), entry()),
    ({"proto": "TCP"}, entry(), entry(proto="udp")),                  # case-insensitive
    ({"state": "established"}, entry(), entry(state="SYN_SENT")),     # case-insensitive
    ({"state": "UNREPLIED"}, entry(proto="udp", state="UNREPLIED"),
     entry(proto="udp", state="REPLIED")),
    ({"sport": 40000}, entry(), entry(sport=40001)),
    ({"dport": 443}, entry(), entry(dport=80)),
    ({"dport": 0}, entry(dport=0), entry()),                          # 0 is a value, not "none"
    ({"eni": ENI}, entry(), entry(eni=OTHER_ENI)),
    ({"orig_src": "198.19.0.2"}, entry(), entry(family=6)),
    ({"orig_src": "198.19.0.0/30"}, entry(), entry(family=6)),
    ({"orig_dst": "198.18.1.5"}, entry(), entry(family=6)),
    ({"reply_src": "2001:2:0:1::5"}, entry(family=6), entry()),
    ({"reply_dst": "198.18.1.4"}, entry(), entry(family=6)),
    ({"reply_dst": "2001:2:0:1::/64"}, entry(family=6), entry()),
    ({"reply_dst": "198.18.1.0/24"}, entry(), entry(family=6)),       # v4 prefix, v6 entry
    ({"orig_src": "198.19.0.4/30"}, from_env("198.19.0.7"), from_env("198.19.0.3")),
])
def test_each_field_keeps_and_drops(spec, keeps, drops):
    f = Filter(spec)
    assert f
    assert f.match_entry(keeps), (spec, keeps)
    assert not f.match_entry(drops), (spec, drops)


def test_conditions_are_a_conjunction():
    f = Filter({"proto": "tcp", "family": 6, "dport": 443})
    assert f.match_entry(entry(family=6))
    assert not f.match_entry(entry(family=4))
    assert not f.match_entry(entry(family=6, dport=80))
    assert not f.match_entry(entry(family=6, proto="udp"))


def test_reply_conditions_use_the_reply_tuple_and_orig_ones_the_orig_tuple():
    e = entry()
    # the ENI address is only in the reply tuple, the environment's only in the orig tuple
    assert Filter({"reply_dst": "198.18.1.4"}).match_entry(e)
    assert not Filter({"orig_dst": "198.18.1.4"}).match_entry(e)
    assert Filter({"orig_src": "198.19.0.2"}).match_entry(e)
    assert not Filter({"reply_src": "198.19.0.2"}).match_entry(e)
    # ports: sport/dport are the orig tuple's (the NAT port 52000 is the reply's dport)
    assert not Filter({"dport": 52000}).match_entry(e)


@pytest.mark.parametrize("spec, field", [
    ({"family": 5}, "family"),
    ({"family": "ipv4"}, "family"),
    ({"proto": "icmp"}, "proto"),
    ({"proto": 6}, "proto"),
    ({"state": ""}, "state"),
    ({"state": 3}, "state"),
    ({"sport": 65536}, "sport"),
    ({"sport": -1}, "sport"),
    ({"dport": "443"}, "dport"),
    ({"dport": True}, "dport"),
    ({"eni": "i-0123"}, "eni"),
    ({"eni": 7}, "eni"),
    ({"orig_src": "198.18.1"}, "orig_src"),
    ({"orig_dst": "not-an-address"}, "orig_dst"),
    ({"reply_src": "198.18.1.0/33"}, "reply_src"),
    ({"reply_dst": "2001:2::/129"}, "reply_dst"),
])
def test_bad_values_name_the_field_and_what_it_takes(spec, field):
    with pytest.raises(FilterError) as ei:
        Filter(spec)
    msg = str(ei.value)
    assert msg.startswith(field + " ") and FIELDS[field] in msg


def test_unknown_fields_are_named_with_the_known_ones():
    with pytest.raises(FilterError, match="unknown filter field.*colour, src") as ei:
        Filter({"src": "198.18.1.5", "colour": "red"})
    assert "orig_src" in str(ei.value)          # the list of known fields


def _event(kind="destroy", orig=Tuple5("198.19.0.2", 40000, "198.18.1.5", 443),
           reply=Tuple5("198.18.1.5", 443, "198.18.1.4", 52000), state="ESTABLISHED",
           proto="tcp", eni=ENI):
    return Event(kind, 1.0, 1, 4, proto, orig, reply, state, eni, 3, 180, 2, 120)


def test_events_match_like_entries():
    ev = _event()
    assert Filter({"proto": "tcp", "dport": 443, "reply_dst": "198.18.1.4"}).match_event(ev)
    assert not Filter({"state": "TIME_WAIT"}).match_event(ev)
    assert not Filter({"eni": OTHER_ENI}).match_event(ev)


def test_a_reject_has_no_reply_tuple_so_only_orig_conditions_can_match_it():
    # an unsolicited packet from the server to the ENI: orig is the packet's tuple as it came
    rej = _event("reject", orig=Tuple5("198.18.1.5", 9000, "198.18.1.4", 41000), reply=None,
                 state="", proto="udp")
    assert Filter({"proto": "udp", "dport": 41000, "orig_dst": "198.18.1.4"}).match_event(rej)
    assert not Filter({"reply_src": "198.18.1.5"}).match_event(rej)
    assert not Filter({"reply_dst": "198.18.1.0/24"}).match_event(rej)
    assert not Filter({"state": "ESTABLISHED"}).match_event(rej)
    assert Filter({"eni": ENI}).match_event(rej)


@pytest.mark.parametrize("spec, field", [
    ({"state": "ESTABLISHD"}, "state"),          # a typo would silently match nothing
    ({"family": 4.0}, "family"),
    ({"family": True}, "family"),
    ({"eni": "eni-"}, "eni"),
])
def test_near_misses_are_refused_too(spec, field):
    with pytest.raises(FilterError) as ei:
        Filter(spec)
    assert str(ei.value).startswith(field + " ")


@pytest.mark.parametrize("spec", ["tcp", 4, ["proto", "tcp"]])
def test_a_filter_that_is_not_an_object_is_a_filter_error(spec):
    with pytest.raises(FilterError, match="must be an object of field: value"):
        Filter(spec)
