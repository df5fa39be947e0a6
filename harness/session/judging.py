"""The gate's judging steps, plain functions of the run's context (harness/session/context.py), the BF16 baselines
and the scores: each dataset's (and the overall) comparison with its threshold, next-token distribution statistics
and their limits, and the verdict with its notes. The arithmetic is harness/stages/judge.py's."""
from __future__ import annotations

from harness.distributions import load
from harness.divergence import describe, token_metrics as per_token
from harness.limits import DISTRIBUTION_LIMITS
from harness.recipes.records import RegressionOutcome
from harness.session.context import RunContext
from harness.stages.judge import (Judgement, Verdict, baseline_notes, dataset_comparison, judge, judge_limit,
                                  limit_source, overall_comparison, run_notes, sizing_notes, threshold_source)
from harness.token_detail import load_tokens, summarize, to_arrays


def measure(ctx: RunContext, name: str | None, baselines: dict, scores: dict, token_metrics: dict | None = None):
    """What judging a dataset (``name``; ``None``: every dataset of ``baselines``/``scores`` pooled) measures once:
    its comparison with the baseline (a paired bootstrap) and, with ``token_metrics`` (dataset -> per-token KL/top-1
    of divergence.token_metrics), the distribution statistics. Returns (Comparison, statistics or None)."""
    t = ctx.cfg.thresholds
    c = (overall_comparison(baselines, scores, t) if name is None
         else dataset_comparison(name, baselines[name], scores[name], t))
    if token_metrics is None:
        return c, None

    return c, describe(token_metrics, samples=t.bootstrap_samples, confidence=t.confidence, seed=t.seed)


def judgement(ctx: RunContext, name: str | None, comparison, stats: dict | None, recipe) -> Judgement:
    """A measured dataset (``None``: overall) judged against the thresholds that apply now (``recipe``: None for an
    existing checkpoint): the score's outcome and each distribution limit that is set."""
    t = ctx.cfg.thresholds
    rt = recipe_thresholds(ctx, recipe)
    value, source = threshold(ctx, name, recipe)
    limits = []
    for key in DISTRIBUTION_LIMITS if stats else ():
        limit, why = limit_source(key, t, rt, ctx.recipe_name)
        if limit is not None:
            limits.append(judge_limit(name or "overall", stats, key, limit, why, t.use))
    return Judgement(name, comparison, value, source, judge(comparison, value, source, t.use), stats, limits)


def recipe_thresholds(ctx: RunContext, recipe) -> dict:
    """The recipe's own thresholds (none for an existing checkpoint, which no recipe made)."""
    return {} if ctx.existing or recipe is None else recipe.thresholds


def threshold(ctx: RunContext, name: str | None, recipe) -> tuple[float, str]:
    """The minimum score for a dataset (``None``: overall) and where it came from (judge.threshold_source)."""
    return threshold_source(name, ctx.cfg.thresholds, recipe_thresholds(ctx, recipe), ctx.min_score, ctx.recipe_name)


def token_metrics(ctx: RunContext, baseline, score):
    """Per-token KL, top-1 agreement and Δp of the quantized run against the stored BF16 distributions."""

    ref = load(ctx.store.distributions_path(baseline), baseline.distributions, ctx.update_hint)
    return per_token(ref, score.topk)


def token_summary(ctx: RunContext, name: str, score) -> dict | None:
    """BF16-vs-quantized per-token summary, when both sides have per-token logprobs."""
    if score.token_logprobs is None:
        return None
    bf16 = ctx.store.tokens_path(ctx.cfg.name, name)
    if not bf16.exists():
        return {"note": f"no BF16 per-token file {bf16}: run a baseline update with token_detail on"}

    return summarize(load_tokens(bf16), to_arrays(score.token_logprobs))


def verdict(ctx: RunContext, judgements: dict, task_outcomes: list, regression: dict | None, engine: dict,
            baselines: dict) -> Verdict:
    """Every outcome (each dataset, overall, the distribution limits, the tasks, the recipe regression) and the notes
    said under them: the run's own, what the engine measured, the thresholds this run cannot resolve, and each
    baseline against this run."""
    names = [*ctx.datasets, None]
    outs = [judgements[n].outcome for n in names] + [o for n in names for o in judgements[n].limits]
    outs += task_outcomes
    if ctx.cfg.recipe_regression is not None:
        outs.append(RegressionOutcome(ctx.recipe_name, regression))
    sizing = sizing_notes({n: judgements[n].comparison for n in names}, {n: judgements[n].threshold for n in names})
    return Verdict(outs, [*ctx.notes, *run_notes(engine), *sizing, *baseline_notes(baselines, engine, ctx.backend)])
