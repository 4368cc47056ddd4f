"""A lab's life: up, status, restart, down -- the library under ``hyperplane lab`` and
:class:`hyperplane.Lab`.

``lab_up`` resolves a config into a plan, builds it in network namespaces
(hyperplane.topology), starts the data path as a child process (``python -m hyperplane run``
on the lab's copy of its config) and waits until it answers and no function is Pending.
Everything else talks to that data path over its control socket (hyperplane.control) or reads
the lab's state file. Every error is a :class:`~hyperplane.errors.HyperplaneError` carrying
the sentence and exit status the command line prints.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from hyperplane import control, labconfig, netns, paths, proc, topology
from hyperplane.datapath.statefile import read_state_file
from hyperplane.errors import (EXIT_FAIL, EXIT_NOT_FOUND, EXIT_PRIVILEGE, EXIT_USAGE, PROG,
                               HyperplaneError, LabConfigError, LabError, config_error)
from hyperplane.observe import exporter as metrics_exporter
from hyperplane.topology import impair as link_impair

#: Seconds the data path gets to answer its first ping, and (added to the ENI creation delay)
#: for its functions to leave Pending.
READY_TIMEOUT = 20.0

#: ``progress(step, done, total)``: what a long call is doing now (``step``, a short sentence)
#: and how many of its ``total`` steps are done; the command line shows it on a terminal.
Progress = Callable[[str, int, int], None]


def _no_progress(step: str, done: int, total: int) -> None:
    pass


def need_privilege() -> None:
    """HyperplaneError (exit status 4) unless this process may build and enter labs."""
    why = netns.privilege_problem()
    if why:
        raise HyperplaneError(f"building or entering a lab {why}", EXIT_PRIVILEGE)


# ---- reading a lab ------------------------------------------------------------------------------
def load_lab(name: str) -> Tuple[Dict[str, Any], labconfig.Plan]:
    """(state, plan) of a lab that exists, else HyperplaneError (exit status 3)."""
    state = topology.load_state(name)      # LabError (a HyperplaneError) when unreadable
    if state is None:
        raise HyperplaneError(f"no lab named {name!r}; start one with `{PROG} lab up --name "
                              f"{name}`", EXIT_NOT_FOUND)
    try:
        return state, labconfig.Plan.from_dict(state["plan"])
    except Exception as e:   # an edited or foreign state file
        raise HyperplaneError(f"the state file {paths.state_path(name)} does not describe a lab "
                              f"({type(e).__name__}: {e}); the lab's namespaces are named "
                              f"hp-{name}-*") from None


def ask(name: str, cmd: str, timeout: float = 5.0) -> Dict[str, Any]:
    """One control request to lab ``name``'s data path, the reply as it is (``ok`` unchecked);
    HyperplaneError when it does not answer."""
    try:
        return control.request(paths.control_path(name), cmd, timeout=timeout)
    except (OSError, ValueError) as e:
        raise HyperplaneError(f"the data path of lab {name!r} does not answer ({e}); "
                              f"see {paths.log_path(name)}", EXIT_FAIL) from None


def check_running(name: str) -> None:
    """HyperplaneError unless lab ``name`` exists and its data path runs."""
    state, _ = load_lab(name)
    if not proc.pid_alive(state.get("pid")):
        raise HyperplaneError(f"the data path of lab {name!r} is not running; "
                              f"`{PROG} lab down --name {name}` and `lab up` again")


def request(name: str, cmd: str, /, **args) -> Dict[str, Any]:
    """One control request to a running lab; a refusal becomes a HyperplaneError with its text
    (exit status 2 when the data path says the request was wrong)."""
    check_running(name)
    try:
        r = control.request(paths.control_path(name), cmd, **args)
    except (OSError, ValueError) as e:
        raise HyperplaneError(f"the data path of lab {name!r} does not answer ({e})") from None
    if not r.get("ok"):
        raise HyperplaneError(r.get("error", "refused"),
                              EXIT_USAGE if r.get("code") else EXIT_FAIL)
    return r


def subscribe(name: str, spec: Dict[str, Any], kinds: List[str]) -> socket.socket:
    """A connection to lab ``name``'s data path subscribed to connection events (``kinds``,
    filter ``spec``), positioned at the first event line; HyperplaneError when the lab is not
    running or its data path does not answer, or (exit status 2) refuses the filter."""
    check_running(name)
    try:
        return control.subscribe(paths.control_path(name), spec, kinds)
    except (OSError, ValueError) as e:
        raise HyperplaneError(f"the data path of lab {name!r} does not answer ({e})") from None


def list_labs() -> List[Dict[str, Any]]:
    """The labs on this machine: name, whether their data path runs, their config's source."""
    out = []
    for name in topology.list_labs():
        st = topology.load_state(name) or {}
        out.append({"name": name, "running": proc.pid_alive(st.get("pid")),
                    "config": st.get("config_source", "?")})
    return out


