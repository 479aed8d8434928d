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
