"""The report folder of a command other than the gate (`harness compare`, `harness sensitivity`): JSON, Markdown and an
SVG chart, written whole into ``<reports_dir>/<time>-<model>-<kind>/`` or not at all (harness/atomic.py). A chart that
fails is named in the JSON and costs nothing else."""
from __future__ import annotations

import json
import time
from pathlib import Path

from harness.atomic import atomic_dir


def save_svg(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def write_report_folder(reports_dir: Path, model: str, kind: str, rep: dict, stem: str, render, chart) -> Path:
    """``render(rep) -> str`` (the Markdown) and ``chart(rep, path)`` (the SVG) fill ``stem``.md and chart.svg."""
    folder = atomic_dir(Path(reports_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{kind}", prefix=".report-",
                        on_exists="unique")  # two runs of the same second both keep their report
    with folder as tmp:
        try:
            chart(rep, tmp / "chart.svg")
        except Exception as e:  # noqa: BLE001 - a chart is not worth the report
            rep = {**rep, "chart_error": f"{type(e).__name__}: {str(e)[:200]}"}
        (tmp / f"{stem}.json").write_text(json.dumps(rep, indent=1, default=str) + "\n")
        (tmp / f"{stem}.md").write_text(render(rep))
    return folder.final
