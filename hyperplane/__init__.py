"""hyperplane: a userspace connection-tracking V2N source NAT, like the network layer behind an
AWS Lambda function attached to a VPC (the "Hyperplane ENI").

Two engines, one API (msgpack-python's pattern):

* ``hyperplane._engine`` - the compiled engine (C core in ``csrc/``, Cython bindings);
* ``hyperplane.reference`` - the pure-Python reference engine, the readable specification.

``hyperplane.Engine`` is the compiled one unless ``HYPERPLANE_ENGINE=reference`` is set.
``HYPERPLANE_ENGINE=compiled`` makes a missing build an error. With the variable unset, a
missing build falls back to the reference engine *loudly* (a banner on stderr and a
``RuntimeWarning``); ``hyperplane.ENGINE`` always says which engine is in use.
"""
from __future__ import annotations

import os
import sys
import warnings

from .config import ConfigError, EngineConfig, Eni, Timeouts
from .constants import (
    FLAG_CSUM_PARTIAL, Direction, DropReason, TcpState, TimeoutClass, UdpState, Verdict,
)
from .reference import EntryInfo, Result, Tuple5

__version__ = "0.1.0"

ENGINE_ENV = "HYPERPLANE_ENGINE"
_choice = os.environ.get(ENGINE_ENV, "").strip().lower()
if _choice not in ("", "compiled", "reference"):
    raise ImportError(f"{ENGINE_ENV}={_choice!r}: use 'compiled' or 'reference' (or unset it)")

#: Why the compiled engine is not in use, when it is not (None otherwise).
ENGINE_FALLBACK_REASON = None
if _choice == "reference":
    from .reference import Engine
else:
    try:
        from ._engine import Engine
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
        from .reference import Engine

#: "compiled" or "reference": the engine behind ``hyperplane.Engine``.
ENGINE = Engine.engine

__all__ = [
    "ENGINE", "ENGINE_FALLBACK_REASON", "ConfigError", "Direction", "DropReason", "Engine",
    "EngineConfig", "Eni", "EntryInfo", "FLAG_CSUM_PARTIAL", "Result", "TcpState", "Timeouts",
    "TimeoutClass", "Tuple5", "UdpState", "Verdict", "__version__",
]
