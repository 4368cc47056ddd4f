"""Reading a lab's VPC Flow Log files, once or following them like ``tail -f``
(hyperplane.datapath.flowlogs writes them; ``hyperplane flowlogs`` prints what this reads)."""
from __future__ import annotations

import glob
import os
from typing import Dict, Iterable, List, Optional, Tuple

from hyperplane.datapath.flowlogs import Record


# ---- reading -------------------------------------------------------------------------------------
def read_records(directory: str) -> List[Record]:
    """Every record of every ``*.log`` file in ``directory``, sorted by start time (then by
    interface, keeping each file's order within an interval). A last line without its newline
    is still being written and is left out."""
    return Tail(directory).new()


class Tail:
    """Follow the flow log files of a directory like ``tail -f``: each call to ``new()``
    returns the records appended since the last call (files that appear are read from their
    start), sorted by start time."""

    def __init__(self, directory: str):
        self.directory = directory
        self._pos: Dict[str, int] = {}

    def new(self) -> List[Record]:
        got: List[Tuple[int, str, int, Record]] = []
        for path in sorted(glob.glob(os.path.join(self.directory, "*.log"))):
            pos = self._pos.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
            except OSError:
                continue
            done = data.rfind(b"\n") + 1          # whole lines only
            self._pos[path] = pos + done
            for i, line in enumerate(data[:done].decode("ascii", "replace").splitlines()):
                try:
                    r = Record.parse(line)
                except ValueError:
                    continue
                got.append((r.start, r.interface_id, i, r))
        got.sort(key=lambda t: t[:3])
        return [t[3] for t in got]


def select(records: Iterable[Record], eni: Optional[str], action: Optional[str]) \
        -> List[Record]:
    return [r for r in records
            if (eni is None or r.interface_id == eni) and (action is None or r.action == action)]
