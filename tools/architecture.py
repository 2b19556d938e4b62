"""The project's import graph, read from the source: module sizes, arrows, circles, layers.

    python -m tools.architecture            # sizes, import circles, arrows that point up
    python -m tools.architecture --edges    # every arrow, module -> modules it imports

Every ``import`` counts, also those inside functions (a lazy import hides a circle from
Python's loader, not from a reader). Packages count as their ``__init__`` module. The
layers of ``mech`` are `mech.architecture.LAYERS` (bottom first), described in ARCHITECTURE.md: a module may
import from its own layer or below, never above. ``tests/test_architecture.py`` keeps both
rules.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mech", "studies", "bench")



def _layers(root: Path = ROOT):
    """`mech.architecture.LAYERS` read from the file alone: no need to import mech (torch)."""
    spec = importlib.util.spec_from_file_location("_mech_architecture", root / "mech" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LAYERS


LAYERS = _layers()



def modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """``{dotted name: path}`` of every module of ``packages`` (``__init__`` as the package)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module ``name`` starts with (``mech.x.y`` -> ``mech.x``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from . import x`` names submodule x when there is one
            names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                found.add(target)
    return found


def graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    sys.setrecursionlimit(max(1000, 10 * len(edges)))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer in `LAYERS` (None: not a ``mech`` module)."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    return None if best is None else best[0]


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a mech module imports from a layer above its own.
    The package ``__init__`` files of a layer import their own modules only, so they are
    judged as their layer; ``mech`` itself (the top) may import anything."""
    bad = []
    for module, targets in edges.items():
        own = layer_of(module)
        if own is None:
            continue
        for target in targets:
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                bad.append((module, target))
    return sorted(bad)


def unlayered(edges: dict[str, set[str]]) -> list[str]:
    return sorted(m for m in edges if m.startswith("mech") and layer_of(m) is None)


def sizes(root: Path = ROOT, packages=PACKAGES) -> dict[str, int]:
    return {name: len(path.read_text().splitlines()) for name, path in modules(root, packages).items()}


def long_without_reason(limit: int = 400, root: Path = ROOT, packages=PACKAGES) -> list[tuple[str, int]]:
    """Modules over ``limit`` lines whose docstring does not say why they are one piece
    (a line starting ``One piece:``)."""
    out = []
    for name, path in modules(root, packages).items():
        text = path.read_text()
        n = len(text.splitlines())
        if n > limit:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "One piece:" not in doc:
                out.append((name, n))
    return sorted(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.architecture", description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", action="store_true", help="print every arrow")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout to read (default: this one)")
    args = ap.parse_args(argv)
    edges = graph(args.root)
    size = sizes(args.root)
    print(f"{len(edges)} modules, {sum(size.values())} lines")
    for name, n in sorted(size.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {n:5d}  {name}")
    if args.edges:
        for name in sorted(edges):
            print(f"{name} -> {', '.join(sorted(edges[name])) or '-'}")
    found = circles(edges)
    print(f"import circles: {len(found)}")
    for part in found:
        print("  " + " <-> ".join(part))
    bad = upward(edges)
    print(f"arrows pointing up a layer: {len(bad)}")
    for a, b in bad:
        print(f"  {a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})")
    loose = unlayered(edges)
    if loose:
        print(f"mech modules in no layer: {', '.join(loose)}")
    long = long_without_reason(root=args.root)
    print(f"modules over 400 lines without a stated reason: {len(long)}")
    for name, n in long:
        print(f"  {n:5d}  {name}")
    return 1 if found or bad or loose or long else 0


if __name__ == "__main__":
    sys.exit(main())
