"""What a function's runtime process is, and the files it runs from.

Lambda unpacks a function's code into ``/var/task`` (LAMBDA_TASK_ROOT, read-only) and its
runtime into ``/var/runtime`` (LAMBDA_RUNTIME_DIR). Here each lab gets one folder that the
unprivileged user running the functions can read (``/tmp/hp-LAB-fn-XXXX``, made by the
workloads service and removed with it): ``task/FUNCTION/`` is a copy of the function's ``code``
folder taken when the lab starts (so editing the source afterwards changes nothing, as with a
deployed zip), ``runtime/pyruntime.py`` the project's Python runtime client.

- ``provided.al2023`` / ``provided.al2``: the runtime is the code's own ``bootstrap``
  executable (AWS's custom-runtime tutorial writes it as a shell script looping on curl).
- ``python3.N``: Debian's ``/usr/bin/python3.N`` (or another python3.N the user may run)
  running ``pyruntime.py``, or ``python3.N -m awslambdaric HANDLER`` when that interpreter can
  import awslambdaric (AWS's own runtime interface client). A function without ``code`` runs
  the Lambda console's hello-world handler.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from typing import List, Optional, Tuple

#: The Lambda console's default Python code for a new function.
DEFAULT_CODE = '''import json


def lambda_handler(event, context):
    # TODO implement
    return {
        'statusCode': 200,
        'body': json.dumps('Hello from Lambda!')
    }
'''
DEFAULT_HANDLER_FILE = "lambda_function.py"
PYRUNTIME = "pyruntime.py"
#: Lambda's quota for a function's code, unzipped (250 MB).
MAX_CODE_BYTES = 262144000


class EntrypointError(Exception):
    """The runtime cannot be started: Lambda's ``Runtime.InvalidEntrypoint``."""


def world_runnable(path: str) -> bool:
    """Whether a user who is neither owner nor group member may run ``path``: every folder on
    the way searchable by others and the file executable by others."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        d = os.path.dirname(path)
        while True:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(d)
            if parent == d:
                return True
            d = parent
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def find_python(runtime: str) -> Tuple[str, Optional[str]]:
    """(interpreter, note) for ``python3.N``: the machine's python3.N that any user may run,
    else its python3 with a note saying the version differs. EntrypointError when none."""
    version = runtime[len("python"):]
    candidates = [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}",
                  shutil.which(f"python{version}") or "", sys.executable]
    for c in candidates:
        if c and world_runnable(c) and _version_of(c) == version:
            return c, None
    for c in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if c and world_runnable(c):
            got = _version_of(c)
            if got:
                return c, (f"{runtime} is not installed here; running python{got} ({c}) "
                           f"instead")
    raise EntrypointError(f"no Python interpreter that an unprivileged user may run was found "
                          f"for {runtime}: install Debian's python3 (apt-get install python3)")


@functools.lru_cache(maxsize=None)
def _version_of(python: str) -> Optional[str]:
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def has_awslambdaric(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import awslambdaric"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def runtime_command(runtime: str, handler: str, task_root: str,
                    runtime_dir: str) -> Tuple[List[str], Optional[str]]:
    """(argv, note) of the runtime process. EntrypointError with AWS's words when it cannot
    start (a custom runtime's ``bootstrap`` missing or not executable)."""
    if runtime.startswith("provided"):
        bootstrap = os.path.join(task_root, "bootstrap")
        if not os.path.isfile(bootstrap):
            raise EntrypointError(f"Couldn't find valid bootstrap(s): [{bootstrap}]: the code "
                                  "folder of a provided.* function needs an executable file "
                                  "named bootstrap")
        if not os.stat(bootstrap).st_mode & stat.S_IXOTH:
            raise EntrypointError(f"fork/exec {bootstrap}: permission denied (make it "
                                  "executable: chmod 755 bootstrap)")
        return [bootstrap], None
    python, note = find_python(runtime)
    if has_awslambdaric(python):
        return [python, "-m", "awslambdaric", handler], note
    return [python, os.path.join(runtime_dir, PYRUNTIME)], note


def install_code(code: Optional[str], dest: str) -> None:
    """Copy a function's code folder (None: the console's default code) to ``dest``, readable
    by everyone, executables kept executable (a deployment package's permissions)."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    if code is None:
        os.makedirs(dest)
        with open(os.path.join(dest, DEFAULT_HANDLER_FILE), "w", encoding="utf-8") as f:
            f.write(DEFAULT_CODE)
    else:
        size = tree_size(code)
        if size > MAX_CODE_BYTES:
            raise EntrypointError(f"InvalidParameterValueException: Unzipped size must be "
                                  f"smaller than {MAX_CODE_BYTES} bytes: the code folder "
                                  f"{code} holds {size}; point `code` at the function's own "
                                  f"folder")
        shutil.copytree(code, dest, symlinks=False, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    open_up(dest)


def tree_size(root: str) -> int:
    """Bytes in the files under ``root``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
               for f in files if os.path.isfile(os.path.join(d, f)))


def code_sha256(root: str) -> str:
    """A fingerprint of deployed code (Lambda's CodeSha256 is the base64 SHA-256 of the zip;
    here of the files' relative paths and contents, in sorted order)."""
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, root).encode() + b"\0")
            with open(p, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return base64.b64encode(h.digest()).decode()


def open_up(root: str) -> None:
    """Folders 0755, files 0644 (0755 when executable by their owner)."""
    os.chmod(root, 0o755)
    for d, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o755)
        for name in files:
            p = os.path.join(d, name)
            mode = os.stat(p).st_mode
            os.chmod(p, 0o755 if mode & stat.S_IXUSR else 0o644)


def install_runtime(runtime_dir: str) -> None:
    """Put the Python runtime client where the function's user can read it."""
    os.makedirs(runtime_dir, exist_ok=True)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), PYRUNTIME)
    shutil.copyfile(src, os.path.join(runtime_dir, PYRUNTIME))
    open_up(runtime_dir)
