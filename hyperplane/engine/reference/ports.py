"""Port allocation, mirrored in csrc/hp_ports.c (the pool) and csrc/hp_rand.h (SplitMix64): one
pool of free ports per (ENI, address family, protocol), handed out in a seeded random order
(RFC 6056), a freed port queued at the back."""
from __future__ import annotations

import collections
import itertools
from typing import Dict, Iterator, List, Tuple

from hyperplane.engine.constants import IPPROTO_UDP
from hyperplane.engine.types import slice_ports

PORT_PROBES = 8           # candidate ports tried per ENI on a reply-tuple collision
_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def splitmix64(state: int) -> Tuple[int, int]:
    """One step of SplitMix64: returns (new state, output). Seeds the port permutations."""
    state = (state + _GOLDEN) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def port_permutation(seed: int, eni_index: int, family: int, proto: int,
                     port_min: int, port_max: int, port_slice: Tuple[int, int] = (0, 1)
                     ) -> List[int]:
    """The order in which a pool hands out ports: a seeded Fisher-Yates shuffle of the range,
    or of one slice of it (``port_slice`` = (index, count): the ports port_owner(p, count) == index, a data
    path worker's share; (0, 1), the whole range, gives the order it always gave).

    RFC 6056 3.3.1 ("simple port randomization") picks each port at random; a permutation gives
    the same unpredictability and, with freed ports queued at the back, also delays reuse
    (RFC 6056 3.1)."""
    pool_no = 1 + eni_index * 4 + (2 if family == 6 else 0) + (1 if proto == IPPROTO_UDP else 0)
    state = (seed ^ ((_GOLDEN * pool_no) & _M64)) & _M64
    perm = list(slice_ports(port_min, port_max, *port_slice))
    for i in range(len(perm) - 1, 0, -1):
        state, r = splitmix64(state)
        j = r % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


# --------------------------------------------------------------------------------------------
# Port pool: one per (ENI address, protocol)
# --------------------------------------------------------------------------------------------
class PortPool:
    """Free ports in FIFO order; O(1) take-specific, take-first and free.

    ``free`` is an ordered dict used as a doubly linked list: the initial order is the seeded
    permutation, a freed port goes to the back, so it is handed out only after every port that
    was free before it. ``freed_at`` remembers when a port was last freed, so that keeping an
    environment's source port does not reuse a port within ``port_reuse_delay``.
    """

    def __init__(self, ports: List[int], reuse_delay: float):
        self.free: "collections.OrderedDict[int, None]" = collections.OrderedDict.fromkeys(ports)
        self.freed_at: Dict[int, float] = {}
        self.size = len(ports)
        self.reuse_delay = reuse_delay

    @property
    def used(self) -> int:
        return self.size - len(self.free)

    def candidates(self, preferred: int, now: float) -> Iterator[int]:
        """Ports to try, best first: the preferred one if reusable (and in this pool's slice:
        only its ports are ever free here), then the FIFO head onward."""
        if preferred in self.free:
            t = self.freed_at.get(preferred)
            if t is None or t + self.reuse_delay <= now:
                yield preferred
        yield from itertools.islice(iter(self.free), PORT_PROBES)

    def take(self, port: int) -> None:
        del self.free[port]

    def release(self, port: int, now: float) -> None:
        self.free[port] = None
        self.freed_at[port] = now
