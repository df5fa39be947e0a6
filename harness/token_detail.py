"""Per-token log-probabilities (optional): compressed numpy files and a BF16-vs-quantized summary.

A file holds one dataset: ``offsets`` (int64, documents + 1) and ``logprobs`` (float32, every scored token).
BF16 files live beside the baselines (``baselines/<model>/<dataset>.tokens.npz``), quantized ones in the report.
"""
from __future__ import annotations

from pathlib import Path

from harness.atomic import atomic_path
from harness.errors import HarnessError
from harness.metrics import per_doc_sums

DROP_NATS = 1.0


def to_arrays(per_doc: list[list[float]]):
    """Per-document lists -> (offsets int64 [documents + 1], logprobs float32 [tokens])."""
    import numpy as np

    offsets = np.zeros(len(per_doc) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(d) for d in per_doc])
    flat = np.fromiter((x for d in per_doc for x in d), dtype=np.float32, count=int(offsets[-1]))
    return offsets, flat


def save_tokens(path: Path, per_doc: list[list[float]]) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets, flat = to_arrays(per_doc)
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, offsets=offsets, logprobs=flat)


def load_tokens(path: Path):
    import numpy as np

    try:
        with np.load(path) as z:
            return z["offsets"], z["logprobs"]
    except (OSError, KeyError, ValueError) as e:
        raise HarnessError(f"{path}: unreadable per-token file ({e})") from None


def summarize(ref, model, worst: int = 5, drop_nats: float = DROP_NATS) -> dict:
    """Share of tokens whose log-probability fell by more than ``drop_nats``; the documents that lost most."""
    import numpy as np

    (r_off, r_lp), (m_off, m_lp) = ref, model
    if len(r_off) != len(m_off) or not np.array_equal(r_off, m_off):
        raise HarnessError("per-token files do not describe the same documents (different offsets): re-create the "
                           "BF16 file with a baseline update")

    delta = m_lp.astype(np.float64) - r_lp.astype(np.float64)
    counts = np.diff(r_off)
    per_doc = per_doc_sums(delta, r_off) / np.maximum(counts, 1)
    order = np.argsort(per_doc)[:worst]
    return {
        "tokens": int(len(delta)),
        "drop_nats": drop_nats,
        "share_tokens_dropped": float(np.mean(delta < -drop_nats)) if len(delta) else 0.0,
        "share_tokens_gained": float(np.mean(delta > drop_nats)) if len(delta) else 0.0,
        "mean_delta_nats": float(delta.mean()) if len(delta) else 0.0,
        "worst_documents": [{"doc": int(i), "tokens": int(counts[i]), "nll_increase_per_token": float(-per_doc[i])}
                            for i in order if per_doc[i] < 0],
    }
