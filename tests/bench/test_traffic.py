"""hp-traffic (``hyperplane.bench.traffic``), the C traffic generator of ``hyperplane bench``, on a
kernel-only topology: two namespaces joined by one veth, nothing in between. Proves the tool
counts exactly before the benchmark relies on its figures. No timing assertions: rates are only
printed by the tool, never compared with a threshold here.

    A (hpa0)  198.18.200.1/24  2001:2:0:c8::1/64  <--veth-->  B (hpb0)  198.18.200.2/24  2001:2:0:c8::2/64
"""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from typing import NamedTuple

import pytest

from hyperplane import netns
from hyperplane.bench import traffic as tr
from kit import traffic as nt, wire

PROBLEM = netns.privilege_problem()
needs_netns = pytest.mark.skipif(PROBLEM is not None, reason=f"network namespaces: {PROBLEM}")

ADDR = nt.PAIR_ADDR
NOBODY = {4: "198.18.200.3", 6: "2001:2:0:c8::3"}  # on the link, but no host answers
FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])


class Topo(NamedTuple):
    a: str  # namespace names
    b: str
    mac_b: str  # B's end of the veth


@pytest.fixture(scope="module")
def topo():
    if PROBLEM is not None:
        pytest.skip(f"network namespaces: {PROBLEM}")
    with nt.veth_pair(f"hpt-{os.getpid()}-{secrets.token_hex(2)}-") as (a, b, _, mac_b):
        yield Topo(a, b, mac_b)


def _in(ns: str, sub: str, **opts) -> list:
    return tr.in_netns(ns, tr.argv(sub, **opts))


# ---- UDP ---------------------------------------------------------------------------------------
@needs_netns
@pytest.mark.parametrize("family,size", [(4, 64), (6, 200)], ids=["v4", "v6"])
def test_paced_udp_arrives_complete(topo, family, size):
    dst = ADDR[family][1]
    with tr.Server(_in(topo.b, "udp-sink", bind=dst, port=9000, seconds=20,
                       idle_ms=1000)) as sink:
        sent = tr.run(_in(topo.a, "udp-send", dst=dst, port=9000, rate=20000, seconds=0.5,
                          size=size), timeout=30)
        got = sink.result(timeout=30)
    assert sent["sent"] == 10000 and sent["errors"] == 0 and sent["target"] == 20000
    assert got["packets"] == sent["sent"]          # no loss on a direct veth at this rate
    assert got["bytes"] == got["packets"] * size
    assert got["rcvbuf_drops"] == 0
    assert 0 < got["seconds"] and 0 < got["rate"] and 0 < sent["rate"]


def _quarter_second_at_4k(topo, port: int, **send_opts):
    """1,000 datagrams of 64 bytes from a to b (0.25 s at 4,000/s): (sender's, sink's) result."""
    dst = ADDR[4][1]
    with tr.Server(_in(topo.b, "udp-sink", bind=dst, port=port, seconds=20)) as sink:
        sent = tr.run(_in(topo.a, "udp-send", dst=dst, port=port, rate=4000, seconds=0.25,
                          **send_opts), timeout=30)
        return sent, sink.result(timeout=30)


@needs_netns
def test_udp_flows_use_distinct_source_ports_and_all_arrive(topo):
    sent, got = _quarter_second_at_4k(topo, 9001, flows=4)
    assert sent["sent"] == 1000 and sent["flows"] == 4
    assert got["packets"] == 1000 and got["bytes"] == 64000


@needs_netns
def test_one_dst_port_is_the_default_and_counts_exactly(topo):
    sent, got = _quarter_second_at_4k(topo, 9004, dst_ports=1)
    assert sent["sent"] == 1000 and sent["errors"] == 0 and sent["dst_ports"] == 1
    assert got["packets"] == 1000 and got["bytes"] == 64000


