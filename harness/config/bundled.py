"""What the package ships besides code: the tiny default's config, the standard recipes and the tiny baselines.

An installed wheel holds them in ``harness/_bundled/<kind>`` (pyproject.toml maps the checkout's top-level folders
there); a source checkout has them at its top level. Both are read-only to the harness: reports, new baselines and
caches go to the user's project (the current directory) or to configured paths, never into the package.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the harness package (this module is in harness/config)
KINDS = ("configs", "recipes", "baselines")


def bundled_dir(kind: str) -> Path | None:
    """``configs``, ``recipes`` or ``baselines`` as shipped, or None when this install has none."""
    if kind not in KINDS:
        raise ValueError(f"unknown bundled kind {kind!r}; known: {', '.join(KINDS)}")
    wheel = PACKAGE_DIR / "_bundled" / kind
    if wheel.is_dir():
        return wheel
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").exists() and (checkout / kind).is_dir():
        return checkout / kind
    return None


def is_inside_package(path: Path) -> bool:
    """True for paths in the installed package (or, from a checkout, in its shipped folders)."""
    p = Path(path).resolve()
    roots = [PACKAGE_DIR] + [d for d in (bundled_dir(k) for k in KINDS) if d is not None]
    return any(p == r or r in p.parents for r in roots)
