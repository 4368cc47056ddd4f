"""Workers in a lab (issue 19): ``[datapath] workers = 2`` on the default lab, a worker that
fails, and a configuration that mixes workers with the inbound worker.

fn-a-0 sits on a TAP (one queue: worker 0 reads it and hands the other worker's flows over),
fn-b-0 on a veth (the kernel's fanout program steers each frame to its owner). Every other lab
test runs with two workers too when the suite runs with HYPERPLANE_WORKERS=2 (.ci/run does).
"""
from __future__ import annotations

import pytest

from hyperplane import labconfig
from kit import traffic as nt
from kit.labs import wait_until

TWO = labconfig.default_text() + "\n[datapath]\nworkers = 2\n"


def test_two_workers_share_the_flows_of_a_tap_and_a_veth_function(own_lab):
    lab = own_lab(config_text=TWO)
    c0 = lab.counters()
    assert c0["placement"]["workers"] == 2 and len(c0["workers"]) == 2
    with nt.TcpServer(lab.server.netns, lab.s4) as srv:
        for name in ("fn-a-0", "fn-b-0"):
            for i in range(8):   # eight connections from each: source ports of both slices
                data = nt.payload(20_000, seed=i)
                digest, _ = nt.tcp_send(lab.env(name).netns, lab.s4, srv.port, data,
                                        timeout=10)
                assert digest == nt.sha256(data)
    c = lab.counters()
    w = c["workers"]
    assert all(x["forwarded_outbound"] > 0 and x["forwarded_inbound"] > 0 for x in w), w
    # the TAP is read by worker 0 alone: the flows it does not own went over a handoff
    assert w[0]["handoff_out"] > 0 and w[1]["handoff_in"] > 0, w
    assert sum(x["handoff_full"] for x in w) == 0
    # the pool slices of the two workers add up to the ENI's whole pool, per family and proto
    for fam, proto in ((4, "tcp"), (4, "udp"), (6, "tcp"), (6, "udp")):
        sizes = [p["size"] for x in w for p in x["pools"]
                 if p["family"] == fam and p["proto"] == proto]
        whole = [p["size"] for p in c["enis"][0]["pool"]
                 if p["family"] == fam and p["proto"] == proto]
        assert sum(sizes) == sum(whole) == 65_000 * len(whole), (fam, proto, w)


def test_a_worker_that_stops_stops_the_data_path_and_lab_status_says_why(own_lab, monkeypatch):
    """A worker whose wait fails (made to, here, two seconds in) is not carried along: the
    data path stops cleanly, its log and ``lab status`` say which worker and why."""
    monkeypatch.setenv("HYPERPLANE_FAULT", "worker-stop:1:2")
    lab = own_lab(config_text=TWO)
    st = wait_until(lambda: (lambda s: s if s.get("stopped") else None)(lab.status()), 30.0,
                    "the data path to stop and its log to say why")
    assert not st["running"]
    assert "worker stopped: worker 1 (Bad file descriptor)" in st["stopped"], st["stopped"]


def test_workers_with_an_inbound_worker_are_refused_naming_the_field(own_lab):
    from hyperplane.errors import HyperplaneError

    with pytest.raises(HyperplaneError, match="datapath.inbound_cpus: .* remove inbound_cpus"):
        own_lab(config_text=labconfig.default_text()
                + "\n[datapath]\nworkers = 2\ninbound_cpus = [0]\n")
