"""VPC Flow Logs (hyperplane.datapath.flowlogs): exact v2 record lines from hand-made engine events,
the [flow_logs] config section, the `hyperplane flowlogs` command, and one real lab.

The unit tests build hyperplane.engine.types.Event objects by hand and check every byte of the
files the writer produces (ACCEPT in both directions, REJECT inbound and refused outbound,
NODATA, SKIPDATA, the final partial interval, the header once, interval boundaries). The lab
tests (CAP_NET_ADMIN; skipped otherwise, FAILING when the compiled engine is missing) send a
known number of datagrams of a known size and read the records back from the files and
through the CLI. Only the benchmark ranges 198.18.0.0/15 and 2001:2::/48 are used.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import List

import pytest

from hyperplane import cli, errors, labconfig, netns, paths
from hyperplane import topology as hplab
from hyperplane.datapath import flowlogs as fl
from hyperplane.engine.types import Event, Tuple5
from hyperplane.lab import lifecycle
from hyperplane.observe.flowlogs import read_records
from kit import traffic as nt
from kit.labs import bare, wait_until

ACCT = "123456789012"
ENI = "eni-0a1b2c3d4e5f60718"
ENI4, ENI6 = "198.18.1.4", "2001:2:0:1::4"
ENV4, ENV6 = "198.19.0.2", "2001:2:0:f000::2"
SRV4, SRV6 = "198.18.1.5", "2001:2:0:1::5"
T0 = 1_700_000_000.4           # the writer's start: intervals begin at 1700000000
B = 1_700_000_000
HEADER = ("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
          "bytes start end action log-status")


# ---- hand-made events ----------------------------------------------------------------------------
def conn_event(kind: str, d_orig=(0, 0), d_reply=(0, 0), proto="udp", env_port=40000,
               nat_port=61000, srv_port=9000, eni=ENI, family=4, env=ENV4, srv=SRV4,
               eni_addr=ENI4) -> Event:
    """An event of the connection env:env_port -> srv:srv_port, NATed to eni_addr:nat_port;
    ``d_orig``/``d_reply`` = (packets, bytes) of its delta fields."""
    orig = Tuple5(env, env_port, srv, srv_port)
    reply = Tuple5(srv, srv_port, eni_addr, nat_port)
    return Event(kind, 5.0, 1, family, proto, orig, reply, "UNREPLIED", eni,
                 d_orig[0] + 7, d_orig[1] + 700, d_reply[0] + 3, d_reply[1] + 300,
                 d_orig[0], d_orig[1], d_reply[0], d_reply[1])


def reject_in(src=SRV4, sport=9000, dst=ENI4, dport=500, nbytes=33, proto="udp",
              eni=ENI, family=4) -> Event:
    """An unsolicited packet from the VPC to the ENI."""
    return Event("reject", 5.0, 0, family, proto, Tuple5(src, sport, dst, dport), None, "", eni,
                 0, 0, 1, nbytes, reason="unsolicited")


def reject_out(src=ENV4, sport=40001, dst="198.18.2.9", dport=443, nbytes=60, proto="tcp",
               eni=ENI, family=4, reason="security_group") -> Event:
    """A packet from the environment refused on its way out (no NAT port was given)."""
    return Event("reject", 5.0, 0, family, proto, Tuple5(src, sport, dst, dport), None, "", eni,
                 1, nbytes, 0, 0, reason=reason)


def lines(directory, eni=ENI) -> List[str]:
    with open(os.path.join(directory, f"{eni}.log")) as f:
        return f.read().splitlines()


def rec(src, dst, sport, dport, proto, packets, nbytes, action, start=B, end=B + 10,
        status="OK", eni=ENI, acct=ACCT) -> str:
    return (f"2 {acct} {eni} {src} {dst} {sport} {dport} {proto} {packets} {nbytes} "
            f"{start} {end} {action} {status}")


def nodata(start, end, status="NODATA", eni=ENI) -> str:
    return f"2 {ACCT} {eni} - - - - - - - {start} {end} - {status}"


@pytest.fixture
def w(tmp_path):
    return fl.FlowLogs(str(tmp_path / "fl"), interval=10, account_id=ACCT, start=T0)


# ---- records ---------------------------------------------------------------------------------------
def test_accept_records_one_per_direction_as_seen_at_the_eni(w):
    w.add([conn_event("new"), conn_event("update")])          # no traffic: ignored
    w.add([conn_event("flow", d_orig=(3, 300), d_reply=(2, 250))])
    w.add([conn_event("destroy", d_orig=(1, 100))])            # the rest, when it ended
    assert w.write(B + 10.05, {ENI: [ENI4, ENI6]}) == 2
    assert lines(w.directory) == [
        HEADER,
        # what the ENI sent: source NAT already applied, the environment never appears
        rec(ENI4, SRV4, 61000, 9000, 17, 4, 400, "ACCEPT"),
        # what it received: the server's reply to the NAT port
        rec(SRV4, ENI4, 9000, 61000, 17, 2, 250, "ACCEPT"),
    ]


def test_records_are_per_5_tuple_protocol_number_and_ipv6(w):
    w.add([conn_event("flow", d_orig=(1, 60), proto="tcp", env_port=40000, nat_port=61000),
           conn_event("flow", d_orig=(2, 120), proto="tcp", env_port=40002, nat_port=61002),
           conn_event("flow", d_reply=(5, 500), family=6, env=ENV6, srv=SRV6, eni_addr=ENI6)])
    w.write(B + 10, {ENI: [ENI4, ENI6]})
    assert lines(w.directory)[1:] == [
        rec(ENI4, SRV4, 61000, 9000, 6, 1, 60, "ACCEPT"),
        rec(ENI4, SRV4, 61002, 9000, 6, 2, 120, "ACCEPT"),
        rec(SRV6, ENI6, 9000, 61000, 17, 5, 500, "ACCEPT"),
    ]


def test_reject_inbound_has_its_own_tuple_outbound_leaves_from_the_eni_address(w):
    w.add([reject_in(), reject_in(),                        # aggregated: 2 packets
           reject_out(),                                    # security group, TCP 443
           reject_out(reason="tcp_not_syn", sport=40005, dport=80, nbytes=52),
           reject_out(src=ENV6, dst="2001:2:0:2::9", family=6, nbytes=80)])
    w.write(B + 10, {ENI: [ENI4, ENI6]})
    assert lines(w.directory)[1:] == [
        rec(ENI4, "198.18.2.9", 40001, 443, 6, 1, 60, "REJECT"),
        rec(ENI4, "198.18.2.9", 40005, 80, 6, 1, 52, "REJECT"),
        rec(SRV4, ENI4, 9000, 500, 17, 2, 66, "REJECT"),
        rec(ENI6, "2001:2:0:2::9", 40001, 443, 6, 1, 80, "REJECT"),
    ]
    assert w.stats()["reject_records"] == 4


def test_outbound_reject_of_an_eni_without_an_address_of_that_family_shows_dash(w):
    w.add([reject_out(src=ENV6, dst="2001:2:0:2::9", family=6)])
    w.write(B + 10, {ENI: [ENI4]})
    assert lines(w.directory)[1:] == [rec("-", "2001:2:0:2::9", 40001, 443, 6, 1, 60, "REJECT")]


def test_nodata_for_a_known_eni_without_traffic_and_events_without_eni_are_counted(w):
    other = "eni-0fedcba9876543210"
    w.add([conn_event("flow", d_orig=(1, 50))])
    w.add([reject_in(eni=None), conn_event("flow", d_orig=(1, 50), eni=None)])
    w.write(B + 10, {ENI: [ENI4], other: ["198.18.1.6"]})
    assert lines(w.directory, other) == [HEADER, nodata(B, B + 10, eni=other)]
    assert lines(w.directory) == [HEADER, rec(ENI4, SRV4, 61000, 9000, 17, 1, 50, "ACCEPT")]
    s = w.stats()
    assert (s["events_without_eni"], s["nodata_records"], s["files"]) == (2, 1, 2)


def test_an_eni_no_longer_live_still_gets_its_traffic_written(w):
    w.add([conn_event("destroy", d_reply=(1, 40))])
    w.write(B + 10, {})                                      # deleted in the meantime
    assert lines(w.directory) == [HEADER, rec(SRV4, ENI4, 9000, 61000, 17, 1, 40, "ACCEPT")]


def test_skipdata_when_events_were_lost_since_the_last_write(w):
    other = "eni-0fedcba9876543210"
    w.add([conn_event("flow", d_orig=(1, 50))])
    w.write(B + 10, {ENI: [ENI4], other: ["198.18.1.6"]}, events_lost=0)
    w.add([conn_event("flow", d_orig=(2, 100))])
    w.write(B + 20, {ENI: [ENI4], other: ["198.18.1.6"]}, events_lost=7)    # lost 7
    w.add([conn_event("flow", d_orig=(1, 50))])
    w.write(B + 30, {ENI: [ENI4], other: ["198.18.1.6"]}, events_lost=7)    # none since
    assert lines(w.directory)[1:] == [
        rec(ENI4, SRV4, 61000, 9000, 17, 1, 50, "ACCEPT"),
        rec(ENI4, SRV4, 61000, 9000, 17, 2, 100, "ACCEPT", B + 10, B + 20, "SKIPDATA"),
        rec(ENI4, SRV4, 61000, 9000, 17, 1, 50, "ACCEPT", B + 20, B + 30),
    ]
    assert lines(w.directory, other)[1:] == [
        nodata(B, B + 10, eni=other), nodata(B + 10, B + 20, "SKIPDATA", eni=other),
        nodata(B + 20, B + 30, eni=other)]
    s = w.stats()
    assert (s["skipdata_intervals"], s["skipdata_records"]) == (1, 1)


def test_interval_boundaries_due_and_traffic_lands_in_the_interval_it_was_added(w):
    assert not w.due(B + 9.99) and w.due(B + 10)
    w.add([conn_event("flow", d_orig=(1, 50))])
    w.write(B + 10.3, {ENI: [ENI4]})          # written a tick late: still [B, B+10]
    assert not w.due(B + 19.9) and w.due(B + 20)
    w.add([conn_event("flow", d_orig=(4, 200))])
    w.write(B + 20.01, {ENI: [ENI4]})
    w.write(B + 30.2, {ENI: [ENI4]})
    assert lines(w.directory)[1:] == [
        rec(ENI4, SRV4, 61000, 9000, 17, 1, 50, "ACCEPT", B, B + 10),
        rec(ENI4, SRV4, 61000, 9000, 17, 4, 200, "ACCEPT", B + 10, B + 20),
        nodata(B + 20, B + 30),
    ]
    assert w.stats()["intervals"] == 3


def test_a_clock_jump_over_whole_intervals_is_one_nodata_record(w):
    w.add([conn_event("flow", d_orig=(1, 50))])
    w.write(B + 45.5, {ENI: [ENI4]})          # `hyperplane clock advance 35`
    assert not w.due(B + 49.9) and w.due(B + 50)
    assert lines(w.directory)[1:] == [
        rec(ENI4, SRV4, 61000, 9000, 17, 1, 50, "ACCEPT", B, B + 10),
        nodata(B + 10, B + 40),
    ]


def test_final_writes_the_partial_last_interval(w):
    w.write(B + 10, {ENI: [ENI4]})
    w.add([reject_in()])
    w.write(B + 13.2, {ENI: [ENI4]}, final=True)   # the data path stops
    assert lines(w.directory)[1:] == [
        nodata(B, B + 10), rec(SRV4, ENI4, 9000, 500, 17, 1, 33, "REJECT", B + 10, B + 14)]


def test_header_once_per_file_even_across_writers(tmp_path):
    d = str(tmp_path / "fl")
    a = fl.FlowLogs(d, interval=10, account_id="000000000042", start=T0)
    a.write(B + 10, {ENI: [ENI4]})
    a.write(B + 20, {ENI: [ENI4]})
    b = fl.FlowLogs(d, interval=10, account_id="000000000042", start=B + 20)  # restarted
    b.write(B + 30, {ENI: [ENI4]})
    got = lines(d)
    assert got.count(HEADER) == 1 and got[0] == HEADER and len(got) == 4
    assert all(ln.split()[1] == "000000000042" for ln in got[1:])


def test_writer_validates_its_arguments(tmp_path):
    for bad in (0, 601, 1.5, True):
        with pytest.raises(ValueError, match="interval"):
            fl.FlowLogs(str(tmp_path), interval=bad)
    with pytest.raises(ValueError, match="account_id"):
        fl.FlowLogs(str(tmp_path), account_id="1234")


def test_record_parse_line_and_json_round_trip():
    line = rec(ENI4, SRV4, 61000, 9000, 17, 4, 400, "ACCEPT")
    r = fl.Record.parse(line)
    assert r.line() == line
    assert r.as_json() == {"version": 2, "account-id": ACCT, "interface-id": ENI,
                           "srcaddr": ENI4, "dstaddr": SRV4, "srcport": 61000, "dstport": 9000,
                           "protocol": 17, "packets": 4, "bytes": 400, "start": B,
                           "end": B + 10, "action": "ACCEPT", "log-status": "OK"}
    nd = fl.Record.parse(nodata(B, B + 10))
    assert nd.as_json()["packets"] is None and nd.line() == nodata(B, B + 10)
    with pytest.raises(ValueError):
        fl.Record.parse(HEADER)


# ---- [flow_logs] in the lab config -------------------------------------------------------------
def config_with(section: str) -> str:
    return labconfig.default_text() + "\n" + section


def test_flow_logs_defaults_and_values_reach_the_plan_and_round_trip():
    p = labconfig.resolve(labconfig.default(), "x")
    assert p.flow_logs == labconfig.FlowLogsPlan(enabled=True, interval=10,
                                                 account_id="123456789012")
    c = labconfig.loads(config_with('[flow_logs]\nenabled = false\ninterval = 600\n'
                                    'account_id = "000011112222"\n'))
    p = labconfig.resolve(c, "x")
    assert p.flow_logs == labconfig.FlowLogsPlan(False, 600, "000011112222")
    again = labconfig.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and again.flow_logs.interval == 600
    old = p.to_dict()
    del old["flow_logs"]                       # a state file from before the section existed
    assert labconfig.Plan.from_dict(old).flow_logs == labconfig.FlowLogsPlan()


def test_flow_logs_account_id_defaults_to_the_labs():
    # the first commented account_id is the [lab] one (the last is in the [flow_logs] example)
    text = labconfig.default_text().replace('# account_id = "123456789012"',
                                            'account_id = "555566667777"', 1)
    assert labconfig.loads(text).flow_logs.account_id == "555566667777"


@pytest.mark.parametrize("section, field", [
    ("interval = 0", "flow_logs.interval"),
    ("interval = 601", "flow_logs.interval"),
    ("interval = 1.5", "flow_logs.interval"),
    ('interval = "10"', "flow_logs.interval"),
    ("interval = true", "flow_logs.interval"),
    ('account_id = "1234"', "flow_logs.account_id"),
    ("account_id = 123456789012", "flow_logs.account_id"),
    ('enabled = "yes"', "flow_logs.enabled"),
    ("intervall = 5", "flow_logs.intervall"),
])
def test_flow_logs_config_errors_name_the_field(section, field):
    with pytest.raises(labconfig.LabConfigError) as e:
        labconfig.loads(config_with(f"[flow_logs]\n{section}\n"))
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")


def test_flow_logs_must_be_a_table():
    with pytest.raises(labconfig.LabConfigError) as e:
        labconfig.loads("flow_logs = 5\n" + labconfig.default_text())
    assert e.value.field == "flow_logs" and "[flow_logs]" in str(e.value)


# ---- `hyperplane flowlogs` on a lab's files (no root: a state file and records) -----------------
@pytest.fixture
def fake_lab(tmp_path, monkeypatch):
    """A lab that exists only as its state file, with flow log files written by the writer."""
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path / "run"))

    def make(name="fl-demo", enabled=True):
        c = labconfig.loads(config_with(f"[flow_logs]\nenabled = {str(enabled).lower()}\n"))
        plan = labconfig.resolve(c, name)
        hplab.save_state(name, {"plan": plan.to_dict()}, create=True)
        return name, os.path.join(paths.lab_dir(name), "flowlogs")
    return make


def run_cli(capsys, *argv) -> tuple:
    code = cli.main(["flowlogs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_records_sorted_by_start_with_header_once_and_filters(fake_lab, capsys):
    name, d = fake_lab()
    code, out, err = run_cli(capsys, "--name", name)
    assert code == 0 and out == "" and "no flow log records yet" in err
    other = "eni-0fedcba9876543210"
    w = fl.FlowLogs(d, interval=10, account_id=ACCT, start=T0)
    w.add([conn_event("flow", d_orig=(1, 50)), reject_in()])
    w.write(B + 10, {ENI: [ENI4], other: ["198.18.1.6"]})
    w.add([conn_event("flow", d_reply=(2, 80), eni=other, eni_addr="198.18.1.6")])
    w.write(B + 20, {ENI: [ENI4], other: ["198.18.1.6"]})
    code, out, err = run_cli(capsys, "--name", name)
    got = out.splitlines()
    assert code == 0 and got[0] == HEADER and got.count(HEADER) == 1 and len(got) == 6
    assert [int(ln.split()[10]) for ln in got[1:]] == [B, B, B, B + 10, B + 10]
    assert got[1:4] == [rec(ENI4, SRV4, 61000, 9000, 17, 1, 50, "ACCEPT"),
                        rec(SRV4, ENI4, 9000, 500, 17, 1, 33, "REJECT"),
                        nodata(B, B + 10, eni=other)]
    code, out, _ = run_cli(capsys, "--name", name, "--action", "reject", "--json")
    assert code == 0
    objs = [json.loads(x) for x in out.splitlines()]
    assert len(objs) == 1 and objs[0]["action"] == "REJECT" and objs[0]["dstport"] == 500
    code, out, _ = run_cli(capsys, "--name", name, "--eni", other)
    assert out.splitlines()[1:] == [
        nodata(B, B + 10, eni=other),
        rec(SRV4, "198.18.1.6", 9000, 61000, 17, 2, 80, "ACCEPT", B + 10, B + 20, eni=other)]
    code, _, err = run_cli(capsys, "--name", name, "--eni", "eni-0000000000000000f")
    assert code == errors.EXIT_NOT_FOUND and "--eni eni-0000000000000000f" in err and ENI in err


def test_cli_follow_prints_new_records_until_the_timeout(fake_lab, capsys, monkeypatch):
    name, d = fake_lab()
    w = fl.FlowLogs(d, interval=10, account_id=ACCT, start=T0)
    w.write(B + 10, {ENI: [ENI4]})
    sleeps = []
    real_sleep = time.sleep

    def sleep(s):   # the follow loop's wait: the writer appends an interval meanwhile
        sleeps.append(s)
        real_sleep(0.01)
        if len(sleeps) == 1:
            w.add([reject_in()])
            w.write(B + 20, {ENI: [ENI4]})
    monkeypatch.setattr(fl.time, "sleep", sleep)
    code, out, _ = run_cli(capsys, "--name", name, "--follow", "--timeout", "0.5")
    assert code == 0
    assert out.splitlines() == [HEADER, nodata(B, B + 10),
                                rec(SRV4, ENI4, 9000, 500, 17, 1, 33, "REJECT", B + 10, B + 20)]


def test_cli_says_when_flow_logs_are_off_or_the_lab_is_missing(fake_lab, capsys):
    name, _ = fake_lab(enabled=False)
    code, out, err = run_cli(capsys, "--name", name)
    assert code == errors.EXIT_FAIL and out == "" and "flow logs are off" in err
    assert "enabled = false" in err
    code, _, err = run_cli(capsys, "--name", "nosuchlab")
    assert code == errors.EXIT_NOT_FOUND and "no lab named" in err
    code, _, err = run_cli(capsys, "--name", name, "--timeout", "3")
    assert code == errors.EXIT_USAGE and "--follow" in err


# ---- a real lab --------------------------------------------------------------------------------
LAB = """
[vpc]
cidr = "198.18.0.0/16"

