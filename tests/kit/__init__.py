"""The test kit: what the test folders share (a test module never imports another).

* ``frames``    addresses, packet builders, checksum checks, engine helpers (the engine tests)
* ``fragments`` IP fragments built and checked byte by byte (the engine's fragment tests)
* ``malformed`` the corpus of malformed packets (``python3 tests/kit/malformed.py`` prints the
                table of docs/robustness.md)
* ``traffic``   TCP and UDP servers and clients in network namespaces, a kernel-only topology
* ``wire``      frames on the wire: sniffers, injection, raw IP, the kernel's checksum counters
* ``labs``      a view over ``hyperplane.Lab`` with the tests' shortcuts, and the lab helpers
* ``rig``       the C data path alone on veth pairs in a scratch namespace (no lab, no daemon)
* ``vpc``       the control plane's effects, recorded (no data path)
* ``labdocs``   lab config documents for the config tests to bend one value at a time

pyproject's ``pythonpath`` puts tests/ on ``sys.path``, so every test imports ``kit.NAME``.
"""
from __future__ import annotations

import os

#: The repository: computed here once, so no test counts directory levels of its own.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
