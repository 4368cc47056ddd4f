"""The control plane without a data path: what hyperplane.vpc.ControlPlane tells the data path,
recorded in order (vpc/test_vpc_lifecycle.py, and the control plane's save and restore in
datapath/test_restart.py)."""
from __future__ import annotations


class Recorder:
    """The data path's side: every effect, in order."""

    def __init__(self):
        self.events = []

    def eni_active(self, eni):
        self.events.append(("active", eni.id))

    def eni_retired(self, eni):
        self.events.append(("retired", eni.id))

    def eni_deleted(self, eni):
        self.events.append(("deleted", eni.id))

    def env_state(self, env, state, key):
        self.events.append(("env", env, state, key))

    def env_ipv6(self, env, allowed):
        self.events.append(("ipv6", env, allowed))

    def take(self):
        out, self.events = self.events, []
        return out

    def env_states(self):
        return [e[1:] for e in self.take() if e[0] == "env"]
