# The data path bindings (csrc/hp_dp*.c), included into _engine.pyx so that a DataPath can
# drive the C engines of Engine objects directly. Python sets the data path up and asks it for
# counters; hp_dp_poll moves every packet in C with the GIL released.
from libc.errno cimport errno
from libc.string cimport strlen
import ipaddress
import math as _math
import os as _os

#: Data-path drop reasons by number, named as the C core names them (csrc/hp_drop_reasons.h;
#: the engine's own are DropReason).
DATAPATH_DROP_REASONS = tuple(hp_dp_reason_names[i].decode() for i in range(HP_D_COUNT))
NEIGH_STATES = ("free", "incomplete", "reachable", "stale", "probe")
#: An environment link's function state (csrc/hp_dp.h enum hp_link_state order). Only an
#: "active" link's IP packets are forwarded; the others are dropped as function_pending,
#: function_inactive and no_vpc_config, and counted in the link's "blocked".
LINK_STATES = ("active", "pending", "inactive", "detached")
assert len(LINK_STATES) == HP_LINK_N_STATES, "LINK_STATES and hp_dp.h disagree"
#: Link roles: an execution environment, an ENI (the VPC side of a group), the private side of
#: a NAT gateway (the group's ENI link is then its public side).
LINK_ROLES = {"env": HP_ROLE_ENV, "eni": HP_ROLE_ENI, "inside": HP_ROLE_INSIDE}

POLL_INTERRUPTED = HP_POLL_INTR
POLL_LINK_DOWN = HP_POLL_LINK_DOWN
#: poll()'s bit when a worker thread stopped: the data path must stop (DataPath.workers_down).
POLL_WORKER_DOWN = HP_POLL_WORKER_DOWN
#: The most data-path workers (csrc/hp_dp.h HP_DP_MAX_WORKERS).
MAX_WORKERS = HP_DP_MAX_WORKERS


cdef bytes _mac_bytes(str mac):
    b = bytes(int(x, 16) for x in mac.split(":"))
    if len(b) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return b


cdef str _mac_str(const uint8_t *m):
    return ":".join(f"{m[i]:02x}" for i in range(6))


