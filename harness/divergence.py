"""The quantized model's next-token distributions against BF16's, token by token: KL divergence, top-1 agreement and
the change in the true token's probability (llama.cpp's ``llama-perplexity --kl-divergence`` statistics), per
dataset and pooled, with bootstrap intervals over documents. Pure numpy, from two harness.distributions.TopK.

The KL estimator. Only the top-k of each distribution is stored, so KL(BF16 || quantized) is computed on a
partition of the vocabulary: one cell for each token in *both* top-k lists (plus the true next token, whose
log-probability both sides report), and one tail cell for every other token, whose probability is 1 minus the
cells' sum on each side (the log-probabilities are normalised over the whole vocabulary, so the tail is exact).
On that partition

    KL_k = sum_{i in cells} p_i log(p_i / q_i) + p_tail log(p_tail / q_tail)

By the log-sum inequality, merging tokens into one cell never raises a KL divergence, so KL_k <= the exact
full-vocabulary KL, for every token, and equals it when k covers the vocabulary. The bias is the divergence
*inside* the tail cell: small when both models put little mass outside their common top-k (at k=20 on the tiny
model it recovers most of the exact KL: tests/test_divergence.py measures it against the hf backend's full-vocabulary
KL). Estimates under 0 from float rounding are set to 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from harness.errors import BaselineError
from harness.metrics import bootstrap_ratios, per_doc_sums

EPS = 1e-12                                                          # floor of a tail cell's probability
HIST_EDGES = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)   # per-token KL bins (nats); the last is open
DP_PERCENTILES = (1, 5, 50, 95, 99)
CHUNK = 16384                                                        # tokens per step (k x k comparisons each)


@dataclass
class TokenMetrics:
    """Per scored token of one dataset: KL_k, whether the most likely next token is the same, and Δp of the true token
    (quantized minus BF16, probability); with the document ranges and the ids needed to show the worst positions."""

    kl: Any            # float64 [tokens]
    same_top1: Any     # bool [tokens]
    dp: Any            # float64 [tokens]
    offsets: Any       # int64 [documents + 1]
    true_ids: Any
    top1_ref: Any
    top1_model: Any
    p_true_ref: Any
    p_true_model: Any

    @property
    def doc_tokens(self):
        import numpy as np

        return np.diff(self.offsets)


def token_metrics(ref, model, chunk: int = CHUNK) -> TokenMetrics:
    """Compare two TopK of the same documents (the BF16 baseline's and the quantized run's), token by token."""
    import numpy as np

    if ref.k != model.k:
        raise BaselineError(f"the BF16 distributions hold top-{ref.k}, this run asked for top-{model.k}: compare at "
                            "the same k (set distributions.top_k back, or re-create the baseline)")
    if not np.array_equal(ref.offsets, model.offsets) or not np.array_equal(ref.true_ids, model.true_ids):
        raise BaselineError("the BF16 distributions were scored on other documents than this run's (different token "
                            "ranges or tokens): re-create the baseline")
    n = ref.tokens
    kl = np.empty(n)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        kl[lo:hi] = _kl_chunk(ref.ids[lo:hi].astype(np.int64), ref.logprobs[lo:hi].astype(np.float64),
                              model.ids[lo:hi].astype(np.int64), model.logprobs[lo:hi].astype(np.float64),
                              ref.true_ids[lo:hi].astype(np.int64), ref.true_logprobs[lo:hi].astype(np.float64),
                              model.true_logprobs[lo:hi].astype(np.float64))
    rows = np.arange(n)
    top1_ref = ref.ids[rows, np.argmax(ref.logprobs, axis=1)].astype(np.int64)
    top1_model = model.ids[rows, np.argmax(model.logprobs, axis=1)].astype(np.int64)
    p_ref = np.exp(ref.true_logprobs.astype(np.float64))
    p_model = np.exp(model.true_logprobs.astype(np.float64))
    return TokenMetrics(kl=kl, same_top1=top1_ref == top1_model, dp=p_model - p_ref, offsets=ref.offsets,
                        true_ids=ref.true_ids, top1_ref=top1_ref, top1_model=top1_model, p_true_ref=p_ref,
                        p_true_model=p_model)


def _kl_chunk(r_ids, r_lp, m_ids, m_lp, y, y_r, y_m):
    """KL_k for a block of tokens (see the module docstring)."""
    import numpy as np

    eq = r_ids[:, :, None] == m_ids[:, None, :]            # [t, k, k]: ref entry i is model entry j
    matched = eq.any(axis=2)                                 # ref entries also in the model's top-k
    q_lp = np.take_along_axis(m_lp, eq.argmax(axis=2), axis=1)
    p = np.exp(r_lp)
    q = np.exp(q_lp)
    term = np.where(matched, p * (r_lp - np.where(matched, q_lp, 0.0)), 0.0).sum(axis=1)
    sum_p = np.where(matched, p, 0.0).sum(axis=1)
    sum_q = np.where(matched, q, 0.0).sum(axis=1)
    y_in = (matched & (r_ids == y[:, None])).any(axis=1)   # the true token already has its own cell
    py, qy = np.exp(y_r), np.exp(y_m)
    term += np.where(y_in, 0.0, py * (y_r - y_m))
    sum_p += np.where(y_in, 0.0, py)
    sum_q += np.where(y_in, 0.0, qy)
    p_tail = np.maximum(1.0 - sum_p, EPS)
    q_tail = np.maximum(1.0 - sum_q, EPS)
    term += np.where(1.0 - sum_p > EPS, p_tail * np.log(p_tail / q_tail), 0.0)
    return np.maximum(term, 0.0)


def exact_kl(ref_logprobs, model_logprobs):
    """Full-vocabulary KL(ref || model) per position from two [positions, vocab] log-probability arrays (the check of
    the estimator; the gate never has full distributions)."""
    import numpy as np

    r = np.asarray(ref_logprobs, dtype=np.float64)
    m = np.asarray(model_logprobs, dtype=np.float64)
    return (np.exp(r) * (r - m)).sum(axis=1)


def describe(parts: Mapping[str, TokenMetrics], *, samples: int = 1000, confidence: float = 0.95, seed: int = 0,
             worst: int = 5) -> dict:
    """Statistics of one dataset (one part) or of several pooled (the overall row): KL mean / median / 99th / 99.9th
    percentile / max, top-1 agreement %, Δp of the true token in percentage points (mean, RMS, percentiles, min, max),
    bootstrap intervals of the KL mean, the top-1 agreement and the Δp mean (documents resampled within each dataset),
    a KL histogram, and the documents and positions that changed most."""
    import numpy as np


    kl = np.concatenate([m.kl for m in parts.values()])
    same = np.concatenate([m.same_top1 for m in parts.values()])
    dp = np.concatenate([m.dp for m in parts.values()]) * 100.0
    if not len(kl):
        raise BaselineError("no scored tokens to compare distributions on")
    groups = {n: (np.stack([per_doc_sums(m.kl, m.offsets), per_doc_sums(m.same_top1.astype(np.float64), m.offsets),
                            per_doc_sums(m.dp * 100.0, m.offsets)], axis=1), m.doc_tokens) for n, m in parts.items()}
    kl_ci, top1_ci, dp_ci = bootstrap_ratios(groups, samples=samples, confidence=confidence, seed=seed)
    counts, _ = np.histogram(np.minimum(kl, HIST_EDGES[-1]), bins=list(HIST_EDGES) + [np.inf])
    out = {
        "tokens": int(len(kl)),
        "kld": {"mean": float(kl.mean()), "median": float(np.median(kl)), "p99": float(np.percentile(kl, 99)),
                "p99_9": float(np.percentile(kl, 99.9)), "max": float(kl.max()),
                "interval": {"low": kl_ci[0], "high": kl_ci[1], "confidence": confidence,
                             "samples": samples}},
        "top1_pct": float(same.mean() * 100.0),
        "top1_interval": {"low": top1_ci[0] * 100.0, "high": top1_ci[1] * 100.0, "confidence": confidence,
                          "samples": samples},
        "dp_pct": {"mean": float(dp.mean()), "mean_interval": {"low": dp_ci[0], "high": dp_ci[1]},
                   "rms": float(np.sqrt(np.mean(dp ** 2))), "min": float(dp.min()),
                   "max": float(dp.max()),
                   **{f"p{q:02d}": float(np.percentile(dp, q)) for q in DP_PERCENTILES}},
        "histogram": {"edges": list(HIST_EDGES), "counts": [int(c) for c in counts]},
    }
    if len(parts) == 1:
        (m,) = parts.values()
        out["worst_documents"] = worst_documents(m, worst)
        out["worst_positions"] = worst_positions(m, worst)
    return out


def worst_documents(m: TokenMetrics, n: int) -> list[dict]:
    """The documents with the highest mean KL_k."""
    import numpy as np


    counts = m.doc_tokens
    mean = np.where(counts > 0, per_doc_sums(m.kl, m.offsets) / np.maximum(counts, 1), 0.0)
    top1 = np.where(counts > 0, per_doc_sums(m.same_top1.astype(np.float64), m.offsets) / np.maximum(counts, 1), 0.0)
    order = np.argsort(-mean, kind="stable")[:n]
    return [{"doc": int(i), "tokens": int(counts[i]), "kld_mean": float(mean[i]), "top1_pct": float(top1[i] * 100)}
            for i in order]


def worst_positions(m: TokenMetrics, n: int) -> list[dict]:
    """The scored tokens with the highest KL_k: document, position in it (its first token is position 0), the true
    token, each model's most likely token and each model's probability of the true token."""
    import numpy as np

    order = np.argsort(-m.kl, kind="stable")[:n]
    docs = np.searchsorted(m.offsets, order, side="right") - 1
    return [{"doc": int(d), "position": int(t - m.offsets[d] + 1), "kld": float(m.kl[t]),
             "true_id": int(m.true_ids[t]), "top1_bf16": int(m.top1_ref[t]), "top1_model": int(m.top1_model[t]),
             "p_true_bf16": float(m.p_true_ref[t]), "p_true_model": float(m.p_true_model[t])}
            for t, d in zip(order, docs)]
