"""Build a lab :class:`~hyperplane.labconfig.Plan` and tear it down: what is refused before
anything is built, the build steps in order, the rollback of a failed build and the teardown
that does it. Both halves of the one promise live here: every namespace is recorded in the
state file before it is created, and teardown removes only namespaces recorded there. The
theory of operation (what each namespace is for) opens :mod:`hyperplane.topology`."""
from __future__ import annotations

import shutil
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from pyroute2 import netns as pr_netns

from hyperplane import netns, paths, proc
from hyperplane.errors import LabError
from hyperplane.labconfig import Plan
from hyperplane.paths import lab_dir, validate_lab_name
from hyperplane.topology.fabric import (build_bridge, build_internet_bridge, build_nat_gateway,
                                        build_route_table, setup_fabric, setup_internet)
from hyperplane.topology.nacl import NFT_TABLE, apply_nacls, nacl_ruleset, subnet_acls
from hyperplane.topology.netlink import iproute
from hyperplane.topology.nodes import build_eni, build_env, build_host, setup_node
from hyperplane.topology.state import check_lab_dir, load_state, save_state


# ---- build steps -------------------------------------------------------------------------------
# Each step is a module-level function, defined here or imported from nodes, fabric and nacl;
# _steps() looks each one up in this module when it runs, so a test can replace one here
# (monkeypatch.setattr(builder, "build_env", ...)) to make a build fail midway.

def create_namespace(state: Dict[str, Any], ns: str) -> None:
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


# ---- build order -------------------------------------------------------------------------------
def lab_namespaces(plan: Plan) -> List[str]:
    """Every namespace of the plan in build order: :meth:`Plan.namespaces` plus the internet's
    and its hosts' (once each, in case ``Plan.namespaces`` lists them already)."""
    names = list(plan.namespaces())
    if plan.internet is not None:
        names.append(plan.internet.netns)
        names += [h.netns for h in plan.internet_hosts]
    return list(dict.fromkeys(names))


def _check_plan(plan: Plan) -> None:
    """What can be refused before anything is built."""
    if plan.internet_hosts and plan.internet is None:
        raise LabError("the plan has internet hosts but no internet (plan.internet is None)")
    for ns in lab_namespaces(plan):
        if not ns.startswith(plan.prefix) or "/" in ns:
            # teardown removes only namespaces under the lab's prefix
            raise LabError(f"namespace {ns!r} does not start with the lab's prefix "
                           f"{plan.prefix!r}; every namespace of a lab must")
    subnet_acls(plan)
    nacl_ruleset(plan)  # rule errors
    seen: Dict[str, str] = {}
    tables: Dict[int, str] = {}
    for rt in plan.route_tables:
        if rt.routes and rt.table in tables:
            raise LabError(f"route tables {tables[rt.table]} and {rt.id} share kernel table "
                           f"{rt.table}")
        tables[rt.table] = rt.id
        for sid in rt.subnets:
            if sid in seen:
                raise LabError(f"route table {rt.id}: subnet {sid!r} is already associated "
                               f"with {seen[sid]}; a subnet has one route table")
            seen[sid] = rt.id
    if plan.nacls and shutil.which("nft") is None:
        raise LabError("the lab has network ACLs, which need the nft command from nftables; "
                       "install it (Debian/Ubuntu: apt-get install nftables)")


def _steps(plan: Plan, state: Dict[str, Any]) -> Iterator[Tuple[str, Callable[[], None]]]:
    """(description, action) in build order. Namespaces first, node sysctls before any link
    can reach the node namespace, bridges before the ports that join them."""
    for ns in lab_namespaces(plan):
        yield f"create namespace {ns}", lambda ns=ns: create_namespace(state, ns)
    yield f"configure node namespace {plan.node_ns}", lambda: setup_node(plan)
    yield f"configure VPC namespace {plan.fabric_ns}", lambda: setup_fabric(plan)
    inet = plan.internet
    if inet is not None:
        yield f"configure internet namespace {inet.netns}", lambda: setup_internet(plan)
    for i, s in enumerate(plan.subnets):
        yield f"bridge {s.bridge} for {s.id}", lambda i=i: build_bridge(plan, i)
    if inet is not None:
        yield (f"internet bridge {inet.bridge} ({inet.gateway_id}, {inet.cidr})",
               lambda: build_internet_bridge(plan))
    for i, e in enumerate(plan.enis):
        yield (f"ENI {e.id} ({e.node_ifname} -> {plan.fabric_ns}/{e.fabric_ifname})",
               lambda i=i: build_eni(plan, i))
    for nat in plan.nat_gateways:
        yield (f"NAT gateway {nat.id} ({nat.inside_ifname} -> {nat.subnet}, "
               f"{nat.outside_ifname} -> internet)", lambda nat=nat: build_nat_gateway(plan, nat))
    for env in plan.envs:
        yield (f"environment {env.name} ({env.attach}, {env.netns})",
               lambda env=env: build_env(plan, env))
    for host in plan.hosts:
        yield f"host {host.name} ({host.netns})", lambda host=host: build_host(plan, host)
    for host in plan.internet_hosts:
        yield (f"internet host {host.name} ({host.netns})",
               lambda host=host: build_host(plan, host))
    for rt in plan.route_tables:
        if rt.routes:
            yield (f"route table {rt.id} (kernel table {rt.table})",
                   lambda rt=rt: build_route_table(plan, rt))
    if plan.nacls:
        yield (f"network ACLs ({', '.join(a.id for a in plan.nacls)}) as nftables table "
               f"inet {NFT_TABLE}", lambda: apply_nacls(plan))


