"""Builds the compiled engine: csrc/*.c (the C core) + hyperplane/engine/_engine.pyx (bindings).

Editable installs do not rebuild a changed .pyx or .c by themselves; after editing either, run
``pip install -e .`` again (or ``python setup.py build_ext --inplace``).
"""
import glob
import os

from setuptools import Extension, setup
from Cython.Build import cythonize

extra = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
link = []
# HYPERPLANE_SANITIZE=thread: a ThreadSanitizer build (.ci/tsan); any other non-empty value:
# AddressSanitizer + UBSan (tests/engine/test_sanitizers.py). Python is not instrumented, so
# the runtime must be preloaded (LD_PRELOAD) into the interpreter that imports the build.
_sanitize = os.environ.get("HYPERPLANE_SANITIZE", "")
if _sanitize == "thread":
    extra += ["-O1", "-g", "-fsanitize=thread", "-fno-omit-frame-pointer"]
    link += ["-fsanitize=thread"]
elif _sanitize:
    extra += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]

ext = Extension(
    "hyperplane.engine._engine",
    sources=["hyperplane/engine/_engine.pyx"] + sorted(glob.glob("csrc/*.c")),
    include_dirs=["csrc"],
    depends=sorted(glob.glob("csrc/*.h")) + ["hyperplane/engine/_engine.pxd",
                                              "hyperplane/engine/_datapath.pxi",
                                              "hyperplane/engine/_bench_threads.pxi"],
    extra_compile_args=extra,
    extra_link_args=link,
)

setup(ext_modules=cythonize([ext], language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False}))
