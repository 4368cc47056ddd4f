"""The translator: connection tracking and V2N source NAT on packet bytes, no I/O.

Two engines, one API (msgpack-python's pattern):

* ``hyperplane.engine._engine`` - the compiled engine (C core in ``csrc/``, Cython bindings);
* ``hyperplane.engine.reference`` - the pure-Python reference engine, the readable
  specification, split into modules named after the C files they mirror.

Beside them, in modules neither engine owns: ``constants`` (verdicts, drop reasons, states),
``config`` (EngineConfig, Eni, Timeouts), ``tcp_states`` (the TCP transition grid both run),
``types`` (Result, Tuple5, EntryInfo, Event, egress rules, the snapshot codec, port slices),
``ctfilter`` (conntrack-tools' filters over entries and events) and ``sharded``
(``ShardedEngine``: one engine shard per data path worker, seen as one table).

``Engine`` here is the compiled one unless ``HYPERPLANE_ENGINE=reference`` is set.
``HYPERPLANE_ENGINE=compiled`` makes a missing build an error. With the variable unset, a
missing build falls back to the reference engine *loudly* (a banner on stderr and a
``RuntimeWarning``); ``ENGINE`` always says which engine is in use.
"""
from __future__ import annotations

import os
import sys
import warnings

ENGINE_ENV = "HYPERPLANE_ENGINE"
_choice = os.environ.get(ENGINE_ENV, "").strip().lower()
if _choice not in ("", "compiled", "reference"):
    raise ImportError(f"{ENGINE_ENV}={_choice!r}: use 'compiled' or 'reference' (or unset it)")

#: Why the compiled engine is not in use, when it is not (None otherwise).
ENGINE_FALLBACK_REASON = None
if _choice == "reference":
    from hyperplane.engine.reference import Engine
else:
    try:
        from hyperplane.engine._engine import Engine
    except ImportError as exc:
        if _choice == "compiled":
            raise ImportError(
                f"{ENGINE_ENV}=compiled but the compiled engine is not built ({exc}); "
                "build it with: pip install -e .   (or python setup.py build_ext --inplace)"
            ) from exc
        ENGINE_FALLBACK_REASON = str(exc)
        _msg = ("hyperplane: the compiled engine is NOT built (" + str(exc) + "); using the "
                "pure-Python reference engine, which is ~160x slower. Build it with "
                "'pip install -e .' or set HYPERPLANE_ENGINE=reference to silence this.")
        print("*" * 78 + "\n" + _msg + "\n" + "*" * 78, file=sys.stderr)
        warnings.warn(_msg, RuntimeWarning, stacklevel=2)
        from hyperplane.engine.reference import Engine

#: "compiled" or "reference": the engine behind ``Engine``.
ENGINE = Engine.engine

# N engine shards (one per data path worker, each a slice of every ENI's ports) as one table;
# its shards are of the Engine chosen above.
from hyperplane.engine import sharded as _sharded  # noqa: E402
from hyperplane.engine.sharded import ShardedEngine  # noqa: E402

_sharded.DEFAULT_ENGINE_CLS = Engine


def engine_reason() -> str:
    """Why ``ENGINE`` is what it is (``hyperplane engine`` prints it)."""
    if ENGINE == "compiled":
        mod = sys.modules.get("hyperplane.engine._engine")
        where = getattr(mod, "__file__", "?")
        chosen = os.environ.get(ENGINE_ENV, "").strip().lower() == "compiled"
        forced = f"{ENGINE_ENV}=compiled" if chosen else f"{ENGINE_ENV} is unset"
        return f"the compiled engine is built ({where}) and {forced}"
    if ENGINE_FALLBACK_REASON is None:
        return f"{ENGINE_ENV}=reference forces the pure-Python reference engine"
    return (f"FALLBACK: the compiled engine does not import ({ENGINE_FALLBACK_REASON}); "
            "build it with 'pip install -e .' (or set HYPERPLANE_ENGINE=reference to choose "
            "the reference engine on purpose)")


__all__ = ["ENGINE", "ENGINE_ENV", "ENGINE_FALLBACK_REASON", "Engine", "ShardedEngine",
           "engine_reason"]
