"""Loading small eBPF programs for tc's ``bpf`` classifier (cls_bpf, direct action) with raw
bpf(2), for kernels that lack the tc modules that would do the same job: the data path's
drop filter where there is no matchall/gact (hyperplane.datapath.steal) and the impairments
where there is no sch_netem (hyperplane.topology.impair). :func:`insn` assembles one
instruction, :func:`load_sched_cls` loads a program.

Loading needs CAP_BPF (or CAP_SYS_ADMIN), a kernel with BPF and cls_bpf, bpf(2)'s number for
the machine (:data:`SYS_BPF`) and a seccomp profile that lets the call through.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
#: bpf(2)'s number per machine (the syscall numbers differ between architectures).
SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}


class BpfLoadError(Exception):
    """The kernel (or this machine) refused the program; the message says why."""


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (struct bpf_insn: opcode, dst/src registers, offset, immediate)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def load_sched_cls(code: bytes, what: str) -> int:
    """Load ``code`` (eBPF instructions) as a tc classifier program; returns its file
    descriptor (the caller closes it: an attached filter keeps its own reference).
    BpfLoadError, with the verifier's last words, when the kernel refuses it; ``what`` names
    the program in that message."""
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfLoadError(f"bpf(2)'s system call number on {platform.machine()} is not known "
                           "here")
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size,
    # log_buf (the rest zero)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, _BPF_PROG_TYPE_SCHED_CLS, len(code) // 8,
                     ctypes.addressof(insns), ctypes.addressof(lic), 1, len(log),
                     ctypes.addressof(log))
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(_BPF_PROG_LOAD), attr,
                      ctypes.c_long(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise BpfLoadError(f"loading the eBPF {what} failed: {os.strerror(err)} (it needs "
                           "CAP_BPF or CAP_SYS_ADMIN and a kernel with BPF): "
                           f"{log.value.decode(errors='replace')[-300:]}")
    return int(fd)
