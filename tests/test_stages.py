"""The gate's stages (harness/stages/results.py): frozen results and the score stage on a hand-made engine (the pytest
fixtures that expose them: tests/test_plugin.py)."""
from __future__ import annotations

import dataclasses
import math

import pytest

from harness.backends.base import DocResult
from harness.data.rules import PreparedDataset, TokenStats
from harness.stages.judge import Verdict
from harness.metrics import DatasetScore
from harness.stages.results import Checkpoint, Prepared, Scores
from harness.stages.score import score


def _prep(name: str, docs: list[list[int]]) -> PreparedDataset:
    tokens = sum(len(d) - 1 for d in docs)
    stats = TokenStats(requested=len(docs), selected=len(docs), kept_texts=len(docs), dropped_short=0, truncated=0,
                       tokens=tokens, total_tokens=tokens + len(docs))
    return PreparedDataset(name=name, rule="wikitext", token_ids=docs, stats=stats, fingerprint="f", rules={},
                           tokenizer_id="t")


class HandEngine:
    """Each document's log-probability is -(first token id) per scored token: known by hand."""

    name = "hand"

    def loglikelihood_rolling(self, docs, progress=None, token_logprobs=False, top_k=0):
        return [DocResult(logprob_sum=-float(d[0]) * (len(d) - 1), n_tokens=len(d) - 1) for d in docs]

    def info(self):
        return {"backend": "hand", "kernel": "by hand"}


def test_score_stage_sums_per_document_and_weights_datasets_by_tokens():
    # a: docs [1,5,5] (2 tokens at 1 nat) and [3,7] (1 token at 3 nats): NLL (2 + 3) / 3 = 5/3
    # b: doc [2,9,9,9] (3 tokens at 2 nats): NLL 2; overall (5 + 6) / 6 = 11/6
    prepared = Prepared({"a": _prep("a", [[1, 5, 5], [3, 7]]), "b": _prep("b", [[2, 9, 9, 9]])})
    s = score(HandEngine(), prepared, "nvfp4")
    assert s["a"].nll_sums == [2.0, 3.0] and s["a"].n_tokens == [2, 1]
    assert s["a"].nll == pytest.approx(5 / 3) and s["b"].nll == pytest.approx(2.0)
    assert s.tokens == prepared.tokens == 6
    assert s.nll == pytest.approx(11 / 6) and math.exp(s.nll) == pytest.approx(6.2547, abs=1e-4)
    assert s.engine["kernel"] == "by hand" and s.precision == "nvfp4"


def test_stage_results_cannot_be_changed_after_the_stage():
    prep = _prep("a", [[1, 2]])
    results = [prep, DatasetScore([1.0], [1]), Prepared({"a": prep}), Checkpoint("/x", {"scheme": "NVFP4"}),
               Scores("nvfp4", {}, {}), Verdict([], ["n"])]
    for r in results:
        field = dataclasses.fields(r)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(r, field, None)
    with pytest.raises(TypeError):
        results[2].datasets["b"] = prep  # the mappings inside are read-only views
    with pytest.raises(TypeError):
        results[3].info["scheme"] = "NVFP4A16"
    assert results[3].scheme == "NVFP4" and results[3].cache_hit is None
