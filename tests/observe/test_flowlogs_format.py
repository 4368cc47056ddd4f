"""VPC Flow Logs custom formats (``[flow_logs] format``, AWS's fields of versions 2 to 5):
the format's checks, exact record lines from hand-made engine events (pkt-srcaddr/pkt-dstaddr
showing the ENI's translation, tcp-flags OR-ed, flow-direction, traffic-path, version as the
highest version used), the traffic-path of a lab plan's routes, and ``hyperplane flowlogs``
reading a custom-format file by its header. Pure Python: no privileges, no namespaces."""
from __future__ import annotations

import json
import os

import pytest

from hyperplane import cli, labconfig, paths
from hyperplane import topology as hplab
from hyperplane.datapath import flowlogs as fl
from hyperplane.engine.types import Event, Tuple5
from hyperplane.labconfig import flowformat
from hyperplane.observe.flowlogs import read_records
from kit.labs import NATGW

ACCT = "123456789012"
ENI = "eni-0a1b2c3d4e5f60718"
ENI4, ENV4, SRV4 = "198.18.1.4", "198.19.0.2", "198.18.1.5"
ENI6, ENV6, SRV6 = "2001:2:0:1::4", "2001:2:0:f000::2", "2001:2:0:1::5"
T0, B = 1_700_000_000.4, 1_700_000_000
V5 = ("${version} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} "
      "${packets} ${bytes} ${action} ${tcp-flags} ${type} ${pkt-srcaddr} ${pkt-dstaddr} "
      "${vpc-id} ${subnet-id} ${instance-id} ${region} ${az-id} ${sublocation-type} "
      "${sublocation-id} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${flow-direction} "
      "${traffic-path} ${log-status}")


def flow(d_orig=(0, 0), d_reply=(0, 0), flags=(0, 0), proto="tcp", family=4, kind="flow",
         env_port=40000, nat_port=61000, srv_port=443) -> Event:
    env, srv, eni = (ENV4, SRV4, ENI4) if family == 4 else (ENV6, SRV6, ENI6)
    return Event(kind, 5.0, 1, family, proto, Tuple5(env, env_port, srv, srv_port),
                 Tuple5(srv, srv_port, eni, nat_port), "ESTABLISHED", ENI, 9, 900, 9, 900,
                 d_orig[0], d_orig[1], d_reply[0], d_reply[1], "", flags[0], flags[1])


def writer(tmp_path, fmt, path=1):
    return fl.FlowLogs(str(tmp_path / "fl"), interval=10, account_id=ACCT, start=T0,
                       record_format=fmt, vpc_id="vpc-0a1b2c3d4e5f60718", region="eu-west-1",
                       az_id="euw1-az2", traffic_path=lambda eni, subnet, dst: path)


def lines(w, eni=ENI):
    with open(os.path.join(w.directory, fl.file_name(eni))) as f:
        return f.read().splitlines()


SUBNETS = {ENI: "subnet-a"}


# ---- record lines -----------------------------------------------------------------------------
def test_custom_records_show_the_translation_flags_direction_and_path(tmp_path):
    w = writer(tmp_path, V5)
    w.add([flow(d_orig=(3, 180), d_reply=(2, 120), flags=(2, 18))])
    w.add([flow(d_orig=(1, 52), flags=(1, 0), kind="destroy")])   # the rest: a FIN out
    assert w.write(B + 10, {ENI: [ENI4]}, eni_subnets=SUBNETS) == 2
    meta = "vpc-0a1b2c3d4e5f60718 subnet-a - eu-west-1 euw1-az2 - - - -"
    assert lines(w) == [
        " ".join(n[2:-1] for n in V5.split()),   # the header names the fields
        # what the ENI sent: srcaddr is the ENI, pkt-srcaddr the environment (before the NAT)
        f"5 {ENI} {ENI4} {SRV4} 61000 443 6 4 232 ACCEPT 3 IPv4 {ENV4} {SRV4} {meta} egress "
        "1 OK",
        # what it received: dstaddr is the ENI, pkt-dstaddr the environment (after it)
        f"5 {ENI} {SRV4} {ENI4} 443 61000 6 2 120 ACCEPT 18 IPv4 {SRV4} {ENV4} {meta} ingress "
        "- OK",
    ]


def test_ipv6_udp_records_and_tcp_flags_zero(tmp_path):
    w = writer(tmp_path, "${type} ${srcaddr} ${pkt-srcaddr} ${pkt-dstaddr} ${tcp-flags} "
                         "${flow-direction}")
    w.add([flow(d_orig=(1, 60), d_reply=(1, 60), proto="udp", family=6)])
    w.write(B + 10, {ENI: [ENI4, ENI6]})
    assert lines(w)[1:] == [f"IPv6 {ENI6} {ENV6} {SRV6} 0 egress",
                            f"IPv6 {SRV6} {SRV6} {ENV6} 0 ingress"]


