"""Dynamic completions for the shell (argcomplete's completers, set on the parser's arguments
as ``action.completer``): the labs that exist for ``--name``, and, from the plan of the lab
``--name`` names (the default lab without it), its nodes, functions, ENIs and environments.

They read the labs' state files only (no control request, no namespace, no root), and never
raise: a shell completing must not print a traceback, so no lab, an unreadable state file or
any other trouble completes nothing."""
from __future__ import annotations

from typing import Any, Callable, List

from hyperplane import labconfig, topology
from hyperplane.lab import lifecycle
from hyperplane.lab.status import namespaces_by_node


def _quiet(fn: Callable[..., List[str]]) -> Callable[..., List[str]]:
    """The completer ``fn``, completing nothing where it would raise."""
    def completer(prefix: str = "", parsed_args: Any = None, **_) -> List[str]:
        try:
            return [c for c in fn(parsed_args) if c.startswith(prefix or "")]
        except Exception:
            return []
    completer.__name__ = fn.__name__
    completer.__doc__ = fn.__doc__
    return completer


def _plan(parsed_args: Any) -> labconfig.Plan:
    """The plan of the lab ``--name`` names so far on the line, or its default (the parser's:
    the ``default`` lab); no such lab raises, which :func:`_quiet` turns into no completions."""
    return lifecycle.load_lab(parsed_args.name)[1]


@_quiet
def labs(parsed_args: Any) -> List[str]:
    """The labs on this machine (what ``lab list`` lists)."""
    return topology.list_labs()


@_quiet
def nodes(parsed_args: Any) -> List[str]:
    """What ``lab exec NODE`` takes: environments, hosts, hyperplane, vpc, internet."""
    plan = _plan(parsed_args)
    return sorted(namespaces_by_node(plan))


@_quiet
def functions(parsed_args: Any) -> List[str]:
    """The lab's function names."""
    plan = _plan(parsed_args)
    return [f.name for f in plan.functions]


@_quiet
def enis(parsed_args: Any) -> List[str]:
    """The lab's ENI ids as it was built (scale-out ENIs appear at run time; `eni list`)."""
    plan = _plan(parsed_args)
    return [e.id for e in plan.enis]


@_quiet
def environments_and_functions(parsed_args: Any) -> List[str]:
    """What ``capture --env`` takes: an environment, or a function (all its environments)."""
    plan = _plan(parsed_args)
    return [e.name for e in plan.envs] + [f.name for f in plan.functions]
