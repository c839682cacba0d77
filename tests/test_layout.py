"""The package's import graph: no cycles, and imports go down the layers only.

Every ``import`` statement of every module counts, the ones inside functions too (a lazy import is still a
dependency). ``from . import x`` counts as an import of the submodule ``x`` when there is one, else of the package.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mpifed"

# Lower layers never import these (they take plain values: a DataSpec, MethodOptions, arrays).
TOP = ("mpifed.cli", "mpifed.config", "mpifed.plan", "mpifed.driver", "mpifed.checkpoint", "mpifed.ops",
       "mpifed.analysis")
LOWER = ("mpifed.data", "mpifed.problems", "mpifed.algorithms", "mpifed.federation", "mpifed.compressors",
         "mpifed.comm", "mpifed.backend", "mpifed.rng", "mpifed.ddsum", "mpifed.tri", "mpifed.kernels", "mpifed.trace",
         "mpifed.network")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set) -> set:
    """The package modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mpifed"}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            if not target or target.split(".")[0] != "mpifed":
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_and_relative_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    g = graph()
    assert "mpifed.algorithms.base" in g["mpifed.algorithms.second_order.fednl"]
    assert "mpifed.compressors" in g["mpifed.algorithms.second_order.fednl"]  # `from ... import compressors`
    assert "mpifed.driver" in g["mpifed"]  # an import inside a function counts


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize("lower", LOWER)
def test_lower_layers_never_import_the_configuration_or_the_driver(lower):
    bad = {f"{m} -> {t}" for m, targets in graph().items() if m == lower or m.startswith(lower + ".")
           for t in targets if any(t == top or t.startswith(top + ".") for top in TOP)}
    assert not bad


def test_algorithms_are_grouped_by_family():
    folder = PACKAGE / "algorithms"
    assert sorted(p.name for p in folder.glob("*.py")) == ["__init__.py", "base.py"]
    assert {p.name for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "first_order", "second_order", "hessian_free", "approx_newton", "networks", "proximal", "riemannian", "lmo", "inclusion"}