cdef class DataPath:
    """Links (TAP fds and veth AF_PACKET rings), engine groups, and the C event loop.

    A *group* is one Engine plus its ENI link; environment links belong to a group. A group
    that is a NAT gateway has one "inside" link (its private side) instead: replies arriving on
    its ENI link (the public side) go back out there.
    ``poll(ms)`` moves packets for up to ``ms`` milliseconds and returns early with a bit mask
    of the watched fds that became readable, or ``POLL_INTERRUPTED`` when a signal arrived.
    """
    cdef hp_dp *_dp
    cdef list _engines
    cdef list _links

    def __cinit__(self):
        self._dp = hp_dp_new()
        if self._dp == NULL:
            raise MemoryError("hp_dp_new")
        self._engines = []
        self._links = []

    def __dealloc__(self):
        if self._dp != NULL:
            hp_dp_free(self._dp)
            self._dp = NULL

    cdef hp_dp *_get(self) except NULL:
        if self._dp == NULL:
            raise RuntimeError("the data path is closed")
        return self._dp

    cdef hp_link *_link(self, link, str need=None) except NULL:
        """The link with index ``link`` (and of role ``need``), or ValueError."""
        cdef hp_dp *dp = self._get()
        if not isinstance(link, int) or isinstance(link, bool) or not 0 <= link < dp.n_links:
            raise ValueError(f"link {link!r}: no such link (the data path has {dp.n_links} "
                             f"links, 0..{dp.n_links - 1})")
        cdef hp_link *l = hp_dp_link(dp, link)
        if need is not None and l.role != LINK_ROLES[need]:
            raise ValueError(f"link {link} ({self._links[link]['name']}) is an "
                             f"{self._links[link]['role']} link; this needs an {need} link")
        return l

    cdef int _group(self, group) except -1:
        cdef hp_dp *dp = self._get()
        if not isinstance(group, int) or isinstance(group, bool) or not 0 <= group < dp.n_groups:
            raise ValueError(f"group {group!r}: no such group (the data path has "
                             f"{dp.n_groups} groups, 0..{dp.n_groups - 1})")
        return group

    def link_index(self, str name):
        """The index of the link added under ``name``."""
        for i, d in enumerate(self._links):
            if d["name"] == name:
                return i
        raise ValueError(f"no link named {name!r}")

    def link_io(self, link):
        """How ``link`` moves packets: ``"packet ring"`` (a veth: TPACKET_V2 ring, sendmmsg),
        ``"io_uring"`` (a TAP, batched) or ``"read/write"`` (a TAP, one call per packet), and
        why a TAP is not on io_uring ("" when it is)."""
        self._link(link)
        cdef hp_port *p = &hp_dp_link(self._get(), link).port
        return _port_io(p), (hp_io_tap_fallback_reason().decode(errors="replace")
                             if p.tap_io == HP_TAP_IO_RW else "")

    def close(self):
        """Close every link (and the TAP fds handed over)."""
        if self._dp != NULL:
            hp_dp_free(self._dp)
            self._dp = NULL

    @property
    def ring_frames(self):
        """Frames in the receive ring of each veth link opened from now on (0: the default,
        4,096 of 2 KiB). Set it before adding links; add_link refuses a bad value."""
        return self._get().ring_frames

    @ring_frames.setter
    def ring_frames(self, n):
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 2 ** 32:
            raise ValueError(f"ring_frames {n!r}: a number of frames is expected")
        self._get().ring_frames = n

    def start_inbound_worker(self, cpus=()):
        """Start the inbound worker (csrc/hp_dp.h hp_dp_start_inbound): a thread on ``cpus``
        (empty: any CPU) that receives on the ENI links and does the VPC -> environment
        direction while ``poll`` runs. Once per data path."""
        cdef char err[256]
        cdef int c[64]
        cpus = list(cpus)
        if len(cpus) > 64:
            raise ValueError("at most 64 CPUs for the inbound worker")
        for i, cpu in enumerate(cpus):
            if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < 1024:
                raise ValueError(f"CPU {cpu!r}: a CPU number from 0 is expected")
            c[i] = cpu
        if hp_dp_start_inbound(self._get(), c, len(cpus), err, sizeof(err)) < 0:
            raise OSError(err.decode(errors="replace"))

    def start_workers(self, n, cpus=None):
        """Run the data path on ``n`` workers (csrc/hp_dp.h hp_dp_start_workers): the calling
        thread is worker 0, worker i > 0 a thread on ``cpus[i]`` (None: any CPU). Before any
        group or link; groups then take a ShardedEngine of ``n`` shards."""
        cdef char err[256]
        cdef int c[16]
        if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= HP_DP_MAX_WORKERS:
            raise ValueError(f"workers {n!r}: from 2 to {HP_DP_MAX_WORKERS}")
        cpus = [None] * n if cpus is None else list(cpus)
        if len(cpus) != n:
            raise ValueError(f"cpus {cpus!r}: one per worker ({n})")
        for i, cpu in enumerate(cpus):
            if cpu is not None and (not isinstance(cpu, int) or isinstance(cpu, bool)
                                    or not 0 <= cpu < 1024):
                raise ValueError(f"CPU {cpu!r}: a CPU number from 0 is expected")
            c[i] = -1 if cpu is None else cpu
        if hp_dp_start_workers(self._get(), n, c, err, sizeof(err)) < 0:
            raise OSError(err.decode(errors="replace"))

    @property
    def workers(self):
        """How many workers move packets (1 without start_workers)."""
        cdef hp_dp *dp = self._get()
        return dp.n_threads if dp.mt == HP_MT_WORKERS else 1

    def workers_down(self):
        """The workers that stopped on an error: a list of (index, errno text)."""
        cdef hp_dp *dp = self._get()
        return [(i, _os.strerror(dp.wk[i].fail_errno)) for i in range(1, dp.n_threads)
                if dp.wk[i].failed]

    def break_worker(self, int w):
        """Fault injection (tests): worker ``w`` fails at its next wait, as on a real error;
        the next poll() returns POLL_WORKER_DOWN."""
        if hp_dp_break_worker(self._get(), w) < 0:
            raise ValueError(f"worker {w}: no such worker thread (1..{self.workers - 1})")

    def worker_counters(self):
        """Per worker: packets received, forwarded each way, handed to others (out), taken
        from others (in), lost to a full handoff ring, and new connections spilled over."""
        cdef hp_dp *dp = self._get()
        cdef hp_link *l
        out = []
        for w in range(self.workers):
            rx = 0
            for i in range(dp.n_links):
                l = hp_dp_link(dp, i)
                if w == 0 or l.pt[w] != &l.port:
                    rx += l.pt[w].rx_packets
            out.append(dict(worker=w, rx_packets=rx,
                            forwarded_outbound=dp.wk[w].forwarded[0],
                            forwarded_inbound=dp.wk[w].forwarded[1],
                            handoff_out=dp.wk[w].handoff_out, handoff_in=dp.wk[w].handoff_in,
                            handoff_full=dp.wk[w].handoff_full, spilled=dp.wk[w].spilled))
        return out

    def add_group(self, engine):
        cdef hp_engine *shards[16]
        cdef Engine e
        engines = list(getattr(engine, "shards", [engine]))
        if len(engines) != self.workers:
            raise ValueError(f"a group of this data path needs {self.workers} engine shards "
                             f"(one per worker), not {len(engines)}")
        for i, e in enumerate(engines):
            shards[i] = e._e
        cdef int g = hp_dp_add_group_shards(self._get(), shards, len(engines))
        if g < 0:
            raise ValueError("too many groups")
        self._engines.extend(engines)
        return g

    def add_link(self, str role, group, *, str name, str mac, str ifname=None, tap_fd=None):
        """An "env", "eni" or "inside" link on a veth (``ifname``, opened here in this thread's
        namespace) or a TAP device (``tap_fd``, taken over: the data path closes it, also when
        this call fails). A group has one ENI link and at most one inside link."""
        cdef char err[256]
        cdef int r = LINK_ROLES.get(role, -1)
        cdef bytes m
        try:
            if r < 0:
                raise ValueError(f"role must be one of {sorted(LINK_ROLES)}, not {role!r}")
            self._group(group)
            if r == HP_ROLE_INSIDE and self._dp.groups[group].inside_link >= 0:
                raise ValueError(f"group {group} already has an inside link "
                                 f"({self._links[self._dp.groups[group].inside_link]['name']})")
            m = _mac_bytes(mac)
        except BaseException:
            if tap_fd is not None:
                _os.close(int(tap_fd))
            raise
        cdef bytes ifn = (ifname or "").encode()
        cdef int kind = HP_PORT_TAP if tap_fd is not None else HP_PORT_PACKET
        cdef int fd = int(tap_fd) if tap_fd is not None else -1
        err[0] = 0
        cdef int li = hp_dp_add_link(self._get(), r, group, kind, ifn, fd, m, err, sizeof(err))
        if li < 0:
            raise OSError(f"link {name}: {err.decode(errors='replace')}")
        self._links.append(dict(name=name, role=role, kind="tap" if kind == HP_PORT_TAP else "veth",
                                ifname=ifname, mac=mac, group=group))
        return li

    def add_address(self, link, str addr):
        """An address the data path owns on ``link`` (answers ARP/NDP for it)."""
        self._link(link)
        a = ipaddress.ip_address(addr)
        cdef bytes b = a.packed
        if hp_dp_add_own(self._get(), link, a.version, b) < 0:
            raise ValueError(f"link {link}: cannot add address {addr}")

    def set_environment(self, link, str addr):
        """The environment's own address on an ENV link (replies to it go out there)."""
        self._link(link, "env")
        a = ipaddress.ip_address(addr)
        cdef bytes b = a.packed
        if hp_dp_set_env(self._get(), link, a.version, b) < 0:
            raise ValueError(f"link {link}: cannot set environment address {addr} (taken?)")

    def remove_address(self, link, str addr):
        """Stop owning ``addr`` on ``link``: no more ARP/NDP answers for it (the ENI was
        deleted). ValueError if the link does not own it."""
        a = ipaddress.ip_address(addr)
        self._link(link)
        cdef bytes b = a.packed
        if hp_dp_remove_own(self._get(), link, a.version, b) < 0:
            raise ValueError(f"link {link} ({self._links[link]['name']}) does not own {addr}")

    def set_link_state(self, link, str state):
        """An environment link's function state: "active" (the default) forwards; "pending",
        "inactive" and "detached" drop its IP packets (function_pending, function_inactive,
        no_vpc_config) and count them in the link's "blocked". ARP/NDP is answered always."""
        if state not in LINK_STATES:
            raise ValueError(f"state must be one of {LINK_STATES}, not {state!r}")
        self._link(link, "env")
        hp_dp_set_link_state(self._dp, link, LINK_STATES.index(state))

    def set_link_group(self, link, group):
        """Move an environment link to another group (its function's new ENI became active):
        its new connections use that group's engine. Replies of its connections in the old
        group still reach it (the address -> environment map belongs to the data path)."""
        self._link(link, "env")
        self._group(group)
        hp_dp_set_link_group(self._dp, link, group)
        self._links[link]["group"] = group

    def set_link_ipv6(self, link, bint allowed):
        """Whether an environment link may send IPv6 (Lambda: only with
        Ipv6AllowedForDualStack); refused packets are dropped as ipv6_not_allowed. NDP is
        answered either way."""
        self._link(link, "env")
        hp_dp_set_link_ipv6(self._dp, link, allowed)

    def set_group_options(self, group, *, bint rst_unknown_tcp=False):
        """``rst_unknown_tcp``: a TCP segment from an env or inside link of the group that
        matches no connection and is no SYN (the engine's tcp_not_syn) is answered with a RST,
        as an AWS NAT gateway answers a packet of a timed-out connection. A first IP fragment
        without ACK gets none (its RST's ack would need the whole segment's length, RFC 9293
        3.10.7.1): counted as ``rst_withheld_fragment``."""
        self._group(group)
        hp_dp_set_group_options(self._get(), group, rst_unknown_tcp)

    def set_clock_offset(self, seconds):
        """The data path's clock = time.monotonic() + ``seconds``: a lab clock that can be moved
        forward (timers and connection expiry run at the next poll), never back."""
        cdef double s = float(seconds)
        if not _math.isfinite(s):
            raise ValueError(f"clock offset {seconds!r}: must be a finite number of seconds")
        if hp_dp_set_clock_offset(self._get(), s) < 0:
            raise ValueError(f"clock offset {seconds!r}: the clock never goes back (the offset "
                             f"is {self._dp.clock_offset})")

    @property
    def clock_offset(self):
        return self._get().clock_offset

    def now(self):
        """The data path's clock (seconds): time.monotonic() + clock_offset."""
        return hp_dp_clock(self._get())

    def set_subnet(self, link, str prefix, str router):
        """The ENI or inside link's subnet (next hop = destination) and router (next hop for
        the rest)."""
        self._link(link)
        if self._links[link]["role"] == "env":
            raise ValueError(f"link {link} ({self._links[link]['name']}) is an env link; a "
                             "subnet belongs to an eni or inside link")
        net = ipaddress.ip_network(prefix)
        rt = ipaddress.ip_address(router)
        cdef bytes nb = net.network_address.packed
        cdef bytes rb = rt.packed
        if net.version != rt.version or hp_dp_set_subnet(self._get(), link, net.version, nb,
                                                         net.prefixlen, rb) < 0:
            raise ValueError(f"link {link}: bad subnet {prefix} / router {router}")

    def watch(self, int fd):
        """Return from poll() when fd is readable; the bit number is returned."""
        cdef int b = hp_dp_watch(self._get(), fd)
        if b < 0:
            raise OSError(f"cannot watch fd {fd}")
        return b

    def poll(self, int timeout_ms):
        cdef hp_dp *dp = self._get()
        cdef int r
        cdef Engine e
        for e in self._engines:
            e._check_idle()
        for e in self._engines:
            e._busy = True
        try:
            with nogil:
                r = hp_dp_poll(dp, timeout_ms)
        finally:
            for e in self._engines:
                e._busy = False
        if r == -1:
            raise OSError(errno, _os.strerror(errno))
        return r

    def counters(self):
        cdef hp_dp *dp = self._get()
        cdef hp_link *l
        cdef hp_port *p
        links = []
        for i, d in enumerate(self._links):
            l = hp_dp_link(dp, i)
            rx_packets = rx_bytes = ring_drops = tx_packets = tx_bytes = tx_errors = 0
            for w in range(self.workers):   # the link's port of each worker (or the one)
                p = l.pt[w]
                hp_io_ring_stats(p)
                rx_packets += p.rx_packets
                rx_bytes += p.rx_bytes
                ring_drops += p.rx_ring_drops
                tx_packets += p.tx_packets
                tx_bytes += p.tx_bytes
                tx_errors += p.tx_errors
            links.append(dict(d, rx_packets=rx_packets, rx_bytes=rx_bytes,
                              rx_ring_drops=ring_drops,
                              ring_frames=l.port.ring_frames, io=_port_io(&l.port),
                              tx_packets=tx_packets, tx_bytes=tx_bytes,
                              tx_errors=tx_errors, arp_in=l.arp_in, arp_out=l.arp_out,
                              nd_in=l.nd_in, nd_out=l.nd_out, neighbours=l.neigh.n,
                              up=not l.down, state=LINK_STATES[l.state], blocked=l.blocked,
                              ipv6_allowed=not l.no_ipv6))
        return {
            "forwarded_outbound": sum(dp.wk[w].forwarded[0] for w in range(dp.n_threads)),
            "forwarded_inbound": sum(dp.wk[w].forwarded[1] for w in range(dp.n_threads)),
            "rst_sent": dp.rst_sent, "rst_withheld_fragment": dp.rst_withheld_fragment,
            "drops": {DATAPATH_DROP_REASONS[i]: dp.drops[i] for i in range(HP_D_COUNT)},
            "links": links,
        }

    def neighbours(self):
        """The neighbour caches: one dict per entry (like ``ip neigh``)."""
        cdef hp_dp *dp = self._get()
        cdef hp_link *l
        cdef hp_neigh *n
        out = []
        for i, d in enumerate(self._links):
            l = hp_dp_link(dp, i)
            for s in range(HP_NEIGH_SLOTS):
                n = &l.neigh.slot[s]
                if n.family == 0:
                    continue
                fam = socket.AF_INET if n.family == 4 else socket.AF_INET6
                addr = socket.inet_ntop(fam, (<char *>n.addr)[:4 if n.family == 4 else 16])
                out.append(dict(link=d["name"], address=addr, state=NEIGH_STATES[n.state],
                                mac=_mac_str(n.mac) if n.state != 1 else None,
                                queued=n.qlen))
        return out


cdef str _port_io(hp_port *p):
    if p.kind == HP_PORT_PACKET:
        return "packet ring"
    return "io_uring" if p.tap_io == HP_TAP_IO_URING else "read/write"
