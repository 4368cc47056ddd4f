"""What every command group shares: the --name option, command groups, tables, durations."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from hyperplane.cli import completers
from hyperplane.errors import (EXIT_FAIL, EXIT_NOT_FOUND, EXIT_OK, EXIT_PRIVILEGE, EXIT_USAGE,
                               HyperplaneError)

DEFAULT_LAB = "default"

#: The exit statuses as ``--help``'s epilog and the man page's EXIT STATUS list them.
EXIT_STATUSES = ((EXIT_OK, "ok"), (EXIT_FAIL, "failed"), (EXIT_USAGE, "usage/config error"),
                 (EXIT_NOT_FOUND, "no such lab/node"), (EXIT_PRIVILEGE, "needs CAP_NET_ADMIN"))


def named(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--name`` (the lab) to a command; the shell completes it with the labs there are."""
    q.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})"
                   ).completer = completers.labs
    return q


def add_json(q: argparse.ArgumentParser,
             help: str = "one JSON document on stdout instead of the text") -> None:
    """Add ``--json`` (a flag) to a command."""
    q.add_argument("--json", action="store_true", help=help)


def print_json(doc: Any) -> None:
    """One JSON document on stdout, the way every ``--json`` prints it."""
    print(json.dumps(doc, indent=2))


def print_json_line(doc: Any) -> None:
    """One JSON object on one line, flushed: the streaming commands' ``--json`` (JSON Lines)."""
    print(json.dumps(doc), flush=True)


def command_group(sub, name: str, help: str):
    """A command with subcommands (``lab``, ``eni``, ``function``); given alone it prints its
    own usage and exits with the usage status."""
    parser = sub.add_parser(name, help=help)
    group = parser.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND")
    parser.set_defaults(func=lambda a: (parser.print_usage(sys.stderr), EXIT_USAGE)[1])
    return group


def table(rows: List[List[str]], out=None) -> None:
    """Columns padded to their widest cell, two spaces apart."""
    out = out or sys.stdout
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def isatty(out) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def ids(text: Optional[str]) -> Optional[List[str]]:
    """``a,b, c`` -> ["a", "b", "c"]; None stays None."""
    if text is None:
        return None
    return [x for x in (t.strip() for t in text.split(",")) if x]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``20m``, ``6h``, ``30d`` -> seconds."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    num = t[:-1] if unit else t
    try:
        v = float(num) * (unit or 1)
    except ValueError:
        raise HyperplaneError(f"{text!r} is not a duration; write seconds or a number with s, "
                              "m, h or d (e.g. 90, 20m, 30d)", EXIT_USAGE) from None
    if not 0 <= v <= 10 * 365 * 86400:
        raise HyperplaneError(f"{text!r}: a duration from 0 to ten years", EXIT_USAGE)
    return v


def fill(pools: Dict[str, Any]) -> str:
    """An ENI's port-pool use as ``family/proto=used/size`` words."""
    return " ".join(f"{k}={v['used']}/{v['size']}" for k, v in sorted(pools.items())
                    if v.get("used")) or "-"
