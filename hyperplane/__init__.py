"""hyperplane: a userspace connection-tracking V2N source NAT, like the network layer behind an
AWS Lambda function attached to a VPC (the "Hyperplane ENI"), with network-namespace labs to
run it in.

The public API, for your own scripts and tests:

* :class:`Lab` - bring a lab up (``with hyperplane.Lab.up() as lab: ...``), attach to a
  running one, run commands in its nodes, read its status, stats, connection table and events
  (hyperplane.lab.api);
* :class:`Engine` - the translator alone, on packet bytes: the compiled engine unless
  ``HYPERPLANE_ENGINE=reference`` selects the pure-Python reference (hyperplane.engine), with
  ``ENGINE`` saying which is in use;
* :class:`HyperplaneError` - every error a caller can act on, with the command line's words
  and exit status (hyperplane.errors).

The package is layered; each layer imports only the ones below it:

    cli/        the `hyperplane` command: one thin module per command group
    learn/      walk (in memory), demo (a real lab), the TCP state diagram
    bench/      hyperplane against the kernel's NAT: settings, labs, trials, report, hp-traffic
    lab/        a lab's lifecycle (up, restart, down, status), hyperplane.Lab, the pytest plugin
    observe/    conntrack listing and events, stats, metrics, top, flow-log reading, capture
    datapath/   the data path process: daemon, control server, state file, steal, flow logs
    topology/   the lab in network namespaces: builder, VPC fabric, NACLs, route tables, teardown
    vpc/        the Lambda/VPC control plane (ENI lifecycle, scale-out) and IAM checks
    labconfig/  the lab file: model, parsing, validation, the resolved plan
    engine/     the translator: constants, config, shared types, reference and compiled engines
    errors, paths, proc, netns, control    the bottom: errors, files, processes, namespaces,
                                           the control-socket protocol and client
"""
from __future__ import annotations

from hyperplane.engine import ENGINE, ENGINE_ENV, ENGINE_FALLBACK_REASON, Engine
from hyperplane.engine.config import ConfigError, EngineConfig, Eni, Timeouts
from hyperplane.engine.constants import (
    FLAG_CSUM_PARTIAL, Direction, DropReason, TcpState, TimeoutClass, UdpState, Verdict,
)
from hyperplane.engine.types import EntryInfo, Result, Tuple5
from hyperplane.errors import HyperplaneError, LabConfigError, LabError
from hyperplane.version import __version__


def __getattr__(name: str):
    # The lab API is loaded on first use: `import hyperplane` for the engine alone does not pull
    # in pyroute2 and the lab layers.
    if name in ("Lab", "Node"):
        from hyperplane.lab import api
        return getattr(api, name)
    raise AttributeError(f"module 'hyperplane' has no attribute {name!r}")


__all__ = [
    "ENGINE", "ENGINE_ENV", "ENGINE_FALLBACK_REASON", "ConfigError", "Direction", "DropReason",
    "Engine", "EngineConfig", "Eni", "EntryInfo", "FLAG_CSUM_PARTIAL", "HyperplaneError", "Lab",
    "LabConfigError", "LabError", "Node", "Result", "TcpState", "Timeouts", "TimeoutClass",
    "Tuple5", "UdpState", "Verdict", "__version__",
]
