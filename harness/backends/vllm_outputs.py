"""What vLLM returned, read into the harness's results: a document's prompt logprobs (and its top-k), a task
continuation's log-likelihood and greedy match, and which NVFP4 kernel ran (from the loaded model's class names)."""
from __future__ import annotations

import math
from typing import Sequence

from harness.backends.base import DocResult
from harness.errors import BackendError
from harness.precision import BF16


def kernel_label(class_names: Sequence[str], precision: str) -> str:
    """What ran for the quantized layers; none found in a quantized run is "unknown", never "dense"."""
    if precision == BF16:
        return "dense bf16"
    if not class_names:
        return "unknown (no quantized kernel found in the loaded model)"
    labels = set()
    for n in class_names:
        if "Marlin" in n:
            labels.add("Marlin W4A16 (activations not quantized)")
        elif "Emulation" in n:
            labels.add("emulation W4A4")
        elif "NvFp4" in n:
            labels.add(f"native W4A4 ({n})")
        else:
            labels.add(n)
    return " + ".join(sorted(labels))


def doc_result(prompt_logprobs, ids: Sequence[int], keep_tokens: bool = False, top_k: int = 0) -> DocResult:
    """Sum the logprob of each actual prompt token (position >= 1) from vLLM's prompt_logprobs; with ``top_k``
    also the top-k next tokens at each of those positions."""
    if prompt_logprobs is None:
        raise BackendError("vllm returned no prompt_logprobs (is prompt_logprobs set and max_logprobs >= 0?)")
    n = len(ids)
    flat = hasattr(prompt_logprobs, "start_indices")
    npos = len(prompt_logprobs.start_indices) if flat else len(prompt_logprobs)
    if npos != n:
        raise BackendError(f"vllm returned prompt_logprobs for {npos} positions, prompt has {n}")
    if top_k:
        return topk_result(prompt_logprobs, ids, top_k)
    if flat and n > 1:  # fast path (prompt_logprobs=0): one entry per position, the prompt token, contiguous
        lo, hi = prompt_logprobs.start_indices[1], prompt_logprobs.end_indices[n - 1]
        if hi - lo == n - 1 and prompt_logprobs.token_ids[lo:hi] == list(ids[1:]):
            lps = prompt_logprobs.logprobs[lo:hi]
            return DocResult(logprob_sum=sum(lps), n_tokens=n - 1, token_logprobs=list(lps) if keep_tokens else None)
    total = 0.0
    count = 0
    per_tok: list[float] | None = [] if keep_tokens else None
    for i in range(1, n):
        tok = ids[i]
        lp = None
        if flat:
            s, e = prompt_logprobs.start_indices[i], prompt_logprobs.end_indices[i]
            for j in range(s, e):
                if prompt_logprobs.token_ids[j] == tok:
                    lp = prompt_logprobs.logprobs[j]
                    break
        else:
            pos = prompt_logprobs[i]
            if pos and tok in pos:
                lp = pos[tok].logprob
        if lp is None:
            raise BackendError(f"vllm: missing prompt logprob for token {tok} at position {i}")
        total += lp
        count += 1
        if per_tok is not None:
            per_tok.append(lp)
    return DocResult(logprob_sum=total, n_tokens=count, token_logprobs=per_tok)


