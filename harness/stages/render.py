"""The render stage: the report dict and the run's log written as one report folder (harness/report)."""
from __future__ import annotations

from pathlib import Path

from harness.report.build import write_report
from harness.stages.results import ReportFiles


def render(report: dict, report_dir: Path, log_lines: list[str], token_logprobs=None,
           time_breakdown=None) -> ReportFiles:
    """report.json, report.md, chart.svg, gate.log (and the engine's log, per-token files) in a new folder under
    ``report_dir``, written atomically (harness.report.build.write_report)."""
    return ReportFiles.of(write_report(report, report_dir, log_lines, token_logprobs, time_breakdown))
