"""Parsing the settings that shape the running lab rather than its network:
``[lifecycle]`` (ENI delays and scale-out), ``[flow_logs]`` and ``[datapath]`` (placement, CPUs,
workers, rings).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Tuple, Union

from hyperplane.engine.constants import RING_FRAMES_MAX, RING_FRAMES_MIN, RING_FRAMES_STEP
from hyperplane.errors import LabConfigError
from hyperplane.labconfig.flowformat import FormatError, parse_format
from hyperplane.labconfig.model import (FLOW_LOGS_AZ_ID, FLOW_LOGS_INTERVAL,
                                        FLOW_LOGS_INTERVAL_RANGE, FLOW_LOGS_REGION,
                                        LIFECYCLE_PROFILES, DatapathPlan, FlowLogsPlan,
                                        LabSettings, LifecyclePlan)
from hyperplane.labconfig.fields import Key, Table
from hyperplane.labconfig.placement import PLACEMENTS, WORKERS_MAX, check_workers
from hyperplane.labconfig.parse_common import ACCOUNT_ID, check_keys, expect
from hyperplane.labconfig.problems import group, soft


def _delay(name: str, index: int, what: str) -> Key:
    lab, aws = LIFECYCLE_PROFILES["lab"][index], LIFECYCLE_PROFILES["aws"][index]
    return Key(name, "number", f"seconds {what} (profile lab: {lab:g}, aws: {aws:g})",
               exclusive_minimum=0)


LIFECYCLE = Table("[lifecycle]", "ENI delays (a profile's, each overridable) and scale-out.", (
    Key("profile", "string", "lab (short delays) or aws (the documented ones)", default="lab",
        enum=tuple(LIFECYCLE_PROFILES)),
    _delay("eni_create_delay", 0, "from a function's VpcConfig to its ENI being up"),
    _delay("inactive_after", 1, "idle before an ENI is reclaimed"),
    _delay("eni_delete_delay", 2, "from an ENI's last user gone to its deletion"),
    Key("ports_per_eni", "integer", "connections one ENI carries", default=65000, minimum=1,
        maximum=65000),
    Key("high_water", "number", "pool fill (0.5..0.99) at which the next ENI of a key starts "
        "early; 0: only when every ENI is full, as AWS does", default=0.8, minimum=0,
        maximum=0.99),
    Key("max_enis_per_key", "integer", "ENIs per (subnet, security groups)", default=8,
        minimum=1, maximum=64),
    Key("max_connections_per_environment", "integer", "connections one execution environment "
        "may hold on its ENI at once; 0: no limit", default=0, minimum=0, maximum=1_000_000),
))
#: AWS region names ("us-east-1", "us-gov-west-1") and AZ ids ("use1-az1", "usgw1-az2").
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
_AZ_ID = re.compile(r"^[a-z]{3,8}[0-9]{1,2}-az[0-9]{1,2}$")

FLOW_LOGS = Table("[flow_logs]", "VPC Flow Logs of every ENI (default format v2), under the "
                  "lab's directory.", (
    Key("enabled", "boolean", "write flow logs", default=True),
    Key("interval", "integer", "aggregation interval in seconds (AWS offers 60 or 600)",
        default=FLOW_LOGS_INTERVAL, minimum=FLOW_LOGS_INTERVAL_RANGE[0],
        maximum=FLOW_LOGS_INTERVAL_RANGE[1]),
    Key("account_id", "string", "the records' account id (default: [lab] account_id)",
        pattern=ACCOUNT_ID.pattern),
    Key("format", "string", "a custom record format: ${field} names separated by spaces "
        "(AWS's fields of versions 2 to 5); absent or empty: the default v2 format",
        default=""),
    Key("region", "string", "the region the records name (${region})",
        default=FLOW_LOGS_REGION, pattern=_REGION.pattern),
    Key("az_id", "string", "the Availability Zone id the records name (${az-id})",
        default=FLOW_LOGS_AZ_ID, pattern=_AZ_ID.pattern),
))


def _cpus(name: str, doc: str) -> Key:
    return Key(name, "array", doc, items=Key("cpu", "integer", "a CPU number", minimum=0,
                                             maximum=1023))


DATAPATH = Table("[datapath]", "The data path process: its CPUs and its rings. Left out, "
                 "it places itself (placement = \"auto\").", (
    Key("placement", "string", "auto: the data path chooses what this table leaves out when it "
        "starts (with 2 CPUs or more: its loop on the highest CPU it may use, the inbound "
        "worker on the next, the functions' code off the loop's CPU; rings of 16384 frames); "
        "none: nothing chosen (the scheduler decides, no inbound worker, rings of 4096)",
        default="auto", enum=PLACEMENTS),
    _cpus("cpus", "CPUs the data path's loop runs on (default: the placement's choice)"),
    Key("ring_frames", "integer", f"frames (2 KiB) in each veth link's receive ring (each "
        f"worker's, with more than one worker), a "
        f"multiple of {RING_FRAMES_STEP} from {RING_FRAMES_MIN} to {RING_FRAMES_MAX}; 0 or "
        "absent: the placement's choice", default=0, minimum=0, maximum=RING_FRAMES_MAX,
        multiple_of=RING_FRAMES_STEP),
    _cpus("inbound_cpus", "CPUs of a second thread doing the VPC -> environment direction "
          "(default: the placement's choice; the loop is kept off them)"),
    Key("workers", ("integer", "string"), f"loop threads (1..{WORKERS_MAX}), each owning the "
        "ports p with (p >> 1) % workers == w of every ENI; \"auto\": 1 on fewer than 4 CPUs (the "
        "loop and the inbound worker), else half the CPUs the data path may use, at most "
        f"{WORKERS_MAX}; more than 1 replaces cpus and inbound_cpus", default=1, minimum=1,
        maximum=WORKERS_MAX, pattern="^auto$"),
    _cpus("worker_cpus", "one CPU per worker (worker 0 is the loop, which also runs the "
          "control plane; default: the placement's choice, the highest CPUs first)"),
))


def parse_lifecycle(t: Any) -> LifecyclePlan:
    """``[lifecycle]``: a profile's three delays, each overridable, and the scale-out knobs."""
    expect(t, dict, "lifecycle", "write it as a [lifecycle] table")
    check_keys(t, "lifecycle", LIFECYCLE)
    with group() as fields:
        with soft():
            profile = expect(t.get("profile", "lab"), str, "lifecycle.profile",
                             'write "lab" or "aws"')
            if profile not in LIFECYCLE_PROFILES:
                raise LabConfigError("lifecycle.profile", f"{profile!r} is not a profile; write "
                                     "\"lab\" (short delays) or \"aws\" (the documented ones)")
        delays = {}
        for i, key in enumerate(("eni_create_delay", "inactive_after", "eni_delete_delay")):
            with soft():
                fields.check()   # the defaults are the profile's
                default = LIFECYCLE_PROFILES[profile][i]
                v = t.get(key, default)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                    raise LabConfigError(f"lifecycle.{key}", f"{v!r}: write a number of seconds "
                                         f"> 0 (profile {profile!r} uses {default:g})")
                delays[key] = float(v)
        with soft():
            ports = expect(t.get("ports_per_eni", 65000), int, "lifecycle.ports_per_eni",
                           "write an integer 1..65000")
            if not 1 <= ports <= 65000:
                raise LabConfigError("lifecycle.ports_per_eni", f"{ports}: use 1..65000 (an AWS "
                                     "ENI carries up to 65,000 connections; fewer shows "
                                     "scale-out sooner)")
        with soft():
            hw = t.get("high_water", 0.8)
            if isinstance(hw, bool) or not isinstance(hw, (int, float)) or \
                    not (hw == 0 or 0.5 <= hw <= 0.99):
                raise LabConfigError("lifecycle.high_water", f"{hw!r}: write 0 (off: scale out "
                                     "only when every ENI of a key is full, as AWS does) or a "
                                     "fill level from 0.5 to 0.99 at which the next ENI is "
                                     "started early")
        with soft():
            cap = expect(t.get("max_enis_per_key", 8), int, "lifecycle.max_enis_per_key",
                         "write an integer 1..64")
            if not 1 <= cap <= 64:
                raise LabConfigError("lifecycle.max_enis_per_key", f"{cap}: use 1..64")
        with soft():
            per_env = expect(t.get("max_connections_per_environment", 0), int,
                             "lifecycle.max_connections_per_environment",
                             "write an integer >= 0 (0: no limit)")
            if not 0 <= per_env <= 1_000_000:
                raise LabConfigError("lifecycle.max_connections_per_environment",
                                     f"{per_env}: use 0 (no limit) to 1000000")
    return LifecyclePlan(profile=profile, ports_per_eni=ports, high_water=float(hw),
                         max_enis_per_key=cap, max_connections_per_environment=per_env,
                         **delays)


