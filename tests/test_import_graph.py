"""The package's import graph has no cycles (read with ``ast``; nothing is imported).

An edge ``a -> b`` is an import that runs when module ``a`` is imported: a statement at module
level or in a class body, including inside ``try`` / ``if``, but not under ``if TYPE_CHECKING:``
and not inside a function (a deferred import). ``from pkg import name`` points at the submodule
``pkg.name`` when there is one, else at ``pkg`` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module, deferred: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run at import time (not in functions, not under TYPE_CHECKING);
    with ``deferred``, those inside functions too."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.With):
                visit(node.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            elif deferred and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node.body)
            elif deferred and isinstance(node, ast.For | ast.While):
                visit(node.body)

    visit(tree.body)
    return found


def import_graph(root: Path, package: str, deferred: bool = False) -> dict[str, set[str]]:
    """``module -> modules of ``package`` it imports at import time`` (with ``deferred``: or
    later, from inside a function)."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in module_level_imports(ast.parse(path.read_text(), str(path)), deferred):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_src_dymo_has_no_import_cycle() -> None:
    graph = import_graph(SRC, "dymo")
    assert len(graph) > 50 and graph["dymo.cli.main"]  # the walk really read the package
    found = cycles(graph)
    assert not found, "import cycles (module-level imports):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_deferred_imports_make_no_cycle_either() -> None:
    """An import moved into a function hides a cycle from Python, not from the design: the
    layers (data, models, recovery, selection, training, baselines, evaluation, cli) stay
    one-directional even counting those."""
    found = cycles(import_graph(SRC, "dymo", deferred=True))
    assert not found, "import cycles through deferred imports:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_cli_command_modules_do_not_import_main() -> None:
    """Command modules export sub-apps; only ``dymo.cli.main`` assembles them (at any level)."""
    for path in (SRC / "dymo" / "cli").glob("*.py"):
        if path.name == "main.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "dymo.cli.main", f"{path.name} imports dymo.cli.main"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"p/__init__.py": "", "p/a.py": "from p import b\n", "p/b.py": "import p.a\n"}, [["p.a", "p.b"]]),
        ({"p/__init__.py": "", "p/a.py": "from p.b import x\n", "p/b.py": "def f():\n    import p.a\n"}, []),
        (
            {
                "p/__init__.py": "",
                "p/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.b\n",
                "p/b.py": "import p.a\n",
            },
            [],
        ),
        ({"p/__init__.py": "from p.a import x\n", "p/a.py": "from p import y\n"}, [["p", "p.a"]]),
        ({"p/__init__.py": "", "p/a.py": "from . import b\n", "p/b.py": "try:\n    from .a import z\nexcept ImportError:\n    pass\n"}, [["p.a", "p.b"]]),
    ],
)
def test_cycle_finder_on_toy_packages(tmp_path: Path, files: dict[str, str], expected: list[list[str]]) -> None:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert cycles(import_graph(tmp_path, "p")) == expected


#: The layers of src/dymo, bottom first: a module imports its own package or lower layers only
#: (deferred imports included). The bottom layer's modules may import one another.
LAYERS = (
    ("dymo.errors", "dymo.config", "dymo.utils"),
    ("dymo.data",),
    ("dymo.models",),
    ("dymo.selection",),
    ("dymo.training",),  # the one training engine: recoverers and baselines train through it
    ("dymo.recovery",),
    ("dymo.baselines",),
    ("dymo.evaluation",),
    ("dymo.inference",),
    ("dymo.demo",),
    ("dymo.cli",),
)


def _layer(module: str) -> tuple[int, str] | None:
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                return i, p
    return None


def test_imports_run_down_the_layers() -> None:
    graph = import_graph(SRC, "dymo", deferred=True)
    unplaced = sorted(m for m in graph if m != "dymo" and _layer(m) is None)
    assert not unplaced, f"add these packages to LAYERS: {unplaced}"
    upward = []
    for a, targets in graph.items():
        la = _layer(a)
        for b in targets:
            lb = _layer(b)
            if la is None or lb is None or la[1] == lb[1]:
                continue
            if lb[0] > la[0] or (lb[0] == la[0] and la[0] > 0):
                upward.append(f"{a} -> {b}")
    order = " < ".join("/".join(p.removeprefix("dymo.") for p in ps) for ps in LAYERS)
    assert not upward, f"imports against the layering ({order}):\n" + "\n".join(sorted(upward))
