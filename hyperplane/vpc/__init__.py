"""The Lambda/VPC control plane: which Hyperplane ENIs exist, when, and who uses them.

A pure, clock-driven state machine (no sockets, namespaces or clocks), in these modules:

    control_plane  ControlPlane: its theory of operation, the clock (tick), ENI lifecycle,
                   environments, Invoke and the listings; assembled from the three below
    scaleout       the next ENI of a key: high-water mark, predicted time to exhaustion
    updates        UpdateFunctionConfiguration: VpcConfig validation and the IAM check
    saved          save() and the restore after a data-path restart, with the saved
                   document's validation
    state          Key, key_of, EniState, FunctionState, PendingUpdate, the Effects the data
                   path implements, ControlPlaneError, COUNTERS
    burst          simulate_burst: a burst through a real engine on an explicit clock

The IAM policy evaluator the update check uses is :mod:`hyperplane.labconfig.iam` (the lab
file's loader checks CreateFunction with it too).
"""
from __future__ import annotations

from hyperplane.vpc.burst import simulate_burst
from hyperplane.vpc.control_plane import REGION, ControlPlane
from hyperplane.vpc.scaleout import PREDICT_HORIZON, RATE_TAU
from hyperplane.vpc.state import (COUNTERS, ControlPlaneError, Effects, EniState, FunctionState,
                                  Key, NoEffects, PendingUpdate, key_of)
from hyperplane.vpc.updates import UPDATE_ACTION

__all__ = [
    "ControlPlaneError", "Effects", "NoEffects", "Key", "EniState", "FunctionState",
    "PendingUpdate", "ControlPlane", "simulate_burst", "key_of",
    "COUNTERS", "PREDICT_HORIZON", "RATE_TAU", "REGION", "UPDATE_ACTION",
]
