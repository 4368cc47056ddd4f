"""``hyperplane.Lab``: drive a lab from your own Python code.

    import hyperplane

    with hyperplane.Lab.up() as lab:                # the embedded default lab, a unique name
        lab.exec("server", ["ip", "-br", "addr"])
        web = lab.popen("server", ["python3", "-m", "http.server", "8080"])
        lab.exec("fn-a-0", ["curl", "-s", "http://198.18.1.5:8080/"], check=True)
        meta, body = lab.invoke("fn-a", {"key": "value"})   # runs the function's code
        print(lab.conntrack(proto="tcp"))           # what `conntrack list --json` prints
    # the lab is down here, even after an exception or Ctrl-C

    lab = hyperplane.Lab.attach("mylab")            # a lab `hyperplane lab up` started

Every dict and list a method returns is exactly what the matching ``--json`` command prints
(the command line calls the same functions). Errors are :class:`hyperplane.HyperplaneError`
with the command line's words. Building a lab needs CAP_NET_ADMIN (root).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import shutil
import subprocess
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from hyperplane import proc
from hyperplane.errors import EXIT_NOT_FOUND, EXIT_USAGE, HyperplaneError
from hyperplane.lab import functions as fns, impair as lab_impair, lifecycle, status as lab_status
from hyperplane.labconfig import graph as lab_graph
from hyperplane.observe import conntrack as ct, stats as ob_stats

#: Seconds a process :meth:`Lab.popen` started gets to exit after SIGTERM when the lab goes down.
POPEN_STOP_TIMEOUT = 3.0


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of a lab: an execution environment (``env``), a VPC host (``host``), an
    internet host (``internet``) or the hyperplane node itself (``hyperplane``). ``addresses``
    carry their prefix length (``198.18.1.5/24``); ``info`` holds the rest of what ``lab
    status --json`` says of it (function, attach, eni, subnet, interface)."""
    name: str
    role: str
    netns: str
    addresses: tuple
    info: Dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def address(self, family: int = 4) -> Optional[str]:
        """The node's first IPv4 (``family=4``) or IPv6 (6) address, without its prefix."""
        for a in self.addresses:
            bare = a.split("/")[0]
            if (":" in bare) == (family == 6):
                return bare
        return None


def unique_name(prefix: str = "lab") -> str:
    """A lab name no other run picks: ``PREFIX-`` and six hex digits (20 characters at most)."""
    return f"{prefix[:13]}-{secrets.token_hex(3)}"


