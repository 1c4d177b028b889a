#!/usr/bin/env python3
"""The layer contract of ../shared/DESIGN.md, checked on the source (run by .ci/run and by a test).

Reads ``[tool.matchlens.architecture]`` from pyproject.toml:
- ``layers``: top to bottom; a module may import its own layer's package and any lower layer,
  never a higher one; packages in one layer joined by ``|`` are independent (may not import
  each other). Every import counts, at the top of a file or inside a function.
- ``deferred``: the only modules that may be imported inside a function (for start-up time),
  each with its reason; a key ``"IMPORTER -> TARGET"`` allows it in IMPORTER (and its submodules)
  only. Every other import stands at the top of its file.
Also reports import cycles between packages. Exit status 1 on any violation.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "matchlens"


def load_contract() -> tuple[list[list[str]], dict[str, str]]:
    """(layers top to bottom, each a list of module names; deferred module → reason)."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["matchlens"]["architecture"]
    layers = [[name.strip() for name in layer.split("|")] for layer in conf["layers"]]
    return layers, dict(conf["deferred"])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement of a file."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, nested) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(name, is_package, child.level, child.module)
                found.append((base, child.lineno, nested))
                # "from matchlens.x import y" may import the submodule y
                found.extend((f"{base}.{a.name}", child.lineno, nested) for a in child.names
                             if _is_module(f"{base}.{a.name}"))
            elif not _type_checking_block(child):
                visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _is_module(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def deferred_ok(importer: str, target: str, deferred: dict[str, str]) -> bool:
    """True when ``target`` may be imported inside a function of ``importer``."""
    for key in deferred:
        who, arrow, what = key.partition("->")
        if arrow and _within(importer, who.strip()) and _within(target, what.strip()):
            return True
        if not arrow and _within(target, key.strip()):
            return True
    return False


def layer_of(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer number, its member) of the longest layer member that ``module`` is or is inside of."""
    best = None
    for number, layer in enumerate(layers):
        for member in layer:
            if module == member or (member != PACKAGE and module.startswith(member + ".")):
                if best is None or len(member) > len(best[1]):
                    best = (number, member)
    return best


def check() -> list[str]:
    layers, deferred = load_contract()
    problems: list[str] = []
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        source = module_name(path)
        mine = layer_of(source, layers)
        if mine is None:
            problems.append(f"{path.relative_to(ROOT)}: module {source} is in no layer of the contract")
            continue
        for target, line, nested in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if nested and not deferred_ok(source, target, deferred):
                problems.append(f"{where}: import of {target} inside a function (move it to the top, or list it "
                                "under [tool.matchlens.architecture.deferred] with the reason)")
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            theirs = layer_of(target, layers)
            if theirs is None or theirs[1] == mine[1]:
                continue
            graph[mine[1]].add(theirs[1])
            if theirs[0] < mine[0]:
                problems.append(f"{where}: {source} (layer {mine[1]}) imports {target}, a higher layer ({theirs[1]})")
            elif theirs[0] == mine[0]:
                problems.append(f"{where}: {source} imports {target}; {mine[1]} and {theirs[1]} are independent")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Elementary cycles between layer members (depth-first; each reported once)."""
    found, seen = [], set()
    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            elif len(path) < 12:
                walk(nxt, path + [nxt])
    for start in sorted(graph):
        walk(start, [start])
    return found


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    layers, deferred = load_contract()
    print(f"architecture: {len(problems)} violation(s); {len(layers)} layers, {len(deferred)} deferred modules")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
