"""The pure-Python reference engine: the readable specification of the data path.

Read this package to learn what the compiled engine (``csrc/``) does; the two share one API and
the differential tests require identical verdicts and identical bytes from both. It is slow on
purpose-free grounds: clarity first. Never use it on a fast path.

Each module is named after the part of the C core it mirrors, so spec and C read side by side.
Start at engine.py, ``Engine._translate``: the life of a packet.

    module       holds                                                    C (csrc/)
    engine.py    Engine: its state, the control plane, the translate      hp_engine.c
                 path, new connections and port choice, state updates,
                 manip, observation
    parse.py     step 1: parse_packet, the IPv6 extension-header walk,    hp_parse.c
                 the packet an ICMP error embeds; Parsed, Frag, addr_*
    table.py     Conn; the table's clock and expiry, removal, delete,     hp_engine.c
                 flush
    events.py    the event ring (NEW/UPDATE/DESTROY/REJECT), flow         hp_engine.c
                 collection
    snapshot.py  snapshot and restore                                     hp_engine.c
    icmp.py      ICMP errors about a tracked connection (RFC 5508)        hp_engine.c
    frag.py      the fragment tracker, the later fragments' rewrite       hp_engine.c
    ports.py     PortPool, port_permutation, splitmix64                   hp_ports.c, hp_rand.h
    csum.py      fold, ones_sum, csum_delta, csum_update_full/partial     hp_csum.h

Table, events, snapshot, ICMP and fragments are parts of hp_engine.c today (each module's
docstring names its C functions). Their methods are mixins of ``Engine``: they work on the
engine's state through ``self``, as each C function takes the ``hp_engine *e``.
"""
from hyperplane.engine.reference.csum import (
    csum_delta, csum_update_full, csum_update_partial, fold, ip_header_sum_ok, ones_sum,
)
from hyperplane.engine.reference.engine import ENGINE_NAME, IN, MAX_PENDING_SIGNALS, OUT, R, Engine
from hyperplane.engine.reference.frag import FRAG_MAX, FRAG_TIMEOUT_V4, FRAG_TIMEOUT_V6
from hyperplane.engine.reference.parse import (
    ICMP_ERROR, ICMP_NO, ICMP_QUERY, LATER, MAX_EXT_HEADERS, Frag, Parsed, addr_bytes, addr_text,
    parse_packet,
)
from hyperplane.engine.reference.ports import PORT_PROBES, PortPool, port_permutation, splitmix64
from hyperplane.engine.reference.table import MAX_SOURCES, Conn

__all__ = [
    "Conn", "ENGINE_NAME", "Engine", "FRAG_MAX", "FRAG_TIMEOUT_V4", "FRAG_TIMEOUT_V6", "Frag",
    "ICMP_ERROR", "ICMP_NO", "ICMP_QUERY", "IN", "LATER", "MAX_EXT_HEADERS",
    "MAX_PENDING_SIGNALS", "MAX_SOURCES", "OUT", "PORT_PROBES", "Parsed", "PortPool", "R",
    "addr_bytes", "addr_text", "csum_delta", "csum_update_full", "csum_update_partial", "fold",
    "ip_header_sum_ok", "ones_sum", "parse_packet", "port_permutation", "splitmix64",
]
