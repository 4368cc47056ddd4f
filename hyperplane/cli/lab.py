"""``hyperplane lab up|status|exec|restart|down|list`` and ``hyperplane run``; the lab file's
own commands (validate, schema, plan) are :mod:`hyperplane.cli.labfile`'s."""
from __future__ import annotations

import sys
from typing import Any, Dict

from hyperplane import engine, labconfig, netns
from hyperplane.cli import completers, impair, labfile, labgraph, lablogs, progress
from hyperplane.cli.common import DEFAULT_LAB, add_json, command_group, named, print_json
from hyperplane.datapath import daemon
from hyperplane.errors import (EXIT_FAIL, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, PROG,
                               HyperplaneError, LabConfigError, config_error)
from hyperplane.lab import lifecycle
from hyperplane.lab.api import Lab
from hyperplane.lab.status import namespaces_by_node, print_status, status


def print_restart(rep: Dict[str, Any], out=None) -> None:
    out = out or sys.stdout
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


def reclaim_note(lifecycle) -> str:
    """The line ``lab up`` prints about Lambda's idle reclaim, which surprised a new user."""
    return (f"note: an ENI whose functions are idle for {lifecycle.inactive_after:g} s "
            "([lifecycle] inactive_after) is reclaimed; the next packet or invocation fails, "
            f"and {lifecycle.eni_create_delay:g} s later a new ENI is up at a new address "
            "(`lab status` shows when each ENI would go)")


def cmd_lab_up(args) -> int:
    with progress.shown("lab up", enabled=not args.json) as step:
        lab = Lab.up(args.config, args.name, wait_active=not args.no_wait,
                     log_level=args.log_level, progress=step)
    if args.json:   # what `lab status --json` prints
        print_json(status(args.name))
        return EXIT_OK
    print_status(status(args.name))
    print(reclaim_note(lab.plan.lifecycle))
    print(f"\nrun commands in it with `{PROG} lab exec NODE --name {args.name} -- CMD`; "
          f"stop it with `{PROG} lab down --name {args.name}`")
    if lab.plan.functions:
        fn = lab.plan.functions[0].name
        print(f"run a function's code with `{PROG} function invoke {fn} out.json --name "
              f"{args.name}` (its log: `{PROG} function logs {fn} --name {args.name}`)")
    return EXIT_OK


def cmd_lab_restart(args) -> int:
    rep = lifecycle.lab_restart(args.name, restore=not args.no_restore,
                                log_level=args.log_level)
    if args.json:
        print_json(rep)
    else:
        print_restart(rep)
    return EXIT_OK


def cmd_lab_status(args) -> int:
    st = status(args.name)
    if args.json:
        print_json(st)
    else:
        print_status(st)
    return EXIT_OK if st["running"] else EXIT_FAIL


def cmd_lab_exec(args) -> int:
    _, plan = lifecycle.load_lab(args.name)
    cmd = list(args.cmd)
    if not cmd:
        raise HyperplaneError("no command given: `lab exec NODE -- CMD...`", EXIT_USAGE)
    names = namespaces_by_node(plan)
    ns = names.get(args.node)
    if ns is None:
        raise HyperplaneError(f"no node {args.node!r} in lab {args.name!r}; nodes: "
                              + ", ".join(sorted(names)), EXIT_NOT_FOUND)
    lifecycle.need_privilege()
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
    rep = lifecycle.lab_down(args.name)
    if args.json:   # null: there was no such lab
        print_json(None if rep is None else {"name": args.name, **rep})
        return EXIT_OK
    if rep is None:
        print(f"no lab named {args.name!r}: nothing to do")
        return EXIT_OK
    stopped = f"stopped data path pid {rep['stopped_pid']}; " if rep.get("stopped_pid") else ""
    print(f"lab {args.name} down: {stopped}removed {len(rep['removed_namespaces'])} "
          f"namespace(s)")
    return EXIT_OK


def cmd_lab_list(args) -> int:
    if args.json:
        print_json(lifecycle.list_labs())
        return EXIT_OK
    for lab in lifecycle.list_labs():
        print(f"{lab['name']}\t{'running' if lab['running'] else 'stopped'}\t{lab['config']}")
    return EXIT_OK


