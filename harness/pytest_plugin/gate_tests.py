"""The quality gate itself, driven by --harness-config (default: the embedded tiny model on CPU). The plugin collects
this module beside a project's own tests (no copy needed; `--harness-gate-tests` says when).

    pytest                                                      # this repo: tiny default, hf backend, CPU
    pytest -m gpu --harness-config configs/qwen2.5-72b.yaml     # a real model on vLLM (backend: vllm => gpu)
    pytest --harness-config configs/tiny.yaml --update-baselines  # score BF16, rewrite the baselines first

One test per dataset plus the overall score; each asserts score >= threshold against the stored BF16 baseline. With
`distributions` in the config, one more per dataset plus overall: KL mean and top-1 agreement within their limits.
With `tasks`, one per task: recovery (and flips) against the stored BF16 answers.
Quantization and scoring times are captured by pytest-benchmark (extra_info carries PPL and tokens/s).
"""
from __future__ import annotations

import pytest
from harness.precision import BF16, NVFP4

pytestmark = pytest.mark.harness_gate


def test_quantize(harness_session, benchmark):
    ck = benchmark.pedantic(harness_session.checkpoint, rounds=1, iterations=1)
    benchmark.extra_info.update(cache_hit=ck.cache_hit, quantize_s=ck.info["quantize_s"], recipe=ck.info["recipe"])
    assert (ck.path / "config.json").exists()
    assert ck.scheme == harness_session.recipe().scheme


def test_dataset_score(harness_session, scoring_engine, harness_dataset, benchmark):
    b = harness_session.baseline(harness_dataset)  # data checked against the baseline before any scoring
    if harness_session.update_mode:  # the baseline on disk is the BF16 score this run made, for this run's data
        bf16 = harness_session.score(harness_dataset, BF16)
        assert (b.ppl, b.tokens, b.fingerprint) == (bf16.ppl, bf16.tokens,
                                                    harness_session.prepared(harness_dataset).fingerprint)
    scoring_engine(NVFP4)  # started before the benchmark: engine start stays out of the scoring time
    s = benchmark.pedantic(harness_session.score, args=(harness_dataset,), rounds=1, iterations=1)
    info = harness_session.engine_info(NVFP4)
    benchmark.extra_info.update(ppl=s.ppl, nll=s.nll, tokens=s.tokens, tokens_per_s=s.tokens_per_s,
                                kernel=info.get("kernel"), engine_start_s=info.get("engine_start_s"))
    outcome = harness_session.judgement(harness_dataset).outcome
    assert outcome.passed, outcome.message()


def test_overall_score(harness_session):
    outcome = harness_session.judgement(None).outcome
    assert outcome.passed, harness_session.verdict().summary()
    assert all(key[1] != BF16 or harness_session.update_mode for key in harness_session.engines.opened), \
        "the normal gate must never start a BF16 engine"


@pytest.mark.harness_tasks
def test_task(harness_session, scoring_engine, harness_task, benchmark):
    """One task of the config's `tasks`: its items checked against the BF16 task baseline before any scoring, scored
    in the gate's engine, recovery (and flips, where bounded) within the config's limits. Collected per task."""
    harness_session.task_baseline(harness_task)
    scoring_engine(NVFP4)
    s = benchmark.pedantic(harness_session.task_score, args=(harness_task,), rounds=1, iterations=1)
    o = harness_session.task_outcome(harness_task)
    p = o.paired
    benchmark.extra_info.update(metric=o.metric, accuracy=p.acc_model, bf16=p.acc_ref, recovery=p.recovery,
                                lost=p.lost, gained=p.gained, p_value=p.p_value, items=p.n,
                                items_per_s=p.n / s.eval_s if s.eval_s else None)
    assert o.passed, o.message()


@pytest.mark.harness_recipe_regression
def test_recipe_not_worse_than_the_best(harness_session):
    """The recipe against the stored result of the config's best recipe (recipe_regression: best, margin), on the
    same documents: fails when the whole paired interval of (recipe - best) is below -margin. A missing stored result
    fails and names the command that stores it (--record-recipe). Collected for configs with `recipe_regression`."""
    harness_session.scores(NVFP4)  # every dataset scored (once per session)
    from harness.recipes.records import message

    r = harness_session.recipe_regression()
    assert r["passed"], message(harness_session.recipe_name, r)


@pytest.mark.harness_distributions
def test_dataset_distribution(harness_session, harness_dataset):
    """Next-token distributions against BF16's on one dataset: mean KL and top-1 agreement within the limits
    (thresholds.kld_mean_max / top1_min of the config, else of the recipe). Collected for configs with
    `distributions`."""
    _assert_limits(harness_session, harness_dataset)


@pytest.mark.harness_distributions
def test_overall_distribution(harness_session):
    _assert_limits(harness_session, None)


def _assert_limits(session, name):
    outcomes = session.judgement(name).limits
    if not outcomes:
        pytest.skip("distributions are on but no kld_mean_max / top1_min limit is set (config or recipe): reported, "
                    "not gated")
    failed = [o.message() for o in outcomes if not o.passed]
    assert not failed, "\n".join(failed)
