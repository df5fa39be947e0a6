"""One gate run, end to end, for the CLI (`harness gate`) and the pytest plugin: the only place the flow from scored
datasets to verdict, report and time line is written.

    finished = run_gate(session, report_dir, show=print_tables)   # the CLI: every stage, then finish()
    finished = finish(session, report_dir)                        # pytest: the tests scored; judge and report

The verdict is judged and shown (``show(report, verdict)``) before the report folder is written, so it stands even
when the report cannot be written (a HarnessError then says so)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError


@dataclass(frozen=True)
class Finished:
    verdict: object       # harness.judge.Verdict
    report: dict          # report.json's content
    folder: Path          # where the report was written
    time_line: str        # "time: ..." (harness/timings.py)
    recipe_record: Path | None = None


def run_gate(session, report_dir: Path, show=None) -> Finished:
    """Preflight, baselines (updated first in update mode), the checkpoint, every dataset scored, engines closed;
    then :func:`finish`."""
    session.preflight(report_dir)      # bad input refused before any quantization or GPU time
    for n in session.dataset_names:    # (in update mode: score BF16 and write the baselines first)
        session.baseline(n)
    session.checkpoint()
    for n in session.dataset_names:
        session.score(n)
    session.engines.close()
    return finish(session, report_dir, show)


def finish(session, report_dir: Path, show=None) -> Finished:
    from harness.report import build_report, session_token_logprobs, write_report
    from harness.timings import line

    record = session.recipe_record()  # with --record-recipe: stored before the verdict pairs recipes with it
    verdict = session.verdict()
    with session.clock("report"):
        rep = build_report(session, verdict)
    if show is not None:
        show(rep, verdict)
    try:
        with session.clock("report"):
            folder = write_report(rep, report_dir, session.log_lines, session_token_logprobs(session),
                                  session.time_breakdown)
    except OSError as e:
        raise HarnessError(f"the verdict above stands, but its report could not be written to {report_dir}: "
                           f"{e.strerror or e}") from None
    return Finished(verdict, rep, folder, line(session.time_breakdown()), record)
