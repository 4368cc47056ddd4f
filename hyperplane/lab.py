"""Build a lab :class:`~hyperplane.labconfig.Plan` in network namespaces, and tear it down.

Theory of operation
-------------------
A lab named NAME is a handful of network namespaces, all named ``hp-NAME-*`` (default lab)::

    env-fn-a-0           node                      vpc                       host-server
    eth0 (TAP) ......... (the data path holds the TAP's fd)
    eth0 ===== veth ==== env1
                         eni0 ======= veth ======= eni0 --+
                                                          br0 198.18.1.1/24 (VPC router)
                                                   host0 -+ ======= veth ======= eth0 .5

- **node**: where the data path runs. The kernel here holds *no* address on any link (IPv6 is
  disabled before any link exists, so not even an fe80:: appears) and forwards nothing: the data
  path alone answers ARP/NDP for the ENI addresses and for the environments' gateways, and
  translates between the two sides.
- **vpc** (the fabric): one bridge per subnet carrying the VPC router's address (AWS's ``.1``);
  the kernel routes between subnets.
- **env-***: one per execution environment, with ``eth0`` addressed from ``[lab] env_cidr`` and
  a default route to a gateway the data path impersonates.
- **host-***: the VPC's machines, plugged into their subnet's bridge.

State lives in ``run_dir()/NAME/state.json``. Every namespace name is written there *before* the
namespace is created, so a half-built lab (a crash, a failed step) can always be torn down, and
teardown only ever removes namespaces listed there.

All configuration is done over netlink with pyroute2: an ``IPRoute`` socket opened while the
thread is inside a namespace (:func:`hyperplane.netns.entered`) stays bound to that namespace.
Sysctls are written to ``/proc/sys/net`` from a thread inside the namespace: the kernel resolves
``/proc/sys/net`` against the *calling thread's* network namespace.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from . import netns
from .labconfig import EnvPlan, HostPlan, Plan, lab_mac, validate_lab_name

__all__ = ["LabError", "run_dir", "lab_dir", "state_path", "load_state", "save_state",
           "list_labs", "build", "teardown", "sysctl"]

#: ifaddrmsg flag: skip Duplicate Address Detection, so the address is usable at once (DAD
#: would hold a new IPv6 address "tentative" for about a second).
IFA_F_NODAD = 0x02
STOP_TIMEOUT = 5.0


class LabError(RuntimeError):
    """Building or tearing down a lab failed; the message says which step and what to do."""


# ---- on-disk state -----------------------------------------------------------------------------
def run_dir() -> str:
    """Where labs keep their state: ``$HYPERPLANE_RUN_DIR`` or ``/run/hyperplane`` (a tmpfs,
    so state disappears on reboot together with the namespaces it describes)."""
    return os.environ.get("HYPERPLANE_RUN_DIR") or "/run/hyperplane"


def lab_dir(name: str) -> str:
    return os.path.join(run_dir(), validate_lab_name(name))


def state_path(name: str) -> str:
    return os.path.join(lab_dir(name), "state.json")


def load_state(name: str) -> Optional[Dict[str, Any]]:
    """The lab's state, or None when there is no lab of that name."""
    path = state_path(name)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read {path}: {e}; the lab's namespaces are named "
                       f"hp-{name}-*; if you remove the file, remove those by hand") from None


def save_state(name: str, state: Dict[str, Any], create: bool = False) -> None:
    """Write the state atomically (temp file + rename): a reader never sees half a file.

    ``create=True`` claims the name: the file is linked into place only if none exists
    (FileExistsError otherwise), so two concurrent builds of one lab cannot both proceed."""
    d = lab_dir(name)
    os.makedirs(d, mode=0o755, exist_ok=True)
    path = os.path.join(d, "state.json")
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if create:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def list_labs() -> List[str]:
    """Names of the labs that have a state file."""
    try:
        names = os.listdir(run_dir())
    except FileNotFoundError:
        return []
    return sorted(n for n in names
                  if os.path.isfile(os.path.join(run_dir(), n, "state.json")))