def cmd_run(args) -> int:
    try:
        labconfig.validate_lab_name(args.name)
        plan = labconfig.resolve(labconfig.load(args.config, base_dir=args.config_dir),
                                 args.name)
    except LabConfigError as e:
        raise config_error(e) from None
    except OSError as e:
        raise HyperplaneError(f"cannot read {args.config}: {e.strerror}", EXIT_USAGE) from None
    lifecycle.need_privilege()
    missing = [ns for ns in plan.namespaces() if not netns.exists(ns)]
    if missing:
        raise HyperplaneError(f"namespace(s) {', '.join(missing)} do not exist; build the lab "
                              f"with `{PROG} lab up {args.config} --name {args.name}`",
                              EXIT_NOT_FOUND)
    if engine.ENGINE != "compiled":
        if engine.ENGINE_FALLBACK_REASON is None:   # chosen, not fallen back to
            raise HyperplaneError(f"the data path needs the compiled engine, but "
                                  f"{engine.ENGINE_ENV}={engine.ENGINE} selects the "
                                  f"{engine.ENGINE} engine; unset it", EXIT_USAGE)
        raise HyperplaneError("the data path needs the compiled engine: "
                              f"{engine.ENGINE_FALLBACK_REASON}; rebuild with `pip install -e .`")
    try:
        return daemon.run_plan(plan, args.control, restore=not args.no_restore,
                               log_level=args.log_level)
    except LabConfigError as e:
        raise config_error(e) from None
    except OSError as e:
        raise HyperplaneError(f"data path: {e}") from None


def register(sub) -> None:
    labsub = command_group(sub, "lab", "build, inspect, use and remove labs (root)")
    q = named(labsub.add_parser("up", help="build a lab and start its data path"))
    q.add_argument("config", nargs="?", help="lab TOML (default: the embedded default lab: "
                                             "two functions sharing one ENI, one TAP and one "
                                             "veth environment, one server)")
    q.add_argument("--no-wait", action="store_true", help="return once the data path answers, "
                   "without waiting for the functions' ENIs (Pending -> Active)")
    add_json(q, "print the lab's status as `lab status --json` does, instead of the text "
                "(and no progress display)")
    q.set_defaults(func=cmd_lab_up)
    q = named(labsub.add_parser("status", help="nodes, addresses, ENIs, data path state"))
    add_json(q, "machine-readable output")
    q.set_defaults(func=cmd_lab_status)
    q = named(labsub.add_parser("exec", help="run a command in a node's namespace"))
    q.add_argument("node", help="an environment (e.g. fn-a-0), a host (e.g. server), "
                                "'hyperplane' or 'vpc'").completer = completers.nodes
    q.add_argument("cmd", nargs="*", metavar="-- CMD", help="the command and its arguments, "
                   "after `--` (everything after the first `--` is the command's)")
    q.set_defaults(func=cmd_lab_exec)
    q = named(labsub.add_parser(
        "restart", help="stop the data path (it saves its connection table) and start a new "
                        "one that restores it: open connections keep their ENI port and go on"))
    q.add_argument("--no-restore", action="store_true", help="start the new data path afresh "
                   "(the open connections break), e.g. to compare")
    add_json(q, "machine-readable output")
    q.set_defaults(func=cmd_lab_restart)
    q = named(labsub.add_parser("down", help="stop the data path and remove the lab "
                                             "(idempotent)"))
    add_json(q, "what was stopped and removed (stopped_pid, removed_namespaces), or null "
                "when there was no such lab")
    q.set_defaults(func=cmd_lab_down)
    q = labsub.add_parser("list", help="labs on this machine")
    add_json(q, "a list of {name, running, config}")
    q.set_defaults(func=cmd_lab_list)
    labfile.register(labsub)
    labgraph.register(labsub)
    lablogs.register(labsub)
    impair.register(labsub)


def register_run(sub) -> None:
    p = sub.add_parser("run", help="run the data path in the foreground on a lab's existing "
                                   "interfaces (what `lab up` starts in the background)")
    p.add_argument("config", help="lab TOML")
    p.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})"
                   ).completer = completers.labs
    p.add_argument("--control", default=None, help="control socket path (default: none)")
    p.add_argument("--config-dir", metavar="DIR", default=None, help="folder that relative "
                   "paths in the config (a function's code, a host's command) are taken from; "
                   "default: the config file's folder")
    p.add_argument("--no-restore", action="store_true", help="do not restore the connection "
                   "table the lab's previous data path saved (conntrack.state)")
    p.set_defaults(func=cmd_run)
