"""Completion as a shell asks for it: ``python -m hyperplane`` with argcomplete's variables
(``_ARGCOMPLETE=1``, ``COMP_LINE``, ``COMP_POINT``) and the answer written to a file
(``_ARGCOMPLETE_STDOUT_FILENAME``) instead of the shell's fd 8."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from kit import REPO


def cli_env(run_dir=None) -> Dict[str, str]:
    """This checkout's ``hyperplane`` (and ``HYPERPLANE_RUN_DIR``=``run_dir`` when given)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if run_dir is not None:
        env["HYPERPLANE_RUN_DIR"] = str(run_dir)
    return env


def complete(line: str, tmp_path, run_dir=None, point: Optional[int] = None
             ) -> Tuple[Optional[List[str]], subprocess.CompletedProcess]:
    """The completions for ``line`` with the cursor at its end (or at ``point``): a list (None
    when nothing was written), and the process, to check it did not fail."""
    out = tmp_path / "completions"
    if out.exists():
        out.unlink()
    env = cli_env(run_dir)
    env.update(_ARGCOMPLETE="1", _ARGCOMPLETE_SHELL="bash", COMP_LINE=line,
               COMP_POINT=str(len(line) if point is None else point),
               _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    p = subprocess.run([sys.executable, "-m", "hyperplane"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    words = out.read_text().split("\013") if out.exists() else None
    return ([w.strip() for w in words if w.strip()] if words is not None else None), p


def values(words: Optional[List[str]]) -> List[str]:
    """The completions that are not options."""
    return [w for w in words or [] if not w.startswith("-")]
