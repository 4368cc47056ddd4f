"""Imported at start-up by every Python that .ci/tsan runs (it is copied as sitecustomize.py
into a directory on their PYTHONPATH): keeps the ThreadSanitizer runtime out of the programs
they start that are not this Python.

The TSan runtime must be preloaded (LD_PRELOAD) into a process before the instrumented
extension loads, and the environment is inherited; but gcc 12's runtime crashes shells it is
preloaded into (dash and bash jump to a NULL function pointer in main, before doing anything),
and the tests and the lab start shells, ``ip`` and more. So this process, which has the
runtime already, drops LD_PRELOAD from its environment, and a child gets it back only when its
command line runs this same interpreter (the lab's data path ``python -m hyperplane run``, the
workloads and the exporter, directly or through ``ip netns exec``/``setpriv``): those import
the extension and run under TSan too, reporting into the same log directory.
"""
import os
import subprocess
import sys

_RUNTIME = os.environ.get("HP_TSAN_RUNTIME")
_PYTHON = {os.path.realpath(sys.executable)}


def _runs_python(args, executable) -> bool:
    words = [executable] if executable else []
    words += [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    for w in words:
        try:
            if os.path.realpath(os.fsdecode(w)) in _PYTHON:
                return True
        except (TypeError, ValueError):
            pass
    return False


if _RUNTIME and os.environ.get("LD_PRELOAD") == _RUNTIME:
    del os.environ["LD_PRELOAD"]
    _execute_child = subprocess.Popen._execute_child

    def _execute_child_with_tsan(self, args, executable, preexec_fn, close_fds, pass_fds, cwd,
                                 env, *rest):
        if _runs_python(args, executable):
            env = dict(os.environ if env is None else env)
            env["LD_PRELOAD"] = _RUNTIME
        return _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd,
                              env, *rest)

    subprocess.Popen._execute_child = _execute_child_with_tsan
