"""The package's layering, as docs/architecture.md states it: at import time, nothing below
imports anything above. The core (bookkeeping, policies, scheduler, device layer, kernels)
imports no engine, simulator, server or integration; the engine and the simulator import
only the core (never each other); the server builds on the engine. Entry points may reach
up lazily (inside a function), and only the ones listed here do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kvsaga

PACKAGE = Path(kvsaga.__file__).parent

# What each part may import at module level (the part itself and the ones below it).
ALLOWED = {
    "core": {"core"},
    "engine": {"core", "engine"},
    "sim": {"core", "sim"},
    "cli": {"core", "cli"},
    "serve": {"core", "engine", "cli", "serve"},
    "integrations": {"core", "engine", "serve", "integrations"},
}

# Upward imports inside functions: each opens a feature on first use.
LAZY_UPWARD = {
    ("kvsaga", "engine"),  # kvsaga.LLM / SamplingParams, resolved by __getattr__
    ("kvsaga.cli", "engine"),  # `kvsaga generate` / `chat`
    ("kvsaga.cli", "sim"),  # `kvsaga sim`
    ("kvsaga.serve.replicas", "integrations"),  # kvsaga-serve --replicas N (Ray Serve)
}


def _part(module: str) -> str:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return name if name in ALLOWED else "core"


def _module_name(path: Path) -> str:
    parts = ("kvsaga", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    """The kvsaga modules one import statement names (`from kvsaga import x` names x)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "kvsaga"]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".")[: len(module.split(".")) - node.level + is_pkg]
        base = ".".join([*anchor, *([base] if base else [])])
    if base.split(".")[0] != "kvsaga":
        return []
    if base == "kvsaga":
        return [f"kvsaga.{a.name}" for a in node.names]
    return [base]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(target module, at module level?) for every kvsaga import in `path`."""
    module, is_pkg = _module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    in_function = {
        id(n)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(fn)
    }
    return [
        (t, id(n) not in in_function)
        for n in ast.walk(tree)
        for t in _targets(n, module, is_pkg)
    ]


def test_nothing_below_imports_anything_above():
    violations = []
    lazy_seen = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        src = _part(module)
        for target, module_level in _imports(path):
            dst = _part(target)
            if dst in ALLOWED[src]:
                continue
            if not module_level and (module, dst) in LAZY_UPWARD:
                lazy_seen.add((module, dst))
                continue
            where = "module level" if module_level else "inside a function"
            violations.append(f"{module} ({src}) imports {target} ({dst}) at {where}")
    assert not violations, "\n".join(violations)
    # The exceptions are real: one that no longer happens is dropped from the list.
    assert lazy_seen == LAZY_UPWARD


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a core module importing the engine is caught."""
    bad = PACKAGE / "pool.py"
    tree_imports = _imports(bad)
    assert all(_part(t) == "core" for t, _ in tree_imports)
    fake = tmp_path / "pool.py"
    fake.write_text("from kvsaga.engine import llm\n")
    # Same parsing as for the package's files; only the location differs.
    node = ast.parse(fake.read_text()).body[0]
    assert _part(_targets(node, "kvsaga.pool", False)[0]) == "engine"
    assert "engine" not in ALLOWED["core"]
