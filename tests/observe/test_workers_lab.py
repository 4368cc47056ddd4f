"""`hyperplane stats` of a real lab with two data path workers (issue 19): the default lab
with ``[datapath] workers = 2``, TCP and UDP from fn-a-0 (a TAP: worker 0 reads it and hands
the other worker's flows over) and from fn-b-0 (a veth: the kernel steers each packet to its
owner), then ``stats --json``'s ``workers`` rows and the text view's workers section. Needs
root (the lab fixtures skip, naming the capability, without it)."""
from __future__ import annotations

import contextlib
import json

from hyperplane import labconfig
from kit import traffic
from kit.labs import Servers, cli_run, env_addr, wait_until

N_TCP, N_UDP = 24, 16


def test_stats_shows_two_workers_sharing_the_traffic_and_the_ports(own_lab):
    lab = own_lab(labconfig.default_text() + "\n[datapath]\nworkers = 2\n")
    assert lab.placement()["workers"] == 2
    with contextlib.ExitStack() as stack:
        srv = Servers(lab, stack)
        for env in ("fn-a-0", "fn-b-0"):
            ns = lab.env(env).netns
            for family in (4, 6):
                addr = lab.server_addr(family)
                got = traffic.tcp_many(ns, addr, srv.tcp[family].port, N_TCP, 256,
                                       concurrency=8)
                assert all(r.ok for r in got), [r.error for r in got if not r.ok]
                for i in range(N_UDP):
                    reply, _ = traffic.udp_roundtrip(ns, addr, srv.udp[family].port,
                                                     b"w%d" % i, source=env_addr(
                                                         lab.env(env), family))
                    assert reply == b"w%d" % i
    r = cli_run("stats", "--json", "--name", lab.name)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["workers"] == lab.counters()["workers"] or len(s["workers"]) == 2
    w0, w1 = s["workers"]
    assert [w0["worker"], w1["worker"]] == [0, 1]
    for w in (w0, w1):
        assert w["rx_packets"] > 0, w
        assert w["forwarded_outbound"] > 0 and w["forwarded_inbound"] > 0, w
        assert w["connections"] > 0, w
    # fn-a-0 is one TAP file descriptor: worker 0 reads it and hands worker 1's flows over
    assert w0["handoff_out"] > 0 and w1["handoff_in"] > 0
    assert w0["handoff_full"] == w1["handoff_full"] == 0
    # each worker owns a slice of every pool: the slices add up to the ENI's whole pool
    slices = {}
    for w in (w0, w1):
        for p in w["pools"]:
            slices.setdefault((p["eni"], p["family"], p["proto"]), []).append(p)
    assert {(eni, proto) for eni, _, proto in slices} == {(lab.eni.id, "tcp"),
                                                           (lab.eni.id, "udp")}
    for (eni, family, proto), got in slices.items():
        assert len(got) == 2, (eni, family, proto)
        assert sum(p["size"] for p in got) == 65000, (eni, family, proto, got)
        assert all(abs(p["size"] - 32500) <= 1 for p in got), got
    assert sum(w["connections"] for w in (w0, w1)) == s["totals"]["connections"]
    # the text view has one row per worker
    r = cli_run("stats", "--name", lab.name)
    assert r.returncode == 0, r.stderr
    rows = r.stdout.split("WORKERS\n")[1].split("\n\n")[0].splitlines()[1:]
    assert [ln.split()[0] for ln in rows] == ["0", "1"]
    assert rows[0].split()[5] == str(w0["handoff_out"])
    # and the table's own pools (the control plane's one view of the shards) are the sums
    for (eni, family, proto), got in slices.items():
        whole = next(p for p in s["pools"] if (p["eni"], p["family"], p["proto"]) ==
                     (eni, family, proto))
        assert (whole["size"], whole["used"]) == (65000, sum(p["used"] for p in got))