def test_version_is_the_highest_among_the_fields_and_the_default_stays_v2(tmp_path):
    assert flowformat.version_of(flowformat.parse_format("")) == 2
    assert flowformat.version_of(flowformat.parse_format("${srcaddr} ${dstaddr}")) == 2
    assert flowformat.version_of(flowformat.parse_format("${srcaddr} ${tcp-flags}")) == 3
    assert flowformat.version_of(flowformat.parse_format("${az-id} ${vpc-id}")) == 4
    assert flowformat.version_of(flowformat.parse_format("${version} ${traffic-path}")) == 5
    w = writer(tmp_path, "${version} ${srcaddr} ${pkt-srcaddr}")
    w.add([flow(d_orig=(1, 60))])
    w.write(B + 10, {ENI: [ENI4]})
    assert lines(w) == ["version srcaddr pkt-srcaddr", f"3 {ENI4} {ENV4}"]
    # the default format written out is the default format, byte for byte
    a, b = writer(tmp_path / "a", ""), writer(tmp_path / "b", flowformat.default_format())
    for x in (a, b):
        x.add([flow(d_orig=(1, 60))])
        x.write(B + 10, {ENI: [ENI4]})
    assert lines(a) == lines(b) and lines(a)[0] == fl.HEADER


def test_nodata_fills_the_interfaces_own_fields_and_dashes_the_rest(tmp_path):
    w = writer(tmp_path, "${version} ${interface-id} ${subnet-id} ${srcaddr} ${tcp-flags} "
                         "${flow-direction} ${start} ${end} ${log-status}")
    w.write(B + 10, {ENI: [ENI4]}, eni_subnets=SUBNETS)
    assert lines(w)[1:] == [f"5 {ENI} subnet-a - - - {B} {B + 10} NODATA"]


def test_tcp_flags_are_ored_over_the_interval_per_direction(tmp_path):
    w = writer(tmp_path, "${srcaddr} ${packets} ${tcp-flags}")
    w.add([flow(d_orig=(1, 60), d_reply=(1, 60), flags=(2, 18))])
    w.add([flow(d_orig=(1, 52), d_reply=(1, 52), flags=(1, 1), kind="destroy")])
    w.write(B + 10, {ENI: [ENI4]})
    assert lines(w)[1:] == [f"{ENI4} 2 3", f"{SRV4} 2 19"]


def test_rejects_show_the_environment_as_pkt_srcaddr_on_the_way_out(tmp_path):
    w = writer(tmp_path, "${srcaddr} ${srcport} ${dstaddr} ${pkt-srcaddr} ${pkt-dstaddr} "
                         "${action} ${flow-direction} ${tcp-flags}")
    w.add([Event("reject", 5.0, 0, 4, "tcp", Tuple5(ENV4, 40001, "198.18.2.9", 443), None, "",
                 ENI, 1, 60, 0, 0, reason="security_group"),
           Event("reject", 5.0, 0, 4, "udp", Tuple5(SRV4, 9000, ENI4, 500), None, "", ENI,
                 0, 0, 1, 33, reason="unsolicited")])
    w.write(B + 10, {ENI: [ENI4]})
    assert sorted(lines(w)[1:]) == sorted([
        f"{ENI4} 40001 198.18.2.9 {ENV4} 198.18.2.9 REJECT egress 0",
        f"{SRV4} 9000 {ENI4} {SRV4} {ENI4} REJECT ingress 0"])


# ---- traffic-path from a lab's routes ---------------------------------------------------------
def test_traffic_path_follows_the_subnets_route_table():
    plan = labconfig.resolve(labconfig.loads(NATGW), "tp")
    web = plan.internet_hosts[0].ipv4.split("/")[0]
    assert fl.traffic_path(plan, "subnet-private", "198.18.2.7") == 1       # in the VPC
    assert fl.traffic_path(plan, "subnet-private", web) == 1                # via the NAT gw
    assert fl.traffic_path(plan, "subnet-public", web) == 2                 # via the IGW
    assert fl.traffic_path(plan, "subnet-private", web, nat_gateway=True) == 2
    assert fl.traffic_path(plan, "subnet-private", "2001:2:0:99::1") is None   # no route


# ---- the format's checks in the lab file ------------------------------------------------------
def flow_logs(**kv) -> str:
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items())
    return labconfig.default_text() + "\n[flow_logs]\n" + body


