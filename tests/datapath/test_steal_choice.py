"""hyperplane.datapath.steal picks its mechanism: the matchall classifier with a gact drop
action where the kernel has them, else the eBPF drop program; both refused is the clear error
it always was. Against a stand-in for the rtnetlink socket (no privilege needed); the lab test
(tests/datapath/test_datapath_lab.py) proves the node's stack sees nothing with whichever
mechanism this kernel takes."""
from __future__ import annotations

import errno
import os
from typing import List, Optional

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from hyperplane.datapath import steal


class FakeIPRoute:
    """Records tc requests; ``refuse`` maps a filter kind to the errno the kernel answers."""

    def __init__(self, refuse: Optional[dict] = None):
        self.refuse = refuse or {}
        self.calls: List[tuple] = []

    def link_lookup(self, ifname):
        return [7] if ifname == "veth0" else []

    def get_filters(self, index, parent):
        return []

    def tc(self, command, kind, index, **kw):
        self.calls.append((command, kind, index, kw))
        if kind in self.refuse and command in ("add-filter", "replace-filter"):
            raise NetlinkError(self.refuse[kind])


@pytest.fixture
def program_fd(monkeypatch):
    fds = []

    def load():
        fds.append(os.open(os.devnull, os.O_RDONLY))
        return fds[-1]
    monkeypatch.setattr(steal, "load_drop_program", load)
    return fds


def test_matchall_is_used_where_the_kernel_has_it(program_fd):
    ipr = FakeIPRoute()
    assert steal.steal("veth0", ipr) == "matchall"
    filt = [c for c in ipr.calls if c[0] == "add-filter"]
    assert filt and filt[0][1] == "matchall"
    assert filt[0][3]["action"] == {"kind": "gact", "action": "drop"}
    assert filt[0][3]["parent"] == steal.INGRESS_PARENT
    assert not program_fd, "no eBPF program is loaded when matchall works"


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EOPNOTSUPP],
                         ids=["classifier-or-action-not-found", "not-supported"])
def test_matchall_refused_falls_back_to_the_ebpf_program(program_fd, code):
    ipr = FakeIPRoute(refuse={"matchall": code})
    assert steal.steal("veth0", ipr) == "bpf"
    bpf = [c for c in ipr.calls if c[1] == "bpf"]
    assert bpf and bpf[0][3]["fd"] == program_fd[0] and bpf[0][3]["direct_action"]
    with pytest.raises(OSError):   # steal closed the program's fd once the filter held it
        os.fstat(program_fd[0])
    assert set(steal.MECHANISMS) == {"matchall", "bpf"}


def test_both_refused_is_the_clear_error(monkeypatch):
    def refused():
        raise steal.StealError("loading the eBPF drop program failed: Operation not permitted "
                               "(it needs CAP_BPF or CAP_SYS_ADMIN and a kernel with BPF)")
    monkeypatch.setattr(steal, "load_drop_program", refused)
    with pytest.raises(steal.StealError) as e:
        steal.steal("veth0", FakeIPRoute(refuse={"matchall": errno.ENOENT}))
    msg = str(e.value)
    assert "CAP_BPF" in msg and "matchall" in msg and "No such file" in msg


def test_another_matchall_error_is_not_taken_for_a_missing_module(program_fd):
    with pytest.raises(steal.StealError, match="matchall drop filter failed"):
        steal.steal("veth0", FakeIPRoute(refuse={"matchall": errno.EINVAL}))
    assert not program_fd


def test_no_such_link():
    with pytest.raises(steal.StealError, match="no link 'nope'"):
        steal.steal("nope", FakeIPRoute())
