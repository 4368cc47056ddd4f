"""The package's shape, enforced: layers import only downward, nothing but the command line
imports the command line, the import graph has no cycle, and no source file passes 800 lines.

The import graph is read from the source (``ast`` for .py, the import lines of .pyx/.pxi/.pxd),
imports inside functions included: a lazy import is still a dependency. ``from a.b import c``
is an edge to the module ``a.b.c`` when that is a module, else to ``a.b``. The checker is tried
on a small package of its own first, so a checker that finds nothing cannot pass unnoticed.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "hyperplane"

#: The layers, bottom first. A module may import modules of lower layers and of its own group
#: (the same subpackage, or the bottom's modules among themselves); never a higher layer, nor a
#: sibling group of its own layer (vpc and topology know nothing of each other).
LAYERS: List[Tuple[str, ...]] = [
    ("hyperplane.errors", "hyperplane.version", "hyperplane.paths", "hyperplane.proc",
     "hyperplane.netns", "hyperplane.control"),
    ("hyperplane.engine",),
    ("hyperplane.labconfig",),
    ("hyperplane.vpc", "hyperplane.topology"),
    ("hyperplane.datapath", "hyperplane.workloads"),
    ("hyperplane.observe",),
    ("hyperplane.lab",),
    ("hyperplane.bench",),
    ("hyperplane.learn",),
    ("hyperplane.cli",),
    ("hyperplane", "hyperplane.__main__"),     # the public facade and `python -m hyperplane`
]
#: Groups whose members may import one another (the bottom is a set of small modules).
SHARED_GROUPS = {0}
#: The command line, and who may import it.
CLI = "hyperplane.cli"
CLI_IMPORTERS = ("hyperplane.cli", "hyperplane.__main__")
#: The most lines a source file may have.
MAX_LINES = 800
SOURCE_GLOBS = ("hyperplane/**/*.py", "hyperplane/**/*.pyx", "hyperplane/**/*.pxi",
                "hyperplane/**/*.pxd", "hyperplane/**/*.c", "hyperplane/**/*.h", "csrc/*.c",
                "csrc/*.h")

_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+([\w*, ()]+)|c?import\s+([\w.]+))",
                            re.M)


# ---- reading the graph ----------------------------------------------------------------------------
def modules_of(root: Path, package: str) -> Dict[str, Path]:
    """Module name -> file, for every .py/.pyx/.pxi/.pxd of ``package`` under ``root`` (a .pxi is
    included into its .pyx's module, so it counts as that module)."""
    mods: Dict[str, Path] = {}
    for path in sorted((root / package).rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pxi", ".pxd") or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if path.suffix == ".pxi":     # _datapath.pxi is part of _engine
            name = ".".join(parts[:-1] + ["_engine"])
        mods.setdefault(name, path)
        if path.suffix != ".py":
            mods[name + "#" + path.suffix] = path     # keep every Cython file
    return mods


def _resolve(target: str, names: Iterable[str], known: Set[str]) -> Set[str]:
    out = set()
    for n in names:
        sub = f"{target}.{n}"
        if sub in known:
            out.add(sub)
        elif target in known:
            out.add(target)
    if not names and target in known:
        out.add(target)
    # `import a.b.c` where a.b.c is not a module of ours: the longest known prefix
    if not out:
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            out.add(".".join(parts))
    return out


def imports_of(name: str, path: Path, known: Set[str], package: str) -> Set[str]:
    """The package's modules that module ``name`` (file ``path``) imports, anywhere in it."""
    out: Set[str] = set()
    text = path.read_text(encoding="utf-8")
    is_pkg = path.stem == "__init__"
    base = name.split("#")[0]
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == package or a.name.startswith(package + "."):
                        out |= _resolve(a.name, [], known)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = base.split(".") if is_pkg else base.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    target = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target == package or target.startswith(package + "."):
                    out |= _resolve(target, [a.name for a in node.names], known)
    else:
        for m in _CYTHON_IMPORT.finditer(text):
            target = m.group(1) or m.group(3)
            if target == package or target.startswith(package + "."):
                names = [] if m.group(3) else [x.strip(" ()").split(" as ")[0].strip()
                                               for x in m.group(2).split(",")]
                out |= _resolve(target, [n for n in names if n and n != "*"], known)
    out.discard(base)
    return out


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Dict[str, Set[str]]:
    files = modules_of(root, package)
    known = {n.split("#")[0] for n in files}
    graph: Dict[str, Set[str]] = {n: set() for n in known}
    for name, path in files.items():
        graph[name.split("#")[0]] |= imports_of(name, path, known, package)
    return graph


# ---- the rules ------------------------------------------------------------------------------------
def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected component of more than one module (Tarjan), sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:           # iterative enough for a graph of ~100 modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def group_of(module: str, layers=LAYERS) -> Optional[Tuple[int, str]]:
    """(layer index, group prefix) of a module: its longest matching group."""
    best = None
    for i, groups in enumerate(layers):
        for g in groups:
            if module == g or module.startswith(g + "."):
                if best is None or len(g) > len(best[1]):
                    best = (i, g)
    return best


def layer_violations(graph: Dict[str, Set[str]], layers=LAYERS, shared=SHARED_GROUPS,
                     cli: str = CLI, cli_importers=CLI_IMPORTERS) -> List[str]:
    out = []
    for a in sorted(graph):
        ga = group_of(a, layers)
        if ga is None:
            out.append(f"{a}: in no layer (add it to LAYERS)")
            continue
        for b in sorted(graph[a]):
            gb = group_of(b, layers)
            if gb is None:
                out.append(f"{b}: in no layer (add it to LAYERS)")
                continue
            if (b == cli or b.startswith(cli + ".")) and \
                    not any(a == c or a.startswith(c + ".") for c in cli_importers):
                out.append(f"{a} imports the command line ({b})")
            elif gb[0] > ga[0]:
                out.append(f"{a} imports {b}: upward ({ga[1]} is below {gb[1]})")
            elif gb[0] == ga[0] and gb[1] != ga[1] and ga[0] not in shared:
                out.append(f"{a} imports {b}: sideways ({ga[1]} and {gb[1]} share a layer)")
    return out


def long_files(root: Path = ROOT, limit: int = MAX_LINES,
               globs: Tuple[str, ...] = SOURCE_GLOBS) -> List[str]:
    out = []
    for pattern in globs:
        for path in sorted(root.glob(pattern)):
            if "__pycache__" in path.parts or path.name == "_engine.c":   # Cython's output
                continue
            n = len(path.read_text(encoding="utf-8", errors="replace").splitlines())
            if n > limit:
                out.append(f"{path.relative_to(root)}: {n} lines (split it along its seams)")
    return out


# ---- the checker, tried on a package made to break every rule -------------------------------------
@pytest.fixture
def bad_package(tmp_path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    (pkg / "cli").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from pkg.low import b   # lazy: counts\n")
    (pkg / "low" / "b.py").write_text("from . import a\nfrom pkg.high import x\n")
    (pkg / "high" / "__init__.py").write_text("")
    (pkg / "high" / "x.py").write_text("import pkg.cli.main\n")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "cli" / "main.py").write_text("from pkg.high import x\n")
    (pkg / "big.py").write_text("x = 1\n" * 801)
    (pkg / "high" / "_fast.pyx").write_text("from pkg.low cimport *\n"
                                             "from pkg.low import a as a_alias, b\n")
    return tmp_path


def test_the_checker_finds_a_cycle_an_upward_import_and_a_cli_import(bad_package):
    graph = import_graph(bad_package, "pkg")
    assert graph["pkg.low.a"] == {"pkg.low.b"}          # the import inside a function counts
    assert graph["pkg.low.b"] == {"pkg.low.a", "pkg.high.x"}
    assert graph["pkg.high._fast"] == {"pkg.low", "pkg.low.a", "pkg.low.b"}   # Cython, aliased
    assert cycles(graph) == [["pkg.cli.main", "pkg.high.x"], ["pkg.low.a", "pkg.low.b"]]
    layers = [("pkg.low",), ("pkg.high",), ("pkg.cli",), ("pkg",)]
    bad = layer_violations(graph, layers, shared=set(), cli="pkg.cli", cli_importers=("pkg.cli",))
    assert "pkg.low.b imports pkg.high.x: upward (pkg.low is below pkg.high)" in bad
    assert "pkg.high.x imports the command line (pkg.cli.main)" in bad
    assert long_files(bad_package, 800, ("pkg/**/*.py",)) == \
        ["pkg/big.py: 801 lines (split it along its seams)"]


# ---- the rules, on hyperplane ---------------------------------------------------------------------
def test_the_graph_is_read():
    graph = import_graph()
    assert len(graph) > 40
    # a few edges the package certainly has, so an empty graph cannot pass
    assert "hyperplane.engine.types" in graph["hyperplane.engine.reference"] or any(
        "hyperplane.engine.types" in graph[m] for m in graph
        if m.startswith("hyperplane.engine.reference"))
    assert "hyperplane.lab.lifecycle" in graph["hyperplane.lab.api"]
    assert "hyperplane.engine.types" in graph["hyperplane.engine._engine"]   # from the .pyx


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_layers_import_only_downward_and_only_the_cli_imports_the_cli():
    assert layer_violations(import_graph()) == []


def test_no_source_file_is_over_800_lines():
    assert long_files() == []
