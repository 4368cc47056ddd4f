"""The ``hyperplane`` command.

    hyperplane --version | --help
    hyperplane demo [--name NAME] [--keep]       the default lab, real traffic, then down
    hyperplane lab up [CONFIG] [--name NAME]     build a lab and start its data path
    hyperplane lab status [--name NAME] [--json]
    hyperplane lab exec NODE [--name NAME] -- CMD...
    hyperplane lab down [--name NAME]
    hyperplane lab list
    hyperplane run CONFIG [--name NAME]          the data path in the foreground
    hyperplane walk                              packets through the engine in memory (no root)
    hyperplane engine                            which engine is in use, and why

Exit status: 0 success; 1 the operation failed (traffic did not pass, the data path died);
2 usage or configuration error; 3 no such lab, node or namespace; 4 not enough privilege
(CAP_NET_ADMIN); ``lab exec`` returns the command's own status (127 when it is not found).
"""
from __future__ import annotations

import argparse
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

    state = lab.load_state(name)
    if state is None:
        raise CliError(f"no lab named {name!r}; start one with `{PROG} lab up --name {name}`",
                       EXIT_NOT_FOUND)
    return state, labconfig.Plan.from_dict(state["plan"])


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


def lab_up(config_path: Optional[str], name: str, out=sys.stdout) -> Dict[str, Any]:
    """Build the lab, start its data path in the background, wait until it answers."""
    from hyperplane import lab, labconfig

    try:
        labconfig.validate_lab_name(name)
        if config_path:
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
        state = lab.build(plan, config_source=os.path.abspath(config_path) if config_path
                          else "<embedded default>")
    except lab.LabError as e:
        raise CliError(str(e)) from None
    ldir = lab.lab_dir(name)
    try:
        cfg_copy = os.path.join(ldir, "lab.toml")
        with open(cfg_copy, "w", encoding="utf-8") as f:
            f.write(text)
        logf = open(os.path.join(ldir, "datapath.log"), "ab")
        with logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hyperplane", "run", cfg_copy, "--name", name,
                 "--control", control_path(name)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        state["pid"] = proc.pid
        lab.save_state(name, state)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise CliError(f"the data path exited with status {proc.returncode}:\n"
                               + _tail(os.path.join(ldir, "datapath.log")))
            try:
                ask(name, "ping", timeout=1.0)
                break
            except CliError:
                if time.monotonic() > deadline:
                    raise CliError("the data path did not answer within "
                                   f"{READY_TIMEOUT:.0f} s:\n"
                                   + _tail(os.path.join(ldir, "datapath.log"))) from None
                time.sleep(0.05)
    except BaseException:
        lab.teardown(name)  # roll back: nothing of a failed `lab up` stays behind
        raise
    return state


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
        except CliError as e:
            out["running"] = False
            out["error"] = str(e)
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
    c = st.get("counters")
    if c:
        drops = " ".join(f"{k}={v}" for k, v in c["drops"].items()) or "none"
        p(f"  forwarded: outbound={c['forwarded_outbound']} inbound={c['forwarded_inbound']}"
          f"  data-path drops: {drops}")


# ---- commands ----------------------------------------------------------------------------------
def cmd_lab_up(args) -> int:
    lab_up(args.config, args.name)
    print_status(status_dict(args.name))
    print(f"\nrun commands in it with `{PROG} lab exec NODE --name {args.name} -- CMD`; "
          f"stop it with `{PROG} lab down --name {args.name}`")
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
    if lab.load_state(args.name) is None:
        print(f"no lab named {args.name!r}: nothing to do")
        return EXIT_OK
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
        raise CliError("the data path needs the compiled engine: "
                       f"{hp.ENGINE_FALLBACK_REASON}; rebuild with `pip install -e .`")
    try:
        return daemon.run_plan(plan, args.control)
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

    labp = sub.add_parser("lab", help="build, inspect, use and remove labs (root)")
    labsub = labp.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    labp.set_defaults(func=lambda a: (labp.print_usage(sys.stderr), EXIT_USAGE)[1])

    def named(q):
        q.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")
        return q

    q = named(labsub.add_parser("up", help="build a lab and start its data path"))
    q.add_argument("config", nargs="?", help="lab TOML (default: the embedded default lab: "
                                             "two functions sharing one ENI, one TAP and one "
                                             "veth environment, one server)")
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
    q = named(labsub.add_parser("down", help="stop the data path and remove the lab "
                                             "(idempotent)"))
    q.set_defaults(func=cmd_lab_down)
    q = labsub.add_parser("list", help="labs on this machine")
    q.set_defaults(func=cmd_lab_list)

    p = sub.add_parser("run", help="run the data path in the foreground on a lab's existing "
                                   "interfaces (what `lab up` starts in the background)")
    p.add_argument("config", help="lab TOML")
    p.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")
    p.add_argument("--control", default=None, help="control socket path (default: none)")
    p.set_defaults(func=cmd_run)

    from hyperplane.walk import WALK_HELP
    p = sub.add_parser("walk", help="walk packets through the engine in memory (no root)",
                       description=WALK_HELP)
    p.set_defaults(func=cmd_walk)
    p = sub.add_parser("engine", help="print which engine is in use, and why")
    p.set_defaults(func=cmd_engine)
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
