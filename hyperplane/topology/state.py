"""A lab's state on disk: ``run_dir()/NAME/state.json`` (read, written atomically, listed), and
the check that the lab's directory is root's alone before anything is built there."""
from __future__ import annotations

import contextlib
import json
import os
import stat
from typing import Any, Dict, List, Optional

from hyperplane.errors import LabError
from hyperplane.paths import STATE_FILE, lab_dir, run_dir, state_path


def load_state(name: str) -> Optional[Dict[str, Any]]:
    """The lab's state, or None when there is no lab of that name."""
    path = state_path(name)
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read {path}: {e}; the lab's namespaces are named "
                       f"hp-{name}-*; if you remove the file, remove those by hand") from None


def save_state(name: str, state: Dict[str, Any], create: bool = False) -> None:
    """Write the state atomically (temp file + rename): a reader never sees half a file.

    ``create=True`` claims the name: the file is linked into place only if none exists
    (FileExistsError otherwise), so two concurrent builds of one lab cannot both proceed."""
    d = lab_dir(name)
    os.makedirs(d, mode=0o755, exist_ok=True)
    path = os.path.join(d, STATE_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if create:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def list_labs() -> List[str]:
    """Names of the labs that have a state file."""
    try:
        names = os.listdir(run_dir())
    except FileNotFoundError:
        return []
    return sorted(n for n in names
                  if os.path.isfile(os.path.join(run_dir(), n, STATE_FILE)))


def check_lab_dir(name: str) -> None:
    """Refuse a lab directory that another user could have prepared: it (and the run
    directory above it) must belong to us or root, and nobody else may write to it. The
    control socket and state file live there, and root's CLI trusts both. A directory left
    over with files in it but no state file is refused too, so that a rollback, which removes
    the lab's directory, only ever removes what its own run put there."""
    rd, d = run_dir(), lab_dir(name)
    os.makedirs(rd, mode=0o755, exist_ok=True)
    for path, what in ((rd, "run directory"), (d, "lab directory")):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise LabError(f"{what} {path} is not a directory; remove it")
        if st.st_uid not in (0, os.geteuid()):
            raise LabError(f"{what} {path} belongs to uid {st.st_uid}, not root: another user "
                           "could replace the lab's control socket there; remove it or set "
                           "HYPERPLANE_RUN_DIR to a directory only root can write")
        others_write = st.st_mode & 0o022
        if others_write and not (path == rd and st.st_mode & stat.S_ISVTX):
            raise LabError(f"{what} {path} is writable by other users (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}); `chmod go-w {path}` or set "
                           "HYPERPLANE_RUN_DIR to a directory only root can write")
    if os.path.isdir(d) and os.listdir(d):
        raise LabError(f"{d} exists with files in it ({', '.join(sorted(os.listdir(d))[:5])}) "
                       f"but lab {name!r} has no state file: left over from an earlier lab? "
                       "Remove the directory, or pick another lab name")
