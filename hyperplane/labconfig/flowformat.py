"""VPC Flow Logs record formats: AWS's fields of versions 2 to 5 (Amazon VPC user guide, "Flow
log records", available fields), the default format (the version-2 fields in order) and the
custom formats a lab may ask for with ``[flow_logs] format = "${version} ${srcaddr} ..."``.

:func:`parse_format` checks a format and returns its field names; :func:`version_of` is the
``version`` a record of that format carries: AWS writes "the highest version among the
specified fields" (2 for the default format). What each field holds in a lab's records, and
why, is in :mod:`hyperplane.datapath.flowlogs` and docs/flow-logs.md.

No I/O: the lab file's parser (hyperplane.labconfig.parse_runtime) and the data path's writer
share this table.
"""
from __future__ import annotations

import difflib
import re
from typing import Dict, Sequence, Tuple

#: Every field a lab writes: name -> (the version that introduced it, what it holds here).
FIELDS: Dict[str, Tuple[int, str]] = {
    "version": (2, "the highest version among the format's fields (2 for the default)"),
    "account-id": (2, "[flow_logs] account_id (default [lab] account_id)"),
    "interface-id": (2, "the ENI the traffic went through"),
    "srcaddr": (2, "traffic the ENI sent: its own address; traffic it received: the sender's"),
    "dstaddr": (2, "traffic the ENI sent: the destination; traffic it received: the ENI's"),
    "srcport": (2, "the source port as the VPC sees it (the ENI's port for what it sent)"),
    "dstport": (2, "the destination port as the VPC sees it"),
    "protocol": (2, "the IANA protocol number (6 TCP, 17 UDP)"),
    "packets": (2, "packets in the aggregation interval"),
    "bytes": (2, "bytes of those packets (whole IP packets)"),
    "start": (2, "the interval's start, Unix seconds on the lab clock"),
    "end": (2, "the interval's end, Unix seconds on the lab clock"),
    "action": (2, "ACCEPT or REJECT"),
    "log-status": (2, "OK, NODATA or SKIPDATA"),
    "vpc-id": (3, "the lab's VPC id"),
    "subnet-id": (3, "the subnet of the ENI"),
    "instance-id": (3, "always '-': a Hyperplane ENI (like a NAT gateway's) is "
                       "requester-managed, and AWS writes '-' for those"),
    "tcp-flags": (3, "FIN 1, SYN 2, RST 4, SYN-ACK 18, OR-ed over the interval (0: none)"),
    "type": (3, "IPv4 or IPv6"),
    "pkt-srcaddr": (3, "the packet-level original source: the execution environment's "
                       "address for traffic the ENI sent (before its NAT)"),
    "pkt-dstaddr": (3, "the packet-level final destination: the execution environment's "
                       "address for traffic the ENI received (after its reverse NAT)"),
    "region": (4, "[flow_logs] region"),
    "az-id": (4, "[flow_logs] az_id"),
    "sublocation-type": (4, "always '-': a lab is no Wavelength zone, Outpost or Local Zone"),
    "sublocation-id": (4, "always '-' (no sublocation)"),
    "pkt-src-aws-service": (5, "always '-': lab addresses (198.18.0.0/15, 2001:2::/48) are in "
                               "no AWS service's IP ranges"),
    "pkt-dst-aws-service": (5, "always '-' (as pkt-src-aws-service)"),
    "flow-direction": (5, "egress (the ENI sent it) or ingress (the ENI received it)"),
    "traffic-path": (5, "egress only: 1 through another resource of the VPC (a host, a NAT "
                        "gateway), 2 through an internet gateway; '-' for ingress"),
}

#: The default format: the version-2 fields, in AWS's order.
DEFAULT_FIELDS: Tuple[str, ...] = tuple(n for n, (v, _) in FIELDS.items() if v == 2)
#: Fields whose values are numbers (``-`` when a record has none).
NUMERIC = frozenset(("version", "srcport", "dstport", "protocol", "packets", "bytes", "start",
                     "end", "tcp-flags", "traffic-path"))

#: AWS fields a lab cannot fill, and why (a format naming one is refused).
UNAVAILABLE: Dict[str, str] = {
    **{f"ecs-{x}": "it describes an Amazon ECS task or cluster, and a lab runs no ECS" for x in (
        "cluster-arn", "cluster-name", "container-instance-arn", "container-instance-id",
        "container-id", "second-container-id", "service-name", "task-definition-arn",
        "task-arn", "task-id")},
    "reject-reason": "it comes after version 5 (this lab writes versions 2 to 5)",
    "resource-id": "it comes after version 5 (this lab writes versions 2 to 5)",
    "encryption-status": "it reports AWS's Nitro encryption in transit, which a lab does not "
                         "have (and it comes after version 5)",
}

_TOKEN = re.compile(r"^\$\{([^${}\s]*)\}$")


class FormatError(ValueError):
    """A flow-log format is wrong; the message says what and how to fix it."""


def default_format() -> str:
    """The default format written out: ``${version} ${account-id} ... ${log-status}``."""
    return " ".join(f"${{{n}}}" for n in DEFAULT_FIELDS)


def parse_format(text: str) -> Tuple[str, ...]:
    """The field names of a format (``"${version} ${srcaddr}"`` -> ``("version", "srcaddr")``);
    "" is the default format. FormatError for anything else, naming the problem and the fix."""
    if not isinstance(text, str):
        raise FormatError(f"must be a string of ${{field}}s, like \"{default_format()}\"")
    if not text.strip():
        return DEFAULT_FIELDS
    names = []
    for token in text.split():
        m = _TOKEN.match(token)
        if not m:
            inner = re.findall(r"\$\{([^${}\s]*)\}", token)
            if len(inner) > 1:
                spaced = " ".join("${%s}" % n for n in inner)
                hint = f'separate the fields with spaces ("{spaced}")'
            elif token in FIELDS:
                hint = f"write ${{{token}}}"
            else:
                hint = "write each field as ${name}, like ${srcaddr}"
            raise FormatError(f"{token!r} is not a field: {hint}; fields are separated by "
                              "spaces")
        name = m.group(1)
        check_field(name)
        if name in names:
            raise FormatError(f"${{{name}}} is listed twice; list each field once")
        names.append(name)
    return tuple(names)


def check_field(name: str) -> None:
    """FormatError unless ``name`` is a field a lab writes."""
    if name in FIELDS:
        return
    if name in UNAVAILABLE:
        raise FormatError(f"${{{name}}} cannot be filled in a lab: {UNAVAILABLE[name]}; "
                          "leave it out")
    close = difflib.get_close_matches(name, list(FIELDS), n=1)
    hint = f"did you mean ${{{close[0]}}}? " if close else ""
    raise FormatError(f"${{{name}}} is not a flow-log field; {hint}known fields: "
                      f"{', '.join(FIELDS)}")


def version_of(fields: Sequence[str]) -> int:
    """The version of a record of these fields: the highest among them (AWS's rule)."""
    return max((FIELDS[n][0] for n in fields), default=2)


def header_of(fields: Sequence[str]) -> str:
    """The header line of a flow-log file: the field names, separated by spaces."""
    return " ".join(fields)