@needs_netns
@FAMILIES
def test_dst_ports_spread_packets_over_consecutive_ports(topo, family):
    """--dst-ports 8: packet i goes to port + i % 8, so each of 8 sinks bound on the 8 ports
    gets exactly its eighth (a sink that got everything, or nothing, would fail)."""
    dst, base, n = ADDR[family][1], 9500, 8
    with contextlib.ExitStack() as stack:
        sinks = [stack.enter_context(tr.Server(_in(topo.b, "udp-sink", bind=dst, port=base + i,
                                                   seconds=20, idle_ms=1000)))
                 for i in range(n)]
        sent = tr.run(_in(topo.a, "udp-send", dst=dst, port=base, rate=8000, seconds=0.5,
                          dst_ports=n), timeout=30)
        got = [s.result(timeout=30) for s in sinks]
    assert sent["sent"] == 4000 and sent["errors"] == 0 and sent["dst_ports"] == n
    assert [g["packets"] for g in got] == [500] * n
    assert [g["bytes"] for g in got] == [500 * 64] * n


@needs_netns
def test_dst_ports_to_closed_ports_count_no_errors(topo):
    """With several destination ports the socket is unconnected, so the ICMP port unreachable
    replies fail no send (a connected socket's next send gets ECONNREFUSED: see
    test_send_errors_are_counted_not_fatal): every datagram counts as sent."""
    res = tr.run(_in(topo.a, "udp-send", dst=ADDR[4][1], port=9600, rate=2000, seconds=0.5,
                     dst_ports=100), timeout=30)
    assert res["sent"] == 1000 and res["errors"] == 0 and res["dst_ports"] == 100


@needs_netns
@pytest.mark.parametrize("family,size", [(4, 64), (6, 200), (4, 1472), (6, 1452)],
                         ids=["v4", "v6", "v4-largest", "v6-largest"])
def test_link_frames_arrive_complete_with_checksums_the_receiver_accepts(topo, family, size):
    """--link: prebuilt Ethernet frames on a packet socket. They come with no checksum offload
    (CHECKSUM_NONE), so B's kernel verifies the IP header and UDP checksums of every one: a
    wrong checksum, length or address would be dropped there and the count would not match."""
    dst = ADDR[family][1]
    before = wire.csum_error_counters(topo.b)
    with tr.Server(_in(topo.b, "udp-sink", bind=dst, port=9010, seconds=20,
                       idle_ms=1000)) as sink:
        sent = tr.run(_in(topo.a, "udp-send", dst=dst, port=9010, rate=8000, seconds=0.25,
                          size=size, flows=3, link=nt.PAIR_IF[0], next_hop_mac=topo.mac_b),
                      timeout=30)
        got = sink.result(timeout=30)
    assert sent["frames"] is True and sent["flows"] == 3
    assert sent["sent"] == 2000 and sent["errors"] == 0
    assert got["packets"] == 2000 and got["bytes"] == 2000 * size
    assert wire.csum_error_counters(topo.b) == before


@needs_netns
def test_link_frames_carry_each_flows_source_port(topo):
    """Each flow's frame leaves from the port its UDP socket holds: with --src-port 41000 and
    2 flows, B sees exactly the peers (A, 41000) and (A, 41001), 200 datagrams in all (flows
    take turns per send call, and a late wake-up sends several due packets in one call, so the
    split need not be even)."""
    import socket

    dst = ADDR[4][1]
    with netns.entered(topo.b):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((dst, 9011))
        sock.settimeout(5)
        res = tr.run(_in(topo.a, "udp-send", dst=dst, port=9011, rate=2000, seconds=0.1,
                         flows=2, src_port=41000, link=nt.PAIR_IF[0],
                         next_hop_mac=topo.mac_b), timeout=30)
        peers: dict = {}
        for _ in range(res["sent"]):
            _, peer = sock.recvfrom(2048)
            peers[peer] = peers.get(peer, 0) + 1
    assert res["frames"] is True and res["src_port"] == 41000 and res["sent"] == 200
    assert set(peers) == {(ADDR[4][0], 41000), (ADDR[4][0], 41001)}
    assert sum(peers.values()) == 200


