"""The function examples, run end to end in real labs from their own files (issue 17):

* ``examples/postgres/``: a real PostgreSQL as the ``db`` host's command, and fn-db, which
  connects during init: many invocations share ONE connection (one backend, one entry in the
  ENI's table, the ENI's address and port as the server sees them), and a server restart is
  survived by reconnecting once.
* ``examples/natgw-keepalive/``: the NAT gateway's 350 s idle timeout on the lab clock, moved
  in steps with a few real seconds between them: fn-plain's idle connection is cut and it
  reconnects, fn-keepalive's TCP keep-alive probes (every 5 s of real time) keep both its
  entries (ENI and NAT gateway) alive.

Each module's lab is built once from the example's lab.toml and always taken down by the
plugin's factory. The labs' run directory is one every user may traverse: PostgreSQL runs as
the ``postgres`` user, which must reach its data folder under the lab's directory (pytest's own
temporary folders are private to root).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from types import SimpleNamespace

import pytest

from hyperplane import paths
from hyperplane.labconfig.plan import bare
from kit import REPO
from kit.labs import wait_until

EXAMPLES = os.path.join(REPO, "examples")
PG = os.path.join(EXAMPLES, "postgres")
KA = os.path.join(EXAMPLES, "natgw-keepalive")
OK_META = {"StatusCode": 200, "ExecutedVersion": "$LATEST"}


@pytest.fixture(scope="module")
def shared_run_dir():
    """HYPERPLANE_RUN_DIR for this module's labs: a folder every user may traverse (0755)."""
    d = tempfile.mkdtemp(prefix="hp-examples-")
    os.chmod(d, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERPLANE_RUN_DIR", d)
        yield d
    shutil.rmtree(d, ignore_errors=True)


def example_lab(request, config: str):
    """The example's lab, made by the plugin's module factory once the shared run directory is
    set (so the factory, set up after it, takes its labs down before it is restored)."""
    request.getfixturevalue("shared_run_dir")
    factory = request.getfixturevalue("hyperplane_module_lab_factory")
    return factory(config=config)


def invoke_json(lab, fn, payload=None):
    meta, body = lab.invoke(fn, payload)
    assert meta == OK_META, (meta, body)
    return json.loads(body)


# ---- examples/postgres ---------------------------------------------------------------------------
def pg_accepts(lab) -> bool:
    """A real login, from the db host's namespace, with the example's own client."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import pgwire; "
             "pgwire.connect('198.18.1.5', user='app', database='lab', "
             "password='lab-only-password', timeout=1).close()")
    r = lab.exec("db", ["/usr/bin/python3", "-c", probe, os.path.join(PG, "function")],
                 capture_output=True, text=True, timeout=10)
    return r.returncode == 0


@pytest.fixture(scope="module")
def pg(request):
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("examples/postgres needs PostgreSQL: apt-get install postgresql")
    lab = example_lab(request, os.path.join(PG, "lab.toml"))
    wait_until(lambda: pg_accepts(lab), 60, "PostgreSQL on the db host (see hosts/db.log)",
               interval=0.5)
    return lab


def test_postgres_many_invocations_share_one_connection_opened_at_init(pg):
    first = invoke_json(pg, "fn-db", {"k": 1})
    second = invoke_json(pg, "fn-db")
    eni = bare(pg.plan.enis[0].ipv4)
    assert (first["invocation"], second["invocation"]) == (1, 2)      # a global, kept warm
    assert first["reconnected"] is None and second["reconnected"] is None
    assert first["items"] == 3
    # the same backend, and the server sees the ENI's address and the port the ENI chose
    assert first["backend_pid"] == second["backend_pid"]
    assert first["client_addr"] == second["client_addr"] == eni
    assert first["client_port"] == second["client_port"]
    (entry,) = pg.conntrack(proto="tcp", dport=5432)
    assert entry["state"] == "ESTABLISHED"
    assert entry["orig"]["src"] == pg.nodes["fn-db-0"].address(4)
    assert (entry["reply"]["dst"], entry["reply"]["dport"]) == (eni, first["client_port"])
    (env,) = pg.environments()
    assert (env["cold_starts"], env["invocations"]) == (1, 2)
    assert any("connected to 198.18.1.5:5432" in e["message"] for e in pg.logs("fn-db"))


def test_postgres_restart_is_survived_by_reconnecting_once(pg):
    before = invoke_json(pg, "fn-db")
    (svc,) = pg.services()
    pidfile = os.path.join(paths.lab_dir(pg.name), "hosts", "db", "pgdata", "postmaster.pid")
    with open(pidfile) as f:
        postmaster = int(f.readline())
    os.kill(postmaster, signal.SIGINT)          # a fast shutdown; the supervisor restarts it
    wait_until(lambda: pg.services()[0]["restarts"] == svc["restarts"] + 1
               and pg.services()[0]["running"], 20, "the db service's restart", interval=0.2)
    wait_until(lambda: pg_accepts(pg), 30, "PostgreSQL after its restart", interval=0.5)
    after = invoke_json(pg, "fn-db")
    assert after["invocation"] == before["invocation"] + 1        # the same environment
    assert after["reconnected"] and "57P01" in after["reconnected"], after   # admin shutdown
    assert after["backend_pid"] != before["backend_pid"]
    again = invoke_json(pg, "fn-db")
    assert again["reconnected"] is None and again["backend_pid"] == after["backend_pid"]
    live = [e for e in pg.conntrack(proto="tcp", dport=5432) if e["state"] == "ESTABLISHED"]
    assert [e["reply"]["dport"] for e in live] == [after["client_port"]]


# ---- examples/natgw-keepalive --------------------------------------------------------------------
#: Lab-clock steps: 3 x 120 s = 360 s > the NAT gateway's 350 s, each step shorter than 350 s,
#: with more than the keep-alive idle time (5 s) of real time before each, so a probe refreshes
#: fn-keepalive's entries between steps.
STEPS, STEP_SECONDS, REAL_SLEEP = 3, 120.0, 7.0


@pytest.fixture(scope="module")
def keepalive_run(request):
    """The demonstration, once: invoke both functions, move the lab clock past 350 s in steps
    with real sleeps between them, look at the connection table, invoke both again."""
    lab = example_lab(request, os.path.join(KA, "lab.toml"))
    wait_until(lambda: lab.exec("echo", ["ss", "-Hltn", "sport = :7000"], capture_output=True,
                                text=True).stdout.strip() != "", 15, "the echo server")
    fns = ("fn-plain", "fn-keepalive")
    first = {fn: invoke_json(lab, fn) for fn in fns}
    for _ in range(STEPS):
        time.sleep(REAL_SLEEP)
        lab.advance_clock(STEP_SECONDS)
    table = lab.conntrack(proto="tcp", dport=7000)
    counters = lab.counters()
    second = {fn: invoke_json(lab, fn) for fn in fns}
    return SimpleNamespace(lab=lab, first=first, second=second, table=table, counters=counters,
                           env={fn: lab.nodes[f"{fn}-0"].address(4) for fn in fns})


def test_natgw_keepalive_connection_survives_the_idle_timeout(keepalive_run):
    r = keepalive_run
    a, b = r.first["fn-keepalive"], r.second["fn-keepalive"]
    assert a["result"] == "ok" and a["keepalive"] is True
    assert b["result"] == "ok" and not b["reconnected"] and b["connection"] == 1, b
    assert b["reply"].rsplit(" from ", 1)[1] == a["reply"].rsplit(" from ", 1)[1]  # same port


def test_natgw_plain_connection_is_cut_and_reconnects(keepalive_run):
    r = keepalive_run
    a, b = r.first["fn-plain"], r.second["fn-plain"]
    assert a["result"] == "ok" and a["keepalive"] is False
    assert b["result"] == "error" and b["reconnected"] and b["connection"] == 2, b
    assert b["reply"].startswith("echo invocation 2 from 198.19.255.2:")    # the Elastic IP
    assert b["reply"].rsplit(":", 1)[1] != a["reply"].rsplit(":", 1)[1]     # a new port


def test_natgw_keepalive_probes_refresh_the_eni_and_the_nat_gateway(keepalive_run):
    """After 360 s of lab clock only fn-keepalive's connection is in the tables: its entry in
    the ENI's table (orig source: its environment) and in the NAT gateway's (orig source: the
    ENI's address and port), each refreshed by the probes less than 350 s ago."""
    r = keepalive_run
    eni = bare(r.lab.plan.enis[0].ipv4)
    by_src = {}
    for e in r.table:
        by_src.setdefault(e["orig"]["src"], []).append(e)
    assert set(by_src) == {r.env["fn-keepalive"], eni}, r.table
    (at_eni,), (at_nat,) = by_src[r.env["fn-keepalive"]], by_src[eni]
    assert at_nat["orig"]["sport"] == at_eni["reply"]["dport"]
    assert at_eni["state"] == at_nat["state"] == "ESTABLISHED"
    # every probe and its answer passed both tables' window checks (none dropped)
    tables = r.counters["enis"] + r.counters["nat_gateways"]
    assert len(tables) == 2
    assert [t["drops"]["tcp_out_of_window"] for t in tables] == [0, 0]
    assert at_eni["packets_orig"] >= 4 + STEPS, at_eni   # SYN, ACK, data, ACK, then probes


def test_natgw_plain_connection_is_reset(keepalive_run):
    """fn-plain's idle connection is forgotten by both tables in the same jump of the lab clock
    (both time an established connection out after 350 s); the ENI, first on the way, answers
    the late segment with a RST, as the NAT gateway would: the handler sees ECONNRESET at once
    rather than a timeout."""
    err = keepalive_run.second["fn-plain"]["error"] or ""
    assert err.startswith("ConnectionResetError"), err
    assert keepalive_run.lab.counters()["rst_sent"] >= 1
