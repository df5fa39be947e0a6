"""Progress of long scoring: a tqdm bar where a person watches a terminal, and elsewhere (CI logs, pytest, a file) a
stamped line every ``HARNESS_PULSE_S`` seconds (default 30): done / total, tokens per second, time left. A backend
that calls back ``progress(done, total)`` gets both for free (the hf backend; vLLM with a batch size)."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Sequence

PULSE_S = 30.0


def pulse_seconds() -> float:
    """``HARNESS_PULSE_S`` (seconds between lines off a terminal; 0: a line at every callback), else 30."""
    raw = os.environ.get("HARNESS_PULSE_S", "").strip()
    try:
        return max(0.0, float(raw)) if raw else PULSE_S
    except ValueError:
        return PULSE_S


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class ScoringProgress:
    """The backends' ``progress(done, total)`` callback over ``total`` units (texts, requests): a bar when ``bar``,
    else, where ``pulse`` is given, ``pulse(line)`` once ``pulse_s`` seconds passed since the last line (or the start).
    ``sizes``: the tokens of each unit, in the order they are done (for tokens/s)."""

    def __init__(self, desc: str, total: int, *, bar: bool, pulse: Callable[[str], None] | None = None,
                 sizes: Sequence[int] | None = None, unit: str = "texts", pulse_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, file=None):
        self.desc, self.total, self.enabled, self.file = desc, total, bar, file
        self.pulse, self.unit, self.clock = (None if bar else pulse), unit, clock
        self.pulse_s = pulse_seconds() if pulse_s is None else pulse_s
        self.cum = [0]
        for n in sizes or []:
            self.cum.append(self.cum[-1] + n)
        self.bar, self.t0, self.last = None, 0.0, 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if self.pulse is None or done >= total or done <= 0:
            return
        now = self.clock()
        if now - self.last < self.pulse_s:
            return
        self.last = now
        spent = now - self.t0
        line = f"scoring {self.desc}: {done}/{total} {self.unit} ({100 * done / total:.0f}%)"
        if len(self.cum) > done and spent > 0:
            line += f", {self.cum[done] / spent:,.0f} tokens/s"
        self.pulse(line + f", about {duration(spent / done * (total - done))} left")

    def __enter__(self) -> "ScoringProgress":
        self.t0 = self.last = self.clock()
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=f"scoring {self.desc}", unit=self.unit.rstrip("s"), leave=False,
                            file=self.file or sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