def parse_flow_logs(t: Any, lab: LabSettings) -> FlowLogsPlan:
    """``[flow_logs]``: on/off, the aggregation interval, the account id of the records, a
    custom record format (hyperplane.labconfig.flowformat) and the region and AZ id it names."""
    expect(t, dict, "flow_logs", "write it as a [flow_logs] table")
    check_keys(t, "flow_logs", FLOW_LOGS)
    f = "flow_logs"
    with group():   # each key's mistake is its own
        with soft():
            enabled = expect(t.get("enabled", True), bool, f"{f}.enabled", "write true or false")
        with soft():
            lo, hi = FLOW_LOGS_INTERVAL_RANGE
            interval = t.get("interval", FLOW_LOGS_INTERVAL)
            if isinstance(interval, bool) or not isinstance(interval, int) or \
                    not lo <= interval <= hi:
                raise LabConfigError(f"{f}.interval", f"{interval!r}: write a whole number of "
                                     f"seconds from {lo} to {hi} (AWS offers 60 or 600; a lab "
                                     "may use less to see records sooner)")
        with soft():
            account = t.get("account_id", lab.account_id)
            expect(account, str, f"{f}.account_id", 'write the 12 digits quoted, like '
                   '"123456789012" (leave it out to use [lab] account_id)')
            if not ACCOUNT_ID.match(account):
                raise LabConfigError(f"{f}.account_id", f"{account!r} is not an AWS account "
                                     'id; write exactly 12 digits, like "123456789012"')
        with soft():
            fmt = expect(t.get("format", ""), str, f"{f}.format", "write the fields as one "
                         'string, like "${version} ${srcaddr} ${pkt-srcaddr}"')
            try:
                parse_format(fmt)
            except FormatError as e:
                raise LabConfigError(f"{f}.format", str(e)) from None
        with soft():
            region = expect(t.get("region", FLOW_LOGS_REGION), str, f"{f}.region",
                            f'like "{FLOW_LOGS_REGION}"')
            if not _REGION.match(region):
                raise LabConfigError(f"{f}.region", f"{region!r} is not an AWS region name; "
                                     f'write one like "{FLOW_LOGS_REGION}" or "eu-west-1"')
        with soft():
            az_id = expect(t.get("az_id", FLOW_LOGS_AZ_ID), str, f"{f}.az_id",
                           f'like "{FLOW_LOGS_AZ_ID}"')
            if not _AZ_ID.match(az_id):
                raise LabConfigError(f"{f}.az_id", f"{az_id!r} is not an Availability Zone id; "
                                     f'write one like "{FLOW_LOGS_AZ_ID}" or "euw1-az2" (an AZ '
                                     'id, not a zone name like "us-east-1a")')
    return FlowLogsPlan(enabled=enabled, interval=interval, account_id=account,
                        format=" ".join(fmt.split()), region=region, az_id=az_id)