[[subnets]]
id = "subnet-a"
cidr = "198.18.1.0/24"

[[security_groups]]
id = "sg-0f10f10f"
description = "only UDP 9000 out"
egress = [{ protocol = "udp", from_port = 9000, to_port = 9000, cidr = "198.18.0.0/16" }]

[[functions]]
name = "fn-a"
environments = ["veth"]
[functions.vpc_config]
subnet_ids = ["subnet-a"]
security_group_ids = ["sg-0f10f10f"]

[[hosts]]
name = "server"
subnet = "subnet-a"

[flow_logs]
interval = 1
account_id = "000011112222"
"""
DATAGRAMS, PAYLOAD = 5, 100          # each datagram: 20 (IPv4) + 8 (UDP) + 100 = 128 bytes
IP_BYTES = 20 + 8 + PAYLOAD
UNSOLICITED_DPORT = 500              # below the NAT port range (536-65535): never a NAT port


@pytest.fixture(scope="module")
def traffic_lab(hyperplane_module_lab_factory):
    """One lab with flow logs every second and the traffic of the test sent once:
    DATAGRAMS echoed datagrams on one UDP flow, one unsolicited datagram from the server to
    the ENI, one datagram the security group refuses. Returns what the test needs to know."""
    name = hyperplane_module_lab_factory(config_text=LAB).name
    _, plan = lifecycle.load_lab(name)
    env, srv = plan.envs[0], plan.hosts[0]
    s4 = bare(srv.ipv4)
    eni_id = plan.enis[0].id
    eni4 = plan.enis[0].ipv4
    with nt.UdpEchoServer(srv.netns, s4, 9000) as echo:
        with netns.entered(env.netns):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            c.settimeout(3)
            c.bind((bare(env.ipv4), 0))
            for i in range(DATAGRAMS):
                c.sendto(bytes([i]) * PAYLOAD, (s4, 9000))
                data, _ = c.recvfrom(2048)
                assert data == bytes([i]) * PAYLOAD
            # refused by the security group (only UDP 9000 may leave)
            c.sendto(b"x" * 10, (s4, 9999))
            denied_sport = c.getsockname()[1]
        finally:
            c.close()
        nat_peer = echo.datagrams[0].peer
    assert nat_peer[0] == eni4 and len({x.peer for x in echo.datagrams}) == 1
    # unsolicited: nothing inside asked for it
    with netns.entered(srv.netns):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind((s4, 0))
        u.sendto(b"u" * 20, (eni4, UNSOLICITED_DPORT))
        unsolicited_sport = u.getsockname()[1]
    finally:
        u.close()
    sent_at = time.time()
    flowdir = os.path.join(paths.lab_dir(name), "flowlogs")
    path = os.path.join(flowdir, f"{eni_id}.log")

    def settled():
        # the traffic's intervals are written, and then two idle ones
        rs = read_records(flowdir)
        late = [r for r in rs if r.interface_id == eni_id and r.start > sent_at + 1]
        return len(late) >= 2 and rs
    wait_until(settled, 15, "two flow-log intervals after the traffic")
    return dict(name=name, eni=eni_id, eni4=eni4, s4=s4, nat_port=nat_peer[1],
                denied_sport=denied_sport, unsolicited_sport=unsolicited_sport,
                path=path, flowdir=flowdir, counters=lifecycle.ask(name, "counters"))


def _sum(records, **match):
    """(packets, bytes) summed over the records whose fields equal ``match`` (the traffic of a
    flow may span two intervals), and how many records matched."""
    hit = [r for r in records if all(getattr(r, k) == v for k, v in match.items())]
    return sum(r.packets for r in hit), sum(r.bytes for r in hit), len(hit)


def test_lab_records_match_the_traffic_sent(traffic_lab):
    t = traffic_lab
    with open(t["path"]) as f:
        text = f.read().splitlines()
    assert text[0] == HEADER and text.count(HEADER) == 1
    rs = [fl.Record.parse(x) for x in text[1:]]
    assert all(r.version == 2 and r.account_id == "000011112222" and r.interface_id == t["eni"]
               for r in rs)
    eni4, s4, port = t["eni4"], t["s4"], t["nat_port"]
    # outbound: from the ENI's address and NAT port, exactly what was sent
    assert _sum(rs, srcaddr=eni4, srcport=port, dstaddr=s4, dstport=9000, protocol=17,
                action="ACCEPT")[:2] == (DATAGRAMS, DATAGRAMS * IP_BYTES)
    # inbound: the echoes
    assert _sum(rs, srcaddr=s4, srcport=9000, dstaddr=eni4, dstport=port, protocol=17,
                action="ACCEPT")[:2] == (DATAGRAMS, DATAGRAMS * IP_BYTES)
    # the unsolicited datagram: refused, with its own tuple
    assert _sum(rs, srcaddr=s4, srcport=t["unsolicited_sport"], dstaddr=eni4,
                dstport=UNSOLICITED_DPORT, protocol=17, action="REJECT") == (1, 48, 1)
    # refused by the security group: the ENI's address, the environment's source port
    assert _sum(rs, srcaddr=eni4, srcport=t["denied_sport"], dstaddr=s4, dstport=9999,
                protocol=17, action="REJECT") == (1, 38, 1)
    # nothing else was accepted or refused
    assert {(r.srcaddr, r.srcport, r.dstaddr, r.dstport, r.action) for r in rs if r.action} == {
        (eni4, port, s4, 9000, "ACCEPT"), (s4, 9000, eni4, port, "ACCEPT"),
        (s4, t["unsolicited_sport"], eni4, UNSOLICITED_DPORT, "REJECT"),
        (eni4, t["denied_sport"], s4, 9999, "REJECT")}
    assert all(r.log_status in ("OK", "NODATA") for r in rs)
    # idle intervals: NODATA, every traffic field "-"
    idle = [r for r in rs if r.log_status == "NODATA"]
    assert idle and all(r.srcaddr is None and r.packets is None and r.action is None
                        and r.end > r.start for r in idle)
    last_traffic = max(r.end for r in rs if r.action)
    assert any(r.start >= last_traffic for r in idle)
    # a traffic record spans one whole-second interval of the lab clock (an idle record may
    # span several, had the data path been held up for more than an interval)
    assert all(r.end - r.start == 1 for r in rs if r.action)
    st = t["counters"]["flow_logs"]
    assert st["interval"] == 1 and st["files"] == 1 and st["reject_records"] >= 2


def test_lab_records_through_the_cli_json(traffic_lab, capsys):
    t = traffic_lab
    assert cli.main(["flowlogs", "--name", t["name"], "--json", "--action", "REJECT"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(o["srcaddr"], o["srcport"], o["dstaddr"], o["dstport"], o["packets"], o["bytes"])
            for o in objs} == {
        (t["s4"], t["unsolicited_sport"], t["eni4"], UNSOLICITED_DPORT, 1, 48),
        (t["eni4"], t["denied_sport"], t["s4"], 9999, 1, 38)}
    assert all(o["version"] == 2 and o["account-id"] == "000011112222" and
               o["interface-id"] == t["eni"] and o["protocol"] == 17 and
               o["log-status"] == "OK" for o in objs)
    assert cli.main(["flowlogs", "--name", t["name"], "--json"]) == 0
    allobjs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    starts = [o["start"] for o in allobjs]
    assert starts == sorted(starts)
    out = [o for o in allobjs if o["action"] == "ACCEPT" and o["srcaddr"] == t["eni4"]]
    assert sum(o["packets"] for o in out) == DATAGRAMS
    assert sum(o["bytes"] for o in out) == DATAGRAMS * IP_BYTES
    assert any(o["log-status"] == "NODATA" for o in allobjs)


LAB_OFF = LAB.replace("interval = 1\n", "interval = 1\nenabled = false\n")


def test_lab_with_flow_logs_disabled_writes_nothing(own_lab, capsys):
    with own_lab(LAB_OFF) as lab:
        name = lab.name
        _, plan = lifecycle.load_lab(name)
        assert plan.flow_logs.enabled is False
        srv = plan.hosts[0]
        with nt.UdpEchoServer(srv.netns, bare(srv.ipv4), 9000) as echo:
            nt.udp_roundtrip(plan.envs[0].netns, bare(srv.ipv4), 9000, b"hello")
            assert len(echo.datagrams) >= 1
        time.sleep(2.5)   # more than two intervals of the enabled config
        flowdir = os.path.join(paths.lab_dir(name), "flowlogs")
        assert not os.path.exists(flowdir)
        assert "flow_logs" not in lifecycle.ask(name, "counters")
        assert cli.main(["flowlogs", "--name", name]) == errors.EXIT_FAIL
        assert "flow logs are off" in capsys.readouterr().err