# ---- up -------------------------------------------------------------------------------------------
def read_config(config_path: Optional[str], name: str, config_text: Optional[str] = None
                ) -> Tuple[str, str, labconfig.Plan, str]:
    """(text, source, plan, config_dir) of a config: ``config_text`` (a program's variant of a
    file; ``config_path`` then only names where it came from), the file ``config_path``, or the
    embedded default lab. ``config_dir`` is the absolute folder its relative paths (a
    function's code, a host's command) are taken from: the config file's folder, or the
    current directory for text and the default lab (labconfig.config_dir). Mistakes are
    HyperplaneError with exit status 2."""
    try:
        paths.validate_lab_name(name)
        if config_text is not None:
            text, source = config_text, config_path or "<text>"
            config_dir = labconfig.config_dir(source)
            cfg = labconfig.loads(text, source=source, base_dir=config_dir)
        elif config_path:
            try:
                with open(config_path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise HyperplaneError(f"cannot read {config_path}: {e.strerror}",
                                      EXIT_USAGE) from None
            config_dir = labconfig.config_dir(config_path)
            cfg = labconfig.loads(text, source=config_path, base_dir=config_dir)
            source = os.path.abspath(config_path)
        else:
            text, cfg, source = labconfig.default_text(), labconfig.default(), \
                "<embedded default>"
            config_dir = cfg.base_dir
        return text, source, labconfig.resolve(cfg, name), config_dir
    except LabConfigError as e:
        raise config_error(e) from None


def lab_up(config_path: Optional[str], name: str, wait_active: bool = True,
           config_text: Optional[str] = None, *, log_level: Optional[str] = None,
           progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Build the lab, start its data path in the background, wait until it answers and (with
    ``wait_active``) until no function is Pending any more: its ENIs take the lifecycle's
    creation delay to become available, as in AWS, where a new VPC function is Pending until
    then (`aws lambda wait function-active`). Returns the lab's state. A failure rolls back
    everything this call built, Ctrl-C included. ``log_level`` (one of proc.LOG_LEVELS; None:
    the environment's HYPERPLANE_LOG_LEVEL, else info) is the data path's and the workloads
    service's, kept for ``lab restart``; ``progress`` hears of each step (:data:`Progress`)."""
    step = progress or _no_progress
    total = 7 if wait_active else 6
    step("validate the lab file", 0, total)
    text, source, plan, config_dir = read_config(config_path, name, config_text)
    try:
        level = proc.log_level(log_level)
    except ValueError as e:
        raise HyperplaneError(str(e), EXIT_USAGE) from None
    need_privilege()
    step(f"build {len(plan.namespaces())} namespaces and their links", 1, total)
    # Refuses an existing lab of that name touching nothing; rolls its own failures back.
    state = topology.build(plan, config_source=source)
    # The data path re-reads the lab's copy of the config, which lives elsewhere: it takes
    # relative paths from here (start_datapath saves the state with it).
    state["config_dir"] = config_dir
    state["log_level"] = level
    child: Optional[subprocess.Popen] = None
    workloads: Optional[subprocess.Popen] = None
    exporter: Optional[subprocess.Popen] = None
    try:
        with open(paths.config_copy_path(name), "w", encoding="utf-8") as f:
            f.write(text)
        step("start the data path", 2, total)
        child = start_datapath(name, state)
        step("start the workloads service", 3, total)
        workloads = start_workloads(name, state)
        exporter = start_metrics(name, state, plan.metrics.listen)
        step("wait for the data path to answer", 4, total)
        wait_ready(name, child)
        step("wait for the workloads service to answer", 5, total)
        wait_workloads_ready(name, workloads)
        if exporter is not None:
            wait_metrics_ready(name, state, exporter)
        link_impair.apply_all(plan)   # [[impairments]]: the links exist now
        if wait_active:
            step(f"wait for {len(plan.enis)} ENI(s) to become Active "
                 f"({plan.lifecycle.eni_create_delay:g} s creation delay)", 6, total)
            wait_functions_active(name, plan.lifecycle.eni_create_delay + READY_TIMEOUT)
        step("ready", total, total)
    except BaseException as e:
        # Roll back: nothing of a failed `lab up` stays behind. The data path is stopped by the
        # pid this run started (the state file may not have recorded it yet), then teardown
        # removes what the state file records.
        for other in (workloads, exporter):
            if other is not None:
                proc.stop_child(other)
        if child is not None:
            proc.stop_child(child)
            try:   # stopped and reaped: its pid may be reused, so teardown must not signal it
                state["pid"] = None
                topology.save_state(name, state)
            except Exception:
                pass
        outcome = topology.rollback(name)
        if isinstance(e, HyperplaneError):
            raise HyperplaneError(f"lab up {name!r} failed: {e}\n{outcome}", e.code) from None
        if isinstance(e, Exception):
            raise HyperplaneError(f"lab up {name!r} failed: {type(e).__name__}: {e}\n"
                                  f"{outcome}") from e
        if hasattr(e, "add_note"):   # KeyboardInterrupt and the like go on as they are
            e.add_note(outcome)
        raise
    return state


def datapath_argv(name: str, restore: bool = True,
                  config_dir: Optional[str] = None) -> List[str]:
    """The data path's command line: ``hyperplane run`` on the lab's copy of its config, with
    relative paths taken from ``config_dir`` (the original config's folder, the lab state's
    ``config_dir``; None: the copy's folder, as for a lab whose state predates it)."""
    return ([sys.executable, "-m", "hyperplane", "run",
             os.path.abspath(paths.config_copy_path(name)),
             "--name", name, "--control", os.path.abspath(paths.control_path(name))]
            + (["--config-dir", config_dir] if config_dir else [])
            + ([] if restore else ["--no-restore"]))


def datapath_env(log_level: Optional[str] = None) -> Dict[str, str]:
    """The data path's environment: ours, with the directory this package was imported from
    first on its path and an absolute run directory. It runs in the lab's directory, so the
    directory a user started us in (a source checkout, say, with an unbuilt ``hyperplane/``)
    cannot shadow the package its parent imported. ``log_level``, when given, is its
    HYPERPLANE_LOG_LEVEL."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(paths.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in
                                                  env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["HYPERPLANE_RUN_DIR"] = os.path.abspath(paths.run_dir())
    if log_level:
        env[proc.LOG_LEVEL_ENV] = log_level
    return env


def _start_child(name: str, argv: List[str], log_path: str, state: Dict[str, Any],
                 pid_key: str) -> subprocess.Popen:
    """Start one of the lab's processes in the background, in a session of its own, logging
    to ``log_path``, and record its pid in the lab's state under ``pid_key``."""
    with open(log_path, "ab") as logf:
        child = subprocess.Popen(argv, cwd=paths.lab_dir(name),
                                 env=datapath_env(state.get("log_level")),
                                 stdin=subprocess.DEVNULL, stdout=logf,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True)
    state[pid_key] = child.pid
    try:
        topology.save_state(name, state)
    except BaseException:
        proc.stop_child(child)
        raise
    return child


def start_datapath(name: str, state: Dict[str, Any], restore: bool = True) -> subprocess.Popen:
    """Start the lab's data path in the background (logging to datapath.log) and record its
    pid in the lab's state (relative paths in the config are taken from its ``config_dir``)."""
    return _start_child(name, datapath_argv(name, restore, state.get("config_dir")),
                        paths.log_path(name), state, "pid")


def start_workloads(name: str, state: Dict[str, Any]) -> subprocess.Popen:
    """Start the lab's workloads service (hyperplane.workloads: the functions' Runtime API and
    code, the hosts' services) in the background, logging to workloads.log, and record its
    pid in the lab's state as ``workloads_pid``."""
    return _start_child(name, [sys.executable, "-m", "hyperplane.workloads", "--name", name],
                        paths.workloads_log_path(name), state, "workloads_pid")


def wait_workloads_ready(name: str, child: subprocess.Popen) -> None:
    """Wait until the workloads service answers ping (HyperplaneError with its log's tail when
    it exits or stays silent for READY_TIMEOUT)."""
    def ping() -> None:
        try:
            control.request(paths.workloads_socket_path(name), "ping", timeout=1.0)
        except (OSError, ValueError) as e:
            raise HyperplaneError(str(e)) from None
    _wait_answering(child, ping, "the workloads service", paths.workloads_log_path(name))


def start_metrics(name: str, state: Dict[str, Any],
                  listen: str) -> Optional[subprocess.Popen]:
    """Start the lab's Prometheus exporter (hyperplane.observe.exporter; ``[metrics] listen``)
    in the background, logging to metrics.log, and record its pid as ``metrics_pid``; None
    (and nothing started) when ``listen`` is "" (no ``[metrics]``)."""
    if not listen:
        return None
    with contextlib.suppress(FileNotFoundError):   # a dead exporter's URL is not the new one's
        os.unlink(paths.metrics_url_path(name))
    state["metrics_url"] = None
    return _start_child(name, [sys.executable, "-m", "hyperplane.observe.exporter",
                               "--name", name, "--listen", listen],
                        paths.metrics_log_path(name), state, "metrics_pid")


def wait_metrics_ready(name: str, state: Dict[str, Any], child: subprocess.Popen) -> str:
    """Wait until the exporter serves its URL over HTTP, record that URL (the real port when
    port 0 was asked) in the lab's state as ``metrics_url`` and return it; HyperplaneError
    with its log's tail when it exits or stays silent for READY_TIMEOUT."""
    def ping() -> None:
        url = metrics_exporter.read_url(name)
        try:
            if url is None:
                raise OSError("it has not written its URL yet")
            metrics_exporter.scrape(url, timeout=2.0)
        except OSError as e:
            raise HyperplaneError(str(e)) from None
    _wait_answering(child, ping, "the metrics exporter", paths.metrics_log_path(name))
    state["metrics_url"] = metrics_exporter.read_url(name)
    topology.save_state(name, state)
    return state["metrics_url"]


def workloads_request(name: str, cmd: str, timeout: float = 5.0, /,
                      **args) -> Dict[str, Any]:
    """One request to lab ``name``'s workloads service; its refusal is a HyperplaneError with
    its words (exit status 2 for a malformed request, 1 otherwise)."""
    state, _ = load_lab(name)
    if not proc.pid_alive(state.get("workloads_pid")):
        raise HyperplaneError(f"the workloads service of lab {name!r} is not running (it runs "
                              f"the functions' code; its log: "
                              f"{paths.workloads_log_path(name)}); `{PROG} lab restart --name "
                              f"{name}` starts it again")
    try:
        r = control.request(paths.workloads_socket_path(name), cmd, timeout=timeout, **args)
    except (OSError, ValueError) as e:
        raise HyperplaneError(f"the workloads service of lab {name!r} does not answer ({e}); "
                              f"see {paths.workloads_log_path(name)}") from None
    if not r.get("ok"):
        raise HyperplaneError(r.get("error", "refused"),
                              EXIT_USAGE if r.get("code") == "usage" else EXIT_FAIL)
    return r


def wait_ready(name: str, child: subprocess.Popen) -> None:
    """Wait until the data path ``child`` answers ping; HyperplaneError (with its log's tail)
    when it exits or stays silent for READY_TIMEOUT."""
    _wait_answering(child, lambda: ask(name, "ping", timeout=1.0), "the data path",
                    paths.log_path(name))


def _wait_answering(child: subprocess.Popen, ping, what: str, log_path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if child.poll() is not None:
            raise HyperplaneError(f"{what} exited with status {child.returncode}:\n"
                                  + proc.tail(log_path))
        try:
            ping()
            return
        except HyperplaneError:
            if time.monotonic() > deadline:
                raise HyperplaneError(f"{what} did not answer within {READY_TIMEOUT:.0f} s:\n"
                                      + proc.tail(log_path)) from None
            time.sleep(0.05)


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
            raise HyperplaneError(f"function(s) {', '.join(busy)} still Pending after "
                                  f"{timeout:.0f} s (see `{PROG} function list --name {name}`)")
        time.sleep(0.05)


# ---- restart ------------------------------------------------------------------------------------
def saved_summary(name: str) -> Optional[Dict[str, Any]]:
    """What the lab's saved connection tables hold (who saved them, when, whether at shutdown,
    how many connections), without the tables; None when there is none, ``{"error": ...}``
    when the file cannot be read."""
    path = paths.conntrack_state_path(name)
    try:
        doc = read_state_file(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return {"path": path, "error": str(e)}
    tables = [t for f in ("keys", "nat_gateways") for t in doc.get(f) or []
              if isinstance(t, dict)]
    return {"path": path, "pid": doc.get("pid"), "final": doc.get("final"),
            "saved_wall": doc.get("saved_wall"),
            "connections": sum(t.get("connections") or 0 for t in tables
                               if isinstance(t.get("connections"), int))}


def stop_datapath(name: str, state: Dict[str, Any]) -> Dict[str, Any]:
    """Stop the lab's data path by the pid its state file records (SIGTERM: it saves its
    connection tables on the way out; SIGKILL after proc.STOP_TIMEOUT) and record that none
    runs. The namespaces, links and persistent TAPs stay, ready for a new data path. Returns
    ``stopped_pid`` (None when none was running) and ``saved`` (:func:`saved_summary`
    afterwards: ``final`` is true when the stopped process wrote it as it exited)."""
    stopped = proc.stop_lab_process(state.get("pid"), name)
    state["pid"] = None
    topology.save_state(name, state)
    return {"stopped_pid": stopped, "saved": saved_summary(name)}


def lab_restart(name: str, restore: bool = True,
                log_level: Optional[str] = None) -> Dict[str, Any]:
    """Stop the lab's data path (it saves its connection tables and control-plane state as
    it stops) and start a new one on the same namespaces, links and TAPs, which restores them
    (``restore=False``: starts afresh, the open connections break). Waits until it answers
    and no function is Pending. Returns what was stopped, saved and restored. ``log_level``
    (None: the one ``lab up`` recorded) is the new processes' and is recorded in turn."""
    state, plan = load_lab(name)
    if log_level is not None:
        try:
            state["log_level"] = proc.log_level(log_level)
        except ValueError as e:
            raise HyperplaneError(str(e), EXIT_USAGE) from None
    need_privilege()
    missing = [ns for ns in plan.namespaces() if not netns.exists(ns)]
    if missing:
        raise HyperplaneError(f"lab {name!r} is incomplete: namespace(s) {', '.join(missing)} "
                              f"are gone; `{PROG} lab down --name {name}` and `lab up` again",
                              EXIT_NOT_FOUND)
    try:   # (a recorded pid that is no longer this lab's data path is left alone)
        stopped = stop_datapath(name, state)
    except (LabError, OSError) as e:
        raise HyperplaneError(f"lab restart {name!r}: stopping the data path failed: {e}") \
            from None
    child = start_datapath(name, state, restore=restore)
    if not proc.pid_alive(state.get("workloads_pid")):   # it outlives a restart; if it died,
        topology.remove_function_code(name)              # the restart brings it back
        wait_workloads_ready(name, start_workloads(name, state))
    try:
        wait_ready(name, child)
        wait_functions_active(name, plan.lifecycle.eni_create_delay + READY_TIMEOUT)
    except BaseException as e:
        proc.stop_child(child)
        with contextlib.suppress(Exception):
            state["pid"] = None
            topology.save_state(name, state)
        if isinstance(e, HyperplaneError):
            raise HyperplaneError(f"lab restart {name!r}: {e}\nthe lab's namespaces are still "
                                  f"there: `{PROG} lab restart --name {name}` again, or "
                                  "`lab down`", e.code) from None
        raise
    # The exporter outlives a restart (serving hyperplane_up 0 meanwhile); if it died, the
    # restart brings it back.
    if plan.metrics.listen and not proc.pid_alive(state.get("metrics_pid")):
        exporter = start_metrics(name, state, plan.metrics.listen)
        try:
            wait_metrics_ready(name, state, exporter)
        except HyperplaneError as e:
            proc.stop_child(exporter)
            raise HyperplaneError(f"lab restart {name!r}: the data path runs again, but {e}\n"
                                  f"fix [metrics] listen and `{PROG} lab restart --name {name}` "
                                  "again", e.code) from None
    return {"name": name, **stopped, "pid": child.pid,
            "restore": ask(name, "counters")["restore"]}


# ---- down ---------------------------------------------------------------------------------------
def lab_down(name: str) -> Optional[Dict[str, Any]]:
    """Stop the data path and remove every namespace and file of lab ``name``. Idempotent:
    None when there is no such lab; else ``stopped_pid`` and ``removed_namespaces``."""
    try:
        paths.validate_lab_name(name)
    except LabConfigError as e:
        raise config_error(e) from None
    if topology.load_state(name) is None:
        return None
    need_privilege()
    try:
        return topology.teardown(name)
    except LabError as e:
        raise HyperplaneError(f"{e}; run `{PROG} lab down --name {name}` again") from None
