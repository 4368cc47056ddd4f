"""The ``hyperplane`` command.

    hyperplane --version | --help
    hyperplane demo [--name NAME] [--keep]       the default lab, real traffic, then down
    hyperplane lab up [CONFIG] [--name NAME]     build a lab and start its data path
    hyperplane lab status [--name NAME] [--json]
    hyperplane lab exec NODE [--name NAME] -- CMD...
    hyperplane lab restart [--name NAME]        a new data path that keeps the open connections
    hyperplane lab down [--name NAME]
    hyperplane lab list
    hyperplane function list|update|invoke ...   the lab's functions (VpcConfig, state)
    hyperplane eni list [--json]                 the lab's Hyperplane ENIs
    hyperplane clock [--advance DURATION]        the lab clock (lifecycle timers)
    hyperplane conntrack list|events|flush|count like conntrack -L / -E / -F / -C
    hyperplane stats [--json]                    packets, bytes, drops, table and pool fill
    hyperplane metrics [--listen ADDR:PORT] [--once]   a Prometheus endpoint (loopback)
    hyperplane top [--interval S] [--iterations N]     a live view of rates, drops, flows
    hyperplane flowlogs [--eni ID] [--follow]    VPC Flow Logs (v2) of the lab's ENIs
    hyperplane capture [--env ENV]               pcaps before and after NAT
    hyperplane run CONFIG [--name NAME]          the data path in the foreground
    hyperplane walk                              packets through the engine in memory (no root)
    hyperplane engine                            which engine is in use, and why
    hyperplane bench [--quick] [--json F] [--plot F]   hyperplane vs. the kernel's NAT (root)

Exit status: 0 success; 1 the operation failed (traffic did not pass, the data path died);
2 usage or configuration error; 3 no such lab, node or namespace; 4 not enough privilege
(CAP_NET_ADMIN); ``lab exec`` returns the command's own status (127 when it is not found).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import hyperplane as hp

PROG = "hyperplane"
DEFAULT_LAB = "default"
READY_TIMEOUT = 20.0

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_PRIVILEGE = 0, 1, 2, 3, 4


class CliError(Exception):
    """An error the user can act on: printed as ``hyperplane: error: ...`` with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


def _need_privilege() -> None:
    from hyperplane import netns

    why = netns.privilege_problem()
    if why:
        raise CliError(f"building or entering a lab {why}", EXIT_PRIVILEGE)


def _config_error(e: Exception) -> CliError:
    return CliError(f"configuration: {e}", EXIT_USAGE)


# ---- lab helpers (also used by demo.py) ---------------------------------------------------------
def control_path(name: str) -> str:
    from hyperplane import lab

    return os.path.join(lab.lab_dir(name), "control.sock")


def load_lab(name: str):
    """(state, plan) of a lab that exists, else CliError(3)."""
    from hyperplane import lab, labconfig

    try:
        state = lab.load_state(name)
    except lab.LabError as e:
        raise CliError(str(e)) from None
    if state is None:
        raise CliError(f"no lab named {name!r}; start one with `{PROG} lab up --name {name}`",
                       EXIT_NOT_FOUND)
    try:
        return state, labconfig.Plan.from_dict(state["plan"])
    except Exception as e:   # an edited or foreign state file
        raise CliError(f"the state file {lab.state_path(name)} does not describe a lab "
                       f"({type(e).__name__}: {e}); the lab's namespaces are named "
                       f"hp-{name}-*") from None


def pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ask(name: str, cmd: str, timeout: float = 5.0) -> Dict[str, Any]:
    from hyperplane import daemon

    try:
        return daemon.request(control_path(name), cmd, timeout=timeout)
    except (OSError, ValueError) as e:
        raise CliError(f"the data path of lab {name!r} does not answer ({e}); "
                       f"see {os.path.join(os.path.dirname(control_path(name)), 'datapath.log')}",
                       EXIT_FAIL) from None