# ---- small netlink / sysctl helpers ------------------------------------------------------------
@contextlib.contextmanager
def _ipr(ns: str) -> Iterator[IPRoute]:
    """An rtnetlink socket bound to namespace ``ns`` (opened from inside it), always closed."""
    with netns.entered(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname!r} not found")
    return found[0]


def sysctl(ns: str, key: str, value: Any = None) -> str:
    """Write (when ``value`` is given) and read back ``key`` (``net.ipv4.ip_forward``) inside
    namespace ``ns``. /proc/sys/net shows the calling thread's namespace, so the thread enters
    ``ns`` for the access. Interface names in keys must not contain dots."""
    path = "/proc/sys/" + key.replace(".", "/")
    with netns.entered(ns):
        if value is not None:
            with open(path, "w") as f:
                f.write(str(value))
        with open(path) as f:
            return f.read().strip()


def _set_sysctls(ns: str, items: List[Tuple[str, Any]]) -> None:
    with netns.entered(ns):
        for key, value in items:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(str(value))


def _lo_up(ns: str) -> None:
    with _ipr(ns) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def _add_addresses(ipr: IPRoute, index: int, ipv4: Optional[str], ipv6: Optional[str]) -> None:
    if ipv4:
        addr, plen = ipv4.split("/")
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen))
    if ipv6:
        addr, plen = ipv6.split("/")
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen),
                 family=socket.AF_INET6, flags=IFA_F_NODAD)


def _add_default_routes(ipr: IPRoute, index: int, gw4: Optional[str], gw6: Optional[str]) -> None:
    if gw4:
        ipr.route("add", dst="0.0.0.0/0", gateway=gw4, oif=index)
    if gw6:
        ipr.route("add", dst="::/0", gateway=gw6, oif=index, family=socket.AF_INET6)


# ---- build steps -------------------------------------------------------------------------------
# Each step is a module-level function, so a test can replace one to make a build fail midway.

def _create_namespace(state: Dict[str, Any], ns: str) -> None:
    """Record the name, then create the namespace (a crash in between leaves a name that
    teardown skips because it does not exist)."""
    if netns.exists(ns):
        raise LabError(f"network namespace {ns!r} already exists; it is not this lab's, so "
                       "it is left alone; remove it or pick another lab name")
    state["namespaces"].append(ns)
    save_state(state["name"], state)
    try:
        pr_netns.create(ns)  # O_EXCL on /run/netns/NAME: fails if it appeared meanwhile
    except FileExistsError:
        # Someone else made it between our check and our create: it is not ours, forget it
        # so the rollback leaves it alone.
        state["namespaces"].remove(ns)
        save_state(state["name"], state)
        raise LabError(f"network namespace {ns!r} appeared while the lab was being built; it "
                       "is not this lab's and is left alone") from None


#: The node namespace must never answer, forward or hold an address: IPv6 is disabled before
#: any link exists there ("default" covers links created later), so no fe80:: ever appears.
NODE_SYSCTLS = [
    ("net.ipv6.conf.all.disable_ipv6", 1),
    ("net.ipv6.conf.default.disable_ipv6", 1),
    ("net.ipv4.ip_forward", 0),
    ("net.ipv6.conf.all.forwarding", 0),
]

#: The fabric is the VPC router: it forwards, and never sends ICMP redirects (hosts in one
#: subnet talk through the bridge directly; a redirect would only confuse a learner's capture).
FABRIC_SYSCTLS = [
    ("net.ipv4.ip_forward", 1),
    ("net.ipv6.conf.all.forwarding", 1),
    ("net.ipv6.conf.default.forwarding", 1),
    ("net.ipv4.conf.all.send_redirects", 0),
    ("net.ipv4.conf.default.send_redirects", 0),
    ("net.ipv6.conf.default.accept_dad", 0),
]

