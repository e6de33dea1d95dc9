"""No import cycles in aline/: the module graph built from every import statement in the source, checked
for strongly connected components larger than one module.

Imports inside functions and under ``if TYPE_CHECKING:`` count too: a lazy import only hides a cycle
until the function runs, and a type-only one is still two modules that each need the other. Importing a
submodule runs its package's ``__init__`` first, but that is no edge of the submodule's own.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "aline"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of this package that it imports (a ``from pkg import name`` counts as an
    import of ``pkg.name`` when that is a module, else of ``pkg``)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package upwards
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                # `import aline.x.y` names aline.x.y; keep the longest prefix that is one of our modules.
                parts = target.split(".")
                while parts and ".".join(parts) not in files:
                    parts.pop()
                if parts and ".".join(parts) != name:
                    graph[name].add(".".join(parts))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out)


def test_aline_has_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and graph["aline.train"], "the graph should cover the whole package"
    assert cycles(graph) == []


def test_the_graph_sees_a_cycle_through_an_import_inside_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "aline"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from aline.sub import a\n")
    (pkg / "sub" / "a.py").write_text("from aline.sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import aline.d\nimport aline.sub\n"
    )
    (pkg / "d.py").write_text("import aline.c\n")
    graph = import_graph(pkg)
    assert graph["aline.sub.b"] == {"aline.sub.a"}  # relative import inside a function
    assert graph["aline.c"] == {"aline.d", "aline.sub"}  # a type-only import is an edge too
    assert cycles(graph) == [["aline.c", "aline.d"], ["aline.sub.a", "aline.sub.b"]]