def lab_up(config_path: Optional[str], name: str, out=sys.stdout,
           wait_active: bool = True, config_text: Optional[str] = None) -> Dict[str, Any]:
    """Build the lab, start its data path in the background, wait until it answers and (with
    ``wait_active``) until no function is Pending any more: its ENIs take the lifecycle's
    creation delay to become available, as in AWS, where a new VPC function is Pending until
    then (`aws lambda wait function-active`). ``config_text``: the config itself (a program's
    variant of a file; ``config_path`` then only names where it came from)."""
    from hyperplane import lab, labconfig

    try:
        labconfig.validate_lab_name(name)
        if config_text is not None:
            text = config_text
            cfg = labconfig.loads(text, source=config_path or "<text>")
        elif config_path:
            try:
                with open(config_path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise CliError(f"cannot read {config_path}: {e.strerror}", EXIT_USAGE) from None
            cfg = labconfig.loads(text, source=config_path)
        else:
            text, cfg = labconfig.default_text(), labconfig.default()
        plan = labconfig.resolve(cfg, name)
    except labconfig.LabConfigError as e:
        raise _config_error(e) from None
    _need_privilege()
    try:
        # Refuses an existing lab of that name touching nothing; rolls its own failures back.
        source = os.path.abspath(config_path) if config_path else "<embedded default>"
        if config_text is not None:
            source = config_path or "<text>"
        state = lab.build(plan, config_source=source)
    except lab.LabError as e:
        raise CliError(str(e)) from None
    ldir = lab.lab_dir(name)
    proc: Optional[subprocess.Popen] = None
    try:
        cfg_copy = os.path.join(ldir, "lab.toml")
        with open(cfg_copy, "w", encoding="utf-8") as f:
            f.write(text)
        proc = start_datapath(name, state)
        wait_ready(name, proc)
        if wait_active:
            wait_functions_active(name, plan.lifecycle.eni_create_delay + READY_TIMEOUT)
    except BaseException as e:
        # Roll back: nothing of a failed `lab up` stays behind. The data path is stopped by the
        # pid this run started (the state file may not have recorded it yet), then teardown
        # removes what the state file records.
        if proc is not None:
            _stop_child(proc)
            try:   # stopped and reaped: its pid may be reused, so teardown must not signal it
                state["pid"] = None
                lab.save_state(name, state)
            except Exception:
                pass
        outcome = lab.rollback(name)
        if isinstance(e, CliError):
            raise CliError(f"lab up {name!r} failed: {e}\n{outcome}", e.code) from None
        if isinstance(e, Exception):
            raise CliError(f"lab up {name!r} failed: {type(e).__name__}: {e}\n{outcome}") \
                from e
        if hasattr(e, "add_note"):   # KeyboardInterrupt and the like go on as they are
            e.add_note(outcome)
        raise
    return state


def start_datapath(name: str, state: Dict[str, Any], restore: bool = True) -> subprocess.Popen:
    """Start the lab's data path in the background (``hyperplane run`` on the lab's copy of its
    config, logging to datapath.log) and record its pid in the lab's state."""
    from hyperplane import lab

    ldir = lab.lab_dir(name)
    with open(os.path.join(ldir, "datapath.log"), "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hyperplane", "run", os.path.join(ldir, "lab.toml"),
             "--name", name, "--control", control_path(name)]
            + ([] if restore else ["--no-restore"]),
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    state["pid"] = proc.pid
    try:
        lab.save_state(name, state)
    except BaseException:
        _stop_child(proc)
        raise
    return proc


def lab_restart(name: str, restore: bool = True) -> Dict[str, Any]:
    """Stop the lab's data path (it saves its connection tables and control-plane state as
    it stops) and start a new one on the same namespaces, links and TAPs, which restores them
    (``restore=False``: starts afresh, the open connections break). Waits until it answers
    and no function is Pending. Returns what was stopped, saved and restored."""
    from hyperplane import lab, netns

    state, plan = load_lab(name)
    _need_privilege()
    missing = [ns for ns in plan.namespaces() if not netns.exists(ns)]
    if missing:
        raise CliError(f"lab {name!r} is incomplete: namespace(s) {', '.join(missing)} are "
                       f"gone; `{PROG} lab down --name {name}` and `lab up` again",
                       EXIT_NOT_FOUND)
    try:   # (a recorded pid that is no longer this lab's data path is left alone)
        stopped = lab.stop_datapath(name, state)
    except (lab.LabError, OSError) as e:
        raise CliError(f"lab restart {name!r}: stopping the data path failed: {e}") from None
    proc = start_datapath(name, state, restore=restore)
    try:
        wait_ready(name, proc)
        wait_functions_active(name, plan.lifecycle.eni_create_delay + READY_TIMEOUT)
    except BaseException as e:
        _stop_child(proc)
        with contextlib.suppress(Exception):
            state["pid"] = None
            lab.save_state(name, state)
        if isinstance(e, CliError):
            raise CliError(f"lab restart {name!r}: {e}\nthe lab's namespaces are still there: "
                           f"`{PROG} lab restart --name {name}` again, or `lab down`",
                           e.code) from None
        raise
    return {"name": name, **stopped, "pid": proc.pid,
            "restore": ask(name, "counters")["restore"]}


def print_restart(rep: Dict[str, Any], out=sys.stdout) -> None:
    name = rep["name"]
    if rep["stopped_pid"]:
        saved = rep.get("saved") or {}
        how = ("it saved its state as it stopped" if saved.get("final")
               and saved.get("pid") == rep["stopped_pid"] else
               "it did not save at stop (killed?): the last periodic save is what is left")
        print(f"lab {name}: data path pid {rep['stopped_pid']} stopped; {how}", file=out)
    else:
        print(f"lab {name}: no data path was running", file=out)
    r = rep["restore"]
    if r.get("restored_from"):
        print(f"new data path pid {rep['pid']}: restored {r['restored']} connection(s) from "
              f"{r['restored_from']} (expired {r['expired']}, ENI mismatch "
              f"{r['eni_mismatch']}, duplicate {r['duplicate']}, table full {r['table_full']}, "
              f"invalid {r['invalid']}; down for {r['down_for']:.1f} s)", file=out)
    else:
        why = r.get("ignored") or "no state file"
        print(f"new data path pid {rep['pid']}: started afresh ({why}); the connections "
              "that were open are gone", file=out)


def wait_ready(name: str, proc: subprocess.Popen) -> None:
    """Wait until the data path ``proc`` answers ping; CliError (with its log's tail) when it
    exits or stays silent for READY_TIMEOUT."""
    log_path = os.path.join(os.path.dirname(control_path(name)), "datapath.log")
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise CliError(f"the data path exited with status {proc.returncode}:\n"
                           + _tail(log_path))
        try:
            ask(name, "ping", timeout=1.0)
            return
        except CliError:
            if time.monotonic() > deadline:
                raise CliError(f"the data path did not answer within {READY_TIMEOUT:.0f} s:\n"
                               + _tail(log_path)) from None
            time.sleep(0.05)


def _stop_child(proc: subprocess.Popen, timeout: Optional[float] = None) -> None:
    """Stop a process this process started -- a data path, a bench's iperf3 server -- by its
    Popen (SIGTERM, then SIGKILL after ``timeout`` s, default the lab's STOP_TIMEOUT) and
    reap it."""
    from hyperplane import lab

    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=lab.STOP_TIMEOUT if timeout is None else timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def wait_functions_active(name: str, timeout: float) -> List[Dict[str, Any]]:
    """Poll the control plane until no function is Pending and no update is in progress."""
    deadline = time.monotonic() + timeout
    while True:
        fns = ask(name, "functions")["functions"]
        busy = [f["name"] for f in fns
                if f["state"] == "Pending" or f.get("last_update_status") == "InProgress"]
        if not busy:
            return fns
        if time.monotonic() > deadline:
            raise CliError(f"function(s) {', '.join(busy)} still Pending after {timeout:.0f} s "
                           f"(see `{PROG} function list --name {name}`)")
        time.sleep(0.05)


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def status_dict(name: str) -> Dict[str, Any]:
    state, plan = load_lab(name)
    pid = state.get("pid")
    running = pid_alive(pid)
    nodes: List[Dict[str, Any]] = [{
        "name": "hyperplane", "role": "hyperplane", "netns": plan.node_ns,
        # the node's kernel holds no address: these are the ones the data path answers for
        "addresses": [a for e in plan.enis for a in (
            f"{e.ipv4}/{e.prefix4.split('/')[1]}",
            f"{e.ipv6}/{e.prefix6.split('/')[1]}" if e.ipv6 else None) if a]
        + [a for v in plan.envs for a in (
            f"{v.gw4}/{v.ipv4.split('/')[1]}" if v.gw4 else None,
            f"{v.gw6}/{v.ipv6.split('/')[1]}" if v.gw6 else None) if a],
    }]
    for v in plan.envs:
        nodes.append({"name": v.name, "role": "env", "netns": v.netns, "function": v.function,
                      "attach": v.attach, "eni": v.eni, "interface": v.ifname,
                      "addresses": [a for a in (v.ipv4, v.ipv6) if a]})
    for h in plan.hosts:
        nodes.append({"name": h.name, "role": "host", "netns": h.netns, "subnet": h.subnet,
                      "interface": h.ifname, "addresses": [a for a in (h.ipv4, h.ipv6) if a]})
    for h in plan.internet_hosts:
        nodes.append({"name": h.name, "role": "internet", "netns": h.netns,
                      "interface": h.ifname, "addresses": [a for a in (h.ipv4, h.ipv6) if a]})
    out = {
        "name": plan.name, "pid": pid, "running": running,
        "config": state.get("config_source"), "dir": os.path.dirname(control_path(name)),
        "nodes": nodes,
        "enis": [{"id": e.id, "subnet": e.subnet, "security_groups": list(e.security_groups),
                  "mac": e.mac, "addresses": [a for a in (e.ipv4, e.ipv6) if a]}
                 for e in plan.enis],
        "fabric": {"netns": plan.fabric_ns,
                   "subnets": [{"id": s.id, "cidr": s.cidr, "ipv6_cidr": s.ipv6_cidr,
                                "router": [a for a in (s.router4, s.router6) if a]}
                               for s in plan.subnets]},
        "nat_gateways": [{"id": n.id, "subnet": n.subnet, "private_ipv4": n.private_ipv4,
                          "public_ipv4": n.public_ipv4, "idle_timeout": n.idle_timeout}
                         for n in plan.nat_gateways],
    }
    if running:
        try:
            c = ask(name, "counters", timeout=2.0)
            out["counters"] = {k: c[k] for k in ("forwarded_outbound", "forwarded_inbound",
                                                 "drops")}
            out["counters"]["drops"] = {k: v for k, v in c["drops"].items() if v}
            for e, ce in zip(out["enis"], c["enis"]):
                e["connections"] = ce["connections"]
                e["pool"] = {f"{p['family']}/{p['proto']}": p["used"] for p in ce["pool"]}
                e["drops"] = {k: v for k, v in ce["drops"].items() if v}
            out["control_plane"] = c.get("control_plane", {})
            out["functions"] = ask(name, "functions", timeout=2.0)["functions"]
            out["live_enis"] = ask(name, "enis", timeout=2.0)["enis"]
        except CliError as e:
            out["running"] = False
            out["error"] = str(e)
    if plan.nacls:
        from hyperplane import lab

        try:
            out["nacl_counters"] = lab.nacl_counters(plan)
        except Exception as e:  # the fabric is read with nft; report, do not fail status
            out["nacl_counters_error"] = str(e)
    return out


def print_status(st: Dict[str, Any], out=sys.stdout) -> None:
    p = lambda s="": print(s, file=out)  # noqa: E731
    run = f"running, pid {st['pid']}" if st["running"] else "NOT running"
    p(f"lab {st['name']}: data path {run}; config {st['config']}")
    p(f"  {'node':<14} {'role':<10} {'netns':<28} addresses")
    for n in st["nodes"]:
        extra = f" ({n['attach']})" if n.get("attach") else ""
        p(f"  {n['name'] + extra:<14} {n['role']:<10} {n['netns']:<28} "
          + " ".join(n["addresses"]))
    for e in st["enis"]:
        p(f"  ENI {e['id']} in {e['subnet']} ({', '.join(e['security_groups'])}): "
          + " ".join(e["addresses"])
          + (f"  connections={e['connections']}" if "connections" in e else ""))
    for f in st.get("functions", []):
        p(f"  function {f['name']}: {f['state']}"
          + (f" ({f['state_reason_code']})" if f.get("state_reason_code") else "")
          + f", ENIs {', '.join(f.get('enis', [])) or '-'}")
    for n in st.get("nat_gateways", []):
        p(f"  NAT gateway {n['id']} in {n['subnet']}: {n['private_ipv4']} -> "
          f"{n['public_ipv4']} (idle timeout {n['idle_timeout']:g} s)")
    denied = [r for r in st.get("nacl_counters", []) if r["action"] == "deny" and r["packets"]]
    for r in denied:
        p(f"  NACL {r['acl']} {r['direction']} rule {r['rule']} denied {r['packets']} packet(s)")
    c = st.get("counters")
    if c:
        drops = " ".join(f"{k}={v}" for k, v in c["drops"].items()) or "none"
        p(f"  forwarded: outbound={c['forwarded_outbound']} inbound={c['forwarded_inbound']}"
          f"  data-path drops: {drops}")


# ---- commands ----------------------------------------------------------------------------------
def cmd_lab_up(args) -> int:
    lab_up(args.config, args.name, wait_active=not args.no_wait)
    print_status(status_dict(args.name))
    print(f"\nrun commands in it with `{PROG} lab exec NODE --name {args.name} -- CMD`; "
          f"stop it with `{PROG} lab down --name {args.name}`")
    return EXIT_OK


def cmd_lab_restart(args) -> int:
    rep = lab_restart(args.name, restore=not args.no_restore)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_restart(rep)
    return EXIT_OK


def cmd_lab_status(args) -> int:
    st = status_dict(args.name)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print_status(st)
    return EXIT_OK if st["running"] else EXIT_FAIL


def cmd_lab_exec(args) -> int:
    from hyperplane import netns

    _, plan = load_lab(args.name)
    cmd = list(args.cmd)
    if not cmd:
        raise CliError("no command given: `lab exec NODE -- CMD...`", EXIT_USAGE)
    names = {"hyperplane": plan.node_ns, "node": plan.node_ns, "vpc": plan.fabric_ns}
    names.update({v.name: v.netns for v in plan.envs})
    names.update({h.name: h.netns for h in plan.hosts})
    names.update({h.name: h.netns for h in plan.internet_hosts})
    if plan.internet is not None:
        names["internet"] = plan.internet.netns
    ns = names.get(args.node)
    if ns is None:
        raise CliError(f"no node {args.node!r} in lab {args.name!r}; nodes: "
                       + ", ".join(sorted(names)), EXIT_NOT_FOUND)
    _need_privilege()
    sys.stdout.flush()
    try:
        netns.exec_in(ns, cmd)
    except FileNotFoundError:
        print(f"{PROG}: {cmd[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"{PROG}: {cmd[0]}: permission denied", file=sys.stderr)
        return 126
    return EXIT_FAIL  # not reached: exec replaced the process


def cmd_lab_down(args) -> int:
    from hyperplane import lab, labconfig

    try:
        labconfig.validate_lab_name(args.name)
    except labconfig.LabConfigError as e:
        raise _config_error(e) from None
    try:
        if lab.load_state(args.name) is None:
            print(f"no lab named {args.name!r}: nothing to do")
            return EXIT_OK
    except lab.LabError as e:
        raise CliError(str(e)) from None
    _need_privilege()
    try:
        rep = lab.teardown(args.name)
    except lab.LabError as e:
        raise CliError(f"{e}; run `{PROG} lab down --name {args.name}` again") from None
    stopped = f"stopped data path pid {rep['stopped_pid']}; " if rep.get("stopped_pid") else ""
    print(f"lab {args.name} down: {stopped}removed {len(rep['removed_namespaces'])} "
          f"namespace(s)")
    return EXIT_OK


def cmd_lab_list(args) -> int:
    from hyperplane import lab

    for name in lab.list_labs():
        st = lab.load_state(name) or {}
        run = "running" if pid_alive(st.get("pid")) else "stopped"
        print(f"{name}\t{run}\t{st.get('config_source', '?')}")
    return EXIT_OK


def cmd_run(args) -> int:
    from hyperplane import daemon, labconfig, netns

    try:
        labconfig.validate_lab_name(args.name)
        plan = labconfig.resolve(labconfig.load(args.config), args.name)
    except labconfig.LabConfigError as e:
        raise _config_error(e) from None
    except OSError as e:
        raise CliError(f"cannot read {args.config}: {e.strerror}", EXIT_USAGE) from None
    _need_privilege()
    missing = [ns for ns in plan.namespaces() if not netns.exists(ns)]
    if missing:
        raise CliError(f"namespace(s) {', '.join(missing)} do not exist; build the lab with "
                       f"`{PROG} lab up {args.config} --name {args.name}`", EXIT_NOT_FOUND)
    if hp.ENGINE != "compiled":
        if hp.ENGINE_FALLBACK_REASON is None:   # chosen, not fallen back to
            raise CliError(f"the data path needs the compiled engine, but {hp.ENGINE_ENV}="
                           f"{hp.ENGINE} selects the {hp.ENGINE} engine; unset it", EXIT_USAGE)
        raise CliError("the data path needs the compiled engine: "
                       f"{hp.ENGINE_FALLBACK_REASON}; rebuild with `pip install -e .`")
    try:
        return daemon.run_plan(plan, args.control, restore=not args.no_restore)
    except labconfig.LabConfigError as e:
        raise _config_error(e) from None
    except OSError as e:
        raise CliError(f"data path: {e}") from None


def cmd_demo(args) -> int:
    from hyperplane import demo

    return demo.run(name=args.name, keep=args.keep)


def cmd_walk(args) -> int:
    from hyperplane import walk

    return walk.run_walk()


def cmd_engine(args) -> int:
    from hyperplane import walk

    print(f"engine: {hp.ENGINE}")
    print(f"why: {walk.engine_reason()}")
    return EXIT_OK


# ---- the VPC control plane: functions, ENIs, the lab clock -----------------------------------------
def _running(name: str) -> None:
    state, _ = load_lab(name)
    if not pid_alive(state.get("pid")):
        raise CliError(f"the data path of lab {name!r} is not running; "
                       f"`{PROG} lab down --name {name}` and `lab up` again")


def _control(lab_name: str, cmd: str, /, **args) -> Dict[str, Any]:
    """One control request to a running lab; a refusal becomes a CliError with its text."""
    from hyperplane import daemon

    _running(lab_name)
    try:
        r = daemon.request(control_path(lab_name), cmd, **args)
    except (OSError, ValueError) as e:
        raise CliError(f"the data path of lab {lab_name!r} does not answer ({e})") from None
    if not r.get("ok"):
        raise CliError(r.get("error", "refused"), EXIT_USAGE if r.get("code") else EXIT_FAIL)
    return r


def _ids(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    return [x for x in (t.strip() for t in text.split(",")) if x]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``20m``, ``6h``, ``30d`` -> seconds."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    num = t[:-1] if unit else t
    try:
        v = float(num) * (unit or 1)
    except ValueError:
        raise CliError(f"{text!r} is not a duration; write seconds or a number with s, m, h "
                       "or d (e.g. 90, 20m, 30d)", EXIT_USAGE) from None
    if not 0 <= v <= 10 * 365 * 86400:
        raise CliError(f"{text!r}: a duration from 0 to ten years", EXIT_USAGE)
    return v


def _table(rows: List[List[str]], out=sys.stdout) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def _fill(pools: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v['used']}/{v['size']}" for k, v in sorted(pools.items())
                    if v.get("used")) or "-"


def cmd_eni_list(args) -> int:
    r = _control(args.name, "enis")
    if args.json:
        print(json.dumps(r["enis"], indent=2))
        return EXIT_OK
    rows = [["ENI", "STATE", "SUBNET", "SECURITY GROUPS", "ADDRESSES", "FUNCTIONS", "PORTS USED"]]
    for e in r["enis"]:
        rows.append([e["id"], e["state"], e["subnet"], ",".join(e["security_groups"]),
                     " ".join(a for a in (e.get("ipv4"), e.get("ipv6")) if a),
                     ",".join(e.get("functions", [])) or "-", _fill(e.get("pools", {}))])
    _table(rows)
    return EXIT_OK


def cmd_function_list(args) -> int:
    r = _control(args.name, "functions")
    if args.json:
        print(json.dumps(r["functions"], indent=2))
        return EXIT_OK
    rows = [["FUNCTION", "STATE", "LAST UPDATE", "SUBNETS", "SECURITY GROUPS", "IPV6", "ENIS"]]
    for f in r["functions"]:
        rows.append([f["name"], f["state"] + (f" ({f['state_reason_code']})"
                                              if f.get("state_reason_code") else ""),
                     f.get("last_update_status", "-"), ",".join(f["subnet_ids"]) or "(no VPC)",
                     ",".join(f["security_group_ids"]) or "-",
                     "yes" if f.get("ipv6_allowed") else "no", ",".join(f.get("enis", [])) or "-"])
    _table(rows)
    return EXIT_OK


def cmd_function_update(args) -> int:
    if args.no_vpc and (args.subnets or args.security_groups):
        raise CliError("--no-vpc removes the VPC config; do not combine it with --subnets or "
                       "--security-groups", EXIT_USAGE)
    subnets = [] if args.no_vpc else _ids(args.subnets)
    sgs = [] if args.no_vpc else _ids(args.security_groups)
    if subnets is None and sgs is None and args.ipv6 is None:
        raise CliError("nothing to update: give --subnets, --security-groups, "
                       "--ipv6-dual-stack/--no-ipv6-dual-stack or --no-vpc", EXIT_USAGE)
    r = _control(args.name, "function_update", name=args.function, subnet_ids=subnets,
                 security_group_ids=sgs, ipv6=args.ipv6)
    f = r["function"]
    print(f"{f['name']}: State={f['state']} LastUpdateStatus={f.get('last_update_status')}")
    if args.wait:
        _, plan = load_lab(args.name)
        fns = wait_functions_active(args.name, plan.lifecycle.eni_create_delay + READY_TIMEOUT)
        f = next(x for x in fns if x["name"] == args.function)
        print(f"{f['name']}: State={f['state']} LastUpdateStatus={f.get('last_update_status')}")
    return EXIT_OK


def cmd_function_invoke(args) -> int:
    r = _control(args.name, "invoke", name=args.function)
    print(json.dumps(r["result"]))
    return EXIT_OK


def cmd_clock(args) -> int:
    seconds = parse_duration(args.advance) if args.advance else 0.0
    r = _control(args.name, "clock", advance=seconds)
    print(f"lab clock: {r['now']:.1f} s (ahead of the machine's clock by {r['offset']:.1f} s)")
    return EXIT_OK


def _command_group(sub, name: str, help: str):
    """A command with subcommands (``lab``, ``eni``, ``function``); given alone it prints its
    own usage and exits with the usage status."""
    parser = sub.add_parser(name, help=help)
    group = parser.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND")
    parser.set_defaults(func=lambda a: (parser.print_usage(sys.stderr), EXIT_USAGE)[1])
    return group


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="hyperplane: a userspace connection-tracking V2N source NAT that behaves "
                    "like the Hyperplane ENI behind an AWS Lambda function attached to a VPC, "
                    "with network-namespace labs to run it in.",
        epilog="exit status: 0 ok, 1 failed, 2 usage/config error, 3 no such lab/node, "
               f"4 needs CAP_NET_ADMIN. {hp.ENGINE_ENV}=reference selects the pure-Python "
               "reference engine (for walk; the data path needs the compiled one).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"{PROG} {hp.__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="bring up the default lab, send TCP and UDP over IPv4 and "
                                    "IPv6 through the data path, show the table, counters and "
                                    "an unsolicited packet dropped, tear down (root)")
    p.add_argument("--name", default=None, help="lab name (default: demo-XXXX, unique)")
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    p.set_defaults(func=cmd_demo)

    labsub = _command_group(sub, "lab", "build, inspect, use and remove labs (root)")

    def named(q):
        q.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")
        return q

    q = named(labsub.add_parser("up", help="build a lab and start its data path"))
    q.add_argument("config", nargs="?", help="lab TOML (default: the embedded default lab: "
                                             "two functions sharing one ENI, one TAP and one "
                                             "veth environment, one server)")
    q.add_argument("--no-wait", action="store_true", help="return once the data path answers, "
                   "without waiting for the functions' ENIs (Pending -> Active)")
    q.set_defaults(func=cmd_lab_up)
    q = named(labsub.add_parser("status", help="nodes, addresses, ENIs, data path state"))
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_lab_status)
    q = named(labsub.add_parser("exec", help="run a command in a node's namespace"))
    q.add_argument("node", help="an environment (e.g. fn-a-0), a host (e.g. server), "
                                "'hyperplane' or 'vpc'")
    q.add_argument("cmd", nargs="*", metavar="-- CMD", help="the command and its arguments, "
                   "after `--` (everything after the first `--` is the command's)")
    q.set_defaults(func=cmd_lab_exec)
    q = named(labsub.add_parser(
        "restart", help="stop the data path (it saves its connection table) and start a new "
                        "one that restores it: open connections keep their ENI port and go on"))
    q.add_argument("--no-restore", action="store_true", help="start the new data path afresh "
                   "(the open connections break), e.g. to compare")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_lab_restart)
    q = named(labsub.add_parser("down", help="stop the data path and remove the lab "
                                             "(idempotent)"))
    q.set_defaults(func=cmd_lab_down)
    q = labsub.add_parser("list", help="labs on this machine")
    q.set_defaults(func=cmd_lab_list)

    esub = _command_group(sub, "eni", "the lab's Hyperplane ENIs (running lab)")
    q = named(esub.add_parser("list", help="ENIs with state, key, addresses, users, port use"))
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_eni_list)

    fsub = _command_group(sub, "function", "the lab's Lambda functions (running lab)")
    q = named(fsub.add_parser("list", help="functions with state and VPC config"))
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_function_list)
    q = named(fsub.add_parser(
        "update", help="UpdateFunctionConfiguration(VpcConfig=...): the old ENI keeps "
                       "carrying traffic until the new one is available"))
    q.add_argument("function", help="function name")
    q.add_argument("--subnets", help="comma-separated subnet ids (SubnetIds)")
    q.add_argument("--security-groups", help="comma-separated security group ids")
    v6 = q.add_mutually_exclusive_group()
    v6.add_argument("--ipv6-dual-stack", dest="ipv6", action="store_true", default=None,
                    help="Ipv6AllowedForDualStack=true (every subnet must be dual-stack)")
    v6.add_argument("--no-ipv6-dual-stack", dest="ipv6", action="store_false",
                    help="Ipv6AllowedForDualStack=false")
    q.add_argument("--no-vpc", action="store_true", help="remove the VPC config (its ENIs are "
                   "deleted after the delete delay if no other function uses them)")
    q.add_argument("--wait", action="store_true", help="wait until the update has completed")
    q.set_defaults(func=cmd_function_update)
    q = named(fsub.add_parser("invoke", help="invoke: fails while Pending or Inactive (an "
                                             "Inactive function then starts Pending)"))
    q.add_argument("function", help="function name")
    q.set_defaults(func=cmd_function_invoke)

    q = named(sub.add_parser("clock", help="show the lab clock, or move it forward "
                                           "(lifecycle timers and connection timeouts)"))
    q.add_argument("--advance", metavar="DURATION", help="e.g. 90, 20m, 30d")
    q.set_defaults(func=cmd_clock)

    p = sub.add_parser("run", help="run the data path in the foreground on a lab's existing "
                                   "interfaces (what `lab up` starts in the background)")
    p.add_argument("config", help="lab TOML")
    p.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")
    p.add_argument("--control", default=None, help="control socket path (default: none)")
    p.add_argument("--no-restore", action="store_true", help="do not restore the connection "
                   "table the lab's previous data path saved (conntrack.state)")
    p.set_defaults(func=cmd_run)

    from hyperplane.walk import WALK_HELP
    p = sub.add_parser("walk", help="walk packets through the engine in memory (no root)",
                       description=WALK_HELP)
    p.set_defaults(func=cmd_walk)
    p = sub.add_parser("engine", help="print which engine is in use, and why")
    p.set_defaults(func=cmd_engine)
    from hyperplane import bench
    bench.register(sub)

    # Observability: each module adds its own commands (conntrack list|events|flush; stats,
    # metrics, top; flowlogs; capture).
    from hyperplane import capture, ctcli, flowlogs, stats
    for mod in (ctcli, stats, flowlogs, capture):
        mod.register(sub, named)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to `lab exec`'s command, untouched by argparse.
    tail: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)          # usage errors exit with status 2 here
    if tail:
        if getattr(args, "cmd", None) is None:
            ap.error("`--` is only for `lab exec NODE -- CMD...`")
        args.cmd = list(args.cmd) + tail
    if args.command is None:
        ap.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required; see {PROG} --help", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:             # e.g. "hyperplane walk | head": stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
