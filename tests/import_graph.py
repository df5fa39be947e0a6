"""harness/'s import graph, read with ``ast`` from the source (imports inside functions included): what
tests/test_layout.py checks against the layers and tests/test_core_imports.py checks for cycles."""
from __future__ import annotations

import ast
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (root / "harness").rglob("*.py")}


def imports(path: Path, known) -> set[str]:
    """The harness modules ``path`` imports anywhere in it (``from harness import x`` counts as harness.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != "harness"}
    return out


def graph(root: Path) -> dict[str, set[str]]:
    """Each harness module and the harness modules it imports."""
    mods = modules(root)
    return {m: imports(path, mods) - {m} for m, path in mods.items()}
