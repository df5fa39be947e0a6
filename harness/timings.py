"""Where a gate's time went, by stage: prepare (tokenizer, data), quantize (or the cache lookup), engine start,
scoring, judging (comparisons, distributions, limits, verdict) and report. Exclusive time: a stage entered inside
another (scoring that has to start its engine first) pauses the outer one, so the stages add up to the time the gate
spent in them, and ``wall - sum`` is what no stage claims (imports, baselines, closing engines). Work done in another
process while a stage ran here (the data prepared while the engine starts: harness/stages/prepare_ahead.py) is recorded
beside that stage: its seconds are not added to the stages, which still sum to this process's time."""
from __future__ import annotations

import time
from contextlib import contextmanager

from tabulate import tabulate

STAGES = ("prepare", "quantize", "engine_start", "scoring", "judging", "report")


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._since = 0.0
        self._beside: dict[str, dict] = {}

    def beside(self, stage: str, seconds: float, during: str) -> None:
        """``stage``'s work took ``seconds`` in another process while ``during`` ran here."""
        if stage not in STAGES or during not in STAGES:
            raise ValueError(f"unknown stage {stage!r} or {during!r}; stages: {', '.join(STAGES)}")
        self._beside[stage] = {"seconds": round(seconds, 2), "during": during}

    @contextmanager
    def __call__(self, stage: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        now = time.perf_counter()
        if self._stack:
            self._add(self._stack[-1], now - self._since)
        self._stack.append(stage)
        self._since = now
        try:
            yield
        finally:
            now = time.perf_counter()
            self._add(self._stack.pop(), now - self._since)
            self._since = now

    def _add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def breakdown(self, wall_s: float) -> dict:
        """Seconds per stage in STAGES order (stages not entered: 0), with the rest of ``wall_s`` as ``other``."""
        seconds = dict(self.seconds)
        if self._stack:  # a stage still open (the report, while it is written) counts up to now
            seconds[self._stack[-1]] = seconds.get(self._stack[-1], 0.0) + time.perf_counter() - self._since
        stages = {k: round(seconds.get(k, 0.0), 2) for k in STAGES}
        out = {"stages": stages, "other_s": round(max(wall_s - sum(seconds.values()), 0.0), 2),
               "wall_s": round(wall_s, 2)}
        if self._beside:
            out["beside"] = {k: dict(v) for k, v in self._beside.items()}
        return out


class Busy:
    """Wall seconds of a gate's own work where it shares its process with other work (the pytest plugin: the gate's
    tests run among the project's others, and its report is written as the run ends): the time inside ``with busy:``
    blocks, nested or not, counted once. The gate's wall time then says how long the gate took, not the session."""

    def __init__(self):
        self.total = 0.0
        self._depth = 0
        self._since = 0.0

    def __enter__(self):
        if self._depth == 0:
            self._since = time.perf_counter()
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self.total += time.perf_counter() - self._since

    def __call__(self) -> float:
        return self.total + (time.perf_counter() - self._since if self._depth else 0.0)


def line(breakdown: dict) -> str:
    """One line for the terminal: ``time: prepare 1.2 s, quantize 0.0 s, ... ; 41.0 s in all``."""
    beside = breakdown.get("beside") or {}
    parts = [f"{k.replace('_', ' ')} {v:.1f} s" + (f" (+{beside[k]['seconds']:.1f} s beside "
                                                      f"{beside[k]['during'].replace('_', ' ')})" if k in beside else "")
             for k, v in breakdown["stages"].items()]
    return f"time: {', '.join(parts)}, other {breakdown['other_s']:.1f} s; {breakdown['wall_s']:.1f} s in all"


def table(breakdown: dict) -> str:
    """The Markdown table of the report's "Time" section: seconds and share of the wall time per stage."""
    wall = breakdown["wall_s"] or 1.0
    rows = [[k.replace("_", " "), f"{v:.2f}", f"{100 * v / wall:.0f}%"] for k, v in breakdown["stages"].items()]
    rows.append(["other", f"{breakdown['other_s']:.2f}", f"{100 * breakdown['other_s'] / wall:.0f}%"])
    rows.append(["**wall**", f"{breakdown['wall_s']:.2f}", "100%"])
    for k, v in (breakdown.get("beside") or {}).items():  # not in the sum: another process, while a stage ran here
        rows.append([f"{k.replace('_', ' ')}, beside {v['during'].replace('_', ' ')}", f"({v['seconds']:.2f})", ""])
    return tabulate(rows, headers=["stage", "seconds", "share"], tablefmt="github", colalign=("left", "right", "right"),
                    disable_numparse=True)
