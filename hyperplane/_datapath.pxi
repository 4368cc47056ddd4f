# The data path bindings (csrc/hp_dp.c), included into _engine.pyx so that a DataPath can
# drive the C engines of Engine objects directly. Python sets the data path up and asks it for
# counters; hp_dp_poll moves every packet in C with the GIL released.
from libc.errno cimport errno
from libc.string cimport strlen
import ipaddress
import os as _os

#: Data-path drop reasons, in csrc/hp_dp.h order (the engine's own are DropReason).
DATAPATH_DROP_REASONS = (
    "runt", "not_our_mac", "not_ip", "multicast", "spoofed_source", "local_destination",
    "engine", "no_environment", "no_route", "neigh_failed", "neigh_queue_full",
    "neigh_table_full", "bad_ndp", "rx_truncated")
assert len(DATAPATH_DROP_REASONS) == HP_D_COUNT, "DATAPATH_DROP_REASONS and hp_dp.h disagree"
NEIGH_STATES = ("free", "incomplete", "reachable", "stale", "probe")
POLL_INTERRUPTED = HP_POLL_INTR
POLL_LINK_DOWN = HP_POLL_LINK_DOWN


cdef bytes _mac_bytes(str mac):
    b = bytes(int(x, 16) for x in mac.split(":"))
    if len(b) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return b


cdef str _mac_str(const uint8_t *m):
    return ":".join(f"{m[i]:02x}" for i in range(6))


cdef class DataPath:
    """Links (TAP fds and veth AF_PACKET rings), engine groups, and the C event loop.

    A *group* is one Engine plus its ENI link; environment links belong to a group.
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

    def close(self):
        """Close every link (and the TAP fds handed over)."""
        if self._dp != NULL:
            hp_dp_free(self._dp)
            self._dp = NULL

    def add_group(self, Engine engine):
        cdef int g = hp_dp_add_group(self._get(), engine._e)
        if g < 0:
            raise ValueError("too many groups")
        self._engines.append(engine)
        return g

    def add_link(self, str role, int group, *, str name, str mac, str ifname=None, tap_fd=None):
        """An ENV or ENI link on a veth (``ifname``, opened here in this thread's namespace) or a
        TAP device (``tap_fd``, taken over: the data path closes it)."""
        cdef char err[256]
        cdef int r = HP_ROLE_ENV if role == "env" else HP_ROLE_ENI if role == "eni" else -1
        if r < 0:
            raise ValueError(f"role must be 'env' or 'eni', not {role!r}")
        cdef bytes m = _mac_bytes(mac)
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

    def add_address(self, int link, str addr):
        """An address the data path owns on ``link`` (answers ARP/NDP for it)."""
        a = ipaddress.ip_address(addr)
        cdef bytes b = a.packed
        if hp_dp_add_own(self._get(), link, a.version, b) < 0:
            raise ValueError(f"link {link}: cannot add address {addr}")

    def set_environment(self, int link, str addr):
        """The environment's own address on an ENV link (replies to it go out there)."""
        a = ipaddress.ip_address(addr)
        cdef bytes b = a.packed
        if hp_dp_set_env(self._get(), link, a.version, b) < 0:
            raise ValueError(f"link {link}: cannot set environment address {addr} (taken?)")

    def set_subnet(self, int link, str prefix, str router):
        """The ENI link's subnet (next hop = destination) and router (next hop for the rest)."""
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
        links = []
        for i, d in enumerate(self._links):
            l = hp_dp_link(dp, i)
            hp_io_ring_stats(&l.port)
            links.append(dict(d, rx_packets=l.rx_packets, rx_bytes=l.rx_bytes,
                              rx_ring_drops=l.port.rx_ring_drops,
                              rx_ring_freezes=l.port.rx_ring_freezes,
                              tx_packets=l.port.tx_packets, tx_bytes=l.port.tx_bytes,
                              tx_errors=l.port.tx_errors, arp_in=l.arp_in, arp_out=l.arp_out,
                              nd_in=l.nd_in, nd_out=l.nd_out, neighbours=l.neigh.n,
                              up=not l.down))
        return {
            "forwarded_outbound": dp.forwarded[0], "forwarded_inbound": dp.forwarded[1],
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
