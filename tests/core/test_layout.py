"""The package layout: the library never imports the experiments, and no module imports form a cycle.

Both checks read the code's own import statements (module level and inside functions) with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module name imported by ``path`` (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import module"
    return out


def _graph(packages=("onmanifold", "onmanifold_bench")) -> dict[str, set[str]]:
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for mod, path in modules.items():
        graph[mod] = {m for m in _imports(path) if m in modules and m != mod}
    return graph


def test_the_library_never_imports_the_experiments():
    graph = _graph()
    offenders = {m: sorted(d for d in deps if d.split(".")[0] == "onmanifold_bench")
                 for m, deps in graph.items() if m.split(".")[0] == "onmanifold" and m != "onmanifold.cli"}
    offenders = {m: d for m, d in offenders.items() if d}
    assert not offenders, f"library modules import the experiment package: {offenders}"


def test_the_command_line_reaches_the_experiments_only_lazily():
    tree = ast.parse((ROOT / "onmanifold" / "cli.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level for a in n.names] + [getattr(n, "module", "") or "" for n in top_level]
    assert not any(str(x).startswith("onmanifold_bench") for x in names)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _without_package_reexports(graph):
    """A package ``__init__`` that re-exports its submodules is not a cycle with them."""
    return {m: {d for d in deps if not (m.startswith(d + ".") and graph.get(d) is not None)} for m, deps in graph.items()}


def test_no_import_cycles():
    graph = _without_package_reexports(_graph())
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_finds_a_cycle():
    assert _strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) != [["a"], ["b"], ["c"]]
    assert sorted(map(sorted, _strongly_connected({"a": {"b"}, "b": {"a"}}))) == [["a", "b"]]
