"""Parsing helpers the sections of the lab file share. Each takes the field path
(``functions[1].vpc_config.subnet_ids[0]``) so that its :class:`LabConfigError` names the field
and says how to fix it: types in TOML's words, known and required keys, the lab's CIDRs and
addresses (in the benchmark ranges) and the CIDRs rules and routes match (anywhere), AWS id
formats, names, and the subnet associations of network ACLs and route tables.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any, Dict, List, Sequence

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.fields import Table
from hyperplane.labconfig.model import BENCHMARK_V4, BENCHMARK_V6, IPNet
from hyperplane.labconfig.problems import problem, skip, soft, undefined

_RANGE_WHY = ("lab addresses must stay in the benchmark ranges 198.18.0.0/15 and 2001:2::/48 "
              "(RFC 2544, RFC 5180) so a lab can never collide with a real network")

SUBNET_ID = re.compile(r"^subnet-[0-9a-z-]+$")
SG_ID = re.compile(r"^sg-[0-9a-z]+$")
NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
#: AWS resource ids: a prefix and 8 (older resources) or 17 lower-case hex digits.
AWS_HEX_ID = "^{}-(?:[0-9a-f]{{8}}|[0-9a-f]{{17}})$"
VPC_ID = re.compile(AWS_HEX_ID.format("vpc"))
NAT_ID = re.compile(AWS_HEX_ID.format("nat"))
IGW_ID = re.compile(AWS_HEX_ID.format("igw"))
ACL_ID = re.compile(r"^acl-[0-9a-z-]+$")
RTB_ID = re.compile(r"^rtb-[0-9a-z-]+$")
ACCOUNT_ID = re.compile(r"^[0-9]{12}$")

_TYPE_NAMES = {str: "a string", bool: "true or false", list: "an array", dict: "a table",
               int: "an integer", float: "a number"}


def type_name(v: Any) -> str:
    """What TOML value the user wrote, in TOML's words."""
    if isinstance(v, bool):
        return "a boolean"
    for typ in (str, int, float, list, dict):
        if isinstance(v, typ):
            return _TYPE_NAMES[typ]
    return "a date/time" if v is not None else "nothing"


def expect(value: Any, typ: type, field: str, hint: str = "") -> Any:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise LabConfigError(field, f"must be {_TYPE_NAMES[typ]}, not {type_name(value)} "
                             f"({value!r}){'; ' + hint if hint else ''}")
    return value


def check_keys(table: Dict[str, Any], field: str, known: Table) -> None:
    """Every key of ``table`` is one ``known`` declares (a :class:`Table` of
    :mod:`hyperplane.labconfig.fields`, which also says which are required); every unknown and
    every missing key is a problem of its own (:mod:`hyperplane.labconfig.problems`), and a
    missing one stops the table's checks."""
    names, required = known.names, known.required
    where = (lambda k: f"{field}.{k}") if field else (lambda k: k)
    for key in table:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problem(LabConfigError(where(key), f"unknown key '{key}'; {hint}known keys: "
                                   f"{', '.join(names)}"))
    missing = [key for key in required if key not in table]
    for key in missing:
        problem(LabConfigError(where(key), f"missing; add {key} = ... under "
                               f"{'[' + field + ']' if field else 'the top level'}"))
    if missing:
        skip()


