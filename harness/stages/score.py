"""The score stage: every prepared dataset through one started engine's ``loglikelihood_rolling`` (per-document NLL
sums and token counts, the first token of each document unscored), into :class:`harness.stages.results.Scores`."""
from __future__ import annotations

import time

from harness.data.rules import PreparedDataset
from harness.distributions import from_results
from harness.metrics import DatasetScore
from harness.stages.results import Prepared, Scores


def score_dataset(engine, prep: PreparedDataset, *, top_k: int = 0, token_detail: bool = False,
                  progress=None) -> DatasetScore:
    """One dataset through ``engine.loglikelihood_rolling``: per-document NLL sums and token counts (the first
    token of each document unscored), with the per-token logprobs and top-k next tokens when asked for."""
    t0 = time.time()
    res = engine.loglikelihood_rolling(prep.token_ids, progress=progress, token_logprobs=token_detail, top_k=top_k)
    topk = None
    if top_k:
        topk = from_results(res, prep.token_ids, top_k, getattr(engine, "name", "backend"))
    return DatasetScore(nll_sums=[r.nll_sum for r in res], n_tokens=[r.n_tokens for r in res],
                        eval_s=time.time() - t0, words=prep.words, bytes=prep.bytes,
                        token_logprobs=[r.token_logprobs for r in res] if token_detail else None, topk=topk)


def score(engine, prepared: Prepared, precision: str, *, top_k: int = 0, token_detail: bool = False) -> Scores:
    """Every prepared dataset scored by one started engine."""
    return Scores(precision, {n: score_dataset(engine, prepared[n], top_k=top_k, token_detail=token_detail)
                              for n in prepared.names}, engine.info())
