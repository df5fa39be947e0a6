"""The gated statistics of the next-token distributions, in one table (LIMITS): what the config and recipes accept as
threshold keys, what the judge applies, what the verdict and the report say of each. No torch import."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LimitSpec:
    """A gated statistic of the next-token distributions: everything the judge, the config and recipes, the verdict
    and the report know of it. A new limit is one entry here and its field in Thresholds (harness/config/sections.py)."""

    key: str          # the threshold key in a config's or a recipe's thresholds
    label: str        # what it bounds, in words
    kind: str         # "max": the value must not exceed the limit; "min": must not fall below it
    unit: str
    stat: str         # the statistic's key in divergence.describe's dict ...
    point: str        # ... its point estimate's key there ("mean" of a sub-dict, or "" for the statistic itself)
    interval: str     # ... and its bootstrap interval's key
    digits: int

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
    LimitSpec("kld_mean_max", "KL mean", "max", " nats", stat="kld", point="mean", interval="interval", digits=4),
    LimitSpec("top1_min", "top-1 agreement", "min", "%", stat="top1_pct", point="", interval="top1_interval",
              digits=2),
)}