#: Environments and hosts: no router advertisements (the lab's routes are static) and no DAD
#: (not even for link-local addresses), so the lab is usable the moment it is built.
END_SYSCTLS = [
    ("net.ipv6.conf.default.accept_ra", 0),
    ("net.ipv6.conf.all.accept_ra", 0),
    ("net.ipv6.conf.default.accept_dad", 0),
    ("net.ipv4.ip_forward", 0),
]


def _setup_node(plan: Plan) -> None:
    _set_sysctls(plan.node_ns, NODE_SYSCTLS)
    _lo_up(plan.node_ns)


def _setup_fabric(plan: Plan) -> None:
    _set_sysctls(plan.fabric_ns, FABRIC_SYSCTLS)
    _lo_up(plan.fabric_ns)


def _setup_end(ns: str) -> None:
    _set_sysctls(ns, END_SYSCTLS)
    _lo_up(ns)


def _build_bridge(plan: Plan, i: int) -> None:
    """One bridge per subnet: STP off (a single bridge cannot loop, and STP would hold ports in
    'listening' for seconds), multicast snooping off (NDP's solicited-node multicast must flood
    to every port without MLD reports). It carries the VPC router's addresses."""
    s = plan.subnets[i]
    with _ipr(plan.fabric_ns) as ipr:
        ipr.link("add", ifname=s.bridge, kind="bridge", br_stp_state=0, br_mcast_snooping=0,
                 address=lab_mac(plan.name, "router", i))
        idx = _index(ipr, s.bridge)
        ipr.link("set", index=idx, state="up")
        plen4 = int(s.cidr.split("/")[1])
        _add_addresses(ipr, idx, f"{s.router4}/{plen4}",
                       f"{s.router6}/64" if s.router6 else None)


def _build_eni(plan: Plan, i: int) -> None:
    """The ENI's veth: created in the node namespace with its peer created directly in the
    fabric namespace, so neither end ever appears in the caller's namespace."""
    eni = plan.enis[i]
    bridge = plan.subnet(eni.subnet).bridge
    with _ipr(plan.node_ns) as ipr:
        ipr.link("add", ifname=eni.node_ifname, kind="veth", address=eni.mac,
                 peer={"ifname": eni.fabric_ifname, "net_ns_fd": plan.fabric_ns})
        ipr.link("set", index=_index(ipr, eni.node_ifname), state="up")
    _join_bridge(plan, eni.fabric_ifname, bridge)


def _join_bridge(plan: Plan, port: str, bridge: str) -> None:
    """Enslave ``port`` to ``bridge`` in the fabric namespace. A bridge port is pure layer 2:
    IPv6 is disabled on it so it carries no fe80:: address of its own (only the bridge, the
    VPC router, has addresses)."""
    _set_sysctls(plan.fabric_ns, [(f"net.ipv6.conf.{port}.disable_ipv6", 1)])
    with _ipr(plan.fabric_ns) as ipr:
        idx = _index(ipr, port)
        ipr.link("set", index=idx, master=_index(ipr, bridge))
        ipr.link("set", index=idx, state="up")


def _build_env(plan: Plan, env: EnvPlan) -> None:
    """The environment's eth0 (TAP or veth), addresses and default routes."""
    _setup_end(env.netns)
    if env.attach == "tap":
        # A persistent TAP: it outlives this fd; the data path opens it again by name.
        with netns.entered(env.netns):
            os.close(netns.open_tap(env.ifname, persist=True))
    else:
        with _ipr(plan.node_ns) as ipr:
            # The node-side end takes gw_mac: the data path answers ARP/NDP for the gateway
            # with it, so the environment sees one consistent gateway MAC.
            ipr.link("add", ifname=env.node_ifname, kind="veth", address=env.gw_mac,
                     peer={"ifname": env.ifname, "net_ns_fd": env.netns})
            ipr.link("set", index=_index(ipr, env.node_ifname), state="up")
    _configure_end(env)


