"""The report's table cells: a Markdown table, numbers at a fixed precision, the quantized side's label, the interval's
label (shared by the page, its optional sections, the chart and the other commands' tables)."""
from __future__ import annotations

import math

from tabulate import tabulate


def md_table(headers: list[str], rows: list[list], align: str) -> str:
    """A Markdown table with padded columns (readable in a terminal too); ``align``: one of l / r per column."""
    return tabulate([[("" if c is None else str(c)) for c in r] for r in rows], headers=headers, tablefmt="github",
                    disable_numparse=True, colalign=tuple({"l": "left", "r": "right"}[a] for a in align))


def qlabel(rep: dict) -> str:
    """The quantized side's name in tables and headings: the checkpoint's scheme (NVFP4, NVFP4A16, W2A16, ...)."""
    return rep.get("scheme") or "NVFP4"


def fmt(v, nd=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if math.isfinite(v) else str(v)
    return str(v)


def ci_label(rep: dict) -> str:
    """The interval columns' header at the configured confidence (thresholds.confidence)."""
    conf = (rep.get("gate") or {}).get("confidence") or 0.95
    return f"{conf * 100:g}% CI"