def array_of_tables(doc: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    value = doc.get(key, [])
    if isinstance(value, dict):
        raise LabConfigError(key, f"must be an array of tables: write each entry as "
                             f"[[{key}]] (double brackets), not [{key}]")
    expect(value, list, key, f"write each entry as a [[{key}]] table")
    for i, item in enumerate(value):
        expect(item, dict, f"{key}[{i}]", f"write each entry as a [[{key}]] table")
    return value


def network(value: Any, field: str, version: int) -> IPNet:
    kind = "IPv4" if version == 4 else "IPv6"
    example = "198.18.1.0/24" if version == 4 else "2001:2:0:1::/64"
    expect(value, str, field, f'write it as a quoted CIDR like "{example}"')
    if "/" not in value:
        raise LabConfigError(field, f"{value!r} has no prefix length; write an {kind} CIDR "
                             f'like "{example}"')
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise LabConfigError(field, f"{value!r} is not an {kind} CIDR; write it like "
                             f'"{example}"') from None
    if net.version != version:
        raise LabConfigError(field, f"{value!r} is an IPv{net.version} CIDR but this field "
                             f'takes {kind}, like "{example}"')
    if ipaddress.ip_interface(value).ip != net.network_address:
        raise LabConfigError(field, f"{value!r} has host bits set; the network is "
                             f'"{net}", write that')
    _check_benchmark(net, field)
    return net


def address(value: Any, field: str, version: int):
    kind = "IPv4" if version == 4 else "IPv6"
    example = "198.18.1.10" if version == 4 else "2001:2:0:1::10"
    expect(value, str, field, f'write it as a quoted address like "{example}"')
    if "/" in value:
        raise LabConfigError(field, f"{value!r}: write the address without a prefix length "
                             f'(like "{example}"); the subnet gives the prefix')
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise LabConfigError(field, f"{value!r} is not an {kind} address; write it like "
                             f'"{example}"') from None
    if addr.version != version:
        raise LabConfigError(field, f"{value!r} is an IPv{addr.version} address but this "
                             f'field takes {kind}, like "{example}"')
    _check_benchmark(ipaddress.ip_network(addr), field)
    return addr


def _check_benchmark(net: IPNet, field: str) -> None:
    bench = BENCHMARK_V4 if net.version == 4 else BENCHMARK_V6
    if not net.subnet_of(bench):
        raise LabConfigError(field, f"{net} is outside {bench}; {_RANGE_WHY}")


def range_overlap(a: IPNet, b: IPNet) -> bool:
    return a.version == b.version and a.overlaps(b)


def aws_id(value: Any, field: str, pattern, prefix: str, what: str) -> str:
    example = f"{prefix}-0a1b2c3d4e5f60718"
    expect(value, str, field, f'like "{example}"')
    if not pattern.match(value):
        raise LabConfigError(field, f"{value!r} is not {what} id; write '{prefix}-' followed "
                             f"by 8 or 17 lower-case hex digits, like {example}")
    return value


def string_list(value: Any, field: str, example: str) -> List[str]:
    expect(value, list, field, f"write it as an array like {example}")
    for j, item in enumerate(value):
        expect(item, str, f"{field}[{j}]", f"write it as an array of strings like {example}")
    return list(value)


def unique_name(value: Any, field: str, what: str, example: str, taken: List[str]) -> str:
    """A function's or host's name: it becomes part of namespace names, so it is short and
    plain, and two of a kind may not share one."""
    name = expect(value, str, field, f'like "{example}"')
    if not NAME.match(name):
        raise LabConfigError(field, f"{name!r}: a {what} name is 1-32 characters from a-z, 0-9 "
                             "and '-', starting with a letter")
    if name in taken:
        raise LabConfigError(field, f"duplicate {what} name {name!r}; give each {what} its "
                             "own name")
    return name


def did_you_mean(value: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def rule_network(value: Any, field: str) -> IPNet:
    """A rule's ``cidr``: any IPv4 or IPv6 network. It is a match, not an address the lab
    uses, so it may lie outside the benchmark ranges ("0.0.0.0/0", "::/0")."""
    expect(value, str, field, 'write it as a quoted CIDR like "0.0.0.0/0" or "198.18.2.0/24"')
    if "/" not in value:
        raise LabConfigError(field, f"{value!r} has no prefix length; write a CIDR like "
                             '"198.18.2.0/24" (one address is /32, or /128 for IPv6)')
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise LabConfigError(field, f"{value!r} is not an IPv4 or IPv6 CIDR; write it like "
                             '"198.18.2.0/24" or "::/0"') from None
    raise LabConfigError(field, f"{value!r} has host bits set; the network is \"{net}\", write "
                         "that (AWS refuses a CIDR with host bits too)")


def associations(t: Dict[str, Any], f: str, known: List[str], owner: Dict[str, str],
                 owner_id: str, what: str) -> List[str]:
    """``subnet_ids`` of a network ACL or route table: defined subnets, each associated with
    at most one ACL / one route table (``owner`` remembers which, across tables)."""
    sids = string_list(t.get("subnet_ids", []), f"{f}.subnet_ids", '["subnet-a"]')
    for j, sid in enumerate(sids):
        sf = f"{f}.subnet_ids[{j}]"
        with soft():
            if sid not in known:
                undefined("subnet", sid, LabConfigError(
                    sf, f"subnet {sid!r} is not defined{did_you_mean(sid, known)}; define it "
                    f"under [[subnets]] or use one of: {', '.join(known) or '(none defined)'}"))
            if sid in sids[:j]:
                raise LabConfigError(sf, f"subnet {sid!r} is listed twice; list each subnet "
                                     "once")
            if sid in owner:
                raise LabConfigError(sf, f"subnet {sid!r} is already associated with {what} "
                                     f"{owner[sid]!r}; a subnet has exactly one {what}, remove "
                                     "it from one of them")
            owner[sid] = owner_id
    return sids