def _configure_end(node: Union[EnvPlan, HostPlan]) -> None:
    """The interface of an environment or a host, inside its namespace: no router
    advertisements, up, its addresses, default routes via its gateways."""
    _set_sysctls(node.netns, [(f"net.ipv6.conf.{node.ifname}.accept_ra", 0)])
    with _ipr(node.netns) as ipr:
        idx = _index(ipr, node.ifname)
        ipr.link("set", index=idx, state="up")
        _add_addresses(ipr, idx, node.ipv4, node.ipv6)
        _add_default_routes(ipr, idx, node.gw4, node.gw6)


def _build_host(plan: Plan, host: HostPlan) -> None:
    """A VPC host: a veth from its subnet's bridge to the host's own namespace."""
    _setup_end(host.netns)
    bridge = plan.subnet(host.subnet).bridge
    with _ipr(plan.fabric_ns) as ipr:
        ipr.link("add", ifname=host.fabric_ifname, kind="veth",
                 peer={"ifname": host.ifname, "net_ns_fd": host.netns})
    _join_bridge(plan, host.fabric_ifname, bridge)
    _configure_end(host)


def _steps(plan: Plan, state: Dict[str, Any]) -> Iterator[Tuple[str, Callable[[], None]]]:
    """(description, action) in build order. Namespaces first, node sysctls before any link
    can reach the node namespace, bridges before the ports that join them."""
    for ns in plan.namespaces():
        yield f"create namespace {ns}", lambda ns=ns: _create_namespace(state, ns)
    yield f"configure node namespace {plan.node_ns}", lambda: _setup_node(plan)
    yield f"configure VPC namespace {plan.fabric_ns}", lambda: _setup_fabric(plan)
    for i, s in enumerate(plan.subnets):
        yield f"bridge {s.bridge} for {s.id}", lambda i=i: _build_bridge(plan, i)
    for i, e in enumerate(plan.enis):
        yield (f"ENI {e.id} ({e.node_ifname} -> {plan.fabric_ns}/{e.fabric_ifname})",
               lambda i=i: _build_eni(plan, i))
    for env in plan.envs:
        yield (f"environment {env.name} ({env.attach}, {env.netns})",
               lambda env=env: _build_env(plan, env))
    for host in plan.hosts:
        yield f"host {host.name} ({host.netns})", lambda host=host: _build_host(plan, host)


def build(plan: Plan, config_source: str) -> Dict[str, Any]:
    """Build ``plan``; return the state written to ``state.json``.

    Refuses (LabError, touching nothing) when a lab of that name exists or any of the plan's
    namespaces already exists. On any failure the lab is rolled back and LabError names the step.
    """
    name = validate_lab_name(plan.name)
    if load_state(name) is not None:
        raise LabError(f"lab {name!r} already exists; run `hyperplane lab down --name {name}` "
                       "first")
    taken = [ns for ns in plan.namespaces() if netns.exists(ns)]
    if taken:
        raise LabError(f"network namespace(s) {', '.join(taken)} already exist but lab {name!r} "
                       "has no state; they are left alone. Remove them (`ip netns delete`) if "
                       "they are left over, or pick another lab name")
    problem = netns.privilege_problem()
    if problem:
        raise LabError(f"cannot build lab {name!r}: {problem}")

    state: Dict[str, Any] = {"name": name, "plan": plan.to_dict(),
                             "config_source": config_source, "namespaces": [], "pid": None,
                             "created": time.time()}
    try:
        save_state(name, state, create=True)
    except FileExistsError:
        raise LabError(f"lab {name!r} already exists; run `hyperplane lab down --name {name}` "
                       "first") from None
    try:
        for what, action in _steps(plan, state):
            try:
                action()
            except Exception as e:
                raise LabError(f"building lab {name!r} failed at step '{what}': "
                               f"{type(e).__name__}: {e}") from e
    except BaseException as e:
        try:
            teardown(name)
        except Exception as te:  # keep the original error; say the rollback failed too
            if hasattr(e, "add_note"):  # Python 3.11+
                e.add_note(f"rollback failed as well: {te}; run `hyperplane lab down "
                           f"--name {name}`")
        raise
    return state


