"""Reading a lab's VPC Flow Log files, once or following them like ``tail -f``
(hyperplane.datapath.flowlogs writes them; ``hyperplane flowlogs`` prints what this reads)."""
from __future__ import annotations

import glob
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from hyperplane.datapath.flowlogs import CustomRecord, Record, line_parser

#: What a flow log file holds: default-format records, or records of a custom format.
AnyRecord = Union[Record, CustomRecord]


# ---- reading -------------------------------------------------------------------------------------
def read_records(directory: str) -> List[Record]:
    """Every record of every ``*.log`` file in ``directory``, sorted by start time (then by
    interface, keeping each file's order within an interval; a format without ``start`` keeps
    the files' order). Each file is read in the format its header line names. A last line
    without its newline is still being written and is left out."""
    return Tail(directory).new()


class Tail:
    """Follow the flow log files of a directory like ``tail -f``: each call to ``new()``
    returns the records appended since the last call (files that appear are read from their
    start), sorted by start time."""

    def __init__(self, directory: str):
        self.directory = directory
        self._pos: Dict[str, int] = {}
        self._parse: Dict[str, Optional[Callable[[str], Any]]] = {}   # by the file's header

    def new(self) -> List[AnyRecord]:
        got: List[Tuple[int, str, int, AnyRecord]] = []
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
            lines = data[:done].decode("ascii", "replace").splitlines()
            if path not in self._parse and lines:   # its first line: the header
                header = lines.pop(0).strip()
                try:
                    self._parse[path] = line_parser(header, os.path.basename(path)[:-4])
                except ValueError:
                    self._parse[path] = None            # not a flow log: nothing to read
            parse = self._parse.get(path)
            for i, line in enumerate(lines):
                try:
                    r = parse(line) if parse is not None else None
                except ValueError:
                    continue
                if r is not None:
                    got.append((getattr(r, "start", None) or 0, r.interface_id or "", i, r))
        got.sort(key=lambda t: t[:3])
        return [t[3] for t in got]


def select(records: Iterable[AnyRecord], eni: Optional[str], action: Optional[str]) \
        -> List[AnyRecord]:
    return [r for r in records
            if (eni is None or r.interface_id == eni)
            and (action is None or getattr(r, "action", None) == action)]
