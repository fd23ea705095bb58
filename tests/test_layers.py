"""The layers of mwork are true: no import cycle, no upward import.

The layer table is the ```layers block of docs/ARCHITECTURE.md (read here, so the page and this
test cannot disagree). The import graph is built from the source with ``ast``, nothing imported:
every ``import`` / ``from ... import`` anywhere in a module (inside functions too), relative imports
resolved, ``from pkg import name`` counting the submodule ``pkg.name`` when there is one (else
``pkg``), imports under ``if TYPE_CHECKING:`` left out. Upward imports and cycles that remain
in code owned elsewhere are listed below with their reasons; a listed one that no longer occurs
fails too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "mwork"
DOC = ROOT / "docs" / "ARCHITECTURE.md"

#: (importer, imported, why): upward imports that remain, each to go (then remove it here)
KNOWN_EXCEPTIONS: list[tuple[str, str, str]] = [
]

#: (the modules of one cycle, why): cycles that remain, each to go (then remove it here)
KNOWN_CYCLES: list[tuple[frozenset[str], str]] = [
]


# ---- the import graph ------------------------------------------------------------------------------


def find_modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` of every module of ``package`` under ``src``."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside the body of an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skip.update(id(n) for n in ast.walk(statement))
    return skip


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` within ``package`` (see the module docstring)."""
    modules = find_modules(src, package)

    def resolve(name: str) -> str | None:  # a name inside a module (``pkg.mod.func``) -> that module
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skip = _type_checking_nodes(tree)
        here = module if is_package else module.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                for alias in node.names:  # a submodule, else a name defined in ``source``
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                if target.split(".")[0] != package:
                    continue
                found = resolve(target)
                if found and found != module:
                    edges[found] = min(edges.get(found, node.lineno), node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


# ---- the layer table ---------------------------------------------------------------------------------


def read_layers(text: str | None = None) -> list[tuple[str, list[str]]]:
    """``[(layer, [module names and globs])]``, top first, from the ```layers block."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    blocks = re.findall(r"^```layers\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 1, f"{DOC} must hold exactly one ```layers block, found {len(blocks)}"
    layers: list[tuple[str, list[str]]] = []
    for line in blocks[0].splitlines():
        content = line.split("#", 1)[0].rstrip()
        if not content.strip():
            continue
        if content[0].isspace():
            assert layers, f"a continuation line before the first layer: {line!r}"
            layers[-1][1].extend(content.split())
            continue
        name, colon, patterns = content.partition(":")
        assert colon and name.strip() and " " not in name.strip(), f"not 'layer: modules': {line!r}"
        layers.append((name.strip(), patterns.split()))
    names = [name for name, _ in layers]
    assert len(set(names)) == len(names), f"a layer named twice: {names}"
    return layers


def assign_layers(modules: list[str], layers: list[tuple[str, list[str]]]) -> tuple[dict[str, int], list[str]]:
    """``({module: layer number, 0 = top}, problems)``: a module named outright belongs to that
    layer, else to the first layer (top first) with a glob that matches it."""
    problems = []
    exact: dict[str, int] = {}
    for i, (name, patterns) in enumerate(layers):
        for p in patterns:
            if not any(c in p for c in "*?["):
                if p in exact:
                    problems.append(f"{p} is named in two layers: {layers[exact[p]][0]} and {name}")
                exact[p] = i
    level: dict[str, int] = {}
    for m in modules:
        if m in exact:
            level[m] = exact[m]
            continue
        for i, (_, patterns) in enumerate(layers):
            if any(fnmatch.fnmatchcase(m, p) for p in patterns):
                level[m] = i
                break
        else:
            problems.append(f"{m} is in no layer: add it to the ```layers block of docs/ARCHITECTURE.md")
    for name, patterns in layers:
        for p in patterns:
            if not any(fnmatch.fnmatchcase(m, p) for m in modules):
                problems.append(f"layer {name}: {p!r} names no module (gone or misspelt?)")
    return level, problems


def upward_imports(graph: dict[str, dict[str, int]], level: dict[str, int]) -> dict[tuple[str, str], int]:
    """``{(importer, imported): line}`` where the imported module's layer is above the importer's."""
    return {(m, t): line for m, targets in graph.items() for t, line in targets.items()
            if m in level and t in level and level[t] < level[m]}


# ---- the tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


@pytest.fixture(scope="module")
def layers() -> list[tuple[str, list[str]]]:
    return read_layers()


def _where(module: str, line: int) -> str:
    path, _ = find_modules()[module]
    return f"{path.relative_to(ROOT)}:{line}"


def test_every_module_is_in_exactly_one_layer(graph, layers):
    _, problems = assign_layers(sorted(graph), layers)
    assert not problems, "\n".join(problems)


def test_no_import_cycle(graph):
    found = set(cycles(graph))
    known = {c for c, _ in KNOWN_CYCLES}
    new = [", ".join(sorted(c)) for c in found - known]
    fixed = [", ".join(sorted(c)) for c in known - found]
    messages = [f"import cycle of {len(c.split(', '))}: {c}" for c in sorted(new)]
    messages += [f"no longer a cycle (remove it from KNOWN_CYCLES): {c}" for c in sorted(fixed)]
    assert not messages, "\n".join(messages)


def test_no_upward_import(graph, layers):
    level, _ = assign_layers(sorted(graph), layers)
    names = [name for name, _ in layers]
    up = upward_imports(graph, level)
    known = {(a, b) for a, b, _ in KNOWN_EXCEPTIONS}
    messages = [f"{_where(a, line)}: {a} ({names[level[a]]}) imports {b} ({names[level[b]]}), a layer above it"
                for (a, b), line in sorted(up.items()) if (a, b) not in known]
    messages += [f"{a} no longer imports {b} upward: remove it from KNOWN_EXCEPTIONS"
                 for a, b in sorted(known - set(up))]
    assert not messages, "\n".join(messages)


def test_the_known_lists_are_well_formed():
    pairs = [(a, b) for a, b, _ in KNOWN_EXCEPTIONS]
    assert len(set(pairs)) == len(pairs), "an exception listed twice"
    assert all(why.strip() for *_, why in KNOWN_EXCEPTIONS), "every exception says why"
    assert all(len(c) > 1 and why.strip() for c, why in KNOWN_CYCLES), "every cycle has 2+ modules and a reason"


# ---- the checker itself, on a made-up package ---------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_graph_counts_every_kind_of_import(tmp_path):
    src = _package(tmp_path, {
        "__init__.py": "from pkg.top import run\n",
        "top.py": "def run():\n    from .low import helper  # inside a function\n    return helper()\n",
        "low.py": "from typing import TYPE_CHECKING\nimport pkg.base\nif TYPE_CHECKING:\n    from pkg.top import run\n"
                  "def helper():\n    return pkg.base.VALUE\n",
        "base.py": "VALUE = 1\n",
        "sub/__init__.py": "from .. import base\nfrom . import leaf\nfrom pkg.sub.leaf import name\n",
        "sub/leaf.py": "from pkg import low\nname = 1\n",
    })
    graph = import_graph(src, "pkg")
    assert graph["pkg"] == {"pkg.top": 1}
    assert graph["pkg.top"] == {"pkg.low": 2}  # a function-level, relative import
    assert graph["pkg.low"] == {"pkg.base": 2}  # the TYPE_CHECKING import left out
    assert graph["pkg.sub"] == {"pkg.base": 1, "pkg.sub.leaf": 2}  # submodules, not the package
    assert graph["pkg.sub.leaf"] == {"pkg.low": 1}
    assert cycles(graph) == []
    graph["pkg.base"] = {"pkg.top": 1}
    assert cycles(graph) == [frozenset({"pkg.top", "pkg.low", "pkg.base"})]


def test_the_layer_table_is_read_and_applied():
    text = ("intro\n```layers\n# top\napp: pkg.cli pkg.*  # the rest\nlow:  pkg.base\n     pkg.util\n```\n")
    layers = read_layers(text)
    assert layers == [("app", ["pkg.cli", "pkg.*"]), ("low", ["pkg.base", "pkg.util"])]
    level, problems = assign_layers(["pkg.cli", "pkg.base", "pkg.util", "pkg.mid"], layers)
    assert level == {"pkg.cli": 0, "pkg.base": 1, "pkg.util": 1, "pkg.mid": 0} and not problems
    graph = {"pkg.cli": {"pkg.base": 1}, "pkg.base": {"pkg.mid": 3}, "pkg.util": {}, "pkg.mid": {}}
    assert upward_imports(graph, level) == {("pkg.base", "pkg.mid"): 3}
    _, problems = assign_layers(["pkg.x"], [("a", ["pkg.x", "pkg.gone"]), ("b", ["pkg.x"])])
    assert any("two layers" in p for p in problems) and any("pkg.gone" in p for p in problems)
    _, problems = assign_layers(["other.y"], layers)
    assert any("other.y is in no layer" in p for p in problems)
