"""NLL / PPL math, token-weighted overall, relative score and a paired bootstrap. Pure Python + numpy.

Definitions (the reference study's):
- per document: NLL sum over every token but the first, and the count of those tokens;
- per dataset: NLL = sum of NLL sums / sum of counts (mean over tokens), PPL = exp(NLL);
- overall: the datasets' NLLs weighted by token count, i.e. pooled sums / pooled counts;
- relative score = PPL_bf16 / PPL_model x 100 (BF16 = 100; lower PPL than BF16 scores above 100).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence


@dataclass(frozen=True)
class DatasetScore:
    """Per-document NLL sums and token counts of one dataset, and what follows from them."""

    nll_sums: list[float]
    n_tokens: list[int]
    eval_s: float | None = None
    words: int | None = None   # of the scored texts, for lm-evaluation-harness's word/byte metrics
    bytes: int | None = None
    token_logprobs: list[list[float]] | None = field(default=None, repr=False)  # only with token_detail
    topk: object = field(default=None, repr=False)  # harness.distributions.TopK, only with distributions on

    def __post_init__(self):
        if len(self.nll_sums) != len(self.n_tokens):
            raise ValueError("nll_sums and n_tokens differ in length")

    @property
    def tokens(self) -> int:
        return int(sum(self.n_tokens))

    @property
    def nll(self) -> float:
        return nll(self.nll_sums, self.n_tokens)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.eval_s if self.eval_s else None

    def lm_eval_metrics(self) -> dict:
        return lm_eval_metrics(sum(self.nll_sums), self.words, self.bytes)


def lm_eval_metrics(nll_sum: float, words: int | None, n_bytes: int | None) -> dict:
    """word_perplexity, byte_perplexity and bits_per_byte as lm-evaluation-harness defines them
    (exp(NLL_sum / words), exp(NLL_sum / bytes), NLL_sum / bytes / ln 2). Our NLL_sum skips each text's first
    token, which lm-evaluation-harness scores after an end-of-text prefix: expect slightly lower values."""
    out = {"word_perplexity": None, "byte_perplexity": None, "bits_per_byte": None}
    if words:
        out["word_perplexity"] = math.exp(nll_sum / words)
    if n_bytes:
        out["byte_perplexity"] = math.exp(nll_sum / n_bytes)
        out["bits_per_byte"] = nll_sum / n_bytes / math.log(2)
    return out


def nll(nll_sums: Sequence[float], n_tokens: Sequence[int]) -> float:
    total = sum(n_tokens)
    if total <= 0:
        raise ValueError("no scored tokens")
    return float(sum(nll_sums)) / total


def ppl(nll_value: float) -> float:
    return math.exp(nll_value)


def overall_nll(parts: Mapping[str, tuple[float, int]]) -> tuple[float, int]:
    """Token-weighted NLL over datasets given {name: (nll, tokens)}; returns (nll, tokens)."""
    tokens = sum(t for _, t in parts.values())
    if tokens <= 0:
        raise ValueError("no scored tokens")
    return sum(n * t for n, t in parts.values()) / tokens, tokens


def relative_score(ppl_bf16: float, ppl_model: float) -> float:
    """PPL_bf16 / PPL_model x 100."""
    return ppl_bf16 / ppl_model * 100.0


@dataclass
class Interval:
    low: float
    high: float
    confidence: float
    samples: int
    seed: int


@dataclass
class Comparison:
    """One dataset (or the overall pool): BF16 reference vs the quantized model."""

    name: str
    ppl_ref: float
    ppl_model: float
    nll_ref: float
    nll_model: float
    tokens: int
    score: float
    interval: Interval | None = None
    extra: dict = field(default_factory=dict)


def compare(name: str, ref: tuple[float, int], model: tuple[float, int]) -> Comparison:
    (n_ref, t_ref), (n_mod, t_mod) = ref, model
    if t_ref != t_mod:
        raise ValueError(f"{name}: reference scored {t_ref} tokens, the model {t_mod}: not the same data")
    return Comparison(name=name, ppl_ref=math.exp(n_ref), ppl_model=math.exp(n_mod), nll_ref=n_ref, nll_model=n_mod,
                      tokens=t_mod, score=relative_score(math.exp(n_ref), math.exp(n_mod)))


def paired_bootstrap(ref: Mapping[str, tuple[Sequence[float], Sequence[int]]],
                     model: Mapping[str, tuple[Sequence[float], Sequence[int]]],
                     samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Confidence interval of the relative score, resampling documents with replacement.

    Paired: the same resampled documents enter the reference and the model sums. With several datasets each one is
    resampled separately (stratified), then pooled, so the token weighting of the overall score is kept.
    """
    import numpy as np

    groups = {}
    for name in ref:
        r_sums = np.asarray(ref[name][0], dtype=np.float64)
        m_sums = np.asarray(model[name][0], dtype=np.float64)
        if len(r_sums) != len(m_sums):
            raise ValueError(f"{name}: {len(r_sums)} reference vs {len(m_sums)} model documents: cannot pair")
        groups[name] = ((r_sums - m_sums)[:, None], model[name][1])
    diff_sum, tot_tokens = resampled_totals(groups, samples, seed)
    # score = exp(nll_ref - nll_model) * 100 on pooled sums
    scores = np.exp(diff_sum[:, 0] / tot_tokens) * 100.0
    lo, hi = _quantiles(scores, confidence)
    return Interval(low=lo, high=hi, confidence=confidence, samples=samples, seed=seed)


def per_doc_sums(values, offsets):
    """Per-document sums of per-token ``values`` (numpy), documents given as token ranges ``offsets`` [docs + 1];
    an empty document sums to 0."""
    import numpy as np

    out = np.zeros(len(offsets) - 1)
    counts = np.diff(offsets)
    nonempty = counts > 0
    if nonempty.any():
        out[nonempty] = np.add.reduceat(values, np.asarray(offsets)[:-1][nonempty])
    return out


def resampled_totals(groups: Mapping[str, tuple[Sequence, Sequence[int]]], samples: int, seed: int):
    """Bootstrap totals over documents, stratified by group (dataset): ``groups`` maps a name to (per-document values
    [documents, columns], per-document token counts); each sample draws every group's documents with replacement and
    sums them, pooled over groups. Returns (value totals [samples, columns], token totals [samples])."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values_tot = None
    tokens_tot = np.zeros(samples)
    for values, counts in groups.values():
        values = np.asarray(values, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        n = len(counts)
        idx = rng.integers(0, n, size=(samples, n))
        part = values[idx].sum(axis=1)
        values_tot = part if values_tot is None else values_tot + part
        tokens_tot += counts[idx].sum(axis=1)
    return values_tot, tokens_tot


def bootstrap_ratios(groups: Mapping[str, tuple[Sequence, Sequence[int]]], samples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> list[tuple[float, float]]:
    """Confidence intervals of token-weighted means (per-document sums over per-document token counts), one per
    column of the groups' values, from the same resampled documents."""
    values_tot, tokens_tot = resampled_totals(groups, samples, seed)
    return [_quantiles(values_tot[:, j] / tokens_tot, confidence) for j in range(values_tot.shape[1])]


def _quantiles(x, confidence: float) -> tuple[float, float]:
    import numpy as np

    a = (1 - confidence) / 2
    lo, hi = np.quantile(x, [a, 1 - a])
    return float(lo), float(hi)