def continuation_result(prompt_logprobs, ids: Sequence[int], n: int, cached: int = 0) -> tuple[float, bool] | None:
    """(sum of the last ``n`` prompt tokens' log-probabilities, whether each was the top-1) from flat prompt logprobs
    with ``prompt_logprobs=1``: every position >= 1 holds two entries, the prompt token first, then the top-1
    (vllm/logprobs.py, append_logprobs_for_next_position; as topk_result reads them). Only those n positions are read.

    ``cached``: the request's ``num_cached_tokens``, the prompt tokens vLLM took from its prefix cache. It scores
    only positions ``cached + 1`` on (the V2 runner returns just those, after the empty position 0; the V1 runner
    returns every position, those before unfilled). None when a continuation position was not scored: the caller
    scores the request again without the cache."""
    if prompt_logprobs is None or not hasattr(prompt_logprobs, "start_indices"):
        raise BackendError("vllm: task scoring needs flat prompt logprobs (SamplingParams(flat_logprobs=True))")
    length = len(ids)
    npos = len(prompt_logprobs.start_indices)
    if npos not in (length, length - cached):
        raise BackendError(f"vllm returned prompt_logprobs for {npos} positions, prompt has {length}"
                           + (f" ({cached} of them from the prefix cache)" if cached else ""))
    if length - n < cached + 1:
        return None
    shift = length - npos  # 0 (every position returned) or ``cached`` (only the scored ones)
    total, greedy = 0.0, True
    for i in range(length - n, length):
        s, e = prompt_logprobs.start_indices[i - shift], prompt_logprobs.end_indices[i - shift]
        if e - s != 2 or prompt_logprobs.token_ids[s] != ids[i]:
            raise BackendError(f"vllm: expected the prompt token {ids[i]} and the top-1 at position {i}, got "
                               f"{prompt_logprobs.token_ids[s:e]}")
        total += prompt_logprobs.logprobs[s]
        greedy = greedy and prompt_logprobs.token_ids[s + 1] == ids[i]
    if not math.isfinite(total):
        raise BackendError(f"vllm: a non-finite log-likelihood ({total}): the model produced NaN/inf logits")
    return total, greedy


def topk_result(prompt_logprobs, ids: Sequence[int], k: int) -> DocResult:
    """From flat prompt logprobs with ``prompt_logprobs=k``: every position >= 1 holds k + 1 entries, the prompt token
    first (at its vocabulary rank), then the top k, best first (vllm/logprobs.py, append_logprobs_for_next_position)."""
    import numpy as np

    n = len(ids)
    if not hasattr(prompt_logprobs, "start_indices"):
        raise BackendError("vllm: top-k distributions need flat prompt logprobs (SamplingParams(flat_logprobs=True))")
    if n < 2:
        return DocResult(logprob_sum=0.0, n_tokens=0, token_logprobs=[], top_ids=np.zeros((0, k), dtype=np.int64),
                         top_logprobs=np.zeros((0, k), dtype=np.float32))
    lo, hi = prompt_logprobs.start_indices[1], prompt_logprobs.end_indices[n - 1]
    width = k + 1
    starts = np.asarray(prompt_logprobs.start_indices[1:n]) - lo
    if hi - lo != (n - 1) * width or not np.array_equal(starts, np.arange(n - 1) * width):
        raise BackendError(f"vllm: expected {width} prompt logprobs at each of {n - 1} positions (the token and the "
                           f"top {k}), got {hi - lo} in all; is max_logprobs >= {k}?")
    tok = np.asarray(prompt_logprobs.token_ids[lo:hi], dtype=np.int64).reshape(n - 1, width)
    lps = np.asarray(prompt_logprobs.logprobs[lo:hi], dtype=np.float32).reshape(n - 1, width)
    if not np.array_equal(tok[:, 0], np.asarray(ids[1:], dtype=np.int64)):
        raise BackendError("vllm: the first prompt logprob of a position is not the prompt token")
    true = lps[:, 0].astype(np.float64)
    return DocResult(logprob_sum=float(true.sum()), n_tokens=n - 1, token_logprobs=true.tolist(),
                     top_ids=tok[:, 1:], top_logprobs=lps[:, 1:])


def count_shared(shared: dict, docs, cached: list[int], again: list[int]) -> None:
    """Add one batch of task requests to the engine's shared-context counts: requests, tokens, tokens served from the
    prefix cache (not those of requests scored again without it) and how many were scored again."""
    redone = set(again)
    shared["requests"] += len(docs)
    shared["tokens"] += sum(len(d) for d in docs)
    shared["cached_tokens"] += sum(c for j, c in enumerate(cached) if j not in redone)
    shared["scored_again"] += len(again)
