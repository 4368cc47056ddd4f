"""Impairing a running lab's links: the library under ``hyperplane lab impair`` and
``Lab.impair``/``Lab.impairments``. Values are netem's words, validated exactly as the lab
file's ``[[impairments]]`` (hyperplane.labconfig.parse_impairments); placement and mechanism
are hyperplane.topology.impair's."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from hyperplane.errors import EXIT_USAGE, HyperplaneError, LabConfigError
from hyperplane.lab.lifecycle import load_lab, need_privilege
from hyperplane.labconfig.model import IMPAIRMENT_DIRECTIONS
from hyperplane.labconfig.parse_impairments import parse_impairment
from hyperplane.topology import impair as mech
from hyperplane.topology.impair_place import link_names


def impair(name: str, link: str, direction: str = "both", *, clear: bool = False,
           **settings: Optional[str]) -> Dict[str, Any]:
    """Impair ``link`` of lab ``name`` with ``settings`` (``delay="10ms"``, ``loss="1%"``,
    ``rate="100mbit"`` ...: parse_impairments.SETTINGS; None = not given), replacing what that
    direction had; ``clear=True`` takes the impairment off instead. Returns
    :func:`impairments`' document. HyperplaneError (exit status 2) naming the setting when it
    is wrong or cannot be applied on this kernel or link."""
    _, plan = load_lab(name)
    need_privilege()
    given = {k: v for k, v in settings.items() if v is not None}
    names = link_names(plan)
    if clear:
        if given:
            raise HyperplaneError(f"--clear takes an impairment off; it takes no "
                                  f"{', '.join(given)}", EXIT_USAGE)
        if direction not in IMPAIRMENT_DIRECTIONS:
            raise HyperplaneError(f"--direction: {direction!r}: write both, egress or ingress",
                                  EXIT_USAGE)
        mech.clear(plan, link, direction)   # ImpairError for an unknown link
        return mech.active(plan)
    try:
        imp = parse_impairment({"link": link, "direction": direction, **given}, "impair", names)
    except LabConfigError as e:
        # impair.loss -> --loss: the option the user gave
        key = e.field[len("impair."):] if e.field.startswith("impair.") else ""
        field = "LINK" if key in ("", "link") else f"--{key}"
        raise HyperplaneError(f"{field}: {e.message}", EXIT_USAGE) from None
    mech.apply(plan, imp)
    return mech.active(plan)


def impairments(name: str) -> Dict[str, Any]:
    """``lab impair --list --json``: the backend this lab's kernel gives (None before the
    first impairment) and the active impairments, one entry per link and direction."""
    _, plan = load_lab(name)
    return mech.active(plan)


def lines(doc: Dict[str, Any]) -> List[str]:
    """The active impairments in words (``lab impair --list``, ``lab status``)."""
    if not doc["impairments"]:
        return []
    out = [f"impairments ({doc['backend']}: {doc['backend_note']}):"]
    for e in doc["impairments"]:
        out.append(f"  {e['link']} {e['direction']}: {e['settings']}  [{e['mechanism']}]")
    return out
