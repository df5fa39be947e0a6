"""Paired statistics of one task: the same items answered by BF16 and by the quantized model.

- accuracy of each, and recovery = quantized / BF16 (llm-compressor's convention, higher is better);
- a paired bootstrap interval of the recovery: items resampled with replacement, both models' answers kept together;
- flips: items right under BF16 and wrong quantized (``lost``, McNemar's b) and the other way (``gained``, c);
- McNemar's exact test: a two-sided binomial test of b against b + c with p = 0.5 (scipy.stats.binomtest);
- the minimum detectable difference (MDD) of the accuracy at one-sided alpha and power 1 - beta for the n that ran:
  (z_alpha + z_beta) * sqrt(p_d / n), p_d the discordance rate (b + c) / n, at least 1 / n (no flips seen still
  leaves a difference of about one item undetectable). The same sizing TensorRT-LLM applies to its accuracy
  thresholds; ``mdd_from_interval`` applies it to any metric with a bootstrap interval (score, KL, top-1).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

ALPHA = 0.05   # one-sided
POWER = 0.8


def z(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def mdd(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference in accuracy (a fraction) a paired test of ``n`` items detects with ``power``."""
    if n <= 0:
        return math.inf
    p_d = max(discordance, 1.0 / n)
    return (z(1 - alpha) + z(power)) * math.sqrt(p_d / n)


def mdd_from_interval(low: float, high: float, confidence: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """MDD of a metric known by its bootstrap interval: its standard error is taken as the interval's half-width over
    z at (1 + confidence) / 2 (a normal approximation of the bootstrap distribution)."""
    se = (high - low) / (2 * z((1 + confidence) / 2))
    return (z(1 - alpha) + z(power)) * se


def items_needed(difference: float, discordance: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """The n whose MDD is ``difference`` (a fraction) at discordance rate ``discordance``: the inverse of ``mdd``."""
    if difference <= 0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(((z(1 - alpha) + z(power)) / difference) ** 2 * discordance)


def mcnemar_p(lost: int, gained: int) -> float:
    """McNemar's exact two-sided p-value for ``lost`` (b) and ``gained`` (c) discordant items; 1.0 when none."""
    if lost + gained == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(lost, lost + gained, 0.5).pvalue)


@dataclass(frozen=True)
class Paired:
    n: int
    acc_ref: float             # fractions
    acc_model: float
    recovery: float            # acc_model / acc_ref (1.0 when both got none right, inf when only the model got some)
    recovery_interval: tuple[float, float] | None
    lost: int                  # right under BF16, wrong quantized (McNemar's b)
    gained: int                # wrong under BF16, right quantized (c)
    p_value: float
    mdd: float                 # a fraction of items

    @property
    def flips(self) -> int:
        return self.lost + self.gained

    @property
    def flips_pct(self) -> float:
        return 100.0 * self.flips / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recovery_interval"] = list(self.recovery_interval) if self.recovery_interval else None
        d["flips"], d["flips_pct"] = self.flips, self.flips_pct
        return d


def ratio(num: float, den: float) -> float:
    """num / den, where BF16 got nothing right (den 0): 1.0 when the model got nothing right either (there was nothing
    to lose), inf when it got some right."""
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den


def recovery_interval(ref: Sequence[bool], model: Sequence[bool], samples: int, confidence: float,
                      seed: int) -> tuple[float, float]:
    """Percentile interval of acc_model / acc_ref over ``samples`` paired resamples of the items (``ratio``'s rule where
    a resample holds no item BF16 got right)."""
    import numpy as np

    r = np.asarray(ref, dtype=np.float64)
    m = np.asarray(model, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(r), size=(samples, len(r)))
    num, den = m[idx].sum(1), r[idx].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den > 0, num / np.maximum(den, 1), np.where(num > 0, np.inf, 1.0))
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail], method="inverted_cdf")  # no interpolation: ratios may be inf
    return float(lo), float(hi)


def flip_indices(ref: Sequence[bool], model: Sequence[bool]) -> tuple[list[int], list[int]]:
    """The items right under BF16 and wrong quantized (lost), and the reverse (gained): 0-based indices."""
    lost = [i for i, (a, b) in enumerate(zip(ref, model)) if a and not b]
    gained = [i for i, (a, b) in enumerate(zip(ref, model)) if b and not a]
    return lost, gained


def paired(ref: Sequence[bool], model: Sequence[bool], *, samples: int = 1000, confidence: float = 0.95,
           seed: int = 0) -> Paired:
    """Everything above for one task's per-item correctness under BF16 (``ref``) and the quantized model."""
    if len(ref) != len(model):
        raise ValueError(f"{len(ref)} BF16 answers against {len(model)} quantized ones: not the same items")
    n = len(ref)
    lost, gained = (len(ix) for ix in flip_indices(ref, model))
    acc_r = sum(map(bool, ref)) / n if n else math.nan
    acc_m = sum(map(bool, model)) / n if n else math.nan
    ci = recovery_interval(ref, model, samples, confidence, seed) if n else None
    return Paired(n=n, acc_ref=acc_r, acc_model=acc_m, recovery=ratio(acc_m, acc_r), recovery_interval=ci,
                  lost=lost, gained=gained, p_value=mcnemar_p(lost, gained),
                  mdd=mdd(n, (lost + gained) / n if n else 0.0))
