"""OVS mode: the same bench topology forwarded by Open vSwitch's userspace conntrack NAT
(``datapath_type=netdev``, OpenFlow ``ct(commit,nat(src=...))``), the peer a user would pick
instead of hyperplane (``/work/shared/PEERS.md``; issue 18).

The lab is built like kernel mode's (:func:`hyperplane.topology.build`: the same namespaces,
links, MACs and addresses; the node namespace forwards nothing and has IPv6 off, as in
hyperplane mode, so the kernel never forwards a duplicate). Then inside the node namespace
:class:`OvsSwitch` starts its own ``ovsdb-server`` and ``ovs-vswitchd`` with their run, db and
log directories under the lab's directory (``OVS_RUNDIR``/``OVS_DBDIR``/``OVS_LOGDIR``,
``--pidfile``, ``--log-file``; never Debian's service, never another OVS): userspace TSO on
before ovs-vswitchd starts (without it OVS cannot forward the veths' partial-checksum
super-packets), one netdev bridge whose port 1 is the environment's node-side veth and port 2
the ENI's veth, the lab's ``[conntrack]`` timeouts as the NAT zone's timeout policy
(:func:`ovs_timeouts`, as kernel mode sets the kernel's), and the flows of :func:`ovs_flows`. ovs-vswitchd services veth ports from its
main thread (packet sockets, not PMD threads), so it is pinned with ``taskset -a -p -c`` to the
CPU hyperplane's loop uses. The daemons are stopped by their pidfiles' pids (SIGTERM, then
SIGKILL) and their directories removed, whatever happened.

Kernel and OVS modes always use a veth environment: a TAP's far end is a file descriptor that
a data path holds, and neither the kernel's NAT nor OVS's netdev bridge would hold it for them
(OVS could open a TAP as ``type=tap`` only by creating it itself, which is another topology).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from typing import Dict, List, Optional

from hyperplane import netns, paths, proc
from hyperplane.bench.settings import BenchError, progress
from hyperplane.labconfig import Plan, bare

VSWITCHD = "ovs-vswitchd"
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
BRIDGE = "hpbench"
#: The conntrack zone of the NAT's connections.
ZONE = 1
#: The ENI's source ports, as in hyperplane (536-65535: the first 536 are not handed out).
PORTS = "536-65535"
#: The OpenFlow port numbers: the environment's side, the ENI's (VPC) side.
ENV_PORT, ENI_PORT = 1, 2
#: Table 1 takes the replies after conntrack; table 2 finishes neighbour advertisements.
ND_TABLE = 2
HOW_TO_GET = "apt-get install --no-install-recommends openvswitch-switch"
#: Neighbour advertisement flags (RFC 4861 section 4.4): Router, Solicited, Override.
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80000000, 0x40000000, 0x20000000


def missing() -> Optional[str]:
    """Why OVS mode cannot run here ("" when it can): the programs it starts."""
    gone = [p for p in (VSWITCHD, "ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ovs-ofctl")
            if shutil.which(p) is None]
    if gone:
        return f"{', '.join(gone)} not installed ({HOW_TO_GET})"
    if not os.path.exists(SCHEMA):
        return f"{SCHEMA} is missing ({HOW_TO_GET})"
    return ""


def _arp_responder(port: int, ip: str, mac: str) -> str:
    """Answer ARP requests for ``ip`` arriving on ``port`` with ``mac`` (RFC 826: the request
    turned around in place)."""
    return (f"table=0,priority=100,in_port={port},arp,arp_op=1,arp_tpa={ip} "
            "actions=move:eth_src->eth_dst,"
            f"set_field:{mac}->eth_src,set_field:2->arp_op,"
            "move:arp_sha->arp_tha,move:arp_spa->arp_tpa,"
            f"set_field:{mac}->arp_sha,set_field:{ip}->arp_spa,in_port")


def _nd_responder(port: int, ip: str, mac: str, router: bool) -> List[str]:
    """Answer neighbour solicitations for ``ip`` on ``port`` with an advertisement (RFC 4861
    section 7.2.4): the solicitation rewritten into type 136, solicited + override (+ router
    for a gateway), then (table 2, where the packet matches as an advertisement, which OVS
    requires before it sets ``nd_tll``) the source link-layer option turned into the target
    link-layer option (type 2) carrying ``mac``."""
    flags = NA_SOLICITED | NA_OVERRIDE | (NA_ROUTER if router else 0)
    return [f"table=0,priority=100,in_port={port},icmp6,icmp_type=135,nd_target={ip} "
            "actions=move:eth_src->eth_dst,"
            f"set_field:{mac}->eth_src,move:ipv6_src->ipv6_dst,set_field:{ip}->ipv6_src,"
            f"set_field:255->nw_ttl,set_field:136->icmpv6_type,"
            f"set_field:{flags:#x}->nd_reserved,resubmit(,{ND_TABLE})",
            f"table={ND_TABLE},priority=100,in_port={port},icmp6,icmp_type=136,nd_target={ip} "
            f"actions=set_field:2->nd_options_type,set_field:{mac}->nd_tll,in_port"]


def ovs_flows(plan: Plan, env_mac: str, next_hops: Dict[str, str],
              router_mac: str) -> List[str]:
    """The OpenFlow table of OVS mode (``ovs-ofctl add-flows``), as data without I/O.

    ``env_mac`` is the environment's own MAC (its eth0), ``next_hops`` the MACs of VPC
    addresses reached directly on the ENI's link (the bench's server; every address, v4 and
    v6), ``router_mac`` the VPC router's for everything else. Table 0: ARP/NDP responders for
    the environment's gateway (port 1) and the ENI (port 2); the environment's traffic
    committed to conntrack with source NAT to the ENI's address, then MACs, ``dec_ttl``, out of
    port 2; traffic to the ENI's address goes through conntrack (``nat`` undoes the
    translation) to table 1, which forwards only replies (``+trk+est``, ``+trk+rel``) to
    port 1. Everything else is dropped: an unsolicited SYN to the ENI is ``+trk+new`` and
    ends in table 1's drop, like hyperplane's ENI (DESIGN.md)."""
    if len(plan.enis) != 1:
        raise BenchError(f"OVS mode routes everything out of one ENI; lab {plan.name!r} has "
                         f"{len(plan.enis)}")
    eni = plan.enis[0]
    env = plan.envs[0]
    if env.attach != "veth":
        raise BenchError("OVS mode needs a veth environment (a TAP's fd would have no holder)")
    flows = [_arp_responder(ENV_PORT, env.gw4, env.gw_mac),
             _arp_responder(ENI_PORT, eni.ipv4, eni.mac)]
    families = [("ip", "nw", bare(env.ipv4), eni.ipv4, eni.ipv4)]
    if env.ipv6 and eni.ipv6:
        flows += (_nd_responder(ENV_PORT, env.gw6, env.gw_mac, router=True)
                  + _nd_responder(ENI_PORT, eni.ipv6, eni.mac, router=False))
        families.append(("ipv6", "ipv6", bare(env.ipv6), eni.ipv6, f"[{eni.ipv6}]"))
    for proto, field, env_ip, eni_ip, nat_ip in families:
        out = (f"ct(commit,zone={ZONE},nat(src={nat_ip}:{PORTS})),"
               f"set_field:{eni.mac}->eth_src,set_field:{{mac}}->eth_dst,dec_ttl,"
               f"output:{ENI_PORT}")
        for dst, mac in sorted(next_hops.items()):
            if (ipaddress.ip_address(dst).version == 6) == (proto == "ipv6"):
                flows.append(f"table=0,priority=60,in_port={ENV_PORT},{proto},"
                             f"{field}_src={env_ip},{field}_dst={dst} "
                             f"actions={out.format(mac=mac)}")
        flows.append(f"table=0,priority=50,in_port={ENV_PORT},{proto},{field}_src={env_ip} "
                     f"actions={out.format(mac=router_mac)}")
        flows.append(f"table=0,priority=50,in_port={ENI_PORT},{proto},{field}_dst={eni_ip} "
                     f"actions=ct(zone={ZONE},nat,table=1)")
        back = (f"set_field:{env.gw_mac}->eth_src,set_field:{env_mac}->eth_dst,dec_ttl,"
                f"output:{ENV_PORT}")
        for state in ("+trk+est", "+trk+rel"):
            flows.append(f"table=1,priority=50,ct_state={state},{proto},{field}_dst={env_ip} "
                         f"actions={back}")
    flows += [f"table={t},priority=0 actions=drop" for t in (0, 1, ND_TABLE)]
    return flows


#: hyperplane's [conntrack] timeouts (named like the kernel's sysctls) -> the attributes of an
#: OVS zone timeout policy (ovs-vswitchd.conf.db(5), CT_Timeout_Policy): an unreplied UDP flow
#: is OVS's udp_first (one packet) and udp_single (more from one side), a replied one
#: udp_multiple.
OVS_TIMEOUTS = {
    "tcp_timeout_syn_sent": ["tcp_syn_sent"], "tcp_timeout_syn_recv": ["tcp_syn_recv"],
    "tcp_timeout_established": ["tcp_established"], "tcp_timeout_fin_wait": ["tcp_fin_wait"],
    "tcp_timeout_close_wait": ["tcp_close_wait"], "tcp_timeout_last_ack": ["tcp_last_ack"],
    "tcp_timeout_time_wait": ["tcp_time_wait"], "tcp_timeout_close": ["tcp_close"],
    "udp_timeout": ["udp_first", "udp_single"], "udp_timeout_stream": ["udp_multiple"],
}


def ovs_timeouts(plan: Plan) -> List[str]:
    """The zone timeout policy (``ovs-vsctl add-zone-tp netdev zone=1 ...`` arguments) that
    gives OVS's conntrack the lab's ``[conntrack]`` timeouts, as kernel mode gives the kernel's
    (:func:`hyperplane.bench.kernel.conntrack_sysctls`): without it OVS keeps an established
    TCP connection 24 hours."""
    return [f"{attr}={getattr(plan.conntrack, key)}"
            for key, attrs in OVS_TIMEOUTS.items() for attr in attrs]


def ovs_dir(lab: str) -> str:
    """OVS mode's directories (run, db, log) live under the lab's own directory."""
    return os.path.join(paths.lab_dir(lab), "ovs")


class OvsSwitch:
    """ovsdb-server and ovs-vswitchd inside one lab's node namespace; started by
    :meth:`start`, always stopped by :meth:`stop` (by pid, only the two it started)."""

    def __init__(self, plan: Plan, cpu: Optional[int]):
        self.plan, self.cpu = plan, cpu
        self.ns = plan.node_ns
        self.dir = ovs_dir(plan.name)
        self.pids: Dict[str, int] = {}
        self.env = dict(os.environ, OVS_RUNDIR=self.dir, OVS_DBDIR=self.dir,
                        OVS_LOGDIR=self.dir, OVS_SYSCONFDIR=self.dir, OVS_PKGDATADIR=
                        os.path.dirname(SCHEMA))
        self.db = os.path.join(self.dir, "conf.db")
        self.sock = f"unix:{os.path.join(self.dir, 'db.sock')}"

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def log_tail(self) -> str:
        return "".join(f"--- {d}.log:\n{proc.tail(self._file(d + '.log'), 8)}"
                       for d in ("ovsdb-server", VSWITCHD))

    def _run(self, argv: List[str], what: str, timeout: float = 20.0) -> str:
        try:
            r = subprocess.run(["ip", "netns", "exec", self.ns] + argv, env=self.env,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"OVS mode: {what} did not finish within {timeout:g} s\n"
                             f"{self.log_tail()}") from None
        if r.returncode != 0:
            raise BenchError(f"OVS mode: {what} failed: {(r.stderr or r.stdout).strip()}\n"
                             f"{self.log_tail()}")
        return r.stdout

    def _daemon(self, name: str, argv: List[str]) -> None:
        pidfile = self._file(f"{name}.pid")
        self._run(argv + [f"--pidfile={pidfile}", f"--log-file={self._file(name + '.log')}",
                          "--detach", "--no-chdir"], f"starting {name}")
        with open(pidfile) as f:
            self.pids[name] = int(f.read().strip())

    def vsctl(self, *args: str) -> str:
        return self._run(["ovs-vsctl", f"--db={self.sock}", "--timeout=20", *args],
                         "ovs-vsctl " + " ".join(args))

    def start(self, flows: List[str]) -> None:
        """Start both daemons, configure the bridge and its flows, pin ovs-vswitchd; on any
        failure stop what was started and raise BenchError (with the logs' tails)."""
        why = missing()
        if why:
            raise BenchError(f"OVS mode: {why}")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        try:
            self._run(["ovsdb-tool", "create", self.db, SCHEMA], "ovsdb-tool create")
            self._daemon("ovsdb-server", [
                "ovsdb-server", self.db, f"--remote=p{self.sock}",
                f"--unixctl={self._file('ovsdb-server.ctl')}"])
            self.vsctl("--no-wait", "init")
            # before ovs-vswitchd reads its configuration: it decides TSO support at start
            self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                       "other_config:userspace-tso-enable=true")
            self._daemon(VSWITCHD, [VSWITCHD, self.sock,
                                    f"--unixctl={self._file('ovs-vswitchd.ctl')}"])
            env, eni = self.plan.envs[0], self.plan.enis[0]
            self.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE,
                       "datapath_type=netdev", "fail_mode=secure",
                       "--", "add-port", BRIDGE, env.node_ifname,
                       "--", "set", "Interface", env.node_ifname, f"ofport_request={ENV_PORT}",
                       "--", "add-port", BRIDGE, eni.node_ifname,
                       "--", "set", "Interface", eni.node_ifname, f"ofport_request={ENI_PORT}")
            ports = self._run(["ovs-ofctl", "show", BRIDGE], "ovs-ofctl show")
            for port, ifname in ((ENV_PORT, env.node_ifname), (ENI_PORT, eni.node_ifname)):
                if f" {port}({ifname})" not in ports:
                    raise BenchError(f"OVS mode: {ifname} did not become port {port} of "
                                     f"{BRIDGE}:\n{ports}\n{self.log_tail()}")
            # the lab's conntrack timeouts for the NAT's zone (a policy needs the datapath's
            # record, which ovs-vsctl of 3.1 has no command to add)
            self.vsctl("--", "--id=@dp", "create", "Datapath", "datapath_version=0",
                       "--", "set", "Open_vSwitch", ".", "datapaths:netdev=@dp")
            self.vsctl("add-zone-tp", "netdev", f"zone={ZONE}", *ovs_timeouts(self.plan))
            self._run(["ovs-ofctl", "del-flows", BRIDGE], "ovs-ofctl del-flows")
            self._add_flows(flows)
            if self.cpu is not None and shutil.which("taskset"):
                # every thread, the main one (which services the veths) included
                subprocess.run(["taskset", "-a", "-p", "-c", str(self.cpu),
                                str(self.pids[VSWITCHD])], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except BaseException:
            self.stop()
            raise

    def _add_flows(self, flows: List[str]) -> None:
        path = self._file("flows.txt")
        with open(path, "w") as f:
            f.write("\n".join(flows) + "\n")
        self._run(["ovs-ofctl", "add-flows", BRIDGE, path], "ovs-ofctl add-flows")

    def alive(self) -> bool:
        return proc.pid_alive(self.pids.get(VSWITCHD))

    def problem(self) -> str:
        """A sentence when ovs-vswitchd has died (with the logs' tails), else ""."""
        if not self.pids or self.alive():
            return ""
        return f"; ovs-vswitchd (pid {self.pids.get(VSWITCHD)}) has exited:\n{self.log_tail()}"

    def stop(self) -> List[str]:
        """Stop the daemons this switch started (their pidfiles' pids; SIGTERM, then SIGKILL
        after 5 s), then remove their directory. Returns problems (empty when clean)."""
        errors: List[str] = []
        for name in (VSWITCHD, "ovsdb-server"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            if not _ours(pid, name, self.dir):
                errors.append(f"pid {pid} is no longer {name} of {self.dir}; left alone")
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while proc.pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                progress(f"{name} (pid {pid}) ignored SIGTERM; killed")
        shutil.rmtree(self.dir, ignore_errors=True)
        return errors


def _ours(pid: int, name: str, directory: str) -> bool:
    """Whether ``pid`` is still the ``name`` daemon started with files in ``directory`` (a
    pid reused by another process after the daemon died is never signalled)."""
    argv = proc.cmdline(pid) or []
    return bool(argv) and os.path.basename(argv[0]).startswith(name.split("-")[0]) and any(
        directory in a for a in argv)


def mac_of(ns: str, ifname: str) -> str:
    """The MAC of ``ifname`` in namespace ``ns``."""
    from pyroute2 import IPRoute

    with netns.entered(ns):
        ipr = IPRoute()
    try:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise BenchError(f"OVS mode: no interface {ifname} in {ns}")
        return ipr.get_links(idx[0])[0].get_attr("IFLA_ADDRESS")
    finally:
        ipr.close()


def ovs_nat(plan: Plan, cpu: Optional[int]) -> OvsSwitch:
    """Make the node namespace of a lab built by :func:`hyperplane.topology.build` an OVS NAT:
    read the MACs the flows need (the environment's eth0, the server's and the VPC router's),
    start the switch with :func:`ovs_flows`. The caller stops it (``.stop()``) before the
    lab's teardown."""
    env = plan.envs[0]
    next_hops: Dict[str, str] = {}
    eni = plan.enis[0]
    for host in plan.hosts:
        if host.subnet == eni.subnet:
            mac = mac_of(host.netns, host.ifname)
            for addr in (host.ipv4, host.ipv6):
                if addr:
                    next_hops[bare(addr)] = mac
    router = _router_mac(plan)
    switch = OvsSwitch(plan, cpu)
    switch.start(ovs_flows(plan, mac_of(env.netns, env.ifname), next_hops, router))
    return switch


def _router_mac(plan: Plan) -> str:
    """The VPC router's MAC on the ENI's subnet (the bridge in the fabric namespace that holds
    the router's address)."""
    from pyroute2 import IPRoute

    eni = plan.enis[0]
    with netns.entered(plan.fabric_ns):
        ipr = IPRoute()
    try:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == eni.router4:
                return ipr.get_links(a["index"])[0].get_attr("IFLA_ADDRESS")
    finally:
        ipr.close()
    raise BenchError(f"OVS mode: no VPC router {eni.router4} in {plan.fabric_ns}")
