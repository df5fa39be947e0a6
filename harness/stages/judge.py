"""Judging: a score against its baseline, the threshold that applies and where it came from, the verdict.

Pure functions of scores, baselines and thresholds (no engines, no files): the gate session feeds them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from harness import fidelity
from harness.errors import HarnessError
from harness.limits import LIMITS
from harness.metrics import Comparison, compare, overall_nll, paired_bootstrap
from harness.tasks.paired import mdd_from_interval


@dataclass
class Outcome:
    name: str
    comparison: Comparison
    threshold: float
    gated_value: float
    passed: bool
    threshold_source: str = "config"

    def message(self) -> str:
        c, spec = self.comparison, LIMITS["score"]
        basis = spec.label if c.interval is None or self.gated_value == c.score else f"{spec.label} lower bound"
        ci = (f" [{c.interval.confidence:.0%} CI {spec.fmt(c.interval.low)}..{spec.fmt(c.interval.high)}]"
              if c.interval else "")
        verdict = "ok  " if self.passed else "FAIL"
        return (f"{verdict} {self.name}: {basis} {spec.fmt(self.gated_value)} {spec.relation(self.passed)} "
                f"{spec.kind} {spec.fmt(self.threshold)} ({self.threshold_source}){ci} (PPL {c.ppl_model:.4f} vs "
                f"BF16 {c.ppl_ref:.4f})")


@dataclass(frozen=True)
class Verdict:
    """The judge stage's result: every outcome (datasets, overall, distribution limits, recipe regression) and the
    notes said under it."""

    outcomes: tuple = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "outcomes", tuple(self.outcomes))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    def summary(self) -> str:
        head = "GATE PASSED" if self.passed else "GATE FAILED"
        return "\n".join([head] + [o.message() for o in self.outcomes] + [f"note: {n}" for n in self.notes])


@dataclass(frozen=True)
class Judgement:
    """One dataset (``name`` None: overall) judged: its comparison with the BF16 baseline, the threshold that applies
    and where it came from, the outcome, and (distributions on) the next-token statistics and their limits."""

    name: str | None
    comparison: Comparison
    threshold: float
    threshold_source: str
    outcome: Outcome
    distributions: dict | None = None
    limits: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "limits", tuple(self.limits))


@dataclass(frozen=True)
class Judged:
    """The judge stage's whole result, what the report is built from: each dataset's and the overall judgement,
    the baselines they were judged against, the tasks' outcomes and report rows, the recipe regression and record,
    the per-token summaries, and the verdict."""

    verdict: Verdict
    judgements: dict          # dataset name (None: overall) -> Judgement
    baselines: dict           # dataset name -> the BF16 Baseline
    token_summaries: dict     # dataset name -> token_detail summary or None
    task_outcomes: tuple = ()
    task_rows: tuple = ()
    regression: dict | None = None
    recipe_record: object = None  # the Path of this run's stored recipe result (record_recipe), else None

    @property
    def overall(self) -> Judgement:
        return self.judgements[None]


def dataset_comparison(name: str, baseline, score, thresholds) -> Comparison:
    """One dataset: relative score of the quantized run against its BF16 baseline, with a paired bootstrap interval
    over documents when the baseline has per-document NLLs."""
    c = compare(name, (baseline.nll, baseline.tokens), (score.nll, score.tokens))
    if baseline.has_documents:
        t = thresholds
        c.interval = paired_bootstrap({name: (baseline.doc_nll_sums, baseline.doc_tokens)},
                                      {name: (score.nll_sums, score.n_tokens)},
                                      samples=t.bootstrap_samples, confidence=t.confidence, seed=t.seed)
    return c


def overall_comparison(baselines: dict, scores: dict, thresholds) -> Comparison:
    """All datasets pooled, token-weighted; the bootstrap resamples documents within each dataset."""
    ref = overall_nll({n: (b.nll, b.tokens) for n, b in baselines.items()})
    mod = overall_nll({n: (s.nll, s.tokens) for n, s in scores.items()})
    c = compare("overall", ref, mod)
    if all(b.has_documents for b in baselines.values()):
        t = thresholds
        c.interval = paired_bootstrap({n: (b.doc_nll_sums, b.doc_tokens) for n, b in baselines.items()},
                                      {n: (s.nll_sums, s.n_tokens) for n, s in scores.items()},
                                      samples=t.bootstrap_samples, confidence=t.confidence, seed=t.seed)
    return c


def threshold_source(name: str | None, thresholds, recipe_thresholds: dict, min_score: float | None,
                     recipe_name: str) -> tuple[float, str]:
    """The minimum score for a dataset (``None``: overall) and where it came from. Precedence: the command line
    (--min-score), then the config (keys written in it), then the recipe, then the default; a dataset without a
    threshold of its own takes the overall one, by the same precedence."""
    if min_score is not None:
        return min_score, "--min-score"
    t = thresholds
    if name is not None:
        if name in t.datasets:
            return t.datasets[name], "config"
        if name in recipe_thresholds:
            return recipe_thresholds[name], f"recipe {recipe_name}"
    if "overall" in t.model_fields_set:
        return t.overall, "config"
    if "overall" in recipe_thresholds:
        return recipe_thresholds["overall"], f"recipe {recipe_name}"
    return t.overall, "default"


def judge(c: Comparison, threshold: float, source: str, use: str) -> Outcome:
    """Pass or fail on the point estimate, or (``use: lower``) on the interval's lower bound where there is one."""
    use_lower = use == "lower" and c.interval is not None
    value = c.interval.low if use_lower else c.score
    if not math.isfinite(value):
        raise HarnessError(f"{c.name}: score is not a finite number ({value}); refusing to report it")
    return Outcome(name=c.name, comparison=c, threshold=threshold, gated_value=value,
                   passed=LIMITS["score"].passes(value, threshold), threshold_source=source)