# ---- teardown ----------------------------------------------------------------------------------
def _cmdline(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_lab_process(pid: int, name: str) -> bool:
    """Only a process that is evidently this lab's daemon may be signalled: its command line
    mentions hyperplane and carries the lab name as an argument (``NAME`` or ``--opt=NAME``).
    A recycled pid belonging to something else is never touched."""
    argv = _cmdline(pid)
    if not argv:
        return False
    if not any("hyperplane" in a for a in argv):
        return False
    return any(a == name or a.endswith("=" + name) for a in argv)


def _gone(pid: int) -> bool:
    try:  # reap it if it is our child (tests), otherwise it would linger as a zombie
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _stop_process(pid: Any, name: str) -> Optional[int]:
    """SIGTERM, wait up to STOP_TIMEOUT s, then SIGKILL. Returns the pid if it was stopped."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return None
    if not _is_lab_process(pid, name):
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if _gone(pid):
            return pid
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return pid
    for _ in range(100):
        if _gone(pid):
            break
        time.sleep(0.02)
    return pid


def _delete_links(ns: str, taps: List[str]) -> None:
    """Delete the namespace's interfaces before removing it. Removing a namespace's name does
    not destroy it while anything (a stray fd or socket) still holds it, and a persistent TAP
    would then live on; deleting the links first makes the teardown complete regardless."""
    with _ipr(ns) as ipr:
        for ifname in taps:
            for idx in ipr.link_lookup(ifname=ifname):
                _quietly(ipr.link, "del", index=idx)
        for link in ipr.get_links():
            if link.get("ifname") != "lo":
                # A veth's peer vanishes with it, so a later delete may find nothing: fine.
                _quietly(ipr.link, "del", index=link["index"])


def _quietly(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:
        pass


def teardown(name: str) -> Dict[str, Any]:
    """Stop the lab's daemon, remove the namespaces recorded in its state file, remove its
    directory. Idempotent and safe on a half-built lab; never touches a namespace the state
    file does not list (nor one outside the lab's ``hp-NAME-`` prefix)."""
    report: Dict[str, Any] = {"removed_namespaces": [], "stopped_pid": None}
    state = load_state(name)
    if state is None:
        return report
    present = [ns for ns in state.get("namespaces") or []
               if isinstance(ns, str) and "/" not in ns and netns.exists(ns)]
    problem = netns.privilege_problem()
    if present and problem:
        raise LabError(f"cannot tear down lab {name!r}: {problem}")
    report["stopped_pid"] = _stop_process(state.get("pid"), name)

    prefix = f"hp-{name}-"
    taps: Dict[str, List[str]] = {}
    for env in (state.get("plan") or {}).get("envs", []):
        if env.get("attach") == "tap":
            taps.setdefault(env["netns"], []).append(env.get("ifname", "eth0"))
    errors = []
    for ns in reversed(state.get("namespaces") or []):
        if not isinstance(ns, str) or not ns.startswith(prefix) or "/" in ns:
            continue  # not a name this lab could have created (an edited state file)
        if not netns.exists(ns):
            continue
        try:
            _delete_links(ns, taps.get(ns, []))
        except Exception as e:  # still remove the namespace below
            errors.append(f"deleting links in {ns}: {e}")
        try:
            pr_netns.remove(ns)
            report["removed_namespaces"].append(ns)
        except OSError as e:
            errors.append(f"removing {ns}: {e}")
    if errors:
        # Keep the state file so the user can retry `hyperplane lab down`.
        state["namespaces"] = [ns for ns in state.get("namespaces") or []
                               if isinstance(ns, str) and ns.startswith(prefix)
                               and "/" not in ns and netns.exists(ns)]
        save_state(name, state)
        raise LabError(f"teardown of lab {name!r} was incomplete: {'; '.join(errors)}")
    shutil.rmtree(lab_dir(name), ignore_errors=True)
    return report
