"""Parsing what runs in a lab: a function's code (``runtime``, ``handler``, ``code``,
``timeout``, ``memory_size``, ``environment`` of ``[[functions]]``, with Lambda's
CreateFunction rules) and a host's service (``command`` and ``environment`` of ``[[hosts]]``
and ``[[internet_hosts]]``). The workloads service (hyperplane.workloads) runs them.

Relative paths (a function's ``code``) are taken from ``base_dir``: the config file's folder
unless the caller says otherwise (hyperplane.labconfig.loading decides it).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hyperplane.errors import LabConfigError
from hyperplane.labconfig.model import (CUSTOM_RUNTIMES, DEFAULT_CUSTOM_HANDLER,
                                        DEFAULT_MEMORY_SIZE, DEFAULT_PYTHON_HANDLER,
                                        DEFAULT_RUNTIME, DEFAULT_TIMEOUT, MAX_ENVIRONMENT_BYTES,
                                        MAX_HANDLER, MEMORY_SIZE_RANGE,
                                        RESERVED_ENVIRONMENT_KEYS, TIMEOUT_RANGE, Environment)
from hyperplane.labconfig.fields import Key
from hyperplane.labconfig.parse_common import expect, string_list, type_name
from hyperplane.labconfig.problems import group, soft

#: python3.N: a lab runs it with the machine's python3.
PYTHON_RUNTIME = re.compile(r"^python3\.\d{1,2}$")
#: Lambda's environment variable names: [a-zA-Z]([a-zA-Z0-9_])+ (two characters at least).
ENV_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]+$")

#: The keys a [[functions]] table has for its code (parse_functions adds them to its own).
FUNCTION_CODE_KEYS = (
    Key("runtime", "string", "provided.al2023 / provided.al2 (runs the executable `bootstrap` "
        "of the code folder) or python3.N; default: the python3.N that reads the file",
        pattern="^(?:" + "|".join(r.replace(".", r"\.") for r in CUSTOM_RUNTIMES) + "|"
        + PYTHON_RUNTIME.pattern.strip("^$") + ")$"),
    Key("handler", "string", "FILE.FUNCTION for python3.N (default "
        f"{DEFAULT_PYTHON_HANDLER}); passed to a custom runtime as _HANDLER (default "
        f"{DEFAULT_CUSTOM_HANDLER}); no whitespace, at most {MAX_HANDLER} characters",
        pattern=r"^\S+$"),
    Key("code", "string", "the folder holding the code (relative paths are taken from the "
        "lab file's folder); absent: the built-in hello-world handler"),
    Key("timeout", "integer", "seconds an invocation may run", default=DEFAULT_TIMEOUT,
        minimum=TIMEOUT_RANGE[0], maximum=TIMEOUT_RANGE[1]),
    Key("memory_size", "integer", "MB (shown in the logs; not enforced)",
        default=DEFAULT_MEMORY_SIZE, minimum=MEMORY_SIZE_RANGE[0],
        maximum=MEMORY_SIZE_RANGE[1]),
    Key("environment", "map", "environment variables (strings); Lambda's reserved keys are "
        f"refused, {MAX_ENVIRONMENT_BYTES} bytes in all", values="string",
        pattern=ENV_KEY.pattern),
)
#: The keys a host table has for its service.
HOST_COMMAND_KEYS = (
    Key("command", ("string", "array"), "a service the lab runs in the host from `lab up` to "
        "`lab down`: a string (run by /bin/sh -c) or an array (the program and its arguments)",
        items="string"),
    Key("environment", "map", "environment variables of the command (strings)",
        values="string", pattern=ENV_KEY.pattern),
)
_ENV_EXAMPLE = 'environment = { DB_HOST = "198.18.1.5" }'


def parse_function_code(t: Dict[str, Any], f: str, base_dir: str) -> Dict[str, Any]:
    """The code fields of function table ``t`` (field path ``f``) as keyword arguments of
    :class:`~hyperplane.labconfig.model.Function`, defaults filled in."""
    with group():
        with soft():
            runtime = _runtime(t.get("runtime", DEFAULT_RUNTIME), f"{f}.runtime")
            custom = runtime in CUSTOM_RUNTIMES
            handler = _handler(t.get("handler", DEFAULT_CUSTOM_HANDLER if custom
                                     else DEFAULT_PYTHON_HANDLER), f"{f}.handler",
                               python=not custom)
        code = None
        with soft():
            if "code" in t:
                code = code_folder(t["code"], f"{f}.code", base_dir)
        with soft():
            lo, hi = TIMEOUT_RANGE
            timeout = _bounded(t.get("timeout", DEFAULT_TIMEOUT), f"{f}.timeout", lo, hi,
                               "seconds", DEFAULT_TIMEOUT)
        with soft():
            lo, hi = MEMORY_SIZE_RANGE
            memory = _bounded(t.get("memory_size", DEFAULT_MEMORY_SIZE), f"{f}.memory_size", lo,
                              hi, "MB", DEFAULT_MEMORY_SIZE)
        with soft():
            env = environment(t.get("environment", {}), f"{f}.environment",
                              reserved=RESERVED_ENVIRONMENT_KEYS,
                              max_bytes=MAX_ENVIRONMENT_BYTES)
    if code is None and custom:
        raise LabConfigError(f"{f}.code", f"missing; runtime {runtime!r} is a custom runtime, "
                             "and a custom runtime needs code = a folder holding an executable "
                             '`bootstrap` (e.g. code = "fn", taken from the config file\'s '
                             "folder), or use a python3.N runtime to get the built-in "
                             "hello-world handler")
    return {"runtime": runtime, "handler": handler, "code": code, "timeout": timeout,
            "memory_size": memory, "environment": env}


def _runtime(value: Any, field: str) -> str:
    hint = ('use provided.al2023 (a `bootstrap` in the code folder) or python3.N '
            '(e.g. python3.11)')
    expect(value, str, field, hint)
    if value in CUSTOM_RUNTIMES or PYTHON_RUNTIME.match(value):
        return value
    raise LabConfigError(field, f"{value!r} is not a runtime this lab runs; {hint}")


def _handler(value: Any, field: str, python: bool) -> str:
    example = DEFAULT_PYTHON_HANDLER if python else DEFAULT_CUSTOM_HANDLER
    expect(value, str, field, f'like "{example}"')
    if not value:
        raise LabConfigError(field, f'empty; write the handler, like "{example}", or leave the '
                             f'key out for that default')
    if re.search(r"\s", value):
        raise LabConfigError(field, f"{value!r} contains whitespace; Lambda's handler matches "
                             rf"[^\s]+, write it without spaces, like {example}")
    if len(value) > MAX_HANDLER:
        raise LabConfigError(field, f"{len(value)} characters; Lambda allows at most "
                             f"{MAX_HANDLER}, shorten it")
    if python:
        module, dot, function = value.rpartition(".")
        if not (dot and module and function):
            raise LabConfigError(field, f"{value!r} does not name a function in a module; "
                                 "write it as FILE.FUNCTION, e.g. lambda_function.lambda_handler "
                                 "(function lambda_handler of lambda_function.py in the code "
                                 'folder; a package\'s module is "pkg.mod.fn" or '
                                 '"app/handlers.main")')
    return value


def code_folder(value: Any, field: str, base_dir: str) -> str:
    """A folder given relative to ``base_dir`` (or absolute) that exists: its absolute path."""
    expect(value, str, field, 'write a folder, like "fn" (taken from the config file\'s folder) '
           "or an absolute path")
    if not value:
        raise LabConfigError(field, 'empty; write the folder holding the code, like "fn", or '
                             'leave the key out for the built-in hello-world handler')
    path = os.path.abspath(os.path.join(base_dir, value))
    where = ("" if os.path.isabs(value) else
             f" (relative paths are taken from the config file's folder, {base_dir})")
    if not os.path.exists(path):
        raise LabConfigError(field, f"{path} does not exist{where}; create the folder or fix "
                             "the path")
    if not os.path.isdir(path):
        raise LabConfigError(field, f"{path} is not a folder{where}; put the code in a folder "
                             "and name the folder here")
    return path


def _bounded(value: Any, field: str, lo: int, hi: int, unit: str, default: int) -> int:
    fix = f"use a whole number of {unit} from {lo} to {hi} (default {default})"
    expect(value, int, field, fix)
    if not lo <= value <= hi:
        raise LabConfigError(field, f"{value} is outside Lambda's range {lo}..{hi} {unit}; "
                             + fix)
    return value


def environment(value: Any, field: str, reserved: Sequence[str] = (),
                max_bytes: Optional[int] = None) -> Environment:
    """A table of environment variables: Lambda's key rule, string values, none of
    ``reserved``, and (``max_bytes``) Lambda's 4 KB for the keys and values together
    (counted in UTF-8 bytes)."""
    expect(value, dict, field, f"write it as a table, like {_ENV_EXAMPLE}")
    used = [k for k in value if k in reserved]   # before the pattern, which _HANDLER fails
    if used:
        raise LabConfigError(field, "InvalidParameterValueException: Lambda was unable to "
                             "configure your environment variables because the environment "
                             "variables you have provided contains reserved keys that are "
                             "currently not supported for modification. Reserved keys used in "
                             f"this request: {', '.join(used)}; remove them (Lambda sets them "
                             "in every execution environment itself)")
    pairs: List[Tuple[str, str]] = []
    for key, v in value.items():
        if not ENV_KEY.match(key):
            raise LabConfigError(field, f"{key!r} is not a valid variable name: a name starts "
                                 "with a letter, followed by one or more letters, digits or "
                                 "'_' (Lambda's pattern [a-zA-Z]([a-zA-Z0-9_])+); rename it")
        if not isinstance(v, str):
            fix = (f'quote it: {key} = "{str(v).lower() if isinstance(v, bool) else v}"'
                   if isinstance(v, (bool, int, float))
                   else f'write one string, like {key} = "..."')
            raise LabConfigError(f"{field}.{key}", f"must be a string, not {type_name(v)} "
                                 f"({v!r}); environment variables are strings, {fix}")
        pairs.append((key, v))
    if max_bytes is not None:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in pairs)
        if size > max_bytes:
            raise LabConfigError(field, "InvalidParameterValueException: Lambda was unable to "
                                 "configure your environment variables because the "
                                 "environment variables you have provided exceeded the 4KB "
                                 f"limit. String measured: {size} bytes of keys and values "
                                 f"(at most {max_bytes}); shorten or remove some (a large "
                                 "value belongs in a file in the code folder)")
    return tuple(pairs)


def host_command(t: Dict[str, Any], f: str) -> Tuple[Optional[Tuple[str, ...]], Environment]:
    """``command`` (a string run by /bin/sh -c, or an argv array) and its ``environment`` of
    host table ``t`` (field path ``f``): (argv or None, environment)."""
    example = 'command = "python3 -m http.server 8080"'
    command = None
    if "command" in t:
        v, cf = t["command"], f"{f}.command"
        if isinstance(v, str):
            if not v.strip():
                raise LabConfigError(cf, f"empty; write the service to start, like {example}, "
                                     "or leave the key out")
            command = ("/bin/sh", "-c", v)
        elif isinstance(v, list):
            argv = string_list(v, cf, '["python3", "-m", "http.server", "8080"]')
            if not argv:
                raise LabConfigError(cf, 'empty array; list the program and its arguments, like '
                                     '["python3", "-m", "http.server", "8080"], or leave the '
                                     "key out")
            if not argv[0]:
                raise LabConfigError(f"{cf}[0]", "empty; the first item is the program to run")
            command = tuple(argv)
        else:
            raise LabConfigError(cf, f"must be a string (run by /bin/sh -c) or an array of "
                                 f"strings (the program and its arguments), not {type_name(v)} "
                                 f"({v!r}); write it like {example}")
    env: Environment = ()
    if "environment" in t:
        env = environment(t["environment"], f"{f}.environment")
        if command is None:
            raise LabConfigError(f"{f}.environment", "is for the host's command, and the host "
                                 f"has none; add one ({example}) or remove environment")
    return command, env
