"""Every relative import in gitsync names a module that exists, those inside functions too (they run
only when their branch does, so a moved module can break one that no other test reaches)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_relative_import_resolves() -> None:
    missing = []
    for path in sorted((ROOT / "gitsync").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = list(parts if parts[-1] == "__init__" else parts[:-1])
        if parts[-1] == "__init__":
            package = package[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                try:
                    importlib.import_module(target)
                except ImportError as exc:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target}: {exc}")
    assert not missing, "\n".join(missing)


# The folders are layers: each may import from its own and from those before it, never from those
# after. The foundations (core, adapters, kinds, compose) are one layer; the runtimes' watches name
# what the agent hands them, for its type only (under TYPE_CHECKING).
LAYERS = (("core", "adapters", "kinds", "compose"), ("runtimes",), ("reconcile",), ("agent",), ("http",), ("cli", "__main__"))


def _layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def _imports(tree: ast.AST, package: list[str]) -> list[tuple[int, str]]:
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in typing_only:
            base = package[: len(package) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            for alias in node.names:  # `from .. import kinds` names a module
                out.append((node.lineno, f"{target}.{alias.name}" if _layer(f"{target}.{alias.name}") is not None and target.count(".") == 0 else target))
    return out


def test_no_folder_imports_from_a_layer_above_it() -> None:
    wrong = []
    for path in sorted((ROOT / "gitsync").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = list(parts[:-1])
        me = _layer(".".join(parts))
        if me is None:
            continue
        for line, target in _imports(ast.parse(path.read_text()), package):
            them = _layer(target) if target.startswith("gitsync") else None
            if them is not None and them > me:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {target} ({'/'.join(LAYERS[them])} is above {'/'.join(LAYERS[me])})")
    assert not wrong, "\n".join(wrong)
