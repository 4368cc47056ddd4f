"""The control plane's effects on the data path.

The VPC control plane (hyperplane.vpc.ControlPlane) decides when ENIs become available, retire
or go away and which key each environment uses; the Daemon is its ``effects`` (the
hyperplane.vpc.Effects protocol, which says what each call means) and turns those decisions into
DataPath and Engine calls, here. The control plane runs in the loop's thread (the tick and the
control requests), so these do too.
"""
from __future__ import annotations

import logging

from hyperplane import topology
from hyperplane.engine.config import Eni
from hyperplane.labconfig import lab_mac

log = logging.getLogger("hyperplane.datapath")


class ControlPlaneEffects:
    """The Daemon's side of hyperplane.vpc.Effects (a mixin of
    hyperplane.datapath.daemon.Daemon): it changes the ENI keys (``keys``, building a new key's
    engine and link with ``_add_key``) and the environment links (``env_links``) on ``dp``."""

    def eni_active(self, eni) -> None:
        kg = self.keys.get(tuple(eni.key))
        if kg is None:
            i = len(self.keys)
            ifname = f"eni{i}"
            while any(k.ifname == ifname for k in self.keys.values()):
                i += 1
                ifname = f"eni{i}"
            mac = lab_mac(self.plan.name, "eni", i, self._macs)
            topology.add_eni_link(self.plan, eni.subnet, ifname, mac)
            kg = self._add_key(tuple(eni.key), ifname, mac, eni=eni)
        if eni.id in kg.index:
            kg.engine.set_eni_enabled(kg.index[eni.id], True)
        else:
            kg.engine.add_eni(Eni(eni.id, ipv4=eni.ipv4, ipv6=eni.ipv6))
            kg.index[eni.id] = len(kg.engine.enis) - 1
        addrs = [a for a in (eni.ipv4, eni.ipv6) if a]
        for a in addrs:
            self.dp.add_address(kg.link, a)
        kg.addresses[eni.id] = addrs
        log.info("ENI %s available: %s on %s", eni.id, " ".join(addrs), kg.ifname)

    def eni_retired(self, eni) -> None:
        kg = self.keys.get(tuple(eni.key))
        if kg is not None and eni.id in kg.index:
            kg.engine.set_eni_enabled(kg.index[eni.id], False)

    def eni_deleted(self, eni) -> None:
        kg = self.keys.get(tuple(eni.key))
        if kg is None or eni.id not in kg.index:
            return
        kg.engine.set_eni_enabled(kg.index[eni.id], False)
        for a in kg.addresses.pop(eni.id, []):
            self.dp.remove_address(kg.link, a)
        log.info("ENI %s deleted", eni.id)

    def env_state(self, env: str, state: str, key) -> None:
        li = self.env_links.get(env)
        if li is None:
            return
        if state == "active" and key is not None:
            self.dp.set_link_group(li, self.keys[tuple(key)].group)
        self.dp.set_link_state(li, state)

    def env_ipv6(self, env: str, allowed: bool) -> None:
        li = self.env_links.get(env)
        if li is not None:
            self.dp.set_link_ipv6(li, allowed)
