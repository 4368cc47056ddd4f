"""Every mistake of a lab file at once, without cascades.

The parse functions raise a :class:`LabConfigError` at a mistake, as they always have. While
:func:`collecting` is active (``loading.parse`` turns it on), a :func:`soft` scope around one
independent part (a section, an array element, a group of fields that can be checked on
their own, a reference) records the error and lets the parse go on after the scope; at the
end one error carries them all (``LabConfigError.combine``). Without a collector a scope does
nothing and the first mistake raises, as before.

Theory of operation:

- A problem marks every scope it happens in as failed, out to the section: an element whose
  field failed is not built (``scope.check()`` stops it before it would use a value that is
  not there), and a section with a failed part is not *clean*.
- An element that fails while defining something (``soft(defines=("subnet", "subnet-a"))``)
  leaves its name behind as *broken*; a reference to a broken name, or to a kind whose whole
  section could not be read (``soft(unavailable="subnet")``), stops its scope silently
  (:func:`undefined`) instead of saying "not defined": the user fixes the definition, and the
  reference is fine.
- Checks of the config as a whole (capacity, addresses, IAM, "at least one function") run
  only when the sections they read are :func:`clean`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, Iterator, List, Optional, Set, Tuple

from hyperplane.errors import LabConfigError


class _Skip(Exception):
    """Stops a scope without a message: what it depends on is broken and already reported."""


class Scope:
    """One part being checked; ``failed`` once a problem happened in it (or in a part of it)."""

    def __init__(self) -> None:
        self.failed = False

    def check(self) -> None:
        """Stop here when a part of this scope failed (its values are missing): the scope
        ends silently, its problems are already recorded."""
        if self.failed:
            raise _Skip()


class Collector:
    """The problems found so far, the names of broken definitions, and the scopes open."""

    def __init__(self) -> None:
        self.problems: List[LabConfigError] = []
        self.broken: Dict[str, Set[str]] = {}
        self.unavailable: Set[str] = set()
        self.failed_sections: Set[str] = set()
        self.scopes: List[Scope] = []

    def record(self, error: LabConfigError) -> None:
        self.problems.extend(error.problems)
        self.fail()

    def fail(self) -> None:
        for scope in self.scopes:
            scope.failed = True


_current: contextvars.ContextVar[Optional[Collector]] = contextvars.ContextVar(
    "hyperplane_labconfig_problems", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[Collector]:
    """Collect the problems of the parse inside; at the end raise them as one
    :class:`LabConfigError` (its ``problems`` one each), or nothing when there were none."""
    collector = Collector()
    token = _current.set(collector)
    try:
        try:
            yield collector
        except _Skip:
            pass
        except LabConfigError as e:
            collector.record(e)
    finally:
        _current.reset(token)
    if collector.problems:
        raise LabConfigError.combine(collector.problems)


@contextlib.contextmanager
def soft(defines: Optional[Tuple[str, object]] = None, unavailable: Optional[str] = None,
         section: Optional[str] = None) -> Iterator[Scope]:
    """One independent part: a :class:`LabConfigError` inside is recorded and the parse goes
    on after the ``with`` block. ``defines=(kind, raw name)``: when the part fails, references
    to that name stay silent. ``unavailable=kind``: when an error ends this scope itself (the
    section could not be read at all), every reference to that kind stays silent.
    ``section``: the top-level section this is, for :func:`clean`."""
    collector = _current.get()
    scope = Scope()
    if collector is None:
        yield scope
        return
    collector.scopes.append(scope)
    try:
        yield scope
    except LabConfigError as e:
        collector.record(e)
        if unavailable:
            collector.unavailable.add(unavailable)
    except _Skip:
        collector.fail()
        if unavailable:
            collector.unavailable.add(unavailable)
    finally:
        collector.scopes.pop()
    if scope.failed:
        if defines is not None and isinstance(defines[1], str):
            collector.broken.setdefault(defines[0], set()).add(defines[1])
        if section:
            collector.failed_sections.add(section)


@contextlib.contextmanager
def group() -> Iterator[Scope]:
    """A part made of soft parts (a table whose fields are checked one by one) that lets its
    errors through: at its end, when a field failed, it stops the caller's scope, so nothing
    half-checked is built (``scope.check()`` stops it earlier, inside the block)."""
    collector = _current.get()
    scope = Scope()
    if collector is None:
        yield scope
        return
    collector.scopes.append(scope)
    try:
        yield scope
        scope.check()
    finally:
        collector.scopes.pop()


def problem(error: LabConfigError) -> None:
    """Report a mistake that does not stop the part it is in (an unknown key: the rest of the
    table can still be checked). Without a collector it raises, as every mistake did."""
    collector = _current.get()
    if collector is None:
        raise error
    collector.record(error)


def undefined(kind: str, name: object, error: LabConfigError) -> None:
    """A reference to ``name`` (a ``kind``: "subnet", "security_group", ...) that is not
    defined: raise ``error``, unless its definition is broken or its section unreadable
    (then the scope stops silently: that mistake is already reported)."""
    collector = _current.get()
    if collector is not None and (kind in collector.unavailable
                                  or name in collector.broken.get(kind, ())):
        raise _Skip()
    raise error


def skip() -> None:
    """Stop the current scope silently: what it needs failed, and said so already."""
    raise _Skip()


def clean(*sections: str) -> bool:
    """Whether these top-level sections parsed without a problem (always true without a
    collector: there the first problem raised)."""
    collector = _current.get()
    return collector is None or not collector.failed_sections.intersection(sections)


def any_problem() -> bool:
    collector = _current.get()
    return collector is not None and bool(collector.problems or collector.failed_sections)