def _parse_cpu_list(t: Dict[str, Any], key: str) -> Tuple[int, ...]:
    field = f"datapath.{key}"
    cpus = t.get(key, [])
    expect(cpus, list, field, f"write a list of CPU numbers, like {key} = [1]")
    for i, c in enumerate(cpus):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 1024:
            raise LabConfigError(f"{field}[{i}]", f"{c!r}: write a CPU number from 0 "
                                 "(see `nproc` or /proc/cpuinfo)")
    if len(set(cpus)) != len(cpus):
        raise LabConfigError(field, f"{cpus!r} names a CPU twice; list each once")
    return tuple(cpus)


def parse_datapath(t: Any) -> DatapathPlan:
    """``[datapath]``: how the data path places itself (hyperplane.labconfig.placement), the
    CPUs of its loop and of its inbound worker, how many workers share the ports and their
    CPUs (hyperplane.labconfig.placement.check_workers), and its rings' depth."""
    expect(t, dict, "datapath", "write it as a [datapath] table")
    check_keys(t, "datapath", DATAPATH)
    with group():
        with soft():
            placement = t.get("placement", "auto")
            if placement not in PLACEMENTS:
                raise LabConfigError("datapath.placement", f"{placement!r}: write \"auto\" (the "
                                     "data path places what this table leaves out) or \"none\" "
                                     "(nothing placed: the scheduler decides)")
        with soft():
            frames = t.get("ring_frames", 0)
            if isinstance(frames, bool) or not isinstance(frames, int) or (frames and (
                    not RING_FRAMES_MIN <= frames <= RING_FRAMES_MAX
                    or frames % RING_FRAMES_STEP)):
                raise LabConfigError("datapath.ring_frames",
                                     f"{frames!r}: write a multiple of {RING_FRAMES_STEP} from "
                                     f"{RING_FRAMES_MIN} to {RING_FRAMES_MAX} (frames of 2 KiB "
                                     "per veth link), or leave it out for the placement's "
                                     "choice")
        with soft():
            cpus = _parse_cpu_list(t, "cpus")
        with soft():
            inbound = _parse_cpu_list(t, "inbound_cpus")
        with soft():
            workers = _parse_workers(t.get("workers", default_workers(t)))
        with soft():
            worker_cpus = _parse_cpu_list(t, "worker_cpus")
    check_workers(workers, worker_cpus, cpus, inbound)
    cpus = cpus or (worker_cpus if workers == 1 else ())   # one worker: worker_cpus is the loop's
    if inbound and (cpus or placement == "none") and not set(cpus) - set(inbound):
        # The point of the worker is a CPU of its own; an unpinned loop (or one pinned to the
        # worker's CPUs) may share that CPU with it, paying for two threads' locks and
        # wake-ups and gaining nothing. ("auto" without cpus keeps the loop off them itself.)
        raise LabConfigError("datapath.inbound_cpus",
                             f"{list(inbound)!r} needs the loop kept off those CPUs: set "
                             "datapath.cpus to CPUs outside them (like cpus = [1] with "
                             "inbound_cpus = [0]), or leave cpus out with placement = "
                             "\"auto\", or leave inbound_cpus out")
    return DatapathPlan(cpus=cpus, ring_frames=frames, inbound_cpus=inbound, placement=placement,
                        workers=workers, worker_cpus=worker_cpus)