@needs_netns
@FAMILIES
def test_src_port_binds_the_source_port(topo, family):
    dst = ADDR[family][1]
    with tr.Server(_in(topo.b, "udp-sink", bind=dst, port=9005, seconds=20)) as sink:
        first = tr.run(_in(topo.a, "udp-send", dst=dst, port=9005, rate=2000, seconds=0.1,
                           src_port=40123), timeout=30)
        again = tr.run(_in(topo.a, "udp-send", dst=dst, port=9005, rate=2000, seconds=0.1,
                           src_port=40123, dst_ports=3), timeout=30)   # the port is free again
        got = sink.result(timeout=30)
    assert first["src_port"] == 40123 and again["src_port"] == 40123
    assert first["sent"] == 200 and again["sent"] == 200
    assert got["packets"] == 200 + 67      # packets 0, 3, ..., 198 of the second run


@needs_netns
@FAMILIES
def test_unpaced_udp_sends_more_than_paced(topo, family):
    dst = ADDR[family][1]
    with tr.Server(_in(topo.b, "udp-sink", bind=dst, port=9002, seconds=20)) as sink:
        fast = tr.run(_in(topo.a, "udp-send", dst=dst, port=9002, rate=0, seconds=0.5),
                      timeout=30)
        got = sink.result(timeout=30)
    print(f"unpaced IPv{family}: {fast} -> {got}")
    assert fast["target"] == 0
    assert fast["sent"] > 10000                    # a 20,000 pps paced run sends 10,000
    assert fast["errors"] >= 0
    assert 0 < got["packets"] <= fast["sent"]
    assert got["packets"] + got["rcvbuf_drops"] <= fast["sent"]


@needs_netns
@FAMILIES
def test_send_errors_are_counted_not_fatal(topo, family):
    """Nobody listens: ICMP port unreachable makes the connected socket's next send fail with
    ECONNREFUSED. Every datagram is either sent or counted as an error, and the run ends 0."""
    res = tr.run(_in(topo.a, "udp-send", dst=ADDR[family][1], port=9, rate=2000, seconds=0.5),
                 timeout=30)
    assert res["errors"] > 0
    assert res["sent"] + res["errors"] == 1000


@needs_netns
def test_sink_stops_on_sigterm_with_its_counts(topo):
    with tr.Server(_in(topo.b, "udp-sink", bind="0.0.0.0", port=9003, seconds=60)) as sink:
        res = sink.stop(timeout=5)
        assert sink.proc.returncode == 0
    assert res == {"packets": 0, "bytes": 0, "seconds": 0.0, "rate": 0.0, "rcvbuf_drops": 0}


# ---- TCP ---------------------------------------------------------------------------------------
@needs_netns
@FAMILIES
def test_conn_rate_completes_every_connection(topo, family):
    dst = ADDR[family][1]
    with tr.Server(_in(topo.b, "tcp-server", bind=dst, port=9100)) as srv:
        res = tr.run(_in(topo.a, "conn-rate", dst=dst, port=9100, count=2000), timeout=60)
        counts = srv.stop()
    print(f"conn-rate IPv{family}: {res}")
    assert res["completed"] == 2000 and res["failed"] == 0 and res["concurrency"] == 64
    assert counts["accepted"] == 2000 and counts["bytes"] == 2000   # one byte echoed each
    assert res["rate"] > 0


@needs_netns
@FAMILIES
def test_conn_rate_to_a_closed_port_fails_every_attempt(topo, family):
    res = tr.run(_in(topo.a, "conn-rate", dst=ADDR[family][1], port=9101, count=300,
                     seconds=10), timeout=30)
    assert res["failed"] == 300 and res["completed"] == 0 and res["rate"] == 0


