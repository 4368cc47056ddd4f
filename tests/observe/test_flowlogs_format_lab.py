"""A custom flow-log format in a real lab: a TCP connection from an execution environment
through the ENI to the VPC's server, read back from the ENI's file and through
``hyperplane flowlogs --json``. The records show the ENI's translation (``srcaddr`` the ENI,
``pkt-srcaddr`` the environment on the way out; ``dstaddr`` the ENI, ``pkt-dstaddr`` the
environment on the way back), the handshake's and the close's tcp-flags, the flow direction
and the traffic path.

Needs root (the plugin's fixtures skip, naming the capability, without it). Only the
benchmark ranges; the lab is the plugin's, uniquely named and always taken down."""
from __future__ import annotations

import json
import time

from hyperplane import cli, labconfig, paths
from hyperplane.observe.flowlogs import read_records
from kit import traffic as nt
from kit.labs import bare, wait_until

FORMAT = ("${version} ${interface-id} ${vpc-id} ${subnet-id} ${instance-id} ${type} "
          "${srcaddr} ${dstaddr} ${srcport} ${dstport} ${pkt-srcaddr} ${pkt-dstaddr} "
          "${protocol} ${packets} ${tcp-flags} ${start} ${action} ${flow-direction} "
          "${traffic-path} ${log-status}")
CONFIG = labconfig.default_text() + f'\n[flow_logs]\ninterval = 1\nformat = "{FORMAT}"\n'


def _or(records, key="tcp_flags"):
    out = 0
    for r in records:
        out |= getattr(r, key) or 0
    return out


def test_custom_format_records_show_the_translation_flags_direction_and_path(own_lab, capsys):
    lab = own_lab(CONFIG)
    env, eni = lab.env("fn-b-0"), lab.eni
    env4 = bare(env.ipv4)
    with nt.TcpServer(lab.server.netns, lab.s4) as srv:
        nt.tcp_send(env.netns, lab.s4, srv.port, b"flow logs" * 100, timeout=10, verify=True)
        (conn,) = srv.wait_connections(1)
    nat_peer = conn.peer                    # what the server saw: the ENI and its NAT port
    sent = time.time()
    flowdir = paths.flow_logs_dir(lab.name)

    def settled():
        rs = [r for r in read_records(flowdir) if r.interface_id == eni.id]
        done = [r for r in rs if r.start is not None and r.start > sent + 1]
        return rs if len(done) >= 2 else None
    rs = wait_until(settled, 20, "two flow-log intervals after the connection")
    with open(f"{flowdir}/{eni.id}.log") as f:
        assert f.readline().split() == [n[2:-1] for n in FORMAT.split()]
    traffic = [r for r in rs if r.action == "ACCEPT" and r.protocol == 6]
    out = [r for r in traffic if r.flow_direction == "egress"]
    back = [r for r in traffic if r.flow_direction == "ingress"]
    assert out and back, rs
    for r in out:   # sent by the ENI: the ENI's address, the environment's before the NAT
        assert (r.srcaddr, r.pkt_srcaddr, r.dstaddr, r.pkt_dstaddr, r.dstport) == \
            (eni.ipv4, env4, lab.s4, lab.s4, srv.port), r
        assert r.traffic_path == 1          # to another resource of the VPC
    for r in back:  # received by the ENI: the ENI's address, the environment's after it
        assert (r.srcaddr, r.pkt_srcaddr, r.dstaddr, r.pkt_dstaddr, r.srcport) == \
            (lab.s4, lab.s4, eni.ipv4, env4, srv.port), r
        assert r.traffic_path is None       # AWS: for egress only
    assert nat_peer[0] == eni.ipv4
    assert {r.srcport for r in out} == {r.dstport for r in back} == {nat_peer[1]}
    assert _or(out) & 0b11 == 0b11          # SYN (2) and FIN (1) from the environment
    assert _or(back) & 0b10011 == 0b10011   # SYN-ACK (18) and FIN (1) from the server
    assert not _or(traffic) & 0b100         # no RST
    for r in rs:
        assert (r.version, r.vpc_id, r.subnet_id, r.instance_id) == \
            (5, lab.plan.vpc_id, eni.subnet, None), r
    assert all(r.type == "IPv4" for r in traffic)
    assert cli.main(["flowlogs", "--name", lab.name, "--json", "--action", "ACCEPT"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    eg = [o for o in objs if o["flow-direction"] == "egress" and o["protocol"] == 6]
    assert eg and all(o["pkt-srcaddr"] == env4 and o["srcaddr"] == eni.ipv4 for o in eg)