class Lab:
    """A lab in network namespaces with its data path. Make one with :meth:`up` (and take it
    down by leaving its ``with`` block, or with :meth:`down`) or reach a running one with
    :meth:`attach`."""

    def __init__(self, name: str):
        self.name = name
        self._children: List[subprocess.Popen] = []
        _, self.plan = lifecycle.load_lab(name)
        self.nodes: Dict[str, Node] = {
            n["name"]: Node(n["name"], n["role"], n["netns"], tuple(n["addresses"]),
                            {k: v for k, v in n.items()
                             if k not in ("name", "role", "netns", "addresses")})
            for n in lab_status.nodes(self.plan)}
        self._ns = lab_status.namespaces_by_node(self.plan)

    # ---- making and finding labs -----------------------------------------------------------
    @classmethod
    def up(cls, config: Optional[str] = None, name: Optional[str] = None, *,
           config_text: Optional[str] = None, wait_active: bool = True,
           log_level: Optional[str] = None,
           progress: Optional[lifecycle.Progress] = None) -> "Lab":
        """Build a lab and start its data path: ``config`` is a lab TOML file, ``config_text``
        the TOML itself, neither the embedded default lab. ``name`` defaults to a unique one.
        Returns once the data path answers and (``wait_active``) no function is Pending. A
        failure leaves nothing behind. Use it in a ``with`` block to take it down at the end.
        ``log_level`` (debug, info, warning, error) is its processes' log level;
        ``progress(step, done, total)`` hears of each step as it starts."""
        name = name or unique_name()
        lifecycle.lab_up(config, name, wait_active=wait_active, config_text=config_text,
                         log_level=log_level, progress=progress)
        try:
            return cls(name)
        except BaseException:
            lifecycle.lab_down(name)
            raise

    @classmethod
    def attach(cls, name: str) -> "Lab":
        """The lab ``name`` that is up on this machine (HyperplaneError, exit status 3, when
        there is none). Leaving a ``with`` block of an attached lab takes it down too."""
        return cls(name)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"<hyperplane.Lab {self.name!r}: {len(self.nodes)} nodes>"

    # ---- processes in the lab's namespaces ---------------------------------------------------
    def netns(self, node: str) -> str:
        """The namespace of ``node`` (also ``node``/``hyperplane`` for the hyperplane node,
        ``vpc`` for the fabric, ``internet``)."""
        ns = self._ns.get(node)
        if ns is None:
            raise HyperplaneError(f"no node {node!r} in lab {self.name!r}; nodes: "
                                  + ", ".join(sorted(self._ns)), EXIT_NOT_FOUND)
        return ns

    def _argv(self, node: str, argv: Sequence[str]) -> List[str]:
        if isinstance(argv, (str, bytes)) or not argv:
            raise HyperplaneError(f"exec/popen on {node!r}: give the command as a non-empty "
                                  "list of arguments, e.g. ['ip', 'addr']", EXIT_USAGE)
        ip = shutil.which("ip")
        if ip is None:
            raise HyperplaneError("running a command in a lab node needs `ip` (iproute2): "
                                  "apt-get install iproute2")
        return [ip, "netns", "exec", self.netns(node), *map(str, argv)]

    def exec(self, node: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``node``'s namespace and wait for it (``subprocess.run`` with your
        keyword arguments: ``capture_output=True, text=True, check=True, timeout=...``)."""
        return subprocess.run(self._argv(node, argv), **kwargs)

    def popen(self, node: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` in ``node``'s namespace (``subprocess.Popen`` with your keyword
        arguments). The lab stops it by its pid when it goes down, if it still runs."""
        p = subprocess.Popen(self._argv(node, argv), **kwargs)
        self._children.append(p)
        return p

    # ---- what the lab says ---------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        """``hyperplane lab status --json``."""
        return lab_status.status(self.name)

    def graph(self, format: str = "mermaid") -> str:
        """``hyperplane lab graph --name NAME --format FORMAT``: the lab drawn from the plan it
        was built from, as a Mermaid flowchart (``"mermaid"``) or Graphviz DOT (``"dot"``)."""
        try:
            return lab_graph.render(self.plan, format)
        except ValueError as e:
            raise HyperplaneError(f"format: {e}", EXIT_USAGE) from None

    def stats(self) -> Dict[str, Any]:
        """``hyperplane stats --json``."""
        return ob_stats.summarize(self.request("counters"), self.name)

    def counters(self) -> Dict[str, Any]:
        """The data path's raw counters (what ``stats`` sums up)."""
        return self.request("counters")

    def placement(self) -> Dict[str, Any]:
        """Where the running data path placed itself (hyperplane.labconfig.placement): its
        ``loop_cpus``, ``inbound_cpus`` (empty: no inbound worker), ``ring_frames``,
        ``function_cpus``, ``workers`` (loop threads, each owning a slice of every ENI's
        ports), ``worker_cpus`` (worker i's CPU; empty with one worker or unpinned) and, per
        choice, its ``source`` ("auto", "lab file", "default")."""
        return self.request("counters")["placement"]

    def conntrack(self, **filters) -> List[Dict[str, Any]]:
        """``hyperplane conntrack list --json`` with conntrack's filters as keywords:
        ``proto``, ``family``, ``orig_src``, ``orig_dst``, ``reply_src``, ``reply_dst``,
        ``sport``, ``dport``, ``state``, ``eni``."""
        return ct.list_entries(self.request, ct.spec_of(filters))

    def conntrack_flush(self, **filters) -> int:
        """``hyperplane conntrack flush``: delete the matching connections; how many."""
        return ct.flush(self.request, ct.spec_of(filters))

    def enis(self) -> List[Dict[str, Any]]:
        """``hyperplane eni list --json``."""
        return self.request("enis")["enis"]

    def functions(self) -> List[Dict[str, Any]]:
        """``hyperplane function list --json``."""
        return self.request("functions")["functions"]

    def events(self, kinds: Sequence[str] = ("new", "update", "destroy"),
               timeout: Optional[float] = None, **filters) -> Iterator[Dict[str, Any]]:
        """Connection events as they happen, each the dict ``conntrack events --json``
        prints (``kind`` new/update/destroy/reject, or ``lost`` with a ``count``). Stops after
        ``timeout`` seconds (None: when you stop iterating). Subscribes at the first
        ``next()``: start iterating before making the traffic whose events you want."""
        spec = ct.spec_of(filters)
        unknown = sorted(set(kinds) - set(ct.EVENT_KINDS))
        if unknown:
            raise HyperplaneError(f"events: unknown kind(s) {', '.join(unknown)}; kinds are "
                                  f"{', '.join(ct.EVENT_KINDS)}", EXIT_USAGE)
        sock = lifecycle.subscribe(self.name, spec, list(kinds))
        deadline = None if timeout is None else time.monotonic() + timeout
        with contextlib.closing(sock):
            for line in ct.event_lines(sock, deadline):
                yield json.loads(line)

    # ---- changing the lab ------------------------------------------------------------------------
    def advance_clock(self, seconds: float) -> Dict[str, Any]:
        """Move the lab clock forward (lifecycle timers, connection timeouts): ``now`` and
        ``offset``, as ``hyperplane clock --advance`` prints them."""
        r = self.request("clock", advance=float(seconds))
        return {"now": r["now"], "offset": r["offset"]}

    def update_function(self, function: str, *, subnet_ids: Optional[Sequence[str]] = None,
                        security_group_ids: Optional[Sequence[str]] = None,
                        ipv6: Optional[bool] = None, wait: bool = False) -> Dict[str, Any]:
        """UpdateFunctionConfiguration(VpcConfig=...), as ``hyperplane function update``: the
        function as it is right after the call (``wait``: once the update has completed)."""
        f = self.request("function_update", name=function,
                              subnet_ids=None if subnet_ids is None else list(subnet_ids),
                              security_group_ids=None if security_group_ids is None
                              else list(security_group_ids), ipv6=ipv6)["function"]
        return self.wait_function(function) if wait else f

    def wait_function(self, function: str) -> Dict[str, Any]:
        """Wait until no function is Pending and no update is in progress (the ENIs' creation
        delay, as ``aws lambda wait function-updated``); the function then."""
        fns = lifecycle.wait_functions_active(
            self.name, self.plan.lifecycle.eni_create_delay + lifecycle.READY_TIMEOUT)
        return next(x for x in fns if x["name"] == function)

    def invoke(self, function: str, payload: fns.Payload = None, *,
               log_type: str = "None") -> Tuple[Dict[str, Any], bytes]:
        """Invoke a function and wait for its answer, as ``hyperplane function invoke`` (and
        ``aws lambda invoke``): (metadata, response payload). ``payload`` is JSON text or
        bytes, or any value json.dumps takes (None: ``{}``). The metadata is
        ``{"StatusCode": 200, "ExecutedVersion": "$LATEST"}``, with ``"FunctionError":
        "Unhandled"`` when the function failed (an exception, a timeout, a crash: the payload
        then holds Lambda's error document) and ``"LogResult"`` (the log's last 4 KB, base64)
        with ``log_type="Tail"``. A refused invocation (Pending, Inactive, every environment
        busy) is a HyperplaneError with AWS's exception name."""
        return fns.invoke(self.name, function, payload, log_type)

    def update_code(self, function: str, code: Optional[str] = None) -> Dict[str, Any]:
        """``hyperplane function update-code`` (UpdateFunctionCode): deploy the folder
        ``code`` (None: the configured one, read again); the next invocations run it."""
        return fns.update_code(self.name, function, code)

    def logs(self, function: str) -> List[Dict[str, str]]:
        """``hyperplane function logs FN --json``: the function's log events, oldest first."""
        return fns.logs(self.name, function)

    def environments(self) -> List[Dict[str, Any]]:
        """``hyperplane function environments --json``: each execution environment's state
        (cold, warm, busy), its runtime's pid, invocations, cold starts."""
        return fns.environments(self.name)

    def services(self) -> List[Dict[str, Any]]:
        """The hosts' services (their ``command``): pid, running, restarts, last exit, log."""
        return fns.host_services(self.name)

    def impair(self, link: str, direction: str = "both", *, clear: bool = False,
               delay: Optional[str] = None, jitter: Optional[str] = None,
               loss: Optional[str] = None, duplicate: Optional[str] = None,
               reorder: Optional[str] = None, rate: Optional[str] = None) -> Dict[str, Any]:
        """``hyperplane lab impair LINK ...``: impair ``link`` (an environment ``fn-a-0``, a
        host, an ENI ``eni0``) in netem's words (``loss="1%"``, ``delay="10ms"``,
        ``rate="100mbit"``), replacing what that direction had; ``clear=True`` takes it off.
        Returns :meth:`impairments`. docs/impairments.md says what works on which kernel."""
        return lab_impair.impair(self.name, link, direction, clear=clear, delay=delay,
                                 jitter=jitter, loss=loss, duplicate=duplicate,
                                 reorder=reorder, rate=rate)

    def impairments(self) -> Dict[str, Any]:
        """``hyperplane lab impair --list --json``: the backend and the active impairments."""
        return lab_impair.impairments(self.name)

    def restart(self, restore: bool = True, log_level: Optional[str] = None) -> Dict[str, Any]:
        """``hyperplane lab restart --json``: a new data path that keeps the open connections
        (``restore=False``: starts afresh); ``log_level`` None keeps the lab's."""
        return lifecycle.lab_restart(self.name, restore=restore, log_level=log_level)

    def down(self) -> Optional[Dict[str, Any]]:
        """Stop what :meth:`popen` started and the data path, remove every namespace and
        file of the lab. Idempotent."""
        for p in self._children:
            proc.stop_child(p, timeout=POPEN_STOP_TIMEOUT)
        self._children.clear()
        return lifecycle.lab_down(self.name)

    # ---- the data path ---------------------------------------------------------------------------
    @property
    def pid(self) -> Optional[int]:
        """The data path's process id (None while none runs)."""
        state, _ = lifecycle.load_lab(self.name)
        pid = state.get("pid")
        return pid if proc.pid_alive(pid) else None

    @property
    def metrics_url(self) -> Optional[str]:
        """The URL of the lab's Prometheus exporter (``[metrics] listen``; the real port when
        port 0 was asked), None when the lab has no ``[metrics]`` or its exporter is not
        running."""
        return lab_status.running_metrics_url(lifecycle.load_lab(self.name)[0])

    def request(self, cmd: str, **args) -> Dict[str, Any]:
        """One request on the data path's control socket (hyperplane.control lists the
        commands), the reply as a dict; a refusal is a HyperplaneError with its words."""
        return lifecycle.request(self.name, cmd, **args)


__all__ = ["Lab", "Node", "unique_name"]
