"""The data path process, and what it keeps on disk. Which module holds what:

* daemon          the Daemon: its links, engines and NAT gateways, the loop and its tick, what
                  it reports (counters, conntrack), closing; run_plan (the process) and pin_cpus
* control_server  the control socket: non-blocking clients, root only, a request's checks and
                  the commands' dispatch (the protocol and its client are hyperplane.control)
* events          connection events to `conntrack events` readers and the flow logs: event_json,
                  Subscriber, the per-tick budgets (EVENT_RING, REJECTS_PER_TICK, ...)
* restore         restart without loss: the periodic and final saves, the restore at start
* effects         the control plane's decisions (hyperplane.vpc) applied to links and engines
* statefile       the state file: its format, checks and atomic write
* flowlogs        the VPC flow-log writer
* steal           keeping the kernel's IP stack off the data path's veth links

The Daemon is one class: control_server, events, restore and effects each hold a mixin of it,
and every one of them runs in the loop's thread (the periodic save alone writes from a thread
of its own). The names below are loaded from their modules on first use, so importing a small
module (statefile, flowlogs) does not import the daemon and the layers it needs.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("Daemon", "run_plan", "pin_cpus", "TICK_MS"):
        from hyperplane.datapath import daemon as home
    elif name in ("ControlServer", "CONTROL_TIMEOUT", "CONTROL_POLL_MS", "CONTROL_CLIENTS_MAX",
                  "CONTROL_BACKLOG", "CONTROL_UIDS"):
        from hyperplane.datapath import control_server as home
    elif name in ("EventPump", "Subscriber", "event_json", "EVENT_RING", "REJECTS_PER_TICK",
                  "SUBSCRIBER_BACKLOG", "EVENT_KINDS"):
        from hyperplane.datapath import events as home
    elif name in ("SaveAndRestore", "SAVE_INTERVAL", "SAVE_SHARE"):
        from hyperplane.datapath import restore as home
    elif name == "ControlPlaneEffects":
        from hyperplane.datapath import effects as home
    else:
        raise AttributeError(f"module 'hyperplane.datapath' has no attribute {name!r}")
    return getattr(home, name)


__all__ = [
    "CONTROL_BACKLOG", "CONTROL_CLIENTS_MAX", "CONTROL_POLL_MS", "CONTROL_TIMEOUT",
    "CONTROL_UIDS", "ControlPlaneEffects", "ControlServer", "Daemon", "EVENT_KINDS",
    "EVENT_RING", "EventPump", "REJECTS_PER_TICK", "SAVE_INTERVAL", "SAVE_SHARE",
    "SUBSCRIBER_BACKLOG", "SaveAndRestore", "Subscriber", "TICK_MS", "event_json", "pin_cpus",
    "run_plan",
]
