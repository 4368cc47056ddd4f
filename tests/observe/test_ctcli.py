"""`hyperplane conntrack list|events|flush|count`: conntrack-tools' formats, checked two ways.

Unit tests pin the exact lines (libnetfilter_conntrack's default format: protocol name padded
to 8 and its number, timeout, TCP state, orig tuple and counters, [UNREPLIED], reply tuple
and counters, [ASSURED], mark, use; events behind a right-aligned 9-column tag) and the option
checks, without root.

Lab tests (root; one module-scoped default lab, the root conftest's ``dlab``) send
real traffic (a TCP connection from fn-a-0, UDP over IPv6 and IPv4 from fn-b-0, an unsolicited
datagram from the server) and check what the commands print against what the test's own
sockets saw: the client's port in the orig tuple, the NAT port the server saw in the reply
tuple, the datagrams' sizes in the byte counters.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional

import pytest

from hyperplane import cli, errors, netns
from hyperplane.lab import lifecycle
from hyperplane.observe import conntrack as ctcli
from kit import REPO, traffic as nt
from kit.labs import bare, wait_until

ENI_ID = "eni-0a1b2c3d4e5f60718"


def tcp4(**kw) -> dict:
    d = {"family": 4, "proto": "tcp", "state": "ESTABLISHED", "timeout": 349.73,
         "orig": {"src": "198.19.0.2", "sport": 46490, "dst": "198.18.1.5", "dport": 8080},
         "reply": {"src": "198.18.1.5", "sport": 8080, "dst": "198.18.1.4", "dport": 52113},
         "eni": ENI_ID, "eni_id": ENI_ID, "packets_orig": 4, "bytes_orig": 218,
         "packets_reply": 3, "bytes_reply": 169}
    d.update(kw)
    return d


def udp6(**kw) -> dict:
    d = {"family": 6, "proto": "udp", "state": "UNREPLIED", "timeout": 29.2,
         "orig": {"src": "2001:2:0:f001::2", "sport": 55663, "dst": "2001:2:0:1::5",
                  "dport": 9999},
         "reply": {"src": "2001:2:0:1::5", "sport": 9999, "dst": "2001:2:0:1::4",
                   "dport": 55663},
         "eni": ENI_ID, "eni_id": ENI_ID, "packets_orig": 1, "bytes_orig": 52,
         "packets_reply": 0, "bytes_reply": 0}
    d.update(kw)
    return d


T4_ORIG = "src=198.19.0.2 dst=198.18.1.5 sport=46490 dport=8080"
T4_REPLY = "src=198.18.1.5 dst=198.18.1.4 sport=8080 dport=52113"
U6_ORIG = "src=2001:2:0:f001::2 dst=2001:2:0:1::5 sport=55663 dport=9999"
U6_REPLY = "src=2001:2:0:1::5 dst=2001:2:0:1::4 sport=9999 dport=55663"


# ---- list lines -----------------------------------------------------------------------------------
def test_tcp_ipv4_established_line():
    assert ctcli.format_entry(tcp4()) == (
        f"tcp      6 349 ESTABLISHED {T4_ORIG} packets=4 bytes=218 {T4_REPLY} packets=3 "
        f"bytes=169 [ASSURED] mark=0 use=1 eni={ENI_ID}")


def test_udp_ipv6_unreplied_line_has_no_state_and_flags_the_orig_side():
    assert ctcli.format_entry(udp6()) == (
        f"udp      17 29 {U6_ORIG} packets=1 bytes=52 [UNREPLIED] {U6_REPLY} packets=0 "
        f"bytes=0 mark=0 use=1 eni={ENI_ID}")


def test_udp_replied_is_assured():
    line = ctcli.format_entry(udp6(state="REPLIED", packets_reply=1, bytes_reply=52,
                                   timeout=350.0))
    assert line == (f"udp      17 350 {U6_ORIG} packets=1 bytes=52 {U6_REPLY} packets=1 "
                    f"bytes=52 [ASSURED] mark=0 use=1 eni={ENI_ID}")


@pytest.mark.parametrize("state, packets_reply, flags", [
    ("SYN_SENT", 0, ["[UNREPLIED]"]),       # nothing came back yet
    ("SYN_RECV", 1, []),                    # the SYN/ACK came back: not yet assured
    ("ESTABLISHED", 2, ["[ASSURED]"]),
    ("FIN_WAIT", 3, ["[ASSURED]"]),
    ("TIME_WAIT", 4, ["[ASSURED]"]),
    ("CLOSE", 1, []),                       # e.g. a RST answered the SYN
])
def test_tcp_flags_follow_the_kernel(state, packets_reply, flags):
    toks = ctcli.format_entry(tcp4(state=state, packets_reply=packets_reply)).split()
    assert [t for t in toks if t.startswith("[")] == flags
    assert toks[3] == state
    if flags == ["[UNREPLIED]"]:    # right after the orig tuple's counters
        assert toks[toks.index("[UNREPLIED]") - 1].startswith("bytes=")
        assert toks[toks.index("[UNREPLIED]") + 1] == "src=198.18.1.5"


def test_extended_prefixes_the_layer3_protocol():
    assert ctcli.format_entry(tcp4(), extended=True).startswith(
        "ipv4     2 tcp      6 349 ESTABLISHED src=198.19.0.2 ")
    assert ctcli.format_entry(udp6(), extended=True).startswith(
        "ipv6     10 udp      17 29 src=2001:2:0:f001::2 ")


def test_timeout_is_whole_seconds_never_negative_and_nat_gateway_is_named():
    assert ctcli.format_entry(tcp4(timeout=0.99)).split()[2] == "0"
    assert ctcli.format_entry(tcp4(timeout=-0.5)).split()[2] == "0"
    line = ctcli.format_entry(tcp4(nat_gateway="nat-0123456789abcdef0"))
    assert line.endswith(f"mark=0 use=1 eni={ENI_ID} nat-gateway=nat-0123456789abcdef0")


# ---- event lines ----------------------------------------------------------------------------------
def ev(kind, **kw) -> dict:
    d = tcp4(kind=kind, id=7, time=12.5, reason="", timeout=None, packets_orig=0,
             bytes_orig=0, packets_reply=0, bytes_reply=0)
    del d["eni_id"]
    d.update(kw)
    return d


def test_new_update_destroy_lines():
    assert ctcli.format_event(ev("new", state="SYN_SENT", timeout=120.0)) == (
        f"    [NEW] tcp      6 120 SYN_SENT {T4_ORIG} [UNREPLIED] {T4_REPLY} eni={ENI_ID}")
    # UPDATE carries the counters from before the packet that changed the state: the SYN/ACK
    # is not counted yet, but the state says a reply came
    assert ctcli.format_event(ev("update", state="SYN_RECV", timeout=60.0,
                                 packets_orig=1, bytes_orig=60)) == (
        f" [UPDATE] tcp      6 60 SYN_RECV {T4_ORIG} {T4_REPLY} eni={ENI_ID}")
    assert ctcli.format_event(ev("update", state="ESTABLISHED", timeout=350.0)) == (
        f" [UPDATE] tcp      6 350 ESTABLISHED {T4_ORIG} {T4_REPLY} [ASSURED] eni={ENI_ID}")
    assert ctcli.format_event(ev("destroy", state="ESTABLISHED", reason="deleted",
                                 packets_orig=3, bytes_orig=164, packets_reply=2,
                                 bytes_reply=112)) == (
        f"[DESTROY] tcp      6 {T4_ORIG} packets=3 bytes=164 {T4_REPLY} packets=2 bytes=112 "
        f"[ASSURED] eni={ENI_ID}")


def test_udp_events_and_an_unreplied_destroy():
    u = udp6(kind="new", id=3, timeout=30.0)
    del u["eni_id"]
    assert ctcli.format_event(u) == (
        f"    [NEW] udp      17 30 {U6_ORIG} [UNREPLIED] {U6_REPLY} eni={ENI_ID}")
    u.update(kind="update", state="REPLIED", timeout=350.0)
    assert ctcli.format_event(u) == (
        f" [UPDATE] udp      17 350 {U6_ORIG} {U6_REPLY} [ASSURED] eni={ENI_ID}")
    u.update(kind="destroy", state="UNREPLIED", timeout=None)
    assert ctcli.format_event(u) == (
        f"[DESTROY] udp      17 {U6_ORIG} packets=1 bytes=52 [UNREPLIED] {U6_REPLY} "
        f"packets=0 bytes=0 eni={ENI_ID}")


def test_reject_line_is_our_extension():
    d = {"kind": "reject", "time": 3.0, "id": 0, "family": 4, "proto": "udp", "state": "",
         "orig": {"src": "198.18.1.5", "sport": 9000, "dst": "198.18.1.4", "dport": 41000},
         "reply": None, "eni": ENI_ID, "reason": "unsolicited", "timeout": None,
         "packets_orig": 0, "bytes_orig": 0, "packets_reply": 1, "bytes_reply": 33}
    assert ctcli.format_event(d) == (
        " [REJECT] udp      17 src=198.18.1.5 dst=198.18.1.4 sport=9000 dport=41000 "
        f"reason=unsolicited eni={ENI_ID}")
    assert ctcli.format_event(d, extended=True).startswith(" [REJECT] ipv4     2 udp      17 ")


def test_timestamp_extended_and_id_options():
    line = ctcli.format_event(ev("new", state="SYN_SENT", timeout=120.0),
                              timestamp=1700000000.012345, extended=True, show_id=True)
    assert line == (f"[1700000000.012345]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT "
                    f"{T4_ORIG} [UNREPLIED] {T4_REPLY} id=7 eni={ENI_ID}")
    before = time.time()
    stamp = ctcli.format_event(ev("new", state="SYN_SENT"), timestamp=True).split("\t")[0]
    assert re.fullmatch(r"\[\d+\.\d{6}\]", stamp)
    assert before - 1 <= float(stamp[1:-1]) <= time.time() + 1


# ---- the event stream, from a socket pair -----------------------------------------------------------
def _stream(lines: List[dict], close: bool = True, **kw):
    a, b = socket.socketpair()
    b.sendall(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    if close:
        b.close()
    out, err = io.StringIO(), io.StringIO()
    printer = ctcli.EventPrinter(out, err, **kw)
    return a, b, printer, out, err


def test_stream_prints_events_warns_on_loss_and_reports_the_end():
    evs = [ev("new", state="SYN_SENT", timeout=120.0), {"kind": "lost", "count": 5},
           ev("destroy", state="SYN_SENT")]
    a, _, printer, out, err = _stream(evs)
    with a, pytest.raises(ctcli.StreamEnded):
        ctcli.read_events(a, printer)
    lines = out.getvalue().splitlines()
    assert [ln.split()[0] for ln in lines] == ["[NEW]", "[DESTROY]"]
    assert printer.shown == 2 and printer.lost == 5
    assert err.getvalue().startswith("WARNING: We have hit ENOBUFS! We are losing events.\n5 ")


def test_stream_stops_after_count_and_json_prints_lines_unchanged():
    evs = [ev("new", state="SYN_SENT", timeout=120.0), ev("update", state="SYN_RECV")]
    a, b, printer, out, _ = _stream(evs, close=False, as_json=True)
    with a, b:
        assert ctcli.read_events(a, printer, count=1) == "count"
    assert [json.loads(x) for x in out.getvalue().splitlines()] == evs[:1]


def test_stream_timeout_returns_when_nothing_comes():
    a, b, printer, out, _ = _stream([], close=False)
    with a, b:
        assert ctcli.read_events(a, printer, count=3, timeout=0.05) == "timeout"
    assert printer.shown == 0 and out.getvalue() == ""


# ---- options --------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


BAD = [
    (["-p", "icmp"], "-p/--proto"),
    (["-f", "ip4"], "-f/--family"),
    (["-s", "198.18.1"], "-s/--orig-src"),
    (["-d", "server"], "-d/--orig-dst"),
    (["-r", "198.18.1.0/40"], "-r/--reply-src"),
    (["-q", "2001:2::g"], "-q/--reply-dst"),
    (["--sport", "http"], "--sport"),
    (["--dport", "65536"], "--dport"),
    (["--state", "ESTABLISHD"], "--state"),
    (["--eni", "i-0123"], "--eni"),
]


@pytest.mark.parametrize("command, argv, option", [
    (c, a, o) for c in ("list", "flush", "count", "events") for a, o in BAD] + [
    ("list", ["-o", "xml"], "-o/--output"), ("events", ["-o", "xml,id"], "-o/--output")])
def test_bad_filter_values_are_usage_errors_naming_the_option(capsys, command, argv, option):
    code, out, err = run_cli(capsys, "conntrack", command, "--name", "nolab", *argv)
    assert code == errors.EXIT_USAGE
    assert err.startswith(f"hyperplane: error: {option} ")
    assert "Traceback" not in err and out == ""


def test_bad_event_mask_count_and_no_subcommand(capsys):
    code, _, err = run_cli(capsys, "conntrack", "events", "--name", "nolab", "-e", "NEW,OLD")
    assert code == 2 and "-e/--event-mask 'OLD'" in err
    code, _, err = run_cli(capsys, "conntrack", "events", "--name", "nolab", "--count", "0")
    assert code == 2 and "--count 0" in err
    assert run_cli(capsys, "conntrack")[0] == 2
    with pytest.raises(SystemExit) as ei:       # argparse: flush has no -o
        cli.main(["conntrack", "flush", "-o", "extended"])
    assert ei.value.code == 2


def test_good_options_become_the_filter_dict():
    args = cli.build_parser().parse_args([
        "conntrack", "list", "-p", "UDP", "-f", "ipv6", "-s", "2001:2:0:f001::/64",
        "-d", "2001:2:0:1::5", "-r", "2001:2:0:1::5", "-q", "2001:2:0:1::4", "--sport", "5",
        "--dport", "53", "--state", "replied", "--eni", ENI_ID])
    assert ctcli.filter_spec(args) == {
        "family": 6, "proto": "udp", "state": "REPLIED", "sport": 5, "dport": 53,
        "orig_src": "2001:2:0:f001::/64", "orig_dst": "2001:2:0:1::5",
        "reply_src": "2001:2:0:1::5", "reply_dst": "2001:2:0:1::4", "eni": ENI_ID}
    args = cli.build_parser().parse_args(["conntrack", "events", "-p", "6", "--rejects",
                                          "-e", "destroy"])
    assert ctcli.filter_spec(args) == {"proto": "tcp"}
    assert ctcli.event_kinds(args.event_mask, args.rejects) == ["destroy", "reject"]
    assert ctcli.event_kinds(None, False) == ["new", "update", "destroy"]
    assert ctcli.event_kinds("ALL,REJECT", False) == ["new", "update", "destroy", "reject"]


# =====================================================================================================
# In a lab
# =====================================================================================================
def parse_line(line: str) -> dict:
    """A list/event line back into parts: tag, proto, timeout, state, tuples (with their
    counters), flags (with the number of tuples before them) and the key=value extras."""
    toks = line.split()
    d: dict = {"tag": None, "timeout": None, "state": None, "tuples": [], "flags": [],
               "extra": {}}
    if toks[0].startswith("["):
        d["tag"] = toks.pop(0)
    d["proto"], d["protonum"] = toks[0], int(toks[1])
    i = 2
    if toks[i].isdigit():
        d["timeout"] = int(toks[i])
        i += 1
    if "=" not in toks[i]:
        d["state"] = toks[i]
        i += 1
    cur: Optional[dict] = None
    for t in toks[i:]:
        if t.startswith("["):
            d["flags"].append((len(d["tuples"]), t))
            continue
        k, v = t.split("=", 1)
        if k == "src":
            cur = {"src": v}
            d["tuples"].append(cur)
        elif k in ("dst",):
            cur[k] = v
        elif k in ("sport", "dport", "packets", "bytes"):
            cur[k] = int(v)
        else:
            d["extra"][k] = v
    return d


def tup(src, sport, dst, dport, **counters) -> dict:
    return {"src": src, "sport": sport, "dst": dst, "dport": dport, **counters}


@pytest.fixture(scope="module")
def ctlab(dlab):
    """The module's default lab (the root conftest's), with the addresses the tests compare."""
    lab = dlab
    lab.eni4, lab.eni6 = lab.eni.ipv4, lab.eni.ipv6
    lab.a4 = bare(lab.env("fn-a-0").ipv4)
    lab.b4, lab.b6 = bare(lab.env("fn-b-0").ipv4), bare(lab.env("fn-b-0").ipv6)
    return lab


def socket_in(ns: str, family: int, kind: int) -> socket.socket:
    with netns.entered(ns):
        return socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, kind)


class HeldTcp:
    """A TCP connection from an environment to a listener of ours on the server, held open
    (ESTABLISHED) until closed. ``nat_port``: the source port the server saw."""

    def __init__(self, lab, env: str):
        self.listener = socket_in(lab.server.netns, 4, socket.SOCK_STREAM)
        self.listener.bind((lab.s4, 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.client = socket_in(lab.env(env).netns, 4, socket.SOCK_STREAM)
        self.client.settimeout(10)
        self.listener.settimeout(10)

    def open(self, payload: bytes = b"abcd") -> "HeldTcp":
        self.client.connect((self.listener.getsockname()[0], self.port))
        self.cport = self.client.getsockname()[1]
        self.conn, peer = self.listener.accept()
        self.nat_addr, self.nat_port = peer[0], peer[1]
        self.client.sendall(payload)
        self.conn.settimeout(10)
        got = b""
        while len(got) < len(payload):
            got += self.conn.recv(100)
        assert got == payload
        return self

    def close(self) -> None:
        for s in (getattr(self, "conn", None), self.client, self.listener):
            if s is not None:
                s.close()


def entries(lab, **flt) -> List[dict]:
    return lifecycle.request(lab.name, "conntrack", filter=flt)["entries"]


def settled(lab, pred, what: str) -> List[dict]:
    """Entries once ``pred(entries)`` holds and two looks 0.3 s apart agree (late ACKs)."""
    last: Dict[str, list] = {"e": None}

    def look():
        e = entries(lab)
        key = json.dumps(sorted(json.dumps(x, sort_keys=True) for x in
                                [dict(x, timeout=0) for x in e]))
        same = key == last["e"]
        last["e"] = key
        return e if same and pred(e) else None
    return wait_until(look, 15, what, interval=0.3)


class Flows:
    """What the module's traffic was, as the test's own sockets saw it."""


@pytest.fixture(scope="module")
def flows(ctlab) -> Iterator[Flows]:
    """TCP fn-a-0 -> server (IPv4, held ESTABLISHED), UDP fn-b-0 -> server over IPv6 (one
    datagram each way), UDP fn-b-0 -> server over IPv4 that nobody answers (UNREPLIED; its
    entry lives 30 s, so the tests using it come first)."""
    lab = ctlab
    f = Flows()
    with contextlib.ExitStack() as stack:
        f.tcp = HeldTcp(lab, "fn-a-0").open()
        stack.callback(f.tcp.close)
        srv6 = stack.enter_context(nt.UdpEchoServer(lab.server.netns, lab.s6))
        f.u6_payload = b"hello over v6"
        _, (_, f.u6_cport) = nt.udp_roundtrip(lab.env("fn-b-0").netns, lab.s6, srv6.port,
                                              f.u6_payload, timeout=5, retries=1)
        f.u6_port = srv6.port
        f.u6_nat_port = srv6.datagrams[-1].peer[1]
        assert srv6.datagrams[-1].peer[0] == lab.eni6
        srv4 = stack.enter_context(nt.UdpEchoServer(lab.server.netns, lab.s4, echo=False))
        f.u4_payload = b"nobody answers this"
        s = socket_in(lab.env("fn-b-0").netns, 4, socket.SOCK_DGRAM)
        stack.callback(s.close)
        s.bind((lab.b4, 0))
        s.sendto(f.u4_payload, (lab.s4, srv4.port))
        f.u4_cport, f.u4_port = s.getsockname()[1], srv4.port
        got = wait_until(lambda: srv4.datagrams, 10, "the unanswered datagram at the server")
        assert got[0].peer[0] == lab.eni4
        f.u4_nat_port = got[0].peer[1]
        f.entries = settled(lab, lambda e: len(e) == 3, "three settled entries")
        yield f


def keyed(rows: List[dict]) -> Dict[str, dict]:
    return {f"{r['proto']}{r['family']}": r for r in rows}


def test_list_shows_exactly_the_connections_sent(ctlab, flows, capsys):
    lab, f = ctlab, flows
    code, out, err = run_cli(capsys, "conntrack", "list", "--name", lab.name)
    assert code == 0
    assert err == "hyperplane conntrack: 3 flow entries have been shown.\n"
    lines = out.splitlines()
    assert len(lines) == 3
    got = {p["proto"] + ("6" if ":" in p["tuples"][0]["src"] else "4"): p
           for p in map(parse_line, lines)}
    assert set(got) == {"tcp4", "udp6", "udp4"}
    eni = {"mark": "0", "use": "1", "eni": lab.eni.id}

    t = got["tcp4"]
    assert (t["proto"], t["protonum"], t["state"]) == ("tcp", 6, "ESTABLISHED")
    assert 300 < t["timeout"] <= 350
    o, r = t["tuples"]
    assert {k: o[k] for k in ("src", "sport", "dst", "dport")} == \
        tup(lab.a4, f.tcp.cport, lab.s4, f.tcp.port)
    assert {k: r[k] for k in ("src", "sport", "dst", "dport")} == \
        tup(lab.s4, f.tcp.port, lab.eni4, f.tcp.nat_port)
    # SYN, ACK, 4 data bytes out; SYN/ACK and an ACK (at least) back; 40+ bytes of headers each
    assert o["packets"] >= 3 and o["bytes"] >= 3 * 40 + 4
    assert r["packets"] >= 2 and r["bytes"] >= 2 * 40
    assert t["flags"] == [(2, "[ASSURED]")] and t["extra"] == eni

    u = got["udp6"]
    assert (u["protonum"], u["state"]) == (17, None) and 300 < u["timeout"] <= 350
    n = 40 + 8 + len(f.u6_payload)      # IPv6 + UDP headers + payload, each way
    assert u["tuples"] == [tup(lab.b6, f.u6_cport, lab.s6, f.u6_port, packets=1, bytes=n),
                           tup(lab.s6, f.u6_port, lab.eni6, f.u6_nat_port, packets=1, bytes=n)]
    assert u["flags"] == [(2, "[ASSURED]")] and u["extra"] == eni

    u = got["udp4"]
    assert 0 < u["timeout"] <= 30
    assert u["tuples"] == [
        tup(lab.b4, f.u4_cport, lab.s4, f.u4_port, packets=1, bytes=20 + 8 + len(f.u4_payload)),
        tup(lab.s4, f.u4_port, lab.eni4, f.u4_nat_port, packets=0, bytes=0)]
    assert u["flags"] == [(1, "[UNREPLIED]")] and u["extra"] == eni

    # --json: the same connections, states and counters
    code, out, _ = run_cli(capsys, "conntrack", "list", "--name", lab.name, "--json")
    js = keyed(json.loads(out))
    assert set(js) == {"tcp4", "udp6", "udp4"}
    assert [js[k]["state"] for k in ("tcp4", "udp6", "udp4")] == \
        ["ESTABLISHED", "REPLIED", "UNREPLIED"]
    for k, p in got.items():
        o, r = p["tuples"]
        assert js[k]["orig"] == {x: o[x] for x in ("src", "sport", "dst", "dport")}
        assert js[k]["reply"] == {x: r[x] for x in ("src", "sport", "dst", "dport")}
        assert (js[k]["packets_orig"], js[k]["bytes_orig"], js[k]["packets_reply"],
                js[k]["bytes_reply"]) == (o["packets"], o["bytes"], r["packets"], r["bytes"])
        assert js[k]["eni_id"] == lab.eni.id

    # -o extended, and count (conntrack -C)
    _, out, _ = run_cli(capsys, "conntrack", "list", "--name", lab.name, "-o", "extended",
                        "-p", "udp")
    assert sorted(ln[:23] for ln in out.splitlines()) == [
        "ipv4     2 udp      17 ", "ipv6     10 udp      17"]
    assert run_cli(capsys, "conntrack", "count", "--name", lab.name)[1] == "3\n"
    assert run_cli(capsys, "conntrack", "count", "--name", lab.name, "-p", "udp")[1] == "2\n"


FILTERS = [
    (lambda lab, f: ["-p", "tcp"], {"tcp4"}),
    (lambda lab, f: ["--proto", "udp"], {"udp6", "udp4"}),
    (lambda lab, f: ["-f", "ipv6"], {"udp6"}),
    (lambda lab, f: ["--family", "ipv4"], {"tcp4", "udp4"}),
    (lambda lab, f: ["-s", lab.a4], {"tcp4"}),
    (lambda lab, f: ["--orig-src", lab.env("fn-b-0").ipv4], {"udp4"}),        # its /30
    (lambda lab, f: ["-d", lab.s6], {"udp6"}),
    (lambda lab, f: ["-r", lab.s4], {"tcp4", "udp4"}),
    (lambda lab, f: ["-q", lab.eni4], {"tcp4", "udp4"}),
    (lambda lab, f: ["--reply-dst", "2001:2:0:1::/64"], {"udp6"}),
    (lambda lab, f: ["--sport", str(f.tcp.cport)], {"tcp4"}),
    (lambda lab, f: ["--dport", str(f.u6_port)], {"udp6"}),
    (lambda lab, f: ["--state", "ESTABLISHED"], {"tcp4"}),
    (lambda lab, f: ["--state", "unreplied"], {"udp4"}),
    (lambda lab, f: ["--state", "REPLIED"], {"udp6"}),
    (lambda lab, f: ["--eni", lab.eni.id], {"tcp4", "udp6", "udp4"}),
    (lambda lab, f: ["--eni", "eni-00000000000000000"], set()),
    (lambda lab, f: ["-p", "udp", "-f", "ipv4", "--dport", str(f.u4_port)], {"udp4"}),
    (lambda lab, f: ["-p", "tcp", "-f", "ipv6"], set()),
]


@pytest.mark.parametrize("make_args, expect", FILTERS, ids=[
    "proto-tcp", "proto-udp", "family-6", "family-4", "orig-src", "orig-src-prefix",
    "orig-dst", "reply-src", "reply-dst", "reply-dst-prefix", "sport", "dport", "state-est",
    "state-unreplied", "state-replied", "eni", "other-eni", "three", "none"])
def test_each_filter_keeps_the_right_connections(ctlab, flows, capsys, make_args, expect):
    args = make_args(ctlab, flows)
    code, out, err = run_cli(capsys, "conntrack", "list", "--name", ctlab.name, *args)
    assert code == 0
    shown = set()
    for p in map(parse_line, out.splitlines()):
        shown.add(p["proto"] + ("6" if ":" in p["tuples"][0]["src"] else "4"))
    assert shown == expect, args
    assert err == f"hyperplane conntrack: {len(expect)} flow entries have been shown.\n"
    code, out, _ = run_cli(capsys, "conntrack", "list", "--name", ctlab.name, "--json", *args)
    assert set(keyed(json.loads(out))) == expect


class EventsProc:
    """`python -m hyperplane conntrack events ...` in the background, its lines in a queue."""

    def __init__(self, lab, *args: str):
        self.lab = lab
        before = lab.counters()["events"]["subscribers"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hyperplane", "conntrack", "events", "--name", lab.name,
             *args], cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            wait_until(lambda: lab.counters()["events"]["subscribers"] > before
                       or self.proc.poll() is not None, 15, "the events subscription")
        except BaseException:
            self.stop()
            raise
        assert self.proc.poll() is None, self.proc.stderr.read()

    def _read(self) -> None:
        for ln in self.proc.stdout:
            self.lines.put(ln.rstrip("\n"))

    def until(self, pred, timeout: float = 15) -> List[str]:
        """Lines so far, up to and including the first for which ``pred`` holds."""
        got: List[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                ln = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching event line within {timeout}s; got {got}")
            got.append(ln)
            if pred(ln):
                return got

    def rest(self) -> List[str]:
        """The lines not taken by until() yet (after stop(): everything the process printed)."""
        out: List[str] = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def stop(self, sig=signal.SIGINT):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode, self.proc.stderr.read()


def test_events_new_updates_then_destroy_on_flush(ctlab, flows, capsys):
    lab = ctlab
    held = HeldTcp(lab, "fn-a-0")
    ev = EventsProc(lab, "-p", "tcp", "--dport", str(held.port))
    try:
        held.open()
        snap = settled(lab, lambda e: any(x["orig"]["dport"] == held.port and
                                          x["state"] == "ESTABLISHED" for x in e),
                       "the new connection ESTABLISHED")
        mine = [x for x in snap if x["orig"]["dport"] == held.port]
        assert len(mine) == 1
        mine = mine[0]
        code, out, err = run_cli(capsys, "conntrack", "flush", "--name", lab.name, "-p", "tcp",
                                 "--dport", str(held.port))
        assert (code, out, err) == (0, "", "hyperplane conntrack: 1 flow entries have been "
                                           "deleted.\n")
        lines = ev.until(lambda ln: "[DESTROY]" in ln)
    finally:
        code, err = ev.stop()
        held.close()
    later = ev.rest()
    assert code == 0, err
    # the summary counts every line printed, also any after the DESTROY (read after the stop)
    assert err == (f"hyperplane conntrack: {len(lines) + len(later)} flow events have been "
                   "shown.\n"), (lines, later)
    orig = f"src={lab.a4} dst={lab.s4} sport={held.cport} dport={held.port}"
    assert not [ln for ln in later if orig in ln], later   # the flushed connection stays gone
    reply = f"src={lab.s4} dst={lab.eni4} sport={held.port} dport={held.nat_port}"
    eni = f"eni={lab.eni.id}"
    assert lines == [
        f"    [NEW] tcp      6 120 SYN_SENT {orig} [UNREPLIED] {reply} {eni}",
        f" [UPDATE] tcp      6 60 SYN_RECV {orig} {reply} {eni}",
        f" [UPDATE] tcp      6 350 ESTABLISHED {orig} {reply} [ASSURED] {eni}",
        f"[DESTROY] tcp      6 {orig} packets={mine['packets_orig']} "
        f"bytes={mine['bytes_orig']} {reply} packets={mine['packets_reply']} "
        f"bytes={mine['bytes_reply']} [ASSURED] {eni}",
    ]
    assert mine["packets_orig"] >= 3 and mine["packets_reply"] >= 2
    assert not [x for x in entries(lab) if x["orig"]["dport"] == held.port]


def test_rejects_show_an_unsolicited_datagram(ctlab, flows):
    lab = ctlab
    used = {x["reply"]["dport"] for x in entries(lab)}
    eni_port = next(p for p in range(33333, 34000) if p not in used)
    s = socket_in(lab.server.netns, 4, socket.SOCK_DGRAM)
    t0 = time.time()
    ev = EventsProc(lab, "--rejects", "-e", "REJECT", "-p", "udp", "--dport", str(eni_port),
                    "-o", "timestamp", "--count", "1", "--timeout", "30")
    try:
        s.bind((lab.s4, 0))
        sport = s.getsockname()[1]
        deadline = time.monotonic() + 20
        while ev.proc.poll() is None and time.monotonic() < deadline:
            s.sendto(b"knock knock", (lab.eni4, eni_port))   # the ENI never sent anything here
            with contextlib.suppress(subprocess.TimeoutExpired):
                ev.proc.wait(timeout=1)
    finally:
        code, err = ev.stop()
        s.close()
    lines = ev.until(lambda ln: True, timeout=1)
    assert code == 0, err
    assert err == "hyperplane conntrack: 1 flow events have been shown.\n"
    m = re.fullmatch(r"\[(\d+\.\d{6})\]\t(.*)", lines[0])
    assert m, lines
    assert t0 - 1 <= float(m.group(1)) <= time.time() + 1
    assert m.group(2) == (f" [REJECT] udp      17 src={lab.s4} dst={lab.eni4} sport={sport} "
                          f"dport={eni_port} reason=unsolicited eni={lab.eni.id}")


def test_flush_with_a_filter_removes_only_the_matching_entry(ctlab, flows, capsys):
    lab = ctlab
    with nt.UdpEchoServer(lab.server.netns, lab.s4) as srv:
        ports = {}
        for env, src in (("fn-a-0", lab.a4), ("fn-b-0", lab.b4)):
            s = socket_in(lab.env(env).netns, 4, socket.SOCK_DGRAM)
            s.bind((src, 0))
            ports[env] = s.getsockname()[1]
            s.close()
            for _ in range(2):          # two round trips from the same source port
                nt.udp_roundtrip(lab.env(env).netns, lab.s4, srv.port, b"twice", timeout=5,
                                 retries=1, source=(src, ports[env]))
        before = settled(lab, lambda e: sum(x["orig"]["dport"] == srv.port for x in e) == 2,
                         "both UDP flows")
        mine = {x["orig"]["src"]: x for x in before if x["orig"]["dport"] == srv.port}
        assert mine[lab.a4]["packets_orig"] == mine[lab.b4]["packets_orig"] == 2
        code, _, err = run_cli(capsys, "conntrack", "flush", "--name", lab.name, "-p", "udp",
                               "-s", lab.b4, "--dport", str(srv.port))
        assert code == 0
        assert err == "hyperplane conntrack: 1 flow entries have been deleted.\n"
        after = entries(lab)

        def key(x):
            return (x["proto"], json.dumps(x["orig"], sort_keys=True))
        gone = {key(x) for x in before} - {key(x) for x in after}
        assert key(mine[lab.b4]) in gone
        assert key(mine[lab.a4]) not in gone
        # nothing else was deleted (an unanswered UDP flow may have expired meanwhile)
        assert all(x["proto"] == "udp" and x["state"] == "UNREPLIED"
                   for x in before if key(x) in gone and x is not mine[lab.b4])
        assert any(x["proto"] == "tcp" and x["orig"]["sport"] == flows.tcp.cport
                   for x in after)
        # the next datagram from that socket is a new connection: its counters start again
        nt.udp_roundtrip(lab.env("fn-b-0").netns, lab.s4, srv.port, b"again", timeout=5,
                         retries=1, source=(lab.b4, ports["fn-b-0"]))
        again = entries(lab, orig_src=lab.b4, dport=srv.port)
        assert len(again) == 1 and again[0]["packets_orig"] == 1
