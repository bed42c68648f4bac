"""A static map of a source tree's imports and sizes, read with `ast` (nothing is imported).

tests/unit/test_architecture.py holds the project's layout rules against this map; the checker
itself is tested on small synthetic packages there, so each rule is known to be able to fail.

Every `import` statement counts, wherever it sits: at module level, in a class body, inside a
function (`in_function`), in a `try`. Imports under `if TYPE_CHECKING:` are marked `type_only`:
they never run, so they make no cycle and put nothing on a run path.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Third-party packages a runtime install may lack, or that only an optional feature needs: a
# function-level import may defer them. aiohttp is the operator console's web server: `run`
# loads it (and the console) only with --console, since importing it is a large part of the
# start-up of every run without one (docs/benchmark.md). Everything else that `run` needs still
# sits at the top of its modules.
OPTIONAL_DEPENDENCIES = frozenset(
    {"aiohttp", "gi", "jetson_inference", "jetson_utils", "torch", "torchvision"}
)


@dataclass(frozen=True)
class Import:
    """One imported name, resolved to the module that executes (`a.b` for `from a.b import f`,
    `a.b.c` for `from a.b import c` when c is a module)."""

    source: str
    target: str
    line: int
    in_function: bool
    type_only: bool


@dataclass(frozen=True)
class Function:
    """A function or method, with its length in source lines (decorators excluded)."""

    module: str
    qualname: str
    line: int
    lines: int


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int
    imports: list[Import] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)


class ImportMap:
    """Modules of the packages under `root` and everything they import."""

    def __init__(self, root: Path, packages: Sequence[str]) -> None:
        self.root = root
        self.modules: dict[str, Module] = {}
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                rel = path.relative_to(root).with_suffix("")
                parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
                name = ".".join(parts)
                self.modules[name] = Module(
                    name, path, rel.name == "__init__", len(path.read_text().splitlines())
                )
        for module in self.modules.values():
            _Visitor(self, module).visit(ast.parse(module.path.read_text(), str(module.path)))

    def is_project(self, name: str) -> bool:
        return name in self.modules

    def resolve(self, module: Module, level: int, name: str | None) -> str:
        """The absolute module name of `from <level dots><name> import ...` inside `module`."""
        if level == 0:
            return name or ""
        parts = module.name.split(".")
        base = parts if module.is_package else parts[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join([*base, name] if name else base)

    def edges(self, *, with_functions: bool = True) -> Iterator[Import]:
        """Every executed import, function-level ones included unless told otherwise."""
        for module in self.modules.values():
            for imp in module.imports:
                if imp.type_only or (imp.in_function and not with_functions):
                    continue
                yield imp

    def runs(self, imp: Import) -> list[str]:
        """The project modules an import executes: its target and the packages above it."""
        parts = imp.target.split(".")
        names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return [n for n in names if n in self.modules]

    def top_level_closure(self, start: str) -> set[str]:
        """Every module (project or not) loaded by importing `start`, module-level imports only."""
        loaded = {start}
        visited: set[str] = set()
        todo = [start]
        while todo:
            name = todo.pop()
            if name in visited or name not in self.modules:
                continue
            visited.add(name)
            for imp in self.modules[name].imports:
                if not (imp.in_function or imp.type_only):
                    loaded.add(imp.target)
                    todo.extend(self.runs(imp))
        return loaded


class _Visitor(ast.NodeVisitor):
    def __init__(self, imports: ImportMap, module: Module) -> None:
        self.map = imports
        self.module = module
        self.scope: list[str] = []
        self.functions = 0
        self.type_only = 0

    def _add(self, target: str, line: int) -> None:
        self.module.imports.append(
            Import(self.module.name, target, line, self.functions > 0, self.type_only > 0)
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.map.resolve(self.module, node.level, node.module)
        for alias in node.names:
            child = f"{base}.{alias.name}"
            self._add(child if self.map.is_project(child) else base, node.lineno)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        self.type_only += guarded
        for child in node.body:
            self.visit(child)
        self.type_only -= guarded
        for child in node.orelse:
            self.visit(child)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        end = node.end_lineno or node.lineno
        self.module.functions.append(
            Function(self.module.name, ".".join(self.scope), node.lineno, end - node.lineno + 1)
        )
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()


def within(name: str, prefixes: Iterable[str]) -> bool:
    """True when `name` is one of `prefixes` or a module inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cycles(imports: ImportMap, package: str) -> list[list[str]]:
    """Import cycles among the modules of `package` (Tarjan's strongly connected components),
    function-level imports included; each cycle as its sorted module names."""
    graph: dict[str, set[str]] = {m: set() for m in imports.modules if within(m, [package])}
    for imp in imports.edges():
        if imp.source in graph and imp.target in graph:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def forbidden_reachable(
    imports: ImportMap, roots: Iterable[str], forbidden: Iterable[str]
) -> list[str]:
    """Chains `root:line -> module:line -> forbidden` for every forbidden import reachable
    from `roots` through project imports, function-level ones included."""
    forbidden = tuple(forbidden)
    parent: dict[str, Import | None] = {}
    todo = []
    for root in roots:
        parent[root] = None
        todo.append(root)
    found: list[str] = []
    while todo:
        name = todo.pop(0)
        for imp in imports.modules[name].imports:
            if imp.type_only:
                continue
            if within(imp.target, forbidden):
                found.append(f"{_chain(parent, imp)} -> {imp.target}")
                continue
            for nxt in imports.runs(imp):
                if nxt not in parent:
                    parent[nxt] = imp
                    todo.append(nxt)
    return sorted(set(found))


