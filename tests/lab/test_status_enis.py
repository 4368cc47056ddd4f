"""``lab status`` and ``lab up`` on the ENIs' lifecycle (issue 16): every ENI the data path has
had is listed with its state, a deleted one never as if it were live, and the idle reclaim of
the default lab (``inactive_after`` 600 s) is said where a new user looks, at ``lab up`` and in
``lab status`` (when each ENI would go). The lab clock is moved with ``clock advance``."""
from __future__ import annotations

import json

from kit import traffic
from kit.labs import bare, cli_run, wait_until


def _status(lab):
    r = cli_run("lab", "status", "--name", lab.name, "--json")
    assert r.returncode == 0, r.stderr
    text = cli_run("lab", "status", "--name", lab.name)
    assert text.returncode == 0, text.stderr
    return json.loads(r.stdout), text.stdout


def _eni_lines(text):
    return [line.strip() for line in text.splitlines() if line.strip().startswith("ENI ")]


def test_status_follows_an_idle_eni_from_in_use_to_deleted_and_its_successor(own_lab):
    lab = own_lab()
    first = lab.eni
    st, text = _status(lab)
    (e,) = st["enis"]
    assert (e["id"], e["state"], e["live"]) == (first.id, "in-use", True)
    assert st["lifecycle"]["inactive_after"] == 600
    assert 0 < e["reclaim_in"] <= 600, e          # counted from the functions' last use
    (line,) = _eni_lines(text)
    assert first.ipv4 in line and "in-use" in line and "idle reclaim in" in line, line

    lab.advance(300)                               # half way: still there, 300 s closer
    (e,) = _status(lab)[0]["enis"]
    assert e["state"] == "in-use" and 0 < e["reclaim_in"] <= 300, e

    lab.advance(300)                               # 600 s idle: reclaimed
    st, text = _status(lab)
    (e,) = st["enis"]
    assert (e["state"], e["live"], e["reclaim_in"]) == ("deleted", False, None), e
    assert st["live_enis"] == []
    assert {f["state"] for f in st["functions"]} == {"Inactive"}
    (line,) = _eni_lines(text)
    assert "deleted" in line and "not live" in line and "in-use" not in line, line

    # the next packet fails and restores the function; a new ENI comes up at a new address
    env = lab.env("fn-b-0")
    with traffic.UdpEchoServer(lab.server.netns, lab.s4) as srv:
        try:
            traffic.udp_roundtrip(env.netns, srv.addr, srv.port, b"wake", timeout=1, retries=1)
        except (AssertionError, OSError, TimeoutError):
            pass                                   # dropped: the function was Inactive
        wait_until(lambda: lab.functions()["fn-b"]["state"] == "Active", 10, "fn-b Active")
        reply, _ = traffic.udp_roundtrip(env.netns, srv.addr, srv.port, b"again", timeout=6)
        assert reply == b"again"
        seen = {d.peer[0] for d in srv.datagrams if d.data == b"again"}
    st, text = _status(lab)
    old, new = st["enis"]
    assert (old["id"], old["state"], old["live"]) == (first.id, "deleted", False)
    assert new["state"] == "in-use" and new["live"] and new["reason"] == "restore", new
    assert bare(new["addresses"][0]) not in (bare(a) for a in old["addresses"])
    assert seen == {new["addresses"][0]}, "the server saw the new ENI's address"
    assert new["packets"]["outbound"] >= 1 and 0 < new["reclaim_in"] <= 600, new
    assert [e["id"] for e in st["live_enis"]] == [new["id"]]
    lines = _eni_lines(text)
    assert len(lines) == 2 and "deleted" in lines[0] and "in-use" in lines[1], lines

