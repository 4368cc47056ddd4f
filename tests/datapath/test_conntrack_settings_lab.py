"""``[conntrack]`` in a real lab: a lab whose ``udp_timeout`` is 7 s shows 7 s as the remaining
timeout of a new unreplied UDP flow (``hyperplane conntrack list``, the API, ``lab status``),
expires it after 7 s of the lab clock, and with ``max = 2`` drops a third connection as
``table_full``.

Needs root (the plugin's fixtures skip, naming the capability, without it). Only the
benchmark ranges; the lab is the plugin's, uniquely named and always taken down."""
from __future__ import annotations

import json
import socket
import time

from hyperplane import labconfig
from kit import traffic as nt
from kit.labs import cli_run, wait_until

CONFIG = labconfig.default_text() + "\n[conntrack]\nudp_timeout = 7\nmax = 2\n"
PORT = 9470


def test_udp_timeout_and_max_reach_the_data_path_status_and_listing(own_lab):
    lab = own_lab(CONFIG)
    env = lab.env("fn-b-0")
    # a socket that takes the datagrams and never answers: the flows stay UNREPLIED (no port
    # unreachable comes back either)
    sink = nt.socket_in(lab.server.netns, socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((lab.s4, PORT))
    senders = [nt.socket_in(env.netns, socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        sent = time.monotonic()
        senders[0].sendto(b"first", (lab.s4, PORT))
        flows = wait_until(lambda: lab.conntrack(proto="udp", dport=PORT), 5,
                           "the first UDP flow in the listing")
        # 7 s (not the default 30 s) less the time since it was sent (the lab clock and this
        # one both run at the monotonic clock's pace)
        assert len(flows) == 1 and flows[0]["state"] == "UNREPLIED"
        assert 7 - (time.monotonic() - sent) - 0.5 <= flows[0]["timeout"] <= 7, flows[0]
        out = cli_run("conntrack", "list", "--name", lab.name, "-p", "udp")
        assert out.returncode == 0, out.stderr
        line = next(x for x in out.stdout.splitlines() if f"dport={PORT}" in x)
        assert line.split()[:2] == ["udp", "17"], line
        assert 7 - (time.monotonic() - sent) - 1 <= int(line.split()[2]) <= 7, line

        st = cli_run("lab", "status", "--name", lab.name, "--json")
        assert st.returncode == 0, st.stderr
        ct = json.loads(st.stdout)["conntrack"]
        assert (ct["udp_timeout"], ct["udp_timeout_stream"], ct["max"]) == (7, 350, 2)
        assert ct["changed"] == {"udp_timeout": 7, "max": 2}
        text = cli_run("lab", "status", "--name", lab.name)
        assert "conntrack: udp_timeout = 7 s, max = 2 (the rest default)" in text.stdout, \
            text.stdout

        # the table holds two connections: the third is dropped as table_full
        drops0 = lab.engine_drop("table_full")
        senders[1].sendto(b"second", (lab.s4, PORT))
        wait_until(lambda: len(lab.conntrack(proto="udp", dport=PORT)) == 2, 5,
                   "the second flow")
        senders[2].sendto(b"third", (lab.s4, PORT))
        wait_until(lambda: lab.engine_drop("table_full") > drops0, 5, "a table_full drop")
        assert len(lab.conntrack(proto="udp", dport=PORT)) == 2
        sink.settimeout(2)
        got = {sink.recvfrom(100)[0] for _ in range(2)}
        assert got == {b"first", b"second"}

        # 7 s of the lab clock later both flows are gone (the default would keep them 30 s)
        lab.advance(8)
        wait_until(lambda: not lab.conntrack(proto="udp", dport=PORT), 5, "the flows expired")
    finally:
        for s in senders + [sink]:
            s.close()