def _chain(parent: dict[str, Import | None], last: Import) -> str:
    """`root:line -> module:line -> ...`: each module with the line that imports the next."""
    steps: list[str] = []
    via: Import | None = last
    while via is not None:
        steps.append(f"{via.source}:{via.line}")
        via = parent[via.source]
    return " -> ".join(reversed(steps))


def backend_violations(imports: ImportMap, backends: Mapping[str, Iterable[str]]) -> list[str]:
    """For each stage package and its backend modules: a backend that does not import the
    stage's `base` contract, a backend importing another backend, or `base` importing a backend."""
    found = []
    for stage, names in backends.items():
        members = {f"{stage}.{n}" for n in names}
        base = f"{stage}.base"
        for member in sorted(members):
            targets = {i.target for i in imports.modules[member].imports if not i.type_only}
            if base not in targets:
                found.append(f"{member}: a backend that does not import {base}")
        for imp in imports.edges():
            if imp.source == base and imp.target in members:
                found.append(f"{base} line {imp.line}: the contract imports {imp.target}")
            elif imp.source in members and imp.target in members and imp.target != imp.source:
                found.append(f"{imp.source} line {imp.line}: a backend imports {imp.target}")
    return sorted(found)


def function_level_imports(imports: ImportMap, exempt: Iterable[str] = ()) -> list[str]:
    """Project imports inside function bodies that do not defer an optional dependency.

    A function-level import is allowed when the imported module loads one of
    OPTIONAL_DEPENDENCIES at its top (`gi` via pipeline.gstreamer, `jetson_inference`, torch for
    a CLI verb) that the importing module does not already load at its own top.
    """
    exempt = set(exempt)
    found = []
    for imp in imports.edges():
        if not imp.in_function or not imports.is_project(imp.target) or imp.source in exempt:
            continue
        needed = _optional(imports.top_level_closure(imp.target))
        if needed - _optional(imports.top_level_closure(imp.source)):
            continue
        found.append(f"{imp.source} line {imp.line}: imports {imp.target} inside a function")
    return sorted(set(found))


def _optional(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names} & OPTIONAL_DEPENDENCIES


def long_modules(imports: ImportMap, max_lines: int) -> dict[str, int]:
    return {m.name: m.lines for m in imports.modules.values() if m.lines > max_lines}


def long_functions(imports: ImportMap, max_lines: int) -> dict[str, int]:
    return {
        f"{f.module}.{f.qualname}": f.lines
        for m in imports.modules.values()
        for f in m.functions
        if f.lines > max_lines
    }
