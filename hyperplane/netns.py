"""Network namespaces: enter one for a block of code, run a program in one, check privilege.

A network namespace is a file (``/run/netns/NAME``, the same place ``ip netns`` uses, made by
pyroute2's ``netns.create``). ``setns(2)`` moves *the calling thread* into it; sockets and TAP
devices opened there stay in that namespace after the thread moves back, which is how one
process (the data path, or a test) holds sockets in several namespaces at once::

    with netns.entered("hp-demo-host-server"):
        srv = socket.create_server(("198.18.1.5", 8000))   # lives in the host's namespace
    # back in our own namespace; srv keeps working

Python 3.11 has no ``os.setns``; this calls libc's through ctypes.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
import threading
from typing import Iterator, List, Optional, Sequence

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_lock = threading.local()


class NetnsError(RuntimeError):
    """A namespace is missing or cannot be entered."""


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def listall() -> List[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}")


def open_ns(name: str) -> int:
    """An fd for the namespace ``name`` (close it yourself)."""
    try:
        return os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name!r} does not exist") from None


def enter(name: str) -> None:
    """Move the calling thread into ``name`` for good (a daemon's start)."""
    fd = open_ns(name)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace ``name``, then move it back."""
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                   os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = open_ns(name)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def exec_in(name: str, argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` running in namespace ``name`` (``ip netns exec``
    without the mount-namespace part: /sys still shows the caller's view)."""
    enter(name)
    os.execvp(argv[0], list(argv))


def has_capability(cap: int = CAP_NET_ADMIN) -> bool:
    """True when this process holds ``cap`` in its effective set (from /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return False


def privilege_problem() -> Optional[str]:
    """None when we can build labs here, else the reason (for error messages and test skips)."""
    if not has_capability(CAP_NET_ADMIN):
        return "needs CAP_NET_ADMIN (run as root)"
    if not has_capability(CAP_SYS_ADMIN):
        return "needs CAP_SYS_ADMIN to enter network namespaces (run as root)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for TAP devices"
    return None


# ---- TAP devices ------------------------------------------------------------------------------
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
SIOCSIFTXQLEN = 0x8943


def open_tap(ifname: str, persist: Optional[bool] = None) -> int:
    """Open (creating it if needed) the TAP device ``ifname`` in the calling thread's namespace
    with a virtio-net header on every packet. ``persist=True`` keeps the device after the fd is
    closed (the lab builder makes it that way so the data path can attach later)."""
    import fcntl

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", ifname.encode(), TAP_FLAGS)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        if persist is not None:
            fcntl.ioctl(fd, TUNSETPERSIST, 1 if persist else 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def set_tx_queue_len(ifname: str, frames: int) -> None:
    """``ip link set IFNAME txqueuelen FRAMES`` in the calling thread's namespace. On a TAP it
    is how many packets wait for the reader (the kernel's tun drops the rest, counted as the
    device's TX drops): 500 by default."""
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCSIFTXQLEN, struct.pack("16si20x", ifname.encode(), frames))
