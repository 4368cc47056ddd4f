"""hyperplane.Lab on real labs: nodes, exec/popen, the --json documents through the same code
path as the command line, events, the clock, restart, and down on every way out of a ``with``
block. Labs come from the plugin's fixtures or from ``Lab.up`` itself (that is what is tested);
every one goes down inside the test. (What needs no lab is in tests/test_public_api.py.)"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import hyperplane
from hyperplane import errors, netns, paths, proc, topology
from hyperplane.lab.api import Lab

SERVER4 = "198.18.1.5"


def namespaces_of(name: str):
    return [ns for ns in netns.listall() if ns.startswith(f"hp-{name}-")]


def cli_json(*args: str):
    p = subprocess.run([sys.executable, "-m", "hyperplane", *args, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def shape(v):
    """The keys of a JSON document, all the way down (values left out)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x) for x in v[:1]]
    return type(v).__name__ if v is not None else "null"


# ---- one lab for the module ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(hyperplane_module_lab_factory) -> Lab:
    return hyperplane_module_lab_factory()


def test_nodes_carry_role_namespace_and_addresses(lab):
    assert {"hyperplane", "fn-a-0", "fn-b-0", "server"} <= set(lab.nodes)
    server = lab.nodes["server"]
    assert server.role == "host" and server.netns == f"hp-{lab.name}-host-server"
    assert server.address(4) == SERVER4 and server.address(6) == "2001:2:0:1::5"
    assert lab.nodes["fn-a-0"].info["attach"] == "tap"
    assert lab.nodes["fn-b-0"].info["attach"] == "veth"
    assert lab.pid and proc.pid_alive(lab.pid)


def test_exec_runs_in_the_node_namespace_and_unknown_nodes_are_not_found(lab):
    r = lab.exec("server", ["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                 capture_output=True, text=True, check=True)
    assert f"{SERVER4}/24" in r.stdout
    with pytest.raises(hyperplane.HyperplaneError) as info:
        lab.exec("nosuchnode", ["true"])
    assert info.value.code == errors.EXIT_NOT_FOUND and "fn-a-0" in str(info.value)
    with pytest.raises(hyperplane.HyperplaneError) as info:
        lab.exec("server", "ip addr")       # a string, not an argv list
    assert info.value.code == errors.EXIT_USAGE


def test_http_through_the_eni_shows_in_conntrack_and_stats(lab):
    eni4 = lab.enis()[0]["ipv4"]
    web = lab.popen("server", [sys.executable, "-m", "http.server", "8080", "--bind", SERVER4],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fetch = ("import urllib.request; "
             f"print(urllib.request.urlopen('http://{SERVER4}:8080/', timeout=3).status)")
    deadline = time.monotonic() + 20
    while True:
        r = lab.exec("fn-b-0", [sys.executable, "-c", fetch], capture_output=True, text=True)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.stdout.strip() == "200", r.stderr
    entries = lab.conntrack(proto="tcp", dport=8080)
    assert entries and all(e["reply"]["dst"] == eni4 for e in entries), entries
    assert lab.conntrack(proto="udp", dport=8080) == []
    st = lab.stats()
    assert st["totals"]["connections_created"] >= 1
    assert st["totals"]["forwarded_packets"]["outbound"] > 0
    assert web.poll() is None                       # still serving until the lab goes down


def test_the_dicts_are_what_the_json_commands_print(lab, monkeypatch):
    monkeypatch.setenv("HYPERPLANE_RUN_DIR", paths.run_dir())   # the CLI sees this lab
    assert lab.enis() == cli_json("eni", "list", "--name", lab.name)
    moving = ("idle_for", "last_used")          # the clock's: differ between two calls
    assert [{k: v for k, v in f.items() if k not in moving} for f in lab.functions()] == \
        [{k: v for k, v in f.items() if k not in moving}
         for f in cli_json("function", "list", "--name", lab.name)]
    status, cli_status = lab.status(), cli_json("lab", "status", "--name", lab.name)
    assert shape(status) == shape(cli_status)
    assert status["nodes"] == cli_status["nodes"] and status["fabric"] == cli_status["fabric"]
    assert shape(lab.stats()) == shape(cli_json("stats", "--name", lab.name))
    ct = cli_json("conntrack", "list", "--name", lab.name)
    assert [(e["orig"], e["reply"]) for e in lab.conntrack()] == \
        [(e["orig"], e["reply"]) for e in ct]


def test_events_arrive_for_new_connections(lab):
    eni4 = lab.enis()[0]["ipv4"]
    send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(b'x', ('{SERVER4}', 9999))")
    events = lab.events(kinds=("new",), timeout=10, proto="udp", dport=9999)
    # the iterator subscribes at its first next(): the datagram goes out half a second later
    sender = threading.Timer(0.5, lambda: lab.exec("fn-a-0", [sys.executable, "-c", send],
                                                   check=True))
    sender.start()
    try:
        ev = next(events)
    finally:
        sender.join()
        events.close()
    assert ev["kind"] == "new" and ev["proto"] == "udp"
    assert ev["orig"]["dport"] == 9999 and ev["reply"]["dst"] == eni4


def test_unknown_event_kinds_and_filters_are_usage_errors(lab):
    with pytest.raises(hyperplane.HyperplaneError) as info:
        next(lab.events(kinds=("born",)))
    assert info.value.code == errors.EXIT_USAGE and "born" in str(info.value)
    with pytest.raises(hyperplane.HyperplaneError) as info:
        lab.conntrack(colour="blue")
    assert info.value.code == errors.EXIT_USAGE and "colour" in str(info.value)


def test_advance_clock_moves_the_lab_clock(lab):
    before = lab.advance_clock(0)
    after = lab.advance_clock(90)
    assert after["offset"] == pytest.approx(before["offset"] + 90)
    assert after["now"] >= before["now"] + 90


# ---- labs of a test's own ---------------------------------------------------------------------
def test_with_block_takes_the_lab_down_and_stops_what_popen_started():
    with Lab.up() as lab:
        name = lab.name
        assert namespaces_of(name)
        sleeper = lab.popen("server", ["sleep", "300"])
        assert Lab.attach(name).name == name
    assert not namespaces_of(name)
    assert topology.load_state(name) is None
    assert sleeper.poll() is not None               # stopped by its pid, and reaped


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_leaving_by_an_exception_takes_the_lab_down(exc):
    name = None
    with pytest.raises(exc):
        with Lab.up() as lab:
            name = lab.name
            raise exc("out of the block")
    assert name and not namespaces_of(name) and topology.load_state(name) is None


def test_restart_keeps_an_open_tcp_connection(hyperplane_lab):
    lab = hyperplane_lab
    with netns.entered(lab.netns("server")):
        srv = socket.create_server((SERVER4, 7000))
    with netns.entered(lab.netns("fn-b-0")):
        c = socket.create_connection((SERVER4, 7000), timeout=5)
    with srv, c:
        s, _ = srv.accept()
        with s:
            s.settimeout(5)
            old = lab.pid
            rep = lab.restart()
            assert rep["stopped_pid"] == old and rep["pid"] == lab.pid != old
            assert rep["restore"]["restored"] >= 1
            c.sendall(b"after restart")
            assert s.recv(100) == b"after restart"
    assert os.path.isdir(paths.lab_dir(lab.name))
