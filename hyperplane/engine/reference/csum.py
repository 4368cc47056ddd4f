"""The Internet checksum, mirrored in csrc/hp_csum.h: one's-complement sums (RFC 1071) and the
incremental update of a checksum from the bytes that changed (RFC 1624), for a complete
checksum and for the partial one a packet with checksum offload carries."""
from __future__ import annotations


def fold(x: int) -> int:
    """Fold a one's-complement accumulator to 16 bits."""
    while x > 0xFFFF:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def csum_delta(old: bytes, new: bytes) -> int:
    """RFC 1624: the one's-complement difference ``~m + m'`` of two equal-length byte strings."""
    acc = 0
    for i in range(0, len(old), 2):
        acc += (0xFFFF ^ ((old[i] << 8) | old[i + 1])) + ((new[i] << 8) | new[i + 1])
    return fold(acc)


def csum_update_full(csum: int, delta: int) -> int:
    """Update a complete (complemented) checksum: HC' = ~(~HC + ~m + m') (RFC 1624 eqn. 3)."""
    return 0xFFFF ^ fold((0xFFFF ^ csum) + delta)


def csum_update_partial(csum: int, delta: int) -> int:
    """Update a partial checksum: the field holds the *uncomplemented* pseudo-header sum that
    the NIC (or the kernel's GSO) completes later, so it moves by the delta, uncomplemented."""
    return fold(csum + delta)


def ip_header_sum_ok(hdr: bytes) -> bool:
    acc = 0
    for i in range(0, len(hdr), 2):
        acc += (hdr[i] << 8) | hdr[i + 1]
    return fold(acc) == 0xFFFF


def ones_sum(data: bytes) -> int:
    """The folded one's-complement sum of ``data`` (an odd last byte padded with a zero)."""
    acc = 0
    for i in range(0, len(data) - 1, 2):
        acc += (data[i] << 8) | data[i + 1]
    if len(data) % 2:
        acc += data[-1] << 8
    return fold(acc)
