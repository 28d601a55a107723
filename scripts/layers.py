#!/usr/bin/env python3
"""The import graph of the imagefs package: its layers, upward imports, cycles.

Reads every module under ``imagefs/`` (without importing any), collects the
imports of other imagefs modules (at module level and inside functions: a
lazy import is a dependency too), and prints:

- the layers: each module on the lowest layer above everything it imports
  (layer 0 imports nothing of imagefs);
- each import that points upward against ``LAYERS`` below, the layering
  ``imagefs/__init__.py`` draws (a module imports only its own group or
  groups below it);
- each cycle (a strongly connected set of modules), between modules and
  between packages (``sources`` and everything in it counted as one).

Imports under ``if TYPE_CHECKING:`` are left out: they serve annotations and
are never made at run time (``flights`` and ``streams`` name each other's types).

Exits 1 if there is a cycle or an upward import, else 0.

    scripts/layers.py [--root DIR]     (default: the tree this script is in)
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import sys
from pathlib import Path

#: The intended layering, top to bottom: groups of module patterns (dotted
#: names below ``imagefs``).  A module may import modules of its own group and
#: of groups below it.  Keep in step with the picture in imagefs/__init__.py.
LAYERS: list[tuple[str, list[str]]] = [
    ("package surface", ["__init__"]),
    ("entry points", ["__main__", "cli", "fstab"]),
    ("commands", ["commands", "commands.*", "mount", "daemon", "prewarm", "profilectl",
                  "status", "cachectl"]),
    ("command support", ["connect", "output", "progress", "control", "notify",
                         "mountpoint", "logflood", "malloc", "argv_token"]),
    ("fuse adapter", ["fuse_ops"]),
    ("filesystem", ["fs", "handles", "listing", "inodes", "times", "names", "nova", "holder",
                    "takeover", "survive*"]),
    ("data path", ["profiles", "profiles_published", "prefetch", "blocks", "flights", "warm",
                   "streams", "image"]),
    ("cache", ["cache", "cache.*"]),
    ("image api", ["api", "download"]),
    ("sources", ["sources", "sources.*"]),
    ("drivers", ["drivers", "drivers.*"]),
    ("foundations", ["errors", "retry", "records", "context", "ids", "atomic", "config",
                     "metrics"]),
]
#: Imports of the package itself (``from . import __version__``) take only what
#: ``imagefs/__init__.py`` defines before its own imports: not an upward import.
#: A cycle through it is still reported.
SURFACE = "__init__"


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.AST) -> bool:
    """Whether ``node`` is an ``if TYPE_CHECKING:`` block."""
    return isinstance(node, ast.If) and (
        isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        or isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The imagefs modules ``path`` (module ``name``) imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    # The package a relative import starts from.
    here = name.split(".") if is_package and name != "__init__" else name.split(".")[:-1]
    if name == "__init__":
        here = []
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted:  # the longest prefix that is a module
            if dotted in modules:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return "__init__"

    for node in list(ast.walk(tree)):
        if _type_checking(node):  # annotations only: never imported at run time
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "imagefs" or alias.name.startswith("imagefs."):
                    found.add(resolve(alias.name.partition(".")[2]) or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "imagefs" or node.module.startswith("imagefs.")):
                prefix = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:  # ``from . import x`` may name a module
                candidate = f"{prefix}.{alias.name}" if prefix else alias.name
                found.add(candidate if candidate in modules else resolve(prefix) or "__init__")
    found.discard(name)
    return found


def layer_of(name: str) -> int | None:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def levels(graph: dict[str, set[str]], stuck: set[str]) -> dict[str, int]:
    """Each module's level: 1 + the highest level it imports (cycles left out)."""
    level: dict[str, int] = {}

    def of(v: str, seen: tuple = ()) -> int:
        if v in level:
            return level[v]
        deps = [w for w in graph[v] if w not in stuck and w not in seen]
        level[v] = 1 + max((of(w, seen + (v,)) for w in deps), default=-1)
        return level[v]
    for v in graph:
        if v not in stuck:
            of(v)
    return level


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="the source tree (holding imagefs/)")
    args = p.parse_args(argv)
    package = args.root / "imagefs"
    paths = {module_name(f, package): f for f in sorted(package.rglob("*.py"))
             if "__pycache__" not in f.parts}
    modules = set(paths)
    graph = {name: imports(path, name, modules) & modules for name, path in paths.items()}

    found = cycles(graph)
    stuck = {m for group in found for m in group}
    packages: dict[str, set[str]] = {}
    for a, deps in graph.items():
        packages.setdefault(a.partition(".")[0], set()).update(
            b.partition(".")[0] for b in deps if b.partition(".")[0] != a.partition(".")[0])
    found += [[f"{p} (package)" for p in group] for group in cycles(packages)
              if not any(set(group) == {m.partition(".")[0] for m in g} for g in found)]
    level = levels(graph, stuck)
    print("Layers (each module above everything it imports; 0 imports nothing of imagefs):")
    for n in range(max(level.values(), default=-1) + 1):
        names = sorted(m for m, lv in level.items() if lv == n)
        print(f"  {n:2d}: {', '.join(names)}")

    print("\nIntended groups (imagefs/__init__.py), top to bottom:")
    unplaced = sorted(m for m in modules if layer_of(m) is None)
    for i, (label, _) in enumerate(LAYERS):
        names = sorted(m for m in modules if layer_of(m) == i)
        print(f"  {label}: {', '.join(names) or '-'}")
    if unplaced:
        print(f"  (in no group: {', '.join(unplaced)})")

    upward = sorted((a, b) for a, deps in graph.items() for b in deps
                    if b != SURFACE and layer_of(a) is not None and layer_of(b) is not None
                    and layer_of(b) < layer_of(a))
    print(f"\nUpward imports: {len(upward)}")
    for a, b in upward:
        print(f"  {a} -> {b}  ({LAYERS[layer_of(a)][0]} imports {LAYERS[layer_of(b)][0]})")
    print(f"Cycles: {len(found)}")
    for group in found:
        print(f"  {' <-> '.join(group)}")
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main())