@needs_netns
def test_conn_rate_is_bounded_by_seconds_when_nothing_answers(topo):
    """No host behind the address: connects neither succeed nor get refused quickly. The run
    ends at --seconds and the unfinished attempts (in flight or never started) count as
    failed."""
    res = tr.run(_in(topo.a, "conn-rate", dst=NOBODY[4], port=9102, count=500, concurrency=8,
                     seconds=1), timeout=20)
    assert res["completed"] == 0 and res["failed"] == 500
    assert res["unstarted"] > 0


@needs_netns
@FAMILIES
def test_rr_latency_percentiles(topo, family):
    dst = ADDR[family][1]
    with tr.Server(_in(topo.b, "tcp-server", bind=dst, port=9200)) as srv:
        res = tr.run(_in(topo.a, "rr", dst=dst, port=9200, count=500, warmup=20), timeout=60)
        big = tr.run(_in(topo.a, "rr", dst=dst, port=9200, count=20, size=100000, warmup=0),
                     timeout=60)
        counts = srv.stop()
    print(f"rr IPv{family}: {res}")
    assert res["count"] == 500
    assert 0 < res["min_us"] <= res["p50_us"] <= res["p90_us"] <= res["p99_us"] <= res["max_us"]
    assert res["min_us"] <= res["mean_us"] <= res["max_us"]
    assert big["count"] == 20                    # responses spanning many reads are whole
    assert counts["accepted"] == 2
    assert counts["bytes"] == 520 * 64 + 20 * 100000


@needs_netns
def test_server_that_cannot_bind_raises_with_its_stderr(topo):
    with pytest.raises(tr.TrafficError, match="Cannot assign requested address"):
        tr.Server(_in(topo.b, "tcp-server", bind=NOBODY[4], port=9300))


@needs_netns
def test_server_is_gone_after_the_with_block(topo):
    with tr.Server(_in(topo.b, "tcp-server", bind="::", port=9301)) as srv:
        pid = srv.proc.pid
    assert srv.proc.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ---- no namespace needed -----------------------------------------------------------------------
