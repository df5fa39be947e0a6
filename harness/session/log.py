"""A gate's log: stamped lines kept for the report's gate.log and said as they come (stderr, or the caller's
``log``), and the progress of long scoring (a bar where a person watches this process's terminal, else a pulse)."""
from __future__ import annotations

import sys
import time

from harness.stages.progress import ScoringProgress


class RunLog:
    def __init__(self, quiet: bool = False, external=None):
        self.lines: list[str] = []
        self.quiet, self.external = quiet, external

    def __call__(self, msg: str) -> None:
        self.emit(f"[{time.strftime('%H:%M:%S')}] {msg}")

    def emit(self, line: str) -> None:
        """A stamped line (this gate's own, or one another process wrote) into the log and out."""
        self.lines.append(line)
        if self.external:
            self.external(line)
        elif not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def progress(self, desc: str, eng, sizes: list[int], unit: str = "texts") -> ScoringProgress:
        """The progress of ``sizes`` (tokens per unit) through ``eng``, where the engine calls back: a bar on this
        process's own terminal, else a stamped pulse line in the log (pytest, a file, CI)."""
        calls_back = getattr(eng, "reports_progress", False)
        bar = not self.quiet and self.external is None and sys.stderr.isatty() and calls_back
        return ScoringProgress(desc, len(sizes), unit=unit, bar=bar, pulse=self if calls_back else None, sizes=sizes)
