"""The import graph, read from the source with ``ast`` (every import, lazy ones inside
functions included): layers point down only (benchmarks, tests -> fusedres -> kernels), no
module imports names from a package above it, and no import circle; and pyproject.toml
installs every package."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The source folder of each package prefix: kernels/ installs as fusedres.kernels.
PACKAGES = {"fusedres": os.path.join(ROOT, "fusedres"),
            "fusedres.kernels": os.path.join(ROOT, "kernels")}


def _modules():
    """{dotted name: path} of every module of fusedres and fusedres.kernels."""
    modules = {}
    for prefix, folder in PACKAGES.items():
        for dirpath, _, files in os.walk(folder):
            rel = os.path.relpath(dirpath, folder)
            package = prefix if rel == "." else f"{prefix}.{rel.replace(os.sep, '.')}"
            for name in files:
                if name.endswith(".py"):
                    stem = name[:-3]
                    modules[package if stem == "__init__" else f"{package}.{stem}"] = \
                        os.path.join(dirpath, name)
    return modules


MODULES = _modules()


def _package_of(name):
    is_package = MODULES[name].endswith("__init__.py")
    return name if is_package else name.rpartition(".")[0]


def _edges(name):
    """The fusedres modules ``name`` imports: ``from .x import y`` names module ``.x.y``
    where ``y`` is a module, else ``.x`` itself."""
    tree = ast.parse(open(MODULES[name]).read())
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in MODULES else source)
    return {t for t in targets if t in MODULES}


GRAPH = {name: _edges(name) for name in MODULES}


def test_the_kernel_layer_never_imports_the_package_above():
    offenders = {name: sorted(t for t in targets if not t.startswith("fusedres.kernels"))
                 for name, targets in GRAPH.items() if name.startswith("fusedres.kernels")}
    assert {name: t for name, t in offenders.items() if t} == {}


def test_nothing_imports_names_from_a_package_above_it():
    # A package's __init__ imports its modules; a module taking names from it would circle.
    up = {name: sorted(t for t in targets
                       if MODULES[t].endswith("__init__.py") and name.startswith(t + "."))
          for name, targets in GRAPH.items()}
    assert {name: t for name, t in up.items() if t} == {}


def test_no_import_circle():
    circles = []
    state = {}  # name -> "visiting" / "done"

    def visit(name, path):
        state[name] = "visiting"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "visiting":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_the_graph_is_read():
    # The checks above see edges at all: a few that must exist.
    assert "fusedres.kernels.conv.launcher" in GRAPH["fusedres.kernels.conv"]
    assert "fusedres.kernels" in GRAPH["fusedres.trace"]
    assert "fusedres.kernels.conv.walk_taps" in GRAPH["fusedres.kernels.conv.tile"]


def test_pyproject_installs_every_package():
    """A package missing from pyproject's explicit list would be left out of a wheel (an
    editable install still finds it, so nothing else would notice)."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        listed = tomllib.load(file)["tool"]["setuptools"]["packages"]
    packages = sorted(name for name, path in MODULES.items() if path.endswith("__init__.py"))
    assert sorted(listed) == packages
