from __future__ import annotations

import math

import pytest

from harness.metrics import DatasetScore, paired_bootstrap, relative_score


def test_dataset_nll_is_token_weighted_mean_and_ppl_its_exp():
    s = DatasetScore(nll_sums=[2.0, 6.0], n_tokens=[1, 3])
    assert s.nll == pytest.approx(2.0)
    assert s.ppl == pytest.approx(math.exp(2.0))
    assert s.tokens == 4


def test_relative_score_direction():
    assert relative_score(2.0, 2.0) == 100.0
    assert relative_score(2.0, 2.2) == pytest.approx(100 * 2.0 / 2.2)   # 90.909...: PPL_bf16 / PPL_model x 100
    assert relative_score(2.0, 1.9) == pytest.approx(100 * 2.0 / 1.9)   # 105.263...: above 100 when it scores better
    assert relative_score(35.6968, 56.8836) == pytest.approx(62.7542, abs=5e-4)  # SmolLM2 W4A4 on one H100


def test_paired_bootstrap_contains_truth_and_is_seeded():
    import random

    rng = random.Random(0)
    counts = [rng.randint(20, 200) for _ in range(150)]
    ref = [c * rng.uniform(0.8, 1.2) for c in counts]
    worse = [r + 0.01 * c for r, c in zip(ref, counts)]  # +0.01 nats/token -> score 100*exp(-0.01) = 99.005
    a = paired_bootstrap({"d": (ref, counts)}, {"d": (worse, counts)}, samples=500, seed=1)
    b = paired_bootstrap({"d": (ref, counts)}, {"d": (worse, counts)}, samples=500, seed=1)
    assert (a.low, a.high) == (b.low, b.high)
    assert a.low <= 100 * math.exp(-0.01) <= a.high
    assert a.high < 100.0  # a consistent per-token loss is detected, not noise
    same = paired_bootstrap({"d": (ref, counts)}, {"d": (ref, counts)}, samples=200, seed=1)
    assert same.low == pytest.approx(100.0) and same.high == pytest.approx(100.0)


def test_paired_bootstrap_refuses_unpaired():
    with pytest.raises(ValueError, match="cannot pair"):
        paired_bootstrap({"d": ([1.0, 2.0], [1, 1])}, {"d": ([1.0], [1])})


def test_lm_eval_metrics_definitions():
    from harness.metrics import lm_eval_metrics

    m = lm_eval_metrics(nll_sum=69.31471805599453, words=50, n_bytes=100)
    assert m["word_perplexity"] == pytest.approx(math.exp(69.31471805599453 / 50))
    assert m["byte_perplexity"] == pytest.approx(2.0)
    assert m["bits_per_byte"] == pytest.approx(1.0)
    assert lm_eval_metrics(1.0, None, None) == {"word_perplexity": None, "byte_perplexity": None, "bits_per_byte": None}


def test_compare_refuses_different_token_counts():
    from harness.metrics import compare

    with pytest.raises(ValueError, match="not the same data"):
        compare("d", (0.5, 100), (0.6, 99))
