"""Network ACLs as one nftables table, ``inet hyperplane``, on the fabric's forward hook: the
ruleset (:func:`nacl_ruleset`), loading it (:func:`apply_nacls`), the packets each rule matched
(:func:`nacl_counters`), and :func:`nft`, which runs the nft command inside a namespace."""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Union

from hyperplane import netns
from hyperplane.errors import LabError
from hyperplane.labconfig import NaclPlan, Plan, RulePlan


# ---- network ACLs ------------------------------------------------------------------------------
#: The nftables table (family ``inet``: IPv4 and IPv6) holding the network ACLs in the fabric.
NFT_TABLE = "hyperplane"
DIRECTIONS = ("ingress", "egress")
NACL_PROTOCOLS = ("all", "tcp", "udp", "icmp")
NACL_ACTIONS = ("allow", "deny")
#: The rule name nacl_counters() reports for an ACL's implicit last rule.
IMPLICIT_RULE = "*"


def _nacl_chain(acl_id: str, direction: str) -> str:
    return f"{acl_id}-{direction}"


def _nacl_counter(acl_id: str, direction: str, rule: Union[int, str]) -> str:
    """The named counter of one ACL rule: ``acl-x.ingress.100``; the implicit last rule is
    ``acl-x.ingress.implicit`` (nft would read a '*' in a name as a wildcard)."""
    return f"{acl_id}.{direction}.{'implicit' if rule == IMPLICIT_RULE else rule}"


def _match(left: Dict[str, Any], right: Any, op: str = "==") -> Dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Dict[str, Any]:
    return {"meta": {"key": key}}


def _rule_matches(rule: RulePlan, direction: str, where: str) -> List[Dict[str, Any]]:
    """nft match expressions for one ACL rule. An ingress rule's CIDR is the packet's source,
    an egress rule's its destination; the port range is the destination port in both
    directions (so an egress rule for 1024-65535 lets replies out to clients' ephemeral ports).
    The CIDR's family decides the rule's family."""
    try:
        net = ipaddress.ip_network(rule.cidr, strict=False)
    except ValueError:
        raise LabError(f"{where}.cidr: {rule.cidr!r} is not a CIDR") from None
    v4 = net.version == 4
    out = []
    if net.prefixlen == 0:
        out.append(_match(_meta("nfproto"), "ipv4" if v4 else "ipv6"))
    else:
        field = "saddr" if direction == "ingress" else "daddr"
        out.append(_match({"payload": {"protocol": "ip" if v4 else "ip6", "field": field}},
                          {"prefix": {"addr": str(net.network_address),
                                      "len": net.prefixlen}}))
    if rule.protocol not in NACL_PROTOCOLS:
        raise LabError(f"{where}.protocol: {rule.protocol!r} is not one of "
                       f"{', '.join(NACL_PROTOCOLS)}")
    if rule.protocol == "icmp":
        out.append(_match(_meta("l4proto"), "icmp" if v4 else "ipv6-icmp"))
    elif rule.protocol in ("tcp", "udp"):
        lo, hi = rule.from_port, rule.to_port
        if not 0 <= lo <= hi <= 65535:
            raise LabError(f"{where}: port range {lo}-{hi} is not within 0-65535 (from_port "
                           "<= to_port)")
        if (lo, hi) == (0, 65535):
            out.append(_match(_meta("l4proto"), rule.protocol))
        else:
            out.append(_match({"payload": {"protocol": rule.protocol, "field": "dport"}},
                              lo if lo == hi else {"range": [lo, hi]}))
    return out


def subnet_acls(plan: Plan) -> Dict[str, NaclPlan]:
    """subnet id -> its ACL. A subnet not listed uses the default ACL (allow all: no check)."""
    known = {s.id for s in plan.subnets}
    out: Dict[str, NaclPlan] = {}
    for i, acl in enumerate(plan.nacls):
        for j, sid in enumerate(acl.subnets):
            if sid not in known:
                raise LabError(f"nacls[{i}].subnets[{j}]: subnet {sid!r} is not in the lab "
                               f"(known: {', '.join(sorted(known))})")
            if sid in out:
                raise LabError(f"nacls[{i}].subnets[{j}]: subnet {sid!r} is already associated "
                               f"with {out[sid].id}; a subnet has exactly one network ACL")
            out[sid] = acl
    return out


