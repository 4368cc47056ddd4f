"""Invoking a lab's functions and reading their logs: the library under ``hyperplane function
invoke|logs|environments`` and :meth:`hyperplane.Lab.invoke`.

An invocation goes to the lab's workloads service (hyperplane.workloads.service), which asks
the data path's control plane whether the function may run (Pending and Inactive refuse, with
AWS's exceptions) and runs it in an idle execution environment. What comes back is what
``aws lambda invoke`` gives: the metadata it prints (``StatusCode``, ``ExecutedVersion``, and
``FunctionError``/``LogResult`` when they apply) and the response payload it writes to its
output file.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from hyperplane import paths
from hyperplane.errors import EXIT_NOT_FOUND, EXIT_USAGE, HyperplaneError
from hyperplane.lab import lifecycle
from hyperplane.labconfig import FunctionPlan
from hyperplane.workloads import logs as fnlogs
from hyperplane.workloads.environment import INIT_TIMEOUT

Payload = Union[None, str, bytes, Dict[str, Any], List[Any], int, float, bool]
#: Seconds beyond the function's timeout and its init that an invoke waits for the service.
INVOKE_MARGIN = 15.0


def payload_text(payload: Payload) -> Optional[str]:
    """The invocation's payload as JSON text: str and bytes as they are (they must be JSON,
    which the service checks), anything else through json.dumps; None is an empty event."""
    if payload is None:
        return None
    if isinstance(payload, bytes):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise HyperplaneError("the payload is not UTF-8 text; Lambda takes a JSON "
                                  "document", EXIT_USAGE) from None
    if isinstance(payload, str):
        return payload
    try:
        return json.dumps(payload)
    except (TypeError, ValueError) as e:
        raise HyperplaneError(f"the payload cannot be written as JSON: {e}", EXIT_USAGE) \
            from None


def invoke(lab: str, function: str, payload: Payload = None,
           log_type: str = "None") -> Tuple[Dict[str, Any], bytes]:
    """Invoke ``function`` synchronously (RequestResponse): (metadata, response payload)."""
    fn = _function(lab, function)
    if log_type not in ("None", "Tail"):
        raise HyperplaneError(f"--log-type {log_type!r}: use None or Tail", EXIT_USAGE)
    timeout = float(fn.timeout) + INIT_TIMEOUT + INVOKE_MARGIN
    r = lifecycle.workloads_request(lab, "invoke", timeout, name=function,
                                    payload=payload_text(payload), log_type=log_type)
    return r["metadata"], base64.b64decode(r["payload_b64"])


def update_code(lab: str, function: str, code: Optional[str] = None) -> Dict[str, Any]:
    """UpdateFunctionCode: deploy the folder ``code`` (None: the function's configured
    ``code`` folder, read again) as the function's code. The next invocations run it, each
    environment starting cold (one busy now finishes on the old code). Returns FunctionName,
    CodeSha256, CodeSize, LastModified, Revision and Source."""
    _function(lab, function)
    if code is not None:
        code = os.path.abspath(code)
        if not os.path.isdir(code):
            raise HyperplaneError(f"--code {code}: no such folder", EXIT_USAGE)
    return lifecycle.workloads_request(lab, "update_code", 60.0, name=function,
                                       code=code)["function"]


def environments(lab: str) -> List[Dict[str, Any]]:
    """Each execution environment: its function, state (cold, warm, busy), runtime pid,
    invocations and cold starts so far, current log stream, last error."""
    return lifecycle.workloads_request(lab, "environments")["environments"]


def host_services(lab: str) -> List[Dict[str, Any]]:
    """Each host's ``command``: pid, running, restarts, last exit status, log."""
    return lifecycle.workloads_request(lab, "hosts")["hosts"]


def _function(lab: str, function: str) -> FunctionPlan:
    """The lab's function ``function``; HyperplaneError (exit status 3) naming the others."""
    _, plan = lifecycle.load_lab(lab)
    try:
        return plan.function(function)
    except KeyError:
        raise HyperplaneError(f"ResourceNotFoundException: Function not found: {function!r} "
                              f"is not a function of lab {lab!r} (functions: "
                              f"{', '.join(f.name for f in plan.functions) or 'none'})",
                              EXIT_NOT_FOUND) from None


def logs(lab: str, function: str) -> List[Dict[str, str]]:
    """The function's log events so far (``timestamp``, ``stream``, ``environment``,
    ``message``), oldest first."""
    _function(lab, function)
    return fnlogs.read_events(paths.functions_dir(lab), function)


def follow_logs(lab: str, function: str, from_start: bool = True
                ) -> Iterator[Dict[str, str]]:
    """The function's log events as they are written (``function logs --follow``): the ones
    there already first (``from_start``), then each new one; never ends by itself."""
    _function(lab, function)
    return fnlogs.follow_events(paths.functions_dir(lab), function, from_start=from_start)


def format_event(e: Dict[str, str]) -> str:
    """One event as ``aws logs tail`` prints it: time, stream, message."""
    return f"{e['timestamp']} {e['stream']} {e['message']}"