#: The number of workers of a lab file that says nothing of its threads (no workers,
#: worker_cpus, cpus or inbound_cpus): 1, or what this variable says (a number or "auto"). It
#: runs a whole test suite, or every lab of a session, on workers without editing lab files.
WORKERS_ENV = "HYPERPLANE_WORKERS"


def default_workers(t: Dict[str, Any]) -> Union[int, str]:
    """``workers`` where the ``[datapath]`` table ``t`` does not set it (see WORKERS_ENV)."""
    v = os.environ.get(WORKERS_ENV, "")
    if not v or any(k in t for k in ("workers", "worker_cpus", "cpus", "inbound_cpus")):
        return 1
    if v == "auto":
        return v
    if not v.isdigit():
        raise LabConfigError("datapath.workers", f"{WORKERS_ENV}={v!r}: a number of workers "
                             f"(1..{WORKERS_MAX}) or \"auto\" is expected; fix or unset it")
    return int(v)


def _parse_workers(workers: Any) -> Union[int, str]:
    if workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool)
                             and 1 <= workers <= WORKERS_MAX):
        return workers
    raise LabConfigError("datapath.workers", f"{workers!r}: write a whole number from 1 to "
                         f"{WORKERS_MAX} (loop threads, each owning a slice of every ENI's "
                         "ports; 1 is one loop), or \"auto\" (chosen from the CPUs the data "
                         "path may use)")

