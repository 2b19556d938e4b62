"""The code that makes records, identified by content: which modules, and their digest.

Every chunk fingerprint holds `identity()`, so a chunk made by other code is never reused
silently (`mech.store` recomputes it, or reuses it only when asked and says so):

* ``source_sha256``: sha256 over the modules that make records, `RECORD_MODULES` (the
  rules, model, primitives, decoders and runner layers of ARCHITECTURE.md: everything a
  record's prediction, score or timing can depend on), each as its syntax tree with
  docstrings removed and written back out (`ast.unparse`). Any change to their code
  changes it; comments, docstrings, blank lines and formatting do not. The analysis and
  package layers above the runner (`mech.comparisons`, `mech.discovery`, `mech.plots`,
  `mech.lmms` (the lmms-eval plugin), the package ``__init__``, `mech.demo`, and the zoo's training, evaluation and model card:
  ``mech.zoo`` itself, ``batches``, ``card``, ``card_text``, ``evaluate``, ``train``) only
  read finished records and do not enter it.
* ``mech``: the package version; ``torch``, ``transformers``, ``nnsight``: the versions
  of the libraries that run the generation.

Read from the files the running ``mech`` was imported from, so it holds for an installed
wheel and for a checkout with uncommitted changes alike; computed once per process.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from . import architecture

__all__ = ["RECORD_MODULES", "identity", "record_modules", "source_digest"]

ROOT = Path(__file__).resolve().parent

RECORD_MODULES = architecture.up_to("runner")  # every layer up to and including the runner


def dotted(path: Path, root: Path = ROOT) -> str:
    """``mech/runner/job.py`` -> ``mech.runner.job``; a package's ``__init__`` is the package."""
    parts = ["mech", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def record_modules(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted name: file}`` of the modules under ``root`` (a ``mech`` package folder)
    that `RECORD_MODULES` names: the entry itself or anything below it."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        name = dotted(path, root)
        if any(name == entry or name.startswith(entry + ".") for entry in RECORD_MODULES):
            found[name] = path
    return found


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def source_digest(root: Path = ROOT) -> tuple[str, int]:
    """``(sha256, number of modules)`` over `record_modules` of ``root``: each module's
    name and its code without docstrings, comments or formatting."""
    h = hashlib.sha256()
    modules = record_modules(root)
    for name, path in modules.items():
        tree = _without_docstrings(ast.parse(path.read_bytes(), str(path)))
        h.update(f"{name}\n{ast.unparse(tree)}\n".encode())
    return h.hexdigest(), len(modules)


# Computed once per process. A plain dict, not functools.cache: mech ships by value with
# remote traces, and cloudpickle can only send a cache wrapper by reference.
_IDENTITY: dict = {}


def identity() -> dict:
    """The code identity every chunk fingerprint holds (see the module docstring)."""
    if not _IDENTITY:
        import importlib.metadata

        import nnsight
        import torch
        import transformers

        try:
            version = importlib.metadata.version("mech")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        digest, count = source_digest()
        _IDENTITY.update({"mech": version, "source_sha256": digest, "modules": count, "torch": torch.__version__,
                          "transformers": transformers.__version__, "nnsight": getattr(nnsight, "__version__", "?")})
    return dict(_IDENTITY)