def build(plan: Plan, config_source: str) -> Dict[str, Any]:
    """Build ``plan``; return the state written to ``state.json``.

    Refuses (LabError, touching nothing) when a lab of that name exists or any of the plan's
    namespaces already exists. On any failure the lab is rolled back and LabError names the step.
    """
    name = validate_lab_name(plan.name)
    if load_state(name) is not None:
        raise LabError(f"lab {name!r} already exists; run `hyperplane lab down --name {name}` "
                       "first")
    try:
        _check_plan(plan)
    except LabError as e:
        raise LabError(f"cannot build lab {name!r}: {e}") from None
    taken = [ns for ns in lab_namespaces(plan) if netns.exists(ns)]
    if taken:
        raise LabError(f"network namespace(s) {', '.join(taken)} already exist but lab {name!r} "
                       "has no state; they are left alone. Remove them (`ip netns delete`) if "
                       "they are left over, or pick another lab name")
    problem = netns.privilege_problem()
    if problem:
        raise LabError(f"cannot build lab {name!r}: {problem}")

    check_lab_dir(name)

    state: Dict[str, Any] = {"name": name, "plan": plan.to_dict(),
                             "config_source": config_source, "namespaces": [], "pid": None,
                             "created": time.time()}
    try:
        save_state(name, state, create=True)
    except FileExistsError:
        raise LabError(f"lab {name!r} already exists; run `hyperplane lab down --name {name}` "
                       "first") from None
    failed: Optional[Tuple[str, Exception]] = None
    try:
        for what, action in _steps(plan, state):
            try:
                action()
            except Exception as e:
                failed = (what, e)
                break
    except BaseException as e:   # KeyboardInterrupt, SystemExit: roll back, then let it go on
        _add_note(e, rollback(name))
        raise
    if failed is not None:
        what, e = failed
        raise LabError(f"building lab {name!r} failed at step '{what}': "
                       f"{type(e).__name__}: {e}; {rollback(name)}") from e
    return state


def rollback(name: str) -> str:
    """Undo a failed ``lab up`` of lab ``name``: :func:`teardown` of what its state file
    records, which is exactly what this run created (the state file was claimed with O_EXCL
    semantics before anything was built, and every namespace is recorded before it is
    created): its data path, by pid; its namespaces, with every link and the nftables table
    inside them; its directory. Never raises: returns a sentence for the error message."""
    try:
        rep = teardown(name)
    except Exception as e:
        return (f"rolling back failed as well ({e}); run `hyperplane lab down --name {name}` "
                "to remove what is left")
    pid = rep.get("stopped_pid")
    return (f"rolled back: removed {len(rep['removed_namespaces'])} namespace(s)"
            f"{f', stopped data path pid {pid}' if pid else ''} and the lab's directory; "
            f"nothing of lab {name!r} is left")


def _add_note(e: BaseException, note: str) -> None:
    if hasattr(e, "add_note"):  # Python 3.11+
        e.add_note(note)


# ---- teardown ----------------------------------------------------------------------------------
def _delete_links(ns: str, taps: List[str]) -> None:
    """Delete the namespace's interfaces before removing it. Removing a namespace's name does
    not destroy it while anything (a stray fd or socket) still holds it, and a persistent TAP
    would then live on; deleting the links first makes the teardown complete regardless."""
    with iproute(ns) as ipr:
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


def remove_function_code(name: str) -> None:
    """The folders lab ``name``'s functions' code was deployed to (paths.function_code_dirs;
    the workloads service removes its own as it stops, this is for one that was killed)."""
    for d in paths.function_code_dirs(name):
        shutil.rmtree(d, ignore_errors=True)


def teardown(name: str) -> Dict[str, Any]:
    """Stop the lab's processes (its data path, its workloads service and its metrics exporter,
    by the pids its state file records), remove the namespaces recorded there, the functions'
    code folders and the lab's directory. Idempotent and safe on a half-built lab; never touches
    a namespace the state file does not list (nor one outside the lab's ``hp-NAME-`` prefix)."""
    report: Dict[str, Any] = {"removed_namespaces": [], "stopped_pid": None}
    state = load_state(name)
    if state is None:
        return report
    recorded = state.get("namespaces")
    recorded = recorded if isinstance(recorded, list) else []   # an edited state file
    present = [ns for ns in recorded
               if isinstance(ns, str) and "/" not in ns and netns.exists(ns)]
    problem = netns.privilege_problem()
    if present and problem:
        raise LabError(f"cannot tear down lab {name!r}: {problem}")
    # The data path, the workloads service (functions' code, hosts' services) and the metrics
    # exporter ([metrics]) stop side by side, each cleaning up on SIGTERM; the code folders a
    # killed service left go after.
    others = [threading.Thread(target=proc.stop_lab_process, args=(state.get(key), name),
                               daemon=True) for key in ("workloads_pid", "metrics_pid")]
    for t in others:
        t.start()
    try:
        report["stopped_pid"] = proc.stop_lab_process(state.get("pid"), name)
    finally:
        for t in others:
            t.join()
    remove_function_code(name)

    prefix = f"hp-{name}-"
    taps: Dict[str, List[str]] = {}
    plan = state.get("plan")
    envs = plan.get("envs") if isinstance(plan, dict) else None
    for env in envs if isinstance(envs, list) else []:
        if isinstance(env, dict) and env.get("attach") == "tap" and \
                isinstance(env.get("netns"), str):
            taps.setdefault(env["netns"], []).append(str(env.get("ifname", "eth0")))
    errors = []
    for ns in reversed(recorded):
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
        state["namespaces"] = [ns for ns in recorded
                               if isinstance(ns, str) and ns.startswith(prefix)
                               and "/" not in ns and netns.exists(ns)]
        save_state(name, state)
        raise LabError(f"teardown of lab {name!r} was incomplete: {'; '.join(errors)}")
    shutil.rmtree(lab_dir(name), ignore_errors=True)
    return report
