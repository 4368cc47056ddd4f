"""Where a lab keeps its files, and the rule for lab names.

A lab named NAME lives in ``<run dir>/NAME/``; the run directory is ``$HYPERPLANE_RUN_DIR`` or
``/run/hyperplane`` (a tmpfs, so state disappears on reboot together with the namespaces it
describes). Inside:

- ``state.json``: what the lab builder made (namespaces, the plan, the data path's pid);
- ``lab.toml``: the lab's copy of its config, which the data path reads;
- ``datapath.log``: the data path's log;
- ``control.sock``: the data path's control socket (hyperplane.control speaks to it);
- ``conntrack.state``: the connection tables the data path saved, for ``lab restart``;
- ``flowlogs/``, ``captures/``: VPC Flow Log files and pcaps;
- ``workloads.sock``, ``workloads.log``: the workloads service's control socket and log
  (hyperplane.workloads: the functions' code, the hosts' services);
- ``metrics.log``, ``metrics.url``: the Prometheus exporter's log and the URL it serves
  (``[metrics]``; hyperplane.observe.exporter);
- ``functions/FUNCTION/ENV.log``: each execution environment's log (CloudWatch-shaped);
- ``hosts/HOST.log`` and ``hosts/HOST/``: a host service's output and its folder.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
from typing import List

from hyperplane.errors import LabConfigError

DEFAULT_RUN_DIR = "/run/hyperplane"
STATE_FILE = "state.json"
CONFIG_COPY = "lab.toml"
DATAPATH_LOG = "datapath.log"
CONTROL_SOCKET = "control.sock"
#: The data path's saved connection tables and control-plane state, removed with the lab.
CONNTRACK_STATE = "conntrack.state"
FLOW_LOGS_DIR = "flowlogs"
CAPTURES_DIR = "captures"
WORKLOADS_SOCKET = "workloads.sock"
WORKLOADS_LOG = "workloads.log"
METRICS_LOG = "metrics.log"
METRICS_URL = "metrics.url"
FUNCTIONS_DIR = "functions"
HOSTS_DIR = "hosts"

_LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")


def validate_lab_name(name: str) -> str:
    """Lab names become part of namespace names (``hp-NAME-node``) and of a directory name, so
    they are short, lower-case and free of path characters."""
    if not isinstance(name, str) or not _LAB_NAME.match(name):
        raise LabConfigError("name", f"invalid lab name {name!r}: use 1-20 characters from a-z, "
                             "0-9 and '-', starting with a letter or digit (e.g. 'demo')")
    return name


def run_dir() -> str:
    """Where labs keep their state: ``$HYPERPLANE_RUN_DIR`` or ``/run/hyperplane``."""
    return os.environ.get("HYPERPLANE_RUN_DIR") or DEFAULT_RUN_DIR


def lab_dir(name: str) -> str:
    return os.path.join(run_dir(), validate_lab_name(name))


def state_path(name: str) -> str:
    return os.path.join(lab_dir(name), STATE_FILE)


def config_copy_path(name: str) -> str:
    return os.path.join(lab_dir(name), CONFIG_COPY)


def log_path(name: str) -> str:
    return os.path.join(lab_dir(name), DATAPATH_LOG)


def control_path(name: str) -> str:
    return os.path.join(lab_dir(name), CONTROL_SOCKET)


def conntrack_state_path(name: str) -> str:
    return os.path.join(lab_dir(name), CONNTRACK_STATE)


def impairments_path(name: str) -> str:
    """The lab's link impairments and the backend its kernel gives (hyperplane.topology.impair)."""
    return os.path.join(lab_dir(name), "impairments.json")


def flow_logs_dir(name: str) -> str:
    return os.path.join(lab_dir(name), FLOW_LOGS_DIR)


def workloads_socket_path(name: str) -> str:
    return os.path.join(lab_dir(name), WORKLOADS_SOCKET)


def workloads_log_path(name: str) -> str:
    return os.path.join(lab_dir(name), WORKLOADS_LOG)


def metrics_log_path(name: str) -> str:
    return os.path.join(lab_dir(name), METRICS_LOG)


def metrics_url_path(name: str) -> str:
    """Where the lab's exporter writes the URL it serves once it listens (the real port when
    ``[metrics] listen`` asked for port 0)."""
    return os.path.join(lab_dir(name), METRICS_URL)


def functions_dir(name: str) -> str:
    """Where the execution environments' logs are: ``functions/FUNCTION/ENV.log``."""
    return os.path.join(lab_dir(name), FUNCTIONS_DIR)


def host_log_path(name: str, host: str) -> str:
    return os.path.join(lab_dir(name), HOSTS_DIR, f"{host}.log")


def function_code_prefix(name: str) -> str:
    """Where lab ``name``'s functions' code is deployed: folders ``<tmp>/hp-NAME-fn-XXXXXXXX``
    that the unprivileged user running the functions can read (hyperplane.workloads makes one
    and removes it; a lab's teardown removes what a killed service left)."""
    return os.path.join(tempfile.gettempdir(), f"hp-{validate_lab_name(name)}-fn-")


def function_code_dirs(name: str) -> List[str]:
    return glob.glob(glob.escape(function_code_prefix(name)) + "*")
