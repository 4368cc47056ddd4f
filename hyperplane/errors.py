"""The error types of the package and the exit statuses the command line maps them to.

Everything a caller can act on is a :class:`HyperplaneError`: its message is the sentence the
``hyperplane`` command prints after ``hyperplane: error:``, and its ``code`` is the command's
exit status. A program that drives labs through :class:`hyperplane.Lab` catches the same types
and reads the same words.

This module is the bottom of the package: it imports nothing of hyperplane.
"""
from __future__ import annotations

from typing import List, Sequence

#: Exit statuses of the ``hyperplane`` command: 0 success; 1 the operation failed (traffic did
#: not pass, the data path died); 2 usage or configuration error; 3 no such lab, node or
#: namespace; 4 not enough privilege (CAP_NET_ADMIN).
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_PRIVILEGE = 0, 1, 2, 3, 4

#: The command's name, as messages tell the user what to run next.
PROG = "hyperplane"


class HyperplaneError(Exception):
    """An error the user can act on. ``code`` is the command line's exit status for it
    (``EXIT_FAIL`` unless said otherwise)."""

    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


class LabError(HyperplaneError):
    """Building, stopping or tearing down a lab failed; the message says which step and what to
    do."""


class LabConfigError(ValueError):
    """A lab configuration is wrong. ``field`` is the path of the offending value
    (``subnets[0].cidr``); the message says what is wrong and how to fix it.

    A ``ValueError`` (the lab file's parser raises it), not a :class:`HyperplaneError`: the
    lab lifecycle reports it as ``HyperplaneError("configuration: FIELD: ...", EXIT_USAGE)``.

    Loading a lab file reports every mistake at once: ``problems`` lists them, each a
    LabConfigError of its own (a single mistake's list is ``[self]``). With several,
    ``str()`` is one ``FIELD: message`` per line, and ``field``/``message`` are the first
    one's."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        self.problems: List["LabConfigError"] = [self]
        super().__init__(f"{field}: {message}")

    @classmethod
    def combine(cls, problems: Sequence["LabConfigError"]) -> "LabConfigError":
        """One error for ``problems`` (at least one): the problem itself when there is one."""
        if len(problems) == 1:
            return problems[0]
        first = problems[0]
        e = cls(first.field, first.message)
        e.problems = list(problems)
        e.args = ("\n".join(str(p) for p in problems),)
        return e


def config_error(e: Exception) -> HyperplaneError:
    """A configuration mistake as the error the command line prints (exit status 2); several
    mistakes (a :class:`LabConfigError` with ``problems``) one per line."""
    problems = getattr(e, "problems", None) or [e]
    if len(problems) == 1:
        return HyperplaneError(f"configuration: {e}", EXIT_USAGE)
    lines = "\n".join(f"  {p}" for p in problems)
    return HyperplaneError(f"configuration: {len(problems)} mistakes, fix them all:\n{lines}",
                           EXIT_USAGE)
