"""Every gated value of a verdict, in one table (LIMITS): the relative score (per dataset and overall), the
next-token distribution statistics, and each task's recovery and flips. For each: which way it must lie, its
default limit, how the verdict and the report write it; for the distribution statistics also what the config and
recipes accept as threshold keys and where describe() keeps them. No torch import."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LimitSpec:
    """A gated value: everything the judge, the config and recipes, the verdict and the report know of it. A new
    distribution limit is one entry here and its field in Thresholds (harness/config/sections.py)."""

    key: str          # the threshold key in a config's or a recipe's thresholds (a task's: in its tasks entry)
    label: str        # what it bounds, in words
    kind: str         # "max": the value must not exceed the limit; "min": must not fall below it
    unit: str
    stat: str = ""    # a distribution statistic's key in divergence.describe's dict ...
    point: str = ""   # ... its point estimate's key there ("mean" of a sub-dict, or "" for the statistic itself)
    interval: str = ""  # ... and its bootstrap interval's key
    digits: int = 2
    scope: str = "distribution"  # "score": per dataset and overall; "task": per task; "distribution"
    default: float | None = None  # the limit where none is configured (None: reported, not gated)

    def value_and_interval(self, stats: dict) -> tuple[float, tuple[float, float] | None]:
        s = stats[self.stat]
        point = s[self.point] if self.point else s
        ci = (stats[self.stat] if self.point else stats)[self.interval]
        return point, ((ci["low"], ci["high"]) if ci else None)

    def pessimistic(self, interval: tuple[float, float]) -> float:
        """The interval's end that is worse for the model (``use: lower``)."""
        return interval[1] if self.kind == "max" else interval[0]

    def passes(self, value: float, limit: float) -> bool:
        return value <= limit if self.kind == "max" else value >= limit

    def fmt(self, v: float) -> str:
        return f"{v:.{self.digits}f}"

    def relation(self, passed: bool = True) -> str:
        return ("<=" if self.kind == "max" else ">=") if passed else (">" if self.kind == "max" else "<")


LIMITS: dict[str, LimitSpec] = {s.key: s for s in (
    # the relative score PPL_bf16 / PPL_model x 100 (thresholds.overall and thresholds.datasets.<name>)
    LimitSpec("score", "score", "min", "", digits=2, scope="score", default=99.0),
    LimitSpec("kld_mean_max", "KL mean", "max", " nats", stat="kld", point="mean", interval="interval", digits=4),
    LimitSpec("top1_min", "top-1 agreement", "min", "%", stat="top1_pct", point="", interval="top1_interval",
              digits=2),
    # a task's accuracy quantized / BF16, and the share of its items whose correctness flipped (tasks.<name>.*)
    LimitSpec("recovery_min", "recovery", "min", "", digits=3, scope="task", default=0.95),
    LimitSpec("flips_max_pct", "flips", "max", "%", digits=1, scope="task"),
)}
DISTRIBUTION_LIMITS = [k for k, s in LIMITS.items() if s.scope == "distribution"]  # config and recipe keys