@pytest.mark.parametrize("args,option", [
    (["udp-send", "--port", "9", "--rate", "1", "--seconds", "1"], "--dst"),
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "lots", "--seconds", "1"],
     "--rate"),
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "1", "--seconds", "1",
      "--size", "0"], "--size"),
    (["udp-send", "--dst", "2001:2::1", "--port", "9", "--rate", "1", "--seconds", "1",
      "--size", "1453"], "--size"),                 # 1452 is the IPv6 maximum
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "1", "--seconds", "1",
      "--dst-ports", "0"], "--dst-ports"),
    (["udp-send", "--dst", "198.18.200.2", "--port", "65000", "--rate", "1", "--seconds", "1",
      "--dst-ports", "1000"], "--dst-ports"),       # 65000 + 999 is past 65535
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "1", "--seconds", "1",
      "--src-port", "70000"], "--src-port"),
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "1", "--seconds", "1",
      "--src-port", "65535", "--flows", "2"], "--src-port"),
    (["udp-sink", "--bind", "localhost", "--port", "9"], "--bind"),   # numeric only
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "1", "--seconds", "1",
      "--link", "eth0"], "--next-hop-mac"),         # the two go together
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "1", "--seconds", "1",
      "--link", "eth0", "--next-hop-mac", "02:00:00:00:00"], "--next-hop-mac"),
    (["udp-send", "--dst", "198.18.200.2", "--port", "9", "--rate", "1", "--seconds", "1",
      "--link", "eth0", "--next-hop-mac", "02:00:00:00:00:01", "--dst-ports", "2"], "--link"),
    (["conn-rate", "--dst", "198.18.200.2", "--port", "9", "--count", "10", "--bogus", "1"],
     "--bogus"),
    (["rr", "--dst", "198.18.200.2", "--port", "70000"], "--port"),
    (["tcp-server", "--bind", "198.18.200.2", "--port", "9", "--cpu", "x"], "--cpu"),
])
def test_bad_arguments_exit_2_naming_the_option(args, option):
    proc = subprocess.run([tr.tool_path()] + args, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2, proc.stderr
    assert option in proc.stderr
    assert proc.stdout == ""


def test_unknown_subcommand_exits_2():
    proc = subprocess.run([tr.tool_path(), "udp-flood"], capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 2 and "udp-flood" in proc.stderr


def test_argv_and_in_netns():
    tool = tr.tool_path()
    assert tr.argv("udp-sink", bind="198.18.200.2", port=9, idle_ms=50, cpu=None) == [
        tool, "udp-sink", "--bind", "198.18.200.2", "--port", "9", "--idle-ms", "50"]
    assert tr.in_netns("ns1", ["x", "y"]) == ["ip", "netns", "exec", "ns1", "x", "y"]


@needs_netns
def test_run_kills_a_client_past_its_timeout(topo):
    with pytest.raises(tr.TrafficError, match="did not finish within"):
        tr.run(_in(topo.b, "udp-sink", bind=ADDR[4][1], port=9400, seconds=30), timeout=0.5)


def test_run_reports_a_failing_client_with_its_stderr():
    with pytest.raises(tr.TrafficError, match="--size"):
        tr.run(tr.argv("udp-send", dst="127.0.0.1", port=9, rate=1, seconds=1, size=0),
               timeout=10)


def test_tool_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    first = tr.tool_path()
    assert os.path.dirname(first) == str(tmp_path / ".tools")
    assert os.path.basename(first).startswith("hp-traffic-")
    mtime = os.stat(first).st_mtime_ns
    assert tr.tool_path() == first
    assert os.stat(first).st_mtime_ns == mtime      # reused, not rebuilt
    assert sorted(os.listdir(tmp_path / ".tools")) == [os.path.basename(first)]  # no temp left


def test_editing_any_source_file_or_the_header_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CC", raising=False)
    assert {s.suffix for s in tr.SOURCES} == {".c", ".h"}
    src = tmp_path / "tools"
    src.mkdir()
    copies = []
    for s in tr.SOURCES:
        (src / s.name).write_bytes(s.read_bytes())
        copies.append(src / s.name)
    monkeypatch.setattr(tr, "SOURCES", tuple(copies))
    seen = {tr.tool_path()}
    for name in ("hp_traffic.h", "hp_traffic_udp.c"):   # the header is hashed, not compiled
        with open(src / name, "a") as f:
            f.write("/* edited */\n")
        path = tr.tool_path()
        assert path not in seen
        seen.add(path)


def test_the_cache_is_no_lab_name_and_old_builds_are_tidied(tmp_path, monkeypatch):
    from hyperplane.labconfig import LabConfigError, validate_lab_name

    with pytest.raises(LabConfigError):             # no lab can ever own the cache's directory
        validate_lab_name(tr.CACHE)
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    legacy = tmp_path / "tools"                     # the cache of earlier versions
    legacy.mkdir()
    (legacy / "hp-traffic-0123456789ab").write_bytes(b"old")
    cache = tmp_path / tr.CACHE
    cache.mkdir()
    stale, recent = cache / "hp-traffic-aaaaaaaaaaaa", cache / "hp-traffic-bbbbbbbbbbbb"
    for p in (stale, recent):
        p.write_bytes(b"other build")
    day_ago = time.time() - tr.PRUNE_AFTER_S - 60
    os.utime(stale, (day_ago, day_ago))
    path = tr.tool_path()
    assert not legacy.exists()                      # a lab may be named "tools" now
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(path), recent.name])


def test_a_lab_directory_named_tools_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "state.json").write_text("{}")   # a lab called "tools"
    tr.tool_path()
    assert (tmp_path / "tools" / "state.json").exists()


def test_broken_compiler_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(tr.TrafficError, match="failed"):
        tr.tool_path()
    assert os.listdir(tmp_path / ".tools") == []    # no half-built binary left behind


def test_missing_compiler_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "hp-no-such-compiler")
    with pytest.raises(tr.TrafficError, match="apt-get install gcc"):
        tr.tool_path()
