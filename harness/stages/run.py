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
from harness.precision import NVFP4
from harness.report.build import build_report, token_logprobs
from harness.stages.judge import Verdict
from harness.stages.render import render
from harness.stages.results import Checkpoint, Prepared, ReportFiles, Scores
from harness.timings import line


@dataclass(frozen=True)
class Finished:
    """What a gate run produced, stage by stage (harness/stages/results.py)."""

    verdict: Verdict
    report: dict          # report.json's content
    files: ReportFiles    # the report folder and what is in it
    time_line: str        # "time: ..." (harness/timings.py)
    prepared: Prepared
    checkpoint: Checkpoint
    scores: Scores
    recipe_record: Path | None = None

    @property
    def folder(self) -> Path:
        return self.files.folder


def run_gate(session, report_dir: Path, show=None) -> Finished:
    """prepare -> (update mode: BF16 scored, baselines written) -> provide -> score -> judge -> render; the session
    keeps each stage's result and the one engine alive between stages."""
    if not session.start_beside_prepare(report_dir):  # a ready checkpoint: its engine starts while data is prepared
        session.preflight(report_dir)  # bad input refused before any quantization or GPU time
    session.prepare_all()
    for n in session.dataset_names:    # (in update mode: score BF16 and write the baselines first)
        session.baseline(n)
    session.checkpoint()
    session.scores(NVFP4)
    for t in session.task_names:       # the same engine, no second start
        session.task_score(t)
    session.engines.close()
    return finish(session, report_dir, show)


def finish(session, report_dir: Path, show=None) -> Finished:
    """judge and render, once every dataset is scored (pytest: by the gate tests; the CLI: by :func:`run_gate`)."""
    judged = session.judged()  # with --record-recipe: the record is stored before the verdict pairs recipes with it
    prepared, checkpoint, scores = session.prepare_all(), session.checkpoint(), session.scores(NVFP4)
    with session.clock("report"):
        rep = report_of(session, judged)
    if show is not None:
        show(rep, judged.verdict)
    try:
        with session.clock("report"):
            files = render(rep, report_dir, session.log.lines, token_logprobs(scores), session.time_breakdown)
    except OSError as e:
        raise HarnessError(f"the verdict above stands, but its report could not be written to {report_dir}: "
                           f"{e.strerror or e}") from None
    return Finished(judged.verdict, rep, files, line(session.time_breakdown()), prepared, checkpoint, scores,
                    judged.recipe_record)


def report_of(session, judged=None) -> dict:
    """report.json's content from a session's stage results (harness.report.build.build_report); ``judged``: the
    judge stage's, where the caller has it."""
    return build_report(session.ctx, session.prepare_all(), session.checkpoint(), session.scores(NVFP4),
                        judged or session.judged(), tokenizer=session.tokenizer,
                        baseline_updates=session.baseline_updates, started=session.started,
                        time_breakdown=session.time_breakdown())
