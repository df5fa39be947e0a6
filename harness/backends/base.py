"""The scoring interface every backend implements (like lm-evaluation-harness's ``LM.loglikelihood_rolling``).

A backend gets token-id documents and returns, per document, the sum of log-probabilities of every token but the
first (each token scored once, conditioned on all before it) and how many tokens that is; asked for it, each of those
log-probabilities, and with ``top_k`` the k most likely next tokens at every scored position (harness/distributions.py).
Nothing else: datasets, metrics and baselines live in the torch-free core.
"""
from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.errors import BackendError


@dataclass(frozen=True)
class EngineSpec:
    """What to load: a checkpoint dir or hub id, at which precision label, with which engine kwargs."""

    model: str
    precision: str                  # "bf16" or a quantized label such as "nvfp4"
    max_model_len: int
    tokenizer: str | None = None
    revision: str | None = None
    engine_kwargs: dict = field(default_factory=dict)
    batch_size: int | None = None   # None: the backend batches as it sees fit; 1: one request at a time
    top_k: int = 0                  # the most next tokens per position loglikelihood_rolling will be asked for
    fidelity: str = "scheme"        # which NVFP4 numerics a quantized engine runs (harness/fidelity.py)


@dataclass
class DocResult:
    logprob_sum: float
    n_tokens: int
    token_logprobs: list[float] | None = None  # per scored token, only when asked for (token_detail, top_k)
    top_ids: Any = None                        # [n_tokens, k] numpy, best first, only with top_k
    top_logprobs: Any = None                   # [n_tokens, k] numpy float32, only with top_k

    @property
    def nll_sum(self) -> float:
        return -self.logprob_sum


class Backend(ABC):
    name: str = "?"
    reports_progress: bool = True  # calls loglikelihood_rolling's progress(done, total) as it goes

    def __init__(self, spec: EngineSpec):
        self.spec = spec

    @abstractmethod
    def loglikelihood_rolling(self, docs: Sequence[Sequence[int]], progress=None,
                              token_logprobs: bool = False, top_k: int = 0) -> list[DocResult]:
        """Per document: sum of log p(token_i | tokens_<i) for i >= 1, and the count of such tokens
        (with ``token_logprobs``: also each of those log-probabilities; with ``top_k`` > 0: those too, and the
        ``top_k`` most likely tokens at each of those positions with their log-probabilities, best first)."""

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                      progress=None) -> list[tuple[float, bool]]:
        """lm-evaluation-harness's ``loglikelihood`` on token ids: per (context, continuation), the summed
        log-probability of the continuation's tokens given everything before them, and whether each of them was the
        most likely next token (``is_greedy``). Scored through ``loglikelihood_rolling`` with the top-1 token at every
        position, so every backend's existing log-prob path serves tasks too (vLLM ``prompt_logprobs=1``); the
        context's own log-probabilities come with it and are not used."""
        docs, lens = request_documents(requests, self.name)
        results = self.loglikelihood_rolling(docs, progress=progress, token_logprobs=True, top_k=1)
        out = []
        for r, d, n in zip(results, docs, lens):
            lps = r.token_logprobs[-n:]
            top = r.top_ids[-n:, 0]
            out.append((float(sum(lps)), all(int(a) == b for a, b in zip(top, d[-n:]))))
        return out

    def generate_until(self, prompts: Sequence[Sequence[int]], until: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy generation from each prompt (token ids) until any of ``until`` or ``max_tokens`` new tokens; the
        generated text, stop sequence excluded (lm-evaluation-harness's ``generate_until``)."""
        raise BackendError(f"the {self.name} backend has no generation path; generated tasks (gsm8k) need one")

    @abstractmethod
    def info(self) -> dict:
        """Provenance: backend, device, library versions, dtype, which kernel ran for quantized layers."""

    def close(self) -> None:
        """Release the engine and its device memory. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request_documents(requests, backend: str) -> tuple[list[list[int]], list[int]]:
    """Each (context, continuation) of token ids as one document (context + continuation) and its continuation's
    length; both parts must be there (lm-eval conditions an empty context on BOS/EOS, which the caller adds)."""
    docs, lens = [], []
    for ctx, cont in requests:
        if not cont:
            raise BackendError(f"{backend}: a log-likelihood request with an empty continuation")
        if not ctx:
            raise BackendError(f"{backend}: a log-likelihood request needs a context token before its continuation "
                               "(lm-eval conditions an empty context on BOS/EOS)")
        docs.append(list(ctx) + list(cont))
        lens.append(len(cont))
    return docs, lens


def check_results(results: list[DocResult], docs: Sequence[Sequence[int]], backend: str) -> list[DocResult]:
    """Refuse missing, NaN or infinite log-probabilities: a gate must never report a number made of them."""
    if len(results) != len(docs):
        raise BackendError(f"{backend}: returned {len(results)} results for {len(docs)} documents")
    for i, (r, d) in enumerate(zip(results, docs)):
        if r.n_tokens != len(d) - 1:
            raise BackendError(f"{backend}: document {i} has {len(d) - 1} scorable tokens but {r.n_tokens} were scored "
                               "(missing prompt logprobs)")
        if not math.isfinite(r.logprob_sum):
            raise BackendError(f"{backend}: document {i} has a non-finite log-probability sum ({r.logprob_sum}); "
                               "the model produced NaN/inf logits: the checkpoint or kernel is broken")
    return results


def load_class(path: str):
    """What ``module:name`` names, imported now: a backend class, or a function of a BackendSpec."""
    mod, cls = path.split(":")
    return getattr(importlib.import_module(mod), cls)