@dataclass
class LimitOutcome:
    """A distribution statistic of one dataset (or overall) against its limit."""

    name: str
    key: str                # kld_mean_max or top1_min
    value: float            # the gated value: the point estimate, or with `use: lower` the pessimistic interval end
    point: float
    interval: tuple[float, float] | None
    limit: float
    passed: bool
    threshold_source: str

    def message(self) -> str:
        spec = LIMITS[self.key]
        basis = "" if self.value == self.point else (" upper bound" if spec.kind == "max" else " lower bound")
        ci = f" [CI {spec.fmt(self.interval[0])}..{spec.fmt(self.interval[1])}]" if self.interval else ""
        return (f"{'ok  ' if self.passed else 'FAIL'} {self.name}: {spec.label}{basis} {spec.fmt(self.value)}"
                f"{spec.unit} {spec.relation(self.passed)} {spec.kind} {spec.fmt(self.limit)}{spec.unit} "
                f"({self.threshold_source}){ci}")


def limit_source(key: str, thresholds, recipe_thresholds: dict, recipe_name: str) -> tuple[float | None, str]:
    """A distribution limit and where it came from: the config, else the recipe, else none (reported, not gated)."""
    if getattr(thresholds, key) is not None:
        return getattr(thresholds, key), "config"
    if key in recipe_thresholds:
        return recipe_thresholds[key], f"recipe {recipe_name}"
    return None, "none"


def judge_limit(name: str, stats: dict, key: str, limit: float, source: str, use: str) -> LimitOutcome:
    """Pass or fail a dataset's (or the pool's) distribution statistics against one limit; ``use: lower`` gates on
    the interval's pessimistic end (the KL mean's upper bound, the top-1 agreement's lower bound)."""
    spec = LIMITS[key]
    point, interval = spec.value_and_interval(stats)
    value = spec.pessimistic(interval) if use == "lower" and interval else point
    if not math.isfinite(value):
        raise HarnessError(f"{name}: {spec.label} is not a finite number ({value}); refusing to report it")
    return LimitOutcome(name=name, key=key, value=value, point=point, interval=interval, limit=limit,
                        passed=spec.passes(value, limit), threshold_source=source)


def sizing_notes(comparisons: dict, thresholds: dict) -> list[str]:
    """Scores whose threshold asks for a smaller drop than this run can detect: 100 - threshold below the minimum
    detectable difference of the score's bootstrap interval (one-sided alpha 0.05, power 0.8). ``comparisons`` and
    ``thresholds`` by dataset name (None: overall), in the order they are said."""
    out = []
    for n, c in comparisons.items():
        i = c.interval
        if i is None:
            continue
        m, margin = mdd_from_interval(i.low, i.high, i.confidence), 100 - thresholds[n]
        if 0 < margin < m:
            out.append(f"{n or 'overall'}: the threshold {thresholds[n]:.2f} allows a drop of {margin:.2f} "
                       f"points, but this run detects drops from {m:.2f} points (one-sided alpha 0.05, power 0.8):"
                       " score more texts (n_texts) or lower the threshold")
    return out


def run_notes(engine: dict) -> list[str]:
    """What the verdict says of the quantized engine itself: which numerics it measured (harness/fidelity.py)."""
    said = fidelity.note(engine.get("fidelity"), engine.get("kernel") or "?")
    return [said] if said else []


def baseline_notes(baselines: dict, engine: dict, backend: str) -> list[str]:
    """What the verdict says of each BF16 baseline against this run: no per-document NLLs (no interval), compiled or
    eager, the CPU matmul arithmetic, another backend or device."""
    notes = []
    for n, b in baselines.items():
        if not b.has_documents:
            notes.append(f"{n}: baseline has no per-document NLLs: point estimate only, no confidence interval")
        notes += [s for s in (fidelity.mode_note(n, b.provenance.get("compilation"), engine.get("compilation")),
                              fidelity.cpu_matmul_note(n, b.provenance, engine)) if s]
        theirs = (b.provenance.get("backend"), b.provenance.get("device"))
        if engine and theirs != (backend, engine.get("device")):
            notes.append(f"{n}: baseline scored with {theirs[0]} on {theirs[1]}, this run with {backend} on "
                         f"{engine.get('device')}: backends agree to ~0.1% PPL; update the baseline on this setup "
                         "for the tightest gate")
    return notes