@pytest.mark.parametrize("fmt, words", [
    ("${srcadr} ${dstaddr}", ["${srcadr} is not a flow-log field", "did you mean ${srcaddr}",
                              "known fields: version, account-id", "traffic-path"]),
    ("${ecs-task-id}", ["cannot be filled in a lab", "Amazon ECS", "leave it out"]),
    ("${reject-reason}", ["cannot be filled", "after version 5"]),
    ("${srcaddr}${dstaddr}", ["separate the fields with spaces", '"${srcaddr} ${dstaddr}"']),
    ("srcaddr dstaddr", ["'srcaddr' is not a field", "write ${srcaddr}"]),
    ("${srcaddr},${dstaddr}", ["separate the fields with spaces"]),
    ("${version} ${version}", ["listed twice"]),
    ("$srcaddr", ["write each field as ${name}"]),
])
def test_bad_formats_name_the_field_the_problem_and_the_fix(fmt, words):
    with pytest.raises(labconfig.LabConfigError) as e:
        labconfig.loads(flow_logs(format=fmt))
    assert e.value.field == "flow_logs.format", str(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("key, value, words", [
    ("format", 5, ["must be a string"]),
    ("region", "us-east", ["not an AWS region name"]),
    ("az_id", "us-east-1a", ["not an Availability Zone id", "not a zone name"]),
])
def test_bad_format_settings_name_the_field(key, value, words):
    with pytest.raises(labconfig.LabConfigError) as e:
        labconfig.loads(flow_logs(**{key: value}))
    assert e.value.field == f"flow_logs.{key}"
    for w in words:
        assert w in str(e.value)


def test_format_region_and_az_reach_the_plan_and_round_trip():
    c = labconfig.loads(flow_logs(format="  ${srcaddr}   ${pkt-srcaddr} ", region="eu-west-1",
                                  az_id="euw1-az2"))
    p = labconfig.resolve(c, "x")
    assert (p.flow_logs.format, p.flow_logs.region, p.flow_logs.az_id) == \
        ("${srcaddr} ${pkt-srcaddr}", "eu-west-1", "euw1-az2")
    assert labconfig.Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    d = labconfig.resolve(labconfig.default(), "x").flow_logs
    assert (d.format, d.region, d.az_id) == ("", "us-east-1", "use1-az1")


# ---- reading custom-format files --------------------------------------------------------------
def test_custom_records_parse_back_by_the_files_header(tmp_path):
    w = writer(tmp_path, "${interface-id} ${srcaddr} ${pkt-srcaddr} ${tcp-flags} ${start} "
                         "${action} ${traffic-path}")
    w.add([flow(d_orig=(1, 60), d_reply=(1, 60), flags=(2, 18))])
    w.write(B + 10, {ENI: [ENI4]})
    recs = read_records(w.directory)
    assert [(r.srcaddr, r.pkt_srcaddr, r.tcp_flags, r.traffic_path) for r in recs] == [
        (ENI4, ENV4, 2, 1), (SRV4, SRV4, 18, None)]
    assert recs[0].as_json() == {"interface-id": ENI, "srcaddr": ENI4, "pkt-srcaddr": ENV4,
                                 "tcp-flags": 2, "start": B, "action": "ACCEPT",
                                 "traffic-path": 1}
    assert [r.line() for r in recs] == lines(w)[1:]
    # a format without interface-id: the file names the ENI
    w2 = writer(tmp_path / "2", "${srcaddr}")
    w2.add([flow(d_orig=(1, 60))])
    w2.write(B + 10, {ENI: [ENI4]})
    (r,) = read_records(w2.directory)
    assert r.interface_id == ENI and r.line() == ENI4


def test_cli_prints_the_custom_format_with_its_header_and_refuses_action_without_it(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path / "run"))
    fmt = "${interface-id} ${srcaddr} ${pkt-srcaddr} ${flow-direction}"
    plan = labconfig.resolve(labconfig.loads(flow_logs(format=fmt)), "fl-custom")
    hplab.save_state("fl-custom", {"plan": plan.to_dict()}, create=True)
    w = fl.FlowLogs(os.path.join(paths.lab_dir("fl-custom"), "flowlogs"), interval=10,
                    account_id=ACCT, start=T0, record_format=plan.flow_logs.format)
    w.add([flow(d_orig=(1, 60), d_reply=(1, 60))])
    w.write(B + 10, {ENI: [ENI4]})
    assert cli.main(["flowlogs", "--name", "fl-custom"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["interface-id srcaddr pkt-srcaddr flow-direction",
                   f"{ENI} {ENI4} {ENV4} egress", f"{ENI} {SRV4} {SRV4} ingress"]
    assert cli.main(["flowlogs", "--name", "fl-custom", "--json"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert objs[0] == {"interface-id": ENI, "srcaddr": ENI4, "pkt-srcaddr": ENV4,
                       "flow-direction": "egress"}
    code = cli.main(["flowlogs", "--name", "fl-custom", "--action", "accept"])
    err = capsys.readouterr().err
    assert code != 0 and "--action" in err and "${action}" in err
