"""Next-token distributions, top-k: what a baseline update stores beside a BF16 baseline when the config turns
``distributions`` on, and what the gate collects from the quantized model to compare with it (harness/divergence.py).

For every scored token (each token of a text but the first): the ``k`` most likely next tokens with their
log-probabilities, best first (vLLM's ``prompt_logprobs=k``), and the log-probability of the token that actually
follows. One compressed numpy file per dataset (``baselines/<model>/<dataset>.topk.npz``):

- ``offsets`` int64 [documents + 1]: token ranges of the documents;
- ``ids`` [tokens, k] (uint16 when the vocabulary fits, else int32) and ``logprobs`` float32 [tokens, k];
- ``true_ids`` int32 [tokens] and ``true_logprobs`` float32 [tokens].

The baseline JSON records the file's sha256, size, k and token count (``Baseline.distributions``), so a swapped,
truncated or stale file is refused, never compared. numpy is imported inside the functions (the core stays light).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.atomic import atomic_path
from harness.errors import BackendError, BaselineError
from harness.token_detail import to_arrays

SUFFIX = ".topk.npz"
FIELDS = ("offsets", "ids", "logprobs", "true_ids", "true_logprobs")


@dataclass
class TopK:
    """One dataset's next-token distributions (top-k) for every scored token."""

    offsets: Any        # int64 [documents + 1]
    ids: Any            # [tokens, k], best first
    logprobs: Any       # float32 [tokens, k]
    true_ids: Any       # int32 [tokens]
    true_logprobs: Any  # float32 [tokens]

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    def doc_tokens(self):
        import numpy as np

        return np.diff(self.offsets)


def from_results(results: Sequence, docs: Sequence[Sequence[int]], k: int, backend: str) -> TopK:
    """A dataset's TopK from backend DocResults that carry ``top_ids`` / ``top_logprobs`` / ``token_logprobs``."""
    import numpy as np


    counts = [len(d) - 1 for d in docs]
    for i, (r, n) in enumerate(zip(results, counts)):
        if r.top_ids is None or r.top_logprobs is None or r.token_logprobs is None:
            raise BackendError(f"{backend}: document {i} came back without its top-{k} next-token distributions")
        if np.shape(r.top_ids) != (n, k) or np.shape(r.top_logprobs) != (n, k) or len(r.token_logprobs) != n:
            raise BackendError(f"{backend}: document {i} has top-k arrays of shape {np.shape(r.top_ids)} and "
                               f"{len(r.token_logprobs)} token log-probabilities, expected ({n}, {k}) and {n}")
    offsets, true_lps = to_arrays([r.token_logprobs for r in results])
    ids = np.concatenate([np.asarray(r.top_ids, dtype=np.int64).reshape(-1, k) for r in results]) if docs else \
        np.zeros((0, k), dtype=np.int64)
    lps = np.concatenate([np.asarray(r.top_logprobs, dtype=np.float32).reshape(-1, k) for r in results]) if docs else \
        np.zeros((0, k), dtype=np.float32)
    true_ids = np.fromiter((t for d in docs for t in list(d)[1:]), dtype=np.int32, count=int(offsets[-1]))
    if not (np.isfinite(lps).all() and np.isfinite(true_lps).all()):
        raise BackendError(f"{backend}: non-finite log-probabilities in the top-{k} distributions: the checkpoint or "
                           "kernel is broken")
    return TopK(offsets, ids, lps, true_ids, true_lps)


def save(path: Path, topk: TopK) -> dict:
    """Write atomically; return what the baseline JSON records of the file (name, k, tokens, size, sha256)."""
    import numpy as np

    path = Path(path)
    id_dtype = np.uint16 if topk.tokens == 0 or int(topk.ids.max()) < 2**16 else np.int32
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, offsets=topk.offsets.astype(np.int64), ids=topk.ids.astype(id_dtype),
                            logprobs=topk.logprobs.astype(np.float32), true_ids=topk.true_ids.astype(np.int32),
                            true_logprobs=topk.true_logprobs.astype(np.float32))
        digest, size = _sha256(tmp)
    return {"file": path.name, "top_k": topk.k, "tokens": topk.tokens, "documents": topk.documents, "bytes": size,
            "sha256": digest}


def verify(path: Path, meta: dict, update_hint: str) -> None:
    """The stored file is there and is the one its baseline recorded (sha256): checked with the other baseline checks,
    before any quantization or engine start, and again when it is read."""
    path = Path(path)
    if not path.exists():
        raise BaselineError(f"{path}: the BF16 distributions file its baseline records is missing; re-create it "
                            f"with: {update_hint}")
    digest, size = _sha256(path)
    if digest != meta.get("sha256"):
        said = f"{size} bytes where the baseline recorded {meta.get('bytes')}" if size != meta.get("bytes") else \
            f"sha256 {digest[:12]}... differs from the {meta.get('sha256', '?')[:12]}... its baseline recorded"
        raise BaselineError(f"{path}: {said} (replaced, truncated or damaged after the update); re-create both with: "
                            f"{update_hint}")


def load(path: Path, meta: dict, update_hint: str) -> TopK:
    """Read a stored file and check it is the one its baseline recorded (sha256, k, tokens)."""
    import numpy as np

    path = Path(path)
    verify(path, meta, update_hint)
    try:
        with np.load(path) as z:
            t = TopK(*(z[f] for f in FIELDS))
    except (OSError, KeyError, ValueError) as e:
        raise BaselineError(f"{path}: unreadable distributions file ({e}); re-create it with: {update_hint}") from None
    if (t.k, t.tokens) != (meta.get("top_k"), meta.get("tokens")):
        raise BaselineError(f"{path}: holds top-{t.k} for {t.tokens} tokens, its baseline says top-"
                            f"{meta.get('top_k')} for {meta.get('tokens')}; re-create it with: {update_hint}")
    return t


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def check_stored(b, top_k: int, where, path_of, hint: str) -> None:
    """A baseline (``b``, stored at ``where``) that a config comparing top-``top_k`` distributions can use: it carries
    BF16's top-k, at this k, in an intact file (``path_of(b)``: where the baseline says it is), checked before any
    quantization or engine start, like the data; else the error that says how to re-create it (``hint``)."""
    if not b.distributions:
        raise BaselineError(f"{where}: the config compares next-token distributions (distributions.top_k "
                            f"{top_k}) but this baseline stores none (made without them); add them with: {hint}")
    if b.distributions.get("top_k") != top_k:
        raise BaselineError(f"{where}: stores BF16's top-{b.distributions.get('top_k')}, the config asks for top-"
                            f"{top_k}: compare at the same k (set distributions.top_k: "
                            f"{b.distributions.get('top_k')}) or re-create it with: {hint}")
    verify(path_of(b), b.distributions, hint)
