"""Progress of the long commands (``lab up``, ``bench``) on a terminal: the library reports
its steps through a ``progress(step, done, total)`` callback and never prints them; this shows
them with rich on stderr, and only when stderr is a terminal, so nothing changes for pipes,
files, ``--json`` on stdout or tests."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional

from hyperplane.cli.common import isatty
from hyperplane.lab import lifecycle


@contextlib.contextmanager
def shown(what: str, enabled: bool = True, err=None) -> Iterator[Optional[lifecycle.Progress]]:
    """A ``progress(step, done, total)`` callback that draws ``what: step  done/total`` with a
    spinner and a bar on ``err`` (stderr), or None when it is not a terminal or not
    ``enabled``. Lines the library prints on stderr meanwhile appear above the bar."""
    err = err or sys.stderr
    if not enabled or not isatty(err):
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn)

    bar = Progress(SpinnerColumn(), TextColumn(f"{what}: {{task.description}}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), console=Console(file=err),
                   redirect_stdout=False, redirect_stderr=True)
    task = bar.add_task("starting", total=None)

    def report(step: str, done: int, total: int) -> None:
        bar.update(task, description=step, completed=done, total=total)

    with bar:
        yield report