def nacl_ruleset(plan: Plan) -> Dict[str, Any]:
    """The network ACLs as one nftables JSON document (``nft -j -f -`` loads it atomically,
    replacing any earlier version of the table).

    Shape (``nft list ruleset`` in the fabric shows it)::

        table inet hyperplane {
            counter acl-x.egress.100 {}  ... one per rule, and acl-x.egress.implicit
            chain forward {                     # hook forward: only routed packets
                iifname "br0" oifname != "br0" jump acl-x-egress    # leaving subnet-a
                ...                                                  # (every egress first)
                oifname "br1" iifname != "br1" jump acl-y-ingress   # entering subnet-b
            }
            chain acl-x-egress {
                ip daddr 198.18.2.0/24 tcp dport 80 counter name "acl-x.egress.100" return
                ...                                   # ascending rule number
                counter name "acl-x.egress.implicit" drop        # the implicit "*" deny
            }
        }

    AWS semantics: an ACL is checked where traffic crosses its subnet's edge, in both
    directions, per packet and without state (no ``ct`` match anywhere, so a reply is judged
    like any other packet). Rules run in ascending number and the first match decides: allow
    ``return``s to the forward chain (the next check, e.g. the destination's ingress ACL),
    deny drops. Traffic inside one subnet is bridged, never routed, so no ACL sees it (the
    ``oifname !=`` guard also keeps it out when br_netfilter pushes bridged IP through this
    hook). A subnet in no ACL uses the default ACL, which allows everything: no jump at all.
    """
    acls = subnet_acls(plan)
    table = {"family": "inet", "table": NFT_TABLE}
    cmds: List[Dict[str, Any]] = [
        # add + delete + add: one transaction that replaces the table whether it exists or not
        {"add": {"table": {"family": "inet", "name": NFT_TABLE}}},
        {"delete": {"table": {"family": "inet", "name": NFT_TABLE}}},
        {"add": {"table": {"family": "inet", "name": NFT_TABLE}}},
        {"add": {"chain": {**table, "name": "forward", "type": "filter", "hook": "forward",
                           "prio": 0, "policy": "accept"}}},
    ]
    for i, acl in enumerate(plan.nacls):
        for direction in DIRECTIONS:
            chain = _nacl_chain(acl.id, direction)
            cmds.append({"add": {"chain": {**table, "name": chain}}})
            rules = sorted(getattr(acl, direction), key=lambda r: r.number)
            numbers = [r.number for r in rules]
            if len(set(numbers)) != len(numbers):
                raise LabError(f"nacls[{i}].{direction}: rule numbers repeat ({numbers}); "
                               "every rule needs its own number")
            for j, rule in enumerate(rules):
                where = f"nacls[{i}].{direction}[rule {rule.number}]"
                if rule.action not in NACL_ACTIONS:
                    raise LabError(f"{where}.action: {rule.action!r} is not 'allow' or 'deny'")
                name = _nacl_counter(acl.id, direction, rule.number)
                cmds.append({"add": {"counter": {**table, "name": name}}})
                ports = (f" {rule.from_port}-{rule.to_port}"
                         if rule.protocol in ("tcp", "udp") else "")
                cmds.append({"add": {"rule": {
                    **table, "chain": chain,
                    "comment": f"{acl.id} {direction} {rule.number} {rule.action} "
                               f"{rule.protocol} {rule.cidr}{ports}",
                    "expr": _rule_matches(rule, direction, where) + [
                        {"counter": name},
                        {"return": None} if rule.action == "allow" else {"drop": None}]}}})
            name = _nacl_counter(acl.id, direction, IMPLICIT_RULE)
            cmds.append({"add": {"counter": {**table, "name": name}}})
            cmds.append({"add": {"rule": {
                **table, "chain": chain, "comment": f"{acl.id} {direction} * deny",
                "expr": [{"counter": name}, {"drop": None}]}}})
    for direction, dev, other in (("egress", "iifname", "oifname"),
                                  ("ingress", "oifname", "iifname")):
        for s in plan.subnets:
            acl = acls.get(s.id)
            if acl is None:
                continue
            cmds.append({"add": {"rule": {
                **table, "chain": "forward", "comment": f"{direction} {s.id} -> {acl.id}",
                "expr": [_match(_meta(dev), s.bridge), _match(_meta(other), s.bridge, "!="),
                         {"jump": {"target": _nacl_chain(acl.id, direction)}}]}}})
    return {"nftables": cmds}


def nft(ns: str, args: List[str], stdin: Optional[str] = None) -> str:
    """Run ``nft ARGS`` in namespace ``ns``: the child is forked by a thread that is inside
    ``ns``, and a child starts in its parent thread's namespace (network ACLs; the kernel mode
    of ``hyperplane bench``)."""
    exe = shutil.which("nft")
    if exe is None:
        raise LabError("this needs the nft command from nftables; install it "
                       "(Debian/Ubuntu: apt-get install nftables)")
    with netns.entered(ns):
        proc = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                              timeout=30)
    if proc.returncode != 0:
        raise LabError(f"`nft {' '.join(args)}` in {ns} failed: {proc.stderr.strip()}")
    return proc.stdout


def apply_nacls(plan: Plan) -> None:
    """Load :func:`nacl_ruleset` into the fabric in one transaction. Safe to call again on a
    running lab (new rules replace the old ones atomically; every counter starts at zero)."""
    nft(plan.fabric_ns, ["-j", "-f", "-"], json.dumps(nacl_ruleset(plan)))


def nacl_counters(plan: Plan) -> List[Dict[str, Any]]:
    """Packets and bytes each ACL rule matched, read from the fabric's nftables counters:
    one dict per rule ``{acl, direction, rule, action, packets, bytes}``, ACLs in plan order,
    ingress then egress, rules ascending and the implicit deny (``rule`` "*") last. Bytes are
    IP packet lengths (the forward hook sees no Ethernet header). Empty when there is no ACL."""
    if not plan.nacls:
        return []
    doc = json.loads(nft(plan.fabric_ns, ["-j", "list", "counters", "table", "inet",
                                          NFT_TABLE]))
    found = {c["counter"]["name"]: c["counter"] for c in doc.get("nftables", [])
             if "counter" in c}
    out = []
    for acl in plan.nacls:
        for direction in DIRECTIONS:
            rules = [(r.number, r.action) for r in sorted(getattr(acl, direction),
                                                         key=lambda r: r.number)]
            for number, action in rules + [(IMPLICIT_RULE, "deny")]:
                c = found.get(_nacl_counter(acl.id, direction, number))
                if c is None:
                    raise LabError(f"the fabric has no counter for {acl.id} {direction} rule "
                                   f"{number}: the loaded ACLs differ from the plan; reload "
                                   "them (apply_nacls)")
                out.append({"acl": acl.id, "direction": direction, "rule": number,
                            "action": action, "packets": c["packets"], "bytes": c["bytes"]})
    return out
