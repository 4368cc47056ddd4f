"""Builds the compiled engine: csrc/*.c (the C core) + hyperplane/engine/_engine.pyx (bindings).

Editable installs do not rebuild a changed .pyx or .c by themselves; after editing either, run
``pip install -e .`` again (or ``python setup.py build_ext --inplace``).
"""
import glob
import os

from setuptools import Extension, setup
from Cython.Build import cythonize

extra = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
if os.environ.get("HYPERPLANE_SANITIZE"):
    extra += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]

ext = Extension(
    "hyperplane.engine._engine",
    sources=["hyperplane/engine/_engine.pyx"] + sorted(glob.glob("csrc/*.c")),
    include_dirs=["csrc"],
    depends=sorted(glob.glob("csrc/*.h")) + ["hyperplane/engine/_engine.pxd",
                                              "hyperplane/engine/_datapath.pxi",
                                              "hyperplane/engine/_bench_threads.pxi"],
    extra_compile_args=extra,
)

setup(ext_modules=cythonize([ext], language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False}))
