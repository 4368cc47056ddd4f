"""Where hyperplane.topology.impair puts an impairment, and what it refuses, worked out from
the resolved plan alone (no lab, no privilege): each direction at its transmitting end's
egress (the data path's AF_PACKET taps see a frame before tc ingress), a TAP environment's
ingress at the TAP, delay and jitter refused without sch_netem."""
from __future__ import annotations

import pytest

from hyperplane import labconfig
from hyperplane.labconfig import ImpairmentPlan
from hyperplane.topology import impair
from hyperplane.topology.impair_place import links

PLAN = labconfig.resolve(labconfig.default(), "place")


def imp(**kw) -> ImpairmentPlan:
    return ImpairmentPlan(link=kw.pop("link", "fn-b-0"), **kw)


def test_links_are_named_by_their_nodes():
    ls = links(PLAN)
    eni = PLAN.enis[0]
    assert list(ls) == ["fn-a-0", "fn-b-0", "server", "eni0", eni.id]
    assert ls["eni0"] is ls[eni.id]
    veth, tap = ls["fn-b-0"], ls["fn-a-0"]
    env_b = PLAN.env("fn-b-0")
    assert (veth.egress.sender.ns, veth.egress.sender.ifname) == (env_b.netns, "eth0")
    assert (veth.ingress.sender.ns, veth.ingress.sender.ifname) == (PLAN.node_ns,
                                                                    env_b.node_ifname)
    assert tap.ingress.sender is None and tap.egress.receiver is None
    srv = ls["server"]
    assert (srv.ingress.sender.ns, srv.ingress.sender.ifname) == (PLAN.fabric_ns, "host0")
    assert (ls["eni0"].egress.sender.ns, ls["eni0"].ingress.sender.ns) == (PLAN.node_ns,
                                                                           PLAN.fabric_ns)


def test_without_netem_rate_is_tbf_and_the_rest_ebpf_at_the_sender():
    link = links(PLAN)["fn-b-0"]
    s = impair.plan_way("tbf+bpf", link, "ingress", imp(loss=1, rate_bit=10**6, reorder=5))
    assert s.qdisc[:3] == ["tbf", "rate", "1mbit"] and s.qdisc_at == link.ingress.sender
    assert s.bpf_at == link.ingress.sender and not s.bpf_ingress
    assert s.rps_at == link.ingress.receiver
    assert s.segs_at is None, "the data path sends this way: its frames are what they are"


@pytest.mark.parametrize("kind", ["netem", "tbf+bpf"])
def test_a_local_stacks_egress_sends_one_segment_per_frame(kind):
    for name in ("fn-a-0", "fn-b-0", "server"):
        link = links(PLAN)[name]
        s = impair.plan_way(kind, link, "egress", imp(link=name, loss=1))
        assert s.segs_at == link.egress.sender
        assert impair.plan_way(kind, link, "egress", imp(link=name, rate_bit=10**6)).segs_at \
            is None
    eni = links(PLAN)["eni0"]
    assert impair.plan_way(kind, eni, "egress", imp(link="eni0", loss=1)).segs_at is None


def test_delay_without_netem_is_refused_with_the_reason():
    with pytest.raises(impair.ImpairError) as e:
        impair.plan_way("tbf+bpf", links(PLAN)["server"], "egress", imp(link="server",
                                                                        delay_ms=10))
    msg = str(e.value)
    assert e.value.code == 2 and msg.startswith("server egress: delay")
    assert "sch_netem" in msg and "CONFIG_NET_SCH_NETEM" in msg and "loss" in msg


def test_netem_does_everything_at_the_sender():
    link = links(PLAN)["server"]
    s = impair.plan_way("netem", link, "ingress", imp(link="server", delay_ms=10, jitter_ms=2,
                                                      loss=1, rate_bit=10**8))
    assert s.qdisc == ["netem", "delay", "10ms", "2ms", "loss", "1%", "rate", "100mbit"]
    assert s.qdisc_at == link.ingress.sender and s.bpf_at is None
    s = impair.plan_way("netem", link, "egress", imp(link="server", reorder=5))
    assert s.qdisc[:3] == ["netem", "delay", "1ms"] and "delay 1ms added" in s.notes[0]


@pytest.mark.parametrize("kind", ["netem", "tbf+bpf"])
def test_a_taps_ingress_is_loss_and_duplicate_at_the_tap(kind):
    link = links(PLAN)["fn-a-0"]
    s = impair.plan_way(kind, link, "ingress", imp(link="fn-a-0", loss=5, duplicate=1))
    assert s.bpf_at == link.ingress.receiver and s.bpf_ingress and s.qdisc is None
    with pytest.raises(impair.ImpairError, match="fn-a-0 ingress: rate cannot be applied.*TAP"):
        impair.plan_way(kind, link, "ingress", imp(link="fn-a-0", rate_bit=10**6))


def test_reorder_without_netem_needs_a_receiving_kernel_link():
    with pytest.raises(impair.ImpairError, match="fn-a-0 egress: reorder.*RPS"):
        impair.plan_way("tbf+bpf", links(PLAN)["fn-a-0"], "egress",
                        imp(link="fn-a-0", reorder=5))


def test_the_program_draws_each_effect_on_its_own():
    code = impair.program(loss=0, duplicate=0, reorder=0, ifindex=3, ingress=False)
    assert len(code) == 29 * 8 and code[-8] == 0x95      # ends with exit
    lossy = impair.program(loss=100, duplicate=0, reorder=0, ifindex=3, ingress=False)
    assert lossy != code
    # the loss threshold (per 65536) sits in the 9th instruction's immediate
    assert int.from_bytes(lossy[8 * 8 + 4:8 * 8 + 8], "little", signed=True) == 65536
    ingress = impair.program(loss=100, duplicate=0, reorder=0, ifindex=3, ingress=True)
    assert ingress[9 * 8 + 4] == 2 and lossy[9 * 8 + 4] == 4    # SHOT in, STOLEN out
